//! Test helpers shared by the family tests: launching a kernel the way the
//! host does, seeded data with edge values, proptest strategies for
//! broadcastable and adversarial shapes, and comparisons with a tolerance.

use std::sync::Arc;

use proptest::prelude::*;

use super::num::Float;
use crate::{
    AttrValue, Attrs, Bound, DType, Element, Impl, KernelError, Registry, Tensor, TensorMeta,
    MAX_RANK,
};

pub(crate) const IMPLS: [Impl; 2] = [Impl::Reference, Impl::Optimized];

pub(crate) fn attrs(pairs: &[(&str, AttrValue)]) -> Attrs {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

pub(crate) fn s(v: &str) -> AttrValue {
    AttrValue::Str(v.to_string())
}

pub(crate) fn i(v: i64) -> AttrValue {
    AttrValue::Int(v)
}

pub(crate) fn ints(v: &[i64]) -> AttrValue {
    AttrValue::Ints(v.to_vec())
}

pub(crate) fn bind(id: &str, attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    Registry::standard().bind(id, attrs)
}

/// Binds, checks, allocates the output and runs, as the host does.
pub(crate) fn launch(
    id: &str,
    attrs: &Attrs,
    inputs: &[&Tensor],
    imp: Impl,
) -> Result<Tensor, KernelError> {
    let k = bind(id, attrs)?;
    let metas: Vec<&TensorMeta> = inputs.iter().map(|t| t.meta()).collect();
    let out = k.check(&metas)?;
    assert_eq!(out.len(), 1, "every kernel has one output");
    let mut outs = vec![Tensor::zeros(out[0].dtype, &out[0].shape).expect("checked output meta")];
    k.run(imp, inputs, &mut outs)?;
    Ok(outs.remove(0))
}

/// splitmix64: a tiny deterministic generator for test data.
pub(crate) struct Gen(pub(crate) u64);

impl Gen {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Values that break careless kernels.
pub(crate) const EDGES: [f64; 12] = [
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    -0.0,
    0.0,
    3.0e38,
    -3.0e38,
    1.0e-38,
    1.0e-45,
    1.0,
    -1.0,
    0.5,
];

/// `n` values uniform in [-10, 10); with `edges`, one in 16 is from [`EDGES`].
pub(crate) fn float_values<T: Float>(n: usize, seed: u64, edges: bool) -> Vec<T> {
    let mut g = Gen(seed);
    (0..n)
        .map(|_| {
            let r = g.next();
            if edges && r.is_multiple_of(16) {
                T::from_f64(EDGES[(r >> 8) as usize % EDGES.len()])
            } else {
                T::from_f64(g.unit() * 20.0 - 10.0)
            }
        })
        .collect()
}

pub(crate) fn float_tensor<T: Float>(shape: &[usize], seed: u64, edges: bool) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(shape, float_values::<T>(n, seed, edges)).expect("test tensor")
}

/// A tensor of ints uniform in `lo..hi`.
pub(crate) fn int_tensor<T: Element + TryFrom<i64> + Default>(
    shape: &[usize],
    seed: u64,
    lo: i64,
    hi: i64,
) -> Tensor {
    let n: usize = shape.iter().product();
    let mut g = Gen(seed);
    let span = (hi - lo).max(1) as u64;
    let values = (0..n)
        .map(|_| T::try_from(lo + (g.next() % span) as i64).unwrap_or_default())
        .collect();
    Tensor::from_vec(shape, values).expect("test tensor")
}

/// A random shape: mostly small (dims 0..=5, rank 0..=4), sometimes large
/// enough to reach the parallel paths.
pub(crate) fn shape_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        6 => prop::collection::vec(0usize..=5, 0..=4),
        1 => prop::collection::vec(1usize..=3, 0..=2).prop_map(|mut v| {
            v.insert(0, 131);
            v.push(513);
            v
        }),
    ]
}

/// Two shapes whose broadcast is exactly `out`: each dim of `out` is kept
/// by both, only the first or only the second (the other has 1 there), as
/// `bits` chooses; an input may drop its leading 1s.
pub(crate) fn broadcast_split(out: &[usize], bits: u64) -> (Vec<usize>, Vec<usize>) {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (j, &d) in out.iter().enumerate() {
        let (in_a, in_b) = match (bits >> (2 * j)) & 3 {
            0 | 1 => (true, true),
            2 => (true, false),
            _ => (false, true),
        };
        a.push(if in_a { d } else { 1 });
        b.push(if in_b { d } else { 1 });
    }
    let trim = |v: &mut Vec<usize>, bit: u64| {
        if (bits >> bit) & 1 == 1 {
            let ones = v.iter().take_while(|&&d| d == 1).count();
            v.drain(..ones);
        }
    };
    trim(&mut a, 40);
    trim(&mut b, 41);
    (a, b)
}

