//! Compiled functions: torch.compile's package workflow.
//!
//! A [`Compiler`] holds a package being built ([`PackageDraft`]) and the host
//! [`Package`] opened from it, plus the Rust definitions ([`FunctionDef`]) of
//! the functions it may compile. [`Compiler::call`]:
//!
//! 1. looks up an existing entry through the host (`Package::call`: guards,
//!    then the sandboxed wrapper);
//! 2. on a guard miss (or a function with no entries yet), if the function is
//!    defined here, traces and compiles a new entry for these inputs, adds it
//!    to the draft, reopens the package and calls again;
//! 3. on a miss at a graph break (`ampoule_host::Error::BreakMiss`: the
//!    entry's wrapper read a value none of its paths was traced for), traces
//!    the path these inputs take and replaces the entry by one with that
//!    continuation merged in ([`crate::breaks`]); the entry keeps its place
//!    and its recorded paths;
//! 4. without a definition (load-only), returns the host's typed error
//!    (`GuardMiss` with every entry's explanation, or `BreakMiss`).
//!
//! [`Compiler::bundle_samples`] records sample inputs for an entry with the
//! outputs reference kernels give for them
//! ([`PackageDraft::set_samples`]), for `ampoule test` to replay on other
//! hosts.
//!
//! [`Compiler::save`] writes the package atomically; [`CompilerBuilder::open`]
//! resumes one. Resuming checks each defined function that the package
//! already has: the definition is traced again with the inputs the package's
//! first entry was compiled for (read back from its guards), and its
//! signature and program hash must equal the package's, else
//! [`Error::Mismatch`]. The hash check can be turned off with
//! [`Options::allow_program_change`]; the signature check cannot (entries of
//! one function share one signature). The recorded program hash stays the
//! one of the function's first entry.
//!
//! A package may hold many functions, each with its own entries: entries are
//! looked up per function, so equal input shapes never collide. Define them
//! all on one [`CompilerBuilder`] (`.function(encode).function(decode)`);
//! weights they capture under the same name with the same contents are one
//! package global, stored once (see [`crate::package`]).
//!
//! A function that updates inputs in place ([`crate::Tracer::assign`]) is
//! called with [`Compiler::call_mut`] / [`CompiledFunction::call_mut`], which
//! compile on a miss like `call` and write the new values into the caller's
//! tensors once the call succeeded; `call` refuses it.
//!
//! Thread safety: a `Compiler` is `Send`; calls take `&mut self` because a
//! miss changes the package. For concurrent serving, share
//! [`Compiler::package`] (a `Package` is `Send + Sync`).

use std::collections::BTreeMap;
use std::path::Path;

use ampoule_host::guard::CallView;
use ampoule_host::manifest::Manifest;
use ampoule_host::{Guard, Host, Package, ScalarValue};
use ampoule_kernels::{Tensor, TensorMeta};

use crate::compile::{compile, compile_with, CompileError};
use crate::dynamic::DimSpec;
use crate::package::{fmt_signature, PackageDraft, PackageError, SampleOptions};
use crate::trace::{BreakSource, Example, FunctionDef};

/// Everything that can go wrong compiling, calling or saving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error(transparent)]
    Host(#[from] ampoule_host::Error),
    #[error(transparent)]
    Package(#[from] PackageError),
    /// A defined function does not match the package's function of the same
    /// name. `what` is `signature` or `program hash`.
    #[error("function `{function}`: the package's {what} is {expected}, but the definition gives {actual}; {}", mismatch_fix(.what))]
    Mismatch {
        function: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    /// The package's entries do not say which inputs to retrace with.
    #[error("function `{function}` cannot be checked against the package: {reason}; open with `Options::allow_program_change` to skip the check")]
    Unverifiable { function: String, reason: String },
    #[error("no function `{name}` is defined or in the package; known: {available}")]
    UnknownFunction { name: String, available: String },
}

fn mismatch_fix(what: &str) -> &'static str {
    if what == "program hash" {
        "the program changed since the package was compiled: compile into a new package, or allow it with `Options::allow_program_change`"
    } else {
        "use another function name or another package"
    }
}

/// Why a call missed, when this compiler compiles for it.
#[derive(Clone, Copy, Debug)]
enum Miss {
    /// No entry's guards hold (or the function has no entries).
    Guards,
    /// Entry `entry` stopped at a graph break whose value no path has seen.
    Break { entry: usize },
}

/// Options of a [`Compiler`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Resume a package even if a defined function's program hash differs
    /// from the package's (the old entries stay and keep serving).
    pub allow_program_change: bool,
    /// Turns automatic dynamic off: a miss caused by one dim alone compiles
    /// another static entry instead of one where that dim is a symbol.
    pub static_shapes: bool,
}

