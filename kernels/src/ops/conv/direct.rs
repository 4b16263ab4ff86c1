//! Direct f32 convolution on AVX-512: stride-1 convolutions with one or
//! two spatial axes, computed straight from the input, with no im2col
//! columns and no gemm packing.
//!
//! Why: the im2col path copies the input once per kernel position into
//! columns, and gemm copies those columns again into its packed panels.
//! With tens of output channels per group (3×3 convolution stacks) those
//! copies cost about as much as the multiply-adds; the products themselves
//! run well below the FMA units' peak.
//!
//! How: a micro-tile holds [`MR`] output channels × `16·V` (`V ≤ 3`)
//! consecutive outputs of one row in `MR·V` vector accumulators. It walks
//! the input channels and the kernel positions; at each it loads `V`
//! input vectors and broadcasts one weight per output channel: 24
//! multiply-adds per 11 loads, bound by the FMA units. Weights are repacked
//! once per launch into panels `[M/g ÷ MR][C/g][K][MR]` (zero past `M/g`)
//! so a tile's broadcasts read consecutive memory.
//!
//! Borders: kernel rows that fall in the padding are skipped for the whole
//! tile; tiles whose window crosses the left or right padding, or that end
//! past the row, load and store with lane masks, so no lane ever touches
//! memory outside the input or the output row.
//!
//! Work is cut into bands of output rows small enough that the input rows
//! a band reads stay in the core's L2, times groups of [`MR`]-channel
//! blocks; (band, group) items run on rayon's pool. Within an item, input
//! channels are taken [`CHANNELS`] at a time, and for each tile every
//! block is computed in turn while the tile's input is in L1.
//!
//! Depthwise convolutions use the same tiles with one output channel
//! (`R = 1`): the sums stay in registers across the kernel positions.
//!
//! Each output's sum starts at its bias (or zero), adds the first
//! [`CHANNELS`] input channels over (channel, kernel row, kernel column),
//! and is stored; later chunks add to it. The epilogue (`conv@1`'s `post`
//! program, with whatever other inputs it reads) then runs on each finished
//! band while it is in cache. Results differ from the other optimized paths
//! only in rounding.

use rayon::prelude::*;

use super::Geom;
use crate::ops::scratch::Scratch;

/// Output channels per micro-tile.
const MR: usize = 8;
/// f32 lanes per vector.
const L: usize = 16;
/// Most vectors per micro-tile row (`MR · VMAX` accumulators plus `VMAX`
/// inputs and a broadcast fit the 32 vector registers).
const VMAX: usize = 3;
/// Input channels per pass over a band: a tile's input rows for that many
/// channels stay in L1 (partial sums go through `y` between passes).
const CHANNELS: usize = 32;
/// The input a band of output rows reads should fit in this many bytes
/// (about half of a core's L2, the rest being the weight panels).
const BAND_BYTES: usize = 1 << 20;

/// An epilogue: computes output elements `start..start + band.len()` of the
/// whole output tensor in place, `band` holding the convolution's values.
pub(super) type Epilogue<'a> = &'a (dyn Fn(usize, &mut [f32]) -> Result<(), String> + Sync);

/// A stride-1 convolution with at most two spatial axes, as 2-D sizes (a
/// 1-D convolution is one row: `h = 1`).
pub(super) struct Plane {
    h_in: usize,
    w_in: usize,
    h_out: usize,
    w_out: usize,
    kh: usize,
    kw: usize,
    dh: usize,
    dw: usize,
    pt: usize,
    pl: usize,
}

