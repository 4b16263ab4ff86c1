//! The ONNX importer: an ONNX model becomes a [`FunctionDef`] that the rest
//! of the compiler traces, compiles and packages like any Rust function.
//!
//! - [`proto`]: the protobuf messages, hand-derived from `onnx.proto` of
//!   ONNX 1.17 (decoded with `prost`, no `protoc`);
//! - [`tensor`]: `TensorProto` to and from host tensors;
//! - [`load`] decodes and checks a model into an [`OnnxModel`];
//!   [`OnnxModel::function`] gives the definition, [`OnnxModel::examples`]
//!   the example inputs of one entry (static dims from the model, symbolic
//!   dims from [`InputSpec`]s).
//!
//! Invariants [`load`] establishes, so that tracing a loaded model never
//! meets a structural surprise:
//! - nothing in the model bytes can make the importer panic or allocate
//!   more than a bounded multiple of the model's size: every malformed part
//!   is an [`OnnxError`] naming the node, tensor or field;
//! - only *live* nodes are kept: those a graph output depends on, through
//!   node inputs and through the outer values subgraphs read (a subgraph's
//!   own liveness starts from its outputs). ONNX runtimes never run a dead
//!   node, so a dead node is never traced: its failure on its constants
//!   (a gather at an out-of-range constant index) or an op the importer
//!   does not support cannot fail the import;
//! - every live node's domain is imported by `opset_import`, and its op is
//!   supported at that opset; otherwise [`OnnxError::Unsupported`] lists
//!   **every** unsupported live node at once (name, op, domain, opset,
//!   reason);
//! - every value is defined once (by a graph input, an initializer or one
//!   node output), every node input and graph output is defined, and the
//!   nodes are kept in a topological order (the model's own order where it
//!   is already one); these structural checks cover dead nodes too (a
//!   model that breaks them is malformed, not merely unused);
//! - every initializer decodes to a host tensor; an initializer that is
//!   also listed as a graph input (IR < 4 style) is a constant, not an input;
//! - subgraphs (`GRAPH` attributes of supported nodes) are checked the same
//!   way, at most [`MAX_SUBGRAPH_DEPTH`] deep; a name a subgraph does not
//!   define must be defined in an enclosing scope, and counts as an input
//!   of the node that owns the subgraph when ordering the enclosing graph.
//!
//! Tracing walks the nodes in that order with a compile-time value
//! environment (the private `ops` module): values whose content is known
//! at trace time (initializers, `Constant`s, `Shape`s of traced tensors,
//! which are static per entry, and small computations on them) are folded
//! into host tensors on the reference kernels, so a `Shape → Gather →
//! Concat → Reshape` chain becomes a plain reshape with no kernel. Known
//! values that reach a kernel become globals: initializers and large
//! `Constant`s as weights under their ONNX names, small values as folded
//! constants.

mod ops;
pub mod proto;
pub mod tensor;

pub use ops::{supported_ops, FOLD_LIMIT, MAX_CREATED, WEIGHT_MIN};

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::Arc;

use ampoule_kernels::{DType, Registry, Tensor, TensorMeta, MAX_RANK};
use prost::Message;

use crate::trace::{function, Example, FunctionDef};
use proto::{
    attribute_type, tensor_shape_proto::dimension, type_proto, AttributeProto, ModelProto,
};

/// The newest default-domain (`ai.onnx`) opset the importer knows: the one of
/// ONNX 1.20. Opsets 23 to 25 changed no op of the importer's set for the
/// dtypes it supports. Opset 23 added the float4e2m1 type to `Cast`,
/// `Constant`, `Reshape`, `Shape` and others, and new ops (`Attention`,
/// `RMSNormalization`, `RotaryEmbedding`) whose function bodies use ops of the
/// set. Opsets 24 and 25 added the float8e8m0, int2 and uint2 types to
/// `Cast`, `Constant`, `ConstantOfShape`, `Flatten`, `Identity`, `If`,
/// `Pad`, `Reshape`, `Shape`, `Size`, `Squeeze`, `Transpose` and
/// `Unsqueeze`, and `Cast` a `round_mode` for float8e8m0 targets; every op of
/// the set keeps its attributes, inputs and outputs (checked against
/// `onnx.defs` of onnx 1.22).
pub const MAX_OPSET: i64 = 25;

/// Why a model cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The bytes are not a `ModelProto` (prost names the message and field).
    #[error("not an ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the ONNX model has no graph")]
    NoGraph,
    /// A part of the model is malformed. `what` names it (`node `n` (Reshape)`,
    /// `initializer `w``, `graph input `x``, ..).
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    /// Every node the importer cannot translate, listed together.
    #[error("{}", fmt_unsupported(.nodes))]
    Unsupported { nodes: Vec<UnsupportedNode> },
    /// An input dim has no concrete size.
    #[error("graph input `{input}` axis {axis} is {dim}; give it a size with --input {input}=DIMS (e.g. {example})")]
    SymbolicDim {
        input: String,
        axis: usize,
        dim: String,
        example: String,
    },
    #[error("graph input `{input}`: {message}")]
    Input { input: String, message: String },
    #[error("the model has no graph input `{name}`; its inputs are: {available}")]
    UnknownInput { name: String, available: String },
}

/// One node the importer cannot translate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsupportedNode {
    /// The node's name, or `#index` if it has none.
    pub node: String,
    pub op_type: String,
    /// The node's domain (empty: the default `ai.onnx`).
    pub domain: String,
    /// The opset version the model imports for that domain, if any.
    pub opset: Option<i64>,
    pub reason: String,
}

fn fmt_unsupported(nodes: &[UnsupportedNode]) -> String {
    let mut s = format!(
        "the model has {} unsupported node{}:",
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" }
    );
    for n in nodes {
        let domain = if n.domain.is_empty() {
            "ai.onnx"
        } else {
            &n.domain
        };
        let opset = match n.opset {
            Some(v) => format!("opset {v}"),
            None => "no opset imported".to_string(),
        };
        s.push_str(&format!(
            "\n  node `{}`: op `{}` (domain `{domain}`, {opset}): {}",
            n.node, n.op_type, n.reason
        ));
    }
    s
}

/// One dim of a graph input's declared shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    /// A `dim_param`.
    Symbolic(String),
    /// Neither a value nor a name.
    Unknown,
}

/// A graph input (initializers excluded) as the model declares it.
#[derive(Clone, Debug, PartialEq)]
pub struct InputInfo {
    pub name: String,
    /// The ONNX element type.
    pub elem_type: i32,
    /// Its ampoule dtype, when it has one.
    pub dtype: Option<DType>,
    /// The declared shape; `None` when the model gives no shape (not even a
    /// rank).
    pub dims: Option<Vec<Dim>>,
}

/// Concrete dims (and optionally the dtype) for one graph input of one
/// entry: the CLI's `--input NAME=DIMS[:DTYPE]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputSpec {
    pub dims: Vec<usize>,
    pub dtype: Option<DType>,
}

impl InputSpec {
    /// Parses `NAME=DIMS[:DTYPE]`: DIMS like `1x3x224x224` (empty for a
    /// scalar), DTYPE an ampoule or numpy name (`f32`, `float32`, `int64`, ..).
    pub fn parse(s: &str) -> Result<(String, InputSpec), String> {
        let (name, rest) = s
            .split_once('=')
            .filter(|(n, _)| !n.is_empty())
            .ok_or_else(|| format!("`{s}` must look like NAME=DIMS[:DTYPE], e.g. x=1x3x224x224"))?;
        let (dims, dtype) = match rest.split_once(':') {
            Some((d, t)) => (
                d,
                Some(parse_dtype(t).ok_or_else(|| {
                    format!("`{s}`: unknown dtype `{t}` (use f32, f64, i8, u8, i16, u16, i32, u32, i64, u64 or bool)")
                })?),
            ),
            None => (rest, None),
        };
        let dims = if dims.is_empty() {
            Vec::new()
        } else {
            dims.split(['x', 'X'])
                .map(|d| d.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| format!("`{s}`: DIMS must be sizes joined by `x`, e.g. 1x3x224x224"))?
        };
        if dims.len() > MAX_RANK {
            return Err(format!(
                "`{s}`: rank {} exceeds the maximum of {MAX_RANK}",
                dims.len()
            ));
        }
        Ok((name.to_string(), InputSpec { dims, dtype }))
    }
}

fn parse_dtype(s: &str) -> Option<DType> {
    Some(match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" | "float" => DType::F32,
        "f64" | "float64" | "double" => DType::F64,
        "i8" | "int8" => DType::I8,
        "u8" | "uint8" => DType::U8,
        "i16" | "int16" => DType::I16,
        "u16" | "uint16" => DType::U16,
        "i32" | "int32" => DType::I32,
        "u32" | "uint32" => DType::U32,
        "i64" | "int64" => DType::I64,
        "u64" | "uint64" => DType::U64,
        "bool" => DType::Bool,
        _ => return None,
    })
}

/// A node, checked and ready to translate.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    /// The node's name, or `#index`.
    pub label: String,
    pub op_type: String,
    /// The imported opset of the node's domain.
    pub opset: i64,
    /// Input names; an empty name is an omitted optional input.
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    /// Attributes; a `GRAPH` attribute's graph is moved to `subgraphs`.
    pub attrs: BTreeMap<String, AttributeProto>,
    /// The checked subgraphs of `GRAPH` attributes (`If`'s branches,
    /// `Loop`'s body), by attribute name.
    pub subgraphs: BTreeMap<String, Arc<Subgraph>>,
    /// The values of enclosing scopes the subgraphs read: dependencies of
    /// this node besides `inputs`.
    pub implicit: Vec<String>,
}

impl Node {
    /// How messages name this node.
    pub fn what(&self) -> String {
        format!("node `{}` ({})", self.label, self.op_type)
    }
}

/// The checked graph a [`FunctionDef`] body walks.
#[derive(Debug)]
pub(crate) struct Model {
    pub nodes: Vec<Node>,
    pub initializers: HashMap<String, Tensor>,
    pub inputs: Vec<InputInfo>,
    pub outputs: Vec<String>,
}

/// A checked subgraph (a `GRAPH` attribute): its nodes in a topological
/// order, its own initializers, its formal inputs and its outputs. Names it
/// does not define come from the enclosing scopes (checked at load).
#[derive(Debug)]
pub(crate) struct Subgraph {
    pub name: String,
    pub nodes: Vec<Node>,
    pub initializers: HashMap<String, Tensor>,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

/// How deeply subgraphs may nest (an `If` inside a `Loop` body inside an
/// `If` branch is depth 3).
pub const MAX_SUBGRAPH_DEPTH: usize = 16;

/// A decoded and checked ONNX model. Cheap to clone.
#[derive(Clone, Debug)]
pub struct OnnxModel {
    model: Arc<Model>,
    graph_name: String,
    opsets: BTreeMap<String, i64>,
    /// The main graph's nodes in the model, dead ones included.
    node_count: usize,
}

/// Decodes `bytes` as an ONNX `ModelProto` and checks it (see the module
/// doc), including that every op is supported.
pub fn load(bytes: &[u8]) -> Result<OnnxModel, OnnxError> {
    let proto = ModelProto::decode(bytes)?;
    from_proto(proto)
}

/// Reads and [`load`]s the model at `path`.
pub fn load_file(path: impl AsRef<std::path::Path>) -> Result<OnnxModel, OnnxError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| OnnxError::Invalid {
        what: format!("`{}`", path.display()),
        message: format!("cannot read: {e}"),
    })?;
    load(&bytes)
}

