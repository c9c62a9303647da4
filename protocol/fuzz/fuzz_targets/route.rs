//! Any request path: a NAR route's storage key stays under `nar/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ncps_edge_protocol::route::{parse, Route};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    if let Ok(Route::Nar(nar)) = parse(path) {
        let key = nar.key();
        assert!(key.starts_with("nar/") && !key[4..].contains('/') && !key.contains(".."), "{path:?} -> {key}");
    }
});
