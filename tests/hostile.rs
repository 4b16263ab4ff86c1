//! The hostile-wrapper corpus: every file in `tests/hostile/wat/` is a
//! hand-written wrapper naming the error it must produce. Each is packaged
//! beside a well-behaved function; the runner checks the exact error kind,
//! that nothing panics, and that the same loaded package keeps serving
//! correct results after every attack.

mod common;

use std::path::Path;

use ampoule::host::error::TrapKind;
use ampoule::host::{Bindings, Error};
use common::*;

struct Case {
    name: String,
    expect: String,
    wrapper: Vec<u8>,
}

fn load_corpus() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile/wat");
    let mut cases = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wat"))
    {
        let text = std::fs::read_to_string(&path).unwrap();
        let field = |key: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(&format!(";; {key}: "))
                    .map(str::trim)
                    .map(String::from)
            })
        };
        let expect = field("expect")
            .unwrap_or_else(|| panic!("{} has no `;; expect:` line", path.display()));
        let core = wat::parse_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let wrapper = match field("wit") {
            Some(spec) => {
                let (file, world) = spec.split_once(' ').expect("`;; wit: FILE WORLD`");
                let wit = std::fs::read_to_string(dir.join(file)).unwrap();
                ampoule::guest::componentize_with_wit(&core, &wit, world).unwrap()
            }
            None => ampoule::guest::componentize(&core).unwrap(),
        };
        cases.push(Case {
            name: path.file_stem().unwrap().to_string_lossy().into(),
            expect,
            wrapper,
        });
    }
    cases
}

fn kind_name(k: &TrapKind) -> &'static str {
    match k {
        TrapKind::Deadline => "deadline",
        TrapKind::BadHandle => "bad-handle",
        TrapKind::StaleHandle => "stale-handle",
        TrapKind::LaunchRejected => "launch-rejected",
        TrapKind::KernelFailed => "kernel-failed",
        TrapKind::BudgetExceeded => "budget-exceeded",
        TrapKind::UninitializedRead => "uninitialized-read",
        TrapKind::ReadOnly => "read-only",
        TrapKind::Contract => "contract",
        TrapKind::GuestMemoryLimit => "guest-memory-limit",
        TrapKind::Wasm => "wasm",
    }
}

#[test]
fn every_hostile_wrapper_gets_its_typed_error_and_the_package_keeps_serving() {
    let cases = load_corpus();
    assert!(cases.len() >= 10, "corpus has only {} cases", cases.len());
    let tmp = tempfile::tempdir().unwrap();
    let host = test_host();
    let a = f32s(&[4], vec![1.0, 2.0, 3.0, 4.0]);
    let b = f32s(&[4], vec![10.0, 20.0, 30.0, 40.0]);
    let mut passed = 0;
    for (i, case) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("case{i}"));
        let good = HandFunction::add("good", 4);
        let evil = HandFunction::raw("evil", case.wrapper.clone());
        let (m, files) = hand_manifest(&[good, evil]);
        write_package(&dir, &m, &files);
        let compiles_before = host.stats().wasm_compiles;
        let opened = host.open(&dir, Bindings::new());
        if case.expect == "forbidden-import" {
            let err = opened
                .err()
                .unwrap_or_else(|| panic!("{}: package opened", case.name));
            let msg = err.to_string();
            assert!(matches!(err, Error::Verify(_)), "{}: {msg}", case.name);
            assert!(
                msg.contains("may import only `ampoule:runtime/host@0.1.0`"),
                "{}: {msg}",
                case.name
            );
            assert_eq!(
                host.stats().wasm_compiles,
                compiles_before,
                "{}: Wasm was compiled before verification failed",
                case.name
            );
            passed += 1;
            continue;
        }
        let pkg = opened.unwrap_or_else(|e| panic!("{}: {e}", case.name));
        // Twice: the second call gets a fresh instance and must fail the same way.
        for attempt in 0..2 {
            let err = pkg
                .call("evil", &[])
                .err()
                .unwrap_or_else(|| panic!("{}: hostile call succeeded", case.name));
            let kind = err
                .trap_kind()
                .unwrap_or_else(|| panic!("{}: not a trap: {err}", case.name));
            assert_eq!(
                kind_name(kind),
                case.expect,
                "{} (attempt {attempt}): {err}",
                case.name
            );
            let y = pkg
                .call("good", &[a.clone(), b.clone()])
                .unwrap_or_else(|e| panic!("{}: good call failed: {e}", case.name));
            assert_eq!(
                y[0].to_vec::<f32>().unwrap(),
                vec![11.0, 22.0, 33.0, 44.0],
                "{}",
                case.name
            );
        }
        passed += 1;
    }
    println!(
        "hostile corpus: {} cases tried, {passed} gave their expected error, 0 panics",
        cases.len()
    );
    assert_eq!(passed, cases.len());
}
