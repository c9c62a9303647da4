//! The deploy kits, each checked with the tool of its ecosystem that runs
//! offline here: the systemd unit with `systemd-analyze verify`, the NixOS
//! module with `nix-instantiate`, the Kubernetes manifests with
//! `kubernetes-validate`, the compose file against the compose
//! specification (`check-jsonschema`), the container build file with
//! BuildKit's parser (`dockerfile`); every configuration with
//! `ncps-edge config check`; every metric the Grafana dashboard and the
//! alert rules query exists on `/metrics`. The Python tools come from the
//! virtualenv `.ci/run` makes (`NCPS_TEST_TOOLS`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ncps_edge_tests::fixture::{fixture, hash_of, nar_url};
use ncps_edge_tests::nix::NixEnv;
use ncps_edge_tests::node::{start_node, upstream_flags};
use ncps_edge_tests::upstream::FakeUpstream;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

/// A Python tool of the test virtualenv (or on PATH).
fn tool(name: &str) -> PathBuf {
    let dirs = std::env::var_os("NCPS_TEST_TOOLS").into_iter().chain(std::env::var_os("PATH"));
    dirs.flat_map(|d| std::env::split_paths(&d).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} missing: .ci/run installs it (NCPS_TEST_TOOLS=<venv>/bin)"))
}

fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
    Command::new(program.as_ref()).args(args).output().unwrap_or_else(|e| panic!("{:?}: {e}", program.as_ref()))
}

