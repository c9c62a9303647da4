//! Host services of ncps-edge.
//!
//! The handler component reaches state only through the `ncps:edge` WIT
//! imports. This crate implements them, one module per capability —
//! [`locks`], [`storage`], [`metadata`], [`signer`], [`config`],
//! [`metrics`], [`log`], [`edge`] — each with its backends as sub-modules behind one
//! trait and its WIT implementation in its own `wit` module. [`cluster`]
//! is what the nodes of one cache share below them (the channel, purges,
//! downloads to follow). [`pg_link`] is the node's PostgreSQL connections,
//! shared by the metadata store, the locks and the channel. [`services`]
//! gathers them for a wasmtime [`Linker`](wasmtime::component::Linker).
#![deny(missing_docs)]

pub mod bindings;
pub mod breaker;
pub mod cluster;
pub mod config;
pub mod edge;
pub mod error;
pub mod locks;
pub mod log;
pub mod metadata;
pub mod metrics;
pub mod pg_link;
pub mod services;
pub mod signer;
pub mod storage;

pub use error::{Error, HostError, HostResult, Result};
pub use services::{add_to_linker, HostView, NcpsEdgeView, Services};
