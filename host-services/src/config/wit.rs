//! `ncps:edge/config` on a [`NodeConfig`].

use wasmtime::component::{HasData, Linker};

use super::{NodeConfig, Settings, Upstream};
use crate::bindings::config;
use crate::NcpsEdgeView;

struct ConfigView<'a>(&'a NodeConfig);

struct HasConfig;

impl HasData for HasConfig {
    type Data<'a> = ConfigView<'a>;
}

impl config::Host for ConfigView<'_> {
    async fn get_settings(&mut self) -> wasmtime::Result<Settings> {
        Ok(self.0.settings().clone())
    }

    async fn get_upstreams(&mut self) -> wasmtime::Result<Vec<Upstream>> {
        Ok(self.0.upstreams())
    }
}

pub(crate) fn add_to_linker<T: NcpsEdgeView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    config::add_to_linker::<T, HasConfig>(linker, |t| ConfigView(&t.ncps_edge().services.config))
}
