//! Dynamic dims: one entry for a range of sizes.
//!
//! A dim marked dynamic ([`crate::FunctionDef::dynamic`], `ampoule compile
//! --dynamic`, or chosen by automatic dynamic after a miss) becomes a
//! *symbol*. The compiler keeps a shape environment ([`ShapeEnv`]): for every
//! value of the optimized graph and every axis, either a static size or a
//! [`SymExpr`], `(constant + Σ coeff·S_k) / divisor`, over the symbols. The
//! wrapper evaluates these expressions at run time from the inputs' dims
//! (`Dim::Affine`), so kernels stay shape-generic and one entry serves every
//! size its guards admit.
//!
//! How the environment is derived: the body is traced (and optimized) at the
//! example sizes, then again with each symbol at two and three times its
//! example size, and once with all symbols doubled. Every probe must record
//! the same program (same ops, attributes, constants and globals: a kernel
//! attribute that holds a size, such as a slice bound, makes a dim that
//! cannot be dynamic, and the error names it). Each dim is fitted as an
//! affine function of each symbol, checked for linearity on the three
//! points, for additivity on the joint probe, and once more at a size that
//! is not a multiple of the example. This is exact for the shape functions
//! of our kernels (sums, products with constants, the floor divisions of
//! strided windows on the sizes the guards admit).
//!
//! The constraints become guards ([`ShapeEnv::guards`]):
//! - **ranges**: `DimRange` on the symbol's defining dim; sizes 0 and 1 are
//!   never symbolic (the 0/1 specialization rule: an example of size 0 or 1
//!   compiles a static dim), and the minimum is raised so every derived dim
//!   stays at least 1;
//! - **equalities**: when tracing fails with one dim changed alone (an add of
//!   two inputs whose dims must agree), the dim is unified with the other
//!   input dims of the same size whose change makes the trace succeed; they
//!   become one symbol and get `DimEq` guards;
//! - **divisibility**: a derived size with a divisor `q` needs every symbol
//!   in it congruent to its example modulo `q` (`DimModulo`).

use std::collections::BTreeMap;

use ampoule_host::{Guard, ScalarValue};
use ampoule_kernels::{Registry, Tensor};

use crate::ir::{same_op, Graph, Op, ValueId};
use crate::passes::optimize;
use crate::trace::{BreakSource, Example, FunctionDef};

/// The largest size a symbol admits by default (the wrapper ABI's dims are
/// 32-bit, and derived sizes are computed in 64-bit arithmetic).
pub const MAX_SIZE: u64 = i32::MAX as u64;

/// A dim to compile as a symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DimSpec {
    pub input: u32,
    pub axis: u32,
    pub min: u64,
    pub max: u64,
    /// Why it is dynamic, for `inspect` (`marked dynamic`, `automatic: ...`).
    pub why: String,
}

/// `(constant + Σ coeff·S_k) / divisor` over symbols `k`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymExpr {
    pub terms: Vec<(usize, i64)>,
    pub constant: i64,
    pub divisor: i64,
}

impl SymExpr {
    /// The value at symbol sizes `s`, if the division is exact.
    pub fn eval(&self, s: &[u64]) -> Option<i64> {
        let mut n = i128::from(self.constant);
        for &(k, c) in &self.terms {
            n += i128::from(c) * i128::from(*s.get(k)?);
        }
        let d = i128::from(self.divisor);
        (d != 0 && n % d == 0)
            .then(|| n / d)
            .and_then(|v| i64::try_from(v).ok())
    }
}

/// One symbol: the input dims that are it, and what sizes it admits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// `(input, axis)`; the first defines it, the others equal it.
    pub dims: Vec<(u32, u32)>,
    pub example: u64,
    pub min: u64,
    pub max: u64,
    /// Sizes must be `example % modulus` modulo `modulus`.
    pub modulus: u64,
    pub why: String,
}

/// The shape environment of an entry (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShapeEnv {
    pub symbols: Vec<Symbol>,
    /// Per value of the optimized graph, per axis: `None` if static.
    pub dims: Vec<Vec<Option<SymExpr>>>,
}

impl ShapeEnv {
    /// Whether some dim of `v` is symbolic.
    pub fn is_dynamic(&self, v: ValueId) -> bool {
        self.dims
            .get(v.index())
            .is_some_and(|d| d.iter().any(Option::is_some))
    }

