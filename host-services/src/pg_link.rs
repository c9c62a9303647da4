//! The node's PostgreSQL connections, shared by the metadata store, the
//! advisory locks and the edge-cache channel, so a node costs the server
//! as few connections as possible:
//!
//! - **The session connection** is always open. It carries the node's
//!   advisory locks (session-level: they live as long as it does), its
//!   `LISTEN`, and metadata queries too. tokio-postgres pipelines the
//!   queries of concurrent callers on it, so one connection serves a node.
//! - **Extra connections** (up to `max_open` in all) open only when every
//!   open connection has [`SPILL_IN_FLIGHT`] queries in flight, and close
//!   again after [`IDLE_CLOSE`] without a query while more than `max_idle`
//!   are open.
//!
//! Statements are prepared once per connection (a query is one round trip,
//! not two).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as SyncMutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, Mutex};
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, NoTls, Row, Statement};

use crate::{Error, Result};

/// Queries in flight on every open connection before another one opens.
pub const SPILL_IN_FLIGHT: usize = 4;
/// An extra connection idle this long closes (while more than `max_idle` are open).
pub const IDLE_CLOSE: Duration = Duration::from_secs(10);
/// Notifications a slow listener may fall behind before it is told it lost some.
const NOTIFY_BACKLOG: usize = 4096;

/// How many connections a node may hold, and how its session behaves.
#[derive(Debug, Clone, Copy)]
pub struct LinkLimits {
    /// Connections at most, the session connection included (at least 1).
    pub max_open: usize,
    /// Connections kept open while idle, the session connection included.
    pub max_idle: usize,
    /// The server ends the session connection after this long without a
    /// query (so a dead node's locks go; the lock heartbeat keeps a live
    /// node's busy). None: never.
    pub session_idle_timeout: Option<Duration>,
}

/// What the session connection hears.
#[derive(Debug, Clone)]
pub enum Heard {
    /// A `NOTIFY` on `channel`.
    Notification {
        /// The channel it came on.
        channel: String,
        /// Its payload.
        payload: String,
    },
    /// The session connection ended: its `LISTEN`s and locks are gone.
    Closed,
}

/// One open connection.
struct Conn {
    client: Arc<Client>,
    in_flight: Arc<AtomicUsize>,
    last_used: SyncMutex<Instant>,
    statements: SyncMutex<HashMap<&'static str, Statement>>,
}

impl Conn {
    fn new(client: Client) -> Arc<Self> {
        Arc::new(Self {
            client: Arc::new(client),
            in_flight: Arc::default(),
            last_used: SyncMutex::new(Instant::now()),
            statements: SyncMutex::default(),
        })
    }

    fn idle_for(&self) -> Duration {
        self.last_used.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }
}

struct Shared {
    session_config: tokio_postgres::Config,
    extra_config: tokio_postgres::Config,
    limits: LinkLimits,
    /// Slot 0 is the session connection.
    slots: Vec<Mutex<Option<Arc<Conn>>>>,
    /// Changes whenever the session connection is replaced or ends.
    generation: Arc<AtomicU64>,
    heard: broadcast::Sender<Heard>,
}

/// The node's connections to one PostgreSQL database.
#[derive(Clone)]
pub struct PgLink {
    shared: Arc<Shared>,
    _closer: Arc<Closer>,
}

/// Stops the idle closer when the last handle goes.
struct Closer(tokio::task::JoinHandle<()>);

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn db(e: impl Into<crate::error::Cause>) -> Error {
    Error::unavailable("postgres", e)
}

/// A connection lent for one query or a few: counted as in flight until dropped.
pub struct Lent {
    conn: Arc<Conn>,
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
        *self.conn.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }
}

impl Lent {
    fn new(conn: Arc<Conn>) -> Self {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        Self { conn }
    }

    /// The client, for what [`query`](Self::query) does not cover.
    pub fn client(&self) -> &Client {
        &self.conn.client
    }

    /// `sql`, prepared once on this connection.
    pub async fn statement(&self, sql: &'static str) -> Result<Statement> {
        if let Some(s) = self.conn.statements.lock().unwrap_or_else(|p| p.into_inner()).get(sql) {
            return Ok(s.clone());
        }
        let statement = self.conn.client.prepare(sql).await.map_err(db)?;
        self.conn.statements.lock().unwrap_or_else(|p| p.into_inner()).insert(sql, statement.clone());
        Ok(statement)
    }

    /// Rows of `sql` with `params`.
    pub async fn query(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let statement = self.statement(sql).await?;
        self.conn.client.query(&statement, params).await.map_err(db)
    }

