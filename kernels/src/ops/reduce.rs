//! `reduce@1`: sum, mean, max and min over a set of axes.
//!
//! Attributes: `op` (required); `axes` (default `[]`, meaning all axes;
//! negative axes count from the end; duplicates are refused); `keepdims`
//! (default 0: reduced dims are removed; 1: they stay with size 1).
//! `sum` takes floats and ints, `max` and `min` floats, ints and bools,
//! `mean` floats. Integer sums wrap. Float max and min propagate NaN. On
//! bools `max` is "any" and `min` is "all" (false < true). Reducing an empty
//! set gives the op's identity, as in ONNX: 0 for sum, `-inf` (or the type's
//! minimum, `false`) for max, `+inf` (or the maximum, `true`) for min, and
//! NaN (0/0) for mean.
//!
//! The reference accumulates every input element into its output slot, in
//! input order. The optimized implementation handles the common layouts,
//! where the reduced axes are adjacent (`[outer, reduced, inner]`): with
//! `inner` = 1 it folds each contiguous row with eight accumulators (float
//! sums then differ from the reference by rounding), otherwise it
//! accumulates whole inner rows, in the reference's order. Both split across
//! rayon's pool from [`PAR_MIN`] elements. Other layouts use the reference.

use std::sync::Arc;

use rayon::prelude::*;

use super::attrs::AttrReader;
use super::num::{Arith, Float};
use super::shape::{normalize_axis, offset_of, strides};
use super::{bound, data, data_mut, operands, raw, raw_mut, worth_splitting, Op, PAR_MIN};
use crate::{Attrs, Bound, DType, Impl, KernelError, Tensor, TensorMeta};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReduceOp {
    Sum,
    Mean,
    Max,
    Min,
}

const OPS: [(&str, ReduceOp); 4] = [
    ("sum", ReduceOp::Sum),
    ("mean", ReduceOp::Mean),
    ("max", ReduceOp::Max),
    ("min", ReduceOp::Min),
];

pub(crate) fn bind(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("reduce@1", attrs);
    let op = r.choice("op", &OPS)?;
    let axes = r.ints("axes", Some(Vec::new()))?;
    let keepdims = r.flag("keepdims", false)?;
    r.finish()?;
    let name = OPS
        .iter()
        .find(|(_, o)| *o == op)
        .map(|(n, _)| *n)
        .unwrap_or("?");
    Ok(bound(Reduce {
        op,
        axes,
        keepdims,
        label: format!("reduce@1 ({name})"),
    }))
}

struct Reduce {
    op: ReduceOp,
    axes: Vec<i64>,
    keepdims: bool,
    label: String,
}

impl Reduce {
    /// Which dims of a rank-`rank` input are reduced.
    fn reduced(&self, rank: usize) -> Result<Vec<bool>, String> {
        let mut mask = vec![self.axes.is_empty(); rank];
        for &a in &self.axes {
            let d = normalize_axis(a, rank, "attribute `axes`: axis")?;
            if std::mem::replace(&mut mask[d], true) {
                return Err(format!(
                    "attribute `axes` {:?} names dim {d} twice",
                    self.axes
                ));
            }
        }
        Ok(mask)
    }
}

impl Op for Reduce {
    fn label(&self) -> &str {
        &self.label
    }

    fn input_names(&self) -> &[&'static str] {
        &["x"]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        let [x] = operands(inputs)?;
        let ok = match self.op {
            ReduceOp::Mean => x.dtype.is_float(),
            ReduceOp::Sum => x.dtype.is_float() || x.dtype.is_int(),
            ReduceOp::Max | ReduceOp::Min => {
                x.dtype.is_float() || x.dtype.is_int() || x.dtype == DType::Bool
            }
        };
        if !ok {
            let expected = match self.op {
                ReduceOp::Mean => "a float dtype",
                ReduceOp::Sum => "a float or int dtype",
                ReduceOp::Max | ReduceOp::Min => "a float, int or bool dtype",
            };
            return Err(format!(
                "{}: expected {expected}, got {}",
                self.input(0),
                x.dtype
            ));
        }
        let mask = self.reduced(x.shape.len())?;
        let shape = x
            .shape
            .iter()
            .zip(&mask)
            .filter_map(|(&d, &r)| match (r, self.keepdims) {
                (false, _) => Some(d),
                (true, true) => Some(1),
                (true, false) => None,
            })
            .collect::<Vec<_>>();
        Ok(TensorMeta::new(x.dtype, shape))
    }

