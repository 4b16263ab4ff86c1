//! Full verification of a package, before any Wasm is compiled.
//!
//! [`verify_package`] checks, and reports *every* problem it finds:
//! - the format version and the contract version;
//! - file names: only `wrappers/<sha256>.wasm`,
//!   `weights/<sha256>.safetensors` and `samples/<sha256>.safetensors`, each
//!   name's digest equal to the listed digest; every file referenced, every
//!   reference present;
//! - every global: name unique, rank and byte size in range (checked
//!   arithmetic), its safetensors tensor present with the same dtype and
//!   shape;
//! - every function: name unique, input and output names unique, ranks in
//!   range; every updated input (`signature.mutates`) in range, listed once,
//!   its new value declared with the input's dtype and rank; every entry: guard indices in range, every kernel resolved in the
//!   host's registry with its attributes validated, globals-table indices in
//!   range, buffer sizes in range and within the host tensor budget;
//! - every entry's samples, if bundled: the file a listed
//!   `samples/<sha256>.safetensors` that parses; exactly one tensor
//!   `input.<name>` per input and `output.<name>` per output, each of the
//!   signature's dtype and rank, together within the host tensor budget; the
//!   inputs passing the entry's input guards; one finite, non-negative
//!   tolerance per output and none for anything else;
//! - every wrapper: a valid component whose only import is the contract's
//!   host interface, that exports functions `init` and `run`, with no memory
//!   or table declared beyond the limits.
//!
//! Digests are checked before this runs ([`crate::package`]); this module
//! never reads a file the manifest does not list.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use ampoule_kernels::{Bound, DType, Registry, TensorMeta, MAX_RANK};

use crate::error::Problem;
use crate::guard::{CallView, Guard, MAX_INPUT_VALUES};
use crate::manifest::{
    sample_input_tensor, sample_output_tensor, wrapper_file, EntryDecl, FunctionDecl, GlobalSource,
    Manifest, FORMAT_VERSION,
};
use crate::sandbox::{Limits, HOST_INTERFACE, WIT_PACKAGE};

/// A file's bytes, read or mapped.
pub type FileBytes = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// An entry's kernel table, bound.
pub(crate) type KernelTable = Arc<[Arc<dyn Bound>]>;

/// What verification produces besides problems: the bound kernel tables.
pub(crate) struct Verified {
    /// `kernels[function][entry]`: the bound kernel table.
    pub kernels: Vec<Vec<KernelTable>>,
    /// `weights[global]`: for an embedded global, the byte offset of its
    /// data in its weights file (found while checking the file's header).
    pub weights: Vec<Option<usize>>,
}

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            at: at.into(),
            message: message.into(),
        });
    }
}

/// Whether `name` is `<dir>/<64 lowercase hex>.<ext>`; returns the digest.
pub fn blob_digest<'a>(name: &'a str, dir: &str, ext: &str) -> Option<&'a str> {
    let rest = name.strip_prefix(dir)?.strip_prefix('/')?;
    let digest = rest.strip_suffix(ext)?.strip_suffix('.')?;
    (digest.len() == 64
        && digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    .then_some(digest)
}

/// The digest in `name` if it has one of the three blob forms
/// (`wrappers/<sha256>.wasm`, `weights/<sha256>.safetensors`,
/// `samples/<sha256>.safetensors`).
pub fn any_blob_digest(name: &str) -> Option<&str> {
    blob_digest(name, "wrappers", "wasm")
        .or_else(|| blob_digest(name, "weights", "safetensors"))
        .or_else(|| blob_digest(name, "samples", "safetensors"))
}

/// What a bad file name is told.
pub(crate) const FILE_NAME_RULE: &str = "file names must be `wrappers/<sha256>.wasm`, `weights/<sha256>.safetensors` or `samples/<sha256>.safetensors`";

