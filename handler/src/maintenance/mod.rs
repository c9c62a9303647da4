//! Background work the host schedules and the guest decides: the LRU pass
//! and upstream health checks (the `ncps:edge/maintenance` export).

pub mod lru;
pub mod upstream_health;
