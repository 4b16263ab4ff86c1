//! `pool@1`: max and average pooling over `[N, C, D1..Ds]` (s >= 1 spatial
//! axes) on f32 and f64.
//!
//! Attributes: `op` (`max` or `avg`), `kernel_shape` (required, one entry
//! per spatial axis, each in 1..=[`MAX_WINDOW`]), `strides`, `dilations`,
//! `pads` (as for `conv@1`: absent or empty means 1, 1 and 0), `ceil_mode`
//! and `count_include_pad` (flags, default 0).
//!
//! Output size per axis: `(D + pads - span) / stride + 1` with
//! `span = dilation (K - 1) + 1`, rounded down, or up with `ceil_mode`; in
//! ceil mode a last window that would start past `D + pad_begin` is dropped
//! (ONNX's and PyTorch's rule), so every window starts inside the input or
//! its begin padding. Window `o` covers padded positions
//! `o stride + k dilation` for `k < K`; position `p` is input element
//! `p - pad_begin`.
//!
//! - `max`: the largest input element of the window; NaN propagates; a
//!   window holding no input element is NaN.
//! - `avg`: the sum of the window's input elements divided by their count,
//!   or with `count_include_pad` = 1 by the count of window positions inside
//!   the explicitly padded input `[0, D + pad_begin + pad_end)` (positions a
//!   ceil-mode window reaches beyond that are never counted).
//!
//! The reference implementation walks every window position of every output
//! element through N-d coordinate arithmetic. The optimized one works one
//! output row (all spatial axes but the last fixed) at a time: it finds the
//! window's valid input rows once, then for each kernel row and last-axis
//! kernel position updates a row of accumulators in a tight strided loop.
//! Each output element still sees its window's input elements in the same
//! (row-major kernel) order, so max and sum agree bitwise with the reference.
//! The optimized one also spreads the `N·C` planes over rayon's pool when
//! the output is large.

use std::sync::Arc;

use rayon::prelude::*;

use super::attrs::AttrReader;
use super::conv::{advance, window_list, Axes, WindowAttrs, MAX_WINDOW};
use super::num::Float;
use super::shape::{numel, strides};
use super::{bound, check_float, data, data_mut, operands, Op, PAR_MIN};
use crate::{Attrs, Bound, Impl, KernelError, Tensor, TensorMeta};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Max,
    Avg,
}

pub(crate) fn bind(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("pool@1", attrs);
    let kind = r.choice("op", &[("max", Kind::Max), ("avg", Kind::Avg)])?;
    let kernel = window_list(&mut r, "kernel_shape", 1)?;
    if kernel.is_empty() {
        return Err(r.error(format!(
            "attribute `kernel_shape` is required: one size in 1..={MAX_WINDOW} per spatial axis"
        )));
    }
    let window = WindowAttrs::read(&mut r, true)?;
    let ceil_mode = r.flag("ceil_mode", false)?;
    let count_include_pad = r.flag("count_include_pad", false)?;
    r.finish()?;
    Ok(bound(Pool {
        label: format!("pool@1 ({})", if kind == Kind::Max { "max" } else { "avg" }),
        kind,
        kernel,
        window,
        ceil_mode,
        count_include_pad,
    }))
}

struct Pool {
    label: String,
    kind: Kind,
    kernel: Vec<usize>,
    window: WindowAttrs,
    ceil_mode: bool,
    count_include_pad: bool,
}

impl Pool {
    fn geometry(&self, x: &[usize]) -> Result<(Axes, Vec<usize>), String> {
        let s = self.kernel.len();
        if x.len() != s + 2 {
            return Err(format!(
                "input 0 (x): expected [N, C] and {s} spatial axes (the length of `kernel_shape`), got shape {x:?}"
            ));
        }
        let axes = self.window.resolve(s)?;
        let d = &x[2..];
        let mut out = axes.out_dims(d, &self.kernel)?;
        if self.ceil_mode {
            for i in 0..s {
                let (p, w) = (axes.padded(i, d[i])?, axes.span(i, self.kernel[i])?);
                if (p - w) % axes.stride[i] != 0 {
                    // One more window, unless it would start past the input.
                    let start = out[i].saturating_mul(axes.stride[i]);
                    if start < d[i] + axes.pad_b[i] {
                        out[i] += 1;
                    }
                }
            }
        }
        Ok((axes, out))
    }
}

