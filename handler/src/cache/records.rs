//! Conversions between parsed narinfos and the metadata records.

use crate::bindings::ncps::edge::metadata::NarinfoRecord;
use crate::protocol::hash::Sha256;
use crate::protocol::narinfo::NarInfo;

/// The record of `info` under store-path hash `hash`.
pub fn to_record(hash: &str, info: &NarInfo) -> NarinfoRecord {
    NarinfoRecord {
        hash: hash.to_owned(),
        store_path: info.store_path.clone(),
        url: info.url.clone(),
        compression: info.compression.clone(),
        file_hash: info.file_hash.map(|h| h.to_nix_string()),
        file_size: info.file_size,
        nar_hash: info.nar_hash.to_nix_string(),
        nar_size: info.nar_size,
        references: info.references.clone(),
        deriver: info.deriver.clone(),
        system: info.system.clone(),
        ca: info.ca.clone(),
        sigs: info.sigs.clone(),
    }
}

/// The narinfo of a stored record; `None` when the stored hashes are corrupt.
pub fn from_record(r: NarinfoRecord) -> Option<NarInfo> {
    Some(NarInfo {
        store_path: r.store_path,
        url: r.url,
        compression: r.compression,
        file_hash: match r.file_hash {
            Some(h) => Some(Sha256::parse(&h).ok()?),
            None => None,
        },
        file_size: r.file_size,
        nar_hash: Sha256::parse(&r.nar_hash).ok()?,
        nar_size: r.nar_size,
        references: r.references,
        deriver: r.deriver,
        system: r.system,
        ca: r.ca,
        sigs: r.sigs,
    })
}
