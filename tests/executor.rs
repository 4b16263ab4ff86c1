//! End-to-end tests of the executor: trace, compile, save, load (in this
//! process and in a fresh one), run sandboxed, and every typed error a user
//! can meet on the way.

mod common;

use std::path::Path;
use std::process::Command;

use ampoule::compiler::{function, CompiledFunction, Compiler, FunctionDef, Options};
use ampoule::demo;
use ampoule::host::manifest::{GlobalSource, MANIFEST_FILE};
use ampoule::host::{Bindings, Error as HostError};
use ampoule::kernels::{DType, Tensor};
use common::*;

type CompilerError = ampoule::compiler::Error;

fn host_miss(e: &CompilerError) -> Option<(&str, &Vec<ampoule::host::EntryMiss>)> {
    match e {
        CompilerError::Host(HostError::GuardMiss {
            function,
            explanations,
        }) => Some((function, explanations)),
        _ => None,
    }
}

/// `y = relu(x @ w + b)`, `w` and `b` captured from the environment.
fn mlp_layer() -> (FunctionDef, Tensor, Tensor) {
    let w = f32s(&[3, 2], vec![1.0, -1.0, 0.5, 2.0, -0.25, 0.0]);
    let b = f32s(&[2], vec![0.1, -0.2]);
    let (wc, bc) = (w.clone(), b.clone());
    let def = function("layer", move |cx, x| {
        let w = cx.capture("w", &wc)?;
        let b = cx.capture("b", &bc)?;
        let h = cx.linear(x[0], w, Some(b))?;
        Ok(vec![cx.relu(h)?])
    })
    .inputs(["x"])
    .outputs(["y"]);
    (def, w, b)
}

/// The layer computed directly.
fn mlp_direct(x: &Tensor, w: &Tensor, b: &Tensor) -> Vec<f32> {
    let (xv, wv, bv) = (
        x.data::<f32>().unwrap(),
        w.data::<f32>().unwrap(),
        b.data::<f32>().unwrap(),
    );
    let rows = xv.len() / 3;
    let mut out = Vec::new();
    for r in 0..rows {
        for j in 0..2 {
            let v: f32 = (0..3).map(|i| xv[r * 3 + i] * wv[i * 2 + j]).sum::<f32>() + bv[j];
            out.push(v.max(0.0));
        }
    }
    out
}

fn xs(rows: usize) -> Tensor {
    let v: Vec<f32> = (0..rows * 3)
        .map(|i| (i as f32 * 0.37).sin() * 2.0)
        .collect();
    f32s(&[rows, 3], v)
}

#[test]
fn demo_outputs_match_a_direct_computation() {
    let w = demo::Weights::new(3);
    let mut f = CompiledFunction::new(test_host(), demo::model(w.clone())).unwrap();
    for (b, t) in [(2, 8), (1, 5)] {
        let x = demo::tokens(b, t, 11);
        let out = f.call(std::slice::from_ref(&x)).unwrap();
        let (hidden, pooled) = demo::direct(&w, &x).unwrap();
        assert_eq!(out[0].shape(), &[b, t, demo::DIM]);
        assert!(demo::max_abs_diff(out[0].data::<f32>().unwrap(), &hidden) < 1e-4);
        assert!(demo::max_abs_diff(out[1].data::<f32>().unwrap(), &pooled) < 1e-4);
    }
    assert_eq!(f.compile_count(), 2);
}

/// The second half of `saved_package_runs_in_a_fresh_process_without_compiling`:
/// runs only when that test spawns this binary with `AMPOULE_CHILD_PKG` set.
#[test]
fn child_process_half() {
    let (Ok(pkg), Ok(out)) = (
        std::env::var("AMPOULE_CHILD_PKG"),
        std::env::var("AMPOULE_CHILD_OUT"),
    ) else {
        return;
    };
    let w = demo::Weights::new(5);
    // The compiler is attached: a miss would compile. None may happen.
    let mut f =
        CompiledFunction::open(test_host(), &pkg, demo::model(w), Options::default()).unwrap();
    let y = f.call(&[demo::tokens(2, 8, 9)]).unwrap();
    assert_eq!(f.compile_count(), 0, "the fresh process compiled an entry");
    std::fs::write(
        Path::new(&out).join("compiles"),
        f.compile_count().to_string(),
    )
    .unwrap();
    ampoule::npy::write(&Path::new(&out).join("hidden.npy"), &y[0]).unwrap();
    ampoule::npy::write(&Path::new(&out).join("pooled.npy"), &y[1]).unwrap();
}

