//! `ncps-edge import-ncps`: an ncps deployment moves in. Its database is in
//! ncps's own schema (`tests/fixtures/ncps`, what ncps's migrations make) on
//! SQLite, PostgreSQL or MySQL, its files in ncps's layout, both built from
//! real `nix copy` output; afterwards the node serves what ncps had, signed
//! with ncps's key, with no upstream and without downloading anything.

use std::path::{Path, PathBuf};
use std::process::Command;

use mysql_async::prelude::Queryable as _;
use ncps_edge_host_services::metadata::sqlite::SqliteMetadata;
use ncps_edge_host_services::metadata::MetadataStore as _;
use ncps_edge_host_services::signer::Signer;
use ncps_edge_host_services::storage::StorageKey;
use ncps_edge_test_support::{fresh_mysql, fresh_postgres};
use ncps_edge_tests::fixture::{fixture, hash_of, nar_url};
use ncps_edge_tests::nix::NixEnv;
use ncps_edge_tests::process::{binary, NodeProcess};

/// The database ncps ran on.
#[derive(Clone, Copy, PartialEq)]
enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

/// An ncps deployment made of the `zstd` fixture cache.
struct Ncps {
    /// ncps's data folder (`store/nar/…`).
    data: tempfile::TempDir,
    /// ncps's database URL.
    database_url: String,
    /// ncps's signing key.
    key: Signer,
    /// The upstream cache it was filled from.
    cache: PathBuf,
}

impl Ncps {
    /// Where ncps keeps the NAR of `store_path`.
    fn nar(&self, store_path: &str) -> PathBuf {
        let key = StorageKey::parse(nar_url(&self.cache, store_path).trim_start_matches('/')).unwrap();
        self.data.path().join(key.layout())
    }
}

/// `text` as an SQL literal.
fn lit(text: Option<&str>) -> String {
    text.map_or("NULL".into(), |t| format!("'{}'", t.replace('\'', "''")))
}

/// The rows ncps keeps for the narinfos of `paths` in `cache` (last access
/// one day apart, first path oldest) and for its signing key.
fn ncps_rows(dialect: Dialect, cache: &Path, paths: &[&str], key: &Signer) -> Vec<String> {
    let mut rows = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let id = i + 1;
        let text = std::fs::read_to_string(cache.join(format!("{}.narinfo", hash_of(path)))).unwrap();
        let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned));
        let accessed = format!("'2026-01-{:02} 12:00:00'", id);
        let url = field("URL").unwrap();
        rows.push(format!(
            "INSERT INTO narinfos (id, hash, store_path, url, compression, file_hash, file_size, nar_hash, nar_size, \
             deriver, system, ca, last_accessed_at) VALUES ({id}, '{}', {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {accessed})",
            hash_of(path),
            lit(field("StorePath").as_deref()),
            lit(Some(&url)),
            lit(field("Compression").as_deref()),
            lit(field("FileHash").as_deref()),
            field("FileSize").unwrap_or("NULL".into()),
            lit(field("NarHash").as_deref()),
            field("NarSize").unwrap(),
            lit(field("Deriver").as_deref()),
            lit(field("System").as_deref()),
            lit(field("CA").as_deref()),
        ));
        for reference in field("References").unwrap_or_default().split_whitespace() {
            rows.push(format!("INSERT INTO narinfo_references (narinfo_id, reference) VALUES ({id}, '{reference}')"));
        }
        for sig in text.lines().filter_map(|l| l.strip_prefix("Sig: ")) {
            rows.push(format!("INSERT INTO narinfo_signatures (narinfo_id, signature) VALUES ({id}, '{sig}')"));
        }
        let file = url.rsplit('/').next().unwrap();
        let (file_hash, ext) = file.split_once(".nar").unwrap();
        let compression = match ext {
            ".zst" => "zstd",
            ".xz" => "xz",
            _ => "none",
        };
        let size = std::fs::metadata(cache.join(&url)).unwrap().len();
        rows.push(format!(
            "INSERT INTO nar_files (id, hash, compression, file_size, query, last_accessed_at) \
             VALUES ({id}, '{file_hash}', '{compression}', {size}, '', {accessed})"
        ));
        rows.push(format!("INSERT INTO narinfo_nar_files (nar_file_id, narinfo_id) VALUES ({id}, {id})"));
    }
    let key_column = if dialect == Dialect::Mysql { "`key`" } else { "\"key\"" };
    rows.push(format!("INSERT INTO config ({key_column}, value) VALUES ('secret_key', '{}')", key.to_secret_string()));
    rows
}

