//! A running node: services built from the configuration, the compiled
//! handler, the epoch ticker and the HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use ncps_edge_host_services::cluster::{channel, Cluster};
use ncps_edge_host_services::config::{NodeConfig, Settings, Upstream};
use ncps_edge_host_services::edge::EdgeCache;
use ncps_edge_host_services::locks::Locks;
use ncps_edge_host_services::metadata::Metadata;
use ncps_edge_host_services::metrics::Metrics;
use ncps_edge_host_services::signer::Signer;
use ncps_edge_host_services::storage::follow::Peers;
use ncps_edge_host_services::Services;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::backends;
use crate::config::{listen_addr, Config};
use crate::engine::{self, EngineOptions};
use crate::schedulers;
use crate::server::{Server, ServerOptions};

/// How often batched last-access times are written.
const ACCESS_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Priority of an upstream given without `?priority=`: configuration order,
/// after any explicitly preferred one.
const DEFAULT_UPSTREAM_PRIORITY: u32 = 50;

/// A node serving requests until [`RunningNode::stop`].
pub struct RunningNode {
    addr: SocketAddr,
    services: Arc<Services>,
    shutdown: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    ticker: Arc<tokio::task::JoinHandle<()>>,
    background: Vec<tokio::task::JoinHandle<()>>,
    handle: Arc<Server>,
}

impl RunningNode {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The node's services (for inspection by tests and tools).
    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }
    /// The request server (to run maintenance now, as the schedulers do).
    pub fn server(&self) -> &Arc<Server> {
        &self.handle
    }
    /// Stop accepting connections, stop background work, write pending
    /// access times; requests in flight get up to `deadline` to finish.
    pub async fn stop(self, deadline: std::time::Duration) {
        let _ = self.shutdown.send(());
        let _ = self.server.await;
        for task in &self.background {
            task.abort();
        }
        self.handle.drain(deadline).await;
        self.ticker.abort();
        if let Err(e) = self.services.metadata.flush_accesses().await {
            tracing::warn!(error = %e, "failed to write access times at shutdown");
        }
        // Leases dropped with the last instances are released by tasks of
        // their own: give them a moment before the process exits.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        tracing::info!("stopped");
    }
}

fn upstreams(config: &Config) -> Vec<Upstream> {
    let args = &config.args;
    args.cache_upstream_url
        .iter()
        .enumerate()
        .map(|(i, up)| {
            let allow_unsigned = args.cache_upstream_public_key.is_empty() && args.cache_upstream_allow_unsigned;
            if allow_unsigned {
                tracing::error!(
                    upstream = up.url,
                    "--cache-upstream-allow-unsigned: narinfos from this upstream are NOT verified and are signed with this cache's key"
                );
            }
            Upstream {
                url: up.url.clone(),
                authorization: up.authorization.clone(),
                priority: up.priority.unwrap_or(DEFAULT_UPSTREAM_PRIORITY + i as u32),
                public_keys: args.cache_upstream_public_key.clone(),
                allow_unsigned,
                healthy: true,
            }
        })
        .collect()
}

