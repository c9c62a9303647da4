//! Builds the handler component and the Spin adapter (`wasm32-wasip2`,
//! release) so that `cargo build`/`cargo run`/`cargo test` need no manual
//! step. The nested cargo uses a target directory of its own (sharing the
//! outer one would deadlock on cargo's build lock): `spin/build` in the
//! workspace's target folder, the one `spin.toml`'s build command names, so
//! a debug build, a release build and `spin build` make the two components
//! once between them.

use std::path::PathBuf;
use std::process::Command;

use sha2::Digest as _;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("workspace root").to_path_buf();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target_dir = components_target_dir(&root);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "--target", "wasm32-wasip2", "-p", "ncps-edge-handler"])
        .args(["-p", "ncps-edge-spin-adapter", "--target-dir"])
        .arg(&target_dir);
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo to build the handler");
    assert!(
        status.success(),
        "building the handler and the Spin adapter failed (is the target installed? `rustup target add wasm32-wasip2`)"
    );
    let release = target_dir.join("wasm32-wasip2/release");
    // Rebuild when any file the two components were built from changes: the
    // nested build's own dep-info names them (their crates, the shared
    // crates they depend on, the WIT), so no list is kept here by hand.
    println!("cargo:rerun-if-changed={}", root.join("Cargo.lock").display());
    let mut watched = std::collections::BTreeSet::new();
    for component in ["ncps_edge_handler", "ncps_edge_spin_adapter"] {
        for source in sources_of(&release.join(format!("{component}.d")), &root) {
            // The manifest of the crate the source belongs to, and its build
            // script if it has one, too.
            if let Some(dir) = source.ancestors().find(|d| d.join("Cargo.toml").is_file()) {
                watched.insert(dir.join("Cargo.toml"));
                watched.extend(Some(dir.join("build.rs")).filter(|b| b.is_file()));
            }
            watched.insert(source);
        }
    }
    for path in watched {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    // This build's own copies: a later build into the shared folder (another
    // profile, `spin build`) never changes what this one embeds or names.
    let [(wasm, bytes), (adapter, _)] = ["ncps_edge_handler.wasm", "ncps_edge_spin_adapter.wasm"].map(|name| {
        let (built, copy) = (release.join(name), out_dir.join(name));
        let bytes = std::fs::read(&built).unwrap_or_else(|e| panic!("component missing at {}: {e}", built.display()));
        std::fs::write(&copy, &bytes).unwrap_or_else(|e| panic!("writing {}: {e}", copy.display()));
        (copy, bytes)
    });
    println!("cargo:rustc-env=NCPS_EDGE_HANDLER_WASM={}", wasm.display());
    println!("cargo:rustc-env=NCPS_EDGE_SPIN_ADAPTER_WASM={}", adapter.display());
    let digest = sha2::Sha256::digest(&bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=NCPS_EDGE_HANDLER_SHA256={hex}");
}

/// `spin/build` under `CARGO_TARGET_DIR` when that is an absolute path,
/// else under the workspace's `target` (a relative one is relative to where
/// cargo was started, which a build script is not told).
fn components_target_dir(root: &std::path::Path) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).filter(|d| d.is_absolute());
    target.unwrap_or_else(|| root.join("target")).join("spin/build")
}

/// The workspace files a dep-info file (`<output>: <source> <source> …`)
/// lists; registry sources never change and are left out.
fn sources_of(dep_info: &std::path::Path, root: &std::path::Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(dep_info)
        .unwrap_or_else(|e| panic!("dep-info of the nested build missing at {}: {e}", dep_info.display()));
    let Some((_, sources)) = text.lines().next().and_then(|l| l.split_once(": ")) else { return Vec::new() };
    // Paths are separated by spaces; a space inside one is escaped.
    let escaped = sources.replace("\\ ", "\0");
    escaped
        .split_whitespace()
        .map(|p| PathBuf::from(p.replace('\0', " ")))
        .filter(|p| p.starts_with(root) && !p.starts_with(root.join("target")))
        .collect()
}
