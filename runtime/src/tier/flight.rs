//! Request coalescing: a request for a narinfo (or cache info) the tier
//! does not have waits for one already on its way through the guest
//! instead of asking it again, so an absent narinfo costs one upstream
//! request, not one per client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// The requests on their way through the guest, by tier key.
pub struct Flights {
    inflight: Mutex<HashMap<String, watch::Receiver<()>>>,
    /// Longest a request waits for the one ahead of it.
    patience: Duration,
}

/// A request that waits for the same answer on its way through the guest.
pub enum Flight {
    /// Nobody is asking: this request leads (and others wait for it).
    Lead(Lead),
    /// Another request leads: wait for it to end.
    Follow(watch::Receiver<()>),
}

/// Held by the request that leads a flight; others wake when it drops.
pub struct Lead {
    key: String,
    flights: Arc<Flights>,
    _done: watch::Sender<()>,
}

impl Drop for Lead {
    fn drop(&mut self) {
        self.flights.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

impl Flights {
    /// Flights whose followers wait at most `patience`.
    pub fn new(patience: Duration) -> Arc<Self> {
        Arc::new(Self { inflight: Mutex::default(), patience })
    }

    /// Join the flight of `key`: lead it, or follow the request that does.
    pub fn join(self: &Arc<Self>, key: &str) -> Flight {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = inflight.get(key) {
            return Flight::Follow(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        inflight.insert(key.to_owned(), rx);
        Flight::Lead(Lead { key: key.to_owned(), flights: self.clone(), _done: tx })
    }

    /// Wait for the request ahead (at most the patience).
    pub async fn follow(&self, mut rx: watch::Receiver<()>) {
        let _ = tokio::time::timeout(self.patience, rx.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_wake_when_the_lead_ends() {
        let flights = Flights::new(Duration::from_secs(30));
        let Flight::Lead(lead) = flights.join("/a.narinfo") else { panic!("nobody led") };
        let Flight::Follow(rx) = flights.join("/a.narinfo") else { panic!("a second lead") };
        assert!(matches!(flights.join("/b.narinfo"), Flight::Lead(_)), "another key waited");
        let waiting = tokio::spawn({
            let flights = flights.clone();
            async move { flights.follow(rx).await }
        });
        drop(lead);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("the follower kept waiting").unwrap();
        assert!(matches!(flights.join("/a.narinfo"), Flight::Lead(_)), "the ended flight is still there");
    }
}
