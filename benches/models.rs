//! The ampoule half of the real-model comparison benchmark
//! (`conformance/bench_models.py` runs it and onnxruntime, and prints the
//! ratios). For each model of `conformance/models.json` it compiles a
//! package for the model's input shapes, saves it, and measures, on a host
//! with optimized kernels:
//! - open-to-first-result: `Host::open` of the saved package plus its first
//!   call (median of a few, the host's compiled-wrapper cache warm);
//! - warm latency: the median of repeated calls on the opened package.
//!
//! Prints one JSON object per model on stdout (`{"model", "open_first_ms",
//! "median_ms", "runs"}` or `{"model", "unsupported"}`). Kernel threads come
//! from `RAYON_NUM_THREADS`, which the script sets to onnxruntime's count.
//!
//! `AMPOULE_BENCH_RUNS=N` sets the number of warm calls (for profiling a
//! model's steady state with `perf`).
//!
//! Run only by `cargo bench --bench models` (which passes `--bench`); under
//! `cargo test --all-targets` it does nothing.

#[path = "../conformance/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use ampoule::host::{Bindings, Impl};
use anyhow::{Context, Result};

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn bench_model(cache: &std::path::Path, m: &serde_json::Value) -> Result<serde_json::Value> {
    let name = m["name"].as_str().context("a model without `name`")?;
    let n_inputs = m["inputs"].as_array().map_or(0, Vec::len);
    let dir = cache.join("models").join(name);
    let inputs = (0..n_inputs)
        .map(|k| ampoule::npy::read(&dir.join(format!("input_{k}.npy"))))
        .collect::<Result<Vec<_>>>()?;
    let bytes = std::fs::read(cache.join("models").join(format!("{name}.onnx")))?;
    let host = harness::host(Impl::Optimized)?;
    let unsupported =
        |reason: String| Ok(serde_json::json!({ "model": name, "unsupported": reason }));
    let model = match harness::load(&bytes) {
        Ok(m) => m,
        Err(tag) => return unsupported(tag),
    };
    if let Err(tag) = harness::compile_and_open(&model, &inputs, std::slice::from_ref(&host)) {
        return unsupported(tag);
    }
    // Compile again to save the package (compile_and_open keeps it in memory).
    let examples: Vec<_> = inputs.iter().map(ampoule::compiler::Example::of).collect();
    let mut c = ampoule::compiler::Compiler::builder(host.clone())
        .function(model.function("forward"))
        .create()?;
    c.compile("forward", &examples)?;
    let tmp = tempfile::tempdir()?;
    let pkg_dir = tmp.path().join("pkg");
    c.save(&pkg_dir)?;

    let mut open_first = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let pkg = host.open(&pkg_dir, Bindings::new())?;
        pkg.call("forward", &inputs)?;
        open_first.push(t.elapsed());
    }
    let pkg = host.open(&pkg_dir, Bindings::new())?;
    pkg.call("forward", &inputs)?;
    // About two seconds of calls, between 5 and 200, unless set.
    let t = Instant::now();
    pkg.call("forward", &inputs)?;
    let one = t.elapsed().as_secs_f64().max(1e-6);
    let runs = std::env::var("AMPOULE_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(((2.0 / one) as usize).clamp(5, 200));
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        pkg.call("forward", &inputs)?;
        times.push(t.elapsed());
    }
    Ok(serde_json::json!({
        "model": name,
        "open_first_ms": median(open_first),
        "median_ms": median(times),
        "runs": runs,
    }))
}

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs bench targets too; this one is
        // only meaningful through conformance/bench_models.py.
        return Ok(());
    }
    let cache = harness::fetch("models")?;
    let path = harness::data_file("models.json");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    for m in json["models"]
        .as_array()
        .context("models.json has no `models`")?
    {
        let name = m["name"].as_str().unwrap_or("");
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let line = bench_model(&cache, m).unwrap_or_else(|e| {
            serde_json::json!({ "model": name, "unsupported": harness::one_line(&harness::chain_text(&e)) })
        });
        println!("{line}");
    }
    Ok(())
}
