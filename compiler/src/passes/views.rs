//! Launches that move no data become views: a `slice@1` that keeps every
//! element in place, a `transpose@1` that only moves axes of size 1, a
//! `cast@1` to the input's own dtype and a one-input `concat@1` each give
//! their input's bytes in their input's order, so they become
//! [`Op::Reshape`]s (lowered to the host's `view`: no launch, no copy).
//!
//! Exporters leave such ops behind: a slice to `i64::MAX` on every axis
//! (magika has two, of 128k and 260k elements), an `Unsqueeze` then a
//! `Transpose` that swaps the new axis with another of size 1.
//!
//! Whether an op is a view depends on its shapes, so the pass runs only on
//! entries whose shapes are all concrete (a symbolic dim that is 1 or long
//! enough when traced need not be on another call). Nodes whose result is a
//! graph output keep their launch: an output needs storage of its own (see
//! [`super::outputs`]). Regions are left as they are.

use ampoule_kernels::AttrValue;

use crate::ir::{Graph, Op};

/// Turns every view-like launch into a reshape; returns how many.
pub fn launches_to_views(graph: &mut Graph) -> usize {
    let outputs: Vec<_> = graph.outputs.iter().map(|o| o.value).collect();
    let mut views = 0;
    for n in 0..graph.nodes.len() {
        let node = &graph.nodes[n];
        let (&[x], &[y]) = (&node.inputs[..], &node.outputs[..]) else {
            continue;
        };
        let Op::Kernel { kernel, attrs } = &node.op else {
            continue;
        };
        let (from, to) = (graph.meta(x), graph.meta(y));
        if outputs.contains(&y) || from.dtype != to.dtype || from.numel() != to.numel() {
            continue;
        }
        let ints = |k: &str| match attrs.get(k) {
            Some(AttrValue::Ints(v)) => Some(v.clone()),
            _ => None,
        };
        let rank = from.shape.len();
        let view = match kernel.as_str() {
            // Same shape, and a step of 1 along every axis longer than 1
            // (so each such axis starts at 0).
            "slice@1" => {
                let steps = ints("steps").unwrap_or_else(|| vec![1; rank]);
                from.shape == to.shape
                    && ints("starts").is_some_and(|s| s.len() == rank)
                    && steps.len() == rank
                    && from
                        .shape
                        .iter()
                        .zip(&steps)
                        .all(|(&d, &s)| d <= 1 || s == 1)
            }
            // The axes longer than 1 keep their order.
            "transpose@1" => {
                let perm: Vec<i64> = match ints("perm") {
                    Some(p) => p,
                    None if !attrs.contains_key("perm") => (0..rank as i64).rev().collect(),
                    None => continue,
                };
                let long: Vec<i64> = perm
                    .iter()
                    .copied()
                    .filter(|&a| {
                        usize::try_from(a).is_ok_and(|a| from.shape.get(a).is_some_and(|&d| d > 1))
                    })
                    .collect();
                perm.len() == rank && long.windows(2).all(|w| w[0] < w[1])
            }
            "cast@1" => true,
            "concat@1" => from.shape == to.shape,
            _ => false,
        };
        if view {
            graph.nodes[n].op = Op::Reshape;
            views += 1;
        }
    }
    views
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::interp::evaluate;
    use crate::ir::attrs;
    use ampoule_kernels::{DType, Registry, Tensor, TensorMeta};

    fn ints(v: &[i64]) -> AttrValue {
        AttrValue::Ints(v.to_vec())
    }

    /// A graph `x -> kernel -> relu -> y` on `shape`.
    fn one(kernel: &str, at: ampoule_kernels::Attrs, shape: &[usize]) -> Graph {
        let reg = Registry::standard();
        let mut g = Graph::new();
        g.add_input("x", TensorMeta::new(DType::F32, shape));
        let x = g.input(0).unwrap();
        let v = g.kernel(&reg, kernel, at, &[x]).unwrap()[0];
        let relu = attrs([("op", AttrValue::Str("relu".into()))]);
        let y = g.kernel(&reg, "unary@1", relu, &[v]).unwrap()[0];
        g.add_output("y", y);
        g
    }

    /// Runs the pass on `g`; checks the graph stays valid and computes the
    /// same; returns how many launches became views.
    fn views_of(mut g: Graph) -> usize {
        let reg = Registry::standard();
        let shape = g.inputs[0].meta.shape.clone();
        let n: usize = shape.iter().product();
        let x = Tensor::from_vec(&shape, (0..n).map(|i| i as f32 - 7.5).collect()).unwrap();
        let none = BTreeMap::new();
        let before = evaluate(&g, &reg, std::slice::from_ref(&x), &none).unwrap();
        let views = launches_to_views(&mut g);
        crate::verify::verify(&g, &reg).unwrap();
        let after = evaluate(&g, &reg, &[x], &none).unwrap();
        assert_eq!(before[0].bytes(), after[0].bytes());
        assert_eq!(before[0].meta(), after[0].meta());
        views
    }

    #[test]
    fn whole_slices_and_unit_transposes_become_views() {
        let big = i64::MAX;
        let whole = attrs([("starts", ints(&[0, 0, 0])), ("ends", ints(&[big, big, 1]))]);
        assert_eq!(views_of(one("slice@1", whole, &[2, 3, 1])), 1);
        // A unit axis with any step is still the whole of it.
        let unit = attrs([
            ("starts", ints(&[0, -1])),
            ("ends", ints(&[big, i64::MIN])),
            ("steps", ints(&[1, -1])),
        ]);
        assert_eq!(views_of(one("slice@1", unit, &[4, 1])), 1);
        let swap_units = attrs([("perm", ints(&[0, 2, 1, 3]))]);
        assert_eq!(views_of(one("transpose@1", swap_units, &[1, 5, 1, 3])), 1);
        let to_f32 = attrs([("to", AttrValue::Str("f32".into()))]);
        assert_eq!(views_of(one("cast@1", to_f32, &[3])), 1);
    }

    #[test]
    fn launches_that_move_data_stay() {
        let big = i64::MAX;
        let part = attrs([("starts", ints(&[1, 0])), ("ends", ints(&[big, big]))]);
        assert_eq!(views_of(one("slice@1", part, &[3, 2])), 0);
        let reversed = attrs([
            ("starts", ints(&[-1, 0])),
            ("ends", ints(&[i64::MIN, big])),
            ("steps", ints(&[-1, 1])),
        ]);
        assert_eq!(views_of(one("slice@1", reversed, &[3, 2])), 0);
        let swap = attrs([("perm", ints(&[0, 2, 1]))]);
        assert_eq!(views_of(one("transpose@1", swap, &[1, 2, 3])), 0);
        // Reversing dims when two are longer than 1.
        assert_eq!(views_of(one("transpose@1", attrs([]), &[2, 1, 3])), 0);
        let to_f64 = attrs([("to", AttrValue::Str("f64".into()))]);
        assert_eq!(views_of(one("cast@1", to_f64, &[3])), 0);
    }

    #[test]
    fn outputs_keep_their_storage() {
        let reg = Registry::standard();
        let mut g = Graph::new();
        g.add_input("x", TensorMeta::new(DType::F32, [2, 1]));
        let x = g.input(0).unwrap();
        let relu = attrs([("op", AttrValue::Str("relu".into()))]);
        let r = g.kernel(&reg, "unary@1", relu, &[x]).unwrap()[0];
        let t = g
            .kernel(&reg, "transpose@1", attrs([("perm", ints(&[1, 0]))]), &[r])
            .unwrap()[0];
        g.add_output("y", t);
        assert_eq!(launches_to_views(&mut g), 0);
    }
}
