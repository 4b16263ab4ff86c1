//! What the fuzz targets share: the fixture package, one host per process,
//! bindings for whatever host-bound globals a (mutated) manifest declares,
//! and calls that exercise every entry of an opened package.
//!
//! Harness code: it may panic on its own setup (a missing fixture), never
//! on what the fuzzer controls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use ampoule_host::guard::{Guard, ScalarValue};
use ampoule_host::manifest::{ArgKind, GlobalSource, Manifest, MANIFEST_FILE};
use ampoule_host::{Bindings, Error, Host, HostConfig, Impl, Limits, Package, PackageFiles};
use ampoule_kernels::{DType, Tensor};

/// The `op` attribute values of `unary@1`, `binary@1`, `compare@1` and
/// `reduce@1` (the catalog in `ampoule_kernels`' crate doc).
pub const UNARY: [&str; 20] = [
    "neg", "abs", "relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "exp", "log", "sqrt", "rsqrt",
    "recip", "erf", "floor", "ceil", "sin", "cos", "leaky_relu", "hard_sigmoid", "hard_swish",
];
pub const BINARY: [&str; 7] = ["add", "sub", "mul", "div", "pow", "max", "min"];
pub const COMPARE: [&str; 5] = ["eq", "lt", "le", "gt", "ge"];
pub const REDUCE: [&str; 4] = ["sum", "mean", "max", "min"];

/// Largest tensor the harness builds for a call or a binding, in elements.
pub const MAX_NUMEL: usize = 1 << 12;

/// The committed fixture package (`fixtures/quickstart.ampoule`, written by
/// `examples/quickstart.rs`; `fixtures/regen` rewrites it).
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/quickstart.ampoule")
}

/// The fixture's manifest bytes and other files, read once.
pub fn fixture() -> &'static (Vec<u8>, Vec<(String, Vec<u8>)>) {
    static F: OnceLock<(Vec<u8>, Vec<(String, Vec<u8>)>)> = OnceLock::new();
    F.get_or_init(|| {
        let (manifest, files) = host().read_package(fixture_dir()).expect("fixture package reads");
        // A stale fixture would make every input fail at the first check
        // and the targets fuzz nothing: refuse to start instead.
        let m = Manifest::from_json(&manifest).expect("fixture manifest parses (run fixtures/regen)");
        let pkg = host()
            .open_files(&manifest, files.clone(), bindings_for(&m))
            .expect("fixture package opens (run fixtures/regen)");
        for (fi, f) in m.functions.iter().enumerate() {
            let inputs = inputs_for(&m, fi, 0).expect("fixture inputs");
            pkg.call(&f.name, &inputs).expect("fixture function runs");
        }
        let files = files.iter().map(|(n, b)| (n.to_string(), b.to_vec())).collect();
        (manifest, files)
    })
}

/// The fixture as `PackageFiles`.
pub fn fixture_files() -> PackageFiles {
    let mut files = PackageFiles::new();
    for (n, b) in &fixture().1 {
        files.insert(n.clone(), b.clone());
    }
    files
}

/// One host per process: no artifact cache, short deadline, a small tensor
/// budget (so a hostile plan is refused instead of exhausting memory).
pub fn host() -> &'static Host {
    static H: OnceLock<Host> = OnceLock::new();
    H.get_or_init(|| host_with(Impl::Optimized))
}

/// A host like [`host`] running the given kernel implementations.
pub fn host_with(kernels: Impl) -> Host {
    Host::new(config(kernels)).expect("host")
}

/// The configuration of [`host_with`].
pub fn config(kernels: Impl) -> HostConfig {
    HostConfig {
        limits: Limits {
            deadline: Duration::from_millis(500),
            host_tensor_bytes: 64 << 20,
            max_package_bytes: 16 << 20,
            pool_size: 2,
            ..Limits::default()
        },
        kernels,
        cache_dir: None,
        ..HostConfig::default()
    }
}

/// A tensor of `dtype` and `shape` filled with a small repeating pattern,
/// or `None` if it would be larger than [`MAX_NUMEL`].
pub fn pattern(dtype: DType, shape: &[usize], seed: u8) -> Option<Tensor> {
    let n = ampoule_kernels::checked_numel(shape).filter(|&n| n <= MAX_NUMEL)?;
    let mut bytes = Vec::with_capacity(n * dtype.size());
    for i in 0..n {
        let k = (i as i64 * 7 + i64::from(seed)) % 9 - 4;
        push_element(&mut bytes, dtype, k, k as f64 * 0.25);
    }
    Tensor::from_bytes(dtype, shape, &bytes).ok()
}

/// Appends one element of `dtype` to `bytes`: `f` for the float dtypes,
/// `k` (wrapped, or its magnitude for the unsigned ones, or its low bit for
/// bool) for the others.
pub fn push_element(bytes: &mut Vec<u8>, dtype: DType, k: i64, f: f64) {
    match dtype {
        DType::F32 => bytes.extend_from_slice(&(f as f32).to_le_bytes()),
        DType::F64 => bytes.extend_from_slice(&f.to_le_bytes()),
        DType::I8 => bytes.push(k as i8 as u8),
        DType::U8 => bytes.push(k.unsigned_abs() as u8),
        DType::Bool => bytes.push((k & 1) as u8),
        DType::I16 => bytes.extend_from_slice(&(k as i16).to_le_bytes()),
        DType::U16 => bytes.extend_from_slice(&(k.unsigned_abs() as u16).to_le_bytes()),
        DType::I32 => bytes.extend_from_slice(&(k as i32).to_le_bytes()),
        DType::U32 => bytes.extend_from_slice(&(k.unsigned_abs() as u32).to_le_bytes()),
        DType::I64 => bytes.extend_from_slice(&k.to_le_bytes()),
        DType::U64 => bytes.extend_from_slice(&k.unsigned_abs().to_le_bytes()),
    }
}

