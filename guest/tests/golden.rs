//! Golden output: the core module emitted for a program that uses every
//! kind of step, printed as WAT, so a change in the emitted code shows up as
//! a reviewable diff. Regenerate with `AMPOULE_BLESS=1 cargo test -p
//! ampoule-guest --test golden`.

use std::path::Path;

use ampoule_guest::{emit_core, Cond, Dim, Program, Reg, Step};

fn every_step() -> Program {
    Program {
        globals: 1,
        buffers: 1,
        inputs: 1,
        registers: 6,
        init: vec![Step::View {
            dst: Reg(3),
            src: Reg(1),
            dims: vec![Dim::Const(4)],
        }],
        run: vec![
            Step::Guard {
                index: 0,
                cond: Cond(Reg(2)),
            },
            Step::Alloc {
                dst: Reg(4),
                dtype: 1,
                dims: vec![Dim::Of(Reg(2), 0), Dim::Const(3)],
            },
            Step::If {
                cond: Cond(Reg(0)),
                then: vec![Step::Launch {
                    kernel: 0,
                    args: vec![Reg(2), Reg(3), Reg(4)],
                }],
                otherwise: vec![Step::Move {
                    dst: Reg(5),
                    src: Reg(4),
                }],
            },
            Step::Release { reg: Reg(4) },
        ],
        outputs: vec![Reg(5)],
    }
}

#[test]
fn every_step_matches_the_golden_wat() {
    let core = emit_core(&every_step()).unwrap();
    let wat = wasmprinter::print_bytes(&core).unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/every_step.wat");
    if std::env::var_os("AMPOULE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &wat).unwrap();
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with AMPOULE_BLESS=1", path.display()));
    assert_eq!(
        wat, golden,
        "emitted code changed; review, then AMPOULE_BLESS=1"
    );
}
