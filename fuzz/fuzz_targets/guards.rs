//! Guard evaluation: arbitrary guard lists against arbitrary calls.
//!
//! The input is either JSON (a guard list as a manifest holds it, parsed
//! with the host's own serde types) or a structured description from which
//! guards, a signature, globals and call inputs are built. Every guard is
//! then evaluated (`check`, `check_global`) against the call and the
//! globals, and explained (`describe`, `EntryMiss` display).
//!
//! Failures:
//! - any panic (guards are untrusted package data; evaluation must never
//!   panic, whatever the indices, names and values);
//! - an evaluation that contradicts the guard's meaning (a dtype guard that
//!   holds for an input of another dtype, an input guard failing in
//!   `check_global`, a missing input reported as anything but "missing"...);
//! - a guard that does not survive a serde round trip unchanged (the
//!   compiler writes guards the host must read back exactly; every NaN is
//!   one value, as the manifest stores one NaN).
#![no_main]

use ampoule_host::guard::{CallView, EntryMiss, GlobalsView, Guard, ScalarValue};
use ampoule_host::manifest::{ArgDecl, ArgKind, GlobalDecl, GlobalSource, Signature};
use ampoule_kernels::{DType, Tensor};
use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

/// The first dtypes, in their original order: a byte below 224 picks
/// `DTYPES[b % 7]` as it always has, so saved inputs (regressions/) keep
/// their dtypes; the bytes from 224 pick the dtypes added later.
const DTYPES: [DType; 7] =
    [DType::F32, DType::F64, DType::I8, DType::U8, DType::I32, DType::I64, DType::Bool];
const LATER_DTYPES: [DType; 4] = [DType::I16, DType::U16, DType::U32, DType::U64];