/// Bindings for every host-bound global `m` declares, of its declared meta
/// (or a one-element tensor when that would be too large).
pub fn bindings_for(m: &Manifest) -> Bindings {
    let mut b = Bindings::new();
    for g in m.globals.iter().filter(|g| g.source == GlobalSource::Bound) {
        let shape: Vec<usize> = g.shape.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
        let t = pattern(g.dtype, &shape, 3).unwrap_or_else(|| Tensor::scalar(2.0f32));
        b.insert(g.name.clone(), t);
    }
    b
}

/// Inputs for entry `entry` of function `f`: the signature's dtypes and
/// ranks, dims and scalar values taken from the entry's guards (so the call
/// selects that entry when it can), 1 elsewhere.
pub fn inputs_for(m: &Manifest, f: usize, entry: usize) -> Option<Vec<Tensor>> {
    let decl = m.functions.get(f)?;
    let guards: &[Guard] = decl.entries.get(entry).map_or(&[], |e| &e.guards);
    let mut out = Vec::new();
    for (i, a) in decl.signature.inputs.iter().enumerate().take(8) {
        let i = i as u32;
        let rank = (a.kind.rank() as usize).min(8);
        let mut shape = vec![1usize; rank];
        let mut dtype = a.kind.dtype();
        let mut scalar = None;
        for g in guards {
            match g {
                Guard::Dim { input, axis, size } if *input == i => {
                    if let Some(d) = shape.get_mut(*axis as usize) {
                        *d = usize::try_from(*size).unwrap_or(usize::MAX);
                    }
                }
                Guard::Dtype { input, dtype: d } if *input == i => dtype = *d,
                Guard::ScalarValue { input, value } if *input == i => scalar = Some(*value),
                _ => {}
            }
        }
        let t = match (scalar, &a.kind) {
            (Some(v), ArgKind::Scalar { .. }) | (Some(v), ArgKind::Tensor { rank: 0, .. }) => scalar_tensor(dtype, v),
            _ => pattern(dtype, &shape, i as u8)?,
        };
        out.push(t);
    }
    Some(out)
}

fn scalar_tensor(dtype: DType, v: ScalarValue) -> Tensor {
    let (i, f) = match v {
        ScalarValue::Int(i) => (i, i as f64),
        ScalarValue::Float(f) => (f as i64, f),
    };
    match dtype {
        DType::F32 => Tensor::scalar(f as f32),
        DType::F64 => Tensor::scalar(f),
        DType::I8 => Tensor::scalar(i as i8),
        DType::U8 => Tensor::scalar(i as u8),
        DType::Bool => Tensor::from_bytes(DType::Bool, &[], &[i as u8]).expect("one byte"),
        DType::I16 => Tensor::scalar(i as i16),
        DType::U16 => Tensor::scalar(i as u16),
        DType::I32 => Tensor::scalar(i as i32),
        DType::U32 => Tensor::scalar(i as u32),
        DType::I64 => Tensor::scalar(i),
        DType::U64 => Tensor::scalar(i as u64),
    }
}

/// Calls every function (at most 4) once per entry (at most 4), with inputs
/// built for that entry, positionally and by name. A call either succeeds
/// with outputs that match the signature, or fails with a typed error.
pub fn exercise(pkg: &Package) {
    let m = pkg.manifest().clone();
    for (fi, f) in m.functions.iter().enumerate().take(4) {
        for ei in 0..f.entries.len().clamp(1, 4) {
            let Some(inputs) = inputs_for(&m, fi, ei) else { continue };
            let r = pkg.call(&f.name, &inputs);
            check_outputs(&m, fi, &r);
            let named: Vec<(&str, Tensor)> = f
                .signature
                .inputs
                .iter()
                .map(|a| a.name.as_str())
                .zip(inputs.iter().cloned())
                .collect();
            let r = pkg.call_named(&f.name, &named);
            check_outputs(&m, fi, &r);
            let _ = pkg.select(&f.name, &inputs);
        }
    }
    let _ = pkg.call("no such function", &[]);
}

fn check_outputs(m: &Manifest, fi: usize, r: &Result<Vec<Tensor>, Error>) {
    let sig = &m.functions[fi].signature;
    match r {
        Ok(outs) => {
            assert_eq!(outs.len(), sig.outputs.len(), "output count differs from the signature");
            for (t, a) in outs.iter().zip(&sig.outputs) {
                assert_eq!(t.dtype(), a.kind.dtype(), "output `{}` dtype", a.name);
                assert_eq!(t.shape().len(), a.kind.rank() as usize, "output `{}` rank", a.name);
            }
        }
        Err(e) => {
            // Every error renders (messages quote package strings).
            let _ = e.to_string();
        }
    }
}

/// Opens `manifest` with the fixture's files on the shared host, and
/// exercises the package if it opens.
pub fn open_and_exercise(manifest: &[u8], files: PackageFiles) {
    let bindings = match Manifest::from_json(manifest) {
        Ok(m) => bindings_for(&m),
        Err(_) => Bindings::new(),
    };
    match host().open_files(manifest, files, bindings) {
        Ok(pkg) => exercise(&pkg),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// The manifest file name, for targets that write package directories.
pub const MANIFEST: &str = MANIFEST_FILE;

/// `BTreeMap` of the fixture's files by name.
pub fn fixture_map() -> BTreeMap<String, Vec<u8>> {
    fixture().1.iter().cloned().collect()
}
