//! Self-testing packages: `Compiler::bundle_samples` and `ampoule compile
//! --bundle-samples` record sample inputs with the outputs reference kernels
//! give for them; `ampoule test PKG` replays them on the host's optimized
//! kernels. Recorded outputs are checked against direct computations written
//! out here, and a package whose recorded outputs were edited (with its
//! digests made consistent again, so only the replay can tell) fails `test`
//! naming the output.

use std::path::Path;
use std::process::{Command, Output};

use ampoule::compiler::onnx::proto::{
    data_type, GraphProto, Message, ModelProto, NodeProto, ValueInfoProto,
};
use ampoule::compiler::onnx::tensor::to_proto;
use ampoule::compiler::package::SampleOptions;
use ampoule::compiler::{function, CompiledFunction, Compiler, Example, FunctionDef};
use ampoule::host::manifest::{sha256_hex, Tolerance, MANIFEST_DIGEST_FILE, MANIFEST_FILE};
use ampoule::host::{Bindings, Host, HostConfig, Impl};
use ampoule::kernels::Tensor;
use anyhow::Result;

/// Deterministic values in [-1, 1).
fn f32s(shape: &[usize], seed: u32) -> Tensor {
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40_503));
            ((x >> 8) % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    Tensor::from_vec(shape, v).unwrap()
}

fn vals(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// `a [m, k] @ b [k, n]`.
fn mm(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            y[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    y
}

fn assert_close(got: &Tensor, want: &[f64], what: &str) {
    let g = vals(got);
    assert_eq!(g.len(), want.len(), "{what}");
    for (i, (a, b)) in g.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "{what} element {i}: got {a}, want {b}"
        );
    }
}

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ampoule"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `mlp(x) -> (h, y)`: `h = x @ w` (w: 8 x 16), `y = relu(h) @ v` (v: 16 x 3).
fn mlp(w: &Tensor, v: &Tensor) -> FunctionDef {
    let (w, v) = (w.clone(), v.clone());
    function("forward", move |cx, x| {
        let w = cx.capture("w", &w)?;
        let v = cx.capture("v", &v)?;
        let h = cx.linear(x[0], w, None)?;
        let r = cx.relu(h)?;
        let y = cx.linear(r, v, None)?;
        Ok(vec![h, y])
    })
    .inputs(["x"])
    .outputs(["h", "y"])
}

fn mlp_direct(x: &Tensor, w: &Tensor, v: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let batch = x.shape()[0];
    let h = mm(&vals(x), &vals(w), batch, 8, 16);
    let r: Vec<f64> = h.iter().map(|&a| a.max(0.0)).collect();
    let y = mm(&r, &vals(v), batch, 16, 3);
    (h, y)
}

fn host(kernels: Impl) -> Host {
    Host::new(HostConfig {
        kernels,
        ..HostConfig::default()
    })
    .unwrap()
}

#[test]
fn a_library_mlp_bundles_samples_that_replay_within_tolerance() -> Result<()> {
    let (w, v) = (f32s(&[8, 16], 1), f32s(&[16, 3], 2));
    let x = f32s(&[4, 8], 3);
    let mut c = Compiler::builder(host(Impl::Optimized))
        .function(mlp(&w, &v))
        .create()?;
    let entry = c.compile("forward", &[Example::of(&x)])?;
    c.bundle_samples(
        "forward",
        entry,
        std::slice::from_ref(&x),
        &SampleOptions::default(),
    )?;

    // The recorded outputs are the program's, computed directly here.
    let samples = c.package().samples("forward", entry)?.expect("samples");
    let (h, y) = mlp_direct(&x, &w, &v);
    assert_eq!(samples.inputs[0].bytes(), x.bytes());
    assert_close(&samples.outputs[0], &h, "recorded h");
    assert_close(&samples.outputs[1], &y, "recorded y");
    // Float tolerances come from the data: rtol 1e-4, atol 1e-5 * max|y|.
    let max_y = y.iter().fold(0.0f64, |m, a| m.max(a.abs()));
    let tol_y = samples.tolerances[1];
    assert_eq!(tol_y.rtol, 1e-4);
    assert!(
        (tol_y.atol - 1e-5 * max_y).abs() <= 0.05 * 1e-5 * max_y,
        "{tol_y:?}, max |y| {max_y}"
    );

    // The reference run is what the optimized host replays against.
    let reports = c
        .package()
        .replay_samples("forward", entry)?
        .expect("samples");
    assert_eq!(reports.len(), 2);
    for r in &reports {
        assert!(r.comparison.passed(), "{r}");
        assert!(r.comparison.max_abs <= r.tolerance.atol + r.tolerance.rtol * max_y);
    }

    let dir = tempfile::tempdir()?;
    let pkg = dir.path().join("mlp");
    c.save(&pkg)?;
    let pkg = pkg.to_str().unwrap();
    for extra in [&[][..], &["--reference"][..]] {
        let out = cli(&[&["test", pkg][..], extra].concat());
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        for name in ["h", "y"] {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(&format!("forward entry 0 {name}: max abs err ")))
                .unwrap_or_else(|| panic!("no line for {name}:\n{stdout}"));
            assert!(line.ends_with("  ok"), "{line}");
            assert!(line.contains("(rtol 1.0e-4)"), "{line}");
        }
        assert!(stdout.contains("ok: 2 outputs of 1 entry"), "{stdout}");
    }
    // `inspect` shows the samples.
    let (stdout, _) = text(&cli(&["inspect", pkg]));
    assert!(stdout.contains("    samples "), "{stdout}");
    Ok(())
}

