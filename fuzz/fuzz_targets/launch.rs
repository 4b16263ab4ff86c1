//! Launch validation: random launches against every kernel of
//! `Registry::standard()`.
//!
//! Each input picks a kernel, attributes (usually a valid choice for that
//! family, sometimes corrupted: wrong types, extra keys, extreme values),
//! operand metas (any dtype, rank <= 8, dims 0..=4, related to each other
//! the way kernels need: equal, broadcast, matmul partners, suffixes...) and
//! data. Binding and the checker run on everything; when the checker
//! accepts, the reference implementation (`run`) and the optimized one
//! (`run_prechecked`, as the host launches) both run, some inputs as views
//! at an offset inside a larger buffer, and their results are compared.
//!
//! Failures:
//! - any panic: in `bind`, `check` or either implementation of a launch the
//!   checker accepted (an out-of-bounds access in safe code is a panic; in
//!   the kernels' one `unsafe` call, AddressSanitizer reports it);
//! - `check` accepting a wrong operand count, or returning an output that
//!   is not addressable (rank > 8, byte size overflow);
//! - the reference and optimized implementations disagreeing: on success
//!   vs error, or on the result (except a convolution's with a random
//!   epilogue, which can turn results within tolerance into any others). Ints, bools and every kernel that does not
//!   reduce compare bit for bit (NaN equal to NaN); reducing float kernels
//!   (matmul, linear, linear_panels, conv, conv_transpose, softmax, layer_norm, reduce
//!   sum/mean) compare within
//!   the tolerance the kernels' own tests use, on data from a grid of small
//!   values plus NaN/inf/-0 (their results then do not depend on summation
//!   order beyond that tolerance).
#![no_main]

use std::sync::{Arc, OnceLock};

use ampoule_kernels::{AttrValue, Attrs, DType, Impl, Registry, Tensor, TensorMeta, MAX_RANK};
use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// Largest operand the fuzzer builds, in elements.
const MAX_NUMEL: usize = 2048;
/// Largest output it runs.
const MAX_OUT_NUMEL: usize = 1 << 14;

fn registry() -> &'static (Registry, Vec<String>) {
    static R: OnceLock<(Registry, Vec<String>)> = OnceLock::new();
    R.get_or_init(|| {
        let r = Registry::standard();
        let ids = r.ids();
        (r, ids)
    })
}

use ampoule_fuzz::{BINARY, COMPARE, REDUCE, UNARY};
const KEYS: [&str; 14] = [
    "op", "axis", "axes", "keepdims", "perm", "n", "starts", "ends", "steps", "to", "trans_w",
    "bias", "epsilon", "typo",
];

fn small_int(u: &mut Unstructured) -> Result<i64> {
    Ok(match u.int_in_range(0u8..=15)? {
        0 => i64::MIN,
        1 => i64::MAX,
        2 => i64::from(i32::MIN),
        3 => u.arbitrary()?,
        _ => i64::from(u.int_in_range(-10i8..=10)?),
    })
}

fn int_list(u: &mut Unstructured, max: usize) -> Result<Vec<i64>> {
    let n = u.int_in_range(0..=max)?;
    (0..n).map(|_| small_int(u)).collect()
}

fn any_value(u: &mut Unstructured) -> Result<AttrValue> {
    Ok(match u.int_in_range(0u8..=4)? {
        0 => AttrValue::Int(small_int(u)?),
        1 => AttrValue::Float(u.arbitrary()?),
        2 => AttrValue::Ints(int_list(u, 9)?),
        3 => AttrValue::Floats(u.arbitrary()?),
        _ => AttrValue::Str(if u.arbitrary()? { u.arbitrary()? } else { (*u.choose(&UNARY)?).into() }),
    })
}

fn s(v: &str) -> AttrValue {
    AttrValue::Str(v.into())
}

