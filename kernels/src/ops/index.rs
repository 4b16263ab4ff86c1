//! Gathers driven by index tensors: `gather_elements@1` and `gather_nd@1`.
//! Both take `data` of any dtype and `indices` of i32 or i64, move elements
//! as plain words of the data's width, and validate every index (a negative
//! one counts from the end once) before anything is written; an index still
//! out of range is a run error naming its position.
//!
//! - `gather_elements@1` (`axis`, default 0): `indices` has the rank of
//!   `data` and, on every axis but `axis`, a size no larger than data's;
//!   `y[i..] = data[i.. with i[axis] replaced by indices[i..]]`, shaped like
//!   `indices`.
//! - `gather_nd@1` (`batch_dims` b, default 0): `indices [B.., Q.., k]`
//!   whose first b dims equal data's, with `1 <= k <= rank(data) - b`;
//!   each index row picks `data[batch.., row.., :]`. Output shape:
//!   `indices.shape[..-1] + data.shape[b + k..]`.
//!
//! These are memory-bound copies: both implementations share one loop.

use std::sync::Arc;

use super::attrs::AttrReader;
use super::shape::{normalize_axis, numel, strides};
use super::{bound, data, operands, raw, raw_mut, Op};
use crate::{Attrs, Bound, DType, Impl, KernelError, Tensor, TensorMeta, MAX_RANK};

pub(crate) fn bind_gather_elements(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("gather_elements@1", attrs);
    let axis = r.int("axis", Some(0))?;
    r.finish()?;
    Ok(bound(GatherElements { axis }))
}

pub(crate) fn bind_gather_nd(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("gather_nd@1", attrs);
    let b = r.int("batch_dims", Some(0))?;
    let batch_dims = usize::try_from(b)
        .ok()
        .filter(|&b| b < MAX_RANK)
        .ok_or_else(|| {
            r.error(format!(
                "attribute `batch_dims` must be in 0..{MAX_RANK}, got {b}"
            ))
        })?;
    r.finish()?;
    Ok(bound(GatherNd { batch_dims }))
}

fn check_indices<O: Op>(op: &O, m: &TensorMeta) -> Result<(), String> {
    if matches!(m.dtype, DType::I32 | DType::I64) {
        Ok(())
    } else {
        Err(format!(
            "{}: expected i32 or i64, got {}",
            op.input(1),
            m.dtype
        ))
    }
}

/// Index values as i64.
fn index_values(t: &Tensor) -> Result<Vec<i64>, String> {
    match t.dtype() {
        DType::I32 => Ok(data::<i32>(t, "input 1 (indices)")?
            .iter()
            .map(|&v| i64::from(v))
            .collect()),
        _ => Ok(data::<i64>(t, "input 1 (indices)")?.to_vec()),
    }
}

/// `v` resolved against a dim of size `d`.
fn resolve(v: i64, d: usize) -> Option<usize> {
    let dim = i64::try_from(d).ok()?;
    let w = if v < 0 { v.checked_add(dim)? } else { v };
    usize::try_from(w).ok().filter(|&w| w < d)
}

struct GatherElements {
    axis: i64,
}

impl Op for GatherElements {
    fn label(&self) -> &str {
        "gather_elements@1"
    }

    fn input_names(&self) -> &[&'static str] {
        &["data", "indices"]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        let [d, idx] = operands(inputs)?;
        check_indices(self, idx)?;
        let axis = normalize_axis(self.axis, d.shape.len(), "attribute `axis`")?;
        if idx.shape.len() != d.shape.len() {
            return Err(format!(
                "{}: expected rank {} (the rank of {}), got shape {:?}",
                self.input(1),
                d.shape.len(),
                self.input(0),
                idx.shape
            ));
        }
        for (a, (&i, &n)) in idx.shape.iter().zip(&d.shape).enumerate() {
            if a != axis && i > n {
                return Err(format!(
                    "{}: dim {a} is {i}, larger than dim {a} of {} ({n}, shape {:?})",
                    self.input(1),
                    self.input(0),
                    d.shape
                ));
            }
        }
        Ok(TensorMeta::new(d.dtype, idx.shape.clone()))
    }

