//! `handler.wasm` plugged with the Spin adapter, under a real `spin up` of
//! `spin.toml` (`ncps_edge_tests::spin_up`): the composed component's
//! world, the real `nix` client through a Spin node, one upstream download
//! however many ask, Spin and native nodes sharing one cache, bad input and
//! hostile upstreams answered as the native node answers them, settings
//! that fail closed, backends that cannot be reached answered with a 503
//! and a log line naming the cause (a database that drops packets within
//! one backend timeout; one that goes silent mid-connection trips the
//! node's breaker; a silent Redis or MySQL, whose clients take no timeout,
//! holds one request, not every one), Spin's PostgreSQL connection pool, and
//! a stopped node that leaves no process or connection behind. A trapped
//! instance's lease is checked in the Spin-shaped host, which can kill an
//! instance on cue.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ncps_edge_test_support::{fresh_mysql, fresh_postgres, postgres_url, redis_addr, via, DroppedPort, ProxyMode};
use ncps_edge_tests::fixture::{fixture, hash_of, nar_url, Fixture};
use ncps_edge_tests::nix::NixEnv;
use ncps_edge_tests::spin_host::{composed_component, Shared, SpinNode};
use ncps_edge_tests::spin_up::{spin_or_skip, Region, SpinUp};

/// `POST /admin/lru` with the admin token: the pass's JSON report.
async fn run_lru(node: &str, token: &str) -> serde_json::Value {
    let resp = reqwest::Client::new().post(format!("{node}/admin/lru")).bearer_auth(token).send().await.unwrap();
    let status = resp.status().as_u16();
    let report = resp.bytes().await.unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&report));
    serde_json::from_slice(&report).unwrap()
}

/// Spin's CLI, the fixture, fresh shared backends whose upstream serves
/// the fixture's `compression` cache, and a Spin node on them (none when
/// Spin is missing outside CI).
async fn spin_node(compression: &'static str) -> Option<(PathBuf, &'static Fixture, Shared, SpinUp)> {
    let (cli, fx, shared, _) = spin_backends(compression).await?;
    let node = shared.spin_up(&cli, fx).await;
    Some((cli, fx, shared, node))
}

/// Spin's CLI, the fixture, fresh shared backends whose upstream serves
/// the fixture's `compression` cache, and a Spin node's variables on them
/// (none when Spin is missing outside CI).
async fn spin_backends(
    compression: &'static str,
) -> Option<(PathBuf, &'static Fixture, Shared, HashMap<String, String>)> {
    let cli = spin_or_skip()?;
    let fx = fixture();
    let shared = Shared::new(fx, compression).await;
    let vars = shared.variables(fx);
    Some((cli, fx, shared, vars))
}

