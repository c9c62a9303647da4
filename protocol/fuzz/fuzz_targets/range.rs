//! Any `Range` header against any size: a part lies inside the object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ncps_edge_protocol::range::{parse, Range};

fuzz_target!(|input: (&str, u64)| {
    let (header, size) = input;
    if let Range::Part { first, last } = parse(Some(header), size) {
        assert!(first <= last && last < size);
    }
});
