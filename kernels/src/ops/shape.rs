//! Shape arithmetic shared by the families: numpy broadcasting, strides,
//! axis normalization, and the index walks used to read broadcast or
//! strided operands.
//!
//! Functions that take shapes from metas never panic and use checked
//! arithmetic; functions that walk data take shapes of tensors that exist
//! (so every in-bounds offset fits in `usize`) and still index with checked
//! access, returning an error rather than reading out of bounds.

/// Broadcasts shapes with numpy's rule: align on the right; each dim is
/// equal across inputs or 1. `names` names the shapes in the error.
pub(crate) fn broadcast(shapes: &[&[usize]], names: &[String]) -> Result<Vec<usize>, String> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    // Which input fixed each output dim, for the message.
    let mut from = vec![usize::MAX; rank];
    for (i, s) in shapes.iter().enumerate() {
        let pad = rank - s.len();
        for (j, &d) in s.iter().enumerate() {
            let o = &mut out[pad + j];
            if d == 1 || d == *o {
                continue;
            }
            if *o == 1 {
                *o = d;
                from[pad + j] = i;
                continue;
            }
            let other = from[pad + j];
            let name = |k: usize| names.get(k).map(String::as_str).unwrap_or("?");
            return Err(format!(
                "shapes do not broadcast: {} has shape {:?}, {} has shape {:?} (dim {} from the right: {} vs {})",
                name(other),
                shapes.get(other).copied().unwrap_or(&[]),
                name(i),
                s,
                rank - (pad + j),
                *o,
                d
            ));
        }
    }
    Ok(out)
}

/// Row-major strides of `shape` in elements. Saturates instead of
/// overflowing; exact whenever the shape has at least one element.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1].saturating_mul(shape[i + 1]);
    }
    s
}

/// Strides of `shape` read as broadcast to rank `rank`: right-aligned, 0 on
/// the padded dims and on every dim of size 1.
pub(crate) fn broadcast_strides(shape: &[usize], rank: usize) -> Vec<usize> {
    let own = strides(shape);
    let pad = rank.saturating_sub(shape.len());
    let mut s = vec![0usize; rank];
    for (j, (&d, &st)) in shape.iter().zip(&own).enumerate() {
        if d != 1 {
            s[pad + j] = st;
        }
    }
    s
}

/// Offset of the element with row-major flat index `flat` of `shape`, in an
/// operand with `strides`.
pub(crate) fn offset_of(mut flat: usize, shape: &[usize], strides: &[usize]) -> usize {
    let mut off = 0usize;
    for (&d, &s) in shape.iter().zip(strides).rev() {
        if d == 0 {
            return 0;
        }
        off = off.wrapping_add((flat % d).wrapping_mul(s));
        flat /= d;
    }
    off
}

/// Resolves an axis that may count from the end (`-1` is the last) against
/// `rank`.
pub(crate) fn normalize_axis(axis: i64, rank: usize, what: &str) -> Result<usize, String> {
    let r = i64::try_from(rank).unwrap_or(i64::MAX);
    let a = if axis < 0 {
        axis.checked_add(r)
    } else {
        Some(axis)
    };
    match a {
        Some(a) if (0..r).contains(&a) => Ok(a as usize),
        _ => Err(format!(
            "{what} {axis} is out of range for rank {rank} (valid: -{rank}..={})",
            r - 1
        )),
    }
}

/// Product of dims, or an error naming `what`.
pub(crate) fn numel(shape: &[usize], what: &str) -> Result<usize, String> {
    crate::checked_numel(shape)
        .ok_or_else(|| format!("{what} {shape:?} has more elements than this host can count"))
}