#[derive(Arbitrary, Debug)]
enum G {
    InputCount(u8),
    InputNames(Vec<String>),
    Dtype(u8, u8),
    Rank(u8, u8),
    Dim(u8, u8, u8),
    ScalarInt(u8, i64),
    ScalarFloat(u8, f64),
    GlobalMeta(u8, u8, Vec<u8>),
    GlobalDigest(u8, String),
    /// Indices far out of range.
    Huge(u32, u32),
    DimRange(u8, u8, u64, u64),
    DimModulo(u8, u8, u64, u64),
    DimEq(u8, u8, u8, u8),
    /// Small ints (so they can match tensor contents) or any float bits.
    InputValues(u8, Vec<i8>, Vec<f64>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    dtype: u8,
    shape: Vec<u8>,
    bytes: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Case {
    guards: Vec<G>,
    inputs: Vec<Input>,
    names: Option<Vec<String>>,
    /// Signature input names (for `describe`).
    sig_names: Vec<String>,
    /// Globals: `None` is an unbound one.
    globals: Vec<Option<Input>>,
    global_names: Vec<String>,
}

fn dtype(b: u8) -> DType {
    if b < 224 {
        DTYPES[b as usize % DTYPES.len()]
    } else {
        LATER_DTYPES[b as usize % LATER_DTYPES.len()]
    }
}

/// A small tensor: rank <= 8, dims <= 4, contents from `bytes` (cycled).
fn tensor(i: &Input) -> Tensor {
    let d = dtype(i.dtype);
    let shape: Vec<usize> = i.shape.iter().take(8).map(|&s| s as usize % 5).collect();
    let n: usize = shape.iter().product::<usize>() * d.size();
    let bytes: Vec<u8> = if i.bytes.is_empty() {
        vec![0; n]
    } else {
        i.bytes.iter().copied().cycle().take(n).collect()
    };
    Tensor::from_bytes(d, &shape, &bytes).expect("consistent length")
}

fn guard(g: &G) -> Guard {
    match g {
        G::InputCount(c) => Guard::InputCount { count: u32::from(*c % 6) },
        G::InputNames(n) => Guard::InputNames { names: n.clone() },
        G::Dtype(i, d) => Guard::Dtype { input: u32::from(*i % 6), dtype: dtype(*d) },
        G::Rank(i, r) => Guard::Rank { input: u32::from(*i % 6), rank: u32::from(*r % 10) },
        G::Dim(i, a, s) => Guard::Dim {
            input: u32::from(*i % 6),
            axis: u32::from(*a % 10),
            size: u64::from(*s % 6),
        },
        G::ScalarInt(i, v) => Guard::ScalarValue {
            input: u32::from(*i % 6),
            value: ScalarValue::Int(*v),
        },
        G::ScalarFloat(i, v) => Guard::ScalarValue {
            input: u32::from(*i % 6),
            value: ScalarValue::Float(*v),
        },
        G::InputValues(i, ints, floats) => Guard::InputValues {
            input: u32::from(*i % 6),
            values: ints
                .iter()
                .map(|&v| ScalarValue::Int(i64::from(v)))
                .chain(floats.iter().map(|&f| ScalarValue::Float(f)))
                .take(70)
                .collect(),
        },
        G::GlobalMeta(gi, d, shape) => Guard::GlobalMeta {
            global: u32::from(*gi % 6),
            dtype: dtype(*d),
            shape: shape.iter().take(9).map(|&s| u64::from(s % 5)).collect(),
        },
        G::GlobalDigest(gi, s) => Guard::GlobalDigest { global: u32::from(*gi % 6), sha256: s.clone() },
        G::Huge(i, a) => Guard::Dim { input: *i, axis: *a, size: u64::MAX },
        G::DimRange(i, a, min, max) => {
            Guard::DimRange { input: u32::from(*i % 6), axis: u32::from(*a % 10), min: *min, max: *max }
        }
        G::DimModulo(i, a, modulus, remainder) => Guard::DimModulo {
            input: u32::from(*i % 6),
            axis: u32::from(*a % 10),
            modulus: *modulus,
            remainder: *remainder,
        },
        G::DimEq(i, a, o, b) => Guard::DimEq {
            input: u32::from(*i % 6),
            axis: u32::from(*a % 10),
            other: u32::from(*o % 6),
            other_axis: u32::from(*b % 10),
        },
    }
}

fn run(guards: &[Guard], case: &Case) {
    let inputs: Vec<Tensor> = case.inputs.iter().take(6).map(tensor).collect();
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let globals: Vec<Option<Tensor>> = case.globals.iter().take(6).map(|g| g.as_ref().map(tensor)).collect();
    let sig = Signature {
        inputs: case
            .sig_names
            .iter()
            .take(6)
            .map(|n| ArgDecl { name: n.clone(), kind: ArgKind::Scalar { dtype: DType::F32 } })
            .collect(),
        outputs: vec![],
        mutates: vec![],
    };
    let decls: Vec<GlobalDecl> = case
        .global_names
        .iter()
        .take(6)
        .map(|n| GlobalDecl { name: n.clone(), dtype: DType::F32, shape: vec![], source: GlobalSource::Bound })
        .collect();
    let digest = |g: usize| -> Option<String> {
        let t = globals.get(g)?.as_ref()?;
        Some(ampoule_host::manifest::sha256_hex(t.bytes()))
    };
    let gview = GlobalsView { values: &globals, digest: &digest };
    for names in [None, case.names.as_deref()] {
        let call = CallView { names, inputs: &refs };
        for (ei, g) in guards.iter().enumerate() {
            let r = g.check(&call);
            let rg = g.check_global(&gview);
            if g.is_input_guard() {
                assert!(rg.is_ok(), "input guard {g:?} failed check_global");
                assert!(g.global().is_none());
            } else {
                assert!(r.is_ok(), "global guard {g:?} failed check");
                assert!(g.input().is_none());
            }
            if let Some(i) = g.input() {
                if i as usize >= refs.len() {
                    assert_eq!(r.clone().err().as_deref(), Some("missing"), "{g:?}");
                }
            }
            // The guard's meaning, for the kinds whose meaning is simple.
            match g {
                Guard::Dtype { input, dtype } => {
                    if let Some(t) = refs.get(*input as usize) {
                        assert_eq!(r.is_ok(), t.dtype() == *dtype, "{g:?} on {}", t.meta());
                    }
                }
                Guard::Rank { input, rank } => {
                    if let Some(t) = refs.get(*input as usize) {
                        assert_eq!(r.is_ok(), t.shape().len() as u64 == u64::from(*rank));
                    }
                }
                Guard::Dim { input, axis, size } => {
                    if let Some(t) = refs.get(*input as usize) {
                        let d = t.shape().get(*axis as usize).map(|&d| d as u64);
                        assert_eq!(r.is_ok(), d == Some(*size), "{g:?} on {}", t.meta());
                    }
                }
                Guard::InputCount { count } => {
                    assert_eq!(r.is_ok(), refs.len() as u64 == u64::from(*count));
                }
                Guard::DimRange { input, axis, min, max } => {
                    if let Some(t) = refs.get(*input as usize) {
                        let d = t.shape().get(*axis as usize).map(|&d| d as u64);
                        assert_eq!(r.is_ok(), d.is_some_and(|d| *min <= d && d <= *max), "{g:?}");
                    }
                }
                Guard::DimModulo { input, axis, modulus, remainder } => {
                    if let Some(t) = refs.get(*input as usize) {
                        let d = t.shape().get(*axis as usize).map(|&d| d as u64);
                        let holds = d.is_some_and(|d| *modulus != 0 && d % modulus == *remainder);
                        assert_eq!(r.is_ok(), holds, "{g:?}");
                    }
                }
                Guard::DimEq { input, axis, other, other_axis } => {
                    let a = refs.get(*input as usize).and_then(|t| t.shape().get(*axis as usize));
                    let b = refs.get(*other as usize).and_then(|t| t.shape().get(*other_axis as usize));
                    if a.is_some() && b.is_some() {
                        assert_eq!(r.is_ok(), a == b, "{g:?}");
                    } else {
                        assert!(r.is_err(), "{g:?}");
                    }
                }
                _ => {}
            }
            let expected = g.describe(&sig, &decls);
            let miss = EntryMiss {
                entry: ei,
                expected,
                actual: r.err().or(rg.err()).unwrap_or_default(),
            };
            let _ = miss.to_string();
        }
    }
}

/// Guards as the compiler writes them must read back exactly.
fn round_trip(guards: &[Guard]) {
    let json = serde_json::to_vec(guards).expect("guards serialize");
    let back: Vec<Guard> = serde_json::from_slice(&json).expect("serialized guards parse");
    for (a, b) in guards.iter().zip(&back) {
        let same = match (a, b) {
            (
                Guard::ScalarValue { input: i, value: ScalarValue::Float(x) },
                Guard::ScalarValue { input: j, value: ScalarValue::Float(y) },
            ) => i == j && ((x.is_nan() && y.is_nan()) || x.to_bits() == y.to_bits()),
            (Guard::InputValues { input: i, values: x }, Guard::InputValues { input: j, values: y }) => {
                i == j && x.len() == y.len() && x.iter().zip(y).all(|(a, b)| a.same(*b))
            }
            _ => a == b,
        };
        assert!(same, "{a:?} reads back as {b:?} from {}", String::from_utf8_lossy(&json));
    }
    assert_eq!(guards.len(), back.len());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut u = Unstructured::new(rest);
    if mode & 1 == 0 {
        // A guard list as JSON, then the call from whatever bytes follow
        // the first NUL.
        let (json, tail) = match rest.iter().position(|&b| b == 0) {
            Some(p) => (&rest[..p], &rest[p + 1..]),
            None => (rest, &[][..]),
        };
        let Ok(guards) = serde_json::from_slice::<Vec<Guard>>(json) else { return };
        let mut u = Unstructured::new(tail);
        let Ok(case) = Case::arbitrary(&mut u) else { return };
        run(&guards, &case);
        round_trip(&guards);
    } else {
        let Ok(case) = Case::arbitrary(&mut u) else { return };
        let guards: Vec<Guard> = case.guards.iter().map(guard).collect();
        run(&guards, &case);
        round_trip(&guards);
    }
});
