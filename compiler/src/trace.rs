//! The Rust tracing frontend.
//!
//! A [`FunctionDef`] is a named Rust closure over a [`Tracer`]. Tracing runs
//! the closure once per set of example inputs ([`Example`]: a dtype and a
//! static shape, plus the value for rank-0 inputs) and records every op into a
//! [`Graph`]:
//!
//! ```
//! use ampoule_compiler::{function, Traced, Tracer, TraceError};
//! use ampoule_kernels::{DType, Tensor};
//!
//! let w = Tensor::from_vec(&[2, 2], vec![1.0f32, 0.0, 0.0, 1.0]).unwrap();
//! let mlp = function("mlp", move |cx: &mut Tracer<'_>, x: &[Traced]| {
//!     let w = cx.capture("w", &w)?;
//!     let h = cx.linear(x[0], w, None)?;
//!     Ok(vec![cx.relu(h)?])
//! })
//! .inputs(["x"])
//! .outputs(["y"]);
//! # let _ = mlp;
//! ```
//!
//! - [`Traced`] values are cheap `Copy` ids; ops are methods of the tracer,
//!   and each returns a `Result` whose error names the op and the operand.
//! - Output types come from the kernels' own signature checkers, so a shape
//!   error surfaces at trace time with the kernel's message.
//! - Tensors from the environment become globals: [`Tracer::capture`]
//!   embeds a tensor as a package weight; [`Tracer::bound`] reads a value the
//!   application binds by name at load ([`Tracer::bound_specialized`] also
//!   specializes the entry on the bound value's content).
//! - A rank-0 input can be read at trace time with [`Tracer::scalar_input`];
//!   the entry is then specialized on that value and the signature declares
//!   the input a scalar.
//! - [`Tracer::assign`] declares that the function updates an input in
//!   place (a cache, a running statistic): the new value becomes a hidden
//!   output after the declared ones, and the host writes it into the
//!   caller's tensor after a successful call.
//! - `concat` of more than five inputs becomes a chain of concats (a launch
//!   carries at most six operands).
//!
//! The result, a [`Trace`], holds the graph and its program hash
//! ([`crate::hash`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ampoule_host::ScalarValue;
use ampoule_kernels::{AttrValue, Attrs, DType, Registry, Tensor, TensorMeta};

use crate::hash::program_hash;
use crate::ir::{
    attrs, BuildError, GlobalDef, GlobalSource, Graph, InputDef, Op, ValueId, MAX_REGION_DEPTH,
};

/// A traced value: a cheap handle to a value of the graph being traced, or
/// of a region being traced inside it ([`Tracer::cond`],
/// [`Tracer::while_loop`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Traced {
    /// The graph the value belongs to: 0 for the function's graph, a fresh
    /// number for each region.
    scope: u32,
    value: ValueId,
}

impl Traced {
    /// The IR value this handle names (in the graph of its scope).
    pub fn id(self) -> ValueId {
        self.value
    }
}

/// The function's own graph's scope.
const ROOT: u32 = 0;

/// A graph whose recording is suspended while a region inside it is traced.
struct Level {
    graph: Graph,
    scope: u32,
    /// `(value in the enclosing graph, input value here)` for every value
    /// of an enclosing graph the region reads.
    captures: Vec<(ValueId, ValueId)>,
}

/// An example input: what tracing knows about one input.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub meta: TensorMeta,
    /// The value of a rank-0 input (read by [`Tracer::scalar_input`]).
    pub value: Option<ScalarValue>,
    /// The elements of a small tensor input of rank >= 1 (at most
    /// `MAX_INPUT_VALUES`; read by [`Tracer::input_values`]).
    pub values: Option<Vec<ScalarValue>>,
}

impl Example {
    /// The example a call's input gives: its meta, its value if rank 0, its
    /// elements if small.
    pub fn of(t: &Tensor) -> Example {
        let (value, values) = if t.shape().is_empty() {
            (ScalarValue::of(t), None)
        } else {
            (None, ScalarValue::all(t))
        };
        Example {
            meta: t.meta().clone(),
            value,
            values,
        }
    }

    /// An example with only a meta (a tensor input never read as a value).
    pub fn meta(meta: TensorMeta) -> Example {
        Example {
            meta,
            value: None,
            values: None,
        }
    }
}

/// Why tracing failed. Messages name the op or the input and the fix.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("`{op}`: {source}")]
    Op {
        op: String,
        #[source]
        source: BuildError,
    },
    #[error("`{op}`: {message}")]
    Invalid { op: String, message: String },
    #[error("input {index} does not exist: the function was traced with {count} inputs")]
    NoSuchInput { index: usize, count: usize },
    #[error("input {index} (`{name}`) is {meta}, not a scalar; pass scalars as rank-0 tensors")]
    NotScalar {
        index: usize,
        name: String,
        meta: TensorMeta,
    },
    #[error("input {index} (`{name}`) is {meta}: its values are needed at compile time, which needs a tensor of at most {max} elements", max = ampoule_host::guard::MAX_INPUT_VALUES)]
    NoValues {
        index: usize,
        name: String,
        meta: TensorMeta,
    },
    #[error("input {index} (`{name}`) holds {value}, not {expected}")]
    ScalarKind {
        index: usize,
        name: String,
        value: ScalarValue,
        expected: &'static str,
    },
    #[error("global `{name}` is not bound; bind a tensor under that name before tracing (bound: {available})")]
    Unbound { name: String, available: String },
    #[error("global name `{name}` is already used in this trace for {existing}; give each distinct global its own name")]
    GlobalName { name: String, existing: String },
    #[error(
        "function `{function}` declares {declared} {what} names but {actual} {what}s were {verb}"
    )]
    Arity {
        function: String,
        what: &'static str,
        declared: usize,
        actual: usize,
        verb: &'static str,
    },
    #[error("{0}")]
    User(String),
}

impl TraceError {
    /// An error of the function's own, with this message.
    pub fn msg(message: impl std::fmt::Display) -> TraceError {
        TraceError::User(message.to_string())
    }
}

