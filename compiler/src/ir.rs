//! The compiler's typed graph IR.
//!
//! A [`Graph`] is a list of [`Node`]s in definition order. Each node has an
//! [`Op`], input values and output values; every value is defined by exactly
//! one node, before any node uses it (SSA in a topological order, so a single
//! forward walk sees definitions before uses). The graph also carries the
//! function's boundary: its inputs ([`InputDef`]: name, example meta and, for
//! scalars specialized at trace time, their value), the globals it reads
//! ([`GlobalDef`]: captured weights or host-bound values) and its named
//! outputs ([`OutputDef`]).
//!
//! Ops:
//! - [`Op::Input`], [`Op::Global`], [`Op::Constant`]: no inputs, one output;
//! - [`Op::Reshape`]: one input, one output with the same dtype and element
//!   count; a view, not a kernel (lowered to the host's `view`);
//! - [`Op::If`], [`Op::While`]: structured control flow over [`Region`]s
//!   (nested graphs), run by the wrapper: only the branch taken, or as many
//!   trips as the data asks for, launch kernels;
//! - [`Op::Kernel`]: a `name@version` kernel of the registry with its static
//!   attributes. The kernel's own signature checker
//!   ([`ampoule_kernels::Bound::check`]) is the IR's shape and dtype
//!   inference, so the compiler and the host agree on every shape.
//!
//! Value types are [`TensorMeta`] (dtype + static shape). This is the one
//! place symbolic dims will enter: `values` will hold a type whose dims are
//! `Static(n) | Symbol(s)`, and [`Graph::meta`] stays the accessor every pass
//! goes through for concrete sizes.
//!
//! The invariants are listed and enforced by [`crate::verify`]. Builders here
//! ([`Graph::kernel`], [`Graph::reshape`]) keep them by construction;
//! [`Graph::push`] does not check anything and exists for passes and for
//! tests that build invalid graphs on purpose.

use std::fmt;

use ampoule_host::ScalarValue;
use ampoule_kernels::{
    AttrValue, Attrs, Bound, DType, KernelError, Registry, Tensor, TensorMeta, MAX_OPERANDS,
};

/// A value: the output of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// What a node does.
#[derive(Clone, Debug)]
pub enum Op {
    /// Function input `i` (an index into [`Graph::inputs`]).
    Input(u32),
    /// Global `g` (an index into [`Graph::globals`]).
    Global(u32),
    /// A tensor known at compile time. Lowering turns constants into
    /// embedded globals (`passes::constants_to_globals`).
    Constant(Tensor),
    /// A reshape: the output has the input's dtype and element count and the
    /// shape of its own meta.
    Reshape,
    /// A kernel launch.
    Kernel { kernel: String, attrs: Attrs },
    /// Structured choice: runs `then` if element 0 of input 0 (a
    /// one-element bool or integer tensor) is non-zero, else `otherwise`.
    /// Inputs `1..` are the branches' arguments. Each branch is a
    /// [`Region`] whose inputs have the arguments' types and whose outputs
    /// have the node's output types. Only the branch taken runs: it is
    /// wrapper control flow, not a select.
    If {
        then: Box<Graph>,
        otherwise: Box<Graph>,
    },
    /// A loop. The node's inputs are `carried` initial values followed by
    /// loop invariants; `cond` and `body` are [`Region`]s that both take
    /// (carried.., invariants..). `cond` returns one one-element bool or
    /// integer tensor; `body` returns the next carried values. The node's
    /// outputs are the carried values when `cond` first does not hold (so
    /// there are as many outputs as carried values).
    While { cond: Box<Graph>, body: Box<Graph> },
    /// A graph break's data-dependent guard: if element 0 of its one input
    /// (a one-element bool or integer tensor) is zero, the run stops and
    /// reports a miss at break `index`. No outputs; never dead.
    Guard { index: u32 },
}

