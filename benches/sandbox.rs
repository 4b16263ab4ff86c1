//! Per-call overhead of the sandbox on tiny inputs, where kernels cost
//! almost nothing: a chain of N `binary@1 add` launches on f32[4], called
//! through a loaded package (guards + export call + N checked launches),
//! against the same N kernels called directly from Rust in the same run.
//!
//! The baseline calls `Bound::run_prechecked`, the entry point the host
//! itself uses after its launch check, so the difference is the sandbox.
//!
//! `cargo bench --bench sandbox`. Per-launch overhead is the slope between
//! the 1- and 10-kernel programs; per-call overhead is the 10-kernel call
//! minus the direct 10-kernel baseline.
//!
//! `per_call_dynamic` compares, on the same input, a static entry with a
//! dynamic entry (batch dim symbolic) of the same program: a chain of adds
//! on `f32[B, 16]`, a reshape to `[2B, 8]` and a row sum. The dynamic entry's
//! wrapper derives the shapes from the input's dims and allocates its
//! intermediates per run.

use std::hint::black_box;

use ampoule::compiler::{function, Compiler, Options};
use ampoule::host::{Host, HostConfig};
use ampoule::kernels::{AttrValue, Attrs, Impl, Registry, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};

fn chain(n: usize) -> ampoule::compiler::FunctionDef {
    function(format!("chain{n}"), move |cx, x| {
        let mut y = x[0];
        for _ in 0..n {
            y = cx.add(y, x[0])?;
        }
        Ok(vec![y])
    })
    .inputs(["x"])
    .outputs(["y"])
}

fn bench(c: &mut Criterion) {
    let host = Host::new(HostConfig {
        cache_dir: None,
        ..HostConfig::default()
    })
    .unwrap();
    let x = Tensor::from_vec(&[4], vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
    let mut compiler = Compiler::builder(host)
        .function(chain(1))
        .function(chain(10))
        .create()
        .unwrap();
    for n in [1, 10] {
        compiler
            .call(&format!("chain{n}"), std::slice::from_ref(&x))
            .unwrap();
    }
    let pkg = compiler.package();

    let mut g = c.benchmark_group("per_call_tiny");
    g.sample_size(30);
    for n in [1usize, 10] {
        let name = format!("chain{n}");
        g.bench_function(format!("sandboxed/{n}_kernels"), |b| {
            b.iter(|| black_box(pkg.call(&name, std::slice::from_ref(&x)).unwrap()))
        });
    }
    // The baseline: the same kernels, bound once, launched directly.
    let mut attrs = Attrs::new();
    attrs.insert("op".into(), AttrValue::Str("add".into()));
    let add = Registry::standard().bind("binary@1", &attrs).unwrap();
    for n in [1usize, 10] {
        g.bench_function(format!("direct/{n}_kernels"), |b| {
            let mut bufs: Vec<Tensor> = (0..n)
                .map(|_| Tensor::zeros(x.dtype(), x.shape()).unwrap())
                .collect();
            b.iter(|| {
                for i in 0..n {
                    let (done, rest) = bufs.split_at_mut(i);
                    let input = if i == 0 { &x } else { &done[i - 1] };
                    add.run_prechecked(Impl::Optimized, &[input, &x], &mut rest[..1])
                        .unwrap();
                }
                black_box(&bufs[n - 1]);
            })
        });
    }
    g.finish();
}

fn block(name: &str, dynamic: bool) -> ampoule::compiler::FunctionDef {
    let f = function(name, |cx, x| {
        let mut y = x[0];
        for _ in 0..8 {
            y = cx.add(y, x[0])?;
        }
        let r = cx.reshape(y, &[-1, 8])?;
        Ok(vec![cx.sum(r, &[1], false)?])
    })
    .inputs(["x"])
    .outputs(["y"]);
    if dynamic {
        f.dynamic("x", 0)
    } else {
        f
    }
}

fn bench_dynamic(c: &mut Criterion) {
    let host = Host::new(HostConfig {
        cache_dir: None,
        ..HostConfig::default()
    })
    .unwrap();
    // Static shapes for `static` (one entry per size); `dynamic` marks its
    // batch dim, so one entry serves both sizes.
    let mut compiler = Compiler::builder(host)
        .function(block("static", false))
        .function(block("dynamic", true))
        .options(Options::default().static_shapes())
        .create()
        .unwrap();
    let inputs: Vec<(usize, Tensor)> = [4usize, 64]
        .into_iter()
        .map(|rows| {
            let v = (0..rows * 16).map(|i| i as f32).collect();
            (rows, Tensor::from_vec(&[rows, 16], v).unwrap())
        })
        .collect();
    for (_, x) in &inputs {
        for name in ["static", "dynamic"] {
            compiler.call(name, std::slice::from_ref(x)).unwrap();
        }
    }
    assert_eq!(
        compiler
            .manifest()
            .function("dynamic")
            .unwrap()
            .entries
            .len(),
        1
    );
    let pkg = compiler.package();
    let mut g = c.benchmark_group("per_call_dynamic");
    g.sample_size(30);
    for (rows, x) in &inputs {
        for name in ["static", "dynamic"] {
            g.bench_function(format!("{name}/{rows}x16"), |b| {
                b.iter(|| black_box(pkg.call(name, std::slice::from_ref(&x)).unwrap()))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench, bench_dynamic);
criterion_main!(benches);
