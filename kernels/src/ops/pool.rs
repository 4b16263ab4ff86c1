//! `pool@1`: max and average pooling over `[N, C, D1..Ds]` (s >= 1 spatial
//! axes): `max` on floats and ints, `avg` on floats, and `max_index`, the
//! position of each max.
//!
//! Attributes: `op` (`max`, `avg` or `max_index`), `kernel_shape`
//! (required, one entry per spatial axis, each in 1..=[`MAX_WINDOW`]),
//! `strides`, `dilations`, `pads` (as for `conv@1`: absent or empty means 1,
//! 1 and 0), `ceil_mode` and `count_include_pad` (flags, default 0), and for
//! `max_index` only `storage_order` (flag, default 0).
//!
//! Output size per axis: `(D + pads - span) / stride + 1` with
//! `span = dilation (K - 1) + 1`, rounded down, or up with `ceil_mode`; in
//! ceil mode a last window that would start past `D + pad_begin` is dropped
//! (ONNX's and PyTorch's rule), so every window starts inside the input or
//! its begin padding. Window `o` covers padded positions
//! `o stride + k dilation` for `k < K`; position `p` is input element
//! `p - pad_begin`.
//!
//! - `max`: the largest input element of the window, scanned in row-major
//!   kernel order: the first NaN wins, then the first of equal maxima. A
//!   window holding no input element is NaN (ints: the type's minimum).
//! - `max_index` (output i64, same shape as `max`'s): the flat index into
//!   `x` of the element `max` picks, row-major over `[N, C, D..]` (ONNX
//!   MaxPool's `Indices`); with `storage_order` = 1 the spatial part of the
//!   index is column-major (`n C + c` planes of `D1..Ds` elements, then
//!   `d1 + d2 D1 + d3 D1 D2 ..`). A window holding no input element is -1.
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
//! (row-major kernel) order, so max, its index and sum agree bitwise with
//! the reference.
//! The optimized one also spreads the `N·C` planes over rayon's pool when
//! the output is large.

use std::sync::Arc;

use rayon::prelude::*;

use super::attrs::AttrReader;
use super::conv::{advance, window_list, Axes, WindowAttrs, MAX_WINDOW};
use super::num::{Arith, Float};
use super::shape::{numel, strides};
use super::{bound, check_float, data, data_mut, operands, worth_splitting, Op, PAR_MIN};
use crate::{Attrs, Bound, DType, Impl, KernelError, Tensor, TensorMeta};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Max,
    Avg,
    MaxIndex,
}

const KINDS: [(&str, Kind); 3] = [
    ("max", Kind::Max),
    ("avg", Kind::Avg),
    ("max_index", Kind::MaxIndex),
];

pub(crate) fn bind(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("pool@1", attrs);
    let kind = r.choice("op", &KINDS)?;
    let kernel = window_list(&mut r, "kernel_shape", 1)?;
    if kernel.is_empty() {
        return Err(r.error(format!(
            "attribute `kernel_shape` is required: one size in 1..={MAX_WINDOW} per spatial axis"
        )));
    }
    let window = WindowAttrs::read(&mut r, true)?;
    let ceil_mode = r.flag("ceil_mode", false)?;
    let count_include_pad = r.flag("count_include_pad", false)?;
    // Only `max_index` reads `storage_order`: `finish` refuses it elsewhere.
    let column_major = kind == Kind::MaxIndex && r.flag("storage_order", false)?;
    r.finish()?;
    let name = KINDS
        .iter()
        .find(|(_, k)| *k == kind)
        .map_or("?", |(n, _)| *n);
    Ok(bound(Pool {
        label: format!("pool@1 ({name})"),
        kind,
        kernel,
        window,
        ceil_mode,
        count_include_pad,
        column_major,
    }))
}

