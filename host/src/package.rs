//! Opening packages and serving calls.
//!
//! `open` reads every file through `cap-std` (confined to the package
//! directory; symlinks and special files are refused), checks every digest,
//! runs full verification ([`crate::verify`]), resolves globals (weights are
//! mmapped; host-bound ones come from [`Bindings`]) and evaluates the
//! entries' global guards. No Wasm is compiled until all of that passed, and
//! then only lazily, per entry, at its first call.
//!
//! A call checks each entry's input guards in order and runs the first
//! entry that matches on an instance from that entry's pool; a miss lists,
//! for every entry, the first guard that failed.
//!
//! A package may hold several functions sharing its globals; every call
//! names its function ([`Package::call`]), and an unknown name lists the
//! package's functions.
//!
//! **Input mutation.** A function whose signature lists updated inputs
//! (`Signature::mutates`) is called with [`Package::call_mut`] (or
//! [`Package::call_named_mut`]): the wrapper returns each updated input's new
//! value as a hidden output after the declared ones; the host checks that
//! the wrapper returned exactly that many outputs and that each new value has
//! the caller's tensor's dtype and shape (a package is untrusted), and only
//! then, once nothing else can fail, replaces the caller's tensors. A failed
//! call (guard miss, trap, contract violation) leaves them untouched.
//! [`Package::call`] refuses such a function with an error that says to use
//! `call_mut`, rather than drop the update.
//!
//! Thread safety: [`Package`] is `Send + Sync`; calls from many threads run
//! at once, each on its own instance.
//!
//! **Where a call runs.** Kernels that split their work run it on rayon's
//! pool. Launched from a thread outside the pool, each such kernel hands its
//! work over and blocks until it comes back: two thread wake-ups per launch,
//! which dominated models made of many small layers. A call run whole on a
//! pool thread starts each split in place while the other threads steal
//! their shares, and pays the hand-over once. That hand-over (tens of
//! microseconds on a busy machine) would cost short calls more than they
//! gain, so each entry remembers how long its last call took, and only
//! entries whose last call took `POOL_CALL_MIN` (500 µs) or more, on a pool
//! of two threads or more, run there. Either way the results are the same:
//! no kernel's arithmetic depends on which thread runs it.
//!
//! Only one call in the process runs on the pool at a time; the others run
//! on their callers' threads, as short calls do. A pool thread that waits
//! for a kernel's stolen work steals other work meanwhile, and if that were
//! a second call, its wrapper would run on the same native stack as the
//! first: enough nested calls, each with its wrapper's stack, would
//! overflow it.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ampoule_kernels::{Bound, Tensor, TensorMeta};
use cap_std::fs::Dir;
use wasmtime::Store;

use crate::error::{Error, Problem, TrapKind};
use crate::guard::{CallView, EntryMiss, GlobalsView};
use crate::manifest::{
    sha256_hex, wrapper_file, GlobalSource, Manifest, FORMAT_VERSION, MANIFEST_DIGEST_FILE,
    MANIFEST_FILE,
};
use crate::sandbox::{classify, Host, Instance, InstanceState, WrapperPre};
use crate::trust::{manifest_digest, read_signature_file, SIGNATURE_FILE};
use crate::verify::{any_blob_digest, blob_digest, verify_package, FileBytes, FILE_NAME_RULE};

/// Largest manifest accepted.
const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// Values for host-bound globals, by name.
#[derive(Clone, Default)]
pub struct Bindings(BTreeMap<String, Tensor>);

impl Bindings {
    pub fn new() -> Self {
        Bindings::default()
    }

    /// Binds `name` to `value`.
    pub fn bind(mut self, name: impl Into<String>, value: Tensor) -> Self {
        self.0.insert(name.into(), value);
        self
    }

    pub fn insert(&mut self, name: impl Into<String>, value: Tensor) {
        self.0.insert(name.into(), value);
    }
}

/// A package's files held in memory (for packages being built, or received
/// over a network), keyed by their names in the manifest, and its
/// `signature.json`, if it has one.
#[derive(Clone, Default)]
pub struct PackageFiles {
    files: BTreeMap<String, FileBytes>,
    signature: Option<Vec<u8>>,
}

impl PackageFiles {
    pub fn new() -> Self {
        PackageFiles::default()
    }

    pub fn insert(&mut self, name: String, bytes: Vec<u8>) {
        self.files.insert(name, Arc::new(bytes));
    }

    /// Every file listed in the manifest, by name (not the signature).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files.iter().map(|(n, b)| (n.as_str(), (**b).as_ref()))
    }

    /// Adds a file whose bytes are shared with the caller (no copy).
    pub fn insert_shared(&mut self, name: String, bytes: FileBytes) {
        self.files.insert(name, bytes);
    }

    /// Sets the contents of the package's `signature.json`, which the
    /// host's trust policy checks at [`Host::open_files`].
    pub fn set_signature(&mut self, signature_json: Vec<u8>) {
        self.signature = Some(signature_json);
    }

    /// The contents of the package's `signature.json`, if it has one.
    pub fn signature(&self) -> Option<&[u8]> {
        self.signature.as_deref()
    }
}

