//! The program hash: what a package records to notice that the program behind
//! a function changed (torch.compile's source-hash check).
//!
//! The hash is taken over the *traced* graph, before any pass, and must not
//! depend on input sizes: tracing the same Rust function with inputs of other
//! shapes gives the same hash. Exactly this is hashed:
//!
//! `program_hash = lowercase hex SHA-256 of the compact JSON of`
//!
//! ```text
//! {
//!   "format": "ampoule-program/1",
//!   "inputs":  [{"name", "dtype", "scalar": bool}],          // in order
//!   "globals": [{"name", "dtype", "source": "embedded" | "bound"}],
//!   "nodes":   [{"op", "inputs": [value ids], ...}],           // in order
//!   "outputs": [{"name", "value"}]
//! }
//! ```
//!
//! where a node is `{"op": "input", "index"}`, `{"op": "global", "index"}`,
//! `{"op": "constant", "dtype"}`, `{"op": "reshape", "rank"}` or
//! `{"op": "kernel", "kernel": "name@version", "attrs": {..}}`, or
//! `{"op": "guard", "index"}`, `{"op": "if" | "while", "regions": [..]}` whose regions are this same
//! form (`then`, `otherwise`; `cond`, `body`). Kernel
//! attributes are hashed except those that commonly hold sizes
//! ([`SIZE_ATTRS`]: slice bounds). Value ids are the graph's own dense
//! numbering, which follows trace order.
//!
//! Not hashed, because they vary between the entries of one function: input
//! shapes and ranks, specialized scalar values, global shapes and contents,
//! constant contents, reshape target sizes, slice bounds. A change to any of
//! those alone is not a program change. (Signatures, which fix input dtypes
//! and ranks, are compared separately.)

use serde_json::{json, Map, Value};

use crate::ir::{GlobalSource, Graph, Op};

/// Kernel attributes left out of the hash because they usually hold sizes
/// computed from input shapes: `(kernel, attribute)`.
pub const SIZE_ATTRS: &[(&str, &str)] = &[("slice@1", "starts"), ("slice@1", "ends")];

/// The canonical JSON the hash is taken over (see the module doc).
pub fn canonical_form(graph: &Graph) -> Value {
    let inputs: Vec<Value> = graph
        .inputs
        .iter()
        .map(|i| json!({"name": i.name, "dtype": i.meta.dtype.name(), "scalar": i.specialized.is_some()}))
        .collect();
    let globals: Vec<Value> = graph
        .globals
        .iter()
        .map(|g| {
            let source = match g.source {
                GlobalSource::Embedded(_) => "embedded",
                GlobalSource::Bound { .. } => "bound",
            };
            json!({"name": g.name, "dtype": g.meta.dtype.name(), "source": source})
        })
        .collect();
    let nodes: Vec<Value> = graph
        .nodes
        .iter()
        .map(|n| {
            let ins: Vec<u32> = n.inputs.iter().map(|v| v.0).collect();
            match &n.op {
                Op::Input(i) => json!({"op": "input", "index": i, "inputs": ins}),
                Op::Global(g) => json!({"op": "global", "index": g, "inputs": ins}),
                Op::Constant(t) => {
                    json!({"op": "constant", "dtype": t.dtype().name(), "inputs": ins})
                }
                Op::Reshape => {
                    let rank = n
                        .outputs
                        .first()
                        .and_then(|v| graph.try_meta(*v))
                        .map_or(0, |m| m.shape.len());
                    json!({"op": "reshape", "rank": rank, "inputs": ins})
                }
                Op::Kernel { kernel, attrs } => {
                    let mut a = Map::new();
                    for (k, v) in attrs {
                        if SIZE_ATTRS.contains(&(kernel.as_str(), k.as_str())) {
                            continue;
                        }
                        a.insert(k.clone(), serde_json::to_value(v).unwrap_or(Value::Null));
                    }
                    json!({"op": "kernel", "kernel": kernel, "attrs": a, "inputs": ins})
                }
                Op::If { then, otherwise } => json!({"op": "if", "inputs": ins,
                    "regions": [canonical_form(then), canonical_form(otherwise)]}),
                Op::Guard { index } => json!({"op": "guard", "index": index, "inputs": ins}),
                Op::While { cond, body } => json!({"op": "while", "inputs": ins,
                    "regions": [canonical_form(cond), canonical_form(body)]}),
            }
        })
        .collect();
    let outputs: Vec<Value> = graph
        .outputs
        .iter()
        .map(|o| json!({"name": o.name, "value": o.value.0}))
        .collect();
    json!({
        "format": "ampoule-program/1",
        "inputs": inputs,
        "globals": globals,
        "nodes": nodes,
        "outputs": outputs,
    })
}

/// The program hash of a traced graph (see the module doc).
pub fn program_hash(graph: &Graph) -> String {
    // Deterministic either way serde_json's `Map` is built: sorted by key, or
    // (with `preserve_order`) in the fixed insertion order of the code above
    // and of the attributes' `BTreeMap`.
    let bytes = serde_json::to_vec(&canonical_form(graph)).unwrap_or_default();
    ampoule_host::manifest::sha256_hex(&bytes)
}
