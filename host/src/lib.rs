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
//! - [`samples`]: replaying an entry's bundled samples on this host's
//!   kernels against their tolerances (`ampoule test`);
//! - [`cache`]: the local compiled-artifact cache;
//! - [`trust`]: package signatures (ed25519 over the manifest digest) and
//!   the trust policy `open` and `verify` apply.
//!
//! # Thread safety
//!
//! - [`Host`] is `Send + Sync` and cheap to clone (an `Arc`): clones share
//!   the engine, the compiled-wrapper table, the artifact cache and the
//!   counters. Open packages from any thread.
//! - [`Package`] is `Send + Sync`: one opened package serves calls from many
//!   threads at once (`call` takes `&self`). Each call runs on a wasmtime
//!   instance of its own, taken from a per-entry pool and returned only if
//!   it did not trap; no instance is ever used by two calls at once. Wrappers
//!   are compiled once per entry, on first use, behind a `OnceLock`.
//!   `tests/stress.rs` checks this under load.
//! - [`Manifest`] and its parts, [`Guard`], [`Bindings`], [`PackageFiles`],
//!   [`Stats`], [`Limits`], [`HostConfig`], [`TrustPolicy`], the key types
//!   and the error types are `Send + Sync` data.
//! - [`sandbox::InstanceState`] belongs to one wasmtime `Store`, and so to
//!   one call at a time; it is public only for the bindings' sake.
//!
//! These bounds are checked at compile time at the end of this file.

#![deny(unsafe_code)]

pub mod cache;
pub mod error;
pub mod guard;
pub mod manifest;
pub mod package;
pub mod samples;
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

// The thread-safety contract in the crate doc, checked by the compiler.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Host>();
    send_sync::<Package>();
    send_sync::<HostConfig>();
    send_sync::<Limits>();
    send_sync::<Manifest>();
    send_sync::<Guard>();
    send_sync::<EntryMiss>();
    send_sync::<Bindings>();
    send_sync::<PackageFiles>();
    send_sync::<Stats>();
    send_sync::<TrustPolicy>();
    send_sync::<PublicKey>();
    send_sync::<SecretKey>();
    send_sync::<Error>();
    send_sync::<cache::ArtifactCache>();
    send_sync::<sandbox::InstanceState>();
};
