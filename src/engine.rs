//! The shared engine state and the read and write paths.
//!
//! `Cache` (src/cache.rs) is a thin public handle over `Arc<Shared>`; the
//! writer thread and the warm-up thread hold the same `Arc`.
//!
//! Read path: hot tier (shared lock) → pending writes → redb. A value read
//! from redb fills the hot tier unless a commit happened since the read
//! started or a newer write of the key is pending (so a fill can never put
//! back a value older than one already acknowledged).
//!
//! Write path: validate → compress (no lock held) → under the key's pending
//! shard lock: assign the version, finish the record, enqueue it for the
//! writer, record it as pending, update the hot tier. Taking the version
//! and enqueueing under one lock makes queue order equal version order per
//! key, so the writer applies each key's writes in order.

use crate::clock::EngineTime;
use crate::config::{Durability, Limits};
use crate::error::{ReadError, WriteError, storage};
use crate::hot::{Entry, Evicted, HotTier, Insert};
use crate::namespace::{Namespace, Namespaces};
use crate::stats::{EngineCounters, Striped, add};
use crate::store::open::Source;
use crate::store::pending::{Pending, PendingKind, PendingOp};
use crate::store::readers::{EntriesTable, Readers};
use crate::store::record::{self, Dictionary, Encoding, Header, Prepared};
use crate::store::tables::{ENTRIES, LOADER_META, META, META_HOT_SNAPSHOT, dict_key};
use crate::store::train;
use crate::store::walk::KeyWalk;
use crate::store::writer::Op;
use bytes::Bytes;
use crossbeam_channel::{Sender, TrySendError};
use parking_lot::{Mutex, RwLock};
use prometheus_client::metrics::histogram::Histogram;
use redb::{Database, ReadableDatabase};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A warm-up worker's scratch space, kept from one chunk to the next.
#[derive(Default)]
struct WarmBatch {
    /// The chunk's decoded entries with their key hashes (taken as filled).
    entries: Vec<Option<(u64, Entry)>>,
    /// (hot shard, index into `entries`), sorted: the entries by shard.
    order: Vec<(u32, u32)>,
}

/// A redb error on the read path.
fn read_err<E: Into<redb::Error>>(e: E) -> ReadError {
    ReadError::Storage(storage(e))
}

/// Prepares a decoder dictionary; `None` when it cannot be loaded.
pub(crate) fn load_decoder(bytes: &[u8]) -> Option<Arc<Dictionary>> {
    failpoint!("dict::load", |_| None);
    Dictionary::new(bytes).map(Arc::new)
}

/// A value found by a lookup, with its absolute expiry (`u64::MAX` = never).
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub value: Bytes,
    pub expires_at: u64,
}

/// When a read happened: the commit sequence number taken before it
/// began (for the fill rule) and the engine time used for expiry, read
/// from the clock only when first needed (a hit on an entry that never
/// expires needs none).
struct ReadPoint<'a> {
    seq: u64,
    now: std::cell::OnceCell<u64>,
    time: &'a EngineTime,
    /// Entries expired up to this long ago are returned (as stale): the
    /// namespace's retention when stale entries are wanted, else 0.
    retention: u64,
}

impl<'a> ReadPoint<'a> {
    fn now(&self) -> u64 {
        *self.now.get_or_init(|| self.time.now_ms())
    }

    /// Whether an entry expiring at `expires_at` is returned, and whether
    /// it is fresh (`Some(true)`) or stale (`Some(false)`).
    fn visible(&self, expires_at: u64) -> Option<bool> {
        if expires_at == u64::MAX {
            return Some(true);
        }
        if self.now.get().is_none() && self.time.surely_before(expires_at) {
            return Some(true);
        }
        let now = self.now();
        if expires_at > now {
            Some(true)
        } else if expires_at > now.saturating_sub(self.retention) {
            Some(false)
        } else {
            None
        }
    }
}

/// Outcome of the in-memory part of a lookup.
enum Fast {
    Done(Option<Found>),
    NeedWarm,
}

/// Stripes of [`Shared::delete_marks`]: a fill is dropped only for a
/// delete of a key of its stripe (8 KiB of counters).
pub(crate) const DELETE_STRIPES: usize = 1024;

pub(crate) struct Shared {
    /// This engine, for the threads it starts itself (dictionary training).
    pub me: std::sync::Weak<Shared>,
    /// Namespaces waiting for their first dictionary and the one thread
    /// that trains them (see [`Shared::dictionary_for`]), joined by close.
    pub trainers: Mutex<Trainers>,
    /// The open database; `None` while the writer reopens it after an I/O
    /// error (redb refuses every operation after one until reopened).
    pub db: RwLock<Option<Arc<Database>>>,
    pub source: Source,
    pub hot: HotTier,
    pub hot_capacity: usize,
    pub pending: Pending,
    pub ns: Namespaces,
    pub time: EngineTime,
    pub limits: Limits,
    pub durability: Durability,
    /// The next per-key version to hand out (global, so unique per write).
    pub next_version: AtomicU64,
    /// Bumped after every commit; see the fill rule in the module docs.
    pub commit_seq: AtomicU64,
    /// Counters of deletes, [`DELETE_STRIPES`] of them, a key's chosen by
    /// its hash: bumped when a delete of the key is committed (before its
    /// pending entry goes) and when Redis's acknowledgement of it is about
    /// to remove its outbox row. A fill from Redis checks that its key's
    /// did not move since before it asked (see [`Shared::fill_remote`]).
    pub delete_marks: Box<[AtomicU64]>,
    /// Read transactions kept between warm gets (see `store::readers`).
    pub readers: Readers,
    pub counters: EngineCounters,
    pub commit_latency: Histogram,
    pub last_error: Mutex<Option<String>>,
    pub moved_aside: Option<String>,
    pub file: Option<PathBuf>,
    /// Set when redb panicked on the database (see [`Shared::damaged`]).
    pub damage_found: AtomicBool,
    pub warm_capacity: u64,
    /// The longest stale-retention window over all policies, in ms: the
    /// sweeper keeps expired records this long.
    pub max_retention_ms: u64,
    /// Whether writes are also recorded in the mirror outbox.
    pub outbox: bool,
    pub decoders: RwLock<HashMap<u32, Arc<Dictionary>>>,
    pub next_dict_id: AtomicU32,
    pub tx: Sender<Op>,
    pub closed: AtomicBool,
    /// Held shared by every enqueue (with its `closed` check) and
    /// exclusively by `close` to set `closed`: each write is either queued
    /// ahead of the Close op or refused, never accepted and then dropped.
    pub close_gate: RwLock<()>,
    /// The loading layer's state (src/load), created on first use.
    pub load: std::sync::OnceLock<Arc<crate::load::LoadState>>,
    /// Consulted after a hot and warm miss (the Redis mirror's read path);
    /// set once when the mirror starts. See "mirror hooks" below.
    pub read_miss: std::sync::OnceLock<Arc<dyn ReadMiss>>,
}

/// See [`Shared::trainers`].
#[derive(Default)]
pub(crate) struct Trainers {
    queue: std::collections::VecDeque<Arc<str>>,
    /// A thread works through `queue`; it clears this as it ends.
    running: bool,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

/// A second-level lookup after a local miss (the Redis mirror). It fills
/// the local tiers itself, through [`Shared::fill_remote`].
pub(crate) trait ReadMiss: Send + Sync {
    /// Looks `keys` up; one answer per key, in order.
    fn fetch(&self, sh: &Shared, ns: &Arc<Namespace>, keys: &[&[u8]]) -> Vec<Option<Found>>;
}

impl Shared {
    pub(crate) fn max_delay(&self) -> Duration {
        match self.durability {
            Durability::Buffered { max_delay } => max_delay,
            Durability::Sync => Duration::ZERO,
        }
    }

    fn check_open_w(&self) -> Result<(), WriteError> {
        if self.closed.load(Ordering::Acquire) {
            Err(WriteError::Closed)
        } else {
            Ok(())
        }
    }

