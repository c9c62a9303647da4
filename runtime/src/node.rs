//! A running node: services built from the configuration, the compiled
//! handler, the epoch ticker and the HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use ncps_edge_host_services::cluster::{channel, Cluster};
use ncps_edge_host_services::config::NodeConfig;
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
use crate::engine;
use crate::schedulers;
use crate::server::Server;

/// How often batched last-access times are written.
const ACCESS_FLUSH_INTERVAL: std::time::Duration =
    std::time::Duration::from_millis(ncps_edge_wire::sql::ACCESS_WRITE_EVERY_MS);

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

/// Connect the backends, load the signing key and compile the handler: a
/// node's services and its request server, not yet listening.
pub async fn build(config: &Config) -> anyhow::Result<Arc<Server>> {
    for key in &config.without_effect {
        tracing::warn!(key, "ncps setting has no effect in ncps-edge");
    }
    let guest = &config.guest;
    let anonymous =
        (guest.allow_put && guest.put_token.is_none()) || (guest.allow_delete && guest.delete_token.is_none());
    if anonymous {
        tracing::error!("--cache-allow-anonymous-writes: anyone who can reach this node can upload or delete, and uploads are signed with the cache's key");
    }
    for up in config.upstreams.iter().filter(|u| u.allow_unsigned) {
        tracing::error!(
            upstream = up.url,
            "--cache-upstream-allow-unsigned: narinfos from this upstream are NOT verified and are signed with this cache's key"
        );
    }
    let data = &config.data_dir;
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    // Metadata first: on PostgreSQL its migration runs on the connection
    // the locks and the channel then share.
    let (database, shared) = backends::metadata(config).await?;
    let lock_backend = backends::locks(config, shared.pg.as_ref()).await?;
    let (storage, disk_tier) = backends::with_disk_tier(config, backends::storage(config).await?)?;
    let cluster = Cluster::new();
    let edge = EdgeCache::new(config.edge.memory, config.edge.negative_ttl, disk_tier, cluster.clone())
        .with_stale_if_error(config.edge.stale_if_error);
    let edge = Arc::new(edge);
    let channel = backends::edge_channel(config, &shared).await?;
    if let Some(channel) = &channel {
        cluster.connect(channel.clone());
    }
    let signing = &config.signing;
    let signer =
        Signer::load_or_generate(signing.secret_key_path.as_deref(), database.as_ref(), &signing.hostname).await?;
    tracing::info!(public_key = signer.public_key(), "signing key loaded");
    let peers = match (&config.edge.node_url, &channel) {
        (Some(url), Some(_)) => Some(Peers {
            cluster: cluster.clone(),
            url: url.clone(),
            token: Peers::token_for(&signer.to_secret_string()),
            timeout: config.backend_timeout,
        }),
        (Some(_), None) => {
            tracing::warn!("--cache-node-url has no effect with local locks (a single node)");
            None
        }
        _ => None,
    };
    let downloads = Arc::new(backends::followed(config, storage, peers)?);
    let metrics = Arc::new(Metrics::new());
    let locks = &config.locks;
    let services = Arc::new(Services {
        locks: Locks::new(lock_backend, locks.prefix.clone(), locks.retry.clone(), metrics.clone())
            .with_heartbeat(locks.heartbeat),
        storage: backends::content_named(downloads.clone()),
        metadata: Metadata::new(database),
        signer,
        config: NodeConfig::new(config.guest.clone(), config.upstreams.clone()),
        metrics,
        edge,
        cluster,
    });
    let handler = engine::load(&config.engine)?;
    let server = Server::new(handler, services, config.server.clone(), channel, downloads);
    Ok(Arc::new(server))
}

/// Build the services and start serving.
pub async fn start(config: &Config) -> anyhow::Result<RunningNode> {
    let handle = build(config).await?;
    let services = handle.services().clone();
    let ticker = engine::start_epoch_ticker(handle.engine());
    let addr = listen_addr(&config.listen);
    let listener = TcpListener::bind(&addr).await.with_context(|| format!("binding {addr}"))?;
    let addr = listener.local_addr()?;
    let (shutdown, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(handle.clone().serve(listener, async {
        let _ = stopped.await;
    }));
    let schedules = &config.schedules;
    let mut background = vec![
        services.metadata.spawn_access_flusher(ACCESS_FLUSH_INTERVAL),
        schedulers::spawn_health_checks(
            handle.clone(),
            services.clone(),
            schedules.upstream_health,
            schedules.explicit_priorities.clone(),
        ),
    ];
    if let Some(channel) = handle.edge_channel() {
        background.extend(channel::spawn(services.cluster.clone(), services.edge.clone(), channel.clone()));
    }
    if let Some(schedule) = schedules.lru.clone() {
        background.push(schedulers::spawn_lru(handle.clone(), schedule));
    }
    tracing::info!(%addr, "ncps-edge listening");
    Ok(RunningNode { addr, services, shutdown, server, ticker, background, handle })
}
