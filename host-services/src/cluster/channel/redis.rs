//! Purges over Redis pub/sub: published to every master, heard from each
//! (a purge arrives as long as one master works). Each master also keeps
//! the purges it took in its purge log ([`ncps_edge_wire::purge_log`]),
//! which Spin nodes read, and from which a native node's listener resumes:
//! each heartbeat it hears says how far the log stood when it was sent
//! (every purge up to there was heard before it on the same
//! subscription), and a listener that subscribes again first reads the
//! purges after that number. So a connection that ends loses the node no
//! purge and no tier; a log that cannot give every purge since (trimmed,
//! lost with a restart, more than a read returns) says so, and the node's
//! tier starts empty.

use std::time::Duration;

use futures_util::StreamExt as _;
use ncps_edge_wire::purge_log;
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use super::{Channel, Heard, Publisher, Remembered};
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
    beat: redis::Script,
    read_log: redis::Script,
    /// Per master: the number of the newest purge in its log that its
    /// listener has heard (none before it first subscribed).
    heard_up_to: Vec<Remembered<u64>>,
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
        Ok(Self {
            name,
            heard_up_to: opts.addrs.iter().map(|_| Remembered::default()).collect(),
            masters,
            purge_log,
            publish_purge: redis::Script::new(purge_log::PUBLISH),
            beat: redis::Script::new(purge_log::HEARTBEAT),
            read_log: redis::Script::new(purge_log::READ),
        })
    }

    /// Master `index`'s connection for calls (publishes, reads of the log).
    async fn connection(&self, index: usize) -> std::result::Result<ConnectionManager, String> {
        let (_, client, conn) = &self.masters[index];
        let conn = conn.get_or_try_init(|| ConnectionManager::new(client.clone())).await.map_err(|e| e.to_string())?;
        Ok(conn.clone())
    }

    /// After subscribing: the purges master `index`'s log took since its
    /// listener last stood in it, handed to `heard`, or [`Heard::Lost`]
    /// when the log cannot give them all; the listener then stands at the
    /// newest.
    async fn resume(&self, index: usize, heard: &(dyn Fn(Heard) + Send + Sync)) -> Result<()> {
        let (addr, ..) = &self.masters[index];
        let failed = |e: String| Error::unavailable("redis", format!("{addr}: reading the purge log: {e}"));
        let since = *self.heard_up_to[index].lock();
        let mut conn = self.connection(index).await.map_err(failed)?;
        let mut call = self.read_log.prepare_invoke();
        call.key(&self.purge_log[0]).key(&self.purge_log[1]);
        call.arg(since.map(|n| n.to_string()).unwrap_or_default()).arg(purge_log::READ_MAX);
        let items: Vec<Vec<u8>> = call.invoke_async(&mut conn).await.map_err(|e| failed(e.to_string()))?;
        let read = purge_log::Read::parse(&items).ok_or_else(|| failed("an answer that is not the script's".into()))?;
        match since {
            // The first subscription: nothing kept can predate it.
            None => {}
            Some(since) if read.gap => {
                tracing::warn!(
                    addr,
                    since,
                    newest = read.last,
                    "the purge log cannot give every purge since this node last heard it"
                );
                heard(Heard::Lost);
            }
            Some(_) => read.messages.into_iter().for_each(|m| heard(Heard::Message(m))),
        }
        *self.heard_up_to[index].lock() = Some(read.last);
        Ok(())
    }
}

/// How a message is sent on one master.
#[derive(Clone, Copy)]
enum Delivery<'a> {
    /// PUBLISH on channel `name`.
    Publish(&'a str),
    /// Appended to the purge log, then published (the log's script).
    Purge(&'a redis::Script, &'a [String; 2]),
    /// A heartbeat on channel `name`, with the number of the newest purge
    /// (the heartbeat script, on the log's counter `counter`).
    Beat { script: &'a redis::Script, counter: &'a str, name: &'a str },
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
    /// Send `message` on master `index` as `how` says.
    async fn send_one(&self, index: usize, how: Delivery<'_>, message: &str) -> std::result::Result<(), String> {
        let mut conn = self.connection(index).await?;
        let sent = match how {
            Delivery::Publish(channel) => {
                redis::cmd("PUBLISH").arg(channel).arg(message).query_async::<i64>(&mut conn).await
            }
            Delivery::Purge(script, keys) => {
                let mut call = script.prepare_invoke();
                call.key(&keys[0]).key(&keys[1]).arg(&self.name).arg(message).arg(purge_log::KEPT_MS);
                call.invoke_async::<i64>(&mut conn).await
            }
            Delivery::Beat { script, counter, name } => {
                script.key(counter).arg(name).arg(message).invoke_async::<i64>(&mut conn).await
            }
        };
        sent.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Send `message` on every master; fine when one took it.
    async fn send(&self, how: Delivery<'_>, message: &str) -> Result<()> {
        let sends = self.masters.iter().enumerate().map(|(index, (addr, ..))| async move {
            let sent = tokio::time::timeout(PUBLISH_TIMEOUT, self.send_one(index, how, message)).await;
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

    /// The log's purges up to the newest when the listener subscribed
    /// again were read from the log; those after it are published to the
    /// subscription, and a heartbeat says how far they went.
    fn resumes_within(&self) -> Duration {
        Duration::from_millis(purge_log::KEPT_MS as u64) / 2
    }

    async fn heartbeat(&self, node: &str, message: &str) -> Result<()> {
        let name = ncps_edge_wire::channel::heartbeats(&self.name, node);
        self.send(Delivery::Beat { script: &self.beat, counter: &self.purge_log[1], name: &name }, message).await
    }

    async fn listen(&self, index: usize, node: &str, heard: &(dyn Fn(Heard) + Send + Sync)) -> Result<()> {
        let (addr, client, _) = &self.masters[index];
        let failed = |e: redis::RedisError| Error::unavailable("redis", format!("{addr}: {e}"));
        let beats = ncps_edge_wire::channel::heartbeats(&self.name, node);
        let mut pubsub = client.get_async_pubsub().await.map_err(failed)?;
        pubsub.subscribe(&[self.name.clone(), beats.clone()]).await.map_err(failed)?;
        // Subscribed before the log is read: every purge after what the
        // read returns reaches the subscription.
        self.resume(index, heard).await?;
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            let text = match msg.get_payload::<String>() {
                Ok(text) => text,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable edge-cache message");
                    continue;
                }
            };
            match purge_log::heartbeat_position(&text).filter(|_| msg.get_channel_name() == beats) {
                Some((beat, up_to)) => {
                    heard(Heard::Message(beat.to_owned()));
                    *self.heard_up_to[index].lock() = Some(up_to);
                }
                None => heard(Heard::Message(text)),
            }
        }
        Ok(())
    }
}
