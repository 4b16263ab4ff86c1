//! Translation of ONNX nodes into tracer ops, with a compile-time value
//! environment.
//!
//! Every ONNX value is a [`Val`]: either **known** (a host tensor whose
//! content is fixed at trace time) or **traced** (a value of the graph being
//! recorded). Shapes are static within an entry, so `Shape` and `Size` are
//! always known, as are `Constant`, `ConstantOfShape`, `Range` and
//! initializers.
//!
//! Invariants:
//! - Only live nodes are traced: the loader drops the nodes no graph
//!   output needs (see the parent module), so nothing here runs for them.
//! - An op whose inputs are all known and small (at most [`FOLD_LIMIT`]
//!   elements each, and a result of at most that many) is evaluated at trace
//!   time on the registry's *reference* kernels — the same kernels and
//!   implementation the compiler's folding pass uses — and emits nothing.
//!   Larger known inputs become globals and the op is traced.
//! - A kernel that fails on its known inputs (a gather index out of range)
//!   fails on every call that runs it. In code that always runs, that is an
//!   error naming the node and the kernel's reason. In code that runs only
//!   when data says so (an `If` branch whose condition is known at run time,
//!   a `Loop` body run as a wrapper loop) it is no failure of the import:
//!   the op is traced as a launch, which fails only if it runs, and an op
//!   that needs its content at compile time gets the kernel's reason (the
//!   launch's recipe re-runs it, see below).
//! - A small traced value computed only from small known values and small
//!   graph inputs (through kernels, concatenations and reshapes) is
//!   *derivable*: the importer remembers how it was computed ([`Derived`]),
//!   and when an op needs its content (a `Pad`'s pads computed from a
//!   `shape` graph input) evaluates it the same way, reading the graph
//!   inputs' values from the call being compiled — which specializes the
//!   entry on those inputs, and only then. A value nothing needs as content
//!   never specializes anything.
//! - A known value becomes a global only when a traced op needs it:
//!   initializers (and `Constant` outputs) of more than [`WEIGHT_MIN`]
//!   elements as weights named after the ONNX value, everything else as a
//!   constant (deduplicated by content).
//! - Inputs that define shapes or indices (`Reshape`'s shape, `Slice`'s
//!   starts, reduction axes, ..) must be known; a traced one is an error
//!   naming the node and input, never a guess.
//! - Every value a model creates out of nothing (`ConstantOfShape`, `Range`,
//!   `Expand`) is bounded by [`MAX_CREATED`] elements, so a malformed model
//!   cannot make the importer allocate without bound.
//!
//! - Names resolve through a [`Scope`] chain: a subgraph (`If` branch,
//!   `Loop` body) sees its own values, then its initializers, then every
//!   enclosing scope's. Control flow is in the `control` submodule,
//!   recurrent ops (`LSTM`, `GRU`, `RNN`) in `recurrent`.
//!
//! Errors are `TraceError::Invalid` whose `op` names the ONNX node; an
//! error inside a subgraph names the inner node and every enclosing one.

mod control;
mod recurrent;

use std::cell::RefCell;
use std::collections::HashMap;

use ampoule_kernels::{
    AttrValue, Attrs, Bool8, DType, Impl, Registry, Tensor, TensorMeta, MAX_RANK,
};

use super::proto::{attribute_type, AttributeProto};
use super::{attribute_kind, tensor, Model, Node, Subgraph, MAX_OPSET};
use crate::ir::attrs;
use crate::trace::{TraceError, Traced, Tracer};

/// The largest known value (in elements) an op is folded on at trace time.
pub const FOLD_LIMIT: usize = 1 << 16;

/// Known values larger than this that came from an initializer or a
/// `Constant` node become weights named after the value.
pub const WEIGHT_MIN: usize = 64;

/// The most elements a created value (`ConstantOfShape`, `Range`, `Expand`
/// of a known value) may have.
pub const MAX_CREATED: usize = 1 << 24;

/// The first default-domain opset at which the importer supports `op`.
fn since(op: &str) -> Option<i64> {
    Some(match op {
        "MatMul" | "Softmax" | "LogSoftmax" | "ReduceMean" | "ReduceSum" | "ReduceMax"
        | "ReduceMin" | "Transpose" | "Slice" | "Squeeze" | "Unsqueeze" | "Flatten" | "Gather"
        | "Shape" | "Size" | "Constant" | "Identity" | "Not" | "Conv" | "ConvTranspose"
        | "MaxPool" | "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool"
        | "BatchNormalization" => 1,
        "Concat" => 4,
        "Reshape" => 5,
        "Sqrt" | "Reciprocal" | "Neg" | "Exp" | "Log" | "Tanh" | "Sigmoid" | "Floor" | "Ceil"
        | "Relu" | "Abs" | "Cast" | "Clip" | "LeakyRelu" | "HardSigmoid" | "Tile" => 6,
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Equal" | "Less" | "Greater" | "Gemm"
        | "Dropout" | "Sin" | "Cos" | "And" | "Or" | "PRelu" => 7,
        "Min" | "Max" | "Expand" => 8,
        "Erf" | "Where" | "ConstantOfShape" | "IsNaN" => 9,
        "Split" | "Pad" | "Softplus" => 2,
        "Range" | "CumSum" | "GatherElements" | "GatherND" | "Resize" => 11,
        "If" | "Loop" => 1,
        "LSTM" | "GRU" | "RNN" => 7,
        "ArgMax" | "ArgMin" => 1,
        "LessOrEqual" | "GreaterOrEqual" => 12,
        "HardSwish" | "Trilu" => 14,
        "LayerNormalization" => 17,
        "Gelu" => 20,
        _ => return None,
    })
}

/// Every op the importer translates (default domain), sorted.
pub fn supported_ops() -> Vec<&'static str> {
    let mut ops: Vec<&'static str> = [
        "Abs",
        "Add",
        "And",
        "ArgMax",
        "ArgMin",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "Ceil",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "Cos",
        "CumSum",
        "Div",
        "Dropout",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "GatherND",
        "Gelu",
        "Gemm",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Greater",
        "GRU",
        "GreaterOrEqual",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "If",
        "IsNaN",
        "LayerNormalization",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "Loop",
        "LSTM",
        "MatMul",
        "Max",
        "MaxPool",
        "Min",
        "Mul",
        "Neg",
        "Not",
        "Or",
        "Pow",
        "PRelu",
        "Range",
        "Reciprocal",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceSum",
        "Relu",
        "Reshape",
        "Resize",
        "RNN",
        "Shape",
        "Sigmoid",
        "Sin",
        "Size",
        "Slice",
        "Softmax",
        "Softplus",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Tanh",
        "Tile",
        "Transpose",
        "Trilu",
        "Pad",
        "Unsqueeze",
        "Where",
    ]
    .to_vec();
    ops.sort_unstable();
    ops
}

/// Whether `op` of `domain` (empty: default) at `opset` can be translated;
/// the error is the reason.
pub(crate) fn check_support(op: &str, domain: &str, opset: i64) -> Result<(), String> {
    if !domain.is_empty() {
        return Err(format!(
            "domain `{domain}` is not supported (only the default `ai.onnx` domain is)"
        ));
    }
    let Some(first) = since(op) else {
        return Err("this op is not supported by the importer".into());
    };
    if opset > MAX_OPSET {
        return Err(format!(
            "opset {opset} is newer than the newest this importer knows ({MAX_OPSET}, ONNX 1.20)"
        ));
    }
    if opset < first {
        return Err(format!("supported from opset {first} on"));
    }
    Ok(())
}

/// A value of the ONNX graph while tracing.
#[derive(Clone, Debug)]
pub(crate) enum Val {
    /// Content known at trace time; `weight` names it when it should become
    /// a named weight.
    Known {
        t: Tensor,
        weight: Option<String>,
    },
    Traced(Traced),
}

fn known(t: Tensor) -> Val {
    Val::Known { t, weight: None }
}

type R<T> = Result<T, String>;

/// The values visible while one graph is traced: its own, then its
/// initializers, then those of the enclosing scopes (subgraphs read outer
/// values by name).
pub(crate) struct Scope<'p> {
    vals: HashMap<String, Val>,
    inits: &'p HashMap<String, Tensor>,
    parent: Option<&'p Scope<'p>>,
    /// Whether this graph's nodes run only when data says so: an `If`
    /// branch whose condition is known at run time, a `Loop` body run as a
    /// wrapper loop, or a graph inside one.
    conditional: bool,
    /// Shared by every scope of one trace ([`Traced`] handles are unique
    /// across regions).
    derived: &'p RefCell<Derived>,
}

/// The derivable traced values of one trace (see the module doc): how each
/// was computed, and the content of those evaluated so far.
#[derive(Default)]
pub(crate) struct Derived {
    /// The function's traced inputs.
    inputs: std::collections::HashSet<Traced>,
    recipes: HashMap<Traced, Recipe>,
    values: HashMap<Traced, Tensor>,
}

/// How a derivable value was computed from its inputs, each a small known
/// value, a graph input or another derivable value.
#[derive(Clone)]
enum Recipe {
    Kernel {
        /// The ONNX node that launched it (`node `n` (Gather)`), which an
        /// evaluation that fails names.
        node: String,
        kernel: String,
        attrs: Attrs,
        ins: Vec<Val>,
    },
    Concat {
        axis: usize,
        ins: Vec<Val>,
    },
    Reshape {
        x: Val,
        dims: Vec<usize>,
    },
}

impl Recipe {
    fn inputs(&self) -> &[Val] {
        match self {
            Recipe::Kernel { ins, .. } | Recipe::Concat { ins, .. } => ins,
            Recipe::Reshape { x, .. } => std::slice::from_ref(x),
        }
    }
}

impl Scope<'_> {
    fn get(&self, name: &str) -> Option<Val> {
        let mut at = Some(self);
        while let Some(s) = at {
            if let Some(v) = s.vals.get(name) {
                return Some(v.clone());
            }
            if let Some(t) = s.inits.get(name) {
                return Some(Val::Known {
                    t: t.clone(),
                    weight: Some(name.to_string()),
                });
            }
            at = s.parent;
        }
        None
    }
}

/// Traces `model` with inputs `xs` (the body of the function
/// `OnnxModel::function` gives).
pub(crate) fn trace_model(
    model: &Model,
    registry: &Registry,
    cx: &mut Tracer<'_>,
    xs: &[Traced],
) -> Result<Vec<Traced>, TraceError> {
    let derived = RefCell::new(Derived {
        inputs: xs.iter().copied().collect(),
        ..Derived::default()
    });
    let mut scope = Scope {
        vals: HashMap::new(),
        inits: &model.initializers,
        parent: None,
        conditional: false,
        derived: &derived,
    };
    let deciding = control_inputs(model);
    for (i, (info, &x)) in model.inputs.iter().zip(xs).enumerate() {
        let meta = cx.meta(x).clone();
        let int_scalar =
            meta.shape.is_empty() && (meta.dtype.is_int() || meta.dtype == DType::Bool);
        // A rank-0 integer input that decides an `If` (silero-vad's sample
        // rate) is specialized on its value when the call gives one: the
        // entry guards the value and the `If` folds at compile time (as
        // torch.compile specializes ints).
        // Without a value (a compile from shapes alone) it stays traced.
        let value = (int_scalar && deciding.contains(&info.name))
            .then(|| cx.scalar_i64(i).ok())
            .flatten();
        let val = match value {
            Some(n) => known(match meta.dtype {
                DType::I64 => Tensor::scalar(n),
                // A u64 input's value is non-negative (`ScalarValue` holds
                // it exactly only up to i64::MAX).
                DType::U64 => Tensor::scalar(n as u64),
                // Narrower integers hold their value exactly in f64.
                d => scalar(n as f64, d),
            }),
            None => Val::Traced(x),
        };
        scope.vals.insert(info.name.clone(), val);
    }
    trace_nodes(cx, registry, &model.nodes, &mut scope)?;
    let mut outs = Vec::with_capacity(model.outputs.len());
    for name in &model.outputs {
        let what = || format!("graph output `{name}`");
        let v = scope.get(name).ok_or_else(|| TraceError::Invalid {
            op: what(),
            message: "is not computed".into(),
        })?;
        let t = materialize(cx, &v).map_err(|message| TraceError::Invalid {
            op: what(),
            message,
        })?;
        outs.push(t);
    }
    Ok(outs)
}

