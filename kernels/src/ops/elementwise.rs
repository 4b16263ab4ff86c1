//! Broadcasting elementwise kernels: `binary@1`, `compare@1` and `where@1`.
//!
//! Shapes broadcast with numpy's rule. The scalar semantics (wrapping
//! integer arithmetic, truncating integer division, NaN-propagating
//! max/min) live in [`super::num`]. Integer division by zero and integer
//! `pow` with a negative exponent are run errors, detected before any
//! element is written. Bool operands of `compare@1` and `where@1` read any
//! non-zero byte as true.
//!
//! The reference implementations map every output index to its input
//! offsets. The optimized `binary@1` and `compare@1` lay the launch out as
//! contiguous rows ([`Rows`]: same-shape operands are one row, a scalar
//! operand has stride 0), run tight slice loops the compiler vectorizes, and
//! split rows or pieces of rows across rayon's pool from [`PAR_MIN`]
//! elements; `where@1` walks the same rows, selecting from a row or a
//! repeated element of each input.

use std::sync::Arc;

use rayon::prelude::*;

use super::attrs::AttrReader;
use super::num::Arith;
use super::shape::{broadcast, broadcast_strides, offset_of, Rows};
use super::{
    bound, check_same_dtype, data, data_mut, operands, raw, raw_mut, worth_splitting, Op, PAR_MIN,
};
use crate::{Attrs, Bool8, Bound, DType, Element, Impl, KernelError, Tensor, TensorMeta};

/// Elements per parallel piece of a long row.
const PIECE: usize = 1 << 14;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
}

