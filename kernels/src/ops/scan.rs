//! Kernels that walk one axis: `arg_reduce@1` and `cumsum@1`.
//!
//! - `arg_reduce@1`: the index (i64) of the largest (`op` = `max`) or
//!   smallest (`min`) element along `axis` of a float or int input; ties
//!   pick the first index, or the last with `select_last_index` = 1; a NaN
//!   counts as beyond every number (numpy's rule), so the first NaN (last,
//!   with `select_last_index`) wins. `keepdims` (default 1) keeps the axis
//!   as size 1. The axis must not be empty.
//! - `cumsum@1`: running sums along `axis` of a float or int input (ints
//!   wrap); `exclusive` = 1 leaves the element itself out, `reverse` = 1
//!   sums from the end.
//!
//! Both are single passes in which the reference is already the natural
//! loop; the optimized implementations run the same loop over independent
//! `outer` slabs on rayon's pool when the input is large, so results are
//! bitwise identical.

use std::sync::Arc;

use rayon::prelude::*;

use super::attrs::AttrReader;
use super::num::Arith;
use super::shape::{normalize_axis, numel};
use super::{bound, data, data_mut, operands, worth_splitting, Op, PAR_MIN};
use crate::{Attrs, Bound, DType, Element, Impl, KernelError, Tensor, TensorMeta};

pub(crate) fn bind_arg_reduce(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("arg_reduce@1", attrs);
    let max = r.choice("op", &[("max", true), ("min", false)])?;
    let axis = r.int("axis", Some(0))?;
    let keepdims = r.flag("keepdims", true)?;
    let last = r.flag("select_last_index", false)?;
    r.finish()?;
    Ok(bound(ArgReduce {
        label: format!("arg_reduce@1 ({})", if max { "max" } else { "min" }),
        max,
        axis,
        keepdims,
        last,
    }))
}

pub(crate) fn bind_cumsum(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("cumsum@1", attrs);
    let axis = r.int("axis", None)?;
    let exclusive = r.flag("exclusive", false)?;
    let reverse = r.flag("reverse", false)?;
    r.finish()?;
    Ok(bound(CumSum {
        axis,
        exclusive,
        reverse,
    }))
}

/// `(outer, d, inner)` of `shape` split at `axis`.
fn split(shape: &[usize], axis: usize) -> Result<(usize, usize, usize), String> {
    Ok((
        numel(&shape[..axis], "outer dims")?,
        shape[axis],
        numel(&shape[axis + 1..], "inner dims")?,
    ))
}

struct ArgReduce {
    label: String,
    max: bool,
    axis: i64,
    keepdims: bool,
    last: bool,
}

impl Op for ArgReduce {
    fn label(&self) -> &str {
        &self.label
    }

    fn input_names(&self) -> &[&'static str] {
        &["x"]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        let [x] = operands(inputs)?;
        if x.dtype == DType::Bool {
            return Err(format!(
                "{}: expected a float or int dtype, got bool",
                self.input(0)
            ));
        }
        let axis = normalize_axis(self.axis, x.shape.len(), "attribute `axis`")?;
        if x.shape[axis] == 0 {
            return Err(format!(
                "{}: axis {axis} is empty (shape {:?}); there is no index to return",
                self.input(0),
                x.shape
            ));
        }
        let mut shape = x.shape.clone();
        if self.keepdims {
            shape[axis] = 1;
        } else {
            shape.remove(axis);
        }
        Ok(TensorMeta::new(DType::I64, shape))
    }

    fn compute(&self, imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        let [x] = operands(inputs)?;
        super::with_number!(x.dtype(), T => self.typed::<T>(imp, x, out))
    }
}

/// Whether `v` replaces the current best `b` (see the module doc).
fn beats<T: Element + PartialOrd>(v: T, b: T, max: bool, last: bool) -> bool {
    #[allow(clippy::eq_op)]
    let nan = |x: T| x != x;
    match (nan(v), nan(b)) {
        (_, true) => last && nan(v),
        (true, false) => true,
        _ => {
            let better = if max { v > b } else { v < b };
            better || (last && v == b)
        }
    }
}

