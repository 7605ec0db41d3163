//! Read-through: after a hot and warm miss, look Redis up (when the
//! breaker allows), verify the record, and fill the local tiers with it
//! (its original version and expiry, never echoed back to Redis).
//!
//! Runs on the caller's thread with a blocking connection from a small
//! pool and `read_timeout` on every socket operation, so a miss waits at
//! most about that long. A batch get is one pipelined round trip.

use super::{Inner, count_error};
use crate::engine::{Found, ReadMiss, Shared};
use crate::load::CallOutcome;
use crate::namespace::Namespace;
use crate::stats::add;
use crate::store::outbox::OUTBOX;
use redb::ReadableDatabase;
use redis::{RedisResult, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The read-miss hook installed in the engine.
pub(crate) struct ReadThrough(pub Arc<Inner>);

/// What Redis holds under one data key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Remote {
    Missing,
    /// A delete with its version.
    Tombstone(u64),
    /// A record with the version stored beside it.
    Record(u64, Vec<u8>),
    /// Anything else under our prefix: a foreign value, a broken hash.
    Garbage,
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        _ => None,
    }
}

fn number(v: &Value) -> Option<u64> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    }
}

/// Parses the reply of `HMGET key v r d`.
pub(crate) fn parse_entry(v: &Value) -> Remote {
    let Value::Array(a) = v else {
        return Remote::Garbage;
    };
    if a.len() != 3 {
        return Remote::Garbage;
    }
    if a.iter().all(|x| matches!(x, Value::Nil)) {
        return Remote::Missing;
    }
    match (number(&a[0]), bytes(&a[1]), bytes(&a[2])) {
        (Some(ver), None, Some(_)) => Remote::Tombstone(ver),
        (Some(ver), Some(rec), None) => Remote::Record(ver, rec.to_vec()),
        _ => Remote::Garbage,
    }
}

/// Whether a local outbox row of the key is at least `version`: the local
/// write is newer than Redis and not delivered yet, so Redis must not be
/// believed (a local delete would be undone).
pub(crate) fn outbox_newer(sh: &Shared, ns: &str, key: &[u8], version: u64) -> bool {
    let row = sh.guard_opt("an outbox read", || {
        let db = sh.db().ok()?;
        let r = db.begin_read().ok()?;
        let t = r.open_table(OUTBOX).ok()?;
        let g = t.get((ns, key)).ok()??;
        let v = g.value();
        Some(u64::from_le_bytes(v.get(9..17)?.try_into().ok()?))
    });
    row.is_some_and(|v| v >= version)
}

/// Applies what Redis returned for `key`: fills the local tiers with a
/// valid, newer record; counts garbage. Returns the value when live.
/// `deletes` is the key's `sh.delete_mark` as read before Redis was asked
/// (see [`Shared::fill_remote`]).
pub(crate) fn apply_remote(
    inner: &Inner,
    sh: &Shared,
    ns: &Arc<Namespace>,
    key: &[u8],
    remote: Remote,
    deletes: u64,
) -> Option<Found> {
    let c = &inner.counters;
    match remote {
        Remote::Missing => None,
        Remote::Tombstone(ver) => {
            sh.observe_version(ver);
            None
        }
        Remote::Garbage => {
            add(&c.read_errors, 1);
            None
        }
        Remote::Record(ver, rec) => {
            let decoded =
                crate::store::record::decode(&rec, sh.limits.max_value_len, &|id| sh.decoder(id));
            match decoded {
                Ok((h, value)) if h.version == ver => {
                    // Between Redis's answer and the checks below (a test
                    // delivers a local delete of the key there).
                    failpoint!("mirror::fill");
                    if outbox_newer(sh, &ns.name, key, ver) {
                        return None;
                    }
                    sh.fill_remote(ns, key, &h, value.into(), deletes)
                }
                Ok(_) | Err(_) => {
                    // Truncated, foreign, or a dictionary this host lacks.
                    add(&c.read_errors, 1);
                    None
                }
            }
        }
    }
}

