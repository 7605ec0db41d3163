//! The read-through API on [`Cache`]: `get_or_load` (sync, async, typed,
//! batch), negative caching, stale-while-revalidate, stale-if-error,
//! adaptive TTLs, per-upstream breakers. See docs/LOADING.md.

use super::adaptive::{self, LoadPolicy, ms};
use super::breaker::{BreakerConfig, BreakerConfigError, CallOutcome, CircuitBreaker, Permit};
use super::single_flight::Role;
use super::state::{
    FlightKey, FlightResult, LoadState, META_BREAKER, NsState, Registered, SharedLoader,
};
use crate::error::{ReadError, WriteError};
use crate::{Cache, NamespacePolicy};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// What a loader found upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// The value; it is stored with the namespace's (adaptive) TTL.
    Value(Bytes),
    /// The key does not exist upstream. Cached for the namespace's
    /// `negative_ttl` (if set) and reported as `Lookup { value: None, .. }`.
    NotFound,
}

impl Loaded {
    /// `Loaded::Value` from anything that converts into `Bytes`.
    pub fn value(v: impl Into<Bytes>) -> Self {
        Loaded::Value(v.into())
    }
}

/// Why a value is served stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StaleReason {
    /// Within `stale_for`: a background refresh is running (or was just
    /// started).
    Revalidating,
    /// The loader failed; within `max_stale`.
    LoadFailed,
    /// The upstream's breaker is open; within `max_stale`.
    BreakerOpen,
}

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// A live entry (or a live "not found") in the cache.
    Cache,
    /// This call's loader, or a concurrent call's loader it waited for.
    Loader,
    /// An expired value, `stale_by` past its expiry.
    Stale {
        stale_by: Duration,
        reason: StaleReason,
    },
}

/// The answer of a loading read.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Lookup<T = Bytes> {
    /// The value; `None` when the upstream said the key does not exist
    /// (now or within the negative TTL).
    pub value: Option<T>,
    /// Cache, loader or stale.
    pub origin: Origin,
    /// For a stale value served because loading failed: why.
    pub error: Option<LoadError>,
}

impl Lookup {
    /// The typed form of a bytes answer (postcard).
    pub(crate) fn decode<T: DeserializeOwned>(self) -> Result<Lookup<T>, LoadError> {
        let value = match self.value {
            Some(b) => Some(postcard::from_bytes(&b)?),
            None => None,
        };
        Ok(Lookup {
            value,
            origin: self.origin,
            error: self.error,
        })
    }
}

impl Loaded {
    /// A typed loader's answer as bytes (postcard); `None` = not found.
    pub(crate) fn encode<T: Serialize>(t: Option<T>) -> Result<Loaded, LoadError> {
        Ok(match t {
            Some(t) => Loaded::Value(postcard::to_allocvec(&t)?.into()),
            None => Loaded::NotFound,
        })
    }
}

impl<T> Lookup<T> {
    pub(crate) fn new(value: Option<T>, origin: Origin) -> Self {
        Lookup {
            value,
            origin,
            error: None,
        }
    }
    /// Whether the value is past its expiry.
    pub fn is_stale(&self) -> bool {
        matches!(self.origin, Origin::Stale { .. })
    }
    /// How long past its expiry a stale value is.
    pub fn stale_by(&self) -> Option<Duration> {
        match self.origin {
            Origin::Stale { stale_by, .. } => Some(stale_by),
            _ => None,
        }
    }
    /// Whether the upstream said the key does not exist.
    pub fn is_not_found(&self) -> bool {
        self.value.is_none()
    }
}

