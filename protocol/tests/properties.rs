//! Property tests of the protocol parsers: whatever the input, they never
//! panic, what they accept round-trips, and no request path can name a
//! storage key outside `nar/`.

use ncps_edge_protocol::hash::{is_nix32, Sha256};
use ncps_edge_protocol::narinfo::{NarInfo, MAX_SIZE};
use ncps_edge_protocol::range::{self, Range};
use ncps_edge_protocol::route::{self, Route};
use proptest::prelude::*;

const NIX32: &str = "0123456789abcdfghijklmnpqrsvwxyz";

fn nix32(len: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::sample::select(NIX32.chars().collect::<Vec<_>>()), len)
        .prop_map(|c| c.into_iter().collect())
}

fn base_name() -> impl Strategy<Value = String> {
    (nix32(32), "[a-zA-Z0-9+_?=-][a-zA-Z0-9+._?=-]{0,40}").prop_map(|(h, n)| format!("{h}-{n}"))
}

fn digest() -> impl Strategy<Value = Sha256> {
    proptest::array::uniform32(any::<u8>()).prop_map(Sha256)
}

prop_compose! {
    fn narinfo()(
        base in base_name(),
        file in digest(),
        compression in proptest::sample::select(vec!["none", "xz", "zstd", "bzip2"]),
        file_size in proptest::option::of(0..=MAX_SIZE),
        nar_hash in digest(),
        nar_size in 0..=MAX_SIZE,
        references in proptest::collection::vec(base_name(), 0..5),
        deriver in proptest::option::of(base_name()),
        system in proptest::option::of("[a-z0-9_-]{1,20}"),
        sigs in proptest::collection::vec("[a-z0-9.-]{1,20}:[A-Za-z0-9+/]{86}==", 0..3),
        ca in proptest::option::of("fixed:r:sha256:[0-9a-z]{52}"),
    ) -> NarInfo {
        NarInfo {
            store_path: format!("/nix/store/{base}"),
            url: format!("nar/{}.nar", file.to_nix32()),
            compression: compression.to_owned(),
            file_hash: Some(file),
            file_size,
            nar_hash,
            nar_size,
            references,
            deriver,
            system,
            ca,
            sigs,
        }
    }
}

proptest! {
    #[test]
    fn narinfos_round_trip(info in narinfo()) {
        let text = info.render();
        let parsed = NarInfo::parse(&text).expect("a rendered narinfo parses");
        prop_assert_eq!(&parsed, &info);
        prop_assert_eq!(parsed.render(), text);
        prop_assert_eq!(parsed.fingerprint(), info.fingerprint());
    }

    #[test]
    fn narinfo_parsing_never_panics(text in "(\\PC{0,40}\n){0,20}") {
        if let Ok(info) = NarInfo::parse(&text) {
            // Whatever it accepts is a valid store path with valid references.
            prop_assert!(info.store_path.starts_with("/nix/store/"));
            prop_assert_eq!(info.hash().len(), 32);
            prop_assert!(NarInfo::parse(&info.render()).is_ok());
        }
    }

    #[test]
    fn no_path_names_a_key_outside_nar(path in "(/|upload/|nar/|\\.\\./|%2e|[a-z0-9.]{1,60}){0,8}") {
        let path = format!("/{path}");
        match route::parse(&path) {
            Ok(Route::Nar(nar)) => {
                let key = nar.key();
                prop_assert!(key.starts_with("nar/"), "{key}");
                let file = &key[4..];
                prop_assert!(!file.contains('/') && !file.contains(".."), "{key}");
                prop_assert!(is_nix32(&nar.hash) && (nar.hash.len() == 32 || nar.hash.len() == 52));
            }
            Ok(Route::Narinfo(hash)) => prop_assert!(hash.len() == 32 && is_nix32(&hash)),
            _ => {}
        }
    }

    #[test]
    fn near_miss_nar_paths_stay_inside_nar(
        pre in proptest::sample::select(vec!["/", "/upload/", "//", "/nar/../", "/%2e%2e/", "/upload/../"]),
        hash in prop_oneof![nix32(32), nix32(52), nix32(51), "[a-z./%]{1,60}"],
        ext in proptest::sample::select(vec!["", ".xz", ".zst", ".exe", "/../x", ".xz/..", "%2f.."]),
        post in proptest::sample::select(vec!["", "?x=1", "#f", "/", "/../../etc/passwd"]),
    ) {
        let path = format!("{pre}nar/{hash}.nar{ext}{post}");
        if let Ok(Route::Nar(nar)) = route::parse(&path) {
            let key = nar.key();
            prop_assert!(key.starts_with("nar/") && !key[4..].contains('/') && !key.contains(".."), "{path} -> {key}");
        }
    }

    #[test]
    fn ranges_stay_inside_the_object(header in "(bytes=)?[0-9]{0,6}-?[0-9]{0,6}(,[0-9]{1,3}-)?", size in 0u64..1_000_000) {
        match range::parse(Some(&header), size) {
            Range::Part { first, last } => {
                prop_assert!(first <= last && last < size, "{header} {size}: {first}-{last}");
                prop_assert_eq!(Range::Part { first, last }.length(size), last - first + 1);
            }
            Range::Whole | Range::Unsatisfiable => {}
        }
    }

    #[test]
    fn nix32_round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
        let h = Sha256(bytes);
        let s = h.to_nix32();
        prop_assert_eq!(s.len(), 52);
        prop_assert!(is_nix32(&s));
        prop_assert_eq!(Sha256::from_nix32(&s), Some(h));
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        prop_assert_eq!(Sha256::parse(&format!("sha256:{hex}")), Ok(h));
        prop_assert_eq!(Sha256::parse(&h.to_nix_string()), Ok(h));
    }
}
