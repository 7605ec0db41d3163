//! Opening the redb file: locking, repair, moving a damaged file aside,
//! creating tables and loading the meta state.

use super::tables::*;
use crate::error::{OpenError, storage};
use redb::{BackendError, Database, DatabaseError, ReadableDatabase, ReadableTable, StorageError};
use std::collections::HashMap;
use std::ops::Bound;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file name inside the data directory.
pub const DB_FILE: &str = "embercache.redb";

/// A file beside the database saying it was found damaged while in use
/// (redb panicked on one of its pages): the next open treats the database
/// as damaged, as if its own checks had failed (moved aside, or refused
/// when strict). Holds the reason.
pub const DAMAGED_MARKER: &str = "embercache.damaged";

/// Writes the damage marker beside `db_file` (best effort: a failure is
/// logged; the error already returned says what to do).
pub(crate) fn mark_damaged(db_file: &Path, reason: &str) {
    let marker = db_file.with_file_name(DAMAGED_MARKER);
    let r = std::fs::File::create(&marker).and_then(|mut f| {
        std::io::Write::write_all(&mut f, reason.as_bytes())?;
        f.sync_all()
    });
    if let Err(e) = r {
        tracing::error!(marker = %marker.display(), error = %e, "could not write the damage marker");
    }
}

/// Makes a fresh custom storage backend; called at open and again after an
/// I/O error (redb refuses every operation after one until reopened).
pub type BackendFactory =
    Arc<dyn Fn() -> std::io::Result<Box<dyn redb::StorageBackend>> + Send + Sync>;

/// Where the database lives, kept so the writer can reopen it.
#[derive(Clone)]
pub(crate) enum Source {
    Memory,
    Dir(PathBuf),
    Backend(BackendFactory),
}

/// What open read from the meta table.
#[derive(Debug, Default)]
pub(crate) struct MetaState {
    pub version_hw: u64,
    pub engine_time: u64,
    pub records: u64,
    pub bytes: u64,
    /// The current write-ahead log generation.
    pub wal_gen: u64,
    pub epochs: HashMap<String, u64>,
    /// id → (namespace, dictionary bytes)
    pub dicts: HashMap<u32, (String, Vec<u8>)>,
    /// namespace → current dictionary id
    pub dict_current: HashMap<String, u32>,
}

pub(crate) struct Opened {
    pub db: Database,
    pub meta: MetaState,
    pub moved_aside: Option<String>,
    pub file: Option<PathBuf>,
}

/// How an open attempt failed.
enum Failure {
    /// Not the file's fault: report as is.
    Fatal(OpenError),
    /// The file is damaged: move aside (or fail in strict mode).
    Damaged(String),
}

fn classify(e: DatabaseError, dir: &Path) -> Failure {
    match e {
        DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
            Failure::Fatal(OpenError::AlreadyOpen {
                dir: dir.to_path_buf(),
            })
        }
        DatabaseError::Storage(StorageError::Io(io))
            if !matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ) =>
        {
            Failure::Fatal(OpenError::Io {
                dir: dir.to_path_buf(),
                source: io,
            })
        }
        other => Failure::Damaged(other.to_string()),
    }
}

