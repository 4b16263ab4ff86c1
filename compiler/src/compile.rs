//! The compile pipeline for one entry: trace → verify → passes (verified
//! after each) → memory plan → lowering → guard synthesis → wrapper emission.
//!
//! Inputs updated in place ([`Graph::mutations`]) are checked first; their
//! new values are the graph's last outputs, so the wrapper returns them after
//! the declared outputs, and the signature records them (`mutates`).
//!
//! The result, a [`CompiledEntry`], does not know package-global indices:
//! [`crate::package::PackageDraft::add_entry`] resolves its globals into the
//! package (sharing them by name and content) and adds the global guards.

use std::collections::BTreeMap;

use ampoule_guest::{EmitError, Program};
use ampoule_host::manifest::{BufferDecl, KernelUse, Signature, SymbolNote};
use ampoule_host::{Guard, ScalarValue};
use ampoule_kernels::{Registry, Tensor};

use crate::dynamic::{analyze, DimSpec, DynamicError, Probe};
use crate::guards;
use crate::ir::{GlobalDef, Graph};
use crate::lower::{lower_dynamic, LowerError};
use crate::passes::{
    fuse::fuse_elementwise, hoist::hoist_weight_only, layout::pack_linear_weights, optimize,
    plan::plan_memory_except, views::launches_to_views, PassError,
};
use crate::trace::{BreakSource, Example, FunctionDef, Trace, TraceError};
use crate::verify::verify;

/// One compiled entry, before it joins a package.
#[derive(Clone, Debug)]
pub struct CompiledEntry {
    pub function: String,
    pub signature: Signature,
    /// The program hash of the trace ([`crate::hash`]).
    pub program_hash: String,
    /// The optimized graph the wrapper was lowered from.
    pub graph: Graph,
    pub program: Program,
    /// The wrapper component's bytes.
    pub wrapper: Vec<u8>,
    pub kernels: Vec<KernelUse>,
    /// The entry's globals table, in wrapper order.
    pub globals: Vec<GlobalDef>,
    pub buffers: Vec<BufferDecl>,
    /// Guards on the call's inputs; global guards are added by the package.
    pub input_guards: Vec<Guard>,
    /// The graph-break paths merged into this entry (empty without breaks).
    pub paths: Vec<Vec<ScalarValue>>,
    /// The entry's symbolic dims and why (empty for a static entry).
    pub symbols: Vec<SymbolNote>,
}

/// Why compiling an entry failed.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("tracing function `{function}`: {source}")]
    Trace {
        function: String,
        #[source]
        source: TraceError,
    },
    #[error("function `{function}`: {source}")]
    Pass {
        function: String,
        #[source]
        source: PassError,
    },
    #[error("lowering function `{function}`: {source}")]
    Lower {
        function: String,
        #[source]
        source: LowerError,
    },
    /// The graph's record of inputs updated in place is inconsistent (only
    /// a graph built by hand, not through `Tracer::assign`, can be).
    #[error("function `{function}`: {message}")]
    Mutation { function: String, message: String },
    #[error("function `{function}`: {source}")]
    Dynamic {
        function: String,
        #[source]
        source: DynamicError,
    },
    #[error("emitting the wrapper of function `{function}`: {source}")]
    Emit {
        function: String,
        #[source]
        source: EmitError,
    },
}

/// Traces `def` for `examples` and compiles the trace.
pub fn compile(
    def: &FunctionDef,
    examples: &[Example],
    registry: &Registry,
    bindings: &BTreeMap<String, Tensor>,
) -> Result<CompiledEntry, CompileError> {
    compile_with(def, examples, None, &[], &[], registry, bindings)
}

