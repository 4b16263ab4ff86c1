//! ONNX `LSTM`, `GRU` and `RNN` (opset 7 and 14 semantics), unrolled over
//! the static sequence length into `linear`, elementwise, `slice` and
//! `concat` ops.
//!
//! - The input projection `X W^T + bias` of every time step is one `linear`
//!   over `[seq * batch, input]`; each step then adds `H W_R^T` and applies
//!   the gates. Known weights are split per direction (and per gate group
//!   for GRU) at compile time and become weights named `W[d]`, `R[d]`, ..
//! - Directions `forward`, `reverse` and `bidirectional`; `layout` 0 and 1
//!   (opset 14); optional `B`, `initial_h`, `initial_c` and LSTM peepholes
//!   `P`; `clip`; GRU `linear_before_reset`. Activations may be `Sigmoid`,
//!   `Tanh` or `Relu`, in any slot; others are an error naming them.
//! - `sequence_lens`: absent or known full, nothing extra; otherwise (known
//!   shorter, or only known at run time) each step is masked with
//!   `t < len[b]`: the state stops changing past a sequence's end (so `Y_h`
//!   and `Y_c` hold its last step) and `Y` is 0 there, in both directions.
//! - The unrolled steps are bounded by [`MAX_STEPS`].

use ampoule_kernels::{AttrValue, Impl, Tensor};

use super::{e, filled, known, scalar, Builder, Val, R};
use crate::ir::attrs;
use crate::onnx::proto::attribute_type;

/// The most time steps (sequence length times directions) unrolled.
pub const MAX_STEPS: usize = 4096;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cell {
    Lstm,
    Gru,
    Rnn,
}

impl Cell {
    fn gates(self) -> usize {
        match self {
            Cell::Lstm => 4,
            Cell::Gru => 3,
            Cell::Rnn => 1,
        }
    }

    fn default_activations(self) -> &'static [&'static str] {
        match self {
            Cell::Lstm => &["Sigmoid", "Tanh", "Tanh"],
            Cell::Gru => &["Sigmoid", "Tanh"],
            Cell::Rnn => &["Tanh"],
        }
    }
}

impl Builder<'_, '_> {
    /// `v[.., start..start + len, ..]` along `axis`: on the host for a known
    /// value (any size; it is a part of a value the model already holds),
    /// named `tag` when `v` is a named weight; traced otherwise.
    fn part(&mut self, v: &Val, axis: usize, start: usize, len: usize, tag: &str) -> R<Val> {
        let Val::Known { t, weight } = v else {
            return self.narrow(v, axis, start, len);
        };
        let rank = t.shape().len();
        let mut st = vec![0i64; rank];
        let mut en = vec![i64::MAX; rank];
        st[axis] = start as i64;
        en[axis] = start.saturating_add(len) as i64;
        let a = attrs([
            ("starts", AttrValue::Ints(st)),
            ("ends", AttrValue::Ints(en)),
            ("steps", AttrValue::Ints(vec![1; rank])),
        ]);
        let bound = self.registry.bind("slice@1", &a).map_err(e)?;
        let metas = bound.check(&[t.meta()]).map_err(e)?;
        let meta = metas.first().ok_or("slice gave no output")?;
        let mut outs = vec![Tensor::zeros(meta.dtype, &meta.shape).map_err(e)?];
        bound.run(Impl::Reference, &[t], &mut outs).map_err(e)?;
        let t = outs.pop().ok_or("slice gave no output")?;
        Ok(Val::Known {
            t,
            weight: weight.as_ref().map(|w| format!("{w}{tag}")),
        })
    }

    /// Drops a leading axis of size 1, on the host for a known value.
    fn drop_lead(&mut self, v: Val) -> R<Val> {
        let dims = self.shape(&v)[1..].to_vec();
        match v {
            Val::Known { t, weight } => Ok(Val::Known {
                t: t.reshaped(&dims)
                    .ok_or_else(|| format!("cannot reshape {} to {dims:?}", t.meta()))?,
                weight,
            }),
            v => self.reshape(&v, &dims),
        }
    }