/// Attributes for `kernel`: a valid choice for its family most of the time.
fn attrs(u: &mut Unstructured, kernel: &str, rank: usize) -> Result<Attrs> {
    let mut a = Attrs::new();
    let family = kernel.split('@').next().unwrap_or("");
    let axis = |u: &mut Unstructured| -> Result<AttrValue> {
        let r = rank.max(1) as i64;
        Ok(AttrValue::Int(if u.ratio(7, 8)? { u.int_in_range(-r..=r - 1)? } else { small_int(u)? }))
    };
    match family {
        "binary" => {
            a.insert("op".into(), s(u.choose(&BINARY)?));
        }
        "compare" => {
            a.insert("op".into(), s(u.choose(&COMPARE)?));
        }
        "unary" => {
            a.insert("op".into(), s(u.choose(&UNARY)?));
        }
        "linear" => {
            for k in ["trans_w", "bias"] {
                if u.arbitrary()? {
                    a.insert(k.into(), AttrValue::Int(u.int_in_range(0..=1)?));
                }
            }
        }
        "panels" => {
            let width = if u.ratio(7, 8)? { u.int_in_range(1..=20)? } else { small_int(u)? };
            a.insert("width".into(), AttrValue::Int(width));
            if u.arbitrary()? {
                a.insert("trans".into(), AttrValue::Int(u.int_in_range(0..=1)?));
            }
        }
        "linear_panels" => {
            let n = if u.ratio(7, 8)? { u.int_in_range(0..=40)? } else { small_int(u)? };
            a.insert("n".into(), AttrValue::Int(n));
            if u.arbitrary()? {
                a.insert("bias".into(), AttrValue::Int(u.int_in_range(0..=1)?));
            }
        }
        "softmax" | "gather" => {
            a.insert("axis".into(), axis(u)?);
        }
        "layer_norm" => {
            a.insert("axis".into(), axis(u)?);
            if u.arbitrary()? {
                let eps = *u.choose(&[1e-5, 0.0, 1.0, -1.0, f64::NAN, f64::INFINITY, 1e-300])?;
                a.insert("epsilon".into(), AttrValue::Float(eps));
            }
        }
        "reduce" => {
            a.insert("op".into(), s(u.choose(&REDUCE)?));
            let n = u.int_in_range(0..=rank.min(8))?;
            let r = rank.max(1) as i64;
            let axes: Vec<i64> = (0..n).map(|_| u.int_in_range(-r..=r - 1)).collect::<Result<_>>()?;
            a.insert("axes".into(), AttrValue::Ints(axes));
            a.insert("keepdims".into(), AttrValue::Int(u.int_in_range(0..=1)?));
        }
        "transpose" => {
            if u.ratio(7, 8)? {
                let mut perm: Vec<i64> = (0..rank as i64).collect();
                for i in (1..perm.len()).rev() {
                    let j = u.int_in_range(0..=i)?;
                    perm.swap(i, j);
                }
                a.insert("perm".into(), AttrValue::Ints(perm));
            } else if u.arbitrary()? {
                a.insert("perm".into(), AttrValue::Ints(int_list(u, 9)?));
            }
        }
        "concat" => {
            a.insert("axis".into(), axis(u)?);
            a.insert("n".into(), AttrValue::Int(u.int_in_range(0..=6)?));
        }
        "fused" => {
            // A chain over 1..=5 inputs; operands usually earlier registers.
            let inputs = u.int_in_range(0..=6)?;
            a.insert("inputs".into(), AttrValue::Int(inputs as i64));
            a.insert("program".into(), AttrValue::Str(program(u, inputs)?));
        }
        "conv" | "conv_transpose" => {
            // Spatial attributes for `rank - 2` axes (sometimes another
            // count), a group and a bias; for `conv`, often an epilogue of
            // the result and 0..=2 more inputs.
            let axes = if u.ratio(7, 8)? { rank.saturating_sub(2) } else { u.int_in_range(0..=4)? };
            let list = |u: &mut Unstructured, lo: i64, hi: i64, n: usize| -> Result<AttrValue> {
                let v = (0..n)
                    .map(|_| if u.ratio(15, 16)? { u.int_in_range(lo..=hi) } else { small_int(u) })
                    .collect::<Result<_>>()?;
                Ok(AttrValue::Ints(v))
            };
            a.insert("pads".into(), list(u, 0, 4, 2 * axes)?);
            a.insert("strides".into(), list(u, 1, 3, axes)?);
            a.insert("dilations".into(), list(u, 1, 2, axes)?);
            if family == "conv_transpose" && u.arbitrary()? {
                a.insert("output_padding".into(), list(u, 0, 1, axes)?);
            }
            a.insert("group".into(), AttrValue::Int(if u.ratio(3, 4)? { 1 } else { u.int_in_range(1..=4)? }));
            a.insert("bias".into(), AttrValue::Int(u.int_in_range(0..=1)?));
            if family == "conv" && u.ratio(1, 2)? {
                let extra = u.int_in_range(0..=2)?;
                a.insert("post".into(), AttrValue::Str(program(u, extra + 1)?));
                a.insert("post_inputs".into(), AttrValue::Int(extra as i64));
            }
        }
        "slice" => {
            let n = if u.ratio(7, 8)? { rank } else { u.int_in_range(0..=9)? };
            let mut starts = Vec::new();
            let mut ends = Vec::new();
            let mut steps = Vec::new();
            for _ in 0..n {
                starts.push(small_int(u)?);
                ends.push(small_int(u)?);
                steps.push(if u.ratio(1, 16)? { 0 } else { small_int(u)? });
            }
            a.insert("starts".into(), AttrValue::Ints(starts));
            a.insert("ends".into(), AttrValue::Ints(ends));
            if u.arbitrary()? {
                a.insert("steps".into(), AttrValue::Ints(steps));
            }
        }
        "cast" => {
            let to = if u.ratio(15, 16)? { u.choose(&DType::ALL)?.name() } else { "f16" };
            a.insert("to".into(), s(to));
        }
        _ => {}
    }
    // Corruption: an extra key, a dropped key, or a value of any type.
    if u.ratio(1, 8)? {
        match u.int_in_range(0u8..=2)? {
            0 => {
                a.insert((*u.choose(&KEYS)?).into(), any_value(u)?);
            }
            1 => {
                let keys: Vec<String> = a.keys().cloned().collect();
                if !keys.is_empty() {
                    a.remove(u.choose(&keys)?);
                }
            }
            _ => {
                let keys: Vec<String> = a.keys().cloned().collect();
                if !keys.is_empty() {
                    let k = u.choose(&keys)?.clone();
                    a.insert(k, any_value(u)?);
                }
            }
        }
    }
    Ok(a)
}