/// Counters of work done by a host, for tests, benchmarks and `inspect`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Wrappers compiled to native code (cache misses).
    pub wasm_compiles: u64,
    /// Wrappers loaded from the local artifact cache.
    pub cache_hits: u64,
    pub instantiations: u64,
    pub calls: u64,
    /// Calls run whole on rayon's pool (see [`crate::package`]'s docs).
    pub pool_calls: u64,
    pub traps: u64,
}

struct EntryState {
    /// Global guard failure, decided at open.
    global_miss: Option<EntryMiss>,
    kernels: Arc<[Arc<dyn Bound>]>,
    /// The entry's globals, resolved, in globals-table order.
    globals: Vec<Tensor>,
    buffers: Vec<TensorMeta>,
    pre: OnceLock<Result<WrapperPre<InstanceState>, String>>,
    pool: Mutex<Vec<Instance>>,
    /// How long the last call took, in nanoseconds (see the module docs).
    last_call_ns: AtomicU64,
}

/// Entries whose last call took at least this long run their next call on
/// rayon's pool (see the module docs).
const POOL_CALL_MIN: Duration = Duration::from_micros(500);

/// Set while a call runs on rayon's pool (see the module docs).
static POOL_TURN: AtomicBool = AtomicBool::new(false);

/// The one call on the pool; gives the turn back when dropped.
struct PoolTurn;

impl PoolTurn {
    fn take() -> Option<PoolTurn> {
        POOL_TURN
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
            .then_some(PoolTurn)
    }
}

impl Drop for PoolTurn {
    fn drop(&mut self) {
        POOL_TURN.store(false, Ordering::Release);
    }
}

/// An opened, verified package, ready to serve calls.
pub struct Package {
    host: Host,
    manifest: Manifest,
    /// SHA-256 of the manifest's bytes: names the whole package, since the
    /// manifest lists every other file's digest.
    digest: String,
    files: BTreeMap<String, FileBytes>,
    functions: HashMap<String, usize>,
    entries: Vec<Vec<EntryState>>,
}

impl Host {
    /// Opens and fully verifies the package directory `dir`.
    ///
    /// The host's trust policy ([`crate::trust`]) is applied first, as soon
    /// as the manifest digest is known.
    pub fn open(&self, dir: impl AsRef<Path>, bindings: Bindings) -> Result<Package, Error> {
        let (manifest_bytes, files, signature) =
            read_dir(dir.as_ref(), self.config().limits.max_package_bytes)?;
        self.open_files_inner(&manifest_bytes, files, signature.as_deref(), bindings)
    }

    /// Opens a package held in memory; verification, and the trust policy
    /// (against [`PackageFiles::signature`]), are the same as `open`.
    pub fn open_files(
        &self,
        manifest_json: &[u8],
        files: PackageFiles,
        bindings: Bindings,
    ) -> Result<Package, Error> {
        self.open_files_inner(
            manifest_json,
            files.files,
            files.signature.as_deref(),
            bindings,
        )
    }

    /// Reads the package directory `dir` exactly as `open` does (through
    /// cap-std, within the size limit, the manifest checked against
    /// `manifest.sha256`, `signature.json` into [`PackageFiles::signature`]),
    /// without verifying or opening it: for tools that rewrite packages and
    /// then hand the bytes to [`Host::open_files`].
    pub fn read_package(&self, dir: impl AsRef<Path>) -> Result<(Vec<u8>, PackageFiles), Error> {
        let (manifest_bytes, files, signature) =
            read_dir(dir.as_ref(), self.config().limits.max_package_bytes)?;
        Ok((manifest_bytes, PackageFiles { files, signature }))
    }

    /// Fully verifies the package directory `dir` without binding globals,
    /// under the host's trust policy; returns its manifest.
    pub fn verify(&self, dir: impl AsRef<Path>) -> Result<Manifest, Error> {
        let (manifest_bytes, files, signature) =
            read_dir(dir.as_ref(), self.config().limits.max_package_bytes)?;
        self.check_trust(&manifest_bytes, signature.as_deref())?;
        self.verify_files(&manifest_bytes, &files)
    }

    /// Applies the trust policy to a package's manifest and signature file.
    fn check_trust(&self, manifest_bytes: &[u8], signature: Option<&[u8]>) -> Result<(), Error> {
        let policy = &self.config().trust;
        if policy.is_permissive() {
            return Ok(());
        }
        let _s = tracing::info_span!("package.trust").entered();
        policy
            .check(&manifest_digest(manifest_bytes), signature)
            .inspect_err(|e| tracing::debug!(error = %e, "package refused by the trust policy"))
    }

    /// Parsing, digests and full verification, without the trust policy.
    pub(crate) fn verify_files(
        &self,
        manifest_bytes: &[u8],
        files: &BTreeMap<String, FileBytes>,
    ) -> Result<Manifest, Error> {
        let manifest = parse_manifest(manifest_bytes)?;
        check_digests(&manifest, files)?;
        verify_package(
            &manifest,
            files,
            &self.config().registry,
            &self.config().limits,
        )
        .map_err(Error::Verify)?;
        Ok(manifest)
    }

