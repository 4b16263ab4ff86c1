//! Generates wrapper components for ampoule packages.
//!
//! A lowered [`Program`] is verified ([`verify()`]), emitted as a core Wasm
//! module with `wasm-encoder` (no Wasm toolchain involved; see [`emit_core`]
//! for the module's ABI and [`Layout`] for its memory), then componentized
//! with `wit-component` against the contract in `wit/runtime.wit`, which is
//! compiled into this crate ([`componentize`]). Output bytes are a pure
//! function of the program: the same program gives the same component, byte
//! for byte.
//!
//! No input reaches a panic: every problem in a program is an [`EmitError`].
//!
//! # Thread safety
//!
//! Everything here is plain data or a pure function: [`Program`], [`Step`],
//! [`Layout`] and the error types are `Send + Sync` (checked at compile time
//! below), and [`emit`] may run on many threads at once.

#![forbid(unsafe_code)]

mod component;
mod emit;
mod error;
mod layout;
mod program;
mod verify;

pub use component::{componentize, componentize_with_wit, WORLD};
pub use emit::{emit, emit_core};
pub use error::{BoxError, EmitError};
pub use layout::{Layout, PAGE};
pub use program::{Cond, Dim, Program, Reg, Step, Term};
pub use verify::{
    verify, Phase, VerifyError, MAX_DIMS, MAX_FUNCTION_BYTES, MAX_NESTING, MAX_OPERANDS,
    MAX_OUTPUTS, MAX_REGISTERS, MAX_TERMS,
};

/// The contract, as WIT source. The single copy lives in `wit/`.
pub const WIT: &str = include_str!("../../wit/runtime.wit");
/// The WIT package the contract defines.
pub const WIT_PACKAGE: &str = "ampoule:runtime@0.1.0";
/// The interface wrappers import; the only import a wrapper may have.
pub const HOST_INTERFACE: &str = "ampoule:runtime/host@0.1.0";

// The thread-safety contract in the crate doc, checked by the compiler.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Program>();
    send_sync::<Step>();
    send_sync::<Layout>();
    send_sync::<EmitError>();
    send_sync::<VerifyError>();
};
