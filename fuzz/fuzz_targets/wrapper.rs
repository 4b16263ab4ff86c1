//! Whole-wrapper execution, differential: random programs, traced through
//! the compiler's own frontend, compiled to a package (passes, memory plan,
//! lowering, the guest's Wasm emitter, package writer), opened and run
//! sandboxed by the host on its reference kernels, and compared with the IR
//! interpreter (`ampoule_compiler::interp`) on the traced graph.
//!
//! The fuzzer's bytes choose the inputs (dtype, shape, data), one optional
//! host-bound global (plain or content-specialized), and up to 24 steps, each
//! an op of the catalog on earlier values: elementwise, compare, where,
//! cast, matmul and linear (with a fresh weight of the right shape), softmax,
//! layer_norm, reductions, transpose, reshape, concat (up to 7 inputs),
//! slice, gather (indices usually in range), copy, constants and captured
//! globals (embedded as package weights). A step the tracer refuses is
//! skipped, as a user's program would not have it. The compiled function is
//! called on two sets of input data: the second must reuse the first entry.
//!
//! Failures:
//! - any panic, in the compiler, the host or a kernel;
//! - the compiled call and the interpreter disagreeing: one fails and the
//!   other does not, or the outputs differ in meta or in any byte (both run
//!   the same reference kernels, so they agree bit for bit);
//! - a second call with same-meta inputs compiling a new entry.
#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use ampoule_compiler::interp::evaluate;
use ampoule_compiler::{function, Compiler, Example, FunctionDef, TraceError, Traced, Tracer};
use ampoule_host::Host;
use ampoule_kernels::{AttrValue, Attrs, DType, Impl, Registry, Tensor};
use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

use ampoule_fuzz::{push_element, BINARY, COMPARE, REDUCE, UNARY};

#[derive(Arbitrary, Debug, Clone)]
struct InputR {
    dtype: u8,
    shape: Vec<u8>,
}

#[derive(Arbitrary, Debug, Clone)]
enum StepR {
    Unary { x: u8, op: u8 },
    Binary { a: u8, b: u8, op: u8 },
    Compare { a: u8, b: u8, op: u8 },
    Where { c: u8, a: u8, b: u8 },
    Cast { x: u8, to: u8 },
    Matmul { a: u8, n: u8, batch: bool },
    Linear { x: u8, n: u8, trans: bool, bias: bool },
    Softmax { x: u8, axis: i8 },
    LayerNorm { x: u8, axis: u8 },
    Reduce { x: u8, op: u8, axes: u8, keepdims: bool },
    Transpose { x: u8, seed: u8 },
    Reshape { x: u8, to: u8 },
    Concat { xs: Vec<u8>, axis: i8 },
    Slice { x: u8, parts: Vec<(i8, i8, i8)> },
    Gather { x: u8, axis: i8, shape: Vec<u8>, oob: bool },
    Copy { x: u8 },
    Constant { dtype: u8, shape: Vec<u8>, seed: u8 },
    Capture { dtype: u8, shape: Vec<u8>, seed: u8 },
    Bound { specialized: bool },
}

#[derive(Arbitrary, Debug, Clone)]
struct Recipe {
    inputs: Vec<InputR>,
    bound: Option<InputR>,
    steps: Vec<StepR>,
    outputs: Vec<u8>,
}

fn dtype(b: u8) -> DType {
    // Mostly f32. The 16-bit and unsigned dtypes share the last residue,
    // so inputs saved before they existed (regressions/) keep their dtypes.
    match b % 12 {
        0..=4 => DType::F32,
        5 => DType::F64,
        6 => DType::I8,
        7 => DType::U8,
        8 => DType::I32,
        9 => DType::I64,
        10 => DType::Bool,
        _ => match (b / 12) % 5 {
            1 => DType::I16,
            2 => DType::U16,
            3 => DType::U32,
            4 => DType::U64,
            _ => DType::F32,
        },
    }
}

fn shape(s: &[u8]) -> Vec<usize> {
    let mut v: Vec<usize> = s.iter().take(4).map(|&d| d as usize % 5).collect();
    // At most 256 elements per tensor.
    while v.iter().product::<usize>() > 256 {
        if let Some(d) = v.iter_mut().find(|d| **d > 1) {
            *d = 1;
        }
    }
    v
}