/// The graphs of `If` and `While` are *regions*: ordinary [`Graph`]s whose
/// inputs are the values the node passes in. A region declares no globals
/// and holds no `Global` or `Constant` node: the tracer places those in the
/// outermost graph and passes them in as arguments, so storage for data the
/// wrapper cannot create stays in the package's globals table.
pub type Region = Graph;

/// How deeply regions may nest. Bounds the recursion of every pass.
pub const MAX_REGION_DEPTH: usize = 32;

impl Op {
    /// A kernel op.
    pub fn kernel(kernel: impl Into<String>, attrs: Attrs) -> Op {
        Op::Kernel {
            kernel: kernel.into(),
            attrs,
        }
    }

    /// The op's name as the text form prints it.
    pub fn name(&self) -> &str {
        match self {
            Op::Input(_) => "input",
            Op::Global(_) => "global",
            Op::Constant(_) => "constant",
            Op::Reshape => "reshape",
            Op::Kernel { kernel, .. } => kernel,
            Op::If { .. } => "if",
            Op::While { .. } => "while",
            Op::Guard { .. } => "guard",
        }
    }

    /// The regions the op holds, in a fixed order (`then`, `otherwise`;
    /// `cond`, `body`).
    pub fn regions(&self) -> Vec<&Graph> {
        match self {
            Op::If { then, otherwise } => vec![then, otherwise],
            Op::While { cond, body } => vec![cond, body],
            _ => Vec::new(),
        }
    }

    /// [`Op::regions`], mutably.
    pub fn regions_mut(&mut self) -> Vec<&mut Graph> {
        match self {
            Op::If { then, otherwise } => vec![then, otherwise],
            Op::While { cond, body } => vec![cond, body],
            _ => Vec::new(),
        }
    }
}

/// One node: an op, the values it reads and the values it defines.
#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

/// A function input.
#[derive(Clone, Debug, PartialEq)]
pub struct InputDef {
    pub name: String,
    /// The example's dtype and shape this graph was traced for.
    pub meta: TensorMeta,
    /// For a rank-0 input whose value the trace read: that value. The entry
    /// is specialized on it (a `ScalarValue` guard) and the signature
    /// declares the input a scalar.
    pub specialized: Option<ScalarValue>,
    /// For a small tensor input whose elements the trace read: those
    /// elements. The entry is specialized on them (an `InputValues` guard).
    pub values: Option<Vec<ScalarValue>>,
}

/// Where a global's value comes from.
#[derive(Clone, Debug)]
pub enum GlobalSource {
    /// Captured at trace time and embedded in the package as a weight.
    Embedded(Tensor),
    /// Bound by the application by name at load. With `digest`, the entry
    /// was specialized on the bound value's content (a `GlobalDigest` guard
    /// with this SHA-256).
    Bound { digest: Option<String> },
}

/// A global the graph reads.
#[derive(Clone, Debug)]
pub struct GlobalDef {
    /// The package-wide name (host-bound globals are bound by it).
    pub name: String,
    pub meta: TensorMeta,
    pub source: GlobalSource,
}

/// A named function output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputDef {
    pub name: String,
    pub value: ValueId,
}

/// A typed graph. See the module doc.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub inputs: Vec<InputDef>,
    pub globals: Vec<GlobalDef>,
    pub nodes: Vec<Node>,
    /// The type of each value, indexed by [`ValueId`].
    pub values: Vec<TensorMeta>,
    pub outputs: Vec<OutputDef>,
    /// Inputs the function updates in place (indices into `inputs`): the
    /// last `mutations.len()` entries of `outputs` are their new values, in
    /// this order, each of its input's type (see `Tracer::assign`). Empty in
    /// regions.
    pub mutations: Vec<u32>,
}

