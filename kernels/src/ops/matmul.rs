//! `matmul@1`, `linear@1` and `linear_panels@1`: matrix products on f32
//! and f64; `panels@1` lays a weight out for `linear_panels@1`.
//!
//! `matmul@1` multiplies `a [..., M, K]` by `b [..., K, N]`; the batch dims
//! (all but the last two) broadcast with numpy's rule. `linear@1` computes
//! `x [..., K] · w + bias`, with `w` stored `[K, N]`, or `[N, K]` when
//! `trans_w` = 1 (PyTorch's layout); `bias [N]` is an input when `bias` = 1.
//!
//! The reference implementations are plain dot-product loops accumulating in
//! the element type. The optimized ones call the `gemm` crate (packed,
//! vectorized microkernels) through [`gemm_tiled_into`], whose helpers are
//! the crate's `unsafe` code: every view (of `a`, `b` and of the
//! destination, whole or tile) is checked against its slice before the
//! call. Products of at least [`GEMM_PAR_MIN`] multiply-adds run on rayon's
//! pool (of two threads or more), cut into tiles (one single-threaded gemm
//! call each); batches of small products are spread over the pool instead.
//! A `b` shared by every batch is folded into one tall product. `conv.rs`
//! makes its products through the same function, and sums of products
//! through [`gemm_sum_into`].
//! Summation order differs from the reference, so results agree to a
//! tolerance scaled by `sum |a_ik b_kj|`, not bitwise.

use std::sync::Arc;

use rayon::prelude::*;

use super::attrs::AttrReader;
use super::num::Float;
use super::shape::{broadcast, broadcast_strides, numel, offset_of};
use super::{bound, check_float, check_same_dtype, data, data_mut, worth_splitting, Op};
use crate::{Attrs, Bound, Impl, KernelError, Tensor, TensorMeta};

/// Products with at least this many multiply-adds are cut into tiles on
/// rayon's pool, when it has two threads or more
/// ([`worth_splitting`](super::worth_splitting)).
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

/// The widest panel `panels@1` makes.
const MAX_PANEL_WIDTH: i64 = 256;

pub(crate) fn bind_panels(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("panels@1", attrs);
    let width = r.int("width", None)?;
    let trans = r.flag("trans", false)?;
    if !(1..=MAX_PANEL_WIDTH).contains(&width) {
        return Err(r.error(format!(
            "attribute `width` must be in 1..={MAX_PANEL_WIDTH}, got {width}"
        )));
    }
    r.finish()?;
    Ok(bound(Panels {
        width: width as usize,
        trans,
    }))
}

pub(crate) fn bind_linear_panels(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("linear_panels@1", attrs);
    let n = r.int("n", None)?;
    let bias = r.flag("bias", false)?;
    let n =
        usize::try_from(n).map_err(|_| r.error(format!("attribute `n` must be >= 0, got {n}")))?;
    r.finish()?;
    Ok(bound(LinearPanels { n, bias }))
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
        self.fits(self.data.len())
    }

    /// Whether every element of the view lies inside a slice of length `len`.
    fn fits(&self, len: usize) -> bool {
        if self.rows == 0 || self.cols == 0 {
            return true;
        }
        (self.rows - 1)
            .checked_mul(self.rs)
            .zip((self.cols - 1).checked_mul(self.cs))
            .and_then(|(r, c)| r.checked_add(c))
            .is_some_and(|last| last < len)
    }
}

/// Tiles of a split product with at most [`SHORT_ROWS`] rows are this many
/// columns wide, wider ones [`WIDE_COLS`]: multiples of 16, the width of
/// gemm's f32 AVX-512 microkernel (and of its f64 and AVX2 ones). Narrow
/// tiles balance short products well; a tall product's tiles are wider
/// because each tile packs its rows of `a` again.
const NARROW_COLS: usize = 64;
const WIDE_COLS: usize = 256;
const SHORT_ROWS: usize = 128;

/// Products are also cut into row blocks (of at least this many rows) until
/// there are about [`TILES_PER_THREAD`] tiles per thread of the pool.
const MIN_TILE_ROWS: usize = 64;
const TILES_PER_THREAD: usize = 4;

/// The (rows, columns) of the tiles [`gemm_tiled_into`] cuts an `m × n`
/// product into for `threads` threads.
fn tile_shape(m: usize, n: usize, threads: usize) -> (usize, usize) {
    let cols = if m <= SHORT_ROWS {
        NARROW_COLS
    } else {
        WIDE_COLS
    };
    let row_blocks = threads
        .saturating_mul(TILES_PER_THREAD)
        .div_ceil(n.div_ceil(cols).max(1))
        .clamp(1, m.div_ceil(MIN_TILE_ROWS).max(1));
    (m.div_ceil(row_blocks).max(1), cols)
}

