//! Any hash string: parsing never panics, and a parsed hash prints back to
//! a string that parses to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ncps_edge_protocol::hash::Sha256;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(h) = Sha256::parse(text) {
        assert_eq!(Sha256::parse(&h.to_nix_string()), Ok(h));
        assert_eq!(Sha256::from_nix32(&h.to_nix32()), Some(h));
    }
    let _ = Sha256::from_nix32(text);
});