/// Two shapes that broadcast to a [`shape_strategy`] shape; a third of the
/// time they are equal.
pub(crate) fn broadcast_pair() -> impl Strategy<Value = (Vec<usize>, Vec<usize>)> {
    (shape_strategy(), any::<u64>(), 0..3).prop_map(|(out, bits, same)| {
        if same == 0 {
            (out.clone(), out)
        } else {
            broadcast_split(&out, bits)
        }
    })
}

/// A meta no honest launch would have: any dtype, rank up to MAX_RANK + 2,
/// dims from tiny to `usize::MAX`.
pub(crate) fn adversarial_meta() -> impl Strategy<Value = TensorMeta> {
    let dim = prop_oneof![4 => 0usize..4, 1 => Just(usize::MAX), 1 => any::<usize>(), 1 => Just(1usize << 32)];
    (
        prop::sample::select(DType::ALL.to_vec()),
        prop::collection::vec(dim, 0..=MAX_RANK + 2),
    )
        .prop_map(|(dtype, shape)| TensorMeta::new(dtype, shape))
}

/// Runs `check` on every prefix of `metas` (so wrong counts too) and
/// requires that accepted launches have addressable outputs.
pub(crate) fn check_is_consistent(k: &dyn Bound, metas: &[&TensorMeta]) {
    for n in 0..=metas.len() {
        if let Ok(outs) = k.check(&metas[..n]) {
            assert_eq!(n, k.arity().inputs);
            for o in outs {
                assert!(o.shape.len() <= MAX_RANK, "{o}");
                assert!(
                    o.byte_len().is_some_and(|b| b <= isize::MAX as usize),
                    "{o}"
                );
            }
        }
    }
}

/// Float elements as f64, or `None` for non-float tensors.
fn as_f64(t: &Tensor) -> Option<Vec<f64>> {
    match t.dtype() {
        DType::F32 => Some(t.to_vec::<f32>().ok()?.into_iter().map(f64::from).collect()),
        DType::F64 => t.to_vec::<f64>().ok(),
        _ => None,
    }
}

/// Same meta, and the same bits (any NaN matches any NaN).
pub(crate) fn assert_same_bits(reference: &Tensor, actual: &Tensor) {
    assert_eq!(reference.meta(), actual.meta());
    match (as_f64(reference), as_f64(actual)) {
        (Some(r), Some(a)) => {
            for (k, (x, y)) in r.iter().zip(&a).enumerate() {
                assert!(
                    (x.is_nan() && y.is_nan()) || x.to_bits() == y.to_bits(),
                    "element {k}: reference {x:e}, optimized {y:e}"
                );
            }
        }
        _ => assert_eq!(reference.bytes(), actual.bytes()),
    }
}

/// Same meta, and every element within `tol(k, reference)` of the
/// reference; NaN and infinities must match exactly.
pub(crate) fn assert_close_with(
    reference: &Tensor,
    actual: &Tensor,
    tol: impl Fn(usize, f64) -> f64,
) {
    assert_eq!(reference.meta(), actual.meta());
    let (r, a) = (
        as_f64(reference).expect("float tensor"),
        as_f64(actual).expect("float tensor"),
    );
    for (k, (x, y)) in r.iter().zip(&a).enumerate() {
        let ok = if x.is_nan() || y.is_nan() || x.is_infinite() || y.is_infinite() {
            (x.is_nan() && y.is_nan()) || x == y
        } else {
            (x - y).abs() <= tol(k, *x)
        };
        assert!(
            ok,
            "element {k}: reference {x:e}, optimized {y:e}, tolerance {:e}",
            tol(k, *x)
        );
    }
}

/// [`assert_close_with`] with `abs + rel * |reference|`.
pub(crate) fn assert_close(reference: &Tensor, actual: &Tensor, rel: f64, abs: f64) {
    assert_close_with(reference, actual, |_, x| abs + rel * x.abs());
}

/// Elements of a float tensor as f64, for direct computations in tests.
pub(crate) fn f64s(t: &Tensor) -> Vec<f64> {
    as_f64(t).expect("float tensor")
}

/// NaN, infinities and negative zero: the edge values whose handling is
/// independent of summation order.
pub(crate) const SPECIALS: [f64; 4] = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0];

/// A copy of a float tensor with about one element in 32 replaced by one of
/// [`SPECIALS`].
pub(crate) fn with_specials(t: &Tensor, seed: u64) -> Tensor {
    let mut vals = f64s(t);
    let mut g = Gen(seed);
    for v in vals.iter_mut() {
        if g.next().is_multiple_of(32) {
            *v = SPECIALS[(g.next() % SPECIALS.len() as u64) as usize];
        }
    }
    match t.dtype() {
        DType::F32 => Tensor::from_vec(t.shape(), vals.iter().map(|&v| v as f32).collect()),
        _ => Tensor::from_vec(t.shape(), vals),
    }
    .expect("same shape")
}