impl Options {
    pub fn allow_program_change(mut self) -> Self {
        self.allow_program_change = true;
        self
    }

    pub fn static_shapes(mut self) -> Self {
        self.static_shapes = true;
        self
    }
}

/// Sets up a [`Compiler`]: bindings, definitions and options, then
/// [`create`](CompilerBuilder::create) a new package or
/// [`open`](CompilerBuilder::open) an existing one.
pub struct CompilerBuilder {
    host: Host,
    bindings: BTreeMap<String, Tensor>,
    functions: Vec<FunctionDef>,
    options: Options,
}

impl CompilerBuilder {
    /// Binds the host-bound global `name` (see `Tracer::bound`).
    pub fn bind(mut self, name: impl Into<String>, value: Tensor) -> Self {
        self.bindings.insert(name.into(), value);
        self
    }

    /// Defines a function the compiler may compile on a miss.
    pub fn function(mut self, def: FunctionDef) -> Self {
        self.functions.push(def);
        self
    }

    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// Shorthand for `options(Options::default().allow_program_change())`.
    pub fn allow_program_change(mut self) -> Self {
        self.options.allow_program_change = true;
        self
    }

    /// A compiler over a new, empty package.
    pub fn create(self) -> Result<Compiler, Error> {
        let draft = PackageDraft::new();
        let package = draft.open(&self.host, &self.bindings)?;
        self.finish(draft, package)
    }

    /// A compiler resuming the package in `dir` (checked as the module doc
    /// says).
    pub fn open(self, dir: impl AsRef<Path>) -> Result<Compiler, Error> {
        let (draft, package) = PackageDraft::load(&self.host, dir, &self.bindings)?;
        self.finish(draft, package)
    }

    fn finish(self, draft: PackageDraft, package: Package) -> Result<Compiler, Error> {
        let mut c = Compiler {
            host: self.host,
            draft,
            package,
            bindings: self.bindings,
            functions: BTreeMap::new(),
            options: self.options,
            compiles: 0,
        };
        for def in self.functions {
            c.define(def)?;
        }
        Ok(c)
    }
}

/// A package being served and extended. See the module doc.
pub struct Compiler {
    host: Host,
    draft: PackageDraft,
    package: Package,
    bindings: BTreeMap<String, Tensor>,
    functions: BTreeMap<String, FunctionDef>,
    options: Options,
    compiles: usize,
}

impl Compiler {
    /// Starts setting up a compiler on `host`.
    pub fn builder(host: Host) -> CompilerBuilder {
        CompilerBuilder {
            host,
            bindings: BTreeMap::new(),
            functions: Vec::new(),
            options: Options::default(),
        }
    }

    /// Defines (or redefines) a function. If the package already has a
    /// function of that name, the definition is checked against it.
    pub fn define(&mut self, def: FunctionDef) -> Result<(), Error> {
        self.check_definition(&def)?;
        self.functions.insert(def.name().to_string(), def);
        Ok(())
    }

    /// Binds (or rebinds) a host-bound global and reopens the package.
    pub fn bind(&mut self, name: impl Into<String>, value: Tensor) -> Result<(), Error> {
        self.bindings.insert(name.into(), value);
        self.package = self.draft.open(&self.host, &self.bindings)?;
        Ok(())
    }

