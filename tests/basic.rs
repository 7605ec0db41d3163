//! End-to-end behaviour of the public API on real redb files.

use embercache::{
    Cache, Durability, Limits, ManualClock, NamespacePolicy, Ttl, WriteError, WriteOptions,
};
use std::time::Duration;

const T0: u64 = 1_750_000_000_000;

fn open(dir: &std::path::Path, clock: &ManualClock) -> Cache {
    Cache::builder()
        .dir(dir)
        .clock(clock.clone())
        .shards(4)
        .hot_capacity(1 << 20)
        .open()
        .unwrap()
}

#[test]
fn survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let c = open(dir.path(), &clock);
    for i in 0..1000u32 {
        c.set("ns", &i.to_be_bytes(), format!("value-{i}").repeat(5))
            .unwrap();
    }
    c.delete("ns", &7u32.to_be_bytes()).unwrap();
    c.close().unwrap();
    let c = open(dir.path(), &clock);
    for i in 0..1000u32 {
        let v = c.get("ns", &i.to_be_bytes()).unwrap();
        if i == 7 {
            assert_eq!(v, None);
        } else {
            assert_eq!(
                v.as_deref(),
                Some(format!("value-{i}").repeat(5).as_bytes())
            );
        }
    }
    c.validate();
}

#[test]
fn drop_without_close_keeps_accepted_writes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    {
        let c = open(dir.path(), &clock);
        c.set("ns", b"k", b"v".to_vec()).unwrap();
    }
    let c = open(dir.path(), &clock);
    assert_eq!(c.get("ns", b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn read_your_writes_when_hot_tier_evicts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    // A tiny hot tier and a writer that holds writes for a long time.
    let c = Cache::builder()
        .dir(dir.path())
        .clock(clock.clone())
        .shards(1)
        .hot_capacity(8192)
        .durability(Durability::Buffered {
            max_delay: Duration::from_secs(5),
        })
        .open()
        .unwrap();
    for i in 0..500u32 {
        c.set("ns", &i.to_be_bytes(), vec![i as u8; 100]).unwrap();
    }
    for i in 0..500u32 {
        assert_eq!(
            c.get("ns", &i.to_be_bytes()).unwrap().as_deref(),
            Some(&vec![i as u8; 100][..]),
            "key {i}"
        );
    }
    c.validate();
}

#[test]
fn ttl_expiry_with_injected_clock_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let c = open(dir.path(), &clock);
    c.set_with_ttl("p", b"a", b"1".to_vec(), Duration::from_secs(10))
        .unwrap();
    c.set("p", b"b", b"2".to_vec()).unwrap();
    assert_eq!(
        c.ttl("p", b"a").unwrap(),
        Some(Ttl::Remaining(Duration::from_secs(10)))
    );
    assert_eq!(c.ttl("p", b"b").unwrap(), Some(Ttl::Never));
    clock.advance(Duration::from_secs(9));
    assert!(c.contains("p", b"a").unwrap());
    c.close().unwrap();
    // Wall clock moved back one day while down: no TTL extension.
    clock.jump_wall(-86_400_000);
    let c = open(dir.path(), &clock);
    let Some(Ttl::Remaining(left)) = c.ttl("p", b"a").unwrap() else {
        panic!("entry lost")
    };
    assert!(left <= Duration::from_secs(1), "TTL extended to {left:?}");
    clock.advance(Duration::from_secs(1));
    assert_eq!(c.get("p", b"a").unwrap(), None);
    assert!(c.contains("p", b"b").unwrap());
    c.run_maintenance().unwrap();
    let s = c.stats();
    assert_eq!(s.disk_records, 1, "sweeper removed the expired record");
}

#[test]
fn namespace_invalidation_persists() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let c = open(dir.path(), &clock);
    c.set("search", b"q1", b"old".to_vec()).unwrap();
    c.set("other", b"q1", b"keep".to_vec()).unwrap();
    c.invalidate_namespace("search").unwrap();
    assert_eq!(c.get("search", b"q1").unwrap(), None);
    c.set("search", b"q2", b"new".to_vec()).unwrap();
    c.close().unwrap();
    let c = open(dir.path(), &clock);
    assert_eq!(c.get("search", b"q1").unwrap(), None);
    assert_eq!(
        c.get("search", b"q2").unwrap().as_deref(),
        Some(&b"new"[..])
    );
    assert_eq!(
        c.get("other", b"q1").unwrap().as_deref(),
        Some(&b"keep"[..])
    );
    c.run_maintenance().unwrap();
    assert_eq!(c.stats().disk_records, 2, "old epoch purged");
}

