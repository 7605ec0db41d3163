//! Failure modes other than crashes (issue 3 §5): wall-clock jumps across
//! restarts and while running, damaged database files (bit flips, zeroed
//! pages, truncation, garbage appended, many seeds), and TTL edge cases.
//! The memory bound has its own binary (tests/memory_bound.rs, a counting
//! allocator) and hash flooding is a benchmark (benches/hash_flood.rs).

use embercache::{Cache, DB_FILE, ManualClock, NamespacePolicy, OpenError, ReadError, Ttl};
use embercache::{WriteError, WriteOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::Duration;

const T0: u64 = 1_750_000_000_000;
const SEC: u64 = 1000;
const MIN: u64 = 60 * SEC;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;

fn open_at(dir: &Path, clock: &ManualClock) -> Cache {
    Cache::builder()
        .dir(dir)
        .clock(clock.clone())
        .shards(2)
        .hot_capacity(1 << 20)
        .strict(true)
        .open()
        .expect("open")
}

// ----- clock jumps -------------------------------------------------------------

/// The test's own copy of engine time (src/clock.rs): follows the wall
/// clock forward, counts monotonic time through backward jumps, restarts
/// from `max(wall, engine time of the last commit)`.
struct Model {
    wall: u64,
    engine: u64,
    /// key → absolute expiry in engine time (`u64::MAX` = never).
    entries: Vec<(Vec<u8>, u64)>,
}

#[derive(Default, Debug)]
struct ClockFigures {
    /// Entries checked (each read counts once).
    reads: u64,
    /// A read returned an entry whose expiry had passed in engine time.
    expired_reads: u64,
    /// `ttl()` reported more time left than the TTL set minus the engine
    /// time elapsed since the write.
    ttl_extensions: u64,
    /// A live entry was missing (it expired before its time).
    premature: u64,
}

/// TTLs written in every clock scenario: around 1 h and 1 day on purpose.
const TTLS: [Option<u64>; 10] = [
    Some(SEC),
    Some(10 * MIN),
    Some(59 * MIN),
    Some(61 * MIN),
    Some(2 * HOUR),
    Some(23 * HOUR),
    Some(25 * HOUR),
    Some(2 * DAY),
    Some(40 * DAY),
    None,
];

impl Model {
    fn new() -> Self {
        Model {
            wall: T0,
            engine: T0,
            entries: Vec::new(),
        }
    }
    fn advance(&mut self, clock: &ManualClock, ms: u64) {
        clock.advance(Duration::from_millis(ms));
        self.wall += ms;
        self.engine = (self.engine + ms).max(self.wall);
    }
    fn jump(&mut self, clock: &ManualClock, delta: i64) {
        clock.jump_wall(delta);
        self.wall = self.wall.saturating_add_signed(delta);
        self.engine = self.engine.max(self.wall);
    }
    /// Writes one entry per TTL under `tag`.
    fn write(&mut self, c: &Cache, tag: &str) {
        for (i, ttl) in TTLS.iter().enumerate() {
            let key = format!("{tag}-{i}").into_bytes();
            match ttl {
                Some(t) => c
                    .set_with_ttl("ns", &key, key.clone(), Duration::from_millis(*t))
                    .unwrap(),
                None => c.set("ns", &key, key.clone()).unwrap(),
            }
            let exp = ttl.map_or(u64::MAX, |t| self.engine + t);
            self.entries.push((key, exp));
        }
    }
    /// Closes after a committed write, so the restart floor is exactly the
    /// engine time now.
    fn close(&self, c: Cache) {
        c.set("ns", b"floor", b"x".to_vec()).unwrap();
        c.flush().unwrap();
        c.close().unwrap();
    }
    fn restart(&mut self, wall: u64) -> ManualClock {
        self.wall = wall;
        self.engine = self.engine.max(wall);
        ManualClock::new(wall)
    }
    fn check(&self, c: &Cache, f: &mut ClockFigures, what: &str) {
        for (key, exp) in &self.entries {
            f.reads += 1;
            let live = *exp > self.engine;
            let got = c.get("ns", key).unwrap();
            let ttl = c.ttl("ns", key).unwrap();
            let name = String::from_utf8_lossy(key);
            if got.is_some() && !live {
                f.expired_reads += 1;
                eprintln!(
                    "{what}: {name} read {} ms after it expired",
                    self.engine - exp
                );
            }
            if got.is_none() && live {
                f.premature += 1;
                eprintln!(
                    "{what}: {name} missing {} ms before expiry",
                    exp - self.engine
                );
            }
            if let Some(v) = &got {
                assert_eq!(&v[..], &key[..], "{what}: {name} has a wrong value");
            }
            let extended = match ttl {
                Some(Ttl::Never) => *exp != u64::MAX,
                Some(Ttl::Remaining(r)) => self.engine + r.as_millis() as u64 > *exp,
                None => false,
            };
            if extended {
                f.ttl_extensions += 1;
                eprintln!("{what}: {name} ttl {ttl:?} beyond its expiry {exp}");
            }
        }
    }
}

#[test]
fn clock_jumps_across_restarts_never_extend_or_resurrect() {
    let mut f = ClockFigures::default();
    for delta in [-(DAY as i64), -(HOUR as i64), HOUR as i64, DAY as i64] {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Model::new();
        let clock = ManualClock::new(T0);
        let c = open_at(dir.path(), &clock);
        m.write(&c, "a");
        m.advance(&clock, 30 * SEC);
        m.write(&c, "b");
        let what = format!("restart with the clock moved {delta:+} ms");
        m.check(&c, &mut f, &what);
        m.close(c);

        let clock = m.restart(m.wall.saturating_add_signed(delta));
        let c = open_at(dir.path(), &clock);
        m.check(&c, &mut f, &what);
        // Time passes after the restart: 30 min, then 1 h, then 1 day.
        for step in [30 * MIN, HOUR, DAY] {
            m.advance(&clock, step);
            m.check(&c, &mut f, &format!("{what}, then +{step} ms"));
        }
        c.run_maintenance().unwrap();
        m.check(&c, &mut f, &format!("{what}, after the sweep"));
        m.close(c);
        // And once more, with the wall clock back where it was.
        let clock = m.restart(T0);
        let c = open_at(dir.path(), &clock);
        m.check(&c, &mut f, &format!("{what}, reopened at T0"));
        c.close().unwrap();
    }
    eprintln!("clock jumps across restarts: {f:?}");
    assert!(f.reads > 300, "{f:?}");
    assert_eq!(f.expired_reads, 0, "reads of expired entries");
    assert_eq!(f.ttl_extensions, 0, "TTL extensions");
    assert_eq!(f.premature, 0, "entries lost before their expiry");
}

#[test]
fn clock_jumps_while_running_never_extend_or_resurrect() {
    let mut f = ClockFigures::default();
    let dir = tempfile::tempdir().unwrap();
    let mut m = Model::new();
    let clock = ManualClock::new(T0);
    let c = open_at(dir.path(), &clock);
    m.write(&c, "a");
    // Half the checks read from pending, half from redb (after a flush).
    let steps: [(&str, i64, u64); 8] = [
        ("back 1 h", -(HOUR as i64), 0),
        ("then 5 min pass", 0, 5 * MIN),
        ("forward 1 day", DAY as i64, 0),
        ("back 1 day", -(DAY as i64), 0),
        ("then 2 h pass", 0, 2 * HOUR),
        ("forward 1 h", HOUR as i64, 0),
        ("back 1 day again", -(DAY as i64), 0),
        ("then 1 day passes", 0, DAY),
    ];
    for (i, (what, jump, pass)) in steps.iter().enumerate() {
        if *jump != 0 {
            m.jump(&clock, *jump);
        }
        if *pass != 0 {
            m.advance(&clock, *pass);
        }
        m.check(&c, &mut f, what);
        m.write(&c, &format!("s{i}"));
        if i % 2 == 1 {
            c.flush().unwrap();
        }
        m.check(&c, &mut f, &format!("{what}, after writing"));
    }
    c.run_maintenance().unwrap();
    m.check(&c, &mut f, "after the sweep");
    m.close(c);
    // Restart with the wall clock still behind engine time.
    let clock = m.restart(m.wall);
    let c = open_at(dir.path(), &clock);
    m.check(&c, &mut f, "restart after running jumps");
    m.advance(&clock, 3 * DAY);
    m.check(&c, &mut f, "restart, then 3 days");
    c.close().unwrap();
    eprintln!("clock jumps while running: {f:?}");
    assert!(f.reads > 300, "{f:?}");
    assert_eq!(f.expired_reads, 0, "reads of expired entries");
    assert_eq!(f.ttl_extensions, 0, "TTL extensions");
    assert_eq!(f.premature, 0, "entries lost before their expiry");
}

// ----- damaged files -------------------------------------------------------------

const DAMAGE_VARIANTS: u64 = 200;
const DAMAGE_KEYS: u32 = 240;

fn dvalue(i: u32) -> &'static [u8] {
    static VALUES: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    &VALUES.get_or_init(|| {
        // Mixed: compressible (zstd records) and random (raw records),
        // some spanning several pages.
        (0..DAMAGE_KEYS)
            .map(|i| {
                let len = [40, 700, 9000][i as usize % 3];
                if i % 2 == 0 {
                    format!("value {i} ").repeat(len / 8).into_bytes()
                } else {
                    let mut v = vec![0u8; len];
                    StdRng::seed_from_u64(u64::from(i)).fill(&mut v[..]);
                    v
                }
            })
            .collect()
    })[i as usize]
}

