//! `ncps:edge/locks` over Redis with the native Redis backend's keys and
//! Lua scripts (`ncps_edge_wire::locks`), so Spin and native nodes that
//! share a Redis exclude each other. One master: under Spin a lease lives
//! in the one Redis the `redis_address` variable names.
//!
//! Spin runs no background task, so `keep-alive` renews on the instance's
//! own calls: every storage write and every `is-held` renews the leases
//! whose last renewal is a third of their expiry old. A stalled or trapped
//! instance stops renewing and its leases expire within `expiry-ms`.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use crate::bindings::exports::ncps::edge::locks::{Guest, GuestLease, Lease, Mode};
use crate::bindings::exports::ncps::edge::types::Error as WitError;
use crate::bindings::fermyon::spin::redis::RedisParameter;
use crate::bindings::wasi::clocks::monotonic_clock;
use crate::error::{Error, Result};
use crate::{redis, settings};

use ncps_edge_wire::locks::redis::{keys as keys_of, ACQUIRE, EXTEND, RELEASE};

fn now_ms() -> u64 {
    monotonic_clock::now() / 1_000_000
}

fn sleep_ms(ms: u64) {
    monotonic_clock::subscribe_duration(ms * 1_000_000).block();
}

/// What a held lease knows about itself.
struct State {
    keys: [String; 2],
    token: String,
    mode: &'static str,
    /// Monotonic ms after which the lease is not held any more.
    expiry: Cell<u64>,
    lost: Cell<bool>,
    /// `keep-alive`: (expiry-ms, ceiling as a monotonic ms, last renewal).
    keep_alive: Cell<Option<(u64, u64, u64)>>,
}

thread_local! {
    /// Leases with a keep-alive, renewed by [`heartbeat`].
    static KEPT_ALIVE: RefCell<Vec<Weak<State>>> = const { RefCell::new(Vec::new()) };
}

impl State {
    fn args(&self, ttl_ms: u64) -> [RedisParameter; 3] {
        [redis::text(&self.token), RedisParameter::Int64(ttl_ms as i64), redis::text(self.mode)]
    }

    fn is_held(&self) -> bool {
        !self.lost.get() && now_ms() < self.expiry.get()
    }

    fn extend(&self, ttl_ms: u64) -> Result<()> {
        if !self.is_held() {
            return Err(Error::Conflict(format!("lease on {} was lost", self.keys[0])));
        }
        let started = now_ms();
        match redis::eval(EXTEND, &self.keys, &self.args(ttl_ms)) {
            Ok(n) if n > 0 => {
                self.expiry.set(started + ttl_ms);
                Ok(())
            }
            Ok(_) => {
                self.lost.set(true);
                crate::log::warn("a lock lease was lost", &[("key", &self.keys[0])]);
                Err(Error::Conflict(format!("lease on {} was lost", self.keys[0])))
            }
            Err(e) => Err(e),
        }
    }

    /// Renew if a keep-alive is due.
    fn renew_if_due(&self) {
        let Some((expiry_ms, ceiling, last)) = self.keep_alive.get() else { return };
        let now = now_ms();
        if now >= ceiling || now < last + expiry_ms / 3 || !self.is_held() {
            return;
        }
        let ttl = expiry_ms.min(ceiling - now);
        if let Err(e) = self.extend(ttl) {
            // A renewal that does not get through leaves the lease to its
            // expiry; one that finds it taken marks it lost (above).
            crate::log::warn("renewing a lock lease failed", &[("key", &self.keys[0]), ("error", &e.to_string())]);
        }
        self.keep_alive.set(Some((expiry_ms, ceiling, now)));
    }
}

/// Renew every kept-alive lease of this instance that is due.
pub fn heartbeat() {
    KEPT_ALIVE.with(|kept| {
        let mut kept = kept.borrow_mut();
        kept.retain(|w| w.strong_count() > 0);
        for state in kept.iter().filter_map(Weak::upgrade) {
            state.renew_if_due();
        }
    });
}

/// A held lease; dropping it releases the lock.
pub struct SpinLease(Rc<State>);

impl Drop for SpinLease {
    fn drop(&mut self) {
        if self.0.lost.get() {
            return;
        }
        if let Err(e) = redis::eval(RELEASE, &self.0.keys, &self.0.args(0)) {
            // The TTL frees the key.
            crate::log::warn("releasing a lock failed", &[("key", &self.0.keys[0]), ("error", &e.to_string())]);
        }
    }
}

impl GuestLease for SpinLease {
    fn extend(&self, ttl_ms: u64) -> std::result::Result<(), WitError> {
        self.0.extend(ttl_ms).map_err(WitError::from)
    }

    fn is_held(&self) -> bool {
        heartbeat();
        self.0.is_held()
    }

    fn keep_alive(&self, expiry_ms: u64, ceiling_ms: u64) {
        let now = now_ms();
        self.0.keep_alive.set(Some((expiry_ms, now + ceiling_ms, now)));
        KEPT_ALIVE.with(|kept| kept.borrow_mut().push(Rc::downgrade(&self.0)));
        // The lease runs for `expiry-ms` from now, renewed from here on.
        let _ = self.0.extend(expiry_ms.min(ceiling_ms));
    }
}

fn try_once(key: &str, mode: Mode, ttl_ms: u64) -> Result<Option<SpinLease>> {
    if !ncps_edge_wire::locks::is_valid_key(key) {
        return Err(Error::Invalid(format!("bad lock key {key:?}")));
    }
    let full = format!("{}{key}", settings::lock_prefix());
    let keys = keys_of(&full);
    let mut token = [0u8; 16];
    token.copy_from_slice(&crate::bindings::wasi::random::random::get_random_bytes(16));
    let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
    let mode = match mode {
        Mode::Exclusive => "x",
        Mode::Shared => "s",
    };
    let started = now_ms();
    let state = State {
        keys,
        token,
        mode,
        expiry: Cell::new(started + ttl_ms),
        lost: Cell::new(false),
        keep_alive: Cell::new(None),
    };
    match redis::eval(ACQUIRE, &state.keys, &state.args(ttl_ms))? {
        n if n > 0 => Ok(Some(SpinLease(Rc::new(state)))),
        _ => Ok(None),
    }
}

impl Guest for crate::Adapter {
    type Lease = SpinLease;

    fn acquire(key: String, mode: Mode, ttl_ms: u64) -> std::result::Result<Lease, WitError> {
        // `--cache-lock-retry-*`: attempts, then exponential back-off with jitter.
        let attempts = settings::number("lock_retry_max_attempts", 3).max(1);
        let mut delay = settings::number("lock_retry_initial_delay_ms", 100);
        let max_delay = settings::number("lock_retry_max_delay_ms", 2_000);
        for attempt in 1..=attempts {
            if let Some(lease) = try_once(&key, mode, ttl_ms)? {
                return Ok(Lease::new(lease));
            }
            if attempt < attempts {
                let jitter =
                    u64::from(crate::bindings::wasi::random::random::get_random_u64() as u32) % (delay / 2 + 1);
                sleep_ms(delay / 2 + jitter);
                delay = (delay * 2).min(max_delay);
            }
        }
        Err(WitError::Timeout(format!("lock {key} still held after {attempts} attempts")))
    }

    fn try_acquire(key: String, mode: Mode, ttl_ms: u64) -> std::result::Result<Option<Lease>, WitError> {
        Ok(try_once(&key, mode, ttl_ms)?.map(Lease::new))
    }
}
