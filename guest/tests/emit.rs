//! Runs emitted wrappers in wasmtime against a mock host and checks the
//! exact sequence of host calls and what `run` returns.

mod common;

use ampoule_guest::{
    emit, emit_core, verify, Cond, Dim, EmitError, Program, Reg, Step, Term, VerifyError,
    HOST_INTERFACE, MAX_REGISTERS,
};
use common::{Call, Mock, Wrapper, NONE};
use wasmtime::Result;

/// A program with 1 global (r0), 1 buffer (r1), 2 inputs (r2, r3) and
/// temporaries r4..r9.
fn program(init: Vec<Step>, run: Vec<Step>, outputs: Vec<Reg>) -> Program {
    Program {
        globals: 1,
        buffers: 1,
        inputs: 2,
        registers: 10,
        init,
        run,
        outputs,
    }
}

const G0: u32 = 10;
const B0: u32 = 20;
const X0: u32 = 30;
const X1: u32 = 31;

/// Emits, instantiates and inits `p` with globals `[G0]`, buffers `[B0]`.
fn start(p: &Program, mock: Mock) -> Result<Wrapper> {
    let component = emit(p)?;
    let mut w = Wrapper::with(&component, mock)?;
    w.init(&[G0], &[B0])?;
    Ok(w)
}

fn launch(kernel: u32, args: &[u32]) -> Call {
    let mut a = [NONE; 6];
    a[..args.len()].copy_from_slice(args);
    Call::Launch(kernel, a)
}

fn shape(dims: &[u32]) -> [u32; 8] {
    let mut d = [0; 8];
    d[..dims.len()].copy_from_slice(dims);
    d
}

#[test]
fn launches_pad_unused_operands() -> Result<()> {
    let args = |n: u32| (0..n).map(|i| Reg(i % 4)).collect::<Vec<_>>();
    let run = (0..=6)
        .map(|n| Step::Launch {
            kernel: n + 100,
            args: args(n),
        })
        .collect();
    let mut w = start(&program(vec![], run, vec![]), Mock::default())?;
    assert_eq!(w.take_calls(), []);
    assert_eq!(w.run(&[X0, X1])?, Ok(vec![]));
    let regs = [G0, B0, X0, X1];
    let expected: Vec<_> = (0..=6usize)
        .map(|n| {
            let a: Vec<_> = (0..n).map(|i| regs[i % 4]).collect();
            launch(100 + n as u32, &a)
        })
        .collect();
    assert_eq!(w.take_calls(), expected);
    Ok(())
}

#[test]
fn alloc_and_view_with_const_and_computed_dims() -> Result<()> {
    let init = vec![Step::View {
        dst: Reg(4),
        src: Reg(1),
        dims: vec![Dim::Const(2), Dim::Const(8)],
    }];
    let run = vec![
        Step::Alloc {
            dst: Reg(5),
            dtype: 1,
            dims: vec![Dim::Of(Reg(2), 0), Dim::Const(7), Dim::Of(Reg(4), 1)],
        },
        Step::Alloc {
            dst: Reg(6),
            dtype: 6,
            dims: vec![],
        },
        Step::View {
            dst: Reg(7),
            src: Reg(5),
            dims: (1..=8).map(Dim::Const).collect(),
        },
        Step::Launch {
            kernel: 0,
            args: vec![Reg(2), Reg(4), Reg(5)],
        },
        Step::Release { reg: Reg(7) },
    ];
    let p = program(init, run, vec![Reg(5), Reg(6), Reg(4)]);
    let mut w = start(&p, Mock::default())?;
    // init: the view of the buffer gets handle 1000 and stays in r4.
    assert_eq!(w.take_calls(), [Call::View(B0, 2, shape(&[2, 8]))]);
    assert_eq!(w.run(&[X0, X1])?, Ok(vec![1001, 1002, 1000]));
    assert_eq!(
        w.take_calls(),
        [
            Call::Dim(X0, 0),
            Call::Dim(1000, 1),
            Call::Alloc(1, 3, shape(&[X0 * 10, 7, 1000 * 10 + 1])),
            Call::Alloc(6, 0, shape(&[])),
            Call::View(1001, 8, [1, 2, 3, 4, 5, 6, 7, 8]),
            launch(0, &[X0, 1000, 1001]),
            Call::Release(1003),
        ]
    );
    // A second run gets fresh temporaries; r4 from init is kept.
    assert_eq!(w.run(&[X1, X0])?, Ok(vec![1004, 1005, 1000]));
    Ok(())
}

