//! Kernels that move elements without computing on them: `transpose@1`,
//! `concat@1`, `slice@1`, `gather@1` and `copy@1`. They take any dtype and
//! move elements as plain words of its width (`u8`, `u32`, `u64`).
//!
//! - `transpose@1`: `perm` (default: the dims reversed, as in numpy) must be
//!   a permutation of `0..rank`; output dim `i` is input dim `perm[i]`.
//! - `concat@1`: `n` inputs (1..=5, so the launch has at most
//!   [`MAX_OPERANDS`](crate::MAX_OPERANDS) operands) of one dtype and rank,
//!   equal in every dim but `axis`, joined along `axis`.
//! - `slice@1`: `starts`, `ends` and `steps` (default all 1), one per axis,
//!   with the ONNX spec's semantics: negative starts and ends count from the
//!   end; for a positive step both clamp to `[0, d]`; for a negative step
//!   the start clamps to `[0, d-1]` and the end to `[-1, d-1]` (so, unlike
//!   numpy, a start below `-d` still selects index 0); steps are non-zero.
//! - `gather@1`: picks entries of `data` along `axis` (default 0) by `i32`
//!   or `i64` indices; a negative index counts from the end once, and an
//!   index still out of range is a run error, found before anything is
//!   written.
//! - `copy@1`: the input, copied.
//!
//! These are memory-bound copies in which the reference is already a
//! contiguous or odometer walk, so both implementations share it.

use std::sync::Arc;

use super::attrs::AttrReader;
use super::shape::{normalize_axis, numel, strided_copy, strides};
use super::{bound, check_same_dtype, data, operands, raw, raw_mut, Op};
use crate::{Attrs, Bound, DType, Impl, KernelError, Tensor, TensorMeta};

pub(crate) fn bind_transpose(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("transpose@1", attrs);
    let perm = r.ints("perm", Some(Vec::new()))?;
    // Absent: reverse the dims. Present (even empty): used as given.
    let perm = attrs.contains_key("perm").then_some(perm);
    r.finish()?;
    Ok(bound(Transpose { perm }))
}

pub(crate) fn bind_concat(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("concat@1", attrs);
    let axis = r.int("axis", None)?;
    let n = r.int("n", None)?;
    let n = match usize::try_from(n) {
        Ok(n) if (1..=CONCAT_NAMES.len()).contains(&n) => n,
        _ => {
            return Err(r.error(format!(
                "attribute `n` must be in 1..={}, got {n}",
                CONCAT_NAMES.len()
            )))
        }
    };
    r.finish()?;
    Ok(bound(Concat { axis, n }))
}

pub(crate) fn bind_slice(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("slice@1", attrs);
    let starts = r.ints("starts", None)?;
    let ends = r.ints("ends", None)?;
    let steps = r.ints("steps", Some(vec![1; starts.len()]))?;
    if ends.len() != starts.len() || steps.len() != starts.len() {
        return Err(r.error(format!(
            "attributes `starts`, `ends` and `steps` must have one entry per axis, got {}, {} and {}",
            starts.len(),
            ends.len(),
            steps.len()
        )));
    }
    if let Some(axis) = steps.iter().position(|&s| s == 0) {
        return Err(r.error(format!(
            "attribute `steps` must be non-zero, got 0 for axis {axis}"
        )));
    }
    r.finish()?;
    Ok(bound(Slice {
        starts,
        ends,
        steps,
    }))
}

pub(crate) fn bind_gather(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("gather@1", attrs);
    let axis = r.int("axis", Some(0))?;
    r.finish()?;
    Ok(bound(Gather { axis }))
}

pub(crate) fn bind_copy(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    AttrReader::new("copy@1", attrs).finish()?;
    Ok(bound(CopyOp))
}

struct Transpose {
    /// `None`: reverse the dims.
    perm: Option<Vec<i64>>,
}

impl Transpose {
    fn perm(&self, rank: usize) -> Result<Vec<usize>, String> {
        let Some(perm) = &self.perm else {
            return Ok((0..rank).rev().collect());
        };
        let bad = || format!("attribute `perm` {perm:?} is not a permutation of 0..{rank}");
        if perm.len() != rank {
            return Err(bad());
        }
        let mut seen = vec![false; rank];
        let mut out = Vec::with_capacity(rank);
        for &p in perm {
            let d = usize::try_from(p)
                .ok()
                .filter(|&d| d < rank)
                .ok_or_else(bad)?;
            if std::mem::replace(&mut seen[d], true) {
                return Err(bad());
            }
            out.push(d);
        }
        Ok(out)
    }
}

