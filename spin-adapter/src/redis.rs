//! This instance's Redis connection (`redis_address`, e.g.
//! `redis://127.0.0.1:6379`), opened on first use.

use std::cell::OnceCell;

use crate::bindings::fermyon::spin::redis::{Connection, Error as RedisError, RedisParameter, RedisResult};
use crate::breaker::{self, Backend};
use crate::error::{Error, Result};
use crate::settings;

thread_local! {
    static CONNECTION: OnceCell<Connection> = const { OnceCell::new() };
}

fn redis_error(e: RedisError) -> Error {
    match e {
        RedisError::InvalidAddress => Error::Invalid("the Spin variable `redis_address` is not a Redis address".into()),
        RedisError::TooManyConnections => Error::Unavailable("redis", "too many connections".into()),
        RedisError::TypeError => Error::Internal("redis", "unexpected reply type".into()),
        RedisError::Other(m) if m.contains("timed out") => Error::Timeout("redis", m),
        RedisError::Other(m) => Error::unreachable("redis", &m),
    }
}

/// Run `f` on the connection, unless the node's breaker for Redis is open
/// (Spin's Redis client has no timeout: the call is [`breaker::watched`]).
pub fn with<T>(f: impl FnOnce(&Connection) -> std::result::Result<T, RedisError>) -> Result<T> {
    breaker::guarded(Backend::Redis, || breaker::watched(Backend::Redis, || call(f)))
}

fn call<T>(f: impl FnOnce(&Connection) -> std::result::Result<T, RedisError>) -> Result<T> {
    CONNECTION.with(|cell| {
        if cell.get().is_none() {
            // Locks under Spin go over Redis only: PostgreSQL advisory
            // locks outlive a trapped instance in Spin's connection pool.
            let address = settings::var("redis_address").ok_or_else(|| {
                Error::Invalid(
                    "the Spin variable `redis_address` is not set: under Spin, locks need Redis \
                     (PostgreSQL advisory locks are not safe with Spin's connection pool)"
                        .into(),
                )
            })?;
            let _ = cell.set(Connection::open(&address).map_err(redis_error)?);
        }
        let conn = cell.get().ok_or_else(|| Error::Internal("redis", "no connection".into()))?;
        f(conn).map_err(redis_error)
    })
}

/// `EVAL script 2 keys[0] keys[1] args…`: the script's answer (arrays
/// flattened, as Spin answers).
pub fn eval_items(script: &str, keys: &[String; 2], args: &[RedisParameter]) -> Result<Vec<RedisResult>> {
    let mut params = vec![
        RedisParameter::Binary(script.as_bytes().to_vec()),
        RedisParameter::Int64(2),
        RedisParameter::Binary(keys[0].as_bytes().to_vec()),
        RedisParameter::Binary(keys[1].as_bytes().to_vec()),
    ];
    params.extend_from_slice(args);
    with(|c| c.execute("EVAL", &params))
}

/// `EVAL script 2 keys[0] keys[1] args…`: the script's integer answer.
pub fn eval(script: &str, keys: &[String; 2], args: &[RedisParameter]) -> Result<i64> {
    let results = eval_items(script, keys, args)?;
    match results.first() {
        Some(RedisResult::Int64(n)) => Ok(*n),
        other => Err(Error::Internal("redis", format!("EVAL answered {other:?}"))),
    }
}

/// Text parameter.
pub fn text(v: &str) -> RedisParameter {
    RedisParameter::Binary(v.as_bytes().to_vec())
}
