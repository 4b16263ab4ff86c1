//! End-to-end tests of the ONNX importer: models are built in code with the
//! importer's own prost types, encoded to `.onnx` bytes, compiled through the
//! library API and the `ampoule compile` CLI, saved, reopened by a fresh
//! host and run; outputs are checked against direct computations written out
//! in this file (not against the compiler's interpreter).

use std::path::Path;
use std::process::Command;

use ampoule::compiler::onnx::proto::{
    data_type, AttributeProto, GraphProto, Message, ModelProto, NodeProto, TensorProto,
    ValueInfoProto,
};
use ampoule::compiler::onnx::{self, tensor::to_proto, OnnxError};
use ampoule::compiler::{Compiler, Example};
use ampoule::host::{Bindings, Host, HostConfig};
use ampoule::kernels::Tensor;
use anyhow::Result;

fn f32s(shape: &[usize], seed: u32) -> Tensor {
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(40503));
            ((x >> 8) % 2000) as f32 / 1000.0 - 1.0
        })
        .collect();
    Tensor::from_vec(shape, v).unwrap()
}

fn i64s(v: &[i64]) -> Tensor {
    Tensor::from_vec(&[v.len()], v.to_vec()).unwrap()
}

fn out(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        ..Default::default()
    }
}

fn model_bytes(graph: GraphProto, opset: i64) -> Vec<u8> {
    ModelProto::with_opset(graph, opset).encode_to_vec()
}

/// Compiles `bytes` with one entry per input set through the library API,
/// saves the package to `dir`, reopens it with a fresh host and runs every
/// set; returns the outputs per set.
fn compile_and_run(bytes: &[u8], sets: &[Vec<Tensor>], dir: &Path) -> Result<Vec<Vec<Tensor>>> {
    let model = onnx::load(bytes)?;
    let mut c = Compiler::builder(Host::new(HostConfig::default())?)
        .function(model.function("forward"))
        .create()?;
    for set in sets {
        let ex: Vec<Example> = set.iter().map(Example::of).collect();
        c.compile("forward", &ex)?;
    }
    c.save(dir)?;
    let pkg = Host::new(HostConfig::default())?.open(dir, Bindings::new())?;
    let mut outs = Vec::new();
    for set in sets {
        outs.push(pkg.call("forward", set)?);
    }
    assert_eq!(
        pkg.manifest().function("forward").unwrap().entries.len(),
        sets.len()
    );
    Ok(outs)
}

fn assert_close(got: &Tensor, want: &[f64], shape: &[usize], tol: f64) {
    assert_eq!(got.shape(), shape);
    let g = got.to_vec::<f32>().unwrap();
    assert_eq!(g.len(), want.len());
    for (i, (a, b)) in g.iter().zip(want).enumerate() {
        assert!(
            (f64::from(*a) - b).abs() <= tol * (1.0 + b.abs()),
            "element {i}: got {a}, want {b}"
        );
    }
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

fn transpose2(a: &[f64], r: usize, c: usize) -> Vec<f64> {
    let mut t = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = a[i * c + j];
        }
    }
    t
}

// ---- an MLP: Gemm (transB) + Relu + MatMul + Add, symbolic batch ----

fn mlp() -> (Vec<u8>, Tensor, Tensor, Tensor, Tensor) {
    let w1 = f32s(&[32, 4], 1); // [N, K]: used with transB = 1
    let b1 = f32s(&[32], 2);
    let w2 = f32s(&[32, 3], 3);
    let b2 = f32s(&[3], 4);
    let graph = GraphProto {
        name: "mlp".into(),
        node: vec![
            NodeProto::new("fc1", "Gemm", &["x", "w1", "b1"], &["h"])
                .attr(AttributeProto::int("transB", 1)),
            NodeProto::new("act", "Relu", &["h"], &["r"]),
            NodeProto::new("fc2", "MatMul", &["r", "w2"], &["m"]),
            NodeProto::new("bias2", "Add", &["m", "b2"], &["y"]),
        ],
        initializer: vec![
            to_proto("w1", &w1),
            to_proto("b1", &b1),
            to_proto("w2", &w2),
            to_proto("b2", &b2),
        ],
        input: vec![ValueInfoProto::tensor(
            "x",
            data_type::FLOAT,
            &[Err("batch"), Ok(4)],
        )],
        output: vec![out("y")],
        ..Default::default()
    };
    (model_bytes(graph, 13), w1, b1, w2, b2)
}

fn mlp_reference(x: &Tensor, w1: &Tensor, b1: &Tensor, w2: &Tensor, b2: &Tensor) -> Vec<f64> {
    let batch = x.shape()[0];
    let mut h = mm(&vals(x), &transpose2(&vals(w1), 32, 4), batch, 4, 32);
    let b1 = vals(b1);
    for (i, v) in h.iter_mut().enumerate() {
        *v = (*v + b1[i % 32]).max(0.0);
    }
    let mut y = mm(&h, &vals(w2), batch, 32, 3);
    let b2 = vals(b2);
    for (i, v) in y.iter_mut().enumerate() {
        *v += b2[i % 3];
    }
    y
}

#[test]
fn mlp_compiles_for_several_batch_sizes_and_runs() -> Result<()> {
    let (bytes, w1, b1, w2, b2) = mlp();
    let dir = tempfile::tempdir()?;
    let pkg = dir.path().join("mlp.ampoule");
    let xs = [f32s(&[1, 4], 10), f32s(&[5, 4], 11)];
    let outs = compile_and_run(&bytes, &[vec![xs[0].clone()], vec![xs[1].clone()]], &pkg)?;
    for (x, o) in xs.iter().zip(&outs) {
        let want = mlp_reference(x, &w1, &b1, &w2, &b2);
        assert_close(&o[0], &want, &[x.shape()[0], 3], 1e-5);
    }
    // The initializers are package weights under their ONNX names.
    let m = Host::new(HostConfig::default())?.verify(&pkg)?;
    let names: Vec<&str> = m.globals.iter().map(|g| g.name.as_str()).collect();
    assert!(names.contains(&"w1") && names.contains(&"w2"), "{names:?}");
    let kernels: Vec<&str> = m.functions[0].entries[0]
        .kernels
        .iter()
        .map(|k| k.kernel.as_str())
        .collect();
    assert_eq!(kernels, ["linear@1", "unary@1", "linear@1", "binary@1"]);
    Ok(())
}

#[test]
fn cli_compiles_several_entries_and_runs_pb_and_npy_inputs() -> Result<()> {
    let (bytes, w1, b1, w2, b2) = mlp();
    let dir = tempfile::tempdir()?;
    let model = dir.path().join("mlp.onnx");
    std::fs::write(&model, &bytes)?;
    let pkg = dir.path().join("pkg");
    let bin = env!("CARGO_BIN_EXE_ampoule");

    // A symbolic dim without --input is an error naming the input and axis.
    let o = Command::new(bin)
        .args([
            "compile",
            model.to_str().unwrap(),
            "-o",
            pkg.to_str().unwrap(),
        ])
        .output()?;
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("graph input `x` axis 0 is symbolic (`batch`)"),
        "{err}"
    );

    let o = Command::new(bin)
        .args([
            "compile",
            model.to_str().unwrap(),
            "-o",
            pkg.to_str().unwrap(),
        ])
        .args(["--input", "x=2x4", "--input", "x=3x4:f32"])
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("entry 0: x: f32[2, 4]"), "{stdout}");
    assert!(stdout.contains("entry 1: x: f32[3, 4]"), "{stdout}");
    let m = Host::new(HostConfig::default())?.verify(&pkg)?;
    assert_eq!(m.functions[0].name, "forward");
    assert_eq!(m.functions[0].entries.len(), 2);

    // Run with a TensorProto .pb input, then with a .npy input.
    let x2 = f32s(&[2, 4], 20);
    let x3 = f32s(&[3, 4], 21);
    let pb = dir.path().join("x.pb");
    std::fs::write(&pb, to_proto("x", &x2).encode_to_vec())?;
    let npy = dir.path().join("x.npy");
    ampoule::npy::write(&npy, &x3)?;
    for (file, x) in [(&pb, &x2), (&npy, &x3)] {
        let out_dir = dir.path().join(format!("out{}", x.shape()[0]));
        let o = Command::new(bin)
            .args(["run", pkg.to_str().unwrap()])
            .args(["--input", &format!("x={}", file.display())])
            .args(["--output-dir", out_dir.to_str().unwrap()])
            .output()?;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let y = ampoule::npy::read(&out_dir.join("y.npy"))?;
        assert_close(
            &y,
            &mlp_reference(x, &w1, &b1, &w2, &b2),
            &[x.shape()[0], 3],
            1e-5,
        );
    }
    Ok(())
}

// ---- a shape-computing chain folds away ----

