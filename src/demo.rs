//! The built-in demo model: a small pre-norm transformer block (token
//! embedding, causal two-head self-attention, GELU MLP, residuals) with
//! seeded weights, and a direct computation of it in plain loops to check
//! compiled results against.
//!
//! `ampoule demo` traces it, compiles it, saves the package, reopens it in a
//! fresh process (`ampoule demo-run`), runs it in the sandbox, and checks the
//! outputs against the in-process results and the direct computation.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ampoule_compiler::{function, CompiledFunction, FunctionDef, TraceError, Traced, Tracer};
use ampoule_host::{Bindings, Host, HostConfig, Impl};
use ampoule_kernels::{DType, Tensor};
use anyhow::{bail, Context, Result};

/// Model sizes.
pub const VOCAB: usize = 64;
pub const DIM: usize = 32;
pub const HEADS: usize = 2;
pub const HIDDEN: usize = 4 * DIM;
/// The demo's default input: batch 2, 8 tokens.
pub const BATCH: usize = 2;
pub const SEQ: usize = 8;
const EPS: f64 = 1e-5;

/// A deterministic generator (splitmix64), so weights and inputs are the
/// same in every process and on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[-scale, scale)`.
    pub fn uniform(&mut self, scale: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * u - 1.0) * scale
    }

    pub fn tensor(&mut self, shape: &[usize], scale: f32) -> Tensor {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.uniform(scale)).collect();
        Tensor::from_vec(shape, v).expect("shape matches data")
    }
}

/// The demo model's weights.
#[derive(Clone)]
pub struct Weights {
    pub emb: Tensor,
    pub ln1_g: Tensor,
    pub ln1_b: Tensor,
    pub wq: Tensor,
    pub bq: Tensor,
    pub wk: Tensor,
    pub bk: Tensor,
    pub wv: Tensor,
    pub bv: Tensor,
    pub wo: Tensor,
    pub bo: Tensor,
    pub ln2_g: Tensor,
    pub ln2_b: Tensor,
    pub w1: Tensor,
    pub b1: Tensor,
    pub w2: Tensor,
    pub b2: Tensor,
}

impl Weights {
    /// Seeded weights.
    pub fn new(seed: u64) -> Self {
        let mut r = Rng::new(seed);
        let ones_ish = |r: &mut Rng, n: usize| {
            let v: Vec<f32> = (0..n).map(|_| 1.0 + r.uniform(0.1)).collect();
            Tensor::from_vec(&[n], v).expect("shape matches data")
        };
        Weights {
            emb: r.tensor(&[VOCAB, DIM], 1.0),
            ln1_g: ones_ish(&mut r, DIM),
            ln1_b: r.tensor(&[DIM], 0.1),
            wq: r.tensor(&[DIM, DIM], 0.3),
            bq: r.tensor(&[DIM], 0.1),
            wk: r.tensor(&[DIM, DIM], 0.3),
            bk: r.tensor(&[DIM], 0.1),
            wv: r.tensor(&[DIM, DIM], 0.3),
            bv: r.tensor(&[DIM], 0.1),
            wo: r.tensor(&[DIM, DIM], 0.3),
            bo: r.tensor(&[DIM], 0.1),
            ln2_g: ones_ish(&mut r, DIM),
            ln2_b: r.tensor(&[DIM], 0.1),
            w1: r.tensor(&[DIM, HIDDEN], 0.3),
            b1: r.tensor(&[HIDDEN], 0.1),
            w2: r.tensor(&[HIDDEN, DIM], 0.15),
            b2: r.tensor(&[DIM], 0.1),
        }
    }
}

/// Seeded token ids of shape `[batch, seq]`.
pub fn tokens(batch: usize, seq: usize, seed: u64) -> Tensor {
    let mut r = Rng::new(seed);
    let v: Vec<i64> = (0..batch * seq)
        .map(|_| (r.next_u64() % VOCAB as u64) as i64)
        .collect();
    Tensor::from_vec(&[batch, seq], v).expect("shape matches data")
}

