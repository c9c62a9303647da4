//! The wasmtime engine: pooling allocator, epoch deadlines, the handler
//! compiled once (and cached on disk), and the linker with every import.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::{Component, Linker};
use wasmtime::{Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::CacheNodePre;
use crate::state::RequestState;

/// How often the epoch advances; deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(100);

/// Linear memory of a finished instance reset with memset and kept
/// resident (beyond it, memory is returned to the kernel with madvise,
/// which flushes every core's TLB: the dearest part of a fresh instance).
/// The handler starts with 640 KiB of linear memory (see `handler/build.rs`)
/// and most requests never grow it: all of it is reset with memset, or
/// only the pages the instance wrote where the kernel can tell
/// (`pagemap_scan`), and a slot a burst used keeps at most this much
/// resident.
const KEEP_RESIDENT_MEMORY: usize = 640 << 10;
/// Table bytes of a finished instance kept mapped.
const KEEP_RESIDENT_TABLE: usize = 64 << 10;
/// Async stack bytes of a finished instance kept mapped.
const KEEP_RESIDENT_STACK: usize = 1 << 20;
/// Decommits collected before one batch is returned to the kernel.
const DECOMMIT_BATCH: usize = 32;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Instances alive at once (the pool size).
    pub max_instances: u32,
    /// Linear-memory cap per instance, bytes.
    pub memory_limit: usize,
    /// Where compiled code is cached between starts (none: compile every start).
    pub cache_dir: Option<PathBuf>,
}

/// A compiled, pre-linked handler ready to instantiate per request.
#[derive(Clone)]
pub struct Handler {
    /// The pre-instantiated component.
    pub pre: CacheNodePre<RequestState>,
    /// Memory cap per instance.
    pub memory_limit: usize,
    /// One permit per instance the pool holds: a request waits for one
    /// instead of failing when every instance is busy.
    pub slots: Arc<tokio::sync::Semaphore>,
}

/// Build the engine and pre-link the handler.
pub fn load(opts: &EngineOptions) -> anyhow::Result<Handler> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    let mut pool = PoolingAllocationConfig::default();
    // Slots of finished instances wait in the decommit batch before they
    // can be reused: the pool holds that many more than may run at once.
    let slots = opts.max_instances + DECOMMIT_BATCH as u32;
    pool.total_component_instances(slots)
        .total_memories(slots)
        // A component instance has a table in its module and in each of
        // its adapter shims.
        .total_tables(slots * 4)
        .total_stacks(slots)
        .total_core_instances(slots * 4)
        .max_memory_size(opts.memory_limit)
        // Memory an instance touched is reset with memset up to these sizes
        // instead of being returned with madvise: each madvise flushes the
        // TLB of every core, the largest cost of an instance per request
        // (see BENCHMARKS.md, "Per-request cost").
        .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
        .table_keep_resident(KEEP_RESIDENT_TABLE)
        .async_stack_keep_resident(KEEP_RESIDENT_STACK)
        // Where the kernel can tell (Linux 6.7 and later), only the pages an
        // instance wrote are reset, not all it could reach: a request
        // touches a fraction of its memory (BENCHMARKS.md, "Resetting only
        // the pages an instance wrote"). Elsewhere all of it is reset.
        .pagemap_scan(Enabled::Auto)
        .decommit_batch_size(DECOMMIT_BATCH);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    if let Some(dir) = &opts.cache_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cache = CacheConfig::new();
        cache.with_directory(dir);
        config.cache(Some(Cache::new(cache)?));
    }
    let engine = Engine::new(&config)?;
    let started = std::time::Instant::now();
    let component = Component::new(&engine, crate::HANDLER_WASM)
        .map_err(|e| anyhow::Error::from(e).context("compiling the handler"))?;
    tracing::info!(duration_ms = started.elapsed().as_millis() as u64, "handler compiled");
    let mut linker = Linker::<RequestState>::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    ncps_edge_host_services::add_to_linker(&mut linker)?;
    let pre = CacheNodePre::new(linker.instantiate_pre(&component)?)?;
    let slots = Arc::new(tokio::sync::Semaphore::new(opts.max_instances as usize));
    Ok(Handler { pre, memory_limit: opts.memory_limit, slots })
}

/// Advance the engine's epoch every [`EPOCH_TICK`] until the returned handle is dropped.
pub fn start_epoch_ticker(engine: &Engine) -> Arc<tokio::task::JoinHandle<()>> {
    let engine = engine.clone();
    Arc::new(tokio::spawn(async move {
        let mut tick = tokio::time::interval(EPOCH_TICK);
        loop {
            tick.tick().await;
            engine.increment_epoch();
        }
    }))
}
