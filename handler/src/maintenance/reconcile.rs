//! The reconcile pass (`ncps-edge fsck`, and after every scheduled LRU
//! pass): storage and metadata compared both ways, under the LRU lock.
//!
//! - An object nothing accounts for is an orphan: deleted, unless a
//!   narinfo points at it, then it is adopted (recorded as stored). Objects
//!   are only ever published complete and checked, so adopting is safe.
//! - A record marked stored whose object is gone is a phantom: unmarked, so
//!   the size accounting is right and the next request fetches it again
//!   from the upstream it came from; one that came from no upstream (an
//!   upload) cannot be fetched again, so it is forgotten with its narinfos,
//!   and no narinfo is left served whose NAR is gone.
//! - Leftovers of unfinished writes older than the longest download are
//!   removed (temporary files, incomplete multipart uploads).
//!
//! Each mend happens under the NAR's publish lock, taken exclusively, and
//! re-checks what it found first, so a publish in progress is never undone.

use std::collections::VecDeque;

use crate::bindings::exports::ncps::edge::maintenance::ReconcileReport;
use crate::bindings::ncps::edge::config::Settings;
use crate::bindings::ncps::edge::locks::{self, Mode};
use crate::bindings::ncps::edge::metadata::{self, NarRecord};
use crate::bindings::ncps::edge::storage::{self, ObjectEntry};
use crate::bindings::ncps::edge::types::Error;
use crate::cache::nars::lock_for_eviction;
use crate::host::edge;
use crate::host::logging;

/// Entries read per listing call.
const PAGE: u32 = 500;

/// One side of the comparison, read page by page in key order.
struct Pages<T> {
    buf: VecDeque<T>,
    after: Option<String>,
    done: bool,
}

impl<T> Pages<T> {
    fn new() -> Self {
        Self { buf: VecDeque::new(), after: None, done: false }
    }

    fn front(
        &mut self,
        fetch: impl FnOnce(Option<&str>) -> Result<Vec<T>, Error>,
        key: impl Fn(&T) -> &str,
    ) -> Result<Option<&T>, Error> {
        if self.buf.is_empty() && !self.done {
            let page = fetch(self.after.as_deref())?;
            self.done = page.len() < PAGE as usize;
            if let Some(last) = page.last() {
                self.after = Some(key(last).to_owned());
            }
            self.buf.extend(page);
        }
        Ok(self.buf.front())
    }
}

/// Which side of the comparison moves on.
enum Step {
    /// Both have the key.
    Both,
    /// Only storage has it.
    Object,
    /// Only metadata has it.
    Record,
}

/// The size of the stored object; a storage failure ends the pass (it must
/// never read as "absent" here).
fn stored(key: &str) -> Result<Option<u64>, Error> {
    Ok(storage::stat(key)?.map(|i| i.size))
}

/// Run one pass (nothing changes with `dry_run`).
pub fn run(settings: &Settings, dry_run: bool) -> Result<ReconcileReport, Error> {
    let mut report = ReconcileReport {
        ran: false,
        objects: 0,
        records: 0,
        orphans: 0,
        adopted: 0,
        phantoms: 0,
        incomplete: 0,
        busy: 0,
    };
    let Some(lease) = locks::try_acquire("lru", Mode::Exclusive, settings.lru_lock_ttl_ms)? else {
        logging::info("another instance holds the LRU lock; not reconciling", &[("lock_type", "lru")]);
        return Ok(report);
    };
    report.ran = true;
    if !dry_run {
        report.incomplete = storage::sweep_incomplete(settings.download_lock_ttl_ms)?;
    }
    let (mut objects, mut records) = (Pages::<ObjectEntry>::new(), Pages::<NarRecord>::new());
    let list_objects = |after: Option<&str>| storage::list_objects(after, PAGE);
    let list_records = |after: Option<&str>| metadata::nars_after(after, PAGE);
    loop {
        let object = objects.front(list_objects, |o| &o.key)?.cloned();
        let record = records.front(list_records, |r| &r.key)?.cloned();
        let step = match (&object, &record) {
            (None, None) => break,
            (Some(o), Some(r)) if o.key == r.key => Step::Both,
            (Some(o), Some(r)) if o.key < r.key => Step::Object,
            (Some(_), None) => Step::Object,
            _ => Step::Record,
        };
        match (step, object, record) {
            (Step::Both, Some(o), Some(r)) => {
                objects.buf.pop_front();
                records.buf.pop_front();
                report.objects += 1;
                report.records += 1;
                if r.stored_size != Some(o.size) {
                    mend(&mut report, &o.key, dry_run, || adopt(&o))?;
                }
            }
            (Step::Object, Some(o), _) => {
                objects.buf.pop_front();
                report.objects += 1;
                if metadata::is_referenced(&o.key)? {
                    mend(&mut report, &o.key, dry_run, || adopt(&o))?;
                } else {
                    mend(&mut report, &o.key, dry_run, || delete_orphan(&o))?;
                }
            }
            (_, _, Some(r)) => {
                records.buf.pop_front();
                report.records += 1;
                if r.stored_size.is_some() {
                    mend(&mut report, &r.key, dry_run, || clear_phantom(&r))?;
                }
            }
            _ => break,
        }
        if (report.objects + report.records).is_multiple_of(u64::from(PAGE))
            && lease.extend(settings.lru_lock_ttl_ms).is_err()
        {
            logging::warn("LRU lock lost; stopping the reconcile pass", &[("lock_type", "lru")]);
            break;
        }
    }
    let fields = [
        ("objects", report.objects.to_string()),
        ("records", report.records.to_string()),
        ("orphans", report.orphans.to_string()),
        ("adopted", report.adopted.to_string()),
        ("phantoms", report.phantoms.to_string()),
        ("incomplete", report.incomplete.to_string()),
        ("busy", report.busy.to_string()),
        ("dry_run", dry_run.to_string()),
    ];
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    logging::info("reconcile pass finished", &fields);
    Ok(report)
}