/// A `fused@1` program over `inputs` registers: 0..=8 instructions whose
/// operands are usually earlier registers.
fn program(u: &mut Unstructured, inputs: usize) -> Result<String> {
    let mut program = Vec::new();
    for i in 0..u.int_in_range(0..=8)? {
        let regs = (inputs + i).max(1);
        let mut reg = || -> Result<usize> { u.int_in_range(0..=regs) };
        let (a, b) = (reg()?, reg()?);
        program.push(if u.ratio(1, 8)? {
            format!("const:{}", f64::from(u.int_in_range(-8i8..=8)?) * 0.25)
        } else if u.arbitrary()? {
            format!("{}:{a}:{b}", u.choose(&BINARY)?)
        } else {
            format!("{}:{a}", u.choose(&UNARY)?)
        });
    }
    Ok(program.join(" "))
}

/// A convolution input `[N, C, spatial..]` with 1..=2 spatial axes, the last
/// long enough (16..=70) for the direct path's row tiles, within
/// `MAX_NUMEL`.
fn conv_input(u: &mut Unstructured) -> Result<Vec<usize>> {
    let mut s = vec![u.int_in_range(1..=2)?, u.int_in_range(1..=8)?];
    if u.arbitrary()? {
        s.push(u.int_in_range(1..=6)?);
    }
    s.push(u.int_in_range(16..=70)?);
    while s.iter().product::<usize>() > MAX_NUMEL {
        s[1] = (s[1] / 2).max(1);
        s[0] = 1;
    }
    Ok(capped(s))
}