/// A cleanly closed database holding `DAMAGE_KEYS` keys.
fn damage_base() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let c = open_at(dir.path(), &ManualClock::new(T0));
    for i in 0..DAMAGE_KEYS {
        c.set("ns", &i.to_be_bytes(), dvalue(i).to_vec()).unwrap();
    }
    // Some history: overwritten and deleted keys leave freed pages.
    for i in (0..DAMAGE_KEYS).step_by(7) {
        c.delete("ns", &i.to_be_bytes()).unwrap();
    }
    c.close().unwrap();
    std::fs::read(dir.path().join(DB_FILE)).unwrap()
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    BitFlips,
    ZeroPage,
    Truncate,
    Extend,
}

fn damage(base: &[u8], seed: u64) -> (Damage, Vec<u8>, String) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut b = base.to_vec();
    let kind = [
        Damage::BitFlips,
        Damage::ZeroPage,
        Damage::Truncate,
        Damage::Extend,
    ][(seed % 4) as usize];
    let desc = match kind {
        Damage::BitFlips => {
            let n = rng.gen_range(1..=8);
            let mut at = Vec::new();
            for _ in 0..n {
                // A third of the flips land in the first page (the header).
                let off = if rng.gen_bool(0.33) {
                    rng.gen_range(0..4096.min(b.len()))
                } else {
                    rng.gen_range(0..b.len())
                };
                b[off] ^= 1 << rng.gen_range(0..8);
                at.push(off);
            }
            format!("bit flips at {at:?}")
        }
        Damage::ZeroPage => {
            let pages = b.len() / 4096;
            let p = rng.gen_range(0..pages);
            b[p * 4096..(p + 1) * 4096].fill(0);
            format!("page {p} of {pages} zeroed")
        }
        Damage::Truncate => {
            let cut = rng.gen_range(0..b.len());
            b.truncate(cut);
            format!("truncated to {cut} bytes")
        }
        Damage::Extend => {
            let n = rng.gen_range(1..=64 << 10);
            b.extend((0..n).map(|_| rng.r#gen::<u8>()));
            format!("{n} bytes of garbage appended")
        }
    };
    (kind, b, desc)
}

#[derive(Default, Debug)]
struct DamageFigures {
    variants: u64,
    strict_opened: u64,
    strict_refused: u64,
    moved_aside: u64,
    repaired_or_intact: u64,
    values_read: u64,
    misses: u64,
    corrupt_reads: u64,
    read_errors: u64,
    wrong_values: u64,
    panics: u64,
    untyped_errors: u64,
    /// Damage redb panicked on after open (a read or a write): the error
    /// was typed, the file marked, and the next open moved it aside.
    damaged_in_use: u64,
}

impl DamageFigures {
    /// Adds everything but `variants` and `panics` (counted by the caller).
    fn add(&mut self, g: &DamageFigures) {
        self.strict_opened += g.strict_opened;
        self.strict_refused += g.strict_refused;
        self.moved_aside += g.moved_aside;
        self.repaired_or_intact += g.repaired_or_intact;
        self.values_read += g.values_read;
        self.misses += g.misses;
        self.corrupt_reads += g.corrupt_reads;
        self.read_errors += g.read_errors;
        self.wrong_values += g.wrong_values;
        self.untyped_errors += g.untyped_errors;
        self.damaged_in_use += g.damaged_in_use;
    }
}

/// Reads every key; counts what came back. Wrong values are the failure.
fn read_back(c: &Cache, f: &mut DamageFigures, desc: &str) {
    for i in 0..DAMAGE_KEYS {
        match c.get("ns", &i.to_be_bytes()) {
            Ok(Some(v)) => {
                // A deleted key must never come back either.
                if i % 7 == 0 || v[..] != *dvalue(i) {
                    f.wrong_values += 1;
                    eprintln!("{desc}: key {i} returned a wrong value");
                } else {
                    f.values_read += 1;
                }
            }
            Ok(None) => f.misses += 1,
            Err(ReadError::Corrupt { .. }) => f.corrupt_reads += 1,
            Err(_) => f.read_errors += 1,
        }
    }
}

fn one_damaged_file(base: &[u8], seed: u64, f: &mut DamageFigures) {
    let (_, bytes, desc) = damage(base, seed);
    let desc = format!("variant {seed} ({desc})");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DB_FILE), &bytes).unwrap();
    let clock = ManualClock::new(T0);
    let builder = |strict| {
        Cache::builder()
            .dir(dir.path())
            .clock(clock.clone())
            .shards(2)
            .hot_capacity(1 << 20)
            .strict(strict)
    };
    // Strict: a typed error, or a database whose reads are all honest.
    match builder(true).open() {
        Ok(c) => {
            f.strict_opened += 1;
            read_back(&c, f, &desc);
            let _ = c.close();
        }
        Err(OpenError::Corrupt { .. }) => f.strict_refused += 1,
        Err(e) => {
            f.untyped_errors += 1;
            eprintln!("{desc}: strict open failed with {e:?}, expected OpenError::Corrupt");
        }
    }
    // Non-strict: always opens (repaired, intact or moved aside).
    match builder(false).open() {
        Ok(c) => {
            if c.stats().moved_aside.is_some() {
                f.moved_aside += 1;
            } else {
                f.repaired_or_intact += 1;
            }
            read_back(&c, f, &desc);
            // And it keeps working, or says the file is damaged (redb met
            // a damaged page on the write path) with a typed error.
            let wrote = c
                .set("ns", b"after", b"v".to_vec())
                .and_then(|()| c.flush());
            match wrote {
                Ok(()) => {
                    assert_eq!(c.get("ns", b"after").unwrap().as_deref(), Some(&b"v"[..]));
                }
                Err(e) => assert!(e.to_string().contains("damaged"), "{desc}: {e}"),
            }
            let _ = c.close();
        }
        Err(e) => {
            f.untyped_errors += 1;
            eprintln!("{desc}: non-strict open failed: {e}");
        }
    }
    // Damage found in use (a read or a write on which redb panicked) left a
    // marker: the next open moves the file aside, and the cache works.
    if dir.path().join(embercache::DAMAGED_MARKER).exists() {
        f.damaged_in_use += 1;
        assert!(
            matches!(builder(true).open(), Err(OpenError::Corrupt { .. })),
            "{desc}: a strict open accepted a file marked damaged"
        );
        let c = builder(false).open().unwrap();
        assert!(c.stats().moved_aside.is_some(), "{desc}: not moved aside");
        assert!(!dir.path().join(embercache::DAMAGED_MARKER).exists());
        c.set("ns", b"after", b"v".to_vec()).unwrap();
        c.flush().unwrap();
        assert_eq!(c.get("ns", b"after").unwrap().as_deref(), Some(&b"v"[..]));
        c.close().unwrap();
    }
}

