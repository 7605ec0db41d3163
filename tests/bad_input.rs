//! Bad input gets a clear, typed error and loses nothing: corrupt records
//! written straight into redb, decompression bombs, damaged database files,
//! a directory held by another process, out-of-range arguments and
//! settings.

use embercache::record::{Encoding, HEADER_LEN};
use embercache::{
    Cache, DB_FILE, Limits, ManualClock, NamespacePolicy, OpenError, ReadError, RecordError, Ttl,
    WriteError, WriteOptions,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redb::{ReadableTable, TableDefinition};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The engine's table, as documented in src/store/tables.rs.
const ENTRIES: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("entries");
const T0: u64 = 1_750_000_000_000;
/// Bound on anything that must not hang (a child starting, an open).
const GUARD: Duration = Duration::from_secs(60);

fn open(dir: &Path) -> Cache {
    Cache::builder()
        .dir(dir)
        .shards(2)
        .hot_capacity(1 << 20)
        .strict(true)
        .open()
        .expect("open")
}

/// Values that exercise both codecs: compressible (zstd) and not (raw).
fn value(i: u32) -> Vec<u8> {
    if i.is_multiple_of(2) {
        format!("value {i} ").repeat(50).into_bytes()
    } else {
        let mut rng = StdRng::seed_from_u64(u64::from(i));
        (0..300).map(|_| rng.r#gen()).collect()
    }
}

fn key(i: u32) -> Vec<u8> {
    format!("key{i}").into_bytes()
}

/// Ten keys in namespace "ns", closed cleanly.
fn populated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    for i in 0..10 {
        c.set("ns", &key(i), value(i)).unwrap();
    }
    c.close().unwrap();
    dir
}

/// Rewrites the stored record of `ns/key` with redb directly.
fn tamper(dir: &Path, ns: &str, key: &[u8], f: impl FnOnce(&mut Vec<u8>)) {
    let db = redb::Database::create(dir.join(DB_FILE)).unwrap();
    let w = db.begin_write().unwrap();
    {
        let mut t = w.open_table(ENTRIES).unwrap();
        let mut rec = t
            .get((ns, key))
            .unwrap()
            .map(|v| v.value().to_vec())
            .unwrap_or_default();
        f(&mut rec);
        t.insert((ns, key), rec.as_slice()).unwrap();
    }
    w.commit().unwrap();
}

/// Waits (bounded polling) until the warm-up thread is done, so counters
/// read afterwards move only because of the test's own reads.
fn wait_warmup(c: &Cache) {
    let start = std::time::Instant::now();
    while !c.stats().warmup_done {
        assert!(start.elapsed() < GUARD, "warm-up never finished");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reads `key` expecting a corrupt-record error; returns its cause.
fn expect_corrupt(c: &Cache, ns: &str, key: &[u8], what: &str) -> RecordError {
    let before = c.stats().corrupt_reads;
    let r = c.get(ns, key);
    let Err(ReadError::Corrupt { namespace, source }) = r else {
        panic!("{what}: expected ReadError::Corrupt, got {r:?}");
    };
    assert_eq!(namespace, ns, "{what}: the error names the namespace");
    assert_eq!(
        c.stats().corrupt_reads,
        before + 1,
        "{what}: stats().corrupt_reads counts the read"
    );
    source
}

/// The other nine keys read back intact, one by one, in a batch and by scan.
fn others_intact(c: &Cache, bad: u32, what: &str) {
    let others: Vec<u32> = (0..10).filter(|i| *i != bad).collect();
    for i in &others {
        assert_eq!(
            c.get("ns", &key(*i)).unwrap().as_deref(),
            Some(value(*i).as_slice()),
            "{what}: key{i}"
        );
    }
    let keys: Vec<Vec<u8>> = others.iter().map(|i| key(*i)).collect();
    let got = c.get_many("ns", &keys).unwrap();
    assert!(got.iter().all(Option::is_some), "{what}: get_many");
    let scanned: Vec<Vec<u8>> = c
        .scan("ns", b"")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut want = keys.clone();
    want.sort();
    assert_eq!(scanned, want, "{what}: scan skips only the corrupt record");
}

/// How a test damages a stored record.
type Damage = fn(&mut Vec<u8>);
/// Whether a record error is the expected one.
type Cause = fn(&RecordError) -> bool;

#[test]
fn corrupt_records_are_typed_errors_and_lose_nothing() {
    let cases: Vec<(&str, Damage, Cause)> = vec![
        (
            "payload bit flip",
            |r| *r.last_mut().unwrap() ^= 0x10,
            |e| matches!(e, RecordError::ChecksumMismatch { .. }),
        ),
        (
            "format byte",
            |r| r[0] ^= 0x02,
            |e| matches!(e, RecordError::UnknownFormat(3)),
        ),
        (
            "compression tag",
            |r| r[1] = 9,
            |e| matches!(e, RecordError::UnknownCompression(9)),
        ),
        (
            "expiry bit flip",
            |r| r[9] ^= 0x01,
            |e| matches!(e, RecordError::ChecksumMismatch { .. }),
        ),
        // A flipped high bit of the version makes the record look newer
        // than any later write of the key.
        (
            "version high bit",
            |r| r[23] ^= 0x40,
            |e| matches!(e, RecordError::ChecksumMismatch { .. }),
        ),
        (
            "epoch bit flip",
            |r| r[24] ^= 0x04,
            |e| matches!(e, RecordError::ChecksumMismatch { .. }),
        ),
        (
            "raw_len bit flip",
            |r| r[33] ^= 0x01,
            |e| matches!(e, RecordError::ChecksumMismatch { .. }),
        ),
        (
            "checksum bit flip",
            |r| r[36] ^= 0x80,
            |e| matches!(e, RecordError::ChecksumMismatch { .. }),
        ),
        (
            "truncated to 10 bytes",
            |r| r.truncate(10),
            |e| matches!(e, RecordError::Truncated { len: 10, .. }),
        ),
        (
            "truncated to the header",
            |r| r.truncate(HEADER_LEN),
            |e| matches!(e, RecordError::ChecksumMismatch { .. }),
        ),
        (
            "truncated by one byte",
            |r| {
                r.pop();
            },
            |e| matches!(e, RecordError::ChecksumMismatch { .. }),
        ),
        (
            "empty",
            |r| r.clear(),
            |e| matches!(e, RecordError::Truncated { len: 0, .. }),
        ),
        (
            "garbage",
            |r| {
                let mut rng = StdRng::seed_from_u64(7);
                *r = (0..200).map(|_| rng.r#gen()).collect();
            },
            |_| true,
        ),
    ];
    for (what, damage, cause) in cases {
        // key4 is compressible (zstd), key5 is stored raw.
        for bad in [4u32, 5] {
            let what = format!("{what} (key{bad})");
            let dir = populated();
            tamper(dir.path(), "ns", &key(bad), damage);
            let c = open(dir.path());
            wait_warmup(&c);
            let e = expect_corrupt(&c, "ns", &key(bad), &what);
            assert!(cause(&e), "{what}: unexpected cause {e:?}");
            assert!(c.get_many("ns", &[key(bad)]).is_err(), "{what}: get_many");
            others_intact(&c, bad, &what);
            c.run_maintenance().unwrap();
            others_intact(&c, bad, &what);
            c.close().unwrap();

            // Overwriting the damaged key repairs it, durably.
            let c = open(dir.path());
            c.set("ns", &key(bad), b"repaired".to_vec()).unwrap();
            assert_eq!(
                c.get("ns", &key(bad)).unwrap().as_deref(),
                Some(&b"repaired"[..])
            );
            c.close().unwrap();
            let c = open(dir.path());
            let after = c.get("ns", &key(bad));
            assert!(
                matches!(&after, Ok(Some(v)) if v.as_ref() == b"repaired"),
                "{what}: the overwrite of a damaged record must survive a restart, got {after:?}"
            );
            for i in (0..10).filter(|i| *i != bad) {
                assert_eq!(
                    c.get("ns", &key(i)).unwrap().as_deref(),
                    Some(value(i).as_slice()),
                    "{what}: key{i} after the repair"
                );
            }
            assert_eq!(c.scan("ns", b"").unwrap().len(), 10);
            assert_eq!(c.stats().corrupt_reads, 0);
            c.close().unwrap();
        }
    }
}

#[test]
fn deleting_a_corrupt_record_removes_it() {
    let dir = populated();
    tamper(dir.path(), "ns", &key(3), |r| r[23] ^= 0x40);
    let c = open(dir.path());
    c.delete("ns", &key(3)).unwrap();
    assert_eq!(c.get("ns", &key(3)).unwrap(), None);
    c.close().unwrap();
    let c = open(dir.path());
    assert_eq!(
        c.get("ns", &key(3)).unwrap(),
        None,
        "a delete of a damaged record survives a restart"
    );
}

fn crc(head: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(payload);
    h.finalize()
}

/// A record with a valid checksum whose header says `raw_len` and whose
/// zstd payload is `payload`.
fn forged(raw_len: u32, payload: &[u8]) -> Vec<u8> {
    let enc = Encoding {
        level: None,
        threshold: usize::MAX,
        dict: None,
    };
    let mut rec = embercache::record::encode(b"x", u64::MAX, 1, 0, &enc);
    // The helper's checksum is the one this test computes.
    assert_eq!(
        rec[36..40],
        crc(&rec[..36], &rec[HEADER_LEN..]).to_le_bytes()
    );
    rec.truncate(HEADER_LEN);
    rec[1] = embercache::record::Compression::Zstd as u8;
    rec[32..36].copy_from_slice(&raw_len.to_le_bytes());
    let sum = crc(&rec[..36], payload);
    rec[36..40].copy_from_slice(&sum.to_le_bytes());
    rec.extend_from_slice(payload);
    rec
}

/// 64 MiB of zeros as one zstd frame, compressed in a stream so the test
/// itself never holds the 64 MiB.
fn bomb() -> Vec<u8> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 19).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..64 {
        enc.write_all(&chunk).unwrap();
    }
    enc.finish().unwrap()
}

/// Peak resident memory of this process, in bytes (Linux only).
fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[test]
fn zstd_bomb_is_a_typed_error_without_the_allocation() {
    let bomb = bomb();
    assert!(
        bomb.len() < 1 << 20,
        "the bomb is small: {} bytes",
        bomb.len()
    );
    let small = zstd::bulk::compress(b"12345", 3).unwrap();
    let dir = populated();
    let cases: [(&[u8], u32, Cause); 4] = [
        // Claims 10 bytes, expands to 64 MiB.
        (&bomb, 10, |e| matches!(e, RecordError::Decompress(_))),
        // Claims 1 MiB (allowed), expands to 64 MiB.
        (&bomb, 1 << 20, |e| matches!(e, RecordError::Decompress(_))),
        // Claims 64 MiB: above the 16 MiB value limit, refused before any
        // allocation.
        (
            &bomb,
            64 << 20,
            |e| matches!(e, RecordError::TooLarge { len, max } if *len == 64 << 20 && *max == 16 << 20),
        ),
        // Claims 10 bytes, holds 5.
        (&small, 10, |e| {
            matches!(
                e,
                RecordError::LengthMismatch {
                    declared: 10,
                    actual: 5
                } | RecordError::Decompress(_)
            )
        }),
    ];
    for (i, (payload, raw_len, _)) in cases.iter().enumerate() {
        let rec = forged(*raw_len, payload);
        tamper(dir.path(), "ns", format!("bomb{i}").as_bytes(), |r| {
            *r = rec
        });
    }
    let c = open(dir.path());
    wait_warmup(&c);
    let rss_before = peak_rss();
    for (i, (_, raw_len, cause)) in cases.iter().enumerate() {
        let what = format!("bomb{i} claiming {raw_len} bytes");
        let e = expect_corrupt(&c, "ns", format!("bomb{i}").as_bytes(), &what);
        assert!(cause(&e), "{what}: unexpected cause {e:?}");
    }
    // scan decodes every record of the namespace: it skips the bombs.
    assert_eq!(c.scan("ns", b"").unwrap().len(), 10);
    if let (Some(before), Some(after)) = (rss_before, peak_rss()) {
        assert!(
            after < before + (32 << 20),
            "reading the bombs raised peak memory from {before} to {after} bytes"
        );
    }
    others_intact(&c, 99, "after the bombs");
}

/// A real database with some data, as bytes.
fn real_db_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let c = open(dir.path());
    for i in 0..300u32 {
        c.set("ns", &i.to_be_bytes(), value(i)).unwrap();
    }
    c.close().unwrap();
    std::fs::read(dir.path().join(DB_FILE)).unwrap()
}

fn aside_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{DB_FILE}.corrupt-")))
        })
        .collect();
    v.sort();
    v
}

