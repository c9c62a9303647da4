//! Writes need their own credential: a reader cannot make the cache sign
//! anything. Uploads with the real `nix copy --to` and a netrc file,
//! trusted upload keys, and one audit line and metric count per write.

use std::io::Write as _;

use ncps_edge_tests::fixture::{fixture, hash_of, nar_file, nar_url};
use ncps_edge_tests::nix::NixEnv;
use ncps_edge_tests::node::{start_node, TestNode};
use ncps_edge_tests::scrape::sample;

/// Capture this process's log lines.
fn logs() {
    ncps_edge_tests::logs::capture("info");
}

/// The `write` audit lines of the node at `node_url`.
fn audit(node_url: &str) -> Vec<serde_json::Value> {
    let host = node_url.trim_start_matches("http://");
    ncps_edge_tests::logs::with_message("write").into_iter().filter(|v| v["host"] == host).collect()
}

const FLAGS: [&str; 6] = [
    "--cache-get-token=reader-secret",
    "--cache-put-token=writer-secret",
    "--cache-delete-token=deleter-secret",
    "--cache-allow-put-verb",
    "--cache-allow-delete-verb",
    "--prometheus-enabled",
];

async fn node(extra: &[String]) -> TestNode {
    // The JSON log capture must be this process's subscriber.
    logs();
    let mut flags: Vec<String> = FLAGS.iter().map(|s| s.to_string()).collect();
    flags.extend_from_slice(extra);
    start_node(&flags).await
}

/// `nix copy` of `paths` to `to`, with `password` for 127.0.0.1 in a netrc file.
fn nix_copy(env: &NixEnv, args: &[&str], password: Option<&str>) -> std::process::Output {
    let netrc = env.path("netrc");
    let mut f = std::fs::File::create(&netrc).unwrap();
    if let Some(p) = password {
        writeln!(f, "machine 127.0.0.1 login nix password {p}").unwrap();
    }
    let mut all = vec!["copy", "--option", "netrc-file", netrc.to_str().unwrap(), "--option", "download-attempts", "1"];
    all.extend_from_slice(args);
    env.try_run("nix", &all)
}

