//! The kernel families of the catalog and the launch checks they share.
//!
//! Every family module turns validated attributes into an [`Op`]: a label
//! (`binary@1 (add)`), named inputs, a shape rule and a compute function.
//! [`Checked`] wraps an `Op` into a [`Bound`] kernel and enforces, in one
//! place, the invariants the crate docs promise:
//!
//! - `check` refuses a wrong input count, an input of rank above
//!   [`MAX_RANK`] or of more bytes than the host can address, and an output
//!   meta that would be either (rank growth in `gather`, numel overflow);
//!   the family's shape rule only runs on metas that passed.
//! - `run` re-derives the output meta from the actual inputs, and refuses a
//!   wrong input or output count, an output whose meta differs, or an output
//!   whose storage is shared, before the family touches any data. Families
//!   therefore compute on operands of consistent sizes; they still use
//!   checked access wherever an index comes from tensor data.
//!
//! Every kernel of the catalog has exactly one output, named `y`.

mod attrs;
mod cast;
mod conv;
mod elementwise;
mod fused;
mod index;
mod layout;
mod math;
mod matmul;
mod norm;
mod num;
mod pool;
mod reduce;
mod resize;
mod scan;
mod scratch;
mod shape;
mod simd;
mod unary;

#[cfg(test)]
mod testutil;

use std::sync::Arc;

use crate::{
    Arity, Attrs, Bound, Element, Impl, Kernel, KernelError, Registry, Tensor, TensorMeta, MAX_RANK,
};

/// Tensors with at least this many elements are split across rayon's pool
/// by the optimized implementations, when it has two threads or more
/// ([`worth_splitting`]).
pub(crate) const PAR_MIN: usize = 1 << 17;

/// Whether `work` units are worth splitting across rayon's pool: at least
/// `min` of them, and a pool of more than one thread. Splitting for a pool
/// of one would only hand the work to that thread and wait for it: two
/// thread wake-ups and no speed-up.
pub(crate) fn worth_splitting(work: usize, min: usize) -> bool {
    work >= min && rayon::current_num_threads() > 1
}

/// Registers every kernel of the catalog.
pub(crate) fn register_all(r: &mut Registry) {
    let families: [(&'static str, BindFn); 26] = [
        ("binary", elementwise::bind_binary),
        ("compare", elementwise::bind_compare),
        ("where", elementwise::bind_where),
        ("unary", unary::bind),
        ("matmul", matmul::bind_matmul),
        ("linear", matmul::bind_linear),
        ("panels", matmul::bind_panels),
        ("linear_panels", matmul::bind_linear_panels),
        ("softmax", norm::bind_softmax),
        ("layer_norm", norm::bind_layer_norm),
        ("reduce", reduce::bind),
        ("transpose", layout::bind_transpose),
        ("concat", layout::bind_concat),
        ("slice", layout::bind_slice),
        ("gather", layout::bind_gather),
        ("copy", layout::bind_copy),
        ("cast", cast::bind),
        ("conv", conv::bind_conv),
        ("conv_transpose", conv::bind_conv_transpose),
        ("pool", pool::bind),
        ("arg_reduce", scan::bind_arg_reduce),
        ("cumsum", scan::bind_cumsum),
        ("gather_elements", index::bind_gather_elements),
        ("gather_nd", index::bind_gather_nd),
        ("resize", resize::bind),
        ("fused", fused::bind),
    ];
    for (name, bind) in families {
        r.register(Arc::new(Family { name, bind }));
    }
}

type BindFn = fn(&Attrs) -> Result<Arc<dyn Bound>, KernelError>;

/// One `name@1` family: binding validates attributes into an [`Op`].
struct Family {
    name: &'static str,
    bind: BindFn,
}

impl Kernel for Family {
    fn name(&self) -> &'static str {
        self.name
    }

    fn version(&self) -> u32 {
        1
    }

    fn bind(&self, attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
        (self.bind)(attrs)
    }
}

