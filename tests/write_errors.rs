//! A failing disk (ENOSPC / EIO on write and fsync) under the real redb
//! file backend: errors reach the callers that wait for durability and the
//! stats, reads keep working, nothing acknowledged is lost, and the cache
//! recovers once the fault clears.

use embercache::{Cache, Durability, WriteError};
use redb::StorageBackend;
use redb::backends::FileBackend;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The real file backend; while `full` is set, writes and syncs fail with
/// ENOSPC as a full disk would.
#[derive(Debug)]
struct DiskThatFills {
    inner: FileBackend,
    full: Arc<AtomicBool>,
}

fn enospc() -> std::io::Error {
    std::io::Error::from_raw_os_error(28)
}

impl StorageBackend for DiskThatFills {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        if self.full.load(Ordering::SeqCst) && len > self.inner.len()? {
            return Err(enospc());
        }
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        if self.full.load(Ordering::SeqCst) {
            return Err(enospc());
        }
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        if self.full.load(Ordering::SeqCst) {
            return Err(enospc());
        }
        self.inner.write(offset, data)
    }
    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }
    fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_range(s, e)
    }
    fn try_lock_shared_range(
        &self,
        s: Bound<u64>,
        e: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.inner.try_lock_shared_range(s, e)
    }
    fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_range(s, e)
    }
    fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.lock_shared_range(s, e)
    }
    fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), redb::BackendError> {
        self.inner.unlock_range(s, e)
    }
    fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, redb::BackendError> {
        self.inner.query_lock_range(s, e)
    }
}

fn open(path: &Path, full: &Arc<AtomicBool>) -> Cache {
    let path: PathBuf = path.to_path_buf();
    let full = full.clone();
    Cache::builder()
        .storage_backend(move || {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            let inner = FileBackend::new(f).map_err(std::io::Error::other)?;
            Ok(DiskThatFills {
                inner,
                full: full.clone(),
            })
        })
        .durability(Durability::Sync)
        .open()
        .unwrap()
}

#[test]
fn disk_full_is_reported_reads_continue_and_the_cache_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("db.redb");
    let full = Arc::new(AtomicBool::new(false));
    let cache = open(&file, &full);
    for i in 0..100u32 {
        cache.set("ns", &i.to_be_bytes(), vec![1u8; 500]).unwrap();
    }

    full.store(true, Ordering::SeqCst);
    let err = cache.set("ns", b"during", b"fault".to_vec()).unwrap_err();
    assert!(matches!(err, WriteError::Storage(_)), "{err}");
    let stats = cache.stats();
    assert!(stats.write_errors >= 1);
    assert!(stats.last_write_error.is_some());
    // Reads keep working: acknowledged values from the hot tier, and the
    // unacknowledged write is visible (it is queued for retry).
    for i in 0..100u32 {
        assert_eq!(
            cache.get("ns", &i.to_be_bytes()).unwrap().as_deref(),
            Some(&[1u8; 500][..])
        );
    }
    assert_eq!(
        cache.get("ns", b"during").unwrap().as_deref(),
        Some(&b"fault"[..])
    );

    // The fault clears: the writer reopens the database and retries.
    full.store(false, Ordering::SeqCst);
    let mut recovered = false;
    for _ in 0..500 {
        if cache.flush().is_ok() {
            recovered = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(recovered, "cache did not recover after the fault cleared");
    cache.set("ns", b"after", b"ok".to_vec()).unwrap();
    cache.close().unwrap();

    let cache = open(&file, &full);
    for i in 0..100u32 {
        assert_eq!(
            cache.get("ns", &i.to_be_bytes()).unwrap().as_deref(),
            Some(&[1u8; 500][..]),
            "acknowledged key {i} lost"
        );
    }
    assert_eq!(
        cache.get("ns", b"after").unwrap().as_deref(),
        Some(&b"ok"[..])
    );
    // The write that failed was retried once the disk had room again.
    assert_eq!(
        cache.get("ns", b"during").unwrap().as_deref(),
        Some(&b"fault"[..])
    );
}

#[test]
fn a_full_queue_blocks_for_a_bounded_time_then_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("db.redb");
    let full = Arc::new(AtomicBool::new(false));
    let path = file.clone();
    let flag = full.clone();
    let mut limits = embercache::Limits::default();
    limits.queue_capacity = 4;
    limits.queue_wait = std::time::Duration::from_millis(100);
    let cache = Cache::builder()
        .storage_backend(move || {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            Ok(DiskThatFills {
                inner: FileBackend::new(f).map_err(std::io::Error::other)?,
                full: flag.clone(),
            })
        })
        .limits(limits)
        .open()
        .unwrap();
    // A stuck disk: the writer keeps retrying, the queue fills up.
    full.store(true, Ordering::SeqCst);
    let mut queue_full = None;
    for i in 0..10_000u32 {
        match cache.set("ns", &i.to_be_bytes(), b"v".to_vec()) {
            Ok(()) => {}
            Err(e) => {
                queue_full = Some(e);
                break;
            }
        }
    }
    let e = queue_full.expect("writes never pushed back");
    assert!(matches!(e, WriteError::QueueFull { .. }), "{e}");
    full.store(false, Ordering::SeqCst);
}

#[test]
fn close_on_a_failing_disk_returns_the_error_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("db.redb");
    let full = Arc::new(AtomicBool::new(false));
    let cache = open(&file, &full);
    cache.set("ns", b"before", b"durable".to_vec()).unwrap();
    full.store(true, Ordering::SeqCst);
    // Sync mode: this write fails, stays queued for retry; close() must
    // give up on it with an error rather than retry forever.
    assert!(cache.set("ns", b"during", b"x".to_vec()).is_err());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(cache.close()).unwrap());
    let closed = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("close() hung on a failing disk");
    assert!(matches!(closed, Err(WriteError::Storage(_))), "{closed:?}");
    full.store(false, Ordering::SeqCst);
    let cache = open(&file, &full);
    assert_eq!(
        cache.get("ns", b"before").unwrap().as_deref(),
        Some(&b"durable"[..])
    );
}
