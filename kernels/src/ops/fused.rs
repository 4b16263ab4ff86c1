//! `fused@1`: a chain of elementwise float ops in one pass over memory.
//!
//! The compiler fuses chains of `binary@1` and `unary@1` launches (a
//! HardSwish written as `x * clip(x + 3, 0, 6) / 6`, a LayerNorm's
//! `(x - mean) / sqrt(var + eps) * gamma + beta`) into one launch, so each
//! intermediate lives in a small tile instead of a full tensor written and
//! read back. Each op computes exactly what its own kernel would, in the
//! element type, so a fused chain gives the same values as the unfused
//! launches.
//!
//! Attributes:
//! - `inputs`: the input count, 1 to 5 (`x0`..`x4`, f32 or f64, one dtype;
//!   they broadcast with numpy's rule to the output shape);
//! - `program`: instructions separated by spaces, each `op:a:b` (a
//!   `binary@1` op: add, sub, mul, div, pow, max, min) or `op:a` (a
//!   `unary@1` op; those with attributes spell them out after the operand:
//!   `leaky_relu:a:alpha`, `hard_sigmoid:a:alpha:beta`) or `const:v` (the number `v`,
//!   as Rust parses an `f64`, converted to the element type: an immediate,
//!   so a scalar constant needs no input). Operands are registers: `0` to
//!   `inputs - 1` are the inputs, `inputs + i` is the result of instruction
//!   `i`; an instruction reads only earlier registers. The output is the
//!   last instruction's result. At most [`MAX_INSTRUCTIONS`].
//!
//! [`Program`] is also `conv@1`'s epilogue (its `post` attribute), run in
//! place on the convolution's output with that output as register 0.
//!
//! Every instruction computes over the full broadcast shape, so a chain
//! whose intermediates are smaller than the output would repeat their work;
//! the compiler only fuses values of the output's shape.
//!
//! Both implementations evaluate the program with the same scalar functions,
//! so they agree bitwise: the reference one element at a time, reading
//! inputs by broadcast index arithmetic; the optimized one over tiles of up
//! to [`TILE`] elements along the contiguous rows of [`Rows`], reading the
//! inputs in place (a broadcast input is one repeated element), keeping
//! intermediates in tile buffers and writing the last result straight into
//! the output, split across rayon's pool from [`PAR_MIN`] elements.

use std::sync::Arc;

use rayon::prelude::*;

use super::attrs::AttrReader;
use super::elementwise::{BinaryOp, BINARY_OPS};
use super::num::{Arith, Float};
use super::shape::{broadcast, broadcast_strides, offset_of, Rows};
use super::unary::{fixed_params, param_count, unary_typed, UnaryOp, OPS};
use super::{bound, data_mut, worth_splitting, Op, PAR_MIN};
use crate::{Attrs, Bound, Impl, KernelError, Tensor, TensorMeta};

/// The most instructions a program holds.
pub(crate) const MAX_INSTRUCTIONS: usize = 32;

/// The most inputs (a launch has six operands, one the output).
const MAX_INPUTS: usize = 5;

/// Elements per register tile of the optimized path.
const TILE: usize = 512;

/// Elements per parallel piece.
const PIECE: usize = 1 << 14;

const INPUT_NAMES: [&str; MAX_INPUTS] = ["x0", "x1", "x2", "x3", "x4"];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Instr {
    Binary(BinaryOp, usize, usize),
    Unary(UnaryOp, usize, f64, f64),
    /// An immediate: the value converted to the element type, as one
    /// repeated element.
    Const(f64),
}

pub(crate) fn bind(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("fused@1", attrs);
    let inputs = r.int("inputs", None)?;
    let program = r.string("program")?;
    r.finish()?;
    let err = |message: String| KernelError::Attrs {
        kernel: "fused@1".into(),
        message,
    };
    let inputs = usize::try_from(inputs)
        .ok()
        .filter(|n| (1..=MAX_INPUTS).contains(n))
        .ok_or_else(|| {
            err(format!(
                "attribute `inputs` must be 1 to {MAX_INPUTS}, got {inputs}"
            ))
        })?;
    let program = Program::parse(inputs, program).map_err(err)?;
    let label = format!("fused@1 ({})", program.names());
    Ok(bound(Fused { program, label }))
}