    /// The namespace of a read: borrowed (no lock, no `Arc` clone) for all
    /// but a cache with very many namespaces.
    fn namespace_r(&self, name: &str) -> Result<Cow<'_, Arc<Namespace>>, ReadError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ReadError::Closed);
        }
        self.ns.get_ref(name).map_err(|e| match e {
            WriteError::InvalidNamespace { name, reason } => {
                ReadError::InvalidNamespace { name, reason }
            }
            _ => ReadError::Closed,
        })
    }

    /// A read transaction on the database.
    pub(crate) fn begin_read(&self) -> Result<redb::ReadTransaction, Arc<redb::Error>> {
        self.db()?.begin_read().map_err(storage)
    }

    fn read_txn(&self) -> Result<redb::ReadTransaction, ReadError> {
        self.begin_read().map_err(ReadError::Storage)
    }

    /// `entries` as of the last commit whose pending entries may be gone:
    /// the calling thread's kept reader when no commit has happened since
    /// it was opened, else a new one, kept for the next get (see
    /// `store::readers`). Call it after looking in pending: `commit_seq` is
    /// read here, and the writer bumps it before it drops a committed
    /// write from pending, so a write no longer pending is in the reader.
    /// (`ReadPoint::seq`, read before the hot tier, is older than that.)
    fn entries(&self) -> Result<Arc<EntriesTable>, ReadError> {
        let seq = self.commit_seq.load(Ordering::SeqCst);
        if let Some(t) = self.readers.get(seq) {
            return Ok(t);
        }
        let db = self.db().map_err(ReadError::Storage)?;
        let r = db
            .begin_read()
            .map_err(|e| ReadError::Storage(storage(e)))?;
        let t = Arc::new(r.open_table(ENTRIES).map_err(read_err)?);
        // Kept only while `db` is still the open database: close and the
        // writer's reopen take it out of `self.db` (under the write lock)
        // before they drop the kept readers, so no reader of a closed
        // database is kept past them.
        let open = self.db.read();
        if open.as_ref().is_some_and(|o| Arc::ptr_eq(o, &db)) {
            self.readers.put(seq, t.clone());
        }
        Ok(t)
    }

    /// Runs `f`, a read of redb. redb panics on some damaged pages (an
    /// `unreachable!` on a page type it does not know); such a panic
    /// becomes a typed storage error here, and the database is marked
    /// damaged, to be moved aside at the next open (see [`Self::damaged`]).
    pub(crate) fn guard<T>(
        &self,
        what: &str,
        f: impl FnOnce() -> Result<T, ReadError>,
    ) -> Result<T, ReadError> {
        catch_unwind(AssertUnwindSafe(f))
            .unwrap_or_else(|p| Err(ReadError::Storage(self.damaged_or_resume(what, p))))
    }

    /// [`Self::guard`] for reads that answer `None` when they cannot.
    pub(crate) fn guard_opt<T>(&self, what: &str, f: impl FnOnce() -> Option<T>) -> Option<T> {
        catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
            self.damaged_or_resume(what, p);
            None
        })
    }

    /// After a panic caught around redb: when the tables still read
    /// through, the panic was not the file's (a bug, a fault, a caller's
    /// closure) and goes on unwinding; otherwise the file is damaged.
    pub(crate) fn damaged_or_resume(
        &self,
        what: &str,
        panic: Box<dyn std::any::Any + Send>,
    ) -> Arc<redb::Error> {
        let healthy = self
            .db()
            .map_or(true, |db| crate::store::tables::reads_through(&db));
        if healthy {
            std::panic::resume_unwind(panic);
        }
        self.damaged(what)
    }

    /// Records that redb panicked on the database during `what`: the file
    /// is damaged past what its open-time repair saw. Logged and marked
    /// once (a marker file beside it, so the next open moves it aside, or
    /// refuses it when strict); the error says what to do.
    pub(crate) fn damaged(&self, what: &str) -> Arc<redb::Error> {
        let reason = format!(
            "the database file is damaged (redb panicked during {what}); \
             reopen the cache to move the file aside and start empty"
        );
        if !self.damage_found.swap(true, Ordering::AcqRel) {
            tracing::error!(%what, "redb panicked: the database file is damaged");
            if let Some(file) = &self.file {
                crate::store::open::mark_damaged(file, &reason);
            }
        }
        *self.last_error.lock() = Some(reason.clone());
        Arc::new(redb::Error::Corrupted(reason))
    }

    /// The database, or an error while it is being reopened.
    pub(crate) fn db(&self) -> Result<Arc<Database>, Arc<redb::Error>> {
        self.db.read().clone().ok_or_else(|| {
            Arc::new(redb::Error::Io(std::io::Error::other(
                "warm tier unavailable: reopening the database after an I/O error",
            )))
        })
    }

    /// The decoder of dictionary `id`, loaded from meta on first use (and
    /// again after a load failed, so a passing fault heals by itself).
    pub(crate) fn decoder(&self, id: u32) -> Option<Arc<Dictionary>> {
        if let Some(d) = self.decoders.read().get(&id) {
            return Some(d.clone());
        }
        let bytes = self.guard_opt("dictionary load", || {
            let r = self.begin_read().ok()?;
            let t = r.open_table(META).ok()?;
            let v = t.get(dict_key(id).as_str()).ok()??;
            let (_ns, bytes): (String, Vec<u8>) = postcard::from_bytes(v.value()).ok()?;
            Some(bytes)
        })?;
        let d = load_decoder(&bytes)?;
        self.decoders.write().insert(id, d.clone());
        Some(d)
    }

    /// `rec` as another host can read it, for the mirror: a record
    /// compressed with one of this host's dictionaries (written before the
    /// outbox was on, or replayed from the log) is decoded and encoded
    /// again without one, with the same header fields; any other record is
    /// sent as it is. `h` is its header, verified by the caller. An error
    /// if it does not decode.
    #[cfg(any(feature = "redis", test))]
    pub(crate) fn portable<'a>(
        &self,
        ns: &str,
        rec: &'a [u8],
        h: &Header,
    ) -> Result<Cow<'a, [u8]>, ReadError> {
        if h.compression != record::Compression::ZstdDict {
            return Ok(Cow::Borrowed(rec));
        }
        let (h, value) = self.decode(ns, rec)?;
        // The namespace's level (raw if it compresses no more).
        let level = match self.ns.get_ref(ns) {
            Ok(n) => n.policy.compression_level,
            Err(_) => Some(3),
        };
        let enc = Encoding {
            level,
            threshold: self.limits.compression_threshold,
            dict: None,
        };
        Ok(Cow::Owned(record::encode(
            &value,
            h.expires_at,
            h.version,
            h.epoch,
            &enc,
        )))
    }

    pub(crate) fn decode(&self, ns: &str, rec: &[u8]) -> Result<(Header, Vec<u8>), ReadError> {
        record::decode(rec, self.limits.max_value_len, &|id| self.decoder(id)).map_err(|source| {
            add(&self.counters.corrupt_reads, 1);
            ReadError::Corrupt {
                namespace: ns.to_string(),
                source,
            }
        })
    }

    /// Absolute expiry for a write: the caller's TTL, else the namespace
    /// default, capped by the namespace maximum. `None` = never.
    fn expiry_for(
        &self,
        ns: &Namespace,
        ttl: Option<Duration>,
        now: u64,
    ) -> Result<u64, WriteError> {
        let ttl = ttl.or(ns.policy.default_ttl);
        if ttl == Some(Duration::ZERO) {
            return Err(WriteError::InvalidTtl(
                "a TTL of zero would expire before it is stored; delete instead",
            ));
        }
        let ttl = match (ttl, ns.policy.max_ttl) {
            (Some(t), Some(m)) => Some(t.min(m)),
            (None, Some(m)) => Some(m),
            (t, None) => t,
        };
        Ok(match ttl {
            None => u64::MAX,
            Some(t) => {
                // Round up from nanoseconds so a 1.5 ms TTL does not become
                // 1 ms, nor a sub-microsecond one 0 ms (born expired);
                // saturate so a huge TTL means "never" rather than wrapping.
                let ms = u64::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
                now.saturating_add(ms)
            }
        })
    }

    fn is_dead(&self, now: u64) -> impl Fn(&Entry) -> bool + '_ {
        move |e: &Entry| self.ns.is_dead(e.ns, e.expires_at, e.epoch, now)
    }

    fn hot_insert(&self, hash: u64, entry: Entry, now: u64) -> Insert {
        let dead = self.is_dead(now);
        self.hot.insert(hash, entry, &dead, &mut |e, why| {
            self.count_eviction(e, why, now)
        })
    }

    /// Counts an entry the hot tier evicted to make room.
    fn count_eviction(&self, e: &Entry, why: Evicted, now: u64) {
        if let Some(ns) = self.ns.by_id(e.ns) {
            let c = match why {
                Evicted::Capacity => &ns.counters.hot_evictions,
                Evicted::Dead if e.expires_at <= now => &ns.counters.expirations,
                Evicted::Dead => &ns.counters.hot_evictions,
            };
            add(c, 1);
        }
    }

    // ----- writes -------------------------------------------------------

    fn check_sizes(&self, key: &[u8], value_len: usize) -> Result<(), WriteError> {
        if key.len() > self.limits.max_key_len {
            return Err(WriteError::KeyTooLarge {
                len: key.len(),
                max: self.limits.max_key_len,
            });
        }
        if value_len > self.limits.max_value_len {
            return Err(WriteError::ValueTooLarge {
                len: value_len,
                max: self.limits.max_value_len,
            });
        }
        Ok(())
    }

    /// Whether a write should wait for its commit: when asked to, or always
    /// in `Sync` mode.
    pub(crate) fn waits(&self, durable: bool) -> bool {
        durable || self.durability == Durability::Sync
    }

    /// Enqueues `make(version, epoch)` under the key's pending lock, then
    /// runs `apply` (pending + hot update) under the same lock. Retries with
    /// a fresh version while the queue is full, up to `queue_wait`.
    ///
    /// With `only_in_epoch`, nothing is written (and `Ok(false)` returned)
    /// when the namespace's epoch is no longer that one: a value computed
    /// before an invalidation must not land after it.
    fn submit(
        &self,
        hash: u64,
        ns: &Namespace,
        only_in_epoch: Option<u64>,
        mut make: impl FnMut(u64, u64) -> Op,
        mut apply: impl FnMut(&mut crate::store::pending::PendingShard, u64, u64),
    ) -> Result<bool, WriteError> {
        let start = Instant::now();
        loop {
            let gate = self.close_gate.read();
            self.check_open_w()?;
            let mut p = self.pending.lock(hash);
            let epoch = ns.epoch();
            if only_in_epoch.is_some_and(|e| e != epoch) {
                return Ok(false);
            }
            let version = self.next_version.fetch_add(1, Ordering::SeqCst);
            match self.tx.try_send(make(version, epoch)) {
                Ok(()) => {
                    apply(&mut p, version, epoch);
                    return Ok(true);
                }
                Err(TrySendError::Full(_)) => {
                    drop(p);
                    drop(gate);
                    if start.elapsed() >= self.limits.queue_wait {
                        return Err(WriteError::QueueFull {
                            waited: start.elapsed(),
                        });
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(TrySendError::Disconnected(_)) => return Err(WriteError::Closed),
            }
        }
    }

    fn wait_for(rx: Option<crate::store::reply::Reply>) -> Result<(), WriteError> {
        match rx {
            None => Ok(()),
            Some(rx) => rx.recv(),
        }
    }

    pub(crate) fn set(
        &self,
        ns_name: &str,
        key: &[u8],
        value: Bytes,
        ttl: Option<Duration>,
        wait: bool,
    ) -> Result<(), WriteError> {
        self.set_in_epoch(ns_name, key, value, ttl, wait, None)
            .map(drop)
    }

    /// `set`, skipped (`Ok(false)`) when `only_in_epoch` is given and the
    /// namespace has moved past it since (see `submit`).
    pub(crate) fn set_in_epoch(
        &self,
        ns_name: &str,
        key: &[u8],
        value: Bytes,
        ttl: Option<Duration>,
        wait: bool,
        only_in_epoch: Option<u64>,
    ) -> Result<bool, WriteError> {
        self.check_open_w()?;
        self.check_sizes(key, value.len())?;
        let ns = self.ns.get(ns_name)?;
        let now = self.time.now_ms();
        let expires_at = self.expiry_for(&ns, ttl, now)?;
        let hash = self.hot.hash(ns.id, key);
        let dict = self.dictionary_for(&ns, value.len());
        let prepared = Prepared::new(
            &value,
            &Encoding {
                level: ns.policy.compression_level,
                threshold: self.limits.compression_threshold,
                dict: dict.as_ref().map(|(id, d)| (*id, &**d)),
            },
        );
        let (done, rx) = self.done_pair(wait);
        let stored = self.submit(
            hash,
            &ns,
            only_in_epoch,
            |version, epoch| Op::Put {
                ns: ns.clone(),
                hash,
                key: key.into(),
                record: prepared.finish(expires_at, version, epoch),
                version,
                expires_at,
                mirror: true,
                done: done.clone(),
            },
            |p, version, epoch| {
                p.put(PendingOp {
                    hash,
                    ns: ns.id,
                    key: key.into(),
                    version,
                    kind: PendingKind::Set {
                        value: value.clone(),
                        expires_at,
                        epoch,
                    },
                });
                if ns.policy.hot_admission {
                    let e = Entry::new(ns.id, key, value.clone(), expires_at, epoch, version);
                    self.hot_insert(hash, e, now);
                } else {
                    self.hot.remove(hash, ns.id, key, version);
                }
            },
        )?;
        drop(done);
        if !stored {
            return Ok(false);
        }
        let c = &ns.counters;
        add(&c.sets, 1);
        add(&c.raw_bytes, value.len() as u64);
        add(&c.stored_bytes, prepared.payload_len() as u64);
        Self::wait_for(rx).map(|()| true)
    }

    pub(crate) fn delete(&self, ns_name: &str, key: &[u8], wait: bool) -> Result<(), WriteError> {
        self.check_open_w()?;
        self.check_sizes(key, 0)?;
        let ns = self.ns.get(ns_name)?;
        let hash = self.hot.hash(ns.id, key);
        let (done, rx) = self.done_pair(wait);
        self.submit(
            hash,
            &ns,
            None,
            |version, _| Op::Delete {
                ns: ns.clone(),
                hash,
                key: key.into(),
                version,
                mirror: true,
                done: done.clone(),
            },
            |p, version, _| self.pend_delete(p, hash, &ns, key, version),
        )?;
        add(&ns.counters.deletes, 1);
        drop(done);
        Self::wait_for(rx)
    }

    /// A delete of `version` whose op was just queued, under the key's
    /// pending lock: its pending entry hides the key from reads until the
    /// commit, and the hot copy goes (a local delete's and a remote one's).
    fn pend_delete(
        &self,
        p: &mut crate::store::pending::PendingShard,
        hash: u64,
        ns: &Namespace,
        key: &[u8],
        version: u64,
    ) {
        p.put(PendingOp {
            hash,
            ns: ns.id,
            key: key.into(),
            version,
            kind: PendingKind::Delete,
        });
        self.hot.remove(hash, ns.id, key, version);
    }

    fn done_pair(
        &self,
        wait: bool,
    ) -> (
        Option<crate::store::writer::Done>,
        Option<crate::store::reply::Reply>,
    ) {
        if wait {
            let (tx, rx) = crate::store::reply::pair();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        }
    }

    /// Sends a control op, waiting up to `queue_wait` for room.
    pub(crate) fn send(&self, op: Op) -> Result<(), WriteError> {
        let _gate = self.close_gate.read();
        self.check_open_w()?;
        self.tx
            .send_timeout(op, self.limits.queue_wait)
            .map_err(|e| match e {
                crossbeam_channel::SendTimeoutError::Timeout(_) => WriteError::QueueFull {
                    waited: self.limits.queue_wait,
                },
                crossbeam_channel::SendTimeoutError::Disconnected(_) => WriteError::Closed,
            })
    }

    /// Sends an op built around a fresh reply channel and waits for it.
    pub(crate) fn request(
        &self,
        make: impl FnOnce(crate::store::writer::Done) -> Op,
    ) -> Result<(), WriteError> {
        let (tx, rx) = crate::store::reply::pair();
        self.send(make(tx))?;
        rx.recv()
    }

    pub(crate) fn invalidate_namespace(
        &self,
        ns_name: &str,
        durable: bool,
    ) -> Result<u64, WriteError> {
        self.check_open_w()?;
        let ns = self.ns.get(ns_name)?;
        let (done, rx) = self.done_pair(self.waits(durable));
        let epoch = {
            // Queue the bump, then make it visible: a write can carry the
            // new epoch only after the bump is ahead of it in the queue, so
            // the disk never holds a record of an epoch it does not know.
            let _serial = ns.invalidate.lock();
            let epoch = ns.epoch() + 1;
            self.send(Op::Epoch {
                ns: ns.clone(),
                epoch,
                done,
            })?;
            ns.epoch.store(epoch, Ordering::Release);
            epoch
        };
        add(&ns.counters.invalidations, 1);
        Self::wait_for(rx)?;
        Ok(epoch)
    }

    /// The value stored under `key` in the loader-state table, as of the
    /// last commit.
    pub(crate) fn loader_meta_get(&self, key: &str) -> Option<Vec<u8>> {
        self.guard_opt("loader state read", || {
            let r = self.begin_read().ok()?;
            let t = r.open_table(LOADER_META).ok()?;
            let v = t.get(key).ok()??;
            Some(v.value().to_vec())
        })
    }

    // ----- reads --------------------------------------------------------

    /// Hot tier, then pending writes. Counts hot hits and answers from
    /// pending; leaves redb to the caller.
    #[inline]
    fn lookup_fast(&self, ns: &Namespace, hash: u64, key: &[u8], at: &ReadPoint) -> Fast {
        let epoch = ns.epoch();
        let count = |fresh: Option<bool>, tier: &Striped| {
            // A stale answer is a miss as far as freshness goes.
            add(
                if fresh == Some(true) {
                    tier
                } else {
                    &ns.counters.misses
                },
                1,
            )
        };
        if let Some(hit) = self.hot.get(hash, ns.id, key) {
            // The hot copy, when present, is the newest write of the key
            // (writes update it, fills never put back an older one).
            let fresh = (hit.epoch == epoch)
                .then(|| at.visible(hit.expires_at))
                .flatten();
            count(fresh, &ns.counters.hot_hits);
            return Fast::Done(fresh.map(|_| Found {
                value: hit.value,
                expires_at: hit.expires_at,
            }));
        }
        let p = self.pending.lock(hash);
        if let Some(op) = p.get(hash, ns.id, key) {
            let (fresh, found) = match &op.kind {
                PendingKind::Set {
                    value,
                    expires_at,
                    epoch: e,
                } if *e == epoch => {
                    let fresh = at.visible(*expires_at);
                    let found = fresh.map(|_| Found {
                        value: value.clone(),
                        expires_at: *expires_at,
                    });
                    (fresh, found)
                }
                _ => (None, None),
            };
            count(fresh, &ns.counters.warm_hits);
            return Fast::Done(found);
        }
        Fast::NeedWarm
    }

    /// Decodes a record read from redb, checks it is live, fills the hot tier.
    fn accept_warm(
        &self,
        ns: &Namespace,
        hash: u64,
        key: &[u8],
        rec: Option<&[u8]>,
        at: &ReadPoint,
    ) -> Result<Option<Found>, ReadError> {
        let seq = at.seq;
        let count = |c: &Striped| add(c, 1);
        let Some(rec) = rec else {
            count(&ns.counters.misses);
            return Ok(None);
        };
        let (h, value) = self.decode(&ns.name, rec)?;
        let fresh = (h.epoch == ns.epoch())
            .then(|| at.visible(h.expires_at))
            .flatten();
        match fresh {
            Some(true) => count(&ns.counters.warm_hits),
            Some(false) => count(&ns.counters.misses),
            None => {
                count(&ns.counters.misses);
                return Ok(None);
            }
        }
        let value = Bytes::from(value);
        if ns.policy.hot_admission {
            let p = self.pending.lock(hash);
            if self.commit_seq.load(Ordering::SeqCst) == seq && p.get(hash, ns.id, key).is_none() {
                let e = Entry::new(ns.id, key, value.clone(), h.expires_at, h.epoch, h.version);
                self.hot_insert(hash, e, at.now());
            }
        }
        Ok(Some(Found {
            value,
            expires_at: h.expires_at,
        }))
    }

    /// The point a read of `ns` happens at. With `stale`, entries expired
    /// less than the namespace's retention ago are visible too.
    fn read_point(&self, ns: &Namespace, stale: bool) -> ReadPoint<'_> {
        ReadPoint {
            // Taken before anything is read (fill rule).
            seq: self.commit_seq.load(Ordering::SeqCst),
            now: std::cell::OnceCell::new(),
            time: &self.time,
            retention: if stale { ns.retention_ms } else { 0 },
        }
    }

    /// One key. With `stale`, an entry expired within the namespace's
    /// retention window is returned too (the caller compares `expires_at`
    /// with `now`).
    pub(crate) fn get(
        &self,
        ns_name: &str,
        key: &[u8],
        stale: bool,
    ) -> Result<Option<Found>, ReadError> {
        let ns = self.namespace_r(ns_name)?;
        let hash = self.hot.hash(ns.id, key);
        self.get_hashed(&ns, hash, key, stale)
    }

    /// The fresh value of one key (`Cache::get`). A hot hit on a fresh
    /// entry is served straight from the shard; anything else takes
    /// [`Self::get`]'s way, which looks at the hot tier again.
    #[inline]
    pub(crate) fn get_value(&self, ns_name: &str, key: &[u8]) -> Result<Option<Bytes>, ReadError> {
        let ns = self.namespace_r(ns_name)?;
        self.get_value_in(&ns, key)
    }

    /// [`Self::get_value`] in a namespace already looked up (a
    /// `NamespaceHandle`'s get).
    #[inline]
    pub(crate) fn get_value_in(
        &self,
        ns: &Arc<Namespace>,
        key: &[u8],
    ) -> Result<Option<Bytes>, ReadError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(ReadError::Closed);
        }
        let hash = self.hot.hash(ns.id, key);
        let epoch = ns.epoch();
        let time = &self.time;
        let fresh = |expires_at: u64, e: u64| {
            e == epoch && (expires_at == u64::MAX || time.surely_before(expires_at))
        };
        if let Some(value) = self.hot.get_served(hash, ns.id, key, fresh) {
            add(&ns.counters.hot_hits, 1);
            return Ok(Some(value));
        }
        Ok(self.get_hashed(ns, hash, key, false)?.map(|f| f.value))
    }

    /// [`Self::get`] past the namespace and hash. Out of line: the fast
    /// path of [`Self::get_value`] does not pay for its frame.
    #[inline(never)]
    fn get_hashed(
        &self,
        ns: &Arc<Namespace>,
        hash: u64,
        key: &[u8],
        stale: bool,
    ) -> Result<Option<Found>, ReadError> {
        let at = self.read_point(ns, stale);
        match self.lookup_fast(ns, hash, key, &at) {
            Fast::Done(Some(f)) => Ok(Some(f)),
            // The local copy is expired, of an older epoch or deleted: the
            // mirror may hold a newer write of another instance (the same
            // rule as `get_many`).
            Fast::Done(None) => Ok(self.get_remote(ns, key)),
            Fast::NeedWarm => self.get_warm(ns, hash, key, &at),
        }
    }

    /// Asks the mirror (when there is one) for a key the local tiers do not
    /// answer. Out of line: a hot hit never pays for it.
    #[inline(never)]
    fn get_remote(&self, ns: &Arc<Namespace>, key: &[u8]) -> Option<Found> {
        self.read_miss
            .get()?
            .fetch(self, ns, &[key])
            .pop()
            .flatten()
    }

    /// `get` past the hot tier and pending: redb, then the mirror. Kept
    /// out of line so a hot hit does not pay for its stack frame.
    #[inline(never)]
    fn get_warm(
        &self,
        ns: &Arc<Namespace>,
        hash: u64,
        key: &[u8],
        at: &ReadPoint,
    ) -> Result<Option<Found>, ReadError> {
        let found = self.guard("get", || {
            let t = self.entries()?;
            let rec = t.get((&*ns.name, key)).map_err(read_err)?;
            self.accept_warm(ns, hash, key, rec.as_ref().map(|g| g.value()), at)
        })?;
        if found.is_none() {
            return Ok(self.get_remote(ns, key));
        }
        Ok(found)
    }

    /// Looks up many keys; the redb misses share one reader.
    pub(crate) fn get_many(
        &self,
        ns_name: &str,
        keys: &[&[u8]],
    ) -> Result<Vec<Option<Found>>, ReadError> {
        let ns = self.namespace_r(ns_name)?;
        let at = self.read_point(&ns, false);
        let mut out = Vec::with_capacity(keys.len());
        let mut warm = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let hash = self.hot.hash(ns.id, key);
            match self.lookup_fast(&ns, hash, key, &at) {
                Fast::Done(r) => out.push(r),
                Fast::NeedWarm => {
                    out.push(None);
                    warm.push((i, hash));
                }
            }
        }
        if !warm.is_empty() {
            self.guard("get_many", || {
                let t = self.entries()?;
                for (i, hash) in warm {
                    let rec = t.get((&*ns.name, keys[i])).map_err(read_err)?;
                    out[i] =
                        self.accept_warm(&ns, hash, keys[i], rec.as_ref().map(|g| g.value()), &at)?;
                }
                Ok(())
            })?;
        }
        if let Some(m) = self.read_miss.get() {
            // One round trip for every key still missing.
            let missing: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
            if !missing.is_empty() {
                let ks: Vec<&[u8]> = missing.iter().map(|&i| keys[i]).collect();
                for (i, f) in missing.into_iter().zip(m.fetch(self, &ns, &ks)) {
                    out[i] = f;
                }
            }
        }
        Ok(out)
    }

    /// Every live entry of `ns` whose key starts with `prefix`, in key
    /// order, including writes not yet committed. Corrupt records are
    /// skipped and counted (`embercache verify` lists them).
    pub(crate) fn scan(
        &self,
        ns_name: &str,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Found)>, ReadError> {
        let ns = self.namespace_r(ns_name)?;
        let now = self.time.now_ms();
        let epoch = ns.epoch();
        let live = |e: u64, exp: u64| e == epoch && exp > now;
        // Pending writes first: one committed and dropped from pending while
        // redb is read is then still seen. Per key the newest version wins.
        let mut out: BTreeMap<Vec<u8>, (u64, Option<Found>)> = BTreeMap::new();
        self.pending.for_each(|op| {
            if op.ns != ns.id || !op.key.starts_with(prefix) {
                return;
            }
            let v = match &op.kind {
                PendingKind::Set {
                    value,
                    expires_at,
                    epoch: e,
                } if live(*e, *expires_at) => Some(Found {
                    value: value.clone(),
                    expires_at: *expires_at,
                }),
                _ => None,
            };
            out.insert(op.key.to_vec(), (op.version, v));
        });
        self.guard("scan", || self.scan_committed(&ns, prefix, &live, &mut out))?;
        Ok(out
            .into_iter()
            .filter_map(|(k, (_, v))| v.map(|v| (k, v)))
            .collect())
    }

    /// The committed part of `scan`: records newer than what `out` holds.
    fn scan_committed(
        &self,
        ns: &Namespace,
        prefix: &[u8],
        live: &dyn Fn(u64, u64) -> bool,
        out: &mut BTreeMap<Vec<u8>, (u64, Option<Found>)>,
    ) -> Result<(), ReadError> {
        let r = self.read_txn()?;
        let t = r.open_table(ENTRIES).map_err(read_err)?;
        let range = t.range((&*ns.name, prefix)..).map_err(read_err)?;
        for item in range {
            let (k, v) = item.map_err(read_err)?;
            let (n, key) = k.value();
            if n != &*ns.name || !key.starts_with(prefix) {
                break;
            }
            if let Some((version, _)) = out.get(key) {
                // Cheap header look first: skip records older than pending.
                if record::decode_header(v.value()).is_ok_and(|h| h.version <= *version) {
                    continue;
                }
            }
            let Ok((h, value)) = self.decode(&ns.name, v.value()) else {
                continue;
            };
            let found = live(h.epoch, h.expires_at).then(|| Found {
                value: value.into(),
                expires_at: h.expires_at,
            });
            out.insert(key.to_vec(), (h.version, found));
        }
        Ok(())
    }

    /// The dictionary a write of `len` bytes to `ns` compresses with:
    /// none with the outbox on (records go to Redis as stored, and other
    /// hosts would lack it). A namespace without one counts the writes at
    /// or above the compression threshold and, at
    /// `NamespacePolicy::auto_dictionary`, queues the training of its first
    /// dictionary for a background thread (never the caller's: training
    /// takes ~100 ms).
    pub(crate) fn dictionary_for(
        &self,
        ns: &Arc<Namespace>,
        len: usize,
    ) -> Option<(u32, Arc<zstd::dict::EncoderDictionary<'static>>)> {
        if self.outbox {
            return None;
        }
        let dict = ns.dict.read().clone();
        if dict.is_none()
            && let (Some(_), Some(after)) = (ns.policy.compression_level, ns.policy.auto_dictionary)
            && len >= self.limits.compression_threshold
            // Past the count (a training that failed), only a load.
            && ns.undictionaried.load(Ordering::Relaxed) < u64::from(after)
            // Exactly once per namespace and process.
            && ns.undictionaried.fetch_add(1, Ordering::Relaxed) + 1 == u64::from(after)
        {
            self.queue_training(ns);
        }
        dict
    }

    /// Queues `ns` for its first dictionary; starts the training thread
    /// unless it runs. One thread at a time, whatever the number of
    /// namespaces (training holds ~15 MiB and a core while it runs).
    fn queue_training(&self, ns: &Namespace) {
        let mut t = self.trainers.lock();
        // Under the lock: close sets `closed` before it takes the thread,
        // so no thread starts after close joined the last one.
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        t.queue.push_back(ns.name.clone());
        if t.running {
            return;
        }
        let Some(sh) = self.me.upgrade() else {
            return;
        };
        // A previous thread cleared `running` as its last step under this
        // lock: it has ended or is ending.
        if let Some(old) = t.thread.take() {
            let _ = old.join();
        }
        let spawned = std::thread::Builder::new()
            .name("embercache-dict".into())
            .spawn(move || {
                loop {
                    let name = {
                        let mut t = sh.trainers.lock();
                        match t.queue.pop_front() {
                            Some(name) => name,
                            None => {
                                t.running = false;
                                return;
                            }
                        }
                    };
                    // A panic must not leave `running` set: no namespace
                    // would train again in this process.
                    let trained =
                        catch_unwind(AssertUnwindSafe(|| sh.train_first_dictionary(&name)));
                    if trained.is_err() {
                        tracing::error!(namespace = %name, "training a dictionary panicked");
                    }
                }
            });
        match spawned {
            Ok(thread) => {
                t.running = true;
                t.thread = Some(thread);
            }
            Err(e) => tracing::warn!(error = %e, "could not start a dictionary-training thread"),
        }
    }

    fn train_first_dictionary(&self, name: &str) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        if let Ok(n) = self.ns.get_ref(name)
            && n.dict.read().is_some()
        {
            // `train_dictionary` was called meanwhile.
            return;
        }
        let trained = self.train_dictionary(name, true);
        match trained {
            Ok(id) => {
                tracing::info!(namespace = %name, id, "trained the namespace's first dictionary")
            }
            Err(e) if self.closed.load(Ordering::Acquire) => {
                tracing::debug!(namespace = %name, error = %e, "closed while training a dictionary")
            }
            Err(e) => tracing::warn!(
                namespace = %name,
                error = %e,
                "training the namespace's first dictionary failed; values stay compressed \
                 without one until the next open (Cache::train_dictionary trains one on demand)"
            ),
        }
    }

    /// See [`crate::Cache::train_dictionary`]. `first`: only if the
    /// namespace has none yet (else its id is returned).
    pub(crate) fn train_dictionary(&self, ns: &str, first: bool) -> Result<u32, crate::Error> {
        use crate::Error;
        if self.outbox {
            return Err(Error::Maintenance(
                "a cache with the outbox (a Redis mirror) writes records without a dictionary: \
                 other hosts could not read them"
                    .into(),
            ));
        }
        // The samples are read from the database: every earlier write
        // is committed first (a `Sync` write is answered before its redb
        // commit, which logged groups may share for a while).
        self.request(Op::Flush)?;
        // The first dictionary trains on less, once, without zstd's search
        // (`store::train`): it trains while the writers run.
        let samples = self.sample_values(ns, train::sample_bytes(first))?;
        if samples.len() < 8 {
            return Err(Error::Maintenance(format!(
                "namespace {ns:?} has {} values; at least 8 are needed to train a dictionary",
                samples.len()
            )));
        }
        let n = self.ns.get(ns)?;
        let level = n.policy.compression_level.unwrap_or(3);
        let dict = train::train(&samples, level, first).map_err(|e| {
            Error::Maintenance(format!(
                "dictionary training failed: {e}; store more varied values first"
            ))
        })?;
        let decoder = Dictionary::new(&dict).ok_or_else(|| {
            Error::Maintenance("zstd could not load the trained dictionary; train again".into())
        })?;
        let _one = n.training.lock();
        if first && let Some((id, _)) = &*n.dict.read() {
            return Ok(*id);
        }
        let id = self.next_dict_id.fetch_add(1, Ordering::SeqCst);
        self.decoders.write().insert(id, Arc::new(decoder));
        // Persist first: no record may name a dictionary that is not durable.
        self.request(|done| Op::Dict {
            ns: n.clone(),
            id,
            bytes: dict.clone(),
            done: Some(done),
        })?;
        *n.dict.write() = Some((
            id,
            Arc::new(zstd::dict::EncoderDictionary::copy(&dict, level)),
        ));
        Ok(id)
    }

    /// Live values of `ns` read straight from redb until `max_bytes`: the
    /// samples a dictionary is trained on. Reads no more than it keeps.
    pub(crate) fn sample_values(
        &self,
        ns_name: &str,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>, ReadError> {
        let ns = self.namespace_r(ns_name)?;
        let now = self.time.now_ms();
        let epoch = ns.epoch();
        self.guard("sample_values", || {
            let r = self.read_txn()?;
            let t = r.open_table(ENTRIES).map_err(read_err)?;
            let range = t.range((&*ns.name, &b""[..])..).map_err(read_err)?;
            let (mut out, mut total) = (Vec::new(), 0);
            for item in range {
                let (k, v) = item.map_err(read_err)?;
                if k.value().0 != &*ns.name || total >= max_bytes {
                    break;
                }
                if let Ok((h, value)) = self.decode(&ns.name, v.value())
                    && h.epoch == epoch
                    && h.expires_at > now
                {
                    total += value.len();
                    out.push(Bytes::from(value));
                }
            }
            Ok(out)
        })
    }

    /// The hot-set snapshot stored in meta, still encoded (postcard
    /// `Vec<(namespace, key)>`); `None` when there is none.
    fn snapshot_bytes(&self) -> Option<Vec<u8>> {
        self.guard_opt("read_snapshot", || {
            let r = self.begin_read().ok()?;
            let t = r.open_table(META).ok()?;
            let v = t.get(META_HOT_SNAPSHOT).ok()??;
            Some(v.value().to_vec())
        })
    }

    /// The hot-set snapshot stored in meta: (namespace, key), hottest first.
    /// Empty when there is none or it does not decode.
    pub(crate) fn read_snapshot(&self) -> Vec<(String, Vec<u8>)> {
        self.snapshot_bytes()
            .and_then(|b| postcard::from_bytes(&b).ok())
            .unwrap_or_default()
    }

    /// Loads the keys that were hot before the restart, hottest first,
    /// until the hot tier is nearly full. Runs on its own thread after open.
    ///
    /// The snapshot lists the keys hottest first and, among equally hot
    /// ones, in key order (`HotTier::hottest`). It is cut into chunks of
    /// `WARM_CHUNK` keys, hottest chunk first, each read in one transaction
    /// by walking `entries` forward from key to key (`KeyWalk`): the leaf
    /// pages a chunk needs are read once each, instead of one descent
    /// from the root per key (that was half the cost). Up to
    /// `WARM_THREADS` workers take chunks in order, so the hottest keys
    /// still arrive first. A chunk's entries go into the hot tier one
    /// shard at a time (`warm_fill`). What remains is mostly decoding
    /// (checksum, decompression) and the first touch of the memory the
    /// values land in.
    pub(crate) fn warm_up(&self) {
        const WARM_CHUNK: usize = 1024;
        const WARM_THREADS: usize = 2;
        // Decoded in place: keys borrow from these bytes.
        let bytes = self.snapshot_bytes().unwrap_or_default();
        let snapshot: Vec<(&str, &[u8])> = postcard::from_bytes(&bytes).unwrap_or_default();
        self.counters
            .warmup_total
            .store(snapshot.len() as u64, Ordering::Relaxed);
        // Room for the whole snapshot at once: a table grown an eighth at
        // a time while it fills moves each entry about nine times.
        self.hot.reserve(snapshot.len());
        let chunks: Vec<&[(&str, &[u8])]> = snapshot.chunks(WARM_CHUNK).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let work = || {
            let mut batch = WarmBatch::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(chunk) = chunks.get(i) else { break };
                if stop.load(Ordering::Relaxed)
                    || self.closed.load(Ordering::Acquire)
                    || self.hot.used_bytes() >= self.hot_capacity / 100 * 95
                {
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
                self.warm_chunk(chunk, &mut batch);
                add(&self.counters.warmup_loaded, chunk.len() as u64);
            }
        };
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, WARM_THREADS);
        std::thread::scope(|s| {
            for _ in 1..threads {
                s.spawn(work);
            }
            work();
        });
        // Keys expired or deleted since the snapshot left room unused.
        self.hot.fit();
        self.counters.warmup_done.store(1, Ordering::Release);
    }

    /// Loads one warm-up chunk through the fill rule.
    fn warm_chunk(&self, chunk: &[(&str, &[u8])], batch: &mut WarmBatch) {
        // A commit during the chunk blocks its fills (see the fill rule);
        // under a steady write load, try the chunk again a few times.
        for _attempt in 0..3 {
            let seq = self.commit_seq.load(Ordering::SeqCst);
            let now = self.time.now_ms();
            let Ok(db) = self.db() else { return };
            let Ok(r) = db.begin_read() else { return };
            let Ok(t) = r.open_table(ENTRIES) else { return };
            // Snapshots written before they were sorted (or a list of
            // sorted runs): a walk would step over records in vain.
            let sorted = chunk.is_sorted();
            let mut walk = KeyWalk::new(&t);
            batch.entries.clear();
            // The snapshot lists each rank's keys by namespace: look the
            // namespace up when the name changes, not for every key.
            let mut last: Option<(&str, Option<Arc<Namespace>>)> = None;
            for &(name, key) in chunk {
                if last.as_ref().is_none_or(|(n, _)| *n != name) {
                    last = Some((name, self.ns.get(name).ok()));
                }
                let ns = last.as_ref().and_then(|(_, ns)| ns.as_ref());
                let Some(ns) = ns.filter(|ns| ns.policy.hot_admission) else {
                    continue;
                };
                let hash = self.hot.hash(ns.id, key);
                let rec = if sorted {
                    walk.get(name, key)
                } else {
                    t.get((name, key)).ok().flatten()
                };
                // A corrupt record is counted by `decode` and skipped.
                let Some(Ok((h, value))) = rec.map(|g| self.decode(name, g.value())) else {
                    continue;
                };
                if h.epoch != ns.epoch() || h.expires_at <= now {
                    continue;
                }
                // The value moves into the hot tier: unlike a `get`, the
                // warm-up keeps no second handle on it.
                let e = Entry::new(
                    ns.id,
                    key,
                    Bytes::from(value),
                    h.expires_at,
                    h.epoch,
                    h.version,
                );
                // These keys were hot before the restart: main queue.
                batch.entries.push(Some((hash, e.into_main())));
            }
            self.warm_fill(batch, seq, now);
            if self.commit_seq.load(Ordering::SeqCst) == seq {
                return;
            }
        }
    }

    /// Puts a warm-up chunk's entries into the hot tier, one shard at a
    /// time: the fill rule (see `accept_warm`) under the shard's pending
    /// lock, then every entry with no pending write under one hot-shard
    /// lock (hot and pending shards are picked by the same hash bits).
    /// One lock pair per shard instead of per entry: the two workers'
    /// cores otherwise pass each lock's cache line back and forth. A key
    /// already hot (a `get` filled it since open) is replaced only by a
    /// version at least as new, as always.
    fn warm_fill(&self, batch: &mut WarmBatch, seq: u64, now: u64) {
        let WarmBatch { entries, order } = batch;
        order.clear();
        order.extend(entries.iter().enumerate().filter_map(|(i, e)| {
            let (hash, _) = e.as_ref()?;
            Some((self.hot.shard_index(*hash) as u32, i as u32))
        }));
        order.sort_unstable();
        let dead = self.is_dead(now);
        let mut on_evict = |e: &Entry, why| self.count_eviction(e, why, now);
        for group in order.chunk_by(|a, b| a.0 == b.0) {
            let Some((hash, _)) = entries[group[0].1 as usize] else {
                continue;
            };
            let p = self.pending.lock(hash);
            if self.commit_seq.load(Ordering::SeqCst) != seq {
                // The caller reads the chunk again (or gives up on it).
                break;
            }
            let fills = group
                .iter()
                .filter_map(|&(_, i)| entries[i as usize].take())
                .filter(|(h, e)| p.get(*h, e.ns, &e.key).is_none());
            self.hot.insert_batch(hash, fills, &dead, &mut on_evict);
        }
        entries.clear();
    }

    /// Validates the hot tier's invariants (tests and fuzzing).
    #[cfg(any(test, feature = "validate"))]
    pub(crate) fn validate(&self) {
        self.hot.validate();
        assert!(self.hot.used_bytes() <= self.hot_capacity);
    }
}

