//! Output materialization: after a run the host hands each output's storage
//! to the caller, so every output must be a planned buffer of its own that
//! nothing else is stored in. This pass appends a `copy@1` for every output
//! that is an input, a global, a constant or a view (reshape), or that is
//! the same value as an earlier output.
//!
//! Region outputs are materialized the same way: lowering then hands an
//! `If`'s result over by moving a handle, and copies a loop body's results
//! into the carried buffers, without any result aliasing a region input.

use std::collections::HashSet;

use ampoule_kernels::{Attrs, Registry};

use super::PassError;
use crate::ir::{Graph, Op};

/// Inserts the copies, here and in every region; returns how many.
pub fn materialize_outputs(graph: &mut Graph, registry: &Registry) -> Result<usize, PassError> {
    let mut copies = 0;
    for node in &mut graph.nodes {
        for region in node.op.regions_mut() {
            copies += materialize_outputs(region, registry)?;
        }
    }
    let producers = graph.producers();
    let mut seen = HashSet::new();
    for o in 0..graph.outputs.len() {
        let v = graph.outputs[o].value;
        let borrowed = match producers
            .get(v.index())
            .copied()
            .flatten()
            .map(|n| &graph.nodes[n].op)
        {
            // Lowering gives `If` and `While` results storage of their own
            // (materialized region outputs, loop-carried buffers).
            Some(Op::Kernel { .. } | Op::If { .. } | Op::While { .. }) => false,
            Some(
                Op::Input(_) | Op::Global(_) | Op::Constant(_) | Op::Reshape | Op::Guard { .. },
            )
            | None => true,
        };
        if borrowed || !seen.insert(v) {
            let copy = graph
                .kernel(registry, "copy@1", Attrs::new(), &[v])
                .map_err(|e| PassError::Other {
                    pass: "materialize_outputs",
                    message: format!("cannot copy output `{}`: {e}", graph.outputs[o].name),
                })?;
            graph.outputs[o].value = copy[0];
            copies += 1;
        }
    }
    Ok(copies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::attrs;
    use ampoule_kernels::{AttrValue, DType, TensorMeta};

    #[test]
    fn copies_borrowed_and_repeated_outputs() {
        let reg = Registry::standard();
        let mut g = Graph::new();
        g.add_input("x", TensorMeta::new(DType::F32, [2, 2]));
        let x = g.input(0).unwrap();
        let y = g
            .kernel(
                &reg,
                "unary@1",
                attrs([("op", AttrValue::Str("exp".into()))]),
                &[x],
            )
            .unwrap()[0];
        let r = g.reshape(y, &[4]).unwrap();
        g.add_output("same_as_input", x);
        g.add_output("y", y);
        g.add_output("y_again", y);
        g.add_output("view", r);
        assert_eq!(materialize_outputs(&mut g, &reg).unwrap(), 3);
        crate::verify::verify(&g, &reg).unwrap();
        let outs: Vec<String> = g.outputs.iter().map(|o| o.value.to_string()).collect();
        assert_eq!(outs, ["v3", "v1", "v4", "v5"]);
    }
}