fn branch_program() -> Program {
    let run = vec![
        Step::If {
            cond: Cond(Reg(2)),
            then: vec![Step::Launch {
                kernel: 1,
                args: vec![Reg(3)],
            }],
            otherwise: vec![Step::Launch {
                kernel: 2,
                args: vec![Reg(3)],
            }],
        },
        Step::If {
            cond: Cond(Reg(3)),
            then: vec![Step::Move {
                dst: Reg(4),
                src: Reg(0),
            }],
            otherwise: vec![],
        },
        Step::Launch {
            kernel: 3,
            args: vec![],
        },
    ];
    program(vec![], run, vec![Reg(4)])
}

#[test]
fn if_takes_then_when_nonzero() -> Result<()> {
    let mut mock = Mock::default();
    mock.values.insert(X0, -5);
    mock.values.insert(X1, 1 << 40);
    let mut w = start(&branch_program(), mock)?;
    assert_eq!(w.run(&[X0, X1])?, Ok(vec![G0]));
    assert_eq!(
        w.take_calls(),
        [
            Call::ReadI64(X0, 0),
            launch(1, &[X1]),
            Call::ReadI64(X1, 0),
            launch(3, &[]),
        ]
    );
    Ok(())
}

#[test]
fn if_takes_otherwise_when_zero() -> Result<()> {
    let mut w = start(&branch_program(), Mock::default())?;
    // r4 was never written: it holds no handle (the host would refuse it).
    assert_eq!(w.run(&[X0, X1])?, Ok(vec![NONE]));
    assert_eq!(
        w.take_calls(),
        [
            Call::ReadI64(X0, 0),
            launch(2, &[X1]),
            Call::ReadI64(X1, 0),
            launch(3, &[]),
        ]
    );
    Ok(())
}

/// `r4 = x0; loop { head: launch 1; while r4 != 0: launch 2 (r4); r4 = x1 }`:
/// the condition register changes inside the body, so the loop runs until
/// the handle it reads holds zero.
fn loop_program() -> Program {
    let run = vec![
        Step::Move {
            dst: Reg(4),
            src: Reg(2),
        },
        Step::Loop {
            head: vec![Step::Launch {
                kernel: 1,
                args: vec![],
            }],
            cond: Cond(Reg(4)),
            body: vec![
                Step::Launch {
                    kernel: 2,
                    args: vec![Reg(4)],
                },
                Step::Move {
                    dst: Reg(4),
                    src: Reg(3),
                },
            ],
        },
    ];
    program(vec![], run, vec![Reg(4)])
}

#[test]
fn loop_runs_its_body_while_the_condition_holds() -> Result<()> {
    let mut mock = Mock::default();
    mock.values.insert(X0, 7);
    mock.values.insert(X1, 0);
    let mut w = start(&loop_program(), mock)?;
    assert_eq!(w.run(&[X0, X1])?, Ok(vec![X1]));
    assert_eq!(
        w.take_calls(),
        [
            launch(1, &[]),
            Call::ReadI64(X0, 0),
            launch(2, &[X0]),
            launch(1, &[]),
            Call::ReadI64(X1, 0),
        ]
    );
    // A false condition at the first test runs the head once and no body.
    assert_eq!(w.run(&[X1, X0])?, Ok(vec![X1]));
    assert_eq!(w.take_calls(), [launch(1, &[]), Call::ReadI64(X1, 0)]);
    Ok(())
}

#[test]
fn affine_dims_are_computed_from_host_dims() -> Result<()> {
    // The mock's dim(h, a) is h * 10 + a: dim(x0, 0) = 300, dim(x1, 1) = 311.
    let affine = Dim::Affine {
        terms: vec![
            Term {
                reg: Reg(2),
                axis: 0,
                coeff: 2,
            },
            Term {
                reg: Reg(3),
                axis: 1,
                coeff: -1,
            },
        ],
        constant: 3,
        divisor: 2,
    };
    let run = vec![Step::Alloc {
        dst: Reg(4),
        dtype: 1,
        dims: vec![affine, Dim::Const(5)],
    }];
    let mut w = start(&program(vec![], run, vec![Reg(4)]), Mock::default())?;
    assert_eq!(w.run(&[X0, X1])?, Ok(vec![1000]));
    assert_eq!(
        w.take_calls(),
        [
            Call::Dim(X0, 0),
            Call::Dim(X1, 1),
            Call::Alloc(1, 2, shape(&[(3 + 2 * 300 - 311) / 2, 5])),
        ]
    );
    Ok(())
}

fn guard_program() -> Program {
    let run = vec![
        Step::Guard {
            index: 7,
            cond: Cond(Reg(2)),
        },
        Step::Launch {
            kernel: 1,
            args: vec![Reg(2)],
        },
        Step::If {
            cond: Cond(Reg(0)),
            then: vec![Step::If {
                cond: Cond(Reg(0)),
                then: vec![Step::Guard {
                    index: 9,
                    cond: Cond(Reg(3)),
                }],
                otherwise: vec![],
            }],
            otherwise: vec![],
        },
        Step::Launch {
            kernel: 2,
            args: vec![Reg(3)],
        },
    ];
    program(vec![], run, vec![Reg(3), Reg(2)])
}