/// Errors of the loading API. Clone: one error is shared by every caller
/// waiting on the same load.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The loader failed. Not cached: the next call tries again.
    #[error("loading from upstream `{upstream}` failed: {source}")]
    Failed {
        upstream: Arc<str>,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The upstream's breaker is open and no stale value was available.
    #[error(
        "upstream `{upstream}` is unavailable (circuit breaker open, next probe in {retry_after:?}); configure max_stale to serve old values meanwhile"
    )]
    BreakerOpen {
        upstream: Arc<str>,
        retry_after: Duration,
    },
    /// A batch loader did not return this key (neither a value, nor
    /// `NotFound`, nor an error). Not cached.
    #[error("the batch loader for upstream `{upstream}` did not return this key")]
    NotReturned { upstream: Arc<str> },
    /// `refresh`, `load` or the refresher needs a loader registered with
    /// `Cache::register_loader` for this namespace.
    #[error("no loader registered for namespace {namespace:?}; call Cache::register_loader")]
    NoLoader { namespace: String },
    /// Reading the cache failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A typed value could not be (de)serialized.
    #[error("value (de)serialization failed: {0}")]
    Serde(#[from] postcard::Error),
    /// A breaker setting is invalid.
    #[error(transparent)]
    Config(#[from] BreakerConfigError),
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Message(String);

impl LoadError {
    /// A loader failure from any error type (the upstream name is filled
    /// in by the cache).
    pub fn failed(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        LoadError::Failed {
            upstream: "".into(),
            source: Arc::new(e),
        }
    }
    /// A loader failure described by a message.
    pub fn message(msg: impl Into<String>) -> Self {
        Self::failed(Message(msg.into()))
    }
    fn with_upstream(self, up: &Arc<str>) -> Self {
        match self {
            LoadError::Failed { upstream, source } if upstream.is_empty() => LoadError::Failed {
                upstream: up.clone(),
                source,
            },
            e => e,
        }
    }
}

impl From<WriteError> for LoadError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::InvalidNamespace { name, reason } => {
                LoadError::Read(ReadError::InvalidNamespace { name, reason })
            }
            WriteError::Closed => LoadError::Read(ReadError::Closed),
            e => LoadError::failed(e),
        }
    }
}

/// What a batch loader returns: per key a value, `NotFound` or an error.
/// Keys it leaves out are reported as [`LoadError::NotReturned`].
pub type BatchLoaded = HashMap<Vec<u8>, Result<Loaded, LoadError>>;

/// The namespace suffix of negative-cache markers: "not found" answers of
/// namespace `ns` live in namespace `ns#neg`, so `Cache::get(ns, ..)`
/// never sees them.
pub const NEGATIVE_SUFFIX: &str = "#neg";

/// Everything one loading call needs, resolved once.
pub(crate) struct Ctx {
    pub st: Arc<LoadState>,
    pub ns: Arc<NsState>,
    pub name: Arc<str>,
    pub policy: LoadPolicy,
    pub ns_policy: NamespacePolicy,
    pub epoch: u64,
}

/// What the cache holds for a key.
pub(crate) enum Cached {
    Fresh(Bytes, Option<Duration>),
    Negative,
    Stale(Bytes, Duration),
    Miss,
}

/// What a single-key load does with what the cache holds, before any load.
/// Shared by the sync and async forms, which differ only in how they spawn
/// a refresh and run the loader.
pub(crate) enum Decision {
    /// Answer at once.
    Answer(Lookup),
    /// Answer at once; a background refresh is due (XFetch early refresh
    /// of a fresh value).
    EarlyRefresh(Lookup),
    /// Answer the stale value at once and refresh it in the background.
    Revalidate(Lookup),
    /// Load now; the stale value (and how stale) is the fallback.
    Load(Option<(Bytes, Duration)>),
}

fn crc(v: &[u8]) -> u32 {
    crc32fast::hash(v)
}

impl Ctx {
    pub(crate) fn neg_ns(&self) -> String {
        format!("{}{NEGATIVE_SUFFIX}", self.name)
    }
    pub(crate) fn base_ttl_ms(&self) -> u64 {
        ms(self
            .policy
            .ttl
            .or(self.ns_policy.default_ttl)
            .unwrap_or(Duration::from_secs(300)))
    }
    pub(crate) fn stale_for(&self) -> Duration {
        self.ns_policy.stale_for.unwrap_or_default()
    }
    pub(crate) fn max_stale(&self) -> Duration {
        self.ns_policy.max_stale.unwrap_or_default()
    }
    pub(crate) fn fkey(&self, key: &[u8]) -> FlightKey {
        (self.name.clone(), key.to_vec())
    }
}

type Waiting = Vec<(usize, super::single_flight::Follower<FlightResult>)>;

/// A batch between its cache lookups and its load.
pub(crate) struct BatchPlan {
    pub cx: Ctx,
    pub upstream: Arc<str>,
    out: Vec<Option<Result<Lookup, LoadError>>>,
    stale: HashMap<usize, (Bytes, Duration)>,
    pub to_load: Vec<(usize, super::single_flight::Leader<FlightKey, FlightResult>)>,
    pub followers: Waiting,
}

impl BatchPlan {
    /// Records the result a waited-for key got from another caller's load
    /// (`None`: that load was abandoned).
    pub(crate) fn follower_done(&mut self, i: usize, r: Option<FlightResult>) {
        let r = r.unwrap_or_else(|| {
            Err(LoadError::NotReturned {
                upstream: self.upstream.clone(),
            })
        });
        let stale = self.stale.remove(&i);
        self.out[i] = Some(Cache::finish(&self.cx, r, Origin::Loader, stale));
    }