/// Operand `j > 0` of a convolution on `x`: its weights `[M, C/g, k..]`
/// (1..=5 per spatial axis, C/g from the group attribute), its
/// bias `[M]`, or an epilogue input: per-channel `[M, 1..]`, the output's
/// shape (a guess), or a scalar.
fn conv_operand(u: &mut Unstructured, at: &Attrs, prev: &[Vec<usize>], j: usize) -> Result<Vec<usize>> {
    let x = &prev[0];
    let group = match at.get("group") {
        Some(AttrValue::Int(g)) if *g >= 1 => *g as usize,
        _ => 1,
    };
    let c = x.get(1).copied().unwrap_or(1);
    let m = prev.get(1).and_then(|w| w.first()).copied();
    let spatial = x.len().saturating_sub(2);
    Ok(match (j, m) {
        (1, _) => {
            let mut w = vec![group * u.int_in_range(1..=9)?, (c / group).max(1)];
            for _ in 0..spatial {
                w.push(u.int_in_range(1..=5)?);
            }
            w
        }
        (_, Some(m)) => match u.int_in_range(0u8..=3)? {
            0 => vec![m],
            1 => {
                let mut s = vec![m];
                s.extend(vec![1; spatial]);
                s
            }
            2 => {
                // The output for stride 1 and 'same' padding, roughly.
                let mut s = vec![x.first().copied().unwrap_or(1), m];
                s.extend(x.get(2..).unwrap_or_default());
                s
            }
            _ => vec![1],
        },
        _ => random_shape(u)?,
    })
}

fn dtype(u: &mut Unstructured) -> Result<DType> {
    Ok(*u.choose(&DType::ALL)?)
}

fn random_shape(u: &mut Unstructured) -> Result<Vec<usize>> {
    let rank = if u.ratio(1, 16)? { u.int_in_range(0..=MAX_RANK)? } else { u.int_in_range(0..=4)? };
    (0..rank).map(|_| Ok(u.int_in_range(0u8..=4)? as usize)).collect()
}

/// Shrinks trailing dims to 1 until the shape holds at most `MAX_NUMEL`.
fn capped(mut shape: Vec<usize>) -> Vec<usize> {
    let mut i = shape.len();
    while shape.iter().product::<usize>() > MAX_NUMEL && i > 0 {
        i -= 1;
        shape[i] = shape[i].min(1);
    }
    shape
}

