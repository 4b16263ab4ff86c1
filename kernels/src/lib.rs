//! ampoule's trusted native kernels.
//!
//! A kernel is named `name@version`. The registry maps each name to a
//! [`Kernel`], which validates a kernel-table entry's static attributes once
//! (at package `open`) and returns a [`Bound`] kernel. A bound kernel has a
//! fixed [`Arity`], a signature checker run on **every** launch
//! ([`Bound::check`]: input dtypes and shapes in, exact output metas out), and
//! two implementations: a simple reference one and an optimized one
//! ([`Impl`]). Optimized implementations are tested against the reference.
//!
//! The same checker is the compiler's shape inference, so there is one source
//! of truth for what a kernel accepts.
//!
//! Invariants:
//! - `check` never panics, whatever the metas and attributes.
//! - `run` never panics and never reads or writes out of bounds when its
//!   inputs passed `check` and its outputs have the metas `check` returned;
//!   otherwise it returns an error. Data-dependent failures (an index out of
//!   range in `gather`) are errors too.
//! - Outputs are fully written by `run` (kernels never rely on prior
//!   contents), so reuse of buffers across runs is invisible.
//!
//! # Catalog (version 1)
//!
//! Broadcasting follows numpy. "float" is f32 or f64. Attribute values are
//! [`AttrValue`]s; integer flags are 0 or 1.
//!
//! | kernel | inputs | outputs | attributes |
//! |---|---|---|---|
//! | `binary@1` | a, b: same dtype (float or int) | broadcast(a, b), same dtype | `op`: add, sub, mul, div, pow, max, min |
//! | `compare@1` | a, b: same dtype | broadcast(a, b), bool | `op`: eq, lt, le, gt, ge |
//! | `unary@1` | x: float | same as x | `op`: neg, abs, relu, gelu (erf), gelu_tanh, tanh, sigmoid, exp, log, sqrt, rsqrt, recip, erf, floor, ceil, sin, cos, hard_swish; leaky_relu (`alpha`), hard_sigmoid (`alpha`, `beta`) |
//! | `matmul@1` | a [..., M, K], b [..., K, N]: float, batch dims broadcast; rank >= 2 each | [..., M, N] | none |
//! | `linear@1` | x [..., K], w [K, N] (or [N, K] with `trans_w`=1), bias [N] if `bias`=1 | [..., N] | `trans_w`, `bias` |
//! | `panels@1` | w [K, N] (or [N, K] with `trans`=1): float | [ceil(N / `width`), K, `width`]: column panels, zero-padded | `width` (1..=256), `trans` |
//! | `linear_panels@1` | x [..., K], w [ceil(`n` / W), K, W] from `panels@1`, bias [`n`] if `bias`=1 | [..., `n`] | `n`, `bias` |
//! | `softmax@1` | x: float | same | `axis` (negative counts from the end) |
//! | `layer_norm@1` | x, scale, bias: float; scale/bias shape = x.shape[axis..] | same as x | `axis`, `epsilon` |
//! | `reduce@1` | x: float or int (sum), float, int or bool (max/min), float (mean) | reduced shape | `op`: sum, mean, max, min; `axes` (list, negative ok, empty = all); `keepdims` |
//! | `transpose@1` | x: any | permuted shape | `perm` (a permutation of 0..rank) |
//! | `concat@1` | `n` inputs (1..=5), same dtype and rank, equal except on `axis` | joined | `axis`, `n` |
//! | `slice@1` | x: any | sliced shape | `starts`, `ends`, `steps` (one per axis; ONNX semantics: negative indices count from the end, out-of-range values clamp, steps non-zero) |
//! | `gather@1` | data: any, indices: i32 or i64 | data.shape[..axis] + indices.shape + data.shape[axis+1..] | `axis`; an index out of range (after adding the axis size to negatives) is a run error |
//! | `where@1` | cond: bool, x, y: same dtype | broadcast(cond, x, y) | none |
//! | `cast@1` | x: any | same shape, dtype `to` | `to`: dtype name |
//! | `copy@1` | x: any | same | none |
//! | `conv@1` | x [N, C, D..], w [M, C/group, K..], bias [M] if `bias`=1: float | [N, M, O..] | `group`, `strides`, `dilations`, `pads` (begins then ends), `bias`; `post`: a `fused@1` program run in place on the output (register 0), reading `post_inputs` more inputs (after bias) that broadcast to the output |
//! | `conv_transpose@1` | x [N, C, D..], w [C, M/group, K..], bias [M] if `bias`=1: float | [N, M, O..] | as `conv@1` plus `output_padding` |
//! | `pool@1` | x [N, C, D..]: float (avg), float or int (max, max_index) | [N, C, O..], same dtype (i64 for max_index) | `op`: max, avg, max_index; `kernel_shape`, `strides`, `dilations`, `pads`, `ceil_mode`, `count_include_pad`; `storage_order` (max_index) |
//! | `arg_reduce@1` | x: float or int | reduced shape, i64 | `op`: max, min; `axis`, `keepdims`, `select_last_index` |
//! | `cumsum@1` | x: float or int | same | `axis`, `exclusive`, `reverse` |
//! | `gather_elements@1` | data: any, indices: i32 or i64, same rank | indices' shape | `axis`; out-of-range indices are a run error |
//! | `gather_nd@1` | data: any, indices [.., k]: i32 or i64 | indices.shape[..-1] + data.shape[batch_dims + k..] | `batch_dims`; out-of-range indices are a run error |
//! | `fused@1` | `inputs` tensors x0.. (1..=5): float, one dtype | broadcast of the inputs | `inputs`; `program`: a chain of `binary@1` ops (`op:a:b`), attribute-free `unary@1` ops (`op:a`) and immediates (`const:v`) over registers |
//! | `resize@1` | x: any (nearest) or float (linear) | `sizes` | `sizes`, `scales`, `mode`, `coordinate_transformation_mode`, `nearest_mode` (ONNX Resize semantics) |
//!
//! Reshape is not a kernel: the host's `view` import reshapes without a copy.
//!
//! # Thread safety
//!
//! Every public type is `Send + Sync` (checked at compile time below).
//! [`Tensor`] is an immutable view of shared storage: clones share bytes,
//! and [`Tensor::bytes_mut`] refuses (`TensorError::Shared`) while the
//! storage is shared, so no owner ever sees another's writes. [`Registry`], [`Kernel`] and
//! [`Bound`] are immutable after construction; a bound kernel is called from
//! many threads at once and keeps no state between calls. Optimized kernels
//! may run on rayon's global pool.

