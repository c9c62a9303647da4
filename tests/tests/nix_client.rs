//! The real Nix client (Debian's nix-bin) against ncps-edge: substitution
//! cold and warm from xz, zstd and uncompressed upstreams, uploads with
//! `nix copy --to …/upload`, and refusal of untrusted narinfos.

use ncps_edge_tests::fixture::{fixture, hash_of, nar_url};
use ncps_edge_tests::nix::NixEnv;
use ncps_edge_tests::node::{start_node, upstream_flags};
use ncps_edge_tests::scenario::Scenario;
use ncps_edge_tests::upstream::FakeUpstream;

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nix_substitutes_closures_cold_then_warm() {
    let fx = fixture();
    for compression in ["xz", "zstd", "none"] {
        let up = FakeUpstream::start(fx.cache(compression)).await;
        let node = start_node(&upstream_flags(&up.url(), &fx.public_key)).await;
        let mut paths = vec![fx.top.clone()];
        if compression != "xz" {
            paths.push(fx.big.clone());
        }
        for (round, label) in [(0, "cold"), (1, "warm")] {
            let env = NixEnv::new();
            let store = env.path("store");
            // Only ncps-edge's own key is trusted: our signature must verify.
            let (url, key) = (node.url(), node.public_key());
            for p in &paths {
                let out = tokio::task::block_in_place(|| env.copy_from(&url, &key, &store, p));
                assert!(out.status.success(), "{compression} {label}: {}", String::from_utf8_lossy(&out.stderr));
            }
            for p in paths.iter().chain([&fx.mid, &fx.leaf]) {
                assert_eq!(
                    env.dump_hash(&store, p),
                    fx.env.dump_hash(&fx.store, p),
                    "{compression} {label}: {p} differs"
                );
            }
            let nar_hits = up.hits(&nar_url(&fx.cache(compression), &fx.top));
            assert_eq!(nar_hits, 1, "{compression} {label} (round {round}): warm run must not go upstream");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nix_store_realises_through_the_substituter_option() {
    let fx = fixture();
    let s = Scenario::setup().cache("zstd").start().await;
    let node = &s.node;
    let (url, key, top) = (node.url(), node.public_key(), fx.top.clone());
    let (ok, stderr, env) = blocking(move || {
        let env = NixEnv::new();
        let store = env.path("store").display().to_string();
        let out = env.try_run(
            "nix-store",
            &["--store", &store, "-r", &top, "--option", "substituters", &url, "--option", "trusted-public-keys", &key],
        );
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned(), env)
    })
    .await;
    assert!(ok, "{stderr}");
    assert_eq!(env.dump_hash(&env.path("store"), &fx.top), fx.env.dump_hash(&fx.store, &fx.top));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nix_copy_uploads_with_put_enabled() {
    let fx = fixture();
    let node = start_node(&["--cache-allow-put-verb".into(), "--cache-allow-anonymous-writes".into()]).await;
    let (url, key, top, src) = (node.url(), node.public_key(), fx.top.clone(), fx.store.display().to_string());
    let (up_ok, up_err, down_ok, down_err, env) = blocking(move || {
        let env = NixEnv::new();
        let to = format!("{url}/upload");
        let up = env.try_run("nix", &["copy", "--store", &src, "--to", &to, &top]);
        let down = env.copy_from(&url, &key, &env.path("store"), &top);
        (
            up.status.success(),
            String::from_utf8_lossy(&up.stderr).into_owned(),
            down.status.success(),
            String::from_utf8_lossy(&down.stderr).into_owned(),
            env,
        )
    })
    .await;
    assert!(up_ok, "upload failed: {up_err}");
    assert!(down_ok, "download of uploaded paths failed: {down_err}");
    for p in [&fx.top, &fx.mid, &fx.leaf] {
        assert_eq!(env.dump_hash(&env.path("store"), p), fx.env.dump_hash(&fx.store, p));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn narinfo_signed_by_an_untrusted_key_is_refused() {
    let fx = fixture();
    let up = FakeUpstream::start(fx.evil_cache.clone()).await;
    let c = reqwest::Client::new();
    let evil_narinfo = |node: &str| format!("{node}/{}.narinfo", hash_of(&fx.evil));
    // Trusting only fixture-1: the evil-1 signature is refused.
    let node = start_node(&upstream_flags(&up.url(), &fx.public_key)).await;
    assert_eq!(c.get(evil_narinfo(&node.url())).send().await.unwrap().status(), 404);
    let (url, key, evil) = (node.url(), node.public_key(), fx.evil.clone());
    let out = blocking(move || {
        let env = NixEnv::new();
        env.copy_from(&url, &key, &env.path("store"), &evil)
    })
    .await;
    assert!(!out.status.success(), "nix accepted a path whose upstream signature is untrusted");
    // Control: trusting evil-1 makes the same path available.
    let trusting = start_node(&upstream_flags(&up.url(), &fx.evil_public_key)).await;
    assert_eq!(c.get(evil_narinfo(&trusting.url())).send().await.unwrap().status(), 200);
}