    /// The symbolic dim `axis` of `v`, if it is one.
    pub fn dim(&self, v: ValueId, axis: usize) -> Option<&SymExpr> {
        self.dims.get(v.index())?.get(axis)?.as_ref()
    }

    /// Replaces the static `Dim` guards of symbolic dims by the symbols'
    /// constraints.
    pub fn guards(&self, guards: Vec<Guard>) -> Vec<Guard> {
        let mut out = Vec::with_capacity(guards.len());
        for g in guards {
            let Guard::Dim { input, axis, .. } = g else {
                out.push(g);
                continue;
            };
            let Some(sym) = self
                .symbols
                .iter()
                .find(|s| s.dims.contains(&(input, axis)))
            else {
                out.push(g);
                continue;
            };
            let (di, da) = sym.dims[0];
            if (di, da) == (input, axis) {
                out.push(Guard::DimRange {
                    input,
                    axis,
                    min: sym.min,
                    max: sym.max,
                });
                if sym.modulus > 1 {
                    out.push(Guard::DimModulo {
                        input,
                        axis,
                        modulus: sym.modulus,
                        remainder: sym.example % sym.modulus,
                    });
                }
            } else {
                out.push(Guard::DimEq {
                    input,
                    axis,
                    other: di,
                    other_axis: da,
                });
            }
        }
        out
    }
}

/// Why dims could not be made dynamic. The message names the dim and the
/// reason; compile the dim static instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{dim} cannot be dynamic: {reason}")]
pub struct DynamicError {
    pub dim: String,
    pub reason: String,
}

/// What the probes trace with.
pub struct Probe<'a> {
    pub def: &'a FunctionDef,
    pub examples: &'a [Example],
    pub registry: &'a Registry,
    pub bindings: &'a BTreeMap<String, Tensor>,
    /// The break values the example trace read (probes replay them).
    pub replay: &'a [ScalarValue],
}

impl Probe<'_> {
    fn name(&self, (i, a): (u32, u32)) -> String {
        let input = self
            .def
            .input_names()
            .and_then(|n| n.get(i as usize).cloned())
            .unwrap_or_else(|| format!("x{i}"));
        format!("{input}.shape[{a}]")
    }

    /// Traces and optimizes at the example sizes with `sizes` changed.
    fn at(&self, sizes: &[((u32, u32), u64)]) -> Result<Graph, String> {
        let mut ex = self.examples.to_vec();
        for &((i, a), s) in sizes {
            let d = ex
                .get_mut(i as usize)
                .and_then(|e| e.meta.shape.get_mut(a as usize))
                .ok_or_else(|| format!("input {i} has no axis {a}"))?;
            *d = usize::try_from(s).map_err(|_| format!("size {s} does not fit"))?;
        }
        let source = BreakSource {
            data: None,
            replay: self.replay,
        };
        let trace = self
            .def
            .trace_with(&ex, self.registry, self.bindings, source)
            .map_err(|e| e.to_string())?;
        optimize(trace.graph, self.registry).map_err(|e| e.to_string())
    }
}

fn size_of(examples: &[Example], (i, a): (u32, u32)) -> Option<u64> {
    let e = examples.get(i as usize)?;
    if e.value.is_some() {
        return None;
    }
    e.meta.shape.get(a as usize).map(|&d| d as u64)
}

