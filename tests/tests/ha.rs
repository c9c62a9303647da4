//! Several nodes sharing one database, one lock service and one storage
//! (an S3 bucket, or a shared folder) behave as one cache: one upstream download however many clients
//! ask, on every lock backend; the real nix client through the cluster; a
//! lock server that dies and comes back.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ncps_edge_test_support::{fresh_bucket, fresh_mysql, fresh_postgres, redis_addr, PrivateRedis};
use ncps_edge_tests::fixture::{fixture, hash_of, nar_file, nar_url};
use ncps_edge_tests::nix::NixEnv;
use ncps_edge_tests::node::{start_node, upstream_flags, TestNode};
use ncps_edge_tests::process::NodeProcess;
use ncps_edge_tests::upstream::FakeUpstream;
use sha2::{Digest, Sha256};

/// Flags of one cluster: shared database, lock backend and storage folder.
async fn cluster_flags(backend: &str, storage: &std::path::Path, upstream: &str, key: &str) -> Vec<String> {
    let (db, locks) = match backend {
        "redis" => (fresh_postgres().await, vec![format!("--cache-redis-addrs={}", redis_addr())]),
        "postgres" => (fresh_postgres().await, vec!["--cache-lock-backend=postgres".to_string()]),
        "mysql" => (fresh_mysql().await, vec!["--cache-lock-backend=mysql".to_string()]),
        other => panic!("no backend {other}"),
    };
    let mut flags = upstream_flags(upstream, key);
    flags.push(format!("--cache-database-url={db}"));
    flags.push(format!("--cache-storage-local={}", storage.display()));
    flags.push(format!("--cache-lock-redis-key-prefix=test:{}:", db.rsplit('/').next().unwrap()));
    flags.extend(locks);
    flags
}

async fn start_cluster(n: usize, flags: &[String]) -> Vec<TestNode> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(start_node(flags).await);
    }
    nodes
}

