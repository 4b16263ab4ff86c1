//! Scalar semantics of the element types, written once and used by both the
//! reference and the optimized implementations.
//!
//! - Integer `add`, `sub`, `mul` and `pow` wrap (numpy's behaviour); integer
//!   `div` truncates toward zero (C and ONNX), and `MIN / -1` wraps to `MIN`.
//!   Division by zero and negative exponents are refused before any element
//!   is computed ([`Arith::check_div`], [`Arith::check_pow`]), and the scalar
//!   functions are total anyway, so no input can make them panic.
//! - Float `max` and `min` propagate NaN, and order `-0.0` below `+0.0`.

use std::ops::{Add, Div, Mul, Neg, Sub};

use crate::Element;

/// f32 and f64: the float dtypes.
pub(crate) trait Float:
    Element
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    const NAN: Self;
    const NEG_INFINITY: Self;
    fn from_f64(x: f64) -> Self;
    fn from_usize(x: usize) -> Self;
    fn is_nan(self) -> bool;
    fn abs(self) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn sin(self) -> Self;
    fn cos(self) -> Self;
    fn floor(self) -> Self;
    fn ceil(self) -> Self;
    fn erf(self) -> Self;
    fn is_sign_negative(self) -> bool;
}

macro_rules! impl_float {
    ($t:ident, $exp:path, $tanh:path, $erf:path) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NAN: Self = $t::NAN;
            const NEG_INFINITY: Self = $t::NEG_INFINITY;
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            fn from_usize(x: usize) -> Self {
                x as $t
            }
            fn is_nan(self) -> bool {
                $t::is_nan(self)
            }
            fn abs(self) -> Self {
                $t::abs(self)
            }
            #[inline(always)]
            fn exp(self) -> Self {
                $exp(self)
            }
            fn ln(self) -> Self {
                $t::ln(self)
            }
            fn sqrt(self) -> Self {
                $t::sqrt(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                $tanh(self)
            }
            fn sin(self) -> Self {
                $t::sin(self)
            }
            fn cos(self) -> Self {
                $t::cos(self)
            }
            fn floor(self) -> Self {
                $t::floor(self)
            }
            fn ceil(self) -> Self {
                $t::ceil(self)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            fn is_sign_negative(self) -> bool {
                $t::is_sign_negative(self)
            }
        }
    };
}

// f32's transcendental functions are ours (`math`: the same bits on every
// host, and vectorizable); f64 keeps the platform's.
impl_float!(f32, super::math::exp, super::math::tanh, super::math::erf);
impl_float!(f64, f64::exp, f64::tanh, libm::erf);

/// NaN-propagating maximum that orders `-0.0` below `+0.0`.
#[inline]
pub(crate) fn fmax<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        T::NAN
    } else if a > b || (a == b && b.is_sign_negative()) {
        a
    } else {
        b
    }
}

/// NaN-propagating minimum that orders `-0.0` below `+0.0`.
#[inline]
pub(crate) fn fmin<T: Float>(a: T, b: T) -> T {
    if a.is_nan() || b.is_nan() {
        T::NAN
    } else if a < b || (a == b && a.is_sign_negative()) {
        a
    } else {
        b
    }
}

/// The element types of `binary@1` and `reduce@1` (floats and ints).
pub(crate) trait Arith: Element + PartialOrd {
    const ZERO: Self;
    /// The identity of `max` (the smallest value, `-inf` for floats).
    const LOWEST: Self;
    /// The identity of `min`.
    const HIGHEST: Self;
    fn add(a: Self, b: Self) -> Self;
    fn sub(a: Self, b: Self) -> Self;
    fn mul(a: Self, b: Self) -> Self;
    fn div(a: Self, b: Self) -> Self;
    fn pow(a: Self, b: Self) -> Self;
    fn max(a: Self, b: Self) -> Self;
    fn min(a: Self, b: Self) -> Self;
    /// Refuses divisors `div` cannot take (integer zero).
    fn check_div(divisors: &[Self]) -> Result<(), String>;
    /// Refuses exponents `pow` cannot take (negative integers).
    fn check_pow(exponents: &[Self]) -> Result<(), String>;
}

