//! Composition of `handler.wasm` with the Spin adapter, and the check that
//! the result runs on Spin 3.1 or later.
//!
//! [`compose`] plugs every `ncps:edge` export of the adapter into the
//! handler's imports with `wac-graph` (the version Spin 3.4-3.6 compose
//! component dependencies with), the way `wac plug` does. [`check_world`]
//! reads the composed component's top-level imports and exports with
//! `wasmparser` and refuses anything a Spin host does not provide.
#![deny(missing_docs)]

use wac_graph::{plug, types::Package, CompositionGraph, EncodeOptions};
use wasmparser::{Parser, Payload, Validator, WasmFeatures};

/// Why a composition or a check failed.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// A component could not be read or composed.
    #[error("composition failed: {0}")]
    Compose(String),
    /// The composed component is not valid.
    #[error("the composed component is not valid: {0}")]
    Invalid(String),
    /// An older parser, like the oldest supported Spin's, refuses it.
    #[error("wasmparser {OLD_WASMPARSER} (before Spin 3.1) refuses the component: {0}")]
    TooNew(String),
    /// It imports something Spin does not provide.
    #[error("imports that Spin 3.1+ does not provide: {0:?}")]
    ForeignImports(Vec<String>),
    /// It does not export the HTTP handler Spin calls.
    #[error("no wasi:http/incoming-handler@0.2.x export (exports: {0:?})")]
    NoHandler(Vec<String>),
}

/// Plug `adapter` into `handler`: one component whose imports are the
/// handler's WASI imports and the adapter's Spin imports.
pub fn compose(handler: &[u8], adapter: &[u8]) -> Result<Vec<u8>, ComposeError> {
    let failed = |e: anyhow::Error| ComposeError::Compose(format!("{e:#}"));
    let mut graph = CompositionGraph::new();
    let socket = Package::from_bytes("ncps:handler", None, handler.to_vec(), graph.types_mut()).map_err(failed)?;
    let socket = graph.register_package(socket).map_err(|e| failed(e.into()))?;
    let adapter =
        Package::from_bytes("ncps:spin-adapter", None, adapter.to_vec(), graph.types_mut()).map_err(failed)?;
    let adapter = graph.register_package(adapter).map_err(|e| failed(e.into()))?;
    plug(&mut graph, vec![adapter], socket).map_err(|e| failed(e.into()))?;
    graph.encode(EncodeOptions::default()).map_err(|e| failed(e.into()))
}

/// Interfaces a Spin 3.1+ host provides, from Spin's published WIT (the
/// `spin-sdk` 5.2 crate's `wit/deps`): `(package, interface, version)`,
/// where a version ending in `.x` matches any patch release.
pub const SPIN_HOST_INTERFACES: &[(&str, &str, &str)] = &[
    ("wasi:cli", "environment", "0.2.x"),
    ("wasi:cli", "exit", "0.2.x"),
    ("wasi:cli", "stdin", "0.2.x"),
    ("wasi:cli", "stdout", "0.2.x"),
    ("wasi:cli", "stderr", "0.2.x"),
    ("wasi:cli", "terminal-input", "0.2.x"),
    ("wasi:cli", "terminal-output", "0.2.x"),
    ("wasi:cli", "terminal-stdin", "0.2.x"),
    ("wasi:cli", "terminal-stdout", "0.2.x"),
    ("wasi:cli", "terminal-stderr", "0.2.x"),
    ("wasi:clocks", "monotonic-clock", "0.2.x"),
    ("wasi:clocks", "wall-clock", "0.2.x"),
    ("wasi:filesystem", "types", "0.2.x"),
    ("wasi:filesystem", "preopens", "0.2.x"),
    ("wasi:io", "error", "0.2.x"),
    ("wasi:io", "poll", "0.2.x"),
    ("wasi:io", "streams", "0.2.x"),
    ("wasi:random", "random", "0.2.x"),
    ("wasi:random", "insecure", "0.2.x"),
    ("wasi:random", "insecure-seed", "0.2.x"),
    ("wasi:sockets", "network", "0.2.x"),
    ("wasi:sockets", "instance-network", "0.2.x"),
    ("wasi:sockets", "tcp", "0.2.x"),
    ("wasi:sockets", "tcp-create-socket", "0.2.x"),
    ("wasi:sockets", "udp", "0.2.x"),
    ("wasi:sockets", "udp-create-socket", "0.2.x"),
    ("wasi:sockets", "ip-name-lookup", "0.2.x"),
    ("wasi:http", "types", "0.2.x"),
    ("wasi:http", "outgoing-handler", "0.2.x"),
    ("fermyon:spin", "variables", "2.0.0"),
    ("fermyon:spin", "redis", "2.0.0"),
    ("fermyon:spin", "postgres", "2.0.0"),
    ("fermyon:spin", "mysql", "2.0.0"),
    ("fermyon:spin", "rdbms-types", "2.0.0"),
    ("fermyon:spin", "sqlite", "2.0.0"),
    ("fermyon:spin", "key-value", "2.0.0"),
    ("wasi:keyvalue", "store", "0.2.0-draft2"),
    ("wasi:keyvalue", "batch", "0.2.0-draft2"),
    ("spin:postgres", "postgres", "3.0.0"),
];

