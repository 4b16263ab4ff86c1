//! `resize@1`: nearest, (multi)linear and cubic resampling of every axis to
//! the output shape `sizes`, with ONNX `Resize`'s coordinate rules.
//!
//! Attributes (all but `sizes` optional; the defaults keep the meaning of
//! packages written before the later ones existed):
//! - `sizes`: one output size per axis;
//! - `scales`: one positive finite scale per axis, default `sizes[a] / D[a]`;
//!   the scale enters the coordinate transform and the antialias filter
//!   width, as ONNX's does when the model gives scales;
//! - `mode`: `nearest` (default), `linear` or `cubic`;
//! - `coordinate_transformation_mode`: `half_pixel` (default),
//!   `pytorch_half_pixel`, `align_corners`, `asymmetric`,
//!   `half_pixel_symmetric` or `tf_crop_and_resize`;
//! - `nearest_mode`: `round_prefer_floor` (default), `round_prefer_ceil`,
//!   `floor` or `ceil`;
//! - `cubic_coeff_a`: the cubic kernel's `A`, finite, default -0.75;
//! - `exclude_outside` (0 or 1, default 0): linear and cubic drop the taps
//!   that fall outside the input and renormalize the others;
//! - `antialias` (0 or 1, default 0; linear and cubic only): when an axis
//!   shrinks, its filter is stretched by `1 / scale` and normalized;
//! - `roi`: `2 * rank` finite numbers, the crop starts then the crop ends as
//!   fractions of `D - 1`; required by `tf_crop_and_resize`, refused with
//!   any other coordinate mode;
//! - `extrapolation_value` (default 0): what `tf_crop_and_resize` writes
//!   where the crop reaches outside the input.
//!
//! Output coordinate `x` on an axis of input size `D`, output size `O` and
//! scale `s` maps to input coordinate `x'`:
//! - half_pixel: `(x + 0.5) / s - 0.5`; pytorch_half_pixel: the same when
//!   `L > 1`, else 0; align_corners: `x (D - 1) / (L - 1)` (0 when
//!   `L = 1`); asymmetric: `x / s`; half_pixel_symmetric: half_pixel
//!   shifted by `D/2 (1 - O / (s D))`; tf_crop_and_resize:
//!   `r0 (D - 1) + x (r1 - r0) (D - 1) / (L - 1)` when `L > 1`, else
//!   `(r0 + r1) (D - 1) / 2`, with `r0`, `r1` the axis's `roi` start and
//!   end; where the resized length `L` is `s D` (not rounded, as in ONNX)
//!   when `scales` is given, else `O`.
//! - tf_crop_and_resize: an output element whose `x'` lies outside
//!   `[0, D - 1]` on any axis is `extrapolation_value`.
//! - nearest rounds `x'` by `nearest_mode` and clamps it to `[0, D - 1]`;
//! - linear blends `floor(x')` and `floor(x') + 1` (each clamped) with
//!   weights `1 - w` and `w`, `w = x' - floor(x')`; a zero weight drops its
//!   term, so an axis sampled at whole coordinates copies exactly;
//! - cubic, and linear with `antialias`, are filters: input element `i`
//!   weighs `k(f (i - x'))`, where `k` is the tent `max(0, 1 - |t|)` or
//!   Keys' cubic (`(A+2)|t|^3 - (A+3)|t|^2 + 1` for `|t| <= 1`,
//!   `A|t|^3 - 5A|t|^2 + 8A|t| - 4A` for `1 < |t| < 2`, else 0), and `f`
//!   is `min(s, 1)` with `antialias`, else 1. Taps outside `[0, D - 1]`
//!   read the edge element, or with `exclude_outside` are dropped; the
//!   weights are divided by their sum with `antialias` or `exclude_outside`
//!   (as ONNX's reference does). An output whose taps are all dropped reads
//!   the edge element nearest to `x'`.
//!
//! `nearest` moves elements of any dtype; `linear`, `cubic` and
//! `tf_crop_and_resize` (whose fill is a float) take f32 or f64. An axis of
//! input size 0 must have output size 0. A filter axis wider than 4 taps
//! (antialias) may hold at most [`MAX_FILTER_TAPS`] taps over all its
//! outputs, which only a `scales` entry far below `sizes / D` exceeds.
//!
//! Both implementations first list, per axis, the `(input index, weight)`
//! taps of every output coordinate (none for an extrapolated one). The
//! reference computes each output element directly, as the sum over the
//! product of its axes' taps with the product of their weights. The
//! optimized implementation of the weighted modes resamples one axis at a
//! time, shrinking axes first so that no intermediate is larger than the
//! input or the output, skips axes it would copy, and writes the
//! extrapolated elements last; its summation order differs, so the two
//! agree to rounding. The optimized `nearest` gathers each output row from
//! the one input row it picks (repeated rows are copies), and agrees bit
//! for bit.

use std::sync::Arc;

use super::attrs::AttrReader;
use super::num::Float;
use super::shape::{numel, strides};
use super::{bound, data, data_mut, operands, raw, raw_mut, Op};
use crate::{Attrs, Bound, DType, Impl, KernelError, Tensor, TensorMeta, MAX_RANK};

