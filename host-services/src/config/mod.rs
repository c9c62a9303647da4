//! The node's settings and upstream caches, as the guest reads them
//! (`ncps:edge/config`). Upstream health is updated by the host's health
//! scheduler from what the guest's check reports.

pub mod wit;

use std::sync::RwLock;

pub use crate::bindings::config::{Settings, Upstream};

/// Settings and upstreams of a node.
pub struct NodeConfig {
    settings: Settings,
    upstreams: RwLock<Vec<Upstream>>,
}

impl NodeConfig {
    /// A configuration with `upstreams` in their configured order.
    pub fn new(settings: Settings, upstreams: Vec<Upstream>) -> Self {
        Self { settings, upstreams: RwLock::new(upstreams) }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A copy of the upstreams, in configured order.
    pub fn upstreams(&self) -> Vec<Upstream> {
        self.upstreams.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Change the upstreams in place (health and priority updates).
    pub fn update_upstreams(&self, f: impl FnOnce(&mut [Upstream])) {
        f(&mut self.upstreams.write().unwrap_or_else(|p| p.into_inner()));
    }
}
