//! `spin.toml` at the repository root: it declares every variable the Spin
//! adapter reads, every template names a declared variable, and its build
//! command, run as written, makes the component its `source` names.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn manifest() -> toml::Table {
    let text = std::fs::read_to_string(root().join("spin.toml")).unwrap();
    text.parse().expect("spin.toml is TOML")
}

fn component(m: &toml::Table) -> &toml::Table {
    m["component"]["ncps-edge"].as_table().expect("component ncps-edge")
}

/// Variable names the adapter's sources read.
fn adapter_variables() -> BTreeSet<String> {
    let reads = regex::Regex::new(r#"\b(?:var|flag|number|list|required|write_verb)\("([a-z0-9_]+)""#).unwrap();
    let (mut names, mut folders) = (BTreeSet::new(), vec![root().join("spin-adapter/src")]);
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                let text = std::fs::read_to_string(&path).unwrap();
                names.extend(reads.captures_iter(&text).map(|c| c[1].to_owned()));
            }
        }
    }
    names
}

#[test]
fn spin_toml_declares_every_variable_the_adapter_reads() {
    let m = manifest();
    assert_eq!(m["spin_manifest_version"].as_integer(), Some(2));
    let app: BTreeSet<String> = m["variables"].as_table().unwrap().keys().cloned().collect();
    let given: BTreeSet<String> = component(&m)["variables"].as_table().unwrap().keys().cloned().collect();
    let read = adapter_variables();
    assert!(read.len() > 30, "the scan found {read:?}");
    let missing: Vec<_> = read.difference(&given).collect();
    assert!(missing.is_empty(), "the component is not given {missing:?}");
    let unused: Vec<_> = given.difference(&read).collect();
    assert!(unused.is_empty(), "the adapter never reads {unused:?}");
    // Every template names an application variable.
    let template = regex::Regex::new(r"\{\{\s*([a-z0-9_]+)\s*\}\}").unwrap();
    let text = std::fs::read_to_string(root().join("spin.toml")).unwrap();
    for c in template.captures_iter(&text) {
        assert!(app.contains(&c[1]), "{{{{ {} }}}} is not an application variable", &c[1]);
    }
    let hosts = component(&m)["allowed_outbound_hosts"].as_array().unwrap();
    for scheme in ["redis://", "postgres://", "mysql://"] {
        assert!(hosts.iter().any(|h| h.as_str().unwrap().starts_with(scheme)), "no {scheme} host allowed");
    }
}

#[test]
fn spin_toml_build_command_makes_the_component_it_runs() {
    let m = manifest();
    let c = component(&m);
    let command = c["build"]["command"].as_str().unwrap();
    let source = root().join(c["source"].as_str().unwrap());
    let _ = std::fs::remove_file(&source);
    // Its output captured, not inherited: the build's tools write to pipes
    // of their own, never to the test runner's.
    let out = std::process::Command::new("sh").arg("-c").arg(command).current_dir(root()).output().unwrap();
    assert!(out.status.success(), "`{command}` failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let composed = std::fs::read(&source).unwrap_or_else(|e| panic!("{} not made: {e}", source.display()));
    ncps_edge_spin_compose::check_world(&composed).expect("the built component runs on Spin 3.1+");
}

#[test]
fn the_spin_guide_documents_every_variable_and_its_files_parse() {
    let guide = std::fs::read_to_string(root().join("deploy/spin/README.md")).unwrap();
    let undocumented: Vec<String> =
        adapter_variables().into_iter().filter(|v| !guide.contains(&format!("`{v}`"))).collect();
    assert!(undocumented.is_empty(), "deploy/spin/README.md does not name {undocumented:?}");
    let config = std::fs::read_to_string(root().join("deploy/spin/runtime-config.toml")).unwrap();
    let config: toml::Table = config.parse().expect("the runtime config is TOML");
    assert_eq!(config["config_provider"][0]["type"].as_str(), Some("vault"));
    // The tier's store in memory: Spin's own store type without a file.
    let store = config["key_value_store"]["default"].as_table().expect("a default store");
    assert_eq!((store["type"].as_str(), store.get("path")), (Some("spin"), None));
    let check = root().join("deploy/spin/check.sh");
    let status = std::process::Command::new("bash").arg("-n").arg(&check).status().unwrap();
    assert!(status.success(), "{} does not parse", check.display());
}
