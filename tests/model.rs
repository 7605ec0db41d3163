//! Model test: random operation sequences against a real on-disk cache,
//! every read checked against a `BTreeMap` model.
//!
//! The model holds, per (namespace, key), the value and its absolute expiry
//! in engine time. Engine time is modelled exactly: `ManualClock::advance`
//! moves it forward, a forward wall jump pulls it forward, a backward wall
//! jump leaves it alone (clock.rs). After every clock change the test does
//! one read so the engine observes each clock state (engine time only
//! follows wall jumps it sees). Close and drop persist the engine time, so
//! reopening never moves it back and never extends a TTL.
//!
//! After every step: `cache.validate()` (hot-tier invariants).

use embercache::{Cache, Durability, ManualClock, NamespacePolicy, Ttl, WriteOptions};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const T0: u64 = 1_750_000_000_000;

/// "a": defaults (zstd above 64 bytes, hot admission).
/// "b": raw values, never in the hot tier (every read goes to pending/redb).
/// "c": default TTL 30 s, capped at 60 s.
const NAMESPACES: [&str; 3] = ["a", "b", "c"];
/// A small key space with shared prefixes, so writes collide and scans
/// have something to filter. The empty key is a valid key.
const KEYS: [&[u8]; 10] = [
    b"", b"a", b"a0", b"a1", b"ab", b"b", b"b0", b"b1", b"b10", b"c",
];
const PREFIXES: [&[u8]; 6] = [b"", b"a", b"b", b"b1", b"a0", b"z"];
/// TTL choices of a write; `None` = the namespace default.
const TTLS: [Option<Duration>; 7] = [
    None,
    Some(Duration::from_millis(1)),
    Some(Duration::from_millis(500)),
    Some(Duration::from_secs(5)),
    Some(Duration::from_secs(90)),
    Some(Duration::from_secs(3600)),
    Some(Duration::MAX),
];

fn policy(ns: &str) -> NamespacePolicy {
    match ns {
        "b" => NamespacePolicy::default()
            .no_compression()
            .hot_admission(false),
        "c" => NamespacePolicy::default()
            .ttl(Duration::from_secs(30))
            .max_ttl(Duration::from_secs(60)),
        _ => NamespacePolicy::default(),
    }
}

/// Absolute expiry the engine must give a write (`u64::MAX` = never): the
/// caller's TTL or the namespace default, capped by the namespace maximum.
fn expiry(ns: &str, ttl: Option<Duration>, now: u64) -> u64 {
    let (default, max) = match ns {
        "c" => (Some(Duration::from_secs(30)), Some(Duration::from_secs(60))),
        _ => (None, None),
    };
    let ttl = match (ttl.or(default), max) {
        (Some(t), Some(m)) => Some(t.min(m)),
        (None, Some(m)) => Some(m),
        (t, None) => t,
    };
    match ttl {
        None => u64::MAX,
        Some(t) => now.saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
    }
}

fn write_options(ttl: usize, durable: bool) -> WriteOptions {
    let mut o = WriteOptions::default();
    o.ttl = TTLS[ttl];
    o.durable = durable;
    o
}

#[derive(Debug, Clone)]
struct Val {
    len: usize,
    seed: u8,
    compressible: bool,
}

#[derive(Debug, Clone)]
enum Step {
    Set {
        ns: usize,
        key: usize,
        val: Val,
        ttl: usize,
        durable: bool,
    },
    Get {
        ns: usize,
        key: usize,
    },
    Ttl {
        ns: usize,
        key: usize,
    },
    Delete {
        ns: usize,
        key: usize,
        durable: bool,
    },
    GetMany {
        ns: usize,
        keys: Vec<usize>,
    },
    SetMany {
        ns: usize,
        items: Vec<(usize, Val)>,
        ttl: usize,
        durable: bool,
    },
    DeleteMany {
        ns: usize,
        keys: Vec<usize>,
        durable: bool,
    },
    Scan {
        ns: usize,
        prefix: usize,
    },
    Advance(u64),
    JumpWall(i64),
    Invalidate(usize),
    Flush,
    /// `run_maintenance`, then the disk record count must equal the live
    /// entries of the model (expired swept, old epochs purged).
    Maintain,
    Reopen,
    DropReopen,
}

