//! Memory planning: every value a kernel writes gets a planned buffer,
//! allocated by the host once per instance, so a static entry makes no
//! allocation call per run.
//!
//! Storage and liveness:
//! - a value's *storage root* is the value itself, or for a reshape the root
//!   of its input (a reshape is a view of the same storage);
//! - a root is live from the node that defines it to the last node that reads
//!   it or any view of it;
//! - roots of graph outputs are *pinned*: live to the end of the run and
//!   beyond (the caller takes their storage), so their buffers are never
//!   shared;
//! - so are roots the weight-only prefix ([`super::hoist::init_prefix`])
//!   defines and a later node reads: `init` writes them once, and every run
//!   reads them.
//!
//! The plan is greedy, in node order: a kernel output takes a free buffer of
//! exactly its dtype and byte size (the first one freed, for determinism),
//! else a new buffer of its own meta; after the node's outputs are placed,
//! the buffers of roots whose last use is this node become free. Placing
//! outputs before freeing inputs keeps a kernel's outputs from aliasing its
//! inputs. Invariants (checked by the property test in
//! `tests/memory_plan.rs`):
//! - two roots whose live ranges overlap never share a buffer;
//! - a pinned root's buffer holds nothing else;
//! - a value's buffer has the value's dtype and byte size (its shape may
//!   differ: lowering then views the buffer with the value's shape).

use ampoule_kernels::TensorMeta;

use crate::ir::{Graph, Op, ValueId};

/// Where each kernel output lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The planned buffers, in plan order.
    pub buffers: Vec<TensorMeta>,
    /// For each value: its buffer, if it is a kernel output.
    pub buffer_of: Vec<Option<u32>>,
}

/// Live ranges of storage roots, in node indices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// For each value: its storage root.
    pub root: Vec<ValueId>,
    /// For each root: the node that defines it.
    pub def: Vec<usize>,
    /// For each root: the last node that reads it or a view of it
    /// (`usize::MAX` if pinned).
    pub last_use: Vec<usize>,
}

impl Liveness {
    /// Computes roots and live ranges of a verified graph.
    pub fn of(graph: &Graph) -> Liveness {
        let producers = graph.producers();
        let root: Vec<ValueId> = (0..graph.values.len())
            .map(|v| graph.storage_root(ValueId(v as u32), &producers))
            .collect();
        let def: Vec<usize> = producers.iter().map(|p| p.unwrap_or(0)).collect();
        let mut last_use = def.clone();
        for (n, node) in graph.nodes.iter().enumerate() {
            for v in &node.inputs {
                let r = root[v.index()].index();
                last_use[r] = last_use[r].max(n);
            }
        }
        for o in &graph.outputs {
            last_use[root[o.value.index()].index()] = usize::MAX;
        }
        let prefix = super::hoist::init_prefix(graph);
        for node in &graph.nodes[prefix..] {
            for v in &node.inputs {
                let r = root[v.index()].index();
                if def[r] < prefix {
                    last_use[r] = usize::MAX;
                }
            }
        }
        Liveness {
            root,
            def,
            last_use,
        }
    }

    /// Whether the live ranges of roots `a` and `b` overlap.
    pub fn overlap(&self, a: ValueId, b: ValueId) -> bool {
        let (a, b) = (a.index(), b.index());
        self.def[a] <= self.last_use[b] && self.def[b] <= self.last_use[a]
    }
}

/// Plans buffers for a verified graph (see the module doc).
pub fn plan_memory(graph: &Graph) -> MemoryPlan {
    plan_memory_except(graph, &|_| false)
}

