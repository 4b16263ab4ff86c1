//! Componentizes core modules against the contract in `wit/runtime.wit`.
//!
//! [`componentize`] embeds the `wrapper` world's metadata into a core module
//! (a `component-type` custom section) and lets `wit-component` build the
//! component. `wit-component` checks that the module's imports and exports
//! are exactly ones the world describes, with the canonical ABI's signatures
//! and names (import module `ampoule:runtime/host@0.1.0`, export `init`,
//! `run`, `cabi_realloc`, `memory`), and validates the component it emits.
//! Its output is deterministic.
//!
//! [`componentize_with_wit`] does the same against another world, one that
//! may import the contract and more. It exists to build hostile test
//! wrappers (a component that imports something outside the contract, which
//! the host must refuse at open); generated wrappers never use it.

use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::{PackageId, Resolve, WorldId};

use crate::error::{BoxError, EmitError};
use crate::WIT;

/// The world generated wrappers target.
pub const WORLD: &str = "wrapper";

/// Builds a component from `core_module` for the contract's `wrapper` world.
pub fn componentize(core_module: &[u8]) -> Result<Vec<u8>, EmitError> {
    let (resolve, contract) = contract()?;
    let world = select(&resolve, contract, WORLD)?;
    encode(core_module, &resolve, world, WORLD)
}

/// Builds a component from `core_module` for world `world` of `wit_source`, a
/// WIT package that may `import ampoule:runtime/host@0.1.0` (the contract is
/// in scope) and anything else. For test corpora only.
pub fn componentize_with_wit(
    core_module: &[u8],
    wit_source: &str,
    world: &str,
) -> Result<Vec<u8>, EmitError> {
    let (mut resolve, _) = contract()?;
    let pkg = resolve
        .push_str("extra.wit", wit_source)
        .map_err(|e| EmitError::Wit {
            what: "the extra WIT source does not parse".into(),
            source: e.into(),
        })?;
    let id = select(&resolve, pkg, world)?;
    encode(core_module, &resolve, id, world)
}

fn contract() -> Result<(Resolve, PackageId), EmitError> {
    let mut resolve = Resolve::new();
    let pkg = resolve
        .push_str("wit/runtime.wit", WIT)
        .map_err(|e| EmitError::Wit {
            what: "the contract `wit/runtime.wit` does not parse".into(),
            source: e.into(),
        })?;
    Ok((resolve, pkg))
}

fn select(resolve: &Resolve, pkg: PackageId, world: &str) -> Result<WorldId, EmitError> {
    resolve
        .select_world(&[pkg], Some(world))
        .map_err(|e| EmitError::Wit {
            what: format!("no world `{world}`"),
            source: e.into(),
        })
}

fn encode(
    core_module: &[u8],
    resolve: &Resolve,
    world: WorldId,
    world_name: &str,
) -> Result<Vec<u8>, EmitError> {
    let refused = |source: BoxError| EmitError::Componentize {
        world: world_name.to_owned(),
        source,
    };
    let mut module = core_module.to_vec();
    wit_component::embed_component_metadata(&mut module, resolve, world, StringEncoding::UTF8)
        .map_err(|e| refused(e.into()))?;
    ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .and_then(|mut encoder| encoder.encode())
        .map_err(|e| refused(e.into()))
}
