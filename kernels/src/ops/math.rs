//! f32 `exp`, `tanh` and `erf` written in plain IEEE arithmetic (add,
//! multiply, divide, compare, bit moves; no libm and no fused multiply-add).
//!
//! Two reasons, both from the design's performance and portability model:
//! - **Same bits everywhere.** libm's `expf`/`tanhf`/`erff` differ between
//!   glibc, musl and macOS; these functions give the same result on every
//!   host, so a package's reference outputs replay exactly.
//! - **Speed.** They have no calls and no data-dependent branches (each
//!   range is computed and the right one selected), so loops over them
//!   vectorize; `tanh` was a quarter of the time of some models as a libm
//!   call per element.
//!
//! Accuracy (checked against libm's f64 functions in the tests): `exp` and
//! `tanh` within 2 ulp in the normal range, `erf` within 3e-7 absolute. NaN
//! maps to NaN and infinities to the limits.
// Polynomial coefficients keep the digits their sources print, more than
// f32 holds; the compiler rounds each to the nearest f32.
#![allow(clippy::excessive_precision)]

/// `e^x`: Cody-Waite reduction `x = n ln2 + r` and Cephes' degree-6
/// polynomial for `e^r`, scaled by `2^n` in two steps so that results in the
/// subnormal range are not flushed to zero.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split so that `n * LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_375;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Past these the result is +inf / 0; clamping keeps `n` in range (NaN is
    // selected back at the end).
    let xc = clamp(x, -104.0, 88.8);
    let n = round(xc * LOG2E);
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_2e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let y = p * (r * r) + r + 1.0;
    // 2^n = 2^h * 2^(n-h), each factor a normal float (n is in [-150, 128]).
    let n = n as i32;
    let h = n >> 1;
    let y = y * pow2(h) * pow2(n - h);
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// `tanh(x)`: Cephes' odd polynomial below `|x| = 0.625`, else
/// `1 - 2 / (e^(2|x|) + 1)` with the sign of `x`.
#[inline(always)]
pub(crate) fn tanh(x: f32) -> f32 {
    let z = x.abs();
    let x2 = x * x;
    let p = -5.704_988_7e-3;
    let p = p * x2 + 2.063_908_9e-2;
    let p = p * x2 - 5.373_971_6e-2;
    let p = p * x2 + 1.333_144_2e-1;
    let p = p * x2 - 3.333_328_2e-1;
    let small = p * x2 * x + x;
    // e^(2z) overflows to +inf past z ~ 44, where 2 / inf = 0 gives 1.
    let large = 1.0 - 2.0 / (exp(z + z) + 1.0);
    let large = if x < 0.0 { -large } else { large };
    if z < 0.625 || x.is_nan() {
        small
    } else {
        large
    }
}

/// `erf(x)`: its Maclaurin series below `|x| = 0.5`, else `1 - erfc(|x|)`
/// with the sign of `x`, where `erfc(z) = t e^(-z^2 + P(t))`, `t = 1/(1 +
/// z/2)` (Numerical Recipes' Chebyshev fit, relative error below 1.2e-7).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    const TWO_OVER_SQRT_PI: f32 = std::f32::consts::FRAC_2_SQRT_PI;
    let x2 = x * x;
    // Terms through x^13: the next is below 5e-10 at |x| = 0.5.
    let s = 1.0 / 9360.0;
    let s = s * x2 - 1.0 / 1320.0;
    let s = s * x2 + 1.0 / 216.0;
    let s = s * x2 - 1.0 / 42.0;
    let s = s * x2 + 1.0 / 10.0;
    let s = s * x2 - 1.0 / 3.0;
    let s = s * x2 + 1.0;
    let small = TWO_OVER_SQRT_PI * x * s;
    // Past 4 erf(z) rounds to 1 in f32; clamping keeps e^(-z^2) finite.
    let z = clamp(x.abs(), 0.0, 4.0);
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = 0.170_872_77;
    let p = p * t - 0.822_152_23;
    let p = p * t + 1.488_515_9;
    let p = p * t - 1.135_203_98;
    let p = p * t + 0.278_868_07;
    let p = p * t - 0.186_288_06;
    let p = p * t + 0.096_784_18;
    let p = p * t + 0.374_091_96;
    let p = p * t + 1.000_023_7;
    let p = p * t - 1.265_512_2;
    let erfc = t * exp(-z * z + p);
    let large = 1.0 - erfc;
    let large = if x < 0.0 { -large } else { large };
    if x.abs() < 0.5 || x.is_nan() {
        small
    } else {
        large
    }
}