#[test]
fn sync_mode_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cache::builder()
        .dir(dir.path())
        .durability(Durability::Sync)
        .open()
        .unwrap();
    std::thread::scope(|s| {
        for t in 0..8u8 {
            let c = c.clone();
            s.spawn(move || {
                for i in 0..50u8 {
                    c.set("ns", &[t, i], vec![i; 300]).unwrap();
                }
            });
        }
    });
    // A Sync write returns once its group is in the log; the counters
    // follow the redb commit just after. `flush` waits for that.
    c.flush().unwrap();
    let st = c.stats();
    assert_eq!(st.disk_records, 400);
    assert!(
        st.commits < 400,
        "8 writers should share commits: {} commits",
        st.commits
    );
}

#[test]
fn bad_input_is_a_typed_error() {
    let mut limits = Limits::default();
    limits.max_key_len = 16;
    limits.max_value_len = 100;
    let c = Cache::builder().limits(limits).open().unwrap();
    assert!(matches!(
        c.set("ns", &[0; 17], b"v".to_vec()),
        Err(WriteError::KeyTooLarge { len: 17, max: 16 })
    ));
    assert!(matches!(
        c.set("ns", b"k", vec![0; 101]),
        Err(WriteError::ValueTooLarge { .. })
    ));
    assert!(matches!(
        c.set_with_ttl("ns", b"k", b"v".to_vec(), Duration::ZERO),
        Err(WriteError::InvalidTtl(_))
    ));
    assert!(matches!(
        c.set("", b"k", b"v".to_vec()),
        Err(WriteError::InvalidNamespace { .. })
    ));
    // u64::MAX-ish TTL means "never", not an overflow.
    c.set_with_ttl("ns", b"k", b"v".to_vec(), Duration::MAX)
        .unwrap();
    assert_eq!(c.ttl("ns", b"k").unwrap(), Some(Ttl::Never));
}

#[test]
fn max_ttl_caps_writes() {
    let clock = ManualClock::new(T0);
    let c = Cache::builder()
        .clock(clock.clone())
        .namespace(
            "price",
            NamespacePolicy::default()
                .ttl(Duration::from_secs(180))
                .max_ttl(Duration::from_secs(600)),
        )
        .open()
        .unwrap();
    c.set("price", b"a", b"1".to_vec()).unwrap();
    c.set_with(
        "price",
        b"b",
        b"1".to_vec(),
        WriteOptions::ttl(Duration::from_secs(3600)).durable(),
    )
    .unwrap();
    assert_eq!(
        c.ttl("price", b"a").unwrap(),
        Some(Ttl::Remaining(Duration::from_secs(180)))
    );
    assert_eq!(
        c.ttl("price", b"b").unwrap(),
        Some(Ttl::Remaining(Duration::from_secs(600)))
    );
}

#[test]
fn scan_batch_and_typed() {
    let c = Cache::builder().open().unwrap();
    c.set_many(
        "u",
        [
            (b"a1".to_vec(), b"x".to_vec()),
            (b"a2".to_vec(), b"y".to_vec()),
            (b"b1".to_vec(), b"z".to_vec()),
        ],
        WriteOptions::default(),
    )
    .unwrap();
    c.flush().unwrap();
    c.set("u", b"a3", b"w".to_vec()).unwrap(); // maybe still pending
    c.delete("u", b"a1").unwrap();
    let keys: Vec<Vec<u8>> = c
        .scan("u", b"a")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, vec![b"a2".to_vec(), b"a3".to_vec()]);
    let got = c.get_many("u", &[b"a1".as_slice(), b"b1", b"zz"]).unwrap();
    assert_eq!(got, vec![None, Some(bytes::Bytes::from_static(b"z")), None]);
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Pos {
        size: u64,
        side: String,
    }
    c.set_as(
        "pos",
        b"alice",
        &Pos {
            size: 3,
            side: "YES".into(),
        },
    )
    .unwrap();
    assert_eq!(
        c.get_as::<Pos>("pos", b"alice").unwrap(),
        Some(Pos {
            size: 3,
            side: "YES".into()
        })
    );
    assert!(c.metrics_text().contains("embercache_hits_total"));
}

