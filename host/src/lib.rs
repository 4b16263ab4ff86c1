//! ampoule-host: open, verify and run ampoule packages.
//!
//! This crate is what an application embeds to serve packages. It never
//! depends on the compiler. The pieces:
//!
//! - [`manifest`]: the package format;
//! - [`guard`]: guards, their evaluation and their explanations;
//! - [`verify`]: full verification of a package, before any Wasm is compiled;
//! - [`package`]: reading package files through `cap-std`, resolving globals,
//!   selecting entries, serving calls;
//! - [`sandbox`]: the wasmtime engine, the wrapper contract from `wit/`, slot
//!   handles, launch checks and limits;
//! - [`cache`]: the local compiled-artifact cache;
//! - [`trust`]: package signatures (ed25519 over the manifest digest) and
//!   the trust policy `open` and `verify` apply.
//!
//! Thread safety: [`Host`] and [`Package`] are `Send + Sync` and cheap to
//! share; a `Package` serves calls from many threads at once, each call on
//! an instance of its own taken from a per-entry pool.

#![deny(unsafe_code)]

pub mod cache;
pub mod error;
pub mod guard;
pub mod manifest;
pub mod package;
pub mod sandbox;
pub mod trust;
pub mod verify;

pub use ampoule_kernels::{DType, Impl, Registry, Tensor, TensorMeta};
pub use error::{Error, Problem};
pub use guard::{EntryMiss, Guard, ScalarValue};
pub use manifest::Manifest;
pub use package::{Bindings, Package, PackageFiles, Stats};
pub use sandbox::{Host, HostConfig, Limits};
pub use trust::{PublicKey, SecretKey, SignatureStatus, TrustPolicy};
pub use verify::FileBytes;