#[test]
fn shape_chain_folds_at_compile_time() -> Result<()> {
    // target = Concat(Unsqueeze(Gather(Shape(x), 0)),
    //                 Unsqueeze(Cast(Mul(Gather(Shape(x), 1), Gather(Shape(x), 2)))))
    // y = Relu(Reshape(x, target))
    let graph = GraphProto {
        name: "flatten_tail".into(),
        node: vec![
            NodeProto::new("shape", "Shape", &["x"], &["s"]),
            NodeProto::new("g0", "Gather", &["s", "i0"], &["d0"]),
            NodeProto::new("g1", "Gather", &["s", "i1"], &["d1"]),
            NodeProto::new("g2", "Gather", &["s", "i2"], &["d2"]),
            NodeProto::new("mul", "Mul", &["d1", "d2"], &["tail"]),
            NodeProto::new("cast", "Cast", &["tail"], &["tail64"])
                .attr(AttributeProto::int("to", i64::from(data_type::INT64))),
            NodeProto::new("u0", "Unsqueeze", &["d0", "axes"], &["u0"]),
            NodeProto::new("u1", "Unsqueeze", &["tail64", "axes"], &["u1"]),
            NodeProto::new("cat", "Concat", &["u0", "u1"], &["target"])
                .attr(AttributeProto::int("axis", 0)),
            NodeProto::new("reshape", "Reshape", &["x", "target"], &["r"]),
            NodeProto::new("relu", "Relu", &["r"], &["y"]),
        ],
        initializer: vec![
            to_proto("i0", &Tensor::scalar(0i64)),
            to_proto("i1", &Tensor::scalar(1i64)),
            to_proto("i2", &Tensor::scalar(2i64)),
            to_proto("axes", &i64s(&[0])),
        ],
        input: vec![ValueInfoProto::tensor(
            "x",
            data_type::FLOAT,
            &[Err("n"), Ok(3), Ok(4)],
        )],
        output: vec![out("y")],
        ..Default::default()
    };
    let bytes = model_bytes(graph, 13);
    let dir = tempfile::tempdir()?;
    let pkg = dir.path().join("p");
    let x = f32s(&[2, 3, 4], 30);
    let outs = compile_and_run(&bytes, &[vec![x.clone()]], &pkg)?;
    let want: Vec<f64> = vals(&x).into_iter().map(|v| v.max(0.0)).collect();
    assert_close(&outs[0][0], &want, &[2, 12], 0.0);
    // The whole shape computation folded: the only kernel is the relu, and
    // no shape tensor became a global.
    let m = Host::new(HostConfig::default())?.verify(&pkg)?;
    let e = &m.functions[0].entries[0];
    let kernels: Vec<String> = e
        .kernels
        .iter()
        .map(|k| format!("{} {}", k.kernel, serde_json::to_string(&k.attrs).unwrap()))
        .collect();
    assert_eq!(kernels, [r#"unary@1 {"op":"relu"}"#]);
    assert!(e.globals.is_empty(), "{:?}", m.globals);
    Ok(())
}

// ---- an attention-like block ----

#[test]
fn attention_block_with_layer_norm_and_softmax() -> Result<()> {
    let (s, d) = (4usize, 8usize);
    let wq = f32s(&[d, d], 41);
    let wk = f32s(&[d, d], 42);
    let wv = f32s(&[d, d], 43);
    let gamma = f32s(&[d], 44);
    let beta = f32s(&[d], 45);
    let scale = TensorProto {
        data_type: data_type::FLOAT,
        float_data: vec![(d as f32).sqrt()],
        ..Default::default()
    };
    let graph = GraphProto {
        name: "attn".into(),
        node: vec![
            NodeProto::new("q", "MatMul", &["x", "wq"], &["q"]),
            NodeProto::new("k", "MatMul", &["x", "wk"], &["k"]),
            NodeProto::new("v", "MatMul", &["x", "wv"], &["v"]),
            NodeProto::new("kt", "Transpose", &["k"], &["kt"])
                .attr(AttributeProto::ints("perm", &[0, 2, 1])),
            NodeProto::new("scores", "MatMul", &["q", "kt"], &["scores"]),
            NodeProto::new("scale", "Constant", &[], &["scale"])
                .attr(AttributeProto::tensor("value", scale)),
            NodeProto::new("div", "Div", &["scores", "scale"], &["scaled"]),
            NodeProto::new("softmax", "Softmax", &["scaled"], &["p"])
                .attr(AttributeProto::int("axis", -1)),
            NodeProto::new("ctx", "MatMul", &["p", "v"], &["ctx"]),
            NodeProto::new("res", "Add", &["x", "ctx"], &["res"]),
            NodeProto::new(
                "ln",
                "LayerNormalization",
                &["res", "gamma", "beta"],
                &["y"],
            )
            .attr(AttributeProto::int("axis", -1))
            .attr(AttributeProto::float("epsilon", 1e-5)),
        ],
        initializer: vec![
            to_proto("wq", &wq),
            to_proto("wk", &wk),
            to_proto("wv", &wv),
            to_proto("gamma", &gamma),
            to_proto("beta", &beta),
        ],
        input: vec![ValueInfoProto::fixed(
            "x",
            data_type::FLOAT,
            &[1, s as i64, d as i64],
        )],
        output: vec![out("y")],
        ..Default::default()
    };
    let bytes = model_bytes(graph, 17);
    let x = f32s(&[1, s, d], 40);
    let dir = tempfile::tempdir()?;
    let outs = compile_and_run(&bytes, &[vec![x.clone()]], &dir.path().join("p"))?;

    let xv = vals(&x);
    let q = mm(&xv, &vals(&wq), s, d, d);
    let k = mm(&xv, &vals(&wk), s, d, d);
    let v = mm(&xv, &vals(&wv), s, d, d);
    let mut scores = mm(&q, &transpose2(&k, s, d), s, d, s);
    for row in scores.chunks_mut(s) {
        let m = row.iter().copied().fold(f64::MIN, f64::max);
        let z: f64 = row
            .iter()
            .map(|v| (v / (d as f64).sqrt() - m / (d as f64).sqrt()).exp())
            .sum();
        for v in row.iter_mut() {
            *v = (*v / (d as f64).sqrt() - m / (d as f64).sqrt()).exp() / z;
        }
    }
    let ctx = mm(&scores, &v, s, s, d);
    let (g, b) = (vals(&gamma), vals(&beta));
    let mut want = Vec::new();
    for i in 0..s {
        let row: Vec<f64> = (0..d).map(|j| xv[i * d + j] + ctx[i * d + j]).collect();
        let mean = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
        for j in 0..d {
            want.push((row[j] - mean) / (var + 1e-5).sqrt() * g[j] + b[j]);
        }
    }
    assert_close(&outs[0][0], &want, &[1, s, d], 1e-4);
    Ok(())
}

// ---- opset-dependent semantics, end to end ----

#[test]
fn softmax_and_unsqueeze_follow_the_opset() -> Result<()> {
    // y = Softmax(Unsqueeze(x), axis = 1) with x [2, 3]:
    // opset 11: axes attribute [0] -> [1, 2, 3]; softmax over the flattened
    //           [2 x 3] (all six values);
    // opset 13: axes input [0] -> [1, 2, 3]; softmax over axis 1 alone.
    let build = |opset: i64| {
        let mut unsq = NodeProto::new("u", "Unsqueeze", &["x"], &["u"]);
        let mut init = vec![];
        if opset >= 13 {
            unsq.input.push("axes".into());
            init.push(to_proto("axes", &i64s(&[0])));
        } else {
            unsq = unsq.attr(AttributeProto::ints("axes", &[0]));
        }
        let graph = GraphProto {
            name: "g".into(),
            node: vec![
                unsq,
                NodeProto::new("sm", "Softmax", &["u"], &["y"])
                    .attr(AttributeProto::int("axis", 1)),
            ],
            initializer: init,
            input: vec![ValueInfoProto::fixed("x", data_type::FLOAT, &[2, 3])],
            output: vec![out("y")],
            ..Default::default()
        };
        model_bytes(graph, opset)
    };
    let x = f32s(&[2, 3], 50);
    let xv = vals(&x);
    let dir = tempfile::tempdir()?;
    let old = compile_and_run(&build(11), &[vec![x.clone()]], &dir.path().join("old"))?;
    let z: f64 = xv.iter().map(|v| v.exp()).sum();
    let want: Vec<f64> = xv.iter().map(|v| v.exp() / z).collect();
    assert_close(&old[0][0], &want, &[1, 2, 3], 1e-6);
    let new = compile_and_run(&build(13), &[vec![x.clone()]], &dir.path().join("new"))?;
    let want: Vec<f64> = (0..6)
        .map(|i| {
            let c = i % 3;
            xv[i].exp() / (xv[c].exp() + xv[c + 3].exp())
        })
        .collect();
    assert_close(&new[0][0], &want, &[1, 2, 3], 1e-6);
    Ok(())
}

// ---- many small ops ----

#[test]
fn assorted_ops_match_direct_computation() -> Result<()> {
    // x [2, 4]:
    //   clip  = Clip(x, -0.5, 0.5)                (opset 13: bounds as inputs)
    //   mean  = ReduceMean(x, axes=[1], keepdims=0)
    //   sl    = Slice(x, starts=[1], ends=[3], axes=[1])
    //   ex    = Expand(row [1, 4], Shape(x))       -> [2, 4]
    //   wh    = Where(Greater(x, 0), x, ex)
    //   flat  = Flatten(Sqrt(Abs(x)) , axis=0)     -> [1, 8]
    //   rng   = Cast(Range(0, Size(x), 2))         -> f32 [4]: 0, 2, 4, 6
    let row = f32s(&[1, 4], 61);
    let graph = GraphProto {
        name: "misc".into(),
        node: vec![
            NodeProto::new("clip", "Clip", &["x", "lo", "hi"], &["clip"]),
            NodeProto::new("mean", "ReduceMean", &["x"], &["mean"])
                .attr(AttributeProto::ints("axes", &[1]))
                .attr(AttributeProto::int("keepdims", 0)),
            NodeProto::new("slice", "Slice", &["x", "st", "en", "ax"], &["sl"]),
            NodeProto::new("shape", "Shape", &["x"], &["s"]),
            NodeProto::new("expand", "Expand", &["row", "s"], &["ex"]),
            NodeProto::new("zero", "Constant", &[], &["zero"])
                .attr(AttributeProto::float("value_float", 0.0)),
            NodeProto::new("gt", "Greater", &["x", "zero"], &["pos"]),
            NodeProto::new("where", "Where", &["pos", "x", "ex"], &["wh"]),
            NodeProto::new("abs", "Abs", &["x"], &["ax_"]),
            NodeProto::new("sqrt", "Sqrt", &["ax_"], &["sq"]),
            NodeProto::new("flat", "Flatten", &["sq"], &["flat"])
                .attr(AttributeProto::int("axis", 0)),
            NodeProto::new("size", "Size", &["x"], &["n"]),
            NodeProto::new("range", "Range", &["r0", "n", "r2"], &["r"]),
            NodeProto::new("cast", "Cast", &["r"], &["rng"])
                .attr(AttributeProto::int("to", i64::from(data_type::FLOAT))),
        ],
        initializer: vec![
            to_proto("lo", &Tensor::scalar(-0.5f32)),
            to_proto("hi", &Tensor::scalar(0.5f32)),
            to_proto("st", &i64s(&[1])),
            to_proto("en", &i64s(&[3])),
            to_proto("ax", &i64s(&[1])),
            to_proto("row", &row),
            to_proto("r0", &Tensor::scalar(0i64)),
            to_proto("r2", &Tensor::scalar(2i64)),
        ],
        input: vec![ValueInfoProto::fixed("x", data_type::FLOAT, &[2, 4])],
        output: ["clip", "mean", "sl", "wh", "flat", "rng"]
            .iter()
            .map(|n| out(n))
            .collect(),
        ..Default::default()
    };
    let x = f32s(&[2, 4], 60);
    let dir = tempfile::tempdir()?;
    let outs = compile_and_run(
        &model_bytes(graph, 13),
        &[vec![x.clone()]],
        &dir.path().join("p"),
    )?;
    let o = &outs[0];
    let xv = vals(&x);
    let rv = vals(&row);
    assert_close(
        &o[0],
        &xv.iter().map(|v| v.clamp(-0.5, 0.5)).collect::<Vec<_>>(),
        &[2, 4],
        0.0,
    );
    let means: Vec<f64> = xv.chunks(4).map(|r| r.iter().sum::<f64>() / 4.0).collect();
    assert_close(&o[1], &means, &[2], 1e-6);
    let sl: Vec<f64> = xv.chunks(4).flat_map(|r| r[1..3].to_vec()).collect();
    assert_close(&o[2], &sl, &[2, 2], 0.0);
    let wh: Vec<f64> = xv
        .iter()
        .enumerate()
        .map(|(i, &v)| if v > 0.0 { v } else { rv[i % 4] })
        .collect();
    assert_close(&o[3], &wh, &[2, 4], 0.0);
    assert_close(
        &o[4],
        &xv.iter().map(|v| v.abs().sqrt()).collect::<Vec<_>>(),
        &[1, 8],
        1e-6,
    );
    assert_close(&o[5], &[0.0, 2.0, 4.0, 6.0], &[4], 0.0);
    Ok(())
}

/// Negative pads crop: `Pad(x [3, 5], pads = [1, -2, -1, 1])` keeps rows
/// `0..2` and columns `2..5`, then adds a row before and a column after; in
/// `constant` mode the new cells hold the value, in `edge` mode copies of
/// the cropped tensor's border.
#[test]
fn negative_pads_crop_then_pad() -> Result<()> {
    let x = f32s(&[3, 5], 70);
    let xv = vals(&x);
    for mode in ["constant", "edge"] {
        let graph = GraphProto {
            name: "pad".into(),
            node: vec![NodeProto::new("pad", "Pad", &["x", "pads", "v"], &["y"])
                .attr(AttributeProto::string("mode", mode))],
            initializer: vec![
                to_proto("pads", &i64s(&[1, -2, -1, 1])),
                to_proto("v", &Tensor::scalar(9.5f32)),
            ],
            input: vec![ValueInfoProto::fixed("x", data_type::FLOAT, &[3, 5])],
            output: vec![out("y")],
            ..Default::default()
        };
        let dir = tempfile::tempdir()?;
        let outs = compile_and_run(
            &model_bytes(graph, 18),
            &[vec![x.clone()]],
            &dir.path().join("p"),
        )?;
        // The cropped tensor c [2, 3] = x[0..2, 2..5]; y [3, 4].
        let c = |i: usize, j: usize| xv[i * 5 + 2 + j];
        let mut want = Vec::new();
        for i in 0..3 {
            for j in 0..4 {
                let inside = i >= 1 && j < 3;
                want.push(match (inside, mode) {
                    (true, _) => c(i - 1, j),
                    (false, "constant") => 9.5,
                    (false, _) => c(i.max(1) - 1, j.min(2)),
                });
            }
        }
        assert_close(&outs[0][0], &want, &[3, 4], 0.0);
    }
    Ok(())
}

// ---- unsupported ops are all listed ----

#[test]
fn unsupported_nodes_are_listed_together_by_library_and_cli() -> Result<()> {
    let mut custom = NodeProto::new("attn_fused", "Attention", &["p"], &["y"]);
    custom.domain = "com.microsoft".into();
    let graph = GraphProto {
        name: "cnn".into(),
        node: vec![
            NodeProto::new("nms0", "NonMaxSuppression", &["x", "w"], &["c"]),
            NodeProto::new("relu0", "Relu", &["c"], &["r"]),
            NodeProto::new("roi0", "RoiAlign", &["r"], &["p"]),
            custom,
        ],
        initializer: vec![to_proto("w", &f32s(&[2, 1, 3, 3], 70))],
        input: vec![ValueInfoProto::fixed("x", data_type::FLOAT, &[1, 1, 8, 8])],
        output: vec![out("y")],
        ..Default::default()
    };
    let bytes = model_bytes(graph, 13);
    let err = onnx::load(&bytes).unwrap_err();
    let OnnxError::Unsupported { nodes } = &err else {
        panic!("{err}")
    };
    let listed: Vec<(&str, &str, &str, Option<i64>)> = nodes
        .iter()
        .map(|n| {
            (
                n.node.as_str(),
                n.op_type.as_str(),
                n.domain.as_str(),
                n.opset,
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            ("nms0", "NonMaxSuppression", "", Some(13)),
            ("roi0", "RoiAlign", "", Some(13)),
            ("attn_fused", "Attention", "com.microsoft", None),
        ]
    );

    let dir = tempfile::tempdir()?;
    let model = dir.path().join("cnn.onnx");
    std::fs::write(&model, &bytes)?;
    let o = Command::new(env!("CARGO_BIN_EXE_ampoule"))
        .args(["compile", model.to_str().unwrap(), "-o"])
        .arg(dir.path().join("pkg"))
        .output()?;
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    for needle in [
        "the model has 3 unsupported nodes",
        "node `nms0`: op `NonMaxSuppression` (domain `ai.onnx`, opset 13)",
        "node `roi0`: op `RoiAlign` (domain `ai.onnx`, opset 13)",
        "node `attn_fused`: op `Attention` (domain `com.microsoft`, no opset imported)",
    ] {
        assert!(stderr.contains(needle), "missing `{needle}` in:\n{stderr}");
    }
    assert!(!dir.path().join("pkg").exists());
    Ok(())
}

#[test]
fn garbage_bytes_are_an_error_not_a_panic() {
    for bytes in [
        &b"not a model"[..],
        &[0x3a, 0x05, 0x0a, 0x03, 0x0a, 0x01][..],
        &[0xff; 64][..],
    ] {
        assert!(onnx::load(bytes).is_err());
    }
}

// ---- a model written by the `onnx` Python library (1.17.0) ----
//
// The models above are built with the importer's own message types, so they
// cannot catch a wrong field number. This one was made and serialized by the
// reference `onnx` package, and its expected outputs come from
// `onnx.reference.ReferenceEvaluator` (an independent implementation of the
// ops). Regenerate with this script (`pip install onnx==1.17.0`), taking
// `model.onnx` as hex, `x3.pb` as X and the evaluator's outputs for it:
//
// import numpy as np
// import onnx
// from onnx import helper, numpy_helper, TensorProto
// from onnx.reference import ReferenceEvaluator
//
// rng = np.random.default_rng(0)
// W = rng.standard_normal((12, 6)).astype(np.float32)   # Gemm transB
// B = rng.standard_normal((12,)).astype(np.float32)
// G = rng.standard_normal((3,)).astype(np.float32)
// Bt = rng.standard_normal((3,)).astype(np.float32)
// inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B"),
//          numpy_helper.from_array(G, "gamma"), numpy_helper.from_array(Bt, "beta"),
//          numpy_helper.from_array(np.array([0], np.int64), "zero"),
//          numpy_helper.from_array(np.array([4, 3], np.int64), "tail"),
//          numpy_helper.from_array(np.array([-1], np.int64), "axes_last"),
//          numpy_helper.from_array(np.array([6, 6], np.int64), "split")]
// nodes = [
//     helper.make_node("Gemm", ["x", "W", "B"], ["h"], transB=1, name="fc"),
//     helper.make_node("Relu", ["h"], ["r"], name="relu"),
//     helper.make_node("Shape", ["x"], ["s"], name="shape"),
//     helper.make_node("Gather", ["s", "zero"], ["n"], name="gather", axis=0),
//     helper.make_node("Concat", ["n", "tail"], ["target"], name="cat", axis=0),
//     helper.make_node("Reshape", ["r", "target"], ["r3"], name="reshape"),
//     helper.make_node("Softmax", ["r3"], ["p"], name="softmax", axis=-1),
//     helper.make_node("LayerNormalization", ["r3", "gamma", "beta"], ["ln"], name="ln", axis=-1, epsilon=1e-5),
//     helper.make_node("Constant", [], ["half"], name="half", value=numpy_helper.from_array(np.array(0.5, np.float32))),
//     helper.make_node("Greater", ["ln", "half"], ["mask"], name="gt"),
//     helper.make_node("Where", ["mask", "p", "ln"], ["w"], name="where"),
//     helper.make_node("ReduceMean", ["w", "axes_last"], ["m"], name="mean", keepdims=1),
//     helper.make_node("Sub", ["w", "m"], ["c"], name="center"),
//     helper.make_node("Transpose", ["c"], ["t"], name="tr", perm=[0, 2, 1]),
//     helper.make_node("Split", ["h", "split"], ["h1", "h2"], name="split", axis=1),
//     helper.make_node("Mul", ["h1", "h2"], ["hh"], name="mul"),
//     helper.make_node("Tanh", ["hh"], ["y2"], name="tanh"),
// ]
// graph = helper.make_graph(nodes, "realistic",
//     [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
//     [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["N", 3, 4]),
//      helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", 6])],
//     inits)
// model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
// onnx.checker.check_model(model)
// onnx.save(model, "model.onnx")
// ref = ReferenceEvaluator(model)
// for n in (3, 5):
//     x = rng.standard_normal((n, 6)).astype(np.float32)
//     open(f"x{n}.pb", "wb").write(numpy_helper.from_array(x, "x").SerializeToString())
//     t, y2 = ref.run(None, {"x": x})
//     np.save(f"t{n}_ref.npy", t); np.save(f"y2{n}_ref.npy", y2)
// print("ok", onnx.__version__)

const MODEL_HEX: &str = concat!(
    "080a3af4090a250a01780a01570a01421201681a026663220447656d6d2a0d0a067472616e73421801a001020a120a01",
    "681201721a0472656c75220452656c750a140a01781201731a057368617065220553686170650a290a01730a047a6572",
    "6f12016e1a0667617468657222064761746865722a0b0a04617869731800a001020a2b0a016e0a047461696c12067461",
    "726765741a036361742206436f6e6361742a0b0a04617869731800a001020a210a01720a06746172676574120272331a",
    "07726573686170652207526573686170650a2f0a0272331201701a07736f66746d61782207536f66746d61782a140a04",
    "6178697318ffffffffffffffffff01a001020a560a0272330a0567616d6d610a046265746112026c6e1a026c6e22124c",
    "617965724e6f726d616c697a6174696f6e2a140a046178697318ffffffffffffffffff01a001022a110a07657073696c",
    "6f6e15acc52737a001010a2c120468616c661a0468616c662208436f6e7374616e742a140a0576616c75652a0810014a",
    "040000003fa001040a1d0a026c6e0a0468616c6612046d61736b1a0267742207477265617465720a1e0a046d61736b0a",
    "01700a026c6e1201771a057768657265220557686572650a340a01770a09617865735f6c61737412016d1a046d65616e",
    "220a5265647563654d65616e2a0f0a086b65657064696d731801a001020a160a01770a016d1201631a0663656e746572",
    "22035375620a260a01631201741a02747222095472616e73706f73652a0f0a047065726d400040024001a001070a2d0a",
    "01680a0573706c697412026831120268321a0573706c6974220553706c69742a0b0a04617869731801a001020a160a02",
    "68310a026832120268681a036d756c22034d756c0a140a026868120279321a0474616e68220454616e6812097265616c",
    "69737469632aac02080c080610014201574aa0026cbf003e7f4607bebdf2233fdfd5d63da12109bffd22b93e79e9a63f",
    "e673723ffe2734bf55f9a1bfea8e1fbf6e45293d4ecd14c0ec0a60be037a9fbfe0753bbf8f540bbf18f2a1be3dc1d23e",
    "1471853f979e03be46e8ae3f334a2abf21f9b33ed249673f8589c03df8553ebf32f66bbf0a5beabed57a613e2b3b81bf",
    "1f3256bee20b23bedb740a3f9acf5b3e69f3b53e506127bf70b904be9eb2483fc028bf3f0f29a1bf41c8c13fa545ac3f",
    "0604483fba66873e7ebaa0be6ca0ba3fbfe9fa3ff99be63f5255a83f91fab63e2faa9abffaf391bbbe0e283f07e9a4bf",
    "704dca3e1817dc3edb2f323f2d9197bf576529bf7174dfbe12bc95bf9ba3de3f03e8fdbeb56ea83e9f6384be3dafca3f",
    "9701a93f6623223f4e060dc0551c553d0f062f3f2a39080c10014201424a30d081803f282f1ebfab37e93fe203a9bfe7",
    "5929bf705f6f3f7eed483d332700402d0b413e021922bf0150c1beadaa8bbf2a1908031001420567616d6d614a0c068b",
    "a3bfa662213f48c7143f2a18080310014204626574614a0c1ab4a53fd82d41bfac34d83f2a140801100742047a65726f",
    "4a0800000000000000002a1c0802100742047461696c4a10040000000000000003000000000000002a19080110074209",
    "617865735f6c6173744a08ffffffffffffffff2a1d08021007420573706c69744a100600000000000000060000000000",
    "00005a140a0178120f0a0d080112090a0312014e0a02080662180a017412130a110801120d0a0312014e0a0208030a02",
    "080462150a027932120f0a0d080112090a0312014e0a02080642040a001012",
);
const X: [f32; 18] = [
    -0.2873876988887787,
    1.5744082927703857,
    -0.43278583884239197,
    -0.7354832887649536,
    0.249785378575325,
    1.0314531326293945,
    0.16100957989692688,
    -0.5855288505554199,
    -1.3412196636199951,
    -1.4015202522277832,
    0.5026828646659851,
    0.9897130131721497,
    -0.16429458558559418,
    -1.0743649005889893,
    0.8730421662330627,
    -1.2803939580917358,
    -0.7130680680274963,
    0.6210178732872009,
];
const T_REF: [f32; 36] = [
    0.08915644139051437,
    0.25951650738716125,
    -0.019604140892624855,
    0.15321731567382812,
    -0.7891038656234741,
    -0.8499600291252136,
    -0.056128039956092834,
    -1.1119749546051025,
    0.6999474167823792,
    0.5904435515403748,
    0.07573218643665314,
    0.9587576985359192,
    0.020759213715791702,
    -0.019467443227767944,
    -0.03729506954550743,
    0.2970808148384094,
    -0.8919157981872559,
    -0.10365927219390869,
    0.035591017454862595,
    -1.0760060548782349,
    0.871156632900238,
    0.12312671542167664,
    0.001704048365354538,
    0.7789252400398254,
    0.6289215683937073,
    0.38475146889686584,
    0.04864591360092163,
    -0.03791165351867676,
    -1.4110137224197388,
    -0.9657714366912842,
    -0.06271795928478241,
    -0.01482325792312622,
    0.7820921540260315,
    0.5810199975967407,
    0.014072030782699585,
    0.05273491144180298,
];
const Y2_REF: [f32; 18] = [
    -0.101350337266922,
    0.9999999403953552,
    0.9999999403953552,
    0.6199252009391785,
    -0.7186141610145569,
    0.9882124662399292,
    -0.39370205998420715,
    0.9999969601631165,
    0.9999812841415405,
    1.0,
    -0.9877283573150635,
    0.7929602861404419,
    0.9606114029884338,
    -0.5749441385269165,
    0.9526300430297852,
    0.9978382587432861,
    0.22175639867782593,
    0.505930483341217,
];

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

#[test]
fn model_serialized_by_the_onnx_library_matches_its_reference_evaluator() -> Result<()> {
    let bytes = unhex(MODEL_HEX);
    let model = onnx::load(&bytes)?;
    assert_eq!(model.opsets().get(""), Some(&18));
    assert_eq!(model.outputs(), ["t", "y2"]);
    let dir = tempfile::tempdir()?;
    let pkg = dir.path().join("p");
    let x = Tensor::from_vec(&[3, 6], X.to_vec())?;
    let outs = compile_and_run(&bytes, &[vec![x]], &pkg)?;
    let want = |r: &[f32]| r.iter().map(|&v| f64::from(v)).collect::<Vec<f64>>();
    assert_close(&outs[0][0], &want(&T_REF), &[3, 3, 4], 1e-5);
    assert_close(&outs[0][1], &want(&Y2_REF), &[3, 6], 1e-5);
    // Shape -> Gather -> Concat -> Reshape folded; the weight kept its name.
    let m = Host::new(HostConfig::default())?.verify(&pkg)?;
    let kernels: Vec<&str> = m.functions[0].entries[0]
        .kernels
        .iter()
        .map(|k| k.kernel.as_str())
        .collect();
    assert!(
        !kernels.contains(&"gather@1") && !kernels.contains(&"concat@1"),
        "{kernels:?}"
    );
    assert_eq!(m.globals[0].name, "W");
    Ok(())
}

// ---- a small CNN: Conv (groups, stride, pads, bias) + BatchNormalization +
// PRelu + MaxPool + GlobalAveragePool, checked against direct loops ----

/// `x [N, C, H, W]` convolved with `w [M, C/g, KH, KW]` (ONNX Conv), in f64.
#[allow(clippy::too_many_arguments)]
fn direct_conv(
    x: &[f64],
    [n, c, h, wd]: [usize; 4],
    w: &[f64],
    [m, cg, kh, kw]: [usize; 4],
    b: &[f64],
    group: usize,
    stride: usize,
    pad: usize,
) -> (Vec<f64>, [usize; 4]) {
    let oh = (h + 2 * pad - kh) / stride + 1;
    let ow = (wd + 2 * pad - kw) / stride + 1;
    let mut y = vec![0.0; n * m * oh * ow];
    for bi in 0..n {
        for mo in 0..m {
            let g = mo / (m / group);
            for i in 0..oh {
                for j in 0..ow {
                    let mut acc = b[mo];
                    for ci in 0..cg {
                        for p in 0..kh {
                            for q in 0..kw {
                                let (r, s) = (
                                    (i * stride + p) as i64 - pad as i64,
                                    (j * stride + q) as i64 - pad as i64,
                                );
                                if r >= 0 && s >= 0 && (r as usize) < h && (s as usize) < wd {
                                    acc += x[((bi * c + g * cg + ci) * h + r as usize) * wd
                                        + s as usize]
                                        * w[((mo * cg + ci) * kh + p) * kw + q];
                                }
                            }
                        }
                    }
                    y[((bi * m + mo) * oh + i) * ow + j] = acc;
                }
            }
        }
    }
    (y, [n, m, oh, ow])
}

#[test]
fn small_cnn_with_conv_batchnorm_prelu_and_pools() -> Result<()> {
    let w = f32s(&[6, 2, 3, 3], 21);
    let b = f32s(&[6], 22);
    let scale = f32s(&[6], 23);
    let shift = f32s(&[6], 24);
    let mean = f32s(&[6], 25);
    let var = Tensor::from_vec(
        &[6],
        vals(&f32s(&[6], 26))
            .iter()
            .map(|v| (v.abs() + 0.5) as f32)
            .collect(),
    )?;
    let slope = f32s(&[6, 1, 1], 27);
    let graph = GraphProto {
        name: "cnn".into(),
        node: vec![
            NodeProto::new("conv", "Conv", &["x", "w", "b"], &["c"])
                .attr(AttributeProto::int("group", 2))
                .attr(AttributeProto::ints("kernel_shape", &[3, 3]))
                .attr(AttributeProto::ints("strides", &[2, 2]))
                .attr(AttributeProto::ints("pads", &[1, 1, 1, 1])),
            NodeProto::new(
                "bn",
                "BatchNormalization",
                &["c", "scale", "shift", "mean", "var"],
                &["n"],
            )
            .attr(AttributeProto::float("epsilon", 1e-3)),
            NodeProto::new("act", "PRelu", &["n", "slope"], &["a"]),
            NodeProto::new("pool", "MaxPool", &["a"], &["p"])
                .attr(AttributeProto::ints("kernel_shape", &[2, 2])),
            NodeProto::new("gap", "GlobalAveragePool", &["p"], &["y"]),
        ],
        initializer: vec![
            to_proto("w", &w),
            to_proto("b", &b),
            to_proto("scale", &scale),
            to_proto("shift", &shift),
            to_proto("mean", &mean),
            to_proto("var", &var),
            to_proto("slope", &slope),
        ],
        input: vec![ValueInfoProto::tensor(
            "x",
            data_type::FLOAT,
            &[Ok(2), Ok(4), Ok(7), Ok(6)],
        )],
        output: vec![out("p"), out("y")],
        ..Default::default()
    };
    let bytes = model_bytes(graph, 13);
    let dir = tempfile::tempdir()?;
    let x = f32s(&[2, 4, 7, 6], 28);
    let outs = compile_and_run(&bytes, &[vec![x.clone()]], &dir.path().join("cnn"))?;

    let (conv, [n, m, oh, ow]) = direct_conv(
        &vals(&x),
        [2, 4, 7, 6],
        &vals(&w),
        [6, 2, 3, 3],
        &vals(&b),
        2,
        2,
        1,
    );
    assert_eq!([oh, ow], [4, 3]);
    let (sc, sh, mu, va, sl) = (
        vals(&scale),
        vals(&shift),
        vals(&mean),
        vals(&var),
        vals(&slope),
    );
    let act: Vec<f64> = conv
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let ch = i / (oh * ow) % m;
            let t = (v - mu[ch]) / (va[ch] + 1e-3).sqrt() * sc[ch] + sh[ch];
            if t < 0.0 {
                t * sl[ch]
            } else {
                t
            }
        })
        .collect();
    let (ph, pw) = (oh - 1, ow - 1);
    let mut pooled = vec![0.0; n * m * ph * pw];
    for plane in 0..n * m {
        for i in 0..ph {
            for j in 0..pw {
                let at = |r: usize, c: usize| act[plane * oh * ow + r * ow + c];
                pooled[(plane * ph + i) * pw + j] = at(i, j)
                    .max(at(i + 1, j))
                    .max(at(i, j + 1))
                    .max(at(i + 1, j + 1));
            }
        }
    }
    let gap: Vec<f64> = pooled
        .chunks(ph * pw)
        .map(|c| c.iter().sum::<f64>() / c.len() as f64)
        .collect();
    assert_close(&outs[0][0], &pooled, &[2, 6, 3, 2], 1e-4);
    assert_close(&outs[0][1], &gap, &[2, 6, 1, 1], 1e-4);
    // The batch norm statistics folded into per-channel constants: one
    // mul and one add remain around the conv.
    let m = Host::new(HostConfig::default())?.verify(&dir.path().join("cnn"))?;
    let kernels: Vec<&str> = m.functions[0].entries[0]
        .kernels
        .iter()
        .map(|k| k.kernel.as_str())
        .collect();
    assert!(
        kernels.contains(&"conv@1") && kernels.contains(&"pool@1"),
        "{kernels:?}"
    );
    assert!(
        !kernels.contains(&"unary@1"),
        "sqrt(var + eps) was not folded: {kernels:?}"
    );
    Ok(())
}

// ---- ConvTranspose + Resize + ArgMax + CumSum + GatherElements ----

#[test]
fn conv_transpose_resize_and_index_ops() -> Result<()> {
    let w = f32s(&[2, 3, 2, 2], 31);
    let scales = Tensor::from_vec(&[4], vec![1.0f32, 1.0, 0.5, 0.5])?;
    let axis = Tensor::scalar(2i64);
    let idx = Tensor::from_vec(
        &[1, 3, 3, 2],
        (0..18).map(|i| (i * 7 % 3) as i64 - 1).collect(),
    )?;
    let graph = GraphProto {
        name: "up".into(),
        node: vec![
            NodeProto::new("up", "ConvTranspose", &["x", "w"], &["u"])
                .attr(AttributeProto::ints("strides", &[2, 2])),
            NodeProto::new("rs", "Resize", &["u", "", "scales"], &["r"])
                .attr(AttributeProto::string(
                    "coordinate_transformation_mode",
                    "asymmetric",
                ))
                .attr(AttributeProto::string("nearest_mode", "floor")),
            NodeProto::new("am", "ArgMax", &["r"], &["a"])
                .attr(AttributeProto::int("axis", 1))
                .attr(AttributeProto::int("keepdims", 0)),
            NodeProto::new("cs", "CumSum", &["r", "axis"], &["c"]),
            NodeProto::new("ge", "GatherElements", &["r", "idx"], &["g"])
                .attr(AttributeProto::int("axis", 3)),
        ],
        initializer: vec![
            to_proto("w", &w),
            to_proto("scales", &scales),
            to_proto("axis", &axis),
            to_proto("idx", &idx),
        ],
        input: vec![ValueInfoProto::tensor(
            "x",
            data_type::FLOAT,
            &[Ok(1), Ok(2), Ok(3), Ok(3)],
        )],
        output: vec![out("a"), out("c"), out("g")],
        ..Default::default()
    };
    let bytes = model_bytes(graph, 13);
    let dir = tempfile::tempdir()?;
    let x = f32s(&[1, 2, 3, 3], 32);
    let outs = compile_and_run(&bytes, &[vec![x.clone()]], &dir.path().join("up"))?;

    // Stride-2 transposed conv with a 2x2 kernel: each input pixel writes
    // its own 2x2 block, u[m, 2i + p, 2j + q] = sum_c x[c, i, j] w[c, m, p, q].
    let (xv, wv) = (vals(&x), vals(&w));
    let u = |m: usize, r: usize, s: usize| -> f64 {
        (0..2)
            .map(|c| xv[(c * 3 + r / 2) * 3 + s / 2] * wv[((c * 3 + m) * 2 + r % 2) * 2 + s % 2])
            .sum()
    };
    // Nearest, asymmetric, floor, scale 1/2: r[m, i, j] = u[m, 2i, 2j] = the p = q = 0 tap.
    let r: Vec<f64> = (0..27)
        .map(|k| u(k / 9, k / 3 % 3 * 2, k % 3 * 2))
        .collect();
    let argmax: Vec<i64> = (0..9)
        .map(|p| {
            (0..3).fold(0, |best, m| {
                if r[m * 9 + p] > r[best * 9 + p] {
                    m
                } else {
                    best
                }
            }) as i64
        })
        .collect();
    assert_eq!(outs[0][0].shape(), [1, 3, 3]);
    assert_eq!(outs[0][0].to_vec::<i64>()?, argmax);
    let cumsum: Vec<f64> = (0..27)
        .map(|k| (0..=k / 3 % 3).map(|i| r[k / 9 * 9 + i * 3 + k % 3]).sum())
        .collect();
    assert_close(&outs[0][1], &cumsum, &[1, 3, 3, 3], 1e-5);
    let iv = idx.to_vec::<i64>()?;
    let gathered: Vec<f64> = (0..18)
        .map(|k| {
            let row = k / 2;
            r[row * 3 + iv[k].rem_euclid(3) as usize]
        })
        .collect();
    assert_close(&outs[0][2], &gathered, &[1, 3, 3, 2], 1e-5);
    Ok(())
}

// ---- control flow: If and Loop as wrapper control flow, or folded ----

fn scalar_f32(name: &str, v: f32) -> TensorProto {
    to_proto(name, &Tensor::scalar(v))
}

/// A subgraph with no inputs (an `If` branch) or with `inputs` (a `Loop`
/// body), giving `outputs`.
fn subgraph(
    name: &str,
    nodes: Vec<NodeProto>,
    inputs: &[&str],
    outputs: &[&str],
    inits: Vec<TensorProto>,
) -> GraphProto {
    GraphProto {
        name: name.into(),
        node: nodes,
        input: inputs.iter().map(|i| out(i)).collect(),
        output: outputs.iter().map(|o| out(o)).collect(),
        initializer: inits,
        ..Default::default()
    }
}

/// Compiles `bytes` into one entry for `example`, reopens the package with
/// a fresh host and runs every set through that entry.
fn one_entry(bytes: &[u8], example: &[Tensor], sets: &[Vec<Tensor>]) -> Result<Vec<Vec<Tensor>>> {
    let dir = tempfile::tempdir()?;
    let model = onnx::load(bytes)?;
    let mut c = Compiler::builder(Host::new(HostConfig::default())?)
        .function(model.function("forward"))
        .create()?;
    let ex: Vec<Example> = example.iter().map(Example::of).collect();
    c.compile("forward", &ex)?;
    c.save(dir.path())?;
    let pkg = Host::new(HostConfig::default())?.open(dir.path(), Bindings::new())?;
    assert_eq!(pkg.manifest().function("forward").unwrap().entries.len(), 1);
    sets.iter().map(|s| Ok(pkg.call("forward", s)?)).collect()
}

/// Whether the traced graph of `bytes` for `example` has a wrapper `If`
/// or `While` at its top level.
fn has_control_flow(bytes: &[u8], example: &[Tensor]) -> Result<(bool, bool)> {
    use ampoule::compiler::ir::Op;
    let model = onnx::load(bytes)?;
    let ex: Vec<Example> = example.iter().map(Example::of).collect();
    let t = model.function("forward").trace(
        &ex,
        &ampoule::kernels::Registry::standard(),
        &Default::default(),
    )?;
    let ifs = t.graph.nodes.iter().any(|n| matches!(n.op, Op::If { .. }));
    let loops = t
        .graph
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::While { .. }));
    Ok((ifs, loops))
}