impl Plane {
    /// The plane of `g` when the direct path applies to it: stride 1 on
    /// every axis, one or two spatial axes, a kernel of more than one
    /// position (a 1×1 convolution is a plain product, which gemm does
    /// faster), output rows of at least one vector, and a CPU with AVX-512F.
    pub(super) fn new(g: &Geom) -> Option<Plane> {
        if g.axes.stride.iter().any(|&s| s != 1) || g.k_len() < 2 {
            return None;
        }
        let (row, col) = match g.in_sp.len() {
            1 => (None, 0),
            2 => (Some(0), 1),
            _ => return None,
        };
        let at = |v: &[usize], i: Option<usize>, unit: usize| i.map_or(unit, |i| v[i]);
        let plane = Plane {
            h_in: at(&g.in_sp, row, 1),
            w_in: g.in_sp[col],
            h_out: at(&g.out_sp, row, 1),
            w_out: g.out_sp[col],
            kh: at(&g.k_sp, row, 1),
            kw: g.k_sp[col],
            dh: at(&g.axes.dil, row, 1),
            dw: g.axes.dil[col],
            pt: at(&g.axes.pad_b, row, 0),
            pl: g.axes.pad_b[col],
        };
        (plane.w_out >= L && avx512()).then_some(plane)
    }
}

fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One (batch, group) pair: `ychunk [M/g, H·W]` gets `w_g ⊛ x_g` plus the
/// group's slice of `bias` (all `M` channels), then `post` on each
/// finished band. With `par`, (band, channel block) items run on rayon's
/// pool.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv_pair(
    p: &Plane,
    g: &Geom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    post: Option<Epilogue>,
    pair: usize,
    ychunk: &mut [f32],
    par: bool,
) -> Result<(), String> {
    let grp = pair % g.g;
    let (in_len, k_len, out_len) = (g.in_len(), g.k_len(), g.out_len());
    let ck = g.cg * k_len;
    let xg = g.group_x(x, pair)?;
    let wg = g.group_w(w, pair)?;
    // Where the pair's output starts in the whole output.
    let base = pair * ychunk.len();
    if ychunk.len() != g.mg * out_len || out_len != p.h_out * p.w_out || in_len != p.h_in * p.w_in {
        return Err("internal: direct conv sizes disagree".into());
    }
    let bias = match bias {
        Some(b) => Some(
            b.get(grp * g.mg..(grp + 1) * g.mg)
                .ok_or("internal: conv group outside bias")?,
        ),
        None => None,
    };
    let blocks = g.mg.div_ceil(MR);
    let mut panels = Scratch::<f32>::new(blocks * ck * MR);
    let panels = panels.as_mut();
    for (b, panel) in panels.chunks_exact_mut(ck * MR).enumerate() {
        for (q, slot) in panel.chunks_exact_mut(MR).enumerate() {
            for (r, v) in slot.iter_mut().enumerate() {
                let m = b * MR + r;
                *v = if m < g.mg { wg[m * ck + q] } else { 0.0 };
            }
        }
    }
    let threads = if par { rayon::current_num_threads() } else { 1 };
    let row_bytes = 4 * p.w_in * g.cg;
    let mut band = (BAND_BYTES / row_bytes.max(1))
        .saturating_sub((p.kh - 1) * p.dh)
        .clamp(1, p.h_out.max(1));
    // Enough items for every thread: halve the bands, then split the
    // channel blocks.
    while band > 1 && p.h_out.div_ceil(band) < 2 * threads {
        band = band.div_ceil(2);
    }
    let bands = p.h_out.div_ceil(band);
    let per_item = blocks.div_ceil((2 * threads).div_ceil(bands));
    let groups = blocks.div_ceil(per_item);
    // Items (band, first block) in band-major order, each holding the rows
    // of its band in each output plane of its blocks.
    let mut items: Vec<(usize, usize, Vec<&mut [f32]>)> = (0..bands)
        .flat_map(|bi| (0..groups).map(move |gi| (bi, gi * per_item, Vec::new())))
        .collect();
    for (m, plane) in ychunk.chunks_exact_mut(out_len).enumerate() {
        for (bi, rows) in plane.chunks_mut(band * p.w_out).enumerate() {
            items[bi * groups + m / (MR * per_item)].2.push(rows);
        }
    }
    let tiles = row_tiles(p);
    let run = |(bi, b0, mut outs): (usize, usize, Vec<&mut [f32]>)| {
        let panels = &panels[b0 * ck * MR..];
        let bias = bias.map(|b| &b[b0 * MR..]);
        // SAFETY: a `Plane` exists only on CPUs with AVX-512F.
        #[allow(unsafe_code)]
        unsafe {
            band_blocks::<MR>(p, g.cg, xg, panels, bias, &tiles, bi * band, &mut outs)?;
        }
        match post {
            // Plane `b0·MR + i` of the pair's block starts at
            // `base + (b0·MR + i)·out_len`; the band at row `bi·band`.
            Some(post) => outs.iter_mut().enumerate().try_for_each(|(i, o)| {
                post(base + (b0 * MR + i) * out_len + bi * band * p.w_out, o)
            }),
            None => Ok(()),
        }
    };
    if par {
        items.into_par_iter().try_for_each(run)
    } else {
        items.into_iter().try_for_each(run)
    }
}