/// The graph inputs an `If` condition depends on (through any chain of nodes
/// of the main graph). A `Loop`'s trip count is not among them: the wrapper
/// runs data-dependent loops itself, while an `If` whose branches return
/// different shapes can only be chosen at compile time.
fn control_inputs(model: &Model) -> std::collections::HashSet<String> {
    let producer: HashMap<&str, &Node> = model
        .nodes
        .iter()
        .flat_map(|n| n.outputs.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let mut todo: Vec<&str> = model
        .nodes
        .iter()
        .filter(|n| n.op_type == "If")
        .filter_map(|n| n.inputs.first())
        .map(String::as_str)
        .collect();
    let mut seen = std::collections::HashSet::new();
    while let Some(v) = todo.pop() {
        if v.is_empty() || !seen.insert(v.to_string()) {
            continue;
        }
        if let Some(n) = producer.get(v) {
            todo.extend(n.inputs.iter().chain(&n.implicit).map(String::as_str));
        }
    }
    model
        .inputs
        .iter()
        .filter(|i| seen.contains(&i.name))
        .map(|i| i.name.clone())
        .collect()
}

/// Traces `nodes` in order, adding their outputs to `scope`.
fn trace_nodes(
    cx: &mut Tracer<'_>,
    registry: &Registry,
    nodes: &[Node],
    scope: &mut Scope<'_>,
) -> Result<(), TraceError> {
    for node in nodes {
        let mut b = Builder {
            cx: &mut *cx,
            registry,
            scope: &*scope,
            node,
        };
        let outs = b.lower().map_err(|message| TraceError::Invalid {
            op: node.what(),
            message,
        })?;
        for (name, v) in node.outputs.iter().zip(outs) {
            if !name.is_empty() {
                scope.vals.insert(name.clone(), v);
            }
        }
    }
    Ok(())
}

/// Traces subgraph `g` in the region being recorded, its formal inputs
/// bound to `args`, reading other names from `parent`; returns its outputs
/// (known ones stay known, so a folded `If` or unrolled `Loop` keeps
/// folding). `conditional`: whether `g` runs only when data says so (see
/// [`Scope`]; a graph inside such a one is conditional too).
fn trace_subgraph(
    cx: &mut Tracer<'_>,
    registry: &Registry,
    g: &Subgraph,
    parent: &Scope<'_>,
    args: Vec<Val>,
    conditional: bool,
) -> Result<Vec<Val>, TraceError> {
    let mut scope = Scope {
        vals: HashMap::new(),
        inits: &g.initializers,
        parent: Some(parent),
        conditional: conditional || parent.conditional,
        derived: parent.derived,
    };
    for (name, v) in g.inputs.iter().zip(args) {
        scope.vals.insert(name.clone(), v);
    }
    trace_nodes(cx, registry, &g.nodes, &mut scope)?;
    g.outputs
        .iter()
        .map(|name| {
            scope.get(name).ok_or_else(|| TraceError::Invalid {
                op: format!("output `{name}` of subgraph `{}`", g.name),
                message: "is not computed".into(),
            })
        })
        .collect()
}

fn materialize(cx: &mut Tracer<'_>, v: &Val) -> R<Traced> {
    match v {
        Val::Traced(t) => Ok(*t),
        Val::Known {
            t,
            weight: Some(name),
        } if t.numel() > WEIGHT_MIN => cx.capture(name, t).map_err(|e| e.to_string()),
        Val::Known { t, .. } => Ok(cx.constant(t.clone())),
    }
}

struct Builder<'a, 't> {
    cx: &'a mut Tracer<'t>,
    registry: &'a Registry,
    scope: &'a Scope<'a>,
    node: &'a Node,
}

fn e<E: std::fmt::Display>(err: E) -> String {
    err.to_string()
}

fn s(v: &str) -> AttrValue {
    AttrValue::Str(v.to_string())
}

/// Normalizes `axis` against `rank` (negative counts from the end).
fn norm_axis(axis: i64, rank: usize) -> R<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r).contains(&a) {
        Ok(a as usize)
    } else {
        Err(format!("axis {axis} is out of range for rank {rank}"))
    }
}

fn product(dims: &[usize]) -> R<usize> {
    ampoule_kernels::checked_numel(dims).ok_or_else(|| format!("shape {dims:?} overflows"))
}

/// A rank-0 tensor of `dtype` holding `v`.
fn scalar(v: f64, dtype: DType) -> Tensor {
    match dtype {
        DType::F32 => Tensor::scalar(v as f32),
        DType::F64 => Tensor::scalar(v),
        DType::I8 => Tensor::scalar(v as i8),
        DType::U8 => Tensor::scalar(v as u8),
        DType::I16 => Tensor::scalar(v as i16),
        DType::U16 => Tensor::scalar(v as u16),
        DType::I32 => Tensor::scalar(v as i32),
        DType::U32 => Tensor::scalar(v as u32),
        DType::I64 => Tensor::scalar(v as i64),
        DType::U64 => Tensor::scalar(v as u64),
        DType::Bool => Tensor::scalar(Bool8(u8::from(v != 0.0))),
    }
}

/// `shape` filled with the single element of `fill`.
fn filled(fill: &Tensor, shape: &[usize]) -> R<Tensor> {
    let n = product(shape)?;
    if n > MAX_CREATED {
        return Err(format!(
            "creating {shape:?} ({n} elements) exceeds the limit of {MAX_CREATED}"
        ));
    }
    if fill.numel() != 1 {
        return Err(format!(
            "the fill value must have one element, not {}",
            fill.numel()
        ));
    }
    let bytes = fill.bytes().repeat(n);
    Tensor::from_bytes(fill.dtype(), shape, &bytes).map_err(e)
}

/// Numpy broadcasting of two shapes.
fn broadcast(a: &[usize], b: &[usize]) -> R<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(format!("shapes {a:?} and {b:?} do not broadcast")),
        };
    }
    Ok(out)
}

/// Resolves an ONNX `Reshape` shape (`0` copies the input dim unless
/// `allowzero`, one `-1` is inferred).
fn reshape_dims(input: &[usize], spec: &[i64], allowzero: bool) -> R<Vec<usize>> {
    if spec.len() > MAX_RANK {
        return Err(format!("shape {spec:?} has rank above {MAX_RANK}"));
    }
    let numel = product(input)?;
    let mut infer = None;
    let mut dims = Vec::with_capacity(spec.len());
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(i);
                dims.push(1);
            }
            -1 => return Err(format!("shape {spec:?} has more than one -1")),
            0 if !allowzero => dims.push(*input.get(i).ok_or_else(|| {
                format!(
                    "shape {spec:?} copies dim {i} (a 0) but the input {input:?} has rank {}",
                    input.len()
                )
            })?),
            d => dims.push(
                usize::try_from(d).map_err(|_| format!("shape {spec:?} has a negative dim"))?,
            ),
        }
    }
    let known = product(&dims)?;
    if let Some(i) = infer {
        if known == 0 || numel % known != 0 {
            return Err(format!(
                "cannot infer the -1 in {spec:?} for input {input:?}"
            ));
        }
        dims[i] = numel / known;
    } else if known != numel {
        return Err(format!(
            "cannot reshape {input:?} ({numel} elements) to {dims:?}"
        ));
    }
    Ok(dims)
}

impl Builder<'_, '_> {
    // ---- inputs and attributes ----

    fn opt_input(&self, i: usize) -> R<Option<Val>> {
        match self.node.inputs.get(i) {
            None => Ok(None),
            Some(name) if name.is_empty() => Ok(None),
            Some(name) => self
                .scope
                .get(name)
                .map(Some)
                .ok_or_else(|| format!("input `{name}` is not computed")),
        }
    }

    fn input(&self, i: usize) -> R<Val> {
        self.opt_input(i)?
            .ok_or_else(|| format!("input {i} is required but missing"))
    }

