//! Named locks: the contract every backend implements, and the policy
//! (key prefix, retry with backoff and jitter) shared by all of them.
//! (A little over 300 lines: the lease handle, its keep-alive and the
//! service's metrics are one lifecycle, read together.)

pub mod guard;
pub mod local;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod session;
pub mod wit;

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::metrics::{lock_type, LockFailureLabels, LockLabels, LockModeLabels, LockTypeLabels, Metrics};
use crate::{Error, Result};

/// How a lease holds its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One holder, no shared holders.
    Exclusive,
    /// Many shared holders, no exclusive holder.
    Shared,
}

impl Mode {
    /// Label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Exclusive => "exclusive",
            Mode::Shared => "shared",
        }
    }
}

/// A lock held by this node. Dropping it releases the lock.
#[async_trait::async_trait]
pub trait Lease: Send + Sync {
    /// Push the expiry to now + `ttl`; fails with [`Error::Conflict`] when the
    /// lease was lost.
    async fn extend(&self, ttl: Duration) -> Result<()>;
    /// Whether the lease is still held.
    fn is_held(&self) -> bool;
}

/// A lock backend: local memory, Redis, PostgreSQL or MySQL.
#[async_trait::async_trait]
pub trait LockBackend: Send + Sync {
    /// Take `key` once without waiting: `None` when somebody else holds it.
    async fn try_acquire(&self, key: &str, mode: Mode, ttl: Duration) -> Result<Option<Box<dyn Lease>>>;
}

/// The `--cache-lock-retry-*` policy.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts after the first one.
    pub max_attempts: usize,
    /// Delay before the first retry.
    pub initial_delay: Duration,
    /// Cap of the exponential delay.
    pub max_delay: Duration,
    /// Add random jitter to each delay.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    fn backoff(&self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.initial_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_max_times(self.max_attempts);
        if self.jitter {
            builder.with_jitter()
        } else {
            builder
        }
    }
}

/// A held lease as the guest sees it: the backend's lease plus its key.
/// Dropping it releases the lease (and stops its heartbeat) and records
/// how long it was held.
pub struct LeaseHandle {
    key: String,
    mode: Mode,
    lease: Arc<dyn Lease>,
    acquired: std::time::Instant,
    locks: Locks,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
    /// Set once the lease was counted as lost (by a renewal or a check).
    counted_lost: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for LeaseHandle {
    fn drop(&mut self) {
        if let Some(task) = self.heartbeat.take() {
            task.abort();
        }
        let labels = LockModeLabels { r#type: lock_type(&self.key).to_owned(), mode: self.mode.as_str().to_owned() };
        self.locks.metrics.lock_hold.get_or_create(&labels).observe(self.acquired.elapsed().as_secs_f64());
    }
}

impl LeaseHandle {
    /// The key without the prefix.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// See [`Lease::extend`]; a lease found lost is counted and logged.
    pub async fn extend(&self, ttl: Duration) -> Result<()> {
        let result = self.lease.extend(ttl).await;
        if let Err(e) = &result {
            lost(&self.locks, &self.key, self.mode, &self.counted_lost, e);
        }
        result
    }

    /// See [`Lease::is_held`]: answered from the lease's own expiry, without
    /// a backend call. A lease found expired counts as lost (a holder that
    /// was frozen past it learns it here if no renewal told it first).
    pub fn is_held(&self) -> bool {
        let held = self.lease.is_held();
        if !held {
            let e = Error::conflict(format!("lease on {} expired", self.key));
            lost(&self.locks, &self.key, self.mode, &self.counted_lost, &e);
        }
        held
    }

    /// Renew the lease from the host to now + `expiry` every heartbeat
    /// interval while this handle lives, for at most `ceiling` from now.
    /// If the node dies or stalls, the renewals stop and the lease expires
    /// within `expiry`; a renewal that fails marks the lease lost.
    pub fn keep_alive(&mut self, expiry: Duration, ceiling: Duration) {
        if let Some(task) = self.heartbeat.take() {
            task.abort();
        }
        let interval = self.locks.heartbeat.min(expiry / 3).max(Duration::from_millis(10));
        let (lease, locks, key, mode) = (self.lease.clone(), self.locks.clone(), self.key.clone(), self.mode);
        let counted_lost = self.counted_lost.clone();
        let until = tokio::time::Instant::now() + ceiling;
        self.heartbeat = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if tokio::time::Instant::now() >= until {
                    tracing::warn!(
                        lock_key = key,
                        holder = &*locks.node_id,
                        "lock held past its ceiling; letting it expire"
                    );
                    return;
                }
                if let Err(e) = lease.extend(expiry).await {
                    lost(&locks, &key, mode, &counted_lost, &e);
                    return;
                }
            }
        }));
    }
}

/// Count and log a lease that could not be renewed (once per lease).
fn lost(locks: &Locks, key: &str, mode: Mode, counted: &std::sync::atomic::AtomicBool, e: &Error) {
    if counted.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return;
    }
    let labels =
        LockFailureLabels { r#type: lock_type(key).to_owned(), reason: "lost".into(), mode: mode.as_str().into() };
    locks.metrics.lock_failures.get_or_create(&labels).inc();
    tracing::warn!(lock_key = key, holder = &*locks.node_id, error = %e, "lease lost");
}

