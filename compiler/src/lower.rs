//! Lowering: an optimized, verified graph plus its memory plan become a
//! wrapper [`Program`], a kernel table, a globals table and buffer
//! declarations.
//!
//! Registers follow the program's layout (`ampoule_guest::Program`): the
//! entry's globals, then the planned buffers, then the function's inputs,
//! then temporaries. Placement of each value:
//!
//! - an input is its input register; a global is its globals-table register
//!   (the table lists the globals the graph reads, in order of first read);
//! - a kernel output is its planned buffer's register, or, when the buffer
//!   was planned for another shape of the same byte size, a temporary holding
//!   a `View` of the buffer made once in `init`;
//! - a reshape is a temporary holding a `View` of its input: made in `init`
//!   when the input's storage is a buffer or a global (the handle stays valid
//!   for the instance's life), in `run` when it is an input (input handles
//!   are new on every run).
//!
//! Launches never exceed the ABI's six operands: builders split what would
//! (`Graph::concat` chains concats of more than five inputs), and lowering
//! refuses any launch that still does.
//!
//! Control flow:
//!
//! - an `If` becomes an `If` step; each branch is lowered as a region and
//!   ends by moving its (materialized) results into the node's output
//!   registers;
//! - a `While` becomes a `Loop` step: its carried values live in buffers of
//!   their own, filled by a `copy@1` of the initial values; the head runs the
//!   `cond` region, the body runs the `body` region and copies its results
//!   into the carried buffers (never aliasing what the body reads);
//! - a region's buffers are planned like the graph's but allocated once per
//!   instance by `Alloc` steps in `init`, so a loop allocates nothing per
//!   trip; the views a region makes per execution are released at its end.
//!
//! Symbolic dims ([`lower_dynamic`], with the entry's
//! [`ShapeEnv`]): a dim is `Dim::Of` or `Dim::Affine` over the inputs' dims,
//! computed by the wrapper. Values of dynamic shape get no planned buffer:
//! they are `Alloc`ed in `run` right before the launch that writes them, and
//! after the last use of its storage (views included) an allocation serves
//! the next value of the same dtype and shape expressions, so a chain of
//! same-shaped ops ping-pongs between two allocations as a static entry's
//! planned buffers do. Outputs are never reused.
//!
//! `run` is the kernel launches in node order, with the input views placed
//! right before their first use. So a static entry's `run` makes no `alloc`
//! call. The launches of the weight-only prefix
//! ([`crate::passes::hoist`]) are in `init` instead: they run once per
//! instance, into buffers the memory plan keeps for them. Kernel-table rows are deduplicated by (kernel, attributes).
//! Constants must have become globals before lowering
//! (`passes::constants_to_globals`).

use ampoule_guest::{Cond, Dim, Program, Reg, Step, Term};
use ampoule_host::manifest::{BufferDecl, KernelUse};
use ampoule_kernels::{Attrs, TensorMeta, MAX_OPERANDS};

use crate::dynamic::ShapeEnv;
use crate::ir::ValueId;
use crate::ir::{Graph, Op};
use crate::passes::hoist::init_prefix;
use crate::passes::plan::{plan_memory, Liveness, MemoryPlan};

/// What lowering produces for one entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Lowered {
    pub program: Program,
    /// The kernel table: `Launch { kernel: k, .. }` runs `kernels[k]`.
    pub kernels: Vec<KernelUse>,
    /// The globals table: wrapper global `i` is graph global `globals[i]`.
    pub globals: Vec<u32>,
    /// The planned buffers, in register order.
    pub buffers: Vec<BufferDecl>,
}

