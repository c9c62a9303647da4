//! One checked configuration: every flag has an environment variable and a
//! `config.yaml` key, unknown keys are refused by name, an ncps config file
//! loads unchanged, `config check` masks secrets, relative paths work.

use std::process::Command;

use clap::Args as _;
use ncps_edge::config::yaml::{KEYS, NCPS_WITHOUT_EFFECT};
use ncps_edge::config::ServeArgs;

fn ncps_edge(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ncps-edge"))
        .current_dir(dir)
        .args(args)
        .env_clear()
        .output()
        .expect("running ncps-edge")
}

#[test]
fn every_flag_has_an_environment_variable_and_a_config_key() {
    let cmd = ServeArgs::augment_args(clap::Command::new("serve"));
    let mut checked = 0;
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if id == "config" {
            continue;
        }
        checked += 1;
        assert!(arg.get_env().is_some(), "--{} has no environment variable", arg.get_long().unwrap_or(id));
        assert!(KEYS.iter().any(|(_, flag)| *flag == id), "--{} has no config.yaml key", arg.get_long().unwrap_or(id));
    }
    assert!(checked >= 50, "walked only {checked} flags");
    for (key, id) in KEYS {
        assert!(cmd.get_arguments().any(|a| a.get_id() == id), "{key} names no flag ({id})");
        assert_eq!(KEYS.iter().filter(|(k, _)| k == key).count(), 1, "{key} twice");
    }
}

fn check(config: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), config).unwrap();
    ncps_edge(dir.path(), &["config", "check", "--config", "config.yaml"])
}

#[test]
fn unknown_keys_are_refused_with_the_closest_known_one() {
    let out = check("cache:\n  hostname: h\n  lock:\n    bakend: redis\n");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown key `cache.lock.bakend`") && stderr.contains("did you mean `cache.lock.backend`"),
        "{stderr}"
    );
    let out = check("cache:\n  hostname: h\nprometheus:\n  enabeld: true\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean `prometheus.enabled`"));
}

/// A config file in ncps's documented layout, with keys of features
/// ncps-edge does not have: it loads, and those are reported.
const NCPS_STYLE: &str = r#"
log:
  level: warn
analytics:
  reporting:
    enabled: false
opentelemetry:
  enabled: false
prometheus:
  enabled: true
server:
  addr: "127.0.0.1:18599"
cache:
  hostname: ncps.example.org
  allow-put-verb: false
  allow-delete-verb: false
  get-token: "reader-secret"
  database-url: "postgresql://ncps:dbsecret@db.example.org:5432/ncps"
  database:
    pool:
      max-open-conns: 20
      max-idle-conns: 4
  download:
    poll-timeout: 20s
  cdc:
    enabled: false
    min: 16384
  max-size: 50G
  lru:
    schedule: "0 3 * * *"
    timezone: Europe/Berlin
  sign-narinfo: true
  storage:
    local: ./data
    s3:
      bucket: ncps-cache
      endpoint: "https://s3.example.org"
      region: eu-central-1
      access-key-id: AKEXAMPLE
      secret-access-key: s3secret
      force-path-style: true
  temp-path: /tmp
  upstream:
    urls:
      - https://cache.nixos.org
    public-keys:
      - cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=
    dialer-timeout: 2s
    response-header-timeout: 4s
  redis:
    addrs:
      - "redis-a.example.org:6379"
    username: ""
    password: "redissecret"
    db: 0
    use-tls: false
    pool-size: 10
  lock:
    backend: postgres
    redis:
      key-prefix: "ncps:lock:"
    postgres:
      key-prefix: "edge:lock:"
    download-lock-ttl: 5m
    lru-lock-ttl: 30m
    retry:
      max-attempts: 3
      initial-delay: 100ms
      max-delay: 2s
      jitter: true
    allow-degraded-mode: false
"#;

#[test]
fn an_ncps_config_file_loads_and_secrets_are_masked() {
    let out = check(NCPS_STYLE);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    for want in [
        "cache.hostname: ncps.example.org",
        "cache.lock.backend: postgres",
        "cache.lock.postgres.key-prefix: edge:lock:",
        "cache.lru.timezone: Europe/Berlin",
        "cache.upstream.dialer-timeout: 2s",
        "cache.get-token: ****",
        "cache.redis.password: ****",
        "cache.storage.s3.secret-access-key: ****",
        "lock-backend: postgres (prefix \"edge:lock:\")",
        "storage: s3 bucket ncps-cache at https://s3.example.org",
        "`cache.cdc` is an ncps setting without effect",
        "`analytics` is an ncps setting without effect",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    for secret in ["reader-secret", "dbsecret", "s3secret", "redissecret"] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
    }
    assert!(stdout.contains("data-dir: /"), "relative storage path resolved:\n{stdout}");
}

#[test]
fn config_check_fails_on_problems() {
    for (config, want) in [
        ("cache:\n  hostname: h\n  lock:\n    backend: redis\n", "SQLite is not supported in HA mode"),
        ("cache:\n  hostname: h\n  lru:\n    timezone: Mars/Olympus\n", "--cache-lru-timezone"),
        ("cache:\n  hostname: h\n  upstream:\n    public-keys: [\"k:AAAA\"]\n", "valid ed25519 key"),
        ("cache:\n  hostname: h\n  max-size: 10Q\n", "unit must be"),
    ] {
        let out = check(config);
        assert!(!out.status.success(), "{config} passed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(want), "{config}: {stderr}");
    }
}

#[test]
fn environment_beats_the_file_and_flags_beat_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.yaml"), "cache:\n  hostname: from-file\n  priority: 30\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ncps-edge"))
        .current_dir(dir.path())
        .args(["config", "check", "--config=c.yaml", "--cache-priority=50"])
        .env_clear()
        .env("CACHE_HOSTNAME", "from-env")
        .env("CACHE_PRIORITY", "40")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("cache.hostname: from-env  # environment"), "{stdout}");
    assert!(stdout.contains("cache.priority: 50  # flag or config file"), "{stdout}");
}

#[test]
fn without_effect_list_names_only_ncps_keys() {
    for key in NCPS_WITHOUT_EFFECT {
        assert!(!KEYS.iter().any(|(k, _)| k.starts_with(key)), "{key} is both implemented and ignored");
    }
}

#[test]
fn version_names_the_handler_hash() {
    let out = ncps_edge(std::path::Path::new("/"), &["--version"]);
    let version = String::from_utf8_lossy(&out.stdout);
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(ncps_edge::HANDLER_WASM).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(version.trim(), format!("ncps-edge {} (handler sha256:{hash})", env!("CARGO_PKG_VERSION")));
}

#[test]
fn keygen_writes_a_working_key_pair() {
    let dir = tempfile::tempdir().unwrap();
    let out = ncps_edge(dir.path(), &["keygen", "edge-1", "--secret-key-file", "sk", "--public-key-file", "pk"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let secret = std::fs::read_to_string(dir.path().join("sk")).unwrap();
    let public = std::fs::read_to_string(dir.path().join("pk")).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(dir.path().join("sk")).unwrap().permissions().mode() & 0o777, 0o600);
    let signer = ncps_edge_host_services::signer::Signer::parse(&secret).unwrap();
    assert_eq!(signer.public_key(), public.trim());
    assert!(public.starts_with("edge-1:"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), public.trim(), "stdout has the public key only");
    let again = ncps_edge(dir.path(), &["keygen", "edge-1", "--secret-key-file", "sk"]);
    assert!(!again.status.success(), "overwrote an existing secret key");
}
