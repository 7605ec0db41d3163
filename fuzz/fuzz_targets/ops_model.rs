//! Arbitrary operation sequences against a model, with crashes.
//!
//! The cache runs on a `PowerLossDisk` (src/testing.rs). The model keeps,
//! per (namespace, key), the list of states the key may be in after a
//! crash: the first is the state acknowledged durable, the last the state
//! of every write issued (what reads must return while the cache runs).
//! Acknowledged-durable points (flush, durable writes, `Sync` mode, close,
//! drop) collapse every list to its last state. A crash takes an image of
//! the disk with unsynced writes dropped or torn, reopens on it and reads
//! every key: each must be in one of its allowed states, which becomes its
//! only state. Any other divergence, panic or failed open is a crash.
//!
//! Time is modelled exactly as in tests/model.rs. After a crash the wall
//! clock is moved up to the model's engine time if it is behind (the
//! machine's clock was set right after the reboot), so the engine time
//! after reopen is known exactly.
//!
//! With `log` set the cache also has a write-ahead log, on a second
//! `PowerLossDisk` (`CacheBuilder::wal_backend`); a crash then takes an
//! image of both disks.
//!
//! `cache.validate()` runs after every operation.
#![no_main]

use arbitrary::Arbitrary;
use embercache::testing::PowerLossDisk;
use embercache::{Cache, Durability, ManualClock, NamespacePolicy, Ttl, WriteOptions};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use std::time::Duration;

const T0: u64 = 1_750_000_000_000;
/// "a": defaults; "b": raw and never hot; "c": default TTL 30 s, max 60 s.
const NAMESPACES: [&str; 3] = ["a", "b", "c"];
const KEYS: [&[u8]; 6] = [b"", b"a", b"a0", b"ab", b"b", b"b1"];
const PREFIXES: [&[u8]; 4] = [b"", b"a", b"b", b"z"];
const TTLS: [Option<Duration>; 6] = [
    None,
    Some(Duration::from_millis(1)),
    Some(Duration::from_millis(500)),
    Some(Duration::from_secs(90)),
    Some(Duration::from_secs(3600)),
    Some(Duration::MAX),
];
const ADVANCES: [u64; 5] = [1, 499, 500, 5000, 61_000];
const JUMPS: [i64; 4] = [-3_600_000, -10_000, 2_000, 86_400_000];

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

#[derive(Arbitrary, Debug)]
struct Val {
    len: u16,
    seed: u8,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Set {
        ns: u8,
        key: u8,
        val: Val,
        ttl: u8,
        durable: bool,
    },
    Get {
        ns: u8,
        key: u8,
    },
    Ttl {
        ns: u8,
        key: u8,
    },
    Delete {
        ns: u8,
        key: u8,
        durable: bool,
    },
    GetMany {
        ns: u8,
        keys: Vec<u8>,
    },
    SetMany {
        ns: u8,
        items: Vec<(u8, Val)>,
        ttl: u8,
        durable: bool,
    },
    DeleteMany {
        ns: u8,
        keys: Vec<u8>,
        durable: bool,
    },
    Scan {
        ns: u8,
        prefix: u8,
    },
    Advance(u8),
    JumpWall(u8),
    Invalidate(u8),
    Flush,
    Maintain,
    Reopen,
    DropReopen,
    Crash(u64),
}

#[derive(Arbitrary, Debug)]
struct Input {
    sync: bool,
    log: bool,
    ops: Vec<Op>,
}

