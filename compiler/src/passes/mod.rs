//! Passes over the IR, and the pipeline that runs them.
//!
//! Each pass keeps the invariants of [`crate::verify`], and [`optimize`]
//! checks that after every pass: a verifier failure after a pass is a
//! compiler bug and is reported with the pass's name and every problem.
//!
//! The pipeline, in order:
//! 1. [`fold::fold_constants`]: live nodes whose inputs are all constants
//!    run at compile time on the reference kernels (dead ones are left for
//!    step 2, so a dead node that would fail does not fail the compile);
//! 2. [`dce::eliminate_dead_code`]: nodes no output depends on are removed;
//! 3. [`outputs::materialize_outputs`]: every output gets storage of its own
//!    (a `copy@1` where an output is an input, a global, a constant, a view,
//!    or the same value as an earlier output);
//! 4. [`constants::constants_to_globals`]: remaining constants become
//!    embedded globals (a wrapper cannot create data);
//! 5. [`dce::eliminate_dead_code`] again;
//! 6. [`hoist::hoist_weight_only`]: work that reads no input moves to the
//!    front, where lowering runs it once per instance in `init`.
//!
//! Then, for entries without symbolic dims (whose shape expressions are
//! keyed by value, and whose ops may move data on other shapes, or choose
//! another layout), [`layout::pack_linear_weights`] gives products of a few
//! rows their weight in column panels (`panels@1`, which
//! [`hoist::hoist_weight_only`], run again, moves into `init`),
//! [`views::launches_to_views`] turns launches that move no data into views,
//! and [`fuse::fuse_elementwise`] merges elementwise chains into `fused@1`
//! launches. Memory planning ([`plan::plan_memory`]) runs on
//! the result; it does not change the graph.

pub mod constants;
pub mod dce;
pub mod fold;
pub mod fuse;
pub mod hoist;
pub mod layout;
pub mod outputs;
pub mod plan;
pub mod views;

use ampoule_kernels::{KernelError, Registry};

use crate::ir::Graph;
use crate::verify::{verify, VerifyErrors};

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// The graph given to the pipeline is invalid.
    #[error("the traced graph is invalid: {0}")]
    Input(VerifyErrors),
    /// A pass broke an invariant: a compiler bug.
    #[error("compiler bug: the IR is invalid after pass `{pass}`: {errors}")]
    Verify {
        pass: &'static str,
        errors: VerifyErrors,
    },
    /// A live node whose inputs are all constants failed on them (e.g. a
    /// constant index out of range in `gather`): every call would fail.
    /// Dead nodes are never folded, so their failures are not errors.
    #[error(
        "node {node} of the traced graph reads only constants and an output needs it, \
         but it fails on them, so every call would fail: {source}; \
         fix the constant operands (or stop using the node's result)"
    )]
    Fold {
        node: usize,
        #[source]
        source: KernelError,
    },
    #[error("pass `{pass}`: {message}")]
    Other { pass: &'static str, message: String },
}

/// Runs the pipeline in the module doc and verifies after every pass.
pub fn optimize(mut graph: Graph, registry: &Registry) -> Result<Graph, PassError> {
    verify(&graph, registry).map_err(PassError::Input)?;
    let check = |g: &Graph, pass: &'static str| {
        verify(g, registry).map_err(|errors| PassError::Verify { pass, errors })
    };

    let folded = fold::fold_constants(&mut graph, registry)?;
    check(&graph, "fold")?;
    let removed = dce::eliminate_dead_code(&mut graph);
    check(&graph, "dce")?;
    let copies = outputs::materialize_outputs(&mut graph, registry)?;
    check(&graph, "materialize_outputs")?;
    let constants = constants::constants_to_globals(&mut graph);
    check(&graph, "constants_to_globals")?;
    dce::eliminate_dead_code(&mut graph);
    check(&graph, "dce")?;
    let hoisted = hoist::hoist_weight_only(&mut graph);
    check(&graph, "hoist_weight_only")?;
    tracing::debug!(
        folded,
        removed,
        copies,
        constants,
        hoisted,
        nodes = graph.nodes.len(),
        "compiler.optimize"
    );
    Ok(graph)
}