macro_rules! impl_arith_float {
    ($t:ident) => {
        impl Arith for $t {
            const ZERO: Self = 0.0;
            const LOWEST: Self = $t::NEG_INFINITY;
            const HIGHEST: Self = $t::INFINITY;
            #[inline]
            fn add(a: Self, b: Self) -> Self {
                a + b
            }
            #[inline]
            fn sub(a: Self, b: Self) -> Self {
                a - b
            }
            #[inline]
            fn mul(a: Self, b: Self) -> Self {
                a * b
            }
            #[inline]
            fn div(a: Self, b: Self) -> Self {
                a / b
            }
            /// Squaring (a variance, a power spectrum) is a product: the
            /// correctly rounded value, without a `powf` call.
            #[inline]
            fn pow(a: Self, b: Self) -> Self {
                if b == 2.0 {
                    a * a
                } else {
                    a.powf(b)
                }
            }
            #[inline]
            fn max(a: Self, b: Self) -> Self {
                fmax(a, b)
            }
            #[inline]
            fn min(a: Self, b: Self) -> Self {
                fmin(a, b)
            }
            fn check_div(_: &[Self]) -> Result<(), String> {
                Ok(())
            }
            fn check_pow(_: &[Self]) -> Result<(), String> {
                Ok(())
            }
        }
    };
}

impl_arith_float!(f32);
impl_arith_float!(f64);

/// `base ^ exp` with wrapping multiplication, by squaring.
#[inline]
fn wrapping_ipow<T: Copy>(mut base: T, mut exp: u64, one: T, mul: impl Fn(T, T) -> T) -> T {
    let mut acc = one;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul(acc, base);
        }
        exp >>= 1;
        if exp > 0 {
            base = mul(base, base);
        }
    }
    acc
}

macro_rules! impl_arith_int {
    ($t:ident) => {
        impl Arith for $t {
            const ZERO: Self = 0;
            const LOWEST: Self = $t::MIN;
            const HIGHEST: Self = $t::MAX;
            #[inline]
            fn add(a: Self, b: Self) -> Self {
                a.wrapping_add(b)
            }
            #[inline]
            fn sub(a: Self, b: Self) -> Self {
                a.wrapping_sub(b)
            }
            #[inline]
            fn mul(a: Self, b: Self) -> Self {
                a.wrapping_mul(b)
            }
            #[inline]
            fn div(a: Self, b: Self) -> Self {
                // `check_div` refused zero divisors; the branch keeps this
                // function total regardless.
                if b == 0 {
                    0
                } else {
                    a.wrapping_div(b)
                }
            }
            #[inline]
            fn pow(a: Self, b: Self) -> Self {
                // `check_pow` refused negative exponents; they map to 0 here
                // only to keep this function total.
                let e = u64::try_from(b).unwrap_or(0);
                wrapping_ipow(a, e, 1, $t::wrapping_mul)
            }
            #[inline]
            fn max(a: Self, b: Self) -> Self {
                Ord::max(a, b)
            }
            #[inline]
            fn min(a: Self, b: Self) -> Self {
                Ord::min(a, b)
            }
            fn check_div(divisors: &[Self]) -> Result<(), String> {
                match divisors.iter().position(|&d| d == 0) {
                    Some(i) => Err(format!(
                        "integer division by zero (input 1 (b), element {i})"
                    )),
                    None => Ok(()),
                }
            }
            #[allow(unused_comparisons)]
            fn check_pow(exponents: &[Self]) -> Result<(), String> {
                match exponents.iter().position(|&e| e < 0) {
                    Some(i) => Err(format!(
                        "integer pow with negative exponent {} (input 1 (b), element {i})",
                        exponents[i]
                    )),
                    None => Ok(()),
                }
            }
        }
    };
}

