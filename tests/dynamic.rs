//! Dynamic dims, end to end: one entry whose wrapper derives its shapes at
//! run time from the inputs' dims serves a whole range of sizes; the
//! constraints the program needs (ranges, equalities, divisibility) are
//! guards whose misses name them; automatic dynamic turns a dim that changed
//! into a symbol. Every result is compared with a direct computation.

mod common;

use ampoule::compiler::{function, CompiledFunction, Compiler, FunctionDef, Options};
use ampoule::host::Guard;
use ampoule::kernels::Tensor;
use anyhow::Result;

use common::test_host;

const D: usize = 16;
const H: usize = 8;

fn weights() -> (Vec<f32>, Vec<f32>) {
    let w = (0..D * H)
        .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
        .collect();
    let b = (0..H).map(|i| i as f32 / 4.0 - 1.0).collect();
    (w, b)
}

/// `y = sum(reshape(relu(x @ w + b), [B * 2, 4]), axis 1)` and
/// `z = softmax(x @ w)`: derived sizes `B` and `2·B`.
fn mlp(dynamic: bool) -> FunctionDef {
    let (w, b) = weights();
    let w = Tensor::from_vec(&[D, H], w).unwrap();
    let b = Tensor::from_vec(&[H], b).unwrap();
    let f = function("mlp", move |cx, x| {
        let w = cx.capture("w", &w)?;
        let b = cx.capture("b", &b)?;
        let h = cx.matmul(x[0], w)?;
        let z = cx.softmax(h, -1)?;
        let h = cx.add(h, b)?;
        let h = cx.relu(h)?;
        let r = cx.reshape(h, &[-1, 4])?;
        let y = cx.sum(r, &[1], false)?;
        Ok(vec![y, z])
    })
    .inputs(["x"])
    .outputs(["y", "z"]);
    if dynamic {
        f.dynamic_range("x", 0, 2, 64)
    } else {
        f
    }
}

fn input(rows: usize) -> Tensor {
    let v = (0..rows * D)
        .map(|i| ((i * 31 % 17) as f32 - 8.0) / 5.0)
        .collect();
    Tensor::from_vec(&[rows, D], v).unwrap()
}

fn mlp_direct(x: &Tensor) -> (Vec<f32>, Vec<f32>) {
    let (w, b) = weights();
    let x = x.to_vec::<f32>().unwrap();
    let rows = x.len() / D;
    let mut y = Vec::new();
    let mut z = Vec::new();
    for r in 0..rows {
        let h: Vec<f32> = (0..H)
            .map(|j| (0..D).map(|k| x[r * D + k] * w[k * H + j]).sum::<f32>())
            .collect();
        let m = h.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = h.iter().map(|v| (v - m).exp()).collect();
        let s: f32 = e.iter().sum();
        z.extend(e.iter().map(|v| v / s));
        let a: Vec<f32> = h.iter().zip(&b).map(|(h, b)| (h + b).max(0.0)).collect();
        y.extend(a.chunks(4).map(|c| c.iter().sum::<f32>()));
    }
    (y, z)
}

fn close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn one_dynamic_entry_serves_every_size_in_its_range() -> Result<()> {
    let mut f = CompiledFunction::new(test_host(), mlp(true))?;
    let sizes = [8usize, 2, 3, 5, 7, 13, 16, 31, 32, 64, 9];
    for &n in &sizes {
        let x = input(n);
        let out = f.call(&[x.clone()])?;
        let (y, z) = mlp_direct(&x);
        assert_eq!(out[0].shape(), [2 * n]);
        assert_eq!(out[1].shape(), [n, H]);
        close(&out[0].to_vec::<f32>()?, &y, &format!("y at {n}"));
        close(&out[1].to_vec::<f32>()?, &z, &format!("z at {n}"));
    }
    assert_eq!(f.compile_count(), 1, "{} sizes, one entry", sizes.len());
    let decl = f.compiler().manifest().function("mlp").unwrap();
    assert!(decl.entries[0].guards.contains(&Guard::DimRange {
        input: 0,
        axis: 0,
        min: 2,
        max: 64
    }));

    // Saved and served without a compiler: sizes outside the range miss,
    // and the miss names the constraint.
    let tmp = tempfile::tempdir()?;
    f.save(tmp.path())?;
    let mut served = CompiledFunction::load(test_host(), tmp.path(), "mlp")?;
    for n in [4usize, 40] {
        let x = input(n);
        let (y, _) = mlp_direct(&x);
        close(&served.call(&[x])?[0].to_vec::<f32>()?, &y, "served");
    }
    for (n, text) in [
        (65usize, "2 <= x.shape[0] <= 64, got 65"),
        (1, "2 <= x.shape[0] <= 64, got 1"),
    ] {
        let err = served.call(&[input(n)]).unwrap_err().to_string();
        assert!(err.contains(text), "size {n}: {err}");
    }
    Ok(())
}

