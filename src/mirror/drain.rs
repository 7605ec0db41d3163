//! The drain: outbox → Redis in pipelined, versioned batches; health
//! checks (did Redis lose our data?) and the resync that follows.
//!
//! Every Redis call goes through the breaker: while it is open nothing is
//! sent except the half-open probes (a probe is one whole step: connect
//! if needed, then one batch or check). Rows leave the outbox only after
//! Redis answered the batch that carried them. The acknowledgement of a
//! batch (a writer commit) runs while the next batch is on the wire; the
//! next peek skips the rows still being acknowledged.

use super::conn::Conn;
use super::{Inner, MSG_DELETE, MSG_EPOCH, Message, count_error};
use crate::engine::Shared;
use crate::load::CallOutcome;
use crate::stats::add;
use crate::store::outbox::{OutboxItem, OutboxKind};
use crate::store::record::decode_header_verified;
use crate::store::tables::ENTRIES;
use crate::store::writer::Op;
use redb::ReadableDatabase;
use redis::{RedisError, RedisResult, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The persisted id of this cache directory, used as its field in the
/// marker hash and as the origin of its pub/sub messages.
pub(crate) fn instance_id(sh: &Shared) -> u64 {
    const KEY: &str = "mirror/instance";
    if let Some(v) = sh.loader_meta_get(KEY)
        && let Ok(b) = <[u8; 8]>::try_from(v.as_slice())
    {
        return u64::from_le_bytes(b);
    }
    let id = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(sh.time.now_ms());
        h.finish() | 1
    };
    let _ = sh.send(Op::LoaderMeta {
        key: KEY.into(),
        value: Some(id.to_le_bytes().to_vec()),
        done: None,
    });
    id
}

/// Opens a connection (single server, cluster or Sentinel master) with
/// the configured timeouts.
pub(crate) async fn connect(inner: &Inner) -> RedisResult<Conn> {
    inner.target.connect(&inner.cfg).await
}

fn timeout_error() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis call timed out",
    ))
}

/// Adds one EVALSHA of the versioned-write script to `pipe`. `until` is
/// the absolute expiry of a put's record (0 for none, and for the other
/// modes), which caps the PX when the write is applied late.
#[allow(clippy::too_many_arguments)]
pub(crate) fn push_write(
    inner: &Inner,
    pipe: &mut redis::Pipeline,
    key: &[u8],
    mode: &str,
    version: u64,
    px: u64,
    until: u64,
    record: &[u8],
    msg: &[u8],
) {
    pipe.cmd("EVALSHA")
        .arg(inner.script.get_hash())
        .arg(1)
        .arg(key)
        .arg(mode)
        .arg(version)
        .arg(px)
        .arg(record)
        .arg(inner.keys.channel())
        .arg(msg)
        .arg(until);
}

