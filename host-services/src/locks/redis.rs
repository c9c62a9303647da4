//! Redis locks (Redlock). Each master is independent; a lease needs a quorum
//! (N/2+1) of masters within its validity window, as the Redlock algorithm
//! says. Per key there is an exclusive entry `{key}` (`SET NX PX` with a
//! random token) and a sorted set `{key}:readers` holding one entry per
//! shared holder, scored by its own expiry, so one reader's release or
//! expiry never touches another's. All checks run as atomic Lua scripts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::{Lease, LockBackend, Mode};
use crate::{Error, Result};

// The lock protocol's keys and Lua scripts are the Spin adapter's too, so
// native and Spin nodes exclude each other on one Redis.
use ncps_edge_wire::locks::redis::{
    keys as keys_for, ACQUIRE as ACQUIRE_SCRIPT, EXTEND as EXTEND_SCRIPT, RELEASE as RELEASE_SCRIPT,
};

/// Connection settings of `--cache-redis-*`.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `host:port` of each independent master.
    pub addrs: Vec<String>,
    /// ACL user name.
    pub username: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Database number.
    pub db: i64,
    /// Connect with TLS.
    pub use_tls: bool,
    /// PEM file of the CA that signed the servers' certificates (default:
    /// the public web roots).
    pub ca_cert: Option<std::path::PathBuf>,
}

impl RedisOptions {
    /// A client for the master at `addr`. Credentials are passed as they
    /// are, never pasted into a URL (where `@`, `:` or `/` in a password
    /// would change its meaning).
    pub(crate) fn client(&self, addr: &str) -> Result<redis::Client> {
        let (host, port) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.trim_start_matches('[').trim_end_matches(']'), p.parse::<u16>().ok()?)))
            .ok_or_else(|| Error::invalid(format!("redis address {addr:?} is not host:port")))?;
        let target = if self.use_tls {
            redis::ConnectionAddr::TcpTls { host: host.to_owned(), port, insecure: false, tls_params: None }
        } else {
            redis::ConnectionAddr::Tcp(host.to_owned(), port)
        };
        let mut settings = redis::RedisConnectionInfo::default().set_db(self.db);
        if let Some(user) = &self.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        let info = redis::IntoConnectionInfo::into_connection_info(target)
            .map_err(|e| Error::invalid(format!("redis {addr}: {e}")))?
            .set_redis_settings(settings);
        if self.use_tls {
            // Several crates of the node bring rustls; name its crypto once.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let client = match (&self.ca_cert, self.use_tls) {
            (Some(path), true) => {
                let pem = std::fs::read(path)
                    .map_err(|e| Error::invalid(format!("reading Redis CA certificate {}: {e}", path.display())))?;
                let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
                redis::Client::build_with_tls(info, certs)
            }
            _ => redis::Client::open(info),
        };
        client.map_err(|e| Error::invalid(format!("redis {addr}: {e}")))
    }
}

struct Scripts {
    acquire: Script,
    release: Script,
    extend: Script,
}

struct Masters {
    conns: Vec<ConnectionManager>,
    scripts: Scripts,
}

impl Masters {
    fn quorum(&self) -> usize {
        self.conns.len() / 2 + 1
    }

    /// Run `script` on every master at once, each bounded by `timeout`:
    /// (successes, errors, of which timeouts).
    async fn run(
        &self,
        script: &Script,
        keys: &[String; 2],
        args: (&str, u64, &str),
        timeout: Duration,
    ) -> (usize, usize, usize) {
        let calls = self.conns.iter().map(|conn| {
            let mut conn = conn.clone();
            let mut inv = script.prepare_invoke();
            inv.key(&keys[0]).key(&keys[1]).arg(args.0).arg(args.1).arg(args.2);
            async move { tokio::time::timeout(timeout, inv.invoke_async::<i64>(&mut conn)).await }
        });
        let results = futures_util::future::join_all(calls).await;
        let ok = results.iter().filter(|r| matches!(r, Ok(Ok(n)) if *n > 0)).count();
        let errors = results.iter().filter(|r| !matches!(r, Ok(Ok(_)))).count();
        // Late answers: past our deadline, or past the client's own
        // response timeout (500 ms by default).
        let timeouts = results
            .iter()
            .filter(|r| match r {
                Err(_) => true,
                Ok(Err(e)) => e.is_timeout(),
                Ok(Ok(_)) => false,
            })
            .count();
        (ok, errors, timeouts)
    }
}

/// Redis lock backend (`--cache-lock-backend=redis`).
#[derive(Clone)]
pub struct RedisLocks {
    masters: Arc<Masters>,
}