    fn compute(&self, _: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        let [d, idx] = operands(inputs)?;
        let axis = normalize_axis(self.axis, d.shape().len(), "attribute `axis`")?;
        let dim = d.shape()[axis];
        let ds = strides(d.shape());
        let ishape = idx.shape().to_vec();
        let values = index_values(idx)?;
        // Every source offset, validated before anything is written.
        let mut offs = Vec::with_capacity(values.len());
        let mut c = vec![0usize; ishape.len()];
        for (j, &v) in values.iter().enumerate() {
            let k = resolve(v, dim).ok_or_else(|| {
                format!("input 1 (indices): element {j} is {v}, out of range for axis {axis} of size {dim} (valid: -{dim}..{dim})")
            })?;
            let off: usize = c
                .iter()
                .zip(&ds)
                .enumerate()
                .map(|(a, (&ci, &s))| if a == axis { k * s } else { ci * s })
                .sum();
            offs.push(off);
            super::conv::advance(&mut c, &ishape);
        }
        super::with_width!(d.dtype(), T => {
            let src = raw::<T>(d, "input 0 (data)")?;
            let y = raw_mut::<T>(out)?;
            for (slot, &o) in y.iter_mut().zip(&offs) {
                *slot = *src.get(o).ok_or("internal: gather_elements offset outside data")?;
            }
            Ok(())
        })
    }
}

struct GatherNd {
    batch_dims: usize,
}

impl GatherNd {
    /// `(k, out_shape)` for shapes that passed the rules.
    fn plan(&self, d: &[usize], idx: &[usize]) -> Result<(usize, Vec<usize>), String> {
        let b = self.batch_dims;
        let Some((&k, rows)) = idx.split_last() else {
            return Err("input 1 (indices): expected rank >= 1, got a scalar".to_string());
        };
        if rows.len() < b || d.len() < b || d[..b] != idx[..b] {
            return Err(format!(
                "the first {b} dims (batch_dims) of input 1 (indices) {idx:?} must equal those of input 0 (data) {d:?}, and indices needs one more dim"
            ));
        }
        if k == 0 || k > d.len() - b {
            return Err(format!(
                "input 1 (indices): the last dim is {k}, but must be in 1..={} (rank of data {d:?} minus batch_dims {b})",
                d.len() - b
            ));
        }
        let mut shape = rows.to_vec();
        shape.extend_from_slice(&d[b + k..]);
        Ok((k, shape))
    }
}

impl Op for GatherNd {
    fn label(&self) -> &str {
        "gather_nd@1"
    }

    fn input_names(&self) -> &[&'static str] {
        &["data", "indices"]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        let [d, idx] = operands(inputs)?;
        check_indices(self, idx)?;
        let (_, shape) = self.plan(&d.shape, &idx.shape)?;
        Ok(TensorMeta::new(d.dtype, shape))
    }

