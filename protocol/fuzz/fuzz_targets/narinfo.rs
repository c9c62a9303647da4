//! Any text: parsing never panics, and what parses renders to a narinfo
//! that parses to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ncps_edge_protocol::narinfo::NarInfo;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(info) = NarInfo::parse(text) {
        let again = NarInfo::parse(&info.render()).expect("a rendered narinfo parses");
        assert_eq!(again, info);
        let _ = info.fingerprint();
    }
});
