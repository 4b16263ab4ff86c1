//! Package signatures and the host's trust policy.
//!
//! A signature is ed25519 (`ed25519-dalek`, checked with `verify_strict`)
//! over the package's manifest digest. The signed message is
//! [`SIGNED_MESSAGE_PREFIX`] followed by the 32 raw bytes of the SHA-256 of
//! `manifest.json`; since the manifest lists every other file's digest, one
//! signature covers the whole package, and the prefix keeps a package
//! signature from meaning anything else. Signatures live outside the
//! manifest, in the package's top-level [`SIGNATURE_FILE`]:
//!
//! ```json
//! {"format": 1, "signatures": [{"key": "<64 hex digits>", "signature": "<128 hex digits>"}]}
//! ```
//!
//! A [`TrustPolicy`] (part of [`crate::HostConfig`]) decides what
//! `Host::open`, `Host::open_files` and `Host::verify` accept. It is applied
//! as soon as the manifest's digest is known: before the manifest is parsed,
//! before any other file's digest is checked, before any Wasm is compiled or
//! any weight resolved. The rules:
//!
//! - The permissive default (no trusted key, no signature required) does not
//!   consult signatures at all: a package loads iff its digests and its
//!   verification pass.
//! - Otherwise `signature.json` is read, if present. It must be well formed
//!   ([`Error::MalformedSignature`]), every signature in it must verify
//!   against the manifest digest ([`Error::BadSignature`]: the package was
//!   changed after it was signed, or the file is corrupt), and at least one
//!   must be by a trusted key ([`Error::UntrustedSigner`]).
//! - With `require_signature`, a package with no signature is refused
//!   ([`Error::Unsigned`]). Without it, an unsigned package loads.
//! - A policy that requires a signature but trusts no key refuses every
//!   package (it fails closed rather than accepting any signer).
//!
//! `signature.json` is untrusted input: its size and number of entries are
//! capped, unknown fields are refused, every field's length is checked, and
//! no content can cause a panic.
//!
//! Signing ([`Host::sign`]) and key handling ([`SecretKey`], [`PublicKey`])
//! live here too, so a tool that signs packages needs only this crate.

use std::io::{Read, Write};
use std::path::Path;

use cap_std::fs::{Dir, OpenOptions};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::sandbox::Host;

/// The signature file's name inside a package directory.
pub const SIGNATURE_FILE: &str = "signature.json";

/// The `signature.json` format this host writes and reads.
pub const SIGNATURE_FORMAT: u32 = 1;

/// What every package signature signs, followed by the manifest's 32-byte
/// SHA-256.
pub const SIGNED_MESSAGE_PREFIX: &[u8] = b"ampoule package signature v1\0";

/// Largest `signature.json` read.
pub const MAX_SIGNATURE_FILE_BYTES: u64 = 64 << 10;

/// Most signatures one package may carry.
pub const MAX_SIGNATURES: usize = 32;

/// Why a key could not be made or parsed.
///
/// Thread safety: plain data, `Send + Sync`.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{what} is not hex: {message}")]
    Hex { what: &'static str, message: String },
    #[error("{what} has {actual} bytes; an ed25519 {what} has 32")]
    Length { what: &'static str, actual: usize },
    #[error("{key} is not a usable ed25519 public key (not a curve point, or of small order)")]
    InvalidPublicKey { key: String },
    #[error("cannot get randomness from the operating system to make a key: {0}")]
    Random(String),
}

/// An ed25519 public key: what a [`TrustPolicy`] trusts and what a signature
/// names. Displays (and parses) as 64 lowercase hex digits.
///
/// Thread safety: `Copy`, `Send + Sync`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses 32 bytes; refuses non-points and weak (small-order) keys,
    /// which `verify_strict` would reject anyway.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<PublicKey, KeyError> {
        match VerifyingKey::from_bytes(bytes) {
            Ok(k) if !k.is_weak() => Ok(PublicKey(k)),
            _ => Err(KeyError::InvalidPublicKey {
                key: hex::encode(bytes),
            }),
        }
    }

    /// Parses 64 hex digits (surrounding whitespace is ignored).
    pub fn from_hex(s: &str) -> Result<PublicKey, KeyError> {
        PublicKey::from_bytes(&hex32("public key", s)?)
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        PublicKey::from_hex(s)
    }
}

