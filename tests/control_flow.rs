//! Wrapper control flow, end to end: `Tracer::cond` and `Tracer::while_loop`
//! compile to `If` and `Loop` steps of the wrapper, run in the sandbox, and
//! choose which kernels to launch from data read at run time. Every result is
//! compared with a direct computation in plain Rust.

mod common;

use ampoule::compiler::{function, CompiledFunction, FunctionDef, Traced};
use ampoule::host::error::TrapKind;
use ampoule::kernels::Tensor;
use anyhow::Result;

use common::test_host;

fn f32s(shape: &[usize], v: Vec<f32>) -> Tensor {
    Tensor::from_vec(shape, v).expect("tensor")
}

fn scalar_i64(v: i64) -> Tensor {
    Tensor::from_vec(&[], vec![v]).expect("tensor")
}

/// `y = sum(x) > 0 ? x * 2 + w : x - w`, with `w` captured (a package
/// weight) inside the branches.
fn branchy(w: Vec<f32>) -> FunctionDef {
    let w = f32s(&[4], w);
    function("branchy", move |cx, x| {
        let zero = cx.constant(f32s(&[], vec![0.0]));
        let s = cx.sum(x[0], &[0], false)?;
        let pred = cx.gt(s, zero)?;
        let (wt, we) = (w.clone(), w.clone());
        cx.cond(
            pred,
            &[x[0]],
            move |cx, a| {
                let w = cx.capture("w", &wt)?;
                let two = cx.constant(f32s(&[], vec![2.0]));
                let d = cx.mul(a[0], two)?;
                Ok(vec![cx.add(d, w)?])
            },
            move |cx, a| {
                let w = cx.capture("w", &we)?;
                Ok(vec![cx.sub(a[0], w)?])
            },
        )
    })
    .inputs(["x"])
    .outputs(["y"])
}

#[test]
fn cond_runs_the_branch_the_data_picks_from_one_entry() -> Result<()> {
    let w = vec![0.5f32, -1.0, 2.0, 0.25];
    let mut f = CompiledFunction::new(test_host(), branchy(w.clone()))?;
    let cases = [
        vec![1.0f32, 2.0, -0.5, 3.0],
        vec![-1.0f32, -2.0, 0.5, -3.0],
        vec![0.0f32; 4],
        vec![10.0f32, -9.0, 0.0, 0.0],
    ];
    for x in &cases {
        let y = f.call(&[f32s(&[4], x.clone())])?;
        let pos = x.iter().sum::<f32>() > 0.0;
        let want: Vec<f32> = x
            .iter()
            .zip(&w)
            .map(|(a, b)| if pos { a * 2.0 + b } else { a - b })
            .collect();
        assert_eq!(y[0].to_vec::<f32>()?, want, "x = {x:?}");
    }
    assert_eq!(f.compile_count(), 1, "one entry serves both branches");

    // Saved and reopened by a fresh host without a compiler: both branches
    // serve, and the weight is stored once.
    let dir = tempfile::tempdir()?;
    f.save(dir.path())?;
    let mut g = CompiledFunction::load(test_host(), dir.path(), "branchy")?;
    for x in &cases {
        assert_eq!(
            g.call(&[f32s(&[4], x.clone())])?[0].to_vec::<f32>()?,
            f.call(&[f32s(&[4], x.clone())])?[0].to_vec::<f32>()?
        );
    }
    Ok(())
}