/// Why lowering failed. Every variant is a graph lowering cannot express.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LowerError {
    #[error("node {node}: constants must become globals before lowering (run `passes::constants_to_globals`)")]
    Constant { node: usize },
    #[error("node {node}: value {value} was given no buffer by the memory plan")]
    Unplanned { node: usize, value: String },
    #[error(
        "node {node}: `{kernel}` has {operands} operands; a launch carries at most {MAX_OPERANDS}"
    )]
    TooManyOperands {
        node: usize,
        kernel: String,
        operands: usize,
    },
    #[error("dim {dim} of {meta} does not fit the wrapper ABI's 32-bit dims")]
    DimTooLarge { dim: usize, meta: TensorMeta },
    #[error("node {node} reads a value no earlier node placed")]
    Unplaced { node: usize },
    #[error("the program needs more than 2^32 registers or entries")]
    TooLarge,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Available from `init` on: globals, buffers and their views.
    Init,
    /// Only during a run: inputs and their views.
    Run,
}

fn dims(meta: &TensorMeta) -> Result<Vec<Dim>, LowerError> {
    meta.shape
        .iter()
        .map(|&d| {
            u32::try_from(d)
                .map(Dim::Const)
                .map_err(|_| LowerError::DimTooLarge {
                    dim: d,
                    meta: meta.clone(),
                })
        })
        .collect()
}

fn count(n: usize) -> Result<u32, LowerError> {
    u32::try_from(n).map_err(|_| LowerError::TooLarge)
}

/// Lowers a verified graph without constants, with its memory plan.
pub fn lower(graph: &Graph, plan: &MemoryPlan) -> Result<Lowered, LowerError> {
    lower_dynamic(graph, plan, None)
}

/// [`lower`] for an entry with symbolic dims: `env` gives the shapes the
/// wrapper derives from the inputs' dims, and values of dynamic shape
/// (which `plan` must leave out) are allocated per run and reused after
/// their last use.
pub fn lower_dynamic(
    graph: &Graph,
    plan: &MemoryPlan,
    env: Option<&ShapeEnv>,
) -> Result<Lowered, LowerError> {
    // The globals table: globals read, in order of first read.
    let mut globals: Vec<u32> = Vec::new();
    for node in &graph.nodes {
        if let Op::Global(g) = node.op {
            if !globals.contains(&g) {
                globals.push(g);
            }
        }
    }
    let ng = count(globals.len())?;
    let nb = count(plan.buffers.len())?;
    let ni = count(graph.inputs.len())?;
    let next = ng
        .checked_add(nb)
        .and_then(|n| n.checked_add(ni))
        .ok_or(LowerError::TooLarge)?;
    let symbols = env
        .map(|e| {
            e.symbols
                .iter()
                .map(|s| {
                    let (i, a) = s.dims.first().copied().ok_or(LowerError::TooLarge)?;
                    Ok((Reg(ng + nb + i), a))
                })
                .collect::<Result<Vec<_>, LowerError>>()
        })
        .transpose()?
        .unwrap_or_default();
    let mut l = Lowerer {
        next,
        init: Vec::new(),
        kernels: Vec::new(),
        globals,
        symbols,
    };
    let inputs = (0..ni)
        .map(|i| (Reg(ng + nb + i), Phase::Run))
        .collect::<Vec<_>>();
    let buffers = (0..nb).map(|b| Reg(ng + b)).collect::<Vec<_>>();
    let mut run = Vec::new();
    // Root-level views made in `run` are freed with the run's slots.
    let mut transient = Vec::new();
    let outputs = l.nodes(
        graph,
        plan,
        env,
        init_prefix(graph),
        &buffers,
        &inputs,
        &mut run,
        &mut transient,
    )?;
    let buffers = plan
        .buffers
        .iter()
        .map(|m| BufferDecl {
            dtype: m.dtype,
            shape: m.shape.iter().map(|&d| d as u64).collect(),
        })
        .collect();
    Ok(Lowered {
        program: Program {
            globals: ng,
            buffers: nb,
            inputs: ni,
            registers: l.next,
            init: l.init,
            run,
            outputs,
        },
        kernels: l.kernels,
        globals: l.globals,
        buffers,
    })
}

/// Lowering state shared by the outermost graph and its regions.
struct Lowerer {
    /// The next free temporary register.
    next: u32,
    /// `init` steps: views of stable storage, and the buffers of regions.
    init: Vec<Step>,
    kernels: Vec<KernelUse>,
    /// The entry's globals table (graph global indices).
    globals: Vec<u32>,
    /// Where each symbol of a dynamic entry is read: an input register and
    /// axis.
    symbols: Vec<(Reg, u32)>,
}

