//! Concurrent serving: one loaded package, many threads, many calls.
//!
//! A real compiled package (two functions sharing nothing but the package,
//! four entries, weights in safetensors) is saved, reopened by a fresh host
//! and called from 8 threads × 10 000 calls. The calls mix every entry with
//! inputs that must fail: guard misses (wrong size, wrong dtype) and a kernel
//! that refuses its data (an embedding index out of range, which traps and
//! discards the instance). Every result is checked against a direct
//! computation, every failure against its exact typed error. Resident memory
//! is read after a warm-up and at the end and must stay flat; the number of
//! instantiations must stay within what the per-entry pools and the traps
//! explain.
//!
//! This is its own test binary (one test) so the RSS figures are this
//! test's alone.

mod common;

use std::io::Write;
use std::sync::{Arc, Barrier};

use ampoule::compiler::{function, Compiler, FunctionDef, Options};
use ampoule::host::error::TrapKind;
use ampoule::host::{Bindings, Error as HostError, Package};
use ampoule::kernels::Tensor;
use common::*;

const THREADS: usize = 8;
const CALLS: usize = 10_000;
const WARMUP: usize = 1_000;
const IN: usize = 3;
const OUT: usize = 2;
const VOCAB: usize = 10;
const EMBED: usize = 4;

/// `layer(x) = relu(x @ w + b)` with `w: f32[3,2]`, `b: f32[2]` captured.
fn layer(w: &Tensor, b: &Tensor) -> FunctionDef {
    let (w, b) = (w.clone(), b.clone());
    function("layer", move |cx, x| {
        let w = cx.capture("w", &w)?;
        let b = cx.capture("b", &b)?;
        let h = cx.linear(x[0], w, Some(b))?;
        Ok(vec![cx.relu(h)?])
    })
    .inputs(["x"])
    .outputs(["y"])
}

/// `lookup(ids) = table[ids] * 2`, `table: f32[10,4]` captured.
fn lookup(table: &Tensor) -> FunctionDef {
    let table = table.clone();
    function("lookup", move |cx, x| {
        let t = cx.capture("table", &table)?;
        let rows = cx.gather(t, x[0], 0)?;
        let two = cx.constant(Tensor::scalar(2.0f32));
        Ok(vec![cx.mul(rows, two)?])
    })
    .inputs(["ids"])
    .outputs(["rows"])
}

fn layer_direct(x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
    let rows = x.len() / IN;
    let mut out = Vec::with_capacity(rows * OUT);
    for r in 0..rows {
        for j in 0..OUT {
            let v: f32 = (0..IN).map(|i| x[r * IN + i] * w[i * OUT + j]).sum::<f32>() + b[j];
            out.push(v.max(0.0));
        }
    }
    out
}

fn lookup_direct(ids: &[i64], table: &[f32]) -> Vec<f32> {
    ids.iter()
        .flat_map(|&i| table[i as usize * EMBED..][..EMBED].iter().map(|v| v * 2.0))
        .collect()
}

/// Deterministic per-call inputs.
fn x_for(seed: usize, rows: usize) -> Vec<f32> {
    (0..rows * IN)
        .map(|i| ((seed * 31 + i) as f32 * 0.37).sin() * 2.0)
        .collect()
}

/// Resident and peak resident set size of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Weights {
    w: Vec<f32>,
    b: Vec<f32>,
    table: Vec<f32>,
}

/// One call, chosen by `i`, checked exactly. Returns whether it was meant to
/// fail.
fn one_call(pkg: &Package, weights: &Weights, thread: usize, i: usize) -> bool {
    let seed = thread * CALLS + i;
    match i % 7 {
        // Every layer entry.
        k @ 0..=2 => {
            let rows = [1, 2, 8][k];
            let x = x_for(seed, rows);
            let y = pkg
                .call("layer", &[f32s(&[rows, IN], x.clone())])
                .unwrap_or_else(|e| panic!("layer rows={rows}: {e}"));
            assert_eq!(y[0].shape(), &[rows, OUT]);
            let want = layer_direct(&x, &weights.w, &weights.b);
            let got = y[0].data::<f32>().unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{got:?} vs {want:?}"
                );
            }
            false
        }
        // The lookup entry.
        3 => {
            let ids: Vec<i64> = (0..3).map(|j| ((seed + j) % VOCAB) as i64).collect();
            let y = pkg
                .call("lookup", &[Tensor::from_vec(&[3], ids.clone()).unwrap()])
                .unwrap_or_else(|e| panic!("lookup: {e}"));
            assert_eq!(y[0].shape(), &[3, EMBED]);
            assert_eq!(
                y[0].to_vec::<f32>().unwrap(),
                lookup_direct(&ids, &weights.table)
            );
            false
        }
        // A size no entry admits: a miss explaining all three entries.
        4 => {
            let err = pkg
                .call("layer", &[f32s(&[3, IN], x_for(seed, 3))])
                .expect_err("rows=3 has no entry");
            match err {
                HostError::GuardMiss { explanations, .. } => assert_eq!(explanations.len(), 3),
                e => panic!("expected a guard miss, got {e}"),
            }
            true
        }
        // A dtype no entry admits.
        5 => {
            let x = Tensor::from_vec(&[2, IN], vec![0.5f64; 2 * IN]).unwrap();
            let err = pkg.call("layer", &[x]).expect_err("f64 has no entry");
            assert!(
                matches!(err, HostError::GuardMiss { .. }),
                "expected a guard miss, got {err}"
            );
            true
        }
        // An index out of range: the kernel refuses it inside the sandbox,
        // the instance is discarded.
        _ => {
            let ids = Tensor::from_vec(&[3], vec![0i64, VOCAB as i64 + seed as i64, 1]).unwrap();
            let err = pkg.call("lookup", &[ids]).expect_err("index out of range");
            assert_eq!(
                err.trap_kind(),
                Some(&TrapKind::KernelFailed),
                "expected a kernel failure, got {err}"
            );
            true
        }
    }
}