/// A parsed `program` over `inputs` input registers: the body of
/// `fused@1`, and the epilogue `conv@1` runs on its own output (`post`).
#[derive(Clone, Debug)]
pub(crate) struct Program {
    inputs: usize,
    code: Vec<Instr>,
}

impl Program {
    /// Parses `program` (see the module doc); errors name the attribute and
    /// the instruction.
    pub(crate) fn parse(inputs: usize, program: &str) -> Result<Program, String> {
        let mut code = Vec::new();
        for (i, token) in program.split_whitespace().enumerate() {
            if i == MAX_INSTRUCTIONS {
                return Err(format!(
                    "attribute `program` has more than {MAX_INSTRUCTIONS} instructions"
                ));
            }
            code.push(
                parse(token, inputs + i).map_err(|m| {
                    format!("attribute `program`, instruction {i} (`{token}`): {m}")
                })?,
            );
        }
        if code.is_empty() {
            return Err("attribute `program` has no instruction".into());
        }
        Ok(Program { inputs, code })
    }

    /// The op names, space-separated (for labels).
    pub(crate) fn names(&self) -> String {
        let names: Vec<&str> = self
            .code
            .iter()
            .map(|i| match i {
                Instr::Binary(op, ..) => BINARY_OPS
                    .iter()
                    .find(|(_, o)| o == op)
                    .map_or("?", |(n, _)| n),
                Instr::Unary(op, ..) => OPS.iter().find(|(_, o)| o == op).map_or("?", |(n, _)| n),
                Instr::Const(_) => "const",
            })
            .collect();
        names.join(" ")
    }

    pub(crate) fn inputs(&self) -> usize {
        self.inputs
    }
}