/// A call that took long runs the next one whole on rayon's pool (on a pool
/// of two threads or more), and gives the same bits either way. The first
/// call (wrapper compile and instantiation included) runs on this thread;
/// the next ones go to the pool, unless another test's call holds the
/// process's one turn there, so this calls until two have. A 256×512 by
/// 512×256 product is 33 M multiply-adds: far over the 500 µs a call needs
/// to move, on any machine.
#[test]
fn long_calls_move_to_the_pool_with_the_same_bits() {
    let (m, k, n) = (256, 512, 256);
    let seq = |len: usize, f: f32| (0..len).map(|i| ((i as f32) * f).sin()).collect::<Vec<_>>();
    let w = f32s(&[k, n], seq(k * n, 0.013));
    let x = f32s(&[m, k], seq(m * k, 0.007));
    let wc = w.clone();
    let def = function("product", move |cx, x| {
        let w = cx.capture("w", &wc)?;
        Ok(vec![cx.matmul(x[0], w)?])
    })
    .inputs(["x"])
    .outputs(["y"]);
    let host = test_host();
    let mut f = CompiledFunction::new(host.clone(), def).unwrap();
    let first = f.call(std::slice::from_ref(&x)).unwrap().remove(0);
    assert_eq!(host.stats().pool_calls, 0, "the first call moved");
    let wanted = if rayon::current_num_threads() > 1 {
        2
    } else {
        0
    };
    for _ in 0..50 {
        if host.stats().pool_calls >= wanted {
            break;
        }
        let again = f.call(std::slice::from_ref(&x)).unwrap().remove(0);
        assert_eq!(again.bytes(), first.bytes(), "a call on the pool differs");
    }
    assert_eq!(host.stats().pool_calls, wanted);
    // Calls from several threads at once: one holds the pool's turn, the
    // others run on their own threads; all give the same bits.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("product.ampoule");
    f.save(&dir).unwrap();
    let pkg = host.open(&dir, Bindings::new()).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (pkg, x, first) = (&pkg, &x, &first);
            s.spawn(move || {
                for _ in 0..3 {
                    let y = pkg
                        .call("product", std::slice::from_ref(x))
                        .unwrap()
                        .remove(0);
                    assert_eq!(y.bytes(), first.bytes(), "a concurrent call differs");
                }
            });
        }
    });
    let (xv, wv, y) = (
        x.data::<f32>().unwrap(),
        w.data::<f32>().unwrap(),
        first.data::<f32>().unwrap(),
    );
    for (i, j) in [(0, 0), (17, 200), (255, 255), (128, 3)] {
        let direct: f64 = (0..k)
            .map(|t| f64::from(xv[i * k + t]) * f64::from(wv[t * n + j]))
            .sum();
        let got = f64::from(y[i * n + j]);
        assert!(
            (got - direct).abs() <= 1e-3 * (1.0 + direct.abs()),
            "y[{i},{j}] = {got}, direct {direct}"
        );
    }
}

#[test]
fn saved_package_runs_in_a_fresh_process_without_compiling() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("demo.ampoule");
    let mut f = CompiledFunction::new(test_host(), demo::model(demo::Weights::new(5))).unwrap();
    let here = f.call(&[demo::tokens(2, 8, 9)]).unwrap();
    assert_eq!(f.compile_count(), 1);
    f.save(&pkg).unwrap();

    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_half",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("AMPOULE_CHILD_PKG", &pkg)
        .env("AMPOULE_CHILD_OUT", &out)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read_to_string(out.join("compiles")).unwrap(), "0");
    for (i, name) in ["hidden", "pooled"].iter().enumerate() {
        let there = ampoule::npy::read(&out.join(format!("{name}.npy"))).unwrap();
        assert_eq!(there.meta(), here[i].meta());
        assert_eq!(
            there.bytes(),
            here[i].bytes(),
            "{name} differs between processes"
        );
    }

    // The CLI is a fresh process too: `ampoule run` on .npy inputs.
    let x = out.join("tokens.npy");
    ampoule::npy::write(&x, &demo::tokens(2, 8, 9)).unwrap();
    let cli_out = tmp.path().join("cli-out");
    let o = Command::new(env!("CARGO_BIN_EXE_ampoule"))
        .arg("run")
        .arg(&pkg)
        .arg("--input")
        .arg(format!("tokens={}", x.display()))
        .arg("--output-dir")
        .arg(&cli_out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pooled = ampoule::npy::read(&cli_out.join("pooled.npy")).unwrap();
    assert_eq!(pooled.bytes(), here[1].bytes());
}

