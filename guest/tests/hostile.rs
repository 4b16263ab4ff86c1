//! The hostile-wrapper corpus in `tests/hostile/wat/`: every case has a
//! well-formed header, componentizes, imports what it should, and does what
//! its description says when run against the mock host (with the mock
//! playing the part of the host's checks where a check is needed to stop
//! it: deadline, memory limit, tensor budget).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ampoule_guest::{componentize, componentize_with_wit, EmitError, HOST_INTERFACE};
use common::{Call, Mock, Wrapper, NONE};
use wasmtime::{bail, Result, Trap};

/// The error kinds the corpus may expect (the host's `TrapKind`s in
/// kebab-case, plus refusal at open).
const KINDS: &[&str] = &[
    "forbidden-import",
    "deadline",
    "bad-handle",
    "stale-handle",
    "launch-rejected",
    "budget-exceeded",
    "uninitialized-read",
    "guest-memory-limit",
    "wasm",
];

struct Case {
    name: String,
    expect: String,
    wit: Option<(PathBuf, String)>,
    component: Vec<u8>,
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/hostile/wat")
}

fn load(path: &Path) -> Result<Case> {
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(path)?;
    let mut lines = text.lines();
    let Some(expect) = lines.next().and_then(|l| l.strip_prefix(";; expect: ")) else {
        bail!("{name}: the first line must be `;; expect: <kind>`");
    };
    let description = lines.next().and_then(|l| l.strip_prefix(";; "));
    if description.is_none_or(|d| d.is_empty() || d.starts_with("wit:")) {
        bail!("{name}: the second line must be a `;; <description>`");
    }
    let wit = match lines.next().and_then(|l| l.strip_prefix(";; wit: ")) {
        Some(spec) => {
            let (file, world) = spec.split_once(' ').expect("`;; wit: <file> <world>`");
            Some((dir().join(file), world.to_owned()))
        }
        None => None,
    };
    let core = wat::parse_str(&text)?;
    let component = match &wit {
        Some((file, world)) => {
            componentize_with_wit(&core, &std::fs::read_to_string(file)?, world)?
        }
        None => componentize(&core)?,
    };
    Ok(Case {
        name,
        expect: expect.to_owned(),
        wit,
        component,
    })
}

fn case(name: &str) -> Result<Case> {
    load(&dir().join(format!("{name}.wat")))
}

#[test]
fn every_case_is_well_formed_and_componentizes() -> Result<()> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "wat") {
            let case = load(&path)?;
            assert!(
                KINDS.contains(&case.expect.as_str()),
                "{}: unknown kind {}",
                case.name,
                case.expect
            );
            common::validate(&case.component)?;
            let mut imports = common::component_imports(&case.component)?;
            imports.sort();
            if case.wit.is_some() {
                assert_eq!(
                    imports,
                    [HOST_INTERFACE, "hostile:escape/fs@0.1.0"],
                    "{}",
                    case.name
                );
            } else {
                assert_eq!(imports, [HOST_INTERFACE], "{}", case.name);
            }
            names.push(case.name);
        }
    }
    names.sort();
    assert_eq!(
        names,
        [
            "alloc_bomb",
            "deep_recursion",
            "extra_import",
            "forged_handle",
            "infinite_loop",
            "memory_grow_bomb",
            "read_uninit",
            "shape_mismatch",
            "stale_handle",
            "start_loop",
        ]
    );
    Ok(())
}

#[test]
fn extra_import_does_not_componentize_against_the_contract() -> Result<()> {
    let path = dir().join("extra_import.wat");
    let err = componentize(&wat::parse_file(path)?).unwrap_err();
    assert!(matches!(err, EmitError::Componentize { .. }), "{err}");
    // Nor does a bare `env` import, in any world.
    let env = wat::parse_str(
        r#"(module
            (import "env" "getenv" (func (param i32 i32) (result i32)))
            (memory (export "memory") 1)
            (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) i32.const 0)
            (func (export "init") (param i32 i32 i32 i32))
            (func (export "run") (param i32 i32) (result i32) unreachable))"#,
    )?;
    let err = componentize(&env).unwrap_err();
    assert!(err.to_string().starts_with("componentize: "), "{err}");
    Ok(())
}

/// Runs `run` of `case`, after `init` with no lists.
fn run(case: &Case, mock: Mock) -> (Wrapper, wasmtime::Error) {
    let mut w = Wrapper::with(&case.component, mock).expect("instantiate");
    w.init(&[], &[]).expect("init");
    let err = w.run(&[]).expect_err("run must not return");
    (w, err)
}

fn trap(err: &wasmtime::Error) -> Option<Trap> {
    err.downcast_ref::<Trap>().copied()
}

