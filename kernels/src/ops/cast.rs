//! `cast@1`: converts every element to the dtype named by `to` (any dtype
//! name: `f32`, `f64`, `i8`, `u8`, `i16`, `u16`, `i32`, `u32`, `i64`, `u64`,
//! `bool`).
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
    fn to_i16(self) -> i16;
    fn to_u16(self) -> u16;
    fn to_u32(self) -> u32;
    fn to_u64(self) -> u64;
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
            fn to_i16(self) -> i16 {
                self as i16
            }
            fn to_u16(self) -> u16 {
                self as u16
            }
            fn to_u32(self) -> u32 {
                self as u32
            }
            fn to_u64(self) -> u64 {
                self as u64
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
impl_scalar!(i16, to_i16, 0);
impl_scalar!(u16, to_u16, 0);
impl_scalar!(u32, to_u32, 0);
impl_scalar!(u64, to_u64, 0);

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
    fn to_i16(self) -> i16 {
        i16::from(self.to_u8())
    }
    fn to_u16(self) -> u16 {
        u16::from(self.to_u8())
    }
    fn to_u32(self) -> u32 {
        u32::from(self.to_u8())
    }
    fn to_u64(self) -> u64 {
        u64::from(self.to_u8())
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

    /// Runs `$body` with `$T` bound to the Rust type of an integer dtype.
    macro_rules! with_int {
        ($d:expr, $T:ident => $body:expr) => {
            crate::ops::with_int!($d, $T => $body, d => panic!("{d} is not an integer dtype"))
        };
    }

    fn int_dtypes() -> Vec<DType> {
        DType::ALL.into_iter().filter(|d| d.is_int()).collect()
    }

    /// The elements of an integer or bool tensor, exactly.
    fn wide(t: &Tensor) -> Vec<i128> {
        if t.dtype() == DType::Bool {
            return t
                .to_vec::<Bool8>()
                .unwrap()
                .iter()
                .map(|b| i128::from(b.0))
                .collect();
        }
        with_int!(t.dtype(), T => t.to_vec::<T>().unwrap().into_iter().map(i128::from).collect())
    }

    /// The values of `vals` that `d` holds, as a tensor of `d`.
    fn fitting(d: DType, vals: &[i128]) -> Tensor {
        with_int!(d, T => {
            let v: Vec<T> = vals.iter().filter_map(|&x| T::try_from(x).ok()).collect();
            Tensor::from_vec(&[v.len()], v).unwrap()
        })
    }

    /// `v` reduced modulo 2^bits into the range of `d` (C's and numpy's
    /// integer conversion).
    fn wrap(v: i128, d: DType) -> i128 {
        let bits = 8 * d.size() as u32;
        let m = v.rem_euclid(1i128 << bits);
        let signed = with_int!(d, T => T::MIN != 0);
        if signed && m >= 1i128 << (bits - 1) {
            m - (1i128 << bits)
        } else {
            m
        }
    }

    fn bounds(d: DType) -> (i128, i128) {
        with_int!(d, T => (i128::from(T::MIN), i128::from(T::MAX)))
    }

    const INT_EDGES: [i128; 24] = [
        i64::MIN as i128,
        -(1 << 31) - 1,
        -(1 << 31),
        -32769,
        -32768,
        -129,
        -128,
        -1,
        0,
        1,
        127,
        128,
        255,
        256,
        32767,
        32768,
        65535,
        65536,
        i32::MAX as i128,
        1 << 31,
        u32::MAX as i128,
        1 << 32,
        i64::MAX as i128,
        u64::MAX as i128,
    ];

    #[test]
    fn every_int_pair_wraps_modulo_the_target_width() {
        for from in int_dtypes() {
            let x = fitting(from, &INT_EDGES);
            let xs = wide(&x);
            assert!(xs.len() >= 5, "{from} holds at least the 8-bit edges");
            for to in int_dtypes() {
                let y = cast(&x, to.name());
                assert_eq!(y.dtype(), to);
                let want: Vec<i128> = xs.iter().map(|&v| wrap(v, to)).collect();
                assert_eq!(wide(&y), want, "{from} -> {to}");
            }
            let b = cast(&x, "bool");
            assert_eq!(
                wide(&b),
                xs.iter().map(|&v| i128::from(v != 0)).collect::<Vec<_>>()
            );
            // To a float: the nearest value (i128 to f64/f32 rounds once).
            let f = cast(&x, "f64").to_vec::<f64>().unwrap();
            assert_eq!(
                f,
                xs.iter().map(|&v| v as f64).collect::<Vec<_>>(),
                "{from} -> f64"
            );
            let f = cast(&x, "f32").to_vec::<f32>().unwrap();
            assert_eq!(
                f,
                xs.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                "{from} -> f32"
            );
        }
        // Bool to each new type is 0 or 1.
        let b = Tensor::from_vec(&[3], vec![Bool8(0), Bool8(1), Bool8(200)]).unwrap();
        for to in [DType::I16, DType::U16, DType::U32, DType::U64] {
            assert_eq!(wide(&cast(&b, to.name())), vec![0, 1, 1], "bool -> {to}");
        }
    }

    #[test]
    fn float_to_new_ints_truncates_and_saturates() {
        let vals = [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            1.9,
            -1.9,
            -32768.9,
            32767.9,
            65535.7,
            65536.0,
            3.0e9,
            -3.0e9,
            1.8e19,
            2.0e19,
            -1.0e30,
        ];
        let x64 = Tensor::from_vec(&[vals.len()], vals.to_vec()).unwrap();
        let x32 =
            Tensor::from_vec(&[vals.len()], vals.iter().map(|&v| v as f32).collect()).unwrap();
        for (x, xs) in [
            (&x64, vals.to_vec()),
            (
                &x32,
                vals.iter()
                    .map(|&v| f64::from(v as f32))
                    .collect::<Vec<f64>>(),
            ),
        ] {
            for to in [DType::I16, DType::U16, DType::U32, DType::U64] {
                let (lo, hi) = bounds(to);
                // Truncate toward zero, then clamp; NaN is 0.
                let want: Vec<i128> = xs
                    .iter()
                    .map(|&v| {
                        let t = v.trunc();
                        if v.is_nan() {
                            0
                        } else if t <= lo as f64 {
                            lo
                        } else if t >= hi as f64 {
                            hi
                        } else {
                            t as i128
                        }
                    })
                    .collect();
                assert_eq!(wide(&cast(x, to.name())), want, "{} -> {to}", x.dtype());
            }
        }
        // Spelled out: the u64 case above i64::MAX, and saturation.
        assert_eq!(
            cast(&x64, "u64").to_vec::<u64>().unwrap()[12],
            18_000_000_000_000_000_000
        );
        assert_eq!(cast(&x64, "u16").to_vec::<u16>().unwrap()[9], u16::MAX);
        assert_eq!(cast(&x64, "i16").to_vec::<i16>().unwrap()[6], i16::MIN);
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
            matches!(&err, KernelError::Attrs { message, .. } if message.contains("one of: f32, f64, i8, u8, i16, u16, i32, u32, i64, u64, bool; got `f16`")),
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
                DType::I16 => prop_assert_eq!(r.to_vec::<i16>().unwrap(), xs.iter().map(|&v| v as i16).collect::<Vec<_>>()),
                DType::U16 => prop_assert_eq!(r.to_vec::<u16>().unwrap(), xs.iter().map(|&v| v as u16).collect::<Vec<_>>()),
                DType::U32 => prop_assert_eq!(r.to_vec::<u32>().unwrap(), xs.iter().map(|&v| v as u32).collect::<Vec<_>>()),
                DType::U64 => prop_assert_eq!(r.to_vec::<u64>().unwrap(), xs.iter().map(|&v| v as u64).collect::<Vec<_>>()),
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
