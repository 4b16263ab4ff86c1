//! A reference interpreter of the IR: runs a graph node by node on the
//! registry's *reference* kernels, in plain host memory, with no wrapper and
//! no memory plan. It defines what a graph means, so tests use it as the
//! oracle for compiled entries. `If` runs the branch its predicate picks;
//! `While` loops for as long as its condition holds (nothing bounds the trip
//! count: the interpreter is an oracle for trusted graphs, not a sandbox).

use std::collections::BTreeMap;

use ampoule_kernels::{DType, Impl, KernelError, Registry, Tensor};

use crate::ir::{GlobalSource, Graph, Op};

/// Why evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("expected {expected} inputs, got {actual}")]
    InputCount { expected: usize, actual: usize },
    #[error("input {index} (`{name}`) must be {expected}, got {actual}")]
    Input {
        index: usize,
        name: String,
        expected: String,
        actual: String,
    },
    #[error("global `{0}` is not bound")]
    Unbound(String),
    #[error("node {node}: {source}")]
    Kernel {
        node: usize,
        #[source]
        source: KernelError,
    },
    #[error("node {node}: {message}")]
    Invalid { node: usize, message: String },
    /// A graph break's guard did not hold (the compiled entry would report a
    /// miss at this break).
    #[error("the guard of break {index} does not hold")]
    BreakMiss { index: u32 },
}

