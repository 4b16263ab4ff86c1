//! The ONNX backend node tests (from the `onnx` 1.22.0 wheel, fetched by
//! `conformance/fetch node` into the cache) run through ampoule: every case
//! whose ops are all in `conformance/ops.txt` is imported, compiled into a
//! package, opened on a host with optimized kernels and on one with
//! reference kernels only, run on its `test_data_set_0` inputs, and compared
//! with the expected outputs (rtol 1e-3, atol 1e-7, or the op's own
//! tolerance from `conformance/tolerances.txt`).
//!
//! Known failures are listed, with a tag saying why, in
//! `conformance/node_allowlist.txt`. The test fails when a case fails that
//! is not listed, when a listed case passes in both modes (the line must be
//! deleted; the test prints it), and when the two modes pass different sets
//! (the portability check). `AMPOULE_BLESS=1` rewrites the allow-list from
//! the run instead; review the diff.

#[path = "../conformance/harness.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use ampoule::compiler::onnx::proto::{data_type, GraphProto, Message, ModelProto, TensorProto};
use ampoule::compiler::onnx::tensor;
use ampoule::host::Host;
use ampoule::kernels::Tensor;
use anyhow::{bail, Context, Result};
use harness::{Outcome, Tolerance, MODES};

/// Every op of the graph and its subgraphs, and whether all are in the
/// default domain.
fn graph_ops(g: &GraphProto, ops: &mut BTreeSet<String>, default_domain: &mut bool) {
    for n in &g.node {
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            *default_domain = false;
        }
        ops.insert(n.op_type.clone());
        for a in &n.attribute {
            for sub in a.g.iter().chain(&a.graphs) {
                graph_ops(sub, ops, default_domain);
            }
        }
    }
}

/// One node test case.
struct Case {
    name: String,
    dir: PathBuf,
    ops: BTreeSet<String>,
    /// Why the case cannot run at all, found before importing it.
    out_of_scope: Option<String>,
}

fn read_pb(path: &Path) -> Result<TensorProto, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("test-data: {}: {e}", path.display()))?;
    TensorProto::decode(bytes.as_slice()).map_err(|e| {
        format!(
            "test-data: {} is not a TensorProto ({e})",
            path.file_name().unwrap_or_default().to_string_lossy()
        )
    })
}

/// The `input_k.pb` or `output_k.pb` tensors of a data set, in order.
fn read_set(dir: &Path, prefix: &str) -> Result<Vec<Tensor>, String> {
    let mut out = Vec::new();
    for k in 0.. {
        let path = dir.join(format!("{prefix}_{k}.pb"));
        if !path.exists() {
            break;
        }
        let p = read_pb(&path)?;
        if tensor::dtype_of(p.data_type).is_none() {
            let name = match data_type::name(p.data_type) {
                n if n.contains(' ') => format!("onnx-type-{}", p.data_type),
                n => n.to_ascii_lowercase(),
            };
            return Err(format!("dtype:{name} out of scope"));
        }
        out.push(tensor::from_proto(&p).map_err(|e| format!("test-data: {prefix}_{k}.pb: {e}"))?);
    }
    Ok(out)
}

fn run_case(case: &Case, hosts: &[Host], tolerances: &BTreeMap<String, Tolerance>) -> Outcome {
    let fail_all = |tag: String| vec![Err(tag); hosts.len()];
    if let Some(tag) = &case.out_of_scope {
        return fail_all(tag.clone());
    }
    let set = case.dir.join("test_data_set_0");
    let prepared = harness::catch(|| {
        let inputs = read_set(&set, "input")?;
        let expected = read_set(&set, "output")?;
        let bytes = std::fs::read(case.dir.join("model.onnx"))
            .map_err(|e| format!("test-data: model.onnx: {e}"))?;
        let model = harness::load(&bytes)?;
        if model.inputs().len() != inputs.len() {
            return Err(format!(
                "test-data: the model has {} inputs, the data set {}",
                model.inputs().len(),
                inputs.len()
            ));
        }
        let packages = harness::compile_and_open(&model, &inputs, hosts)?;
        Ok((inputs, expected, packages))
    });
    let (inputs, expected, packages) = match prepared {
        Ok(p) => p,
        Err(tag) => return fail_all(tag),
    };
    let default = Tolerance {
        rtol: 1e-3,
        atol: 1e-7,
    };
    let tol = case
        .ops
        .iter()
        .filter_map(|op| tolerances.get(op))
        .fold(default, |a, b| Tolerance {
            rtol: a.rtol.max(b.rtol),
            atol: a.atol.max(b.atol),
        });
    packages
        .iter()
        .map(|pkg| {
            harness::catch(|| {
                let got = pkg.call("forward", &inputs).map_err(|e| {
                    format!(
                        "run-error: {}",
                        harness::one_line(&harness::chain_text(&e.into()))
                    )
                })?;
                if got.len() != expected.len() {
                    return Err(format!(
                        "mismatch: {} outputs, expected {}",
                        got.len(),
                        expected.len()
                    ));
                }
                for (k, (g, w)) in got.iter().zip(&expected).enumerate() {
                    harness::compare(g, w, tol)
                        .map_err(|e| format!("mismatch: output {k}: {e}"))?;
                }
                Ok(())
            })
        })
        .collect()
}

