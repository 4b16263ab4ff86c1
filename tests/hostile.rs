//! The hostile corpus: packages, wrappers and calls built to break the host,
//! one case per file under `tests/hostile/`, each naming the exact error it
//! must produce (`tests/hostile/README.md` describes the formats).
//!
//! For every case the runner:
//! - builds the package in a temporary directory: a known-good base package
//!   plus the case's mutations, or the case's wrapper beside a well-behaved
//!   `add` function;
//! - opens it on the shared host, or on a fresh host with the case's limits;
//! - checks the outcome: the exact error kind and every message fragment the
//!   case names, or, for `ok` cases, the output against a direct computation;
//! - does it twice: a second open, or a second call on the same package
//!   (after a trap the instance is discarded, so it runs on a fresh one),
//!   must end the same way;
//! - checks that a package refused at open caused no Wasm compile (every
//!   case's wrappers carry a custom section naming the case, so no two cases
//!   share a compiled wrapper);
//! - checks that the host still serves: the case's own package answers a
//!   correct `add` call whenever it opened, and a good package opened at the
//!   start on the shared host answers one after every attempt;
//! - runs on a thread of its own inside `catch_unwind`, so a panic is counted
//!   and named, and a hang is reported instead of stalling the run.
//!
//! It prints one summary line,
//! `hostile corpus: N cases tried, M gave their expected error, P panics`,
//! and fails unless every case gave its expected error, nothing panicked and
//! there are at least 50 cases. `AMPOULE_HOSTILE_VERBOSE=1` also prints each
//! case's outcome.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ampoule::guest::{Program, Reg, Step};
use ampoule::host::error::TrapKind;
use ampoule::host::guard::Guard;
use ampoule::host::manifest::{
    sha256_hex, weights_file, GlobalDecl, GlobalSource, MANIFEST_DIGEST_FILE, MANIFEST_FILE,
};
use ampoule::host::{Bindings, Error, Host, HostConfig, Limits, Package};
use ampoule::kernels::{DType, Tensor};
use common::*;
use serde_json::Value;

/// The weight the base package's `addw` adds to its input.
const W: [f32; 4] = [0.5, 1.5, 2.5, 3.5];
/// The good inputs of `add`, and its result.
const GOOD_A: [f32; 4] = [1.0, 2.0, 3.0, 4.0];
const GOOD_B: [f32; 4] = [10.0, 20.0, 30.0, 40.0];
const GOOD_Y: [f32; 4] = [11.0, 22.0, 33.0, 44.0];
/// How long one case may take before it counts as a hang.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);
/// The error kinds a case may expect besides `trap:<kind>` and `ok`.
const KINDS: &[&str] = &[
    "io",
    "integrity",
    "verify",
    "format-too-new",
    "unknown-function",
    "missing-binding",
    "unknown-binding",
    "guard-miss",
    "bad-inputs",
    "break-miss",
    "compile",
    "sandbox",
    "other",
];

// ---------------------------------------------------------------------------
// Cases.

/// One case, loaded from its file.
struct Case {
    /// `packages/format_too_new`, `wat/forged_handle`...
    name: String,
    /// The bug class, and the real-world bug it mirrors if any.
    why: String,
    /// `ok`, a kind from [`KINDS`], or `trap:<kind>`.
    expect: String,
    /// Fragments the error's message must contain (after substitution).
    messages: Vec<String>,
    /// Limits for a host of the case's own, on top of [`test_host`]'s.
    limits: Option<Value>,
    source: Source,
    /// The call to make once the package opened (none: opening is the case).
    call: Option<CallSpec>,
    /// Calls that must succeed, on the same instance, before the expected
    /// outcome (a wrapper that misbehaves only on its second run).
    warmup: u32,
}

enum Source {
    /// The base package plus mutations.
    Package {
        ops: Vec<Value>,
        /// Write the mutated manifest's digest to `manifest.sha256` (so
        /// verification, not the digest check, sees the mutation).
        refresh_digest: bool,
        bindings: Vec<(String, TensorSpec)>,
    },
    /// A hand-written wrapper packaged as function `evil` beside `add`.
    Wrapper {
        component: Vec<u8>,
        /// `evil` has `add`'s signature, guards and planned buffer (else no
        /// inputs, no buffers, one f32 output).
        like_add: bool,
    },
}

struct CallSpec {
    function: String,
    inputs: Vec<TensorSpec>,
    /// Pass the inputs by name (`call_named`) with these names.
    named: Option<Vec<String>>,
}

#[derive(Clone)]
struct TensorSpec {
    dtype: DType,
    shape: Vec<usize>,
    /// Element values (zeros when absent); JSON numbers or `"nan"`, `"inf"`,
    /// `"-inf"`, `"-0"`.
    values: Option<Vec<f64>>,
}

impl TensorSpec {
    fn f32(shape: &[usize], values: &[f32]) -> TensorSpec {
        TensorSpec {
            dtype: DType::F32,
            shape: shape.to_vec(),
            values: Some(values.iter().map(|&v| f64::from(v)).collect()),
        }
    }