/// `y = sum(x) > 0 ? 2x + w : (x[0] > 0 ? x - w : x * w)`: the outer
/// condition and the nested one come from data; `w` is an outer-scope
/// initializer read inside both levels, `two` an initializer of a branch.
fn nested_if_model() -> (Vec<u8>, Vec<f32>) {
    let w = vec![0.5f32, -1.0, 2.0, 0.25];
    let then_g = subgraph(
        "then",
        vec![
            NodeProto::new("dbl", "Mul", &["x", "two"], &["t2"]),
            NodeProto::new("addw", "Add", &["t2", "w"], &["y_then"]),
        ],
        &[],
        &["y_then"],
        vec![scalar_f32("two", 2.0)],
    );
    let inner_then = subgraph(
        "inner_then",
        vec![NodeProto::new("subw", "Sub", &["x", "w"], &["a"])],
        &[],
        &["a"],
        vec![],
    );
    let inner_else = subgraph(
        "inner_else",
        vec![NodeProto::new("mulw", "Mul", &["x", "w"], &["b"])],
        &[],
        &["b"],
        vec![],
    );
    let else_g = subgraph(
        "else",
        vec![
            NodeProto::new("first", "Gather", &["x", "zero_i"], &["x0"]),
            NodeProto::new("pos0", "Greater", &["x0", "zero"], &["c2"]),
            NodeProto::new("inner_if", "If", &["c2"], &["y_else"])
                .attr(AttributeProto::graph("then_branch", inner_then))
                .attr(AttributeProto::graph("else_branch", inner_else)),
        ],
        &[],
        &["y_else"],
        vec![],
    );
    let graph = GraphProto {
        name: "nested_if".into(),
        node: vec![
            NodeProto::new("sum", "ReduceSum", &["x"], &["s"])
                .attr(AttributeProto::int("keepdims", 0)),
            NodeProto::new("pos", "Greater", &["s", "zero"], &["c"]),
            NodeProto::new("outer_if", "If", &["c"], &["y"])
                .attr(AttributeProto::graph("then_branch", then_g))
                .attr(AttributeProto::graph("else_branch", else_g)),
        ],
        initializer: vec![
            to_proto("w", &Tensor::from_vec(&[4], w.clone()).unwrap()),
            scalar_f32("zero", 0.0),
            to_proto("zero_i", &Tensor::scalar(0i64)),
        ],
        input: vec![ValueInfoProto::fixed("x", data_type::FLOAT, &[4])],
        output: vec![out("y")],
        ..Default::default()
    };
    (model_bytes(graph, 13), w)
}

