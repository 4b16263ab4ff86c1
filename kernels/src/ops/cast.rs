//! `cast@1`: converts every element to the dtype named by `to` (any dtype
//! name: `f32`, `f64`, `i8`, `u8`, `i32`, `i64`, `bool`).
//!
//! Conversions are Rust's `as`: float to int truncates toward zero and
//! saturates at the type's bounds, NaN becomes 0; int to int wraps; to a
//! float rounds to nearest. To bool is `x != 0` (so NaN is true and `-0.0`
//! false); from bool, any non-zero byte is 1. One implementation serves
//! both [`Impl`]s: a single pass with nothing to optimize.

use std::sync::Arc;

use super::attrs::AttrReader;
use super::{bound, data, data_mut, operands, Op};
use crate::{Attrs, Bool8, Bound, DType, Element, Impl, KernelError, Tensor, TensorMeta};

pub(crate) fn bind(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("cast@1", attrs);
    let options: Vec<(&str, DType)> = DType::ALL.iter().map(|&d| (d.name(), d)).collect();
    let to = r.choice("to", &options)?;
    r.finish()?;
    Ok(bound(Cast {
        to,
        label: format!("cast@1 (to {to})"),
    }))
}

struct Cast {
    to: DType,
    label: String,
}

impl Op for Cast {
    fn label(&self) -> &str {
        &self.label
    }

    fn input_names(&self) -> &[&'static str] {
        &["x"]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        let [x] = operands(inputs)?;
        Ok(TensorMeta::new(self.to, x.shape.clone()))
    }

    fn compute(&self, _: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        let [x] = operands(inputs)?;
        super::with_element!(x.dtype(), S => super::with_element!(self.to, D => convert::<S, D>(x, out)))
    }
}

fn convert<S: Scalar, D: Scalar>(x: &Tensor, out: &mut Tensor) -> Result<(), String> {
    let xs = data::<S>(x, "input 0 (x)")?;
    for (slot, &v) in data_mut::<D>(out)?.iter_mut().zip(xs) {
        *slot = D::from_scalar(v);
    }
    Ok(())
}

/// Every element type, convertible to every other.
trait Scalar: Element {
    fn to_f32(self) -> f32;
    fn to_f64(self) -> f64;
    fn to_i8(self) -> i8;
    fn to_u8(self) -> u8;
    fn to_i32(self) -> i32;
    fn to_i64(self) -> i64;
    fn nonzero(self) -> bool;
    fn from_scalar<S: Scalar>(s: S) -> Self;
}