/// `dst = a · b`, or `dst += a · b` with `accumulate`; `dst` is the
/// row-major `a.rows × b.cols` matrix, and `T` is f32 or f64 (the only
/// [`Float`]s), which `gemm` supports. With `parallel` (and a pool of two threads or more), the product is cut
/// into tiles (see [`tile_shape`]) that run on rayon's global pool, each a
/// single-threaded gemm call.
///
/// gemm's own threading barely helps short products (a few dozen rows, as in
/// a transformer's linear layers at short sequence lengths): column tiles
/// split them along N, and each thread streams only its own columns of `b`.
/// On large products the tiles also beat it, on two threads.
pub(crate) fn gemm_tiled_into<T: Float>(
    a: MatRef<T>,
    b: MatRef<T>,
    dst: &mut [T],
    accumulate: bool,
    parallel: bool,
) -> Result<(), String> {
    gemm_sum_into(&[(a, b)], dst, accumulate, parallel)
}

/// `dst = Σ a_t · b_t`, or `dst += Σ a_t · b_t` with `accumulate`, over
/// `terms` of equal shapes: [`gemm_tiled_into`] for a sum of products (a
/// convolution makes one per kernel position). With `parallel`, each tile
/// adds every term in turn while its part of `dst` is in cache.
pub(crate) fn gemm_sum_into<T: Float>(
    terms: &[(MatRef<T>, MatRef<T>)],
    dst: &mut [T],
    accumulate: bool,
    parallel: bool,
) -> Result<(), String> {
    let Some(&(a0, b0)) = terms.first() else {
        return Err("internal: a sum of no products".to_string());
    };
    let (m, n) = (a0.rows, b0.cols);
    if Some(dst.len()) != m.checked_mul(n) || terms.iter().any(|(a, b)| a.rows != m || b.cols != n)
    {
        return Err(inconsistent(a0, b0, dst.len()));
    }
    let threads = rayon::current_num_threads();
    let (tile_rows, tile_cols) = tile_shape(m, n, threads);
    let tiles = m.div_ceil(tile_rows).saturating_mul(n.div_ceil(tile_cols));
    if !parallel || tiles < 2 || threads < 2 {
        for (t, &(a, b)) in terms.iter().enumerate() {
            gemm_view(a, b, dst, n, accumulate || t > 0, gemm::Parallelism::None)?;
        }
        return Ok(());
    }
    gemm_tiles(terms, dst, accumulate, tile_rows, tile_cols)
}

/// The error for views that do not fit their slices or each other.
fn inconsistent<T>(a: MatRef<T>, b: MatRef<T>, dst_len: usize) -> String {
    format!(
        "internal: inconsistent gemm views ({}x{} · {}x{} into {dst_len})",
        a.rows, a.cols, b.rows, b.cols
    )
}

/// The strides of `a`, `b` and a row-major `dst` with row stride `dst_rs`,
/// as gemm takes them, once every view is checked against its slice (`dst`
/// of length `dst_len`).
fn checked_strides<T>(
    a: MatRef<T>,
    b: MatRef<T>,
    dst_len: usize,
    dst_rs: usize,
) -> Result<[isize; 5], String> {
    let dst = MatRef::<()> {
        data: &[],
        rows: a.rows,
        cols: b.cols,
        rs: dst_rs,
        cs: 1,
    };
    if b.rows != a.cols || !a.in_bounds() || !b.in_bounds() || !dst.fits(dst_len) {
        return Err(inconsistent(a, b, dst_len));
    }
    let stride =
        |v: usize| isize::try_from(v).map_err(|_| format!("internal: stride {v} exceeds isize"));
    Ok([
        stride(a.rs)?,
        stride(a.cs)?,
        stride(b.rs)?,
        stride(b.cs)?,
        stride(dst_rs)?,
    ])
}

/// One gemm call writing the row-major `a.rows × b.cols` view of `dst` with
/// row stride `dst_rs`.
#[allow(unsafe_code)]
fn gemm_view<T: Float>(
    a: MatRef<T>,
    b: MatRef<T>,
    dst: &mut [T],
    dst_rs: usize,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) -> Result<(), String> {
    let strides = checked_strides(a, b, dst.len(), dst_rs)?;
    if a.rows == 0 || b.cols == 0 {
        return Ok(());
    }
    // SAFETY: `checked_strides` proved every element of the `dst` view lies
    // inside `dst`, which is borrowed mutably for the whole call, so it is
    // valid for reads and writes and aliased by nothing else (in particular
    // not by `a` or `b`, which are shared borrows).
    unsafe {
        gemm_raw(a, b, dst.as_mut_ptr(), strides, accumulate, parallelism);
    }
    Ok(())
}

/// A pointer into the destination of [`gemm_tiles_of`], shared by its tasks.
#[derive(Clone, Copy)]
struct TilePtr<T>(*mut T);