#[test]
fn if_on_data_runs_every_branch_of_nested_ifs_from_one_entry() -> Result<()> {
    let (bytes, w) = nested_if_model();
    let xs = [
        vec![1.0f32, 2.0, -0.5, 3.0],
        vec![0.5f32, -2.0, -0.5, -3.0],
        vec![-1.0f32, -2.0, 0.5, -3.0],
    ];
    let sets: Vec<Vec<Tensor>> = xs
        .iter()
        .map(|x| vec![Tensor::from_vec(&[4], x.clone()).unwrap()])
        .collect();
    let (ifs, _) = has_control_flow(&bytes, &sets[0])?;
    assert!(ifs, "a condition computed from data stays a wrapper If");
    let outs = one_entry(&bytes, &sets[0], &sets)?;
    for (x, o) in xs.iter().zip(&outs) {
        let sum: f32 = x.iter().sum();
        let want: Vec<f64> = x
            .iter()
            .zip(&w)
            .map(|(&a, &b)| {
                f64::from(if sum > 0.0 {
                    a * 2.0 + b
                } else if x[0] > 0.0 {
                    a - b
                } else {
                    a * b
                })
            })
            .collect();
        assert_close(&o[0], &want, &[4], 0.0);
    }
    Ok(())
}

/// `If(Shape(x)[0] == 2)`: then `Relu(x)`, else `Neg(x)` as one row. The
/// branches differ in shape, which is fine once the condition folds.
fn shape_if_model() -> Vec<u8> {
    let then_g = subgraph(
        "then",
        vec![NodeProto::new("relu", "Relu", &["x"], &["r"])],
        &[],
        &["r"],
        vec![],
    );
    let else_g = subgraph(
        "else",
        vec![
            NodeProto::new("neg", "Neg", &["x"], &["n"]),
            NodeProto::new("flat", "Reshape", &["n", "minus1"], &["nf"]),
        ],
        &[],
        &["nf"],
        vec![],
    );
    let graph = GraphProto {
        name: "shape_if".into(),
        node: vec![
            NodeProto::new("shape", "Shape", &["x"], &["s"]),
            NodeProto::new("rows", "Gather", &["s", "zero_i"], &["d"]),
            NodeProto::new("is2", "Equal", &["d", "two_i"], &["c"]),
            NodeProto::new("fold_me", "If", &["c"], &["y"])
                .attr(AttributeProto::graph("then_branch", then_g))
                .attr(AttributeProto::graph("else_branch", else_g)),
        ],
        initializer: vec![
            to_proto("zero_i", &Tensor::scalar(0i64)),
            to_proto("two_i", &Tensor::scalar(2i64)),
            to_proto("minus1", &i64s(&[1, -1])),
        ],
        input: vec![ValueInfoProto::tensor(
            "x",
            data_type::FLOAT,
            &[Err("n"), Ok(3)],
        )],
        output: vec![out("y")],
        ..Default::default()
    };
    model_bytes(graph, 13)
}