struct Pool {
    label: String,
    kind: Kind,
    kernel: Vec<usize>,
    window: WindowAttrs,
    ceil_mode: bool,
    count_include_pad: bool,
    /// `max_index` with `storage_order` = 1.
    column_major: bool,
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
        if self.kind == Kind::Avg {
            check_float(self, inputs, 0)?;
        }
        let [x] = operands(inputs)?;
        if !(x.dtype.is_float() || x.dtype.is_int()) {
            return Err(format!(
                "{}: expected a float or int dtype, got {}",
                self.input(0),
                x.dtype
            ));
        }
        let (_, out) = self.geometry(&x.shape)?;
        let mut shape = x.shape[..2].to_vec();
        shape.extend(out);
        let dtype = match self.kind {
            Kind::MaxIndex => DType::I64,
            Kind::Max | Kind::Avg => x.dtype,
        };
        Ok(TensorMeta::new(dtype, shape))
    }

    fn compute(&self, imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        let [x] = operands(inputs)?;
        let d = x.dtype();
        if d.is_float() {
            super::with_float!(d, T => {
                let mean: Mean<T> = |sum, n| sum / T::from_usize(n);
                self.compute_typed::<T>(imp, x, out, T::NAN, Some(mean))
            })
        } else {
            super::with_number!(d, T => self.compute_typed::<T>(imp, x, out, T::LOWEST, None))
        }
    }
}

/// `sum / count` for `avg` (floats only).
type Mean<T> = fn(T, usize) -> T;

impl Pool {
    /// Pools `x` into `out` (the values, or for `max_index` the indices).
    /// `empty` is the max of a window holding no input element; `mean` is
    /// `None` for ints, which `infer` refuses for `avg`.
    fn compute_typed<T: Arith>(
        &self,
        imp: Impl,
        x: &Tensor,
        out: &mut Tensor,
        empty: T,
        mean: Option<Mean<T>>,
    ) -> Result<(), String> {
        let (axes, out_sp) = self.geometry(x.shape())?;
        let in_sp = x.shape()[2..].to_vec();
        let xv = data::<T>(x, "input 0 (x)")?;
        let g = Geometry {
            axes: &axes,
            in_sp: &in_sp,
            out_sp: &out_sp,
            empty,
            mean,
        };
        if self.kind == Kind::MaxIndex {
            let idx = data_mut::<i64>(out)?;
            if idx.is_empty() {
                return Ok(());
            }
            let mut y = vec![empty; idx.len()];
            let mut offs = vec![NONE; idx.len()];
            match imp {
                Impl::Reference => self.reference(&g, xv, &mut y, Some(&mut offs))?,
                Impl::Optimized => self.optimized(&g, xv, &mut y, Some(&mut offs))?,
            }
            return self.indices(&in_sp, &out_sp, &offs, idx);
        }
        let y = data_mut::<T>(out)?;
        if y.is_empty() {
            return Ok(());
        }
        match imp {
            Impl::Reference => self.reference(&g, xv, y, None),
            Impl::Optimized => self.optimized(&g, xv, y, None),
        }
    }

    /// The flat indices into `x` of the maxima at in-plane (row-major)
    /// offsets `offs`, one output plane of `out_sp` after another: row-major
    /// over `[N, C, D..]`, or with `storage_order` = 1 the plane's offset
    /// plus a column-major offset over the spatial axes; -1 for an empty
    /// window.
    fn indices(
        &self,
        in_sp: &[usize],
        out_sp: &[usize],
        offs: &[usize],
        idx: &mut [i64],
    ) -> Result<(), String> {
        let in_len = numel(in_sp, "input spatial dims")?;
        let out_len = numel(out_sp, "output spatial dims")?;
        let in_str = strides(in_sp);
        // Column-major strides of the spatial axes.
        let mut col_str = Vec::with_capacity(in_sp.len());
        let mut acc = 1usize;
        for &d in in_sp {
            col_str.push(acc);
            acc = acc.saturating_mul(d);
        }
        let overflow = || "internal: a max index overflows i64".to_string();
        for (q, (slot, &off)) in idx.iter_mut().zip(offs).enumerate() {
            if off == NONE {
                *slot = -1;
                continue;
            }
            let inner = if self.column_major {
                (0..in_sp.len()).fold(0usize, |sum, i| {
                    sum + (off / in_str[i]) % in_sp[i].max(1) * col_str[i]
                })
            } else {
                off
            };
            let flat = (q / out_len.max(1))
                .checked_mul(in_len)
                .and_then(|b| b.checked_add(inner))
                .ok_or_else(overflow)?;
            *slot = i64::try_from(flat).map_err(|_| overflow())?;
        }
        Ok(())
    }

