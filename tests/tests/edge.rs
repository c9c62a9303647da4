//! The edge tier: answers from memory equal the handler's byte for byte
//! (GET, HEAD, ranges, the read token); "no upstream has it" is kept for
//! the negative TTL, asked upstream once however many clients ask, and
//! cleared by an upload; purges (a DELETE, an LRU eviction) reach the
//! other nodes over each lock backend's channel within the documented
//! bound; the local-disk tier in front of S3 keeps only whole, checked
//! NARs and answers while S3 is stalled.

use std::time::{Duration, Instant};

use base64::Engine as _;
use mysql_async::prelude::Queryable as _;

use ncps_edge_host_services::cluster::channel::postgres::identifier;
use ncps_edge_host_services::cluster::channel::HEARD_WITHIN;
use ncps_edge_host_services::signer::Signer;
use ncps_edge_test_support::{
    fresh_bucket, fresh_mysql, fresh_postgres, host_port, redis_addr, via, PrivateRedis, ProxyMode, StallProxy,
};
use ncps_edge_tests::cluster::backend_flags;
use ncps_edge_tests::fixture::{fixture, hash_of, nar_file, nar_url};
use ncps_edge_tests::node::{memory_tier_on, start_node, upstream_flags, TestNode};
use ncps_edge_tests::process::NodeProcess;
use ncps_edge_tests::scenario::Scenario;
use ncps_edge_tests::scrape::sample;
use ncps_edge_tests::upstream::FakeUpstream;

/// A request: method, path, headers.
type Case<'a> = (reqwest::Method, &'a str, Vec<(&'a str, String)>);

/// What a response is, minus the `date` header.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

async fn ask(c: &reqwest::Client, method: reqwest::Method, url: &str, headers: &[(&str, String)]) -> Answer {
    let mut req = c.request(method, url);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let mut headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(k, _)| *k != "date")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    headers.sort();
    Answer { status, headers, body: resp.bytes().await.unwrap().to_vec() }
}

/// GET `url` whole: the body, when its first byte came and when it ended.
async fn fetch(c: reqwest::Client, url: String) -> (Vec<u8>, Instant, Instant) {
    let mut resp = c.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = Vec::new();
    let mut first = None;
    while let Some(chunk) = resp.chunk().await.unwrap() {
        first.get_or_insert_with(Instant::now);
        body.extend_from_slice(&chunk);
    }
    (body, first.unwrap(), Instant::now())
}