#[test]
fn two_shapes_two_entries_then_miss_or_compile_a_third() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("layer.ampoule");
    let (def, w, b) = mlp_layer();
    // Static shapes: this test is about one entry per size (automatic
    // dynamic is tested in tests/dynamic.rs).
    let mut f = Compiler::builder(test_host())
        .function(def.clone())
        .options(Options::default().static_shapes())
        .create()
        .unwrap()
        .into_function("layer")
        .unwrap();
    for rows in [4, 7] {
        let y = f.call(&[xs(rows)]).unwrap();
        assert_eq!(y[0].to_vec::<f32>().unwrap(), mlp_direct(&xs(rows), &w, &b));
    }
    assert_eq!(f.compile_count(), 2);
    assert_eq!(f.compiler().manifest().functions[0].entries.len(), 2);
    f.save(&pkg).unwrap();

    // Reloaded without a compiler: both shapes served, a third is a typed miss.
    let mut loaded = CompiledFunction::load(test_host(), &pkg, "layer").unwrap();
    for rows in [4, 7] {
        assert_eq!(
            loaded.call(&[xs(rows)]).unwrap()[0]
                .to_vec::<f32>()
                .unwrap(),
            mlp_direct(&xs(rows), &w, &b)
        );
    }
    assert_eq!(loaded.compile_count(), 0);
    let err = loaded.call(&[xs(5)]).unwrap_err();
    let (function, explanations) = host_miss(&err).unwrap_or_else(|| panic!("not a miss: {err}"));
    assert_eq!(function, "layer");
    let lines: Vec<String> = explanations.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        lines,
        [
            "entry 0: x.shape[0] == 4, got 5",
            "entry 1: x.shape[0] == 7, got 5"
        ]
    );
    assert!(
        err.to_string().contains("entry 1: x.shape[0] == 7, got 5"),
        "{err}"
    );

    // With the compiler attached, the miss compiles a third entry; save persists it.
    let mut resumed = CompiledFunction::open(test_host(), &pkg, def, Options::default()).unwrap();
    let y = resumed.call(&[xs(5)]).unwrap();
    assert_eq!(y[0].to_vec::<f32>().unwrap(), mlp_direct(&xs(5), &w, &b));
    assert_eq!(resumed.compile_count(), 1);
    resumed.save(&pkg).unwrap();
    let reloaded = test_host().open(&pkg, Bindings::new()).unwrap();
    assert_eq!(reloaded.manifest().functions[0].entries.len(), 3);
    assert_eq!(
        reloaded.call("layer", &[xs(5)]).unwrap()[0]
            .to_vec::<f32>()
            .unwrap(),
        mlp_direct(&xs(5), &w, &b)
    );
}

#[test]
fn captured_globals_are_listed_and_handed_over_by_index() {
    let (def, _, _) = mlp_layer();
    let mut f = CompiledFunction::new(test_host(), def).unwrap();
    f.call(&[xs(2)]).unwrap();
    let m = f.compiler().manifest();
    let names: Vec<&str> = m.globals.iter().map(|g| g.name.as_str()).collect();
    assert!(names.contains(&"w") && names.contains(&"b"), "{names:?}");
    for g in &m.globals {
        assert!(matches!(g.source, GlobalSource::Weight { .. }), "{g:?}");
    }
    // The entry's globals table names both, by package-global index.
    let table: Vec<&str> = m.functions[0].entries[0]
        .globals
        .iter()
        .map(|&g| m.globals[g as usize].name.as_str())
        .collect();
    assert!(table.contains(&"w") && table.contains(&"b"), "{table:?}");
}

/// `y = x * scale` where `scale` is bound by the application at load.
fn scaled() -> FunctionDef {
    function("scaled", |cx, x| {
        let s = cx.bound("scale")?;
        Ok(vec![cx.mul(x[0], s)?])
    })
    .inputs(["x"])
    .outputs(["y"])
}