    /// One output element at a time, one window position at a time.
    fn reference<T: Arith>(
        &self,
        g: &Geometry<'_, T>,
        xv: &[T],
        y: &mut [T],
        offs: Option<&mut [usize]>,
    ) -> Result<(), String> {
        let (axes, in_sp, out_sp) = (g.axes, g.in_sp, g.out_sp);
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
        let plane = |p: usize, yp: &mut [T], mut op: Option<&mut [usize]>| -> Result<(), String> {
            let xp = xv
                .get(p * in_len..(p + 1) * in_len)
                .ok_or("internal: pool plane outside x")?;
            let mut o = vec![0usize; s];
            for (e, slot) in yp.iter_mut().enumerate() {
                let mut acc = T::ZERO;
                let mut best = NONE;
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
                    match self.kind {
                        Kind::Avg => acc = T::add(acc, v),
                        Kind::Max | Kind::MaxIndex => {
                            if count == 0 || takes(acc, v) {
                                acc = v;
                                best = off;
                            }
                        }
                    }
                    count += 1;
                }
                *slot = match self.kind {
                    Kind::Max | Kind::MaxIndex if count == 0 => g.empty,
                    Kind::Max | Kind::MaxIndex => acc,
                    Kind::Avg => {
                        let n = if self.count_include_pad {
                            padded_count
                        } else {
                            count
                        };
                        g.mean.ok_or("internal: avg pooling of a non-float dtype")?(acc, n)
                    }
                };
                if let Some(op) = op.as_deref_mut() {
                    *op.get_mut(e)
                        .ok_or("internal: pool index outside the plane")? = best;
                }
                advance(&mut o, out_sp);
            }
            Ok(())
        };
        for_planes(false, out_len, y, offs, plane)
    }

    /// One output row (all spatial axes but the last fixed) at a time: the
    /// row's valid input rows are found once, then each (input row,
    /// last-axis kernel position) pair updates the accumulators of every
    /// output element that reads it, in one strided pass. An element sees
    /// its window in row-major kernel order, as in [`Pool::reference`].
    fn optimized<T: Arith>(
        &self,
        g: &Geometry<'_, T>,
        xv: &[T],
        y: &mut [T],
        offs: Option<&mut [usize]>,
    ) -> Result<(), String> {
        let (axes, in_sp, out_sp) = (g.axes, g.in_sp, g.out_sp);
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
        // Windows of 2 with step 2 along rows whose taps both reach every
        // output (no padding there): the input position of the first.
        let pairs = match taps.as_slice() {
            [t0, t1]
                if self.kind != Kind::MaxIndex
                    && step == 2
                    && axes.dil[last] == 1
                    && (t0.begin, t0.end, t1.begin, t1.end) == (0, ow, 0, ow) =>
            {
                Some(t0.first)
            }
            _ => None,
        };
        let init = if self.kind == Kind::Avg {
            T::ZERO
        } else {
            T::LOWEST
        };
        let plane = |p: usize, yp: &mut [T], op: Option<&mut [usize]>| -> Result<(), String> {
            let xp = xv
                .get(p * in_len..(p + 1) * in_len)
                .ok_or("internal: pool plane outside x")?;
            let mut acc = vec![init; ow];
            let mut best = vec![NONE; if op.is_some() { ow } else { 0 }];
            let mut op_rows = op.map(|op| op.chunks_mut(ow));
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
                if !best.is_empty() {
                    // Only `max_index` keeps positions: the value kinds skip
                    // this (a call per output row).
                    best.fill(NONE);
                }
                for &r in &rows {
                    if let Some(first) = pairs {
                        // Both taps in one pass, in tap order.
                        let src = xp
                            .get(r + first..r + first + 2 * ow)
                            .ok_or("internal: pool window outside x")?;
                        let acc = &mut acc[..];
                        match self.kind {
                            Kind::Max => super::simd::vectorized(
                                #[inline(always)]
                                || fold_pairs(acc, src, max_step),
                            ),
                            _ => super::simd::vectorized(
                                #[inline(always)]
                                || fold_pairs(acc, src, T::add),
                            ),
                        }
                        continue;
                    }
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
                            Kind::Avg => fold_row(dst, src, step, T::add),
                            Kind::MaxIndex => {
                                let bs = best
                                    .get_mut(tap.begin..tap.end)
                                    .ok_or("internal: pool tap outside the row")?;
                                for (j, ((a, b), &v)) in dst
                                    .iter_mut()
                                    .zip(bs)
                                    .zip(src.iter().step_by(step))
                                    .enumerate()
                                {
                                    if *b == NONE || takes(*a, v) {
                                        *a = v;
                                        *b = from + j * step;
                                    }
                                }
                            }
                        }
                    }
                }
                for ((slot, &a), c) in y_row.iter_mut().zip(&acc).zip(&cols) {
                    let count = rows.len() * c.valid;
                    *slot = match self.kind {
                        Kind::Max | Kind::MaxIndex if count == 0 => g.empty,
                        Kind::Max | Kind::MaxIndex => a,
                        Kind::Avg => {
                            let mean =
                                g.mean.ok_or("internal: avg pooling of a non-float dtype")?;
                            if self.count_include_pad {
                                mean(a, lead_padded.saturating_mul(c.padded))
                            } else {
                                mean(a, count)
                            }
                        }
                    };
                }
                if let Some(op_row) = op_rows.as_mut().and_then(|it| it.next()) {
                    op_row.copy_from_slice(&best);
                }
                advance(&mut o, &out_sp[..last]);
            }
            Ok(())
        };
        let work = y.len().saturating_mul(k_len);
        for_planes(worth_splitting(work, PAR_MIN), out_len, y, offs, plane)
    }
}

