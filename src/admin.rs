//! Offline and maintenance operations behind `embercache verify`,
//! `embercache compact`, `embercache export` and `embercache stats`.
//!
//! They read the redb tables directly (one read transaction each, so they
//! see one consistent snapshot while the cache keeps serving) and decode
//! every record with the public codec, so they check exactly what a read
//! would check.
//!
//! Compaction is a function of the directory, not of an open [`Cache`]:
//! redb's `Database::compact` needs `&mut Database`, and the engine shares
//! its database with the writer and warm-up threads. [`compact_dir`]
//! therefore opens the cache (to sweep expired and invalidated records),
//! closes it, reopens the bare file with redb and compacts it in place.
//! redb compacts with its own two-phase commits, so a crash during
//! compaction leaves the previous, valid file; no temporary copy and no
//! rename are needed, and everything in the file (dictionaries, epochs,
//! the hot-set snapshot) is kept as is.

use crate::cache::Cache;
use crate::error::{OpenError, WriteError, storage};
use crate::store::open::DB_FILE;
use crate::store::record;
use crate::store::tables::{
    ENTRIES, EXPIRY, META, META_BYTES, META_EPOCH_PREFIX, META_RECORDS, u64_from,
};
use redb::ReadableTable;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Errors from the maintenance operations in this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The directory holds no embercache database.
    #[error("no embercache database in {dir} (expected {DB_FILE} there); check the path")]
    NoDatabase { dir: PathBuf },
    /// Opening the cache failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// A flush, maintenance pass or close failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// redb failed while reading or compacting.
    #[error("storage error: {0}; run `embercache verify` on the directory")]
    Storage(#[source] Arc<redb::Error>),
    /// Compaction could not run.
    #[error("compaction failed: {0}")]
    Compact(String),
    /// The caller's sink (export) returned an error; the export stopped.
    #[error("export stopped: {0}")]
    Sink(#[source] std::io::Error),
}

fn st<E: Into<redb::Error>>(e: E) -> AdminError {
    AdminError::Storage(storage(e))
}

/// One problem found by [`Cache::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// Namespace of the record (or of the index entry).
    pub namespace: String,
    /// Key of the record.
    pub key: Vec<u8>,
    /// What is wrong, in words.
    pub reason: String,
}

/// What [`Cache::verify`] checked and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Records of the entries table that were decoded and checked.
    pub records: u64,
    /// Entries of the expiry index that were checked.
    pub index_entries: u64,
    /// Records already expired or of an old namespace epoch, waiting for
    /// the sweeper. Not a problem.
    pub dead_records: u64,
    /// Every record or index entry that failed a check.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether nothing failed.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One live entry, as [`Cache::export`] hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportedEntry {
    pub namespace: String,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Absolute expiry in unix milliseconds (engine time); `None` = never.
    pub expires_at_ms: Option<u64>,
}

/// Records and bytes of one namespace on disk, from [`Cache::disk_usage`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NamespaceDisk {
    pub namespace: String,
    /// Records stored, live or not.
    pub records: u64,
    /// Of those, live: not expired and of the current epoch.
    pub live: u64,
    /// Key + record bytes (what the warm-tier bound counts).
    pub bytes: u64,
    /// Value bytes before compression, of the records that decode.
    pub raw_bytes: u64,
}

/// What [`compact_dir`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactReport {
    /// File size before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// redb compaction passes that moved something.
    pub passes: u32,
    pub took: Duration,
}

/// Epochs persisted in the meta table, read in the caller's transaction so
/// they match the records it reads.
fn epochs(r: &redb::ReadTransaction) -> Result<HashMap<String, u64>, AdminError> {
    let meta = r.open_table(META).map_err(st)?;
    let mut out = HashMap::new();
    for item in meta.range(META_EPOCH_PREFIX..).map_err(st)? {
        let (k, v) = item.map_err(st)?;
        let Some(ns) = k.value().strip_prefix(META_EPOCH_PREFIX) else {
            break;
        };
        if let Some(e) = u64_from(v.value()) {
            out.insert(ns.to_string(), e);
        }
    }
    Ok(out)
}

fn meta_u64(r: &redb::ReadTransaction, key: &str) -> Result<Option<u64>, AdminError> {
    let meta = r.open_table(META).map_err(st)?;
    Ok(meta.get(key).map_err(st)?.and_then(|v| u64_from(v.value())))
}

impl Cache {
    /// Walks every record and every expiry-index entry and checks them:
    /// each record decodes (header, checksum, bounded decompression,
    /// dictionary), has exactly one index entry pointing back at it if it
    /// has a TTL (entries without one are not indexed), every
    /// index entry points at a record of the same version, and the record
    /// and byte counts kept in the meta table match. `progress(done, total)`
    /// is called every few hundred records (total = stored record count).
    ///
    /// Runs on one read snapshot: the cache keeps serving meanwhile.
    pub fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport, AdminError> {
        self.admin_guard("verify", || self.verify_unguarded(progress))
    }