#[test]
fn damaged_database_files_never_panic_or_return_wrong_values() {
    let base = damage_base();
    assert!(
        base.len() > 256 << 10,
        "base database is {} bytes",
        base.len()
    );
    let first: u64 = std::env::var("EMBERCACHE_DAMAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // redb may panic on a damaged page; the hook would print each one.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    // Each variant waits on several fsyncs: run them on a few threads.
    const THREADS: u64 = 8;
    let parts: Vec<DamageFigures> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let base = &base;
                s.spawn(move || {
                    let mut f = DamageFigures::default();
                    for seed in (first + t..first + DAMAGE_VARIANTS).step_by(THREADS as usize) {
                        f.variants += 1;
                        let mut g = DamageFigures::default();
                        let r =
                            catch_unwind(AssertUnwindSafe(|| one_damaged_file(base, seed, &mut g)));
                        if r.is_err() {
                            f.panics += 1;
                            eprintln!("variant {seed} ({}): panicked", damage(base, seed).2);
                        }
                        f.add(&g);
                    }
                    f
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut f = DamageFigures::default();
    for p in &parts {
        f.variants += p.variants;
        f.panics += p.panics;
        f.add(p);
    }
    std::panic::set_hook(hook);
    eprintln!("damaged files: {f:?}");
    assert_eq!(f.variants, DAMAGE_VARIANTS);
    assert_eq!(f.panics, 0, "panics");
    assert_eq!(f.wrong_values, 0, "wrong values returned");
    assert_eq!(
        f.untyped_errors, 0,
        "opens that failed without OpenError::Corrupt"
    );
    assert!(f.values_read > 0 && f.moved_aside > 0, "{f:?}");
}

/// A panic that is not the file's (here the caller's export sink) goes on
/// unwinding and marks nothing: the healthy file keeps its data.
#[test]
fn a_panic_that_is_not_the_files_does_not_mark_it_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let c = open_at(dir.path(), &clock);
    c.set("ns", b"k", b"v".to_vec()).unwrap();
    c.flush().unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| {
        let _ = c.export(&mut |_| panic!("the sink's own bug"));
    }));
    assert!(r.is_err(), "the sink's panic reaches the caller");
    assert!(!dir.path().join(embercache::DAMAGED_MARKER).exists());
    c.close().unwrap();
    let c = open_at(dir.path(), &clock);
    assert!(c.stats().moved_aside.is_none());
    assert_eq!(c.get("ns", b"k").unwrap().as_deref(), Some(&b"v"[..]));
    c.close().unwrap();
}