/// The traced model: `forward(tokens: i64[B, T]) -> (hidden: f32[B, T, D],
/// pooled: f32[B, D])`. Weights are captured, so they become package
/// globals.
pub fn model(w: Weights) -> FunctionDef {
    function(
        "forward",
        move |cx: &mut Tracer<'_>, x: &[Traced]| -> Result<Vec<Traced>, TraceError> {
            let tokens = x[0];
            let (b, t) = (cx.shape(tokens)[0], cx.shape(tokens)[1]);
            let dh = DIM / HEADS;
            let g = |cx: &mut Tracer<'_>, name: &str, t: &Tensor| cx.capture(name, t);
            let emb = g(cx, "emb", &w.emb)?;
            let x0 = cx.gather(emb, tokens, 0)?;
            let (g1, b1) = (g(cx, "ln1.g", &w.ln1_g)?, g(cx, "ln1.b", &w.ln1_b)?);
            let h = cx.layer_norm(x0, g1, b1, -1, EPS)?;
            let proj = |cx: &mut Tracer<'_>,
                        wn: &str,
                        wt: &Tensor,
                        bn: &str,
                        bt: &Tensor|
             -> Result<Traced, TraceError> {
                let (wv, bv) = (cx.capture(wn, wt)?, cx.capture(bn, bt)?);
                cx.linear(h, wv, Some(bv))
            };
            let q = proj(cx, "attn.wq", &w.wq, "attn.bq", &w.bq)?;
            let k = proj(cx, "attn.wk", &w.wk, "attn.bk", &w.bk)?;
            let v = proj(cx, "attn.wv", &w.wv, "attn.bv", &w.bv)?;
            let heads =
                |cx: &mut Tracer<'_>, y: Traced, perm: &[usize]| -> Result<Traced, TraceError> {
                    let y = cx.reshape(y, &[b as i64, t as i64, HEADS as i64, dh as i64])?;
                    cx.transpose(y, perm)
                };
            let q = heads(cx, q, &[0, 2, 1, 3])?; // [B, H, T, dh]
            let kt = heads(cx, k, &[0, 2, 3, 1])?; // [B, H, dh, T]
            let v = heads(cx, v, &[0, 2, 1, 3])?; // [B, H, T, dh]
            let scores = cx.matmul(q, kt)?;
            let scale = cx.constant(Tensor::scalar(1.0 / (dh as f32).sqrt()));
            let scores = cx.mul(scores, scale)?;
            // Causal mask: position i attends to positions <= i.
            let mask: Vec<ampoule_kernels::Bool8> = (0..t * t)
                .map(|ij| ampoule_kernels::Bool8(u8::from(ij % t <= ij / t)))
                .collect();
            let mask = cx.constant(Tensor::from_vec(&[t, t], mask).map_err(TraceError::msg)?);
            let neg = cx.constant(Tensor::scalar(-1e9f32));
            let scores = cx.where_(mask, scores, neg)?;
            let p = cx.softmax(scores, -1)?;
            let a = cx.matmul(p, v)?; // [B, H, T, dh]
            let a = cx.transpose(a, &[0, 2, 1, 3])?;
            let a = cx.reshape(a, &[b as i64, t as i64, DIM as i64])?;
            let (wo, bo) = (g(cx, "attn.wo", &w.wo)?, g(cx, "attn.bo", &w.bo)?);
            let o = cx.linear(a, wo, Some(bo))?;
            let x1 = cx.add(x0, o)?;
            let (g2, b2) = (g(cx, "ln2.g", &w.ln2_g)?, g(cx, "ln2.b", &w.ln2_b)?);
            let h2 = cx.layer_norm(x1, g2, b2, -1, EPS)?;
            let (w1, bb1) = (g(cx, "mlp.w1", &w.w1)?, g(cx, "mlp.b1", &w.b1)?);
            let m = cx.linear(h2, w1, Some(bb1))?;
            let m = cx.gelu(m)?;
            let (w2, bb2) = (g(cx, "mlp.w2", &w.w2)?, g(cx, "mlp.b2", &w.b2)?);
            let m = cx.linear(m, w2, Some(bb2))?;
            let y = cx.add(x1, m)?;
            let pooled = cx.mean(y, &[1], false)?;
            Ok(vec![y, pooled])
        },
    )
    .inputs(["tokens"])
    .outputs(["hidden", "pooled"])
}