/// Why a builder refused to add a node. The graph is unchanged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("kernel `{kernel}` produced {got} outputs from its checker but has arity {arity}; the kernel registry is inconsistent")]
    Arity {
        kernel: String,
        got: usize,
        arity: usize,
    },
    #[error(
        "cannot reshape {from} to shape {to:?}: element counts differ ({from_numel} vs {to_numel})"
    )]
    Reshape {
        from: TensorMeta,
        to: Vec<usize>,
        from_numel: usize,
        to_numel: usize,
    },
    #[error("value {0} does not exist in this graph")]
    UnknownValue(ValueId),
    #[error("`{op}` needs at least one input")]
    Empty { op: &'static str },
    #[error("{what} index {index} is out of range ({count} defined)")]
    Index {
        what: &'static str,
        index: u32,
        count: usize,
    },
    #[error("`{op}`: {message}")]
    Region { op: &'static str, message: String },
}

impl Graph {
    pub fn new() -> Graph {
        Graph::default()
    }

    /// The type of `v`. Panics if `v` is not a value of this graph; passes
    /// only call it on values the verifier has seen defined.
    pub fn meta(&self, v: ValueId) -> &TensorMeta {
        &self.values[v.index()]
    }

    /// The type of `v`, if it exists.
    pub fn try_meta(&self, v: ValueId) -> Option<&TensorMeta> {
        self.values.get(v.index())
    }

    /// Declares function input `name` traced with `meta`; returns its index.
    pub fn add_input(&mut self, name: impl Into<String>, meta: TensorMeta) -> u32 {
        self.inputs.push(InputDef {
            name: name.into(),
            meta,
            specialized: None,
            values: None,
        });
        (self.inputs.len() - 1) as u32
    }

    /// Declares a global; returns its index.
    pub fn add_global(&mut self, def: GlobalDef) -> u32 {
        self.globals.push(def);
        (self.globals.len() - 1) as u32
    }

    /// Appends a node with the given output types, without any check, and
    /// returns its output values.
    pub fn push(
        &mut self,
        op: Op,
        inputs: Vec<ValueId>,
        output_metas: Vec<TensorMeta>,
    ) -> Vec<ValueId> {
        let outputs: Vec<ValueId> = output_metas
            .into_iter()
            .map(|m| {
                self.values.push(m);
                ValueId((self.values.len() - 1) as u32)
            })
            .collect();
        self.nodes.push(Node {
            op,
            inputs,
            outputs: outputs.clone(),
        });
        outputs
    }

    /// Reads function input `i`.
    pub fn input(&mut self, i: u32) -> Result<ValueId, BuildError> {
        let def = self.inputs.get(i as usize).ok_or(BuildError::Index {
            what: "input",
            index: i,
            count: self.inputs.len(),
        })?;
        let meta = def.meta.clone();
        Ok(self.push(Op::Input(i), vec![], vec![meta])[0])
    }

    /// Reads global `g`.
    pub fn global(&mut self, g: u32) -> Result<ValueId, BuildError> {
        let def = self.globals.get(g as usize).ok_or(BuildError::Index {
            what: "global",
            index: g,
            count: self.globals.len(),
        })?;
        let meta = def.meta.clone();
        Ok(self.push(Op::Global(g), vec![], vec![meta])[0])
    }

    /// A compile-time constant.
    pub fn constant(&mut self, value: Tensor) -> ValueId {
        let meta = value.meta().clone();
        self.push(Op::Constant(value), vec![], vec![meta])[0]
    }

    /// Reshapes `v` to `shape` (same element count).
    pub fn reshape(&mut self, v: ValueId, shape: &[usize]) -> Result<ValueId, BuildError> {
        let from = self.try_meta(v).ok_or(BuildError::UnknownValue(v))?.clone();
        let to = TensorMeta::new(from.dtype, shape);
        match (from.numel(), to.numel()) {
            (Some(a), Some(b)) if a == b => Ok(self.push(Op::Reshape, vec![v], vec![to])[0]),
            (a, b) => Err(BuildError::Reshape {
                from,
                to: shape.to_vec(),
                from_numel: a.unwrap_or(usize::MAX),
                to_numel: b.unwrap_or(usize::MAX),
            }),
        }
    }

    /// Adds a kernel node; output types come from the kernel's checker.
    pub fn kernel(
        &mut self,
        registry: &Registry,
        kernel: &str,
        attrs: Attrs,
        inputs: &[ValueId],
    ) -> Result<Vec<ValueId>, BuildError> {
        let bound = registry.bind(kernel, &attrs)?;
        let metas = self.check_kernel(kernel, &*bound, inputs)?;
        Ok(self.push(Op::kernel(kernel, attrs), inputs.to_vec(), metas))
    }

    fn check_kernel(
        &self,
        kernel: &str,
        bound: &dyn Bound,
        inputs: &[ValueId],
    ) -> Result<Vec<TensorMeta>, BuildError> {
        let metas = inputs
            .iter()
            .map(|&v| self.try_meta(v).ok_or(BuildError::UnknownValue(v)))
            .collect::<Result<Vec<_>, _>>()?;
        let outs = bound.check(&metas)?;
        let arity = bound.arity().outputs;
        if outs.len() != arity {
            return Err(BuildError::Arity {
                kernel: kernel.to_string(),
                got: outs.len(),
                arity,
            });
        }
        Ok(outs)
    }

    /// Joins `inputs` along `axis` with `concat@1`. More inputs than a launch
    /// carries (five, plus the output) become a chain of concats: the first
    /// five, then the running result with up to four more, and so on.
    /// Concatenation along one axis is associative, so the result is the same.
    pub fn concat(
        &mut self,
        registry: &Registry,
        inputs: &[ValueId],
        axis: i64,
    ) -> Result<ValueId, BuildError> {
        const MAX_INPUTS: usize = MAX_OPERANDS - 1;
        let node = |n: usize| {
            attrs([
                ("axis", AttrValue::Int(axis)),
                ("n", AttrValue::Int(n as i64)),
            ])
        };
        let (first, mut rest) = inputs.split_at(inputs.len().min(MAX_INPUTS));
        if first.is_empty() {
            return Err(BuildError::Empty { op: "concat@1" });
        }
        let mut acc = self.kernel(registry, "concat@1", node(first.len()), first)?[0];
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_INPUTS - 1));
            let mut ins = Vec::with_capacity(chunk.len() + 1);
            ins.push(acc);
            ins.extend_from_slice(chunk);
            acc = self.kernel(registry, "concat@1", node(ins.len()), &ins)?[0];
            rest = tail;
        }
        Ok(acc)
    }

    /// Adds an `If` node (see [`Op::If`]): `pred` selects the branch, `args`
    /// are passed to it. Checks the predicate's type and that both branches
    /// take the arguments' types and return the same types.
    pub fn if_(
        &mut self,
        pred: ValueId,
        args: &[ValueId],
        then: Graph,
        otherwise: Graph,
    ) -> Result<Vec<ValueId>, BuildError> {
        let err = |message: String| BuildError::Region { op: "if", message };
        let p = self.try_meta(pred).ok_or(BuildError::UnknownValue(pred))?;
        check_condition(p).map_err(|m| err(format!("the predicate {m}")))?;
        let arg_metas = self.metas(args)?;
        for (name, g) in [("then", &then), ("otherwise", &otherwise)] {
            check_region(g, &arg_metas).map_err(|m| err(format!("branch `{name}` {m}")))?;
        }
        let (a, b) = (then.output_metas(), otherwise.output_metas());
        if a != b {
            return Err(err(format!(
                "the branches return different types: `then` {} and `otherwise` {}; make both return the same dtypes and shapes",
                fmt_metas(&a),
                fmt_metas(&b)
            )));
        }
        let mut inputs = vec![pred];
        inputs.extend_from_slice(args);
        Ok(self.push(
            Op::If {
                then: Box::new(then),
                otherwise: Box::new(otherwise),
            },
            inputs,
            a,
        ))
    }

    /// Adds a `While` node (see [`Op::While`]) carrying `carried` and reading
    /// `invariants`. Checks that `cond` returns one condition and `body`
    /// returns the carried types.
    pub fn while_(
        &mut self,
        carried: &[ValueId],
        invariants: &[ValueId],
        cond: Graph,
        body: Graph,
    ) -> Result<Vec<ValueId>, BuildError> {
        let err = |message: String| BuildError::Region {
            op: "while",
            message,
        };
        let carried_metas = self.metas(carried)?;
        let mut arg_metas = carried_metas.clone();
        arg_metas.extend(self.metas(invariants)?);
        for (name, g) in [("cond", &cond), ("body", &body)] {
            check_region(g, &arg_metas).map_err(|m| err(format!("region `{name}` {m}")))?;
        }
        match cond.output_metas().as_slice() {
            [m] => check_condition(m).map_err(|m| err(format!("the condition {m}")))?,
            other => {
                return Err(err(format!(
                    "`cond` must return one condition, it returns {}",
                    fmt_metas(other)
                )))
            }
        }
        let next = body.output_metas();
        if next != carried_metas {
            return Err(err(format!(
                "`body` must return the carried types {}, it returns {}",
                fmt_metas(&carried_metas),
                fmt_metas(&next)
            )));
        }
        let mut inputs = carried.to_vec();
        inputs.extend_from_slice(invariants);
        Ok(self.push(
            Op::While {
                cond: Box::new(cond),
                body: Box::new(body),
            },
            inputs,
            carried_metas,
        ))
    }

    fn metas(&self, vs: &[ValueId]) -> Result<Vec<TensorMeta>, BuildError> {
        vs.iter()
            .map(|&v| self.try_meta(v).cloned().ok_or(BuildError::UnknownValue(v)))
            .collect()
    }

    /// The types of the graph's outputs (out-of-range ones are skipped; the
    /// verifier reports them).
    pub fn output_metas(&self) -> Vec<TensorMeta> {
        self.outputs
            .iter()
            .filter_map(|o| self.try_meta(o.value).cloned())
            .collect()
    }

    /// How deeply regions nest inside this graph (0 for none).
    pub fn region_depth(&self) -> usize {
        self.nodes
            .iter()
            .flat_map(|n| n.op.regions())
            .map(|r| 1 + r.region_depth())
            .max()
            .unwrap_or(0)
    }

    /// Declares an output.
    pub fn add_output(&mut self, name: impl Into<String>, value: ValueId) {
        self.outputs.push(OutputDef {
            name: name.into(),
            value,
        });
    }

    /// For each value, the index of the node that defines it (the last one,
    /// if a broken graph defines it twice).
    pub fn producers(&self) -> Vec<Option<usize>> {
        let mut p = vec![None; self.values.len()];
        for (n, node) in self.nodes.iter().enumerate() {
            for o in &node.outputs {
                if let Some(slot) = p.get_mut(o.index()) {
                    *slot = Some(n);
                }
            }
        }
        p
    }

    /// For each value, the number of node inputs and graph outputs that read it.
    pub fn use_counts(&self) -> Vec<usize> {
        let mut c = vec![0usize; self.values.len()];
        let reads = self
            .nodes
            .iter()
            .flat_map(|n| n.inputs.iter())
            .chain(self.outputs.iter().map(|o| &o.value));
        for v in reads {
            if let Some(slot) = c.get_mut(v.index()) {
                *slot += 1;
            }
        }
        c
    }

    /// Which nodes some output or guard of the graph depends on (the others
    /// are dead: kernels have no side effects; guards are always live). Out-of-range value ids count as dead.
    pub fn live_nodes(&self) -> Vec<bool> {
        let mut needed = vec![false; self.values.len()];
        for o in &self.outputs {
            if let Some(s) = needed.get_mut(o.value.index()) {
                *s = true;
            }
        }
        let mut live = vec![false; self.nodes.len()];
        for (n, node) in self.nodes.iter().enumerate().rev() {
            if matches!(node.op, Op::Guard { .. })
                || node
                    .outputs
                    .iter()
                    .any(|v| needed.get(v.index()).copied().unwrap_or(false))
            {
                live[n] = true;
                for v in &node.inputs {
                    if let Some(s) = needed.get_mut(v.index()) {
                        *s = true;
                    }
                }
            }
        }
        live
    }

    /// Keeps the nodes for which `keep` is true, in order, and renumbers the
    /// values densely in definition order. Values read by dropped nodes'
    /// consumers must not be dropped (the caller decides liveness).
    pub fn retain_nodes(&mut self, keep: &[bool]) {
        let mut remap: Vec<Option<ValueId>> = vec![None; self.values.len()];
        let mut values = Vec::new();
        let mut nodes = Vec::new();
        for (node, &k) in std::mem::take(&mut self.nodes).into_iter().zip(keep) {
            if !k {
                continue;
            }
            let outputs = node
                .outputs
                .iter()
                .map(|o| {
                    values.push(self.values[o.index()].clone());
                    let id = ValueId((values.len() - 1) as u32);
                    remap[o.index()] = Some(id);
                    id
                })
                .collect();
            let inputs = node
                .inputs
                .iter()
                .map(|v| remap.get(v.index()).copied().flatten().unwrap_or(*v))
                .collect();
            nodes.push(Node {
                op: node.op,
                inputs,
                outputs,
            });
        }
        for o in &mut self.outputs {
            o.value = remap
                .get(o.value.index())
                .copied()
                .flatten()
                .unwrap_or(o.value);
        }
        self.nodes = nodes;
        self.values = values;
    }

    /// Follows reshapes back to the value that owns the storage.
    pub fn storage_root(&self, v: ValueId, producers: &[Option<usize>]) -> ValueId {
        let mut v = v;
        // Bounded by the node count: a verified graph has no cycles.
        for _ in 0..=self.nodes.len() {
            match producers
                .get(v.index())
                .copied()
                .flatten()
                .map(|n| &self.nodes[n])
            {
                Some(Node {
                    op: Op::Reshape,
                    inputs,
                    ..
                }) if inputs.len() == 1 => v = inputs[0],
                _ => break,
            }
        }
        v
    }
}