#[test]
fn second_open_of_a_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let _c = Cache::builder().dir(dir.path()).open().unwrap();
    let e = Cache::builder().dir(dir.path()).open().unwrap_err();
    assert!(
        matches!(e, embercache::OpenError::AlreadyOpen { .. }),
        "{e}"
    );
}

/// A JSON value like the bot's market documents, distinct per `i`.
fn market_json(i: u32) -> String {
    format!(
        r#"{{"market_id":"0x{i:08x}","question":"Will team {i} win?","outcome_prices":[0.{i},0.5],"volume":{i}123.5,"active":true}}"#
    )
}

#[test]
fn dictionary_training_keeps_old_records_readable() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cache::builder().dir(dir.path()).open().unwrap();
    let val = market_json;
    for i in 0..200u32 {
        c.set("m", &i.to_be_bytes(), val(i)).unwrap();
    }
    c.flush().unwrap();
    let id = c.train_dictionary("m").unwrap();
    for i in 200..400u32 {
        c.set("m", &i.to_be_bytes(), val(i)).unwrap();
    }
    c.close().unwrap();
    let c = Cache::builder()
        .dir(dir.path())
        .hot_capacity(1 << 16)
        .open()
        .unwrap();
    for i in 0..400u32 {
        assert_eq!(
            c.get("m", &i.to_be_bytes()).unwrap().as_deref(),
            Some(val(i).as_bytes()),
            "key {i} dict {id}"
        );
    }
}

/// A namespace trains its first dictionary on its own after
/// `auto_dictionary` compressed writes; later writes use it, and it is
/// durable like one trained on demand. A namespace with it turned off
/// never trains.
#[test]
fn a_namespace_trains_its_first_dictionary_after_enough_writes() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        Cache::builder()
            .dir(dir.path())
            .namespace("m", NamespacePolicy::default().auto_dictionary(100))
            .namespace(
                "off",
                NamespacePolicy::default()
                    .auto_dictionary(100)
                    .no_auto_dictionary(),
            )
            .open()
            .unwrap()
    };
    let val = market_json;
    let c = open();
    let dictionary = |c: &Cache, ns: &str| {
        c.stats()
            .namespaces
            .iter()
            .find(|n| n.name == ns)
            .and_then(|n| n.dictionary)
    };
    for i in 0..99u32 {
        c.set("off", &i.to_be_bytes(), val(i)).unwrap();
        c.set("m", &i.to_be_bytes(), val(i)).unwrap();
    }
    c.flush().unwrap();
    assert_eq!(dictionary(&c, "m"), None, "trained before the 100th write");
    for i in 99..300u32 {
        c.set("off", &i.to_be_bytes(), val(i)).unwrap();
        c.set("m", &i.to_be_bytes(), val(i)).unwrap();
    }
    // Trained in the background (bounded wait). "off" reaches its count
    // first: were it not turned off, the one training thread would take it
    // before "m", and the check below would see its dictionary.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while dictionary(&c, "m").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no dictionary trained"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let id = dictionary(&c, "m");
    // Writes after it compress better than the same writes without one.
    let stored = |c: &Cache, ns: &str| {
        let n = c
            .stats()
            .namespaces
            .into_iter()
            .find(|n| n.name == ns)
            .unwrap();
        n.stored_bytes_written
    };
    let (m0, off0) = (stored(&c, "m"), stored(&c, "off"));
    for i in 300..400u32 {
        c.set("off", &i.to_be_bytes(), val(i)).unwrap();
        c.set("m", &i.to_be_bytes(), val(i)).unwrap();
    }
    let (m, off) = (stored(&c, "m") - m0, stored(&c, "off") - off0);
    assert!(
        m * 3 < off * 2,
        "with the dictionary {m} B, without {off} B"
    );
    assert_eq!(dictionary(&c, "off"), None, "trained although turned off");
    c.close().unwrap();
    let c = open();
    assert_eq!(dictionary(&c, "off"), None, "trained although turned off");
    assert_eq!(
        dictionary(&c, "m"),
        id,
        "the dictionary did not survive a reopen"
    );
    for i in 0..400u32 {
        for ns in ["m", "off"] {
            assert_eq!(
                c.get(ns, &i.to_be_bytes()).unwrap().as_deref(),
                Some(val(i).as_bytes()),
                "{ns} key {i}"
            );
        }
    }
    c.close().unwrap();
}