/// The closure behind a [`FunctionDef`].
pub type Body = dyn Fn(&mut Tracer<'_>, &[Traced]) -> Result<Vec<Traced>, TraceError> + Send + Sync;

/// A named Rust function to trace. Cheap to clone.
#[derive(Clone)]
pub struct FunctionDef {
    name: String,
    inputs: Option<Vec<String>>,
    outputs: Option<Vec<String>>,
    body: Arc<Body>,
    /// Dims to compile as symbols: `(input name, axis, min, max)`.
    dynamic: Vec<(String, usize, u64, u64)>,
}

impl std::fmt::Debug for FunctionDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionDef")
            .field("name", &self.name)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

/// Defines function `name` by its body. Inputs are named `x0, x1, ..` and
/// outputs `y0, y1, ..` unless [`FunctionDef::inputs`] and
/// [`FunctionDef::outputs`] name them.
pub fn function<F>(name: impl Into<String>, body: F) -> FunctionDef
where
    F: Fn(&mut Tracer<'_>, &[Traced]) -> Result<Vec<Traced>, TraceError> + Send + Sync + 'static,
{
    FunctionDef {
        name: name.into(),
        inputs: None,
        outputs: None,
        body: Arc::new(body),
        dynamic: Vec::new(),
    }
}

/// The result of tracing: the graph, before any pass, and its program hash.
#[derive(Clone, Debug)]
pub struct Trace {
    pub graph: Graph,
    pub program_hash: String,
    /// The graph breaks the body took, in order (see [`Tracer::item`]):
    /// the trace is valid only for inputs that read these values again.
    pub breaks: Vec<BreakRecord>,
}

/// One graph break of a trace: the value read, and where its guard is.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakRecord {
    /// The value the body read (and the trace is specialized on).
    pub value: ScalarValue,
    /// The one-element tensor read.
    pub read: ValueId,
    /// The first node of the break's condition (`read == value`).
    pub cond_from: usize,
    /// The `Guard` node checking it (the last node of the condition).
    pub guard: usize,
}

/// What a trace knows about graph breaks: the values of the inputs (to
/// evaluate what the body reads), and values to replay instead, in order
/// (a path recorded earlier).
#[derive(Clone, Copy, Debug, Default)]
pub struct BreakSource<'a> {
    pub data: Option<&'a [Tensor]>,
    pub replay: &'a [ScalarValue],
}

