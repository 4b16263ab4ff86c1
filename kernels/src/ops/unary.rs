//! `unary@1`: elementwise float functions.
//!
//! Definitions (x is f32 or f64, computed in its own precision):
//! `relu(x) = x > 0 ? x : 0` (NaN stays NaN), `gelu(x) = x/2 (1 + erf(x/√2))`,
//! `gelu_tanh(x) = x/2 (1 + tanh(√(2/π) (x + 0.044715 x³)))`,
//! `sigmoid(x) = 1 / (1 + e^-x)`, `rsqrt(x) = 1/√x`, `recip(x) = 1/x`;
//! `erf` is libm's. Both implementations call the same scalar function, so
//! they agree bitwise; the optimized one runs it in a tight slice loop, split
//! across rayon's pool from [`PAR_MIN`] elements.

use std::sync::Arc;

use rayon::prelude::*;

use super::attrs::AttrReader;
use super::num::Float;
use super::{bound, check_float, data, data_mut, operands, Op, PAR_MIN};
use crate::{Attrs, Bound, Impl, KernelError, Tensor, TensorMeta};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UnaryOp {
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
}

const OPS: [(&str, UnaryOp); 17] = [
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
];

/// Elements per parallel piece.
const PIECE: usize = 1 << 14;

pub(crate) fn bind(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("unary@1", attrs);
    let op = r.choice("op", &OPS)?;
    r.finish()?;
    let name = OPS
        .iter()
        .find(|(_, o)| *o == op)
        .map(|(n, _)| *n)
        .unwrap_or("?");
    Ok(bound(Unary {
        op,
        label: format!("unary@1 ({name})"),
    }))
}

struct Unary {
    op: UnaryOp,
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
        super::with_float!(out.dtype(), T => unary_typed::<T>(self.op, imp, inputs, out))
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

fn unary_typed<T: Float>(
    op: UnaryOp,
    imp: Impl,
    inputs: &[&Tensor],
    out: &mut Tensor,
) -> Result<(), String> {
    let [x] = operands(inputs)?;
    let xv = data::<T>(x, "input 0 (x)")?;
    let y = data_mut::<T>(out)?;
    match op {
        UnaryOp::Neg => map(imp, xv, y, |v: T| -v),
        UnaryOp::Abs => map(imp, xv, y, T::abs),
        UnaryOp::Relu => map(imp, xv, y, |v: T| {
            if v > T::ZERO || v.is_nan() {
                v
            } else {
                T::ZERO
            }
        }),
        UnaryOp::Gelu => map(imp, xv, y, gelu),
        UnaryOp::GeluTanh => map(imp, xv, y, gelu_tanh),
        UnaryOp::Tanh => map(imp, xv, y, T::tanh),
        UnaryOp::Sigmoid => map(imp, xv, y, |v: T| T::ONE / (T::ONE + (-v).exp())),
        UnaryOp::Exp => map(imp, xv, y, T::exp),
        UnaryOp::Log => map(imp, xv, y, T::ln),
        UnaryOp::Sqrt => map(imp, xv, y, T::sqrt),
        UnaryOp::Rsqrt => map(imp, xv, y, |v: T| T::ONE / v.sqrt()),
        UnaryOp::Recip => map(imp, xv, y, |v: T| T::ONE / v),
        UnaryOp::Erf => map(imp, xv, y, T::erf),
        UnaryOp::Floor => map(imp, xv, y, T::floor),
        UnaryOp::Ceil => map(imp, xv, y, T::ceil),
        UnaryOp::Sin => map(imp, xv, y, T::sin),
        UnaryOp::Cos => map(imp, xv, y, T::cos),
    }
}

/// `y[i] = f(x[i])`.
fn map<T: Float>(
    imp: Impl,
    x: &[T],
    y: &mut [T],
    f: impl Fn(T) -> T + Sync + Send,
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
            let tight = |(y, x): (&mut [T], &[T])| {
                for (slot, &v) in y.iter_mut().zip(x) {
                    *slot = f(v);
                }
            };
            if y.len() >= PAR_MIN {
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
            _ => unreachable!("unknown op {op}"),
        }
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