impl Op for Transpose {
    fn label(&self) -> &str {
        "transpose@1"
    }

    fn input_names(&self) -> &[&'static str] {
        &["x"]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        let [x] = operands(inputs)?;
        let perm = self.perm(x.shape.len())?;
        Ok(TensorMeta::new(
            x.dtype,
            perm.iter().map(|&p| x.shape[p]).collect::<Vec<_>>(),
        ))
    }

    fn compute(&self, _: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        let [x] = operands(inputs)?;
        let perm = self.perm(x.shape().len())?;
        let in_strides = strides(x.shape());
        let src_strides = perm
            .iter()
            .map(|&p| {
                isize::try_from(in_strides[p])
                    .map_err(|_| "internal: stride exceeds isize".to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let shape = out.shape().to_vec();
        super::with_width!(x.dtype(), T => strided_copy(raw::<T>(x, "input 0 (x)")?, 0, &shape, &src_strides, raw_mut::<T>(out)?))
    }
}

const CONCAT_NAMES: [&str; 5] = ["x0", "x1", "x2", "x3", "x4"];

struct Concat {
    axis: i64,
    n: usize,
}

impl Op for Concat {
    fn label(&self) -> &str {
        "concat@1"
    }

    fn input_names(&self) -> &[&'static str] {
        &CONCAT_NAMES[..self.n]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        check_same_dtype(self, inputs)?;
        let Some(first) = inputs.first() else {
            return Err("expected at least one input".to_string());
        };
        let axis = normalize_axis(self.axis, first.shape.len(), "attribute `axis`")?;
        let mut shape = first.shape.clone();
        for (i, m) in inputs.iter().enumerate().skip(1) {
            let fits = m.shape.len() == shape.len()
                && m.shape
                    .iter()
                    .zip(&first.shape)
                    .enumerate()
                    .all(|(d, (a, b))| d == axis || a == b);
            if !fits {
                return Err(format!(
                    "{}: expected shape {:?} except on axis {axis} (the shape of {}), got {:?}",
                    self.input(i),
                    first.shape,
                    self.input(0),
                    m.shape
                ));
            }
            shape[axis] = shape[axis].checked_add(m.shape[axis]).ok_or_else(|| {
                format!("joined axis {axis} has more elements than this host can count")
            })?;
        }
        Ok(TensorMeta::new(first.dtype, shape))
    }

    fn compute(&self, _: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        let Some(first) = inputs.first() else {
            return Err("expected at least one input".to_string());
        };
        let axis = normalize_axis(self.axis, first.shape().len(), "attribute `axis`")?;
        let outer = numel(&first.shape()[..axis], "outer dims")?;
        let inner = numel(&first.shape()[axis + 1..], "inner dims")?;
        super::with_width!(first.dtype(), T => concat_words::<T>(inputs, axis, outer, inner, out))
    }
}

fn concat_words<T: bytemuck::Pod>(
    inputs: &[&Tensor],
    axis: usize,
    outer: usize,
    inner: usize,
    out: &mut Tensor,
) -> Result<(), String> {
    let srcs = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| Ok((raw::<T>(t, &format!("input {i}"))?, t.shape()[axis] * inner)))
        .collect::<Result<Vec<_>, String>>()?;
    let y = raw_mut::<T>(out)?;
    let mut at = 0usize;
    for o in 0..outer {
        for (src, chunk) in &srcs {
            let from = src.get(o * chunk..(o + 1) * chunk);
            let to = y.get_mut(at..at + chunk);
            let (Some(from), Some(to)) = (from, to) else {
                return Err("internal: concat block outside an operand".to_string());
            };
            to.copy_from_slice(from);
            at += chunk;
        }
    }
    Ok(())
}

struct Slice {
    starts: Vec<i64>,
    ends: Vec<i64>,
    steps: Vec<i64>,
}

/// One axis of a slice: first index, count and step.
struct Span {
    start: i128,
    len: usize,
    step: i128,
}

impl Slice {
    fn spans(&self, shape: &[usize]) -> Result<Vec<Span>, String> {
        if self.starts.len() != shape.len() {
            return Err(format!(
                "attributes `starts`, `ends` and `steps` have {} entries but input 0 (x) has rank {} (shape {shape:?})",
                self.starts.len(),
                shape.len()
            ));
        }
        let spans = shape
            .iter()
            .zip(self.starts.iter().zip(&self.ends).zip(&self.steps))
            .map(|(&d, ((&s, &e), &st))| {
                // i128 holds every i64 plus every usize without overflow.
                let (d, s, e, st) = (d as i128, s as i128, e as i128, st as i128);
                let (s, e) = (if s < 0 { s + d } else { s }, if e < 0 { e + d } else { e });
                // `max` then `min` (not `clamp`, which panics when lo > hi, as
                // for d = 0 with a negative step).
                let (start, end) = if st > 0 {
                    (s.max(0).min(d), e.max(0).min(d))
                } else {
                    (s.max(0).min(d - 1), e.max(-1).min(d - 1))
                };
                let dist = if st > 0 { end - start } else { start - end };
                let len = if dist <= 0 {
                    0
                } else {
                    (dist + st.abs() - 1) / st.abs()
                };
                // len <= d, so it fits.
                Span {
                    start,
                    len: len as usize,
                    step: st,
                }
            });
        Ok(spans.collect())
    }
}

impl Op for Slice {
    fn label(&self) -> &str {
        "slice@1"
    }

    fn input_names(&self) -> &[&'static str] {
        &["x"]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        let [x] = operands(inputs)?;
        let spans = self.spans(&x.shape)?;
        Ok(TensorMeta::new(
            x.dtype,
            spans.iter().map(|s| s.len).collect::<Vec<_>>(),
        ))
    }

    fn compute(&self, _: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        let [x] = operands(inputs)?;
        if out.numel() == 0 {
            return Ok(());
        }
        // Non-empty output: every start is a valid index, so the base
        // offset and the strides are bounded by the input's size.
        let spans = self.spans(x.shape())?;
        let in_strides = strides(x.shape());
        let mut base: i128 = 0;
        let mut src_strides = Vec::with_capacity(spans.len());
        for (sp, &st) in spans.iter().zip(&in_strides) {
            base += sp.start * st as i128;
            let s = isize::try_from(sp.step * st as i128)
                .map_err(|_| "internal: slice stride exceeds isize".to_string())?;
            src_strides.push(s);
        }
        let base = usize::try_from(base)
            .map_err(|_| "internal: slice start outside the input".to_string())?;
        let shape = out.shape().to_vec();
        super::with_width!(x.dtype(), T => strided_copy(raw::<T>(x, "input 0 (x)")?, base, &shape, &src_strides, raw_mut::<T>(out)?))
    }
}

struct Gather {
    axis: i64,
}

impl Op for Gather {
    fn label(&self) -> &str {
        "gather@1"
    }

    fn input_names(&self) -> &[&'static str] {
        &["data", "indices"]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        let [data, indices] = operands(inputs)?;
        if !matches!(indices.dtype, DType::I32 | DType::I64) {
            return Err(format!(
                "{}: expected i32 or i64, got {}",
                self.input(1),
                indices.dtype
            ));
        }
        let axis = normalize_axis(self.axis, data.shape.len(), "attribute `axis`")?;
        let mut shape = data.shape[..axis].to_vec();
        shape.extend_from_slice(&indices.shape);
        shape.extend_from_slice(&data.shape[axis + 1..]);
        Ok(TensorMeta::new(data.dtype, shape))
    }

    fn compute(&self, _: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        let [data_t, indices] = operands(inputs)?;
        let axis = normalize_axis(self.axis, data_t.shape().len(), "attribute `axis`")?;
        let d = data_t.shape()[axis];
        let raw_indices: Vec<i64> = match indices.dtype() {
            DType::I32 => data::<i32>(indices, "input 1 (indices)")?
                .iter()
                .map(|&v| i64::from(v))
                .collect(),
            _ => data::<i64>(indices, "input 1 (indices)")?.to_vec(),
        };
        // Validate every index before writing anything.
        let dim = i64::try_from(d).unwrap_or(i64::MAX);
        let picks = raw_indices
            .iter()
            .enumerate()
            .map(|(j, &v)| {
                let w = if v < 0 { v + dim } else { v };
                usize::try_from(w).ok().filter(|&w| w < d).ok_or_else(|| {
                    format!("input 1 (indices): element {j} is {v}, out of range for axis {axis} of size {d} (valid: -{d}..{d})")
                })
            })
            .collect::<Result<Vec<usize>, String>>()?;
        let outer = numel(&data_t.shape()[..axis], "outer dims")?;
        let inner = numel(&data_t.shape()[axis + 1..], "inner dims")?;
        super::with_width!(data_t.dtype(), T => gather_words::<T>(data_t, &picks, d, outer, inner, out))
    }
}

fn gather_words<T: bytemuck::Pod>(
    data_t: &Tensor,
    picks: &[usize],
    d: usize,
    outer: usize,
    inner: usize,
    out: &mut Tensor,
) -> Result<(), String> {
    let src = raw::<T>(data_t, "input 0 (data)")?;
    let y = raw_mut::<T>(out)?;
    if y.is_empty() {
        return Ok(());
    }
    let mut blocks = y.chunks_exact_mut(inner);
    for o in 0..outer {
        for &p in picks {
            let from = src.get((o * d + p) * inner..(o * d + p + 1) * inner);
            let (Some(from), Some(to)) = (from, blocks.next()) else {
                return Err("internal: gather block outside an operand".to_string());
            };
            to.copy_from_slice(from);
        }
    }
    Ok(())
}

struct CopyOp;

impl Op for CopyOp {
    fn label(&self) -> &str {
        "copy@1"
    }

    fn input_names(&self) -> &[&'static str] {
        &["x"]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        let [x] = operands(inputs)?;
        Ok(x.clone())
    }

    fn compute(&self, _: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        let [x] = operands(inputs)?;
        let y = out.bytes_mut().map_err(|e| format!("output 0 (y): {e}"))?;
        if y.len() != x.bytes().len() {
            return Err("internal: copy between tensors of different sizes".to_string());
        }
        y.copy_from_slice(x.bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::*;
    use crate::{DType, Impl, KernelError, Tensor, TensorMeta};

    fn run1(id: &str, at: &[(&str, crate::AttrValue)], x: &Tensor) -> Result<Tensor, KernelError> {
        let r = launch(id, &attrs(at), &[x], Impl::Reference);
        let o = launch(id, &attrs(at), &[x], Impl::Optimized);
        assert_eq!(
            r.as_ref().map(|t| t.bytes().to_vec()),
            o.as_ref().map(|t| t.bytes().to_vec())
        );
        r
    }

    fn iota(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_vec(shape, (0..n as i64).collect()).unwrap()
    }

    #[test]
    fn transpose_against_direct_computation() {
        let x = iota(&[2, 3, 4]);
        let y = run1("transpose@1", &[("perm", ints(&[1, 2, 0]))], &x).unwrap();
        assert_eq!(y.shape(), &[3, 4, 2]);
        let yv = y.to_vec::<i64>().unwrap();
        for (a, b, c) in
            (0..3).flat_map(|a| (0..4).flat_map(move |b| (0..2).map(move |c| (a, b, c))))
        {
            assert_eq!(yv[(a * 4 + b) * 2 + c], (c * 12 + a * 4 + b) as i64);
        }
        let y = run1("transpose@1", &[], &iota(&[2, 3])).unwrap();
        assert_eq!(
            (y.shape().to_vec(), y.to_vec::<i64>().unwrap()),
            (vec![3, 2], vec![0, 3, 1, 4, 2, 5])
        );
        let k = bind("transpose@1", &attrs(&[("perm", ints(&[0, 0]))])).unwrap();
        let err = k.check(&[&TensorMeta::new(DType::U8, [2, 2])]).unwrap_err();
        assert_eq!(
            err,
            KernelError::Signature {
                kernel: "transpose@1".into(),
                message: "attribute `perm` [0, 0] is not a permutation of 0..2".into()
            }
        );
    }

    #[test]
    fn concat_against_direct_computation() {
        let a = iota(&[2, 1, 2]);
        let b = Tensor::from_vec(&[2, 2, 2], (10..18).collect::<Vec<i64>>()).unwrap();
        for imp in IMPLS {
            let y = launch(
                "concat@1",
                &attrs(&[("axis", i(1)), ("n", i(2))]),
                &[&a, &b],
                imp,
            )
            .unwrap();
            assert_eq!(y.shape(), &[2, 3, 2]);
            assert_eq!(
                y.to_vec::<i64>().unwrap(),
                vec![0, 1, 10, 11, 12, 13, 2, 3, 14, 15, 16, 17]
            );
            let y = launch(
                "concat@1",
                &attrs(&[("axis", i(-3)), ("n", i(3))]),
                &[&a, &a, &a],
                imp,
            )
            .unwrap();
            assert_eq!(
                y.to_vec::<i64>().unwrap(),
                vec![0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]
            );
        }
        let k = bind("concat@1", &attrs(&[("axis", i(1)), ("n", i(2))])).unwrap();
        let err = k
            .check(&[
                &TensorMeta::new(DType::F32, [2, 1]),
                &TensorMeta::new(DType::F32, [3, 1]),
            ])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("input 1 (x1): expected shape [2, 1] except on axis 1"),
            "{err}"
        );
        let err = k
            .check(&[
                &TensorMeta::new(DType::U8, [0, usize::MAX]),
                &TensorMeta::new(DType::U8, [0, 1]),
            ])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("more elements than this host can count"),
            "{err}"
        );
        for n in [0, 6, -1] {
            assert!(bind("concat@1", &attrs(&[("axis", i(0)), ("n", i(n))])).is_err());
        }
        assert_eq!(
            bind("concat@1", &attrs(&[("axis", i(0)), ("n", i(5))]))
                .unwrap()
                .arity()
                .inputs,
            5
        );
    }

    /// ONNX's Slice on one axis, by enumeration, as its spec words it:
    /// negative bounds add `d`; for a positive step, start and end clamp to
    /// `[0, d]`; for a negative one, start to `[0, d-1]` and end to
    /// `[-1, d-1]`; then walk from start toward end.
    fn onnx_indices(d: i64, start: i64, end: i64, step: i64) -> Vec<i64> {
        let fix = |v: i64| if v < 0 { v.saturating_add(d) } else { v };
        let (mut s, e) = (fix(start), fix(end));
        let mut out = Vec::new();
        if d == 0 {
            return out;
        }
        if step > 0 {
            let (mut s, e) = (s.clamp(0, d), e.clamp(0, d));
            while s < e {
                out.push(s);
                s += step;
            }
        } else {
            s = s.clamp(0, d - 1);
            let e = e.clamp(-1, d - 1);
            while s > e {
                out.push(s);
                s += step;
            }
        }
        out
    }

    #[test]
    fn slice_against_direct_computation() {
        let x = iota(&[4, 5]);
        let y = run1(
            "slice@1",
            &[
                ("starts", ints(&[1, -1])),
                ("ends", ints(&[100, -6])),
                ("steps", ints(&[2, -2])),
            ],
            &x,
        )
        .unwrap();
        assert_eq!(y.shape(), &[2, 3]);
        assert_eq!(y.to_vec::<i64>().unwrap(), vec![9, 7, 5, 19, 17, 15]);
        let y = run1(
            "slice@1",
            &[
                ("starts", ints(&[i64::MIN, 3])),
                ("ends", ints(&[i64::MAX, 1])),
            ],
            &x,
        )
        .unwrap();
        assert_eq!(y.shape(), &[4, 0]);
        let e = Tensor::zeros(DType::I64, &[0]).unwrap();
        let y = run1(
            "slice@1",
            &[
                ("starts", ints(&[-1])),
                ("ends", ints(&[i64::MIN])),
                ("steps", ints(&[-1])),
            ],
            &e,
        )
        .unwrap();
        assert_eq!(y.shape(), &[0]);
        assert!(bind(
            "slice@1",
            &attrs(&[
                ("starts", ints(&[0])),
                ("ends", ints(&[1])),
                ("steps", ints(&[0]))
            ])
        )
        .is_err());
        assert!(bind(
            "slice@1",
            &attrs(&[("starts", ints(&[0])), ("ends", ints(&[1, 2]))])
        )
        .is_err());
        let k = bind(
            "slice@1",
            &attrs(&[("starts", ints(&[0])), ("ends", ints(&[1]))]),
        )
        .unwrap();
        assert!(k
            .check(&[&TensorMeta::new(DType::F32, [2, 2])])
            .unwrap_err()
            .to_string()
            .contains("has rank 2"));
    }

    #[test]
    fn gather_against_direct_computation() {
        let x = iota(&[3, 4]);
        for imp in IMPLS {
            let idx = Tensor::from_vec(&[2, 2], vec![0i32, -1, 2, 1]).unwrap();
            let y = launch("gather@1", &attrs(&[("axis", i(1))]), &[&x, &idx], imp).unwrap();
            assert_eq!(y.shape(), &[3, 2, 2]);
            let want: Vec<i64> = (0..3)
                .flat_map(|r| [0, 3, 2, 1].map(|c| r * 4 + c))
                .collect();
            assert_eq!(y.to_vec::<i64>().unwrap(), want);
            let idx = Tensor::from_vec(&[3], vec![2i64, -3, 0]).unwrap();
            let y = launch("gather@1", &attrs(&[]), &[&x, &idx], imp).unwrap();
            assert_eq!(
                y.to_vec::<i64>().unwrap(),
                vec![8, 9, 10, 11, 0, 1, 2, 3, 0, 1, 2, 3]
            );
            let scalar = Tensor::scalar(1i64);
            let y = launch("gather@1", &attrs(&[]), &[&x, &scalar], imp).unwrap();
            assert_eq!(
                (y.shape().to_vec(), y.to_vec::<i64>().unwrap()),
                (vec![4], vec![4, 5, 6, 7])
            );
            for bad in [3i64, -4, i64::MIN] {
                let idx = Tensor::from_vec(&[2], vec![0i64, bad]).unwrap();
                let err = launch("gather@1", &attrs(&[]), &[&x, &idx], imp).unwrap_err();
                assert_eq!(
                    err,
                    KernelError::Run {
                        kernel: "gather@1".into(),
                        message: format!("input 1 (indices): element 1 is {bad}, out of range for axis 0 of size 3 (valid: -3..3)")
                    }
                );
            }
        }
        let k = bind("gather@1", &attrs(&[])).unwrap();
        let err = k
            .check(&[
                &TensorMeta::new(DType::F32, [3]),
                &TensorMeta::new(DType::F32, [1]),
            ])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("input 1 (indices): expected i32 or i64, got f32"),
            "{err}"
        );
        // Rank growth past MAX_RANK is refused.
        let err = k
            .check(&[
                &TensorMeta::new(DType::F32, [1; 8]),
                &TensorMeta::new(DType::I32, [1, 1]),
            ])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("output 0 (y): rank 9 exceeds the maximum"),
            "{err}"
        );
    }

