//! Fault injection with the `fail` crate (`--features failpoints`): errors
//! and panics at commit, a durable commit that lands and then reports an
//! error, disk write (ENOSPC), fsync (EIO), zstd compression
//! and decompression, dictionary load and the expiry sweep. For each: the
//! point is hit, reads keep working (hot tier and queued writes; the warm
//! tier where the fault allows), the error reaches the callers waiting for
//! durability and the stats, nothing acknowledged durable is lost, and the
//! cache recovers once the fault clears. With the mirror, two points hold
//! the outbox drain and a read-through fill, so that a delete can be run
//! between a read-through's Redis answer and its fill.
#![cfg(feature = "failpoints")]

use embercache::{Cache, Durability, ManualClock, NamespacePolicy, ReadError, WriteError};
use fail::FailScenario;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[cfg(feature = "redis")]
mod common;

const T0: u64 = 1_750_000_000_000;

/// Every point this file exercises; checked against the library's list.
const TESTED: &[&str] = &[
    "writer::commit",
    "writer::defer",
    "writer::durable_commit",
    "writer::sweep",
    "disk::write",
    "disk::fsync",
    "zstd::compress",
    "zstd::decompress",
    "dict::load",
    #[cfg(feature = "redis")]
    "mirror::drain",
    #[cfg(feature = "redis")]
    "mirror::fill",
    #[cfg(feature = "redis")]
    "mirror::subscribe",
    #[cfg(feature = "redis")]
    "mirror::queue_full",
];

#[test]
fn every_failpoint_is_exercised() {
    let lib: BTreeSet<&str> = embercache::FAILPOINTS.iter().copied().collect();
    let tested: BTreeSet<&str> = TESTED.iter().copied().collect();
    assert_eq!(
        lib, tested,
        "a failpoint without a test, or a test of a missing point"
    );
}