impl ArgReduce {
    fn typed<T: Element + PartialOrd>(
        &self,
        imp: Impl,
        x: &Tensor,
        out: &mut Tensor,
    ) -> Result<(), String> {
        let axis = normalize_axis(self.axis, x.shape().len(), "attribute `axis`")?;
        let (_, d, inner) = split(x.shape(), axis)?;
        let xv = data::<T>(x, "input 0 (x)")?;
        let y = data_mut::<i64>(out)?;
        if y.is_empty() {
            return Ok(());
        }
        let slab = |(o, ys): (usize, &mut [i64])| -> Result<(), String> {
            let xs = xv
                .get(o * d * inner..(o + 1) * d * inner)
                .ok_or("internal: arg_reduce slab outside x")?;
            for (j, slot) in ys.iter_mut().enumerate() {
                let mut best = 0usize;
                for k in 1..d {
                    if beats(xs[k * inner + j], xs[best * inner + j], self.max, self.last) {
                        best = k;
                    }
                }
                *slot = best as i64;
            }
            Ok(())
        };
        if imp == Impl::Optimized && worth_splitting(xv.len(), PAR_MIN) {
            y.par_chunks_mut(inner).enumerate().try_for_each(slab)
        } else {
            y.chunks_mut(inner).enumerate().try_for_each(slab)
        }
    }
}

struct CumSum {
    axis: i64,
    exclusive: bool,
    reverse: bool,
}

impl Op for CumSum {
    fn label(&self) -> &str {
        "cumsum@1"
    }

    fn input_names(&self) -> &[&'static str] {
        &["x"]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        let [x] = operands(inputs)?;
        if x.dtype == DType::Bool {
            return Err(format!(
                "{}: expected a float or int dtype, got bool",
                self.input(0)
            ));
        }
        normalize_axis(self.axis, x.shape.len(), "attribute `axis`")?;
        Ok(x.clone())
    }

    fn compute(&self, imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        let [x] = operands(inputs)?;
        super::with_number!(x.dtype(), T => self.typed::<T>(imp, x, out))
    }
}