/// A value unique to the write that made it (its first bytes are the tag).
fn make_value(v: &Val, tag: u64) -> Vec<u8> {
    let len = usize::from(v.len % 3000);
    let mut out: Vec<u8> = if v.seed % 2 == 0 {
        (0..len)
            .map(|i| v.seed.wrapping_add((i / 16) as u8))
            .collect()
    } else {
        let mut x = (u64::from(v.seed) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ tag;
        (0..len)
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

type Key = (usize, Vec<u8>);

struct Harness {
    disk: PowerLossDisk,
    /// The write-ahead log's disk, when the input has one.
    wal: Option<PowerLossDisk>,
    clock: ManualClock,
    durability: Durability,
    cache: Option<Cache>,
    /// Allowed states per key, oldest (durable) first; never empty.
    states: BTreeMap<Key, Vec<Option<Entry>>>,
    now: u64,
    wall: u64,
}

fn open(
    disk: &PowerLossDisk,
    wal: Option<&PowerLossDisk>,
    clock: &ManualClock,
    durability: Durability,
) -> Cache {
    let mut b = Cache::builder().storage_backend(disk.factory());
    if let Some(w) = wal {
        b = b.wal_backend(w.factory());
    }
    b = b
        .clock(clock.clone())
        .shards(1)
        .hot_capacity(16 << 10)
        .durability(durability)
        .strict(true);
    for ns in NAMESPACES {
        b = b.namespace(ns, policy(ns));
    }
    b.open().expect("open")
}

impl Harness {
    fn cache(&self) -> &Cache {
        self.cache.as_ref().expect("open")
    }

    fn current(&self, k: &Key) -> Option<&Entry> {
        self.states
            .get(k)
            .and_then(|s| s.last().expect("never empty").as_ref())
    }

    fn live(&self, ns: usize, key: &[u8]) -> Option<&Entry> {
        self.current(&(ns, key.to_vec()))
            .filter(|e| e.expires_at > self.now)
    }

    /// A new state issued for `k` (not yet durable).
    fn issue(&mut self, k: Key, e: Option<Entry>) {
        self.states.entry(k).or_insert_with(|| vec![None]).push(e);
    }

    /// Everything issued so far is acknowledged durable.
    fn durable_point(&mut self) {
        for s in self.states.values_mut() {
            let last = s.pop().expect("never empty");
            s.clear();
            s.push(last);
        }
    }

    fn after_write(&mut self, durable: bool) {
        if durable || self.durability == Durability::Sync {
            self.durable_point();
        }
    }

    fn check_get(&self, ns: usize, key: &[u8], got: Option<&[u8]>, what: &str) {
        let want = self.live(ns, key).map(|e| e.value.as_slice());
        assert_eq!(
            got,
            want,
            "{what} {}/{key:?} at {}",
            NAMESPACES[ns],
            self.now - T0
        );
    }

    fn observe_clock(&self) {
        self.cache().get("a", b"clock-probe").expect("get");
    }

    fn reopen(&mut self) {
        self.cache = Some(open(
            &self.disk,
            self.wal.as_ref(),
            &self.clock,
            self.durability,
        ));
    }

    fn apply(&mut self, i: u64, op: &Op) {
        let ns_of = |n: &u8| usize::from(*n) % NAMESPACES.len();
        let key_of = |k: &u8| KEYS[usize::from(*k) % KEYS.len()];
        let opts = |ttl: &u8, durable: bool| {
            let mut o = WriteOptions::default();
            o.ttl = TTLS[usize::from(*ttl) % TTLS.len()];
            o.durable = durable;
            o
        };
        match op {
            Op::Set {
                ns,
                key,
                val,
                ttl,
                durable,
            } => {
                let (n, k) = (ns_of(ns), key_of(key));
                let v = make_value(val, i);
                let o = opts(ttl, *durable);
                self.cache()
                    .set_with(NAMESPACES[n], k, v.clone(), o)
                    .expect("set");
                let e = Entry {
                    value: v,
                    expires_at: expiry(NAMESPACES[n], o.ttl, self.now),
                };
                self.issue((n, k.to_vec()), Some(e));
                self.after_write(*durable);
            }
            Op::Get { ns, key } => {
                let (n, k) = (ns_of(ns), key_of(key));
                let got = self.cache().get(NAMESPACES[n], k).expect("get");
                self.check_get(n, k, got.as_deref(), "get");
            }
            Op::Ttl { ns, key } => {
                let (n, k) = (ns_of(ns), key_of(key));
                let got = self.cache().ttl(NAMESPACES[n], k).expect("ttl");
                let want = self.live(n, k).map(|e| match e.expires_at {
                    u64::MAX => Ttl::Never,
                    t => Ttl::Remaining(Duration::from_millis(t - self.now)),
                });
                assert_eq!(got, want, "ttl {}/{k:?}", NAMESPACES[n]);
            }
            Op::Delete { ns, key, durable } => {
                let (n, k) = (ns_of(ns), key_of(key));
                if *durable {
                    self.cache()
                        .delete_durable(NAMESPACES[n], k)
                        .expect("delete");
                } else {
                    self.cache().delete(NAMESPACES[n], k).expect("delete");
                }
                self.issue((n, k.to_vec()), None);
                self.after_write(*durable);
            }
            Op::GetMany { ns, keys } => {
                let n = ns_of(ns);
                let ks: Vec<&[u8]> = keys.iter().take(8).map(key_of).collect();
                let got = self.cache().get_many(NAMESPACES[n], &ks).expect("get_many");
                assert_eq!(got.len(), ks.len());
                for (k, g) in ks.iter().zip(&got) {
                    self.check_get(n, k, g.as_deref(), "get_many");
                }
            }
            Op::SetMany {
                ns,
                items,
                ttl,
                durable,
            } => {
                let n = ns_of(ns);
                let o = opts(ttl, *durable);
                let vals: Vec<(Vec<u8>, Vec<u8>)> = items
                    .iter()
                    .take(8)
                    .enumerate()
                    .map(|(j, (k, v))| (key_of(k).to_vec(), make_value(v, i * 100 + j as u64)))
                    .collect();
                self.cache()
                    .set_many(NAMESPACES[n], vals.clone(), o)
                    .expect("set_many");
                let exp = expiry(NAMESPACES[n], o.ttl, self.now);
                for (k, v) in vals {
                    self.issue(
                        (n, k),
                        Some(Entry {
                            value: v,
                            expires_at: exp,
                        }),
                    );
                }
                self.after_write(*durable);
            }
            Op::DeleteMany { ns, keys, durable } => {
                let n = ns_of(ns);
                let ks: Vec<&[u8]> = keys.iter().take(8).map(key_of).collect();
                self.cache()
                    .delete_many(NAMESPACES[n], &ks, *durable)
                    .expect("delete_many");
                for k in ks {
                    self.issue((n, k.to_vec()), None);
                }
                self.after_write(*durable);
            }
            Op::Scan { ns, prefix } => {
                let n = ns_of(ns);
                let p = PREFIXES[usize::from(*prefix) % PREFIXES.len()];
                let got: Vec<(Vec<u8>, Vec<u8>)> = self
                    .cache()
                    .scan(NAMESPACES[n], p)
                    .expect("scan")
                    .into_iter()
                    .map(|(k, v)| (k, v.to_vec()))
                    .collect();
                let want: Vec<(Vec<u8>, Vec<u8>)> = self
                    .states
                    .keys()
                    .filter(|(m, k)| *m == n && k.starts_with(p))
                    .filter_map(|k| self.live(k.0, &k.1).map(|e| (k.1.clone(), e.value.clone())))
                    .collect();
                assert_eq!(got, want, "scan {}/{p:?}", NAMESPACES[n]);
            }
            Op::Advance(a) => {
                let ms = ADVANCES[usize::from(*a) % ADVANCES.len()];
                self.clock.advance(Duration::from_millis(ms));
                self.wall += ms;
                self.now = (self.now + ms).max(self.wall);
                self.observe_clock();
            }
            Op::JumpWall(j) => {
                let d = JUMPS[usize::from(*j) % JUMPS.len()];
                self.clock.jump_wall(d);
                self.wall = self.wall.saturating_add_signed(d);
                self.now = self.now.max(self.wall);
                self.observe_clock();
            }
            Op::Invalidate(ns) => {
                let n = ns_of(ns);
                self.cache()
                    .invalidate_namespace(NAMESPACES[n])
                    .expect("invalidate");
                let keys: Vec<Key> = self.states.keys().filter(|k| k.0 == n).cloned().collect();
                for k in keys {
                    self.issue(k, None);
                }
                self.after_write(false);
            }
            Op::Flush => {
                self.cache().flush().expect("flush");
                self.durable_point();
            }
            Op::Maintain => {
                self.cache().run_maintenance().expect("maintenance");
                let live = self
                    .states
                    .keys()
                    .filter(|k| self.live(k.0, &k.1).is_some())
                    .count() as u64;
                assert_eq!(
                    self.cache().stats().disk_records,
                    live,
                    "records after maintenance"
                );
            }
            Op::Reopen => {
                self.cache.take().expect("open").close().expect("close");
                self.durable_point();
                self.reopen();
            }
            Op::DropReopen => {
                drop(self.cache.take());
                self.durable_point();
                self.reopen();
            }
            Op::Crash(seed) => self.crash(*seed),
        }
        self.cache().validate();
    }

    fn crash(&mut self, seed: u64) {
        let image = self.disk.crash_image(seed);
        let wal_image = self.wal.as_ref().map(|w| w.crash_image(seed ^ 0x5EED));
        // What the old process does after the cut reaches the old disks only.
        drop(self.cache.take());
        self.disk = PowerLossDisk::from_image(image.bytes);
        self.wal = wal_image.map(|i| PowerLossDisk::from_image(i.bytes));
        if self.wall < self.now {
            self.clock.jump_wall((self.now - self.wall) as i64);
            self.wall = self.now;
        }
        self.reopen();
        self.observe_clock();
        let keys: Vec<Key> = self.states.keys().cloned().collect();
        for k in keys {
            let got = self
                .cache()
                .get(NAMESPACES[k.0], &k.1)
                .expect("get after crash");
            let now = self.now;
            let allowed = &self.states[&k];
            let Some(state) = allowed
                .iter()
                .find(|s| {
                    s.as_ref()
                        .filter(|e| e.expires_at > now)
                        .map(|e| e.value.as_slice())
                        == got.as_deref()
                })
                .cloned()
            else {
                panic!(
                    "after crash ({:?}, {} of {} unsynced ops applied, {} torn) {}/{:?} = {:?}, allowed {:?}",
                    image.kind,
                    image.applied,
                    image.unsynced,
                    image.torn,
                    NAMESPACES[k.0],
                    k.1,
                    got.map(|g| g.len()),
                    allowed
                        .iter()
                        .map(|s| s.as_ref().map(|e| (e.value.len(), e.expires_at)))
                        .collect::<Vec<_>>()
                );
            };
            self.states.insert(k, vec![state]);
        }
    }
}

fuzz_target!(|input: Input| {
    let clock = ManualClock::new(T0);
    let durability = if input.sync {
        Durability::Sync
    } else {
        // Long enough that nothing commits unless something waits for it.
        Durability::Buffered {
            max_delay: Duration::from_secs(60),
        }
    };
    let disk = PowerLossDisk::new();
    let wal = input.log.then(PowerLossDisk::new);
    let cache = open(&disk, wal.as_ref(), &clock, durability);
    let mut h = Harness {
        disk,
        wal,
        clock,
        durability,
        cache: Some(cache),
        states: BTreeMap::new(),
        now: T0,
        wall: T0,
    };
    for (i, op) in input.ops.iter().take(64).enumerate() {
        h.apply(i as u64 + 1, op);
    }
    // Every key, then once more after a clean restart.
    for _ in 0..2 {
        let keys: Vec<Key> = h.states.keys().cloned().collect();
        for k in keys {
            let got = h.cache().get(NAMESPACES[k.0], &k.1).expect("final get");
            h.check_get(k.0, &k.1, got.as_deref(), "final get");
        }
        h.cache.take().expect("open").close().expect("close");
        h.durable_point();
        h.reopen();
    }
    h.cache.take().expect("open").close().expect("close");
});