impl FunctionDef {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Names the inputs, in order.
    pub fn inputs<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Self {
        self.inputs = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Marks axis `axis` of input `input` dynamic: entries are compiled for
    /// every size from 2 up (see [`crate::dynamic`]), not for the example's.
    pub fn dynamic(self, input: &str, axis: usize) -> Self {
        self.dynamic_range(input, axis, 2, crate::dynamic::MAX_SIZE)
    }

    /// Marks axis `axis` of input `input` dynamic for sizes `min..=max`.
    pub fn dynamic_range(mut self, input: &str, axis: usize, min: u64, max: u64) -> Self {
        self.dynamic.push((input.to_string(), axis, min, max));
        self
    }

    /// The dims marked dynamic: `(input name, axis, min, max)`.
    pub fn dynamic_dims(&self) -> &[(String, usize, u64, u64)] {
        &self.dynamic
    }

    /// The declared input names, if any.
    pub fn input_names(&self) -> Option<&[String]> {
        self.inputs.as_deref()
    }

    /// Names the outputs, in order.
    pub fn outputs<I: IntoIterator<Item = S>, S: Into<String>>(mut self, names: I) -> Self {
        self.outputs = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Traces the body for `examples`. `bindings` are the values host-bound
    /// globals will have (their metas and, when specialized, contents).
    pub fn trace(
        &self,
        examples: &[Example],
        registry: &Registry,
        bindings: &BTreeMap<String, Tensor>,
    ) -> Result<Trace, TraceError> {
        self.trace_with(examples, registry, bindings, BreakSource::default())
    }

    /// [`FunctionDef::trace`], with what graph breaks read: a body that
    /// calls [`Tracer::item`] gets `breaks.replay` values first, then values
    /// computed from `breaks.data`.
    pub fn trace_with(
        &self,
        examples: &[Example],
        registry: &Registry,
        bindings: &BTreeMap<String, Tensor>,
        breaks: BreakSource<'_>,
    ) -> Result<Trace, TraceError> {
        self.trace_body(examples, registry, bindings, breaks, &*self.body)
    }

    /// Traces `body` in place of the function's own body, with its names.
    pub(crate) fn trace_body(
        &self,
        examples: &[Example],
        registry: &Registry,
        bindings: &BTreeMap<String, Tensor>,
        breaks: BreakSource<'_>,
        body: &(dyn Fn(&mut Tracer<'_>, &[Traced]) -> Result<Vec<Traced>, TraceError> + '_),
    ) -> Result<Trace, TraceError> {
        let _span = tracing::debug_span!("compiler.trace", function = %self.name).entered();
        let names: Vec<String> = match &self.inputs {
            Some(n) if n.len() != examples.len() => {
                return Err(TraceError::Arity {
                    function: self.name.clone(),
                    what: "input",
                    declared: n.len(),
                    actual: examples.len(),
                    verb: "passed",
                })
            }
            Some(n) => n.clone(),
            None => (0..examples.len()).map(|i| format!("x{i}")).collect(),
        };
        let mut cx = Tracer {
            graph: Graph::new(),
            registry,
            bindings,
            examples,
            globals: HashMap::new(),
            scope: ROOT,
            captures: Vec::new(),
            outer: Vec::new(),
            next_scope: ROOT,
            source: breaks,
            breaks: Vec::new(),
        };
        let mut inputs = Vec::with_capacity(examples.len());
        for (i, (name, ex)) in names.into_iter().zip(examples).enumerate() {
            let index = cx.graph.add_input(name, ex.meta.clone());
            let v = cx.graph.input(index).map_err(|source| TraceError::Op {
                op: format!("input {i}"),
                source,
            })?;
            inputs.push(cx.t(v));
        }
        let outs = body(&mut cx, &inputs)?;
        // `assign` recorded the new values of updated inputs as outputs;
        // they go after the declared outputs (see `Graph::mutations`).
        let updated = std::mem::take(&mut cx.graph.outputs);
        let out_names: Vec<String> = match &self.outputs {
            Some(n) if n.len() != outs.len() => {
                return Err(TraceError::Arity {
                    function: self.name.clone(),
                    what: "output",
                    declared: n.len(),
                    actual: outs.len(),
                    verb: "returned",
                })
            }
            Some(n) => n.clone(),
            None => (0..outs.len()).map(|i| format!("y{i}")).collect(),
        };
        for (name, t) in out_names.into_iter().zip(outs) {
            let v = cx.resolve(t, "return")?;
            cx.graph.add_output(name, v);
        }
        cx.graph.outputs.extend(updated);
        let graph = cx.graph;
        let program_hash = program_hash(&graph);
        Ok(Trace {
            graph,
            program_hash,
            breaks: cx.breaks,
        })
    }
}

/// Records ops while a [`FunctionDef`]'s body runs. See the module doc.
pub struct Tracer<'a> {
    graph: Graph,
    registry: &'a Registry,
    bindings: &'a BTreeMap<String, Tensor>,
    examples: &'a [Example],
    /// Globals by name: index and the value that reads it (in the function's
    /// own graph).
    globals: HashMap<String, (u32, ValueId)>,
    /// The scope of `graph`, and what it reads from enclosing graphs.
    scope: u32,
    captures: Vec<(ValueId, ValueId)>,
    /// The enclosing graphs while a region is traced, outermost first.
    outer: Vec<Level>,
    next_scope: u32,
    /// Where graph breaks get their values, and the breaks taken so far.
    source: BreakSource<'a>,
    breaks: Vec<BreakRecord>,
}

fn s(v: &str) -> AttrValue {
    AttrValue::Str(v.to_string())
}

macro_rules! unary_ops {
    ($($(#[$doc:meta])* $method:ident => $op:literal,)*) => {$(
        $(#[$doc])*
        pub fn $method(&mut self, x: Traced) -> Result<Traced, TraceError> {
            self.one(concat!("unary ", $op), "unary@1", attrs([("op", s($op))]), &[x])
        }
    )*};
}

macro_rules! binary_ops {
    ($($method:ident => $kernel:literal $op:literal,)*) => {$(
        #[doc = concat!("`", $kernel, "` with `op` = `", $op, "` (numpy broadcasting).")]
        pub fn $method(&mut self, a: Traced, b: Traced) -> Result<Traced, TraceError> {
            self.one(concat!($kernel, " ", $op), $kernel, attrs([("op", s($op))]), &[a, b])
        }
    )*};
}

impl<'a> Tracer<'a> {
    /// The graph recorded so far.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The dtype and shape of a traced value.
    pub fn meta(&self, t: Traced) -> &TensorMeta {
        // Values handed out by this tracer always exist; a handle from another
        // trace that is out of range gets a rank-0 placeholder, and the next op
        // on it reports the unknown value.
        static NONE: std::sync::OnceLock<TensorMeta> = std::sync::OnceLock::new();
        self.graph_of(t.scope)
            .and_then(|g| g.try_meta(t.value))
            .unwrap_or_else(|| NONE.get_or_init(|| TensorMeta::new(DType::U8, [])))
    }

    pub fn shape(&self, t: Traced) -> &[usize] {
        &self.meta(t).shape
    }

    pub fn dtype(&self, t: Traced) -> DType {
        self.meta(t).dtype
    }

    fn check(&self, t: Traced, op: &str) -> Result<(), TraceError> {
        match self.graph_of(t.scope).and_then(|g| g.try_meta(t.value)) {
            Some(_) => Ok(()),
            None => Err(TraceError::Op {
                op: op.to_string(),
                source: BuildError::UnknownValue(t.value),
            }),
        }
    }

    /// Any kernel of the registry, by `name@version`, with its attributes.
    pub fn kernel(
        &mut self,
        kernel: &str,
        attrs: Attrs,
        inputs: &[Traced],
    ) -> Result<Vec<Traced>, TraceError> {
        let ins = self.resolve_all(inputs, kernel)?;
        let outs = self
            .graph
            .kernel(self.registry, kernel, attrs, &ins)
            .map_err(|source| TraceError::Op {
                op: kernel.to_string(),
                source,
            })?;
        Ok(outs.into_iter().map(|v| self.t(v)).collect())
    }

    fn one(
        &mut self,
        op: &str,
        kernel: &str,
        attrs: Attrs,
        inputs: &[Traced],
    ) -> Result<Traced, TraceError> {
        let ins = self.resolve_all(inputs, op)?;
        let outs = self
            .graph
            .kernel(self.registry, kernel, attrs, &ins)
            .map_err(|source| TraceError::Op {
                op: op.to_string(),
                source,
            })?;
        outs.first()
            .copied()
            .map(|v| self.t(v))
            .ok_or_else(|| TraceError::Invalid {
                op: op.to_string(),
                message: format!("kernel `{kernel}` defines no output"),
            })
    }

    // ---- scopes ----

    /// A handle to `v` of the graph being recorded now.
    fn t(&self, value: ValueId) -> Traced {
        Traced {
            scope: self.scope,
            value,
        }
    }

    fn graph_of(&self, scope: u32) -> Option<&Graph> {
        if scope == self.scope {
            return Some(&self.graph);
        }
        self.outer
            .iter()
            .find(|l| l.scope == scope)
            .map(|l| &l.graph)
    }

    /// The function's own graph (inputs, globals).
    fn root_mut(&mut self) -> &mut Graph {
        match self.outer.first_mut() {
            Some(l) => &mut l.graph,
            None => &mut self.graph,
        }
    }

    /// Runs `f` with the function's own graph as the current one: globals
    /// and constants always live there, and regions read them as inputs.
    fn in_root<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let Some(root) = self.outer.first_mut() else {
            return f(self);
        };
        std::mem::swap(&mut self.graph, &mut root.graph);
        std::mem::swap(&mut self.scope, &mut root.scope);
        let r = f(self);
        if let Some(root) = self.outer.first_mut() {
            std::mem::swap(&mut self.graph, &mut root.graph);
            std::mem::swap(&mut self.scope, &mut root.scope);
        }
        r
    }

    /// The value `t` names in the graph recorded now. A value of an
    /// enclosing graph is passed into each region in between as an input
    /// (once per region, however often it is read).
    fn resolve(&mut self, t: Traced, op: &str) -> Result<ValueId, TraceError> {
        if t.scope == self.scope {
            self.check(t, op)?;
            return Ok(t.value);
        }
        let Some(j) = self.outer.iter().position(|l| l.scope == t.scope) else {
            return Err(TraceError::Invalid {
                op: op.to_string(),
                message: format!(
                    "{} belongs to a region that has ended; return it from the region instead",
                    t.value
                ),
            });
        };
        self.check(t, op)?;
        let meta = self.meta(t).clone();
        let mut v = t.value;
        for level in self.outer.iter_mut().skip(j + 1) {
            v = lift(&mut level.graph, &mut level.captures, v, &meta);
        }
        Ok(lift(&mut self.graph, &mut self.captures, v, &meta))
    }

    fn resolve_all(&mut self, ts: &[Traced], op: &str) -> Result<Vec<ValueId>, TraceError> {
        ts.iter().map(|&t| self.resolve(t, op)).collect()
    }

    /// Traces `body` as a region taking `args`; returns the region's graph
    /// and the enclosing values it reads (its extra inputs, after `args`).
    fn region(
        &mut self,
        op: &str,
        args: &[TensorMeta],
        body: impl FnOnce(&mut Self, &[Traced]) -> Result<Vec<Traced>, TraceError>,
    ) -> Result<(Graph, Vec<ValueId>), TraceError> {
        if self.outer.len() >= MAX_REGION_DEPTH {
            return Err(TraceError::Invalid {
                op: op.to_string(),
                message: format!("regions nest deeper than {MAX_REGION_DEPTH}"),
            });
        }
        self.next_scope += 1;
        self.outer.push(Level {
            graph: std::mem::take(&mut self.graph),
            scope: std::mem::replace(&mut self.scope, self.next_scope),
            captures: std::mem::take(&mut self.captures),
        });
        let traced = (|| {
            let mut params = Vec::with_capacity(args.len());
            for (i, m) in args.iter().enumerate() {
                let index = self.graph.add_input(format!("r{i}"), m.clone());
                let v = self.graph.input(index).map_err(|source| TraceError::Op {
                    op: op.to_string(),
                    source,
                })?;
                params.push(self.t(v));
            }
            let results = body(self, &params)?;
            for (i, r) in results.into_iter().enumerate() {
                let v = self.resolve(r, op)?;
                self.graph.add_output(format!("y{i}"), v);
            }
            Ok(())
        })();
        // Restore the enclosing graph whatever happened.
        let level = self.outer.pop().ok_or_else(|| TraceError::Invalid {
            op: op.to_string(),
            message: "the region stack is empty".into(),
        })?;
        let graph = std::mem::replace(&mut self.graph, level.graph);
        let captures = std::mem::replace(&mut self.captures, level.captures);
        self.scope = level.scope;
        traced?;
        Ok((
            graph,
            captures.into_iter().map(|(outer, _)| outer).collect(),
        ))
    }

    // ---- graph breaks ----

    /// Reads the value of the one-element tensor `t` now, during tracing, so
    /// the body can branch on it in Rust: a *graph break*. The entry is
    /// compiled for this value: the wrapper checks `t == value` where the
    /// value is computed, and a call whose data gives another value stops
    /// there with a miss at this break (break `k` is the body's `k`-th
    /// read). A compiler attached to the package then traces the other
    /// path and the entry grows a continuation for it.
    ///
    /// The value comes from the call's inputs (evaluated on the reference
    /// kernels), or from a recorded path when an entry is re-traced.
    /// Only in the function's own graph, not inside `cond` or `while_loop`
    /// regions (use `cond` there).
    pub fn item(&mut self, t: Traced) -> Result<ScalarValue, TraceError> {
        let op = "item";
        let invalid = |message: String| TraceError::Invalid {
            op: op.to_string(),
            message,
        };
        if !self.outer.is_empty() {
            return Err(invalid(
                "a value cannot be read inside a `cond` or `while_loop` region; branch with `cond` instead".into(),
            ));
        }
        let read = self.resolve(t, op)?;
        let meta = self.graph.meta(read).clone();
        if meta.numel() != Some(1) {
            return Err(invalid(format!("reads one-element tensors; got {meta}")));
        }
        let k = self.breaks.len();
        let value = match (self.source.replay.get(k), self.source.data) {
            (Some(v), _) => *v,
            (None, Some(data)) => {
                let mut g = self.graph.clone();
                g.outputs = vec![crate::ir::OutputDef {
                    name: "item".into(),
                    value: read,
                }];
                let out = crate::interp::evaluate(&g, self.registry, data, self.bindings)
                    .map_err(|e| invalid(format!("evaluating break {k} on the inputs: {e}")))?;
                out.first()
                    .and_then(ScalarValue::of)
                    .ok_or_else(|| invalid(format!("break {k} read no value")))?
            }
            (None, None) => {
                return Err(invalid(format!(
                    "break {k} needs the inputs' values, and this trace has only their types; call the compiled function with tensors"
                )))
            }
        };
        let cond_from = self.graph.nodes.len();
        let cond = self.break_condition(self.t(read), value)?;
        let cond = self.resolve(cond, op)?;
        let guard = self.graph.nodes.len();
        self.graph.push(
            Op::Guard {
                index: u32::try_from(k).map_err(|_| invalid("too many breaks".into()))?,
            },
            vec![cond],
            vec![],
        );
        self.breaks.push(BreakRecord {
            value,
            read,
            cond_from,
            guard,
        });
        Ok(value)
    }

    /// [`Tracer::item`] for an integer or bool tensor.
    pub fn item_i64(&mut self, t: Traced) -> Result<i64, TraceError> {
        match self.item(t)? {
            ScalarValue::Int(v) => Ok(v),
            ScalarValue::Float(v) => Err(TraceError::Invalid {
                op: "item_i64".into(),
                message: format!("the tensor holds the float {v}; use `item_f64`"),
            }),
        }
    }

    /// [`Tracer::item`] for a float tensor (integers convert).
    pub fn item_f64(&mut self, t: Traced) -> Result<f64, TraceError> {
        Ok(match self.item(t)? {
            ScalarValue::Float(v) => v,
            ScalarValue::Int(v) => v as f64,
        })
    }

    /// [`Tracer::item`] as a truth value (non-zero).
    pub fn item_bool(&mut self, t: Traced) -> Result<bool, TraceError> {
        Ok(match self.item(t)? {
            ScalarValue::Float(v) => v != 0.0,
            ScalarValue::Int(v) => v != 0,
        })
    }

    /// Adds the guard of break `k` on `cond` to the graph recorded now.
    pub(crate) fn guard(&mut self, cond: Traced, k: usize) -> Result<(), TraceError> {
        let cond = self.resolve(cond, "guard")?;
        let index = u32::try_from(k).map_err(|_| TraceError::Invalid {
            op: "guard".into(),
            message: "too many breaks".into(),
        })?;
        self.graph.push(Op::Guard { index }, vec![cond], vec![]);
        Ok(())
    }

    /// A bool that holds where `read` equals `value` exactly (NaN equals
    /// NaN, as in guards).
    pub(crate) fn break_condition(
        &mut self,
        read: Traced,
        value: ScalarValue,
    ) -> Result<Traced, TraceError> {
        let dtype = self.dtype(read);
        let nan = matches!(value, ScalarValue::Float(v) if v.is_nan());
        if nan {
            let same = self.eq(read, read)?;
            let t = self.constant(Tensor::scalar(ampoule_kernels::Bool8(1)));
            let f = self.constant(Tensor::scalar(ampoule_kernels::Bool8(0)));
            return self.where_(same, f, t);
        }
        let c = match value {
            ScalarValue::Int(v) => self.constant(Tensor::scalar(v)),
            ScalarValue::Float(v) => self.constant(Tensor::scalar(v)),
        };
        let c = self.cast(c, dtype)?;
        self.eq(read, c)
    }

    // ---- control flow ----

    /// Runs `then` if `pred` (a one-element bool or integer tensor) is
    /// non-zero, else `otherwise`, each on `operands`, as wrapper control
    /// flow: only the branch taken launches kernels. Both branches must
    /// return the same dtypes and shapes. The branches may also read any
    /// value traced outside them (weights, other tensors): those are passed
    /// in automatically.
    pub fn cond<T, E>(
        &mut self,
        pred: Traced,
        operands: &[Traced],
        then: T,
        otherwise: E,
    ) -> Result<Vec<Traced>, TraceError>
    where
        T: FnOnce(&mut Self, &[Traced]) -> Result<Vec<Traced>, TraceError>,
        E: FnOnce(&mut Self, &[Traced]) -> Result<Vec<Traced>, TraceError>,
    {
        let p = self.resolve(pred, "cond")?;
        let args = self.resolve_all(operands, "cond")?;
        let metas: Vec<TensorMeta> = args.iter().map(|&v| self.graph.meta(v).clone()).collect();
        let (mut a, a_caps) = self.region("cond (then)", &metas, then)?;
        let (mut b, b_caps) = self.region("cond (otherwise)", &metas, otherwise)?;
        // Both branches take (operands, then's captures, otherwise's).
        let meta_of = |cx: &Self, vs: &[ValueId]| -> Vec<TensorMeta> {
            vs.iter().map(|&v| cx.graph.meta(v).clone()).collect()
        };
        let end = a.inputs.len();
        splice_inputs(&mut a, end, &meta_of(self, &b_caps));
        splice_inputs(&mut b, metas.len(), &meta_of(self, &a_caps));
        let mut ins = args;
        ins.extend(a_caps);
        ins.extend(b_caps);
        let outs = self
            .graph
            .if_(p, &ins, a, b)
            .map_err(|source| TraceError::Op {
                op: "cond".into(),
                source,
            })?;
        Ok(outs.into_iter().map(|v| self.t(v)).collect())
    }

    /// `while cond(carried) { carried = body(carried) }`, as a loop in the
    /// wrapper: the trip count may depend on data. `cond` returns a
    /// one-element bool or integer tensor; `body` returns the next carried
    /// values, with the same dtypes and shapes as `init`. Returns the carried
    /// values once `cond` does not hold. Values traced outside the loop are
    /// passed in automatically (loop invariants). A loop that never ends is
    /// stopped by the host's deadline.
    pub fn while_loop<C, B>(
        &mut self,
        init: &[Traced],
        cond: C,
        body: B,
    ) -> Result<Vec<Traced>, TraceError>
    where
        C: FnOnce(&mut Self, &[Traced]) -> Result<Traced, TraceError>,
        B: FnOnce(&mut Self, &[Traced]) -> Result<Vec<Traced>, TraceError>,
    {
        let carried = self.resolve_all(init, "while_loop")?;
        let metas: Vec<TensorMeta> = carried
            .iter()
            .map(|&v| self.graph.meta(v).clone())
            .collect();
        let (mut c, c_caps) = self.region("while_loop (cond)", &metas, |cx, xs| {
            Ok(vec![cond(cx, xs)?])
        })?;
        let (mut b, b_caps) = self.region("while_loop (body)", &metas, body)?;
        let meta_of = |cx: &Self, vs: &[ValueId]| -> Vec<TensorMeta> {
            vs.iter().map(|&v| cx.graph.meta(v).clone()).collect()
        };
        let end = c.inputs.len();
        splice_inputs(&mut c, end, &meta_of(self, &b_caps));
        splice_inputs(&mut b, metas.len(), &meta_of(self, &c_caps));
        let mut invariants = c_caps;
        invariants.extend(b_caps);
        let outs = self
            .graph
            .while_(&carried, &invariants, c, b)
            .map_err(|source| TraceError::Op {
                op: "while_loop".into(),
                source,
            })?;
        Ok(outs.into_iter().map(|v| self.t(v)).collect())
    }

    // ---- boundary ----

    /// Declares that the function updates `input` in place: after each
    /// call, the caller's tensor holds `value` (torch's `x.copy_(value)` on
    /// an argument, a KV cache or a running statistic). `input` is one of
    /// the `Traced` inputs the body received; `value` must have its dtype
    /// and shape, and an input is assigned at most once.
    ///
    /// This does not change what `input` means in the rest of the trace (it
    /// still reads the value passed in, as in JAX): compute the new value,
    /// assign it, and use `value` if the body needs it again. The function's
    /// outputs stay the ones the body returns; the new value travels as a
    /// hidden output the host writes back (`Package::call_mut`).
    pub fn assign(&mut self, input: Traced, value: Traced) -> Result<(), TraceError> {
        let invalid = |message: String| TraceError::Invalid {
            op: "assign".into(),
            message,
        };
        if !self.outer.is_empty() {
            return Err(invalid(
                "an input can only be assigned outside `cond` and `while_loop` regions; return the new value from the region and assign it after".into(),
            ));
        }
        self.check(input, "assign")?;
        self.check(value, "assign")?;
        let index = self
            .graph
            .producers()
            .get(input.value.index())
            .copied()
            .flatten()
            .and_then(|n| match self.graph.nodes.get(n).map(|n| &n.op) {
                Some(Op::Input(i)) => Some(*i),
                _ => None,
            })
            .ok_or_else(|| {
                invalid(format!(
                    "{} is not an input of the function; only an input the body received can be updated in place",
                    input.value
                ))
            })?;
        let def = self
            .graph
            .inputs
            .get(index as usize)
            .ok_or_else(|| invalid(format!("input {index} does not exist")))?;
        if self.graph.mutations.contains(&index) {
            return Err(invalid(format!(
                "input `{}` is already assigned; compute its final value and assign it once",
                def.name
            )));
        }
        let meta = self.meta(value);
        if *meta != def.meta {
            return Err(invalid(format!(
                "the new value of input `{}` is {meta}, but the input is {}; an in-place update keeps the input's dtype and shape (cast or reshape the value first)",
                def.name, def.meta
            )));
        }
        let name = format!("{}'", def.name);
        self.graph.add_output(name, value.value);
        self.graph.mutations.push(index);
        Ok(())
    }

    /// Input `index`'s example and its declaration in the function's graph.
    fn input_slot(&mut self, index: usize) -> Result<(&'a Example, &mut InputDef), TraceError> {
        let count = self.examples.len();
        let examples: &'a [Example] = self.examples;
        let ex = examples
            .get(index)
            .ok_or(TraceError::NoSuchInput { index, count })?;
        let def = self
            .root_mut()
            .inputs
            .get_mut(index)
            .ok_or(TraceError::NoSuchInput { index, count })?;
        Ok((ex, def))
    }

    /// Reads rank-0 input `index` at trace time. The entry is specialized on
    /// the value (a `ScalarValue` guard) and the input is a scalar in the
    /// signature.
    pub fn scalar_input(&mut self, index: usize) -> Result<ScalarValue, TraceError> {
        let (ex, def) = self.input_slot(index)?;
        match (ex.meta.shape.is_empty(), ex.value) {
            (true, Some(v)) => {
                def.specialized = Some(v);
                Ok(v)
            }
            _ => Err(TraceError::NotScalar {
                index,
                name: def.name.clone(),
                meta: ex.meta.clone(),
            }),
        }
    }

    /// [`Tracer::scalar_input`] for an integer (or bool) input.
    pub fn scalar_i64(&mut self, index: usize) -> Result<i64, TraceError> {
        match self.scalar_input(index)? {
            ScalarValue::Int(v) => Ok(v),
            value => Err(TraceError::ScalarKind {
                index,
                name: self.root_mut().inputs[index].name.clone(),
                value,
                expected: "an integer",
            }),
        }
    }

    /// [`Tracer::scalar_input`] for a float input (integers convert).
    pub fn scalar_f64(&mut self, index: usize) -> Result<f64, TraceError> {
        match self.scalar_input(index)? {
            ScalarValue::Float(v) => Ok(v),
            ScalarValue::Int(v) => Ok(v as f64),
        }
    }

    /// Reads the elements of tensor input `index` (rank >= 1, at most
    /// `MAX_INPUT_VALUES` elements) at trace time, row-major. The entry is
    /// specialized on them (an `InputValues` guard): for an input the body
    /// needs as a compile-time value (ONNX axes, sizes or pads fed as graph
    /// inputs).
    pub fn input_values(&mut self, index: usize) -> Result<Vec<ScalarValue>, TraceError> {
        let (ex, def) = self.input_slot(index)?;
        match (&ex.values, ex.meta.shape.is_empty()) {
            (Some(v), false) => {
                def.values = Some(v.clone());
                Ok(v.clone())
            }
            _ => Err(TraceError::NoValues {
                index,
                name: def.name.clone(),
                meta: ex.meta.clone(),
            }),
        }
    }

    /// The function input `v` is, if it is one (read directly, not computed).
    pub fn input_index(&self, v: Traced) -> Option<usize> {
        if v.scope != ROOT {
            return None;
        }
        let g = self.outer.first().map_or(&self.graph, |l| &l.graph);
        g.nodes.iter().find_map(|n| match n.op {
            Op::Input(i) if n.outputs.first() == Some(&v.value) => Some(i as usize),
            _ => None,
        })
    }

    /// A compile-time constant (folded where possible, otherwise embedded in
    /// the package).
    pub fn constant(&mut self, value: Tensor) -> Traced {
        self.in_root(|cx| {
            let v = cx.graph.constant(value);
            cx.t(v)
        })
    }

    fn add_global(
        &mut self,
        name: &str,
        meta: TensorMeta,
        source: GlobalSource,
    ) -> Result<Traced, TraceError> {
        let index = self.graph.add_global(GlobalDef {
            name: name.to_string(),
            meta,
            source,
        });
        let v = self.graph.global(index).map_err(|source| TraceError::Op {
            op: format!("global `{name}`"),
            source,
        })?;
        self.globals.insert(name.to_string(), (index, v));
        Ok(self.t(v))
    }

    fn existing_global(&self, name: &str) -> Option<(u32, ValueId, &GlobalSource)> {
        let &(g, v) = self.globals.get(name)?;
        Some((g, v, &self.graph.globals[g as usize].source))
    }

    /// Captures `tensor` under `name`: it is embedded in the package as a
    /// weight. Capturing the same tensor under the same name twice reads the
    /// same global.
    pub fn capture(&mut self, name: &str, tensor: &Tensor) -> Result<Traced, TraceError> {
        self.in_root(|cx| cx.capture_here(name, tensor))
    }

    fn capture_here(&mut self, name: &str, tensor: &Tensor) -> Result<Traced, TraceError> {
        if let Some((_, v, source)) = self.existing_global(name) {
            return match source {
                GlobalSource::Embedded(t)
                    if t.meta() == tensor.meta() && t.bytes() == tensor.bytes() =>
                {
                    Ok(Traced {
                        scope: ROOT,
                        value: v,
                    })
                }
                GlobalSource::Embedded(t) => Err(TraceError::GlobalName {
                    name: name.to_string(),
                    existing: format!("another captured tensor ({})", t.meta()),
                }),
                GlobalSource::Bound { .. } => Err(TraceError::GlobalName {
                    name: name.to_string(),
                    existing: "a host-bound global".to_string(),
                }),
            };
        }
        self.add_global(
            name,
            tensor.meta().clone(),
            GlobalSource::Embedded(tensor.clone()),
        )
    }

    fn bound_inner(&mut self, name: &str, specialize: bool) -> Result<Traced, TraceError> {
        let value = self.bindings.get(name).ok_or_else(|| TraceError::Unbound {
            name: name.to_string(),
            available: if self.bindings.is_empty() {
                "none".to_string()
            } else {
                self.bindings
                    .keys()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })?;
        let digest = specialize.then(|| ampoule_host::manifest::sha256_hex(value.bytes()));
        if let Some((g, v, source)) = self.existing_global(name) {
            return match source {
                GlobalSource::Bound { .. } => {
                    if digest.is_some() {
                        self.graph.globals[g as usize].source = GlobalSource::Bound { digest };
                    }
                    Ok(Traced {
                        scope: ROOT,
                        value: v,
                    })
                }
                GlobalSource::Embedded(_) => Err(TraceError::GlobalName {
                    name: name.to_string(),
                    existing: "a captured tensor".to_string(),
                }),
            };
        }
        self.add_global(name, value.meta().clone(), GlobalSource::Bound { digest })
    }

    /// Reads the host-bound global `name`. Its dtype and shape are taken
    /// from the value bound now and guarded at load; its content may change.
    pub fn bound(&mut self, name: &str) -> Result<Traced, TraceError> {
        self.in_root(|cx| cx.bound_inner(name, false))
    }

    /// Like [`Tracer::bound`], and specializes the entry on the bound value's
    /// content (a `GlobalDigest` guard).
    pub fn bound_specialized(&mut self, name: &str) -> Result<Traced, TraceError> {
        self.in_root(|cx| cx.bound_inner(name, true))
    }

    // ---- elementwise ----

    binary_ops! {
        add => "binary@1" "add",
        sub => "binary@1" "sub",
        mul => "binary@1" "mul",
        div => "binary@1" "div",
        pow => "binary@1" "pow",
        maximum => "binary@1" "max",
        minimum => "binary@1" "min",
        eq => "compare@1" "eq",
        lt => "compare@1" "lt",
        le => "compare@1" "le",
        gt => "compare@1" "gt",
        ge => "compare@1" "ge",
    }

    unary_ops! {
        /// `-x`.
        neg => "neg",
        /// `|x|`.
        abs => "abs",
        /// `max(x, 0)`.
        relu => "relu",
        /// GELU with the exact erf.
        gelu => "gelu",
        /// GELU with the tanh approximation.
        gelu_tanh => "gelu_tanh",
        tanh => "tanh",
        sigmoid => "sigmoid",
        exp => "exp",
        log => "log",
        sqrt => "sqrt",
        /// `1 / sqrt(x)`.
        rsqrt => "rsqrt",
        /// `1 / x`.
        recip => "recip",
        erf => "erf",
        floor => "floor",
        ceil => "ceil",
        sin => "sin",
        cos => "cos",
    }

    /// `cond ? x : y`, broadcasting all three.
    pub fn where_(&mut self, cond: Traced, x: Traced, y: Traced) -> Result<Traced, TraceError> {
        self.one("where", "where@1", Attrs::new(), &[cond, x, y])
    }

    /// Converts to `dtype`.
    pub fn cast(&mut self, x: Traced, dtype: DType) -> Result<Traced, TraceError> {
        self.one("cast", "cast@1", attrs([("to", s(dtype.name()))]), &[x])
    }

    /// A copy into fresh storage.
    pub fn copy(&mut self, x: Traced) -> Result<Traced, TraceError> {
        self.one("copy", "copy@1", Attrs::new(), &[x])
    }

    // ---- linear algebra and normalization ----

    /// `a @ b` with batch broadcasting.
    pub fn matmul(&mut self, a: Traced, b: Traced) -> Result<Traced, TraceError> {
        self.one("matmul", "matmul@1", Attrs::new(), &[a, b])
    }

    fn linear_inner(
        &mut self,
        op: &str,
        x: Traced,
        w: Traced,
        b: Option<Traced>,
        trans_w: bool,
    ) -> Result<Traced, TraceError> {
        let a = attrs([
            ("trans_w", AttrValue::Int(i64::from(trans_w))),
            ("bias", AttrValue::Int(i64::from(b.is_some()))),
        ]);
        match b {
            Some(b) => self.one(op, "linear@1", a, &[x, w, b]),
            None => self.one(op, "linear@1", a, &[x, w]),
        }
    }

    /// `x @ w + b` with `w` of shape `[K, N]`.
    pub fn linear(
        &mut self,
        x: Traced,
        w: Traced,
        b: Option<Traced>,
    ) -> Result<Traced, TraceError> {
        self.linear_inner("linear", x, w, b, false)
    }

    /// `x @ w.T + b` with `w` of shape `[N, K]` (PyTorch's `nn.Linear` layout).
    pub fn linear_t(
        &mut self,
        x: Traced,
        w: Traced,
        b: Option<Traced>,
    ) -> Result<Traced, TraceError> {
        self.linear_inner("linear_t", x, w, b, true)
    }

    /// Softmax along `axis` (negative counts from the end).
    pub fn softmax(&mut self, x: Traced, axis: i64) -> Result<Traced, TraceError> {
        self.one(
            "softmax",
            "softmax@1",
            attrs([("axis", AttrValue::Int(axis))]),
            &[x],
        )
    }

    /// Layer normalization over `x.shape[axis..]`; `scale` and `bias` have
    /// that shape.
    pub fn layer_norm(
        &mut self,
        x: Traced,
        scale: Traced,
        bias: Traced,
        axis: i64,
        eps: f64,
    ) -> Result<Traced, TraceError> {
        let a = attrs([
            ("axis", AttrValue::Int(axis)),
            ("epsilon", AttrValue::Float(eps)),
        ]);
        self.one("layer_norm", "layer_norm@1", a, &[x, scale, bias])
    }

    // ---- reductions ----

    fn reduce(
        &mut self,
        op: &'static str,
        x: Traced,
        axes: &[i64],
        keepdims: bool,
    ) -> Result<Traced, TraceError> {
        let a = attrs([
            ("op", s(op)),
            ("axes", AttrValue::Ints(axes.to_vec())),
            ("keepdims", AttrValue::Int(i64::from(keepdims))),
        ]);
        self.one(op, "reduce@1", a, &[x])
    }

    /// Sum over `axes` (empty: all axes).
    pub fn sum(&mut self, x: Traced, axes: &[i64], keepdims: bool) -> Result<Traced, TraceError> {
        self.reduce("sum", x, axes, keepdims)
    }

    /// Mean over `axes` (empty: all axes).
    pub fn mean(&mut self, x: Traced, axes: &[i64], keepdims: bool) -> Result<Traced, TraceError> {
        self.reduce("mean", x, axes, keepdims)
    }

    /// Maximum over `axes` (empty: all axes).
    pub fn max(&mut self, x: Traced, axes: &[i64], keepdims: bool) -> Result<Traced, TraceError> {
        self.reduce("max", x, axes, keepdims)
    }

    /// Minimum over `axes` (empty: all axes).
    pub fn min(&mut self, x: Traced, axes: &[i64], keepdims: bool) -> Result<Traced, TraceError> {
        self.reduce("min", x, axes, keepdims)
    }

    // ---- layout ----

    /// Permutes axes.
    pub fn transpose(&mut self, x: Traced, perm: &[usize]) -> Result<Traced, TraceError> {
        let perm = perm
            .iter()
            .map(|&p| i64::try_from(p).unwrap_or(i64::MAX))
            .collect();
        self.one(
            "transpose",
            "transpose@1",
            attrs([("perm", AttrValue::Ints(perm))]),
            &[x],
        )
    }

    /// Reshapes without copying. One dim may be `-1`: it is inferred from
    /// the element count.
    pub fn reshape(&mut self, x: Traced, shape: &[i64]) -> Result<Traced, TraceError> {
        self.check(x, "reshape")?;
        let invalid = |message: String| TraceError::Invalid {
            op: "reshape".to_string(),
            message,
        };
        let numel = self
            .meta(x)
            .numel()
            .ok_or_else(|| invalid("input element count overflows".into()))?;
        let mut infer = None;
        let mut known: usize = 1;
        let mut dims = Vec::with_capacity(shape.len());
        for (i, &d) in shape.iter().enumerate() {
            match d {
                -1 if infer.is_none() => {
                    infer = Some(i);
                    dims.push(0);
                }
                -1 => return Err(invalid(format!("shape {shape:?} has more than one -1"))),
                d => {
                    let d = usize::try_from(d).map_err(|_| {
                        invalid(format!("shape {shape:?} has a negative dim other than -1"))
                    })?;
                    known = known
                        .checked_mul(d)
                        .ok_or_else(|| invalid(format!("shape {shape:?} overflows")))?;
                    dims.push(d);
                }
            }
        }
        if let Some(i) = infer {
            if known == 0 || numel % known != 0 {
                return Err(invalid(format!(
                    "cannot infer the -1 in {shape:?} for {} elements",
                    numel
                )));
            }
            dims[i] = numel / known;
        }
        let x = self.resolve(x, "reshape")?;
        let v = self
            .graph
            .reshape(x, &dims)
            .map_err(|source| TraceError::Op {
                op: "reshape".into(),
                source,
            })?;
        Ok(self.t(v))
    }

    /// Joins `xs` along `axis`. More than five inputs become a chain of
    /// concats ([`Graph::concat`]), since a launch carries at most six
    /// operands.
    pub fn concat(&mut self, xs: &[Traced], axis: i64) -> Result<Traced, TraceError> {
        let ins = self.resolve_all(xs, "concat")?;
        let v = self
            .graph
            .concat(self.registry, &ins, axis)
            .map_err(|source| TraceError::Op {
                op: "concat".into(),
                source,
            })?;
        Ok(self.t(v))
    }

    /// ONNX `Slice` with one start, end and step per axis (negative indices
    /// count from the end, out-of-range bounds clamp).
    pub fn slice(
        &mut self,
        x: Traced,
        starts: &[i64],
        ends: &[i64],
        steps: &[i64],
    ) -> Result<Traced, TraceError> {
        let a = attrs([
            ("starts", AttrValue::Ints(starts.to_vec())),
            ("ends", AttrValue::Ints(ends.to_vec())),
            ("steps", AttrValue::Ints(steps.to_vec())),
        ]);
        self.one("slice", "slice@1", a, &[x])
    }

    /// `x[.., start..start+len, ..]` along `axis`.
    pub fn narrow(
        &mut self,
        x: Traced,
        axis: usize,
        start: usize,
        len: usize,
    ) -> Result<Traced, TraceError> {
        self.check(x, "narrow")?;
        let rank = self.meta(x).shape.len();
        if axis >= rank {
            return Err(TraceError::Invalid {
                op: "narrow".into(),
                message: format!("axis {axis} is out of range for rank {rank}"),
            });
        }
        let big = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        let mut starts = vec![0i64; rank];
        let mut ends = vec![i64::MAX; rank];
        starts[axis] = big(start);
        ends[axis] = big(start.saturating_add(len));
        self.slice(x, &starts, &ends, &vec![1; rank])
    }

    /// Picks entries of `data` along `axis` by `indices` (i32 or i64).
    pub fn gather(
        &mut self,
        data: Traced,
        indices: Traced,
        axis: i64,
    ) -> Result<Traced, TraceError> {
        self.one(
            "gather",
            "gather@1",
            attrs([("axis", AttrValue::Int(axis))]),
            &[data, indices],
        )
    }
}

/// The input of `graph` that stands for `outer` (an enclosing graph's value
/// of type `meta`), added on first use.
fn lift(
    graph: &mut Graph,
    captures: &mut Vec<(ValueId, ValueId)>,
    outer: ValueId,
    meta: &TensorMeta,
) -> ValueId {
    if let Some(&(_, v)) = captures.iter().find(|(o, _)| *o == outer) {
        return v;
    }
    let index = graph.add_input(format!("r{}", graph.inputs.len()), meta.clone());
    let v = graph.push(Op::Input(index), vec![], vec![meta.clone()])[0];
    captures.push((outer, v));
    v
}

/// Inserts inputs of types `metas` at position `at` of a region's inputs
/// (the other branch's captures, which this one does not read) and renames
/// every input by its new position.
fn splice_inputs(graph: &mut Graph, at: usize, metas: &[TensorMeta]) {
    if metas.is_empty() {
        return;
    }
    let n = metas.len() as u32;
    for node in &mut graph.nodes {
        if let Op::Input(i) = &mut node.op {
            if *i as usize >= at {
                *i += n;
            }
        }
    }
    let tail = graph.inputs.split_off(at.min(graph.inputs.len()));
    for m in metas {
        graph.add_input(String::new(), m.clone());
    }
    graph.inputs.extend(tail);
    for (i, def) in graph.inputs.iter_mut().enumerate() {
        def.name = format!("r{i}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Op;

    fn trace_with(def: &FunctionDef, examples: &[Example]) -> Result<Trace, TraceError> {
        def.trace(examples, &Registry::standard(), &BTreeMap::new())
    }

    fn x(shape: &[usize]) -> Example {
        Example::meta(TensorMeta::new(DType::F32, shape))
    }

    #[test]
    fn records_ops_with_inferred_types() {
        let w = Tensor::zeros(DType::F32, &[3, 4]).unwrap();
        let def = function("f", move |cx, x| {
            let w = cx.capture("w", &w)?;
            let h = cx.linear(x[0], w, None)?;
            let r = cx.relu(h)?;
            let s = cx.softmax(r, -1)?;
            Ok(vec![cx.reshape(s, &[-1])?])
        });
        let t = trace_with(&def, &[x(&[2, 3])]).unwrap();
        let g = &t.graph;
        assert_eq!(g.outputs[0].name, "y0");
        assert_eq!(g.inputs[0].name, "x0");
        assert_eq!(
            g.meta(g.outputs[0].value),
            &TensorMeta::new(DType::F32, [8])
        );
        let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.name()).collect();
        assert_eq!(
            ops,
            [
                "input",
                "global",
                "linear@1",
                "unary@1",
                "softmax@1",
                "reshape"
            ]
        );
        crate::verify::verify(g, &Registry::standard()).unwrap();
    }

    #[test]
    fn program_hash_ignores_sizes_but_not_structure() {
        let def = function("f", |cx, x| {
            let n = cx.shape(x[0])[0];
            let half = cx.narrow(x[0], 0, 0, n / 2)?;
            let flat = cx.reshape(half, &[-1])?;
            Ok(vec![cx.tanh(flat)?])
        });
        let a = trace_with(&def, &[x(&[4, 3])]).unwrap();
        let b = trace_with(&def, &[x(&[10, 7])]).unwrap();
        assert_eq!(a.program_hash, b.program_hash);
        let other = function("f", |cx, x| Ok(vec![cx.sigmoid(x[0])?]));
        assert_ne!(
            a.program_hash,
            trace_with(&other, &[x(&[4, 3])]).unwrap().program_hash
        );
        let renamed = def.clone().inputs(["z"]);
        assert_ne!(
            a.program_hash,
            trace_with(&renamed, &[x(&[4, 3])]).unwrap().program_hash
        );
    }

    #[test]
    fn long_concat_becomes_a_chain() {
        let def = function("cat", |cx, x| {
            let xs = vec![x[0]; 12];
            Ok(vec![cx.concat(&xs, 0)?])
        });
        let t = trace_with(&def, &[x(&[1, 2])]).unwrap();
        let g = &t.graph;
        let ns: Vec<i64> = g
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Kernel { attrs, .. } => match attrs.get("n") {
                    Some(AttrValue::Int(n)) => Some(*n),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(ns, [5, 5, 4]);
        assert_eq!(g.meta(g.outputs[0].value).shape, [12, 2]);
        crate::verify::verify(g, &Registry::standard()).unwrap();
    }

    #[test]
    fn scalar_inputs_specialize() {
        let def = function("scale", |cx, x| {
            let k = cx.scalar_i64(1)?;
            let mut y = x[0];
            for _ in 0..k {
                y = cx.add(y, x[0])?;
            }
            Ok(vec![y])
        });
        let ex = [x(&[3]), Example::of(&Tensor::scalar(2i64))];
        let t = trace_with(&def, &ex).unwrap();
        assert_eq!(t.graph.inputs[1].specialized, Some(ScalarValue::Int(2)));
        assert_eq!(t.graph.nodes.len(), 4);
        let err = trace_with(&def, &[x(&[3]), x(&[2])]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "input 1 (`x1`) is f32[2], not a scalar; pass scalars as rank-0 tensors"
        );
        let err = trace_with(&def, &[x(&[3]), Example::of(&Tensor::scalar(2.5f32))]).unwrap_err();
        assert_eq!(err.to_string(), "input 1 (`x1`) holds 2.5, not an integer");
    }

    #[test]
    fn errors_name_the_op() {
        let def = function("bad", |cx, x| Ok(vec![cx.matmul(x[0], x[0])?]));
        let err = trace_with(&def, &[x(&[2, 3])]).unwrap_err();
        assert!(
            err.to_string().starts_with("`matmul`: kernel `matmul@1"),
            "{err}"
        );
        let def = function("bad", |cx, x| Ok(vec![cx.reshape(x[0], &[-1, -1])?]));
        assert_eq!(
            trace_with(&def, &[x(&[2, 3])]).unwrap_err().to_string(),
            "`reshape`: shape [-1, -1] has more than one -1"
        );
        let def = function("bad", |_, x| Ok(vec![x[0]])).inputs(["a", "b"]);
        assert_eq!(
            trace_with(&def, &[x(&[2])]).unwrap_err().to_string(),
            "function `bad` declares 2 input names but 1 inputs were passed"
        );
    }

    #[test]
    fn globals_by_name() {
        let a = Tensor::zeros(DType::F32, &[2]).unwrap();
        let b = Tensor::from_vec(&[2], vec![1.0f32, 2.0]).unwrap();
        let def = function("g", move |cx, x| {
            let w1 = cx.capture("w", &a)?;
            let w2 = cx.capture("w", &a)?;
            assert_eq!(w1, w2);
            let s = cx.bound("s")?;
            let s2 = cx.bound_specialized("s")?;
            assert_eq!(s, s2);
            let y = cx.add(x[0], w1)?;
            let y = cx.mul(y, s)?;
            cx.capture("w", &b)?;
            Ok(vec![y])
        });
        let mut bindings = BTreeMap::new();
        let err = def
            .trace(&[x(&[2])], &Registry::standard(), &bindings)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "global `s` is not bound; bind a tensor under that name before tracing (bound: none)"
        );
        bindings.insert("s".to_string(), Tensor::zeros(DType::F32, &[2]).unwrap());
        let err = def
            .trace(&[x(&[2])], &Registry::standard(), &bindings)
            .unwrap_err();
        assert!(matches!(err, TraceError::GlobalName { .. }), "{err}");
    }
}