    fn compute(&self, imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        let [x] = operands(inputs)?;
        let mask = self.reduced(x.shape().len())?;
        if out.dtype() == DType::Bool {
            return reduce_bool(self.op, imp, x, &mask, out);
        }
        super::with_number!(out.dtype(), T => reduce_typed::<T>(self.op, imp, x, &mask, out))?;
        if self.op == ReduceOp::Mean {
            let count: usize = x
                .shape()
                .iter()
                .zip(&mask)
                .filter(|(_, &r)| r)
                .map(|(&d, _)| d)
                .product();
            super::with_float!(out.dtype(), T => divide::<T>(out, count))?;
        }
        Ok(())
    }
}

fn divide<T: Float>(out: &mut Tensor, count: usize) -> Result<(), String> {
    let n = T::from_usize(count);
    for v in data_mut::<T>(out)? {
        *v = *v / n;
    }
    Ok(())
}

fn reduce_typed<T: Arith>(
    op: ReduceOp,
    imp: Impl,
    x: &Tensor,
    mask: &[bool],
    out: &mut Tensor,
) -> Result<(), String> {
    let xv = data::<T>(x, "input 0 (x)")?;
    let y = data_mut::<T>(out)?;
    match op {
        ReduceOp::Sum | ReduceOp::Mean => run(imp, xv, x.shape(), mask, y, T::ZERO, T::add),
        ReduceOp::Max => run(imp, xv, x.shape(), mask, y, T::LOWEST, T::max),
        ReduceOp::Min => run(imp, xv, x.shape(), mask, y, T::HIGHEST, T::min),
    }
}

/// Max ("any") and min ("all") of bools, as 0/1 bytes: every nonzero input
/// byte counts as true, and the output holds only 0 and 1.
fn reduce_bool(
    op: ReduceOp,
    imp: Impl,
    x: &Tensor,
    mask: &[bool],
    out: &mut Tensor,
) -> Result<(), String> {
    let xv = raw::<u8>(x, "input 0 (x)")?;
    let y = raw_mut::<u8>(out)?;
    let shape = x.shape();
    match op {
        ReduceOp::Max => run(imp, xv, shape, mask, y, 0, |a, v| a.max(v.min(1))),
        ReduceOp::Min => run(imp, xv, shape, mask, y, 1, |a, v| a.min(v.min(1))),
        ReduceOp::Sum | ReduceOp::Mean => {
            Err(format!("internal: reduce {op:?} reached the bool path"))
        }
    }
}

fn run<T: Arith>(
    imp: Impl,
    x: &[T],
    shape: &[usize],
    mask: &[bool],
    y: &mut [T],
    init: T,
    f: impl Fn(T, T) -> T + Sync + Send + Copy,
) -> Result<(), String> {
    y.fill(init);
    if y.is_empty() || x.is_empty() {
        return Ok(());
    }
    if imp == Impl::Optimized {
        if let Some((outer, len, inner)) = adjacent_layout(shape, mask) {
            return optimized(x, (outer, len, inner), y, init, f);
        }
    }
    // Output strides over the input's dims: 0 on reduced dims.
    let kept: Vec<usize> = shape
        .iter()
        .zip(mask)
        .filter(|(_, &r)| !r)
        .map(|(&d, _)| d)
        .collect();
    let kept_strides = strides(&kept);
    let mut it = kept_strides.iter();
    let out_strides: Vec<usize> = mask
        .iter()
        .map(|&r| {
            if r {
                0
            } else {
                it.next().copied().unwrap_or(0)
            }
        })
        .collect();
    for (i, &v) in x.iter().enumerate() {
        let slot = y
            .get_mut(offset_of(i, shape, &out_strides))
            .ok_or_else(|| {
                format!("internal: reduction slot outside the output at input element {i}")
            })?;
        *slot = f(*slot, v);
    }
    Ok(())
}

