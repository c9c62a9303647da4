//! The far nodes' network: proxies that delay every packet
//! ([`FAR_ONE_WAY`] each way) on a runtime of their own, so that what the
//! harness itself does meanwhile (reading and hashing fifty bodies, running
//! `wrk`) never holds a far node's packets longer than the delay.

use ncps_edge_test_support::StallProxy;

use super::FAR_ONE_WAY;

/// Delaying proxies to the database and the bucket.
pub struct FarProxies {
    /// To the database (`host:port` in [`StallProxy::addr`]).
    pub db: StallProxy,
    /// To the bucket.
    pub s3: StallProxy,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FarProxies {
    /// Proxies to `db` and `s3` (`host:port`), on two threads of their own.
    pub fn start(db: &str, s3: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("far-proxy")
            .enable_all()
            .build()
            .expect("the proxies' runtime");
        let (handle, db, s3) = (runtime.handle().clone(), db.to_owned(), s3.to_owned());
        // Started from a thread outside the caller's runtime: their tasks
        // live on their own runtime.
        let (db, s3) = std::thread::spawn(move || {
            handle.block_on(async {
                (StallProxy::with_delay(&db, FAR_ONE_WAY).await, StallProxy::with_delay(&s3, FAR_ONE_WAY).await)
            })
        })
        .join()
        .expect("the far proxies start");
        Self { db, s3, runtime: Some(runtime) }
    }
}

impl Drop for FarProxies {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