/// The ampoule dtype of a safetensors dtype, if it has one.
pub fn safetensors_dtype(d: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as S;
    Some(match d {
        S::F32 => DType::F32,
        S::F64 => DType::F64,
        S::I8 => DType::I8,
        S::U8 => DType::U8,
        S::I16 => DType::I16,
        S::U16 => DType::U16,
        S::I32 => DType::I32,
        S::U32 => DType::U32,
        S::I64 => DType::I64,
        S::U64 => DType::U64,
        S::BOOL => DType::Bool,
        _ => return None,
    })
}

/// Checks everything about a package whose file digests already matched.
pub(crate) fn verify_package(
    m: &Manifest,
    files: &BTreeMap<String, FileBytes>,
    registry: &Registry,
    limits: &Limits,
) -> Result<Verified, Vec<Problem>> {
    let mut p = Problems(Vec::new());
    if m.format > FORMAT_VERSION || m.format == 0 {
        p.add(
            "format",
            format!(
                "format {} is not supported (this host reads 1..={FORMAT_VERSION})",
                m.format
            ),
        );
    }
    if m.abi.wit != WIT_PACKAGE {
        p.add(
            "abi.wit",
            format!(
                "package needs contract `{}`, this host implements `{WIT_PACKAGE}`",
                m.abi.wit
            ),
        );
    }
    let abi_kernels: BTreeSet<&str> = m.abi.kernels.iter().map(String::as_str).collect();
    for (i, k) in m.abi.kernels.iter().enumerate() {
        if let Err(e) = registry.get(k) {
            p.add(format!("abi.kernels[{i}]"), e.to_string());
        }
    }

    // Files: names, references.
    let mut referenced: HashSet<String> = HashSet::new();
    for (name, digest) in &m.files {
        match any_blob_digest(name) {
            None => p.add(format!("files[{name:?}]"), FILE_NAME_RULE),
            Some(d) if d != digest => p.add(
                format!("files[{name:?}]"),
                format!("name says sha256 {d} but the manifest lists {digest}"),
            ),
            Some(_) => {}
        }
    }

    // Globals.
    let mut total: u64 = 0;
    let mut names = HashSet::new();
    let mut parsed: BTreeMap<&str, Option<safetensors::SafeTensors<'_>>> = BTreeMap::new();
    let mut weights = vec![None; m.globals.len()];
    for (g, decl) in m.globals.iter().enumerate() {
        let at = format!("globals[{g}] `{}`", decl.name);
        if !names.insert(decl.name.as_str()) {
            p.add(&at, "duplicate global name");
        }
        let Some(meta) = meta_of(&decl.dtype, &decl.shape) else {
            p.add(
                &at,
                format!(
                    "shape {:?} has rank above {MAX_RANK} or more bytes than this host can address",
                    decl.shape
                ),
            );
            continue;
        };
        total = total.saturating_add(meta.byte_len().unwrap_or(usize::MAX) as u64);
        match &decl.source {
            GlobalSource::Bound => {}
            GlobalSource::Weight { file, tensor } => {
                referenced.insert(file.clone());
                if blob_digest(file, "weights", "safetensors").is_none()
                    || !m.files.contains_key(file)
                {
                    p.add(
                        &at,
                        format!("weights file `{file}` is not listed in `files`"),
                    );
                    continue;
                }
                let Some(bytes) = files.get(file) else {
                    p.add(&at, format!("weights file `{file}` is missing"));
                    continue;
                };
                let st = parsed.entry(file.as_str()).or_insert_with(|| {
                    match safetensors::SafeTensors::deserialize((**bytes).as_ref()) {
                        Ok(st) => Some(st),
                        Err(e) => {
                            p.add(file.clone(), format!("not a valid safetensors file: {e}"));
                            None
                        }
                    }
                });
                let Some(st) = st else { continue };
                match st.tensor(tensor) {
                    Err(_) => p.add(&at, format!("tensor `{tensor}` is not in `{file}`")),
                    Ok(view) => {
                        let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
                        if safetensors_dtype(view.dtype()) != Some(decl.dtype)
                            || shape != decl.shape
                        {
                            p.add(
                                &at,
                                format!(
                                    "declared {}{:?} but `{file}` holds {:?}{:?}",
                                    decl.dtype,
                                    decl.shape,
                                    view.dtype(),
                                    shape
                                ),
                            );
                        } else {
                            let base = (**bytes).as_ref().as_ptr() as usize;
                            weights[g] = Some(view.data().as_ptr() as usize - base);
                        }
                    }
                }
            }
        }
    }
    if total > limits.max_package_bytes {
        p.add(
            "globals",
            format!(
                "globals total {total} bytes, above the limit of {}",
                limits.max_package_bytes
            ),
        );
    }

    // Functions and entries.
    let mut fnames = HashSet::new();
    let mut kernels = Vec::with_capacity(m.functions.len());
    for (fi, f) in m.functions.iter().enumerate() {
        let fat = format!("functions[{fi}] `{}`", f.name);
        if f.name.is_empty() || !fnames.insert(f.name.as_str()) {
            p.add(&fat, "function names must be non-empty and unique");
        }
        for (what, args) in [
            ("input", &f.signature.inputs),
            ("output", &f.signature.outputs),
        ] {
            let mut seen = HashSet::new();
            for a in args.iter() {
                if !seen.insert(a.name.as_str()) {
                    p.add(&fat, format!("duplicate {what} name `{}`", a.name));
                }
                if a.kind.rank() as usize > MAX_RANK {
                    p.add(
                        &fat,
                        format!(
                            "{what} `{}` has rank {} above {MAX_RANK}",
                            a.name,
                            a.kind.rank()
                        ),
                    );
                }
            }
        }
        let mut mutated = HashSet::new();
        for (mi, mu) in f.signature.mutates.iter().enumerate() {
            let mat = format!("{fat}.signature.mutates[{mi}]");
            let Some(input) = f.signature.inputs.get(mu.input as usize) else {
                p.add(
                    &mat,
                    format!(
                        "updates input {} but the function has {} inputs",
                        mu.input,
                        f.signature.inputs.len()
                    ),
                );
                continue;
            };
            if !mutated.insert(mu.input) {
                p.add(
                    &mat,
                    format!("input `{}` is updated twice; list it once", input.name),
                );
            }
            if mu.kind.dtype() != input.kind.dtype() || mu.kind.rank() != input.kind.rank() {
                p.add(
                    &mat,
                    format!(
                        "the new value of input `{}` is declared {}, but the input is {}",
                        input.name, mu.kind, input.kind
                    ),
                );
            }
        }
        let mut fkernels = Vec::with_capacity(f.entries.len());
        for (ei, e) in f.entries.iter().enumerate() {
            let at = format!("{fat}.entries[{ei}]");
            for (gi, guard) in e.guards.iter().enumerate() {
                for i in guard.input().into_iter().chain(guard.other_input()) {
                    if i as usize >= f.signature.inputs.len() {
                        p.add(
                            format!("{at}.guards[{gi}]"),
                            format!(
                                "input {i} out of range ({} inputs)",
                                f.signature.inputs.len()
                            ),
                        );
                    }
                }
                if let Guard::InputValues { values, .. } = guard {
                    if values.len() > MAX_INPUT_VALUES {
                        p.add(
                            format!("{at}.guards[{gi}]"),
                            format!(
                                "{} input values, more than the {MAX_INPUT_VALUES} a guard may hold",
                                values.len()
                            ),
                        );
                    }
                }
                if let Some(g) = guard.global() {
                    if g as usize >= m.globals.len() {
                        p.add(
                            format!("{at}.guards[{gi}]"),
                            format!("global {g} out of range ({} globals)", m.globals.len()),
                        );
                    }
                }
            }
            let wfile = wrapper_file(&e.wrapper);
            referenced.insert(wfile.clone());
            if !m.files.contains_key(&wfile) || blob_digest(&wfile, "wrappers", "wasm").is_none() {
                p.add(
                    format!("{at}.wrapper"),
                    format!("wrapper `{}` is not listed in `files`", e.wrapper),
                );
            }
            let mut table: Vec<Arc<dyn Bound>> = Vec::with_capacity(e.kernels.len());
            for (ki, k) in e.kernels.iter().enumerate() {
                let kat = format!("{at}.kernels[{ki}]");
                if !abi_kernels.contains(k.kernel.as_str()) {
                    p.add(
                        &kat,
                        format!("kernel `{}` is not declared in abi.kernels", k.kernel),
                    );
                }
                match registry.bind(&k.kernel, &k.attrs) {
                    Ok(b) => {
                        let a = b.arity();
                        if a.inputs + a.outputs > ampoule_kernels::MAX_OPERANDS {
                            p.add(
                                &kat,
                                format!(
                                    "kernel `{}` takes {} operands, more than a launch carries",
                                    k.kernel,
                                    a.inputs + a.outputs
                                ),
                            );
                        }
                        table.push(b);
                    }
                    Err(err) => p.add(&kat, err.to_string()),
                }
            }
            for (gi, &g) in e.globals.iter().enumerate() {
                if g as usize >= m.globals.len() {
                    p.add(
                        format!("{at}.globals[{gi}]"),
                        format!("global {g} out of range ({} globals)", m.globals.len()),
                    );
                }
            }
            let mut bytes: u64 = 0;
            for (bi, b) in e.buffers.iter().enumerate() {
                match meta_of(&b.dtype, &b.shape).and_then(|m| m.byte_len()) {
                    Some(n) => bytes = bytes.saturating_add(n as u64),
                    None => p.add(
                        format!("{at}.buffers[{bi}]"),
                        format!(
                            "buffer {:?} is too large or of rank above {MAX_RANK}",
                            b.shape
                        ),
                    ),
                }
            }
            if bytes > limits.host_tensor_bytes as u64 {
                p.add(
                    format!("{at}.buffers"),
                    format!(
                        "planned buffers need {bytes} bytes, above the host tensor budget of {}",
                        limits.host_tensor_bytes
                    ),
                );
            }
            if e.samples.is_some() {
                verify_samples(&mut p, &at, f, e, files, limits, &mut referenced);
            }
            fkernels.push(table.into());
        }
        kernels.push(fkernels);
    }

    // Wrappers.
    for (name, bytes) in files {
        if blob_digest(name, "wrappers", "wasm").is_some() {
            for msg in verify_wrapper((**bytes).as_ref(), limits) {
                p.add(name.clone(), msg);
            }
        }
    }
    for name in m.files.keys() {
        if !referenced.contains(name) {
            p.add(
                format!("files[{name:?}]"),
                "file is not referenced by any entry or global",
            );
        }
    }
    if p.0.is_empty() {
        Ok(Verified { kernels, weights })
    } else {
        Err(p.0)
    }
}

