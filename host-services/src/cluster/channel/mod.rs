//! Purges from one node to all: over the lock service's own channel, so a
//! cache needs no other service. One module per backend: [`redis`]
//! (pub/sub on every master), [`postgres`] (`LISTEN`/`NOTIFY`), [`mysql`]
//! (a table every node polls).
//!
//! **Staleness bound.** A node proves to itself that it hears its channel:
//! on Redis by hearing its own heartbeat, published every [`HEARTBEAT`] on
//! a channel of its own (so a fleet's heartbeats grow with N, not N²); on
//! PostgreSQL by a round trip every [`HEARTBEAT`] on the connection that
//! holds its `LISTEN`; on MySQL by each successful poll (every
//! [`mysql::POLL_INTERVAL`]). A node that has had no proof for
//! [`HEARD_WITHIN`] answers nothing from its tier (every request runs the
//! handler) until it has proof again. Every channel gives a listener that
//! listens again the messages sent while it did not hear
//! ([`Channel::resumes_within`]: from the purge table of MySQL and
//! PostgreSQL, from Redis's purge log), so the node keeps its tier after
//! a gap up to that bound and starts with an empty one after a longer
//! gap. A channel that finds it cannot give every message ([`Heard::Lost`])
//! costs the node its proof at once, when no other listener of it hears
//! (Redis: one per master), so that the next proof empties the tier. So
//! after a purge on one node returns, every other node stops serving what
//! it purged within the channel's delivery time when it hears the
//! channel, and within [`HEARD_WITHIN`] when it does not: the worst case
//! is `HEARD_WITHIN` (3 s). The `max-age` the guest gives each
//! answer bounds the rest (a message lost by a channel that still delivers
//! heartbeats).

pub mod mysql;
pub mod postgres;
pub mod redis;
mod table;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ncps_edge_wire::channel::Message;

use super::{Cluster, Kept};
use crate::Result;

/// How often a node proves it hears its channel.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Without proof of hearing its channel for this long, a node stops
/// answering from its tier.
pub const HEARD_WITHIN: Duration = Duration::from_secs(3);
/// Pause before a failed listener connects again.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// Milliseconds since this process first asked.
fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Whether a node hears its channel.
#[derive(Debug, Default)]
pub struct Health {
    /// Off on a single node (nothing to hear).
    needs_proof: AtomicBool,
    /// [`now_ms`] + 1 of the last proof; 0: none yet.
    last_proof: AtomicU64,
}

impl Health {
    pub(super) fn expect_heartbeats(&self) {
        self.needs_proof.store(true, Ordering::Release);
    }

    /// Whether the channel was heard within [`HEARD_WITHIN`].
    pub fn is_heard(&self) -> bool {
        if !self.needs_proof.load(Ordering::Acquire) {
            return true;
        }
        let last = self.last_proof.load(Ordering::Acquire);
        last != 0 && now_ms() + 1 - last <= HEARD_WITHIN.as_millis() as u64
    }

    /// How long the channel has not been heard: none while it is (always
    /// on a single node); since start when it never was.
    pub fn unheard_for(&self) -> Option<Duration> {
        if self.is_heard() {
            return None;
        }
        let last = self.last_proof.load(Ordering::Acquire).saturating_sub(1);
        Some(Duration::from_millis(now_ms().saturating_sub(last)))
    }

    /// The node may have missed messages ([`Heard::Lost`]): not heard
    /// until the next proof, which empties the tier.
    fn lapse(&self) {
        self.last_proof.store(0, Ordering::Release);
    }

    /// Note a proof. When the channel had not been heard before it, for
    /// how long (since the last proof; `Duration::MAX` when there was
    /// none, or it [lapsed](Self::lapse)).
    fn proof(&self) -> Option<Duration> {
        let was_heard = self.is_heard();
        let now = now_ms() + 1;
        let last = self.last_proof.swap(now, Ordering::AcqRel);
        match (was_heard, last) {
            (true, _) => None,
            (false, 0) => Some(Duration::MAX),
            (false, last) => Some(Duration::from_millis(now.saturating_sub(last))),
        }
    }
}

/// What a listener remembers across its connections: where it stands in
/// what its channel keeps (a purge table's [`table::Read`], a Redis
/// master's purge log number), or when it last heard something (a purge
/// without a row). None until it first does.
#[derive(Debug)]
struct Remembered<T>(std::sync::Mutex<Option<T>>);

impl<T> Default for Remembered<T> {
    fn default() -> Self {
        Remembered(std::sync::Mutex::new(None))
    }
}

impl<T> Remembered<T> {
    /// What the listener remembers.
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<T>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Sends messages to every node listening on a channel.
#[async_trait::async_trait]
pub trait Publisher: Send + Sync {
    /// Send `message` to every node, this one included.
    async fn publish(&self, message: &str) -> Result<()>;
    /// Largest message the channel carries, bytes.
    fn max_message(&self) -> usize;
    /// Send purge `message` to every node: as any message, unless the
    /// channel also keeps purges for nodes that read them later (Redis:
    /// [`ncps_edge_wire::purge_log`], which Spin nodes read).
    async fn publish_purge(&self, message: &str) -> Result<()> {
        self.publish(message).await
    }
}

/// What a listener hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A message.
    Message(String),
    /// Proof that the channel works (a successful poll or round trip).
    Alive,
    /// Messages may have been lost (a channel that resumes found it could
    /// not): unless another of the node's listeners hears, the node is not
    /// heard until the next proof, which empties its tier.
    Lost,
}

