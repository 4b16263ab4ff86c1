//! `matmul@1` and `linear@1`: matrix products on f32 and f64.
//!
//! `matmul@1` multiplies `a [..., M, K]` by `b [..., K, N]`; the batch dims
//! (all but the last two) broadcast with numpy's rule. `linear@1` computes
//! `x [..., K] · w + bias`, with `w` stored `[K, N]`, or `[N, K]` when
//! `trans_w` = 1 (PyTorch's layout); `bias [N]` is an input when `bias` = 1.
//!
//! The reference implementations are plain dot-product loops accumulating in
//! the element type. The optimized ones call the `gemm` crate (packed,
//! vectorized microkernels) through [`gemm_into`], the one function of the
//! crate that uses `unsafe`; it checks every view against its slice before
//! the call. Products of at least [`GEMM_PAR_MIN`] multiply-adds run on
//! rayon's global pool; batches of small products are spread over the pool
//! instead. A `b` shared by every batch is folded into one tall product.
//! Summation order differs from the reference, so results agree to a
//! tolerance scaled by `sum |a_ik b_kj|`, not bitwise.

use std::sync::Arc;

use rayon::prelude::*;

use super::attrs::AttrReader;
use super::num::Float;
use super::shape::{broadcast, broadcast_strides, numel, offset_of};
use super::{bound, check_float, check_same_dtype, data, data_mut, Op};
use crate::{Attrs, Bound, Impl, KernelError, Tensor, TensorMeta};

/// Products with at least this many multiply-adds use gemm's rayon
/// parallelism.
pub(crate) const GEMM_PAR_MIN: usize = 1 << 22;

pub(crate) fn bind_matmul(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    AttrReader::new("matmul@1", attrs).finish()?;
    Ok(bound(Matmul))
}

pub(crate) fn bind_linear(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("linear@1", attrs);
    let trans_w = r.flag("trans_w", false)?;
    let bias = r.flag("bias", false)?;
    r.finish()?;
    Ok(bound(Linear { trans_w, bias }))
}

/// A strided matrix inside a slice: element `(i, j)` is at `i*rs + j*cs`.
#[derive(Clone, Copy)]
pub(crate) struct MatRef<'a, T> {
    pub(crate) data: &'a [T],
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

impl<T> MatRef<'_, T> {
    /// Whether every element of the view lies inside `data`.
    fn in_bounds(&self) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        (self.rows - 1)
            .checked_mul(self.rs)
            .zip((self.cols - 1).checked_mul(self.cs))
            .and_then(|(r, c)| r.checked_add(c))
            .is_some_and(|last| last < self.data.len())
    }
}

/// `dst = a · b`, or `dst += a · b` with `accumulate`; `dst` is the
/// row-major `a.rows × b.cols` matrix. `T` is f32 or f64 (the only
/// [`Float`]s), which `gemm` supports.
#[allow(unsafe_code)]
pub(crate) fn gemm_into<T: Float>(
    a: MatRef<T>,
    b: MatRef<T>,
    dst: &mut [T],
    accumulate: bool,
    parallel: bool,
) -> Result<(), String> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || Some(dst.len()) != m.checked_mul(n) || !a.in_bounds() || !b.in_bounds() {
        return Err(format!(
            "internal: inconsistent gemm views ({m}x{k} · {}x{n} into {})",
            b.rows,
            dst.len()
        ));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    let stride =
        |v: usize| isize::try_from(v).map_err(|_| format!("internal: stride {v} exceeds isize"));
    let (a_rs, a_cs, b_rs, b_cs, d_rs) = (
        stride(a.rs)?,
        stride(a.cs)?,
        stride(b.rs)?,
        stride(b.cs)?,
        stride(n)?,
    );
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    let alpha = if accumulate { T::ONE } else { T::ZERO };
    // SAFETY: `gemm` reads `lhs[i*lhs_rs + p*lhs_cs]` for i < m, p < k,
    // `rhs[p*rhs_rs + j*rhs_cs]` for p < k, j < n, and writes (and, when
    // `read_dst`, reads) `dst[i*dst_rs + j*dst_cs]` for i < m, j < n.
    // - The pointers come from live slices borrowed for the whole call.
    // - `in_bounds` proved the largest lhs and rhs offsets lie inside their
    //   slices (strides are in elements, non-negative, and fit in isize).
    // - dst is row-major m×n with dst_rs = n, dst_cs = 1, and
    //   `dst.len() == m*n`, so its largest offset is m*n - 1.
    // - dst is borrowed mutably, so it aliases neither lhs nor rhs.
    // - T is f32 or f64, for which gemm has kernels (it panics otherwise).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            d_rs,
            accumulate,
            a.data.as_ptr(),
            a_cs,
            a_rs,
            b.data.as_ptr(),
            b_cs,
            b_rs,
            alpha,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

/// The reference product: `dst[i, j] (+)= sum_p a[i, p] * b[p, j]`, summing
/// in order of p.
fn dot_loops<T: Float>(
    a: MatRef<T>,
    b: MatRef<T>,
    dst: &mut [T],
    accumulate: bool,
) -> Result<(), String> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k || Some(dst.len()) != m.checked_mul(n) || !a.in_bounds() || !b.in_bounds() {
        return Err(format!(
            "internal: inconsistent matrix views ({m}x{k} · {}x{n} into {})",
            b.rows,
            dst.len()
        ));
    }
    for i in 0..m {
        for j in 0..n {
            let mut acc = T::ZERO;
            for p in 0..k {
                acc = acc + a.data[i * a.rs + p * a.cs] * b.data[p * b.rs + j * b.cs];
            }
            let slot = &mut dst[i * n + j];
            *slot = if accumulate { *slot + acc } else { acc };
        }
    }
    Ok(())
}

