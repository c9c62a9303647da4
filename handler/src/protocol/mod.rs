//! The Nix binary-cache protocol, free of any host: hashes in Nix's
//! notations, narinfo files and their fingerprints, ed25519 signatures,
//! request paths and byte ranges. Unit-tested natively.

pub mod auth;
pub mod hash;
pub mod narinfo;
pub mod range;
pub mod route;
pub mod signature;
