//! `conv@1` and `conv_transpose@1`: N-D convolutions over `[N, C, D1..Ds]`
//! (s >= 1 spatial axes) on f32 and f64, and the window geometry they share
//! with the pooling kernels.
//!
//! - `conv@1`: `x [N, C, D..]`, `w [M, C/group, K..]`, `bias [M]` when
//!   `bias` = 1. Output `[N, M, O..]` with
//!   `O = (D + pad_begin + pad_end - (dilation (K - 1) + 1)) / stride + 1`;
//!   a window larger than the padded input is a signature error.
//! - `conv_transpose@1`: `x [N, C, D..]`, `w [C, M/group, K..]`, `bias [M]`.
//!   Output `[N, M, O..]` with `O = stride (D - 1) + output_padding +
//!   dilation (K - 1) + 1 - pad_begin - pad_end`, which must not be negative.
//!   Input position `i` and kernel position `k` add into output
//!   `i stride + k dilation - pad_begin` when that lies inside the output.
//!
//! Attributes (lists have one entry per spatial axis, `pads` two: all begins
//! then all ends, ONNX's order; an absent or empty list means the default):
//! `group` (default 1), `strides` and `dilations` (default 1, each in
//! 1..=[`MAX_WINDOW`]), `pads` (default 0, each in 0..=[`MAX_WINDOW`]),
//! `output_padding` (transpose only, default 0, in 0..=[`MAX_WINDOW`]),
//! `bias` (0 or 1). ONNX's `auto_pad` and `output_shape` are resolved into
//! explicit pads by the importer, which knows the static shapes.
//!
//! `conv@1` may carry an epilogue: `post`, a `fused@1` program
//! ([`Program`]) whose register 0 is the convolution's result, reading
//! `post_inputs` more inputs (after x, w and bias; each broadcasts to the
//! output without widening it). It runs in place on the output, exactly as
//! a `fused@1` launch would on the stored result, so the compiler can fold a
//! BatchNorm's scale and shift, an activation or a residual add into the
//! convolution without changing a value.
//!
//! The reference implementations are the plain nested loops. The optimized
//! ones walk the window row by row (rows of the innermost spatial axis):
//! a `RowWindow` resolves, per axis and kernel coordinate, which positions
//! land inside the other grid, so each (kernel position, row) pair is one
//! contiguous run plus padding at its ends, with no per-element tests.
//!
//! - f32 `conv@1` with stride 1, one or two spatial axes, a kernel larger
//!   than 1x1 and output rows of at least one vector runs on an AVX-512
//!   CPU (or on AVX2 with FMA: depthwise, or with a kernel of 9 positions
//!   or more) as a direct convolution (`direct.rs`), starting its sums
//!   at the bias and running the epilogue on each band of output rows it
//!   finishes (the same ops on the same values, while they are in cache).
//!   The paths below take everything else.
//! - `conv@1` with one input channel and at most [`DEPTHWISE_MG_MAX`] output
//!   channels per group (depthwise) is computed directly: per output plane,
//!   per row, per kernel position, `y_row += w · x_row` over the in-range
//!   run. With a stride along rows the plane is first split by column phase
//!   so that the runs stay contiguous. Planes run on rayon's pool.
//! - Other stride-1 `conv@1`s with at least [`SHIFTED_MIN_CHANNELS`] input
//!   channels per group are a sum of products, one per kernel position,
//!   each reading the (zero-padded) input planes at a shift ([`Shifted`]):
//!   no im2col columns, and with no pads and inner kernel extents of 1
//!   (a `[K, 1]` kernel) no copy of the input or the output at all.
//! - Other `conv@1`s multiply each (batch, group) pair's weights
//!   `[M/g, C/g·K]` by an im2col matrix `[C/g·K, O]` with `gemm`; a 1x1
//!   window with stride 1 and no padding, or an unpadded 1-D window over
//!   one input channel, uses the input itself. im2col rows
//!   are copies (stride 1) or strided gathers with zeroed ends, built on
//!   rayon's pool when the product is.
//! - `conv_transpose@1` multiplies the transposed weights `[M/g·K, C/g]` by
//!   the input `[C/g, D]` and adds the columns back run by run (col2im),
//!   output channels in parallel.
//!
//! im2col/col2im matrices are built in tiles of whole rows of positions, or
//! of part of one row when a row is taller than the budget, so that no
//! buffer exceeds [`COL_MAX`] elements beyond one column's height, whatever
//! the attributes. Pairs run on rayon's pool when the work is large.

mod direct;

use std::sync::Arc;

use rayon::prelude::*;

use super::attrs::AttrReader;
use super::fused::Program;
use super::matmul::{gemm_sum_into, gemm_tiled_into, MatRef, GEMM_PAR_MIN};
use super::num::{Arith, Float};
use super::scratch::Scratch;
use super::shape::{broadcast, numel, strides};
use super::{bound, check_float, check_same_dtype, data, data_mut, worth_splitting, Op, PAR_MIN};
use crate::{Attrs, Bound, DType, Impl, KernelError, Tensor, TensorMeta, MAX_OPERANDS, MAX_RANK};

/// The largest stride, dilation, pad or output padding accepted: far above
/// any real model, and small enough that window arithmetic on addressable
/// shapes cannot overflow.
pub(crate) const MAX_WINDOW: i64 = 1 << 24;

/// The most elements an im2col/col2im tile holds (when one column is
/// shorter than this).
const COL_MAX: usize = 1 << 20;

/// The optimized `conv@1` computes convolutions with one input channel per
/// group and at most this many output channels per group directly
/// ([`conv_depthwise`]) rather than through im2col and gemm.
const DEPTHWISE_MG_MAX: usize = 4;

/// The most rows of positions in one im2col/col2im tile.
const TILE_ROWS_MAX: usize = 1 << 12;

/// The most (row, kernel position) runs the depthwise path tabulates once
/// for all planes; larger planes compute runs as they go.
const RUN_TABLE_MAX: usize = 1 << 15;

/// The most groups accepted.
const MAX_GROUP: i64 = 1 << 24;

/// Reads a per-axis list whose entries must lie in `lo..=MAX_WINDOW`.
pub(crate) fn window_list(
    r: &mut AttrReader,
    name: &'static str,
    lo: i64,
) -> Result<Vec<usize>, KernelError> {
    let v = r.ints(name, Some(Vec::new()))?;
    if v.len() > 2 * MAX_RANK {
        return Err(r.error(format!(
            "attribute `{name}` has {} entries, more than any input rank allows",
            v.len()
        )));
    }
    v.iter()
        .map(|&x| {
            if (lo..=MAX_WINDOW).contains(&x) {
                Ok(x as usize)
            } else {
                Err(r.error(format!(
                    "attribute `{name}` entries must be in {lo}..={MAX_WINDOW}, got {v:?}"
                )))
            }
        })
        .collect()
}

/// The window attributes shared by convolutions and pools, as bound.
#[derive(Clone, Debug)]
pub(crate) struct WindowAttrs {
    pub(crate) strides: Vec<usize>,
    pub(crate) dilations: Vec<usize>,
    pub(crate) pads: Vec<usize>,
}

impl WindowAttrs {
    pub(crate) fn read(r: &mut AttrReader, dilations: bool) -> Result<Self, KernelError> {
        Ok(WindowAttrs {
            strides: window_list(r, "strides", 1)?,
            dilations: if dilations {
                window_list(r, "dilations", 1)?
            } else {
                Vec::new()
            },
            pads: window_list(r, "pads", 0)?,
        })
    }

    /// Per-axis (stride, dilation, pad_begin, pad_end) for `s` spatial axes.
    pub(crate) fn resolve(&self, s: usize) -> Result<Axes, String> {
        let per_axis = |v: &[usize], name: &str, n: usize, default: usize| {
            if v.is_empty() {
                Ok(vec![default; n])
            } else if v.len() == n {
                Ok(v.to_vec())
            } else {
                Err(format!(
                    "attribute `{name}` has {} entries but the input has {s} spatial axes (expected {n})",
                    v.len()
                ))
            }
        };
        let pads = per_axis(&self.pads, "pads", 2 * s, 0)?;
        Ok(Axes {
            stride: per_axis(&self.strides, "strides", s, 1)?,
            dil: per_axis(&self.dilations, "dilations", s, 1)?,
            pad_b: pads[..s].to_vec(),
            pad_e: pads[s..].to_vec(),
        })
    }
}

/// Resolved window geometry, one entry per spatial axis.
#[derive(Clone, Debug)]
pub(crate) struct Axes {
    pub(crate) stride: Vec<usize>,
    pub(crate) dil: Vec<usize>,
    pub(crate) pad_b: Vec<usize>,
    pub(crate) pad_e: Vec<usize>,
}

impl Axes {
    /// `dilation (k - 1) + 1` on axis `i`, or an error for `k = 0`.
    pub(crate) fn span(&self, i: usize, k: usize) -> Result<usize, String> {
        if k == 0 {
            return Err(format!("kernel size 0 on spatial axis {i}"));
        }
        self.dil[i]
            .checked_mul(k - 1)
            .and_then(|v| v.checked_add(1))
            .ok_or_else(|| format!("window on spatial axis {i} overflows"))
    }

    /// The padded extent of input size `d` on axis `i`.
    pub(crate) fn padded(&self, i: usize, d: usize) -> Result<usize, String> {
        d.checked_add(self.pad_b[i])
            .and_then(|v| v.checked_add(self.pad_e[i]))
            .ok_or_else(|| format!("padded size of spatial axis {i} overflows"))
    }

    /// Output sizes of a sliding window of sizes `k` over `d` (floor mode).
    pub(crate) fn out_dims(&self, d: &[usize], k: &[usize]) -> Result<Vec<usize>, String> {
        (0..d.len())
            .map(|i| {
                let (p, w) = (self.padded(i, d[i])?, self.span(i, k[i])?);
                if p < w {
                    return Err(format!(
                        "the window of spatial axis {i} spans {w} (kernel {}, dilation {}) but the padded input has only {p}",
                        k[i], self.dil[i]
                    ));
                }
                Ok((p - w) / self.stride[i] + 1)
            })
            .collect()
    }

    /// The input offset (row-major over `in_dims` with `in_strides`) that
    /// output position `o` reads at kernel position `k`, or `None` in the
    /// padding. Saturating arithmetic: an overflow lands outside the input.
    pub(crate) fn input_offset(
        &self,
        o: &[usize],
        k: &[usize],
        in_dims: &[usize],
        in_strides: &[usize],
    ) -> Option<usize> {
        let mut off = 0usize;
        for i in 0..o.len() {
            let p = o[i]
                .saturating_mul(self.stride[i])
                .saturating_add(k[i].saturating_mul(self.dil[i]))
                .checked_sub(self.pad_b[i])?;
            if p >= in_dims[i] {
                return None;
            }
            off += p * in_strides[i];
        }
        Some(off)
    }
}

/// Advances `idx` as an odometer over `dims` (row-major).
pub(crate) fn advance(idx: &mut [usize], dims: &[usize]) {
    for d in (0..idx.len()).rev() {
        idx[d] += 1;
        if idx[d] < dims[d] {
            return;
        }
        idx[d] = 0;
    }
}

/// The coordinates of row-major flat index `flat` of `dims`.
pub(crate) fn coords(mut flat: usize, dims: &[usize]) -> Vec<usize> {
    let mut c = vec![0; dims.len()];
    for d in (0..dims.len()).rev() {
        if dims[d] > 0 {
            c[d] = flat % dims[d];
            flat /= dims[d];
        }
    }
    c
}

pub(crate) fn bind_conv(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    bind_any(attrs, false)
}

pub(crate) fn bind_conv_transpose(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    bind_any(attrs, true)
}

fn bind_any(attrs: &Attrs, transpose: bool) -> Result<Arc<dyn Bound>, KernelError> {
    let name = if transpose {
        "conv_transpose@1"
    } else {
        "conv@1"
    };
    let mut r = AttrReader::new(name, attrs);
    let group = r.int("group", Some(1))?;
    if !(1..=MAX_GROUP).contains(&group) {
        return Err(r.error(format!(
            "attribute `group` must be in 1..={MAX_GROUP}, got {group}"
        )));
    }
    let window = WindowAttrs::read(&mut r, true)?;
    let output_padding = if transpose {
        window_list(&mut r, "output_padding", 0)?
    } else {
        Vec::new()
    };
    let bias = r.flag("bias", false)?;
    let post = if transpose {
        None
    } else {
        read_post(&mut r, bias)?
    };
    r.finish()?;
    let mut names = vec!["x", "w"];
    if bias {
        names.push("bias");
    }
    names.extend(&POST_NAMES[..post.as_ref().map_or(0, |p| p.inputs() - 1)]);
    let label = format!(
        "{name}{}{}",
        if bias { " (bias)" } else { "" },
        post.as_ref()
            .map_or(String::new(), |p| format!(" + {}", p.names()))
    );
    Ok(bound(Conv {
        label,
        names,
        transpose,
        group: group as usize,
        window,
        output_padding,
        bias,
        post,
    }))
}