    fn tensor(&self) -> Result<Tensor, String> {
        let Some(values) = &self.values else {
            return Tensor::zeros(self.dtype, &self.shape).map_err(|e| e.to_string());
        };
        let mut bytes = Vec::new();
        for &v in values {
            match self.dtype {
                DType::F32 => bytes.extend_from_slice(&(v as f32).to_le_bytes()),
                DType::F64 => bytes.extend_from_slice(&v.to_le_bytes()),
                DType::I8 => bytes.extend_from_slice(&(v as i8).to_le_bytes()),
                DType::U8 | DType::Bool => bytes.push(v as u8),
                DType::I16 => bytes.extend_from_slice(&(v as i16).to_le_bytes()),
                DType::U16 => bytes.extend_from_slice(&(v as u16).to_le_bytes()),
                DType::I32 => bytes.extend_from_slice(&(v as i32).to_le_bytes()),
                DType::U32 => bytes.extend_from_slice(&(v as u32).to_le_bytes()),
                DType::I64 => bytes.extend_from_slice(&(v as i64).to_le_bytes()),
                DType::U64 => bytes.extend_from_slice(&(v as u64).to_le_bytes()),
            }
        }
        Tensor::from_bytes(self.dtype, &self.shape, &bytes).map_err(|e| e.to_string())
    }

    /// The values as f32, as `add` sees them.
    fn f32_values(&self) -> Option<Vec<f32>> {
        if self.dtype != DType::F32 {
            return None;
        }
        let n: usize = self.shape.iter().product();
        Some(match &self.values {
            Some(v) => v.iter().map(|&x| x as f32).collect(),
            None => vec![0.0; n],
        })
    }
}

fn good_inputs() -> Vec<TensorSpec> {
    vec![
        TensorSpec::f32(&[4], &GOOD_A),
        TensorSpec::f32(&[4], &GOOD_B),
    ]
}

fn parse_number(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| format!("bad number {n}")),
        Value::String(s) => match s.as_str() {
            "nan" => Ok(f64::NAN),
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            "-0" => Ok(-0.0),
            other => other.parse().map_err(|_| format!("bad value {other:?}")),
        },
        other => Err(format!("bad value {other}")),
    }
}

fn parse_tensor(v: &Value) -> Result<TensorSpec, String> {
    let o = v.as_object().ok_or("a tensor is an object")?;
    for k in o.keys() {
        if !["dtype", "shape", "values"].contains(&k.as_str()) {
            return Err(format!("unknown tensor key `{k}`"));
        }
    }
    let dtype: DType = serde_json::from_value(o.get("dtype").cloned().ok_or("tensor.dtype")?)
        .map_err(|e| format!("tensor.dtype: {e}"))?;
    let shape: Vec<usize> = serde_json::from_value(o.get("shape").cloned().ok_or("tensor.shape")?)
        .map_err(|e| format!("tensor.shape: {e}"))?;
    let values = match o.get("values") {
        None => None,
        Some(Value::Array(a)) => Some(a.iter().map(parse_number).collect::<Result<_, _>>()?),
        Some(other) => return Err(format!("tensor.values: {other}")),
    };
    Ok(TensorSpec {
        dtype,
        shape,
        values,
    })
}

fn parse_call(v: &Value) -> Result<CallSpec, String> {
    let o = v.as_object().ok_or("`call` is an object")?;
    for k in o.keys() {
        if !["function", "inputs", "named"].contains(&k.as_str()) {
            return Err(format!("unknown call key `{k}`"));
        }
    }
    let function = o
        .get("function")
        .and_then(Value::as_str)
        .ok_or("call.function")?
        .to_string();
    let inputs = match o.get("inputs") {
        None => vec![],
        Some(Value::String(s)) if s == "good" => good_inputs(),
        Some(Value::Array(a)) => a.iter().map(parse_tensor).collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("call.inputs: {other}")),
    };
    let named = match o.get("named") {
        None => None,
        Some(v) => Some(serde_json::from_value(v.clone()).map_err(|e| format!("call.named: {e}"))?),
    };
    Ok(CallSpec {
        function,
        inputs,
        named,
    })
}

fn check_expect(expect: &str) -> Result<(), String> {
    let known = expect == "ok"
        || KINDS.contains(&expect)
        || expect
            .strip_prefix("trap:")
            .is_some_and(|k| TRAP_KINDS.contains(&k));
    if known {
        Ok(())
    } else {
        Err(format!("unknown expected kind `{expect}`"))
    }
}

/// A package case: `tests/hostile/packages/*.json`.
fn load_package_case(name: String, text: &str) -> Result<Case, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let o = v.as_object().ok_or("a case is a JSON object")?;
    const KEYS: &[&str] = &[
        "why",
        "expect",
        "message",
        "limits",
        "mutate",
        "refresh_digest",
        "bindings",
        "call",
        "warmup",
    ];
    if let Some(k) = o.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!("unknown key `{k}`"));
    }
    let why = o
        .get("why")
        .and_then(Value::as_str)
        .filter(|w| !w.trim().is_empty() && !w.contains('\n'))
        .ok_or("every case needs a one-line `why`")?
        .to_string();
    let expect = o
        .get("expect")
        .and_then(Value::as_str)
        .ok_or("`expect` is required")?
        .to_string();
    check_expect(&expect)?;
    let messages = match o.get("message") {
        None => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| format!("message: {e}"))?,
    };
    if expect != "ok" && messages.is_empty() {
        return Err("a failing case must name a `message` fragment".into());
    }
    let ops = match o.get("mutate") {
        None => vec![],
        Some(Value::Array(a)) => a.clone(),
        Some(_) => return Err("`mutate` is a list".into()),
    };
    let bindings = match o.get("bindings") {
        None => vec![],
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| Ok((k.clone(), parse_tensor(v)?)))
            .collect::<Result<_, String>>()?,
        Some(_) => return Err("`bindings` is an object".into()),
    };
    Ok(Case {
        name,
        why,
        expect,
        messages,
        limits: o.get("limits").cloned(),
        source: Source::Package {
            ops,
            refresh_digest: o
                .get("refresh_digest")
                .map(|v| v.as_bool().ok_or("refresh_digest is a bool"))
                .transpose()?
                .unwrap_or(true),
            bindings,
        },
        call: o.get("call").map(parse_call).transpose()?,
        warmup: o.get("warmup").and_then(Value::as_u64).unwrap_or(0) as u32,
    })
}