impl<T> TilePtr<T> {
    /// The pointer. (A method, so that closures capture the whole `TilePtr`,
    /// which is `Send`, and not just its field, which is not.)
    fn ptr(self) -> *mut T {
        self.0
    }
}

// SAFETY: a `TilePtr` only crosses threads inside `gemm_tiles_of`, whose tasks
// write pairwise disjoint elements through it while the slice it points into
// stays mutably borrowed; `T` (f32 or f64) is `Send`.
#[allow(unsafe_code)]
unsafe impl<T: Send> Send for TilePtr<T> {}
#[allow(unsafe_code)]
unsafe impl<T: Send> Sync for TilePtr<T> {}

/// The sum of `terms`' products into the row-major `m × n` matrix at the
/// start of `dst`, as tiles of `tile_rows × tile_cols` on rayon's global
/// pool, one single-threaded gemm call per tile and term.
fn gemm_tiles<T: Float>(
    terms: &[(MatRef<T>, MatRef<T>)],
    dst: &mut [T],
    accumulate: bool,
    tile_rows: usize,
    tile_cols: usize,
) -> Result<(), String> {
    let n = terms.first().map_or(0, |(_, b)| b.cols);
    let mut a = Vec::with_capacity(terms.len());
    for &(a_t, b_t) in terms {
        checked_strides(a_t, b_t, dst.len(), n)?;
        a.push(a_t);
    }
    let columns = |t: usize, c0: usize, cols: usize| {
        let b = terms.get(t)?.1;
        tail(b.data, c0, b.cs).map(|data| MatRef { data, cols, ..b })
    };
    gemm_tiles_of(&a, columns, n, dst, accumulate, tile_rows, tile_cols)
}

