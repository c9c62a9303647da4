//! The wiring: what a node offers its handler instances, and how one
//! request's store lends it to the WIT host traits.
//!
//! Each capability implements its own WIT interface next to its code
//! (`locks/wit.rs`, `storage/wit.rs`, …) on a view of its own state; this
//! module only gathers the capabilities and adds every interface to a
//! linker.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker, ResourceTable};

use crate::bindings::types;
use crate::config::NodeConfig;
use crate::edge::EdgeCache;
use crate::locks::Locks;
use crate::metadata::Metadata;
use crate::metrics::Metrics;
use crate::signer::Signer;
use crate::storage::{BlobStore, HandOff};

/// Everything stateful a node offers its handler instances.
pub struct Services {
    /// `ncps:edge/locks`.
    pub locks: Locks,
    /// `ncps:edge/storage`.
    pub storage: Arc<dyn BlobStore>,
    /// `ncps:edge/metadata`, with batched access times.
    pub metadata: Metadata,
    /// `ncps:edge/signer`.
    pub signer: Signer,
    /// `ncps:edge/config`: settings and upstreams.
    pub config: NodeConfig,
    /// `ncps:edge/metrics` and the node's own measurements.
    pub metrics: Arc<Metrics>,
    /// `ncps:edge/edge-cache`: the node's edge tier.
    pub edge: Arc<EdgeCache>,
    /// The node's view of the other nodes of the cache.
    pub cluster: Arc<crate::cluster::Cluster>,
}

/// What one request's store lends to the host traits: its resource table
/// (where leases, writers and streams live, so they are dropped — and
/// released — with the instance), the node's services, and where a body
/// handed off to the host goes.
pub struct HostView<'a> {
    /// The store's resource table.
    pub table: &'a mut ResourceTable,
    /// The node's services.
    pub services: &'a Services,
    /// The body of this request's response, when the instance handed one
    /// off (`storage.hand-off`).
    pub hand_off: &'a HandOff,
}

/// Implemented by a store's data to lend a [`HostView`].
pub trait NcpsEdgeView: Send {
    /// Borrow the view.
    fn ncps_edge(&mut self) -> HostView<'_>;
}

/// `ncps:edge/types` has no state: only the conversion of host errors.
pub(crate) struct TypesView;

impl HasData for TypesView {
    type Data<'a> = TypesView;
}

crate::error::wit_errors!(TypesView);

/// Add every `ncps:edge` import to `linker`.
pub fn add_to_linker<T: NcpsEdgeView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    types::add_to_linker::<T, TypesView>(linker, |_| TypesView)?;
    crate::locks::wit::add_to_linker(linker)?;
    crate::storage::wit::add_to_linker(linker)?;
    crate::metadata::wit::add_to_linker(linker)?;
    crate::signer::wit::add_to_linker(linker)?;
    crate::config::wit::add_to_linker(linker)?;
    crate::metrics::wit::add_to_linker(linker)?;
    crate::edge::wit::add_to_linker(linker)?;
    crate::log::add_to_linker(linker)
}
