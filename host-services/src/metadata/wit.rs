//! `ncps:edge/metadata` on the node's [`Metadata`].

use wasmtime::component::{HasData, Linker};

use super::{Metadata, NarRecord, NarinfoRecord};
use crate::bindings::metadata;
use crate::{HostResult, NcpsEdgeView};

struct MetadataView<'a>(&'a Metadata);

struct HasMetadata;

impl HasData for HasMetadata {
    type Data<'a> = MetadataView<'a>;
}

impl metadata::Host for MetadataView<'_> {
    async fn get_narinfo(&mut self, hash: String) -> HostResult<Option<NarinfoRecord>> {
        Ok(self.0.store().get_narinfo(&hash).await?)
    }
    async fn put_narinfo(&mut self, info: NarinfoRecord) -> HostResult<()> {
        Ok(self.0.store().put_narinfo(info).await?)
    }
    async fn delete_narinfo(&mut self, hash: String) -> HostResult<bool> {
        Ok(self.0.store().delete_narinfo(&hash).await?)
    }
    async fn get_nar(&mut self, key: String) -> HostResult<Option<NarRecord>> {
        Ok(self.0.store().get_nar(&key).await?)
    }
    async fn put_nar(&mut self, nar: NarRecord) -> HostResult<()> {
        Ok(self.0.store().put_nar(nar).await?)
    }
    async fn delete_nar(&mut self, key: String) -> HostResult<bool> {
        Ok(self.0.store().delete_nar(&key).await?)
    }
    async fn total_size(&mut self) -> HostResult<u64> {
        Ok(self.0.store().total_size().await?)
    }
    async fn record_access(&mut self, key: String) -> wasmtime::Result<()> {
        self.0.record_access(&key);
        Ok(())
    }
    async fn lru_candidates(&mut self, limit: u32) -> HostResult<Vec<NarRecord>> {
        Ok(self.0.lru_candidates(limit).await?)
    }
    async fn nars_after(&mut self, after: Option<String>, limit: u32) -> HostResult<Vec<NarRecord>> {
        Ok(self.0.store().nars_after(after.as_deref(), limit).await?)
    }
    async fn is_referenced(&mut self, key: String) -> HostResult<bool> {
        Ok(self.0.store().is_referenced(&key).await?)
    }
    async fn evict(&mut self, key: String) -> HostResult<metadata::Eviction> {
        let e = self.0.store().evict(&key).await?;
        Ok(metadata::Eviction { freed: e.freed, narinfos: e.narinfos })
    }
}

crate::error::wit_errors!(MetadataView<'_>);

pub(crate) fn add_to_linker<T: NcpsEdgeView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    metadata::add_to_linker::<T, HasMetadata>(linker, |t| MetadataView(&t.ncps_edge().services.metadata))
}
