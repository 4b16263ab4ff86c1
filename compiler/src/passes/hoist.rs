//! Weight-only hoisting: work that depends on no input runs once per
//! instance, in the wrapper's `init`, instead of on every call.
//!
//! A node is *weight-only* when it is a global, a constant, or a kernel or
//! reshape all of whose inputs are weight-only, and none of its outputs is
//! the storage of a graph output (the caller takes an output's storage, so
//! it must be written by every run). Typical weight-only work: the
//! dequantization of int8 weights (`cast` then `mul` by a scale), a
//! transposed or reshaped weight, a bias folded from several weights.
//! Constant folding does not do this: it would store the (often much
//! larger) result in the package.
//!
//! [`hoist_weight_only`] moves every weight-only node to the front of the
//! graph, keeping the relative order of the rest, which keeps the order
//! topological (a weight-only node reads only weight-only nodes).
//! [`init_prefix`] is the number of leading weight-only nodes: memory
//! planning keeps the buffers of prefix values that later nodes read
//! (`plan::Liveness`), and lowering emits the prefix's launches into `init`.
//! Only the outermost graph is hoisted; regions never are.

use crate::ir::{Graph, Op};

/// For each node: whether it is weight-only (see the module doc).
pub(super) fn weight_only(graph: &Graph) -> Vec<bool> {
    let producers = graph.producers();
    let mut is_output_storage = vec![false; graph.values.len()];
    for o in &graph.outputs {
        let r = graph.storage_root(o.value, &producers);
        is_output_storage[r.index()] = true;
    }
    let mut early_value = vec![false; graph.values.len()];
    let mut early = Vec::with_capacity(graph.nodes.len());
    for node in &graph.nodes {
        let inputs_early = node.inputs.iter().all(|v| early_value[v.index()]);
        let e = match node.op {
            Op::Global(_) | Op::Constant(_) => true,
            Op::Reshape => inputs_early,
            Op::Kernel { .. } => {
                inputs_early && node.outputs.iter().all(|o| !is_output_storage[o.index()])
            }
            Op::Input(_) | Op::Guard { .. } | Op::If { .. } | Op::While { .. } => false,
        };
        if e {
            for o in &node.outputs {
                early_value[o.index()] = true;
            }
        }
        early.push(e);
    }
    early
}

/// Moves weight-only nodes to the front (stably); returns how many kernel
/// launches are now in the prefix [`init_prefix`] counts.
pub fn hoist_weight_only(graph: &mut Graph) -> usize {
    let early = weight_only(graph);
    let nodes = std::mem::take(&mut graph.nodes);
    let (mut front, back): (Vec<_>, Vec<_>) = nodes.into_iter().zip(early).partition(|(_, e)| *e);
    let launches = front
        .iter()
        .filter(|(n, _)| matches!(n.op, Op::Kernel { .. }))
        .count();
    front.extend(back);
    graph.nodes = front.into_iter().map(|(n, _)| n).collect();
    launches
}

/// The number of leading weight-only nodes of `graph`.
pub fn init_prefix(graph: &Graph) -> usize {
    weight_only(graph).iter().take_while(|&&e| e).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{attrs, GlobalDef, GlobalSource};
    use ampoule_kernels::{AttrValue, DType, Registry, Tensor, TensorMeta};

    /// `y = x * cast(wq)` and `z = wq + wq` as an output: the cast is
    /// weight-only, the output's add is not.
    #[test]
    fn weight_only_work_moves_to_the_front_and_outputs_stay() {
        let reg = Registry::standard();
        let mut g = Graph::new();
        g.add_input("x", TensorMeta::new(DType::F32, [4]));
        let x = g.input(0).unwrap();
        let w = g.add_global(GlobalDef {
            name: "wq".into(),
            meta: TensorMeta::new(DType::I32, [4]),
            source: GlobalSource::Embedded(Tensor::zeros(DType::I32, &[4]).unwrap()),
        });
        let wq = g.global(w).unwrap();
        let wf = g
            .kernel(
                &reg,
                "cast@1",
                attrs([("to", AttrValue::Str("f32".into()))]),
                &[wq],
            )
            .unwrap()[0];
        let y = g
            .kernel(
                &reg,
                "binary@1",
                attrs([("op", AttrValue::Str("mul".into()))]),
                &[x, wf],
            )
            .unwrap()[0];
        let z = g
            .kernel(
                &reg,
                "binary@1",
                attrs([("op", AttrValue::Str("add".into()))]),
                &[wq, wq],
            )
            .unwrap()[0];
        g.add_output("y", y);
        g.add_output("z", z);
        assert_eq!(hoist_weight_only(&mut g), 1);
        assert_eq!(init_prefix(&g), 2, "the global and the cast");
        assert!(matches!(g.nodes[0].op, Op::Global(_)));
        assert_eq!(g.nodes[1].outputs, vec![wf]);
        assert!(matches!(g.nodes[2].op, Op::Input(_)));
        assert_eq!(
            g.nodes[4].outputs,
            vec![z],
            "an output's node stays in the run"
        );
        crate::verify::verify(&g, &reg).unwrap();
    }
}
