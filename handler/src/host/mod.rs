//! Thin wrappers over the host's imports: `wasi:http` requests, responses
//! and bodies, upstream requests, the edge tier, logging and clocks.

pub mod edge;
pub mod http;
pub mod logging;
pub mod time;
pub mod upstream;