#[test]
fn samples_survive_save_reopen_and_another_entry_and_writes_are_deterministic() -> Result<()> {
    let (w, v) = (f32s(&[8, 16], 4), f32s(&[16, 3], 5));
    let x = f32s(&[2, 8], 6);
    let dir = tempfile::tempdir()?;
    let build = |path: &Path| -> Result<()> {
        let mut c = Compiler::builder(host(Impl::Optimized))
            .function(mlp(&w, &v))
            .options(ampoule::compiler::Options::default().static_shapes())
            .create()?;
        let e = c.compile("forward", &[Example::of(&x)])?;
        let tight = SampleOptions {
            tolerances: [(
                "h".to_string(),
                Tolerance {
                    rtol: 1e-3,
                    atol: 1e-3,
                },
            )]
            .into(),
            ..SampleOptions::default()
        };
        c.bundle_samples("forward", e, std::slice::from_ref(&x), &tight)?;
        Ok(c.save(path)?)
    };
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    build(&a)?;
    build(&b)?;
    for name in [MANIFEST_FILE, MANIFEST_DIGEST_FILE] {
        assert_eq!(std::fs::read(a.join(name))?, std::fs::read(b.join(name))?);
    }
    let first = Host::new(HostConfig::default())?
        .verify(&a)?
        .function("forward")
        .unwrap()
        .entries[0]
        .samples
        .clone()
        .expect("samples saved");
    // An explicit tolerance is kept as given.
    assert_eq!(
        first.tolerances["h"],
        Tolerance {
            rtol: 1e-3,
            atol: 1e-3
        }
    );
    assert!(std::fs::metadata(a.join(&first.file))?.is_file());

    // Reopen, add an entry without samples, save again.
    let mut f = CompiledFunction::open(
        host(Impl::Optimized),
        &a,
        mlp(&w, &v),
        ampoule::compiler::Options::default().static_shapes(),
    )?;
    let x5 = f32s(&[5, 8], 7);
    let y5 = f.call(std::slice::from_ref(&x5))?;
    assert_eq!(f.compile_count(), 1);
    assert_close(&y5[1], &mlp_direct(&x5, &w, &v).1, "y for batch 5");
    f.save(&a)?;

    let pkg = Host::new(HostConfig::default())?.open(&a, Bindings::new())?;
    let entries = &pkg.manifest().function("forward").unwrap().entries;
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].samples.as_ref(), Some(&first));
    assert!(entries[1].samples.is_none());
    let replay = pkg.replay_samples("forward", 0)?.expect("entry 0 samples");
    assert!(replay.iter().all(|r| r.comparison.passed()));
    assert!(pkg.replay_samples("forward", 1)?.is_none());

    let out = cli(&["test", a.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("forward entry 1: no samples"), "{stdout}");
    assert!(stdout.contains("ok: 2 outputs of 1 entry"), "{stdout}");
    Ok(())
}

/// Replaces the bytes of tensor `tensor` in a safetensors file by `edit`.
fn edit_tensor(bytes: &mut [u8], tensor: &str, edit: impl FnOnce(&mut [u8])) {
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let offsets = &header[tensor]["data_offsets"];
    let (a, b) = (
        offsets[0].as_u64().unwrap() as usize,
        offsets[1].as_u64().unwrap() as usize,
    );
    edit(&mut bytes[8 + len + a..8 + len + b]);
}

