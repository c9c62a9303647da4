//! Purges over MySQL: MySQL has no notifications, so purges are rows of a
//! table that every node polls; each successful poll proves the channel.
//! The channel holds no connection of its own: it takes one from the
//! node's metadata pool for each poll and publish, so a node's idle
//! connections are its metadata pool's and its lock session. A poll that
//! fails (a busy pool, a dropped connection, a server away for minutes)
//! loses nothing: the next one reads on from where the last one that
//! succeeded stopped ([`table`](super::table)), and the table keeps rows
//! for ten minutes, so the node keeps its tier too (a server that sets
//! its counter from the highest id at start continues from there); a poll
//! that finds the table went back knows that purges may be lost: the
//! node's tier starts empty.

use std::time::Duration;

use mysql_async::prelude::Queryable;

use super::table::{self, Pruned, Read};
use super::{Channel, Heard, Publisher, Remembered};
use crate::{Error, Result};

/// How often a node polls for purges.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
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
    pruned: Pruned,
    /// Where the last poll that succeeded stopped: where the listener
    /// reads on from when it listens again.
    read: Remembered<Read>,
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
        Ok(Self { pool, pruned: Pruned::default(), read: Remembered::default() })
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
}

#[async_trait::async_trait]
impl Publisher for MySqlChannel {
    async fn publish(&self, message: &str) -> Result<()> {
        within(async {
            let mut conn = self.pool.get_conn().await.map_err(failed)?;
            conn.exec_drop("INSERT INTO ncps_edge_purges (message) VALUES (?)", (message,)).await.map_err(failed)?;
            // Right after an insert, so the newest row is never pruned.
            if self.pruned.due() {
                let prune = format!(
                    "DELETE FROM ncps_edge_purges WHERE created_at < NOW(3) - INTERVAL {} SECOND",
                    table::KEPT.as_secs()
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

    fn resumes_within(&self) -> Duration {
        table::RESUMES_WITHIN
    }

    async fn listen(&self, _index: usize, _node: &str, heard: &(dyn Fn(Heard) + Send + Sync)) -> Result<()> {
        // A connection from the pool for each poll, given back between
        // polls: the pool's idle connections serve the channel too.
        let resumed = self.read.lock().clone();
        let mut read = match resumed {
            Some(read) => read,
            None => {
                let read = Read::at(self.newest().await?);
                *self.read.lock() = Some(read.clone());
                heard(Heard::Alive);
                read
            }
        };
        loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            let from = read.from();
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
                if read.went_back(newest) {
                    return Ok(Err(newest));
                }
                let new: Vec<u64> = ids.into_iter().filter(|id| read.is_new(*id)).collect();
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
                    tracing::warn!(newest, "the edge-cache purge table went back: purges may be lost");
                    heard(Heard::Lost);
                    read = Read::at(newest);
                    *self.read.lock() = Some(read.clone());
                    heard(Heard::Alive);
                    continue;
                }
            };
            for (id, message) in rows {
                if read.note(id) {
                    heard(Heard::Message(message));
                }
            }
            *self.read.lock() = Some(read.clone());
            heard(Heard::Alive);
        }
    }
}
