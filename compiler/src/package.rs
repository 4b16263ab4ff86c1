//! The package writer: a [`PackageDraft`] holds a manifest and the files it
//! lists, grows entry by entry, opens as a host [`Package`] from memory, saves
//! to a directory atomically, and loads back from one.
//!
//! Layout and naming follow `ampoule_host::manifest`: `manifest.json` and its
//! digest `manifest.sha256`, wrappers `wrappers/<sha256>.wasm`, weights
//! `weights/<sha256>.safetensors`, samples `samples/<sha256>.safetensors`.
//!
//! Invariants:
//! - **Globals are shared by name and content.** Adding an entry resolves each
//!   of its globals by name: an embedded global with the same dtype, shape and
//!   bytes, or a host-bound global with the same dtype and shape, is reused;
//!   the same name with anything else is a [`PackageError::GlobalConflict`]
//!   that names the functions using the existing global and the function
//!   asking for the new one (the fix: capture different values under
//!   different names). Two functions capturing the same tensor under the
//!   same name (`encode` and `decode` sharing an embedding) reference one
//!   global, and its bytes are stored once: the weights file that first
//!   held it.
//! - **Weight files are immutable.** The embedded globals an entry adds are
//!   written into one new safetensors file (tensors named by global name;
//!   the `safetensors` crate orders them by dtype alignment, then name), so
//!   extending a package never rewrites the weights it already has.
//! - **Deterministic.** The manifest's maps are sorted, functions and entries
//!   keep the order they were added in, and nothing records a time or a
//!   path: the same sequence of entries gives the same bytes.
//! - **A draft is always a valid package.** `add_entry` checks everything
//!   that can conflict before it changes anything.
//! - **Samples are recorded on reference kernels.**
//!   [`PackageDraft::set_samples`] runs the entry itself in the sandbox on a
//!   host with the caller's registry and limits but `Impl::Reference`
//!   kernels, and stores the given inputs and the outputs it got in one
//!   safetensors file (`input.<name>`, `output.<name>`), with a tolerance
//!   per output ([`SampleOptions`]). Replacing an entry (a graph break that
//!   grew a continuation) keeps its samples; a samples file no entry uses
//!   any more is dropped.
//!
//! # Saving
//!
//! [`PackageDraft::save`] never leaves a half-written package at the
//! destination. All file access goes through `cap-std`, from the
//! destination's parent directory:
//!
//! 1. write every file into a fresh `.<name>.tmp-<pid>-<n>` directory next to
//!    the destination, `fsync` each file and directory;
//! 2. if the destination exists (and looks like a package: a directory with a
//!    `manifest.json`, or an empty directory), rename it aside to
//!    `.<name>.old-<pid>-<n>`;
//! 3. rename the temporary directory to the destination, `fsync` the parent;
//! 4. remove the old package.
//!
//! Crash windows: during 1, the destination is untouched and a `.tmp-`
//! directory may be left behind (safe to delete). Between 2 and 3, the
//! destination is missing and the previous package is complete under
//! `.<name>.old-*` (rename it back). During 4, the new package is in place
//! and a `.old-` directory may be left behind. A failure in 1 removes the
//! temporary directory; a failure in 3 renames the old package back.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ampoule_host::manifest::{
    sample_input_tensor, sample_output_tensor, samples_file, sha256_hex, weights_file,
    wrapper_file, Abi, EntryDecl, FunctionDecl, GlobalDecl, GlobalSource, Manifest, SamplesDecl,
    Tolerance, FORMAT_VERSION, MANIFEST_DIGEST_FILE, MANIFEST_FILE,
};
use ampoule_host::{Bindings, Host, HostConfig, Impl, Package, PackageFiles, TrustPolicy};
use ampoule_kernels::{DType, Tensor, TensorMeta};
use cap_std::fs::Dir;

use crate::compile::CompiledEntry;
use crate::guards::global_guards;
use crate::ir::{GlobalDef, GlobalSource as IrSource};
use crate::passes::constants::content_digest;

