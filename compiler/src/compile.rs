//! The compile pipeline for one entry: trace → verify → passes (verified
//! after each) → memory plan → lowering → guard synthesis → wrapper emission.
//!
//! The result, a [`CompiledEntry`], does not know package-global indices:
//! [`crate::package::PackageDraft::add_entry`] resolves its globals into the
//! package (sharing them by name and content) and adds the global guards.

use std::collections::BTreeMap;

use ampoule_guest::{EmitError, Program};
use ampoule_host::manifest::{BufferDecl, KernelUse, Signature};
use ampoule_host::Guard;
use ampoule_kernels::{Registry, Tensor};

use crate::guards;
use crate::ir::{GlobalDef, Graph};
use crate::lower::{lower, LowerError};
use crate::passes::{optimize, plan::plan_memory, PassError};
use crate::trace::{Example, FunctionDef, Trace, TraceError};

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
    let trace = def
        .trace(examples, registry, bindings)
        .map_err(|source| CompileError::Trace {
            function: def.name().to_string(),
            source,
        })?;
    compile_trace(def.name(), trace, registry)
}

/// Compiles a trace (see the module doc).
pub fn compile_trace(
    function: &str,
    trace: Trace,
    registry: &Registry,
) -> Result<CompiledEntry, CompileError> {
    let _span = tracing::debug_span!("compiler.compile", function).entered();
    let signature = guards::signature(&trace.graph);
    let input_guards = guards::input_guards(&trace.graph);
    let graph = optimize(trace.graph, registry).map_err(|source| CompileError::Pass {
        function: function.to_string(),
        source,
    })?;
    let plan = plan_memory(&graph);
    let lowered = lower(&graph, &plan).map_err(|source| CompileError::Lower {
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
    })
}
