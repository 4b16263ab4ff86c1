//! Trace → compile → run through the host, the way a user does it: compiled
//! functions, misses that compile new entries, save and resume, load-only
//! serving, several functions in one package, specialization on scalars and
//! bound globals, and the program-change checks.

use ampoule_compiler::{function, CompiledFunction, Compiler, Error, FunctionDef, Options};
use ampoule_host::{Host, HostConfig};
use ampoule_kernels::{DType, Tensor};

fn host() -> Host {
    Host::new(HostConfig {
        cache_dir: None,
        ..HostConfig::default()
    })
    .expect("host")
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tensor(shape: &[usize], seed: u64) -> Tensor {
    Tensor::from_vec(shape, values(shape.iter().product(), seed)).unwrap()
}

const K: usize = 5;
const H: usize = 7;
const N: usize = 3;

struct Weights {
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
}

fn weights() -> Weights {
    Weights {
        w1: tensor(&[K, H], 1),
        b1: tensor(&[H], 2),
        w2: tensor(&[H, N], 3),
        b2: tensor(&[N], 4),
    }
}

fn mlp(w: &Weights) -> FunctionDef {
    let (w1, b1, w2, b2) = (w.w1.clone(), w.b1.clone(), w.w2.clone(), w.b2.clone());
    function("mlp", move |cx, x| {
        let w1 = cx.capture("w1", &w1)?;
        let b1 = cx.capture("b1", &b1)?;
        let w2 = cx.capture("w2", &w2)?;
        let b2 = cx.capture("b2", &b2)?;
        let h = cx.linear(x[0], w1, Some(b1))?;
        let h = cx.relu(h)?;
        Ok(vec![cx.linear(h, w2, Some(b2))?])
    })
    .inputs(["x"])
    .outputs(["y"])
}

/// `relu(x @ w1 + b1) @ w2 + b2` with plain loops.
fn mlp_direct(w: &Weights, x: &Tensor) -> Vec<f32> {
    let (w1, b1, w2, b2) = (
        w.w1.to_vec::<f32>().unwrap(),
        w.b1.to_vec::<f32>().unwrap(),
        w.w2.to_vec::<f32>().unwrap(),
        w.b2.to_vec::<f32>().unwrap(),
    );
    let xs = x.to_vec::<f32>().unwrap();
    let batch = x.shape()[0];
    let mut y = vec![0.0f32; batch * N];
    for b in 0..batch {
        let mut h = [0.0f32; H];
        for j in 0..H {
            let mut acc = b1[j];
            for k in 0..K {
                acc += xs[b * K + k] * w1[k * H + j];
            }
            h[j] = acc.max(0.0);
        }
        for n in 0..N {
            let mut acc = b2[n];
            for j in 0..H {
                acc += h[j] * w2[j * N + n];
            }
            y[b * N + n] = acc;
        }
    }
    y
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "element {i}: got {g}, want {w}"
        );
    }
}