/// The model computed directly, in f64 plain loops, independent of the
/// kernels: returns `(hidden [B*T*D], pooled [B*D])`.
pub fn direct(w: &Weights, tokens: &Tensor) -> Result<(Vec<f32>, Vec<f32>)> {
    let (b, t) = (tokens.shape()[0], tokens.shape()[1]);
    let ids = tokens.data::<i64>()?;
    let f = |x: &Tensor| -> Result<Vec<f64>> {
        Ok(x.data::<f32>()?.iter().map(|&v| f64::from(v)).collect())
    };
    let (emb, g1, be1, g2, be2) = (
        f(&w.emb)?,
        f(&w.ln1_g)?,
        f(&w.ln1_b)?,
        f(&w.ln2_g)?,
        f(&w.ln2_b)?,
    );
    let lin = |x: &[f64], wt: &Tensor, bt: &Tensor| -> Result<Vec<f64>> {
        let (k, n) = (wt.shape()[0], wt.shape()[1]);
        let (wv, bv) = (f(wt)?, f(bt)?);
        let rows = x.len() / k;
        let mut out = vec![0.0; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let mut acc = bv[j];
                for i in 0..k {
                    acc += x[r * k + i] * wv[i * n + j];
                }
                out[r * n + j] = acc;
            }
        }
        Ok(out)
    };
    let ln = |x: &[f64], g: &[f64], be: &[f64]| -> Vec<f64> {
        x.chunks(DIM)
            .flat_map(|row| {
                let mean = row.iter().sum::<f64>() / DIM as f64;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / DIM as f64;
                let inv = 1.0 / (var + EPS).sqrt();
                row.iter()
                    .enumerate()
                    .map(move |(i, v)| (v - mean) * inv * g[i] + be[i])
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mut x0 = Vec::with_capacity(b * t * DIM);
    for &id in ids {
        let id = usize::try_from(id)
            .ok()
            .filter(|&i| i < VOCAB)
            .context("token id out of range")?;
        x0.extend_from_slice(&emb[id * DIM..(id + 1) * DIM]);
    }
    let h = ln(&x0, &g1, &be1);
    let (q, k, v) = (
        lin(&h, &w.wq, &w.bq)?,
        lin(&h, &w.wk, &w.bk)?,
        lin(&h, &w.wv, &w.bv)?,
    );
    let dh = DIM / HEADS;
    let mut a = vec![0.0; b * t * DIM];
    for bi in 0..b {
        for hd in 0..HEADS {
            for i in 0..t {
                let qi = |d: usize| q[(bi * t + i) * DIM + hd * dh + d];
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        (0..dh)
                            .map(|d| qi(d) * k[(bi * t + j) * DIM + hd * dh + d])
                            .sum::<f64>()
                            / (dh as f64).sqrt()
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..dh {
                    a[(bi * t + i) * DIM + hd * dh + d] = (0..=i)
                        .map(|j| e[j] / z * v[(bi * t + j) * DIM + hd * dh + d])
                        .sum();
                }
            }
        }
    }
    let o = lin(&a, &w.wo, &w.bo)?;
    let x1: Vec<f64> = x0.iter().zip(&o).map(|(a, b)| a + b).collect();
    let h2 = ln(&x1, &g2, &be2);
    let m: Vec<f64> = lin(&h2, &w.w1, &w.b1)?
        .into_iter()
        .map(|u| 0.5 * u * (1.0 + erf(u / std::f64::consts::SQRT_2)))
        .collect();
    let m = lin(&m, &w.w2, &w.b2)?;
    let y: Vec<f64> = x1.iter().zip(&m).map(|(a, b)| a + b).collect();
    let mut pooled = vec![0.0; b * DIM];
    for bi in 0..b {
        for d in 0..DIM {
            pooled[bi * DIM + d] =
                (0..t).map(|i| y[(bi * t + i) * DIM + d]).sum::<f64>() / t as f64;
        }
    }
    Ok((
        y.iter().map(|&v| v as f32).collect(),
        pooled.iter().map(|&v| v as f32).collect(),
    ))
}

/// erf by its Maclaurin series (small |x|) and continued fraction (large
/// |x|); accurate to ~1e-12, plenty for checking f32 results.
fn erf(x: f64) -> f64 {
    if x.abs() < 3.0 {
        let mut sum = x;
        let mut term = x;
        for n in 1..80 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // erfc continued fraction (Lentz), then erf = 1 - erfc.
        let z = x.abs();
        let mut f = z;
        let (mut c, mut d) = (z, 0.0);
        for n in 1..200 {
            let an = n as f64 / 2.0;
            d = z + an * d;
            d = 1.0 / d;
            c = z + an / c;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-15 {
                break;
            }
        }
        let erfc = (-z * z).exp() / (f * std::f64::consts::PI.sqrt());
        (1.0 - erfc).copysign(x)
    }
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const SEED_WEIGHTS: u64 = 42;
const SEED_TOKENS: u64 = 7;

fn host(reference: bool) -> Result<Host> {
    Ok(Host::new(HostConfig {
        kernels: if reference {
            Impl::Reference
        } else {
            Impl::Optimized
        },
        ..HostConfig::default()
    })?)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// `ampoule demo`.
pub fn cli_demo(package: Option<PathBuf>, reference: bool) -> Result<()> {
    let tmp;
    let dir = match package {
        Some(d) => d,
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().join("demo.ampoule")
        }
    };
    let weights = Weights::new(SEED_WEIGHTS);
    let x = tokens(BATCH, SEQ, SEED_TOKENS);
    println!("ampoule demo: a transformer block (vocab {VOCAB}, dim {DIM}, {HEADS} heads, mlp {HIDDEN}) on tokens {:?}", x.shape());

    let t = Instant::now();
    let mut f = CompiledFunction::new(host(reference)?, model(weights.clone()))?;
    let setup = t.elapsed();
    let t = Instant::now();
    let out = f.call(std::slice::from_ref(&x))?;
    let compile_and_call = t.elapsed();
    let t = Instant::now();
    f.save(&dir)?;
    let save = t.elapsed();
    println!(
        "[1] trace + compile + first call: {}  (compiled {} entr{}; setup {})",
        ms(compile_and_call),
        f.compile_count(),
        if f.compile_count() == 1 { "y" } else { "ies" },
        ms(setup)
    );
    println!("[2] save package to {}: {}", dir.display(), ms(save));

    let out_dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    let t = Instant::now();
    let mut cmd = Command::new(exe);
    cmd.arg("demo-run")
        .arg(&dir)
        .arg("--output-dir")
        .arg(out_dir.path());
    if reference {
        cmd.arg("--reference");
    }
    let status = cmd.status().context("cannot start the second process")?;
    if !status.success() {
        bail!("the second process failed ({status})");
    }
    println!(
        "[3] fresh process (open, verify, run in the sandbox) finished in {}",
        ms(t.elapsed())
    );

    let (hid, pooled) = direct(&weights, &x)?;
    let names = ["hidden", "pooled"];
    let direct = [hid, pooled];
    for (i, name) in names.iter().enumerate() {
        let other = crate::npy::read(&out_dir.path().join(format!("{name}.npy")))?;
        let here = out[i].data::<f32>()?;
        let there = other.data::<f32>()?;
        if here != there {
            bail!("output `{name}` differs between the compiling process and the fresh process");
        }
        let diff = max_abs_diff(there, &direct[i]);
        println!("    {name} {}: identical in both processes; max |diff| vs direct f64 computation = {diff:.2e}", other.meta());
        if diff > 1e-3 {
            bail!("output `{name}` is off from the direct computation by {diff}");
        }
    }
    let pooled = out[1].data::<f32>()?;
    println!("    pooled[0][..8] = {:?}", &pooled[..8.min(pooled.len())]);
    println!("ok");
    Ok(())
}

/// `ampoule demo-run`: the fresh process. Opens the package without a
/// compiler, runs it, writes outputs as `.npy`, prints timings.
pub fn cli_demo_run(dir: &Path, output_dir: &Path, reference: bool) -> Result<()> {
    let t = Instant::now();
    let host = host(reference)?;
    let engine = t.elapsed();
    let t = Instant::now();
    let pkg = host.open(dir, Bindings::new())?;
    let open = t.elapsed();
    let x = tokens(BATCH, SEQ, SEED_TOKENS);
    let t = Instant::now();
    let out = pkg.call("forward", std::slice::from_ref(&x))?;
    let first = t.elapsed();
    let mut times: Vec<Duration> = (0..50)
        .map(|_| {
            let t = Instant::now();
            let r = pkg.call("forward", std::slice::from_ref(&x));
            (t.elapsed(), r.is_ok())
        })
        .map(|(d, ok)| if ok { d } else { Duration::MAX })
        .collect();
    times.sort();
    if times.last() == Some(&Duration::MAX) {
        bail!("a warm call failed");
    }
    let stats = host.stats();
    println!(
        "    engine {}, open+verify {}, first call {} ({}), warm call median {}; no compiler in this process",
        ms(engine),
        ms(open),
        ms(first),
        if stats.cache_hits > 0 { "wrapper from the local artifact cache" } else { "wrapper compiled by cranelift" },
        ms(times[times.len() / 2]),
    );
    std::fs::create_dir_all(output_dir)?;
    for (name, t) in ["hidden", "pooled"].iter().zip(&out) {
        if t.dtype() != DType::F32 {
            bail!("output `{name}` is {}, expected f32", t.dtype());
        }
        crate::npy::write(&output_dir.join(format!("{name}.npy")), t)?;
    }
    Ok(())
}

/// `ampoule cold-start`: one cold start, measured inside a fresh process.
pub fn cli_cold_start(dir: &Path) -> Result<()> {
    let t = Instant::now();
    let host = host(false)?;
    let host_ns = t.elapsed().as_nanos();
    let x = tokens(BATCH, SEQ, SEED_TOKENS);
    let t = Instant::now();
    let pkg = host.open(dir, Bindings::new())?;
    let out = pkg.call("forward", std::slice::from_ref(&x))?;
    let first_ns = t.elapsed().as_nanos();
    std::hint::black_box(out);
    println!("{host_ns} {first_ns}");
    Ok(())
}
