//! Hostile paths and hostile upstreams: nothing outside the store is ever
//! served, and bad upstream narinfos are not adopted.

use ncps_edge_tests::fixture::{fixture, hash_of};
use ncps_edge_tests::node::{start_node, upstream_flags};
use ncps_edge_tests::upstream::FakeUpstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_and_traversal_paths_are_refused() {
    let node = start_node(&[]).await;
    std::fs::write(node.data.path().join("secret"), "root:x:0:0").unwrap();
    std::fs::write(node.data.path().join("store/secret.nar"), "root:x:0:0").unwrap();
    let c = reqwest::Client::new();
    let valid52 = "0c5gsym8rwxz5ynj76j0gh1q9h9wv5pxfwy8k89plkrx0f8n3sah";
    for path in [
        "/nar/../../secret".to_string(),
        "/nar/../secret.nar".into(),
        "/nar/..%2f..%2fsecret".into(),
        "/%2e%2e/%2e%2e/etc/passwd".into(),
        "/../../../../etc/passwd".into(),
        "/nar/secret.nar".into(),
        format!("/nar/{valid52}.nar.exe"),
        format!("/nar/{valid52}.nar.xz/../../../secret"),
        "/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo".into(),
        "/0c5gsym8rwxz5ynj76j0gh1q9h9wv5p.narinfo.bak".into(),
        "/short.narinfo".into(),
        "//etc/passwd".into(),
    ] {
        let resp = c.get(format!("{}{path}", node.url())).send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert!(status == 400 || status == 404, "{path}: {status}");
        assert!(!body.contains("root:"), "{path} leaked a file");
    }
}

async fn node_for_cache(
    dir: &std::path::Path,
    key: &str,
    extra: &[String],
) -> (FakeUpstream, ncps_edge_tests::node::TestNode) {
    let up = FakeUpstream::start(dir.to_path_buf()).await;
    let mut flags = upstream_flags(&up.url(), key);
    flags.extend_from_slice(extra);
    let node = start_node(&flags).await;
    (up, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_upstream_narinfos_are_not_adopted() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(fx.cache("none").join(format!("{}.narinfo", hash_of(&fx.leaf)))).unwrap();
    // A narinfo served under another path's hash (cache poisoning attempt).
    std::fs::write(dir.path().join(format!("{}.narinfo", hash_of(&fx.mid))), &good).unwrap();
    // A narinfo whose content was changed after signing.
    let tampered = good.replace("NarSize: ", "NarSize: 1");
    std::fs::write(dir.path().join(format!("{}.narinfo", hash_of(&fx.leaf))), tampered).unwrap();
    // An oversized and a malformed narinfo.
    let big = format!("{good}{}", "X-Padding: y\n".repeat(200_000));
    std::fs::write(dir.path().join(format!("{}.narinfo", hash_of(&fx.top))), big).unwrap();
    std::fs::write(dir.path().join(format!("{}.narinfo", hash_of(&fx.big))), "this is not a narinfo").unwrap();
    // A refused narinfo is remembered for a few seconds (at most the
    // negative TTL); off here, so the control below is asked at once.
    let (up, node) = node_for_cache(dir.path(), &fx.public_key, &["--cache-negative-ttl=0".into()]).await;
    let c = reqwest::Client::new();
    for p in [&fx.mid, &fx.leaf, &fx.top, &fx.big] {
        let resp = c.get(format!("{}/{}.narinfo", node.url(), hash_of(p))).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{p} adopted from a hostile upstream");
    }
    assert!(up.hits_with_prefix("/") >= 4);
    // Control: the untampered narinfo is accepted.
    std::fs::write(dir.path().join(format!("{}.narinfo", hash_of(&fx.leaf))), &good).unwrap();
    let resp = c.get(format!("{}/{}.narinfo", node.url(), hash_of(&fx.leaf))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsigned_narinfos_need_an_explicit_choice() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(fx.cache("none").join(format!("{}.narinfo", hash_of(&fx.leaf)))).unwrap();
    let unsigned: String = good.lines().filter(|l| !l.starts_with("Sig:")).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.path().join(format!("{}.narinfo", hash_of(&fx.leaf))), unsigned).unwrap();
    let c = reqwest::Client::new();
    // With a trusted key configured, an unsigned narinfo is refused.
    let (_up, node) = node_for_cache(dir.path(), &fx.public_key, &[]).await;
    let url = |n: &ncps_edge_tests::node::TestNode| format!("{}/{}.narinfo", n.url(), hash_of(&fx.leaf));
    assert_eq!(c.get(url(&node)).send().await.unwrap().status(), 404);
    // Only --cache-upstream-allow-unsigned (and no keys) accepts it.
    let up = FakeUpstream::start(dir.path().to_path_buf()).await;
    let open = ncps_edge_tests::node::start_node(&[
        format!("--cache-upstream-url={}", up.url()),
        "--cache-upstream-allow-unsigned".into(),
    ])
    .await;
    let resp = c.get(url(&open)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let sigs: Vec<&str> = body.lines().filter(|l| l.starts_with("Sig:")).collect();
    assert!(sigs.len() == 1 && sigs[0].starts_with("Sig: test-cache-1:"), "only our signature: {body}");
}
