//! Several functions per package, and functions that update inputs in place,
//! end to end: trace, compile, save, reopen on a fresh host, serve, inspect
//! and run through the CLI.
//!
//! - `encode` and `decode` share one 256x256 weight: it is one package global
//!   stored once (the package on disk is smaller than twice the weight), and
//!   both functions serve results equal to a direct computation.
//! - Two functions capturing different tensors under one name is an error
//!   naming both functions and the fix.
//! - A running statistic (`Tracer::assign`) accumulates into the caller's
//!   tensors over 5 calls, exactly as a direct computation says, through a
//!   `CompiledFunction` and through a fresh host; a failing call leaves the
//!   caller's tensors untouched; an inconsistent mutation record is refused
//!   at open.

mod common;

use std::path::Path;
use std::process::Command;

use ampoule::compiler::{function, CompiledFunction, Compiler, FunctionDef, PackageError};
use ampoule::guest::{Program, Reg};
use ampoule::host::error::TrapKind;
use ampoule::host::guard::Guard;
use ampoule::host::manifest::{ArgKind, GlobalSource, MutationDecl};
use ampoule::host::{Bindings, Error as HostError};
use ampoule::kernels::{DType, Tensor};
use common::*;

type CompilerError = ampoule::compiler::Error;

const N: usize = 256;

/// A deterministic N x N weight with values in [-0.5, 0.5).
fn weight() -> Tensor {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let v: Vec<f32> = (0..N * N)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    f32s(&[N, N], v)
}

fn rows(batch: usize, seed: f32) -> Tensor {
    f32s(
        &[batch, N],
        (0..batch * N)
            .map(|i| (i as f32 * 0.37 + seed).sin())
            .collect(),
    )
}

/// `encode(x) = x @ w` and `decode(h) = h @ w.T`, both capturing `w` as `w`.
fn encode_decode(w: &Tensor) -> (FunctionDef, FunctionDef) {
    let (we, wd) = (w.clone(), w.clone());
    let encode = function("encode", move |cx, x| {
        let w = cx.capture("w", &we)?;
        Ok(vec![cx.linear(x[0], w, None)?])
    })
    .inputs(["x"])
    .outputs(["h"]);
    let decode = function("decode", move |cx, h| {
        let w = cx.capture("w", &wd)?;
        Ok(vec![cx.linear_t(h[0], w, None)?])
    })
    .inputs(["h"])
    .outputs(["x"]);
    (encode, decode)
}

/// `x @ w` (or `x @ w.T`) computed directly, in f64.
fn direct(x: &Tensor, w: &Tensor, transpose: bool) -> Vec<f64> {
    let (xv, wv) = (x.data::<f32>().unwrap(), w.data::<f32>().unwrap());
    let batch = xv.len() / N;
    let mut out = Vec::with_capacity(batch * N);
    for r in 0..batch {
        for j in 0..N {
            let s: f64 = (0..N)
                .map(|k| {
                    let wkj = if transpose {
                        wv[j * N + k]
                    } else {
                        wv[k * N + j]
                    };
                    f64::from(xv[r * N + k]) * f64::from(wkj)
                })
                .sum();
            out.push(s);
        }
    }
    out
}

fn assert_close(actual: &Tensor, expected: &[f64], what: &str) {
    let a = actual.data::<f32>().unwrap();
    assert_eq!(a.len(), expected.len(), "{what}: length");
    for (i, (&a, &e)) in a.iter().zip(expected).enumerate() {
        let tol = 1e-4 * (1.0 + e.abs());
        assert!(
            (f64::from(a) - e).abs() <= tol,
            "{what}[{i}]: got {a}, expected {e}"
        );
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let md = e.metadata().unwrap();
        total += if md.is_dir() {
            dir_bytes(&e.path())
        } else {
            md.len()
        };
    }
    total
}