impl Op for Pool {
    fn label(&self) -> &str {
        &self.label
    }

    fn input_names(&self) -> &[&'static str] {
        &["x"]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        check_float(self, inputs, 0)?;
        let [x] = operands(inputs)?;
        let (_, out) = self.geometry(&x.shape)?;
        let mut shape = x.shape[..2].to_vec();
        shape.extend(out);
        Ok(TensorMeta::new(x.dtype, shape))
    }

    fn compute(&self, imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        super::with_float!(out.dtype(), T => self.compute_typed::<T>(imp, inputs, out))
    }
}

impl Pool {
    fn compute_typed<T: Float>(
        &self,
        imp: Impl,
        inputs: &[&Tensor],
        out: &mut Tensor,
    ) -> Result<(), String> {
        let [x] = operands(inputs)?;
        let (axes, out_sp) = self.geometry(x.shape())?;
        let in_sp = x.shape()[2..].to_vec();
        let xv = data::<T>(x, "input 0 (x)")?;
        let y = data_mut::<T>(out)?;
        if y.is_empty() {
            return Ok(());
        }
        match imp {
            Impl::Reference => self.reference(&axes, &in_sp, &out_sp, xv, y),
            Impl::Optimized => self.optimized(&axes, &in_sp, &out_sp, xv, y),
        }
    }

    /// One output element at a time, one window position at a time.
    fn reference<T: Float>(
        &self,
        axes: &Axes,
        in_sp: &[usize],
        out_sp: &[usize],
        xv: &[T],
        y: &mut [T],
    ) -> Result<(), String> {
        let in_len = numel(in_sp, "input spatial dims")?;
        let out_len = numel(out_sp, "output spatial dims")?;
        let s = self.kernel.len();
        let k_len = numel(&self.kernel, "attribute `kernel_shape`")?;
        let mut kc = Vec::with_capacity(k_len.saturating_mul(s));
        let mut idx = vec![0; s];
        for _ in 0..k_len {
            kc.extend_from_slice(&idx);
            advance(&mut idx, &self.kernel);
        }
        let padded: Vec<usize> = (0..s)
            .map(|i| axes.padded(i, in_sp[i]))
            .collect::<Result<_, _>>()?;
        let in_str = strides(in_sp);
        let plane = |(p, yp): (usize, &mut [T])| -> Result<(), String> {
            let xp = xv
                .get(p * in_len..(p + 1) * in_len)
                .ok_or("internal: pool plane outside x")?;
            let mut o = vec![0usize; s];
            for slot in yp.iter_mut() {
                let mut acc = if self.kind == Kind::Max {
                    T::NEG_INFINITY
                } else {
                    T::ZERO
                };
                let (mut count, mut padded_count) = (0usize, 0usize);
                for kk in 0..k_len {
                    let k = &kc[kk * s..(kk + 1) * s];
                    if self.count_include_pad {
                        let inside = (0..s).all(|i| {
                            o[i].saturating_mul(axes.stride[i])
                                .saturating_add(k[i].saturating_mul(axes.dil[i]))
                                < padded[i]
                        });
                        padded_count += usize::from(inside);
                    }
                    let Some(off) = axes.input_offset(&o, k, in_sp, &in_str) else {
                        continue;
                    };
                    let v = *xp.get(off).ok_or("internal: pool window outside x")?;
                    count += 1;
                    acc = match self.kind {
                        Kind::Avg => acc + v,
                        Kind::Max if acc.is_nan() || !(v.is_nan() || v > acc) => acc,
                        Kind::Max => v,
                    };
                }
                *slot = match self.kind {
                    Kind::Max if count == 0 => T::NAN,
                    Kind::Max => acc,
                    Kind::Avg => {
                        let n = if self.count_include_pad {
                            padded_count
                        } else {
                            count
                        };
                        acc / T::from_usize(n)
                    }
                };
                advance(&mut o, out_sp);
            }
            Ok(())
        };
        y.chunks_mut(out_len).enumerate().try_for_each(plane)
    }

