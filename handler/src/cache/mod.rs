//! Cache policy shared by the endpoints and the maintenance passes: the
//! download lock, narinfos as this cache keeps and signs them, and NARs as
//! they are published to storage.

pub mod download_lock;
pub mod narinfos;
pub mod nars;
pub mod records;
