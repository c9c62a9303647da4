//! The storage contract, run against every backend available in this build.

use std::sync::Arc;

use ncps_edge_host_services::storage::local::LocalStore;
use ncps_edge_host_services::storage::s3::{S3Options, S3Store, PART_SIZE};
use ncps_edge_host_services::storage::{BlobStore, ByteRange, StorageKey};
use ncps_edge_host_services::Error;
use tokio::io::AsyncReadExt;

use ncps_edge_test_support as support;

/// Settings of a store in `bucket`, reached at `endpoint`.
fn s3_options(bucket: &support::S3Bucket, endpoint: &str) -> S3Options {
    S3Options {
        bucket: bucket.bucket.clone(),
        endpoint: Some(endpoint.to_owned()),
        region: "us-east-1".into(),
        access_key_id: bucket.access_key.clone(),
        secret_access_key: bucket.secret_key.clone(),
        force_path_style: true,
    }
}

async fn backends(dir: &std::path::Path) -> Vec<(&'static str, Arc<dyn BlobStore>)> {
    let bucket = support::fresh_bucket().await;
    let opts = s3_options(&bucket, &bucket.endpoint);
    let s3 = S3Store::connect(&opts).await.unwrap();
    vec![("local", Arc::new(LocalStore::open(dir).await.unwrap())), ("s3", Arc::new(s3))]
}

fn key(s: &str) -> StorageKey {
    StorageKey::parse(s).unwrap()
}

async fn read_all(store: &dyn BlobStore, k: &StorageKey, range: Option<ByteRange>) -> Option<Vec<u8>> {
    let mut body = store.read(k, range).await.unwrap()?;
    let mut out = Vec::new();
    body.read_to_end(&mut out).await.unwrap();
    Some(out)
}

#[tokio::test]
async fn nothing_is_visible_before_commit() {
    let dir = tempfile::tempdir().unwrap();
    for (name, s) in backends(dir.path()).await {
        let k = key("nar/0c5gsym8rwxz5ynj76j0gh1q9h9wv5pxfwy8k89plkrx0f8n3sah.nar.xz");
        let mut w = s.create(&k).await.unwrap();
        w.write(b"hello ").await.unwrap();
        w.write(b"world").await.unwrap();
        assert_eq!(w.written(), 11);
        assert_eq!(s.stat(&k).await.unwrap(), None, "{name}: partial object visible");
        assert!(read_all(s.as_ref(), &k, None).await.is_none(), "{name}");
        assert!(w.commit().await.unwrap(), "{name}");
        assert_eq!(s.stat(&k).await.unwrap(), Some(11), "{name}");
        assert_eq!(read_all(s.as_ref(), &k, None).await.unwrap(), b"hello world", "{name}");
    }
}

#[tokio::test]
async fn abort_and_drop_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for (name, s) in backends(dir.path()).await {
        let k = key("nar/aborted.nar");
        let mut w = s.create(&k).await.unwrap();
        w.write(b"junk").await.unwrap();
        w.abort().await;
        let mut w = s.create(&k).await.unwrap();
        w.write(b"junk").await.unwrap();
        drop(w);
        assert_eq!(s.stat(&k).await.unwrap(), None, "{name}");
    }
    let leftovers = std::fs::read_dir(dir.path().join("store/tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "temporary files left behind");
}

#[tokio::test]
async fn commit_is_put_if_absent() {
    let dir = tempfile::tempdir().unwrap();
    for (name, s) in backends(dir.path()).await {
        let k = key("nar/twice.nar.zst");
        let mut first = s.create(&k).await.unwrap();
        let mut second = s.create(&k).await.unwrap();
        first.write(b"first").await.unwrap();
        second.write(b"second").await.unwrap();
        assert!(first.commit().await.unwrap(), "{name}");
        assert!(!second.commit().await.unwrap(), "{name}: second commit must not replace");
        assert_eq!(read_all(s.as_ref(), &k, None).await.unwrap(), b"first", "{name}");
    }
}

#[tokio::test]
async fn ranges_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    for (name, s) in backends(dir.path()).await {
        let k = key("nar/range.nar");
        let mut w = s.create(&k).await.unwrap();
        w.write(b"0123456789").await.unwrap();
        w.commit().await.unwrap();
        let mid = read_all(s.as_ref(), &k, Some(ByteRange { offset: 3, length: Some(4) })).await.unwrap();
        assert_eq!(mid, b"3456", "{name}");
        let tail = read_all(s.as_ref(), &k, Some(ByteRange { offset: 7, length: None })).await.unwrap();
        assert_eq!(tail, b"789", "{name}");
        assert!(s.delete(&k).await.unwrap(), "{name}");
        assert!(!s.delete(&k).await.unwrap(), "{name}");
        assert_eq!(s.stat(&k).await.unwrap(), None, "{name}");
    }
}