/// An ed25519 secret key (the 32-byte seed), for signing packages. Its bytes
/// are zeroed when it is dropped; `Debug` shows only the public key.
///
/// Thread safety: `Send + Sync`.
#[derive(Clone)]
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        let key = SecretKey(SigningKey::from_bytes(&seed));
        seed.fill(0);
        Ok(key)
    }

    pub fn from_bytes(seed: &[u8; 32]) -> SecretKey {
        SecretKey(SigningKey::from_bytes(seed))
    }

    /// Parses 64 hex digits (surrounding whitespace is ignored).
    pub fn from_hex(s: &str) -> Result<SecretKey, KeyError> {
        let mut seed = hex32("secret key", s)?;
        let key = SecretKey::from_bytes(&seed);
        seed.fill(0);
        Ok(key)
    }

    /// The seed as 64 hex digits, for writing a key file.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_bytes())
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs the package whose manifest has SHA-256 `manifest_digest`.
    pub fn sign_digest(&self, manifest_digest: &[u8; 32]) -> [u8; 64] {
        self.0.sign(&signed_message(manifest_digest)).to_bytes()
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(public {})", self.public_key())
    }
}

// The thread-safety promises above, checked.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<PublicKey>();
    send_sync::<SecretKey>();
    send_sync::<TrustPolicy>();
    send_sync::<Signatures>();
    send_sync::<SignatureStatus>();
    send_sync::<SignOutcome>();
    send_sync::<KeyError>();
};

fn hex32(what: &'static str, s: &str) -> Result<[u8; 32], KeyError> {
    let bytes = hex::decode(s.trim()).map_err(|e| KeyError::Hex {
        what,
        message: e.to_string(),
    })?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length {
        what,
        actual: bytes.len(),
    })
}

fn signed_message(manifest_digest: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNED_MESSAGE_PREFIX.len() + 32);
    m.extend_from_slice(SIGNED_MESSAGE_PREFIX);
    m.extend_from_slice(manifest_digest);
    m
}

/// The SHA-256 of a manifest's bytes: what a signature signs.
pub fn manifest_digest(manifest_json: &[u8]) -> [u8; 32] {
    Sha256::digest(manifest_json).into()
}

/// Which packages a host accepts, by who signed them. The default is
/// permissive: no key trusted, no signature required, signatures not
/// consulted. See the module doc for the rules.
///
/// Thread safety: `Send + Sync`; cloned into [`crate::HostConfig`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    /// Keys whose signatures this host accepts.
    pub trusted: Vec<PublicKey>,
    /// Refuse packages without a signature.
    pub require_signature: bool,
}

impl TrustPolicy {
    /// The default: signatures are not consulted.
    pub fn permissive() -> TrustPolicy {
        TrustPolicy::default()
    }

    /// Accepts unsigned packages and packages signed by one of `keys`.
    pub fn trusting(keys: impl IntoIterator<Item = PublicKey>) -> TrustPolicy {
        TrustPolicy {
            trusted: keys.into_iter().collect(),
            require_signature: false,
        }
    }

    /// Accepts only packages signed by one of `keys`.
    pub fn requiring(keys: impl IntoIterator<Item = PublicKey>) -> TrustPolicy {
        TrustPolicy {
            trusted: keys.into_iter().collect(),
            require_signature: true,
        }
    }

    /// Whether signatures are consulted at all.
    pub fn is_permissive(&self) -> bool {
        self.trusted.is_empty() && !self.require_signature
    }

    /// Applies the policy to the package whose manifest has SHA-256
    /// `manifest_digest` and whose `signature.json` holds `signature_json`
    /// (`None`: there is none).
    pub fn check(
        &self,
        manifest_digest: &[u8; 32],
        signature_json: Option<&[u8]>,
    ) -> Result<(), Error> {
        if self.is_permissive() {
            return Ok(());
        }
        let signers = match signature_json {
            None => Vec::new(),
            Some(bytes) => Signatures::parse(bytes)?.verify(manifest_digest)?,
        };
        if signers.is_empty() {
            return if self.require_signature {
                Err(Error::Unsigned)
            } else {
                Ok(())
            };
        }
        if signers.iter().any(|k| self.trusted.contains(k)) {
            Ok(())
        } else {
            Err(Error::UntrustedSigner {
                keys: signers.iter().map(PublicKey::to_hex).collect(),
            })
        }
    }
}