    pub(crate) fn into_results(self) -> Vec<Result<Lookup, LoadError>> {
        let up = self.upstream;
        self.out
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(LoadError::NotReturned {
                        upstream: up.clone(),
                    })
                })
            })
            .collect()
    }
}

/// A load in progress: the breaker permit and when it started.
pub(crate) struct Started {
    permit: Permit,
    breaker: CircuitBreaker,
    transitions: u64,
    t0: u64,
}

impl Cache {
    fn load_state(&self) -> Arc<LoadState> {
        LoadState::of(self)
    }

    pub(crate) fn ctx(&self, ns: &str) -> Result<Ctx, LoadError> {
        let n = self.sh().ns.get(ns)?;
        let st = self.load_state();
        let nss = st.ns(self, ns);
        Ok(Ctx {
            policy: st.policy(ns),
            ns: nss,
            st,
            name: n.name.clone(),
            ns_policy: n.policy.clone(),
            epoch: n.epoch(),
        })
    }

    /// Counts the access and decides from the cache alone (see [`Decision`]).
    pub(crate) fn decide(&self, cx: &Ctx, key: &[u8]) -> Result<Decision, LoadError> {
        let c = &cx.ns.counters;
        cx.ns.access(self, key, &cx.policy, self.now_ms());
        Ok(match self.cached(cx, key)? {
            Cached::Fresh(v, ttl) => {
                c.cache_hits.fetch_add(1, Ordering::Relaxed);
                let l = Lookup::new(Some(v), Origin::Cache);
                if self.wants_early_refresh(cx, key, ttl) {
                    Decision::EarlyRefresh(l)
                } else {
                    Decision::Answer(l)
                }
            }
            Cached::Negative => {
                c.negative_hits.fetch_add(1, Ordering::Relaxed);
                Decision::Answer(Lookup::new(None, Origin::Cache))
            }
            Cached::Stale(v, by) if by <= cx.stale_for() => {
                c.stale_served.fetch_add(1, Ordering::Relaxed);
                let origin = Origin::Stale {
                    stale_by: by,
                    reason: StaleReason::Revalidating,
                };
                Decision::Revalidate(Lookup::new(Some(v), origin))
            }
            Cached::Stale(v, by) => Decision::Load(Some((v, by))),
            Cached::Miss => Decision::Load(None),
        })
    }

    pub(crate) fn cached(&self, cx: &Ctx, key: &[u8]) -> Result<Cached, LoadError> {
        let entry = self.get_entry(&cx.name, key)?;
        if let Some(e) = &entry
            && e.stale_by.is_none()
        {
            return Ok(Cached::Fresh(e.value.clone(), e.ttl));
        }
        if cx.ns_policy.negative_ttl.is_some()
            && let Some(m) = self.get(&cx.neg_ns(), key)?
            && m.as_ref() == cx.epoch.to_le_bytes()
        {
            return Ok(Cached::Negative);
        }
        Ok(match entry {
            Some(e) => Cached::Stale(e.value, e.stale_by.unwrap_or_default()),
            None => Cached::Miss,
        })
    }

    /// A live value or live "not found", for the leader's second look.
    pub(crate) fn recheck(&self, cx: &Ctx, key: &[u8]) -> Result<Option<Option<Bytes>>, LoadError> {
        Ok(match self.cached(cx, key)? {
            Cached::Fresh(v, _) => Some(Some(v)),
            Cached::Negative => Some(None),
            _ => None,
        })
    }

    /// Asks the upstream's breaker for a permit.
    pub(crate) fn begin_load(&self, cx: &Ctx, upstream: &Arc<str>) -> Result<Started, LoadError> {
        let breaker = cx.st.breaker(self, upstream);
        let t0 = self.now_ms();
        let transitions = breaker.transitions_total();
        match breaker.try_acquire(t0) {
            Ok(permit) => Ok(Started {
                permit,
                breaker,
                transitions,
                t0,
            }),
            Err(open) => {
                cx.ns.counters.rejected.fetch_add(1, Ordering::Relaxed);
                self.persist_breaker_if_changed(&breaker, transitions);
                Err(LoadError::BreakerOpen {
                    upstream: upstream.clone(),
                    retry_after: open.retry_after,
                })
            }
        }
    }

    fn persist_breaker_if_changed(&self, b: &CircuitBreaker, before: u64) {
        if b.transitions_total() != before {
            let bytes = postcard::to_allocvec(&b.snapshot()).unwrap_or_default();
            if let Err(e) =
                self.loader_meta_put(&format!("{META_BREAKER}{}", b.name()), Some(bytes))
            {
                tracing::warn!(upstream = b.name(), error = %e, "saving breaker state failed");
            }
        }
    }