#[test]
fn an_auto_dictionary_count_below_64_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let e = Cache::builder()
        .dir(dir.path())
        .namespace("m", NamespacePolicy::default().auto_dictionary(10))
        .open()
        .map(drop)
        .unwrap_err();
    assert!(e.to_string().contains("auto_dictionary"), "{e}");
}

/// With the outbox on (what a Redis mirror reads), records leave this host
/// as stored: none may need a dictionary only this host has, not even one
/// trained before the outbox was turned on, and none is trained.
#[test]
fn the_outbox_gets_records_without_a_dictionary() {
    let dir = tempfile::tempdir().unwrap();
    let val = market_json;
    let c = Cache::builder().dir(dir.path()).open().unwrap();
    for i in 0..200u32 {
        c.set("m", &i.to_be_bytes(), val(i)).unwrap();
    }
    c.flush().unwrap();
    let trained = c.train_dictionary("m").unwrap();
    c.close().unwrap();
    let c = Cache::builder()
        .dir(dir.path())
        .outbox(true)
        .namespace("m", NamespacePolicy::default().auto_dictionary(64))
        .open()
        .unwrap();
    for i in 200..400u32 {
        c.set("m", &i.to_be_bytes(), val(i)).unwrap();
    }
    c.flush().unwrap();
    let rows = c.outbox_peek(1000).unwrap();
    assert_eq!(rows.len(), 200);
    for r in &rows {
        let (_, value) = embercache::record::decode(&r.record, 1 << 20, &|_| None)
            .expect("a record in the outbox needs no dictionary");
        let i = u32::from_be_bytes(r.key[..].try_into().unwrap());
        assert_eq!(value, val(i).as_bytes());
    }
    let e = c.train_dictionary("m").unwrap_err();
    assert!(e.to_string().contains("outbox"), "{e}");
    let dictionary = |c: &Cache| {
        let ns = c.stats().namespaces.into_iter().find(|n| n.name == "m");
        ns.unwrap().dictionary
    };
    assert_eq!(dictionary(&c), None, "writes with the outbox use none");
    c.close().unwrap();
    // Nothing was trained meanwhile (200 writes, over the 64 of the policy).
    let c = Cache::builder().dir(dir.path()).open().unwrap();
    assert_eq!(dictionary(&c), Some(trained));
    c.close().unwrap();
}

/// After 3 MiB of writes into a 1 MiB warm tier, a maintenance pass
/// brings it under the bound by evicting at least two thirds.
fn maintain_within_1_mib(c: &Cache) {
    c.run_maintenance().unwrap();
    let s = c.stats();
    assert!(
        s.disk_bytes <= 1 << 20,
        "disk bytes {} over the 1 MiB bound",
        s.disk_bytes
    );
    assert!(
        s.total().warm_evictions >= 2000,
        "evicted {}",
        s.total().warm_evictions
    );
}

#[test]
fn warm_tier_respects_its_byte_bound_dropping_soonest_expiring_first() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let c = Cache::builder()
        .dir(dir.path())
        .clock(clock.clone())
        .warm_capacity(1 << 20)
        .namespace("raw", NamespacePolicy::default().no_compression())
        .open()
        .unwrap();
    // 3 MiB of incompressible-size values: the first third expire soonest.
    for i in 0..3000u32 {
        let ttl = Duration::from_secs(if i < 1000 { 60 } else { 3600 + i as u64 });
        c.set_with_ttl("raw", &i.to_be_bytes(), vec![i as u8; 1000], ttl)
            .unwrap();
    }
    maintain_within_1_mib(&c);
    c.close().unwrap();
    // Reopen with a hot tier too small to help: what survives on disk is the
    // latest-expiring part, never the soonest-expiring one.
    let c = Cache::builder()
        .dir(dir.path())
        .clock(clock.clone())
        .hot_capacity(1 << 16)
        .shards(1)
        .open()
        .unwrap();
    for i in 0..1000u32 {
        assert!(
            c.get("raw", &i.to_be_bytes()).unwrap().is_none(),
            "soonest-expiring key {i} kept"
        );
    }
    assert!(c.get("raw", &2999u32.to_be_bytes()).unwrap().is_some());
}

