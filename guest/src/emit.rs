//! Emits a verified [`Program`] as a core Wasm module, then as a component.
//!
//! # The core module's ABI
//!
//! It follows wit-component's core naming for the `wrapper` world, with the
//! canonical ABI's flat lowering (`u32` → `i32`, `s64` → `i64`, `f64` → `f64`):
//!
//! - Imports, all from module [`HOST_INTERFACE`], in this order (function
//!   indices 0..7): `launch` (7 × i32), `alloc` (10 × i32 → i32), `view`
//!   (10 × i32 → i32), `release` (i32), `dim` (2 × i32 → i32), `read-i64`
//!   (2 × i32 → i64), `read-f64` (2 × i32 → f64).
//! - Exports: `memory`; `cabi_realloc(old_ptr, old_size, align, new_size) ->
//!   ptr`; `init(globals_ptr, globals_len, buffers_ptr, buffers_len)`;
//!   `run(inputs_ptr, inputs_len) -> ret_ptr`. There is no `cabi_post_run`:
//!   `run` returns pointers into static areas, so there is nothing to free.
//! - Globals: 0 is the bump pointer of `cabi_realloc`; 1 is 1 once `init`
//!   has run. There is no table, no data segment and no start function.
//!
//! Memory follows [`Layout`]; the module doc of `layout` lists the areas.
//!
//! # Invariants of the emitted code
//!
//! - `init` traps unless it runs first and once, and unless the lengths of
//!   its lists equal the program's `globals` and `buffers`; `run` traps
//!   before `init` and unless its list has `inputs` handles. A trap is the
//!   only answer to a host that breaks the contract.
//! - `cabi_realloc` only allocates (`old_ptr` and `old_size` must be 0),
//!   with a power-of-two `align`, inside the heap; anything else traps.
//! - `init` first sets every register to `0xffffffff` (no handle), so a
//!   register no step wrote never aliases a real handle.
//! - Each export copies its lists into registers, then resets the bump
//!   pointer, before running any step.
//! - Every register address is `Layout::reg` of a verified register, so every
//!   load and store is in bounds of the fixed-size memory.
//! - Output is a pure function of the program: same program, same bytes.

use wasm_encoder::{
    BlockType, CodeSection, ConstExpr, EntityType, ExportKind, ExportSection, Function,
    FunctionSection, GlobalSection, GlobalType, ImportSection, InstructionSink, MemArg,
    MemorySection, MemoryType, Module, TypeSection, ValType,
};

use crate::error::EmitError;
use crate::layout::Layout;
use crate::program::{Cond, Dim, Program, Reg, Step};
use crate::verify::{verify, Phase, MAX_DIMS, MAX_FUNCTION_BYTES, MAX_OPERANDS};
use crate::HOST_INTERFACE;

/// Verifies `program`, emits it as a core module and componentizes it
/// against the contract: the bytes of the entry's wrapper component.
pub fn emit(program: &Program) -> Result<Vec<u8>, EmitError> {
    let core = emit_core(program)?;
    crate::component::componentize(&core)
}

/// Verifies `program` and emits it as a core module (see the module doc for
/// its ABI), without componentizing it.
pub fn emit_core(program: &Program) -> Result<Vec<u8>, EmitError> {
    verify(program).map_err(|problems| EmitError::Invalid { problems })?;
    let layout = Layout::of(program).ok_or(EmitError::Layout)?;
    CoreModule { program, layout }.encode()
}

// Function indices: the imports, then the defined functions.
const F_LAUNCH: u32 = 0;
const F_ALLOC: u32 = 1;
const F_VIEW: u32 = 2;
const F_RELEASE: u32 = 3;
const F_DIM: u32 = 4;
const F_READ_I64: u32 = 5;
// 6 is `read-f64`: imported for the contract, no step reads a float yet.
const F_REALLOC: u32 = 7;
const F_INIT: u32 = 8;
const F_RUN: u32 = 9;

// Type indices.
const T_LAUNCH: u32 = 0; // 7 × i32 -> ()
const T_SHAPE: u32 = 1; // 10 × i32 -> i32 (alloc, view)
const T_RELEASE: u32 = 2; // i32 -> ()
const T_DIM: u32 = 3; // 2 × i32 -> i32 (dim, run)
const T_READ_I64: u32 = 4; // 2 × i32 -> i64
const T_READ_F64: u32 = 5; // 2 × i32 -> f64
const T_REALLOC: u32 = 6; // 4 × i32 -> i32
const T_INIT: u32 = 7; // 4 × i32 -> ()