#[test]
fn forged_handle_launches_a_made_up_handle() -> Result<()> {
    let (mut w, err) = run(&case("forged_handle")?, Mock::default());
    assert_eq!(
        w.take_calls(),
        [Call::Launch(
            0,
            [0x00abcdef, 0x00abcdef, 0x00abcdef, NONE, NONE, NONE]
        )]
    );
    assert_eq!(trap(&err), Some(Trap::UnreachableCodeReached));
    Ok(())
}

#[test]
fn stale_handle_uses_a_released_handle() -> Result<()> {
    let (mut w, _) = run(&case("stale_handle")?, Mock::default());
    assert_eq!(
        w.take_calls(),
        [
            Call::Alloc(1, 1, [4, 0, 0, 0, 0, 0, 0, 0]),
            Call::Release(1000),
            Call::Dim(1000, 0),
        ]
    );
    Ok(())
}

#[test]
fn shape_mismatch_launches_mismatched_operands() -> Result<()> {
    let (mut w, _) = run(&case("shape_mismatch")?, Mock::default());
    let f32x2 = |a, b| Call::Alloc(1, 2, [a, b, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        w.take_calls(),
        [
            f32x2(2, 3),
            f32x2(4, 5),
            f32x2(2, 3),
            Call::Launch(0, [1000, 1001, 1002, NONE, NONE, NONE]),
        ]
    );
    Ok(())
}

#[test]
fn read_uninit_reads_a_fresh_tensor() -> Result<()> {
    let (mut w, _) = run(&case("read_uninit")?, Mock::default());
    assert_eq!(
        w.take_calls(),
        [
            Call::Alloc(6, 1, [1, 0, 0, 0, 0, 0, 0, 0]),
            Call::ReadI64(1000, 0),
        ]
    );
    Ok(())
}

#[test]
fn alloc_bomb_allocates_until_refused() -> Result<()> {
    let mock = Mock {
        alloc_budget: Some(50),
        ..Mock::default()
    };
    let (mut w, err) = run(&case("alloc_bomb")?, mock);
    assert!(format!("{err:?}").contains("budget exceeded"), "{err:?}");
    let calls = w.take_calls();
    assert_eq!(calls.len(), 51);
    assert!(calls
        .iter()
        .all(|c| *c == Call::Alloc(1, 2, [4096, 4096, 0, 0, 0, 0, 0, 0])));
    Ok(())
}

#[test]
fn memory_grow_bomb_hits_the_memory_limit() -> Result<()> {
    let (_, err) = run(&case("memory_grow_bomb")?, Mock::default());
    assert!(
        format!("{err:?}").contains("memory"),
        "not a memory limit: {err:?}"
    );
    assert_ne!(trap(&err), Some(Trap::UnreachableCodeReached));
    Ok(())
}

#[test]
fn deep_recursion_overflows_the_stack() -> Result<()> {
    let (_, err) = run(&case("deep_recursion")?, Mock::default());
    assert_eq!(trap(&err), Some(Trap::StackOverflow), "{err:?}");
    Ok(())
}

/// Bumps the engine's epoch every 10 ms until the returned guard drops.
struct Ticker(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Ticker {
    fn start() -> Ticker {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
                common::engine().increment_epoch();
            }
        });
        Ticker(stop)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn infinite_loop_runs_until_the_deadline() -> Result<()> {
    let case = case("infinite_loop")?;
    let mut w = Wrapper::new(&case.component)?;
    w.init(&[], &[])?;
    let _ticker = Ticker::start();
    w.store.set_epoch_deadline(3);
    let err = w.run(&[]).unwrap_err();
    assert_eq!(trap(&err), Some(Trap::Interrupt), "{err:?}");
    assert_eq!(w.take_calls(), []);
    Ok(())
}

#[test]
fn start_loop_never_finishes_instantiating() -> Result<()> {
    let case = case("start_loop")?;
    let _ticker = Ticker::start();
    // `Wrapper::with` sets a far deadline; instantiate by hand with a near one.
    let err = common::instantiate_with_deadline(&case.component, 3)
        .err()
        .expect("instantiation must not finish");
    assert_eq!(trap(&err), Some(Trap::Interrupt), "{err:?}");
    Ok(())
}

#[test]
fn extra_import_calls_outside_the_contract() -> Result<()> {
    let case = case("extra_import")?;
    // The mock host cannot even link it: nothing provides the import.
    let err = Wrapper::new(&case.component).err().expect("must not link");
    assert!(format!("{err:?}").contains("hostile:escape/fs"), "{err:?}");
    Ok(())
}