/// Formats an attribute value compactly for the text form and messages.
pub(crate) fn fmt_attr(v: &AttrValue) -> String {
    match v {
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Float(x) => format!("{x:?}"),
        AttrValue::Ints(xs) => format!("{xs:?}"),
        AttrValue::Floats(xs) => format!("{xs:?}"),
        AttrValue::Str(s) => s.clone(),
    }
}

/// The text form, one node per line:
///
/// ```text
/// input x: f32[2, 3]
/// global w: f32[3, 4] (embedded)
///   v0 = input 0 : f32[2, 3]
///   v1 = global 0 : f32[3, 4]
///   v2 = linear@1 {bias=0, trans_w=0} v0, v1 : f32[2, 4]
/// output y = v2
/// ```
impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for i in &self.inputs {
            write!(f, "input {}: {}", i.name, i.meta)?;
            if let Some(s) = i.specialized {
                write!(f, " = {s}")?;
            }
            if let Some(v) = &i.values {
                let items: Vec<String> = v.iter().map(ToString::to_string).collect();
                write!(f, " = [{}]", items.join(", "))?;
            }
            writeln!(f)?;
        }
        for g in &self.globals {
            let src = match &g.source {
                GlobalSource::Embedded(_) => "embedded".to_string(),
                GlobalSource::Bound { digest: None } => "bound".to_string(),
                GlobalSource::Bound { digest: Some(d) } => {
                    format!("bound, sha256 {}", ampoule_host::guard::prefix(d, 16))
                }
            };
            writeln!(f, "global {}: {} ({src})", g.name, g.meta)?;
        }
        for node in &self.nodes {
            let outs: Vec<String> = node.outputs.iter().map(ToString::to_string).collect();
            write!(f, "  {} = ", outs.join(", "))?;
            match &node.op {
                Op::Input(i) => write!(f, "input {i}")?,
                Op::Global(g) => write!(f, "global {g}")?,
                Op::Constant(t) => write!(f, "constant {}", t.meta())?,
                Op::Reshape => write!(f, "reshape")?,
                Op::Kernel { kernel, attrs } => {
                    write!(f, "{kernel}")?;
                    if !attrs.is_empty() {
                        let a: Vec<String> = attrs
                            .iter()
                            .map(|(k, v)| format!("{k}={}", fmt_attr(v)))
                            .collect();
                        write!(f, " {{{}}}", a.join(", "))?;
                    }
                }
                op @ (Op::If { .. } | Op::While { .. }) => write!(f, "{}", op.name())?,
                Op::Guard { index } => write!(f, "guard {index}")?,
            }
            let ins: Vec<String> = node.inputs.iter().map(ToString::to_string).collect();
            if !ins.is_empty() {
                write!(f, " {}", ins.join(", "))?;
            }
            let types: Vec<String> = node
                .outputs
                .iter()
                .map(|o| {
                    self.try_meta(*o)
                        .map_or_else(|| "?".to_string(), ToString::to_string)
                })
                .collect();
            writeln!(f, " : {}", types.join(", "))?;
            let names: &[&str] = match node.op {
                Op::If { .. } => &["then", "otherwise"],
                _ => &["cond", "body"],
            };
            for (name, region) in names.iter().zip(node.op.regions()) {
                writeln!(f, "    {name} {{")?;
                for line in region.to_string().lines() {
                    writeln!(f, "      {line}")?;
                }
                writeln!(f, "    }}")?;
            }
        }
        for o in &self.outputs {
            writeln!(f, "output {} = {}", o.name, o.value)?;
        }
        Ok(())
    }
}