/// Names of the epilogue's inputs.
const POST_NAMES: [&str; MAX_OPERANDS] = ["p1", "p2", "p3", "p4", "p5", "p6"];

/// `conv@1`'s epilogue: attributes `post` (a `fused@1` program whose
/// register 0 is the convolution's result) and `post_inputs` (how many
/// more inputs it reads, after x, w and bias; default 0).
fn read_post(r: &mut AttrReader, bias: bool) -> Result<Option<Program>, KernelError> {
    let extra = r.int("post_inputs", Some(0))?;
    let program = r.opt_string("post")?;
    // Operands of one launch: x, w, maybe bias, the extras and the output.
    let max = MAX_OPERANDS - 3 - usize::from(bias);
    let Some(extra) = usize::try_from(extra).ok().filter(|&e| e <= max) else {
        return Err(r.error(format!(
            "attribute `post_inputs` must be 0 to {max} (a launch has {MAX_OPERANDS} operands), got {extra}"
        )));
    };
    match program {
        None if extra > 0 => Err(r.error(format!(
            "attribute `post_inputs` is {extra} but there is no `post` program to read them"
        ))),
        None => Ok(None),
        Some(p) => Program::parse(extra + 1, p)
            .map(Some)
            .map_err(|m| r.error(m)),
    }
}

struct Conv {
    label: String,
    names: Vec<&'static str>,
    transpose: bool,
    group: usize,
    window: WindowAttrs,
    output_padding: Vec<usize>,
    bias: bool,
    /// The epilogue, run in place on the output.
    post: Option<Program>,
}

/// Sizes of one launch, derived from shapes that passed `infer`.
struct Geom {
    n: usize,
    c: usize,
    m: usize,
    g: usize,
    cg: usize,
    mg: usize,
    in_sp: Vec<usize>,
    k_sp: Vec<usize>,
    out_sp: Vec<usize>,
    axes: Axes,
}

impl Geom {
    /// The same convolution without the spatial axes that are 1 everywhere
    /// (input, kernel and output extent 1, no padding), keeping at least
    /// one: a `[N, C, H, 1]` input with a `[K, 1]` kernel is a 1-D
    /// convolution along H. Flat offsets are unchanged (those axes only
    /// ever have index 0), but the rows the implementations work on become
    /// H long instead of 1.
    fn without_unit_axes(mut self) -> Geom {
        let unit = |i: usize| {
            self.in_sp[i] == 1
                && self.k_sp[i] == 1
                && self.out_sp[i] == 1
                && self.axes.pad_b[i] == 0
                && self.axes.pad_e[i] == 0
        };
        let mut keep: Vec<bool> = (0..self.in_sp.len()).map(|i| !unit(i)).collect();
        if keep.iter().all(|&k| k) {
            return self;
        }
        if let (false, Some(k)) = (keep.contains(&true), keep.first_mut()) {
            *k = true;
        }
        let kept = |v: &[usize]| -> Vec<usize> {
            v.iter()
                .zip(&keep)
                .filter(|&(_, &k)| k)
                .map(|(&d, _)| d)
                .collect()
        };
        self.in_sp = kept(&self.in_sp);
        self.k_sp = kept(&self.k_sp);
        self.out_sp = kept(&self.out_sp);
        self.axes = Axes {
            stride: kept(&self.axes.stride),
            dil: kept(&self.axes.dil),
            pad_b: kept(&self.axes.pad_b),
            pad_e: kept(&self.axes.pad_e),
        };
        self
    }

    fn in_len(&self) -> usize {
        self.in_sp.iter().product()
    }
    /// Whether no axis is padded.
    fn unpadded(&self) -> bool {
        self.axes
            .pad_b
            .iter()
            .chain(&self.axes.pad_e)
            .all(|&p| p == 0)
    }
    fn k_len(&self) -> usize {
        self.k_sp.iter().product()
    }
    fn out_len(&self) -> usize {
        self.out_sp.iter().product()
    }
    /// The input channels `[C/g, D]` of (batch, group) pair `pair` in `x`.
    fn group_x<'a, T>(&self, x: &'a [T], pair: usize) -> Result<&'a [T], String> {
        let (n, grp) = (pair / self.g, pair % self.g);
        let x0 = (n * self.c + grp * self.cg) * self.in_len();
        x.get(x0..x0 + self.cg * self.in_len())
            .ok_or_else(|| "internal: conv group outside x".to_string())
    }

    /// The `conv@1` weights `[M/g, C/g·K]` of (batch, group) pair `pair`'s
    /// group in `w`.
    fn group_w<'a, T>(&self, w: &'a [T], pair: usize) -> Result<&'a [T], String> {
        let ck = self.cg * self.k_len();
        let w0 = (pair % self.g) * self.mg * ck;
        w.get(w0..w0 + self.mg * ck)
            .ok_or_else(|| "internal: conv group outside w".to_string())
    }

    /// A depthwise convolution's output plane `q` (of `N·M`): its channel
    /// `m`, its input plane (channel `n·C + m ÷ (M/g)` of `x`) and its `K`
    /// weights in `w`.
    fn depthwise_plane<'a, T>(
        &self,
        x: &'a [T],
        w: &'a [T],
        q: usize,
    ) -> Result<(usize, &'a [T], &'a [T]), String> {
        let (in_len, k_len) = (self.in_len(), self.k_len());
        let (n, m) = (q / self.m, q % self.m);
        let ci = n * self.c + m / self.mg;
        let xc = x
            .get(ci * in_len..(ci + 1) * in_len)
            .ok_or("internal: depthwise channel outside x")?;
        let wk = w
            .get(m * k_len..(m + 1) * k_len)
            .ok_or("internal: depthwise weights outside w")?;
        Ok((m, xc, wk))
    }

    /// Every kernel position's coordinates, flattened (`k_len × s`).
    fn k_coords(&self) -> Vec<usize> {
        let s = self.k_sp.len();
        let mut out = Vec::with_capacity(self.k_len() * s);
        let mut idx = vec![0; s];
        for _ in 0..self.k_len() {
            out.extend_from_slice(&idx);
            advance(&mut idx, &self.k_sp);
        }
        out
    }
}

impl Conv {
    /// The index of the epilogue's first input.
    fn post_first(&self) -> usize {
        2 + usize::from(self.bias)
    }

    fn geometry(&self, x: &[usize], w: &[usize]) -> Result<Geom, String> {
        if x.len() < 3 {
            return Err(format!(
                "input 0 (x): expected [N, C, D..] with at least one spatial axis, got shape {x:?}"
            ));
        }
        if w.len() != x.len() {
            return Err(format!(
                "input 1 (w): expected rank {} (the rank of input 0 (x)), got shape {w:?}",
                x.len()
            ));
        }
        let s = x.len() - 2;
        let (n, c, g) = (x[0], x[1], self.group);
        if c % g != 0 {
            return Err(format!(
                "input 0 (x): {c} channels do not split into {g} groups"
            ));
        }
        let cg = c / g;
        let (m, mg) = if self.transpose {
            if w[0] != c {
                return Err(format!(
                    "input 1 (w): expected [C = {c}, M/group, K..], got shape {w:?}"
                ));
            }
            let m = w[1]
                .checked_mul(g)
                .ok_or("output channels overflow".to_string())?;
            (m, w[1])
        } else {
            if w[1] != cg || !w[0].is_multiple_of(g) {
                return Err(format!(
                    "input 1 (w): expected [M, C/group = {cg}, K..] with M a multiple of group {g}, got shape {w:?}"
                ));
            }
            (w[0], w[0] / g)
        };
        let axes = self.window.resolve(s)?;
        let (in_sp, k_sp) = (x[2..].to_vec(), w[2..].to_vec());
        let out_sp = if self.transpose {
            let op = if self.output_padding.is_empty() {
                vec![0; s]
            } else if self.output_padding.len() == s {
                self.output_padding.clone()
            } else {
                return Err(format!(
                    "attribute `output_padding` has {} entries but the input has {s} spatial axes",
                    self.output_padding.len()
                ));
            };
            (0..s)
                .map(|i| {
                    let span = axes.span(i, k_sp[i])? as i128;
                    let o =
                        (axes.stride[i] as i128) * (in_sp[i] as i128 - 1) + op[i] as i128 + span
                            - axes.pad_b[i] as i128
                            - axes.pad_e[i] as i128;
                    usize::try_from(o)
                        .map_err(|_| format!("the output of spatial axis {i} would have size {o}"))
                })
                .collect::<Result<Vec<_>, String>>()?
        } else {
            axes.out_dims(&in_sp, &k_sp)?
        };
        Ok(Geom {
            n,
            c,
            m,
            g,
            cg,
            mg,
            in_sp,
            k_sp,
            out_sp,
            axes,
        })
    }
}

impl Op for Conv {
    fn label(&self) -> &str {
        &self.label
    }

    fn input_names(&self) -> &[&'static str] {
        &self.names
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        check_float(self, inputs, 0)?;
        check_same_dtype(self, inputs)?;
        let (Some(x), Some(w)) = (inputs.first(), inputs.get(1)) else {
            return Err("expected inputs x and w".to_string());
        };
        let g = self.geometry(&x.shape, &w.shape)?;
        if let Some(b) = inputs.get(2).filter(|_| self.bias) {
            if b.shape != [g.m] {
                return Err(format!(
                    "{}: expected shape [{}], got {:?}",
                    self.input(2),
                    g.m,
                    b.shape
                ));
            }
        }
        let mut shape = vec![g.n, g.m];
        shape.extend(&g.out_sp);
        // Epilogue inputs broadcast to the output; they never widen it.
        let first = self.post_first();
        for (i, e) in inputs.iter().enumerate().skip(first) {
            let names = [self.input(i), "the output".to_string()];
            if broadcast(&[&e.shape, &shape], &names)? != shape {
                return Err(format!(
                    "{}: shape {:?} does not broadcast to the output shape {shape:?}",
                    self.input(i),
                    e.shape
                ));
            }
        }
        Ok(TensorMeta::new(x.dtype, shape))
    }

    fn compute(&self, imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        super::with_float!(out.dtype(), T => {
            if self.compute_typed::<T>(imp, inputs, out)? {
                return Ok(());
            }
            self.epilogue::<T>(imp, inputs, out)
        })
    }
}

impl Conv {
    /// Runs `post` in place on the output (nothing without one).
    fn epilogue<T: Float + Arith>(
        &self,
        imp: Impl,
        inputs: &[&Tensor],
        out: &mut Tensor,
    ) -> Result<(), String> {
        let Some(post) = &self.post else {
            return Ok(());
        };
        let first = self.post_first();
        let extras = inputs.get(first..).unwrap_or_default();
        post.run_tensors::<T>(imp, extras, &|i| self.input(first + i), out, true)
    }