/// A backend's channel.
#[async_trait::async_trait]
pub trait Channel: Publisher {
    /// Independent connections to listen on (one per Redis master).
    fn listeners(&self) -> usize {
        1
    }
    /// Whether listening proves itself ([`Heard::Alive`]), so no heartbeat
    /// is published.
    fn polled(&self) -> bool {
        false
    }
    /// How long a node may not hear the channel (its listener failing, or
    /// waiting) and still be given, once it hears again, every message
    /// sent meanwhile, so that it loses nothing and keeps its tier. A
    /// listener that finds it cannot give them reports [`Heard::Lost`].
    fn resumes_within(&self) -> Duration;
    /// Listen on connection `index`, handing what is heard to `heard`,
    /// until the connection fails: the shared channel, and the heartbeats
    /// of `node` (this one).
    async fn listen(&self, index: usize, node: &str, heard: &(dyn Fn(Heard) + Send + Sync)) -> Result<()>;
    /// Send `node`'s heartbeat `message` (only channels that are not
    /// [`polled`](Self::polled) send any). By default it goes to every
    /// node; a channel that can address `node` alone (its
    /// [`listen`](Self::listen) hears it) should, so a fleet's heartbeats
    /// cost each node one message a beat, not one per node.
    async fn heartbeat(&self, _node: &str, message: &str) -> Result<()> {
        self.publish(message).await
    }
}

/// Announce that `key` is downloaded here, to follow at `url` (`None`: done).
pub async fn publish_download(publisher: &dyn Publisher, key: &str, url: Option<&str>) -> Result<()> {
    publisher.publish(&Message::Download { key, url }.encode()).await
}

/// Announce a purge of `paths`, in as many messages as the channel needs.
pub async fn publish_purge(publisher: &dyn Publisher, paths: &[String]) -> Result<()> {
    for message in ncps_edge_wire::channel::purges(paths, publisher.max_message()) {
        publisher.publish_purge(&message).await?;
    }
    Ok(())
}

/// Listen on `channel` and announce this node's heartbeat, for `cluster`
/// (which publishes there: [`Cluster::connect`]) and for what the node
/// keeps (`kept`, which purges heard reach), until the
/// returned tasks are aborted.
pub fn spawn(
    cluster: Arc<Cluster>,
    kept: Arc<dyn Kept>,
    channel: Arc<dyn Channel>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let node = format!("{:016x}", rand::random::<u64>());
    let hearing: Arc<[AtomicU64]> = (0..channel.listeners()).map(|_| AtomicU64::new(0)).collect();
    let mut tasks: Vec<_> = (0..channel.listeners())
        .map(|i| {
            let listener = Listener { index: i, node: node.clone(), hearing: hearing.clone() };
            tokio::spawn(listen(cluster.clone(), kept.clone(), channel.clone(), listener))
        })
        .collect();
    if !channel.polled() {
        let beat = Message::Heartbeat(&node).encode();
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            loop {
                tick.tick().await;
                if let Err(e) = channel.heartbeat(&node, &beat).await {
                    tracing::debug!(error = %e, "edge-cache heartbeat not published");
                }
            }
        }));
    }
    tasks.push(tokio::spawn(watch_hearing(cluster)));
    tasks
}

/// One of a node's listeners.
#[derive(Clone)]
struct Listener {
    /// Its connection (a Redis master).
    index: usize,
    /// The node it listens for (its heartbeats).
    node: String,
    /// When each of the node's listeners last heard something on its
    /// current connection ([`now_ms`] + 1; 0: none since it connected).
    hearing: Arc<[AtomicU64]>,
}

impl Listener {
    /// Whether another of the node's listeners heard its connection within
    /// [`HEARD_WITHIN`] before `now` ([`now_ms`] + 1); each hears the
    /// node's heartbeat every [`HEARTBEAT`].
    fn another_hears(&self, now: u64) -> bool {
        self.hearing.iter().enumerate().any(|(i, last)| {
            let last = last.load(Ordering::Acquire);
            i != self.index && last != 0 && now.saturating_sub(last) <= HEARD_WITHIN.as_millis() as u64
        })
    }
}

