//! The package manifest: `manifest.json`, versioned, parsed with serde and
//! `deny_unknown_fields` everywhere.
//!
//! A manifest is untrusted data. Parsing only checks its syntax; everything
//! else (digests, indices, sizes, kernels, wrapper imports) is checked by
//! [`crate::verify`] before any Wasm is compiled.
//!
//! Layout of a package directory:
//!
//! ```text
//! manifest.json
//! manifest.sha256                 the manifest's own digest
//! wrappers/<sha256>.wasm          one per distinct wrapper
//! weights/<sha256>.safetensors    embedded globals
//! samples/<sha256>.safetensors    optional: entries' bundled samples
//! signature.json                  optional, not covered by `files`
//! ```
//!
//! Files are named by their SHA-256, and `files` lists every file with its
//! digest; the loader never follows a path from the manifest, it only looks
//! names up in `files` after checking they have one of the three forms above.
//!
//! **Samples.** An entry may bundle samples ([`EntryDecl::samples`]): one
//! safetensors file holding, for each input, a tensor `input.<name>` and,
//! for each declared output, `output.<name>`, the output the compiler's
//! reference kernels gave for those inputs, plus a [`Tolerance`] per
//! output. `ampoule test` replays them on a host's own kernels (the
//! portability check). Verification checks the file like any other: its
//! digest, that it parses, that its tensors are exactly the signature's, of
//! its dtypes and ranks, that the inputs pass the entry's guards, and that
//! every tolerance is finite and non-negative.
//!
//! A package holds any number of functions (`encode` and `decode`, `prefill`
//! and `step`), each with its own signature and entries; `globals` is
//! package-wide, so functions that use the same weight reference one global
//! and the weight is stored once.
//!
//! A function may update inputs in place ([`Signature::mutates`]): its
//! wrapper returns each updated input's new value after the declared
//! outputs, and the host writes them into the caller's tensors only once the
//! whole call succeeded.

use std::collections::BTreeMap;

use ampoule_kernels::{Attrs, DType};
use serde::{Deserialize, Serialize};

use crate::guard::{Guard, ScalarValue};

/// The manifest format this host writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// The manifest file's name inside a package.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The file holding the manifest's SHA-256 (lowercase hex), so corruption of
/// the manifest itself is an integrity error like any other file's. (It
/// catches accidents, not attackers, who can rewrite both: signatures over
/// the same digest do that.)
pub const MANIFEST_DIGEST_FILE: &str = "manifest.sha256";

/// The whole manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version; a newer one than [`FORMAT_VERSION`] is refused.
    pub format: u32,
    /// What the package needs from the host.
    pub abi: Abi,
    /// Every file in the package but the manifest (and signature), by name,
    /// with its SHA-256 in lowercase hex.
    pub files: BTreeMap<String, String>,
    /// Every value a wrapper may use that is not an input, package-wide so
    /// functions share weights.
    pub globals: Vec<GlobalDecl>,
    /// The package's functions, each with its entries.
    pub functions: Vec<FunctionDecl>,
}

/// The host ABI a package needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Abi {
    /// The WIT package of the wrapper contract, e.g. `ampoule:runtime@0.1.0`.
    pub wit: String,
    /// Every `name@version` kernel any entry uses, sorted.
    pub kernels: Vec<String>,
}

/// A global: a tensor every entry may reference by index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalDecl {
    /// The name it was captured under; host-bound globals are bound by it.
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub source: GlobalSource,
}

/// Where a global's value comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum GlobalSource {
    /// A tensor in one of the package's safetensors files.
    Weight { file: String, tensor: String },
    /// A value the embedding application binds by name at load.
    Bound,
}

/// One function of the package.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionDecl {
    pub name: String,
    pub signature: Signature,
    /// SHA-256 of the traced program; a compiler refuses to extend a
    /// function whose program changed (unless told otherwise).
    pub program_hash: String,
    pub entries: Vec<EntryDecl>,
}

/// Input and output names and kinds of a function, and the inputs it
/// updates in place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub inputs: Vec<ArgDecl>,
    pub outputs: Vec<ArgDecl>,
    /// The inputs the function updates in place (a cache, a running
    /// statistic), in the order the wrapper returns their new values: after
    /// the `outputs`, as hidden extra outputs. Absent in manifests of
    /// functions that update nothing (and in manifests older than it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mutates: Vec<MutationDecl>,
}

/// An input a function updates in place.
///
/// The wrapper returns the input's new value as a hidden output; after a
/// successful call the host writes it into the caller's tensor
/// (`Package::call_mut`). Verification checks that `input` is in range,
/// appears once, and that `kind` has the input's dtype and rank; each call
/// checks that the new value has exactly the caller's tensor's shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MutationDecl {
    /// Index of the updated input in `inputs`.
    pub input: u32,
    /// What the wrapper returns for it: the input's dtype and rank.
    pub kind: ArgKind,
}

impl Signature {
    /// The names of the inputs the function updates in place, in record
    /// order (`?` for an index out of range, which verification refuses).
    pub fn mutated_names(&self) -> Vec<&str> {
        self.mutates
            .iter()
            .map(|m| {
                self.inputs
                    .get(m.input as usize)
                    .map_or("?", |a| a.name.as_str())
            })
            .collect()
    }
}

/// One input or output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgDecl {
    pub name: String,
    pub kind: ArgKind,
}

/// What an input or output is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ArgKind {
    /// A tensor of this dtype and rank.
    Tensor { dtype: DType, rank: u32 },
    /// A scalar, passed as a rank-0 tensor of this dtype.
    Scalar { dtype: DType },
}

impl ArgKind {
    pub fn dtype(&self) -> DType {
        match self {
            ArgKind::Tensor { dtype, .. } | ArgKind::Scalar { dtype } => *dtype,
        }
    }