#[test]
fn if_with_a_condition_known_at_compile_time_folds() -> Result<()> {
    let bytes = shape_if_model();
    let (a, b) = (f32s(&[2, 3], 7), f32s(&[3, 3], 8));
    for x in [&a, &b] {
        let (ifs, _) = has_control_flow(&bytes, std::slice::from_ref(x))?;
        assert!(!ifs, "a known condition leaves no wrapper If");
    }
    let dir = tempfile::tempdir()?;
    let outs = compile_and_run(&bytes, &[vec![a.clone()], vec![b.clone()]], dir.path())?;
    let relu: Vec<f64> = vals(&a).iter().map(|v| v.max(0.0)).collect();
    assert_close(&outs[0][0], &relu, &[2, 3], 0.0);
    let neg: Vec<f64> = vals(&b).iter().map(|v| -v).collect();
    assert_close(&outs[1][0], &neg, &[1, 9], 0.0);

    // The same branches under a condition from data cannot agree on a
    // shape: the error names the node and both shapes.
    let mut g = ModelProto::decode(bytes.as_slice())?.graph.unwrap();
    g.node[2] = NodeProto::new("is2", "Greater", &["x00", "zero_f"], &["c"]);
    g.node.insert(
        2,
        NodeProto::new("sum", "ReduceSum", &["x"], &["x00"])
            .attr(AttributeProto::int("keepdims", 0)),
    );
    g.initializer.push(scalar_f32("zero_f", 0.0));
    let data_bytes = model_bytes(g, 13);
    let err = has_control_flow(&data_bytes, std::slice::from_ref(&a)).unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("fold_me") && text.contains("different outputs"),
        "{text}"
    );
    assert!(
        text.contains("f32[2, 3]") && text.contains("f32[1, 6]"),
        "{text}"
    );
    Ok(())
}