/// "No input element yet" in a window's index of its maximum.
const NONE: usize = usize::MAX;

/// What both implementations need besides the data.
struct Geometry<'a, T> {
    axes: &'a Axes,
    in_sp: &'a [usize],
    out_sp: &'a [usize],
    empty: T,
    mean: Option<Mean<T>>,
}

/// Runs `plane(p, y_p, offs_p)` for every output plane `p` (and its slice
/// of `offs` when given), across rayon's pool when `parallel`.
fn for_planes<T: Send>(
    parallel: bool,
    out_len: usize,
    y: &mut [T],
    offs: Option<&mut [usize]>,
    plane: impl Fn(usize, &mut [T], Option<&mut [usize]>) -> Result<(), String> + Sync + Send,
) -> Result<(), String> {
    let n = out_len.max(1);
    match (offs, parallel) {
        (Some(offs), true) => y
            .par_chunks_mut(n)
            .zip(offs.par_chunks_mut(n))
            .enumerate()
            .try_for_each(|(p, (yp, op))| plane(p, yp, Some(op))),
        (Some(offs), false) => y
            .chunks_mut(n)
            .zip(offs.chunks_mut(n))
            .enumerate()
            .try_for_each(|(p, (yp, op))| plane(p, yp, Some(op))),
        (None, true) => y
            .par_chunks_mut(n)
            .enumerate()
            .try_for_each(|(p, yp)| plane(p, yp, None)),
        (None, false) => y
            .chunks_mut(n)
            .enumerate()
            .try_for_each(|(p, yp)| plane(p, yp, None)),
    }
}