/// `x` limited to `[lo, hi]`, by compares only (NaN comes out as `lo`; the
/// callers select NaN back themselves).
#[inline(always)]
fn clamp(x: f32, lo: f32, hi: f32) -> f32 {
    let x = if x > lo { x } else { lo };
    if x < hi {
        x
    } else {
        hi
    }
}

/// `x` rounded to the nearest integer, ties to even, for `|x| < 2^22`: adding
/// and subtracting `1.5 * 2^23` leaves no fraction bits.
#[inline(always)]
fn round(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// `2^k` for `k` in `[-126, 127]`, built from its exponent bits.
#[inline(always)]
fn pow2(k: i32) -> f32 {
    f32::from_bits(((k + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units of the last place between two finite f32 of the
    /// same sign (or between +-0).
    fn ulps(a: f32, b: f32) -> u32 {
        let key = |v: f32| {
            let bits = v.to_bits() as i32;
            if bits < 0 {
                i32::MIN - bits
            } else {
                bits
            }
        };
        key(a).abs_diff(key(b))
    }

    /// Every `step`-th f32 bit pattern in `[lo, hi]` (both signs).
    fn sweep(lo: f32, hi: f32, step: u32) -> impl Iterator<Item = f32> {
        (lo.to_bits()..=hi.to_bits())
            .step_by(step as usize)
            .map(f32::from_bits)
            .flat_map(|v| [v, -v])
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_f64_result() {
        for x in sweep(1e-8, 88.7, 997) {
            let want = (x as f64).exp() as f32;
            let got = exp(x);
            if want >= f32::MIN_POSITIVE {
                assert!(ulps(got, want) <= 2, "exp({x}) = {got}, want {want}");
            } else {
                // Subnormal results: absolute error below one subnormal step
                // times a few (the two-step scaling rounds twice).
                assert!(
                    (got - want).abs() <= 4.0 * f32::from_bits(1),
                    "exp({x}) = {got}, want {want}"
                );
            }
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(89.0), f32::INFINITY);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_is_within_two_ulp_of_the_f64_result() {
        for x in sweep(1e-30, 20.0, 991) {
            let want = (x as f64).tanh() as f32;
            let got = tanh(x);
            assert!(ulps(got, want) <= 2, "tanh({x}) = {got}, want {want}");
        }
        assert_eq!(tanh(0.0), 0.0);
        assert_eq!(tanh(100.0), 1.0);
        assert_eq!(tanh(-100.0), -1.0);
        assert_eq!(tanh(f32::INFINITY), 1.0);
        assert_eq!(tanh(f32::NEG_INFINITY), -1.0);
        assert!(tanh(f32::NAN).is_nan());
    }

    #[test]
    fn erf_is_within_3e_7_of_the_f64_result() {
        for x in sweep(1e-30, 10.0, 991) {
            let want = libm::erf(x as f64);
            let got = erf(x) as f64;
            let err = (got - want).abs();
            // Relative below 0.5, where erf is small; absolute past it.
            assert!(
                err <= 3e-7 * (2.0 * want.abs()).min(1.0),
                "erf({x}) = {got}, want {want}"
            );
        }
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
        assert!(erf(f32::NAN).is_nan());
    }
}
