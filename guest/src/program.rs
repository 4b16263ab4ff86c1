//! The lowered wrapper program: what an entry's wrapper does, step by step,
//! before it becomes Wasm.
//!
//! A program works on *registers*, each holding one slot handle (a `u32`
//! issued by the host). Registers are numbered:
//!
//! - `0 .. globals`: the entry's globals, in globals-table order (set by `init`);
//! - `globals .. globals + buffers`: the planned buffers (set by `init`);
//! - the next `inputs`: the function's inputs (set by each `run`);
//! - the rest, up to `registers`: temporaries written by steps.
//!
//! `init` steps run once per instance after globals and buffers are set; a
//! static entry does all its `view`s of globals and buffers there, so `run`
//! makes no allocation call. `run` steps run on every call, then `run`
//! returns the handles in `outputs`.

use serde::{Deserialize, Serialize};

/// A register index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Reg(pub u32);

/// A dimension size computed by the wrapper.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dim {
    /// A constant size.
    Const(u32),
    /// The size of axis `.1` of the tensor in register `.0`, read with the
    /// host's `dim` import.
    Of(Reg, u32),
    /// A size derived from symbolic dims:
    /// `(constant + Σ coeff · size(reg, axis)) / divisor`, computed in 64-bit
    /// arithmetic and truncated to 32 bits. The compiler guarantees exact
    /// division with guards; a wrong size is still only a size the host
    /// checks (a launch or view it refuses), never an access.
    Affine {
        terms: Vec<Term>,
        constant: i64,
        divisor: u32,
    },
}

/// One term of [`Dim::Affine`]: `coeff · size(reg, axis)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Term {
    pub reg: Reg,
    pub axis: u32,
    pub coeff: i64,
}

/// A branch condition: element 0 of the tensor in the register, read with
/// `read-i64`, is non-zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cond(pub Reg);

/// One step of a wrapper program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// `launch(kernel, args..)`: inputs then outputs, at most 6 operands.
    Launch { kernel: u32, args: Vec<Reg> },
    /// `dst = alloc(dtype, dims)`.
    Alloc {
        dst: Reg,
        dtype: u32,
        dims: Vec<Dim>,
    },
    /// `dst = view(src, dims)`.
    View { dst: Reg, src: Reg, dims: Vec<Dim> },
    /// `release(reg)`.
    Release { reg: Reg },
    /// `dst = src`: copies a handle between registers (no host call).
    Move { dst: Reg, src: Reg },
    /// Runs `then` if the condition holds, else `otherwise`.
    If {
        cond: Cond,
        then: Vec<Step>,
        otherwise: Vec<Step>,
    },
    /// A loop: runs `head`, then stops if the condition does not hold, else
    /// runs `body` and starts over. Nothing bounds the trip count but the
    /// host's deadline.
    Loop {
        head: Vec<Step>,
        cond: Cond,
        body: Vec<Step>,
    },
    /// A break: if the condition does not hold, `run` returns `err(index)`.
    Guard { index: u32, cond: Cond },
}

/// A whole wrapper program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Program {
    pub globals: u32,
    pub buffers: u32,
    pub inputs: u32,
    /// Total registers; at least `globals + buffers + inputs`.
    pub registers: u32,
    pub init: Vec<Step>,
    pub run: Vec<Step>,
    pub outputs: Vec<Reg>,
}
