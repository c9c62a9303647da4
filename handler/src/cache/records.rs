//! Conversions between parsed narinfos and the metadata records.

use crate::bindings::ncps::edge::metadata::NarinfoRecord;
use crate::protocol::narinfo::{Fields, NarInfo};
use crate::protocol::narinfo_fields;

/// The record of `info` under store-path hash `hash`.
pub fn to_record(hash: &str, info: &NarInfo) -> NarinfoRecord {
    narinfo_fields!(NarinfoRecord { hash: hash.to_owned() } from info.to_fields())
}

/// The narinfo of a stored record; `None` when the stored fields are corrupt.
pub fn from_record(r: NarinfoRecord) -> Option<NarInfo> {
    NarInfo::from_fields(narinfo_fields!(Fields {} from r)).ok()
}
