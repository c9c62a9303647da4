//! `ncps-edge serve`: run a cache node.

use ncps_edge::config::{parse_cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = match parse_cli(std::env::args().collect()) {
        Ok(cli) => cli,
        Err(e) => match e.downcast::<clap::Error>() {
            Ok(clap_err) => clap_err.exit(),
            Err(e) => return Err(e),
        },
    };
    let Command::Serve(args) = cli.command;
    ncps_edge::logs::init(&args.log_level, std::io::stdout);
    let node = ncps_edge::node::start(&args).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    node.stop().await;
    Ok(())
}
