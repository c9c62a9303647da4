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
        (vec!["--cache-upstream-public-key=nokey"], "is not <name>:<base64 ed25519 key>"),
        (vec!["--cache-lock-backend=postgres"], "SQLite is not supported in HA mode"),
        (vec!["--cache-database-url=oracle://x"], "use sqlite:<path>"),
        (vec!["--cache-max-size=12Q"], "unit must be"),
    ] {
        let mut all = vec!["serve", "--cache-hostname=h", "--server-addr=127.0.0.1:0", storage.as_str()];
        all.extend(args.iter());
        let out = ncps_edge(&all);
        assert!(!out.status.success(), "{args:?} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}