    /// redb panics on some damaged pages: such a panic becomes a typed
    /// error, and the file is marked damaged (moved aside at the next open).
    fn admin_guard<T>(
        &self,
        what: &str,
        f: impl FnOnce() -> Result<T, AdminError>,
    ) -> Result<T, AdminError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|p| Err(AdminError::Storage(self.sh().damaged_or_resume(what, p))))
    }

    fn verify_unguarded(
        &self,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<VerifyReport, AdminError> {
        let sh = self.sh();
        let r = sh.begin_read().map_err(AdminError::Storage)?;
        let entries = r.open_table(ENTRIES).map_err(st)?;
        let expiry = r.open_table(EXPIRY).map_err(st)?;
        let epochs = epochs(&r)?;
        let total = meta_u64(&r, META_RECORDS)?.unwrap_or(0);
        let now = sh.time.now_ms();
        let mut rep = VerifyReport::default();
        let mut bytes = 0u64;
        let problem = |ns: &str, key: &[u8], reason: String| Problem {
            namespace: ns.to_string(),
            key: key.to_vec(),
            reason,
        };
        for item in entries.iter().map_err(st)? {
            let (k, v) = item.map_err(st)?;
            let (ns, key) = k.value();
            let rec = v.value();
            rep.records += 1;
            bytes += (key.len() + rec.len()) as u64;
            if rep.records % 512 == 0 {
                progress(rep.records, total.max(rep.records));
            }
            let h = match record::decode(rec, sh.limits.max_value_len, &|id| sh.decoder(id)) {
                Ok((h, _)) => h,
                Err(e) => {
                    rep.problems.push(problem(ns, key, e.to_string()));
                    continue;
                }
            };
            if h.expires_at <= now || h.epoch < epochs.get(ns).copied().unwrap_or(0) {
                rep.dead_records += 1;
            }
            if h.expires_at != u64::MAX
                && expiry
                    .get((h.expires_at, h.version, ns, key))
                    .map_err(st)?
                    .is_none()
            {
                rep.problems.push(problem(
                    ns,
                    key,
                    format!(
                        "no expiry-index entry for (expires_at {}, version {}); the sweeper will never remove it",
                        h.expires_at, h.version
                    ),
                ));
            }
        }
        progress(rep.records, total.max(rep.records));
        for item in expiry.iter().map_err(st)? {
            let (k, _) = item.map_err(st)?;
            let (exp, ver, ns, key) = k.value();
            rep.index_entries += 1;
            let stored = entries.get((ns, key)).map_err(st)?;
            let reason = match stored.map(|g| record::decode_header(g.value())) {
                None => Some("expiry-index entry points at no record".to_string()),
                Some(Err(_)) => None, // already reported with the record
                Some(Ok(h)) if h.version != ver || h.expires_at != exp => Some(format!(
                    "stale expiry-index entry (expires_at {exp}, version {ver}); the record has version {}",
                    h.version
                )),
                Some(Ok(_)) => None,
            };
            if let Some(reason) = reason {
                rep.problems.push(problem(ns, key, reason));
            }
        }
        if let Some(n) = meta_u64(&r, META_RECORDS)?
            && n != rep.records
        {
            rep.problems.push(problem(
                "<meta>",
                b"records",
                format!(
                    "meta table counts {n} records, the entries table holds {}",
                    rep.records
                ),
            ));
        }
        if let Some(n) = meta_u64(&r, META_BYTES)?
            && n != bytes
        {
            rep.problems.push(problem(
                "<meta>",
                b"bytes",
                format!("meta table counts {n} bytes, the entries table holds {bytes}"),
            ));
        }
        Ok(rep)
    }

    /// Hands every live entry (not expired, of the current epoch) to
    /// `sink`, in (namespace, key) order, after a flush so that every write
    /// accepted so far is included. Records that fail their checks are
    /// skipped (`verify` lists them). Stops at the first sink error.
    /// Returns the number of entries exported.
    pub fn export(
        &self,
        sink: &mut dyn FnMut(ExportedEntry) -> std::io::Result<()>,
    ) -> Result<u64, AdminError> {
        self.flush()?;
        self.admin_guard("export", || self.export_unguarded(sink))
    }

    fn export_unguarded(
        &self,
        sink: &mut dyn FnMut(ExportedEntry) -> std::io::Result<()>,
    ) -> Result<u64, AdminError> {
        let sh = self.sh();
        let r = sh.begin_read().map_err(AdminError::Storage)?;
        let entries = r.open_table(ENTRIES).map_err(st)?;
        let epochs = epochs(&r)?;
        let now = sh.time.now_ms();
        let mut n = 0;
        for item in entries.iter().map_err(st)? {
            let (k, v) = item.map_err(st)?;
            let (ns, key) = k.value();
            let Ok((h, value)) =
                record::decode(v.value(), sh.limits.max_value_len, &|id| sh.decoder(id))
            else {
                continue;
            };
            if h.expires_at <= now || h.epoch < epochs.get(ns).copied().unwrap_or(0) {
                continue;
            }
            sink(ExportedEntry {
                namespace: ns.to_string(),
                key: key.to_vec(),
                value,
                expires_at_ms: (h.expires_at != u64::MAX).then_some(h.expires_at),
            })
            .map_err(AdminError::Sink)?;
            n += 1;
        }
        Ok(n)
    }

    /// Records, live records and bytes per namespace on disk, from one
    /// pass over the entries table (after a flush).
    pub fn disk_usage(&self) -> Result<Vec<NamespaceDisk>, AdminError> {
        self.flush()?;
        self.admin_guard("disk usage", || self.disk_usage_unguarded())
    }

    fn disk_usage_unguarded(&self) -> Result<Vec<NamespaceDisk>, AdminError> {
        let sh = self.sh();
        let r = sh.begin_read().map_err(AdminError::Storage)?;
        let entries = r.open_table(ENTRIES).map_err(st)?;
        let epochs = epochs(&r)?;
        let now = sh.time.now_ms();
        let mut out: BTreeMap<String, NamespaceDisk> = BTreeMap::new();
        for item in entries.iter().map_err(st)? {
            let (k, v) = item.map_err(st)?;
            let (ns, key) = k.value();
            let rec = v.value();
            if !out.contains_key(ns) {
                let d = NamespaceDisk {
                    namespace: ns.to_string(),
                    ..Default::default()
                };
                out.insert(ns.to_string(), d);
            }
            let Some(d) = out.get_mut(ns) else { continue };
            d.records += 1;
            d.bytes += (key.len() + rec.len()) as u64;
            if let Ok(h) = record::decode_header(rec) {
                d.raw_bytes += u64::from(h.raw_len);
                if h.expires_at > now && h.epoch >= epochs.get(ns).copied().unwrap_or(0) {
                    d.live += 1;
                }
            }
        }
        Ok(out.into_values().collect())
    }
}

