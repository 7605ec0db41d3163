//! Keeping hot keys fresh and warming the cache from what was used.
//!
//! Every loading read counts its key (sampled, see
//! `LoadPolicy::access_sample`); the counters are halved every hour and
//! persisted with the namespace's loader state. A refresh pass walks, per
//! namespace with a registered loader, the pinned keys
//! (`register_hot_key`) and the most accessed ones, and reloads those that
//! are missing, stale or close to expiry, within a per-upstream rate limit
//! (a token bucket in engine time). `preload` does the same for missing
//! and stale keys only: at startup it refills what was used before the
//! restart, instead of a hard-coded list of pages.

use super::adaptive::ms;
use super::loader::{LoadError, RefreshReport};
use super::state::{LoadState, TokenBucket};
use crate::Cache;
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

/// Settings of a refresh pass and of the background [`Refresher`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RefresherConfig {
    /// Time between passes of the background refresher. Default: 1 s.
    pub interval: Duration,
    /// A tracked key is refreshed when less than this fraction of its TTL
    /// is left. Default: 0.2.
    pub refresh_ahead: f64,
    /// Keys considered per namespace: pinned keys, then the most accessed.
    /// Default: 256.
    pub top_keys: usize,
    /// Upstream calls per second a pass may make, per upstream. Default: 20.
    pub max_per_second: f64,
    /// Calls an idle upstream may take at once. Default: 40.
    pub burst: f64,
    /// Run `preload` when the refresher starts. Default: true.
    pub preload_at_start: bool,
}

impl Default for RefresherConfig {
    fn default() -> Self {
        RefresherConfig {
            interval: Duration::from_secs(1),
            refresh_ahead: 0.2,
            top_keys: 256,
            max_per_second: 20.0,
            burst: 40.0,
            preload_at_start: true,
        }
    }
}

impl RefresherConfig {
    /// Per-upstream rate limit.
    pub fn rate(mut self, per_second: f64, burst: f64) -> Self {
        self.max_per_second = per_second.max(0.0);
        self.burst = burst.max(1.0);
        self
    }
    /// Keys considered per namespace.
    pub fn top_keys(mut self, n: usize) -> Self {
        self.top_keys = n;
        self
    }
    /// Time between background passes.
    pub fn interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }
    /// Whether the background refresher preloads when it starts.
    pub fn preload_at_start(mut self, yes: bool) -> Self {
        self.preload_at_start = yes;
        self
    }
}

fn take_token(st: &LoadState, upstream: &str, cfg: &RefresherConfig, now: u64) -> bool {
    let mut b = st.buckets.lock();
    let tb = b.entry(upstream.to_string()).or_insert(TokenBucket {
        tokens: cfg.burst,
        last_ms: now,
    });
    let dt = now.saturating_sub(tb.last_ms) as f64 / 1000.0;
    tb.tokens = (tb.tokens + dt * cfg.max_per_second).min(cfg.burst);
    tb.last_ms = now;
    if tb.tokens >= 1.0 {
        tb.tokens -= 1.0;
        true
    } else {
        false
    }
}