/// Strict open refuses a damaged file and leaves it untouched; a normal
/// open moves it aside, says so in stats, and starts empty and working.
fn check_damaged_file(what: &str, bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(DB_FILE);
    std::fs::write(&file, bytes).unwrap();

    let e = Cache::builder()
        .dir(dir.path())
        .strict(true)
        .open()
        .expect_err(what);
    let OpenError::Corrupt { file: f, reason } = &e else {
        panic!("{what}: strict open returned {e:?}, expected OpenError::Corrupt");
    };
    assert_eq!(f, &file, "{what}: the error names the file");
    assert!(!reason.is_empty());
    assert!(e.to_string().contains(DB_FILE), "{what}: message: {e}");
    assert_eq!(
        std::fs::read(&file).unwrap(),
        bytes,
        "{what}: strict open must leave the file as it was"
    );
    assert!(aside_files(dir.path()).is_empty(), "{what}: nothing moved");

    let c = Cache::builder()
        .dir(dir.path())
        .open()
        .unwrap_or_else(|e| panic!("{what}: non-strict open failed: {e}"));
    let note = c.stats().moved_aside;
    assert!(note.is_some(), "{what}: stats().moved_aside is set");
    let aside = aside_files(dir.path());
    assert_eq!(aside.len(), 1, "{what}: one file moved aside: {aside:?}");
    assert_eq!(
        std::fs::read(&aside[0]).unwrap(),
        bytes,
        "{what}: the damaged file is kept byte for byte"
    );
    assert!(
        note.unwrap().contains(&aside[0].display().to_string()),
        "{what}: the note names where the file went"
    );
    // The fresh database works and persists.
    assert_eq!(c.get("ns", b"k").unwrap(), None);
    c.set("ns", b"k", b"v".to_vec()).unwrap();
    c.close().unwrap();
    let c = Cache::builder()
        .dir(dir.path())
        .strict(true)
        .open()
        .unwrap();
    assert_eq!(c.get("ns", b"k").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(c.stats().moved_aside, None);
}

#[test]
fn garbage_database_file_is_moved_aside() {
    let mut rng = StdRng::seed_from_u64(42);
    let garbage: Vec<u8> = (0..(1 << 20)).map(|_| rng.r#gen()).collect();
    check_damaged_file("random bytes", &garbage);
    check_damaged_file("random bytes, 100", &garbage[..100]);
}

#[test]
fn zero_filled_database_file_is_moved_aside() {
    check_damaged_file("zeros", &vec![0u8; 1 << 20]);
    check_damaged_file("zeros, 4 KiB", &[0u8; 4096]);
}

#[test]
fn truncated_database_file_is_moved_aside() {
    let db = real_db_bytes();
    assert!(db.len() > 64 << 10, "the database is {} bytes", db.len());
    for cut in [1, 17, 100, 512, 4096, db.len() / 2] {
        check_damaged_file(&format!("cut at {cut} of {}", db.len()), &db[..cut]);
    }
}

/// Opens the directory named by the env var, writes one key, says READY
/// and holds the directory until its stdin closes.
#[test]
#[ignore = "child process of a_directory_open_in_another_process_is_refused"]
fn lock_holder() {
    let Ok(dir) = std::env::var("EMBERCACHE_LOCK_HOLDER") else {
        return;
    };
    let c = open(Path::new(&dir));
    c.set("ns", b"held", b"by the child".to_vec()).unwrap();
    c.flush().unwrap();
    println!();
    println!("READY");
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink).unwrap();
    c.close().unwrap();
}

#[test]
fn a_directory_open_in_another_process_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lock_holder",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("EMBERCACHE_LOCK_HOLDER", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line == "READY" {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(GUARD).is_err() {
        let _ = child.kill();
        panic!("the child never opened the directory");
    }

    // The open runs on a thread so a hang fails the test instead of
    // blocking it.
    let (tx, rx) = mpsc::channel();
    let d = dir.path().to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(Cache::builder().dir(&d).open().map(|_| ()));
    });
    // If an assertion below fails, the child exits when this process does
    // (its stdin closes).
    let Ok(r) = rx.recv_timeout(GUARD) else {
        let _ = child.kill();
        panic!("open of a directory held by another process hung");
    };
    let e = r.expect_err("a directory held by another process must not open");
    let OpenError::AlreadyOpen { dir: named } = &e else {
        panic!("expected OpenError::AlreadyOpen, got {e:?}");
    };
    assert_eq!(named, dir.path());
    assert!(
        e.to_string().contains(&dir.path().display().to_string()),
        "the message names the directory: {e}"
    );
    // The held file was neither moved aside nor touched.
    assert!(aside_files(dir.path()).is_empty());

    // Once the child lets go, the directory opens and has its data.
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "child: {status}");
    let c = open(dir.path());
    assert_eq!(
        c.get("ns", b"held").unwrap().as_deref(),
        Some(&b"by the child"[..])
    );
}

