//! `get_or_load_async`: the same model as `get_or_load` for tokio tasks.
//! Followers await a `Notify` instead of blocking a thread; background
//! refreshes are tokio tasks.
//!
//! Cache reads and writes are called directly: hot-tier hits take a shared
//! lock, writes in `Buffered` mode only enqueue. A warm-tier read touches
//! redb (usually the page cache); in `Durability::Sync` the store of a
//! loaded value waits for its fsync, so it is moved to `spawn_blocking`.

use super::loader::{BatchLoaded, Ctx, Decision, LoadError, Loaded, Lookup, Origin};
use super::single_flight::Role;
use super::state::FlightResult;
use crate::Cache;
use crate::config::Durability;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

impl Cache {
    /// [`Cache::get_or_load`] for async code: the loader returns a future;
    /// concurrent callers (tasks or threads) share one load; a stale value
    /// within `stale_for` is served at once while one tokio task refreshes
    /// it. Must be called within a tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use embercache::{Cache, Loaded};
    /// let cache = Cache::builder().open()?;
    /// let r = cache
    ///     .get_or_load_async("position", b"alice", "positions-api", |key| async move {
    ///         Ok(Loaded::value(format!("positions of {}", String::from_utf8_lossy(&key))))
    ///     })
    ///     .await?;
    /// assert_eq!(r.value.as_deref(), Some(&b"positions of alice"[..]));
    /// # Ok(()) }
    /// ```
    pub async fn get_or_load_async<F, Fut>(
        &self,
        ns: &str,
        key: &[u8],
        upstream: &str,
        loader: F,
    ) -> Result<Lookup, LoadError>
    where
        F: FnOnce(Vec<u8>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Loaded, LoadError>> + Send + 'static,
    {
        let cx = self.ctx(ns)?;
        let upstream: Arc<str> = upstream.into();
        let stale = match self.decide(&cx, key)? {
            Decision::Answer(l) => return Ok(l),
            Decision::EarlyRefresh(l) => {
                if self.spawn_refresh_async(&cx, key, &upstream, loader) {
                    let c = &cx.ns.counters.early_refreshes;
                    c.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(l);
            }
            Decision::Revalidate(l) => {
                self.spawn_refresh_async(&cx, key, &upstream, loader);
                return Ok(l);
            }
            Decision::Load(stale) => stale,
        };
        let fk = cx.fkey(key);
        let (r, origin) = loop {
            match cx.st.flights.join(&fk) {
                Role::Leader(l) => {
                    match self.recheck(&cx, key) {
                        Ok(Some(v)) => {
                            l.complete(Ok(v.clone()));
                            break (Ok(v), Origin::Cache);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            l.complete(Err(e.clone()));
                            break (Err(e), Origin::Loader);
                        }
                    }
                    // If this task is cancelled here, dropping `l` abandons
                    // the flight and a follower takes over.
                    let r = self.run_async(&cx, key, &upstream, loader).await;
                    l.complete(r.clone());
                    break (r, Origin::Loader);
                }
                Role::Follower(f) => {
                    if let Some(r) = f.wait_async().await {
                        break (r, Origin::Loader);
                    }
                }
            }
        };
        Cache::finish(&cx, r, origin, stale)
    }

    /// [`Cache::get_or_load_async`] with a typed value (postcard); the
    /// loader returns `Ok(None)` when the key does not exist upstream.
    pub async fn get_or_load_as_async<T, F, Fut>(
        &self,
        ns: &str,
        key: &[u8],
        upstream: &str,
        loader: F,
    ) -> Result<Lookup<T>, LoadError>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce(Vec<u8>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, LoadError>> + Send + 'static,
    {
        self.get_or_load_async(ns, key, upstream, move |k| async move {
            Loaded::encode(loader(k).await?)
        })
        .await?
        .decode()
    }

    /// [`Cache::get_many_or_load`] for async code: one loader call for the
    /// missing keys not already being loaded; keys loaded by other callers
    /// are awaited without blocking the runtime.
    pub async fn get_many_or_load_async<K, F, Fut>(
        &self,
        ns: &str,
        keys: &[K],
        upstream: &str,
        loader: F,
    ) -> Result<Vec<Result<Lookup, LoadError>>, LoadError>
    where
        K: AsRef<[u8]>,
        F: FnOnce(Vec<Vec<u8>>) -> Fut,
        Fut: Future<Output = Result<BatchLoaded, LoadError>>,
    {
        let keys: Vec<&[u8]> = keys.iter().map(AsRef::as_ref).collect();
        let mut plan = self.batch_plan(ns, &keys, upstream)?;
        if !plan.to_load.is_empty() {
            let r = match self.begin_load(&plan.cx, &plan.upstream) {
                Err(e) => Err(e),
                Ok(s) => {
                    let ks: Vec<Vec<u8>> = plan
                        .to_load
                        .iter()
                        .map(|(i, _)| keys[*i].to_vec())
                        .collect();
                    Ok((s, loader(ks).await))
                }
            };
            self.batch_store(&mut plan, &keys, r);
        }
        for (i, f) in std::mem::take(&mut plan.followers) {
            let r = f.wait_async().await;
            plan.follower_done(i, r);
        }
        Ok(plan.into_results())
    }

    async fn run_async<F, Fut>(
        &self,
        cx: &Ctx,
        key: &[u8],
        upstream: &Arc<str>,
        loader: F,
    ) -> FlightResult
    where
        F: FnOnce(Vec<u8>) -> Fut,
        Fut: Future<Output = Result<Loaded, LoadError>>,
    {
        let s = self.begin_load(cx, upstream)?;
        let r = loader(key.to_vec()).await;
        if self.sh().durability == Durability::Sync {
            let (cache, name, key, up) = (
                self.clone(),
                cx.name.clone(),
                key.to_vec(),
                upstream.clone(),
            );
            let h = tokio::task::spawn_blocking(move || {
                let cx = cache.ctx(&name)?;
                cache.end_load(&cx, &key, &up, s, r)
            });
            return h
                .await
                .unwrap_or_else(|e| Err(LoadError::message(format!("store task failed: {e}"))));
        }
        self.end_load(cx, key, upstream, s, r)
    }

    fn spawn_refresh_async<F, Fut>(
        &self,
        cx: &Ctx,
        key: &[u8],
        upstream: &Arc<str>,
        loader: F,
    ) -> bool
    where
        F: FnOnce(Vec<u8>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Loaded, LoadError>> + Send + 'static,
    {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let Some(leader) = cx.st.flights.try_lead(&cx.fkey(key)) else {
            return false;
        };
        let cache = self.clone();
        let (key, upstream, name) = (key.to_vec(), upstream.clone(), cx.name.clone());
        cx.st.reap();
        let h = rt.spawn(async move {
            let r = match cache.ctx(&name) {
                Ok(cx) => {
                    cx.ns.counters.refreshes.fetch_add(1, Ordering::Relaxed);
                    cache.run_async(&cx, &key, &upstream, loader).await
                }
                Err(e) => Err(e),
            };
            leader.complete(r);
        });
        cx.st.tasks.lock().push(h);
        true
    }

    /// Waits for the background refresh tasks started so far.
    pub async fn wait_refreshes_async(&self) {
        let st = super::state::LoadState::of(self);
        let hs: Vec<_> = st.tasks.lock().drain(..).collect();
        for h in hs {
            let _ = h.await;
        }
    }
}