/// A broadcast elementwise launch laid out as rows: the output is `rows`
/// contiguous rows of `inner` elements, and row `r` of input `i` starts at
/// `row_offset(r, i)` and advances by `inner_stride[i]` (0 or 1) per element.
/// Size-1 output dims are dropped and adjacent dims that are contiguous in
/// every input are merged, so the rows are as long as the layout allows.
pub(crate) struct Rows {
    pub(crate) inner: usize,
    pub(crate) inner_stride: Vec<usize>,
    outer_shape: Vec<usize>,
    outer_strides: Vec<Vec<usize>>,
}

impl Rows {
    /// Lays out inputs of `shapes` broadcast to `out` (which must be their
    /// broadcast shape and have at least one element).
    pub(crate) fn new(shapes: &[&[usize]], out: &[usize]) -> Rows {
        let rank = out.len();
        let all: Vec<Vec<usize>> = shapes.iter().map(|s| broadcast_strides(s, rank)).collect();
        let mut dims: Vec<usize> = Vec::new();
        let mut st: Vec<Vec<usize>> = vec![Vec::new(); shapes.len()];
        for (d, &n) in out.iter().enumerate() {
            if n == 1 {
                continue;
            }
            let mergeable = !dims.is_empty()
                && all
                    .iter()
                    .zip(&st)
                    .all(|(s, kept)| kept.last().copied() == Some(s[d].saturating_mul(n)));
            if mergeable {
                if let Some(last) = dims.last_mut() {
                    *last = last.saturating_mul(n);
                }
                for (kept, s) in st.iter_mut().zip(&all) {
                    if let Some(l) = kept.last_mut() {
                        *l = s[d];
                    }
                }
            } else {
                dims.push(n);
                for (kept, s) in st.iter_mut().zip(&all) {
                    kept.push(s[d]);
                }
            }
        }
        let inner = dims.pop().unwrap_or(1);
        let inner_stride = st.iter_mut().map(|s| s.pop().unwrap_or(0)).collect();
        Rows {
            inner,
            inner_stride,
            outer_shape: dims,
            outer_strides: st,
        }
    }

    /// Start of row `row` in input `input`.
    pub(crate) fn row_offset(&self, row: usize, input: usize) -> usize {
        match self.outer_strides.get(input) {
            Some(s) => offset_of(row, &self.outer_shape, s),
            None => 0,
        }
    }
}

