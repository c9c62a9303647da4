//! The metadata contract, run against every database available in this build.

use std::sync::Arc;

use ncps_edge_host_services::metadata::sqlite::SqliteMetadata;
use ncps_edge_host_services::metadata::{MetadataStore, NarRecord, NarinfoRecord};
use ncps_edge_host_services::signer::Signer;

fn databases(dir: &std::path::Path) -> Vec<(&'static str, Arc<dyn MetadataStore>)> {
    vec![("sqlite", Arc::new(SqliteMetadata::open(&dir.join("db.sqlite")).unwrap()))]
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
    for (name, db) in databases(dir.path()) {
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
    for (name, db) in databases(dir.path()) {
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
    for (name, db) in databases(dir.path()) {
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
