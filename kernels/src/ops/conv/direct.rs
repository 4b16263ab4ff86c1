//! Direct f32 convolution on AVX-512 or AVX2 with FMA: stride-1
//! convolutions with one or two spatial axes, computed straight from the
//! input, with no im2col columns and no gemm packing.
//!
//! Why: the im2col path copies the input once per kernel position into
//! columns, and gemm copies those columns again into its packed panels.
//! With tens of output channels per group (3×3 convolution stacks) those
//! copies cost about as much as the multiply-adds; the products themselves
//! run well below the FMA units' peak.
//!
//! How: a micro-tile holds `R` output channels × `L·V` consecutive
//! outputs of one row in `R·V` vector accumulators: on AVX-512, `R = 8`
//! channels × `V ≤ 3` vectors of 16 lanes (32 registers); on AVX2, 6 × 2
//! vectors of 8 (16 registers). It walks the input channels and the kernel
//! positions; at each it loads `V` input vectors and broadcasts one weight
//! per output channel: 24 multiply-adds per 11 loads on AVX-512, 12 per 8
//! on AVX2. The tile code is generic over the vector type and compiled
//! once per instruction set ([`Isa`]), picked once per launch from the CPU.
//! Weights are repacked once per launch into panels `[M/g ÷ R][C/g][K][R]`
//! (zero past `M/g`) so a tile's broadcasts read consecutive memory.
//!
//! Borders: kernel rows that fall in the padding are skipped for the whole
//! tile; tiles whose window crosses the left or right padding, or that end
//! past the row, load and store with lane masks, so no lane ever touches
//! memory outside the input or the output row.
//!
//! Work is cut into bands of output rows small enough that the input rows
//! a band reads stay in the core's L2, times groups of `R`-channel
//! blocks; (band, group) items run on rayon's pool. Within an item, input
//! channels are taken [`CHANNELS`] at a time, and for each tile every
//! block is computed in turn while the tile's input is in L1; or, when a
//! whole row's input fits in L1 (few input channels), each block along the
//! row in turn, so that the stores go to a few planes in order.
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

/// Most output channels per micro-tile (AVX-512's).
const MR: usize = 8;
/// Most vectors per micro-tile row (on AVX-512, `MR · VMAX` accumulators
/// plus `VMAX` inputs and a broadcast fit the 32 vector registers).
const VMAX: usize = 3;
/// Input channels per pass over a band: a tile's input rows for that many
/// channels stay in L1 (partial sums go through `y` between passes).
const CHANNELS: usize = 32;
/// A dense band walks each output row block by block (rather than tile by
/// tile) when the input the row reads, over a pass's channels, is at most
/// this many bytes: half of a 32 KiB L1.
const L1_ROW_BYTES: usize = 16 << 10;
/// On AVX2, the fewest kernel positions of a dense convolution for the
/// direct path (see [`Plane::new`]).
const AVX2_DENSE_K_MIN: usize = 9;
/// The input a band of output rows reads should fit in this many bytes
/// (about half of a core's L2, the rest being the weight panels).
const BAND_BYTES: usize = 1 << 20;

/// An epilogue: computes output elements `start..start + band.len()` of the
/// whole output tensor in place, `band` holding the convolution's values.
pub(super) type Epilogue<'a> = &'a (dyn Fn(usize, &mut [f32]) -> Result<(), String> + Sync);

/// The vector instruction set the tiles are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Isa {
    /// AVX-512F: 16 lanes, 32 registers.
    Avx512,
    /// AVX2 with FMA: 8 lanes, 16 registers.
    Avx2,
}

impl Isa {
    /// Every instruction set the tiles are compiled for, the widest first.
    pub(super) const ALL: [Isa; 2] = [Isa::Avx512, Isa::Avx2];

    /// Whether this CPU runs it.
    pub(super) fn runs(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Isa::Avx512 => has!("avx512f"),
                Isa::Avx2 => has!("avx2") && has!("fma"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// f32 lanes per vector.
    fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
        }
    }

