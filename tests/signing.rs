//! End-to-end tests of package signatures and the trust policy, on real
//! package directories and key files: keygen, sign, and `open`/`verify`
//! under the permissive default, a trusting policy and a requiring one; every
//! kind of bad package meets its own typed error; and the CLI's exit codes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ampoule::host::manifest::{sha256_hex, Manifest, MANIFEST_DIGEST_FILE, MANIFEST_FILE};
use ampoule::host::trust::SIGNATURE_FILE;
use ampoule::host::{
    Bindings, Error, Host, HostConfig, PackageFiles, PublicKey, SecretKey, SignatureStatus,
    TrustPolicy,
};
use common::*;

/// A host like `test_host`, under `trust`.
fn host_with(trust: TrustPolicy) -> Host {
    Host::new(HostConfig {
        trust,
        ..test_config()
    })
    .expect("host")
}

fn permissive() -> Host {
    host_with(TrustPolicy::permissive())
}

fn trusting(k: &SecretKey) -> Host {
    host_with(TrustPolicy::trusting([k.public_key()]))
}

fn requiring(k: &SecretKey) -> Host {
    host_with(TrustPolicy::requiring([k.public_key()]))
}

fn key(n: u8) -> SecretKey {
    SecretKey::from_bytes(&[n; 32])
}

/// A one-function package (`add`, f32[4]) in a fresh directory.
fn package(root: &Path) -> PathBuf {
    hand_package(root, &[HandFunction::add("add", 4)])
}

/// Opens `dir` on `host` and checks that `add` adds.
fn opens_and_adds(host: &Host, dir: &Path, function: &str) {
    let pkg = host
        .open(dir, Bindings::new())
        .unwrap_or_else(|e| panic!("open: {e}"));
    let a = f32s(&[4], vec![1.0, 2.0, 3.0, 4.0]);
    let b = f32s(&[4], vec![10.0, 20.0, 30.0, 40.0]);
    let y = pkg.call(function, &[a, b]).unwrap();
    assert_eq!(y[0].to_vec::<f32>().unwrap(), vec![11.0, 22.0, 33.0, 44.0]);
}

fn open_err(host: &Host, dir: &Path) -> Error {
    match host.open(dir, Bindings::new()) {
        Ok(_) => panic!("package `{}` opened, expected an error", dir.display()),
        Err(e) => e,
    }
}