/// `(outer, reduced, inner)` when the reduced dims (ignoring size-1 dims)
/// are adjacent.
fn adjacent_layout(shape: &[usize], mask: &[bool]) -> Option<(usize, usize, usize)> {
    let dims: Vec<(usize, bool)> = shape
        .iter()
        .copied()
        .zip(mask.iter().copied())
        .filter(|&(d, _)| d != 1)
        .collect();
    let first = dims.iter().position(|&(_, r)| r).unwrap_or(dims.len());
    let end = dims[first..]
        .iter()
        .position(|&(_, r)| !r)
        .map_or(dims.len(), |p| first + p);
    if dims[end..].iter().any(|&(_, r)| r) {
        return None;
    }
    let prod = |s: &[(usize, bool)]| s.iter().map(|&(d, _)| d).product();
    Some((
        prod(&dims[..first]),
        prod(&dims[first..end]),
        prod(&dims[end..]),
    ))
}

/// Eight-accumulator fold of a contiguous row.
#[inline]
fn lane_fold<T: Copy>(xs: &[T], init: T, f: impl Fn(T, T) -> T) -> T {
    let mut acc = [init; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = f(*a, v);
        }
    }
    let tail = chunks.remainder().iter().fold(init, |a, &v| f(a, v));
    let lanes = f(
        f(f(acc[0], acc[4]), f(acc[1], acc[5])),
        f(f(acc[2], acc[6]), f(acc[3], acc[7])),
    );
    f(lanes, tail)
}

