//! `unary@1`: elementwise float functions.
//!
//! Definitions (x is f32 or f64, computed in its own precision):
//! `relu(x) = x > 0 ? x : 0` (NaN stays NaN), `gelu(x) = x/2 (1 + erf(x/√2))`,
//! `gelu_tanh(x) = x/2 (1 + tanh(√(2/π) (x + 0.044715 x³)))`,
//! `sigmoid(x) = 1 / (1 + e^-x)`, `rsqrt(x) = 1/√x`, `recip(x) = 1/x`.
//! f32 `exp`, `tanh` and `erf` are [`super::math`]'s (the same bits on every
//! host); the others, and f64's, are the platform's.
//!
//! Ops with attributes (absent means the default; floats may be given as
//! ints; any other attribute is refused):
//! `leaky_relu(x) = x < 0 ? alpha x : x` (`alpha`, default 0.01),
//! `hard_sigmoid(x) = max(0, min(1, alpha x + beta))` (`alpha` 0.2, `beta`
//! 0.5), and `hard_swish(x) = x hard_sigmoid(x)` with alpha 1/6 and beta 0.5
//! (no attributes). `alpha` and `beta` are rounded to the element type; the
//! products and sums are not fused, and `min`/`max` propagate NaN, so NaN
//! in gives NaN out.
//!
//! Both implementations call the same scalar function, so they agree
//! bitwise; the optimized one runs it in a tight slice loop, split across
//! rayon's pool from [`PAR_MIN`] elements.

use std::sync::Arc;

use rayon::prelude::*;

use super::attrs::AttrReader;
use super::num::{fmax, fmin, Float};
use super::{bound, check_float, data, data_mut, operands, worth_splitting, Op, PAR_MIN};
use crate::{Attrs, Bound, Impl, KernelError, Tensor, TensorMeta};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UnaryOp {
    Neg,
    Abs,
    Relu,
    Gelu,
    GeluTanh,
    Tanh,
    Sigmoid,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Recip,
    Erf,
    Floor,
    Ceil,
    Sin,
    Cos,
    LeakyRelu,
    HardSigmoid,
    HardSwish,
}

pub(crate) const OPS: [(&str, UnaryOp); 20] = [
    ("neg", UnaryOp::Neg),
    ("abs", UnaryOp::Abs),
    ("relu", UnaryOp::Relu),
    ("gelu", UnaryOp::Gelu),
    ("gelu_tanh", UnaryOp::GeluTanh),
    ("tanh", UnaryOp::Tanh),
    ("sigmoid", UnaryOp::Sigmoid),
    ("exp", UnaryOp::Exp),
    ("log", UnaryOp::Log),
    ("sqrt", UnaryOp::Sqrt),
    ("rsqrt", UnaryOp::Rsqrt),
    ("recip", UnaryOp::Recip),
    ("erf", UnaryOp::Erf),
    ("floor", UnaryOp::Floor),
    ("ceil", UnaryOp::Ceil),
    ("sin", UnaryOp::Sin),
    ("cos", UnaryOp::Cos),
    ("leaky_relu", UnaryOp::LeakyRelu),
    ("hard_sigmoid", UnaryOp::HardSigmoid),
    ("hard_swish", UnaryOp::HardSwish),
];

/// Elements per parallel piece.
const PIECE: usize = 1 << 14;

pub(crate) fn bind(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("unary@1", attrs);
    let op = r.choice("op", &OPS)?;
    let (alpha, beta) = match op {
        UnaryOp::LeakyRelu => (r.float("alpha", crate::LEAKY_RELU_ALPHA)?, 0.0),
        UnaryOp::HardSigmoid => (
            r.float("alpha", crate::HARD_SIGMOID_ALPHA)?,
            r.float("beta", crate::HARD_SIGMOID_BETA)?,
        ),
        _ => fixed_params(op).unwrap_or((0.0, 0.0)),
    };
    r.finish()?;
    let name = OPS
        .iter()
        .find(|(_, o)| *o == op)
        .map(|(n, _)| *n)
        .unwrap_or("?");
    Ok(bound(Unary {
        op,
        alpha,
        beta,
        label: format!("unary@1 ({name})"),
    }))
}

