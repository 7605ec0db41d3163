//! The write-ahead log (src/store/wal.rs) seen from the outside: a copy of
//! the cache's directory taken while it runs is what a crash leaves (redb
//! keeps its commits made without fsync in memory), and opening that copy
//! must give back every `Sync` write through the log.
//!
//! The log's own power-loss test (torn and unsynced records) is in
//! wal.rs; kill -9 of a writing process is tests/crash.rs and
//! tests/torture.rs, which both fail if the log is not replayed.

mod dirs;

use dirs::copy_dir;
use embercache::{Cache, Durability, Limits};
use std::path::Path;
use std::time::Duration;

fn open(dir: &Path, wal_bytes: u64) -> Cache {
    let mut limits = Limits::default();
    // No checkpoint unless the test asks for one.
    limits.maintenance_interval = Duration::from_secs(3600);
    limits.wal_bytes = wal_bytes;
    Cache::builder()
        .dir(dir)
        .durability(Durability::Sync)
        .limits(limits)
        .open()
        .expect("open")
}

fn key(i: usize) -> Vec<u8> {
    format!("key-{i:04}").into_bytes()
}

fn value(i: usize, round: usize) -> Vec<u8> {
    format!(
        "{{\"id\":{i},\"round\":{round},\"pad\":\"{}\"}}",
        "x".repeat(i % 300)
    )
    .into_bytes()
}

fn get(c: &Cache, i: usize) -> Option<Vec<u8>> {
    c.get("n", &key(i)).unwrap().map(|b| b.to_vec())
}

#[test]
fn a_copy_taken_while_open_gets_every_sync_write_back_from_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let (live, copy, without) = (
        tmp.path().join("live"),
        tmp.path().join("copy"),
        tmp.path().join("without"),
    );
    let c = open(&live, 16 << 20);
    for i in 0..300 {
        c.set("n", &key(i), value(i, 0)).unwrap();
    }
    // A checkpoint: what came before is in a durable commit.
    c.run_maintenance().unwrap();
    for i in 0..300 {
        match i % 3 {
            0 => c.set("n", &key(i), value(i, 1)).unwrap(),
            1 => c.delete("n", &key(i)).unwrap(),
            _ => {}
        }
    }
    copy_dir(&live, &copy);
    copy_dir(&live, &without);
    let expected = |i: usize| match i % 3 {
        0 => Some(value(i, 1)),
        1 => None,
        _ => Some(value(i, 0)),
    };
    let r = open(&copy, 16 << 20);
    for i in 0..300 {
        assert_eq!(get(&r, i), expected(i), "key {i}");
    }
    assert_eq!(r.stats().disk_records, 200);
    // 100 sets and 100 deletes came after the checkpoint.
    assert_eq!(r.stats().log_replayed, 200);
    assert_eq!(c.stats().log_replayed, 0);
    // The replay was a durable commit: a copy of the copy needs no log.
    r.close().unwrap();
    std::fs::remove_file(copy.join("embercache.wal")).unwrap();
    let r = open(&copy, 16 << 20);
    assert_eq!(r.stats().log_replayed, 0);
    assert_eq!(get(&r, 0), expected(0));
    assert_eq!(get(&r, 1), None);
    r.close().unwrap();

    // The writes after the checkpoint were only in the log: without it
    // the copy has the state of the checkpoint. (This is what makes the
    // test above a test of the log.)
    std::fs::remove_file(without.join("embercache.wal")).unwrap();
    let w = open(&without, 0);
    assert_eq!(get(&w, 0), Some(value(0, 0)));
    assert_eq!(get(&w, 1), Some(value(1, 0)));
    w.close().unwrap();
    c.close().unwrap();
}

#[test]
fn a_log_left_beside_another_database_is_not_replayed() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let c = open(&a, 16 << 20);
    c.set("n", b"k", b"from a".to_vec()).unwrap();
    // b: a new database of its own, as a crash leaves it (no commit since
    // it was created, so still at its first log generation), then a's log
    // (holding the write) in it.
    let fresh = open(&tmp.path().join("b-live"), 16 << 20);
    copy_dir(&tmp.path().join("b-live"), &b);
    fresh.close().unwrap();
    std::fs::copy(a.join("embercache.wal"), b.join("embercache.wal")).unwrap();
    let other = open(&b, 16 << 20);
    assert_eq!(other.get("n", b"k").unwrap(), None);
    other.close().unwrap();
    // In its own directory the same log is replayed.
    let again = tmp.path().join("a2");
    copy_dir(&a, &again);
    let own = open(&again, 16 << 20);
    assert_eq!(own.get("n", b"k").unwrap().as_deref(), Some(&b"from a"[..]));
    own.close().unwrap();
    c.close().unwrap();
}