/// One instruction whose operands must be below `next` (its own register).
fn parse(token: &str, next: usize) -> Result<Instr, String> {
    if let Some(lit) = token.strip_prefix("const:") {
        return lit
            .parse::<f64>()
            .map(Instr::Const)
            .map_err(|_| format!("`{lit}` is not a number"));
    }
    let mut parts = token.split(':');
    let name = parts.next().unwrap_or("");
    let fields: Vec<&str> = parts.collect();
    let register = |p: &str| {
        p.parse::<usize>()
            .ok()
            .filter(|&r| r < next)
            .ok_or_else(|| format!("operand `{p}` is not a register below {next}"))
    };
    if let Some(&(_, op)) = BINARY_OPS.iter().find(|(n, _)| *n == name) {
        return match fields[..] {
            [a, b] => Ok(Instr::Binary(op, register(a)?, register(b)?)),
            _ => Err(format!("`{name}` takes 2 operands, got {}", fields.len())),
        };
    }
    if let Some(&(_, op)) = OPS.iter().find(|(n, _)| *n == name) {
        // `op:a`, or with the op's parameters, `leaky_relu:a:alpha` and
        // `hard_sigmoid:a:alpha:beta`.
        let params = param_count(op);
        let [a, ref values @ ..] = fields[..] else {
            return Err(format!("`{name}` takes 1 operand, got 0"));
        };
        if values.len() != params {
            return Err(format!(
                "`{name}` takes 1 operand and {params} parameter(s), got {} field(s)",
                fields.len()
            ));
        }
        let values = values
            .iter()
            .map(|v| {
                v.parse::<f64>()
                    .map_err(|_| format!("parameter `{v}` is not a number"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (alpha, beta) = match (fixed_params(op), &values[..]) {
            (Some(fixed), []) => fixed,
            (None, [alpha]) => (*alpha, 0.0),
            (None, [alpha, beta]) => (*alpha, *beta),
            _ => return Err(format!("`{name}`: internal parameter count")),
        };
        return Ok(Instr::Unary(op, register(a)?, alpha, beta));
    }
    Err(format!("unknown op `{name}`"))
}

struct Fused {
    program: Program,
    label: String,
}

impl Op for Fused {
    fn label(&self) -> &str {
        &self.label
    }

    fn input_names(&self) -> &[&'static str] {
        &INPUT_NAMES[..self.program.inputs]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        let dtype = inputs.first().map(|m| m.dtype).ok_or("no inputs")?;
        if !matches!(dtype, crate::DType::F32 | crate::DType::F64) {
            return Err(format!(
                "{}: expected f32 or f64, got {dtype}",
                self.input(0)
            ));
        }
        for (i, m) in inputs.iter().enumerate() {
            if m.dtype != dtype {
                return Err(format!(
                    "{}: expected dtype {dtype} (the dtype of {}), got {}",
                    self.input(i),
                    self.input(0),
                    m.dtype
                ));
            }
        }
        let shapes: Vec<&[usize]> = inputs.iter().map(|m| m.shape.as_slice()).collect();
        let names: Vec<String> = (0..inputs.len()).map(|i| self.input(i)).collect();
        Ok(TensorMeta::new(dtype, broadcast(&shapes, &names)?))
    }

    fn compute(&self, imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        super::with_float!(out.dtype(), T => self.compute_typed::<T>(imp, inputs, out))
    }
}

impl Fused {
    fn compute_typed<T: Float + Arith>(
        &self,
        imp: Impl,
        inputs: &[&Tensor],
        out: &mut Tensor,
    ) -> Result<(), String> {
        self.program
            .run_tensors::<T>(imp, inputs, &|i| self.input(i), out, false)
    }
}

impl Program {
    /// [`Program::run`] on tensors; `name(i)` names input `i` in errors.
    pub(crate) fn run_tensors<T: Float + Arith>(
        &self,
        imp: Impl,
        inputs: &[&Tensor],
        name: &dyn Fn(usize) -> String,
        out: &mut Tensor,
        in_place: bool,
    ) -> Result<(), String> {
        let (xs, shapes) = super::views::<T>(inputs, name)?;
        let out_shape = out.shape().to_vec();
        self.run(imp, &xs, &shapes, &out_shape, data_mut::<T>(out)?, in_place)
    }

    /// Runs the program on `len` elements: `ins` are the inputs' parts (a
    /// slice, or one element repeated), each intermediate lives in its own
    /// `tile`-element part of `tmp`, and the last instruction writes `out`.
    #[inline(always)]
    fn eval<T: Float + Arith>(
        &self,
        ins: &[Src<'_, T>],
        tmp: &mut [T],
        tile: usize,
        out: &mut [T],
    ) -> Result<(), String> {
        let len = out.len();
        let oob = || "internal: fused register outside its tile".to_string();
        let n = self.code.len();
        for (i, instr) in self.code.iter().enumerate() {
            let (lo, hi) = tmp.split_at_mut(i * tile);
            let dst: &mut [T] = if i + 1 == n {
                &mut *out
            } else {
                hi.get_mut(..len).ok_or_else(oob)?
            };
            let src = |r: usize| match r.checked_sub(self.inputs) {
                None => ins.get(r).copied().ok_or_else(oob),
                Some(t) => match self.code.get(t) {
                    Some(Instr::Const(v)) => Ok(Src::Scalar(T::from_f64(*v))),
                    _ => lo
                        .get(t * tile..t * tile + len)
                        .map(Src::Slice)
                        .ok_or_else(oob),
                },
            };
            match *instr {
                Instr::Binary(op, a, b) => {
                    let (a, b) = (src(a)?, src(b)?);
                    match op {
                        BinaryOp::Add => apply2(dst, a, b, <T as Arith>::add),
                        BinaryOp::Sub => apply2(dst, a, b, <T as Arith>::sub),
                        BinaryOp::Mul => apply2(dst, a, b, <T as Arith>::mul),
                        BinaryOp::Div => apply2(dst, a, b, <T as Arith>::div),
                        BinaryOp::Pow => apply2(dst, a, b, <T as Arith>::pow),
                        BinaryOp::Max => apply2(dst, a, b, <T as Arith>::max),
                        BinaryOp::Min => apply2(dst, a, b, <T as Arith>::min),
                    }
                }
                Instr::Unary(op, a, alpha, beta) => {
                    let (alpha, beta) = (T::from_f64(alpha), T::from_f64(beta));
                    match src(a)? {
                        Src::Slice(x) => unary_typed(op, Impl::Optimized, x, dst, alpha, beta)?,
                        Src::Scalar(x) => {
                            let mut v = [x];
                            unary_typed(op, Impl::Optimized, &[x], &mut v, alpha, beta)?;
                            dst.fill(v[0]);
                        }
                    }
                }
                // Read as a scalar by later instructions; written out only
                // as the result.
                Instr::Const(v) => {
                    if i + 1 == n {
                        dst.fill(T::from_f64(v));
                    }
                }
            }
        }
        Ok(())
    }

    /// Computes the program into `y` (of shape `out_shape`, the inputs'
    /// broadcast shape). `xs`/`shapes` are the inputs; with `in_place`,
    /// input 0 is `y`'s own content (the `conv@1` epilogue) and `xs` holds
    /// inputs 1.. only.
    pub(crate) fn run<T: Float + Arith>(
        &self,
        imp: Impl,
        xs: &[&[T]],
        shapes: &[&[usize]],
        out_shape: &[usize],
        y: &mut [T],
        in_place: bool,
    ) -> Result<(), String> {
        if y.is_empty() {
            return Ok(());
        }
        let first = usize::from(in_place);
        if xs.len() + first != self.inputs || shapes.len() != xs.len() {
            return Err("internal: fused input count".to_string());
        }
        let temps = self.code.len() - 1;
        let oob = |i: usize| format!("internal: broadcast read outside an input at element {i}");
        match imp {
            Impl::Reference => {
                let rank = out_shape.len();
                let strides: Vec<Vec<usize>> =
                    shapes.iter().map(|s| broadcast_strides(s, rank)).collect();
                let mut tmp = vec![<T as Float>::ZERO; temps];
                let mut ins = Vec::with_capacity(self.inputs);
                for (i, slot) in y.chunks_mut(1).enumerate() {
                    ins.clear();
                    if in_place {
                        ins.push(Src::Scalar(slot[0]));
                    }
                    for (x, st) in xs.iter().zip(&strides) {
                        let v = *x.get(offset_of(i, out_shape, st)).ok_or_else(|| oob(i))?;
                        ins.push(Src::Scalar(v));
                    }
                    self.eval(&ins, &mut tmp, 1, slot)?;
                }
                Ok(())
            }
            Impl::Optimized => self.spans(xs, shapes, out_shape, in_place)?.run(0, y),
        }
    }

    /// The program laid out against its output (of shape `out_shape`, the
    /// broadcast shape of `shapes`) for [`Spans::run`] on parts of it; `xs`,
    /// `shapes` and `in_place` as in [`Program::run`].
    pub(crate) fn spans<'a, T: Float + Arith>(
        &'a self,
        xs: &'a [&'a [T]],
        shapes: &[&[usize]],
        out_shape: &[usize],
        in_place: bool,
    ) -> Result<Spans<'a, T>, String> {
        let first = usize::from(in_place);
        if xs.len() + first != self.inputs || shapes.len() != xs.len() {
            return Err("internal: fused input count".to_string());
        }
        let mut all = Vec::with_capacity(self.inputs);
        if in_place {
            all.push(out_shape);
        }
        all.extend_from_slice(shapes);
        let rows = Rows::new(&all, out_shape);
        if rows.inner == 0 || rows.inner_stride.len() != all.len() {
            return Err("internal: bad row layout".to_string());
        }
        Ok(Spans {
            program: self,
            xs,
            rows,
            in_place,
        })
    }
}

/// A program and its inputs laid out against its output, run on any
/// contiguous part of the output (optimized path): [`Program::run`] runs it
/// on parallel pieces, and the direct convolution on each band of output
/// rows it finishes, while they are in cache.
pub(crate) struct Spans<'a, T> {
    program: &'a Program,
    xs: &'a [&'a [T]],
    rows: Rows,
    in_place: bool,
}