    fn check_definition(&self, def: &FunctionDef) -> Result<(), Error> {
        let Some(decl) = self.draft.manifest().function(def.name()) else {
            return Ok(());
        };
        let Some(first) = decl.entries.first() else {
            return Ok(());
        };
        let examples = match examples_from_guards(&first.guards) {
            Ok(e) => e,
            Err(_) if self.options.allow_program_change => return Ok(()),
            Err(reason) => {
                return Err(Error::Unverifiable {
                    function: def.name().to_string(),
                    reason,
                })
            }
        };
        // A function with graph breaks is re-traced along the first path
        // its first entry recorded (no input values are needed for that).
        let replay = first.paths.first().map_or(&[][..], Vec::as_slice);
        let source = BreakSource { data: None, replay };
        let trace = def
            .trace_with(
                &examples,
                &self.host.config().registry,
                &self.bindings,
                source,
            )
            .map_err(|source| CompileError::Trace {
                function: def.name().to_string(),
                source,
            })?;
        let signature = crate::guards::signature(&trace.graph);
        if signature != decl.signature {
            return Err(Error::Mismatch {
                function: def.name().to_string(),
                what: "signature",
                expected: fmt_signature(&decl.signature),
                actual: fmt_signature(&signature),
            });
        }
        if trace.program_hash != decl.program_hash && !self.options.allow_program_change {
            return Err(Error::Mismatch {
                function: def.name().to_string(),
                what: "program hash",
                expected: decl.program_hash.clone(),
                actual: trace.program_hash,
            });
        }
        Ok(())
    }

    /// Calls `function`, compiling a new entry on a miss if it is defined.
    /// A function that updates inputs in place is refused (the host's
    /// `BadInputs`): use [`Compiler::call_mut`].
    pub fn call(&mut self, function: &str, inputs: &[Tensor]) -> Result<Vec<Tensor>, Error> {
        let miss = match self.package.call(function, inputs) {
            Ok(out) => return Ok(out),
            Err(e) => self.compile_on(function, e)?,
        };
        self.compile_miss(function, inputs, miss)?;
        Ok(self.package.call(function, inputs)?)
    }

    /// Calls `function`, compiling a new entry on a miss if it is defined,
    /// and writes the new values of the inputs it updates in place
    /// (`Tracer::assign`) into `inputs` (see `Package::call_mut`: only if the
    /// call succeeded). For a function that updates nothing this is
    /// [`Compiler::call`].
    pub fn call_mut(
        &mut self,
        function: &str,
        inputs: &mut [Tensor],
    ) -> Result<Vec<Tensor>, Error> {
        let miss = match self.package.call_mut(function, inputs) {
            Ok(out) => return Ok(out),
            Err(e) => self.compile_on(function, e)?,
        };
        self.compile_miss(function, inputs, miss)?;
        Ok(self.package.call_mut(function, inputs)?)
    }

    /// Whether a failed call is a miss this compiler compiles for (`Ok`), or
    /// the error to return.
    fn compile_on(&self, function: &str, e: ampoule_host::Error) -> Result<Miss, Error> {
        let defined = self.functions.contains_key(function);
        match e {
            ampoule_host::Error::GuardMiss { .. } | ampoule_host::Error::UnknownFunction { .. }
                if defined =>
            {
                tracing::info!(function, reason = %e, "compiling a new entry");
                Ok(Miss::Guards)
            }
            ampoule_host::Error::BreakMiss { entry, .. } if defined => {
                tracing::info!(function, reason = %e, "growing the entry by a continuation");
                Ok(Miss::Break { entry })
            }
            e => Err(e.into()),
        }
    }