/// A kernel with validated attributes, before the launch checks of
/// [`Checked`] are wrapped around it.
pub(crate) trait Op: Send + Sync + 'static {
    /// The kernel as messages name it: `binary@1 (add)`, `matmul@1`.
    fn label(&self) -> &str;
    /// One name per input; their count is the arity.
    fn input_names(&self) -> &[&'static str];
    /// The output meta. Runs only on inputs of the right count whose metas
    /// are addressable (see the module doc).
    fn infer(&self, inputs: &[&TensorMeta]) -> Result<TensorMeta, String>;
    /// Computes the output. Runs only on inputs that passed `infer` and an
    /// output of the inferred meta with uniquely owned storage.
    fn compute(&self, imp: Impl, inputs: &[&Tensor], out: &mut Tensor) -> Result<(), String>;

    /// `input 1 (b)`.
    fn input(&self, i: usize) -> String {
        let name = self.input_names().get(i).copied().unwrap_or("?");
        format!("input {i} ({name})")
    }
}

/// Wraps `op` with the launch checks.
pub(crate) fn bound<O: Op>(op: O) -> Arc<dyn Bound> {
    Arc::new(Checked(op))
}

/// An [`Op`] behind the launch checks described in the module doc.
struct Checked<O>(O);

impl<O: Op> Checked<O> {
    fn signature_error(&self, message: String) -> KernelError {
        KernelError::Signature {
            kernel: self.0.label().to_string(),
            message,
        }
    }

    fn run_error(&self, message: String) -> KernelError {
        KernelError::Run {
            kernel: self.0.label().to_string(),
            message,
        }
    }
}

impl<O: Op> Bound for Checked<O> {
    fn arity(&self) -> Arity {
        Arity {
            inputs: self.0.input_names().len(),
            outputs: 1,
        }
    }

    fn check(&self, inputs: &[&TensorMeta]) -> Result<Vec<TensorMeta>, KernelError> {
        let names = self.0.input_names();
        if inputs.len() != names.len() {
            return Err(self.signature_error(format!(
                "expected {} inputs ({}), got {}",
                names.len(),
                names.join(", "),
                inputs.len()
            )));
        }
        for (i, meta) in inputs.iter().enumerate() {
            check_addressable(meta)
                .map_err(|e| self.signature_error(format!("{}: {e}", self.0.input(i))))?;
        }
        let out = self.0.infer(inputs).map_err(|e| self.signature_error(e))?;
        check_addressable(&out).map_err(|e| self.signature_error(format!("output 0 (y): {e}")))?;
        Ok(vec![out])
    }

    fn run_prechecked(
        &self,
        imp: Impl,
        inputs: &[&Tensor],
        outputs: &mut [Tensor],
    ) -> Result<(), KernelError> {
        let [out] = outputs else {
            return Err(self.run_error(format!("expected 1 output (y), got {}", outputs.len())));
        };
        if inputs.len() != self.0.input_names().len() {
            return Err(self.run_error(format!(
                "expected {} inputs, got {}",
                self.0.input_names().len(),
                inputs.len()
            )));
        }
        self.0
            .compute(imp, inputs, out)
            .map_err(|e| self.run_error(e))
    }

    fn run(
        &self,
        imp: Impl,
        inputs: &[&Tensor],
        outputs: &mut [Tensor],
    ) -> Result<(), KernelError> {
        let [out] = outputs else {
            return Err(self.run_error(format!("expected 1 output (y), got {}", outputs.len())));
        };
        let metas: Vec<&TensorMeta> = inputs.iter().map(|t| t.meta()).collect();
        let expected = self.check(&metas)?;
        if expected.first() != Some(out.meta()) {
            let expected = expected
                .first()
                .map(ToString::to_string)
                .unwrap_or_default();
            return Err(self.run_error(format!(
                "output 0 (y): expected {expected}, got {}",
                out.meta()
            )));
        }
        if out.bytes_mut().is_err() {
            return Err(self.run_error(
                "output 0 (y): storage is shared with another tensor; outputs must be uniquely owned".to_string(),
            ));
        }
        self.run_prechecked(imp, inputs, outputs)
    }
}

/// Whether a tensor of this meta could exist on this host.
fn check_addressable(meta: &TensorMeta) -> Result<(), String> {
    if meta.shape.len() > MAX_RANK {
        return Err(format!(
            "rank {} exceeds the maximum of {MAX_RANK} (shape {:?})",
            meta.shape.len(),
            meta.shape
        ));
    }
    match meta.byte_len() {
        Some(n) if n <= isize::MAX as usize => Ok(()),
        _ => Err(format!("{meta} has more bytes than this host can address")),
    }
}

/// Typed elements of an input.
pub(crate) fn data<'a, T: Element>(t: &'a Tensor, what: &str) -> Result<&'a [T], String> {
    t.data::<T>().map_err(|e| format!("{what}: {e}"))
}