impl Lowerer {
    fn temp(&mut self) -> Result<Reg, LowerError> {
        let r = Reg(self.next);
        self.next = self.next.checked_add(1).ok_or(LowerError::TooLarge)?;
        Ok(r)
    }

    /// A buffer of `meta` of a region, allocated once per instance in `init`.
    fn region_buffer(&mut self, meta: &TensorMeta) -> Result<Reg, LowerError> {
        let dst = self.temp()?;
        self.init.push(Step::Alloc {
            dst,
            dtype: meta.dtype.code(),
            dims: dims(meta)?,
        });
        Ok(dst)
    }

    /// The wrapper dims of `v`: constants, or for a dynamic entry the
    /// symbolic sizes computed from the inputs' dims.
    fn dims_of(
        &self,
        graph: &Graph,
        env: Option<&ShapeEnv>,
        v: ValueId,
    ) -> Result<Vec<Dim>, LowerError> {
        let meta = graph.meta(v);
        let mut out = dims(meta)?;
        let Some(env) = env else { return Ok(out) };
        for (a, d) in out.iter_mut().enumerate() {
            let Some(e) = env.dim(v, a) else { continue };
            let term = |&(k, coeff): &(usize, i64)| {
                let &(reg, axis) = self.symbols.get(k).ok_or(LowerError::TooLarge)?;
                Ok::<_, LowerError>(Term { reg, axis, coeff })
            };
            *d = match (&e.terms[..], e.constant, e.divisor) {
                ([(k, 1)], 0, 1) => {
                    let t = term(&(*k, 1))?;
                    Dim::Of(t.reg, t.axis)
                }
                _ => Dim::Affine {
                    terms: e.terms.iter().map(term).collect::<Result<_, _>>()?,
                    constant: e.constant,
                    divisor: u32::try_from(e.divisor).map_err(|_| LowerError::TooLarge)?,
                },
            };
        }
        Ok(out)
    }

    fn kernel(&mut self, kernel: &str, attrs: &Attrs) -> Result<u32, LowerError> {
        kernel_row(&mut self.kernels, kernel, attrs)
    }