/// What a mend found once it held the NAR's publish lock.
enum Mended {
    Orphan,
    Adopted,
    Phantom,
    /// Things changed meanwhile: nothing to do.
    Nothing,
}

/// Under the publish lock of `key` (skipped while it is being published),
/// run `fix` unless this is a dry run (then count what `fix` would be for).
fn mend(
    report: &mut ReconcileReport,
    key: &str,
    dry_run: bool,
    fix: impl FnOnce() -> Result<Mended, Error>,
) -> Result<(), Error> {
    let Some(_publishing) = lock_for_eviction(key)? else {
        report.busy += 1;
        return Ok(());
    };
    let outcome = if dry_run { preview(key)? } else { fix()? };
    match outcome {
        Mended::Orphan => report.orphans += 1,
        Mended::Adopted => report.adopted += 1,
        Mended::Phantom => report.phantoms += 1,
        Mended::Nothing => {}
    }
    Ok(())
}

/// What a mend of `key` would do, without doing it.
fn preview(key: &str) -> Result<Mended, Error> {
    let record = metadata::get_nar(key)?;
    Ok(match (stored(key)?, record.and_then(|r| r.stored_size)) {
        (Some(size), Some(stored)) if size == stored => Mended::Nothing,
        (Some(_), _) if metadata::is_referenced(key)? => Mended::Adopted,
        (Some(_), Some(_)) => Mended::Adopted,
        (Some(_), None) => Mended::Orphan,
        (None, Some(_)) => Mended::Phantom,
        (None, None) => Mended::Nothing,
    })
}

/// Record `object` as stored (what is recorded now, read under the lock,
/// not what the listing saw).
fn adopt(object: &ObjectEntry) -> Result<Mended, Error> {
    let Some(size) = stored(&object.key)? else { return Ok(Mended::Nothing) };
    let mut nar = metadata::get_nar(&object.key)?.unwrap_or(NarRecord {
        key: object.key.clone(),
        upstream_url: None,
        file_hash: None,
        file_size: Some(size),
        stored_size: None,
    });
    if nar.stored_size == Some(size) {
        return Ok(Mended::Nothing);
    }
    nar.stored_size = Some(size);
    metadata::put_nar(&nar)?;
    logging::info("adopted a stored NAR its record did not count", &[("url", &object.key)]);
    Ok(Mended::Adopted)
}

fn delete_orphan(object: &ObjectEntry) -> Result<Mended, Error> {
    let accounted = metadata::get_nar(&object.key)?.is_some_and(|r| r.stored_size.is_some());
    if accounted || metadata::is_referenced(&object.key)? {
        return Ok(Mended::Nothing);
    }
    if !storage::delete(&object.key)? {
        return Ok(Mended::Nothing);
    }
    edge::purge(&[edge::object_path(&object.key)]);
    logging::info("deleted an orphaned NAR", &[("url", &object.key), ("bytes", &object.size.to_string())]);
    Ok(Mended::Orphan)
}

fn clear_phantom(record: &NarRecord) -> Result<Mended, Error> {
    if stored(&record.key)?.is_some() {
        return Ok(Mended::Nothing);
    }
    let Some(mut current) = metadata::get_nar(&record.key)? else { return Ok(Mended::Nothing) };
    if current.stored_size.is_none() {
        return Ok(Mended::Nothing);
    }
    // Copies kept by edge tiers (of a NAR deleted behind the cache's back) go too.
    let mut purged = vec![edge::object_path(&record.key)];
    if current.upstream_url.is_some() {
        current.stored_size = None;
        metadata::put_nar(&current)?;
        logging::info("unmarked a NAR whose object is gone", &[("url", &record.key)]);
    } else {
        let eviction = metadata::evict(&record.key)?;
        purged.extend(eviction.narinfos.iter().map(|h| edge::narinfo_path(h)));
        let narinfos = eviction.narinfos.len().to_string();
        logging::info(
            "forgot an uploaded NAR whose object is gone, with its narinfos",
            &[("url", &record.key), ("narinfos", &narinfos)],
        );
    }
    edge::purge(&purged);
    Ok(Mended::Phantom)
}