    fn open_files_inner(
        &self,
        manifest_bytes: &[u8],
        files: BTreeMap<String, FileBytes>,
        signature: Option<&[u8]>,
        bindings: Bindings,
    ) -> Result<Package, Error> {
        let _span = tracing::info_span!("package.open").entered();
        self.check_trust(manifest_bytes, signature)?;
        let manifest = parse_manifest(manifest_bytes)?;
        check_digests(&manifest, &files)?;
        let verified = {
            let _s = tracing::info_span!("package.verify").entered();
            verify_package(
                &manifest,
                &files,
                &self.config().registry,
                &self.config().limits,
            )
            .map_err(Error::Verify)?
        };
        let globals = resolve_globals(&manifest, &files, &verified.weights, bindings)?;
        let digests: Vec<OnceLock<String>> = (0..globals.len()).map(|_| OnceLock::new()).collect();
        let digest = |g: usize| -> Option<String> {
            let t = globals.get(g)?.as_ref()?;
            Some(digests[g].get_or_init(|| sha256_hex(t.bytes())).clone())
        };
        let view = GlobalsView {
            values: &globals,
            digest: &digest,
        };

        let mut entries = Vec::with_capacity(manifest.functions.len());
        for (f, tables) in manifest.functions.iter().zip(verified.kernels) {
            let mut states = Vec::with_capacity(f.entries.len());
            for (ei, (e, kernels)) in f.entries.iter().zip(tables).enumerate() {
                let global_miss = e.guards.iter().find_map(|g| {
                    g.check_global(&view).err().map(|actual| EntryMiss {
                        entry: ei,
                        expected: g.describe(&f.signature, &manifest.globals),
                        actual,
                    })
                });
                let entry_globals = e
                    .globals
                    .iter()
                    .map(|&g| {
                        globals[g as usize]
                            .clone()
                            .ok_or_else(|| Error::MissingBinding {
                                name: manifest.globals[g as usize].name.clone(),
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let buffers = e
                    .buffers
                    .iter()
                    .map(|b| {
                        TensorMeta::new(
                            b.dtype,
                            b.shape.iter().map(|&d| d as usize).collect::<Vec<_>>(),
                        )
                    })
                    .collect();
                states.push(EntryState {
                    global_miss,
                    kernels,
                    globals: entry_globals,
                    buffers,
                    pre: OnceLock::new(),
                    pool: Mutex::new(Vec::new()),
                    last_call_ns: AtomicU64::new(0),
                });
            }
            entries.push(states);
        }
        let functions = manifest
            .functions
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), i))
            .collect();
        tracing::info!(
            functions = manifest.functions.len(),
            globals = manifest.globals.len(),
            "package opened"
        );
        Ok(Package {
            host: self.clone(),
            digest: sha256_hex(manifest_bytes),
            manifest,
            files,
            functions,
            entries,
        })
    }

    /// What this host has done so far.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        Stats {
            wasm_compiles: c.wasm_compiles.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            instantiations: c.instantiations.load(Ordering::Relaxed),
            calls: c.calls.load(Ordering::Relaxed),
            pool_calls: c.pool_calls.load(Ordering::Relaxed),
            traps: c.traps.load(Ordering::Relaxed),
        }
    }
}

fn parse_manifest(bytes: &[u8]) -> Result<Manifest, Error> {
    // Read the version first so a newer format gets the right message even
    // if its fields changed.
    #[derive(serde::Deserialize)]
    struct VersionOnly {
        format: u32,
    }
    if let Ok(v) = serde_json::from_slice::<VersionOnly>(bytes) {
        if v.format > FORMAT_VERSION {
            return Err(Error::FormatTooNew {
                found: v.format,
                supported: FORMAT_VERSION,
            });
        }
    }
    Manifest::from_json(bytes).map_err(|e| {
        Error::Verify(vec![Problem {
            at: MANIFEST_FILE.into(),
            message: e.to_string(),
        }])
    })
}

fn check_digests(m: &Manifest, files: &BTreeMap<String, FileBytes>) -> Result<(), Error> {
    let mut problems = Vec::new();
    for (name, expected) in &m.files {
        match files.get(name) {
            Some(bytes) => {
                let actual = sha256_hex((**bytes).as_ref());
                if &actual != expected {
                    return Err(Error::Integrity {
                        file: name.clone(),
                        expected: expected.clone(),
                        actual,
                    });
                }
            }
            None if any_blob_digest(name).is_none() => problems.push(Problem {
                at: name.clone(),
                message: FILE_NAME_RULE.into(),
            }),
            None => problems.push(Problem {
                at: name.clone(),
                message: "file listed in the manifest is missing".into(),
            }),
        }
    }
    for name in files.keys() {
        if !m.files.contains_key(name) {
            problems.push(Problem {
                at: name.clone(),
                message: "file is not listed in the manifest".into(),
            });
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Verify(problems))
    }
}