/// Rewrites `manifest.json` through `edit` and rewrites `manifest.sha256`
/// to match, so every digest still verifies: only a signature can tell.
fn rewrite_manifest(dir: &Path, edit: impl FnOnce(&mut Manifest)) {
    let mut m = Manifest::from_json(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    edit(&mut m);
    let json = m.to_json();
    std::fs::write(dir.join(MANIFEST_FILE), &json).unwrap();
    std::fs::write(dir.join(MANIFEST_DIGEST_FILE), sha256_hex(&json)).unwrap();
}

fn wrapper_path(dir: &Path) -> PathBuf {
    let m = Manifest::from_json(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap();
    dir.join(m.files.keys().next().unwrap())
}

#[test]
fn keygen_sign_then_open_requiring_a_trusted_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let keyfile = tmp.path().join("release");
    let out = cli(&["keygen", "-o", keyfile.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let secret = SecretKey::from_hex(&std::fs::read_to_string(&keyfile).unwrap()).unwrap();
    let public =
        PublicKey::from_hex(&std::fs::read_to_string(tmp.path().join("release.pub")).unwrap())
            .unwrap();
    assert_eq!(secret.public_key(), public);

    let dir = package(tmp.path());
    let signed = permissive().sign(&dir, &secret).unwrap();
    assert_eq!(signed.signer, public);
    assert_eq!(signed.signers, vec![public]);
    assert!(signed.dropped.is_empty());
    assert!(dir.join(SIGNATURE_FILE).is_file());

    let host = host_with(TrustPolicy::requiring([public]));
    opens_and_adds(&host, &dir, "add");
    let pkg = host.open(&dir, Bindings::new()).unwrap();
    assert_eq!(pkg.digest(), signed.digest);
    host.verify(&dir).unwrap();
    assert_eq!(
        host.signature_status(&dir).unwrap(),
        SignatureStatus::Signed {
            signers: vec![public]
        }
    );
    // The same signed package under the other policies.
    opens_and_adds(&permissive(), &dir, "add");
    opens_and_adds(&host_with(TrustPolicy::trusting([public])), &dir, "add");
}

#[test]
fn unsigned_package_is_refused_only_when_a_signature_is_required() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = package(tmp.path());
    let k = key(1);
    let host = requiring(&k);
    assert!(matches!(open_err(&host, &dir), Error::Unsigned));
    assert!(matches!(host.verify(&dir), Err(Error::Unsigned)));
    assert_eq!(host.stats().wasm_compiles, 0);
    // An empty signature list is no signature.
    std::fs::write(
        dir.join(SIGNATURE_FILE),
        "{\"format\": 1, \"signatures\": []}",
    )
    .unwrap();
    assert!(matches!(open_err(&host, &dir), Error::Unsigned));
    opens_and_adds(&trusting(&k), &dir, "add");
    opens_and_adds(&permissive(), &dir, "add");
    assert_eq!(
        permissive().signature_status(&dir).unwrap(),
        SignatureStatus::Unsigned
    );
}

#[test]
fn package_signed_by_a_foreign_key_is_an_untrusted_signer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = package(tmp.path());
    let (ours, foreign) = (key(1), key(2));
    permissive().sign(&dir, &foreign).unwrap();
    for host in [requiring(&ours), trusting(&ours)] {
        match open_err(&host, &dir) {
            Error::UntrustedSigner { keys } => {
                assert_eq!(keys, vec![foreign.public_key().to_hex()])
            }
            e => panic!("{e}"),
        }
        assert_eq!(host.stats().wasm_compiles, 0);
    }
    opens_and_adds(&permissive(), &dir, "add");
    // Once the foreign key is trusted too, it loads.
    opens_and_adds(
        &host_with(TrustPolicy::requiring([
            ours.public_key(),
            foreign.public_key(),
        ])),
        &dir,
        "add",
    );
}

#[test]
fn tampered_manifest_with_consistent_digests_fails_the_signature_but_loads_permissively() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = package(tmp.path());
    let k = key(1);
    permissive().sign(&dir, &k).unwrap();
    // An attacker renames the function and rewrites manifest.sha256 to match,
    // keeping the old signature.
    rewrite_manifest(&dir, |m| m.functions[0].name = "evil".into());
    for host in [requiring(&k), trusting(&k)] {
        match open_err(&host, &dir) {
            Error::BadSignature { key } => assert_eq!(key, k.public_key().to_hex()),
            e => panic!("{e}"),
        }
        assert!(matches!(host.verify(&dir), Err(Error::BadSignature { .. })));
        assert_eq!(host.stats().wasm_compiles, 0);
    }
    // Its digests verify, so the permissive default loads it.
    opens_and_adds(&permissive(), &dir, "evil");
    assert!(matches!(
        permissive().signature_status(&dir).unwrap(),
        SignatureStatus::Invalid { .. }
    ));
    // Re-signing the changed package drops the stale signature.
    let k2 = key(2);
    let signed = permissive().sign(&dir, &k2).unwrap();
    assert_eq!(signed.dropped, vec![k.public_key().to_hex()]);
    assert!(matches!(
        open_err(&requiring(&k), &dir),
        Error::UntrustedSigner { .. }
    ));
    opens_and_adds(&requiring(&k2), &dir, "evil");
}

#[test]
fn tampered_wrapper_is_an_integrity_error_under_every_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = package(tmp.path());
    let k = key(1);
    permissive().sign(&dir, &k).unwrap();
    flip_byte(&wrapper_path(&dir), None);
    for host in [permissive(), trusting(&k), requiring(&k)] {
        assert!(
            matches!(open_err(&host, &dir), Error::Integrity { .. }),
            "expected Integrity"
        );
        assert!(matches!(host.verify(&dir), Err(Error::Integrity { .. })));
    }
    // A tampered manifest that does not match manifest.sha256 is an
    // integrity error too, before any policy is consulted.
    let dir2 = hand_package(&tmp.path().join("two"), &[HandFunction::add("add", 4)]);
    permissive().sign(&dir2, &k).unwrap();
    flip_byte(&dir2.join(MANIFEST_FILE), None);
    for host in [permissive(), requiring(&k)] {
        assert!(matches!(open_err(&host, &dir2), Error::Integrity { .. }));
    }
}