/// Entries without a TTL are not in the expiry index: the disk bound finds
/// them in the entries table and drops the oldest writes first.
#[test]
fn disk_bound_drops_oldest_entries_without_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cache::builder()
        .dir(dir.path())
        .warm_capacity(1 << 20)
        .namespace("raw", NamespacePolicy::default().no_compression())
        .open()
        .unwrap();
    // 3 MiB, no TTL; big-endian keys, so key order is write order and
    // this checks the version order only through the sort below.
    for i in 0..3000u32 {
        c.set("raw", &(2999 - i).to_be_bytes(), vec![i as u8; 1000])
            .unwrap();
    }
    maintain_within_1_mib(&c);
    let report = c.verify(&mut |_, _| {}).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert_eq!(report.index_entries, 0);
    c.close().unwrap();
    let c = Cache::builder()
        .dir(dir.path())
        .hot_capacity(1 << 16)
        .shards(1)
        .open()
        .unwrap();
    // Written first (highest keys): gone. Written last (key 0): kept.
    for i in 0..1000u32 {
        assert!(
            c.get("raw", &(2999 - i).to_be_bytes()).unwrap().is_none(),
            "early write {i} kept"
        );
    }
    assert!(c.get("raw", &0u32.to_be_bytes()).unwrap().is_some());
}

#[test]
fn concurrent_writers_of_one_key_agree_on_the_winner_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..5 {
        let c = Cache::builder().dir(dir.path()).open().unwrap();
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let c = c.clone();
                s.spawn(move || {
                    for i in 0..200u32 {
                        c.set("ns", b"contended", format!("{round}-{t}-{i}"))
                            .unwrap();
                    }
                });
            }
        });
        let hot = c.get("ns", b"contended").unwrap().unwrap();
        c.close().unwrap();
        let c = Cache::builder().dir(dir.path()).open().unwrap();
        let warm = c.get("ns", b"contended").unwrap().unwrap();
        assert_eq!(hot, warm, "hot tier and disk disagree on the winner");
        c.close().unwrap();
    }
}

#[test]
fn restart_warms_the_hot_tier_from_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cache::builder()
        .dir(dir.path())
        .hot_capacity(4 << 20)
        .open()
        .unwrap();
    for i in 0..2000u32 {
        c.set("ns", &i.to_be_bytes(), vec![7u8; 200]).unwrap();
    }
    // Make 0..100 the hot ones.
    for _ in 0..3 {
        for i in 0..100u32 {
            c.get("ns", &i.to_be_bytes()).unwrap();
        }
    }
    c.close().unwrap();
    let c = Cache::builder()
        .dir(dir.path())
        .hot_capacity(4 << 20)
        .open()
        .unwrap();
    let mut waited = 0;
    while !c.stats().warmup_done {
        std::thread::sleep(Duration::from_millis(5));
        waited += 1;
        assert!(waited < 2000, "warm-up never finished");
    }
    assert!(c.stats().warmup_total > 0);
    for i in 0..100u32 {
        c.get("ns", &i.to_be_bytes()).unwrap();
    }
    let s = c.stats().total();
    assert_eq!(s.hot_hits, 100, "hot keys were not warmed: {s:?}");
}

/// The warm-up walks `entries` in the snapshot's key order: every live key
/// of every namespace comes back, in dense and sparse stretches, and what
/// expired or was invalidated in between does not.
#[test]
fn warm_up_restores_live_keys_of_every_namespace_and_skips_dead_ones() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let open = || {
        Cache::builder()
            .dir(dir.path())
            .clock(clock.clone())
            .shards(4)
            .hot_capacity(4 << 20)
            .open()
            .unwrap()
    };
    let key = |i: u32| i.to_be_bytes();
    let c = open();
    // Namespaces "a" and "b" interleaved; "b" only every 7th key, so its
    // hot keys are sparse in the table. Every 3rd key of "a" expires.
    for i in 0..3000u32 {
        if i % 3 == 0 {
            c.set_with_ttl("a", &key(i), vec![1u8; 100], Duration::from_secs(10))
                .unwrap();
        } else {
            c.set("a", &key(i), vec![2u8; 100]).unwrap();
        }
        if i % 7 == 0 {
            c.set("b", &key(i), vec![3u8; 100]).unwrap();
            c.set("c", &key(i), vec![4u8; 100]).unwrap();
        }
    }
    c.invalidate_namespace("c").unwrap();
    c.close().unwrap();
    clock.advance(Duration::from_secs(20));
    let c = open();
    let mut waited = 0;
    while !c.stats().warmup_done {
        std::thread::sleep(Duration::from_millis(5));
        waited += 1;
        assert!(waited < 2000, "warm-up never finished");
    }
    let live_a = (0..3000u32).filter(|i| i % 3 != 0).count() as u64;
    let live_b = (0..3000u32).filter(|i| i % 7 == 0).count() as u64;
    assert_eq!(c.stats().hot_entries, live_a + live_b);
    for i in 0..3000u32 {
        let a = c.get("a", &key(i)).unwrap();
        assert_eq!(a.is_some(), i % 3 != 0, "a {i}");
        let b = c.get("b", &key(i)).unwrap();
        assert_eq!(b.is_some(), i % 7 == 0, "b {i}");
        assert!(c.get("c", &key(i)).unwrap().is_none(), "c {i}");
    }
    let s = c.stats();
    let hot_hits = |ns: &str| {
        s.namespaces
            .iter()
            .find(|n| n.name == ns)
            .map_or(0, |n| n.hot_hits)
    };
    assert_eq!(hot_hits("a"), live_a, "{s:?}");
    assert_eq!(hot_hits("b"), live_b, "{s:?}");
    c.validate();
}

