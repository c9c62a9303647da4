//! Narinfos as this cache keeps them: looked up in metadata, normalised
//! and signed with the cache's key (once, for upstream and uploaded ones
//! alike), and recorded with the NAR record they point at.

use super::records::{from_record, to_record};
use crate::bindings::ncps::edge::config::Settings;
use crate::bindings::ncps::edge::metadata::{self, NarRecord};
use crate::bindings::ncps::edge::signer;
use crate::bindings::ncps::edge::types::Error as HostError;
use crate::host::{edge, logging};
use crate::protocol::narinfo::NarInfo;

/// The stored narinfo of `hash`; a metadata failure is logged and treated
/// as a miss.
pub fn lookup(hash: &str) -> Option<NarInfo> {
    lookup_or_failed(hash).ok().flatten()
}

/// The stored narinfo of `hash`, or the metadata failure (logged).
pub fn lookup_or_failed(hash: &str) -> Result<Option<NarInfo>, HostError> {
    match metadata::get_narinfo(hash) {
        Ok(record) => Ok(record.and_then(from_record)),
        Err(e) => {
            logging::warn("metadata lookup failed", &[("hash", hash), ("error", &format!("{e:?}"))]);
            Err(e)
        }
    }
}

/// The narinfo of `hash` as the node's tier kept it, for an answer marked
/// stale after the metadata lookup failed.
pub fn kept_stale(hash: &str) -> Option<NarInfo> {
    edge::stale_narinfo(hash).and_then(from_record)
}

/// Make `info` what this cache serves: an uncompressed NAR's file hash is
/// its NAR hash, and (with `--cache-sign-narinfo`) our signature replaces
/// any earlier one under our key's name. Fails when the host cannot sign
/// (its key cannot be loaded): the narinfo is then neither served nor
/// recorded, so no record lacks our signature.
pub fn normalise_and_sign(settings: &Settings, info: &mut NarInfo) -> Result<(), HostError> {
    info.normalise();
    if !settings.sign_narinfo {
        return Ok(());
    }
    info.sign_as(&signer::public_key()?, signer::sign).inspect_err(|e| {
        logging::warn("signing failed", &[("hash", info.hash()), ("error", &format!("{e:?}"))]);
    })
}

/// Store the narinfo and its NAR record, keeping what is known of a NAR
/// that is stored already (`upstream_nar`: where to fetch it when it is
/// not). A failure to store the NAR record is only logged: the NAR can
/// still be found by its URL.
pub fn record(info: &NarInfo, upstream_nar: Option<String>) -> Result<(), HostError> {
    let hash = info.hash().to_owned();
    metadata::put_narinfo(&to_record(&hash, info))?;
    let known = metadata::get_nar(&info.url).ok().flatten();
    let nar = NarRecord {
        key: info.url.clone(),
        upstream_url: upstream_nar.or_else(|| known.as_ref().and_then(|n| n.upstream_url.clone())),
        file_hash: info.file_hash.map(|h| h.to_nix_string()),
        file_size: info.file_size,
        stored_size: known.and_then(|n| n.stored_size),
    };
    if let Err(e) = metadata::put_nar(&nar) {
        logging::warn("failed to record nar", &[("hash", &hash), ("error", &format!("{e:?}"))]);
    }
    Ok(())
}