/// A marker does not let a second open take a file another `Cache` holds:
/// redb's lock still answers `AlreadyOpen`, and nothing is moved.
#[test]
fn a_damage_marker_does_not_bypass_the_open_lock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let a = open_at(dir.path(), &clock);
    std::fs::write(dir.path().join(embercache::DAMAGED_MARKER), "test").unwrap();
    let b = Cache::builder().dir(dir.path()).clock(clock.clone()).open();
    assert!(
        matches!(b, Err(OpenError::AlreadyOpen { .. })),
        "{:?}",
        b.map(|_| ())
    );
    assert!(dir.path().join(DB_FILE).exists());
    a.set("ns", b"k", b"v".to_vec()).unwrap();
    a.close().unwrap();
    // Once free, the marked file is refused by a strict open and moved
    // aside by a non-strict one.
    let strict = Cache::builder()
        .dir(dir.path())
        .clock(clock.clone())
        .strict(true)
        .open();
    assert!(matches!(strict, Err(OpenError::Corrupt { .. })));
    let c = Cache::builder()
        .dir(dir.path())
        .clock(clock.clone())
        .open()
        .unwrap();
    assert!(c.stats().moved_aside.is_some());
    c.close().unwrap();
}

// ----- TTL edge cases ------------------------------------------------------------