/// A deterministic tensor: small values (grid), with edge values mixed in.
fn tensor(d: DType, shape: &[usize], seed: u8) -> Tensor {
    let n: usize = shape.iter().product();
    let mut bytes = Vec::new();
    for i in 0..n {
        let k = ((i as i64 * 37 + i64::from(seed) * 11) % 23) - 11;
        let f = match (i + seed as usize) % 29 {
            0 => f64::NAN,
            1 => f64::INFINITY,
            2 => -0.0,
            _ => k as f64 * 0.375,
        };
        push_element(&mut bytes, d, k, f);
    }
    Tensor::from_bytes(d, shape, &bytes).expect("consistent length")
}

fn s(v: &str) -> AttrValue {
    AttrValue::Str(v.into())
}

fn at(pairs: &[(&str, AttrValue)]) -> Attrs {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// Runs one step; `None` when the tracer refuses it.
fn step(cx: &mut Tracer<'_>, vals: &[Traced], st: &StepR, i: usize) -> Result<Vec<Traced>, TraceError> {
    let v = |k: u8| vals[k as usize % vals.len()];
    let one = |r: Result<Traced, TraceError>| r.map(|t| vec![t]);
    match st {
        StepR::Unary { x, op } => cx.kernel("unary@1", at(&[("op", s(UNARY[*op as usize % UNARY.len()]))]), &[v(*x)]),
        StepR::Binary { a, b, op } => {
            cx.kernel("binary@1", at(&[("op", s(BINARY[*op as usize % BINARY.len()]))]), &[v(*a), v(*b)])
        }
        StepR::Compare { a, b, op } => {
            cx.kernel("compare@1", at(&[("op", s(COMPARE[*op as usize % COMPARE.len()]))]), &[v(*a), v(*b)])
        }
        StepR::Where { c, a, b } => {
            let (c, a, b) = (v(*c), v(*a), v(*b));
            let c = if cx.dtype(c) == DType::Bool { c } else { cx.kernel("compare@1", at(&[("op", s("gt"))]), &[c, a])?[0] };
            one(cx.where_(c, a, b))
        }
        StepR::Cast { x, to } => one(cx.cast(v(*x), dtype(*to))),
        StepR::Matmul { a, n, batch } => {
            let a = v(*a);
            let sh = cx.shape(a).to_vec();
            let mut bs: Vec<usize> = if *batch && sh.len() > 2 { sh[..sh.len() - 2].to_vec() } else { vec![] };
            bs.push(sh.last().copied().unwrap_or(1));
            bs.push(*n as usize % 5);
            let b = cx.constant(tensor(cx.dtype(a), &bs, *n));
            one(cx.matmul(a, b))
        }
        StepR::Linear { x, n, trans, bias } => {
            let x = v(*x);
            let k = cx.shape(x).last().copied().unwrap_or(1);
            let n = *n as usize % 5;
            let d = cx.dtype(x);
            let w = cx.capture(&format!("w{i}"), &tensor(d, &if *trans { [n, k] } else { [k, n] }, 3))?;
            let b = if *bias { Some(cx.capture(&format!("b{i}"), &tensor(d, &[n], 5))?) } else { None };
            one(if *trans { cx.linear_t(x, w, b) } else { cx.linear(x, w, b) })
        }
        StepR::Softmax { x, axis } => one(cx.softmax(v(*x), i64::from(*axis % 5))),
        StepR::LayerNorm { x, axis } => {
            let x = v(*x);
            let sh = cx.shape(x).to_vec();
            let a = *axis as usize % (sh.len() + 1);
            let d = cx.dtype(x);
            let scale = cx.constant(tensor(d, &sh[a.min(sh.len())..], 7));
            let bias = cx.constant(tensor(d, &sh[a.min(sh.len())..], 9));
            cx.kernel("layer_norm@1", at(&[("axis", AttrValue::Int(a as i64))]), &[x, scale, bias])
        }
        StepR::Reduce { x, op, axes, keepdims } => {
            let x = v(*x);
            let rank = cx.shape(x).len() as i64;
            let bits = u32::from(*axes);
            let axes: Vec<i64> = (0..rank).filter(|&d| (bits >> d.min(31)) & 1 == 1).map(|d| if bits & 0x80 != 0 { d - rank } else { d }).collect();
            cx.kernel(
                "reduce@1",
                at(&[
                    ("op", s(REDUCE[*op as usize % REDUCE.len()])),
                    ("axes", AttrValue::Ints(axes)),
                    ("keepdims", AttrValue::Int(i64::from(*keepdims))),
                ]),
                &[x],
            )
        }
        StepR::Transpose { x, seed } => {
            let x = v(*x);
            let mut perm: Vec<usize> = (0..cx.shape(x).len()).collect();
            let mut r = *seed as usize;
            for j in (1..perm.len()).rev() {
                perm.swap(j, r % (j + 1));
                r /= j + 1;
            }
            one(cx.transpose(x, &perm))
        }
        StepR::Reshape { x, to } => {
            let x = v(*x);
            let sh = cx.shape(x).to_vec();
            let n: usize = sh.iter().product();
            let target: Vec<i64> = match to % 5 {
                0 => vec![-1],
                1 => vec![1, -1],
                2 => sh.iter().rev().map(|&d| d as i64).collect(),
                3 => vec![],
                _ => {
                    // Any other value's shape with the same element count.
                    let other = vals.iter().map(|&t| cx.shape(t).to_vec()).find(|s| s.iter().product::<usize>() == n && *s != sh);
                    other.unwrap_or_default().iter().map(|&d| d as i64).collect()
                }
            };
            one(cx.reshape(x, &target))
        }
        StepR::Concat { xs, axis } => {
            let xs: Vec<Traced> = xs.iter().take(7).map(|&k| v(k)).collect();
            if xs.is_empty() {
                return Err(TraceError::msg("no inputs"));
            }
            one(cx.concat(&xs, i64::from(*axis % 5)))
        }
        StepR::Slice { x, parts } => {
            let x = v(*x);
            let rank = cx.shape(x).len();
            let p: Vec<(i8, i8, i8)> = parts.iter().copied().cycle().take(rank).collect();
            if p.len() != rank {
                return Err(TraceError::msg("no parts"));
            }
            let starts: Vec<i64> = p.iter().map(|t| i64::from(t.0 % 8)).collect();
            let ends: Vec<i64> = p.iter().map(|t| i64::from(t.1 % 8)).collect();
            let steps: Vec<i64> = p.iter().map(|t| i64::from(t.2 % 3)).map(|s| if s == 0 { 1 } else { s }).collect();
            one(cx.slice(x, &starts, &ends, &steps))
        }
        StepR::Gather { x, axis, shape: ish, oob } => {
            let x = v(*x);
            let sh = cx.shape(x).to_vec();
            let rank = sh.len().max(1) as i64;
            let ax = i64::from(*axis).rem_euclid(rank);
            let dim = sh.get(ax as usize).copied().unwrap_or(1) as i64;
            let ishape = shape(ish);
            let n: usize = ishape.iter().product();
            let idx: Vec<i64> = (0..n as i64)
                .map(|j| if *oob && j == 0 { dim } else if dim == 0 { 0 } else { (j * 5 + 3) % (2 * dim) - dim })
                .collect();
            let indices = cx.constant(Tensor::from_vec(&ishape, idx).expect("length"));
            one(cx.gather(x, indices, ax))
        }
        StepR::Copy { x } => one(cx.copy(v(*x))),
        StepR::Constant { dtype: d, shape: sh, seed } => Ok(vec![cx.constant(tensor(dtype(*d), &shape(sh), *seed))]),
        StepR::Capture { dtype: d, shape: sh, seed } => {
            one(cx.capture(&format!("g{i}"), &tensor(dtype(*d), &shape(sh), *seed)))
        }
        StepR::Bound { specialized } => one(if *specialized { cx.bound_specialized("bound") } else { cx.bound("bound") }),
    }
}

fn def(r: &Recipe) -> FunctionDef {
    let r = Arc::new(r.clone());
    function("random", move |cx, x| {
        let mut vals: Vec<Traced> = x.to_vec();
        if vals.is_empty() {
            vals.push(cx.constant(Tensor::scalar(1.5f32)));
        }
        for (i, st) in r.steps.iter().take(24).enumerate() {
            // A step the tracer refuses is skipped.
            if let Ok(out) = step(cx, &vals, st, i) {
                vals.extend(out);
            }
        }
        let outs: Vec<Traced> = r.outputs.iter().take(3).map(|&o| vals[o as usize % vals.len()]).collect();
        Ok(if outs.is_empty() { vec![*vals.last().expect("one value")] } else { outs })
    })
}

fn host() -> &'static Host {
    static H: OnceLock<Host> = OnceLock::new();
    H.get_or_init(|| ampoule_fuzz::host_with(Impl::Reference))
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::standard)
}