fn resolve_globals(
    m: &Manifest,
    files: &BTreeMap<String, FileBytes>,
    weights: &[Option<usize>],
    mut bindings: Bindings,
) -> Result<Vec<Option<Tensor>>, Error> {
    let mut out = Vec::with_capacity(m.globals.len());
    for (g, decl) in m.globals.iter().enumerate() {
        let shape: Vec<usize> = decl.shape.iter().map(|&d| d as usize).collect();
        out.push(match &decl.source {
            GlobalSource::Bound => {
                Some(
                    bindings
                        .0
                        .remove(&decl.name)
                        .ok_or_else(|| Error::MissingBinding {
                            name: decl.name.clone(),
                        })?,
                )
            }
            GlobalSource::Weight { file, .. } => {
                let bytes = files[file].clone();
                // Verification found every embedded global's offset.
                let offset = weights[g].ok_or_else(|| {
                    Error::Verify(vec![Problem {
                        at: format!("global `{}`", decl.name),
                        message: "no verified location in its weights file".into(),
                    }])
                })?;
                Some(
                    Tensor::from_external(decl.dtype, &shape, bytes.clone(), offset).map_err(
                        |e| {
                            Error::Verify(vec![Problem {
                                at: format!("global `{}`", decl.name),
                                message: e.to_string(),
                            }])
                        },
                    )?,
                )
            }
        });
    }
    if let Some(name) = bindings.0.keys().next() {
        let available = m
            .globals
            .iter()
            .filter(|g| g.source == GlobalSource::Bound)
            .map(|g| format!("`{}`", g.name))
            .collect::<Vec<_>>();
        return Err(Error::UnknownBinding {
            name: name.clone(),
            available: if available.is_empty() {
                "none".into()
            } else {
                available.join(", ")
            },
        });
    }
    Ok(out)
}

/// A read-only memory map of a weights file.
struct Mapped(memmap2::Mmap);

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The files of a package directory: the manifest's bytes, every file
/// under `wrappers/`, `weights/` and `samples/`, and `signature.json`'s bytes if present.
pub(crate) type DirContents = (Vec<u8>, BTreeMap<String, FileBytes>, Option<Vec<u8>>);

fn io(file: &str, e: std::io::Error) -> Error {
    Error::Io {
        file: file.to_string(),
        message: e.to_string(),
    }
}

fn open_package_dir(path: &Path) -> Result<Dir, Error> {
    Dir::open_ambient_dir(path, cap_std::ambient_authority())
        .map_err(|e| io(&path.display().to_string(), e))
}

/// Reads only a package directory's manifest (checked against
/// `manifest.sha256`) and its `signature.json`, if present.
pub(crate) fn read_manifest_and_signature(
    path: &Path,
) -> Result<(Vec<u8>, Option<Vec<u8>>), Error> {
    let dir = open_package_dir(path)?;
    Ok((read_manifest(&dir)?, read_signature_file(&dir)?))
}

