//! Constants to globals: a wrapper cannot create tensor data, so every
//! constant left after folding becomes an embedded global, named
//! `const.<first 16 hex digits of its content digest>` where the content
//! digest covers dtype, shape and bytes ([`content_digest`]). Equal constants
//! share one global, within a graph and, through the package's sharing by
//! name and content, across entries and functions.

use ampoule_kernels::Tensor;
use sha2::{Digest, Sha256};

use crate::ir::{GlobalDef, GlobalSource, Graph, Op};

/// SHA-256 over a tensor's dtype name, rank, dims (little-endian u64) and
/// bytes, in lowercase hex.
pub fn content_digest(t: &Tensor) -> String {
    let mut h = Sha256::new();
    h.update(t.dtype().name().as_bytes());
    h.update([0u8]);
    h.update((t.shape().len() as u64).to_le_bytes());
    for &d in t.shape() {
        h.update((d as u64).to_le_bytes());
    }
    h.update(t.bytes());
    hex::encode(h.finalize())
}

/// Rewrites every `Constant` node into a `Global` read; returns how many.
pub fn constants_to_globals(graph: &mut Graph) -> usize {
    let mut count = 0;
    for n in 0..graph.nodes.len() {
        let Op::Constant(t) = &graph.nodes[n].op else {
            continue;
        };
        let t = t.clone();
        let name = format!("const.{}", &content_digest(&t)[..16]);
        let g = match graph.globals.iter().position(|g| g.name == name) {
            Some(g) => g as u32,
            None => graph.add_global(GlobalDef {
                name,
                meta: t.meta().clone(),
                source: GlobalSource::Embedded(t),
            }),
        };
        graph.nodes[n].op = Op::Global(g);
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use ampoule_kernels::{DType, Registry};

    #[test]
    fn equal_constants_share_a_global() {
        let mut g = Graph::new();
        let a = g.constant(Tensor::from_vec(&[2], vec![1i32, 2]).unwrap());
        let b = g.constant(Tensor::from_vec(&[2], vec![1i32, 2]).unwrap());
        let c = g.constant(Tensor::from_vec(&[1, 2], vec![1i32, 2]).unwrap());
        for (i, v) in [a, b, c].into_iter().enumerate() {
            g.add_output(format!("o{i}"), v);
        }
        assert_eq!(constants_to_globals(&mut g), 3);
        assert_eq!(
            g.globals.len(),
            2,
            "same bytes, other shape: another global"
        );
        crate::verify::verify(&g, &Registry::standard()).unwrap();
        assert!(g.globals[0].name.starts_with("const."));
        assert_ne!(
            content_digest(&Tensor::zeros(DType::I32, &[2]).unwrap()),
            content_digest(&Tensor::zeros(DType::F32, &[2]).unwrap())
        );
    }
}
