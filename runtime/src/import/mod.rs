//! `ncps-edge import-ncps`: make an existing ncps deployment an ncps-edge
//! cache without downloading anything again. Its database (ncps's schema,
//! on SQLite, PostgreSQL or MySQL) gives the narinfos, their NAR files,
//! sizes and last accesses, and the signing key (so clients that trust the
//! old key keep working); its storage has the NARs in the same layout as
//! ncps-edge's (`store/nar/<h0>/<h0h1>/<file>`), so pointing the node at the
//! same folder or bucket needs no copy, and another one gets a checked copy.
//! (A little over 300 lines: one pass, from the row to the recorded
//! narinfo, read top to bottom; ncps's side is in [`source`].)
//!
//! Idempotent and resumable: every record is an upsert, narinfos already
//! imported are skipped, NARs already stored are not copied again.

pub mod source;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::Args;
use ncps_edge_host_services::metadata::{Database, NarRecord, NarinfoRecord};
use ncps_edge_host_services::signer::{Signer, SECRET_KEY_CONFIG};
use ncps_edge_host_services::storage::local::LocalStore;
use ncps_edge_host_services::storage::s3::{S3Options, S3Store};
use ncps_edge_host_services::storage::{BlobStore, StorageKey};
use ncps_edge_protocol::hash::Sha256;
use ncps_edge_protocol::narinfo::{Fields, NarInfo};
use ncps_edge_protocol::narinfo_fields;
use ncps_edge_protocol::route::NarPath;
use sha2::Digest as _;
use tokio::io::AsyncReadExt as _;

use crate::config::flags::ServeArgs;
use crate::config::values::parse_database_url;
use crate::config::Config;
use source::{NcpsNarinfo, Source};

/// `ncps-edge import-ncps`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// ncps's database URL (`sqlite:<path>`, `postgresql://…`, `mysql://…`).
    #[arg(long)]
    pub ncps_database_url: String,
    /// ncps's data folder (`--cache-storage-local` of ncps), when its NARs
    /// are on local disk.
    #[arg(long)]
    pub ncps_storage_local: Option<PathBuf>,
    /// ncps's S3 bucket, when its NARs are in S3 (with the `--ncps-storage-s3-*` settings).
    #[arg(long)]
    pub ncps_storage_s3_bucket: Option<String>,
    /// ncps's S3 endpoint.
    #[arg(long)]
    pub ncps_storage_s3_endpoint: Option<String>,
    /// ncps's S3 region.
    #[arg(long, default_value = "us-east-1")]
    pub ncps_storage_s3_region: String,
    /// ncps's S3 access key id.
    #[arg(long, default_value = "")]
    pub ncps_storage_s3_access_key_id: String,
    /// ncps's S3 secret access key.
    #[arg(long, default_value = "")]
    pub ncps_storage_s3_secret_access_key: String,
    /// Path-style addressing for ncps's S3.
    #[arg(long)]
    pub ncps_storage_s3_force_path_style: bool,
    /// Report what would be imported; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// This node's settings (where to import to).
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// What an import did (or, in a dry run, would do).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Summary {
    /// Narinfos in ncps's database.
    pub narinfos: u64,
    /// Narinfos recorded now (in a dry run: that would be).
    pub imported: u64,
    /// Narinfos this node had already.
    pub already: u64,
    /// Rows that could not be used (logged).
    pub unusable: u64,
    /// NARs found in this node's storage.
    pub nars_stored: u64,
    /// NARs copied from ncps's storage.
    pub nars_copied: u64,
    /// Narinfos left out because their NAR is in no storage (ncps's chunked
    /// NARs, files lost): ordinary misses, fetched from upstream when asked.
    pub nars_missing: u64,
    /// What happened to ncps's signing key: `imported`, `already` (this
    /// node has it), `ignored` (the node signs with a key file), `none`.
    pub key: String,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

/// Narinfos read per batch.
const BATCH: u32 = 500;