/// Reads a package directory through cap-std: the manifest, every file under
/// `wrappers/`, `weights/` (weights mmapped) and `samples/`,
/// `signature.json`, refusing anything else.
pub(crate) fn read_dir(path: &Path, max_bytes: u64) -> Result<DirContents, Error> {
    let dir = open_package_dir(path)?;
    let manifest = read_manifest(&dir)?;
    let mut files = BTreeMap::new();
    let mut problems = Vec::new();
    let mut total: u64 = 0;
    for entry in dir.entries().map_err(|e| io(".", e))? {
        let entry = entry.map_err(|e| io(".", e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ft = entry.file_type().map_err(|e| io(&name, e))?;
        match name.as_str() {
            MANIFEST_FILE | MANIFEST_DIGEST_FILE | SIGNATURE_FILE if ft.is_file() => {}
            "wrappers" | "weights" | "samples" if ft.is_dir() => {
                let sub = dir.open_dir(&name).map_err(|e| io(&name, e))?;
                for e in sub.entries().map_err(|e| io(&name, e))? {
                    let e = e.map_err(|e| io(&name, e))?;
                    let fname = format!("{name}/{}", e.file_name().to_string_lossy());
                    let ft = e.file_type().map_err(|err| io(&fname, err))?;
                    let ext = if name == "wrappers" {
                        "wasm"
                    } else {
                        "safetensors"
                    };
                    if !ft.is_file() || blob_digest(&fname, &name, ext).is_none() {
                        problems.push(Problem { at: fname, message: "unexpected entry (only regular files named by their sha256 belong here)".into() });
                        continue;
                    }
                    let file = sub.open(e.file_name()).map_err(|err| io(&fname, err))?;
                    let len = file.metadata().map_err(|err| io(&fname, err))?.len();
                    total = total.saturating_add(len);
                    if total > max_bytes {
                        return Err(Error::Verify(vec![Problem {
                            at: fname,
                            message: format!(
                                "package is larger than the limit of {max_bytes} bytes"
                            ),
                        }]));
                    }
                    let bytes: FileBytes = if name == "weights" && len > 0 {
                        let std_file = file.into_std();
                        // SAFETY: the map is read-only and private to this
                        // process. Its contents are verified (sha256) after
                        // mapping, before any use. As with every mmap, a
                        // process that truncates or rewrites the file while it
                        // is mapped could change what we read; package
                        // directories are expected to be immutable once
                        // written (saves replace them atomically by rename,
                        // which leaves existing maps intact).
                        #[allow(unsafe_code)]
                        let map = unsafe { memmap2::Mmap::map(&std_file) }
                            .map_err(|err| io(&fname, err))?;
                        Arc::new(Mapped(map))
                    } else {
                        let mut buf = Vec::new();
                        let mut file = file;
                        file.read_to_end(&mut buf).map_err(|err| io(&fname, err))?;
                        Arc::new(buf)
                    };
                    files.insert(fname, bytes);
                }
            }
            _ => problems.push(Problem {
                at: name,
                message: "unexpected entry in the package directory".into(),
            }),
        }
    }
    if !problems.is_empty() {
        return Err(Error::Verify(problems));
    }
    let signature = read_signature_file(&dir)?;
    Ok((manifest, files, signature))
}

/// Opens `name` in `dir` for reading if it is a regular file: not a
/// symlink, directory, device or FIFO. Opening a FIFO blocks until some
/// process writes to it, so a package holding one could hang `open`
/// forever (found by `fuzz/open_dir`).
fn open_regular(dir: &Dir, name: &str) -> Result<cap_std::fs::File, Error> {
    let md = dir.symlink_metadata(name).map_err(|e| io(name, e))?;
    if !md.is_file() {
        return Err(Error::Io {
            file: name.to_string(),
            message: "not a regular file".into(),
        });
    }
    dir.open(name).map_err(|e| io(name, e))
}

/// Reads `manifest.json` (within [`MAX_MANIFEST_BYTES`]) and checks it
/// against `manifest.sha256`.
fn read_manifest(dir: &Dir) -> Result<Vec<u8>, Error> {
    let mut f = open_regular(dir, MANIFEST_FILE)?;
    let mut buf = Vec::new();
    (&mut f)
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| io(MANIFEST_FILE, e))?;
    if buf.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(Error::Verify(vec![Problem {
            at: MANIFEST_FILE.into(),
            message: format!("manifest is larger than {MAX_MANIFEST_BYTES} bytes"),
        }]));
    }
    let mut expected = String::new();
    open_regular(dir, MANIFEST_DIGEST_FILE)?
        .take(128)
        .read_to_string(&mut expected)
        .map_err(|e| io(MANIFEST_DIGEST_FILE, e))?;
    let (expected, actual) = (expected.trim().to_string(), sha256_hex(&buf));
    if expected != actual {
        return Err(Error::Integrity {
            file: MANIFEST_FILE.into(),
            expected,
            actual,
        });
    }
    Ok(buf)
}