/// How often held leases are renewed by default (see [`LeaseHandle::keep_alive`]).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);

/// The lock service of a node: a backend, the key prefix and the retry policy.
#[derive(Clone)]
pub struct Locks {
    backend: Arc<dyn LockBackend>,
    prefix: String,
    retry: RetryPolicy,
    metrics: Arc<Metrics>,
    heartbeat: Duration,
    node_id: Arc<str>,
}

/// Backend timeouts of an acquire are retried only this early in it.
const RETRY_TIMEOUTS_WITHIN: Duration = Duration::from_secs(1);

impl Locks {
    /// A lock service over `backend` with keys under `prefix`.
    pub fn new(
        backend: Arc<dyn LockBackend>,
        prefix: impl Into<String>,
        retry: RetryPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into());
        let node_id = format!("{host}:{}:{:08x}", std::process::id(), rand::random::<u32>());
        Self { backend, prefix: prefix.into(), retry, metrics, heartbeat: DEFAULT_HEARTBEAT, node_id: node_id.into() }
    }

    /// Renew kept-alive leases every `interval` (`--cache-lock-heartbeat-interval`).
    pub fn with_heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// This node's name in lock logs.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    fn full_key(&self, key: &str) -> Result<String> {
        if !ncps_edge_wire::locks::is_valid_key(key) {
            return Err(Error::invalid(format!("bad lock key {key:?}")));
        }
        Ok(format!("{}{key}", self.prefix))
    }

    fn count(&self, key: &str, mode: Mode, outcome: std::result::Result<(), &str>) {
        let (t, m) = (lock_type(key).to_owned(), mode.as_str().to_owned());
        let result = if outcome.is_ok() { "success" } else { "failure" };
        let labels = LockLabels { r#type: t.clone(), result: result.into(), mode: m.clone() };
        self.metrics.lock_acquisitions.get_or_create(&labels).inc();
        if let Err(reason) = outcome {
            let labels = LockFailureLabels { r#type: t, reason: reason.into(), mode: m };
            self.metrics.lock_failures.get_or_create(&labels).inc();
        }
    }

    /// Take `key` once without waiting.
    pub async fn try_acquire(&self, key: &str, mode: Mode, ttl: Duration) -> Result<Option<LeaseHandle>> {
        let lease = self.try_once(key, mode, ttl).await;
        match &lease {
            Ok(Some(_)) => self.count(key, mode, Ok(())),
            Ok(None) => self.count(key, mode, Err("contended")),
            Err(_) => self.count(key, mode, Err("backend")),
        }
        lease
    }

    async fn try_once(&self, key: &str, mode: Mode, ttl: Duration) -> Result<Option<LeaseHandle>> {
        let full = self.full_key(key)?;
        let lease = self.backend.try_acquire(&full, mode, ttl).await?;
        Ok(lease.map(|lease| LeaseHandle {
            key: key.to_owned(),
            mode,
            lease: Arc::from(lease),
            acquired: std::time::Instant::now(),
            locks: self.clone(),
            heartbeat: None,
            counted_lost: Default::default(),
        }))
    }

    /// Take `key`, retrying with the policy; [`Error::Timeout`] when it stays held.
    pub async fn acquire(&self, key: &str, mode: Mode, ttl: Duration) -> Result<LeaseHandle> {
        let attempt = || async {
            match self.try_once(key, mode, ttl).await? {
                Some(lease) => Ok(lease),
                None => Err(Error::conflict(format!("lock {key} is held"))),
            }
        };
        let started = std::time::Instant::now();
        let result = attempt
            .retry(self.retry.backoff())
            .sleep(tokio::time::sleep)
            // Contention is waited out, and so is a backend call that ran out
            // of time early on (a busy server); one that keeps a caller
            // waiting longer is a stalled service, and retrying it would
            // multiply the time a request waits on it.
            .when(|e| match e {
                Error::Conflict(_) => true,
                Error::Timeout(_) => started.elapsed() < RETRY_TIMEOUTS_WITHIN,
                _ => false,
            })
            .notify(|_, _| {
                self.metrics.lock_retries.get_or_create(&LockTypeLabels { r#type: lock_type(key).to_owned() }).inc();
            })
            .await;
        match result {
            Ok(lease) => {
                self.count(key, mode, Ok(()));
                tracing::debug!(
                    lock_key = key,
                    lock_type = lock_type(key),
                    mode = mode.as_str(),
                    duration_ms = started.elapsed().as_millis() as u64,
                    "acquired lock"
                );
                Ok(lease)
            }
            Err(Error::Conflict(m)) => {
                self.count(key, mode, Err("timeout"));
                tracing::info!(
                    lock_key = key,
                    lock_type = lock_type(key),
                    mode = mode.as_str(),
                    retries = self.retry.max_attempts,
                    "failed to acquire lock"
                );
                Err(Error::Timeout(m))
            }
            Err(e) => {
                self.count(key, mode, Err("backend"));
                tracing::warn!(lock_key = key, lock_type = lock_type(key), mode = mode.as_str(), error = %e, "failed to acquire lock");
                // To the guest a timeout means "held": a backend's is an outage.
                Err(match e {
                    Error::Timeout(cause) => Error::Unavailable(cause),
                    e => e,
                })
            }
        }
    }
}