/// The (alpha, beta) of an op that takes no attributes (`hard_swish`'s are
/// fixed; the others ignore theirs); `None` for the ops with attributes.
pub(crate) fn fixed_params(op: UnaryOp) -> Option<(f64, f64)> {
    match op {
        UnaryOp::LeakyRelu | UnaryOp::HardSigmoid => None,
        UnaryOp::HardSwish => Some((1.0 / 6.0, 0.5)),
        _ => Some((0.0, 0.0)),
    }
}

/// How many parameters op takes (`alpha`, then `beta`): what a fused
/// program spells out after its operand.
pub(crate) fn param_count(op: UnaryOp) -> usize {
    match op {
        UnaryOp::LeakyRelu => 1,
        UnaryOp::HardSigmoid => 2,
        _ => 0,
    }
}

struct Unary {
    op: UnaryOp,
    /// The parameters of `leaky_relu` (alpha), `hard_sigmoid` and
    /// `hard_swish` (alpha, beta); 0 for the other ops.
    alpha: f64,
    beta: f64,
    label: String,
}

impl Op for Unary {
    fn label(&self) -> &str {
        &self.label
    }

    fn input_names(&self) -> &[&'static str] {
        &["x"]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        check_float(self, inputs, 0)?;
        let [x] = operands(inputs)?;
        Ok(x.clone())
    }

    fn compute(&self, imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        super::with_float!(out.dtype(), T => self.compute_typed::<T>(imp, inputs, out))
    }
}

#[inline]
fn gelu<T: Float>(x: T) -> T {
    let half = T::from_f64(0.5);
    half * x * (T::ONE + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf())
}

#[inline]
fn gelu_tanh<T: Float>(x: T) -> T {
    // √(2/π)
    let c = T::from_f64(0.797_884_560_802_865_4);
    let half = T::from_f64(0.5);
    half * x * (T::ONE + (c * (x + T::from_f64(0.044_715) * x * x * x)).tanh())
}

#[inline]
fn hard_sigmoid<T: Float>(x: T, alpha: T, beta: T) -> T {
    fmax(fmin(alpha * x + beta, T::ONE), T::ZERO)
}

impl Unary {
    fn compute_typed<T: Float>(
        &self,
        imp: Impl,
        inputs: &[&Tensor],
        out: &mut Tensor,
    ) -> Result<(), String> {
        let [x] = operands(inputs)?;
        let xv = data::<T>(x, "input 0 (x)")?;
        let y = data_mut::<T>(out)?;
        let (alpha, beta) = (T::from_f64(self.alpha), T::from_f64(self.beta));
        unary_typed(self.op, imp, xv, y, alpha, beta)
    }
}

/// `y = op(x)` for every element (`alpha` and `beta` are the parameters of
/// the ops that take them); shared with `fused@1`.
pub(crate) fn unary_typed<T: Float>(
    op: UnaryOp,
    imp: Impl,
    xv: &[T],
    y: &mut [T],
    alpha: T,
    beta: T,
) -> Result<(), String> {
    match op {
        UnaryOp::Neg => map(imp, xv, y, move |v: T| -v),
        UnaryOp::Abs => map(imp, xv, y, T::abs),
        UnaryOp::Relu => map(imp, xv, y, move |v: T| {
            if v > T::ZERO || v.is_nan() {
                v
            } else {
                T::ZERO
            }
        }),
        UnaryOp::Gelu => map(imp, xv, y, gelu),
        UnaryOp::GeluTanh => map(imp, xv, y, gelu_tanh),
        UnaryOp::Tanh => map(imp, xv, y, T::tanh),
        UnaryOp::Sigmoid => map(imp, xv, y, move |v: T| T::ONE / (T::ONE + (-v).exp())),
        UnaryOp::Exp => map(imp, xv, y, T::exp),
        UnaryOp::Log => map(imp, xv, y, T::ln),
        UnaryOp::Sqrt => map(imp, xv, y, T::sqrt),
        UnaryOp::Rsqrt => map(imp, xv, y, move |v: T| T::ONE / v.sqrt()),
        UnaryOp::Recip => map(imp, xv, y, move |v: T| T::ONE / v),
        UnaryOp::Erf => map(imp, xv, y, T::erf),
        UnaryOp::Floor => map(imp, xv, y, T::floor),
        UnaryOp::Ceil => map(imp, xv, y, T::ceil),
        UnaryOp::Sin => map(imp, xv, y, T::sin),
        UnaryOp::Cos => map(imp, xv, y, T::cos),
        UnaryOp::LeakyRelu => map(
            imp,
            xv,
            y,
            move |v: T| if v < T::ZERO { alpha * v } else { v },
        ),
        UnaryOp::HardSigmoid => map(imp, xv, y, move |v: T| hard_sigmoid(v, alpha, beta)),
        UnaryOp::HardSwish => map(imp, xv, y, move |v: T| v * hard_sigmoid(v, alpha, beta)),
    }
}