    /// The layout kernels move 2-byte elements (i16, u16) through their
    /// `u16` carrier: each result is checked element by element against the
    /// index arithmetic of the op.
    #[test]
    fn layout_ops_move_two_byte_elements() {
        let (r, c) = (3usize, 5usize);
        // Values that fill both bytes, including the sign bit.
        let v: Vec<i16> = (0..r * c)
            .map(|k| (k as i16 - 7).wrapping_mul(4099))
            .collect();
        let x = Tensor::from_vec(&[r, c], v.clone()).unwrap();
        let y = run1("transpose@1", &[], &x).unwrap();
        assert_eq!((y.dtype(), y.shape()), (DType::I16, &[c, r][..]));
        let yv = y.to_vec::<i16>().unwrap();
        for (i, j) in (0..r).flat_map(|i| (0..c).map(move |j| (i, j))) {
            assert_eq!(yv[j * r + i], v[i * c + j]);
        }
        let y = run1(
            "slice@1",
            &[
                ("starts", ints(&[0, 4])),
                ("ends", ints(&[3, 0])),
                ("steps", ints(&[2, -3])),
            ],
            &x,
        )
        .unwrap();
        assert_eq!(
            y.to_vec::<i16>().unwrap(),
            vec![v[4], v[1], v[2 * c + 4], v[2 * c + 1]]
        );
        let u: Vec<u16> = v.iter().map(|&e| e as u16).collect();
        let xu = Tensor::from_vec(&[r, c], u.clone()).unwrap();
        let idx = Tensor::from_vec(&[2], vec![2i64, -3]).unwrap();
        for imp in IMPLS {
            let y = launch(
                "concat@1",
                &attrs(&[("axis", i(1)), ("n", i(2))]),
                &[&xu, &xu],
                imp,
            )
            .unwrap();
            let yv = y.to_vec::<u16>().unwrap();
            for (i, j) in (0..r).flat_map(|i| (0..2 * c).map(move |j| (i, j))) {
                assert_eq!(yv[i * 2 * c + j], u[i * c + j % c]);
            }
            let y = launch("gather@1", &attrs(&[("axis", i(0))]), &[&xu, &idx], imp).unwrap();
            let want: Vec<u16> = [2, 0]
                .iter()
                .flat_map(|&row| u[row * c..(row + 1) * c].to_vec())
                .collect();
            assert_eq!(y.to_vec::<u16>().unwrap(), want);
        }
    }

