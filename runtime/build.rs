//! Builds the handler component and the Spin adapter (`wasm32-wasip2`,
//! release) so that `cargo build`/`cargo run`/`cargo test` need no manual
//! step. The nested cargo uses its own target directory under OUT_DIR
//! (sharing the outer one would deadlock on cargo's build lock).

use std::path::PathBuf;
use std::process::Command;

use sha2::Digest as _;

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("workspace root").to_path_buf();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target_dir = out_dir.join("handler-target");
    for watched in [
        "handler/src",
        "handler/Cargo.toml",
        "handler/testdata",
        "wit",
        "Cargo.lock",
        "spin-adapter/src",
        "spin-adapter/wit",
        "spin-adapter/Cargo.toml",
        // Files the adapter shares with host-services.
        "host-services/src/storage/layout.rs",
        "host-services/src/metadata/postgres_sql.rs",
        "host-services/src/metadata/mysql_sql.rs",
        "host-services/src/locks/redis_scripts",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
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
    let wasm = target_dir.join("wasm32-wasip2/release/ncps_edge_handler.wasm");
    let bytes = std::fs::read(&wasm).unwrap_or_else(|e| panic!("handler component missing at {}: {e}", wasm.display()));
    println!("cargo:rustc-env=NCPS_EDGE_HANDLER_WASM={}", wasm.display());
    let adapter = target_dir.join("wasm32-wasip2/release/ncps_edge_spin_adapter.wasm");
    println!("cargo:rustc-env=NCPS_EDGE_SPIN_ADAPTER_WASM={}", adapter.display());
    let digest = sha2::Sha256::digest(&bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=NCPS_EDGE_HANDLER_SHA256={hex}");
}
