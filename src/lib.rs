//! ampoule: compile tensor programs ahead of time into packages, and run
//! packages, including ones written by strangers, inside a WebAssembly
//! sandbox on the host's own trusted native kernels.
//!
//! This facade re-exports the crates that do the work:
//! - [`host`]: open, verify and run packages (embeddable, no compiler);
//! - [`compiler`]: the tracing frontend, IR, lowering and package writer;
//! - [`kernels`]: tensors and the native kernel registry;
//! - [`guest`]: the wrapper code generator.
//!
//! It also holds what the CLI, examples, tests and benchmarks share: `.npy`
//! input/output ([`npy`]) and the built-in demo model ([`demo`]).

#![forbid(unsafe_code)]

pub use ampoule_compiler as compiler;
pub use ampoule_guest as guest;
pub use ampoule_host as host;
pub use ampoule_kernels as kernels;

pub mod demo;
pub mod npy;