fn ok(out: &Output, what: &str) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(deploy("systemd/ncps-edge.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bin = ncps_edge_tests::process::binary();
    let path = dir.path().join("ncps-edge.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/ncps-edge", &bin.display().to_string())).unwrap();
    let out = run("systemd-analyze", &["verify", "--man=no", path.to_str().unwrap()]);
    let text = ok(&out, "systemd-analyze verify");
    assert!(text.trim().is_empty(), "systemd-analyze warns:\n{text}");
    for hardening in [
        "DynamicUser=yes",
        "StateDirectory=ncps-edge",
        "CapabilityBoundingSet=\n",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "Restart=on-failure",
    ] {
        assert!(unit.contains(hardening), "{hardening} missing");
    }
    // The control: a unit with an unknown key is reported.
    std::fs::write(
        &path,
        format!("{}\nBogusKey=1\n", unit.replace("/usr/local/bin/ncps-edge", &bin.display().to_string())),
    )
    .unwrap();
    let bad = run("systemd-analyze", &["verify", "--man=no", path.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("BogusKey"));
}

#[test]
fn nixos_module_parses_and_evaluates() {
    let env = NixEnv::new();
    for file in ["nixos/module.nix", "nixos/client.nix", "nixos/check.nix"] {
        env.run("nix-instantiate", &["--parse", deploy(file).to_str().unwrap()]);
    }
    let json =
        env.run("nix-instantiate", &["--eval", "--strict", "--json", deploy("nixos/check.nix").to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let options: Vec<&str> = v["options"].as_array().unwrap().iter().filter_map(|o| o.as_str()).collect();
    for option in ["enable", "package", "settings", "secretKeyFile", "environmentFile", "openFirewall", "clientSnippet"]
    {
        assert!(options.contains(&option), "option {option} missing: {options:?}");
    }
    let exec = v["ExecStart"].as_str().unwrap();
    assert!(
        exec.contains("/bin/ncps-edge serve --config /nix/store/")
            && exec.contains("--cache-secret-key-path %d/secret-key"),
        "{exec}"
    );
    assert_eq!(v["LoadCredential"][0], "secret-key:/run/keys/ncps-edge.sk");
    assert_eq!(v["DynamicUser"], true);
    assert_eq!(v["ports"][0], 8501);
    assert!(v["clientSnippet"].as_str().unwrap().contains("substituters = http://cache.example.org:8501"));
    assert_eq!(v["substituters"][0], "http://cache.example.org:8501");
}

#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let mut files: Vec<String> = Vec::new();
    for dir in ["kubernetes", "kubernetes/multi-region"] {
        for e in std::fs::read_dir(deploy(dir)).unwrap().flatten() {
            if e.path().extension().is_some_and(|x| x == "yaml") {
                files.push(e.path().display().to_string());
            }
        }
    }
    assert!(files.len() >= 7, "{files:?}");
    let mut args = vec!["--strict"];
    args.extend(files.iter().map(String::as_str));
    let text = ok(&run(tool("kubernetes-validate"), &args), "kubernetes-validate");
    for kind in [
        "deployment/ncps-edge",
        "service/ncps-edge",
        "poddisruptionbudget/ncps-edge",
        "configmap/ncps-edge",
        "secret/ncps-edge",
    ] {
        assert!(text.contains(&format!("passed for resource {kind}")), "{kind} not validated:\n{text}");
    }
    // The control: a Deployment with a misspelt field is refused.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let deployment = std::fs::read_to_string(deploy("kubernetes/deployment.yaml")).unwrap();
    std::fs::write(&bad, deployment.replace("readinessProbe:", "readinesProbe:")).unwrap();
    assert!(!run(tool("kubernetes-validate"), &["--strict", bad.to_str().unwrap()]).status.success());
}

#[test]
fn compose_file_follows_the_compose_specification() {
    let schema = ["--builtin-schema", "vendor.compose-spec"];
    let file = deploy("compose/compose.yaml");
    let mut args = schema.to_vec();
    args.push(file.to_str().unwrap());
    ok(&run(tool("check-jsonschema"), &args), "check-jsonschema (compose)");
    let text = std::fs::read_to_string(&file).unwrap();
    for service in ["eu:", "us:", "ap:", "redis:", "postgres:", "minio:"] {
        assert!(text.contains(&format!("\n  {service}")), "{service} missing");
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("compose.yaml");
    std::fs::write(&bad, text.replace("restart: unless-stopped", "restart: [sometimes]")).unwrap();
    let mut args = schema.to_vec();
    args.push(bad.to_str().unwrap());
    assert!(!run(tool("check-jsonschema"), &args).status.success(), "a broken compose file passed");
}

#[test]
fn container_build_file_is_multi_stage_and_non_root() {
    let script = r#"
import json, sys, dockerfile
print(json.dumps([[c.cmd, list(c.value), list(c.flags)] for c in dockerfile.parse_file(sys.argv[1])]))
"#;
    let out = run(tool("python3"), &["-c", script, deploy("container/Containerfile").to_str().unwrap()]);
    let parsed: Vec<(String, Vec<String>, Vec<String>)> = serde_json::from_str(&ok(&out, "dockerfile parser")).unwrap();
    let cmds: Vec<&str> = parsed.iter().map(|(c, _, _)| c.as_str()).collect();
    assert_eq!(cmds.iter().filter(|c| **c == "FROM").count(), 2, "{cmds:?}");
    assert!(
        parsed.iter().any(|(c, _, flags)| c == "COPY" && flags.iter().any(|f| f == "--from=build")),
        "binary not copied from the build stage"
    );
    let user = parsed.iter().rev().find(|(c, _, _)| c == "USER").expect("a USER");
    assert!(!user.1[0].starts_with("0") && !user.1[0].starts_with("root"), "runs as root: {user:?}");
    let rust = parsed.iter().find(|(c, _, _)| c == "FROM").unwrap();
    assert!(
        rust.1[0].contains(&format!("rust:{}", env!("CARGO_PKG_RUST_VERSION"))),
        "{rust:?} is not the project's Rust"
    );
    assert!(
        parsed.iter().any(|(c, v, _)| c == "RUN" && v[0].contains("wasm32-wasip2")),
        "the handler's target is not installed"
    );
}

/// `ncps-edge config check` of `config` with `env`.
fn config_check(config: &str, env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.yaml"), config).unwrap();
    let out = Command::new(ncps_edge_tests::process::binary())
        .current_dir(dir.path())
        .args(["config", "check", "--config", "config.yaml"])
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    ok(&out, "config check");
}

#[test]
fn every_shipped_configuration_checks() {
    config_check(&std::fs::read_to_string(deploy("config.example.yaml")).unwrap(), &[]);
    let secrets = [
        ("CACHE_DATABASE_URL", "postgresql://ncps:x@postgres:5432/ncps"),
        ("CACHE_STORAGE_S3_ACCESS_KEY_ID", "AK"),
        ("CACHE_STORAGE_S3_SECRET_ACCESS_KEY", "SK"),
    ];
    let mut configs = vec![std::fs::read_to_string(deploy("kubernetes/configmap.yaml")).unwrap()];
    for region in ["eu-west", "us-east"] {
        configs.push(std::fs::read_to_string(deploy(&format!("kubernetes/multi-region/{region}.yaml"))).unwrap());
    }
    for manifest in configs {
        let start =
            manifest.find("config.yaml: |\n").expect("a config.yaml in the ConfigMap") + "config.yaml: |\n".len();
        let block: String = manifest[start..]
            .lines()
            .take_while(|l| l.starts_with("    ") || l.is_empty())
            .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
            .collect();
        config_check(&block, &secrets);
    }
}

/// Metric names (families) the node exports, from a live `/metrics` after
/// a miss (histograms show up with their first observation).
async fn exported() -> Vec<String> {
    let fx = fixture();
    let up = FakeUpstream::start(fx.cache("none")).await;
    let mut flags = upstream_flags(&up.url(), &fx.public_key);
    flags.push("--prometheus-enabled".into());
    let node = start_node(&flags).await;
    let c = reqwest::Client::new();
    c.get(format!("{}/{}.narinfo", node.url(), hash_of(&fx.leaf))).send().await.unwrap().bytes().await.unwrap();
    let nar = c.get(format!("{}{}", node.url(), nar_url(&fx.cache("none"), &fx.leaf))).send().await.unwrap();
    nar.bytes().await.unwrap();
    let text = c.get(format!("{}/metrics", node.url())).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// `ncps_…` names an expression uses, each resolved to its family.
fn families(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("ncps_") {
        let name: String = rest[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[i + name.len()..];
        let family = ["_bucket", "_count", "_sum", "_total"]
            .iter()
            .fold(name.clone(), |n, s| n.strip_suffix(s).map(str::to_owned).unwrap_or(n));
        out.push(family);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alerts_query_only_exported_metrics() {
    let exported = exported().await;
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/ncps-edge.json")).unwrap()).unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()))
        .collect();
    let dashboard_exprs = exprs.len();
    let alerts: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(deploy("prometheus/alerts.yaml")).unwrap()).unwrap();
    for group in alerts["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            assert!(rule["alert"].as_str().is_some() && rule["labels"]["severity"].as_str().is_some(), "{rule:?}");
            exprs.push(rule["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(dashboard_exprs >= 12 && exprs.len() > dashboard_exprs + 4);
    let mut used = Vec::new();
    for expr in &exprs {
        for family in families(expr) {
            assert!(exported.contains(&family), "{family} (in {expr}) is not on /metrics: {exported:?}");
            used.push(family);
        }
    }
    for wanted in [
        "ncps_narinfo_served",
        "ncps_upstream_fetch_duration_seconds",
        "ncps_lock_hold_duration_seconds",
        "ncps_lock_failures",
        "ncps_lock_retry_attempts",
        "ncps_store_size_bytes",
        "ncps_store_max_size_bytes",
        "ncps_lru_runs",
        "ncps_component_instantiation_seconds",
    ] {
        assert!(used.iter().any(|u| u == wanted), "the dashboard and alerts do not show {wanted}");
    }
}