impl CumSum {
    fn typed<T: Arith>(&self, imp: Impl, x: &Tensor, out: &mut Tensor) -> Result<(), String> {
        let axis = normalize_axis(self.axis, x.shape().len(), "attribute `axis`")?;
        let (_, d, inner) = split(x.shape(), axis)?;
        let xv = data::<T>(x, "input 0 (x)")?;
        let y = data_mut::<T>(out)?;
        let len = d * inner;
        if y.is_empty() {
            return Ok(());
        }
        let slab = |(o, ys): (usize, &mut [T])| -> Result<(), String> {
            let xs = xv
                .get(o * len..(o + 1) * len)
                .ok_or("internal: cumsum slab outside x")?;
            for j in 0..inner {
                let mut acc = T::ZERO;
                for step in 0..d {
                    let k = if self.reverse { d - 1 - step } else { step };
                    let v = xs[k * inner + j];
                    if self.exclusive {
                        ys[k * inner + j] = acc;
                        acc = T::add(acc, v);
                    } else {
                        acc = T::add(acc, v);
                        ys[k * inner + j] = acc;
                    }
                }
            }
            Ok(())
        };
        if imp == Impl::Optimized && worth_splitting(xv.len(), PAR_MIN) {
            y.par_chunks_mut(len).enumerate().try_for_each(slab)
        } else {
            y.chunks_mut(len).enumerate().try_for_each(slab)
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::*;
    use crate::{DType, Impl, Tensor, TensorMeta};

    #[test]
    fn argmax_and_argmin_by_hand() {
        let x = Tensor::from_vec(&[2, 3], vec![1.0f32, 5.0, 5.0, 7.0, -1.0, 7.0]).unwrap();
        let run = |at: &[(&str, crate::AttrValue)]| {
            let r = launch("arg_reduce@1", &attrs(at), &[&x], Impl::Reference).unwrap();
            let o = launch("arg_reduce@1", &attrs(at), &[&x], Impl::Optimized).unwrap();
            assert_same_bits(&r, &o);
            (r.shape().to_vec(), r.to_vec::<i64>().unwrap())
        };
        assert_eq!(
            run(&[("op", s("max")), ("axis", i(1))]),
            (vec![2, 1], vec![1, 0])
        );
        assert_eq!(
            run(&[
                ("op", s("max")),
                ("axis", i(-1)),
                ("select_last_index", i(1)),
                ("keepdims", i(0))
            ]),
            (vec![2], vec![2, 2])
        );
        assert_eq!(
            run(&[("op", s("min")), ("axis", i(0))]),
            (vec![1, 3], vec![0, 1, 0])
        );
        let nan = Tensor::from_vec(&[4], vec![1.0f64, f64::NAN, 3.0, f64::NAN]).unwrap();
        for (op, last, want) in [("max", 0, 1), ("min", 0, 1), ("max", 1, 3)] {
            let at = attrs(&[("op", s(op)), ("select_last_index", i(last))]);
            let y = launch("arg_reduce@1", &at, &[&nan], Impl::Reference).unwrap();
            assert_eq!(y.to_vec::<i64>().unwrap(), vec![want], "{op} {last}");
        }
        let k = bind("arg_reduce@1", &attrs(&[("op", s("max"))])).unwrap();
        assert!(k
            .check(&[&TensorMeta::new(DType::F32, [0, 2])])
            .unwrap_err()
            .to_string()
            .contains("axis 0 is empty"));
    }

    #[test]
    fn cumsum_by_hand() {
        let x = Tensor::from_vec(&[2, 3], vec![1i32, 2, 3, 4, 5, 6]).unwrap();
        let run = |at: &[(&str, crate::AttrValue)]| {
            launch("cumsum@1", &attrs(at), &[&x], Impl::Reference)
                .unwrap()
                .to_vec::<i32>()
                .unwrap()
        };
        assert_eq!(run(&[("axis", i(1))]), vec![1, 3, 6, 4, 9, 15]);
        assert_eq!(run(&[("axis", i(0))]), vec![1, 2, 3, 5, 7, 9]);
        assert_eq!(
            run(&[("axis", i(1)), ("exclusive", i(1))]),
            vec![0, 1, 3, 0, 4, 9]
        );
        assert_eq!(
            run(&[("axis", i(1)), ("reverse", i(1))]),
            vec![6, 5, 3, 15, 11, 6]
        );
        assert_eq!(
            run(&[("axis", i(-1)), ("reverse", i(1)), ("exclusive", i(1))]),
            vec![5, 3, 0, 11, 6, 0]
        );
        assert!(bind("cumsum@1", &attrs(&[])).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn optimized_matches_reference(
            shape in shape_strategy().prop_filter("rank >= 1", |s| !s.is_empty()),
            axis in 0usize..4,
            flags in 0u8..8,
            seed in any::<u64>(),
        ) {
            let axis = (axis % shape.len()) as i64;
            let x = float_tensor::<f32>(&shape, seed, true);
            let xi = int_tensor::<i64>(&shape, seed, -5, 5);
            for t in [&x, &xi] {
                let at = attrs(&[("axis", i(axis)), ("exclusive", i(i64::from(flags & 1))), ("reverse", i(i64::from(flags >> 1 & 1)))]);
                let r = launch("cumsum@1", &at, &[t], Impl::Reference).unwrap();
                let o = launch("cumsum@1", &at, &[t], Impl::Optimized).unwrap();
                assert_same_bits(&r, &o);
                let at = attrs(&[("op", s(if flags & 1 == 0 { "max" } else { "min" })), ("axis", i(axis)), ("select_last_index", i(i64::from(flags >> 2 & 1)))]);
                match launch("arg_reduce@1", &at, &[t], Impl::Reference) {
                    Ok(r) => assert_same_bits(&r, &launch("arg_reduce@1", &at, &[t], Impl::Optimized).unwrap()),
                    Err(_) => prop_assert_eq!(shape[axis as usize], 0),
                }
            }
        }

        #[test]
        fn check_never_panics(a in adversarial_meta(), axis in -9i64..9) {
            check_is_consistent(&*bind("cumsum@1", &attrs(&[("axis", i(axis))])).unwrap(), &[&a]);
            check_is_consistent(&*bind("arg_reduce@1", &attrs(&[("op", s("min")), ("axis", i(axis)), ("keepdims", i(0))])).unwrap(), &[&a]);
        }
    }
}