/// Opens (or creates) the database of `source`.
pub(crate) fn open(source: &Source, strict: bool) -> Result<Opened, OpenError> {
    let dir = match source {
        Source::Dir(dir) => dir.as_path(),
        Source::Memory | Source::Backend(_) => {
            let db = match source {
                Source::Backend(f) => {
                    let backend = f().map_err(|e| OpenError::Io {
                        dir: PathBuf::new(),
                        source: e,
                    })?;
                    Database::builder().create_with_backend(BoxedBackend(backend))
                }
                _ => {
                    Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())
                }
            }
            .map_err(|e| OpenError::Storage(storage(e)))?;
            if let Some(found) = meta_format(&db)
                && found > FORMAT
            {
                return Err(OpenError::UnsupportedFormat {
                    found,
                    supported: FORMAT,
                });
            }
            let meta = init(&db).map_err(|e| OpenError::Storage(storage(e)))?;
            return Ok(Opened {
                db,
                meta,
                moved_aside: None,
                file: None,
            });
        }
    };
    std::fs::create_dir_all(dir).map_err(|source| OpenError::Io {
        dir: dir.to_path_buf(),
        source,
    })?;
    let file = dir.join(DB_FILE);
    let marker = dir.join(DAMAGED_MARKER);
    if !file.exists() {
        // A marker without its file speaks of a file that is gone.
        let _ = std::fs::remove_file(&marker);
        match create_fresh(&file, dir) {
            Ok(()) => {}
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Damaged(reason)) => return Err(OpenError::Corrupt { file, reason }),
        }
    }
    let first = match std::fs::read_to_string(&marker) {
        Ok(reason) => {
            // Marked damaged, but maybe still in use: redb's lock decides
            // (another `Cache` or process on it gets `AlreadyOpen`, and the
            // file is left alone); once we could take it, the file is ours
            // to move aside.
            if let Ok(Err(e)) = catch_unwind(AssertUnwindSafe(|| create_file(&file)))
                && let Failure::Fatal(e) = classify(e, dir)
            {
                return Err(e);
            }
            Err(Failure::Damaged(format!(
                "found damaged while in use: {reason}"
            )))
        }
        Err(_) => try_open(&file, dir),
    };
    match first {
        Ok((db, meta)) => Ok(Opened {
            db,
            meta,
            moved_aside: None,
            file: Some(file),
        }),
        Err(Failure::Fatal(e)) => Err(e),
        Err(Failure::Damaged(reason)) if strict => Err(OpenError::Corrupt { file, reason }),
        Err(Failure::Damaged(reason)) => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0);
            let aside = dir.join(format!("{DB_FILE}.corrupt-{stamp}"));
            std::fs::rename(&file, &aside).map_err(|source| OpenError::Io {
                dir: dir.to_path_buf(),
                source,
            })?;
            // The marker went with the file it was about.
            let _ = std::fs::remove_file(&marker);
            let note = format!("{} moved to {} ({reason})", file.display(), aside.display());
            tracing::error!(
                file = %file.display(),
                moved_to = %aside.display(),
                %reason,
                "database file is damaged; moved aside, starting empty"
            );
            match try_open(&file, dir) {
                Ok((db, meta)) => Ok(Opened {
                    db,
                    meta,
                    moved_aside: Some(note),
                    file: Some(file),
                }),
                Err(Failure::Fatal(e)) => Err(e),
                Err(Failure::Damaged(reason)) => Err(OpenError::Corrupt { file, reason }),
            }
        }
    }
}

/// Opens the write-ahead log of a directory database (see `wal.rs`),
/// creating it unless `capacity` is 0 (the log is off; one left by an
/// earlier run is still opened, to be replayed).
pub(crate) fn open_wal(dir: &Path, capacity: u64) -> Result<Option<super::wal::Wal>, OpenError> {
    let io = |source| OpenError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let path = dir.join(super::wal::WAL_FILE);
    let exists = path.try_exists().map_err(io)?;
    if capacity == 0 && !exists {
        return Ok(None);
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    if !exists {
        // The new name must survive a power cut with the records in it.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
    }
    let backend = redb::backends::FileBackend::new(f).map_err(|e| match e {
        DatabaseError::Storage(StorageError::Io(e)) => io(e),
        other => OpenError::Storage(storage(other)),
    })?;
    // Through the fault-injecting wrapper, as the database file is.
    let backend: Box<dyn redb::StorageBackend> = if cfg!(feature = "failpoints") {
        Box::new(BoxedBackend(Box::new(backend)))
    } else {
        Box::new(backend)
    };
    super::wal::Wal::open(backend, capacity)
        .map(Some)
        .map_err(io)
}

/// Opens the file through redb's own file backend.
#[cfg(not(feature = "failpoints"))]
fn create_file(file: &Path) -> Result<Database, DatabaseError> {
    Database::builder().create(file)
}

/// With fault injection, the real file backend behind [`BoxedBackend`],
/// whose writes and fsyncs can be made to fail.
#[cfg(feature = "failpoints")]
fn create_file(file: &Path) -> Result<Database, DatabaseError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(file)
        .map_err(|e| DatabaseError::Storage(StorageError::Io(e)))?;
    let backend = redb::backends::FileBackend::new(f)?;
    Database::builder().create_with_backend(BoxedBackend(Box::new(backend)))
}

