//! Binds the backends to the `ncps:edge` WIT imports.
//!
//! [`Services`] is shared by every request of a node; [`HostView`] is what one
//! request's store lends to the generated host traits: the services plus the
//! store's resource table, where leases, writers and streams live (so they
//! are dropped, and released, with the instance).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::pipe::AsyncReadStream;
use wasmtime_wasi::p2::DynInputStream;

use crate::access::AccessRecorder;
use crate::bindings::{config, locks, log, metadata, metrics, signer, storage, types};
use crate::locks::{LeaseHandle, Locks, Mode};
use crate::metadata::MetadataStore;
use crate::metrics::{Metrics, UpstreamLabels};
use crate::signer::Signer;
use crate::storage::{BlobStore, ByteRange, StorageKey, WriterHandle};

pub use crate::bindings::config::{Settings, Upstream};

/// Everything stateful a node offers its handler instances.
pub struct Services {
    /// Lock service.
    pub locks: Locks,
    /// NAR storage.
    pub storage: Arc<dyn BlobStore>,
    /// Metadata database.
    pub metadata: Arc<dyn MetadataStore>,
    /// The cache's signing key.
    pub signer: Signer,
    /// Settings the guest reads.
    pub settings: Settings,
    /// Upstream caches; `healthy` is updated by the health checker.
    pub upstreams: RwLock<Vec<Upstream>>,
    /// Metrics of the node.
    pub metrics: Arc<Metrics>,
    /// Batched last-access times.
    pub access: Arc<AccessRecorder>,
}

/// What one request's store lends to the host traits.
pub struct HostView<'a> {
    /// The store's resource table.
    pub table: &'a mut ResourceTable,
    /// The node's services.
    pub services: &'a Services,
}

/// Implemented by a store's data to lend a [`HostView`].
pub trait NcpsEdgeView: Send {
    /// Borrow the view.
    fn ncps_edge(&mut self) -> HostView<'_>;
}

struct NcpsEdge;
impl HasData for NcpsEdge {
    type Data<'a> = HostView<'a>;
}

/// Add every `ncps:edge` import to `linker`.
pub fn add_to_linker<T: NcpsEdgeView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    fn view<T: NcpsEdgeView>(t: &mut T) -> HostView<'_> {
        t.ncps_edge()
    }
    types::add_to_linker::<T, NcpsEdge>(linker, view)?;
    locks::add_to_linker::<T, NcpsEdge>(linker, view)?;
    storage::add_to_linker::<T, NcpsEdge>(linker, view)?;
    metadata::add_to_linker::<T, NcpsEdge>(linker, view)?;
    signer::add_to_linker::<T, NcpsEdge>(linker, view)?;
    config::add_to_linker::<T, NcpsEdge>(linker, view)?;
    metrics::add_to_linker::<T, NcpsEdge>(linker, view)?;
    log::add_to_linker::<T, NcpsEdge>(linker, view)
}

type WitResult<T> = wasmtime::Result<Result<T, types::Error>>;

fn wit<T>(r: crate::Result<T>) -> WitResult<T> {
    Ok(r.map_err(types::Error::from))
}

fn mode(m: locks::Mode) -> Mode {
    match m {
        locks::Mode::Exclusive => Mode::Exclusive,
        locks::Mode::Shared => Mode::Shared,
    }
}

impl types::Host for HostView<'_> {}

impl locks::Host for HostView<'_> {
    async fn acquire(&mut self, key: String, m: locks::Mode, ttl_ms: u64) -> WitResult<Resource<LeaseHandle>> {
        match self.services.locks.acquire(&key, mode(m), Duration::from_millis(ttl_ms)).await {
            Ok(lease) => Ok(Ok(self.table.push(lease)?)),
            Err(e) => wit(Err(e)),
        }
    }

    async fn try_acquire(
        &mut self,
        key: String,
        m: locks::Mode,
        ttl_ms: u64,
    ) -> WitResult<Option<Resource<LeaseHandle>>> {
        match self.services.locks.try_acquire(&key, mode(m), Duration::from_millis(ttl_ms)).await {
            Ok(Some(lease)) => Ok(Ok(Some(self.table.push(lease)?))),
            Ok(None) => Ok(Ok(None)),
            Err(e) => wit(Err(e)),
        }
    }
}

