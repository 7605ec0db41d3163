//! The background writer: one thread, a redb write transaction per group
//! of writes (group commit), plus the maintenance work that needs a write
//! transaction (expiry sweep, disk bound, epoch purge, hot-set snapshot).
//!
//! A group of data writes is made durable by the write-ahead log (wal.rs)
//! when the database has one: one record appended and fsynced, then a redb
//! commit without fsync, which the next logged groups share while writes
//! keep coming (`Writer::defer`). Everything else, and every group when
//! there is no log, is a `Durability::Immediate` (fsynced) commit, which is
//! also a checkpoint of the log. `Buffered` mode waits
//! up to `max_delay` to fill a group; a write that someone waits for (Sync
//! mode, a durable write, `flush`, `close`) ends the gathering at once.
//! While one commit is being fsynced, new writes pile up in the channel and
//! form the next group: concurrent `Sync` writers share commits.

use super::open::Source;
use super::outbox::{EPOCH_NAMESPACE, Outbox, OutboxDelta, OutboxKind};
use super::record::decode_header;
use super::tables::reads_through;
use super::tables::*;
use super::wal::{Logged, Wal, Write};
use crate::engine::Shared;
use crate::error::{WriteError, storage};
use crate::namespace::Namespace;
use crate::stats::add;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use redb::{ReadableTable, Table};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Where a waiting caller gets its answer (see reply.rs).
pub(crate) use super::reply::Done;

/// One request to the writer thread.
pub(crate) enum Op {
    Put {
        ns: Arc<Namespace>,
        hash: u64,
        key: Box<[u8]>,
        record: Vec<u8>,
        version: u64,
        expires_at: u64,
        /// Also record it in the outbox (false for writes that came from
        /// the mirror itself, which must not be echoed back).
        mirror: bool,
        done: Option<Done>,
    },
    Delete {
        ns: Arc<Namespace>,
        hash: u64,
        key: Box<[u8]>,
        version: u64,
        /// See `Put::mirror`.
        mirror: bool,
        done: Option<Done>,
    },
    /// Persist a namespace epoch bump (the highest one wins).
    Epoch {
        ns: Arc<Namespace>,
        epoch: u64,
        done: Option<Done>,
    },
    /// Remove outbox rows the mirror delivered: (namespace, key, version).
    OutboxAck {
        items: Vec<(String, Vec<u8>, u64)>,
        done: Option<Done>,
    },
    /// Set (`Some`) or remove (`None`) a loader-state entry.
    LoaderMeta {
        key: String,
        value: Option<Vec<u8>>,
        done: Option<Done>,
    },
    /// Persist a trained dictionary and make it the namespace's current one.
    Dict {
        ns: Arc<Namespace>,
        id: u32,
        bytes: Vec<u8>,
        done: Option<Done>,
    },
    Flush(Done),
    /// Run the maintenance pass now (sweep, disk bound, purge, snapshot).
    Maintain(Done),
    Close(Done),
}

impl Op {
    fn done(&mut self) -> Option<Done> {
        match self {
            Op::Put { done, .. }
            | Op::Delete { done, .. }
            | Op::Epoch { done, .. }
            | Op::LoaderMeta { done, .. }
            | Op::OutboxAck { done, .. }
            | Op::Dict { done, .. } => done.take(),
            Op::Flush(d) | Op::Maintain(d) | Op::Close(d) => Some(d.clone()),
        }
    }

    /// A data write as the log takes it.
    fn logged(&self) -> Option<Write<'_>> {
        match self {
            Op::Put {
                ns,
                key,
                record,
                version,
                expires_at,
                mirror,
                ..
            } => Some(Write {
                ns: &ns.name,
                key,
                record: Some(record),
                version: *version,
                expires_at: *expires_at,
                mirror: *mirror,
            }),
            Op::Delete {
                ns,
                key,
                version,
                mirror,
                ..
            } => Some(Write {
                ns: &ns.name,
                key,
                record: None,
                version: *version,
                expires_at: 0,
                mirror: *mirror,
            }),
            _ => None,
        }
    }

    /// The (namespace id, key) a data write targets.
    fn target(&self) -> Option<(u32, &[u8])> {
        match self {
            Op::Put { ns, key, .. } | Op::Delete { ns, key, .. } => Some((ns.id, key)),
            _ => None,
        }
    }

    fn urgent(&self) -> bool {
        match self {
            Op::Put { done, .. }
            | Op::Delete { done, .. }
            | Op::Epoch { done, .. }
            | Op::LoaderMeta { done, .. }
            | Op::OutboxAck { done, .. }
            | Op::Dict { done, .. } => done.is_some(),
            Op::Flush(_) | Op::Maintain(_) | Op::Close(_) => true,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Op::Put { record, key, .. } => record.len() + key.len(),
            Op::Dict { bytes, .. } => bytes.len(),
            _ => 64,
        }
    }
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    rx: Receiver<Op>,
    /// Writes of a failed commit, retried with the next group.
    carry: Vec<Op>,
    backoff: Duration,
    /// Consecutive failed commits.
    failures: u32,
    last_maintenance: Instant,
    last_snapshot: Instant,
    /// Group-commit pacing (see `gather`): callers answered by the last
    /// commit, ops that were queued when it finished, and how long it took.
    pace: Pace,
    /// The most waiting ops a group lingers for ([`linger_max_waiters`]).
    linger_max: usize,
    /// Namespaces that may hold records of an old epoch → (the highest
    /// epoch known to be committed, resume key). Only the committed epoch
    /// may be used: one bumped in memory but lost in a crash would make the
    /// purge delete acknowledged writes of the epoch that is still current.
    purge: BTreeMap<String, (u64, Vec<u8>)>,
    /// Where the disk bound's walk over entries without a TTL resumes:
    /// (namespace, key); empty at the start.
    evict_cursor: (String, Vec<u8>),
    /// The write-ahead log, if the database has one.
    wal: Option<Wal>,
    /// The log failed to write or fsync: never logged again here (every
    /// group is a durable commit). Recovery still reads what it held.
    log_failed: bool,
    /// A durable commit failed: it may have reached the disk with the next
    /// generation, so nothing is logged until the generation is known again
    /// (a durable commit succeeds, or a replay reads it from meta).
    out_of_step: bool,
    /// The log generation meta holds. Every durable commit moves it on,
    /// with or without a log: a run without the log must not leave records
    /// of a generation still current for a later run with it to replay.
    wal_gen: u64,
    /// Open in strict mode: a log record that checksums but does not
    /// decode fails the replay instead of ending it.
    strict: bool,
    /// The log generation a reopen could not replay yet (the replay
    /// failed): until it is replayed, nothing commits, so neither a logged
    /// group nor a new generation can overwrite those writes.
    unreplayed: Option<u64>,
    /// A database reopened after an I/O error and not yet given to
    /// readers: the log is replayed into it first, so no reader sees it
    /// without the writes it lost.
    unpublished: Option<Arc<redb::Database>>,
    /// Logged groups applied to a redb transaction not committed yet (see
    /// [`Writer::defer`]).
    open: Open,
}