// `unsafe` is denied everywhere but in the functions of `ops::matmul` that
// call `gemm` (and `ops::simd`'s feature-gated dispatch), each with its
// `// SAFETY:` proof.
#![deny(unsafe_code)]

mod tensor;

pub use tensor::{
    checked_numel, Bool8, Bytes, DType, Element, Storage, Tensor, TensorError, TensorMeta, MAX_RANK,
};

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The largest number of operands (inputs + outputs) of any launch. Fixed by
/// the wrapper ABI's `launch` import.
pub const MAX_OPERANDS: usize = 6;

/// `unary@1`'s parameter defaults: `leaky_relu`'s alpha, and
/// `hard_sigmoid`'s alpha and beta (ONNX's). The compiler spells them out
/// when it fuses an op that leaves them implicit.
pub const LEAKY_RELU_ALPHA: f64 = 0.01;
pub const HARD_SIGMOID_ALPHA: f64 = 0.2;
pub const HARD_SIGMOID_BETA: f64 = 0.5;

/// A static attribute value in a kernel table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AttrValue {
    Int(i64),
    Float(f64),
    Ints(Vec<i64>),
    Floats(Vec<f64>),
    Str(String),
}

/// The static attributes of one kernel-table entry.
pub type Attrs = BTreeMap<String, AttrValue>;