/// Builds a new database under a temporary name and links it into place
/// once its tables exist. redb writes a new file's magic number last, so a
/// crash while creating it in place would leave a file that a strict open
/// refuses forever; this way a crash leaves only a temporary file. Linking
/// (not renaming) never replaces a database another process created first.
fn create_fresh(file: &Path, dir: &Path) -> Result<(), Failure> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = dir.join(format!("{DB_FILE}.creating-{}-{nanos}", std::process::id()));
    let io = |source| {
        Failure::Fatal(OpenError::Io {
            dir: dir.to_path_buf(),
            source,
        })
    };
    let made = (|| {
        let db = create_file(&tmp).map_err(|e| classify(e, dir))?;
        init(&db).map_err(|e| Failure::Damaged(e.to_string()))?;
        drop(db);
        match std::fs::hard_link(&tmp, file) {
            Ok(()) => {}
            // Another process made it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        // Make the new name durable before anything is written through it.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)
    })();
    let _ = std::fs::remove_file(&tmp);
    made
}

fn try_open(file: &Path, dir: &Path) -> Result<(Database, MetaState), Failure> {
    // redb may panic on some damaged files; a damaged cache file must never
    // take the process down.
    let db = match catch_unwind(AssertUnwindSafe(|| create_file(file))) {
        Ok(Ok(db)) => db,
        Ok(Err(e)) => return Err(classify(e, dir)),
        Err(_) => return Err(Failure::Damaged("redb panicked while opening".into())),
    };
    // A file from a newer embercache is refused before anything is written
    // to it (and never mistaken for a damaged one).
    if let Some(found) = meta_format(&db)
        && found > FORMAT
    {
        return Err(Failure::Fatal(OpenError::UnsupportedFormat {
            found,
            supported: FORMAT,
        }));
    }
    match catch_unwind(AssertUnwindSafe(|| init(&db))) {
        Ok(Ok(meta)) => Ok((db, meta)),
        Ok(Err(e)) => Err(Failure::Damaged(e.to_string())),
        Err(_) => Err(Failure::Damaged(
            "redb panicked while reading tables".into(),
        )),
    }
}

/// Applies the declared schema versions (namespace, version): a namespace
/// whose stored version differs gets its epoch bumped, so nothing written
/// under the old version is served again. The first version declared for a
/// namespace is just recorded. One transaction for all of them.
pub(crate) fn apply_schema_versions(
    db: &Database,
    meta: &mut MetaState,
    declared: &[(String, String)],
) -> Result<Vec<String>, redb::Error> {
    let mut bumped = Vec::new();
    if declared.is_empty() {
        return Ok(bumped);
    }
    let w = db.begin_write()?;
    {
        let mut t = w.open_table(META)?;
        for (ns, version) in declared {
            let key = format!("{META_SCHEMA_PREFIX}{ns}");
            let stored = t.get(key.as_str())?.map(|v| v.value().to_vec());
            if stored.as_deref() == Some(version.as_bytes()) {
                continue;
            }
            if stored.is_some() {
                let epoch = meta.epochs.entry(ns.clone()).or_insert(0);
                *epoch += 1;
                let ekey = format!("{META_EPOCH_PREFIX}{ns}");
                t.insert(ekey.as_str(), epoch.to_le_bytes().as_slice())?;
                bumped.push(ns.clone());
            }
            t.insert(key.as_str(), version.as_bytes())?;
        }
    }
    w.commit()?;
    Ok(bumped)
}

fn meta_format(db: &Database) -> Option<u32> {
    // A panic on a damaged page reads as "no format"; `init` then meets
    // the damage inside its own guard.
    catch_unwind(AssertUnwindSafe(|| {
        let r = db.begin_read().ok()?;
        let t = r.open_table(META).ok()?;
        let v = t.get(META_FORMAT).ok()??;
        u32_from(v.value())
    }))
    .ok()
    .flatten()
}

