//! What the conformance runners (`tests/onnx_conformance.rs`,
//! `tests/onnx_models.rs`) share: the cache dir and the fetch step, the
//! allow-list files, the two kernel modes, compiling an ONNX model into an
//! in-memory package and running it, and the element-wise comparison.
//!
//! Included by both test files with `#[path]`, so that it lives next to the
//! data it reads (`conformance/`).
//!
//! Allow-list files hold one line per known failure, `NAME TAG...`, where the
//! tag says why (`unsupported-op:Conv`, `dtype:float16 out of scope`,
//! `mismatch: ...`). A runner fails when a case that is not listed fails, and
//! when a listed case passes in every kernel mode (the line is stale and must
//! go). `AMPOULE_BLESS=1` rewrites the list from the run instead.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ampoule::compiler::onnx::{self, OnnxError, OnnxModel};
use ampoule::compiler::{Compiler, Example};
use ampoule::host::{Host, HostConfig, Impl, Package};
use ampoule::kernels::{Bool8, DType, Tensor};
use anyhow::{bail, Context, Result};

/// The checkout's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `conformance/<name>`.
pub fn data_file(name: &str) -> PathBuf {
    root().join("conformance").join(name)
}

/// The test-data cache: `$AMPOULE_TEST_DATA`, or `target/test-data/`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("AMPOULE_TEST_DATA") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => root().join("target").join("test-data"),
    }
}

/// Prints a line to the real stderr, past the test harness's output
/// capture (which only takes `print!` and `eprint!`), so that counts show in
/// CI logs of passing runs too.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Runs `conformance/fetch <what>`, which is offline and quick when the
/// cache is complete, and returns the cache dir.
pub fn fetch(what: &str) -> Result<PathBuf> {
    let script = data_file("fetch");
    let status = Command::new("bash")
        .arg(&script)
        .arg(what)
        .env("AMPOULE_TEST_DATA", cache_dir())
        .status()
        .with_context(|| format!("cannot run `bash {}`", script.display()))?;
    if !status.success() {
        bail!(
            "`{} {what}` failed ({status}): the conformance test data could not be fetched \
             into {}. It needs python3 with venv and access to PyPI once; see its messages \
             above, and README.md, section Conformance",
            script.display(),
            cache_dir().display()
        );
    }
    Ok(cache_dir())
}

/// Reads a list file: its non-empty lines, trimmed, except comment lines
/// (starting with `#`; tags may hold `#` further on).
pub fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// An allow-list: case name -> tag.
pub fn read_allow_list(path: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for line in read_lines(path)? {
        let (name, tag) = line.split_once(char::is_whitespace).with_context(|| {
            format!(
                "`{}`: line `{line}` must be `NAME TAG` (the tag says why it fails)",
                path.display()
            )
        })?;
        if out
            .insert(name.to_string(), tag.trim().to_string())
            .is_some()
        {
            bail!("`{}`: `{name}` is listed twice", path.display());
        }
    }
    Ok(out)
}

/// Writes an allow-list (for `AMPOULE_BLESS=1`), keeping the file's leading
/// comment block.
pub fn write_allow_list(path: &Path, failures: &BTreeMap<String, String>) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let mut text: String = old
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    for (name, tag) in failures {
        text.push_str(&format!("{name} {tag}\n"));
    }
    std::fs::write(path, text).with_context(|| format!("cannot write `{}`", path.display()))
}

pub fn bless() -> bool {
    std::env::var_os("AMPOULE_BLESS").is_some_and(|v| v == "1")
}

/// The two kernel modes every case runs in: the suite is the portability
/// check, so both must pass the same cases.
pub const MODES: [(&str, Impl); 2] = [
    ("optimized", Impl::Optimized),
    ("reference", Impl::Reference),
];

pub fn host(kernels: Impl) -> Result<Host> {
    Ok(Host::new(HostConfig {
        kernels,
        ..HostConfig::default()
    })?)
}

/// Why a case failed, as an allow-list tag, from an import or compile error.
pub fn import_tag(e: &OnnxError) -> String {
    match e {
        OnnxError::Unsupported { nodes } => {
            let known = onnx::supported_ops();
            let mut tags: Vec<String> = nodes
                .iter()
                .map(|n| match n.opset {
                    _ if !known.contains(&n.op_type.as_str()) => {
                        format!("unsupported-op:{}", n.op_type)
                    }
                    Some(v) if v > onnx::MAX_OPSET => {
                        format!("opset:{v} newer than the importer's {}", onnx::MAX_OPSET)
                    }
                    Some(v) => format!("unsupported-opset:{}@{v}", n.op_type),
                    None => format!("import-error: {}", one_line(&n.reason)),
                })
                .collect();
            tags.sort();
            tags.dedup();
            tags.join(" ")
        }
        other => format!("import-error: {}", one_line(&other.to_string())),
    }
}