#[test]
fn stale_entries_are_kept_for_the_retention_window_and_only_get_entry_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let open = || {
        Cache::builder()
            .dir(dir.path())
            .clock(clock.clone())
            .namespace(
                "price",
                NamespacePolicy::default()
                    .ttl(Duration::from_secs(10))
                    .max_stale(Duration::from_secs(60)),
            )
            .open()
            .unwrap()
    };
    let c = open();
    c.set("price", b"BTC", b"97000".to_vec()).unwrap();
    let e = c.get_entry("price", b"BTC").unwrap().unwrap();
    assert_eq!((e.ttl, e.stale_by), (Some(Duration::from_secs(10)), None));
    clock.advance(Duration::from_secs(15));
    assert_eq!(
        c.get("price", b"BTC").unwrap(),
        None,
        "get never returns stale entries"
    );
    let e = c.get_entry("price", b"BTC").unwrap().unwrap();
    assert_eq!(e.stale_by, Some(Duration::from_secs(5)));
    assert_eq!(&e.value[..], b"97000");
    c.run_maintenance().unwrap();
    assert_eq!(
        c.stats().disk_records,
        1,
        "swept inside the retention window"
    );
    c.close().unwrap();
    // From disk after a restart, too.
    let c = open();
    assert_eq!(
        c.get_entry("price", b"BTC").unwrap().unwrap().stale_by,
        Some(Duration::from_secs(5))
    );
    clock.advance(Duration::from_secs(60));
    assert_eq!(
        c.get_entry("price", b"BTC").unwrap(),
        None,
        "served stale beyond max_stale"
    );
    c.run_maintenance().unwrap();
    assert_eq!(c.stats().disk_records, 0);
}

#[test]
fn a_new_schema_version_bumps_the_epoch_across_restart() {
    let dir = tempfile::tempdir().unwrap();
    let open = |v: &str| {
        Cache::builder()
            .dir(dir.path())
            .namespace("search", NamespacePolicy::default().schema_version(v))
            .open()
            .unwrap()
    };
    let c = open("v1");
    c.set("search", b"q", b"old logic".to_vec()).unwrap();
    c.close().unwrap();
    let c = open("v1");
    assert!(
        c.contains("search", b"q").unwrap(),
        "same version keeps entries"
    );
    c.close().unwrap();
    let c = open("v2");
    assert_eq!(
        c.get("search", b"q").unwrap(),
        None,
        "new version must hide old results"
    );
    c.set("search", b"q", b"new logic".to_vec()).unwrap();
    c.close().unwrap();
    let c = open("v2");
    assert_eq!(
        c.get("search", b"q").unwrap().as_deref(),
        Some(&b"new logic"[..])
    );
}

#[test]
fn loader_state_persists_and_durable_invalidation_returns_after_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cache::builder().dir(dir.path()).open().unwrap();
    c.loader_meta_put("breaker/prices-api", Some(b"open".to_vec()))
        .unwrap();
    c.loader_meta_put("gone", Some(b"x".to_vec())).unwrap();
    c.loader_meta_put("gone", None).unwrap();
    c.set("ns", b"k", b"v".to_vec()).unwrap();
    assert_eq!(c.invalidate_namespace_durable("ns").unwrap(), 1);
    assert_eq!(
        c.loader_meta_get("breaker/prices-api").as_deref(),
        Some(&b"open"[..])
    );
    drop(c);
    let c = Cache::builder().dir(dir.path()).open().unwrap();
    assert_eq!(
        c.loader_meta_get("breaker/prices-api").as_deref(),
        Some(&b"open"[..])
    );
    assert_eq!(c.loader_meta_get("gone"), None);
    assert_eq!(c.get("ns", b"k").unwrap(), None);
}

