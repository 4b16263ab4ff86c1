//! The IR verifier, run after tracing and after every pass.
//!
//! [`verify`] walks the whole graph and returns *every* problem it finds, each
//! with its [`Location`], instead of stopping at the first. It enforces:
//!
//! 1. **Values in range.** Every value a node reads or defines, and every
//!    graph output, is an index into `values`.
//! 2. **SSA.** Every value is defined by exactly one node output: none twice,
//!    none never.
//! 3. **Definition before use.** Every node input is defined by an earlier
//!    node (so node order is a topological order and there are no cycles).
//! 4. **Op shapes.** `Input`, `Global` and `Constant` have no inputs and one
//!    output; `Reshape` has one input and one output.
//! 5. **Boundary indices.** `Input(i)` and `Global(g)` name a declared input
//!    or global, and their output type is that input's or global's meta; an
//!    embedded global's tensor has its declared meta; a constant's output type
//!    is its tensor's meta.
//! 6. **Reshapes** keep the dtype and the element count.
//! 7. **Kernels.** The kernel resolves in the registry and accepts the
//!    attributes; the node's input and output counts equal the kernel's arity
//!    and fit a launch (at most `MAX_OPERANDS`); the output types are exactly
//!    what the kernel's checker derives from the input types.
//! 8. **Addressable types.** Every value has rank at most `MAX_RANK` and a byte
//!    size that fits the host.
//! 9. **Names.** Input names and output names are non-empty and unique within
//!    their list.
//! 10. **Specialized scalars.** An input specialized on a value is rank 0, and
//!     the value's kind (int or float) matches the input's dtype.
//! 12. **Guards.** A `Guard` reads one condition (a one-element bool or
//!     integer tensor) and defines nothing.
//! 11. **Regions.** An `If` reads a one-element bool or integer predicate
//!     and its branches take the other inputs' types and return the outputs'
//!     types; a `While`'s first inputs are the carried values (the outputs'
//!     types), `cond` returns one condition and `body` the carried types,
//!     both taking every input. Regions are valid graphs themselves, hold no
//!     globals or constants, and nest at most `MAX_REGION_DEPTH` deep (the
//!     depth is checked before the recursion).

use std::collections::HashSet;
use std::fmt;

use ampoule_host::ScalarValue;
use ampoule_kernels::{Registry, TensorMeta, MAX_OPERANDS, MAX_RANK};

use crate::ir::{check_condition, GlobalSource, Graph, Op, ValueId, MAX_REGION_DEPTH};

/// Where a problem is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// The graph as a whole.
    Graph,
    Input(usize),
    Global(usize),
    /// A node, by its index in `nodes`.
    Node(usize),
    /// A graph output, by position.
    Output(usize),
    /// A value, by id (for problems not tied to one node).
    Value(ValueId),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Graph => write!(f, "graph"),
            Location::Input(i) => write!(f, "input {i}"),
            Location::Global(g) => write!(f, "global {g}"),
            Location::Node(n) => write!(f, "node {n}"),
            Location::Output(o) => write!(f, "output {o}"),
            Location::Value(v) => write!(f, "value {v}"),
        }
    }
}

