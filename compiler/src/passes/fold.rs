//! Constant folding: a kernel node whose inputs are all constants runs at
//! compile time on the host's *reference* kernels (the portable, obviously
//! correct implementations), and becomes a constant; a reshape of a constant
//! becomes the reshaped constant. Folding goes forward in node order, so
//! chains of constant nodes fold completely in one pass. The folded nodes'
//! inputs are left for dead code elimination.

use ampoule_kernels::{Impl, Registry, Tensor};

use super::PassError;
use crate::ir::{Graph, Op};

/// Folds every foldable node; returns how many were folded.
pub fn fold_constants(graph: &mut Graph, registry: &Registry) -> Result<usize, PassError> {
    let mut known: Vec<Option<Tensor>> = vec![None; graph.values.len()];
    let mut folded = 0;
    for n in 0..graph.nodes.len() {
        let node = &graph.nodes[n];
        let inputs: Option<Vec<&Tensor>> = node
            .inputs
            .iter()
            .map(|v| known.get(v.index()).and_then(Option::as_ref))
            .collect();
        let result: Option<Vec<Tensor>> = match (&node.op, inputs) {
            (Op::Constant(t), _) => {
                if let Some(v) = node.outputs.first() {
                    known[v.index()] = Some(t.clone());
                }
                None
            }
            (Op::Reshape, Some(ins)) if ins.len() == 1 => {
                let meta = graph.meta(node.outputs[0]);
                let t = ins[0]
                    .reshaped(&meta.shape)
                    .ok_or_else(|| PassError::Other {
                        pass: "fold",
                        message: format!(
                            "node {n}: cannot reshape constant {} to {meta}",
                            ins[0].meta()
                        ),
                    })?;
                Some(vec![t])
            }
            (Op::Kernel { kernel, attrs }, Some(ins)) => {
                let bound = registry
                    .bind(kernel, attrs)
                    .map_err(|source| PassError::Fold { node: n, source })?;
                let mut outs = node
                    .outputs
                    .iter()
                    .map(|v| {
                        let m = graph.meta(*v);
                        Tensor::zeros(m.dtype, &m.shape)
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| PassError::Other {
                        pass: "fold",
                        message: format!("node {n}: {e}"),
                    })?;
                bound
                    .run(Impl::Reference, &ins, &mut outs)
                    .map_err(|source| PassError::Fold { node: n, source })?;
                Some(outs)
            }
            _ => None,
        };
        if let Some(outs) = result {
            let node = &mut graph.nodes[n];
            // Every op has at most one output today; a multi-output node
            // would need one constant node per output.
            if outs.len() != 1 || node.outputs.len() != 1 {
                continue;
            }
            let t = outs.into_iter().next().expect("one output");
            known[node.outputs[0].index()] = Some(t.clone());
            node.op = Op::Constant(t);
            node.inputs.clear();
            folded += 1;
        }
    }
    Ok(folded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::attrs;
    use ampoule_kernels::{AttrValue, DType, TensorMeta};

    #[test]
    fn folds_chains_of_constants_and_keeps_the_rest() {
        let reg = Registry::standard();
        let mut g = Graph::new();
        g.add_input("x", TensorMeta::new(DType::F32, [2]));
        let x = g.input(0).unwrap();
        let a = g.constant(Tensor::from_vec(&[2], vec![1.0f32, 4.0]).unwrap());
        let b = g.constant(Tensor::from_vec(&[2], vec![3.0f32, 5.0]).unwrap());
        let add = attrs([("op", AttrValue::Str("add".into()))]);
        let c = g.kernel(&reg, "binary@1", add.clone(), &[a, b]).unwrap()[0];
        let d = g
            .kernel(
                &reg,
                "unary@1",
                attrs([("op", AttrValue::Str("sqrt".into()))]),
                &[c],
            )
            .unwrap()[0];
        let r = g.reshape(d, &[1, 2]).unwrap();
        let r = g.reshape(r, &[2]).unwrap();
        let y = g.kernel(&reg, "binary@1", add, &[x, r]).unwrap()[0];
        g.add_output("y", y);
        assert_eq!(fold_constants(&mut g, &reg).unwrap(), 4);
        crate::verify::verify(&g, &reg).unwrap();
        let Op::Constant(t) = &g.nodes[6].op else {
            panic!("{g}")
        };
        assert_eq!(t.to_vec::<f32>().unwrap(), [2.0, 3.0]);
        assert!(matches!(g.nodes[7].op, Op::Kernel { .. }));
        assert_eq!(crate::passes::dce::eliminate_dead_code(&mut g), 5);
        assert_eq!(g.nodes.len(), 3);
    }

    #[test]
    fn a_failing_constant_kernel_is_an_error() {
        let reg = Registry::standard();
        let mut g = Graph::new();
        let data = g.constant(Tensor::from_vec(&[2], vec![1.0f32, 2.0]).unwrap());
        let idx = g.constant(Tensor::from_vec(&[1], vec![7i64]).unwrap());
        let y = g
            .kernel(
                &reg,
                "gather@1",
                attrs([("axis", AttrValue::Int(0))]),
                &[data, idx],
            )
            .unwrap()[0];
        g.add_output("y", y);
        let err = fold_constants(&mut g, &reg).unwrap_err();
        assert!(matches!(err, PassError::Fold { node: 2, .. }), "{err}");
    }
}