    /// Compiles for a call that missed: a new entry after a guard miss; after
    /// a miss at a graph break, the entry again with the path these inputs
    /// take merged in (it keeps its place in lookup order).
    fn compile_miss(&mut self, function: &str, inputs: &[Tensor], miss: Miss) -> Result<(), Error> {
        let examples: Vec<Example> = inputs.iter().map(Example::of).collect();
        let def = self
            .functions
            .get(function)
            .ok_or_else(|| Error::UnknownFunction {
                name: function.to_string(),
                available: self.known().join(", "),
            })?;
        let paths = match miss {
            Miss::Guards => Vec::new(),
            Miss::Break { entry } => self
                .draft
                .manifest()
                .function(function)
                .and_then(|f| f.entries.get(entry))
                .map(|e| e.paths.clone())
                .unwrap_or_default(),
        };
        let registry = &self.host.config().registry;
        let automatic = match miss {
            Miss::Guards => self.automatic_dims(function, inputs),
            Miss::Break { .. } => Vec::new(),
        };
        let compiled = match compile_with(
            def,
            &examples,
            Some(inputs),
            &paths,
            &automatic,
            registry,
            &self.bindings,
        ) {
            // Automatic dynamic is a guess: if the dim cannot be a symbol,
            // compile a static entry.
            Err(CompileError::Dynamic { source, .. }) if !automatic.is_empty() => {
                tracing::info!(function, reason = %source, "automatic dynamic failed; compiling static");
                compile_with(
                    def,
                    &examples,
                    Some(inputs),
                    &paths,
                    &[],
                    registry,
                    &self.bindings,
                )?
            }
            r => r?,
        };
        let mut draft = self.draft.clone();
        match miss {
            Miss::Guards => {
                draft.add_entry(&compiled)?;
            }
            Miss::Break { entry } => draft.replace_entry(entry, &compiled)?,
        }
        let package = draft.open(&self.host, &self.bindings)?;
        self.draft = draft;
        self.package = package;
        self.compiles += 1;
        Ok(())
    }

    /// Automatic dynamic: if some entry of `function` misses these inputs
    /// only because one input dim has another size, that dim (see the module
    /// doc).
    fn automatic_dims(&self, function: &str, inputs: &[Tensor]) -> Vec<DimSpec> {
        if self.options.static_shapes {
            return Vec::new();
        }
        let Some(decl) = self.draft.manifest().function(function) else {
            return Vec::new();
        };
        let views: Vec<&Tensor> = inputs.iter().collect();
        let call = CallView {
            names: None,
            inputs: &views,
        };
        for (ei, e) in decl.entries.iter().enumerate() {
            let mut failing = e
                .guards
                .iter()
                .filter(|g| g.is_input_guard() && g.check(&call).is_err());
            let Some(&Guard::Dim { input, axis, size }) = failing.next() else {
                continue;
            };
            if failing.any(
                |g| !matches!(g, Guard::Dim { input: i, axis: a, .. } if (*i, *a) == (input, axis)),
            ) {
                continue;
            }
            let name = decl
                .signature
                .inputs
                .get(input as usize)
                .map_or_else(|| format!("input {input}"), |a| a.name.clone());
            let actual = inputs
                .get(input as usize)
                .and_then(|t| t.shape().get(axis as usize))
                .copied()
                .unwrap_or(0);
            return vec![DimSpec {
                input,
                axis,
                min: 2,
                max: crate::dynamic::MAX_SIZE,
                why: format!(
                    "automatic: entry {ei} has {name}.shape[{axis}] == {size}, a call had {actual}"
                ),
            }];
        }
        Vec::new()
    }

    /// Compiles an entry of `function` for `examples` ahead of any call;
    /// returns its index among the function's entries.
    pub fn compile(&mut self, function: &str, examples: &[Example]) -> Result<usize, Error> {
        let def = self
            .functions
            .get(function)
            .ok_or_else(|| Error::UnknownFunction {
                name: function.to_string(),
                available: self.known().join(", "),
            })?;
        let entry = compile(def, examples, &self.host.config().registry, &self.bindings)?;
        let mut draft = self.draft.clone();
        let index = draft.add_entry(&entry)?;
        let package = draft.open(&self.host, &self.bindings)?;
        self.draft = draft;
        self.package = package;
        self.compiles += 1;
        Ok(index)
    }

