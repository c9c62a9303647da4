//! Background work the host schedules and the guest decides: the LRU pass
//! reconciling storage with metadata, and upstream health checks (the
//! `ncps:edge/maintenance` export).

pub mod lru;
pub mod reconcile;
pub mod upstream_health;
