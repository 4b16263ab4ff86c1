//! Guards: serializable predicates an entry's inputs and globals must satisfy.
//!
//! Every guard kind is one variant of [`Guard`], and each variant has three
//! things, enforced by exhaustive `match`es: its serde form, its evaluation
//! ([`Guard::check`]) and its one-line explanation ([`Guard::describe`]). A
//! new kind cannot be added without all three.
//!
//! There is no layout guard: host tensors ([`Tensor`]) are dense and
//! row-major by construction, so layout is a property of the type, not of a
//! call.
//!
//! Guards are evaluated by the host before a wrapper runs. Input guards are
//! checked on every call; global guards once, when globals are resolved at
//! load. Evaluation never panics: an index that does not exist is a failure
//! with "missing" as its actual value (verification also rejects such
//! indices at `open`).

use ampoule_kernels::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::manifest::{GlobalDecl, Signature};

/// A scalar value an input is specialized on.
///
/// In JSON an `Int` is an integer and a finite `Float` a number; JSON has
/// no NaN or infinities, so those are the strings `"nan"`, `"inf"` and
/// `"-inf"` (every NaN is one value here: see [`ScalarValue::same`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScalarValue {
    Int(i64),
    Float(f64),
}

impl Serialize for ScalarValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            ScalarValue::Int(v) => s.serialize_i64(v),
            ScalarValue::Float(v) if v.is_finite() => s.serialize_f64(v),
            ScalarValue::Float(v) if v.is_nan() => s.serialize_str("nan"),
            ScalarValue::Float(v) if v > 0.0 => s.serialize_str("inf"),
            ScalarValue::Float(_) => s.serialize_str("-inf"),
        }
    }
}

impl<'de> Deserialize<'de> for ScalarValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Int(i64),
            Float(f64),
            Special(String),
        }
        Ok(match Repr::deserialize(d)? {
            Repr::Int(v) => ScalarValue::Int(v),
            Repr::Float(v) => ScalarValue::Float(v),
            Repr::Special(s) => ScalarValue::Float(match s.as_str() {
                "nan" => f64::NAN,
                "inf" => f64::INFINITY,
                "-inf" => f64::NEG_INFINITY,
                _ => {
                    return Err(serde::de::Error::custom(format!(
                        "scalar value {:?} is not a number, \"nan\", \"inf\" or \"-inf\"",
                        prefix(&s, 32)
                    )))
                }
            }),
        })
    }
}

impl std::fmt::Display for ScalarValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScalarValue::Int(v) => write!(f, "{v}"),
            ScalarValue::Float(v) => write!(f, "{v:?}"),
        }
    }
}