/// Runs a pipeline of script calls, loading the script once on NOSCRIPT
/// (on every node of a cluster: a master restarted empty has lost it).
/// Returns one `(applied, stored version)` per call; a server error in any
/// call fails the batch (nothing is acknowledged).
pub(crate) async fn run_writes(
    inner: &Inner,
    conn: &mut Conn,
    pipe: &redis::Pipeline,
) -> RedisResult<Vec<(bool, u64)>> {
    for attempt in 0..2 {
        // Per-call errors come back as values, so NOSCRIPT can be told apart.
        let vals: Vec<Value> = conn.run(pipe).await?;
        let noscript = vals
            .iter()
            .any(|v| matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT"));
        if noscript && attempt == 0 {
            conn.load_script(&inner.script).await?;
            continue;
        }
        let mut out = Vec::with_capacity(vals.len());
        for v in vals {
            match v {
                Value::Array(a) if a.len() == 2 => {
                    let n = |v: &Value| match v {
                        Value::Int(i) => Some(*i as u64),
                        _ => None,
                    };
                    match (n(&a[0]), n(&a[1])) {
                        (Some(applied), Some(cur)) => out.push((applied == 1, cur)),
                        _ => {
                            return Err(RedisError::from((
                                redis::ErrorKind::Parse,
                                "bad script reply",
                            )));
                        }
                    }
                }
                Value::ServerError(e) => return Err(e.into()),
                _ => {
                    return Err(RedisError::from((
                        redis::ErrorKind::Parse,
                        "bad script reply",
                    )));
                }
            }
        }
        return Ok(out);
    }
    Err(RedisError::from((
        redis::ErrorKind::Server(redis::ServerErrorKind::NoScript),
        "script not loaded",
    )))
}

/// A local entry: (namespace, key, record).
pub(crate) type LocalEntry = (String, Vec<u8>, Vec<u8>);

/// Up to `n` local entries after `after`, in key order: (namespace, key, record).
pub(crate) fn local_page(
    sh: &Shared,
    after: Option<&(String, Vec<u8>)>,
    n: usize,
) -> Result<Vec<LocalEntry>, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        local_page_unguarded(sh, after, n)
    }))
    .unwrap_or_else(|p| Err(sh.damaged_or_resume("a resync read", p).to_string()))
}

fn local_page_unguarded(
    sh: &Shared,
    after: Option<&(String, Vec<u8>)>,
    n: usize,
) -> Result<Vec<LocalEntry>, String> {
    let db = sh.db().map_err(|e| e.to_string())?;
    let r = db.begin_read().map_err(|e| e.to_string())?;
    let t = r.open_table(ENTRIES).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(n);
    let range = match after {
        Some((ns, key)) => t.range((ns.as_str(), key.as_slice())..),
        None => t.range::<(&str, &[u8])>(..),
    }
    .map_err(|e| e.to_string())?;
    for item in range {
        let (k, v) = item.map_err(|e| e.to_string())?;
        let (ns, key) = k.value();
        if after.is_some_and(|(a, b)| a == ns && b.as_slice() == key) {
            continue;
        }
        out.push((ns.to_string(), key.to_vec(), v.value().to_vec()));
        if out.len() >= n {
            break;
        }
    }
    Ok(out)
}

/// The drain's connection and bookkeeping.
struct Link {
    conn: Option<Conn>,
    instance: u64,
    /// Set when Redis lost our data: push everything local.
    resync: Option<Resync>,
    last_check: Option<Instant>,
    /// Reads per namespace already reported to the heat zset.
    heat_sent: HashMap<String, u64>,
}

struct Resync {
    run_id: String,
    after: Option<(String, Vec<u8>)>,
    epochs_done: bool,
}

/// The acknowledgement of the last answered batch, committing in the
/// writer while the next batch is on the wire. At most one at a time.
struct InFlight {
    /// Its rows' outbox positions: the next peek skips them.
    seqs: HashSet<u64>,
    done: tokio::task::JoinHandle<RedisResult<()>>,
}

