//! Thin wrappers over the host's imports: `wasi:http` requests, responses
//! and bodies, upstream requests, logging and clocks.

pub mod http;
pub mod logging;
pub mod time;
pub mod upstream;