/// The most taps one filter axis may list over all its outputs, when each
/// output reads more than 4 (only antialiasing does).
pub const MAX_FILTER_TAPS: usize = 1 << 24;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Nearest,
    Linear,
    Cubic,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Nearest => "nearest",
            Mode::Linear => "linear",
            Mode::Cubic => "cubic",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Coord {
    HalfPixel,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    HalfPixelSymmetric,
    TfCropAndResize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Round {
    PreferFloor,
    PreferCeil,
    Floor,
    Ceil,
}

pub(crate) fn bind(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("resize@1", attrs);
    let sizes = r.ints("sizes", None)?;
    if sizes.len() > MAX_RANK || sizes.iter().any(|&s| s < 0) {
        return Err(r.error(format!(
            "attribute `sizes` {sizes:?} must hold at most {MAX_RANK} non-negative sizes"
        )));
    }
    let sizes: Vec<usize> = sizes.iter().map(|&s| s as usize).collect();
    let scales = r.floats("scales", Vec::new())?;
    if !scales.is_empty()
        && (scales.len() != sizes.len() || scales.iter().any(|s| !(s.is_finite() && *s > 0.0)))
    {
        return Err(r.error(format!(
            "attribute `scales` {scales:?} must hold one positive finite scale per entry of `sizes`"
        )));
    }
    let mode = opt_choice(
        &mut r,
        attrs,
        "mode",
        &[
            ("nearest", Mode::Nearest),
            ("linear", Mode::Linear),
            ("cubic", Mode::Cubic),
        ],
        Mode::Nearest,
    )?;
    let coord = opt_choice(
        &mut r,
        attrs,
        "coordinate_transformation_mode",
        &[
            ("half_pixel", Coord::HalfPixel),
            ("pytorch_half_pixel", Coord::PytorchHalfPixel),
            ("align_corners", Coord::AlignCorners),
            ("asymmetric", Coord::Asymmetric),
            ("half_pixel_symmetric", Coord::HalfPixelSymmetric),
            ("tf_crop_and_resize", Coord::TfCropAndResize),
        ],
        Coord::HalfPixel,
    )?;
    let round = opt_choice(
        &mut r,
        attrs,
        "nearest_mode",
        &[
            ("round_prefer_floor", Round::PreferFloor),
            ("round_prefer_ceil", Round::PreferCeil),
            ("floor", Round::Floor),
            ("ceil", Round::Ceil),
        ],
        Round::PreferFloor,
    )?;
    let cubic_a = r.float("cubic_coeff_a", -0.75)?;
    if !cubic_a.is_finite() {
        return Err(r.error(format!(
            "attribute `cubic_coeff_a` must be finite, got {cubic_a}"
        )));
    }
    let exclude_outside = r.flag("exclude_outside", false)?;
    let antialias = r.flag("antialias", false)?;
    if antialias && mode == Mode::Nearest {
        return Err(r.error(
            "attribute `antialias` = 1 needs mode `linear` or `cubic` (nearest does not filter)"
                .to_string(),
        ));
    }
    let roi = r.floats("roi", Vec::new())?;
    if coord == Coord::TfCropAndResize {
        if roi.len() != 2 * sizes.len() || roi.iter().any(|v| !v.is_finite()) {
            return Err(r.error(format!(
                "attribute `roi` {roi:?} must hold {} finite numbers (the crop starts, then \
                 the crop ends, one per entry of `sizes`) for tf_crop_and_resize",
                2 * sizes.len()
            )));
        }
    } else if !roi.is_empty() {
        return Err(r.error(format!(
            "attribute `roi` {roi:?} only applies to coordinate_transformation_mode \
             `tf_crop_and_resize`; drop it"
        )));
    }
    let extrapolation = r.float("extrapolation_value", 0.0)?;
    r.finish()?;
    Ok(bound(Resize {
        label: format!("resize@1 ({})", mode.name()),
        sizes,
        scales,
        mode,
        coord,
        round,
        cubic_a,
        exclude_outside,
        antialias,
        roi,
        extrapolation,
    }))
}

/// A string attribute that must be one of `options`, `default` when absent.
fn opt_choice<T: Copy>(
    r: &mut AttrReader,
    attrs: &Attrs,
    name: &'static str,
    options: &[(&str, T)],
    default: T,
) -> Result<T, KernelError> {
    if attrs.contains_key(name) {
        r.choice(name, options)
    } else {
        Ok(default)
    }
}

struct Resize {
    label: String,
    sizes: Vec<usize>,
    scales: Vec<f64>,
    mode: Mode,
    coord: Coord,
    round: Round,
    cubic_a: f64,
    exclude_outside: bool,
    antialias: bool,
    roi: Vec<f64>,
    extrapolation: f64,
}

/// One tap: input index along the axis, and its weight.
type Tap = (usize, f64);

/// The taps of every output coordinate of one axis: output `j` reads
/// `taps[bounds[j]..bounds[j + 1]]`; an empty range marks an extrapolated
/// coordinate.
struct AxisTaps {
    bounds: Vec<usize>,
    taps: Vec<Tap>,
}

impl AxisTaps {
    fn len(&self) -> usize {
        self.bounds.len().saturating_sub(1)
    }

    fn get(&self, j: usize) -> &[Tap] {
        match (self.bounds.get(j), self.bounds.get(j + 1)) {
            (Some(&a), Some(&b)) => self.taps.get(a..b).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// Whether output `j` is input `j` for every `j < d`, unweighted.
    fn is_copy(&self, d: usize) -> bool {
        self.len() == d && (0..d).all(|j| self.get(j) == [(j, 1.0)])
    }
}

/// A filter's extent: `f` scales distances from `x'`, and the candidate
/// taps are `floor(x') + first + k` for `k < count`.
struct Window {
    f: f64,
    first: f64,
    count: usize,
}

impl Resize {
    /// Whether `mode` computes weights with a filter (rather than nearest
    /// or plain two-tap linear).
    fn filters(&self) -> bool {
        self.mode == Mode::Cubic || (self.mode == Mode::Linear && self.antialias)
    }

    fn scale(&self, a: usize, d: usize, o: usize) -> f64 {
        self.scales
            .get(a)
            .copied()
            .unwrap_or(o as f64 / d.max(1) as f64)
    }

    /// The filter window of axis `a` at scale `scale` for `o` outputs,
    /// refused past [`MAX_FILTER_TAPS`].
    fn window(&self, a: usize, scale: f64, o: usize) -> Result<Window, String> {
        let radius = if self.mode == Mode::Cubic { 2.0 } else { 1.0 };
        let f = if self.antialias { scale.min(1.0) } else { 1.0 };
        // The taps `i` with `|i - x'| f < radius`, and one zero-weight
        // candidate at an edge (as ONNX enumerates them). `count` is
        // infinite only for a subnormal scale, and then over the limit.
        let first = (-radius / f).floor() + 1.0;
        let count = 2.0 - 2.0 * first;
        if o > 0 && count > 4.0 && count * o as f64 > MAX_FILTER_TAPS as f64 {
            return Err(format!(
                "axis {a}: antialiasing at scale {scale} reads {count} input positions per \
                 output, more than {MAX_FILTER_TAPS} taps for {o} outputs; give a scale \
                 close to the output size over the input size"
            ));
        }
        Ok(Window {
            f,
            first,
            count: count as usize,
        })
    }

    /// The filter's weight at (scaled) distance `t`.
    fn weight(&self, t: f64) -> f64 {
        let t = t.abs();
        match self.mode {
            Mode::Cubic => {
                let a = self.cubic_a;
                if t <= 1.0 {
                    ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
                } else if t < 2.0 {
                    ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
                } else {
                    0.0
                }
            }
            // `max` drops a NaN distance to weight 0.
            _ => (1.0 - t).max(0.0),
        }
    }

    /// The input coordinate that output coordinate `x` of axis `a` maps to.
    fn source(&self, a: usize, x: usize, d: usize, o: usize, scale: f64) -> Result<f64, String> {
        let (xf, df) = (x as f64, d as f64);
        // The resized length the coordinate rules use: `scale * D` when
        // scales are given (unrounded, as in ONNX), else the output size.
        let of = if self.scales.is_empty() {
            o as f64
        } else {
            scale * df
        };
        Ok(match self.coord {
            Coord::HalfPixel => (xf + 0.5) / scale - 0.5,
            Coord::PytorchHalfPixel if of > 1.0 => (xf + 0.5) / scale - 0.5,
            Coord::PytorchHalfPixel => 0.0,
            Coord::AlignCorners if of != 1.0 => xf * (df - 1.0) / (of - 1.0),
            Coord::AlignCorners => 0.0,
            Coord::Asymmetric => xf / scale,
            Coord::HalfPixelSymmetric => {
                let adj = o as f64 / (scale * df);
                df / 2.0 * (1.0 - adj) + (xf + 0.5) / scale - 0.5
            }
            Coord::TfCropAndResize => {
                let (Some(&r0), Some(&r1)) = (self.roi.get(a), self.roi.get(self.sizes.len() + a))
                else {
                    return Err(format!("internal: resize has no roi for axis {a}"));
                };
                // ONNX's operation order, so the inside/outside test agrees.
                let span = if of > 1.0 {
                    xf * (r1 - r0) * (df - 1.0) / (of - 1.0)
                } else {
                    (r1 - r0) * (df - 1.0) / 2.0
                };
                span + r0 * (df - 1.0)
            }
        })
    }

    /// The taps of every output coordinate of axis `a` (input size `d`).
    fn axis_taps(&self, a: usize, d: usize) -> Result<AxisTaps, String> {
        let o = *self
            .sizes
            .get(a)
            .ok_or_else(|| format!("internal: resize has no size for axis {a}"))?;
        let scale = self.scale(a, d, o);
        let window = if self.filters() {
            Some(self.window(a, scale, o)?)
        } else {
            None
        };
        let last = d.saturating_sub(1);
        // `as usize` saturates: NaN and negatives become 0.
        let clamp = |v: f64| (v.max(0.0) as usize).min(last);
        let mut t = AxisTaps {
            bounds: Vec::with_capacity(o + 1),
            taps: Vec::with_capacity(o),
        };
        t.bounds.push(0);
        for x in 0..o {
            let src = self.source(a, x, d, o, scale)?;
            let outside =
                self.coord == Coord::TfCropAndResize && !(src >= 0.0 && src <= last as f64);
            if outside {
                // No taps: extrapolated.
            } else if let Some(w) = &window {
                self.filter_taps(src, last, w, &mut t.taps);
            } else if self.mode == Mode::Linear {
                let f = src.floor();
                let w = src - f;
                let (i0, i1) = (clamp(f), clamp(f + 1.0));
                if i0 == i1 || w.is_nan() || w <= 0.0 {
                    t.taps.push((i0, 1.0));
                } else {
                    t.taps.extend([(i0, 1.0 - w), (i1, w)]);
                }
            } else {
                let f = src.floor();
                let frac = src - f;
                let r = match self.round {
                    Round::Floor => f,
                    Round::Ceil => src.ceil(),
                    Round::PreferFloor if frac == 0.5 => f,
                    Round::PreferCeil if frac == 0.5 => f + 1.0,
                    _ => src.round(),
                };
                t.taps.push((clamp(r), 1.0));
            }
            t.bounds.push(t.taps.len());
        }
        Ok(t)
    }

    /// Appends the filter taps of source coordinate `src` on an axis whose
    /// last index is `last`: clamped indices that coincide merge, zero
    /// weights are dropped.
    fn filter_taps(&self, src: f64, last: usize, w: &Window, taps: &mut Vec<Tap>) {
        let from = taps.len();
        let base = src.floor() + w.first;
        let mut total = 0.0;
        for k in 0..w.count {
            let i = base + k as f64;
            let weight = self.weight((i - src) * w.f);
            let inside = i >= 0.0 && i <= last as f64;
            if weight == 0.0 || (self.exclude_outside && !inside) {
                continue;
            }
            total += weight;
            let idx = (i.max(0.0) as usize).min(last);
            match taps[from..].last_mut() {
                Some(t) if t.0 == idx => t.1 += weight,
                _ => taps.push((idx, weight)),
            }
        }
        if taps.len() == from {
            taps.push(((src.round().max(0.0) as usize).min(last), 1.0));
        } else if self.antialias || self.exclude_outside {
            for t in &mut taps[from..] {
                t.1 /= total;
            }
        }
    }
}

impl Op for Resize {
    fn label(&self) -> &str {
        &self.label
    }

    fn input_names(&self) -> &[&'static str] {
        &["x"]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        let [x] = operands(inputs)?;
        if !x.dtype.is_float() {
            let needs_float = match (self.mode, self.coord) {
                (Mode::Nearest, Coord::TfCropAndResize) => {
                    Some("tf_crop_and_resize (its extrapolation value is a float)")
                }
                (Mode::Nearest, _) => None,
                (Mode::Linear, _) => Some("linear mode"),
                (Mode::Cubic, _) => Some("cubic mode"),
            };
            if let Some(what) = needs_float {
                return Err(format!(
                    "{}: {what} needs f32 or f64, got {}",
                    self.input(0),
                    x.dtype
                ));
            }
        }
        if x.shape.len() != self.sizes.len() {
            return Err(format!(
                "attribute `sizes` {:?} has {} entries but {} has rank {} (shape {:?})",
                self.sizes,
                self.sizes.len(),
                self.input(0),
                x.shape.len(),
                x.shape
            ));
        }
        for (a, (&d, &o)) in x.shape.iter().zip(&self.sizes).enumerate() {
            if d == 0 && o != 0 {
                return Err(format!(
                    "{}: axis {a} is empty and cannot be resized to {o}",
                    self.input(0)
                ));
            }
            if self.filters() {
                self.window(a, self.scale(a, d, o), o)?;
            }
        }
        Ok(TensorMeta::new(x.dtype, self.sizes.clone()))
    }

    fn compute(&self, imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        let [x] = operands(inputs)?;
        if out.numel() == 0 {
            return Ok(());
        }
        let taps: Vec<AxisTaps> = x
            .shape()
            .iter()
            .enumerate()
            .map(|(a, &d)| self.axis_taps(a, d))
            .collect::<Result<_, _>>()?;
        let ev = self.extrapolation;
        let dtype = x.dtype();
        match (imp, self.mode) {
            (Impl::Reference, Mode::Nearest) => {
                super::with_width!(dtype, T => nearest_direct::<T>(x, &taps, fill_word(dtype, ev), out))
            }
            (Impl::Reference, _) => {
                super::with_float!(dtype, T => weighted_direct::<T>(x, &taps, T::from_f64(ev), out))
            }
            (Impl::Optimized, Mode::Nearest) => {
                super::with_width!(dtype, T => nearest_rows::<T>(x, &taps, fill_word(dtype, ev), out))
            }
            (Impl::Optimized, _) => {
                super::with_float!(dtype, T => separable::<T>(x, &taps, T::from_f64(ev), out, weigh::<T>))
            }
        }
    }
}

/// `value` as a word of `dtype`'s width (zero for non-float dtypes, which
/// never extrapolate: `infer` refuses them with tf_crop_and_resize).
fn fill_word<T: bytemuck::Pod>(dtype: DType, value: f64) -> T {
    let bytes = match dtype {
        DType::F32 => (value as f32).to_ne_bytes().to_vec(),
        DType::F64 => value.to_ne_bytes().to_vec(),
        _ => Vec::new(),
    };
    bytemuck::try_pod_read_unaligned(&bytes).unwrap_or_else(|_| T::zeroed())
}

/// The axes to resample, shrinking ones first; axes whose taps copy are
/// left out.
fn pass_order(shape: &[usize], taps: &[AxisTaps]) -> Vec<usize> {
    let mut axes: Vec<usize> = shape
        .iter()
        .zip(taps)
        .enumerate()
        .filter(|(_, (&d, t))| !t.is_copy(d))
        .map(|(a, _)| a)
        .collect();
    axes.sort_by_key(|&a| {
        taps.get(a).map_or(0, AxisTaps::len) > shape.get(a).copied().unwrap_or(0)
    });
    axes
}

/// The optimized nearest resize. Each output row (along the last axis)
/// reads the one input row its outer coordinates pick, through a table of
/// input columns built once; a row that picks the same input row as the
/// row before it copies that row. Output planes (the last two axes) run on
/// rayon's pool when the output is large.
fn nearest_rows<T: bytemuck::Pod + Send + Sync>(
    x: &Tensor,
    taps: &[AxisTaps],
    fill: T,
    out: &mut Tensor,
) -> Result<(), String> {
    let src = raw::<T>(x, "input 0 (x)")?;
    let y = raw_mut::<T>(out)?;
    let (Some((last, outer)), Some(&w_in)) = (taps.split_last(), x.shape().last()) else {
        // A scalar: its one element.
        return match (y.first_mut(), src.first()) {
            (Some(d), Some(&v)) => {
                *d = v;
                Ok(())
            }
            _ => Err("internal: scalar resize without its element".to_string()),
        };
    };
    let w = last.len();
    if w == 0 || y.is_empty() {
        return Ok(());
    }
    let cols: Vec<Option<usize>> = (0..w)
        .map(|j| match last.get(j) {
            [(i, _)] if *i < w_in => Some(*i),
            _ => None,
        })
        .collect();
    // Each output row's input row (its first element), or None where an
    // outer axis extrapolates.
    let xs = strides(x.shape());
    let dims: Vec<usize> = outer.iter().map(AxisTaps::len).collect();
    let mut c = vec![0usize; dims.len()];
    let mut rows = Vec::with_capacity(y.len() / w);
    for _ in 0..y.len() / w {
        let mut off = Some(0usize);
        for ((&j, t), &s) in c.iter().zip(outer).zip(&xs) {
            off = match (off, t.get(j)) {
                (Some(o), [(i, _)]) => Some(o + i * s),
                _ => None,
            };
        }
        rows.push(off);
        step(&mut c, &dims);
    }
    let plane_rows = dims.last().copied().unwrap_or(1).max(1);
    let plane = |(p, yp): (usize, &mut [T])| {
        let mut prev: Option<(usize, usize)> = None;
        for r in 0..yp.len() / w {
            let (done, rest) = yp.split_at_mut(r * w);
            let d_row = &mut rest[..w];
            let Some(off) = rows.get(p * plane_rows + r).copied().flatten() else {
                d_row.fill(fill);
                continue;
            };
            if let Some((po, pr)) = prev {
                if po == off {
                    d_row.copy_from_slice(&done[pr * w..(pr + 1) * w]);
                    continue;
                }
            }
            let s = src
                .get(off..off + w_in)
                .ok_or("internal: resize read outside x")?;
            for (d, c) in d_row.iter_mut().zip(&cols) {
                *d = c.map_or(fill, |c| s[c]);
            }
            prev = Some((off, r));
        }
        Ok::<(), String>(())
    };
    let plane_len = plane_rows * w;
    if super::worth_splitting(y.len(), super::PAR_MIN) {
        use rayon::prelude::*;
        y.par_chunks_mut(plane_len).enumerate().try_for_each(plane)
    } else {
        y.chunks_mut(plane_len).enumerate().try_for_each(plane)
    }
}

/// One output row as the weighted sum of its taps' rows, in tap order; an
/// extrapolated row is left for [`fill_outside`].
fn weigh<T: Float>(src: &[T], taps: &[Tap], inner: usize, dst: &mut [T]) {
    let row = |i: usize| src.get(i * inner..(i + 1) * inner);
    match *taps {
        [] => {}
        [(i, w)] => {
            let Some(a) = row(i) else { return };
            if w == 1.0 {
                dst.copy_from_slice(a);
            } else {
                let w = T::from_f64(w);
                for (d, &u) in dst.iter_mut().zip(a) {
                    *d = u * w;
                }
            }
        }
        // The common linear case in one sweep; the same sums as the loop
        // below.
        [(i0, w0), (i1, w1)] => {
            let (Some(a), Some(b)) = (row(i0), row(i1)) else {
                return;
            };
            let (w0, w1) = (T::from_f64(w0), T::from_f64(w1));
            for ((d, &u), &v) in dst.iter_mut().zip(a).zip(b) {
                *d = u * w0 + v * w1;
            }
        }
        [(i0, w0), ref rest @ ..] => {
            let Some(a) = row(i0) else { return };
            let w0 = T::from_f64(w0);
            for (d, &u) in dst.iter_mut().zip(a) {
                *d = u * w0;
            }
            for &(i, w) in rest {
                let Some(b) = row(i) else { return };
                let w = T::from_f64(w);
                for (d, &v) in dst.iter_mut().zip(b) {
                    *d = *d + v * w;
                }
            }
        }
    }
}

/// Resamples one axis at a time in [`pass_order`], then fills the
/// extrapolated elements. `row` computes one output row of a pass from its
/// taps (a generic, so it inlines: along the last axis a row is one
/// element). The first pass reads the input in place and the last writes
/// the output, so only the passes between have buffers of their own.
fn separable<T: bytemuck::Pod>(
    x: &Tensor,
    taps: &[AxisTaps],
    fill: T,
    out: &mut Tensor,
    row: impl Fn(&[T], &[Tap], usize, &mut [T]),
) -> Result<(), String> {
    let mut shape = x.shape().to_vec();
    let input = raw::<T>(x, "input 0 (x)")?;
    let y = raw_mut::<T>(out)?;
    let order = pass_order(x.shape(), taps);
    let short = || "internal: resize passes do not reach the output shape".to_string();
    let mut between: Option<Vec<T>> = None;
    for (k, &a) in order.iter().enumerate() {
        let t = taps.get(a).ok_or("internal: resize axis without taps")?;
        let (outer, d, inner) = (
            numel(&shape[..a], "outer dims")?,
            shape[a],
            numel(&shape[a + 1..], "inner dims")?,
        );
        let o = t.len();
        if d * inner == 0 || o * inner == 0 {
            return Err("internal: resize pass over an empty axis".to_string());
        }
        let src = between.as_deref().unwrap_or(input);
        let mut next = (k + 1 < order.len()).then(|| vec![T::zeroed(); outer * o * inner]);
        let dst = match next.as_deref_mut() {
            Some(next) => next,
            None if y.len() == outer * o * inner => &mut *y,
            None => return Err(short()),
        };
        for (src, dst) in src.chunks(d * inner).zip(dst.chunks_mut(o * inner)) {
            for (j, d_row) in dst.chunks_mut(inner).enumerate() {
                row(src, t.get(j), inner, d_row);
            }
        }
        shape[a] = o;
        if next.is_some() {
            between = next;
        }
    }
    if order.is_empty() {
        if y.len() != input.len() {
            return Err(short());
        }
        y.copy_from_slice(input);
    }
    fill_outside(y, taps, fill);
    Ok(())
}

/// Writes `fill` over every output element that is extrapolated on some
/// axis.
fn fill_outside<T: Copy>(y: &mut [T], taps: &[AxisTaps], fill: T) {
    let dims: Vec<usize> = taps.iter().map(AxisTaps::len).collect();
    for (a, t) in taps.iter().enumerate() {
        let outside: Vec<usize> = (0..t.len()).filter(|&j| t.get(j).is_empty()).collect();
        if outside.is_empty() {
            continue;
        }
        // Bounded by `y.len()`, the product of `dims`.
        let inner: usize = dims[a + 1..].iter().product();
        let block = t.len() * inner;
        if block == 0 {
            continue;
        }
        for b in y.chunks_mut(block) {
            for &j in &outside {
                if let Some(r) = b.get_mut(j * inner..(j + 1) * inner) {
                    r.fill(fill);
                }
            }
        }
    }
}

/// Steps `idx` through `dims` row-major; false once it wraps to all zeros.
fn step(idx: &mut [usize], dims: &[usize]) -> bool {
    for d in (0..idx.len()).rev() {
        idx[d] += 1;
        if idx[d] < dims[d] {
            return true;
        }
        idx[d] = 0;
    }
    false
}

fn nearest_direct<T: bytemuck::Pod>(
    x: &Tensor,
    taps: &[AxisTaps],
    fill: T,
    out: &mut Tensor,
) -> Result<(), String> {
    let xs = strides(x.shape());
    let src = raw::<T>(x, "input 0 (x)")?;
    let dims: Vec<usize> = taps.iter().map(AxisTaps::len).collect();
    let y = raw_mut::<T>(out)?;
    let mut c = vec![0usize; dims.len()];
    'out: for slot in y.iter_mut() {
        let mut off = 0usize;
        for ((&j, t), &s) in c.iter().zip(taps).zip(&xs) {
            match t.get(j) {
                [(i, _)] => off += i * s,
                _ => {
                    *slot = fill;
                    step(&mut c, &dims);
                    continue 'out;
                }
            }
        }
        *slot = *src.get(off).ok_or("internal: resize read outside x")?;
        step(&mut c, &dims);
    }
    Ok(())
}

fn weighted_direct<T: Float>(
    x: &Tensor,
    taps: &[AxisTaps],
    fill: T,
    out: &mut Tensor,
) -> Result<(), String> {
    let xs = strides(x.shape());
    let src = data::<T>(x, "input 0 (x)")?;
    let dims: Vec<usize> = taps.iter().map(AxisTaps::len).collect();
    let y = data_mut::<T>(out)?;
    let mut c = vec![0usize; dims.len()];
    let mut k = vec![0usize; dims.len()];
    for slot in y.iter_mut() {
        let cell: Vec<&[Tap]> = c.iter().zip(taps).map(|(&j, t)| t.get(j)).collect();
        if cell.iter().any(|t| t.is_empty()) {
            *slot = fill;
        } else {
            let lens: Vec<usize> = cell.iter().map(|t| t.len()).collect();
            k.fill(0);
            let mut acc = T::ZERO;
            loop {
                let mut off = 0usize;
                let mut weight = 1.0f64;
                for ((t, &kk), &s) in cell.iter().zip(&k).zip(&xs) {
                    let &(i, w) = t.get(kk).ok_or("internal: resize tap out of range")?;
                    off += i * s;
                    weight *= w;
                }
                acc = acc
                    + *src.get(off).ok_or("internal: resize read outside x")? * T::from_f64(weight);
                if !step(&mut k, &lens) {
                    break;
                }
            }
            *slot = acc;
        }
        step(&mut c, &dims);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::*;
    use crate::{AttrValue, DType, Impl, Tensor, TensorMeta};

    fn resize(x: &Tensor, at: &[(&str, AttrValue)]) -> (Tensor, Tensor) {
        let r = launch("resize@1", &attrs(at), &[x], Impl::Reference).unwrap();
        let o = launch("resize@1", &attrs(at), &[x], Impl::Optimized).unwrap();
        (r, o)
    }

    /// The settings of [`onnx_nd`], ONNX's reference `Resize`.
    struct Spec {
        mode: &'static str,
        coord: &'static str,
        a: f64,
        exclude_outside: bool,
        antialias: bool,
        /// Per axis: crop start, crop end.
        roi: Vec<(f64, f64)>,
        extrapolation: f64,
    }

    /// ONNX's `_cubic_coeffs`, `_cubic_coeffs_antialias`, `_linear_coeffs`
    /// and `_linear_coeffs_antialias` (`onnx/reference/ops/op_resize.py`),
    /// transcribed: the weights of the taps around `x'` for
    /// `ratio = x' - (ceil(x') - 1)`, in `(0, 1]`.
    fn coeffs(p: &Spec, ratio: f64, scale: f64) -> Vec<f64> {
        let a = p.a;
        match (p.mode, p.antialias) {
            ("cubic", false) => vec![
                ((a * (ratio + 1.0) - 5.0 * a) * (ratio + 1.0) + 8.0 * a) * (ratio + 1.0) - 4.0 * a,
                ((a + 2.0) * ratio - (a + 3.0)) * ratio * ratio + 1.0,
                ((a + 2.0) * (1.0 - ratio) - (a + 3.0)) * (1.0 - ratio) * (1.0 - ratio) + 1.0,
                ((a * ((1.0 - ratio) + 1.0) - 5.0 * a) * ((1.0 - ratio) + 1.0) + 8.0 * a)
                    * ((1.0 - ratio) + 1.0)
                    - 4.0 * a,
            ],
            ("cubic", true) => {
                let s = scale.min(1.0);
                let coeff = |x: f64| {
                    let x = x.abs();
                    let (x2, x3) = (x * x, x * x * x);
                    if x <= 1.0 {
                        (a + 2.0) * x3 - (a + 3.0) * x2 + 1.0
                    } else if x < 2.0 {
                        a * x3 - 5.0 * a * x2 + 8.0 * a * x - 4.0 * a
                    } else {
                        0.0
                    }
                };
                let start = (-2.0 / s).floor() as i64 + 1;
                let c: Vec<f64> = (start..2 - start)
                    .map(|i| coeff(s * (i as f64 - ratio)))
                    .collect();
                let sum: f64 = c.iter().sum();
                c.iter().map(|v| v / sum).collect()
            }
            ("linear", false) => vec![1.0 - ratio, ratio],
            ("linear", true) => {
                let s = scale.min(1.0);
                let start = (-1.0 / s).floor() as i64 + 1;
                let c: Vec<f64> = (start..2 - start)
                    .map(|i| (1.0 - ((i as f64 - ratio) * s).abs()).clamp(0.0, 1.0))
                    .collect();
                let sum: f64 = c.iter().sum();
                c.iter().map(|v| v / sum).collect()
            }
            _ => unreachable!(),
        }
    }

    /// ONNX's `_interpolate_1d_with_x`, transcribed: output coordinate `x`
    /// of a 1-D resize of `data` at scale `scale` to `out` elements.
    /// pytorch_half_pixel with a resized length of 1 maps to 0 as the spec
    /// says (the Python reference's -0.5 disagrees with it).
    fn onnx_1d(data: &[f64], scale: f64, out: usize, x: f64, roi: (f64, f64), p: &Spec) -> f64 {
        let n = data.len() as f64;
        let ow = scale * n;
        let x_ori = match p.coord {
            "align_corners" if ow == 1.0 => 0.0,
            "align_corners" => x * (n - 1.0) / (ow - 1.0),
            "asymmetric" => x / scale,
            "tf_crop_and_resize" => {
                let v = if ow == 1.0 {
                    (roi.1 - roi.0) * (n - 1.0) / 2.0
                } else {
                    x * (roi.1 - roi.0) * (n - 1.0) / (ow - 1.0)
                } + roi.0 * (n - 1.0);
                if v < 0.0 || v > n - 1.0 {
                    return p.extrapolation;
                }
                v
            }
            "pytorch_half_pixel" if ow == 1.0 => 0.0,
            "pytorch_half_pixel" | "half_pixel" => (x + 0.5) / scale - 0.5,
            "half_pixel_symmetric" => {
                let adjustment = out as f64 / ow;
                n / 2.0 * (1.0 - adjustment) + (x + 0.5) / scale - 0.5
            }
            other => unreachable!("{other}"),
        };
        // `_get_neighbor` pads `data` by its edges and picks the taps
        // nearest to `x' + pad`. Take the ratio from that same sum, so that
        // a coordinate too close to an integer to survive the addition
        // (2.8e-17 + 2 == 2) gets the weights of the taps it is given.
        // (The number of taps does not depend on the ratio.)
        let pad = coeffs(p, 0.0, scale).len().div_ceil(2);
        let xp = x_ori + pad as f64;
        let x_ori = xp - pad as f64;
        let ratio = if x_ori == x_ori.floor() {
            1.0
        } else {
            x_ori - x_ori.floor()
        };
        let mut c = coeffs(p, ratio, scale);
        // `_get_neighbor`: pad `data` by its edges, then take the `c.len()`
        // indexes nearest to `x'`, preferring the smaller ones.
        let len = data.len() as i64;
        let padded: Vec<f64> = (0..len + 2 * pad as i64)
            .map(|k| data[(k - pad as i64).clamp(0, len - 1) as usize])
            .collect();
        let mut idx: Vec<usize> = (0..padded.len()).collect();
        idx.sort_by(|&u, &v| {
            ((xp - u as f64).abs(), u)
                .partial_cmp(&((xp - v as f64).abs(), v))
                .unwrap()
        });
        idx.truncate(c.len());
        idx.sort();
        if p.exclude_outside {
            for (k, &i) in idx.iter().enumerate() {
                let orig = i as i64 - pad as i64;
                if orig < 0 || orig >= len {
                    c[k] = 0.0;
                }
            }
            let sum: f64 = c.iter().sum();
            c.iter_mut().for_each(|v| *v /= sum);
        }
        c.iter().zip(&idx).map(|(w, &i)| w * padded[i]).sum()
    }

    /// ONNX's `_interpolate_nd_with_x`: the inner axes first, then axis 0
    /// over their results.
    fn onnx_nd(
        data: &[f64],
        shape: &[usize],
        scales: &[f64],
        outs: &[usize],
        x: &[usize],
        p: &Spec,
        axis: usize,
    ) -> f64 {
        let roi = p.roi.get(axis).copied().unwrap_or((0.0, 1.0));
        if shape.len() == 1 {
            return onnx_1d(data, scales[0], outs[0], x[0] as f64, roi, p);
        }
        let inner: usize = shape[1..].iter().product();
        let rows: Vec<f64> = (0..shape[0])
            .map(|i| {
                onnx_nd(
                    &data[i * inner..(i + 1) * inner],
                    &shape[1..],
                    &scales[1..],
                    &outs[1..],
                    &x[1..],
                    p,
                    axis + 1,
                )
            })
            .collect();
        onnx_1d(&rows, scales[0], outs[0], x[0] as f64, roi, p)
    }

    /// Every element of the resize of `x` to `outs` by [`onnx_nd`].
    fn onnx_resize(x: &Tensor, scales: &[f64], outs: &[usize], p: &Spec) -> Tensor {
        let data = f64s(x);
        let n: usize = outs.iter().product();
        let mut c = vec![0usize; outs.len()];
        let mut y = Vec::with_capacity(n);
        for _ in 0..n {
            y.push(onnx_nd(&data, x.shape(), scales, outs, &c, p, 0));
            super::step(&mut c, outs);
        }
        Tensor::from_vec(outs, y).unwrap()
    }

    /// The kernel attributes for `p`.
    fn spec_attrs(
        p: &Spec,
        sizes: &[usize],
        scales: Option<&[f64]>,
    ) -> Vec<(&'static str, AttrValue)> {
        let sizes: Vec<i64> = sizes.iter().map(|&v| v as i64).collect();
        let mut at = vec![
            ("sizes", ints(&sizes)),
            ("mode", s(p.mode)),
            ("coordinate_transformation_mode", s(p.coord)),
            ("cubic_coeff_a", AttrValue::Float(p.a)),
            ("exclude_outside", i(i64::from(p.exclude_outside))),
            ("antialias", i(i64::from(p.antialias))),
            ("extrapolation_value", AttrValue::Float(p.extrapolation)),
        ];
        if p.coord == "tf_crop_and_resize" {
            let roi = p.roi.iter().map(|r| r.0).chain(p.roi.iter().map(|r| r.1));
            at.push(("roi", AttrValue::Floats(roi.collect())));
        }
        if let Some(sc) = scales {
            at.push(("scales", AttrValue::Floats(sc.to_vec())));
        }
        at
    }

    /// Both implementations against [`onnx_resize`], f64 throughout.
    fn check_against_onnx(x: &Tensor, sizes: &[usize], scales: Option<&[f64]>, p: &Spec) {
        let (r, o) = resize(x, &spec_attrs(p, sizes, scales));
        let sc: Vec<f64> = match scales {
            Some(sc) => sc.to_vec(),
            None => x
                .shape()
                .iter()
                .zip(sizes)
                .map(|(&d, &o)| o as f64 / d as f64)
                .collect(),
        };
        let want = onnx_resize(x, &sc, sizes, p);
        assert_close(&want, &r, 1e-10, 1e-10);
        assert_close(&want, &o, 1e-10, 1e-10);
    }

    fn spec(mode: &'static str, coord: &'static str) -> Spec {
        Spec {
            mode,
            coord,
            a: -0.75,
            exclude_outside: false,
            antialias: false,
            roi: Vec::new(),
            extrapolation: 0.0,
        }
    }

    #[test]
    fn nearest_upsample_by_two() {
        let x = Tensor::from_vec(&[1, 1, 2, 2], vec![1i64, 2, 3, 4]).unwrap();
        // Asymmetric + floor: every pixel doubled (ONNX's
        // test_resize_upsample_scales_nearest).
        let (r, o) = resize(
            &x,
            &[
                ("sizes", ints(&[1, 1, 4, 4])),
                ("coordinate_transformation_mode", s("asymmetric")),
                ("nearest_mode", s("floor")),
            ],
        );
        assert_same_bits(&r, &o);
        assert_eq!(
            r.to_vec::<i64>().unwrap(),
            vec![1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 4, 4, 3, 3, 4, 4]
        );
    }

    #[test]
    fn linear_by_hand() {
        // align_corners on [0, 10] to 5 points: 0, 2.5, 5, 7.5, 10.
        let x = Tensor::from_vec(&[2], vec![0.0f32, 10.0]).unwrap();
        let (r, o) = resize(
            &x,
            &[
                ("sizes", ints(&[5])),
                ("mode", s("linear")),
                ("coordinate_transformation_mode", s("align_corners")),
            ],
        );
        assert_eq!(r.to_vec::<f32>().unwrap(), vec![0.0, 2.5, 5.0, 7.5, 10.0]);
        assert_close(&r, &o, 0.0, 1e-6);
        // half_pixel doubling: x' = (x + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25.
        let (r, _) = resize(&x, &[("sizes", ints(&[4])), ("mode", s("linear"))]);
        assert_eq!(r.to_vec::<f32>().unwrap(), vec![0.0, 2.5, 7.5, 10.0]);
        // Scales given: 0.6 on 4 elements keeps 2 (ONNX's
        // test_resize_downsample_scales_linear: x' = (x + 0.5) / 0.6 - 0.5).
        let x = Tensor::from_vec(&[4], vec![1.0f64, 2.0, 3.0, 4.0]).unwrap();
        let (r, _) = resize(
            &x,
            &[
                ("sizes", ints(&[2])),
                ("scales", AttrValue::Floats(vec![0.6])),
                ("mode", s("linear")),
            ],
        );
        let want: Vec<f64> = [0.5f64, 1.5]
            .iter()
            .map(|&c| {
                let xo = c / 0.6 - 0.5;
                1.0 + xo
            })
            .collect();
        assert_close(&r, &Tensor::from_vec(&[2], want).unwrap(), 0.0, 1e-12);
    }

    #[test]
    fn cubic_by_hand() {
        // Doubling [0, 0, 1, 0, 0] with half_pixel: output 4 sits at
        // x' = 4.5 / 2 - 0.5 = 1.75, so its taps are inputs 0..=3 at
        // distances 1.75, 0.75, 0.25, 1.25, and only input 2 is non-zero:
        // Keys' cubic at 0.25 with A = -0.75.
        let x = Tensor::from_vec(&[5], vec![0.0f64, 0.0, 1.0, 0.0, 0.0]).unwrap();
        let (r, o) = resize(&x, &[("sizes", ints(&[10])), ("mode", s("cubic"))]);
        let (a, t) = (-0.75f64, 0.25f64);
        let want = (a + 2.0) * t.powi(3) - (a + 3.0) * t * t + 1.0;
        assert!((r.to_vec::<f64>().unwrap()[4] - want).abs() < 1e-15);
        assert_close(&r, &o, 1e-14, 1e-14);
        // A whole-coordinate sample copies: asymmetric doubling maps even
        // outputs to inputs.
        let (r, o) = resize(
            &x,
            &[
                ("sizes", ints(&[10])),
                ("mode", s("cubic")),
                ("coordinate_transformation_mode", s("asymmetric")),
            ],
        );
        let r = r.to_vec::<f64>().unwrap();
        assert_eq!([r[0], r[2], r[4], r[6], r[8]], [0.0, 0.0, 1.0, 0.0, 0.0]);
        assert_eq!(r, o.to_vec::<f64>().unwrap());
    }

    #[test]
    fn cubic_matches_onnx() {
        for (a, exclude) in [(-0.75, false), (-0.5, true), (-0.5, false), (-0.75, true)] {
            for coord in [
                "half_pixel",
                "pytorch_half_pixel",
                "align_corners",
                "asymmetric",
                "half_pixel_symmetric",
            ] {
                let p = Spec {
                    a,
                    exclude_outside: exclude,
                    ..spec("cubic", coord)
                };
                let x = float_tensor::<f64>(&[1, 2, 4, 5], 7, false);
                // ONNX's cubic cases: scales 2 and 0.8, and sizes.
                check_against_onnx(&x, &[1, 2, 8, 10], Some(&[1.0, 1.0, 2.0, 2.0]), &p);
                check_against_onnx(&x, &[1, 2, 3, 4], Some(&[1.0, 1.0, 0.8, 0.8]), &p);
                check_against_onnx(&x, &[1, 2, 9, 3], None, &p);
            }
        }
    }

    #[test]
    fn antialias_matches_onnx() {
        for mode in ["linear", "cubic"] {
            for exclude in [false, true] {
                let p = Spec {
                    antialias: true,
                    exclude_outside: exclude,
                    ..spec(mode, "half_pixel")
                };
                let x = float_tensor::<f64>(&[6, 9], 11, false);
                check_against_onnx(&x, &[3, 3], Some(&[0.6, 0.4]), &p);
                check_against_onnx(&x, &[2, 4], None, &p);
                // Upsampling: antialias leaves the filter as it is.
                check_against_onnx(&x, &[7, 20], None, &p);
            }
        }
        // A 1/3 tent sums 5 inputs with weights 1/9 (1, 2, 3, 2, 1) / ...:
        // output 1 of 9 -> 3 sits at x' = 1.5 * 3 - 0.5 = 4 exactly.
        let x = Tensor::from_vec(&[9], (0..9).map(|v| (v * v) as f64).collect()).unwrap();
        let (r, o) = resize(
            &x,
            &[
                ("sizes", ints(&[3])),
                ("mode", s("linear")),
                ("antialias", i(1)),
            ],
        );
        let w = [1.0, 2.0, 3.0, 2.0, 1.0];
        let want: f64 = (2..=6).map(|v| (v * v) as f64 * w[v - 2]).sum::<f64>() / 9.0;
        assert!((r.to_vec::<f64>().unwrap()[1] - want).abs() < 1e-12);
        assert_close(&r, &o, 1e-14, 1e-14);
    }

    #[test]
    fn tf_crop_and_resize_extrapolates() {
        for mode in ["nearest", "linear", "cubic"] {
            let p = Spec {
                roi: vec![(0.0, 1.0), (0.4, 1.2), (0.6, 1.7)],
                extrapolation: 10.0,
                ..spec(mode, "tf_crop_and_resize")
            };
            let x = float_tensor::<f64>(&[2, 4, 4], 5, false);
            if mode != "nearest" {
                check_against_onnx(&x, &[2, 3, 3], None, &p);
                check_against_onnx(&x, &[2, 5, 7], None, &p);
            }
            // Output (., 2, 2) samples x' = 0.4 * 3 + 2 * 0.8 * 3 / 2 = 3.6
            // on axis 1: outside, so every mode writes the fill there.
            let (r, o) = resize(&x, &spec_attrs(&p, &[2, 3, 3], None));
            assert_eq!(r.to_vec::<f64>().unwrap()[8], 10.0);
            assert_eq!(o.to_vec::<f64>().unwrap()[8], 10.0);
            if mode == "nearest" {
                assert_same_bits(&r, &o);
            }
        }
        // Integer tensors cannot take the float fill.
        let k = bind(
            "resize@1",
            &attrs(&[
                ("sizes", ints(&[3])),
                ("coordinate_transformation_mode", s("tf_crop_and_resize")),
                ("roi", AttrValue::Floats(vec![0.0, 1.0])),
            ]),
        )
        .unwrap();
        assert!(k.check(&[&TensorMeta::new(DType::I32, [2])]).is_err());
        assert!(k.check(&[&TensorMeta::new(DType::F32, [2])]).is_ok());
    }

    #[test]
    fn attribute_errors() {
        let roi = |v: &[f64]| AttrValue::Floats(v.to_vec());
        for bad in [
            attrs(&[]),
            attrs(&[("sizes", ints(&[-1]))]),
            attrs(&[
                ("sizes", ints(&[2])),
                ("scales", AttrValue::Floats(vec![0.0])),
            ]),
            attrs(&[
                ("sizes", ints(&[2])),
                ("scales", AttrValue::Floats(vec![1.0, 1.0])),
            ]),
            attrs(&[("sizes", ints(&[2])), ("mode", s("bicubic"))]),
            attrs(&[("sizes", ints(&[2])), ("nearest_mode", s("up"))]),
            attrs(&[("sizes", ints(&[2])), ("antialias", i(1))]),
            attrs(&[
                ("sizes", ints(&[2])),
                ("antialias", i(2)),
                ("mode", s("linear")),
            ]),
            attrs(&[("sizes", ints(&[2])), ("exclude_outside", i(-1))]),
            attrs(&[
                ("sizes", ints(&[2])),
                ("cubic_coeff_a", AttrValue::Float(f64::NAN)),
            ]),
            attrs(&[
                ("sizes", ints(&[2])),
                ("coordinate_transformation_mode", s("tf_crop_and_resize")),
            ]),
            attrs(&[
                ("sizes", ints(&[2])),
                ("coordinate_transformation_mode", s("tf_crop_and_resize")),
                ("roi", roi(&[0.0])),
            ]),
            attrs(&[
                ("sizes", ints(&[2])),
                ("coordinate_transformation_mode", s("tf_crop_and_resize")),
                ("roi", roi(&[0.0, f64::INFINITY])),
            ]),
            attrs(&[("sizes", ints(&[2])), ("roi", roi(&[0.0, 1.0]))]),
            attrs(&[("sizes", ints(&[2])), ("extrapolation_value", s("x"))]),
        ] {
            assert!(bind("resize@1", &bad).is_err(), "{bad:?}");
        }
        let k = bind(
            "resize@1",
            &attrs(&[("sizes", ints(&[3])), ("mode", s("linear"))]),
        )
        .unwrap();
        assert!(k.check(&[&TensorMeta::new(DType::I32, [2])]).is_err());
        assert!(k
            .check(&[&TensorMeta::new(DType::F32, [0])])
            .unwrap_err()
            .to_string()
            .contains("axis 0 is empty"));
        // A tiny scale with antialias would read the whole input (and far
        // beyond) for each of many outputs: refused before any work.
        let k = bind(
            "resize@1",
            &attrs(&[
                ("sizes", ints(&[1000])),
                ("scales", AttrValue::Floats(vec![1e-9])),
                ("mode", s("cubic")),
                ("antialias", i(1)),
            ]),
        )
        .unwrap();
        let err = k
            .check(&[&TensorMeta::new(DType::F32, [4])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("antialiasing at scale"), "{err}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn optimized_matches_reference(
            dims in prop::collection::vec((1usize..=5, 0usize..=7), 1..=4),
            mode in 0usize..3,
            coord in 0usize..6,
            round in 0usize..4,
            filter in (any::<bool>(), any::<bool>(), prop::sample::select(vec![-0.75, -0.5])),
            with_scales in any::<bool>(),
            roi_bits in any::<u64>(),
            seed in any::<u64>(),
        ) {
            let (antialias, exclude, a) = filter;
            let shape: Vec<usize> = dims.iter().map(|d| d.0).collect();
            let sizes: Vec<i64> = dims.iter().map(|d| d.1 as i64).collect();
            let x = float_tensor::<f64>(&shape, seed, false);
            let modes = ["nearest", "linear", "cubic"];
            let coords = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "half_pixel_symmetric", "tf_crop_and_resize"];
            let rounds = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"];
            let mut at = vec![
                ("sizes", ints(&sizes)),
                ("mode", s(modes[mode])),
                ("coordinate_transformation_mode", s(coords[coord])),
                ("nearest_mode", s(rounds[round])),
                ("cubic_coeff_a", AttrValue::Float(a)),
                ("exclude_outside", i(i64::from(exclude))),
                ("antialias", i(i64::from(antialias && mode > 0))),
                ("extrapolation_value", AttrValue::Float(-3.5)),
            ];
            if with_scales {
                let sc = shape.iter().zip(&sizes).map(|(&d, &o)| (o.max(1) as f64 + 0.3) / d as f64).collect();
                at.push(("scales", AttrValue::Floats(sc)));
            }
            if coord == 5 {
                // Crop boxes from -0.5 to 1.5 of the input, some reaching out.
                let roi = (0..2 * shape.len()).map(|k| (roi_bits >> (4 * k) & 15) as f64 / 7.5 - 0.5).collect();
                at.push(("roi", AttrValue::Floats(roi)));
            }
            let (r, o) = resize(&x, &at);
            if mode == 0 {
                assert_same_bits(&r, &o);
            } else {
                assert_close(&r, &o, 1e-12, 1e-12);
            }
        }

        #[test]
        fn filters_match_onnx(
            dims in prop::collection::vec((1usize..=5, 1usize..=7), 1..=3),
            cubic in any::<bool>(),
            coord in 0usize..6,
            filter in (any::<bool>(), any::<bool>(), prop::sample::select(vec![-0.75, -0.5])),
            with_scales in any::<bool>(),
            roi_bits in any::<u64>(),
            seed in any::<u64>(),
        ) {
            let (antialias, exclude, a) = filter;
            let shape: Vec<usize> = dims.iter().map(|d| d.0).collect();
            let coords = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "half_pixel_symmetric", "tf_crop_and_resize"];
            let x = float_tensor::<f64>(&shape, seed, false);
            let p = Spec {
                a,
                exclude_outside: exclude,
                antialias,
                roi: (0..shape.len())
                    .map(|k| {
                        let v = |b: usize| (roi_bits >> (8 * k + b) & 15) as f64 / 7.5 - 0.5;
                        (v(0), v(4))
                    })
                    .collect(),
                extrapolation: 2.5,
                ..spec(if cubic { "cubic" } else { "linear" }, coords[coord])
            };
            if with_scales {
                let sc: Vec<f64> = dims.iter().map(|&(d, o)| (o as f64 + 0.25) / d as f64).collect();
                let sizes: Vec<usize> = shape.iter().zip(&sc).map(|(&d, s)| (d as f64 * s).floor() as usize).collect();
                check_against_onnx(&x, &sizes, Some(&sc), &p);
            } else {
                let sizes: Vec<usize> = dims.iter().map(|d| d.1).collect();
                check_against_onnx(&x, &sizes, None, &p);
            }
        }

        #[test]
        fn check_never_panics(a in adversarial_meta(), n in 0usize..4, mode in 0usize..3) {
            let modes = ["nearest", "linear", "cubic"];
            let at = attrs(&[("sizes", ints(&vec![3; n])), ("mode", s(modes[mode]))]);
            check_is_consistent(&*bind("resize@1", &at).unwrap(), &[&a]);
        }
    }
}