/// Derives the shape environment of `base` (the optimized example graph)
/// for `specs`. `Ok(None)` when no spec names a dim of size 2 or more.
pub fn analyze(
    probe: &Probe<'_>,
    specs: &[DimSpec],
    base: &Graph,
) -> Result<Option<ShapeEnv>, DynamicError> {
    if base.nodes.iter().any(|n| !n.op.regions().is_empty()) {
        if let Some(s) = specs.first() {
            return Err(DynamicError {
                dim: probe.name((s.input, s.axis)),
                reason: "entries with dynamic dims cannot hold `cond` or `while_loop` yet; compile this function with static shapes".into(),
            });
        }
    }
    let mut symbols: Vec<Symbol> = Vec::new();
    for s in specs {
        let dim = (s.input, s.axis);
        let err = |reason: String| DynamicError {
            dim: probe.name(dim),
            reason,
        };
        let e = size_of(probe.examples, dim)
            .ok_or_else(|| err("the input has no such axis (or is a scalar)".into()))?;
        if e < 2 || symbols.iter().any(|x| x.dims.contains(&dim)) {
            continue; // 0/1 specialization, or already a symbol
        }
        if s.min > s.max || !(s.min..=s.max).contains(&e) {
            return Err(err(format!(
                "the example size {e} is outside the range {}..={}",
                s.min, s.max
            )));
        }
        symbols.push(Symbol {
            dims: vec![dim],
            example: e,
            min: s.min.max(2),
            max: s.max.min(MAX_SIZE),
            modulus: 1,
            why: s.why.clone(),
        });
    }
    if symbols.is_empty() {
        return Ok(None);
    }
    unify(probe, &mut symbols)?;

    let scaled = |sym: &Symbol, m: u64| -> Vec<((u32, u32), u64)> {
        sym.dims.iter().map(|&d| (d, sym.example * m)).collect()
    };
    let fail = |sym: &Symbol, reason: String| DynamicError {
        dim: probe.name(sym.dims[0]),
        reason,
    };
    let mut twice = Vec::new();
    let mut thrice = Vec::new();
    for sym in &symbols {
        for (m, out) in [(2, &mut twice), (3, &mut thrice)] {
            let g = probe.at(&scaled(sym, m)).map_err(|e| fail(sym, e))?;
            same_program(base, &g).map_err(|e| fail(sym, e))?;
            out.push(g);
        }
    }
    // Fit every dim of every value.
    let examples: Vec<u64> = symbols.iter().map(|s| s.example).collect();
    let mut dims: Vec<Vec<Option<SymExpr>>> = Vec::with_capacity(base.values.len());
    for (v, meta) in base.values.iter().enumerate() {
        let mut axes = Vec::with_capacity(meta.shape.len());
        for (a, &d0) in meta.shape.iter().enumerate() {
            let d0 = d0 as i64;
            let mut deltas = Vec::with_capacity(symbols.len());
            for (k, sym) in symbols.iter().enumerate() {
                let d2 = twice[k].values[v].shape[a] as i64;
                let d3 = thrice[k].values[v].shape[a] as i64;
                if d3 - d2 != d2 - d0 {
                    return Err(fail(
                        sym,
                        format!("value v{v} axis {a} is not an affine function of it ({d0}, {d2}, {d3} at 1x, 2x, 3x)"),
                    ));
                }
                deltas.push(d2 - d0);
            }
            axes.push(fit(d0, &deltas, &examples));
        }
        dims.push(axes);
    }
    let mut env = ShapeEnv { symbols, dims };
    constrain(&mut env);

    // Validate: all symbols doubled together (additivity), and each symbol
    // at the next admitted size that is not a multiple of its example.
    let mut checks: Vec<Vec<u64>> = vec![examples.iter().map(|e| e * 2).collect()];
    for k in 0..env.symbols.len() {
        let mut s = examples.clone();
        s[k] += env.symbols[k].modulus;
        checks.push(s);
    }
    for sizes in checks {
        let at: Vec<((u32, u32), u64)> = env
            .symbols
            .iter()
            .zip(&sizes)
            .flat_map(|(sym, &s)| sym.dims.iter().map(move |&d| (d, s)))
            .collect();
        let first = &env.symbols[0];
        let g = probe.at(&at).map_err(|e| fail(first, e))?;
        same_program(base, &g).map_err(|e| fail(first, e))?;
        for (v, axes) in env.dims.iter().enumerate() {
            for (a, expr) in axes.iter().enumerate() {
                let want = match expr {
                    Some(e) => e.eval(&sizes),
                    None => Some(base.values[v].shape[a] as i64),
                };
                let got = g.values[v].shape[a] as i64;
                if want != Some(got) {
                    return Err(fail(
                        first,
                        format!("value v{v} axis {a} is {got} at sizes {sizes:?}, but the fitted shape gives {want:?}; it depends on products of dynamic dims or on sizes in another way: mark fewer dims dynamic"),
                    ));
                }
            }
        }
    }
    Ok(Some(env))
}