    fn attr(&self, name: &str, kind: i32) -> R<Option<&AttributeProto>> {
        match self.node.attrs.get(name) {
            None => Ok(None),
            Some(a) if !a.ref_attr_name.is_empty() => Err(format!(
                "attribute `{name}` refers to a function attribute, which is not supported"
            )),
            Some(a) if a.r#type == kind || a.r#type == attribute_type::UNDEFINED => Ok(Some(a)),
            Some(a) => Err(format!(
                "attribute `{name}` is {}, expected {}",
                attribute_kind(a.r#type),
                attribute_kind(kind)
            )),
        }
    }

    fn int(&self, name: &str, default: i64) -> R<i64> {
        Ok(self
            .attr(name, attribute_type::INT)?
            .map_or(default, |a| a.i))
    }

    fn float(&self, name: &str, default: f32) -> R<f32> {
        Ok(self
            .attr(name, attribute_type::FLOAT)?
            .map_or(default, |a| a.f))
    }

    fn ints(&self, name: &str) -> R<Option<Vec<i64>>> {
        Ok(self
            .attr(name, attribute_type::INTS)?
            .map(|a| a.ints.clone()))
    }

    fn string(&self, name: &str, default: &str) -> R<String> {
        match self.attr(name, attribute_type::STRING)? {
            None => Ok(default.to_string()),
            Some(a) => String::from_utf8(a.s.clone())
                .map_err(|_| format!("attribute `{name}` is not UTF-8")),
        }
    }

    /// The content of `v` at trace time: a known value, a graph input read
    /// directly, or a derivable value computed from such inputs (see the
    /// module doc); the entry is then specialized on the values of the graph
    /// inputs read (node tests feed axes, sizes and pads as graph inputs, or
    /// compute them from one). `None` for any other computed value, or an
    /// input whose value the compile does not have; an evaluation that fails
    /// (an integer division by zero) is an error.
    fn try_content(&mut self, v: &Val) -> R<Option<Tensor>> {
        match v {
            Val::Known { t, .. } => Ok(Some(t.clone())),
            Val::Traced(x) => self.derive(*x),
        }
    }

    /// [`Builder::try_content`] of a value an op needs at compile time
    /// (`what` names it): an evaluation that fails is an error that says so
    /// and gives the kernel's reason.
    fn needed_content(&mut self, v: &Val, what: &str) -> R<Option<Tensor>> {
        self.try_content(v).map_err(|err| {
            format!("{what} must be known at compile time, but computing it fails: {err}")
        })
    }

    /// The content of traced value `root`: evaluates its recipe's traced
    /// inputs first (depth first with an explicit stack, so a long chain
    /// cannot overflow the call stack), each once.
    fn derive(&mut self, root: Traced) -> R<Option<Tensor>> {
        let mut stack = vec![root];
        while let Some(&x) = stack.last() {
            let recipe = {
                let d = self.scope.derived.borrow();
                if d.values.contains_key(&x) {
                    stack.pop();
                    continue;
                }
                d.recipes.get(&x).cloned()
            };
            let t = match recipe {
                None => match self.input_content(x) {
                    Some(t) => t,
                    None => return Ok(None),
                },
                Some(recipe) => {
                    let (ts, pending) = {
                        let d = self.scope.derived.borrow();
                        let mut ts = Vec::new();
                        let mut pending = Vec::new();
                        for v in recipe.inputs() {
                            match v {
                                Val::Known { t, .. } => ts.push(t.clone()),
                                Val::Traced(y) => match d.values.get(y) {
                                    Some(t) => ts.push(t.clone()),
                                    None => pending.push(*y),
                                },
                            }
                        }
                        (ts, pending)
                    };
                    if !pending.is_empty() {
                        stack.extend(pending);
                        continue;
                    }
                    let refs: Vec<&Tensor> = ts.iter().collect();
                    let t = match &recipe {
                        Recipe::Kernel {
                            node,
                            kernel,
                            attrs,
                            ..
                        } => self
                            .run_folded(kernel, attrs, &refs)
                            .map_err(|err| format!("{node}: {err}"))?,
                        Recipe::Concat { axis, .. } => self.fold_concat(&refs, *axis)?,
                        Recipe::Reshape { dims, .. } => refs.first().and_then(|t| t.reshaped(dims)),
                    };
                    match t {
                        Some(t) => t,
                        None => return Ok(None),
                    }
                }
            };
            self.scope.derived.borrow_mut().values.insert(x, t);
            stack.pop();
        }
        Ok(self.scope.derived.borrow().values.get(&root).cloned())
    }

    /// The value of graph input `x` in the call being compiled (the entry
    /// is specialized on it), if `x` is a graph input read directly and the
    /// compile has its value.
    fn input_content(&mut self, x: Traced) -> Option<Tensor> {
        let i = self.cx.input_index(x)?;
        let meta = self.cx.meta(x).clone();
        let values = if meta.shape.is_empty() {
            vec![self.cx.scalar_input(i).ok()?]
        } else {
            self.cx.input_values(i).ok()?
        };
        let as_f64 = |v: &ampoule_host::ScalarValue| match *v {
            ampoule_host::ScalarValue::Int(n) => n as f64,
            ampoule_host::ScalarValue::Float(f) => f,
        };
        let t = match meta.dtype {
            // i64 holds every integer value exactly.
            DType::I64 => {
                let v = values
                    .iter()
                    .map(|v| match *v {
                        ampoule_host::ScalarValue::Int(n) => n,
                        ampoule_host::ScalarValue::Float(f) => f as i64,
                    })
                    .collect();
                Tensor::from_vec(&meta.shape, v).ok()?
            }
            // So does u64 for the values `ScalarValue` reads (at most
            // i64::MAX; a negative `Int` cannot come from a u64 input).
            DType::U64 => {
                let v = values
                    .iter()
                    .map(|v| match *v {
                        ampoule_host::ScalarValue::Int(n) => u64::try_from(n).ok(),
                        ampoule_host::ScalarValue::Float(_) => None,
                    })
                    .collect::<Option<Vec<u64>>>()?;
                Tensor::from_vec(&meta.shape, v).ok()?
            }
            d => {
                let parts: Vec<Tensor> = values.iter().map(|v| scalar(as_f64(v), d)).collect();
                let bytes: Vec<u8> = parts.iter().flat_map(|t| t.bytes().to_vec()).collect();
                Tensor::from_bytes(d, &meta.shape, &bytes).ok()?
            }
        };
        Some(t)
    }

    /// Whether `v` may be an input of a derivable value: small and known, a
    /// small graph input, or derivable itself.
    fn derivable(&self, v: &Val) -> bool {
        match v {
            Val::Known { t, .. } => t.numel() <= FOLD_LIMIT,
            Val::Traced(x) => {
                let d = self.scope.derived.borrow();
                d.recipes.contains_key(x)
                    || (d.inputs.contains(x)
                        && self
                            .cx
                            .meta(*x)
                            .numel()
                            .is_some_and(|n| n <= ampoule_host::guard::MAX_INPUT_VALUES))
            }
        }
    }

    /// Records `recipe`, how traced value `y` was computed from derivable
    /// inputs (`None` when they were not), if `y` is small.
    fn remember(&mut self, y: Traced, recipe: Option<Recipe>) {
        let small = self.cx.meta(y).numel().is_some_and(|n| n <= FOLD_LIMIT);
        if let Some(recipe) = recipe.filter(|_| small) {
            self.scope.derived.borrow_mut().recipes.insert(y, recipe);
        }
    }

    /// `make()` when every one of `ins` is derivable.
    fn recipe(&self, ins: &[Val], make: impl FnOnce() -> Recipe) -> Option<Recipe> {
        ins.iter().all(|v| self.derivable(v)).then(make)
    }

    /// The content of a known integer tensor (a shape, axes, indices).
    fn known_ints(&mut self, v: &Val, what: &str) -> R<Vec<i64>> {
        let Some(t) = self.needed_content(v, what)? else {
            return Err(format!(
                "{what} must be known at compile time (a constant, an initializer, computed from shapes, or a graph input whose value the compile is given)"
            ));
        };
        match t.dtype() {
            DType::I64 => t.to_vec::<i64>().map_err(e),
            DType::I32 => Ok(t
                .to_vec::<i32>()
                .map_err(e)?
                .into_iter()
                .map(i64::from)
                .collect()),
            d => Err(format!("{what} must be int64 or int32, not {d}")),
        }
    }

    /// A known scalar as f64 (for `Range`, `Clip` bounds).
    fn known_f64(&mut self, v: &Val, what: &str) -> R<f64> {
        let Some(t) = self.needed_content(v, what)? else {
            return Err(format!("{what} must be known at compile time"));
        };
        if t.numel() != 1 {
            return Err(format!("{what} must have one element, not {}", t.numel()));
        }
        Ok(match t.dtype() {
            DType::F32 => f64::from(t.data::<f32>().map_err(e)?[0]),
            DType::F64 => t.data::<f64>().map_err(e)?[0],
            DType::I8 => f64::from(t.data::<i8>().map_err(e)?[0]),
            DType::U8 => f64::from(t.data::<u8>().map_err(e)?[0]),
            DType::I16 => f64::from(t.data::<i16>().map_err(e)?[0]),
            DType::U16 => f64::from(t.data::<u16>().map_err(e)?[0]),
            DType::I32 => f64::from(t.data::<i32>().map_err(e)?[0]),
            DType::U32 => f64::from(t.data::<u32>().map_err(e)?[0]),
            DType::I64 => t.data::<i64>().map_err(e)?[0] as f64,
            DType::U64 => t.data::<u64>().map_err(e)?[0] as f64,
            DType::Bool => f64::from(t.data::<Bool8>().map_err(e)?[0].0),
        })
    }

    // ---- values ----

    fn shape(&self, v: &Val) -> Vec<usize> {
        match v {
            Val::Known { t, .. } => t.shape().to_vec(),
            Val::Traced(t) => self.cx.shape(*t).to_vec(),
        }
    }

    fn dtype(&self, v: &Val) -> DType {
        match v {
            Val::Known { t, .. } => t.dtype(),
            Val::Traced(t) => self.cx.dtype(*t),
        }
    }

    fn traced(&mut self, v: &Val) -> R<Traced> {
        materialize(self.cx, v)
    }

    fn small(v: &Val) -> Option<&Tensor> {
        match v {
            Val::Known { t, .. } if t.numel() <= FOLD_LIMIT => Some(t),
            _ => None,
        }
    }

    /// Runs `kernel` on known inputs at trace time, if they and the result
    /// are small; `None` means "trace it".
    fn try_fold(&self, kernel: &str, a: &Attrs, ins: &[Val]) -> R<Option<Tensor>> {
        let Some(ts) = ins
            .iter()
            .map(Self::small)
            .collect::<Option<Vec<&Tensor>>>()
        else {
            return Ok(None);
        };
        self.run_folded(kernel, a, &ts)
    }

    /// Runs `kernel` on the reference implementation, if its result is
    /// small; `None` means "too large to fold".
    fn run_folded(&self, kernel: &str, a: &Attrs, ts: &[&Tensor]) -> R<Option<Tensor>> {
        let bound = self.registry.bind(kernel, a).map_err(e)?;
        let metas: Vec<&TensorMeta> = ts.iter().map(|t| t.meta()).collect();
        let out_metas = bound.check(&metas).map_err(e)?;
        let [meta] = out_metas.as_slice() else {
            return Ok(None);
        };
        if meta.numel().is_none_or(|n| n > FOLD_LIMIT) {
            return Ok(None);
        }
        let mut outs = vec![Tensor::zeros(meta.dtype, &meta.shape).map_err(e)?];
        bound.run(Impl::Reference, ts, &mut outs).map_err(e)?;
        Ok(outs.pop())
    }

    /// One kernel with one output, folded when possible (see the module
    /// doc for a kernel that fails on its known inputs).
    fn kernel(&mut self, kernel: &str, a: Attrs, ins: &[Val]) -> R<Val> {
        match self.try_fold(kernel, &a, ins) {
            Ok(Some(t)) => return Ok(known(t)),
            Ok(None) => {}
            // Traced below; the recipe gives this same error to an op that
            // needs the content (ill-formed attributes or shapes fail the
            // launch below just the same).
            Err(_) if self.scope.conditional => {}
            Err(err) => {
                return Err(format!(
                    "its inputs are known at compile time, and it fails on them (so on every call): {err}"
                ))
            }
        }
        let recipe = self.recipe(ins, || Recipe::Kernel {
            node: self.node.what(),
            kernel: kernel.to_string(),
            attrs: a.clone(),
            ins: ins.to_vec(),
        });
        let ts = ins.iter().map(|v| self.traced(v)).collect::<R<Vec<_>>>()?;
        let outs = self.cx.kernel(kernel, a, &ts).map_err(e)?;
        let y = outs
            .first()
            .copied()
            .ok_or_else(|| format!("kernel `{kernel}` gave no output"))?;
        self.remember(y, recipe);
        Ok(Val::Traced(y))
    }

    fn binary(&mut self, op: &str, a: &Val, b: &Val) -> R<Val> {
        self.kernel("binary@1", attrs([("op", s(op))]), &[a.clone(), b.clone()])
    }

    fn compare(&mut self, op: &str, a: &Val, b: &Val) -> R<Val> {
        self.kernel("compare@1", attrs([("op", s(op))]), &[a.clone(), b.clone()])
    }

    fn unary(&mut self, op: &str, x: &Val) -> R<Val> {
        self.kernel("unary@1", attrs([("op", s(op))]), std::slice::from_ref(x))
    }

    fn where_(&mut self, c: &Val, x: &Val, y: &Val) -> R<Val> {
        self.kernel("where@1", Attrs::new(), &[c.clone(), x.clone(), y.clone()])
    }

    fn reduce(&mut self, op: &str, x: &Val, axes: &[i64], keepdims: bool) -> R<Val> {
        let a = attrs([
            ("op", s(op)),
            ("axes", AttrValue::Ints(axes.to_vec())),
            ("keepdims", AttrValue::Int(i64::from(keepdims))),
        ]);
        self.kernel("reduce@1", a, std::slice::from_ref(x))
    }

    fn cast(&mut self, x: &Val, to: DType) -> R<Val> {
        if self.dtype(x) == to {
            return Ok(x.clone());
        }
        self.kernel(
            "cast@1",
            attrs([("to", s(to.name()))]),
            std::slice::from_ref(x),
        )
    }

    fn scalar_like(&self, v: f64, like: &Val) -> Val {
        known(scalar(v, self.dtype(like)))
    }

    fn reshape(&mut self, x: &Val, dims: &[usize]) -> R<Val> {
        if self.shape(x) == dims {
            return Ok(x.clone());
        }
        match x {
            Val::Known { t, .. } if t.numel() <= FOLD_LIMIT => t
                .reshaped(dims)
                .map(known)
                .ok_or_else(|| format!("cannot reshape {} to {dims:?}", t.meta())),
            _ => {
                let t = self.traced(x)?;
                let spec: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
                let recipe = self.recipe(std::slice::from_ref(x), || Recipe::Reshape {
                    x: x.clone(),
                    dims: dims.to_vec(),
                });
                let y = self.cx.reshape(t, &spec).map_err(e)?;
                self.remember(y, recipe);
                Ok(Val::Traced(y))
            }
        }
    }

    fn transpose(&mut self, x: &Val, perm: &[usize]) -> R<Val> {
        let perm: Vec<i64> = perm.iter().map(|&p| p as i64).collect();
        self.kernel(
            "transpose@1",
            attrs([("perm", AttrValue::Ints(perm))]),
            std::slice::from_ref(x),
        )
    }

    fn concat(&mut self, xs: &[Val], axis: usize) -> R<Val> {
        if xs.len() == 1 {
            return Ok(xs[0].clone());
        }
        if let Some(ts) = xs.iter().map(Self::small).collect::<Option<Vec<_>>>() {
            if let Some(t) = self.fold_concat(&ts, axis)? {
                return Ok(known(t));
            }
        }
        self.concat_traced(xs, axis)
    }

    /// Joins known tensors along `axis` on the reference `concat@1` (in
    /// chunks of at most five, the kernel's limit), if the result is small.
    fn fold_concat(&self, ts: &[&Tensor], axis: usize) -> R<Option<Tensor>> {
        let mut acc: Option<Tensor> = None;
        let mut rest = ts;
        while !rest.is_empty() {
            let room = if acc.is_some() { 4 } else { 5 };
            let take = rest.len().min(room);
            let prev = acc.take();
            let mut chunk: Vec<&Tensor> = prev.iter().collect();
            chunk.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if chunk.len() == 1 {
                return Ok(Some(chunk[0].clone()));
            }
            let a = attrs([
                ("axis", AttrValue::Int(axis as i64)),
                ("n", AttrValue::Int(chunk.len() as i64)),
            ]);
            match self.run_folded("concat@1", &a, &chunk)? {
                Some(t) => acc = Some(t),
                None => return Ok(None),
            }
        }
        Ok(acc)
    }

    fn concat_traced(&mut self, xs: &[Val], axis: usize) -> R<Val> {
        let ts = xs.iter().map(|v| self.traced(v)).collect::<R<Vec<_>>>()?;
        let recipe = self.recipe(xs, || Recipe::Concat {
            axis,
            ins: xs.to_vec(),
        });
        let y = self.cx.concat(&ts, axis as i64).map_err(e)?;
        self.remember(y, recipe);
        Ok(Val::Traced(y))
    }

    // ---- the ops ----

    fn lower(&mut self) -> R<Vec<Val>> {
        let n = self.node;
        let op = n.op_type.as_str();
        let one = |v: Val| Ok(vec![v]);
        match op {
            "Add" | "Sub" | "Mul" | "Div" => {
                let (a, b) = (self.input(0)?, self.input(1)?);
                let k = match op {
                    "Add" => "add",
                    "Sub" => "sub",
                    "Mul" => "mul",
                    _ => "div",
                };
                one(self.binary(k, &a, &b)?)
            }
            "Pow" => {
                let (a, b) = (self.input(0)?, self.input(1)?);
                let b = self.cast(&b, self.dtype(&a))?;
                one(self.binary("pow", &a, &b)?)
            }
            "Min" | "Max" => {
                let k = if op == "Min" { "min" } else { "max" };
                let mut acc = self.input(0)?;
                for i in 1..n.inputs.len() {
                    let b = self.input(i)?;
                    acc = self.binary(k, &acc, &b)?;
                }
                one(acc)
            }
            "Sqrt" | "Reciprocal" | "Exp" | "Log" | "Erf" | "Tanh" | "Sigmoid" | "Floor"
            | "Ceil" | "Sin" | "Cos" => {
                let k = match op {
                    "Sqrt" => "sqrt",
                    "Reciprocal" => "recip",
                    "Exp" => "exp",
                    "Log" => "log",
                    "Erf" => "erf",
                    "Tanh" => "tanh",
                    "Sigmoid" => "sigmoid",
                    "Floor" => "floor",
                    "Ceil" => "ceil",
                    "Sin" => "sin",
                    _ => "cos",
                };
                let x = self.input(0)?;
                one(self.unary(k, &x)?)
            }
            "Neg" | "Abs" | "Relu" => {
                let x = self.input(0)?;
                if self.dtype(&x).is_float() {
                    let k = match op {
                        "Neg" => "neg",
                        "Abs" => "abs",
                        _ => "relu",
                    };
                    return one(self.unary(k, &x)?);
                }
                let zero = self.scalar_like(0.0, &x);
                match op {
                    "Neg" => one(self.binary("sub", &zero, &x)?),
                    "Relu" => one(self.binary("max", &x, &zero)?),
                    _ => {
                        let neg = self.binary("sub", &zero, &x)?;
                        one(self.binary("max", &x, &neg)?)
                    }
                }
            }
            "Gelu" => {
                let x = self.input(0)?;
                let k = match self.string("approximate", "none")?.as_str() {
                    "none" => "gelu",
                    "tanh" => "gelu_tanh",
                    other => return Err(format!("approximate `{other}` is not `none` or `tanh`")),
                };
                one(self.unary(k, &x)?)
            }
            "LeakyRelu" => {
                let x = self.input(0)?;
                let alpha = AttrValue::Float(f64::from(self.float("alpha", 0.01)?));
                let a = attrs([("op", s("leaky_relu")), ("alpha", alpha)]);
                one(self.kernel("unary@1", a, &[x])?)
            }
            "HardSigmoid" => {
                let x = self.input(0)?;
                let alpha = AttrValue::Float(f64::from(self.float("alpha", 0.2)?));
                let beta = AttrValue::Float(f64::from(self.float("beta", 0.5)?));
                let a = attrs([("op", s("hard_sigmoid")), ("alpha", alpha), ("beta", beta)]);
                one(self.kernel("unary@1", a, &[x])?)
            }
            "HardSwish" => {
                let x = self.input(0)?;
                one(self.unary("hard_swish", &x)?)
            }
            "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" => {
                let (a, b) = (self.input(0)?, self.input(1)?);
                let k = match op {
                    "Equal" => "eq",
                    "Less" => "lt",
                    "Greater" => "gt",
                    "LessOrEqual" => "le",
                    _ => "ge",
                };
                one(self.compare(k, &a, &b)?)
            }
            "Not" | "And" | "Or" | "IsNaN" => {
                let t = known(Tensor::scalar(Bool8(1)));
                let f = known(Tensor::scalar(Bool8(0)));
                let a = self.input(0)?;
                match op {
                    "Not" => one(self.where_(&a, &f, &t)?),
                    "IsNaN" => {
                        let same = self.compare("eq", &a, &a)?;
                        one(self.where_(&same, &f, &t)?)
                    }
                    "And" => {
                        let b = self.input(1)?;
                        one(self.where_(&a, &b, &f)?)
                    }
                    _ => {
                        let b = self.input(1)?;
                        one(self.where_(&a, &t, &b)?)
                    }
                }
            }
            "Where" => {
                let (c, x, y) = (self.input(0)?, self.input(1)?, self.input(2)?);
                one(self.where_(&c, &x, &y)?)
            }
            "MatMul" => self.matmul().map(|v| vec![v]),
            "Gemm" => self.gemm().map(|v| vec![v]),
            "Softmax" | "LogSoftmax" => self.softmax(op == "LogSoftmax").map(|v| vec![v]),
            "LayerNormalization" => self.layer_norm(),
            "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" => {
                self.reduction().map(|v| vec![v])
            }
            "Reshape" => {
                let x = self.input(0)?;
                let spec = self.known_ints(&self.input(1)?, "the shape input")?;
                let allowzero = n.opset >= 14 && self.int("allowzero", 0)? != 0;
                let dims = reshape_dims(&self.shape(&x), &spec, allowzero)?;
                one(self.reshape(&x, &dims)?)
            }
            "Flatten" => {
                let x = self.input(0)?;
                let shape = self.shape(&x);
                let axis = self.int("axis", 1)?;
                let axis = if axis == shape.len() as i64 {
                    shape.len()
                } else {
                    norm_axis(axis, shape.len())?
                };
                let dims = [product(&shape[..axis])?, product(&shape[axis..])?];
                one(self.reshape(&x, &dims)?)
            }
            "Squeeze" | "Unsqueeze" => self.squeeze(op == "Unsqueeze").map(|v| vec![v]),
            "Transpose" => {
                let x = self.input(0)?;
                let rank = self.shape(&x).len();
                let perm: Vec<usize> = match self.ints("perm")? {
                    Some(p) => p
                        .iter()
                        .map(|&a| norm_axis(a, rank))
                        .collect::<R<Vec<_>>>()?,
                    None => (0..rank).rev().collect(),
                };
                one(self.transpose(&x, &perm)?)
            }
            "Concat" => {
                let xs = (0..n.inputs.len())
                    .map(|i| self.input(i))
                    .collect::<R<Vec<_>>>()?;
                let first = xs.first().ok_or("Concat needs at least one input")?;
                let axis = self
                    .attr("axis", attribute_type::INT)?
                    .ok_or("attribute `axis` is required")?
                    .i;
                let axis = norm_axis(axis, self.shape(first).len())?;
                one(self.concat(&xs, axis)?)
            }
            "Slice" => self.slice().map(|v| vec![v]),
            "Gather" => {
                let (data, idx) = (self.input(0)?, self.input(1)?);
                let axis = norm_axis(self.int("axis", 0)?, self.shape(&data).len())?;
                one(self.kernel(
                    "gather@1",
                    attrs([("axis", AttrValue::Int(axis as i64))]),
                    &[data, idx],
                )?)
            }
            "Shape" => {
                let x = self.input(0)?;
                let shape: Vec<i64> = self.shape(&x).iter().map(|&d| d as i64).collect();
                let r = shape.len() as i64;
                let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let (start, end) = if n.opset >= 15 {
                    (clamp(self.int("start", 0)?), clamp(self.int("end", r)?))
                } else {
                    (0, shape.len())
                };
                let v = shape.get(start..end.max(start)).unwrap_or(&[]).to_vec();
                one(known(Tensor::from_vec(&[v.len()], v).map_err(e)?))
            }
            "Size" => {
                let x = self.input(0)?;
                let numel = product(&self.shape(&x))?;
                one(known(Tensor::scalar(numel as i64)))
            }
            "Constant" => self.constant().map(|v| vec![v]),
            "ConstantOfShape" => {
                let shape = self.known_ints(&self.input(0)?, "the shape input")?;
                let dims = shape
                    .iter()
                    .map(|&d| {
                        usize::try_from(d)
                            .map_err(|_| format!("shape {shape:?} has a negative dim"))
                    })
                    .collect::<R<Vec<_>>>()?;
                if dims.len() > MAX_RANK {
                    return Err(format!("shape {shape:?} has rank above {MAX_RANK}"));
                }
                let fill = match self.attr("value", attribute_type::TENSOR)? {
                    Some(a) => match &a.t {
                        Some(p) => {
                            tensor::from_proto(p).map_err(|m| format!("attribute `value`: {m}"))?
                        }
                        None => return Err("attribute `value` holds no tensor".into()),
                    },
                    None => Tensor::scalar(0.0f32),
                };
                one(known(filled(&fill, &dims)?))
            }
            "Identity" => one(self.input(0)?),
            "Dropout" => {
                let x = self.input(0)?;
                if n.opset >= 12 {
                    let training = match self.opt_input(2)? {
                        Some(mode) => self.known_flag(&mode)?,
                        None => false,
                    };
                    // Training with ratio 0 keeps every element, as
                    // inference does; any other ratio draws a random mask.
                    let ratio = match self.opt_input(1)? {
                        Some(r) if training => self.known_f64(&r, "ratio")?,
                        _ => 0.5,
                    };
                    if training && ratio != 0.0 {
                        return Err(format!(
                            "training_mode is true with ratio {ratio}: the output depends on a random mask, which a compiled package does not draw; export the model for inference (training_mode false) or with ratio 0"
                        ));
                    }
                }
                let mut outs = vec![x.clone()];
                if n.outputs.get(1).is_some_and(|o| !o.is_empty()) {
                    let shape = self.shape(&x);
                    outs.push(known(filled(&Tensor::scalar(Bool8(1)), &shape)?));
                }
                Ok(outs)
            }
            "Cast" => {
                let x = self.input(0)?;
                let to = self
                    .attr("to", attribute_type::INT)?
                    .ok_or("attribute `to` is required")?
                    .i;
                let to = i32::try_from(to)
                    .map_err(|_| format!("`to` = {to} is not a data type"))
                    .and_then(tensor::require_dtype)?;
                one(self.cast(&x, to)?)
            }
            "Range" => self.range().map(|v| vec![v]),
            "Expand" => {
                let x = self.input(0)?;
                let spec = self.known_ints(&self.input(1)?, "the shape input")?;
                let spec = spec
                    .iter()
                    .map(|&d| {
                        usize::try_from(d).map_err(|_| format!("shape {spec:?} has a negative dim"))
                    })
                    .collect::<R<Vec<_>>>()?;
                let xs = self.shape(&x);
                let out = broadcast(&xs, &spec)?;
                if out == xs {
                    return one(x);
                }
                if out.len() > MAX_RANK || product(&out)? > MAX_CREATED {
                    return Err(format!("expanding to {out:?} exceeds the limits"));
                }
                // A `true` mask with the expanded dims broadcasts x through
                // `where` for any dtype.
                let off = out.len() - xs.len();
                let mask_dims: Vec<usize> = out
                    .iter()
                    .enumerate()
                    .map(|(i, &d)| if i < off || xs[i - off] == 1 { d } else { 1 })
                    .collect();
                let mask = known(filled(&Tensor::scalar(Bool8(1)), &mask_dims)?);
                one(self.where_(&mask, &x, &x)?)
            }
            "Clip" => {
                let x = self.input(0)?;
                let (lo, hi) = if n.opset < 11 {
                    let lo = self
                        .attr("min", attribute_type::FLOAT)?
                        .map(|a| f64::from(a.f));
                    let hi = self
                        .attr("max", attribute_type::FLOAT)?
                        .map(|a| f64::from(a.f));
                    (
                        lo.map(|v| self.scalar_like(v, &x)),
                        hi.map(|v| self.scalar_like(v, &x)),
                    )
                } else {
                    (self.opt_input(1)?, self.opt_input(2)?)
                };
                let mut y = x;
                if let Some(lo) = lo {
                    y = self.binary("max", &y, &lo)?;
                }
                if let Some(hi) = hi {
                    y = self.binary("min", &y, &hi)?;
                }
                one(y)
            }
            "Softplus" => {
                let x = self.input(0)?;
                let onev = self.scalar_like(1.0, &x);
                let ex = self.unary("exp", &x)?;
                let sum = self.binary("add", &ex, &onev)?;
                one(self.unary("log", &sum)?)
            }
            "Split" => self.split(),
            "Tile" => self.tile().map(|v| vec![v]),
            "Trilu" => self.trilu().map(|v| vec![v]),
            "Pad" => self.pad().map(|v| vec![v]),
            "Conv" => self.conv(false).map(|v| vec![v]),
            "ConvTranspose" => self.conv(true).map(|v| vec![v]),
            "MaxPool" | "AveragePool" => self.pool(op == "MaxPool"),
            "GlobalAveragePool" | "GlobalMaxPool" => {
                let x = self.input(0)?;
                let rank = self.shape(&x).len();
                if rank < 3 {
                    return Err(format!(
                        "expected [N, C, D..] with a spatial axis, got rank {rank}"
                    ));
                }
                let axes: Vec<i64> = (2..rank as i64).collect();
                let k = if op == "GlobalMaxPool" { "max" } else { "mean" };
                one(self.reduce(k, &x, &axes, true)?)
            }
            "BatchNormalization" => self.batch_norm(),
            "ArgMax" | "ArgMin" => {
                let x = self.input(0)?;
                let a = attrs([
                    (
                        "op",
                        AttrValue::Str(if op == "ArgMax" { "max" } else { "min" }.into()),
                    ),
                    ("axis", AttrValue::Int(self.int("axis", 0)?)),
                    (
                        "keepdims",
                        AttrValue::Int(i64::from(self.int("keepdims", 1)? != 0)),
                    ),
                    (
                        "select_last_index",
                        AttrValue::Int(i64::from(
                            n.opset >= 12 && self.int("select_last_index", 0)? != 0,
                        )),
                    ),
                ]);
                one(self.kernel("arg_reduce@1", a, &[x])?)
            }
            "CumSum" => {
                let x = self.input(0)?;
                let axis = self.known_ints(&self.input(1)?, "the axis input")?;
                let [axis] = axis.as_slice() else {
                    return Err(format!("the axis input must hold one value, not {axis:?}"));
                };
                let a = attrs([
                    ("axis", AttrValue::Int(*axis)),
                    (
                        "exclusive",
                        AttrValue::Int(i64::from(self.int("exclusive", 0)? != 0)),
                    ),
                    (
                        "reverse",
                        AttrValue::Int(i64::from(self.int("reverse", 0)? != 0)),
                    ),
                ]);
                one(self.kernel("cumsum@1", a, &[x])?)
            }
            "GatherElements" => {
                let (data, idx) = (self.input(0)?, self.input(1)?);
                let a = attrs([("axis", AttrValue::Int(self.int("axis", 0)?))]);
                one(self.kernel("gather_elements@1", a, &[data, idx])?)
            }
            "GatherND" => {
                let (data, idx) = (self.input(0)?, self.input(1)?);
                let b = if n.opset >= 12 {
                    self.int("batch_dims", 0)?
                } else {
                    0
                };
                let a = attrs([("batch_dims", AttrValue::Int(b))]);
                one(self.kernel("gather_nd@1", a, &[data, idx])?)
            }
            "Resize" => self.resize().map(|v| vec![v]),
            "If" => self.if_(),
            "Loop" => self.loop_(),
            "LSTM" | "GRU" | "RNN" => self.recurrent(),
            "PRelu" => {
                let (x, slope) = (self.input(0)?, self.input(1)?);
                let zero = self.scalar_like(0.0, &x);
                let neg = self.compare("lt", &x, &zero)?;
                let scaled = self.binary("mul", &x, &slope)?;
                one(self.where_(&neg, &scaled, &x)?)
            }
            other => Err(format!("op `{other}` is not supported")),
        }
    }

    /// `x[.., start..start + len, ..]` along `axis`.
    fn narrow(&mut self, x: &Val, axis: usize, start: usize, len: usize) -> R<Val> {
        let rank = self.shape(x).len();
        let mut st = vec![0i64; rank];
        let mut en = vec![i64::MAX; rank];
        st[axis] = start as i64;
        en[axis] = start.saturating_add(len) as i64;
        let a = attrs([
            ("starts", AttrValue::Ints(st)),
            ("ends", AttrValue::Ints(en)),
            ("steps", AttrValue::Ints(vec![1; rank])),
        ]);
        self.kernel("slice@1", a, std::slice::from_ref(x))
    }

    fn split(&mut self) -> R<Vec<Val>> {
        let n = self.node;
        let x = self.input(0)?;
        let shape = self.shape(&x);
        let axis = norm_axis(self.int("axis", 0)?, shape.len())?;
        let dim = shape[axis];
        let outs = n.outputs.len();
        if outs == 0 {
            return Err("Split has no outputs".into());
        }
        let given = if n.opset >= 13 {
            match self.opt_input(1)? {
                Some(v) => Some(self.known_ints(&v, "the split input")?),
                None => None,
            }
        } else {
            self.ints("split")?
        };
        let sizes: Vec<usize> = match given.filter(|s| !s.is_empty()) {
            Some(s) => {
                let sizes = s
                    .iter()
                    .map(|&v| {
                        usize::try_from(v).map_err(|_| format!("split {s:?} has a negative size"))
                    })
                    .collect::<R<Vec<_>>>()?;
                if sizes.len() != outs
                    || sizes.iter().try_fold(0usize, |a, &b| a.checked_add(b)) != Some(dim)
                {
                    return Err(format!(
                        "split {s:?} does not cut a dim of {dim} into {outs} outputs"
                    ));
                }
                sizes
            }
            None => {
                let parts = match self.attr("num_outputs", attribute_type::INT)? {
                    Some(a) if n.opset >= 18 => usize::try_from(a.i)
                        .ok()
                        .filter(|&p| p == outs)
                        .ok_or_else(|| {
                            format!("num_outputs {} does not match the {outs} outputs", a.i)
                        })?,
                    _ => outs,
                };
                let chunk = dim.div_ceil(parts);
                if n.opset < 18 && !dim.is_multiple_of(parts) {
                    return Err(format!(
                        "a dim of {dim} does not split evenly into {parts} outputs"
                    ));
                }
                (0..parts)
                    .map(|i| dim.saturating_sub(i * chunk).min(chunk))
                    .collect()
            }
        };
        let mut start = 0;
        let mut vals = Vec::with_capacity(sizes.len());
        for len in sizes {
            vals.push(self.narrow(&x, axis, start, len)?);
            start += len;
        }
        Ok(vals)
    }

    fn tile(&mut self) -> R<Val> {
        let x = self.input(0)?;
        let reps = self.known_ints(&self.input(1)?, "the repeats input")?;
        let shape = self.shape(&x);
        if reps.len() != shape.len() {
            return Err(format!(
                "repeats {reps:?} must have one entry per axis of {shape:?}"
            ));
        }
        let mut out = shape.clone();
        for (d, &r) in out.iter_mut().zip(&reps) {
            let r =
                usize::try_from(r).map_err(|_| format!("repeats {reps:?} has a negative entry"))?;
            *d = d.checked_mul(r).ok_or("the tiled shape overflows")?;
        }
        if product(&out)? > MAX_CREATED {
            return Err(format!(
                "tiling to {out:?} exceeds the limit of {MAX_CREATED} elements"
            ));
        }
        let mut y = x;
        for (axis, &r) in reps.iter().enumerate() {
            if r > 1024 {
                return Err(format!("repeat count {r} is above the supported 1024"));
            }
            if r != 1 {
                y = if r == 0 {
                    self.narrow(&y, axis, 0, 0)?
                } else {
                    self.concat(&vec![y.clone(); r as usize], axis)?
                };
            }
        }
        Ok(y)
    }

    fn trilu(&mut self) -> R<Val> {
        let x = self.input(0)?;
        let shape = self.shape(&x);
        let k = match self.opt_input(1)? {
            Some(v) => self.known_f64(&v, "k")? as i64,
            None => 0,
        };
        let upper = self.int("upper", 1)? != 0;
        if shape.len() < 2 {
            return Err("Trilu needs rank >= 2".into());
        }
        let (rows, cols) = (shape[shape.len() - 2], shape[shape.len() - 1]);
        if product(&[rows, cols])? > MAX_CREATED {
            return Err("the Trilu mask exceeds the size limit".into());
        }
        let mask: Vec<Bool8> = (0..rows)
            .flat_map(|i| {
                (0..cols).map(move |j| {
                    let d = j as i64 - i as i64;
                    Bool8(u8::from(if upper { d >= k } else { d <= k }))
                })
            })
            .collect();
        let mask = known(Tensor::from_vec(&[rows, cols], mask).map_err(e)?);
        let zero = self.scalar_like(0.0, &x);
        self.where_(&mask, &x, &zero)
    }

    fn pad(&mut self) -> R<Val> {
        let n = self.node;
        let x = self.input(0)?;
        let shape = self.shape(&x);
        let rank = shape.len();
        let mode = self.string("mode", "constant")?;
        let wrap_ok = n.opset >= 19;
        if !(mode == "constant"
            || mode == "reflect"
            || mode == "edge"
            || (mode == "wrap" && wrap_ok))
        {
            return Err(format!(
                "mode `{mode}` is not supported (constant, reflect, edge{})",
                if wrap_ok { " or wrap" } else { "" }
            ));
        }
        let (pads, value) = if n.opset < 11 {
            let pads = self.ints("pads")?.ok_or("attribute `pads` is required")?;
            (pads, f64::from(self.float("value", 0.0)?))
        } else {
            let pads = self.known_ints(&self.input(1)?, "the pads input")?;
            let value = match self.opt_input(2)? {
                Some(v) => self.known_f64(&v, "constant_value")?,
                None => 0.0,
            };
            (pads, value)
        };
        let axes: Vec<usize> = match self.opt_input(3)? {
            Some(v) if n.opset >= 18 => self
                .known_ints(&v, "the axes input")?
                .iter()
                .map(|&a| norm_axis(a, rank))
                .collect::<R<Vec<_>>>()?,
            _ => (0..rank).collect(),
        };
        if pads.len() != 2 * axes.len() {
            return Err(format!(
                "pads {pads:?} must have two entries per padded axis ({})",
                axes.len()
            ));
        }
        let fill = scalar(value, self.dtype(&x));
        let mut y = x;
        for (j, &axis) in axes.iter().enumerate() {
            let (before, after) = (pads[j], pads[j + axes.len()]);
            // Negative pads remove elements: crop first, then pad the rest
            // (onnxruntime's order).
            if before < 0 || after < 0 {
                let d = self.shape(&y)[axis];
                let cut = |p: i64| usize::try_from(p.min(0).unsigned_abs()).unwrap_or(usize::MAX);
                let (cb, ce) = (cut(before), cut(after));
                let Some(len) = d.checked_sub(cb).and_then(|l| l.checked_sub(ce)) else {
                    return Err(format!(
                        "pads {pads:?} remove {} elements of axis {axis}, which has {d}",
                        cb.saturating_add(ce)
                    ));
                };
                y = self.narrow(&y, axis, cb, len)?;
            }
            let mut parts = Vec::new();
            for (amount, at_end) in [(before, false), (after, true)] {
                let amount = usize::try_from(amount.max(0)).unwrap_or(usize::MAX);
                if amount > 0 {
                    let part = if mode == "constant" {
                        let mut dims = self.shape(&y);
                        dims[axis] = amount;
                        known(filled(&fill, &dims)?)
                    } else {
                        self.pad_part(&y, axis, amount, at_end, &mode)?
                    };
                    parts.push((at_end, part));
                }
            }
            if parts.is_empty() {
                continue;
            }
            let mut xs: Vec<Val> = parts
                .iter()
                .filter(|(e, _)| !e)
                .map(|(_, v)| v.clone())
                .collect();
            xs.push(y.clone());
            xs.extend(parts.iter().filter(|(e, _)| *e).map(|(_, v)| v.clone()));
            y = self.concat(&xs, axis)?;
        }
        Ok(y)
    }

    /// The `amount` elements `reflect`, `edge` or `wrap` padding puts
    /// before (or, `at_end`, after) `x` along `axis`.
    fn pad_part(
        &mut self,
        x: &Val,
        axis: usize,
        amount: usize,
        at_end: bool,
        mode: &str,
    ) -> R<Val> {
        let d = self.shape(x)[axis];
        let (d, a) = (d as i64, amount as i64);
        let (start, end, step) = match (mode, at_end) {
            ("reflect", false) if a < d => (a, 0, -1),
            ("reflect", true) if a < d => (d - 2, d - 2 - a, -1),
            ("wrap", false) if a <= d => (d - a, d, 1),
            ("wrap", true) if a <= d => (0, a, 1),
            ("edge", _) if d > 0 => {
                let at = if at_end { d - 1 } else { 0 };
                let one = self.narrow(x, axis, at as usize, 1)?;
                let copies = vec![one; amount];
                return self.concat(&copies, axis);
            }
            _ => {
                return Err(format!(
                    "{mode} padding of {amount} on axis {axis} needs a larger dim than {d}"
                ))
            }
        };
        let rank = self.shape(x).len();
        let mut st = vec![0i64; rank];
        let mut en = vec![i64::MAX; rank];
        let mut sp = vec![1i64; rank];
        st[axis] = start;
        // A negative step ending before index 0 needs an end below -dim.
        en[axis] = if step < 0 && end < 0 { i64::MIN } else { end };
        sp[axis] = step;
        let at = attrs([
            ("starts", AttrValue::Ints(st)),
            ("ends", AttrValue::Ints(en)),
            ("steps", AttrValue::Ints(sp)),
        ]);
        self.kernel("slice@1", at, std::slice::from_ref(x))
    }

    /// A per-spatial-axis list attribute (`strides`, `dilations`), `1` per
    /// axis when absent; entries must be positive.
    fn axis_list(&self, name: &str, s: usize) -> R<Vec<usize>> {
        match self.ints(name)? {
            None => Ok(vec![1; s]),
            Some(v) if v.len() == s && v.iter().all(|&x| x >= 1) => {
                Ok(v.iter().map(|&x| x as usize).collect())
            }
            Some(v) => Err(format!(
                "attribute `{name}` {v:?} must have {s} positive entries (one per spatial axis)"
            )),
        }
    }

    /// Explicit `[begins.., ends..]` pads of a sliding window: from `pads`
    /// when `auto_pad` is NOTSET, else computed from the static shapes
    /// (SAME_*: `ceil(D / stride)` outputs, the odd pad at the end for
    /// SAME_UPPER and at the start for SAME_LOWER; VALID: none).
    fn window_pads(
        &self,
        in_sp: &[usize],
        k: &[usize],
        strides: &[usize],
        dil: &[usize],
    ) -> R<Vec<i64>> {
        let s = in_sp.len();
        let auto_pad = self.string("auto_pad", "NOTSET")?;
        match auto_pad.as_str() {
            "NOTSET" => match self.ints("pads")? {
                None => Ok(vec![0; 2 * s]),
                Some(p) if p.len() == 2 * s && p.iter().all(|&x| x >= 0) => Ok(p),
                Some(p) => Err(format!(
                    "attribute `pads` {p:?} must have {} non-negative entries",
                    2 * s
                )),
            },
            "VALID" => Ok(vec![0; 2 * s]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut pads = vec![0i64; 2 * s];
                for i in 0..s {
                    let (d, st) = (in_sp[i] as i128, strides[i] as i128);
                    let span = (dil[i] as i128) * (k[i] as i128 - 1) + 1;
                    let out = (d + st - 1) / st;
                    let total = ((out - 1) * st + span - d).max(0);
                    let small = total / 2;
                    let (lo, hi) = if auto_pad == "SAME_UPPER" {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    };
                    pads[i] = i64::try_from(lo).map_err(e)?;
                    pads[s + i] = i64::try_from(hi).map_err(e)?;
                }
                Ok(pads)
            }
            other => Err(format!(
                "auto_pad `{other}` is not NOTSET, SAME_UPPER, SAME_LOWER or VALID"
            )),
        }
    }

    fn conv(&mut self, transpose: bool) -> R<Val> {
        let (x, w, b) = (self.input(0)?, self.input(1)?, self.opt_input(2)?);
        let (xs, ws) = (self.shape(&x), self.shape(&w));
        if xs.len() < 3 || ws.len() != xs.len() {
            return Err(format!(
                "X {xs:?} and W {ws:?} must have the same rank, at least 3 ([N, C, D..])"
            ));
        }
        let s = xs.len() - 2;
        let (in_sp, k) = (&xs[2..], &ws[2..]);
        if let Some(ks) = self.ints("kernel_shape")? {
            if ks.len() != s || ks.iter().zip(k).any(|(&a, &b)| a != b as i64) {
                return Err(format!(
                    "attribute `kernel_shape` {ks:?} disagrees with W's spatial dims {k:?}"
                ));
            }
        }
        let strides = self.axis_list("strides", s)?;
        let dil = self.axis_list("dilations", s)?;
        let group = self.int("group", 1)?;
        let ints = |v: &[usize]| AttrValue::Ints(v.iter().map(|&x| x as i64).collect());
        let mut a = attrs([
            ("group", AttrValue::Int(group)),
            ("strides", ints(&strides)),
            ("dilations", ints(&dil)),
            ("bias", AttrValue::Int(i64::from(b.is_some()))),
        ]);
        let pads = if transpose {
            let out_pad = match self.ints("output_padding")? {
                None => vec![0; s],
                Some(v) if v.len() == s && v.iter().all(|&x| x >= 0) => v,
                Some(v) => {
                    return Err(format!(
                        "attribute `output_padding` {v:?} must have {s} non-negative entries"
                    ))
                }
            };
            let auto_pad = self.string("auto_pad", "NOTSET")?;
            let target: Option<Vec<i64>> = match self.ints("output_shape")? {
                Some(o) if o.len() == s || o.len() == s + 2 => Some(o[o.len() - s..].to_vec()),
                Some(o) => {
                    return Err(format!(
                    "attribute `output_shape` {o:?} must have {s} entries (one per spatial axis)"
                ))
                }
                None if auto_pad.starts_with("SAME") => Some(
                    (0..s)
                        .map(|i| (in_sp[i] as i64).saturating_mul(strides[i] as i64))
                        .collect(),
                ),
                None => None,
            };
            let mut out_pad = out_pad;
            let pads = match target {
                None if auto_pad == "VALID" => vec![0; 2 * s],
                None => self.window_pads(in_sp, k, &strides, &dil)?,
                Some(t) => {
                    // ONNX's rule, with floor division: a negative end pad
                    // (the target is one longer than the natural output)
                    // becomes output padding.
                    let mut pads = vec![0i64; 2 * s];
                    for i in 0..s {
                        let total = (strides[i] as i128) * (in_sp[i] as i128 - 1)
                            + out_pad[i] as i128
                            + (dil[i] as i128) * (k[i] as i128 - 1)
                            + 1
                            - t[i] as i128;
                        let half = total.div_euclid(2);
                        let (lo, hi) = if auto_pad == "SAME_UPPER" {
                            (half, total - half)
                        } else {
                            (total - half, half)
                        };
                        if lo < 0 || lo > i64::MAX as i128 || hi > i64::MAX as i128 {
                            return Err(format!(
                                "output_shape {t:?} cannot be produced on spatial axis {i} (total padding {total})"
                            ));
                        }
                        pads[i] = lo as i64;
                        if hi < 0 {
                            out_pad[i] = out_pad[i].saturating_add((-hi) as i64);
                        } else {
                            pads[s + i] = hi as i64;
                        }
                    }
                    pads
                }
            };
            a.insert("output_padding".into(), AttrValue::Ints(out_pad));
            pads
        } else {
            self.window_pads(in_sp, k, &strides, &dil)?
        };
        a.insert("pads".into(), AttrValue::Ints(pads));
        let kernel = if transpose {
            "conv_transpose@1"
        } else {
            "conv@1"
        };
        let mut ins = vec![x, w];
        ins.extend(b);
        self.kernel(kernel, a, &ins)
    }

    /// `MaxPool` (with its optional `Indices`, a second `pool@1` launch of
    /// `max_index`) and `AveragePool`.
    fn pool(&mut self, max: bool) -> R<Vec<Val>> {
        let n = self.node;
        let indices = max && n.opset >= 8 && n.outputs.get(1).is_some_and(|o| !o.is_empty());
        let x = self.input(0)?;
        let xs = self.shape(&x);
        if xs.len() < 3 {
            return Err(format!(
                "expected [N, C, D..] with a spatial axis, got {xs:?}"
            ));
        }
        let s = xs.len() - 2;
        let k = self
            .ints("kernel_shape")?
            .ok_or("attribute `kernel_shape` is required")?;
        if k.len() != s || k.iter().any(|&v| v < 1) {
            return Err(format!(
                "attribute `kernel_shape` {k:?} must have {s} positive entries"
            ));
        }
        let ku: Vec<usize> = k.iter().map(|&v| v as usize).collect();
        let strides = self.axis_list("strides", s)?;
        let has_dilations = if max { n.opset >= 10 } else { n.opset >= 19 };
        let dil = if has_dilations {
            self.axis_list("dilations", s)?
        } else {
            vec![1; s]
        };
        let pads = self.window_pads(&xs[2..], &ku, &strides, &dil)?;
        let ceil_mode = n.opset >= 10 && self.int("ceil_mode", 0)? != 0;
        let ints = |v: &[usize]| AttrValue::Ints(v.iter().map(|&x| x as i64).collect());
        let mut a = attrs([
            ("op", AttrValue::Str(if max { "max" } else { "avg" }.into())),
            ("kernel_shape", AttrValue::Ints(k)),
            ("strides", ints(&strides)),
            ("dilations", ints(&dil)),
            ("pads", AttrValue::Ints(pads)),
            ("ceil_mode", AttrValue::Int(i64::from(ceil_mode))),
        ]);
        if !max {
            let cip = n.opset >= 7 && self.int("count_include_pad", 0)? != 0;
            a.insert("count_include_pad".into(), AttrValue::Int(i64::from(cip)));
        }
        let y = self.kernel("pool@1", a.clone(), std::slice::from_ref(&x))?;
        if !indices {
            return Ok(vec![y]);
        }
        let order = self.int("storage_order", 0)?;
        if !(order == 0 || order == 1) {
            return Err(format!(
                "attribute `storage_order` is {order}; it must be 0 (row major) or 1 (column major)"
            ));
        }
        a.insert("op".into(), AttrValue::Str("max_index".into()));
        a.insert("storage_order".into(), AttrValue::Int(order));
        let idx = self.kernel("pool@1", a, &[x])?;
        Ok(vec![y, idx])
    }

    /// Resize as one `resize@1` launch: sizes, scales, `axes`, the
    /// keep-aspect-ratio policies and the tf_crop_and_resize `roi` are all
    /// resolved here, at compile time, into the kernel's per-axis `sizes`,
    /// `scales` and `roi`.
    fn resize(&mut self) -> R<Val> {
        let n = self.node;
        let x = self.input(0)?;
        let shape = self.shape(&x);
        let rank = shape.len();
        let mode = self.string("mode", "nearest")?;
        if !matches!(mode.as_str(), "nearest" | "linear" | "cubic") {
            return Err(format!(
                "mode `{mode}` is not supported (nearest, linear or cubic)"
            ));
        }
        let coord = self.string("coordinate_transformation_mode", "half_pixel")?;
        let known_coord = match coord.as_str() {
            "half_pixel" | "pytorch_half_pixel" | "align_corners" | "asymmetric"
            | "tf_crop_and_resize" => true,
            "half_pixel_symmetric" => n.opset >= 19,
            _ => false,
        };
        if !known_coord {
            return Err(format!(
                "coordinate_transformation_mode `{coord}` is not supported"
            ));
        }
        let (antialias, policy) = if n.opset >= 18 {
            (
                self.int("antialias", 0)? != 0,
                self.string("keep_aspect_ratio_policy", "stretch")?,
            )
        } else {
            (false, "stretch".to_string())
        };
        if antialias && mode == "nearest" {
            return Err("antialias = 1 applies to mode linear or cubic, not nearest".into());
        }
        if !matches!(policy.as_str(), "stretch" | "not_larger" | "not_smaller") {
            return Err(format!(
                "keep_aspect_ratio_policy `{policy}` is not supported (stretch, not_larger or not_smaller)"
            ));
        }
        let axes: Vec<usize> = match self.ints("axes")? {
            Some(a) if n.opset >= 18 => a
                .iter()
                .map(|&v| norm_axis(v, rank))
                .collect::<R<Vec<_>>>()?,
            _ => (0..rank).collect(),
        };
        if (1..axes.len()).any(|i| axes[..i].contains(&axes[i])) {
            return Err(format!("axes {axes:?} name an axis twice"));
        }
        let sizes = match self.opt_input(3)? {
            Some(v) => Some(self.known_ints(&v, "the sizes input")?),
            None => None,
        }
        .filter(|v| !v.is_empty());
        let scales = match self.opt_input(2)? {
            Some(Val::Known { t, .. }) if t.numel() == 0 => None,
            Some(v) => Some(self.known_floats(&v, "the scales input")?),
            None => None,
        };
        let mut out = shape.clone();
        let mut a = attrs([
            ("mode", AttrValue::Str(mode.clone())),
            (
                "nearest_mode",
                AttrValue::Str(self.string("nearest_mode", "round_prefer_floor")?),
            ),
        ]);
        if mode == "cubic" {
            let ca = f64::from(self.float("cubic_coeff_a", -0.75)?);
            a.insert("cubic_coeff_a".into(), AttrValue::Float(ca));
        }
        if self.int("exclude_outside", 0)? != 0 {
            a.insert("exclude_outside".into(), AttrValue::Int(1));
        }
        if antialias {
            a.insert("antialias".into(), AttrValue::Int(1));
        }
        if coord == "tf_crop_and_resize" {
            let roi = match self.opt_input(1)? {
                Some(v) => self.known_floats(&v, "the roi input")?,
                None => Vec::new(),
            };
            let k = axes.len();
            if roi.len() != 2 * k || roi.iter().any(|v| !v.is_finite()) {
                return Err(format!(
                    "tf_crop_and_resize needs the roi input: {} finite numbers (the crop starts, \
                     then the crop ends, one per resized axis), got {roi:?}",
                    2 * k
                ));
            }
            let mut full = vec![0.0; rank];
            full.resize(2 * rank, 1.0);
            for (i, &ax) in axes.iter().enumerate() {
                full[ax] = roi[i];
                full[rank + ax] = roi[k + i];
            }
            a.insert("roi".into(), AttrValue::Floats(full));
            let ev = f64::from(self.float("extrapolation_value", 0.0)?);
            a.insert("extrapolation_value".into(), AttrValue::Float(ev));
        }
        a.insert(
            "coordinate_transformation_mode".into(),
            AttrValue::Str(coord),
        );
        match (sizes, scales) {
            (Some(sz), _) => {
                if sz.len() != axes.len() {
                    return Err(format!(
                        "sizes {sz:?} must have one entry per resized axis ({})",
                        axes.len()
                    ));
                }
                let sz = sz
                    .iter()
                    .map(|&v| usize::try_from(v))
                    .collect::<Result<Vec<usize>, _>>()
                    .map_err(|_| format!("sizes {sz:?} has a negative entry"))?;
                if policy == "stretch" {
                    for (&ax, &v) in axes.iter().zip(&sz) {
                        out[ax] = v;
                    }
                } else {
                    let (scale, kept) = Self::keep_aspect_ratio(&policy, &axes, &shape, &sz)?;
                    out = kept;
                    let mut full = vec![1.0f64; rank];
                    for &ax in &axes {
                        full[ax] = scale;
                    }
                    a.insert("scales".into(), AttrValue::Floats(full));
                }
            }
            (None, Some(sc)) => {
                if sc.len() != axes.len() {
                    return Err(format!(
                        "scales {sc:?} must have one entry per resized axis ({})",
                        axes.len()
                    ));
                }
                let mut full = vec![1.0f64; rank];
                for (&ax, &v) in axes.iter().zip(&sc) {
                    if !(v.is_finite() && v > 0.0) {
                        return Err(format!("scales {sc:?} must be positive and finite"));
                    }
                    let o = (shape[ax] as f64 * v).floor();
                    if o > MAX_CREATED as f64 {
                        return Err(format!(
                            "resizing axis {ax} to {o} elements exceeds the limit of {MAX_CREATED}"
                        ));
                    }
                    out[ax] = o as usize;
                    full[ax] = v;
                }
                a.insert("scales".into(), AttrValue::Floats(full));
            }
            (None, None) => return Err("Resize needs scales or sizes".into()),
        }
        if product(&out)? > MAX_CREATED.saturating_mul(16) {
            return Err(format!("the resized shape {out:?} is too large"));
        }
        let sizes: Vec<i64> = out.iter().map(|&d| d as i64).collect();
        a.insert("sizes".into(), AttrValue::Ints(sizes));
        self.kernel("resize@1", a, &[x])
    }

    /// The content of a known float (or integer) tensor as f64, for
    /// Resize's scales and roi.
    fn known_floats(&mut self, v: &Val, what: &str) -> R<Vec<f64>> {
        let Some(t) = self.needed_content(v, what)? else {
            return Err(format!("{what} must be known at compile time"));
        };
        let Val::Known { t, .. } = self.cast(&known(t), DType::F64)? else {
            return Err(format!("{what} must be known at compile time"));
        };
        t.to_vec::<f64>().map_err(e)
    }

    /// Resize's `keep_aspect_ratio_policy` (`not_larger` or `not_smaller`) for
    /// `sizes` given on `axes` of an input of shape `shape`: the one scale every
    /// resized axis takes (the smallest, or the largest, of `sizes[i] / D`), and
    /// the output shape, each resized axis `round_half_up(scale * D)` as the
    /// spec rounds it.
    fn keep_aspect_ratio(
        policy: &str,
        axes: &[usize],
        shape: &[usize],
        sizes: &[usize],
    ) -> R<(f64, Vec<usize>)> {
        let mut scale: Option<f64> = None;
        for (&ax, &o) in axes.iter().zip(sizes) {
            let d = shape[ax];
            if d == 0 {
                return Err(format!(
                    "keep_aspect_ratio_policy `{policy}` cannot scale axis {ax}, which is empty"
                ));
            }
            let r = o as f64 / d as f64;
            scale = Some(match (scale, policy) {
                (None, _) => r,
                (Some(s), "not_larger") => s.min(r),
                (Some(s), _) => s.max(r),
            });
        }
        let Some(scale) = scale else {
            return Ok((1.0, shape.to_vec()));
        };
        if !(scale.is_finite() && scale > 0.0) {
            return Err(format!(
                "sizes {sizes:?} with keep_aspect_ratio_policy `{policy}` give scale {scale}; \
                 every resized axis needs a positive size"
            ));
        }
        let mut out = shape.to_vec();
        for &ax in axes {
            let o = (scale * shape[ax] as f64 + 0.5).floor();
            if o > MAX_CREATED as f64 {
                return Err(format!(
                    "resizing axis {ax} to {o} elements exceeds the limit of {MAX_CREATED}"
                ));
            }
            out[ax] = o as usize;
        }
        Ok((scale, out))
    }

    /// `BatchNormalization`. Inference: `Y = X s + t` per channel with
    /// `s = scale / sqrt(var + eps)` and `t = B - mean * s`, which fold to
    /// constants when the statistics are initializers. Training (opset 14
    /// on, `training_mode` = 1): the statistics are the batch's own, the
    /// mean and population variance over every axis but the channels, and
    /// the optional outputs are the running statistics
    /// `input * momentum + batch * (1 - momentum)`.
    fn batch_norm(&mut self) -> R<Vec<Val>> {
        let n = self.node;
        let training = n.opset >= 14 && self.int("training_mode", 0)? != 0;
        if n.opset < 9 && self.int("spatial", 1)? != 1 {
            return Err("spatial = 0 is not supported".into());
        }
        if !training && n.outputs.iter().skip(1).any(|o| !o.is_empty()) {
            return Err(if n.opset >= 14 {
                "the running mean/var outputs are only computed with training_mode = 1".into()
            } else {
                format!(
                    "the training outputs of opset {} are not supported (inference only; opset 14 on computes the running statistics)",
                    n.opset
                )
            });
        }
        let x = self.input(0)?;
        let xs = self.shape(&x);
        if xs.len() < 2 {
            return Err(format!("X must have rank >= 2 ([N, C, ..]), got {xs:?}"));
        }
        let c = xs[1];
        let mut params = Vec::with_capacity(4);
        for (i, what) in [(1, "scale"), (2, "B"), (3, "mean"), (4, "var")] {
            let v = self.input(i)?;
            if self.shape(&v) != [c] {
                return Err(format!(
                    "{what} must have shape [{c}] (the channels of X), got {:?}",
                    self.shape(&v)
                ));
            }
            params.push(v);
        }
        let mut dims = vec![c];
        dims.resize(xs.len() - 1, 1);
        let eps = self.scalar_like(f64::from(self.float("epsilon", 1e-5)?), &x);
        if !training {
            let ve = self.binary("add", &params[3], &eps)?;
            let sd = self.unary("sqrt", &ve)?;
            let sc = self.binary("div", &params[0], &sd)?;
            let ms = self.binary("mul", &params[2], &sc)?;
            let sh = self.binary("sub", &params[1], &ms)?;
            let sc = self.reshape(&sc, &dims)?;
            let sh = self.reshape(&sh, &dims)?;
            let y = self.binary("mul", &x, &sc)?;
            return Ok(vec![self.binary("add", &y, &sh)?]);
        }
        // The batch statistics, kept as [1, C, 1..] to broadcast against X.
        let axes: Vec<i64> = (0..xs.len() as i64).filter(|&a| a != 1).collect();
        let mean = self.reduce("mean", &x, &axes, true)?;
        let d = self.binary("sub", &x, &mean)?;
        let d2 = self.binary("mul", &d, &d)?;
        let var = self.reduce("mean", &d2, &axes, true)?;
        let ve = self.binary("add", &var, &eps)?;
        let sd = self.unary("sqrt", &ve)?;
        let scale = self.reshape(&params[0], &dims)?;
        let bias = self.reshape(&params[1], &dims)?;
        let sc = self.binary("div", &scale, &sd)?;
        let y = self.binary("mul", &d, &sc)?;
        let y = self.binary("add", &y, &bias)?;
        let mut outs = vec![y];
        if n.outputs.iter().skip(1).any(|o| !o.is_empty()) {
            let momentum = f64::from(self.float("momentum", 0.9)?);
            for (batch, running) in [(mean, &params[2]), (var, &params[3])] {
                let batch = self.reshape(&batch, &[c])?;
                let m = self.scalar_like(momentum, running);
                let rest = self.scalar_like(1.0 - momentum, &batch);
                let old = self.binary("mul", running, &m)?;
                let new = self.binary("mul", &batch, &rest)?;
                outs.push(self.binary("add", &old, &new)?);
            }
        }
        Ok(outs)
    }

    /// A known boolean (or numeric) flag such as Dropout's `training_mode`.
    fn known_flag(&mut self, v: &Val) -> R<bool> {
        Ok(self.known_f64(v, "training_mode")? != 0.0)
    }

    fn matmul(&mut self) -> R<Val> {
        let (a, b) = (self.input(0)?, self.input(1)?);
        let (sa, sb) = (self.shape(&a), self.shape(&b));
        if sa.is_empty() || sb.is_empty() {
            return Err("MatMul operands must have rank >= 1".into());
        }
        let a2 = if sa.len() == 1 {
            self.reshape(&a, &[1, sa[0]])?
        } else {
            a
        };
        let b2 = if sb.len() == 1 {
            self.reshape(&b, &[sb[0], 1])?
        } else {
            b
        };
        let y = if self.shape(&b2).len() == 2 {
            let la = attrs([("trans_w", AttrValue::Int(0)), ("bias", AttrValue::Int(0))]);
            self.kernel("linear@1", la, &[a2, b2])?
        } else {
            self.kernel("matmul@1", Attrs::new(), &[a2, b2])?
        };
        let mut out = self.shape(&y);
        if sb.len() == 1 {
            out.pop();
        }
        if sa.len() == 1 {
            let at = out.len() - if sb.len() == 1 { 1 } else { 2 };
            out.remove(at);
        }
        self.reshape(&y, &out)
    }

    fn gemm(&mut self) -> R<Val> {
        let (a, b, c) = (self.input(0)?, self.input(1)?, self.opt_input(2)?);
        let alpha = f64::from(self.float("alpha", 1.0)?);
        let beta = f64::from(self.float("beta", 1.0)?);
        let trans_a = self.int("transA", 0)? != 0;
        let trans_b = self.int("transB", 0)? != 0;
        if self.shape(&a).len() != 2 || self.shape(&b).len() != 2 {
            return Err("Gemm operands A and B must have rank 2".into());
        }
        let a = if trans_a {
            self.transpose(&a, &[1, 0])?
        } else {
            a
        };
        let n = self.shape(&b)[usize::from(!trans_b)];
        let bias = match &c {
            Some(c) if alpha == 1.0 && beta == 1.0 && self.shape(c) == [n] => Some(c.clone()),
            _ => None,
        };
        let la = attrs([
            ("trans_w", AttrValue::Int(i64::from(trans_b))),
            ("bias", AttrValue::Int(i64::from(bias.is_some()))),
        ]);
        let mut ins = vec![a, b];
        ins.extend(bias.clone());
        let mut y = self.kernel("linear@1", la, &ins)?;
        if alpha != 1.0 {
            let s = self.scalar_like(alpha, &y);
            y = self.binary("mul", &y, &s)?;
        }
        if let (Some(c), None) = (c, bias) {
            let c = if beta != 1.0 {
                let s = self.scalar_like(beta, &c);
                self.binary("mul", &c, &s)?
            } else {
                c
            };
            y = self.binary("add", &y, &c)?;
        }
        Ok(y)
    }

    fn softmax(&mut self, log: bool) -> R<Val> {
        let x = self.input(0)?;
        let shape = self.shape(&x);
        let rank = shape.len();
        let legacy = self.node.opset < 13;
        let axis = self.int("axis", if legacy { 1 } else { -1 })?;
        let axis = if rank == 0 { 0 } else { norm_axis(axis, rank)? };
        // Before opset 13 the input is coerced to 2-D at `axis` and the
        // softmax runs over the flattened trailing dims.
        let (x2, kaxis) = if legacy && rank > 0 && axis != rank - 1 {
            let dims = [product(&shape[..axis])?, product(&shape[axis..])?];
            (self.reshape(&x, &dims)?, 1i64)
        } else {
            (x.clone(), axis as i64)
        };
        let y = if log {
            let m = self.reduce("max", &x2, &[kaxis], true)?;
            let d = self.binary("sub", &x2, &m)?;
            let ex = self.unary("exp", &d)?;
            let s = self.reduce("sum", &ex, &[kaxis], true)?;
            let l = self.unary("log", &s)?;
            self.binary("sub", &d, &l)?
        } else {
            self.kernel("softmax@1", attrs([("axis", AttrValue::Int(kaxis))]), &[x2])?
        };
        self.reshape(&y, &shape)
    }

    fn layer_norm(&mut self) -> R<Vec<Val>> {
        let x = self.input(0)?;
        let scale = self.input(1)?;
        let shape = self.shape(&x);
        let axis = norm_axis(self.int("axis", -1)?, shape.len())?;
        let eps = f64::from(self.float("epsilon", 1e-5)?);
        let norm = shape[axis..].to_vec();
        let fit = |b: &mut Self, v: Val, what: &str| -> R<Val> {
            let s = b.shape(&v);
            if s == norm {
                Ok(v)
            } else if product(&s)? == product(&norm)? {
                b.reshape(&v, &norm)
            } else {
                Err(format!(
                    "{what} of shape {s:?} does not match the normalized shape {norm:?}"
                ))
            }
        };
        let scale = fit(self, scale, "Scale")?;
        let bias = match self.opt_input(2)? {
            Some(bv) => fit(self, bv, "B")?,
            None => known(filled(&scalar(0.0, self.dtype(&x)), &norm)?),
        };
        let a = attrs([
            ("axis", AttrValue::Int(axis as i64)),
            ("epsilon", AttrValue::Float(eps)),
        ]);
        let y = self.kernel("layer_norm@1", a, &[x.clone(), scale, bias])?;
        if self.node.outputs.iter().skip(1).all(|o| o.is_empty()) {
            return Ok(vec![y]);
        }
        // The optional outputs (a training graph's): the mean and 1/σ over
        // the normalized axes, kept as size-1 axes, computed in the stash
        // type.
        let stash = match self.int("stash_type", 1)? {
            1 => DType::F32,
            11 => DType::F64,
            t => return Err(format!("stash_type {t} is not float or double")),
        };
        let xs = self.cast(&x, stash)?;
        let axes: Vec<i64> = (axis as i64..shape.len() as i64).collect();
        let mean = self.reduce("mean", &xs, &axes, true)?;
        let d = self.binary("sub", &xs, &mean)?;
        let d2 = self.binary("mul", &d, &d)?;
        let var = self.reduce("mean", &d2, &axes, true)?;
        let eps = self.scalar_like(eps, &var);
        let var = self.binary("add", &var, &eps)?;
        let inv_std = self.unary("rsqrt", &var)?;
        Ok(vec![y, mean, inv_std])
    }

    fn reduction(&mut self) -> R<Val> {
        let n = self.node;
        let x = self.input(0)?;
        let rank = self.shape(&x).len();
        let axes_as_input = if n.op_type == "ReduceSum" {
            n.opset >= 13
        } else {
            n.opset >= 18
        };
        let axes = if axes_as_input {
            match self.opt_input(1)? {
                Some(v) => self.known_ints(&v, "the axes input")?,
                None => Vec::new(),
            }
        } else {
            self.ints("axes")?.unwrap_or_default()
        };
        let keepdims = self.int("keepdims", 1)? != 0;
        if axes.is_empty() && axes_as_input && self.int("noop_with_empty_axes", 0)? != 0 {
            return Ok(x);
        }
        let axes = axes
            .iter()
            .map(|&a| norm_axis(a, rank).map(|a| a as i64))
            .collect::<R<Vec<_>>>()?;
        let op = match n.op_type.as_str() {
            "ReduceMean" => "mean",
            "ReduceSum" => "sum",
            "ReduceMax" => "max",
            _ => "min",
        };
        if rank == 0 {
            return Ok(x);
        }
        self.reduce(op, &x, &axes, keepdims)
    }

    fn squeeze(&mut self, unsqueeze: bool) -> R<Val> {
        let n = self.node;
        let x = self.input(0)?;
        let shape = self.shape(&x);
        let axes = if n.opset >= 13 {
            match self.opt_input(1)? {
                Some(v) => Some(self.known_ints(&v, "the axes input")?),
                None => None,
            }
        } else {
            self.ints("axes")?
        };
        if unsqueeze {
            let axes = axes.ok_or("Unsqueeze needs axes")?;
            let out_rank = shape.len() + axes.len();
            if out_rank > MAX_RANK {
                return Err(format!("the result's rank {out_rank} exceeds {MAX_RANK}"));
            }
            let mut ins = axes
                .iter()
                .map(|&a| norm_axis(a, out_rank))
                .collect::<R<Vec<_>>>()?;
            ins.sort_unstable();
            if ins.windows(2).any(|w| w[0] == w[1]) {
                return Err(format!("axes {axes:?} repeat an axis"));
            }
            let mut dims = Vec::with_capacity(out_rank);
            let mut it = shape.iter();
            for i in 0..out_rank {
                if ins.binary_search(&i).is_ok() {
                    dims.push(1);
                } else {
                    dims.push(*it.next().ok_or("axes do not fit the input rank")?);
                }
            }
            return self.reshape(&x, &dims);
        }
        let dims: Vec<usize> = match axes {
            None => shape.iter().copied().filter(|&d| d != 1).collect(),
            Some(axes) => {
                let axes = axes
                    .iter()
                    .map(|&a| norm_axis(a, shape.len()))
                    .collect::<R<Vec<_>>>()?;
                for &a in &axes {
                    if shape[a] != 1 {
                        return Err(format!(
                            "axis {a} of {shape:?} is not 1 and cannot be squeezed"
                        ));
                    }
                }
                shape
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !axes.contains(i))
                    .map(|(_, &d)| d)
                    .collect()
            }
        };
        self.reshape(&x, &dims)
    }