/// Creates the tables if missing and loads the meta state.
fn init(db: &Database) -> Result<MetaState, redb::Error> {
    let w = db.begin_write()?;
    {
        let entries = w.open_table(ENTRIES)?;
        let mut expiry = w.open_table(EXPIRY)?;
        w.open_table(LOADER_META)?;
        w.open_table(super::outbox::OUTBOX)?;
        w.open_table(super::outbox::OUTBOX_ORDER)?;
        let mut meta = w.open_table(META)?;
        let stored = meta.get(META_FORMAT)?.and_then(|v| u32_from(v.value()));
        if stored == Some(1) {
            // Format 1 keyed the index by (expires_at, version) alone;
            // rebuild it from the records, in this same transaction.
            for item in entries.iter()? {
                let (k, v) = item?;
                let (ns, key) = k.value();
                if let Ok(h) = super::record::decode_header(v.value())
                    && h.expires_at != u64::MAX
                {
                    expiry.insert((h.expires_at, h.version, ns, key), ())?;
                }
            }
            tracing::info!("database format 1 upgraded to {FORMAT} (expiry index rebuilt)");
        } else if stored == Some(2) {
            // Format 2 also indexed the entries without a TTL (at
            // expires_at = u64::MAX); format 3 leaves them out.
            let never: Vec<(u64, String, Vec<u8>)> = expiry
                .range((u64::MAX, 0, "", &[][..])..)?
                .map(|item| {
                    item.map(|(k, _)| {
                        let (_, ver, ns, key) = k.value();
                        (ver, ns.to_string(), key.to_vec())
                    })
                })
                .collect::<Result<_, _>>()?;
            for (ver, ns, key) in &never {
                expiry.remove((u64::MAX, *ver, ns.as_str(), key.as_slice()))?;
            }
            tracing::info!(
                removed = never.len(),
                "database format 2 upgraded to {FORMAT} (entries without TTL left the expiry index)"
            );
        }
        if stored != Some(FORMAT) {
            meta.insert(META_FORMAT, FORMAT.to_le_bytes().as_slice())?;
        }
        if meta.get(META_WAL_GEN)?.is_none() {
            // Random, so that a log left beside a new database by an older
            // one never matches its generation.
            use std::hash::BuildHasher;
            let start = std::collections::hash_map::RandomState::new().hash_one(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            meta.insert(META_WAL_GEN, start.to_le_bytes().as_slice())?;
        }
    }
    // Format 1's index, if any (false when there is none).
    w.delete_table(EXPIRY_V1)?;
    w.commit()?;
    let r = db.begin_read()?;
    let meta = r.open_table(META)?;
    let num = |k: &str| -> Result<u64, redb::Error> {
        Ok(meta.get(k)?.and_then(|v| u64_from(v.value())).unwrap_or(0))
    };
    let mut st = MetaState {
        version_hw: num(META_VERSION_HW)?,
        engine_time: num(META_TIME)?,
        records: num(META_RECORDS)?,
        bytes: num(META_BYTES)?,
        wal_gen: num(META_WAL_GEN)?,
        ..Default::default()
    };
    for item in meta.range(META_EPOCH_PREFIX..)? {
        let (k, v) = item?;
        let Some(ns) = k.value().strip_prefix(META_EPOCH_PREFIX) else {
            break;
        };
        if let Some(e) = u64_from(v.value()) {
            st.epochs.insert(ns.to_string(), e);
        }
    }
    for item in meta.range(META_DICT_PREFIX..)? {
        let (k, v) = item?;
        let Some(id) = k.value().strip_prefix(META_DICT_PREFIX) else {
            break;
        };
        if let (Ok(id), Ok(d)) = (
            id.parse::<u32>(),
            postcard::from_bytes::<(String, Vec<u8>)>(v.value()),
        ) {
            st.dicts.insert(id, d);
        }
    }
    for item in meta.range(META_DICT_CURRENT_PREFIX..)? {
        let (k, v) = item?;
        let Some(ns) = k.value().strip_prefix(META_DICT_CURRENT_PREFIX) else {
            break;
        };
        if let Some(id) = u32_from(v.value()) {
            st.dict_current.insert(ns.to_string(), id);
        }
    }
    Ok(st)
}

/// Adapts a boxed backend to redb's `StorageBackend` (which wants a sized
/// type). With the `failpoints` feature, writes can fail with ENOSPC
/// (`disk::write`) and fsyncs with EIO (`disk::fsync`).
#[derive(Debug)]
struct BoxedBackend(Box<dyn redb::StorageBackend>);

impl redb::StorageBackend for BoxedBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        failpoint!("disk::write", |_| Err(std::io::Error::from_raw_os_error(
            28
        )));
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        failpoint!("disk::fsync", |_| Err(std::io::Error::from_raw_os_error(5)));
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        failpoint!("disk::write", |_| Err(std::io::Error::from_raw_os_error(
            28
        )));
        self.0.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.0.close()
    }
    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.0.try_lock_range(s, e)
    }
    fn try_lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.0.try_lock_shared_range(s, e)
    }
    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_range(s, e)
    }
    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_shared_range(s, e)
    }
    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
        self.0.unlock_range(s, e)
    }
    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
        self.0.query_lock_range(s, e)
    }
}