    /// Computes the convolution into `out`; true when that included the
    /// epilogue (the direct path runs it on each band of output rows while
    /// they are in cache).
    fn compute_typed<T: Float>(
        &self,
        imp: Impl,
        inputs: &[&Tensor],
        out: &mut Tensor,
    ) -> Result<bool, String> {
        let (Some(x), Some(w)) = (inputs.first(), inputs.get(1)) else {
            return Err("expected inputs x and w".to_string());
        };
        let g = self.geometry(x.shape(), w.shape())?;
        let g = match imp {
            Impl::Reference => g,
            Impl::Optimized => g.without_unit_axes(),
        };
        let xv = data::<T>(x, "input 0 (x)")?;
        let wv = data::<T>(w, "input 1 (w)")?;
        let bias = inputs
            .get(2)
            .filter(|_| self.bias)
            .map(|b| data::<T>(b, "input 2 (bias)"))
            .transpose()?;
        let out_shape = self.post.is_some().then(|| out.shape().to_vec());
        let y = data_mut::<T>(out)?;
        // Sizes of tensors that exist: the products below cannot overflow.
        numel(x.shape(), "input 0 (x)")?;
        numel(w.shape(), "input 1 (w)")?;
        if y.is_empty() {
            return Ok(false);
        }
        let out_len = g.out_len();
        let depthwise = !self.transpose && g.cg == 1 && g.mg <= DEPTHWISE_MG_MAX;
        let plane = (imp == Impl::Optimized && !self.transpose && T::DTYPE == DType::F32)
            .then(|| direct::Plane::new(&g, depthwise))
            .flatten();
        // The epilogue runs on the direct path's bands of output rows, while
        // they are in cache (T is f32 whenever there is a plane).
        let first = self.post_first();
        let extras = match (&self.post, &plane) {
            (Some(_), Some(_)) => Some(super::views::<f32>(
                inputs.get(first..).unwrap_or_default(),
                &|i| self.input(first + i),
            )?),
            _ => None,
        };
        let spans = match (&self.post, &extras, &out_shape) {
            (Some(post), Some((xs, shapes)), Some(out_shape)) => {
                Some(post.spans::<f32>(xs, shapes, out_shape, true)?)
            }
            _ => None,
        };
        let on_band = spans
            .as_ref()
            .map(|s| move |start: usize, band: &mut [f32]| s.run(start, band));
        let band_post: Option<direct::Epilogue> = on_band.as_ref().map(|f| f as direct::Epilogue);
        // The paths that add into y need it to start at the bias (or 0);
        // im2col products without a bias, and the direct path (which starts
        // its sums at the bias), write every element themselves; the
        // optimized depthwise path fills each plane just before adding to it,
        // while it is in cache.
        let prefill = plane.is_none()
            && (imp == Impl::Reference || (!depthwise && (bias.is_some() || self.transpose)));
        if prefill {
            for (row, v) in y.chunks_mut(out_len).enumerate() {
                let b = bias.and_then(|b| b.get(row % g.m)).copied();
                v.fill(b.unwrap_or(T::ZERO));
            }
        }
        match (imp, self.transpose) {
            (Impl::Reference, false) => conv_reference(&g, xv, wv, y).map(|()| false),
            (Impl::Reference, true) => conv_transpose_reference(&g, xv, wv, y).map(|()| false),
            (Impl::Optimized, transpose) => {
                let chunk = g.mg * out_len;
                let pairs = g.n * g.g;
                // Multiply-adds: each output reads C/g·K inputs (conv); each
                // input adds into M/g·K outputs (transpose).
                let work = if transpose {
                    xv.len().saturating_mul(g.mg)
                } else {
                    y.len().saturating_mul(g.cg)
                }
                .saturating_mul(g.k_len());
                let big = worth_splitting(work, GEMM_PAR_MIN);
                if chunk == 0 {
                    return Ok(false);
                }
                let win = if transpose {
                    RowWindow::new(&g, &g.in_sp, &g.out_sp)
                } else {
                    RowWindow::new(&g, &g.out_sp, &g.in_sp)
                };
                // The direct path's plane and f32 views of x, w and the bias
                // (T is f32 whenever there is a plane).
                let f32s = |e| format!("internal: direct conv on non-f32 data ({e})");
                let direct_in = match &plane {
                    Some(p) => Some((
                        p,
                        bytemuck::try_cast_slice::<T, f32>(xv).map_err(f32s)?,
                        bytemuck::try_cast_slice::<T, f32>(wv).map_err(f32s)?,
                        bias.map(bytemuck::try_cast_slice::<T, f32>)
                            .transpose()
                            .map_err(f32s)?,
                    )),
                    None => None,
                };
                if let (true, Some((p, x, w, b))) = (depthwise, direct_in) {
                    let y = bytemuck::try_cast_slice_mut(y).map_err(f32s)?;
                    let par = worth_splitting(y.len().saturating_mul(g.k_len()), PAR_MIN);
                    direct::depthwise(p, &g, x, w, b, band_post, y, par)?;
                    return Ok(band_post.is_some());
                }
                if depthwise {
                    return conv_depthwise(&g, &win, xv, wv, bias, y).map(|()| false);
                }
                let shifted = if transpose || plane.is_some() {
                    None
                } else {
                    Shifted::new(&g)
                };
                let run = |(pair, ychunk): (usize, &mut [T]), par: bool| {
                    if transpose {
                        conv_transpose_pair(&g, &win, xv, wv, pair, ychunk, par)
                    } else if let Some((p, x, w, b)) = direct_in {
                        let y = bytemuck::try_cast_slice_mut(ychunk).map_err(f32s)?;
                        direct::conv_pair(p, &g, x, w, b, band_post, pair, y, par)
                    } else if let Some(sh) = &shifted {
                        conv_pair_shifted(&g, sh, xv, wv, pair, ychunk, prefill, par)
                    } else {
                        conv_pair(&g, &win, xv, wv, pair, ychunk, prefill, par)
                    }
                };
                if big && pairs > 1 {
                    y.par_chunks_mut(chunk)
                        .enumerate()
                        .try_for_each(|p| run(p, false))?;
                } else {
                    y.chunks_mut(chunk)
                        .enumerate()
                        .try_for_each(|p| run(p, big))?;
                }
                Ok(band_post.is_some())
            }
        }
    }
}

fn conv_reference<T: Float>(g: &Geom, x: &[T], w: &[T], y: &mut [T]) -> Result<(), String> {
    let (in_len, k_len, out_len) = (g.in_len(), g.k_len(), g.out_len());
    let in_str = strides(&g.in_sp);
    let kc = g.k_coords();
    let s = g.k_sp.len();
    let oob = || "internal: conv index outside an operand".to_string();
    // The kernel positions that land inside the input, with their input
    // offsets, depend on the output position only: find them once per
    // position, not once per (image, filter, channel). The sum runs over
    // channels, then kernel positions, as the definition reads.
    let mut taps: Vec<(usize, usize)> = Vec::with_capacity(k_len);
    let mut o = vec![0; s];
    for op in 0..out_len {
        taps.clear();
        taps.extend((0..k_len).filter_map(|kk| {
            let k = &kc[kk * s..(kk + 1) * s];
            Some((kk, g.axes.input_offset(&o, k, &g.in_sp, &in_str)?))
        }));
        for n in 0..g.n {
            for m in 0..g.m {
                let grp = m / g.mg;
                let mut acc = T::ZERO;
                for c in 0..g.cg {
                    let xc = (n * g.c + grp * g.cg + c) * in_len;
                    let wc = (m * g.cg + c) * k_len;
                    for &(kk, off) in &taps {
                        let xv = x.get(xc + off).ok_or_else(oob)?;
                        let wv = w.get(wc + kk).ok_or_else(oob)?;
                        acc = acc + *xv * *wv;
                    }
                }
                let slot = y.get_mut((n * g.m + m) * out_len + op).ok_or_else(oob)?;
                *slot = *slot + acc;
            }
        }
        advance(&mut o, &g.out_sp);
    }
    Ok(())
}

fn conv_transpose_reference<T: Float>(
    g: &Geom,
    x: &[T],
    w: &[T],
    y: &mut [T],
) -> Result<(), String> {
    let (in_len, k_len, out_len) = (g.in_len(), g.k_len(), g.out_len());
    let out_str = strides(&g.out_sp);
    let kc = g.k_coords();
    let s = g.k_sp.len();
    let oob = || "internal: conv_transpose index outside an operand".to_string();
    for n in 0..g.n {
        for ci in 0..g.c {
            let grp = ci / g.cg;
            let mut i = vec![0; s];
            for ip in 0..in_len {
                let xv = *x.get((n * g.c + ci) * in_len + ip).ok_or_else(oob)?;
                for m in 0..g.mg {
                    for kk in 0..k_len {
                        let k = &kc[kk * s..(kk + 1) * s];
                        let Some(off) = g.axes.input_offset(&i, k, &g.out_sp, &out_str) else {
                            continue;
                        };
                        let wv = *w.get((ci * g.mg + m) * k_len + kk).ok_or_else(oob)?;
                        let mo = grp * g.mg + m;
                        let slot = y.get_mut((n * g.m + mo) * out_len + off).ok_or_else(oob)?;
                        *slot = *slot + xv * wv;
                    }
                }
                advance(&mut i, &g.in_sp);
            }
        }
    }
    Ok(())
}

/// One axis of a [`RowWindow`] at one kernel coordinate: positions
/// `lo..hi` land inside the target, position `lo` at target coordinate
/// `start` (and each further position `stride` later). Empty when
/// `lo == hi` (then `start` is 0).
#[derive(Clone, Copy, Debug)]
struct Span {
    lo: usize,
    hi: usize,
    start: usize,
}

impl Span {
    /// Positions `0..pos_len` map to `p stride + shift - pad` in a target
    /// axis of `target_len`.
    fn new(pos_len: usize, target_len: usize, stride: usize, shift: usize, pad: usize) -> Span {
        let lo = pad.saturating_sub(shift).div_ceil(stride).min(pos_len);
        let hi = target_len
            .saturating_add(pad)
            .saturating_sub(shift)
            .div_ceil(stride)
            .min(pos_len)
            .max(lo);
        // When lo < hi, `lo stride + shift - pad` lies in 0..target_len.
        let start = if lo < hi {
            (lo.saturating_mul(stride).saturating_add(shift)).saturating_sub(pad)
        } else {
            0
        };
        Span { lo, hi, start }
    }
}

/// A run of positions along the innermost axis: positions `at..at + len`
/// of a tile (row-major over the position grid), whose innermost
/// coordinates start at `j0`. A segment never crosses a row.
#[derive(Clone, Copy, Debug)]
struct Segment {
    at: usize,
    j0: usize,
    len: usize,
}

/// Where one segment lands at one kernel position: its first `skip`
/// positions and those after `skip + n` fall in the padding; the `n` in
/// between read (or write) target offsets `src + t stride` for `t < n`,
/// with `stride` the innermost axis's. Always `skip + n <= len`. `src` is
/// column `col` of target row `row` (rows of the innermost axis).
#[derive(Clone, Copy, Debug)]
struct Run {
    skip: usize,
    n: usize,
    src: usize,
    row: usize,
    col: usize,
}

/// The geometry of a sliding window between a grid of positions and a
/// target grid, organised by rows of the innermost axis: position `p` at
/// kernel position `k` touches target coordinate `p stride + k dilation -
/// pad_begin` on every axis. For `conv@1` the positions are the output and
/// the target the input; for `conv_transpose@1` the other way round.
///
/// Everything per-position is resolved per row: the outer coordinates are
/// checked once per row and kernel position, and along the row the in-range
/// positions form one contiguous run ([`Run`]), so the inner loops are a
/// copy or a strided gather with no per-element tests.
struct RowWindow {
    /// Spatial axes (at least 1).
    s: usize,
    /// The position grid's sizes.
    pos: Vec<usize>,
    /// Row-major strides of the target grid's rows (all axes but the last).
    row_str: Vec<usize>,
    /// The target's innermost size.
    width: usize,
    /// The innermost axis's stride.
    step: usize,
    strides: Vec<usize>,
    /// `spans[kk * s + i]`: axis `i` at kernel position `kk`.
    spans: Vec<Span>,
}

impl RowWindow {
    fn new(g: &Geom, pos: &[usize], target: &[usize]) -> RowWindow {
        let s = pos.len();
        let kc = g.k_coords();
        let a = &g.axes;
        let spans = kc
            .chunks(s.max(1))
            .flat_map(|k| {
                (0..s).map(move |i| {
                    let shift = k[i].saturating_mul(a.dil[i]);
                    Span::new(pos[i], target[i], a.stride[i], shift, a.pad_b[i])
                })
            })
            .collect();
        RowWindow {
            s,
            pos: pos.to_vec(),
            row_str: strides(&target[..s - 1]),
            width: target[s - 1],
            step: a.stride[s - 1],
            strides: a.stride.clone(),
            spans,
        }
    }

    /// Calls `f` with each segment of positions `t0..t0 + tl` (cut at row
    /// ends) and the segment's outer coordinates (all axes but the last).
    fn for_each_segment(
        &self,
        t0: usize,
        tl: usize,
        mut f: impl FnMut(Segment, &[usize]) -> Result<(), String>,
    ) -> Result<(), String> {
        let row = self.pos[self.s - 1];
        if row == 0 {
            return Ok(());
        }
        let outer_dims = &self.pos[..self.s - 1];
        let mut outer = coords(t0 / row, outer_dims);
        let (mut at, mut j0) = (0, t0 % row);
        while at < tl {
            let len = (row - j0).min(tl - at);
            f(Segment { at, j0, len }, &outer)?;
            at += len;
            j0 = 0;
            advance(&mut outer, outer_dims);
        }
        Ok(())
    }