    fn slice(&mut self) -> R<Val> {
        let n = self.node;
        let x = self.input(0)?;
        let rank = self.shape(&x).len();
        let (starts, ends, axes, steps) = if n.opset < 10 {
            (
                self.ints("starts")?
                    .ok_or("attribute `starts` is required")?,
                self.ints("ends")?.ok_or("attribute `ends` is required")?,
                self.ints("axes")?,
                None,
            )
        } else {
            let starts = self.known_ints(&self.input(1)?, "the starts input")?;
            let ends = self.known_ints(&self.input(2)?, "the ends input")?;
            let axes = match self.opt_input(3)? {
                Some(v) => Some(self.known_ints(&v, "the axes input")?),
                None => None,
            };
            let steps = match self.opt_input(4)? {
                Some(v) => Some(self.known_ints(&v, "the steps input")?),
                None => None,
            };
            (starts, ends, axes, steps)
        };
        let count = starts.len();
        let axes = axes.unwrap_or_else(|| (0..count as i64).collect());
        let steps = steps.unwrap_or_else(|| vec![1; count]);
        if ends.len() != count || axes.len() != count || steps.len() != count {
            return Err(format!(
                "starts, ends, axes and steps have different lengths ({count}, {}, {}, {})",
                ends.len(),
                axes.len(),
                steps.len()
            ));
        }
        let mut st = vec![0i64; rank];
        let mut en = vec![i64::MAX; rank];
        let mut sp = vec![1i64; rank];
        let mut seen = vec![false; rank];
        for j in 0..count {
            let a = norm_axis(axes[j], rank)?;
            if std::mem::replace(&mut seen[a], true) {
                return Err(format!("axis {a} is sliced twice"));
            }
            if steps[j] == 0 {
                return Err("a step is 0".into());
            }
            st[a] = starts[j];
            en[a] = ends[j];
            sp[a] = steps[j];
        }
        let a = attrs([
            ("starts", AttrValue::Ints(st)),
            ("ends", AttrValue::Ints(en)),
            ("steps", AttrValue::Ints(sp)),
        ]);
        self.kernel("slice@1", a, &[x])
    }