/// The redb transaction that logged groups share while writes keep coming:
/// one commit for several groups. Their writes are durable in the log and
/// answered; they stay in `pending` (so reads see them) until the commit.
#[derive(Default)]
struct Open {
    txn: Option<redb::WriteTransaction>,
    /// The data writes applied in `txn`, in queue order: removed from
    /// `pending` after the commit, carried and retried if it fails.
    ops: Vec<Op>,
    /// `Op::bytes` of `ops`.
    bytes: usize,
    /// Per group applied: how long it took, its ops (counted in the
    /// stats once the transaction commits).
    groups: Vec<(Duration, usize)>,
    delta: Delta,
    outbox: OutboxDelta,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        rx: Receiver<Op>,
        purge: Vec<(String, u64)>,
        wal: Option<Wal>,
        wal_gen: u64,
        strict: bool,
    ) -> Self {
        Writer {
            log_failed: false,
            out_of_step: false,
            wal_gen,
            strict,
            unreplayed: None,
            unpublished: None,
            open: Open::default(),
            wal,
            shared,
            rx,
            carry: Vec::new(),
            backoff: Duration::ZERO,
            failures: 0,
            last_maintenance: Instant::now(),
            last_snapshot: Instant::now(),
            pace: Pace::default(),
            linger_max: linger_max_waiters(),
            evict_cursor: (String::new(), Vec::new()),
            purge: purge
                .into_iter()
                .map(|(n, e)| (n, (e, Vec::new())))
                .collect(),
        }
    }

    pub(crate) fn run(mut self) {
        let limits = self.shared.limits.clone();
        loop {
            let mut group = std::mem::take(&mut self.carry);
            if group.is_empty() {
                let wait = limits
                    .maintenance_interval
                    .saturating_sub(self.last_maintenance.elapsed());
                match self.rx.recv_timeout(wait) {
                    Ok(op) => group.push(op),
                    Err(RecvTimeoutError::Timeout) => {
                        // A transaction is left open only with an op
                        // queued, and this thread alone takes ops: the
                        // receive above returned it at once.
                        debug_assert!(self.open.txn.is_none());
                        // Idle for a maintenance interval: the callers of
                        // the last commit are not coming back soon.
                        self.pace = Pace::default();
                        self.maintain();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            self.gather(&mut group);
            let started = Instant::now();
            let closing = group.iter().any(|o| matches!(o, Op::Close(_)));
            let maintain = group.iter().any(|o| matches!(o, Op::Maintain(_)));
            // A panic while applying a group (a bug, or an injected fault)
            // must not kill the only writer: treat it as a failed commit;
            // the transaction was dropped, so nothing of it was applied.
            let result = self.guarded("a commit", |w| w.commit_group(&mut group, true));
            match result {
                Ok(()) => {
                    self.backoff = Duration::ZERO;
                    self.failures = 0;
                    self.pace
                        .committed(&group, self.rx.len(), started.elapsed());
                    if maintain {
                        self.maintain();
                    }
                    if closing {
                        // Nothing should follow the Close op: every enqueue
                        // holds `close_gate` across its closed-check and
                        // send, and close() sets `closed` under the gate's
                        // write lock before it queues Close. Should an op
                        // get in after it all the same (a future path that
                        // bypasses the gate), it is committed, not dropped.
                        let mut late: Vec<Op> = self.rx.try_iter().collect();
                        let late_result = if late.is_empty() {
                            Ok(())
                        } else {
                            self.guarded("a commit", |w| w.commit_group(&mut late, true))
                        };
                        if let Err(e) = late_result {
                            // Writes answered from the log may be among
                            // them: no snapshot, whose durable commit would
                            // start the log over. The next open replays it.
                            reply_all(&mut late, Err(WriteError::Storage(e.clone())));
                            reply_all(&mut group, Err(WriteError::Storage(e)));
                            return;
                        }
                        reply_all(&mut late, Ok(()));
                        let snap = self.guarded("the hot-set snapshot", |w| w.write_snapshot());
                        reply_all(&mut group, snap.map_err(WriteError::Storage));
                        return;
                    }
                    reply_all(&mut group, Ok(()));
                    // Periodic maintenance after the replies: the callers
                    // of this group do not wait for it.
                    if !maintain
                        && self.open.txn.is_none()
                        && self.last_maintenance.elapsed() >= limits.maintenance_interval
                    {
                        self.maintain();
                    }
                }
                Err(e) => {
                    // The open transaction is gone with the failed commit;
                    // its writes are carried with the group's.
                    let open_ops = std::mem::take(&mut self.open).ops;
                    let err = WriteError::Storage(e.clone());
                    add(&self.shared.counters.write_errors, 1);
                    *self.shared.last_error.lock() = Some(e.to_string());
                    tracing::error!(
                        error = %e,
                        ops = group.len() + open_ops.len(),
                        "commit failed; will retry"
                    );
                    reply_all(&mut group, Err(err.clone()));
                    self.failures += 1;
                    if closing || (self.shared.closed.load(Ordering::Acquire) && self.failures >= 3)
                    {
                        // Closing gives up on a failing disk. Writes that
                        // were answered from the write-ahead log stay in it
                        // (nothing started it over), and the next open
                        // replays them; the others' callers got the error.
                        tracing::error!(
                            ops = group.len() + open_ops.len(),
                            "closing with writes that could not be committed"
                        );
                        if !closing {
                            // `close` sets `closed` just before it queues
                            // its Close op. Answer everything up to that
                            // op: a receiver that goes away does not drop
                            // what is queued, so its caller would wait for
                            // ever.
                            while let Ok(mut op) = self.rx.recv() {
                                let last = matches!(op, Op::Close(_));
                                if let Some(d) = op.done() {
                                    d.send(Err(err.clone()));
                                }
                                if last {
                                    break;
                                }
                            }
                        }
                        return;
                    }
                    if matches!(*e, redb::Error::Io(_) | redb::Error::PreviousIo) {
                        self.reopen();
                    }
                    // Data ops are retried; control ops were answered.
                    group.retain(|o| !matches!(o, Op::Flush(_) | Op::Maintain(_) | Op::Close(_)));
                    let mut carry = open_ops;
                    carry.append(&mut group);
                    self.carry = carry;
                    self.backoff =
                        (self.backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(2));
                    std::thread::sleep(self.backoff);
                }
            }
        }
    }

    /// redb refuses every operation after an I/O error until the database
    /// is reopened. Drop our handle (once no reader holds a clone of it) and
    /// open it again; redb repairs at open. A read transaction still open
    /// keeps the old file open, so the open can fail; then the database
    /// stays closed, warm-tier reads fail, and the next retry tries again.
    fn reopen(&mut self) {
        let sh = &self.shared;
        if matches!(sh.source, Source::Memory) {
            return;
        }
        let old = sh.db.write().take().or_else(|| self.unpublished.take());
        // Readers of the old database would fail (see `store::readers`).
        sh.readers.drop_all();
        if let Some(mut old) = old {
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still_shared) => {
                        old = still_shared;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
        match super::open::open(&sh.source, true) {
            Ok(o) => {
                // redb dropped the commits made without fsync, and the
                // counters still count them: start again from what the
                // durable database says, then replay the log (which holds
                // those writes) before any reader sees the database.
                let (rows, bytes) = match super::outbox::measure(&o.db) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "reopening the database failed (outbox unreadable); will retry");
                        return;
                    }
                };
                let c = &sh.counters;
                c.records.store(o.meta.records, Ordering::Relaxed);
                c.disk_bytes.store(o.meta.bytes, Ordering::Relaxed);
                c.outbox_rows.store(rows, Ordering::Relaxed);
                c.outbox_bytes.store(bytes, Ordering::Relaxed);
                tracing::info!("database reopened after an I/O error");
                self.unpublished = Some(Arc::new(o.db));
                self.unreplayed = Some(o.meta.wal_gen);
                if let Err(e) = self.replay_unreplayed() {
                    tracing::warn!(error = %e, "replaying the write-ahead log after reopening failed; will retry");
                }
            }
            Err(e) => tracing::warn!(error = %e, "reopening the database failed; will retry"),
        }
    }

    /// The database to write: a reopened one not yet published, else the
    /// shared one.
    fn db(&self) -> Result<Arc<redb::Database>, Arc<redb::Error>> {
        match &self.unpublished {
            Some(db) => Ok(db.clone()),
            None => self.shared.db(),
        }
    }

    /// Replays the log into a reopened database, then gives the database
    /// to readers. Until it succeeds, every commit fails.
    fn replay_unreplayed(&mut self) -> Result<(), Arc<redb::Error>> {
        let Some(generation) = self.unreplayed.take() else {
            return Ok(());
        };
        if let Err(e) = self.recover(generation) {
            self.unreplayed = Some(generation);
            return Err(e);
        }
        if let Some(db) = self.unpublished.take() {
            *self.shared.db.write() = Some(db);
        }
        Ok(())
    }

    /// A reopen left the database closed (its open failed) or waiting for
    /// its replay: try again. Maintenance calls this, so a cache that only
    /// reads gets its warm tier back too.
    fn retry_reopen(&mut self) {
        if self.unreplayed.is_some() {
            if let Err(e) = self.replay_unreplayed() {
                tracing::warn!(error = %e, "replaying the write-ahead log after reopening failed; will retry");
            }
        } else if self.unpublished.is_none()
            && self.shared.db.read().is_none()
            && !matches!(self.shared.source, Source::Memory)
            && !self.shared.closed.load(Ordering::Acquire)
        {
            self.reopen();
        }
    }

    /// Adds queued writes to `group` until it is full, or urgent and the
    /// queue is empty, or the buffering delay is over.
    ///
    /// An urgent group does not stop at the first empty queue if callers
    /// answered by the last commit are likely to come back with their next
    /// write (PostgreSQL's `commit_delay`/`commit_siblings` idea): it
    /// lingers until as many waiting ops as were in flight at the last
    /// commit (its waiters plus the waiters queued behind it) are in the
    /// group, or for at most half of the last commit's duration (≤ 1 ms).
    /// Woken callers need a few scheduler ticks to resubmit; without this,
    /// 4 `Sync` writers on 2 cores commit 2.3–2.4 writes per fsync instead
    /// of 3.8–3.9, at 12.7–15.3 k instead of 15.5–18.1 k writes/s (w5prof,
    /// three alternating runs, measured with `1b7d873`). One writer alone
    /// never lingers: the expected count is then 1. It waits for
    /// [`linger_max_waiters`] at most.
    fn gather(&mut self, group: &mut Vec<Op>) {
        let limits = &self.shared.limits;
        let mut bytes: usize = group.iter().map(Op::bytes).sum();
        let mut urgent = group.iter().any(Op::urgent);
        let deadline = Instant::now() + self.shared.max_delay();
        // Ops queued when the last commit finished arrive first (FIFO);
        // their waiters are callers that have not been answered yet.
        let backlog = std::mem::take(&mut self.pace.backlog);
        // Callers answered after the last commit come back after it, behind
        // the waiting ops queued meanwhile. Callers answered from the log
        // before it may be among those queued ops already: count them once.
        let (late, early) = (self.pace.waiters, self.pace.early);
        let mut queued = 0usize;
        let mut waiting = 0usize;
        for (i, op) in group.iter().enumerate() {
            if op.urgent() {
                waiting += 1;
                if i < backlog {
                    queued += 1;
                }
            }
        }
        let mut received = group.len();
        let mut linger: Option<Instant> = None;
        while group.len() < limits.group_max_ops && bytes < limits.group_max_bytes {
            let next = if urgent {
                match self.rx.try_recv() {
                    Ok(op) => Some(op),
                    Err(_) if waiting < (late + early.max(queued)).min(self.linger_max) => {
                        let until =
                            *linger.get_or_insert_with(|| Instant::now() + self.pace.linger());
                        self.rx.recv_deadline(until).ok()
                    }
                    Err(_) => None,
                }
            } else {
                self.rx.recv_deadline(deadline).ok()
            };
            let Some(op) = next else { break };
            if op.urgent() {
                waiting += 1;
                if received < backlog {
                    queued += 1;
                }
            }
            received += 1;
            urgent |= op.urgent();
            bytes += op.bytes();
            let stop = matches!(op, Op::Close(_));
            group.push(op);
            if stop {
                break;
            }
        }
    }

    /// Applies the writes the log holds beyond the durable database, in
    /// one durable commit: at open after a crash, and after a reopen (redb
    /// drops its commits made without fsync). `generation` is the log generation
    /// the database says is current. Returns the number of writes applied.
    ///
    /// A record whose checksum holds but whose writes do not decode ends
    /// the replay; in strict mode that is an error instead (the writes after
    /// it would be lost for good once the replay's commit starts the next
    /// generation). A panic (redb on a damaged page) is an error too.
    pub(crate) fn recover(&mut self, generation: u64) -> Result<usize, Arc<redb::Error>> {
        self.guarded("replaying the write-ahead log", |w| {
            w.recover_unguarded(generation)
        })
    }

    /// Runs `f`, a piece of redb work, so that a panic in it fails it
    /// instead of killing the writer: a bug, an injected fault, or redb
    /// meeting a damaged page, which a walk of the tables tells apart (the
    /// file is then marked damaged).
    fn guarded<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut Self) -> Result<T, Arc<redb::Error>>,
    ) -> Result<T, Arc<redb::Error>> {
        catch_unwind(AssertUnwindSafe(|| f(&mut *self))).unwrap_or_else(|_| {
            if self.db().map_or(true, |db| reads_through(&db)) {
                Err(injected(&format!("{what} (panicked)")))
            } else {
                Err(self.shared.damaged(what))
            }
        })
    }

    fn recover_unguarded(&mut self, generation: u64) -> Result<usize, Arc<redb::Error>> {
        self.wal_gen = generation;
        let Some(wal) = self.wal.as_mut() else {
            return Ok(0);
        };
        let (found, end) = wal
            .read_back(generation)
            .map_err(|e| storage(redb::Error::Io(e)))?;
        if let (true, Some(why)) = (self.strict, &found.damaged) {
            return Err(storage(redb::Error::Corrupted(format!(
                "the write-ahead log is damaged ({why}); open without strict mode to replay \
                 the records before the damage and go on"
            ))));
        }
        if found.writes.is_empty() {
            // Nothing to replay: the log starts over at the generation
            // meta holds.
            wal.rewind();
            self.out_of_step = false;
            return Ok(0);
        }
        let sh = self.shared.clone();
        let mut group = Vec::with_capacity(found.writes.len());
        for w in found.writes {
            let Ok(ns) = sh.ns.get(&w.ns) else {
                tracing::error!(namespace = %w.ns, "write-ahead log names a namespace this process refuses; write skipped");
                continue;
            };
            sh.next_version
                .fetch_max(w.version.saturating_add(1), Ordering::SeqCst);
            let Logged {
                key,
                record,
                version,
                expires_at,
                mirror,
                ..
            } = w;
            let hash = sh.hot.hash(ns.id, &key);
            let key = key.into_boxed_slice();
            group.push(match record {
                Some(record) => Op::Put {
                    ns,
                    hash,
                    key,
                    record,
                    version,
                    expires_at,
                    mirror,
                    done: None,
                },
                None => Op::Delete {
                    ns,
                    hash,
                    key,
                    version,
                    mirror,
                    done: None,
                },
            });
        }
        let n = group.len();
        self.commit_group(&mut group, false)?;
        add(&self.shared.counters.log_replayed, n as u64);
        tracing::info!(
            writes = n,
            records = found.records,
            bytes = end,
            "replayed the write-ahead log"
        );
        Ok(n)
    }

    /// Logs `group` if it can be: data writes only (and flushes), a log
    /// that works and has room. `true`: the group is durable in the log.
    fn log(&mut self, group: &[Op]) -> bool {
        // `wal_bytes` 0: the log is off (an existing one is still replayed
        // and kept in step).
        if self.shared.limits.wal_bytes == 0
            || self.log_failed
            || self.out_of_step
            || !group
                .iter()
                .all(|o| matches!(o, Op::Put { .. } | Op::Delete { .. } | Op::Flush(_)))
        {
            return false;
        }
        let generation = self.wal_gen;
        let Some(wal) = self.wal.as_mut() else {
            return false;
        };
        match wal.append(generation, group.iter().filter_map(Op::logged)) {
            Ok(logged) => logged,
            Err(e) => {
                // A durable commit takes this group (and every later one);
                // it also starts a new generation, so whatever part of this
                // record reached the file is never replayed.
                self.log_failed = true;
                add(&self.shared.counters.write_errors, 1);
                tracing::error!(error = %e, "the write-ahead log failed; committing every group with fsync from now on");
                false
            }
        }
    }

    /// Commits `txn` with fsync. The database then holds everything the
    /// log held, so the same commit makes the log's next generation
    /// current, and the log starts over.
    fn commit_durable(&mut self, txn: redb::WriteTransaction) -> Result<(), Arc<redb::Error>> {
        if self.unreplayed.is_some() {
            // A new generation now would hide the writes still to replay.
            return Err(not_replayed());
        }
        let next = self.wal_gen.wrapping_add(1);
        txn.open_table(META)
            .map_err(storage)?
            .insert(META_WAL_GEN, next.to_le_bytes().as_slice())
            .map_err(storage)?;
        if let Err(e) = txn
            .commit()
            .map_err(storage)
            .and_then(|()| landed_but_failed())
        {
            // The commit may have reached the disk anyway (a failed fsync
            // says nothing either way), and with it the new generation:
            // records logged under the old one would then be ignored by
            // recovery. Log no more until the generation is known again.
            self.out_of_step = true;
            return Err(e);
        }
        self.wal_gen = next;
        self.out_of_step = false;
        if let Some(w) = self.wal.as_mut() {
            w.rewind();
        }
        Ok(())
    }

    /// A durable commit of nothing, if the log holds anything: bounds how
    /// much recovery replays, and lets redb free the pages of the commits
    /// made without fsync (it frees pages only in durable ones).
    fn checkpoint(&mut self) -> Result<(), Arc<redb::Error>> {
        if self.wal.as_ref().is_none_or(|w| w.used() == 0) {
            return Ok(());
        }
        let txn = self.db()?.begin_write().map_err(storage)?;
        self.commit_durable(txn)
    }

    /// Applies a group to the open transaction (or a new one) and commits
    /// it: logged and committed without fsync when `may_log` and
    /// [`Self::log`] take it, else committed with fsync. A logged group may
    /// instead leave the transaction open for the next groups to share its
    /// commit ([`Self::defer`]); whichever group commits it commits theirs
    /// too.
    fn commit_group(&mut self, group: &mut Vec<Op>, may_log: bool) -> Result<(), Arc<redb::Error>> {
        if may_log {
            // After a reopen whose replay failed: replay first (or fail).
            self.replay_unreplayed()?;
        }
        let sh = self.shared.clone();
        let start = Instant::now();
        // Taken out: if anything below fails, the transaction is dropped
        // (nothing of it applied) and `run` carries `open.ops` with `group`.
        let mut txn = match self.open.txn.take() {
            Some(txn) => txn,
            None => self.db()?.begin_write().map_err(storage)?,
        };
        let logged = may_log && self.log(group);
        if logged {
            // Durable now: answer the writes' callers before the redb work,
            // which then overlaps with their next writes (W5: +15 to +50 %).
            // Their writes stay in `pending` until the commit below, so
            // reads and scans see them. A flush is still answered after
            // the commit: it promises that stats and dictionary training
            // (which read the database) count every earlier write. If this
            // commit fails, the log still holds the group: no durable
            // commit (which starts the log over) runs before the group is
            // in redb, since a failed group is carried and retried before
            // any maintenance, a reopen replays the log, and close skips
            // its snapshot.
            for op in group.iter_mut() {
                if let Op::Put { done, .. } | Op::Delete { done, .. } = op
                    && let Some(d) = done.take()
                {
                    d.send(Ok(()));
                    self.pace.answered_early += 1;
                }
            }
            txn.set_durability(redb::Durability::None)
                .map_err(storage)?;
        } else {
            // It may have been opened by a logged group.
            txn.set_durability(redb::Durability::Immediate)
                .map_err(storage)?;
        }
        let mut delta = Delta::default();
        let mut od = OutboxDelta::default();
        {
            let mut entries = txn.open_table(ENTRIES).map_err(storage)?;
            let mut expiry = txn.open_table(EXPIRY).map_err(storage)?;
            let mut meta = txn.open_table(META).map_err(storage)?;
            // Mirror writes go in the same transaction as the local ones.
            let mut outbox = if sh.outbox {
                Some(Outbox::open(&txn)?)
            } else {
                None
            };
            let mut mirror =
                |kind, ns: &str, key: &[u8], version, payload: &[u8]| match outbox.as_mut() {
                    Some(o) => o.push(ns, key, kind, version, payload),
                    None => Ok(()),
                };
            let mut acks = Vec::new();
            let skip = superseded(group);
            for (op, _) in group.iter().zip(skip).filter(|(_, skip)| !skip) {
                match op {
                    Op::Put {
                        ns,
                        key,
                        record,
                        version,
                        expires_at,
                        mirror: m,
                        ..
                    } => {
                        let put = Some(record.as_slice());
                        if !replace_older(
                            &mut entries,
                            &mut expiry,
                            ns,
                            key,
                            put,
                            *version,
                            &mut delta,
                        )? {
                            continue;
                        }
                        // Entries without a TTL are not indexed (format 3):
                        // the sweeper never wants them, and the disk bound
                        // finds them in `entries` (see `drop_unindexed`).
                        if *expires_at != u64::MAX {
                            expiry
                                .insert((*expires_at, *version, &*ns.name, &**key), ())
                                .map_err(storage)?;
                        }
                        if *m {
                            mirror(OutboxKind::Put, &ns.name, key, *version, record)?;
                        }
                    }
                    Op::Delete {
                        ns,
                        key,
                        version,
                        mirror: m,
                        ..
                    } => {
                        if replace_older(
                            &mut entries,
                            &mut expiry,
                            ns,
                            key,
                            None,
                            *version,
                            &mut delta,
                        )? && *m
                        {
                            mirror(OutboxKind::Delete, &ns.name, key, *version, &[])?;
                        }
                    }
                    Op::OutboxAck { items, .. } => {
                        acks.extend(items.iter());
                    }
                    Op::Epoch { ns, epoch, .. } => {
                        // Never lower a stored epoch (a retried group may
                        // carry an old bump).
                        let k = format!("{META_EPOCH_PREFIX}{}", ns.name);
                        let stored = meta
                            .get(k.as_str())
                            .map_err(storage)?
                            .and_then(|v| u64_from(v.value()))
                            .unwrap_or(0);
                        let e = stored.max(*epoch);
                        meta.insert(k.as_str(), e.to_le_bytes().as_slice())
                            .map_err(storage)?;
                        let name = ns.name.as_bytes();
                        mirror(OutboxKind::Epoch, EPOCH_NAMESPACE, name, e, &[])?;
                    }
                    Op::LoaderMeta { key, value, .. } => {
                        let mut t = txn.open_table(LOADER_META).map_err(storage)?;
                        match value {
                            Some(v) => t.insert(key.as_str(), v.as_slice()).map(drop),
                            None => t.remove(key.as_str()).map(drop),
                        }
                        .map_err(storage)?;
                    }
                    Op::Dict { ns, id, bytes, .. } => {
                        let d = postcard::to_allocvec(&(&*ns.name, bytes.as_slice()))
                            .map_err(|e| Arc::new(redb::Error::Corrupted(e.to_string())))?;
                        let k = dict_key(*id);
                        meta.insert(k.as_str(), d.as_slice()).map_err(storage)?;
                        let k = format!("{META_DICT_CURRENT_PREFIX}{}", ns.name);
                        meta.insert(k.as_str(), id.to_le_bytes().as_slice())
                            .map_err(storage)?;
                    }
                    Op::Flush(_) | Op::Maintain(_) | Op::Close(_) => {}
                }
            }
            if let Some(o) = outbox.as_mut() {
                for (ns, key, s) in acks {
                    if o.ack(ns, key, *s)? == Some(OutboxKind::Delete) {
                        // Before the commit makes the row's removal
                        // visible (see `Shared::fill_remote`).
                        sh.note_delete(ns, key);
                    }
                }
            }
            if let Some(o) = outbox {
                od = o.delta;
            }
            // The counters move at the commit: the open groups' deltas
            // count here too.
            self.write_counters(&mut meta, &self.open.delta.plus(&delta))?;
        }
        // The error: see `fault`.
        failpoint!("writer::commit", |arg: Option<String>| Err(fault(
            arg, "commit"
        )));
        let ops = group.len();
        self.open.delta = self.open.delta.plus(&delta);
        self.open.outbox.merge(&od);
        let bytes: usize = group.iter().map(Op::bytes).sum();
        if logged && self.defer(group, bytes) {
            failpoint!("writer::defer");
            self.open.bytes += bytes;
            self.open.ops.append(group);
            self.open.txn = Some(txn);
            self.open.groups.push((start.elapsed(), ops));
            return Ok(());
        }
        if logged {
            txn.commit().map_err(storage)?;
        } else {
            self.commit_durable(txn)?;
        }
        let open = std::mem::take(&mut self.open);
        for (took, n) in open.groups.iter().copied().chain([(start.elapsed(), ops)]) {
            self.count_group(took, n);
        }
        self.after_commit(&open.delta);
        let c = &sh.counters;
        c.outbox_rows.store(
            apply(c.outbox_rows.load(Ordering::Relaxed), open.outbox.rows),
            Ordering::Relaxed,
        );
        c.outbox_bytes.store(
            apply(c.outbox_bytes.load(Ordering::Relaxed), open.outbox.bytes),
            Ordering::Relaxed,
        );
        add(&c.outbox_coalesced, open.outbox.coalesced);
        for op in open.ops.iter().chain(group.iter()) {
            match op {
                Op::Put {
                    ns,
                    hash,
                    key,
                    version,
                    ..
                }
                | Op::Delete {
                    ns,
                    hash,
                    key,
                    version,
                    ..
                } => {
                    if matches!(op, Op::Delete { .. }) {
                        // Now that the commit is visible, before the
                        // pending entry goes (see `Shared::fill_remote`).
                        sh.note_delete(&ns.name, key);
                    }
                    sh.pending
                        .lock(*hash)
                        .remove_if(*hash, ns.id, key, *version);
                }
                Op::Epoch { ns, epoch, .. } => {
                    let known = self.purge.get(&*ns.name).map_or(0, |p| p.0);
                    self.purge
                        .insert(ns.name.to_string(), ((*epoch).max(known), Vec::new()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether a logged group leaves its transaction open for the next
    /// groups, which then share one redb commit (its B-tree pages are
    /// copied and checksummed once, not once per group; W5). Only while
    /// writes are queued already, so the commit comes soon, and while the
    /// transaction holds fewer than [`OPEN_MAX_OPS`] writes and
    /// `group_max_bytes` (`pending` holds them all until the commit; the
    /// group that commits adds its own). Never for a group with a flush
    /// (answered after a commit), when maintenance is due (it commits on its
    /// own), or once the cache is closing.
    fn defer(&self, group: &[Op], bytes: usize) -> bool {
        !self.rx.is_empty()
            && group
                .iter()
                .all(|o| matches!(o, Op::Put { .. } | Op::Delete { .. }))
            && self.open.ops.len() + group.len() < OPEN_MAX_OPS
            && self.open.bytes + bytes < self.shared.limits.group_max_bytes
            && self.last_maintenance.elapsed() < self.shared.limits.maintenance_interval
            && !self.shared.closed.load(Ordering::Acquire)
    }

    /// Persists the record and byte counts, the version high-water mark and
    /// the engine time, in the same transaction as the data.
    fn write_counters(
        &self,
        meta: &mut Table<&str, &[u8]>,
        d: &Delta,
    ) -> Result<(), Arc<redb::Error>> {
        let c = &self.shared.counters;
        let records = apply(c.records.load(Ordering::Relaxed), d.records);
        let bytes = apply(c.disk_bytes.load(Ordering::Relaxed), d.bytes);
        let hw = self.shared.next_version.load(Ordering::SeqCst);
        let now = self.shared.time.now_ms();
        for (k, v) in [
            (META_RECORDS, records),
            (META_BYTES, bytes),
            (META_VERSION_HW, hw),
            (META_TIME, now),
        ] {
            meta.insert(k, v.to_le_bytes().as_slice())
                .map_err(storage)?;
        }
        Ok(())
    }

    /// Counts a committed group of `ops` that took `took` as one group
    /// commit (groups that shared a transaction count one each, a deferred
    /// one with the time up to its deferral). Maintenance transactions are
    /// not counted.
    fn count_group(&self, took: Duration, ops: usize) {
        if ops == 0 {
            return;
        }
        let c = &self.shared.counters;
        let us = took.as_micros() as u64;
        add(&c.commits, 1);
        add(&c.committed_ops, ops as u64);
        add(&c.commit_micros_total, us);
        c.commit_micros_max.fetch_max(us, Ordering::Relaxed);
        self.shared.commit_latency.observe(us as f64 / 1e6);
    }

    fn after_commit(&self, d: &Delta) {
        let c = &self.shared.counters;
        c.records.store(
            apply(c.records.load(Ordering::Relaxed), d.records),
            Ordering::Relaxed,
        );
        c.disk_bytes.store(
            apply(c.disk_bytes.load(Ordering::Relaxed), d.bytes),
            Ordering::Relaxed,
        );
        // Bumped after the commit is visible and before pending entries go:
        // a reader that started before this commit will not fill the hot
        // tier from its older snapshot.
        self.shared.commit_seq.fetch_add(1, Ordering::SeqCst);
    }

    /// Sweep, disk bound, epoch purge and (when due) the hot-set snapshot.
    /// Errors are logged and counted; the next pass retries.
    fn maintain(&mut self) {
        if catch_unwind(AssertUnwindSafe(|| self.maintain_inner())).is_err() {
            add(&self.shared.counters.maintenance_errors, 1);
            tracing::error!("maintenance pass panicked; the next pass retries");
        }
    }

    fn maintain_inner(&mut self) {
        self.last_maintenance = Instant::now();
        self.retry_reopen();
        let snapshot_due = self.last_snapshot.elapsed() >= self.shared.limits.snapshot_interval;
        let steps: [(&str, Result<(), Arc<redb::Error>>); 5] = [
            ("expiry sweep", self.sweep_expired()),
            ("disk bound", self.enforce_disk_bound()),
            ("epoch purge", self.purge_old_epochs()),
            (
                "hot-set snapshot",
                if snapshot_due {
                    self.write_snapshot()
                } else {
                    Ok(())
                },
            ),
            ("log checkpoint", self.checkpoint()),
        ];
        for (step, r) in steps {
            if let Err(e) = r {
                add(&self.shared.counters.maintenance_errors, 1);
                tracing::warn!(error = %e, step, "maintenance step failed; the next pass retries");
            }
        }
        // Kept readers pin the pages later commits free, this pass's and
        // the snapshot's (which does not bump `commit_seq`) included.
        self.shared.readers.drop_idle();
    }

    /// Deletes entries whose expiry has passed, `sweep_batch` per
    /// transaction, until none is left.
    fn sweep_expired(&mut self) -> Result<(), Arc<redb::Error>> {
        failpoint!("writer::sweep", |_| Err(injected("expiry sweep")));
        // Keep expired entries for the longest stale-retention window of
        // any namespace (NamespacePolicy::max_stale): the index is keyed by
        // expiry alone, so it stays valid whatever policies a process uses.
        let now = self
            .shared
            .time
            .now_ms()
            .saturating_sub(self.shared.max_retention_ms);
        loop {
            let n = self.drop_from_index(Some(now), usize::MAX)?;
            if n < self.shared.limits.sweep_batch {
                return Ok(());
            }
        }
    }

    /// Drops what expires soonest, then entries without a TTL (oldest
    /// writes first within each window, see `drop_unindexed`), until the
    /// warm tier is back under 90 % of its byte bound.
    fn enforce_disk_bound(&mut self) -> Result<(), Arc<redb::Error>> {
        let cap = self.shared.warm_capacity;
        while self.shared.counters.disk_bytes.load(Ordering::Relaxed) > cap {
            let target = cap / 10 * 9;
            let over = self.shared.counters.disk_bytes.load(Ordering::Relaxed) - target;
            if self.drop_from_index(None, over as usize)? == 0
                && self.drop_unindexed(over as usize)? == 0
            {
                break;
            }
        }
        Ok(())
    }

    /// Deletes entries without a TTL, which the expiry index does not hold,
    /// until `free_bytes` are freed: reads the next `sweep_batch` records
    /// of `entries` from where the last call stopped (wrapping around) and
    /// drops the oldest writes (lowest versions) among them. One
    /// transaction; returns the number dropped.
    fn drop_unindexed(&mut self, free_bytes: usize) -> Result<usize, Arc<redb::Error>> {
        let sh = self.shared.clone();
        let batch = sh.limits.sweep_batch.max(1);
        let txn = sh.db()?.begin_write().map_err(storage)?;
        let mut delta = Delta::default();
        let mut dropped = 0;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(storage)?;
            let mut meta = txn.open_table(META).map_err(storage)?;
            // (version, namespace, key, key + record bytes)
            let mut window: Vec<(u64, String, Vec<u8>, usize)> = Vec::new();
            let mut scanned = 0;
            let (cns, ckey) = std::mem::take(&mut self.evict_cursor);
            // Reads from `from` up to (not including) `to`.
            let mut collect =
                |from: (&str, &[u8]), to: Option<(&str, &[u8])>, scanned: &mut usize| {
                    let mut last = None;
                    for item in entries.range(from..).map_err(storage)? {
                        if *scanned >= batch {
                            break;
                        }
                        let (k, v) = item.map_err(storage)?;
                        let (ns, key) = k.value();
                        if to.is_some_and(|t| (ns, key) >= t) {
                            break;
                        }
                        *scanned += 1;
                        last = Some((ns.to_string(), key.to_vec()));
                        if let Ok(h) = decode_header(v.value())
                            && h.expires_at == u64::MAX
                        {
                            let len = key.len() + v.value().len();
                            window.push((h.version, ns.to_string(), key.to_vec(), len));
                        }
                    }
                    Ok::<_, Arc<redb::Error>>(last)
                };
            let cursor = (cns.as_str(), ckey.as_slice());
            let mut last = collect(cursor, None, &mut scanned)?;
            if scanned < batch && cursor != ("", &[][..]) {
                // Wrap around to the start, up to where this walk began.
                last = collect(("", &[]), Some(cursor), &mut scanned)?.or(last);
            }
            if let Some((ns, mut key)) = last {
                // Resume just after the last record read.
                key.push(0);
                self.evict_cursor = (ns, key);
            }
            window.sort_unstable_by_key(|w| w.0);
            let mut freed = 0usize;
            for (_, ns, key, len) in window {
                if freed >= free_bytes {
                    break;
                }
                entries
                    .remove((ns.as_str(), key.as_slice()))
                    .map_err(storage)?;
                delta.remove(len);
                freed += len;
                dropped += 1;
                if let Ok(n) = sh.ns.get(&ns) {
                    add(&n.counters.warm_evictions, 1);
                }
            }
            self.write_counters(&mut meta, &delta)?;
        }
        self.finish_maintenance(txn, &delta, dropped > 0)?;
        Ok(dropped)
    }

    /// Walks the expiry index from its start and deletes entries: those
    /// expired by `expired_by` (sweep), or any until `free_bytes` are freed
    /// (disk bound). One transaction, at most `sweep_batch` entries.
    fn drop_from_index(
        &mut self,
        expired_by: Option<u64>,
        free_bytes: usize,
    ) -> Result<usize, Arc<redb::Error>> {
        let sh = self.shared.clone();
        let batch = sh.limits.sweep_batch;
        let txn = sh.db()?.begin_write().map_err(storage)?;
        let mut delta = Delta::default();
        let mut dropped = 0;
        {
            let mut entries = txn.open_table(ENTRIES).map_err(storage)?;
            let mut expiry = txn.open_table(EXPIRY).map_err(storage)?;
            let mut meta = txn.open_table(META).map_err(storage)?;
            let upper = expired_by.unwrap_or(u64::MAX);
            let victims: Vec<IndexEntry> = expiry
                .iter()
                .map_err(storage)?
                .take(batch)
                .map(|r| {
                    r.map(|(k, _)| {
                        let (exp, ver, ns, key) = k.value();
                        (exp, ver, ns.to_string(), key.to_vec())
                    })
                })
                .take_while(|r| r.as_ref().map_or(true, |v| v.0 <= upper))
                .collect::<Result<_, _>>()
                .map_err(storage)?;
            let mut freed = 0usize;
            for (exp, ver, ns, key) in victims {
                if expired_by.is_some() && exp == u64::MAX {
                    break;
                }
                if expired_by.is_none() && freed >= free_bytes {
                    break;
                }
                expiry
                    .remove((exp, ver, ns.as_str(), key.as_slice()))
                    .map_err(storage)?;
                let old = entries
                    .get((ns.as_str(), key.as_slice()))
                    .map_err(storage)?
                    .map(|v| (decode_header(v.value()).ok(), v.value().len()));
                if let Some((Some(h), len)) = old
                    && h.version == ver
                {
                    entries
                        .remove((ns.as_str(), key.as_slice()))
                        .map_err(storage)?;
                    delta.remove(key.len() + len);
                    freed += key.len() + len;
                    if let Ok(n) = sh.ns.get(&ns) {
                        let c = if expired_by.is_some() {
                            // Reclaim the hot copy's memory too (unless a
                            // newer write replaced it); it could only be
                            // found dead by eviction otherwise.
                            let hash = sh.hot.hash(n.id, &key);
                            sh.hot.remove(hash, n.id, &key, ver);
                            &n.counters.expirations
                        } else {
                            &n.counters.warm_evictions
                        };
                        add(c, 1);
                    }
                }
                dropped += 1;
            }
            self.write_counters(&mut meta, &delta)?;
        }
        self.finish_maintenance(txn, &delta, dropped > 0)?;
        Ok(dropped)
    }

    /// Ends a maintenance transaction: committed when it changed something,
    /// else aborted (no commit, no fsync for an idle cache).
    fn finish_maintenance(
        &mut self,
        txn: redb::WriteTransaction,
        delta: &Delta,
        changed: bool,
    ) -> Result<(), Arc<redb::Error>> {
        if !changed {
            return txn.abort().map_err(storage);
        }
        self.commit_durable(txn)?;
        self.after_commit(delta);
        Ok(())
    }

    /// Deletes records of old epochs, `sweep_batch` per pass and namespace.
    fn purge_old_epochs(&mut self) -> Result<(), Arc<redb::Error>> {
        let sh = self.shared.clone();
        let names: Vec<String> = self.purge.keys().cloned().collect();
        for name in names {
            let Some((epoch, cursor)) = self.purge.get(&name).cloned() else {
                continue;
            };
            let txn = sh.db()?.begin_write().map_err(storage)?;
            let mut delta = Delta::default();
            let mut finished = true;
            let mut next = Vec::new();
            {
                let mut entries = txn.open_table(ENTRIES).map_err(storage)?;
                let mut expiry = txn.open_table(EXPIRY).map_err(storage)?;
                let mut meta = txn.open_table(META).map_err(storage)?;
                let mut stale = Vec::new();
                for item in entries
                    .range((name.as_str(), cursor.as_slice())..)
                    .map_err(storage)?
                {
                    let (k, v) = item.map_err(storage)?;
                    let (n, key) = k.value();
                    if n != name {
                        break;
                    }
                    if stale.len() >= sh.limits.sweep_batch {
                        finished = false;
                        next = key.to_vec();
                        break;
                    }
                    match decode_header(v.value()) {
                        Ok(h) if h.epoch < epoch => stale.push((key.to_vec(), h, v.value().len())),
                        _ => {}
                    }
                }
                for (key, h, len) in stale {
                    entries
                        .remove((name.as_str(), key.as_slice()))
                        .map_err(storage)?;
                    if h.expires_at != u64::MAX {
                        expiry
                            .remove((h.expires_at, h.version, name.as_str(), key.as_slice()))
                            .map_err(storage)?;
                    }
                    delta.remove(key.len() + len);
                }
                self.write_counters(&mut meta, &delta)?;
            }
            self.finish_maintenance(txn, &delta, delta.records != 0)?;
            if finished {
                self.purge.remove(&name);
            } else {
                self.purge.insert(name, (epoch, next));
            }
        }
        Ok(())
    }

    /// Writes the hot keys, hottest first, for the warm-up after a restart.
    fn write_snapshot(&mut self) -> Result<(), Arc<redb::Error>> {
        self.last_snapshot = Instant::now();
        let sh = &self.shared;
        if matches!(sh.source, Source::Memory) {
            // Nothing survives an in-memory cache: ranking, sorting and
            // encoding every hot key (with the shards' read locks taken;
            // about a second at 1 M keys) would serve no restart.
            return Ok(());
        }
        let keys = sh.hot.hottest(usize::MAX);
        let mut named: Vec<(String, Vec<u8>)> = keys
            .into_iter()
            .filter_map(|(id, k)| sh.ns.by_id(id).map(|n| (n.name.to_string(), k.into_vec())))
            .collect();
        if sh.counters.warmup_done.load(Ordering::Acquire) == 0 {
            // Closing before the warm-up finished: the hot tier holds only
            // part of what was hot. Keep the rest of the old snapshot after
            // it, so a short-lived process does not make the next start cold.
            // Bounded by the longer of the two, so repeated short runs do
            // not grow it.
            let seen: HashSet<(String, Vec<u8>)> = named.iter().cloned().collect();
            let old = sh.read_snapshot();
            let limit = old.len().max(named.len());
            named.extend(old.into_iter().filter(|e| !seen.contains(e)));
            named.truncate(limit);
        }
        let bytes = postcard::to_allocvec(&named)
            .map_err(|e| Arc::new(redb::Error::Corrupted(e.to_string())))?;
        let txn = sh.db()?.begin_write().map_err(storage)?;
        {
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(META_HOT_SNAPSHOT, bytes.as_slice())
                .map_err(storage)?;
            // Engine time too: an idle cache commits nothing else, and this
            // is the restart floor that keeps a clock stepped back across a
            // crash from reviving expired entries kept for stale reads.
            self.write_counters(&mut meta, &Delta::default())?;
        }
        self.commit_durable(txn)
    }
}

/// The most waiting ops a group lingers for: twice the cores, at least 4.
/// A woken caller needs a CPU to come back with its next write, so beyond
/// about this many the stragglers return one after another, and waiting
/// for them idles the disk; they form the next group while this one
/// commits.
/// With 64 `Sync` writers on 2 cores, waiting for all of them took half of
/// each commit cycle (W5 w5prof: 47 k → 57 k writes/s with a cap of 16);
/// with 16 writers a cap of 4 rather than 16 commits ~10 writes per fsync
/// instead of ~14, at a higher rate (eight alternating pairs: 53.6 k
/// against 49.9 k writes/s, median per-pair gain +7 %), and 4 and 64
/// writers are unchanged; a cap of 2 (what 2 cores alone would give)
/// loses at 4 writers.
fn linger_max_waiters() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (2 * cores).max(4)
}

/// The most writes logged groups leave in one open transaction
/// ([`Writer::defer`]).
const OPEN_MAX_OPS: usize = 1024;

/// What the last commit tells `gather` about the callers in flight.
#[derive(Default)]
struct Pace {
    /// Ops of the last committed group that somebody waited for, answered
    /// after its commit.
    waiters: usize,
    /// Writes of the last committed group answered before its commit (from
    /// the log): their callers may be back in the queue already.
    early: usize,
    /// Ops in the queue when that commit finished.
    backlog: usize,
    /// How long that commit took.
    took: Duration,
    /// Counts the writes of the group being committed as they are answered
    /// from the log; becomes `early`.
    answered_early: usize,
}

impl Pace {
    fn committed(&mut self, group: &[Op], backlog: usize, took: Duration) {
        self.waiters = group.iter().filter(|o| o.urgent()).count();
        self.early = std::mem::take(&mut self.answered_early);
        self.backlog = backlog;
        self.took = took;
    }

    /// The longest an urgent group waits for callers expected back.
    fn linger(&self) -> Duration {
        (self.took / 2).min(Duration::from_millis(1))
    }
}

/// Marks the writes of `group` that a later write of the same key in the
/// same group replaces. Per key, queue order is version order, so applying
/// only the last one commits the same state with less work: hot keys are
/// rewritten many times within one group.
fn superseded(group: &[Op]) -> Vec<bool> {
    let mut last: HashMap<(u32, &[u8]), usize> = HashMap::with_capacity(group.len());
    for (i, op) in group.iter().enumerate() {
        if let Some(t) = op.target() {
            last.insert(t, i);
        }
    }
    group
        .iter()
        .enumerate()
        .map(|(i, op)| op.target().is_some_and(|t| last[&t] != i))
        .collect()
}

/// An expiry-index key read out of its table: (expires_at, version, namespace, key).
type IndexEntry = (u64, u64, String, Vec<u8>);

/// Record-count and byte changes of one transaction.
#[derive(Default)]
struct Delta {
    records: i64,
    bytes: i64,
}

impl Delta {
    fn plus(&self, other: &Delta) -> Delta {
        Delta {
            records: self.records + other.records,
            bytes: self.bytes + other.bytes,
        }
    }

    fn add(&mut self, bytes: usize) {
        self.records += 1;
        self.bytes += bytes as i64;
    }
    fn remove(&mut self, bytes: usize) {
        self.records -= 1;
        self.bytes -= bytes as i64;
    }
}

fn apply(base: u64, d: i64) -> u64 {
    base.saturating_add_signed(d)
}

/// Puts `record` under the key (`None`: removes the key) unless the record
/// stored there is newer than `version`; then the stored one stays, and
/// `false` says the write was dropped. The old record's expiry index entry
/// goes with it. One B-tree descent in the common case: redb's `insert` and
/// `remove` hand back the value they replaced, so the old record is judged
/// after the fact and put back in the rare case it was newer (a replay or a
/// retried group older than what is stored).
fn replace_older(
    entries: &mut Table<(&str, &[u8]), &[u8]>,
    expiry: &mut Table<(u64, u64, &str, &[u8]), ()>,
    ns: &Namespace,
    key: &[u8],
    record: Option<&[u8]>,
    version: u64,
    delta: &mut Delta,
) -> Result<bool, Arc<redb::Error>> {
    let ns = &*ns.name;
    let old = match record {
        Some(r) => entries.insert((ns, key), r),
        None => entries.remove((ns, key)),
    }
    .map_err(storage)?
    .map(|v| {
        let v = v.value();
        // Only a record whose checksum holds can claim to be newer: a
        // damaged version field must not make the writer drop this write.
        let h = super::record::decode_header_verified(v).ok();
        let newer = h.as_ref().is_some_and(|h| h.version > version);
        (h, v.len(), newer.then(|| v.to_vec()))
    });
    match old {
        None => {}
        Some((_, _, Some(newer))) => {
            entries
                .insert((ns, key), newer.as_slice())
                .map_err(storage)?;
            return Ok(false);
        }
        Some((h, len, None)) => {
            // A record whose header is unreadable leaves a dangling index
            // entry; the sweeper drops index entries that match no record.
            if let Some(h) = h
                && h.expires_at != u64::MAX
            {
                expiry
                    .remove((h.expires_at, h.version, ns, key))
                    .map_err(storage)?;
            }
            delta.remove(key.len() + len);
        }
    }
    if let Some(r) = record {
        delta.add(key.len() + r.len());
    }
    Ok(true)
}

/// What a durable commit (a maintenance step, the snapshot) fails with
/// while a reopened database still waits for its replay. A group commit
/// never meets it: it replays first, and fails with the replay's error.
fn not_replayed() -> Arc<redb::Error> {
    storage(redb::Error::Io(std::io::Error::other(
        "the write-ahead log is not replayed into the reopened database yet",
    )))
}

/// `writer::durable_commit`: a durable commit that reached the disk
/// reports an error anyway, as one whose fsync failed after its pages
/// landed can (`return`: an I/O error; `return(other)`: another error).
fn landed_but_failed() -> Result<(), Arc<redb::Error>> {
    failpoint!("writer::durable_commit", |arg: Option<String>| Err(fault(
        arg,
        "durable commit"
    )));
    Ok(())
}

/// The error a commit fault injects: an I/O error, or with the argument
/// `other` (`return(other)`) one that is not I/O, which makes the writer
/// retry without reopening the database.
#[cfg(feature = "failpoints")]
fn fault(arg: Option<String>, what: &str) -> Arc<redb::Error> {
    match arg.as_deref() {
        Some("other") => Arc::new(redb::Error::Corrupted("injected".into())),
        _ => injected(what),
    }
}

/// An I/O error standing for a failure that did not come from redb.
fn injected(what: &str) -> Arc<redb::Error> {
    Arc::new(redb::Error::Io(std::io::Error::other(format!(
        "{what} failed"
    ))))
}

fn reply_all(group: &mut [Op], result: Result<(), WriteError>) {
    for op in group.iter_mut() {
        if let Some(d) = op.done() {
            d.send(result.clone());
        }
    }
}