struct Matmul;

/// Sizes of a matmul launch, derived from shapes that passed `infer`.
struct Geometry {
    m: usize,
    k: usize,
    n: usize,
    batch: Vec<usize>,
    a_batch: Vec<usize>,
    b_batch: Vec<usize>,
}

fn geometry(a: &[usize], b: &[usize]) -> Result<Geometry, String> {
    let (&[ref a_batch @ .., m, k], &[ref b_batch @ .., k2, n]) = (a, b) else {
        return Err(format!(
            "matmul operands must have rank >= 2, got {a:?} and {b:?}"
        ));
    };
    if k != k2 {
        return Err(format!(
            "input 1 (b): expected {k} rows (the last dim of input 0 (a), shape {a:?}), got {k2} (shape {b:?})"
        ));
    }
    let names = [
        "input 0 (a) batch dims".to_string(),
        "input 1 (b) batch dims".to_string(),
    ];
    let batch = broadcast(&[a_batch, b_batch], &names)?;
    Ok(Geometry {
        m,
        k,
        n,
        batch,
        a_batch: a_batch.to_vec(),
        b_batch: b_batch.to_vec(),
    })
}

impl Op for Matmul {
    fn label(&self) -> &str {
        "matmul@1"
    }

    fn input_names(&self) -> &[&'static str] {
        &["a", "b"]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        check_float(self, inputs, 0)?;
        check_same_dtype(self, inputs)?;
        let [a, b] = super::operands(inputs)?;
        for (i, m) in [a, b].into_iter().enumerate() {
            if m.shape.len() < 2 {
                return Err(format!(
                    "{}: expected rank >= 2, got shape {:?}",
                    self.input(i),
                    m.shape
                ));
            }
        }
        let g = geometry(&a.shape, &b.shape)?;
        let mut shape = g.batch;
        shape.extend([g.m, g.n]);
        Ok(TensorMeta::new(a.dtype, shape))
    }

    fn compute(&self, imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        super::with_float!(out.dtype(), T => matmul_typed::<T>(imp, inputs, out))
    }
}