async fn status(c: &reqwest::Client, req: reqwest::RequestBuilder) -> u16 {
    let _ = c;
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_write_tokens_write_and_every_write_is_audited() {
    logs();
    let fx = fixture();
    let node = node(&[]).await;
    let (url, src) = (node.url(), fx.store.display().to_string());
    let c = reqwest::Client::new();
    let narinfo = format!("{url}/{}.narinfo", hash_of(&fx.leaf));
    let stored = |c: &reqwest::Client| c.get(&narinfo).bearer_auth("reader-secret").send();

    // A reader's and an anonymous upload are refused; nothing is stored.
    for password in [Some("reader-secret"), None] {
        let env = NixEnv::new();
        let out = tokio::task::block_in_place(|| {
            nix_copy(&env, &["--store", &src, "--to", &format!("{url}/upload"), &fx.leaf], password)
        });
        assert!(!out.status.success(), "nix copy with {password:?} uploaded");
        assert_eq!(stored(&c).await.unwrap().status(), 404, "{password:?} stored a narinfo");
    }
    let nar = std::fs::read(nar_file(&fx.cache("none"), &fx.leaf)).unwrap();
    let nar_put = || c.put(format!("{url}{}", nar_url(&fx.cache("none"), &fx.leaf))).body(nar.clone());
    assert_eq!(status(&c, nar_put()).await, 401, "no credential");
    assert_eq!(status(&c, nar_put().bearer_auth("deleter-secret")).await, 403, "the delete token does not upload");
    // The writer's upload works; readers substitute what it uploaded.
    let env = NixEnv::new();
    let out = tokio::task::block_in_place(|| {
        nix_copy(&env, &["--store", &src, "--to", &format!("{url}/upload"), &fx.top], Some("writer-secret"))
    });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let store = env.path("store").display().to_string();
    let key = node.public_key();
    let down = tokio::task::block_in_place(|| {
        nix_copy(
            &env,
            &["--from", &url, "--to", &store, "--option", "trusted-public-keys", &key, &fx.top],
            Some("reader-secret"),
        )
    });
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert_eq!(env.dump_hash(&env.path("store"), &fx.top), fx.env.dump_hash(&fx.store, &fx.top));

    // Deletes: only the delete token.
    let del = || c.delete(&narinfo);
    assert_eq!(status(&c, del()).await, 401, "no credential");
    assert_eq!(status(&c, del().bearer_auth("reader-secret")).await, 403, "read token");
    assert_eq!(status(&c, del().bearer_auth("writer-secret")).await, 403, "put token");
    assert_eq!(status(&c, del().basic_auth("nix", Some("deleter-secret"))).await, 204);
    assert_eq!(stored(&c).await.unwrap().status(), 404);

    // One audit line and one count per write, with the credential's name
    // and never its secret.
    let lines = audit(&url);
    assert!(lines.iter().all(|l| l["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:"))), "{lines:#?}");
    let metrics = c.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    let count = |method: &str, outcome: &str| {
        sample(&metrics, "ncps_writes_total", &[("method", method), ("outcome", outcome)]).unwrap()
    };
    let logged = |method: &str, outcome: &str| {
        lines.iter().filter(|l| l["method"] == method && l["outcome"] == outcome).count() as f64
    };
    for (method, outcome) in [
        ("PUT", "accepted"),
        ("PUT", "forbidden"),
        ("PUT", "unauthorized"),
        ("DELETE", "accepted"),
        ("DELETE", "forbidden"),
        ("DELETE", "unauthorized"),
    ] {
        assert_eq!(count(method, outcome), logged(method, outcome), "{method} {outcome}:\n{lines:#?}");
    }
    assert_eq!(count("PUT", "accepted"), 6.0, "three NARs and three narinfos of the closure");
    assert_eq!(
        (count("DELETE", "accepted"), count("DELETE", "forbidden"), count("DELETE", "unauthorized")),
        (1.0, 2.0, 1.0)
    );
    assert!(count("PUT", "forbidden") >= 2.0, "the reader's upload and the delete token's");
    assert_eq!(count("PUT", "unauthorized"), 1.0);
    let text = ncps_edge_tests::logs::text();
    for secret in ["reader-secret", "writer-secret", "deleter-secret"] {
        assert!(!text.contains(secret), "{secret} in the log");
    }
    let top = lines
        .iter()
        .any(|l| l["credential"] == "put-token" && l["object"].as_str().is_some_and(|t| t.ends_with("-top")));
    assert!(top, "{lines:#?}");
    assert!(lines.iter().any(|l| l["credential"] == "read-only" && l["status"] == "403"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn uploads_must_be_signed_by_a_trusted_key() {
    let fx = fixture();
    let node = node(&[format!("--cache-upload-trusted-key={}", fx.public_key)]).await;
    let (url, src) = (node.url(), fx.store.display().to_string());
    let c = reqwest::Client::new();
    let sk = |name: &str| fx.env.path(&format!("{name}.sk")).display().to_string();
    // Signed by another key: refused, and our key never signs it.
    let env = NixEnv::new();
    let to = format!("{url}/upload?secret-key={}", sk("evil-1"));
    let out = tokio::task::block_in_place(|| {
        nix_copy(&env, &["--store", &src, "--to", &to, &fx.leaf], Some("writer-secret"))
    });
    assert!(!out.status.success(), "an upload signed by an untrusted key was accepted");
    let leaf = format!("{url}/{}.narinfo", hash_of(&fx.leaf));
    assert_eq!(c.get(&leaf).bearer_auth("reader-secret").send().await.unwrap().status(), 404);
    // Signed by the trusted key: accepted, and signed by us too.
    let to = format!("{url}/upload?secret-key={}", sk("fixture-1"));
    let out =
        tokio::task::block_in_place(|| nix_copy(&env, &["--store", &src, "--to", &to, &fx.top], Some("writer-secret")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let body = c.get(&leaf).bearer_auth("reader-secret").send().await.unwrap().text().await.unwrap();
    assert!(body.contains("Sig: fixture-1:") && body.contains("Sig: test-cache-1:"), "{body}");

    // Signed by the trusted key but tampered with: the signature fails.
    let big = std::fs::read_to_string(fx.cache("none").join(format!("{}.narinfo", hash_of(&fx.big)))).unwrap();
    let put = |body: String| {
        c.put(format!("{url}/{}.narinfo", hash_of(&fx.big))).bearer_auth("writer-secret").body(body).send()
    };
    let tampered = big.replace("NarSize: ", "NarSize: 1");
    assert_eq!(put(tampered).await.unwrap().status(), 403);
    // Signed by the trusted key, but its NAR was never uploaded.
    assert_eq!(put(big).await.unwrap().status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_narinfo_needs_its_nar_stored_as_announced() {
    let fx = fixture();
    let node = node(&[]).await;
    let url = node.url();
    let c = reqwest::Client::new();
    let cache = fx.cache("none");
    let text = std::fs::read_to_string(cache.join(format!("{}.narinfo", hash_of(&fx.leaf)))).unwrap();
    let put_info = |body: String| {
        c.put(format!("{url}/{}.narinfo", hash_of(&fx.leaf))).bearer_auth("writer-secret").body(body).send()
    };
    assert_eq!(put_info(text.clone()).await.unwrap().status(), 400, "NAR never uploaded");
    let nar = std::fs::read(nar_file(&cache, &fx.leaf)).unwrap();
    let nar_put = c.put(format!("{url}{}", nar_url(&cache, &fx.leaf))).bearer_auth("writer-secret").body(nar.clone());
    assert_eq!(nar_put.send().await.unwrap().status(), 204);
    let wrong_size = text.replace(&format!("FileSize: {}", nar.len()), &format!("FileSize: {}", nar.len() + 1));
    assert_ne!(wrong_size, text);
    assert_eq!(put_info(wrong_size).await.unwrap().status(), 400, "FileSize does not match the stored NAR");
    let leaf = format!("{url}/{}.narinfo", hash_of(&fx.leaf));
    assert_eq!(c.get(&leaf).bearer_auth("reader-secret").send().await.unwrap().status(), 404, "nothing recorded");
    assert_eq!(put_info(text).await.unwrap().status(), 204, "the good upload works after the bad ones");
    assert_eq!(c.get(&leaf).bearer_auth("reader-secret").send().await.unwrap().status(), 200);
}

/// Send `head` and `body` on a raw connection, close our side, and read
/// whatever the node answers (empty when it closed without answering).
async fn raw(addr: &str, head: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body).await.unwrap();
    conn.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_uploads_leave_nothing_behind() {
    let fx = fixture();
    let node = node(&["--cache-max-upload-size=4K".into()]).await;
    let (url, addr) = (node.url(), node.node.addr().to_string());
    let c = reqwest::Client::new();
    let cache = fx.cache("none");
    let (path, nar) = (nar_url(&cache, &fx.leaf), std::fs::read(nar_file(&cache, &fx.leaf)).unwrap());
    let head = |len: usize| {
        format!("PUT {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer writer-secret\r\nContent-Length: {len}\r\n\r\n")
    };
    let stored = || c.head(format!("{url}{path}")).bearer_auth("reader-secret").send();
    // The client goes away half way through its body.
    let answer = raw(&addr, &head(nar.len()), &nar[..nar.len() / 2]).await;
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(stored().await.unwrap().status(), 404, "a truncated upload was stored");
    // A body longer than its Content-Length: only the announced bytes count.
    let answer = raw(&addr, &head(nar.len() - 10), &nar).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(stored().await.unwrap().status(), 404);
    // Larger than --cache-max-upload-size.
    let big = vec![7u8; 8 << 10];
    let too_big = c.put(format!("{url}/nar/{}.nar", "1".repeat(52))).bearer_auth("writer-secret").body(big);
    assert_eq!(too_big.send().await.unwrap().status(), 413);
    // Two uploads of one NAR at once: both succeed, one object.
    let put = || c.put(format!("{url}{path}")).bearer_auth("writer-secret").body(nar.clone()).send();
    let (a, b) = tokio::join!(put(), put());
    assert_eq!((a.unwrap().status().as_u16(), b.unwrap().status().as_u16()), (204, 204));
    let got = c.get(format!("{url}{path}")).bearer_auth("reader-secret").send().await.unwrap().bytes().await.unwrap();
    assert_eq!(got, nar, "the stored NAR is the uploaded one");
    let leftovers = std::fs::read_dir(node.data.path().join("store/tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "temporary files left behind");
}