// Global indices.
const G_BUMP: u32 = 0;
const G_READY: u32 = 1;

/// A 4-byte aligned access at a constant address.
fn word(offset: u32) -> MemArg {
    MemArg {
        offset: u64::from(offset),
        align: 2,
        memory_index: 0,
    }
}

struct CoreModule<'p> {
    program: &'p Program,
    layout: Layout,
}

impl CoreModule<'_> {
    fn encode(&self) -> Result<Vec<u8>, EmitError> {
        let mut types = TypeSection::new();
        let i32s = |n: usize| vec![ValType::I32; n];
        types.ty().function(i32s(1 + MAX_OPERANDS), []);
        types.ty().function(i32s(2 + MAX_DIMS), [ValType::I32]);
        types.ty().function(i32s(1), []);
        types.ty().function(i32s(2), [ValType::I32]);
        types.ty().function(i32s(2), [ValType::I64]);
        types.ty().function(i32s(2), [ValType::F64]);
        types.ty().function(i32s(4), [ValType::I32]);
        types.ty().function(i32s(4), []);

        let mut imports = ImportSection::new();
        for (name, ty) in [
            ("launch", T_LAUNCH),
            ("alloc", T_SHAPE),
            ("view", T_SHAPE),
            ("release", T_RELEASE),
            ("dim", T_DIM),
            ("read-i64", T_READ_I64),
            ("read-f64", T_READ_F64),
        ] {
            imports.import(HOST_INTERFACE, name, EntityType::Function(ty));
        }

        let mut functions = FunctionSection::new();
        functions.function(T_REALLOC);
        functions.function(T_INIT);
        functions.function(T_DIM);

        let mut memories = MemorySection::new();
        memories.memory(MemoryType {
            minimum: u64::from(self.layout.pages),
            maximum: Some(u64::from(self.layout.pages)),
            memory64: false,
            shared: false,
            page_size_log2: None,
        });

        let mut globals = GlobalSection::new();
        let mutable_i32 = GlobalType {
            val_type: ValType::I32,
            mutable: true,
            shared: false,
        };
        let heap = self.layout.heap.cast_signed();
        globals.global(mutable_i32, &ConstExpr::i32_const(heap));
        globals.global(mutable_i32, &ConstExpr::i32_const(0));

        let mut exports = ExportSection::new();
        exports.export("memory", ExportKind::Memory, 0);
        exports.export("cabi_realloc", ExportKind::Func, F_REALLOC);
        exports.export("init", ExportKind::Func, F_INIT);
        exports.export("run", ExportKind::Func, F_RUN);

        let mut code = CodeSection::new();
        code.function(&self.realloc());
        code.function(&self.init()?);
        code.function(&self.run()?);

        let mut module = Module::new();
        module
            .section(&types)
            .section(&imports)
            .section(&functions)
            .section(&memories)
            .section(&globals)
            .section(&exports)
            .section(&code);
        Ok(module.finish())
    }

    /// `cabi_realloc`: a bump allocator over the heap, computed in `i64` so
    /// no operand the host passes can wrap an address.
    fn realloc(&self) -> Function {
        const OLD_PTR: u32 = 0;
        const OLD_SIZE: u32 = 1;
        const ALIGN: u32 = 2;
        const NEW_SIZE: u32 = 3;
        const PTR: u32 = 4;
        const END: u32 = 5;
        let mut f = Function::new([(2, ValType::I64)]);
        let mut s = f.instructions();
        // Only fresh allocations, with a power-of-two alignment.
        s.local_get(OLD_PTR).local_get(OLD_SIZE).i32_or();
        s.local_get(ALIGN).i32_popcnt().i32_const(1).i32_ne();
        s.i32_or();
        trap_if(&mut s);
        // ptr = (bump + align - 1) & -align
        s.global_get(G_BUMP).i64_extend_i32_u();
        s.local_get(ALIGN).i64_extend_i32_u().i64_add();
        s.i64_const(1).i64_sub();
        s.i64_const(0).local_get(ALIGN).i64_extend_i32_u().i64_sub();
        s.i64_and().local_tee(PTR);
        // end = ptr + new_size, which must not pass the heap's end.
        s.local_get(NEW_SIZE)
            .i64_extend_i32_u()
            .i64_add()
            .local_tee(END);
        s.i64_const(i64::from(self.layout.heap_end)).i64_gt_u();
        trap_if(&mut s);
        s.local_get(END).i32_wrap_i64().global_set(G_BUMP);
        s.local_get(PTR).i32_wrap_i64();
        s.end();
        f
    }

    fn init(&self) -> Result<Function, EmitError> {
        let p = self.program;
        let mut code = Vec::new();
        let mut s = InstructionSink::new(&mut code);
        s.global_get(G_READY);
        trap_if(&mut s);
        s.i32_const(1).global_set(G_READY);
        if p.registers > 0 {
            // No register ever holds a handle the host may have issued by
            // chance: unwritten ones read as 0xffffffff, the "no operand"
            // value of `launch`.
            s.i32_const(self.layout.registers.cast_signed());
            s.i32_const(-1);
            s.i32_const(p.registers.wrapping_mul(4).cast_signed());
            s.memory_fill(0);
        }
        self.take_list(&mut s, 0, 1, p.globals, 0);
        self.take_list(&mut s, 2, 3, p.buffers, p.globals);
        self.reset_heap(&mut s);
        let mut body = Body::new("init", code);
        self.steps(&mut body, Phase::Init, &p.init)?;
        body.s().end();
        body.finish()
    }

    fn run(&self) -> Result<Function, EmitError> {
        let p = self.program;
        let l = self.layout;
        let mut code = Vec::new();
        let mut s = InstructionSink::new(&mut code);
        s.global_get(G_READY).i32_eqz();
        trap_if(&mut s);
        // Verified: globals + buffers + inputs <= registers <= MAX_REGISTERS.
        self.take_list(&mut s, 0, 1, p.inputs, p.globals.saturating_add(p.buffers));
        self.reset_heap(&mut s);
        let mut body = Body::new("run", code);
        self.steps(&mut body, Phase::Run, &p.run)?;
        let mut s = body.s();
        for (i, out) in (0u32..).zip(&p.outputs) {
            s.i32_const(0);
            self.load_reg(&mut s, *out);
            s.i32_store(word(l.outputs + 4 * i));
        }
        let count = u32::try_from(p.outputs.len()).unwrap_or(u32::MAX);
        s.i32_const(0).i32_const(0).i32_store8(MemArg {
            offset: u64::from(l.ret),
            align: 0,
            memory_index: 0,
        });
        s.i32_const(0).i32_const(l.outputs.cast_signed());
        s.i32_store(word(l.ret + 4));
        s.i32_const(0).i32_const(count.cast_signed());
        s.i32_store(word(l.ret + 8));
        s.i32_const(l.ret.cast_signed());
        s.end();
        body.finish()
    }

    /// Traps unless local `len` is `count`, then copies `count` handles from
    /// the list at local `ptr` into registers `first..first + count`.
    fn take_list(&self, s: &mut InstructionSink<'_>, ptr: u32, len: u32, count: u32, first: u32) {
        s.local_get(len).i32_const(count.cast_signed()).i32_ne();
        trap_if(s);
        if count > 0 {
            s.i32_const(self.layout.reg(Reg(first)).cast_signed());
            s.local_get(ptr);
            s.i32_const(count.wrapping_mul(4).cast_signed());
            s.memory_copy(0, 0);
        }
    }

    fn reset_heap(&self, s: &mut InstructionSink<'_>) {
        s.i32_const(self.layout.heap.cast_signed())
            .global_set(G_BUMP);
    }

    fn load_reg(&self, s: &mut InstructionSink<'_>, reg: Reg) {
        s.i32_const(0).i32_load(word(self.layout.reg(reg)));
    }

    /// Emits `steps`; recursion depth is bounded by the verified nesting.
    /// Stops as soon as the body passes [`MAX_FUNCTION_BYTES`], so a huge
    /// program costs at most the limit in memory.
    fn steps(&self, body: &mut Body, phase: Phase, steps: &[Step]) -> Result<(), EmitError> {
        for step in steps {
            body.check()?;
            self.step(body, phase, step)?;
        }
        Ok(())
    }

    fn step(&self, body: &mut Body, phase: Phase, step: &Step) -> Result<(), EmitError> {
        let l = self.layout;
        let mut s = body.s();
        match step {
            Step::Launch { kernel, args } => {
                s.i32_const(kernel.cast_signed());
                for a in args {
                    self.load_reg(&mut s, *a);
                }
                for _ in args.len()..MAX_OPERANDS {
                    s.i32_const(-1);
                }
                s.call(F_LAUNCH);
            }
            Step::Alloc { dst, dtype, dims } => {
                s.i32_const(0);
                s.i32_const(dtype.cast_signed());
                self.dims(&mut s, dims);
                s.call(F_ALLOC);
                s.i32_store(word(l.reg(*dst)));
            }
            Step::View { dst, src, dims } => {
                s.i32_const(0);
                self.load_reg(&mut s, *src);
                self.dims(&mut s, dims);
                s.call(F_VIEW);
                s.i32_store(word(l.reg(*dst)));
            }
            Step::Release { reg } => {
                self.load_reg(&mut s, *reg);
                s.call(F_RELEASE);
            }
            Step::Move { dst, src } => {
                s.i32_const(0);
                self.load_reg(&mut s, *src);
                s.i32_store(word(l.reg(*dst)));
            }
            Step::If {
                cond,
                then,
                otherwise,
            } => {
                self.cond(&mut s, cond);
                s.if_(BlockType::Empty);
                self.steps(body, phase, then)?;
                if !otherwise.is_empty() {
                    body.s().else_();
                    self.steps(body, phase, otherwise)?;
                }
                body.s().end();
            }
            Step::Loop {
                head,
                cond,
                body: looped,
            } => {
                // block { loop { head; br_if 1 (!cond); body; br 0 } }
                s.block(BlockType::Empty).loop_(BlockType::Empty);
                self.steps(body, phase, head)?;
                let mut s = body.s();
                self.cond(&mut s, cond);
                s.i32_eqz().br_if(1);
                self.steps(body, phase, looped)?;
                body.s().br(0).end().end();
            }
            Step::Guard { index, cond } => {
                // Verified: only in `run`, whose result this writes.
                self.load_reg(&mut s, cond.0);
                s.i32_const(0).call(F_READ_I64).i64_eqz();
                s.if_(BlockType::Empty);
                s.i32_const(0).i32_const(1).i32_store8(MemArg {
                    offset: u64::from(l.ret),
                    align: 0,
                    memory_index: 0,
                });
                s.i32_const(0).i32_const(index.cast_signed());
                s.i32_store(word(l.ret + 4));
                s.i32_const(l.ret.cast_signed()).return_();
                s.end();
            }
        }
        Ok(())
    }

    /// Pushes `rank, d0..d7`, zero past the rank.
    fn dims(&self, s: &mut InstructionSink<'_>, dims: &[Dim]) {
        let rank = u32::try_from(dims.len()).unwrap_or(u32::MAX);
        s.i32_const(rank.cast_signed());
        for d in dims {
            match d {
                Dim::Const(n) => {
                    s.i32_const(n.cast_signed());
                }
                Dim::Of(reg, axis) => {
                    self.load_reg(s, *reg);
                    s.i32_const(axis.cast_signed()).call(F_DIM);
                }
                Dim::Affine {
                    terms,
                    constant,
                    divisor,
                } => {
                    // Verified: at most MAX_TERMS terms, divisor >= 1.
                    s.i64_const(*constant);
                    for t in terms {
                        self.load_reg(s, t.reg);
                        s.i32_const(t.axis.cast_signed()).call(F_DIM);
                        s.i64_extend_i32_u().i64_const(t.coeff).i64_mul().i64_add();
                    }
                    s.i64_const(i64::from(*divisor)).i64_div_s().i32_wrap_i64();
                }
            }
        }
        for _ in dims.len()..MAX_DIMS {
            s.i32_const(0);
        }
    }

    /// Pushes 1 if the condition holds (element 0 is non-zero), else 0.
    fn cond(&self, s: &mut InstructionSink<'_>, cond: &Cond) {
        self.load_reg(s, cond.0);
        s.i32_const(0).call(F_READ_I64).i64_const(0).i64_ne();
    }
}

/// `if (top of stack) unreachable`.
fn trap_if(s: &mut InstructionSink<'_>) {
    s.if_(BlockType::Empty).unreachable().end();
}

/// The code of a function body being emitted, for a function without locals.
struct Body {
    function: &'static str,
    code: Vec<u8>,
}

impl Body {
    fn new(function: &'static str, code: Vec<u8>) -> Body {
        Body { function, code }
    }

    fn s(&mut self) -> InstructionSink<'_> {
        InstructionSink::new(&mut self.code)
    }

    /// Refuses a body larger than [`MAX_FUNCTION_BYTES`].
    fn check(&self) -> Result<(), EmitError> {
        if self.code.len() > MAX_FUNCTION_BYTES {
            return Err(EmitError::FunctionTooLarge {
                function: self.function,
                limit: MAX_FUNCTION_BYTES,
            });
        }
        Ok(())
    }

    fn finish(self) -> Result<Function, EmitError> {
        self.check()?;
        let mut f = Function::new([]);
        f.raw(self.code);
        Ok(f)
    }
}