/// The first line of `s`, at most 160 characters.
pub fn one_line(s: &str) -> String {
    let l = s.lines().next().unwrap_or("");
    if l.chars().count() > 160 {
        format!("{}...", l.chars().take(160).collect::<String>())
    } else {
        l.to_string()
    }
}

/// An ONNX model compiled into an in-memory package (one entry, for the
/// shapes and dtypes of `inputs`) and opened on each host.
pub fn compile_and_open(
    model: &OnnxModel,
    inputs: &[Tensor],
    hosts: &[Host],
) -> Result<Vec<Package>, String> {
    let examples: Vec<Example> = inputs.iter().map(Example::of).collect();
    let mut c = Compiler::builder(hosts[0].clone())
        .function(model.function("forward"))
        .create()
        .map_err(|e| compile_tag(&anyhow::Error::from(e)))?;
    c.compile("forward", &examples)
        .map_err(|e| compile_tag(&anyhow::Error::from(e)))?;
    hosts
        .iter()
        .map(|h| {
            c.draft()
                .open(h, &BTreeMap::new())
                .map_err(|e| format!("open-error: {}", one_line(&chain_text(&e.into()))))
        })
        .collect()
}

fn compile_tag(e: &anyhow::Error) -> String {
    for cause in e.chain() {
        if let Some(o) = cause.downcast_ref::<OnnxError>() {
            return import_tag(o);
        }
    }
    let text = chain_text(e);
    let text = text
        .strip_prefix("tracing function `forward`: ")
        .unwrap_or(&text);
    format!("compile-error: {}", one_line(text))
}

/// An error and its causes, `: `-separated, leaving out a cause whose text
/// the message before it already includes.
pub fn chain_text(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
    }
    out
}

/// Imports a model, with the tag of the failure.
pub fn load(bytes: &[u8]) -> Result<OnnxModel, String> {
    onnx::load(bytes).map_err(|e| import_tag(&e))
}

/// Element-wise tolerance: `|got - want| <= atol + rtol * |want|`.
#[derive(Clone, Copy, Debug)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
}

fn floats(t: &Tensor) -> Option<Vec<f64>> {
    Some(match t.dtype() {
        DType::F32 => t
            .data::<f32>()
            .ok()?
            .iter()
            .map(|&x| f64::from(x))
            .collect(),
        DType::F64 => t.data::<f64>().ok()?.to_vec(),
        _ => return None,
    })
}

/// The elements of an integer or bool tensor (i128 holds every i64 and
/// u64 value).
fn ints(t: &Tensor) -> Option<Vec<i128>> {
    fn widened<T: ampoule::kernels::Element + Into<i128>>(t: &Tensor) -> Option<Vec<i128>> {
        Some(t.data::<T>().ok()?.iter().map(|&x| x.into()).collect())
    }
    match t.dtype() {
        DType::I8 => widened::<i8>(t),
        DType::U8 => widened::<u8>(t),
        DType::I16 => widened::<i16>(t),
        DType::U16 => widened::<u16>(t),
        DType::I32 => widened::<i32>(t),
        DType::U32 => widened::<u32>(t),
        DType::I64 => widened::<i64>(t),
        DType::U64 => widened::<u64>(t),
        DType::Bool => Some(
            t.data::<Bool8>()
                .ok()?
                .iter()
                .map(|x| i128::from(x.0))
                .collect(),
        ),
        DType::F32 | DType::F64 => None,
    }
}