/// Counts hits of `name` (replacing any action configured on it).
fn count_hits(name: &str) -> Arc<AtomicUsize> {
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    fail::cfg_callback(name, move || {
        c.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    n
}

fn open(dir: &Path, clock: &ManualClock) -> Cache {
    Cache::builder()
        .dir(dir)
        .clock(clock.clone())
        .durability(Durability::Sync)
        .hot_capacity(64 << 10)
        .shards(1)
        .open()
        .unwrap()
}

/// Like `open`, with namespace "cold" kept out of the hot tier so every read
/// of it decodes a record from disk.
fn open_cold(dir: &Path, clock: &ManualClock) -> Cache {
    Cache::builder()
        .dir(dir)
        .clock(clock.clone())
        .durability(Durability::Sync)
        .namespace("cold", NamespacePolicy::default().hot_admission(false))
        .open()
        .unwrap()
}

fn value(i: u32) -> Vec<u8> {
    format!(
        "{{\"market\":{i},\"price\":0.{i},\"pad\":\"{}\"}}",
        "x".repeat(200)
    )
    .into_bytes()
}

/// Retries `flush` until the writer has recovered (bounded).
fn wait_recovered(c: &Cache) {
    for _ in 0..1000 {
        if c.flush().is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the cache did not recover after the fault cleared");
}

/// Waits (bounded) until the writer has counted `n` failed commits.
fn wait_for_write_errors(c: &Cache, n: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.stats().write_errors < n {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {n} failed commits"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A write fault (`point` set to `action`): acknowledged writes survive,
/// the failing write reports the error, hot reads go on, recovery follows.
fn write_fault(point: &str, action: &str) {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let c = open(dir.path(), &clock);
    let hits = count_hits(point);
    for i in 0..200u32 {
        c.set("ns", &i.to_be_bytes(), value(i)).unwrap();
    }
    assert!(hits.load(Ordering::SeqCst) > 0, "{point} never hit");

    fail::cfg(point, action).unwrap();
    match c.set("ns", b"during", b"the fault".to_vec()) {
        Err(err) => assert!(
            matches!(err, WriteError::Storage(_)),
            "{point}={action}: {err}"
        ),
        // A failing redb commit comes after the write-ahead log, which
        // answers the write unless an earlier group's failure (the last
        // one above commits after its callers were answered) has left
        // the database to reopen and replay first.
        Ok(()) if point == "writer::commit" => {
            // Its commit fails just after the answer.
            wait_for_write_errors(&c, 1);
        }
        Ok(()) => panic!("{point}={action}: the write was acknowledged"),
    }
    let s = c.stats();
    assert!(s.write_errors >= 1, "{point}: error not in stats");
    assert!(s.last_write_error.is_some());
    // Reads from memory keep working: the newest values are hot, and the
    // failed write is queued for retry and visible.
    assert_eq!(
        c.get("ns", &199u32.to_be_bytes()).unwrap().as_deref(),
        Some(&value(199)[..])
    );
    assert_eq!(
        c.get("ns", b"during").unwrap().as_deref(),
        Some(&b"the fault"[..])
    );

    fail::remove(point);
    wait_recovered(&c);
    // The warm tier answers again (key 0 was evicted from the 64 KiB hot tier).
    assert_eq!(
        c.get("ns", &0u32.to_be_bytes()).unwrap().as_deref(),
        Some(&value(0)[..])
    );
    c.close().unwrap();

    let c = open(dir.path(), &clock);
    for i in 0..200u32 {
        assert_eq!(
            c.get("ns", &i.to_be_bytes()).unwrap().as_deref(),
            Some(&value(i)[..]),
            "{point}: acked key {i} lost"
        );
    }
    assert_eq!(
        c.get("ns", b"during").unwrap().as_deref(),
        Some(&b"the fault"[..]),
        "retried write missing"
    );
    c.close().unwrap();
    scenario.teardown();
}

#[test]
fn commit_error() {
    write_fault("writer::commit", "return");
}

/// A `Sync` write is answered once its group is in the write-ahead log,
/// before the redb commit. When that commit then fails, and keeps failing
/// until close gives up, the write must still come back at the next open:
/// nothing may start the log over (a durable commit) while the group is
/// only in the log.
#[test]
fn a_write_answered_from_the_log_survives_a_failing_commit_and_close() {
    // An I/O error makes the writer reopen the database, whose replay then
    // fails too; another error (`return(other)`) leaves it open, so only
    // the order of the writer's loop keeps its checkpoint away.
    for action in ["return", "return(other)", "panic"] {
        let scenario = FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let c = open(dir.path(), &clock);
        c.set("ns", b"before", value(1)).unwrap();
        c.run_maintenance().unwrap(); // a checkpoint: the log starts over
        fail::cfg("writer::commit", action).unwrap();
        // Answered from the log although its commit fails.
        c.set("ns", b"k", value(2)).unwrap();
        assert_eq!(c.get("ns", b"k").unwrap().as_deref(), Some(&value(2)[..]));
        // The group is retried and keeps failing; maintenance must not run
        // its checkpoint meanwhile. Wait for a few retries.
        wait_for_write_errors(&c, 3);
        c.run_maintenance().unwrap_err();
        assert!(c.close().is_err(), "{action}: close cannot commit");
        fail::remove("writer::commit");
        let c = open(dir.path(), &clock);
        assert_eq!(
            c.get("ns", b"k").unwrap().as_deref(),
            Some(&value(2)[..]),
            "{action}: a write answered from the log was lost"
        );
        // Came back from the log (once per retry that logged the group
        // again, when the database stayed open).
        assert!(c.stats().log_replayed >= 1, "{action}");
        c.close().unwrap();
        scenario.teardown();
    }
}

/// Logged groups share one redb transaction while writes are queued
/// (`Writer::defer`). When a later group's commit fails, the earlier
/// groups, answered and in the log but not in redb, are retried with it:
/// the checkpoint that follows starts the log over, so a write the retry
/// left out is gone at the next open.
#[test]
fn writes_of_an_open_transaction_survive_a_failing_commit() {
    // `return(other)` is the case that guards the retry: an I/O error, and
    // a panic (the writer turns it into one), make the writer reopen the
    // database and replay the log, which would hide a write left out.
    for action in ["return(other)", "panic"] {
        let scenario = FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let c = Arc::new(open(dir.path(), &clock));
        let deferred = count_hits("writer::defer");
        // Slow commits: the other writers queue their next writes meanwhile,
        // so each group leaves the transaction open; then one fails.
        fail::cfg("writer::commit", &format!("12*sleep(5)->1*{action}->off")).unwrap();
        let writers: Vec<_> = (0..8u32)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let mut acked = Vec::new();
                    for i in 0..40u32 {
                        let k = format!("{t}:{i}");
                        if c.set("ns", k.as_bytes(), value(i)).is_ok() {
                            acked.push((k, i));
                        }
                    }
                    acked
                })
            })
            .collect();
        let acked: Vec<(String, u32)> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        assert!(c.stats().write_errors >= 1, "{action}: no commit failed");
        assert!(
            deferred.load(Ordering::SeqCst) > 0,
            "{action}: no group left its transaction open"
        );
        wait_recovered(&c);
        c.run_maintenance().unwrap(); // checkpoint: the log starts over
        Arc::into_inner(c).unwrap().close().unwrap();
        fail::remove("writer::commit");
        let c = open(dir.path(), &clock);
        for (k, i) in &acked {
            assert_eq!(
                c.get("ns", k.as_bytes()).unwrap().as_deref(),
                Some(&value(*i)[..]),
                "{action}: acknowledged write {k} lost"
            );
        }
        c.close().unwrap();
        scenario.teardown();
    }
}

#[test]
fn commit_panic() {
    write_fault("writer::commit", "panic");
}

#[test]
fn disk_full() {
    write_fault("disk::write", "return");
}

#[test]
fn fsync_error() {
    write_fault("disk::fsync", "return");
}

#[test]
fn compression_error_and_panic_store_raw() {
    for action in ["return", "panic"] {
        let scenario = FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let c = open(dir.path(), &clock);
        let hits = count_hits("zstd::compress");
        c.set("ns", b"a", value(1)).unwrap();
        assert!(hits.load(Ordering::SeqCst) > 0, "zstd::compress never hit");
        fail::cfg("zstd::compress", action).unwrap();
        c.set("ns", b"b", value(2)).unwrap();
        let s = c.stats().total();
        // b was stored raw: its payload counts in full.
        assert!(s.stored_bytes_written >= value(2).len() as u64);
        fail::remove("zstd::compress");
        c.set("ns", b"c", value(3)).unwrap();
        c.close().unwrap();
        let c = open(dir.path(), &clock);
        for (k, i) in [(b"a", 1), (b"b", 2), (b"c", 3)] {
            assert_eq!(c.get("ns", k).unwrap().as_deref(), Some(&value(i)[..]));
        }
        c.close().unwrap();
        scenario.teardown();
    }
}

#[test]
fn decompression_error_and_panic_are_typed_and_transient() {
    for action in ["return", "panic"] {
        let scenario = FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let c = open_cold(dir.path(), &clock);
        let hits = count_hits("zstd::decompress");
        c.set("cold", b"k", value(7)).unwrap();
        c.flush().unwrap(); // out of pending: reads now decode the record
        assert_eq!(c.get("cold", b"k").unwrap().as_deref(), Some(&value(7)[..]));
        assert!(
            hits.load(Ordering::SeqCst) > 0,
            "zstd::decompress never hit"
        );
        fail::cfg("zstd::decompress", action).unwrap();
        let err = c.get("cold", b"k").unwrap_err();
        assert!(matches!(err, ReadError::Corrupt { .. }), "{err}");
        assert_eq!(c.stats().corrupt_reads, 1);
        fail::remove("zstd::decompress");
        assert_eq!(c.get("cold", b"k").unwrap().as_deref(), Some(&value(7)[..]));
        c.close().unwrap();
        scenario.teardown();
    }
}

#[test]
fn dictionary_load_failure_heals_on_next_use() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let c = open(dir.path(), &clock);
    for i in 0..100u32 {
        c.set("m", &i.to_be_bytes(), value(i)).unwrap();
    }
    c.train_dictionary("m").unwrap();
    c.set("m", b"dict", value(1000)).unwrap();
    c.close().unwrap();

    let hits = count_hits("dict::load");
    let c = open(dir.path(), &clock);
    assert!(hits.load(Ordering::SeqCst) > 0, "dict::load never hit");
    c.close().unwrap();

    fail::cfg("dict::load", "return").unwrap();
    let c = open(dir.path(), &clock);
    let err = c.get("m", b"dict").unwrap_err();
    assert!(matches!(err, ReadError::Corrupt { .. }), "{err}");
    // Values not compressed with the dictionary are unaffected.
    assert_eq!(
        c.get("m", &3u32.to_be_bytes()).unwrap().as_deref(),
        Some(&value(3)[..])
    );
    fail::remove("dict::load");
    assert_eq!(
        c.get("m", b"dict").unwrap().as_deref(),
        Some(&value(1000)[..])
    );
    c.close().unwrap();
    scenario.teardown();
}