/// `package/interface@version` split into its parts.
fn split_name(name: &str) -> Option<(&str, &str, &str)> {
    let (path, version) = name.split_once('@')?;
    let (package, interface) = path.split_once('/')?;
    Some((package, interface, version))
}

fn version_matches(pattern: &str, version: &str) -> bool {
    match pattern.strip_suffix(".x") {
        Some(prefix) => version.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('.')),
        None => pattern == version,
    }
}

/// Whether a Spin 3.1+ host provides the import `name`.
pub fn spin_provides(name: &str) -> bool {
    split_name(name).is_some_and(|(package, interface, version)| {
        SPIN_HOST_INTERFACES.iter().any(|(p, i, v)| *p == package && *i == interface && version_matches(v, version))
    })
}

/// What a component imports and exports at its top level.
#[derive(Debug, Clone, Default)]
pub struct World {
    /// Import names, e.g. `wasi:io/streams@0.2.12`.
    pub imports: Vec<String>,
    /// Export names, e.g. `wasi:http/incoming-handler@0.2.12`.
    pub exports: Vec<String>,
}

/// Validate `component` and read its top-level world.
pub fn world_of(component: &[u8]) -> Result<World, ComposeError> {
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(component)
        .map_err(|e| ComposeError::Invalid(e.to_string()))?;
    let mut world = World::default();
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(component) {
        match payload.map_err(|e| ComposeError::Invalid(e.to_string()))? {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    let import = import.map_err(|e| ComposeError::Invalid(e.to_string()))?;
                    world.imports.push(import.name.0.to_owned());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    let export = export.map_err(|e| ComposeError::Invalid(e.to_string()))?;
                    world.exports.push(export.name.0.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok(world)
}

/// The older `wasmparser` every component must satisfy.
pub const OLD_WASMPARSER: &str = "0.219.2";

/// Validate `component` with [`OLD_WASMPARSER`], from the wasm-tools of
/// Wasmtime 27, older than any Spin 3.1+ runtime.
pub fn check_old_parser(component: &[u8]) -> Result<(), ComposeError> {
    wasmparser_old::Validator::new_with_features(wasmparser_old::WasmFeatures::default())
        .validate_all(component)
        .map(|_| ())
        .map_err(|e| ComposeError::TooNew(e.to_string()))
}

/// Check that Spin 3.1+ can run `component`: an older parser takes it,
/// every import is a Spin host interface and it exports
/// `wasi:http/incoming-handler@0.2.x`.
pub fn check_world(component: &[u8]) -> Result<World, ComposeError> {
    let world = world_of(component)?;
    check_old_parser(component)?;
    let foreign: Vec<String> = world.imports.iter().filter(|i| !spin_provides(i)).cloned().collect();
    if !foreign.is_empty() {
        return Err(ComposeError::ForeignImports(foreign));
    }
    let handler = world.exports.iter().any(|e| {
        split_name(e)
            .is_some_and(|(p, i, v)| p == "wasi:http" && i == "incoming-handler" && version_matches("0.2.x", v))
    });
    if !handler {
        return Err(ComposeError::NoHandler(world.exports.clone()));
    }
    Ok(world)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_spin_interfaces_by_semver_track() {
        assert!(spin_provides("wasi:io/streams@0.2.12"));
        assert!(spin_provides("wasi:cli/environment@0.2.6"));
        assert!(spin_provides("fermyon:spin/redis@2.0.0"));
        assert!(!spin_provides("fermyon:spin/redis@2.1.0"));
        assert!(!spin_provides("wasi:io/streams@0.3.0"));
        assert!(!spin_provides("ncps:edge/locks@0.1.0"));
        assert!(!spin_provides("wasi:http/types"));
    }
}