/// `[1, 2, 3]`.
fn list(values: &[ScalarValue]) -> String {
    let items: Vec<String> = values.iter().map(ToString::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// The most values an [`Guard::InputValues`] guard holds.
pub const MAX_INPUT_VALUES: usize = 64;

impl ScalarValue {
    /// Every element of a tensor of at most [`MAX_INPUT_VALUES`] elements,
    /// row-major. `None` for a larger tensor, and for a u64 tensor holding a
    /// value above `i64::MAX` (an `Int` holds its value exactly).
    pub fn all(tensor: &Tensor) -> Option<Vec<ScalarValue>> {
        if tensor.numel() > MAX_INPUT_VALUES {
            return None;
        }
        fn widened<T: ampoule_kernels::Element + Into<i64>>(t: &Tensor) -> Option<Vec<i64>> {
            Some(t.data::<T>().ok()?.iter().map(|&v| v.into()).collect())
        }
        let ints = |v: Vec<i64>| v.into_iter().map(ScalarValue::Int).collect();
        let floats = |v: Vec<f64>| v.into_iter().map(ScalarValue::Float).collect();
        Some(match tensor.dtype() {
            DType::F32 => floats(
                tensor
                    .data::<f32>()
                    .ok()?
                    .iter()
                    .map(|&v| f64::from(v))
                    .collect(),
            ),
            DType::F64 => floats(tensor.data::<f64>().ok()?.to_vec()),
            DType::I8 => ints(
                tensor
                    .data::<i8>()
                    .ok()?
                    .iter()
                    .map(|&v| i64::from(v))
                    .collect(),
            ),
            DType::U8 | DType::Bool => ints(tensor.bytes().iter().map(|&v| i64::from(v)).collect()),
            DType::I32 => ints(
                tensor
                    .data::<i32>()
                    .ok()?
                    .iter()
                    .map(|&v| i64::from(v))
                    .collect(),
            ),
            DType::I64 => ints(tensor.data::<i64>().ok()?.to_vec()),
            DType::I16 => ints(widened::<i16>(tensor)?),
            DType::U16 => ints(widened::<u16>(tensor)?),
            DType::U32 => ints(widened::<u32>(tensor)?),
            DType::U64 => ints(
                tensor
                    .data::<u64>()
                    .ok()?
                    .iter()
                    .map(|&v| i64::try_from(v).ok())
                    .collect::<Option<Vec<i64>>>()?,
            ),
        })
    }

    /// Reads element 0 of a rank-0 (or one-element) tensor.
    pub fn of(tensor: &Tensor) -> Option<ScalarValue> {
        if tensor.numel() != 1 {
            return None;
        }
        ScalarValue::all(tensor)?.first().copied()
    }

    /// Exact equality; floats compare bit for bit (so `-0.0 != 0.0`),
    /// except that every NaN is the same value (a manifest stores one NaN).
    pub fn same(self, other: ScalarValue) -> bool {
        match (self, other) {
            (ScalarValue::Int(a), ScalarValue::Int(b)) => a == b,
            (ScalarValue::Float(a), ScalarValue::Float(b)) => {
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
            }
            _ => false,
        }
    }
}

/// One guard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Guard {
    /// The call passes exactly `count` inputs.
    InputCount { count: u32 },
    /// The call's inputs are named `names`, in order (when passed by name).
    InputNames { names: Vec<String> },
    /// Input `input` has dtype `dtype`.
    Dtype { input: u32, dtype: DType },
    /// Input `input` has rank `rank`.
    Rank { input: u32, rank: u32 },
    /// Axis `axis` of input `input` has size `size`.
    Dim { input: u32, axis: u32, size: u64 },
    /// A symbolic dim: axis `axis` of input `input` has a size in
    /// `min..=max` (the range a dynamic entry admits).
    DimRange {
        input: u32,
        axis: u32,
        min: u64,
        max: u64,
    },
    /// A symbolic dim's size is `remainder` modulo `modulus` (what the
    /// shapes the wrapper derives from it need to divide exactly).
    DimModulo {
        input: u32,
        axis: u32,
        modulus: u64,
        remainder: u64,
    },
    /// Two dims are the same symbol: axis `axis` of input `input` equals
    /// axis `other_axis` of input `other`.
    DimEq {
        input: u32,
        axis: u32,
        other: u32,
        other_axis: u32,
    },
    /// Scalar input `input` equals `value` (the entry is specialized on it).
    ScalarValue { input: u32, value: ScalarValue },
    /// Tensor input `input` holds exactly `values`, row-major (the entry is
    /// specialized on a small tensor whose content the compiler needed: an
    /// ONNX graph input giving axes, sizes or pads). At most
    /// [`MAX_INPUT_VALUES`] values.
    InputValues {
        input: u32,
        values: Vec<ScalarValue>,
    },
    /// Global `global` (a package-global index) has this dtype and shape.
    GlobalMeta {
        global: u32,
        dtype: DType,
        shape: Vec<u64>,
    },
    /// Global `global`'s content has this SHA-256 (the entry was specialized
    /// on the value of a host-bound global).
    GlobalDigest { global: u32, sha256: String },
}

/// What a call looks like to guard evaluation.
pub struct CallView<'a> {
    /// Input names, when the caller passed inputs by name.
    pub names: Option<&'a [String]>,
    pub inputs: &'a [&'a Tensor],
}

/// What resolved globals look like to guard evaluation.
pub struct GlobalsView<'a> {
    pub values: &'a [Option<Tensor>],
    /// SHA-256 of each global's content, computed on demand.
    pub digest: &'a dyn Fn(usize) -> Option<String>,
}

impl Guard {
    /// Whether this guard is about a call's inputs (else about globals).
    pub fn is_input_guard(&self) -> bool {
        !matches!(self, Guard::GlobalMeta { .. } | Guard::GlobalDigest { .. })
    }

