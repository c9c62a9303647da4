//! The command line: `ncps-edge serve`, `config check`, `keygen`, `fsck`
//! and `import-ncps`, each with its arguments (a node's flags are
//! [`crate::config::flags`]), and the folding of `--config`'s keys into
//! them.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::flags::ServeArgs;

/// `ncps-edge`: a Nix binary cache proxy for the edge.
#[derive(Debug, Parser)]
#[command(name = "ncps-edge", version = crate::VERSION, about, args_override_self = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the cache.
    #[command(args_override_self = true)]
    Serve(Box<ServeArgs>),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Generate a Nix-compatible signing key pair.
    Keygen(crate::commands::keygen::KeygenArgs),
    /// Compare storage with metadata both ways and mend what a crash or a
    /// failed step left behind (orphaned objects, records of missing ones,
    /// leftovers of unfinished uploads). Takes the same settings as `serve`.
    #[command(args_override_self = true)]
    Fsck(Box<crate::commands::fsck::FsckArgs>),
    /// Make an ncps deployment (its database and storage) this cache,
    /// without downloading anything again; the node's settings say where to.
    #[command(name = "import-ncps", args_override_self = true)]
    ImportNcps(Box<crate::import::ImportArgs>),
}

/// `ncps-edge config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration (flags, environment, `--config`) and print
    /// it with secrets masked; exit non-zero on problems.
    #[command(args_override_self = true)]
    Check(Box<ServeArgs>),
}

/// The command line after `--config` was folded in.
#[derive(Debug)]
pub struct Parsed {
    /// The typed command line.
    pub cli: Cli,
    /// Where every `serve` setting came from and its raw value (for
    /// `config check`); `None` for other subcommands.
    pub matches: Option<clap::ArgMatches>,
    /// ncps keys set in the config file that have no effect here.
    pub without_effect: Vec<String>,
}

/// The `serve` arguments of `matches`, wherever they sit (`serve`, `config check`).
fn serve_matches(matches: &clap::ArgMatches) -> Option<&clap::ArgMatches> {
    match matches.subcommand() {
        Some(("serve" | "fsck" | "import-ncps", m)) => Some(m),
        Some(("config", m)) => m.subcommand_matches("check"),
        _ => None,
    }
}

/// Parse `argv` (program name first), folding in `--config` when given.
pub fn parse_cli(argv: Vec<String>) -> anyhow::Result<Parsed> {
    use anyhow::Context as _;
    use clap::{CommandFactory, FromArgMatches};
    // First pass: find `--config` and where each value came from; required
    // flags may still be missing until the file is folded in.
    let first = Cli::command().ignore_errors(true).try_get_matches_from(&argv)?;
    let mut argv = argv;
    let mut without_effect = Vec::new();
    if let Some(serve) = serve_matches(&first) {
        if let Some(path) = serve.get_one::<PathBuf>("config") {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let yaml: serde_yaml::Value =
                serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            let folded = crate::config::yaml::fold(&yaml, serve).with_context(|| format!("in {}", path.display()))?;
            argv.extend(folded.flags);
            without_effect = folded.without_effect;
        }
    }
    let matches = Cli::command().try_get_matches_from(argv)?;
    let cli = Cli::from_arg_matches(&matches)?;
    let serve = serve_matches(&matches).cloned();
    Ok(Parsed { cli, matches: serve, without_effect })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn serve(args: &[&str]) -> ServeArgs {
        let argv = ["ncps-edge", "serve"].iter().chain(args).map(|s| s.to_string()).collect();
        match parse_cli(argv).unwrap().cli.command {
            Command::Serve(s) => *s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_match_ncps() {
        let s = serve(&["--cache-hostname=h"]);
        assert_eq!(s.server_addr, ":8501");
        assert_eq!(s.cache_lock_download_ttl, Duration::from_secs(300));
        assert_eq!(s.cache_lock_lru_ttl, Duration::from_secs(1800));
        assert_eq!(s.cache_lock_retry_max_attempts, 3);
        assert_eq!(s.cache_lock_retry_initial_delay, Duration::from_millis(100));
        assert_eq!(s.cache_lock_retry_max_delay, Duration::from_secs(2));
        assert!(s.cache_lock_retry_jitter && s.cache_sign_narinfo);
        assert_eq!(s.cache_lock_redis_key_prefix, "ncps:lock:");
        assert!(!s.cache_allow_put_verb);
    }

    #[test]
    fn config_yaml_fills_what_flags_do_not_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "cache:\n  hostname: from-yaml\n  allow-put-verb: true\n  upstream:\n    urls:\n      - https://a.example\n      - http://b.example?priority=5\n  lock:\n    download-lock-ttl: 90s\nserver:\n  addr: \":9000\"\n",
        )
        .unwrap();
        let s = serve(&[&format!("--config={}", path.display()), "--server-addr=127.0.0.1:1"]);
        assert_eq!(s.cache_hostname, "from-yaml");
        assert!(s.cache_allow_put_verb);
        let urls: Vec<_> = s.cache_upstream_url.iter().map(|u| (u.url.as_str(), u.priority)).collect();
        assert_eq!(urls, vec![("https://a.example", None), ("http://b.example", Some(5))]);
        assert_eq!(s.cache_lock_download_ttl, Duration::from_secs(90));
        assert_eq!(s.server_addr, "127.0.0.1:1", "a flag beats the file");
    }
}