/// What a package's signatures say about it, whatever the policy: for
/// tools that report it (`ampoule inspect`).
///
/// Thread safety: plain data, `Send + Sync`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureStatus {
    /// No `signature.json`, or one with no signatures.
    Unsigned,
    /// Every signature verifies against the manifest digest; these keys
    /// signed it.
    Signed { signers: Vec<PublicKey> },
    /// `signature.json` is present but malformed, or a signature in it does
    /// not verify: the error a policy that consults it would give.
    Invalid { reason: String },
}

impl SignatureStatus {
    /// The status of the package whose manifest has SHA-256
    /// `manifest_digest` and whose `signature.json` holds `signature_json`.
    pub fn of(manifest_digest: &[u8; 32], signature_json: Option<&[u8]>) -> SignatureStatus {
        let Some(bytes) = signature_json else {
            return SignatureStatus::Unsigned;
        };
        match Signatures::parse(bytes).and_then(|s| s.verify(manifest_digest)) {
            Ok(signers) if signers.is_empty() => SignatureStatus::Unsigned,
            Ok(signers) => SignatureStatus::Signed { signers },
            Err(e) => SignatureStatus::Invalid {
                reason: e.to_string(),
            },
        }
    }
}

/// `signature.json` on disk.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    format: u32,
    signatures: Vec<SignatureEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureEntry {
    key: String,
    signature: String,
}

/// The parsed contents of a `signature.json`: each signature with the key
/// it names. Keys are kept as bytes, since a key that is not a valid point
/// is a signature that does not verify, not a syntax error.
///
/// Thread safety: plain data, `Send + Sync`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signatures {
    entries: Vec<([u8; 32], [u8; 64])>,
}

impl Signatures {
    /// Parses `signature.json`. Refuses (as [`Error::MalformedSignature`])
    /// a file over [`MAX_SIGNATURE_FILE_BYTES`], another format, unknown
    /// fields, more than [`MAX_SIGNATURES`] entries, fields that are not hex
    /// of the right length, and a key named twice.
    pub fn parse(bytes: &[u8]) -> Result<Signatures, Error> {
        let bad = |message: String| Error::MalformedSignature { message };
        if bytes.len() as u64 > MAX_SIGNATURE_FILE_BYTES {
            return Err(bad(format!(
                "it is larger than {MAX_SIGNATURE_FILE_BYTES} bytes"
            )));
        }
        #[derive(Deserialize)]
        struct FormatOnly {
            format: u32,
        }
        if let Ok(v) = serde_json::from_slice::<FormatOnly>(bytes) {
            if v.format != SIGNATURE_FORMAT {
                return Err(bad(format!(
                    "format {} is not supported (this host reads format {SIGNATURE_FORMAT}{})",
                    v.format,
                    if v.format > SIGNATURE_FORMAT {
                        "; upgrade ampoule"
                    } else {
                        ""
                    }
                )));
            }
        }
        let file: SignatureFile = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if file.signatures.len() > MAX_SIGNATURES {
            return Err(bad(format!(
                "it holds {} signatures; at most {MAX_SIGNATURES} are allowed",
                file.signatures.len()
            )));
        }
        let mut entries: Vec<([u8; 32], [u8; 64])> = Vec::with_capacity(file.signatures.len());
        for (i, e) in file.signatures.iter().enumerate() {
            let key =
                decode_hex::<32>(&e.key).map_err(|m| bad(format!("signatures[{i}].key: {m}")))?;
            let sig = decode_hex::<64>(&e.signature)
                .map_err(|m| bad(format!("signatures[{i}].signature: {m}")))?;
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(bad(format!("signatures[{i}]: key {} signs twice", e.key)));
            }
            entries.push((key, sig));
        }
        Ok(Signatures { entries })
    }

    /// Serializes to `signature.json` (pretty JSON, one trailing newline).
    pub fn to_json(&self) -> Vec<u8> {
        let file = SignatureFile {
            format: SIGNATURE_FORMAT,
            signatures: self
                .entries
                .iter()
                .map(|(k, s)| SignatureEntry {
                    key: hex::encode(k),
                    signature: hex::encode(s),
                })
                .collect(),
        };
        // Serializing plain strings and integers cannot fail.
        let mut out = serde_json::to_vec_pretty(&file).unwrap_or_default();
        out.push(b'\n');
        out
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The keys named, as hex, in file order.
    pub fn keys(&self) -> Vec<String> {
        self.entries.iter().map(|(k, _)| hex::encode(k)).collect()
    }

    /// Checks every signature against `manifest_digest` with
    /// `verify_strict`; returns the signers, in file order, or
    /// [`Error::BadSignature`] naming the first key whose signature does
    /// not verify.
    pub fn verify(&self, manifest_digest: &[u8; 32]) -> Result<Vec<PublicKey>, Error> {
        let message = signed_message(manifest_digest);
        self.entries
            .iter()
            .map(|(k, s)| {
                verify_one(k, s, &message).ok_or_else(|| Error::BadSignature {
                    key: hex::encode(k),
                })
            })
            .collect()
    }

    /// Adds (or replaces) `key`'s signature of `manifest_digest`, and drops
    /// every other signature that does not verify against it (signatures of
    /// an earlier version of the package). Returns the dropped keys, as hex.
    pub fn sign(&mut self, key: &SecretKey, manifest_digest: &[u8; 32]) -> Vec<String> {
        let message = signed_message(manifest_digest);
        let me = key.public_key().to_bytes();
        let mut dropped = Vec::new();
        self.entries.retain(|(k, s)| {
            if *k == me {
                false
            } else if verify_one(k, s, &message).is_some() {
                true
            } else {
                dropped.push(hex::encode(k));
                false
            }
        });
        if self.entries.len() >= MAX_SIGNATURES {
            // Keep the newest; the oldest other signature gives way.
            let excess = self.entries.len() + 1 - MAX_SIGNATURES;
            dropped.extend(self.entries.drain(..excess).map(|(k, _)| hex::encode(k)));
        }
        self.entries.push((me, key.sign_digest(manifest_digest)));
        dropped
    }
}

