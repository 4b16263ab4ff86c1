//! `softmax@1` and `layer_norm@1`: normalizations along trailing or inner
//! axes, on f32 and f64.
//!
//! - `softmax@1` (attribute `axis`, default -1) computes
//!   `exp(x - max) / sum(exp(x - max))` along `axis`; subtracting the max
//!   keeps every exponent <= 0, so large inputs do not overflow. A NaN in a
//!   lane makes the lane NaN; a lane of only `-inf` is NaN (0/0), as in
//!   PyTorch.
//! - `layer_norm@1` (attributes `axis`, default -1, and `epsilon`, default
//!   1e-5, finite and >= 0) normalizes over the dims `axis..`:
//!   `(x - mean) / sqrt(var + epsilon) * scale + bias` with the population
//!   variance, computed in two passes; `scale` and `bias` have shape
//!   `x.shape[axis..]`.
//!
//! The optimized implementations split rows across rayon's pool from
//! [`PAR_MIN`] elements and sum contiguous rows with eight independent
//! accumulators (which the compiler vectorizes), so sums differ from the
//! reference's sequential ones by rounding; softmax along a non-last axis
//! vectorizes across the inner dim instead and matches the reference
//! bitwise.

use std::sync::Arc;

use rayon::prelude::*;

use super::attrs::AttrReader;
use super::num::{fmax, Float};
use super::shape::normalize_axis;
use super::{
    bound, check_float, check_same_dtype, data, data_mut, operands, worth_splitting, Op, PAR_MIN,
};
use crate::{Attrs, Bound, Impl, KernelError, Tensor, TensorMeta};

pub(crate) fn bind_softmax(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("softmax@1", attrs);
    let axis = r.int("axis", Some(-1))?;
    r.finish()?;
    Ok(bound(Softmax { axis }))
}

pub(crate) fn bind_layer_norm(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("layer_norm@1", attrs);
    let axis = r.int("axis", Some(-1))?;
    let epsilon = r.float("epsilon", 1e-5)?;
    if !(epsilon.is_finite() && epsilon >= 0.0) {
        return Err(r.error(format!(
            "attribute `epsilon` must be finite and >= 0, got {epsilon}"
        )));
    }
    r.finish()?;
    Ok(bound(LayerNorm { axis, epsilon }))
}