/// A wrapper case: `tests/hostile/{wat,wrappers}/*.wat`, with a header of
/// `;; key: value` lines (see the README).
fn load_wat_case(name: String, path: &Path, text: &str) -> Result<Case, String> {
    let header: Vec<&str> = text.lines().take_while(|l| l.starts_with(";;")).collect();
    let expect = header
        .first()
        .and_then(|l| l.strip_prefix(";; expect: "))
        .ok_or("the first line must be `;; expect: <kind>`")?
        .trim();
    let why = header
        .get(1)
        .and_then(|l| l.strip_prefix(";; "))
        .filter(|d| !d.is_empty() && !d.starts_with("wit:"))
        .ok_or("the second line must be `;; <why>`")?
        .to_string();
    let field = |key: &str| -> Vec<String> {
        header[2..]
            .iter()
            .filter_map(|l| l.strip_prefix(&format!(";; {key}: ")))
            .map(|v| v.trim().to_string())
            .collect()
    };
    let mut messages = field("message");
    let expect = match expect {
        "forbidden-import" => {
            messages.push("may import only `ampoule:runtime/host@0.1.0`".into());
            "verify".to_string()
        }
        k if k == "ok" || KINDS.contains(&k) => k.to_string(),
        k => format!("trap:{k}"),
    };
    check_expect(&expect)?;
    if expect != "ok" && messages.is_empty() {
        return Err("a failing case must name a `;; message:` fragment".into());
    }
    let limits = match field("limits").first() {
        None => None,
        Some(spec) => {
            let mut m = serde_json::Map::new();
            for kv in spec.split_whitespace() {
                let (k, v) = kv.split_once('=').ok_or("`;; limits: key=value ...`")?;
                let n: u64 = v.parse().map_err(|_| format!("limit {k}={v}"))?;
                m.insert(k.to_string(), n.into());
            }
            Some(Value::Object(m))
        }
    };
    let like_add = match field("signature").first().map(String::as_str) {
        None | Some("none") => false,
        Some("add") => true,
        Some(other) => return Err(format!("unknown signature `{other}`")),
    };
    let warmup = match field("warmup").first() {
        None => 0,
        Some(n) => n.parse().map_err(|_| format!("warmup {n}"))?,
    };
    let core = wat::parse_str(text).map_err(|e| format!("{e}"))?;
    let component = match field("wit").first() {
        Some(spec) => {
            let (file, world) = spec.split_once(' ').ok_or("`;; wit: FILE WORLD`")?;
            let dir = path.parent().unwrap();
            let wit =
                std::fs::read_to_string(dir.join(file)).map_err(|e| format!("{file}: {e}"))?;
            ampoule::guest::componentize_with_wit(&core, &wit, world)
                .map_err(|e| format!("componentize: {e}"))?
        }
        None => ampoule::guest::componentize(&core).map_err(|e| format!("componentize: {e}"))?,
    };
    Ok(Case {
        name,
        why,
        expect,
        messages,
        limits,
        source: Source::Wrapper {
            component,
            like_add,
        },
        call: Some(CallSpec {
            function: "evil".into(),
            inputs: if like_add { good_inputs() } else { vec![] },
            named: None,
        }),
        warmup,
    })
}

/// Every case file, sorted by name; a file that does not load is reported
/// as a failed case.
fn load_corpus() -> Vec<(String, Result<Case, String>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile");
    let mut out = Vec::new();
    for (sub, ext) in [("wat", "wat"), ("wrappers", "wat"), ("packages", "json")] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join(sub))
            .unwrap_or_else(|e| panic!("tests/hostile/{sub}: {e}"))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == ext))
            .collect();
        paths.sort();
        for path in paths {
            let name = format!("{sub}/{}", path.file_stem().unwrap().to_string_lossy());
            let case = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| match ext {
                    "wat" => load_wat_case(name.clone(), &path, &text),
                    _ => load_package_case(name.clone(), &text),
                });
            out.push((name, case));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Errors.

const TRAP_KINDS: &[&str] = &[
    "deadline",
    "bad-handle",
    "stale-handle",
    "launch-rejected",
    "kernel-failed",
    "budget-exceeded",
    "uninitialized-read",
    "read-only",
    "contract",
    "guest-memory-limit",
    "wasm",
];

#[allow(unreachable_patterns)]
fn trap_name(k: &TrapKind) -> &'static str {
    match k {
        TrapKind::Deadline => "deadline",
        TrapKind::BadHandle => "bad-handle",
        TrapKind::StaleHandle => "stale-handle",
        TrapKind::LaunchRejected => "launch-rejected",
        TrapKind::KernelFailed => "kernel-failed",
        TrapKind::BudgetExceeded => "budget-exceeded",
        TrapKind::UninitializedRead => "uninitialized-read",
        TrapKind::ReadOnly => "read-only",
        TrapKind::Contract => "contract",
        TrapKind::GuestMemoryLimit => "guest-memory-limit",
        TrapKind::Wasm => "wasm",
        _ => "other",
    }
}

