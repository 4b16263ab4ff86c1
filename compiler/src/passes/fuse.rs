//! Elementwise fusion: chains of `binary@1` and `unary@1` launches become
//! one `fused@1` launch, which keeps the intermediates in small tiles
//! instead of writing and reading back a full tensor per op. Models are full
//! of such chains: activations exported as formulas (HardSwish as
//! `x * clip(x + 3, 0, 6) / 6`), normalizations spelled out op by op,
//! residual adds after a scale.
//!
//! A node joins the group that produced one of its inputs when:
//! - both are fusable: a float `binary@1`, or a `unary@1` the `fused@1`
//!   kernel accepts (the registry decides: one bind per op name);
//! - the input is that group's result, read by this node only (not twice,
//!   not by another node, not a graph output), and has the node's dtype and
//!   shape (a smaller intermediate would be recomputed for every element of
//!   the larger output);
//! - the merged group keeps within the kernel's limits (5 inputs, 32
//!   instructions).
//!
//! Each group of two or more nodes becomes one `fused@1` node in its last
//! node's place; the other members go. Nodes of the weight-only prefix
//! ([`super::hoist`]) and regions are left alone. The kernel computes each op
//! as its own kernel does, so fusing changes no value.

use std::collections::HashMap;

use ampoule_kernels::{AttrValue, DType, Registry};

use super::hoist::init_prefix;
use crate::ir::{attrs, Graph, Op, ValueId};

/// The most inputs and instructions of one `fused@1` launch.
const MAX_INPUTS: usize = 5;
const MAX_INSTRUCTIONS: usize = 32;

/// The `op` name of node `n`, if it is fusable.
fn fusable(
    graph: &Graph,
    n: usize,
    registry: &Registry,
    accepted: &mut HashMap<String, bool>,
) -> Option<String> {
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
    if !matches!(graph.meta(out).dtype, DType::F32 | DType::F64)
        || node.inputs.len() != arity
        || attrs.len() != 1
    {
        return None;
    }
    let Some(AttrValue::Str(op)) = attrs.get("op") else {
        return None;
    };
    let ok = *accepted.entry(op.clone()).or_insert_with(|| {
        let token = if arity == 2 {
            format!("{op}:0:0")
        } else {
            format!("{op}:0")
        };
        registry.bind("fused@1", &fused_attrs(1, &token)).is_ok()
    });
    ok.then(|| op.clone())
}

fn fused_attrs(inputs: usize, program: &str) -> ampoule_kernels::Attrs {
    attrs([
        ("inputs", AttrValue::Int(inputs as i64)),
        ("program", AttrValue::Str(program.to_string())),
    ])
}

/// The inputs of a group's nodes that no member produces, in first-read
/// order, without repeats.
fn external_inputs(graph: &Graph, nodes: &[usize]) -> Vec<ValueId> {
    let produced: Vec<ValueId> = nodes
        .iter()
        .flat_map(|&n| graph.nodes[n].outputs.iter().copied())
        .collect();
    let mut ext = Vec::new();
    for &n in nodes {
        for v in &graph.nodes[n].inputs {
            if !produced.contains(v) && !ext.contains(v) {
                ext.push(*v);
            }
        }
    }
    ext
}

/// Fuses elementwise chains (see the module doc); returns how many launches
/// were removed.
pub fn fuse_elementwise(graph: &mut Graph, registry: &Registry) -> usize {
    let prefix = init_prefix(graph);
    let uses = graph.use_counts();
    let producers = graph.producers();
    let mut accepted = HashMap::new();
    let mut ops: Vec<Option<String>> = vec![None; graph.nodes.len()];
    // Groups under construction: their nodes in graph order, the last one
    // the group's result; `None` once merged into a later group.
    let mut groups: Vec<Option<Vec<usize>>> = Vec::new();
    let mut group_of: Vec<Option<usize>> = vec![None; graph.nodes.len()];
    for n in prefix..graph.nodes.len() {
        let Some(op) = fusable(graph, n, registry, &mut accepted) else {
            continue;
        };
        ops[n] = Some(op);
        let out = graph.nodes[n].outputs[0];
        let mut nodes = vec![n];
        for &v in &graph.nodes[n].inputs {
            let Some(p) = producers.get(v.index()).copied().flatten() else {
                continue;
            };
            let Some(g) = group_of[p] else { continue };
            let Some(group) = &groups[g] else { continue };
            let joins = group.last() == Some(&p)
                && uses[v.index()] == 1
                && graph.meta(v) == graph.meta(out);
            if !joins {
                continue;
            }
            let mut merged: Vec<usize> = nodes.iter().chain(group).copied().collect();
            merged.sort_unstable();
            if merged.len() <= MAX_INSTRUCTIONS
                && external_inputs(graph, &merged).len() <= MAX_INPUTS
            {
                nodes = merged;
                groups[g] = None;
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
        let ext = external_inputs(graph, &group);
        let mut reg: HashMap<ValueId, usize> =
            ext.iter().enumerate().map(|(i, &v)| (v, i)).collect();
        let mut program = Vec::with_capacity(group.len());
        for (i, &m) in group.iter().enumerate() {
            let Some(op) = &ops[m] else { continue };
            let node = &graph.nodes[m];
            let operands: Vec<String> = node
                .inputs
                .iter()
                .map(|v| reg.get(v).map_or_else(String::new, usize::to_string))
                .collect();
            program.push(format!("{op}:{}", operands.join(":")));
            reg.insert(node.outputs[0], ext.len() + i);
        }
        let fused = fused_attrs(ext.len(), &program.join(" "));
        // The kernel has the last word on what it runs (and on the output
        // type, which must be the chain's).
        let Some(&root) = group.last() else {
            continue;
        };
        let out_meta = graph.meta(graph.nodes[root].outputs[0]).clone();
        let in_metas: Vec<_> = ext.iter().map(|&v| graph.meta(v).clone()).collect();
        let agrees = registry.bind("fused@1", &fused).is_ok_and(|k| {
            let refs: Vec<_> = in_metas.iter().collect();
            k.check(&refs).is_ok_and(|o| o == [out_meta.clone()])
        });
        if !agrees {
            continue;
        }
        graph.nodes[root].op = Op::Kernel {
            kernel: "fused@1".into(),
            attrs: fused,
        };
        graph.nodes[root].inputs = ext;
        for &m in &group[..group.len() - 1] {
            keep[m] = false;
            removed += 1;
        }
    }
    if removed > 0 {
        graph.retain_nodes(&keep);
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

    /// `y = (x + b) * sigmoid(x + b)` then `z = y - x`, with `x + b` read
    /// twice: `add` stays alone (two readers), `sigmoid`, `mul` and `sub`
    /// fuse; the values do not change.
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
        assert_eq!(fuse_elementwise(&mut g, &reg), 2);
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
            [
                "binary@1 None".to_string(),
                r#"fused@1 Some(Str("sigmoid:0 mul:0:2 sub:3:1"))"#.to_string()
            ]
        );
        let xs =
            Tensor::from_vec(&[2, 8], (0..16).map(|v| v as f32 * 0.3 - 2.0).collect()).unwrap();
        let bs = Tensor::from_vec(&[8], (0..8).map(|v| v as f32 * -0.1).collect()).unwrap();
        let none = BTreeMap::new();
        let want = evaluate(&before, &reg, &[xs.clone(), bs.clone()], &none).unwrap();
        let got = evaluate(&g, &reg, &[xs, bs], &none).unwrap();
        assert_eq!(
            want[0].to_vec::<f32>().unwrap(),
            got[0].to_vec::<f32>().unwrap()
        );
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