#[test]
fn close_saves_the_loading_state_and_metrics_text_has_each_family_once() {
    use embercache::{BreakerState, LoadError, Loaded};
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let open = || {
        Cache::builder()
            .dir(dir.path())
            .clock(clock.clone())
            .open()
            .unwrap()
    };
    let c = open();
    let mut cfg = embercache::BreakerConfig::default();
    cfg.minimum_calls = 2;
    cfg.window_size = 2;
    c.configure_upstream("prices-api", cfg).unwrap();
    for i in 0..4u8 {
        let r = c.get_or_load("price", &[i], "prices-api", |_| {
            Err(LoadError::failed(std::io::Error::other("upstream down")))
        });
        assert!(r.is_err());
    }
    assert_eq!(c.breaker("prices-api").state(), BreakerState::Open);
    let ok = c.get_or_load("price", b"x", "other-api", |_| {
        Ok(Loaded::Value(bytes::Bytes::from_static(b"1")))
    });
    assert!(ok.is_ok());

    let text = c.metrics_text();
    assert!(text.ends_with("# EOF\n"));
    assert!(text.contains("embercache_load_"), "loading metrics missing");
    let mut families: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let n = families.len();
    families.sort();
    families.dedup();
    assert_eq!(families.len(), n, "a metric family is declared twice");
    assert_eq!(text.matches("# EOF").count(), 1);

    // No save_load_state(): close() alone must persist the open breaker.
    c.close().unwrap();
    let c = open();
    assert_eq!(
        c.breaker("prices-api").state(),
        BreakerState::Open,
        "breaker state lost at close"
    );
}

#[test]
fn a_value_loaded_across_an_invalidation_is_not_stored() {
    use embercache::Loaded;
    let c = Cache::builder().open().unwrap();
    let c2 = c.clone();
    // The upstream answers after the namespace was invalidated (a trade
    // invalidated positions while the old position was being fetched).
    let r = c
        .get_or_load("position", b"alice", "positions-api", move |_| {
            c2.invalidate_namespace("position").unwrap();
            Ok(Loaded::Value(bytes::Bytes::from_static(
                b"before the trade",
            )))
        })
        .unwrap();
    assert_eq!(
        r.value.as_deref(),
        Some(&b"before the trade"[..]),
        "the caller still gets its answer"
    );
    assert_eq!(
        c.get("position", b"alice").unwrap(),
        None,
        "a pre-invalidation answer was cached"
    );
}