/// Merges symbols with the other input dims they must equal (see the module
/// doc): a symbol whose doubled probe fails is retried together with the
/// same-sized dims whose change makes the trace succeed.
fn unify(probe: &Probe<'_>, symbols: &mut Vec<Symbol>) -> Result<(), DynamicError> {
    let mut k = 0;
    while k < symbols.len() {
        let e = symbols[k].example;
        let try_dims = |dims: &[(u32, u32)]| -> Result<(), String> {
            let at: Vec<_> = dims.iter().map(|&d| (d, e * 2)).collect();
            probe.at(&at).map(|_| ())
        };
        let first_error = match try_dims(&symbols[k].dims) {
            Ok(()) => {
                k += 1;
                continue;
            }
            Err(e) => e,
        };
        let mut candidates: Vec<(u32, u32)> = Vec::new();
        for (i, ex) in probe.examples.iter().enumerate() {
            for a in 0..ex.meta.shape.len() {
                let d = (i as u32, a as u32);
                if !symbols[k].dims.contains(&d) && size_of(probe.examples, d) == Some(e) {
                    candidates.push(d);
                }
            }
        }
        let base = symbols[k].dims.clone();
        let with = |extra: &[(u32, u32)]| -> Vec<(u32, u32)> {
            let mut d = base.clone();
            for &x in extra {
                // A dim of another symbol brings its whole group.
                match symbols.iter().find(|s| s.dims.contains(&x)) {
                    Some(s) => {
                        for &y in &s.dims {
                            if !d.contains(&y) {
                                d.push(y);
                            }
                        }
                    }
                    None if !d.contains(&x) => d.push(x),
                    None => {}
                }
            }
            d
        };
        let mut chosen: Option<Vec<(u32, u32)>> = candidates
            .iter()
            .find(|&&c| try_dims(&with(&[c])).is_ok())
            .map(|&c| vec![c]);
        if chosen.is_none() && try_dims(&with(&candidates)).is_ok() {
            let mut keep = candidates.clone();
            for c in &candidates {
                let fewer: Vec<_> = keep.iter().filter(|x| *x != c).copied().collect();
                if try_dims(&with(&fewer)).is_ok() {
                    keep = fewer;
                }
            }
            chosen = Some(keep);
        }
        let Some(extra) = chosen else {
            return Err(DynamicError {
                dim: probe.name(base[0]),
                reason: first_error,
            });
        };
        let dims = with(&extra);
        // Fold the symbols now covered into this one.
        let mut merged = symbols[k].clone();
        let mut rest = Vec::new();
        for (j, s) in symbols.drain(..).enumerate() {
            if j != k && s.dims.iter().any(|d| dims.contains(d)) {
                merged.min = merged.min.max(s.min);
                merged.max = merged.max.min(s.max);
            } else if j != k {
                rest.push(s);
            }
        }
        merged.dims = dims;
        rest.insert(k.min(rest.len()), merged);
        *symbols = rest;
        // Re-check the merged symbol from the start.
    }
    Ok(())
}

/// The affine expression through `d0` at the examples with slope
/// `deltas[k] / examples[k]` per symbol, reduced; `None` if constant.
fn fit(d0: i64, deltas: &[i64], examples: &[u64]) -> Option<SymExpr> {
    if deltas.iter().all(|&d| d == 0) {
        return None;
    }
    let mut q: i64 = 1;
    for (&d, &e) in deltas.iter().zip(examples) {
        if d != 0 {
            let e = e as i64;
            q = lcm(q, e / gcd(d.abs(), e));
        }
    }
    let mut terms = Vec::new();
    let mut constant = d0 * q;
    for (k, (&d, &e)) in deltas.iter().zip(examples).enumerate() {
        if d != 0 {
            // Exact: e / gcd(d, e) divides q.
            let c = d * q / e as i64;
            constant -= c * e as i64;
            terms.push((k, c));
        }
    }
    let g = terms
        .iter()
        .fold(gcd(constant.abs(), q), |g, &(_, c)| gcd(g, c.abs()));
    let g = g.max(1);
    Some(SymExpr {
        terms: terms.into_iter().map(|(k, c)| (k, c / g)).collect(),
        constant: constant / g,
        divisor: q / g,
    })
}