/// [`plan_memory`] for the kernel outputs that `skip` does not name (values
/// of dynamic shape, which the wrapper allocates per run).
pub fn plan_memory_except(graph: &Graph, skip: &dyn Fn(ValueId) -> bool) -> MemoryPlan {
    let live = Liveness::of(graph);
    let mut buffers: Vec<TensorMeta> = Vec::new();
    let mut buffer_of: Vec<Option<u32>> = vec![None; graph.values.len()];
    let mut free: Vec<u32> = Vec::new();
    let mut freed = vec![false; graph.values.len()];
    for (n, node) in graph.nodes.iter().enumerate() {
        if !matches!(node.op, Op::Kernel { .. }) {
            continue;
        }
        for &o in &node.outputs {
            if skip(o) {
                continue;
            }
            let meta = graph.meta(o);
            let pinned = live.last_use[o.index()] == usize::MAX;
            let reuse = if pinned {
                None
            } else {
                free.iter().position(|&b| {
                    let m = &buffers[b as usize];
                    m.dtype == meta.dtype && m.byte_len() == meta.byte_len()
                })
            };
            let b = match reuse {
                Some(i) => free.remove(i),
                None => {
                    buffers.push(meta.clone());
                    (buffers.len() - 1) as u32
                }
            };
            buffer_of[o.index()] = Some(b);
        }
        for v in node.inputs.iter().chain(&node.outputs) {
            let r = live.root[v.index()];
            if live.last_use[r.index()] == n && !freed[r.index()] {
                if let Some(b) = buffer_of[r.index()] {
                    freed[r.index()] = true;
                    free.push(b);
                }
            }
        }
    }
    MemoryPlan { buffers, buffer_of }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::attrs;
    use ampoule_kernels::{AttrValue, DType, Registry};

    #[test]
    fn a_chain_ping_pongs_between_two_buffers() {
        let reg = Registry::standard();
        let mut g = Graph::new();
        g.add_input("x", TensorMeta::new(DType::F32, [4, 4]));
        let mut v = g.input(0).unwrap();
        for op in ["exp", "neg", "tanh", "sin", "cos"] {
            v = g
                .kernel(
                    &reg,
                    "unary@1",
                    attrs([("op", AttrValue::Str(op.into()))]),
                    &[v],
                )
                .unwrap()[0];
        }
        let r = g.reshape(v, &[16]).unwrap();
        let y = g
            .kernel(
                &reg,
                "unary@1",
                attrs([("op", AttrValue::Str("relu".into()))]),
                &[r],
            )
            .unwrap()[0];
        g.add_output("y", y);
        let plan = plan_memory(&g);
        let bufs: Vec<Option<u32>> = plan.buffer_of.clone();
        // v0 input; v1..v5 alternate between buffers 0 and 1; v6 is a view;
        // v7 is the output, pinned in a buffer of its own.
        assert_eq!(
            bufs,
            [
                None,
                Some(0),
                Some(1),
                Some(0),
                Some(1),
                Some(0),
                None,
                Some(2)
            ]
        );
        assert_eq!(plan.buffers.len(), 3);
        assert_eq!(plan.buffers[2].shape, [16]);
    }

    #[test]
    fn a_view_keeps_its_base_alive() {
        let reg = Registry::standard();
        let mut g = Graph::new();
        g.add_input("x", TensorMeta::new(DType::F32, [2, 2]));
        let x = g.input(0).unwrap();
        let op = |o: &str| attrs([("op", AttrValue::Str(o.into()))]);
        let a = g.kernel(&reg, "unary@1", op("exp"), &[x]).unwrap()[0];
        let view = g.reshape(a, &[4]).unwrap();
        let b = g.kernel(&reg, "unary@1", op("neg"), &[x]).unwrap()[0];
        let c = g.kernel(&reg, "unary@1", op("neg"), &[b]).unwrap()[0];
        let cv = g.reshape(c, &[4]).unwrap();
        let add = attrs([("op", AttrValue::Str("add".into()))]);
        let y = g.kernel(&reg, "binary@1", add, &[view, cv]).unwrap()[0];
        g.add_output("y", y);
        let plan = plan_memory(&g);
        let live = Liveness::of(&g);
        assert_eq!(live.root[view.index()], a);
        assert_eq!(live.last_use[a.index()], 6);
        // `a` stays live through the view, so `b` and `c` cannot take its buffer.
        let ba = plan.buffer_of[a.index()];
        assert_ne!(plan.buffer_of[b.index()], ba);
        assert_ne!(plan.buffer_of[c.index()], ba);
    }
}
