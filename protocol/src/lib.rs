//! The Nix binary-cache protocol as ncps-edge speaks it, free of any host:
//! hashes in Nix's notations, narinfo files and their fingerprints, ed25519
//! signatures, request paths, byte ranges and credentials. The guest
//! (`handler`), the runtime's edge tier and import, and the fuzz targets
//! all use this one copy, so they parse every request and narinfo alike.
#![deny(missing_docs)]

pub mod auth;
pub mod hash;
pub mod narinfo;
pub mod range;
pub mod route;
pub mod signature;
pub mod timing;
