//! Package `open` on a mutated package directory.
//!
//! The input is a list of structured mutations (via `arbitrary`) applied to
//! the fixture package (`fixtures/quickstart.ampoule`): flip, set, insert
//! or truncate bytes of a file, remove or rename a file, add an extra file
//! or directory, a symlink (inside or out of the package), a FIFO. A
//! final fix-up step can then make the tampering consistent, so the loader
//! gets past the integrity checks into verification: rename each changed
//! blob to its new digest and rewrite the manifest's references to it,
//! and/or rewrite `manifest.sha256`. The directory is written to a fresh
//! temporary directory, then `Host::verify` and `Host::open` run on it;
//! half the inputs start from a signed package opened by a host that
//! trusts its key (so `signature.json` is parsed and checked too);
//! if it opens, every function is called once per entry with inputs
//! matching its signature and the entry's guards.
//!
//! Failures: any panic or hang (a FIFO must not block the loader); a call
//! that succeeds with outputs not matching the signature.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use ampoule_host::trust::{manifest_digest, Signatures};
use ampoule_host::{Host, Impl, SecretKey, TrustPolicy};

use ampoule_host::manifest::{sha256_hex, Manifest, MANIFEST_DIGEST_FILE, MANIFEST_FILE};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Name {
    /// An existing file of the package.
    Existing(u8),
    Signature,
    /// `wrappers/<digest>.wasm` or `weights/<digest>.safetensors` with a
    /// digest made of this byte.
    Blob(bool, u8),
    Literal(Lit),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Lit {
    Extra,
    WrappersSub,
    Dotfile,
    Unicode,
    Long,
    WrappersDir,
    WeightsDir,
    Manifest,
    ManifestDigest,
}

#[derive(Arbitrary, Debug)]
enum LinkTarget {
    Existing(u8),
    Parent,
    Absolute,
    Itself,
}

#[derive(Arbitrary, Debug)]
enum Mutation {
    FlipBit { file: u8, at: u32, bit: u8 },
    SetByte { file: u8, at: u32, value: u8 },
    Insert { file: u8, at: u32, bytes: Vec<u8> },
    Truncate { file: u8, len: u32 },
    Remove { file: u8 },
    Rename { file: u8, to: Name },
    Add { name: Name, bytes: Vec<u8> },
    Dir { name: Name },
    Symlink { name: Name, target: LinkTarget },
    Fifo { name: Name },
    /// Replaces a JSON number in the manifest.
    Number { nth: u8, value: i64 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    mutations: Vec<Mutation>,
    /// Rename changed blobs to their new digests (and rewrite the
    /// manifest's references).
    redigest_blobs: bool,
    /// Rewrite `manifest.sha256` for the final manifest.
    fix_manifest_digest: bool,
    /// Start from a package signed by the key the host trusts (and, with
    /// `fix_manifest_digest`, sign the final manifest again).
    signed: bool,
}

/// The key the signed variant of the fixture is signed with, and the host
/// that trusts it (so `signature.json` is parsed and checked).
fn signing() -> &'static (SecretKey, Host) {
    static S: OnceLock<(SecretKey, Host)> = OnceLock::new();
    S.get_or_init(|| {
        let key = SecretKey::from_bytes(&[7; 32]);
        let mut config = ampoule_fuzz::config(Impl::Optimized);
        config.trust = TrustPolicy::trusting([key.public_key()]);
        (key, Host::new(config).expect("host"))
    })
}

fn signature_json(manifest: &[u8]) -> Vec<u8> {
    let mut s = Signatures::default();
    s.sign(&signing().0, &manifest_digest(manifest));
    s.to_json()
}

enum Entry {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    Fifo,
}

fn literal(l: Lit) -> String {
    match l {
        Lit::Extra => "extra.bin".into(),
        Lit::WrappersSub => "wrappers/sub/x.wasm".into(),
        Lit::Dotfile => "weights/.hidden".into(),
        Lit::Unicode => "wrappers/\u{e9}\u{1f600}.wasm".into(),
        Lit::Long => format!("wrappers/{}.wasm", "a".repeat(240)),
        Lit::WrappersDir => "wrappers".into(),
        Lit::WeightsDir => "weights".into(),
        Lit::Manifest => MANIFEST_FILE.into(),
        Lit::ManifestDigest => MANIFEST_DIGEST_FILE.into(),
    }
}

fn name(n: &Name, names: &[String]) -> String {
    match n {
        Name::Existing(i) if !names.is_empty() => names[*i as usize % names.len()].clone(),
        Name::Existing(_) | Name::Signature => "signature.json".into(),
        Name::Blob(w, b) => {
            let d = format!("{b:02x}").repeat(32);
            if *w { format!("wrappers/{d}.wasm") } else { format!("weights/{d}.safetensors") }
        }
        Name::Literal(l) => literal(*l),
    }
}

fn pick<'a>(files: &'a BTreeMap<String, Entry>, i: u8) -> Option<String> {
    let names: Vec<&String> = files.keys().collect();
    (!names.is_empty()).then(|| names[i as usize % names.len()].clone())
}