/// Replaces the first hex digit of the first signature with another hex
/// digit, so the file stays well formed.
fn corrupt_signature(dir: &Path) {
    let path = dir.join(SIGNATURE_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let sig = v["signatures"][0]["signature"]
        .as_str()
        .unwrap()
        .to_string();
    let first = if sig.starts_with('0') { "1" } else { "0" };
    v["signatures"][0]["signature"] = format!("{first}{}", &sig[1..]).into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn corrupted_signature_is_a_bad_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = package(tmp.path());
    let k = key(1);
    permissive().sign(&dir, &k).unwrap();
    corrupt_signature(&dir);
    for host in [requiring(&k), trusting(&k)] {
        match open_err(&host, &dir) {
            Error::BadSignature { key } => assert_eq!(key, k.public_key().to_hex()),
            e => panic!("{e}"),
        }
    }
    opens_and_adds(&permissive(), &dir, "add");
}

#[test]
fn malformed_signature_file_is_refused_by_every_policy_that_reads_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = package(tmp.path());
    let k = key(1);
    let pk = k.public_key().to_hex();
    let cases = [
        "{not json".to_string(),
        String::new(),
        "{\"format\": 2, \"signatures\": []}".into(),
        "{\"format\": 1, \"signatures\": [], \"comment\": \"hi\"}".into(),
        format!(
            "{{\"format\": 1, \"signatures\": [{{\"key\": \"{pk}\", \"signature\": \"00\"}}]}}"
        ),
        format!(
            "{{\"format\": 1, \"signatures\": [{{\"key\": \"{}\", \"signature\": \"{}\"}}]}}",
            &pk[..60],
            "00".repeat(64)
        ),
        "\u{0}\u{ff}\u{fe}".into(),
        " ".repeat(70_000),
    ];
    let consulting = [requiring(&k), trusting(&k)];
    let default = permissive();
    for text in &cases {
        std::fs::write(dir.join(SIGNATURE_FILE), text).unwrap();
        for host in &consulting {
            match open_err(host, &dir) {
                Error::MalformedSignature { message } => assert!(!message.is_empty()),
                e => panic!("{text:?}: {e}"),
            }
        }
        // The permissive default does not read it.
        opens_and_adds(&default, &dir, "add");
    }
    // Signing refuses to overwrite a malformed file rather than guess.
    assert!(matches!(
        permissive().sign(&dir, &k),
        Err(Error::MalformedSignature { .. })
    ));
    assert_eq!(
        std::fs::read_to_string(dir.join(SIGNATURE_FILE)).unwrap(),
        cases[cases.len() - 1]
    );
    // A signature.json that is not a regular file is not a package file.
    std::fs::remove_file(dir.join(SIGNATURE_FILE)).unwrap();
    std::fs::create_dir(dir.join(SIGNATURE_FILE)).unwrap();
    for host in [permissive(), requiring(&k)] {
        assert!(matches!(open_err(&host, &dir), Error::Verify(_)));
    }
}

#[test]
fn a_second_signer_is_added_and_either_key_is_enough() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = package(tmp.path());
    let (a, b) = (key(1), key(2));
    permissive().sign(&dir, &a).unwrap();
    let signed = permissive().sign(&dir, &b).unwrap();
    assert_eq!(signed.signers, vec![a.public_key(), b.public_key()]);
    // Re-signing by `a` replaces its entry.
    let signed = permissive().sign(&dir, &a).unwrap();
    assert_eq!(signed.signers, vec![b.public_key(), a.public_key()]);
    opens_and_adds(&requiring(&a), &dir, "add");
    opens_and_adds(&requiring(&b), &dir, "add");
    // Every present signature must verify, even a trusted key's.
    corrupt_signature(&dir);
    assert!(matches!(
        open_err(&requiring(&a), &dir),
        Error::BadSignature { .. }
    ));
}

#[test]
fn open_files_checks_the_signature_held_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = package(tmp.path());
    let k = key(1);
    permissive().sign(&dir, &k).unwrap();
    let host = requiring(&k);
    let (manifest, files) = host.read_package(&dir).unwrap();
    assert!(files.signature().is_some());
    host.open_files(&manifest, files.clone(), Bindings::new())
        .unwrap();
    // The same files without the signature.
    let mut unsigned = PackageFiles::new();
    for (name, bytes) in files.iter() {
        unsigned.insert(name.to_string(), bytes.to_vec());
    }
    assert!(matches!(
        host.open_files(&manifest, unsigned.clone(), Bindings::new()),
        Err(Error::Unsigned)
    ));
    let mut resigned = unsigned;
    resigned.set_signature(files.signature().unwrap().to_vec());
    host.open_files(&manifest, resigned, Bindings::new())
        .unwrap();
}

