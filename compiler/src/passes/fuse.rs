//! Elementwise fusion: chains of `binary@1` and `unary@1` launches become
//! one `fused@1` launch, which keeps the intermediates in small tiles
//! instead of writing and reading back a full tensor per op; a chain that
//! starts on a `conv@1`'s result becomes that convolution's epilogue (its
//! `post` program), run on the output while it is still in cache. Models are
//! full of such chains: activations exported as formulas (HardSwish as
//! `x * clip(x + 3, 0, 6) / 6`), BatchNorm's per-channel scale and shift
//! after each convolution, normalizations spelled out op by op, residual
//! adds after a scale.
//!
//! A node joins the group that produced one of its inputs when:
//! - it is fusable: a float `binary@1`, or a `unary@1` the `fused@1`
//!   kernel accepts, with its parameters (the registry decides); a float
//!   `conv@1` only heads a group, it never joins one;
//! - the input is that group's result, has the node's dtype and shape (a
//!   smaller intermediate would be recomputed for every element of the
//!   larger output), and every read of it is by the node or by the group
//!   the node has already joined (not by another node, not as a graph
//!   output): results read once join first, so `x * f(x)` fuses whole;
//! - the merged group keeps within the kernel's limits (32 instructions; 5
//!   tensor inputs for `fused@1`, or the operands a `conv@1` launch has
//!   left). One-element embedded float constants are not inputs: the program
//!   carries them as immediates (`const:v`).
//!
//! Each group of two or more nodes becomes one launch in its last node's
//! place; the other members go (and constants no one reads any more). Nodes
//! of the weight-only prefix ([`super::hoist`]) and regions are left alone.
//! The kernels compute each op as its own kernel does, so fusing changes no
//! value.

use std::collections::HashMap;

use ampoule_kernels::{AttrValue, DType, Registry, MAX_OPERANDS};

use super::hoist::init_prefix;
use crate::ir::{attrs, GlobalSource, Graph, Op, ValueId};

/// The most inputs and instructions of one `fused@1` launch.
const MAX_INPUTS: usize = 5;
const MAX_INSTRUCTIONS: usize = 32;

/// The `op` name of node `n` and the parameters its program token spells
/// after the operands (`:0.2` for a `leaky_relu` with alpha 0.2), if it is
/// fusable.
fn fusable(
    graph: &Graph,
    n: usize,
    registry: &Registry,
    accepted: &mut HashMap<String, bool>,
) -> Option<(String, String)> {
    let node = &graph.nodes[n];
    let Op::Kernel { kernel, attrs } = &node.op else {
        return None;
    };
    let arity = match kernel.as_str() {
        "binary@1" => 2,
        "unary@1" => 1,
        _ => return None,
    };
    let [out] = node.outputs[..] else {
        return None;
    };
    if !matches!(graph.meta(out).dtype, DType::F32 | DType::F64) || node.inputs.len() != arity {
        return None;
    }
    let Some(AttrValue::Str(op)) = attrs.get("op") else {
        return None;
    };
    // The unary ops with parameters, with unary@1's defaults.
    let float = |name: &str, default: f64| match attrs.get(name) {
        None => Some(default),
        Some(AttrValue::Float(v)) => Some(*v),
        Some(AttrValue::Int(v)) => Some(*v as f64),
        Some(_) => None,
    };
    let (params, known): (String, &[&str]) = match (arity, op.as_str()) {
        (1, "leaky_relu") => (
            format!(":{}", float("alpha", ampoule_kernels::LEAKY_RELU_ALPHA)?),
            &["op", "alpha"],
        ),
        (1, "hard_sigmoid") => (
            format!(
                ":{}:{}",
                float("alpha", ampoule_kernels::HARD_SIGMOID_ALPHA)?,
                float("beta", ampoule_kernels::HARD_SIGMOID_BETA)?
            ),
            &["op", "alpha", "beta"],
        ),
        _ => (String::new(), &["op"]),
    };
    if attrs.keys().any(|k| !known.contains(&k.as_str())) {
        return None;
    }
    let token = if arity == 2 {
        format!("{op}:0:0")
    } else {
        format!("{op}:0{params}")
    };
    let ok = *accepted
        .entry(token.clone())
        .or_insert_with(|| registry.bind("fused@1", &fused_attrs(1, &token)).is_ok());
    ok.then(|| (op.clone(), params))
}

fn fused_attrs(inputs: usize, program: &str) -> ampoule_kernels::Attrs {
    attrs([
        ("inputs", AttrValue::Int(inputs as i64)),
        ("program", AttrValue::Str(program.to_string())),
    ])
}

