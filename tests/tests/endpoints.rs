//! The HTTP surface: informational endpoints, narinfo and NAR hits and
//! misses, ranges, HEAD, verbs and access control.

use ncps_edge_tests::fixture::{fixture, hash_of, nar_file, nar_url};
use ncps_edge_tests::node::start_node;
use ncps_edge_tests::scenario::Scenario;
use ncps_edge_tests::upstream::FakeUpstream;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn informational_endpoints() {
    let node = start_node(&[]).await;
    let c = reqwest::Client::new();
    let info = c.get(format!("{}/nix-cache-info", node.url())).send().await.unwrap();
    assert_eq!(info.status(), 200);
    let info = info.text().await.unwrap();
    assert!(
        info.contains("StoreDir: /nix/store\n")
            && info.contains("WantMassQuery: 1\n")
            && info.contains("Priority: 10\n"),
        "{info}"
    );
    let pubkey = c.get(format!("{}/pubkey", node.url())).send().await.unwrap().text().await.unwrap();
    assert_eq!(pubkey.trim(), node.public_key());
    assert!(node.public_key().starts_with("test-cache-1:"));
    let root: String = c.get(format!("{}/", node.url())).send().await.unwrap().text().await.unwrap();
    assert!(root.contains("\"hostname\":\"test-cache\"") && root.contains(&node.public_key()), "{root}");
    assert_eq!(c.get(format!("{}/healthz", node.url())).send().await.unwrap().status(), 200);
    assert_eq!(c.get(format!("{}/no/such/thing", node.url())).send().await.unwrap().status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn narinfo_miss_is_rewritten_signed_and_then_hit() {
    let s = Scenario::setup().cache("zstd").start().await;
    let (fx, c) = (s.fx, &s.c);
    let url = s.narinfo(&fx.top);
    let first = s.get(&url).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["content-type"], "text/x-nix-narinfo");
    assert_eq!(first.headers()["x-cache"], "MISS");
    let body = first.text().await.unwrap();
    assert!(body.contains(&format!("URL: {}\n", &s.nar_path(&fx.top)[1..])), "{body}");
    assert!(body.contains("Compression: zstd\n"));
    let sigs: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("Sig: ")).collect();
    assert_eq!(sigs.len(), 2, "upstream signature kept, ours added: {sigs:?}");
    assert!(sigs.iter().any(|s| s.starts_with("fixture-1:")) && sigs.iter().any(|s| s.starts_with("test-cache-1:")));
    let second = c.get(&url).send().await.unwrap();
    assert_eq!(second.headers()["x-cache"], "HIT");
    assert_eq!(second.text().await.unwrap(), body);
    let head = c.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], body.len().to_string().as_str());
    assert_eq!(s.up.hits(&format!("/{}.narinfo", hash_of(&fx.top))), 1, "one upstream lookup");
    assert_eq!(s.status(&s.url(&format!("/{}.narinfo", "0".repeat(32)))).await, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nar_hit_supports_head_and_ranges() {
    let s = Scenario::setup().start().await;
    let (up, c) = (&s.up, &s.c);
    let (path, url, original) = (s.nar_path(&s.fx.mid), s.nar(&s.fx.mid), s.nar_bytes(&s.fx.mid));
    // HEAD answers as GET would, asking the upstream with HEAD: nothing is downloaded.
    let head_miss = c.head(&url).send().await.unwrap();
    assert_eq!(head_miss.status(), 200);
    assert_eq!(head_miss.headers()["x-cache"], "MISS");
    assert_eq!(head_miss.headers()["content-length"], original.len().to_string().as_str());
    assert_eq!((up.heads(&path), up.hits(&path)), (1, 0), "HEAD downloaded the NAR");
    let absent = s.url(&format!("/nar/{}.nar", "1".repeat(52)));
    assert_eq!(c.head(&absent).send().await.unwrap().status(), 404);
    let miss = c.get(&url).send().await.unwrap();
    assert_eq!(miss.status(), 200);
    assert_eq!(miss.headers()["x-cache"], "MISS");
    assert_eq!(miss.headers()["content-type"], "application/x-nix-nar");
    assert_eq!(miss.bytes().await.unwrap(), original);
    let hit = c.get(&url).send().await.unwrap();
    assert_eq!(hit.headers()["x-cache"], "HIT");
    assert_eq!(hit.headers()["content-length"], original.len().to_string().as_str());
    assert_eq!(hit.bytes().await.unwrap(), original);
    let head = c.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], original.len().to_string().as_str());
    let part = c.get(&url).header("range", "bytes=10-19").send().await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], format!("bytes 10-19/{}", original.len()).as_str());
    assert_eq!(part.bytes().await.unwrap(), original[10..20]);
    let beyond = c.get(&url).header("range", format!("bytes={}-", original.len())).send().await.unwrap();
    assert_eq!(beyond.status(), 416);
    assert_eq!(up.hits(&path), 1, "one upstream download");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_and_delete_need_their_flags() {
    let fx = fixture();
    let node = start_node(&[]).await;
    let c = reqwest::Client::new();
    let narinfo = std::fs::read(fx.cache("none").join(format!("{}.narinfo", hash_of(&fx.leaf)))).unwrap();
    let nar_path = nar_url(&fx.cache("none"), &fx.leaf);
    let nar = std::fs::read(nar_file(&fx.cache("none"), &fx.leaf)).unwrap();
    let url = format!("{}/{}.narinfo", node.url(), hash_of(&fx.leaf));
    assert_eq!(c.put(&url).body(narinfo.clone()).send().await.unwrap().status(), 405);
    assert_eq!(c.delete(&url).send().await.unwrap().status(), 405);

    let node = start_node(&[
        "--cache-allow-put-verb".into(),
        "--cache-allow-delete-verb".into(),
        "--cache-allow-anonymous-writes".into(),
    ])
    .await;
    let url = format!("{}/{}.narinfo", node.url(), hash_of(&fx.leaf));
    assert_eq!(c.put(&url).body(narinfo.clone()).send().await.unwrap().status(), 400, "NAR not uploaded yet");
    assert_eq!(c.get(&url).send().await.unwrap().status(), 404, "nothing recorded");
    assert_eq!(c.put(format!("{}{nar_path}", node.url())).body(nar).send().await.unwrap().status(), 204);
    assert_eq!(c.put(&url).body(narinfo).send().await.unwrap().status(), 204);
    let stored = c.get(&url).send().await.unwrap().text().await.unwrap();
    assert!(stored.contains("Sig: test-cache-1:"), "uploaded narinfo is signed by us: {stored}");
    assert_eq!(c.delete(&url).send().await.unwrap().status(), 204);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 404);
    let other = format!("{}/{}.narinfo", node.url(), hash_of(&fx.mid));
    let wrong = std::fs::read(fx.cache("none").join(format!("{}.narinfo", hash_of(&fx.leaf)))).unwrap();
    assert_eq!(c.put(&other).body(wrong).send().await.unwrap().status(), 400, "narinfo for another path");
    assert_eq!(c.put(&other).body("garbage").send().await.unwrap().status(), 400);
    let bad = format!("{}/nar/{}.nar", node.url(), "1".repeat(52));
    assert_eq!(c.put(&bad).body("not what the name says").send().await.unwrap().status(), 400, "NAR hash mismatch");
    assert_eq!(c.head(&bad).send().await.unwrap().status(), 404, "mismatched upload not stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_token_protects_reads_but_not_healthz_and_metrics() {
    let node = start_node(&["--cache-get-token=s3cret".into(), "--prometheus-enabled".into()]).await;
    let c = reqwest::Client::new();
    let info = format!("{}/nix-cache-info", node.url());
    assert_eq!(c.get(&info).send().await.unwrap().status(), 401);
    assert_eq!(c.get(&info).bearer_auth("wrong").send().await.unwrap().status(), 401);
    assert_eq!(c.get(&info).bearer_auth("s3cret").send().await.unwrap().status(), 200);
    assert_eq!(c.get(&info).basic_auth("nix", Some("s3cret")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(format!("{}/healthz", node.url())).send().await.unwrap().status(), 200);
    // As in ncps, the scrape endpoint needs no read token.
    let metrics = c.get(format!("{}/metrics", node.url())).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.text().await.unwrap().contains("ncps_narinfo_served_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_priority_is_enforced() {
    let fx = fixture();
    let (zstd, none) = (FakeUpstream::start(fx.cache("zstd")).await, FakeUpstream::start(fx.cache("none")).await);
    let c = reqwest::Client::new();
    // Both upstreams have the path and both are asked at once; the narinfo of
    // the one with the lower priority number must win.
    for (zstd_priority, none_priority, want) in [(10, 20, "Compression: zstd"), (20, 10, "Compression: none")] {
        let node = start_node(&[
            format!("--cache-upstream-url={}?priority={zstd_priority}", zstd.url()),
            format!("--cache-upstream-url={}?priority={none_priority}", none.url()),
            format!("--cache-upstream-public-key={}", fx.public_key),
        ])
        .await;
        let body =
            c.get(format!("{}/{}.narinfo", node.url(), hash_of(&fx.leaf))).send().await.unwrap().text().await.unwrap();
        assert!(body.contains(want), "wanted {want} from the preferred upstream, got:\n{body}");
    }
}