fn verify_one(key: &[u8; 32], sig: &[u8; 64], message: &[u8]) -> Option<PublicKey> {
    let key = PublicKey::from_bytes(key).ok()?;
    key.0
        .verify_strict(message, &Signature::from_bytes(sig))
        .ok()?;
    Some(key)
}

fn decode_hex<const N: usize>(s: &str) -> Result<[u8; N], String> {
    if s.len() != 2 * N {
        return Err(format!(
            "expected {} hex digits, found {} characters",
            2 * N,
            s.chars().count()
        ));
    }
    let bytes = hex::decode(s).map_err(|e| format!("not hex: {e}"))?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| format!("expected {N} bytes"))
}

/// Reads `signature.json` from a package directory, if it is there: a
/// regular file (no symlink), at most [`MAX_SIGNATURE_FILE_BYTES`] + 1 bytes
/// read (so an oversized file is reported by [`Signatures::parse`], and only
/// when a policy consults it).
pub(crate) fn read_signature_file(dir: &Dir) -> Result<Option<Vec<u8>>, Error> {
    let io = |e: std::io::Error| Error::Io {
        file: SIGNATURE_FILE.into(),
        message: e.to_string(),
    };
    match dir.symlink_metadata(SIGNATURE_FILE) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
        Ok(md) if !md.is_file() => {
            return Err(Error::MalformedSignature {
                message: "it is not a regular file".into(),
            })
        }
        Ok(_) => {}
    }
    let mut buf = Vec::new();
    dir.open(SIGNATURE_FILE)
        .map_err(io)?
        .take(MAX_SIGNATURE_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    Ok(Some(buf))
}

/// What [`Host::sign`] did.
///
/// Thread safety: plain data, `Send + Sync`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignOutcome {
    /// The signed manifest digest, lowercase hex ([`crate::Package::digest`]).
    pub digest: String,
    /// The key that signed.
    pub signer: PublicKey,
    /// Every key whose signature the package now carries, in file order
    /// (the signer last).
    pub signers: Vec<PublicKey>,
    /// Keys whose earlier signatures no longer verified (the package had
    /// changed since) and were removed, as hex.
    pub dropped: Vec<String>,
}