/// Writes accepted while close() runs (a full queue makes the race
/// deterministic) are committed by it, never accepted and then dropped.
#[test]
fn writes_accepted_during_close_survive_it() {
    use std::sync::{Arc, Mutex};
    let (mut lost_total, mut accepted_total) = (0, 0);
    for _round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let mut limits = Limits::default();
        limits.queue_capacity = 4;
        let cache = Cache::builder()
            .dir(dir.path())
            .durability(Durability::Buffered {
                max_delay: Duration::from_millis(1),
            })
            .limits(limits.clone())
            .shards(1)
            .open()
            .unwrap();
        let ok: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let writers: Vec<_> = (0..8u8)
            .map(|t| {
                let (c, ok) = (cache.clone(), ok.clone());
                std::thread::spawn(move || {
                    for i in 0u32.. {
                        let k = [&[t][..], &i.to_le_bytes()[..]].concat();
                        match c.set("n", &k, vec![1u8; 32]) {
                            Ok(()) => ok.lock().unwrap().push(k),
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        // Let the queue fill up, then close while the writers keep going.
        while ok.lock().unwrap().len() < 200 {
            std::thread::yield_now();
        }
        cache.clone().close().unwrap();
        for w in writers {
            w.join().unwrap();
        }
        drop(cache);
        let cache = Cache::builder()
            .dir(dir.path())
            .limits(limits)
            .open()
            .unwrap();
        let ok = ok.lock().unwrap();
        accepted_total += ok.len();
        lost_total += ok
            .iter()
            .filter(|k| cache.get("n", k).unwrap().is_none())
            .count();
    }
    assert_eq!(
        lost_total, 0,
        "{lost_total} of {accepted_total} writes accepted during close were lost"
    );
}

/// A second close (another clone, or the drop after close) waits for the
/// first and returns its result; it never says Ok before the data is durable.
#[test]
fn a_concurrent_second_close_waits_for_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cache::builder()
        .dir(dir.path())
        .durability(Durability::Buffered {
            max_delay: Duration::from_secs(10),
        })
        .open()
        .unwrap();
    for i in 0..2000u32 {
        c.set("n", &i.to_be_bytes(), vec![7u8; 500]).unwrap();
    }
    let c2 = c.clone();
    let first = std::thread::spawn(move || c2.close());
    // Whichever close runs second must only return once everything is durable:
    // then the directory can be opened (the lock is released) with all data.
    c.close().unwrap();
    let reopened = Cache::builder()
        .dir(dir.path())
        .open()
        .expect("second close returned before the first finished");
    for i in 0..2000u32 {
        assert!(
            reopened.contains("n", &i.to_be_bytes()).unwrap(),
            "key {i} not durable after close returned"
        );
    }
    drop(reopened);
    first.join().unwrap().unwrap();
}

#[test]
fn the_sweeper_reclaims_expired_entries_from_the_hot_tier_too() {
    let clock = ManualClock::new(T0);
    let c = Cache::builder().clock(clock.clone()).open().unwrap();
    for i in 0..100u32 {
        c.set_with_ttl(
            "ns",
            &i.to_be_bytes(),
            vec![1u8; 100],
            Duration::from_secs(5),
        )
        .unwrap();
    }
    c.set("ns", b"keep", b"v".to_vec()).unwrap();
    c.flush().unwrap();
    assert_eq!(c.stats().hot_entries, 101);
    clock.advance(Duration::from_secs(6));
    c.run_maintenance().unwrap();
    let s = c.stats();
    assert_eq!(
        (s.hot_entries, s.disk_records),
        (1, 1),
        "expired entries still held"
    );
    c.validate();
}

#[test]
fn a_namespace_handle_reads_and_writes_what_the_cache_does() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let c = open(dir.path(), &clock);
    let h = c.namespace("prices").unwrap();
    assert_eq!(h.name(), "prices");
    assert!(matches!(
        c.namespace(""),
        Err(WriteError::InvalidNamespace { .. })
    ));
    // Written through the handle, read by name, and the other way round.
    h.set(b"a", b"1".to_vec()).unwrap();
    c.set("prices", b"b", b"2".to_vec()).unwrap();
    assert_eq!(c.get("prices", b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(h.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(h.get(b"absent").unwrap(), None);
    assert!(h.contains(b"a").unwrap());
    // Counted as the cache counts them: two hot hits and four misses below.
    let before = c.stats();
    // A TTL runs out for the handle's get as for the cache's.
    h.set_with_ttl(b"t", b"x".to_vec(), Duration::from_secs(5))
        .unwrap();
    assert!(h.get(b"t").unwrap().is_some());
    clock.advance(Duration::from_secs(5));
    assert_eq!(h.get(b"t").unwrap(), None);
    assert_eq!(c.get("prices", b"t").unwrap(), None);
    // An invalidated namespace hides what the handle's hot tier holds.
    c.invalidate_namespace("prices").unwrap();
    assert_eq!(h.get(b"a").unwrap(), None);
    h.set(b"a", b"3".to_vec()).unwrap();
    assert_eq!(h.get(b"a").unwrap().as_deref(), Some(&b"3"[..]));
    h.delete(b"a").unwrap();
    assert_eq!(h.get(b"a").unwrap(), None);
    let ns = |s: &embercache::Stats| {
        s.namespaces
            .iter()
            .find(|n| n.name == "prices")
            .cloned()
            .unwrap()
    };
    let (b, a) = (ns(&before), ns(&c.stats()));
    assert_eq!(a.hot_hits - b.hot_hits, 2, "the two live gets hit hot");
    assert!(
        a.misses - b.misses >= 4,
        "expired, invalidated and deleted miss"
    );
    c.validate();
    // A handle outliving close() answers Closed.
    let c2 = c.clone();
    c.close().unwrap();
    assert!(matches!(h.get(b"b"), Err(embercache::ReadError::Closed)));
    drop(c2);
}
