//! Weight layouts: `linear@1` launches of a few rows get their weight as
//! column panels.
//!
//! A product of a few rows (a transformer's linear layers at a short
//! sequence, a recurrent step, a classifier head) does little arithmetic per
//! weight element, so its time goes to streaming the weight from memory: a
//! model's weights rarely stay in cache between calls. In `linear@1`'s
//! `[K, N]` (or `[N, K]`) layout, gemm reads a narrow strip of every one of
//! the weight's K rows, a new page every few rows. `panels@1` lays the
//! weight out as `[ceil(N / W), K, W]` blocks that each tile of the product
//! reads front to back, which is what onnxruntime's pre-packed weights do
//! too.
//!
//! [`pack_linear_weights`] rewrites each float `linear@1` whose weight is
//! weight-only (see [`super::hoist`]) and whose input has at most
//! [`MAX_ROWS`] rows into `panels@1` on the weight, placed just before its
//! first use, and `linear_panels@1`. It runs on entries without symbolic
//! dims only (the choice depends on the number of rows), after hoisting,
//! which then runs again and moves `panels@1` into the wrapper's `init`: the layout change runs once per instance, and the
//! package keeps its weights as the model gave them. A weight read by
//! several launches is laid out once. Values do not change: the reference
//! `linear_panels@1` sums the same terms in the same order as `linear@1`.

use std::collections::HashMap;

use ampoule_kernels::{AttrValue, DType, Registry};

use super::hoist::weight_only;
use super::PassError;
use crate::ir::{attrs, Graph, Node, Op, ValueId};

/// Columns per panel: the height of gemm's f32 AVX2 microkernel (two
/// 8-lane vectors), so each microkernel call reads one contiguous block.
pub const PANEL_WIDTH: i64 = 16;

/// Products of at most this many rows get panels. Measured on a MiniLM
/// encoder's weight shapes (384 × 384, 384 × 1536, 1536 × 384), weights
/// cold: panels cut the time of 32-row products by about a third; from 64
/// rows on, the weight is reused enough that the layout no longer matters.
pub const MAX_ROWS: usize = 32;

/// Each panel is one gemm call, so a panel's work (rows × K multiply-adds
/// per column) must outweigh the call: products with less keep their
/// layout (a recurrent step's single row, a small classifier head).
pub const MIN_ROWS_TIMES_K: usize = 4096;

/// Weights smaller than this stay in cache between calls, where the layout
/// does not matter.
pub const MIN_WEIGHT_BYTES: usize = 256 << 10;

/// Rewrites the short `linear@1` launches as described in the module doc;
/// returns how many.
pub fn pack_linear_weights(graph: &mut Graph, registry: &Registry) -> Result<usize, PassError> {
    let early = weight_only(graph);
    let mut weight_value = vec![false; graph.values.len()];
    for (node, e) in graph.nodes.iter().zip(&early) {
        for o in &node.outputs {
            weight_value[o.index()] = *e;
        }
    }
    let nodes = std::mem::take(&mut graph.nodes);
    let mut out: Vec<Node> = Vec::with_capacity(nodes.len());
    let mut panels: HashMap<(ValueId, bool), ValueId> = HashMap::new();
    let mut count = 0;
    for mut node in nodes {
        let Some((trans, bias, n)) = short_linear(graph, &node, &weight_value) else {
            out.push(node);
            continue;
        };
        let w = node.inputs[1];
        let packed = match panels.get(&(w, trans)) {
            Some(&v) => v,
            None => {
                let at = attrs([
                    ("width", AttrValue::Int(PANEL_WIDTH)),
                    ("trans", AttrValue::Int(i64::from(trans))),
                ]);
                // `kernel` appends to `graph.nodes`, empty while we rebuild.
                let v =
                    graph
                        .kernel(registry, "panels@1", at, &[w])
                        .map_err(|e| PassError::Other {
                            pass: "pack_linear_weights",
                            message: e.to_string(),
                        })?[0];
                out.append(&mut graph.nodes);
                panels.insert((w, trans), v);
                v
            }
        };
        node.op = Op::kernel(
            "linear_panels@1",
            attrs([
                ("n", AttrValue::Int(n)),
                ("bias", AttrValue::Int(i64::from(bias))),
            ]),
        );
        node.inputs[1] = packed;
        out.push(node);
        count += 1;
    }
    graph.nodes = out;
    Ok(count)
}

/// `(trans_w, bias, N)` of a float `linear@1` whose weight is weight-only,
/// within the limits above.
fn short_linear(graph: &Graph, node: &Node, weight_value: &[bool]) -> Option<(bool, bool, i64)> {
    let Op::Kernel { kernel, attrs } = &node.op else {
        return None;
    };
    if kernel != "linear@1" {
        return None;
    }
    let flag = |name: &str| match attrs.get(name) {
        None => Some(false),
        Some(AttrValue::Int(0)) => Some(false),
        Some(AttrValue::Int(1)) => Some(true),
        Some(_) => None,
    };
    let (trans, bias) = (flag("trans_w")?, flag("bias")?);
    let (&x, &w, &y) = (
        node.inputs.first()?,
        node.inputs.get(1)?,
        node.outputs.first()?,
    );
    if !weight_value.get(w.index()).copied().unwrap_or(false) {
        return None;
    }
    let x = graph.try_meta(x)?;
    if !matches!(x.dtype, DType::F32 | DType::F64) {
        return None;
    }
    let k = *x.shape.last()?;
    let rows = x.numel()?.checked_div(k)?;
    let n = *graph.try_meta(y)?.shape.last()?;
    let weight_bytes = k.checked_mul(n)?.checked_mul(x.dtype.size())?;
    let worth = rows <= MAX_ROWS
        && rows.saturating_mul(k) >= MIN_ROWS_TIMES_K
        && weight_bytes >= MIN_WEIGHT_BYTES;
    worth.then_some((trans, bias, i64::try_from(n).ok()?))
}