/// [`gemm_tiles`] for terms `a[t] · b_t` whose `b_t` of `n` columns
/// `columns(t, c0, cols)` views tile by tile: columns `c0..c0 + cols` of
/// `b_t`, for `c0` a multiple of `tile_cols` and `cols <= tile_cols`. Every
/// `a[t]` has the same number of rows.
#[allow(unsafe_code)]
fn gemm_tiles_of<'b, T: Float>(
    a: &[MatRef<T>],
    columns: impl Fn(usize, usize, usize) -> Option<MatRef<'b, T>> + Sync,
    n: usize,
    dst: &mut [T],
    accumulate: bool,
    tile_rows: usize,
    tile_cols: usize,
) -> Result<(), String> {
    let (m, len) = (a.first().map_or(0, |a| a.rows), dst.len());
    let bad = || format!("internal: inconsistent gemm tiles ({m}x{n} into {len})");
    if m.checked_mul(n).is_none_or(|mn| mn > len) || a.iter().any(|a| a.rows != m || !a.in_bounds())
    {
        return Err(bad());
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if tile_rows == 0 || tile_cols == 0 {
        return Err(bad());
    }
    let col_tiles = n.div_ceil(tile_cols);
    let tiles = m.div_ceil(tile_rows) * col_tiles;
    let base = TilePtr(dst.as_mut_ptr());
    (0..tiles).into_par_iter().try_for_each(|t| {
        let (r0, c0) = (t / col_tiles * tile_rows, t % col_tiles * tile_cols);
        let (rows, cols) = (tile_rows.min(m - r0), tile_cols.min(n - c0));
        for (term, a) in a.iter().enumerate() {
            // Sub-views of `a` (rows r0..) and `b` (columns c0..); slicing
            // and `checked_strides` re-check them against the parent slices.
            let a_t = MatRef {
                data: tail(a.data, r0, a.rs).ok_or_else(bad)?,
                rows,
                ..*a
            };
            let b_t = columns(term, c0, cols).ok_or_else(bad)?;
            if b_t.cols != cols {
                return Err(bad());
            }
            let strides = checked_strides(a_t, b_t, len - (r0 * n + c0), n)?;
            // SAFETY: the tile's view of `dst` is rows r0..r0+rows and
            // columns c0..c0+cols of the row-major m×n matrix, that is the
            // offsets (r0+i)*n + c0+j for i < rows, j < cols:
            // - they lie inside `dst`: `checked_strides` proved the largest,
            //   relative to r0*n + c0, is below len - (r0*n + c0), the
            //   number of elements of `dst` from the tile's origin on;
            // - tiles cover disjoint row ranges or disjoint column ranges
            //   (each t gives a distinct (row block, column block), and `b_t`
            //   has exactly the tile's `cols` columns), so no two tasks touch
            //   the same element (a task's terms run one after another);
            // - `dst` stays mutably borrowed until every task has returned
            //   (`try_for_each` joins them), so nothing else reads or writes
            //   it meanwhile, and `a`, `b` are shared borrows that cannot
            //   alias it;
            // - r0*n + c0 < m*n <= len (checked above), so `add` stays
            //   inside the allocation.
            unsafe {
                gemm_raw(
                    a_t,
                    b_t,
                    base.ptr().add(r0 * n + c0),
                    strides,
                    accumulate || term > 0,
                    gemm::Parallelism::None,
                );
            }
        }
        Ok::<(), String>(())
    })
}

/// `data` from element `at * stride` on, if that lies inside it.
fn tail<T>(data: &[T], at: usize, stride: usize) -> Option<&[T]> {
    at.checked_mul(stride).and_then(|o| data.get(o..))
}

/// Calls `gemm` for `dst (+)= a · b`, where `dst` points to element (0, 0)
/// of a row-major view with row stride `strides[4]`.
///
/// # Safety
///
/// `strides` must come from [`checked_strides`] for these `a` and `b` and a
/// destination whose every element `dst + i*strides[4] + j` (i < a.rows,
/// j < b.cols) is valid for reads and writes, and neither read nor written
/// by anything else (including `a` and `b`) until the call returns.
#[allow(unsafe_code)]
unsafe fn gemm_raw<T: Float>(
    a: MatRef<T>,
    b: MatRef<T>,
    dst: *mut T,
    strides: [isize; 5],
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    let [a_rs, a_cs, b_rs, b_cs, d_rs] = strides;
    let alpha = if accumulate { T::ONE } else { T::ZERO };
    // SAFETY: `gemm` reads `lhs[i*lhs_rs + p*lhs_cs]` for i < m, p < k,
    // `rhs[p*rhs_rs + j*rhs_cs]` for p < k, j < n, and writes (and, when
    // `read_dst`, reads) `dst[i*dst_rs + j*dst_cs]` for i < m, j < n.
    // - The lhs and rhs pointers come from slices borrowed for the whole
    //   call, and `checked_strides` proved the largest lhs and rhs offsets
    //   lie inside them (strides are in elements, non-negative, and fit in
    //   isize).
    // - The caller guarantees every dst element is valid and exclusive.
    // - T is f32 or f64, for which gemm has kernels (it panics otherwise).
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            dst,
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
}

/// The reference product: `dst[i, j] (+)= sum_p a[i, p] * b[p, j]`, summing
/// in order of p, into the row-major view of `dst` with row stride `dst_rs`.
fn dot_loops<T: Float>(
    a: MatRef<T>,
    b: MatRef<T>,
    dst: &mut [T],
    dst_rs: usize,
    accumulate: bool,
) -> Result<(), String> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let view = MatRef::<()> {
        data: &[],
        rows: m,
        cols: n,
        rs: dst_rs,
        cs: 1,
    };
    let fits = m == 0 || n == 0 || view.fits(dst.len());
    if b.rows != k || !fits || !a.in_bounds() || !b.in_bounds() {
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
            let slot = &mut dst[i * dst_rs + j];
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
                    n,
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
                let parallel = worth_splitting(work.saturating_mul(batches), GEMM_PAR_MIN);
                return gemm_tiled_into(a, b, y, false, parallel);
            }
            if work < GEMM_PAR_MIN && worth_splitting(work.saturating_mul(batches), GEMM_PAR_MIN) {
                return y.par_chunks_mut(mn).enumerate().try_for_each(|(bi, dst)| {
                    gemm_tiled_into(
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
                gemm_tiled_into(a, b, dst, false, worth_splitting(work, GEMM_PAR_MIN))?;
            }
            Ok(())
        }
    }
}

/// The checks `linear@1` and `linear_panels@1` share: float inputs of one
/// dtype, `x [..., K]`, and `bias [N]` if there is one, where
/// `n_of(K, w)` checks the weight and gives N. Returns `[..., N]`.
fn linear_meta<O: Op>(
    op: &O,
    inputs: &[&TensorMeta],
    n_of: impl FnOnce(usize, &TensorMeta) -> Result<usize, String>,
) -> Result<TensorMeta, String> {
    check_float(op, inputs, 0)?;
    check_same_dtype(op, inputs)?;
    let (Some(x), Some(w)) = (inputs.first(), inputs.get(1)) else {
        return Err("expected inputs x and w".to_string());
    };
    let Some((&k, batch)) = x.shape.split_last() else {
        return Err(format!("{}: expected rank >= 1, got a scalar", op.input(0)));
    };
    let n = n_of(k, w)?;
    if let Some(bias) = inputs.get(2) {
        if bias.shape != [n] {
            return Err(format!(
                "{}: expected shape [{n}], got {:?}",
                op.input(2),
                bias.shape
            ));
        }
    }
    let mut shape = batch.to_vec();
    shape.push(n);
    Ok(TensorMeta::new(x.dtype, shape))
}

/// The operands of a `linear@1` or `linear_panels@1` launch of `n` output
/// columns: `x` as a row-major `M × k` matrix, the weight's data, and the
/// output `[M, n]` holding the bias in every row when there is one (the
/// product then accumulates onto it), else to be overwritten.
struct LinearOperands<'a, T> {
    x: MatRef<'a, T>,
    w: &'a [T],
    y: &'a mut [T],
    accumulate: bool,
}