/// `v = x; for i in 0..n { v = v * 0.5 + i }`, with `n` an input (a trip
/// count known only at run time), and a second loop with no trip count:
/// `while sum(u) < 100 { u = u * 2 }`.
fn data_loop_model() -> Vec<u8> {
    let body = subgraph(
        "body",
        vec![
            NodeProto::new("half", "Mul", &["v_in", "half_c"], &["vh"]),
            NodeProto::new("fi", "Cast", &["i"], &["i_f"])
                .attr(AttributeProto::int("to", data_type::FLOAT as i64)),
            NodeProto::new("addi", "Add", &["vh", "i_f"], &["v_out"]),
            NodeProto::new("keep", "Identity", &["c_in"], &["c_out"]),
        ],
        &["i", "c_in", "v_in"],
        &["c_out", "v_out"],
        vec![scalar_f32("half_c", 0.5)],
    );
    let body2 = subgraph(
        "body2",
        vec![
            NodeProto::new("dbl", "Mul", &["u_in", "two"], &["u_out"]),
            NodeProto::new("s2", "ReduceSum", &["u_out"], &["su"])
                .attr(AttributeProto::int("keepdims", 0)),
            NodeProto::new("lt2", "Less", &["su", "limit"], &["c2_out"]),
        ],
        &["j", "c2_in", "u_in"],
        &["c2_out", "u_out"],
        vec![],
    );
    let graph = GraphProto {
        name: "loops".into(),
        node: vec![
            NodeProto::new("count_loop", "Loop", &["n", "", "x"], &["v"])
                .attr(AttributeProto::graph("body", body)),
            NodeProto::new("s0", "ReduceSum", &["x"], &["sx"])
                .attr(AttributeProto::int("keepdims", 0)),
            NodeProto::new("lt0", "Less", &["sx", "limit"], &["c0"]),
            NodeProto::new("while_loop", "Loop", &["", "c0", "x"], &["u"])
                .attr(AttributeProto::graph("body", body2)),
        ],
        initializer: vec![scalar_f32("two", 2.0), scalar_f32("limit", 100.0)],
        input: vec![
            ValueInfoProto::fixed("n", data_type::INT64, &[]),
            ValueInfoProto::fixed("x", data_type::FLOAT, &[3]),
        ],
        output: vec![out("v"), out("u")],
        ..Default::default()
    };
    model_bytes(graph, 13)
}