#[test]
fn mlp_compiles_on_miss_runs_saves_and_resumes() {
    let w = weights();
    // Static shapes: this test is about one entry per batch size (automatic
    // dynamic is tested in the workspace's tests/dynamic.rs).
    let mut f = Compiler::builder(host())
        .function(mlp(&w))
        .options(Options::default().static_shapes())
        .create()
        .unwrap()
        .into_function("mlp")
        .unwrap();
    for (batch, seed, compiles) in [(2, 10, 1), (2, 11, 1), (5, 12, 2), (2, 13, 2), (5, 14, 2)] {
        let x = tensor(&[batch, K], seed);
        let y = f.call(std::slice::from_ref(&x)).unwrap();
        assert_eq!(y.len(), 1);
        assert_eq!(y[0].shape(), [batch, N]);
        assert_close(&y[0].to_vec::<f32>().unwrap(), &mlp_direct(&w, &x));
        assert_eq!(f.compile_count(), compiles, "batch {batch}");
    }
    let m = f.compiler().manifest();
    assert_eq!(m.functions[0].entries.len(), 2);
    assert_eq!(
        m.globals.len(),
        4,
        "the weights are stored once for both entries"
    );
    let step_allocs = f.compiler().draft().manifest().functions[0].entries[0]
        .buffers
        .len();
    assert!(step_allocs >= 2, "intermediates are planned buffers");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mlp.ampoule");
    f.save(&path).unwrap();

    // Resume with the same definition: existing entries serve, a new shape compiles.
    let mut g = CompiledFunction::open(host(), &path, mlp(&w), Options::default()).unwrap();
    let x = tensor(&[2, K], 20);
    assert_close(
        &g.call(std::slice::from_ref(&x)).unwrap()[0]
            .to_vec::<f32>()
            .unwrap(),
        &mlp_direct(&w, &x),
    );
    assert_eq!(g.compile_count(), 0);
    let x = tensor(&[7, K], 21);
    assert_close(
        &g.call(std::slice::from_ref(&x)).unwrap()[0]
            .to_vec::<f32>()
            .unwrap(),
        &mlp_direct(&w, &x),
    );
    assert_eq!(g.compile_count(), 1);
    assert_eq!(g.compiler().manifest().functions[0].entries.len(), 3);

    // Load-only: hits run, a miss is the host's typed error with every entry's reason.
    let mut served = CompiledFunction::load(host(), &path, "mlp").unwrap();
    let x = tensor(&[5, K], 22);
    assert_close(
        &served.call(std::slice::from_ref(&x)).unwrap()[0]
            .to_vec::<f32>()
            .unwrap(),
        &mlp_direct(&w, &x),
    );
    match served.call(&[tensor(&[9, K], 23)]) {
        Err(Error::Host(ampoule_host::Error::GuardMiss {
            function,
            explanations,
        })) => {
            assert_eq!(function, "mlp");
            let text: Vec<String> = explanations.iter().map(ToString::to_string).collect();
            assert_eq!(
                text,
                [
                    "entry 0: x.shape[0] == 2, got 9",
                    "entry 1: x.shape[0] == 5, got 9"
                ]
            );
        }
        other => panic!("expected a guard miss, got {other:?}"),
    }
    assert_eq!(served.compile_count(), 0);
}

