//! Invalidation across instances: deletes and epoch bumps that another
//! instance applied in Redis arrive on the `inv` channel (published by the
//! write script, only when the write was applied) and are applied locally
//! with their original version, never echoed back.
//!
//! The rule after a lost subscription: messages sent while we were not
//! subscribed are gone, so every (re)subscription is followed by a
//! reconciliation: first the epoch of every local namespace is compared
//! with Redis's (a higher one is adopted, hiding the older entries in all
//! tiers), then every local entry is compared with Redis's version of it
//! (a newer tombstone deletes it, a newer record replaces it). We
//! subscribe before reconciling, so nothing falls between the two.
//!
//! A read-through or warm-start fill that asked Redis before a delete
//! published during the gap would bring the value back if it landed after
//! the reconciliation passed its key: the delete moved no delete mark
//! here. So each subscription first moves every mark (such fills are
//! dropped), and each reconciliation first waits until the fills that got
//! in before that are committed, where its walk sees them. The warm start
//! waits for the first subscription for the same reason. A
//! reconciliation that fails (Redis, or one cluster master, unreachable)
//! is retried while subscribed until it completes. While the breaker is
//! open we do not subscribe at all.

use super::read::{apply_remote, parse_entry};
use super::warm::guarded;
use super::{Inner, MSG_DELETE, MSG_EPOCH, Message};
use crate::engine::Shared;
use crate::load::{BreakerState, CallOutcome};
use crate::stats::add;
use crate::store::record::decode_header_verified;
use futures_util::StreamExt;
use redis::Value;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub(crate) async fn run(inner: Arc<Inner>, sh: Arc<Shared>) {
    let c = &inner.counters;
    // Which node a cluster subscription uses: the next one after a loss.
    let mut attempt = 0usize;
    loop {
        if inner.stopping() {
            return;
        }
        if subscription_held() {
            inner.pause(Duration::from_millis(20)).await;
            continue;
        }
        if inner.breaker.state() == BreakerState::Open {
            inner.pause(Duration::from_millis(100)).await;
            continue;
        }
        let Ok(permit) = inner.breaker.try_acquire(sh.time.now_ms()) else {
            inner.pause(Duration::from_millis(100)).await;
            continue;
        };
        let start = Instant::now();
        let channel = inner.keys.channel();
        let sub = tokio::time::timeout(
            inner.cfg.connect_timeout + inner.cfg.command_timeout,
            async {
                let mut ps = inner.target.pubsub(attempt).await?;
                ps.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(ps)
            },
        )
        .await;
        let took = start.elapsed();
        let ps = match sub {
            Ok(Ok(ps)) => {
                permit.record(CallOutcome::Success, took, sh.time.now_ms());
                ps
            }
            _ => {
                permit.record(CallOutcome::Failure, took, sh.time.now_ms());
                attempt += 1;
                inner.pause(Duration::from_millis(200)).await;
                continue;
            }
        };
        add(&c.pubsub_connects, 1);
        // Fills that asked Redis before now may hold a value a missed
        // delete removed there: they are dropped (see module docs).
        sh.fence_fills();
        inner.fenced.store(true, Ordering::Release);
        let mut stream = ps.into_on_message();
        // Retried while subscribed until it completes: on a cluster the
        // subscription can succeed while a master the reconciliation must
        // read is down, and giving up until the next reconnect would keep
        // serving what was deleted during the gap.
        let mut reconciled = reconcile(&inner, &sh).await;
        let mut last_try = Instant::now();
        loop {
            if inner.stopping() {
                return;
            }
            if !reconciled && last_try.elapsed() >= Duration::from_millis(200) {
                reconciled = reconcile(&inner, &sh).await;
                last_try = Instant::now();
            }
            match tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
                Err(_) => continue,
                Ok(None) => {
                    tracing::info!("mirror: pub/sub connection lost; will reconcile on reconnect");
                    attempt += 1;
                    break;
                }
                Ok(Some(msg)) => {
                    let Some(m) = Message::decode(msg.get_payload_bytes()) else {
                        continue;
                    };
                    if m.origin == inner.origin {
                        continue;
                    }
                    add(&c.pubsub_received, 1);
                    // Off the runtime: a delete may wait for room in a full
                    // write queue, and the drain and cluster reads share
                    // this thread.
                    let s2 = sh.clone();
                    let applied = tokio::task::spawn_blocking(move || apply_message(&s2, &m))
                        .await
                        .unwrap_or(Applied::No);
                    match applied {
                        Applied::Yes => add(&c.pubsub_applied, 1),
                        Applied::Partly => {
                            add(&c.pubsub_applied, 1);
                            // The warm copy is still here: reconcile.
                            reconciled = false;
                        }
                        Applied::No => {}
                    }
                }
            }
        }
    }
}