fn val() -> impl Strategy<Value = Val> {
    (
        prop_oneof![0usize..64, 64usize..2000],
        any::<u8>(),
        any::<bool>(),
    )
        .prop_map(|(len, seed, compressible)| Val {
            len,
            seed,
            compressible,
        })
}

fn step() -> impl Strategy<Value = Step> {
    let ns = 0..NAMESPACES.len();
    let key = 0..KEYS.len();
    let keys = proptest::collection::vec(0..KEYS.len(), 0..6);
    prop_oneof![
        12 => (ns.clone(), key.clone(), val(), 0..TTLS.len(), proptest::bool::weighted(0.2))
            .prop_map(|(ns, key, val, ttl, durable)| Step::Set { ns, key, val, ttl, durable }),
        8 => (ns.clone(), key.clone()).prop_map(|(ns, key)| Step::Get { ns, key }),
        2 => (ns.clone(), key.clone()).prop_map(|(ns, key)| Step::Ttl { ns, key }),
        3 => (ns.clone(), key.clone(), proptest::bool::weighted(0.2))
            .prop_map(|(ns, key, durable)| Step::Delete { ns, key, durable }),
        3 => (ns.clone(), keys.clone()).prop_map(|(ns, keys)| Step::GetMany { ns, keys }),
        2 => (
            ns.clone(),
            proptest::collection::vec((0..KEYS.len(), val()), 0..6),
            0..TTLS.len(),
            any::<bool>()
        )
            .prop_map(|(ns, items, ttl, durable)| Step::SetMany { ns, items, ttl, durable }),
        2 => (ns.clone(), keys, any::<bool>())
            .prop_map(|(ns, keys, durable)| Step::DeleteMany { ns, keys, durable }),
        3 => (ns.clone(), 0..PREFIXES.len()).prop_map(|(ns, prefix)| Step::Scan { ns, prefix }),
        3 => prop_oneof![Just(1u64), Just(499), Just(500), Just(1000), Just(5000), Just(61_000)]
            .prop_map(Step::Advance),
        1 => prop_oneof![Just(-3_600_000i64), Just(-10_000), Just(2_000), Just(10_000)]
            .prop_map(Step::JumpWall),
        1 => ns.prop_map(Step::Invalidate),
        1 => Just(Step::Flush),
        1 => Just(Step::Maintain),
        1 => Just(Step::Reopen),
        1 => Just(Step::DropReopen),
    ]
}

/// Durability modes a case runs under. The long `max_delay` keeps writes in
/// the pending set for the whole case unless something waits for them.
fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::Sync),
        Just(Durability::Buffered {
            max_delay: Duration::from_millis(2)
        }),
        Just(Durability::Buffered {
            max_delay: Duration::from_secs(60)
        }),
    ]
}