fn linear_operands<'a, T: Float>(
    inputs: &[&'a Tensor],
    out: &'a mut Tensor,
    k: usize,
    n: usize,
) -> Result<LinearOperands<'a, T>, String> {
    let (Some(x), Some(w)) = (inputs.first(), inputs.get(1)) else {
        return Err("expected inputs x and w".to_string());
    };
    let xv = data::<T>(x, "input 0 (x)")?;
    let w = data::<T>(w, "input 1 (w)")?;
    let bias = inputs
        .get(2)
        .map(|b| data::<T>(b, "input 2 (bias)"))
        .transpose()?;
    let y = data_mut::<T>(out)?;
    let m = y.len().checked_div(n).unwrap_or(0);
    if let Some(bias) = bias {
        for row in y.chunks_mut(n.max(1)) {
            row.copy_from_slice(
                bias.get(..row.len())
                    .ok_or("internal: bias shorter than a row")?,
            );
        }
    }
    Ok(LinearOperands {
        x: MatRef {
            data: xv,
            rows: m,
            cols: k,
            rs: k,
            cs: 1,
        },
        w,
        y,
        accumulate: bias.is_some(),
    })
}

struct Linear {
    trans_w: bool,
    bias: bool,
}

/// (K, N) of a weight matrix stored `[K, N]`, or `[N, K]` when `trans`.
fn weight_dims(w: &[usize], trans: bool) -> Option<(usize, usize)> {
    match *w {
        [r, c] if trans => Some((c, r)),
        [r, c] => Some((r, c)),
        _ => None,
    }
}

impl Linear {
    /// (K, N) of the weight.
    fn weight_dims(&self, w: &[usize]) -> Option<(usize, usize)> {
        weight_dims(w, self.trans_w)
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
        linear_meta(self, inputs, |k, w| {
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
            Ok(n)
        })
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
        let (k, n) = inputs
            .get(1)
            .and_then(|w| self.weight_dims(w.shape()))
            .ok_or("internal: weight is not a matrix")?;
        let LinearOperands {
            x: a,
            w: wv,
            y,
            accumulate,
        } = linear_operands::<T>(inputs, out, k, n)?;
        if y.is_empty() {
            return Ok(());
        }
        let m = a.rows;
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
        match imp {
            Impl::Reference => dot_loops(a, b, y, n, accumulate),
            Impl::Optimized => {
                let parallel = worth_splitting(m.saturating_mul(k).saturating_mul(n), GEMM_PAR_MIN);
                gemm_tiled_into(a, b, y, accumulate, parallel)
            }
        }
    }
}

/// `panels@1`: the weight `w [K, N]` (or `[N, K]` with `trans`) as column
/// panels `[ceil(N / width), K, width]`: panel `j` holds columns
/// `j*width ..` as a row-major `K × width` block, the last one padded with
/// zeros. A pure layout change, done once per instance on weights (see the
/// compiler's `passes::layout`).
struct Panels {
    width: usize,
    trans: bool,
}

impl Panels {
    /// (K, N) of the weight.
    fn dims(&self, w: &[usize]) -> Option<(usize, usize)> {
        weight_dims(w, self.trans)
    }
}

impl Op for Panels {
    fn label(&self) -> &str {
        if self.trans {
            "panels@1 (trans)"
        } else {
            "panels@1"
        }
    }

    fn input_names(&self) -> &[&'static str] {
        &["w"]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        check_float(self, inputs, 0)?;
        let w = inputs.first().ok_or("expected input w")?;
        let (k, n) = self.dims(&w.shape).ok_or_else(|| {
            format!(
                "{}: expected rank 2, got shape {:?}",
                self.input(0),
                w.shape
            )
        })?;
        Ok(TensorMeta::new(
            w.dtype,
            [n.div_ceil(self.width), k, self.width],
        ))
    }

    fn compute(&self, _imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        super::with_float!(out.dtype(), T => self.typed::<T>(inputs, out))
    }
}

impl Panels {
    fn typed<T: Float>(&self, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        let [w] = super::operands(inputs)?;
        let (k, n) = self
            .dims(w.shape())
            .ok_or("internal: weight is not a matrix")?;
        let wv = data::<T>(w, "input 0 (w)")?;
        let y = data_mut::<T>(out)?;
        let width = self.width;
        let oob = || "internal: panel index outside the weight".to_string();
        for (i, slot) in y.iter_mut().enumerate() {
            let (j, p, c) = (i / (k * width), i / width % k, i % width);
            let col = j * width + c;
            *slot = if col >= n {
                T::ZERO
            } else if self.trans {
                *wv.get(col * k + p).ok_or_else(oob)?
            } else {
                *wv.get(p * n + col).ok_or_else(oob)?
            };
        }
        Ok(())
    }
}

