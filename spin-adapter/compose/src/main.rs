//! `ncps-edge-spin-compose`: write the component `spin.toml` runs.
//!
//! ```text
//! ncps-edge-spin-compose --handler handler.wasm --adapter adapter.wasm -o ncps-edge-spin.wasm
//! ncps-edge-spin-compose --check ncps-edge-spin.wasm
//! ```

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

/// Plug the Spin adapter into handler.wasm, or check a composed component.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The handler component.
    #[arg(long, required_unless_present = "check")]
    handler: Option<PathBuf>,
    /// The Spin adapter component.
    #[arg(long, required_unless_present = "check")]
    adapter: Option<PathBuf>,
    /// Where to write the composed component.
    #[arg(short, long, required_unless_present = "check")]
    output: Option<PathBuf>,
    /// Only check this composed component's world.
    #[arg(long, conflicts_with_all = ["handler", "adapter", "output"])]
    check: Option<PathBuf>,
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (composed, output) = match (&args.check, &args.handler, &args.adapter, &args.output) {
        (Some(path), ..) => (read(path)?, None),
        (None, Some(handler), Some(adapter), Some(output)) => {
            (ncps_edge_spin_compose::compose(&read(handler)?, &read(adapter)?)?, Some(output))
        }
        _ => anyhow::bail!("give --check, or --handler, --adapter and --output"),
    };
    let world = ncps_edge_spin_compose::check_world(&composed)?;
    if let Some(output) = output {
        if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(output, &composed).with_context(|| format!("writing {}", output.display()))?;
        println!("wrote {} ({} bytes)", output.display(), composed.len());
    }
    for import in &world.imports {
        println!("import {import}");
    }
    for export in &world.exports {
        println!("export {export}");
    }
    Ok(())
}