    /// Evaluates an input guard. `Err` carries the actual value observed.
    /// Global guards hold trivially here; see [`Guard::check_global`].
    pub fn check(&self, call: &CallView<'_>) -> Result<(), String> {
        let input = |i: u32| {
            call.inputs
                .get(i as usize)
                .ok_or_else(|| "missing".to_string())
        };
        match self {
            Guard::InputCount { count } => {
                expect_eq(call.inputs.len() as u64, u64::from(*count), |n| {
                    n.to_string()
                })
            }
            Guard::InputNames { names } => match call.names {
                None => Ok(()),
                Some(actual) if actual == names.as_slice() => Ok(()),
                Some(actual) => Err(format!("{actual:?}")),
            },
            Guard::Dtype { input: i, dtype } => {
                let t = input(*i)?;
                expect_eq(t.dtype(), *dtype, |d| d.to_string())
            }
            Guard::Rank { input: i, rank } => {
                let t = input(*i)?;
                expect_eq(t.shape().len() as u64, u64::from(*rank), |r| r.to_string())
            }
            Guard::Dim {
                input: i,
                axis,
                size,
            } => {
                let t = input(*i)?;
                match t.shape().get(*axis as usize) {
                    Some(&d) => expect_eq(d as u64, *size, |d| d.to_string()),
                    None => Err(format!("rank {}", t.shape().len())),
                }
            }
            Guard::DimRange {
                input: i,
                axis,
                min,
                max,
            } => {
                let d = dim(input(*i)?, *axis)?;
                if (*min..=*max).contains(&d) {
                    Ok(())
                } else {
                    Err(d.to_string())
                }
            }
            Guard::DimModulo {
                input: i,
                axis,
                modulus,
                remainder,
            } => {
                let d = dim(input(*i)?, *axis)?;
                match d.checked_rem(*modulus) {
                    Some(r) if r == *remainder => Ok(()),
                    Some(r) => Err(format!("{d} ({d} % {modulus} == {r})")),
                    None => Err("a modulus of 0".to_string()),
                }
            }
            Guard::DimEq {
                input: i,
                axis,
                other,
                other_axis,
            } => {
                let a = dim(input(*i)?, *axis)?;
                let b = dim(input(*other)?, *other_axis)?;
                if a == b {
                    Ok(())
                } else {
                    Err(format!("{a} and {b}"))
                }
            }
            Guard::ScalarValue { input: i, value } => {
                let t = input(*i)?;
                match ScalarValue::of(t) {
                    Some(v) if v.same(*value) => Ok(()),
                    Some(v) => Err(v.to_string()),
                    None => Err(format!("a tensor of shape {:?}", t.shape())),
                }
            }
            Guard::InputValues { input: i, values } => {
                let t = input(*i)?;
                match ScalarValue::all(t) {
                    Some(v)
                        if v.len() == values.len()
                            && v.iter().zip(values).all(|(a, b)| a.same(*b)) =>
                    {
                        Ok(())
                    }
                    Some(v) => Err(list(&v)),
                    None => Err(format!("a tensor of {} elements", t.numel())),
                }
            }
            Guard::GlobalMeta { .. } | Guard::GlobalDigest { .. } => Ok(()),
        }
    }

    /// Evaluates a global guard against resolved globals. Input guards hold
    /// trivially here.
    pub fn check_global(&self, globals: &GlobalsView<'_>) -> Result<(), String> {
        let global = |g: u32| match globals.values.get(g as usize) {
            Some(Some(t)) => Ok(t),
            Some(None) => Err("unbound".to_string()),
            None => Err("missing".to_string()),
        };
        match self {
            Guard::GlobalMeta {
                global: g,
                dtype,
                shape,
            } => {
                let t = global(*g)?;
                let actual_shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
                if t.dtype() == *dtype && actual_shape == *shape {
                    Ok(())
                } else {
                    Err(format!("{}{:?}", t.dtype(), actual_shape))
                }
            }
            Guard::GlobalDigest { global: g, sha256 } => {
                global(*g)?;
                match (globals.digest)(*g as usize) {
                    Some(d) if d == *sha256 => Ok(()),
                    Some(d) => Err(format!("sha256 {}", prefix(&d, 16))),
                    None => Err("no digest".to_string()),
                }
            }
            Guard::InputCount { .. }
            | Guard::InputNames { .. }
            | Guard::Dtype { .. }
            | Guard::Rank { .. }
            | Guard::Dim { .. }
            | Guard::DimRange { .. }
            | Guard::DimModulo { .. }
            | Guard::DimEq { .. }
            | Guard::ScalarValue { .. }
            | Guard::InputValues { .. } => Ok(()),
        }
    }