    /// Bundles `inputs` as the samples of entry `entry` of `function`, with
    /// the outputs the entry gives for them on reference kernels (see
    /// [`PackageDraft::set_samples`]), and reopens the package.
    pub fn bundle_samples(
        &mut self,
        function: &str,
        entry: usize,
        inputs: &[Tensor],
        options: &SampleOptions,
    ) -> Result<(), Error> {
        let mut draft = self.draft.clone();
        draft.set_samples(&self.host, &self.bindings, function, entry, inputs, options)?;
        let package = draft.open(&self.host, &self.bindings)?;
        self.draft = draft;
        self.package = package;
        Ok(())
    }

    fn known(&self) -> Vec<String> {
        let mut names: Vec<String> = self.functions.keys().cloned().collect();
        for f in &self.draft.manifest().functions {
            if !names.contains(&f.name) {
                names.push(f.name.clone());
            }
        }
        names.iter().map(|n| format!("`{n}`")).collect()
    }

    /// How many entries this compiler compiled (not counting entries the
    /// package already had).
    pub fn compile_count(&self) -> usize {
        self.compiles
    }

    /// Saves the package to `dir` atomically.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), Error> {
        Ok(self.draft.save(dir)?)
    }

    /// The host package serving calls.
    pub fn package(&self) -> &Package {
        &self.package
    }

    pub fn manifest(&self) -> &Manifest {
        self.draft.manifest()
    }

    pub fn draft(&self) -> &PackageDraft {
        &self.draft
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    /// A handle to one function of this compiler.
    pub fn into_function(self, name: &str) -> Result<CompiledFunction, Error> {
        if !self.functions.contains_key(name) && self.draft.manifest().function(name).is_none() {
            return Err(Error::UnknownFunction {
                name: name.to_string(),
                available: self.known().join(", "),
            });
        }
        Ok(CompiledFunction {
            compiler: self,
            name: name.to_string(),
        })
    }
}

/// One function of a [`Compiler`], called like a function.
pub struct CompiledFunction {
    compiler: Compiler,
    name: String,
}

impl CompiledFunction {
    /// A new package holding only `def`.
    pub fn new(host: Host, def: FunctionDef) -> Result<CompiledFunction, Error> {
        let name = def.name().to_string();
        Compiler::builder(host)
            .function(def)
            .create()?
            .into_function(&name)
    }

    /// Resumes the package in `dir` with `def` attached.
    pub fn open(
        host: Host,
        dir: impl AsRef<Path>,
        def: FunctionDef,
        options: Options,
    ) -> Result<CompiledFunction, Error> {
        let name = def.name().to_string();
        Compiler::builder(host)
            .function(def)
            .options(options)
            .open(dir)?
            .into_function(&name)
    }