/// With `AMPOULE_FUZZ_STATS` set, every 1000 programs: how many compiled,
/// how many had at least one kernel launch, how many failed on both sides.
fn stats(launches: usize, outcome: usize) {
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    static ON: OnceLock<bool> = OnceLock::new();
    static N: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];
    if !*ON.get_or_init(|| std::env::var_os("AMPOULE_FUZZ_STATS").is_some()) {
        return;
    }
    let n = N[0].fetch_add(1, Relaxed) + 1;
    if launches > 0 {
        N[1].fetch_add(1, Relaxed);
    }
    N[2 + outcome.min(1)].fetch_add(1, Relaxed);
    if n % 1000 == 0 {
        eprintln!(
            "wrapper stats: {n} programs, {} with kernels, {} ran on both sides, {} failed on both",
            N[1].load(Relaxed),
            N[2].load(Relaxed),
            N[3].load(Relaxed)
        );
    }
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.meta() == b.meta() && a.bytes() == b.bytes()
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(r) = Recipe::arbitrary(&mut u) else { return };
    if r.inputs.len() > 3 {
        return;
    }
    let metas: Vec<(DType, Vec<usize>)> = r.inputs.iter().map(|i| (dtype(i.dtype), shape(&i.shape))).collect();
    let mut bindings = BTreeMap::new();
    if let Some(b) = &r.bound {
        bindings.insert("bound".to_string(), tensor(dtype(b.dtype), &shape(&b.shape), 1));
    }
    let d = def(&r);
    let examples: Vec<Example> = metas.iter().map(|(d, s)| Example::meta(ampoule_kernels::TensorMeta::new(*d, s.clone()))).collect();
    let Ok(trace) = d.trace(&examples, registry(), &bindings) else { return };
    let launches = trace.graph.nodes.iter().filter(|n| matches!(n.op, ampoule_compiler::ir::Op::Kernel { .. })).count();

    let mut builder = Compiler::builder(host().clone()).function(d);
    for (n, t) in &bindings {
        builder = builder.bind(n.clone(), t.clone());
    }
    let mut c = builder.create().expect("an empty compiler");
    for seed in [0u8, 101] {
        let xs: Vec<Tensor> = metas.iter().enumerate().map(|(i, (d, s))| tensor(*d, s, seed.wrapping_add(i as u8 * 13))).collect();
        let want = evaluate(&trace.graph, registry(), &xs, &bindings);
        let got = c.call("random", &xs);
        match (&want, &got) {
            (Ok(w), Ok(g)) => {
                assert_eq!(w.len(), g.len(), "output count\n{}", trace.graph);
                for (k, (w, g)) in w.iter().zip(g).enumerate() {
                    assert!(same(w, g), "output {k}: interpreter {w:?}, compiled {g:?}\n{}", trace.graph);
                }
            }
            (Err(_), Err(_)) => {
                stats(launches, 1);
                return;
            }
            _ => panic!(
                "interpreter {:?}, compiled {:?}\n{}",
                want.as_ref().map(|_| "ok"),
                got.as_ref().map(|_| "ok"),
                trace.graph
            ),
        }
    }
    assert_eq!(c.compile_count(), 1, "same metas compiled a second entry\n{}", trace.graph);
    stats(launches, 0);
});