/// `x + y` for `x, y: [B, 4]`, with only `x.0` marked: the add needs
/// `y.0 == x.0`, so they become one symbol.
#[test]
fn dims_that_must_agree_become_one_symbol_with_an_equality_guard() -> Result<()> {
    let add = function("add", |cx, x| Ok(vec![cx.add(x[0], x[1])?]))
        .inputs(["x", "y"])
        .outputs(["z"])
        .dynamic("x", 0);
    let mut f = CompiledFunction::new(test_host(), add)?;
    for n in [3usize, 6, 11] {
        let a = Tensor::from_vec(&[n, 4], (0..n * 4).map(|i| i as f32).collect())?;
        let b = Tensor::from_vec(&[n, 4], (0..n * 4).map(|i| 0.5 * i as f32).collect())?;
        let z = f.call(&[a, b])?;
        let want: Vec<f32> = (0..n * 4).map(|i| 1.5 * i as f32).collect();
        assert_eq!(z[0].to_vec::<f32>()?, want);
    }
    assert_eq!(f.compile_count(), 1);
    let guards = &f.compiler().manifest().function("add").unwrap().entries[0].guards;
    assert!(
        guards.contains(&Guard::DimEq {
            input: 1,
            axis: 0,
            other: 0,
            other_axis: 0
        }),
        "{guards:?}"
    );
    let tmp = tempfile::tempdir()?;
    f.save(tmp.path())?;
    let mut served = CompiledFunction::load(test_host(), tmp.path(), "add")?;
    let err = served
        .call(&[
            Tensor::zeros(ampoule::kernels::DType::F32, &[3, 4])?,
            Tensor::zeros(ampoule::kernels::DType::F32, &[5, 4])?,
        ])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("y.shape[0] == x.shape[0], got 5 and 3"),
        "{err}"
    );
    Ok(())
}

/// `reshape(x, [S / 4, 4])`: the derived size needs `S % 4 == 0`.
#[test]
fn divisibility_becomes_a_modulo_guard() -> Result<()> {
    let quarters = function("quarters", |cx, x| {
        let r = cx.reshape(x[0], &[-1, 4])?;
        Ok(vec![cx.sum(r, &[1], false)?])
    })
    .inputs(["x"])
    .outputs(["y"])
    .dynamic("x", 0);
    let mut f = CompiledFunction::new(test_host(), quarters)?;
    for n in [8usize, 12, 20, 4, 400] {
        let x = Tensor::from_vec(&[n], (0..n).map(|i| i as f32).collect())?;
        let y = f.call(&[x])?;
        let want: Vec<f32> = (0..n / 4)
            .map(|q| (0..4).map(|k| (4 * q + k) as f32).sum())
            .collect();
        assert_eq!(y[0].to_vec::<f32>()?, want, "n = {n}");
    }
    assert_eq!(f.compile_count(), 1);
    let tmp = tempfile::tempdir()?;
    f.save(tmp.path())?;
    let mut served = CompiledFunction::load(test_host(), tmp.path(), "quarters")?;
    let err = served
        .call(&[Tensor::zeros(ampoule::kernels::DType::F32, &[10])?])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("x.shape[0] % 4 == 0, got 10 (10 % 4 == 2)"),
        "{err}"
    );
    Ok(())
}

#[test]
fn automatic_dynamic_makes_the_changed_dim_symbolic() -> Result<()> {
    let mut f = CompiledFunction::new(test_host(), mlp(false))?;
    for n in [8usize, 16, 32] {
        let x = input(n);
        let (y, _) = mlp_direct(&x);
        close(&f.call(&[x])?[0].to_vec::<f32>()?, &y, &format!("y at {n}"));
    }
    let entries = &f.compiler().manifest().function("mlp").unwrap().entries;
    assert_eq!(entries.len(), 2, "8 static, then one symbolic entry");
    assert!(!entries[0].guards.iter().any(Guard::is_symbolic));
    assert!(entries[1].guards.iter().any(|g| matches!(
        g,
        Guard::DimRange {
            input: 0,
            axis: 0,
            ..
        }
    )));
    assert_eq!(f.compile_count(), 2);

    // Turned off, every size is its own static entry.
    let mut c = Compiler::builder(test_host())
        .function(mlp(false))
        .options(Options::default().static_shapes())
        .create()?;
    for n in [8usize, 16, 32] {
        c.call("mlp", &[input(n)])?;
    }
    assert_eq!(c.manifest().function("mlp").unwrap().entries.len(), 3);
    Ok(())
}