#[test]
fn ttl_zero_is_refused_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let c = open_at(dir.path(), &ManualClock::new(T0));
    let z = Duration::ZERO;
    let results = [
        c.set_with_ttl("ns", b"k", b"x".to_vec(), z),
        c.set_with("ns", b"k", b"x".to_vec(), WriteOptions::ttl(z)),
        c.set_with("ns", b"k", b"x".to_vec(), WriteOptions::ttl(z).durable()),
        c.set_many("ns", [(b"k", b"x".to_vec())], WriteOptions::ttl(z)),
        // Below a millisecond is not zero: it rounds up to 1 ms.
        c.set_with_ttl("ns", b"sub", b"x".to_vec(), Duration::from_nanos(1)),
    ];
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(WriteError::InvalidTtl(_))))
        .count();
    assert_eq!(refused, 4, "{results:?}");
    assert!(results[4].is_ok());
    assert_eq!(
        c.get("ns", b"k").unwrap(),
        None,
        "a refused write stored nothing"
    );
    assert_eq!(
        c.ttl("ns", b"sub").unwrap(),
        Some(Ttl::Remaining(Duration::from_millis(1)))
    );
    let e = Cache::builder()
        .in_memory()
        .namespace("z", NamespacePolicy::default().ttl(z))
        .open()
        .unwrap_err();
    assert!(matches!(e, OpenError::InvalidConfig { .. }), "{e:?}");
    c.close().unwrap();
}