/// Connect the backends, load the signing key and compile the handler: a
/// node's services and its request server, not yet listening.
pub async fn build(config: &Config) -> anyhow::Result<Arc<Server>> {
    let args = &config.args;
    for key in &config.without_effect {
        tracing::warn!(key, "ncps setting has no effect in ncps-edge");
    }
    let anonymous = (args.cache_allow_put_verb && args.cache_put_token.as_deref().is_none_or(str::is_empty))
        || (args.cache_allow_delete_verb && args.cache_delete_token.as_deref().is_none_or(str::is_empty));
    if anonymous {
        tracing::error!("--cache-allow-anonymous-writes: anyone who can reach this node can upload or delete, and uploads are signed with the cache's key");
    }
    let data = &config.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let lock_backend = backends::locks(config).await?;
    let database = backends::metadata(config).await?;
    let (storage, disk_tier) = backends::with_disk_tier(config, backends::storage(config).await?)?;
    let cluster = Cluster::new();
    let edge = Arc::new(EdgeCache::new(args.edge_cache_memory, args.cache_negative_ttl, disk_tier, cluster.clone()));
    let channel = backends::edge_channel(config).await?;
    if let Some(channel) = &channel {
        cluster.connect(channel.clone());
    }
    let signer =
        Signer::load_or_generate(config.secret_key_path.as_deref(), database.as_ref(), &args.cache_hostname).await?;
    tracing::info!(public_key = signer.public_key(), "signing key loaded");
    let peers = match (&args.cache_node_url, &channel) {
        (Some(url), Some(_)) => Some(Peers {
            cluster: cluster.clone(),
            url: url.trim_end_matches('/').to_owned(),
            token: Peers::token_for(&signer.to_secret_string()),
            timeout: args.cache_backend_timeout,
        }),
        (Some(_), None) => {
            tracing::warn!("--cache-node-url has no effect with local locks (a single node)");
            None
        }
        _ => None,
    };
    let downloads = Arc::new(backends::followed(config, storage, peers)?);
    let settings = Settings {
        hostname: args.cache_hostname.clone(),
        priority: args.cache_priority,
        sign_narinfo: args.cache_sign_narinfo,
        allow_put: args.cache_allow_put_verb,
        allow_delete: args.cache_allow_delete_verb,
        get_token: args.cache_get_token.clone().filter(|t| !t.is_empty()),
        put_token: args.cache_put_token.clone().filter(|t| !t.is_empty()),
        delete_token: args.cache_delete_token.clone().filter(|t| !t.is_empty()),
        upload_trusted_keys: args.cache_upload_trusted_key.clone(),
        require_trusted_upload: args.cache_require_trusted_signature,
        max_upload_size: args.cache_max_upload_size,
        upstream_timeout_ms: args.cache_upstream_response_header_timeout.as_millis() as u64,
        upstream_connect_timeout_ms: args.cache_upstream_dialer_timeout.as_millis() as u64,
        upstream_stall_timeout_ms: args.cache_upstream_stall_timeout.as_millis() as u64,
        download_lease_ms: args.cache_lock_download_lease.as_millis() as u64,
        download_lock_ttl_ms: args.cache_lock_download_ttl.as_millis() as u64,
        max_narinfo_size: args.cache_narinfo_max_size,
        max_size: args.cache_max_size,
        lru_lock_ttl_ms: args.cache_lock_lru_ttl.as_millis() as u64,
        admin_token: args.admin_token.clone().filter(|t| !t.is_empty()),
        edge_max_age_s: args.edge_cache_max_age.as_secs() as u32,
        negative_ttl_s: args.cache_negative_ttl.as_secs() as u32,
    };
    let metrics = Arc::new(Metrics::new());
    let services = Arc::new(Services {
        locks: Locks::new(lock_backend, config.lock_prefix.clone(), config.retry.clone(), metrics.clone())
            .with_heartbeat(args.cache_lock_heartbeat_interval),
        storage: backends::content_named(downloads.clone()),
        metadata: Metadata::new(database),
        signer,
        config: NodeConfig::new(settings, upstreams(config)),
        metrics,
        edge,
        cluster,
    });
    let handler = engine::load(&EngineOptions {
        max_instances: args.wasm_max_instances,
        memory_limit: args.wasm_memory_limit,
        cache_dir: Some(config.wasm_cache_dir.clone()),
    })?;
    let options = ServerOptions {
        request_timeout: args.request_timeout,
        prometheus: args.prometheus_enabled,
        read_header_timeout: args.server_read_header_timeout,
        max_connections: args.server_max_connections,
        max_header_size: args.server_max_header_size.min(usize::MAX as u64) as usize,
    };
    let server = Server::new(handler, services, options, channel, downloads);
    Ok(Arc::new(server))
}

/// Build the services and start serving.
pub async fn start(config: &Config) -> anyhow::Result<RunningNode> {
    let args = &config.args;
    let handle = build(config).await?;
    let services = handle.services().clone();
    let ticker = engine::start_epoch_ticker(handle.engine());
    let addr = listen_addr(&args.server_addr);
    let listener = TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
    let addr = listener.local_addr()?;
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(handle.clone().serve(listener, async {
        let _ = stopped.await;
    }));
    let explicit: Vec<bool> = args.cache_upstream_url.iter().map(|u| u.priority.is_some()).collect();
    let mut background = vec![
        services.metadata.spawn_access_flusher(ACCESS_FLUSH_INTERVAL),
        schedulers::spawn_health_checks(
            handle.clone(),
            services.clone(),
            args.cache_upstream_health_interval,
            explicit,
        ),
    ];
    if let Some(channel) = handle.edge_channel() {
        background.extend(channel::spawn(services.cluster.clone(), services.edge.clone(), channel.clone()));
    }
    if let Some(schedule) = config.lru.clone() {
        background.push(schedulers::spawn_lru(handle.clone(), schedule));
    }
    tracing::info!(%addr, "ncps-edge listening");
    Ok(RunningNode { addr, services, shutdown, server, ticker, background, handle })
}