/// The value a write stores; `tag` (the step number) makes every write of
/// 8 bytes or more distinct, so a stale value cannot pass for a new one.
fn make_value(v: &Val, tag: u64) -> Vec<u8> {
    let mut out: Vec<u8> = if v.compressible {
        (0..v.len)
            .map(|i| v.seed.wrapping_add((i / 16) as u8))
            .collect()
    } else {
        let mut x = (u64::from(v.seed) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ tag;
        (0..v.len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let n = out.len().min(8);
    out[..n].copy_from_slice(&tag.to_le_bytes()[..n]);
    out
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    value: Vec<u8>,
    expires_at: u64,
}

struct Model {
    /// (namespace, key) → entry. Expired entries may linger; reads filter.
    map: BTreeMap<(usize, Vec<u8>), Entry>,
    /// Engine time, as the engine must compute it.
    now: u64,
    /// The ManualClock's wall time.
    wall: u64,
}

impl Model {
    fn live(&self, ns: usize, key: &[u8]) -> Option<&Entry> {
        self.map
            .get(&(ns, key.to_vec()))
            .filter(|e| e.expires_at > self.now)
    }
    fn live_count(&self) -> u64 {
        self.map
            .values()
            .filter(|e| e.expires_at > self.now)
            .count() as u64
    }
}

struct Harness {
    dir: tempfile::TempDir,
    clock: ManualClock,
    durability: Durability,
    shards: usize,
    cache: Option<Cache>,
    model: Model,
}

fn open(dir: &Path, clock: &ManualClock, durability: Durability, shards: usize) -> Cache {
    let mut b = Cache::builder()
        .dir(dir)
        .clock(clock.clone())
        .shards(shards)
        .hot_capacity(16 << 10)
        .durability(durability)
        .strict(true);
    for ns in NAMESPACES {
        b = b.namespace(ns, policy(ns));
    }
    b.open().expect("open")
}

impl Harness {
    fn new(durability: Durability, shards: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let cache = open(dir.path(), &clock, durability, shards);
        Harness {
            dir,
            clock,
            durability,
            shards,
            cache: Some(cache),
            model: Model {
                map: BTreeMap::new(),
                now: T0,
                wall: T0,
            },
        }
    }

    fn cache(&self) -> &Cache {
        self.cache.as_ref().expect("open")
    }

    fn reopen(&mut self) {
        self.cache = Some(open(
            self.dir.path(),
            &self.clock,
            self.durability,
            self.shards,
        ));
    }

    /// One read of engine time, so the engine sees the current clock
    /// state as the model assumes. (A `get` no longer does: a miss, or a
    /// hit on an entry without a TTL, reads no clock, and a forward wall
    /// step undone before any read is then never seen, which the model
    /// did not expect; proptest found it.)
    fn observe_clock(&self) {
        self.cache().now_ms();
    }

    fn check_get(&self, ns: usize, key: usize, got: Option<&[u8]>, what: &str) {
        let want = self.model.live(ns, KEYS[key]).map(|e| e.value.as_slice());
        assert_eq!(
            got,
            want,
            "{what} {}/{:?} at engine time {}",
            NAMESPACES[ns],
            String::from_utf8_lossy(KEYS[key]),
            self.model.now - T0
        );
    }

    fn apply(&mut self, i: u64, step: &Step) {
        let m = &mut self.model;
        match step {
            Step::Set {
                ns,
                key,
                val,
                ttl,
                durable,
            } => {
                let v = make_value(val, i);
                let opts = write_options(*ttl, *durable);
                self.cache
                    .as_ref()
                    .unwrap()
                    .set_with(NAMESPACES[*ns], KEYS[*key], v.clone(), opts)
                    .unwrap();
                m.map.insert(
                    (*ns, KEYS[*key].to_vec()),
                    Entry {
                        value: v,
                        expires_at: expiry(NAMESPACES[*ns], TTLS[*ttl], m.now),
                    },
                );
            }
            Step::Get { ns, key } => {
                let got = self.cache().get(NAMESPACES[*ns], KEYS[*key]).unwrap();
                self.check_get(*ns, *key, got.as_deref(), "get");
            }
            Step::Ttl { ns, key } => {
                let got = self.cache().ttl(NAMESPACES[*ns], KEYS[*key]).unwrap();
                let want = self
                    .model
                    .live(*ns, KEYS[*key])
                    .map(|e| match e.expires_at {
                        u64::MAX => Ttl::Never,
                        t => Ttl::Remaining(Duration::from_millis(t - self.model.now)),
                    });
                assert_eq!(got, want, "ttl {}/{:?}", NAMESPACES[*ns], KEYS[*key]);
            }
            Step::Delete { ns, key, durable } => {
                let c = self.cache.as_ref().unwrap();
                if *durable {
                    c.delete_durable(NAMESPACES[*ns], KEYS[*key]).unwrap();
                } else {
                    c.delete(NAMESPACES[*ns], KEYS[*key]).unwrap();
                }
                m.map.remove(&(*ns, KEYS[*key].to_vec()));
            }
            Step::GetMany { ns, keys } => {
                let ks: Vec<&[u8]> = keys.iter().map(|k| KEYS[*k]).collect();
                let got = self.cache().get_many(NAMESPACES[*ns], &ks).unwrap();
                assert_eq!(got.len(), keys.len());
                for (k, g) in keys.iter().zip(&got) {
                    self.check_get(*ns, *k, g.as_deref(), "get_many");
                }
            }
            Step::SetMany {
                ns,
                items,
                ttl,
                durable,
            } => {
                let vals: Vec<(Vec<u8>, Vec<u8>)> = items
                    .iter()
                    .enumerate()
                    .map(|(j, (k, v))| (KEYS[*k].to_vec(), make_value(v, i * 100 + j as u64)))
                    .collect();
                let opts = write_options(*ttl, *durable);
                self.cache
                    .as_ref()
                    .unwrap()
                    .set_many(NAMESPACES[*ns], vals.clone(), opts)
                    .unwrap();
                let exp = expiry(NAMESPACES[*ns], TTLS[*ttl], m.now);
                for (k, v) in vals {
                    m.map.insert(
                        (*ns, k),
                        Entry {
                            value: v,
                            expires_at: exp,
                        },
                    );
                }
            }
            Step::DeleteMany { ns, keys, durable } => {
                let ks: Vec<&[u8]> = keys.iter().map(|k| KEYS[*k]).collect();
                self.cache
                    .as_ref()
                    .unwrap()
                    .delete_many(NAMESPACES[*ns], &ks, *durable)
                    .unwrap();
                for k in ks {
                    m.map.remove(&(*ns, k.to_vec()));
                }
            }
            Step::Scan { ns, prefix } => {
                let p = PREFIXES[*prefix];
                let got: Vec<(Vec<u8>, Vec<u8>)> = self
                    .cache()
                    .scan(NAMESPACES[*ns], p)
                    .unwrap()
                    .into_iter()
                    .map(|(k, v)| (k, v.to_vec()))
                    .collect();
                let want: Vec<(Vec<u8>, Vec<u8>)> = self
                    .model
                    .map
                    .iter()
                    .filter(|((n, k), e)| {
                        *n == *ns && k.starts_with(p) && e.expires_at > self.model.now
                    })
                    .map(|((_, k), e)| (k.clone(), e.value.clone()))
                    .collect();
                assert_eq!(got, want, "scan {}/{:?}", NAMESPACES[*ns], p);
            }
            Step::Advance(ms) => {
                self.clock.advance(Duration::from_millis(*ms));
                m.wall += ms;
                m.now = (m.now + ms).max(m.wall);
                self.observe_clock();
            }
            Step::JumpWall(delta) => {
                self.clock.jump_wall(*delta);
                m.wall = m.wall.saturating_add_signed(*delta);
                m.now = m.now.max(m.wall);
                self.observe_clock();
            }
            Step::Invalidate(ns) => {
                self.cache
                    .as_ref()
                    .unwrap()
                    .invalidate_namespace(NAMESPACES[*ns])
                    .unwrap();
                m.map.retain(|(n, _), _| n != ns);
            }
            Step::Flush => self.cache().flush().unwrap(),
            Step::Maintain => {
                self.cache().run_maintenance().unwrap();
                let s = self.cache().stats();
                assert_eq!(
                    s.disk_records,
                    self.model.live_count(),
                    "disk records after maintenance (expired swept, old epochs purged)"
                );
            }
            Step::Reopen => {
                self.cache.take().unwrap().close().unwrap();
                self.reopen();
            }
            Step::DropReopen => {
                // Dropping without close() must still keep every accepted write.
                drop(self.cache.take());
                self.reopen();
            }
        }
        self.cache().validate();
    }

    /// Every key of every namespace, read one by one, after the sequence.
    fn check_all(&self) {
        for (ns, name) in NAMESPACES.iter().enumerate() {
            for (key, k) in KEYS.iter().enumerate() {
                let got = self.cache().get(name, k).unwrap();
                self.check_get(ns, key, got.as_deref(), "final get");
            }
        }
    }
}

fn run(durability: Durability, shards: usize, steps: &[Step]) {
    let mut h = Harness::new(durability, shards);
    for (i, s) in steps.iter().enumerate() {
        h.apply(i as u64 + 1, s);
    }
    h.check_all();
    // One more restart: the final state must survive it as is.
    h.cache.take().unwrap().close().unwrap();
    h.reopen();
    h.check_all();
    h.cache().validate();
    h.cache.take().unwrap().close().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        max_shrink_iters: 2000,
        // A failing case is saved next to this file (tests/model.proptest-regressions).
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn cache_matches_model(
        durability in durability(),
        shards in prop_oneof![Just(1usize), Just(2)],
        steps in proptest::collection::vec(step(), 1..200),
    ) {
        run(durability, shards, &steps);
    }
}

/// A fixed sequence that walks the interesting paths once, whatever the
/// random cases pick: pending reads under a long buffering delay, hot
/// evictions, a backward wall jump across a restart, expiry at the exact
/// millisecond, invalidation across a drop.
#[test]
fn fixed_sequence() {
    let big = |seed| Val {
        len: 1500,
        seed,
        compressible: seed % 2 == 0,
    };
    let mut steps = Vec::new();
    for k in 0..KEYS.len() {
        steps.push(Step::Set {
            ns: k % 3,
            key: k,
            val: big(k as u8),
            ttl: k % TTLS.len(),
            durable: false,
        });
    }
    steps.extend([
        Step::Scan { ns: 0, prefix: 0 },
        Step::GetMany {
            ns: 1,
            keys: (0..KEYS.len()).collect(),
        },
        Step::Advance(499),
        Step::Get { ns: 2, key: 2 },
        Step::Advance(1),
        Step::Get { ns: 2, key: 2 },
        Step::JumpWall(-3_600_000),
        Step::Reopen,
        Step::Ttl { ns: 1, key: 4 },
        Step::Advance(5000),
        Step::Scan { ns: 1, prefix: 0 },
        Step::Invalidate(0),
        Step::DropReopen,
        Step::Scan { ns: 0, prefix: 0 },
        Step::Maintain,
        Step::JumpWall(10_000),
        Step::Maintain,
    ]);
    for d in [
        Durability::Sync,
        Durability::Buffered {
            max_delay: Duration::from_secs(60),
        },
    ] {
        run(d, 1, &steps);
    }
}

/// A short TTL, a forward wall step that expires it, then two backward
/// steps: the entry stays expired (a case proptest found: the harness's
/// clock probe was a `get` that read no clock).
#[test]
fn a_forward_wall_step_expires_and_backward_steps_do_not_revive() {
    for ns in 0..NAMESPACES.len() {
        for durable in [false, true] {
            let steps = [
                Step::Set {
                    ns,
                    key: 1,
                    val: Val {
                        len: 10,
                        seed: 1,
                        compressible: false,
                    },
                    ttl: 1,
                    durable,
                },
                Step::JumpWall(2000),
                Step::JumpWall(-3_600_000),
                Step::JumpWall(-3_600_000),
                Step::Get { ns, key: 1 },
            ];
            for d in [
                Durability::Sync,
                Durability::Buffered {
                    max_delay: Duration::from_secs(60),
                },
            ] {
                run(d, 1, &steps);
            }
        }
    }
}