/// A depthwise convolution (one input channel per group): each output
/// plane `(n, m)` from input channel `n·C + m ÷ (M/g)` and its own `K`
/// weights, with one-channel tiles (`R = 1`: `V` loads, one broadcast and
/// `V` multiply-adds per kernel position, the sums in registers across
/// all of them), then `post` on it. Planes run on rayon's pool with `par`.
#[allow(clippy::too_many_arguments)]
pub(super) fn depthwise(
    p: &Plane,
    g: &Geom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    post: Option<Epilogue>,
    y: &mut [f32],
    par: bool,
) -> Result<(), String> {
    let (in_len, out_len) = (g.in_len(), g.out_len());
    if g.cg != 1 || out_len != p.h_out * p.w_out || in_len != p.h_in * p.w_in {
        return Err("internal: direct depthwise sizes disagree".into());
    }
    let tiles = row_tiles(p);
    let plane = |(q, yp): (usize, &mut [f32])| {
        let (m, xc, wk) = g.depthwise_plane(x, w, q)?;
        let b = bias
            .map(|b| b.get(m..m + 1).ok_or("internal: depthwise bias outside b"))
            .transpose()?;
        // SAFETY: a `Plane` exists only on CPUs with AVX-512F.
        #[allow(unsafe_code)]
        unsafe {
            band_blocks::<1>(p, 1, xc, wk, b, &tiles, 0, &mut [&mut *yp])?;
        }
        match post {
            Some(post) => post(q * out_len, yp),
            None => Ok(()),
        }
    };
    if par {
        y.par_chunks_mut(out_len).enumerate().try_for_each(plane)
    } else {
        y.chunks_mut(out_len).enumerate().try_for_each(plane)
    }
}