/// Divisibility and minimums from the fitted expressions.
fn constrain(env: &mut ShapeEnv) {
    for expr in env.dims.iter().flatten().flatten() {
        if expr.divisor > 1 {
            for &(k, _) in &expr.terms {
                let s = &mut env.symbols[k];
                s.modulus = lcm(s.modulus as i64, expr.divisor) as u64;
            }
        }
        // One symbol with a positive slope: keep the size at least 1 (at
        // least 0 if it is 0 at the example).
        if let [(k, c)] = expr.terms[..] {
            let example = [env.symbols[k].example];
            let mut at = vec![0; env.symbols.len()];
            at[k] = example[0];
            let floor = i64::from(expr.eval(&at).unwrap_or(1) >= 1);
            if c > 0 {
                let need = floor * expr.divisor - expr.constant; // c·S >= floor·q - constant
                let min = if need <= 0 { 0 } else { (need + c - 1) / c };
                let s = &mut env.symbols[k];
                s.min = s.min.max(min as u64);
            }
        }
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: i64, b: i64) -> i64 {
    if a == 0 || b == 0 {
        a.max(b)
    } else {
        a / gcd(a, b) * b
    }
}

/// Checks that `g` is the same program as `base` (up to sizes).
fn same_program(base: &Graph, g: &Graph) -> Result<(), String> {
    if base.nodes.len() != g.nodes.len() || base.values.len() != g.values.len() {
        return Err(format!(
            "at another size the program has {} nodes instead of {}: its structure depends on the size",
            g.nodes.len(),
            base.nodes.len()
        ));
    }
    for (n, (a, b)) in base.nodes.iter().zip(&g.nodes).enumerate() {
        if let (
            Op::Kernel {
                kernel: k1,
                attrs: a1,
            },
            Op::Kernel {
                kernel: k2,
                attrs: a2,
            },
        ) = (&a.op, &b.op)
        {
            if k1 == k2 && a1 != a2 {
                let diff: Vec<String> = a1
                    .iter()
                    .filter(|(k, v)| a2.get(*k) != Some(v))
                    .map(|(k, _)| format!("`{k}`"))
                    .collect();
                return Err(format!(
                    "node {n} (`{k1}`): attribute {} holds a size that changes with it",
                    diff.join(", ")
                ));
            }
        }
        // Globals must keep their shape too (a weight sized by the dim).
        let same_global = match (&a.op, &b.op) {
            (Op::Global(x), Op::Global(y)) => {
                base.globals.get(*x as usize).map(|d| &d.meta)
                    == g.globals.get(*y as usize).map(|d| &d.meta)
            }
            _ => true,
        };
        let same = a.inputs == b.inputs
            && a.outputs == b.outputs
            && same_global
            && same_op(base, &a.op, g, &b.op);
        if !same {
            return Err(format!(
                "node {n} (`{}`) differs at another size: the program depends on the size",
                a.op.name()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_affine_and_strided_sizes() {
        // d = S: (0 + 1·S) / 1.
        let e = fit(8, &[8], &[8]).unwrap();
        assert_eq!(
            (e.terms.clone(), e.constant, e.divisor),
            (vec![(0, 1)], 0, 1)
        );
        // d = S - 1.
        let e = fit(7, &[8], &[8]).unwrap();
        assert_eq!(e.eval(&[100]), Some(99));
        // A stride-2 window without padding, k = 3: floor((S - 3) / 2) + 1,
        // which is (S - 2) / 2 on even sizes.
        let e = fit(3, &[4], &[8]).unwrap();
        assert_eq!((e.constant, e.divisor), (-2, 2));
        assert_eq!(e.eval(&[10]), Some(4));
        assert_eq!(e.eval(&[11]), None, "odd sizes are not admitted");
        // Two symbols: d = 4·B + S.
        let e = fit(4 * 3 + 5, &[12, 5], &[3, 5]).unwrap();
        assert_eq!(e.eval(&[7, 9]), Some(4 * 7 + 9));
        assert!(fit(5, &[0, 0], &[3, 5]).is_none());
    }

    #[test]
    fn constraints_follow_from_the_expressions() {
        let sym = |e| Symbol {
            dims: vec![(0, 0)],
            example: e,
            min: 2,
            max: MAX_SIZE,
            modulus: 1,
            why: String::new(),
        };
        let mut env = ShapeEnv {
            symbols: vec![sym(8)],
            dims: vec![vec![
                fit(3, &[4], &[8]), // (S - 2) / 2: S even, S >= 4
                fit(5, &[8], &[8]), // S - 3: S >= 4
            ]],
        };
        constrain(&mut env);
        assert_eq!(env.symbols[0].modulus, 2);
        assert_eq!(env.symbols[0].min, 4);
        let guards = env.guards(vec![
            Guard::Dim {
                input: 0,
                axis: 0,
                size: 8,
            },
            Guard::Dim {
                input: 0,
                axis: 1,
                size: 3,
            },
        ]);
        assert_eq!(
            guards,
            [
                Guard::DimRange {
                    input: 0,
                    axis: 0,
                    min: 4,
                    max: MAX_SIZE
                },
                Guard::DimModulo {
                    input: 0,
                    axis: 0,
                    modulus: 2,
                    remainder: 0
                },
                Guard::Dim {
                    input: 0,
                    axis: 1,
                    size: 3
                },
            ]
        );
    }
}