#[test]
fn loop_with_a_data_dependent_trip_count_runs_in_the_wrapper() -> Result<()> {
    let bytes = data_loop_model();
    let x = Tensor::from_vec(&[3], vec![1.0f32, -2.0, 4.0])?;
    let sets: Vec<Vec<Tensor>> = [0i64, 1, 5, 12]
        .iter()
        .map(|&n| vec![Tensor::scalar(n), x.clone()])
        .collect();
    let (_, loops) = has_control_flow(&bytes, &sets[0])?;
    assert!(loops, "a trip count from data is a wrapper loop");
    let outs = one_entry(&bytes, &sets[0], &sets)?;
    let xv = vals(&x);
    for (set, o) in sets.iter().zip(&outs) {
        let n = set[0].to_vec::<i64>()?[0];
        let mut v = xv.clone();
        for i in 0..n {
            for e in v.iter_mut() {
                *e = *e * 0.5 + i as f64;
            }
        }
        assert_close(&o[0], &v, &[3], 1e-6);
        let mut u = xv.clone();
        while u.iter().sum::<f64>() < 100.0 {
            for e in u.iter_mut() {
                *e *= 2.0;
            }
        }
        assert_close(&o[1], &u, &[3], 0.0);
    }
    Ok(())
}

#[test]
fn loop_with_a_known_trip_count_unrolls_and_stacks_scan_outputs() -> Result<()> {
    // for i in 0..4 { acc = acc + x * i; scan_i = acc }
    let body = subgraph(
        "body",
        vec![
            NodeProto::new("fi", "Cast", &["i"], &["i_f"])
                .attr(AttributeProto::int("to", data_type::FLOAT as i64)),
            NodeProto::new("xi", "Mul", &["x", "i_f"], &["t"]),
            NodeProto::new("acc", "Add", &["a_in", "t"], &["a_out"]),
            NodeProto::new("scan", "Identity", &["a_out"], &["s_out"]),
            NodeProto::new("keep", "Identity", &["c_in"], &["c_out"]),
        ],
        &["i", "c_in", "a_in"],
        &["c_out", "a_out", "s_out"],
        vec![],
    );
    let graph = GraphProto {
        name: "scan_loop".into(),
        node: vec![
            NodeProto::new("unrolled", "Loop", &["m", "yes", "a0"], &["a", "stack"])
                .attr(AttributeProto::graph("body", body)),
        ],
        initializer: vec![
            to_proto("m", &Tensor::scalar(4i64)),
            to_proto("yes", &Tensor::scalar(ampoule::kernels::Bool8(1))),
            to_proto("a0", &Tensor::from_vec(&[2], vec![0.0f32, 1.0])?),
        ],
        input: vec![ValueInfoProto::fixed("x", data_type::FLOAT, &[2])],
        output: vec![out("a"), out("stack")],
        ..Default::default()
    };
    let bytes = model_bytes(graph, 16);
    let x = f32s(&[2], 3);
    let (ifs, loops) = has_control_flow(&bytes, std::slice::from_ref(&x))?;
    assert!(!ifs && !loops, "a known trip count unrolls");
    let outs = one_entry(&bytes, std::slice::from_ref(&x), &[vec![x.clone()]])?;
    let xv = vals(&x);
    let mut acc = vec![0.0, 1.0];
    let mut stack = Vec::new();
    for i in 0..4 {
        for (a, b) in acc.iter_mut().zip(&xv) {
            *a += b * f64::from(i);
        }
        stack.extend_from_slice(&acc);
    }
    assert_close(&outs[0][0], &acc, &[2], 1e-6);
    assert_close(&outs[0][1], &stack, &[4, 2], 1e-6);
    Ok(())
}

// ---- LSTM and GRU, unrolled, against a direct computation ----

