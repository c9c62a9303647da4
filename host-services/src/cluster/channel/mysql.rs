//! Purges over MySQL: MySQL has no notifications, so purges are rows of a
//! table that every node polls; each successful poll proves the channel.
//! The channel holds no connection of its own: it takes one from the
//! node's metadata pool for each poll and publish, so a node's idle
//! connections are its metadata pool's and its lock session. A poll that
//! fails (a busy pool, a dropped connection, a server away for minutes)
//! loses nothing: the next one reads on from where the last one that
//! succeeded stopped, and the table keeps rows for ten minutes, so the
//! node keeps its tier too. Rows are pruned only right after an insert,
//! so the newest one stays and ids only grow (a server that sets its
//! counter from the highest id at start continues from there); a poll that
//! finds the newest id below the highest it read knows the table went back
//! (a restore, a failover to a replica that lagged) and that purges may be
//! lost: the node's tier starts empty.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tokio::sync::Mutex;

use super::{Channel, Heard, Publisher};
use crate::{Error, Result};

/// How often a node polls for purges.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How long purge rows are kept.
const KEPT: Duration = Duration::from_secs(600);
/// How often a publisher deletes old rows.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Ids are given at insert but rows become visible at commit, possibly out
/// of order: each poll reads again this many ids below the highest seen.
const REORDER_WINDOW: u64 = 256;
/// Time one publish or poll may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

const TABLE: &str = "CREATE TABLE IF NOT EXISTS ncps_edge_purges (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    message MEDIUMTEXT NOT NULL,
    created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    KEY ncps_edge_purges_created (created_at)
)";

/// The table `ncps_edge_purges` of the metadata database, reached through
/// the metadata's pool.
pub struct MySqlChannel {
    pool: mysql_async::Pool,
    last_prune: Mutex<Instant>,
    /// Where the last poll that succeeded stopped: where the listener
    /// reads on from when it listens again.
    read: std::sync::Mutex<Option<Read>>,
}

/// What a node's polls have read of the table.
#[derive(Clone, Debug)]
struct Read {
    /// The highest id when the node first listened: rows up to it are older
    /// than anything the node keeps.
    start: u64,
    /// The highest id read.
    highest: u64,
    /// The ids read within [`REORDER_WINDOW`] of `highest`.
    seen: BTreeSet<u64>,
}

fn failed(e: impl std::fmt::Display) -> Error {
    Error::unavailable("mysql", e.to_string())
}

async fn within<T>(call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(CALL_TIMEOUT, call).await.map_err(|_| failed("edge-cache call timed out"))?
}

impl MySqlChannel {
    /// The channel on the database of `pool` (a node's metadata pool,
    /// [`crate::metadata::mysql::MySqlMetadata::pool`]); its table is made
    /// if missing.
    pub async fn on_pool(pool: mysql_async::Pool) -> Result<Self> {
        within(async {
            let mut conn = pool.get_conn().await.map_err(failed)?;
            conn.query_drop(TABLE).await.map_err(failed)
        })
        .await?;
        Ok(Self { pool, last_prune: Mutex::new(Instant::now()), read: std::sync::Mutex::default() })
    }
}

impl MySqlChannel {
    /// The newest id in the table (0: none).
    async fn newest(&self) -> Result<u64> {
        let newest: Option<u64> = within(async {
            let mut conn = self.pool.get_conn().await.map_err(failed)?;
            conn.query_first("SELECT COALESCE(MAX(id), 0) FROM ncps_edge_purges").await.map_err(failed)
        })
        .await?;
        Ok(newest.unwrap_or(0))
    }

    /// Where the listener reads on from when it listens again.
    fn keep(&self, read: &Read) {
        if let Ok(mut kept) = self.read.lock() {
            *kept = Some(read.clone());
        }
    }
}

#[async_trait::async_trait]
impl Publisher for MySqlChannel {
    async fn publish(&self, message: &str) -> Result<()> {
        within(async {
            let mut conn = self.pool.get_conn().await.map_err(failed)?;
            conn.exec_drop("INSERT INTO ncps_edge_purges (message) VALUES (?)", (message,)).await.map_err(failed)?;
            let mut last = self.last_prune.lock().await;
            // Right after an insert, so the newest row is never pruned.
            if last.elapsed() > PRUNE_EVERY {
                *last = Instant::now();
                let prune = format!(
                    "DELETE FROM ncps_edge_purges WHERE created_at < NOW(3) - INTERVAL {} SECOND",
                    KEPT.as_secs()
                );
                conn.query_drop(prune).await.map_err(failed)?;
            }
            Ok(())
        })
        .await
    }

    fn max_message(&self) -> usize {
        1 << 20
    }
}

#[async_trait::async_trait]
impl Channel for MySqlChannel {
    fn polled(&self) -> bool {
        true
    }

    /// Half of what the table keeps: the rest is room for the clocks of
    /// the publishers and the server, and for the prune's own pace.
    fn resumes_within(&self) -> Option<Duration> {
        Some(KEPT / 2)
    }

    async fn listen(&self, _index: usize, _node: &str, heard: &(dyn Fn(Heard) + Send + Sync)) -> Result<()> {
        // A connection from the pool for each poll, given back between
        // polls: the pool's idle connections serve the channel too.
        let resumed = self.read.lock().map_err(|_| Error::internal("mysql", "edge-cache channel state"))?.clone();
        let mut read = match resumed {
            Some(read) => read,
            None => {
                let start = self.newest().await?;
                let read = Read { start, highest: start, seen: BTreeSet::new() };
                self.keep(&read);
                heard(Heard::Alive);
                read
            }
        };
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            let from = read.highest.saturating_sub(REORDER_WINDOW);
            // The new rows, or the newest id when the table went back.
            let polled: std::result::Result<Vec<(u64, String)>, u64> = within(async {
                let mut conn = self.pool.get_conn().await.map_err(failed)?;
                // The ids after `from`, and the newest (when none is).
                let ids: Vec<u64> = conn
                    .exec(
                        "SELECT id FROM ncps_edge_purges \
                         WHERE id > ? OR id = (SELECT MAX(id) FROM ncps_edge_purges) ORDER BY id",
                        (from,),
                    )
                    .await
                    .map_err(failed)?;
                let newest = ids.last().copied().unwrap_or(0);
                if newest < read.highest {
                    return Ok(Err(newest));
                }
                let new: Vec<u64> = ids.into_iter().filter(|id| *id > read.start && !read.seen.contains(id)).collect();
                let (Some(first), Some(last)) = (new.first(), new.last()) else { return Ok(Ok(Vec::new())) };
                conn.exec(
                    "SELECT id, message FROM ncps_edge_purges WHERE id BETWEEN ? AND ? ORDER BY id",
                    (first, last),
                )
                .await
                .map(Ok)
                .map_err(failed)
            })
            .await?;
            let rows = match polled {
                Ok(rows) => rows,
                Err(newest) => {
                    // The table went back: what was sent since is not known.
                    tracing::warn!(
                        newest,
                        highest = read.highest,
                        "the edge-cache purge table went back: purges may be lost"
                    );
                    heard(Heard::Lost);
                    read = Read { start: newest, highest: newest, seen: BTreeSet::new() };
                    self.keep(&read);
                    heard(Heard::Alive);
                    continue;
                }
            };
            for (id, message) in rows {
                if read.seen.insert(id) {
                    heard(Heard::Message(message));
                }
                read.highest = read.highest.max(id);
            }
            read.seen = read.seen.split_off(&read.highest.saturating_sub(REORDER_WINDOW));
            self.keep(&read);
            heard(Heard::Alive);
        }
    }
}
