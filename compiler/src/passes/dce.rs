//! Dead code elimination: removes every node none of whose outputs an output
//! of the graph depends on. Kernels have no side effects, so this is always
//! sound. Values are renumbered densely; unused `Input` and `Global` nodes go
//! too (the input stays in the signature, the global leaves the entry's
//! globals table). Regions are cleaned the same way, recursively.

use crate::ir::Graph;

/// Removes dead nodes, here and inside the regions of the nodes that stay;
/// returns how many were removed. (A region keeps its declared inputs: its
/// node still passes them.)
pub fn eliminate_dead_code(graph: &mut Graph) -> usize {
    let keep = graph.live_nodes();
    let mut removed = keep.iter().filter(|k| !**k).count();
    if removed > 0 {
        graph.retain_nodes(&keep);
    }
    for node in &mut graph.nodes {
        for region in node.op.regions_mut() {
            removed += eliminate_dead_code(region);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::attrs;
    use ampoule_kernels::{AttrValue, DType, Registry, TensorMeta};

    #[test]
    fn removes_what_no_output_needs() {
        let reg = Registry::standard();
        let mut g = Graph::new();
        g.add_input("x", TensorMeta::new(DType::F32, [4]));
        g.add_input("unused", TensorMeta::new(DType::F32, [4]));
        let x = g.input(0).unwrap();
        let _u = g.input(1).unwrap();
        let op = |o: &str| attrs([("op", AttrValue::Str(o.into()))]);
        let dead = g.kernel(&reg, "unary@1", op("exp"), &[x]).unwrap()[0];
        let _dead2 = g.kernel(&reg, "unary@1", op("neg"), &[dead]).unwrap()[0];
        let y = g.kernel(&reg, "unary@1", op("relu"), &[x]).unwrap()[0];
        g.add_output("y", y);
        assert_eq!(eliminate_dead_code(&mut g), 3);
        assert_eq!(g.to_string(), "input x: f32[4]\ninput unused: f32[4]\n  v0 = input 0 : f32[4]\n  v1 = unary@1 {op=relu} v0 : f32[4]\noutput y = v1\n");
        crate::verify::verify(&g, &reg).unwrap();
        assert_eq!(eliminate_dead_code(&mut g), 0);
    }
}
