//! The subcommands besides `serve` (see `main.rs` and [`crate::node`]):
//! `config check`, `keygen`, `fsck` (and `import-ncps`, [`crate::import`]).
//! Each module holds its command's arguments and what it does.

pub mod check;
pub mod fsck;
pub mod keygen;