#[test]
fn a_changed_program_or_signature_is_refused_on_resume() {
    let w = weights();
    let mut f = CompiledFunction::new(host(), mlp(&w)).unwrap();
    f.call(&[tensor(&[2, K], 1)]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p");
    f.save(&path).unwrap();

    let (w1, b1) = (w.w1.clone(), w.b1.clone());
    let changed = function("mlp", move |cx, x| {
        let w1 = cx.capture("w1", &w1)?;
        let b1 = cx.capture("b1", &b1)?;
        let h = cx.linear(x[0], w1, Some(b1))?;
        let h = cx.tanh(h)?;
        Ok(vec![cx.narrow(h, 1, 0, N)?])
    })
    .inputs(["x"])
    .outputs(["y"]);
    match CompiledFunction::open(host(), &path, changed.clone(), Options::default()) {
        Err(Error::Mismatch { function, what, .. }) => {
            assert_eq!((function.as_str(), what), ("mlp", "program hash"));
        }
        Err(e) => panic!("expected a program-hash mismatch, got {e}"),
        Ok(_) => panic!("expected a program-hash mismatch"),
    }
    // With the opt-out, the old entry keeps serving and new shapes compile
    // with the new program.
    let mut g = CompiledFunction::open(
        host(),
        &path,
        changed,
        Options::default().allow_program_change(),
    )
    .unwrap();
    let x = tensor(&[2, K], 1);
    assert_close(
        &g.call(std::slice::from_ref(&x)).unwrap()[0]
            .to_vec::<f32>()
            .unwrap(),
        &mlp_direct(&w, &x),
    );
    assert_eq!(g.compile_count(), 0);
    g.call(&[tensor(&[3, K], 2)]).unwrap();
    assert_eq!(g.compile_count(), 1);

    let two_outputs =
        function("mlp", |cx, x| Ok(vec![cx.relu(x[0])?, cx.tanh(x[0])?])).inputs(["x"]);
    let err = CompiledFunction::open(
        host(),
        &path,
        two_outputs,
        Options::default().allow_program_change(),
    )
    .err()
    .expect("mismatch");
    assert!(
        matches!(
            &err,
            Error::Mismatch {
                what: "signature",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "function `mlp`: the package's signature is (x: f32 rank 2) -> (y: f32 rank 2), but the definition gives \
         (x: f32 rank 2) -> (y0: f32 rank 2, y1: f32 rank 2); use another function name or another package"
    );
}

#[test]
fn several_functions_share_a_package_and_its_weights() {
    let w = tensor(&[4], 5);
    let (wa, wb) = (w.clone(), w.clone());
    let add = function("add", move |cx, x| {
        let w = cx.capture("w", &wa)?;
        Ok(vec![cx.add(x[0], w)?])
    });
    let mul = function("mul", move |cx, x| {
        let w = cx.capture("w", &wb)?;
        Ok(vec![cx.mul(x[0], w)?])
    });
    let mut c = Compiler::builder(host())
        .function(add)
        .function(mul)
        .create()
        .unwrap();
    let x = tensor(&[2, 4], 6);
    let a = c.call("add", std::slice::from_ref(&x)).unwrap();
    let m = c.call("mul", std::slice::from_ref(&x)).unwrap();
    let (xs, ws) = (x.to_vec::<f32>().unwrap(), w.to_vec::<f32>().unwrap());
    let want_add: Vec<f32> = xs.iter().enumerate().map(|(i, v)| v + ws[i % 4]).collect();
    let want_mul: Vec<f32> = xs.iter().enumerate().map(|(i, v)| v * ws[i % 4]).collect();
    assert_close(&a[0].to_vec::<f32>().unwrap(), &want_add);
    assert_close(&m[0].to_vec::<f32>().unwrap(), &want_mul);
    assert_eq!(c.compile_count(), 2);
    let man = c.manifest();
    assert_eq!(
        man.functions
            .iter()
            .map(|f| (f.name.as_str(), f.entries.len()))
            .collect::<Vec<_>>(),
        [("add", 1), ("mul", 1)]
    );
    assert_eq!(
        man.globals.len(),
        1,
        "both functions read the one stored `w`"
    );
    // Calls keep going to the right function.
    assert_close(
        &c.call("add", std::slice::from_ref(&x)).unwrap()[0]
            .to_vec::<f32>()
            .unwrap(),
        &want_add,
    );
    assert_eq!(c.compile_count(), 2);
    assert!(matches!(
        c.call("nope", &[x]),
        Err(Error::Host(ampoule_host::Error::UnknownFunction { .. }))
    ));
}

#[test]
fn scalar_inputs_specialize_entries() {
    let def = function("scale", |cx, x| {
        let alpha = cx.scalar_f64(1)?;
        let k = cx.constant(Tensor::scalar(alpha as f32));
        Ok(vec![cx.mul(x[0], k)?])
    })
    .inputs(["x", "alpha"]);
    let mut f = CompiledFunction::new(host(), def).unwrap();
    let x = Tensor::from_vec(&[3], vec![1.0f32, -2.0, 0.5]).unwrap();
    for (alpha, compiles) in [(2.0f32, 1), (3.0, 2), (2.0, 2)] {
        let y = f.call(&[x.clone(), Tensor::scalar(alpha)]).unwrap();
        assert_eq!(
            y[0].to_vec::<f32>().unwrap(),
            [alpha, -2.0 * alpha, 0.5 * alpha]
        );
        assert_eq!(f.compile_count(), compiles);
    }
    let sig = &f.compiler().manifest().functions[0].signature;
    assert_eq!(
        sig.inputs[1].kind,
        ampoule_host::manifest::ArgKind::Scalar { dtype: DType::F32 }
    );
    // Non-finite values specialize too: the manifest (JSON) holds them, and
    // the saved package serves them without compiling again.
    for (alpha, compiles) in [(f32::NAN, 3), (f32::INFINITY, 4), (f32::NAN, 4)] {
        let y = f.call(&[x.clone(), Tensor::scalar(alpha)]).unwrap();
        let want = [alpha, -2.0 * alpha, 0.5 * alpha];
        for (g, w) in y[0].to_vec::<f32>().unwrap().iter().zip(want) {
            assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()));
        }
        assert_eq!(f.compile_count(), compiles);
    }
    let dir = tempfile::tempdir().unwrap();
    f.save(dir.path().join("scale.ampoule")).unwrap();
    let pkg = host()
        .open(
            dir.path().join("scale.ampoule"),
            ampoule_host::Bindings::new(),
        )
        .unwrap();
    for alpha in [f32::NAN, f32::INFINITY, 2.0] {
        pkg.call("scale", &[x.clone(), Tensor::scalar(alpha)])
            .unwrap_or_else(|e| panic!("alpha = {alpha}: {e}"));
    }
}

#[test]
fn bound_globals_and_specialization_on_their_content() {
    let scale = Tensor::from_vec(&[2], vec![2.0f32, 3.0]).unwrap();
    let shift = Tensor::from_vec(&[2], vec![1.0f32, 1.0]).unwrap();
    let def = function("affine", |cx, x| {
        let s = cx.bound("scale")?;
        let b = cx.bound_specialized("shift")?;
        let y = cx.mul(x[0], s)?;
        Ok(vec![cx.add(y, b)?])
    });
    let mut c = Compiler::builder(host())
        .bind("scale", scale)
        .bind("shift", shift)
        .function(def)
        .create()
        .unwrap();
    let x = Tensor::from_vec(&[2], vec![1.0f32, 2.0]).unwrap();
    assert_eq!(
        c.call("affine", std::slice::from_ref(&x)).unwrap()[0]
            .to_vec::<f32>()
            .unwrap(),
        [3.0, 7.0]
    );
    // A new value of the unspecialized global is used by the same entry.
    c.bind(
        "scale",
        Tensor::from_vec(&[2], vec![10.0f32, 10.0]).unwrap(),
    )
    .unwrap();
    assert_eq!(
        c.call("affine", std::slice::from_ref(&x)).unwrap()[0]
            .to_vec::<f32>()
            .unwrap(),
        [11.0, 21.0]
    );
    assert_eq!(c.compile_count(), 1);
    // A new value of the specialized one misses its digest guard and compiles.
    c.bind("shift", Tensor::from_vec(&[2], vec![0.0f32, 0.5]).unwrap())
        .unwrap();
    assert_eq!(
        c.call("affine", std::slice::from_ref(&x)).unwrap()[0]
            .to_vec::<f32>()
            .unwrap(),
        [10.0, 20.5]
    );
    assert_eq!(c.compile_count(), 2);
}

#[test]
fn outputs_that_alias_inputs_globals_views_or_each_other_are_fresh() {
    let w = Tensor::from_vec(&[2, 2], vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
    let def = function("aliases", move |cx, x| {
        let w = cx.capture("w", &w)?;
        let wflat = cx.reshape(w, &[4])?;
        let e = cx.exp(x[0])?;
        let s = cx.add(e, w)?;
        Ok(vec![x[0], w, wflat, s, s])
    });
    let mut f = CompiledFunction::new(host(), def).unwrap();
    let x = Tensor::from_vec(&[2, 2], vec![0.0f32, 1.0, -1.0, 0.5]).unwrap();
    let e: Vec<f32> = x.to_vec::<f32>().unwrap().iter().map(|v| v.exp()).collect();
    let s: Vec<f32> = e
        .iter()
        .zip([1.0f32, 2.0, 3.0, 4.0])
        .map(|(a, b)| a + b)
        .collect();
    for _ in 0..3 {
        let out = f.call(std::slice::from_ref(&x)).unwrap();
        assert_eq!(out.len(), 5);
        assert_eq!(out[0].to_vec::<f32>().unwrap(), x.to_vec::<f32>().unwrap());
        assert_eq!(out[1].to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(out[2].shape(), [4]);
        assert_eq!(out[2].to_vec::<f32>().unwrap(), [1.0, 2.0, 3.0, 4.0]);
        assert_close(&out[3].to_vec::<f32>().unwrap(), &s);
        assert_close(&out[4].to_vec::<f32>().unwrap(), &s);
        assert!(
            !out[3].shares_storage(&out[4]),
            "a repeated output is a copy"
        );
        assert!(
            !out[0].shares_storage(&x),
            "an input returned as an output is a copy"
        );
    }
    assert_eq!(f.compile_count(), 1);
}

/// Reshapes of intermediate values are views of their planned buffers,
/// made once in `init`; a buffer reused under another shape is viewed the
/// same way. `run` makes no allocation.
#[test]
fn reshapes_of_intermediates_are_views_made_in_init() {
    let def = function("views", |cx, x| {
        let e = cx.exp(x[0])?;
        let flat = cx.reshape(e, &[-1])?;
        let r = cx.relu(flat)?;
        let back = cx.reshape(r, &[2, 3])?;
        let t = cx.transpose(back, &[1, 0])?;
        let n = cx.neg(t)?;
        Ok(vec![flat, cx.tanh(n)?])
    });
    let mut f = CompiledFunction::new(host(), def).unwrap();
    let x = Tensor::from_vec(&[2, 3], vec![0.0f32, 1.0, -1.0, 0.5, -0.5, 2.0]).unwrap();
    let xs = x.to_vec::<f32>().unwrap();
    let e: Vec<f32> = xs.iter().map(|v| v.exp()).collect();
    // transpose of [2,3] -> [3,2]: out[j][i] = in[i][j]
    let t: Vec<f32> = (0..6).map(|k| e[(k % 2) * 3 + k / 2]).collect();
    let want: Vec<f32> = t.iter().map(|v| (-v.max(0.0)).tanh()).collect();
    for _ in 0..2 {
        let out = f.call(std::slice::from_ref(&x)).unwrap();
        assert_eq!(out[0].shape(), [6]);
        assert_close(&out[0].to_vec::<f32>().unwrap(), &e);
        assert_eq!(out[1].shape(), [3, 2]);
        assert_close(&out[1].to_vec::<f32>().unwrap(), &want);
    }
    let entry = f.compiler().draft();
    let decl = &entry.manifest().functions[0].entries[0];
    assert!(decl.buffers.len() >= 3, "{:?}", decl.buffers);
}

/// Seven inputs to one `concat` run as a chain of launches of at most six
/// operands each; the result is the plain concatenation.
#[test]
fn long_concats_run_as_chains() {
    let def = function("cat", |cx, x| {
        let mut parts = x.to_vec();
        parts.push(cx.neg(x[0])?);
        Ok(vec![cx.concat(&parts, 0)?])
    });
    let mut f = CompiledFunction::new(host(), def).unwrap();
    let xs: Vec<Tensor> = (0..6)
        .map(|i| tensor(&[i % 3 + 1, 2], 30 + i as u64))
        .collect();
    let out = f.call(&xs).unwrap();
    let mut want: Vec<f32> = xs.iter().flat_map(|t| t.to_vec::<f32>().unwrap()).collect();
    want.extend(xs[0].to_vec::<f32>().unwrap().iter().map(|v| -v));
    assert_eq!(out[0].shape(), [want.len() / 2, 2]);
    assert_eq!(out[0].to_vec::<f32>().unwrap(), want);
    let kernels: Vec<String> = f.compiler().manifest().functions[0].entries[0]
        .kernels
        .iter()
        .map(|k| format!("{}{:?}", k.kernel, k.attrs.get("n")))
        .collect();
    assert!(
        kernels.contains(&"concat@1Some(Int(5))".to_string())
            && kernels.contains(&"concat@1Some(Int(3))".to_string()),
        "{kernels:?}"
    );
}