    /// One line saying what must hold, in the function's own names, e.g.
    /// `x.shape[0] == 32`.
    pub fn describe(&self, sig: &Signature, globals: &[GlobalDecl]) -> String {
        let input = |i: u32| {
            sig.inputs
                .get(i as usize)
                .map_or_else(|| format!("input#{i}"), |a| a.name.clone())
        };
        let global = |g: u32| {
            globals
                .get(g as usize)
                .map_or_else(|| format!("global#{g}"), |d| d.name.clone())
        };
        match self {
            Guard::InputCount { count } => format!("number of inputs == {count}"),
            Guard::InputNames { names } => format!("input names == {names:?}"),
            Guard::Dtype { input: i, dtype } => format!("{}.dtype == {dtype}", input(*i)),
            Guard::Rank { input: i, rank } => format!("{}.rank == {rank}", input(*i)),
            Guard::Dim {
                input: i,
                axis,
                size,
            } => format!("{}.shape[{axis}] == {size}", input(*i)),
            Guard::DimRange {
                input: i,
                axis,
                min,
                max,
            } => format!("{min} <= {}.shape[{axis}] <= {max}", input(*i)),
            Guard::DimModulo {
                input: i,
                axis,
                modulus,
                remainder,
            } => format!("{}.shape[{axis}] % {modulus} == {remainder}", input(*i)),
            Guard::DimEq {
                input: i,
                axis,
                other,
                other_axis,
            } => format!(
                "{}.shape[{axis}] == {}.shape[{other_axis}]",
                input(*i),
                input(*other)
            ),
            Guard::ScalarValue { input: i, value } => format!("{} == {value}", input(*i)),
            Guard::InputValues { input: i, values } => format!("{} == {}", input(*i), list(values)),
            Guard::GlobalMeta {
                global: g,
                dtype,
                shape,
            } => {
                format!("global `{}` is {dtype}{shape:?}", global(*g))
            }
            Guard::GlobalDigest { global: g, sha256 } => {
                format!("global `{}` has sha256 {}", global(*g), prefix(sha256, 16))
            }
        }
    }

    /// The input index this guard reads, if any.
    pub fn input(&self) -> Option<u32> {
        match self {
            Guard::Dtype { input, .. }
            | Guard::Rank { input, .. }
            | Guard::Dim { input, .. }
            | Guard::DimRange { input, .. }
            | Guard::DimModulo { input, .. }
            | Guard::DimEq { input, .. }
            | Guard::ScalarValue { input, .. }
            | Guard::InputValues { input, .. } => Some(*input),
            Guard::InputCount { .. }
            | Guard::InputNames { .. }
            | Guard::GlobalMeta { .. }
            | Guard::GlobalDigest { .. } => None,
        }
    }

    /// The other input a `DimEq` guard reads.
    pub fn other_input(&self) -> Option<u32> {
        match self {
            Guard::DimEq { other, .. } => Some(*other),
            _ => None,
        }
    }

    /// Whether this guard admits a range of sizes for a dim (the entry is
    /// dynamic there).
    pub fn is_symbolic(&self) -> bool {
        matches!(
            self,
            Guard::DimRange { .. } | Guard::DimModulo { .. } | Guard::DimEq { .. }
        )
    }

    /// The package-global index this guard reads, if any.
    pub fn global(&self) -> Option<u32> {
        match self {
            Guard::GlobalMeta { global, .. } | Guard::GlobalDigest { global, .. } => Some(*global),
            _ => None,
        }
    }
}

/// The size of axis `axis` of `t`, or the rank as the observed value.
fn dim(t: &Tensor, axis: u32) -> Result<u64, String> {
    t.shape()
        .get(axis as usize)
        .map(|&d| d as u64)
        .ok_or_else(|| format!("rank {}", t.shape().len()))
}