#[test]
fn guards_pass_and_fail_with_their_break_index() -> Result<()> {
    let mut mock = Mock::default();
    mock.values.insert(G0, 1);
    mock.values.insert(X0, 1);
    mock.values.insert(X1, 1);
    let mut w = start(&guard_program(), mock)?;
    assert_eq!(w.run(&[X0, X1])?, Ok(vec![X1, X0]));
    assert_eq!(
        w.take_calls(),
        [
            Call::ReadI64(X0, 0),
            launch(1, &[X0]),
            Call::ReadI64(G0, 0),
            Call::ReadI64(G0, 0),
            Call::ReadI64(X1, 0),
            launch(2, &[X1]),
        ]
    );

    // The first guard fails: nothing after it runs.
    w.store.data_mut().values.insert(X0, 0);
    assert_eq!(w.run(&[X0, X1])?, Err(7));
    assert_eq!(w.take_calls(), [Call::ReadI64(X0, 0)]);

    // The nested guard fails.
    w.store.data_mut().values.insert(X0, 1);
    w.store.data_mut().values.insert(X1, 0);
    assert_eq!(w.run(&[X0, X1])?, Err(9));
    assert_eq!(w.take_calls().len(), 5);

    // And an ok after an err writes the whole ok variant again.
    w.store.data_mut().values.insert(X1, 1);
    assert_eq!(w.run(&[X1, X0])?, Ok(vec![X0, X1]));
    Ok(())
}

#[test]
fn move_copies_handles_between_registers() -> Result<()> {
    let run = vec![
        Step::Move {
            dst: Reg(9),
            src: Reg(3),
        },
        Step::Move {
            dst: Reg(3),
            src: Reg(1),
        },
        Step::Launch {
            kernel: 4,
            args: vec![Reg(9), Reg(3)],
        },
    ];
    let mut w = start(&program(vec![], run, vec![Reg(9), Reg(3)]), Mock::default())?;
    assert_eq!(w.run(&[X0, X1])?, Ok(vec![X1, B0]));
    assert_eq!(w.take_calls(), [launch(4, &[X1, B0])]);
    Ok(())
}

#[test]
fn init_steps_run_once_at_init() -> Result<()> {
    let init = vec![
        Step::Alloc {
            dst: Reg(4),
            dtype: 1,
            dims: vec![Dim::Const(3)],
        },
        Step::Launch {
            kernel: 5,
            args: vec![Reg(0), Reg(1), Reg(4)],
        },
    ];
    let mut w = start(&program(init, vec![], vec![Reg(4)]), Mock::default())?;
    assert_eq!(
        w.take_calls(),
        [Call::Alloc(1, 1, shape(&[3])), launch(5, &[G0, B0, 1000])]
    );
    assert_eq!(w.run(&[X0, X1])?, Ok(vec![1000]));
    assert_eq!(w.run(&[X0, X1])?, Ok(vec![1000]));
    assert_eq!(w.take_calls(), []);
    Ok(())
}

#[test]
fn an_empty_program_returns_no_outputs() -> Result<()> {
    let p = Program {
        globals: 0,
        buffers: 0,
        inputs: 0,
        registers: 0,
        init: vec![],
        run: vec![],
        outputs: vec![],
    };
    let mut w = Wrapper::new(&emit(&p)?)?;
    w.init(&[], &[])?;
    assert_eq!(w.run(&[])?, Ok(vec![]));
    assert_eq!(w.take_calls(), []);
    Ok(())
}

#[test]
fn the_largest_register_file_works() -> Result<()> {
    let last = Reg(MAX_REGISTERS - 1);
    let p = Program {
        globals: 3,
        buffers: 0,
        inputs: 3,
        registers: MAX_REGISTERS,
        init: vec![],
        run: vec![Step::Move {
            dst: last,
            src: Reg(5),
        }],
        outputs: vec![last, Reg(0)],
    };
    let mut w = Wrapper::new(&emit(&p)?)?;
    w.init(&[1, 2, 3], &[])?;
    assert_eq!(w.run(&[4, 5, 6])?, Ok(vec![6, 1]));
    Ok(())
}

fn traps(result: Result<impl std::fmt::Debug>) {
    let err = result.expect_err("expected a trap");
    assert!(
        err.downcast_ref::<wasmtime::Trap>().is_some() || format!("{err:?}").contains("realloc"),
        "not a trap: {err:?}"
    );
}