#[test]
fn sweep_error_and_panic_are_counted_and_retried() {
    for action in ["return", "panic"] {
        let scenario = FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let c = open(dir.path(), &clock);
        let hits = count_hits("writer::sweep");
        for i in 0..50u32 {
            c.set_with_ttl("ns", &i.to_be_bytes(), value(i), Duration::from_secs(10))
                .unwrap();
        }
        c.set("ns", b"keep", b"v".to_vec()).unwrap();
        c.run_maintenance().unwrap();
        assert!(hits.load(Ordering::SeqCst) > 0, "writer::sweep never hit");
        clock.advance(Duration::from_secs(11));
        fail::cfg("writer::sweep", action).unwrap();
        let before = c.stats().maintenance_errors;
        c.run_maintenance().unwrap();
        let s = c.stats();
        assert!(s.maintenance_errors > before, "sweep failure not counted");
        assert_eq!(s.disk_records, 51, "nothing swept while failing");
        // Expired entries are never served, swept or not.
        assert_eq!(c.get("ns", &0u32.to_be_bytes()).unwrap(), None);
        fail::remove("writer::sweep");
        c.run_maintenance().unwrap();
        assert_eq!(c.stats().disk_records, 1, "sweep did not recover");
        assert_eq!(c.get("ns", b"keep").unwrap().as_deref(), Some(&b"v"[..]));
        c.close().unwrap();
        scenario.teardown();
    }
}

/// Regression: the epoch purge must delete only records older than an epoch
/// that is *committed*. A bump made visible in memory but lost in a crash
/// must not have purged the acknowledged writes of the epoch that is then
/// still current. The purge is made to run between the bump becoming
/// visible and its commit (the sweep is paused, then commits fail), and
/// power is cut there.
#[cfg(feature = "testing")]
#[test]
fn epoch_purge_never_deletes_writes_of_a_committed_epoch() {
    use embercache::testing::PowerLossDisk;
    let scenario = FailScenario::setup();
    let disk = PowerLossDisk::new();
    let mut limits = embercache::Limits::default();
    limits.sweep_batch = 2; // the purge takes several passes
    limits.maintenance_interval = Duration::from_secs(3600);
    let c = Cache::builder()
        .storage_backend(disk.factory())
        .limits(limits.clone())
        .durability(Durability::Buffered {
            max_delay: Duration::from_millis(1),
        })
        .open()
        .unwrap();
    let durable = embercache::WriteOptions::default().durable();
    for i in 0..10u8 {
        c.set_with("pos", &[b'z', i], b"epoch 0".to_vec(), durable)
            .unwrap();
    }
    c.invalidate_namespace_durable("pos").unwrap();
    // Acknowledged writes of epoch 1; their keys sort before the epoch-0 ones.
    for i in 0..10u8 {
        c.set_with("pos", &[b'a', i], b"epoch 1".to_vec(), durable)
            .unwrap();
    }

    // The writer stops inside the maintenance pass, before the purge, and
    // tells us; it goes on when released.
    let (reached_tx, reached) = crossbeam_channel::bounded::<()>(1);
    let (release, release_rx) = crossbeam_channel::bounded::<()>(1);
    fail::cfg_callback("writer::sweep", move || {
        let _ = reached_tx.try_send(());
        let _ = release_rx.recv_timeout(Duration::from_secs(30));
    })
    .unwrap();
    let c2 = c.clone();
    let maint = std::thread::spawn(move || c2.run_maintenance());
    reached
        .recv_timeout(Duration::from_secs(30))
        .expect("writer never reached the sweep");
    c.invalidate_namespace("pos").unwrap(); // visible now, not committed
    fail::cfg("writer::commit", "return").unwrap(); // and it will not commit
    fail::remove("writer::sweep");
    release.send(()).unwrap();
    maint.join().unwrap().unwrap();

    // Power is cut here: the bump to epoch 2 never reached the disk.
    let image = disk.durable_image();
    let after = Cache::builder()
        .storage_backend(PowerLossDisk::from_image(image).factory())
        .limits(limits)
        .open()
        .unwrap();
    for i in 0..10u8 {
        assert_eq!(
            after.get("pos", &[b'a', i]).unwrap().as_deref(),
            Some(&b"epoch 1"[..]),
            "acknowledged write {i} of the committed epoch was purged"
        );
        assert_eq!(after.get("pos", &[b'z', i]).unwrap(), None);
    }
    drop(after);
    fail::remove("writer::commit");
    drop(c);
    scenario.teardown();
}