#[test]
fn oversized_keys_and_values_are_refused_and_change_nothing() {
    let mut limits = Limits::default();
    limits.max_value_len = 4096;
    let c = Cache::builder().limits(limits).open().unwrap();
    c.set("ns", b"k", b"before".to_vec()).unwrap();

    let long_key = vec![b'k'; 4097];
    let max_key = vec![b'k'; 4096];
    let e = c.set("ns", &long_key, b"v".to_vec()).unwrap_err();
    assert!(
        matches!(
            e,
            WriteError::KeyTooLarge {
                len: 4097,
                max: 4096
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("max_key_len"), "{e}");
    assert!(matches!(
        c.delete("ns", &long_key),
        Err(WriteError::KeyTooLarge { .. })
    ));
    c.set("ns", &max_key, b"v".to_vec()).unwrap();
    assert_eq!(c.get("ns", &max_key).unwrap().as_deref(), Some(&b"v"[..]));

    let e = c.set("ns", b"k", vec![0; 4097]).unwrap_err();
    assert!(
        matches!(
            e,
            WriteError::ValueTooLarge {
                len: 4097,
                max: 4096
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("max_value_len"), "{e}");
    // A batch stops at the oversized entry; the ones before it are stored.
    let e = c
        .set_many(
            "ns",
            [
                (b"m1".to_vec(), vec![1u8; 10]),
                (b"m2".to_vec(), vec![2u8; 4097]),
                (b"m3".to_vec(), vec![3u8; 10]),
            ],
            WriteOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(e, WriteError::ValueTooLarge { .. }), "{e:?}");
    assert_eq!(c.get("ns", b"m1").unwrap().as_deref(), Some(&[1u8; 10][..]));
    assert_eq!(c.get("ns", b"m2").unwrap(), None);
    assert_eq!(c.get("ns", b"m3").unwrap(), None);

    c.set("ns", b"max", vec![7; 4096]).unwrap();
    assert_eq!(c.get("ns", b"max").unwrap().unwrap().len(), 4096);
    assert_eq!(
        c.get("ns", b"k").unwrap().as_deref(),
        Some(&b"before"[..]),
        "refused writes changed nothing"
    );
}

#[test]
fn zero_ttl_is_refused_and_max_ttl_never_expires() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let open = || {
        Cache::builder()
            .dir(dir.path())
            .clock(clock.clone())
            .namespace(
                "capped",
                NamespacePolicy::default().max_ttl(Duration::from_secs(60)),
            )
            .open()
            .unwrap()
    };
    let c = open();
    c.set("ns", b"k", b"before".to_vec()).unwrap();
    for r in [
        c.set_with_ttl("ns", b"k", b"x".to_vec(), Duration::ZERO),
        c.set_with("ns", b"k", b"x".to_vec(), WriteOptions::ttl(Duration::ZERO)),
        c.set_with(
            "ns",
            b"k",
            b"x".to_vec(),
            WriteOptions::ttl(Duration::ZERO).durable(),
        ),
        c.set_many(
            "ns",
            [(b"k".to_vec(), b"x".to_vec())],
            WriteOptions::ttl(Duration::ZERO),
        ),
    ] {
        let e = r.unwrap_err();
        assert!(matches!(e, WriteError::InvalidTtl(_)), "{e:?}");
    }
    assert_eq!(c.get("ns", b"k").unwrap().as_deref(), Some(&b"before"[..]));

    c.set_with_ttl("ns", b"forever", b"v".to_vec(), Duration::MAX)
        .unwrap();
    c.set_with_ttl("capped", b"k", b"v".to_vec(), Duration::MAX)
        .unwrap();
    assert_eq!(c.ttl("ns", b"forever").unwrap(), Some(Ttl::Never));
    assert_eq!(
        c.ttl("capped", b"k").unwrap(),
        Some(Ttl::Remaining(Duration::from_secs(60))),
        "max_ttl caps even Duration::MAX"
    );
    clock.advance(Duration::from_secs(100 * 365 * 86_400));
    c.run_maintenance().unwrap();
    assert_eq!(c.ttl("ns", b"forever").unwrap(), Some(Ttl::Never));
    assert_eq!(c.get("capped", b"k").unwrap(), None);
    c.close().unwrap();
    let c = open();
    assert_eq!(c.ttl("ns", b"forever").unwrap(), Some(Ttl::Never));
    assert_eq!(c.get("ns", b"forever").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn impossible_settings_name_the_setting() {
    let cases: Vec<(embercache::CacheBuilder, &str)> = vec![
        (Cache::builder().shards(3), "shards"),
        (Cache::builder().shards(0), "shards"),
        (Cache::builder().hot_capacity(0), "hot_capacity"),
        (
            Cache::builder().namespace("ns", NamespacePolicy::default().compression_level(99)),
            "compression_level",
        ),
        (
            Cache::builder().default_policy(NamespacePolicy::default().compression_level(0)),
            "compression_level",
        ),
        (
            Cache::builder().namespace("ns", NamespacePolicy::default().ttl(Duration::ZERO)),
            "ttl",
        ),
        (
            Cache::builder().namespace("", NamespacePolicy::default()),
            "namespace",
        ),
        (
            Cache::builder().durability(embercache::Durability::Buffered {
                max_delay: Duration::from_secs(3600),
            }),
            "durability",
        ),
        (Cache::builder().warm_capacity(10), "warm_capacity"),
        (
            Cache::builder().limits({
                let mut l = Limits::default();
                l.max_key_len = 0;
                l
            }),
            "limits.max_key_len",
        ),
        (
            Cache::builder().limits({
                let mut l = Limits::default();
                l.maintenance_interval = Duration::ZERO;
                l
            }),
            "limits.maintenance_interval",
        ),
        (
            Cache::builder().limits({
                let mut l = Limits::default();
                l.snapshot_interval = Duration::ZERO;
                l
            }),
            "limits.snapshot_interval",
        ),
    ];
    for (b, want) in cases {
        let dir = tempfile::tempdir().unwrap();
        let e = b.dir(dir.path()).open().unwrap_err();
        let OpenError::InvalidConfig { setting, .. } = &e else {
            panic!("{want}: expected OpenError::InvalidConfig, got {e:?}");
        };
        assert_eq!(*setting, want);
        assert!(e.to_string().contains(want), "message names {want}: {e}");
        // Validation happens before the directory is touched.
        assert!(
            !dir.path().join(DB_FILE).exists(),
            "{want}: a refused open created the database file"
        );
    }
}

#[test]
fn verify_reports_a_corrupt_record_by_name() {
    let dir = populated();
    let clean = open(dir.path()).verify(&mut |_, _| {}).unwrap();
    assert!(clean.is_clean(), "{:?}", clean.problems);
    tamper(dir.path(), "ns", &key(3), |r| {
        *r.last_mut().unwrap() ^= 0x01
    });
    let c = open(dir.path());
    let report = c.verify(&mut |_, _| {}).unwrap();
    assert!(!report.is_clean());
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let p = &report.problems[0];
    assert_eq!(
        (p.namespace.as_str(), p.key.as_slice()),
        ("ns", &key(3)[..])
    );
    assert!(p.reason.contains("checksum"), "{}", p.reason);
}

#[test]
fn a_database_from_a_newer_embercache_is_refused_not_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = redb::Database::create(dir.path().join(DB_FILE)).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut meta = w
                .open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                .unwrap();
            meta.insert("format_version", 99u32.to_le_bytes().as_slice())
                .unwrap();
            // A future format that changed the key type of `entries`.
            let mut e = w
                .open_table(redb::TableDefinition::<u64, &[u8]>::new("entries"))
                .unwrap();
            e.insert(1, b"future record".as_slice()).unwrap();
        }
        w.commit().unwrap();
    }
    let r = Cache::builder().dir(dir.path()).open();
    assert!(
        matches!(r, Err(OpenError::UnsupportedFormat { found: 99, .. })),
        "{r:?}"
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        1,
        "the newer database was moved or copied: {names:?}"
    );
}

/// A format-1 database (index keyed (expires_at, version) → (ns, key)) is
/// upgraded at open: its index is rebuilt, nothing is lost, the sweeper
/// works, and the old index table is gone.
/// The meta table of a database written by an older embercache: its
/// format version and the given counters.
fn old_meta(w: &redb::WriteTransaction, format: u32, counters: &[(&str, u64)]) {
    let mut meta = w
        .open_table(TableDefinition::<&str, &[u8]>::new("meta"))
        .unwrap();
    meta.insert("format_version", format.to_le_bytes().as_slice())
        .unwrap();
    for (k, v) in counters {
        meta.insert(k, v.to_le_bytes().as_slice()).unwrap();
    }
}

#[test]
fn a_format_1_database_is_upgraded_in_place() {
    use embercache::record::{Encoding, encode};
    let dir = tempfile::tempdir().unwrap();
    let enc = Encoding {
        level: None,
        threshold: 64,
        dict: None,
    };
    let far = u64::MAX;
    {
        let db = redb::Database::create(dir.path().join(DB_FILE)).unwrap();
        let w = db.begin_write().unwrap();
        {
            old_meta(&w, 1, &[("version_high_water", 10)]);
            let mut entries = w
                .open_table(TableDefinition::<(&str, &[u8]), &[u8]>::new("entries"))
                .unwrap();
            let mut index = w
                .open_table(TableDefinition::<(u64, u64), (&str, &[u8])>::new("expiry"))
                .unwrap();
            for (i, exp) in [(1u64, far), (2, 1_000)] {
                let key = format!("k{i}");
                let rec = encode(format!("v{i}").as_bytes(), exp, i, 0, &enc);
                entries
                    .insert(("ns", key.as_bytes()), rec.as_slice())
                    .unwrap();
                index.insert((exp, i), ("ns", key.as_bytes())).unwrap();
            }
        }
        w.commit().unwrap();
    }
    let c = Cache::builder().dir(dir.path()).open().unwrap();
    assert_eq!(c.get("ns", b"k1").unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(c.get("ns", b"k2").unwrap(), None, "expired long ago");
    let report = c.verify(&mut |_, _| {}).unwrap();
    assert_eq!(
        report.index_entries, 1,
        "only the entry with a TTL is indexed"
    );
    assert!(
        report.problems.iter().all(|p| p.namespace == "<meta>"),
        "{:?}",
        report.problems
    );
    c.run_maintenance().unwrap();
    assert_eq!(
        c.verify(&mut |_, _| {}).unwrap().index_entries,
        0,
        "the sweeper uses the rebuilt index"
    );
    c.close().unwrap();
    let db = redb::Database::create(dir.path().join(DB_FILE)).unwrap();
    let r = redb::ReadableDatabase::begin_read(&db).unwrap();
    assert!(
        r.open_table(TableDefinition::<(u64, u64), (&str, &[u8])>::new("expiry"))
            .is_err(),
        "old index kept"
    );
}

/// A format-2 database indexed entries without a TTL too (at expires_at =
/// u64::MAX): format 3 drops those index entries at open, keeps the others,
/// and loses no record.
#[test]
fn a_format_2_database_drops_its_no_ttl_index_entries() {
    use embercache::record::{Encoding, encode};
    let dir = tempfile::tempdir().unwrap();
    let enc = Encoding {
        level: None,
        threshold: 64,
        dict: None,
    };
    let far = u64::MAX;
    let later = 4_000_000_000_000u64; // year 2096
    {
        let db = redb::Database::create(dir.path().join(DB_FILE)).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut entries = w
                .open_table(TableDefinition::<(&str, &[u8]), &[u8]>::new("entries"))
                .unwrap();
            let mut index = w
                .open_table(TableDefinition::<(u64, u64, &str, &[u8]), ()>::new(
                    "expiry_v2",
                ))
                .unwrap();
            let mut bytes = 0u64;
            for (i, exp) in [(1u64, far), (2, later), (3, far)] {
                let key = format!("k{i}");
                let rec = encode(format!("v{i}").as_bytes(), exp, i, 0, &enc);
                bytes += (key.len() + rec.len()) as u64;
                entries
                    .insert(("ns", key.as_bytes()), rec.as_slice())
                    .unwrap();
                index.insert((exp, i, "ns", key.as_bytes()), ()).unwrap();
            }
            old_meta(
                &w,
                2,
                &[("version_high_water", 10), ("records", 3), ("bytes", bytes)],
            );
        }
        w.commit().unwrap();
    }
    let c = Cache::builder().dir(dir.path()).open().unwrap();
    for i in 1..=3 {
        assert_eq!(
            c.get("ns", format!("k{i}").as_bytes()).unwrap().as_deref(),
            Some(format!("v{i}").as_bytes()),
        );
    }
    let report = c.verify(&mut |_, _| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.records, 3);
    assert_eq!(
        report.index_entries, 1,
        "only the entry with a TTL is indexed"
    );
    c.close().unwrap();
}