/// [`compile`] for a call's inputs: graph breaks read their values from
/// `data`. With `paths` (the paths an existing entry was compiled for), the
/// new path is merged with them into one entry ([`crate::breaks`]).
///
/// Dims the definition marks dynamic, and `dynamic` (chosen by the caller,
/// e.g. automatic dynamic), are compiled as symbols ([`crate::dynamic`]).
pub fn compile_with(
    def: &FunctionDef,
    examples: &[Example],
    data: Option<&[Tensor]>,
    paths: &[Vec<ScalarValue>],
    dynamic: &[DimSpec],
    registry: &Registry,
    bindings: &BTreeMap<String, Tensor>,
) -> Result<CompiledEntry, CompileError> {
    let err = |source| CompileError::Trace {
        function: def.name().to_string(),
        source,
    };
    let source = BreakSource { data, replay: &[] };
    let trace = def
        .trace_with(examples, registry, bindings, source)
        .map_err(err)?;
    let mut specs = marked_dims(def, examples).map_err(|reason| CompileError::Dynamic {
        function: def.name().to_string(),
        source: DynamicError {
            dim: "a dim marked dynamic".into(),
            reason,
        },
    })?;
    specs.extend(dynamic.iter().cloned());
    // One path: compile it, with symbolic dims if any. (An entry that grows
    // graph-break continuations is compiled with static shapes.)
    if trace.breaks.is_empty() || paths.is_empty() {
        let replay: Vec<ScalarValue> = trace.breaks.iter().map(|b| b.value).collect();
        let probe = Probe {
            def,
            examples,
            registry,
            bindings,
            replay: &replay,
        };
        let new = replay.clone();
        let mut entry = compile_trace_with(def.name(), trace, registry, Some((&probe, &specs)))?;
        if !new.is_empty() {
            entry.paths = vec![new];
        }
        return Ok(entry);
    }
    let mut all = paths.to_vec();
    let new: Vec<ScalarValue> = trace.breaks.iter().map(|b| b.value).collect();
    if !all.iter().any(|p| same_path(p, &new)) {
        all.push(new);
    }
    let merged = if all.len() == 1 {
        trace
    } else {
        crate::breaks::merge(def, examples, registry, bindings, &all).map_err(err)?
    };
    let mut entry = compile_trace(def.name(), merged, registry)?;
    entry.paths = all;
    Ok(entry)
}

fn same_path(a: &[ScalarValue], b: &[ScalarValue]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.same(*y))
}

/// The dims `def` marks dynamic, as specs for these examples.
fn marked_dims(def: &FunctionDef, examples: &[Example]) -> Result<Vec<DimSpec>, String> {
    def.dynamic_dims()
        .iter()
        .map(|(name, axis, min, max)| {
            let input = match def.input_names() {
                Some(names) => names.iter().position(|n| n == name),
                None => name
                    .strip_prefix('x')
                    .and_then(|i| i.parse::<usize>().ok())
                    .filter(|&i| i < examples.len()),
            }
            .ok_or_else(|| format!("`{name}` is not an input of the function"))?;
            Ok(DimSpec {
                input: input as u32,
                axis: *axis as u32,
                min: *min,
                max: *max,
                why: "marked dynamic".into(),
            })
        })
        .collect()
}

/// Compiles a trace (see the module doc).
pub fn compile_trace(
    function: &str,
    trace: Trace,
    registry: &Registry,
) -> Result<CompiledEntry, CompileError> {
    compile_trace_with(function, trace, registry, None)
}

