//! Reading an ncps database (SQLite, PostgreSQL or MySQL) in ncps's own
//! schema: narinfos with their references and signatures, the NAR files
//! they point at, and the signing key.

use anyhow::Context as _;

use crate::config::DatabaseUrl;

/// One narinfo of ncps, with what its rows say about its NAR file.
#[derive(Debug, Clone, Default)]
pub struct NcpsNarinfo {
    /// Row id (imports go in id order, so a re-run resumes).
    pub id: i64,
    /// Store-path hash.
    pub hash: String,
    /// `None` in databases older than ncps's de-normalised narinfos: the
    /// narinfo file in storage says the rest.
    pub store_path: Option<String>,
    /// ncps's URL of the NAR.
    pub url: Option<String>,
    /// Compression of the narinfo.
    pub compression: Option<String>,
    /// `FileHash:`.
    pub file_hash: Option<String>,
    /// `FileSize:`.
    pub file_size: Option<i64>,
    /// `NarHash:`.
    pub nar_hash: Option<String>,
    /// `NarSize:`.
    pub nar_size: Option<i64>,
    /// `Deriver:`.
    pub deriver: Option<String>,
    /// `System:`.
    pub system: Option<String>,
    /// `CA:`.
    pub ca: Option<String>,
    /// `References:`.
    pub references: Vec<String>,
    /// `Sig:` lines.
    pub sigs: Vec<String>,
    /// The NAR file: its hash, compression and size.
    pub nar_file: Option<(String, String, i64)>,
    /// Last access, milliseconds since the epoch.
    pub last_accessed_ms: Option<i64>,
}

/// An ncps database to read from.
pub enum Source {
    /// ncps on SQLite.
    Sqlite(rusqlite::Connection),
    /// ncps on PostgreSQL.
    Postgres(tokio_postgres::Client),
    /// ncps on MySQL/MariaDB.
    Mysql(mysql_async::Conn),
}

/// The columns every backend selects, in this order.
const NARINFO_COLUMNS: &str =
    "id, hash, store_path, url, compression, file_hash, file_size, nar_hash, nar_size, deriver, system, ca";

fn ms(t: chrono::NaiveDateTime) -> i64 {
    t.and_utc().timestamp_millis()
}

/// `column` (a timestamp) as milliseconds since the epoch, in each dialect;
/// SQLite keeps text, parsed by [`sqlite_time`].
fn epoch_ms(source: &Source, column: &str) -> String {
    match source {
        Source::Sqlite(_) => column.to_owned(),
        Source::Postgres(_) => format!("(EXTRACT(EPOCH FROM {column}) * 1000)::BIGINT"),
        Source::Mysql(_) => format!("CAST(UNIX_TIMESTAMP({column}) * 1000 AS SIGNED)"),
    }
}

/// ncps's SQLite timestamps are text (`2026-01-02 03:04:05[.fff][+00:00]`).
fn sqlite_time(text: &str) -> Option<i64> {
    let text = text.trim().trim_end_matches('Z');
    let text = text.split('+').next().unwrap_or(text);
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(text, f).ok())
        .map(ms)
}

impl Source {
    /// Connect to ncps's database at `url`.
    pub async fn open(url: &DatabaseUrl) -> anyhow::Result<Self> {
        Ok(match url {
            DatabaseUrl::Sqlite(path) => {
                let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
                Source::Sqlite(
                    rusqlite::Connection::open_with_flags(path, flags)
                        .with_context(|| format!("opening ncps's SQLite {}", path.display()))?,
                )
            }
            DatabaseUrl::Postgres(url) => {
                let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .context("connecting to ncps's PostgreSQL")?;
                tokio::spawn(conn);
                Source::Postgres(client)
            }
            DatabaseUrl::Mysql(url) => {
                let opts = mysql_async::Opts::from_url(url).context("ncps's MySQL URL")?;
                Source::Mysql(mysql_async::Conn::new(opts).await.context("connecting to ncps's MySQL")?)
            }
        })
    }