fn invalid(what: impl Into<String>, message: impl Into<String>) -> OnnxError {
    OnnxError::Invalid {
        what: what.into(),
        message: message.into(),
    }
}

/// The opset domain a node or import names: empty for `ai.onnx`.
fn canonical_domain(d: &str) -> &str {
    if d == "ai.onnx" {
        ""
    } else {
        d
    }
}

/// Checks a decoded model (see the module doc).
pub fn from_proto(proto: ModelProto) -> Result<OnnxModel, OnnxError> {
    let graph = proto.graph.ok_or(OnnxError::NoGraph)?;
    let mut opsets = BTreeMap::new();
    for o in &proto.opset_import {
        let domain = canonical_domain(&o.domain).to_string();
        if opsets.insert(domain.clone(), o.version).is_some() {
            return Err(invalid(
                "opset_import",
                format!("domain `{domain}` is imported twice"),
            ));
        }
    }
    // Initializers.
    let mut initializers = HashMap::new();
    for (i, t) in graph.initializer.iter().enumerate() {
        let what = if t.name.is_empty() {
            format!("initializer #{i}")
        } else {
            format!("initializer `{}`", t.name)
        };
        if t.name.is_empty() {
            return Err(invalid(what, "has no name"));
        }
        let tensor = tensor::from_proto(t).map_err(|m| invalid(&what, m))?;
        if initializers.insert(t.name.clone(), tensor).is_some() {
            return Err(invalid(what, "is defined twice"));
        }
    }
    // Graph inputs (initializers listed as inputs are constants).
    let mut defined: BTreeSet<String> = initializers.keys().cloned().collect();
    let mut inputs = Vec::new();
    for vi in &graph.input {
        if initializers.contains_key(&vi.name) {
            continue;
        }
        let what = format!("graph input `{}`", vi.name);
        if vi.name.is_empty() {
            return Err(invalid("a graph input", "has no name"));
        }
        if !defined.insert(vi.name.clone()) {
            return Err(invalid(what, "is defined twice"));
        }
        let (elem_type, dims) = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(t)) => {
                let dims = match &t.shape {
                    Some(s) => {
                        if s.dim.len() > MAX_RANK {
                            return Err(invalid(
                                what,
                                format!("rank {} exceeds the maximum of {MAX_RANK}", s.dim.len()),
                            ));
                        }
                        let dims = s
                            .dim
                            .iter()
                            .map(|d| -> Result<Dim, OnnxError> {
                                Ok(match &d.value {
                                    // Some exporters write -1 for a dim they do
                                    // not know (onnxruntime accepts it): unknown.
                                    Some(dimension::Value::DimValue(v)) => {
                                        usize::try_from(*v).map_or(Dim::Unknown, Dim::Fixed)
                                    }
                                    Some(dimension::Value::DimParam(p)) if !p.is_empty() => {
                                        Dim::Symbolic(p.clone())
                                    }
                                    _ => Dim::Unknown,
                                })
                            })
                            .collect::<Result<Vec<_>, _>>()?;
                        Some(dims)
                    }
                    None => None,
                };
                (t.elem_type, dims)
            }
            None => (proto::data_type::UNDEFINED, None),
        };
        inputs.push(InputInfo {
            name: vi.name.clone(),
            elem_type,
            dtype: tensor::dtype_of(elem_type),
            dims,
        });
    }
    // Nodes: opsets, support, definitions, subgraphs.
    let checked = check_nodes(&graph.node, &opsets, &defined, &[], 0, "")?;
    let produced: BTreeSet<&String> = checked.iter().flat_map(|c| &c.node.outputs).collect();
    let mut outputs = Vec::new();
    for vi in &graph.output {
        if !defined.contains(&vi.name) && !produced.contains(&vi.name) {
            return Err(invalid(
                format!("graph output `{}`", vi.name),
                "is not defined by any node, initializer or graph input",
            ));
        }
        outputs.push(vi.name.clone());
    }
    if outputs.is_empty() {
        return Err(invalid("the graph", "has no outputs"));
    }
    let node_count = checked.len();
    let live = keep_live(checked, &outputs);
    if !live.unsupported.is_empty() {
        return Err(OnnxError::Unsupported {
            nodes: live.unsupported,
        });
    }
    let nodes = live.nodes;
    if nodes.len() < node_count {
        tracing::debug!(
            dead = node_count - nodes.len(),
            nodes = node_count,
            "onnx.load: dead nodes of the main graph are not traced"
        );
    }
    Ok(OnnxModel {
        model: Arc::new(Model {
            nodes,
            initializers,
            inputs,
            outputs,
        }),
        graph_name: graph.name,
        opsets,
        node_count,
    })
}

/// A checked node of one graph, before [`keep_live`] drops the dead ones.
struct Checked {
    node: Node,
    /// The node's position in the model (unsupported nodes are listed in
    /// that order).
    index: usize,
    /// Why the node is unsupported, if it is, then the unsupported live
    /// nodes of its subgraphs.
    unsupported: Vec<UnsupportedNode>,
    /// Every name the node reads: its inputs, the outer values its
    /// subgraphs read, and, for an unsupported node (whose subgraphs are not
    /// checked), every name its subgraphs mention, so that the nodes those
    /// read are listed too if unsupported.
    reads: BTreeSet<String>,
}

/// The live part of one graph (see [`keep_live`]).
struct Live {
    /// The live nodes, in the order given.
    nodes: Vec<Node>,
    /// The unsupported live nodes (with those of their subgraphs), in model
    /// order.
    unsupported: Vec<UnsupportedNode>,
    /// Every name the live nodes read.
    reads: BTreeSet<String>,
}

/// Keeps the nodes `roots` (a graph's outputs) depend on, through node
/// inputs and the values subgraphs read; the rest never runs in an ONNX
/// runtime, so it is not traced (its failures and unsupported ops cannot
/// fail the import).
fn keep_live(checked: Vec<Checked>, roots: &[String]) -> Live {
    let producer: HashMap<&str, usize> = checked
        .iter()
        .enumerate()
        .flat_map(|(i, c)| c.node.outputs.iter().map(move |o| (o.as_str(), i)))
        .filter(|(o, _)| !o.is_empty())
        .collect();
    let mut live = vec![false; checked.len()];
    let mut todo: Vec<&str> = roots.iter().map(String::as_str).collect();
    while let Some(name) = todo.pop() {
        if let Some(&i) = producer.get(name) {
            if !live[i] {
                live[i] = true;
                todo.extend(checked[i].reads.iter().map(String::as_str));
            }
        }
    }
    let mut kept: Vec<Checked> = checked
        .into_iter()
        .zip(live)
        .filter_map(|(c, l)| l.then_some(c))
        .collect();
    let mut reads = BTreeSet::new();
    for c in &mut kept {
        reads.append(&mut c.reads);
    }
    let mut by_index: Vec<(usize, Vec<UnsupportedNode>)> = kept
        .iter_mut()
        .map(|c| (c.index, std::mem::take(&mut c.unsupported)))
        .collect();
    by_index.sort_by_key(|(i, _)| *i);
    Live {
        nodes: kept.into_iter().map(|c| c.node).collect(),
        unsupported: by_index.into_iter().flat_map(|(_, u)| u).collect(),
        reads,
    }
}

/// Every value name `g` and its nested subgraphs mention (node inputs and
/// graph outputs): what an unchecked subgraph may read from outside.
fn mentioned_names(g: &proto::GraphProto, out: &mut BTreeSet<String>) {
    out.extend(g.output.iter().map(|o| o.name.clone()));
    for n in &g.node {
        out.extend(n.input.iter().filter(|i| !i.is_empty()).cloned());
        for a in &n.attribute {
            for sub in a.g.iter().chain(&a.graphs) {
                mentioned_names(sub, out);
            }
        }
    }
}

/// Checks the nodes of one graph: opsets and support (unsupported nodes
/// are recorded with each node, not returned as errors), attributes, single
/// definitions, and subgraphs (recursively, at most [`MAX_SUBGRAPH_DEPTH`]
/// deep). `defined` holds the graph's inputs and initializers, `outer` the
/// names of the enclosing scopes, innermost last. Returns the nodes in a
/// topological order, dead ones included.
fn check_nodes(
    protos: &[proto::NodeProto],
    opsets: &BTreeMap<String, i64>,
    defined: &BTreeSet<String>,
    outer: &[&BTreeSet<String>],
    depth: usize,
    prefix: &str,
) -> Result<Vec<Checked>, OnnxError> {
    // Pass 1: every output, so that subgraphs can see this graph's names.
    let mut producer: HashMap<String, usize> = HashMap::new();
    let label_of = |i: usize, n: &proto::NodeProto| {
        if n.name.is_empty() {
            format!("{prefix}#{i}")
        } else {
            n.name.clone()
        }
    };
    for (i, n) in protos.iter().enumerate() {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if defined.contains(o) || producer.insert(o.clone(), i).is_some() {
                return Err(invalid(
                    format!("node `{}` ({})", label_of(i, n), n.op_type),
                    format!("output `{o}` is already defined; every value must be defined once"),
                ));
            }
        }
    }
    let mut local: BTreeSet<String> = defined.clone();
    local.extend(producer.keys().cloned());
    let mut inner_scopes: Vec<&BTreeSet<String>> = outer.to_vec();
    inner_scopes.push(&local);
    let mut nodes = Vec::with_capacity(protos.len());
    let mut extra = Vec::with_capacity(protos.len());
    for (i, n) in protos.iter().enumerate() {
        let label = label_of(i, n);
        let what = format!("node `{label}` ({})", n.op_type);
        let domain = canonical_domain(&n.domain).to_string();
        let opset = opsets.get(&domain).copied();
        let reason = match opset {
            None => Some(format!(
                "the model does not import domain `{}`",
                if domain.is_empty() {
                    "ai.onnx"
                } else {
                    &domain
                }
            )),
            Some(v) => ops::check_support(&n.op_type, &domain, v).err(),
        };
        let supported = reason.is_none();
        let mut unsupported = Vec::new();
        let mut reads: BTreeSet<String> =
            n.input.iter().filter(|i| !i.is_empty()).cloned().collect();
        if let Some(reason) = reason {
            for a in &n.attribute {
                for g in a.g.iter().chain(&a.graphs) {
                    mentioned_names(g, &mut reads);
                }
            }
            unsupported.push(UnsupportedNode {
                node: label.clone(),
                op_type: n.op_type.clone(),
                domain: domain.clone(),
                opset,
                reason,
            });
        }
        let mut attrs = BTreeMap::new();
        let mut subgraphs = BTreeMap::new();
        let mut implicit = BTreeSet::new();
        for a in &n.attribute {
            let mut a = a.clone();
            if let Some(g) = a.g.take().filter(|_| supported) {
                if depth >= MAX_SUBGRAPH_DEPTH {
                    return Err(invalid(
                        &what,
                        format!("subgraphs nest deeper than {MAX_SUBGRAPH_DEPTH}"),
                    ));
                }
                let (sub, free, inner) = check_subgraph(
                    &g,
                    opsets,
                    &inner_scopes,
                    depth + 1,
                    &format!("{label}/{}/", a.name),
                )
                .map_err(|e| match e {
                    OnnxError::Invalid { what: w, message } => {
                        invalid(format!("{w} in attribute `{}` of {what}", a.name), message)
                    }
                    other => other,
                })?;
                implicit.extend(free);
                unsupported.extend(inner);
                subgraphs.insert(a.name.clone(), Arc::new(sub));
            }
            a.graphs.clear();
            let name = a.name.clone();
            if attrs.insert(name.clone(), a).is_some() {
                return Err(invalid(&what, format!("attribute `{name}` is given twice")));
            }
        }
        reads.extend(implicit.iter().cloned());
        nodes.push(Node {
            label,
            op_type: n.op_type.clone(),
            opset: opset.unwrap_or(0),
            inputs: n.input.clone(),
            outputs: n.output.clone(),
            attrs,
            subgraphs,
            implicit: implicit.into_iter().collect(),
        });
        extra.push((unsupported, reads));
    }
    let order = topological_order(&nodes, &producer, defined, outer)?;
    let mut checked: Vec<Option<Checked>> = nodes
        .into_iter()
        .zip(extra)
        .enumerate()
        .map(|(index, (node, (unsupported, reads)))| {
            Some(Checked {
                node,
                index,
                unsupported,
                reads,
            })
        })
        .collect();
    Ok(order
        .into_iter()
        .filter_map(|i| checked[i].take())
        .collect())
}