/// Sum with eight independent accumulators, so the loop vectorizes.
#[inline]
fn lane_sum<T: Float>(xs: &[T], f: impl Fn(T) -> T) -> T {
    let mut acc = [T::ZERO; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = *a + f(v);
        }
    }
    let mut tail = T::ZERO;
    for &v in chunks.remainder() {
        tail = tail + f(v);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Runs `f` on each `len`-element piece of `y` (with its index), in
/// parallel when `y` is large.
fn for_rows<T: Float>(y: &mut [T], len: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if len == 0 {
        return;
    }
    if worth_splitting(y.len(), PAR_MIN) {
        y.par_chunks_mut(len)
            .with_min_len((PAR_MIN / 4 / len).max(1))
            .enumerate()
            .for_each(|(r, row)| f(r, row));
    } else {
        y.chunks_mut(len).enumerate().for_each(|(r, row)| f(r, row));
    }
}

struct Softmax {
    axis: i64,
}

impl Op for Softmax {
    fn label(&self) -> &str {
        "softmax@1"
    }

    fn input_names(&self) -> &[&'static str] {
        &["x"]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        check_float(self, inputs, 0)?;
        let [x] = operands(inputs)?;
        normalize_axis(self.axis, x.shape.len(), "attribute `axis`")?;
        Ok(x.clone())
    }

    fn compute(&self, imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        super::with_float!(out.dtype(), T => self.typed::<T>(imp, inputs, out))
    }
}

impl Softmax {
    fn typed<T: Float>(
        &self,
        imp: Impl,
        inputs: &[&Tensor],
        out: &mut Tensor,
    ) -> Result<(), String> {
        let [x] = operands(inputs)?;
        let axis = normalize_axis(self.axis, x.shape().len(), "attribute `axis`")?;
        let len = x.shape()[axis];
        let inner: usize = x.shape()[axis + 1..].iter().product();
        let xv = data::<T>(x, "input 0 (x)")?;
        let y = data_mut::<T>(out)?;
        if y.is_empty() || xv.len() != y.len() {
            return Ok(());
        }
        let block = len * inner;
        match imp {
            Impl::Reference => {
                for (xb, yb) in xv.chunks(block).zip(y.chunks_mut(block)) {
                    for j in 0..inner {
                        let at = |t: usize| t * inner + j;
                        let mut mx = T::NEG_INFINITY;
                        for t in 0..len {
                            mx = fmax(mx, xb[at(t)]);
                        }
                        let mut sum = T::ZERO;
                        for t in 0..len {
                            let e = (xb[at(t)] - mx).exp();
                            yb[at(t)] = e;
                            sum = sum + e;
                        }
                        for t in 0..len {
                            yb[at(t)] = yb[at(t)] / sum;
                        }
                    }
                }
            }
            Impl::Optimized if inner == 1 => for_rows(y, len, |r, yr| {
                let xr = &xv[r * len..(r + 1) * len];
                let mx = xr.iter().fold(T::NEG_INFINITY, |m, &v| fmax(m, v));
                for (slot, &v) in yr.iter_mut().zip(xr) {
                    *slot = (v - mx).exp();
                }
                let sum = lane_sum(yr, |e| e);
                for slot in yr.iter_mut() {
                    *slot = *slot / sum;
                }
            }),
            Impl::Optimized => for_rows(y, block, |b, yb| {
                let xb = &xv[b * block..(b + 1) * block];
                // Column-wise over `inner`, so each loop runs across
                // contiguous memory; the order per lane is the reference's.
                let mut mx = vec![T::NEG_INFINITY; inner];
                for xr in xb.chunks_exact(inner) {
                    for (m, &v) in mx.iter_mut().zip(xr) {
                        *m = fmax(*m, v);
                    }
                }
                let mut sum = vec![T::ZERO; inner];
                for (yr, xr) in yb.chunks_exact_mut(inner).zip(xb.chunks_exact(inner)) {
                    for (((slot, &v), &m), s) in yr.iter_mut().zip(xr).zip(&mx).zip(sum.iter_mut())
                    {
                        let e = (v - m).exp();
                        *slot = e;
                        *s = *s + e;
                    }
                }
                for yr in yb.chunks_exact_mut(inner) {
                    for (slot, &s) in yr.iter_mut().zip(&sum) {
                        *slot = *slot / s;
                    }
                }
            }),
        }
        Ok(())
    }
}

struct LayerNorm {
    axis: i64,
    epsilon: f64,
}

impl Op for LayerNorm {
    fn label(&self) -> &str {
        "layer_norm@1"
    }

    fn input_names(&self) -> &[&'static str] {
        &["x", "scale", "bias"]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        check_float(self, inputs, 0)?;
        check_same_dtype(self, inputs)?;
        let [x, scale, bias] = operands(inputs)?;
        let axis = normalize_axis(self.axis, x.shape.len(), "attribute `axis`")?;
        let want = &x.shape[axis..];
        for (i, m) in [(1, scale), (2, bias)] {
            if m.shape != want {
                return Err(format!(
                    "{}: expected shape {want:?} (the dims of {} from axis {axis}), got {:?}",
                    self.input(i),
                    self.input(0),
                    m.shape
                ));
            }
        }
        Ok(x.clone())
    }

    fn compute(&self, imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        super::with_float!(out.dtype(), T => self.typed::<T>(imp, inputs, out))
    }
}

impl LayerNorm {
    fn typed<T: Float>(
        &self,
        imp: Impl,
        inputs: &[&Tensor],
        out: &mut Tensor,
    ) -> Result<(), String> {
        let [x, scale, bias] = operands(inputs)?;
        let (xv, sv, bv) = (
            data::<T>(x, "input 0 (x)")?,
            data::<T>(scale, "input 1 (scale)")?,
            data::<T>(bias, "input 2 (bias)")?,
        );
        let y = data_mut::<T>(out)?;
        let d = sv.len();
        if y.is_empty() || d == 0 || xv.len() != y.len() || bv.len() != d {
            return Ok(());
        }
        let eps = T::from_f64(self.epsilon);
        let n = T::from_usize(d);
        match imp {
            Impl::Reference => {
                for (xr, yr) in xv.chunks(d).zip(y.chunks_mut(d)) {
                    let mut sum = T::ZERO;
                    for &v in xr {
                        sum = sum + v;
                    }
                    let mean = sum / n;
                    let mut sq = T::ZERO;
                    for &v in xr {
                        sq = sq + (v - mean) * (v - mean);
                    }
                    let std = (sq / n + eps).sqrt();
                    for (k, slot) in yr.iter_mut().enumerate() {
                        *slot = (xr[k] - mean) / std * sv[k] + bv[k];
                    }
                }
            }
            Impl::Optimized => for_rows(y, d, |r, yr| {
                let xr = &xv[r * d..(r + 1) * d];
                let mean = lane_sum(xr, |v| v) / n;
                let var = lane_sum(xr, |v| (v - mean) * (v - mean)) / n;
                let rstd = T::ONE / (var + eps).sqrt();
                for (((slot, &v), &s), &b) in yr.iter_mut().zip(xr).zip(sv).zip(bv) {
                    *slot = (v - mean) * rstd * s + b;
                }
            }),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::*;
    use crate::{AttrValue, DType, Impl, KernelError, Tensor, TensorMeta};

    #[test]
    fn softmax_against_direct_computation() {
        let x = Tensor::from_vec(&[2, 3], vec![1.0f64, 2.0, 3.0, 1000.0, 1000.0, -1000.0]).unwrap();
        for imp in IMPLS {
            let last = f64s(&launch("softmax@1", &attrs(&[]), &[&x], imp).unwrap());
            let z: f64 = [1.0f64, 2.0, 3.0].iter().map(|v| v.exp()).sum();
            let want = [
                1f64.exp() / z,
                2f64.exp() / z,
                3f64.exp() / z,
                0.5,
                0.5,
                0.0,
            ];
            for (g, w) in last.iter().zip(want) {
                assert!((g - w).abs() < 1e-15, "{g} vs {w}");
            }
            let first = f64s(&launch("softmax@1", &attrs(&[("axis", i(0))]), &[&x], imp).unwrap());
            let col = |a: f64, b: f64| [1.0 / (1.0 + (b - a).exp()), 1.0 / (1.0 + (a - b).exp())];
            let (c0, c1, c2) = (col(1.0, 1000.0), col(2.0, 1000.0), col(3.0, -1000.0));
            let want = [c0[0], c1[0], c2[0], c0[1], c1[1], c2[1]];
            for (g, w) in first.iter().zip(want) {
                assert!((g - w).abs() < 1e-15, "{g} vs {w}");
            }
            let nan = Tensor::from_vec(&[3], vec![1.0f32, f32::NAN, 2.0]).unwrap();
            let y = launch("softmax@1", &attrs(&[]), &[&nan], imp)
                .unwrap()
                .to_vec::<f32>()
                .unwrap();
            assert!(y.iter().all(|v| v.is_nan()));
        }
        let k = bind("softmax@1", &attrs(&[("axis", i(2))])).unwrap();
        let err = k
            .check(&[&TensorMeta::new(DType::F32, [2, 3])])
            .unwrap_err();
        assert_eq!(
            err,
            KernelError::Signature {
                kernel: "softmax@1".into(),
                message: "attribute `axis` 2 is out of range for rank 2 (valid: -2..=1)".into()
            }
        );
        assert!(bind("softmax@1", &attrs(&[("axis", AttrValue::Float(1.0))])).is_err());
    }

    #[test]
    fn layer_norm_against_direct_computation() {
        let xs = [1.0f64, 2.0, 4.0, -3.0, 0.0, 3.0];
        let x = Tensor::from_vec(&[2, 3], xs.to_vec()).unwrap();
        let scale = Tensor::from_vec(&[3], vec![1.0f64, 2.0, 0.5]).unwrap();
        let bias = Tensor::from_vec(&[3], vec![0.0f64, 1.0, -1.0]).unwrap();
        for imp in IMPLS {
            let y = launch(
                "layer_norm@1",
                &attrs(&[("epsilon", AttrValue::Float(0.1))]),
                &[&x, &scale, &bias],
                imp,
            )
            .unwrap();
            let y = f64s(&y);
            for r in 0..2 {
                let row = &xs[r * 3..r * 3 + 3];
                let mean = row.iter().sum::<f64>() / 3.0;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 3.0;
                for c in 0..3 {
                    let want = (row[c] - mean) / (var + 0.1).sqrt() * [1.0, 2.0, 0.5][c]
                        + [0.0, 1.0, -1.0][c];
                    assert!(
                        (y[r * 3 + c] - want).abs() < 1e-14,
                        "[{r},{c}] {} vs {want}",
                        y[r * 3 + c]
                    );
                }
            }
            // Over both dims: one row of six.
            let s2 = Tensor::from_vec(&[2, 3], vec![1.0f64; 6]).unwrap();
            let b2 = Tensor::from_vec(&[2, 3], vec![0.0f64; 6]).unwrap();
            let y = f64s(
                &launch(
                    "layer_norm@1",
                    &attrs(&[("axis", i(0)), ("epsilon", i(0))]),
                    &[&x, &s2, &b2],
                    imp,
                )
                .unwrap(),
            );
            let mean = xs.iter().sum::<f64>() / 6.0;
            let std = (xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 6.0).sqrt();
            for (g, v) in y.iter().zip(xs) {
                assert!((g - (v - mean) / std).abs() < 1e-14);
            }
        }
        let k = bind("layer_norm@1", &attrs(&[])).unwrap();
        let x = TensorMeta::new(DType::F32, [4, 8]);
        let err = k
            .check(&[
                &x,
                &TensorMeta::new(DType::F32, [4, 8]),
                &TensorMeta::new(DType::F32, [8]),
            ])
            .unwrap_err();
        assert!(err.to_string().contains("input 1 (scale): expected shape [8] (the dims of input 0 (x) from axis 1), got [4, 8]"), "{err}");
        assert!(bind(
            "layer_norm@1",
            &attrs(&[("epsilon", AttrValue::Float(-1.0))])
        )
        .is_err());
        assert!(bind(
            "layer_norm@1",
            &attrs(&[("epsilon", AttrValue::Float(f64::NAN))])
        )
        .is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn softmax_optimized_matches_reference(
            shape in shape_strategy().prop_filter("rank >= 1", |s| !s.is_empty()),
            axis_pick in any::<u64>(),
            seed in any::<u64>(),
            f64s in any::<bool>(),
        ) {
            let rank = shape.len() as i64;
            let axis = (axis_pick % (2 * rank as u64)) as i64 - rank;
            let x = if f64s { float_tensor::<f64>(&shape, seed, true) } else { float_tensor::<f32>(&shape, seed, true) };
            let at = attrs(&[("axis", i(axis))]);
            let r = launch("softmax@1", &at, &[&x], Impl::Reference).unwrap();
            let o = launch("softmax@1", &at, &[&x], Impl::Optimized).unwrap();
            // Outputs are in [0, 1]; the sums differ in order only.
            let len = shape[axis.rem_euclid(rank) as usize] as f64;
            let eps = if f64s { f64::EPSILON } else { f32::EPSILON as f64 };
            assert_close(&r, &o, 4.0 * eps * (len + 2.0), 0.0);
        }

        #[test]
        fn layer_norm_optimized_matches_reference(
            shape in shape_strategy().prop_filter("rank >= 1", |s| !s.is_empty()),
            axis_pick in any::<u64>(),
            seed in any::<u64>(),
            f64s in any::<bool>(),
        ) {
            let rank = shape.len();
            let axis = (axis_pick % rank as u64) as usize;
            let norm_shape = shape[axis..].to_vec();
            // No huge magnitudes: whether a row sum overflows depends on
            // the order of summation.
            let make = |shape: &[usize], seed: u64| {
                if f64s { float_tensor::<f64>(shape, seed, false) } else { float_tensor::<f32>(shape, seed, false) }
            };
            let x = with_specials(&make(&shape, seed), seed);
            let (scale, bias) = (make(&norm_shape, seed ^ 1), make(&norm_shape, seed ^ 2));
            let at = attrs(&[("axis", i(axis as i64))]);
            let r = launch("layer_norm@1", &at, &[&x, &scale, &bias], Impl::Reference).unwrap();
            let o = launch("layer_norm@1", &at, &[&x, &scale, &bias], Impl::Optimized).unwrap();
            // |x|, |scale|, |bias| < 10; normalized values are at most
            // sqrt(d) in magnitude; the row statistics carry ~d ulps.
            let d = norm_shape.iter().product::<usize>() as f64;
            let eps = if f64s { f64::EPSILON } else { f32::EPSILON as f64 };
            assert_close(&r, &o, 0.0, 16.0 * eps * (d + 2.0) * 10.0 * (d.sqrt() + 1.0) + 16.0 * eps * 10.0);
        }

        #[test]
        fn check_never_panics(a in adversarial_meta(), b in adversarial_meta(), c in adversarial_meta(), axis in any::<i64>()) {
            for id in ["softmax@1", "layer_norm@1"] {
                for ax in [axis, -1, 0] {
                    let k = bind(id, &attrs(&[("axis", i(ax))])).unwrap();
                    check_is_consistent(&*k, &[&a, &b, &c]);
                }
            }
        }
    }
}
