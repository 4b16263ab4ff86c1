//! Verification of a [`Program`] before it is emitted.
//!
//! [`verify`] walks the whole program and returns every problem it finds,
//! each with the location of the step (`run[2].then[0]`), instead of stopping
//! at the first. It enforces these invariants, on which the emitter relies
//! (the emitter never indexes, allocates or recurses past them):
//!
//! - `globals + buffers + inputs <= registers <= MAX_REGISTERS` (checked
//!   arithmetic: the sum of three `u32`s may not fit a `u32`);
//! - every register a step or an output names is `< registers`;
//! - `init` steps name no input register (inputs are only set by `run`);
//! - a `Launch` has at most [`MAX_OPERANDS`] operands;
//! - an `Alloc` or a `View` has at most [`MAX_DIMS`] dims; an affine dim has
//!   at most [`MAX_TERMS`] terms and a non-zero divisor;
//! - `If` and `Loop` nesting is at most [`MAX_NESTING`] deep, so the emitter's recursion
//!   is bounded (the walk itself stops descending at that depth);
//! - a `Guard` only appears in `run` (only `run` can return `err(break)`);
//! - there are at most [`MAX_OUTPUTS`] outputs.
//!
//! Together with [`MAX_FUNCTION_BYTES`] (checked on the emitted bodies),
//! these bound the wrapper's linear memory (see `layout`) and code size.

use std::fmt;

use crate::program::{Cond, Dim, Program, Reg, Step};

/// Operands a `launch` import takes (`a0..a5`).
pub const MAX_OPERANDS: usize = 6;
/// Dims an `alloc` or `view` import takes (`d0..d7`).
pub const MAX_DIMS: usize = 8;
/// Terms a [`Dim::Affine`] may have.
pub const MAX_TERMS: usize = 8;
/// The deepest `If`/`Loop` nesting a program may have.
pub const MAX_NESTING: usize = 64;
/// The most registers a program may have (each is 4 bytes of guest memory).
pub const MAX_REGISTERS: u32 = 1 << 16;
/// The most outputs a program may return (each is 4 bytes of guest memory).
pub const MAX_OUTPUTS: usize = 1 << 16;
/// The largest code body the emitter produces for `init` or `run`, well under
/// the 7,654,321 bytes every Wasm engine accepts.
pub const MAX_FUNCTION_BYTES: usize = 4 << 20;

/// Which of the program's two step lists a step is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Init,
    Run,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Init => "init",
            Phase::Run => "run",
        })
    }
}

/// One problem found in a program. `at` names the step, e.g.
/// `run[2].then[0]`, or `outputs[1]`, or `program` for whole-program counts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "{at}: needs {needed} registers for globals + buffers + inputs but the program \
         declares {registers}; raise `registers` to at least {needed}"
    )]
    TooFewRegisters {
        at: String,
        registers: u32,
        needed: u64,
    },
    #[error(
        "{at}: declares {registers} registers, more than the limit of {limit}; \
         reuse temporaries to need fewer"
    )]
    TooManyRegisters {
        at: String,
        registers: u32,
        limit: u32,
    },
    #[error(
        "{at}: register {reg} is out of range (the program has {registers} registers); \
         raise `registers` or fix the register number"
    )]
    RegisterOutOfRange {
        at: String,
        reg: u32,
        registers: u32,
    },
    #[error(
        "{at}: register {reg} is an input, which `init` cannot use (inputs are set by \
         each `run`); move the step to `run`"
    )]
    InputInInit { at: String, reg: u32 },
    #[error(
        "{at}: launch of kernel {kernel} has {count} operands, more than the {max} the \
         `launch` import takes"
    )]
    TooManyOperands {
        at: String,
        kernel: u32,
        count: usize,
        max: usize,
    },
    #[error("{at}: has {count} dims, more than the {max} the host imports take")]
    TooManyDims {
        at: String,
        count: usize,
        max: usize,
    },
    #[error("{at}: an affine dim has {terms} terms (at most {MAX_TERMS}) and divisor {divisor} (at least 1)")]
    BadAffine {
        at: String,
        terms: usize,
        divisor: u32,
    },
    #[error("{at}: `If`/`Loop` nesting is deeper than {limit}; flatten the control flow")]
    NestingTooDeep { at: String, limit: usize },
    #[error(
        "{at}: guard for break {index} is in `init`, which cannot report a break; \
         move it to `run`"
    )]
    GuardInInit { at: String, index: u32 },
    #[error("{at}: {count} outputs, more than the limit of {limit}")]
    TooManyOutputs {
        at: String,
        count: usize,
        limit: usize,
    },
}

/// Checks every invariant listed in the module doc and returns all the
/// problems found, in program order.
pub fn verify(program: &Program) -> Result<(), Vec<VerifyError>> {
    let mut v = Verifier {
        program,
        path: Vec::new(),
        errors: Vec::new(),
    };
    v.counts();
    v.steps(Phase::Init, &program.init, 0);
    v.steps(Phase::Run, &program.run, 0);
    for (i, out) in program.outputs.iter().enumerate() {
        v.reg_at(*out, || format!("outputs[{i}]"));
    }
    if v.errors.is_empty() {
        Ok(())
    } else {
        Err(v.errors)
    }
}