/// The shape of operand `j > 0`, related to earlier ones.
fn related_shape(u: &mut Unstructured, prev: &[Vec<usize>]) -> Result<Vec<usize>> {
    let base = &prev[0];
    let last = prev.last().unwrap_or(base);
    let r = base.len();
    Ok(match u.int_in_range(0u8..=9)? {
        0 | 1 => base.clone(),
        2 => {
            // Broadcast: some dims 1, maybe leading dims dropped.
            let mut s: Vec<usize> = base.iter().map(|&d| if u.ratio(1, 3).unwrap_or(false) { 1 } else { d }).collect();
            let drop = u.int_in_range(0..=s.len())?;
            s.drain(..drop);
            s
        }
        3 => {
            // Matmul partner: [..., K] x [..., K, N].
            let n = u.int_in_range(0u8..=4)? as usize;
            let mut s: Vec<usize> = if r >= 2 { base[..r - 2].to_vec() } else { vec![] };
            if u.arbitrary()? {
                s.clear();
            }
            s.push(base.last().copied().unwrap_or(1));
            s.push(n);
            s
        }
        4 => {
            // Linear weight [K, N] or [N, K].
            let n = u.int_in_range(0u8..=4)? as usize;
            let k = base.last().copied().unwrap_or(1);
            if u.arbitrary()? { vec![k, n] } else { vec![n, k] }
        }
        5 => {
            // A vector of the previous operand's first or last dim (bias).
            let d = if u.arbitrary()? { last.last() } else { last.first() };
            vec![d.copied().unwrap_or(1)]
        }
        6 => {
            // A suffix (layer_norm scale and bias).
            let k = u.int_in_range(0..=r)?;
            base[k..].to_vec()
        }
        7 => {
            // One dim changed (concat).
            let mut s = base.clone();
            if !s.is_empty() {
                let i = u.int_in_range(0..=s.len() - 1)?;
                s[i] = u.int_in_range(0u8..=4)? as usize;
            }
            s
        }
        _ => random_shape(u)?,
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Data {
    /// Raw bytes from the fuzzer.
    Raw,
    /// Small grid values (k/4, |k| <= 40), ints in -5..=5, bools 0/1, and
    /// one float in 16 NaN, inf, -inf or -0.
    Grid,
}

/// splitmix64, for data when the input has run out of bytes.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Element bytes for `meta`: from the input's remaining bytes (cycled), or,
/// once they run out, from a generator seeded by `seed` (a hash of the
/// whole input), so short inputs still get varied data.
fn values(u: &mut Unstructured, meta: &TensorMeta, data: Data, specials: bool, seed: u64) -> Result<Vec<u8>> {
    let n = meta.numel().unwrap_or(0);
    let mut out = Vec::with_capacity(n * meta.dtype.size());
    let pool: &[u8] = u.bytes(u.len().min(256))?;
    let byte = |i: usize| {
        if pool.is_empty() {
            (mix(seed ^ i as u64) >> 24) as u8
        } else {
            pool[i % pool.len()].wrapping_add((i / pool.len()) as u8)
        }
    };
    match data {
        Data::Raw => {
            for i in 0..n * meta.dtype.size() {
                out.push(byte(i));
            }
        }
        Data::Grid => {
            for i in 0..n {
                let b = byte(i);
                let f = if specials && b % 16 == 0 {
                    [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0][(b as usize >> 4) % 4]
                } else {
                    f64::from(i32::from(b % 81) - 40) / 4.0
                };
                let k = i64::from(b % 11) - 5;
                match meta.dtype {
                    DType::F32 => out.extend_from_slice(&(f as f32).to_le_bytes()),
                    DType::F64 => out.extend_from_slice(&f.to_le_bytes()),
                    DType::I8 => out.extend_from_slice(&(k as i8).to_le_bytes()),
                    DType::U8 => out.push((b % 11) as u8),
                    DType::I16 => out.extend_from_slice(&(k as i16).to_le_bytes()),
                    DType::U16 => out.extend_from_slice(&u16::from(b % 11).to_le_bytes()),
                    DType::I32 => out.extend_from_slice(&(k as i32).to_le_bytes()),
                    DType::U32 => out.extend_from_slice(&u32::from(b % 11).to_le_bytes()),
                    DType::I64 => out.extend_from_slice(&k.to_le_bytes()),
                    DType::U64 => out.extend_from_slice(&u64::from(b % 11).to_le_bytes()),
                    DType::Bool => out.push(b & 1),
                }
            }
        }
    }
    Ok(out)
}

/// A tensor with `bytes`, either owned or as a view at an 8-aligned offset
/// inside a larger buffer (as the host's globals and views are).
fn tensor(meta: &TensorMeta, bytes: &[u8], view: bool) -> Tensor {
    if !view {
        return Tensor::from_bytes(meta.dtype, &meta.shape, bytes).expect("consistent length");
    }
    let mut buf = vec![0xa5u8; 64];
    buf.extend_from_slice(bytes);
    buf.extend_from_slice(&[0x5a; 64]);
    Tensor::from_external(meta.dtype, &meta.shape, Arc::new(buf), 64).expect("in range")
}

fn as_f64(t: &Tensor) -> Option<Vec<f64>> {
    match t.dtype() {
        DType::F32 => Some(t.to_vec::<f32>().ok()?.into_iter().map(f64::from).collect()),
        DType::F64 => t.to_vec::<f64>().ok(),
        _ => None,
    }
}

/// Compares reference and optimized results; `tol` is `None` for bit
/// equality (NaN equal to NaN), else the allowed absolute difference of
/// finite elements (infinities and NaN must match).
fn compare(what: &str, r: &Tensor, o: &Tensor, tol: Option<&dyn Fn(f64) -> f64>) {
    assert_eq!(r.meta(), o.meta(), "{what}: output metas differ");
    match (as_f64(r), as_f64(o)) {
        (Some(rv), Some(ov)) => {
            for (k, (x, y)) in rv.iter().zip(&ov).enumerate() {
                let ok = match tol {
                    _ if x.is_nan() || y.is_nan() => x.is_nan() && y.is_nan(),
                    None => x.to_bits() == y.to_bits(),
                    Some(_) if x.is_infinite() || y.is_infinite() => x == y,
                    Some(t) => (x - y).abs() <= t(*x),
                };
                assert!(ok, "{what}: element {k}: reference {x:e}, optimized {y:e}");
            }
        }
        _ => assert_eq!(r.bytes(), o.bytes(), "{what}: outputs differ"),
    }
}

fn eps(d: DType) -> f64 {
    if d == DType::F64 { f64::EPSILON } else { f64::from(f32::EPSILON) }
}

fn one(u: &mut Unstructured, seed: u64) -> Result<()> {
    let (reg, ids) = registry();
    let id = u.choose(ids)?.clone();
    let conv = id.starts_with("conv");
    let base = if conv && u.ratio(3, 4)? { conv_input(u)? } else { capped(random_shape(u)?) };
    let mut at = attrs(u, &id, base.len())?;
    if conv && base.len() > 2 && u.ratio(1, 4)? {
        // Depthwise: one group per input channel.
        at.insert("group".into(), AttrValue::Int(base[1] as i64));
    }
    let Ok(k) = reg.bind(&id, &at) else { return Ok(()) };
    let arity = k.arity();
    assert_eq!(arity.outputs, 1, "{id}: every kernel has one output");

    let count = match u.int_in_range(0u8..=31)? {
        0 => arity.inputs.saturating_sub(1),
        1 => arity.inputs + 1,
        _ => arity.inputs,
    };
    let mut shapes = vec![base];
    let mut metas = Vec::new();
    let d0 = dtype(u)?;
    for j in 0..count {
        if j > 0 {
            let s = if conv && u.ratio(7, 8)? { conv_operand(u, &at, &shapes, j)? } else { related_shape(u, &shapes)? };
            shapes.push(capped(s));
        }
        let d = match u.int_in_range(0u8..=7)? {
            0 => dtype(u)?,
            1 => *u.choose(&[DType::I32, DType::I64, DType::Bool])?,
            _ => d0,
        };
        metas.push(TensorMeta::new(d, shapes[j].clone()));
    }
    let refs: Vec<&TensorMeta> = metas.iter().collect();
    let checked = k.check(&refs);
    let Ok(outs) = checked else { return Ok(()) };
    assert_eq!(count, arity.inputs, "{id} {at:?}: check accepted {count} inputs");
    assert_eq!(outs.len(), 1, "{id}: check returned {} outputs", outs.len());
    let out = &outs[0];
    assert!(out.shape.len() <= MAX_RANK, "{id}: output {out}");
    assert!(out.byte_len().is_some_and(|b| b <= isize::MAX as usize), "{id}: output {out}");
    if out.numel().is_none_or(|n| n > MAX_OUT_NUMEL) {
        return Ok(());
    }

    let family = id.split('@').next().unwrap_or("").to_string();
    let op = match at.get("op") {
        Some(AttrValue::Str(s)) => s.clone(),
        _ => String::new(),
    };
    let reducing = matches!(
        family.as_str(),
        "matmul" | "linear" | "linear_panels" | "softmax" | "layer_norm" | "conv" | "conv_transpose"
    ) || (family == "reduce" && (op == "sum" || op == "mean"));
    let data = if reducing || u.arbitrary()? { Data::Grid } else { Data::Raw };
    let mut inputs = Vec::new();
    for (j, m) in metas.iter().enumerate() {
        // layer_norm's tolerance assumes finite scale and bias. A
        // convolution's weights are finite: where a kernel position falls
        // in the padding, the reference adds nothing and the optimized
        // paths may add 0 · w, which is NaN for an infinite w.
        let specials = !(family == "layer_norm" && j > 0) && !(family.starts_with("conv") && j == 1);
        let bytes = values(u, m, data, specials, mix(seed ^ j as u64))?;
        inputs.push(tensor(m, &bytes, u.arbitrary()?));
    }
    let ins: Vec<&Tensor> = inputs.iter().collect();
    let what = format!("{id} {at:?} on {}", metas.iter().map(|m| m.to_string()).collect::<Vec<_>>().join(", "));

    // Outputs start with different contents: a result must not depend on
    // them (kernels write every output element).
    let mut r_out = vec![Tensor::zeros(out.dtype, &out.shape).expect("checked meta")];
    let fill = vec![0xffu8; out.byte_len().unwrap_or(0)];
    let mut o_out = vec![Tensor::from_bytes(out.dtype, &out.shape, &fill).expect("checked meta")];
    let r = k.run(Impl::Reference, &ins, &mut r_out);
    let o = k.run_prechecked(Impl::Optimized, &ins, &mut o_out);
    match (&r, &o) {
        (Ok(()), Ok(())) => {}
        (Err(_), Err(_)) => return Ok(()),
        _ => panic!("{what}: reference {r:?}, optimized {o:?}"),
    }
    let (ry, oy) = (&r_out[0], &o_out[0]);
    if at.contains_key("post") {
        // A random epilogue turns results within the tolerance into
        // arbitrarily different ones (1/x at +0 and -0): both must run, on
        // any shape, without a panic; the kernels' own tests compare
        // epilogues' values.
        return Ok(());
    }
    if !out.dtype.is_float() || !reducing {
        compare(&what, ry, oy, None);
        return Ok(());
    }
    let e = eps(out.dtype);
    let sh = &metas[0].shape;
    let last = |s: &[usize]| s.last().copied().unwrap_or(1) as f64;
    let tol: Box<dyn Fn(f64) -> f64> = match family.as_str() {
        // |terms| <= 100: a few ulps of the sum of |terms|.
        "matmul" | "linear" | "linear_panels" => {
            let kdim = last(sh);
            Box::new(move |_| e * (kdim + 2.0) * 100.0 * kdim + f64::MIN_POSITIVE)
        }
        // Found by fuzz/launch: with raw data near f32::MAX, partial sums
        // overflow to inf in one summation order and not in another (the
        // optimized path sums channels in gemm first). Like matmul: grid
        // data, and a few ulps of the sum of |terms| <= 100, at most one
        // term per weight element (plus a bias).
        "conv" | "conv_transpose" => {
            let terms = metas.get(1).and_then(|m| m.numel()).unwrap_or(1) as f64 + 1.0;
            Box::new(move |_| e * (terms + 2.0) * 100.0 * terms + f64::MIN_POSITIVE)
        }
        "softmax" => {
            let rank = sh.len().max(1) as i64;
            let axis = match at.get("axis") {
                Some(AttrValue::Int(a)) => a.rem_euclid(rank) as usize,
                _ => 0,
            };
            let len = sh.get(axis).copied().unwrap_or(1) as f64;
            Box::new(move |x: f64| 4.0 * e * (len + 2.0) * x.abs() + 4.0 * e * (len + 2.0))
        }
        "layer_norm" => {
            let d = metas.get(1).and_then(|m| m.numel()).unwrap_or(1) as f64;
            Box::new(move |_| 16.0 * e * (d + 2.0) * 10.0 * (d.sqrt() + 1.0) + 16.0 * e * 10.0)
        }
        _ => {
            // reduce sum/mean: |x| <= 10.
            let count = (metas[0].numel().unwrap_or(0) / out.numel().unwrap_or(1).max(1)) as f64;
            let scale = if op == "sum" { 10.0 * count } else { 10.0 };
            Box::new(move |_| 2.0 * e * (count + 2.0) * scale)
        }
    };
    compare(&what, ry, oy, Some(&*tol));
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let seed = data.iter().fold(0u64, |h, &b| mix(h ^ u64::from(b)));
    let mut u = Unstructured::new(data);
    let _ = one(&mut u, seed);
});