    /// Direction `d` of a `[num_directions, ..]` input, as a value of rank
    /// one less.
    fn direction(&mut self, v: &Val, d: usize) -> R<Val> {
        let p = self.part(v, 0, d, 1, &format!("[{d}]"))?;
        self.drop_lead(p)
    }

    fn linear_t(&mut self, x: &Val, w: &Val) -> R<Val> {
        let la = attrs([("trans_w", AttrValue::Int(1)), ("bias", AttrValue::Int(0))]);
        self.kernel("linear@1", la, &[x.clone(), w.clone()])
    }

    fn activate(&mut self, f: &str, x: &Val, clip: Option<f64>) -> R<Val> {
        let x = match clip {
            Some(c) => {
                let (lo, hi) = (self.scalar_like(-c, x), self.scalar_like(c, x));
                let y = self.binary("max", x, &lo)?;
                self.binary("min", &y, &hi)?
            }
            None => x.clone(),
        };
        let k = match f {
            "Sigmoid" => "sigmoid",
            "Tanh" => "tanh",
            "Relu" => "relu",
            other => {
                return Err(format!(
                    "activation `{other}` is not supported (Sigmoid, Tanh or Relu)"
                ))
            }
        };
        self.unary(k, &x)
    }

    pub(super) fn recurrent(&mut self) -> R<Vec<Val>> {
        let n = self.node;
        let cell = match n.op_type.as_str() {
            "LSTM" => Cell::Lstm,
            "GRU" => Cell::Gru,
            _ => Cell::Rnn,
        };
        let g = cell.gates();
        let (x, w, r) = (self.input(0)?, self.input(1)?, self.input(2)?);
        let b = self.opt_input(3)?;
        let seq_lens = self.opt_input(4)?;
        let h0 = self.opt_input(5)?;
        let (c0, peep) = if cell == Cell::Lstm {
            (self.opt_input(6)?, self.opt_input(7)?)
        } else {
            (None, None)
        };
        let layout = if n.opset >= 14 {
            self.int("layout", 0)?
        } else {
            0
        };
        if layout != 0 && layout != 1 {
            return Err(format!("layout {layout} is not 0 or 1"));
        }
        let direction = self.string("direction", "forward")?;
        let reverse: Vec<bool> = match direction.as_str() {
            "forward" => vec![false],
            "reverse" => vec![true],
            "bidirectional" => vec![false, true],
            other => {
                return Err(format!(
                    "direction `{other}` is not forward, reverse or bidirectional"
                ))
            }
        };
        let nd = reverse.len();
        if cell == Cell::Lstm && self.int("input_forget", 0)? != 0 {
            return Err("input_forget = 1 is not supported".into());
        }
        let lbr = cell == Cell::Gru && self.int("linear_before_reset", 0)? != 0;
        let clip = self
            .attr("clip", attribute_type::FLOAT)?
            .map(|a| f64::from(a.f));
        if clip.is_some_and(|c| c.is_nan() || c < 0.0) {
            return Err(format!("clip {clip:?} must be non-negative"));
        }
        let acts: Vec<String> = match self.attr("activations", attribute_type::STRINGS)? {
            Some(a) => a
                .strings
                .iter()
                .map(|s| {
                    String::from_utf8(s.clone())
                        .map_err(|_| "an activation is not UTF-8".to_string())
                })
                .collect::<R<Vec<_>>>()?,
            None => cell
                .default_activations()
                .iter()
                .cycle()
                .take(cell.default_activations().len() * nd)
                .map(|s| s.to_string())
                .collect(),
        };
        let per = cell.default_activations().len();
        if acts.len() != per * nd {
            return Err(format!(
                "activations {acts:?} must list {per} per direction ({} in all)",
                per * nd
            ));
        }
        // Shapes.
        let xs = self.shape(&x);
        if xs.len() != 3 {
            return Err(format!("X must have rank 3, got {xs:?}"));
        }
        let x = if layout == 1 {
            self.transpose(&x, &[1, 0, 2])?
        } else {
            x
        };
        let (seq, batch, input) = {
            let s = self.shape(&x);
            (s[0], s[1], s[2])
        };
        let ws = self.shape(&w);
        let rs = self.shape(&r);
        let hidden = match rs.as_slice() {
            [d, gh, h] if *d == nd && Some(*gh) == h.checked_mul(g) => *h,
            _ => {
                return Err(format!(
                    "R must be [{nd}, {g} * hidden_size, hidden_size], got {rs:?}"
                ))
            }
        };
        if let Some(a) = self.attr("hidden_size", attribute_type::INT)? {
            if a.i != hidden as i64 {
                return Err(format!(
                    "hidden_size {} disagrees with R's shape {rs:?}",
                    a.i
                ));
            }
        }
        let gh = g * hidden;
        if ws != [nd, gh, input] {
            return Err(format!(
                "W must be [{nd}, {gh}, {input}] (directions, {g} * hidden_size, input_size), got {ws:?}"
            ));
        }
        if let Some(b) = &b {
            if self.shape(b) != [nd, 2 * gh] {
                return Err(format!(
                    "B must be [{nd}, {}], got {:?}",
                    2 * gh,
                    self.shape(b)
                ));
            }
        }
        if let Some(p) = &peep {
            if self.shape(p) != [nd, 3 * hidden] {
                return Err(format!(
                    "P must be [{nd}, {}], got {:?}",
                    3 * hidden,
                    self.shape(p)
                ));
            }
        }
        // A mask per step is needed unless every sequence is known full.
        let lens = match seq_lens {
            None => None,
            Some(sl) => {
                if self.shape(&sl) != [batch] {
                    return Err(format!(
                        "sequence_lens must be [{batch}] (one length per batch entry), got {:?}",
                        self.shape(&sl)
                    ));
                }
                match &sl {
                    Val::Known { .. } => {
                        let v = self.known_ints(&sl, "sequence_lens")?;
                        if v.iter().any(|&l| l < 0 || l > seq as i64) {
                            return Err(format!("sequence_lens {v:?} must lie in 0..={seq}"));
                        }
                        if v.iter().all(|&l| l == seq as i64) {
                            None
                        } else {
                            Some(self.reshape(&sl, &[batch, 1])?)
                        }
                    }
                    Val::Traced(_) => {
                        let l = self.cast(&sl, ampoule_kernels::DType::I64)?;
                        Some(self.reshape(&l, &[batch, 1])?)
                    }
                }
            }
        };
        let steps = seq.checked_mul(nd).ok_or("too many steps")?;
        if steps > MAX_STEPS {
            return Err(format!(
                "{seq} time steps in {nd} directions exceed the {MAX_STEPS} steps that are unrolled"
            ));
        }
        // Initial states as [nd, batch, hidden].
        let state_dims = [nd, batch, hidden];
        let fit_state = |b: &mut Self, v: Option<Val>, what: &str| -> R<Option<Val>> {
            let Some(v) = v else { return Ok(None) };
            let v = if layout == 1 {
                b.transpose(&v, &[1, 0, 2])?
            } else {
                v
            };
            if b.shape(&v) != state_dims {
                return Err(format!(
                    "{what} must be {:?} (in layout {layout}), got {:?}",
                    if layout == 1 {
                        [batch, nd, hidden]
                    } else {
                        state_dims
                    },
                    b.shape(&v)
                ));
            }
            Ok(Some(v))
        };
        let h0 = fit_state(self, h0, "initial_h")?;
        let c0 = fit_state(self, c0, "initial_c")?;
        let dtype = self.dtype(&x);
        if !dtype.is_float() {
            return Err(format!("X must be a float tensor, not {dtype}"));
        }
        let zeros = known(filled(&scalar(0.0, dtype), &[batch, hidden])?);
        let x2 = self.reshape(&x, &[seq * batch, input])?;

        let mut ys = Vec::with_capacity(nd);
        let mut hs = Vec::with_capacity(nd);
        let mut cs = Vec::with_capacity(nd);
        for (d, &rev) in reverse.iter().enumerate() {
            let f = &acts[d * per..(d + 1) * per];
            let wd = self.direction(&w, d)?;
            let rd = self.direction(&r, d)?;
            // Input projection of every step, with the biases that add
            // straight onto it.
            let mut xw = self.linear_t(&x2, &wd)?;
            let mut rbh = None;
            if let Some(b) = &b {
                let bd = self.direction(b, d)?;
                let wb = self.part(&bd, 0, 0, gh, ".w")?;
                let rb = self.part(&bd, 0, gh, gh, ".r")?;
                let bias = if lbr {
                    // The recurrent h-gate bias goes inside the reset.
                    rbh = Some(self.part(&rb, 0, 2 * hidden, hidden, ".h")?);
                    let zr = self.part(&rb, 0, 0, 2 * hidden, ".zr")?;
                    let zero = known(filled(&scalar(0.0, dtype), &[hidden])?);
                    let rb = self.concat(&[zr, zero], 0)?;
                    self.binary("add", &wb, &rb)?
                } else {
                    self.binary("add", &wb, &rb)?
                };
                xw = self.binary("add", &xw, &bias)?;
            }
            let (pi, po, pf) = match &peep {
                Some(p) => {
                    let pd = self.direction(p, d)?;
                    (
                        Some(self.part(&pd, 0, 0, hidden, ".i")?),
                        Some(self.part(&pd, 0, hidden, hidden, ".o")?),
                        Some(self.part(&pd, 0, 2 * hidden, hidden, ".f")?),
                    )
                }
                None => (None, None, None),
            };
            let (r_zr, r_h) = if cell == Cell::Gru {
                (
                    Some(self.part(&rd, 0, 0, 2 * hidden, ".zr")?),
                    Some(self.part(&rd, 0, 2 * hidden, hidden, ".h")?),
                )
            } else {
                (None, None)
            };
            let mut h = match &h0 {
                Some(v) => self.direction(v, d)?,
                None => zeros.clone(),
            };
            let mut c = match &c0 {
                Some(v) => self.direction(v, d)?,
                None => zeros.clone(),
            };
            let mut outs: Vec<Option<Val>> = vec![None; seq];
            let order: Vec<usize> = if rev {
                (0..seq).rev().collect()
            } else {
                (0..seq).collect()
            };
            for t in order {
                let xt = self.narrow(&xw, 0, t * batch, batch)?;
                let (h_prev, c_prev) = (h.clone(), c.clone());
                match cell {
                    Cell::Lstm => {
                        let hr = self.linear_t(&h, &rd)?;
                        let gates = self.binary("add", &xt, &hr)?;
                        let mut i = self.narrow(&gates, 1, 0, hidden)?;
                        let mut o = self.narrow(&gates, 1, hidden, hidden)?;
                        let mut fg = self.narrow(&gates, 1, 2 * hidden, hidden)?;
                        let cc = self.narrow(&gates, 1, 3 * hidden, hidden)?;
                        if let Some(pi) = &pi {
                            let v = self.binary("mul", pi, &c)?;
                            i = self.binary("add", &i, &v)?;
                        }
                        if let Some(pf) = &pf {
                            let v = self.binary("mul", pf, &c)?;
                            fg = self.binary("add", &fg, &v)?;
                        }
                        let i = self.activate(&f[0], &i, clip)?;
                        let fg = self.activate(&f[0], &fg, clip)?;
                        let cc = self.activate(&f[1], &cc, clip)?;
                        let keep = self.binary("mul", &fg, &c)?;
                        let add = self.binary("mul", &i, &cc)?;
                        c = self.binary("add", &keep, &add)?;
                        if let Some(po) = &po {
                            let v = self.binary("mul", po, &c)?;
                            o = self.binary("add", &o, &v)?;
                        }
                        let o = self.activate(&f[0], &o, clip)?;
                        let hc = self.activate(&f[2], &c, None)?;
                        h = self.binary("mul", &o, &hc)?;
                    }
                    Cell::Gru => {
                        let (Some(r_zr), Some(r_h)) = (&r_zr, &r_h) else {
                            return Err("GRU weights were not split".into());
                        };
                        let hr = self.linear_t(&h, r_zr)?;
                        let xzr = self.narrow(&xt, 1, 0, 2 * hidden)?;
                        let zr = self.binary("add", &xzr, &hr)?;
                        let z = self.narrow(&zr, 1, 0, hidden)?;
                        let rg = self.narrow(&zr, 1, hidden, hidden)?;
                        let z = self.activate(&f[0], &z, clip)?;
                        let rg = self.activate(&f[0], &rg, clip)?;
                        let xh = self.narrow(&xt, 1, 2 * hidden, hidden)?;
                        let hh = if lbr {
                            let mut lin = self.linear_t(&h, r_h)?;
                            if let Some(rbh) = &rbh {
                                lin = self.binary("add", &lin, rbh)?;
                            }
                            let v = self.binary("mul", &rg, &lin)?;
                            self.binary("add", &xh, &v)?
                        } else {
                            let rh = self.binary("mul", &rg, &h)?;
                            let v = self.linear_t(&rh, r_h)?;
                            self.binary("add", &xh, &v)?
                        };
                        let hh = self.activate(&f[1], &hh, clip)?;
                        // (1 - z) * hh + z * h = hh + z * (h - hh)
                        let diff = self.binary("sub", &h, &hh)?;
                        let zd = self.binary("mul", &z, &diff)?;
                        h = self.binary("add", &hh, &zd)?;
                    }
                    Cell::Rnn => {
                        let hr = self.linear_t(&h, &rd)?;
                        let pre = self.binary("add", &xt, &hr)?;
                        h = self.activate(&f[0], &pre, clip)?;
                    }
                }
                if let Some(lens) = &lens {
                    let tv = known(Tensor::scalar(t as i64));
                    let live = self.compare("gt", lens, &tv)?;
                    let zero = self.scalar_like(0.0, &h);
                    outs[t] = Some(self.where_(&live, &h, &zero)?);
                    h = self.where_(&live, &h, &h_prev)?;
                    if cell == Cell::Lstm {
                        c = self.where_(&live, &c, &c_prev)?;
                    }
                } else {
                    outs[t] = Some(h.clone());
                }
            }
            let want_y = n.outputs.first().is_some_and(|o| !o.is_empty());
            if want_y {
                let mut rows = Vec::with_capacity(seq);
                for v in outs.into_iter().flatten() {
                    rows.push(self.reshape(&v, &[1, 1, batch, hidden])?);
                }
                ys.push(if rows.is_empty() {
                    known(filled(&scalar(0.0, dtype), &[0, 1, batch, hidden])?)
                } else {
                    self.concat(&rows, 0)?
                });
            }
            hs.push(self.reshape(&h, &[1, batch, hidden])?);
            cs.push(self.reshape(&c, &[1, batch, hidden])?);
        }
        let mut results = Vec::with_capacity(3);
        if ys.is_empty() {
            results.push(known(Tensor::scalar(0.0f32)));
        } else {
            let y = self.concat(&ys, 1)?;
            results.push(if layout == 1 {
                self.transpose(&y, &[2, 0, 1, 3])?
            } else {
                y
            });
        }
        for states in [hs, cs] {
            let s = self.concat(&states, 0)?;
            results.push(if layout == 1 {
                self.transpose(&s, &[1, 0, 2])?
            } else {
                s
            });
        }
        if cell != Cell::Lstm {
            results.truncate(2);
        }
        if n.outputs.len() > results.len() {
            return Err(format!(
                "{} has {} outputs, not {}",
                n.op_type,
                results.len(),
                n.outputs.len()
            ));
        }
        results.truncate(n.outputs.len());
        Ok(results)
    }
}
