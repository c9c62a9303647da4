//! `ncps-edge fsck`: one reconcile pass with a node's settings.

use clap::Args;

use crate::config::flags::ServeArgs;
use crate::config::Config;

/// `ncps-edge fsck`.
#[derive(Debug, Clone, Args)]
pub struct FsckArgs {
    /// Report only; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The node's settings.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// `ncps-edge fsck`: one reconcile pass with the node's settings; prints
/// the report as JSON. Another node holding the LRU lock is an error.
pub async fn run(config: &Config, dry_run: bool, out: &mut impl std::io::Write) -> anyhow::Result<()> {
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