#[cfg(test)]
mod tests {
    use ampoule_kernels::{Tensor, TensorMeta};

    use super::*;
    use crate::interp::evaluate;
    use crate::ir::{GlobalDef, GlobalSource};
    use crate::passes::hoist::{hoist_weight_only, init_prefix};
    use crate::verify::verify;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|t| {
                ((t as u32).wrapping_mul(2654435761).wrapping_add(seed) % 97) as f32 / 48.0 - 1.0
            })
            .collect()
    }

    /// The smallest K and N that get panels (at `MAX_ROWS` rows).
    const K: usize = MIN_ROWS_TIMES_K / MAX_ROWS;
    const N: usize = (MIN_WEIGHT_BYTES / 4).div_ceil(K) + 3;

    /// `x [rows, k]` times an embedded weight (`[k, n]`, or `[n, k]` with
    /// `trans`), twice on the same weight, plus a bias.
    fn graph(rows: usize, (k, n): (usize, usize), trans: bool) -> Graph {
        let r = Registry::standard();
        let mut g = Graph::new();
        let wshape = if trans { [n, k] } else { [k, n] };
        let wt = Tensor::from_vec(&wshape, values(k * n, 1)).unwrap();
        let bt = Tensor::from_vec(&[n], values(n, 2)).unwrap();
        let i = g.add_input("x", TensorMeta::new(DType::F32, [rows, k]));
        let x = g.input(i).unwrap();
        let mut global = |name: &str, t: Tensor| {
            let id = g.add_global(GlobalDef {
                name: name.to_string(),
                meta: t.meta().clone(),
                source: GlobalSource::Embedded(t),
            });
            g.global(id).unwrap()
        };
        let w = global("w", wt);
        let b = global("b", bt);
        let la = |bias: i64| {
            attrs([
                ("trans_w", AttrValue::Int(i64::from(trans))),
                ("bias", AttrValue::Int(bias)),
            ])
        };
        let y0 = g.kernel(&r, "linear@1", la(1), &[x, w, b]).unwrap()[0];
        let y1 = g.kernel(&r, "linear@1", la(0), &[x, w]).unwrap()[0];
        g.add_output("y0", y0);
        g.add_output("y1", y1);
        g
    }

    fn kernels(g: &Graph) -> Vec<&str> {
        g.nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Kernel { kernel, .. } => Some(kernel.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn short_products_get_panels_once_per_weight_and_the_same_values() {
        let r = Registry::standard();
        for trans in [false, true] {
            let before = graph(MAX_ROWS, (K, N), trans);
            let mut after = before.clone();
            assert_eq!(pack_linear_weights(&mut after, &r).unwrap(), 2);
            verify(&after, &r).unwrap();
            assert_eq!(
                kernels(&after),
                ["panels@1", "linear_panels@1", "linear_panels@1"]
            );
            // The reference kernels sum in the same order: equal bits.
            let x = [Tensor::from_vec(&[MAX_ROWS, K], values(MAX_ROWS * K, 3)).unwrap()];
            let none = Default::default();
            let want = evaluate(&before, &r, &x, &none).unwrap();
            let got = evaluate(&after, &r, &x, &none).unwrap();
            assert_eq!(got.len(), 2);
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.shape(), w.shape());
                assert_eq!(g.bytes(), w.bytes(), "trans={trans}");
            }
            // The layout change reads only a weight: hoisting puts it in `init`.
            hoist_weight_only(&mut after);
            assert_eq!(kernels(&after)[0], "panels@1");
            assert!(init_prefix(&after) >= 1);
        }
    }

    #[test]
    fn tall_tiny_and_input_weight_products_keep_their_layout() {
        let r = Registry::standard();
        for (rows, dims) in [
            (MAX_ROWS + 1, (K, N)),
            (MAX_ROWS / 2, (K, N)),
            (MAX_ROWS, (K, N - 8)),
        ] {
            let mut g = graph(rows, dims, false);
            assert_eq!(
                pack_linear_weights(&mut g, &r).unwrap(),
                0,
                "{rows} rows, {dims:?}"
            );
            assert_eq!(kernels(&g), ["linear@1", "linear@1"]);
        }

        // A weight that is a function input is not weight-only.
        let mut g = Graph::new();
        let x = g.add_input("x", TensorMeta::new(DType::F32, [2, 8]));
        let w = g.add_input("w", TensorMeta::new(DType::F32, [8, 4]));
        let (x, w) = (g.input(x).unwrap(), g.input(w).unwrap());
        let y = g.kernel(&r, "linear@1", attrs([]), &[x, w]).unwrap()[0];
        g.add_output("y", y);
        assert_eq!(pack_linear_weights(&mut g, &r).unwrap(), 0);
    }
}