/// Output rows `oh0..` (as many as `outs[0]` holds) of the planes in
/// `outs`, whose weight panels (`[C/g][K][R]` per block of `R` planes)
/// start `panels` and biases `bias`. For each chunk of [`CHANNELS`] input
/// channels, each row and each tile along it, every block of `R` planes is
/// computed in turn, so the tile's input stays in L1 across blocks.
///
/// Compiled for AVX-512F like the tiles it calls (the CPU must have it):
/// code between the tiles then stays in VEX encoding, avoiding SSE/AVX
/// transitions around each call.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
fn band_blocks<const R: usize>(
    p: &Plane,
    cg: usize,
    xg: &[f32],
    panels: &[f32],
    bias: Option<&[f32]>,
    tiles: &[RowTile],
    oh0: usize,
    outs: &mut [&mut [f32]],
) -> Result<(), String> {
    // A tile has room for MR output channels.
    const { assert!(R >= 1 && R <= MR) };
    let rows_here = outs.first().map_or(0, |o| o.len() / p.w_out);
    let (in_len, k_len) = (p.h_in * p.w_in, p.kh * p.kw);
    if panels.len() < outs.len().div_ceil(R) * cg * k_len * R
        || xg.len() < cg * in_len
        || outs.iter().any(|o| o.len() != rows_here * p.w_out)
        || bias.is_some_and(|b| b.len() < outs.len())
    {
        return Err("internal: direct conv operands disagree".into());
    }
    let mut rows = Vec::with_capacity(p.kh);
    for c0 in (0..cg).step_by(CHANNELS) {
        let cn = CHANNELS.min(cg - c0);
        for r in 0..rows_here {
            let oh = oh0 + r;
            // The kernel rows inside the input, with their input row's offset.
            rows.clear();
            for i in 0..p.kh {
                let ih = (oh + i * p.dh).checked_sub(p.pt).filter(|&ih| ih < p.h_in);
                if let Some(ih) = ih {
                    rows.push((i, ih * p.w_in));
                }
            }
            for t in tiles {
                for (b, block) in outs.chunks_mut(R).enumerate() {
                    // The first pass over the channels starts from the bias
                    // and overwrites; later passes add to it.
                    let start = std::array::from_fn(|r| match bias {
                        Some(bias) if c0 == 0 => bias.get(b * R + r).copied().unwrap_or(0.0),
                        _ => 0.0,
                    });
                    let mut dst = [std::ptr::null_mut(); MR];
                    for (d, o) in dst.iter_mut().zip(block.iter_mut()) {
                        *d = o[r * p.w_out + t.ow0..].as_mut_ptr();
                    }
                    let tile = Tile {
                        x: xg[c0 * in_len..].as_ptr(),
                        in_len,
                        cg: cn,
                        rows: &rows,
                        kw: p.kw,
                        dw: p.dw,
                        col0: t.col0,
                        masks: &t.masks,
                        panel: panels[(b * cg + c0) * k_len * R..].as_ptr(),
                        k_len,
                        dst,
                        store: t.store,
                        outs: block.len(),
                        start,
                        acc: c0 > 0,
                    };
                    // SAFETY: the CPU has AVX-512F (checked by `Plane::new`,
                    // the only way to get a `Plane`). Memory: see `Tile`'s
                    // contract, which this loop establishes: `rows` only
                    // lists kernel rows inside the input; `t` masks lanes as
                    // `row_tiles` documents; `dst` points at this tile's
                    // first output in rows of `outs`, which hold `rows_here`
                    // whole output rows; the panels and the input are at
                    // least as long as the tile reads (checked above).
                    #[allow(unsafe_code)]
                    unsafe {
                        match (t.v, t.interior) {
                            (3, true) => tile.run::<R, 3, false>(),
                            (3, false) => tile.run::<R, 3, true>(),
                            (2, true) => tile.run::<R, 2, false>(),
                            (2, false) => tile.run::<R, 2, true>(),
                            (_, true) => tile.run::<R, 1, false>(),
                            (_, false) => tile.run::<R, 1, true>(),
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// A micro-tile's place along an output row (the same in every row).
struct RowTile {
    /// First output column.
    ow0: usize,
    /// Vectors (1 to [`VMAX`]).
    v: usize,
    /// Every lane's input column, at every kernel column, is inside the
    /// input, and every lane's output inside the row: no masks needed.
    interior: bool,
    /// Input column of lane 0 at kernel column 0 (negative in the padding).
    col0: isize,
    /// Per kernel column, the lanes whose input column is inside the input
    /// and whose output is inside the row (when not `interior`).
    masks: Vec<[u16; VMAX]>,
    /// The lanes whose output is inside the row.
    store: [u16; VMAX],
}

/// The micro-tiles covering an output row: [`VMAX`] vectors each, the last
/// as many as the row's rest needs.
fn row_tiles(p: &Plane) -> Vec<RowTile> {
    let mut tiles = Vec::new();
    let mut ow0 = 0;
    while ow0 < p.w_out {
        let v = (p.w_out - ow0).div_ceil(L).min(VMAX);
        let width = v * L;
        let col0 = ow0 as isize - p.pl as isize;
        let reach = col0 + ((p.kw - 1) * p.dw + width) as isize;
        let interior = col0 >= 0 && reach <= p.w_in as isize && ow0 + width <= p.w_out;
        let masks = (0..p.kw)
            .map(|j| {
                std::array::from_fn(|vi| {
                    lane_mask(|l| {
                        let ow = ow0 + vi * L + l;
                        let col = col0 + (j * p.dw + vi * L + l) as isize;
                        vi < v && ow < p.w_out && col >= 0 && col < p.w_in as isize
                    })
                })
            })
            .collect();
        let store = std::array::from_fn(|vi| lane_mask(|l| ow0 + vi * L + l < p.w_out));
        tiles.push(RowTile {
            ow0,
            v,
            interior,
            col0,
            masks,
            store,
        });
        ow0 += width;
    }
    tiles
}

/// The 16-lane mask of the lanes `l` for which `f(l)`.
fn lane_mask(f: impl Fn(usize) -> bool) -> u16 {
    (0..L).fold(0, |m, l| m | (u16::from(f(l)) << l))
}

/// One micro-tile: `outs` output channels × `16·V` outputs of one row.
///
/// Contract of [`Tile::run`]: for every channel `c < cg`, listed kernel row
/// `(i, off)` and kernel column `j < kw`, lane `l` of vector `v` reads the
/// input at `x + c·in_len + off + col0 + j·dw + 16v + l` unless the tile is
/// masked and that lane's bit of `masks[j][v]` is clear; the weight panel is
/// read at `panel + ((c·k_len) + i·kw + j)·MR + r`; and for `r < outs`
/// output lane `16v + l` is read (with `acc`) and written at `dst[r] + 16v +
/// l` unless masked off by `store[v]`; sums start at `start[r]`. All those addresses must be in
/// bounds of their buffers, and the `dst` rows exclusively borrowed.
struct Tile<'a> {
    x: *const f32,
    in_len: usize,
    cg: usize,
    rows: &'a [(usize, usize)],
    kw: usize,
    dw: usize,
    col0: isize,
    masks: &'a [[u16; VMAX]],
    panel: *const f32,
    k_len: usize,
    dst: [*mut f32; MR],
    store: [u16; VMAX],
    outs: usize,
    /// Each output channel's starting value.
    start: [f32; MR],
    acc: bool,
}

#[cfg(target_arch = "x86_64")]
impl Tile<'_> {
    /// Computes the tile (see the struct's contract). Common kernel widths
    /// are compile-time constants, so the kernel-column loop unrolls (a
    /// loop of three iterations, exited every few dozen cycles, costs
    /// about a quarter of the throughput in mispredicted exits).
    #[allow(unsafe_code)]
    #[target_feature(enable = "avx512f")]
    unsafe fn run<const R: usize, const V: usize, const MASKED: bool>(&self) {
        // SAFETY: the caller's.
        unsafe {
            match self.kw {
                1 => self.run_kw::<R, V, MASKED, 1>(),
                3 => self.run_kw::<R, V, MASKED, 3>(),
                5 => self.run_kw::<R, V, MASKED, 5>(),
                _ => self.run_kw::<R, V, MASKED, 0>(),
            }
        }
    }

    /// [`Tile::run`] for kernels `KW` wide (any width with `KW = 0`).
    #[allow(unsafe_code)]
    #[target_feature(enable = "avx512f")]
    unsafe fn run_kw<const R: usize, const V: usize, const MASKED: bool, const KW: usize>(&self) {
        use std::arch::x86_64::*;
        let kw = if KW > 0 { KW } else { self.kw };
        let mut s: [[__m512; V]; R] = std::array::from_fn(|r| [_mm512_set1_ps(self.start[r]); V]);
        for c in 0..self.cg {
            // SAFETY (all pointer arithmetic and loads below): the struct's
            // contract; masked-off lanes are not accessed by masked loads,
            // and their addresses are formed with `wrapping_*`.
            unsafe {
                let xc = self.x.add(c * self.in_len);
                let wc = self.panel.add(c * self.k_len * R);
                for &(i, off) in self.rows {
                    let xr = xc.add(off).wrapping_offset(self.col0);
                    let wr = wc.add(i * kw * R);
                    for j in 0..kw {
                        let base = xr.wrapping_add(j * self.dw);
                        let mut xs = [_mm512_setzero_ps(); V];
                        for (v, xv) in xs.iter_mut().enumerate() {
                            *xv = if MASKED {
                                _mm512_maskz_loadu_ps(self.masks[j][v], base.wrapping_add(v * L))
                            } else {
                                _mm512_loadu_ps(base.add(v * L))
                            };
                        }
                        let wj = wr.add(j * R);
                        for (r, sr) in s.iter_mut().enumerate() {
                            let b = _mm512_set1_ps(*wj.add(r));
                            for (sv, &xv) in sr.iter_mut().zip(&xs) {
                                *sv = _mm512_fmadd_ps(xv, b, *sv);
                            }
                        }
                    }
                }
            }
        }
        for (r, sr) in s.iter().enumerate() {
            if r >= self.outs {
                break;
            }
            for (v, &sv) in sr.iter().enumerate() {
                // SAFETY: the struct's contract (stores masked like loads).
                unsafe {
                    let d = self.dst[r].add(v * L);
                    if MASKED {
                        let m = self.store[v];
                        let val = if self.acc {
                            _mm512_add_ps(_mm512_maskz_loadu_ps(m, d), sv)
                        } else {
                            sv
                        };
                        _mm512_mask_storeu_ps(d, m, val);
                    } else {
                        let val = if self.acc {
                            _mm512_add_ps(_mm512_loadu_ps(d), sv)
                        } else {
                            sv
                        };
                        _mm512_storeu_ps(d, val);
                    }
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl Tile<'_> {
    /// Unreachable: `Plane::new` requires x86-64 with AVX-512F.
    #[allow(unsafe_code)]
    unsafe fn run<const R: usize, const V: usize, const MASKED: bool>(&self) {}
}

#[cfg(test)]
mod tests {
    use super::super::{Axes, Geom};
    use super::*;

    fn geom(in_sp: &[usize], k_sp: &[usize], stride: usize, cg: usize) -> Geom {
        let s = in_sp.len();
        Geom {
            n: 1,
            c: cg,
            m: 8,
            g: 1,
            cg,
            mg: 8,
            in_sp: in_sp.to_vec(),
            k_sp: k_sp.to_vec(),
            out_sp: in_sp.iter().map(|&d| d / stride).collect(),
            axes: Axes {
                stride: vec![stride; s],
                dil: vec![1; s],
                pad_b: vec![1; s],
                pad_e: vec![1; s],
            },
        }
    }

    /// The direct path is taken where it applies (so the `conv` tests
    /// comparing the optimized kernel with the reference exercise it on a
    /// CPU with AVX-512), and only there.
    #[test]
    fn applies_to_stride_one_rows_of_a_vector() {
        let on = avx512();
        assert_eq!(Plane::new(&geom(&[9, 40], &[3, 3], 1, 4)).is_some(), on);
        assert_eq!(Plane::new(&geom(&[40], &[5], 1, 4)).is_some(), on);
        assert!(Plane::new(&geom(&[9, 40], &[3, 3], 2, 4)).is_none());
        assert!(Plane::new(&geom(&[9, 40], &[1, 1], 1, 4)).is_none());
        assert!(Plane::new(&geom(&[9, 12], &[3, 3], 1, 4)).is_none());
        assert!(Plane::new(&geom(&[4, 9, 40], &[3, 3, 3], 1, 4)).is_none());
    }
}
