//! `ncps:edge/edge-cache` on an [`EdgeCache`].

use wasmtime::component::{HasData, Linker};

use super::EdgeCache;
use crate::bindings::edge_cache;
use crate::bindings::metadata::NarinfoRecord;
use crate::NcpsEdgeView;

struct EdgeView<'a>(&'a EdgeCache);

struct HasEdge;

impl HasData for HasEdge {
    type Data<'a> = EdgeView<'a>;
}

impl edge_cache::Host for EdgeView<'_> {
    async fn purge(&mut self, paths: Vec<String>) -> wasmtime::Result<()> {
        self.0.purge(paths).await;
        Ok(())
    }

    async fn mark_absent(&mut self, hash: String, seconds: u32) -> wasmtime::Result<()> {
        self.0.mark_absent(&hash, std::time::Duration::from_secs(seconds.into()));
        Ok(())
    }

    async fn absent_for(&mut self, hash: String) -> wasmtime::Result<u32> {
        Ok(self.0.absent_for(&hash).map_or(0, |left| left.as_secs_f64().ceil() as u32))
    }

    /// The native tier keeps NAR answers itself, in front of the guest.
    async fn kept_nar(&mut self, _key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(None)
    }

    async fn keep_nar(&mut self, _key: String, _bytes: Vec<u8>) -> wasmtime::Result<()> {
        Ok(())
    }

    /// The native tier reads nothing per instance.
    async fn will_read(&mut self, _path: String) -> wasmtime::Result<()> {
        Ok(())
    }

    /// The native tier answers stale itself, in front of the guest.
    async fn stale_narinfo(&mut self, _hash: String) -> wasmtime::Result<Option<NarinfoRecord>> {
        Ok(None)
    }

    async fn stale_nar(&mut self, _key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

pub(crate) fn add_to_linker<T: NcpsEdgeView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    edge_cache::add_to_linker::<T, HasEdge>(linker, |t| EdgeView(&t.ncps_edge().services.edge))
}