/// One listener, reconnected whenever it fails or hears nothing for twice
/// [`HEARD_WITHIN`] (a connection that died without closing); the channel
/// [resumes](Channel::resumes_within) when it listens again.
async fn listen(cluster: Arc<Cluster>, kept: Arc<dyn Kept>, channel: Arc<dyn Channel>, listener: Listener) {
    let (index, node) = (listener.index, listener.node.clone());
    let resumes_within = channel.resumes_within();
    loop {
        let last = Arc::new(AtomicU64::new(now_ms()));
        let heard = {
            let (cluster, kept, last, node) = (cluster.clone(), kept.clone(), last.clone(), node.clone());
            let listener = listener.clone();
            move |h: Heard| {
                last.store(now_ms(), Ordering::Release);
                listener.hearing[index].store(now_ms() + 1, Ordering::Release);
                let m = match h {
                    Heard::Message(m) => m,
                    Heard::Alive => return proof(&cluster, kept.as_ref(), resumes_within),
                    Heard::Lost => return lost(&cluster, &listener),
                };
                match Message::decode(&m) {
                    Some(Message::Heartbeat(beat)) if beat == node => proof(&cluster, kept.as_ref(), resumes_within),
                    Some(Message::Purge(paths)) => {
                        let paths: Vec<String> = paths.into_iter().map(str::to_owned).collect();
                        kept.purge_here(&paths);
                    }
                    Some(Message::Download { key, url }) => cluster.heard_download(key, url),
                    Some(Message::Heartbeat(_)) | None => {}
                }
            }
        };
        let watchdog = async {
            let mut tick = tokio::time::interval(HEARD_WITHIN / 4);
            loop {
                tick.tick().await;
                if now_ms().saturating_sub(last.load(Ordering::Acquire)) > 2 * HEARD_WITHIN.as_millis() as u64 {
                    return;
                }
            }
        };
        tokio::select! {
            result = channel.listen(index, &node, &heard) => match result {
                Ok(()) => tracing::warn!(index, "edge-cache channel closed; listening again"),
                Err(e) => tracing::warn!(index, error = %e, "edge-cache channel failed; listening again"),
            },
            () = watchdog => tracing::warn!(index, "edge-cache channel silent; listening again"),
        }
        listener.hearing[index].store(0, Ordering::Release);
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// `listener` may have missed messages: the node loses its proof, unless
/// another of its listeners hears.
fn lost(cluster: &Cluster, listener: &Listener) {
    if listener.another_hears(now_ms() + 1) {
        return;
    }
    if cluster.health().is_heard() {
        tracing::warn!(
            index = listener.index,
            "no edge-cache listener hears: purges sent until one does are lost to this node, so its tier starts empty then"
        );
    }
    cluster.health().lapse();
}

/// Say when the node stops hearing the cluster (when it hears it again,
/// [`proof`] says so).
async fn watch_hearing(cluster: Arc<Cluster>) {
    let mut heard = true;
    let mut tick = tokio::time::interval(HEARD_WITHIN / 4);
    loop {
        tick.tick().await;
        let now = cluster.health().is_heard();
        if heard && !now {
            tracing::warn!(
                within = ?HEARD_WITHIN,
                "the cluster's channel is not heard: the edge tier answers only stale, marked, within --edge-cache-stale-if-error"
            );
        }
        heard = now;
    }
}

/// The channel proved itself: when it had not been heard, the tier starts
/// empty (purges may have been missed meanwhile), unless the channel gave
/// every message sent meanwhile (it resumes within `resumes_within`).
fn proof(cluster: &Cluster, kept: &dyn Kept, resumes_within: Duration) {
    let Some(unheard) = cluster.health().proof() else { return };
    if unheard <= resumes_within {
        tracing::info!(unheard = ?unheard, "edge-cache channel heard again, and every purge sent meanwhile with it; the tier is kept");
        return;
    }
    kept.clear_here();
    tracing::info!("edge-cache channel heard; the tier starts empty");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_without_proof_is_not_heard() {
        let health = Health::default();
        assert!(health.is_heard(), "a single node hears itself");
        health.expect_heartbeats();
        assert!(!health.is_heard(), "heard before any proof");
        assert_eq!(health.proof(), Some(Duration::MAX), "the first proof is a recovery");
        assert!(health.is_heard());
        assert_eq!(health.proof(), None);
    }

    #[test]
    fn a_lapse_ends_the_proof_and_the_next_proof_is_a_recovery() {
        let health = Health::default();
        health.expect_heartbeats();
        health.proof();
        health.lapse();
        assert!(!health.is_heard(), "heard after its listener's connection ended");
        assert_eq!(health.proof(), Some(Duration::MAX), "the proof after a lapse must empty the tier");
    }

    #[test]
    fn another_listener_hears_only_when_it_heard_lately() {
        let listener = |hearing: &Arc<[AtomicU64]>| Listener { index: 0, node: "n".into(), hearing: hearing.clone() };
        let now = 100_000;
        let stale = now - HEARD_WITHIN.as_millis() as u64 - 1;
        let hearing: Arc<[AtomicU64]> = [now, 0, stale].into_iter().map(AtomicU64::new).collect();
        assert!(!listener(&hearing).another_hears(now), "itself, one never heard and one heard too long ago");
        hearing[2].store(stale + 1, Ordering::Release);
        assert!(listener(&hearing).another_hears(now), "heard just within the bound");
        hearing[2].store(0, Ordering::Release);
        hearing[1].store(now, Ordering::Release);
        assert!(listener(&hearing).another_hears(now));
    }
}