/// Why a kernel refused attributes, operands or data. Messages name the
/// kernel and the operand.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum KernelError {
    #[error("unknown kernel `{0}`; this host provides: {1}")]
    Unknown(String, String),
    #[error("kernel `{kernel}`: invalid attributes: {message}")]
    Attrs { kernel: String, message: String },
    #[error("kernel `{kernel}`: {message}")]
    Signature { kernel: String, message: String },
    #[error("kernel `{kernel}` failed at run time: {message}")]
    Run { kernel: String, message: String },
}

/// Number of inputs and outputs of a bound kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arity {
    pub inputs: usize,
    pub outputs: usize,
}

/// Which implementation a launch runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Impl {
    /// The simple, obviously correct implementation. The basis of
    /// portability checks.
    Reference,
    /// The fastest implementation this host has (SIMD, threads, `gemm`).
    #[default]
    Optimized,
}

/// A kernel family: one `name@version`.
pub trait Kernel: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn version(&self) -> u32;
    /// Validates static attributes and returns the bound kernel.
    fn bind(&self, attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError>;
}

/// A kernel with validated attributes, ready to launch.
pub trait Bound: Send + Sync + 'static {
    fn arity(&self) -> Arity;
    /// Derives the exact output metas from the input metas, or says why the
    /// inputs do not fit the signature.
    fn check(&self, inputs: &[&TensorMeta]) -> Result<Vec<TensorMeta>, KernelError>;
    /// Runs the kernel. `outputs` have the metas `check` returned and
    /// uniquely owned storage.
    fn run(&self, imp: Impl, inputs: &[&Tensor], outputs: &mut [Tensor])
        -> Result<(), KernelError>;

    /// Runs the kernel on operands the caller has already checked: their
    /// metas passed [`Bound::check`] and each output has exactly the meta it
    /// returned. Skips re-deriving the signature (the host's launch path
    /// checks, memoized, before calling this). Still never undefined
    /// behaviour; output count and unique ownership are still checked.
    fn run_prechecked(
        &self,
        imp: Impl,
        inputs: &[&Tensor],
        outputs: &mut [Tensor],
    ) -> Result<(), KernelError> {
        self.run(imp, inputs, outputs)
    }
}

/// The kernels a host provides, by `name@version`.
#[derive(Clone)]
pub struct Registry {
    kernels: HashMap<(String, u32), Arc<dyn Kernel>>,
}

impl Registry {
    /// An empty registry.
    pub fn empty() -> Self {
        Registry {
            kernels: HashMap::new(),
        }
    }

    /// Every kernel in the catalog above.
    pub fn standard() -> Self {
        let mut r = Registry::empty();
        ops::register_all(&mut r);
        r
    }

    pub fn register(&mut self, kernel: Arc<dyn Kernel>) {
        self.kernels
            .insert((kernel.name().to_string(), kernel.version()), kernel);
    }

    /// Resolves `name@version`.
    pub fn get(&self, id: &str) -> Result<&Arc<dyn Kernel>, KernelError> {
        parse_id(id)
            .and_then(|(name, version)| self.kernels.get(&(name.to_string(), version)))
            .ok_or_else(|| KernelError::Unknown(id.to_string(), self.ids().join(", ")))
    }

    /// Resolves `name@version` and binds `attrs`.
    pub fn bind(&self, id: &str, attrs: &Attrs) -> Result<Arc<dyn Bound>, KernelError> {
        self.get(id)?.bind(attrs)
    }

    /// Every `name@version`, sorted.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .kernels
            .keys()
            .map(|(n, v)| format!("{n}@{v}"))
            .collect();
        ids.sort();
        ids
    }
}

/// Splits `name@version`.
pub fn parse_id(id: &str) -> Option<(&str, u32)> {
    let (name, version) = id.split_once('@')?;
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    Some((name, version.parse().ok()?))
}

mod ops;

// The thread-safety contract in the crate doc, checked by the compiler.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Tensor>();
    send_sync::<TensorMeta>();
    send_sync::<DType>();
    send_sync::<Registry>();
    send_sync::<AttrValue>();
    send_sync::<KernelError>();
    send_sync::<Arc<dyn Bound>>();
};