    pub fn rank(&self) -> u32 {
        match self {
            ArgKind::Tensor { rank, .. } => *rank,
            ArgKind::Scalar { .. } => 0,
        }
    }
}

impl std::fmt::Display for ArgKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArgKind::Tensor { dtype, rank } => write!(f, "a rank-{rank} {} tensor", dtype.name()),
            ArgKind::Scalar { dtype } => write!(f, "a {} scalar", dtype.name()),
        }
    }
}

/// One compiled variant of a function.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryDecl {
    /// Checked in order before the wrapper runs; all must hold.
    pub guards: Vec<Guard>,
    /// SHA-256 of the wrapper component, stored as `wrappers/<digest>.wasm`.
    pub wrapper: String,
    /// The kernel table: `launch(k, ..)` runs `kernels[k]`.
    pub kernels: Vec<KernelUse>,
    /// The globals table: the wrapper's global `i` is package global
    /// `globals[i]`.
    pub globals: Vec<u32>,
    /// The memory plan: buffers the host allocates once per instance and
    /// hands to `init`.
    pub buffers: Vec<BufferDecl>,
    /// For an entry with graph breaks: the values each traced path read at
    /// its breaks, in order. The wrapper checks them itself; the host never
    /// interprets this list. A compiler re-traces these paths (no input data
    /// needed) to grow the entry when a call misses at a break.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<Vec<ScalarValue>>,
    /// For an entry with symbolic dims: each symbol's input dims and why it
    /// is symbolic, for `inspect`. The guards are what the host enforces;
    /// it never interprets this list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub symbols: Vec<SymbolNote>,
    /// Sample inputs and reference outputs for this entry, if bundled
    /// (`ampoule compile --bundle-samples`). Absent in manifests without
    /// samples (and in manifests older than it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<SamplesDecl>,
}

/// An entry's bundled samples (see the module doc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplesDecl {
    /// The samples file, `samples/<sha256>.safetensors`, listed in `files`.
    pub file: String,
    /// Per declared output, by name: how far a replay may stray from the
    /// recorded output.
    pub tolerances: BTreeMap<String, Tolerance>,
}

/// How close a replayed output must be to its recorded value, elementwise:
/// `|got - want| <= atol + rtol * |want|` (NumPy's `allclose`). NaN matches
/// only NaN, and an infinity only the same infinity. Zero and zero is exact.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tolerance {
    pub rtol: f64,
    pub atol: f64,
}

impl Tolerance {
    /// Exact equality (integer and bool outputs).
    pub const EXACT: Tolerance = Tolerance {
        rtol: 0.0,
        atol: 0.0,
    };
}

/// One symbolic dim of an entry (see [`EntryDecl::symbols`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SymbolNote {
    /// `[input, axis]` pairs that are this symbol; the first defines it.
    pub dims: Vec<[u32; 2]>,
    pub why: String,
}

/// A kernel-table row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelUse {
    /// `name@version`.
    pub kernel: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attrs: Attrs,
}

/// A planned buffer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BufferDecl {
    pub dtype: DType,
    pub shape: Vec<u64>,
}

impl Manifest {
    /// Parses manifest bytes. Only syntax is checked here, including that
    /// no JSON object repeats a key (see `UniqueKeys`).
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, serde_json::Error> {
        serde_json::from_slice::<UniqueKeys>(bytes)?;
        serde_json::from_slice(bytes)
    }

    /// Deterministic, human-readable JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// The function named `name`.
    pub fn function(&self, name: &str) -> Option<&FunctionDecl> {
        self.functions.iter().find(|f| f.name == name)
    }
}

/// The file name of a wrapper blob.
pub fn wrapper_file(digest: &str) -> String {
    format!("wrappers/{digest}.wasm")
}

/// The file name of a weights blob.
pub fn weights_file(digest: &str) -> String {
    format!("weights/{digest}.safetensors")
}

/// The file name of a samples blob.
pub fn samples_file(digest: &str) -> String {
    format!("samples/{digest}.safetensors")
}

/// The tensor name of input `name` in a samples file.
pub fn sample_input_tensor(name: &str) -> String {
    format!("input.{name}")
}

/// The tensor name of output `name` in a samples file.
pub fn sample_output_tensor(name: &str) -> String {
    format!("output.{name}")
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Any JSON value in which no object repeats a key; deserializing it only
/// checks that.
///
/// JSON parsers disagree about duplicate keys: serde_json keeps the last one
/// for maps, others keep the first. A manifest with `"op": "mul", "op":
/// "add"` in a kernel's attributes, or a file listed twice in `files`, would
/// mean one thing to the tool that reviewed or signed it and another to this
/// host (the CouchDB CVE-2017-12635 class). Struct fields already refuse
/// duplicates, but maps (`files`, kernel `attrs`) do not, so the whole
/// document is checked once before it is parsed for real.
struct UniqueKeys;

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueKeys {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
            }
            map.next_value::<UniqueKeys>()?;
            seen.insert(key);
        }
        Ok(UniqueKeys)
    }
}

#[cfg(test)]
mod tests {
    use super::UniqueKeys;

    #[test]
    fn a_repeated_key_is_refused_at_any_depth() {
        let err = serde_json::from_str::<UniqueKeys>(r#"{"a": [{"op": "mul", "op": "add"}]}"#)
            .err()
            .expect("duplicate refused");
        assert!(err.to_string().starts_with("duplicate key `op`"), "{err}");
        // The same key in sibling objects is not a duplicate.
        serde_json::from_str::<UniqueKeys>(
            r#"[{"op": 1}, {"op": 2, "x": {"op": 3}}, null, 1.5, -2]"#,
        )
        .unwrap();
    }
}