/// Three `ncps-edge` processes sharing the database, the lock service and
/// an S3 bucket; 60 clients spread over them ask for one uncached NAR.
async fn one_download_for_sixty_clients(backend: &str) {
    let fx = fixture();
    let cache = fx.cache("zstd");
    let up = FakeUpstream::start(cache.clone()).await;
    up.faults().nar_chunk_delay_ms.store(1, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let mut flags = cluster_flags(backend, &dir.path().join("data"), &up.url(), &fx.public_key).await;
    flags.extend(fresh_bucket().await.flags());
    flags.push("--cache-hostname=cluster".into());
    flags.push(format!("--wasm-cache-dir={}", std::env::temp_dir().join("ncps-edge-test-wasm-cache").display()));
    let nodes: Vec<NodeProcess> =
        (0..3).map(|i| NodeProcess::spawn(&flags, &dir.path().join(format!("node{i}.log")))).collect();
    let c = reqwest::Client::new();
    let mut keys = Vec::new();
    for node in &nodes {
        keys.push(c.get(format!("{}/pubkey", node.url)).send().await.unwrap().text().await.unwrap());
    }
    assert!(keys.windows(2).all(|w| w[0] == w[1]), "{backend}: nodes sign with different keys: {keys:?}");
    let nar = nar_url(&cache, &fx.big);
    let want = format!("{:x}", Sha256::digest(std::fs::read(nar_file(&cache, &fx.big)).unwrap()));
    let clients: Vec<_> = (0..60)
        .map(|i| {
            let (c, base) = (c.clone(), nodes[i % nodes.len()].url.clone());
            let (narinfo, nar) = (format!("{base}/{}.narinfo", hash_of(&fx.big)), format!("{base}{nar}"));
            tokio::spawn(async move {
                let info = c.get(&narinfo).send().await.unwrap().status().as_u16();
                let resp = c.get(&nar).send().await.unwrap();
                let status = resp.status().as_u16();
                let body = resp.bytes().await.map(|b| format!("{:x}", Sha256::digest(&b))).unwrap_or_default();
                (info, status, body)
            })
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let (info, status, body) = client.await.unwrap();
        assert_eq!(info, 200, "{backend}: client {i} narinfo");
        assert_eq!(status, 200, "{backend}: client {i} NAR");
        assert_eq!(body, want, "{backend}: client {i} got different bytes");
    }
    assert_eq!(up.hits(&nar), 1, "{backend}: exactly one upstream download for 60 clients on 3 processes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_download_on_a_redis_cluster() {
    one_download_for_sixty_clients("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_download_on_a_postgres_cluster() {
    one_download_for_sixty_clients("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_download_on_a_mysql_cluster() {
    one_download_for_sixty_clients("mysql").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_is_refused_with_a_distributed_lock_backend() {
    let args = vec![
        "ncps-edge".to_string(),
        "serve".into(),
        "--cache-hostname=h".into(),
        format!("--cache-redis-addrs={}", redis_addr()),
    ];
    let ncps_edge::cli::Command::Serve(args) = ncps_edge::cli::parse_cli(args).unwrap().cli.command else {
        panic!("not serve")
    };
    let err = ncps_edge::config::Config::from_args(*args, vec![]).expect_err("accepted SQLite with Redis locks");
    assert!(err.to_string().contains("SQLite is not supported in HA mode"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nix_substitutes_through_a_three_node_cluster() {
    let fx = fixture();
    let cache = fx.cache("xz");
    let up = FakeUpstream::start(cache.clone()).await;
    let storage = tempfile::tempdir().unwrap();
    let mut flags = cluster_flags("redis", storage.path(), &up.url(), &fx.public_key).await;
    flags.extend(fresh_bucket().await.flags());
    let nodes = start_cluster(3, &flags).await;
    for node in &nodes {
        let env = NixEnv::new();
        let store = env.path("store").display().to_string();
        let (url, key) = (node.url(), node.public_key());
        let out = tokio::task::block_in_place(|| {
            env.try_run(
                "nix",
                &["copy", "--from", &url, "--to", &store, "--option", "trusted-public-keys", &key, &fx.top],
            )
        });
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(env.dump_hash(&env.path("store"), &fx.top), fx.env.dump_hash(&fx.store, &fx.top));
    }
    for p in [&fx.top, &fx.mid, &fx.leaf] {
        assert_eq!(up.hits(&nar_url(&cache, p)), 1, "{p}: fetched upstream once for the whole cluster");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lock_server_outage_breaker_degraded_mode_and_recovery() {
    let fx = fixture();
    let cache = fx.cache("none");
    let up = FakeUpstream::start(cache.clone()).await;
    let mut redis = PrivateRedis::start();
    let storage = tempfile::tempdir().unwrap();
    let db = fresh_postgres().await;
    let base = |extra: &str| {
        let mut f = upstream_flags(&up.url(), &fx.public_key);
        f.push(format!("--cache-database-url={db}"));
        f.push(format!("--cache-storage-local={}", storage.path().display()));
        f.push(format!("--cache-redis-addrs={}", redis.addr()));
        f.push("--cache-lock-retry-initial-delay=10ms".into());
        if !extra.is_empty() {
            f.push(extra.into());
        }
        f
    };
    let strict = start_node(&base("")).await;
    let degraded = start_node(&base("--cache-lock-allow-degraded-mode")).await;
    let c = reqwest::Client::new();
    let get = |node: &TestNode, p: &str| format!("{}/{}.narinfo", node.url(), hash_of(p));
    assert_eq!(c.get(get(&strict, &fx.leaf)).send().await.unwrap().status(), 200);

    redis.kill();
    // Hits need no lock: still served.
    assert_eq!(c.get(get(&strict, &fx.leaf)).send().await.unwrap().status(), 200);
    // Misses: the strict node fails fast, the degraded one serves with local locks.
    for _ in 0..4 {
        let resp = tokio::time::timeout(Duration::from_secs(20), c.get(get(&strict, &fx.mid)).send())
            .await
            .expect("hung")
            .unwrap();
        assert_eq!(resp.status(), 503);
    }
    let resp = tokio::time::timeout(Duration::from_secs(20), c.get(get(&degraded, &fx.top)).send())
        .await
        .expect("hung")
        .unwrap();
    assert_eq!(resp.status(), 200, "degraded mode serves through local locks");

    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = c.get(get(&strict, &fx.mid)).send().await.unwrap().status();
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "strict node never recovered after Redis came back");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_racing_for_the_lru_lock_make_one_pass() {
    let fx = fixture();
    let cache = fx.cache("none");
    let up = FakeUpstream::start(cache.clone()).await;
    let storage = tempfile::tempdir().unwrap();
    let mut flags = cluster_flags("redis", storage.path(), &up.url(), &fx.public_key).await;
    flags.push("--cache-max-size=1".into());
    let nodes = start_cluster(2, &flags).await;
    let c = reqwest::Client::new();
    for p in [&fx.leaf, &fx.mid] {
        assert_eq!(c.get(format!("{}/{}.narinfo", nodes[0].url(), hash_of(p))).send().await.unwrap().status(), 200);
        let nar = c.get(format!("{}{}", nodes[0].url(), nar_url(&cache, p))).send().await.unwrap();
        assert_eq!(nar.status(), 200);
        nar.bytes().await.unwrap();
    }
    // Both nodes start a pass at the same moment: the LRU lock lets one run.
    let (a, b) = tokio::join!(nodes[0].node.server().run_lru(), nodes[1].node.server().run_lru());
    let (a, b) = (a.unwrap(), b.unwrap());
    let evicted = a.evicted + b.evicted;
    assert_eq!(evicted, 2, "both NARs evicted once, by whichever passes ran: {a:?} {b:?}");
    // While node 0 holds the LRU lock, node 1 skips.
    // (The passes' leases are released asynchronously: poll for the lock.)
    let locks = &nodes[0].node.services().locks;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let _held = loop {
        let mode = ncps_edge_host_services::locks::Mode::Exclusive;
        if let Some(l) = locks.try_acquire("lru", mode, Duration::from_secs(60)).await.unwrap() {
            break l;
        }
        assert!(std::time::Instant::now() < deadline, "LRU lock never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let skipped = nodes[1].node.server().run_lru().await.unwrap();
    assert!(!skipped.ran, "node 1 ran while node 0 held the LRU lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redlock_needs_a_quorum_of_independent_masters() {
    use ncps_edge_host_services::locks::redis::{RedisLocks, RedisOptions};
    use ncps_edge_host_services::locks::{LockBackend, Mode};
    let mut masters = [PrivateRedis::start(), PrivateRedis::start(), PrivateRedis::start()];
    let opts = RedisOptions { addrs: masters.iter().map(|m| m.addr()).collect(), ..Default::default() };
    let (a, b) = (RedisLocks::connect(&opts).await.unwrap(), RedisLocks::connect(&opts).await.unwrap());
    let ttl = Duration::from_secs(30);
    let held = a.try_acquire("q:k", Mode::Exclusive, ttl).await.unwrap().expect("all masters up");
    assert!(b.try_acquire("q:k", Mode::Exclusive, ttl).await.unwrap().is_none(), "held on every master");
    masters[0].kill();
    // Two of three masters still agree.
    assert!(b.try_acquire("q:k", Mode::Exclusive, ttl).await.unwrap().is_none(), "quorum still sees the holder");
    assert!(held.extend(ttl).await.is_ok(), "a lease survives one master going down");
    let other = b.try_acquire("q:other", Mode::Exclusive, ttl).await.unwrap();
    assert!(other.is_some(), "new leases need only a quorum");
    masters[1].kill();
    // One of three: no quorum, and that is an outage, not contention.
    let err = b.try_acquire("q:third", Mode::Exclusive, ttl).await.err().expect("acquired without a quorum");
    assert!(matches!(err, ncps_edge_host_services::Error::Unavailable(_)), "{err:?}");
    assert!(held.extend(ttl).await.is_err(), "a lease without a quorum is lost");
    assert!(!held.is_held());
}

/// A throwaway CA and a server certificate for 127.0.0.1, made with openssl.
fn tls_files(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=ncps-edge test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_over_tls_with_a_password_that_is_not_url_safe() {
    let fx = fixture();
    let up = FakeUpstream::start(fx.cache("none")).await;
    let dir = tempfile::tempdir().unwrap();
    tls_files(dir.path());
    let file = |name: &str| dir.path().join(name).display().to_string();
    let password = "p@ss:w/rd#1?";
    let path = |name: &str| dir.path().join(name);
    let redis = PrivateRedis::start_tls(
        &path("server.crt"),
        &path("server.key"),
        &path("ca.crt"),
        &["--requirepass", password],
    );
    let db = fresh_postgres().await;
    let node_flags = |extra: &[String]| {
        let mut f = upstream_flags(&up.url(), &fx.public_key);
        f.extend([
            format!("--cache-database-url={db}"),
            format!("--cache-redis-addrs={}", redis.addr()),
            "--cache-redis-use-tls".into(),
            format!("--cache-redis-password={password}"),
            "--cache-backend-timeout=500ms".into(),
        ]);
        f.extend_from_slice(extra);
        f
    };
    let start = |flags: Vec<String>| async move {
        let storage = format!("--cache-storage-local={}", file("refused"));
        let parsed = ncps_edge::cli::parse_cli(
            ["ncps-edge", "serve", "--cache-hostname=h", "--server-addr=127.0.0.1:0", storage.as_str()]
                .iter()
                .map(|s| s.to_string())
                .chain(flags)
                .collect(),
        )
        .unwrap();
        let ncps_edge::cli::Command::Serve(args) = parsed.cli.command else { panic!() };
        let config = ncps_edge::config::Config::from_args(*args, vec![]).unwrap();
        ncps_edge::node::start(&config).await
    };
    // The server's CA is not a public one: without it the node cannot connect.
    assert!(start(node_flags(&[])).await.is_err(), "connected to a TLS Redis without trusting its CA");
    let node = start_node(&node_flags(&[format!("--cache-redis-ca-cert={}", file("ca.crt"))])).await;
    let c = reqwest::Client::new();
    // A miss needs the lock (no degraded mode): it works over TLS with the password.
    let resp = c.get(format!("{}/{}.narinfo", node.url(), hash_of(&fx.leaf))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let wrong =
        node_flags(&[format!("--cache-redis-ca-cert={}", file("ca.crt")), "--cache-redis-password=wrong".into()]);
    assert!(start(wrong).await.is_err(), "connected with a wrong password");
}