async fn get(url: &str) -> (u16, Vec<u8>) {
    let resp = reqwest::get(url).await.unwrap();
    (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
}

#[test]
fn the_composed_component_runs_on_spin_3_1_or_later() {
    let world = ncps_edge_spin_compose::check_world(composed_component()).expect("a Spin 3.1+ world");
    // The adapter satisfied every ncps:edge import; what is left is Spin's.
    assert!(world.imports.iter().all(|i| !i.starts_with("ncps:")), "{:?}", world.imports);
    for spin in ["fermyon:spin/variables@2.0.0", "fermyon:spin/redis@2.0.0", "fermyon:spin/postgres@2.0.0"] {
        assert!(world.imports.iter().any(|i| i == spin), "{spin} not imported: {:?}", world.imports);
    }
    assert!(world.exports.iter().any(|e| e.starts_with("wasi:http/incoming-handler@0.2.")), "{:?}", world.exports);
    // The handler alone is not runnable on Spin: the check must say so.
    let err = ncps_edge_spin_compose::check_world(ncps_edge::HANDLER_WASM).unwrap_err();
    assert!(err.to_string().contains("ncps:edge/locks@0.1.0"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nix_substitutes_through_a_spin_node_cold_then_warm() {
    let Some((_cli, fx, shared, node)) = spin_node("zstd").await else { return };
    let (status, key) = get(&format!("{}/pubkey", node.url())).await;
    assert_eq!(status, 200);
    let key = String::from_utf8(key).unwrap().trim().to_owned();
    assert!(key.starts_with("test-cache:"), "{key}");
    for label in ["cold", "warm"] {
        let env = NixEnv::new();
        let store = env.path("store");
        let (url, store_arg) = (node.url(), store.display().to_string());
        let out = tokio::task::block_in_place(|| {
            env.try_run(
                "nix",
                &["copy", "--from", &url, "--to", &store_arg, "--option", "trusted-public-keys", &key, &fx.top],
            )
        });
        assert!(out.status.success(), "{label}: {}", String::from_utf8_lossy(&out.stderr));
        for p in [&fx.top, &fx.mid, &fx.leaf] {
            assert_eq!(env.dump_hash(&store, p), fx.env.dump_hash(&fx.store, p), "{label}: {p} differs");
        }
    }
    // The warm round was served from the cache.
    assert_eq!(shared.up.hits(&nar_url(&fx.cache("zstd"), &fx.top)), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cold_requests_through_a_spin_node_fetch_once() {
    let Some((_cli, fx, shared, node)) = spin_node("none").await else { return };
    let narinfo = get(&format!("{}/{}.narinfo", node.url(), hash_of(&fx.big))).await;
    assert_eq!(narinfo.0, 200);
    let nar = nar_url(&fx.cache("none"), &fx.big);
    let want = std::fs::read(fx.cache("none").join(nar.trim_start_matches('/'))).unwrap();
    let url = format!("{}{nar}", node.url());
    let bodies = futures_util::future::join_all((0..8).map(|_| get(&url))).await;
    for (status, body) in bodies {
        assert_eq!(status, 200);
        assert!(body == want, "a client got {} bytes, not the NAR", body.len());
    }
    assert_eq!(shared.up.hits(&nar), 1, "one upstream download for 8 cold requests");
}

/// What `query` answers on the PostgreSQL database `db` (a URL), trimmed.
fn psql(db: &str, query: &str) -> String {
    let out = std::process::Command::new("psql").args([db, "-Atc", query]).output().expect("psql");
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Connections to the database `db` (a URL whose path is its name).
fn connections_to(db: &str) -> usize {
    let name = db.rsplit('/').next().unwrap();
    let query = format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'");
    psql(&format!("{}/postgres", postgres_url()), &query).parse().expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spin_node_writes_a_nars_access_time_at_most_once_per_interval() {
    let Some((_cli, fx, shared, node)) = spin_node("none").await else { return };
    let nar = nar_url(&fx.cache("none"), &fx.leaf);
    let url = format!("{}/{}.narinfo", node.url(), hash_of(&fx.leaf));
    assert_eq!(get(&url).await.0, 200);
    assert_eq!(get(&format!("{}{nar}", node.url())).await.0, 200);
    let key = nar.trim_start_matches('/');
    let accessed = || psql(&shared.db, &format!("SELECT last_accessed_at FROM nars WHERE key = '{key}'"));
    let forget = || psql(&shared.db, &format!("UPDATE nars SET last_accessed_at = 1 WHERE key = '{key}'"));
    // Past the interval of whatever the fetches above wrote: the next hit
    // writes (after its answer), the hits after it within the interval do not.
    let interval = Duration::from_millis(ncps_edge_wire::sql::ACCESS_WRITE_EVERY_MS);
    tokio::time::sleep(interval + Duration::from_millis(300)).await;
    assert_eq!(forget(), "UPDATE 1");
    assert_eq!(get(&url).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(3);
    while accessed() == "1" {
        assert!(Instant::now() < deadline, "a hit did not write its NAR's access time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    forget();
    for _ in 0..5 {
        assert_eq!(get(&url).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(accessed(), "1", "hits within the interval wrote the access time again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spin_pools_database_connections_and_a_stopped_node_leaves_none_behind() {
    let Some((_cli, fx, shared, node)) = spin_node("none").await else { return };
    // The adapter relies on Spin pooling PostgreSQL connections (a fresh
    // instance per request would otherwise pay a handshake each time):
    // after 20 sequential hits, a few connections outlive the instances.
    let url = format!("{}/{}.narinfo", node.url(), hash_of(&fx.leaf));
    for _ in 0..20 {
        assert_eq!(get(&url).await.0, 200);
    }
    let pooled = connections_to(&shared.db);
    assert!((1..20).contains(&pooled), "{pooled} connections after 20 sequential requests");
    let listen = node.url().trim_start_matches("http://").to_owned();
    // Spin's working folder, which a killed `spin up` leaves behind, is
    // in the node's own folder, and goes with it.
    let working: Vec<PathBuf> = std::fs::read_dir(node.dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("spinup-")))
        .collect();
    assert_eq!(working.len(), 1, "Spin's working folder is not in {}: {working:?}", node.dir().display());
    drop(node);
    assert!(!working[0].exists(), "Spin's working folder outlived the node");
    // `spin up` runs its trigger as a child process: both must be gone,
    // and with them every pooled connection.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = std::process::Command::new("pgrep").args(["-f", &format!("listen {listen}")]).output().unwrap();
        let procs = String::from_utf8_lossy(&left.stdout).trim().to_owned();
        let conns = connections_to(&shared.db);
        if procs.is_empty() && conns == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: processes [{procs}], {conns} connections");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spin_and_native_nodes_share_one_cache() {
    let Some(cli) = spin_or_skip() else { return };
    let fx = fixture();
    let shared = Shared::new(fx, "none").await;
    // The native node starts first and stores the signing key in the database.
    let native = shared.native_node(fx).await;
    let spin = shared.spin_up(&cli, fx).await;
    let spin_key = get(&format!("{}/pubkey", spin.url())).await.1;
    assert_eq!(String::from_utf8(spin_key).unwrap().trim(), native.public_key(), "one key for both");

    // Fetched through Spin, a hit on the native node.
    let cache = fx.cache("none");
    let leaf_nar = nar_url(&cache, &fx.leaf);
    let via_spin = get(&format!("{}/{}.narinfo", spin.url(), hash_of(&fx.leaf))).await;
    assert_eq!(via_spin.0, 200);
    assert_eq!(get(&format!("{}{leaf_nar}", spin.url())).await.0, 200);
    let via_native = get(&format!("{}/{}.narinfo", native.url(), hash_of(&fx.leaf))).await;
    assert_eq!(via_native, via_spin, "the same signed narinfo from both");
    let nar = get(&format!("{}{leaf_nar}", native.url())).await;
    assert_eq!(nar.1, std::fs::read(cache.join(leaf_nar.trim_start_matches('/'))).unwrap());
    assert_eq!(shared.up.hits(&leaf_nar), 1, "the native node served the Spin node's download");

    // 40 cold clients spread over both nodes: one upstream download.
    let big_nar = nar_url(&cache, &fx.big);
    shared.up.faults().nar_chunk_delay_ms.store(5, std::sync::atomic::Ordering::SeqCst);
    for node in [spin.url(), native.url()] {
        assert_eq!(get(&format!("{node}/{}.narinfo", hash_of(&fx.big))).await.0, 200);
    }
    let want = std::fs::read(cache.join(big_nar.trim_start_matches('/'))).unwrap();
    let urls: Vec<String> =
        (0..40).map(|i| format!("{}{big_nar}", if i % 2 == 0 { spin.url() } else { native.url() })).collect();
    let bodies = futures_util::future::join_all(urls.iter().map(|u| get(u))).await;
    for (i, (status, body)) in bodies.into_iter().enumerate() {
        assert_eq!(status, 200, "client {i}");
        assert!(body == want, "client {i} got {} bytes, not the NAR", body.len());
    }
    assert_eq!(shared.up.hits(&big_nar), 1, "one upstream download for 40 clients on two kinds of node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trapped_instances_lease_is_taken_over_after_its_ttl() {
    let fx = fixture();
    let shared = Shared::new(fx, "none").await;
    let mut vars = shared.variables(fx);
    vars.insert("download_lease_ms".into(), "3000".into());
    // A slow upstream: the download outlives the first instance.
    shared.up.faults().nar_chunk_delay_ms.store(20, std::sync::atomic::Ordering::SeqCst);
    let dying = SpinNode::start_killing_after(vars.clone(), Duration::from_secs(2)).await;
    let healthy = SpinNode::start(vars).await;
    assert_eq!(get(&format!("{}/{}.narinfo", dying.url(), hash_of(&fx.big))).await.0, 200);
    let nar = nar_url(&fx.cache("none"), &fx.big);
    let resp = reqwest::get(format!("{}{nar}", dying.url())).await.unwrap();
    assert!(resp.bytes().await.is_err(), "the killed instance's transfer must break");

    // Its download lock is still held: nothing released it.
    let mut redis = redis::Client::open(format!("redis://{}", redis_addr()))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let held: Vec<String> =
        redis::cmd("KEYS").arg(format!("{{{}download:nar:*", shared.prefix)).query_async(&mut redis).await.unwrap();
    assert_eq!(held.len(), 1, "the dead instance's lease: {held:?}");

    // Another instance waits for the lease to expire, then downloads.
    shared.up.faults().nar_chunk_delay_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    let (status, body) = get(&format!("{}{nar}", healthy.url())).await;
    assert_eq!(status, 200);
    assert!(body == std::fs::read(fx.cache("none").join(nar.trim_start_matches('/'))).unwrap());
    assert!(started.elapsed() < Duration::from_secs(45), "taken over after {:?}", started.elapsed());
    assert_eq!(shared.up.hits(&nar), 2, "the dead download and the one that took over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_the_native_answer_through_a_spin_node() {
    let Some(cli) = spin_or_skip() else { return };
    let fx = fixture();
    let shared = Shared::new(fx, "none").await;
    let native = shared.native_node(fx).await;
    let spin = shared.spin_up(&cli, fx).await;
    let valid52 = "0c5gsym8rwxz5ynj76j0gh1q9h9wv5pxfwy8k89plkrx0f8n3sah";
    let absent = "0c5gsym8rwxz5ynj76j0gh1q9h9wv5px";
    let requests: Vec<(&str, String)> = vec![
        ("GET", "/nar/../../secret".into()),
        ("GET", "/nar/..%2f..%2fsecret".into()),
        ("GET", "/%2e%2e/%2e%2e/etc/passwd".into()),
        ("GET", "/nar/secret.nar".into()),
        ("GET", format!("/nar/{valid52}.nar.exe")),
        ("GET", format!("/nar/{valid52}.nar.xz")),
        ("GET", "/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo".into()),
        ("GET", format!("/{absent}.narinfo")),
        ("HEAD", format!("/{absent}.narinfo")),
        ("GET", "/short.narinfo".into()),
        ("GET", "//etc/passwd".into()),
        ("GET", "/admin/lru".into()),
        ("POST", "/admin/lru".into()),
        ("PUT", format!("/{absent}.narinfo")),
        ("DELETE", format!("/{absent}.narinfo")),
        ("PUT", format!("/nar/{valid52}.nar")),
        ("PATCH", "/nix-cache-info".into()),
        ("GET", "/nix-cache-info".into()),
        ("GET", format!("/{}.narinfo", hash_of(&fx.leaf))),
        ("GET", nar_url(&fx.cache("none"), &fx.leaf)),
    ];
    let client = reqwest::Client::new();
    for (method, path) in &requests {
        let mut answers = Vec::new();
        for base in [native.url(), spin.url()] {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let resp = client.request(method, format!("{base}{path}")).body("x").send().await.unwrap();
            let status = resp.status().as_u16();
            let ctype = resp.headers().get("content-type").map(|v| v.to_str().unwrap_or("").to_owned());
            answers.push((status, ctype, resp.bytes().await.unwrap()));
        }
        assert_eq!(answers[0], answers[1], "{method} {path}: native vs Spin");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lru_runs_on_the_admin_route_and_purges_native_nodes() {
    let Some(cli) = spin_or_skip() else { return };
    let fx = fixture();
    let shared = Shared::new(fx, "none").await;
    let native = shared.native_node(fx).await;
    let mut vars = shared.variables(fx);
    vars.insert("admin_token".into(), "lru-secret".into());
    vars.insert("max_size".into(), "1".into());
    let spin = SpinUp::start(&cli, vars).await;
    let narinfo = format!("/{}.narinfo", hash_of(&fx.leaf));
    let nar = nar_url(&fx.cache("none"), &fx.leaf);
    assert_eq!(get(&format!("{}{narinfo}", spin.url())).await.0, 200);
    assert_eq!(get(&format!("{}{nar}", spin.url())).await.0, 200);
    // The native node serves (and may keep in its tier) the same narinfo.
    assert_eq!(get(&format!("{}{narinfo}", native.url())).await.0, 200);
    let before = shared.up.hits(&narinfo);

    let client = reqwest::Client::new();
    let refused = client.post(format!("{}/admin/lru", spin.url())).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    let report = run_lru(&spin.url(), "lru-secret").await;
    assert!(report["evicted"].as_u64().unwrap_or(0) >= 1, "{report}");
    let object = shared
        .bucket
        .client()
        .head_object()
        .bucket(&shared.bucket.bucket)
        .key(ncps_edge_host_services::storage::layout::object_path(&nar[1..]))
        .send()
        .await;
    assert!(object.is_err(), "the evicted NAR is gone from the bucket");

    // The purge reached the native node: its next answer is fresh.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&format!("{}{narinfo}", native.url())).await.0, 200);
    assert_eq!(shared.up.hits(&narinfo), before + 1, "the native node asked upstream again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spin_node_keeps_narinfos_in_its_own_tier_for_max_age() {
    let Some(cli) = spin_or_skip() else { return };
    let fx = fixture();
    let shared = Shared::new(fx, "none").await;
    let mut vars = shared.variables(fx);
    let Region { db, redis: _redis, s3: _s3 } = Region::between(&shared, &mut vars).await;
    vars.insert("max_age_s".into(), "3".into());
    vars.insert("allow_delete".into(), "true".into());
    vars.insert("delete_token".into(), "delete-secret".into());
    let node = SpinUp::start(&cli, vars).await;
    let path = format!("/{}.narinfo", hash_of(&fx.leaf));
    let url = format!("{}{path}", node.url());
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();
    let status = |r: reqwest::Result<reqwest::Response>| r.map_or(0, |r| r.status().as_u16());

    // A delete through the node forgets what its tier keeps.
    assert_eq!(get(&url).await.0, 200);
    assert_eq!(get(&url).await.0, 200);
    assert_eq!(shared.up.hits(&path), 1);
    assert_eq!(status(client.delete(&url).bearer_auth("delete-secret").send().await), 204);
    assert_eq!(get(&url).await.0, 200);
    assert_eq!(shared.up.hits(&path), 2, "the deleted narinfo was served from the tier");
    // The node reads its own purge back from the purge log and forgets,
    // once, what it kept since (a purge is applied to whatever is kept
    // when it is read): let that read happen.
    past_the_purge_bound().await;
    assert_eq!(get(&url).await.0, 200);

    // Kept (read from the database once more), it is served with the
    // database unreachable, until it is `max_age_s` old; so is the public
    // half of the database's key.
    let pubkey = get(&format!("{}/pubkey", node.url())).await;
    assert_eq!(pubkey.0, 200);
    assert_eq!(get(&url).await.0, 200);
    let kept = Instant::now();
    db.stall();
    let hit = client.get(&url).send().await.expect("a kept narinfo answered with the database stalled");
    let kept_pubkey = client.get(format!("{}/pubkey", node.url())).send().await.expect("a kept /pubkey answered");
    assert!(kept.elapsed() < Duration::from_secs(3), "the test was too slow to tell");
    assert_eq!(hit.status(), 200);
    assert_eq!(hit.headers()["x-cache"], "HIT");
    assert_eq!((kept_pubkey.status().as_u16(), kept_pubkey.bytes().await.unwrap().to_vec()), pubkey);
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(kept.elapsed()) + Duration::from_millis(500)).await;
    assert_ne!(status(client.get(&url).send().await), 200, "a narinfo older than max_age_s was served");
    db.resume();
}

/// A node's store outlives its settings: started again on the same store
/// but on another cache (database, purge log), a Spin node serves nothing
/// it kept for the first, narinfo or small NAR.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spin_node_moved_to_another_cache_serves_nothing_it_kept_for_the_first() {
    let Some((cli, fx, _first, node)) = spin_node("none").await else { return };
    let narinfo = format!("/{}.narinfo", hash_of(&fx.leaf));
    let nar = nar_url(&fx.cache("none"), &fx.leaf);
    // The second NAR answer, read whole from S3, is kept.
    for _ in 0..2 {
        assert_eq!(get(&format!("{}{narinfo}", node.url())).await.0, 200);
        assert_eq!(get(&format!("{}{nar}", node.url())).await.0, 200);
    }
    let empty = tempfile::tempdir().unwrap();
    let second = Shared::on(empty.path().to_owned(), fresh_postgres().await).await;
    let node = node.restart(&cli, second.variables(fx)).await;
    // A node's instances share its settings for up to a second: a restart
    // with other variables is seen within that.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(get(&format!("{}{narinfo}", node.url())).await.0, 404, "a narinfo kept for another cache was served");
    assert_eq!(get(&format!("{}{nar}", node.url())).await.0, 404, "a NAR kept for another cache was served");
    assert_eq!(second.up.hits(&narinfo), 1);
}

/// A native node of `shared` that takes DELETEs with `delete-secret`.
async fn native_that_deletes(shared: &Shared, fx: &Fixture) -> ncps_edge_tests::node::TestNode {
    shared.native_node_with(fx, &["--cache-allow-delete-verb", "--cache-delete-token=delete-secret"]).await
}

/// Wait until a purge published now is past the bound within which every
/// Spin node stops serving what it names.
async fn past_the_purge_bound() {
    tokio::time::sleep(Duration::from_millis(ncps_edge_wire::purge_log::TRUST_MS as u64 + 100)).await;
}

/// GET `url` within 3 s: its status, 0 when none came (a stalled backend).
async fn status_within_3s(url: &str) -> u16 {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();
    client.get(url).send().await.map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purges_at_a_native_node_reach_a_spin_nodes_tier_within_a_second() {
    let Some(cli) = spin_or_skip() else { return };
    let fx = fixture();
    let shared = Shared::new(fx, "none").await;
    let native = native_that_deletes(&shared, fx).await;
    // The Spin node reaches its database and Redis through proxies that
    // can stall or refuse.
    let mut vars = shared.variables(fx);
    let Region { db, redis, s3: _s3 } = Region::between(&shared, &mut vars).await;
    let spin = SpinUp::start(&cli, vars).await;
    let path = format!("/{}.narinfo", hash_of(&fx.leaf));
    let (at_spin, at_native) = (format!("{}{path}", spin.url()), format!("{}{path}", native.url()));

    // Kept by the Spin node: answered with its database stalled.
    assert_eq!(get(&at_spin).await.0, 200);
    assert_eq!(get(&at_spin).await.0, 200);
    db.stall();
    assert_eq!(status_within_3s(&at_spin).await, 200, "a kept narinfo with the database stalled:\n{}", spin.log());

    // Deleted at the native node: within the bound, the Spin node's tier
    // no longer has it (its database is stalled: no answer at all).
    let deleted = reqwest::Client::new().delete(&at_native).bearer_auth("delete-secret").send().await.unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    past_the_purge_bound().await;
    assert_ne!(
        status_within_3s(&at_spin).await,
        200,
        "the Spin node served a narinfo purged at a native node:\n{}",
        spin.log()
    );
    db.resume();
    assert_eq!(get(&at_spin).await.0, 200);
    assert_eq!(shared.up.hits(&path), 2, "fetched again after the delete");

    // Kept again; then Redis refuses: the node cannot tell whether it
    // missed a purge, so it does not serve what it keeps.
    assert_eq!(get(&at_spin).await.0, 200);
    redis.set(ProxyMode::Refuse);
    past_the_purge_bound().await;
    db.stall();
    assert_ne!(status_within_3s(&at_spin).await, 200, "served from the tier without reading the purge log");
    // Redis back, no purge missed: what it kept is served again.
    redis.set(ProxyMode::Pass);
    past_the_purge_bound().await;
    let hit = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap().get(&at_spin).send().await;
    let hit = hit.expect("a kept narinfo answered once the purge log is read again");
    assert_eq!((hit.status().as_u16(), hit.headers()["x-cache"].to_str().unwrap()), (200, "HIT"));
    db.resume();
    assert_eq!(shared.up.hits(&path), 2);
}

/// Status, the headers a NAR answer is made of, and the body.
async fn nar_answer(req: reqwest::RequestBuilder) -> (u16, Vec<String>, Vec<u8>) {
    let resp = req.timeout(Duration::from_secs(3)).send().await.expect("an answer");
    let headers = ["content-type", "content-length", "content-range", "accept-ranges"]
        .iter()
        .map(|h| format!("{h}: {:?}", resp.headers().get(*h)))
        .collect();
    (resp.status().as_u16(), headers, resp.bytes().await.unwrap().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spin_node_keeps_small_nars_in_its_own_tier_and_forgets_deleted_ones() {
    let Some(cli) = spin_or_skip() else { return };
    let fx = fixture();
    let shared = Shared::new(fx, "none").await;
    let native = native_that_deletes(&shared, fx).await;
    let mut vars = shared.variables(fx);
    let Region { db, s3, redis: _redis } = Region::between(&shared, &mut vars).await;
    let spin = SpinUp::start(&cli, vars).await;
    let nar = nar_url(&fx.cache("none"), &fx.leaf);
    let want = std::fs::read(fx.cache("none").join(nar.trim_start_matches('/'))).unwrap();
    assert!(want.len() <= 64 << 10, "the leaf's NAR is small");
    let (at_spin, at_native) = (format!("{}{nar}", spin.url()), format!("{}{nar}", native.url()));
    assert_eq!(get(&format!("{}/{}.narinfo", spin.url(), hash_of(&fx.leaf))).await.0, 200);
    // Downloaded, then a hit read from S3 whole: kept.
    assert_eq!(get(&at_spin).await, (200, want.clone()));
    assert_eq!(get(&at_spin).await, (200, want.clone()));

    // With its database and S3 stalled, the Spin node answers the NAR, a
    // HEAD and a range from its tier, as the native node answers them.
    db.stall();
    s3.stall();
    let c = reqwest::Client::new();
    for (what, spin_req, native_req) in [
        ("GET", c.get(&at_spin), c.get(&at_native)),
        ("HEAD", c.head(&at_spin), c.head(&at_native)),
        ("range", c.get(&at_spin).header("range", "bytes=3-9"), c.get(&at_native).header("range", "bytes=3-9")),
    ] {
        let from_tier = nar_answer(spin_req).await;
        assert_eq!(from_tier, nar_answer(native_req).await, "{what}");
        assert!(from_tier.0 == 200 || from_tier.0 == 206, "{what}: {}", from_tier.0);
    }

    // Deleted at the native node: within the purge bound the Spin node no
    // longer has it (with S3 stalled, no answer at all).
    let deleted = c.delete(&at_native).bearer_auth("delete-secret").send().await.unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    past_the_purge_bound().await;
    assert_ne!(status_within_3s(&at_spin).await, 200, "a NAR deleted at a native node was served from the tier");
    db.resume();
    s3.resume();
}

/// GET `url` (with `range`, when some) within 10 s: status, `x-cache` and body.
async fn cached(url: &str, range: Option<&str>) -> (u16, String, Vec<u8>) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut req = client.get(url);
    if let Some(range) = range {
        req = req.header("range", range);
    }
    let resp = req.send().await.expect("an answer within 10 s");
    let x_cache = resp.headers().get("x-cache").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (resp.status().as_u16(), x_cache, resp.bytes().await.unwrap().to_vec())
}

/// [`cached`] of `url`, and how long the answer took.
async fn timed(url: &str) -> ((u16, String, Vec<u8>), Duration) {
    let started = Instant::now();
    let answer = cached(url, None).await;
    (answer, started.elapsed())
}

/// After a partition ended: `probe` (given the attempt's number) says the
/// node is back (`Ok`), or what it answered, every 200 ms; it is back
/// within 10 s.
async fn back_within_10s<F, Fut>(spin: &SpinUp, mut probe: F)
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    for attempt in 0.. {
        let Err(answer) = probe(attempt).await else { return };
        assert!(Instant::now() < deadline, "not back 10 s after the partition: {answer}\n{}", spin.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// After a partition ended: `url` is answered fresh (a `HIT` of `body`)
/// within 10 s.
async fn fresh_within_10s(url: &str, body: &[u8], spin: &SpinUp) {
    back_within_10s(spin, |_| async move {
        let answer = cached(url, None).await;
        if (answer.0, answer.1.as_str()) != (200, "HIT") {
            return Err(format!("{answer:?}"));
        }
        assert_eq!(answer.2, body);
        Ok(())
    })
    .await;
}

/// The region fails (its database, Redis and S3 refuse): what a Spin node
/// keeps, past its `max_age_s`, is answered marked stale, as a native
/// node cut off from the region answers; what it does not keep is not.
/// Once the region is back the answers are fresh again; with
/// `stale_if_error_s = 0` nothing is answered stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spin_node_answers_what_it_keeps_stale_when_the_region_fails() {
    let Some(cli) = spin_or_skip() else { return };
    let fx = fixture();
    let shared = Shared::new(fx, "none").await;
    let mut vars = shared.variables(fx);
    let region = Region::between(&shared, &mut vars).await;
    vars.insert("max_age_s".into(), "1".into());
    let spin = SpinUp::start(&cli, vars.clone()).await;
    let narinfo = format!("{}/{}.narinfo", spin.url(), hash_of(&fx.leaf));
    let nar = format!("{}{}", spin.url(), nar_url(&fx.cache("none"), &fx.leaf));
    let (pubkey, unknown) = (format!("{}/pubkey", spin.url()), format!("{}/{}.narinfo", spin.url(), "0".repeat(32)));
    let want_nar =
        std::fs::read(fx.cache("none").join(nar_url(&fx.cache("none"), &fx.leaf).trim_start_matches('/'))).unwrap();

    // Kept: the narinfo (a miss records it; the hit after it, read from
    // the database, keeps it), the small NAR (a hit reads it whole from
    // S3) and the public key.
    assert_eq!(cached(&narinfo, None).await.1, "MISS");
    let fresh = cached(&narinfo, None).await;
    assert_eq!((fresh.0, fresh.1.as_str()), (200, "HIT"));
    for _ in 0..2 {
        assert_eq!(cached(&nar, None).await.2, want_nar);
    }
    let key = get(&pubkey).await;
    assert_eq!(key.0, 200);
    // Past max_age_s, then the region refuses.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    region.set(ProxyMode::Refuse);
    assert_eq!(cached(&narinfo, None).await, (200, "STALE".into(), fresh.2.clone()), "{}", spin.log());
    assert_eq!(cached(&nar, None).await, (200, "STALE".into(), want_nar.clone()));
    assert_eq!(cached(&nar, Some("bytes=3-9")).await, (206, "STALE".into(), want_nar[3..=9].to_vec()));
    assert_eq!(get(&pubkey).await, key);
    let never_kept = cached(&unknown, None).await;
    assert!(never_kept.0 >= 500, "what the node never kept: {never_kept:?}");
    assert!(spin.log().contains("answered stale from the node-local tier"), "{}", spin.log());

    // The region is back: fresh answers (the node read the purge log again).
    region.set(ProxyMode::Pass);
    past_the_purge_bound().await;
    assert_eq!(cached(&narinfo, None).await, (200, "HIT".into(), fresh.2.clone()));
    assert_eq!(shared.up.hits(&format!("/{}.narinfo", hash_of(&fx.leaf))), 1);

    // Stale answers off: the same failure gets a 503 (retry), as at a
    // native node with `--edge-cache-stale-if-error 0`.
    vars.insert("stale_if_error_s".into(), "0".into());
    let spin = spin.restart(&cli, vars).await;
    let narinfo = format!("{}/{}.narinfo", spin.url(), hash_of(&fx.leaf));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    for _ in 0..2 {
        assert_eq!(cached(&narinfo, None).await.0, 200);
    }
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    region.set(ProxyMode::Refuse);
    let off = cached(&narinfo, None).await;
    assert!(off.0 >= 500, "with stale_if_error_s = 0: {} {}", off.0, off.1);
    region.set(ProxyMode::Pass);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_nar_hit_at_a_spin_node_is_one_request_to_s3_on_a_pooled_connection() {
    let Some(cli) = spin_or_skip() else { return };
    let fx = fixture();
    let shared = Shared::new(fx, "none").await;
    let mut vars = shared.variables(fx);
    let Region { s3, db: _db, redis: _redis } = Region::between(&shared, &mut vars).await;
    let spin = SpinUp::start(&cli, vars).await;
    let nar = nar_url(&fx.cache("none"), &fx.big);
    let want = std::fs::read(fx.cache("none").join(nar.trim_start_matches('/'))).unwrap();
    assert!(want.len() > 64 << 10, "the NAR is too big for the node's tier");
    let url = format!("{}{nar}", spin.url());
    assert_eq!(get(&format!("{}/{}.narinfo", spin.url(), hash_of(&fx.big))).await.0, 200);
    // Downloaded and stored, then a hit; the miss's last calls to S3 end
    // with its instance.
    assert_eq!(get(&url).await, (200, want.clone()));
    assert_eq!(get(&url).await, (200, want.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Every NAR hit is a fresh instance reading the object from S3: one GET
    // gives its size and its bytes (no HEAD before it), on a connection
    // Spin's outbound HTTP pool (on by default) keeps between instances.
    let (connections, requests) = (s3.connections(), s3.http_requests());
    for _ in 0..5 {
        assert!(get(&url).await == (200, want.clone()), "a whole NAR hit");
    }
    let opened = s3.connections() - connections;
    assert!(opened <= 2, "5 NAR hits opened {opened} connections to S3: Spin did not pool them");
    assert_eq!(s3.http_requests() - requests, 5, "5 whole NAR hits: one request each to S3");

    // A HEAD asks for the size only; a range reads what it needs.
    let c = reqwest::Client::new();
    let requests = s3.http_requests();
    let head = c.head(&url).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 200);
    assert_eq!(head.headers()["content-length"].to_str().unwrap(), want.len().to_string());
    assert_eq!(s3.http_requests() - requests, 1, "a HEAD: one request to S3");
    let part = c.get(&url).header("range", "bytes=3-9").send().await.unwrap();
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(part.bytes().await.unwrap(), want[3..=9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spin_node_asks_the_upstreams_once_for_what_none_has() {
    let Some((_cli, _fx, shared, node)) = spin_node("none").await else { return };
    let path = "/00000000000000000000000000000000.narinfo";
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let resp = client.get(format!("{}{path}", node.url())).send().await.unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()["cache-control"], "public, max-age=60");
    }
    assert_eq!(shared.up.hits(path), 1, "the upstream was asked again within negative_ttl_s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_upstreams_get_the_native_answer_through_a_spin_node() {
    let Some(cli) = spin_or_skip() else { return };
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let cache = fx.cache("none");
    let good = std::fs::read_to_string(cache.join(format!("{}.narinfo", hash_of(&fx.leaf)))).unwrap();
    // Served under another path's hash; changed after signing; oversized;
    // not a narinfo; unsigned; and a NAR that does not match its hash.
    std::fs::write(dir.path().join(format!("{}.narinfo", hash_of(&fx.mid))), &good).unwrap();
    std::fs::write(dir.path().join(format!("{}.narinfo", hash_of(&fx.leaf))), good.replace("NarSize: ", "NarSize: 1"))
        .unwrap();
    let big = format!("{good}{}", "X-Padding: y\n".repeat(200_000));
    std::fs::write(dir.path().join(format!("{}.narinfo", hash_of(&fx.top))), big).unwrap();
    std::fs::write(dir.path().join(format!("{}.narinfo", hash_of(&fx.evil))), "this is not a narinfo").unwrap();
    let unsigned: String = good.lines().filter(|l| !l.starts_with("Sig:")).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.path().join(format!("{}.narinfo", hash_of(&fx.big))), unsigned).unwrap();
    let shared = Shared::on(dir.path().to_path_buf(), fresh_postgres().await).await;
    let native = shared.native_node(fx).await;
    let spin = shared.spin_up(&cli, fx).await;
    for p in [&fx.mid, &fx.leaf, &fx.top, &fx.evil, &fx.big] {
        let path = format!("/{}.narinfo", hash_of(p));
        let (n, s) = (get(&format!("{}{path}", native.url())).await, get(&format!("{}{path}", spin.url())).await);
        assert_eq!(n.0, 404, "{path} adopted by the native node");
        assert_eq!(s, n, "{path}: native vs Spin");
    }

    // A corrupt NAR is refused and never stored, through either node.
    let corrupt = Shared::new(fx, "none").await;
    corrupt.up.faults().corrupt_nars.store(true, std::sync::atomic::Ordering::SeqCst);
    let spin = corrupt.spin_up(&cli, fx).await;
    assert_eq!(get(&format!("{}/{}.narinfo", spin.url(), hash_of(&fx.leaf))).await.0, 200);
    let nar = nar_url(&cache, &fx.leaf);
    let want = std::fs::read(cache.join(&nar[1..])).unwrap();
    let whole = match reqwest::get(format!("{}{nar}", spin.url())).await {
        // A broken transfer, before or after the head, is a refusal.
        Err(_) => false,
        Ok(resp) => resp.status().is_success() && resp.bytes().await.is_ok_and(|b| b == want),
    };
    assert!(!whole, "a corrupt NAR must not be served whole");
    let stored = corrupt.bucket.client().list_objects_v2().bucket(&corrupt.bucket.bucket).send().await.unwrap();
    let keys: Vec<_> =
        stored.contents().iter().filter_map(|o| o.key()).filter(|k| k.starts_with("store/nar/")).collect();
    assert!(keys.is_empty(), "a corrupt NAR was stored: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spin_and_native_nodes_share_one_mysql_database() {
    let Some(cli) = spin_or_skip() else { return };
    let fx = fixture();
    let shared = Shared::on(fx.cache("none"), fresh_mysql().await).await;
    let native = shared.native_node(fx).await;
    let mut vars = shared.variables(fx);
    vars.insert("admin_token".into(), "lru-secret".into());
    vars.insert("max_size".into(), "1".into());
    let spin = SpinUp::start(&cli, vars).await;
    let spin_key = get(&format!("{}/pubkey", spin.url())).await.1;
    assert_eq!(String::from_utf8(spin_key).unwrap().trim(), native.public_key(), "one key for both");
    let cache = fx.cache("none");
    let narinfo = format!("/{}.narinfo", hash_of(&fx.leaf));
    let nar = nar_url(&cache, &fx.leaf);
    let via_spin = get(&format!("{}{narinfo}", spin.url())).await;
    assert_eq!(via_spin.0, 200);
    assert_eq!(get(&format!("{}{nar}", spin.url())).await.0, 200);
    assert_eq!(get(&format!("{}{narinfo}", native.url())).await, via_spin, "the same signed narinfo from both");
    assert_eq!(get(&format!("{}{nar}", native.url())).await.0, 200);
    assert_eq!(shared.up.hits(&nar), 1, "the native node served the Spin node's download");

    // An LRU pass through the Spin node evicts in MySQL (a transaction).
    let report = run_lru(&spin.url(), "lru-secret").await;
    assert!(report["evicted"].as_u64().unwrap_or(0) >= 1, "{report}");
    assert_eq!(get(&format!("{}{narinfo}", spin.url())).await.0, 200);
    assert_eq!(shared.up.hits(&narinfo), 2, "evicted, then fetched again");
}

/// Files under `dir` (recursively) that contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)) {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spin_node_enforces_its_tokens_and_never_writes_a_secret_to_its_disk() {
    let Some((cli, fx, shared, mut vars)) = spin_backends("none").await else { return };
    let secrets = [
        ("get_token", "read-secret-4417"),
        ("put_token", "put-secret-4417"),
        ("delete_token", "delete-secret-4417"),
        ("admin_token", "admin-secret-4417"),
        ("secret_key", "spin-test:BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="),
    ];
    for (name, value) in secrets {
        vars.insert(name.into(), value.into());
    }
    vars.insert("allow_put".into(), "true".into());
    let node = SpinUp::start(&cli, vars).await;
    let url = format!("{}/{}.narinfo", node.url(), hash_of(&fx.leaf));
    let c = reqwest::Client::new();
    let status = |r: reqwest::Response| r.status().as_u16();
    // Every instance after the first finds the settings in the node's
    // copy: the tokens are still asked for, and enforced.
    for _ in 0..3 {
        assert_eq!(status(c.get(&url).send().await.unwrap()), 401);
        assert_eq!(status(c.get(&url).bearer_auth("read-secret-4417").send().await.unwrap()), 200);
        assert_eq!(status(c.get(&url).bearer_auth("wrong").send().await.unwrap()), 401);
        let put = c.put(format!("{}/0c5gsym8rwxz5ynj76j0gh1q9h9wv5px.narinfo", node.url()));
        assert_eq!(status(put.bearer_auth("read-secret-4417").body("x").send().await.unwrap()), 403);
    }
    let pubkey = c.get(format!("{}/pubkey", node.url())).bearer_auth("read-secret-4417").send().await.unwrap();
    assert!(pubkey.text().await.unwrap().starts_with("spin-test:"), "the secret_key variable's key");
    let kept = files_containing(node.dir(), b"upstream_timeout_ms");
    assert!(!kept.is_empty(), "no copy of the settings in the node's store (under {})", node.dir().display());
    for (name, value) in secrets {
        let secret = value.rsplit(':').next().unwrap();
        assert_eq!(files_containing(node.dir(), secret.as_bytes()), Vec::<PathBuf>::new(), "{name} on disk");
    }
    let s3_secret = shared.bucket.secret_key.as_bytes();
    assert_eq!(files_containing(node.dir(), s3_secret), Vec::<PathBuf>::new(), "the S3 secret on disk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsafe_spin_settings_fail_closed() {
    let Some(cli) = spin_or_skip() else { return };
    let fx = fixture();
    let shared = Shared::new(fx, "none").await;
    let absent = "/0c5gsym8rwxz5ynj76j0gh1q9h9wv5px.narinfo";
    let put = |url: String| async move { reqwest::Client::new().put(url).body("x").send().await.unwrap().status() };

    // A write verb without its token stays off, as if never enabled.
    let off = shared.spin_up(&cli, fx).await;
    let mut vars = shared.variables(fx);
    vars.insert("allow_put".into(), "true".into());
    let tokenless = SpinUp::start(&cli, vars.clone()).await;
    let refused = put(format!("{}{absent}", tokenless.url())).await;
    assert!(!refused.is_success(), "an anonymous PUT was accepted: {refused}");
    assert_eq!(refused, put(format!("{}{absent}", off.url())).await, "as a node without PUT");
    // With its token it is on: a PUT without the token is unauthorized.
    vars.insert("put_token".into(), "put-secret".into());
    let with_token = SpinUp::start(&cli, vars).await;
    assert_eq!(put(format!("{}{absent}", with_token.url())).await.as_u16(), 401);

    // No supported database, or no Redis for locks: 5xx, never a hit or a 404.
    // (Spin wants its host variables either way: the manifest's
    // `allowed_outbound_hosts` are made of them.)
    let mut sqlite = shared.variables(fx);
    sqlite.insert("database_url".into(), "sqlite:///tmp/ncps.db".into());
    sqlite.insert("database_host".into(), "127.0.0.1:5432".into());
    let mut no_redis = shared.variables(fx);
    no_redis.insert("redis_address".into(), String::new());
    no_redis.insert("redis_host".into(), redis_addr());
    for vars in [sqlite, no_redis] {
        let node = SpinUp::start(&cli, vars).await;
        let (status, _) = get(&format!("{}/{}.narinfo", node.url(), hash_of(&fx.leaf))).await;
        assert!((500..600).contains(&status), "{status}");
    }
    assert_eq!(shared.up.hits(&nar_url(&fx.cache("none"), &fx.leaf)), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_backends_get_a_503_and_a_log_line_with_the_fix() {
    let Some(cli) = spin_or_skip() else { return };
    let fx = fixture();
    let shared = Shared::new(fx, "none").await;
    // The machine's PostgreSQL offers TLS with a certificate valid for no
    // loopback address, which Spin's client refuses without `sslmode`.
    let mut tls = shared.variables(fx);
    tls.insert("database_url".into(), shared.db.clone());
    // The database's address is not in `allowed_outbound_hosts`.
    let mut denied = shared.variables(fx);
    denied.insert("database_host".into(), "127.0.0.1:1".into());
    for (vars, cause, fix) in
        [(tls, "certificate verify failed", "sslmode=disable"), (denied, "not permitted", "database_host")]
    {
        let node = SpinUp::start(&cli, vars).await;
        for path in ["/pubkey".to_owned(), format!("/{}.narinfo", hash_of(&fx.leaf))] {
            let (status, body) = get(&format!("{}{path}", node.url())).await;
            assert_eq!(status, 503, "{cause}: {path}: {}", String::from_utf8_lossy(&body));
        }
        let log = node.log();
        assert!(!log.contains("panicked"), "{cause}: an instance trapped:\n{log}");
        let lines: Vec<&str> = log.lines().filter(|l| l.starts_with('{') && l.contains(cause)).collect();
        assert!(!lines.is_empty(), "{cause}: no log line names the cause:\n{log}");
        for line in lines {
            assert!(line.contains(fix), "{cause}: the line does not say the fix ({fix}): {line}");
            assert!(!line.contains("Stack backtrace"), "{cause}: one line, not a backtrace: {line}");
        }
    }
    assert_eq!(shared.up.hits(&nar_url(&fx.cache("none"), &fx.leaf)), 0, "nothing fetched unsigned");
}

/// A listener whose accept queue is full: the kernel drops every new
/// connection's SYN, as a host behind a network partition does (a refused
/// connection fails at once; this one is retried for minutes). The
/// listener and the connections that filled its queue keep it so.
fn black_hole() -> (std::net::TcpListener, Vec<std::net::TcpStream>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    let addr = listener.local_addr().expect("its address");
    let mut queued = Vec::new();
    while let Ok(stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
        queued.push(stream);
        assert!(queued.len() < 5_000, "the accept queue of {addr} never filled");
    }
    (listener, queued)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_that_drops_packets_costs_a_spin_request_one_backend_timeout() {
    let Some((cli, fx, _shared, mut vars)) = spin_backends("none").await else { return };
    let (listener, _queued) = black_hole();
    let addr = listener.local_addr().unwrap().to_string();
    vars.insert("database_url".into(), via(&vars["database_url"], &addr));
    vars.insert("backend_timeout_ms".into(), "2000".into());
    let node = SpinUp::start(&cli, vars).await;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    for path in ["/pubkey".to_owned(), format!("/{}.narinfo", hash_of(&fx.leaf))] {
        let started = Instant::now();
        let resp = client.get(format!("{}{path}", node.url())).send().await;
        let took = started.elapsed();
        let resp = resp.unwrap_or_else(|e| panic!("{path}: no answer after {took:?} ({e}):\n{}", node.log()));
        assert_eq!(resp.status().as_u16(), 503, "{path}: {}", node.log());
        // One connect timeout (2 s) and the rest of the request: not the
        // kernel's minutes of SYN retries, nor one timeout per statement
        // (three for a narinfo).
        assert!(took < Duration::from_secs(4), "{path} took {took:?}:\n{}", node.log());
    }
    let log = node.log();
    assert!(!log.contains("panicked"), "an instance trapped:\n{log}");
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with('{') && l.contains("timed out")).collect();
    assert!(!lines.is_empty(), "no log line names the timeout:\n{log}");
    for line in lines {
        assert!(line.contains("backend_timeout_ms"), "the line does not say the fix: {line}");
    }
}

/// The database goes silent mid-connection (every packet to it dropped,
/// the connections Spin pools for it left open, as behind a partition).
/// The first request to ask it waits out the timeouts the adapter adds to
/// the URL (`tcp_user_timeout` on the pooled connection, then a connect)
/// and trips the node's breaker: what the node keeps is answered stale,
/// and for a cool-down (2 s) the requests after it answer without waiting
/// for the database (stale, or passed through to the upstream). Once the
/// database answers again the next probe closes the breaker: fresh
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_that_goes_silent_mid_connection_trips_the_spin_nodes_breaker() {
    let Some((cli, fx, shared, _)) = spin_backends("none").await else { return };
    let settings = [("max_age_s", "1"), ("backend_timeout_ms", "2000")];
    let (spin, region, narinfo, fresh) = kept_behind_region(&cli, fx, &shared, &settings).await;
    let unknown = format!("{}/{}.narinfo", spin.url(), "1".repeat(32));
    // Past max_age_s: a hit must ask the database.
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    let silent = DroppedPort::new(region.db.port).unwrap_or_else(|e| panic!("cannot drop packets: {e}"));
    let connect = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(region.db.addr())).await;
    assert!(connect.is_err(), "packets to the database still arrive: {connect:?}");
    // `cached` gives up after 10 s: without the timeouts this waits minutes.
    let (first, took) = timed(&narinfo).await;
    assert_eq!(first, (200, "STALE".into(), fresh.2.clone()), "{}", spin.log());
    assert!(took >= Duration::from_millis(1_500), "answered in {took:?}: the database was not asked");
    eprintln!("first answer after the partition began: {took:?} ({} connections opened)", region.db.connections());
    // The breaker is open: no request waits for the database (a wait is
    // a connect timeout, 2 s).
    let (stale, took) = timed(&narinfo).await;
    assert_eq!(stale, (200, "STALE".into(), fresh.2.clone()), "{}", spin.log());
    assert!(took < Duration::from_millis(1_500), "stale after {took:?} with the breaker open:\n{}", spin.log());
    // Never kept: passed through to the upstream, which has none.
    let ((status, _, _), took) = timed(&unknown).await;
    assert_eq!(status, 404, "{}", spin.log());
    assert!(took < Duration::from_millis(1_500), "404 after {took:?} with the breaker open:\n{}", spin.log());
    let log = spin.log();
    assert!(log.contains("the database did not answer"), "{log}");
    assert!(!log.contains("panicked"), "an instance trapped:\n{log}");

    // The partition ends: within a cool-down (and a connect) the answers
    // are fresh again.
    drop(silent);
    fresh_within_10s(&narinfo, &fresh.2, &spin).await;
}

/// S3 goes silent mid-connection (every packet to it dropped, the
/// connection Spin pools for it left open). The first NAR request to ask
/// it waits out one `backend_timeout_ms` and trips the node's S3 breaker;
/// it, and the requests after it, are served from the upstream without
/// being stored, and for a cool-down (2 s) no request waits for S3 (not
/// for its stat, nor for the commit after the download). Once S3 answers
/// again the next probe closes the breaker: the NAR is stored, then hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_that_goes_silent_mid_connection_trips_the_spin_nodes_breaker() {
    let Some((cli, fx, shared, mut vars)) = spin_backends("none").await else { return };
    let region = Region::between(&shared, &mut vars).await;
    vars.insert("backend_timeout_ms".into(), "2000".into());
    let spin = SpinUp::start(&cli, vars).await;
    let cache = fx.cache("none");
    let nar_of = |path: &str| format!("{}{}", spin.url(), nar_url(&cache, path));
    let want = std::fs::read(cache.join(nar_url(&cache, &fx.leaf).trim_start_matches('/'))).unwrap();
    // Another NAR stored and hit (Spin then pools a connection to S3);
    // the leaf's narinfo recorded, its NAR never asked for.
    for path in [&fx.mid, &fx.leaf] {
        assert_eq!(cached(&format!("{}/{}.narinfo", spin.url(), hash_of(path)), None).await.1, "MISS");
    }
    assert_eq!(cached(&nar_of(&fx.mid), None).await.1, "MISS");
    assert_eq!(cached(&nar_of(&fx.mid), None).await.1, "HIT");
    assert!(region.s3.connections() > 0, "the node never connected to S3");

    let silent = DroppedPort::new(region.s3.port).unwrap_or_else(|e| panic!("cannot drop packets: {e}"));
    let connect = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(region.s3.addr())).await;
    assert!(connect.is_err(), "packets to S3 still arrive: {connect:?}");
    // From the upstream, not stored: after one wait for S3 (its stat).
    let (first, took) = timed(&nar_of(&fx.leaf)).await;
    assert_eq!((first.0, first.1.as_str()), (200, "MISS"), "{}", spin.log());
    assert_eq!(first.2, want);
    assert!(took >= Duration::from_millis(1_500), "answered in {took:?}: S3 was not asked");
    eprintln!("first NAR after the partition began: {took:?}");
    // The breaker is open: the same again, without a wait (a wait is a
    // timeout, 2 s).
    let (second, took) = timed(&nar_of(&fx.leaf)).await;
    assert_eq!((second.0, second.1.as_str(), &second.2), (200, "MISS", &want), "{}", spin.log());
    assert!(took < Duration::from_millis(1_500), "served after {took:?} with the breaker open:\n{}", spin.log());
    let log = spin.log();
    assert!(log.contains("S3 did not answer"), "{log}");
    assert!(!log.contains("panicked"), "an instance trapped:\n{log}");
    assert_eq!(shared.up.hits(&nar_url(&cache, &fx.leaf)), 2, "each answer came from the upstream");

    // The partition ends: within a cool-down the NAR is stored again, and
    // then served from S3.
    drop(silent);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = cached(&nar_of(&fx.leaf), None).await;
        assert_eq!((answer.0, &answer.2), (200, &want), "{}", spin.log());
        if answer.1 == "HIT" {
            break;
        }
        assert!(Instant::now() < deadline, "not stored 10 s after the partition: {}\n{}", answer.1, spin.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A node's answer: status, `x-cache` and body.
type Answer = (u16, String, Vec<u8>);

/// A Spin node on `shared` behind a [`Region`] of proxies, with `settings`
/// among its variables, that read the fixture's leaf narinfo once (a
/// `MISS`, which left a connection to the database in Spin's pool) and
/// answered it again (a `HIT`): the node, the region, that narinfo's URL
/// and the `HIT`.
async fn kept_behind_region(
    cli: &std::path::Path,
    fx: &Fixture,
    shared: &Shared,
    settings: &[(&str, &str)],
) -> (SpinUp, Region, String, Answer) {
    let mut vars = shared.variables(fx);
    let region = Region::between(shared, &mut vars).await;
    vars.extend(settings.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let spin = SpinUp::start(cli, vars).await;
    let narinfo = format!("{}/{}.narinfo", spin.url(), hash_of(&fx.leaf));
    assert_eq!(cached(&narinfo, None).await.1, "MISS");
    let fresh = cached(&narinfo, None).await;
    assert_eq!((fresh.0, fresh.1.as_str()), (200, "HIT"));
    assert!(region.db.connections() > 0, "the node never connected to the database");
    (spin, region, narinfo, fresh)
}

/// `backend` (as the log names it) went silent for `spin`, and `url` needs
/// it: the next request to `url` meets the silence and waits (its connect
/// is retried for minutes), and from `backend_timeout_ms` (1 s) after it,
/// `rounds.0` requests `rounds.1` apart are answered `want` in under 0.7 s
/// each, where without the breaker each would wait too; the log says the
/// breaker tripped on a call that had not returned.
async fn one_request_waits_on(spin: &SpinUp, url: &str, backend: &str, rounds: (u32, Duration), want: &Answer) {
    let held = tokio::spawn({
        let url = url.to_owned();
        async move { tokio::time::timeout(Duration::from_secs(5), reqwest::get(url)).await.is_err() }
    });
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    for round in 0..rounds.0 {
        let (answer, took) = timed(url).await;
        assert_eq!(&answer, want, "round {round}: {}", spin.log());
        assert!(took < Duration::from_millis(700), "round {round}: answered after {took:?}:\n{}", spin.log());
        tokio::time::sleep(rounds.1).await;
    }
    assert!(held.await.unwrap(), "the request that met the silent {backend} was answered: it did not wait for it");
    let log = spin.log();
    assert!(log.contains(&format!("{backend} did not answer")), "{log}");
    assert!(log.contains("has not returned"), "{log}");
    assert!(!log.contains("panicked"), "an instance trapped:\n{log}");
}

/// Redis goes silent (every packet to it dropped: a new connection's SYN
/// too). Spin's Redis client has no timeout, so the request that finds
/// the tier's trust lapsed and reads the purge log waits for the kernel
/// (minutes). The node's other requests do not: one that comes
/// `backend_timeout_ms` after that call began sees its note, trips the
/// node's Redis breaker and is answered from the database, and so are the
/// ones after it, while reads after answers probe Redis. Once Redis
/// answers again a probe closes the breaker: a miss takes its lock again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_that_goes_silent_holds_one_spin_request_not_every_one() {
    let Some((cli, fx, shared, _)) = spin_backends("none").await else { return };
    let (spin, region, narinfo, fresh) = kept_behind_region(&cli, fx, &shared, &[("backend_timeout_ms", "1000")]).await;
    assert!(region.redis.connections() > 0, "the node never connected to Redis");

    let silent = DroppedPort::new(region.redis.port).unwrap_or_else(|e| panic!("cannot drop packets: {e}"));
    let connect =
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(region.redis.addr())).await;
    assert!(connect.is_err(), "packets to Redis still arrive: {connect:?}");
    // Past the tier's trust (1 s after the last read of the purge log): the
    // next hit reads the log first, and its call to Redis does not return.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    one_request_waits_on(&spin, &narinfo, "Redis", (5, Duration::from_millis(600)), &fresh).await;

    // Redis answers again: within a cool-down and a probe the breaker
    // closes, and a miss takes its lock there (while it is open, a miss
    // gets a 503: "lock service unavailable").
    drop(silent);
    back_within_10s(&spin, |attempt| {
        let unknown = format!("{}/{}{attempt:04}.narinfo", spin.url(), "1".repeat(28));
        async move {
            let (status, _, body) = cached(&unknown, None).await;
            assert!([404, 503].contains(&status), "{status}: {}", String::from_utf8_lossy(&body));
            if status == 503 {
                return Err(String::from_utf8_lossy(&body).into_owned());
            }
            Ok(())
        }
    })
    .await;
}

/// MySQL goes silent (every packet to it dropped). Spin's MySQL client has
/// no timeout (and opens a connection per instance), so the request that
/// meets the silence waits for the kernel; one that comes
/// `backend_timeout_ms` after that call began sees its note and trips the
/// node's database breaker: what the node keeps is answered stale, without
/// a wait, as behind a silent PostgreSQL. Once MySQL answers again a probe
/// closes the breaker: fresh answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mysql_that_goes_silent_holds_one_spin_request_not_every_one() {
    let Some(cli) = spin_or_skip() else { return };
    let fx = fixture();
    let shared = Shared::on(fx.cache("none"), fresh_mysql().await).await;
    let settings = [("max_age_s", "1"), ("backend_timeout_ms", "1000")];
    let (spin, region, narinfo, fresh) = kept_behind_region(&cli, fx, &shared, &settings).await;
    // Past max_age_s: a hit asks the database.
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    let silent = DroppedPort::new(region.db.port).unwrap_or_else(|e| panic!("cannot drop packets: {e}"));
    let stale = (200, "STALE".to_owned(), fresh.2.clone());
    one_request_waits_on(&spin, &narinfo, "the database", (3, Duration::from_millis(300)), &stale).await;

    drop(silent);
    fresh_within_10s(&narinfo, &fresh.2, &spin).await;
}

/// Where a Spin node's `default` key-value store lives.
enum Store {
    /// Spin's own (SQLite), a file in the app's folder: the default.
    Spin,
    /// Redis database `n` (emptied first: the test's own), by a runtime
    /// config, as SpinKube deployments often give it.
    Redis(u8),
}

impl Store {
    /// A Spin node with this store (emptied first).
    async fn start(&self, cli: &std::path::Path, vars: HashMap<String, String>) -> SpinUp {
        match self {
            Store::Spin => SpinUp::start(cli, vars).await,
            Store::Redis(db) => {
                let _: () = redis::cmd("FLUSHDB").query_async(&mut Self::redis(*db).await).await.unwrap();
                let config =
                    format!("[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://{}/{db}\"\n", redis_addr());
                SpinUp::start_with_config(cli, vars, &config).await
            }
        }
    }

    /// A connection to Redis database `db`.
    async fn redis(db: u8) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(format!("redis://{}/{db}", redis_addr())).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }

    /// The keys of `node`'s store, sorted.
    async fn keys(&self, node: &SpinUp) -> Vec<String> {
        match self {
            Store::Spin => {
                let file = node.dir().join(".spin").join("sqlite_key_value.db");
                let db = rusqlite::Connection::open_with_flags(&file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                db.busy_timeout(Duration::from_secs(5)).unwrap();
                let mut query =
                    db.prepare("SELECT key FROM spin_key_value WHERE store = 'default' ORDER BY key").unwrap();
                query.query_map([], |row| row.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
            }
            Store::Redis(db) => {
                let mut keys: Vec<String> =
                    redis::cmd("KEYS").arg("*").query_async(&mut Self::redis(*db).await).await.unwrap();
                keys.sort();
                keys
            }
        }
    }

    /// The keys of `node`'s store once `settled` holds of them, or after
    /// 5 s (the node writes some after its answer).
    async fn keys_once(&self, node: &SpinUp, settled: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let keys = self.keys(node).await;
            if settled(&keys) || Instant::now() > deadline {
                return keys;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spin_node_sweeps_from_its_store_what_it_can_no_longer_serve() {
    sweeps(Store::Spin).await;
}

/// Spin 3.6.3's Redis store refuses batch reads (it sends them as `KEYS`):
/// the node reads a key per call instead, keeps and sweeps its tier as
/// on Spin's own store, and says so once, not on every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spin_node_whose_store_is_redis_keeps_and_sweeps_its_tier() {
    let Some(node) = sweeps(Store::Redis(9)).await else { return };
    let log = node.log();
    let refused = log.lines().filter(|l| l.contains("refuses batch reads")).collect::<Vec<_>>();
    assert_eq!(refused.len(), 1, "not said once:\n{log}");
    assert!(refused[0].contains("type \\\"spin\\\""), "the line does not say the fix: {}", refused[0]);
    assert!(!log.contains("a read of the node-local store failed"), "{log}");
}

/// A Spin node on `store` keeps a narinfo, its access notes and an
/// absence, then sweeps them once they can no longer be served, keeping
/// what is live; the node (none when Spin is missing outside CI).
async fn sweeps(store: Store) -> Option<SpinUp> {
    let (cli, fx, _backends, mut vars) = spin_backends("none").await?;
    vars.insert("max_age_s".into(), "1".into());
    vars.insert("negative_ttl_s".into(), "1".into());
    // Kept for stale answers 1 s past max_age_s.
    vars.insert("stale_if_error_s".into(), "1".into());
    let node = store.start(&cli, vars).await;
    let hash = hash_of(&fx.leaf);
    let (gone, later) = ("11111111111111111111111111111111", "22222222222222222222222222222222");
    let of_kind = |keys: &[String], kind: &str, name: &str| {
        keys.iter().filter(|k| k.starts_with(&format!("{kind}/")) && k.ends_with(name)).count()
    };
    let nar = nar_url(&fx.cache("none"), &fx.leaf);
    let narinfo_note = format!("/narinfo/{hash}");
    let entries =
        [("narinfo", hash), ("accessed", nar.as_str()), ("accessed", narinfo_note.as_str()), ("absent", gone)];

    // A narinfo (its record, kept when read from the database: at the
    // second request; its NAR's access note, written by the miss, and the
    // narinfo hit's own) and an absence.
    for _ in 0..2 {
        assert_eq!(get(&format!("{}/{hash}.narinfo", node.url())).await.0, 200);
    }
    assert_eq!(get(&format!("{}/{gone}.narinfo", node.url())).await.0, 404);
    let kept = store.keys_once(&node, |keys| entries.iter().all(|(kind, name)| of_kind(keys, kind, name) == 1)).await;
    for (kind, name) in entries {
        assert_eq!(of_kind(&kept, kind, name), 1, "{kind} {name} not kept: {kept:?}");
    }

    // Past every entry's age (an access note lives 10 s) and the sweep's
    // interval, a write starts a pass that deletes the dead entries.
    tokio::time::sleep(Duration::from_millis(ncps_edge_wire::sql::ACCESS_WRITE_EVERY_MS + 500)).await;
    assert_eq!(get(&format!("{}/{later}.narinfo", node.url())).await.0, 404);
    let swept = store
        .keys_once(&node, |keys| {
            of_kind(keys, "absent", later) == 1 && entries.iter().all(|(kind, name)| of_kind(keys, kind, name) == 0)
        })
        .await;
    for (kind, name) in entries {
        assert_eq!(of_kind(&swept, kind, name), 0, "{kind} {name} not swept: {swept:?}");
    }
    assert_eq!(of_kind(&swept, "absent", later), 1, "a live absence was swept: {swept:?}");
    assert!(swept.iter().any(|k| k == "settings/variables"), "the node's notes were swept: {swept:?}");
    // The node serves on.
    assert_eq!(get(&format!("{}/{hash}.narinfo", node.url())).await.0, 200);
    Some(node)
}
