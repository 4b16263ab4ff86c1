//! Graph breaks: one entry, several paths.
//!
//! A body that reads a value while tracing ([`Tracer::item`]) is traced for
//! the value its inputs give: a *path*, recorded as the list of values its
//! breaks read. Each break leaves a `Guard` in the graph, so the wrapper
//! checks inside the sandbox that the value read at run time is the one the
//! path was compiled for, and reports a miss at that break otherwise.
//!
//! When a call misses at a break and a compiler is attached, the new path is
//! traced from the call's inputs and the entry grows a continuation: [`merge`]
//! re-traces every recorded path of the entry (replaying the recorded values,
//! so no input data is needed) and joins them into one graph. The paths agree
//! on everything before their first differing break (tracing is
//! deterministic, and this is checked), so the merged graph computes that
//! prefix once and then, at each break, chooses with wrapper control flow
//! (`If`) between the continuations of the values seen there. The last
//! alternative is guarded: a value no path has seen is still a miss at that
//! break.

use std::collections::BTreeMap;

use ampoule_host::ScalarValue;
use ampoule_kernels::{Registry, Tensor};

use crate::ir::{GlobalSource, Graph, Node, Op, ValueId};
use crate::trace::{BreakSource, Example, FunctionDef, Trace, TraceError, Traced, Tracer};

/// Traces every path of `paths` (each the values its breaks read) and
/// merges them into one trace. The program hash is the first path's.
pub fn merge(
    def: &FunctionDef,
    examples: &[Example],
    registry: &Registry,
    bindings: &BTreeMap<String, Tensor>,
    paths: &[Vec<ScalarValue>],
) -> Result<Trace, TraceError> {
    let traces = paths
        .iter()
        .map(|p| {
            let t = def.trace_with(
                examples,
                registry,
                bindings,
                BreakSource {
                    data: None,
                    replay: p,
                },
            )?;
            if t.breaks.len() != p.len() {
                return Err(invalid(format!(
                    "a path records {} break values, but tracing it took {} breaks: the body is not deterministic",
                    p.len(),
                    t.breaks.len()
                )));
            }
            Ok(t)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let Some(first) = traces.first() else {
        return Err(invalid("an entry needs at least one path".into()));
    };
    if traces.len() == 1 {
        return Ok(traces.into_iter().next().unwrap_or_else(|| unreachable!()));
    }
    let mutations = first.graph.mutations.clone();
    let declared = first.graph.outputs.len() - mutations.len().min(first.graph.outputs.len());
    for t in &traces {
        if t.graph.mutations != mutations || t.graph.outputs.len() != first.graph.outputs.len() {
            return Err(invalid(
                "the paths return different outputs or update different inputs".into(),
            ));
        }
    }
    let all: Vec<&Trace> = traces.iter().collect();
    let body = |cx: &mut Tracer<'_>, inputs: &[Traced]| -> Result<Vec<Traced>, TraceError> {
        let mut envs = vec![vec![None; 0]; all.len()];
        for (env, t) in envs.iter_mut().zip(&all) {
            *env = vec![None; t.graph.values.len()];
        }
        let outs = replay(cx, inputs, &all, envs, 0, 0)?;
        for (&input, &value) in mutations.iter().zip(&outs[declared..]) {
            let target = *inputs
                .get(input as usize)
                .ok_or_else(|| invalid(format!("updated input {input} does not exist")))?;
            cx.assign(target, value)?;
        }
        Ok(outs[..declared].to_vec())
    };
    let mut merged = def.trace_body(examples, registry, bindings, BreakSource::default(), &body)?;
    merged.program_hash = first.program_hash.clone();
    merged.breaks = Vec::new();
    Ok(merged)
}

fn invalid(message: String) -> TraceError {
    TraceError::Invalid {
        op: "graph break".into(),
        message,
    }
}

/// A path's values, as traced into the merged graph.
type Env = Vec<Option<Traced>>;

/// Replays `paths` (which agree on every break before `k`) from node `from`,
/// each with its own value map, and returns their outputs. At break `k`
/// the paths split by the value read there.
fn replay(
    cx: &mut Tracer<'_>,
    inputs: &[Traced],
    paths: &[&Trace],
    mut envs: Vec<Env>,
    from: usize,
    k: usize,
) -> Result<Vec<Traced>, TraceError> {
    let lead = paths[0];
    let end = lead
        .breaks
        .get(k)
        .map_or(lead.graph.nodes.len(), |b| b.cond_from);
    for p in &paths[1..] {
        let same_end = p.breaks.get(k).map_or(p.graph.nodes.len(), |b| b.cond_from) == end;
        let same_nodes = same_end
            && (from..end).all(|n| {
                same_node(
                    &lead.graph,
                    &p.graph,
                    &lead.graph.nodes[n],
                    &p.graph.nodes[n],
                )
            });
        if !same_nodes {
            return Err(invalid(format!(
                "two paths that read the same values before break {k} traced different graphs: the body must be deterministic"
            )));
        }
    }
    for n in from..end {
        let outs = replay_node(cx, inputs, &lead.graph, n, &envs[0])?;
        for env in &mut envs {
            for (v, t) in lead.graph.nodes[n].outputs.iter().zip(&outs) {
                env[v.index()] = Some(*t);
            }
        }
    }
    let Some(b) = lead.breaks.get(k) else {
        return lead
            .graph
            .outputs
            .iter()
            .map(|o| lookup(&envs[0], o.value))
            .collect();
    };
    let read = lookup(&envs[0], b.read)?;
    // The values seen at break k, in order of first appearance, with the
    // paths that saw each.
    let mut groups: Vec<(ScalarValue, Vec<usize>)> = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let v = p.breaks[k].value;
        match groups.iter_mut().find(|(g, _)| g.same(v)) {
            Some((_, members)) => members.push(i),
            None => groups.push((v, vec![i])),
        }
    }
    choose(cx, inputs, paths, &envs, read, k, &groups)
}

