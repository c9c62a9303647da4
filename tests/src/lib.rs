//! Helpers for the end-to-end tests: Nix-made fixture caches, a fake
//! upstream serving them, the real `nix` client, and in-process nodes.
#![deny(missing_docs)]

pub mod cluster;
pub mod fixture;
pub mod fleet;
pub mod logs;
pub mod measure;
pub mod nix;
pub mod node;
pub mod process;
pub mod scenario;
pub mod scrape;
pub mod spin_host;
pub mod spin_up;
pub mod upstream;
