//! Cache lifecycle: LRU eviction order and size accounting, the LRU lock,
//! eviction racing a slow download, and the admin route.

use std::time::Duration;

use futures_util::StreamExt;
use ncps_edge_host_services::locks::Mode;
use ncps_edge_tests::fixture::{fixture, hash_of, nar_file, nar_url};
use ncps_edge_tests::node::{is_stored, start_node, TestNode};
use ncps_edge_tests::scenario::Scenario;
use sha2::{Digest, Sha256};

async fn warm(c: &reqwest::Client, node: &TestNode, cache: &std::path::Path, path: &str) -> u64 {
    let narinfo = c.get(format!("{}/{}.narinfo", node.url(), hash_of(path))).send().await.unwrap();
    assert_eq!(narinfo.status(), 200);
    let nar = c.get(format!("{}{}", node.url(), nar_url(cache, path))).send().await.unwrap();
    assert_eq!(nar.status(), 200);
    nar.bytes().await.unwrap().len() as u64
}

async fn status(c: &reqwest::Client, url: String) -> (u16, Option<String>) {
    let r = c.get(url).send().await.unwrap();
    (r.status().as_u16(), r.headers().get("x-cache").map(|v| v.to_str().unwrap().to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lru_evicts_least_recently_used_until_under_max_size() {
    let fx = fixture();
    let cache = fx.cache("none");
    let sizes: Vec<u64> =
        [&fx.leaf, &fx.mid, &fx.top].iter().map(|p| std::fs::metadata(nar_file(&cache, p)).unwrap().len()).collect();
    let total: u64 = sizes.iter().sum();
    let s =
        Scenario::setup().flags([format!("--cache-max-size={}", total - 1)]).flags(["--admin-token=adm"]).start().await;
    let (node, c) = (&s.node, &s.c);
    for p in [&fx.leaf, &fx.mid, &fx.top] {
        warm(c, node, &cache, p).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // leaf is used again: mid is now the least recently used.
    let (_, x) = status(c, format!("{}{}", node.url(), nar_url(&cache, &fx.leaf))).await;
    assert_eq!(x.as_deref(), Some("HIT"));

    let report: String =
        c.post(format!("{}/admin/lru", node.url())).bearer_auth("adm").send().await.unwrap().text().await.unwrap();
    let want = format!(
        "{{\"bytesFreed\":{},\"evicted\":1,\"ran\":true,\"totalAfter\":{},\"totalBefore\":{total}}}",
        sizes[1],
        total - sizes[1]
    );
    assert_eq!(report, want);
    let mid_nar = format!("{}{}", node.url(), nar_url(&cache, &fx.mid));
    assert!(!is_stored(c, &mid_nar).await, "evicted NAR still stored");
    let on_disk = node.data.path().join("store/nar").join(&nar_url(&cache, &fx.mid)[5..6]);
    let still_there = walk(&on_disk).iter().any(|f| f.ends_with(&nar_url(&cache, &fx.mid)[5..]));
    assert!(!still_there, "evicted NAR file left on disk");
    let (_, x) = status(c, format!("{}/{}.narinfo", node.url(), hash_of(&fx.mid))).await;
    assert_eq!(x.as_deref(), Some("MISS"), "its narinfo went with it");
    for p in [&fx.leaf, &fx.top] {
        let (_, x) = status(c, format!("{}{}", node.url(), nar_url(&cache, p))).await;
        assert_eq!(x.as_deref(), Some("HIT"), "{p} should have stayed");
    }
    // Under the limit now: another pass evicts nothing.
    let again = node.node.server().run_lru().await.unwrap();
    assert!(again.ran);
    assert_eq!(again.evicted, 0);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .flat_map(|e| if e.path().is_dir() { walk(&e.path()) } else { vec![e.path().display().to_string()] })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lru_pass_skips_while_another_holds_the_lru_lock() {
    let fx = fixture();
    let cache = fx.cache("none");
    let s = Scenario::setup().flags(["--cache-max-size=1"]).start().await;
    let (node, c) = (&s.node, &s.c);
    warm(c, node, &cache, &fx.leaf).await;
    let other = node.node.services().locks.try_acquire("lru", Mode::Exclusive, Duration::from_secs(60)).await.unwrap();
    let skipped = node.node.server().run_lru().await.unwrap();
    assert!(!skipped.ran, "ran while another instance held the LRU lock");
    let (_, x) = status(c, format!("{}{}", node.url(), nar_url(&cache, &fx.leaf))).await;
    assert_eq!(x.as_deref(), Some("HIT"));
    drop(other);
    let ran = node.node.server().run_lru().await.unwrap();
    assert!(ran.ran);
    assert_eq!(ran.evicted, 1);
    assert_eq!(ran.total_after, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eviction_during_a_slow_download_leaves_it_intact() {
    let fx = fixture();
    let cache = fx.cache("zstd");
    let s = Scenario::setup().cache("zstd").flags(["--cache-max-size=1"]).start().await;
    let (node, c) = (&s.node, &s.c);
    let size = warm(c, node, &cache, &fx.big).await;
    let want = format!("{:x}", Sha256::digest(std::fs::read(nar_file(&cache, &fx.big)).unwrap()));
    let url = format!("{}{}", node.url(), nar_url(&cache, &fx.big));
    let resp = c.get(&url).send().await.unwrap();
    assert_eq!(resp.headers()["x-cache"], "HIT");
    let mut stream = resp.bytes_stream();
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    let first = stream.next().await.unwrap().unwrap();
    hasher.update(&first);
    got += first.len() as u64;
    // Evict while the client has barely started.
    let report = node.node.server().run_lru().await.unwrap();
    assert_eq!(report.evicted, 1);
    assert!(!is_stored(c, &url).await, "not evicted");
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("download broken by eviction");
        hasher.update(&chunk);
        got += chunk.len() as u64;
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    assert_eq!(got, size);
    assert_eq!(format!("{:x}", hasher.finalize()), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_route_needs_its_token() {
    let c = reqwest::Client::new();
    let off = start_node(&["--cache-max-size=1G".into()]).await;
    assert_eq!(c.post(format!("{}/admin/lru", off.url())).bearer_auth("x").send().await.unwrap().status(), 404);
    let on = start_node(&["--cache-max-size=1G".into(), "--admin-token=adm".into()]).await;
    let url = format!("{}/admin/lru", on.url());
    assert_eq!(c.post(&url).send().await.unwrap().status(), 401);
    assert_eq!(c.post(&url).bearer_auth("wrong").send().await.unwrap().status(), 401);
    assert_eq!(c.get(&url).bearer_auth("adm").send().await.unwrap().status(), 405);
    let ok = c.post(&url).bearer_auth("adm").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert!(ok.text().await.unwrap().contains("\"ran\":true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lru_skips_a_nar_while_it_is_being_published() {
    let fx = fixture();
    let cache = fx.cache("none");
    let s = Scenario::setup().flags(["--cache-max-size=1"]).start().await;
    let (node, c) = (&s.node, &s.c);
    for p in [&fx.leaf, &fx.mid] {
        warm(c, node, &cache, p).await;
    }
    // A publisher of leaf's NAR (a download or upload committing it) holds
    // its publish lock shared: the pass must leave that NAR alone.
    let leaf_file = &nar_url(&cache, &fx.leaf)[5..];
    let leaf_hash = leaf_file.split('.').next().unwrap();
    let locks = &node.node.services().locks;
    let publishing = locks
        .try_acquire(&format!("publish:nar:{leaf_hash}"), Mode::Shared, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("publish lock free");
    let report = node.node.server().run_lru().await.unwrap();
    assert_eq!(report.evicted, 1, "only mid is evicted: {report:?}");
    let (_, x) = status(c, format!("{}{}", node.url(), nar_url(&cache, &fx.leaf))).await;
    assert_eq!(x.as_deref(), Some("HIT"), "a NAR being published was evicted");
    drop(publishing);
    let report = node.node.server().run_lru().await.unwrap();
    assert_eq!(report.evicted, 1, "leaf goes once nobody publishes it: {report:?}");
    assert!(!is_stored(c, &format!("{}{}", node.url(), nar_url(&cache, &fx.leaf))).await);
}

fn nar_path_on_disk(data: &std::path::Path, file: &str) -> std::path::PathBuf {
    data.join("store/nar").join(&file[..1]).join(&file[..2]).join(file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconcile_mends_orphans_phantoms_and_leftovers() {
    let fx = fixture();
    let cache = fx.cache("none");
    let s = Scenario::setup().flags(["--admin-token=adm", "--cache-lock-download-ttl=1m"]).start().await;
    let (node, c) = (&s.node, &s.c);
    for p in [&fx.leaf, &fx.mid, &fx.top] {
        warm(c, node, &cache, p).await;
    }
    let data = node.data.path();
    let db = node.node.services().metadata.store().clone();
    let before = db.total_size().await.unwrap();
    // An orphan: an object nothing accounts for.
    let orphan = format!("{}.nar", "1".repeat(52));
    let orphan_path = nar_path_on_disk(data, &orphan);
    std::fs::create_dir_all(orphan_path.parent().unwrap()).unwrap();
    std::fs::write(&orphan_path, b"left behind").unwrap();
    // A phantom: mid's object is gone, its record still counts it.
    let mid_file = nar_url(&cache, &fx.mid)[5..].to_owned();
    let mid_size = std::fs::metadata(nar_path_on_disk(data, &mid_file)).unwrap().len();
    std::fs::remove_file(nar_path_on_disk(data, &mid_file)).unwrap();
    // top's record lost its stored size, but its narinfo points at it.
    let top_key = nar_url(&cache, &fx.top)[1..].to_owned();
    let mut top = db.get_nar(&top_key).await.unwrap().unwrap();
    let top_size = top.stored_size.take().unwrap();
    db.put_nar(top).await.unwrap();
    // A temporary file of a write that never finished, an hour old.
    let tmp = data.join("store/tmp/0123456789abcdef.part");
    let old = std::fs::File::create(&tmp).unwrap();
    old.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600)).unwrap();

    let fsck = |dry: bool| {
        let (c, url) = (c.clone(), format!("{}/admin/fsck{}", node.url(), if dry { "?dry-run=1" } else { "" }));
        async move {
            let resp = c.post(url).bearer_auth("adm").send().await.unwrap();
            assert_eq!(resp.status(), 200);
            serde_json::from_slice::<serde_json::Value>(&resp.bytes().await.unwrap()).unwrap()
        }
    };
    let dry = fsck(true).await;
    assert_eq!(
        (dry["orphans"].as_u64(), dry["phantoms"].as_u64(), dry["adopted"].as_u64()),
        (Some(1), Some(1), Some(1)),
        "{dry}"
    );
    assert!(orphan_path.exists() && tmp.exists(), "a dry run changed something");
    let done = fsck(false).await;
    assert_eq!(
        (done["orphans"].as_u64(), done["phantoms"].as_u64(), done["adopted"].as_u64()),
        (Some(1), Some(1), Some(1)),
        "{done}"
    );
    assert_eq!(done["incomplete"], 1, "{done}");
    assert!(!orphan_path.exists(), "orphan left");
    assert!(!tmp.exists(), "temporary file left");
    assert_eq!(db.get_nar(&top_key).await.unwrap().unwrap().stored_size, Some(top_size), "top adopted");
    assert_eq!(db.total_size().await.unwrap(), before - mid_size, "accounting matches storage");
    // The phantom is fetched again on the next request.
    let resp = c.get(format!("{}{}", node.url(), nar_url(&cache, &fx.mid))).send().await.unwrap();
    assert_eq!(resp.headers()["x-cache"], "MISS");
    resp.bytes().await.unwrap();
    let again = fsck(false).await;
    for field in ["orphans", "phantoms", "adopted", "incomplete", "busy"] {
        assert_eq!(again[field], 0, "second pass found {field}: {again}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_lru_pass_cut_by_a_stalled_store_loses_no_accounting() {
    use ncps_edge_test_support::{fresh_bucket, host_port, StallProxy};
    let fx = fixture();
    let cache = fx.cache("none");
    let bucket = fresh_bucket().await;
    let proxy = StallProxy::start(&host_port(&bucket.endpoint)).await;
    let routed = bucket.through(&proxy);
    let s = Scenario::setup()
        .flags(routed.flags())
        .flags(["--cache-max-size=1", "--cache-backend-timeout=1s"])
        .start()
        .await;
    let (node, c) = (&s.node, &s.c);
    for p in [&fx.leaf, &fx.mid] {
        warm(c, node, &cache, p).await;
    }
    let db = node.node.services().metadata.store().clone();
    let before = db.total_size().await.unwrap();
    proxy.stall();
    assert!(node.node.server().run_lru().await.is_err(), "the pass cannot delete while S3 is stalled");
    assert_eq!(db.total_size().await.unwrap(), before, "nothing forgotten that is still stored");
    proxy.resume();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = node.node.server().run_lru().await.unwrap();
    assert_eq!((report.evicted, report.total_after), (2, 0), "{report:?}");
    let listed = bucket.client().list_objects_v2().bucket(&bucket.bucket).send().await.unwrap();
    assert_eq!(listed.key_count(), Some(0), "objects left after the pass: {listed:?}");
    let mended = node.node.server().reconcile(false).await.unwrap();
    assert_eq!((mended.orphans, mended.phantoms), (0, 0), "{mended:?}");
}
