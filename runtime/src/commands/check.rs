//! `ncps-edge config check`: the effective configuration.

use crate::config::flags::ServeArgs;
use crate::config::{effective, Config};

/// `ncps-edge config check`: validate, print the effective configuration
/// (secrets masked) to `out`; an error names the problem.
pub fn run(
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
