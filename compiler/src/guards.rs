//! Guard synthesis and the function signature, from a traced graph.
//!
//! An entry's guards say exactly what its wrapper was compiled for, in the
//! order the host checks them (cheapest and most telling first):
//!
//! 1. `InputCount`;
//! 2. per input, in order: `Dtype`, `Rank`, one `Dim` per axis, and
//!    `ScalarValue` if the trace read a rank-0 input's value, `InputValues` if
//!    it read the elements of a small tensor input;
//! 3. per global in the entry's globals table: `GlobalMeta`, and
//!    `GlobalDigest` for a host-bound global the entry is specialized on.
//!
//! The signature declares each input a `Scalar` if the trace read its value,
//! else a `Tensor` of its dtype and rank; each output a `Tensor`. The graph's
//! last outputs, the new values of the inputs it updates in place
//! ([`Graph::mutations`]), are not declared outputs: they become the
//! signature's `mutates` records, in order.

use ampoule_host::manifest::{ArgDecl, ArgKind, MutationDecl, Signature};
use ampoule_host::Guard;

use crate::ir::{GlobalDef, GlobalSource, Graph};

/// The signature of the function a graph was traced from.
pub fn signature(graph: &Graph) -> Signature {
    let inputs = graph
        .inputs
        .iter()
        .map(|i| ArgDecl {
            name: i.name.clone(),
            kind: match i.specialized {
                Some(_) => ArgKind::Scalar {
                    dtype: i.meta.dtype,
                },
                None => ArgKind::Tensor {
                    dtype: i.meta.dtype,
                    rank: i.meta.shape.len() as u32,
                },
            },
        })
        .collect();
    let kind = |o: &crate::ir::OutputDef| {
        let m = graph.meta(o.value);
        ArgKind::Tensor {
            dtype: m.dtype,
            rank: m.shape.len() as u32,
        }
    };
    let declared = graph.outputs.len().saturating_sub(graph.mutations.len());
    let (outs, updated) = graph.outputs.split_at(declared);
    let outputs = outs
        .iter()
        .map(|o| ArgDecl {
            name: o.name.clone(),
            kind: kind(o),
        })
        .collect();
    let mutates = graph
        .mutations
        .iter()
        .zip(updated)
        .map(|(&input, o)| MutationDecl {
            input,
            kind: kind(o),
        })
        .collect();
    Signature {
        inputs,
        outputs,
        mutates,
    }
}

/// The input guards (1 and 2 in the module doc).
pub fn input_guards(graph: &Graph) -> Vec<Guard> {
    let mut guards = vec![Guard::InputCount {
        count: graph.inputs.len() as u32,
    }];
    for (i, input) in graph.inputs.iter().enumerate() {
        let input_index = i as u32;
        guards.push(Guard::Dtype {
            input: input_index,
            dtype: input.meta.dtype,
        });
        guards.push(Guard::Rank {
            input: input_index,
            rank: input.meta.shape.len() as u32,
        });
        for (axis, &size) in input.meta.shape.iter().enumerate() {
            guards.push(Guard::Dim {
                input: input_index,
                axis: axis as u32,
                size: size as u64,
            });
        }
        if let Some(value) = input.specialized {
            guards.push(Guard::ScalarValue {
                input: input_index,
                value,
            });
        }
        if let Some(values) = &input.values {
            guards.push(Guard::InputValues {
                input: input_index,
                values: values.clone(),
            });
        }
    }
    guards
}

/// The global guards (3 in the module doc) for globals with their
/// package-global indices.
pub fn global_guards<'a>(globals: impl IntoIterator<Item = (u32, &'a GlobalDef)>) -> Vec<Guard> {
    let mut guards = Vec::new();
    for (index, def) in globals {
        guards.push(Guard::GlobalMeta {
            global: index,
            dtype: def.meta.dtype,
            shape: def.meta.shape.iter().map(|&d| d as u64).collect(),
        });
        if let GlobalSource::Bound { digest: Some(d) } = &def.source {
            guards.push(Guard::GlobalDigest {
                global: index,
                sha256: d.clone(),
            });
        }
    }
    guards
}

#[cfg(test)]
mod tests {
    use super::*;
    use ampoule_host::ScalarValue;
    use ampoule_kernels::{DType, TensorMeta};

    #[test]
    fn guards_follow_the_documented_order() {
        let mut g = Graph::new();
        g.add_input("x", TensorMeta::new(DType::F32, [4, 3]));
        g.add_input("k", TensorMeta::new(DType::I64, []));
        g.inputs[1].specialized = Some(ScalarValue::Int(2));
        let v = g.input(0).unwrap();
        g.add_output("y", v);
        assert_eq!(
            input_guards(&g),
            [
                Guard::InputCount { count: 2 },
                Guard::Dtype {
                    input: 0,
                    dtype: DType::F32
                },
                Guard::Rank { input: 0, rank: 2 },
                Guard::Dim {
                    input: 0,
                    axis: 0,
                    size: 4
                },
                Guard::Dim {
                    input: 0,
                    axis: 1,
                    size: 3
                },
                Guard::Dtype {
                    input: 1,
                    dtype: DType::I64
                },
                Guard::Rank { input: 1, rank: 0 },
                Guard::ScalarValue {
                    input: 1,
                    value: ScalarValue::Int(2)
                },
            ]
        );
        let sig = signature(&g);
        assert_eq!(sig.inputs[1].kind, ArgKind::Scalar { dtype: DType::I64 });
        assert_eq!(
            sig.outputs[0].kind,
            ArgKind::Tensor {
                dtype: DType::F32,
                rank: 2
            }
        );
        let bound = GlobalDef {
            name: "s".into(),
            meta: TensorMeta::new(DType::F32, [3]),
            source: GlobalSource::Bound {
                digest: Some("ab".repeat(32)),
            },
        };
        assert_eq!(
            global_guards([(5, &bound)]),
            [
                Guard::GlobalMeta {
                    global: 5,
                    dtype: DType::F32,
                    shape: vec![3]
                },
                Guard::GlobalDigest {
                    global: 5,
                    sha256: "ab".repeat(32)
                },
            ]
        );
    }
}