fn read_tolerances() -> Result<BTreeMap<String, Tolerance>> {
    let path = harness::data_file("tolerances.txt");
    let mut out = BTreeMap::new();
    for line in harness::read_lines(&path)? {
        let f: Vec<&str> = line.split_whitespace().collect();
        let parsed = match f.as_slice() {
            [op, rtol, atol] => rtol
                .parse()
                .ok()
                .zip(atol.parse().ok())
                .map(|(r, a)| (op.to_string(), Tolerance { rtol: r, atol: a })),
            _ => None,
        };
        let (op, tol) = parsed.with_context(|| {
            format!("`{}`: line `{line}` must be `OP RTOL ATOL`", path.display())
        })?;
        out.insert(op, tol);
    }
    Ok(out)
}

#[test]
fn onnx_backend_node_tests() -> Result<()> {
    let cache = harness::fetch("node")?;
    let node_dir = cache.join("onnx-node");
    let op_set: BTreeSet<String> = harness::read_lines(&harness::data_file("ops.txt"))?
        .into_iter()
        .collect();
    let tolerances = read_tolerances()?;
    let allow_path = harness::data_file("node_allowlist.txt");

    let mut names: Vec<String> = std::fs::read_dir(&node_dir)
        .with_context(|| format!("cannot list `{}`", node_dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("model.onnx").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names.is_empty() {
        bail!(
            "no node tests in `{}`; delete that dir and rerun to fetch them again",
            node_dir.display()
        );
    }
    let mut cases = Vec::new();
    let mut skipped = BTreeSet::new();
    for name in names {
        let dir = node_dir.join(&name);
        let bytes = std::fs::read(dir.join("model.onnx"))?;
        let proto = ModelProto::decode(bytes.as_slice())
            .with_context(|| format!("node test `{name}`: model.onnx does not decode"))?;
        let mut ops = BTreeSet::new();
        let mut default_domain = true;
        let mut out_of_scope = None;
        if let Some(g) = &proto.graph {
            graph_ops(g, &mut ops, &mut default_domain);
            // Sequence, optional, map and sparse values decode with no
            // tensor type.
            if g.input
                .iter()
                .chain(&g.output)
                .any(|v| v.r#type.as_ref().is_some_and(|t| t.value.is_none()))
            {
                out_of_scope = Some("type:non-tensor (sequence or optional) out of scope".into());
            }
        }
        let in_set = default_domain && ops.iter().all(|op| op_set.contains(op));
        if in_set && !ops.is_empty() {
            cases.push(Case {
                name,
                dir,
                ops,
                out_of_scope,
            });
        } else {
            skipped.insert(name);
        }
    }

    let hosts: Vec<Host> = MODES
        .iter()
        .map(|(_, k)| harness::host(*k))
        .collect::<Result<_>>()?;
    let t0 = Instant::now();
    let next = AtomicUsize::new(0);
    let results: Mutex<BTreeMap<String, Outcome>> = Mutex::new(BTreeMap::new());
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(case) = cases.get(i) else { break };
                let outcome = run_case(case, &hosts, &tolerances);
                results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(case.name.clone(), outcome);
            });
        }
    });
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    harness::say(&format!(
        "onnx node tests: {} cases in the op set, each in {} kernel modes, run in {:.1} s ({workers} threads)",
        results.len(),
        MODES.len(),
        t0.elapsed().as_secs_f64()
    ));

    let skipped = skipped.len();
    harness::judge(&results, &allow_path, |mode, passed, listed| {
        harness::say(&format!(
            "onnx node tests: {passed} passed, {listed} allow-listed, {skipped} skipped (ops outside the set) [{mode} kernels]"
        ))
    })
}
