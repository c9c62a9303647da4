//! `ncps:edge/storage` on the node's [`BlobStore`]: keys are validated
//! here, read streams and writers live in the instance's resource table.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::pipe::AsyncReadStream;
use wasmtime_wasi::p2::DynInputStream;

use super::{BlobStore, ByteRange, HandOff, HandedOff, StorageKey, WriterHandle};
use crate::bindings::storage;
use crate::{HostResult, NcpsEdgeView, Result};

struct StorageView<'a> {
    table: &'a mut ResourceTable,
    store: &'a Arc<dyn BlobStore>,
    hand_off: &'a HandOff,
}

struct HasStorage;

impl HasData for HasStorage {
    type Data<'a> = StorageView<'a>;
}

impl storage::Host for StorageView<'_> {
    async fn stat(&mut self, key: String) -> HostResult<Option<storage::ObjectInfo>> {
        let key = StorageKey::parse(&key)?;
        Ok(self.store.stat(&key).await?.map(|size| storage::ObjectInfo { size }))
    }

    /// This host hands objects off: a read does not follow.
    async fn stat_for_read(&mut self, key: String) -> HostResult<Option<storage::ObjectInfo>> {
        self.stat(key).await
    }

    async fn read(
        &mut self,
        key: String,
        range: Option<storage::ByteRange>,
    ) -> HostResult<Option<Resource<DynInputStream>>> {
        let key = StorageKey::parse(&key)?;
        let range = range.map(|r| ByteRange { offset: r.offset, length: r.length });
        let Some(body) = self.store.read(&key, range).await? else {
            return Ok(None);
        };
        let stream: DynInputStream = Box::new(AsyncReadStream::new(body));
        Ok(Some(self.table.push(stream)?))
    }

    async fn hand_off(
        &mut self,
        key: String,
        range: Option<storage::ByteRange>,
    ) -> HostResult<storage::HandOffOutcome> {
        let key = StorageKey::parse(&key)?;
        let range = range.map(|r| ByteRange { offset: r.offset, length: r.length });
        let body = match self.store.open_file(&key, range).await? {
            Some(file) => HandedOff::File(file),
            None => match self.store.read(&key, range).await? {
                Some(body) => HandedOff::Stream(body),
                None => return Ok(storage::HandOffOutcome::Absent),
            },
        };
        *self.hand_off.lock().unwrap_or_else(|p| p.into_inner()) = Some(body);
        Ok(storage::HandOffOutcome::Taken)
    }

    async fn hand_off_download(&mut self, key: String) -> HostResult<storage::HandOffOutcome> {
        let key = StorageKey::parse(&key)?;
        let Some(body) = self.store.follow(&key).await? else {
            return Ok(storage::HandOffOutcome::Absent);
        };
        *self.hand_off.lock().unwrap_or_else(|p| p.into_inner()) = Some(HandedOff::Stream(body));
        Ok(storage::HandOffOutcome::Taken)
    }

    async fn follow(&mut self, key: String) -> HostResult<Option<Resource<DynInputStream>>> {
        let key = StorageKey::parse(&key)?;
        let Some(body) = self.store.follow(&key).await? else {
            return Ok(None);
        };
        let stream: DynInputStream = Box::new(AsyncReadStream::new(body));
        Ok(Some(self.table.push(stream)?))
    }

    async fn create(&mut self, key: String) -> HostResult<Resource<WriterHandle>> {
        let key = StorageKey::parse(&key)?;
        let writer = self.store.create(&key).await?;
        Ok(self.table.push(WriterHandle(writer))?)
    }

    async fn delete(&mut self, key: String) -> HostResult<bool> {
        Ok(self.store.delete(&StorageKey::parse(&key)?).await?)
    }

    async fn list_objects(&mut self, after: Option<String>, limit: u32) -> HostResult<Vec<storage::ObjectEntry>> {
        let entries = self.store.list(after.as_deref(), limit).await?;
        Ok(entries.into_iter().map(|e| storage::ObjectEntry { key: e.key, size: e.size }).collect())
    }

    async fn sweep_incomplete(&mut self, older_than_ms: u64) -> HostResult<u32> {
        Ok(self.store.sweep_incomplete(std::time::Duration::from_millis(older_than_ms)).await?)
    }

    async fn delete_many(&mut self, keys: Vec<String>) -> HostResult<u32> {
        let keys = keys.iter().map(|k| StorageKey::parse(k)).collect::<Result<Vec<_>>>()?;
        Ok(self.store.delete_many(&keys).await?)
    }
}

impl storage::HostWriter for StorageView<'_> {
    async fn write(&mut self, this: Resource<WriterHandle>, data: Vec<u8>) -> HostResult<()> {
        Ok(self.table.get_mut(&this)?.0.write(&data).await?)
    }

    async fn written(&mut self, this: Resource<WriterHandle>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&this)?.0.written())
    }

    async fn commit(&mut self, this: Resource<WriterHandle>) -> HostResult<bool> {
        let writer = self.table.delete(this)?;
        Ok(writer.0.commit().await?)
    }

    async fn abort(&mut self, this: Resource<WriterHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?.0.abort().await;
        Ok(())
    }

    async fn drop(&mut self, this: Resource<WriterHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

crate::error::wit_errors!(StorageView<'_>);

pub(crate) fn add_to_linker<T: NcpsEdgeView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    storage::add_to_linker::<T, HasStorage>(linker, |t| {
        let view = t.ncps_edge();
        StorageView { table: view.table, store: &view.services.storage, hand_off: view.hand_off }
    })
}
