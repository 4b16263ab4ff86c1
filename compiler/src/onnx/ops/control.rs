//! ONNX `If` and `Loop`: subgraphs traced as wrapper control flow, or
//! folded and unrolled when the compile-time value environment decides them.
//!
//! - `If` with a known condition traces only the branch taken, inline: no
//!   wrapper `If` remains and the branch's known values keep folding. With a
//!   traced condition both branches become regions of [`Tracer::cond`]; they
//!   must give the same dtypes and shapes, else the error names both.
//!   Their nodes run only when data says so, so a node there that fails on
//!   its known inputs is traced, not an error (see the parent module).
//! - `Loop` unrolls when its trip count `M` is known and at most
//!   [`UNROLL_LIMIT`] (or [`SCAN_UNROLL_LIMIT`] with scan outputs) and its
//!   condition stays known; each iteration is the body traced inline with a
//!   known iteration number, so shape arithmetic in the body folds. Otherwise
//!   it becomes a [`Tracer::while_loop`] carrying `(iteration, condition,
//!   carried..)`, which needs carried values of fixed dtypes and shapes and
//!   no scan outputs (their length would depend on data); its body runs
//!   only when data says so, as an `If` branch decided at run time does.
//!
//! Subgraph errors keep the inner node's name and gain the enclosing one.

use std::cell::RefCell;

use ampoule_kernels::{Bool8, DType, Tensor, TensorMeta};

use super::{e, known, materialize, trace_subgraph, Builder, Val, R};
use crate::onnx::Subgraph;
use crate::trace::{TraceError, Traced, Tracer};

/// The most iterations a `Loop` without scan outputs is unrolled.
pub const UNROLL_LIMIT: i64 = 16;

/// The most iterations a `Loop` with scan outputs is unrolled (the only way
/// they are supported).
pub const SCAN_UNROLL_LIMIT: i64 = 1024;

