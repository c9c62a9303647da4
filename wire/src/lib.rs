//! What every node of one ncps-edge cache must agree on, whether it runs
//! natively (`host-services`) or under Spin (`spin-adapter`): where an
//! object lives and what its name promises ([`layout`]), the database
//! schema and statements of each dialect ([`sql`]), lock keys and the Redis
//! lock scripts ([`locks`]), the messages nodes send each other
//! ([`channel`]) and the log of purges beside them ([`purge_log`]). Plain `std` data and functions, no I/O: a change here
//! changes every kind of node together, so mixed clusters keep working.
#![deny(missing_docs)]

pub mod channel;
pub mod layout;
pub mod locks;
pub mod purge_log;
pub mod sql;