#[test]
fn eight_threads_ten_thousand_calls_each_all_checked_memory_flat() {
    let w = f32s(&[IN, OUT], vec![1.0, -1.0, 0.5, 2.0, -0.25, 0.0]);
    let b = f32s(&[OUT], vec![0.1, -0.2]);
    let table = f32s(
        &[VOCAB, EMBED],
        (0..VOCAB * EMBED).map(|i| i as f32 * 0.5 - 3.0).collect(),
    );

    // Compile four entries and save the package.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stress.ampoule");
    // Static shapes: the mix includes a size no entry serves (automatic
    // dynamic would make one).
    let mut compiler = Compiler::builder(test_host())
        .function(layer(&w, &b))
        .function(lookup(&table))
        .options(Options::default().static_shapes())
        .create()
        .unwrap();
    for rows in [1, 2, 8] {
        compiler
            .call("layer", &[f32s(&[rows, IN], x_for(0, rows))])
            .unwrap();
    }
    compiler
        .call(
            "lookup",
            &[Tensor::from_vec(&[3], vec![0i64, 1, 2]).unwrap()],
        )
        .unwrap();
    compiler.save(&dir).unwrap();
    drop(compiler);

    // A fresh host serves it; no compiler is attached.
    let host = test_host();
    let pkg = Arc::new(host.open(&dir, Bindings::new()).unwrap());
    let weights = Arc::new(Weights {
        w: w.to_vec().unwrap(),
        b: b.to_vec().unwrap(),
        table: table.to_vec().unwrap(),
    });
    let entries: usize = pkg
        .manifest()
        .functions
        .iter()
        .map(|f| f.entries.len())
        .sum();
    assert_eq!(entries, 4);

    let warm = Arc::new(Barrier::new(THREADS + 1));
    let measured = Arc::new(Barrier::new(THREADS + 1));
    let started = std::time::Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (pkg, weights) = (pkg.clone(), weights.clone());
            let (warm, measured) = (warm.clone(), measured.clone());
            std::thread::spawn(move || {
                let mut failures = 0usize;
                for i in 0..CALLS {
                    if i == WARMUP {
                        warm.wait();
                        measured.wait();
                    }
                    failures += one_call(&pkg, &weights, t, i) as usize;
                }
                failures
            })
        })
        .collect();
    warm.wait();
    let (rss_warm, hwm_warm) = rss_kib();
    measured.wait();
    let failures: usize = workers.into_iter().map(|h| h.join().unwrap()).sum();
    let elapsed = started.elapsed();
    let (rss_end, hwm_end) = rss_kib();

    let calls = THREADS * CALLS;
    let stats = host.stats();
    let traps = (0..THREADS)
        .flat_map(|t| (0..CALLS).map(move |i| (t, i)))
        .filter(|(_, i)| i % 7 == 6)
        .count() as u64;
    // Straight to stderr, past the test harness's capture, so the figures
    // show in CI's plain `cargo test` run.
    let _ = writeln!(
        std::io::stderr(),
        "stress: {THREADS} threads x {CALLS} calls = {calls} calls ({failures} meant to fail) in {:.2} s; \
         RSS after warm-up {} KiB, at end {} KiB; peak RSS after warm-up {} KiB, at end {} KiB; \
         {} instantiations, {} traps",
        elapsed.as_secs_f64(),
        rss_warm,
        rss_end,
        hwm_warm,
        hwm_end,
        stats.instantiations,
        stats.traps,
    );
    assert_eq!(
        failures,
        (0..CALLS).filter(|i| i % 7 >= 4).count() * THREADS
    );
    assert_eq!(stats.traps, traps);
    // Each trap discards its instance; otherwise the pools reuse instances,
    // and at most one per thread per entry is ever live at once.
    assert!(
        stats.instantiations <= traps + (THREADS * entries) as u64,
        "{} instantiations for {traps} traps: instances are not being reused",
        stats.instantiations
    );
    // Flat memory: after the warm-up has filled the pools, 70 000 more
    // calls may not grow the resident set by more than 32 MiB.
    if rss_warm > 0 {
        assert!(
            rss_end <= rss_warm + 32 * 1024,
            "resident memory grew from {rss_warm} KiB to {rss_end} KiB"
        );
    }
}