/// Attributes from `(name, value)` pairs.
pub fn attrs<const N: usize>(pairs: [(&str, AttrValue); N]) -> Attrs {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Whether op `a` of graph `ga` and op `b` of graph `gb` do the same thing
/// up to sizes: the same input or global (by name), the same constant
/// content, the same kernel and attributes, the same guard, regions of the
/// same canonical form (`crate::hash`). Used to check that two traces of one
/// body agree (graph-break paths, dynamic-dim probes).
pub fn same_op(ga: &Graph, a: &Op, gb: &Graph, b: &Op) -> bool {
    match (a, b) {
        (Op::Input(x), Op::Input(y)) => x == y,
        (Op::Global(x), Op::Global(y)) => {
            let (x, y) = (ga.globals.get(*x as usize), gb.globals.get(*y as usize));
            matches!((x, y), (Some(x), Some(y)) if x.name == y.name)
        }
        (Op::Constant(x), Op::Constant(y)) => x.meta() == y.meta() && x.bytes() == y.bytes(),
        (Op::Reshape, Op::Reshape) => true,
        (
            Op::Kernel {
                kernel: k1,
                attrs: a1,
            },
            Op::Kernel {
                kernel: k2,
                attrs: a2,
            },
        ) => k1 == k2 && a1 == a2,
        (Op::If { .. }, Op::If { .. }) | (Op::While { .. }, Op::While { .. }) => {
            a.regions().into_iter().zip(b.regions()).all(|(x, y)| {
                crate::hash::canonical_form(x) == crate::hash::canonical_form(y)
                    && x.values == y.values
            })
        }
        (Op::Guard { index: x }, Op::Guard { index: y }) => x == y,
        _ => false,
    }
}

/// A condition is a one-element bool or integer tensor (the wrapper reads it
/// with `read-i64`).
pub fn check_condition(meta: &TensorMeta) -> Result<(), String> {
    if meta.numel() != Some(1) || !(meta.dtype.is_int() || meta.dtype == DType::Bool) {
        return Err(format!(
            "must be a one-element bool or integer tensor, it is {meta}"
        ));
    }
    Ok(())
}

/// A region takes exactly `args` and holds no globals or constants.
fn check_region(g: &Graph, args: &[TensorMeta]) -> Result<(), String> {
    let inputs: Vec<TensorMeta> = g.inputs.iter().map(|i| i.meta.clone()).collect();
    if inputs != args {
        return Err(format!(
            "takes {}, but is passed {}",
            fmt_metas(&inputs),
            fmt_metas(args)
        ));
    }
    if !g.globals.is_empty()
        || g.nodes
            .iter()
            .any(|n| matches!(n.op, Op::Global(_) | Op::Constant(_)))
    {
        return Err("declares globals or constants; pass them in as arguments".into());
    }
    if g.region_depth() + 1 > MAX_REGION_DEPTH {
        return Err(format!("nests regions deeper than {MAX_REGION_DEPTH}"));
    }
    Ok(())
}

fn fmt_metas(ms: &[TensorMeta]) -> String {
    let parts: Vec<String> = ms.iter().map(ToString::to_string).collect();
    format!("({})", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ampoule_kernels::DType;

    #[test]
    fn builders_infer_types_and_print() {
        let reg = Registry::standard();
        let mut g = Graph::new();
        let i = g.add_input("x", TensorMeta::new(DType::F32, [2, 3]));
        let x = g.input(i).unwrap();
        let y = g
            .kernel(
                &reg,
                "unary@1",
                attrs([("op", AttrValue::Str("relu".into()))]),
                &[x],
            )
            .unwrap()[0];
        let z = g.reshape(y, &[6]).unwrap();
        g.add_output("z", z);
        assert_eq!(g.meta(z), &TensorMeta::new(DType::F32, [6]));
        let text = g.to_string();
        assert_eq!(
            text,
            "input x: f32[2, 3]\n  v0 = input 0 : f32[2, 3]\n  v1 = unary@1 {op=relu} v0 : f32[2, 3]\n  v2 = reshape v1 : f32[6]\noutput z = v2\n"
        );
    }

    #[test]
    fn builders_refuse_bad_nodes_and_leave_the_graph_alone() {
        let reg = Registry::standard();
        let mut g = Graph::new();
        let i = g.add_input("x", TensorMeta::new(DType::F32, [2, 3]));
        let x = g.input(i).unwrap();
        assert!(matches!(
            g.reshape(x, &[5]),
            Err(BuildError::Reshape {
                from_numel: 6,
                to_numel: 5,
                ..
            })
        ));
        assert!(matches!(
            g.kernel(&reg, "matmul@1", Attrs::new(), &[x, x]),
            Err(BuildError::Kernel(_))
        ));
        assert!(matches!(
            g.kernel(&reg, "nope@1", Attrs::new(), &[x]),
            Err(BuildError::Kernel(KernelError::Unknown(..)))
        ));
        assert!(matches!(
            g.input(3),
            Err(BuildError::Index {
                what: "input",
                index: 3,
                count: 1
            })
        ));
        assert_eq!(g.nodes.len(), 1);
    }

    #[test]
    fn retain_renumbers_densely() {
        let mut g = Graph::new();
        let m = TensorMeta::new(DType::F32, [1]);
        let a = g.push(
            Op::Constant(Tensor::zeros(DType::F32, &[1]).unwrap()),
            vec![],
            vec![m.clone()],
        )[0];
        let b = g.push(
            Op::Constant(Tensor::zeros(DType::F32, &[1]).unwrap()),
            vec![],
            vec![m.clone()],
        )[0];
        let c = g.push(Op::Reshape, vec![b], vec![m])[0];
        g.add_output("c", c);
        let _ = a;
        g.retain_nodes(&[false, true, true]);
        assert_eq!(g.values.len(), 2);
        assert_eq!(g.nodes[1].inputs, vec![ValueId(0)]);
        assert_eq!(g.outputs[0].value, ValueId(1));
    }
}