/// Evaluates a verified graph on `inputs`; host-bound globals come from
/// `bindings`. Only the nodes the outputs depend on run.
pub fn evaluate(
    graph: &Graph,
    registry: &Registry,
    inputs: &[Tensor],
    bindings: &BTreeMap<String, Tensor>,
) -> Result<Vec<Tensor>, EvalError> {
    if inputs.len() != graph.inputs.len() {
        return Err(EvalError::InputCount {
            expected: graph.inputs.len(),
            actual: inputs.len(),
        });
    }
    for (i, (t, def)) in inputs.iter().zip(&graph.inputs).enumerate() {
        if t.meta() != &def.meta {
            return Err(EvalError::Input {
                index: i,
                name: def.name.clone(),
                expected: def.meta.to_string(),
                actual: t.meta().to_string(),
            });
        }
    }
    // Only live nodes run: compiled entries (after dead code elimination)
    // never run the others, so a data-dependent failure there (an integer
    // division by zero, a gather index out of range) is not a failure of the
    // graph.
    let live = graph.live_nodes();
    let mut values: Vec<Option<Tensor>> = vec![None; graph.values.len()];
    for (n, node) in graph.nodes.iter().enumerate() {
        if !live[n] {
            continue;
        }
        let invalid = |message: String| EvalError::Invalid { node: n, message };
        let ins = node
            .inputs
            .iter()
            .map(|v| {
                values
                    .get(v.index())
                    .and_then(Option::as_ref)
                    .ok_or_else(|| invalid(format!("{v} is not computed")))
            })
            .collect::<Result<Vec<&Tensor>, _>>()?;
        let outs: Vec<Tensor> = match &node.op {
            Op::Input(i) => vec![inputs
                .get(*i as usize)
                .cloned()
                .ok_or_else(|| invalid(format!("no input {i}")))?],
            Op::Global(g) => {
                let def = graph
                    .globals
                    .get(*g as usize)
                    .ok_or_else(|| invalid(format!("no global {g}")))?;
                vec![match &def.source {
                    GlobalSource::Embedded(t) => t.clone(),
                    GlobalSource::Bound { .. } => bindings
                        .get(&def.name)
                        .cloned()
                        .ok_or_else(|| EvalError::Unbound(def.name.clone()))?,
                }]
            }
            Op::Constant(t) => vec![t.clone()],
            Op::Reshape => {
                let meta = node
                    .outputs
                    .first()
                    .and_then(|v| graph.try_meta(*v))
                    .ok_or_else(|| invalid("no output".into()))?;
                let src = ins.first().ok_or_else(|| invalid("no input".into()))?;
                vec![src
                    .reshaped(&meta.shape)
                    .ok_or_else(|| invalid(format!("cannot reshape {} to {meta}", src.meta())))?]
            }
            Op::Kernel { kernel, attrs } => {
                let bound = registry
                    .bind(kernel, attrs)
                    .map_err(|source| EvalError::Kernel { node: n, source })?;
                let mut outs = node
                    .outputs
                    .iter()
                    .map(|v| {
                        let m = graph
                            .try_meta(*v)
                            .ok_or_else(|| invalid(format!("{v} has no type")))?;
                        Tensor::zeros(m.dtype, &m.shape).map_err(|e| invalid(e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                bound
                    .run(Impl::Reference, &ins, &mut outs)
                    .map_err(|source| EvalError::Kernel { node: n, source })?;
                outs
            }
            Op::If { then, otherwise } => {
                let (pred, args) = ins
                    .split_first()
                    .ok_or_else(|| invalid("`if` has no predicate".into()))?;
                let branch = if truth(pred).map_err(invalid)? {
                    then
                } else {
                    otherwise
                };
                let args: Vec<Tensor> = args.iter().map(|t| (*t).clone()).collect();
                evaluate(branch, registry, &args, bindings).map_err(|e| in_region(n, e))?
            }
            Op::Guard { index } => {
                let c = ins
                    .first()
                    .ok_or_else(|| invalid("`guard` has no input".into()))?;
                if !truth(c).map_err(invalid)? {
                    return Err(EvalError::BreakMiss { index: *index });
                }
                Vec::new()
            }
            Op::While { cond, body } => {
                let carried = node.outputs.len();
                let mut args: Vec<Tensor> = ins.iter().map(|t| (*t).clone()).collect();
                loop {
                    let c =
                        evaluate(cond, registry, &args, bindings).map_err(|e| in_region(n, e))?;
                    let holds = c
                        .first()
                        .ok_or_else(|| invalid("`cond` returned nothing".into()))
                        .and_then(|t| truth(t).map_err(invalid))?;
                    if !holds {
                        break;
                    }
                    let next =
                        evaluate(body, registry, &args, bindings).map_err(|e| in_region(n, e))?;
                    for (slot, t) in args.iter_mut().zip(next) {
                        *slot = t;
                    }
                }
                args.truncate(carried);
                args
            }
        };
        for (v, t) in node.outputs.iter().zip(outs) {
            if let Some(slot) = values.get_mut(v.index()) {
                *slot = Some(t);
            }
        }
    }
    graph
        .outputs
        .iter()
        .map(|o| {
            values
                .get(o.value.index())
                .cloned()
                .flatten()
                .ok_or_else(|| EvalError::Invalid {
                    node: graph.nodes.len(),
                    message: format!("output `{}` ({}) is not computed", o.name, o.value),
                })
        })
        .collect()
}

/// Whether element 0 of a bool or integer tensor is non-zero (what the
/// wrapper's `read-i64` condition tests).
fn truth(t: &Tensor) -> Result<bool, String> {
    let b = t.bytes();
    let n = t.dtype().size();
    match (t.dtype(), b.get(..n)) {
        (d, Some(x)) if d == DType::Bool || d.is_int() => Ok(x.iter().any(|&byte| byte != 0)),
        _ => Err(format!(
            "a condition must be a non-empty bool or integer tensor, got {}",
            t.meta()
        )),
    }
}

/// An error inside a region of node `n`, reported at `n`.
fn in_region(n: usize, e: EvalError) -> EvalError {
    if let EvalError::BreakMiss { .. } = e {
        return e;
    }
    EvalError::Invalid {
        node: n,
        message: format!("in a region: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::attrs;
    use ampoule_kernels::{AttrValue, DType, TensorMeta};

    #[test]
    fn evaluates_kernels_views_and_constants() {
        let reg = Registry::standard();
        let mut g = Graph::new();
        g.add_input("x", TensorMeta::new(DType::F32, [2, 2]));
        let x = g.input(0).unwrap();
        let c = g.constant(Tensor::from_vec(&[2], vec![10.0f32, 20.0]).unwrap());
        let y = g
            .kernel(
                &reg,
                "binary@1",
                attrs([("op", AttrValue::Str("add".into()))]),
                &[x, c],
            )
            .unwrap()[0];
        let r = g.reshape(y, &[4]).unwrap();
        g.add_output("r", r);
        let x = Tensor::from_vec(&[2, 2], vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
        let out = evaluate(&g, &reg, &[x], &BTreeMap::new()).unwrap();
        assert_eq!(out[0].to_vec::<f32>().unwrap(), [11.0, 22.0, 13.0, 24.0]);
        assert_eq!(out[0].shape(), [4]);
        let wrong = Tensor::zeros(DType::F32, &[3]).unwrap();
        assert!(matches!(
            evaluate(&g, &reg, &[wrong], &BTreeMap::new()),
            Err(EvalError::Input { index: 0, .. })
        ));
    }

    #[test]
    fn dead_nodes_do_not_run() {
        // Found by fuzz/wrapper (fuzz/regressions/wrapper/): a dead integer
        // division by zero failed the interpreter while the compiled entry,
        // after dead code elimination, returned its outputs.
        let reg = Registry::standard();
        let mut g = Graph::new();
        g.add_input("x", TensorMeta::new(DType::I32, [2]));
        let x = g.input(0).unwrap();
        let zero = g.constant(Tensor::from_vec(&[2], vec![0i32, 0]).unwrap());
        let div = attrs([("op", AttrValue::Str("div".into()))]);
        let dead = g.kernel(&reg, "binary@1", div, &[x, zero]).unwrap()[0];
        let sub = attrs([("op", AttrValue::Str("sub".into()))]);
        let y = g.kernel(&reg, "binary@1", sub, &[zero, x]).unwrap()[0];
        g.add_output("y", y);
        let x = Tensor::from_vec(&[2], vec![3i32, -4]).unwrap();
        let out = evaluate(&g, &reg, &[x.clone()], &BTreeMap::new()).unwrap();
        assert_eq!(out[0].to_vec::<i32>().unwrap(), [-3, 4]);
        // The same division, live, fails.
        g.add_output("q", dead);
        assert!(matches!(
            evaluate(&g, &reg, &[x], &BTreeMap::new()),
            Err(EvalError::Kernel { .. })
        ));
    }
}