impl locks::HostLease for HostView<'_> {
    async fn key(&mut self, this: Resource<LeaseHandle>) -> wasmtime::Result<String> {
        Ok(self.table.get(&this)?.key().to_owned())
    }

    async fn extend(&mut self, this: Resource<LeaseHandle>, ttl_ms: u64) -> WitResult<()> {
        let lease = self.table.get(&this)?;
        wit(lease.extend(Duration::from_millis(ttl_ms)).await)
    }

    async fn is_held(&mut self, this: Resource<LeaseHandle>) -> wasmtime::Result<bool> {
        Ok(self.table.get(&this)?.is_held())
    }

    async fn drop(&mut self, this: Resource<LeaseHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl storage::Host for HostView<'_> {
    async fn stat(&mut self, key: String) -> WitResult<Option<storage::ObjectInfo>> {
        let r = async {
            let key = StorageKey::parse(&key)?;
            Ok(self.services.storage.stat(&key).await?.map(|size| storage::ObjectInfo { size }))
        };
        wit(r.await)
    }

    async fn read(
        &mut self,
        key: String,
        range: Option<storage::ByteRange>,
    ) -> WitResult<Option<Resource<DynInputStream>>> {
        let r = async {
            let key = StorageKey::parse(&key)?;
            let range = range.map(|r| ByteRange { offset: r.offset, length: r.length });
            self.services.storage.read(&key, range).await
        };
        match r.await {
            Ok(Some(body)) => {
                let stream: DynInputStream = Box::new(AsyncReadStream::new(body));
                Ok(Ok(Some(self.table.push(stream)?)))
            }
            Ok(None) => Ok(Ok(None)),
            Err(e) => wit(Err(e)),
        }
    }

    async fn create(&mut self, key: String) -> WitResult<Resource<WriterHandle>> {
        let r = async {
            let key = StorageKey::parse(&key)?;
            self.services.storage.create(&key).await
        };
        match r.await {
            Ok(w) => Ok(Ok(self.table.push(WriterHandle(w))?)),
            Err(e) => wit(Err(e)),
        }
    }

    async fn delete(&mut self, key: String) -> WitResult<bool> {
        let r = async {
            let key = StorageKey::parse(&key)?;
            self.services.storage.delete(&key).await
        };
        wit(r.await)
    }

    async fn delete_many(&mut self, keys: Vec<String>) -> WitResult<u32> {
        use futures_util::{StreamExt, TryStreamExt};
        /// Deletes in flight at once.
        const PARALLEL: usize = 8;
        let keys = match keys.iter().map(|k| StorageKey::parse(k)).collect::<crate::Result<Vec<_>>>() {
            Ok(k) => k,
            Err(e) => return wit(Err(e)),
        };
        let storage = self.services.storage.clone();
        let deleted = futures_util::stream::iter(keys)
            .map(|k| {
                let storage = storage.clone();
                async move { storage.delete(&k).await }
            })
            .buffer_unordered(PARALLEL)
            .try_fold(0u32, |n, existed| async move { Ok(n + u32::from(existed)) })
            .await;
        wit(deleted)
    }
}