impl Cache {
    /// Marks `key` as hot: refresh passes keep it fresh before it expires.
    /// Persisted with the namespace's loader state.
    pub fn register_hot_key(&self, ns: &str, key: &[u8]) -> Result<(), LoadError> {
        let cx = self.ctx(ns)?;
        cx.ns
            .keys
            .lock()
            .keys
            .entry(key.to_vec())
            .or_default()
            .pinned = true;
        cx.ns.dirty.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// The most accessed keys of `ns` (pinned first), as counted so far.
    pub fn hottest_keys(&self, ns: &str, n: usize) -> Result<Vec<Vec<u8>>, LoadError> {
        Ok(self.ctx(ns)?.ns.keys.lock().top(n))
    }

    fn pass(&self, cfg: &RefresherConfig, ahead: Option<f64>) -> RefreshReport {
        let st = LoadState::of(self);
        let regs: Vec<(String, Arc<str>)> = st
            .loaders
            .read()
            .iter()
            .map(|(n, r)| (n.clone(), r.upstream.clone()))
            .collect();
        let mut rep = RefreshReport::default();
        for (ns, upstream) in regs {
            let Ok(cx) = self.ctx(&ns) else { continue };
            let keys = cx.ns.keys.lock().top(cfg.top_keys);
            for key in keys {
                let now = self.now_ms();
                let Ok(entry) = self.get_entry(&ns, &key) else {
                    continue;
                };
                let due = match (&entry, ahead) {
                    (None, _) => true,
                    (Some(e), _) if e.stale_by.is_some() => true,
                    (Some(e), Some(frac)) => {
                        let full =
                            cx.ns
                                .keys
                                .lock()
                                .ttl_for(&key, &cx.policy, cx.base_ttl_ms(), now);
                        e.ttl
                            .is_some_and(|left| (ms(left) as f64) < full as f64 * frac)
                    }
                    (Some(_), None) => false,
                };
                if !due {
                    continue;
                }
                if !take_token(&st, &upstream, cfg, now) {
                    rep.rate_limited += 1;
                    continue;
                }
                match self.refresh(&ns, &key) {
                    Ok(_) => rep.refreshed += 1,
                    Err(_) => rep.failed += 1,
                }
            }
            cx.ns.maybe_save(self, self.now_ms());
        }
        rep
    }

    /// One refresh pass now: reloads pinned and most-accessed keys that are
    /// missing, stale, or within `refresh_ahead` of expiry, rate-limited
    /// per upstream. The background [`Refresher`] calls this every
    /// `interval`.
    pub fn refresh_due(&self, cfg: &RefresherConfig) -> RefreshReport {
        self.pass(cfg, Some(cfg.refresh_ahead))
    }

    /// Loads the most-accessed keys (as counted before a restart) that are
    /// missing or stale, through their registered loaders, rate-limited.
    pub fn preload(&self, cfg: &RefresherConfig) -> RefreshReport {
        // Load the persisted statistics of every namespace with a loader.
        let st = LoadState::of(self);
        let names: Vec<String> = st.loaders.read().keys().cloned().collect();
        for n in names {
            st.ns(self, &n);
        }
        self.pass(cfg, None)
    }

    /// Starts the background refresher thread: `preload` once (if
    /// configured), then `refresh_due` every `interval`, saving the learned
    /// state as it goes. Stop it with [`Refresher::stop`] (or drop it)
    /// before closing the cache: it holds a clone of the cache.
    pub fn start_refresher(&self, cfg: RefresherConfig) -> std::io::Result<Refresher> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (cache, stop2) = (self.clone(), stop.clone());
        let handle = std::thread::Builder::new()
            .name("embercache-refresher".into())
            .spawn(move || {
                if cfg.preload_at_start {
                    let r = cache.preload(&cfg);
                    tracing::info!(refreshed = r.refreshed, failed = r.failed, "preload done");
                }
                loop {
                    {
                        let mut s = stop2.0.lock();
                        if !*s {
                            stop2.1.wait_for(&mut s, cfg.interval);
                        }
                        if *s || cache.sh().closed.load(Ordering::Acquire) {
                            break;
                        }
                    }
                    cache.refresh_due(&cfg);
                }
                if let Err(e) = cache.save_load_state() {
                    tracing::warn!(error = %e, "saving loader state at refresher stop failed");
                }
            })?;
        Ok(Refresher {
            stop,
            handle: Some(handle),
        })
    }
}

/// The background refresher's handle: [`Refresher::stop`] (or dropping
/// it) signals the thread and joins it; the learned state is saved on the
/// way out.
#[derive(Debug)]
pub struct Refresher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl Refresher {
    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        self.shutdown();
    }
}