/// Why a package operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("cannot {action} `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{}` exists and is not a package directory; refusing to replace it (choose another path or remove it)", path.display())]
    NotAPackage { path: PathBuf },
    /// Two functions (or two entries of one) capture different values
    /// under one global name.
    #[error("global `{name}` is already in the package as {existing} (used by {used_by}), but function `{function}` needs {requested}; capture different values under different names (e.g. `{function}.{name}`), or the same tensor if they are meant to share it")]
    GlobalConflict {
        name: String,
        existing: String,
        /// The functions whose entries use the existing global.
        used_by: String,
        /// The function of the entry being added.
        function: String,
        requested: String,
    },
    #[error("function `{function}` has signature {existing} in the package, but this entry has {requested}; use another function name")]
    SignatureConflict {
        function: String,
        existing: String,
        requested: String,
    },
    #[error("function `{function}` has no entry {index} to replace ({count} entries)")]
    NoEntry {
        function: String,
        index: usize,
        count: usize,
    },
    #[error("cannot write a weights file: {0}")]
    Weights(String),
    /// Samples that cannot be bundled (wrong inputs, a failed reference run).
    #[error("cannot bundle samples for function `{function}` entry {entry}: {message}")]
    Samples {
        function: String,
        entry: usize,
        message: String,
    },
    #[error("the package's manifest is not valid JSON of the expected form: {0}")]
    Manifest(String),
    #[error(transparent)]
    Host(#[from] ampoule_host::Error),
}

/// A package being built. See the module doc.
#[derive(Clone, Debug)]
pub struct PackageDraft {
    manifest: Manifest,
    /// Shared so cloning a draft (to try an entry) does not copy weights.
    files: BTreeMap<String, Arc<Vec<u8>>>,
    /// For each package global: its content digest if embedded.
    contents: Vec<Option<String>>,
}

impl Default for PackageDraft {
    fn default() -> Self {
        PackageDraft::new()
    }
}

/// A one-line signature, for messages: `(x: f32 rank 2) -> (y: f32 rank 2)`.
pub fn fmt_signature(sig: &ampoule_host::manifest::Signature) -> String {
    use ampoule_host::manifest::ArgKind;
    let args = |a: &[ampoule_host::manifest::ArgDecl]| {
        a.iter()
            .map(|a| match &a.kind {
                ArgKind::Tensor { dtype, rank } => format!("{}: {dtype} rank {rank}", a.name),
                ArgKind::Scalar { dtype } => format!("{}: {dtype} scalar", a.name),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("({}) -> ({})", args(&sig.inputs), args(&sig.outputs))
}

fn describe_global(decl: &GlobalDecl) -> String {
    let kind = match decl.source {
        GlobalSource::Weight { .. } => "an embedded weight",
        GlobalSource::Bound => "a host-bound global",
    };
    format!("{kind} {}{:?}", decl.dtype, decl.shape)
}

fn describe_def(def: &GlobalDef) -> String {
    let kind = match def.source {
        IrSource::Embedded(_) => "an embedded weight",
        IrSource::Bound { .. } => "a host-bound global",
    };
    format!("{kind} {}{:?}", def.meta.dtype, def.meta.shape)
}

fn to_safetensors_dtype(d: DType) -> safetensors::Dtype {
    use safetensors::Dtype as S;
    match d {
        DType::F32 => S::F32,
        DType::F64 => S::F64,
        DType::I8 => S::I8,
        DType::U8 => S::U8,
        DType::I16 => S::I16,
        DType::U16 => S::U16,
        DType::I32 => S::I32,
        DType::U32 => S::U32,
        DType::I64 => S::I64,
        DType::U64 => S::U64,
        DType::Bool => S::BOOL,
    }
}

/// A tensor as the `safetensors` crate sees it.
struct StView<'a>(&'a Tensor);

impl safetensors::View for StView<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        to_safetensors_dtype(self.0.dtype())
    }
    fn shape(&self) -> &[usize] {
        self.0.shape()
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.0.bytes())
    }
    fn data_len(&self) -> usize {
        self.0.bytes().len()
    }
}

/// How [`PackageDraft::set_samples`] chooses each output's tolerance.
///
/// An output named in `tolerances` gets that one. Otherwise an integer or
/// bool output must match exactly, and a float output gets `rtol` and an
/// `atol` of `atol_scale` times its largest finite magnitude (times 1 if
/// that is zero), so a tolerance means the same at any scale; both are
/// rounded to two significant digits, so the manifest reads well.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleOptions {
    pub rtol: f64,
    pub atol_scale: f64,
    /// Per-output overrides, by output name.
    pub tolerances: BTreeMap<String, Tolerance>,
}

impl Default for SampleOptions {
    fn default() -> Self {
        SampleOptions {
            rtol: 1e-4,
            atol_scale: 1e-5,
            tolerances: BTreeMap::new(),
        }
    }
}