/// A scalar the program can carry as an immediate (`const:v`) instead of
/// an input: a one-element embedded constant of the chain's dtype.
fn immediate(graph: &Graph, producers: &[Option<usize>], v: ValueId, dtype: DType) -> Option<f64> {
    let p = producers.get(v.index()).copied().flatten()?;
    let t = match &graph.nodes[p].op {
        Op::Constant(t) => t,
        Op::Global(g) => match &graph.globals.get(*g as usize)?.source {
            GlobalSource::Embedded(t) => t,
            GlobalSource::Bound { .. } => return None,
        },
        _ => return None,
    };
    if t.dtype() != dtype || t.shape().iter().product::<usize>() != 1 {
        return None;
    }
    match dtype {
        DType::F32 => t.to_vec::<f32>().ok()?.first().map(|&x| f64::from(x)),
        DType::F64 => t.to_vec::<f64>().ok()?.first().copied(),
        _ => None,
    }
}

/// Whether node `n` can head a group as a `conv@1` whose epilogue (`post`)
/// runs the group's elementwise ops.
fn conv_head(graph: &Graph, n: usize) -> bool {
    let node = &graph.nodes[n];
    matches!(&node.op, Op::Kernel { kernel, attrs } if kernel == "conv@1" && !attrs.contains_key("post"))
        && node.outputs.len() == 1
        && matches!(graph.meta(node.outputs[0]).dtype, DType::F32 | DType::F64)
}

/// Whether a group's first node is a `conv@1` head.
fn is_head(graph: &Graph, nodes: &[usize]) -> bool {
    nodes.first().is_some_and(|&c| conv_head(graph, c))
}

/// The operands of a group: the inputs of its elementwise nodes that no
/// member produces, in first-read order, without repeats, split into
/// tensor inputs and immediates. A `conv@1` head's own inputs are its
/// own, not the program's.
struct Operands {
    inputs: Vec<ValueId>,
    immediates: Vec<(ValueId, f64)>,
}

fn operands(graph: &Graph, producers: &[Option<usize>], nodes: &[usize], head: bool) -> Operands {
    let produced: Vec<ValueId> = nodes
        .iter()
        .flat_map(|&n| graph.nodes[n].outputs.iter().copied())
        .collect();
    let dtype = nodes
        .last()
        .map_or(DType::F32, |&n| graph.meta(graph.nodes[n].outputs[0]).dtype);
    let mut ops = Operands {
        inputs: Vec::new(),
        immediates: Vec::new(),
    };
    for &n in &nodes[usize::from(head)..] {
        for &v in &graph.nodes[n].inputs {
            if produced.contains(&v)
                || ops.inputs.contains(&v)
                || ops.immediates.iter().any(|(u, _)| *u == v)
            {
                continue;
            }
            match immediate(graph, producers, v, dtype) {
                Some(x) => ops.immediates.push((v, x)),
                None => ops.inputs.push(v),
            }
        }
    }
    ops
}

/// The most tensor inputs a group's program may read: `fused@1`'s limit, or
/// what a `conv@1` launch has left after x, w, its bias and its output.
fn max_inputs(graph: &Graph, nodes: &[usize], head: bool) -> usize {
    match nodes.first() {
        Some(&c) if head => MAX_OPERANDS - 1 - graph.nodes[c].inputs.len(),
        _ => MAX_INPUTS,
    }
}