/// Run the import into the node `config` describes.
pub async fn run(config: &Config, args: &ImportArgs) -> anyhow::Result<Summary> {
    let (database, _shared) = crate::backends::metadata(config).await?;
    let storage = crate::backends::content_named(crate::backends::storage(config).await?);
    let from = ncps_storage(args).await?;
    let mut source = Source::open(&parse_database_url(&args.ncps_database_url)?).await?;
    let mut summary = Summary { dry_run: args.dry_run, ..Summary::default() };
    summary.key = import_key(&mut source, args, config.signing.secret_key_path.as_deref(), database.as_ref()).await?;
    let signer = match (args.dry_run, config.guest.sign_narinfo) {
        (false, true) => Some(
            Signer::load_or_generate(
                config.signing.secret_key_path.as_deref(),
                database.as_ref(),
                &config.signing.hostname,
            )
            .await?,
        ),
        _ => None,
    };
    let target = Target { database, storage, signer };
    let progress = progress_bar();
    let mut after = 0;
    loop {
        let batch = source.narinfos(after, BATCH).await?;
        let Some(last) = batch.last().map(|n| n.id) else { break };
        after = last;
        for row in batch {
            summary.narinfos += 1;
            progress.inc(1);
            if let Err(e) = import_one(row.clone(), args.dry_run, &target, from.as_ref(), &mut summary).await {
                summary.unusable += 1;
                tracing::warn!(hash = row.hash, error = format!("{e:#}"), "ncps narinfo not imported");
            }
        }
        progress.set_message(format!("{} imported, {} copied", summary.imported, summary.nars_copied));
    }
    progress.finish_and_clear();
    Ok(summary)
}

fn progress_bar() -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos} narinfos read ({per_sec}) {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar
}

/// ncps's own storage, when it is elsewhere than this node's.
async fn ncps_storage(args: &ImportArgs) -> anyhow::Result<Option<Arc<dyn BlobStore>>> {
    if let Some(dir) = &args.ncps_storage_local {
        return Ok(Some(Arc::new(LocalStore::open(&std::path::absolute(dir)?).await?)));
    }
    let Some(bucket) = args.ncps_storage_s3_bucket.clone() else { return Ok(None) };
    let opts = S3Options {
        bucket,
        endpoint: args.ncps_storage_s3_endpoint.clone(),
        region: args.ncps_storage_s3_region.clone(),
        access_key_id: args.ncps_storage_s3_access_key_id.clone(),
        secret_access_key: args.ncps_storage_s3_secret_access_key.clone(),
        force_path_style: args.ncps_storage_s3_force_path_style,
    };
    Ok(Some(Arc::new(S3Store::connect(&opts).await.context("ncps's S3 storage")?)))
}

/// ncps's signing key (its database, else its data folder's
/// `config/cache.key`) becomes this node's.
async fn import_key(
    source: &mut Source,
    args: &ImportArgs,
    secret_key_path: Option<&std::path::Path>,
    database: &dyn Database,
) -> anyhow::Result<String> {
    let mut text = source.config("secret_key").await?;
    if text.is_none() {
        if let Some(dir) = &args.ncps_storage_local {
            text = std::fs::read_to_string(dir.join("config/cache.key")).ok();
        }
    }
    let Some(text) = text else { return Ok("none".into()) };
    let key = Signer::parse(&text).context("ncps's signing key")?;
    if let Some(path) = secret_key_path {
        tracing::warn!(
            ncps_key = key.public_key(),
            path = %path.display(),
            "ncps's signing key not imported: this node signs with --cache-secret-key-path"
        );
        return Ok("ignored".into());
    }
    match database.get_config(SECRET_KEY_CONFIG).await? {
        Some(current) if Signer::parse(&current)?.public_key() == key.public_key() => Ok("already".into()),
        Some(_) => bail!("this node's database already has another signing key; import into an empty database"),
        None if args.dry_run => Ok("imported".into()),
        None => {
            database.set_config_if_absent(SECRET_KEY_CONFIG, &key.to_secret_string()).await?;
            Ok("imported".into())
        }
    }
}