/// `y[i] = f(x[i])`.
fn map<T: Float>(
    imp: Impl,
    x: &[T],
    y: &mut [T],
    f: impl Fn(T) -> T + Sync + Send + Copy,
) -> Result<(), String> {
    if x.len() != y.len() {
        return Err(format!(
            "internal: input has {} elements, output {}",
            x.len(),
            y.len()
        ));
    }
    match imp {
        Impl::Reference => {
            for i in 0..y.len() {
                y[i] = f(x[i]);
            }
        }
        Impl::Optimized => {
            let tight = |(y, x): (&mut [T], &[T])| super::simd::map(y, x, f);
            if worth_splitting(y.len(), PAR_MIN) {
                y.par_chunks_mut(PIECE)
                    .zip(x.par_chunks(PIECE))
                    .for_each(tight);
            } else {
                tight((y, x));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::*;
    use super::OPS;
    use crate::{DType, Impl, KernelError, Tensor, TensorMeta};

    fn unary(op: &str, x: &Tensor, imp: Impl) -> Result<Tensor, KernelError> {
        launch("unary@1", &attrs(&[("op", s(op))]), &[x], imp)
    }

    /// The definition of each op, in f64, written independently of the
    /// kernel (gelu through an erf series).
    fn direct(op: &str, x: f64) -> f64 {
        // erf by its Maclaurin series, accurate to ~1e-15 for |x| <= 3.
        let erf = |x: f64| {
            let (mut term, mut sum, mut n) = (x, x, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -x * x / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        };
        match op {
            "neg" => -x,
            "abs" => x.abs(),
            "relu" => x.max(0.0),
            "gelu" => 0.5 * x * (1.0 + erf(x / 2f64.sqrt())),
            "gelu_tanh" => {
                0.5 * x
                    * (1.0
                        + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
            }
            "tanh" => x.tanh(),
            "sigmoid" => 1.0 / (1.0 + (-x).exp()),
            "exp" => x.exp(),
            "log" => x.ln(),
            "sqrt" => x.sqrt(),
            "rsqrt" => 1.0 / x.sqrt(),
            "recip" => 1.0 / x,
            "erf" => erf(x),
            "floor" => x.floor(),
            "ceil" => x.ceil(),
            "sin" => x.sin(),
            "cos" => x.cos(),
            "leaky_relu" => leaky_relu(x, 0.01),
            "hard_sigmoid" => hard_sigmoid(x, 0.2, 0.5),
            "hard_swish" => x * hard_sigmoid(x, 1.0 / 6.0, 0.5),
            _ => unreachable!("unknown op {op}"),
        }
    }

    fn fl(v: f64) -> crate::AttrValue {
        crate::AttrValue::Float(v)
    }

    fn leaky_relu(x: f64, alpha: f64) -> f64 {
        if x >= 0.0 {
            x
        } else {
            alpha * x
        }
    }

    fn hard_sigmoid(x: f64, alpha: f64, beta: f64) -> f64 {
        (alpha * x + beta).clamp(0.0, 1.0)
    }

    #[test]
    fn every_op_matches_its_definition() {
        let xs = [0.3, 1.7, 2.5, 0.01, 2.9, 1.0];
        let x32 = Tensor::from_vec(&[2, 3], xs.iter().map(|&v| v as f32).collect()).unwrap();
        let x64 = Tensor::from_vec(&[2, 3], xs.to_vec()).unwrap();
        let neg = Tensor::from_vec(&[3], vec![-0.5f64, -2.0, -2.9]).unwrap();
        for (op, _) in OPS {
            for imp in IMPLS {
                let y = f64s(&unary(op, &x64, imp).unwrap());
                for (v, x) in y.iter().zip(xs) {
                    // 1e-12: the erf series loses ~3 digits to cancellation near 3.
                    assert!(
                        (v - direct(op, x)).abs() <= 1e-12 * direct(op, x).abs().max(1.0),
                        "{op}({x}) = {v}"
                    );
                }
                let y = f64s(&unary(op, &x32, imp).unwrap());
                for (v, x) in y.iter().zip(xs) {
                    let want = direct(op, x as f32 as f64);
                    assert!(
                        (v - want).abs() <= 1e-6 * want.abs().max(1.0),
                        "{op}({x}) = {v} (f32)"
                    );
                }
                if !matches!(op, "log" | "sqrt" | "rsqrt") {
                    let y = f64s(&unary(op, &neg, imp).unwrap());
                    for (v, x) in y.iter().zip([-0.5, -2.0, -2.9]) {
                        assert!(
                            (v - direct(op, x)).abs() <= 1e-12 * direct(op, x).abs().max(1.0),
                            "{op}({x}) = {v}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn edge_values() {
        let x =
            Tensor::from_vec(&[4], vec![f32::NAN, -0.0, f32::INFINITY, f32::NEG_INFINITY]).unwrap();
        for imp in IMPLS {
            let relu = unary("relu", &x, imp).unwrap().to_vec::<f32>().unwrap();
            assert!(relu[0].is_nan());
            assert_eq!(
                relu[1..].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                vec![0, f32::INFINITY.to_bits(), 0]
            );
            assert_eq!(
                unary("sigmoid", &x, imp).unwrap().to_vec::<f32>().unwrap()[2..],
                [1.0, 0.0]
            );
            assert_eq!(
                unary("gelu", &x, imp).unwrap().to_vec::<f32>().unwrap()[2],
                f32::INFINITY
            );
            assert_eq!(
                unary("recip", &x, imp).unwrap().to_vec::<f32>().unwrap()[1],
                f32::NEG_INFINITY
            );
        }
    }

    /// An op, its extra attributes and its definition.
    type Case = (
        &'static str,
        Vec<(&'static str, crate::AttrValue)>,
        Box<dyn Fn(f64) -> f64>,
    );

    /// The ops with attributes, at non-default values, against their
    /// definitions on both sides of each kink, and NaN in gives NaN out.
    #[test]
    fn attributes_and_kinks() {
        let xs = vec![
            -1e3, -7.0, -3.0, -2.5, -0.5, -0.0, 0.0, 0.25, 2.5, 3.0, 7.0, 1e3,
        ];
        let x64 = Tensor::from_vec(&[xs.len()], xs.clone()).unwrap();
        let x32 = Tensor::from_vec(&[xs.len()], xs.iter().map(|&v| v as f32).collect()).unwrap();
        let nan = Tensor::from_vec(&[2], vec![f32::NAN, f32::NAN]).unwrap();
        let cases: [Case; 5] = [
            (
                "leaky_relu",
                vec![("alpha", fl(0.3))],
                Box::new(|x| leaky_relu(x, 0.3)),
            ),
            // An integer alpha is a float too.
            (
                "leaky_relu",
                vec![("alpha", i(2))],
                Box::new(|x| leaky_relu(x, 2.0)),
            ),
            (
                "hard_sigmoid",
                vec![("alpha", fl(0.4)), ("beta", fl(0.3))],
                Box::new(|x| hard_sigmoid(x, 0.4, 0.3)),
            ),
            (
                "hard_sigmoid",
                vec![("beta", fl(-0.25))],
                Box::new(|x| hard_sigmoid(x, 0.2, -0.25)),
            ),
            (
                "hard_swish",
                vec![],
                Box::new(|x| x * hard_sigmoid(x, 1.0 / 6.0, 0.5)),
            ),
        ];
        for (op, extra, want) in &cases {
            let mut at = vec![("op", s(op))];
            at.extend(extra.iter().cloned());
            for imp in IMPLS {
                let run = |x: &Tensor| f64s(&launch("unary@1", &attrs(&at), &[x], imp).unwrap());
                for (v, &x) in run(&x64).iter().zip(&xs) {
                    assert!(
                        (v - want(x)).abs() <= 1e-15 * want(x).abs().max(1.0),
                        "{op} {extra:?} ({x}) = {v}"
                    );
                }
                for (v, &x) in run(&x32).iter().zip(&xs) {
                    assert!(
                        (v - want(x)).abs() <= 1e-6 * want(x).abs().max(1.0),
                        "{op} {extra:?} ({x}) = {v} (f32)"
                    );
                }
                assert!(run(&nan).iter().all(|v| v.is_nan()), "{op}(NaN)");
            }
        }
        // leaky_relu keeps the sign of zero: -0 is not below 0.
        let z = Tensor::from_vec(&[1], vec![-0.0f32]).unwrap();
        let y = launch(
            "unary@1",
            &attrs(&[("op", s("leaky_relu"))]),
            &[&z],
            Impl::Optimized,
        )
        .unwrap()
        .to_vec::<f32>()
        .unwrap();
        assert_eq!(y[0].to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn attributes_are_checked() {
        let err = |at: &[(&str, crate::AttrValue)]| match bind("unary@1", &attrs(at)) {
            Ok(_) => panic!("{at:?} was accepted"),
            Err(e) => e.to_string(),
        };
        // An op without parameters refuses them; hard_swish's are fixed.
        assert!(err(&[("op", s("relu")), ("alpha", fl(0.1))]).contains("alpha"));
        assert!(err(&[("op", s("hard_swish")), ("alpha", fl(0.1))]).contains("alpha"));
        assert!(err(&[("op", s("leaky_relu")), ("beta", fl(0.1))]).contains("beta"));
        assert!(err(&[("op", s("hard_sigmoid")), ("alpha", s("x"))]).contains("a number"));
        assert!(bind(
            "unary@1",
            &attrs(&[
                ("op", s("hard_sigmoid")),
                ("alpha", fl(0.1)),
                ("beta", i(0))
            ])
        )
        .is_ok());
    }

    #[test]
    fn only_floats() {
        let k = bind("unary@1", &attrs(&[("op", s("exp"))])).unwrap();
        let err = k.check(&[&TensorMeta::new(DType::I32, [3])]).unwrap_err();
        assert_eq!(
            err,
            KernelError::Signature {
                kernel: "unary@1 (exp)".into(),
                message: "input 0 (x): expected a float dtype (f32 or f64), got i32".into()
            }
        );
        assert!(bind("unary@1", &attrs(&[("op", s("softplus"))])).is_err());
        assert!(bind("unary@1", &attrs(&[])).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn optimized_matches_reference(
            shape in shape_strategy(),
            op in prop::sample::select(OPS.iter().map(|(n, _)| *n).collect::<Vec<_>>()),
            seed in any::<u64>(),
            f64s in any::<bool>(),
        ) {
            let x = if f64s { float_tensor::<f64>(&shape, seed, true) } else { float_tensor::<f32>(&shape, seed, true) };
            assert_same_bits(&unary(op, &x, Impl::Reference).unwrap(), &unary(op, &x, Impl::Optimized).unwrap());
        }

        #[test]
        fn check_never_panics(m in adversarial_meta()) {
            let k = bind("unary@1", &attrs(&[("op", s("gelu"))])).unwrap();
            check_is_consistent(&*k, &[&m, &m]);
        }
    }
}