/// Compacts the database in `dir`: opens the cache and runs a maintenance
/// pass (drops expired records and those of invalidated epochs), closes
/// it, then runs redb's compaction on the file until nothing more moves.
/// The directory must not be open elsewhere (`OpenError::AlreadyOpen`).
/// `progress(pass)` is called after each compaction pass.
///
/// Why not from an open cache: `redb::Database::compact` needs exclusive
/// access, and the engine shares its database with its background
/// threads. See the module docs.
pub fn compact_dir(dir: &Path, progress: &mut dyn FnMut(u32)) -> Result<CompactReport, AdminError> {
    let start = Instant::now();
    let file = dir.join(DB_FILE);
    let size = |f: &Path| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
    if !file.is_file() {
        return Err(AdminError::NoDatabase {
            dir: dir.to_path_buf(),
        });
    }
    let bytes_before = size(&file);
    let cache = Cache::builder().dir(dir).strict(true).open()?;
    cache.run_maintenance()?;
    // Let the warm-up finish, so the hot-set snapshot written at close is
    // the whole one and the next open is as warm as before.
    cache.wait_for_warm_up(Duration::from_secs(30));
    cache.close()?;
    let mut db = redb::Database::open(&file).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => AdminError::Open(OpenError::AlreadyOpen {
            dir: dir.to_path_buf(),
        }),
        other => st(other),
    })?;
    let mut passes = 0;
    loop {
        // redb may panic on a damaged page: a typed error, not a crash.
        let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| db.compact()))
            .unwrap_or_else(|_| {
                Err(redb::CompactionError::Storage(
                    redb::StorageError::Corrupted(
                        "redb panicked: the database file is damaged; open the cache (not \
                     strict) to move it aside"
                            .into(),
                    ),
                ))
            });
        match pass {
            Ok(true) => {
                passes += 1;
                progress(passes);
            }
            Ok(false) => break,
            Err(e) => return Err(AdminError::Compact(e.to_string())),
        }
    }
    drop(db);
    Ok(CompactReport {
        bytes_before,
        bytes_after: size(&file),
        passes,
        took: start.elapsed(),
    })
}

impl Cache {
    /// Waits (polling, up to `max`) until the hot-set warm-up that started
    /// at open is done. Returns whether it finished. Closing a cache while
    /// its warm-up runs writes a snapshot of only what was loaded so far,
    /// so short-lived processes (CLI commands) call this before `close()`.
    pub fn wait_for_warm_up(&self, max: Duration) -> bool {
        let deadline = Instant::now() + max;
        loop {
            if self.stats().warmup_done {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
