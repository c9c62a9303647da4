//! Purges over Redis pub/sub: published to every master, heard from each
//! (a purge arrives as long as one master works). Each master also keeps
//! the purges it took in its purge log ([`ncps_edge_wire::purge_log`]),
//! which Spin nodes read.

use std::time::Duration;

use futures_util::StreamExt as _;
use ncps_edge_wire::purge_log;
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use super::{Channel, Heard, Publisher};
use crate::locks::redis::RedisOptions;
use crate::{Error, Result};

/// Time one publish may take on one master.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// The pub/sub channel `<--cache-lock-redis-key-prefix>edge-cache` on every master.
pub struct RedisChannel {
    name: String,
    masters: Vec<(String, redis::Client, OnceCell<ConnectionManager>)>,
    purge_log: [String; 2],
    publish_purge: redis::Script,
}

impl RedisChannel {
    /// The channel of the masters in `opts`, under `prefix`.
    pub fn new(opts: &RedisOptions, prefix: &str) -> Result<Self> {
        let masters = opts
            .addrs
            .iter()
            .map(|addr| Ok((addr.clone(), opts.client(addr)?, OnceCell::new())))
            .collect::<Result<_>>()?;
        let name = ncps_edge_wire::channel::name(prefix);
        let purge_log = purge_log::keys(&name);
        Ok(Self { name, masters, purge_log, publish_purge: redis::Script::new(purge_log::PUBLISH) })
    }
}

/// How a message is sent on one master.
#[derive(Clone, Copy)]
enum Delivery<'a> {
    /// PUBLISH on channel `name`.
    Publish(&'a str),
    /// Appended to the purge log, then published (the log's script).
    Purge(&'a redis::Script, &'a [String; 2]),
}

async fn publish_one(
    client: &redis::Client,
    conn: &OnceCell<ConnectionManager>,
    name: &str,
    how: Delivery<'_>,
    message: &str,
) -> std::result::Result<(), String> {
    let conn = conn.get_or_try_init(|| ConnectionManager::new(client.clone())).await.map_err(|e| e.to_string())?;
    let mut conn = conn.clone();
    let sent = match how {
        Delivery::Publish(channel) => {
            redis::cmd("PUBLISH").arg(channel).arg(message).query_async::<i64>(&mut conn).await
        }
        Delivery::Purge(script, keys) => {
            let mut call = script.prepare_invoke();
            call.key(&keys[0]).key(&keys[1]).arg(name).arg(message).arg(purge_log::KEPT_MS);
            call.invoke_async::<i64>(&mut conn).await
        }
    };
    sent.map(|_| ()).map_err(|e| e.to_string())
}

#[async_trait::async_trait]
impl Publisher for RedisChannel {
    async fn publish(&self, message: &str) -> Result<()> {
        self.send(Delivery::Publish(&self.name), message).await
    }

    async fn publish_purge(&self, message: &str) -> Result<()> {
        self.send(Delivery::Purge(&self.publish_purge, &self.purge_log), message).await
    }

    fn max_message(&self) -> usize {
        64 << 10
    }
}

impl RedisChannel {
    /// Send `message` on every master; fine when one took it.
    async fn send(&self, how: Delivery<'_>, message: &str) -> Result<()> {
        let name = &self.name;
        let sends = self.masters.iter().map(|(addr, client, conn)| async move {
            let sent = tokio::time::timeout(PUBLISH_TIMEOUT, publish_one(client, conn, name, how, message)).await;
            sent.map_err(|_| "timeout".to_string()).and_then(|r| r).map_err(|e| format!("{addr}: {e}"))
        });
        let results = futures_util::future::join_all(sends).await;
        if results.iter().any(Result::is_ok) {
            return Ok(());
        }
        let errors: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
        Err(Error::unavailable("redis", format!("publishing failed on every master: {}", errors.join("; "))))
    }
}

#[async_trait::async_trait]
impl Channel for RedisChannel {
    fn listeners(&self) -> usize {
        self.masters.len()
    }

    async fn heartbeat(&self, node: &str, message: &str) -> Result<()> {
        self.send(Delivery::Publish(&ncps_edge_wire::channel::heartbeats(&self.name, node)), message).await
    }

    async fn listen(&self, index: usize, node: &str, heard: &(dyn Fn(Heard) + Send + Sync)) -> Result<()> {
        let (addr, client, _) = &self.masters[index];
        let failed = |e: redis::RedisError| Error::unavailable("redis", format!("{addr}: {e}"));
        let mut pubsub = client.get_async_pubsub().await.map_err(failed)?;
        pubsub
            .subscribe(&[self.name.clone(), ncps_edge_wire::channel::heartbeats(&self.name, node)])
            .await
            .map_err(failed)?;
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            match msg.get_payload::<String>() {
                Ok(text) => heard(Heard::Message(text)),
                Err(e) => tracing::warn!(error = %e, "unreadable edge-cache message"),
            }
        }
        Ok(())
    }
}
