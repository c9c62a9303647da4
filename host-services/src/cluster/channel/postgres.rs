//! Purges over PostgreSQL `LISTEN`/`NOTIFY` on the metadata database, on
//! the node's [`PgLink`]: it listens on the session connection and
//! publishes on any, so the channel costs no connection of its own.
//!
//! A purge is also a row of the table `ncps_edge_purges` (made by the
//! first node that needs it, kept ten minutes; the metadata's schema is
//! the same in every dialect and has no such table), inserted in the same
//! statement that notifies, and its notification carries the row's id. A
//! listener that listens again (a replaced session connection, a
//! restarted server, notifications it fell behind on) first reads the rows
//! it has not heard ([`table`]), so it loses no purge and the node keeps
//! its tier. A table that went back, or a purge heard without a row (a
//! node of an older version in the fleet, within the last ten minutes),
//! means purges may be lost: the node's tier starts empty.

use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;

use super::table::{self, Pruned, Read};
use super::{Channel, Heard, Publisher, Remembered, HEARTBEAT};
use crate::pg_link::{self, Lent, PgLink};
use crate::{Error, Result};

/// Time one publish, or one read of the table, may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// The purge table, made under the metadata's migration lock: two
/// `CREATE TABLE IF NOT EXISTS` at once may both try to create it. One
/// simple query, so one transaction, which holds the lock.
fn make_table() -> String {
    format!(
        "SELECT pg_advisory_xact_lock({});
         CREATE TABLE IF NOT EXISTS ncps_edge_purges (
             id BIGSERIAL PRIMARY KEY,
             message TEXT NOT NULL,
             created_at TIMESTAMPTZ NOT NULL DEFAULT now()
         );
         CREATE INDEX IF NOT EXISTS ncps_edge_purges_created ON ncps_edge_purges (created_at)",
        ncps_edge_wire::sql::postgres::MIGRATION_LOCK
    )
}

/// Insert purge `$2` and notify channel `$1` of it, as `<id>\n<message>`.
const PUBLISH_PURGE: &str = "WITH purge AS (INSERT INTO ncps_edge_purges (message) VALUES ($2::TEXT) RETURNING id)
     SELECT pg_notify($1::TEXT, id::TEXT || E'\\n' || $2::TEXT) FROM purge";
/// Delete the rows older than what the table keeps.
const PRUNE: &str = "DELETE FROM ncps_edge_purges WHERE created_at < now() - make_interval(secs => $1::FLOAT8)";
/// The newest id (0: none).
const NEWEST: &str = "SELECT COALESCE(MAX(id), 0) FROM ncps_edge_purges";
/// The rows after id `$1`, and the newest (when none is), by id.
const ROWS_AFTER: &str = "SELECT id, message FROM ncps_edge_purges
     WHERE id > $1 OR id = (SELECT MAX(id) FROM ncps_edge_purges) ORDER BY id";

/// The notification channel `<--cache-lock-postgres-key-prefix>edge-cache`.
pub struct PgChannel {
    link: PgLink,
    name: String,
    pruned: Pruned,
    /// Where the listener stands in the table.
    read: Remembered<Read>,
    /// When the listener last heard a purge that has no row (sent by a
    /// node of an older version).
    unlogged: Remembered<Instant>,
}

fn failed(e: impl std::fmt::Display) -> Error {
    Error::unavailable("postgres", e.to_string())
}

impl PgChannel {
    /// The channel on `link`'s database, named after `prefix`; its table
    /// is made if missing.
    pub async fn on_link(link: PgLink, prefix: &str) -> Result<Self> {
        let this = Self {
            link,
            name: identifier(ncps_edge_wire::channel::name(prefix)),
            pruned: Pruned::default(),
            read: Remembered::default(),
            unlogged: Remembered::default(),
        };
        // Not within PUBLISH_TIMEOUT: another node may hold the lock for
        // its migrations (the caller bounds the wait).
        this.link.lend().await?.client().batch_execute(&make_table()).await.map_err(failed)?;
        Ok(this)
    }

    /// `call` on a lent connection, within [`PUBLISH_TIMEOUT`].
    async fn within<T>(&self, what: &str, call: impl AsyncFnOnce(Lent) -> Result<T>) -> Result<T> {
        let lent = async { call(self.link.lend().await?).await };
        tokio::time::timeout(PUBLISH_TIMEOUT, lent).await.map_err(|_| failed(format!("{what} timed out")))?
    }