/// Doubles `x` until its sum reaches `limit` (at most `cap` times), and
/// counts the trips: the trip count depends on the data.
fn doubling() -> FunctionDef {
    function("doubling", |cx, ins| {
        let (x, limit, cap) = (ins[0], ins[1], ins[2]);
        let zero = cx.constant(Tensor::from_vec(&[], vec![0i64]).expect("zero"));
        let out = cx.while_loop(
            &[x, zero],
            |cx, c| {
                let s = cx.sum(c[0], &[0], false)?;
                let below = cx.lt(s, limit)?;
                let under_cap = cx.lt(c[1], cap)?;
                let both = cx.cast(below, ampoule::kernels::DType::I64)?;
                let cap_ok = cx.cast(under_cap, ampoule::kernels::DType::I64)?;
                cx.mul(both, cap_ok)
            },
            |cx, c| {
                let one = cx.constant(Tensor::from_vec(&[], vec![1i64]).expect("one"));
                let doubled = cx.add(c[0], c[0])?;
                Ok(vec![doubled, cx.add(c[1], one)?])
            },
        )?;
        Ok(out)
    })
    .inputs(["x", "limit", "cap"])
    .outputs(["y", "trips"])
}

fn doubling_direct(x: &[f32], limit: f32, cap: i64) -> (Vec<f32>, i64) {
    let mut x = x.to_vec();
    let mut trips = 0;
    while x.iter().sum::<f32>() < limit && trips < cap {
        x.iter_mut().for_each(|v| *v += *v);
        trips += 1;
    }
    (x, trips)
}

#[test]
fn while_loop_trip_count_depends_on_data() -> Result<()> {
    let mut f = CompiledFunction::new(test_host(), doubling())?;
    let x = vec![0.25f32, 0.5, 1.0];
    for (limit, cap) in [
        (1.0f32, 100i64),
        (100.0, 100),
        (1e6, 100),
        (1e6, 3),
        (0.0, 100),
    ] {
        let limit_t = f32s(&[], vec![limit]);
        let out = f.call(&[f32s(&[3], x.clone()), limit_t, scalar_i64(cap)])?;
        let (want, trips) = doubling_direct(&x, limit, cap);
        assert_eq!(out[0].to_vec::<f32>()?, want, "limit {limit}, cap {cap}");
        assert_eq!(out[1].to_vec::<i64>()?, [trips], "limit {limit}, cap {cap}");
    }
    assert_eq!(f.compile_count(), 1, "one entry serves every trip count");
    // Many trips in one call: per-trip views and slots do not pile up.
    let out = f.call(&[
        f32s(&[3], vec![1e-30; 3]),
        f32s(&[], vec![1e30]),
        scalar_i64(5000),
    ])?;
    let (want, trips) = doubling_direct(&[1e-30; 3], 1e30, 5000);
    assert_eq!(out[0].to_vec::<f32>()?, want);
    assert_eq!(out[1].to_vec::<i64>()?, [trips]);
    assert!(trips > 100, "the loop ran {trips} times");
    Ok(())
}

/// Counts down from `n`, adding `x` into an accumulator on odd counts and
/// subtracting it on even ones: a `cond` inside a `while_loop`, both reading
/// `x` from outside.
fn nested() -> FunctionDef {
    function("nested", |cx, ins| {
        let (x, n) = (ins[0], ins[1]);
        let zero = cx_zero(cx)?;
        let acc0 = cx.mul(x, zero)?;
        let out = cx.while_loop(
            &[n, acc0],
            |cx, c| {
                let zero = cx.constant(Tensor::from_vec(&[], vec![0i64]).expect("zero"));
                cx.gt(c[0], zero)
            },
            |cx, c| {
                let one = cx.constant(Tensor::from_vec(&[], vec![1i64]).expect("one"));
                let two = cx.constant(Tensor::from_vec(&[], vec![2i64]).expect("two"));
                let half = cx.div(c[0], two)?;
                let even = cx.mul(half, two)?;
                let rem = cx.sub(c[0], even)?;
                let acc = cx.cond(
                    rem,
                    &[c[1]],
                    |cx, a| Ok(vec![cx.add(a[0], x)?]),
                    |cx, a| Ok(vec![cx.sub(a[0], x)?]),
                )?[0];
                Ok(vec![cx.sub(c[0], one)?, acc])
            },
        )?;
        Ok(vec![out[1]])
    })
    .inputs(["x", "n"])
    .outputs(["acc"])
}