impl SampleOptions {
    /// The tolerance for a float output recorded as `t` (exact for others).
    pub fn derive(&self, t: &Tensor) -> Tolerance {
        let scale = match t.dtype() {
            DType::F32 => t
                .bytes()
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).abs())
                .filter(|v| v.is_finite())
                .fold(0.0, f64::max),
            DType::F64 => t
                .bytes()
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    f64::from_le_bytes(a).abs()
                })
                .filter(|v| v.is_finite())
                .fold(0.0, f64::max),
            _ => return Tolerance::EXACT,
        };
        let scale = if scale > 0.0 { scale } else { 1.0 };
        Tolerance {
            rtol: two_digits(self.rtol),
            atol: two_digits(self.atol_scale * scale),
        }
    }
}

/// `x` rounded to two significant digits (short in JSON, and read back
/// exactly).
fn two_digits(x: f64) -> f64 {
    format!("{x:.1e}").parse().unwrap_or(x)
}

/// How `add_entry` resolves one global.
enum Resolved<'a> {
    Existing(u32),
    New(&'a GlobalDef),
}

impl PackageDraft {
    /// An empty package.
    pub fn new() -> PackageDraft {
        PackageDraft {
            manifest: Manifest {
                format: FORMAT_VERSION,
                abi: Abi {
                    wit: ampoule_guest::WIT_PACKAGE.to_string(),
                    kernels: Vec::new(),
                },
                files: BTreeMap::new(),
                globals: Vec::new(),
                functions: Vec::new(),
            },
            files: BTreeMap::new(),
            contents: Vec::new(),
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The bytes of file `name`, if the package has it.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        self.files.get(name).map(|b| b.as_slice())
    }

    /// The manifest as written to `manifest.json`.
    pub fn manifest_json(&self) -> Vec<u8> {
        self.manifest.to_json()
    }

    fn resolve<'a>(
        &self,
        function: &str,
        def: &'a GlobalDef,
    ) -> Result<Resolved<'a>, PackageError> {
        let Some(index) = self
            .manifest
            .globals
            .iter()
            .position(|g| g.name == def.name)
        else {
            return Ok(Resolved::New(def));
        };
        let decl = &self.manifest.globals[index];
        let same_meta = decl.dtype == def.meta.dtype
            && decl
                .shape
                .iter()
                .map(|&d| d as usize)
                .eq(def.meta.shape.iter().copied());
        let same = same_meta
            && match (&decl.source, &def.source) {
                (GlobalSource::Bound, IrSource::Bound { .. }) => true,
                (GlobalSource::Weight { .. }, IrSource::Embedded(t)) => {
                    self.contents.get(index).and_then(Option::as_deref)
                        == Some(content_digest(t).as_str())
                }
                _ => false,
            };
        if same {
            Ok(Resolved::Existing(index as u32))
        } else {
            let mut existing = describe_global(decl);
            let mut requested = describe_def(def);
            if same_meta && existing == requested {
                existing.push_str(" with other contents");
                requested.push_str(" with these contents");
            }
            let users: Vec<String> = self
                .manifest
                .functions
                .iter()
                .filter(|f| {
                    f.entries
                        .iter()
                        .any(|e| e.globals.contains(&(index as u32)))
                })
                .map(|f| format!("function `{}`", f.name))
                .collect();
            Err(PackageError::GlobalConflict {
                name: def.name.clone(),
                existing,
                used_by: if users.is_empty() {
                    "no function".into()
                } else {
                    users.join(", ")
                },
                function: function.to_string(),
                requested,
            })
        }
    }

    /// Adds a compiled entry to its function (creating the function if it is
    /// new); returns the entry's index within the function. The function's
    /// program hash is the one recorded when it was created.
    pub fn add_entry(&mut self, entry: &CompiledEntry) -> Result<usize, PackageError> {
        // Check everything that can conflict first, so a failure changes nothing.
        let function = self
            .manifest
            .functions
            .iter()
            .position(|f| f.name == entry.function);
        if let Some(fi) = function {
            let existing = &self.manifest.functions[fi].signature;
            if *existing != entry.signature {
                return Err(PackageError::SignatureConflict {
                    function: entry.function.clone(),
                    existing: fmt_signature(existing),
                    requested: fmt_signature(&entry.signature),
                });
            }
        }
        let resolved = entry
            .globals
            .iter()
            .map(|g| self.resolve(&entry.function, g))
            .collect::<Result<Vec<_>, _>>()?;

        // New globals: bound ones are declared; embedded ones go into one new
        // weights file.
        let mut indices = Vec::with_capacity(resolved.len());
        let mut new_weights: Vec<(usize, &Tensor)> = Vec::new();
        for r in &resolved {
            let index = match *r {
                Resolved::Existing(i) => i,
                Resolved::New(def) => {
                    let (source, content) = match &def.source {
                        IrSource::Bound { .. } => (GlobalSource::Bound, None),
                        IrSource::Embedded(t) => {
                            new_weights.push((self.manifest.globals.len(), t));
                            // The file is named once all new weights are known.
                            (
                                GlobalSource::Weight {
                                    file: String::new(),
                                    tensor: def.name.clone(),
                                },
                                Some(content_digest(t)),
                            )
                        }
                    };
                    self.manifest.globals.push(GlobalDecl {
                        name: def.name.clone(),
                        dtype: def.meta.dtype,
                        shape: def.meta.shape.iter().map(|&d| d as u64).collect(),
                        source,
                    });
                    self.contents.push(content);
                    (self.manifest.globals.len() - 1) as u32
                }
            };
            indices.push(index);
        }
        if !new_weights.is_empty() {
            let bytes = match safetensors::serialize(
                new_weights
                    .iter()
                    .map(|(g, t)| (self.manifest.globals[*g].name.clone(), StView(t))),
                None,
            ) {
                Ok(b) => b,
                Err(e) => {
                    // Undo the globals declared above.
                    let keep = self.manifest.globals.len()
                        - resolved
                            .iter()
                            .filter(|r| matches!(r, Resolved::New(_)))
                            .count();
                    self.manifest.globals.truncate(keep);
                    self.contents.truncate(keep);
                    return Err(PackageError::Weights(e.to_string()));
                }
            };
            let digest = sha256_hex(&bytes);
            let name = weights_file(&digest);
            for (g, _) in &new_weights {
                if let GlobalSource::Weight { file, .. } = &mut self.manifest.globals[*g].source {
                    file.clone_from(&name);
                }
            }
            self.manifest.files.insert(name.clone(), digest);
            self.files.insert(name, Arc::new(bytes));
        }

        let wrapper_digest = sha256_hex(&entry.wrapper);
        let wname = wrapper_file(&wrapper_digest);
        self.manifest
            .files
            .insert(wname.clone(), wrapper_digest.clone());
        self.files.insert(wname, Arc::new(entry.wrapper.clone()));

        let mut guards = entry.input_guards.clone();
        guards.extend(global_guards(indices.iter().copied().zip(&entry.globals)));
        let decl = EntryDecl {
            guards,
            wrapper: wrapper_digest,
            kernels: entry.kernels.clone(),
            globals: indices,
            buffers: entry.buffers.clone(),
            paths: entry.paths.clone(),
            symbols: entry.symbols.clone(),
            samples: None,
        };
        let kernels: BTreeSet<String> = self
            .manifest
            .abi
            .kernels
            .iter()
            .cloned()
            .chain(entry.kernels.iter().map(|k| k.kernel.clone()))
            .collect();
        self.manifest.abi.kernels = kernels.into_iter().collect();
        let fi = match function {
            Some(fi) => fi,
            None => {
                self.manifest.functions.push(FunctionDecl {
                    name: entry.function.clone(),
                    signature: entry.signature.clone(),
                    program_hash: entry.program_hash.clone(),
                    entries: Vec::new(),
                });
                self.manifest.functions.len() - 1
            }
        };
        let entries = &mut self.manifest.functions[fi].entries;
        entries.push(decl);
        Ok(entries.len() - 1)
    }

    /// Replaces entry `index` of `entry.function` with `entry`, keeping its
    /// place in lookup order (an entry that grew a graph-break continuation).
    /// The old wrapper file goes unless another entry uses it. On an error
    /// the draft is unchanged.
    pub fn replace_entry(
        &mut self,
        index: usize,
        entry: &CompiledEntry,
    ) -> Result<(), PackageError> {
        let count = self
            .manifest
            .function(&entry.function)
            .map_or(0, |f| f.entries.len());
        if index >= count {
            return Err(PackageError::NoEntry {
                function: entry.function.clone(),
                index,
                count,
            });
        }
        let mut draft = self.clone();
        let added = draft.add_entry(entry)?;
        let Some(f) = draft
            .manifest
            .functions
            .iter_mut()
            .find(|f| f.name == entry.function)
        else {
            return Err(PackageError::NoEntry {
                function: entry.function.clone(),
                index,
                count,
            });
        };
        let mut decl = f.entries.remove(added);
        // The same inputs take the same path through the grown entry: its
        // samples still hold.
        decl.samples = f.entries[index].samples.clone();
        let old = std::mem::replace(&mut f.entries[index], decl);
        let used = draft
            .manifest
            .functions
            .iter()
            .flat_map(|f| &f.entries)
            .any(|e| e.wrapper == old.wrapper);
        if !used {
            let name = wrapper_file(&old.wrapper);
            draft.manifest.files.remove(&name);
            draft.files.remove(&name);
        }
        *self = draft;
        Ok(())
    }

    /// Bundles `inputs` as the samples of entry `entry` of `function`, with
    /// the outputs the entry gives for them on reference kernels (see the
    /// module doc), replacing any samples it had. `host` lends its registry
    /// and limits; `bindings` binds host-bound globals. On an error the
    /// draft is unchanged.
    pub fn set_samples(
        &mut self,
        host: &Host,
        bindings: &BTreeMap<String, Tensor>,
        function: &str,
        entry: usize,
        inputs: &[Tensor],
        options: &SampleOptions,
    ) -> Result<(), PackageError> {
        let fail = |message: String| PackageError::Samples {
            function: function.to_string(),
            entry,
            message,
        };
        let Some(fi) = self
            .manifest
            .functions
            .iter()
            .position(|f| f.name == function)
        else {
            return Err(fail("the package has no such function".into()));
        };
        let f = &self.manifest.functions[fi];
        if entry >= f.entries.len() {
            return Err(PackageError::NoEntry {
                function: function.to_string(),
                index: entry,
                count: f.entries.len(),
            });
        }
        if inputs.len() != f.signature.inputs.len() {
            return Err(fail(format!(
                "the function takes {} inputs, {} were given",
                f.signature.inputs.len(),
                inputs.len()
            )));
        }
        for (a, t) in f.signature.inputs.iter().zip(inputs) {
            if t.dtype() != a.kind.dtype() || t.shape().len() != a.kind.rank() as usize {
                return Err(fail(format!(
                    "input `{}` is {}, but the function takes {}",
                    a.name,
                    t.meta(),
                    a.kind
                )));
            }
        }
        let reference = Host::new(HostConfig {
            kernels: Impl::Reference,
            trust: TrustPolicy::default(),
            ..host.config().clone()
        })?;
        let package = self.open(&reference, bindings)?;
        let (outputs, _updates) = package
            .call_entry(function, entry, inputs)
            .map_err(|e| fail(format!("the reference run failed: {e}")))?;

        let sig = &f.signature;
        let mut tolerances = BTreeMap::new();
        for (o, t) in sig.outputs.iter().zip(&outputs) {
            let tol = options
                .tolerances
                .get(&o.name)
                .copied()
                .unwrap_or_else(|| options.derive(t));
            tolerances.insert(o.name.clone(), tol);
        }
        let named: Vec<(String, StView<'_>)> = sig
            .inputs
            .iter()
            .zip(inputs)
            .map(|(a, t)| (sample_input_tensor(&a.name), StView(t)))
            .chain(
                sig.outputs
                    .iter()
                    .zip(&outputs)
                    .map(|(a, t)| (sample_output_tensor(&a.name), StView(t))),
            )
            .collect();
        let bytes = safetensors::serialize(named, None).map_err(|e| fail(e.to_string()))?;
        let digest = sha256_hex(&bytes);
        let name = samples_file(&digest);

        let old = self.manifest.functions[fi].entries[entry]
            .samples
            .replace(SamplesDecl {
                file: name.clone(),
                tolerances,
            });
        self.manifest.files.insert(name.clone(), digest);
        self.files.insert(name, Arc::new(bytes));
        if let Some(old) = old {
            self.drop_unused_samples(&old.file);
        }
        Ok(())
    }

    /// Removes samples file `name` unless an entry still uses it.
    fn drop_unused_samples(&mut self, name: &str) {
        let used = self
            .manifest
            .functions
            .iter()
            .flat_map(|f| &f.entries)
            .any(|e| e.samples.as_ref().is_some_and(|s| s.file == name));
        if !used {
            self.manifest.files.remove(name);
            self.files.remove(name);
        }
    }

    /// The manifest bytes and files, for [`Host::open_files`].
    pub fn to_files(&self) -> (Vec<u8>, PackageFiles) {
        let mut files = PackageFiles::new();
        for (name, bytes) in &self.files {
            files.insert_shared(name.clone(), bytes.clone());
        }
        (self.manifest_json(), files)
    }

    /// Opens the draft on `host` (full verification), binding the package's
    /// host-bound globals from `bindings` (other names are ignored).
    pub fn open(
        &self,
        host: &Host,
        bindings: &BTreeMap<String, Tensor>,
    ) -> Result<Package, PackageError> {
        let (manifest, files) = self.to_files();
        Ok(host.open_files(&manifest, files, host_bindings(&self.manifest, bindings))?)
    }

    /// Saves the package to `dir` atomically (see the module doc).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), PackageError> {
        self.save_with(dir.as_ref(), &mut |_| Ok(()))
    }

    /// [`PackageDraft::save`] with a hook called before each file is written
    /// (tests inject failures with it).
    fn save_with(
        &self,
        dir: &Path,
        before_write: &mut dyn FnMut(&str) -> io::Result<()>,
    ) -> Result<(), PackageError> {
        let _span = tracing::debug_span!("package.save", dir = %dir.display()).entered();
        let io_err = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source: io::Error| PackageError::Io {
                action,
                path,
                source,
            }
        };
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                io_err("save to", dir)(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the path has no UTF-8 file name",
                ))
            })?
            .to_string();
        let parent_path = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let parent = Dir::open_ambient_dir(&parent_path, cap_std::ambient_authority())
            .map_err(io_err("open directory", &parent_path))?;

        // Refuse to replace anything that is not a package.
        let replacing = match parent.symlink_metadata(&name) {
            Ok(m) if m.is_dir() => {
                let existing = parent.open_dir(&name).map_err(io_err("open", dir))?;
                let empty = existing
                    .entries()
                    .map_err(io_err("list", dir))?
                    .next()
                    .is_none();
                if !empty && !existing.is_file(MANIFEST_FILE) {
                    return Err(PackageError::NotAPackage {
                        path: dir.to_path_buf(),
                    });
                }
                true
            }
            Ok(_) => {
                return Err(PackageError::NotAPackage {
                    path: dir.to_path_buf(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_err("inspect", dir)(e)),
        };

        let tmp = unique_name(&parent, &name, "tmp")
            .map_err(io_err("create a temporary directory next to", dir))?;
        parent
            .create_dir(&tmp)
            .map_err(io_err("create a temporary directory next to", dir))?;
        if let Err(e) = self.write_into(&parent, &tmp, before_write) {
            let _ = parent.remove_dir_all(&tmp);
            return Err(io_err(
                "write the package into a temporary directory next to",
                dir,
            )(e));
        }

        if replacing {
            let old = unique_name(&parent, &name, "old").map_err(io_err("move aside", dir))?;
            if let Err(e) = parent.rename(&name, &parent, &old) {
                let _ = parent.remove_dir_all(&tmp);
                return Err(io_err("move aside", dir)(e));
            }
            if let Err(e) = parent.rename(&tmp, &parent, &name) {
                let _ = parent.rename(&old, &parent, &name);
                let _ = parent.remove_dir_all(&tmp);
                return Err(io_err("move the new package to", dir)(e));
            }
            sync_dir(&parent).map_err(io_err("sync", &parent_path))?;
            if let Err(e) = parent.remove_dir_all(&old) {
                tracing::warn!(old = %old, error = %e, "the new package is saved, but the previous one could not be removed");
            }
        } else {
            parent.rename(&tmp, &parent, &name).map_err(|e| {
                let _ = parent.remove_dir_all(&tmp);
                io_err("move the new package to", dir)(e)
            })?;
            sync_dir(&parent).map_err(io_err("sync", &parent_path))?;
        }
        Ok(())
    }

    fn write_into(
        &self,
        parent: &Dir,
        tmp: &str,
        before_write: &mut dyn FnMut(&str) -> io::Result<()>,
    ) -> io::Result<()> {
        let root = parent.open_dir(tmp)?;
        let mut subdirs = BTreeSet::new();
        for name in self.files.keys() {
            if let Some((d, _)) = name.split_once('/') {
                subdirs.insert(d.to_string());
            }
        }
        for d in &subdirs {
            root.create_dir(d)?;
        }
        let write = |name: &str,
                     bytes: &[u8],
                     hook: &mut dyn FnMut(&str) -> io::Result<()>|
         -> io::Result<()> {
            hook(name)?;
            let mut f = root.create(name)?;
            f.write_all(bytes)?;
            f.sync_all()
        };
        for (name, bytes) in &self.files {
            write(name, bytes, before_write)?;
        }
        // The manifest and its digest last: a directory with a manifest has
        // all its files.
        let manifest = self.manifest_json();
        write(MANIFEST_FILE, &manifest, before_write)?;
        write(
            MANIFEST_DIGEST_FILE,
            sha256_hex(&manifest).as_bytes(),
            before_write,
        )?;
        for d in &subdirs {
            sync_dir(&root.open_dir(d)?)?;
        }
        sync_dir(&root)
    }

    /// Loads the package in `dir` into a draft, and opens it on `host`.
    ///
    /// The directory is read by the host's own reader
    /// ([`Host::read_package`]: cap-std, size limit, manifest digest), then
    /// the host opens exactly those bytes (and signature) with full
    /// verification and its trust policy, so the draft holds precisely what
    /// was verified.
    pub fn load(
        host: &Host,
        dir: impl AsRef<Path>,
        bindings: &BTreeMap<String, Tensor>,
    ) -> Result<(PackageDraft, Package), PackageError> {
        let dir = dir.as_ref();
        let _span = tracing::debug_span!("package.load", dir = %dir.display()).entered();
        let (manifest_bytes, read) = host.read_package(dir)?;
        let manifest = Manifest::from_json(&manifest_bytes)
            .map_err(|e| PackageError::Manifest(e.to_string()))?;
        let files = read
            .iter()
            .map(|(name, bytes)| (name.to_string(), Arc::new(bytes.to_vec())))
            .collect();
        // Open the bytes as read, signature included, so the host's trust
        // policy applies to the package on disk. (Once the draft grows an
        // entry its manifest changes and it is unsigned until signed again.)
        let package = host.open_files(&manifest_bytes, read, host_bindings(&manifest, bindings))?;
        let mut draft = PackageDraft {
            manifest,
            files,
            contents: Vec::new(),
        };
        draft.contents = draft.embedded_contents()?;
        Ok((draft, package))
    }

    /// Content digests of the embedded globals, read from the weight files.
    fn embedded_contents(&self) -> Result<Vec<Option<String>>, PackageError> {
        let mut parsed: BTreeMap<&str, safetensors::SafeTensors<'_>> = BTreeMap::new();
        let mut out = Vec::with_capacity(self.manifest.globals.len());
        for g in &self.manifest.globals {
            let GlobalSource::Weight { file, tensor } = &g.source else {
                out.push(None);
                continue;
            };
            let bad = |m: String| PackageError::Manifest(format!("global `{}`: {m}", g.name));
            if !parsed.contains_key(file.as_str()) {
                let bytes = self
                    .files
                    .get(file)
                    .ok_or_else(|| bad(format!("weights file `{file}` is missing")))?;
                let st = safetensors::SafeTensors::deserialize(bytes.as_slice())
                    .map_err(|e| bad(e.to_string()))?;
                parsed.insert(file.as_str(), st);
            }
            let view = parsed[file.as_str()]
                .tensor(tensor)
                .map_err(|e| bad(e.to_string()))?;
            let shape: Vec<usize> = view.shape().to_vec();
            let t =
                Tensor::from_bytes(g.dtype, &shape, view.data()).map_err(|e| bad(e.to_string()))?;
            out.push(Some(content_digest(&t)));
        }
        Ok(out)
    }

    /// The meta of package global `g`.
    pub fn global_meta(&self, g: usize) -> Option<TensorMeta> {
        let d = self.manifest.globals.get(g)?;
        Some(TensorMeta::new(
            d.dtype,
            d.shape.iter().map(|&x| x as usize).collect::<Vec<_>>(),
        ))
    }
}

/// The host bindings for a manifest: the values in `bindings` whose names are
/// host-bound globals of the package.
pub fn host_bindings(manifest: &Manifest, bindings: &BTreeMap<String, Tensor>) -> Bindings {
    let mut b = Bindings::new();
    for g in &manifest.globals {
        if matches!(g.source, GlobalSource::Bound) {
            if let Some(t) = bindings.get(&g.name) {
                b.insert(g.name.clone(), t.clone());
            }
        }
    }
    b
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// `.<name>.<what>-<pid>-<n>`, not existing in `parent`.
fn unique_name(parent: &Dir, name: &str, what: &str) -> io::Result<String> {
    for _ in 0..1000 {
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        let candidate = format!(".{name}.{what}-{}-{n}", std::process::id());
        match parent.symlink_metadata(&candidate) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(candidate),
            Err(e) => return Err(e),
            Ok(_) => continue,
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "no free temporary name",
    ))
}

/// `fsync` of a directory, so renames and new entries in it are durable.
/// (`cap-std` holds directories as `O_PATH` handles, which cannot be
/// synced, so the directory is opened again for reading.) File systems that
/// cannot sync directories (`EINVAL`) are accepted as they are.
fn sync_dir(dir: &Dir) -> io::Result<()> {
    let handle = dir.open_with(".", cap_std::fs::OpenOptions::new().read(true))?;
    match handle.sync_all() {
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::compile;
    use crate::trace::{function, Example};
    use ampoule_kernels::Registry;

    /// `x + w` for `f` and `h`, `x * w` for the others.
    fn entry(name: &str, w: &Tensor) -> CompiledEntry {
        let w = w.clone();
        let add = name == "f" || name == "h";
        let def = function(name, move |cx, x| {
            let w = cx.capture("w", &w)?;
            Ok(vec![if add {
                cx.add(x[0], w)?
            } else {
                cx.mul(x[0], w)?
            }])
        });
        let ex = [Example::meta(TensorMeta::new(DType::F32, [2]))];
        compile(&def, &ex, &Registry::standard(), &BTreeMap::new()).unwrap()
    }

    fn read_tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.insert(
                        p.strip_prefix(dir).unwrap().display().to_string(),
                        std::fs::read(&p).unwrap(),
                    );
                }
            }
        }
        out
    }

    #[test]
    fn globals_are_shared_by_name_and_content() {
        let w = Tensor::from_vec(&[2], vec![1.0f32, 2.0]).unwrap();
        let mut d = PackageDraft::new();
        d.add_entry(&entry("f", &w)).unwrap();
        d.add_entry(&entry("g", &w)).unwrap();
        assert_eq!(d.manifest().globals.len(), 1);
        assert_eq!(d.manifest().functions.len(), 2);
        let weights = d
            .manifest()
            .files
            .keys()
            .filter(|f| f.starts_with("weights/"))
            .count();
        assert_eq!(weights, 1);

        let other = Tensor::from_vec(&[2], vec![3.0f32, 4.0]).unwrap();
        let before = d.manifest().clone();
        let err = d.add_entry(&entry("h", &other)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "global `w` is already in the package as an embedded weight f32[2] with other contents (used by function `f`, function `g`), but function `h` needs an embedded weight f32[2] with these contents; capture different values under different names (e.g. `h.w`), or the same tensor if they are meant to share it"
        );
        assert_eq!(d.manifest(), &before, "a failed add changes nothing");
    }

    #[test]
    fn save_replaces_atomically_and_a_failed_write_leaves_the_old_package() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("pkg");
        let w = Tensor::from_vec(&[2], vec![1.0f32, 2.0]).unwrap();
        let mut d = PackageDraft::new();
        d.add_entry(&entry("f", &w)).unwrap();
        d.save(&dest).unwrap();
        let first = read_tree(&dest);
        assert!(first.contains_key(MANIFEST_FILE));
        assert_eq!(first.len(), 4, "{:?}", first.keys());

        d.add_entry(&entry("g", &w)).unwrap();
        let mut n = 0;
        let err = d
            .save_with(&dest, &mut |name| {
                n += 1;
                if n == 2 {
                    Err(io::Error::other(format!("injected failure writing {name}")))
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert!(err.to_string().contains("injected failure"), "{err}");
        assert_eq!(read_tree(&dest), first, "the old package is intact");
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["pkg"], "no temporary directory is left behind");

        d.save(&dest).unwrap();
        let second = read_tree(&dest);
        assert_eq!(second[MANIFEST_FILE], d.manifest_json());
        // `g`'s wrapper is `f`'s: the kernel table, not the wrapper, says add
        // or mul, and wrappers are stored by content.
        assert_eq!(second.len(), 4);
        assert_ne!(second[MANIFEST_FILE], first[MANIFEST_FILE]);
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["pkg"]);
    }

    #[test]
    fn save_refuses_to_replace_what_is_not_a_package() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("notes");
        std::fs::create_dir(&dest).unwrap();
        std::fs::write(dest.join("todo.txt"), "keep me").unwrap();
        let err = PackageDraft::new().save(&dest).unwrap_err();
        assert!(matches!(err, PackageError::NotAPackage { .. }), "{err}");
        assert_eq!(std::fs::read(dest.join("todo.txt")).unwrap(), b"keep me");
        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(matches!(
            PackageDraft::new().save(&file),
            Err(PackageError::NotAPackage { .. })
        ));
    }
}