/// One segment of a step's location.
#[derive(Clone, Copy)]
enum Seg {
    Phase(Phase),
    Then,
    Otherwise,
    Head,
    Body,
    Index(usize),
}

struct Verifier<'p> {
    program: &'p Program,
    path: Vec<Seg>,
    errors: Vec<VerifyError>,
}

impl Verifier<'_> {
    fn counts(&mut self) {
        let p = self.program;
        let needed = u64::from(p.globals) + u64::from(p.buffers) + u64::from(p.inputs);
        if u64::from(p.registers) < needed {
            self.errors.push(VerifyError::TooFewRegisters {
                at: "program".into(),
                registers: p.registers,
                needed,
            });
        }
        if p.registers > MAX_REGISTERS {
            self.errors.push(VerifyError::TooManyRegisters {
                at: "program".into(),
                registers: p.registers,
                limit: MAX_REGISTERS,
            });
        }
        if p.outputs.len() > MAX_OUTPUTS {
            self.errors.push(VerifyError::TooManyOutputs {
                at: "outputs".into(),
                count: p.outputs.len(),
                limit: MAX_OUTPUTS,
            });
        }
    }

    fn at(&self) -> String {
        let mut s = String::new();
        for seg in &self.path {
            match seg {
                Seg::Phase(p) => s.push_str(&p.to_string()),
                Seg::Then => s.push_str(".then"),
                Seg::Otherwise => s.push_str(".otherwise"),
                Seg::Head => s.push_str(".head"),
                Seg::Body => s.push_str(".body"),
                Seg::Index(i) => s.push_str(&format!("[{i}]")),
            }
        }
        s
    }

    /// Verifies `steps`, at If-nesting `depth` (0 for a phase's top level).
    fn steps(&mut self, phase: Phase, steps: &[Step], depth: usize) {
        if depth == 0 {
            self.path.push(Seg::Phase(phase));
        }
        for (i, step) in steps.iter().enumerate() {
            self.path.push(Seg::Index(i));
            self.step(phase, step, depth);
            self.path.pop();
        }
        if depth == 0 {
            self.path.pop();
        }
    }

    fn step(&mut self, phase: Phase, step: &Step, depth: usize) {
        match step {
            Step::Launch { kernel, args } => {
                if args.len() > MAX_OPERANDS {
                    self.errors.push(VerifyError::TooManyOperands {
                        at: self.at(),
                        kernel: *kernel,
                        count: args.len(),
                        max: MAX_OPERANDS,
                    });
                }
                for r in args {
                    self.use_reg(phase, *r);
                }
            }
            Step::Alloc { dst, dims, .. } => {
                self.dims(phase, dims);
                self.use_reg(phase, *dst);
            }
            Step::View { dst, src, dims } => {
                self.use_reg(phase, *src);
                self.dims(phase, dims);
                self.use_reg(phase, *dst);
            }
            Step::Release { reg } => self.use_reg(phase, *reg),
            Step::Move { dst, src } => {
                self.use_reg(phase, *src);
                self.use_reg(phase, *dst);
            }
            Step::If {
                cond,
                then,
                otherwise,
            } => {
                self.cond(phase, cond);
                if depth + 1 > MAX_NESTING {
                    self.errors.push(VerifyError::NestingTooDeep {
                        at: self.at(),
                        limit: MAX_NESTING,
                    });
                    return;
                }
                self.path.push(Seg::Then);
                self.steps(phase, then, depth + 1);
                self.path.pop();
                self.path.push(Seg::Otherwise);
                self.steps(phase, otherwise, depth + 1);
                self.path.pop();
            }
            Step::Loop { head, cond, body } => {
                if depth + 1 > MAX_NESTING {
                    self.errors.push(VerifyError::NestingTooDeep {
                        at: self.at(),
                        limit: MAX_NESTING,
                    });
                    return;
                }
                self.path.push(Seg::Head);
                self.steps(phase, head, depth + 1);
                self.path.pop();
                self.cond(phase, cond);
                self.path.push(Seg::Body);
                self.steps(phase, body, depth + 1);
                self.path.pop();
            }
            Step::Guard { index, cond } => {
                self.cond(phase, cond);
                if phase == Phase::Init {
                    self.errors.push(VerifyError::GuardInInit {
                        at: self.at(),
                        index: *index,
                    });
                }
            }
        }
    }

    fn cond(&mut self, phase: Phase, cond: &Cond) {
        self.use_reg(phase, cond.0);
    }

    fn dims(&mut self, phase: Phase, dims: &[Dim]) {
        if dims.len() > MAX_DIMS {
            self.errors.push(VerifyError::TooManyDims {
                at: self.at(),
                count: dims.len(),
                max: MAX_DIMS,
            });
        }
        for d in dims {
            match d {
                Dim::Const(_) => {}
                Dim::Of(r, _) => self.use_reg(phase, *r),
                Dim::Affine { terms, divisor, .. } => {
                    if terms.len() > MAX_TERMS || *divisor == 0 {
                        self.errors.push(VerifyError::BadAffine {
                            at: self.at(),
                            terms: terms.len(),
                            divisor: *divisor,
                        });
                    }
                    for t in terms {
                        self.use_reg(phase, t.reg);
                    }
                }
            }
        }
    }

    /// A register named by a step: in range, and not an input during `init`.
    fn use_reg(&mut self, phase: Phase, reg: Reg) {
        if !self.reg_at(reg, String::new) {
            return;
        }
        let p = self.program;
        let first_input = u64::from(p.globals) + u64::from(p.buffers);
        let r = u64::from(reg.0);
        if phase == Phase::Init && r >= first_input && r < first_input + u64::from(p.inputs) {
            self.errors.push(VerifyError::InputInInit {
                at: self.at(),
                reg: reg.0,
            });
        }
    }

    /// Checks `reg < registers`; `at` overrides the step path when non-empty.
    fn reg_at(&mut self, reg: Reg, at: impl FnOnce() -> String) -> bool {
        if reg.0 < self.program.registers {
            return true;
        }
        let at = match at() {
            s if s.is_empty() => self.at(),
            s => s,
        };
        self.errors.push(VerifyError::RegisterOutOfRange {
            at,
            reg: reg.0,
            registers: self.program.registers,
        });
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(init: Vec<Step>, run: Vec<Step>) -> Program {
        Program {
            globals: 1,
            buffers: 1,
            inputs: 1,
            registers: 5,
            init,
            run,
            outputs: vec![Reg(4)],
        }
    }

    #[test]
    fn accepts_a_valid_program() {
        let p = program(
            vec![Step::View {
                dst: Reg(3),
                src: Reg(1),
                dims: vec![Dim::Const(4)],
            }],
            vec![Step::Launch {
                kernel: 0,
                args: vec![Reg(2), Reg(3), Reg(4)],
            }],
        );
        assert_eq!(verify(&p), Ok(()));
    }

    #[test]
    fn reports_every_problem_with_its_location() {
        let mut p = program(
            vec![Step::Guard {
                index: 0,
                cond: Cond(Reg(2)),
            }],
            vec![Step::If {
                cond: Cond(Reg(0)),
                then: vec![],
                otherwise: vec![Step::Launch {
                    kernel: 3,
                    args: vec![Reg(9); 7],
                }],
            }],
        );
        p.outputs.push(Reg(5));
        let errors = verify(&p).unwrap_err();
        let at: Vec<_> = errors
            .iter()
            .map(|e| e.to_string().split(':').next().unwrap().to_owned())
            .collect();
        assert_eq!(
            at,
            [
                "init[0]",
                "init[0]",
                "run[0].otherwise[0]",
                "run[0].otherwise[0]",
                "run[0].otherwise[0]",
                "run[0].otherwise[0]",
                "run[0].otherwise[0]",
                "run[0].otherwise[0]",
                "run[0].otherwise[0]",
                "run[0].otherwise[0]",
                "outputs[1]",
            ]
        );
        assert!(matches!(errors[0], VerifyError::InputInInit { reg: 2, .. }));
        assert!(matches!(
            errors[1],
            VerifyError::GuardInInit { index: 0, .. }
        ));
        assert!(matches!(
            errors[2],
            VerifyError::TooManyOperands { count: 7, .. }
        ));
    }

    #[test]
    fn counts_are_checked_without_overflow() {
        let p = Program {
            globals: u32::MAX,
            buffers: u32::MAX,
            inputs: u32::MAX,
            registers: u32::MAX,
            init: vec![],
            run: vec![],
            outputs: vec![],
        };
        let errors = verify(&p).unwrap_err();
        assert!(matches!(
            errors[0],
            VerifyError::TooFewRegisters {
                needed: 12_884_901_885,
                ..
            }
        ));
        assert!(matches!(errors[1], VerifyError::TooManyRegisters { .. }));
    }

    #[test]
    fn deep_nesting_is_reported_not_recursed() {
        let mut steps = vec![];
        for _ in 0..10_000 {
            steps = vec![Step::If {
                cond: Cond(Reg(0)),
                then: steps,
                otherwise: vec![],
            }];
        }
        let p = program(vec![], steps);
        let errors = verify(&p).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(matches!(
            errors[0],
            VerifyError::NestingTooDeep {
                limit: MAX_NESTING,
                ..
            }
        ));
        // Dropping 10,000 nested `Vec`s recurses in `Drop`; unwind it by hand
        // so the test itself stays within the default test-thread stack.
        let mut p = p;
        let mut next = std::mem::take(&mut p.run);
        while let Some(Step::If { then, .. }) = next.pop() {
            next = then;
        }
    }
}