fn cx_zero(
    cx: &mut ampoule::compiler::Tracer<'_>,
) -> Result<Traced, ampoule::compiler::TraceError> {
    Ok(cx.constant(f32s(&[], vec![0.0])))
}

#[test]
fn cond_nests_inside_while_loop() -> Result<()> {
    let mut f = CompiledFunction::new(test_host(), nested())?;
    let x = vec![1.5f32, -2.0];
    for n in [0i64, 1, 2, 5, 8] {
        let y = f.call(&[f32s(&[2], x.clone()), scalar_i64(n)])?;
        let mut acc = vec![0.0f32; 2];
        for k in (1..=n).rev() {
            for (a, v) in acc.iter_mut().zip(&x) {
                if k % 2 == 1 {
                    *a += v
                } else {
                    *a -= v
                }
            }
        }
        assert_eq!(y[0].to_vec::<f32>()?, acc, "n = {n}");
    }
    assert_eq!(f.compile_count(), 1);
    Ok(())
}

#[test]
fn a_loop_that_never_ends_hits_the_deadline() -> Result<()> {
    let forever = function("forever", |cx, ins| {
        let one = cx.constant(Tensor::from_vec(&[], vec![1i64]).expect("one"));
        let out = cx.while_loop(
            &[ins[0]],
            |_, _| Ok(one),
            |cx, c| Ok(vec![cx.add(c[0], c[0])?]),
        )?;
        Ok(out)
    })
    .inputs(["x"])
    .outputs(["y"]);
    let mut f = CompiledFunction::new(test_host(), forever)?;
    let err = f.call(&[f32s(&[2], vec![1.0, 2.0])]).unwrap_err();
    let host = match &err {
        ampoule::compiler::Error::Host(h) => h,
        other => panic!("expected a host error, got {other}"),
    };
    assert_eq!(host.trap_kind(), Some(&TrapKind::Deadline), "{err}");
    Ok(())
}