macro_rules! impl_scalar {
    ($t:ty, $from:ident, $zero:expr) => {
        impl Scalar for $t {
            fn to_f32(self) -> f32 {
                self as f32
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn to_i8(self) -> i8 {
                self as i8
            }
            fn to_u8(self) -> u8 {
                self as u8
            }
            fn to_i32(self) -> i32 {
                self as i32
            }
            fn to_i64(self) -> i64 {
                self as i64
            }
            fn nonzero(self) -> bool {
                self != $zero
            }
            fn from_scalar<S: Scalar>(s: S) -> Self {
                s.$from()
            }
        }
    };
}

impl_scalar!(f32, to_f32, 0.0);
impl_scalar!(f64, to_f64, 0.0);
impl_scalar!(i8, to_i8, 0);
impl_scalar!(u8, to_u8, 0);
impl_scalar!(i32, to_i32, 0);
impl_scalar!(i64, to_i64, 0);

impl Scalar for Bool8 {
    fn to_f32(self) -> f32 {
        f32::from(self.to_u8())
    }
    fn to_f64(self) -> f64 {
        f64::from(self.to_u8())
    }
    fn to_i8(self) -> i8 {
        i8::from(self.nonzero())
    }
    fn to_u8(self) -> u8 {
        u8::from(self.nonzero())
    }
    fn to_i32(self) -> i32 {
        i32::from(self.to_u8())
    }
    fn to_i64(self) -> i64 {
        i64::from(self.to_u8())
    }
    fn nonzero(self) -> bool {
        self.0 != 0
    }
    fn from_scalar<S: Scalar>(s: S) -> Self {
        Bool8(u8::from(s.nonzero()))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::*;
    use crate::{Bool8, DType, Impl, KernelError, Tensor, TensorMeta};

    fn cast(x: &Tensor, to: &str) -> Tensor {
        launch("cast@1", &attrs(&[("to", s(to))]), &[x], Impl::Optimized).unwrap()
    }

    #[test]
    fn float_to_int_truncates_and_saturates() {
        let x = Tensor::from_vec(
            &[7],
            vec![1.9f32, -1.9, f32::NAN, 1e10, -1e10, f32::INFINITY, -0.0],
        )
        .unwrap();
        assert_eq!(
            cast(&x, "i32").to_vec::<i32>().unwrap(),
            vec![1, -1, 0, i32::MAX, i32::MIN, i32::MAX, 0]
        );
        assert_eq!(
            cast(&x, "u8").to_vec::<u8>().unwrap(),
            vec![1, 0, 0, 255, 0, 255, 0]
        );
        assert_eq!(
            cast(&x, "i8").to_vec::<i8>().unwrap(),
            vec![1, -1, 0, 127, -128, 127, 0]
        );
        let b: Vec<u8> = cast(&x, "bool")
            .to_vec::<Bool8>()
            .unwrap()
            .iter()
            .map(|v| v.0)
            .collect();
        assert_eq!(b, vec![1, 1, 1, 1, 1, 1, 0]);
        assert_eq!(cast(&x, "f64").to_vec::<f64>().unwrap()[0], 1.9f32 as f64);
    }

    #[test]
    fn ints_and_bools() {
        let x = Tensor::from_vec(&[4], vec![300i32, -1, 0, i32::MIN]).unwrap();
        assert_eq!(cast(&x, "u8").to_vec::<u8>().unwrap(), vec![44, 255, 0, 0]);
        assert_eq!(
            cast(&x, "i64").to_vec::<i64>().unwrap(),
            vec![300, -1, 0, i32::MIN as i64]
        );
        assert_eq!(
            cast(&x, "f32").to_vec::<f32>().unwrap(),
            vec![300.0, -1.0, 0.0, -2147483648.0]
        );
        let b = Tensor::from_vec(&[3], vec![Bool8(0), Bool8(1), Bool8(9)]).unwrap();
        assert_eq!(
            cast(&b, "f32").to_vec::<f32>().unwrap(),
            vec![0.0, 1.0, 1.0]
        );
        assert_eq!(cast(&b, "i64").to_vec::<i64>().unwrap(), vec![0, 1, 1]);
        assert_eq!(
            cast(&b, "bool").to_vec::<Bool8>().unwrap(),
            vec![Bool8(0), Bool8(1), Bool8(1)]
        );
        let big = Tensor::from_vec(&[1], vec![i64::MAX]).unwrap();
        assert_eq!(
            cast(&big, "f64").to_vec::<f64>().unwrap(),
            vec![9.223_372_036_854_776e18]
        );
    }

    #[test]
    fn signature() {
        let k = bind("cast@1", &attrs(&[("to", s("i64"))])).unwrap();
        let x = TensorMeta::new(DType::F32, [2, 0, 3]);
        assert_eq!(
            k.check(&[&x]).unwrap(),
            vec![TensorMeta::new(DType::I64, [2, 0, 3])]
        );
        let err = bind("cast@1", &attrs(&[("to", s("f16"))])).err().unwrap();
        assert!(
            matches!(&err, KernelError::Attrs { message, .. } if message.contains("one of: f32, f64, i8, u8, i32, i64, bool; got `f16`")),
            "{err}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_pair_matches_as_and_impls_agree(
            shape in prop::collection::vec(0usize..=4, 0..=3),
            seed in any::<u64>(),
            to in prop::sample::select(DType::ALL.to_vec()),
        ) {
            let x = float_tensor::<f64>(&shape, seed, true);
            let at = attrs(&[("to", s(to.name()))]);
            let r = launch("cast@1", &at, &[&x], Impl::Reference).unwrap();
            let o = launch("cast@1", &at, &[&x], Impl::Optimized).unwrap();
            prop_assert_eq!(r.bytes(), o.bytes());
            let xs = x.to_vec::<f64>().unwrap();
            match to {
                DType::I32 => prop_assert_eq!(r.to_vec::<i32>().unwrap(), xs.iter().map(|&v| v as i32).collect::<Vec<_>>()),
                DType::U8 => prop_assert_eq!(r.to_vec::<u8>().unwrap(), xs.iter().map(|&v| v as u8).collect::<Vec<_>>()),
                DType::Bool => prop_assert_eq!(
                    r.to_vec::<Bool8>().unwrap(),
                    xs.iter().map(|&v| Bool8(u8::from(v != 0.0))).collect::<Vec<_>>()
                ),
                _ => {}
            }
        }

        #[test]
        fn check_never_panics(m in adversarial_meta()) {
            check_is_consistent(&*bind("cast@1", &attrs(&[("to", s("bool"))])).unwrap(), &[&m, &m]);
        }
    }
}
