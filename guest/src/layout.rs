//! The linear-memory layout of an emitted wrapper.
//!
//! Every wrapper has one memory, exported as `memory`, whose size is fixed
//! (minimum = maximum = [`Layout::pages`]): the emitter knows every address it
//! uses, so nothing ever grows. From address 0 up, each area 4-byte aligned:
//!
//! | area | at | size | holds |
//! |---|---|---|---|
//! | null guard | 0 | 16 | nothing; no pointer the wrapper hands out is below 16 |
//! | return area | [`Layout::ret`] = 16 | 12 | `run`'s `result<list<u32>, u32>`: discriminant `u8` at +0 (0 ok, 1 err); ok: list pointer at +4, length at +8; err: break index at +4 |
//! | outputs | [`Layout::outputs`] = 32 | 4 × outputs | the output handles `run` returns (the ok list points here) |
//! | registers | [`Layout::registers`] | 4 × registers | register `r` at `registers + 4r`, a `u32` handle; `0xffffffff` until written |
//! | heap | [`Layout::heap`] | [`Layout::heap_end`] − heap | `cabi_realloc`'s bump area, where the host lowers `init`'s and `run`'s lists |
//!
//! The heap holds exactly what one export call's lists need:
//! `4 × max(globals + buffers, inputs)` bytes. Each export copies its lists
//! into registers first, then resets the bump pointer to [`Layout::heap`], so
//! the heap never fills across calls; a host that lowers longer lists than
//! the program declares makes `cabi_realloc` trap.
//!
//! All sizes are computed in `u64` from a verified program
//! (see [`crate::verify`]), so they cannot overflow and always fit a 32-bit
//! memory.

use crate::program::{Program, Reg};

/// Bytes in a Wasm page.
pub const PAGE: u64 = 1 << 16;

/// Addresses of the areas of one program's memory (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// `run`'s return area.
    pub ret: u32,
    /// The output handles.
    pub outputs: u32,
    /// Register 0.
    pub registers: u32,
    /// The first byte of the bump heap.
    pub heap: u32,
    /// One past the last byte of the bump heap.
    pub heap_end: u32,
    /// The memory's size in pages (its minimum and its maximum).
    pub pages: u32,
}

/// Where the return area is.
const RET: u64 = 16;
/// Where the outputs are.
const OUTPUTS: u64 = 32;

impl Layout {
    /// Lays out memory for `program`. `None` when the areas do not fit a
    /// 32-bit memory, which [`crate::verify`]'s limits rule out.
    pub fn of(program: &Program) -> Option<Layout> {
        let outputs_len = u64::try_from(program.outputs.len()).ok()?;
        let registers = OUTPUTS.checked_add(outputs_len.checked_mul(4)?)?;
        let heap = registers.checked_add(u64::from(program.registers).checked_mul(4)?)?;
        let init_lists = u64::from(program.globals).checked_add(u64::from(program.buffers))?;
        let heap_words = init_lists.max(u64::from(program.inputs));
        let heap_end = heap.checked_add(heap_words.checked_mul(4)?)?;
        let pages = heap_end.div_ceil(PAGE).max(1);
        Some(Layout {
            ret: u32::try_from(RET).ok()?,
            outputs: u32::try_from(OUTPUTS).ok()?,
            registers: u32::try_from(registers).ok()?,
            heap: u32::try_from(heap).ok()?,
            heap_end: u32::try_from(heap_end).ok()?,
            pages: u32::try_from(pages).ok()?,
        })
    }

    /// The address of register `reg`, for a register [`crate::verify`]
    /// accepted (so `registers + 4 × reg` is below `heap`).
    pub fn reg(&self, reg: Reg) -> u32 {
        self.registers.wrapping_add(reg.0.wrapping_mul(4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn areas_follow_each_other() {
        let p = Program {
            globals: 2,
            buffers: 1,
            inputs: 5,
            registers: 10,
            init: vec![],
            run: vec![],
            outputs: vec![Reg(9), Reg(8)],
        };
        let l = Layout::of(&p).unwrap();
        assert_eq!(
            l,
            Layout {
                ret: 16,
                outputs: 32,
                registers: 40,
                heap: 80,
                heap_end: 100,
                pages: 1,
            }
        );
        assert_eq!(l.reg(Reg(3)), 52);
    }

    #[test]
    fn the_largest_verified_program_fits_in_a_few_pages() {
        let p = Program {
            globals: crate::verify::MAX_REGISTERS,
            buffers: 0,
            inputs: 0,
            registers: crate::verify::MAX_REGISTERS,
            init: vec![],
            run: vec![],
            outputs: vec![Reg(0); crate::verify::MAX_OUTPUTS],
        };
        let l = Layout::of(&p).unwrap();
        assert_eq!(l.pages, 13);
    }
}
