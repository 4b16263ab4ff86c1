//! Bundled samples: replaying an entry's recorded inputs on this host's
//! kernels and comparing the outputs with the recorded ones.
//!
//! A compiler may bundle, per entry, sample inputs and the outputs its
//! reference kernels gave for them (`EntryDecl::samples`; the file format is
//! in [`crate::manifest`]). [`Package::replay_samples`] runs an entry on them
//! (`Package::call_entry`: that entry, not the first one whose guards hold)
//! and [`compare`]s each declared output with its recorded value under the
//! output's [`Tolerance`]: element by element, `|got - want| <= atol + rtol
//! * |want|`, NaN matching only NaN and an infinity only the same infinity.
//! `ampoule test` is this, for every entry, with a line per output.
//!
//! Verification already checked the samples file at open (names, dtypes,
//! ranks, the entry's guards), so reading it here fails only on a bug.
//! Updated inputs' new values (`Signature::mutates`) are not recorded and
//! not compared.

use ampoule_kernels::{DType, Tensor};

use crate::error::{Error, Problem};
use crate::manifest::{sample_input_tensor, sample_output_tensor, Tolerance};
use crate::package::Package;
use crate::verify::safetensors_dtype;

/// An entry's samples, in signature order.
#[derive(Clone, Debug)]
pub struct Samples {
    pub inputs: Vec<Tensor>,
    /// The recorded outputs, one per declared output.
    pub outputs: Vec<Tensor>,
    /// One per declared output.
    pub tolerances: Vec<Tolerance>,
}

/// How one replayed output compares with its recorded value.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// Largest `|got - want|` (infinite where one is NaN or the infinities
    /// differ).
    pub max_abs: f64,
    /// Largest `|got - want| / |want|` over elements whose recorded value is
    /// not zero (those are judged by `atol` alone).
    pub max_rel: f64,
    /// Elements outside `atol + rtol * |want|`.
    pub failures: usize,
    pub elements: usize,
    /// A dtype or shape that differs from the recorded one (then no
    /// element was compared).
    pub mismatch: Option<String>,
}

impl Comparison {
    pub fn passed(&self) -> bool {
        self.mismatch.is_none() && self.failures == 0
    }
}

/// One output of one entry, replayed.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputReport {
    pub function: String,
    pub entry: usize,
    pub output: String,
    pub tolerance: Tolerance,
    pub comparison: Comparison,
}

impl std::fmt::Display for OutputReport {
    /// `forward entry 0 y: max abs err 3.1e-7 (atol 1.0e-5), max rel err
    /// 2.0e-6 (rtol 1.0e-4)  ok`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.comparison;
        write!(
            f,
            "{} entry {} {}: ",
            self.function, self.entry, self.output
        )?;
        if let Some(m) = &c.mismatch {
            return write!(f, "{m}  FAIL");
        }
        write!(
            f,
            "max abs err {:.1e} (atol {:.1e}), max rel err {:.1e} (rtol {:.1e})  ",
            c.max_abs, self.tolerance.atol, c.max_rel, self.tolerance.rtol
        )?;
        if c.failures == 0 {
            write!(f, "ok")
        } else {
            write!(
                f,
                "FAIL ({} of {} elements out of tolerance)",
                c.failures, c.elements
            )
        }
    }
}

/// One element, as compared.
#[derive(Clone, Copy)]
enum Num {
    F(f64),
    /// Any integer element (i128 holds both i64 and u64 exactly).
    I(i128),
}

/// The elements of `t`, decoded from its little-endian bytes.
fn elements(t: &Tensor) -> Vec<Num> {
    let b = t.bytes();
    let d = t.dtype();
    let n = d.size();
    b.chunks_exact(n)
        .map(|c| {
            let mut a = [0u8; 8];
            a[..n].copy_from_slice(c);
            match d {
                DType::F32 => Num::F(f64::from(f32::from_le_bytes([a[0], a[1], a[2], a[3]]))),
                DType::F64 => Num::F(f64::from_le_bytes(a)),
                DType::I8 => Num::I(i128::from(a[0] as i8)),
                DType::U8 | DType::Bool => Num::I(i128::from(a[0])),
                DType::I16 => Num::I(i128::from(i16::from_le_bytes([a[0], a[1]]))),
                DType::U16 => Num::I(i128::from(u16::from_le_bytes([a[0], a[1]]))),
                DType::I32 => Num::I(i128::from(i32::from_le_bytes([a[0], a[1], a[2], a[3]]))),
                DType::U32 => Num::I(i128::from(u32::from_le_bytes([a[0], a[1], a[2], a[3]]))),
                DType::I64 => Num::I(i128::from(i64::from_le_bytes(a))),
                DType::U64 => Num::I(i128::from(u64::from_le_bytes(a))),
            }
        })
        .collect()
}