/// The narinfo a row describes (from the narinfo file in ncps's storage
/// when the row predates ncps's de-normalised narinfos).
async fn narinfo_of(row: &NcpsNarinfo, storage: &dyn BlobStore) -> anyhow::Result<NarInfo> {
    let Some(store_path) = &row.store_path else {
        let key = StorageKey::parse(&format!("narinfo/{}/{}/{}.narinfo", &row.hash[..1], &row.hash[..2], row.hash))?;
        let mut body = storage.read(&key, None).await?.context("no narinfo file for an old ncps row")?;
        let mut text = String::new();
        body.read_to_string(&mut text).await?;
        return Ok(NarInfo::parse(&text)?);
    };
    let size = |field: &str, n: Option<i64>| {
        n.map(|n| u64::try_from(n).with_context(|| format!("{field} {n} of {}", row.hash))).transpose()
    };
    Ok(NarInfo::from_fields(Fields {
        store_path: store_path.clone(),
        url: row.url.clone().unwrap_or_default(),
        compression: row.compression.clone().unwrap_or_else(|| "none".into()),
        file_hash: row.file_hash.clone(),
        file_size: size("FileSize", row.file_size)?,
        nar_hash: row.nar_hash.clone().unwrap_or_default(),
        nar_size: size("NarSize", row.nar_size)?.unwrap_or(0),
        references: row.references.clone(),
        deriver: row.deriver.clone().filter(|d| d != "unknown-deriver"),
        system: row.system.clone(),
        ca: row.ca.clone(),
        sigs: row.sigs.clone(),
    })?)
}

/// Where an import writes: this node's database, storage and key.
struct Target {
    database: Arc<dyn Database>,
    storage: Arc<dyn BlobStore>,
    /// Signs imported narinfos (`None` with `--cache-sign-narinfo=false`).
    signer: Option<Signer>,
}

async fn import_one(
    row: NcpsNarinfo,
    dry_run: bool,
    target: &Target,
    from: Option<&Arc<dyn BlobStore>>,
    summary: &mut Summary,
) -> anyhow::Result<()> {
    if target.database.get_narinfo(&row.hash).await?.is_some() {
        summary.already += 1;
        return Ok(());
    }
    let mut info = narinfo_of(&row, from.unwrap_or(&target.storage).as_ref()).await?;
    if info.hash() != row.hash {
        bail!("its narinfo is for {}", info.store_path);
    }
    // Adopted as the cache adopts an upstream's narinfo: its NAR named by
    // its file hash (as ncps names the files of cache.nixos.org's narinfos,
    // whose URLs name their file hash).
    let path = NarPath::adopt(&mut info)
        .with_context(|| format!("its NAR cannot be named (compression {:?}, or no FileHash)", info.compression))?;
    let key = StorageKey::parse(&path.key())?;
    // A narinfo is only imported with its NAR: one without would be a hit
    // whose NAR 404s. Left out, it is an ordinary miss, fetched from upstream.
    let stored = match target.storage.stat(&key).await? {
        Some(size) => {
            summary.nars_stored += 1;
            size
        }
        None => match from {
            Some(from) if from.stat(&key).await?.is_some() => {
                let size =
                    if dry_run { 0 } else { copy(from.as_ref(), target.storage.as_ref(), &key, &path.hash).await? };
                summary.nars_copied += 1;
                size
            }
            _ => {
                summary.nars_missing += 1;
                tracing::info!(hash = row.hash, nar = key.as_str(), "not imported: its NAR is in no storage");
                return Ok(());
            }
        },
    };
    summary.imported += 1;
    if dry_run {
        return Ok(());
    }
    if let Some(signer) = &target.signer {
        info.sign_as(&signer.public_key(), |fingerprint| Ok::<_, std::convert::Infallible>(signer.sign(fingerprint)))?;
    }
    target
        .database
        .put_nar(NarRecord {
            key: info.url.clone(),
            upstream_url: None,
            file_hash: info.file_hash.map(|h| h.to_nix_string()),
            file_size: info.file_size,
            stored_size: Some(stored),
        })
        .await?;
    target
        .database
        .put_narinfo(narinfo_fields!(NarinfoRecord { hash: row.hash.clone() } from info.to_fields()))
        .await?;
    if let Some(at) = row.last_accessed_ms {
        target.database.record_accesses(vec![(info.url.clone(), at)]).await?;
    }
    Ok(())
}

/// Copy `key` from `from` to `to`, checked against its name (the file's
/// sha256) before it is published; the stored size.
async fn copy(from: &dyn BlobStore, to: &dyn BlobStore, key: &StorageKey, file_hash: &str) -> anyhow::Result<u64> {
    let mut body = from.read(key, None).await?.context("vanished while copying")?;
    let mut writer = to.create(key).await?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = body.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        writer.write(&buf[..n]).await?;
    }
    let size = writer.written();
    if let Some(want) = Sha256::from_nix32(file_hash) {
        if want.0 != <[u8; 32]>::from(hasher.finalize()) {
            writer.abort().await;
            bail!("{} in ncps's storage does not match its name", key.as_str());
        }
    }
    writer.commit().await?;
    Ok(size)
}