/// `if read == v0 { paths of v0 } else if read == v1 { .. } else { guard
/// read == vn; paths of vn }`.
#[allow(clippy::too_many_arguments)]
fn choose(
    cx: &mut Tracer<'_>,
    inputs: &[Traced],
    paths: &[&Trace],
    envs: &[Env],
    read: Traced,
    k: usize,
    groups: &[(ScalarValue, Vec<usize>)],
) -> Result<Vec<Traced>, TraceError> {
    let Some(((value, members), rest)) = groups.split_first() else {
        return Err(invalid(format!("no path continues after break {k}")));
    };
    let continue_with = |cx: &mut Tracer<'_>| {
        let ps: Vec<&Trace> = members.iter().map(|&i| paths[i]).collect();
        let es: Vec<Env> = members.iter().map(|&i| envs[i].clone()).collect();
        let next = paths[members[0]].breaks[k].guard + 1;
        replay(cx, inputs, &ps, es, next, k + 1)
    };
    let cond = cx.break_condition(read, *value)?;
    if rest.is_empty() {
        cx.guard(cond, k)?;
        return continue_with(cx);
    }
    cx.cond(
        cond,
        &[],
        |cx, _| continue_with(cx),
        |cx, _| choose(cx, inputs, paths, envs, read, k, rest),
    )
}

fn lookup(env: &Env, v: ValueId) -> Result<Traced, TraceError> {
    env.get(v.index())
        .copied()
        .flatten()
        .ok_or_else(|| invalid(format!("{v} is read before it is replayed")))
}

/// Records node `n` of `graph` into the tracer, with values from `env`.
fn replay_node(
    cx: &mut Tracer<'_>,
    inputs: &[Traced],
    graph: &Graph,
    n: usize,
    env: &Env,
) -> Result<Vec<Traced>, TraceError> {
    let node = &graph.nodes[n];
    let ins = node
        .inputs
        .iter()
        .map(|&v| lookup(env, v))
        .collect::<Result<Vec<_>, _>>()?;
    replay_op(cx, inputs, graph, node, &ins)
}

