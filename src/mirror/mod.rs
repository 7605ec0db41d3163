//! The Redis mirror (feature `redis`): local writes reach Redis through the
//! durable outbox; a local miss can be answered from Redis; an empty host
//! warms from Redis; deletes and epoch bumps travel between instances over
//! pub/sub. The local tiers never wait for Redis except for a bounded
//! read-through on a miss. See docs/MIRROR.md for the model and guarantees.
//!
//! Layout: `config.rs` (settings, env), `drain.rs` (outbox → Redis, health
//! checks, resync), `read.rs` (read-through on a miss), `warm.rs` (warm
//! start by SCAN), `pubsub.rs` (invalidations across instances and the
//! reconciliation after a lost subscription), `script.lua` (the versioned
//! write), `conn.rs` (one server, a Redis Cluster or a Sentinel master
//! behind one connection type). Everything runs on one thread,
//! `embercache-mirror`, with its own current-thread tokio runtime; the
//! read path uses blocking connections from the caller's thread (for a
//! cluster it hands the lookup to that runtime and waits for it).
//!
//! Redis layout under the prefix `P` (binary-safe; namespace names hold no
//! control characters, so `\0` separates them):
//!
//! ```text
//! P d\0<ns>\0<key>  hash  v = version, r = record        (PX = remaining TTL)
//!                         v = version, d = 1  (tombstone, PX = tombstone_ttl)
//! P e\0<ns>         string  the namespace's epoch (highest wins)
//! P marker          hash    per instance: the run_id of the Redis we last
//!                           resynced to (a cluster: every master's, sorted)
//! P heat            zset    namespace → reads, for warm-start order
//! P inv             channel deletes and epoch bumps (see `Message`)
//! ```

mod config;
mod conn;
mod drain;
mod pubsub;
mod read;
mod warm;

pub use config::{MirrorConfig, RedisDeployment};

use crate::cache::Cache;
use crate::engine::Shared;
use crate::load::{BreakerState, CircuitBreaker, breaker_metrics_text};
use crate::stats::add;
use parking_lot::Mutex;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The versioned write (see script.lua).
pub(crate) const SCRIPT: &str = include_str!("script.lua");

/// Key names under the configured prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: Vec<u8>,
}

impl Keys {
    fn with(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut k = self.prefix.clone();
        for p in parts {
            k.extend_from_slice(p);
        }
        k
    }
    pub(crate) fn data(&self, ns: &str, key: &[u8]) -> Vec<u8> {
        self.with(&[b"d\0", ns.as_bytes(), b"\0", key])
    }
    pub(crate) fn epoch(&self, ns: &str) -> Vec<u8> {
        self.with(&[b"e\0", ns.as_bytes()])
    }
    pub(crate) fn marker(&self) -> Vec<u8> {
        self.with(&[b"marker"])
    }
    pub(crate) fn heat(&self) -> Vec<u8> {
        self.with(&[b"heat"])
    }
    pub(crate) fn channel(&self) -> Vec<u8> {
        self.with(&[b"inv"])
    }
    /// `(namespace, key)` of a data key, `None` for anything else.
    pub(crate) fn parse_data<'a>(&self, k: &'a [u8]) -> Option<(&'a str, &'a [u8])> {
        let rest = k
            .strip_prefix(self.prefix.as_slice())?
            .strip_prefix(b"d\0")?;
        let sep = rest.iter().position(|&b| b == 0)?;
        let ns = std::str::from_utf8(&rest[..sep]).ok()?;
        Some((ns, &rest[sep + 1..]))
    }
    /// A SCAN pattern for the data keys of `ns` (all namespaces if `None`).
    pub(crate) fn data_pattern(&self, ns: Option<&str>) -> Vec<u8> {
        let mut p = Vec::new();
        for &b in self.prefix.iter().chain(b"d\0") {
            glob_push(&mut p, b);
        }
        if let Some(ns) = ns {
            for &b in ns.as_bytes() {
                glob_push(&mut p, b);
            }
            p.push(0);
        }
        p.push(b'*');
        p
    }
}

fn glob_push(p: &mut Vec<u8>, b: u8) {
    if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
        p.push(b'\\');
    }
    p.push(b);
}

/// A pub/sub message: `kind u8 (1 delete, 2 epoch) | version u64 LE |
/// origin u64 LE | ns_len u16 LE | ns | key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub kind: u8,
    pub version: u64,
    pub origin: u64,
    pub ns: String,
    pub key: Vec<u8>,
}