#[test]
fn keys_cannot_escape_the_store() {
    for bad in ["", "/etc/passwd", "nar/../../etc/passwd", "nar/./x", "nar//x", "nar/x y", "nar/%2e%2e", "nar\\x"] {
        assert!(matches!(StorageKey::parse(bad), Err(Error::Invalid(_))), "{bad:?} accepted");
    }
    assert!(StorageKey::parse("nar/abc.nar.xz").is_ok());
}

#[tokio::test]
async fn local_layout_is_ncps_sharded() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(dir.path()).await.unwrap();
    let k = key("nar/0c5gsym8rwxz5ynj76j0gh1q9h9wv5pxfwy8k89plkrx0f8n3sah.nar.xz");
    assert_eq!(
        s.path_of(&k),
        dir.path().join("store/nar/0/0c/0c5gsym8rwxz5ynj76j0gh1q9h9wv5pxfwy8k89plkrx0f8n3sah.nar.xz")
    );
}

/// Objects larger than one part go through a multipart upload; nothing is
/// visible until commit, and reads in progress survive a delete.
#[tokio::test]
async fn large_objects_stream_in_parts_and_survive_deletes_mid_read() {
    let dir = tempfile::tempdir().unwrap();
    for (name, s) in backends(dir.path()).await {
        let k = key("nar/1111111111111111111111111111111111111111111111111111.nar");
        let data: Vec<u8> = (0..(2 * PART_SIZE + 12345)).map(|i| (i * 7 % 251) as u8).collect();
        let mut w = s.create(&k).await.unwrap();
        for chunk in data.chunks(1 << 20) {
            w.write(chunk).await.unwrap();
        }
        assert_eq!(s.stat(&k).await.unwrap(), None, "{name}: visible before commit");
        assert!(w.commit().await.unwrap(), "{name}");
        assert_eq!(s.stat(&k).await.unwrap(), Some(data.len() as u64), "{name}");
        let mut body = s.read(&k, None).await.unwrap().unwrap();
        let mut first = vec![0u8; 4096];
        body.read_exact(&mut first).await.unwrap();
        assert!(s.delete(&k).await.unwrap(), "{name}");
        let mut rest = Vec::new();
        body.read_to_end(&mut rest).await.unwrap();
        first.extend(rest);
        assert!(first == data, "{name}: a read in progress was broken by a delete");
        assert_eq!(s.stat(&k).await.unwrap(), None, "{name}");
    }
}