fn replay_op(
    cx: &mut Tracer<'_>,
    inputs: &[Traced],
    graph: &Graph,
    node: &Node,
    ins: &[Traced],
) -> Result<Vec<Traced>, TraceError> {
    Ok(match &node.op {
        Op::Input(i) => vec![*inputs
            .get(*i as usize)
            .ok_or_else(|| invalid(format!("input {i} does not exist")))?],
        Op::Global(g) => {
            let def = graph
                .globals
                .get(*g as usize)
                .ok_or_else(|| invalid(format!("global {g} does not exist")))?;
            vec![match &def.source {
                GlobalSource::Embedded(t) => cx.capture(&def.name, t)?,
                GlobalSource::Bound { digest: None } => cx.bound(&def.name)?,
                GlobalSource::Bound { digest: Some(_) } => cx.bound_specialized(&def.name)?,
            }]
        }
        Op::Constant(t) => vec![cx.constant(t.clone())],
        Op::Reshape => {
            let (Some(&x), Some(o)) = (ins.first(), node.outputs.first()) else {
                return Err(invalid("a reshape without operand".into()));
            };
            let shape: Vec<i64> = graph.meta(*o).shape.iter().map(|&d| d as i64).collect();
            vec![cx.reshape(x, &shape)?]
        }
        Op::Kernel { kernel, attrs } => cx.kernel(kernel, attrs.clone(), ins)?,
        Op::If { then, otherwise } => {
            let (&pred, args) = ins
                .split_first()
                .ok_or_else(|| invalid("`if` without predicate".into()))?;
            cx.cond(
                pred,
                args,
                |cx, a| replay_region(cx, then, a),
                |cx, a| replay_region(cx, otherwise, a),
            )?
        }
        Op::While { cond, body } => {
            let carried = node.outputs.len().min(ins.len());
            let (init, invariants) = ins.split_at(carried);
            let with =
                |a: &[Traced]| -> Vec<Traced> { a.iter().chain(invariants).copied().collect() };
            cx.while_loop(
                init,
                |cx, a| {
                    replay_region(cx, cond, &with(a))?
                        .first()
                        .copied()
                        .ok_or_else(|| invalid("`cond` returned nothing".into()))
                },
                |cx, a| replay_region(cx, body, &with(a)),
            )?
        }
        Op::Guard { .. } => return Err(invalid("a guard inside a region".into())),
    })
}

/// Records region `g` with its inputs bound to `args`; returns its results.
fn replay_region(
    cx: &mut Tracer<'_>,
    g: &Graph,
    args: &[Traced],
) -> Result<Vec<Traced>, TraceError> {
    let mut env: Env = vec![None; g.values.len()];
    for node in &g.nodes {
        let ins = node
            .inputs
            .iter()
            .map(|&v| lookup(&env, v))
            .collect::<Result<Vec<_>, _>>()?;
        let outs = replay_op(cx, args, g, node, &ins)?;
        for (v, t) in node.outputs.iter().zip(outs) {
            env[v.index()] = Some(t);
        }
    }
    g.outputs.iter().map(|o| lookup(&env, o.value)).collect()
}