impl storage::HostWriter for HostView<'_> {
    async fn write(&mut self, this: Resource<WriterHandle>, data: Vec<u8>) -> WitResult<()> {
        let w = self.table.get_mut(&this)?;
        wit(w.0.write(&data).await)
    }

    async fn written(&mut self, this: Resource<WriterHandle>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&this)?.0.written())
    }

    async fn commit(&mut self, this: Resource<WriterHandle>) -> WitResult<bool> {
        let w = self.table.delete(this)?;
        wit(w.0.commit().await)
    }

    async fn abort(&mut self, this: Resource<WriterHandle>) -> wasmtime::Result<()> {
        let w = self.table.delete(this)?;
        w.0.abort().await;
        Ok(())
    }

    async fn drop(&mut self, this: Resource<WriterHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl metadata::Host for HostView<'_> {
    async fn get_narinfo(&mut self, hash: String) -> WitResult<Option<metadata::NarinfoRecord>> {
        wit(self.services.metadata.get_narinfo(&hash).await)
    }
    async fn put_narinfo(&mut self, info: metadata::NarinfoRecord) -> WitResult<()> {
        wit(self.services.metadata.put_narinfo(info).await)
    }
    async fn delete_narinfo(&mut self, hash: String) -> WitResult<bool> {
        wit(self.services.metadata.delete_narinfo(&hash).await)
    }
    async fn get_nar(&mut self, key: String) -> WitResult<Option<metadata::NarRecord>> {
        wit(self.services.metadata.get_nar(&key).await)
    }
    async fn put_nar(&mut self, nar: metadata::NarRecord) -> WitResult<()> {
        wit(self.services.metadata.put_nar(nar).await)
    }
    async fn delete_nar(&mut self, key: String) -> WitResult<bool> {
        wit(self.services.metadata.delete_nar(&key).await)
    }
    async fn total_size(&mut self) -> WitResult<u64> {
        wit(self.services.metadata.total_size().await)
    }
    async fn record_access(&mut self, key: String) -> wasmtime::Result<()> {
        self.services.access.record(&key);
        Ok(())
    }
    async fn lru_candidates(&mut self, limit: u32) -> WitResult<Vec<metadata::NarRecord>> {
        if let Err(e) = self.services.access.flush().await {
            tracing::warn!(error = %e, "failed to write access times before an LRU decision");
        }
        wit(self.services.metadata.lru_candidates(limit).await)
    }
    async fn evict(&mut self, key: String) -> WitResult<u64> {
        wit(self.services.metadata.evict(&key).await)
    }
}

impl metrics::Host for HostView<'_> {
    async fn upstream_fetch(
        &mut self,
        kind: String,
        upstream: String,
        seconds: f64,
        outcome: String,
    ) -> wasmtime::Result<()> {
        let labels = UpstreamLabels { kind, upstream, outcome };
        self.services.metrics.upstream_fetch.get_or_create(&labels).observe(seconds);
        Ok(())
    }

    async fn lru_pass(&mut self, outcome: String, evicted: u32, bytes_freed: u64) -> wasmtime::Result<()> {
        let m = &self.services.metrics;
        m.lru_runs.get_or_create(&crate::metrics::ResultLabels { result: outcome }).inc();
        m.lru_evicted.inc_by(u64::from(evicted));
        m.lru_bytes_freed.inc_by(bytes_freed);
        Ok(())
    }
}

impl signer::Host for HostView<'_> {
    async fn public_key(&mut self) -> wasmtime::Result<String> {
        Ok(self.services.signer.public_key())
    }
    async fn sign(&mut self, fingerprint: String) -> WitResult<String> {
        Ok(Ok(self.services.signer.sign(&fingerprint)))
    }
}

impl config::Host for HostView<'_> {
    async fn get_settings(&mut self) -> wasmtime::Result<Settings> {
        Ok(self.services.settings.clone())
    }
    async fn get_upstreams(&mut self) -> wasmtime::Result<Vec<Upstream>> {
        Ok(self.services.upstreams.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

impl log::Host for HostView<'_> {
    async fn log(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) -> wasmtime::Result<()> {
        let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let (hash, lock_type, upstream, url, status, error, duration_ms, bytes) = (
            field("hash"),
            field("lock_type"),
            field("upstream"),
            field("url"),
            field("status"),
            field("error"),
            field("duration_ms"),
            field("bytes"),
        );
        macro_rules! emit {
            ($lvl:ident) => {
                tracing::$lvl!(target: "ncps_edge::handler", hash, lock_type, upstream, url, status, error, duration_ms, bytes, "{message}")
            };
        }
        match level {
            log::Level::Trace => emit!(trace),
            log::Level::Debug => emit!(debug),
            log::Level::Info => emit!(info),
            log::Level::Warn => emit!(warn),
            log::Level::Error => emit!(error),
        }
        Ok(())
    }
}