    /// Opens function `name` of the package in `dir` without a compiler
    /// attached: a miss is the host's `GuardMiss`.
    pub fn load(host: Host, dir: impl AsRef<Path>, name: &str) -> Result<CompiledFunction, Error> {
        Compiler::builder(host).open(dir)?.into_function(name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn call(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, Error> {
        self.compiler.call(&self.name, inputs)
    }

    /// Calls the function and writes the inputs it updates in place back
    /// into `inputs` ([`Compiler::call_mut`]).
    pub fn call_mut(&mut self, inputs: &mut [Tensor]) -> Result<Vec<Tensor>, Error> {
        self.compiler.call_mut(&self.name, inputs)
    }

    pub fn compile_count(&self) -> usize {
        self.compiler.compile_count()
    }

    pub fn save(&self, dir: impl AsRef<Path>) -> Result<(), Error> {
        self.compiler.save(dir)
    }

    pub fn compiler(&self) -> &Compiler {
        &self.compiler
    }

    pub fn compiler_mut(&mut self) -> &mut Compiler {
        &mut self.compiler
    }

    pub fn into_compiler(self) -> Compiler {
        self.compiler
    }
}

/// The examples an entry was compiled for, read back from its guards:
/// `InputCount`, then `Dtype`, `Rank`, every `Dim` and any `ScalarValue`.
pub fn examples_from_guards(guards: &[Guard]) -> Result<Vec<Example>, String> {
    let count = guards
        .iter()
        .find_map(|g| match g {
            Guard::InputCount { count } => Some(*count as usize),
            _ => None,
        })
        .ok_or("its first entry has no input-count guard")?;
    let mut dtype = vec![None; count];
    let mut rank = vec![None; count];
    let mut dims: Vec<BTreeMap<u32, u64>> = vec![BTreeMap::new(); count];
    let mut value: Vec<Option<ScalarValue>> = vec![None; count];
    let mut values: Vec<Option<Vec<ScalarValue>>> = vec![None; count];
    let slot = |i: u32| -> Result<usize, String> {
        let i = i as usize;
        if i < count {
            Ok(i)
        } else {
            Err(format!("a guard names input {i} of {count}"))
        }
    };
    for g in guards {
        match g {
            Guard::Dtype { input, dtype: d } => dtype[slot(*input)?] = Some(*d),
            Guard::Rank { input, rank: r } => rank[slot(*input)?] = Some(*r),
            Guard::Dim { input, axis, size } => {
                dims[slot(*input)?].insert(*axis, *size);
            }
            // A symbol: its smallest admitted size (with its modulus).
            Guard::DimRange {
                input, axis, min, ..
            } => {
                let modulo = guards.iter().find_map(|m| match m {
                    Guard::DimModulo {
                        input: i,
                        axis: a,
                        modulus,
                        remainder,
                    } if (i, a) == (input, axis) && *modulus > 0 => Some((*modulus, *remainder)),
                    _ => None,
                });
                // In u128: the values come from a package.
                let size = match modulo {
                    Some((m, r)) => {
                        let (min, m, r) = (
                            u128::from(*min),
                            u128::from(m),
                            u128::from(r) % u128::from(m),
                        );
                        u64::try_from(min + (r + m - min % m) % m).unwrap_or(u64::MAX)
                    }
                    None => *min,
                };
                dims[slot(*input)?].insert(*axis, size);
            }
            Guard::ScalarValue { input, value: v } => value[slot(*input)?] = Some(*v),
            Guard::InputValues { input, values: v } => values[slot(*input)?] = Some(v.clone()),
            _ => {}
        }
    }
    for g in guards {
        if let Guard::DimEq {
            input,
            axis,
            other,
            other_axis,
        } = g
        {
            let size = dims[slot(*other)?].get(other_axis).copied();
            if let Some(size) = size {
                dims[slot(*input)?].insert(*axis, size);
            }
        }
    }
    (0..count)
        .map(|i| {
            let d = dtype[i].ok_or_else(|| format!("input {i} has no dtype guard"))?;
            let r = rank[i].ok_or_else(|| format!("input {i} has no rank guard"))?;
            let shape = (0..r)
                .map(|a| {
                    dims[i]
                        .get(&a)
                        .and_then(|&s| usize::try_from(s).ok())
                        .ok_or_else(|| format!("input {i} has no guard on axis {a}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Example {
                meta: TensorMeta::new(d, shape),
                value: value[i],
                values: values[i].clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ampoule_kernels::DType;

    #[test]
    fn examples_round_trip_through_guards() {
        let mut g = crate::ir::Graph::new();
        g.add_input("x", TensorMeta::new(DType::F32, [4, 3]));
        g.add_input("k", TensorMeta::new(DType::I64, []));
        g.inputs[1].specialized = Some(ScalarValue::Int(7));
        let guards = crate::guards::input_guards(&g);
        let ex = examples_from_guards(&guards).unwrap();
        assert_eq!(
            ex,
            [
                Example {
                    meta: TensorMeta::new(DType::F32, [4, 3]),
                    value: None,
                    values: None,
                },
                Example {
                    meta: TensorMeta::new(DType::I64, []),
                    value: Some(ScalarValue::Int(7)),
                    values: None,
                },
            ]
        );
        let missing_dim: Vec<Guard> = guards
            .into_iter()
            .filter(|g| !matches!(g, Guard::Dim { axis: 1, .. }))
            .collect();
        assert_eq!(
            examples_from_guards(&missing_dim).unwrap_err(),
            "input 0 has no guard on axis 1"
        );
    }
}