fn matmul_typed<T: Float>(imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
    let [a, b] = super::operands(inputs)?;
    let g = geometry(a.shape(), b.shape())?;
    let av = data::<T>(a, "input 0 (a)")?;
    let bv = data::<T>(b, "input 1 (b)")?;
    let y = data_mut::<T>(out)?;
    let (m, k, n) = (g.m, g.k, g.n);
    let (mk, kn, mn) = (m * k, k * n, m * n);
    let batches = numel(&g.batch, "batch")?;
    if y.is_empty() {
        return Ok(());
    }
    let rank = g.batch.len();
    let (sa, sb) = (
        broadcast_strides(&g.a_batch, rank),
        broadcast_strides(&g.b_batch, rank),
    );
    let mat_a = |bi: usize| {
        let off = offset_of(bi, &g.batch, &sa) * mk;
        av.get(off..off + mk).map(|data| MatRef {
            data,
            rows: m,
            cols: k,
            rs: k,
            cs: 1,
        })
    };
    let mat_b = |bi: usize| {
        let off = offset_of(bi, &g.batch, &sb) * kn;
        bv.get(off..off + kn).map(|data| MatRef {
            data,
            rows: k,
            cols: n,
            rs: n,
            cs: 1,
        })
    };
    let missing = || "internal: batch matrix outside an input".to_string();
    match imp {
        Impl::Reference => {
            for (bi, dst) in y.chunks_mut(mn).enumerate() {
                dot_loops(
                    mat_a(bi).ok_or_else(missing)?,
                    mat_b(bi).ok_or_else(missing)?,
                    dst,
                    false,
                )?;
            }
            Ok(())
        }
        Impl::Optimized => {
            let work = m.saturating_mul(k).saturating_mul(n);
            if bv.len() == kn && av.len() == batches * mk {
                // One `b` for every batch, and `a` not broadcast: the batches
                // stack into one (batches*M)×K product.
                let a = MatRef {
                    data: av,
                    rows: batches * m,
                    cols: k,
                    rs: k,
                    cs: 1,
                };
                let b = MatRef {
                    data: bv,
                    rows: k,
                    cols: n,
                    rs: n,
                    cs: 1,
                };
                return gemm_into(a, b, y, false, work.saturating_mul(batches) >= GEMM_PAR_MIN);
            }
            if work < GEMM_PAR_MIN && work.saturating_mul(batches) >= GEMM_PAR_MIN {
                return y.par_chunks_mut(mn).enumerate().try_for_each(|(bi, dst)| {
                    gemm_into(
                        mat_a(bi).ok_or_else(missing)?,
                        mat_b(bi).ok_or_else(missing)?,
                        dst,
                        false,
                        false,
                    )
                });
            }
            for (bi, dst) in y.chunks_mut(mn).enumerate() {
                let (a, b) = (
                    mat_a(bi).ok_or_else(missing)?,
                    mat_b(bi).ok_or_else(missing)?,
                );
                gemm_into(a, b, dst, false, work >= GEMM_PAR_MIN)?;
            }
            Ok(())
        }
    }
}

struct Linear {
    trans_w: bool,
    bias: bool,
}

impl Linear {
    /// (K, N) of the weight.
    fn weight_dims(&self, w: &[usize]) -> Option<(usize, usize)> {
        match *w {
            [r, c] if self.trans_w => Some((c, r)),
            [r, c] => Some((r, c)),
            _ => None,
        }
    }
}

impl Op for Linear {
    fn label(&self) -> &str {
        match (self.trans_w, self.bias) {
            (false, false) => "linear@1",
            (true, false) => "linear@1 (trans_w)",
            (false, true) => "linear@1 (bias)",
            (true, true) => "linear@1 (trans_w, bias)",
        }
    }

    fn input_names(&self) -> &[&'static str] {
        if self.bias {
            &["x", "w", "bias"]
        } else {
            &["x", "w"]
        }
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        check_float(self, inputs, 0)?;
        check_same_dtype(self, inputs)?;
        let (Some(x), Some(w)) = (inputs.first(), inputs.get(1)) else {
            return Err("expected inputs x and w".to_string());
        };
        let Some((&k, batch)) = x.shape.split_last() else {
            return Err(format!(
                "{}: expected rank >= 1, got a scalar",
                self.input(0)
            ));
        };
        let layout = if self.trans_w { "[N, K]" } else { "[K, N]" };
        let (wk, n) = self.weight_dims(&w.shape).ok_or_else(|| {
            format!(
                "{}: expected rank 2 {layout}, got shape {:?}",
                self.input(1),
                w.shape
            )
        })?;
        if wk != k {
            return Err(format!(
                "{}: expected K = {k} (the last dim of {}) in {layout}, got shape {:?}",
                self.input(1),
                self.input(0),
                w.shape
            ));
        }
        if let Some(bias) = inputs.get(2) {
            if bias.shape != [n] {
                return Err(format!(
                    "{}: expected shape [{n}], got {:?}",
                    self.input(2),
                    bias.shape
                ));
            }
        }
        let mut shape = batch.to_vec();
        shape.push(n);
        Ok(TensorMeta::new(x.dtype, shape))
    }