fn sigmoid(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

/// One direction of an ONNX LSTM (`gru == false`, gates iofc) or GRU
/// (`gru == true`, gates zrh) over `x` [seq][batch][input], with `w`
/// [G*H][I], `r` [G*H][H], `b` [2*G*H]; returns every step's h (in time
/// order) and the final h and c.
#[allow(clippy::too_many_arguments)]
fn rnn_direction(
    gru: bool,
    lbr: bool,
    x: &[Vec<Vec<f64>>],
    w: &[f64],
    r: &[f64],
    b: &[f64],
    h0: Vec<Vec<f64>>,
    c0: Vec<Vec<f64>>,
    reverse: bool,
) -> (Vec<Vec<Vec<f64>>>, Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let (seq, batch, input) = (x.len(), x[0].len(), x[0][0].len());
    let hid = h0[0].len();
    let g = if gru { 3 } else { 4 };
    let dot = |m: &[f64], row: usize, v: &[f64]| -> f64 {
        (0..v.len()).map(|k| m[row * v.len() + k] * v[k]).sum()
    };
    let (mut h, mut c) = (h0, c0);
    let mut ys = vec![Vec::new(); seq];
    let order: Vec<usize> = if reverse {
        (0..seq).rev().collect()
    } else {
        (0..seq).collect()
    };
    for t in order {
        for bi in 0..batch {
            let xt = &x[t][bi];
            assert_eq!(xt.len(), input);
            let xw = |j: usize| dot(w, j, xt) + b[j];
            let hr = |j: usize, hv: &[f64]| dot(r, j, hv) + b[g * hid + j];
            let (hp, cp) = (h[bi].clone(), c[bi].clone());
            for k in 0..hid {
                if gru {
                    let z = sigmoid(xw(k) + hr(k, &hp));
                    let rg = sigmoid(xw(hid + k) + hr(hid + k, &hp));
                    let hh = if lbr {
                        (xw(2 * hid + k) + rg * hr(2 * hid + k, &hp)).tanh()
                    } else {
                        // (r (.) h) R_h^T: each hidden unit m has its own
                        // reset gate.
                        let rh: Vec<f64> = (0..hid)
                            .map(|m| hp[m] * sigmoid(xw(hid + m) + hr(hid + m, &hp)))
                            .collect();
                        (xw(2 * hid + k) + dot(r, 2 * hid + k, &rh) + b[g * hid + 2 * hid + k])
                            .tanh()
                    };
                    h[bi][k] = (1.0 - z) * hh + z * hp[k];
                } else {
                    let i = sigmoid(xw(k) + hr(k, &hp));
                    let o = sigmoid(xw(hid + k) + hr(hid + k, &hp));
                    let f = sigmoid(xw(2 * hid + k) + hr(2 * hid + k, &hp));
                    let cc = (xw(3 * hid + k) + hr(3 * hid + k, &hp)).tanh();
                    c[bi][k] = f * cp[k] + i * cc;
                    h[bi][k] = o * c[bi][k].tanh();
                }
            }
        }
        ys[t] = h.clone();
    }
    (ys, h, c)
}

fn nested(v: &[f64], dims: [usize; 3]) -> Vec<Vec<Vec<f64>>> {
    (0..dims[0])
        .map(|i| {
            (0..dims[1])
                .map(|j| {
                    let at = (i * dims[1] + j) * dims[2];
                    v[at..at + dims[2]].to_vec()
                })
                .collect()
        })
        .collect()
}

/// Builds a one-node LSTM/GRU model and checks all outputs against
/// [`rnn_direction`] for both directions.
fn check_recurrent(op: &str, layout: i64, lbr: bool) -> Result<()> {
    let gru = op == "GRU";
    let g = if gru { 3 } else { 4 };
    let (seq, batch, input, hid, nd) = (5usize, 2usize, 3usize, 4usize, 2usize);
    let x_dims = if layout == 0 {
        [seq, batch, input]
    } else {
        [batch, seq, input]
    };
    let s_dims = if layout == 0 {
        [nd, batch, hid]
    } else {
        [batch, nd, hid]
    };
    let x = f32s(&x_dims, 21);
    let w = f32s(&[nd, g * hid, input], 22);
    let r = f32s(&[nd, g * hid, hid], 23);
    let b = f32s(&[nd, 2 * g * hid], 24);
    let h0 = f32s(&s_dims, 25);
    let c0 = f32s(&s_dims, 26);
    let mut inputs = vec!["x", "w", "r", "b", "", "h0"];
    let mut outputs = vec!["y", "y_h"];
    if !gru {
        inputs.push("c0");
        outputs.push("y_c");
    }
    let mut node = NodeProto::new("rnn", op, &inputs, &outputs)
        .attr(AttributeProto::int("hidden_size", hid as i64))
        .attr(AttributeProto::string("direction", "bidirectional"))
        .attr(AttributeProto::int("layout", layout));
    if gru {
        node = node.attr(AttributeProto::int("linear_before_reset", i64::from(lbr)));
    }
    let graph = GraphProto {
        name: "rnn".into(),
        node: vec![node],
        initializer: vec![to_proto("w", &w), to_proto("r", &r), to_proto("b", &b)],
        input: vec![
            ValueInfoProto::fixed("x", data_type::FLOAT, &x_dims.map(|d| d as i64)),
            ValueInfoProto::fixed("h0", data_type::FLOAT, &s_dims.map(|d| d as i64)),
            ValueInfoProto::fixed("c0", data_type::FLOAT, &s_dims.map(|d| d as i64)),
        ]
        .into_iter()
        .take(if gru { 2 } else { 3 })
        .collect(),
        output: outputs.iter().map(|o| out(o)).collect(),
        ..Default::default()
    };
    let bytes = model_bytes(graph, 14);
    let mut set = vec![x.clone(), h0.clone()];
    if !gru {
        set.push(c0.clone());
    }
    let dir = tempfile::tempdir()?;
    let outs = compile_and_run(&bytes, &[set], dir.path())?;

    // The direct computation works in layout 0: [seq][batch][..] and
    // [dir][batch][hid].
    let swap = |v: Vec<f64>, d: [usize; 3]| -> Vec<f64> {
        let mut o = vec![0.0; v.len()];
        for i in 0..d[0] {
            for j in 0..d[1] {
                for k in 0..d[2] {
                    o[(j * d[0] + i) * d[2] + k] = v[(i * d[1] + j) * d[2] + k];
                }
            }
        }
        o
    };
    let (xv, h0v, c0v) = if layout == 0 {
        (vals(&x), vals(&h0), vals(&c0))
    } else {
        (
            swap(vals(&x), x_dims),
            swap(vals(&h0), s_dims),
            swap(vals(&c0), s_dims),
        )
    };
    let xs = nested(&xv, [seq, batch, input]);
    let hs = nested(&h0v, [nd, batch, hid]);
    let cs = nested(&c0v, [nd, batch, hid]);
    let (wv, rv, bv) = (vals(&w), vals(&r), vals(&b));
    let mut y = vec![0.0; seq * nd * batch * hid];
    let (mut yh, mut yc) = (Vec::new(), Vec::new());
    for d in 0..nd {
        let gh = g * hid;
        let (ys, h, c) = rnn_direction(
            gru,
            lbr,
            &xs,
            &wv[d * gh * input..(d + 1) * gh * input],
            &rv[d * gh * hid..(d + 1) * gh * hid],
            &bv[d * 2 * gh..(d + 1) * 2 * gh],
            hs[d].clone(),
            cs[d].clone(),
            d == 1,
        );
        for (t, step) in ys.iter().enumerate() {
            for (bi, row) in step.iter().enumerate() {
                for (k, v) in row.iter().enumerate() {
                    let at = if layout == 0 {
                        ((t * nd + d) * batch + bi) * hid + k
                    } else {
                        ((bi * seq + t) * nd + d) * hid + k
                    };
                    y[at] = *v;
                }
            }
        }
        yh.push(h);
        yc.push(c);
    }
    let flat = |s: &[Vec<Vec<f64>>]| -> Vec<f64> {
        let v: Vec<f64> = s.iter().flatten().flatten().copied().collect();
        if layout == 0 {
            v
        } else {
            swap(v, [nd, batch, hid])
        }
    };
    let y_shape: Vec<usize> = if layout == 0 {
        vec![seq, nd, batch, hid]
    } else {
        vec![batch, seq, nd, hid]
    };
    let o = &outs[0];
    assert_close(&o[0], &y, &y_shape, 1e-5);
    assert_close(&o[1], &flat(&yh), &s_dims, 1e-5);
    if !gru {
        assert_close(&o[2], &flat(&yc), &s_dims, 1e-5);
    }
    Ok(())
}

#[test]
fn lstm_bidirectional_matches_direct_computation_in_both_layouts() -> Result<()> {
    check_recurrent("LSTM", 0, false)?;
    check_recurrent("LSTM", 1, false)
}

#[test]
fn gru_bidirectional_matches_direct_computation_with_and_without_linear_before_reset() -> Result<()>
{
    check_recurrent("GRU", 0, false)?;
    check_recurrent("GRU", 1, true)
}

/// `y = sr == 16000 ? x * 2 : x * 3`: the rank-0 integer `sr` decides the
/// `If`, so a call with a value specializes the entry on `sr` (silero-vad's
/// sample rate, whose other branch cannot even be built for these shapes)
/// and the `If` folds at compile time.
#[test]
fn a_scalar_input_deciding_an_if_is_specialized_and_the_if_folds() -> Result<()> {
    let then_g = subgraph(
        "then",
        vec![NodeProto::new("dbl", "Mul", &["x", "two"], &["y_then"])],
        &[],
        &["y_then"],
        vec![scalar_f32("two", 2.0)],
    );
    let else_g = subgraph(
        "else",
        vec![NodeProto::new("tpl", "Mul", &["x", "three"], &["y_else"])],
        &[],
        &["y_else"],
        vec![scalar_f32("three", 3.0)],
    );
    let graph = GraphProto {
        name: "rate".into(),
        node: vec![
            NodeProto::new("is16k", "Equal", &["sr", "k16"], &["c"]),
            NodeProto::new("branch", "If", &["c"], &["y"])
                .attr(AttributeProto::graph("then_branch", then_g))
                .attr(AttributeProto::graph("else_branch", else_g)),
        ],
        initializer: vec![to_proto("k16", &Tensor::scalar(16000i64))],
        input: vec![
            ValueInfoProto::fixed("x", data_type::FLOAT, &[4]),
            ValueInfoProto::fixed("sr", data_type::INT64, &[]),
        ],
        output: vec![out("y")],
        ..Default::default()
    };
    let m = onnx::load(&model_bytes(graph, 13))?;
    let mut c = Compiler::builder(Host::new(HostConfig::default())?)
        .function(m.function("forward"))
        .create()?;
    let x = Tensor::from_vec(&[4], vec![1.0f32, -2.0, 3.0, 0.5])?;
    let y = c.call("forward", &[x.clone(), Tensor::scalar(16000i64)])?;
    assert_eq!(y[0].to_vec::<f32>()?, [2.0, -4.0, 6.0, 1.0]);
    let y = c.call("forward", &[x.clone(), Tensor::scalar(8000i64)])?;
    assert_eq!(y[0].to_vec::<f32>()?, [3.0, -6.0, 9.0, 1.5]);
    let entries = &c.manifest().function("forward").unwrap().entries;
    assert_eq!(entries.len(), 2, "one entry per sample rate");
    assert!(entries[1].guards.iter().any(|g| matches!(
        g,
        ampoule::host::Guard::ScalarValue {
            input: 1,
            value: ampoule::host::ScalarValue::Int(8000)
        }
    )));
    // The traced graph holds no `If`: it folded on the specialized value.
    let examples: Vec<Example> = [x, Tensor::scalar(16000i64)]
        .iter()
        .map(Example::of)
        .collect();
    let trace = m.function("forward").trace(
        &examples,
        &ampoule::kernels::Registry::standard(),
        &Default::default(),
    )?;
    assert!(
        !trace.graph.nodes.iter().any(|n| n.op.name() == "if"),
        "{}",
        trace.graph
    );
    Ok(())
}

/// `y = ReduceSum(x, axes)` with `axes` a graph input (opset 13, as the
/// ONNX node tests feed it): the entry is specialized on the call's axes (an
/// `InputValues` guard), other axes compile another entry, and a saved
/// package without a compiler explains the miss by the values.
#[test]
fn a_graph_input_needed_at_compile_time_is_specialized_on_its_value() -> Result<()> {
    let graph = GraphProto {
        name: "reduce".into(),
        node: vec![NodeProto::new("sum", "ReduceSum", &["x", "axes"], &["y"])
            .attr(AttributeProto::int("keepdims", 0))],
        input: vec![
            ValueInfoProto::fixed("x", data_type::FLOAT, &[2, 3]),
            ValueInfoProto::fixed("axes", data_type::INT64, &[1]),
        ],
        output: vec![out("y")],
        ..Default::default()
    };
    let m = onnx::load(&model_bytes(graph, 13))?;
    let mut c = Compiler::builder(Host::new(HostConfig::default())?)
        .function(m.function("forward"))
        .create()?;
    let x = Tensor::from_vec(&[2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0])?;
    let rows = c.call("forward", &[x.clone(), i64s(&[1])])?;
    assert_eq!(rows[0].to_vec::<f32>()?, [6.0, 15.0]);
    let cols = c.call("forward", &[x.clone(), i64s(&[0])])?;
    assert_eq!(cols[0].to_vec::<f32>()?, [5.0, 7.0, 9.0]);
    let entries = &c.manifest().function("forward").unwrap().entries;
    assert_eq!(entries.len(), 2, "one entry per axes value");
    assert!(entries[1].guards.iter().any(|g| matches!(
        g,
        ampoule::host::Guard::InputValues { input: 1, values }
            if values == &[ampoule::host::ScalarValue::Int(0)]
    )));
    let dir = tempfile::tempdir()?;
    c.save(dir.path())?;
    let pkg = Host::new(HostConfig::default())?.open(dir.path(), Bindings::new())?;
    assert_eq!(
        pkg.call("forward", &[x.clone(), i64s(&[1])])?[0].to_vec::<f32>()?,
        [6.0, 15.0]
    );
    let err = pkg
        .call("forward", &[x, i64s(&[-1])])
        .unwrap_err()
        .to_string();
    assert!(err.contains("axes == [1], got [-1]"), "{err}");
    Ok(())
}
