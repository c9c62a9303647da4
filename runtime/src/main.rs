//! `ncps-edge`: serve the cache, check the configuration, make keys.

use ncps_edge::cli::{parse_cli, Command, ConfigCommand};
use ncps_edge::config::Config;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let parsed = match parse_cli(std::env::args().collect()) {
        Ok(parsed) => parsed,
        Err(e) => match e.downcast::<clap::Error>() {
            Ok(clap_err) => clap_err.exit(),
            Err(e) => return Err(e),
        },
    };
    match parsed.cli.command {
        Command::Serve(args) => {
            ncps_edge::logs::init(&args.log_level, std::io::stdout);
            let config = Config::from_args(*args, parsed.without_effect)?;
            let node = ncps_edge::node::start(&config).await?;
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down: no new connections; requests in flight may finish");
            node.stop(config.shutdown_timeout).await;
            Ok(())
        }
        Command::Config(ConfigCommand::Check(args)) => {
            let matches = parsed.matches.ok_or_else(|| anyhow::anyhow!("no configuration to check"))?;
            ncps_edge::commands::check::run(*args, &matches, parsed.without_effect, &mut std::io::stdout())
        }
        Command::Keygen(args) => ncps_edge::commands::keygen::run(&args, &mut std::io::stdout()),
        Command::ImportNcps(args) => {
            ncps_edge::logs::init(&args.serve.log_level, std::io::stderr);
            let config = Config::from_args(args.serve.clone(), parsed.without_effect)?;
            let summary = ncps_edge::import::run(&config, &args).await?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(())
        }
        Command::Fsck(args) => {
            ncps_edge::logs::init(&args.serve.log_level, std::io::stderr);
            let config = Config::from_args(args.serve, parsed.without_effect)?;
            ncps_edge::commands::fsck::run(&config, args.dry_run, &mut std::io::stdout()).await
        }
    }
}