/// Copies into `dst` (row-major over `shape`) the elements of `src` at
/// `base + sum(index[d] * strides[d])`. Used by transpose and slice; when
/// the innermost stride is 1, whole innermost runs are copied as slices.
/// Any offset outside `src` is an error.
pub(crate) fn strided_copy<T: Copy>(
    src: &[T],
    base: usize,
    shape: &[usize],
    strides: &[isize],
    dst: &mut [T],
) -> Result<(), String> {
    if dst.is_empty() {
        return Ok(());
    }
    if shape.len() != strides.len() {
        return Err(format!(
            "internal: {} dims but {} strides",
            shape.len(),
            strides.len()
        ));
    }
    // A non-empty `dst` has no zero dim, so `run` >= 1.
    let (run, outer) = match (shape.split_last(), strides.last()) {
        (Some((&n, outer)), Some(&1)) => (n, outer),
        _ => (1, shape),
    };
    let mut index = vec![0usize; outer.len()];
    let mut off =
        isize::try_from(base).map_err(|_| format!("internal: base offset {base} exceeds isize"))?;
    for chunk in dst.chunks_mut(run) {
        let from = usize::try_from(off)
            .ok()
            .and_then(|o| src.get(o..o.checked_add(run)?));
        let from = from.ok_or_else(|| {
            format!(
                "internal: strided read of {run} at offset {off} outside {} elements",
                src.len()
            )
        })?;
        chunk.copy_from_slice(from);
        // Advance the odometer over the outer dims and the offset together.
        for d in (0..outer.len()).rev() {
            index[d] += 1;
            off = off.wrapping_add(strides[d]);
            if index[d] < outer[d] {
                break;
            }
            off = off.wrapping_sub(strides[d].wrapping_mul(outer[d] as isize));
            index[d] = 0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("input {i}")).collect()
    }

    #[test]
    fn broadcasts_like_numpy() {
        assert_eq!(
            broadcast(&[&[2, 1, 3], &[4, 1]], &names(2)).unwrap(),
            vec![2, 4, 3]
        );
        assert_eq!(broadcast(&[&[], &[5]], &names(2)).unwrap(), vec![5]);
        assert_eq!(
            broadcast(&[&[0, 1], &[1, 7]], &names(2)).unwrap(),
            vec![0, 7]
        );
        let err = broadcast(&[&[2, 3], &[4, 3]], &names(2)).unwrap_err();
        assert!(
            err.contains("input 0 has shape [2, 3], input 1 has shape [4, 3]"),
            "{err}"
        );
        assert!(broadcast(&[&[0], &[2]], &names(2)).is_err());
    }

    #[test]
    fn strides_and_offsets() {
        assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(broadcast_strides(&[3, 1], 3), vec![0, 1, 0]);
        // Element [1, 2, 3] of a [2, 3, 4] tensor broadcast from [3, 1].
        assert_eq!(offset_of(12 + 2 * 4 + 3, &[2, 3, 4], &[0, 1, 0]), 2);
        assert_eq!(strides(&[0, usize::MAX, 2])[0], usize::MAX);
    }

    #[test]
    fn normalizes_axes() {
        assert_eq!(normalize_axis(-1, 3, "axis").unwrap(), 2);
        assert_eq!(normalize_axis(0, 3, "axis").unwrap(), 0);
        assert!(normalize_axis(3, 3, "axis").is_err());
        assert!(normalize_axis(-4, 3, "axis").is_err());
        assert!(normalize_axis(i64::MIN, 3, "axis").is_err());
        assert!(normalize_axis(0, 0, "axis").is_err());
    }

    #[test]
    fn rows_merge_contiguous_dims() {
        // [2, 3, 4] + [4]: rows of 4, b repeats.
        let r = Rows::new(&[&[2, 3, 4], &[4]], &[2, 3, 4]);
        assert_eq!((r.inner, r.inner_stride.clone()), (4, vec![1, 1]));
        assert_eq!((r.row_offset(5, 0), r.row_offset(5, 1)), (20, 0));
        // [2, 3, 4] + [2, 1, 1]: the last two dims merge into rows of 12.
        let r = Rows::new(&[&[2, 3, 4], &[2, 1, 1]], &[2, 3, 4]);
        assert_eq!((r.inner, r.inner_stride.clone()), (12, vec![1, 0]));
        assert_eq!((r.row_offset(1, 0), r.row_offset(1, 1)), (12, 1));
        // Same shapes collapse to one row.
        let r = Rows::new(&[&[2, 1, 3], &[2, 1, 3]], &[2, 1, 3]);
        assert_eq!((r.inner, r.row_offset(0, 1)), (6, 0));
    }

    #[test]
    fn strided_copy_transposes_and_reverses() {
        let src: Vec<u32> = (0..6).collect(); // [2, 3]
        let mut dst = vec![0u32; 6];
        strided_copy(&src, 0, &[3, 2], &[1, 3], &mut dst).unwrap();
        assert_eq!(dst, vec![0, 3, 1, 4, 2, 5]);
        strided_copy(&src, 5, &[2, 3], &[-3, -1], &mut dst).unwrap();
        assert_eq!(dst, vec![5, 4, 3, 2, 1, 0]);
        // Contiguous innermost runs: rows in reverse order.
        strided_copy(&src, 3, &[2, 3], &[-3, 1], &mut dst).unwrap();
        assert_eq!(dst, vec![3, 4, 5, 0, 1, 2]);
        assert!(strided_copy(&src, 4, &[2, 3], &[-3, 1], &mut dst).is_err());
        assert!(strided_copy(&src, 5, &[2, 3], &[3, 1], &mut dst).is_err());
    }
}