#[test]
fn host_bound_globals_bind_by_name_and_fail_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("scaled.ampoule");
    let scale = f32s(&[3], vec![1.0, 10.0, 100.0]);
    let mut c = Compiler::builder(test_host())
        .bind("scale", scale.clone())
        .function(scaled())
        .create()
        .unwrap();
    let y = c.call("scaled", &[xs(2)]).unwrap();
    let expect: Vec<f32> = xs(2)
        .data::<f32>()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, v)| v * [1.0, 10.0, 100.0][i % 3])
        .collect();
    assert_eq!(y[0].to_vec::<f32>().unwrap(), expect);
    assert_eq!(c.manifest().globals[0].source, GlobalSource::Bound);
    c.save(&pkg).unwrap();

    let host = test_host();
    // Bound with another value of the same shape: used, by name.
    let other = f32s(&[3], vec![2.0, 2.0, 2.0]);
    let p = host
        .open(&pkg, Bindings::new().bind("scale", other))
        .unwrap();
    let y = p.call("scaled", &[xs(2)]).unwrap();
    let expect: Vec<f32> = xs(2)
        .data::<f32>()
        .unwrap()
        .iter()
        .map(|v| v * 2.0)
        .collect();
    assert_eq!(y[0].to_vec::<f32>().unwrap(), expect);

    // Missing: an error naming it.
    match host.open(&pkg, Bindings::new()) {
        Err(HostError::MissingBinding { name }) => assert_eq!(name, "scale"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened without its binding"),
    }
    // Wrong shape: its guard fails, and says so by name.
    let p = host
        .open(
            &pkg,
            Bindings::new().bind("scale", f32s(&[4], vec![1.0; 4])),
        )
        .unwrap();
    let err = p.call("scaled", &[xs(2)]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, HostError::GuardMiss { .. }), "{msg}");
    assert!(
        msg.contains("global `scale` is f32[3], got f32[4]"),
        "{msg}"
    );
    // A binding the package does not have is refused too.
    let err = host
        .open(
            &pkg,
            Bindings::new()
                .bind("scale", scale)
                .bind("bias", f32s(&[1], vec![0.0])),
        )
        .err()
        .unwrap();
    assert!(
        matches!(err, HostError::UnknownBinding { ref name, .. } if name == "bias"),
        "{err}"
    );
}