/// Operands' typed elements and their shapes.
pub(crate) type Views<'a, T> = (Vec<&'a [T]>, Vec<&'a [usize]>);

/// Typed elements and shapes of `inputs`; `name(i)` names input `i` in
/// errors.
pub(crate) fn views<'a, T: Element>(
    inputs: &[&'a Tensor],
    name: &dyn Fn(usize) -> String,
) -> Result<Views<'a, T>, String> {
    let xs = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| data::<T>(t, &name(i)))
        .collect::<Result<_, _>>()?;
    Ok((xs, inputs.iter().map(|t| t.shape()).collect()))
}

/// Typed elements of the output.
pub(crate) fn data_mut<T: Element>(t: &mut Tensor) -> Result<&mut [T], String> {
    t.data_mut::<T>().map_err(|e| format!("output 0 (y): {e}"))
}

/// Elements of an input reinterpreted as a plain carrier type of the same
/// width (`u8`, `u32`, `u64`), for kernels that only move values.
pub(crate) fn raw<'a, T: bytemuck::Pod>(t: &'a Tensor, what: &str) -> Result<&'a [T], String> {
    bytemuck::try_cast_slice(t.bytes()).map_err(|e| {
        format!(
            "{what}: cannot view bytes as {}-byte words: {e}",
            size_of::<T>()
        )
    })
}

/// The output's elements reinterpreted as a carrier type (see [`raw`]).
pub(crate) fn raw_mut<T: bytemuck::Pod>(t: &mut Tensor) -> Result<&mut [T], String> {
    let bytes = t.bytes_mut().map_err(|e| format!("output 0 (y): {e}"))?;
    bytemuck::try_cast_slice_mut(bytes).map_err(|e| {
        format!(
            "output 0 (y): cannot view bytes as {}-byte words: {e}",
            size_of::<T>()
        )
    })
}

/// The inputs as an array of exactly `N`; the launch checks make the count
/// right, and this keeps the families free of indexing.
pub(crate) fn operands<'a, const N: usize, T: ?Sized>(xs: &[&'a T]) -> Result<[&'a T; N], String> {
    xs.try_into()
        .map_err(|_| format!("expected {N} inputs, got {}", xs.len()))
}

/// Requires every input to have the dtype of input 0.
pub(crate) fn check_same_dtype<O: Op + ?Sized>(
    op: &O,
    inputs: &[&TensorMeta],
) -> Result<(), String> {
    let Some(first) = inputs.first() else {
        return Ok(());
    };
    for (i, m) in inputs.iter().enumerate().skip(1) {
        if m.dtype != first.dtype {
            return Err(format!(
                "{}: expected dtype {} (the dtype of {}), got {}",
                op.input(i),
                first.dtype,
                op.input(0),
                m.dtype
            ));
        }
    }
    Ok(())
}

/// Requires input `i` to be f32 or f64.
pub(crate) fn check_float<O: Op + ?Sized>(
    op: &O,
    inputs: &[&TensorMeta],
    i: usize,
) -> Result<(), String> {
    match inputs.get(i) {
        Some(m) if m.dtype.is_float() => Ok(()),
        Some(m) => Err(format!(
            "{}: expected a float dtype (f32 or f64), got {}",
            op.input(i),
            m.dtype
        )),
        None => Err(format!("{} is missing", op.input(i))),
    }
}

/// Runs `$body` with `$T` bound to the Rust type of a float dtype.
macro_rules! with_float {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
            other => Err(format!(
                "dtype {other} is not supported here (expected f32 or f64)"
            )),
        }
    };
}

/// Runs `$body` with `$T` bound to the Rust type of a float or int dtype.
macro_rules! with_number {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::F32 => {
                type $T = f32;
                $body
            }
            $crate::DType::F64 => {
                type $T = f64;
                $body
            }
            other => $crate::ops::with_int!(other, $T => $body, other => Err(format!(
                "dtype {other} is not supported here (expected a float or int dtype)"
            ))),
        }
    };
}