    /// One output row (all spatial axes but the last fixed) at a time: the
    /// row's valid input rows are found once, then each (input row,
    /// last-axis kernel position) pair updates the accumulators of every
    /// output element that reads it, in one strided pass. An element sees
    /// its window in row-major kernel order, as in [`Pool::reference`].
    fn optimized<T: Float>(
        &self,
        axes: &Axes,
        in_sp: &[usize],
        out_sp: &[usize],
        xv: &[T],
        y: &mut [T],
    ) -> Result<(), String> {
        let in_len = numel(in_sp, "input spatial dims")?;
        let out_len = numel(out_sp, "output spatial dims")?;
        let k_len = numel(&self.kernel, "attribute `kernel_shape`")?;
        let in_str = strides(in_sp);
        let last = self.kernel.len() - 1;
        let (ow, kw, step) = (out_sp[last], self.kernel[last], axes.stride[last]);
        let lead = (0..last)
            .map(|i| {
                (0..out_sp[i])
                    .map(|o| AxisWindow::new(axes, i, o, self.kernel[i], in_sp[i]))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cols = (0..ow)
            .map(|o| AxisWindow::new(axes, last, o, kw, in_sp[last]))
            .collect::<Result<Vec<_>, _>>()?;
        let taps = (0..kw)
            .map(|k| Tap::new(axes, last, k, ow, in_sp[last]))
            .collect::<Result<Vec<_>, _>>()?;
        let init = if self.kind == Kind::Max {
            T::NEG_INFINITY
        } else {
            T::ZERO
        };
        let plane = |(p, yp): (usize, &mut [T])| -> Result<(), String> {
            let xp = xv
                .get(p * in_len..(p + 1) * in_len)
                .ok_or("internal: pool plane outside x")?;
            let mut acc = vec![init; ow];
            let (mut rows, mut next) = (Vec::new(), Vec::new());
            let mut o = vec![0usize; last];
            for y_row in yp.chunks_mut(ow) {
                // The input rows of this output row's windows, row-major
                // over the kernel's leading axes.
                rows.clear();
                rows.push(0usize);
                let mut lead_padded = 1usize;
                for i in 0..last {
                    let w = &lead[i][o[i]];
                    lead_padded = lead_padded.saturating_mul(w.padded);
                    next.clear();
                    for &r in &rows {
                        for t in 0..w.valid {
                            next.push(r + (w.first + t * axes.dil[i]) * in_str[i]);
                        }
                    }
                    std::mem::swap(&mut rows, &mut next);
                }
                acc.fill(init);
                for &r in &rows {
                    for tap in &taps {
                        let n = tap.end - tap.begin;
                        if n == 0 {
                            continue;
                        }
                        let from = r + tap.first;
                        let src = xp
                            .get(from..from + (n - 1) * step + 1)
                            .ok_or("internal: pool window outside x")?;
                        let dst = acc
                            .get_mut(tap.begin..tap.end)
                            .ok_or("internal: pool tap outside the row")?;
                        match self.kind {
                            Kind::Max => fold_row(dst, src, step, max_step),
                            Kind::Avg => fold_row(dst, src, step, |a, v| a + v),
                        }
                    }
                }
                for ((slot, &a), c) in y_row.iter_mut().zip(&acc).zip(&cols) {
                    let count = rows.len() * c.valid;
                    *slot = match self.kind {
                        Kind::Max if count == 0 => T::NAN,
                        Kind::Max => a,
                        Kind::Avg if self.count_include_pad => {
                            a / T::from_usize(lead_padded.saturating_mul(c.padded))
                        }
                        Kind::Avg => a / T::from_usize(count),
                    };
                }
                advance(&mut o, &out_sp[..last]);
            }
            Ok(())
        };
        let work = y.len().saturating_mul(k_len);
        if work >= PAR_MIN {
            y.par_chunks_mut(out_len).enumerate().try_for_each(plane)
        } else {
            y.chunks_mut(out_len).enumerate().try_for_each(plane)
        }
    }
}

/// The max step of both implementations: the first NaN wins, then the
/// first of equal maxima. Written without branches (`&`, `|`) so that row
/// loops vectorize; equal to
/// `if acc.is_nan() || !(v.is_nan() || v > acc) { acc } else { v }`.
#[inline(always)]
fn max_step<T: Float>(acc: T, v: T) -> T {
    if !acc.is_nan() & (v.is_nan() | (v > acc)) {
        v
    } else {
        acc
    }
}

/// `acc[j] = f(acc[j], src[j * step])` for `src` of at least
/// `(acc.len() - 1) step + 1` elements.
#[inline(always)]
fn fold_row<T: Float>(acc: &mut [T], src: &[T], step: usize, f: impl Fn(T, T) -> T) {
    match step {
        1 => fold_fixed::<T, 1>(acc, src, f),
        2 => fold_fixed::<T, 2>(acc, src, f),
        _ => {
            for (a, &v) in acc.iter_mut().zip(src.iter().step_by(step)) {
                *a = f(*a, v);
            }
        }
    }
}

/// [`fold_row`] with a constant step, which lets the loop vectorize.
#[inline(always)]
fn fold_fixed<T: Float, const STEP: usize>(acc: &mut [T], src: &[T], f: impl Fn(T, T) -> T) {
    let n = acc.len().min(src.len().div_ceil(STEP));
    let (acc, src) = (
        &mut acc[..n],
        &src[..n.saturating_sub(1) * STEP + usize::from(n > 0)],
    );
    for j in 0..n {
        acc[j] = f(acc[j], src[j * STEP]);
    }
}

/// The indices `j < n` with `lo <= offset + j step < hi` (`step >= 1`): a
/// range, empty as `(b, b)`.
fn span_range(offset: i128, step: i128, n: usize, lo: i128, hi: i128) -> (usize, usize) {
    // The least j >= 0 with offset + j step >= bound, capped at n.
    let first_at = |bound: i128| -> usize {
        if offset >= bound {
            return 0;
        }
        let j = (bound - offset + step - 1) / step;
        usize::try_from(j).map_or(n, |j| j.min(n))
    };
    let (b, e) = (first_at(lo), first_at(hi));
    (b, e.max(b))
}

fn wide(v: usize) -> i128 {
    // Lossless: usize is at most 64 bits on every supported target.
    v as i128
}

/// The window of output index `o` on one spatial axis.
struct AxisWindow {
    /// The input position of the first kernel position inside the input
    /// (meaningless when `valid` is 0).
    first: usize,
    /// Kernel positions inside the input.
    valid: usize,
    /// Kernel positions inside the explicitly padded input.
    padded: usize,
}

impl AxisWindow {
    fn new(axes: &Axes, i: usize, o: usize, k: usize, d: usize) -> Result<Self, String> {
        let (dil, pad_b) = (wide(axes.dil[i]), wide(axes.pad_b[i]));
        let offset = wide(o) * wide(axes.stride[i]) - pad_b;
        let (b, e) = span_range(offset, dil, k, 0, wide(d));
        let (pb, pe) = span_range(offset, dil, k, -pad_b, wide(d) + wide(axes.pad_e[i]));
        let first = if e > b {
            usize::try_from(offset + wide(b) * dil)
                .map_err(|_| "internal: pool window before the input".to_string())?
        } else {
            0
        };
        Ok(AxisWindow {
            first,
            valid: e - b,
            padded: pe - pb,
        })
    }
}

/// Last-axis kernel position `k`: the outputs `begin..end` that read inside
/// the input there, the first of them at input position `first`.
struct Tap {
    begin: usize,
    end: usize,
    first: usize,
}

impl Tap {
    fn new(axes: &Axes, i: usize, k: usize, out: usize, d: usize) -> Result<Self, String> {
        let offset = wide(k) * wide(axes.dil[i]) - wide(axes.pad_b[i]);
        let step = wide(axes.stride[i]);
        let (begin, end) = span_range(offset, step, out, 0, wide(d));
        let first = if end > begin {
            usize::try_from(offset + wide(begin) * step)
                .map_err(|_| "internal: pool tap before the input".to_string())?
        } else {
            0
        };
        Ok(Tap { begin, end, first })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::*;
    use crate::{DType, Impl, Tensor, TensorMeta};

    fn pool(x: &Tensor, at: &[(&str, crate::AttrValue)]) -> Tensor {
        let r = launch("pool@1", &attrs(at), &[x], Impl::Reference).unwrap();
        let o = launch("pool@1", &attrs(at), &[x], Impl::Optimized).unwrap();
        assert_same_bits(&r, &o);
        r
    }

    #[test]
    fn max_and_avg_by_hand() {
        // 1x1x3x4:
        //  1  2  3  4
        //  5  6  7  8
        //  9 10 11 12
        let x = Tensor::from_vec(&[1, 1, 3, 4], (1..=12).map(|v| v as f32).collect()).unwrap();
        let y = pool(&x, &[("op", s("max")), ("kernel_shape", ints(&[2, 2]))]);
        assert_eq!(y.shape(), [1, 1, 2, 3]);
        assert_eq!(
            y.to_vec::<f32>().unwrap(),
            vec![6.0, 7.0, 8.0, 10.0, 11.0, 12.0]
        );
        let y = pool(
            &x,
            &[
                ("op", s("avg")),
                ("kernel_shape", ints(&[2, 2])),
                ("strides", ints(&[2, 2])),
            ],
        );
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![3.5, 5.5]);
        // Ceil mode adds the partial last row and column windows.
        let y = pool(
            &x,
            &[
                ("op", s("avg")),
                ("kernel_shape", ints(&[2, 2])),
                ("strides", ints(&[2, 2])),
                ("ceil_mode", i(1)),
            ],
        );
        assert_eq!(y.shape(), [1, 1, 2, 2]);
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![3.5, 5.5, 9.5, 11.5]);
        // Pads: a 3x3 window at the corner sees 4 elements; with
        // count_include_pad it divides by 9.
        let at = |cip: i64| {
            vec![
                ("op", s("avg")),
                ("kernel_shape", ints(&[3, 3])),
                ("pads", ints(&[1, 1, 1, 1])),
                ("count_include_pad", i(cip)),
            ]
        };
        let y = pool(&x, &at(0));
        assert_eq!(y.shape(), [1, 1, 3, 4]);
        assert_eq!(y.to_vec::<f32>().unwrap()[0], (1.0 + 2.0 + 5.0 + 6.0) / 4.0);
        let y = pool(&x, &at(1));
        assert_eq!(y.to_vec::<f32>().unwrap()[0], (1.0 + 2.0 + 5.0 + 6.0) / 9.0);
        // Dilation 2 on a 1-D signal: max of x[j], x[j + 2].
        let x = Tensor::from_vec(&[1, 1, 5], vec![3.0f64, 1.0, 4.0, 1.0, 5.0]).unwrap();
        let y = pool(
            &x,
            &[
                ("op", s("max")),
                ("kernel_shape", ints(&[2])),
                ("dilations", ints(&[2])),
            ],
        );
        assert_eq!(y.to_vec::<f64>().unwrap(), vec![4.0, 1.0, 5.0]);
        // NaN propagates through max.
        let x = Tensor::from_vec(&[1, 1, 3], vec![1.0f32, f32::NAN, 0.0]).unwrap();
        let y = pool(&x, &[("op", s("max")), ("kernel_shape", ints(&[2]))]);
        assert!(y.to_vec::<f32>().unwrap().iter().all(|v| v.is_nan()));
    }

    #[test]
    fn ceil_mode_drops_a_window_starting_in_the_end_padding() {
        let k = |pads: i64| {
            bind(
                "pool@1",
                &attrs(&[
                    ("op", s("max")),
                    ("kernel_shape", ints(&[2])),
                    ("strides", ints(&[2])),
                    ("pads", ints(&[pads, pads])),
                    ("ceil_mode", i(1)),
                ]),
            )
            .unwrap()
        };
        let out = |pads: i64, d: usize| {
            k(pads)
                .check(&[&TensorMeta::new(DType::F32, [1, 1, d])])
                .unwrap()[0]
                .shape[2]
        };
        // D = 5, no pads: floor gives 2 windows, ceil a third starting at 4.
        assert_eq!(out(0, 5), 3);
        // D = 5, pad 1: floor gives 3; a fourth would start at padded 6,
        // past D + pad_begin = 6, so it is dropped.
        assert_eq!(out(1, 5), 3);
        // D = 4, pad 1: (6 - 2) / 2 is exact, nothing to round.
        assert_eq!(out(1, 4), 3);
    }

    #[test]
    fn attribute_and_signature_errors() {
        assert!(bind("pool@1", &attrs(&[("op", s("max"))])).is_err());
        assert!(bind(
            "pool@1",
            &attrs(&[("op", s("min")), ("kernel_shape", ints(&[2]))])
        )
        .is_err());
        assert!(bind(
            "pool@1",
            &attrs(&[("op", s("max")), ("kernel_shape", ints(&[0]))])
        )
        .is_err());
        let k = bind(
            "pool@1",
            &attrs(&[("op", s("max")), ("kernel_shape", ints(&[3, 3]))]),
        )
        .unwrap();
        let m = |s: &[usize]| TensorMeta::new(DType::F32, s.to_vec());
        assert!(k
            .check(&[&m(&[1, 1, 5])])
            .unwrap_err()
            .to_string()
            .contains("2 spatial axes"));
        assert!(k
            .check(&[&m(&[1, 1, 2, 5])])
            .unwrap_err()
            .to_string()
            .contains("padded input has only 2"));
        assert!(k
            .check(&[&TensorMeta::new(DType::I32, [1, 1, 5, 5])])
            .is_err());
    }

    /// Per spatial axis: size, kernel, stride, dilation, pad begin, pad end.
    type Geo = (usize, usize, usize, usize, usize, usize);

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Against a direct computation on one spatial axis pair.
        #[test]
        fn matches_direct_2d(
            h in 1usize..=7, w in 1usize..=7,
            k in (1usize..=3, 1usize..=3),
            st in (1usize..=3, 1usize..=3),
            pads in prop::collection::vec(0usize..=1, 4),
            avg in any::<bool>(), cip in any::<bool>(), ceil in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let x = float_tensor::<f64>(&[2, 3, h, w], seed, false);
            let at = attrs(&[
                ("op", s(if avg { "avg" } else { "max" })),
                ("kernel_shape", ints(&[k.0 as i64, k.1 as i64])),
                ("strides", ints(&[st.0 as i64, st.1 as i64])),
                ("pads", ints(&pads.iter().map(|&p| p as i64).collect::<Vec<_>>())),
                ("count_include_pad", i(i64::from(cip))),
                ("ceil_mode", i(i64::from(ceil))),
            ]);
            let Ok(y) = launch("pool@1", &at, &[&x], Impl::Reference) else {
                prop_assert!(h + pads[0] + pads[2] < k.0 || w + pads[1] + pads[3] < k.1);
                return Ok(());
            };
            let o = launch("pool@1", &at, &[&x], Impl::Optimized).unwrap();
            assert_same_bits(&y, &o);
            let (oh, ow) = (y.shape()[2], y.shape()[3]);
            let xv = f64s(&x);
            let yv = f64s(&y);
            for plane in 0..6 {
                for a in 0..oh {
                    for b in 0..ow {
                        let (mut vals, mut inside_padded) = (Vec::new(), 0);
                        for p in 0..k.0 {
                            for q in 0..k.1 {
                                let (r, c) = ((a * st.0 + p) as i64 - pads[0] as i64, (b * st.1 + q) as i64 - pads[1] as i64);
                                if r < (h + pads[2]) as i64 && c < (w + pads[3]) as i64 {
                                    inside_padded += 1;
                                }
                                if r >= 0 && c >= 0 && r < h as i64 && c < w as i64 {
                                    vals.push(xv[plane * h * w + r as usize * w + c as usize]);
                                }
                            }
                        }
                        let want = if avg {
                            vals.iter().sum::<f64>() / if cip { inside_padded } else { vals.len() } as f64
                        } else {
                            vals.iter().cloned().fold(f64::NAN, f64::max)
                        };
                        let got = yv[(plane * oh + a) * ow + b];
                        prop_assert!((got - want).abs() < 1e-12 || (got.is_nan() && want.is_nan()), "{got} vs {want}");
                    }
                }
            }
        }

        /// The optimized implementation against the reference on 1 to 3
        /// spatial axes with strides, pads, dilations, ceil mode and both
        /// counts; inputs include NaN and infinities.
        #[test]
        fn optimized_matches_reference(
            geo in prop::collection::vec((1usize..=7, 1usize..=3, 1usize..=3, 1usize..=2, 0usize..=3, 0usize..=3), 1..=3),
            avg in any::<bool>(), cip in any::<bool>(), ceil in any::<bool>(),
            seed in any::<u64>(), wide in any::<bool>(),
        ) {
            let mut shape = vec![2, 3];
            shape.extend(geo.iter().map(|g| g.0));
            let x = if wide { float_tensor::<f64>(&shape, seed, true) } else { float_tensor::<f32>(&shape, seed, true) };
            let list = |f: &dyn Fn(&Geo) -> usize| -> Vec<i64> {
                geo.iter().map(|g| f(g) as i64).collect()
            };
            let mut pads = list(&|g| g.4);
            pads.extend(list(&|g| g.5));
            let at = attrs(&[
                ("op", s(if avg { "avg" } else { "max" })),
                ("kernel_shape", ints(&list(&|g| g.1))),
                ("strides", ints(&list(&|g| g.2))),
                ("dilations", ints(&list(&|g| g.3))),
                ("pads", ints(&pads)),
                ("count_include_pad", i(i64::from(cip))),
                ("ceil_mode", i(i64::from(ceil))),
            ]);
            let Ok(r) = launch("pool@1", &at, &[&x], Impl::Reference) else {
                // Only a window wider than its padded axis is refused.
                prop_assert!(geo.iter().any(|g| g.0 + g.4 + g.5 < g.3 * (g.1 - 1) + 1));
                return Ok(());
            };
            assert_same_bits(&r, &launch("pool@1", &at, &[&x], Impl::Optimized).unwrap());
        }

        #[test]
        fn check_never_panics(a in adversarial_meta(), ceil in any::<bool>()) {
            let at = attrs(&[("op", s("avg")), ("kernel_shape", ints(&[2, 3])), ("pads", ints(&[1, 0, 2, 5])), ("ceil_mode", i(i64::from(ceil)))]);
            check_is_consistent(&*bind("pool@1", &at).unwrap(), &[&a]);
        }
    }