    /// Lowers the nodes of `graph` into `run` and returns its output
    /// registers; the launches of the first `in_init` nodes (the weight-only
    /// prefix) go into `init` instead. `buffers` holds the register of each
    /// planned buffer of `plan`; `inputs` where each graph input is. Views
    /// made in `run` are pushed on `transient`.
    #[allow(clippy::too_many_arguments)]
    fn nodes(
        &mut self,
        graph: &Graph,
        plan: &MemoryPlan,
        env: Option<&ShapeEnv>,
        in_init: usize,
        buffers: &[Reg],
        inputs: &[(Reg, Phase)],
        run: &mut Vec<Step>,
        transient: &mut Vec<Reg>,
    ) -> Result<Vec<Reg>, LowerError> {
        let mut place: Vec<Option<(Reg, Phase)>> = vec![None; graph.values.len()];
        let dynamic = |v: ValueId| env.is_some_and(|e| e.is_dynamic(v));
        // Per-run allocations of dynamic values. After the last use of its
        // storage (views included) an allocation is free for a later value
        // of the same dtype and the same shape expressions (outputs are
        // never freed); all are released when the run returns.
        let live = env.map(|_| Liveness::of(graph));
        let mut allocated: Vec<(ValueId, Reg, u32, Vec<Dim>)> = Vec::new();
        let mut free: Vec<(Reg, u32, Vec<Dim>)> = Vec::new();
        for (n, node) in graph.nodes.iter().enumerate() {
            let unplaced = || LowerError::Unplaced { node: n };
            let ins = node
                .inputs
                .iter()
                .map(|v| place.get(v.index()).copied().flatten().ok_or_else(unplaced))
                .collect::<Result<Vec<_>, _>>()?;
            let out = node.outputs.first().copied();
            match &node.op {
                Op::Input(i) => {
                    if let Some(o) = out {
                        place[o.index()] = Some(*inputs.get(*i as usize).ok_or_else(unplaced)?);
                    }
                }
                Op::Global(g) => {
                    let slot = self
                        .globals
                        .iter()
                        .position(|x| x == g)
                        .ok_or_else(unplaced)?;
                    if let Some(o) = out {
                        place[o.index()] = Some((Reg(count(slot)?), Phase::Init));
                    }
                }
                Op::Constant(_) => return Err(LowerError::Constant { node: n }),
                Op::Reshape => {
                    let (Some(o), Some(&(src, phase))) = (out, ins.first()) else {
                        continue;
                    };
                    let dst = self.temp()?;
                    let step = Step::View {
                        dst,
                        src,
                        dims: self.dims_of(graph, env, o)?,
                    };
                    let phase = if dynamic(o) { Phase::Run } else { phase };
                    match phase {
                        Phase::Init => self.init.push(step),
                        Phase::Run => {
                            run.push(step);
                            transient.push(dst);
                        }
                    }
                    place[o.index()] = Some((dst, phase));
                }
                Op::Kernel { kernel, attrs } => {
                    let mut args: Vec<Reg> = ins.iter().map(|&(r, _)| r).collect();
                    for &o in &node.outputs {
                        if dynamic(o) {
                            let dtype = graph.meta(o).dtype.code();
                            let dims = self.dims_of(graph, env, o)?;
                            let reuse = free.iter().position(|(_, t, d)| *t == dtype && *d == dims);
                            let dst = match reuse {
                                Some(i) => free.remove(i).0,
                                None => {
                                    let dst = self.temp()?;
                                    run.push(Step::Alloc {
                                        dst,
                                        dtype,
                                        dims: dims.clone(),
                                    });
                                    dst
                                }
                            };
                            place[o.index()] = Some((dst, Phase::Run));
                            allocated.push((o, dst, dtype, dims));
                            args.push(dst);
                            continue;
                        }
                        let b = plan
                            .buffer_of
                            .get(o.index())
                            .copied()
                            .flatten()
                            .ok_or_else(|| LowerError::Unplanned {
                                node: n,
                                value: o.to_string(),
                            })?;
                        let buffer =
                            *buffers
                                .get(b as usize)
                                .ok_or_else(|| LowerError::Unplanned {
                                    node: n,
                                    value: o.to_string(),
                                })?;
                        let meta = graph.meta(o);
                        let reg = if plan.buffers.get(b as usize) == Some(meta) {
                            buffer
                        } else {
                            let dst = self.temp()?;
                            self.init.push(Step::View {
                                dst,
                                src: buffer,
                                dims: dims(meta)?,
                            });
                            dst
                        };
                        place[o.index()] = Some((reg, Phase::Init));
                        args.push(reg);
                    }
                    if args.len() > MAX_OPERANDS {
                        return Err(LowerError::TooManyOperands {
                            node: n,
                            kernel: kernel.clone(),
                            operands: args.len(),
                        });
                    }
                    let k = self.kernel(kernel, attrs)?;
                    let launch = Step::Launch { kernel: k, args };
                    if n < in_init {
                        self.init.push(launch);
                    } else {
                        run.push(launch);
                    }
                }
                Op::If { then, otherwise } => {
                    let (&(pred, _), args) = ins.split_first().ok_or_else(unplaced)?;
                    let outs = node
                        .outputs
                        .iter()
                        .map(|_| self.temp())
                        .collect::<Result<Vec<_>, _>>()?;
                    let mut branches = Vec::with_capacity(2);
                    for region in [then, otherwise] {
                        let mut steps = Vec::new();
                        let results = self.region(region, args, &mut steps)?;
                        for (&dst, src) in outs.iter().zip(results) {
                            steps.push(Step::Move { dst, src });
                        }
                        branches.push(steps);
                    }
                    let otherwise = branches.pop().unwrap_or_default();
                    let then = branches.pop().unwrap_or_default();
                    run.push(Step::If {
                        cond: Cond(pred),
                        then,
                        otherwise,
                    });
                    for (o, &r) in node.outputs.iter().zip(&outs) {
                        place[o.index()] = Some((r, Phase::Run));
                    }
                }
                Op::Guard { index } => {
                    let &(cond, _) = ins.first().ok_or_else(unplaced)?;
                    run.push(Step::Guard {
                        index: *index,
                        cond: Cond(cond),
                    });
                }
                Op::While { cond, body } => {
                    let copy = self.kernel("copy@1", &Attrs::new())?;
                    let mut carried = Vec::with_capacity(node.outputs.len());
                    for (o, &(init, _)) in node.outputs.iter().zip(&ins) {
                        let c = self.region_buffer(graph.meta(*o))?;
                        run.push(Step::Launch {
                            kernel: copy,
                            args: vec![init, c],
                        });
                        carried.push(c);
                    }
                    let mut args: Vec<(Reg, Phase)> =
                        carried.iter().map(|&c| (c, Phase::Init)).collect();
                    args.extend(ins.get(carried.len()..).unwrap_or_default());
                    let mut head = Vec::new();
                    let test = *self
                        .region(cond, &args, &mut head)?
                        .first()
                        .ok_or_else(unplaced)?;
                    let mut looped = Vec::new();
                    let next = self.region(body, &args, &mut looped)?;
                    for (&c, r) in carried.iter().zip(next) {
                        looped.push(Step::Launch {
                            kernel: copy,
                            args: vec![r, c],
                        });
                    }
                    run.push(Step::Loop {
                        head,
                        cond: Cond(test),
                        body: looped,
                    });
                    for (o, &c) in node.outputs.iter().zip(&carried) {
                        place[o.index()] = Some((c, Phase::Init));
                    }
                }
            }
            if let Some(live) = &live {
                let (done, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut allocated)
                    .into_iter()
                    .partition(|(v, ..)| live.last_use.get(v.index()) == Some(&n));
                allocated = kept;
                free.extend(done.into_iter().map(|(_, reg, t, d)| (reg, t, d)));
            }
        }
        graph
            .outputs
            .iter()
            .map(|o| {
                place
                    .get(o.value.index())
                    .copied()
                    .flatten()
                    .map(|(r, _)| r)
                    .ok_or(LowerError::Unplaced {
                        node: graph.nodes.len(),
                    })
            })
            .collect()
    }

