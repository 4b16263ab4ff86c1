//! ampoule-compiler: compiles tensor programs into ampoule packages.
//!
//! The pieces, in pipeline order:
//!
//! - [`trace`]: the Rust tracing frontend ([`function`], [`Tracer`],
//!   [`Traced`]); [`onnx`]: the ONNX importer (a model becomes a
//!   [`FunctionDef`]); [`hash`]: the program hash of a trace;
//! - [`ir`]: the typed graph IR; [`verify`]: its verifier, run after tracing
//!   and after every pass; [`interp`]: its reference interpreter (the oracle
//!   compiled entries are tested against);
//! - [`passes`]: constant folding, dead code elimination, output
//!   materialization, constants to globals, memory planning;
//! - [`lower`]: IR to a wrapper [`Program`](ampoule_guest::Program), kernel
//!   table, globals table and buffers; [`guards`]: guard synthesis and the
//!   signature;
//! - [`compile`]: the pipeline for one entry, ending in the wrapper's Wasm
//!   (emitted by `ampoule-guest`);
//! - [`package`]: the package writer ([`PackageDraft`]): shared globals,
//!   deterministic bytes, atomic save through `cap-std`, load to extend;
//! - [`function`]: [`Compiler`] and [`CompiledFunction`], torch.compile's
//!   package workflow: look up an entry, compile on a miss, save, resume.
//!
//! ```no_run
//! use ampoule_compiler::{function, CompiledFunction};
//! use ampoule_host::{Host, HostConfig};
//! use ampoule_kernels::Tensor;
//!
//! # fn main() -> anyhow::Result<()> {
//! let w = Tensor::from_vec(&[3, 2], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])?;
//! let mlp = function("mlp", move |cx, x| {
//!     let w = cx.capture("w", &w)?;
//!     let h = cx.linear(x[0], w, None)?;
//!     Ok(vec![cx.relu(h)?])
//! })
//! .inputs(["x"])
//! .outputs(["y"]);
//! let mut f = CompiledFunction::new(Host::new(HostConfig::default())?, mlp)?;
//! let y = f.call(&[Tensor::from_vec(&[1, 3], vec![1.0f32, 0.0, -1.0])?])?;
//! assert_eq!(f.compile_count(), 1);
//! f.save("mlp.ampoule")?;
//! # let _ = y;
//! # Ok(())
//! # }
//! ```
//!
//! # Thread safety
//!
//! - [`FunctionDef`] (its body is `Fn + Send + Sync`), [`Trace`], [`Graph`],
//!   [`CompiledEntry`] and [`PackageDraft`] are `Send + Sync` plain data.
//! - [`Compiler`] and [`CompiledFunction`] are `Send + Sync`, but `call`
//!   takes `&mut self` because a miss compiles and extends the package: share
//!   one behind a `Mutex`, or serve concurrent calls from the opened
//!   [`Package`](ampoule_host::Package) (`Compiler::package`), which needs no
//!   lock.
//! - [`Tracer`] lives only for the duration of one trace, on one thread.
//!
//! These bounds are checked at compile time below.

#![forbid(unsafe_code)]

pub mod breaks;
pub mod compile;
pub mod dynamic;
pub mod function;
pub mod guards;
pub mod hash;
pub mod interp;
pub mod ir;
pub mod lower;
pub mod onnx;
pub mod package;
pub mod passes;
pub mod trace;
pub mod verify;

pub use compile::{CompileError, CompiledEntry};
pub use function::{CompiledFunction, Compiler, CompilerBuilder, Error, Options};
pub use ir::Graph;
pub use package::{PackageDraft, PackageError};
pub use trace::{function, Example, FunctionDef, Trace, TraceError, Traced, Tracer};

// The thread-safety contract in the crate doc, checked by the compiler.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<FunctionDef>();
    send_sync::<Trace>();
    send_sync::<Graph>();
    send_sync::<CompiledEntry>();
    send_sync::<PackageDraft>();
    send_sync::<Compiler>();
    send_sync::<CompiledFunction>();
    send_sync::<Error>();
};
