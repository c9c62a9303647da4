//! A stored NAR is what its name says: a hostile upstream cannot lend one
//! path's NAR name to other bytes, sizes are never stored as other numbers,
//! a deleted NAR takes its narinfos along, and uploads name a compression
//! Nix knows.

use ncps_edge_tests::fixture::{fixture, hash_of, nar_file, nar_url};
use ncps_edge_tests::node::start_node;
use ncps_edge_tests::scenario::Scenario;
use sha2::{Digest, Sha256};

/// Every NAR object under `data`, as (file name, nix32 sha256 of its bytes).
fn stored_objects(data: &std::path::Path) -> Vec<(String, String)> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                walk(&entry.path(), out);
            } else {
                out.push(entry.path());
            }
        }
    }
    let mut files = Vec::new();
    walk(&data.join("store/nar"), &mut files);
    files
        .iter()
        .map(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            let digest = nix_base32::to_nix_base32(&Sha256::digest(std::fs::read(f).unwrap()));
            (name, digest)
        })
        .collect()
}

/// A narinfo line's value.
fn field<'a>(narinfo: &'a str, key: &str) -> &'a str {
    narinfo.lines().find_map(|l| l.strip_prefix(&format!("{key}: "))).unwrap_or_else(|| panic!("no {key}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_upstream_cannot_store_bytes_under_another_nars_name() {
    let fx = fixture();
    let cache = fx.cache("zstd");
    // The hostile upstream: mid's narinfo, validly signed, but its URL names
    // top's NAR file, whose name it serves with mid's bytes. FileHash says
    // what the bytes are (the signature does not cover URL or FileHash).
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("nar")).unwrap();
    let (top_url, mid_url) = (nar_url(&cache, &fx.top), nar_url(&cache, &fx.mid));
    let mid_bytes = std::fs::read(nar_file(&cache, &fx.mid)).unwrap();
    let top_bytes = std::fs::read(nar_file(&cache, &fx.top)).unwrap();
    std::fs::write(dir.path().join(&top_url[1..]), &mid_bytes).unwrap();
    let mid_info = std::fs::read_to_string(cache.join(format!("{}.narinfo", hash_of(&fx.mid)))).unwrap();
    let lending = mid_info.replace(&format!("URL: {}", &mid_url[1..]), &format!("URL: {}", &top_url[1..]));
    assert_ne!(lending, mid_info);
    std::fs::write(dir.path().join(format!("{}.narinfo", hash_of(&fx.mid))), &lending).unwrap();
    let top_info = std::fs::read_to_string(cache.join(format!("{}.narinfo", hash_of(&fx.top)))).unwrap();
    std::fs::write(dir.path().join(format!("{}.narinfo", hash_of(&fx.top))), &top_info).unwrap();

    let s = Scenario::setup().upstream_dir(dir.path()).start().await;
    let (node, c) = (&s.node, &s.c);
    // A client of mid: its narinfo names its NAR by its FileHash, whatever
    // the upstream's URL said, and gets mid's own bytes.
    let served = c.get(format!("{}/{}.narinfo", node.url(), hash_of(&fx.mid))).send().await.unwrap();
    assert_eq!(served.status(), 200);
    let served = served.text().await.unwrap();
    let ours = format!("/{}", field(&served, "URL"));
    assert_eq!(ours, mid_url, "mid's NAR is not named by its own FileHash: {served}");
    let got = c.get(format!("{}{ours}", node.url())).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(got, mid_bytes);
    // The upstream now serves top's file as it is: a client of top gets top's bytes.
    std::fs::write(dir.path().join(&top_url[1..]), &top_bytes).unwrap();
    let top = c.get(format!("{}/{}.narinfo", node.url(), hash_of(&fx.top))).send().await.unwrap();
    let top = top.text().await.unwrap();
    assert_eq!(format!("/{}", field(&top, "URL")), top_url);
    let got = c.get(format!("{}{top_url}", node.url())).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(got, top_bytes, "top's NAR name serves other bytes");
    let objects = stored_objects(node.data.path());
    assert_eq!(objects.len(), 2, "{objects:?}");
    for (name, digest) in objects {
        assert!(name.starts_with(&digest), "{name} holds bytes that hash to {digest}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bytes_that_do_not_hash_to_a_borrowed_name_are_not_stored() {
    let fx = fixture();
    let cache = fx.cache("zstd");
    // mid's narinfo lends top's NAR name and claims FileHash/FileSize of
    // other bytes, which the upstream serves under top's name.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("nar")).unwrap();
    let (top_url, mid_url) = (nar_url(&cache, &fx.top), nar_url(&cache, &fx.mid));
    let evil = b"not what anybody's narinfo signed".to_vec();
    std::fs::write(dir.path().join(&top_url[1..]), &evil).unwrap();
    let mid_info = std::fs::read_to_string(cache.join(format!("{}.narinfo", hash_of(&fx.mid)))).unwrap();
    let evil_hash = format!("sha256:{}", nix_base32::to_nix_base32(&Sha256::digest(&evil)));
    let lending = mid_info
        .replace(&format!("URL: {}", &mid_url[1..]), &format!("URL: {}", &top_url[1..]))
        .replace(field(&mid_info, "FileHash"), &evil_hash)
        .replace(&format!("FileSize: {}", field(&mid_info, "FileSize")), &format!("FileSize: {}", evil.len()));
    std::fs::write(dir.path().join(format!("{}.narinfo", hash_of(&fx.mid))), &lending).unwrap();
    let s = Scenario::setup().upstream_dir(dir.path()).start().await;
    let (node, c) = (&s.node, &s.c);
    let served = c.get(format!("{}/{}.narinfo", node.url(), hash_of(&fx.mid))).send().await.unwrap();
    let served = served.text().await.unwrap();
    let ours = format!("/{}", field(&served, "URL"));
    assert_ne!(ours, top_url, "the borrowed name was adopted");
    let _ = c.get(format!("{}{ours}", node.url())).send().await.unwrap().bytes().await;
    // Whatever was stored is named by its content, and nothing under top's name.
    let objects = stored_objects(node.data.path());
    assert!(objects.iter().all(|(name, digest)| name.starts_with(digest)), "{objects:?}");
    assert!(!objects.iter().any(|(name, _)| top_url.ends_with(name.as_str())), "{objects:?}");
}

const WRITE_FLAGS: [&str; 2] = ["--cache-allow-put-verb", "--cache-allow-delete-verb"];

async fn writable_node(extra: &[String]) -> ncps_edge_tests::node::TestNode {
    let mut flags: Vec<String> = WRITE_FLAGS.iter().map(|s| s.to_string()).collect();
    flags.push("--cache-allow-anonymous-writes".into());
    flags.extend_from_slice(extra);
    start_node(&flags).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sizes_a_database_cannot_hold_and_unknown_compressions_are_refused() {
    let fx = fixture();
    let node = writable_node(&[]).await;
    let c = reqwest::Client::new();
    let cache = fx.cache("none");
    let (path, nar) = (nar_url(&cache, &fx.leaf), std::fs::read(nar_file(&cache, &fx.leaf)).unwrap());
    assert_eq!(c.put(format!("{}{path}", node.url())).body(nar).send().await.unwrap().status(), 204);
    let info = std::fs::read_to_string(cache.join(format!("{}.narinfo", hash_of(&fx.leaf)))).unwrap();
    let narinfo = format!("{}/{}.narinfo", node.url(), hash_of(&fx.leaf));
    let nar_size = format!("NarSize: {}", field(&info, "NarSize"));
    for huge in ["9223372036854775808", "18446744073709551615"] {
        let body = info.replace(&nar_size, &format!("NarSize: {huge}"));
        assert_eq!(c.put(&narinfo).body(body).send().await.unwrap().status(), 400, "NarSize {huge}");
        let body = format!("{info}FileSize: {huge}\n");
        assert_eq!(c.put(&narinfo).body(body).send().await.unwrap().status(), 400, "FileSize {huge}");
    }
    let evil = info.replace("Compression: none", "Compression: evil comp");
    assert_ne!(evil, info);
    assert_eq!(c.put(&narinfo).body(evil).send().await.unwrap().status(), 400, "unknown compression");
    let other = info.replace("Compression: none", "Compression: xz");
    assert_eq!(c.put(&narinfo).body(other).send().await.unwrap().status(), 400, "compression unlike the URL's");
    assert_eq!(c.get(&narinfo).send().await.unwrap().status(), 404, "a refused narinfo was recorded");
    assert_eq!(c.put(&narinfo).body(info).send().await.unwrap().status(), 204);
    assert_eq!(c.get(&narinfo).send().await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_nar_takes_its_narinfos_along_and_fsck_mends_what_was_left() {
    let fx = fixture();
    let node = writable_node(&["--admin-token=adm".into()]).await;
    let c = reqwest::Client::new();
    let cache = fx.cache("none");
    let upload = |p: &str| {
        let (c, url) = (c.clone(), node.url());
        let (path, nar) = (nar_url(&cache, p), std::fs::read(nar_file(&cache, p)).unwrap());
        let info = std::fs::read_to_string(cache.join(format!("{}.narinfo", hash_of(p)))).unwrap();
        let hash = hash_of(p).to_owned();
        async move {
            assert_eq!(c.put(format!("{url}{path}")).body(nar).send().await.unwrap().status(), 204);
            assert_eq!(c.put(format!("{url}/{hash}.narinfo")).body(info).send().await.unwrap().status(), 204);
        }
    };
    upload(&fx.leaf).await;
    upload(&fx.mid).await;
    let narinfo = |p: &str| format!("{}/{}.narinfo", node.url(), hash_of(p));
    // Served once, so the edge tier keeps it too.
    assert_eq!(c.get(narinfo(&fx.leaf)).send().await.unwrap().status(), 200);
    let nar = format!("{}{}", node.url(), nar_url(&cache, &fx.leaf));
    assert_eq!(c.delete(&nar).send().await.unwrap().status(), 204);
    assert_eq!(c.get(&nar).send().await.unwrap().status(), 404);
    assert_eq!(c.get(narinfo(&fx.leaf)).send().await.unwrap().status(), 404, "its narinfo is still served");
    // A NAR deleted behind the cache's back: the reconcile pass forgets its
    // narinfo too (an upload cannot be fetched again).
    assert_eq!(c.get(narinfo(&fx.mid)).send().await.unwrap().status(), 200);
    let file = &nar_url(&cache, &fx.mid)[5..];
    std::fs::remove_file(node.data.path().join("store/nar").join(&file[..1]).join(&file[..2]).join(file)).unwrap();
    let report = c.post(format!("{}/admin/fsck", node.url())).bearer_auth("adm").send().await.unwrap();
    assert_eq!(report.status(), 200);
    let report: serde_json::Value = serde_json::from_str(&report.text().await.unwrap()).unwrap();
    assert_eq!(report["phantoms"], 1, "{report}");
    assert_eq!(c.get(narinfo(&fx.mid)).send().await.unwrap().status(), 404, "a narinfo whose NAR is gone is served");
}