/// The first `n` characters of `s` (which may come from a package: never
/// slice it at a byte offset).
pub fn prefix(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

fn expect_eq<T: PartialEq>(
    actual: T,
    expected: T,
    show: impl Fn(T) -> String,
) -> Result<(), String> {
    if actual == expected {
        Ok(())
    } else {
        Err(show(actual))
    }
}

/// Why one entry did not match a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryMiss {
    pub entry: usize,
    /// What the failing guard requires, e.g. `x.shape[0] == 32`.
    pub expected: String,
    /// What the call had, e.g. `64`.
    pub actual: String,
}

impl std::fmt::Display for EntryMiss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "entry {}: {}, got {}",
            self.entry, self.expected, self.actual
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{ArgDecl, ArgKind};

    fn sig() -> Signature {
        Signature {
            inputs: vec![
                ArgDecl {
                    name: "x".into(),
                    kind: ArgKind::Tensor {
                        dtype: DType::F32,
                        rank: 2,
                    },
                },
                ArgDecl {
                    name: "k".into(),
                    kind: ArgKind::Scalar { dtype: DType::I64 },
                },
            ],
            outputs: vec![],
            mutates: vec![],
        }
    }

    #[test]
    fn guards_check_and_explain() {
        let x = Tensor::zeros(DType::F32, &[64, 3]).unwrap();
        let k = Tensor::scalar(5i64);
        let inputs = [&x, &k];
        let call = CallView {
            names: None,
            inputs: &inputs,
        };
        let s = sig();
        let cases = [
            (Guard::InputCount { count: 2 }, None),
            (
                Guard::InputCount { count: 3 },
                Some("number of inputs == 3, got 2"),
            ),
            (
                Guard::Dtype {
                    input: 0,
                    dtype: DType::F32,
                },
                None,
            ),
            (
                Guard::Dtype {
                    input: 0,
                    dtype: DType::I64,
                },
                Some("x.dtype == i64, got f32"),
            ),
            (
                Guard::Rank { input: 0, rank: 3 },
                Some("x.rank == 3, got 2"),
            ),
            (
                Guard::Dim {
                    input: 0,
                    axis: 0,
                    size: 32,
                },
                Some("x.shape[0] == 32, got 64"),
            ),
            (
                Guard::Dim {
                    input: 0,
                    axis: 5,
                    size: 32,
                },
                Some("x.shape[5] == 32, got rank 2"),
            ),
            (
                Guard::DimRange {
                    input: 0,
                    axis: 0,
                    min: 2,
                    max: 64,
                },
                None,
            ),
            (
                Guard::DimRange {
                    input: 0,
                    axis: 0,
                    min: 2,
                    max: 63,
                },
                Some("2 <= x.shape[0] <= 63, got 64"),
            ),
            (
                Guard::DimModulo {
                    input: 0,
                    axis: 0,
                    modulus: 8,
                    remainder: 0,
                },
                None,
            ),
            (
                Guard::DimModulo {
                    input: 0,
                    axis: 1,
                    modulus: 2,
                    remainder: 0,
                },
                Some("x.shape[1] % 2 == 0, got 3 (3 % 2 == 1)"),
            ),
            (
                Guard::DimModulo {
                    input: 0,
                    axis: 1,
                    modulus: 0,
                    remainder: 0,
                },
                Some("x.shape[1] % 0 == 0, got a modulus of 0"),
            ),
            (
                Guard::DimEq {
                    input: 0,
                    axis: 1,
                    other: 0,
                    other_axis: 1,
                },
                None,
            ),
            (
                Guard::DimEq {
                    input: 0,
                    axis: 0,
                    other: 0,
                    other_axis: 1,
                },
                Some("x.shape[0] == x.shape[1], got 64 and 3"),
            ),
            (
                Guard::DimEq {
                    input: 0,
                    axis: 0,
                    other: 1,
                    other_axis: 0,
                },
                Some("x.shape[0] == k.shape[0], got rank 0"),
            ),
            (
                Guard::Dim {
                    input: 7,
                    axis: 0,
                    size: 1,
                },
                Some("input#7.shape[0] == 1, got missing"),
            ),
            (
                Guard::ScalarValue {
                    input: 1,
                    value: ScalarValue::Int(5),
                },
                None,
            ),
            (
                Guard::ScalarValue {
                    input: 1,
                    value: ScalarValue::Int(6),
                },
                Some("k == 6, got 5"),
            ),
            (
                Guard::ScalarValue {
                    input: 0,
                    value: ScalarValue::Int(6),
                },
                Some("x == 6, got a tensor of shape [64, 3]"),
            ),
        ];
        for (guard, want) in cases {
            let got = guard
                .check(&call)
                .err()
                .map(|actual| format!("{}, got {actual}", guard.describe(&s, &[])));
            assert_eq!(got.as_deref(), want, "{guard:?}");
        }
    }

    #[test]
    fn input_values_guard_compares_every_element() {
        let g = Guard::InputValues {
            input: 0,
            values: vec![ScalarValue::Int(0), ScalarValue::Int(-1)],
        };
        let check = |t: Tensor| {
            g.check(&CallView {
                names: None,
                inputs: &[&t],
            })
        };
        assert!(check(Tensor::from_vec(&[2], vec![0i64, -1]).unwrap()).is_ok());
        assert!(check(Tensor::from_vec(&[2], vec![0i32, -1]).unwrap()).is_ok());
        assert_eq!(
            check(Tensor::from_vec(&[2], vec![0i64, 1]).unwrap()),
            Err("[0, 1]".into())
        );
        assert_eq!(
            check(Tensor::from_vec(&[3], vec![0i64, -1, 2]).unwrap()),
            Err("[0, -1, 2]".into())
        );
        assert_eq!(
            check(Tensor::zeros(DType::I64, &[65]).unwrap()),
            Err("a tensor of 65 elements".into())
        );
        let back: Guard = serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
        assert_eq!(back, g);
    }

    #[test]
    fn sixteen_bit_and_unsigned_inputs_read_as_their_values() {
        let g = Guard::InputValues {
            input: 0,
            values: vec![ScalarValue::Int(65_535), ScalarValue::Int(7)],
        };
        let check = |t: &Tensor| {
            g.check(&CallView {
                names: None,
                inputs: &[t],
            })
        };
        assert!(check(&Tensor::from_vec(&[2], vec![u16::MAX, 7]).unwrap()).is_ok());
        assert!(check(&Tensor::from_vec(&[2], vec![65_535u32, 7]).unwrap()).is_ok());
        assert!(check(&Tensor::from_vec(&[2], vec![65_535u64, 7]).unwrap()).is_ok());
        // The same bits as i16 are -1.
        assert_eq!(
            check(&Tensor::from_vec(&[2], vec![-1i16, 7]).unwrap()),
            Err("[-1, 7]".into())
        );
        assert_eq!(
            ScalarValue::of(&Tensor::scalar(u32::MAX)),
            Some(ScalarValue::Int(i64::from(u32::MAX)))
        );
        // A u64 above i64::MAX has no exact `Int`: no value, so the guard
        // misses rather than matching a wrapped one.
        assert_eq!(
            ScalarValue::of(&Tensor::scalar(i64::MAX as u64)),
            Some(ScalarValue::Int(i64::MAX))
        );
        assert_eq!(ScalarValue::of(&Tensor::scalar(u64::MAX)), None);
        assert_eq!(
            check(&Tensor::from_vec(&[2], vec![u64::MAX, 7]).unwrap()),
            Err("a tensor of 2 elements".into())
        );
    }

    #[test]
    fn names_guard_only_applies_to_named_calls() {
        let x = Tensor::zeros(DType::F32, &[1]).unwrap();
        let inputs = [&x];
        let g = Guard::InputNames {
            names: vec!["x".into()],
        };
        assert!(g
            .check(&CallView {
                names: None,
                inputs: &inputs
            })
            .is_ok());
        let good = ["x".to_string()];
        assert!(g
            .check(&CallView {
                names: Some(&good),
                inputs: &inputs
            })
            .is_ok());
        let bad = ["y".to_string()];
        assert_eq!(
            g.check(&CallView {
                names: Some(&bad),
                inputs: &inputs
            }),
            Err("[\"y\"]".into())
        );
    }

    #[test]
    fn global_guards() {
        let w = Tensor::zeros(DType::F32, &[2, 2]).unwrap();
        let values = [Some(w), None];
        let digest = |i: usize| if i == 0 { Some("ab".repeat(32)) } else { None };
        let view = GlobalsView {
            values: &values,
            digest: &digest,
        };
        assert!(Guard::GlobalMeta {
            global: 0,
            dtype: DType::F32,
            shape: vec![2, 2]
        }
        .check_global(&view)
        .is_ok());
        assert_eq!(
            Guard::GlobalMeta {
                global: 0,
                dtype: DType::F32,
                shape: vec![3]
            }
            .check_global(&view),
            Err("f32[2, 2]".into())
        );
        assert_eq!(
            Guard::GlobalMeta {
                global: 1,
                dtype: DType::F32,
                shape: vec![3]
            }
            .check_global(&view),
            Err("unbound".into())
        );
        assert!(Guard::GlobalDigest {
            global: 0,
            sha256: "ab".repeat(32)
        }
        .check_global(&view)
        .is_ok());
        assert!(Guard::GlobalDigest {
            global: 0,
            sha256: "cd".repeat(32)
        }
        .check_global(&view)
        .is_err());
    }

    #[test]
    fn explanations_of_hostile_strings_do_not_panic() {
        // A package controls these strings; multi-byte characters must not
        // be sliced at a byte offset.
        let g = Guard::GlobalDigest {
            global: 0,
            sha256: "é".repeat(40),
        };
        assert_eq!(
            g.describe(&sig(), &[]),
            format!("global `global#0` has sha256 {}", "é".repeat(16))
        );
    }

    #[test]
    fn float_values_read_back_exactly() {
        // Found by fuzz/guards (fuzz/regressions/guards/): this subnormal
        // read back one ulp off, so an entry specialized on it could never
        // match again once its manifest was written and read.
        for v in [
            5.25465300634615e-308,
            0.1,
            -1.0e300,
            f64::MIN_POSITIVE / 3.0,
            2.5,
        ] {
            let g = Guard::ScalarValue {
                input: 0,
                value: ScalarValue::Float(v),
            };
            let back: Guard = serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
            assert_eq!(back, g, "{v:e}");
        }
    }

    #[test]
    fn non_finite_values_round_trip_through_json() {
        for (v, json) in [
            (f64::NAN, "\"nan\""),
            (-f64::NAN, "\"nan\""),
            (f64::INFINITY, "\"inf\""),
            (f64::NEG_INFINITY, "\"-inf\""),
        ] {
            let s = serde_json::to_string(&ScalarValue::Float(v)).unwrap();
            assert_eq!(s, json);
            let back: ScalarValue = serde_json::from_str(&s).unwrap();
            assert!(back.same(ScalarValue::Float(v)), "{v} read back as {back}");
        }
        // A specialized NaN input matches the guard read back from JSON.
        let g = Guard::ScalarValue {
            input: 0,
            value: ScalarValue::Float(f64::NAN),
        };
        let back: Guard = serde_json::from_str(&serde_json::to_string(&g).unwrap()).unwrap();
        let Guard::ScalarValue { value, .. } = back else {
            panic!("{back:?}")
        };
        assert!(value.same(ScalarValue::of(&Tensor::scalar(f32::NAN)).unwrap()));
        assert!(serde_json::from_str::<ScalarValue>("\"infinity\"").is_err());
        assert_eq!(
            serde_json::from_str::<ScalarValue>("-7").unwrap(),
            ScalarValue::Int(-7)
        );
    }

    #[test]
    fn serde_rejects_unknown_fields_and_kinds() {
        let g: Guard =
            serde_json::from_str(r#"{"kind":"dim","input":0,"axis":1,"size":4}"#).unwrap();
        assert_eq!(
            g,
            Guard::Dim {
                input: 0,
                axis: 1,
                size: 4
            }
        );
        assert!(serde_json::from_str::<Guard>(
            r#"{"kind":"dim","input":0,"axis":1,"size":4,"x":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<Guard>(r#"{"kind":"telepathy"}"#).is_err());
        assert!(
            serde_json::from_str::<Guard>(r#"{"kind":"dim","input":-1,"axis":1,"size":4}"#)
                .is_err()
        );
    }
}