    #[test]
    fn copy_copies_any_dtype() {
        for dtype in DType::ALL {
            let bytes: Vec<u8> = (0..6 * dtype.size()).map(|b| (b % 2) as u8).collect();
            let x = Tensor::from_bytes(dtype, &[2, 3], &bytes).unwrap();
            let y = run1("copy@1", &[], &x).unwrap();
            assert_eq!((y.meta(), y.bytes()), (x.meta(), x.bytes()));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn slice_matches_onnx_enumeration(
            dims in prop::collection::vec(0usize..=6, 1..=3),
            raw in prop::collection::vec((-9i64..=9, -9i64..=9, prop_oneof![-4i64..=-1, 1i64..=4]), 3),
        ) {
            let rank = dims.len();
            let x = iota(&dims);
            let (starts, ends, steps): (Vec<i64>, Vec<i64>, Vec<i64>) =
                (raw[..rank].iter().map(|r| r.0).collect(), raw[..rank].iter().map(|r| r.1).collect(), raw[..rank].iter().map(|r| r.2).collect());
            let y = run1("slice@1", &[("starts", ints(&starts)), ("ends", ints(&ends)), ("steps", ints(&steps))], &x).unwrap();
            let picks: Vec<Vec<i64>> = (0..rank).map(|a| onnx_indices(dims[a] as i64, starts[a], ends[a], steps[a])).collect();
            let want_shape: Vec<usize> = picks.iter().map(Vec::len).collect();
            prop_assert_eq!(y.shape(), want_shape.as_slice());
            // Enumerate the output in row-major order.
            let mut want = Vec::new();
            let mut idx = vec![0usize; rank];
            let total: usize = picks.iter().map(Vec::len).product();
            for _ in 0..total {
                let flat = (0..rank).fold(0i64, |acc, a| acc * dims[a] as i64 + picks[a][idx[a]]);
                want.push(flat);
                for a in (0..rank).rev() {
                    idx[a] += 1;
                    if idx[a] < picks[a].len() { break; }
                    idx[a] = 0;
                }
            }
            prop_assert_eq!(y.to_vec::<i64>().unwrap(), want);
        }

        #[test]
        fn transpose_twice_is_identity(shape in prop::collection::vec(0usize..=4, 0..=5), seed in any::<u64>()) {
            let rank = shape.len();
            let mut perm: Vec<i64> = (0..rank as i64).collect();
            let mut g = Gen(seed);
            for k in (1..rank).rev() {
                perm.swap(k, (g.next() % (k as u64 + 1)) as usize);
            }
            let mut inverse = vec![0i64; rank];
            for (k, &p) in perm.iter().enumerate() {
                inverse[p as usize] = k as i64;
            }
            let x = float_tensor::<f32>(&shape, seed, true);
            let y = run1("transpose@1", &[("perm", ints(&perm))], &x).unwrap();
            let want_shape: Vec<usize> = perm.iter().map(|&p| shape[p as usize]).collect();
            prop_assert_eq!(y.shape(), want_shape.as_slice());
            let z = run1("transpose@1", &[("perm", ints(&inverse))], &y).unwrap();
            prop_assert_eq!(z.bytes(), x.bytes());
        }

        #[test]
        fn check_never_panics(a in adversarial_meta(), b in adversarial_meta(), axis in any::<i64>(), v in any::<i64>()) {
            for (id, at) in [
                ("transpose@1", attrs(&[])),
                ("transpose@1", attrs(&[("perm", ints(&[1, 0, 2]))])),
                ("concat@1", attrs(&[("axis", i(axis)), ("n", i(2))])),
                ("concat@1", attrs(&[("axis", i(0)), ("n", i(2))])),
                ("slice@1", attrs(&[("starts", ints(&[v, 0])), ("ends", ints(&[axis, -1])), ("steps", ints(&[v.max(1), -1]))])),
                ("gather@1", attrs(&[("axis", i(axis))])),
                ("gather@1", attrs(&[])),
                ("copy@1", attrs(&[])),
            ] {
                check_is_consistent(&*bind(id, &at).unwrap(), &[&a, &b]);
            }
        }
    }
}