/// Waits for the acknowledgement in flight, if any. A failed one leaves
/// its rows in the outbox, to be sent again (the script makes that
/// harmless); it pauses briefly so a failing writer is not raced.
async fn settle(inner: &Inner, in_flight: &mut Option<InFlight>) {
    let Some(f) = in_flight.take() else { return };
    let r = match f.done.await {
        Ok(r) => r,
        Err(e) => Err(RedisError::from(std::io::Error::other(e.to_string()))),
    };
    if let Err(e) = r {
        count_error(inner, "outbox ack", &e);
        inner.pause(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn run(inner: Arc<Inner>, sh: Arc<Shared>) {
    let mut in_flight: Option<InFlight> = None;
    let mut link = Link {
        conn: None,
        instance: inner.origin,
        resync: None,
        last_check: None,
        heat_sent: HashMap::new(),
    };
    let mut stop_deadline: Option<Instant> = None;
    loop {
        if inner.stopping() {
            let d =
                *stop_deadline.get_or_insert_with(|| Instant::now() + inner.cfg.command_timeout);
            if Instant::now() >= d {
                break;
            }
        }
        let peeked = {
            let sh = sh.clone();
            // Room for the rows whose acknowledgement is still committing.
            let n = inner.cfg.batch + in_flight.as_ref().map_or(0, |f| f.seqs.len());
            tokio::task::spawn_blocking(move || {
                // Off the runtime's workers: a test holds the drain here.
                failpoint!("mirror::drain");
                sh.db()
                    .map_err(|e| e.to_string())
                    .and_then(|db| crate::store::outbox::peek(&db, n).map_err(|e| e.to_string()))
            })
            .await
        };
        let mut items = match peeked {
            Ok(Ok(items)) => items,
            _ => {
                // The warm tier is being reopened; try again shortly.
                inner.pause(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Some(f) = &in_flight {
            items.retain(|it| !f.seqs.contains(&it.seq));
            items.truncate(inner.cfg.batch);
            if items.is_empty() {
                // Nothing beyond the rows being acknowledged: let that
                // commit land before judging the outbox empty.
                settle(&inner, &mut in_flight).await;
                continue;
            }
        }
        {
            let mut lag = inner.lag_since.lock();
            if items.is_empty() {
                *lag = None;
            } else if lag.is_none() {
                *lag = Some(Instant::now());
            }
        }
        let check_due = link
            .last_check
            .is_none_or(|t| t.elapsed() >= inner.cfg.check_interval);
        let work = if link.resync.is_some() && !inner.stopping() {
            Step::Resync
        } else if !items.is_empty() {
            Step::Batch(items)
        } else if inner.stopping() {
            break;
        } else if check_due {
            Step::Check
        } else {
            inner.pause(inner.cfg.poll_interval).await;
            continue;
        };
        let now = sh.time.now_ms();
        let permit = match inner.breaker.try_acquire(now) {
            Ok(p) => p,
            Err(open) => {
                if inner.stopping() {
                    break;
                }
                let wait = open
                    .retry_after
                    .clamp(Duration::from_millis(5), Duration::from_millis(100));
                inner.pause(wait).await;
                continue;
            }
        };
        let start = Instant::now();
        let r = match tokio::time::timeout(
            inner.cfg.command_timeout + inner.cfg.connect_timeout,
            link.step(&inner, &sh, work),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(timeout_error()),
        };
        let took = start.elapsed();
        inner.observe(took);
        let outcome = match &r {
            Ok(_) => CallOutcome::Success,
            Err(e) => {
                count_error(&inner, "redis call", e);
                if super::auth_error(e) {
                    // Retrying cannot help: say what to fix. Retried at the
                    // breaker's pace (up to 30 s apart), so no flood.
                    let hint = "Redis refused our login: check the password (in the \
                                server's or sentinels' URLs; for the master behind Sentinel, \
                                sentinel_master_password or \
                                EMBERCACHE_REDIS_SENTINEL_MASTER_PASSWORD)";
                    tracing::error!(error = %e, "mirror: {hint}");
                    *inner.last_error.lock() = Some(format!("redis call failed: {e}; {hint}"));
                }
                link.conn = None;
                inner.counters.connected.store(0, Ordering::Relaxed);
                CallOutcome::Failure
            }
        };
        permit.record(outcome, took, sh.time.now_ms());
        match r {
            Ok(Some(answered)) => {
                // Pipelined acknowledgements: the previous batch's commit
                // had this batch's round trip to finish; this batch's
                // commit overlaps the next one. Acks go by version, so a
                // row rewritten meanwhile stays.
                settle(&inner, &mut in_flight).await;
                let seqs = answered.iter().map(|i| i.seq).collect();
                let sh = sh.clone();
                in_flight = Some(InFlight {
                    seqs,
                    done: tokio::spawn(async move { ack(&sh, answered).await }),
                });
            }
            Ok(None) => {}
            Err(_) => {
                if inner.stopping() {
                    break;
                }
                inner.pause(Duration::from_millis(20)).await;
            }
        }
    }
    settle(&inner, &mut in_flight).await;
    inner.counters.connected.store(0, Ordering::Relaxed);
}

enum Step {
    Batch(Vec<OutboxItem>),
    Check,
    Resync,
}

impl Link {
    async fn conn(&mut self, inner: &Inner) -> RedisResult<&mut Conn> {
        if self.conn.is_none() {
            let c = connect(inner).await?;
            inner.counters.connected.store(1, Ordering::Relaxed);
            if let Conn::Cluster(_) = &c {
                // The read path shares it, so a read need not connect.
                inner.cluster_read.lock().get_or_insert_with(|| c.clone());
            }
            self.conn = Some(c);
            // A new connection may be to a restarted Redis: check first.
            self.last_check = None;
        }
        Ok(self.conn.as_mut().expect("just set"))
    }

    /// One call to Redis; for a batch, the rows Redis answered (to be
    /// acknowledged by the caller).
    async fn step(
        &mut self,
        inner: &Inner,
        sh: &Arc<Shared>,
        work: Step,
    ) -> RedisResult<Option<Vec<OutboxItem>>> {
        let fresh = self.conn.is_none();
        self.conn(inner).await?;
        if fresh || self.last_check.is_none() {
            self.check(inner, sh).await?;
        }
        match work {
            Step::Batch(items) => self.batch(inner, sh, items).await.map(Some),
            Step::Check => {
                if self.last_check.is_some() {
                    self.check(inner, sh).await?;
                }
                Ok(None)
            }
            Step::Resync => self.resync_page(inner, sh).await.map(|()| None),
        }
    }

    /// Compares Redis's run_id (every master's, for a cluster) with the one
    /// our marker field names; a mismatch (restart that lost data, FLUSHALL,
    /// a new Redis, a failover to a replica) starts a resync. Also reports
    /// namespace heat for warm starts.
    async fn check(&mut self, inner: &Inner, sh: &Shared) -> RedisResult<()> {
        let instance = self.instance;
        let mut heat = Vec::new();
        for ns in sh.ns.all() {
            let c = &ns.counters;
            let reads = crate::stats::get(&c.hot_hits) + crate::stats::get(&c.warm_hits);
            let prev = self.heat_sent.get(&*ns.name).copied().unwrap_or(0);
            if reads > prev {
                heat.push((ns.name.to_string(), reads - prev, reads));
            }
        }
        let conn = self.conn(inner).await?;
        let run_id = conn.run_ids().await?;
        let mut hget = redis::cmd("HGET");
        hget.arg(inner.keys.marker()).arg(instance);
        let marker: Option<String> = conn.query(&hget).await?;
        if !heat.is_empty() {
            let mut pipe = redis::pipe();
            for (ns, delta, _) in &heat {
                pipe.cmd("ZINCRBY")
                    .arg(inner.keys.heat())
                    .arg(*delta)
                    .arg(ns);
            }
            conn.run(&pipe).await?;
        }
        for (ns, _, total) in heat {
            self.heat_sent.insert(ns, total);
        }
        self.last_check = Some(Instant::now());
        if marker.as_deref() != Some(run_id.as_str())
            && self.resync.as_ref().is_none_or(|r| r.run_id != run_id)
        {
            tracing::warn!(
                run_id = %run_id,
                marker = marker.as_deref().unwrap_or("none"),
                "mirror: Redis does not hold our data (new, restarted or flushed); resyncing"
            );
            add(&inner.counters.resyncs, 1);
            self.resync = Some(Resync {
                run_id,
                after: None,
                epochs_done: false,
            });
        }
        Ok(())
    }

    /// Pushes one page of live local entries (epochs first); the last page
    /// sets our marker field to Redis's run_id.
    async fn resync_page(&mut self, inner: &Inner, sh: &Shared) -> RedisResult<()> {
        let Some(rs) = self.resync.as_ref() else {
            return Ok(());
        };
        let mut pipe = redis::pipe();
        let mut n = 0;
        let epochs_done = rs.epochs_done;
        if !epochs_done {
            for ns in sh.ns.all() {
                let e = ns.epoch();
                if e > 0 {
                    let msg = Message {
                        kind: MSG_EPOCH,
                        version: e,
                        origin: self.instance,
                        ns: ns.name.to_string(),
                        key: Vec::new(),
                    };
                    push_write(
                        inner,
                        &mut pipe,
                        &inner.keys.epoch(&ns.name),
                        "e",
                        e,
                        0,
                        0,
                        b"",
                        &msg.encode(),
                    );
                    n += 1;
                }
            }
        }
        let after = rs.after.clone();
        let page = {
            let batch = inner.cfg.batch;
            let sh_db = sh.db();
            let r = match sh_db {
                Ok(_) => local_page(sh, after.as_ref(), batch),
                Err(e) => Err(e.to_string()),
            };
            r.map_err(|e| RedisError::from(std::io::Error::other(e)))?
        };
        let now = sh.time.now_ms();
        let last = page.last().map(|(ns, k, _)| (ns.clone(), k.clone()));
        let full = page.len() >= inner.cfg.batch;
        for (ns_name, key, rec) in &page {
            let Ok(h) = decode_header_verified(rec) else {
                continue;
            };
            let Ok(ns) = sh.ns.get(ns_name) else { continue };
            if h.epoch != ns.epoch() {
                continue;
            }
            if h.expires_at <= now {
                // Expired here: make sure no older live copy survives there.
                let tomb = inner.cfg.tombstone_ttl.as_millis().max(1) as u64;
                push_write(
                    inner,
                    &mut pipe,
                    &inner.keys.data(ns_name, key),
                    "d",
                    h.version,
                    tomb,
                    0,
                    b"",
                    b"",
                );
                n += 1;
                continue;
            }
            let (px, until) = if h.expires_at == u64::MAX {
                (0, 0)
            } else {
                (h.expires_at - now, h.expires_at)
            };
            let rec = match sh.portable(ns_name, rec, &h) {
                Ok(rec) => rec,
                Err(e) => {
                    count_error(inner, "resync record", &e);
                    continue;
                }
            };
            push_write(
                inner,
                &mut pipe,
                &inner.keys.data(ns_name, key),
                "p",
                h.version,
                px,
                until,
                &rec,
                b"",
            );
            n += 1;
        }
        let instance = self.instance;
        if n > 0 {
            let conn = self.conn(inner).await?;
            let res = run_writes(inner, conn, &pipe).await?;
            tally(inner, sh, &res);
            add(&inner.counters.resync_keys, res.len() as u64);
        }
        let rs = self.resync.as_mut().expect("checked above");
        rs.epochs_done = true;
        if full {
            rs.after = last;
        } else {
            let run_id = rs.run_id.clone();
            let conn = self.conn(inner).await?;
            let mut hset = redis::cmd("HSET");
            hset.arg(inner.keys.marker()).arg(instance).arg(&run_id);
            conn.query::<()>(&hset).await?;
            self.resync = None;
            tracing::info!(run_id = %run_id, "mirror: resync done");
        }
        Ok(())
    }

    /// Sends one outbox batch; returns its rows once Redis answered, for
    /// the caller to acknowledge.
    async fn batch(
        &mut self,
        inner: &Inner,
        sh: &Arc<Shared>,
        items: Vec<OutboxItem>,
    ) -> RedisResult<Vec<OutboxItem>> {
        let now = sh.time.now_ms();
        let tomb = inner.cfg.tombstone_ttl.as_millis().max(1) as u64;
        let mut pipe = redis::pipe();
        let mut kinds = Vec::with_capacity(items.len());
        for it in &items {
            match it.kind {
                OutboxKind::Put | OutboxKind::Delete => {
                    // `Some((px, until, header))` to store the record, `None`
                    // for a tombstone.
                    let store = if it.kind == OutboxKind::Put {
                        let Ok(h) = decode_header_verified(&it.record) else {
                            // Cannot happen for a row we wrote; never send garbage.
                            count_error(inner, "outbox record", &"checksum mismatch");
                            continue;
                        };
                        if h.expires_at <= now {
                            // Never resurrect or extend: an expired write is
                            // not sent, but it still replaces any older value
                            // Redis may hold (which could outlive it).
                            add(&inner.counters.expired_skipped, 1);
                            None
                        } else if h.expires_at == u64::MAX {
                            Some((0, 0, h))
                        } else {
                            Some((h.expires_at - now, h.expires_at, h))
                        }
                    } else {
                        None
                    };
                    let key = inner.keys.data(&it.namespace, &it.key);
                    match store {
                        // Never a record another host lacks the dictionary of.
                        Some((px, until, h)) => match sh.portable(&it.namespace, &it.record, &h) {
                            Ok(rec) => push_write(
                                inner, &mut pipe, &key, "p", it.version, px, until, &rec, b"",
                            ),
                            Err(e) => {
                                count_error(inner, "outbox record", &e);
                                continue;
                            }
                        },
                        None => {
                            let msg = Message {
                                kind: MSG_DELETE,
                                version: it.version,
                                origin: self.instance,
                                ns: it.namespace.clone(),
                                key: it.key.clone(),
                            };
                            let m = msg.encode();
                            push_write(inner, &mut pipe, &key, "d", it.version, tomb, 0, b"", &m);
                        }
                    }
                    kinds.push(None);
                }
                _ => {
                    // Epoch: the namespace name is the key.
                    let ns = String::from_utf8_lossy(&it.key).into_owned();
                    let msg = Message {
                        kind: MSG_EPOCH,
                        version: it.version,
                        origin: self.instance,
                        ns: ns.clone(),
                        key: Vec::new(),
                    };
                    let key = inner.keys.epoch(&ns);
                    push_write(
                        inner,
                        &mut pipe,
                        &key,
                        "e",
                        it.version,
                        0,
                        0,
                        b"",
                        &msg.encode(),
                    );
                    kinds.push(Some(ns));
                }
            }
        }
        if !kinds.is_empty() {
            let conn = self.conn(inner).await?;
            let res = run_writes(inner, conn, &pipe).await?;
            add(&inner.counters.batches, 1);
            for ((applied, cur), ns) in res.iter().zip(&kinds) {
                // Redis holds a newer epoch: another instance invalidated.
                if let Some(ns) = ns
                    && !applied
                {
                    let _ = sh.raise_epoch(ns, *cur);
                }
            }
            tally(inner, sh, &res);
        }
        Ok(items)
    }
}

/// Counts script results; a refused write teaches the version clock.
fn tally(inner: &Inner, sh: &Shared, res: &[(bool, u64)]) {
    add(&inner.counters.sent, res.len() as u64);
    for (applied, cur) in res {
        if *applied {
            add(&inner.counters.applied, 1);
        } else {
            add(&inner.counters.stale, 1);
            sh.observe_version(*cur);
        }
    }
}

/// Removes delivered rows (a row rewritten since it was read stays).
async fn ack(sh: &Arc<Shared>, items: Vec<OutboxItem>) -> RedisResult<()> {
    let rows: Vec<(String, Vec<u8>, u64)> = items
        .into_iter()
        .map(|i| (i.namespace, i.key, i.version))
        .collect();
    let sh = sh.clone();
    // The writer answers after its commit: wait off the runtime's thread.
    let r = tokio::task::spawn_blocking(move || {
        sh.request(|done| Op::OutboxAck {
            items: rows,
            done: Some(done),
        })
    })
    .await;
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(RedisError::from(std::io::Error::other(e.to_string()))),
        Err(e) => Err(RedisError::from(std::io::Error::other(e.to_string()))),
    }
}