/// Checks a subgraph (see [`check_nodes`]) and keeps its live nodes (those
/// its outputs depend on); returns it, the names its live nodes read from
/// the enclosing scopes, and its unsupported live nodes.
fn check_subgraph(
    g: &proto::GraphProto,
    opsets: &BTreeMap<String, i64>,
    outer: &[&BTreeSet<String>],
    depth: usize,
    prefix: &str,
) -> Result<(Subgraph, BTreeSet<String>, Vec<UnsupportedNode>), OnnxError> {
    let name = if g.name.is_empty() {
        "subgraph"
    } else {
        &g.name
    };
    let mut initializers = HashMap::new();
    for (i, t) in g.initializer.iter().enumerate() {
        let what = format!("initializer `{}` (#{i}) of subgraph `{name}`", t.name);
        if t.name.is_empty() {
            return Err(invalid(what, "has no name"));
        }
        let tensor = tensor::from_proto(t).map_err(|m| invalid(&what, m))?;
        if initializers.insert(t.name.clone(), tensor).is_some() {
            return Err(invalid(what, "is defined twice"));
        }
    }
    let mut defined: BTreeSet<String> = initializers.keys().cloned().collect();
    let mut inputs = Vec::new();
    for vi in &g.input {
        if initializers.contains_key(&vi.name) {
            continue;
        }
        if vi.name.is_empty() || !defined.insert(vi.name.clone()) {
            return Err(invalid(
                format!("input `{}` of subgraph `{name}`", vi.name),
                "is unnamed or defined twice",
            ));
        }
        inputs.push(vi.name.clone());
    }
    let checked = check_nodes(&g.node, opsets, &defined, outer, depth, prefix)?;
    let produced: BTreeSet<&String> = checked.iter().flat_map(|c| &c.node.outputs).collect();
    let mut outputs = Vec::new();
    for vi in &g.output {
        if !defined.contains(&vi.name)
            && !produced.contains(&vi.name)
            && !outer.iter().any(|s| s.contains(&vi.name))
        {
            return Err(invalid(
                format!("output `{}` of subgraph `{name}`", vi.name),
                "is not defined in the subgraph or an enclosing scope",
            ));
        }
        outputs.push(vi.name.clone());
    }
    let live = keep_live(checked, &outputs);
    // The outer values the live part reads: names it neither defines nor
    // produces that an enclosing scope defines (an unsupported node's
    // mentions may name anything; only those resolve outside).
    let produced: BTreeSet<&String> = live.nodes.iter().flat_map(|n| &n.outputs).collect();
    let free: BTreeSet<String> = live
        .reads
        .iter()
        .chain(&outputs)
        .filter(|v| !defined.contains(*v) && !produced.contains(v))
        .filter(|v| outer.iter().any(|s| s.contains(*v)))
        .cloned()
        .collect();
    Ok((
        Subgraph {
            name: name.to_string(),
            nodes: live.nodes,
            initializers,
            inputs,
            outputs,
        },
        free,
        live.unsupported,
    ))
}

/// Kahn's algorithm, preferring the lowest node index, so a graph already
/// in order keeps it. A node depends on its inputs and on the values its
/// subgraphs read; names neither produced here nor `defined` must come from
/// `outer`.
fn topological_order(
    nodes: &[Node],
    producer: &HashMap<String, usize>,
    defined: &BTreeSet<String>,
    outer: &[&BTreeSet<String>],
) -> Result<Vec<usize>, OnnxError> {
    let mut pending = vec![0usize; nodes.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, n) in nodes.iter().enumerate() {
        let deps: BTreeSet<&String> = n
            .inputs
            .iter()
            .chain(&n.implicit)
            .filter(|s| !s.is_empty())
            .collect();
        for input in deps {
            match producer.get(input) {
                Some(&p) if p == i => {
                    return Err(invalid(n.what(), format!("reads its own output `{input}`")))
                }
                Some(&p) => {
                    pending[i] += 1;
                    users[p].push(i);
                }
                None if defined.contains(input) || outer.iter().any(|s| s.contains(input)) => {}
                None => {
                    return Err(invalid(
                        n.what(),
                        format!(
                        "input `{input}` is not defined by any node, initializer or graph input"
                    ),
                    ))
                }
            }
        }
    }
    let mut ready: BinaryHeap<std::cmp::Reverse<usize>> = (0..nodes.len())
        .filter(|&i| pending[i] == 0)
        .map(std::cmp::Reverse)
        .collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        order.push(i);
        for &u in &users[i] {
            pending[u] -= 1;
            if pending[u] == 0 {
                ready.push(std::cmp::Reverse(u));
            }
        }
    }
    if order.len() != nodes.len() {
        let stuck: Vec<String> = (0..nodes.len())
            .filter(|&i| pending[i] > 0)
            .take(5)
            .map(|i| format!("`{}`", nodes[i].label))
            .collect();
        return Err(invalid(
            "the graph",
            format!("has a cycle through nodes {}", stuck.join(", ")),
        ));
    }
    Ok(order)
}

impl OnnxModel {
    /// The graph inputs (initializers excluded), in order.
    pub fn inputs(&self) -> &[InputInfo] {
        &self.model.inputs
    }

    /// The graph output names, in order.
    pub fn outputs(&self) -> &[String] {
        &self.model.outputs
    }

    /// The graph's name in the model.
    pub fn graph_name(&self) -> &str {
        &self.graph_name
    }

    /// The imported opsets, by domain (empty: `ai.onnx`).
    pub fn opsets(&self) -> &BTreeMap<String, i64> {
        &self.opsets
    }

    /// The number of nodes of the main graph, dead ones (which are not
    /// traced) included.
    pub fn node_count(&self) -> usize {
        self.node_count
    }

    /// The model as a function named `name`: inputs and outputs named as
    /// the graph's.
    pub fn function(&self, name: &str) -> FunctionDef {
        let model = Arc::clone(&self.model);
        let registry = Arc::new(Registry::standard());
        let inputs: Vec<String> = model.inputs.iter().map(|i| i.name.clone()).collect();
        let outputs = model.outputs.clone();
        function(name, move |cx, xs| {
            ops::trace_model(&model, &registry, cx, xs)
        })
        .inputs(inputs)
        .outputs(outputs)
    }