impl Host {
    /// Signs the package directory `dir` with `key`: reads it as `open`
    /// does, verifies it fully (its current signatures are not consulted),
    /// then writes `signature.json` with `key`'s signature of the manifest
    /// digest added (replacing an earlier one by the same key; other keys'
    /// signatures that still verify are kept). The file is replaced
    /// atomically: written to a temporary file in `dir`, synced, renamed.
    pub fn sign(&self, dir: impl AsRef<Path>, key: &SecretKey) -> Result<SignOutcome, Error> {
        let path = dir.as_ref();
        let _span = tracing::info_span!("package.sign", dir = %path.display()).entered();
        let (manifest_bytes, files, existing) =
            crate::package::read_dir(path, self.config().limits.max_package_bytes)?;
        self.verify_files(&manifest_bytes, &files)?;
        let digest = manifest_digest(&manifest_bytes);
        let mut signatures = match &existing {
            None => Signatures::default(),
            Some(bytes) => Signatures::parse(bytes).map_err(|e| match e {
                Error::MalformedSignature { message } => Error::MalformedSignature {
                    message: format!("{message} (it was not changed; delete it to sign afresh)"),
                },
                e => e,
            })?,
        };
        let dropped = signatures.sign(key, &digest);
        let signers = signatures.verify(&digest)?;
        let d =
            Dir::open_ambient_dir(path, cap_std::ambient_authority()).map_err(|e| Error::Io {
                file: path.display().to_string(),
                message: e.to_string(),
            })?;
        write_atomically(&d, SIGNATURE_FILE, &signatures.to_json())?;
        tracing::info!(signer = %key.public_key(), dropped = dropped.len(), "package signed");
        Ok(SignOutcome {
            digest: hex::encode(digest),
            signer: key.public_key(),
            signers,
            dropped,
        })
    }

    /// What the signatures of the package directory `dir` say, whatever
    /// this host's policy. Reads only the manifest (checked against
    /// `manifest.sha256`) and `signature.json`; it does not verify the
    /// package.
    pub fn signature_status(&self, dir: impl AsRef<Path>) -> Result<SignatureStatus, Error> {
        let (manifest_bytes, signature) =
            crate::package::read_manifest_and_signature(dir.as_ref())?;
        Ok(SignatureStatus::of(
            &manifest_digest(&manifest_bytes),
            signature.as_deref(),
        ))
    }
}