#[test]
fn ttl_of_one_millisecond_lives_exactly_one_millisecond() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let c = open_at(dir.path(), &clock);
    c.set_with_ttl("ns", b"hot", b"v".to_vec(), Duration::from_millis(1))
        .unwrap();
    c.set_with_ttl("ns", b"flushed", b"v".to_vec(), Duration::from_millis(1))
        .unwrap();
    c.flush().unwrap();
    for k in [&b"hot"[..], b"flushed"] {
        assert_eq!(c.get("ns", k).unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(
            c.ttl("ns", k).unwrap(),
            Some(Ttl::Remaining(Duration::from_millis(1)))
        );
    }
    c.close().unwrap();
    // Reopened at the same instant: still alive, 1 ms left.
    let c = open_at(dir.path(), &clock);
    assert_eq!(c.get("ns", b"flushed").unwrap().as_deref(), Some(&b"v"[..]));
    clock.advance(Duration::from_millis(1));
    for k in [&b"hot"[..], b"flushed"] {
        assert_eq!(c.get("ns", k).unwrap(), None, "expired at exactly 1 ms");
        assert_eq!(c.ttl("ns", k).unwrap(), None);
    }
    c.run_maintenance().unwrap();
    assert_eq!(c.stats().disk_records, 0, "the sweep removed both");
    c.close().unwrap();
}