/// An idle cache still persists engine time (with the hot-set snapshot), so
/// a crash followed by a wall clock stepped back cannot revive an entry the
/// running process already saw expire (it is kept on disk for stale reads).
#[cfg(feature = "testing")]
#[test]
fn engine_time_is_persisted_while_idle() {
    use embercache::testing::PowerLossDisk;
    let t0 = T0;
    let clock = ManualClock::new(t0);
    let disk = PowerLossDisk::new();
    let policy = NamespacePolicy::default().max_stale(Duration::from_secs(7200));
    let mut limits = embercache::Limits::default();
    limits.snapshot_interval = Duration::from_millis(1);
    limits.maintenance_interval = Duration::from_millis(10);
    let cache = Cache::builder()
        .storage_backend(disk.factory())
        .clock(clock.clone())
        .limits(limits.clone())
        .namespace("n", policy.clone())
        .open()
        .unwrap();
    cache
        .set_with_ttl("n", b"k", b"v".to_vec(), Duration::from_secs(600))
        .unwrap();
    cache.flush().unwrap();
    clock.advance(Duration::from_secs(3600)); // expired an hour ago
    assert_eq!(cache.get("n", b"k").unwrap(), None);
    // Idle: no request reaches the writer, only its own maintenance passes
    // (nothing to sweep: the entry is kept for stale reads). Wait for one of
    // them to commit.
    let syncs = disk.syncs();
    let start = std::time::Instant::now();
    while disk.syncs() <= syncs + 1 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no maintenance commit"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let after = PowerLossDisk::from_image(disk.durable_image());
    let c2 = Cache::builder()
        .storage_backend(after.factory())
        .clock(ManualClock::new(t0 + 5 * 60_000)) // the clock stepped back
        .limits(limits)
        .namespace("n", policy)
        .open()
        .unwrap();
    assert_eq!(
        c2.get("n", b"k").unwrap(),
        None,
        "expired entry revived after a crash"
    );
    drop(c2);
    drop(cache);
}

/// Writes committed only through the write-ahead log (no checkpoint since)
/// are gone from redb when the writer reopens it after a write error: the
/// reopen replays them before any reader sees the database, and the record
/// counts start again from the durable database instead of counting the
/// lost commits twice.
#[test]
fn a_reopen_after_a_write_error_replays_the_logged_writes() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut limits = embercache::Limits::default();
    limits.maintenance_interval = Duration::from_secs(3600);
    let open = || {
        Cache::builder()
            .dir(dir.path())
            .clock(clock.clone())
            .durability(Durability::Sync)
            .limits(limits.clone())
            .hot_capacity(16 << 10)
            .shards(1)
            .open()
            .unwrap()
    };
    let c = open();
    // A checkpoint with the first 50; the rest only in the log.
    for i in 0..50u32 {
        c.set("ns", &i.to_be_bytes(), value(i)).unwrap();
    }
    c.run_maintenance().unwrap();
    for i in 50..150u32 {
        c.set("ns", &i.to_be_bytes(), value(i)).unwrap();
    }
    for i in (0..150u32).step_by(5) {
        c.delete("ns", &i.to_be_bytes()).unwrap();
    }
    c.flush().unwrap(); // the counters follow the last group's commit
    let records = c.stats().disk_records;
    assert_eq!(records, 120);

    // ENOSPC on every write: the log's append fails first (the group then
    // takes a durable commit), then redb's, which never wrote the pages of
    // its commits without fsync.
    fail::cfg("disk::write", "return").unwrap();
    assert!(c.set("ns", b"during", b"the fault".to_vec()).is_err());
    fail::remove("disk::write");
    wait_recovered(&c);
    let s = c.stats();
    assert!(s.write_errors >= 1);
    // 120 + the retried write, each counted once.
    assert_eq!(s.disk_records, 121, "record count after the reopen");
    // The 100 sets and 30 deletes after the checkpoint came back from the
    // log (the failed write's own record never reached it).
    assert_eq!(s.log_replayed, 130);
    let check = |c: &Cache| {
        for i in 0..150u32 {
            let want = (i % 5 != 0).then(|| value(i));
            assert_eq!(
                c.get("ns", &i.to_be_bytes()).unwrap().map(|b| b.to_vec()),
                want,
                "key {i}"
            );
        }
        assert_eq!(
            c.get("ns", b"during").unwrap().as_deref(),
            Some(&b"the fault"[..])
        );
    };
    check(&c);
    c.close().unwrap();
    let c = open();
    check(&c);
    assert_eq!(c.stats().disk_records, 121);
    c.close().unwrap();
    scenario.teardown();
}