#[test]
fn a_size_held_in_an_attribute_cannot_be_dynamic_and_says_why() {
    let drop_last = function("drop_last", |cx, x| {
        let n = cx.shape(x[0])[0];
        Ok(vec![cx.narrow(x[0], 0, 0, n - 1)?])
    })
    .inputs(["x"])
    .outputs(["y"])
    .dynamic("x", 0);
    let err = CompiledFunction::new(test_host(), drop_last)
        .and_then(|mut f| f.call(&[Tensor::zeros(ampoule::kernels::DType::F32, &[6]).unwrap()]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("x.shape[0] cannot be dynamic") && err.contains("slice@1"),
        "{err}"
    );
}

/// `ampoule compile --dynamic`: an ONNX model with a symbolic batch dim
/// compiles into one dynamic entry; `ampoule run` serves several batch
/// sizes from it and `inspect` says which dim is symbolic and why.
#[test]
fn cli_compiles_an_onnx_model_with_a_dynamic_batch() -> Result<()> {
    use ampoule::compiler::onnx::proto::{
        data_type, GraphProto, Message, ModelProto, NodeProto, ValueInfoProto,
    };
    use ampoule::compiler::onnx::tensor::to_proto;
    use std::process::Command;

    let w = Tensor::from_vec(&[4, 3], (0..12).map(|i| (i as f32 - 5.0) / 4.0).collect())?;
    let graph = GraphProto {
        name: "dense".into(),
        node: vec![
            NodeProto::new("mm", "MatMul", &["x", "w"], &["h"]),
            NodeProto::new("act", "Relu", &["h"], &["y"]),
        ],
        initializer: vec![to_proto("w", &w)],
        input: vec![ValueInfoProto::tensor(
            "x",
            data_type::FLOAT,
            &[Err("batch"), Ok(4)],
        )],
        output: vec![ValueInfoProto {
            name: "y".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let tmp = tempfile::tempdir()?;
    let model = tmp.path().join("dense.onnx");
    std::fs::write(&model, ModelProto::with_opset(graph, 13).encode_to_vec())?;
    let pkg = tmp.path().join("dense.ampoule");
    let bin = env!("CARGO_BIN_EXE_ampoule");
    let o = Command::new(bin)
        .args([
            "compile",
            model.to_str().unwrap(),
            "-o",
            pkg.to_str().unwrap(),
        ])
        .args(["--input", "x=8x4", "--dynamic", "x.0=2..1024"])
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let o = Command::new(bin)
        .args(["inspect", pkg.to_str().unwrap()])
        .output()?;
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("2 <= x.shape[0] <= 1024"), "{text}");
    assert!(
        text.contains("symbolic x.shape[0]: marked dynamic"),
        "{text}"
    );

    let wv = w.to_vec::<f32>()?;
    for n in [2usize, 5, 8, 33] {
        let x = Tensor::from_vec(&[n, 4], (0..n * 4).map(|i| (i % 7) as f32 - 3.0).collect())?;
        let input = tmp.path().join(format!("x{n}.npy"));
        ampoule::npy::write(&input, &x)?;
        let out = tmp.path().join(format!("out{n}"));
        let o = Command::new(bin)
            .args(["run", pkg.to_str().unwrap()])
            .arg("--input")
            .arg(format!("x={}", input.display()))
            .args(["--output-dir", out.to_str().unwrap()])
            .output()?;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let y = ampoule::npy::read(&out.join("y.npy"))?;
        let xv = x.to_vec::<f32>()?;
        let want: Vec<f32> = (0..n * 3)
            .map(|i| {
                let (r, c) = (i / 3, i % 3);
                (0..4)
                    .map(|k| xv[r * 4 + k] * wv[k * 3 + c])
                    .sum::<f32>()
                    .max(0.0)
            })
            .collect();
        close(&y.to_vec::<f32>()?, &want, &format!("batch {n}"));
    }
    // A malformed flag is a clear error.
    let o = Command::new(bin)
        .args([
            "compile",
            model.to_str().unwrap(),
            "-o",
            pkg.to_str().unwrap(),
        ])
        .args(["--input", "x=8x4", "--dynamic", "x=2..9"])
        .output()?;
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("expected NAME.AXIS"));
    Ok(())
}

/// A dynamic entry allocates per run and the host reuses freed storage: an
/// output the caller still holds must never change under later calls.
#[test]
fn held_outputs_do_not_change_when_later_calls_run() -> Result<()> {
    let mut f = CompiledFunction::new(test_host(), mlp(true))?;
    let first = f.call(&[input(5)])?;
    let kept: Vec<Vec<f32>> = first.iter().map(|t| t.to_vec::<f32>().unwrap()).collect();
    for n in [5usize, 5, 7, 5] {
        let x = Tensor::from_vec(&[n, D], vec![-3.0f32; n * D])?;
        f.call(&[x])?;
    }
    for (t, want) in first.iter().zip(&kept) {
        assert_eq!(&t.to_vec::<f32>()?, want);
    }
    let (y, _) = mlp_direct(&input(5));
    close(&kept[0], &y, "the held output");
    Ok(())
}