#[test]
fn huge_ttls_saturate_to_never_instead_of_wrapping() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let c = Cache::builder()
        .dir(dir.path())
        .clock(clock.clone())
        .namespace(
            "capped",
            NamespacePolicy::default().max_ttl(Duration::from_secs(3600)),
        )
        .open()
        .unwrap();
    // u64::MAX ms; exactly the ms that make `now + ttl` overflow by one
    // (a wrapping add would expire it at once); the largest Duration.
    let overflow_by_one = u64::MAX - T0 + 1;
    let ttls = [
        ("max-ms", Duration::from_millis(u64::MAX)),
        ("wraps", Duration::from_millis(overflow_by_one)),
        ("wraps-far", Duration::from_millis(u64::MAX - 5)),
        ("dmax", Duration::MAX),
        ("secs-max", Duration::from_secs(u64::MAX)),
    ];
    for (k, t) in ttls {
        c.set_with_ttl("ns", k.as_bytes(), b"v".to_vec(), t)
            .unwrap();
        c.set_with_ttl("capped", k.as_bytes(), b"v".to_vec(), t)
            .unwrap();
    }
    // The last representable TTL below overflow stays finite.
    let finite = u64::MAX - T0 - 1;
    c.set_with_ttl(
        "ns",
        b"finite",
        b"v".to_vec(),
        Duration::from_millis(finite),
    )
    .unwrap();
    let check = |c: &Cache, what: &str| {
        for (k, _) in ttls {
            assert_eq!(
                c.ttl("ns", k.as_bytes()).unwrap(),
                Some(Ttl::Never),
                "{what}: {k}"
            );
            assert_eq!(
                c.get("ns", k.as_bytes()).unwrap().as_deref(),
                Some(&b"v"[..]),
                "{what}: {k}"
            );
        }
        assert!(
            matches!(c.ttl("ns", b"finite").unwrap(), Some(Ttl::Remaining(_))),
            "{what}: finite"
        );
    };
    check(&c, "just written");
    for (k, _) in ttls {
        assert_eq!(
            c.ttl("capped", k.as_bytes()).unwrap(),
            Some(Ttl::Remaining(Duration::from_secs(3600))),
            "max_ttl caps {k}"
        );
    }
    c.flush().unwrap();
    clock.advance(Duration::from_secs(1000 * 365 * 86_400));
    c.run_maintenance().unwrap();
    check(&c, "after 1000 years");
    for (k, _) in ttls {
        assert_eq!(c.get("capped", k.as_bytes()).unwrap(), None);
    }
    c.close().unwrap();
    let c = Cache::builder()
        .dir(dir.path())
        .clock(clock.clone())
        .open()
        .unwrap();
    check(&c, "reopened");
    c.close().unwrap();
}

#[test]
fn a_ttl_that_elapsed_before_the_next_read_is_never_served() {
    // Each write's TTL is over by the next clock reading: in pending, after
    // the commit, in the hot tier or not, by get, get_many, scan, ttl, and
    // after a restart.
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let open = || {
        Cache::builder()
            .dir(dir.path())
            .clock(clock.clone())
            .namespace("cold", NamespacePolicy::default().hot_admission(false))
            // The writer commits on its own only when asked (flush below).
            .durability(embercache::Durability::Buffered {
                max_delay: Duration::from_secs(30),
            })
            .open()
            .unwrap()
    };
    let c = open();
    let mut served = 0;
    let mut check = |c: &Cache, what: &str| {
        for ns in ["hot", "cold"] {
            for k in [&b"a"[..], b"b"] {
                served += u32::from(c.get(ns, k).unwrap().is_some());
                served += u32::from(c.ttl(ns, k).unwrap().is_some());
                served += u32::from(c.contains(ns, k).unwrap());
            }
            served += c
                .get_many(ns, &[&b"a"[..], b"b"])
                .unwrap()
                .iter()
                .flatten()
                .count() as u32;
            served += c.scan(ns, b"").unwrap().len() as u32;
            assert_eq!(served, 0, "{what}: {ns} served an expired entry");
        }
    };
    for ns in ["hot", "cold"] {
        c.set_with_ttl(ns, b"a", b"v".to_vec(), Duration::from_millis(5))
            .unwrap();
        c.set_with_ttl(ns, b"b", b"v".to_vec(), Duration::from_micros(1500))
            .unwrap();
    }
    clock.advance(Duration::from_millis(5));
    check(&c, "still pending");
    c.flush().unwrap();
    check(&c, "committed");
    c.close().unwrap();
    let c = open();
    check(&c, "reopened");
    c.run_maintenance().unwrap();
    assert_eq!(c.stats().disk_records, 0, "the sweep removed them");
    c.close().unwrap();
}