    /// The value of ncps's config key `key`.
    pub async fn config(&mut self, key: &str) -> anyhow::Result<Option<String>> {
        use mysql_async::prelude::Queryable;
        let sql = "SELECT value FROM config WHERE key = ";
        Ok(match self {
            Source::Sqlite(c) => {
                use rusqlite::OptionalExtension;
                c.query_row(&format!("{sql}?1"), [key], |r| r.get(0)).optional()?
            }
            Source::Postgres(c) => c.query_opt(&format!("{sql}$1"), &[&key]).await?.map(|r| r.get(0)),
            Source::Mysql(c) => c.exec_first("SELECT value FROM config WHERE `key` = ?", (key,)).await?,
        })
    }

    /// Up to `limit` narinfos with ids above `after`, in id order, complete
    /// with references, signatures and NAR file.
    pub async fn narinfos(&mut self, after: i64, limit: u32) -> anyhow::Result<Vec<NcpsNarinfo>> {
        let mut out = self.narinfo_rows(after, limit).await?;
        let (Some(first), Some(last)) = (out.first().map(|n| n.id), out.last().map(|n| n.id)) else {
            return Ok(out);
        };
        let index = |out: &mut Vec<NcpsNarinfo>, id: i64| out.iter().position(|n| n.id == id);
        for (id, reference) in self.pairs("SELECT narinfo_id, reference FROM narinfo_references", first, last).await? {
            if let Some(i) = index(&mut out, id) {
                out[i].references.push(reference);
            }
        }
        for (id, sig) in self.pairs("SELECT narinfo_id, signature FROM narinfo_signatures", first, last).await? {
            if let Some(i) = index(&mut out, id) {
                out[i].sigs.push(sig);
            }
        }
        for n in &mut out {
            n.references.sort();
            n.sigs.sort();
        }
        for (id, file, accessed) in self.nar_files(first, last).await? {
            if let Some(i) = index(&mut out, id) {
                out[i].nar_file = Some(file);
                out[i].last_accessed_ms = out[i].last_accessed_ms.max(accessed);
            }
        }
        Ok(out)
    }

    async fn narinfo_rows(&mut self, after: i64, limit: u32) -> anyhow::Result<Vec<NcpsNarinfo>> {
        use mysql_async::prelude::Queryable;
        let base =
            format!("SELECT {NARINFO_COLUMNS}, {} FROM narinfos WHERE id > ", epoch_ms(self, "last_accessed_at"));
        Ok(match self {
            Source::Sqlite(c) => {
                let mut stmt = c.prepare(&format!("{base}?1 ORDER BY id LIMIT ?2"))?;
                let rows = stmt.query_map(rusqlite::params![after, limit], |r| {
                    Ok(NcpsNarinfo {
                        id: r.get(0)?,
                        hash: r.get(1)?,
                        store_path: r.get(2)?,
                        url: r.get(3)?,
                        compression: r.get(4)?,
                        file_hash: r.get(5)?,
                        file_size: r.get(6)?,
                        nar_hash: r.get(7)?,
                        nar_size: r.get(8)?,
                        deriver: r.get(9)?,
                        system: r.get(10)?,
                        ca: r.get(11)?,
                        last_accessed_ms: r.get::<_, Option<String>>(12)?.as_deref().and_then(sqlite_time),
                        ..Default::default()
                    })
                })?;
                rows.collect::<Result<_, _>>()?
            }
            Source::Postgres(c) => c
                .query(&format!("{base}$1 ORDER BY id LIMIT $2"), &[&after, &i64::from(limit)])
                .await?
                .iter()
                .map(|r| NcpsNarinfo {
                    id: r.get(0),
                    hash: r.get(1),
                    store_path: r.get(2),
                    url: r.get(3),
                    compression: r.get(4),
                    file_hash: r.get(5),
                    file_size: r.get(6),
                    nar_hash: r.get(7),
                    nar_size: r.get(8),
                    deriver: r.get(9),
                    system: r.get(10),
                    ca: r.get(11),
                    last_accessed_ms: r.get(12),
                    ..Default::default()
                })
                .collect(),
            Source::Mysql(c) => {
                let rows: Vec<mysql_async::Row> =
                    c.exec(format!("{base}? ORDER BY id LIMIT ?"), (after, limit)).await?;
                rows.into_iter()
                    .map(|mut r| NcpsNarinfo {
                        id: r.take::<i64, _>(0).unwrap_or_default(),
                        hash: r.take::<String, _>(1).unwrap_or_default(),
                        store_path: r.take::<Option<String>, _>(2).flatten(),
                        url: r.take::<Option<String>, _>(3).flatten(),
                        compression: r.take::<Option<String>, _>(4).flatten(),
                        file_hash: r.take::<Option<String>, _>(5).flatten(),
                        file_size: r.take::<Option<i64>, _>(6).flatten(),
                        nar_hash: r.take::<Option<String>, _>(7).flatten(),
                        nar_size: r.take::<Option<i64>, _>(8).flatten(),
                        deriver: r.take::<Option<String>, _>(9).flatten(),
                        system: r.take::<Option<String>, _>(10).flatten(),
                        ca: r.take::<Option<String>, _>(11).flatten(),
                        last_accessed_ms: r.take::<Option<i64>, _>(12).flatten(),
                        ..Default::default()
                    })
                    .collect()
            }
        })
    }

