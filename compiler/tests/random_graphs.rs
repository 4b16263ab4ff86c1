//! Property tests over random DAGs of elementwise, layout and view ops,
//! built through the tracing API:
//!
//! - the memory plan never lets two values that are alive at once share a
//!   buffer, never shares an output's buffer, and sizes every buffer for the
//!   values in it; the lowered program verifies and makes no `alloc` in
//!   `run`;
//! - compiled and run through the host on its reference kernels, every random
//!   graph gives bit for bit what the IR interpreter gives for the traced
//!   graph.

use std::collections::BTreeMap;

use ampoule_compiler::interp::evaluate;
use ampoule_compiler::lower::lower;
use ampoule_compiler::passes::optimize;
use ampoule_compiler::passes::plan::{plan_memory, Liveness};
use ampoule_compiler::{function, Compiler, Example, FunctionDef, Traced};
use ampoule_guest::Step;
use ampoule_host::{Host, HostConfig};
use ampoule_kernels::{DType, Impl, Registry, Tensor, TensorMeta};
use proptest::prelude::*;

const SHAPES: [&[usize]; 5] = [&[2, 3], &[3, 2], &[6], &[4], &[2, 2]];
const UNARY: [&str; 7] = ["neg", "relu", "tanh", "sigmoid", "sin", "cos", "abs"];
const BINARY: [&str; 5] = ["add", "sub", "mul", "max", "min"];

#[derive(Clone, Debug)]
struct Recipe {
    inputs: Vec<usize>,
    steps: Vec<(u8, usize, usize)>,
    outputs: Vec<usize>,
}

fn recipe() -> impl Strategy<Value = Recipe> {
    (
        prop::collection::vec(0..SHAPES.len(), 1..3),
        prop::collection::vec((0u8..5, any::<usize>(), any::<usize>()), 1..24),
        prop::collection::vec(any::<usize>(), 1..4),
    )
        .prop_map(|(inputs, steps, outputs)| Recipe {
            inputs,
            steps,
            outputs,
        })
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

fn def(r: &Recipe) -> FunctionDef {
    let r = r.clone();
    function("random", move |cx, x| {
        let mut vals: Vec<Traced> = x.to_vec();
        for &(kind, a, b) in &r.steps {
            let va = vals[a % vals.len()];
            let shape = cx.shape(va).to_vec();
            let v = match kind {
                0 => cx.kernel(
                    "unary@1",
                    ampoule_compiler::ir::attrs([(
                        "op",
                        ampoule_kernels::AttrValue::Str(UNARY[b % UNARY.len()].into()),
                    )]),
                    &[va],
                )?[0],
                1 => {
                    let same: Vec<Traced> = vals
                        .iter()
                        .copied()
                        .filter(|v| cx.shape(*v) == shape.as_slice())
                        .collect();
                    let vb = same[b % same.len()];
                    let op = BINARY[(a ^ b) % BINARY.len()];
                    cx.kernel(
                        "binary@1",
                        ampoule_compiler::ir::attrs([(
                            "op",
                            ampoule_kernels::AttrValue::Str(op.into()),
                        )]),
                        &[va, vb],
                    )?[0]
                }
                2 => {
                    let targets: Vec<&[usize]> = SHAPES
                        .iter()
                        .copied()
                        .filter(|s| numel(s) == numel(&shape))
                        .collect();
                    let to: Vec<i64> = targets[b % targets.len()]
                        .iter()
                        .map(|&d| d as i64)
                        .collect();
                    cx.reshape(va, &to)?
                }
                3 if shape.len() == 2 => cx.transpose(va, &[1, 0])?,
                3 => cx.softmax(va, -1)?,
                _ => cx.copy(va)?,
            };
            vals.push(v);
        }
        Ok(r.outputs.iter().map(|&o| vals[o % vals.len()]).collect())
    })
}

fn examples(r: &Recipe) -> Vec<Example> {
    r.inputs
        .iter()
        .map(|&s| Example::meta(TensorMeta::new(DType::F32, SHAPES[s])))
        .collect()
}

fn inputs(r: &Recipe, seed: u64) -> Vec<Tensor> {
    r.inputs
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let n = numel(SHAPES[s]);
            let v: Vec<f32> = (0..n)
                .map(|k| ((k as u64 * 7 + i as u64 * 13 + seed) % 11) as f32 * 0.37 - 1.8)
                .collect();
            Tensor::from_vec(SHAPES[s], v).unwrap()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn memory_plan_never_aliases_live_values(r in recipe()) {
        let reg = Registry::standard();
        let trace = def(&r).trace(&examples(&r), &reg, &BTreeMap::new()).unwrap();
        let g = optimize(trace.graph, &reg).unwrap();
        let plan = plan_memory(&g);
        let live = Liveness::of(&g);
        let placed: Vec<usize> = (0..g.values.len()).filter(|&v| plan.buffer_of[v].is_some()).collect();
        for &a in &placed {
            let b_a = plan.buffer_of[a].unwrap() as usize;
            let (ma, mb) = (&g.values[a], &plan.buffers[b_a]);
            prop_assert_eq!(ma.dtype, mb.dtype);
            prop_assert_eq!(ma.byte_len(), mb.byte_len());
            prop_assert_eq!(live.root[a].index(), a, "kernel outputs are their own roots");
            for &b in &placed {
                if a < b && plan.buffer_of[b] == plan.buffer_of[a] {
                    let (va, vb) = (ampoule_compiler::ir::ValueId(a as u32), ampoule_compiler::ir::ValueId(b as u32));
                    prop_assert!(!live.overlap(va, vb), "v{} and v{} share buffer {} while both alive\n{}", a, b, b_a, g);
                    prop_assert!(live.last_use[a] != usize::MAX && live.last_use[b] != usize::MAX, "an output's buffer is shared\n{}", g);
                }
            }
        }
        // No launch writes a buffer it reads.
        for node in &g.nodes {
            if let ampoule_compiler::ir::Op::Kernel { .. } = node.op {
                for o in &node.outputs {
                    for i in &node.inputs {
                        let ri = live.root[i.index()].index();
                        prop_assert!(plan.buffer_of[ri].is_none() || plan.buffer_of[ri] != plan.buffer_of[o.index()]);
                    }
                }
            }
        }
        let l = lower(&g, &plan).unwrap();
        ampoule_guest::verify(&l.program).unwrap();
        let allocs = l.program.init.iter().chain(&l.program.run).filter(|s| matches!(s, Step::Alloc { .. })).count();
        prop_assert_eq!(allocs, 0, "a static entry allocates nothing");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn random_graphs_run_like_the_interpreter(r in recipe()) {
        let host = Host::new(HostConfig { cache_dir: None, kernels: Impl::Reference, ..HostConfig::default() }).unwrap();
        let d = def(&r);
        let reg = Registry::standard();
        let trace = d.trace(&examples(&r), &reg, &BTreeMap::new()).unwrap();
        let mut c = Compiler::builder(host).function(d).create().unwrap();
        for seed in 0..2 {
            let xs = inputs(&r, seed);
            let want = evaluate(&trace.graph, &reg, &xs, &BTreeMap::new()).unwrap();
            let got = c.call("random", &xs).unwrap();
            prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                prop_assert_eq!(g.meta(), w.meta());
                prop_assert_eq!(g.bytes(), w.bytes(), "\n{}", trace.graph);
            }
        }
        prop_assert_eq!(c.compile_count(), 1);
    }
}