impl_arith_int!(i8);
impl_arith_int!(u8);
impl_arith_int!(i32);
impl_arith_int!(i64);
impl_arith_int!(i16);
impl_arith_int!(u16);
impl_arith_int!(u32);
impl_arith_int!(u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_max_min_propagate_nan_and_order_zeros() {
        assert!(fmax(1.0f32, f32::NAN).is_nan());
        assert!(fmin(f64::NAN, 1.0).is_nan());
        assert_eq!(fmax(-0.0f32, 0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(fmax(0.0f32, -0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(fmin(0.0f32, -0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(fmin(-0.0f32, 0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(fmax(2.0f64, -3.0), 2.0);
        assert_eq!(fmin(2.0f64, -3.0), -3.0);
    }

    #[test]
    fn int_arith_wraps_and_truncates() {
        assert_eq!(<i8 as Arith>::add(127, 1), -128);
        assert_eq!(<u8 as Arith>::sub(0, 1), 255);
        assert_eq!(<i32 as Arith>::div(-7, 2), -3);
        assert_eq!(<i32 as Arith>::div(i32::MIN, -1), i32::MIN);
        assert_eq!(<i64 as Arith>::pow(3, 4), 81);
        assert_eq!(<i64 as Arith>::pow(-2, 63), i64::MIN);
        assert_eq!(<i64 as Arith>::pow(7, 0), 1);
        assert_eq!(<u8 as Arith>::pow(2, 8), 0);
        // A huge exponent costs at most 64 squarings.
        assert_eq!(<i64 as Arith>::pow(1, i64::MAX), 1);
        assert_eq!(<i32 as Arith>::div(5, 0), 0);
        assert!(<i32 as Arith>::check_div(&[1, 0])
            .unwrap_err()
            .contains("element 1"));
        assert!(<i8 as Arith>::check_pow(&[1, -2])
            .unwrap_err()
            .contains("negative exponent -2"));
        assert!(<u8 as Arith>::check_pow(&[255]).is_ok());
    }

    #[test]
    fn sixteen_bit_and_unsigned_arith_wraps_and_orders_unsigned() {
        assert_eq!(<i16 as Arith>::add(i16::MAX, 1), i16::MIN);
        assert_eq!(<i16 as Arith>::div(i16::MIN, -1), i16::MIN);
        assert_eq!(<i16 as Arith>::div(-7, 2), -3);
        assert_eq!(<u16 as Arith>::sub(0, 1), u16::MAX);
        assert_eq!(<u16 as Arith>::mul(256, 256), 0);
        assert_eq!(<u32 as Arith>::pow(2, 32), 0);
        assert_eq!(<u32 as Arith>::pow(3, 3), 27);
        // u64 values above i64::MAX stay unsigned: they divide and order as
        // the numbers they are, not as negative i64s.
        let big = (1u64 << 63) + 6;
        assert_eq!(<u64 as Arith>::div(big, 2), (1 << 62) + 3);
        assert_eq!(<u64 as Arith>::max(big, 1), big);
        assert_eq!(<u64 as Arith>::min(big, 1), 1);
        assert_eq!(<u64 as Arith>::add(u64::MAX, 2), 1);
        assert_eq!(<u64 as Arith>::LOWEST, 0);
        assert_eq!(<u16 as Arith>::HIGHEST, u16::MAX);
        assert!(<u64 as Arith>::check_pow(&[u64::MAX]).is_ok());
        assert!(<i16 as Arith>::check_pow(&[-1]).is_err());
        assert!(<u32 as Arith>::check_div(&[3, 0])
            .unwrap_err()
            .contains("element 1"));
    }

    #[test]
    fn erf_matches_known_values() {
        // Values from Abramowitz & Stegun, table 7.1.
        assert!((Float::erf(0.5f64) - 0.520_499_877_813_046_5).abs() < 1e-15);
        assert!((Float::erf(1.0f64) - 0.842_700_792_949_714_9).abs() < 1e-15);
        assert!((Float::erf(-2.0f32) + 0.995_322_3).abs() < 1e-6);
        assert_eq!(Float::erf(f64::INFINITY), 1.0);
    }
}