    /// `(narinfo_id, text)` rows of `select` for narinfo ids in `first..=last`.
    async fn pairs(&mut self, select: &str, first: i64, last: i64) -> anyhow::Result<Vec<(i64, String)>> {
        use mysql_async::prelude::Queryable;
        Ok(match self {
            Source::Sqlite(c) => {
                let mut stmt = c.prepare(&format!("{select} WHERE narinfo_id BETWEEN ?1 AND ?2"))?;
                let rows = stmt.query_map([first, last], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect::<Result<_, _>>()?
            }
            Source::Postgres(c) => c
                .query(&format!("{select} WHERE narinfo_id BETWEEN $1 AND $2"), &[&first, &last])
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect(),
            Source::Mysql(c) => c.exec(format!("{select} WHERE narinfo_id BETWEEN ? AND ?"), (first, last)).await?,
        })
    }

    /// The NAR file of each narinfo in `first..=last`, and its last access.
    #[allow(clippy::type_complexity)]
    async fn nar_files(
        &mut self,
        first: i64,
        last: i64,
    ) -> anyhow::Result<Vec<(i64, (String, String, i64), Option<i64>)>> {
        use mysql_async::prelude::Queryable;
        let select = format!(
            "SELECT l.narinfo_id, f.hash, f.compression, f.file_size, {} \
             FROM narinfo_nar_files l JOIN nar_files f ON f.id = l.nar_file_id WHERE l.narinfo_id BETWEEN ",
            epoch_ms(self, "f.last_accessed_at")
        );
        Ok(match self {
            Source::Sqlite(c) => {
                let mut stmt = c.prepare(&format!("{select}?1 AND ?2"))?;
                let rows = stmt.query_map([first, last], |r| {
                    let accessed: Option<String> = r.get(4)?;
                    Ok((r.get(0)?, (r.get(1)?, r.get(2)?, r.get(3)?), accessed.as_deref().and_then(sqlite_time)))
                })?;
                rows.collect::<Result<_, _>>()?
            }
            Source::Postgres(c) => c
                .query(&format!("{select}$1 AND $2"), &[&first, &last])
                .await?
                .iter()
                .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3)), r.get(4)))
                .collect(),
            Source::Mysql(c) => {
                let rows: Vec<(i64, String, String, i64, Option<i64>)> =
                    c.exec(format!("{select}? AND ?"), (first, last)).await?;
                rows.into_iter().map(|(id, h, comp, size, at)| (id, (h, comp, size), at)).collect()
            }
        })
    }
}
