//! `ncps-edge keygen`: a Nix-compatible signing key pair.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use ncps_edge_host_services::signer::Signer;

/// `ncps-edge keygen`.
#[derive(Debug, Clone, Args)]
pub struct KeygenArgs {
    /// Key name, e.g. `cache.example.org-1`.
    pub name: String,
    /// Write the secret key here (mode 0600) instead of printing it.
    #[arg(long)]
    pub secret_key_file: Option<PathBuf>,
    /// Write the public key here too.
    #[arg(long)]
    pub public_key_file: Option<PathBuf>,
}

/// `ncps-edge keygen NAME`: a fresh signing key pair in Nix's formats. The
/// secret key goes to `--secret-key-file` (mode 0600) or stdout; the public
/// key to `--public-key-file` and stdout.
pub fn run(args: &KeygenArgs, out: &mut impl std::io::Write) -> anyhow::Result<()> {
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