#[test]
fn two_functions_with_the_same_shapes_share_a_package_without_collision() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("two.ampoule");
    let double = function("double", |cx, x| Ok(vec![cx.add(x[0], x[0])?]))
        .inputs(["x"])
        .outputs(["y"]);
    let square = function("square", |cx, x| Ok(vec![cx.mul(x[0], x[0])?]))
        .inputs(["x"])
        .outputs(["y"]);
    let mut c = Compiler::builder(test_host())
        .function(double)
        .function(square)
        .create()
        .unwrap();
    let x = xs(3);
    let v = x.to_vec::<f32>().unwrap();
    assert_eq!(
        c.call("double", std::slice::from_ref(&x)).unwrap()[0]
            .to_vec::<f32>()
            .unwrap(),
        v.iter().map(|a| a + a).collect::<Vec<_>>()
    );
    assert_eq!(
        c.call("square", std::slice::from_ref(&x)).unwrap()[0]
            .to_vec::<f32>()
            .unwrap(),
        v.iter().map(|a| a * a).collect::<Vec<_>>()
    );
    c.save(&pkg).unwrap();
    let p = test_host().open(&pkg, Bindings::new()).unwrap();
    assert_eq!(p.manifest().functions.len(), 2);
    assert_eq!(
        p.call("double", std::slice::from_ref(&x)).unwrap()[0]
            .to_vec::<f32>()
            .unwrap(),
        v.iter().map(|a| a + a).collect::<Vec<_>>()
    );
    assert_eq!(
        p.call("square", std::slice::from_ref(&x)).unwrap()[0]
            .to_vec::<f32>()
            .unwrap(),
        v.iter().map(|a| a * a).collect::<Vec<_>>()
    );
    match p.call("cube", &[x]) {
        Err(HostError::UnknownFunction { name, available }) => {
            assert_eq!(name, "cube");
            assert!(available.contains("`double`") && available.contains("`square`"));
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn name_signature_and_program_hash_mismatches_are_typed() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("layer.ampoule");
    let (def, _, _) = mlp_layer();
    let mut f = CompiledFunction::new(test_host(), def).unwrap();
    f.call(&[xs(4)]).unwrap();
    f.save(&pkg).unwrap();

    // Same name, another signature (two outputs).
    let two_out = function("layer", |cx, x| Ok(vec![cx.relu(x[0])?, cx.tanh(x[0])?]))
        .inputs(["x"])
        .outputs(["y", "z"]);
    match CompiledFunction::open(test_host(), &pkg, two_out, Options::default()) {
        Err(CompilerError::Mismatch { function, what, .. }) => {
            assert_eq!((function.as_str(), what), ("layer", "signature"))
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened"),
    }
    // Same name and signature, another program.
    let (_, w, b) = mlp_layer();
    let changed = function("layer", move |cx, x| {
        let w = cx.capture("w", &w)?;
        let b = cx.capture("b", &b)?;
        let h = cx.linear(x[0], w, Some(b))?;
        Ok(vec![cx.tanh(h)?])
    })
    .inputs(["x"])
    .outputs(["y"]);
    match CompiledFunction::open(test_host(), &pkg, changed.clone(), Options::default()) {
        Err(CompilerError::Mismatch { what, .. }) => assert_eq!(what, "program hash"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened"),
    }
    // The explicit opt-out loads it; the old entry keeps serving its shape.
    let mut f = CompiledFunction::open(
        test_host(),
        &pkg,
        changed,
        Options::default().allow_program_change(),
    )
    .unwrap();
    f.call(&[xs(4)]).unwrap();
    assert_eq!(f.compile_count(), 0);
    // A name the package does not have.
    assert!(CompiledFunction::load(test_host(), &pkg, "nope").is_err());
}

#[test]
fn tampering_is_an_integrity_error_naming_the_file_and_compiles_no_wasm() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean.ampoule");
    let (def, _, _) = mlp_layer();
    let mut f = CompiledFunction::new(test_host(), def).unwrap();
    f.call(&[xs(4)]).unwrap();
    f.save(&clean).unwrap();
    let m = test_host().verify(&clean).unwrap();
    let wrapper = m
        .files
        .keys()
        .find(|n| n.starts_with("wrappers/"))
        .unwrap()
        .clone();
    let weights = m
        .files
        .keys()
        .find(|n| n.starts_with("weights/"))
        .unwrap()
        .clone();

    for target in [wrapper.as_str(), weights.as_str(), MANIFEST_FILE] {
        let dir = tmp.path().join(format!("t{}", target.len()));
        copy_dir(&clean, &dir);
        flip_byte(&dir.join(target), None);
        let host = test_host();
        let err = host
            .open(&dir, Bindings::new())
            .err()
            .unwrap_or_else(|| panic!("tampered {target} opened"));
        match &err {
            HostError::Integrity { file, .. } => assert_eq!(file, target),
            e => panic!("{target}: not an integrity error: {e}"),
        }
        assert!(err.to_string().contains(target));
        assert_eq!(host.stats().wasm_compiles, 0, "{target}: Wasm was compiled");
        let o = Command::new(env!("CARGO_BIN_EXE_ampoule"))
            .arg("verify")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            !o.status.success(),
            "ampoule verify accepted a tampered {target}"
        );
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(target),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = Command::new(env!("CARGO_BIN_EXE_ampoule"))
        .arg("verify")
        .arg(&clean)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn inspect_shows_the_package_in_text_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("layer.ampoule");
    let (def, _, _) = mlp_layer();
    let mut f = CompiledFunction::new(test_host(), def).unwrap();
    f.call(&[xs(4)]).unwrap();
    f.save(&pkg).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ampoule"))
        .arg("inspect")
        .arg(&pkg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    for want in [
        "function `layer`",
        "guard  x.shape[0] == 4",
        "kernel [0] linear@1",
        "w f32[3, 2]",
        "sha256",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_ampoule"))
        .args(["inspect", "--json"])
        .arg(&pkg)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["manifest"]["functions"][0]["name"], "layer");
    let sizes: u64 = v["files"]
        .as_object()
        .unwrap()
        .values()
        .map(|f| f["bytes"].as_u64().unwrap())
        .sum();
    assert!(sizes > 0);
}

#[test]
fn wrong_inputs_are_misses_not_crashes() {
    let (def, _, _) = mlp_layer();
    let mut c = Compiler::builder(test_host())
        .function(def)
        .create()
        .unwrap();
    c.call("layer", &[xs(4)]).unwrap();
    let p = c.package();
    let cases: Vec<(Vec<Tensor>, &str)> = vec![
        (vec![], "number of inputs == 1, got 0"),
        (vec![xs(4), xs(4)], "number of inputs == 1, got 2"),
        (
            vec![Tensor::zeros(DType::F64, &[4, 3]).unwrap()],
            "x.dtype == f32, got f64",
        ),
        (vec![f32s(&[12], vec![0.0; 12])], "x.rank == 2, got 1"),
        (vec![f32s(&[0, 3], vec![])], "x.shape[0] == 4, got 0"),
    ];
    for (inputs, want) in cases {
        let err = p.call("layer", &inputs).unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
    // NaN and infinities are data, not errors: they flow through.
    let y = p
        .call("layer", &[f32s(&[4, 3], vec![f32::NAN; 12])])
        .unwrap();
    assert!(y[0]
        .data::<f32>()
        .unwrap()
        .iter()
        .all(|v| v.is_nan() || *v == 0.0));
}