/// A reopen that fails (the storage is still unavailable) leaves the warm
/// tier closed; a cache that then only reads gets it back from its own
/// maintenance pass, without a write to retry.
#[test]
fn a_failed_reopen_is_retried_by_maintenance_without_writes() {
    use embercache::testing::PowerLossDisk;
    use std::sync::atomic::AtomicBool;
    let scenario = FailScenario::setup();
    let clock = ManualClock::new(T0);
    let disk = PowerLossDisk::new();
    // The storage refuses to open while `gone` is set.
    let gone = Arc::new(AtomicBool::new(false));
    let factory = {
        let (disk, gone) = (disk.clone(), gone.clone());
        move || {
            if gone.load(Ordering::SeqCst) {
                Err(std::io::Error::other("storage unavailable"))
            } else {
                Ok(disk.clone())
            }
        }
    };
    let mut limits = embercache::Limits::default();
    limits.maintenance_interval = Duration::from_millis(20);
    let c = Cache::builder()
        .storage_backend(factory)
        .clock(clock.clone())
        .durability(Durability::Sync)
        .limits(limits)
        // Kept out of the hot tier: every read of "cold" is a warm read.
        .namespace("cold", NamespacePolicy::default().hot_admission(false))
        .open()
        .unwrap();
    for i in 0..20u32 {
        c.set("cold", &i.to_be_bytes(), value(i)).unwrap();
    }
    // A maintenance pass's commit fails with an I/O error, and the reopen
    // after it fails too. Control ops are not retried.
    gone.store(true, Ordering::SeqCst);
    fail::cfg("disk::write", "return").unwrap();
    assert!(c.run_maintenance().is_err());
    fail::remove("disk::write");
    // Only the warm tier has key 0, and it is closed.
    let mut closed = false;
    for _ in 0..200 {
        if c.get("cold", &0u32.to_be_bytes()).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        closed,
        "the warm tier never closed: the reopen did not fail"
    );
    gone.store(false, Ordering::SeqCst);
    let mut back = false;
    for _ in 0..500 {
        if let Ok(Some(v)) = c.get("cold", &0u32.to_be_bytes()) {
            assert_eq!(v.as_ref(), &value(0)[..]);
            back = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(back, "the warm tier never came back without a write");
    c.close().unwrap();
    scenario.teardown();
}

/// A durable commit that fails may have reached the disk anyway (an fsync
/// that fails after the pages landed), and with it the log's next
/// generation. The writer then logs nothing until a durable commit
/// succeeds: a write it logged under the old generation would be
/// acknowledged, and then skipped by recovery, which reads the new one.
#[test]
fn a_durable_commit_that_failed_but_landed_stops_the_log_until_one_succeeds() {
    use embercache::testing::PowerLossDisk;
    // `return`: an I/O error, after which the writer reopens the database
    // and reads the generation back; `return(other)`: another error, with
    // no reopen: only the stop keeps the next write out of the log.
    for action in ["return", "return(other)"] {
        let scenario = FailScenario::setup();
        let clock = ManualClock::new(T0);
        let (db, log) = (PowerLossDisk::new(), PowerLossDisk::new());
        let mut limits = embercache::Limits::default();
        limits.maintenance_interval = Duration::from_secs(3600);
        let c = Cache::builder()
            .storage_backend(db.factory())
            .wal_backend(log.factory())
            .clock(clock.clone())
            .durability(Durability::Sync)
            .limits(limits)
            .open()
            .unwrap();
        c.set("ns", b"a", value(1)).unwrap(); // in the log
        // The maintenance op's commit lands (the new generation is
        // durable), then reports the fault.
        fail::cfg("writer::durable_commit", &format!("1*{action}->off")).unwrap();
        let e = c.run_maintenance().unwrap_err().to_string();
        assert!(
            e.contains("injected") || e.contains("durable commit failed"),
            "{action}: {e}"
        );
        // Acknowledged after a durable commit (`return(other)`), or from
        // the log after the reopen read the generation back (`return`).
        c.set("ns", b"b", value(2)).unwrap();
        // That commit succeeded: the log is in step and takes writes again.
        c.set("ns", b"c", value(3)).unwrap();
        // Power goes: only what was synced is left, on both disks.
        let (db_image, log_image) = (db.durable_image(), log.durable_image());
        drop(c);
        fail::remove("writer::durable_commit");
        let after = Cache::builder()
            .storage_backend(PowerLossDisk::from_image(db_image).factory())
            .wal_backend(PowerLossDisk::from_image(log_image).factory())
            .clock(clock.clone())
            .open()
            .unwrap();
        for (k, i) in [(&b"a"[..], 1), (b"b", 2), (b"c", 3)] {
            assert_eq!(
                after.get("ns", k).unwrap().as_deref(),
                Some(&value(i)[..]),
                "{action}: acknowledged write {:?} lost",
                String::from_utf8_lossy(k)
            );
        }
        // Logging resumed: "c" came back from the log.
        assert!(after.stats().log_replayed >= 1, "{action}");
        after.close().unwrap();
        scenario.teardown();
    }
}

/// The race MIRROR.md's "A fill never goes back in time" closes: Redis
/// answers a read-through with the value from before a delete, and the
/// fill of that answer comes after the delete got through, when no pending
/// write, record or outbox row of it is left to compare with. The fill
/// must not bring the deleted value back (it then served until its TTL ran
/// out). Here a local delete, committed, delivered to Redis and
/// acknowledged while the fill waited:
#[cfg(feature = "redis")]
#[test]
fn a_read_through_fill_never_undoes_a_delete_made_meanwhile() {
    fill_across_a_delete(Delete::Local);
}

/// A local delete committed before the get asked Redis (its outbox row
/// held back, so Redis still had the old value), delivered and
/// acknowledged while the fill waited.
#[cfg(feature = "redis")]
#[test]
fn a_read_through_fill_never_undoes_a_delete_acknowledged_meanwhile() {
    fill_across_a_delete(Delete::LocalHeldBack);
}

/// Another instance's delete, applied here from pub/sub (no outbox row)
/// while the fill waited.
#[cfg(feature = "redis")]
#[test]
fn a_read_through_fill_never_undoes_a_remote_delete_applied_meanwhile() {
    fill_across_a_delete(Delete::Remote);
}

/// Another instance's delete made while this host's pub/sub was down (its
/// message lost), the fill let go only after the resubscription's
/// reconciliation passed the key, which was not here yet.
#[cfg(feature = "redis")]
#[test]
fn a_read_through_fill_never_undoes_a_delete_pub_sub_missed() {
    fill_across_a_delete(Delete::Unheard);
}

/// The same delete, the fill landed (not committed yet: the writer is held)
/// before the resubscription: the reconciliation must see it.
#[cfg(feature = "redis")]
#[test]
fn a_fill_landed_during_a_pub_sub_outage_is_reconciled() {
    fill_across_a_delete(Delete::UnheardLanded);
}

/// And the other way: a delete of another key made meanwhile does not stop
/// the fill (deletes are told apart by key, in 1024 stripes).
#[cfg(feature = "redis")]
#[test]
fn a_read_through_fill_lands_across_a_delete_of_another_key() {
    fill_across_a_delete(Delete::OtherKey);
}

/// Two instances mirrored to one real redis-server (`--appendonly no`):
/// `c` first, warm start over and subscribed (or another instance's delete
/// would go unheard), then `other`. Each has its own directory.
#[cfg(feature = "redis")]
struct TwoHosts {
    redis: common::Server,
    c: Cache,
    other: Cache,
    dirs: (tempfile::TempDir, tempfile::TempDir),
}

#[cfg(feature = "redis")]
const MIRROR_LIMIT: Duration = Duration::from_secs(10);

#[cfg(feature = "redis")]
impl TwoHosts {
    fn start(limits: embercache::Limits) -> TwoHosts {
        let mut redis = common::Server::new(&["--appendonly", "no"]);
        redis.start();
        let open = |dir: &Path| {
            Cache::builder()
                .dir(dir)
                .limits(limits.clone())
                .redis(
                    embercache::MirrorConfig::new(redis.url())
                        .check_interval(Duration::from_millis(100)),
                )
                .open()
                .unwrap()
        };
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // This host first, so that its warm start from Redis (an empty
        // directory) is over before anything is there.
        let c = open(dirs.0.path());
        common::wait_for("warm start and subscription", MIRROR_LIMIT, &mut || {
            c.mirror_stats()
                .is_some_and(|s| s.warm_done && s.pubsub_connects > 0)
        });
        let other = open(dirs.1.path());
        TwoHosts {
            redis,
            c,
            other,
            dirs,
        }
    }
}

/// Waits until `c`'s outbox has been delivered to Redis and acknowledged.
#[cfg(feature = "redis")]
fn drained(c: &Cache) {
    common::wait_for("outbox drained", MIRROR_LIMIT, &mut || {
        c.mirror_stats().unwrap().outbox_rows == 0
    });
}

/// A delete from pub/sub that finds this host's write queue full must still
/// reach the warm tier: before, only the hot copy went and a get served the
/// deleted value from redb until its TTL. Here the queue looks full to the
/// delete's first three tries (it waits for room, as a local write does),
/// or for longer than `queue_wait` (a reconciliation then finishes it).
#[cfg(feature = "redis")]
#[test]
fn a_remote_delete_that_finds_the_queue_full_waits_for_room() {
    remote_delete_into_a_full_queue(Full::ThreeTries);
}

#[cfg(feature = "redis")]
#[test]
fn a_remote_delete_that_stays_out_of_a_full_queue_is_reconciled() {
    remote_delete_into_a_full_queue(Full::BeyondQueueWait);
}

/// While the delete waits for room, the mirror's other work goes on: its
/// runtime thread is not the one waiting (a local write still reaches
/// Redis).
#[cfg(feature = "redis")]
#[test]
fn a_remote_delete_waiting_for_room_does_not_stall_the_mirror() {
    remote_delete_into_a_full_queue(Full::WhileTheDrainWorks);
}

#[cfg(feature = "redis")]
#[derive(Clone, Copy, PartialEq)]
enum Full {
    ThreeTries,
    BeyondQueueWait,
    /// Full until the test lets go (`queue_wait` far longer).
    WhileTheDrainWorks,
}

#[cfg(feature = "redis")]
fn remote_delete_into_a_full_queue(how: Full) {
    use common::wait_for;
    use embercache::Limits;
    const LIMIT: Duration = MIRROR_LIMIT;
    let stays_full = how == Full::BeyondQueueWait;

    let scenario = FailScenario::setup();
    let mut limits = Limits::default();
    limits.queue_wait = if how == Full::WhileTheDrainWorks {
        Duration::from_secs(60)
    } else {
        Duration::from_millis(100)
    };
    let TwoHosts {
        redis: _redis,
        c,
        other,
        dirs: (da, _db),
    } = TwoHosts::start(limits);
    other.set("ns", b"k", b"before".to_vec()).unwrap();
    other.flush().unwrap();
    drained(&other);
    // Read through and committed here: in the hot tier and in redb.
    assert_eq!(c.get("ns", b"k").unwrap().as_deref(), Some(&b"before"[..]));
    c.flush().unwrap();
    let before = c.mirror_stats().unwrap();
    fail::cfg(
        "mirror::queue_full",
        if how == Full::ThreeTries {
            "3*return"
        } else {
            "return"
        },
    )
    .unwrap();
    other.delete("ns", b"k").unwrap();
    other.flush().unwrap();
    drained(&other);
    if how == Full::WhileTheDrainWorks {
        wait_for("the delete received", LIMIT, &mut || {
            c.mirror_stats().unwrap().pubsub_received > before.pubsub_received
        });
        c.set("ns", b"another key", b"v".to_vec()).unwrap();
        c.flush().unwrap();
        // Within LIMIT, well before `queue_wait` ends the delete's wait.
        drained(&c);
        assert_eq!(
            c.mirror_stats().unwrap().pubsub_applied,
            before.pubsub_applied,
            "the delete is still waiting"
        );
        fail::remove("mirror::queue_full");
    }
    wait_for("the delete heard by pub/sub", LIMIT, &mut || {
        c.mirror_stats().unwrap().pubsub_applied > before.pubsub_applied
    });
    if stays_full {
        // The reconciliation it asks for finds the queue full too, and
        // is tried again until it gets through.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(c.mirror_stats().unwrap().reconciles, before.reconciles);
        fail::remove("mirror::queue_full");
        wait_for("reconciled", LIMIT, &mut || {
            c.mirror_stats().unwrap().reconciles > before.reconciles
        });
    }
    fail::remove("mirror::queue_full");
    c.flush().unwrap();
    assert_eq!(
        c.get("ns", b"k").unwrap(),
        None,
        "the deleted value was served"
    );
    if how != Full::BeyondQueueWait {
        // It waited for room: no reconciliation was needed.
        assert_eq!(c.mirror_stats().unwrap().reconciles, before.reconciles);
    }
    c.close().unwrap();
    other.close().unwrap();
    // Gone from this host's disk too, not only hidden.
    let reopened = Cache::builder().dir(da.path()).open().unwrap();
    assert_eq!(reopened.get("ns", b"k").unwrap(), None);
    reopened.close().unwrap();
    scenario.teardown();
}

#[cfg(feature = "redis")]
#[derive(Clone, Copy, PartialEq)]
enum Delete {
    Local,
    LocalHeldBack,
    Remote,
    /// Another instance's, while pub/sub was down.
    Unheard,
    /// The same, the fill landing before the resubscription.
    UnheardLanded,
    OtherKey,
}

#[cfg(feature = "redis")]
fn fill_across_a_delete(how: Delete) {
    use common::wait_for;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Mutex, mpsc};
    const LIMIT: Duration = MIRROR_LIMIT;

    let scenario = FailScenario::setup();
    let TwoHosts {
        redis,
        c,
        other,
        dirs: _dirs,
    } = TwoHosts::start(Default::default());
    // Another instance writes the key: Redis has it, this host does not.
    other.set("ns", b"k", b"before".to_vec()).unwrap();
    other.flush().unwrap();
    drained(&other);
    // A write of its own first, so that this host's next version (the
    // delete's) is above the other's write, which it has not seen yet
    // (versions are a Lamport clock: MIRROR.md).
    c.set("ns", b"other key", b"x".to_vec()).unwrap();
    c.flush().unwrap();
    drained(&c);
    // The drain waits at its next look at the outbox while `hold` is set
    // (and says so in `parked`); a panic below lets it go.
    let hold = Arc::new(AtomicBool::new(false));
    let parked = Arc::new(AtomicBool::new(false));
    {
        let (hold, parked) = (hold.clone(), parked.clone());
        fail::cfg_callback("mirror::drain", move || {
            while hold.load(Ordering::SeqCst) {
                parked.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
            parked.store(false, Ordering::SeqCst);
        })
        .unwrap();
    }
    struct LetGo(Arc<AtomicBool>);
    impl Drop for LetGo {
        fn drop(&mut self) {
            self.0.store(false, Ordering::SeqCst);
        }
    }
    let _let_go = LetGo(hold.clone());
    let delete = || {
        c.delete("ns", b"k").unwrap();
        c.flush().unwrap(); // committed
    };
    if how == Delete::LocalHeldBack {
        hold.store(true, Ordering::SeqCst);
        // No look at the outbox in flight: the drain is waiting.
        wait_for("drain parked", LIMIT, &mut || parked.load(Ordering::SeqCst));
        delete();
        assert_eq!(c.mirror_stats().unwrap().outbox_rows, 1, "held back");
    }
    // The first fill of the point stops until the delete is through.
    let (reached_tx, reached) = mpsc::channel::<()>();
    let (release, release_rx) = mpsc::channel::<()>();
    let waiting = Mutex::new(Some((reached_tx, release_rx)));
    fail::cfg_callback("mirror::fill", move || {
        if let Some((reached, release)) = waiting.lock().unwrap().take() {
            reached.send(()).unwrap();
            // Err: the test gave up (it panicked); go on.
            let _ = release.recv();
        }
    })
    .unwrap();
    let reader = {
        let c = c.clone();
        std::thread::spawn(move || c.get("ns", b"k").unwrap())
    };
    // Redis answered "before".
    if reached.recv_timeout(LIMIT).is_err() {
        panic!("the get never filled: {:?}", c.mirror_stats());
    }
    match how {
        Delete::Local => delete(),
        Delete::OtherKey => {
            c.delete("ns", b"other key").unwrap();
            c.flush().unwrap();
        }
        Delete::LocalHeldBack => hold.store(false, Ordering::SeqCst),
        Delete::Unheard | Delete::UnheardLanded => {
            // Pub/sub goes down (every instance's) and stays down while
            // the other instance deletes the key: its message is lost.
            fail::cfg("mirror::subscribe", "return").unwrap();
            let before = c.mirror_stats().unwrap();
            let mut conn = redis.conn();
            let _: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query(&mut conn)
                .unwrap();
            wait_for("no subscriber left", LIMIT, &mut || {
                let n: Vec<(Vec<u8>, i64)> = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg("embercache:inv")
                    .query(&mut conn)
                    .unwrap();
                n[0].1 == 0
            });
            other.delete("ns", b"k").unwrap();
            other.flush().unwrap();
            drained(&other);
            // A writer waits at its next commit while `commits_held` is set.
            let commits_held = Arc::new(AtomicBool::new(false));
            {
                let held = commits_held.clone();
                fail::cfg_callback("writer::commit", move || {
                    while held.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
                .unwrap();
            }
            let _let_commits_go = LetGo(commits_held.clone());
            if how == Delete::UnheardLanded {
                // The fill lands now; its commit waits.
                commits_held.store(true, Ordering::SeqCst);
                release.send(()).unwrap();
                wait_for("the fill landed", LIMIT, &mut || reader.is_finished());
            }
            fail::remove("mirror::subscribe");
            let reconciled = |c: &Cache| c.mirror_stats().unwrap().reconciles > before.reconciles;
            wait_for("resubscribed", LIMIT, &mut || {
                c.mirror_stats().unwrap().pubsub_connects > before.pubsub_connects
            });
            if how == Delete::UnheardLanded {
                // A reconciliation that does not wait for the fill's commit
                // is over in well under a second; one that waits, waits.
                let start = std::time::Instant::now();
                while !reconciled(&c) && start.elapsed() < Duration::from_secs(1) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                commits_held.store(false, Ordering::SeqCst);
            }
            wait_for("reconciled", LIMIT, &mut || reconciled(&c));
            fail::remove("writer::commit");
        }
        Delete::Remote => {
            other.delete("ns", b"k").unwrap();
            other.flush().unwrap();
            drained(&other);
            wait_for("the delete heard by pub/sub", LIMIT, &mut || {
                c.mirror_stats().unwrap().pubsub_applied > 0
            });
            c.flush().unwrap(); // the remote delete is committed here
        }
    }
    drained(&c); // a local delete: delivered to Redis and acknowledged
    let mut conn = redis.conn();
    let deleted = if how == Delete::OtherKey {
        &b"embercache:d\0ns\0other key"[..]
    } else {
        b"embercache:d\0ns\0k"
    };
    let d: Option<Vec<u8>> = redis::cmd("HGET")
        .arg(deleted)
        .arg("d")
        .query(&mut conn)
        .unwrap();
    assert!(d.is_some(), "Redis holds the delete's tombstone");
    if how != Delete::UnheardLanded {
        release.send(()).unwrap();
    }
    let answered = reader.join().unwrap();
    c.flush().unwrap(); // a fill, had there been one, is committed now
    if how == Delete::OtherKey {
        assert_eq!(answered.as_deref(), Some(&b"before"[..]));
        let asked = c.mirror_stats().unwrap().read_hits;
        assert_eq!(c.get("ns", b"k").unwrap().as_deref(), Some(&b"before"[..]));
        assert_eq!(
            c.mirror_stats().unwrap().read_hits,
            asked,
            "kept here: not asked of Redis again"
        );
    } else {
        // The get ran across the delete: either answer is right for it
        // ("before" was what Redis held when it asked), a copy kept is not.
        assert_eq!(c.get("ns", b"k").unwrap(), None, "the delete was undone");
    }
    fail::remove("mirror::fill");
    fail::remove("mirror::drain");
    c.close().unwrap();
    other.close().unwrap();
    scenario.teardown();
}