    /// Lowers a region whose inputs are at `args` into `steps` and returns
    /// its result registers. The region's buffers are allocated in `init`;
    /// the views it makes per execution are released at its end (a loop
    /// would otherwise hold one slot per trip). Results are never such views:
    /// region outputs are materialized kernel outputs.
    fn region(
        &mut self,
        region: &Graph,
        args: &[(Reg, Phase)],
        steps: &mut Vec<Step>,
    ) -> Result<Vec<Reg>, LowerError> {
        let plan = plan_memory(region);
        let buffers = plan
            .buffers
            .iter()
            .map(|m| self.region_buffer(m))
            .collect::<Result<Vec<_>, _>>()?;
        let mut transient = Vec::new();
        let results = self.nodes(
            region,
            &plan,
            None,
            0,
            &buffers,
            args,
            steps,
            &mut transient,
        )?;
        steps.extend(transient.into_iter().map(|reg| Step::Release { reg }));
        Ok(results)
    }
}

fn kernel_row(table: &mut Vec<KernelUse>, kernel: &str, attrs: &Attrs) -> Result<u32, LowerError> {
    let i = match table
        .iter()
        .position(|k| k.kernel == kernel && &k.attrs == attrs)
    {
        Some(i) => i,
        None => {
            table.push(KernelUse {
                kernel: kernel.to_string(),
                attrs: attrs.clone(),
            });
            table.len() - 1
        }
    };
    count(i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{attrs, GlobalDef, GlobalSource};
    use crate::passes::{optimize, plan::plan_memory};
    use ampoule_kernels::{AttrValue, DType, Registry, Tensor};

    fn f32m(shape: &[usize]) -> TensorMeta {
        TensorMeta::new(DType::F32, shape)
    }

    /// `y = relu(reshape(x @ w, [6]))`, `z = reshape(w, [6])` (a view of a
    /// global, so copied), the global read twice.
    #[test]
    fn a_small_graph_lowers_to_the_expected_steps() {
        let reg = Registry::standard();
        let mut g = Graph::new();
        g.add_input("x", f32m(&[2, 3]));
        let w = g.add_global(GlobalDef {
            name: "w".into(),
            meta: f32m(&[3, 3]),
            source: GlobalSource::Embedded(Tensor::zeros(DType::F32, &[3, 3]).unwrap()),
        });
        let x = g.input(0).unwrap();
        let xr = g.reshape(x, &[6]).unwrap();
        let xr = g.reshape(xr, &[2, 3]).unwrap();
        let wv = g.global(w).unwrap();
        let mm = g.kernel(&reg, "matmul@1", Attrs::new(), &[xr, wv]).unwrap()[0];
        let flat = g.reshape(mm, &[6]).unwrap();
        let relu = attrs([("op", AttrValue::Str("relu".into()))]);
        let y = g.kernel(&reg, "unary@1", relu.clone(), &[flat]).unwrap()[0];
        let y2 = g.kernel(&reg, "unary@1", relu, &[y]).unwrap()[0];
        let wflat = g.reshape(wv, &[9]).unwrap();
        g.add_output("y", y2);
        g.add_output("z", wflat);
        let g = optimize(g, &reg).unwrap();
        let plan = plan_memory(&g);
        let l = lower(&g, &plan).unwrap();

        assert_eq!(l.globals, [0]);
        assert_eq!(
            l.kernels
                .iter()
                .map(|k| k.kernel.as_str())
                .collect::<Vec<_>>(),
            ["matmul@1", "unary@1", "copy@1"],
            "the two relus share a row"
        );
        // Buffers: mm [2,3]; y [6] (reuses nothing: mm is live through its
        // view until y's launch); y2 and the copy are outputs.
        assert_eq!(
            l.buffers
                .iter()
                .map(|b| b.shape.clone())
                .collect::<Vec<_>>(),
            [vec![2, 3], vec![6], vec![6], vec![9]]
        );
        let p = &l.program;
        assert_eq!((p.globals, p.buffers, p.inputs), (1, 4, 1));
        let (g0, b0, b1, b2, b3, x0) = (Reg(0), Reg(1), Reg(2), Reg(3), Reg(4), Reg(5));
        let c = |d: u32| Dim::Const(d);
        // The view of the global is weight-only work: first, in `init`.
        assert_eq!(
            p.init,
            [
                Step::View {
                    dst: Reg(6),
                    src: g0,
                    dims: vec![c(9)]
                },
                Step::View {
                    dst: Reg(9),
                    src: b0,
                    dims: vec![c(6)]
                },
            ]
        );
        assert_eq!(
            p.run,
            [
                Step::View {
                    dst: Reg(7),
                    src: x0,
                    dims: vec![c(6)]
                },
                Step::View {
                    dst: Reg(8),
                    src: Reg(7),
                    dims: vec![c(2), c(3)]
                },
                Step::Launch {
                    kernel: 0,
                    args: vec![Reg(8), g0, b0]
                },
                Step::Launch {
                    kernel: 1,
                    args: vec![Reg(9), b1]
                },
                Step::Launch {
                    kernel: 1,
                    args: vec![b1, b2]
                },
                Step::Launch {
                    kernel: 2,
                    args: vec![Reg(6), b3]
                },
            ]
        );
        assert_eq!(p.outputs, [b2, b3]);
        assert_eq!(p.registers, 10);
        assert!(!p.run.iter().any(|s| matches!(s, Step::Alloc { .. })));
        ampoule_guest::verify(p).unwrap();
    }

    /// `y = x * (cast(wq) * scale)`: the dequantization reads only globals,
    /// so its two launches run in `init`, into buffers of their own; the
    /// cast's buffer, dead after `init`, serves the run.
    #[test]
    fn weight_only_launches_run_in_init() {
        let reg = Registry::standard();
        let mut g = Graph::new();
        g.add_input("x", f32m(&[4]));
        let x = g.input(0).unwrap();
        let global = |g: &mut Graph, name: &str, t: Tensor| {
            let meta = t.meta().clone();
            let i = g.add_global(GlobalDef {
                name: name.into(),
                meta,
                source: GlobalSource::Embedded(t),
            });
            g.global(i).unwrap()
        };
        let wq = global(&mut g, "wq", Tensor::zeros(DType::I32, &[4]).unwrap());
        let scale = global(&mut g, "scale", Tensor::zeros(DType::F32, &[4]).unwrap());
        let op = |o: &str| attrs([("op", AttrValue::Str(o.into()))]);
        let to = attrs([("to", AttrValue::Str("f32".into()))]);
        let a = g.kernel(&reg, "unary@1", op("exp"), &[x]).unwrap()[0];
        let wf = g.kernel(&reg, "cast@1", to, &[wq]).unwrap()[0];
        let w = g.kernel(&reg, "binary@1", op("mul"), &[wf, scale]).unwrap()[0];
        let y = g.kernel(&reg, "binary@1", op("mul"), &[a, w]).unwrap()[0];
        g.add_output("y", y);
        let g = optimize(g, &reg).unwrap();
        let plan = plan_memory(&g);
        let l = lower(&g, &plan).unwrap();
        let p = &l.program;
        let launches = |steps: &[Step]| {
            steps
                .iter()
                .filter_map(|s| match s {
                    Step::Launch { kernel, args } => {
                        Some((l.kernels[*kernel as usize].kernel.clone(), args.clone()))
                    }
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let (init, run) = (launches(&p.init), launches(&p.run));
        assert_eq!(
            init.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["cast@1", "binary@1"]
        );
        assert_eq!(
            run.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["unary@1", "binary@1"]
        );
        // The dequantized weight's buffer is read by the run and written by
        // nothing else; the cast's buffer is reused by `exp`.
        let w_buf = init[1].1[2];
        assert!(run.iter().all(|(_, args)| args.last() != Some(&w_buf)));
        assert_eq!(run[1].1[1], w_buf);
        assert_eq!(run[0].1[1], init[0].1[1], "exp writes the cast's buffer");
        ampoule_guest::verify(p).unwrap();
    }

    #[test]
    fn a_reused_buffer_of_another_shape_is_viewed_in_init() {
        let reg = Registry::standard();
        let mut g = Graph::new();
        g.add_input("x", f32m(&[2, 3]));
        let x = g.input(0).unwrap();
        let op = |o: &str| attrs([("op", AttrValue::Str(o.into()))]);
        let a = g.kernel(&reg, "unary@1", op("exp"), &[x]).unwrap()[0];
        let b = g.kernel(&reg, "unary@1", op("neg"), &[a]).unwrap()[0];
        let t = g
            .kernel(
                &reg,
                "transpose@1",
                attrs([("perm", AttrValue::Ints(vec![1, 0]))]),
                &[b],
            )
            .unwrap()[0];
        let y = g.kernel(&reg, "unary@1", op("tanh"), &[t]).unwrap()[0];
        g.add_output("y", y);
        let plan = plan_memory(&g);
        assert_eq!(
            plan.buffer_of[t.index()],
            plan.buffer_of[a.index()],
            "[3,2] reuses the [2,3] buffer"
        );
        let l = lower(&g, &plan).unwrap();
        assert_eq!(
            l.program.init,
            [Step::View {
                dst: Reg(4),
                src: Reg(0),
                dims: vec![Dim::Const(3), Dim::Const(2)]
            }]
        );
    }

    #[test]
    fn constants_are_refused() {
        let mut g = Graph::new();
        let c = g.constant(Tensor::zeros(DType::F32, &[1]).unwrap());
        g.add_output("c", c);
        assert_eq!(
            lower(&g, &plan_memory(&g)),
            Err(LowerError::Constant { node: 0 })
        );
    }
}
