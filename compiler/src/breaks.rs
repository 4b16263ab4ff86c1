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

use crate::ir::{same_op, GlobalSource, Graph, Node, Op, ValueId};
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
    same_op(ga, &a.op, gb, &b.op) && a.inputs == b.inputs && metas(ga, a) == metas(gb, b)
}