async fn memory_hits(c: &reqwest::Client, node: &TestNode) -> f64 {
    let text = c.get(format!("{}/metrics", node.url())).send().await.unwrap().text().await.unwrap();
    ["ncps_narinfo_served_total", "ncps_nar_served_total"]
        .iter()
        .map(|m| sample(&text, m, &[("result", "hit"), ("tier", "memory")]).unwrap_or(0.0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_answers_equal_the_handlers_byte_for_byte() {
    if !memory_tier_on() {
        return; // Nothing to compare against: every answer is the handler's.
    }
    let fx = fixture();
    let cache = fx.cache("none");
    let up = FakeUpstream::start(cache.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, Signer::generate("edge-1").to_secret_string()).unwrap();
    let mut flags = upstream_flags(&up.url(), &fx.public_key);
    flags.extend([
        format!("--cache-secret-key-path={}", key.display()),
        "--cache-get-token=reader".into(),
        "--cache-put-token=writer".into(),
        "--cache-allow-put-verb".into(),
        "--prometheus-enabled".into(),
    ]);
    let tiered = start_node(&flags).await;
    flags.push("--edge-cache-memory=0".into());
    let plain = start_node(&flags).await;
    let c = reqwest::Client::new();
    let narinfo = format!("/{}.narinfo", hash_of(&fx.mid));
    let nar = nar_url(&cache, &fx.mid);
    let size = std::fs::metadata(nar_file(&cache, &fx.mid)).unwrap().len();
    let bearer = ("authorization", "Bearer reader".to_string());
    let basic = ("authorization", format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("nix:writer")));
    let wrong = ("authorization", "Bearer nope".to_string());
    // Warm both (the first answers come from the handler and are kept).
    for node in [&tiered, &plain] {
        for path in ["/nix-cache-info", "/pubkey", "/", narinfo.as_str(), nar.as_str(), nar.as_str()] {
            let a =
                ask(&c, reqwest::Method::GET, &format!("{}{path}", node.url()), std::slice::from_ref(&bearer)).await;
            assert_eq!(a.status, 200, "{path}");
        }
    }
    let before = memory_hits(&c, &tiered).await;
    let get = reqwest::Method::GET;
    let head = reqwest::Method::HEAD;
    let cases: Vec<Case> = vec![
        (get.clone(), "/nix-cache-info", vec![bearer.clone()]),
        (head.clone(), "/nix-cache-info", vec![bearer.clone()]),
        (get.clone(), "/pubkey", vec![basic.clone()]),
        (get.clone(), "/", vec![bearer.clone()]),
        (get.clone(), &narinfo, vec![bearer.clone()]),
        (head.clone(), &narinfo, vec![basic.clone()]),
        (get.clone(), &narinfo, vec![]),
        (get.clone(), &narinfo, vec![wrong.clone()]),
        (get.clone(), &nar, vec![bearer.clone()]),
        (head.clone(), &nar, vec![bearer.clone()]),
        (get.clone(), &nar, vec![bearer.clone(), ("range", "bytes=10-19".into())]),
        (get.clone(), &nar, vec![bearer.clone(), ("range", "bytes=-7".into())]),
        (get.clone(), &nar, vec![bearer.clone(), ("range", format!("bytes={}-", size - 3))]),
        (get.clone(), &nar, vec![bearer.clone(), ("range", format!("bytes={size}-"))]),
        (get.clone(), &nar, vec![bearer.clone(), ("range", "bytes=5-2".into())]),
        (head.clone(), &nar, vec![bearer.clone(), ("range", "bytes=0-0".into())]),
        (get.clone(), &nar, vec![]),
    ];
    let mut from_memory = 0.0;
    for (method, path, headers) in &cases {
        let mine = ask(&c, method.clone(), &format!("{}{path}", tiered.url()), headers).await;
        let theirs = ask(&c, method.clone(), &format!("{}{path}", plain.url()), headers).await;
        assert_eq!(mine, theirs, "{method} {path} {headers:?}");
        let counted = (mine.status == 200 || mine.status == 206)
            && !path.starts_with("/nix")
            && *path != "/pubkey"
            && *path != "/";
        if counted {
            from_memory += 1.0;
        }
    }
    // Every counted hit above came from memory, none from an instance.
    assert_eq!(memory_hits(&c, &tiered).await - before, from_memory);
    assert_eq!(up.hits(&nar), 2, "one download per node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn absent_narinfos_are_asked_once_per_ttl_and_cleared_by_an_upload() {
    let fx = fixture();
    // The xz cache has the closure of `top` only: `big` is absent upstream.
    let up = FakeUpstream::start(fx.cache("xz")).await;
    let mut flags = upstream_flags(&up.url(), &fx.public_key);
    flags.extend([
        "--cache-negative-ttl=3s".into(),
        "--cache-allow-put-verb".into(),
        "--cache-put-token=writer".into(),
    ]);
    let node = start_node(&flags).await;
    let c = reqwest::Client::new();
    // A storm: 20 absent narinfos, 25 clients each, at once.
    const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let absent: Vec<String> = (0..20).map(|i| format!("{}{}", "0".repeat(31), NIX32[i] as char)).collect();
    let mut tasks = Vec::new();
    for hash in &absent {
        for _ in 0..25 {
            let (c, url) = (c.clone(), format!("{}/{hash}.narinfo", node.url()));
            tasks.push(tokio::spawn(async move { c.get(url).send().await.unwrap().status().as_u16() }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 404);
    }
    let asked: usize = absent.iter().map(|h| up.hits(&format!("/{h}.narinfo"))).sum();
    assert_eq!(asked, absent.len(), "500 requests for 20 absent narinfos went upstream {asked} times");

    // The big path: absent, kept absent, then uploaded.
    let hash = hash_of(&fx.big);
    let url = format!("{}/{hash}.narinfo", node.url());
    let path = format!("/{hash}.narinfo");
    assert_eq!(c.get(&url).send().await.unwrap().status(), 404);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 404);
    assert_eq!(up.hits(&path), 1, "asked again within the negative TTL");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(c.get(&url).send().await.unwrap().status(), 404);
    assert_eq!(up.hits(&path), 2, "not asked again after the negative TTL");
    // An upload clears "absent" at once.
    let none = fx.cache("none");
    let nar_path = nar_url(&none, &fx.big);
    let put = |url: String, body: Vec<u8>| c.put(url).bearer_auth("writer").body(body).send();
    let nar = put(format!("{}{nar_path}", node.url()), std::fs::read(nar_file(&none, &fx.big)).unwrap()).await.unwrap();
    assert!(nar.status().is_success(), "{}", nar.status());
    let narinfo = std::fs::read(none.join(format!("{hash}.narinfo"))).unwrap();
    let put_narinfo = put(url.clone(), narinfo).await.unwrap();
    assert!(put_narinfo.status().is_success(), "{}", put_narinfo.status());
    let after = c.get(&url).send().await.unwrap();
    assert_eq!(after.status(), 200, "still absent after an upload");
    assert_eq!(up.hits(&path), 2);
}

/// Two nodes sharing `backend`'s database and locks and one folder; B's
/// tier keeps the narinfo of `leaf`; A deletes it, then evicts the rest:
/// B stops answering within [`HEARD_WITHIN`] each time.
async fn purges_reach_the_other_node(backend: &str) {
    let fx = fixture();
    let cache = fx.cache("none");
    let up = FakeUpstream::start(cache.clone()).await;
    let shared = tempfile::tempdir().unwrap();
    let mut flags = upstream_flags(&up.url(), &fx.public_key);
    flags.extend(backend_flags(backend).await);
    flags.extend([
        format!("--cache-storage-local={}", shared.path().display()),
        "--cache-allow-delete-verb".into(),
        "--cache-delete-token=deleter".into(),
        "--admin-token=adm".into(),
        "--cache-max-size=1".into(),
        "--edge-cache-max-age=1h".into(),
    ]);
    let a = start_node(&flags).await;
    let b = start_node(&flags).await;
    let c = reqwest::Client::new();
    // Until B hears its channel it answers nothing from memory.
    tokio::time::sleep(HEARD_WITHIN).await;
    let on_b = |p: &str| format!("{}/{}.narinfo", b.url(), hash_of(p));
    for p in [&fx.leaf, &fx.mid] {
        for _ in 0..2 {
            assert_eq!(c.get(on_b(p)).send().await.unwrap().status(), 200, "{backend}");
        }
    }
    // The NAR of `mid` is stored (an LRU pass evicts stored NARs only).
    let nar = c.get(format!("{}{}", b.url(), nar_url(&cache, &fx.mid))).send().await.unwrap();
    assert_eq!(nar.status(), 200, "{backend}");
    nar.bytes().await.unwrap();
    // A DELETE on A.
    let deleted =
        c.delete(format!("{}/{}.narinfo", a.url(), hash_of(&fx.leaf))).bearer_auth("deleter").send().await.unwrap();
    assert_eq!(deleted.status(), 204, "{backend}");
    let took = gone_from(&c, &on_b(&fx.leaf)).await;
    assert!(took <= HEARD_WITHIN, "{backend}: B served a deleted narinfo for {took:?}");
    // An LRU pass on A evicts every NAR (max size 1 byte), with its narinfos.
    let lru = c.post(format!("{}/admin/lru", a.url())).bearer_auth("adm").send().await.unwrap();
    assert_eq!(lru.status(), 200, "{backend}");
    let report: serde_json::Value = serde_json::from_slice(&lru.bytes().await.unwrap()).unwrap();
    assert_eq!(report["evicted"], 1, "{backend}: {report}");
    let took = gone_from(&c, &on_b(&fx.mid)).await;
    assert!(took <= HEARD_WITHIN, "{backend}: B served an evicted narinfo for {took:?}");
}

/// Poll `url` until it no longer answers 200 with `x-cache: HIT` from a
/// kept answer; how long that took. (A narinfo gone from the database is
/// fetched again from upstream: `MISS`.)
async fn gone_from(c: &reqwest::Client, url: &str) -> Duration {
    let started = Instant::now();
    loop {
        let resp = c.get(url).send().await.unwrap();
        if resp.status() != 200 || resp.headers().get("x-cache").is_some_and(|v| v == "MISS") {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{url} still served from memory");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purges_reach_other_nodes_over_redis() {
    purges_reach_the_other_node("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purges_reach_other_nodes_over_postgres() {
    purges_reach_the_other_node("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purges_reach_other_nodes_over_mysql() {
    purges_reach_the_other_node("mysql").await;
}

/// What two nodes that purge each other's tiers share: the fixture's
/// upstream, one storage folder, and flags that let a DELETE through, keep
/// narinfos for an hour and count tier hits (`/metrics`).
struct Purging {
    _up: FakeUpstream,
    _shared: tempfile::TempDir,
    flags: Vec<String>,
}

impl Purging {
    async fn start() -> Self {
        let fx = fixture();
        let up = FakeUpstream::start(fx.cache("none")).await;
        let shared = tempfile::tempdir().unwrap();
        let mut flags = upstream_flags(&up.url(), &fx.public_key);
        flags.extend([
            format!("--cache-storage-local={}", shared.path().display()),
            "--cache-allow-delete-verb".into(),
            "--cache-delete-token=deleter".into(),
            "--edge-cache-max-age=1h".into(),
            "--prometheus-enabled".into(),
        ]);
        Self { _up: up, _shared: shared, flags }
    }

    /// A node with these flags and `more`.
    async fn node(&self, more: &[String]) -> TestNode {
        start_node(&[self.flags.as_slice(), more].concat()).await
    }
}

/// The narinfo of store path `path` at `node`.
fn narinfo_at(node: &TestNode, path: &str) -> String {
    format!("{}/{}.narinfo", node.url(), hash_of(path))
}

/// GET `url` at `node` (200); whether its tier answered.
async fn from_memory(c: &reqwest::Client, node: &TestNode, url: &str) -> bool {
    let hits = memory_hits(c, node).await;
    assert_eq!(c.get(url).send().await.unwrap().status(), 200, "{url}");
    memory_hits(c, node).await == hits + 1.0
}

/// GET the narinfos of `paths` at `node`, once each: its tier keeps them.
async fn kept_at(c: &reqwest::Client, node: &TestNode, paths: &[&str]) {
    for path in paths {
        let url = narinfo_at(node, path);
        assert_eq!(c.get(&url).send().await.unwrap().status(), 200, "{url}");
        assert!(from_memory(c, node, &url).await, "the tier does not keep {url}");
    }
}

/// DELETE the narinfo of `path` at `node`.
async fn delete_at(c: &reqwest::Client, node: &TestNode, path: &str) {
    let deleted = c.delete(narinfo_at(node, path)).bearer_auth("deleter").send().await.unwrap();
    assert_eq!(deleted.status(), 204);
}

/// `--cache-database-url` for `database` through `proxy` (MySQL: over TCP,
/// not the server's Unix socket).
fn database_through(database: &str, proxy: &StallProxy) -> String {
    let url = via(database, &proxy.addr());
    if database.starts_with("mysql") {
        format!("--cache-database-url={url}?prefer_socket=false")
    } else {
        format!("--cache-database-url={url}")
    }
}

/// What happens to the channel while B's listener is away.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Meanwhile {
    /// Nothing: A deletes, and that is all.
    Nothing,
    /// The channel loses the purges it kept (Redis's purge log, as after a
    /// restart without persistence; the purge table, as after a restore
    /// of an older backup), then A deletes.
    PurgesLost,
    /// On PostgreSQL: before B's listener goes away, it hears a purge sent
    /// without a row in the purge table, as a node of an older version
    /// sends it (a purge B cannot know it would have read again).
    AnOlderNodePurged,
}

/// Two nodes on `backend`, B's connections to the server its channel is
/// on through a proxy; B's tier keeps the narinfos of `leaf` and `mid`.
/// The proxy closes B's connections and refuses new ones for a moment:
/// long enough for A to delete `leaf` (after what `meanwhile` says), short
/// enough for B's listener (which waits half a second after a failure) to
/// connect again before B misses a heartbeat. B stops answering `leaf`
/// within [`HEARD_WITHIN`] of the delete all the same. When the channel
/// gives B every purge it missed (Redis's purge log, the purge table on
/// PostgreSQL and MySQL), B keeps the rest of its tier; when it cannot
/// (it lost them meanwhile), B's tier starts empty.
async fn a_purge_sent_while_the_listener_reconnects_reaches_the_node(backend: &str, meanwhile: Meanwhile) {
    if !memory_tier_on() {
        return; // Nothing kept to purge: every answer is the handler's.
    }
    let (fx, purging) = (fixture(), Purging::start().await);
    let direct = backend_flags(backend).await;
    let database = direct.iter().find_map(|f| f.strip_prefix("--cache-database-url=")).unwrap().to_owned();
    let proxy = StallProxy::start(&if backend == "redis" { redis_addr() } else { host_port(&database) }).await;
    let through = direct.iter().map(|flag| match flag.split_once('=') {
        Some(("--cache-redis-addrs", _)) => format!("--cache-redis-addrs={}", proxy.addr()),
        Some(("--cache-database-url", _)) if backend != "redis" => database_through(&database, &proxy),
        _ => flag.clone(),
    });
    let a = purging.node(&direct).await;
    let b = purging.node(&through.collect::<Vec<_>>()).await;
    let c = reqwest::Client::new();
    tokio::time::sleep(HEARD_WITHIN).await;
    // Two purges before: the channel has a history that B has heard (an
    // answer is not kept when a purge arrives while it is made).
    for path in [&fx.top, &fx.big] {
        assert_eq!(c.get(narinfo_at(&a, path)).send().await.unwrap().status(), 200);
        delete_at(&c, &a, path).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    kept_at(&c, &b, &[&fx.leaf, &fx.mid]).await;
    if meanwhile == Meanwhile::AnOlderNodePurged {
        notify_an_unlogged_purge(&database, &fx.top).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    proxy.set(ProxyMode::Refuse);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let deleted_at = Instant::now();
    if meanwhile == Meanwhile::PurgesLost {
        lose_the_purges(backend, &direct).await;
    }
    delete_at(&c, &a, &fx.leaf).await;
    tokio::time::sleep(Duration::from_millis(300).saturating_sub(deleted_at.elapsed())).await;
    proxy.set(ProxyMode::Pass);
    gone_from(&c, &narinfo_at(&b, &fx.leaf)).await;
    let took = deleted_at.elapsed();
    assert!(took <= HEARD_WITHIN, "{backend}: B served a narinfo deleted while its listener reconnected for {took:?}");
    // By now B hears its channel again.
    tokio::time::sleep(HEARD_WITHIN).await;
    let resumes = meanwhile == Meanwhile::Nothing;
    assert_eq!(
        from_memory(&c, &b, &narinfo_at(&b, &fx.mid)).await,
        resumes,
        "{backend}: whether B kept the rest of its tier (its channel gave it every purge it missed)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_sent_while_the_listener_reconnects_reaches_the_node_over_redis() {
    a_purge_sent_while_the_listener_reconnects_reaches_the_node("redis", Meanwhile::Nothing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_sent_while_the_listener_reconnects_reaches_the_node_over_postgres() {
    a_purge_sent_while_the_listener_reconnects_reaches_the_node("postgres", Meanwhile::Nothing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purge_sent_while_the_listener_reconnects_reaches_the_node_over_mysql() {
    a_purge_sent_while_the_listener_reconnects_reaches_the_node("mysql", Meanwhile::Nothing).await;
}

/// Notify the PostgreSQL channel of nodes on `database` (with the default
/// lock prefix) of a purge of `path`, without a row in the purge table.
async fn notify_an_unlogged_purge(database: &str, path: &str) {
    let name = identifier(ncps_edge_wire::channel::name(ncps_edge_wire::locks::DEFAULT_PREFIX));
    let message = ncps_edge_wire::channel::Message::Purge(vec![&format!("/{}.narinfo", hash_of(path))]).encode();
    let (db, conn) = tokio_postgres::connect(database, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    db.execute("SELECT pg_notify($1, $2)", &[&name, &message]).await.unwrap();
}

/// The channel of nodes with `flags` loses every purge it kept, and its
/// numbers start again (ids reused on PostgreSQL and MySQL; on Redis the
/// log's counter starts from the time).
async fn lose_the_purges(backend: &str, flags: &[String]) {
    let flag = |name: &str| flags.iter().find_map(|f| f.strip_prefix(name)).unwrap().to_owned();
    match backend {
        "redis" => {
            let prefix = flag("--cache-lock-redis-key-prefix=");
            let keys = ncps_edge_wire::purge_log::keys(&ncps_edge_wire::channel::name(&prefix));
            let redis = redis::Client::open(format!("redis://{}", redis_addr())).unwrap();
            let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
            let lost: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await.unwrap();
            assert_eq!(lost, 2, "the purge log and its counter");
        }
        "postgres" => {
            let (db, conn) =
                tokio_postgres::connect(&flag("--cache-database-url="), tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            db.batch_execute("TRUNCATE ncps_edge_purges RESTART IDENTITY").await.unwrap();
        }
        _ => {
            let url = flag("--cache-database-url=");
            let mut db = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).unwrap()).await.unwrap();
            db.query_drop("TRUNCATE TABLE ncps_edge_purges").await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_node_whose_purge_log_was_lost_while_it_reconnected_empties_its_tier() {
    a_purge_sent_while_the_listener_reconnects_reaches_the_node("redis", Meanwhile::PurgesLost).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_node_whose_purge_table_went_back_while_it_reconnected_empties_its_tier() {
    a_purge_sent_while_the_listener_reconnects_reaches_the_node("postgres", Meanwhile::PurgesLost).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_node_that_heard_a_purge_without_a_row_empties_its_tier_when_it_reconnects() {
    a_purge_sent_while_the_listener_reconnects_reaches_the_node("postgres", Meanwhile::AnOlderNodePurged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mysql_node_whose_purge_table_went_back_while_it_reconnected_empties_its_tier() {
    a_purge_sent_while_the_listener_reconnects_reaches_the_node("mysql", Meanwhile::PurgesLost).await;
}

/// Two MySQL nodes, B's connections to the server through a proxy; B's
/// tier keeps the narinfos of `leaf` and `mid`. The proxy holds B's
/// traffic for longer than [`HEARD_WITHIN`] (B's polls time out; it stops
/// hearing the channel) while A deletes `leaf`, then forwards again. B's
/// next poll reads on from where the last one that succeeded stopped, so
/// B forgets `leaf` and keeps the rest of its tier: `mid` is answered from
/// memory at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mysql_node_that_could_not_poll_for_a_while_misses_no_purge_and_keeps_its_tier() {
    if !memory_tier_on() {
        return; // Nothing kept: every answer is the handler's.
    }
    let (fx, purging) = (fixture(), Purging::start().await);
    let database = fresh_mysql().await;
    let proxy = StallProxy::start(&host_port(&database)).await;
    let locks = "--cache-lock-backend=mysql".to_owned();
    let a = purging.node(&[locks.clone(), format!("--cache-database-url={database}")]).await;
    let b = purging.node(&[locks, database_through(&database, &proxy)]).await;
    let c = reqwest::Client::new();
    tokio::time::sleep(HEARD_WITHIN).await;
    kept_at(&c, &b, &[&fx.leaf, &fx.mid]).await;

    proxy.stall();
    tokio::time::sleep(HEARD_WITHIN + Duration::from_secs(1)).await;
    delete_at(&c, &a, &fx.leaf).await;
    proxy.resume();
    // B's polls time out after 2 s and start again 0.75 s later: by then
    // it has polled and heard the channel again.
    tokio::time::sleep(HEARD_WITHIN + Duration::from_secs(2)).await;
    assert!(
        from_memory(&c, &b, &narinfo_at(&b, &fx.mid)).await,
        "B emptied its tier though its poll read every purge it had missed"
    );
    assert!(
        !from_memory(&c, &b, &narinfo_at(&b, &fx.leaf)).await,
        "B served from memory a narinfo deleted while it could not poll"
    );
}

/// Two MySQL nodes; B has read two purges and its tier keeps the narinfo
/// of `leaf`. The purge table goes back (emptied and its ids started again,
/// as after a restore or a failover to a replica that lagged), and A
/// deletes `leaf`: that purge's id is one B has read already, but B sees
/// the table went back and empties its tier within [`HEARD_WITHIN`].
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mysql_node_whose_purge_table_went_back_empties_its_tier() {
    if !memory_tier_on() {
        return; // Nothing kept: every answer is the handler's.
    }
    let (fx, purging) = (fixture(), Purging::start().await);
    let database = fresh_mysql().await;
    let backends = ["--cache-lock-backend=mysql".to_owned(), format!("--cache-database-url={database}")];
    let (a, b) = (purging.node(&backends).await, purging.node(&backends).await);
    let c = reqwest::Client::new();
    tokio::time::sleep(HEARD_WITHIN).await;
    for path in [&fx.mid, &fx.top] {
        assert_eq!(c.get(narinfo_at(&a, path)).send().await.unwrap().status(), 200);
        delete_at(&c, &a, path).await;
    }
    // B has read both purges (it polls every 250 ms); an answer is not kept
    // when a purge arrives while it is made.
    tokio::time::sleep(Duration::from_secs(1)).await;
    kept_at(&c, &b, &[&fx.leaf]).await;

    let mut db = mysql_async::Conn::new(mysql_async::Opts::from_url(&database).unwrap()).await.unwrap();
    db.query_drop("TRUNCATE TABLE ncps_edge_purges").await.unwrap();
    delete_at(&c, &a, &fx.leaf).await;
    let took = gone_from(&c, &narinfo_at(&b, &fx.leaf)).await;
    assert!(took <= HEARD_WITHIN, "B served for {took:?} a narinfo deleted after its purge table went back");
}

/// Two nodes on three Redis masters; B's tier keeps the narinfo of
/// `leaf`. One master goes down: B's listener on it fails, but those on the
/// other two still hear, so B keeps its tier (the narinfo is still answered
/// from memory past [`HEARD_WITHIN`]), and a DELETE on A still reaches B
/// within [`HEARD_WITHIN`].
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_keeps_its_tier_while_one_of_its_redis_masters_is_down() {
    if !memory_tier_on() {
        return; // Nothing kept: every answer is the handler's.
    }
    let (fx, purging) = (fixture(), Purging::start().await);
    let mut masters = [PrivateRedis::start(), PrivateRedis::start(), PrivateRedis::start()];
    let backends = [
        format!("--cache-database-url={}", fresh_postgres().await),
        format!("--cache-redis-addrs={}", masters.iter().map(PrivateRedis::addr).collect::<Vec<_>>().join(",")),
    ];
    let (a, b) = (purging.node(&backends).await, purging.node(&backends).await);
    let c = reqwest::Client::new();
    tokio::time::sleep(HEARD_WITHIN).await;
    kept_at(&c, &b, &[&fx.leaf]).await;

    masters[0].kill();
    tokio::time::sleep(HEARD_WITHIN + Duration::from_secs(1)).await;
    assert!(
        from_memory(&c, &b, &narinfo_at(&b, &fx.leaf)).await,
        "B stopped answering from its tier when one of three masters went down"
    );
    delete_at(&c, &a, &fx.leaf).await;
    let took = gone_from(&c, &narinfo_at(&b, &fx.leaf)).await;
    assert!(took <= HEARD_WITHIN, "B served a deleted narinfo for {took:?} with one master down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_disk_tier_keeps_only_whole_nars_and_serves_while_s3_stalls() {
    let fx = fixture();
    let cache = fx.cache("none");
    let up = FakeUpstream::start(cache.clone()).await;
    let bucket = fresh_bucket().await;
    let proxy = StallProxy::start(&host_port(&bucket.endpoint)).await;
    let routed = bucket.through(&proxy);
    let dir = tempfile::tempdir().unwrap();
    let mut flags = upstream_flags(&up.url(), &fx.public_key);
    flags.extend(routed.flags());
    flags.extend([
        "--cache-hostname=disk".to_string(),
        format!("--cache-storage-local={}", dir.path().join("data").display()),
        "--cache-backend-timeout=1s".into(),
        // Only the disk tier: every NAR read goes through it.
        "--edge-cache-memory=0".into(),
        format!("--wasm-cache-dir={}", std::env::temp_dir().join("ncps-edge-test-wasm-cache").display()),
    ]);
    let tier = dir.path().join("data/edge-cache/nar");
    let big = nar_url(&cache, &fx.big);
    let original = std::fs::read(nar_file(&cache, &fx.big)).unwrap();
    let mut node = NodeProcess::spawn(&flags, &dir.path().join("node.log"));
    let c = reqwest::Client::new();
    let url = |n: &NodeProcess| format!("{}{big}", n.url);
    // The miss stores the NAR in S3 (the disk tier fills on reads from S3).
    assert_eq!(c.get(url(&node)).send().await.unwrap().bytes().await.unwrap(), original);
    // A read from S3 cut half way by a crash: nothing is kept.
    let mut resp = c.get(url(&node)).send().await.unwrap();
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty() && first.len() < original.len());
    node.kill();
    let listed = std::fs::read_dir(&tier).map(|d| d.count()).unwrap_or(0);
    assert_eq!(listed, 0, "a partial NAR is in the disk tier");
    node.restart();
    assert!(!dir.path().join("data/edge-cache/tmp").read_dir().unwrap().any(|_| true), "leftovers kept");
    // A whole read is kept, checked, and then answers with S3 stalled.
    assert_eq!(c.get(url(&node)).send().await.unwrap().bytes().await.unwrap(), original);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&tier).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the disk tier did not keep a whole NAR");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kept: Vec<_> = std::fs::read_dir(&tier).unwrap().flatten().collect();
    assert_eq!(std::fs::read(kept[0].path()).unwrap(), original);
    // With S3 stalled, a NAR the node cannot read is served from upstream:
    // the upstream count shows the hit came from the local disk.
    proxy.stall();
    let resp = c.get(url(&node)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), original);
    proxy.resume();
    assert_eq!(up.hits(&big), 1, "the hit did not come from the disk tier");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiter_on_the_same_node_follows_the_download() {
    use std::sync::atomic::Ordering;
    let fx = fixture();
    let cache = fx.cache("none");
    // About 5 s for the 30 MB path.
    let s = Scenario::setup().start().await;
    let (up, node, c) = (&s.up, &s.node, &s.c);
    up.faults().nar_chunk_delay_ms.store(10, Ordering::SeqCst);
    let narinfo = format!("{}/{}.narinfo", node.url(), hash_of(&fx.big));
    assert_eq!(c.get(&narinfo).send().await.unwrap().status(), 200);
    let nar = nar_url(&cache, &fx.big);
    let url = format!("{}{nar}", node.url());
    let original = std::fs::read(nar_file(&cache, &fx.big)).unwrap();
    let downloader = tokio::spawn(fetch(c.clone(), url.clone()));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let waiter = tokio::spawn(fetch(c.clone(), url.clone()));
    let (first_body, _, first_end) = downloader.await.unwrap();
    let (second_body, second_first_byte, _) = waiter.await.unwrap();
    assert!(first_body == original && second_body == original, "a body differs");
    // The download takes about 5 s; the waiter joined after 1 s.
    let ahead = first_end.saturating_duration_since(second_first_byte);
    assert!(ahead > Duration::from_secs(1), "the waiter's first byte came only {ahead:?} before the download ended");
    assert_eq!(up.hits(&nar), 1, "one upstream fetch");
}

/// Two nodes on `backend` sharing one folder, each with its address for
/// the other: a client of B waiting for a NAR A downloads follows A's
/// download, with one upstream fetch.
async fn a_waiter_on_another_node_follows_the_download(backend: &str) {
    use std::sync::atomic::Ordering;
    let fx = fixture();
    let cache = fx.cache("none");
    let up = FakeUpstream::start(cache.clone()).await;
    up.faults().nar_chunk_delay_ms.store(10, Ordering::SeqCst);
    let shared = tempfile::tempdir().unwrap();
    let mut flags = upstream_flags(&up.url(), &fx.public_key);
    flags.extend(backend_flags(backend).await);
    flags.push(format!("--cache-storage-local={}", shared.path().display()));
    let node = |flags: &[String]| {
        let port = ncps_edge_test_support::free_port();
        let mut flags = flags.to_vec();
        flags.push(format!("--server-addr=127.0.0.1:{port}"));
        flags.push(format!("--cache-node-url=http://127.0.0.1:{port}"));
        flags
    };
    let a = start_node(&node(&flags)).await;
    let b = start_node(&node(&flags)).await;
    tokio::time::sleep(HEARD_WITHIN).await;
    let c = reqwest::Client::new();
    for n in [&a, &b] {
        assert_eq!(c.get(format!("{}/{}.narinfo", n.url(), hash_of(&fx.big))).send().await.unwrap().status(), 200);
    }
    let nar = nar_url(&cache, &fx.big);
    let original = std::fs::read(nar_file(&cache, &fx.big)).unwrap();
    let downloader = tokio::spawn(fetch(c.clone(), format!("{}{nar}", a.url())));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let waiter = tokio::spawn(fetch(c.clone(), format!("{}{nar}", b.url())));
    let (first_body, _, first_end) = downloader.await.unwrap();
    let (second_body, second_first_byte, _) = waiter.await.unwrap();
    assert!(first_body == original && second_body == original, "{backend}: a body differs");
    let ahead = first_end.saturating_duration_since(second_first_byte);
    assert!(ahead > Duration::from_secs(1), "{backend}: B's client got its first byte {ahead:?} before the end");
    assert_eq!(up.hits(&nar), 1, "{backend}: one upstream fetch");
    // Only the cache's nodes may follow.
    let outsider = c.get(format!("{}/_ncps-edge/follow{nar}", a.url())).bearer_auth("guess").send().await.unwrap();
    assert_eq!(outsider.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiter_on_another_node_follows_over_redis() {
    a_waiter_on_another_node_follows_the_download("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiter_on_another_node_follows_over_postgres() {
    a_waiter_on_another_node_follows_the_download("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiter_on_another_node_follows_over_mysql() {
    a_waiter_on_another_node_follows_the_download("mysql").await;
}
