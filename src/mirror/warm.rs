//! Warm start: a host whose local store is empty loads what Redis holds,
//! by SCAN over our prefix, hottest namespaces first (the `heat` zset
//! every instance feeds with its read counts), in the background. Reads
//! work meanwhile (a miss reads through to Redis). Progress is in
//! `MirrorStats::warm_*`.

use super::conn::Conn;
use super::read::{apply_remote, parse_entry};
use super::{Inner, count_error};
use crate::engine::Shared;
use crate::load::CallOutcome;
use crate::stats::add;
use redis::{RedisResult, Value};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Runs `f` on a connection through the breaker. `None` when the breaker
/// refused (after a short pause), the call failed, or the mirror stops.
pub(crate) async fn guarded<T>(
    inner: &Inner,
    sh: &Shared,
    conn: &mut Option<Conn>,
    f: impl AsyncFnOnce(&mut Conn) -> RedisResult<T>,
) -> Option<T> {
    let permit = match inner.breaker.try_acquire(sh.time.now_ms()) {
        Ok(p) => p,
        Err(open) => {
            let wait = open
                .retry_after
                .clamp(Duration::from_millis(20), Duration::from_millis(200));
            inner.pause(wait).await;
            return None;
        }
    };
    let start = Instant::now();
    let r = tokio::time::timeout(
        inner.cfg.command_timeout + inner.cfg.connect_timeout,
        async {
            if conn.is_none() {
                *conn = Some(super::drain::connect(inner).await?);
            }
            f(conn.as_mut().expect("just set")).await
        },
    )
    .await
    .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out").into()));
    let took = start.elapsed();
    inner.observe(took);
    let outcome = if r.is_ok() {
        CallOutcome::Success
    } else {
        CallOutcome::Failure
    };
    permit.record(outcome, took, sh.time.now_ms());
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            count_error(inner, "redis call", &e);
            *conn = None;
            inner.pause(Duration::from_millis(50)).await;
            None
        }
    }
}

pub(crate) async fn run(inner: Arc<Inner>, sh: Arc<Shared>) {
    let c = &inner.counters;
    c.warm_state.store(1, Ordering::Relaxed);
    // A fill that asked Redis before pub/sub is up could miss a delete
    // published meanwhile (see pubsub.rs): wait for the first subscription.
    while inner.cfg.pubsub && !inner.fenced.load(Ordering::Acquire) {
        if inner.stopping() {
            return;
        }
        inner.pause(Duration::from_millis(10)).await;
    }
    let mut conn = None;
    let heat_key = inner.keys.heat();
    let order: Vec<String> = loop {
        if inner.stopping() {
            return;
        }
        let r = guarded(&inner, &sh, &mut conn, async |c| {
            let mut cmd = redis::cmd("ZREVRANGE");
            cmd.arg(&heat_key).arg(0).arg(-1);
            c.query(&cmd).await
        })
        .await;
        if let Some(o) = r {
            break o;
        }
    };
    tracing::info!(namespaces = ?order, "mirror: warming from Redis");
    // Every master of a cluster holds part of the keys: SCAN each.
    let nodes = loop {
        if inner.stopping() {
            return;
        }
        if let Some(n) = guarded(&inner, &sh, &mut conn, async |c| c.scan_nodes().await).await {
            break n;
        }
    };
    let mut done: HashSet<String> = HashSet::new();
    for ns in order.iter().map(|s| Some(s.as_str())).chain([None]) {
        let pattern = inner.keys.data_pattern(ns);
        for node in &nodes {
            let mut cursor: u64 = 0;
            loop {
                if inner.stopping() {
                    return;
                }
                let pat = pattern.clone();
                let Some((next, keys)) = guarded(&inner, &sh, &mut conn, async |c| {
                    c.scan(node, cursor, &pat, 500).await
                })
                .await
                else {
                    continue;
                };
                add(&c.warm_scanned, keys.len() as u64);
                let wanted: Vec<(String, Vec<u8>)> = keys
                    .iter()
                    .filter_map(|k| inner.keys.parse_data(k))
                    .filter(|(n, _)| ns.is_some() || !done.contains(*n))
                    .map(|(n, k)| (n.to_string(), k.to_vec()))
                    .collect();
                if !wanted.is_empty() && !load(&inner, &sh, &mut conn, &wanted).await {
                    // Failed batch: scan this cursor again.
                    continue;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        if let Some(ns) = ns {
            done.insert(ns.to_string());
        }
    }
    c.warm_state.store(2, Ordering::Relaxed);
    tracing::info!(
        loaded = c.warm_loaded.load(Ordering::Relaxed),
        "mirror: warm start from Redis done"
    );
}

/// Fetches and fills one SCAN page; false when the call failed.
async fn load(
    inner: &Inner,
    sh: &Shared,
    conn: &mut Option<Conn>,
    wanted: &[(String, Vec<u8>)],
) -> bool {
    let namespaces: Vec<String> = wanted
        .iter()
        .map(|(n, _)| n.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut pipe = redis::pipe();
    for n in &namespaces {
        pipe.cmd("GET").arg(inner.keys.epoch(n));
    }
    for (n, k) in wanted {
        pipe.cmd("HMGET")
            .arg(inner.keys.data(n, k))
            .arg("v")
            .arg("r")
            .arg("d");
    }
    let deletes: Vec<u64> = wanted.iter().map(|(n, k)| sh.delete_mark(n, k)).collect();
    let Some(vals) = guarded(inner, sh, conn, async |c| c.run(&pipe).await).await else {
        return false;
    };
    if vals.len() != namespaces.len() + wanted.len() {
        return false;
    }
    for (n, v) in namespaces.iter().zip(&vals) {
        if let Value::BulkString(b) = v
            && let Some(e) = std::str::from_utf8(b).ok().and_then(|s| s.parse().ok())
        {
            let _ = sh.raise_epoch(n, e);
        }
    }
    for (((n, k), v), d) in wanted.iter().zip(&vals[namespaces.len()..]).zip(deletes) {
        let Ok(ns) = sh.ns.get(n) else { continue };
        if apply_remote(inner, sh, &ns, k, parse_entry(v), d).is_some() {
            add(&inner.counters.warm_loaded, 1);
        }
    }
    true
}