/// Runs `$body` with `$T` bound to the Rust type of an integer dtype, or
/// `$fallback` (with `$other` bound to the dtype) for any other dtype.
macro_rules! with_int {
    ($dtype:expr, $T:ident => $body:expr, $other:ident => $fallback:expr) => {
        match $dtype {
            $crate::DType::I8 => {
                type $T = i8;
                $body
            }
            $crate::DType::U8 => {
                type $T = u8;
                $body
            }
            $crate::DType::I16 => {
                type $T = i16;
                $body
            }
            $crate::DType::U16 => {
                type $T = u16;
                $body
            }
            $crate::DType::I32 => {
                type $T = i32;
                $body
            }
            $crate::DType::U32 => {
                type $T = u32;
                $body
            }
            $crate::DType::I64 => {
                type $T = i64;
                $body
            }
            $crate::DType::U64 => {
                type $T = u64;
                $body
            }
            $other => $fallback,
        }
    };
}

/// Runs `$body` with `$T` bound to the Rust type of any dtype (bool is
/// [`Bool8`](crate::Bool8)).
macro_rules! with_element {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::Bool => {
                type $T = $crate::Bool8;
                $body
            }
            other => $crate::ops::with_number!(other, $T => $body),
        }
    };
}

/// Runs `$body` with `$T` bound to a plain carrier type as wide as `$dtype`
/// (`u8`, `u16`, `u32` or `u64`), for kernels that only move values.
macro_rules! with_width {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype.size() {
            1 => {
                type $T = u8;
                $body
            }
            2 => {
                type $T = u16;
                $body
            }
            4 => {
                type $T = u32;
                $body
            }
            8 => {
                type $T = u64;
                $body
            }
            other => Err(format!("no carrier type for {other}-byte elements")),
        }
    };
}