/// `|got - want|` and `|want|`.
fn error(got: Num, want: Num) -> (f64, f64) {
    match (got, want) {
        (Num::F(g), Num::F(w)) => {
            let err = if (g.is_nan() && w.is_nan()) || g == w {
                0.0
            } else {
                let e = (g - w).abs();
                if e.is_nan() {
                    f64::INFINITY
                } else {
                    e
                }
            };
            (err, w.abs())
        }
        (Num::I(g), Num::I(w)) => ((g - w).unsigned_abs() as f64, (w as f64).abs()),
        // Same dtype on both sides (checked by `compare`).
        _ => (f64::INFINITY, 0.0),
    }
}

/// Compares a replayed output with its recorded value (see the module doc).
pub fn compare(got: &Tensor, want: &Tensor, tol: Tolerance) -> Comparison {
    let mut c = Comparison {
        max_abs: 0.0,
        max_rel: 0.0,
        failures: 0,
        elements: want.numel(),
        mismatch: None,
    };
    if got.meta() != want.meta() {
        c.mismatch = Some(format!("got {}, recorded {}", got.meta(), want.meta()));
        return c;
    }
    for (g, w) in elements(got).into_iter().zip(elements(want)) {
        let (err, mag) = error(g, w);
        c.max_abs = c.max_abs.max(err);
        if mag > 0.0 {
            c.max_rel = c.max_rel.max(err / mag);
        }
        // An exact match always passes (NaN and NaN, where the bound is
        // NaN); an infinite error (NaN against a number, differing
        // infinities) always fails, though `rtol * inf` would admit it; and
        // a NaN bound fails rather than passes.
        let bound = tol.atol + tol.rtol * mag;
        let within = matches!(
            err.partial_cmp(&bound),
            Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
        );
        if err > 0.0 && (err.is_infinite() || !within) {
            c.failures += 1;
        }
    }
    c
}

fn bad(at: String, message: String) -> Error {
    Error::Verify(vec![Problem { at, message }])
}