#[test]
fn list_length_mismatches_trap() -> Result<()> {
    let component = emit(&program(vec![], vec![], vec![]))?;
    traps(Wrapper::new(&component)?.init(&[G0, G0], &[B0]));
    traps(Wrapper::new(&component)?.init(&[G0], &[]));
    traps(Wrapper::new(&component)?.init(&[], &[B0]));
    let mut w = Wrapper::new(&component)?;
    w.init(&[G0], &[B0])?;
    traps(w.run(&[X0]));
    let mut w = Wrapper::new(&component)?;
    w.init(&[G0], &[B0])?;
    traps(w.run(&[X0, X1, X1]));
    // Far longer than the heap: cabi_realloc refuses to hand out memory.
    let mut w = Wrapper::new(&component)?;
    traps(w.init(&[G0; 100_000], &[B0]));
    Ok(())
}

#[test]
fn init_must_come_first_and_once() -> Result<()> {
    let component = emit(&program(vec![], vec![], vec![]))?;
    traps(Wrapper::new(&component)?.run(&[X0, X1]));
    let mut w = Wrapper::new(&component)?;
    w.init(&[G0], &[B0])?;
    traps(w.init(&[G0], &[B0]));
    Ok(())
}

#[test]
fn many_runs_do_not_exhaust_the_heap() -> Result<()> {
    let mut w = start(&program(vec![], vec![], vec![Reg(2)]), Mock::default())?;
    for i in 0..1000 {
        assert_eq!(w.run(&[i, X1])?, Ok(vec![i]));
    }
    Ok(())
}

#[test]
fn output_is_deterministic() -> Result<()> {
    let p = guard_program();
    let a = emit(&p)?;
    let b = emit(&p.clone())?;
    assert_eq!(a, b);
    assert_ne!(a, emit(&branch_program())?);
    assert_eq!(emit_core(&p)?, emit_core(&p)?);
    Ok(())
}

#[test]
fn output_validates_and_imports_only_the_contract() -> Result<()> {
    for p in [guard_program(), branch_program()] {
        let core = emit_core(&p)?;
        wasmparser::Validator::new().validate_all(&core)?;
        let component = emit(&p)?;
        common::validate(&component)?;
        assert_eq!(common::component_imports(&component)?, [HOST_INTERFACE]);
    }
    Ok(())
}

#[test]
fn output_is_small() -> Result<()> {
    let component = emit(&guard_program())?;
    assert!(component.len() < 4096, "{} bytes", component.len());
    Ok(())
}

#[test]
fn invalid_programs_are_refused_with_every_problem() {
    let mut p = program(
        vec![Step::Launch {
            kernel: 0,
            args: vec![Reg(2)],
        }],
        vec![Step::Alloc {
            dst: Reg(10),
            dtype: 1,
            dims: vec![Dim::Const(1); 9],
        }],
        vec![Reg(11)],
    );
    p.init.push(Step::Guard {
        index: 0,
        cond: Cond(Reg(0)),
    });
    let err = emit(&p).unwrap_err();
    let EmitError::Invalid { problems } = &err else {
        panic!("{err}");
    };
    assert_eq!(
        problems,
        &[
            VerifyError::InputInInit {
                at: "init[0]".into(),
                reg: 2
            },
            VerifyError::GuardInInit {
                at: "init[1]".into(),
                index: 0
            },
            VerifyError::TooManyDims {
                at: "run[0]".into(),
                count: 9,
                max: 8
            },
            VerifyError::RegisterOutOfRange {
                at: "run[0]".into(),
                reg: 10,
                registers: 10
            },
            VerifyError::RegisterOutOfRange {
                at: "outputs[0]".into(),
                reg: 11,
                registers: 10
            },
        ]
    );
    let msg = err.to_string();
    assert!(msg.starts_with("verify: "), "{msg}");
    assert!(
        msg.contains("init[1]: guard for break 0 is in `init`"),
        "{msg}"
    );
    assert_eq!(verify(&p).unwrap_err(), *problems);
}

#[test]
fn too_few_registers_is_refused() {
    let mut p = program(vec![], vec![], vec![]);
    p.registers = 3;
    assert!(matches!(
        emit(&p),
        Err(EmitError::Invalid { problems }) if problems == [VerifyError::TooFewRegisters {
            at: "program".into(),
            registers: 3,
            needed: 4,
        }]
    ));
}

#[test]
fn a_body_too_large_is_refused() {
    let step = Step::Alloc {
        dst: Reg(9),
        dtype: 1,
        dims: vec![Dim::Of(Reg(9), 7); 8],
    };
    let p = program(vec![], vec![step; 60_000], vec![]);
    assert!(matches!(
        emit(&p),
        Err(EmitError::FunctionTooLarge {
            function: "run",
            ..
        })
    ));
}