    /// The examples of one entry: each input's dims come from `given` when
    /// named there, else from the model (which must then be static).
    pub fn examples(&self, given: &BTreeMap<String, InputSpec>) -> Result<Vec<Example>, OnnxError> {
        for name in given.keys() {
            if !self.model.inputs.iter().any(|i| &i.name == name) {
                return Err(OnnxError::UnknownInput {
                    name: name.clone(),
                    available: self
                        .model
                        .inputs
                        .iter()
                        .map(|i| format!("`{}`", i.name))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        self.model
            .inputs
            .iter()
            .map(|info| example_for(info, given.get(&info.name)))
            .collect()
    }
}

fn example_for(info: &InputInfo, spec: Option<&InputSpec>) -> Result<Example, OnnxError> {
    let err = |message: String| OnnxError::Input {
        input: info.name.clone(),
        message,
    };
    let dtype = match (info.dtype, spec.and_then(|s| s.dtype)) {
        (Some(m), Some(g)) if m != g => {
            return Err(err(format!("the model declares {m}, but {g} was given")))
        }
        (Some(m), _) => m,
        (None, Some(g)) if info.elem_type == proto::data_type::UNDEFINED => g,
        (None, _) if info.elem_type != proto::data_type::UNDEFINED => {
            return Err(err(tensor::require_dtype(info.elem_type).unwrap_err()))
        }
        (None, _) => {
            return Err(err(format!(
                "the model gives no element type; give one with --input {}=DIMS:DTYPE",
                info.name
            )))
        }
    };
    let shape = match (spec, &info.dims) {
        (Some(s), Some(dims)) => {
            if s.dims.len() != dims.len() {
                return Err(err(format!(
                    "the model declares rank {}, but {} dims were given",
                    dims.len(),
                    s.dims.len()
                )));
            }
            for (axis, (d, &g)) in dims.iter().zip(&s.dims).enumerate() {
                if let Dim::Fixed(m) = d {
                    if *m != g {
                        return Err(err(format!(
                            "axis {axis} is fixed at {m} in the model, but {g} was given"
                        )));
                    }
                }
            }
            s.dims.clone()
        }
        (Some(s), None) => s.dims.clone(),
        (None, None) => {
            return Err(err(format!(
                "the model gives no shape; give one with --input {}=DIMS",
                info.name
            )))
        }
        (None, Some(dims)) => dims
            .iter()
            .enumerate()
            .map(|(axis, d)| match d {
                Dim::Fixed(v) => Ok(*v),
                other => Err(OnnxError::SymbolicDim {
                    input: info.name.clone(),
                    axis,
                    dim: match other {
                        Dim::Symbolic(p) => format!("symbolic (`{p}`)"),
                        _ => "unknown".to_string(),
                    },
                    example: format!(
                        "{}={}",
                        info.name,
                        dims.iter()
                            .map(|d| match d {
                                Dim::Fixed(v) => v.to_string(),
                                _ => "1".to_string(),
                            })
                            .collect::<Vec<_>>()
                            .join("x")
                    ),
                }),
            })
            .collect::<Result<Vec<usize>, _>>()?,
    };
    Ok(Example::meta(TensorMeta::new(dtype, shape)))
}

/// The kind name of an attribute type, for messages.
pub(crate) fn attribute_kind(t: i32) -> &'static str {
    match t {
        attribute_type::FLOAT => "FLOAT",
        attribute_type::INT => "INT",
        attribute_type::STRING => "STRING",
        attribute_type::TENSOR => "TENSOR",
        attribute_type::GRAPH => "GRAPH",
        attribute_type::FLOATS => "FLOATS",
        attribute_type::INTS => "INTS",
        attribute_type::STRINGS => "STRINGS",
        attribute_type::TENSORS => "TENSORS",
        attribute_type::GRAPHS => "GRAPHS",
        attribute_type::SPARSE_TENSOR => "SPARSE_TENSOR",
        attribute_type::SPARSE_TENSORS => "SPARSE_TENSORS",
        attribute_type::TYPE_PROTO => "TYPE_PROTO",
        attribute_type::TYPE_PROTOS => "TYPE_PROTOS",
        _ => "UNDEFINED",
    }
}

#[cfg(test)]
mod tests {
    use super::proto::{data_type, GraphProto, NodeProto, TensorProto, ValueInfoProto};
    use super::*;
    use crate::ir::Op;
    use ampoule_kernels::Registry;

    fn ints(name: &str, v: &[i64]) -> TensorProto {
        tensor::to_proto(name, &Tensor::from_vec(&[v.len()], v.to_vec()).unwrap())
    }

    fn graph(nodes: Vec<NodeProto>, inputs: Vec<ValueInfoProto>, outputs: &[&str]) -> GraphProto {
        GraphProto {
            name: "g".into(),
            node: nodes,
            input: inputs,
            output: outputs
                .iter()
                .map(|o| ValueInfoProto {
                    name: o.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn model(g: GraphProto, opset: i64) -> OnnxModel {
        load(&ModelProto::with_opset(g, opset).encode_to_vec()).unwrap()
    }

    /// Traces `m` for `inputs` and evaluates the trace with the reference
    /// interpreter; returns the outputs and the traced graph.
    fn run(m: &OnnxModel, inputs: &[Tensor]) -> (Vec<Tensor>, crate::ir::Graph) {
        let reg = Registry::standard();
        let ex: Vec<Example> = inputs.iter().map(Example::of).collect();
        let t = m.function("f").trace(&ex, &reg, &BTreeMap::new()).unwrap();
        crate::verify::verify(&t.graph, &reg).unwrap();
        let out = crate::interp::evaluate(&t.graph, &reg, inputs, &BTreeMap::new()).unwrap();
        (out, t.graph)
    }

    fn kernels(g: &crate::ir::Graph) -> Vec<String> {
        g.nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Kernel { kernel, .. } => Some(kernel.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn shape_chain_folds_to_a_reshape() {
        // y = Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1]))
        let mut g = graph(
            vec![
                NodeProto::new("shape", "Shape", &["x"], &["s"]),
                NodeProto::new("gather", "Gather", &["s", "zero"], &["n"]),
                NodeProto::new("unsq", "Unsqueeze", &["n", "axes"], &["n1"]),
                NodeProto::new("cat", "Concat", &["n1", "minus1"], &["target"])
                    .attr(AttributeProto::int("axis", 0)),
                NodeProto::new("reshape", "Reshape", &["x", "target"], &["y"]),
            ],
            vec![ValueInfoProto::tensor(
                "x",
                data_type::FLOAT,
                &[Err("batch"), Ok(3), Ok(4)],
            )],
            &["y"],
        );
        g.initializer = vec![
            tensor::to_proto("zero", &Tensor::scalar(0i64)),
            ints("axes", &[0]),
            ints("minus1", &[-1]),
        ];
        let m = model(g, 13);
        let x = Tensor::from_vec(&[2, 3, 4], (0..24).map(|i| i as f32).collect()).unwrap();
        let (out, graph) = run(&m, &[x]);
        assert_eq!(out[0].shape(), [2, 12]);
        assert_eq!(out[0].to_vec::<f32>().unwrap()[13], 13.0);
        assert!(kernels(&graph).is_empty(), "{:?}", kernels(&graph));
        let err = m.examples(&BTreeMap::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "graph input `x` axis 0 is symbolic (`batch`); give it a size with --input x=DIMS (e.g. x=1x3x4)"
        );
        let (name, spec) = InputSpec::parse("x=5x3x4").unwrap();
        let ex = m.examples(&BTreeMap::from([(name, spec)])).unwrap();
        assert_eq!(ex[0].meta, TensorMeta::new(DType::F32, [5, 3, 4]));
    }

    #[test]
    fn every_unsupported_node_is_listed() {
        let mut conv = NodeProto::new("conv1", "NonMaxSuppression", &["x", "x"], &["a"]);
        conv.domain = String::new();
        let mut custom = NodeProto::new("fused", "FusedGemm", &["a"], &["b"]);
        custom.domain = "com.microsoft".into();
        let gelu = NodeProto::new("", "Gelu", &["b"], &["y"]);
        let g = graph(
            vec![conv, custom, gelu],
            vec![ValueInfoProto::fixed("x", data_type::FLOAT, &[1, 4])],
            &["y"],
        );
        let err = load(&ModelProto::with_opset(g, 13).encode_to_vec()).unwrap_err();
        let OnnxError::Unsupported { nodes } = &err else {
            panic!("{err}")
        };
        assert_eq!(nodes.len(), 3);
        let text = err.to_string();
        assert!(
            text.starts_with("the model has 3 unsupported nodes:"),
            "{text}"
        );
        assert!(
            text.contains("node `conv1`: op `NonMaxSuppression` (domain `ai.onnx`, opset 13)"),
            "{text}"
        );
        assert!(
            text.contains(
                "node `fused`: op `FusedGemm` (domain `com.microsoft`, no opset imported)"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "node `#2`: op `Gelu` (domain `ai.onnx`, opset 13): supported from opset 20"
            ),
            "{text}"
        );
    }

    #[test]
    fn softmax_axis_semantics_follow_the_opset() {
        let node =
            || NodeProto::new("sm", "Softmax", &["x"], &["y"]).attr(AttributeProto::int("axis", 1));
        let x =
            Tensor::from_vec(&[2, 2, 2], vec![1.0f32, 2.0, 3.0, 4.0, 0.0, 0.0, 1.0, 1.0]).unwrap();
        let input = || vec![ValueInfoProto::fixed("x", data_type::FLOAT, &[2, 2, 2])];
        // Opset 13: softmax over axis 1 alone.
        let (new, _) = run(
            &model(graph(vec![node()], input(), &["y"]), 13),
            std::slice::from_ref(&x),
        );
        let v = new[0].to_vec::<f32>().unwrap();
        let e = |a: f32, b: f32| a.exp() / (a.exp() + b.exp());
        assert!((v[0] - e(1.0, 3.0)).abs() < 1e-6);
        // Opset 11: softmax over the flattened trailing [2, 2].
        let (old, _) = run(&model(graph(vec![node()], input(), &["y"]), 11), &[x]);
        let v = old[0].to_vec::<f32>().unwrap();
        let z: f32 = [1.0f32, 2.0, 3.0, 4.0].iter().map(|a| a.exp()).sum();
        assert!((v[0] - 1.0f32.exp() / z).abs() < 1e-6);
        let e1 = 1.0f32.exp();
        assert!((v[4] - 1.0 / (2.0 + 2.0 * e1)).abs() < 1e-6);
    }

    #[test]
    fn gemm_attributes() {
        // y = 2 * A^T @ B^T + 0.5 * C
        let mut g = graph(
            vec![NodeProto::new("gemm", "Gemm", &["a", "b", "c"], &["y"])
                .attr(AttributeProto::float("alpha", 2.0))
                .attr(AttributeProto::float("beta", 0.5))
                .attr(AttributeProto::int("transA", 1))
                .attr(AttributeProto::int("transB", 1))],
            vec![ValueInfoProto::fixed("a", data_type::FLOAT, &[3, 2])],
            &["y"],
        );
        let b = Tensor::from_vec(&[4, 3], (0..12).map(|i| i as f32).collect()).unwrap();
        let c = Tensor::from_vec(&[1, 4], vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
        g.initializer = vec![tensor::to_proto("b", &b), tensor::to_proto("c", &c)];
        let a = Tensor::from_vec(&[3, 2], vec![1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0]).unwrap();
        let (out, _) = run(&model(g, 13), std::slice::from_ref(&a));
        let (av, bv, cv) = (
            a.to_vec::<f32>().unwrap(),
            b.to_vec::<f32>().unwrap(),
            c.to_vec::<f32>().unwrap(),
        );
        let mut want = vec![0.0f32; 8];
        for i in 0..2 {
            for j in 0..4 {
                let dot: f32 = (0..3).map(|k| av[k * 2 + i] * bv[j * 3 + k]).sum();
                want[i * 4 + j] = 2.0 * dot + 0.5 * cv[j];
            }
        }
        assert_eq!(out[0].shape(), [2, 4]);
        assert_eq!(out[0].to_vec::<f32>().unwrap(), want);
    }

    #[test]
    fn unsqueeze_axes_attribute_became_an_input() {
        let input = || vec![ValueInfoProto::fixed("x", data_type::FLOAT, &[3])];
        let old = graph(
            vec![NodeProto::new("u", "Unsqueeze", &["x"], &["y"])
                .attr(AttributeProto::ints("axes", &[0, 2]))],
            input(),
            &["y"],
        );
        let x = Tensor::from_vec(&[3], vec![1.0f32, 2.0, 3.0]).unwrap();
        assert_eq!(
            run(&model(old, 11), std::slice::from_ref(&x)).0[0].shape(),
            [1, 3, 1]
        );
        let mut new = graph(
            vec![NodeProto::new("u", "Unsqueeze", &["x", "axes"], &["y"])],
            input(),
            &["y"],
        );
        new.initializer = vec![ints("axes", &[-1])];
        assert_eq!(
            run(&model(new.clone(), 13), std::slice::from_ref(&x)).0[0].shape(),
            [3, 1]
        );
        // At opset 13 the attribute form is gone: the axes input is required.
        let mut attr_only = new;
        attr_only.node[0].input.truncate(1);
        let reg = Registry::standard();
        let err = model(attr_only, 13)
            .function("f")
            .trace(&[Example::of(&x)], &reg, &BTreeMap::new())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "`node `u` (Unsqueeze)`: Unsqueeze needs axes"
        );
    }

    #[test]
    fn malformed_models_are_errors() {
        assert!(matches!(
            load(&[0x0a, 0xff, 0xff, 0xff]),
            Err(OnnxError::Decode(_))
        ));
        assert!(matches!(load(&[]), Err(OnnxError::NoGraph)));
        let input = || vec![ValueInfoProto::fixed("x", data_type::FLOAT, &[2])];
        let undefined = graph(
            vec![NodeProto::new("r", "Relu", &["nope"], &["y"])],
            input(),
            &["y"],
        );
        let err = load(&ModelProto::with_opset(undefined, 13).encode_to_vec()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node `r` (Relu): input `nope` is not defined by any node, initializer or graph input"
        );
        let cycle = graph(
            vec![
                NodeProto::new("a", "Relu", &["b_out"], &["a_out"]),
                NodeProto::new("b", "Relu", &["a_out"], &["b_out"]),
            ],
            input(),
            &["a_out"],
        );
        let err = load(&ModelProto::with_opset(cycle, 13).encode_to_vec()).unwrap_err();
        assert!(err.to_string().contains("cycle"), "{err}");
        let mut bad_init = graph(
            vec![NodeProto::new("r", "Relu", &["w"], &["y"])],
            vec![],
            &["y"],
        );
        bad_init.initializer = vec![TensorProto {
            name: "w".into(),
            dims: vec![4],
            data_type: data_type::FLOAT,
            raw_data: vec![0; 3],
            ..Default::default()
        }];
        let err = load(&ModelProto::with_opset(bad_init, 13).encode_to_vec()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "initializer `w`: dims [4] of f32 need 16 bytes but `raw_data` holds 3"
        );
    }

    #[test]
    fn out_of_order_nodes_are_sorted() {
        let g = graph(
            vec![
                NodeProto::new("second", "Neg", &["h"], &["y"]),
                NodeProto::new("first", "Exp", &["x"], &["h"]),
            ],
            vec![ValueInfoProto::fixed("x", data_type::FLOAT, &[1])],
            &["y"],
        );
        let x = Tensor::from_vec(&[1], vec![0.0f32]).unwrap();
        assert_eq!(
            run(&model(g, 13), &[x]).0[0].to_vec::<f32>().unwrap(),
            [-1.0]
        );
    }

    #[test]
    fn input_specs_parse() {
        let (n, s) = InputSpec::parse("ids=1x128:int64").unwrap();
        assert_eq!(
            (n.as_str(), s.dims.as_slice(), s.dtype),
            ("ids", &[1usize, 128][..], Some(DType::I64))
        );
        assert_eq!(InputSpec::parse("t=").unwrap().1.dims, Vec::<usize>::new());
        assert!(InputSpec::parse("x=1xq").is_err());
        assert!(InputSpec::parse("=1").is_err());
        assert!(InputSpec::parse("x=1:complex")
            .unwrap_err()
            .contains("unknown dtype"));
    }

    /// A one-node model over graph inputs `ins` and initializers `inits`,
    /// traced and evaluated; returns the node's outputs.
    fn one_node(
        node: NodeProto,
        ins: &[(&str, Tensor)],
        inits: &[(&str, Tensor)],
        opset: i64,
    ) -> Vec<Tensor> {
        let outs: Vec<&str> = node.output.iter().map(String::as_str).collect();
        let mut g = graph(
            vec![node.clone()],
            ins.iter()
                .map(|(n, t)| {
                    let dims: Vec<i64> = t.shape().iter().map(|&d| d as i64).collect();
                    ValueInfoProto::fixed(n, tensor::onnx_type(t.dtype()), &dims)
                })
                .collect(),
            &outs,
        );
        g.initializer = inits.iter().map(|(n, t)| tensor::to_proto(n, t)).collect();
        let inputs: Vec<Tensor> = ins.iter().map(|(_, t)| t.clone()).collect();
        run(&model(g, opset), &inputs).0
    }

    fn f(shape: &[usize], v: &[f32]) -> Tensor {
        Tensor::from_vec(shape, v.to_vec()).unwrap()
    }

    fn close(t: &Tensor, want: &[f32]) {
        let got = t.to_vec::<f32>().unwrap();
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (a, b) in got.iter().zip(want) {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{got:?} vs {want:?}"
            );
        }
    }

    /// The CenterCropPad expansion on a 2-D input: the pads and the crop
    /// window are computed from `Shape(x)` and a `shape` graph input through
    /// Max, Sub, Div, Concat and Add, which the importer evaluates when Pad
    /// and Slice need them, specializing the entry on `shape`.
    #[test]
    fn pads_derived_from_a_graph_input_are_evaluated_and_specialize() {
        let node =
            |name: &str, op: &str, ins: &[&str], outs: &[&str]| NodeProto::new(name, op, ins, outs);
        let mut g = graph(
            vec![
                node("xs", "Shape", &["x"], &["xs"]),
                node("mx", "Max", &["xs", "shape"], &["padded"]),
                node("amt", "Sub", &["padded", "xs"], &["amt"]),
                node("left", "Div", &["amt", "two"], &["left"]),
                node("right", "Sub", &["amt", "left"], &["right"]),
                node("pads", "Concat", &["left", "right"], &["pads"])
                    .attr(AttributeProto::int("axis", 0)),
                node("pad", "Pad", &["x", "pads"], &["p"]),
                node("ps", "Shape", &["p"], &["ps"]),
                node("diff", "Sub", &["ps", "shape"], &["diff"]),
                node("start", "Div", &["diff", "two"], &["start"]),
                node("end", "Add", &["start", "shape"], &["end"]),
                node("crop", "Slice", &["p", "start", "end"], &["y"]),
            ],
            vec![
                ValueInfoProto::fixed("x", data_type::FLOAT, &[3, 5]),
                ValueInfoProto::fixed("shape", data_type::INT64, &[2]),
            ],
            &["y"],
        );
        g.initializer = vec![ints("two", &[2])];
        let x = Tensor::from_vec(&[3, 5], (0..15).map(|i| i as f32).collect()).unwrap();
        let shape = Tensor::from_vec(&[2], vec![6i64, 2]).unwrap();
        let (out, graph) = run(&model(g, 18), &[x.clone(), shape]);
        // Directly: rows padded 3 -> 6 (1 before, 2 after), columns cropped
        // 5 -> 2 starting at (5 - 2) / 2 = 1.
        let xv = x.to_vec::<f32>().unwrap();
        let mut want = Vec::new();
        for r in 0..6usize {
            for c in 0..2usize {
                want.push(if (1..4).contains(&r) {
                    xv[(r - 1) * 5 + c + 1]
                } else {
                    0.0
                });
            }
        }
        assert_eq!(out[0].shape(), [6, 2]);
        assert_eq!(out[0].to_vec::<f32>().unwrap(), want);
        assert_eq!(
            graph.inputs[1].values,
            Some(vec![
                ampoule_host::ScalarValue::Int(6),
                ampoule_host::ScalarValue::Int(2)
            ])
        );
        assert_eq!(graph.inputs[0].values, None);
    }

    /// A value computed from a small graph input that no op needs as
    /// content stays traced: the entry is not specialized on the input.
    #[test]
    fn derivable_values_nobody_reads_do_not_specialize() {
        let g = graph(
            vec![
                NodeProto::new("xs", "Shape", &["x"], &["xs"]),
                NodeProto::new("mx", "Max", &["xs", "s"], &["m"]),
                NodeProto::new("sq", "Mul", &["x", "x"], &["y"]),
            ],
            vec![
                ValueInfoProto::fixed("x", data_type::FLOAT, &[4]),
                ValueInfoProto::fixed("s", data_type::INT64, &[1]),
            ],
            &["m", "y"],
        );
        let x = Tensor::from_vec(&[4], vec![1.0f32, -2.0, 3.0, 0.5]).unwrap();
        let s = Tensor::from_vec(&[1], vec![7i64]).unwrap();
        let (out, graph) = run(&model(g, 13), &[x, s]);
        assert_eq!(out[0].to_vec::<i64>().unwrap(), [7]);
        assert_eq!(out[1].to_vec::<f32>().unwrap(), [1.0, 4.0, 9.0, 0.25]);
        assert!(graph.inputs.iter().all(|i| i.values.is_none()));
    }

    /// MaxPool on uint8 with its Indices output, row-major and column-major,
    /// against a direct computation.
    #[test]
    fn max_pool_uint8_with_indices() {
        let (h, w) = (4usize, 5usize);
        let xv: Vec<u8> = (0..2 * h * w).map(|i| ((i * 37) % 11) as u8).collect();
        let x = Tensor::from_vec(&[1, 2, h, w], xv.clone()).unwrap();
        for order in [0i64, 1] {
            let outs = one_node(
                NodeProto::new("mp", "MaxPool", &["x"], &["y", "i"])
                    .attr(AttributeProto::ints("kernel_shape", &[2, 3]))
                    .attr(AttributeProto::ints("strides", &[2, 1]))
                    .attr(AttributeProto::ints("pads", &[0, 1, 1, 0]))
                    .attr(AttributeProto::int("storage_order", order)),
                &[("x", x.clone())],
                &[],
                12,
            );
            let (oh, ow) = ((h + 1 - 2) / 2 + 1, (w + 1 - 3) + 1);
            assert_eq!(outs[0].shape(), [1, 2, oh, ow]);
            let (mut want_y, mut want_i) = (Vec::new(), Vec::new());
            for p in 0..2 {
                for a in 0..oh {
                    for b in 0..ow {
                        let mut best: Option<(u8, usize)> = None;
                        for kr in 0..2 {
                            for kc in 0..3 {
                                let (r, c) = (a * 2 + kr, (b + kc) as i64 - 1);
                                if r >= h || c < 0 || c >= w as i64 {
                                    continue;
                                }
                                let c = c as usize;
                                let v = xv[p * h * w + r * w + c];
                                let at = if order == 1 {
                                    p * h * w + r + c * h
                                } else {
                                    p * h * w + r * w + c
                                };
                                if best.is_none_or(|(m, _)| v > m) {
                                    best = Some((v, at));
                                }
                            }
                        }
                        let (v, at) = best.unwrap();
                        want_y.push(v);
                        want_i.push(at as i64);
                    }
                }
            }
            assert_eq!(outs[0].to_vec::<u8>().unwrap(), want_y);
            assert_eq!(outs[1].to_vec::<i64>().unwrap(), want_i, "order {order}");
        }
    }

    /// BatchNormalization with training_mode = 1: batch statistics over all
    /// axes but the channels (population variance) and the running
    /// statistics, against a direct computation in f64.
    #[test]
    fn batch_norm_training_mode() {
        let (n, c, l) = (2usize, 3usize, 4usize);
        let xv: Vec<f32> = (0..n * c * l)
            .map(|i| ((i * 7) % 13) as f32 * 0.5 - 2.0)
            .collect();
        let x = Tensor::from_vec(&[n, c, l], xv.clone()).unwrap();
        let (scale, bias) = ([0.5f32, 1.0, 2.0], [0.0f32, -1.0, 0.25]);
        let (mean, var) = ([0.1f32, 0.2, 0.3], [1.0f32, 2.0, 0.5]);
        let (eps, momentum) = (1e-3f32, 0.8f32);
        let outs = one_node(
            NodeProto::new(
                "bn",
                "BatchNormalization",
                &["x", "s", "b", "m", "v"],
                &["y", "rm", "rv"],
            )
            .attr(AttributeProto::int("training_mode", 1))
            .attr(AttributeProto::float("epsilon", eps))
            .attr(AttributeProto::float("momentum", momentum)),
            &[("x", x)],
            &[
                ("s", f(&[3], &scale)),
                ("b", f(&[3], &bias)),
                ("m", f(&[3], &mean)),
                ("v", f(&[3], &var)),
            ],
            15,
        );
        let at = |i: usize, ch: usize, j: usize| f64::from(xv[(i * c + ch) * l + j]);
        let mut want_y = vec![0.0f32; n * c * l];
        let (mut want_rm, mut want_rv) = (Vec::new(), Vec::new());
        for ch in 0..c {
            let vals: Vec<f64> = (0..n)
                .flat_map(|i| (0..l).map(move |j| (i, j)))
                .map(|(i, j)| at(i, ch, j))
                .collect();
            let mu = vals.iter().sum::<f64>() / vals.len() as f64;
            let sigma2 = vals.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / vals.len() as f64;
            for i in 0..n {
                for j in 0..l {
                    let norm = (at(i, ch, j) - mu) / (sigma2 + f64::from(eps)).sqrt();
                    want_y[(i * c + ch) * l + j] =
                        (norm * f64::from(scale[ch]) + f64::from(bias[ch])) as f32;
                }
            }
            let m = f64::from(momentum);
            want_rm.push((f64::from(mean[ch]) * m + mu * (1.0 - m)) as f32);
            want_rv.push((f64::from(var[ch]) * m + sigma2 * (1.0 - m)) as f32);
        }
        close(&outs[0], &want_y);
        close(&outs[1], &want_rm);
        close(&outs[2], &want_rv);
    }

    /// Dropout in training mode: ratio 0 is the identity with an all-true
    /// mask; any other ratio is an error that says why.
    #[test]
    fn dropout_training_mode() {
        let x = f(&[2, 3], &[1.0, -2.0, 3.0, 0.5, 0.0, -1.5]);
        let node = || NodeProto::new("d", "Dropout", &["x", "r", "t"], &["y", "mask"]);
        let outs = one_node(
            node(),
            &[("x", x.clone())],
            &[
                ("r", Tensor::scalar(0.0f32)),
                ("t", Tensor::scalar(ampoule_kernels::Bool8(1))),
            ],
            13,
        );
        assert_eq!(outs[0].to_vec::<f32>().unwrap(), x.to_vec::<f32>().unwrap());
        assert_eq!(
            outs[1].to_vec::<ampoule_kernels::Bool8>().unwrap(),
            vec![ampoule_kernels::Bool8(1); 6]
        );
        let mut g = graph(
            vec![node()],
            vec![ValueInfoProto::fixed("x", data_type::FLOAT, &[2, 3])],
            &["y", "mask"],
        );
        g.initializer = vec![
            tensor::to_proto("r", &Tensor::scalar(0.25f32)),
            tensor::to_proto("t", &Tensor::scalar(ampoule_kernels::Bool8(1))),
        ];
        let err = model(g, 13)
            .function("f")
            .trace(&[Example::of(&x)], &Registry::standard(), &BTreeMap::new())
            .unwrap_err();
        assert!(
            err.to_string().contains("ratio 0.25") && err.to_string().contains("random mask"),
            "{err}"
        );
    }

    /// ReduceMax / ReduceMin on bool: any / all over the axes.
    #[test]
    fn reduce_max_min_on_bool() {
        let bits = [1u8, 0, 0, 0, 1, 1, 0, 0];
        let x = Tensor::from_vec(
            &[2, 4],
            bits.iter().map(|&b| ampoule_kernels::Bool8(b)).collect(),
        )
        .unwrap();
        for (op, any) in [("ReduceMax", true), ("ReduceMin", false)] {
            let outs = one_node(
                NodeProto::new("r", op, &["x"], &["y"])
                    .attr(AttributeProto::ints("axes", &[1]))
                    .attr(AttributeProto::int("keepdims", 0)),
                &[("x", x.clone())],
                &[],
                13,
            );
            let want: Vec<ampoule_kernels::Bool8> = bits
                .chunks(4)
                .map(|row| {
                    let v = if any {
                        row.iter().any(|&b| b == 1)
                    } else {
                        row.iter().all(|&b| b == 1)
                    };
                    ampoule_kernels::Bool8(u8::from(v))
                })
                .collect();
            assert_eq!(
                outs[0].to_vec::<ampoule_kernels::Bool8>().unwrap(),
                want,
                "{op}"
            );
        }
    }

    #[test]
    fn elementwise_ops() {
        let x = f(&[4], &[-2.0, -0.5, 0.5, 3.0]);
        let xv = x.to_vec::<f32>().unwrap();
        let map = |g: &dyn Fn(f32) -> f32| xv.iter().map(|&v| g(v)).collect::<Vec<f32>>();
        let pow = one_node(
            NodeProto::new("p", "Pow", &["x", "e"], &["y"]),
            &[("x", x.clone())],
            &[("e", Tensor::scalar(2i64))],
            13,
        );
        close(&pow[0], &map(&|v| v * v));
        let max = one_node(
            NodeProto::new("m", "Max", &["x", "a", "b"], &["y"]),
            &[("x", x.clone())],
            &[("a", Tensor::scalar(0.0f32)), ("b", f(&[1], &[1.0]))],
            13,
        );
        close(&max[0], &map(&|v| v.max(1.0)));
        let gelu = one_node(
            NodeProto::new("g", "Gelu", &["x"], &["y"])
                .attr(AttributeProto::string("approximate", "tanh")),
            &[("x", x.clone())],
            &[],
            20,
        );
        let c = (2.0f32 / std::f32::consts::PI).sqrt();
        close(
            &gelu[0],
            &map(&|v| 0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())),
        );
        let leaky = one_node(
            NodeProto::new("l", "LeakyRelu", &["x"], &["y"])
                .attr(AttributeProto::float("alpha", 0.1)),
            &[("x", x.clone())],
            &[],
            13,
        );
        close(&leaky[0], &map(&|v| if v < 0.0 { 0.1 * v } else { v }));
        let hswish = one_node(
            NodeProto::new("h", "HardSwish", &["x"], &["y"]),
            &[("x", x.clone())],
            &[],
            14,
        );
        close(&hswish[0], &map(&|v| v * (v / 6.0 + 0.5).clamp(0.0, 1.0)));
        let clip = one_node(
            NodeProto::new("c", "Clip", &["x"], &["y"])
                .attr(AttributeProto::float("min", -1.0))
                .attr(AttributeProto::float("max", 1.0)),
            &[("x", x.clone())],
            &[],
            6,
        );
        close(&clip[0], &map(&|v| v.clamp(-1.0, 1.0)));
        let lsm = one_node(
            NodeProto::new("s", "LogSoftmax", &["x"], &["y"]),
            &[("x", x.clone())],
            &[],
            13,
        );
        let z: f32 = xv.iter().map(|v| v.exp()).sum();
        close(&lsm[0], &map(&|v| v - z.ln()));
        let ints = Tensor::from_vec(&[3], vec![-3i64, 0, 4]).unwrap();
        let neg = one_node(
            NodeProto::new("n", "Neg", &["i"], &["y"]),
            &[("i", ints.clone())],
            &[],
            13,
        );
        assert_eq!(neg[0].to_vec::<i64>().unwrap(), [3, 0, -4]);
        let relu = one_node(
            NodeProto::new("r", "Relu", &["i"], &["y"]),
            &[("i", ints)],
            &[],
            13,
        );
        assert_eq!(relu[0].to_vec::<i64>().unwrap(), [0, 0, 4]);
    }

    #[test]
    fn boolean_ops() {
        use ampoule_kernels::Bool8;
        let a = Tensor::from_vec(&[4], vec![Bool8(0), Bool8(0), Bool8(1), Bool8(1)]).unwrap();
        let b = Tensor::from_vec(&[4], vec![Bool8(0), Bool8(1), Bool8(0), Bool8(1)]).unwrap();
        let bools = |t: &Tensor| {
            t.to_vec::<Bool8>()
                .unwrap()
                .iter()
                .map(|b| b.0)
                .collect::<Vec<u8>>()
        };
        let ins = [("a", a.clone()), ("b", b.clone())];
        assert_eq!(
            bools(
                &one_node(
                    NodeProto::new("x", "And", &["a", "b"], &["y"]),
                    &ins,
                    &[],
                    13
                )[0]
            ),
            [0, 0, 0, 1]
        );
        assert_eq!(
            bools(
                &one_node(
                    NodeProto::new("x", "Or", &["a", "b"], &["y"]),
                    &ins,
                    &[],
                    13
                )[0]
            ),
            [0, 1, 1, 1]
        );
        assert_eq!(
            bools(
                &one_node(
                    NodeProto::new("x", "Not", &["a"], &["y"]),
                    &ins[..1],
                    &[],
                    13
                )[0]
            ),
            [1, 1, 0, 0]
        );
        let nan = f(&[3], &[1.0, f32::NAN, 0.0]);
        assert_eq!(
            bools(
                &one_node(
                    NodeProto::new("x", "IsNaN", &["v"], &["y"]),
                    &[("v", nan)],
                    &[],
                    13
                )[0]
            ),
            [0, 1, 0]
        );
    }

    #[test]
    fn reductions_and_layout_ops() {
        let x = Tensor::from_vec(&[2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let xs = [("x", x.clone())];
        // ReduceSum takes axes as an input from opset 13.
        let sum = one_node(
            NodeProto::new("r", "ReduceSum", &["x", "ax"], &["y"])
                .attr(AttributeProto::int("keepdims", 0)),
            &xs,
            &[("ax", Tensor::from_vec(&[1], vec![-1i64]).unwrap())],
            13,
        );
        assert_eq!(sum[0].shape(), [2]);
        close(&sum[0], &[6.0, 15.0]);
        let noop = one_node(
            NodeProto::new("r", "ReduceSum", &["x"], &["y"])
                .attr(AttributeProto::int("noop_with_empty_axes", 1)),
            &xs,
            &[],
            13,
        );
        assert_eq!(noop[0].shape(), [2, 3]);
        // ReduceMax keeps the attribute until opset 18.
        let max = one_node(
            NodeProto::new("r", "ReduceMax", &["x"], &["y"])
                .attr(AttributeProto::ints("axes", &[0])),
            &xs,
            &[],
            13,
        );
        assert_eq!(max[0].shape(), [1, 3]);
        close(&max[0], &[4.0, 5.0, 6.0]);
        let max18 = one_node(
            NodeProto::new("r", "ReduceMax", &["x", "ax"], &["y"]),
            &xs,
            &[("ax", Tensor::from_vec(&[1], vec![0i64]).unwrap())],
            18,
        );
        close(&max18[0], &[4.0, 5.0, 6.0]);
        // Slice with a negative step, inputs since opset 10.
        let sl = one_node(
            NodeProto::new("s", "Slice", &["x", "st", "en", "ax", "sp"], &["y"]),
            &xs,
            &[
                ("st", Tensor::from_vec(&[1], vec![-1i64]).unwrap()),
                ("en", Tensor::from_vec(&[1], vec![i64::MIN]).unwrap()),
                ("ax", Tensor::from_vec(&[1], vec![1i64]).unwrap()),
                ("sp", Tensor::from_vec(&[1], vec![-2i64]).unwrap()),
            ],
            13,
        );
        close(&sl[0], &[3.0, 1.0, 6.0, 4.0]);
        // Gather with negative indices; Squeeze without axes; Expand.
        let g = one_node(
            NodeProto::new("g", "Gather", &["x", "i"], &["y"]).attr(AttributeProto::int("axis", 1)),
            &xs,
            &[("i", Tensor::from_vec(&[2], vec![-1i64, 0]).unwrap())],
            13,
        );
        close(&g[0], &[3.0, 1.0, 6.0, 4.0]);
        let col = f(&[3, 1, 1], &[1.0, 2.0, 3.0]);
        let sq = one_node(
            NodeProto::new("s", "Squeeze", &["c"], &["y"]),
            &[("c", col.clone())],
            &[],
            13,
        );
        assert_eq!(sq[0].shape(), [3]);
        let ex = one_node(
            NodeProto::new("e", "Expand", &["c", "s"], &["y"]),
            &[("c", col)],
            &[("s", Tensor::from_vec(&[4], vec![2i64, 1, 1, 2]).unwrap())],
            13,
        );
        assert_eq!(ex[0].shape(), [2, 3, 1, 2]);
        close(
            &ex[0],
            &[1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0],
        );
        // ConstantOfShape and Dropout's mask.
        let mut fill = tensor::to_proto("", &Tensor::from_vec(&[1], vec![7i64]).unwrap());
        fill.name.clear();
        let cos = one_node(
            NodeProto::new("c", "ConstantOfShape", &["s"], &["y"])
                .attr(AttributeProto::tensor("value", fill)),
            &[],
            &[("s", Tensor::from_vec(&[2], vec![2i64, 2]).unwrap())],
            13,
        );
        assert_eq!(cos[0].to_vec::<i64>().unwrap(), [7, 7, 7, 7]);
        let drop = one_node(
            NodeProto::new("d", "Dropout", &["x"], &["y", "mask"]),
            &xs,
            &[],
            13,
        );
        close(&drop[0], &x.to_vec::<f32>().unwrap());
        assert_eq!(drop[1].dtype(), DType::Bool);
    }

    #[test]
    fn matmul_of_vectors_follows_numpy() {
        let v = f(&[3], &[1.0, 2.0, 3.0]);
        let m = Tensor::from_vec(&[3, 2], vec![1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0]).unwrap();
        let vm = one_node(
            NodeProto::new("a", "MatMul", &["v", "m"], &["y"]),
            &[("v", v.clone()), ("m", m.clone())],
            &[],
            13,
        );
        assert_eq!(vm[0].shape(), [2]);
        close(&vm[0], &[4.0, 5.0]);
        let mt = Tensor::from_vec(&[2, 3], vec![1.0f32, 0.0, 1.0, 0.0, 1.0, 1.0]).unwrap();
        let mv = one_node(
            NodeProto::new("a", "MatMul", &["m", "v"], &["y"]),
            &[("m", mt), ("v", v.clone())],
            &[],
            13,
        );
        assert_eq!(mv[0].shape(), [2]);
        close(&mv[0], &[4.0, 5.0]);
        let vv = one_node(
            NodeProto::new("a", "MatMul", &["v", "w"], &["y"]),
            &[("v", v.clone()), ("w", v)],
            &[],
            13,
        );
        assert_eq!(vv[0].shape(), [] as [usize; 0]);
        close(&vv[0], &[14.0]);
    }

    #[test]
    fn split_tile_trilu_pad() {
        let x = Tensor::from_vec(&[2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let xs = [("x", x.clone())];
        let split = one_node(
            NodeProto::new("s", "Split", &["x", "sp"], &["a", "b"])
                .attr(AttributeProto::int("axis", 1)),
            &xs,
            &[("sp", Tensor::from_vec(&[2], vec![1i64, 2]).unwrap())],
            13,
        );
        close(&split[0], &[1.0, 4.0]);
        close(&split[1], &[2.0, 3.0, 5.0, 6.0]);
        let even = one_node(
            NodeProto::new("s", "Split", &["x"], &["a", "b"]),
            &xs,
            &[],
            13,
        );
        close(&even[1], &[4.0, 5.0, 6.0]);
        let uneven = one_node(
            NodeProto::new("s", "Split", &["x"], &["a", "b"])
                .attr(AttributeProto::int("axis", 1))
                .attr(AttributeProto::int("num_outputs", 2)),
            &xs,
            &[],
            18,
        );
        close(&uneven[0], &[1.0, 2.0, 4.0, 5.0]);
        close(&uneven[1], &[3.0, 6.0]);
        let tile = one_node(
            NodeProto::new("t", "Tile", &["x", "r"], &["y"]),
            &xs,
            &[("r", Tensor::from_vec(&[2], vec![2i64, 1]).unwrap())],
            13,
        );
        assert_eq!(tile[0].shape(), [4, 3]);
        close(
            &tile[0],
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        );
        let lower = one_node(
            NodeProto::new("t", "Trilu", &["x"], &["y"]).attr(AttributeProto::int("upper", 0)),
            &xs,
            &[],
            14,
        );
        close(&lower[0], &[1.0, 0.0, 0.0, 4.0, 5.0, 0.0]);
        let upper = one_node(
            NodeProto::new("t", "Trilu", &["x", "k"], &["y"]),
            &xs,
            &[("k", Tensor::scalar(1i64))],
            14,
        );
        close(&upper[0], &[0.0, 2.0, 3.0, 0.0, 0.0, 6.0]);
        let pad = one_node(
            NodeProto::new("p", "Pad", &["x", "pads", "v"], &["y"]),
            &xs,
            &[
                ("pads", Tensor::from_vec(&[4], vec![0i64, 1, 1, 0]).unwrap()),
                ("v", Tensor::scalar(9.0f32)),
            ],
            13,
        );
        assert_eq!(pad[0].shape(), [3, 4]);
        close(
            &pad[0],
            &[9.0, 1.0, 2.0, 3.0, 9.0, 4.0, 5.0, 6.0, 9.0, 9.0, 9.0, 9.0],
        );
        let sp = one_node(
            NodeProto::new("s", "Softplus", &["x"], &["y"]),
            &xs,
            &[],
            13,
        );
        close(
            &sp[0],
            &x.to_vec::<f32>()
                .unwrap()
                .iter()
                .map(|v| (v.exp() + 1.0).ln())
                .collect::<Vec<_>>(),
        );
    }

    /// The reason the reference `gather@1` gives for gathering `data` at
    /// `idx` along axis 0: computed here, straight from the kernel.
    fn gather_failure(data: &Tensor, idx: &Tensor) -> String {
        let bound = Registry::standard()
            .bind(
                "gather@1",
                &crate::ir::attrs([("axis", ampoule_kernels::AttrValue::Int(0))]),
            )
            .unwrap();
        let metas = [data.meta(), idx.meta()];
        let meta = bound.check(&metas).unwrap().remove(0);
        let mut outs = vec![Tensor::zeros(meta.dtype, &meta.shape).unwrap()];
        let err = bound
            .run(ampoule_kernels::Impl::Reference, &[data, idx], &mut outs)
            .unwrap_err();
        err.to_string()
    }

    fn trace_err(m: &OnnxModel, inputs: &[Tensor]) -> String {
        let reg = Registry::standard();
        let ex: Vec<Example> = inputs.iter().map(Example::of).collect();
        match m.function("f").trace(&ex, &reg, &BTreeMap::new()) {
            Ok(t) => panic!("the trace succeeded:\n{}", t.graph),
            Err(e) => e.to_string(),
        }
    }

    /// `y = If(yes)` whose branch adds `k = data[1]` (read only there) to
    /// `Relu(x)`; beside it dead nodes that would fail: a gather of `data`
    /// at index 5 (out of range) in the main graph and in the branch, and an
    /// op the importer does not support in both.
    fn dead_nodes_model(extra_outputs: &[&str]) -> GraphProto {
        let then_g = graph(
            vec![
                NodeProto::new("bad_inner", "Gather", &["data", "five"], &["dead_inner"]),
                NodeProto::new("nms_inner", "NonMaxSuppression", &["x", "x"], &["dead_nms"]),
                NodeProto::new("add_k", "Add", &["r", "k"], &["t"]),
            ],
            vec![],
            &["t"],
        );
        let else_g = graph(
            vec![NodeProto::new("neg", "Neg", &["r"], &["t2"])],
            vec![],
            &["t2"],
        );
        let mut outputs = vec!["y"];
        outputs.extend_from_slice(extra_outputs);
        let mut g = graph(
            vec![
                NodeProto::new("bad", "Gather", &["data", "five"], &["dead"]),
                NodeProto::new("nms", "NonMaxSuppression", &["dead", "x"], &["dead2"]),
                NodeProto::new("relu", "Relu", &["x"], &["r"]),
                NodeProto::new("k", "Gather", &["data", "one"], &["k"]),
                NodeProto::new("if", "If", &["yes"], &["y"])
                    .attr(AttributeProto::graph("then_branch", then_g))
                    .attr(AttributeProto::graph("else_branch", else_g)),
            ],
            vec![ValueInfoProto::fixed("x", data_type::FLOAT, &[4])],
            &outputs,
        );
        g.initializer = vec![
            tensor::to_proto("data", &f(&[2], &[1.0, 2.0])),
            tensor::to_proto("five", &Tensor::scalar(5i64)),
            tensor::to_proto("one", &Tensor::scalar(1i64)),
            tensor::to_proto("yes", &Tensor::scalar(ampoule_kernels::Bool8(1))),
        ];
        g
    }

    #[test]
    fn dead_nodes_are_not_traced_and_their_ops_need_no_support() {
        let data = f(&[2], &[1.0, 2.0]);
        let five = Tensor::scalar(5i64);
        // The dead gather would fail: that is what the model must survive.
        assert!(gather_failure(&data, &five).contains("out of range"));
        let m = model(dead_nodes_model(&[]), 13);
        assert_eq!(m.node_count(), 5);
        let xv = [-1.5f32, 0.0, 2.0, 3.5];
        let (out, graph) = run(&m, &[f(&[4], &xv)]);
        let want: Vec<f32> = xv.iter().map(|&v| v.max(0.0) + 2.0).collect();
        close(&out[0], &want);
        assert!(
            !kernels(&graph).contains(&"gather@1".to_string()),
            "{:?}",
            kernels(&graph)
        );
        // Made live by a graph output, the unsupported node is listed (and
        // only it: the branch's stays dead).
        let bytes = ModelProto::with_opset(dead_nodes_model(&["dead2"]), 13).encode_to_vec();
        let err = load(&bytes).unwrap_err();
        let OnnxError::Unsupported { nodes } = &err else {
            panic!("{err}")
        };
        let listed: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
        assert_eq!(listed, ["nms"]);
    }

    #[test]
    fn unsupported_live_nodes_are_listed_with_those_their_subgraphs_read() {
        // `scan` (unsupported, so its body is not checked) reads `u`, made by
        // another unsupported node, only inside its body; `lone` is dead.
        let body = graph(
            vec![NodeProto::new("id", "Identity", &["u"], &["v"])],
            vec![],
            &["v"],
        );
        let g = graph(
            vec![
                NodeProto::new("nms", "NonMaxSuppression", &["x", "x"], &["u"]),
                NodeProto::new("lone", "RoiAlign", &["x"], &["unused"]),
                NodeProto::new("scan", "Scan", &["x"], &["y"])
                    .attr(AttributeProto::graph("body", body)),
            ],
            vec![ValueInfoProto::fixed("x", data_type::FLOAT, &[4])],
            &["y"],
        );
        let err = load(&ModelProto::with_opset(g, 13).encode_to_vec()).unwrap_err();
        let OnnxError::Unsupported { nodes } = &err else {
            panic!("{err}")
        };
        let listed: Vec<&str> = nodes.iter().map(|n| n.node.as_str()).collect();
        assert_eq!(listed, ["nms", "scan"]);
    }

    #[test]
    fn a_live_node_failing_on_its_constants_is_an_error_naming_it() {
        let data = f(&[2], &[1.0, 2.0]);
        let five = Tensor::scalar(5i64);
        let mut g = graph(
            vec![
                NodeProto::new("pick", "Gather", &["data", "five"], &["p"]),
                NodeProto::new("add", "Add", &["x", "p"], &["y"]),
            ],
            vec![ValueInfoProto::fixed("x", data_type::FLOAT, &[4])],
            &["y"],
        );
        g.initializer = vec![
            tensor::to_proto("data", &data),
            tensor::to_proto("five", &five),
        ];
        let err = trace_err(&model(g, 13), &[f(&[4], &[0.0; 4])]);
        assert!(err.contains("node `pick` (Gather)"), "{err}");
        assert!(err.contains("known at compile time"), "{err}");
        assert!(err.contains(&gather_failure(&data, &five)), "{err}");
    }

    /// `y = If(a > 0)` (decided at run time): the then branch is `branch`,
    /// reading `x` and the initializers `data`, `five`, `dims`; the else
    /// branch is `Neg(x)`.
    fn runtime_if_model(branch: Vec<NodeProto>) -> OnnxModel {
        let then_g = graph(branch, vec![], &["t"]);
        let else_g = graph(
            vec![NodeProto::new("neg", "Neg", &["x"], &["t"])],
            vec![],
            &["t"],
        );
        let mut g = graph(
            vec![
                NodeProto::new("pos", "Greater", &["a", "zero"], &["c"]),
                NodeProto::new("if", "If", &["c"], &["y"])
                    .attr(AttributeProto::graph("then_branch", then_g))
                    .attr(AttributeProto::graph("else_branch", else_g)),
            ],
            vec![
                ValueInfoProto::fixed("x", data_type::FLOAT, &[4]),
                ValueInfoProto::fixed("a", data_type::FLOAT, &[]),
            ],
            &["y"],
        );
        g.initializer = vec![
            tensor::to_proto("zero", &Tensor::scalar(0.0f32)),
            tensor::to_proto("data", &f(&[2], &[1.0, 2.0])),
            tensor::to_proto("five", &Tensor::scalar(5i64)),
            tensor::to_proto("dims", &Tensor::from_vec(&[2], vec![2i64, 2]).unwrap()),
        ];
        model(g, 13)
    }

    #[test]
    fn a_failing_node_in_a_branch_decided_at_run_time_fails_only_if_it_runs() {
        let m = runtime_if_model(vec![
            NodeProto::new("pick", "Gather", &["data", "five"], &["p"]),
            NodeProto::new("add", "Add", &["x", "p"], &["t"]),
        ]);
        let xv = [-1.5f32, 0.0, 2.0, 3.5];
        let x = f(&[4], &xv);
        let reg = Registry::standard();
        let ex = [Example::of(&x), Example::of(&Tensor::scalar(-1.0f32))];
        let t = m.function("f").trace(&ex, &reg, &BTreeMap::new()).unwrap();
        crate::verify::verify(&t.graph, &reg).unwrap();
        let eval = |a: f32| {
            crate::interp::evaluate(
                &t.graph,
                &reg,
                &[x.clone(), Tensor::scalar(a)],
                &BTreeMap::new(),
            )
        };
        let neg: Vec<f32> = xv.iter().map(|v| -v).collect();
        close(&eval(-1.0).unwrap()[0], &neg);
        let err = eval(1.0).unwrap_err().to_string();
        let reason = gather_failure(&f(&[2], &[1.0, 2.0]), &Tensor::scalar(5i64));
        assert!(err.contains(&reason), "{err}");
    }

    #[test]
    fn a_value_needed_at_compile_time_whose_kernel_fails_gives_the_reason() {
        // In the branch, `Reshape`'s shape is `dims` gathered at [0, 5]:
        // traced as a launch (the branch may never run), then needed.
        let mut idx = NodeProto::new("idx", "Constant", &[], &["i"]);
        let i = Tensor::from_vec(&[2], vec![0i64, 5]).unwrap();
        idx.attribute
            .push(AttributeProto::tensor("value", tensor::to_proto("", &i)));
        let m = runtime_if_model(vec![
            idx,
            NodeProto::new("shape", "Gather", &["dims", "i"], &["s"]),
            NodeProto::new("reshape", "Reshape", &["x", "s"], &["t"]),
        ]);
        let err = trace_err(&m, &[f(&[4], &[0.0; 4]), Tensor::scalar(1.0f32)]);
        let dims = Tensor::from_vec(&[2], vec![2i64, 2]).unwrap();
        assert!(err.contains("node `reshape` (Reshape)"), "{err}");
        let reason = gather_failure(&dims, &i);
        assert!(
            err.contains(&format!(
                "the shape input must be known at compile time, but computing it fails: node `shape` (Gather): {reason}"
            )),
            "{err}"
        );
    }

    mod robustness {
        //! Model bytes are untrusted: no mutation of a valid model and no
        //! random graph of supported ops may make loading or tracing panic.

        use super::*;
        use proptest::prelude::*;

        fn pool_model(nodes: Vec<NodeProto>) -> ModelProto {
            let mut g = graph(
                nodes,
                vec![ValueInfoProto::fixed("x", data_type::FLOAT, &[2, 3, 4])],
                &["out"],
            );
            g.initializer = vec![
                ints("i0", &[0]),
                ints("i2", &[1, -1]),
                tensor::to_proto("one", &Tensor::scalar(1i64)),
                tensor::to_proto(
                    "f4",
                    &Tensor::from_vec(&[4], vec![0.5f32, -1.0, 2.0, 0.0]).unwrap(),
                ),
                tensor::to_proto("big", &Tensor::from_vec(&[1], vec![i64::MAX]).unwrap()),
            ];
            ModelProto::with_opset(g, 13)
        }

        fn attr_strategy() -> impl Strategy<Value = AttributeProto> {
            let name = prop::sample::select(vec![
                "axis",
                "axes",
                "perm",
                "keepdims",
                "to",
                "transA",
                "transB",
                "alpha",
                "starts",
                "ends",
                "allowzero",
                "value",
                "value_ints",
                "epsilon",
                "start",
                "end",
            ]);
            (
                name,
                any::<i8>(),
                prop::collection::vec(-4i64..5, 0..4),
                0u8..4,
            )
                .prop_map(|(name, i, v, kind)| match kind {
                    0 => AttributeProto::int(name, i64::from(i)),
                    1 => AttributeProto::ints(name, &v),
                    2 => AttributeProto::float(name, f32::from(i)),
                    _ => AttributeProto::tensor(
                        name,
                        TensorProto {
                            dims: v.iter().map(|d| d.rem_euclid(3)).collect(),
                            data_type: data_type::INT64,
                            int64_data: vec![i64::from(i); 1],
                            ..Default::default()
                        },
                    ),
                })
        }

        fn node_strategy(i: usize) -> impl Strategy<Value = NodeProto> {
            let op = prop::sample::select(supported_ops());
            let names = prop::collection::vec(0usize..(6 + i), 0..4);
            let attrs = prop::collection::vec(attr_strategy(), 0..3);
            (op, names, attrs).prop_map(move |(op, picks, attrs)| {
                let pool = ["x", "i0", "i2", "one", "f4", "big"];
                let inputs: Vec<String> = picks
                    .iter()
                    .map(|&p| match pool.get(p) {
                        Some(n) => n.to_string(),
                        None => format!("v{}", p - pool.len()),
                    })
                    .collect();
                let mut n = NodeProto {
                    name: format!("n{i}"),
                    op_type: op.to_string(),
                    input: inputs,
                    output: vec![format!("v{i}")],
                    ..Default::default()
                };
                let mut seen = BTreeSet::new();
                for a in attrs {
                    if seen.insert(a.name.clone()) {
                        n.attribute.push(a);
                    }
                }
                n
            })
        }

        fn try_trace(bytes: &[u8]) {
            let Ok(m) = load(bytes) else { return };
            let Ok(ex) = m.examples(&BTreeMap::new()) else {
                return;
            };
            let _ = m
                .function("f")
                .trace(&ex, &Registry::standard(), &BTreeMap::new());
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn random_graphs_of_supported_ops_never_panic(
                nodes in (1usize..6).prop_flat_map(|n| {
                    (0..n).map(node_strategy).collect::<Vec<_>>()
                })
            ) {
                let mut nodes = nodes;
                let last = nodes.len() - 1;
                nodes[last].output = vec!["out".into()];
                try_trace(&pool_model(nodes).encode_to_vec());
            }

            #[test]
            fn mutated_model_bytes_never_panic(
                edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                cut in any::<prop::sample::Index>(),
            ) {
                let nodes = vec![
                    NodeProto::new("s", "Shape", &["x"], &["s"]),
                    NodeProto::new("g", "Gather", &["s", "i0"], &["d"]),
                    NodeProto::new("c", "Concat", &["d", "i2"], &["t"]).attr(AttributeProto::int("axis", 0)),
                    NodeProto::new("r", "Reshape", &["x", "t"], &["out"]),
                ];
                let mut bytes = pool_model(nodes).encode_to_vec();
                for (at, b) in edits {
                    let i = at.index(bytes.len());
                    bytes[i] = b;
                }
                try_trace(&bytes);
                bytes.truncate(cut.index(bytes.len()));
                try_trace(&bytes);
            }
        }
    }
}