impl Package {
    /// The samples bundled with entry `entry` of `function`, or `None` if it
    /// has none.
    pub fn samples(&self, function: &str, entry: usize) -> Result<Option<Samples>, Error> {
        let f = self
            .manifest()
            .function(function)
            .ok_or_else(|| Error::UnknownFunction {
                name: function.into(),
                available: self
                    .manifest()
                    .functions
                    .iter()
                    .map(|f| format!("`{}`", f.name))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let Some(decl) = f.entries.get(entry).and_then(|e| e.samples.as_ref()) else {
            return Ok(None);
        };
        let at = || {
            format!(
                "function `{function}` entry {entry} samples `{}`",
                decl.file
            )
        };
        let bytes = self
            .file(&decl.file)
            .ok_or_else(|| bad(at(), "the file is missing".into()))?;
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| bad(at(), format!("not a valid safetensors file: {e}")))?;
        let read = |name: String| -> Result<Tensor, Error> {
            let view = st
                .tensor(&name)
                .map_err(|_| bad(at(), format!("no tensor `{name}`")))?;
            let dtype = safetensors_dtype(view.dtype()).ok_or_else(|| {
                bad(
                    at(),
                    format!("tensor `{name}` has dtype {:?}", view.dtype()),
                )
            })?;
            Tensor::from_bytes(dtype, view.shape(), view.data())
                .map_err(|e| bad(at(), format!("tensor `{name}`: {e}")))
        };
        let inputs = f
            .signature
            .inputs
            .iter()
            .map(|a| read(sample_input_tensor(&a.name)))
            .collect::<Result<_, _>>()?;
        let outputs = f
            .signature
            .outputs
            .iter()
            .map(|a| read(sample_output_tensor(&a.name)))
            .collect::<Result<_, _>>()?;
        let tolerances = f
            .signature
            .outputs
            .iter()
            .map(|a| {
                decl.tolerances
                    .get(&a.name)
                    .copied()
                    .ok_or_else(|| bad(at(), format!("output `{}` has no tolerance", a.name)))
            })
            .collect::<Result<_, _>>()?;
        Ok(Some(Samples {
            inputs,
            outputs,
            tolerances,
        }))
    }

    /// Runs entry `entry` of `function` on its bundled samples with this
    /// host's kernels and compares every declared output with the recorded
    /// one; `None` if the entry has no samples.
    pub fn replay_samples(
        &self,
        function: &str,
        entry: usize,
    ) -> Result<Option<Vec<OutputReport>>, Error> {
        let Some(s) = self.samples(function, entry)? else {
            return Ok(None);
        };
        let (outputs, _updates) = self.call_entry(function, entry, &s.inputs)?;
        let names: Vec<String> = self
            .manifest()
            .function(function)
            .map(|f| f.signature.outputs.iter().map(|o| o.name.clone()).collect())
            .unwrap_or_default();
        Ok(Some(
            names
                .into_iter()
                .zip(outputs.iter().zip(&s.outputs).zip(&s.tolerances))
                .map(|(output, ((got, want), &tolerance))| OutputReport {
                    function: function.to_string(),
                    entry,
                    output,
                    tolerance,
                    comparison: compare(got, want, tolerance),
                })
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: Vec<f32>) -> Tensor {
        let n = v.len();
        Tensor::from_vec(&[n], v).unwrap()
    }

    #[test]
    fn compare_is_allclose_with_nan_and_infinities() {
        let tol = Tolerance {
            rtol: 1e-3,
            atol: 1e-6,
        };
        let want = t(vec![1.0, 0.0, f32::NAN, f32::INFINITY, -2.0]);
        let same = compare(&want, &want, tol);
        assert!(same.passed(), "{same:?}");
        assert_eq!((same.max_abs, same.max_rel), (0.0, 0.0));

        // Within rtol of 1.0, within atol of 0.0.
        let near = t(vec![1.0005, 5e-7, f32::NAN, f32::INFINITY, -2.0]);
        let c = compare(&near, &want, tol);
        assert!(c.passed(), "{c:?}");
        assert!((c.max_abs - f64::from(1.0005f32 - 1.0)).abs() < 1e-12);

        // NaN against a number, and the other infinity, fail.
        let far = t(vec![1.0, 0.0, 1.0, f32::NEG_INFINITY, -2.01]);
        let c = compare(&far, &want, tol);
        assert_eq!(c.failures, 3, "{c:?}");
        assert_eq!(c.max_abs, f64::INFINITY);

        let c = compare(&t(vec![1.0]), &want, tol);
        assert!(c.mismatch.is_some() && !c.passed());
    }

    #[test]
    fn integers_compare_exactly() {
        let want = Tensor::from_vec(&[3], vec![i64::MIN, 0, i64::MAX]).unwrap();
        assert!(compare(&want, &want, Tolerance::EXACT).passed());
        let got = Tensor::from_vec(&[3], vec![i64::MAX, 0, i64::MAX]).unwrap();
        let c = compare(&got, &want, Tolerance::EXACT);
        assert_eq!(c.failures, 1);
        assert!(c.max_abs > 1e19);
        // u64 values above i64::MAX are themselves, not negative numbers.
        let want = Tensor::from_vec(&[2], vec![u64::MAX, 1]).unwrap();
        assert!(compare(&want, &want, Tolerance::EXACT).passed());
        let got = Tensor::from_vec(&[2], vec![u64::MAX - 1, 1]).unwrap();
        let c = compare(&got, &want, Tolerance::EXACT);
        assert_eq!((c.failures, c.max_abs), (1, 1.0));
        for (got, want, diff) in [
            (
                Tensor::from_vec(&[2], vec![i16::MIN, 3]).unwrap(),
                Tensor::from_vec(&[2], vec![i16::MAX, 3]).unwrap(),
                f64::from(i16::MAX) - f64::from(i16::MIN),
            ),
            (
                Tensor::from_vec(&[2], vec![0u16, 3]).unwrap(),
                Tensor::from_vec(&[2], vec![u16::MAX, 3]).unwrap(),
                f64::from(u16::MAX),
            ),
            (
                Tensor::from_vec(&[2], vec![0u32, 3]).unwrap(),
                Tensor::from_vec(&[2], vec![u32::MAX, 3]).unwrap(),
                f64::from(u32::MAX),
            ),
        ] {
            let c = compare(&got, &want, Tolerance::EXACT);
            assert_eq!((c.failures, c.max_abs), (1, diff), "{}", want.dtype());
        }
    }
}
