//! The metadata contract, run against every database available in this build.

use std::sync::Arc;

use ncps_edge_host_services::metadata::mysql::MySqlMetadata;
use ncps_edge_host_services::metadata::postgres::PgMetadata;
use ncps_edge_host_services::metadata::sqlite::SqliteMetadata;
use ncps_edge_host_services::metadata::{Database, MetadataStore, NarRecord, NarinfoRecord};
use ncps_edge_host_services::pg_link::{LinkLimits, PgLink, IDLE_CLOSE};
use ncps_edge_host_services::signer::Signer;
use ncps_edge_test_support as support;

/// A node's PostgreSQL link to `url`: up to `max_open` connections, one kept idle.
async fn link_with(url: &str, max_open: usize) -> PgLink {
    let limits = LinkLimits { max_open, max_idle: 1, session_idle_timeout: None };
    PgLink::connect(url, limits).await.expect("PostgreSQL must be reachable")
}

async fn pg_link(url: &str) -> PgLink {
    link_with(url, 4).await
}

async fn databases(dir: &std::path::Path) -> Vec<(&'static str, Arc<dyn Database>)> {
    vec![
        ("sqlite", Arc::new(SqliteMetadata::open(&dir.join("db.sqlite")).unwrap())),
        ("postgres", Arc::new(PgMetadata::connect(pg_link(&support::fresh_postgres().await).await).await.unwrap())),
        ("mysql", Arc::new(MySqlMetadata::connect(&support::fresh_mysql().await, 4, 1).await.unwrap())),
    ]
}

fn narinfo(hash: &str) -> NarinfoRecord {
    NarinfoRecord {
        hash: hash.into(),
        store_path: format!("/nix/store/{hash}-top"),
        url: "nar/0c5gsym8rwxz5ynj76j0gh1q9h9wv5pxfwy8k89plkrx0f8n3sah.nar.xz".into(),
        compression: "xz".into(),
        file_hash: Some("sha256:0c5gsym8rwxz5ynj76j0gh1q9h9wv5pxfwy8k89plkrx0f8n3sah".into()),
        file_size: Some(244),
        nar_hash: "sha256:1ryq5islnapbglfhqw3ji6zmh8qlgy0gnkqj1n1np8cfyk7n43hv".into(),
        nar_size: 384,
        references: vec!["357329bb1zwv4kcwlrl2qn47hiczjy4j-leaf".into(), "lrhi4ivsx7ppmwzk0jw3mhh587nbar7y-mid".into()],
        deriver: Some("l2iq5a5kvp7fx14k6xbfzwvsf4c45bmw-top.drv".into()),
        system: None,
        ca: None,
        sigs: vec!["a-1:sig1".into(), "b-1:sig2".into()],
    }
}

#[tokio::test]
async fn narinfos_round_trip_and_upsert() {
    let dir = tempfile::tempdir().unwrap();
    for (name, db) in databases(dir.path()).await {
        let h = "07hcdd9rppsp7n254gck5phaclgy1wnc";
        assert_eq!(db.get_narinfo(h).await.unwrap(), None, "{name}");
        db.put_narinfo(narinfo(h)).await.unwrap();
        assert_eq!(db.get_narinfo(h).await.unwrap(), Some(narinfo(h)), "{name}");
        let mut changed = narinfo(h);
        changed.sigs.push("c-1:sig3".into());
        changed.references.clear();
        db.put_narinfo(changed.clone()).await.unwrap();
        assert_eq!(db.get_narinfo(h).await.unwrap(), Some(changed), "{name}");
        assert!(db.delete_narinfo(h).await.unwrap(), "{name}");
        assert!(!db.delete_narinfo(h).await.unwrap(), "{name}");
    }
}

#[tokio::test]
async fn nar_records_and_total_size() {
    let dir = tempfile::tempdir().unwrap();
    for (name, db) in databases(dir.path()).await {
        let rec = |key: &str, stored: Option<u64>| NarRecord {
            key: key.into(),
            upstream_url: Some(format!("https://up.example/{key}")),
            file_hash: None,
            file_size: Some(10),
            stored_size: stored,
        };
        db.put_nar(rec("nar/a.nar", Some(100))).await.unwrap();
        db.put_nar(rec("nar/b.nar", None)).await.unwrap();
        db.put_nar(rec("nar/c.nar", Some(23))).await.unwrap();
        assert_eq!(db.total_size().await.unwrap(), 123, "{name}");
        db.put_nar(rec("nar/b.nar", Some(7))).await.unwrap();
        assert_eq!(db.total_size().await.unwrap(), 130, "{name}");
        assert_eq!(db.get_nar("nar/b.nar").await.unwrap(), Some(rec("nar/b.nar", Some(7))), "{name}");
        assert!(db.delete_nar("nar/a.nar").await.unwrap(), "{name}");
        assert_eq!(db.total_size().await.unwrap(), 30, "{name}");
    }
}