fn mode_arg(mode: Mode) -> &'static str {
    match mode {
        Mode::Exclusive => "x",
        Mode::Shared => "s",
    }
}

/// Time one master call may take.
fn call_timeout(ttl: Duration) -> Duration {
    (ttl / 5).clamp(Duration::from_millis(50), Duration::from_secs(2))
}

/// Clock drift allowance of the Redlock validity computation.
fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

impl RedisLocks {
    /// Connect to every master.
    pub async fn connect(opts: &RedisOptions) -> Result<Self> {
        if opts.addrs.is_empty() {
            return Err(Error::invalid("--cache-redis-addrs is empty"));
        }
        let mut conns = Vec::new();
        for addr in &opts.addrs {
            let client = opts.client(addr)?;
            // Each call is bounded by `call_timeout`, not by the client's
            // own response timeout (500 ms, whatever the lease).
            let config = ConnectionManagerConfig::new().set_response_timeout(None);
            let conn = ConnectionManager::new_with_config(client, config)
                .await
                .map_err(|e| Error::unavailable("redis", format!("{addr}: {e}")))?;
            conns.push(conn);
        }
        let scripts = Scripts {
            acquire: Script::new(ACQUIRE_SCRIPT),
            release: Script::new(RELEASE_SCRIPT),
            extend: Script::new(EXTEND_SCRIPT),
        };
        Ok(Self { masters: Arc::new(Masters { conns, scripts }) })
    }
}

#[async_trait::async_trait]
impl LockBackend for RedisLocks {
    async fn try_acquire(&self, key: &str, mode: Mode, ttl: Duration) -> Result<Option<Box<dyn Lease>>> {
        let m = &self.masters;
        let keys = keys_for(key);
        let token = format!("{:032x}", rand::random::<u128>());
        let started = Instant::now();
        let ttl_ms = ttl.as_millis() as u64;
        let (ok, errors, timeouts) =
            m.run(&m.scripts.acquire, &keys, (&token, ttl_ms, mode_arg(mode)), call_timeout(ttl)).await;
        let validity = ttl.checked_sub(started.elapsed() + drift(ttl));
        if ok >= m.quorum() {
            if let Some(validity) = validity {
                return Ok(Some(Box::new(RedisLease {
                    masters: m.clone(),
                    keys,
                    token,
                    mode,
                    expiry: Mutex::new(started + validity),
                    lost: AtomicBool::new(false),
                })));
            }
        }
        // No quorum (or no time left): undo whatever was taken.
        if ok > 0 {
            m.run(&m.scripts.release, &keys, (&token, 0, mode_arg(mode)), call_timeout(ttl)).await;
        }
        if errors > m.conns.len() - m.quorum() {
            let why = format!("{errors} of {} masters unreachable", m.conns.len());
            // Masters that only answered late are busy or stalled, not down.
            return Err(if timeouts == errors {
                Error::timeout("redis", why)
            } else {
                Error::unavailable("redis", why)
            });
        }
        Ok(None)
    }
}

struct RedisLease {
    masters: Arc<Masters>,
    keys: [String; 2],
    token: String,
    mode: Mode,
    expiry: Mutex<Instant>,
    lost: AtomicBool,
}

#[async_trait::async_trait]
impl Lease for RedisLease {
    async fn extend(&self, ttl: Duration) -> Result<()> {
        if !self.is_held() {
            return Err(Error::conflict(format!("lease on {} was lost", self.keys[0])));
        }
        let m = &self.masters;
        let started = Instant::now();
        let args = (self.token.as_str(), ttl.as_millis() as u64, mode_arg(self.mode));
        let (ok, _, _) = m.run(&m.scripts.extend, &self.keys, args, call_timeout(ttl)).await;
        match ttl.checked_sub(started.elapsed() + drift(ttl)) {
            Some(validity) if ok >= m.quorum() => {
                *self.expiry.lock().unwrap_or_else(|p| p.into_inner()) = started + validity;
                Ok(())
            }
            _ => {
                self.lost.store(true, Ordering::SeqCst);
                Err(Error::conflict(format!("lease on {} was lost", self.keys[0])))
            }
        }
    }

    fn is_held(&self) -> bool {
        !self.lost.load(Ordering::SeqCst) && *self.expiry.lock().unwrap_or_else(|p| p.into_inner()) > Instant::now()
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // No runtime: the TTL frees the key.
        };
        let (masters, keys, token, mode) = (self.masters.clone(), self.keys.clone(), self.token.clone(), self.mode);
        rt.spawn(async move {
            let release = &masters.scripts.release;
            masters.run(release, &keys, (&token, 0, mode_arg(mode)), Duration::from_millis(500)).await;
        });
    }
}