/// The tensor names in a safetensors file (its header is an 8-byte
/// little-endian length, then a JSON object keyed by tensor name).
fn safetensors_names(bytes: &[u8]) -> Vec<String> {
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    header
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect()
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ampoule"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn encode_and_decode_share_one_weight_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("codec.ampoule");
    let w = weight();
    let (encode, decode) = encode_decode(&w);
    let x = rows(2, 0.25);

    let mut c = Compiler::builder(test_host())
        .function(encode)
        .function(decode)
        .create()
        .unwrap();
    let h = c
        .call("encode", std::slice::from_ref(&x))
        .unwrap()
        .remove(0);
    assert_close(&h, &direct(&x, &w, false), "encode (compiler)");
    let back = c
        .call("decode", std::slice::from_ref(&h))
        .unwrap()
        .remove(0);
    assert_close(&back, &direct(&h, &w, true), "decode (compiler)");
    assert_eq!(c.compile_count(), 2);
    c.save(&pkg).unwrap();

    // A fresh host, no compiler: both functions serve.
    let host = test_host();
    let p = host.open(&pkg, Bindings::new()).unwrap();
    let h2 = p
        .call("encode", std::slice::from_ref(&x))
        .unwrap()
        .remove(0);
    assert_close(&h2, &direct(&x, &w, false), "encode (fresh host)");
    let back2 = p
        .call("decode", std::slice::from_ref(&h2))
        .unwrap()
        .remove(0);
    assert_close(&back2, &direct(&h2, &w, true), "decode (fresh host)");

    // One global, referenced by both functions' entries.
    let m = p.manifest();
    assert_eq!(m.globals.len(), 1, "{:?}", m.globals);
    assert_eq!(m.globals[0].name, "w");
    for f in &m.functions {
        assert_eq!(f.entries[0].globals, [0], "function `{}`", f.name);
    }
    // Its bytes are on disk once.
    let weight_bytes = (N * N * 4) as u64;
    let total = dir_bytes(&pkg);
    assert!(
        weight_bytes <= total && total < 2 * weight_bytes,
        "package is {total} bytes for a {weight_bytes}-byte weight"
    );
    let weight_files: Vec<&String> = m
        .files
        .keys()
        .filter(|f| f.starts_with("weights/"))
        .collect();
    assert_eq!(weight_files.len(), 1, "{weight_files:?}");
    let names = safetensors_names(&std::fs::read(pkg.join(weight_files[0])).unwrap());
    assert_eq!(names, ["w"]);
    let GlobalSource::Weight { tensor, .. } = &m.globals[0].source else {
        panic!("w is embedded")
    };
    assert_eq!(tensor, "w");

    // `inspect` shows both functions and what they share.
    let o = cli(&["inspect", pkg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.contains("function `encode` (x: f32 rank 2) -> (h: f32 rank 2)"),
        "{text}"
    );
    assert!(
        text.contains("function `decode` (h: f32 rank 2) -> (x: f32 rank 2)"),
        "{text}"
    );
    assert!(text.contains("globals: w (shared with `decode`)"), "{text}");
    assert!(text.contains("globals: w (shared with `encode`)"), "{text}");
    let o = cli(&["inspect", pkg.to_str().unwrap(), "--json"]);
    assert!(o.status.success());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let fs = j["functions"].as_array().unwrap();
    assert_eq!(fs.len(), 2);
    assert_eq!(fs[0]["name"], "encode");
    assert_eq!(fs[0]["entries"], 1);
    assert_eq!(fs[0]["signature"], "(x: f32 rank 2) -> (h: f32 rank 2)");
    assert_eq!(fs[0]["globals"][0]["name"], "w");
    assert_eq!(fs[0]["globals"][0]["shared_with"][0], "`decode`");
    assert_eq!(fs[1]["globals"][0]["shared_with"][0], "`encode`");

    // `run --function` picks one; an unknown name lists them.
    let hfile = tmp.path().join("h.npy");
    ampoule::npy::write(&hfile, &h2).unwrap();
    let out = tmp.path().join("out");
    let o = cli(&[
        "run",
        pkg.to_str().unwrap(),
        "--function",
        "decode",
        "--input",
        &format!("h={}", hfile.display()),
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let y = ampoule::npy::read(&out.join("x.npy")).unwrap();
    assert_close(&y, &direct(&h2, &w, true), "decode (CLI)");
    let o = cli(&[
        "run",
        pkg.to_str().unwrap(),
        "--function",
        "forward",
        "--input",
        &format!("h={}", hfile.display()),
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no function `forward`; it has: `encode`, `decode`"),
        "{err}"
    );
}

#[test]
fn different_tensors_under_one_name_name_both_functions() {
    let w = weight();
    let other = f32s(&[N, N], vec![0.5; N * N]);
    let (encode, _) = encode_decode(&w);
    let (_, decode) = encode_decode(&other);
    let mut c = Compiler::builder(test_host())
        .function(encode)
        .function(decode)
        .create()
        .unwrap();
    c.call("encode", &[rows(1, 0.0)]).unwrap();
    let before = c.manifest().clone();
    let err = c.call("decode", &[rows(1, 0.0)]).unwrap_err();
    assert!(
        matches!(
            &err,
            CompilerError::Package(PackageError::GlobalConflict { name, used_by, function, .. })
                if name == "w" && used_by == "function `encode`" && function == "decode"
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("used by function `encode`")
            && msg.contains("function `decode` needs")
            && msg.contains("capture different values under different names (e.g. `decode.w`)"),
        "{msg}"
    );
    assert_eq!(c.manifest(), &before, "a refused entry changes nothing");
}

/// `step(sum, count, x) -> mean`: `sum += x`, `count += 1`, both in place;
/// the output is the running mean.
fn running_mean() -> FunctionDef {
    function("step", |cx, a| {
        let (sum, count, x) = (a[0], a[1], a[2]);
        let one = cx.constant(Tensor::scalar(1.0f32));
        let new_sum = cx.add(sum, x)?;
        let new_count = cx.add(count, one)?;
        cx.assign(sum, new_sum)?;
        cx.assign(count, new_count)?;
        Ok(vec![cx.div(new_sum, new_count)?])
    })
    .inputs(["sum", "count", "x"])
    .outputs(["mean"])
}

fn sample(k: usize) -> Tensor {
    f32s(
        &[4],
        (0..4).map(|i| (k * 4 + i) as f32 * 0.3 - 1.7).collect(),
    )
}

/// What 5 more steps from `(sum, count)` give, in f32 as the kernels
/// compute it: the state after each step, and each step's mean.
fn direct_steps(sum: &[f32], count: f32, first: usize) -> Vec<(Vec<f32>, f32, Vec<f32>)> {
    let (mut s, mut c) = (sum.to_vec(), count);
    (first..first + 5)
        .map(|k| {
            let x = sample(k).to_vec::<f32>().unwrap();
            for (si, xi) in s.iter_mut().zip(&x) {
                *si += xi;
            }
            c += 1.0;
            let mean = s.iter().map(|v| v / c).collect();
            (s.clone(), c, mean)
        })
        .collect()
}

#[test]
fn a_running_mean_accumulates_into_the_callers_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("stats.ampoule");
    let mut f = CompiledFunction::new(test_host(), running_mean()).unwrap();

    let mut state = [f32s(&[4], vec![0.0; 4]), f32s(&[1], vec![0.0])];
    for (k, (sum, count, mean)) in direct_steps(&[0.0; 4], 0.0, 0).into_iter().enumerate() {
        let mut args = [state[0].clone(), state[1].clone(), sample(k)];
        let out = f.call_mut(&mut args).unwrap();
        assert_eq!(out.len(), 1, "the updates are not outputs");
        assert_eq!(out[0].to_vec::<f32>().unwrap(), mean, "mean after step {k}");
        assert_eq!(args[0].to_vec::<f32>().unwrap(), sum, "sum after step {k}");
        assert_eq!(
            args[1].to_vec::<f32>().unwrap(),
            [count],
            "count after step {k}"
        );
        assert_eq!(
            args[2].to_vec::<f32>().unwrap(),
            sample(k).to_vec::<f32>().unwrap()
        );
        state = [args[0].clone(), args[1].clone()];
    }
    assert_eq!(f.compile_count(), 1, "one entry serves every step");

    // The record is in the signature, not among the outputs.
    let decl = f.compiler().manifest().function("step").unwrap().clone();
    assert_eq!(decl.signature.outputs.len(), 1);
    assert_eq!(decl.signature.mutated_names(), ["sum", "count"]);
    assert_eq!(
        decl.signature.mutates[1],
        MutationDecl {
            input: 1,
            kind: ArgKind::Tensor {
                dtype: DType::F32,
                rank: 1
            }
        }
    );

    // `call` would drop the update: it is refused, and says what to use.
    let err = f
        .call(&[state[0].clone(), state[1].clone(), sample(0)])
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("`Package::call_mut`")
            && msg.contains("updates inputs `sum`, `count` in place"),
        "{msg}"
    );
    f.save(&pkg).unwrap();

    // A fresh host continues from the state the caller holds.
    let host = test_host();
    let p = host.open(&pkg, Bindings::new()).unwrap();
    let sum0 = state[0].to_vec::<f32>().unwrap();
    let count0 = state[1].to_vec::<f32>().unwrap()[0];
    let mut args = [state[0].clone(), state[1].clone(), sample(0)];
    for (i, (sum, count, mean)) in direct_steps(&sum0, count0, 5).into_iter().enumerate() {
        args[2] = sample(5 + i);
        let out = p.call_mut("step", &mut args).unwrap();
        assert_eq!(out[0].to_vec::<f32>().unwrap(), mean);
        assert_eq!(
            args[0].to_vec::<f32>().unwrap(),
            sum,
            "sum after step {}",
            5 + i
        );
        assert_eq!(args[1].to_vec::<f32>().unwrap(), [count]);
    }
    assert_eq!(args[1].to_vec::<f32>().unwrap(), [10.0]);

    // By name, in any order.
    let mut named = [
        ("x", sample(10)),
        ("count", args[1].clone()),
        ("sum", args[0].clone()),
    ];
    let expected = &direct_steps(
        &args[0].to_vec::<f32>().unwrap(),
        args[1].to_vec::<f32>().unwrap()[0],
        10,
    )[0];
    p.call_named_mut("step", &mut named).unwrap();
    assert_eq!(named[2].1.to_vec::<f32>().unwrap(), expected.0);
    assert_eq!(named[1].1.to_vec::<f32>().unwrap(), [expected.1]);

    // `inspect` shows the record; `run` writes the updated inputs back.
    let o = cli(&["inspect", pkg.to_str().unwrap()]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("  mutates: sum, count"), "{text}");
    let dir = tmp.path().join("in");
    std::fs::create_dir(&dir).unwrap();
    for (name, t) in [("sum", &args[0]), ("count", &args[1]), ("x", &sample(10))] {
        ampoule::npy::write(&dir.join(format!("{name}.npy")), t).unwrap();
    }
    let out = tmp.path().join("out");
    let arg = |n: &str| format!("{n}={}", dir.join(format!("{n}.npy")).display());
    let o = cli(&[
        "run",
        pkg.to_str().unwrap(),
        "--input",
        &arg("sum"),
        "--input",
        &arg("count"),
        "--input",
        &arg("x"),
        "--output-dir",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |n: &str| {
        ampoule::npy::read(&out.join(format!("{n}.npy")))
            .unwrap()
            .to_vec::<f32>()
            .unwrap()
    };
    assert_eq!(read("sum"), expected.0);
    assert_eq!(read("count"), [expected.1]);
    assert_eq!(read("mean"), expected.2);
}

#[test]
fn a_failed_call_leaves_the_callers_tensors_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("stats.ampoule");
    let mut f = CompiledFunction::new(test_host(), running_mean()).unwrap();
    let mut args = [f32s(&[4], vec![1.0; 4]), f32s(&[1], vec![1.0]), sample(0)];
    f.call_mut(&mut args).unwrap();
    f.save(&pkg).unwrap();

    // A guard miss (x of another size) on a package without a compiler.
    let mut loaded = CompiledFunction::load(test_host(), &pkg, "step").unwrap();
    let before = args.clone();
    let mut wrong = [args[0].clone(), args[1].clone(), f32s(&[5], vec![1.0; 5])];
    let err = loaded.call_mut(&mut wrong).unwrap_err();
    assert!(
        matches!(err, CompilerError::Host(HostError::GuardMiss { .. })),
        "{err}"
    );
    assert!(wrong[0].shares_storage(&before[0]) && wrong[1].shares_storage(&before[1]));
    assert_eq!(
        wrong[0].to_vec::<f32>().unwrap(),
        before[0].to_vec::<f32>().unwrap()
    );

    // A trap: a hand-made package whose wrapper returns `b` (f32[3]) as the
    // new value of `a` (f32[4]); the record is consistent at open, the
    // value's shape is not.
    let p = Program {
        globals: 0,
        buffers: 0,
        inputs: 2,
        registers: 2,
        init: vec![],
        run: vec![],
        outputs: vec![Reg(1)],
    };
    let mut evil = HandFunction::raw("evil", ampoule::guest::emit(&p).unwrap());
    evil.inputs = vec![("a".into(), DType::F32, 1), ("b".into(), DType::F32, 1)];
    evil.outputs = vec![];
    evil.guards = vec![
        Guard::InputCount { count: 2 },
        Guard::Dim {
            input: 0,
            axis: 0,
            size: 4,
        },
        Guard::Dim {
            input: 1,
            axis: 0,
            size: 3,
        },
    ];
    let (mut m, files) = hand_manifest(&[evil]);
    m.functions[0].signature.mutates = vec![MutationDecl {
        input: 0,
        kind: ArgKind::Tensor {
            dtype: DType::F32,
            rank: 1,
        },
    }];
    let dir = tmp.path().join("evil.ampoule");
    write_package(&dir, &m, &files);
    let host = test_host();
    let p = host.open(&dir, Bindings::new()).unwrap();
    let a = f32s(&[4], vec![1.0, 2.0, 3.0, 4.0]);
    let mut args = [a.clone(), f32s(&[3], vec![9.0; 3])];
    let err = p.call_mut("evil", &mut args).unwrap_err();
    assert_eq!(err.trap_kind(), Some(&TrapKind::Contract), "{err}");
    assert!(
        err.to_string()
            .contains("the new value of input `a` is f32[3], but the input is f32[4]"),
        "{err}"
    );
    assert!(
        args[0].shares_storage(&a),
        "the caller's tensor is untouched"
    );
    assert_eq!(args[0].to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn an_inconsistent_mutation_record_is_refused_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let (m, files) = hand_manifest(&[HandFunction::add("add", 4)]);
    let cases = [
        (
            MutationDecl {
                input: 2,
                kind: ArgKind::Tensor {
                    dtype: DType::F32,
                    rank: 1,
                },
            },
            "functions[0] `add`.signature.mutates[0]: updates input 2 but the function has 2 inputs",
        ),
        (
            MutationDecl {
                input: 1,
                kind: ArgKind::Tensor {
                    dtype: DType::I64,
                    rank: 1,
                },
            },
            "functions[0] `add`.signature.mutates[0]: the new value of input `b` is declared a rank-1 i64 tensor, but the input is a rank-1 f32 tensor",
        ),
    ];
    for (i, (decl, expected)) in cases.into_iter().enumerate() {
        let mut m = m.clone();
        m.functions[0].signature.mutates = vec![decl];
        let dir = tmp.path().join(format!("case{i}"));
        write_package(&dir, &m, &files);
        let host = test_host();
        let err = host.open(&dir, Bindings::new()).err().expect("refused");
        assert!(matches!(err, HostError::Verify(_)), "{err}");
        assert!(err.to_string().contains(expected), "{err}");
        assert_eq!(host.stats().wasm_compiles, 0, "nothing compiled");
    }
}

#[test]
fn assign_checks_its_operands_at_trace_time() {
    let cases: [(&str, FunctionDef); 3] = [
        (
            "the new value of input `s` is f32[2], but the input is f32[4]",
            function("f", |cx, a| {
                let half = cx.narrow(a[0], 0, 0, 2)?;
                cx.assign(a[0], half)?;
                Ok(vec![])
            }),
        ),
        (
            "is not an input of the function",
            function("f", |cx, a| {
                let y = cx.neg(a[0])?;
                cx.assign(y, y)?;
                Ok(vec![])
            }),
        ),
        (
            "input `s` is already assigned",
            function("f", |cx, a| {
                let y = cx.neg(a[0])?;
                cx.assign(a[0], y)?;
                cx.assign(a[0], y)?;
                Ok(vec![])
            }),
        ),
    ];
    for (expected, def) in cases {
        let mut f = CompiledFunction::new(test_host(), def.inputs(["s"])).unwrap();
        let mut args = [f32s(&[4], vec![1.0; 4])];
        let err = f.call_mut(&mut args).unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
        assert_eq!(args[0].to_vec::<f32>().unwrap(), [1.0; 4]);
    }
}
