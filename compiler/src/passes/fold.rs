//! Constant folding: a kernel node whose inputs are all constants runs at
//! compile time on the host's *reference* kernels (the portable, obviously
//! correct implementations), and becomes a constant; a reshape of a constant
//! becomes the reshaped constant. Folding goes forward in node order, so
//! chains of constant nodes fold completely in one pass. The folded nodes'
//! inputs are left for dead code elimination.
//!
//! Only nodes an output depends on fold. A dead node never runs (dead code
//! elimination removes it, and the IR interpreter skips it), so its failure
//! on constants (a gather index out of range, an integer division by zero)
//! must not fail the compile. A live node that fails on its constants fails
//! on every call, so that is a compile error ([`PassError::Fold`]) naming the
//! node and the kernel's reason. Liveness is computed once, before folding:
//! folding never changes it for a node that fails, since a node is folded
//! only when all its inputs were, and so every consumer of a node that fails
//! stays unfolded and keeps it live. Node numbers in errors are those of the
//! graph given to the pass.

use ampoule_kernels::{Impl, Registry, Tensor};

use super::PassError;
use crate::ir::{Graph, Op};

/// Folds every foldable node; returns how many were folded.
pub fn fold_constants(graph: &mut Graph, registry: &Registry) -> Result<usize, PassError> {
    let live = graph.live_nodes();
    let mut known: Vec<Option<Tensor>> = vec![None; graph.values.len()];
    let mut folded = 0;
    for n in 0..graph.nodes.len() {
        if !live.get(n).copied().unwrap_or(false) {
            continue;
        }
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
        // The message names the node, the kernel and the reason.
        let msg = err.to_string();
        for part in [
            "node 2",
            "gather@1",
            "out of range",
            "every call would fail",
        ] {
            assert!(msg.contains(part), "{part:?} not in {msg:?}");
        }
    }

    /// `data` f32[2] and `x` f32[2] as graph values, plus a `gather@1` of
    /// `data` at constant index 2 (out of range); returns (graph, x, data,
    /// the gather's value, its node index).
    fn with_out_of_range_gather(
        reg: &Registry,
    ) -> (
        Graph,
        crate::ir::ValueId,
        crate::ir::ValueId,
        crate::ir::ValueId,
        usize,
    ) {
        let mut g = Graph::new();
        g.add_input("x", TensorMeta::new(DType::F32, [2]));
        let x = g.input(0).unwrap();
        let data = g.constant(Tensor::from_vec(&[2], vec![1.0f32, 2.0]).unwrap());
        let idx = g.constant(Tensor::from_vec(&[1], vec![2i64]).unwrap());
        let node = g.nodes.len();
        let bad = g
            .kernel(
                reg,
                "gather@1",
                attrs([("axis", AttrValue::Int(0))]),
                &[data, idx],
            )
            .unwrap()[0];
        (g, x, data, bad, node)
    }

    #[test]
    fn a_dead_failing_constant_kernel_is_left_for_dead_code_elimination() {
        // Found by fuzz/wrapper (fuzz/regressions/wrapper/): a dead gather
        // of constants at an out-of-range index failed the compile, while
        // the interpreter (which skips dead nodes) returned the outputs.
        let reg = Registry::standard();
        let (mut g, x, data, _dead, gather) = with_out_of_range_gather(&reg);
        let add = attrs([("op", AttrValue::Str("add".into()))]);
        // A live constant chain still folds: data + data.
        let twice = g
            .kernel(&reg, "binary@1", add.clone(), &[data, data])
            .unwrap()[0];
        let y = g.kernel(&reg, "binary@1", add, &[x, twice]).unwrap()[0];
        g.add_output("y", y);
        let original = g.clone();

        let mut folded = g.clone();
        assert_eq!(fold_constants(&mut folded, &reg).unwrap(), 1);
        assert!(
            matches!(folded.nodes[gather].op, Op::Kernel { .. }),
            "the dead gather is not folded\n{folded}"
        );
        let Op::Constant(t) = &folded.nodes[gather + 1].op else {
            panic!("the live chain folds\n{folded}")
        };
        assert_eq!(t.to_vec::<f32>().unwrap(), [1.0 + 1.0, 2.0 + 2.0]);

        // The whole pipeline succeeds, drops the gather, and computes
        // x + 2 * data.
        let opt = crate::passes::optimize(g, &reg).unwrap();
        assert!(
            !opt.nodes
                .iter()
                .any(|n| matches!(&n.op, Op::Kernel { kernel, .. } if kernel == "gather@1")),
            "{opt}"
        );
        let xs = [Tensor::from_vec(&[2], vec![0.5f32, -3.0]).unwrap()];
        let none = std::collections::BTreeMap::new();
        let got = crate::interp::evaluate(&opt, &reg, &xs, &none).unwrap();
        assert_eq!(
            got[0].to_vec::<f32>().unwrap(),
            [0.5 + 2.0 * 1.0, -3.0 + 2.0 * 2.0]
        );
        let want = crate::interp::evaluate(&original, &reg, &xs, &none).unwrap();
        assert_eq!(
            got[0].to_vec::<f32>().unwrap(),
            want[0].to_vec::<f32>().unwrap()
        );
    }

    #[test]
    fn a_live_failing_constant_kernel_fails_the_pipeline_with_its_node_number() {
        let reg = Registry::standard();
        let (mut g, x, _data, bad, gather) = with_out_of_range_gather(&reg);
        // Something dead before it, so that numbering after dead code
        // elimination would differ from the traced graph's.
        let neg = attrs([("op", AttrValue::Str("neg".into()))]);
        let _dead = g.kernel(&reg, "unary@1", neg, &[x]).unwrap();
        let add = attrs([("op", AttrValue::Str("add".into()))]);
        let y = g.kernel(&reg, "binary@1", add, &[x, bad]).unwrap()[0];
        g.add_output("y", y);
        let err = crate::passes::optimize(g.clone(), &reg).unwrap_err();
        assert!(
            matches!(err, PassError::Fold { node, .. } if node == gather),
            "{err}"
        );
        // The interpreter agrees that the graph fails, at the same node.
        let xs = [Tensor::from_vec(&[2], vec![0.5f32, -3.0]).unwrap()];
        let e = crate::interp::evaluate(&g, &reg, &xs, &Default::default()).unwrap_err();
        assert!(
            matches!(e, crate::interp::EvalError::Kernel { node, .. } if node == gather),
            "{e}"
        );
    }

    #[test]
    fn a_traced_program_with_a_dead_out_of_range_gather_compiles_and_runs() {
        use crate::{function, Compiler};
        use ampoule_host::{Host, HostConfig};

        let host = Host::new(HostConfig {
            cache_dir: None,
            ..HostConfig::default()
        })
        .unwrap();
        let program = |live: bool| {
            function("f", move |cx, x| {
                let data = cx.constant(Tensor::from_vec(&[2], vec![1.0f32, 2.0]).unwrap());
                let idx = cx.constant(Tensor::from_vec(&[1], vec![2i64]).unwrap());
                let picked = cx.gather(data, idx, 0)?;
                let add = attrs([("op", AttrValue::Str("add".into()))]);
                let rhs = if live { picked } else { data };
                cx.kernel("binary@1", add, &[x[0], rhs])
            })
        };
        let xs = [Tensor::from_vec(&[2], vec![0.25f32, -4.0]).unwrap()];

        let mut c = Compiler::builder(host.clone())
            .function(program(false))
            .create()
            .unwrap();
        let out = c.call("f", &xs).unwrap();
        assert_eq!(out[0].to_vec::<f32>().unwrap(), [0.25 + 1.0, -4.0 + 2.0]);

        // Used, the same gather is a compile error that says what is wrong.
        let mut c = Compiler::builder(host)
            .function(program(true))
            .create()
            .unwrap();
        let msg = c.call("f", &xs).unwrap_err().to_string();
        for part in ["gather@1", "out of range", "every call would fail"] {
            assert!(msg.contains(part), "{part:?} not in {msg:?}");
        }
    }
}
