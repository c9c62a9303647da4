//! Host services of ncps-edge.
//!
//! The handler component reaches state only through the `ncps:edge` WIT
//! imports. This crate implements them: one module per capability
//! ([`locks`], [`storage`], [`metadata`], [`signer`]), one sub-module per
//! backend, each behind one trait, and [`host`] which binds them to the WIT
//! interfaces for a wasmtime [`Linker`](wasmtime::component::Linker).
#![deny(missing_docs)]

pub mod access;
pub mod bindings;
pub mod error;
pub mod host;
pub mod locks;
pub mod metadata;
pub mod metrics;
pub mod signer;
pub mod storage;

pub use error::{Error, Result};
pub use host::{add_to_linker, HostView, NcpsEdgeView, Services, Settings, Upstream};
