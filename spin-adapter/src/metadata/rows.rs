//! Rows and parameters: the conversions between the records of the
//! `ncps:edge/metadata` interface and what Spin's database APIs take and
//! give.

use crate::bindings::exports::ncps::edge::metadata::{NarRecord, NarinfoRecord};
use crate::bindings::fermyon::spin::rdbms_types::{DbValue, ParameterValue as P, RowSet};
use crate::error::{Error, Result};

pub(super) fn text(v: &str) -> P {
    P::Str(v.to_owned())
}

pub(super) fn opt_text(v: &Option<String>) -> P {
    v.as_deref().map_or(P::DbNull, text)
}

/// A size as every database stores it (signed 64-bit): a larger one is
/// refused, never wrapped into another number.
pub(super) fn opt_int(v: Option<u64>) -> Result<P> {
    match v {
        None => Ok(P::DbNull),
        Some(v) => i64::try_from(v)
            .map(P::Int64)
            .map_err(|_| Error::Invalid(format!("size {v} does not fit a database integer"))),
    }
}

/// Text of column `i` (MySQL may answer text as bytes).
pub fn str_at(row: &[DbValue], i: usize) -> Option<String> {
    match row.get(i) {
        Some(DbValue::Str(s)) => Some(s.clone()),
        Some(DbValue::Binary(b)) => String::from_utf8(b.clone()).ok(),
        _ => None,
    }
}

/// Integer of column `i`.
pub fn int_at(row: &[DbValue], i: usize) -> Option<i64> {
    match row.get(i) {
        Some(DbValue::Int64(v)) => Some(*v),
        Some(DbValue::Int32(v)) => Some(i64::from(*v)),
        Some(DbValue::Int16(v)) => Some(i64::from(*v)),
        Some(DbValue::Int8(v)) => Some(i64::from(*v)),
        Some(DbValue::Uint64(v)) => i64::try_from(*v).ok(),
        Some(DbValue::Uint32(v)) => Some(i64::from(*v)),
        _ => None,
    }
}

/// Integer of the first column of the first row.
pub fn first_int(rows: &RowSet) -> Option<i64> {
    rows.rows.first().and_then(|r| int_at(r, 0))
}

fn split(v: Option<String>, sep: char) -> Vec<String> {
    v.map(|v| v.split(sep).filter(|s| !s.is_empty()).map(str::to_owned).collect()).unwrap_or_default()
}

fn unsigned(v: Option<i64>) -> Option<u64> {
    v.map(|v| v.max(0) as u64)
}

pub(super) fn narinfo(r: &[DbValue]) -> NarinfoRecord {
    NarinfoRecord {
        hash: str_at(r, 0).unwrap_or_default(),
        store_path: str_at(r, 1).unwrap_or_default(),
        url: str_at(r, 2).unwrap_or_default(),
        compression: str_at(r, 3).unwrap_or_default(),
        file_hash: str_at(r, 4),
        file_size: unsigned(int_at(r, 5)),
        nar_hash: str_at(r, 6).unwrap_or_default(),
        nar_size: unsigned(int_at(r, 7)).unwrap_or(0),
        references: split(str_at(r, 8), ' '),
        deriver: str_at(r, 9),
        system: str_at(r, 10),
        ca: str_at(r, 11),
        sigs: split(str_at(r, 12), '\n'),
    }
}

pub(super) fn nar(r: &[DbValue]) -> NarRecord {
    NarRecord {
        key: str_at(r, 0).unwrap_or_default(),
        upstream_url: str_at(r, 1),
        file_hash: str_at(r, 2),
        file_size: unsigned(int_at(r, 3)),
        stored_size: unsigned(int_at(r, 4)),
    }
}