    /// Output channels per tile of a dense (not depthwise) convolution,
    /// and per weight panel: with [`Isa::vmax`] vectors, 8 × 3 on AVX-512
    /// and 6 × 2 on AVX2 (the shape of gemm's own AVX2 tile), as many
    /// multiply-adds per load as the registers allow.
    fn block(self) -> usize {
        match self {
            Isa::Avx512 => MR,
            Isa::Avx2 => 6,
        }
    }

    /// Most vectors per tile row for tiles of `r` output channels: their
    /// `r · v` accumulators, `v` inputs and a broadcast must fit the
    /// registers (32 on AVX-512, 16 on AVX2).
    fn vmax(self, r: usize) -> usize {
        match self {
            Isa::Avx512 => VMAX,
            Isa::Avx2 if r == 1 => VMAX,
            Isa::Avx2 => 2,
        }
    }
}

/// A stride-1 convolution with at most two spatial axes, as 2-D sizes (a
/// 1-D convolution is one row: `h = 1`), and the instruction set its
/// tiles run on.
pub(super) struct Plane {
    isa: Isa,
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
    /// faster), output rows of at least one vector, and a CPU with AVX-512F
    /// or AVX2 and FMA (the widest is used).
    ///
    /// On AVX2, a dense convolution takes the direct path only with a
    /// kernel of at least [`AVX2_DENSE_K_MIN`] positions. With its 16
    /// registers the dense tile is 6 channels × 2 vectors, the size of
    /// gemm's own, so the direct path saves only im2col's copies, which
    /// grow with the kernel: on a Zen CPU, DNSMOS's 3×3 convolutions ran
    /// about a quarter faster (707 → 531 ms a call, median of 3), while
    /// openWakeWord's embedding model (1×3 and 3×1 kernels) ran slower
    /// (3.8 → 5.0 ms).
    pub(super) fn new(g: &Geom, depthwise: bool) -> Option<Plane> {
        Plane::on(g, depthwise, Isa::ALL.into_iter().find(|isa| isa.runs())?)
    }