/// [`compile_trace`], with dims to compile as symbols and how to probe the
/// body at other sizes.
pub fn compile_trace_with(
    function: &str,
    trace: Trace,
    registry: &Registry,
    dynamic: Option<(&Probe<'_>, &[DimSpec])>,
) -> Result<CompiledEntry, CompileError> {
    let _span = tracing::debug_span!("compiler.compile", function).entered();
    check_mutations(&trace.graph).map_err(|message| CompileError::Mutation {
        function: function.to_string(),
        message,
    })?;
    let signature = guards::signature(&trace.graph);
    let input_guards = guards::input_guards(&trace.graph);
    let graph = optimize(trace.graph, registry).map_err(|source| CompileError::Pass {
        function: function.to_string(),
        source,
    })?;
    let env = match dynamic {
        Some((probe, specs)) if !specs.is_empty() => {
            analyze(probe, specs, &graph).map_err(|source| CompileError::Dynamic {
                function: function.to_string(),
                source,
            })?
        }
        _ => None,
    };
    let input_guards = match &env {
        Some(env) => env.guards(input_guards),
        None => input_guards,
    };
    let mut graph = graph;
    if env.is_none() {
        let check = |g: &Graph, pass: &'static str| {
            verify(g, registry).map_err(|errors| CompileError::Pass {
                function: function.to_string(),
                source: PassError::Verify { pass, errors },
            })
        };
        // Whether a product gets panels depends on its number of rows,
        // which a symbolic dim may change: static entries only.
        let panels =
            pack_linear_weights(&mut graph, registry).map_err(|source| CompileError::Pass {
                function: function.to_string(),
                source,
            })?;
        check(&graph, "pack_linear_weights")?;
        hoist_weight_only(&mut graph);
        check(&graph, "hoist_weight_only")?;
        tracing::debug!(panels, "compiler.layout");
        launches_to_views(&mut graph);
        check(&graph, "launches_to_views")?;
        fuse_elementwise(&mut graph, registry);
        check(&graph, "fuse_elementwise")?;
    }
    let plan = plan_memory_except(&graph, &|v| env.as_ref().is_some_and(|e| e.is_dynamic(v)));
    let lowered =
        lower_dynamic(&graph, &plan, env.as_ref()).map_err(|source| CompileError::Lower {
            function: function.to_string(),
            source,
        })?;
    let wrapper = ampoule_guest::emit(&lowered.program).map_err(|source| CompileError::Emit {
        function: function.to_string(),
        source,
    })?;
    let globals = lowered
        .globals
        .iter()
        .map(|&g| graph.globals[g as usize].clone())
        .collect();
    tracing::trace!(function, %graph, "optimized graph");
    tracing::debug!(
        function,
        nodes = graph.nodes.len(),
        launches = lowered.program.run.len(),
        buffers = lowered.buffers.len(),
        wrapper_bytes = wrapper.len(),
        "compiled entry"
    );
    Ok(CompiledEntry {
        function: function.to_string(),
        signature,
        program_hash: trace.program_hash,
        graph,
        program: lowered.program,
        wrapper,
        kernels: lowered.kernels,
        globals,
        buffers: lowered.buffers,
        input_guards,
        paths: Vec::new(),
        symbols: env
            .iter()
            .flat_map(|e| &e.symbols)
            .map(|s| SymbolNote {
                dims: s.dims.iter().map(|&(i, a)| [i, a]).collect(),
                why: s.why.clone(),
            })
            .collect(),
    })
}

/// Checks [`Graph::mutations`]: no more records than outputs, each input in
/// range and listed once, each new value of its input's dtype and shape.
fn check_mutations(graph: &Graph) -> Result<(), String> {
    let Some(first) = graph.outputs.len().checked_sub(graph.mutations.len()) else {
        return Err(format!(
            "{} inputs are updated in place but the graph has only {} outputs",
            graph.mutations.len(),
            graph.outputs.len()
        ));
    };
    let mut seen = std::collections::BTreeSet::new();
    for (&i, out) in graph.mutations.iter().zip(&graph.outputs[first..]) {
        let input = graph.inputs.get(i as usize).ok_or_else(|| {
            format!(
                "updates input {i} but there are {} inputs",
                graph.inputs.len()
            )
        })?;
        if !seen.insert(i) {
            return Err(format!("input `{}` is updated twice", input.name));
        }
        match graph.try_meta(out.value) {
            Some(m) if *m == input.meta => {}
            m => {
                return Err(format!(
                    "the new value of input `{}` is {}, but the input is {}",
                    input.name,
                    m.map_or("undefined".to_string(), |m| m.to_string()),
                    input.meta
                ))
            }
        }
    }
    Ok(())
}