impl<T: Float + Arith> Spans<'_, T> {
    /// Computes output elements `start..start + part.len()` into `part`
    /// (which holds their current values, input 0, when in place), in
    /// pieces spread over rayon's pool from [`PAR_MIN`] elements.
    pub(crate) fn run(&self, start: usize, part: &mut [T]) -> Result<(), String> {
        let run = |(c, piece): (usize, &mut [T])| self.run_piece(start + c * PIECE, piece);
        if worth_splitting(part.len(), PAR_MIN) {
            part.par_chunks_mut(PIECE).enumerate().try_for_each(run)
        } else {
            part.chunks_mut(PIECE).enumerate().try_for_each(run)
        }
    }

    /// [`Spans::run`] on one piece, in tiles that stay within one row.
    fn run_piece(&self, start: usize, piece: &mut [T]) -> Result<(), String> {
        let p = self.program;
        let first = usize::from(self.in_place);
        let inner = self.rows.inner;
        let oob = |i: usize| format!("internal: broadcast read outside an input at element {i}");
        let temps = p.code.len() - 1;
        let mut tmp = vec![<T as Float>::ZERO; temps * TILE];
        let mut own = vec![<T as Float>::ZERO; if self.in_place { TILE } else { 0 }];
        let mut done = 0;
        while done < piece.len() {
            let pos = start + done;
            let (r, j) = (pos / inner, pos % inner);
            let len = TILE.min(inner - j).min(piece.len() - done);
            let out = &mut piece[done..done + len];
            let mut ins = [Src::Scalar(<T as Float>::ZERO); crate::MAX_OPERANDS];
            if self.in_place {
                own[..len].copy_from_slice(out);
                ins[0] = Src::Slice(&own[..len]);
            }
            for (k, x) in self.xs.iter().enumerate() {
                let k = k + first;
                let off = self.rows.row_offset(r, k);
                let slot = ins.get_mut(k).ok_or("internal: fused input count")?;
                *slot = if self.rows.inner_stride[k] == 1 {
                    Src::Slice(x.get(off + j..off + j + len).ok_or_else(|| oob(pos))?)
                } else {
                    Src::Scalar(*x.get(off).ok_or_else(|| oob(pos))?)
                };
            }
            let ins = &ins[..p.inputs];
            super::simd::vectorized(
                #[inline(always)]
                || p.eval(ins, &mut tmp, TILE, out),
            )?;
            done += len;
        }
        Ok(())
    }
}