    /// [`Plane::new`] on `isa`; `None` also when the CPU does not run it.
    pub(super) fn on(g: &Geom, depthwise: bool, isa: Isa) -> Option<Plane> {
        if g.axes.stride.iter().any(|&s| s != 1)
            || g.k_len() < 2
            || (isa == Isa::Avx2 && !depthwise && g.k_len() < AVX2_DENSE_K_MIN)
        {
            return None;
        }
        let (row, col) = match g.in_sp.len() {
            1 => (None, 0),
            2 => (Some(0), 1),
            _ => return None,
        };
        let at = |v: &[usize], i: Option<usize>, unit: usize| i.map_or(unit, |i| v[i]);
        let plane = Plane {
            isa,
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
        (plane.w_out >= isa.lanes() && isa.runs()).then_some(plane)
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
    // Output channels per tile and per weight panel.
    let rb = p.isa.block();
    let blocks = g.mg.div_ceil(rb);
    let mut panels = Scratch::<f32>::new(blocks * ck * rb);
    let panels = panels.as_mut();
    // Row by row of the weights (reads in order); rows past M/g are zero.
    for (b, panel) in panels.chunks_exact_mut(ck * rb).enumerate() {
        for r in 0..rb {
            let row = wg.get((b * rb + r) * ck..(b * rb + r + 1) * ck);
            for (q, v) in panel.iter_mut().skip(r).step_by(rb).enumerate() {
                *v = row.map_or(0.0, |row| row[q]);
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
            items[bi * groups + m / (rb * per_item)].2.push(rows);
        }
    }
    let tiles = row_tiles(p, p.isa.vmax(rb));
    let run = |(bi, b0, mut outs): (usize, usize, Vec<&mut [f32]>)| {
        let panels = &panels[b0 * ck * rb..];
        let bias = bias.map(|b| &b[b0 * rb..]);
        let rows = Band {
            p,
            cg: g.cg,
            xg,
            panels,
            bias,
            tiles: &tiles,
            oh0: bi * band,
        };
        band_blocks_on(true, &rows, &mut outs)?;
        match post {
            // Plane `b0·rb + i` of the pair's block starts at
            // `base + (b0·rb + i)·out_len`; the band at row `bi·band`.
            Some(post) => outs.iter_mut().enumerate().try_for_each(|(i, o)| {
                post(base + (b0 * rb + i) * out_len + bi * band * p.w_out, o)
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
    let tiles = row_tiles(p, p.isa.vmax(1));
    let plane = |(q, yp): (usize, &mut [f32])| {
        let (m, xc, wk) = g.depthwise_plane(x, w, q)?;
        let b = bias
            .map(|b| b.get(m..m + 1).ok_or("internal: depthwise bias outside b"))
            .transpose()?;
        let band = Band {
            p,
            cg: 1,
            xg: xc,
            panels: wk,
            bias: b,
            tiles: &tiles,
            oh0: 0,
        };
        band_blocks_on(false, &band, &mut [&mut *yp])?;
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

/// One call's work for `band_blocks`: output rows `oh0..` of a block of
/// planes, their input channels `xg`, weight panels (`[C/g][K][R]` per
/// block of `R` planes, from `panels`), biases and row tiles.
#[derive(Clone, Copy)]
struct Band<'a> {
    p: &'a Plane,
    cg: usize,
    xg: &'a [f32],
    panels: &'a [f32],
    bias: Option<&'a [f32]>,
    tiles: &'a [RowTile],
    oh0: usize,
}

/// `band_blocks` compiled for the plane's instruction set: `band`'s rows of
/// the planes in `outs` (as many as `outs[0]` holds), in blocks of
/// [`Isa::block`] planes (`dense`) or one by one (depthwise).
fn band_blocks_on(dense: bool, band: &Band, outs: &mut [&mut [f32]]) -> Result<(), String> {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a `Plane` exists only on a CPU that runs its instruction set
    // (`Plane::on` checks it).
    #[allow(unsafe_code)]
    unsafe {
        match (band.p.isa, dense) {
            (Isa::Avx512, true) => x86::band_blocks_avx512::<8>(band, outs),
            (Isa::Avx512, false) => x86::band_blocks_avx512::<1>(band, outs),
            (Isa::Avx2, true) => x86::band_blocks_avx2::<6>(band, outs),
            (Isa::Avx2, false) => x86::band_blocks_avx2::<1>(band, outs),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (dense, band, outs);
        Err("internal: direct conv on a CPU without its vector instructions".into())
    }
}

/// A micro-tile's place along an output row (the same in every row).
struct RowTile {
    /// First output column.
    ow0: usize,
    /// Vectors (1 to the plane's `vmax`).
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

/// The micro-tiles covering an output row: `vmax` vectors each (at most
/// [`VMAX`]), the last as many as the row's rest needs.
fn row_tiles(p: &Plane, vmax: usize) -> Vec<RowTile> {
    let (lanes, vmax) = (p.isa.lanes(), vmax.clamp(1, VMAX));
    let lane_mask =
        |f: &dyn Fn(usize) -> bool| (0..lanes).fold(0u16, |m, l| m | (u16::from(f(l)) << l));
    let mut tiles = Vec::new();
    let mut ow0 = 0;
    while ow0 < p.w_out {
        let v = (p.w_out - ow0).div_ceil(lanes).min(vmax);
        let width = v * lanes;
        let col0 = ow0 as isize - p.pl as isize;
        let reach = col0 + ((p.kw - 1) * p.dw + width) as isize;
        let interior = col0 >= 0 && reach <= p.w_in as isize && ow0 + width <= p.w_out;
        let masks = (0..p.kw)
            .map(|j| {
                std::array::from_fn(|vi| {
                    lane_mask(&|l| {
                        let ow = ow0 + vi * lanes + l;
                        let col = col0 + (j * p.dw + vi * lanes + l) as isize;
                        vi < v && ow < p.w_out && col >= 0 && col < p.w_in as isize
                    })
                })
            })
            .collect();
        let store = std::array::from_fn(|vi| lane_mask(&|l| ow0 + vi * lanes + l < p.w_out));
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

/// One micro-tile: `outs` output channels × `L·V` outputs of one row (`L`
/// lanes per vector).
///
/// Contract of `Tile::run`: for every channel `c < cg`, listed kernel row
/// `(i, off)` and kernel column `j < kw`, lane `l` of vector `v` reads the
/// input at `x + c·in_len + off + col0 + j·dw + L·v + l` unless the tile is
/// masked and that lane's bit of `masks[j][v]` is clear; the weight panel is
/// read at `panel + ((c·k_len) + i·kw + j)·R + r`; and for `r < outs`
/// output lane `L·v + l` is read (with `acc`) and written at `dst[r] + L·v +
/// l` unless masked off by `store[v]`; sums start at `start[r]`. All those
/// addresses must be in bounds of their buffers, and the `dst` rows
/// exclusively borrowed.
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

/// The tiles and the band loop, generic over the vector type and
/// compiled once per instruction set: everything below the two
/// `band_blocks_*` entry points is `#[inline(always)]`, so it is generated
/// inside them, with their target features (and no SSE/AVX transitions
/// between the loop and its tiles).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Band, Tile, CHANNELS, L1_ROW_BYTES, MR};

    /// An f32 vector of one instruction set. Masks hold one bit per lane.
    pub(super) trait Vector: Copy {
        /// f32 lanes.
        const LANES: usize;
        unsafe fn splat(v: f32) -> Self;
        unsafe fn zero() -> Self;
        unsafe fn load(p: *const f32) -> Self;
        /// Lanes outside `mask` are zero, and their memory is not touched.
        unsafe fn load_masked(mask: u16, p: *const f32) -> Self;
        /// `a · b + c`, rounded once.
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self;
        unsafe fn add(a: Self, b: Self) -> Self;
        unsafe fn store(self, p: *mut f32);
        /// Lanes outside `mask` are not written.
        unsafe fn store_masked(self, mask: u16, p: *mut f32);
    }

    impl Vector for __m512 {
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            _mm512_set1_ps(v)
        }
        #[inline(always)]
        unsafe fn zero() -> Self {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn load_masked(mask: u16, p: *const f32) -> Self {
            unsafe { _mm512_maskz_loadu_ps(mask, p) }
        }
        #[inline(always)]
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
            _mm512_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            _mm512_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm512_storeu_ps(p, self) }
        }
        #[inline(always)]
        unsafe fn store_masked(self, mask: u16, p: *mut f32) {
            unsafe { _mm512_mask_storeu_ps(p, mask, self) }
        }
    }

    /// AVX2's masked moves take a vector of lane masks (the sign bits).
    #[inline(always)]
    unsafe fn lanes8(mask: u16) -> __m256i {
        let bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        _mm256_cmpeq_epi32(
            _mm256_and_si256(_mm256_set1_epi32(i32::from(mask)), bits),
            bits,
        )
    }

    impl Vector for __m256 {
        const LANES: usize = 8;
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            _mm256_set1_ps(v)
        }
        #[inline(always)]
        unsafe fn zero() -> Self {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            unsafe { _mm256_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn load_masked(mask: u16, p: *const f32) -> Self {
            unsafe { _mm256_maskload_ps(p, lanes8(mask)) }
        }
        #[inline(always)]
        unsafe fn fmadd(a: Self, b: Self, c: Self) -> Self {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn add(a: Self, b: Self) -> Self {
            _mm256_add_ps(a, b)
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm256_storeu_ps(p, self) }
        }
        #[inline(always)]
        unsafe fn store_masked(self, mask: u16, p: *mut f32) {
            unsafe { _mm256_maskstore_ps(p, lanes8(mask), self) }
        }
    }

    /// [`band_blocks`] on AVX-512F.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn band_blocks_avx512<const R: usize>(
        band: &Band,
        outs: &mut [&mut [f32]],
    ) -> Result<(), String> {
        unsafe { band_blocks::<__m512, R>(band, outs) }
    }

    /// [`band_blocks`] on AVX2 with FMA.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn band_blocks_avx2<const R: usize>(
        band: &Band,
        outs: &mut [&mut [f32]],
    ) -> Result<(), String> {
        unsafe { band_blocks::<__m256, R>(band, outs) }
    }

    /// `band`'s output rows of the planes in `outs` (as many as `outs[0]`
    /// holds). For each chunk of [`CHANNELS`]
    /// input channels, each row and each tile along it, every block of `R`
    /// planes is computed in turn, so the tile's input stays in L1 across
    /// blocks; when the row's input is at most [`L1_ROW_BYTES`], each block
    /// along the whole row instead.
    ///
    /// # Safety
    /// The CPU runs `S`'s instructions, and `tiles` are `row_tiles` of `p`
    /// for `S`'s lanes.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn band_blocks<S: Vector, const R: usize>(
        band: &Band,
        outs: &mut [&mut [f32]],
    ) -> Result<(), String> {
        let Band {
            p,
            cg,
            xg,
            panels,
            bias,
            tiles,
            oh0,
        } = *band;
        // A tile has room for MR output channels.
        const { assert!(R >= 1 && R <= MR) };
        let rows_here = outs.first().map_or(0, |o| o.len() / p.w_out);
        let (in_len, k_len) = (p.h_in * p.w_in, p.kh * p.kw);
        if panels.len() < outs.len().div_ceil(R) * cg * k_len * R
            || xg.len() < cg * in_len
            || outs.iter().any(|o| o.len() != rows_here * p.w_out)
            || bias.is_some_and(|b| b.len() < outs.len())
            || p.isa.lanes() != S::LANES
            || (R > 1 && R != p.isa.block())
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
                // Tile by tile, each block in turn (the tile's input stays
                // in L1 across blocks); or, when the whole row's input fits
                // there anyway, block by block along the row, so that the
                // stores go to a block's planes in order rather than to
                // every plane at each tile.
                let (planes, nt) = (outs.len(), tiles.len());
                let blocks = planes.div_ceil(R);
                let block_major = R > 1 && cn * rows.len() * p.w_in * 4 <= L1_ROW_BYTES;
                for k in 0..blocks * nt {
                    let (t, b) = if block_major {
                        (&tiles[k % nt], k / nt)
                    } else {
                        (&tiles[k / blocks], k % blocks)
                    };
                    let block = &mut outs[b * R..planes.min(b * R + R)];
                    // The first pass over the channels starts from the
                    // bias and overwrites; later passes add to it.
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
                    // SAFETY: the CPU runs `S` (the caller's). Memory:
                    // see `Tile`'s contract, which this loop
                    // establishes: `rows` only lists kernel rows inside
                    // the input; `t` masks lanes as `row_tiles`
                    // documents; `dst` points at this tile's first
                    // output in rows of `outs`, which hold `rows_here`
                    // whole output rows; the panels and the input are
                    // at least as long as the tile reads (checked
                    // above).
                    unsafe {
                        match (t.v, t.interior) {
                            (3, true) => tile.run::<S, R, 3, false>(),
                            (3, false) => tile.run::<S, R, 3, true>(),
                            (2, true) => tile.run::<S, R, 2, false>(),
                            (2, false) => tile.run::<S, R, 2, true>(),
                            (_, true) => tile.run::<S, R, 1, false>(),
                            (_, false) => tile.run::<S, R, 1, true>(),
                        }
                    }
                }
            }
        }
        Ok(())
    }

    impl Tile<'_> {
        /// Computes the tile (see the struct's contract) on `V` vectors of
        /// `S`. Common kernel widths are compile-time constants, so the
        /// kernel-column loop unrolls (a loop of three iterations, exited
        /// every few dozen cycles, costs about a quarter of the throughput
        /// in mispredicted exits).
        #[inline(always)]
        unsafe fn run<S: Vector, const R: usize, const V: usize, const MASKED: bool>(&self) {
            // SAFETY: the caller's.
            unsafe {
                match self.kw {
                    1 => self.run_kw::<S, R, V, MASKED, 1>(),
                    3 => self.run_kw::<S, R, V, MASKED, 3>(),
                    5 => self.run_kw::<S, R, V, MASKED, 5>(),
                    _ => self.run_kw::<S, R, V, MASKED, 0>(),
                }
            }
        }

        /// [`Tile::run`] for kernels `KW` wide (any width with `KW = 0`).
        #[inline(always)]
        unsafe fn run_kw<
            S: Vector,
            const R: usize,
            const V: usize,
            const MASKED: bool,
            const KW: usize,
        >(
            &self,
        ) {
            let l = S::LANES;
            let kw = if KW > 0 { KW } else { self.kw };
            // SAFETY (all pointer arithmetic, loads and stores below): the
            // struct's contract; masked-off lanes are not accessed by masked
            // loads and stores, and their addresses are formed with
            // `wrapping_*`.
            unsafe {
                let mut s: [[S; V]; R] = std::array::from_fn(|r| [S::splat(self.start[r]); V]);
                for c in 0..self.cg {
                    let xc = self.x.add(c * self.in_len);
                    let wc = self.panel.add(c * self.k_len * R);
                    for &(i, off) in self.rows {
                        let xr = xc.add(off).wrapping_offset(self.col0);
                        let wr = wc.add(i * kw * R);
                        for j in 0..kw {
                            let base = xr.wrapping_add(j * self.dw);
                            let mut xs = [S::zero(); V];
                            for (v, xv) in xs.iter_mut().enumerate() {
                                *xv = if MASKED {
                                    S::load_masked(self.masks[j][v], base.wrapping_add(v * l))
                                } else {
                                    S::load(base.add(v * l))
                                };
                            }
                            let wj = wr.add(j * R);
                            for (r, sr) in s.iter_mut().enumerate() {
                                let b = S::splat(*wj.add(r));
                                for (sv, &xv) in sr.iter_mut().zip(&xs) {
                                    *sv = S::fmadd(xv, b, *sv);
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
                        let d = self.dst[r].add(v * l);
                        if MASKED {
                            let m = self.store[v];
                            let val = if self.acc {
                                S::add(S::load_masked(m, d), sv)
                            } else {
                                sv
                            };
                            val.store_masked(m, d);
                        } else {
                            let val = if self.acc { S::add(S::load(d), sv) } else { sv };
                            val.store(d);
                        }
                    }
                }
            }
        }
    }
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

    /// The direct path is taken where it applies, on each instruction
    /// set the CPU runs (so the `conv` tests comparing the optimized kernel
    /// with the reference exercise the widest), and only there.
    #[test]
    fn applies_to_stride_one_rows_of_a_vector() {
        for (isa, dw) in Isa::ALL
            .into_iter()
            .flat_map(|isa| [(isa, false), (isa, true)])
        {
            // 3×3 kernels, dense ones too on AVX2; shorter ones (1-D, or
            // one row or column), dense ones only on AVX-512.
            let on = isa.runs();
            let short = isa.runs() && (dw || isa == Isa::Avx512);
            assert_eq!(
                Plane::on(&geom(&[9, 40], &[3, 3], 1, 4), dw, isa).is_some(),
                on
            );
            assert_eq!(
                Plane::on(&geom(&[40], &[5], 1, 4), dw, isa).is_some(),
                short
            );
            assert_eq!(
                Plane::on(&geom(&[9, 40], &[1, 3], 1, 4), dw, isa).is_some(),
                short
            );
            let narrow = Plane::on(&geom(&[9, 12], &[3, 3], 1, 4), dw, isa);
            assert_eq!(narrow.is_some(), on && isa.lanes() <= 12);
            assert!(Plane::on(&geom(&[9, 40], &[3, 3], 2, 4), dw, isa).is_none());
            assert!(Plane::on(&geom(&[9, 40], &[1, 1], 1, 4), dw, isa).is_none());
            assert!(Plane::on(&geom(&[9, 6], &[3, 3], 1, 4), dw, isa).is_none());
            assert!(Plane::on(&geom(&[4, 9, 40], &[3, 3, 3], 1, 4), dw, isa).is_none());
        }
        let best = Isa::ALL.into_iter().find(|isa| isa.runs());
        assert_eq!(
            Plane::new(&geom(&[9, 40], &[3, 3], 1, 4), true).map(|p| p.isa),
            best
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Every instruction set's tiles against the reference convolution
        /// (`conv.rs`'s tests reach only the widest the CPU runs): channel
        /// counts around the 6- and 8-channel blocks, depthwise planes, border
        /// tiles (pads, dilation, rows ending mid-vector), kernel rows in
        /// the padding, more than one pass over the input channels, and rows
        /// narrow and wide enough for both orders of tiles and blocks.
        #[test]
        fn every_instruction_set_matches_reference(
            two_d in proptest::prelude::any::<bool>(),
            n in 1usize..=2,
            cg in 1usize..=40,
            mg in 1usize..=19,
            group in 1usize..=3,
            h in 1usize..=5,
            wi in 2usize..=170,
            kh in 1usize..=3,
            kw in 1usize..=5,
            dil in 1usize..=2,
            pads in proptest::collection::vec(0usize..=3, 4),
            with_bias in proptest::prelude::any::<bool>(),
            depthwise in proptest::prelude::any::<bool>(),
            seed in proptest::prelude::any::<u64>(),
        ) {
            use crate::ops::testutil::float_values;
            let (cg, mg) = if depthwise { (1, 1 + mg % 4) } else { (cg, mg) };
            let (in_sp, k_sp) = if two_d { (vec![h, wi], vec![kh, kw]) } else { (vec![wi], vec![kw]) };
            let s = in_sp.len();
            let (pad_b, pad_e) = if two_d { (pads[..2].to_vec(), pads[2..].to_vec()) } else { (vec![pads[1]], vec![pads[3]]) };
            let out_sp: Option<Vec<usize>> = (0..s)
                .map(|a| (in_sp[a] + pad_b[a] + pad_e[a]).checked_sub(dil * (k_sp[a] - 1) + 1).map(|d| d + 1))
                .collect();
            let Some(out_sp) = out_sp else { return Ok(()) };
            let g = Geom {
                n, c: cg * group, m: mg * group, g: group, cg, mg, in_sp, k_sp, out_sp,
                axes: Axes { stride: vec![1; s], dil: vec![dil; s], pad_b, pad_e },
            };
            let x = float_values::<f32>(g.n * g.c * g.in_len(), seed, false);
            let w = float_values::<f32>(g.m * g.cg * g.k_len(), seed ^ 1, false);
            let b = float_values::<f32>(g.m, seed ^ 2, false);
            let bias = with_bias.then_some(&b[..]);
            let out_len = g.out_len();
            let mut want = vec![0.0f32; g.n * g.m * out_len];
            for (row, v) in want.chunks_mut(out_len).enumerate() {
                v.fill(bias.map_or(0.0, |b| b[row % g.m]));
            }
            super::super::conv_reference(&g, &x, &w, &mut want).unwrap();
            for isa in Isa::ALL.into_iter().filter(|isa| isa.runs()) {
                let Some(p) = Plane::on(&g, depthwise, isa) else {
                    proptest::prop_assert!(
                        g.out_sp[s - 1] < isa.lanes()
                            || g.k_len() < 2
                            || (isa == Isa::Avx2 && !depthwise && g.k_len() < AVX2_DENSE_K_MIN)
                    );
                    continue;
                };
                let mut got = vec![f32::NAN; want.len()];
                if depthwise {
                    super::depthwise(&p, &g, &x, &w, bias, None, &mut got, false).unwrap();
                } else {
                    for (pair, chunk) in got.chunks_mut(g.mg * out_len).enumerate() {
                        conv_pair(&p, &g, &x, &w, bias, None, pair, chunk, pair % 2 == 0).unwrap();
                    }
                }
                let terms = (cg * g.k_len() + 1) as f32;
                for (k, (&o, &r)) in got.iter().zip(&want).enumerate() {
                    let tol = 4.0 * f32::EPSILON * r.abs() + f32::EPSILON * terms * 400.0;
                    proptest::prop_assert!((o - r).abs() <= tol, "{isa:?}: element {k}: {o} vs {r}");
                }
            }
        }
    }
}