    fn constant(&mut self) -> R<Val> {
        let n = self.node;
        let mut found = Vec::new();
        for name in n.attrs.keys() {
            found.push(name.as_str());
        }
        let [name] = found.as_slice() else {
            return Err(format!(
                "needs exactly one value attribute, found {found:?}"
            ));
        };
        let t = match *name {
            "value" => {
                let a = self
                    .attr("value", attribute_type::TENSOR)?
                    .ok_or("no value")?;
                let p = a.t.as_ref().ok_or("attribute `value` holds no tensor")?;
                tensor::from_proto(p).map_err(|m| format!("attribute `value`: {m}"))?
            }
            "value_float" => Tensor::scalar(self.float("value_float", 0.0)?),
            "value_int" => Tensor::scalar(self.int("value_int", 0)?),
            "value_floats" => {
                let a = self
                    .attr("value_floats", attribute_type::FLOATS)?
                    .ok_or("no value")?;
                Tensor::from_vec(&[a.floats.len()], a.floats.clone()).map_err(e)?
            }
            "value_ints" => {
                let v = self.ints("value_ints")?.unwrap_or_default();
                Tensor::from_vec(&[v.len()], v).map_err(e)?
            }
            other => return Err(format!("attribute `{other}` is not supported")),
        };
        let weight = n.outputs.first().filter(|o| !o.is_empty()).cloned();
        Ok(Val::Known { t, weight })
    }