/// True while a test holds pub/sub off (an outage of pub/sub alone, the
/// rest of Redis up): the subscription is not attempted.
fn subscription_held() -> bool {
    failpoint!("mirror::subscribe", |_| true);
    false
}

enum Applied {
    Yes,
    /// A delete that found the write queue full for `queue_wait`: only the
    /// hot copy went (see `Shared::delete_remote`).
    Partly,
    No,
}

fn apply_message(sh: &Shared, m: &Message) -> Applied {
    let Ok(ns) = sh.ns.get(&m.ns) else {
        return Applied::No;
    };
    match m.kind {
        MSG_DELETE if sh.delete_remote(&ns, &m.key, m.version) => Applied::Yes,
        MSG_DELETE => Applied::Partly,
        MSG_EPOCH if sh.raise_epoch(&m.ns, m.version).unwrap_or(false) => Applied::Yes,
        _ => Applied::No,
    }
}

/// Catches up with what was missed while not subscribed (see module docs).
/// False when the flush before it, a Redis call or a local read failed, or
/// a delete it found stayed out of a full write queue (the caller tries
/// again from the start); true when done, or when the mirror stops.
async fn reconcile(inner: &Arc<Inner>, sh: &Arc<Shared>) -> bool {
    // Fills that got past their checks before the subscription's fence
    // are committed first: the walk below reads redb.
    let s2 = sh.clone();
    if !matches!(
        tokio::task::spawn_blocking(move || s2.commit_fills()).await,
        Ok(Ok(()))
    ) {
        return false;
    }
    let mut conn = None;
    let names: Vec<String> = sh.ns.all().iter().map(|n| n.name.to_string()).collect();
    if !names.is_empty() {
        let mut pipe = redis::pipe();
        for n in &names {
            pipe.cmd("GET").arg(inner.keys.epoch(n));
        }
        let Some(vals) = guarded(inner, sh, &mut conn, async |c| c.run(&pipe).await).await else {
            return false;
        };
        for (n, v) in names.iter().zip(&vals) {
            if let Value::BulkString(b) = v
                && let Some(e) = std::str::from_utf8(b).ok().and_then(|s| s.parse().ok())
            {
                let _ = sh.raise_epoch(n, e);
            }
        }
    }
    let mut after: Option<(String, Vec<u8>)> = None;
    // False once a delete found the write queue full: tried again.
    let mut complete = true;
    loop {
        if inner.stopping() {
            return true;
        }
        let Ok(page) = super::drain::local_page(sh, after.as_ref(), inner.cfg.batch) else {
            return false;
        };
        let Some(last) = page.last() else {
            break;
        };
        after = Some((last.0.clone(), last.1.clone()));
        let full = page.len() >= inner.cfg.batch;
        let now = sh.time.now_ms();
        let live: Vec<(String, Vec<u8>, u64)> = page
            .into_iter()
            .filter_map(|(n, k, rec)| {
                let h = decode_header_verified(&rec).ok()?;
                let ns = sh.ns.get(&n).ok()?;
                (h.expires_at > now && h.epoch == ns.epoch()).then_some((n, k, h.version))
            })
            .collect();
        if !live.is_empty() {
            let mut pipe = redis::pipe();
            for (n, k, _) in &live {
                pipe.cmd("HMGET")
                    .arg(inner.keys.data(n, k))
                    .arg("v")
                    .arg("r")
                    .arg("d");
            }
            let deletes: Vec<u64> = live.iter().map(|(n, k, _)| sh.delete_mark(n, k)).collect();
            let Some(vals) = guarded(inner, sh, &mut conn, async |c| c.run(&pipe).await).await
            else {
                return false;
            };
            // Off the runtime, as a message is.
            let (i2, s2) = (inner.clone(), sh.clone());
            let applied = tokio::task::spawn_blocking(move || {
                let mut complete = true;
                for (((n, k, local), v), d) in live.iter().zip(&vals).zip(deletes) {
                    let Ok(ns) = s2.ns.get(n) else { continue };
                    let fixed = match parse_entry(v) {
                        super::read::Remote::Tombstone(ver) if ver > *local => {
                            complete &= s2.delete_remote(&ns, k, ver);
                            true
                        }
                        // Refused when a local write or a delete of the key
                        // (or of its stripe) came meanwhile: not fixed.
                        r @ super::read::Remote::Record(ver, _) if ver > *local => {
                            apply_remote(&i2, &s2, &ns, k, r, d).is_some()
                        }
                        _ => false,
                    };
                    if fixed {
                        add(&i2.counters.reconcile_fixed, 1);
                    }
                }
                complete
            })
            .await;
            complete &= applied.unwrap_or(false);
        }
        if !full {
            break;
        }
    }
    add(&inner.counters.reconciles, u64::from(complete));
    complete
}