#[test]
fn an_edited_sample_output_fails_ampoule_test_naming_the_output() -> Result<()> {
    let (w, v) = (f32s(&[8, 16], 8), f32s(&[16, 3], 9));
    let x = f32s(&[3, 8], 10);
    let mut c = Compiler::builder(host(Impl::Optimized))
        .function(mlp(&w, &v))
        .create()?;
    let e = c.compile("forward", &[Example::of(&x)])?;
    c.bundle_samples("forward", e, &[x], &SampleOptions::default())?;
    let dir = tempfile::tempdir()?;
    let pkg = dir.path().join("pkg");
    c.save(&pkg)?;

    // Edit the recorded `y`, then make every digest agree again (the new
    // file named by its digest, the manifest listing it, manifest.sha256),
    // so the integrity check passes and only the replay can tell.
    let manifest = std::fs::read_to_string(pkg.join(MANIFEST_FILE))?;
    let old = c.manifest().functions[0].entries[0]
        .samples
        .as_ref()
        .unwrap()
        .file
        .clone();
    let mut bytes = std::fs::read(pkg.join(&old))?;
    edit_tensor(&mut bytes, "output.y", |y| {
        let v = f32::from_le_bytes(y[..4].try_into().unwrap()) + 1.0;
        y[..4].copy_from_slice(&v.to_le_bytes());
    });
    let old_digest = sha256_hex(&std::fs::read(pkg.join(&old))?);
    let new_digest = sha256_hex(&bytes);
    std::fs::remove_file(pkg.join(&old))?;
    std::fs::write(pkg.join(old.replace(&old_digest, &new_digest)), &bytes)?;
    let manifest = manifest.replace(&old_digest, &new_digest);
    std::fs::write(pkg.join(MANIFEST_FILE), &manifest)?;
    std::fs::write(
        pkg.join(MANIFEST_DIGEST_FILE),
        sha256_hex(manifest.as_bytes()),
    )?;

    let p = pkg.to_str().unwrap();
    let verify = cli(&["verify", p]);
    assert!(verify.status.success(), "{:?}", text(&verify));
    let out = cli(&["test", p]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let y = stdout
        .lines()
        .find(|l| l.starts_with("forward entry 0 y: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(y.contains("FAIL (1 of 9 elements out of tolerance)"), "{y}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("forward entry 0 h: ") && l.ends_with("  ok")),
        "{stdout}"
    );
    assert!(
        stderr.contains(
            "1 of 2 sample outputs failed on optimized kernels: forward entry 0 output `y`"
        ),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn a_package_without_samples_opens_and_test_says_how_to_bundle_them() -> Result<()> {
    let (w, v) = (f32s(&[8, 16], 11), f32s(&[16, 3], 12));
    let x = f32s(&[2, 8], 13);
    let mut f = CompiledFunction::new(host(Impl::Optimized), mlp(&w, &v))?;
    f.call(std::slice::from_ref(&x))?;
    let dir = tempfile::tempdir()?;
    let pkg = dir.path().join("old");
    f.save(&pkg)?;
    // No samples: the manifest has no `samples` key at all, as before the
    // field existed, and it opens and serves.
    let manifest = std::fs::read_to_string(pkg.join(MANIFEST_FILE))?;
    assert!(!manifest.contains("samples"), "{manifest}");
    let opened = Host::new(HostConfig::default())?.open(&pkg, Bindings::new())?;
    let y = opened.call("forward", std::slice::from_ref(&x))?;
    assert_close(&y[1], &mlp_direct(&x, &w, &v).1, "y");

    let out = cli(&["test", pkg.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("forward entry 0: no samples"), "{stdout}");
    assert!(
        stderr.contains("has no bundled samples") && stderr.contains("--bundle-samples"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn bundling_refuses_inputs_the_entry_does_not_serve() -> Result<()> {
    let (w, v) = (f32s(&[8, 16], 14), f32s(&[16, 3], 15));
    let mut c = Compiler::builder(host(Impl::Optimized))
        .function(mlp(&w, &v))
        .options(ampoule::compiler::Options::default().static_shapes())
        .create()?;
    let e = c.compile("forward", &[Example::of(&f32s(&[2, 8], 16))])?;
    let before = c.manifest().clone();
    let err = c
        .bundle_samples(
            "forward",
            e,
            &[f32s(&[3, 8], 17)],
            &SampleOptions::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot bundle samples for function `forward` entry 0")
            && err.contains("x.shape[0] == 2, got 3"),
        "{err}"
    );
    assert_eq!(c.manifest(), &before, "a failed bundle changes nothing");
    Ok(())
}

// ---- ONNX models through the CLI ----

fn model_bytes(graph: GraphProto) -> Vec<u8> {
    ModelProto::with_opset(graph, 13).encode_to_vec()
}

fn out(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        ..Default::default()
    }
}

/// `y = relu(x @ w1 + b1) @ w2` with a symbolic batch.
fn onnx_mlp() -> (Vec<u8>, Tensor, Tensor, Tensor) {
    let (w1, b1, w2) = (f32s(&[4, 16], 21), f32s(&[16], 22), f32s(&[16, 3], 23));
    let graph = GraphProto {
        name: "mlp".into(),
        node: vec![
            NodeProto::new("fc1", "MatMul", &["x", "w1"], &["m"]),
            NodeProto::new("bias", "Add", &["m", "b1"], &["h"]),
            NodeProto::new("act", "Relu", &["h"], &["r"]),
            NodeProto::new("fc2", "MatMul", &["r", "w2"], &["y"]),
        ],
        initializer: vec![
            to_proto("w1", &w1),
            to_proto("b1", &b1),
            to_proto("w2", &w2),
        ],
        input: vec![ValueInfoProto::tensor(
            "x",
            data_type::FLOAT,
            &[Err("batch"), Ok(4)],
        )],
        output: vec![out("y")],
        ..Default::default()
    };
    (model_bytes(graph), w1, b1, w2)
}

#[test]
fn cli_compile_bundles_samples_for_static_and_dynamic_entries_and_test_passes() -> Result<()> {
    let (bytes, w1, b1, w2) = onnx_mlp();
    let dir = tempfile::tempdir()?;
    let model = dir.path().join("mlp.onnx");
    std::fs::write(&model, bytes)?;
    let pkg = dir.path().join("pkg");
    let (m, p) = (model.to_str().unwrap(), pkg.to_str().unwrap());
    let out = cli(&[
        "compile",
        m,
        "-o",
        p,
        "--input",
        "x=2x4",
        "--input",
        "x=7x4",
        "--dynamic",
        "x.0=2..64",
        "--bundle-samples",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("samples bundled (reference kernels)"),
        "{stdout}"
    );

    // Every entry's recorded output is the model's, computed directly, at
    // the entry's example size.
    let opened = Host::new(HostConfig::default())?.open(&pkg, Bindings::new())?;
    let entries = opened.manifest().function("forward").unwrap().entries.len();
    assert!(entries >= 1);
    let mut batches = Vec::new();
    for e in 0..entries {
        let s = opened
            .samples("forward", e)?
            .expect("every entry has samples");
        let x = &s.inputs[0];
        let batch = x.shape()[0];
        batches.push(batch);
        let b1 = vals(&b1);
        let h: Vec<f64> = mm(&vals(x), &vals(&w1), batch, 4, 16)
            .iter()
            .enumerate()
            .map(|(i, a)| (a + b1[i % 16]).max(0.0))
            .collect();
        assert_close(
            &s.outputs[0],
            &mm(&h, &vals(&w2), batch, 16, 3),
            "recorded y",
        );
        // Seeded normal floats: not all equal, and centred.
        let xs = vals(x);
        assert!(xs.iter().any(|&a| a < 0.0) && xs.iter().any(|&a| a > 0.0));
    }
    assert_eq!(batches, [2, 7][..entries], "samples at each example size");

    let out = cli(&["test", p]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("forward entry 0 y: max abs err "),
        "{stdout}"
    );
    let out = cli(&["test", p, "--function", "nope"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("package has no function `nope`"));

    // Compiling again gives the same package, samples included.
    let again = dir.path().join("again");
    let out2 = cli(&[
        "compile",
        m,
        "-o",
        again.to_str().unwrap(),
        "--input",
        "x=2x4",
        "--input",
        "x=7x4",
        "--dynamic",
        "x.0=2..64",
        "--bundle-samples",
    ]);
    assert!(out2.status.success(), "{:?}", text(&out2));
    assert_eq!(
        std::fs::read(pkg.join(MANIFEST_FILE))?,
        std::fs::read(again.join(MANIFEST_FILE))?
    );
    Ok(())
}

#[test]
fn cli_samples_of_an_integer_input_are_small_non_negative_indices() -> Result<()> {
    let table = f32s(&[6, 3], 31);
    let graph = GraphProto {
        name: "lookup".into(),
        node: vec![NodeProto::new("g", "Gather", &["table", "idx"], &["y"])],
        initializer: vec![to_proto("table", &table)],
        input: vec![ValueInfoProto::tensor("idx", data_type::INT64, &[Ok(5)])],
        output: vec![out("y")],
        ..Default::default()
    };
    let dir = tempfile::tempdir()?;
    let model = dir.path().join("lookup.onnx");
    std::fs::write(&model, model_bytes(graph))?;
    let pkg = dir.path().join("pkg");
    let out = cli(&[
        "compile",
        model.to_str().unwrap(),
        "-o",
        pkg.to_str().unwrap(),
        "--bundle-samples",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let opened = Host::new(HostConfig::default())?.open(&pkg, Bindings::new())?;
    let s = opened.samples("forward", 0)?.expect("samples");
    let idx = s.inputs[0].to_vec::<i64>()?;
    assert!(idx.iter().all(|&i| (0..4).contains(&i)), "{idx:?}");
    let t = vals(&table);
    let want: Vec<f64> = idx
        .iter()
        .flat_map(|&i| t[i as usize * 3..i as usize * 3 + 3].to_vec())
        .collect();
    assert_close(&s.outputs[0], &want, "gathered rows");
    let out = cli(&["test", pkg.to_str().unwrap()]);
    assert!(out.status.success(), "{:?}", text(&out));
    Ok(())
}