pub(crate) const BINARY_OPS: [(&str, BinaryOp); 7] = [
    ("add", BinaryOp::Add),
    ("sub", BinaryOp::Sub),
    ("mul", BinaryOp::Mul),
    ("div", BinaryOp::Div),
    ("pow", BinaryOp::Pow),
    ("max", BinaryOp::Max),
    ("min", BinaryOp::Min),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CompareOp {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}

const COMPARE_OPS: [(&str, CompareOp); 5] = [
    ("eq", CompareOp::Eq),
    ("lt", CompareOp::Lt),
    ("le", CompareOp::Le),
    ("gt", CompareOp::Gt),
    ("ge", CompareOp::Ge),
];

fn op_name<T: PartialEq>(table: &[(&'static str, T)], op: T) -> &'static str {
    table
        .iter()
        .find(|(_, o)| *o == op)
        .map(|(n, _)| *n)
        .unwrap_or("?")
}

pub(crate) fn bind_binary(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("binary@1", attrs);
    let op = r.choice("op", &BINARY_OPS)?;
    r.finish()?;
    Ok(bound(Binary {
        op,
        label: format!("binary@1 ({})", op_name(&BINARY_OPS, op)),
    }))
}

pub(crate) fn bind_compare(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    let mut r = AttrReader::new("compare@1", attrs);
    let op = r.choice("op", &COMPARE_OPS)?;
    r.finish()?;
    Ok(bound(Compare {
        op,
        label: format!("compare@1 ({})", op_name(&COMPARE_OPS, op)),
    }))
}

pub(crate) fn bind_where(attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
    AttrReader::new("where@1", attrs).finish()?;
    Ok(bound(Where))
}

/// The broadcast output shape of `inputs` as named by `op`.
fn broadcast_inputs<O: Op>(op: &O, inputs: &[&TensorMeta]) -> Result<Vec<usize>, String> {
    let shapes: Vec<&[usize]> = inputs.iter().map(|m| m.shape.as_slice()).collect();
    let names: Vec<String> = (0..inputs.len()).map(|i| op.input(i)).collect();
    broadcast(&shapes, &names)
}

struct Binary {
    op: BinaryOp,
    label: String,
}

impl Op for Binary {
    fn label(&self) -> &str {
        &self.label
    }

    fn input_names(&self) -> &[&'static str] {
        &["a", "b"]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        check_same_dtype(self, inputs)?;
        let [a, _] = operands(inputs)?;
        if a.dtype == DType::Bool {
            return Err(format!(
                "{}: expected a float or int dtype, got bool",
                self.input(0)
            ));
        }
        Ok(TensorMeta::new(a.dtype, broadcast_inputs(self, inputs)?))
    }

    fn compute(&self, imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        super::with_number!(out.dtype(), T => binary_typed::<T>(self.op, imp, inputs, out))
    }
}

fn binary_typed<T: Arith>(
    op: BinaryOp,
    imp: Impl,
    inputs: &[&Tensor],
    out: &mut Tensor,
) -> Result<(), String> {
    let [a, b] = operands(inputs)?;
    let av = data::<T>(a, "input 0 (a)")?;
    let bv = data::<T>(b, "input 1 (b)")?;
    let shape = out.shape().to_vec();
    let y = data_mut::<T>(out)?;
    if y.is_empty() {
        return Ok(());
    }
    let l = Launch2 {
        a: av,
        a_shape: a.shape(),
        b: bv,
        b_shape: b.shape(),
        out_shape: &shape,
    };
    match op {
        BinaryOp::Add => l.run(imp, y, T::add),
        BinaryOp::Sub => l.run(imp, y, T::sub),
        BinaryOp::Mul => l.run(imp, y, T::mul),
        BinaryOp::Div => {
            T::check_div(bv)?;
            l.run(imp, y, T::div)
        }
        BinaryOp::Pow => {
            T::check_pow(bv)?;
            l.run(imp, y, T::pow)
        }
        BinaryOp::Max => l.run(imp, y, T::max),
        BinaryOp::Min => l.run(imp, y, T::min),
    }
}

struct Compare {
    op: CompareOp,
    label: String,
}

impl Op for Compare {
    fn label(&self) -> &str {
        &self.label
    }

    fn input_names(&self) -> &[&'static str] {
        &["a", "b"]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        check_same_dtype(self, inputs)?;
        Ok(TensorMeta::new(
            DType::Bool,
            broadcast_inputs(self, inputs)?,
        ))
    }

    fn compute(&self, imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        let [a, _] = operands(inputs)?;
        super::with_element!(a.dtype(), T => compare_typed::<T>(self.op, imp, inputs, out))
    }
}

/// Element types with an order for `compare@1`; bools compare as
/// `false < true`.
trait Ordered: Element {
    type Key: PartialOrd + Copy;
    fn key(self) -> Self::Key;
}

macro_rules! ordered_as_self {
    ($($t:ty),*) => {$(
        impl Ordered for $t {
            type Key = $t;
            #[inline]
            fn key(self) -> $t {
                self
            }
        }
    )*};
}
ordered_as_self!(f32, f64, i8, u8, i16, u16, i32, u32, i64, u64);

impl Ordered for Bool8 {
    type Key = bool;
    #[inline]
    fn key(self) -> bool {
        self.0 != 0
    }
}

fn compare_typed<T: Ordered>(
    op: CompareOp,
    imp: Impl,
    inputs: &[&Tensor],
    out: &mut Tensor,
) -> Result<(), String> {
    let [a, b] = operands(inputs)?;
    let av = data::<T>(a, "input 0 (a)")?;
    let bv = data::<T>(b, "input 1 (b)")?;
    let shape = out.shape().to_vec();
    let y = data_mut::<Bool8>(out)?;
    if y.is_empty() {
        return Ok(());
    }
    let l = Launch2 {
        a: av,
        a_shape: a.shape(),
        b: bv,
        b_shape: b.shape(),
        out_shape: &shape,
    };
    let b8 = |v: bool| Bool8(u8::from(v));
    match op {
        CompareOp::Eq => l.run(imp, y, |x: T, z: T| b8(x.key() == z.key())),
        CompareOp::Lt => l.run(imp, y, |x: T, z: T| b8(x.key() < z.key())),
        CompareOp::Le => l.run(imp, y, |x: T, z: T| b8(x.key() <= z.key())),
        CompareOp::Gt => l.run(imp, y, |x: T, z: T| b8(x.key() > z.key())),
        CompareOp::Ge => l.run(imp, y, |x: T, z: T| b8(x.key() >= z.key())),
    }
}

/// The operands of a two-input broadcast launch with a non-empty output.
struct Launch2<'a, A, B> {
    a: &'a [A],
    a_shape: &'a [usize],
    b: &'a [B],
    b_shape: &'a [usize],
    out_shape: &'a [usize],
}

impl<A: Copy + Sync, B: Copy + Sync> Launch2<'_, A, B> {
    fn run<R: Copy + Send>(
        &self,
        imp: Impl,
        y: &mut [R],
        f: impl Fn(A, B) -> R + Sync + Copy,
    ) -> Result<(), String> {
        match imp {
            Impl::Reference => self.reference(y, f),
            Impl::Optimized => self.optimized(y, f),
        }
    }

    fn reference<R>(&self, y: &mut [R], f: impl Fn(A, B) -> R) -> Result<(), String> {
        let rank = self.out_shape.len();
        let sa = broadcast_strides(self.a_shape, rank);
        let sb = broadcast_strides(self.b_shape, rank);
        for (i, slot) in y.iter_mut().enumerate() {
            let x = self.a.get(offset_of(i, self.out_shape, &sa));
            let z = self.b.get(offset_of(i, self.out_shape, &sb));
            let (Some(&x), Some(&z)) = (x, z) else {
                return Err(format!(
                    "internal: broadcast read outside an input at output element {i}"
                ));
            };
            *slot = f(x, z);
        }
        Ok(())
    }

    fn optimized<R: Copy + Send>(
        &self,
        y: &mut [R],
        f: impl Fn(A, B) -> R + Sync + Copy,
    ) -> Result<(), String> {
        let rows = Rows::new(&[self.a_shape, self.b_shape], self.out_shape);
        let inner = rows.inner;
        let (sa, sb) = match rows.inner_stride.as_slice() {
            [sa, sb] => (*sa, *sb),
            _ => return Err("internal: row layout lost an input".to_string()),
        };
        if inner == 0 {
            return Err("internal: empty rows in a non-empty output".to_string());
        }
        let parallel = worth_splitting(y.len(), PAR_MIN);
        let row = |(r, yrow): (usize, &mut [R])| -> Result<(), String> {
            let (ao, bo) = (rows.row_offset(r, 0), rows.row_offset(r, 1));
            if parallel && yrow.len() >= 2 * PIECE {
                yrow.par_chunks_mut(PIECE)
                    .enumerate()
                    .try_for_each(|(c, piece)| {
                        let start = c * PIECE;
                        row2(
                            piece,
                            self.a,
                            ao + start * sa,
                            sa,
                            self.b,
                            bo + start * sb,
                            sb,
                            f,
                        )
                    })
            } else {
                row2(yrow, self.a, ao, sa, self.b, bo, sb, f)
            }
        };
        if parallel {
            let min_rows = (PIECE / inner).max(1);
            y.par_chunks_mut(inner)
                .with_min_len(min_rows)
                .enumerate()
                .try_for_each(row)
        } else {
            y.chunks_mut(inner).enumerate().try_for_each(row)
        }
    }
}

/// One output row: `a` and `b` advance by `sa` and `sb` (each 0 or 1) per
/// element. Each stride pair gets its own tight loop.
#[allow(clippy::too_many_arguments)]
#[inline]
fn row2<A: Copy, B: Copy, R>(
    y: &mut [R],
    a: &[A],
    ao: usize,
    sa: usize,
    b: &[B],
    bo: usize,
    sb: usize,
    f: impl Fn(A, B) -> R,
) -> Result<(), String> {
    let n = y.len();
    let oob = || "internal: broadcast row outside an input".to_string();
    match (sa, sb) {
        (1, 1) => {
            let a = a.get(ao..ao + n).ok_or_else(oob)?;
            let b = b.get(bo..bo + n).ok_or_else(oob)?;
            for ((slot, &x), &z) in y.iter_mut().zip(a).zip(b) {
                *slot = f(x, z);
            }
        }
        (0, 1) => {
            let x = *a.get(ao).ok_or_else(oob)?;
            let b = b.get(bo..bo + n).ok_or_else(oob)?;
            for (slot, &z) in y.iter_mut().zip(b) {
                *slot = f(x, z);
            }
        }
        (1, 0) => {
            let a = a.get(ao..ao + n).ok_or_else(oob)?;
            let z = *b.get(bo).ok_or_else(oob)?;
            for (slot, &x) in y.iter_mut().zip(a) {
                *slot = f(x, z);
            }
        }
        (0, 0) => {
            let x = *a.get(ao).ok_or_else(oob)?;
            let z = *b.get(bo).ok_or_else(oob)?;
            for slot in y.iter_mut() {
                *slot = f(x, z);
            }
        }
        _ => {
            return Err(format!(
                "internal: inner strides ({sa}, {sb}) are not 0 or 1"
            ))
        }
    }
    Ok(())
}

struct Where;

impl Op for Where {
    fn label(&self) -> &str {
        "where@1"
    }

    fn input_names(&self) -> &[&'static str] {
        &["cond", "x", "y"]
    }

    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String> {
        let [cond, x, y] = operands(inputs)?;
        if cond.dtype != DType::Bool {
            return Err(format!(
                "{}: expected bool, got {}",
                self.input(0),
                cond.dtype
            ));
        }
        if y.dtype != x.dtype {
            return Err(format!(
                "{}: expected dtype {} (the dtype of {}), got {}",
                self.input(2),
                x.dtype,
                self.input(1),
                y.dtype
            ));
        }
        Ok(TensorMeta::new(x.dtype, broadcast_inputs(self, inputs)?))
    }

    fn compute(&self, imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String> {
        super::with_width!(out.dtype(), T => select::<T>(imp, inputs, out))
    }
}

fn select<T: bytemuck::Pod + Send + Sync>(
    imp: Impl,
    inputs: &[&Tensor],
    out: &mut Tensor,
) -> Result<(), String> {
    let [cond, x, y] = operands(inputs)?;
    let cv = data::<Bool8>(cond, "input 0 (cond)")?;
    let xv = raw::<T>(x, "input 1 (x)")?;
    let yv = raw::<T>(y, "input 2 (y)")?;
    let shape = out.shape().to_vec();
    let shapes = [cond.shape(), x.shape(), y.shape()];
    let dst = raw_mut::<T>(out)?;
    if dst.is_empty() {
        return Ok(());
    }
    let oob = |i: usize| format!("internal: broadcast read outside an input at output element {i}");
    match imp {
        Impl::Reference => {
            let rank = shape.len();
            let [sc, sx, sy] = shapes.map(|s| broadcast_strides(s, rank));
            for (i, slot) in dst.iter_mut().enumerate() {
                let c = cv.get(offset_of(i, &shape, &sc)).ok_or_else(|| oob(i))?;
                let v = if c.0 != 0 {
                    xv.get(offset_of(i, &shape, &sx))
                } else {
                    yv.get(offset_of(i, &shape, &sy))
                };
                *slot = *v.ok_or_else(|| oob(i))?;
            }
            Ok(())
        }
        Impl::Optimized => {
            let rows = Rows::new(&shapes, &shape);
            let &[sc, sx, sy] = rows.inner_stride.as_slice() else {
                return Err("internal: row layout lost an input".to_string());
            };
            if rows.inner == 0 || sc > 1 || sx > 1 || sy > 1 {
                return Err("internal: bad row layout".to_string());
            }
            // Input `i`'s part of row `r`: the whole row, or one element
            // repeated (stride 0).
            let row = |(r, out_row): (usize, &mut [T])| -> Result<(), String> {
                let n = out_row.len();
                let part = |i: usize, stride: usize| {
                    let off = rows.row_offset(r, i);
                    off..off + if stride == 1 { n } else { 1 }
                };
                let c = cv.get(part(0, sc)).ok_or_else(|| oob(r))?;
                let xr = xv.get(part(1, sx)).ok_or_else(|| oob(r))?;
                let yr = yv.get(part(2, sy)).ok_or_else(|| oob(r))?;
                for (j, slot) in out_row.iter_mut().enumerate() {
                    *slot = if c[j * sc].0 != 0 {
                        xr[j * sx]
                    } else {
                        yr[j * sy]
                    };
                }
                Ok(())
            };
            if worth_splitting(dst.len(), PAR_MIN) {
                let min_rows = (PIECE / rows.inner).max(1);
                dst.par_chunks_mut(rows.inner)
                    .with_min_len(min_rows)
                    .enumerate()
                    .try_for_each(row)
            } else {
                dst.chunks_mut(rows.inner).enumerate().try_for_each(row)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::*;
    use crate::{AttrValue, Bool8, DType, Impl, KernelError, Tensor, TensorMeta};

    fn binary(op: &str, a: &Tensor, b: &Tensor, imp: Impl) -> Result<Tensor, KernelError> {
        launch("binary@1", &attrs(&[("op", s(op))]), &[a, b], imp)
    }

    #[test]
    fn binary_broadcasts_against_direct_computation() {
        let a = Tensor::from_vec(&[2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let b = Tensor::from_vec(&[3], vec![10.0f32, 20.0, 30.0]).unwrap();
        let c = Tensor::from_vec(&[2, 1], vec![2.0f32, -1.0]).unwrap();
        for imp in IMPLS {
            let y = binary("add", &a, &b, imp).unwrap();
            assert_eq!(y.shape(), &[2, 3]);
            assert_eq!(
                y.to_vec::<f32>().unwrap(),
                vec![11.0, 22.0, 33.0, 14.0, 25.0, 36.0]
            );
            let y = binary("pow", &a, &c, imp).unwrap();
            assert_eq!(
                y.to_vec::<f32>().unwrap(),
                vec![1.0, 4.0, 9.0, 0.25, 0.2, 1.0 / 6.0]
            );
            let y = binary("sub", &c, &b, imp).unwrap();
            assert_eq!(
                y.to_vec::<f32>().unwrap(),
                vec![-8.0, -18.0, -28.0, -11.0, -21.0, -31.0]
            );
            let y = binary("max", &a, &Tensor::scalar(3.5f32), imp).unwrap();
            assert_eq!(
                y.to_vec::<f32>().unwrap(),
                vec![3.5, 3.5, 3.5, 4.0, 5.0, 6.0]
            );
        }
    }

    #[test]
    fn binary_integer_semantics() {
        let a = Tensor::from_vec(&[4], vec![7i32, -7, i32::MIN, 3]).unwrap();
        let b = Tensor::from_vec(&[4], vec![2i32, 2, -1, 3]).unwrap();
        for imp in IMPLS {
            assert_eq!(
                binary("div", &a, &b, imp).unwrap().to_vec::<i32>().unwrap(),
                vec![3, -3, i32::MIN, 1]
            );
            assert_eq!(
                binary("mul", &a, &b, imp).unwrap().to_vec::<i32>().unwrap(),
                vec![14, -14, i32::MIN, 9]
            );
            let e = Tensor::from_vec(&[4], vec![2i32, 2, 3, 3]).unwrap();
            assert_eq!(
                binary("pow", &a, &e, imp).unwrap().to_vec::<i32>().unwrap(),
                vec![49, 49, 0, 27]
            );
            let u = Tensor::from_vec(&[2], vec![200u8, 3]).unwrap();
            assert_eq!(
                binary("add", &u, &u, imp).unwrap().to_vec::<u8>().unwrap(),
                vec![144, 6]
            );
        }
    }

    /// Edge values of an integer type followed by seeded random ones
    /// (full-width bit patterns, so u64 values above `i64::MAX` are common).
    macro_rules! int_values {
        ($t:ty, $seed:expr) => {{
            let mut v: Vec<$t> = vec![
                <$t>::MIN,
                <$t>::MAX,
                0,
                1,
                <$t>::MAX - 1,
                <$t>::MIN.wrapping_add(1),
                (<$t>::MAX / 2).wrapping_add(1),
                (<$t>::MAX / 2),
            ];
            let mut g = Gen($seed);
            v.extend((0..56).map(|_| g.next() as $t));
            v
        }};
    }

    /// `binary@1` and `compare@1` on every pair of `a` and `b` (same shape,
    /// and `b`'s element 1 broadcast as a scalar), both impls, against the
    /// operation computed in i128 and truncated back to the type (which is
    /// wrapping arithmetic; i128 division truncates toward zero).
    macro_rules! check_int_type {
        ($t:ty) => {{
            let a: Vec<$t> = int_values!($t, 11);
            let mut b: Vec<$t> = int_values!($t, 12);
            b.rotate_left(3);
            let n = a.len();
            let nonzero: Vec<$t> = b.iter().map(|&x| if x == 0 { 1 } else { x }).collect();
            let wide = |x: $t| x as i128;
            let arith = |op: &str, x: $t, y: $t| -> $t {
                match op {
                    "add" => (wide(x) + wide(y)) as $t,
                    "sub" => (wide(x) - wide(y)) as $t,
                    "mul" => wide(x).wrapping_mul(wide(y)) as $t,
                    "div" => (wide(x) / wide(y)) as $t,
                    "max" => {
                        if wide(x) >= wide(y) {
                            x
                        } else {
                            y
                        }
                    }
                    "min" => {
                        if wide(x) <= wide(y) {
                            x
                        } else {
                            y
                        }
                    }
                    _ => unreachable!(),
                }
            };
            let order = |op: &str, x: $t, y: $t| -> bool {
                match op {
                    "eq" => wide(x) == wide(y),
                    "lt" => wide(x) < wide(y),
                    "le" => wide(x) <= wide(y),
                    "gt" => wide(x) > wide(y),
                    "ge" => wide(x) >= wide(y),
                    _ => unreachable!(),
                }
            };
            let at = Tensor::from_vec(&[n], a.clone()).unwrap();
            for imp in IMPLS {
                for rhs in [b.clone(), nonzero.clone(), vec![nonzero[1]]] {
                    let bt = Tensor::from_vec(&[rhs.len()], rhs.clone()).unwrap();
                    let pick = |i: usize| rhs[if rhs.len() == 1 { 0 } else { i }];
                    for op in ["add", "sub", "mul", "div", "max", "min"] {
                        if op == "div" && rhs.contains(&0) {
                            continue;
                        }
                        let y = binary(op, &at, &bt, imp).unwrap();
                        assert_eq!(y.dtype(), at.dtype());
                        let want: Vec<$t> = (0..n).map(|i| arith(op, a[i], pick(i))).collect();
                        assert_eq!(y.to_vec::<$t>().unwrap(), want, "{op} {imp:?}");
                    }
                    for op in ["eq", "lt", "le", "gt", "ge"] {
                        let y = launch("compare@1", &attrs(&[("op", s(op))]), &[&at, &bt], imp)
                            .unwrap();
                        let want: Vec<Bool8> = (0..n)
                            .map(|i| Bool8(u8::from(order(op, a[i], pick(i)))))
                            .collect();
                        assert_eq!(y.to_vec::<Bool8>().unwrap(), want, "{op} {imp:?}");
                    }
                }
                // `where@1` moves 2-, 4- and 8-byte elements unchanged.
                let cond: Vec<Bool8> = (0..n).map(|i| Bool8((i % 3 == 0) as u8)).collect();
                let ct = Tensor::from_vec(&[n], cond).unwrap();
                let bt = Tensor::from_vec(&[n], b.clone()).unwrap();
                let w = launch("where@1", &attrs(&[]), &[&ct, &at, &bt], imp).unwrap();
                let want: Vec<$t> = (0..n)
                    .map(|i| if i % 3 == 0 { a[i] } else { b[i] })
                    .collect();
                assert_eq!(w.to_vec::<$t>().unwrap(), want);
            }
            // Division by zero is refused for these types too.
            let zero = Tensor::from_vec(&[1], vec![0 as $t]).unwrap();
            assert!(binary("div", &at, &zero, Impl::Optimized)
                .unwrap_err()
                .to_string()
                .contains("division by zero"));
        }};
    }

    #[test]
    fn sixteen_bit_and_unsigned_ints_against_direct_computation() {
        check_int_type!(i16);
        check_int_type!(u16);
        check_int_type!(u32);
        check_int_type!(u64);
        // The cases the brief names, spelled out.
        let big = Tensor::from_vec(&[2], vec![u64::MAX, 1u64 << 63]).unwrap();
        let two = Tensor::scalar(2u64);
        for imp in IMPLS {
            assert_eq!(
                binary("div", &big, &two, imp)
                    .unwrap()
                    .to_vec::<u64>()
                    .unwrap(),
                vec![u64::MAX / 2, 1 << 62]
            );
            let gt = launch("compare@1", &attrs(&[("op", s("gt"))]), &[&big, &two], imp).unwrap();
            assert_eq!(gt.to_vec::<Bool8>().unwrap(), vec![Bool8(1), Bool8(1)]);
            let i = Tensor::from_vec(&[2], vec![i16::MAX, i16::MIN]).unwrap();
            assert_eq!(
                binary("add", &i, &Tensor::scalar(1i16), imp)
                    .unwrap()
                    .to_vec::<i16>()
                    .unwrap(),
                vec![i16::MIN, i16::MIN + 1]
            );
            let u = Tensor::from_vec(&[2], vec![0u16, 300]).unwrap();
            assert_eq!(
                binary("sub", &u, &Tensor::scalar(1u16), imp)
                    .unwrap()
                    .to_vec::<u16>()
                    .unwrap(),
                vec![u16::MAX, 299]
            );
            assert_eq!(
                binary("mul", &u, &Tensor::scalar(300u16), imp)
                    .unwrap()
                    .to_vec::<u16>()
                    .unwrap(),
                vec![0, (300u32 * 300 % 65536) as u16]
            );
        }
    }

    #[test]
    fn integer_division_by_zero_and_negative_pow_are_run_errors() {
        let a = Tensor::from_vec(&[3], vec![1i64, 2, 3]).unwrap();
        let b = Tensor::from_vec(&[3], vec![1i64, 0, 3]).unwrap();
        let neg = Tensor::from_vec(&[3], vec![1i64, 2, -3]).unwrap();
        for imp in IMPLS {
            let err = binary("div", &a, &b, imp).unwrap_err();
            assert!(
                matches!(&err, KernelError::Run { kernel, message }
                if kernel == "binary@1 (div)" && message.contains("division by zero") && message.contains("element 1")),
                "{err}"
            );
            let err = binary("pow", &a, &neg, imp).unwrap_err();
            assert!(err.to_string().contains("negative exponent -3"), "{err}");
            // Float division by zero is IEEE.
            let f = binary("div", &Tensor::scalar(1.0f64), &Tensor::scalar(0.0f64), imp).unwrap();
            assert_eq!(f.to_vec::<f64>().unwrap(), vec![f64::INFINITY]);
        }
    }

    #[test]
    fn binary_signature_errors_name_the_operand() {
        let k = bind("binary@1", &attrs(&[("op", s("add"))])).unwrap();
        let f = TensorMeta::new(DType::F32, [2, 3]);
        let i = TensorMeta::new(DType::I32, [2, 3]);
        let err = k.check(&[&f, &i]).unwrap_err();
        assert_eq!(
            err,
            KernelError::Signature {
                kernel: "binary@1 (add)".into(),
                message: "input 1 (b): expected dtype f32 (the dtype of input 0 (a)), got i32"
                    .into()
            }
        );
        let err = k
            .check(&[&f, &TensorMeta::new(DType::F32, [4, 3])])
            .unwrap_err();
        assert!(err.to_string().contains("shapes do not broadcast"), "{err}");
        let bools = TensorMeta::new(DType::Bool, [1]);
        assert!(k
            .check(&[&bools, &bools])
            .unwrap_err()
            .to_string()
            .contains("expected a float or int dtype, got bool"));
        assert!(k
            .check(&[&f])
            .unwrap_err()
            .to_string()
            .contains("expected 2 inputs (a, b), got 1"));
        assert!(bind("binary@1", &attrs(&[("op", s("mod"))])).is_err());
        assert!(bind(
            "binary@1",
            &attrs(&[("op", s("add")), ("axis", AttrValue::Int(0))])
        )
        .is_err());
    }

    #[test]
    fn compare_and_where_against_direct_computation() {
        let a = Tensor::from_vec(&[2, 2], vec![1.0f32, f32::NAN, 3.0, -0.0]).unwrap();
        let b = Tensor::from_vec(&[2], vec![1.0f32, 0.0]).unwrap();
        for imp in IMPLS {
            let cmp = |op: &str| {
                let y = launch("compare@1", &attrs(&[("op", s(op))]), &[&a, &b], imp).unwrap();
                assert_eq!(y.dtype(), DType::Bool);
                y.to_vec::<Bool8>()
                    .unwrap()
                    .iter()
                    .map(|v| v.0)
                    .collect::<Vec<u8>>()
            };
            assert_eq!(cmp("eq"), vec![1, 0, 0, 1]);
            assert_eq!(cmp("lt"), vec![0, 0, 0, 0]);
            assert_eq!(cmp("le"), vec![1, 0, 0, 1]);
            assert_eq!(cmp("gt"), vec![0, 0, 1, 0]);
            assert_eq!(cmp("ge"), vec![1, 0, 1, 1]);
            // Any non-zero byte is true.
            let p = Tensor::from_vec(&[2], vec![Bool8(2), Bool8(0)]).unwrap();
            let q = Tensor::from_vec(&[2], vec![Bool8(1), Bool8(0)]).unwrap();
            let y = launch("compare@1", &attrs(&[("op", s("eq"))]), &[&p, &q], imp).unwrap();
            assert_eq!(y.to_vec::<Bool8>().unwrap(), vec![Bool8(1), Bool8(1)]);

            let cond = Tensor::from_vec(&[2, 1], vec![Bool8(1), Bool8(7)]).unwrap();
            let cond2 = Tensor::from_vec(&[1, 3], vec![Bool8(1), Bool8(0), Bool8(1)]).unwrap();
            let x = Tensor::from_vec(&[3], vec![1i64, 2, 3]).unwrap();
            let yv = Tensor::scalar(-1i64);
            let w = launch("where@1", &attrs(&[]), &[&cond2, &x, &yv], imp).unwrap();
            assert_eq!(w.to_vec::<i64>().unwrap(), vec![1, -1, 3]);
            let w = launch("where@1", &attrs(&[]), &[&cond, &x, &yv], imp).unwrap();
            assert_eq!(w.shape(), &[2, 3]);
            assert_eq!(w.to_vec::<i64>().unwrap(), vec![1, 2, 3, 1, 2, 3]);
        }
        let k = bind("where@1", &attrs(&[])).unwrap();
        let f = TensorMeta::new(DType::F32, [2]);
        assert!(k
            .check(&[&f, &f, &f])
            .unwrap_err()
            .to_string()
            .contains("input 0 (cond): expected bool, got f32"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn binary_optimized_matches_reference(
            (a_shape, b_shape) in broadcast_pair(),
            op in prop::sample::select(vec!["add", "sub", "mul", "div", "pow", "max", "min"]),
            seed in any::<u64>(),
            f64s in any::<bool>(),
        ) {
            let (a, b) = if f64s {
                (float_tensor::<f64>(&a_shape, seed, true), float_tensor::<f64>(&b_shape, seed ^ 1, true))
            } else {
                (float_tensor::<f32>(&a_shape, seed, true), float_tensor::<f32>(&b_shape, seed ^ 1, true))
            };
            let r = binary(op, &a, &b, Impl::Reference).unwrap();
            let o = binary(op, &a, &b, Impl::Optimized).unwrap();
            assert_same_bits(&r, &o);
        }

        #[test]
        fn binary_int_optimized_matches_reference(
            (a_shape, b_shape) in broadcast_pair(),
            op in prop::sample::select(vec!["add", "sub", "mul", "div", "pow", "max", "min"]),
            seed in any::<u64>(),
        ) {
            let a = int_tensor::<i32>(&a_shape, seed, -50, 50);
            let b = int_tensor::<i32>(&b_shape, seed ^ 1, 1, 6);
            let r = binary(op, &a, &b, Impl::Reference).unwrap();
            let o = binary(op, &a, &b, Impl::Optimized).unwrap();
            prop_assert_eq!(r.to_vec::<i32>().unwrap(), o.to_vec::<i32>().unwrap());
        }

        #[test]
        fn compare_optimized_matches_reference(
            (a_shape, b_shape) in broadcast_pair(),
            op in prop::sample::select(vec!["eq", "lt", "le", "gt", "ge"]),
            seed in any::<u64>(),
        ) {
            let a = float_tensor::<f32>(&a_shape, seed, true);
            // Draw b from a's values so equality happens.
            let b = float_tensor::<f32>(&b_shape, seed, true);
            let at = launch("compare@1", &attrs(&[("op", s(op))]), &[&a, &b], Impl::Reference).unwrap();
            let bt = launch("compare@1", &attrs(&[("op", s(op))]), &[&a, &b], Impl::Optimized).unwrap();
            prop_assert_eq!(at.to_vec::<Bool8>().unwrap(), bt.to_vec::<Bool8>().unwrap());
        }

        #[test]
        fn where_optimized_matches_reference(
            (x_shape, y_shape) in broadcast_pair(),
            bits in any::<u64>(),
            seed in any::<u64>(),
        ) {
            let out: Vec<usize> = crate::ops::shape::broadcast(&[&x_shape, &y_shape], &[String::new(), String::new()]).unwrap();
            let (cond_shape, _) = broadcast_split(&out, bits);
            let n: usize = cond_shape.iter().product();
            let mut g = Gen(seed);
            let cond = Tensor::from_vec(&cond_shape, (0..n).map(|_| Bool8((g.next() % 3) as u8)).collect()).unwrap();
            let x = float_tensor::<f32>(&x_shape, seed, true);
            let y = float_tensor::<f32>(&y_shape, seed ^ 1, true);
            let r = launch("where@1", &attrs(&[]), &[&cond, &x, &y], Impl::Reference).unwrap();
            let o = launch("where@1", &attrs(&[]), &[&cond, &x, &y], Impl::Optimized).unwrap();
            prop_assert_eq!(r.bytes(), o.bytes());
        }

        #[test]
        fn check_never_panics_on_adversarial_metas(
            a in adversarial_meta(),
            b in adversarial_meta(),
            c in adversarial_meta(),
        ) {
            for (id, op) in [("binary@1", Some("add")), ("compare@1", Some("lt")), ("where@1", None)] {
                let at = match op { Some(op) => attrs(&[("op", s(op))]), None => attrs(&[]) };
                let k = bind(id, &at).unwrap();
                check_is_consistent(&*k, &[&a, &b, &c]);
            }
        }
    }
}
