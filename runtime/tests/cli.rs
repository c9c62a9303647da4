//! The `ncps-edge` binary's command line.

use std::process::Command;

fn ncps_edge(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ncps-edge")).args(args).output().expect("running ncps-edge")
}

#[test]
fn serve_help_lists_ncps_flags() {
    let out = ncps_edge(&["serve", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--cache-hostname",
        "--cache-upstream-url",
        "--cache-lock-backend",
        "--cache-redis-addrs",
        "--cache-max-size",
        "--prometheus-enabled",
    ] {
        assert!(help.contains(flag), "{flag} missing from help");
    }
}

#[test]
fn missing_hostname_is_a_clear_error() {
    let out = ncps_edge(&["serve"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cache-hostname"));
}

#[test]
fn bad_flags_are_refused_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("--cache-storage-local={}", dir.path().display());
    for (args, want) in [
        (vec!["--cache-upstream-url=ftp://x"], "must be http:// or https://"),
        (vec!["--cache-upstream-public-key=nokey"], "is not <name>:<base64 of a valid ed25519 key>"),
        (vec!["--cache-lock-backend=postgres"], "SQLite is not supported in HA mode"),
        (vec!["--cache-database-url=oracle://x"], "use sqlite:<path>"),
        (vec!["--cache-max-size=12Q"], "unit must be"),
        (vec!["--cache-upstream-url=http://127.0.0.1:1"], "--cache-upstream-allow-unsigned"),
        (vec!["--cache-allow-put-verb"], "--cache-allow-put-verb without --cache-put-token"),
        (
            vec!["--cache-allow-delete-verb", "--cache-put-token=x"],
            "--cache-allow-delete-verb without --cache-delete-token",
        ),
    ] {
        let mut all = vec!["serve", "--cache-hostname=h", "--server-addr=127.0.0.1:0", storage.as_str()];
        all.extend(args.iter());
        let out = ncps_edge(&all);
        assert!(!out.status.success(), "{args:?} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

/// With no `--cache-storage-local`, every path is relative to the working
/// directory (`./ncps-edge-data`, its SQLite file, the compiled-code
/// cache): a node started in an empty folder must serve.
#[test]
fn serve_works_from_an_empty_folder_with_relative_defaults() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ncps-edge"))
        .current_dir(dir.path())
        .args(["serve", "--cache-hostname=h", &format!("--server-addr=127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let answer = loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!("ncps-edge exited with {status}: {err}");
        }
        if let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            conn.write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let mut text = String::new();
            conn.read_to_string(&mut text).unwrap();
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "no answer");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("StoreDir: /nix/store"), "{answer}");
    assert!(dir.path().join("ncps-edge-data/db/db.sqlite").exists());
    assert!(dir.path().join("ncps-edge-data/wasm-cache").is_dir());
}

/// `ncps-edge fsck` with a node's settings: a dry run reports an orphaned
/// object, a real run deletes it, the next run finds nothing.
#[test]
fn fsck_reports_then_mends_an_orphan() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = format!("{}.nar.xz", "1".repeat(52));
    let orphan = data.join("store/nar/1/11").join(&file);
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"nothing accounts for this").unwrap();
    let storage = format!("--cache-storage-local={}", data.display());
    let run = |extra: &[&str]| {
        let mut args = vec!["fsck", "--cache-hostname=h", storage.as_str()];
        args.extend_from_slice(extra);
        let out = ncps_edge(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
        report
    };
    assert_eq!(run(&["--dry-run"])["orphans"], 1);
    assert!(orphan.exists(), "a dry run deleted it");
    assert_eq!(run(&[])["orphans"], 1);
    assert!(!orphan.exists(), "the orphan is still there");
    assert_eq!(run(&[])["orphans"], 0);
}