    /// Where segment `seg` at outer coordinates `outer` lands at kernel
    /// position `kk`.
    #[inline]
    fn run(&self, kk: usize, seg: Segment, outer: &[usize]) -> Run {
        let s = self.s;
        let spans = &self.spans[kk * s..(kk + 1) * s];
        let padding = Run {
            skip: seg.len,
            n: 0,
            src: 0,
            row: 0,
            col: 0,
        };
        let mut row = 0;
        for i in 0..s - 1 {
            let (sp, o) = (spans[i], outer[i]);
            if o < sp.lo || o >= sp.hi {
                return padding;
            }
            row += (sp.start + (o - sp.lo) * self.strides[i]) * self.row_str[i];
        }
        let sp = spans[s - 1];
        let (a, b) = (seg.j0.max(sp.lo), (seg.j0 + seg.len).min(sp.hi));
        if a >= b {
            return padding;
        }
        let col = sp.start + (a - sp.lo) * self.step;
        Run {
            skip: a - seg.j0,
            n: b - a,
            src: row * self.width + col,
            row,
            col,
        }
    }

    /// Every segment of positions `t0..t0 + tl` with where it lands at
    /// kernel position `kk`, into `out` (cleared first). Runs do not depend
    /// on the channel: callers compute them once for many channels.
    fn runs(
        &self,
        kk: usize,
        t0: usize,
        tl: usize,
        out: &mut Vec<(Segment, Run)>,
    ) -> Result<(), String> {
        out.clear();
        self.for_each_segment(t0, tl, |seg, outer| {
            out.push((seg, self.run(kk, seg, outer)));
            Ok(())
        })
    }
}

/// The `dst.len()` elements of `src` from `start` on, `step` apart.
fn gather<T: Copy>(dst: &mut [T], src: &[T], start: usize, step: usize) -> Result<(), String> {
    let Some(last) = dst.len().checked_sub(1) else {
        return Ok(());
    };
    let src = src
        .get(start..=start + last * step)
        .ok_or("internal: conv run outside its operand")?;
    if step == 1 {
        dst.copy_from_slice(src);
    } else {
        match step {
            2 => gather_every::<T, 2>(dst, src),
            3 => gather_every::<T, 3>(dst, src),
            4 => gather_every::<T, 4>(dst, src),
            _ => {
                for (d, v) in dst.iter_mut().zip(src.chunks(step)) {
                    *d = v[0];
                }
            }
        }
    }
    Ok(())
}

/// `dst[t] = src[t N]`, for `src` of length `(dst.len() - 1) N + 1`: the
/// first element of each `N`-chunk, and the remainder's first element for
/// the last (fixed-size chunks compile to shuffles, not bounds tests).
fn gather_every<T: Copy, const N: usize>(dst: &mut [T], src: &[T]) {
    let (chunks, rest) = src.as_chunks::<N>();
    let (head, tail) = dst.split_at_mut(chunks.len().min(dst.len()));
    for (d, c) in head.iter_mut().zip(chunks) {
        *d = c[0];
    }
    for (d, v) in tail.iter_mut().zip(rest) {
        *d = *v;
    }
}

/// Positions per im2col/col2im tile for columns of `height`, out of
/// `total` (a multiple of `row`): as many as fit in [`COL_MAX`] (at least
/// one), rounded down to whole rows of `row` positions when at least one
/// row fits, and at most [`TILE_ROWS_MAX`] rows (which bounds the per-tile
/// tables of runs).
fn tile_len(height: usize, total: usize, row: usize) -> usize {
    let t = (COL_MAX / height.max(1)).clamp(1, total.max(1));
    if row == 0 || t < row {
        t
    } else {
        (t / row).min(TILE_ROWS_MAX) * row
    }
}

/// Fills `col [C/g·K, tl]` with the im2col matrix of output positions
/// `t0..t0 + tl`: row `c·K + kk` holds channel `c` of `xg` read at kernel
/// position `kk`, zero in the padding. With `par`, blocks of channels are
/// built on rayon's pool; each block computes the runs of a kernel position
/// once for all its channels.
#[allow(clippy::too_many_arguments)]
fn im2col<T: Float>(
    win: &RowWindow,
    xg: &[T],
    in_len: usize,
    k_len: usize,
    t0: usize,
    tl: usize,
    col: &mut [T],
    par: bool,
) -> Result<(), String> {
    let per_c = k_len * tl;
    let cg = col.len() / per_c.max(1);
    let block = if par {
        cg.div_ceil(2 * rayon::current_num_threads()).max(1)
    } else {
        cg.max(1)
    };
    let fill = |(b, rows): (usize, &mut [T])| {
        let mut runs = Vec::new();
        for kk in 0..k_len {
            win.runs(kk, t0, tl, &mut runs)?;
            for (cc, crows) in rows.chunks_mut(per_c).enumerate() {
                let c = b * block + cc;
                let xc = xg
                    .get(c * in_len..(c + 1) * in_len)
                    .ok_or("internal: conv channel outside x")?;
                let row = &mut crows[kk * tl..(kk + 1) * tl];
                for &(seg, run) in &runs {
                    let dst = &mut row[seg.at..seg.at + seg.len];
                    let (lead, rest) = dst.split_at_mut(run.skip);
                    let (mid, tail) = rest.split_at_mut(run.n);
                    lead.fill(T::ZERO);
                    tail.fill(T::ZERO);
                    gather(mid, xc, run.src, win.step)?;
                }
            }
        }
        Ok::<(), String>(())
    };
    if par {
        col.par_chunks_mut(block * per_c)
            .enumerate()
            .try_for_each(fill)
    } else {
        fill((0, col))
    }
}

/// One (batch, group) pair of the optimized `conv@1`: `ychunk [M/g, O]`
/// (already holding the bias) `+= w_g · im2col(x_g)`.
/// Computes one (batch, group) pair's output rows into `ychunk`, adding to
/// its content with `acc` (a bias), overwriting it otherwise.
#[allow(clippy::too_many_arguments)]
fn conv_pair<T: Float>(
    g: &Geom,
    win: &RowWindow,
    x: &[T],
    w: &[T],
    pair: usize,
    ychunk: &mut [T],
    acc: bool,
    par: bool,
) -> Result<(), String> {
    let (in_len, k_len, out_len) = (g.in_len(), g.k_len(), g.out_len());
    let ck = g.cg * k_len;
    let xg = g.group_x(x, pair)?;
    let wm = MatRef {
        data: g.group_w(w, pair)?,
        rows: g.mg,
        cols: ck,
        rs: ck,
        cs: 1,
    };
    let unpadded = g.unpadded();
    let pointwise =
        g.k_sp.iter().all(|&k| k == 1) && g.axes.stride.iter().all(|&s| s == 1) && unpadded;
    if pointwise {
        // im2col of a 1x1 window is the input itself.
        let xm = MatRef {
            data: xg,
            rows: g.cg,
            cols: out_len,
            rs: in_len,
            cs: 1,
        };
        return gemm_tiled_into(wm, xm, ychunk, acc, par);
    }
    if let ([stride], [dil], 1, true) = (&g.axes.stride[..], &g.axes.dil[..], g.cg, unpadded) {
        // A 1-D window over one input channel (framing, as in an STFT):
        // im2col's column t is the input from t·stride on, every dilation,
        // so the matrix is a strided view of the input itself.
        let xm = MatRef {
            data: xg,
            rows: k_len,
            cols: out_len,
            rs: *dil,
            cs: *stride,
        };
        return gemm_tiled_into(wm, xm, ychunk, acc, par);
    }
    let row = g.out_sp.last().copied().unwrap_or(1);
    let tile = tile_len(ck, out_len, row);
    // Adds (or, without `acc`, copies) a tile's product `part [M/g, tl]`
    // into columns `t0..` of ychunk.
    let add = |ychunk: &mut [T], t0: usize, part: &[T]| {
        let tl = part.len() / g.mg.max(1);
        for (m, src) in part.chunks_exact(tl.max(1)).enumerate() {
            let dst = ychunk
                .get_mut(m * out_len + t0..m * out_len + t0 + tl)
                .ok_or("internal: conv tile outside y")?;
            if acc {
                for (d, v) in dst.iter_mut().zip(src) {
                    *d = *d + *v;
                }
            } else {
                dst.copy_from_slice(src);
            }
        }
        Ok::<(), String>(())
    };
    let gemm_tile = |col: &mut [T], t0: usize, out: &mut [T], accumulate: bool, par: bool| {
        let tl = out.len() / g.mg.max(1);
        let col = &mut col[..ck * tl];
        im2col(win, xg, in_len, k_len, t0, tl, col, par)?;
        let cm = MatRef {
            data: &*col,
            rows: ck,
            cols: tl,
            rs: tl,
            cs: 1,
        };
        gemm_tiled_into(wm, cm, out, accumulate, par)
    };
    if tile >= out_len {
        let mut col = Scratch::<T>::new(ck * out_len);
        return gemm_tile(col.as_mut(), 0, ychunk, acc, par);
    }
    let starts: Vec<usize> = (0..out_len).step_by(tile).collect();
    if par {
        // Several tiles: each thread builds and multiplies whole tiles of its
        // own (a product per tile scales better than splitting one product
        // across threads), in rounds of two tiles per thread whose buffers
        // are allocated once.
        let round = 2 * rayon::current_num_threads();
        let mut cols = Scratch::<T>::new(round * ck * tile);
        let mut parts = Scratch::<T>::new(round * g.mg * tile);
        let (cols, parts) = (cols.as_mut(), parts.as_mut());
        for batch in starts.chunks(round) {
            parts
                .par_chunks_mut(g.mg * tile)
                .zip(cols.par_chunks_mut(ck * tile))
                .zip(batch.par_iter())
                .try_for_each(|((part, col), &t0)| {
                    let tl = tile.min(out_len - t0);
                    gemm_tile(col, t0, &mut part[..g.mg * tl], false, false)
                })?;
            for (part, &t0) in parts.chunks(g.mg * tile).zip(batch) {
                let tl = tile.min(out_len - t0);
                add(ychunk, t0, &part[..g.mg * tl])?;
            }
        }
        return Ok(());
    }
    let mut col = Scratch::<T>::new(ck * tile);
    let mut part = Scratch::<T>::new(g.mg * tile);
    for &t0 in &starts {
        let part = &mut part.as_mut()[..g.mg * tile.min(out_len - t0)];
        gemm_tile(col.as_mut(), t0, part, false, false)?;
        add(ychunk, t0, part)?;
    }
    Ok(())
}

/// The fewest input channels per group for which [`conv_pair_shifted`]
/// replaces im2col: each of its products sums over the channels only, and
/// gemm runs short sums poorly.
const SHIFTED_MIN_CHANNELS: usize = 16;

/// The most elements [`conv_pair_shifted`]'s padded input or its wide
/// output may hold (each is also at most 4 times the unpadded one), which
/// keeps huge pads on small inputs on the im2col path, whose buffers are
/// bounded.
const SHIFTED_MAX: usize = 1 << 24;

/// Where a stride-1 convolution runs as a sum of shifted products.
///
/// Pad the input planes to `P = D + pad_begin + pad_end` per axis, and
/// number output positions in the padded grid: output `o` is at
/// `q = Σ o_i S_i` with `S` the strides of `P`. Kernel position `k` then
/// reads every output's input at `q + Σ k_i dil_i S_i`: one shift for all
/// outputs. So the pair's output (in that numbering) is
/// `Σ_k w[:, :, k] · x_padded[:, shift_k ..]`, one gemm term per kernel
/// position reading the input in place, with no im2col columns. Positions
/// `q` that are not outputs (`o_i >= O_i` along an inner axis) are computed
/// and dropped.
struct Shifted {
    /// The padded extents `P`.
    padded: Vec<usize>,
    /// Elements per padded input plane.
    plane: usize,
    /// Output positions in the padded numbering: `Σ (O_i - 1) S_i + 1`.
    wide: usize,
    /// Each kernel position's shift.
    shifts: Vec<usize>,
    /// Whether the input needs no padding copy.
    unpadded: bool,
    /// Whether the wide numbering is the output's own (every inner axis
    /// has `O_i = P_i`): the products then write the output directly.
    dense: bool,
}