/// The delete marks: the writer bumps them with or without the mirror,
/// whose fills read them.
impl Shared {
    /// The delete counter of `key`'s stripe (see [`Shared::delete_marks`]).
    #[cfg(feature = "redis")]
    pub(crate) fn delete_mark(&self, ns: &str, key: &[u8]) -> u64 {
        self.delete_stripe(ns, key).load(Ordering::SeqCst)
    }

    /// Counts a delete of `key` that a fill racing it could no longer see.
    pub(crate) fn note_delete(&self, ns: &str, key: &[u8]) {
        self.delete_stripe(ns, key).fetch_add(1, Ordering::SeqCst);
    }

    /// Moves every delete mark: a fill that read its key's mark before
    /// the call is then dropped (a miss) instead of kept. Pub/sub calls it
    /// on each (re)subscription: a delete published while it was not
    /// subscribed moved no mark, and a fill that asked Redis before that
    /// delete could otherwise land after the reconciliation passed its key.
    #[cfg(feature = "redis")]
    pub(crate) fn fence_fills(&self) {
        for m in self.delete_marks.iter() {
            m.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Returns once every fill that passed its checks before the call is
    /// committed to redb, where a reconciliation's walk sees it.
    #[cfg(feature = "redis")]
    pub(crate) fn commit_fills(&self) -> Result<(), WriteError> {
        // A fill queues its write under its key's pending lock, after its
        // checks: taking each lock once puts that write ahead of the flush.
        self.pending.for_each(|_| {});
        self.request(Op::Flush)
    }

    fn delete_stripe(&self, ns: &str, key: &[u8]) -> &AtomicU64 {
        let h = foldhash::fast::FixedState::with_seed(0).hash_one((ns, key));
        &self.delete_marks[h as usize % self.delete_marks.len()]
    }
}

/// True where a test makes a remote delete find the write queue full.
#[cfg(feature = "redis")]
fn queue_full() -> bool {
    failpoint!("mirror::queue_full", |_| true);
    false
}

#[cfg(feature = "redis")]
impl Shared {
    // ----- mirror hooks -------------------------------------------------
    //
    // Writes that come from the mirror (Redis) carry the version they were
    // written with elsewhere and are never recorded in the outbox (they
    // must not be echoed back). Versions act as a Lamport clock across the
    // instances sharing one Redis: every version seen from the mirror
    // raises `next_version` above it, so a local write made after seeing a
    // remote one always wins over it.

    /// Raises the version clock above `version`.
    pub(crate) fn observe_version(&self, version: u64) {
        self.next_version
            .fetch_max(version.saturating_add(1), Ordering::SeqCst);
    }

    /// Stores a value read from the mirror with its original version and
    /// expiry (hot tier, pending, then redb), unless it is dead, older than
    /// the local epoch, or a local write of the key is in flight. Returns
    /// the value when it is live.
    ///
    /// `deletes` is the key's [`Shared::delete_mark`] as read before Redis
    /// was asked. A local delete leaves a pending entry until its commit,
    /// then an outbox row until Redis acknowledges it, then nothing (a
    /// remote one: nothing after its commit): a fill whose answer predates
    /// a delete that got past both meanwhile would bring the deleted value
    /// back. So when a delete of the key (or of another key of its stripe)
    /// was committed or acknowledged since, the value is not kept (and not
    /// answered: a miss is always allowed).
    pub(crate) fn fill_remote(
        &self,
        ns: &Arc<Namespace>,
        key: &[u8],
        h: &Header,
        value: Bytes,
        deletes: u64,
    ) -> Option<Found> {
        self.observe_version(h.version);
        let now = self.time.now_ms();
        if self.closed.load(Ordering::Acquire)
            || h.expires_at <= now
            || h.epoch < ns.epoch()
            || self.check_sizes(key, value.len()).is_err()
        {
            return None;
        }
        let found = Found {
            value: value.clone(),
            expires_at: h.expires_at,
        };
        let hash = self.hot.hash(ns.id, key);
        let dict = self.dictionary_for(ns, value.len());
        let prepared = Prepared::new(
            &value,
            &Encoding {
                level: ns.policy.compression_level,
                threshold: self.limits.compression_threshold,
                dict: dict.as_ref().map(|(id, d)| (*id, &**d)),
            },
        );
        let _gate = self.close_gate.read();
        if self.closed.load(Ordering::Acquire) {
            return Some(found);
        }
        let mut p = self.pending.lock(hash);
        // The epoch the fill is checked against is the one it is stored
        // under: read once, under the lock. Read before the compression
        // above, an invalidation in between would relabel a value of the
        // old epoch as one of the new.
        let epoch = ns.epoch();
        if h.epoch < epoch
            || p.get(hash, ns.id, key).is_some()
            || self.delete_mark(&ns.name, key) != deletes
            || self
                .hot
                .version_of(hash, ns.id, key)
                .is_some_and(|v| v >= h.version)
            || self
                .committed_version(&ns.name, key)
                .is_none_or(|v| v.is_some_and(|v| v >= h.version))
        {
            return None;
        }
        let op = Op::Put {
            ns: ns.clone(),
            hash,
            key: key.into(),
            record: prepared.finish(h.expires_at, h.version, epoch),
            version: h.version,
            expires_at: h.expires_at,
            mirror: false,
            done: None,
        };
        if self.tx.try_send(op).is_err() {
            // Queue full: answer without keeping a local copy.
            return Some(found);
        }
        p.put(PendingOp {
            hash,
            ns: ns.id,
            key: key.into(),
            version: h.version,
            kind: PendingKind::Set {
                value: value.clone(),
                expires_at: h.expires_at,
                epoch,
            },
        });
        if ns.policy.hot_admission {
            let e = Entry::new(ns.id, key, value, h.expires_at, epoch, h.version);
            self.hot_insert(hash, e, now);
        }
        Some(found)
    }

    /// Applies a delete made elsewhere (version `version`) to the local
    /// tiers, unless a newer local write of the key exists. Waits for room
    /// in a full write queue as a local write does (up to `queue_wait`).
    /// `false` when it stayed full: the hot copy is gone but the warm one
    /// is not, and a get would find it there; the caller then reconciles.
    pub(crate) fn delete_remote(&self, ns: &Arc<Namespace>, key: &[u8], version: u64) -> bool {
        self.observe_version(version);
        let hash = self.hot.hash(ns.id, key);
        let start = Instant::now();
        loop {
            if self.closed.load(Ordering::Acquire) {
                return true;
            }
            let gate = self.close_gate.read();
            if self.closed.load(Ordering::Acquire) {
                return true;
            }
            let mut p = self.pending.lock(hash);
            if p.get(hash, ns.id, key)
                .is_some_and(|op| op.version >= version)
                || self
                    .hot
                    .version_of(hash, ns.id, key)
                    .is_some_and(|v| v >= version)
                || self
                    .committed_version(&ns.name, key)
                    .is_some_and(|v| v.is_some_and(|v| v >= version))
            {
                return true;
            }
            let op = Op::Delete {
                ns: ns.clone(),
                hash,
                key: key.into(),
                version,
                mirror: false,
                done: None,
            };
            // A test makes the queue look full here.
            let sent = if queue_full() {
                Err(TrySendError::Full(op))
            } else {
                self.tx.try_send(op)
            };
            match sent {
                Ok(()) => {
                    self.pend_delete(&mut p, hash, ns, key, version);
                    return true;
                }
                Err(TrySendError::Full(_)) => {
                    // Meanwhile no pending entry hides the key: the hot
                    // copy goes now, and a fill racing the delete sees the
                    // mark instead.
                    self.note_delete(&ns.name, key);
                    self.hot.remove(hash, ns.id, key, version);
                    drop(p);
                    drop(gate);
                    if start.elapsed() >= self.limits.queue_wait {
                        return false;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                // Closing.
                Err(TrySendError::Disconnected(_)) => return true,
            }
        }
    }

    /// The version of the key's committed record: `Some(None)` when there
    /// is none, `None` when the warm tier cannot be read. Called under the
    /// key's pending lock by the mirror's fills and deletes: the writer
    /// drops a pending entry only after its commit, so with no pending
    /// entry every earlier local write is visible here. The hot tier alone
    /// cannot tell, since a newer local write may have been evicted from it.
    fn committed_version(&self, ns: &str, key: &[u8]) -> Option<Option<u64>> {
        self.guard_opt("committed version read", || {
            let r = self.begin_read().ok()?;
            let t = r.open_table(ENTRIES).ok()?;
            let Some(g) = t.get((ns, key)).ok()? else {
                return Some(None);
            };
            // Verified: a damaged version must neither block fills for good
            // nor let an older one through; a damaged record refuses the fill.
            record::decode_header_verified(g.value())
                .ok()
                .map(|h| Some(h.version))
        })
    }

    /// Raises the namespace's epoch to `epoch` (an invalidation made
    /// elsewhere); a no-op when the local epoch is already there.
    pub(crate) fn raise_epoch(&self, ns_name: &str, epoch: u64) -> Result<bool, WriteError> {
        self.check_open_w()?;
        let ns = self.ns.get(ns_name)?;
        let _serial = ns.invalidate.lock();
        if epoch <= ns.epoch() {
            return Ok(false);
        }
        self.send(Op::Epoch {
            ns: ns.clone(),
            epoch,
            done: None,
        })?;
        ns.epoch.store(epoch, Ordering::Release);
        add(&ns.counters.invalidations, 1);
        Ok(true)
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use crate::Cache;
    use crate::store::record::{Compression, Header};
    use bytes::Bytes;

    /// What the mirror sends (`Shared::portable`): a record compressed with
    /// a local dictionary comes out encoded without one, same header
    /// fields and value; any other record comes out as it is.
    #[test]
    fn portable_records_need_no_local_dictionary() {
        use crate::store::record;
        use crate::store::tables::ENTRIES;
        use redb::ReadableDatabase;
        use std::borrow::Cow;
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::builder().dir(dir.path()).open().unwrap();
        let val = |i: u32| {
            format!(
                r#"{{"market_id":"0x{i:08x}","question":"Will team {i} win?","volume":{i}123.5}}"#
            )
        };
        for i in 0..200u32 {
            cache.set("ns", &i.to_be_bytes(), val(i)).unwrap();
        }
        cache.train_dictionary("ns").unwrap();
        cache.set("ns", b"with", val(7)).unwrap();
        cache.flush().unwrap();
        let sh = cache.sh();
        let stored = |key: &[u8]| {
            let r = sh.db().unwrap().begin_read().unwrap();
            let t = r.open_table(ENTRIES).unwrap();
            t.get(("ns", key)).unwrap().unwrap().value().to_vec()
        };
        let with = stored(b"with");
        let h = record::decode_header_verified(&with).unwrap();
        assert_eq!(h.compression, Compression::ZstdDict);
        let sent = sh.portable("ns", &with, &h).unwrap();
        assert!(matches!(sent, Cow::Owned(_)));
        let (h2, value) = record::decode(&sent, 1 << 20, &|_| None).unwrap();
        assert_eq!(value, val(7).as_bytes());
        // zstd alone may not shrink a value this short: then it is raw.
        assert_ne!(h2.compression, Compression::ZstdDict);
        assert_eq!(
            (h2.version, h2.expires_at, h2.epoch),
            (h.version, h.expires_at, h.epoch)
        );
        let without = stored(&3u32.to_be_bytes());
        let h3 = record::decode_header_verified(&without).unwrap();
        assert!(
            matches!(sh.portable("ns", &without, &h3).unwrap(), Cow::Borrowed(b) if b == &without[..])
        );
        cache.close().unwrap();
    }

    /// A fill or delete from Redis older than a committed local write that
    /// is no longer hot must not win: the race of a Redis read overtaken by
    /// a local write that was committed and evicted before the fill.
    #[test]
    fn remote_fills_and_deletes_never_hide_a_newer_committed_write() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::builder().dir(dir.path()).open().unwrap();
        cache.set("ns", b"k", b"newer".to_vec()).unwrap();
        cache.flush().unwrap();
        let sh = cache.sh();
        let ns = sh.ns.get("ns").unwrap();
        let hash = sh.hot.hash(ns.id, b"k");
        let v = sh.hot.version_of(hash, ns.id, b"k").unwrap();
        // Evicted: only the committed record knows the newer version.
        assert!(sh.hot.remove(hash, ns.id, b"k", v));
        let older = Header {
            compression: Compression::Raw,
            dict_id: 0,
            expires_at: u64::MAX,
            version: v - 1,
            epoch: ns.epoch(),
            raw_len: 5,
        };
        let deletes = sh.delete_mark("ns", b"k");
        assert!(
            sh.fill_remote(&ns, b"k", &older, Bytes::from_static(b"older"), deletes)
                .is_none()
        );
        assert_eq!(
            cache.get("ns", b"k").unwrap().as_deref(),
            Some(&b"newer"[..])
        );
        sh.hot.remove(hash, ns.id, b"k", v);
        sh.delete_remote(&ns, b"k", v - 1);
        cache.flush().unwrap();
        assert_eq!(
            cache.get("ns", b"k").unwrap().as_deref(),
            Some(&b"newer"[..])
        );
        cache.close().unwrap();
    }

    /// A cache in `dir` whose writer runs no maintenance pass of its own
    /// during a test (the pass drops idle kept readers, which the tests
    /// count).
    fn without_own_maintenance(dir: &std::path::Path) -> Cache {
        let limits = crate::config::Limits {
            maintenance_interval: std::time::Duration::from_secs(3600),
            ..Default::default()
        };
        Cache::builder().dir(dir).limits(limits).open().unwrap()
    }

    /// The hot-set snapshot is for the next start: a directory cache writes
    /// one at each due maintenance pass, an in-memory cache (which has no
    /// next start) never ranks its keys for one.
    #[test]
    fn only_a_cache_that_survives_writes_the_hot_set_snapshot() {
        let limits = crate::config::Limits {
            maintenance_interval: std::time::Duration::from_secs(3600),
            snapshot_interval: std::time::Duration::from_millis(1),
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let on_disk = Cache::builder()
            .dir(dir.path())
            .limits(limits.clone())
            .open()
            .unwrap();
        let in_memory = Cache::builder().in_memory().limits(limits).open().unwrap();
        for (cache, kept) in [(&on_disk, 1), (&in_memory, 0)] {
            cache.set("ns", b"k", b"v".to_vec()).unwrap();
            cache.flush().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
            cache.run_maintenance().unwrap();
            assert_eq!(cache.sh().read_snapshot().len(), kept);
        }
    }

    /// Drops the hot copy of `key`: only pending or the warm tier answers
    /// for it afterwards.
    fn evict_hot(sh: &super::Shared, ns: &super::Namespace, key: &[u8]) {
        let hash = sh.hot.hash(ns.id, key);
        let v = sh.hot.version_of(hash, ns.id, key).unwrap();
        assert!(sh.hot.remove(hash, ns.id, key, v));
    }

    /// A warm get reuses its thread's kept reader only while no commit has
    /// happened since it was opened; maintenance drops idle ones, and close
    /// drops them all.
    #[test]
    fn a_kept_warm_reader_never_hides_a_later_commit_nor_outlives_close() {
        let dir = tempfile::tempdir().unwrap();
        let cache = without_own_maintenance(dir.path());
        let sh = cache.sh();
        let ns = sh.ns.get("ns").unwrap();
        let evict = || evict_hot(sh, &ns, b"k");
        let get = || cache.get("ns", b"k").unwrap();
        cache.set("ns", b"k", b"one".to_vec()).unwrap();
        cache.flush().unwrap();
        evict();
        assert_eq!(get().as_deref(), Some(&b"one"[..]));
        assert_eq!(sh.readers.kept(), 1);
        cache.set("ns", b"k", b"two".to_vec()).unwrap();
        cache.flush().unwrap();
        evict();
        assert_eq!(get().as_deref(), Some(&b"two"[..]));
        // Maintenance drops idle readers, current or not (the hot-set
        // snapshot commits without bumping `commit_seq`).
        cache.run_maintenance().unwrap();
        assert_eq!(sh.readers.kept(), 0);
        evict();
        assert_eq!(get().as_deref(), Some(&b"two"[..]));
        assert_eq!(sh.readers.kept(), 1);
        let other = cache.clone();
        cache.close().unwrap();
        assert_eq!(other.sh().readers.kept(), 0);
        drop(other);
        let again = Cache::builder().dir(dir.path()).open().unwrap();
        assert_eq!(again.get("ns", b"k").unwrap().as_deref(), Some(&b"two"[..]));
        again.close().unwrap();
    }

    /// The kept reader is picked by the `commit_seq` read after pending was
    /// looked in, not the one a get reads before the hot tier: a write
    /// committed and dropped from pending in between must be seen.
    #[test]
    fn a_write_committed_between_the_hot_lookup_and_the_warm_read_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let cache = without_own_maintenance(dir.path());
        let sh = cache.sh();
        let ns = sh.ns.get("ns").unwrap();
        let hash = sh.hot.hash(ns.id, b"k");
        let evict = || evict_hot(sh, &ns, b"k");
        let warm = |at: &super::ReadPoint| {
            sh.get_warm(&ns, hash, b"k", at)
                .unwrap()
                .map(|f| f.value.to_vec())
        };
        cache.set("ns", b"k", b"one".to_vec()).unwrap();
        cache.flush().unwrap();
        evict();
        assert_eq!(warm(&sh.read_point(&ns, false)), Some(b"one".to_vec()));
        assert_eq!(sh.readers.kept(), 1);
        // A get has read `commit_seq` and missed the hot tier; then the
        // write commits and leaves pending before the get looks there.
        let at = sh.read_point(&ns, false);
        cache.set("ns", b"k", b"two".to_vec()).unwrap();
        cache.flush().unwrap();
        evict();
        assert_eq!(warm(&at), Some(b"two".to_vec()));
        let at = sh.read_point(&ns, false);
        cache.delete("ns", b"k").unwrap();
        cache.flush().unwrap();
        assert_eq!(warm(&at), None);
        cache.close().unwrap();
    }

    /// The writer judges the record a put replaces after redb hands it
    /// back: a put older than the stored record must leave that record,
    /// its expiry index entry and the disk counts as they were, and a newer
    /// put must take the old index entry with it.
    #[test]
    fn the_writer_keeps_a_newer_record_and_its_index_entry_against_an_older_put() {
        use crate::store::record::{Encoding, Prepared};
        use crate::store::tables::EXPIRY;
        use crate::store::writer::Op;
        use redb::ReadableTable;
        use std::time::Duration;
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::builder().dir(dir.path()).open().unwrap();
        cache
            .set_with_ttl("ns", b"k", b"newer".to_vec(), Duration::from_secs(3600))
            .unwrap();
        cache.flush().unwrap();
        let sh = cache.sh();
        let ns = sh.ns.get("ns").unwrap();
        let hash = sh.hot.hash(ns.id, b"k");
        let v = sh.hot.version_of(hash, ns.id, b"k").unwrap();
        let index_rows = |sh: &super::Shared| {
            let r = sh.begin_read().unwrap();
            let t = r.open_table(EXPIRY).unwrap();
            let rows: Vec<(u64, u64)> = t
                .iter()
                .unwrap()
                .map(|x| {
                    let (k, _) = x.unwrap();
                    let k = k.value();
                    (k.0, k.1)
                })
                .collect();
            rows
        };
        let (records, bytes) = (cache.stats().disk_records, cache.stats().disk_bytes);
        let rows = index_rows(sh);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].1, v);
        let put = |version: u64, value: &[u8], expires_at: u64| {
            let prepared = Prepared::new(
                value,
                &Encoding {
                    level: Some(3),
                    threshold: 64,
                    dict: None,
                },
            );
            sh.tx
                .send(Op::Put {
                    ns: ns.clone(),
                    hash,
                    key: b"k".to_vec().into_boxed_slice(),
                    record: prepared.finish(expires_at, version, ns.epoch()),
                    version,
                    expires_at,
                    mirror: false,
                    done: None,
                })
                .unwrap();
            cache.flush().unwrap();
        };
        put(v - 1, b"older, and longer", u64::MAX);
        assert_eq!(cache.stats().disk_records, records);
        assert_eq!(cache.stats().disk_bytes, bytes);
        assert_eq!(index_rows(sh), rows);
        assert_eq!(sh.committed_version("ns", b"k"), Some(Some(v)));
        // A newer put replaces the record and drops the old index entry.
        let w = v + 1_000;
        put(w, b"newest, no TTL", u64::MAX);
        assert_eq!(cache.stats().disk_records, records);
        assert_eq!(
            cache.stats().disk_bytes,
            bytes - b"newer".len() as u64 + b"newest, no TTL".len() as u64
        );
        assert_eq!(index_rows(sh), vec![]);
        assert_eq!(sh.committed_version("ns", b"k"), Some(Some(w)));
        cache.close().unwrap();
    }
}