#[test]
fn region_mistakes_are_trace_errors_naming_the_op() {
    // Branches returning different shapes.
    let bad = function("bad", |cx, x| {
        let zero = cx.constant(f32s(&[], vec![0.0]));
        let s = cx.sum(x[0], &[0], false)?;
        let p = cx.gt(s, zero)?;
        cx.cond(
            p,
            &[x[0]],
            |_, a| Ok(vec![a[0]]),
            |cx, a| Ok(vec![cx.sum(a[0], &[0], false)?]),
        )
    });
    let err = CompiledFunction::new(test_host(), bad)
        .and_then(|mut f| f.call(&[f32s(&[3], vec![1.0; 3])]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cond") && err.contains("different types"),
        "{err}"
    );

    // A value from a finished region used outside it.
    let leak = function("leak", |cx, x| {
        let mut inner = None;
        let zero = cx.constant(f32s(&[], vec![0.0]));
        let s = cx.sum(x[0], &[0], false)?;
        let p = cx.gt(s, zero)?;
        cx.cond(
            p,
            &[x[0]],
            |cx, a| {
                let e = cx.exp(a[0])?;
                inner = Some(e);
                Ok(vec![e])
            },
            |_, a| Ok(vec![a[0]]),
        )?;
        Ok(vec![inner.expect("traced")])
    });
    let err = CompiledFunction::new(test_host(), leak)
        .and_then(|mut f| f.call(&[f32s(&[3], vec![1.0; 3])]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("region that has ended"), "{err}");
}

/// Branches in Rust on a value read from the data (a graph break): positive
/// sums take `tanh(x) * w`, the others `x - w`.
fn breaking(w: Vec<f32>) -> FunctionDef {
    let w = f32s(&[4], w);
    function("breaking", move |cx, x| {
        let s = cx.sum(x[0], &[0], false)?;
        let positive = cx.item_f64(s)? > 0.0;
        let w = cx.capture("w", &w)?;
        let y = if positive {
            let t = cx.tanh(x[0])?;
            cx.mul(t, w)?
        } else {
            cx.sub(x[0], w)?
        };
        Ok(vec![y])
    })
    .inputs(["x"])
    .outputs(["y"])
}

fn breaking_direct(x: &[f32], w: &[f32]) -> Vec<f32> {
    let positive = f64::from(x.iter().sum::<f32>()) > 0.0;
    x.iter()
        .zip(w)
        .map(|(a, b)| if positive { a.tanh() * b } else { a - b })
        .collect()
}

#[test]
fn a_graph_break_grows_its_entry_and_a_fresh_process_serves_both_paths() -> Result<()> {
    let w = vec![0.5f32, -1.0, 2.0, 0.25];
    let pos = vec![1.0f32, 2.0, -0.5, 3.0];
    let neg = vec![-1.0f32, -2.0, 0.5, -3.0];
    let mut f = CompiledFunction::new(test_host(), breaking(w.clone()))?;

    // The first call compiles the positive path; the negative one misses at
    // break 0 inside the sandbox and grows the same entry.
    let y = f.call(&[f32s(&[4], pos.clone())])?;
    assert_eq!(y[0].to_vec::<f32>()?, breaking_direct(&pos, &w));
    let y = f.call(&[f32s(&[4], neg.clone())])?;
    assert_eq!(y[0].to_vec::<f32>()?, breaking_direct(&neg, &w));
    assert_eq!(f.compile_count(), 2);
    let decl = f
        .compiler()
        .manifest()
        .function("breaking")
        .expect("function");
    assert_eq!(decl.entries.len(), 1, "one entry, grown by a continuation");
    assert_eq!(decl.entries[0].paths.len(), 2);
    // Both paths now run without compiling.
    for x in [&pos, &neg, &pos] {
        let y = f.call(&[f32s(&[4], x.clone())])?;
        assert_eq!(y[0].to_vec::<f32>()?, breaking_direct(x, &w));
    }
    assert_eq!(f.compile_count(), 2);

    // Saved, then served by a fresh process (the CLI, no compiler attached).
    let tmp = tempfile::tempdir()?;
    let pkg = tmp.path().join("breaking.ampoule");
    f.save(&pkg)?;
    for (name, x) in [("pos", &pos), ("neg", &neg)] {
        let input = tmp.path().join(format!("{name}.npy"));
        ampoule::npy::write(&input, &f32s(&[4], x.clone()))?;
        let out = tmp.path().join(name);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_ampoule"))
            .args(["run", pkg.to_str().unwrap(), "--input"])
            .arg(format!("x={}", input.display()))
            .args(["--output-dir", out.to_str().unwrap()])
            .output()?;
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let y = ampoule::npy::read(&out.join("y.npy"))?;
        assert_eq!(y.to_vec::<f32>()?, breaking_direct(x, &w), "{name}");
    }

    // A load-only function (no compiler) serves the compiled paths too.
    let mut served = CompiledFunction::load(test_host(), &pkg, "breaking")?;
    let y = served.call(&[f32s(&[4], pos.clone())])?;
    assert_eq!(y[0].to_vec::<f32>()?, breaking_direct(&pos, &w));
    Ok(())
}

#[test]
fn a_break_miss_without_a_compiler_is_a_typed_error() -> Result<()> {
    let w = vec![1.0f32; 4];
    let mut f = CompiledFunction::new(test_host(), breaking(w))?;
    f.call(&[f32s(&[4], vec![1.0; 4])])?;
    let tmp = tempfile::tempdir()?;
    f.save(tmp.path())?;
    let mut served = CompiledFunction::load(test_host(), tmp.path(), "breaking")?;
    let err = served.call(&[f32s(&[4], vec![-1.0; 4])]).unwrap_err();
    match &err {
        ampoule::compiler::Error::Host(ampoule::host::Error::BreakMiss {
            entry, index, ..
        }) => {
            assert_eq!((*entry, *index), (0, 0));
        }
        other => panic!("expected a miss at break 0, got {other}"),
    }
    assert!(err.to_string().contains("missed at break 0"), "{err}");
    Ok(())
}
