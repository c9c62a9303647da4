//! Purges over PostgreSQL `LISTEN`/`NOTIFY` on the metadata database, on
//! the node's [`PgLink`]: it listens on the session connection and
//! publishes on any, so the channel costs no connection of its own.

use tokio::sync::broadcast::error::RecvError;

use super::{Channel, Heard, Publisher, HEARTBEAT};
use crate::pg_link::{self, PgLink};
use crate::{Error, Result};

/// Time one publish may take.
const PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The notification channel `<--cache-lock-postgres-key-prefix>edge-cache`.
pub struct PgChannel {
    link: PgLink,
    name: String,
}

fn failed(e: impl std::fmt::Display) -> Error {
    Error::unavailable("postgres", e.to_string())
}

impl PgChannel {
    /// The channel on `link`'s database, named after `prefix`.
    pub fn new(link: PgLink, prefix: &str) -> Self {
        Self { link, name: identifier(ncps_edge_wire::channel::name(prefix)) }
    }

    /// Send `message` on channel `name`.
    async fn notify(&self, name: &str, message: &str) -> Result<()> {
        let send = async {
            let conn = self.link.lend().await?;
            conn.execute("SELECT pg_notify($1, $2)", &[&name, &message]).await
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, send).await {
            Ok(r) => r.map(|_| ()),
            Err(_) => Err(failed("publishing timed out")),
        }
    }
}

/// A channel name as PostgreSQL keeps it: identifiers are at most 63
/// bytes, so a longer one loses its head.
fn identifier(mut name: String) -> String {
    while name.len() > 63 {
        name.remove(0);
    }
    name
}

#[async_trait::async_trait]
impl Publisher for PgChannel {
    async fn publish(&self, message: &str) -> Result<()> {
        self.notify(&self.name, message).await
    }

    fn max_message(&self) -> usize {
        // NOTIFY payloads must be shorter than 8000 bytes.
        7900
    }
}

#[async_trait::async_trait]
impl Channel for PgChannel {
    fn polled(&self) -> bool {
        true
    }

    /// `LISTEN` on the session connection; every [`HEARTBEAT`] a round trip
    /// on that same connection proves it still hears ([`Heard::Alive`]).
    /// (PostgreSQL wakes every listener of a database for every `NOTIFY`,
    /// whatever its channel, so heartbeats sent as notifications would cost
    /// the server N² wake-ups a beat for N nodes.)
    async fn listen(&self, _index: usize, _node: &str, heard: &(dyn Fn(Heard) + Send + Sync)) -> Result<()> {
        // Subscribe first: nothing sent after the LISTEN is missed.
        let mut notifications = self.link.subscribe();
        let session = self.link.session().await?;
        let generation = self.link.generation();
        let quoted = format!("\"{}\"", self.name.replace('"', "\"\""));
        session.client().batch_execute(&format!("LISTEN {quoted}")).await.map_err(failed)?;
        drop(session);
        let mut beat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                notification = notifications.recv() => match notification {
                    Ok(pg_link::Heard::Notification { channel, payload }) if channel == self.name => {
                        heard(Heard::Message(payload));
                    }
                    Ok(pg_link::Heard::Notification { .. }) => {}
                    Ok(pg_link::Heard::Closed) => return Err(failed("the session connection ended")),
                    Err(RecvError::Lagged(n)) => return Err(failed(format!("{n} notifications missed"))),
                    Err(RecvError::Closed) => return Ok(()),
                },
                _ = beat.tick() => {
                    let session = self.link.session().await?;
                    let alive = tokio::time::timeout(PUBLISH_TIMEOUT, session.client().simple_query("")).await;
                    if generation != self.link.generation() {
                        return Err(failed("the session connection was replaced"));
                    }
                    match alive {
                        Ok(Ok(_)) => heard(Heard::Alive),
                        Ok(Err(e)) => return Err(failed(e)),
                        Err(_) => return Err(failed("the session connection did not answer")),
                    }
                }
            }
        }
    }
}