/// Writes `name` in `dir` by writing a new temporary file beside it,
/// syncing it, and renaming it over `name`, so a reader sees the old file or
/// the new one, never a torn one.
fn write_atomically(dir: &Dir, name: &str, bytes: &[u8]) -> Result<(), Error> {
    let io = |file: &str, e: std::io::Error| Error::Io {
        file: file.into(),
        message: e.to_string(),
    };
    let tmp = format!(".{name}.{}.tmp", std::process::id());
    let write = || -> std::io::Result<()> {
        let mut f = dir.open_with(&tmp, OpenOptions::new().write(true).create_new(true))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        dir.rename(&tmp, dir, name)?;
        // Make the rename durable; some platforms cannot sync a directory.
        match dir
            .open_with(".", OpenOptions::new().read(true))
            .and_then(|d| d.sync_all())
        {
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
            r => r,
        }
    };
    write().map_err(|e| {
        let _ = dir.remove_file(&tmp);
        io(name, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_bytes(&[n; 32])
    }

    const DIGEST: [u8; 32] = [7; 32];

    #[test]
    fn keys_round_trip_through_hex() {
        let k = key(1);
        let back = SecretKey::from_hex(&format!("  {}\n", k.to_hex())).unwrap();
        assert_eq!(back.public_key(), k.public_key());
        let p = k.public_key();
        assert_eq!(PublicKey::from_hex(&p.to_hex()).unwrap(), p);
        assert_eq!(p.to_string().len(), 64);
        assert!(!format!("{k:?}").contains(&k.to_hex()));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(matches!(
            PublicKey::from_hex("zz"),
            Err(KeyError::Hex { .. })
        ));
        assert!(matches!(
            PublicKey::from_hex("abcd"),
            Err(KeyError::Length { actual: 2, .. })
        ));
        assert!(matches!(
            SecretKey::from_hex(&"00".repeat(33)),
            Err(KeyError::Length { actual: 33, .. })
        ));
        // The identity point is of small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            PublicKey::from_bytes(&identity),
            Err(KeyError::InvalidPublicKey { .. })
        ));
        // y = 2 is not on the curve.
        let mut off = [0u8; 32];
        off[0] = 2;
        assert!(matches!(
            PublicKey::from_bytes(&off),
            Err(KeyError::InvalidPublicKey { .. })
        ));
    }

    #[test]
    fn generated_keys_differ() {
        let a = SecretKey::generate().unwrap();
        let b = SecretKey::generate().unwrap();
        assert_ne!(a.public_key(), b.public_key());
    }

    #[test]
    fn signatures_round_trip_and_verify() {
        let mut s = Signatures::default();
        assert!(s.sign(&key(1), &DIGEST).is_empty());
        assert!(s.sign(&key(2), &DIGEST).is_empty());
        let json = s.to_json();
        let parsed = Signatures::parse(&json).unwrap();
        assert_eq!(parsed, s);
        assert_eq!(
            parsed.verify(&DIGEST).unwrap(),
            vec![key(1).public_key(), key(2).public_key()]
        );
        match parsed.verify(&[8; 32]) {
            Err(Error::BadSignature { key: k }) => assert_eq!(k, key(1).public_key().to_hex()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resigning_replaces_own_entry_and_drops_stale_ones() {
        let mut s = Signatures::default();
        s.sign(&key(1), &DIGEST);
        s.sign(&key(2), &DIGEST);
        // Re-signing the same digest by key 1 replaces its entry.
        assert!(s.sign(&key(1), &DIGEST).is_empty());
        assert_eq!(s.len(), 2);
        // The package changed: key 2's signature is stale and goes.
        let dropped = s.sign(&key(1), &[9; 32]);
        assert_eq!(dropped, vec![key(2).public_key().to_hex()]);
        assert_eq!(s.verify(&[9; 32]).unwrap(), vec![key(1).public_key()]);
    }

    #[test]
    fn the_message_is_domain_separated() {
        let k = key(3);
        let sig = k.sign_digest(&DIGEST);
        // A signature over the bare digest is not a package signature.
        let bare = k.0.sign(&DIGEST).to_bytes();
        assert_ne!(sig, bare);
        let mut s = Signatures::default();
        s.entries.push((k.public_key().to_bytes(), bare));
        assert!(matches!(s.verify(&DIGEST), Err(Error::BadSignature { .. })));
    }

    #[test]
    fn malformed_files_are_refused_without_panics() {
        let k = key(1).public_key().to_hex();
        let sig = hex::encode(key(1).sign_digest(&DIGEST));
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "EOF"),
            ("\"x\"".into(), "invalid type"),
            ("{\"format\":2,\"signatures\":[]}".into(), "upgrade ampoule"),
            ("{\"format\":0,\"signatures\":[]}".into(), "format 0"),
            ("{\"format\":1}".into(), "missing field"),
            (
                "{\"format\":1,\"signatures\":[],\"extra\":1}".into(),
                "unknown field",
            ),
            (
                format!("{{\"format\":1,\"signatures\":[{{\"key\":\"{k}\",\"signature\":\"{sig}\",\"x\":1}}]}}"),
                "unknown field",
            ),
            (
                format!("{{\"format\":1,\"signatures\":[{{\"key\":\"{}\",\"signature\":\"{sig}\"}}]}}", &k[..62]),
                "expected 64 hex digits",
            ),
            (
                format!("{{\"format\":1,\"signatures\":[{{\"key\":\"{k}\",\"signature\":\"{}\"}}]}}", "zz".repeat(64)),
                "not hex",
            ),
            (
                // Multi-byte characters of the right byte length.
                format!("{{\"format\":1,\"signatures\":[{{\"key\":\"{}\",\"signature\":\"{sig}\"}}]}}", "é".repeat(32)),
                "not hex",
            ),
            (
                format!("{{\"format\":1,\"signatures\":[{{\"key\":\"{k}\",\"signature\":\"{sig}\"}},{{\"key\":\"{k}\",\"signature\":\"{sig}\"}}]}}"),
                "signs twice",
            ),
            (" ".repeat(MAX_SIGNATURE_FILE_BYTES as usize + 1), "larger than"),
        ];
        for (text, expect) in cases {
            match Signatures::parse(text.as_bytes()) {
                Err(Error::MalformedSignature { message }) => {
                    assert!(message.contains(expect), "{message:?} lacks {expect:?}")
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
        let many: Vec<String> = (0..=MAX_SIGNATURES)
            .map(|i| {
                format!(
                    "{{\"key\":\"{}\",\"signature\":\"{sig}\"}}",
                    key(i as u8 + 10).public_key().to_hex()
                )
            })
            .collect();
        let text = format!("{{\"format\":1,\"signatures\":[{}]}}", many.join(","));
        assert!(matches!(
            Signatures::parse(text.as_bytes()),
            Err(Error::MalformedSignature { .. })
        ));
    }

    #[test]
    fn an_invalid_key_in_the_file_is_a_bad_signature() {
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let s = Signatures {
            entries: vec![(identity, [0; 64])],
        };
        assert!(matches!(s.verify(&DIGEST), Err(Error::BadSignature { .. })));
    }

    #[test]
    fn policy_rules() {
        let signed_by = |keys: &[u8]| {
            let mut s = Signatures::default();
            for &k in keys {
                s.sign(&key(k), &DIGEST);
            }
            s.to_json()
        };
        let empty = Signatures::default().to_json();
        let trusted = || vec![key(1).public_key()];
        let permissive = TrustPolicy::permissive();
        let trusting = TrustPolicy::trusting(trusted());
        let requiring = TrustPolicy::requiring(trusted());
        let nobody = TrustPolicy {
            trusted: vec![],
            require_signature: true,
        };
        let by1 = signed_by(&[1]);
        let by2 = signed_by(&[2]);
        let by21 = signed_by(&[2, 1]);
        let garbage = b"not json".to_vec();

        // Permissive: never consulted, even garbage.
        for f in [None, Some(&by1), Some(&by2), Some(&garbage)] {
            permissive.check(&DIGEST, f.map(|v| v.as_slice())).unwrap();
        }
        // Trusting, not requiring.
        trusting.check(&DIGEST, None).unwrap();
        trusting.check(&DIGEST, Some(&empty)).unwrap();
        trusting.check(&DIGEST, Some(&by1)).unwrap();
        trusting.check(&DIGEST, Some(&by21)).unwrap();
        assert!(matches!(
            trusting.check(&DIGEST, Some(&by2)),
            Err(Error::UntrustedSigner { .. })
        ));
        assert!(matches!(
            trusting.check(&[0; 32], Some(&by1)),
            Err(Error::BadSignature { .. })
        ));
        assert!(matches!(
            trusting.check(&DIGEST, Some(&garbage)),
            Err(Error::MalformedSignature { .. })
        ));
        // Requiring.
        assert!(matches!(
            requiring.check(&DIGEST, None),
            Err(Error::Unsigned)
        ));
        assert!(matches!(
            requiring.check(&DIGEST, Some(&empty)),
            Err(Error::Unsigned)
        ));
        requiring.check(&DIGEST, Some(&by1)).unwrap();
        match requiring.check(&DIGEST, Some(&by2)) {
            Err(Error::UntrustedSigner { keys }) => {
                assert_eq!(keys, vec![key(2).public_key().to_hex()])
            }
            other => panic!("{other:?}"),
        }
        // Requiring with nobody trusted refuses everything.
        assert!(matches!(nobody.check(&DIGEST, None), Err(Error::Unsigned)));
        assert!(matches!(
            nobody.check(&DIGEST, Some(&by1)),
            Err(Error::UntrustedSigner { .. })
        ));
    }

    #[test]
    fn status_reports_without_failing() {
        let mut s = Signatures::default();
        s.sign(&key(1), &DIGEST);
        let json = s.to_json();
        assert_eq!(
            SignatureStatus::of(&DIGEST, None),
            SignatureStatus::Unsigned
        );
        assert_eq!(
            SignatureStatus::of(&DIGEST, Some(&json)),
            SignatureStatus::Signed {
                signers: vec![key(1).public_key()]
            }
        );
        assert!(matches!(
            SignatureStatus::of(&[1; 32], Some(&json)),
            SignatureStatus::Invalid { .. }
        ));
        assert!(matches!(
            SignatureStatus::of(&DIGEST, Some(b"{")),
            SignatureStatus::Invalid { .. }
        ));
    }
}