    #[test]
    fn span_range_bounds() {
        use super::span_range;
        // offset -3, step 2: values -3, -1, 1, 3, 5, 7.
        assert_eq!(span_range(-3, 2, 6, 0, 6), (2, 5));
        assert_eq!(span_range(-3, 2, 3, 0, 6), (2, 3));
        assert_eq!(span_range(4, 1, 3, 0, 4), (0, 0));
        assert_eq!(span_range(-9, 1, 3, 0, 4), (3, 3));
        assert_eq!(span_range(0, 3, 4, 0, 1), (0, 1));
    }

    /// A window entirely in the padding: max is NaN, avg is 0/0 = NaN, and
    /// with `count_include_pad` 0 divided by the padded count.
    #[test]
    fn window_in_padding_only() {
        let x = Tensor::from_vec(&[1, 1, 2], vec![1.0f32, 2.0]).unwrap();
        for (op, cip, want) in [("max", 0, None), ("avg", 0, None), ("avg", 1, Some(0.0))] {
            let y = pool(
                &x,
                &[
                    ("op", s(op)),
                    ("kernel_shape", ints(&[2])),
                    ("strides", ints(&[2])),
                    ("pads", ints(&[2, 0])),
                    ("count_include_pad", i(cip)),
                ],
            )
            .to_vec::<f32>()
            .unwrap();
            assert_eq!(y.len(), 2);
            match want {
                None => assert!(y[0].is_nan(), "{op}: {y:?}"),
                Some(w) => assert_eq!(y[0], w),
            }
            assert_eq!(y[1], if op == "max" { 2.0 } else { 1.5 });
        }
    }

    #[test]
    fn large_pool_is_parallel_and_identical() {
        let x = float_tensor::<f32>(&[2, 16, 64, 64], 3, true);
        pool(
            &x,
            &[
                ("op", s("max")),
                ("kernel_shape", ints(&[3, 3])),
                ("strides", ints(&[2, 2])),
                ("pads", ints(&[1, 1, 1, 1])),
            ],
        );
        pool(
            &x,
            &[
                ("op", s("avg")),
                ("kernel_shape", ints(&[3, 3])),
                ("ceil_mode", i(1)),
                ("strides", ints(&[2, 2])),
            ],
        );
    }
}