/// A writer whose node died (no drop, no abort) leaves a temporary file or
/// an unfinished multipart upload; sweeping removes it, once.
#[tokio::test]
async fn sweeping_removes_what_a_dead_writer_left() {
    let dir = tempfile::tempdir().unwrap();
    for (name, s) in backends(dir.path()).await {
        let k = key("nar/1b8zpfdv1c2ghx7gzm1c6ig6zfqwc0xz5wvd6p1mb5d7w5qiw2jb.nar");
        let mut w = s.create(&k).await.unwrap();
        w.write(&vec![5u8; PART_SIZE + 1]).await.unwrap();
        std::mem::forget(w);
        // A local write may still be landing (tokio writes files on a
        // blocking thread): its file's time can be later than the first
        // sweep's cutoff. Sweep until it is found, or give up.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut swept = 0;
        while swept == 0 && std::time::Instant::now() < deadline {
            swept = s.sweep_incomplete(std::time::Duration::ZERO).await.unwrap();
            if swept == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        assert_eq!(swept, 1, "{name}: one leftover");
        assert_eq!(s.sweep_incomplete(std::time::Duration::ZERO).await.unwrap(), 0, "{name}: swept twice");
        assert_eq!(s.stat(&k).await.unwrap(), None, "{name}");
        assert!(s.list(None, 10).await.unwrap().is_empty(), "{name}: a leftover is listed as an object");
    }
}

/// A node that died after finishing an upload but before deleting its
/// marker leaves a marker whose upload is gone: sweeping drops the marker
/// and does not fail the pass.
#[tokio::test]
async fn sweeping_drops_the_marker_of_an_upload_that_finished() {
    let bucket = support::fresh_bucket().await;
    let opts = s3_options(&bucket, &bucket.endpoint);
    let s3 = S3Store::connect(&opts).await.unwrap();
    let k = key("nar/1b8zpfdv1c2ghx7gzm1c6ig6zfqwc0xz5wvd6p1mb5d7w5qiw2jb.nar");
    let mut w = s3.create(&k).await.unwrap();
    w.write(&vec![6u8; PART_SIZE + 1]).await.unwrap();
    w.commit().await.unwrap();
    // The marker as a writer leaves it before it completes the upload.
    let marker = format!("{}0b6f0c1e-8d0a-4a57-9d54-3f1f7f3c2a11", ncps_edge_wire::layout::UPLOADS_PREFIX);
    let client = bucket.client();
    let put = client.put_object().bucket(&bucket.bucket).key(&marker).body(k.layout().into_bytes().into());
    put.send().await.unwrap();
    assert_eq!(s3.sweep_incomplete(std::time::Duration::ZERO).await.unwrap(), 0);
    let left = client.head_object().bucket(&bucket.bucket).key(&marker).send().await;
    assert!(left.is_err(), "the marker of a finished upload was kept");
    assert!(s3.stat(&k).await.unwrap().is_some(), "the finished object was touched");
}

/// A writer given up while S3 answers 503 cannot abort its upload then: it
/// keeps trying, and once S3 is back the upload and its marker are gone.
#[tokio::test]
async fn an_upload_given_up_during_an_outage_is_aborted_when_s3_is_back() {
    let bucket = support::fresh_bucket().await;
    let proxy = support::StallProxy::start(&support::host_port(&bucket.endpoint)).await;
    let opts = s3_options(&bucket, &format!("http://{}", proxy.addr()));
    let s3 = S3Store::connect(&opts).await.unwrap();
    let k = key("nar/0c8zpfdv1c2ghx7gzm1c6ig6zfqwc0xz5wvd6p1mb5d7w5qiw2jb.nar");
    let mut w = s3.create(&k).await.unwrap();
    w.write(&vec![7u8; PART_SIZE + 1]).await.unwrap();
    let client = bucket.client();
    let listed = client.list_objects_v2().bucket(&bucket.bucket).prefix(ncps_edge_wire::layout::UPLOADS_PREFIX);
    let markers = listed.send().await.unwrap();
    let [marker] = markers.contents() else { panic!("one upload marker expected: {markers:?}") };
    let marker = marker.key().unwrap().to_owned();
    let id = marker.trim_start_matches(ncps_edge_wire::layout::UPLOADS_PREFIX).to_owned();

    // The parts the server holds for the upload (none once it is aborted).
    let parts = || async {
        let listed = client.list_parts().bucket(&bucket.bucket).key(k.layout()).upload_id(&id).send().await;
        listed.unwrap().parts().len()
    };
    assert_eq!(parts().await, 1);

    proxy.set(support::ProxyMode::Fail);
    w.abort().await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(parts().await, 1, "the upload went while S3 was refusing every request");
    proxy.set(support::ProxyMode::Pass);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let parts_left = parts().await;
        let marker_left = client.head_object().bucket(&bucket.bucket).key(&marker).send().await.is_ok();
        if parts_left == 0 && !marker_left {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "parts kept: {parts_left}, marker kept: {marker_left}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(s3.stat(&k).await.unwrap().is_none(), "an aborted upload became an object");
}