    /// At most one row of `sql`.
    pub async fn query_opt(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>> {
        let statement = self.statement(sql).await?;
        self.conn.client.query_opt(&statement, params).await.map_err(db)
    }

    /// Exactly one row of `sql`.
    pub async fn query_one(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<Row> {
        let statement = self.statement(sql).await?;
        self.conn.client.query_one(&statement, params).await.map_err(db)
    }

    /// Rows `sql` changed.
    pub async fn execute(&self, sql: &'static str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let statement = self.statement(sql).await?;
        self.conn.client.execute(&statement, params).await.map_err(db)
    }
}

impl PgLink {
    /// The node's link to the database at `url`, its session connection
    /// opened now.
    pub async fn connect(url: &str, limits: LinkLimits) -> Result<Self> {
        let mut extra_config: tokio_postgres::Config =
            url.parse().map_err(|e| Error::invalid(format!("postgres URL: {e}")))?;
        if extra_config.get_application_name().is_none() {
            extra_config.application_name("ncps-edge");
        }
        extra_config.connect_timeout(Duration::from_secs(5));
        let mut session_config = extra_config.clone();
        if let Some(idle) = limits.session_idle_timeout {
            session_config.options(format!("-c idle_session_timeout={}", idle.as_millis().max(1)));
        }
        let limits = LinkLimits { max_open: limits.max_open.max(1), max_idle: limits.max_idle.max(1), ..limits };
        let shared = Arc::new(Shared {
            session_config,
            extra_config,
            limits,
            slots: (0..limits.max_open).map(|_| Mutex::default()).collect(),
            generation: Arc::default(),
            heard: broadcast::channel(NOTIFY_BACKLOG).0,
        });
        shared.open(0).await?;
        let closer = tokio::spawn(close_idle(Arc::downgrade(&shared)));
        Ok(Self { shared, _closer: Arc::new(Closer(closer)) })
    }

    /// The session connection (opened again when it died): for locks and `LISTEN`.
    pub async fn session(&self) -> Result<Lent> {
        Ok(Lent::new(self.shared.open(0).await?))
    }

    /// A connection for a query: the least busy one, or a new one when all
    /// are busy and the limit allows.
    pub async fn lend(&self) -> Result<Lent> {
        let shared = &self.shared;
        let mut best: Option<Arc<Conn>> = None;
        let mut free_slot = None;
        for (i, slot) in shared.slots.iter().enumerate() {
            match slot.try_lock().ok().and_then(|s| s.clone()) {
                Some(conn) if !conn.client.is_closed() => {
                    let load = conn.in_flight.load(Ordering::Acquire);
                    if best.as_ref().is_none_or(|b| load < b.in_flight.load(Ordering::Acquire)) {
                        best = Some(conn);
                    }
                }
                _ if free_slot.is_none() && i > 0 => free_slot = Some(i),
                _ => {}
            }
        }
        match (best, free_slot) {
            (Some(conn), Some(i)) if conn.in_flight.load(Ordering::Acquire) >= SPILL_IN_FLIGHT => {
                match shared.open(i).await {
                    Ok(extra) => Ok(Lent::new(extra)),
                    Err(e) => {
                        tracing::debug!(error = %e, "no extra PostgreSQL connection; sharing an open one");
                        Ok(Lent::new(conn))
                    }
                }
            }
            (Some(conn), _) => Ok(Lent::new(conn)),
            (None, _) => self.session().await,
        }
    }

    /// Everything the session connection hears from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Heard> {
        self.shared.heard.subscribe()
    }

    /// Changes whenever the session connection is replaced or ends (its
    /// locks with it).
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::SeqCst)
    }

    /// Close the session connection (the server drops its locks and
    /// `LISTEN`s); the next call opens a new one.
    pub async fn reset_session(&self) {
        if self.shared.slots[0].lock().await.take().is_some() {
            self.shared.generation.fetch_add(1, Ordering::SeqCst);
            let _ = self.shared.heard.send(Heard::Closed);
        }
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.open_count()
    }
}

impl Shared {
    /// Slots holding a connection (one being opened counts).
    fn open_count(&self) -> usize {
        self.slots.iter().filter(|s| s.try_lock().map(|s| s.is_some()).unwrap_or(true)).count()
    }

    /// Slot `i`'s live connection, connecting it when it has none.
    async fn open(&self, i: usize) -> Result<Arc<Conn>> {
        let mut slot = self.slots[i].lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| !c.client.is_closed()) {
            return Ok(conn.clone());
        }
        let config = if i == 0 { &self.session_config } else { &self.extra_config };
        let (client, mut connection) = config.connect(NoTls).await.map_err(db)?;
        let conn = Conn::new(client);
        if i == 0 {
            let generation = self.generation.clone();
            let current = generation.fetch_add(1, Ordering::SeqCst) + 1;
            let heard = self.heard.clone();
            tokio::spawn(async move {
                loop {
                    match futures_util::future::poll_fn(|cx| connection.poll_message(cx)).await {
                        Some(Ok(AsyncMessage::Notification(n))) => {
                            let _ = heard.send(Heard::Notification {
                                channel: n.channel().to_owned(),
                                payload: n.payload().to_owned(),
                            });
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "PostgreSQL session connection ended; its locks are lost");
                            break;
                        }
                        None => break,
                    }
                }
                // Whatever ended it, its locks and LISTENs are gone.
                if generation.compare_exchange(current, current + 1, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    let _ = heard.send(Heard::Closed);
                }
            });
        } else {
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "extra PostgreSQL connection ended");
                }
            });
        }
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

/// Close extra connections idle for [`IDLE_CLOSE`] while more than
/// `max_idle` are open.
async fn close_idle(shared: Weak<Shared>) {
    loop {
        tokio::time::sleep(IDLE_CLOSE / 4).await;
        let Some(shared) = shared.upgrade() else { return };
        let mut open = shared.open_count();
        for slot in shared.slots.iter().skip(1).rev() {
            if open <= shared.limits.max_idle {
                break;
            }
            let Ok(mut slot) = slot.try_lock() else { continue };
            let idle =
                slot.as_ref().is_some_and(|c| c.in_flight.load(Ordering::Acquire) == 0 && c.idle_for() >= IDLE_CLOSE);
            if idle || slot.as_ref().is_some_and(|c| c.client.is_closed()) {
                *slot = None;
                open -= 1;
            }
        }
    }
}
