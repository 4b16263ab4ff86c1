//! A package directory whose manifest or manifest digest is not a regular
//! file (a FIFO, a symlink, a directory) is refused promptly by `open`,
//! `verify` and `read_package`. A FIFO used to block `open` forever, waiting
//! for a writer (found by `fuzz/open_dir`; input in
//! `fuzz/regressions/open_dir/`).

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use ampoule_host::manifest::{sha256_hex, MANIFEST_DIGEST_FILE, MANIFEST_FILE};
use ampoule_host::{Bindings, Error, Host, HostConfig};

fn mkfifo(path: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo")
        .success();
    assert!(ok, "mkfifo {}", path.display());
}

/// Runs `open`, `verify` and `read_package` on `dir` in a thread, failing
/// (instead of hanging) if any takes more than a few seconds; returns the
/// error messages.
fn refused(dir: &Path) -> Vec<String> {
    let (tx, rx) = mpsc::channel();
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let host = Host::new(HostConfig {
            cache_dir: None,
            ..HostConfig::default()
        })
        .expect("host");
        let msg = |e: Error| e.to_string();
        let r = vec![
            host.open(&dir, Bindings::new()).err().map(msg),
            host.verify(&dir).err().map(msg),
            host.read_package(&dir).err().map(msg),
        ];
        let _ = tx.send(r);
    });
    let r = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("opening the package returned instead of hanging");
    r.into_iter()
        .map(|e| e.expect("the package is refused"))
        .collect()
}

#[test]
fn fifo_manifest_is_refused_without_blocking() {
    let tmp = tempfile::tempdir().unwrap();
    mkfifo(&tmp.path().join(MANIFEST_FILE));
    std::fs::write(tmp.path().join(MANIFEST_DIGEST_FILE), sha256_hex(b"")).unwrap();
    for m in refused(tmp.path()) {
        assert!(
            m.contains("`manifest.json`") && m.contains("not a regular file"),
            "{m}"
        );
    }
}

#[test]
fn fifo_manifest_digest_is_refused_without_blocking() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join(MANIFEST_FILE), b"{}").unwrap();
    mkfifo(&tmp.path().join(MANIFEST_DIGEST_FILE));
    for m in refused(tmp.path()) {
        assert!(
            m.contains("`manifest.sha256`") && m.contains("not a regular file"),
            "{m}"
        );
    }
}

#[test]
fn symlinked_or_directory_manifest_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("real.json"), b"{}").unwrap();
    std::os::unix::fs::symlink("real.json", tmp.path().join(MANIFEST_FILE)).unwrap();
    std::fs::create_dir(tmp.path().join(MANIFEST_DIGEST_FILE)).unwrap();
    for m in refused(tmp.path()) {
        assert!(m.contains("not a regular file"), "{m}");
    }
}