fn optimized<T: Arith>(
    x: &[T],
    (outer, len, inner): (usize, usize, usize),
    y: &mut [T],
    init: T,
    f: impl Fn(T, T) -> T + Sync + Send + Copy,
) -> Result<(), String> {
    let block = len * inner;
    if y.len() != outer * inner || x.len() != outer * block || inner == 0 || len == 0 {
        return Err(format!(
            "internal: reduce layout {outer}x{len}x{inner} does not fit the operands"
        ));
    }
    let parallel = worth_splitting(x.len(), PAR_MIN);
    if inner == 1 {
        let row = |(slot, xr): (&mut T, &[T])| *slot = lane_fold(xr, init, f);
        if parallel {
            y.par_iter_mut()
                .zip(x.par_chunks(len))
                .with_min_len((PAR_MIN / 4 / len).max(1))
                .for_each(row);
        } else {
            y.iter_mut().zip(x.chunks(len)).for_each(row);
        }
        return Ok(());
    }
    let blockwise = |(yb, xb): (&mut [T], &[T])| {
        for xr in xb.chunks_exact(inner) {
            for (slot, &v) in yb.iter_mut().zip(xr) {
                *slot = f(*slot, v);
            }
        }
    };
    if parallel && outer > 1 {
        y.par_chunks_mut(inner)
            .zip(x.par_chunks(block))
            .for_each(blockwise);
    } else if parallel {
        // One block: split the inner dim instead.
        let piece = (PAR_MIN / 16).max(1);
        y.par_chunks_mut(piece).enumerate().for_each(|(p, yp)| {
            for xr in x.chunks_exact(inner) {
                for (slot, &v) in yp.iter_mut().zip(&xr[p * piece..]) {
                    *slot = f(*slot, v);
                }
            }
        });
    } else {
        y.chunks_mut(inner).zip(x.chunks(block)).for_each(blockwise);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::*;
    use super::adjacent_layout;
    use crate::{Bool8, DType, Impl, KernelError, Tensor, TensorMeta};

    fn reduce(
        op: &str,
        axes: &[i64],
        keepdims: bool,
        x: &Tensor,
        imp: Impl,
    ) -> Result<Tensor, KernelError> {
        let at = attrs(&[
            ("op", s(op)),
            ("axes", ints(axes)),
            ("keepdims", i(keepdims as i64)),
        ]);
        launch("reduce@1", &at, &[x], imp)
    }

    #[test]
    fn reduces_against_direct_computation() {
        // x[i, j, k] = i*100 + j*10 + k over [2, 3, 4].
        let vals: Vec<f64> = (0..24)
            .map(|t| ((t / 12) * 100 + (t / 4 % 3) * 10 + t % 4) as f64)
            .collect();
        let x = Tensor::from_vec(&[2, 3, 4], vals.clone()).unwrap();
        for imp in IMPLS {
            let y = reduce("sum", &[1], false, &x, imp).unwrap();
            assert_eq!(y.shape(), &[2, 4]);
            let want: Vec<f64> = (0..8)
                .map(|t| (0..3).map(|j| vals[(t / 4) * 12 + j * 4 + t % 4]).sum())
                .collect();
            assert_eq!(f64s(&y), want);
            let y = reduce("mean", &[-1, 0], true, &x, imp).unwrap();
            assert_eq!(y.shape(), &[1, 3, 1]);
            assert_eq!(f64s(&y), vec![51.5, 61.5, 71.5]);
            let y = reduce("max", &[], false, &x, imp).unwrap();
            assert_eq!((y.shape().to_vec(), f64s(&y)), (vec![], vec![123.0]));
            let y = reduce("min", &[0, 2], false, &x, imp).unwrap();
            assert_eq!(f64s(&y), vec![0.0, 10.0, 20.0]);
            let xi = Tensor::from_vec(&[2, 2], vec![i8::MAX, 1, -3, 4]).unwrap();
            let y = reduce("sum", &[1], false, &xi, imp).unwrap();
            assert_eq!(y.to_vec::<i8>().unwrap(), vec![i8::MIN, 1]);
            // Empty reductions give the identity.
            let e = Tensor::zeros(DType::F32, &[2, 0]).unwrap();
            assert_eq!(
                reduce("sum", &[1], false, &e, imp)
                    .unwrap()
                    .to_vec::<f32>()
                    .unwrap(),
                vec![0.0; 2]
            );
            assert_eq!(
                reduce("max", &[1], false, &e, imp)
                    .unwrap()
                    .to_vec::<f32>()
                    .unwrap(),
                vec![f32::NEG_INFINITY; 2]
            );
            assert!(reduce("mean", &[1], false, &e, imp)
                .unwrap()
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .all(|v| v.is_nan()));
            let ei = Tensor::zeros(DType::I32, &[0, 3]).unwrap();
            assert_eq!(
                reduce("min", &[0], false, &ei, imp)
                    .unwrap()
                    .to_vec::<i32>()
                    .unwrap(),
                vec![i32::MAX; 3]
            );
            let nan = Tensor::from_vec(&[3], vec![1.0f32, f32::NAN, 2.0]).unwrap();
            assert!(reduce("max", &[], false, &nan, imp)
                .unwrap()
                .to_vec::<f32>()
                .unwrap()[0]
                .is_nan());
        }
    }

    /// Bool max is "any" and min is "all" over the reduced axes.
    #[test]
    fn bool_max_is_any_and_min_is_all() {
        let bits = [1u8, 0, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0];
        let x = Tensor::from_vec(&[2, 3, 2], bits.iter().map(|&b| Bool8(b)).collect()).unwrap();
        let at = |i: usize, j: usize, k: usize| bits[i * 6 + j * 2 + k] == 1;
        for imp in IMPLS {
            for axes in [vec![1i64], vec![0, 2], vec![], vec![-1]] {
                let mask: Vec<bool> = (0..3i64)
                    .map(|d| axes.is_empty() || axes.iter().any(|&a| (a + 3) % 3 == d))
                    .collect();
                for (op, any) in [("max", true), ("min", false)] {
                    let y = reduce(op, &axes, true, &x, imp).unwrap();
                    assert_eq!(y.dtype(), DType::Bool);
                    let dims: Vec<usize> = y.shape().to_vec();
                    let got = y.to_vec::<Bool8>().unwrap();
                    let mut want = Vec::new();
                    for i in 0..dims[0] {
                        for j in 0..dims[1] {
                            for k in 0..dims[2] {
                                let mut vals = Vec::new();
                                for a in 0..2 {
                                    for b in 0..3 {
                                        for c in 0..2 {
                                            let keep = (mask[0] || a == i)
                                                && (mask[1] || b == j)
                                                && (mask[2] || c == k);
                                            if keep {
                                                vals.push(at(a, b, c));
                                            }
                                        }
                                    }
                                }
                                let v = if any {
                                    vals.iter().any(|&v| v)
                                } else {
                                    vals.iter().all(|&v| v)
                                };
                                want.push(Bool8(u8::from(v)));
                            }
                        }
                    }
                    assert_eq!(got, want, "{op} over {axes:?} ({imp:?})");
                }
            }
            // Empty reductions: max (any) is false, min (all) is true.
            let e = Tensor::zeros(DType::Bool, &[2, 0]).unwrap();
            let y = reduce("max", &[1], false, &e, imp).unwrap();
            assert_eq!(y.to_vec::<Bool8>().unwrap(), vec![Bool8(0); 2]);
            let y = reduce("min", &[1], false, &e, imp).unwrap();
            assert_eq!(y.to_vec::<Bool8>().unwrap(), vec![Bool8(1); 2]);
        }
        let b = TensorMeta::new(DType::Bool, [2]);
        for op in ["sum", "mean"] {
            let err = bind("reduce@1", &attrs(&[("op", s(op))]))
                .unwrap()
                .check(&[&b])
                .unwrap_err();
            assert!(err.to_string().contains("got bool"), "{err}");
        }
    }

    #[test]
    fn signature_errors() {
        let at = |op: &str, axes: &[i64]| attrs(&[("op", s(op)), ("axes", ints(axes))]);
        let x = TensorMeta::new(DType::I32, [2, 3]);
        let err = bind("reduce@1", &at("mean", &[]))
            .unwrap()
            .check(&[&x])
            .unwrap_err();
        assert_eq!(
            err,
            KernelError::Signature {
                kernel: "reduce@1 (mean)".into(),
                message: "input 0 (x): expected a float dtype, got i32".into()
            }
        );
        let err = bind("reduce@1", &at("sum", &[1, -1]))
            .unwrap()
            .check(&[&x])
            .unwrap_err();
        assert!(err.to_string().contains("names dim 1 twice"), "{err}");
        let err = bind("reduce@1", &at("sum", &[2]))
            .unwrap()
            .check(&[&x])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("axis 2 is out of range for rank 2"),
            "{err}"
        );
        assert!(bind("reduce@1", &attrs(&[("op", s("prod"))])).is_err());
    }

    #[test]
    fn adjacent_layouts() {
        assert_eq!(
            adjacent_layout(&[2, 3, 4], &[false, true, false]),
            Some((2, 3, 4))
        );
        assert_eq!(
            adjacent_layout(&[2, 3, 4], &[false, true, true]),
            Some((2, 12, 1))
        );
        assert_eq!(
            adjacent_layout(&[2, 1, 4], &[true, false, true]),
            Some((1, 8, 1))
        );
        assert_eq!(adjacent_layout(&[2, 3, 4], &[true, false, true]), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn optimized_matches_reference(
            shape in shape_strategy(),
            mask_bits in any::<u64>(),
            op in prop::sample::select(vec!["sum", "mean", "max", "min"]),
            keepdims in any::<bool>(),
            seed in any::<u64>(),
            f64s in any::<bool>(),
        ) {
            let axes: Vec<i64> = (0..shape.len() as i64).filter(|d| mask_bits >> d & 1 == 1).collect();
            // Huge magnitudes excluded: whether a sum overflows depends on
            // its order.
            let x = if f64s { float_tensor::<f64>(&shape, seed, false) } else { float_tensor::<f32>(&shape, seed, false) };
            let x = with_specials(&x, seed);
            let r = reduce(op, &axes, keepdims, &x, Impl::Reference).unwrap();
            let o = reduce(op, &axes, keepdims, &x, Impl::Optimized).unwrap();
            let count = x.numel() / r.numel().max(1);
            let eps = if f64s { f64::EPSILON } else { f32::EPSILON as f64 };
            // |x| < 10: a sum of `count` terms carries ~count ulps of 10*count.
            let scale = if op == "sum" { 10.0 * count as f64 } else { 10.0 };
            assert_close(&r, &o, 0.0, 2.0 * eps * (count as f64 + 2.0) * scale);
            let xi = int_tensor::<i64>(&shape, seed, -1000, 1000);
            if op != "mean" {
                let r = reduce(op, &axes, keepdims, &xi, Impl::Reference).unwrap();
                let o = reduce(op, &axes, keepdims, &xi, Impl::Optimized).unwrap();
                prop_assert_eq!(r.to_vec::<i64>().unwrap(), o.to_vec::<i64>().unwrap());
            }
        }

        #[test]
        fn check_never_panics(m in adversarial_meta(), axes in prop::collection::vec(any::<i64>(), 0..4)) {
            for keepdims in [0, 1] {
                let k = bind("reduce@1", &attrs(&[("op", s("sum")), ("axes", ints(&axes)), ("keepdims", i(keepdims))])).unwrap();
                check_is_consistent(&*k, &[&m, &m]);
            }
        }
    }
}