#[test]
fn a_full_log_falls_back_to_durable_commits_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (live, copy) = (tmp.path().join("live"), tmp.path().join("copy"));
    // 64 KiB of log: about 250 of these writes, then a durable commit.
    let c = open(&live, 64 << 10);
    for i in 0..1000 {
        c.set("n", &key(i), value(i, 2)).unwrap();
    }
    copy_dir(&live, &copy);
    let without = tmp.path().join("without");
    copy_dir(&live, &without);
    let r = open(&copy, 64 << 10);
    for i in 0..1000 {
        assert_eq!(get(&r, i), Some(value(i, 2)), "key {i}");
    }
    r.close().unwrap();
    // Each time the log was full, a durable commit took the group: the
    // database alone holds all but the writes of the last log's worth
    // (about 250 of these).
    std::fs::remove_file(without.join("embercache.wal")).unwrap();
    let w = open(&without, 0);
    let held = (0..1000).filter(|&i| get(&w, i).is_some()).count();
    assert!(
        (700..1000).contains(&held),
        "{held} of 1000 in the database alone"
    );
    w.close().unwrap();
    c.close().unwrap();
}

#[test]
fn a_log_is_replayed_and_kept_in_step_while_it_is_turned_off() {
    let tmp = tempfile::tempdir().unwrap();
    let (live, copy) = (tmp.path().join("live"), tmp.path().join("copy"));
    let c = open(&live, 16 << 20);
    c.set("n", &key(1), value(1, 0)).unwrap();
    c.set("n", &key(2), value(2, 0)).unwrap();
    copy_dir(&live, &copy);
    c.close().unwrap();
    // Opened with the log off, the crash copy still gets its writes back.
    let off = open(&copy, 0);
    assert_eq!(get(&off, 1), Some(value(1, 0)));
    assert_eq!(get(&off, 2), Some(value(2, 0)));
    // Committed with fsync (no log), and the log's generation moves on.
    off.delete("n", &key(1)).unwrap();
    off.set("n", &key(2), value(2, 1)).unwrap();
    off.close().unwrap();
    // With the log on again, the old records are not replayed over them.
    let on = open(&copy, 16 << 20);
    assert_eq!(get(&on, 1), None);
    assert_eq!(get(&on, 2), Some(value(2, 1)));
    on.close().unwrap();
}

#[test]
fn a_log_record_that_checksums_but_does_not_decode_fails_a_strict_open() {
    let tmp = tempfile::tempdir().unwrap();
    let (live, copy) = (tmp.path().join("live"), tmp.path().join("copy"));
    let c = open(&live, 16 << 20);
    c.set("n", &key(1), value(1, 0)).unwrap();
    copy_dir(&live, &copy);
    c.close().unwrap();
    // After the first record, one of the same generation whose checksum
    // holds around a write of an unknown kind.
    let path = copy.join("embercache.wal");
    let mut log = std::fs::read(&path).unwrap();
    let first = 16 + u32::from_le_bytes(log[0..4].try_into().unwrap()) as usize;
    let generation: [u8; 8] = log[8..16].try_into().unwrap();
    let payload = [9u8, 0, 1, 2, 3];
    let len = (payload.len() as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(&generation);
    h.update(&payload);
    let mut rec = len.to_vec();
    rec.extend_from_slice(&h.finalize().to_le_bytes());
    rec.extend_from_slice(&generation);
    rec.extend_from_slice(&payload);
    log[first..first + rec.len()].copy_from_slice(&rec);
    std::fs::write(&path, &log).unwrap();

    let strict = Cache::builder()
        .dir(&copy)
        .durability(Durability::Sync)
        .strict(true)
        .open();
    let Err(err) = strict else {
        panic!("a strict open must refuse the damaged log");
    };
    assert!(
        err.to_string().contains("write-ahead log is damaged"),
        "{err}"
    );
    // Without strict: the records before the damage are replayed.
    let lenient = open(&copy, 16 << 20);
    assert_eq!(get(&lenient, 1), Some(value(1, 0)));
    lenient.close().unwrap();
}

/// A run without the log (here: a storage backend opened without
/// `wal_backend`) still moves the log generation with each fsynced commit,
/// so a later run with the log does not replay the older records over its
/// writes.
#[test]
fn a_run_without_the_log_moves_its_generation_on() {
    use embercache::testing::PowerLossDisk;
    let with_log = |db: &PowerLossDisk, log: &PowerLossDisk| {
        Cache::builder()
            .storage_backend(db.factory())
            .wal_backend(log.factory())
            .durability(Durability::Sync)
            .open()
            .expect("open")
    };
    // Run A writes through the log; its crash leaves the write only there.
    let (db, log) = (PowerLossDisk::new(), PowerLossDisk::new());
    let a = with_log(&db, &log);
    a.set("n", b"k", b"from a".to_vec()).unwrap();
    let (db_image, log_image) = (db.durable_image(), log.durable_image());
    drop(a);
    // Run B, on that database without the log: it does not see A's write,
    // and writes the key itself (with a lower version than A's).
    let db_b = PowerLossDisk::from_image(db_image);
    let b = Cache::builder()
        .storage_backend(db_b.factory())
        .durability(Durability::Sync)
        .open()
        .expect("open");
    assert_eq!(b.get("n", b"k").unwrap(), None);
    b.set("n", b"k", b"from b".to_vec()).unwrap();
    b.close().unwrap();
    // Run C, with A's log again: B's write stands.
    let c = with_log(
        &PowerLossDisk::from_image(db_b.durable_image()),
        &PowerLossDisk::from_image(log_image),
    );
    assert_eq!(c.get("n", b"k").unwrap().as_deref(), Some(&b"from b"[..]));
    c.close().unwrap();
}