/// Fuses elementwise chains (see the module doc); returns how many launches
/// were removed.
pub fn fuse_elementwise(graph: &mut Graph, registry: &Registry) -> usize {
    let prefix = init_prefix(graph);
    let uses = graph.use_counts();
    let producers = graph.producers();
    let mut accepted = HashMap::new();
    let mut ops: Vec<Option<(String, String)>> = vec![None; graph.nodes.len()];
    // Groups under construction: their nodes in graph order, the last one
    // the group's result; `None` once merged into a later group.
    let mut groups: Vec<Option<Vec<usize>>> = Vec::new();
    let mut group_of: Vec<Option<usize>> = vec![None; graph.nodes.len()];
    for n in prefix..graph.nodes.len() {
        if conv_head(graph, n) {
            group_of[n] = Some(groups.len());
            groups.push(Some(vec![n]));
            continue;
        }
        let Some(op) = fusable(graph, n, registry, &mut accepted) else {
            continue;
        };
        ops[n] = Some(op);
        let out = graph.nodes[n].outputs[0];
        let mut nodes = vec![n];
        // Results read once join first; then results read several times,
        // when every read is by the group built so far (`x * relu6(x + 3)`
        // reads x twice).
        for shared in [false, true] {
            for &v in &graph.nodes[n].inputs {
                let Some(p) = producers.get(v.index()).copied().flatten() else {
                    continue;
                };
                let Some(g) = group_of[p] else { continue };
                let Some(group) = &groups[g] else { continue };
                if nodes.contains(&p)
                    || group.last() != Some(&p)
                    || graph.meta(v) != graph.meta(out)
                {
                    continue;
                }
                let reads = |members: &[usize]| {
                    members
                        .iter()
                        .flat_map(|&m| graph.nodes[m].inputs.iter())
                        .filter(|&&u| u == v)
                        .count()
                };
                let joins = if shared {
                    uses[v.index()] > 1 && reads(&nodes) == uses[v.index()]
                } else {
                    uses[v.index()] == 1
                };
                if !joins {
                    continue;
                }
                let mut merged: Vec<usize> = nodes.iter().chain(group).copied().collect();
                merged.sort_unstable();
                let head = is_head(graph, &merged);
                let o = operands(graph, &producers, &merged, head);
                if merged.len() + o.immediates.len() <= MAX_INSTRUCTIONS
                    && o.inputs.len() <= max_inputs(graph, &merged, head)
                {
                    nodes = merged;
                    groups[g] = None;
                }
            }
        }
        for &m in &nodes {
            group_of[m] = Some(groups.len());
        }
        groups.push(Some(nodes));
    }

    let mut keep = vec![true; graph.nodes.len()];
    let mut removed = 0;
    for group in groups.into_iter().flatten() {
        if group.len() < 2 {
            continue;
        }
        let head = is_head(graph, &group);
        let o = operands(graph, &producers, &group, head);
        // Registers: the conv's result (with a head), the inputs, the
        // immediates, then one per member.
        let first = usize::from(head);
        let mut reg: HashMap<ValueId, usize> = o
            .inputs
            .iter()
            .enumerate()
            .map(|(i, &v)| (v, first + i))
            .collect();
        if head {
            reg.insert(graph.nodes[group[0]].outputs[0], 0);
        }
        let mut program = Vec::with_capacity(group.len() + o.immediates.len());
        let mut consts: Vec<(u64, usize)> = Vec::new();
        for &(v, x) in &o.immediates {
            let r = match consts.iter().find(|(bits, _)| *bits == x.to_bits()) {
                Some(&(_, r)) => r,
                None => {
                    let r = first + o.inputs.len() + program.len();
                    consts.push((x.to_bits(), r));
                    program.push(format!("const:{x}"));
                    r
                }
            };
            reg.insert(v, r);
        }
        for &m in &group[first..] {
            let Some((op, params)) = &ops[m] else {
                continue;
            };
            let node = &graph.nodes[m];
            let operands: Vec<String> = node
                .inputs
                .iter()
                .map(|v| reg.get(v).map_or_else(String::new, usize::to_string))
                .collect();
            reg.insert(node.outputs[0], first + o.inputs.len() + program.len());
            program.push(format!("{op}:{}{params}", operands.join(":")));
        }
        let program = program.join(" ");
        let (kernel, attrs, inputs) = if head {
            let conv = &graph.nodes[group[0]];
            let Op::Kernel { attrs, .. } = &conv.op else {
                continue;
            };
            let mut attrs = attrs.clone();
            attrs.insert("post".into(), AttrValue::Str(program));
            attrs.insert("post_inputs".into(), AttrValue::Int(o.inputs.len() as i64));
            let inputs: Vec<ValueId> = conv.inputs.iter().chain(&o.inputs).copied().collect();
            ("conv@1", attrs, inputs)
        } else {
            ("fused@1", fused_attrs(o.inputs.len(), &program), o.inputs)
        };
        // The kernel has the last word on what it runs (and on the output
        // type, which must be the chain's).
        let Some(&root) = group.last() else {
            continue;
        };
        let out_meta = graph.meta(graph.nodes[root].outputs[0]).clone();
        let in_metas: Vec<_> = inputs.iter().map(|&v| graph.meta(v).clone()).collect();
        let agrees = registry.bind(kernel, &attrs).is_ok_and(|k| {
            let refs: Vec<_> = in_metas.iter().collect();
            k.check(&refs).is_ok_and(|o| o == [out_meta.clone()])
        });
        if !agrees {
            continue;
        }
        graph.nodes[root].op = Op::Kernel {
            kernel: kernel.into(),
            attrs,
        };
        graph.nodes[root].inputs = inputs;
        for &m in &group[..group.len() - 1] {
            keep[m] = false;
            removed += 1;
        }
    }
    if removed > 0 {
        graph.retain_nodes(&keep);
        // Scalars that became immediates may have no reader left.
        super::dce::eliminate_dead_code(graph);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::interp::evaluate;
    use ampoule_kernels::{Tensor, TensorMeta};

    fn op(o: &str) -> ampoule_kernels::Attrs {
        attrs([("op", AttrValue::Str(o.into()))])
    }

    /// The fused graph's first output has the same bits as the original's.
    fn assert_same_values(before: &Graph, after: &Graph, xs: &[Tensor]) {
        let reg = Registry::standard();
        let none = BTreeMap::new();
        let want = evaluate(before, &reg, xs, &none).unwrap();
        let got = evaluate(after, &reg, xs, &none).unwrap();
        assert_eq!(
            want[0].to_vec::<f32>().unwrap(),
            got[0].to_vec::<f32>().unwrap()
        );
    }

    /// `y = (x + b) * sigmoid(x + b)` then `z = y - x`, with `x + b` read
    /// twice, both times inside the chain: all four ops fuse; the values do
    /// not change.
    #[test]
    fn a_chain_fuses_and_computes_the_same() {
        let reg = Registry::standard();
        let mut g = Graph::new();
        g.add_input("x", TensorMeta::new(DType::F32, [2, 8]));
        g.add_input("b", TensorMeta::new(DType::F32, [8]));
        let x = g.input(0).unwrap();
        let b = g.input(1).unwrap();
        let s = g.kernel(&reg, "binary@1", op("add"), &[x, b]).unwrap()[0];
        let sg = g.kernel(&reg, "unary@1", op("sigmoid"), &[s]).unwrap()[0];
        let y = g.kernel(&reg, "binary@1", op("mul"), &[s, sg]).unwrap()[0];
        let z = g.kernel(&reg, "binary@1", op("sub"), &[y, x]).unwrap()[0];
        g.add_output("z", z);
        let before = g.clone();
        assert_eq!(fuse_elementwise(&mut g, &reg), 3);
        crate::verify::verify(&g, &reg).unwrap();
        let kernels: Vec<String> = g
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Kernel { kernel, attrs } => {
                    Some(format!("{kernel} {:?}", attrs.get("program")))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            kernels,
            [r#"fused@1 Some(Str("add:0:1 sigmoid:2 mul:2:3 sub:4:0"))"#.to_string()]
        );
        let xs =
            Tensor::from_vec(&[2, 8], (0..16).map(|v| v as f32 * 0.3 - 2.0).collect()).unwrap();
        let bs = Tensor::from_vec(&[8], (0..8).map(|v| v as f32 * -0.1).collect()).unwrap();
        assert_same_values(&before, &g, &[xs, bs]);
    }

    /// A convolution, a per-channel affine and HardSwish spelled out with
    /// scalar constants (`a * min(max(a + 3, 0), 6) / 6`, reading `a`
    /// twice) become one `conv@1` whose epilogue carries the constants as
    /// immediates; the values do not change.
    #[test]
    fn a_convolution_takes_its_epilogue() {
        let reg = Registry::standard();
        let mut g = Graph::new();
        g.add_input("x", TensorMeta::new(DType::F32, [1, 2, 5, 5]));
        g.add_input("w", TensorMeta::new(DType::F32, [3, 2, 3, 3]));
        g.add_input("s", TensorMeta::new(DType::F32, [3, 1, 1]));
        g.add_input("t", TensorMeta::new(DType::F32, [3, 1, 1]));
        let [x, w, sc, sh] = [0, 1, 2, 3].map(|i| g.input(i).unwrap());
        let scalar =
            |g: &mut Graph, v: f32| g.constant(Tensor::from_vec::<f32>(&[], vec![v]).unwrap());
        let (three, zero, six) = (
            scalar(&mut g, 3.0),
            scalar(&mut g, 0.0),
            scalar(&mut g, 6.0),
        );
        let conv_attrs = attrs([("pads", AttrValue::Ints(vec![1, 1, 1, 1]))]);
        let y = g.kernel(&reg, "conv@1", conv_attrs, &[x, w]).unwrap()[0];
        let m = g.kernel(&reg, "binary@1", op("mul"), &[y, sc]).unwrap()[0];
        let a = g.kernel(&reg, "binary@1", op("add"), &[m, sh]).unwrap()[0];
        let p = g.kernel(&reg, "binary@1", op("add"), &[a, three]).unwrap()[0];
        let lo = g.kernel(&reg, "binary@1", op("max"), &[p, zero]).unwrap()[0];
        let hi = g.kernel(&reg, "binary@1", op("min"), &[lo, six]).unwrap()[0];
        let q = g.kernel(&reg, "binary@1", op("mul"), &[a, hi]).unwrap()[0];
        let h = g.kernel(&reg, "binary@1", op("div"), &[q, six]).unwrap()[0];
        g.add_output("h", h);
        let before = g.clone();
        assert_eq!(fuse_elementwise(&mut g, &reg), 7);
        crate::verify::verify(&g, &reg).unwrap();
        let kernels: Vec<(String, Option<AttrValue>)> = g
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Kernel { kernel, attrs } => Some((kernel.clone(), attrs.get("post").cloned())),
                _ => None,
            })
            .collect();
        assert_eq!(
            kernels,
            [(
                "conv@1".to_string(),
                Some(AttrValue::Str(
                    "const:3 const:0 const:6 mul:0:1 add:6:2 add:7:3 max:8:4 min:9:5 mul:7:10 div:11:5"
                        .into()
                ))
            )]
        );
        let input = |shape: &[usize], k: f32| {
            let n = shape.iter().product::<usize>();
            Tensor::from_vec(shape, (0..n).map(|v| (v as f32 * k).sin() * 2.0).collect()).unwrap()
        };
        let xs = [
            input(&[1, 2, 5, 5], 0.37),
            input(&[3, 2, 3, 3], 0.71),
            input(&[3, 1, 1], 1.3),
            input(&[3, 1, 1], 2.9),
        ];
        assert_same_values(&before, &g, &xs);
    }

    /// A `leaky_relu` with its alpha joins a convolution's epilogue with
    /// its parameter spelled out; the values do not change.
    #[test]
    fn unary_parameters_fuse() {
        let reg = Registry::standard();
        let mut g = Graph::new();
        g.add_input("x", TensorMeta::new(DType::F32, [1, 1, 6, 4]));
        g.add_input("w", TensorMeta::new(DType::F32, [2, 1, 3, 1]));
        let [x, w] = [0, 1].map(|i| g.input(i).unwrap());
        let y = g.kernel(&reg, "conv@1", attrs([]), &[x, w]).unwrap()[0];
        let leaky = attrs([
            ("op", AttrValue::Str("leaky_relu".into())),
            ("alpha", AttrValue::Float(0.2)),
        ]);
        let l = g.kernel(&reg, "unary@1", leaky, &[y]).unwrap()[0];
        g.add_output("l", l);
        let before = g.clone();
        assert_eq!(fuse_elementwise(&mut g, &reg), 1);
        let post: Vec<_> = g
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Kernel { attrs, .. } => attrs.get("post").cloned(),
                _ => None,
            })
            .collect();
        assert_eq!(post, [AttrValue::Str("leaky_relu:0:0.2".into())]);
        let xs = [
            Tensor::from_vec(
                &[1, 1, 6, 4],
                (0..24).map(|v| v as f32 * 0.4 - 5.0).collect(),
            )
            .unwrap(),
            Tensor::from_vec(&[2, 1, 3, 1], vec![0.5f32, -1.0, 0.25, 1.5, 0.5, -0.75]).unwrap(),
        ];
        assert_same_values(&before, &g, &xs);
    }

    /// A broadcast intermediate (`[8]` into `[2, 8]`) and integer math stay
    /// unfused.
    #[test]
    fn smaller_intermediates_and_integers_stay() {
        let reg = Registry::standard();
        let mut g = Graph::new();
        g.add_input("x", TensorMeta::new(DType::F32, [2, 8]));
        g.add_input("b", TensorMeta::new(DType::F32, [8]));
        g.add_input("i", TensorMeta::new(DType::I32, [4]));
        let x = g.input(0).unwrap();
        let b = g.input(1).unwrap();
        let i = g.input(2).unwrap();
        let e = g.kernel(&reg, "unary@1", op("exp"), &[b]).unwrap()[0];
        let y = g.kernel(&reg, "binary@1", op("mul"), &[x, e]).unwrap()[0];
        let j = g.kernel(&reg, "binary@1", op("add"), &[i, i]).unwrap()[0];
        let k = g.kernel(&reg, "binary@1", op("mul"), &[j, i]).unwrap()[0];
        g.add_output("y", y);
        g.add_output("k", k);
        assert_eq!(fuse_elementwise(&mut g, &reg), 0);
    }
}