    /// Records the outcome with the breaker and stores the result.
    pub(crate) fn end_load(
        &self,
        cx: &Ctx,
        key: &[u8],
        upstream: &Arc<str>,
        s: Started,
        r: Result<Loaded, LoadError>,
    ) -> FlightResult {
        let (latency, t1) = self.record_call(s, r.is_ok());
        self.store_loaded(cx, key, upstream, r, latency, t1)
    }

    /// Tells the breaker how the call went; returns its latency and end.
    fn record_call(&self, s: Started, ok: bool) -> (Duration, u64) {
        let t1 = self.now_ms();
        let latency = Duration::from_millis(t1.saturating_sub(s.t0));
        let outcome = if ok {
            CallOutcome::Success
        } else {
            CallOutcome::Failure
        };
        s.permit.record(outcome, latency, t1);
        self.persist_breaker_if_changed(&s.breaker, s.transitions);
        (latency, t1)
    }

    /// Counts a load and stores its answer: the value with its adaptive
    /// TTL, or a negative marker, or nothing for an error.
    fn store_loaded(
        &self,
        cx: &Ctx,
        key: &[u8],
        upstream: &Arc<str>,
        r: Result<Loaded, LoadError>,
        latency: Duration,
        t1: u64,
    ) -> FlightResult {
        let c = &cx.ns.counters;
        c.loads.fetch_add(1, Ordering::Relaxed);
        cx.ns.latency.observe(latency);
        match r {
            Ok(Loaded::Value(v)) => {
                let ttl = {
                    let mut t = cx.ns.keys.lock();
                    let bounds = cx.policy.adaptive.map(|(a, b)| (ms(a), ms(b)));
                    t.record_load(key, crc(&v), ms(latency), cx.base_ttl_ms(), bounds);
                    let ttl = t.ttl_for(key, &cx.policy, cx.base_ttl_ms(), t1);
                    adaptive::jitter(ttl, cx.policy.ttl_jitter, cx.st.rng.unit())
                };
                cx.ns.dirty.store(true, Ordering::Relaxed);
                c.last_ttl_ms.store(ttl, Ordering::Relaxed);
                // Stored only if the namespace was not invalidated while the
                // upstream answered: an answer computed before the
                // invalidation must not land after it.
                let ttl = Some(Duration::from_millis(ttl));
                let wait = self.sh().waits(false);
                let stored =
                    self.sh()
                        .set_in_epoch(&cx.name, key, v.clone(), ttl, wait, Some(cx.epoch));
                if let Err(e) = stored {
                    tracing::warn!(namespace = %cx.name, error = %e, "storing a loaded value failed");
                }
                if cx.ns_policy.negative_ttl.is_some()
                    && self.contains(&cx.neg_ns(), key).unwrap_or(false)
                {
                    let _ = self.delete(&cx.neg_ns(), key);
                }
                Ok(Some(v))
            }
            Ok(Loaded::NotFound) => {
                if let Some(nt) = cx.ns_policy.negative_ttl {
                    let marker = cx.epoch.to_le_bytes().to_vec();
                    if self.set_with_ttl(&cx.neg_ns(), key, marker, nt).is_ok() {
                        c.negatives_stored.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // An old value must not be served for a key that is gone.
                if self.get_entry(&cx.name, key).ok().flatten().is_some() {
                    let _ = self.delete(&cx.name, key);
                }
                Ok(None)
            }
            Err(e) => {
                c.load_errors.fetch_add(1, Ordering::Relaxed);
                Err(e.with_upstream(upstream))
            }
        }
    }

    /// Loads `key` single-flight, blocking; `force` skips the second look
    /// at the cache (explicit refresh).
    fn load_sync<F>(
        &self,
        cx: &Ctx,
        key: &[u8],
        upstream: &Arc<str>,
        loader: F,
        force: bool,
    ) -> (FlightResult, Origin)
    where
        F: FnOnce(&[u8]) -> Result<Loaded, LoadError>,
    {
        let fk = cx.fkey(key);
        loop {
            match cx.st.flights.join(&fk) {
                Role::Leader(l) => {
                    if !force {
                        match self.recheck(cx, key) {
                            Ok(Some(v)) => {
                                l.complete(Ok(v.clone()));
                                return (Ok(v), Origin::Cache);
                            }
                            Ok(None) => {}
                            Err(e) => {
                                l.complete(Err(e.clone()));
                                return (Err(e), Origin::Loader);
                            }
                        }
                    }
                    let r = match self.begin_load(cx, upstream) {
                        Ok(s) => {
                            let r = loader(key);
                            self.end_load(cx, key, upstream, s, r)
                        }
                        Err(e) => Err(e),
                    };
                    l.complete(r.clone());
                    return (r, Origin::Loader);
                }
                Role::Follower(f) => {
                    if let Some(r) = f.wait() {
                        return (r, Origin::Loader);
                    }
                }
            }
        }
    }

    /// Turns a load result into the caller's answer, serving a stale value
    /// on error when one is young enough.
    pub(crate) fn finish(
        cx: &Ctx,
        r: FlightResult,
        origin: Origin,
        stale: Option<(Bytes, Duration)>,
    ) -> Result<Lookup, LoadError> {
        match r {
            Ok(v) => Ok(Lookup::new(v, origin)),
            Err(e) => match stale {
                Some((v, by)) if by <= cx.max_stale().max(cx.stale_for()) => {
                    cx.ns.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                    let reason = if matches!(e, LoadError::BreakerOpen { .. }) {
                        StaleReason::BreakerOpen
                    } else {
                        StaleReason::LoadFailed
                    };
                    Ok(Lookup {
                        value: Some(v),
                        origin: Origin::Stale {
                            stale_by: by,
                            reason,
                        },
                        error: Some(e),
                    })
                }
                _ => Err(e),
            },
        }
    }

    /// Starts one background refresh of `key` on a thread, unless a load of
    /// it is already in flight.
    fn spawn_refresh<F>(&self, cx: &Ctx, key: &[u8], upstream: &Arc<str>, loader: F) -> bool
    where
        F: FnOnce(&[u8]) -> Result<Loaded, LoadError> + Send + 'static,
    {
        let Some(leader) = cx.st.flights.try_lead(&cx.fkey(key)) else {
            return false;
        };
        let cache = self.clone();
        let (key, upstream) = (key.to_vec(), upstream.clone());
        let name = cx.name.clone();
        cx.st.reap();
        let spawned = std::thread::Builder::new()
            .name("embercache-refresh".into())
            .spawn(move || {
                let r = match cache.ctx(&name) {
                    Ok(cx) => {
                        cx.ns.counters.refreshes.fetch_add(1, Ordering::Relaxed);
                        match cache.begin_load(&cx, &upstream) {
                            Ok(s) => {
                                let r = loader(&key);
                                cache.end_load(&cx, &key, &upstream, s, r)
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                };
                leader.complete(r);
            });
        match spawned {
            Ok(h) => {
                cx.st.threads.lock().push(h);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not start a background refresh");
                false
            }
        }
    }

    /// Whether XFetch says a fresh hit should be refreshed early.
    pub(crate) fn wants_early_refresh(&self, cx: &Ctx, key: &[u8], ttl: Option<Duration>) -> bool {
        let Some(ttl) = ttl else { return false };
        if cx.policy.xfetch_beta <= 0.0 {
            return false;
        }
        let delta = match cx.ns.keys.lock().keys.get(key) {
            Some(s) if s.loads > 0 => u64::from(s.load_ms),
            _ => return false,
        };
        adaptive::xfetch(
            delta,
            cx.policy.xfetch_beta,
            ms(ttl),
            1.0 - cx.st.rng.unit(),
        )
    }

    /// Reads `key` from `ns`, loading it through `loader` on a miss.
    ///
    /// * A live value is returned at once (`Origin::Cache`); on a hot key
    ///   close to expiry, XFetch may start one background refresh.
    /// * A live "not found" (see `NamespacePolicy::negative_ttl`) returns
    ///   `value: None` without calling the loader.
    /// * A value expired less than `stale_for` ago is returned at once,
    ///   marked stale, and exactly one background refresh runs.
    /// * Otherwise the loader runs once for all concurrent callers of this
    ///   key (single-flight) through `upstream`'s circuit breaker. If it
    ///   fails or the breaker is open, a value expired less than
    ///   `max_stale` ago is returned marked stale, with the error.
    ///
    /// The loader must be `Send + 'static` because a background refresh
    /// runs it on another thread.
    ///
    /// ```
    /// use embercache::{Cache, Loaded, NamespacePolicy};
    /// use std::time::Duration;
    /// let cache = Cache::builder()
    ///     .namespace("price", NamespacePolicy::default().ttl(Duration::from_secs(180)))
    ///     .open()?;
    /// let r = cache.get_or_load("price", b"ETH", "prices-api", |_key| {
    ///     Ok(Loaded::value(b"3120.25".to_vec())) // call the upstream here
    /// })?;
    /// assert_eq!(r.value.as_deref(), Some(&b"3120.25"[..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn get_or_load<F>(
        &self,
        ns: &str,
        key: &[u8],
        upstream: &str,
        loader: F,
    ) -> Result<Lookup, LoadError>
    where
        F: FnOnce(&[u8]) -> Result<Loaded, LoadError> + Send + 'static,
    {
        let cx = self.ctx(ns)?;
        let upstream: Arc<str> = upstream.into();
        let stale = match self.decide(&cx, key)? {
            Decision::Answer(l) => return Ok(l),
            Decision::EarlyRefresh(l) => {
                if self.spawn_refresh(&cx, key, &upstream, loader) {
                    let c = &cx.ns.counters.early_refreshes;
                    c.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(l);
            }
            Decision::Revalidate(l) => {
                self.spawn_refresh(&cx, key, &upstream, loader);
                return Ok(l);
            }
            Decision::Load(stale) => stale,
        };
        let (r, origin) = self.load_sync(&cx, key, &upstream, loader, false);
        Self::finish(&cx, r, origin, stale)
    }

    /// [`Cache::get_or_load`] with a typed value (postcard). The loader
    /// returns `Ok(None)` when the key does not exist upstream.
    pub fn get_or_load_as<T, F>(
        &self,
        ns: &str,
        key: &[u8],
        upstream: &str,
        loader: F,
    ) -> Result<Lookup<T>, LoadError>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(&[u8]) -> Result<Option<T>, LoadError> + Send + 'static,
    {
        self.get_or_load(ns, key, upstream, move |k| Loaded::encode(loader(k)?))?
            .decode()
    }

    /// Reads many keys; the loader is called at most once, with only the
    /// keys that are missing (or expired) and not already being loaded by
    /// another caller. It may answer for some keys only: the others get
    /// [`LoadError::NotReturned`]. Results are in the order of `keys`.
    ///
    /// Stale values are not revalidated in the background here: an expired
    /// key is loaded with the others, and its old value (within
    /// `max(stale_for, max_stale)`) is served only if that load fails.
    pub fn get_many_or_load<K, F>(
        &self,
        ns: &str,
        keys: &[K],
        upstream: &str,
        loader: F,
    ) -> Result<Vec<Result<Lookup, LoadError>>, LoadError>
    where
        K: AsRef<[u8]>,
        F: FnOnce(&[&[u8]]) -> Result<BatchLoaded, LoadError>,
    {
        let keys: Vec<&[u8]> = keys.iter().map(AsRef::as_ref).collect();
        let mut plan = self.batch_plan(ns, &keys, upstream)?;
        if !plan.to_load.is_empty() {
            let r = match self.begin_load(&plan.cx, &plan.upstream) {
                Err(e) => Err(e),
                Ok(s) => {
                    let ks: Vec<&[u8]> = plan.to_load.iter().map(|(i, _)| keys[*i]).collect();
                    let r = loader(&ks);
                    Ok((s, r))
                }
            };
            self.batch_store(&mut plan, &keys, r);
        }
        for (i, f) in std::mem::take(&mut plan.followers) {
            let r = f.wait();
            plan.follower_done(i, r);
        }
        Ok(plan.into_results())
    }

    /// The first half of a batch: answers from the cache, and the keys to
    /// load (led by this call) or to wait for (led by another).
    pub(crate) fn batch_plan(
        &self,
        ns: &str,
        keys: &[&[u8]],
        upstream: &str,
    ) -> Result<BatchPlan, LoadError> {
        let cx = self.ctx(ns)?;
        let upstream: Arc<str> = upstream.into();
        let now = self.now_ms();
        let mut out: Vec<Option<Result<Lookup, LoadError>>> = Vec::with_capacity(keys.len());
        let mut stale: HashMap<usize, (Bytes, Duration)> = HashMap::new();
        let mut leaders = Vec::new();
        let mut followers = Vec::new();
        for (i, &key) in keys.iter().enumerate() {
            cx.ns.access(self, key, &cx.policy, now);
            match self.cached(&cx, key)? {
                Cached::Fresh(v, _) => {
                    cx.ns.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                    out.push(Some(Ok(Lookup::new(Some(v), Origin::Cache))));
                    continue;
                }
                Cached::Negative => {
                    cx.ns.counters.negative_hits.fetch_add(1, Ordering::Relaxed);
                    out.push(Some(Ok(Lookup::new(None, Origin::Cache))));
                    continue;
                }
                Cached::Stale(v, by) => {
                    stale.insert(i, (v, by));
                }
                Cached::Miss => {}
            }
            out.push(None);
            match cx.st.flights.join(&cx.fkey(key)) {
                Role::Leader(l) => leaders.push((i, l)),
                Role::Follower(f) => followers.push((i, f)),
            }
        }
        // Second look for the keys we lead (see single_flight.rs).
        let mut to_load = Vec::new();
        for (i, l) in leaders {
            match self.recheck(&cx, keys[i]) {
                Ok(Some(v)) => {
                    l.complete(Ok(v.clone()));
                    out[i] = Some(Ok(Lookup::new(v, Origin::Cache)));
                }
                _ => to_load.push((i, l)),
            }
        }
        Ok(BatchPlan {
            cx,
            upstream,
            out,
            stale,
            to_load,
            followers,
        })
    }

    /// The second half: records the batch call with the breaker, stores
    /// each answer and hands it to the key's waiters.
    pub(crate) fn batch_store(
        &self,
        plan: &mut BatchPlan,
        keys: &[&[u8]],
        r: Result<(Started, Result<BatchLoaded, LoadError>), LoadError>,
    ) {
        let up = plan.upstream.clone();
        let (mut found, timing) = match r {
            Err(e) => (Err(e), None),
            Ok((s, r)) => {
                let timing = self.record_call(s, r.is_ok());
                (r.map_err(|e| e.with_upstream(&up)), Some(timing))
            }
        };
        for (i, l) in std::mem::take(&mut plan.to_load) {
            let key = keys[i];
            let r = match (&mut found, timing) {
                (Err(e), _) => Err(e.clone()),
                (Ok(m), Some((latency, t1))) => {
                    let one = m.remove(key).unwrap_or_else(|| {
                        Err(LoadError::NotReturned {
                            upstream: up.clone(),
                        })
                    });
                    self.store_loaded(&plan.cx, key, &up, one, latency, t1)
                }
                (Ok(_), None) => Err(LoadError::NotReturned {
                    upstream: up.clone(),
                }),
            };
            l.complete(r.clone());
            let stale = plan.stale.remove(&i);
            plan.out[i] = Some(Self::finish(&plan.cx, r, Origin::Loader, stale));
        }
    }

    // ----- configuration ----------------------------------------------

    /// Sets how `ns` loads (TTL, adaptation, jitter, XFetch, sampling).
    /// Stale windows and the negative TTL are on [`NamespacePolicy`].
    pub fn set_load_policy(&self, ns: &str, policy: LoadPolicy) {
        self.load_state()
            .policies
            .write()
            .insert(ns.to_string(), policy);
    }

    /// Configures `upstream`'s breaker (replacing the environment-derived
    /// defaults). Its persisted state, if any, is kept.
    pub fn configure_upstream(
        &self,
        upstream: &str,
        config: BreakerConfig,
    ) -> Result<(), LoadError> {
        config.validate()?;
        let st = self.load_state();
        st.upstream_cfg.write().insert(upstream.to_string(), config);
        let old = st.breakers.write().remove(upstream);
        let b = st.breaker(self, upstream);
        if let Some(old) = old {
            b.restore(&old.snapshot());
        }
        Ok(())
    }

    /// The breaker of `upstream` (created with its settings on first use).
    pub fn breaker(&self, upstream: &str) -> CircuitBreaker {
        self.load_state().breaker(self, upstream)
    }

    /// Registers the loader of `ns`, used by [`Cache::load`],
    /// [`Cache::refresh`], [`Cache::refresh_namespace`], the refresher and
    /// preloading.
    pub fn register_loader<F>(&self, ns: &str, upstream: &str, loader: F)
    where
        F: Fn(&[u8]) -> Result<Loaded, LoadError> + Send + Sync + 'static,
    {
        self.load_state().loaders.write().insert(
            ns.to_string(),
            Registered {
                upstream: upstream.into(),
                loader: Arc::new(loader),
            },
        );
    }

    pub(crate) fn registered(&self, ns: &str) -> Result<Registered, LoadError> {
        self.load_state()
            .loaders
            .read()
            .get(ns)
            .cloned()
            .ok_or_else(|| LoadError::NoLoader {
                namespace: ns.to_string(),
            })
    }

    /// [`Cache::get_or_load`] with the loader registered for `ns`.
    pub fn load(&self, ns: &str, key: &[u8]) -> Result<Lookup, LoadError> {
        let r = self.registered(ns)?;
        let f: SharedLoader = r.loader.clone();
        self.get_or_load(ns, key, &r.upstream, move |k| f(k))
    }

    /// Reloads `key` now through the registered loader (single-flight,
    /// through the breaker), whatever its freshness: for events such as a
    /// trade or a big market move. On failure the cached value stays.
    pub fn refresh(&self, ns: &str, key: &[u8]) -> Result<Lookup, LoadError> {
        let reg = self.registered(ns)?;
        let cx = self.ctx(ns)?;
        cx.ns.counters.refreshes.fetch_add(1, Ordering::Relaxed);
        let f = reg.loader.clone();
        let (r, origin) = self.load_sync(&cx, key, &reg.upstream, move |k| f(k), true);
        r.map(|v| Lookup::new(v, origin))
    }

    /// Reloads every cached key of `ns` (live or stale) through the
    /// registered loader, one by one. Returns how many were refreshed and
    /// how many failed.
    pub fn refresh_namespace(&self, ns: &str) -> Result<RefreshReport, LoadError> {
        self.registered(ns)?;
        let mut keys: Vec<Vec<u8>> = self.scan(ns, b"")?.into_iter().map(|(k, _)| k).collect();
        let cx = self.ctx(ns)?;
        for k in cx.ns.keys.lock().keys.keys() {
            keys.push(k.clone());
        }
        keys.sort();
        keys.dedup();
        let mut rep = RefreshReport::default();
        for k in keys {
            if self.get_entry(ns, &k)?.is_none() {
                continue;
            }
            match self.refresh(ns, &k) {
                Ok(_) => rep.refreshed += 1,
                Err(_) => rep.failed += 1,
            }
        }
        Ok(rep)
    }

    /// Marks recent activity on `key` (a trade): for the namespace's
    /// `LoadPolicy::activity_for` its TTL is at most `activity_ttl`, and a
    /// cached value living longer is cut to it now. Then the TTL relaxes
    /// back to its learned value.
    pub fn touch_activity(&self, ns: &str, key: &[u8]) -> Result<(), LoadError> {
        let cx = self.ctx(ns)?;
        let Some(short) = cx.policy.activity_ttl else {
            return Ok(());
        };
        let now = self.now_ms();
        {
            let mut t = cx.ns.keys.lock();
            let s = t.keys.entry(key.to_vec()).or_default();
            s.active_until = now.saturating_add(ms(cx.policy.activity_for));
        }
        cx.ns.dirty.store(true, Ordering::Relaxed);
        if let Some(e) = self.get_entry(ns, key)?
            && e.stale_by.is_none()
            && e.ttl.is_none_or(|t| t > short)
        {
            self.set_with_ttl(ns, key, e.value, short)?;
        }
        Ok(())
    }

    /// The TTL a value of `key` loaded now would get (learned, capped by
    /// activity), before jitter.
    pub fn learned_ttl(&self, ns: &str, key: &[u8]) -> Result<Duration, LoadError> {
        let cx = self.ctx(ns)?;
        let t = cx
            .ns
            .keys
            .lock()
            .ttl_for(key, &cx.policy, cx.base_ttl_ms(), self.now_ms());
        Ok(Duration::from_millis(t))
    }

    /// Writes the learned state (key statistics, breakers) to the database
    /// now; durable with the next commit or `flush()`. It is also saved
    /// every 10 s of activity and on breaker transitions.
    pub fn save_load_state(&self) -> Result<(), WriteError> {
        let st = self.load_state();
        let now = self.now_ms();
        let nss: Vec<Arc<NsState>> = st.namespaces.read().values().cloned().collect();
        for n in nss {
            n.save(self, now)?;
        }
        let bs: Vec<CircuitBreaker> = st.breakers.read().values().cloned().collect();
        for b in bs {
            let bytes = postcard::to_allocvec(&b.snapshot()).unwrap_or_default();
            self.loader_meta_put(&format!("{META_BREAKER}{}", b.name()), Some(bytes))?;
        }
        Ok(())
    }

    /// Waits for the background refreshes started so far (threads; tasks
    /// with `wait_refreshes_async`). For tests and orderly shutdown.
    pub fn wait_refreshes(&self) {
        let st = self.load_state();
        let hs: Vec<_> = st.threads.lock().drain(..).collect();
        for h in hs {
            let _ = h.join();
        }
    }
}

/// What a refresh pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefreshReport {
    /// Keys reloaded successfully.
    pub refreshed: u64,
    /// Keys whose reload failed (the old value stays).
    pub failed: u64,
    /// Keys skipped because their upstream's rate limit was used up.
    pub rate_limited: u64,
}

pub(crate) fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<LoadError>();
    is::<Lookup>();
}