pub(crate) const MSG_DELETE: u8 = 1;
pub(crate) const MSG_EPOCH: u8 = 2;

impl Message {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(19 + self.ns.len() + self.key.len());
        m.push(self.kind);
        m.extend_from_slice(&self.version.to_le_bytes());
        m.extend_from_slice(&self.origin.to_le_bytes());
        m.extend_from_slice(&(self.ns.len() as u16).to_le_bytes());
        m.extend_from_slice(self.ns.as_bytes());
        m.extend_from_slice(&self.key);
        m
    }
    pub(crate) fn decode(m: &[u8]) -> Option<Message> {
        let kind = *m.first()?;
        let version = u64::from_le_bytes(m.get(1..9)?.try_into().ok()?);
        let origin = u64::from_le_bytes(m.get(9..17)?.try_into().ok()?);
        let len = u16::from_le_bytes(m.get(17..19)?.try_into().ok()?) as usize;
        let ns = std::str::from_utf8(m.get(19..19 + len)?).ok()?.to_string();
        let key = m.get(19 + len..)?.to_vec();
        Some(Message {
            kind,
            version,
            origin,
            ns,
            key,
        })
    }
}

/// Counters of the mirror (all monotonic except the gauges noted).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub batches: AtomicU64,
    pub sent: AtomicU64,
    pub applied: AtomicU64,
    pub stale: AtomicU64,
    pub expired_skipped: AtomicU64,
    pub errors: AtomicU64,
    pub read_hits: AtomicU64,
    pub read_misses: AtomicU64,
    pub read_errors: AtomicU64,
    pub read_skipped: AtomicU64,
    pub resyncs: AtomicU64,
    pub resync_keys: AtomicU64,
    pub pubsub_received: AtomicU64,
    pub pubsub_applied: AtomicU64,
    pub pubsub_connects: AtomicU64,
    pub reconciles: AtomicU64,
    pub reconcile_fixed: AtomicU64,
    pub warm_scanned: AtomicU64,
    pub warm_loaded: AtomicU64,
    /// Gauge: 0 not started or not needed, 1 running, 2 done.
    pub warm_state: AtomicU64,
    /// Gauge: 1 while a connection to Redis is up.
    pub connected: AtomicU64,
}

/// State shared by the mirror's tasks and the read path. Holds no
/// reference to the engine (tasks are handed one), so it cannot keep the
/// cache alive.
pub(crate) struct Inner {
    pub cfg: MirrorConfig,
    pub keys: Keys,
    /// Where Redis is: one server, a cluster, or Sentinel (see conn.rs).
    pub target: conn::Target,
    pub breaker: CircuitBreaker,
    /// The persisted id of this cache directory: its field in the marker
    /// hash and the origin of its pub/sub messages (ours are ignored).
    pub origin: u64,
    pub stop: AtomicBool,
    pub stop_signal: tokio::sync::Notify,
    /// Set once pub/sub is first subscribed and every fill begun before
    /// it is fenced off (see pubsub.rs): the warm start waits for it.
    pub fenced: AtomicBool,
    pub counters: Counters,
    /// Latency of Redis calls (batches and lookups).
    pub latency: Histogram,
    /// Since when the outbox has been non-empty (mirror lag).
    pub lag_since: Mutex<Option<Instant>>,
    /// The last error `count_error` saw (`MirrorStats::last_error`).
    pub last_error: Mutex<Option<String>>,
    /// Blocking connections for the read path (single server or Sentinel
    /// master), with the generation of the master they were opened to.
    pub read_pool: Mutex<Vec<(u64, redis::Connection)>>,
    /// The mirror's runtime: a cluster's read-through runs on it.
    pub runtime: std::sync::OnceLock<tokio::runtime::Handle>,
    /// The cluster connection the read path shares (cheap clones).
    pub cluster_read: Mutex<Option<conn::Conn>>,
    pub script: redis::Script,
}

