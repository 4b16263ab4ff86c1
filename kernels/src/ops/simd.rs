//! Elementwise loops compiled three times, for the baseline x86-64 ISA
//! (SSE2, 4 f32 lanes), for AVX2 (8 lanes) and for AVX-512F (16 lanes),
//! with the variant picked once per call from the running CPU's features.
//!
//! All variants come from the same source and Rust never contracts `a * b +
//! c` into a fused multiply-add, so they compute the same bits: the choice
//! changes speed only, never results. Other architectures get the plain
//! loop.

/// Runs `f`, compiled for AVX-512F or AVX2 when the CPU has it. Everything `f` calls
/// must be inlined into it (`#[inline(always)]`, closures, small generic
/// helpers) for the wider code generation to reach its loops.
#[inline(always)]
pub(crate) fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, checked just above.
        #[allow(unsafe_code)]
        unsafe {
            return avx512(f);
        }
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        #[allow(unsafe_code)]
        unsafe {
            return avx2(f);
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `y[i] = f(x[i])`.
#[inline]
pub(crate) fn map<T: Copy>(y: &mut [T], x: &[T], f: impl Fn(T) -> T) {
    vectorized(
        #[inline(always)]
        || map_plain(y, x, f),
    )
}

#[inline(always)]
fn map_plain<T: Copy>(y: &mut [T], x: &[T], f: impl Fn(T) -> T) {
    for (slot, &v) in y.iter_mut().zip(x) {
        *slot = f(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_computes_the_same_bits() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.037).collect();
        let f = |v: f32| super::super::math::tanh(v) * super::super::math::exp(-v * v);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let mut plain = vec![0.0; x.len()];
        map_plain(&mut plain, &x, f);
        for (got, &v) in plain.iter().zip(&x) {
            assert_eq!(got.to_bits(), f(v).to_bits());
        }
        let mut picked = vec![0.0; x.len()];
        map(&mut picked, &x, f);
        assert_eq!(bits(&picked), bits(&plain));
        #[cfg(target_arch = "x86_64")]
        for (feature, on) in [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ] {
            if !on {
                continue;
            }
            let mut y = vec![0.0; x.len()];
            let run = || map_plain(&mut y, &x, f);
            // SAFETY: the CPU has the feature, checked above.
            #[allow(unsafe_code)]
            unsafe {
                if feature == "avx2" {
                    avx2(run)
                } else {
                    avx512(run)
                }
            };
            assert_eq!(bits(&y), bits(&plain), "{feature}");
        }
    }
}