/// `linear_panels@1`: `linear@1` on a weight laid out by `panels@1`:
/// `x [..., K] · w + bias`, with `w [ceil(n / W), K, W]` and `bias [n]`.
///
/// Each panel is a contiguous `K × W` block, so a short product (a few rows
/// of `x`) streams the weight from memory in order instead of striding
/// across its rows: that is the whole point, for products whose weight does
/// not stay in cache between calls.
struct LinearPanels {
    n: usize,
    bias: bool,
}

impl Op for LinearPanels {
    fn label(&self) -> &str {
        if self.bias {
            "linear_panels@1 (bias)"
        } else {
            "linear_panels@1"
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
        let n = self.n;
        linear_meta(self, inputs, |k, w| match *w.shape {
            [p, wk, width] if wk == k && width > 0 && p == n.div_ceil(width) => Ok(n),
            _ => Err(format!(
                "{}: expected panels [ceil({n} / W), {k}, W] (K = {k}, the last dim of {}), \
                 got shape {:?}",
                self.input(1),
                self.input(0),
                w.shape
            )),
        })
    }

    fn compute(&self, imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        super::with_float!(out.dtype(), T => self.typed::<T>(imp, inputs, out))
    }
}

impl LinearPanels {
    fn typed<T: Float>(
        &self,
        imp: Impl,
        inputs: &[&Tensor],
        out: &mut Tensor,
    ) -> Result<(), String> {
        let &[_, k, width] = inputs.get(1).map(|w| w.shape()).unwrap_or_default() else {
            return Err("internal: weight is not in panels".to_string());
        };
        if width == 0 {
            return Err("internal: panels of width 0".to_string());
        }
        let n = self.n;
        let LinearOperands {
            x: a,
            w: wv,
            y,
            accumulate,
        } = linear_operands::<T>(inputs, out, k, n)?;
        if y.is_empty() {
            return Ok(());
        }
        let m = a.rows;
        // Columns c0..c0 + cols (inside one panel) as a K × cols view.
        let columns = |c0: usize, cols: usize| {
            let start = (c0 / width).checked_mul(k.checked_mul(width)?)?;
            let data = wv.get(start.checked_add(c0 % width)?..)?;
            Some(MatRef {
                data,
                rows: k,
                cols,
                rs: width,
                cs: 1,
            })
        };
        let missing = || "internal: panel outside the weight".to_string();
        if imp == Impl::Optimized
            && worth_splitting(m.saturating_mul(k).saturating_mul(n), GEMM_PAR_MIN)
        {
            let tile_rows = tile_shape(m, n, rayon::current_num_threads()).0;
            return gemm_tiles_of(
                &[a],
                |_, c0, cols| columns(c0, cols),
                n,
                y,
                accumulate,
                tile_rows,
                width,
            );
        }
        for c0 in (0..n).step_by(width) {
            let b = columns(c0, width.min(n - c0)).ok_or_else(missing)?;
            let dst = y.get_mut(c0..).ok_or_else(missing)?;
            match imp {
                Impl::Reference => dot_loops(a, b, dst, n, accumulate)?,
                Impl::Optimized => {
                    gemm_view(a, b, dst, n, accumulate, gemm::Parallelism::None)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::*;
    use super::{gemm_tiled_into, gemm_tiles, tile_shape, MatRef, GEMM_PAR_MIN};
    use crate::{AttrValue, DType, Impl, KernelError, Tensor, TensorMeta};

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
    fn panels_lay_out_weight_columns() {
        let (k, n, width) = (3, 7, 3);
        let w = float_tensor::<f32>(&[k, n], 21, false);
        let ws = f64s(&w);
        let wt_vals: Vec<f32> = (0..k * n).map(|t| ws[(t % k) * n + t / k] as f32).collect();
        let wt = Tensor::from_vec(&[n, k], wt_vals).unwrap();
        for (trans, weight) in [(0, &w), (1, &wt)] {
            let at = attrs(&[("width", i(width as i64)), ("trans", i(trans))]);
            let p = launch("panels@1", &at, &[weight], Impl::Reference).unwrap();
            assert_eq!(p.shape(), &[3, k, width]);
            for (idx, got) in f64s(&p).iter().enumerate() {
                let (j, row, c) = (idx / (k * width), idx / width % k, idx % width);
                let col = j * width + c;
                let want = if col < n { ws[row * n + col] } else { 0.0 };
                assert_eq!(*got, want, "trans={trans} panel {j} [{row}, {c}]");
            }
        }
        let bad = |a: &[(&str, AttrValue)]| {
            crate::Registry::standard()
                .bind("panels@1", &attrs(a))
                .is_err()
        };
        assert!(bad(&[("width", i(0))]));
        assert!(bad(&[("width", i(257))]));
        assert!(bad(&[]));
    }

    #[test]
    fn linear_panels_split_across_threads() {
        // Large enough for the tiled, parallel path (m·k·n >= GEMM_PAR_MIN).
        let (m, k, n) = (32, 384, 400);
        assert!(m * k * n >= GEMM_PAR_MIN);
        let x = float_tensor::<f32>(&[m, k], 31, false);
        let w = float_tensor::<f32>(&[k, n], 32, false);
        let bias = float_tensor::<f32>(&[n], 33, false);
        let p = launch(
            "panels@1",
            &attrs(&[("width", i(16))]),
            &[&w],
            Impl::Optimized,
        )
        .unwrap();
        let at = attrs(&[("n", i(n as i64)), ("bias", i(1))]);
        let (xs, ws, bs) = (f64s(&x), f64s(&w), f64s(&bias));
        let (want, tol) = linear_direct(&xs, &ws, Some(&bs), false, (m, k, n));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for imp in IMPLS {
            let y = pool
                .install(|| launch("linear_panels@1", &at, &[&x, &p, &bias], imp))
                .unwrap();
            assert_within(&y, &want, &tol);
        }
        // A weight that is not in panels of `n` columns is refused.
        let wrong = attrs(&[("n", i(n as i64 + 16)), ("bias", i(0))]);
        assert!(launch("linear_panels@1", &wrong, &[&x, &p], Impl::Optimized).is_err());
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

    /// `x [M, K] · w (+ bias)` in f64, with `w` stored `[K, N]` or, with
    /// `trans_w`, `[N, K]`; and for each element, the tolerance of an f32
    /// result: a few ulps of the sum of |terms|.
    fn linear_direct(
        x: &[f64],
        w: &[f64],
        bias: Option<&[f64]>,
        trans_w: bool,
        (m, k, n): (usize, usize, usize),
    ) -> (Vec<f64>, Vec<f64>) {
        let mut want = vec![0.0; m * n];
        let mut tol = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let w_at = |p: usize| if trans_w { w[j * k + p] } else { w[p * n + j] };
                let b = bias.map_or(0.0, |b| b[j]);
                want[i * n + j] = (0..k).map(|p| x[i * k + p] * w_at(p)).sum::<f64>() + b;
                let s = (0..k).map(|p| (x[i * k + p] * w_at(p)).abs()).sum::<f64>() + b.abs();
                tol[i * n + j] = f32::EPSILON as f64 * (k as f64 + 2.0) * s + 1e-30;
            }
        }
        (want, tol)
    }

    /// Asserts every element of `y` is within `tol` of `want`.
    fn assert_within(y: &Tensor, want: &[f64], tol: &[f64]) {
        let got = f64s(y);
        assert_eq!(got.len(), want.len());
        for (idx, g) in got.iter().enumerate() {
            let err = (g - want[idx]).abs();
            assert!(
                err <= tol[idx],
                "[{idx}]: {g} vs {} (tolerance {})",
                want[idx],
                tol[idx]
            );
        }
    }

    #[test]
    fn tiled_products_against_direct_computation() {
        // Products above GEMM_PAR_MIN, so the optimized path cuts them into
        // tiles when the pool has two threads: short and wide with N not a
        // multiple of NARROW_COLS (one row block, ten column blocks, the
        // last partial), and tall (row blocks, the last partial, by one
        // partial column block).
        let shapes = [(20, 400, 600), (610, 96, 100)];
        assert_eq!(tile_shape(20, 600, 2), (20, 64));
        assert_eq!(tile_shape(610, 100, 2), (77, 256));
        for (m, k, n) in shapes {
            assert!(m * k * n >= GEMM_PAR_MIN);
            for trans_w in [false, true] {
                let x = float_tensor::<f32>(&[m, k], 11, false);
                let w_shape = if trans_w { [n, k] } else { [k, n] };
                let w = float_tensor::<f32>(&w_shape, 12, false);
                let bias = float_tensor::<f32>(&[n], 13, false);
                let at = attrs(&[("trans_w", i(trans_w.into())), ("bias", i(1))]);
                let y = launch("linear@1", &at, &[&x, &w, &bias], Impl::Optimized).unwrap();
                assert_eq!(y.shape(), &[m, n]);
                let (bs, dims) = (f64s(&bias), (m, k, n));
                let (want, tol) = linear_direct(&f64s(&x), &f64s(&w), Some(&bs), trans_w, dims);
                assert_within(&y, &want, &tol);
            }
            // matmul with a `b` shared by two batches: one stacked product.
            let a = float_tensor::<f32>(&[2, m, k], 14, false);
            let b = float_tensor::<f32>(&[k, n], 15, false);
            let y = matmul(&a, &b, Impl::Optimized).unwrap();
            let (want, tol) = linear_direct(&f64s(&a), &f64s(&b), None, false, (2 * m, k, n));
            assert_within(&y, &want, &tol);
        }
    }

    #[test]
    fn gemm_tiles_cover_every_element_once() {
        // Tiles smaller than the defaults, in f64 so that every product of
        // the small integers below is exact: each element is written by
        // exactly one tile (an element missed keeps its marker, one written
        // twice while accumulating would double).
        let (m, k, n) = (23, 7, 45);
        let av: Vec<f64> = (0..m * k).map(|t| (t % 13) as f64 - 6.0).collect();
        let bv: Vec<f64> = (0..k * n).map(|t| (t % 11) as f64 - 5.0).collect();
        let a = MatRef {
            data: &av,
            rows: m,
            cols: k,
            rs: k,
            cs: 1,
        };
        let b = MatRef {
            data: &bv,
            rows: k,
            cols: n,
            rs: n,
            cs: 1,
        };
        for (tile_rows, tile_cols) in [(5, 16), (23, 16), (1, 45), (100, 100)] {
            for accumulate in [false, true] {
                let mut dst = vec![1000.0; m * n];
                gemm_tiles(&[(a, b)], &mut dst, accumulate, tile_rows, tile_cols).unwrap();
                for (idx, got) in dst.iter().enumerate() {
                    let (r, c) = (idx / n, idx % n);
                    let dot: f64 = (0..k).map(|p| av[r * k + p] * bv[p * n + c]).sum();
                    let want = if accumulate { 1000.0 + dot } else { dot };
                    assert_eq!(*got, want, "tiles {tile_rows}x{tile_cols}, [{r}, {c}]");
                }
            }
        }
        // Views that do not fit their slices are refused, not read.
        let short = MatRef {
            data: &bv[..k * n - 1],
            ..b
        };
        let mut dst = vec![0.0; m * n];
        assert!(gemm_tiles(&[(a, short)], &mut dst, false, 5, 16).is_err());
        assert!(gemm_tiles(&[(a, b)], &mut dst[..m * n - 1], false, 5, 16).is_err());
        assert!(gemm_tiled_into(a, b, &mut dst[..m * n - 1], false, true).is_err());
    }

    /// Seeded `x [batch.., rows, k]`, `w` (`[k, n]`, or `[n, k]` with
    /// `trans_w`) and `bias [n]` for the linear proptests; 64 rows for a
    /// long K, else 3.
    fn linear_operands_for(
        batch: &[usize],
        k: usize,
        n: usize,
        trans_w: bool,
        seed: u64,
    ) -> (Tensor, Tensor, Tensor) {
        let mut x_shape = batch.to_vec();
        x_shape.extend([if k > 100 { 64 } else { 3 }, k]);
        let x = float_tensor::<f32>(&x_shape, seed, false);
        let w = float_tensor::<f32>(&if trans_w { [n, k] } else { [k, n] }, seed ^ 1, false);
        let bias = float_tensor::<f32>(&[n], seed ^ 2, false);
        (x, w, bias)
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
        fn linear_panels_match_linear(
            batch in prop::collection::vec(0usize..=4, 0..=2),
            dims in prop_oneof![6 => (0usize..=9, 0usize..=40), 1 => (200usize..=300, 150usize..=200)],
            width in 1i64..=20,
            trans_w in 0i64..=1,
            with_bias in 0i64..=1,
            seed in any::<u64>(),
        ) {
            let (k, n) = dims;
            let (x, w, bias) = linear_operands_for(&batch, k, n, trans_w == 1, seed);
            let pa = attrs(&[("width", i(width)), ("trans", i(trans_w))]);
            let packed = launch("panels@1", &pa, &[&w], Impl::Optimized).unwrap();
            let la = attrs(&[("trans_w", i(trans_w)), ("bias", i(with_bias))]);
            let lpa = attrs(&[("n", i(n as i64)), ("bias", i(with_bias))]);
            let (plain, panels): (Vec<&Tensor>, Vec<&Tensor>) = if with_bias == 1 {
                (vec![&x, &w, &bias], vec![&x, &packed, &bias])
            } else {
                (vec![&x, &w], vec![&x, &packed])
            };
            let r = launch("linear@1", &la, &plain, Impl::Reference).unwrap();
            // The same sums in the same order: the reference is bitwise equal.
            let rp = launch("linear_panels@1", &lpa, &panels, Impl::Reference).unwrap();
            prop_assert_eq!(r.bytes(), rp.bytes());
            let o = launch("linear_panels@1", &lpa, &panels, Impl::Optimized).unwrap();
            let tol = f32::EPSILON as f64 * (k as f64 + 2.0) * 100.0 * k as f64 + 1e-6;
            assert_close(&r, &o, 0.0, tol);
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
            let (x, w, bias) = linear_operands_for(&batch, k, n, trans_w == 1, seed);
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