impl Inner {
    pub(crate) fn observe(&self, took: Duration) {
        self.latency.observe(took.as_secs_f64());
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sleeps `d`, waking early when the mirror stops.
    pub(crate) async fn pause(&self, d: Duration) {
        if self.stopping() {
            return;
        }
        let _ = tokio::time::timeout(d, self.stop_signal.notified()).await;
    }
}

/// The running mirror: its thread and shared state. Owned by the cache;
/// stopped and joined by `close()`.
pub(crate) struct Mirror {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Mirror {
    /// Starts the mirror for `sh` (whose outbox is on).
    pub(crate) fn start(sh: Arc<Shared>, cfg: MirrorConfig) -> std::io::Result<Mirror> {
        let target = conn::Target::new(&cfg).map_err(std::io::Error::other)?;
        let breaker =
            CircuitBreaker::new("redis", cfg.breaker.clone()).map_err(std::io::Error::other)?;
        let origin = drain::instance_id(&sh);
        let inner = Arc::new(Inner {
            keys: Keys {
                prefix: cfg.key_prefix.as_bytes().to_vec(),
            },
            target,
            breaker,
            origin,
            stop: AtomicBool::new(false),
            stop_signal: tokio::sync::Notify::new(),
            fenced: AtomicBool::new(false),
            counters: Counters::default(),
            latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 18)),
            lag_since: Mutex::new(None),
            last_error: Mutex::new(None),
            read_pool: Mutex::new(Vec::new()),
            runtime: std::sync::OnceLock::new(),
            cluster_read: Mutex::new(None),
            script: redis::Script::new(SCRIPT),
            cfg,
        });
        if inner.cfg.read_through {
            let _ = sh.read_miss.set(Arc::new(read::ReadThrough(inner.clone())));
        }
        // An empty local store warms from Redis.
        let warm = inner.cfg.warm_start
            && crate::stats::get(&sh.counters.records) == 0
            && crate::stats::get(&sh.counters.outbox_rows) == 0;
        let i2 = inner.clone();
        let thread = std::thread::Builder::new()
            .name("embercache-mirror".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "mirror: no tokio runtime; Redis mirror off");
                        return;
                    }
                };
                let _ = i2.runtime.set(rt.handle().clone());
                rt.block_on(async move {
                    let mut tasks = Vec::new();
                    tasks.push(tokio::spawn(drain::run(i2.clone(), sh.clone())));
                    if i2.cfg.pubsub {
                        tasks.push(tokio::spawn(pubsub::run(i2.clone(), sh.clone())));
                    }
                    if warm {
                        tasks.push(tokio::spawn(warm::run(i2.clone(), sh.clone())));
                    }
                    for t in tasks {
                        if let Err(e) = t.await {
                            tracing::error!(error = %e, "mirror task failed");
                        }
                    }
                });
            })?;
        Ok(Mirror {
            inner,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Stops the tasks (the drain makes one last bounded attempt to
    /// deliver the outbox) and joins the thread. Idempotent.
    pub(crate) fn stop(&self) {
        self.inner.stop.store(true, Ordering::Release);
        self.inner.stop_signal.notify_waiters();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }

    fn stats(&self, sh: &Shared) -> MirrorStats {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let b = self.inner.breaker.metrics();
        MirrorStats {
            breaker: b.state,
            breaker_transitions: b.transitions_total(),
            connected: g(&c.connected) == 1,
            lag: self
                .inner
                .lag_since
                .lock()
                .map_or(Duration::ZERO, |t| t.elapsed()),
            outbox_rows: crate::stats::get(&sh.counters.outbox_rows),
            outbox_bytes: crate::stats::get(&sh.counters.outbox_bytes),
            outbox_coalesced: crate::stats::get(&sh.counters.outbox_coalesced),
            batches: g(&c.batches),
            sent: g(&c.sent),
            applied: g(&c.applied),
            stale: g(&c.stale),
            expired_skipped: g(&c.expired_skipped),
            errors: g(&c.errors),
            last_error: self.inner.last_error.lock().clone(),
            read_hits: g(&c.read_hits),
            read_misses: g(&c.read_misses),
            read_errors: g(&c.read_errors),
            read_skipped: g(&c.read_skipped),
            resyncs: g(&c.resyncs),
            resync_keys: g(&c.resync_keys),
            pubsub_received: g(&c.pubsub_received),
            pubsub_applied: g(&c.pubsub_applied),
            pubsub_connects: g(&c.pubsub_connects),
            reconciles: g(&c.reconciles),
            reconcile_fixed: g(&c.reconcile_fixed),
            warm_scanned: g(&c.warm_scanned),
            warm_loaded: g(&c.warm_loaded),
            warm_running: g(&c.warm_state) == 1,
            warm_done: g(&c.warm_state) == 2,
        }
    }
}

/// A snapshot of the mirror's state and counters, from
/// [`Cache::mirror_stats`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MirrorStats {
    /// The Redis breaker's state.
    pub breaker: BreakerState,
    pub breaker_transitions: u64,
    /// Whether the drain holds a live connection.
    pub connected: bool,
    /// How long the outbox has been non-empty (zero when it is empty): an
    /// upper bound on how far Redis is behind.
    pub lag: Duration,
    pub outbox_rows: u64,
    pub outbox_bytes: u64,
    pub outbox_coalesced: u64,
    /// Pipelined batches that Redis answered.
    pub batches: u64,
    /// Writes sent (puts, deletes, epochs; resync pushes included).
    pub sent: u64,
    /// Writes Redis applied.
    pub applied: u64,
    /// Writes Redis refused because it held a newer version.
    pub stale: u64,
    /// Puts not sent because they had expired by send time.
    pub expired_skipped: u64,
    /// Failed Redis calls (timeouts, connection errors, server errors).
    pub errors: u64,
    /// The last of those errors, as `"<what> failed: <error>"` (e.g. a
    /// wrong password: `redis call failed: WRONGPASS ...`), kept after
    /// recovery; `None` if there was none. Never holds a password.
    pub last_error: Option<String>,
    /// Local misses answered from Redis.
    pub read_hits: u64,
    pub read_misses: u64,
    /// Values under our prefix that were not a valid record (counted,
    /// answered as a miss).
    pub read_errors: u64,
    /// Local misses not looked up because the breaker was open.
    pub read_skipped: u64,
    /// Full pushes of the local data after Redis lost it.
    pub resyncs: u64,
    pub resync_keys: u64,
    pub pubsub_received: u64,
    pub pubsub_applied: u64,
    /// Pub/sub (re)connections; each one is followed by a reconciliation.
    pub pubsub_connects: u64,
    /// Reconciliations completed (at most one per (re)connection; one that
    /// fails is retried until it completes).
    pub reconciles: u64,
    /// Local entries corrected by reconciliation after a pub/sub gap.
    pub reconcile_fixed: u64,
    /// Warm start: Redis keys seen and entries loaded.
    pub warm_scanned: u64,
    pub warm_loaded: u64,
    pub warm_running: bool,
    pub warm_done: bool,
}

impl Cache {
    /// The Redis mirror's state and counters; `None` without a mirror.
    pub fn mirror_stats(&self) -> Option<MirrorStats> {
        self.mirror_handle().map(|m| m.stats(self.sh()))
    }

    /// The mirror's metrics in the Prometheus text format (prefix
    /// `embercache_mirror_` and the `redis` breaker's
    /// `embercache_breaker_`), to serve next to `metrics_text()`. Empty
    /// without a mirror.
    pub fn mirror_metrics_text(&self) -> String {
        let mut out = self.mirror_metrics_body();
        if let Some(m) = self.mirror_handle() {
            out.push_str(&breaker_metrics_text([&m.inner.breaker]));
        }
        out
    }

    /// The mirror's Redis breaker, if a mirror runs.
    pub(crate) fn mirror_breaker(&self) -> Option<CircuitBreaker> {
        self.mirror_handle().map(|m| m.inner.breaker.clone())
    }

    /// The mirror's metrics without its breaker (see `load_metrics_body`).
    pub(crate) fn mirror_metrics_body(&self) -> String {
        let Some(m) = self.mirror_handle() else {
            return String::new();
        };
        let s = m.stats(self.sh());
        let mut reg = prometheus_client::registry::Registry::with_prefix("embercache_mirror");
        let gauge = |reg: &mut prometheus_client::registry::Registry, n: &str, h: &str, v: u64| {
            let g: prometheus_client::metrics::gauge::Gauge = Default::default();
            g.set(v as i64);
            reg.register(n, h, g);
        };
        let counter =
            |reg: &mut prometheus_client::registry::Registry, n: &str, h: &str, v: u64| {
                let c: prometheus_client::metrics::counter::Counter = Default::default();
                c.inc_by(v);
                reg.register(n, h, c);
            };
        gauge(
            &mut reg,
            "lag_seconds",
            "How long the outbox has been non-empty",
            s.lag.as_secs(),
        );
        gauge(
            &mut reg,
            "lag_ms",
            "Mirror lag in milliseconds",
            s.lag.as_millis() as u64,
        );
        gauge(
            &mut reg,
            "connected",
            "1 while connected to Redis",
            u64::from(s.connected),
        );
        gauge(
            &mut reg,
            "outbox_rows",
            "Writes waiting for Redis",
            s.outbox_rows,
        );
        gauge(
            &mut reg,
            "outbox_bytes",
            "Bytes waiting for Redis",
            s.outbox_bytes,
        );
        counter(
            &mut reg,
            "outbox_coalesced",
            "Outbox writes replaced by a newer write of their key",
            s.outbox_coalesced,
        );
        for (n, h, v) in [
            ("batches", "Pipelined batches answered", s.batches),
            ("sent", "Writes sent to Redis", s.sent),
            ("applied", "Writes Redis applied", s.applied),
            ("stale", "Writes refused by Redis as older", s.stale),
            (
                "expired_skipped",
                "Expired puts not sent",
                s.expired_skipped,
            ),
            ("errors", "Failed Redis calls", s.errors),
            ("read_hits", "Local misses answered by Redis", s.read_hits),
            (
                "read_misses",
                "Local misses Redis did not have",
                s.read_misses,
            ),
            (
                "read_errors",
                "Invalid values found under our prefix",
                s.read_errors,
            ),
            (
                "read_skipped",
                "Lookups skipped while the breaker was open",
                s.read_skipped,
            ),
            (
                "resyncs",
                "Full pushes after Redis lost our data",
                s.resyncs,
            ),
            ("resync_keys", "Entries pushed by resyncs", s.resync_keys),
            (
                "pubsub_received",
                "Invalidations received",
                s.pubsub_received,
            ),
            (
                "pubsub_applied",
                "Invalidations applied locally",
                s.pubsub_applied,
            ),
            (
                "pubsub_connects",
                "Pub/sub (re)connections",
                s.pubsub_connects,
            ),
            (
                "reconciles",
                "Reconciliations completed after a pub/sub (re)connection",
                s.reconciles,
            ),
            (
                "reconcile_fixed",
                "Entries fixed after a pub/sub gap",
                s.reconcile_fixed,
            ),
            (
                "warm_scanned",
                "Redis keys seen by the warm start",
                s.warm_scanned,
            ),
            (
                "warm_loaded",
                "Entries loaded by the warm start",
                s.warm_loaded,
            ),
        ] {
            counter(&mut reg, n, h, v);
        }
        gauge(
            &mut reg,
            "warm_running",
            "1 while warming from Redis",
            u64::from(s.warm_running),
        );
        reg.register(
            "redis_latency_seconds",
            "Latency of Redis calls (batches and lookups)",
            m.inner.latency.clone(),
        );
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
        // Drop the OpenMetrics terminator so the sections concatenate.
        if let Some(body) = out.strip_suffix("# EOF\n") {
            out.truncate(body.len());
        }
        out
    }
}

/// Counts an error and logs it at most at debug level (the breaker and
/// the metrics carry the signal).
pub(crate) fn count_error(inner: &Inner, what: &str, e: &dyn std::fmt::Display) {
    add(&inner.counters.errors, 1);
    tracing::debug!(error = %e, "mirror: {what} failed");
    *inner.last_error.lock() = Some(format!("{what} failed: {e}"));
}

/// Whether `e` is a refused login (wrong or missing password or user):
/// retrying cannot help, so it is logged as a configuration error.
pub(crate) fn auth_error(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_patterns_escape() {
        let k = Keys {
            prefix: b"p*:".to_vec(),
        };
        let d = k.data("ns:1", b"a\0b");
        assert_eq!(k.parse_data(&d), Some(("ns:1", &b"a\0b"[..])));
        assert_eq!(k.parse_data(&k.epoch("ns")), None);
        assert_eq!(k.data_pattern(Some("a?")), b"p\\*:d\0a\\?\0*".to_vec());
        let m = Message {
            kind: MSG_DELETE,
            version: 7,
            origin: 9,
            ns: "n".into(),
            key: b"k".to_vec(),
        };
        assert_eq!(Message::decode(&m.encode()), Some(m));
        assert_eq!(Message::decode(b"\x01short"), None);
    }
}