fn fmt_metas(ms: &[TensorMeta]) -> String {
    let parts: Vec<String> = ms.iter().map(|m| m.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// Materializes `vals` in the region being traced.
fn traced_all(cx: &mut Tracer<'_>, vals: &[Val], what: &str) -> Result<Vec<Traced>, TraceError> {
    vals.iter()
        .map(|v| {
            materialize(cx, v).map_err(|message| TraceError::Invalid {
                op: what.to_string(),
                message,
            })
        })
        .collect()
}

/// An error tracing a branch whose condition is only known at run time.
fn branch_error(name: &str, err: TraceError) -> TraceError {
    TraceError::Invalid {
        op: name.to_string(),
        message: format!(
            "{err} (the condition is only known at run time, so both branches are compiled for these input shapes)"
        ),
    }
}

impl<'a> Builder<'a, '_> {
    fn subgraph(&self, name: &str) -> R<&'a Subgraph> {
        let node: &'a crate::onnx::Node = self.node;
        node.subgraphs
            .get(name)
            .map(|g| &**g)
            .ok_or_else(|| format!("attribute `{name}` (a graph) is required"))
    }

    /// The truth of a known one-element condition.
    fn known_truth(&mut self, v: &Val, what: &str) -> R<Option<bool>> {
        match v {
            Val::Known { t, .. } if t.numel() != 1 => {
                Err(format!("{what} must have one element, not {}", t.meta()))
            }
            Val::Known { .. } => Ok(Some(self.known_f64(v, what)? != 0.0)),
            Val::Traced(t) => {
                let n = self.cx.meta(*t).numel();
                if n != Some(1) {
                    return Err(format!(
                        "{what} must have one element, not {}",
                        self.cx.meta(*t)
                    ));
                }
                Ok(None)
            }
        }
    }

    pub(super) fn if_(&mut self) -> R<Vec<Val>> {
        let n = self.node;
        let then_g = self.subgraph("then_branch")?;
        let else_g = self.subgraph("else_branch")?;
        for (name, g) in [("then_branch", then_g), ("else_branch", else_g)] {
            if !g.inputs.is_empty() {
                return Err(format!(
                    "`{name}` declares {} inputs; If branches take none (they read outer values by name)",
                    g.inputs.len()
                ));
            }
            if g.outputs.len() != n.outputs.len() {
                return Err(format!(
                    "`{name}` gives {} outputs, the node has {}",
                    g.outputs.len(),
                    n.outputs.len()
                ));
            }
        }
        let c = self.input(0)?;
        let (registry, scope) = (self.registry, self.scope);
        if let Some(truth) = self.known_truth(&c, "the condition")? {
            let (g, name) = if truth {
                (then_g, "then_branch")
            } else {
                (else_g, "else_branch")
            };
            return trace_subgraph(self.cx, registry, g, scope, Vec::new(), false)
                .map_err(|err| format!("in `{name}` (the condition is known {truth}): {err}"));
        }
        let pred = self.traced(&c)?;
        let then_metas: RefCell<Vec<TensorMeta>> = RefCell::new(Vec::new());
        let outs = self
            .cx
            .cond(
                pred,
                &[],
                |cx, _| {
                    let vals = trace_subgraph(cx, registry, then_g, scope, Vec::new(), true)
                        .map_err(|err| branch_error("then_branch", err))?;
                    let ts = traced_all(cx, &vals, "then_branch")?;
                    *then_metas.borrow_mut() = ts.iter().map(|&t| cx.meta(t).clone()).collect();
                    Ok(ts)
                },
                |cx, _| {
                    let vals = trace_subgraph(cx, registry, else_g, scope, Vec::new(), true)
                        .map_err(|err| branch_error("else_branch", err))?;
                    let ts = traced_all(cx, &vals, "else_branch")?;
                    let metas: Vec<TensorMeta> = ts.iter().map(|&t| cx.meta(t).clone()).collect();
                    let a = then_metas.borrow();
                    if *a != metas {
                        return Err(TraceError::Invalid {
                            op: "If".into(),
                            message: format!(
                                "the branches give different outputs (then_branch {}, else_branch {}) and the condition is only known at run time; \
                                 both branches must give the same dtypes and shapes (fix the input shapes so they agree, or make the condition a constant)",
                                fmt_metas(&a),
                                fmt_metas(&metas)
                            ),
                        });
                    }
                    Ok(ts)
                },
            )
            .map_err(e)?;
        Ok(outs.into_iter().map(Val::Traced).collect())
    }

    pub(super) fn loop_(&mut self) -> R<Vec<Val>> {
        let n = self.node;
        let body = self.subgraph("body")?;
        let m = self.opt_input(0)?;
        let c = self.opt_input(1)?;
        let init = (2..n.inputs.len())
            .map(|i| self.input(i))
            .collect::<R<Vec<_>>>()?;
        let k = init.len();
        if body.inputs.len() != k + 2 {
            return Err(format!(
                "the body takes {} inputs; with {k} loop-carried values it must take {} (iteration number, condition, carried values)",
                body.inputs.len(),
                k + 2
            ));
        }
        let scans = body.outputs.len().checked_sub(k + 1).ok_or_else(|| {
            format!(
                "the body gives {} outputs; it must give at least {} (condition, carried values)",
                body.outputs.len(),
                k + 1
            )
        })?;
        if n.outputs.len() > k + scans {
            return Err(format!(
                "the node has {} outputs, but the body gives {k} carried values and {scans} scan outputs",
                n.outputs.len()
            ));
        }
        let trip: Option<i64> = match &m {
            Some(v @ Val::Known { .. }) => {
                let ints = self.known_ints(v, "M")?;
                let [v] = ints.as_slice() else {
                    return Err(format!("M must have one element, not {}", ints.len()));
                };
                Some(*v)
            }
            _ => None,
        };
        let use_cond = c.is_some();
        if m.is_none() && !use_cond {
            return Err(
                "the loop has neither a trip count M nor a condition, so it never ends".into(),
            );
        }
        let mut cond = match &c {
            Some(v) => {
                self.known_truth(v, "the condition")?;
                v.clone()
            }
            None => known(Tensor::scalar(Bool8(1))),
        };
        let limit = if scans > 0 {
            SCAN_UNROLL_LIMIT
        } else {
            UNROLL_LIMIT
        };
        let unroll = match trip {
            Some(t) => t <= limit,
            None => false,
        } || matches!(self.known_truth(&cond, "the condition")?, Some(false));
        let mut state = init;
        let mut iter = 0i64;
        let mut scan_vals: Vec<Vec<Val>> = vec![Vec::new(); scans];
        if unroll {
            loop {
                let go = if use_cond {
                    self.known_truth(&cond, "the condition")?
                } else {
                    Some(true)
                };
                match go {
                    Some(false) => break,
                    Some(true) if trip.is_some_and(|t| iter >= t) => break,
                    Some(true) => {}
                    None if scans > 0 => {
                        return Err(format!(
                            "the body's condition depends on data at iteration {iter}; scan outputs need every iteration's condition known at compile time"
                        ))
                    }
                    // Data decides from here on: a wrapper loop takes over.
                    None => break,
                }
                let mut args = vec![known(Tensor::scalar(iter)), cond.clone()];
                args.extend(state.iter().cloned());
                let (registry, scope) = (self.registry, self.scope);
                let outs = trace_subgraph(self.cx, registry, body, scope, args, false)
                    .map_err(|err| format!("in `body` (iteration {iter}): {err}"))?;
                let mut outs = outs.into_iter();
                let next_cond = outs.next().ok_or("the body gave no condition")?;
                if use_cond {
                    cond = next_cond;
                }
                state = outs.by_ref().take(k).collect();
                for (j, v) in outs.enumerate() {
                    scan_vals[j].push(v);
                }
                iter += 1;
            }
            let finished = !use_cond
                || matches!(self.known_truth(&cond, "the condition")?, Some(false))
                || trip.is_some_and(|t| iter >= t);
            if finished {
                let mut results = state;
                for (j, vals) in scan_vals.into_iter().enumerate() {
                    results.push(self.stack(vals, j)?);
                }
                results.truncate(n.outputs.len());
                return Ok(results);
            }
        } else if scans > 0 {
            return Err(format!(
                "the body has {scans} scan outputs, whose length would depend on data; they need a trip count M known at compile time (at most {SCAN_UNROLL_LIMIT}) and a condition known at every iteration"
            ));
        }
        let mut results = self.while_from(body, m.as_ref(), use_cond, iter, &cond, &state)?;
        results.truncate(n.outputs.len());
        Ok(results)
    }

    /// Stacks one scan output's per-iteration values on a new axis 0.
    fn stack(&mut self, vals: Vec<Val>, j: usize) -> R<Val> {
        if vals.is_empty() {
            return Err(format!(
                "the loop runs no iteration, so scan output {j} has no element to give it a shape"
            ));
        }
        let mut rows = Vec::with_capacity(vals.len());
        for v in &vals {
            let mut dims = vec![1];
            dims.extend(self.shape(v));
            rows.push(self.reshape(v, &dims)?);
        }
        let first = self.shape(&rows[0]);
        if let Some(v) = rows.iter().find(|r| self.shape(r)[1..] != first[1..]) {
            return Err(format!(
                "scan output {j} changes shape across iterations ({:?} and {:?})",
                &first[1..],
                &self.shape(v)[1..]
            ));
        }
        self.concat(&rows, 0)
    }

    /// The rest of a `Loop` as a wrapper loop, from iteration `iter` with
    /// condition `cond` and carried values `state`.
    fn while_from(
        &mut self,
        body: &Subgraph,
        m: Option<&Val>,
        use_cond: bool,
        iter: i64,
        cond: &Val,
        state: &[Val],
    ) -> R<Vec<Val>> {
        let max = match m {
            Some(v) => {
                let v = self.cast(v, DType::I64)?;
                if self.shape(&v).iter().product::<usize>() != 1 {
                    return Err(format!("M must have one element, not {:?}", self.shape(&v)));
                }
                Some(self.reshape(&v, &[])?)
            }
            None => None,
        };
        let max = max.map(|v| self.traced(&v)).transpose()?;
        let cond = self.cast(cond, DType::Bool)?;
        let mut init = vec![
            self.traced(&known(Tensor::scalar(iter)))?,
            self.traced(&cond)?,
        ];
        for v in state {
            init.push(self.traced(v)?);
        }
        let carried_metas: Vec<TensorMeta> =
            init.iter().map(|&t| self.cx.meta(t).clone()).collect();
        let (registry, scope) = (self.registry, self.scope);
        let outs = self
            .cx
            .while_loop(
                &init,
                |cx, xs| {
                    let below = match max {
                        Some(m) => Some(cx.lt(xs[0], m)?),
                        None => None,
                    };
                    match below {
                        Some(b) if use_cond => {
                            let f = cx.constant(Tensor::scalar(Bool8(0)));
                            cx.where_(xs[1], b, f)
                        }
                        Some(b) => Ok(b),
                        None => Ok(xs[1]),
                    }
                },
                |cx, xs| {
                    let args: Vec<Val> = xs.iter().map(|&t| Val::Traced(t)).collect();
                    let outs = trace_subgraph(cx, registry, body, scope, args, true)?;
                    let outs = traced_all(cx, &outs, "Loop body")?;
                    let one = cx.constant(Tensor::scalar(1i64));
                    let mut next = vec![cx.add(xs[0], one)?];
                    if use_cond {
                        let mut c = outs[0];
                        if cx.dtype(c) != DType::Bool {
                            c = cx.cast(c, DType::Bool)?;
                        }
                        if cx.shape(c) != carried_metas[1].shape.as_slice() {
                            let spec: Vec<i64> =
                                carried_metas[1].shape.iter().map(|&d| d as i64).collect();
                            c = cx.reshape(c, &spec)?;
                        }
                        next.push(c);
                    } else {
                        next.push(xs[1]);
                    }
                    next.extend_from_slice(&outs[1..1 + state.len()]);
                    for (j, (&t, want)) in next.iter().zip(&carried_metas).enumerate().skip(2) {
                        if cx.meta(t) != want {
                            return Err(TraceError::Invalid {
                                op: "Loop body".into(),
                                message: format!(
                                    "loop-carried value {} is {want} on entry but {} after an iteration; a loop whose trip count is only known at run time needs fixed dtypes and shapes",
                                    j - 2,
                                    cx.meta(t)
                                ),
                            });
                        }
                    }
                    Ok(next)
                },
            )
            .map_err(e)?;
        Ok(outs.into_iter().skip(2).map(Val::Traced).collect())
    }
}
