//! `resize@1`: nearest and (multi)linear resampling of every axis to the
//! output shape `sizes`, with ONNX `Resize`'s coordinate rules.
//!
//! Attributes: `sizes` (required, one output size per axis), `scales`
//! (one positive finite scale per axis; default `sizes[a] / D[a]`; the
//! scale enters the coordinate transform, as ONNX's does when the model
//! gives scales), `mode` (`nearest` or `linear`, default `nearest`),
//! `coordinate_transformation_mode` (`half_pixel` (default),
//! `pytorch_half_pixel`, `align_corners`, `asymmetric`,
//! `half_pixel_symmetric`), `nearest_mode` (`round_prefer_floor`
//! (default), `round_prefer_ceil`, `floor`, `ceil`).
//!
//! Output coordinate `x` on an axis of input size `D`, output size `O` and
//! scale `s` maps to input coordinate `x'`:
//! - half_pixel: `(x + 0.5) / s - 0.5`; pytorch_half_pixel: the same when
//!   `L > 1`, else 0; align_corners: `x (D - 1) / (L - 1)` (0 when
//!   `L = 1`); asymmetric: `x / s`; half_pixel_symmetric: half_pixel
//!   shifted by `D/2 (1 - O / (s D))`; where the resized length `L` is
//!   `s D` (not rounded, as in ONNX) when `scales` is given, else `O`.
//! - nearest rounds `x'` by `nearest_mode` and clamps it to `[0, D - 1]`;
//! - linear blends `floor(x')` and `floor(x') + 1` (each clamped) with
//!   weights `1 - w` and `w`, `w = x' - floor(x')`; a zero weight drops its
//!   term, so an axis sampled at whole coordinates copies exactly.
//!
//! `nearest` moves elements of any dtype; `linear` takes f32 or f64. An
//! axis of input size 0 must have output size 0.
//!
//! The reference computes each output element directly (the weighted sum
//! over the corners of its cell). The optimized implementation resamples
//! one axis at a time, shrinking axes first so that no intermediate is
//! larger than the input or the output, and skips axes it would copy; for
//! `linear` the summation order differs, so the two agree to rounding.

use std::sync::Arc;