/// Whether max pooling replaces its running maximum `acc` by the next
/// element `v`: the first NaN wins, then the first of equal maxima. Written
/// without branches (`&`, `|`) so that row loops vectorize; `x != x` is
/// NaN's test (always false for ints).
#[inline(always)]
#[allow(clippy::eq_op)]
fn takes<T: Arith>(acc: T, v: T) -> bool {
    (acc == acc) & ((v != v) | (v > acc))
}

/// The max step of both implementations (see [`takes`]).
#[inline(always)]
fn max_step<T: Arith>(acc: T, v: T) -> T {
    if takes(acc, v) {
        v
    } else {
        acc
    }
}

/// `acc[j] = f(acc[j], src[j * step])` for `src` of at least
/// `(acc.len() - 1) step + 1` elements.
#[inline(always)]
fn fold_row<T: Copy>(acc: &mut [T], src: &[T], step: usize, f: impl Fn(T, T) -> T) {
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

/// `acc[j] = f(f(acc[j], src[2 j]), src[2 j + 1])`: both taps of windows
/// of 2 with step 2, in tap order, in one pass over `src` (whose loads pair
/// up, which vectorizes; callers compile it for the CPU's vector width).
#[inline(always)]
fn fold_pairs<T: Copy>(acc: &mut [T], src: &[T], f: impl Fn(T, T) -> T) {
    for (a, p) in acc.iter_mut().zip(src.chunks_exact(2)) {
        *a = f(f(*a, p[0]), p[1]);
    }
}

/// [`fold_row`] with a constant step, which lets the loop vectorize.
#[inline(always)]
fn fold_fixed<T: Copy, const STEP: usize>(acc: &mut [T], src: &[T], f: impl Fn(T, T) -> T) {
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

    /// Windows of 2 with step 2 along rows (the one-pass path), on rows
    /// long enough for vector loops, with NaN, infinities and signed zeros:
    /// bitwise the reference's, max and avg, f32 and f64, also with a
    /// padded or ceil-mode last window (which take the tap-by-tap path).
    #[test]
    fn windows_of_two_match_reference_bitwise() {
        for x in [
            float_tensor::<f32>(&[2, 3, 5, 41], 5, true),
            float_tensor::<f64>(&[1, 2, 4, 40], 6, true),
        ] {
            for (k, pads, ceil) in [
                ([2, 2], [0, 0, 0, 0], 0),
                ([1, 2], [0, 0, 0, 0], 0),
                ([2, 2], [0, 1, 0, 0], 0),
                ([1, 2], [0, 0, 0, 0], 1),
            ] {
                for op in ["max", "avg"] {
                    let y = pool(
                        &x,
                        &[
                            ("op", s(op)),
                            ("kernel_shape", ints(&k)),
                            ("strides", ints(&k)),
                            ("pads", ints(&pads)),
                            ("ceil_mode", i(ceil)),
                        ],
                    );
                    assert_eq!(
                        y.shape()[3],
                        (x.shape()[3] + pads[1] as usize + ceil as usize) / 2
                    );
                }
            }
        }
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
        // Max takes ints; avg only floats; bools neither.
        assert_eq!(
            k.check(&[&TensorMeta::new(DType::U8, [1, 1, 5, 5])])
                .unwrap()[0],
            TensorMeta::new(DType::U8, [1, 1, 3, 3])
        );
        assert!(k
            .check(&[&TensorMeta::new(DType::Bool, [1, 1, 5, 5])])
            .unwrap_err()
            .to_string()
            .contains("expected a float or int dtype, got bool"));
        let avg = bind(
            "pool@1",
            &attrs(&[("op", s("avg")), ("kernel_shape", ints(&[3, 3]))]),
        )
        .unwrap();
        assert!(avg
            .check(&[&TensorMeta::new(DType::I32, [1, 1, 5, 5])])
            .unwrap_err()
            .to_string()
            .contains("expected a float dtype"));
        // max_index gives i64; `storage_order` is a flag, and only for it.
        let mi = |extra: &[(&str, crate::AttrValue)]| {
            let mut at = vec![("op", s("max_index")), ("kernel_shape", ints(&[2]))];
            at.extend(extra.iter().cloned());
            bind("pool@1", &attrs(&at))
        };
        assert_eq!(
            mi(&[("storage_order", i(1))])
                .unwrap()
                .check(&[&TensorMeta::new(DType::U8, [2, 3, 5])])
                .unwrap()[0],
            TensorMeta::new(DType::I64, [2, 3, 4])
        );
        assert!(mi(&[("storage_order", i(2))]).is_err());
        assert!(bind(
            "pool@1",
            &attrs(&[
                ("op", s("max")),
                ("kernel_shape", ints(&[2])),
                ("storage_order", i(0))
            ])
        )
        .is_err());
    }

    /// The elements of a u8, i32, i64 or float tensor as f64 (exact for the
    /// test values).
    fn values(t: &Tensor) -> Vec<f64> {
        match t.dtype() {
            DType::U8 => t
                .to_vec::<u8>()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect(),
            DType::I32 => t
                .to_vec::<i32>()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect(),
            DType::I64 => t
                .to_vec::<i64>()
                .unwrap()
                .into_iter()
                .map(|v| v as f64)
                .collect(),
            _ => f64s(t),
        }
    }

    /// Max pooling (values and `max_index`) of a 2-D input, directly: the
    /// window's elements in row-major kernel order, the first NaN or else
    /// the first largest wins; its flat index row-major over [N, C, H, W]
    /// or, with `storage_order`, `plane H W + r + c H`.
    #[allow(clippy::too_many_arguments)]
    fn direct_max(
        xv: &[f64],
        (h, w): (usize, usize),
        (oh, ow): (usize, usize),
        k: (usize, usize),
        st: (usize, usize),
        dil: (usize, usize),
        pads: &[usize],
        column_major: bool,
    ) -> Vec<Option<(f64, i64)>> {
        let mut out = Vec::new();
        for plane in 0..xv.len() / (h * w) {
            for a in 0..oh {
                for b in 0..ow {
                    let mut best: Option<(f64, i64)> = None;
                    for p in 0..k.0 {
                        for q in 0..k.1 {
                            let r = (a * st.0 + p * dil.0) as i64 - pads[0] as i64;
                            let c = (b * st.1 + q * dil.1) as i64 - pads[1] as i64;
                            if r < 0 || c < 0 || r >= h as i64 || c >= w as i64 {
                                continue;
                            }
                            let (r, c) = (r as usize, c as usize);
                            let v = xv[plane * h * w + r * w + c];
                            let at = if column_major {
                                plane * h * w + r + c * h
                            } else {
                                plane * h * w + r * w + c
                            };
                            let take = match best {
                                None => true,
                                Some((m, _)) => !m.is_nan() && (v.is_nan() || v > m),
                            };
                            if take {
                                best = Some((v, at as i64));
                            }
                        }
                    }
                    out.push(best);
                }
            }
        }
        out
    }

    #[test]
    fn max_index_by_hand() {
        // 1x1x3x3, ties: the first max in row-major window order wins.
        //  1 5 5
        //  5 2 0
        //  0 9 9
        let x = Tensor::from_vec(&[1, 1, 3, 3], vec![1u8, 5, 5, 5, 2, 0, 0, 9, 9]).unwrap();
        let at = |order: i64| {
            vec![
                ("op", s("max_index")),
                ("kernel_shape", ints(&[2, 2])),
                ("storage_order", i(order)),
            ]
        };
        let y = pool(&x, &at(0));
        assert_eq!(y.dtype(), DType::I64);
        assert_eq!(y.to_vec::<i64>().unwrap(), vec![1, 1, 7, 7]);
        // Column-major: element (r, c) is r + 3 c.
        let y = pool(&x, &at(1));
        assert_eq!(y.to_vec::<i64>().unwrap(), vec![3, 3, 5, 5]);
        let y = pool(&x, &[("op", s("max")), ("kernel_shape", ints(&[2, 2]))]);
        assert_eq!(y.to_vec::<u8>().unwrap(), vec![5, 5, 9, 9]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Int max pooling and `max_index` (ints and floats with NaN and
        /// infinities) against [`direct_max`], both implementations.
        #[test]
        fn max_and_index_match_direct(
            h in 1usize..=7, w in 1usize..=7, planes in 1usize..=3,
            k in (1usize..=3, 1usize..=3),
            st in (1usize..=3, 1usize..=3),
            dil in (1usize..=2, 1usize..=2),
            pads in prop::collection::vec(0usize..=2, 4),
            ceil in any::<bool>(), column_major in any::<bool>(),
            dtype in 0u8..4, seed in any::<u64>(),
        ) {
            let shape = [1, planes, h, w];
            let x = match dtype {
                0 => int_tensor::<u8>(&shape, seed, 0, 4),
                1 => int_tensor::<i32>(&shape, seed, i64::from(i32::MIN), i64::from(i32::MIN) + 3),
                2 => int_tensor::<i64>(&shape, seed, -1000, 1000),
                _ => float_tensor::<f32>(&shape, seed, true),
            };
            let xv = values(&x);
            let geo = |op: &str| {
                let mut at = vec![
                    ("op", s(op)),
                    ("kernel_shape", ints(&[k.0 as i64, k.1 as i64])),
                    ("strides", ints(&[st.0 as i64, st.1 as i64])),
                    ("dilations", ints(&[dil.0 as i64, dil.1 as i64])),
                    ("pads", ints(&pads.iter().map(|&p| p as i64).collect::<Vec<_>>())),
                    ("ceil_mode", i(i64::from(ceil))),
                ];
                if op == "max_index" {
                    at.push(("storage_order", i(i64::from(column_major))));
                }
                attrs(&at)
            };
            let Ok(y) = launch("pool@1", &geo("max"), &[&x], Impl::Reference) else {
                let span = |k: usize, d: usize| d * (k - 1) + 1;
                prop_assert!(h + pads[0] + pads[2] < span(k.0, dil.0) || w + pads[1] + pads[3] < span(k.1, dil.1));
                return Ok(());
            };
            assert_same_bits(&y, &launch("pool@1", &geo("max"), &[&x], Impl::Optimized).unwrap());
            let ix = launch("pool@1", &geo("max_index"), &[&x], Impl::Reference).unwrap();
            assert_same_bits(&ix, &launch("pool@1", &geo("max_index"), &[&x], Impl::Optimized).unwrap());
            prop_assert_eq!(y.dtype(), x.dtype());
            let (oh, ow) = (y.shape()[2], y.shape()[3]);
            let want = direct_max(&xv, (h, w), (oh, ow), k, st, dil, &pads, column_major);
            let (yv, iv) = (values(&y), ix.to_vec::<i64>().unwrap());
            for (j, want) in want.iter().enumerate() {
                match *want {
                    Some((v, at)) => {
                        prop_assert!(yv[j] == v || (v.is_nan() && yv[j].is_nan()), "{} vs {}", yv[j], v);
                        prop_assert_eq!(iv[j], at);
                    }
                    None => {
                        // A window in the padding only.
                        prop_assert_eq!(iv[j], -1);
                        let empty = match dtype {
                            0 => 0.0,
                            1 => f64::from(i32::MIN),
                            2 => i64::MIN as f64,
                            _ => f64::NAN,
                        };
                        prop_assert!(yv[j] == empty || (yv[j].is_nan() && empty.is_nan()));
                    }
                }
            }
        }
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
        for order in [0, 1] {
            pool(
                &x,
                &[
                    ("op", s("max_index")),
                    ("kernel_shape", ints(&[3, 3])),
                    ("pads", ints(&[1, 1, 1, 1])),
                    ("storage_order", i(order)),
                ],
            );
        }
    }
}