impl Package {
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// SHA-256 of the manifest, which lists every other file's digest: one
    /// name for the package's exact contents (what a trust policy pins or a
    /// signature signs).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The bytes of package file `name` (as listed in the manifest), which
    /// were verified at open.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(|b| (**b).as_ref())
    }

    /// The host this package was opened on.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Calls `function` with positional inputs.
    ///
    /// A function that updates inputs in place is refused with
    /// [`Error::BadInputs`] saying to use [`Package::call_mut`]: dropping
    /// the update silently would lose state (a cache, a running statistic).
    pub fn call(&self, function: &str, inputs: &[Tensor]) -> Result<Vec<Tensor>, Error> {
        let fi = self.function_index(function)?;
        self.refuse_mutating(fi, "call")?;
        Ok(self.call_inner(fi, None, inputs)?.0)
    }

    /// Calls `function` with positional inputs and writes the new value of
    /// every input it updates in place ([`Signature::mutates`]) into
    /// `inputs`. Returns the declared outputs.
    ///
    /// The caller's tensors change only if the whole call succeeded (guards,
    /// the run, and the check that each new value has exactly the dtype and
    /// shape of the tensor it replaces); on any error they are untouched.
    /// An updated input's `Tensor` is replaced by the new value: clones of
    /// the old tensor keep the old value. For a function that updates
    /// nothing this is [`Package::call`].
    ///
    /// [`Signature::mutates`]: crate::manifest::Signature::mutates
    pub fn call_mut(&self, function: &str, inputs: &mut [Tensor]) -> Result<Vec<Tensor>, Error> {
        let fi = self.function_index(function)?;
        let (outputs, updates) = self.call_inner(fi, None, inputs)?;
        let sig = &self.manifest.functions[fi].signature;
        for (m, value) in sig.mutates.iter().zip(updates) {
            // In range: `call_inner` checked it before the run.
            if let Some(slot) = inputs.get_mut(m.input as usize) {
                *slot = value;
            }
        }
        Ok(outputs)
    }

    /// Calls `function` with inputs by name, in any order. A function that
    /// updates inputs in place is refused: use [`Package::call_named_mut`].
    pub fn call_named(
        &self,
        function: &str,
        inputs: &[(&str, Tensor)],
    ) -> Result<Vec<Tensor>, Error> {
        let fi = self.function_index(function)?;
        self.refuse_mutating(fi, "call_named")?;
        let (ordered, names) = self.order_named(fi, inputs)?;
        Ok(self.call_inner(fi, Some(&names), &ordered)?.0)
    }

    /// [`Package::call_mut`] with inputs by name, in any order: the new
    /// value of each updated input replaces the tensor of that name.
    pub fn call_named_mut(
        &self,
        function: &str,
        inputs: &mut [(&str, Tensor)],
    ) -> Result<Vec<Tensor>, Error> {
        let fi = self.function_index(function)?;
        let (ordered, names) = self.order_named(fi, inputs)?;
        let (outputs, updates) = self.call_inner(fi, Some(&names), &ordered)?;
        let sig = &self.manifest.functions[fi].signature;
        for (m, value) in sig.mutates.iter().zip(updates) {
            let Some(name) = names.get(m.input as usize) else {
                continue;
            };
            if let Some(slot) = inputs.iter_mut().find(|(n, _)| n == name) {
                slot.1 = value;
            }
        }
        Ok(outputs)
    }

    /// Refuses a call that cannot hand back updated inputs.
    fn refuse_mutating(&self, fi: usize, method: &str) -> Result<(), Error> {
        let f = &self.manifest.functions[fi];
        if f.signature.mutates.is_empty() {
            return Ok(());
        }
        Err(Error::BadInputs {
            function: f.name.clone(),
            expected: format!(
                "a call through `Package::{method}_mut`, since it updates input{} {} in place",
                if f.signature.mutates.len() == 1 {
                    ""
                } else {
                    "s"
                },
                f.signature
                    .mutated_names()
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            actual: format!(
                "a call through `Package::{method}`, which cannot hand the new values back"
            ),
        })
    }

    /// The inputs in signature order, and the signature's input names.
    fn order_named(
        &self,
        fi: usize,
        inputs: &[(&str, Tensor)],
    ) -> Result<(Vec<Tensor>, Vec<String>), Error> {
        let function = self.manifest.functions[fi].name.as_str();
        let sig = &self.manifest.functions[fi].signature;
        let mut ordered = Vec::with_capacity(sig.inputs.len());
        for a in &sig.inputs {
            let t = inputs
                .iter()
                .find(|(n, _)| *n == a.name)
                .ok_or_else(|| Error::BadInputs {
                    function: function.into(),
                    expected: format!("an input named `{}`", a.name),
                    actual: format!(
                        "inputs {:?}",
                        inputs.iter().map(|(n, _)| *n).collect::<Vec<_>>()
                    ),
                })?;
            ordered.push(t.1.clone());
        }
        if let Some((n, _)) = inputs
            .iter()
            .find(|(n, _)| !sig.inputs.iter().any(|a| a.name == *n))
        {
            return Err(Error::BadInputs {
                function: function.into(),
                expected: format!(
                    "inputs {:?}",
                    sig.inputs
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                ),
                actual: format!("an input named `{n}`"),
            });
        }
        let names: Vec<String> = sig.inputs.iter().map(|a| a.name.clone()).collect();
        Ok((ordered, names))
    }

    fn function_index(&self, function: &str) -> Result<usize, Error> {
        self.functions
            .get(function)
            .copied()
            .ok_or_else(|| Error::UnknownFunction {
                name: function.into(),
                available: self
                    .manifest
                    .functions
                    .iter()
                    .map(|f| format!("`{}`", f.name))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Runs entry `entry` of `function` itself, not the first entry whose
    /// guards hold: its guards are checked (a miss names only this entry),
    /// then its wrapper runs. Returns the declared outputs and, for a
    /// function that updates inputs in place, the new values of those
    /// inputs (in `signature.mutates` order) without writing them anywhere.
    /// This is how bundled samples are replayed ([`crate::samples`]).
    pub fn call_entry(
        &self,
        function: &str,
        entry: usize,
        inputs: &[Tensor],
    ) -> Result<(Vec<Tensor>, Vec<Tensor>), Error> {
        let fi = self.function_index(function)?;
        let f = &self.manifest.functions[fi];
        let (Some(e), Some(st)) = (f.entries.get(entry), self.entries[fi].get(entry)) else {
            return Err(Error::BadInputs {
                function: f.name.clone(),
                expected: format!("an entry index below {}", f.entries.len()),
                actual: format!("entry {entry}"),
            });
        };
        check_updated_inputs(f, inputs)?;
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let call = CallView {
            names: None,
            inputs: &refs,
        };
        let miss = st.global_miss.clone().or_else(|| {
            e.guards.iter().find_map(|g| {
                g.check(&call).err().map(|actual| EntryMiss {
                    entry,
                    expected: g.describe(&f.signature, &self.manifest.globals),
                    actual,
                })
            })
        });
        if let Some(miss) = miss {
            return Err(Error::GuardMiss {
                function: f.name.clone(),
                explanations: vec![miss],
            });
        }
        self.run_entry(fi, entry, inputs)
    }

    /// Which entry of `function` these inputs select, or the miss.
    pub fn select(&self, function: &str, inputs: &[Tensor]) -> Result<usize, Error> {
        let fi = self.function_index(function)?;
        self.select_inner(fi, None, &inputs.iter().collect::<Vec<_>>())
    }

    fn select_inner(
        &self,
        fi: usize,
        names: Option<&[String]>,
        inputs: &[&Tensor],
    ) -> Result<usize, Error> {
        let f = &self.manifest.functions[fi];
        let call = CallView { names, inputs };
        let mut misses = Vec::new();
        for (ei, (e, st)) in f.entries.iter().zip(&self.entries[fi]).enumerate() {
            if let Some(m) = &st.global_miss {
                misses.push(m.clone());
                continue;
            }
            match e
                .guards
                .iter()
                .find_map(|g| g.check(&call).err().map(|a| (g, a)))
            {
                None => return Ok(ei),
                Some((g, actual)) => misses.push(EntryMiss {
                    entry: ei,
                    expected: g.describe(&f.signature, &self.manifest.globals),
                    actual,
                }),
            }
        }
        Err(Error::GuardMiss {
            function: f.name.clone(),
            explanations: misses,
        })
    }

    /// Runs function `fi`: its declared outputs, and the new values of the
    /// inputs it updates (in `signature.mutates` order), each checked to
    /// have its input's dtype and shape.
    fn call_inner(
        &self,
        fi: usize,
        names: Option<&[String]>,
        inputs: &[Tensor],
    ) -> Result<(Vec<Tensor>, Vec<Tensor>), Error> {
        let f = &self.manifest.functions[fi];
        check_updated_inputs(f, inputs)?;
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let ei = self.select_inner(fi, names, &refs)?;
        self.run_entry(fi, ei, inputs)
    }

    fn pre(&self, fi: usize, ei: usize) -> Result<&WrapperPre<InstanceState>, Error> {
        let st = &self.entries[fi][ei];
        let digest = &self.manifest.functions[fi].entries[ei].wrapper;
        st.pre
            .get_or_init(|| {
                let bytes = &self.files[&wrapper_file(digest)];
                self.host
                    .prepare(digest, (**bytes).as_ref())
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|m| Error::Compile {
                wrapper: digest.clone(),
                message: m.clone(),
            })
    }

    fn trap(&self, fi: usize, ei: usize, kind: TrapKind, message: String) -> Error {
        self.host
            .inner
            .counters
            .traps
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(function = %self.manifest.functions[fi].name, entry = ei, ?kind, %message, "instance discarded");
        Error::Trap {
            function: self.manifest.functions[fi].name.clone(),
            entry: ei,
            kind,
            message,
        }
    }

    fn instantiate(&self, fi: usize, ei: usize) -> Result<Instance, Error> {
        let pre = self.pre(fi, ei)?;
        let st = &self.entries[fi][ei];
        let _span = tracing::debug_span!("sandbox.instantiate").entered();
        let limits = &self.host.config().limits;
        let mut store = Store::new(
            &self.host.inner.engine,
            InstanceState::new(st.kernels.clone(), self.host.config().kernels, limits),
        );
        store.limiter(|s| s);
        store.set_epoch_deadline(self.host.deadline_ticks());
        self.host
            .inner
            .counters
            .instantiations
            .fetch_add(1, Ordering::Relaxed);
        let wrapper = match pre.instantiate(&mut store) {
            Ok(w) => w,
            Err(e) => {
                let (kind, message) = classify(&mut store, e);
                return Err(self.trap(fi, ei, kind, message));
            }
        };
        let mut setup = || -> Result<(Vec<u32>, Vec<u32>), crate::sandbox::Fault> {
            let s = store.data_mut();
            let g = st
                .globals
                .iter()
                .map(|t| s.add_global(t.clone()))
                .collect::<Result<Vec<_>, _>>()?;
            let b = st
                .buffers
                .iter()
                .map(|m| s.add_buffer(m))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((g, b))
        };
        let (g, b) = setup().map_err(|f| self.trap(fi, ei, f.kind, f.message))?;
        store.data_mut().begin_init();
        store.set_epoch_deadline(self.host.deadline_ticks());
        let r = wrapper.call_init(&mut store, &g, &b);
        store.data_mut().end_init();
        if let Err(e) = r {
            let (kind, message) = classify(&mut store, e);
            return Err(self.trap(fi, ei, kind, message));
        }
        Ok(Instance { store, wrapper })
    }

    /// Runs entry `ei` of function `fi`, on rayon's pool if its last call
    /// was long (see the module docs).
    fn run_entry(
        &self,
        fi: usize,
        ei: usize,
        inputs: &[Tensor],
    ) -> Result<(Vec<Tensor>, Vec<Tensor>), Error> {
        let last = &self.entries[fi][ei].last_call_ns;
        let turn = (Duration::from_nanos(last.load(Ordering::Relaxed)) >= POOL_CALL_MIN
            && rayon::current_thread_index().is_none()
            && rayon::current_num_threads() > 1)
            .then(PoolTurn::take)
            .flatten();
        let start = Instant::now();
        let r = if let Some(_turn) = turn {
            self.host
                .inner
                .counters
                .pool_calls
                .fetch_add(1, Ordering::Relaxed);
            rayon::scope(|_| self.run_entry_here(fi, ei, inputs))
        } else {
            self.run_entry_here(fi, ei, inputs)
        };
        let took = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        last.store(took, Ordering::Relaxed);
        r
    }

    fn run_entry_here(
        &self,
        fi: usize,
        ei: usize,
        inputs: &[Tensor],
    ) -> Result<(Vec<Tensor>, Vec<Tensor>), Error> {
        self.host
            .inner
            .counters
            .calls
            .fetch_add(1, Ordering::Relaxed);
        let st = &self.entries[fi][ei];
        let pooled = st.pool.lock().map(|mut p| p.pop()).unwrap_or(None);
        let mut inst = match pooled {
            Some(i) => i,
            None => self.instantiate(fi, ei)?,
        };
        match self.run_instance(fi, ei, &mut inst, inputs) {
            Ok(out) => {
                if let Ok(mut pool) = st.pool.lock() {
                    if pool.len() < self.host.config().limits.pool_size
                        && !inst.store.data().worn_out()
                    {
                        pool.push(inst);
                    }
                }
                Ok(out)
            }
            // A trapped instance is dropped here and never reused.
            Err(e) => Err(e),
        }
    }

    fn run_instance(
        &self,
        fi: usize,
        ei: usize,
        inst: &mut Instance,
        inputs: &[Tensor],
    ) -> Result<(Vec<Tensor>, Vec<Tensor>), Error> {
        let f = &self.manifest.functions[fi];
        let store = &mut inst.store;
        store.data_mut().begin_run();
        let handles = inputs
            .iter()
            .map(|t| store.data_mut().add_input(t.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|fault| self.trap(fi, ei, fault.kind, fault.message))?;
        store.set_epoch_deadline(self.host.deadline_ticks());
        let r = inst.wrapper.call_run(&mut *store, &handles);
        let result = match r {
            Err(e) => {
                let (kind, message) = classify(store, e);
                return Err(self.trap(fi, ei, kind, message));
            }
            Ok(Err(index)) => Err(Error::BreakMiss {
                function: f.name.clone(),
                entry: ei,
                index,
            }),
            Ok(Ok(outs)) => {
                let declared = f.signature.outputs.len();
                let updated = f.signature.mutates.len();
                if Some(outs.len()) != declared.checked_add(updated) {
                    return Err(self.trap(
                        fi,
                        ei,
                        TrapKind::Contract,
                        if updated == 0 {
                            format!(
                                "wrapper returned {} outputs, the signature has {declared}",
                                outs.len()
                            )
                        } else {
                            format!(
                                "wrapper returned {} outputs, the signature has {declared} and {updated} updated input{}",
                                outs.len(),
                                if updated == 1 { "" } else { "s" }
                            )
                        },
                    ));
                }
                let (outs, new_values) = outs.split_at(declared);
                let mut updates = Vec::with_capacity(updated);
                for (h, m) in new_values.iter().zip(&f.signature.mutates) {
                    let t = store
                        .data()
                        .output(*h)
                        .map_err(|fault| self.trap(fi, ei, fault.kind, fault.message))?;
                    // The package is untrusted: the new value must be able
                    // to stand in for the caller's tensor exactly.
                    let old = inputs.get(m.input as usize);
                    if old.map(Tensor::meta) != Some(t.meta()) {
                        let name = f
                            .signature
                            .inputs
                            .get(m.input as usize)
                            .map_or("?", |a| a.name.as_str());
                        return Err(self.trap(
                            fi,
                            ei,
                            TrapKind::Contract,
                            format!(
                                "the new value of input `{name}` is {}, but the input is {}",
                                t.meta(),
                                old.map_or("missing".to_string(), |o| o.meta().to_string())
                            ),
                        ));
                    }
                    updates.push(t);
                }
                let mut tensors = Vec::with_capacity(outs.len());
                for (h, decl) in outs.iter().zip(&f.signature.outputs) {
                    let t = store
                        .data()
                        .output(*h)
                        .map_err(|fault| self.trap(fi, ei, fault.kind, fault.message))?;
                    if t.dtype() != decl.kind.dtype()
                        || t.shape().len() != decl.kind.rank() as usize
                    {
                        return Err(self.trap(
                            fi,
                            ei,
                            TrapKind::Contract,
                            format!(
                                "output `{}` is {}, the signature says {}",
                                decl.name,
                                t.meta(),
                                decl.kind
                            ),
                        ));
                    }
                    tensors.push(t);
                }
                Ok((tensors, updates))
            }
        };
        store.data_mut().end_run();
        result
    }
}

/// Every input function `f` updates in place must be among `inputs`.
fn check_updated_inputs(f: &crate::manifest::FunctionDecl, inputs: &[Tensor]) -> Result<(), Error> {
    match f
        .signature
        .mutates
        .iter()
        .find(|m| m.input as usize >= inputs.len())
    {
        Some(m) => Err(Error::BadInputs {
            function: f.name.clone(),
            expected: format!(
                "{} inputs (it updates input {} in place)",
                f.signature.inputs.len(),
                m.input
            ),
            actual: format!("{} inputs", inputs.len()),
        }),
        None => Ok(()),
    }
}