/// Checks an entry's bundled samples (see the module doc); `at` names the
/// entry.
fn verify_samples(
    p: &mut Problems,
    at: &str,
    f: &FunctionDecl,
    e: &EntryDecl,
    files: &BTreeMap<String, FileBytes>,
    limits: &Limits,
    referenced: &mut HashSet<String>,
) {
    let Some(decl) = &e.samples else { return };
    let at = format!("{at}.samples");
    let file = &decl.file;
    referenced.insert(file.clone());
    for (name, t) in &decl.tolerances {
        if !f.signature.outputs.iter().any(|o| &o.name == name) {
            p.add(
                format!("{at}.tolerances[{name:?}]"),
                format!(
                    "the function has no output `{name}`; tolerances are per output ({})",
                    f.signature
                        .outputs
                        .iter()
                        .map(|o| format!("`{}`", o.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        if !(t.rtol.is_finite() && t.rtol >= 0.0 && t.atol.is_finite() && t.atol >= 0.0) {
            p.add(
                format!("{at}.tolerances[{name:?}]"),
                format!(
                    "rtol {} and atol {} must be finite and non-negative",
                    t.rtol, t.atol
                ),
            );
        }
    }
    for o in &f.signature.outputs {
        if !decl.tolerances.contains_key(&o.name) {
            p.add(
                format!("{at}.tolerances"),
                format!("output `{}` has no tolerance", o.name),
            );
        }
    }
    let Some(bytes) = files
        .get(file)
        .filter(|_| blob_digest(file, "samples", "safetensors").is_some())
    else {
        p.add(
            &at,
            format!(
                "samples file `{file}` is not a `samples/<sha256>.safetensors` file listed in `files`"
            ),
        );
        return;
    };
    let st = match safetensors::SafeTensors::deserialize((**bytes).as_ref()) {
        Ok(st) => st,
        Err(e) => {
            p.add(
                &at,
                format!("samples file `{file}` is not a valid safetensors file: {e}"),
            );
            return;
        }
    };
    let base = (**bytes).as_ref().as_ptr() as usize;
    let mut expected: BTreeMap<String, (&str, &crate::manifest::ArgKind)> = BTreeMap::new();
    for a in &f.signature.inputs {
        expected.insert(sample_input_tensor(&a.name), ("input", &a.kind));
    }
    for a in &f.signature.outputs {
        expected.insert(sample_output_tensor(&a.name), ("output", &a.kind));
    }
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    for n in &names {
        if !expected.contains_key(n) {
            p.add(
                &at,
                format!(
                    "`{file}` holds tensor `{n}`, which is not `input.<name>` of an input or `output.<name>` of an output"
                ),
            );
        }
    }
    let mut total: u64 = 0;
    let mut inputs: BTreeMap<&str, ampoule_kernels::Tensor> = BTreeMap::new();
    for (tensor, (what, kind)) in &expected {
        let Ok(view) = st.tensor(tensor) else {
            p.add(&at, format!("`{file}` has no tensor `{tensor}`"));
            continue;
        };
        let dtype = safetensors_dtype(view.dtype());
        let shape = view.shape();
        if dtype != Some(kind.dtype()) || shape.len() != kind.rank() as usize {
            p.add(
                &at,
                format!(
                    "tensor `{tensor}` is {:?}{shape:?}, but the {what} is {kind}",
                    view.dtype()
                ),
            );
            continue;
        }
        let Some(len) = TensorMeta::new(kind.dtype(), shape.to_vec()).byte_len() else {
            p.add(&at, format!("tensor `{tensor}` {shape:?} is too large"));
            continue;
        };
        total = total.saturating_add(len as u64);
        if *what == "input" {
            let offset = (view.data().as_ptr() as usize).saturating_sub(base);
            match ampoule_kernels::Tensor::from_external(kind.dtype(), shape, bytes.clone(), offset)
            {
                Ok(t) => {
                    inputs.insert(tensor.as_str(), t);
                }
                Err(e) => p.add(&at, format!("tensor `{tensor}`: {e}")),
            }
        }
    }
    if total > limits.host_tensor_bytes as u64 {
        p.add(
            &at,
            format!(
                "samples hold {total} bytes of tensors, above the host tensor budget of {}",
                limits.host_tensor_bytes
            ),
        );
    }
    let ordered: Vec<&ampoule_kernels::Tensor> = f
        .signature
        .inputs
        .iter()
        .filter_map(|a| inputs.get(sample_input_tensor(&a.name).as_str()))
        .collect();
    if ordered.len() == f.signature.inputs.len() {
        let call = CallView {
            names: None,
            inputs: &ordered,
        };
        if let Some((gi, g, actual)) = e
            .guards
            .iter()
            .enumerate()
            .find_map(|(gi, g)| g.check(&call).err().map(|a| (gi, g, a)))
        {
            p.add(
                &at,
                format!(
                    "the sample inputs fail the entry's guard {gi}, {}: got {actual}; samples must be inputs the entry serves",
                    g.describe(&f.signature, &[])
                ),
            );
        }
    }
}

fn meta_of(dtype: &DType, shape: &[u64]) -> Option<TensorMeta> {
    if shape.len() > MAX_RANK {
        return None;
    }
    let shape: Vec<usize> = shape
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<_>>()?;
    let meta = TensorMeta::new(*dtype, shape);
    meta.byte_len().filter(|&n| n <= isize::MAX as usize)?;
    Some(meta)
}

/// Checks one wrapper component without compiling it: valid, imports only
/// the contract, exports `init` and `run`, memories and tables within limits.
pub fn verify_wrapper(bytes: &[u8], limits: &Limits) -> Vec<String> {
    use wasmparser::{Parser, Payload, Validator, WasmFeatures};
    let mut problems = Vec::new();
    let mut validator =
        Validator::new_with_features(WasmFeatures::default() | WasmFeatures::COMPONENT_MODEL);
    if let Err(e) = validator.validate_all(bytes) {
        problems.push(format!("not a valid wrapper component: {e}"));
        return problems;
    }
    let mut depth = 0usize;
    let mut saw_component = false;
    let mut exported: Vec<&str> = Vec::new();
    let max_pages = (limits.guest_memory_bytes / 65536) as u64;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { break };
        match payload {
            Payload::Version { encoding, .. } if depth == 0 && !saw_component => {
                if encoding != wasmparser::Encoding::Component {
                    problems.push("a wrapper must be a component, not a core module".into());
                    return problems;
                }
                saw_component = true;
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader.into_iter().flatten() {
                    let name = import.name.name;
                    if name != HOST_INTERFACE {
                        problems.push(format!(
                            "imports `{name}`; a wrapper may import only `{HOST_INTERFACE}`"
                        ));
                    }
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader.into_iter().flatten() {
                    if export.kind == wasmparser::ComponentExternalKind::Func {
                        exported.push(export.name.name);
                    }
                }
            }
            Payload::MemorySection(reader) => {
                for mem in reader.into_iter().flatten() {
                    if mem.memory64 || mem.shared || mem.initial > max_pages {
                        problems.push(format!(
                            "declares a memory of {} pages (64-bit: {}, shared: {}); the limit is {max_pages} pages",
                            mem.initial, mem.memory64, mem.shared
                        ));
                    }
                }
            }
            Payload::TableSection(reader) => {
                for table in reader.into_iter().flatten() {
                    if table.ty.initial > 1024 {
                        problems.push(format!(
                            "declares a table of {} elements; the limit is 1024",
                            table.ty.initial
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    // Checked here, not first at instantiation, so a wrapper that can never
    // run is refused at open (the types are checked when it is linked).
    for name in ["init", "run"] {
        if !exported.contains(&name) {
            problems.push(format!(
                "does not export function `{name}`; a wrapper must export the contract's `init` and `run`"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_names() {
        let d = "a".repeat(64);
        assert_eq!(
            blob_digest(&format!("wrappers/{d}.wasm"), "wrappers", "wasm"),
            Some(d.as_str())
        );
        assert_eq!(
            blob_digest(&format!("wrappers/../{d}.wasm"), "wrappers", "wasm"),
            None
        );
        assert_eq!(
            blob_digest(&format!("/wrappers/{d}.wasm"), "wrappers", "wasm"),
            None
        );
        assert_eq!(
            blob_digest(
                &format!("wrappers/{}.wasm", "A".repeat(64)),
                "wrappers",
                "wasm"
            ),
            None
        );
        assert_eq!(blob_digest("wrappers/abc.wasm", "wrappers", "wasm"), None);
        assert_eq!(
            blob_digest(&format!("weights/{d}.wasm"), "wrappers", "wasm"),
            None
        );
    }

    #[test]
    fn core_module_is_not_a_wrapper() {
        let module = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
        let problems = verify_wrapper(&module, &Limits::default());
        assert_eq!(
            problems,
            vec!["a wrapper must be a component, not a core module".to_string()]
        );
        assert!(verify_wrapper(b"garbage", &Limits::default())[0]
            .starts_with("not a valid wrapper component"));
    }
}