    fn range(&mut self) -> R<Val> {
        let (s, l, d) = (self.input(0)?, self.input(1)?, self.input(2)?);
        let dtype = self.dtype(&s);
        let (start, limit, delta) = (
            self.known_f64(&s, "start")?,
            self.known_f64(&l, "limit")?,
            self.known_f64(&d, "delta")?,
        );
        if delta == 0.0 || !delta.is_finite() || !start.is_finite() || !limit.is_finite() {
            return Err(format!("cannot range from {start} to {limit} by {delta}"));
        }
        let count = ((limit - start) / delta).ceil().max(0.0);
        if count > MAX_CREATED as f64 {
            return Err(format!(
                "the range has {count} elements, above the limit of {MAX_CREATED}"
            ));
        }
        let count = count as usize;
        let t = match dtype {
            DType::F32 => {
                let (s0, d0) = (start as f32, delta as f32);
                Tensor::from_vec(&[count], (0..count).map(|i| s0 + i as f32 * d0).collect())
            }
            DType::F64 => Tensor::from_vec(
                &[count],
                (0..count).map(|i| start + i as f64 * delta).collect(),
            ),
            // Integer ranges wrap like the integer kernels do; `count` is
            // already bounded, so only the values can overflow.
            DType::I32 | DType::I64 => {
                let (s0, d0) = (start as i64, delta as i64);
                let v: Vec<i64> = (0..count as i64)
                    .map(|i| s0.wrapping_add(i.wrapping_mul(d0)))
                    .collect();
                if dtype == DType::I32 {
                    Tensor::from_vec(&[count], v.into_iter().map(|x| x as i32).collect())
                } else {
                    Tensor::from_vec(&[count], v)
                }
            }
            other => return Err(format!("Range of {other} is not supported")),
        }
        .map_err(e)?;
        Ok(known(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_dims_follow_onnx() {
        assert_eq!(reshape_dims(&[2, 3, 4], &[0, -1], false).unwrap(), [2, 12]);
        assert_eq!(reshape_dims(&[2, 3, 4], &[-1], false).unwrap(), [24]);
        assert_eq!(reshape_dims(&[0, 3], &[0, 3], true).unwrap(), [0, 3]);
        assert!(reshape_dims(&[2, 3], &[-1, -1], false).is_err());
        assert!(reshape_dims(&[2, 3], &[5], false).is_err());
        assert!(reshape_dims(&[2], &[0, 0], false).is_err());
    }

    #[test]
    fn broadcast_and_support() {
        assert_eq!(broadcast(&[3, 1], &[2, 1, 4]).unwrap(), [2, 3, 4]);
        assert!(broadcast(&[3], &[4]).is_err());
        assert!(check_support("Add", "", 13).is_ok());
        assert!(check_support("Gelu", "", 13)
            .unwrap_err()
            .contains("opset 20"));
        assert!(check_support("NonMaxSuppression", "", 13)
            .unwrap_err()
            .contains("not supported"));
        assert!(check_support("Add", "com.microsoft", 1)
            .unwrap_err()
            .contains("domain"));
        assert!(check_support("Add", "", 99).unwrap_err().contains("newer"));
        assert!(supported_ops().iter().all(|op| since(op).is_some()));
    }
}