/// Replaces the `nth` JSON number of `text` with `value`.
fn replace_number(text: &[u8], nth: u8, value: i64) -> Vec<u8> {
    let mut starts = Vec::new();
    let mut i = 0;
    let mut in_str = false;
    while i < text.len() {
        match text[i] {
            b'"' if i == 0 || text[i - 1] != b'\\' => in_str = !in_str,
            b'0'..=b'9' | b'-' if !in_str => {
                let s = i;
                while i < text.len() && matches!(text[i], b'0'..=b'9' | b'-' | b'.' | b'e' | b'E' | b'+') {
                    i += 1;
                }
                starts.push((s, i));
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    let Some(&(s, e)) = starts.get(nth as usize % starts.len().max(1)) else { return text.to_vec() };
    let mut out = text[..s].to_vec();
    out.extend_from_slice(value.to_string().as_bytes());
    out.extend_from_slice(&text[e..]);
    out
}

fn apply(files: &mut BTreeMap<String, Entry>, m: &Mutation) {
    let names: Vec<String> = files.keys().cloned().collect();
    let file_mut = |files: &mut BTreeMap<String, Entry>, i: u8| -> Option<String> {
        let n = pick(files, i)?;
        matches!(files.get(&n), Some(Entry::File(_))).then_some(n)
    };
    match m {
        Mutation::FlipBit { file, at, bit } => {
            if let Some(n) = file_mut(files, *file) {
                if let Some(Entry::File(b)) = files.get_mut(&n) {
                    if !b.is_empty() {
                        let k = *at as usize % b.len();
                        b[k] ^= 1 << (bit % 8);
                    }
                }
            }
        }
        Mutation::SetByte { file, at, value } => {
            if let Some(n) = file_mut(files, *file) {
                if let Some(Entry::File(b)) = files.get_mut(&n) {
                    if !b.is_empty() {
                        let k = *at as usize % b.len();
                        b[k] = *value;
                    }
                }
            }
        }
        Mutation::Insert { file, at, bytes } => {
            if let Some(n) = file_mut(files, *file) {
                if let Some(Entry::File(b)) = files.get_mut(&n) {
                    let k = *at as usize % (b.len() + 1);
                    b.splice(k..k, bytes.iter().copied().take(4096));
                }
            }
        }
        Mutation::Truncate { file, len } => {
            if let Some(n) = file_mut(files, *file) {
                if let Some(Entry::File(b)) = files.get_mut(&n) {
                    let l = *len as usize % (b.len() + 1);
                    b.truncate(l);
                }
            }
        }
        Mutation::Remove { file } => {
            if let Some(n) = pick(files, *file) {
                files.remove(&n);
            }
        }
        Mutation::Rename { file, to } => {
            if let Some(n) = pick(files, *file) {
                if let Some(e) = files.remove(&n) {
                    files.insert(name(to, &names), e);
                }
            }
        }
        Mutation::Add { name: n, bytes } => {
            files.insert(name(n, &names), Entry::File(bytes.iter().copied().take(4096).collect()));
        }
        Mutation::Dir { name: n } => {
            files.insert(name(n, &names), Entry::Dir);
        }
        Mutation::Symlink { name: n, target } => {
            let t = match target {
                LinkTarget::Existing(i) if !names.is_empty() => {
                    // Relative to the link's own directory.
                    let t = &names[*i as usize % names.len()];
                    let link = name(n, &names);
                    if link.contains('/') { format!("../{t}") } else { t.clone() }
                }
                LinkTarget::Existing(_) | LinkTarget::Parent => "../..".into(),
                LinkTarget::Absolute => "/etc/hostname".into(),
                LinkTarget::Itself => name(n, &names).rsplit('/').next().unwrap_or("x").to_string(),
            };
            files.insert(name(n, &names), Entry::Symlink(t));
        }
        Mutation::Fifo { name: n } => {
            files.insert(name(n, &names), Entry::Fifo);
        }
        Mutation::Number { nth, value } => {
            if let Some(Entry::File(b)) = files.get_mut(MANIFEST_FILE) {
                *b = replace_number(b, *nth, *value);
            }
        }
    }
}

fn write(dir: &Path, files: &BTreeMap<String, Entry>) {
    // Directories first, so files under a path that is also a file fail
    // quietly instead of being created.
    for (n, e) in files {
        let path = dir.join(n);
        if let Some(p) = path.parent() {
            let _ = std::fs::create_dir_all(p);
        }
        let _ = match e {
            Entry::File(b) => std::fs::write(&path, b),
            Entry::Dir => std::fs::create_dir_all(&path),
            Entry::Symlink(t) => std::os::unix::fs::symlink(t, &path),
            Entry::Fifo => mkfifo(&path),
        };
    }
}

fn mkfifo(path: &Path) -> std::io::Result<()> {
    let status = std::process::Command::new("mkfifo").arg(path).status()?;
    if status.success() { Ok(()) } else { Err(std::io::Error::other("mkfifo failed")) }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = Input::arbitrary_take_rest(arbitrary::Unstructured::new(data)) else { return };
    let (manifest, blobs) = ampoule_fuzz::fixture();
    let mut files: BTreeMap<String, Entry> = BTreeMap::new();
    files.insert(MANIFEST_FILE.into(), Entry::File(manifest.clone()));
    files.insert(MANIFEST_DIGEST_FILE.into(), Entry::File(sha256_hex(manifest).into_bytes()));
    for (n, b) in blobs {
        files.insert(n.clone(), Entry::File(b.clone()));
    }
    if input.signed {
        files.insert("signature.json".into(), Entry::File(signature_json(manifest)));
    }
    for m in input.mutations.iter().take(8) {
        apply(&mut files, m);
    }
    if input.redigest_blobs {
        // Blobs whose content no longer matches their name get the name of
        // their new digest, and the manifest follows.
        let mut renames = Vec::new();
        for (n, e) in &files {
            let Entry::File(b) = e else { continue };
            for (dir, ext) in [("wrappers/", ".wasm"), ("weights/", ".safetensors")] {
                if let Some(old) = n.strip_prefix(dir).and_then(|r| r.strip_suffix(ext)) {
                    let new = sha256_hex(b);
                    if old != new {
                        renames.push((n.clone(), format!("{dir}{new}{ext}"), old.to_string(), new));
                    }
                }
            }
        }
        for (from, to, old, new) in renames {
            if let Some(e) = files.remove(&from) {
                files.insert(to, e);
            }
            if let Some(Entry::File(m)) = files.get_mut(MANIFEST_FILE) {
                let text = String::from_utf8_lossy(m).replace(&old, &new);
                *m = text.into_bytes();
            }
        }
    }
    if input.fix_manifest_digest {
        if let Some(Entry::File(m)) = files.get(MANIFEST_FILE) {
            let d = sha256_hex(m);
            let sig = input.signed.then(|| signature_json(m));
            files.insert(MANIFEST_DIGEST_FILE.into(), Entry::File(d.into_bytes()));
            if let Some(sig) = sig {
                files.insert("signature.json".into(), Entry::File(sig));
            }
        }
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("p.ampoule");
    std::fs::create_dir(&dir).expect("package dir");
    write(&dir, &files);

    let host = if input.signed { &signing().1 } else { ampoule_fuzz::host() };
    let _ = host.verify(&dir).map_err(|e| e.to_string());
    let bindings = match &files.get(MANIFEST_FILE) {
        Some(Entry::File(m)) => Manifest::from_json(m).map(|m| ampoule_fuzz::bindings_for(&m)).unwrap_or_default(),
        _ => Default::default(),
    };
    match host.open(&dir, bindings) {
        Ok(pkg) => ampoule_fuzz::exercise(&pkg),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
