//! Named locks: the contract every backend implements, and the policy
//! (key prefix, retry with backoff and jitter) shared by all of them.

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
/// Dropping it releases the lease and records how long it was held.
pub struct LeaseHandle {
    key: String,
    mode: Mode,
    lease: Box<dyn Lease>,
    acquired: std::time::Instant,
    metrics: Arc<Metrics>,
}

impl Drop for LeaseHandle {
    fn drop(&mut self) {
        let labels = LockModeLabels { r#type: lock_type(&self.key).to_owned(), mode: self.mode.as_str().to_owned() };
        self.metrics.lock_hold.get_or_create(&labels).observe(self.acquired.elapsed().as_secs_f64());
    }
}

impl LeaseHandle {
    /// The key without the prefix.
    pub fn key(&self) -> &str {
        &self.key
    }
    /// See [`Lease::extend`].
    pub async fn extend(&self, ttl: Duration) -> Result<()> {
        self.lease.extend(ttl).await
    }
    /// See [`Lease::is_held`].
    pub fn is_held(&self) -> bool {
        self.lease.is_held()
    }
}

/// The lock service of a node: a backend, the key prefix and the retry policy.
#[derive(Clone)]
pub struct Locks {
    backend: Arc<dyn LockBackend>,
    prefix: String,
    retry: RetryPolicy,
    metrics: Arc<Metrics>,
}

/// Longest key the guest may ask for (before the prefix).
const MAX_KEY_LEN: usize = 200;

impl Locks {
    /// A lock service over `backend` with keys under `prefix`.
    pub fn new(
        backend: Arc<dyn LockBackend>,
        prefix: impl Into<String>,
        retry: RetryPolicy,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { backend, prefix: prefix.into(), retry, metrics }
    }

    fn full_key(&self, key: &str) -> Result<String> {
        if key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(|c| c.is_control()) {
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
            lease,
            acquired: std::time::Instant::now(),
            metrics: self.metrics.clone(),
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
            .when(|e| matches!(e, Error::Conflict(_) | Error::Timeout(_)))
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
                Err(e)
            }
        }
    }
}