    fn compute(&self, imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        super::with_float!(out.dtype(), T => self.linear_typed::<T>(imp, inputs, out))
    }
}

impl Linear {
    fn linear_typed<T: Float>(
        &self,
        imp: Impl,
        inputs: &[&Tensor],
        out: &mut Tensor,
    ) -> Result<(), String> {
        let (Some(x), Some(w)) = (inputs.first(), inputs.get(1)) else {
            return Err("expected inputs x and w".to_string());
        };
        let (k, n) = self
            .weight_dims(w.shape())
            .ok_or("internal: weight is not a matrix")?;
        let xv = data::<T>(x, "input 0 (x)")?;
        let wv = data::<T>(w, "input 1 (w)")?;
        let bias = inputs
            .get(2)
            .map(|b| data::<T>(b, "input 2 (bias)"))
            .transpose()?;
        let y = data_mut::<T>(out)?;
        if y.is_empty() {
            return Ok(());
        }
        let m = y.len() / n;
        let a = MatRef {
            data: xv,
            rows: m,
            cols: k,
            rs: k,
            cs: 1,
        };
        let b = if self.trans_w {
            MatRef {
                data: wv,
                rows: k,
                cols: n,
                rs: 1,
                cs: k,
            }
        } else {
            MatRef {
                data: wv,
                rows: k,
                cols: n,
                rs: n,
                cs: 1,
            }
        };
        if let Some(bias) = bias {
            for row in y.chunks_mut(n) {
                row.copy_from_slice(bias);
            }
        }
        match imp {
            Impl::Reference => dot_loops(a, b, y, bias.is_some()),
            Impl::Optimized => {
                let parallel = m.saturating_mul(k).saturating_mul(n) >= GEMM_PAR_MIN;
                gemm_into(a, b, y, bias.is_some(), parallel)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::*;
    use crate::{DType, Impl, KernelError, Tensor, TensorMeta};

    fn matmul(a: &Tensor, b: &Tensor, imp: Impl) -> Result<Tensor, KernelError> {
        launch("matmul@1", &attrs(&[]), &[a, b], imp)
    }

    /// `a [.., M, K] · b [.., K, N]` with explicit batch indices, in f64.
    fn direct(
        a: &[f64],
        b: &[f64],
        batches: usize,
        bcast_b: bool,
        m: usize,
        k: usize,
        n: usize,
    ) -> Vec<f64> {
        let mut y = vec![0.0; batches * m * n];
        for t in 0..batches {
            let bt = if bcast_b { 0 } else { t };
            for i in 0..m {
                for j in 0..n {
                    y[(t * m + i) * n + j] = (0..k)
                        .map(|p| a[(t * m + i) * k + p] * b[(bt * k + p) * n + j])
                        .sum();
                }
            }
        }
        y
    }

    #[test]
    fn matmul_against_direct_computation() {
        let a = float_tensor::<f64>(&[3, 4, 5], 1, false);
        let b = float_tensor::<f64>(&[5, 6], 2, false);
        let b3 = float_tensor::<f64>(&[3, 5, 6], 3, false);
        for imp in IMPLS {
            let y = matmul(&a, &b, imp).unwrap();
            assert_eq!(y.shape(), &[3, 4, 6]);
            let want = direct(&f64s(&a), &f64s(&b), 3, true, 4, 5, 6);
            for (g, w) in f64s(&y).iter().zip(&want) {
                assert!((g - w).abs() < 1e-12, "{g} vs {w}");
            }
            let y = matmul(&a, &b3, imp).unwrap();
            let want = direct(&f64s(&a), &f64s(&b3), 3, false, 4, 5, 6);
            for (g, w) in f64s(&y).iter().zip(&want) {
                assert!((g - w).abs() < 1e-12, "{g} vs {w}");
            }
            // K = 0 gives zeros.
            let z = matmul(
                &Tensor::zeros(DType::F32, &[2, 0]).unwrap(),
                &Tensor::zeros(DType::F32, &[0, 3]).unwrap(),
                imp,
            );
            assert_eq!(z.unwrap().to_vec::<f32>().unwrap(), vec![0.0; 6]);
        }
    }

    #[test]
    fn batch_dims_broadcast() {
        let k = bind("matmul@1", &attrs(&[])).unwrap();
        let a = TensorMeta::new(DType::F32, [2, 1, 3, 4]);
        let b = TensorMeta::new(DType::F32, [5, 4, 7]);
        assert_eq!(
            k.check(&[&a, &b]).unwrap(),
            vec![TensorMeta::new(DType::F32, [2, 5, 3, 7])]
        );
        let bad = TensorMeta::new(DType::F32, [5, 3, 7]);
        let err = k.check(&[&a, &bad]).unwrap_err();
        assert_eq!(
            err,
            KernelError::Signature {
                kernel: "matmul@1".into(),
                message: "input 1 (b): expected 4 rows (the last dim of input 0 (a), shape [2, 1, 3, 4]), got 3 (shape [5, 3, 7])".into()
            }
        );
        let v = TensorMeta::new(DType::F32, [4]);
        assert!(k
            .check(&[&a, &v])
            .unwrap_err()
            .to_string()
            .contains("input 1 (b): expected rank >= 2"));
        let i = TensorMeta::new(DType::I32, [4, 4]);
        assert!(k
            .check(&[&i, &i])
            .unwrap_err()
            .to_string()
            .contains("expected a float dtype"));
    }

    #[test]
    fn linear_against_direct_computation() {
        let x = float_tensor::<f32>(&[2, 3, 4], 5, false);
        let w = float_tensor::<f32>(&[4, 5], 6, false);
        let bias = float_tensor::<f32>(&[5], 7, false);
        let (xs, ws, bs) = (f64s(&x), f64s(&w), f64s(&bias));
        // w transposed, [N, K].
        let wt_vals: Vec<f32> = (0..20).map(|t| ws[(t % 4) * 5 + t / 4] as f32).collect();
        let wt = Tensor::from_vec(&[5, 4], wt_vals).unwrap();
        for imp in IMPLS {
            for (trans, weight) in [(0, &w), (1, &wt)] {
                let y = launch(
                    "linear@1",
                    &attrs(&[("trans_w", i(trans)), ("bias", i(1))]),
                    &[&x, weight, &bias],
                    imp,
                )
                .unwrap();
                assert_eq!(y.shape(), &[2, 3, 5]);
                for (idx, g) in f64s(&y).iter().enumerate() {
                    let (r, c) = (idx / 5, idx % 5);
                    let want: f64 =
                        (0..4).map(|p| xs[r * 4 + p] * ws[p * 5 + c]).sum::<f64>() + bs[c];
                    assert!(
                        (g - want).abs() < 1e-4,
                        "trans_w={trans} [{r},{c}]: {g} vs {want}"
                    );
                }
            }
            let y = launch("linear@1", &attrs(&[]), &[&x, &w], imp).unwrap();
            let g = f64s(&y)[0];
            let want: f64 = (0..4).map(|p| xs[p] * ws[p * 5]).sum();
            assert!((g - want).abs() < 1e-4);
        }
    }

    #[test]
    fn linear_signature() {
        let k = bind("linear@1", &attrs(&[("trans_w", i(1)), ("bias", i(1))])).unwrap();
        let x = TensorMeta::new(DType::F32, [7, 4]);
        let w = TensorMeta::new(DType::F32, [5, 4]);
        let b = TensorMeta::new(DType::F32, [5]);
        assert_eq!(k.arity().inputs, 3);
        assert_eq!(
            k.check(&[&x, &w, &b]).unwrap(),
            vec![TensorMeta::new(DType::F32, [7, 5])]
        );
        let err = k
            .check(&[&x, &TensorMeta::new(DType::F32, [4, 5]), &b])
            .unwrap_err();
        assert_eq!(
            err,
            KernelError::Signature {
                kernel: "linear@1 (trans_w, bias)".into(),
                message: "input 1 (w): expected K = 4 (the last dim of input 0 (x)) in [N, K], got shape [4, 5]".into()
            }
        );
        assert!(k
            .check(&[&x, &w, &TensorMeta::new(DType::F32, [4])])
            .unwrap_err()
            .to_string()
            .contains("input 2 (bias): expected shape [5]"));
        assert!(k.check(&[&x, &w]).is_err());
        assert!(bind("linear@1", &attrs(&[("bias", i(2))])).is_err());
    }

    /// Tolerance of a product element: a few ulps of the sum of |terms|.
    fn product_tolerance(a: &Tensor, b: &Tensor, y: &Tensor, eps: f64) -> Vec<f64> {
        let (av, bv) = (f64s(a), f64s(b));
        let (ra, rb) = (a.shape().len(), b.shape().len());
        let (m, k) = (a.shape()[ra - 2], a.shape()[ra - 1]);
        let n = b.shape()[rb - 1];
        let b_batches = bv.len() / (k * n).max(1);
        (0..y.numel())
            .map(|idx| {
                let (t, i, j) = (idx / (m * n), idx / n % m, idx % n);
                let bt = if b_batches == 1 { 0 } else { t };
                let s: f64 = (0..k)
                    .map(|p| (av[(t * m + i) * k + p] * bv[(bt * k + p) * n + j]).abs())
                    .sum();
                eps * (k as f64 + 2.0) * s + f64::MIN_POSITIVE
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn matmul_optimized_matches_reference(
            batch in prop::collection::vec(1usize..=3, 0..=2),
            bcast_b in any::<bool>(),
            dims in prop_oneof![
                6 => (0usize..=9, 0usize..=9, 0usize..=9),
                1 => (100usize..=160, 100usize..=160, 100usize..=160),
            ],
            seed in any::<u64>(),
            f64s in any::<bool>(),
            edges in any::<bool>(),
        ) {
            let (m, k, n) = dims;
            let a_shape: Vec<usize> = batch.iter().copied().chain([m, k]).collect();
            let b_shape: Vec<usize> = if bcast_b { vec![k, n] } else { batch.iter().copied().chain([k, n]).collect() };
            // Edge values without huge magnitudes: with them an overflow
            // depends on summation order, which is not a bug.
            let (a, b) = if f64s {
                (float_tensor::<f64>(&a_shape, seed, false), float_tensor::<f64>(&b_shape, seed ^ 1, false))
            } else {
                (float_tensor::<f32>(&a_shape, seed, false), float_tensor::<f32>(&b_shape, seed ^ 1, false))
            };
            let (a, b) = if edges { (with_specials(&a, seed), with_specials(&b, seed ^ 2)) } else { (a, b) };
            let r = matmul(&a, &b, Impl::Reference).unwrap();
            let o = matmul(&a, &b, Impl::Optimized).unwrap();
            let eps = if f64s { f64::EPSILON } else { f32::EPSILON as f64 };
            let tol = product_tolerance(&a, &b, &r, eps);
            assert_close_with(&r, &o, |idx, _| tol[idx]);
        }

        #[test]
        fn linear_optimized_matches_reference(
            batch in prop::collection::vec(0usize..=4, 0..=2),
            dims in prop_oneof![6 => (0usize..=9, 0usize..=9), 1 => (200usize..=300, 150usize..=200)],
            trans_w in 0i64..=1,
            with_bias in 0i64..=1,
            seed in any::<u64>(),
        ) {
            let (k, n) = dims;
            let mut x_shape = batch.clone();
            x_shape.extend([if k > 100 { 64 } else { 3 }, k]);
            let x = float_tensor::<f32>(&x_shape, seed, false);
            let w = float_tensor::<f32>(&if trans_w == 1 { [n, k] } else { [k, n] }, seed ^ 1, false);
            let bias = float_tensor::<f32>(&[n], seed ^ 2, false);
            let at = attrs(&[("trans_w", i(trans_w)), ("bias", i(with_bias))]);
            let inputs: Vec<&Tensor> = if with_bias == 1 { vec![&x, &w, &bias] } else { vec![&x, &w] };
            let r = launch("linear@1", &at, &inputs, Impl::Reference).unwrap();
            let o = launch("linear@1", &at, &inputs, Impl::Optimized).unwrap();
            // |x| < 10 and |w| < 10: each term is below 100.
            let tol = f32::EPSILON as f64 * (k as f64 + 2.0) * 100.0 * k as f64 + 1e-6;
            assert_close(&r, &o, 0.0, tol);
        }

        #[test]
        fn check_never_panics(a in adversarial_meta(), b in adversarial_meta(), c in adversarial_meta()) {
            for at in [attrs(&[]), attrs(&[("trans_w", i(1)), ("bias", i(1))])] {
                check_is_consistent(&*bind("linear@1", &at).unwrap(), &[&a, &b, &c]);
            }
            check_is_consistent(&*bind("matmul@1", &attrs(&[])).unwrap(), &[&a, &b, &c]);
        }
    }
}