/// Compares `got` with `want`: same dtype and shape, floats within `tol`
/// (NaN matches NaN, infinities match exactly), integers and bools exact.
/// The error describes the worst element.
pub fn compare(got: &Tensor, want: &Tensor, tol: Tolerance) -> Result<(), String> {
    if got.dtype() != want.dtype() {
        return Err(format!(
            "dtype {:?}, expected {:?}",
            got.dtype(),
            want.dtype()
        ));
    }
    if got.shape() != want.shape() {
        return Err(format!(
            "shape {:?}, expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    if let (Some(g), Some(w)) = (floats(got), floats(want)) {
        // (excess over the tolerance, index, got, want)
        let mut worst: Option<(f64, usize, f64, f64)> = None;
        for (i, (&a, &b)) in g.iter().zip(&w).enumerate() {
            let ok = if b.is_nan() {
                a.is_nan()
            } else if b.is_infinite() || a.is_infinite() {
                a == b
            } else {
                (a - b).abs() <= tol.atol + tol.rtol * b.abs()
            };
            if !ok {
                let excess = if a.is_finite() && b.is_finite() {
                    (a - b).abs() / (tol.atol + tol.rtol * b.abs())
                } else {
                    f64::INFINITY
                };
                if worst.is_none_or(|(e, ..)| excess > e) {
                    worst = Some((excess, i, a, b));
                }
            }
        }
        return match worst {
            None => Ok(()),
            Some((_, i, a, b)) => Err(format!(
                "element {i}: got {a:e}, expected {b:e} (abs err {:.1e}, rtol {:.0e}, atol {:.0e})",
                (a - b).abs(),
                tol.rtol,
                tol.atol
            )),
        };
    }
    match (ints(got), ints(want)) {
        (Some(g), Some(w)) => match g.iter().zip(&w).position(|(a, b)| a != b) {
            None => Ok(()),
            Some(i) => Err(format!("element {i}: got {}, expected {}", g[i], w[i])),
        },
        _ => Err(format!("cannot compare dtype {:?}", got.dtype())),
    }
}

/// Runs `f` and turns a panic into an error naming it: a panic in the
/// compiler or host is a finding to report, not a reason to stop the suite.
pub fn catch<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(format!("panic: {}", one_line(&msg)))
        }
    }
}

/// What a case did in each of [`MODES`]: `Ok` or the failure's tag.
pub type Outcome = Vec<Result<(), String>>;

/// Judges a run against its allow-list. `summary(mode, passed, listed)`
/// prints each mode's counts. Fails on a failure that is not listed, on a
/// case that passes in one mode only, and on a listed case that passes in
/// every mode or was not run (printing the lines to delete). With
/// `AMPOULE_BLESS=1` it rewrites the allow-list from the run instead.
pub fn judge(
    results: &BTreeMap<String, Outcome>,
    allow_path: &Path,
    summary: impl Fn(&str, usize, usize),
) -> Result<()> {
    let allow = read_allow_list(allow_path)?;
    let mut problems = Vec::new();
    for (m, (mode, _)) in MODES.iter().enumerate() {
        let passed = results.values().filter(|o| o[m].is_ok()).count();
        let listed = results
            .iter()
            .filter(|(n, o)| o[m].is_err() && allow.contains_key(*n))
            .count();
        summary(mode, passed, listed);
        for (name, o) in results {
            if let Err(tag) = &o[m] {
                if !allow.contains_key(name) {
                    problems.push(format!(
                        "{name} fails ({mode} kernels) and is not allow-listed: {tag}"
                    ));
                }
            }
        }
    }
    for (name, o) in results {
        if o.iter().any(Result::is_ok) && o.iter().any(Result::is_err) {
            let detail: Vec<String> = MODES
                .iter()
                .zip(o)
                .map(|((mode, _), r)| match r {
                    Ok(()) => format!("{mode}: pass"),
                    Err(t) => format!("{mode}: {t}"),
                })
                .collect();
            problems.push(format!(
                "{name} passes in one kernel mode only (the portability check): {}",
                detail.join("; ")
            ));
        }
    }
    if bless() {
        let failures: BTreeMap<String, String> = results
            .iter()
            .filter_map(|(n, o)| {
                o.iter()
                    .find_map(|r| r.as_ref().err())
                    .map(|t| (n.clone(), t.clone()))
            })
            .collect();
        write_allow_list(allow_path, &failures)?;
        say(&format!(
            "AMPOULE_BLESS=1: wrote {} lines to {}",
            failures.len(),
            allow_path.display()
        ));
        return Ok(());
    }
    let stale: Vec<&String> = allow
        .keys()
        .filter(|n| results.get(*n).is_none_or(|o| o.iter().all(Result::is_ok)))
        .collect();
    if !stale.is_empty() {
        let mut msg = format!(
            "{} allow-listed cases now pass in every kernel mode, or are not run; delete these lines from {}:",
            stale.len(),
            allow_path.display()
        );
        for n in &stale {
            msg.push_str(&format!("\n{n} {}", allow[*n]));
        }
        problems.push(msg);
    }
    if !problems.is_empty() {
        bail!(
            "{} problems:\n{}\n(after a deliberate change, AMPOULE_BLESS=1 rewrites the allow-list from the run; review the diff)",
            problems.len(),
            problems.join("\n")
        );
    }
    Ok(())
}