/// An operand of one tile: a slice of the tile's length, or one element
/// repeated (a broadcast input).
#[derive(Clone, Copy)]
enum Src<'a, T> {
    Slice(&'a [T]),
    Scalar(T),
}

/// `dst[i] = f(a[i], b[i])`, with a loop per operand kind that the compiler
/// vectorizes.
#[inline(always)]
fn apply2<T: Copy>(dst: &mut [T], a: Src<'_, T>, b: Src<'_, T>, f: impl Fn(T, T) -> T) {
    match (a, b) {
        (Src::Slice(a), Src::Slice(b)) => zip2(dst, a, b, f),
        (Src::Slice(a), Src::Scalar(z)) => {
            for (d, &x) in dst.iter_mut().zip(a) {
                *d = f(x, z);
            }
        }
        (Src::Scalar(x), Src::Slice(b)) => {
            for (d, &z) in dst.iter_mut().zip(b) {
                *d = f(x, z);
            }
        }
        (Src::Scalar(x), Src::Scalar(z)) => dst.fill(f(x, z)),
    }
}

/// `dst[i] = f(a[i], b[i])`, a loop the compiler vectorizes.
#[inline(always)]
fn zip2<T: Copy>(dst: &mut [T], a: &[T], b: &[T], f: impl Fn(T, T) -> T) {
    for ((d, &x), &z) in dst.iter_mut().zip(a).zip(b) {
        *d = f(x, z);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::*;
    use crate::{AttrValue, DType, Impl, KernelError, Tensor, TensorMeta};

    fn fused(program: &str, xs: &[&Tensor], imp: Impl) -> Result<Tensor, KernelError> {
        let a = attrs(&[("inputs", i(xs.len() as i64)), ("program", s(program))]);
        launch("fused@1", &a, xs, imp)
    }

    fn unfused(op: &str, xs: &[&Tensor], imp: Impl) -> Tensor {
        let kernel = if xs.len() == 2 { "binary@1" } else { "unary@1" };
        launch(kernel, &attrs(&[("op", s(op))]), xs, imp).unwrap()
    }

    /// HardSwish as exported, `x * min(max(x + 3, 0), 6) / 6`, with the
    /// constants as broadcast scalars: equal, bit for bit, to the five
    /// launches it replaces, in both implementations, and to a direct
    /// computation.
    #[test]
    fn a_chain_equals_its_unfused_launches() {
        let x = Tensor::from_vec(
            &[2, 3, 70],
            (0..420).map(|v| (v as f32 - 210.0) * 0.037).collect(),
        )
        .unwrap();
        let c = |v: f32| Tensor::from_vec(&[1], vec![v]).unwrap();
        let (three, zero, six) = (c(3.0), c(0.0), c(6.0));
        let program = "add:0:1 max:4:2 min:5:3 mul:0:6 div:7:3";
        for imp in IMPLS {
            let y = fused(program, &[&x, &three, &zero, &six], imp).unwrap();
            let t = unfused("add", &[&x, &three], imp);
            let t = unfused("max", &[&t, &zero], imp);
            let t = unfused("min", &[&t, &six], imp);
            let t = unfused("mul", &[&x, &t], imp);
            let want = unfused("div", &[&t, &six], imp);
            assert_eq!(y.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
            for (v, x) in y
                .to_vec::<f32>()
                .unwrap()
                .iter()
                .zip(x.to_vec::<f32>().unwrap())
            {
                let direct = x * (x + 3.0).clamp(0.0, 6.0) / 6.0;
                assert!(
                    (v - direct).abs() <= 1e-6 * direct.abs().max(1.0),
                    "{x}: {v}"
                );
            }
        }
    }

    #[test]
    fn unary_ops_and_broadcast_rows() {
        // x [4, 1, 5] * y [3, 1] -> [4, 3, 5], then tanh, then neg.
        let x = Tensor::from_vec(&[4, 1, 5], (0..20).map(|v| v as f64 * 0.1).collect()).unwrap();
        let y = Tensor::from_vec(&[3, 1], vec![1.0, -2.0, 0.5]).unwrap();
        for imp in IMPLS {
            let got = fused("mul:0:1 tanh:2 neg:3", &[&x, &y], imp).unwrap();
            assert_eq!(got.shape(), &[4, 3, 5]);
            let want = unfused("mul", &[&x, &y], imp);
            let want = unfused("tanh", &[&want], imp);
            let want = unfused("neg", &[&want], imp);
            assert_eq!(got.to_vec::<f64>().unwrap(), want.to_vec::<f64>().unwrap());
        }
    }

    /// Unary ops with attributes take them after the operand: the same
    /// bits as their own launches, and a direct computation.
    #[test]
    fn unary_parameters() {
        let x = Tensor::from_vec(&[5], vec![-3.0f32, -0.5, 0.0, 0.7, 4.0]).unwrap();
        for imp in IMPLS {
            let a = attrs(&[("op", s("leaky_relu")), ("alpha", AttrValue::Float(0.2))]);
            let want = launch("unary@1", &a, &[&x], imp).unwrap();
            let got = fused("leaky_relu:0:0.2", &[&x], imp).unwrap();
            assert_eq!(got.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
            let direct: Vec<f32> = [-3.0f32, -0.5, 0.0, 0.7, 4.0]
                .iter()
                .map(|&v| if v < 0.0 { v * 0.2 } else { v })
                .collect();
            assert_eq!(got.to_vec::<f32>().unwrap(), direct);
            let a = attrs(&[
                ("op", s("hard_sigmoid")),
                ("alpha", AttrValue::Float(0.25)),
                ("beta", AttrValue::Float(0.4)),
            ]);
            let want = launch("unary@1", &a, &[&x], imp).unwrap();
            let got = fused("hard_sigmoid:0:0.25:0.4", &[&x], imp).unwrap();
            assert_eq!(got.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
            let direct: Vec<f32> = [-3.0f32, -0.5, 0.0, 0.7, 4.0]
                .iter()
                .map(|&v| (v * 0.25 + 0.4).clamp(0.0, 1.0))
                .collect();
            for (g, d) in got.to_vec::<f32>().unwrap().iter().zip(&direct) {
                assert!((g - d).abs() < 1e-6, "{g} vs {d}");
            }
        }
    }

    /// Immediates read as scalars; a program may end on one.
    #[test]
    fn immediates() {
        let x = Tensor::from_vec(&[3], vec![1.0f32, -2.0, 4.5]).unwrap();
        for imp in IMPLS {
            let a = attrs(&[
                ("inputs", i(1)),
                ("program", s("const:0.5 mul:0:1 const:-3 sub:2:3")),
            ]);
            let y = launch("fused@1", &a, &[&x], imp).unwrap();
            assert_eq!(y.to_vec::<f32>().unwrap(), vec![3.5, 2.0, 5.25]);
            let a = attrs(&[("inputs", i(1)), ("program", s("const:7"))]);
            let y = launch("fused@1", &a, &[&x], imp).unwrap();
            assert_eq!(y.to_vec::<f32>().unwrap(), vec![7.0; 3]);
        }
    }

    #[test]
    fn bad_programs_are_attribute_errors() {
        let x = Tensor::from_vec(&[2], vec![1.0f32, 2.0]).unwrap();
        for (program, inputs, want) in [
            ("", 1, "no instruction"),
            ("exp:1", 1, "not a register below 1"),
            ("add:0:0 add:2:3", 1, "not a register below 2"),
            ("add:0", 1, "takes 2 operands"),
            ("relu:0:0", 1, "takes 1 operand"),
            ("frobnicate:0", 1, "unknown op"),
            ("leaky_relu:0", 1, "takes 1 operand and 1 parameter"),
            ("hard_sigmoid:0:x:1", 1, "parameter `x` is not a number"),
            ("exp:0", 6, "must be 1 to 5"),
            ("exp:-1", 1, "not a register"),
            ("const:three", 1, "`three` is not a number"),
        ] {
            let a = attrs(&[("inputs", i(inputs)), ("program", s(program))]);
            let err = launch("fused@1", &a, &[&x], Impl::Reference).unwrap_err();
            assert!(err.to_string().contains(want), "{program}: {err}");
        }
        let long = vec!["neg:0"; super::MAX_INSTRUCTIONS + 1].join(" ");
        let a = attrs(&[("inputs", i(1)), ("program", s(&long))]);
        assert!(launch("fused@1", &a, &[&x], Impl::Reference).is_err());
    }

    #[test]
    fn signature_errors_name_the_input() {
        let a = TensorMeta::new(DType::F32, vec![2, 3]);
        let b = TensorMeta::new(DType::F64, vec![2, 3]);
        let i32m = TensorMeta::new(DType::I32, vec![2, 3]);
        let k = bind(
            "fused@1",
            &attrs(&[("inputs", i(2)), ("program", s("add:0:1"))]),
        )
        .unwrap();
        assert!(k
            .check(&[&a, &b])
            .unwrap_err()
            .to_string()
            .contains("input 1 (x1)"));
        assert!(k.check(&[&i32m, &i32m]).is_err());
        let c = TensorMeta::new(DType::F32, vec![4]);
        assert!(k.check(&[&a, &c]).is_err());
    }

    proptest! {
        #[test]
        fn optimized_matches_reference(
            (shape_a, shape_b) in broadcast_pair(),
            seed in any::<u64>(),
            ops in prop::collection::vec(0usize..9, 1..8),
        ) {
            // A random chain over two inputs: each instruction combines the
            // previous result with an input, or applies a unary op.
            let names = ["add", "sub", "mul", "div", "max", "min", "exp", "tanh", "relu"];
            let mut program = Vec::new();
            for (i, &o) in ops.iter().enumerate() {
                let prev = if i == 0 { 0 } else { 1 + i };
                program.push(if o < 6 {
                    format!("{}:{prev}:{}", names[o], i % 2)
                } else {
                    format!("{}:{prev}", names[o])
                });
            }
            let program = program.join(" ");
            let a = float_tensor::<f32>(&shape_a, seed, true);
            let b = float_tensor::<f32>(&shape_b, seed ^ 1, true);
            let r = fused(&program, &[&a, &b], Impl::Reference).unwrap();
            let o = fused(&program, &[&a, &b], Impl::Optimized).unwrap();
            let (r, o) = (r.to_vec::<f32>().unwrap(), o.to_vec::<f32>().unwrap());
            prop_assert_eq!(r.len(), o.len());
            for (x, y) in r.iter().zip(&o) {
                prop_assert!(x == y || (x.is_nan() && y.is_nan()), "{program}: {x} vs {y}");
            }
        }

        #[test]
        fn check_never_panics(a in adversarial_meta(), b in adversarial_meta()) {
            let k = bind(
                "fused@1",
                &attrs(&[("inputs", i(2)), ("program", s("mul:0:1 exp:2"))]),
            )
            .unwrap();
            let _ = k.check(&[&a, &b]);
        }
    }
}