pub(crate) use {with_element, with_float, with_int, with_number, with_width};

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::testutil::*;
    use crate::{AttrValue, DType, Impl, KernelError, Registry, Tensor, TensorMeta};

    /// Work is split only on a pool of two threads or more, and only from
    /// its minimum on.
    #[test]
    fn splitting_needs_two_threads_and_enough_work() {
        let on = |threads: usize, work: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| super::worth_splitting(work, super::PAR_MIN))
        };
        assert!(on(2, super::PAR_MIN));
        assert!(!on(2, super::PAR_MIN - 1));
        assert!(!on(1, usize::MAX));
    }

    /// Minimal valid attributes for every kernel of the catalog.
    fn catalog() -> Vec<(&'static str, crate::Attrs)> {
        vec![
            ("arg_reduce@1", attrs(&[("op", s("max"))])),
            ("binary@1", attrs(&[("op", s("add"))])),
            ("cast@1", attrs(&[("to", s("f32"))])),
            ("compare@1", attrs(&[("op", s("eq"))])),
            ("concat@1", attrs(&[("axis", i(0)), ("n", i(2))])),
            ("conv@1", attrs(&[])),
            ("conv_transpose@1", attrs(&[])),
            ("copy@1", attrs(&[])),
            ("cumsum@1", attrs(&[("axis", i(0))])),
            (
                "fused@1",
                attrs(&[("inputs", i(1)), ("program", s("neg:0"))]),
            ),
            ("gather@1", attrs(&[])),
            ("gather_elements@1", attrs(&[])),
            ("gather_nd@1", attrs(&[])),
            ("layer_norm@1", attrs(&[])),
            ("linear@1", attrs(&[])),
            ("linear_panels@1", attrs(&[("n", i(3))])),
            ("matmul@1", attrs(&[])),
            ("panels@1", attrs(&[("width", i(4))])),
            (
                "pool@1",
                attrs(&[("op", s("max")), ("kernel_shape", ints(&[2]))]),
            ),
            ("reduce@1", attrs(&[("op", s("sum"))])),
            ("resize@1", attrs(&[("sizes", ints(&[]))])),
            (
                "slice@1",
                attrs(&[("starts", ints(&[])), ("ends", ints(&[]))]),
            ),
            ("softmax@1", attrs(&[])),
            ("transpose@1", attrs(&[])),
            ("unary@1", attrs(&[("op", s("relu"))])),
            ("where@1", attrs(&[])),
        ]
    }

    #[test]
    fn registry_has_the_catalog_and_refuses_unknown_attributes() {
        let ids: Vec<String> = catalog().iter().map(|(id, _)| id.to_string()).collect();
        assert_eq!(Registry::standard().ids(), ids);
        for (id, mut at) in catalog() {
            bind(id, &at).unwrap_or_else(|e| panic!("{id}: {e}"));
            at.insert("bogus".into(), AttrValue::Int(1));
            let err = bind(id, &at)
                .err()
                .unwrap_or_else(|| panic!("{id} accepted `bogus`"));
            assert!(
                matches!(&err, KernelError::Attrs { message, .. } if message.contains("unknown attribute `bogus`")),
                "{err}"
            );
        }
        let err = Registry::standard()
            .bind("binary@2", &attrs(&[]))
            .err()
            .unwrap();
        assert!(matches!(err, KernelError::Unknown(id, _) if id == "binary@2"));
    }

    #[test]
    fn check_refuses_unaddressable_inputs() {
        let k = bind("copy@1", &attrs(&[])).unwrap();
        let err = k
            .check(&[&TensorMeta::new(DType::F32, [1; 9])])
            .unwrap_err();
        assert_eq!(
            err,
            KernelError::Signature {
                kernel: "copy@1".into(),
                message: "input 0 (x): rank 9 exceeds the maximum of 8 (shape [1, 1, 1, 1, 1, 1, 1, 1, 1])".into()
            }
        );
        let err = k
            .check(&[&TensorMeta::new(DType::F64, [usize::MAX / 8, 2])])
            .unwrap_err();
        assert!(err.to_string().contains("input 0 (x): f64[2305843009213693951, 2] has more bytes than this host can address"), "{err}");
        // A zero dim makes the tensor empty whatever the other dims are.
        assert!(k
            .check(&[&TensorMeta::new(DType::F64, [0, usize::MAX, usize::MAX])])
            .is_ok());
    }

    #[test]
    fn run_refuses_bad_outputs_and_counts() {
        let k = bind("binary@1", &attrs(&[("op", s("add"))])).unwrap();
        let a = Tensor::from_vec(&[2, 3], vec![1.0f32; 6]).unwrap();
        let run = |inputs: &[&Tensor], outputs: &mut [Tensor]| {
            k.run(Impl::Optimized, inputs, outputs).unwrap_err()
        };

        let mut wrong_shape = vec![Tensor::zeros(DType::F32, &[3, 2]).unwrap()];
        assert_eq!(
            run(&[&a, &a], &mut wrong_shape),
            KernelError::Run {
                kernel: "binary@1 (add)".into(),
                message: "output 0 (y): expected f32[2, 3], got f32[3, 2]".into()
            }
        );
        let mut wrong_dtype = vec![Tensor::zeros(DType::F64, &[2, 3]).unwrap()];
        assert!(run(&[&a, &a], &mut wrong_dtype)
            .to_string()
            .contains("expected f32[2, 3], got f64[2, 3]"));

        let out = Tensor::zeros(DType::F32, &[2, 3]).unwrap();
        let keep = out.clone();
        let err = run(&[&a, &a], &mut [out]);
        assert!(
            err.to_string().contains("output 0 (y): storage is shared"),
            "{err}"
        );
        // Aliasing an input is sharing too.
        let err = run(&[&keep, &a], &mut [keep.clone()]);
        assert!(err.to_string().contains("storage is shared"), "{err}");
        let bytes: Arc<Vec<u8>> = Arc::new(vec![0u8; 24]);
        let external = Tensor::from_external(DType::F32, &[2, 3], bytes, 0).unwrap();
        assert!(run(&[&a, &a], &mut [external])
            .to_string()
            .contains("storage is shared"));

        let out = || Tensor::zeros(DType::F32, &[2, 3]).unwrap();
        assert!(run(&[&a], &mut [out()])
            .to_string()
            .contains("expected 2 inputs (a, b), got 1"));
        assert!(run(&[&a, &a], &mut [out(), out()])
            .to_string()
            .contains("expected 1 output (y), got 2"));
        assert!(run(&[&a, &a], &mut [])
            .to_string()
            .contains("expected 1 output (y), got 0"));
    }

    #[test]
    fn outputs_are_fully_written() {
        // A reused output buffer full of garbage must not leak into results.
        let k = bind(
            "reduce@1",
            &attrs(&[("op", s("sum")), ("axes", ints(&[1]))]),
        )
        .unwrap();
        let x = Tensor::from_vec(&[2, 2], vec![1i32, 2, 3, 4]).unwrap();
        let mut out = vec![Tensor::from_vec(&[2], vec![99i32, -7]).unwrap()];
        for imp in IMPLS {
            k.run(imp, &[&x], &mut out).unwrap();
            assert_eq!(out[0].to_vec::<i32>().unwrap(), vec![3, 7]);
        }
    }
}