impl Shifted {
    fn new(g: &Geom) -> Option<Shifted> {
        let a = &g.axes;
        if g.cg < SHIFTED_MIN_CHANNELS || g.k_len() < 2 || a.stride.iter().any(|&s| s != 1) {
            return None;
        }
        let padded = (0..g.in_sp.len())
            .map(|i| g.in_sp[i].checked_add(a.pad_b[i])?.checked_add(a.pad_e[i]))
            .collect::<Option<Vec<_>>>()?;
        let plane = padded.iter().try_fold(1usize, |p, &d| p.checked_mul(d))?;
        let s = strides(&padded);
        let wide = g.out_sp.iter().zip(&s).try_fold(1usize, |w, (&o, &st)| {
            w.checked_add(o.checked_sub(1)?.checked_mul(st)?)
        })?;
        let fits = |n: usize, per: usize, unpadded: usize| {
            per.checked_mul(n)
                .is_some_and(|t| t <= SHIFTED_MAX && per <= unpadded.saturating_mul(4))
        };
        let empty = plane == 0 || wide == 0 || g.in_len() == 0;
        if empty || !fits(g.cg, plane, g.in_len()) || !fits(g.mg, wide, g.out_len()) {
            return None;
        }
        let shifts = g
            .k_coords()
            .chunks(s.len().max(1))
            .map(|k| {
                k.iter()
                    .zip(&a.dil)
                    .zip(&s)
                    .map(|((k, d), st)| k * d * st)
                    .sum()
            })
            .collect();
        let unpadded = g.unpadded();
        let dense = (1..padded.len()).all(|i| g.out_sp[i] == padded[i]);
        Some(Shifted {
            padded,
            plane,
            wide,
            shifts,
            unpadded,
            dense,
        })
    }
}

/// `dims` split into its leading axes and the extent of its last one.
fn rows_of(dims: &[usize]) -> (&[usize], usize) {
    dims.split_last().map_or((&[][..], 1), |(l, r)| (r, *l))
}

/// The offsets, in a grid of strides `s`, of the rows of a block whose
/// leading extents are `lead`, in row-major order (endless: zip it with
/// the rows).
fn row_offsets<'a>(lead: &'a [usize], s: &'a [usize]) -> impl Iterator<Item = usize> + 'a {
    let mut idx = vec![0; lead.len()];
    std::iter::from_fn(move || {
        let at = idx.iter().zip(s).map(|(i, st)| i * st).sum();
        advance(&mut idx, lead);
        Some(at)
    })
}

/// One (batch, group) pair of the optimized `conv@1` as the sum of shifted
/// products that [`Shifted`] describes, into `ychunk [M/g, O]` (adding to
/// its content, a bias, with `acc`).
#[allow(clippy::too_many_arguments)]
fn conv_pair_shifted<T: Float>(
    g: &Geom,
    sh: &Shifted,
    x: &[T],
    w: &[T],
    pair: usize,
    ychunk: &mut [T],
    acc: bool,
    par: bool,
) -> Result<(), String> {
    let (in_len, k_len, out_len) = (g.in_len(), g.k_len(), g.out_len());
    let xg = g.group_x(x, pair)?;
    let wg = g.group_w(w, pair)?;
    let s = strides(&sh.padded);
    // The padded input planes, unless no axis is padded.
    let mut padded = Scratch::<T>::new(if sh.unpadded { 0 } else { g.cg * sh.plane });
    let xp: &[T] = if sh.unpadded {
        xg
    } else {
        let xp = padded.as_mut();
        xp.fill(T::ZERO);
        let (lead, row) = rows_of(&g.in_sp);
        let first: usize = g.axes.pad_b.iter().zip(&s).map(|(p, st)| p * st).sum();
        for (src, dst) in xg.chunks_exact(in_len).zip(xp.chunks_exact_mut(sh.plane)) {
            for (r, at) in src.chunks_exact(row).zip(row_offsets(lead, &s)) {
                dst.get_mut(first + at..first + at + row)
                    .ok_or("internal: conv row outside its padded plane")?
                    .copy_from_slice(r);
            }
        }
        xp
    };
    let terms = sh
        .shifts
        .iter()
        .enumerate()
        .map(|(kk, &shift)| {
            let a = MatRef {
                data: wg.get(kk..).unwrap_or_default(),
                rows: g.mg,
                cols: g.cg,
                rs: g.cg * k_len,
                cs: k_len,
            };
            let b = MatRef {
                data: xp.get(shift..).unwrap_or_default(),
                rows: g.cg,
                cols: sh.wide,
                rs: sh.plane,
                cs: 1,
            };
            (a, b)
        })
        .collect::<Vec<_>>();
    if sh.dense {
        return gemm_sum_into(&terms, ychunk, acc, par);
    }
    let mut wide = Scratch::<T>::new(g.mg * sh.wide);
    let wide = wide.as_mut();
    gemm_sum_into(&terms, wide, false, par)?;
    // Keep the wide rows' output positions.
    let (lead, row) = rows_of(&g.out_sp);
    for (src, dst) in wide
        .chunks_exact(sh.wide)
        .zip(ychunk.chunks_exact_mut(out_len))
    {
        for (d, at) in dst.chunks_exact_mut(row).zip(row_offsets(lead, &s)) {
            let v = src
                .get(at..at + row)
                .ok_or("internal: conv row outside the wide output")?;
            if acc {
                for (d, v) in d.iter_mut().zip(v) {
                    *d = *d + *v;
                }
            } else {
                d.copy_from_slice(v);
            }
        }
    }
    Ok(())
}

/// The optimized `conv@1` when every output channel reads one input
/// channel (`C/g = 1`, depthwise): each output plane `(n, m)` starts at
/// `bias[m]` (or zero) and is computed directly, `y += w[m, kk] · x[n, m /
/// (M/g)]` shifted, one kernel position at a time along each output row.
/// Planes run on rayon's pool when the work is large.
fn conv_depthwise<T: Float>(
    g: &Geom,
    win: &RowWindow,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    y: &mut [T],
) -> Result<(), String> {
    let (in_len, k_len, out_len) = (g.in_len(), g.k_len(), g.out_len());
    let step = win.step;
    let phases = Phases::new(g.in_sp.last().copied().unwrap_or(1), in_len, step);
    // The runs of every (output row, kernel position), row-major, shared by
    // all planes when the table is small.
    let rows = out_len / g.out_sp.last().copied().unwrap_or(1).max(1);
    let table = if rows.saturating_mul(k_len) <= RUN_TABLE_MAX {
        let mut table = Vec::with_capacity(rows * k_len);
        win.for_each_segment(0, out_len, |seg, outer| {
            table.extend((0..k_len).map(|kk| (seg, win.run(kk, seg, outer))));
            Ok(())
        })?;
        Some(table)
    } else {
        None
    };
    let plane = |(q, yp): (usize, &mut [T])| {
        let (m, xc, wk) = g.depthwise_plane(x, w, q)?;
        let start = match bias {
            Some(b) => *b.get(m).ok_or("internal: depthwise bias outside b")?,
            None => T::ZERO,
        };
        yp.fill(start);
        // With a stride along rows, read a phase-split copy of the plane
        // so that every run is contiguous.
        let split;
        let xc = if step > 1 {
            split = phases.split(xc)?;
            &split[..]
        } else {
            xc
        };
        // y_row[skip..skip + n] += wv · (the run's input).
        let add = |yrow: &mut [T], wv: T, run: Run| {
            if run.n == 0 {
                return Ok(());
            }
            let src = if step > 1 {
                phases.offset(run.row, run.col)
            } else {
                run.src
            };
            let ys = &mut yrow[run.skip..run.skip + run.n];
            let xs = xc
                .get(src..src + run.n)
                .ok_or("internal: depthwise run outside x")?;
            for (d, v) in ys.iter_mut().zip(xs) {
                *d = *d + wv * *v;
            }
            Ok::<(), String>(())
        };
        match &table {
            Some(table) => {
                for row in table.chunks(k_len) {
                    let Some(&(seg, _)) = row.first() else {
                        continue;
                    };
                    let yrow = &mut yp[seg.at..seg.at + seg.len];
                    for (&wv, &(_, run)) in wk.iter().zip(row) {
                        add(yrow, wv, run)?;
                    }
                }
                Ok(())
            }
            None => win.for_each_segment(0, out_len, |seg, outer| {
                let yrow = &mut yp[seg.at..seg.at + seg.len];
                for (kk, &wv) in wk.iter().enumerate() {
                    add(yrow, wv, win.run(kk, seg, outer))?;
                }
                Ok(())
            }),
        }
    };
    if worth_splitting(y.len().saturating_mul(k_len), PAR_MIN) {
        y.par_chunks_mut(out_len).enumerate().try_for_each(plane)
    } else {
        y.chunks_mut(out_len).enumerate().try_for_each(plane)
    }
}

/// A plane of rows of `width` split by column modulo `step`: phase `p`
/// holds, for every row, columns `p, p + step, ..` contiguously, so a run
/// of `step`-strided columns within a row is a contiguous slice.
struct Phases {
    width: usize,
    rows: usize,
    step: usize,
    /// Columns per row in each phase (the first phase's count).
    per_row: usize,
}

impl Phases {
    fn new(width: usize, len: usize, step: usize) -> Phases {
        Phases {
            width,
            rows: len.checked_div(width).unwrap_or(0),
            step,
            per_row: width.div_ceil(step),
        }
    }

    /// The phase-split copy of `plane` (`rows × width`).
    fn split<T: Float>(&self, plane: &[T]) -> Result<Vec<T>, String> {
        let mut out = vec![T::ZERO; self.step * self.rows * self.per_row];
        if self.width == 0 {
            return Ok(out);
        }
        for (r, row) in plane.chunks(self.width).enumerate() {
            for p in 0..self.step.min(self.width) {
                let cnt = (self.width - p).div_ceil(self.step);
                let at = (p * self.rows + r) * self.per_row;
                gather(&mut out[at..at + cnt], row, p, self.step)?;
            }
        }
        Ok(out)
    }

    /// Where column `col` of row `row` lies in the split copy.
    fn offset(&self, row: usize, col: usize) -> usize {
        ((col % self.step) * self.rows + row) * self.per_row + col / self.step
    }
}