#[tokio::test]
async fn racing_key_generation_ends_with_one_key() {
    let dir = tempfile::tempdir().unwrap();
    for (name, db) in databases(dir.path()).await {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let db = db.clone();
                tokio::spawn(
                    async move { Signer::load_or_generate(None, db.as_ref(), "race").await.unwrap().public_key() },
                )
            })
            .collect();
        let mut keys = Vec::new();
        for t in tasks {
            keys.push(t.await.unwrap());
        }
        keys.dedup();
        assert_eq!(keys.len(), 1, "{name}: nodes disagree on the signing key: {keys:?}");
    }
}

#[tokio::test]
async fn sqlite_reopens_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let h = "07hcdd9rppsp7n254gck5phaclgy1wnc";
    SqliteMetadata::open(&path).unwrap().put_narinfo(narinfo(h)).await.unwrap();
    let again = SqliteMetadata::open(&path).unwrap();
    assert_eq!(again.get_narinfo(h).await.unwrap(), Some(narinfo(h)));
}

#[tokio::test]
async fn lru_order_follows_access_and_evict_takes_narinfos_along() {
    let dir = tempfile::tempdir().unwrap();
    for (name, db) in databases(dir.path()).await {
        for (i, key) in ["nar/a.nar", "nar/b.nar", "nar/c.nar"].iter().enumerate() {
            let rec = NarRecord {
                key: key.to_string(),
                upstream_url: None,
                file_hash: None,
                file_size: None,
                stored_size: Some(10 + i as u64),
            };
            db.put_nar(rec).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        db.put_nar(NarRecord {
            key: "nar/unstored.nar".into(),
            upstream_url: None,
            file_hash: None,
            file_size: None,
            stored_size: None,
        })
        .await
        .unwrap();
        let far_future = i64::MAX / 2;
        db.record_accesses(vec![("nar/a.nar".into(), far_future)]).await.unwrap();
        db.record_accesses(vec![("nar/a.nar".into(), 1)]).await.unwrap();
        let order: Vec<String> = db.lru_candidates(10).await.unwrap().into_iter().map(|n| n.key).collect();
        assert_eq!(
            order,
            ["nar/b.nar", "nar/c.nar", "nar/a.nar"],
            "{name}: least recently used first, never moved backwards"
        );
        let mut info = narinfo("07hcdd9rppsp7n254gck5phaclgy1wnc");
        info.url = "nar/b.nar".into();
        db.put_narinfo(info).await.unwrap();
        let evicted = db.evict("nar/b.nar").await.unwrap();
        assert_eq!(evicted.freed, 11, "{name}");
        assert_eq!(evicted.narinfos, ["07hcdd9rppsp7n254gck5phaclgy1wnc"], "{name}: the narinfos it forgot");
        assert_eq!(
            db.get_narinfo("07hcdd9rppsp7n254gck5phaclgy1wnc").await.unwrap(),
            None,
            "{name}: narinfo goes with its NAR"
        );
        assert_eq!(db.get_nar("nar/b.nar").await.unwrap(), None, "{name}");
        assert_eq!(db.total_size().await.unwrap(), 22, "{name}");
        assert_eq!(db.evict("nar/none.nar").await.unwrap(), Default::default(), "{name}");
    }
}

/// Connections of the server whose `application_name` is `app`.
async fn server_connections(app: &str) -> i64 {
    let (client, conn) =
        tokio_postgres::connect(&format!("{}/postgres", support::postgres_url()), tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL must be reachable");
    tokio::spawn(conn);
    let row = client
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", &[&app])
        .await
        .expect("pg_stat_activity");
    row.get(0)
}

#[tokio::test]
async fn a_pg_link_holds_one_connection_idle_and_spills_only_under_load() {
    let app = format!("ncps-link-test-{:x}", rand::random::<u32>());
    let url = format!("{}?application_name={app}", support::fresh_postgres().await);
    let link = link_with(&url, 3).await;
    let store = PgMetadata::connect(link.clone()).await.unwrap();
    store.put_narinfo(narinfo("1ykmnvm1i7x2cym4xcl2n5vrxwdz7ld8")).await.unwrap();
    assert_eq!(server_connections(&app).await, 1, "idle, after the migration and a write");

    // Concurrent slow queries: the link opens extra connections, never more than its limit.
    const SLOW: &str = "SELECT pg_sleep(0.3)";
    let queries: Vec<_> = (0..24)
        .map(|_| {
            let link = link.clone();
            tokio::spawn(async move { link.lend().await?.query(SLOW, &[]).await.map(|_| ()) })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let busy = server_connections(&app).await;
    for q in queries {
        q.await.unwrap().unwrap();
    }
    assert!((2..=3).contains(&busy), "under load: {busy} connections (limit 3)");
    assert!(link.open_connections() <= 3);

    // Idle again: the extras close, the session connection stays.
    tokio::time::sleep(IDLE_CLOSE + std::time::Duration::from_secs(4)).await;
    assert_eq!(server_connections(&app).await, 1, "idle again");
    assert!(store.get_narinfo("1ykmnvm1i7x2cym4xcl2n5vrxwdz7ld8").await.unwrap().is_some());
}