/// One problem, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyError {
    pub at: Location,
    pub message: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Every problem [`verify`] found, in graph order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the IR is invalid ({} problem{}):\n  {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
pub struct VerifyErrors(pub Vec<VerifyError>);

struct Collector(Vec<VerifyError>);

impl Collector {
    fn add(&mut self, at: Location, message: impl Into<String>) {
        self.0.push(VerifyError {
            at,
            message: message.into(),
        });
    }
}

/// Checks every invariant in the module doc; returns all problems found.
pub fn verify(graph: &Graph, registry: &Registry) -> Result<(), VerifyErrors> {
    let mut c = Collector(Vec::new());
    verify_names(graph, &mut c);
    verify_boundary(graph, &mut c);
    for (v, meta) in graph.values.iter().enumerate() {
        if let Some(msg) = unaddressable(meta) {
            c.add(Location::Value(ValueId(v as u32)), msg);
        }
    }

    let nvalues = graph.values.len();
    let mut defined_at: Vec<Option<usize>> = vec![None; nvalues];
    for (n, node) in graph.nodes.iter().enumerate() {
        let at = || Location::Node(n);
        for (k, v) in node.inputs.iter().enumerate() {
            match defined_at.get(v.index()) {
                None => c.add(at(), format!("input {k} reads {v}, which is not a value of this graph ({nvalues} values)")),
                Some(None) => c.add(at(), format!("input {k} reads {v} before any node defines it")),
                Some(Some(_)) => {}
            }
        }
        for v in &node.outputs {
            match defined_at.get_mut(v.index()) {
                None => c.add(
                    at(),
                    format!("defines {v}, which is not a value of this graph ({nvalues} values)"),
                ),
                Some(Some(first)) => c.add(
                    at(),
                    format!("defines {v}, which node {first} already defines"),
                ),
                Some(slot @ None) => *slot = Some(n),
            }
        }
        verify_node(graph, registry, n, &mut c);
    }
    for (v, d) in defined_at.iter().enumerate() {
        if d.is_none() {
            c.add(
                Location::Value(ValueId(v as u32)),
                "no node defines this value",
            );
        }
    }
    for (o, out) in graph.outputs.iter().enumerate() {
        if out.value.index() >= nvalues {
            c.add(
                Location::Output(o),
                format!(
                    "`{}` is {}, which is not a value of this graph",
                    out.name, out.value
                ),
            );
        }
    }
    if c.0.is_empty() {
        Ok(())
    } else {
        Err(VerifyErrors(c.0))
    }
}

/// A region of node `n`: valid on its own, taking `args` and returning
/// `results`, without globals or constants, not nested too deep.
fn verify_region(
    registry: &Registry,
    name: &str,
    region: &Graph,
    args: &[TensorMeta],
    results: &[TensorMeta],
    n: usize,
    c: &mut Collector,
) {
    let at = || Location::Node(n);
    let depth = region.region_depth();
    if depth + 1 > MAX_REGION_DEPTH {
        c.add(
            at(),
            format!("region `{name}` nests regions deeper than {MAX_REGION_DEPTH}"),
        );
        return;
    }
    let inputs: Vec<&TensorMeta> = region.inputs.iter().map(|i| &i.meta).collect();
    if inputs != args.iter().collect::<Vec<_>>() {
        c.add(
            at(),
            format!("region `{name}` takes other types than the node passes it"),
        );
    }
    if region.output_metas() != results || region.outputs.len() != results.len() {
        c.add(
            at(),
            format!("region `{name}` returns other types than the node defines"),
        );
    }
    if !region.globals.is_empty()
        || region
            .nodes
            .iter()
            .any(|x| matches!(x.op, Op::Global(_) | Op::Constant(_)))
    {
        c.add(
            at(),
            format!("region `{name}` declares globals or constants (they belong to the outermost graph)"),
        );
    }
    if let Err(errors) = verify(region, registry) {
        for e in errors.0 {
            c.add(at(), format!("region `{name}`: {e}"));
        }
    }
}

fn unaddressable(meta: &TensorMeta) -> Option<String> {
    if meta.shape.len() > MAX_RANK {
        return Some(format!(
            "type {meta} has rank {} above the maximum of {MAX_RANK}",
            meta.shape.len()
        ));
    }
    match meta.byte_len() {
        Some(n) if n <= isize::MAX as usize => None,
        _ => Some(format!(
            "type {meta} has more bytes than a host can address"
        )),
    }
}

fn verify_names(graph: &Graph, c: &mut Collector) {
    let mut seen = HashSet::new();
    for (i, input) in graph.inputs.iter().enumerate() {
        if input.name.is_empty() || !seen.insert(input.name.as_str()) {
            c.add(
                Location::Input(i),
                format!(
                    "input name `{}` is empty or used twice; give each input its own name",
                    input.name
                ),
            );
        }
    }
    let mut seen = HashSet::new();
    for (o, out) in graph.outputs.iter().enumerate() {
        if out.name.is_empty() || !seen.insert(out.name.as_str()) {
            c.add(
                Location::Output(o),
                format!(
                    "output name `{}` is empty or used twice; give each output its own name",
                    out.name
                ),
            );
        }
    }
}

fn verify_boundary(graph: &Graph, c: &mut Collector) {
    for (i, input) in graph.inputs.iter().enumerate() {
        if let Some(msg) = unaddressable(&input.meta) {
            c.add(Location::Input(i), msg);
        }
        if let Some(value) = input.specialized {
            if !input.meta.shape.is_empty() {
                c.add(Location::Input(i), format!("`{}` is specialized on {value} but has shape {:?}; only rank-0 inputs are scalars", input.name, input.meta.shape));
            }
            let float = input.meta.dtype.is_float();
            if float != matches!(value, ScalarValue::Float(_)) {
                c.add(
                    Location::Input(i),
                    format!(
                        "`{}` has dtype {} but is specialized on {value}",
                        input.name, input.meta.dtype
                    ),
                );
            }
        }
    }
    for (g, global) in graph.globals.iter().enumerate() {
        if let Some(msg) = unaddressable(&global.meta) {
            c.add(Location::Global(g), msg);
        }
        if let GlobalSource::Embedded(t) = &global.source {
            if t.meta() != &global.meta {
                c.add(
                    Location::Global(g),
                    format!(
                        "`{}` is declared {} but its tensor is {}",
                        global.name,
                        global.meta,
                        t.meta()
                    ),
                );
            }
        }
    }
}

fn verify_node(graph: &Graph, registry: &Registry, n: usize, c: &mut Collector) {
    let node = &graph.nodes[n];
    let at = || Location::Node(n);
    let out_meta = |k: usize| node.outputs.get(k).and_then(|v| graph.try_meta(*v));
    let in_meta = |k: usize| node.inputs.get(k).and_then(|v| graph.try_meta(*v));
    let mut counts = |ins: usize, outs: usize| {
        if node.inputs.len() != ins || node.outputs.len() != outs {
            c.add(
                at(),
                format!(
                    "`{}` takes {ins} input(s) and defines {outs} output(s), this node has {} and {}",
                    node.op.name(),
                    node.inputs.len(),
                    node.outputs.len()
                ),
            );
            false
        } else {
            true
        }
    };
    match &node.op {
        Op::Input(i) => {
            if !counts(0, 1) {
                return;
            }
            match graph.inputs.get(*i as usize) {
                None => c.add(
                    at(),
                    format!(
                        "reads input {i}, but the graph declares {} inputs",
                        graph.inputs.len()
                    ),
                ),
                Some(def) => {
                    if let Some(m) = out_meta(0) {
                        if *m != def.meta {
                            c.add(
                                at(),
                                format!(
                                    "input {i} (`{}`) is {}, but the node's output is typed {m}",
                                    def.name, def.meta
                                ),
                            );
                        }
                    }
                }
            }
        }
        Op::Global(g) => {
            if !counts(0, 1) {
                return;
            }
            match graph.globals.get(*g as usize) {
                None => c.add(
                    at(),
                    format!(
                        "reads global {g}, but the graph declares {} globals",
                        graph.globals.len()
                    ),
                ),
                Some(def) => {
                    if let Some(m) = out_meta(0) {
                        if *m != def.meta {
                            c.add(
                                at(),
                                format!(
                                    "global {g} (`{}`) is {}, but the node's output is typed {m}",
                                    def.name, def.meta
                                ),
                            );
                        }
                    }
                }
            }
        }
        Op::Constant(t) => {
            if !counts(0, 1) {
                return;
            }
            if let Some(m) = out_meta(0) {
                if m != t.meta() {
                    c.add(
                        at(),
                        format!(
                            "constant tensor is {}, but the node's output is typed {m}",
                            t.meta()
                        ),
                    );
                }
            }
        }
        Op::Reshape => {
            if !counts(1, 1) {
                return;
            }
            if let (Some(a), Some(b)) = (in_meta(0), out_meta(0)) {
                if a.dtype != b.dtype {
                    c.add(
                        at(),
                        format!("reshape changes the dtype from {} to {}", a.dtype, b.dtype),
                    );
                }
                if a.numel() != b.numel() {
                    c.add(
                        at(),
                        format!("reshape from {a} to {b} changes the element count"),
                    );
                }
            }
        }
        Op::Guard { .. } => {
            if counts(1, 0) {
                if let Some(Err(m)) = in_meta(0).map(check_condition) {
                    c.add(at(), format!("the guarded condition {m}"));
                }
            }
        }
        op @ (Op::If { .. } | Op::While { .. }) => {
            let ins: Option<Vec<TensorMeta>> = (0..node.inputs.len())
                .map(|k| in_meta(k).cloned())
                .collect();
            let outs: Option<Vec<TensorMeta>> = (0..node.outputs.len())
                .map(|k| out_meta(k).cloned())
                .collect();
            let (Some(ins), Some(outs)) = (ins, outs) else {
                return;
            };
            match op {
                Op::If { then, otherwise } => {
                    let Some((pred, args)) = ins.split_first() else {
                        c.add(at(), "`if` needs a predicate input");
                        return;
                    };
                    if let Err(m) = check_condition(pred) {
                        c.add(at(), format!("the predicate {m}"));
                    }
                    for (name, region) in [("then", then), ("otherwise", otherwise)] {
                        verify_region(registry, name, region, args, &outs, n, c);
                    }
                }
                Op::While { cond, body } => {
                    if ins.get(..outs.len()) != Some(&outs[..]) {
                        c.add(
                            at(),
                            "the first inputs (the carried values) must have the outputs' types",
                        );
                    }
                    let bools: Vec<TensorMeta> = cond.output_metas();
                    match bools.as_slice() {
                        [m] => {
                            if let Err(e) = check_condition(m) {
                                c.add(at(), format!("the condition {e}"));
                            }
                        }
                        _ => c.add(at(), "`cond` must return exactly one condition"),
                    }
                    verify_region(registry, "cond", cond, &ins, &bools, n, c);
                    verify_region(registry, "body", body, &ins, &outs, n, c);
                }
                _ => {}
            }
        }
        Op::Kernel { kernel, attrs } => {
            let bound = match registry.bind(kernel, attrs) {
                Ok(b) => b,
                Err(e) => {
                    c.add(at(), e.to_string());
                    return;
                }
            };
            let arity = bound.arity();
            if !counts(arity.inputs, arity.outputs) {
                return;
            }
            if arity.inputs + arity.outputs > MAX_OPERANDS {
                c.add(
                    at(),
                    format!(
                        "`{kernel}` has {} operands, more than a launch carries ({MAX_OPERANDS})",
                        arity.inputs + arity.outputs
                    ),
                );
            }
            let ins: Option<Vec<&TensorMeta>> = (0..node.inputs.len()).map(in_meta).collect();
            let Some(ins) = ins else { return };
            match bound.check(&ins) {
                Err(e) => c.add(at(), e.to_string()),
                Ok(expected) => {
                    for (k, want) in expected.iter().enumerate() {
                        match out_meta(k) {
                            Some(got) if got != want => c.add(
                                at(),
                                format!(
                                    "output {k} ({}) is typed {got}, but `{kernel}` derives {want}",
                                    node.outputs[k]
                                ),
                            ),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Negative tests: one small graph per invariant, each with the exact
    //! problem it must produce (cranelift's annotated filetests, in Rust).

    use super::*;
    use crate::ir::{attrs, GlobalDef, Node};
    use ampoule_kernels::{AttrValue, Attrs, DType, Tensor};

    fn f32m(shape: &[usize]) -> TensorMeta {
        TensorMeta::new(DType::F32, shape)
    }

    fn relu() -> Op {
        Op::kernel("unary@1", attrs([("op", AttrValue::Str("relu".into()))]))
    }

    /// `x: f32[2,3]`, `v0 = input 0`.
    fn base() -> Graph {
        let mut g = Graph::new();
        g.add_input("x", f32m(&[2, 3]));
        g.input(0).unwrap();
        g
    }

    fn problems(g: &Graph) -> Vec<String> {
        match verify(g, &Registry::standard()) {
            Ok(()) => vec![],
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_valid_graph_passes() {
        let mut g = base();
        let y = g
            .kernel(
                &Registry::standard(),
                "unary@1",
                attrs([("op", AttrValue::Str("relu".into()))]),
                &[ValueId(0)],
            )
            .unwrap();
        g.add_output("y", y[0]);
        assert_eq!(problems(&g), Vec::<String>::new());
    }

    #[test]
    fn values_out_of_range() {
        let mut g = base();
        g.nodes.push(Node {
            op: relu(),
            inputs: vec![ValueId(9)],
            outputs: vec![ValueId(7)],
        });
        g.add_output("y", ValueId(8));
        assert_eq!(
            problems(&g),
            [
                "node 1: input 0 reads v9, which is not a value of this graph (1 values)",
                "node 1: defines v7, which is not a value of this graph (1 values)",
                "output 0: `y` is v8, which is not a value of this graph",
            ]
        );
    }

    #[test]
    fn ssa_each_value_defined_once() {
        let mut g = base();
        g.nodes.push(Node {
            op: relu(),
            inputs: vec![ValueId(0)],
            outputs: vec![ValueId(0)],
        });
        g.values.push(f32m(&[2, 3]));
        assert_eq!(
            problems(&g),
            [
                "node 1: defines v0, which node 0 already defines",
                "value v1: no node defines this value"
            ]
        );
    }

    #[test]
    fn use_before_definition() {
        let mut g = Graph::new();
        g.add_input("x", f32m(&[2, 3]));
        g.values = vec![f32m(&[2, 3]), f32m(&[2, 3])];
        g.nodes.push(Node {
            op: relu(),
            inputs: vec![ValueId(1)],
            outputs: vec![ValueId(0)],
        });
        g.nodes.push(Node {
            op: Op::Input(0),
            inputs: vec![],
            outputs: vec![ValueId(1)],
        });
        assert_eq!(
            problems(&g),
            ["node 0: input 0 reads v1 before any node defines it"]
        );
    }

    #[test]
    fn output_types_must_match_the_kernel_checker() {
        let mut g = base();
        g.push(relu(), vec![ValueId(0)], vec![f32m(&[3, 2])]);
        g.push(
            Op::kernel("matmul@1", Attrs::new()),
            vec![ValueId(0), ValueId(0)],
            vec![f32m(&[2, 3])],
        );
        let p = problems(&g);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(
            p[0],
            "node 1: output 0 (v1) is typed f32[3, 2], but `unary@1` derives f32[2, 3]"
        );
        assert!(p[1].starts_with("node 2: kernel `matmul@1"), "{}", p[1]);
    }

    #[test]
    fn kernel_arity_and_attributes() {
        let mut g = base();
        g.push(relu(), vec![ValueId(0), ValueId(0)], vec![f32m(&[2, 3])]);
        g.push(
            Op::kernel(
                "unary@1",
                attrs([("op", AttrValue::Str("frobnicate".into()))]),
            ),
            vec![ValueId(0)],
            vec![f32m(&[2, 3])],
        );
        g.push(
            Op::kernel("nope@1", Attrs::new()),
            vec![ValueId(0)],
            vec![f32m(&[2, 3])],
        );
        let p = problems(&g);
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!(
            p[0],
            "node 1: `unary@1` takes 1 input(s) and defines 1 output(s), this node has 2 and 1"
        );
        assert!(
            p[1].starts_with("node 2: kernel `unary@1`: invalid attributes"),
            "{}",
            p[1]
        );
        assert!(
            p[2].starts_with("node 3: unknown kernel `nope@1`"),
            "{}",
            p[2]
        );
    }

    #[test]
    fn boundary_indices_and_types() {
        let mut g = base();
        g.push(Op::Input(4), vec![], vec![f32m(&[1])]);
        g.push(Op::Global(0), vec![], vec![f32m(&[1])]);
        g.push(Op::Input(0), vec![], vec![f32m(&[6])]);
        g.push(
            Op::Constant(Tensor::zeros(DType::I64, &[2]).unwrap()),
            vec![],
            vec![f32m(&[2])],
        );
        g.add_global(GlobalDef {
            name: "w".into(),
            meta: f32m(&[3]),
            source: GlobalSource::Embedded(Tensor::zeros(DType::F32, &[4]).unwrap()),
        });
        assert_eq!(
            problems(&g),
            [
                "global 0: `w` is declared f32[3] but its tensor is f32[4]",
                "node 1: reads input 4, but the graph declares 1 inputs",
                "node 2: global 0 (`w`) is f32[3], but the node's output is typed f32[1]",
                "node 3: input 0 (`x`) is f32[2, 3], but the node's output is typed f32[6]",
                "node 4: constant tensor is i64[2], but the node's output is typed f32[2]",
            ]
        );
    }

    #[test]
    fn reshape_keeps_element_count_and_dtype() {
        let mut g = base();
        g.push(Op::Reshape, vec![ValueId(0)], vec![f32m(&[5])]);
        g.push(
            Op::Reshape,
            vec![ValueId(0)],
            vec![TensorMeta::new(DType::I32, [6])],
        );
        g.push(Op::Reshape, vec![], vec![f32m(&[6])]);
        assert_eq!(
            problems(&g),
            [
                "node 1: reshape from f32[2, 3] to f32[5] changes the element count",
                "node 2: reshape changes the dtype from f32 to i32",
                "node 3: `reshape` takes 1 input(s) and defines 1 output(s), this node has 0 and 1",
            ]
        );
    }

    #[test]
    fn names_and_specialized_scalars() {
        let mut g = base();
        g.add_input("x", f32m(&[]));
        g.inputs[1].specialized = Some(ScalarValue::Int(3));
        g.add_input("k", TensorMeta::new(DType::I64, [2]));
        g.inputs[2].specialized = Some(ScalarValue::Int(3));
        g.add_output("", ValueId(0));
        assert_eq!(
            problems(&g),
            [
                "input 1: input name `x` is empty or used twice; give each input its own name",
                "output 0: output name `` is empty or used twice; give each output its own name",
                "input 1: `x` has dtype f32 but is specialized on 3",
                "input 2: `k` is specialized on 3 but has shape [2]; only rank-0 inputs are scalars",
            ]
        );
    }

    #[test]
    fn rank_limit() {
        let mut g = Graph::new();
        g.add_input("x", f32m(&[1; 9]));
        g.input(0).unwrap();
        let p = problems(&g);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p.iter()
                .all(|m| m.contains("rank 9 above the maximum of 8")),
            "{p:?}"
        );
    }

    #[test]
    fn regions_take_and_return_the_node_types_and_hold_no_constants() {
        let reg = Registry::standard();
        // A branch returning its f32[2, 3] argument.
        let mut ok = Graph::new();
        ok.add_input("r0", f32m(&[2, 3]));
        let a = ok.input(0).unwrap();
        ok.add_output("y0", a);
        // A branch returning f32[6] instead, and reading a constant.
        let mut bad = Graph::new();
        bad.add_input("r0", f32m(&[2, 3]));
        let b = bad.input(0).unwrap();
        let _c = bad.constant(Tensor::zeros(DType::F32, &[1]).unwrap());
        let r = bad.reshape(b, &[6]).unwrap();
        bad.add_output("y0", r);
        let mut g = base();
        let p = g.constant(Tensor::scalar(ampoule_kernels::Bool8(1)));
        g.push(
            Op::If {
                then: Box::new(ok.clone()),
                otherwise: Box::new(bad),
            },
            vec![p, ValueId(0)],
            vec![f32m(&[2, 3])],
        );
        // A predicate of two elements.
        let p2 = g.constant(Tensor::zeros(DType::I64, &[2]).unwrap());
        g.push(
            Op::If {
                then: Box::new(ok.clone()),
                otherwise: Box::new(ok),
            },
            vec![p2, ValueId(0)],
            vec![f32m(&[2, 3])],
        );
        let p = problems(&g);
        assert!(
            p.iter()
                .any(|m| m.contains("region `otherwise` returns other types")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.contains("region `otherwise` declares globals or constants")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.contains("the predicate must be a one-element bool or integer tensor")),
            "{p:?}"
        );
        verify(&base(), &reg).unwrap();
    }

    #[test]
    fn all_problems_are_collected() {
        let mut g = base();
        g.push(Op::Reshape, vec![ValueId(0)], vec![f32m(&[5])]);
        g.push(Op::Input(7), vec![], vec![f32m(&[1])]);
        g.add_output("y", ValueId(42));
        let err = verify(&g, &Registry::standard()).unwrap_err();
        assert_eq!(err.0.len(), 3);
        assert!(
            err.to_string()
                .starts_with("the IR is invalid (3 problems):\n  node 1: reshape"),
            "{err}"
        );
    }
}