    fn compute(&self, _: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        let [d, idx] = operands(inputs)?;
        let (k, _) = self.plan(d.shape(), idx.shape())?;
        let b = self.batch_dims;
        let ds = strides(d.shape());
        let slice = numel(&d.shape()[b + k..], "sliced dims")?;
        let batch_stride = if b == 0 { 0 } else { ds[b - 1] };
        let rows_per_batch = numel(&idx.shape()[b..idx.shape().len() - 1], "index rows")?;
        let values = index_values(idx)?;
        let mut starts = Vec::with_capacity(values.len() / k);
        for (r, row) in values.chunks(k).enumerate() {
            let mut off = (r / rows_per_batch.max(1)) * batch_stride;
            for (j, &v) in row.iter().enumerate() {
                let dim = d.shape()[b + j];
                let p = resolve(v, dim).ok_or_else(|| {
                    format!("input 1 (indices): row {r} entry {j} is {v}, out of range for data axis {} of size {dim} (valid: -{dim}..{dim})", b + j)
                })?;
                off += p * ds[b + j];
            }
            starts.push(off);
        }
        super::with_width!(d.dtype(), T => {
            let src = raw::<T>(d, "input 0 (data)")?;
            let y = raw_mut::<T>(out)?;
            if slice == 0 {
                return Ok(());
            }
            for (dst, &s) in y.chunks_mut(slice).zip(&starts) {
                let from = src.get(s..s + slice).ok_or("internal: gather_nd slice outside data")?;
                dst.copy_from_slice(from);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::*;
    use crate::{DType, Impl, Tensor, TensorMeta};

    #[test]
    fn gather_elements_by_hand() {
        // ONNX's example: axis 1 picks within each row.
        let d = Tensor::from_vec(&[2, 2], vec![1i32, 2, 3, 4]).unwrap();
        let idx = Tensor::from_vec(&[2, 2], vec![0i64, 0, 1, 0]).unwrap();
        for imp in IMPLS {
            let y = launch(
                "gather_elements@1",
                &attrs(&[("axis", i(1))]),
                &[&d, &idx],
                imp,
            )
            .unwrap();
            assert_eq!(y.to_vec::<i32>().unwrap(), vec![1, 1, 4, 3]);
        }
        // axis 0, negative indices, fewer rows than data.
        let d = Tensor::from_vec(&[3, 3], (1..=9).map(|v| v as f32).collect()).unwrap();
        let idx = Tensor::from_vec(&[2, 3], vec![1i32, 2, 0, 2, 0, -3]).unwrap();
        let y = launch(
            "gather_elements@1",
            &attrs(&[]),
            &[&d, &idx],
            Impl::Reference,
        )
        .unwrap();
        assert_eq!(
            y.to_vec::<f32>().unwrap(),
            vec![4.0, 8.0, 3.0, 7.0, 2.0, 3.0]
        );
        let bad = Tensor::from_vec(&[1, 1], vec![3i64]).unwrap();
        let err = launch(
            "gather_elements@1",
            &attrs(&[]),
            &[&d, &bad],
            Impl::Reference,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("element 0 is 3, out of range"),
            "{err}"
        );
        let k = bind("gather_elements@1", &attrs(&[("axis", i(1))])).unwrap();
        let m = |dt, s: &[usize]| TensorMeta::new(dt, s.to_vec());
        assert!(k
            .check(&[&m(DType::F32, &[2, 2]), &m(DType::I64, &[3, 5])])
            .unwrap_err()
            .to_string()
            .contains("dim 0 is 3, larger"));
    }

    #[test]
    fn gather_nd_by_hand() {
        let d = Tensor::from_vec(&[2, 2, 2], (0..8).collect::<Vec<i64>>()).unwrap();
        let run = |idx: Tensor, b: i64| {
            launch(
                "gather_nd@1",
                &attrs(&[("batch_dims", i(b))]),
                &[&d, &idx],
                Impl::Reference,
            )
            .unwrap()
        };
        // Full index rows pick elements.
        let y = run(
            Tensor::from_vec(&[2, 3], vec![0i64, 1, 1, 1, 0, 0]).unwrap(),
            0,
        );
        assert_eq!(
            (y.shape().to_vec(), y.to_vec::<i64>().unwrap()),
            (vec![2], vec![3, 4])
        );
        // Partial rows pick slices.
        let y = run(Tensor::from_vec(&[2, 1], vec![1i64, -2]).unwrap(), 0);
        assert_eq!(y.shape(), [2, 2, 2]);
        assert_eq!(y.to_vec::<i64>().unwrap(), vec![4, 5, 6, 7, 0, 1, 2, 3]);
        // batch_dims = 1: row b indexes data[b].
        let y = run(Tensor::from_vec(&[2, 1], vec![1i64, 0]).unwrap(), 1);
        assert_eq!(
            (y.shape().to_vec(), y.to_vec::<i64>().unwrap()),
            (vec![2, 2], vec![2, 3, 4, 5])
        );
        let err = launch(
            "gather_nd@1",
            &attrs(&[]),
            &[&d, &Tensor::from_vec(&[1, 2], vec![0i32, 2]).unwrap()],
            Impl::Reference,
        )
        .unwrap_err();
        assert!(err.to_string().contains("row 0 entry 1 is 2"), "{err}");
        let k = bind("gather_nd@1", &attrs(&[])).unwrap();
        let m = |dt, s: &[usize]| TensorMeta::new(dt, s.to_vec());
        assert!(k
            .check(&[&m(DType::F32, &[2, 2]), &m(DType::I64, &[3, 3])])
            .is_err());
        assert!(bind("gather_nd@1", &attrs(&[("batch_dims", i(-1))])).is_err());
    }

    proptest! {
        #[test]
        fn check_never_panics(a in adversarial_meta(), b in adversarial_meta(), axis in -3i64..3, bd in 0i64..3) {
            check_is_consistent(&*bind("gather_elements@1", &attrs(&[("axis", i(axis))])).unwrap(), &[&a, &b]);
            check_is_consistent(&*bind("gather_nd@1", &attrs(&[("batch_dims", i(bd))])).unwrap(), &[&a, &b]);
        }

        /// gather_nd with full rows equals gather_elements-free direct
        /// indexing: y[r] = data[idx[r]].
        #[test]
        fn gather_nd_matches_direct_indexing(dims in prop::collection::vec(1usize..=4, 1..=3), rows in 0usize..6, seed in any::<u64>()) {
            let d = int_tensor::<i32>(&dims, seed, -100, 100);
            let k = dims.len();
            let mut g = Gen(seed);
            let idx: Vec<i64> = (0..rows * k).map(|j| (g.next() % dims[j % k] as u64) as i64).collect();
            let it = Tensor::from_vec(&[rows, k], idx.clone()).unwrap();
            let y = launch("gather_nd@1", &attrs(&[]), &[&d, &it], Impl::Optimized).unwrap();
            let dv = d.to_vec::<i32>().unwrap();
            let want: Vec<i32> = idx.chunks(k).map(|row| {
                let mut off = 0usize;
                for (j, &v) in row.iter().enumerate() { off = off * dims[j] + v as usize; }
                dv[off]
            }).collect();
            prop_assert_eq!(y.to_vec::<i32>().unwrap(), want);
        }
    }
}