/// One (batch, group) pair of the optimized `conv_transpose@1`:
/// `cols = w_g^T · x_g`, scattered into `ychunk [M/g, O]` (col2im), output
/// channels on rayon's pool with `par`.
fn conv_transpose_pair<T: Float>(
    g: &Geom,
    win: &RowWindow,
    x: &[T],
    w: &[T],
    pair: usize,
    ychunk: &mut [T],
    par: bool,
) -> Result<(), String> {
    let grp = pair % g.g;
    let (in_len, k_len, out_len) = (g.in_len(), g.k_len(), g.out_len());
    let mk = g.mg * k_len;
    let xg = g.group_x(x, pair)?;
    let w0 = grp * g.cg * mk;
    let wt = MatRef {
        data: w
            .get(w0..w0 + g.cg * mk)
            .ok_or("internal: conv_transpose group outside w")?,
        rows: mk,
        cols: g.cg,
        rs: 1,
        cs: mk,
    };
    if in_len == 0 || out_len == 0 {
        return Ok(());
    }
    let row = g.in_sp.last().copied().unwrap_or(1);
    let tile = tile_len(mk, in_len, row);
    let mut col = Scratch::<T>::new(mk * tile);
    let col_all = col.as_mut();
    let mut t0 = 0;
    while t0 < in_len {
        let tl = tile.min(in_len - t0);
        let xm = MatRef {
            data: xg.get(t0..).ok_or("internal: tile outside x")?,
            rows: g.cg,
            cols: tl,
            rs: in_len,
            cs: 1,
        };
        let col = &mut col_all[..mk * tl];
        gemm_tiled_into(wt, xm, col, false, par)?;
        // Row `m·K + kk` of `col` adds into output channel `m`.
        let scatter = |(yrow, crows): (&mut [T], &[T])| {
            for (kk, crow) in crows.chunks(tl).enumerate() {
                win.for_each_segment(t0, tl, |seg, outer| {
                    let run = win.run(kk, seg, outer);
                    let Some(last) = run.n.checked_sub(1) else {
                        return Ok(());
                    };
                    let src = &crow[seg.at + run.skip..seg.at + run.skip + run.n];
                    let dst = yrow
                        .get_mut(run.src..=run.src + last * win.step)
                        .ok_or("internal: conv_transpose run outside y")?;
                    if win.step == 1 {
                        for (d, v) in dst.iter_mut().zip(src) {
                            *d = *d + *v;
                        }
                    } else {
                        for (d, v) in dst.iter_mut().step_by(win.step).zip(src) {
                            *d = *d + *v;
                        }
                    }
                    Ok(())
                })?;
            }
            Ok::<(), String>(())
        };
        if par {
            ychunk
                .par_chunks_mut(out_len)
                .zip(col.par_chunks(k_len * tl))
                .try_for_each(scatter)?;
        } else {
            ychunk
                .chunks_mut(out_len)
                .zip(col.chunks(k_len * tl))
                .try_for_each(scatter)?;
        }
        t0 += tl;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::*;
    use super::{Axes, Geom, Shifted, SHIFTED_MIN_CHANNELS};
    use crate::{AttrValue, DType, Impl, Tensor, TensorMeta};

    /// A direct 2-D convolution in f64 with ONNX's definition, written
    /// independently of the kernel (explicit 4-deep loops, signed indices).
    #[allow(clippy::too_many_arguments)]
    fn direct_conv2d(
        x: &[f64],
        xs: [usize; 4],
        w: &[f64],
        ws: [usize; 4],
        b: Option<&[f64]>,
        group: usize,
        stride: [usize; 2],
        dil: [usize; 2],
        pads: [usize; 4],
    ) -> (Vec<f64>, [usize; 4]) {
        let [n, c, h, wd] = xs;
        let [m, cg, kh, kw] = ws;
        let oh = (h + pads[0] + pads[2] - dil[0] * (kh - 1) - 1) / stride[0] + 1;
        let ow = (wd + pads[1] + pads[3] - dil[1] * (kw - 1) - 1) / stride[1] + 1;
        let mg = m / group;
        let mut y = vec![0.0; n * m * oh * ow];
        for b_ in 0..n {
            for mo in 0..m {
                let grp = mo / mg;
                for i in 0..oh {
                    for j in 0..ow {
                        let mut acc = b.map_or(0.0, |b| b[mo]);
                        for ci in 0..cg {
                            let cin = grp * cg + ci;
                            for p in 0..kh {
                                for q in 0..kw {
                                    let r = (i * stride[0] + p * dil[0]) as i64 - pads[0] as i64;
                                    let s = (j * stride[1] + q * dil[1]) as i64 - pads[1] as i64;
                                    if r < 0 || s < 0 || r >= h as i64 || s >= wd as i64 {
                                        continue;
                                    }
                                    acc += x[((b_ * c + cin) * h + r as usize) * wd + s as usize]
                                        * w[((mo * cg + ci) * kh + p) * kw + q];
                                }
                            }
                        }
                        y[((b_ * m + mo) * oh + i) * ow + j] = acc;
                    }
                }
            }
        }
        (y, [n, m, oh, ow])
    }

    fn conv_attrs(
        group: i64,
        strides: &[i64],
        dil: &[i64],
        pads: &[i64],
        bias: bool,
    ) -> crate::Attrs {
        attrs(&[
            ("group", i(group)),
            ("strides", ints(strides)),
            ("dilations", ints(dil)),
            ("pads", ints(pads)),
            ("bias", i(i64::from(bias))),
        ])
    }

    #[test]
    fn conv2d_matches_direct_computation() {
        let x = float_tensor::<f64>(&[2, 4, 7, 6], 1, false);
        let w = float_tensor::<f64>(&[6, 2, 3, 2], 2, false);
        let b = float_tensor::<f64>(&[6], 3, false);
        let (want, shape) = direct_conv2d(
            &f64s(&x),
            [2, 4, 7, 6],
            &f64s(&w),
            [6, 2, 3, 2],
            Some(&f64s(&b)),
            2,
            [2, 1],
            [1, 2],
            [1, 0, 2, 1],
        );
        let at = conv_attrs(2, &[2, 1], &[1, 2], &[1, 0, 2, 1], true);
        for imp in IMPLS {
            let y = launch("conv@1", &at, &[&x, &w, &b], imp).unwrap();
            assert_eq!(y.shape(), shape);
            for (g, w) in f64s(&y).iter().zip(&want) {
                assert!((g - w).abs() < 1e-9, "{imp:?}: {g} vs {w}");
            }
        }
    }

    /// `post` runs on the convolution's result in place: a per-channel
    /// affine (`[M, 1, 1]` inputs), a residual of the output's shape, and
    /// HardSwish with immediates, against the direct computation.
    #[test]
    fn post_program_matches_direct_computation() {
        let x = float_tensor::<f64>(&[1, 3, 6, 5], 4, false);
        let w = float_tensor::<f64>(&[4, 3, 3, 3], 5, false);
        let b = float_tensor::<f64>(&[4], 6, false);
        let scale = float_tensor::<f64>(&[4, 1, 1], 7, false);
        let shift = float_tensor::<f64>(&[4, 1, 1], 8, false);
        let res = float_tensor::<f64>(&[1, 4, 6, 5], 9, false);
        let (conv, shape) = direct_conv2d(
            &f64s(&x),
            [1, 3, 6, 5],
            &f64s(&w),
            [4, 3, 3, 3],
            None,
            1,
            [1, 1],
            [1, 1],
            [1, 1, 1, 1],
        );
        let (sc, sh, rs) = (f64s(&scale), f64s(&shift), f64s(&res));
        let plane = shape[2] * shape[3];
        let want: Vec<f64> = conv
            .iter()
            .enumerate()
            .map(|(e, &v)| {
                let c = e / plane % 4;
                let a = v * sc[c] + sh[c] + rs[e];
                a * (a + 3.0).clamp(0.0, 6.0) / 6.0
            })
            .collect();
        let mut at = conv_attrs(1, &[1, 1], &[1, 1], &[1, 1, 1, 1], false);
        at.insert("post_inputs".into(), i(3));
        // r4 = y*scale, r5 = r4+shift, r6 = r5+res, r7 = 3, r8 = 0, r9 = 6,
        // r10 = r6+3, r11 = max, r12 = min, r13 = r6*r12, r14 = r13/6.
        let program = "mul:0:1 add:4:2 add:5:3 const:3 const:0 const:6 add:6:7 max:10:8 min:11:9 mul:6:12 div:13:9";
        at.insert("post".into(), s(program));
        for imp in IMPLS {
            let y = launch("conv@1", &at, &[&x, &w, &scale, &shift, &res], imp).unwrap();
            assert_eq!(y.shape(), shape);
            for (g, w) in f64s(&y).iter().zip(&want) {
                assert!((g - w).abs() < 1e-9, "{imp:?}: {g} vs {w}");
            }
        }
        // Too many operands (with a bias), a missing program, a widening
        // input.
        at.insert("bias".into(), i(1));
        let err = launch(
            "conv@1",
            &at,
            &[&x, &w, &b, &scale, &shift, &res],
            Impl::Reference,
        )
        .unwrap_err();
        assert!(err.to_string().contains("must be 0 to 2"), "{err}");
        let mut none = conv_attrs(1, &[1, 1], &[1, 1], &[1, 1, 1, 1], true);
        none.insert("post_inputs".into(), i(1));
        assert!(launch("conv@1", &none, &[&x, &w, &b, &scale], Impl::Reference).is_err());
        let mut wide = conv_attrs(1, &[1, 1], &[1, 1], &[1, 1, 1, 1], true);
        wide.insert("post_inputs".into(), i(1));
        wide.insert("post".into(), s("add:0:1"));
        let big = float_tensor::<f64>(&[2, 4, 6, 5], 9, false);
        let err = launch("conv@1", &wide, &[&x, &w, &b, &big], Impl::Reference).unwrap_err();
        assert!(err.to_string().contains("does not broadcast"), "{err}");
    }

    #[test]
    fn conv1d_by_hand() {
        // y[j] = x[j] - x[j + 1] with one pad on each side.
        let x = Tensor::from_vec(&[1, 1, 4], vec![1.0f32, 4.0, 9.0, 16.0]).unwrap();
        let w = Tensor::from_vec(&[1, 1, 2], vec![1.0f32, -1.0]).unwrap();
        for imp in IMPLS {
            let y = launch("conv@1", &attrs(&[("pads", ints(&[1, 1]))]), &[&x, &w], imp).unwrap();
            assert_eq!(y.shape(), [1, 1, 5]);
            assert_eq!(
                y.to_vec::<f32>().unwrap(),
                vec![-1.0, -3.0, -5.0, -7.0, 16.0]
            );
        }
    }

    #[test]
    fn conv_transpose_by_hand() {
        // Stride 2, kernel [1, 1]: each input spreads to two outputs.
        let x = Tensor::from_vec(&[1, 1, 3], vec![1.0f32, 2.0, 3.0]).unwrap();
        let w = Tensor::from_vec(&[1, 1, 2], vec![1.0f32, 10.0]).unwrap();
        let b = Tensor::from_vec(&[1], vec![0.5f32]).unwrap();
        for imp in IMPLS {
            let y = launch(
                "conv_transpose@1",
                &attrs(&[
                    ("strides", ints(&[2])),
                    ("output_padding", ints(&[1])),
                    ("bias", i(1)),
                ]),
                &[&x, &w, &b],
                imp,
            )
            .unwrap();
            assert_eq!(
                y.to_vec::<f32>().unwrap(),
                vec![1.5, 10.5, 2.5, 20.5, 3.5, 30.5, 0.5]
            );
            // Overlapping windows (stride 1) add up; pads crop.
            let y = launch(
                "conv_transpose@1",
                &attrs(&[("pads", ints(&[1, 0]))]),
                &[&x, &w],
                imp,
            )
            .unwrap();
            assert_eq!(y.to_vec::<f32>().unwrap(), vec![12.0, 23.0, 30.0]);
        }
    }

    /// conv_transpose is the adjoint of conv: <conv(x, w), y> = <x, convT(y, w)>.
    #[test]
    fn conv_transpose_is_the_adjoint_of_conv() {
        let x = float_tensor::<f64>(&[2, 4, 6, 5], 7, false);
        let w = float_tensor::<f64>(&[6, 2, 3, 2], 8, false);
        let at = conv_attrs(2, &[2, 3], &[2, 1], &[1, 2, 0, 1], false);
        let cx = launch("conv@1", &at, &[&x, &w], Impl::Reference).unwrap();
        let yv = float_tensor::<f64>(cx.shape(), 9, false);
        let mut tat = at.clone();
        // The transposed conv must produce x's spatial shape exactly.
        let o = cx.shape();
        let op: Vec<i64> = (0..2)
            .map(|a| {
                let (st, d, k) = ([2, 3][a], [2, 1][a], [3, 2][a]);
                let pads = [[1, 0], [2, 1]][a];
                let natural = st * (o[2 + a] - 1) + d * (k - 1) + 1 - pads[0] - pads[1];
                (x.shape()[2 + a] - natural) as i64
            })
            .collect();
        tat.insert("output_padding".into(), AttrValue::Ints(op));
        for imp in IMPLS {
            let tx = launch("conv_transpose@1", &tat, &[&yv, &w], imp).unwrap();
            assert_eq!(tx.shape(), x.shape());
            let lhs: f64 = f64s(&cx).iter().zip(f64s(&yv)).map(|(a, b)| a * b).sum();
            let rhs: f64 = f64s(&x).iter().zip(f64s(&tx)).map(|(a, b)| a * b).sum();
            assert!(
                (lhs - rhs).abs() < 1e-8 * lhs.abs().max(1.0),
                "{lhs} vs {rhs}"
            );
        }
    }

    #[test]
    fn signature_errors() {
        let k = bind("conv@1", &conv_attrs(2, &[], &[], &[], true)).unwrap();
        let m = |s: &[usize]| TensorMeta::new(DType::F32, s.to_vec());
        assert_eq!(
            k.check(&[&m(&[1, 4, 5, 5]), &m(&[6, 2, 3, 3]), &m(&[6])])
                .unwrap(),
            vec![m(&[1, 6, 3, 3])]
        );
        let err =
            |x: &[usize], w: &[usize]| k.check(&[&m(x), &m(w), &m(&[6])]).unwrap_err().to_string();
        assert!(err(&[1, 3, 5, 5], &[6, 2, 3, 3]).contains("do not split into 2 groups"));
        assert!(err(&[1, 4, 5, 5], &[6, 4, 3, 3]).contains("C/group = 2"));
        assert!(err(&[1, 4, 2, 5], &[6, 2, 3, 3]).contains("padded input has only 2"));
        assert!(err(&[1, 4, 5, 5], &[6, 2, 0, 3]).contains("kernel size 0"));
        assert!(err(&[1, 4, 5], &[6, 2, 3, 3]).contains("expected rank 3"));
        for bad in [
            conv_attrs(0, &[], &[], &[], false),
            conv_attrs(1, &[0], &[], &[], false),
            conv_attrs(1, &[], &[-1], &[], false),
            conv_attrs(1, &[], &[], &[1 << 40, 0], false),
        ] {
            assert!(bind("conv@1", &bad).is_err());
        }
        let k = bind("conv@1", &conv_attrs(1, &[1, 1, 1], &[], &[], false)).unwrap();
        assert!(k
            .check(&[&m(&[1, 1, 5, 5]), &m(&[1, 1, 3, 3])])
            .unwrap_err()
            .to_string()
            .contains("`strides` has 3 entries but the input has 2 spatial axes"));
        let t = bind("conv_transpose@1", &attrs(&[("pads", ints(&[3, 3]))])).unwrap();
        assert!(t
            .check(&[&m(&[1, 1, 2]), &m(&[1, 1, 2])])
            .unwrap_err()
            .to_string()
            .contains("would have size -3"));
    }

    /// Which convolutions [`Shifted`] takes, and its numbering, computed by
    /// hand for a 2-D one.
    #[test]
    fn shifted_geometry() {
        let geom = |cg: usize, stride: usize, k: [usize; 2], pad: [usize; 4]| {
            let (d, dil) = ([6, 10], [1, 2]);
            let out_sp: Vec<usize> = (0..2)
                .map(|i| d[i] + pad[i] + pad[2 + i] - dil[i] * (k[i] - 1) - 1)
                .map(|o| o / stride + 1)
                .collect();
            Geom {
                n: 1,
                c: cg,
                m: 5,
                g: 1,
                cg,
                mg: 5,
                in_sp: d.to_vec(),
                k_sp: k.to_vec(),
                out_sp,
                axes: Axes {
                    stride: vec![stride; 2],
                    dil: dil.to_vec(),
                    pad_b: pad[..2].to_vec(),
                    pad_e: pad[2..].to_vec(),
                },
            }
        };
        let cg = SHIFTED_MIN_CHANNELS;
        // Padded 9 x 12 (strides 12, 1); kernel (2, 3) with dilation
        // (1, 2) spans 2 x 5, so the output is 8 x 8.
        let sh = Shifted::new(&geom(cg, 1, [2, 3], [1, 0, 2, 2])).unwrap();
        assert_eq!(sh.padded, [9, 12]);
        assert_eq!(
            (sh.plane, sh.wide, sh.unpadded, sh.dense),
            (108, 7 * 12 + 7 + 1, false, false)
        );
        assert_eq!(sh.shifts, [0, 2, 4, 12, 14, 16]);
        // No pads and an inner kernel extent of 1: in place, output dense.
        let sh = Shifted::new(&geom(cg, 1, [3, 1], [0; 4])).unwrap();
        assert_eq!(
            (sh.plane, sh.wide, sh.unpadded, sh.dense),
            (60, 40, true, true)
        );
        assert_eq!(sh.shifts, [0, 10, 20]);
        // Too few channels, a stride, a 1x1 kernel: im2col (or pointwise).
        assert!(Shifted::new(&geom(cg - 1, 1, [3, 1], [0; 4])).is_none());
        assert!(Shifted::new(&geom(cg, 2, [3, 1], [0; 4])).is_none());
        assert!(Shifted::new(&geom(cg, 1, [1, 1], [0; 4])).is_none());
        // Pads that would make the padded plane over 4x the input.
        assert!(Shifted::new(&geom(cg, 1, [3, 3], [9, 9, 9, 9])).is_none());
    }

    /// A 1-D convolution written as 2-D with a trailing unit axis (`[N, C,
    /// H, 1]` by a `[K, 1]` kernel, as jax2tf exports it), and one with a
    /// leading unit axis, against the direct sums.
    #[test]
    fn unit_spatial_axes_match_direct_sums() {
        for (xs, ws) in [([2, 4, 9, 1], [3, 4, 5, 1]), ([1, 2, 1, 11], [5, 2, 1, 3])] {
            let x = float_tensor::<f32>(&xs, 7, false);
            let w = float_tensor::<f32>(&ws, 8, false);
            let xd: Vec<f64> = x
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect();
            let wd: Vec<f64> = w
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|&v| v as f64)
                .collect();
            let (want, _) = direct_conv2d(&xd, xs, &wd, ws, None, 1, [1, 1], [1, 1], [0; 4]);
            for imp in [Impl::Reference, Impl::Optimized] {
                let y = launch("conv@1", &attrs(&[]), &[&x, &w], imp).unwrap();
                for (got, want) in y.to_vec::<f32>().unwrap().iter().zip(&want) {
                    assert!(
                        (*got as f64 - want).abs() <= 1e-3 * (1.0 + want.abs()),
                        "{imp:?} {xs:?}: {got} vs {want}"
                    );
                }
                assert_eq!(y.to_vec::<f32>().unwrap().len(), want.len());
            }
        }
    }

    /// Seeded `x`, `w` and a bias of `m`, in f64 or f32.
    fn operands(
        x: &[usize],
        w: &[usize],
        m: usize,
        f64s: bool,
        seed: u64,
    ) -> (Tensor, Tensor, Tensor) {
        if f64s {
            (
                float_tensor::<f64>(x, seed, false),
                float_tensor::<f64>(w, seed ^ 1, false),
                float_tensor::<f64>(&[m], seed ^ 2, false),
            )
        } else {
            (
                float_tensor::<f32>(x, seed, false),
                float_tensor::<f32>(w, seed ^ 1, false),
                float_tensor::<f32>(&[m], seed ^ 2, false),
            )
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn optimized_matches_reference(
            s in 1usize..=3,
            n in 0usize..=2,
            cg in 1usize..=3,
            mg in 1usize..=3,
            group in 1usize..=3,
            dims in prop::collection::vec(1usize..=7, 3),
            ks in prop::collection::vec(1usize..=3, 3),
            st in prop::collection::vec(1usize..=3, 3),
            dl in prop::collection::vec(1usize..=2, 3),
            pads in prop::collection::vec(0usize..=2, 6),
            op in prop::collection::vec(0usize..=1, 3),
            transpose in any::<bool>(),
            with_bias in any::<bool>(),
            f64s_ in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let c = cg * group;
            let m = mg * group;
            let mut x_shape = vec![n, c];
            x_shape.extend(&dims[..s]);
            let mut w_shape = if transpose { vec![c, mg] } else { vec![m, cg] };
            w_shape.extend(&ks[..s]);
            let v = |v: &[usize]| AttrValue::Ints(v.iter().map(|&x| x as i64).collect());
            let mut p = pads[..s].to_vec();
            p.extend(&pads[3..3 + s]);
            let mut at = attrs(&[
                ("group", i(group as i64)),
                ("strides", v(&st[..s])),
                ("dilations", v(&dl[..s])),
                ("pads", v(&p)),
                ("bias", i(i64::from(with_bias))),
            ]);
            if transpose {
                let op: Vec<usize> = op[..s].iter().zip(&st).map(|(&o, &st)| o.min(st - 1)).collect();
                at.insert("output_padding".into(), v(&op));
            }
            let (x, w, b) = operands(&x_shape, &w_shape, m, f64s_, seed);
            let inputs: Vec<&Tensor> = if with_bias { vec![&x, &w, &b] } else { vec![&x, &w] };
            let id = if transpose { "conv_transpose@1" } else { "conv@1" };
            let Ok(r) = launch(id, &at, &inputs, Impl::Reference) else {
                // A window larger than the padded input: both refuse.
                prop_assert!(launch(id, &at, &inputs, Impl::Optimized).is_err());
                return Ok(());
            };
            let o = launch(id, &at, &inputs, Impl::Optimized).unwrap();
            // Terms are below 100 in magnitude; at most cg * 27 * 2 of them.
            let eps = if f64s_ { f64::EPSILON } else { f32::EPSILON as f64 };
            let terms = (cg.max(mg) * 27 * 4) as f64;
            assert_close(&r, &o, 0.0, eps * terms * 100.0 * 4.0);
        }

        /// The shifted path ([`Shifted`]: stride 1, at least
        /// [`SHIFTED_MIN_CHANNELS`] input channels per group) against the
        /// reference: 1- to 3-D, padded or not (the padded copy), inner
        /// kernel extents of 1 (products straight into the output) or more
        /// (the wide output and its compaction), dilation, groups, bias,
        /// and pairs products big enough to be split across rayon's pool.
        #[test]
        fn shifted_path_matches_reference(
            s in 1usize..=3,
            n in 1usize..=2,
            cg in SHIFTED_MIN_CHANNELS..=SHIFTED_MIN_CHANNELS + 4,
            mg in 1usize..=9,
            group in 1usize..=2,
            dims in prop::collection::vec(1usize..=9, 3),
            ks in prop::collection::vec(1usize..=3, 3),
            dl in prop::collection::vec(1usize..=2, 3),
            pads in prop::collection::vec(0usize..=2, 6),
            with_bias in any::<bool>(),
            f64s_ in any::<bool>(),
            big in any::<bool>(),
            seed in any::<u64>(),
        ) {
            // `big`: a 2-D plane large enough that one pair's products
            // reach `GEMM_PAR_MIN` and run as tiles on the pool.
            let (s, dims, mg) = if big { (2, vec![120, 130, 1], 48) } else { (s, dims, mg) };
            let (c, m) = (cg * group, mg * group);
            let mut x_shape = vec![n, c];
            x_shape.extend(&dims[..s]);
            let mut w_shape = vec![m, cg];
            w_shape.extend(&ks[..s]);
            let mut p = pads[..s].to_vec();
            p.extend(&pads[3..3 + s]);
            let ones = vec![1; s];
            let dl: Vec<i64> = dl[..s].iter().map(|&d| d as i64).collect();
            let p: Vec<i64> = p.iter().map(|&d| d as i64).collect();
            let at = conv_attrs(group as i64, &ones, &dl, &p, with_bias);
            let (x, w, b) = operands(&x_shape, &w_shape, m, f64s_, seed);
            let inputs: Vec<&Tensor> = if with_bias { vec![&x, &w, &b] } else { vec![&x, &w] };
            let Ok(r) = launch("conv@1", &at, &inputs, Impl::Reference) else {
                prop_assert!(launch("conv@1", &at, &inputs, Impl::Optimized).is_err());
                return Ok(());
            };
            let o = launch("conv@1", &at, &inputs, Impl::Optimized).unwrap();
            let eps = if f64s_ { f64::EPSILON } else { f32::EPSILON as f64 };
            let terms = (cg * 27 + 1) as f64;
            assert_close(&r, &o, 0.0, eps * terms * 100.0 * 4.0);
        }

        /// The direct path (`direct.rs`: stride 1, one or two spatial
        /// axes, rows of at least a vector; on the CPU's widest instruction
        /// set) against the reference, with channel counts around its
        /// 6- and 8-channel blocks, depthwise groups
        /// (one input channel, at most 4 outputs each), border tiles (wide
        /// pads, dilation, rows that end mid-vector) and whole kernel rows
        /// in the padding, planes narrower than a vector (which take the
        /// other paths), and epilogues: of the result alone, and with a
        /// per-channel scale and shift and a residual input.
        #[test]
        fn direct_path_matches_reference(
            two_d in any::<bool>(),
            n in 1usize..=2,
            cg in 1usize..=9,
            mg in 1usize..=19,
            group in 1usize..=6,
            h in 1usize..=5,
            wi in 2usize..=70,
            kh in 1usize..=3,
            kw in 1usize..=5,
            dl in prop::collection::vec(1usize..=2, 2),
            pads in prop::collection::vec(0usize..=4, 4),
            with_bias in any::<bool>(),
            depthwise in any::<bool>(),
            post in 0u8..3,
            seed in any::<u64>(),
        ) {
            let (cg, mg) = if depthwise { (1, 1 + mg % 4) } else { (cg, mg) };
            let (c, m) = (cg * group, mg * group);
            let s = if two_d { 2 } else { 1 };
            let mut x_shape = vec![n, c];
            let mut w_shape = vec![m, cg];
            let (dims, ks, dil) = if two_d {
                (vec![h, wi], vec![kh, kw], dl.clone())
            } else {
                (vec![wi], vec![kw], vec![dl[1]])
            };
            x_shape.extend(&dims);
            w_shape.extend(&ks);
            let p: Vec<usize> = if two_d { pads.clone() } else { vec![pads[1], pads[3]] };
            let v = |v: &[usize]| AttrValue::Ints(v.iter().map(|&x| x as i64).collect());
            let mut at = attrs(&[
                ("group", i(group as i64)),
                ("strides", v(&vec![1; s])),
                ("dilations", v(&dil)),
                ("pads", v(&p)),
                ("bias", i(i64::from(with_bias))),
            ]);
            let x = float_tensor::<f32>(&x_shape, seed, false);
            let w = float_tensor::<f32>(&w_shape, seed ^ 1, false);
            let b = float_tensor::<f32>(&[m], seed ^ 2, false);
            let mut inputs: Vec<&Tensor> = if with_bias { vec![&x, &w, &b] } else { vec![&x, &w] };
            // Epilogues (run per band of rows on the direct path): HardSwish
            // of the result alone, or a per-channel scale and shift, a
            // residual add and a ReLU.
            let out_shape = launch("conv@1", &at, &inputs, Impl::Reference)
                .map(|t| t.shape().to_vec())
                .unwrap_or_default();
            let mut channel = vec![m];
            channel.extend(vec![1; s]);
            let scale = float_tensor::<f32>(&channel, seed ^ 3, false);
            let shift = float_tensor::<f32>(&channel, seed ^ 4, false);
            let residual = float_tensor::<f32>(&out_shape, seed ^ 5, false);
            match post {
                1 => {
                    let program = "const:3 const:0 const:6 add:0:1 max:4:2 min:5:3 mul:0:6 div:7:3";
                    at.insert("post".into(), AttrValue::Str(program.into()));
                }
                2 if !out_shape.is_empty() => {
                    at.insert("post".into(), AttrValue::Str("mul:0:1 add:4:2 add:5:3 relu:6".into()));
                    at.insert("post_inputs".into(), i(3));
                    inputs.extend([&scale, &shift, &residual]);
                }
                _ => {}
            }
            let Ok(r) = launch("conv@1", &at, &inputs, Impl::Reference) else {
                prop_assert!(launch("conv@1", &at, &inputs, Impl::Optimized).is_err());
                return Ok(());
            };
            let o = launch("conv@1", &at, &inputs, Impl::Optimized).unwrap();
            let terms = (cg * kh * kw + 1) as f64;
            // The scale (|s| < 10) multiplies the sums' rounding error; the
            // epilogue's own ops round at the result's magnitude.
            let amplify = if post == 2 { 10.0 } else { 1.0 };
            let eps = f32::EPSILON as f64;
            assert_close(&r, &o, 4.0 * eps, amplify * eps * terms * 100.0 * 4.0);
        }

        #[test]
        fn check_never_panics(a in adversarial_meta(), b in adversarial_meta(), c in adversarial_meta(), group in 1i64..4, pad in 0i64..3) {
            for id in ["conv@1", "conv_transpose@1"] {
                for bias in [false, true] {
                    let at = attrs(&[("group", i(group)), ("pads", ints(&[pad; 4])), ("bias", i(i64::from(bias)))]);
                    check_is_consistent(&*bind(id, &at).unwrap(), &[&a, &b, &c]);
                }
            }
        }
    }

    /// Runs `id` with both implementations on seeded f32 data and compares.
    #[allow(clippy::too_many_arguments)]
    fn optimized_agrees(
        id: &str,
        x: &[usize],
        w: &[usize],
        group: usize,
        st: &[i64],
        dil: &[i64],
        pads: &[i64],
        bias: bool,
    ) {
        let xt = float_tensor::<f32>(x, 21, false);
        let wt = float_tensor::<f32>(w, 22, false);
        let m = if id == "conv@1" { w[0] } else { w[1] * group };
        let bt = float_tensor::<f32>(&[m], 23, false);
        let at = conv_attrs(group as i64, st, dil, pads, bias);
        let inputs: Vec<&Tensor> = if bias {
            vec![&xt, &wt, &bt]
        } else {
            vec![&xt, &wt]
        };
        let r = launch(id, &at, &inputs, Impl::Reference).unwrap();
        let o = launch(id, &at, &inputs, Impl::Optimized).unwrap();
        // |terms| < 100, at most C/g · K + 1 of them per output.
        let terms = (w[1..].iter().product::<usize>() + 1) as f64;
        assert_close(&r, &o, 0.0, f32::EPSILON as f64 * terms * 100.0 * 4.0);
    }

    /// The geometries the optimized paths special-case, against the
    /// reference: depthwise (direct, including strides along rows, which
    /// read a phase-split copy), im2col with strided gathers (2, 3 and a
    /// generic step), dilation, padding wider than the kernel (whole rows
    /// in the padding), 1-D and 3-D, and tiles that cut rows.
    #[test]
    fn optimized_matches_reference_on_special_geometries() {
        let c = "conv@1";
        // Framing: unpadded 1-D windows over one input channel per group
        // (a strided view of x), with stride and dilation, groups of more
        // than 4 outputs (not depthwise), and a padded one (im2col).
        for (dil, pads) in [(1, 0), (2, 0), (1, 3)] {
            optimized_agrees(
                c,
                &[2, 1, 100],
                &[7, 1, 9],
                1,
                &[4],
                &[dil],
                &[pads, pads],
                true,
            );
            optimized_agrees(
                c,
                &[1, 2, 60],
                &[10, 1, 5],
                2,
                &[3],
                &[dil],
                &[0, pads],
                false,
            );
        }
        // [K, 1] kernels on planes narrower than a vector: padded rows,
        // dilation, groups.
        optimized_agrees(
            c,
            &[2, 6, 9, 8],
            &[10, 3, 3, 1],
            2,
            &[1, 1],
            &[2, 1],
            &[1, 0, 2, 0],
            true,
        );
        optimized_agrees(
            c,
            &[1, 5, 7, 3],
            &[9, 5, 2, 1],
            1,
            &[1, 1],
            &[1, 1],
            &[0, 0, 0, 0],
            false,
        );
        // Depthwise 2-D: stride 1 and 2, with and without bias, M/g = 2.
        optimized_agrees(
            c,
            &[2, 6, 9, 11],
            &[6, 1, 3, 3],
            6,
            &[1, 1],
            &[1, 1],
            &[1, 1, 1, 1],
            true,
        );
        optimized_agrees(
            c,
            &[1, 6, 9, 11],
            &[6, 1, 3, 3],
            6,
            &[2, 2],
            &[1, 1],
            &[1, 1, 1, 1],
            false,
        );
        optimized_agrees(
            c,
            &[1, 4, 10, 13],
            &[8, 1, 5, 5],
            4,
            &[1, 2],
            &[1, 1],
            &[2, 2, 2, 2],
            true,
        );
        optimized_agrees(
            c,
            &[1, 4, 10, 17],
            &[4, 1, 3, 3],
            4,
            &[2, 3],
            &[2, 2],
            &[3, 0, 1, 4],
            true,
        );
        optimized_agrees(
            c,
            &[1, 3, 4, 23],
            &[3, 1, 2, 3],
            3,
            &[1, 5],
            &[1, 3],
            &[4, 4, 4, 4],
            false,
        );
        // Depthwise 1-D and 3-D, strided and dilated.
        optimized_agrees(c, &[2, 5, 40], &[5, 1, 4], 5, &[3], &[2], &[2, 3], true);
        optimized_agrees(
            c,
            &[1, 3, 5, 6, 7],
            &[3, 1, 3, 2, 3],
            3,
            &[2, 1, 2],
            &[1, 2, 1],
            &[1, 0, 2, 1, 1, 1],
            true,
        );
        // One input channel, many outputs per group (gemm path).
        optimized_agrees(
            c,
            &[1, 1, 12, 15],
            &[9, 1, 3, 3],
            1,
            &[1, 2],
            &[1, 1],
            &[1, 1, 1, 1],
            true,
        );
        // im2col: strides 2, 3, 4 and 5 along rows, dilation, wide pads.
        for sw in [2, 3, 4, 5] {
            optimized_agrees(
                c,
                &[1, 4, 9, 29],
                &[6, 2, 3, 3],
                2,
                &[1, sw],
                &[1, 2],
                &[1, 2, 0, 3],
                true,
            );
        }
        optimized_agrees(
            c,
            &[1, 3, 5, 6],
            &[4, 3, 2, 2],
            1,
            &[1, 1],
            &[2, 2],
            &[5, 5, 5, 5],
            false,
        );
        optimized_agrees(c, &[2, 4, 30], &[6, 2, 3], 2, &[2], &[3], &[4, 1], true);
        optimized_agrees(
            c,
            &[1, 2, 4, 5, 6],
            &[3, 2, 2, 3, 2],
            1,
            &[1, 2, 1],
            &[2, 1, 1],
            &[1, 1, 0, 0, 2, 1],
            true,
        );
        // Pointwise with stride goes through im2col; without, straight to gemm.
        optimized_agrees(
            c,
            &[1, 5, 7, 9],
            &[3, 5, 1, 1],
            1,
            &[2, 2],
            &[1, 1],
            &[0, 0, 0, 0],
            true,
        );
        optimized_agrees(
            c,
            &[1, 5, 7, 9],
            &[3, 5, 1, 1],
            1,
            &[1, 1],
            &[1, 1],
            &[0, 0, 0, 0],
            true,
        );
        // Rows longer than a tile: C/g · K = 8 and 2^18 + 7 outputs, so
        // tiles end mid-row.
        optimized_agrees(
            c,
            &[1, 2, (1 << 18) + 8],
            &[2, 2, 4],
            1,
            &[1],
            &[1],
            &[1, 2],
            true,
        );
        optimized_agrees(
            c,
            &[1, 1, 3, 1 << 18],
            &[6, 1, 3, 3],
            1,
            &[2, 2],
            &[1, 1],
            &[1, 1, 1, 1],
            true,
        );
        // Rows of one position: more rows than a tile holds (im2col), more
        // (row, kernel position) runs than the depthwise table holds.
        optimized_agrees(
            c,
            &[1, 3, 5000, 1],
            &[6, 3, 3, 1],
            1,
            &[1, 1],
            &[1, 1],
            &[0, 0, 0, 0],
            true,
        );
        optimized_agrees(
            c,
            &[1, 2, 64, 64, 1],
            &[2, 1, 3, 3, 1],
            2,
            &[1, 1, 1],
            &[1, 1, 1],
            &[1, 1, 0, 1, 1, 0],
            true,
        );
        let t = "conv_transpose@1";
        optimized_agrees(
            t,
            &[1, 4, 6, 7],
            &[4, 2, 3, 3],
            2,
            &[2, 3],
            &[1, 2],
            &[1, 0, 2, 1],
            true,
        );
        optimized_agrees(t, &[2, 3, 11], &[3, 2, 4], 1, &[3], &[2], &[0, 5], false);
        optimized_agrees(
            t,
            &[1, 2, 3, 4, 5],
            &[2, 1, 2, 2, 3],
            2,
            &[1, 2, 2],
            &[1, 1, 2],
            &[0, 1, 1, 0, 0, 2],
            true,
        );
        optimized_agrees(
            t,
            &[1, 2, (1 << 18) + 5],
            &[2, 3, 4],
            1,
            &[2],
            &[1],
            &[1, 0],
            true,
        );
    }

    #[test]
    fn large_conv_runs_the_parallel_paths() {
        // Big enough for rayon and for several im2col tiles per pair.
        let x = float_tensor::<f32>(&[2, 8, 150, 140], 11, false);
        let w = float_tensor::<f32>(&[16, 4, 3, 3], 12, false);
        let at = conv_attrs(2, &[1, 1], &[1, 1], &[1, 1, 1, 1], false);
        let r = launch("conv@1", &at, &[&x, &w], Impl::Reference).unwrap();
        let o = launch("conv@1", &at, &[&x, &w], Impl::Optimized).unwrap();
        assert_close(&r, &o, 0.0, 1e-2);
        let t = bind("conv_transpose@1", &attrs(&[])).unwrap();
        let xt = float_tensor::<f32>(&[1, 8, 300, 300], 13, false);
        let wt = float_tensor::<f32>(&[8, 4, 4, 4], 14, false);
        let metas = [xt.meta(), wt.meta()];
        assert_eq!(t.check(&metas).unwrap()[0].shape, [1, 4, 303, 303]);
        let r = launch(
            "conv_transpose@1",
            &attrs(&[]),
            &[&xt, &wt],
            Impl::Reference,
        )
        .unwrap();
        let o = launch(
            "conv_transpose@1",
            &attrs(&[]),
            &[&xt, &wt],
            Impl::Optimized,
        )
        .unwrap();
        assert_close(&r, &o, 0.0, 1e-2);
    }
}