    /// After `LISTEN`: the rows the listener has not heard, handed to
    /// `heard`, or [`Heard::Lost`] when purges may be lost; the listener
    /// then stands at the newest.
    async fn catch_up(&self, heard: &(dyn Fn(Heard) + Send + Sync)) -> Result<()> {
        let before = self.read.lock().clone();
        let Some(mut read) = before else {
            // The first LISTEN: nothing kept can predate it.
            let newest: i64 =
                self.within("reading the purge table", async |c| Ok(c.query_one(NEWEST, &[]).await?.get(0))).await?;
            *self.read.lock() = Some(Read::at(newest.max(0) as u64));
            return Ok(());
        };
        let from = read.from() as i64;
        let rows = self.within("reading the purge table", async |c| c.query(ROWS_AFTER, &[&from]).await).await?;
        let rows: Vec<(u64, String)> = rows.iter().map(|r| (r.get::<_, i64>(0).max(0) as u64, r.get(1))).collect();
        let newest = rows.last().map_or(0, |(id, _)| *id);
        // Such a node may have sent more while this one did not hear.
        let unlogged = *self.unlogged.lock();
        if read.went_back(newest) {
            tracing::warn!(newest, "the edge-cache purge table went back: purges may be lost");
            heard(Heard::Lost);
            // Every row read is applied.
            read = Read::at(0);
        } else if unlogged.is_some_and(|at| at.elapsed() < table::KEPT) {
            tracing::warn!(
                "a node that does not keep its purges in the purge table sent one lately: purges may be lost"
            );
            heard(Heard::Lost);
        }
        for (id, message) in rows {
            if read.note(id) {
                heard(Heard::Message(message));
            }
        }
        *self.read.lock() = Some(read);
        Ok(())
    }

    /// A notification on the channel: a purge with its row's id (applied
    /// even when its row was read already: ids are not checked against a
    /// table that may have gone back), or any other message.
    fn notified(&self, payload: String, heard: &(dyn Fn(Heard) + Send + Sync)) {
        let logged = payload.split_once('\n').and_then(|(id, message)| Some((id.parse::<u64>().ok()?, message)));
        match logged {
            Some((id, message)) => {
                if let Some(read) = self.read.lock().as_mut() {
                    read.note(id);
                }
                heard(Heard::Message(message.to_owned()));
            }
            None => {
                if let Some(ncps_edge_wire::channel::Message::Purge(_)) =
                    ncps_edge_wire::channel::Message::decode(&payload)
                {
                    *self.unlogged.lock() = Some(Instant::now());
                }
                heard(Heard::Message(payload));
            }
        }
    }

    /// Send `message` on channel `name`.
    async fn notify(&self, name: &str, message: &str) -> Result<()> {
        self.within("publishing", async |c| c.execute("SELECT pg_notify($1, $2)", &[&name, &message]).await.map(|_| ()))
            .await
    }
}

/// A channel name as PostgreSQL keeps it: identifiers are at most 63
/// bytes, so a longer one loses its head.
pub fn identifier(mut name: String) -> String {
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

    /// Inserted in the purge table and notified, in one statement; the
    /// table is pruned right after an insert, so its newest row stays.
    async fn publish_purge(&self, message: &str) -> Result<()> {
        let name = self.name.as_str();
        self.within("publishing", async |c| {
            c.query_one(PUBLISH_PURGE, &[&name, &message]).await?;
            if self.pruned.due() {
                c.execute(PRUNE, &[&(table::KEPT.as_secs_f64())]).await?;
            }
            Ok(())
        })
        .await
    }

    fn max_message(&self) -> usize {
        // NOTIFY payloads must be shorter than 8000 bytes, and a purge's
        // carries its row's id.
        7900
    }
}

#[async_trait::async_trait]
impl Channel for PgChannel {
    fn polled(&self) -> bool {
        true
    }

    fn resumes_within(&self) -> Duration {
        table::RESUMES_WITHIN
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
        // Listening before the table is read: every purge committed after
        // the read is notified.
        self.catch_up(heard).await?;
        let mut beat = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                notification = notifications.recv() => match notification {
                    Ok(pg_link::Heard::Notification { channel, payload }) if channel == self.name => {
                        self.notified(payload, heard);
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
