//! The subcommands besides `serve`: `config check`, `keygen` and `fsck`.

use std::io::Write as _;

use anyhow::Context as _;
use ncps_edge_host_services::signer::Signer;

use crate::config::cli::KeygenArgs;
use crate::config::{effective, Config, ServeArgs};

/// `ncps-edge config check`: validate, print the effective configuration
/// (secrets masked) to `out`; an error names the problem.
pub fn config_check(
    args: ServeArgs,
    matches: &clap::ArgMatches,
    without_effect: Vec<String>,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    let config = Config::from_args(args, without_effect)?;
    out.write_all(effective(matches, &config).as_bytes())?;
    writeln!(out, "# configuration is valid")?;
    Ok(())
}

/// `ncps-edge keygen NAME`: a fresh signing key pair in Nix's formats. The
/// secret key goes to `--secret-key-file` (mode 0600) or stdout; the public
/// key to `--public-key-file` and stdout.
pub fn keygen(args: &KeygenArgs, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    if args.name.is_empty() || args.name.contains(':') || args.name.contains(char::is_whitespace) {
        anyhow::bail!("key name {:?} must be non-empty, without ':' or spaces", args.name);
    }
    let key = Signer::generate(&args.name);
    match &args.secret_key_file {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            writeln!(f, "{}", key.to_secret_string())?;
        }
        None => writeln!(out, "{}", key.to_secret_string())?,
    }
    if let Some(path) = &args.public_key_file {
        std::fs::write(path, format!("{}\n", key.public_key()))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    writeln!(out, "{}", key.public_key())?;
    Ok(())
}

/// `ncps-edge fsck`: one reconcile pass with the node's settings; prints
/// the report as JSON. Another node holding the LRU lock is an error.
pub async fn fsck(config: &Config, dry_run: bool, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let server = crate::node::build(config).await?;
    let _ticker = crate::engine::start_epoch_ticker(server.engine());
    let r = server.reconcile(dry_run).await?;
    if !r.ran {
        anyhow::bail!("another node holds the LRU lock; try again later");
    }
    let report = serde_json::json!({
        "objects": r.objects, "records": r.records, "orphans": r.orphans, "adopted": r.adopted,
        "phantoms": r.phantoms, "incomplete": r.incomplete, "busy": r.busy, "dryRun": dry_run,
    });
    writeln!(out, "{report}")?;
    server.services().metadata.flush_accesses().await?;
    Ok(())
}