#[test]
fn signing_refuses_a_package_that_does_not_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = package(tmp.path());
    flip_byte(&wrapper_path(&dir), None);
    assert!(matches!(
        permissive().sign(&dir, &key(1)),
        Err(Error::Integrity { .. })
    ));
    assert!(!dir.join(SIGNATURE_FILE).exists());
    // Nothing but the package's own files is left behind.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ampoule"))
        .args(args)
        .env("AMPOULE_CACHE_DIR", "off")
        .output()
        .expect("run ampoule")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn cli_keygen_sign_and_verify_under_a_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = package(tmp.path());
    let pkg = dir.to_str().unwrap();
    let key = tmp.path().join("k");
    let k = key.to_str().unwrap();
    let kpub = format!("{k}.pub");
    let other = tmp.path().join("other");
    let o = other.to_str().unwrap();
    let opub = format!("{o}.pub");

    let out = cli(&["keygen", "-o", k]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "secret key is readable by others: {mode:o}"
        );
    }
    let secret_before = std::fs::read(&key).unwrap();
    // keygen never overwrites.
    let out = cli(&["keygen", "-o", k]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&key).unwrap(), secret_before);
    assert_eq!(cli(&["keygen", "-o", o]).status.code(), Some(0));

    // Unsigned: verifies by default, refused when a signature is required.
    assert_eq!(cli(&["verify", pkg]).status.code(), Some(0));
    let out = cli(&["verify", pkg, "--trust", &kpub, "--require-signature"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not signed"), "{}", stderr(&out));
    // Trusting without requiring accepts an unsigned package.
    assert_eq!(
        cli(&["verify", pkg, "--trust", &kpub]).status.code(),
        Some(0)
    );

    // Sign, with the secret key (not the public one).
    let out = cli(&["sign", pkg, "--key", &kpub]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("public key"), "{}", stderr(&out));
    let out = cli(&["sign", pkg, "--key", k]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let public = std::fs::read_to_string(&kpub).unwrap().trim().to_string();
    assert!(stdout(&out).contains(&public), "{}", stdout(&out));

    let out = cli(&["verify", pkg, "--trust", &kpub, "--require-signature"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = cli(&["verify", pkg, "--trust", &opub, "--require-signature"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not trust"), "{}", stderr(&out));
    let out = cli(&[
        "verify",
        pkg,
        "--trust",
        &opub,
        "--trust",
        &kpub,
        "--require-signature",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // A policy that trusts nobody is a usage error.
    let out = cli(&["verify", pkg, "--require-signature"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--trust"), "{}", stderr(&out));
    // A key file that is not a key.
    let out = cli(&["verify", pkg, "--trust", pkg]);
    assert_eq!(out.status.code(), Some(1));

    // inspect shows the signer; --json too.
    let out = cli(&["inspect", pkg, "--trust", &kpub, "--require-signature"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("signed by {public}")),
        "{}",
        stdout(&out)
    );
    let out = cli(&["inspect", pkg, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["signature"]["status"], "signed");
    assert_eq!(v["signature"]["signers"][0], public.as_str());

    // Tampered after signing: refused under the policy, fine by default.
    rewrite_manifest(&dir, |m| m.functions[0].name = "evil".into());
    let out = cli(&["verify", pkg, "--trust", &kpub, "--require-signature"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not verify"), "{}", stderr(&out));
    assert_eq!(cli(&["verify", pkg]).status.code(), Some(0));
    let out = cli(&["inspect", pkg]);
    assert!(stdout(&out).contains("INVALID"), "{}", stdout(&out));
}

#[test]
fn the_compiler_resumes_a_signed_package_under_the_hosts_policy() {
    use ampoule::compiler::Compiler;
    let tmp = tempfile::tempdir().unwrap();
    let dir = package(tmp.path());
    let (k, foreign) = (key(1), key(2));
    use ampoule::compiler::{Error as CError, PackageError};
    let host_error = |e: CError| match e {
        CError::Package(PackageError::Host(e)) | CError::Host(e) => e,
        e => panic!("expected a host error, got {e}"),
    };
    // Unsigned: the compiler's loader applies the policy like `open` does.
    let err = Compiler::builder(requiring(&k)).open(&dir).err().unwrap();
    assert!(matches!(host_error(err), Error::Unsigned));
    permissive().sign(&dir, &k).unwrap();
    let c = Compiler::builder(requiring(&k))
        .open(&dir)
        .unwrap_or_else(|e| panic!("a signed package must load for extension: {e}"));
    let a = f32s(&[4], vec![1.0, 2.0, 3.0, 4.0]);
    let y = c.package().call("add", &[a.clone(), a]).unwrap();
    assert_eq!(y[0].to_vec::<f32>().unwrap(), vec![2.0, 4.0, 6.0, 8.0]);
    permissive().sign(&dir, &foreign).unwrap();
    Compiler::builder(requiring(&k)).open(&dir).unwrap();
    std::fs::remove_file(dir.join(SIGNATURE_FILE)).unwrap();
    permissive().sign(&dir, &foreign).unwrap();
    let err = Compiler::builder(requiring(&k)).open(&dir).err().unwrap();
    assert!(matches!(host_error(err), Error::UntrustedSigner { .. }));
}