/// An ncps deployment holding `paths` of the zstd cache, on `dialect`.
async fn ncps(dialect: Dialect, paths: &[&str]) -> Ncps {
    let cache = fixture().cache("zstd");
    let data = tempfile::tempdir().unwrap();
    let key = Signer::generate("ncps-old-1");
    let rows = ncps_rows(dialect, &cache, paths, &key);
    let database_url = match dialect {
        Dialect::Sqlite => {
            let file = data.path().join("db/db.sqlite");
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            let db = rusqlite::Connection::open(&file).unwrap();
            db.execute_batch(include_str!("../fixtures/ncps/sqlite.sql")).unwrap();
            for row in &rows {
                db.execute(row, []).unwrap_or_else(|e| panic!("{row}: {e}"));
            }
            format!("sqlite:{}", file.display())
        }
        Dialect::Postgres => {
            let url = fresh_postgres().await;
            let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            db.batch_execute(include_str!("../fixtures/ncps/postgres.sql")).await.unwrap();
            for row in &rows {
                db.execute(row.as_str(), &[]).await.unwrap_or_else(|e| panic!("{row}: {e}"));
            }
            url
        }
        Dialect::Mysql => {
            let url = fresh_mysql().await;
            let mut db = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).unwrap()).await.unwrap();
            let schema = include_str!("../fixtures/ncps/mysql.sql");
            for statement in schema.split(";\n").chain(rows.iter().map(String::as_str)) {
                if !statement.trim().is_empty() {
                    db.query_drop(statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
                }
            }
            url
        }
    };
    let ncps = Ncps { data, database_url, key, cache };
    for path in paths {
        let to = ncps.nar(path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(ncps.cache.join(nar_url(&ncps.cache, path).trim_start_matches('/')), to).unwrap();
    }
    ncps
}

/// What `ncps-edge import-ncps` reported.
#[derive(Debug, PartialEq)]
struct Summary {
    imported: u64,
    already: u64,
    unusable: u64,
    stored: u64,
    copied: u64,
    missing: u64,
    key: String,
}

/// Run `ncps-edge import-ncps` from an empty folder with `node` (this
/// node's settings) and `extra`; its summary and log.
fn import(ncps: &Ncps, node: &[String], extra: &[&str]) -> (Summary, String) {
    let cwd = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .current_dir(cwd.path())
        .arg("import-ncps")
        .arg(format!("--ncps-database-url={}", ncps.database_url))
        .args(node)
        .args(extra)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "import failed:\n{log}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON summary");
    let n = |k: &str| json[k].as_u64().unwrap_or_else(|| panic!("{k} missing: {json}"));
    let summary = Summary {
        imported: n("imported"),
        already: n("already"),
        unusable: n("unusable"),
        stored: n("nars_stored"),
        copied: n("nars_copied"),
        missing: n("nars_missing"),
        key: json["key"].as_str().unwrap().to_owned(),
    };
    assert_eq!(n("narinfos"), summary.imported + summary.already + summary.unusable + summary.missing, "{json}");
    assert_eq!(std::fs::read_dir(cwd.path()).unwrap().count(), 0, "the import wrote into its working folder");
    (summary, log)
}

fn summary(imported: u64, already: u64, unusable: u64, stored: u64, copied: u64, missing: u64, key: &str) -> Summary {
    Summary { imported, already, unusable, stored, copied, missing, key: key.into() }
}