use super::attrs::AttrReader;
use super::num::Float;
use super::shape::{numel, strides};
use super::{bound, data, data_mut, operands, raw, raw_mut, Op};
use crate::{Attrs, Bound, Impl, KernelError, Tensor, TensorMeta, MAX_RANK};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Coord {
    HalfPixel,
    PytorchHalfPixel,
    AlignCorners,
    Asymmetric,
    HalfPixelSymmetric,
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
    let linear = opt_choice(
        &mut r,
        attrs,
        "mode",
        &[("nearest", false), ("linear", true)],
        false,
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
    r.finish()?;
    Ok(bound(Resize {
        label: format!("resize@1 ({})", if linear { "linear" } else { "nearest" }),
        sizes,
        scales,
        linear,
        coord,
        round,
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
    linear: bool,
    coord: Coord,
    round: Round,
}

/// One output coordinate's source: `(i0, i1, w)` reads
/// `(1 - w) x[i0] + w x[i1]`; nearest has `w = 0`.
type Tap = (usize, usize, f64);

impl Resize {
    /// The taps of every output coordinate of axis `a` (input size `d`).
    fn taps(&self, a: usize, d: usize) -> Vec<Tap> {
        let o = self.sizes[a];
        let scale = self
            .scales
            .get(a)
            .copied()
            .unwrap_or(o as f64 / d.max(1) as f64);
        // The resized length the coordinate rules use: `scale * D` when
        // scales are given (unrounded, as in ONNX), else the output size.
        let df = d as f64;
        let of = if self.scales.is_empty() {
            o as f64
        } else {
            scale * df
        };
        let last = d.saturating_sub(1);
        (0..o)
            .map(|x| {
                let xf = x as f64;
                let src = match self.coord {
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
                };
                // `as usize` saturates: NaN and negatives become 0.
                let clamp = |v: f64| (v.max(0.0) as usize).min(last);
                if self.linear {
                    let f = src.floor();
                    let w = src - f;
                    let (i0, i1) = (clamp(f), clamp(f + 1.0));
                    if i0 == i1 || w.is_nan() || w <= 0.0 {
                        (i0, i0, 0.0)
                    } else {
                        (i0, i1, w)
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
                    let i = clamp(r);
                    (i, i, 0.0)
                }
            })
            .collect()
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
        if self.linear && !x.dtype.is_float() {
            return Err(format!(
                "{}: linear mode needs f32 or f64, got {}",
                self.input(0),
                x.dtype
            ));
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
        }
        Ok(TensorMeta::new(x.dtype, self.sizes.clone()))
    }

    fn compute(&self, imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        let [x] = operands(inputs)?;
        if out.numel() == 0 {
            return Ok(());
        }
        let taps: Vec<Vec<Tap>> = x
            .shape()
            .iter()
            .enumerate()
            .map(|(a, &d)| self.taps(a, d))
            .collect();
        match (imp, self.linear) {
            (Impl::Reference, true) => {
                super::with_float!(x.dtype(), T => linear_direct::<T>(x, &taps, out))
            }
            (Impl::Reference, false) => {
                super::with_width!(x.dtype(), T => nearest_direct::<T>(x, &taps, out))
            }
            (Impl::Optimized, linear) => {
                let order = pass_order(x.shape(), &self.sizes, &taps);
                if linear {
                    super::with_float!(x.dtype(), T => separable::<T>(x, &taps, &order, out, blend::<T>))
                } else {
                    super::with_width!(x.dtype(), T => separable::<T>(x, &taps, &order, out, pick::<T>))
                }
            }
        }
    }
}

/// The axes to resample, shrinking ones first; axes whose taps copy are
/// left out.
fn pass_order(shape: &[usize], sizes: &[usize], taps: &[Vec<Tap>]) -> Vec<usize> {
    let mut axes: Vec<usize> = (0..shape.len())
        .filter(|&a| {
            shape[a] != sizes[a]
                || taps[a]
                    .iter()
                    .enumerate()
                    .any(|(j, &(i0, _, w))| i0 != j || w != 0.0)
        })
        .collect();
    axes.sort_by_key(|&a| sizes[a] > shape[a]);
    axes
}

fn pick<T: Copy>(src: &[T], i0: usize, _: usize, _: f64, inner: usize, dst: &mut [T]) {
    if let Some(s) = src.get(i0 * inner..(i0 + 1) * inner) {
        dst.copy_from_slice(s);
    }
}

fn blend<T: Float>(src: &[T], i0: usize, i1: usize, w: f64, inner: usize, dst: &mut [T]) {
    let (Some(a), Some(b)) = (
        src.get(i0 * inner..(i0 + 1) * inner),
        src.get(i1 * inner..(i1 + 1) * inner),
    ) else {
        return;
    };
    if w == 0.0 {
        dst.copy_from_slice(a);
        return;
    }
    let (w0, w1) = (T::from_f64(1.0 - w), T::from_f64(w));
    for ((d, &u), &v) in dst.iter_mut().zip(a).zip(b) {
        *d = u * w0 + v * w1;
    }
}

type Row<T> = fn(&[T], usize, usize, f64, usize, &mut [T]);

fn separable<T: bytemuck::Pod>(
    x: &Tensor,
    taps: &[Vec<Tap>],
    order: &[usize],
    out: &mut Tensor,
    row: Row<T>,
) -> Result<(), String> {
    let mut shape = x.shape().to_vec();
    let mut cur: Vec<T> = raw::<T>(x, "input 0 (x)")?.to_vec();
    for &a in order {
        let (outer, d, inner) = (
            numel(&shape[..a], "outer dims")?,
            shape[a],
            numel(&shape[a + 1..], "inner dims")?,
        );
        let o = taps[a].len();
        let mut next = vec![T::zeroed(); outer * o * inner];
        for (src, dst) in cur.chunks(d * inner).zip(next.chunks_mut(o * inner)) {
            for (&(i0, i1, w), d_row) in taps[a].iter().zip(dst.chunks_mut(inner)) {
                row(src, i0, i1, w, inner, d_row);
            }
        }
        shape[a] = o;
        cur = next;
    }
    let y = raw_mut::<T>(out)?;
    if y.len() != cur.len() {
        return Err("internal: resize passes do not reach the output shape".to_string());
    }
    y.copy_from_slice(&cur);
    Ok(())
}

fn nearest_direct<T: bytemuck::Pod>(
    x: &Tensor,
    taps: &[Vec<Tap>],
    out: &mut Tensor,
) -> Result<(), String> {
    let xs = strides(x.shape());
    let src = raw::<T>(x, "input 0 (x)")?;
    let dims: Vec<usize> = taps.iter().map(Vec::len).collect();
    let y = raw_mut::<T>(out)?;
    let mut c = vec![0usize; dims.len()];
    for slot in y.iter_mut() {
        let off: usize = c
            .iter()
            .zip(taps)
            .zip(&xs)
            .map(|((&j, t), &s)| t[j].0 * s)
            .sum();
        *slot = *src.get(off).ok_or("internal: resize read outside x")?;
        super::conv::advance(&mut c, &dims);
    }
    Ok(())
}

fn linear_direct<T: Float>(x: &Tensor, taps: &[Vec<Tap>], out: &mut Tensor) -> Result<(), String> {
    let xs = strides(x.shape());
    let src = data::<T>(x, "input 0 (x)")?;
    let dims: Vec<usize> = taps.iter().map(Vec::len).collect();
    let y = data_mut::<T>(out)?;
    let mut c = vec![0usize; dims.len()];
    for slot in y.iter_mut() {
        let cell: Vec<Tap> = c.iter().zip(taps).map(|(&j, t)| t[j]).collect();
        // Only axes with a non-zero weight contribute a second corner.
        let blended: Vec<usize> = (0..cell.len()).filter(|&a| cell[a].2 != 0.0).collect();
        let mut acc = T::ZERO;
        for corner in 0..1usize << blended.len() {
            let mut off = 0usize;
            let mut weight = 1.0f64;
            let mut bit = 0;
            for (a, &(i0, i1, w)) in cell.iter().enumerate() {
                if w != 0.0 {
                    let hi = corner >> bit & 1 == 1;
                    bit += 1;
                    weight *= if hi { w } else { 1.0 - w };
                    off += if hi { i1 } else { i0 } * xs[a];
                } else {
                    off += i0 * xs[a];
                }
            }
            acc =
                acc + *src.get(off).ok_or("internal: resize read outside x")? * T::from_f64(weight);
        }
        *slot = acc;
        super::conv::advance(&mut c, &dims);
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
    fn attribute_errors() {
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
            attrs(&[("sizes", ints(&[2])), ("mode", s("cubic"))]),
            attrs(&[("sizes", ints(&[2])), ("nearest_mode", s("up"))]),
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
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn optimized_matches_reference(
            dims in prop::collection::vec((1usize..=5, 0usize..=7), 1..=4),
            linear in any::<bool>(),
            coord in 0usize..5,
            round in 0usize..4,
            with_scales in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let shape: Vec<usize> = dims.iter().map(|d| d.0).collect();
            let sizes: Vec<i64> = dims.iter().map(|d| d.1 as i64).collect();
            let x = float_tensor::<f64>(&shape, seed, false);
            let coords = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "half_pixel_symmetric"];
            let rounds = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"];
            let mut at = vec![
                ("sizes", ints(&sizes)),
                ("mode", s(if linear { "linear" } else { "nearest" })),
                ("coordinate_transformation_mode", s(coords[coord])),
                ("nearest_mode", s(rounds[round])),
            ];
            if with_scales {
                let sc = shape.iter().zip(&sizes).map(|(&d, &o)| (o.max(1) as f64 + 0.3) / d as f64).collect();
                at.push(("scales", AttrValue::Floats(sc)));
            }
            let (r, o) = resize(&x, &at);
            if linear {
                assert_close(&r, &o, 0.0, 1e-12);
            } else {
                assert_same_bits(&r, &o);
            }
        }

        #[test]
        fn check_never_panics(a in adversarial_meta(), n in 0usize..4) {
            let at = attrs(&[("sizes", ints(&vec![3; n])), ("mode", s("linear"))]);
            check_is_consistent(&*bind("resize@1", &at).unwrap(), &[&a]);
        }
    }
}