/// The kind a case names for an error.
#[allow(unreachable_patterns)]
fn kind_of(e: &Error) -> String {
    match e {
        Error::Io { .. } => "io".into(),
        Error::Integrity { .. } => "integrity".into(),
        Error::Verify(_) => "verify".into(),
        Error::FormatTooNew { .. } => "format-too-new".into(),
        Error::UnknownFunction { .. } => "unknown-function".into(),
        Error::MissingBinding { .. } => "missing-binding".into(),
        Error::UnknownBinding { .. } => "unknown-binding".into(),
        Error::GuardMiss { .. } => "guard-miss".into(),
        Error::BadInputs { .. } => "bad-inputs".into(),
        Error::BreakMiss { .. } => "break-miss".into(),
        Error::Trap { kind, .. } => format!("trap:{}", trap_name(kind)),
        Error::Compile { .. } => "compile".into(),
        Error::Sandbox(_) => "sandbox".into(),
        _ => "other".into(),
    }
}

// ---------------------------------------------------------------------------
// Building packages.

/// Appends a custom section naming `tag` to a component: the same code under
/// a digest no other case shares.
fn tagged(component: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"ampoule-hostile-case";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = component.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

/// A safetensors file: 8-byte little-endian header length, the header
/// (space-padded to a multiple of 8 when `pad`), the data.
fn safetensors(header: &[u8], header_len: Option<u64>, pad: bool, data: &[u8]) -> Vec<u8> {
    let mut h = header.to_vec();
    while pad && h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = header_len.unwrap_or(h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `x + w`: its global in register 0, buffer in 1, input in 2.
fn addw_wrapper() -> Vec<u8> {
    let p = Program {
        globals: 1,
        buffers: 1,
        inputs: 1,
        registers: 3,
        init: vec![],
        run: vec![Step::Launch {
            kernel: 0,
            args: vec![Reg(2), Reg(0), Reg(1)],
        }],
        outputs: vec![Reg(1)],
    };
    ampoule::guest::emit(&p).expect("emit")
}

fn f32_guards(inputs: &[Vec<u64>]) -> Vec<Guard> {
    let mut g = vec![Guard::InputCount {
        count: inputs.len() as u32,
    }];
    for (i, shape) in inputs.iter().enumerate() {
        let input = i as u32;
        g.push(Guard::Dtype {
            input,
            dtype: DType::F32,
        });
        g.push(Guard::Rank {
            input,
            rank: shape.len() as u32,
        });
        for (axis, &size) in shape.iter().enumerate() {
            g.push(Guard::Dim {
                input,
                axis: axis as u32,
                size,
            });
        }
    }
    g
}

/// One node of a package directory being built.
enum Node {
    File(Vec<u8>),
    Symlink(String),
    Fifo,
    Dir,
    /// `manifest.json`: the manifest as mutated so far.
    Manifest,
    /// `manifest.sha256`: the digest of the manifest written.
    ManifestDigest,
}

/// A package being built: the manifest (as a JSON value until a text edit)
/// and every directory entry.
struct Draft {
    manifest: Value,
    text: Option<String>,
    /// The base manifest's text, whose digest `refresh_digest: false` keeps.
    base_text: Vec<u8>,
    nodes: BTreeMap<String, Node>,
    /// `{placeholder}` -> value, for ops and messages.
    subst: Vec<(String, String)>,
}

/// The base package of every package case: three functions over kernel
/// `binary@1 add`, with every wrapper tagged with the case's name:
/// - `functions[0]` `add(a: f32[4], b: f32[4]) -> y` = a + b;
/// - `functions[1]` `add2d(a: f32[2,3], b: f32[2,3]) -> y` = a + b;
/// - `functions[2]` `addw(x: f32[4]) -> y` = x + w, where `globals[0]` `w`
///   is f32[4] tensor `w` of the weights file (guarded by a global guard).
fn base_draft(tag: &str) -> Draft {
    let mut add = HandFunction::add("add", 4);
    add.wrapper = tagged(&add.wrapper, &format!("{tag}/add"));
    let add2d = HandFunction {
        name: "add2d".into(),
        inputs: vec![("a".into(), DType::F32, 2), ("b".into(), DType::F32, 2)],
        outputs: vec![("y".into(), DType::F32, 2)],
        guards: f32_guards(&[vec![2, 3], vec![2, 3]]),
        wrapper: tagged(&add_wrapper(), &format!("{tag}/add2d")),
        kernels: vec![add_kernel()],
        buffers: vec![(DType::F32, vec![2, 3])],
    };
    let mut wguards = f32_guards(&[vec![4]]);
    wguards.insert(
        1,
        Guard::GlobalMeta {
            global: 0,
            dtype: DType::F32,
            shape: vec![4],
        },
    );
    let addw = HandFunction {
        name: "addw".into(),
        inputs: vec![("x".into(), DType::F32, 1)],
        outputs: vec![("y".into(), DType::F32, 1)],
        guards: wguards,
        wrapper: tagged(&addw_wrapper(), &format!("{tag}/addw")),
        kernels: vec![add_kernel()],
        buffers: vec![(DType::F32, vec![4])],
    };
    let mut subst = Vec::new();
    for f in [&add, &add2d, &addw] {
        let d = sha256_hex(&f.wrapper);
        subst.push((
            format!("{{wrapper:{}}}", f.name),
            format!("wrappers/{d}.wasm"),
        ));
        subst.push((
            format!("{{wrapper_key:{}}}", f.name),
            format!("wrappers~1{d}.wasm"),
        ));
        subst.push((format!("{{digest:{}}}", f.name), d));
    }
    let (mut m, files) = hand_manifest(&[add, add2d, addw]);
    let weights = safetensors(
        br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
        None,
        true,
        &f32_bytes(&W),
    );
    let wd = sha256_hex(&weights);
    let wname = weights_file(&wd);
    m.files.insert(wname.clone(), wd.clone());
    m.globals.push(GlobalDecl {
        name: "w".into(),
        dtype: DType::F32,
        shape: vec![4],
        source: GlobalSource::Weight {
            file: wname.clone(),
            tensor: "w".into(),
        },
    });
    m.functions[2].entries[0].globals = vec![0];
    subst.push(("{weights}".into(), wname.clone()));
    subst.push(("{weights_key}".into(), wname.replace('/', "~1")));
    subst.push(("{weights_digest}".into(), wd));

    let mut nodes: BTreeMap<String, Node> =
        files.into_iter().map(|(n, b)| (n, Node::File(b))).collect();
    nodes.insert(wname, Node::File(weights));
    nodes.insert(MANIFEST_FILE.into(), Node::Manifest);
    nodes.insert(MANIFEST_DIGEST_FILE.into(), Node::ManifestDigest);
    Draft {
        manifest: serde_json::to_value(&m).unwrap(),
        text: None,
        base_text: m.to_json(),
        nodes,
        subst,
    }
}

fn substitute(s: &str, subst: &[(String, String)]) -> String {
    let mut s = s.to_string();
    for (k, v) in subst {
        s = s.replace(k.as_str(), v);
    }
    s
}

fn substitute_value(v: &Value, subst: &[(String, String)]) -> Value {
    match v {
        Value::String(s) => Value::String(substitute(s, subst)),
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute_value(x, subst)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (substitute(k, subst), substitute_value(x, subst)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Replaces `from` with `to` in every string and key of `v`.
fn replace_in_value(v: &mut Value, from: &str, to: &str) {
    match v {
        Value::String(s) => *s = s.replace(from, to),
        Value::Array(a) => a.iter_mut().for_each(|x| replace_in_value(x, from, to)),
        Value::Object(o) => {
            let old = std::mem::take(o);
            for (k, mut x) in old {
                replace_in_value(&mut x, from, to);
                o.insert(k.replace(from, to), x);
            }
        }
        _ => {}
    }
}

fn pointer_tokens(ptr: &str) -> Result<Vec<String>, String> {
    let rest = ptr
        .strip_prefix('/')
        .ok_or_else(|| format!("JSON pointer `{ptr}` must start with /"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

/// The parent of the value `ptr` names, and the last token.
fn pointer_parent<'a>(root: &'a mut Value, ptr: &str) -> Result<(&'a mut Value, String), String> {
    let mut tokens = pointer_tokens(ptr)?;
    let last = tokens.pop().unwrap();
    let mut at = root;
    for t in &tokens {
        at = match at {
            Value::Object(o) => o.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| format!("`{ptr}`: no `{t}`"))?;
    }
    Ok((at, last))
}

fn json_set(root: &mut Value, ptr: &str, value: Value) -> Result<(), String> {
    let (parent, last) = pointer_parent(root, ptr)?;
    match parent {
        Value::Object(o) => {
            o.insert(last, value);
        }
        Value::Array(a) if last == "-" => a.push(value),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("`{ptr}`: bad index"))?;
            *a.get_mut(i)
                .ok_or_else(|| format!("`{ptr}`: index out of range"))? = value;
        }
        _ => return Err(format!("`{ptr}`: parent is not a container")),
    }
    Ok(())
}

fn json_remove(root: &mut Value, ptr: &str) -> Result<(), String> {
    let (parent, last) = pointer_parent(root, ptr)?;
    let removed = match parent {
        Value::Object(o) => o.remove(&last).is_some(),
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => {
                a.remove(i);
                true
            }
            _ => false,
        },
        _ => false,
    };
    if removed {
        Ok(())
    } else {
        Err(format!("`{ptr}`: nothing to remove"))
    }
}

fn file_mut<'a>(d: &'a mut Draft, name: &str) -> Result<&'a mut Vec<u8>, String> {
    match d.nodes.get_mut(name) {
        Some(Node::File(b)) => Ok(b),
        _ => Err(format!("no file `{name}` to edit")),
    }
}

/// The bytes a `write` op gives its file.
fn content(o: &serde_json::Map<String, Value>, d: &Draft) -> Result<Vec<u8>, String> {
    if let Some(t) = o.get("text").and_then(Value::as_str) {
        return Ok(t.as_bytes().to_vec());
    }
    if let Some(h) = o.get("hex").and_then(Value::as_str) {
        let h: String = h.chars().filter(|c| !c.is_whitespace()).collect();
        return (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(h.get(i..i + 2).unwrap_or("x"), 16))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("hex: {e}"));
    }
    if let Some(src) = o.get("copy").and_then(Value::as_str) {
        return match d.nodes.get(src) {
            Some(Node::File(b)) => Ok(b.clone()),
            _ => Err(format!("no file `{src}` to copy")),
        };
    }
    if let Some(st) = o.get("safetensors").and_then(Value::as_object) {
        let header = match st.get("header") {
            Some(Value::String(s)) => s.as_bytes().to_vec(),
            Some(v) => serde_json::to_vec(v).unwrap(),
            None => return Err("safetensors.header".into()),
        };
        let data = match st.get("data") {
            Some(Value::Array(a)) => {
                let v: Vec<f32> = a
                    .iter()
                    .map(|x| parse_number(x).map(|f| f as f32))
                    .collect::<Result<_, _>>()?;
                f32_bytes(&v)
            }
            None => vec![],
            Some(other) => return Err(format!("safetensors.data: {other}")),
        };
        let header_len = st.get("header_len").and_then(Value::as_u64);
        let pad = st.get("pad").and_then(Value::as_bool).unwrap_or(true);
        return Ok(safetensors(&header, header_len, pad, &data));
    }
    Err("`write` needs `text`, `hex`, `copy` or `safetensors`".into())
}

/// Expands every `{repeat:TEXT*N}` in `s` to `TEXT` repeated `N` times (for
/// inputs too large to write out, such as deeply nested JSON).
fn expand_repeats(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("{repeat:") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + "{repeat:".len()..];
        let end = tail.find('}').ok_or("unclosed `{repeat:`")?;
        let (text, n) = tail[..end]
            .rsplit_once('*')
            .ok_or("`{repeat:TEXT*N}` needs `*N`")?;
        let n: usize = n.parse().map_err(|_| format!("bad repeat count {n:?}"))?;
        out.push_str(&text.repeat(n));
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Applies one mutation (placeholders already substituted).
fn apply(op: &Value, d: &mut Draft) -> Result<(), String> {
    let o = op.as_object().ok_or("an op is an object")?;
    let s = |k: &str| o.get(k).and_then(Value::as_str);
    let need_value = |d: &mut Draft| -> Result<(), String> {
        if d.text.is_some() {
            Err("JSON-pointer ops must come before text ops".into())
        } else {
            Ok(())
        }
    };
    if let Some(ptr) = s("set") {
        need_value(d)?;
        let v = o.get("value").cloned().ok_or("`set` needs a `value`")?;
        json_set(&mut d.manifest, ptr, v)
    } else if let Some(ptr) = s("remove") {
        need_value(d)?;
        json_remove(&mut d.manifest, ptr)
    } else if let Some(from) = s("replace") {
        let to = expand_repeats(s("with").ok_or("`replace` needs `with`")?)?;
        let text = d.text.take().unwrap_or_else(|| {
            String::from_utf8(serde_json::to_vec_pretty(&d.manifest).unwrap()).unwrap() + "\n"
        });
        if !text.contains(from) {
            return Err(format!("manifest text has no {from:?}"));
        }
        d.text = Some(text.replacen(from, &to, 1));
        Ok(())
    } else if let Some(name) = s("write") {
        let bytes = content(o, d)?;
        if name == MANIFEST_FILE {
            d.text = Some(String::from_utf8(bytes).map_err(|e| e.to_string())?);
            d.nodes.insert(name.into(), Node::Manifest);
        } else {
            d.nodes.insert(name.into(), Node::File(bytes));
        }
        Ok(())
    } else if let Some(name) = s("delete") {
        d.nodes
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| format!("no `{name}` to delete"))
    } else if let Some(name) = s("symlink") {
        let target = s("target").ok_or("`symlink` needs `target`")?;
        d.nodes.insert(name.into(), Node::Symlink(target.into()));
        Ok(())
    } else if let Some(name) = s("fifo") {
        d.nodes.insert(name.into(), Node::Fifo);
        Ok(())
    } else if let Some(name) = s("mkdir") {
        d.nodes.insert(name.into(), Node::Dir);
        Ok(())
    } else if let Some(name) = s("flip") {
        let b = file_mut(d, name)?;
        let i = b.len() / 2;
        b[i] ^= 1;
        Ok(())
    } else if let Some(name) = s("truncate") {
        let len = o
            .get("len")
            .and_then(Value::as_u64)
            .ok_or("`truncate` needs `len`")?;
        file_mut(d, name)?.truncate(len as usize);
        Ok(())
    } else if let Some(name) = s("rehash") {
        // Renames a blob after its new content and rewrites every mention
        // of its old digest in the manifest: the package stays consistent,
        // so verification, not the digest check, judges the content.
        let old = name
            .rsplit('/')
            .next()
            .and_then(|f| f.split('.').next())
            .filter(|d| d.len() == 64)
            .ok_or_else(|| format!("`{name}` is not named by a digest"))?
            .to_string();
        let Some(Node::File(bytes)) = d.nodes.remove(name) else {
            return Err(format!("no file `{name}` to rehash"));
        };
        let new = sha256_hex(&bytes);
        d.nodes.insert(name.replace(&old, &new), Node::File(bytes));
        match &mut d.text {
            Some(t) => *t = t.replace(&old, &new),
            None => replace_in_value(&mut d.manifest, &old, &new),
        }
        for (_, v) in &mut d.subst {
            *v = v.replace(&old, &new);
        }
        Ok(())
    } else {
        Err(format!("unknown op {op}"))
    }
}

/// Writes the draft to `dir`.
fn materialize(d: &Draft, dir: &Path, refresh_digest: bool) -> Result<(), String> {
    let text = match &d.text {
        Some(t) => t.clone().into_bytes(),
        None => {
            let mut t = serde_json::to_vec_pretty(&d.manifest).unwrap();
            t.push(b'\n');
            t
        }
    };
    let digest = sha256_hex(if refresh_digest { &text } else { &d.base_text });
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    for (name, node) in &d.nodes {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{name}: {e}"))?;
        }
        let r = match node {
            Node::File(b) => std::fs::write(&path, b),
            Node::Manifest => std::fs::write(&path, &text),
            Node::ManifestDigest => std::fs::write(&path, &digest),
            Node::Symlink(target) => std::os::unix::fs::symlink(target, &path),
            Node::Dir => std::fs::create_dir_all(&path),
            Node::Fifo => std::process::Command::new("mkfifo")
                .arg(&path)
                .status()
                .and_then(|s| {
                    s.success()
                        .then_some(())
                        .ok_or_else(|| std::io::Error::other("mkfifo failed"))
                }),
        };
        r.map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

/// Builds a case's package in `dir`; returns the placeholder table.
fn build(case: &Case, dir: &Path) -> Result<Vec<(String, String)>, String> {
    match &case.source {
        Source::Package {
            ops,
            refresh_digest,
            ..
        } => {
            let mut d = base_draft(&case.name);
            for (i, op) in ops.iter().enumerate() {
                let op = substitute_value(op, &d.subst);
                apply(&op, &mut d).map_err(|e| format!("mutate[{i}]: {e}"))?;
            }
            materialize(&d, dir, *refresh_digest)?;
            Ok(d.subst)
        }
        Source::Wrapper {
            component,
            like_add,
        } => {
            let mut good = HandFunction::add("add", 4);
            good.wrapper = tagged(&good.wrapper, &format!("{}/add", case.name));
            let evil = if *like_add {
                let mut f = HandFunction::add("evil", 4);
                f.wrapper = component.clone();
                f
            } else {
                HandFunction::raw("evil", component.clone())
            };
            let (m, files) = hand_manifest(&[good, evil]);
            write_package(dir, &m, &files);
            Ok(vec![])
        }
    }
}

// ---------------------------------------------------------------------------
// Running cases.

fn host_with(limits: &Value) -> Result<Host, String> {
    let o = limits.as_object().ok_or("`limits` is an object")?;
    let mut l = Limits {
        deadline: Duration::from_millis(300),
        host_tensor_bytes: 256 << 20,
        ..Limits::default()
    };
    for (k, v) in o {
        let n = v
            .as_u64()
            .ok_or_else(|| format!("limit `{k}` is a number"))?;
        match k.as_str() {
            "deadline_ms" => l.deadline = Duration::from_millis(n),
            "guest_memory_bytes" => l.guest_memory_bytes = n as usize,
            "host_tensor_bytes" => l.host_tensor_bytes = n as usize,
            "max_package_bytes" => l.max_package_bytes = n,
            "max_slots" => l.max_slots = n as u32,
            other => return Err(format!("unknown limit `{other}`")),
        }
    }
    Host::new(HostConfig {
        limits: l,
        cache_dir: None,
        ..HostConfig::default()
    })
    .map_err(|e| format!("host: {e}"))
}

/// Whether two f32 results agree: bit for bit, or both NaN.
fn same_f32(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// `add` on `pkg` with the good inputs gives the right answer.
fn check_serves(pkg: &Package, what: &str) -> Result<(), String> {
    let inputs: Vec<Tensor> = good_inputs().iter().map(|t| t.tensor().unwrap()).collect();
    let y = pkg
        .call("add", &inputs)
        .map_err(|e| format!("{what}: a good `add` call failed: {e}"))?;
    let y = y[0].to_vec::<f32>().map_err(|e| e.to_string())?;
    if y != GOOD_Y {
        return Err(format!("{what}: a good `add` call gave {y:?}"));
    }
    Ok(())
}

/// What an `ok` call must return, computed directly: `add`, `add2d` and
/// `evil` (like `add`) sum their inputs, `addw` adds `W`.
fn expected_output(call: &CallSpec) -> Result<Vec<f32>, String> {
    let vals: Vec<Vec<f32>> = call
        .inputs
        .iter()
        .map(|t| t.f32_values().ok_or("an ok call takes f32 inputs"))
        .collect::<Result<_, _>>()?;
    let (a, b) = match (call.function.as_str(), vals.as_slice()) {
        ("add" | "add2d" | "evil", [a, b]) => (a.clone(), b.clone()),
        ("addw", [x]) => (x.clone(), W.to_vec()),
        _ => return Err(format!("no direct computation for `{}`", call.function)),
    };
    Ok(a.iter().zip(&b).map(|(x, y)| x + y).collect())
}

fn call(pkg: &Package, spec: &CallSpec) -> Result<Result<Vec<Tensor>, Error>, String> {
    let inputs: Vec<Tensor> = spec
        .inputs
        .iter()
        .map(TensorSpec::tensor)
        .collect::<Result<_, _>>()?;
    Ok(match &spec.named {
        None => pkg.call(&spec.function, &inputs),
        Some(names) => {
            let named: Vec<(&str, Tensor)> = names.iter().map(String::as_str).zip(inputs).collect();
            pkg.call_named(&spec.function, &named)
        }
    })
}

/// Checks one outcome against the case; returns a one-line description.
fn judge(
    case: &Case,
    outcome: &Result<Vec<Tensor>, Error>,
    subst: &[(String, String)],
) -> Result<String, String> {
    match outcome {
        Ok(out) => {
            if case.expect != "ok" {
                return Err(format!("expected {}, but it succeeded", case.expect));
            }
            if let Some(spec) = &case.call {
                let want = expected_output(spec)?;
                let got = out
                    .first()
                    .ok_or("no output")?
                    .to_vec::<f32>()
                    .map_err(|e| e.to_string())?;
                if got.len() != want.len() || !got.iter().zip(&want).all(|(&g, &w)| same_f32(g, w))
                {
                    return Err(format!(
                        "output {got:?}, a direct computation gives {want:?}"
                    ));
                }
            }
            Ok("ok".into())
        }
        Err(e) => {
            let kind = kind_of(e);
            let msg = e.to_string();
            if kind != case.expect {
                return Err(format!("expected {}, got {kind}: {msg}", case.expect));
            }
            for m in &case.messages {
                let m = substitute(m, subst);
                if !msg.contains(&m) {
                    return Err(format!("{kind}, but the message lacks {m:?}: {msg}"));
                }
            }
            Ok(format!(
                "{kind}: {}",
                msg.lines().collect::<Vec<_>>().join(" | ")
            ))
        }
    }
}

struct Shared {
    host: Host,
    good: Package,
    tmp: PathBuf,
}

/// Runs one case; `Ok` holds a description of the outcome.
fn run_case(case: &Case, shared: &Shared) -> Result<String, String> {
    let host = match &case.limits {
        Some(l) => host_with(l)?,
        None => shared.host.clone(),
    };
    let dir = shared.tmp.join(case.name.replace('/', "__"));
    let subst = build(case, &dir)?;
    let bindings = || -> Result<Bindings, String> {
        let mut b = Bindings::new();
        if let Source::Package { bindings, .. } = &case.source {
            for (name, t) in bindings {
                b.insert(name.clone(), t.tensor()?);
            }
        }
        Ok(b)
    };
    let open = || -> Result<Result<Package, Error>, String> {
        let before = host.stats().wasm_compiles;
        let opened = host.open(&dir, bindings()?);
        if opened.is_err() && host.stats().wasm_compiles != before {
            return Err("Wasm was compiled for a package that was refused at open".into());
        }
        Ok(opened)
    };

    let pkg = match open()? {
        Err(e) => {
            // Refused at open: twice, and the host keeps serving.
            let outcome = judge(case, &Err(e), &subst)?;
            check_serves(&shared.good, "the shared good package")?;
            match open()? {
                Ok(_) => return Err("the second open succeeded".into()),
                Err(e) => judge(case, &Err(e), &subst).map_err(|e| format!("second open: {e}"))?,
            };
            check_serves(&shared.good, "the shared good package")?;
            return Ok(outcome);
        }
        Ok(pkg) => pkg,
    };
    let Some(spec) = &case.call else {
        // Opening was the case.
        let outcome = judge(case, &Ok(vec![]), &subst)?;
        check_serves(&pkg, "the case's package")?;
        return Ok(outcome);
    };
    let mut outcome = String::new();
    for attempt in 0..2 {
        for w in 0..case.warmup {
            let r = call(&pkg, spec)?;
            if let Err(e) = r {
                return Err(format!("warm-up call {w} (attempt {attempt}) failed: {e}"));
            }
        }
        let start = Instant::now();
        let r = call(&pkg, spec)?;
        let took = start.elapsed();
        outcome = judge(case, &r, &subst).map_err(|e| format!("attempt {attempt}: {e}"))?;
        if case.expect == "trap:deadline"
            && took > host.config().limits.deadline + Duration::from_secs(2)
        {
            return Err(format!("the deadline trap took {took:?}"));
        }
        check_serves(&pkg, "the case's package")?;
        check_serves(&shared.good, "the shared good package")?;
    }
    Ok(outcome)
}

enum Verdict {
    Pass(String),
    Fail(String),
    Panic(String),
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

#[test]
fn every_hostile_case_gets_its_typed_error_and_the_host_keeps_serving() {
    let corpus = load_corpus();
    let tmp = tempfile::tempdir().unwrap();
    let host = test_host();
    let good_dir = tmp.path().join("good");
    let d = base_draft("good");
    materialize(&d, &good_dir, true).unwrap();
    let good = host
        .open(&good_dir, Bindings::new())
        .expect("the good package opens");
    check_serves(&good, "the good package").unwrap();
    let shared = std::sync::Arc::new(Shared {
        host,
        good,
        tmp: tmp.path().to_path_buf(),
    });
    let verbose = std::env::var_os("AMPOULE_HOSTILE_VERBOSE").is_some();

    let (mut tried, mut passed, mut panics) = (0usize, 0usize, 0usize);
    let mut failures = Vec::new();
    for (name, case) in corpus {
        tried += 1;
        let case = match case {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{name}: cannot load the case: {e}"));
                continue;
            }
        };
        let (tx, rx) = mpsc::channel();
        let shared = shared.clone();
        let why = case.why.clone();
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let r = catch_unwind(AssertUnwindSafe(|| run_case(&case, &shared)));
                let _ = tx.send(match r {
                    Ok(Ok(s)) => Verdict::Pass(s),
                    Ok(Err(e)) => Verdict::Fail(e),
                    Err(p) => Verdict::Panic(panic_message(&*p)),
                });
            })
            .unwrap();
        match rx.recv_timeout(CASE_TIMEOUT) {
            Ok(Verdict::Pass(s)) => {
                passed += 1;
                if verbose {
                    println!("pass {name}: {s}\n     why: {why}");
                }
            }
            Ok(Verdict::Fail(e)) => failures.push(format!("{name}: {e}")),
            Ok(Verdict::Panic(p)) => {
                panics += 1;
                failures.push(format!("{name}: PANIC: {p}"));
            }
            Err(_) => failures.push(format!("{name}: no outcome within {CASE_TIMEOUT:?} (hung)")),
        }
    }
    for f in &failures {
        println!("FAIL {f}");
    }
    // Straight to stderr, past the test harness's capture: the summary shows
    // in every run (CI's `cargo test --workspace` included), not only with
    // `--nocapture`.
    let _ = writeln!(
        std::io::stderr(),
        "hostile corpus: {tried} cases tried, {passed} gave their expected error, {panics} panics"
    );
    assert_eq!(panics, 0, "panics: {failures:#?}");
    assert_eq!(passed, tried, "failures: {failures:#?}");
    assert!(tried >= 50, "the corpus has only {tried} cases");
}