impl ReadThrough {
    fn lookup(&self, ns: &str, keys: &[&[u8]]) -> RedisResult<Vec<Value>> {
        let inner = &self.0;
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("HMGET")
                .arg(inner.keys.data(ns, k))
                .arg("v")
                .arg("r")
                .arg("d");
        }
        pipe.cmd("GET").arg(inner.keys.epoch(ns));
        match inner.target.blocking_client() {
            Some((generation, client)) => self.blocking(generation, &client, pipe),
            None => self.on_runtime(pipe),
        }
    }

    /// A single server or the Sentinel master: a pooled blocking
    /// connection on the caller's thread, one round trip.
    fn blocking(
        &self,
        generation: u64,
        client: &redis::Client,
        mut pipe: redis::Pipeline,
    ) -> RedisResult<Vec<Value>> {
        let inner = &self.0;
        // Connections opened to an older Sentinel master are dropped.
        let pooled = {
            let mut pool = inner.read_pool.lock();
            pool.retain(|(g, _)| *g == generation);
            pool.pop()
        };
        let mut conn = match pooled {
            Some((_, c)) => c,
            None => {
                let t = inner
                    .cfg
                    .connect_timeout
                    .min(inner.cfg.read_timeout.max(Duration::from_millis(50)));
                let c = client.get_connection_with_timeout(t)?;
                c.set_read_timeout(Some(inner.cfg.read_timeout))?;
                c.set_write_timeout(Some(inner.cfg.read_timeout))?;
                c
            }
        };
        pipe.ignore_errors();
        let vals: Vec<Value> = pipe.query(&mut conn)?;
        let mut pool = inner.read_pool.lock();
        if pool.len() < 8 {
            pool.push((generation, conn));
        }
        Ok(vals)
    }

    /// A cluster: the keys live on several masters, so the lookup runs on
    /// the mirror's runtime over the shared cluster connection (which
    /// routes each command to its slot's master) while the caller waits
    /// at most `read_timeout`.
    fn on_runtime(&self, pipe: redis::Pipeline) -> RedisResult<Vec<Value>> {
        let inner = self.0.clone();
        let timeout = inner.cfg.read_timeout;
        let timed_out = || -> redis::RedisError {
            redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "read-through timed out",
            ))
        };
        let Some(rt) = inner.runtime.get().cloned() else {
            return Err(timed_out());
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            // Connecting may outlast this caller's wait; it goes on (bounded
            // by the connect and command timeouts) so the next read finds
            // the connection ready.
            let cached = inner.cluster_read.lock().clone();
            let conn = match cached {
                Some(c) => Ok(c),
                None => {
                    let limit = inner.cfg.connect_timeout + inner.cfg.command_timeout;
                    match tokio::time::timeout(limit, super::drain::connect(&inner)).await {
                        Ok(Ok(c)) => {
                            *inner.cluster_read.lock() = Some(c.clone());
                            Ok(c)
                        }
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(timed_out()),
                    }
                }
            };
            let r = match conn {
                Ok(mut c) => tokio::time::timeout(timeout, c.run(&pipe))
                    .await
                    .unwrap_or_else(|_| Err(timed_out())),
                Err(e) => Err(e),
            };
            if r.is_err() {
                *inner.cluster_read.lock() = None;
            }
            let _ = tx.send(r);
        });
        rx.recv_timeout(timeout + Duration::from_millis(50))
            .unwrap_or_else(|_| Err(timed_out()))
    }
}

impl ReadMiss for ReadThrough {
    fn fetch(&self, sh: &Shared, ns: &Arc<Namespace>, keys: &[&[u8]]) -> Vec<Option<Found>> {
        let inner = &self.0;
        let c = &inner.counters;
        let mut out = vec![None; keys.len()];
        if inner.stopping() || keys.is_empty() {
            return out;
        }
        if !inner.target.ready_for_reads() {
            // Sentinel has not named a master yet: nothing to ask.
            add(&c.read_skipped, keys.len() as u64);
            return out;
        }
        let permit = match inner.breaker.try_acquire(sh.time.now_ms()) {
            Ok(p) => p,
            Err(_) => {
                add(&c.read_skipped, keys.len() as u64);
                return out;
            }
        };
        let deletes: Vec<u64> = keys.iter().map(|k| sh.delete_mark(&ns.name, k)).collect();
        let start = Instant::now();
        let r = self.lookup(&ns.name, keys);
        let took = start.elapsed();
        inner.observe(took);
        let outcome = if r.is_ok() {
            CallOutcome::Success
        } else {
            CallOutcome::Failure
        };
        permit.record(outcome, took, sh.time.now_ms());
        let vals = match r {
            Ok(v) if v.len() == keys.len() + 1 => v,
            Ok(_) => {
                count_error(inner, "read-through", &"short reply");
                return out;
            }
            Err(e) => {
                count_error(inner, "read-through", &e);
                return out;
            }
        };
        // Another instance invalidated the namespace: follow it first, so
        // records of the older epoch are refused below.
        if let Some(e) = number(&vals[keys.len()])
            && e > ns.epoch()
        {
            let _ = sh.raise_epoch(&ns.name, e);
        }
        for (i, key) in keys.iter().enumerate() {
            out[i] = apply_remote(inner, sh, ns, key, parse_entry(&vals[i]), deletes[i]);
            add(
                if out[i].is_some() {
                    &c.read_hits
                } else {
                    &c.read_misses
                },
                1,
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse() {
        let b = |s: &[u8]| Value::BulkString(s.to_vec());
        assert_eq!(
            parse_entry(&Value::Array(vec![Value::Nil, Value::Nil, Value::Nil])),
            Remote::Missing
        );
        assert_eq!(
            parse_entry(&Value::Array(vec![b(b"7"), Value::Nil, b(b"1")])),
            Remote::Tombstone(7)
        );
        assert_eq!(
            parse_entry(&Value::Array(vec![b(b"7"), b(b"rec"), Value::Nil])),
            Remote::Record(7, b"rec".to_vec())
        );
        assert_eq!(
            parse_entry(&Value::Array(vec![b(b"x"), b(b"rec"), Value::Nil])),
            Remote::Garbage
        );
        assert_eq!(parse_entry(&b(b"foreign")), Remote::Garbage);
    }
}