/// Flags of a node with its data in `dir`.
fn node_flags(dir: &Path) -> Vec<String> {
    vec![
        "--cache-hostname=edge".into(),
        format!("--cache-storage-local={}", dir.display()),
        format!("--wasm-cache-dir={}", std::env::temp_dir().join("ncps-edge-test-wasm-cache").display()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ncps_sqlite_deployment_moves_in_and_nix_trusts_it_as_before() {
    let fx = fixture();
    let ncps = ncps(Dialect::Sqlite, &[&fx.leaf, &fx.mid, &fx.top, &fx.big]).await;
    // One NAR ncps lost: its narinfo must not become a hit whose NAR 404s.
    std::fs::remove_file(ncps.nar(&fx.big)).unwrap();
    let node = tempfile::tempdir().unwrap();
    let mut flags = node_flags(node.path());
    flags.push(format!("--ncps-storage-local={}", ncps.data.path().display()));

    // A dry run reports and changes nothing: the real run then does it all.
    let (dry, _) = import(&ncps, &flags, &["--dry-run"]);
    assert_eq!(dry, summary(3, 0, 0, 0, 3, 1, "imported"));
    assert!(!node.path().join("store/nar").exists(), "the dry run copied NARs");
    let (first, _) = import(&ncps, &flags, &[]);
    assert_eq!(first, summary(3, 0, 0, 0, 3, 1, "imported"));
    // Idempotent: a second run finds everything in place.
    let (again, _) = import(&ncps, &flags, &[]);
    assert_eq!(again, summary(0, 3, 0, 0, 0, 1, "already"));

    // ncps's last accesses carry over: the LRU evicts what ncps used least recently.
    let db = SqliteMetadata::open(&node.path().join("db/db.sqlite")).unwrap();
    let order: Vec<String> = db.lru_candidates(10).await.unwrap().into_iter().map(|n| n.key).collect();
    let want: Vec<String> =
        [&fx.leaf, &fx.mid, &fx.top].iter().map(|p| nar_url(&ncps.cache, p).trim_start_matches('/').into()).collect();
    assert_eq!(order, want);
    drop(db);

    // No upstream: everything comes from what was imported, and Nix trusts
    // the node with nothing but ncps's old key.
    let logs = tempfile::tempdir().unwrap();
    let served = NodeProcess::spawn(&node_flags(node.path()), &logs.path().join("node.log"));
    let pubkey = reqwest::get(format!("{}/pubkey", served.url)).await.unwrap().text().await.unwrap();
    assert_eq!(pubkey.trim(), ncps.key.public_key());
    let (url, key, top) = (served.url.clone(), ncps.key.public_key(), fx.top.clone());
    let (out, env) = tokio::task::spawn_blocking(move || {
        let env = NixEnv::new();
        let store = env.path("store").display().to_string();
        let out = env
            .try_run("nix", &["copy", "--from", &url, "--to", &store, "--option", "trusted-public-keys", &key, &top]);
        (out, env)
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for p in [&fx.top, &fx.mid, &fx.leaf] {
        assert_eq!(env.dump_hash(&env.path("store"), p), fx.env.dump_hash(&fx.store, p), "{p} differs");
    }
    let lost = reqwest::get(format!("{}/{}.narinfo", served.url, hash_of(&fx.big))).await.unwrap();
    assert_eq!(lost.status(), 404, "the narinfo of a lost NAR was imported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_ncps_nar_is_not_copied() {
    let fx = fixture();
    let ncps = ncps(Dialect::Sqlite, &[&fx.leaf, &fx.mid]).await;
    let leaf = ncps.nar(&fx.leaf);
    let mut bytes = std::fs::read(&leaf).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&leaf, bytes).unwrap();
    let node = tempfile::tempdir().unwrap();
    let mut flags = node_flags(node.path());
    flags.push(format!("--ncps-storage-local={}", ncps.data.path().display()));
    let (first, log) = import(&ncps, &flags, &[]);
    assert_eq!(first, summary(1, 0, 1, 0, 1, 0, "imported"));
    assert!(log.contains("does not match its name"), "{log}");
    let key = StorageKey::parse(nar_url(&ncps.cache, &fx.leaf).trim_start_matches('/')).unwrap();
    assert!(!node.path().join(key.layout()).exists(), "the corrupt NAR was published");
    // Repaired (say, from a backup), the next run picks it up.
    std::fs::copy(ncps.cache.join(key.as_str()), &leaf).unwrap();
    let (again, _) = import(&ncps, &flags, &[]);
    assert_eq!(again, summary(1, 1, 0, 0, 1, 0, "already"));
}

/// Import from ncps on `dialect` into a node that takes over ncps's data
/// folder in place (nothing copied), on `database`; check what it serves.
async fn in_place(dialect: Dialect, database: Option<String>) {
    let fx = fixture();
    let ncps = ncps(dialect, &[&fx.leaf, &fx.mid, &fx.top]).await;
    let mut flags = node_flags(ncps.data.path());
    if let Some(url) = &database {
        flags.push(format!("--cache-database-url={url}"));
    }
    let (first, _) = import(&ncps, &flags, &[]);
    assert_eq!(first, summary(3, 0, 0, 3, 0, 0, "imported"));
    let logs = tempfile::tempdir().unwrap();
    let served = NodeProcess::spawn(&flags, &logs.path().join("node.log"));
    let c = reqwest::Client::new();
    let narinfo = c.get(format!("{}/{}.narinfo", served.url, hash_of(&fx.top))).send().await.unwrap();
    assert_eq!(narinfo.status(), 200);
    let text = narinfo.text().await.unwrap();
    let name = ncps.key.public_key().split(':').next().unwrap().to_owned();
    assert!(text.contains(&format!("Sig: {name}:")), "not signed with ncps's key:\n{text}");
    assert!(text.contains(&format!("Sig: {}", fx.public_key.split(':').next().unwrap())), "upstream signature lost");
    let nar = nar_url(&ncps.cache, &fx.top);
    let body = c.get(format!("{}{nar}", served.url)).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(body.as_ref(), std::fs::read(ncps.cache.join(&nar[1..])).unwrap().as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ncps_postgres_deployment_is_taken_over_in_place() {
    in_place(Dialect::Postgres, Some(fresh_postgres().await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ncps_mysql_deployment_is_taken_over_in_place() {
    in_place(Dialect::Mysql, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ncps_deployment_on_s3_is_copied_to_local_disk() {
    let fx = fixture();
    let ncps = ncps(Dialect::Sqlite, &[&fx.leaf, &fx.mid]).await;
    let bucket = ncps_edge_test_support::fresh_bucket().await;
    for p in [&fx.leaf, &fx.mid] {
        let key = ncps.nar(p).strip_prefix(ncps.data.path()).unwrap().display().to_string();
        let body = std::fs::read(ncps.nar(p)).unwrap();
        bucket.client().put_object().bucket(&bucket.bucket).key(key).body(body.into()).send().await.unwrap();
    }
    std::fs::remove_dir_all(ncps.data.path().join("store")).unwrap();
    let node = tempfile::tempdir().unwrap();
    let mut flags = node_flags(node.path());
    flags.extend([
        format!("--ncps-storage-s3-bucket={}", bucket.bucket),
        format!("--ncps-storage-s3-endpoint={}", bucket.endpoint),
        format!("--ncps-storage-s3-access-key-id={}", bucket.access_key),
        format!("--ncps-storage-s3-secret-access-key={}", bucket.secret_key),
        "--ncps-storage-s3-force-path-style".into(),
    ]);
    let (first, _) = import(&ncps, &flags, &[]);
    assert_eq!(first, summary(2, 0, 0, 0, 2, 0, "imported"));
    for p in [&fx.leaf, &fx.mid] {
        let key = StorageKey::parse(nar_url(&ncps.cache, p).trim_start_matches('/')).unwrap();
        let copied = std::fs::read(node.path().join(key.layout())).unwrap();
        assert_eq!(copied, std::fs::read(ncps.cache.join(key.as_str())).unwrap(), "{p}");
    }
}
