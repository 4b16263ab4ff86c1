//! Cold start of the demo package, measured in fresh processes: `open` to
//! first result with an empty and with a warm compiled-artifact cache,
//! against compiling the same model from scratch (trace, compile, first
//! call) in the same run.
//!
//! `cargo bench --bench cold_start`. Each fresh-process sample runs
//! `ampoule cold-start PKG`, which times itself from `open` to the first
//! result (process start-up and `Host::new` are excluded and reported
//! separately on stderr).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ampoule::compiler::CompiledFunction;
use ampoule::demo;
use ampoule::host::{Host, HostConfig};
use criterion::{criterion_group, criterion_main, Criterion};

/// Runs one fresh process; returns (Host::new, open to first result).
fn fresh(pkg: &Path, cache: &Path) -> (Duration, Duration) {
    let o = Command::new(env!("CARGO_BIN_EXE_ampoule"))
        .arg("cold-start")
        .arg(pkg)
        .env("AMPOULE_CACHE_DIR", cache)
        .output()
        .expect("spawn ampoule");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = String::from_utf8_lossy(&o.stdout);
    let mut it = s
        .split_whitespace()
        .map(|v| Duration::from_nanos(v.parse().expect("nanoseconds")));
    (
        it.next().expect("host time"),
        it.next().expect("first-result time"),
    )
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let pkg = tmp.path().join("demo.ampoule");
    let weights = demo::Weights::new(42);
    let x = demo::tokens(demo::BATCH, demo::SEQ, 7);
    {
        let host = Host::new(HostConfig {
            cache_dir: None,
            ..HostConfig::default()
        })
        .unwrap();
        let mut f = CompiledFunction::new(host, demo::model(weights.clone())).unwrap();
        f.call(std::slice::from_ref(&x)).unwrap();
        f.save(&pkg).unwrap();
    }
    let warm = tmp.path().join("warm-cache");
    fresh(&pkg, &warm);

    let mut g = c.benchmark_group("cold_start_demo");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.bench_function("baseline/trace_compile_first_call", |b| {
        b.iter(|| {
            let host = Host::new(HostConfig {
                cache_dir: None,
                ..HostConfig::default()
            })
            .unwrap();
            let mut f = CompiledFunction::new(host, demo::model(weights.clone())).unwrap();
            f.call(std::slice::from_ref(&x)).unwrap()
        })
    });
    let mut n = 0u64;
    g.bench_function("fresh_process/open_to_first_result/empty_cache", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let cache = tmp.path().join(format!("empty-{n}"));
                total += fresh(&pkg, &cache).1;
            }
            total
        })
    });
    let mut host_new = Vec::new();
    g.bench_function("fresh_process/open_to_first_result/warm_cache", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (h, t) = fresh(&pkg, &warm);
                host_new.push(h);
                total += t;
            }
            total
        })
    });
    g.finish();
    host_new.sort();
    if let Some(m) = host_new.get(host_new.len() / 2) {
        eprintln!(
            "Host::new (engine + linker) in a fresh process, median: {:.2} ms",
            m.as_secs_f64() * 1e3
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