/// Whether two nodes of two traces are the same op on the same values.
fn same_node(ga: &Graph, gb: &Graph, a: &Node, b: &Node) -> bool {
    let metas = |g: &Graph, n: &Node| -> Vec<_> {
        n.outputs.iter().map(|v| g.try_meta(*v).cloned()).collect()
    };
    let op = match (&a.op, &b.op) {
        (Op::Input(x), Op::Input(y)) => x == y,
        (Op::Global(x), Op::Global(y)) => {
            let (x, y) = (ga.globals.get(*x as usize), gb.globals.get(*y as usize));
            matches!((x, y), (Some(x), Some(y)) if x.name == y.name)
        }
        (Op::Constant(x), Op::Constant(y)) => x.meta() == y.meta() && x.bytes() == y.bytes(),
        (Op::Reshape, Op::Reshape) => true,
        (
            Op::Kernel {
                kernel: k1,
                attrs: a1,
            },
            Op::Kernel {
                kernel: k2,
                attrs: a2,
            },
        ) => k1 == k2 && a1 == a2,
        (Op::If { .. }, Op::If { .. }) | (Op::While { .. }, Op::While { .. }) => {
            a.op.regions()
                .into_iter()
                .zip(b.op.regions())
                .all(|(x, y)| {
                    crate::hash::canonical_form(x) == crate::hash::canonical_form(y)
                        && x.values == y.values
                })
        }
        (Op::Guard { index: x }, Op::Guard { index: y }) => x == y,
        _ => false,
    };
    op && a.inputs == b.inputs && metas(ga, a) == metas(gb, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::{evaluate, EvalError};
    use crate::trace::function;
    use ampoule_kernels::{DType, TensorMeta};

    /// `k = item(argmax-ish count of positives)`; the Rust body then scales by
    /// a weight chosen in Rust: a different graph per value of `k`.
    fn counting() -> FunctionDef {
        function("counting", |cx, x| {
            let zero = cx.constant(Tensor::scalar(0.0f32));
            let pos = cx.gt(x[0], zero)?;
            let pos = cx.cast(pos, DType::I64)?;
            let n = cx.sum(pos, &[0], false)?;
            let k = cx.item_i64(n)?;
            let y = match k {
                0 => cx.neg(x[0])?,
                1 => cx.exp(x[0])?,
                _ => {
                    let s = cx.constant(Tensor::scalar(k as f32));
                    cx.mul(x[0], s)?
                }
            };
            Ok(vec![y])
        })
    }

    fn direct(x: &[f32]) -> Vec<f32> {
        let k = x.iter().filter(|&&v| v > 0.0).count();
        x.iter()
            .map(|&v| match k {
                0 => -v,
                1 => v.exp(),
                _ => v * k as f32,
            })
            .collect()
    }

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_vec(&[v.len()], v.to_vec()).unwrap()
    }

    #[test]
    fn paths_merge_into_one_graph_that_chooses_at_run_time() {
        let reg = Registry::standard();
        let none = BTreeMap::new();
        let def = counting();
        let ex = [Example::meta(TensorMeta::new(DType::F32, [3]))];
        let inputs = [
            t(&[-1.0, -2.0, -3.0]),
            t(&[1.0, -2.0, -3.0]),
            t(&[1.0, 2.0, 3.0]),
        ];
        let mut paths = Vec::new();
        for x in &inputs[..2] {
            let src = BreakSource {
                data: Some(std::slice::from_ref(x)),
                replay: &[],
            };
            let tr = def.trace_with(&ex, &reg, &none, src).unwrap();
            paths.push(tr.breaks.iter().map(|b| b.value).collect::<Vec<_>>());
        }
        assert_eq!(
            paths,
            [vec![ScalarValue::Int(0)], vec![ScalarValue::Int(1)]]
        );
        let merged = merge(&def, &ex, &reg, &none, &paths).unwrap();
        crate::verify::verify(&merged.graph, &reg).unwrap();
        for x in &inputs[..2] {
            let y = evaluate(&merged.graph, &reg, std::slice::from_ref(x), &none).unwrap();
            assert_eq!(
                y[0].to_vec::<f32>().unwrap(),
                direct(&x.to_vec::<f32>().unwrap())
            );
        }
        // A value no path has seen is a miss at break 0.
        let miss = evaluate(&merged.graph, &reg, &inputs[2..], &none).unwrap_err();
        assert!(matches!(miss, EvalError::BreakMiss { index: 0 }), "{miss}");
        // Adding the third path serves it too; the hash stays the first path's.
        paths.push(vec![ScalarValue::Int(3)]);
        let all = merge(&def, &ex, &reg, &none, &paths).unwrap();
        assert_eq!(all.program_hash, merged.program_hash);
        for x in &inputs {
            let y = evaluate(&all.graph, &reg, std::slice::from_ref(x), &none).unwrap();
            assert_eq!(
                y[0].to_vec::<f32>().unwrap(),
                direct(&x.to_vec::<f32>().unwrap())
            );
        }
    }

    #[test]
    fn a_trace_without_input_values_cannot_break() {
        let reg = Registry::standard();
        let ex = [Example::meta(TensorMeta::new(DType::F32, [3]))];
        let err = counting()
            .trace(&ex, &reg, &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("break 0 needs the inputs' values"), "{err}");
    }
}
