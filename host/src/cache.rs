//! The local compiled-artifact cache.
//!
//! Compiling a wrapper to native code takes milliseconds; deserializing a
//! cached compilation takes microseconds. Artifacts are keyed by the
//! wrapper's SHA-256 *and* the engine's compatibility hash (wasmtime
//! version, target, every codegen setting), so a change of either misses.
//!
//! Trust: the cache directory is the host's own (trusted, like the host
//! binary). Artifacts are only ever produced here, from wrappers that passed
//! verification; a precompiled artifact shipped inside a package is never
//! deserialized. Writes are atomic (temp file + rename); a corrupt or
//! foreign entry fails wasmtime's header checks and is recompiled.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::component::Component;
use wasmtime::Engine;

pub(crate) struct ArtifactCache {
    dir: PathBuf,
    engine: Engine,
    engine_key: String,
}

impl ArtifactCache {
    /// `$AMPOULE_CACHE_DIR`, else `$XDG_CACHE_HOME/ampoule`, else
    /// `$HOME/.cache/ampoule`. `AMPOULE_CACHE_DIR=off` disables the cache.
    pub fn default_dir() -> Option<PathBuf> {
        match std::env::var_os("AMPOULE_CACHE_DIR") {
            Some(v) if v == "off" => None,
            Some(v) => Some(PathBuf::from(v)),
            None => std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
                .map(|base| base.join("ampoule")),
        }
    }

    pub fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        ArtifactCache {
            dir,
            engine: engine.clone(),
            engine_key: format!("{:016x}", h.finish()),
        }
    }

    fn path(&self, digest: &str) -> Option<PathBuf> {
        // The digest was verified to be 64 hex chars; refuse anything else so
        // no name from a package can shape a path.
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(self.dir.join(format!("{digest}-{}.cwasm", self.engine_key)))
    }

    pub fn load(&self, digest: &str) -> Option<Component> {
        let path = self.path(digest)?;
        if !path.is_file() {
            return None;
        }
        // SAFETY: the file is in the host's own cache directory and was
        // written by `store` below from `Component::serialize` of a wrapper
        // this host compiled; its name binds it to the wrapper digest and the
        // engine configuration. wasmtime additionally checks the artifact's
        // header against this engine. The cache is trusted like the host
        // binary itself (see SECURITY.md).
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize_file(&self.engine, &path) };
        match loaded {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "ignoring unusable cache entry");
                None
            }
        }
    }

    pub fn store(&self, digest: &str, component: &Component) {
        let Some(path) = self.path(digest) else {
            return;
        };
        let result = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let bytes = component.serialize().map_err(std::io::Error::other)?;
            let tmp = tempfile_in(&self.dir)?;
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = result {
            tracing::debug!(dir = %self.dir.display(), error = %e, "cannot write compiled-artifact cache");
        }
    }
}

fn tempfile_in(dir: &Path) -> std::io::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    Ok(dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )))
}
