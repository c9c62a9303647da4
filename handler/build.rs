//! The link settings of a component that runs as a fresh instance per
//! request: the handler's, and the Spin adapter's (`spin-adapter/build.rs`
//! links to this file). What an instance's linear memory holds at start is
//! reset after every request. Rust's default shadow stack for wasm is
//! 1 MiB, most of it never touched; a smaller one makes the initial memory
//! (and what the host resets and keeps resident per instance slot) a
//! fraction of that.

/// Shadow stack of the component's linear memory, bytes.
const STACK_SIZE: usize = 256 << 10;
/// Linear memory at start: the stack, the data, and room for what a
/// request allocates, so that most requests never grow it (a grow changes
/// the host's page protections, which costs more than the memory).
const INITIAL_MEMORY: usize = 640 << 10;

fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg-cdylib=-zstack-size={STACK_SIZE}");
        println!("cargo:rustc-link-arg-cdylib=--initial-memory={INITIAL_MEMORY}");
    }
}
