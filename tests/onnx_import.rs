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

// ---- unsupported ops are all listed ----

#[test]
fn unsupported_nodes_are_listed_together_by_library_and_cli() -> Result<()> {
    let mut custom = NodeProto::new("attn_fused", "Attention", &["p"], &["y"]);
    custom.domain = "com.microsoft".into();
    let graph = GraphProto {
        name: "cnn".into(),
        node: vec![
            NodeProto::new("conv0", "Conv", &["x", "w"], &["c"]),
            NodeProto::new("relu0", "Relu", &["c"], &["r"]),
            NodeProto::new("pool0", "MaxPool", &["r"], &["p"]),
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
            ("conv0", "Conv", "", Some(13)),
            ("pool0", "MaxPool", "", Some(13)),
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
        "node `conv0`: op `Conv` (domain `ai.onnx`, opset 13)",
        "node `pool0`: op `MaxPool` (domain `ai.onnx`, opset 13)",
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
