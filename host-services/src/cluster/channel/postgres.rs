//! Purges over PostgreSQL `LISTEN`/`NOTIFY` on the metadata database.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use super::{Channel, Heard, Publisher};
use crate::{Error, Result};

/// Time one publish may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// The notification channel `<--cache-lock-postgres-key-prefix>edge-cache`.
pub struct PgChannel {
    url: String,
    name: String,
    publisher: Mutex<Option<Client>>,
}

fn failed(e: impl std::fmt::Display) -> Error {
    Error::unavailable("postgres", e.to_string())
}

impl PgChannel {
    /// The channel on the database at `url`, named after `prefix`.
    pub fn new(url: &str, prefix: &str) -> Self {
        // Channel names are identifiers: at most 63 bytes.
        let mut name = ncps_edge_wire::channel::name(prefix);
        while name.len() > 63 {
            name.remove(0);
        }
        Self { url: url.to_owned(), name, publisher: Mutex::new(None) }
    }

    async fn connect(
        &self,
    ) -> Result<(Client, tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>)> {
        tokio_postgres::connect(&self.url, NoTls).await.map_err(failed)
    }
}

#[async_trait::async_trait]
impl Publisher for PgChannel {
    async fn publish(&self, message: &str) -> Result<()> {
        let mut slot = self.publisher.lock().await;
        let send = async {
            if slot.as_ref().is_none_or(Client::is_closed) {
                let (client, conn) = self.connect().await?;
                tokio::spawn(conn);
                *slot = Some(client);
            }
            let client = slot.as_ref().ok_or_else(|| failed("no connection"))?;
            client.execute("SELECT pg_notify($1, $2)", &[&self.name, &message]).await.map_err(failed)
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, send).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                *slot = None;
                Err(e)
            }
            Err(_) => {
                *slot = None;
                Err(failed("publishing a purge timed out"))
            }
        }
    }

    fn max_message(&self) -> usize {
        // NOTIFY payloads must be shorter than 8000 bytes.
        7900
    }
}

#[async_trait::async_trait]
impl Channel for PgChannel {
    async fn listen(&self, _index: usize, heard: &(dyn Fn(Heard) + Send + Sync)) -> Result<()> {
        let (client, mut conn) = self.connect().await?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // The connection delivers notifications as it is polled.
        let driver = tokio::spawn(async move {
            loop {
                match futures_util::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if tx.send(n.payload().to_owned()).is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "edge-cache PostgreSQL connection failed");
                        return;
                    }
                    None => return,
                }
            }
        });
        let quoted = format!("\"{}\"", self.name.replace('"', "\"\""));
        if let Err(e) = client.batch_execute(&format!("LISTEN {quoted}")).await {
            driver.abort();
            return Err(failed(e));
        }
        while let Some(payload) = rx.recv().await {
            heard(Heard::Message(payload));
        }
        drop(client);
        Ok(())
    }
}
