//! Read-through loading end to end: stampedes, stale-while-revalidate, an
//! upstream outage behind its breaker, adaptive TTLs, negative caching,
//! batches, and what survives a restart. Time is a `ManualClock`; nothing
//! sleeps to wait for a condition (only bounded polling).

use embercache::{
    BreakerConfig, BreakerState, Cache, LoadError, LoadPolicy, Loaded, ManualClock,
    NamespacePolicy, Origin, RefresherConfig, StaleReason,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

const T0: u64 = 1_750_000_000_000;
const S: Duration = Duration::from_secs(1);

fn builder(clock: &ManualClock) -> embercache::CacheBuilder {
    Cache::builder()
        .clock(clock.clone())
        .shards(4)
        .hot_capacity(4 << 20)
}

/// A policy without randomness, so TTLs are exact.
fn exact(ttl: Duration) -> LoadPolicy {
    LoadPolicy::default()
        .ttl(ttl)
        .ttl_jitter(0.0)
        .xfetch_beta(0.0)
        .access_sample(1)
}

/// Polls `cond` (yielding) for at most 10 s of real time.
fn wait_until(mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "condition not reached in 10 s"
        );
        std::thread::yield_now();
    }
}

#[test]
fn stampede_of_10000_threads_makes_one_loader_call() {
    const N: usize = 10_000;
    let clock = ManualClock::new(T0);
    let cache = builder(&clock).open().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let arrived = Arc::new(AtomicUsize::new(0));
    let from_loader = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..N {
            let (cache, calls, arrived) = (cache.clone(), calls.clone(), arrived.clone());
            let from_loader = &from_loader;
            std::thread::Builder::new()
                .stack_size(128 << 10)
                .spawn_scoped(s, move || {
                    arrived.fetch_add(1, Ordering::SeqCst);
                    let a2 = arrived.clone();
                    let r = cache
                        .get_or_load("price", b"ETH", "prices-api", move |_| {
                            calls.fetch_add(1, Ordering::SeqCst);
                            // Hold the load until every thread has asked.
                            wait_until(|| a2.load(Ordering::SeqCst) == N);
                            Ok(Loaded::value(&b"3120.25"[..]))
                        })
                        .unwrap();
                    assert_eq!(r.value.as_deref(), Some(&b"3120.25"[..]));
                    if r.origin == Origin::Loader {
                        from_loader.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .unwrap();
        }
    });
    assert_eq!(calls.load(Ordering::SeqCst), 1, "exactly one loader call");
    println!(
        "stampede (threads): {N} gets, 1 loader call, {} waited on it, {} hit the cache",
        from_loader.load(Ordering::Relaxed),
        N - from_loader.load(Ordering::Relaxed)
    );
}

#[test]
fn stampede_of_10000_tasks_makes_one_loader_call() {
    const N: usize = 10_000;
    let clock = ManualClock::new(T0);
    let cache = builder(&clock).open().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_time()
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = tokio::sync::watch::channel(0usize);
    let tx = Arc::new(tx);
    let from_loader = rt.block_on(async {
        let mut tasks = Vec::with_capacity(N);
        for _ in 0..N {
            let (cache, calls, tx, rx) = (cache.clone(), calls.clone(), tx.clone(), rx.clone());
            tasks.push(tokio::spawn(async move {
                tx.send_modify(|n| *n += 1);
                let r = cache
                    .get_or_load_async("price", b"BTC", "prices-api", move |_| async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let mut rx = rx;
                        // Hold the load until every task has asked.
                        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|n| *n == N))
                            .await
                            .expect("all tasks arrive")
                            .unwrap();
                        Ok(Loaded::value(&b"97000.5"[..]))
                    })
                    .await
                    .unwrap();
                assert_eq!(r.value.as_deref(), Some(&b"97000.5"[..]));
                r.origin == Origin::Loader
            }));
        }
        let mut loaded = 0;
        for t in tasks {
            loaded += usize::from(t.await.unwrap());
        }
        loaded
    });
    assert_eq!(calls.load(Ordering::SeqCst), 1, "exactly one loader call");
    println!("stampede (tasks): {N} gets, 1 loader call, {from_loader} waited on it");
}

#[test]
fn threads_and_tasks_share_one_flight() {
    let clock = ManualClock::new(T0);
    let cache = builder(&clock).open().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let arrived = Arc::new(AtomicUsize::new(0));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let (cache, calls, arrived) = (cache.clone(), calls.clone(), arrived.clone());
        tasks.push(rt.spawn(async move {
            arrived.fetch_add(1, Ordering::SeqCst);
            let a2 = arrived.clone();
            cache
                .get_or_load_async("price", b"SOL", "prices-api", move |_| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    while a2.load(Ordering::SeqCst) < 1000 {
                        tokio::task::yield_now().await;
                    }
                    Ok(Loaded::value(&b"182.1"[..]))
                })
                .await
                .unwrap()
        }));
    }
    std::thread::scope(|s| {
        for _ in 0..500 {
            let (cache, calls, arrived) = (cache.clone(), calls.clone(), arrived.clone());
            s.spawn(move || {
                arrived.fetch_add(1, Ordering::SeqCst);
                let a2 = arrived.clone();
                let r = cache
                    .get_or_load("price", b"SOL", "prices-api", move |_| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        wait_until(|| a2.load(Ordering::SeqCst) >= 1000);
                        Ok(Loaded::value(&b"182.1"[..]))
                    })
                    .unwrap();
                assert_eq!(r.value.as_deref(), Some(&b"182.1"[..]));
            });
        }
    });
    rt.block_on(async {
        for t in tasks {
            assert_eq!(t.await.unwrap().value.as_deref(), Some(&b"182.1"[..]));
        }
    });
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn stale_while_revalidate_serves_at_once_with_one_refresh() {
    let clock = ManualClock::new(T0);
    let cache = builder(&clock)
        .namespace(
            "price",
            NamespacePolicy::default()
                .stale_for(Duration::from_secs(30))
                .max_stale(Duration::from_secs(60)),
        )
        .open()
        .unwrap();
    cache.set_load_policy("price", exact(10 * S));
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    cache
        .get_or_load("price", b"ETH", "prices-api", move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(Loaded::value(&b"v1"[..]))
        })
        .unwrap();
    clock.advance(15 * S); // 5 s past expiry, inside stale_for
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Arc::new(parking_lot::Mutex::new(release_rx));
    for _ in 0..100 {
        let (c, rx) = (calls.clone(), release_rx.clone());
        let r = cache
            .get_or_load("price", b"ETH", "prices-api", move |_| {
                c.fetch_add(1, Ordering::SeqCst);
                rx.lock().recv().unwrap(); // the upstream is slow
                Ok(Loaded::value(&b"v2"[..]))
            })
            .unwrap();
        assert_eq!(r.value.as_deref(), Some(&b"v1"[..]));
        assert_eq!(
            r.origin,
            Origin::Stale {
                stale_by: 5 * S,
                reason: StaleReason::Revalidating
            }
        );
    }
    wait_until(|| calls.load(Ordering::SeqCst) == 2);
    release_tx.send(()).unwrap();
    cache.wait_refreshes();
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one background refresh");
    let r = cache
        .get_or_load("price", b"ETH", "prices-api", |_| {
            panic!("fresh after the refresh")
        })
        .unwrap();
    assert_eq!(
        (r.value.as_deref(), r.origin),
        (Some(&b"v2"[..]), Origin::Cache)
    );
}

#[test]
fn upstream_outage_opens_the_breaker_serves_stale_and_recovers() {
    let clock = ManualClock::new(T0);
    let cache = builder(&clock)
        .namespace(
            "price",
            NamespacePolicy::default().max_stale(Duration::from_secs(3600)),
        )
        .open()
        .unwrap();
    cache.set_load_policy("price", exact(5 * S));
    let cfg = BreakerConfig::default()
        .window(10, 5)
        .wait(10 * S, 40 * S)
        .jitter(0.0)
        .half_open_probes(2);
    cache.configure_upstream("prices-api", cfg).unwrap();
    let keys: Vec<Vec<u8>> = (0..10).map(|i| format!("tok{i}").into_bytes()).collect();
    for k in &keys {
        cache
            .get_or_load("price", k, "prices-api", |k| Ok(Loaded::value(k.to_vec())))
            .unwrap();
    }
    // The upstream goes down; every value expires.
    let up = Arc::new(AtomicUsize::new(0)); // 0 = down, 1 = up
    let calls_closed = Arc::new(AtomicUsize::new(0));
    let calls_half_open = Arc::new(AtomicUsize::new(0));
    let loader = |cache: &Cache| {
        let (up, cc, ch, b) = (
            up.clone(),
            calls_closed.clone(),
            calls_half_open.clone(),
            cache.breaker("prices-api"),
        );
        move |k: &[u8]| {
            match b.state() {
                BreakerState::Closed => cc.fetch_add(1, Ordering::SeqCst),
                BreakerState::HalfOpen => ch.fetch_add(1, Ordering::SeqCst),
                BreakerState::Open => panic!("a loader ran while the breaker was open"),
            };
            if up.load(Ordering::SeqCst) == 1 {
                Ok(Loaded::value(k.to_vec()))
            } else {
                Err(LoadError::message("503 from prices-api"))
            }
        }
    };
    clock.advance(6 * S);
    let mut gets = 0;
    let mut stale_served = 0;
    let mut max_age = Duration::ZERO;
    for _second in 0..120 {
        for k in &keys {
            let r = cache
                .get_or_load("price", k, "prices-api", loader(&cache))
                .unwrap();
            gets += 1;
            assert_eq!(r.value.as_deref(), Some(&k[..]), "the old value is served");
            let Origin::Stale { stale_by, reason } = r.origin else {
                panic!("expected stale, got {:?}", r.origin)
            };
            assert!(r.error.is_some());
            assert!(matches!(
                reason,
                StaleReason::BreakerOpen | StaleReason::LoadFailed
            ));
            stale_served += 1;
            max_age = max_age.max(stale_by);
        }
        clock.advance(S);
    }
    let m = cache.breaker("prices-api").metrics();
    // Openings: closed → open, and half-open → open after a failed probe.
    let (c, o, h) = (
        BreakerState::Closed as usize,
        BreakerState::Open as usize,
        BreakerState::HalfOpen as usize,
    );
    let opens_seen = (m.transitions[c][o] + m.transitions[h][o]) as usize;
    let closed_calls = calls_closed.load(Ordering::SeqCst);
    let probes = calls_half_open.load(Ordering::SeqCst);
    assert_eq!(
        closed_calls, 5,
        "the breaker opens after the minimum of 5 failures"
    );
    // Opened at 0 s, then probes at 10, 30, 70 and 110 s (waits of 10,
    // 20, 40, 40 s) each fail and reopen it: 5 openings, each open period
    // ended by at most 2 probes (one failed probe of two is already 50 %).
    assert_eq!(opens_seen, 5);
    assert!(
        probes <= 2 * opens_seen,
        "{probes} probes for {opens_seen} openings"
    );
    assert!(probes >= 2, "probes were let through");
    assert!(max_age >= 120 * S);
    println!(
        "outage: {gets} gets in 120 s, {} upstream calls ({closed_calls} before opening, {probes} probes over {opens_seen} open periods), {stale_served} stale values served, oldest {max_age:?}",
        closed_calls + probes
    );
    // Recovery: the next probes succeed and close the breaker.
    up.store(1, Ordering::SeqCst);
    clock.advance(41 * S);
    for k in &keys {
        cache
            .get_or_load("price", k, "prices-api", loader(&cache))
            .unwrap();
    }
    assert_eq!(cache.breaker("prices-api").state(), BreakerState::Closed);
    for k in &keys {
        let r = cache
            .get_or_load("price", k, "prices-api", loader(&cache))
            .unwrap();
        assert!(!r.is_stale());
    }
    let m = cache.breaker("prices-api").metrics();
    assert!(m.rejected > 0);
    assert!(
        cache
            .load_metrics_text()
            .contains("embercache_breaker_state")
    );
}

#[test]
fn adaptive_ttl_converges_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let policy = exact(180 * S)
        .adaptive(15 * S, 600 * S)
        .activity(30 * S, 300 * S);
    let cache = builder(&clock).dir(dir.path()).open().unwrap();
    cache.set_load_policy("price", policy.clone());
    let n = Arc::new(AtomicU64::new(0));
    for _ in 0..30 {
        clock.advance(601 * S); // everything expired
        let n = n.clone();
        cache
            .get_or_load("price", b"volatile", "prices-api", move |_| {
                Ok(Loaded::value(
                    n.fetch_add(1, Ordering::SeqCst).to_le_bytes().to_vec(),
                ))
            })
            .unwrap();
        cache
            .get_or_load("price", b"static", "prices-api", |_| {
                Ok(Loaded::value(&b"same"[..]))
            })
            .unwrap();
    }
    assert_eq!(cache.learned_ttl("price", b"volatile").unwrap(), 15 * S);
    assert_eq!(cache.learned_ttl("price", b"static").unwrap(), 600 * S);
    assert_eq!(
        cache.ttl("price", b"static").unwrap(),
        Some(embercache::Ttl::Remaining(600 * S))
    );
    // A trade: the static key's TTL drops to 30 s at once, then relaxes.
    cache.touch_activity("price", b"static").unwrap();
    assert_eq!(
        cache.ttl("price", b"static").unwrap(),
        Some(embercache::Ttl::Remaining(30 * S))
    );
    assert_eq!(cache.learned_ttl("price", b"static").unwrap(), 30 * S);
    clock.advance(450 * S); // 150 s into the 300 s relax window
    assert_eq!(cache.learned_ttl("price", b"static").unwrap(), 315 * S);
    clock.advance(200 * S);
    assert_eq!(cache.learned_ttl("price", b"static").unwrap(), 600 * S);
    cache.save_load_state().unwrap();
    cache.close().unwrap();

    let cache = builder(&clock).dir(dir.path()).open().unwrap();
    cache.set_load_policy("price", policy);
    assert_eq!(cache.learned_ttl("price", b"volatile").unwrap(), 15 * S);
    assert_eq!(cache.learned_ttl("price", b"static").unwrap(), 600 * S);
}

#[test]
fn negative_answers_are_cached_apart_from_values() {
    let clock = ManualClock::new(T0);
    let cache = builder(&clock)
        .namespace(
            "market",
            NamespacePolicy::default().negative_ttl(Duration::from_secs(60)),
        )
        .open()
        .unwrap();
    cache.set_load_policy("market", exact(300 * S));
    let calls = Arc::new(AtomicUsize::new(0));
    let get = |cache: &Cache| {
        let c = calls.clone();
        cache
            .get_or_load("market", b"no-such-market", "markets-api", move |_| {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(Loaded::NotFound)
            })
            .unwrap()
    };
    let r = get(&cache);
    assert!(r.is_not_found());
    assert_eq!(r.origin, Origin::Loader);
    let r = get(&cache);
    assert!(r.is_not_found());
    assert_eq!(r.origin, Origin::Cache);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // Not a stored value: plain reads see nothing.
    assert_eq!(cache.get("market", b"no-such-market").unwrap(), None);
    clock.advance(61 * S);
    get(&cache);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "negative TTL expired");
    // A market that appears replaces the negative answer.
    clock.advance(61 * S);
    let r = cache
        .get_or_load("market", b"no-such-market", "markets-api", |_| {
            Ok(Loaded::value(&b"{}"[..]))
        })
        .unwrap();
    assert_eq!(r.value.as_deref(), Some(&b"{}"[..]));
    // Invalidating the namespace drops negative answers too.
    let r = cache
        .get_or_load("market", b"gone", "markets-api", |_| Ok(Loaded::NotFound))
        .unwrap();
    assert!(r.is_not_found());
    cache.invalidate_namespace("market").unwrap();
    let r = cache
        .get_or_load("market", b"gone", "markets-api", |_| {
            Ok(Loaded::value(&b"back"[..]))
        })
        .unwrap();
    assert_eq!(r.value.as_deref(), Some(&b"back"[..]));
}

#[test]
fn batch_loader_gets_only_missing_keys_and_may_answer_partially() {
    let clock = ManualClock::new(T0);
    let cache = builder(&clock).open().unwrap();
    cache.set_load_policy("position", exact(180 * S));
    cache.set("position", b"alice", &b"cached"[..]).unwrap();
    let keys = [&b"alice"[..], b"bob", b"carol", b"dave"];
    let asked = parking_lot::Mutex::new(Vec::new());
    let batch = |ks: &[&[u8]]| {
        asked
            .lock()
            .push(ks.iter().map(|k| k.to_vec()).collect::<Vec<_>>());
        let mut m = HashMap::new();
        for k in ks {
            match *k {
                b"bob" => {
                    m.insert(k.to_vec(), Ok(Loaded::value(&b"3 YES"[..])));
                }
                b"carol" => {
                    m.insert(k.to_vec(), Err(LoadError::message("timeout for carol")));
                }
                _ => {} // dave: not returned
            }
        }
        Ok(m)
    };
    let r = cache
        .get_many_or_load("position", &keys, "positions-api", batch)
        .unwrap();
    assert_eq!(
        asked.lock()[0],
        vec![b"bob".to_vec(), b"carol".to_vec(), b"dave".to_vec()]
    );
    let a = r[0].as_ref().unwrap();
    assert_eq!(
        (a.value.as_deref(), a.origin),
        (Some(&b"cached"[..]), Origin::Cache)
    );
    let b = r[1].as_ref().unwrap();
    assert_eq!(
        (b.value.as_deref(), b.origin),
        (Some(&b"3 YES"[..]), Origin::Loader)
    );
    assert!(
        matches!(&r[2], Err(LoadError::Failed { upstream, .. }) if &**upstream == "positions-api")
    );
    assert!(matches!(&r[3], Err(LoadError::NotReturned { .. })));
    // Errors and unanswered keys were not cached: they are asked again.
    let _ = cache
        .get_many_or_load("position", &keys, "positions-api", batch)
        .unwrap();
    assert_eq!(asked.lock()[1], vec![b"carol".to_vec(), b"dave".to_vec()]);
}

#[test]
fn breaker_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let cfg = BreakerConfig::default()
        .window(4, 4)
        .wait(30 * S, 600 * S)
        .jitter(0.0);
    let cache = builder(&clock).dir(dir.path()).open().unwrap();
    cache.configure_upstream("rpc", cfg.clone()).unwrap();
    for i in 0..4u8 {
        let e = cache
            .get_or_load("user_stats", &[i], "rpc", |_| {
                Err(LoadError::message("down"))
            })
            .unwrap_err();
        assert!(matches!(e, LoadError::Failed { .. }));
    }
    assert_eq!(cache.breaker("rpc").state(), BreakerState::Open);
    cache.close().unwrap();

    clock.advance(10 * S);
    let cache = builder(&clock).dir(dir.path()).open().unwrap();
    cache.configure_upstream("rpc", cfg).unwrap();
    assert_eq!(cache.breaker("rpc").state(), BreakerState::Open);
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let e = cache
        .get_or_load("user_stats", b"x", "rpc", move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(Loaded::value(&b"1"[..]))
        })
        .unwrap_err();
    let LoadError::BreakerOpen { retry_after, .. } = e else {
        panic!("expected BreakerOpen, got {e:?}")
    };
    assert_eq!(retry_after, 20 * S, "the wait continues where it was");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "no call reached the upstream"
    );
    clock.advance(20 * S);
    let c = calls.clone();
    let r = cache
        .get_or_load("user_stats", b"x", "rpc", move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(Loaded::value(&b"1"[..]))
        })
        .unwrap();
    assert_eq!(r.origin, Origin::Loader);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one probe");
}

#[test]
fn schema_version_change_bumps_the_epoch_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let open = |v: &str| {
        builder(&clock)
            .dir(dir.path())
            .namespace(
                "search",
                NamespacePolicy::default()
                    .ttl(Duration::from_secs(300))
                    .schema_version(v),
            )
            .open()
            .unwrap()
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let search = |cache: &Cache, answer: &'static [u8]| {
        let c = calls.clone();
        cache
            .get_or_load("search", b"q=election", "search-api", move |_| {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(Loaded::value(answer))
            })
            .unwrap()
    };
    let cache = open("v1");
    assert_eq!(search(&cache, b"old logic").origin, Origin::Loader);
    cache.close().unwrap();
    let cache = open("v1");
    let r = search(&cache, b"unused");
    assert_eq!(
        (r.value.as_deref(), r.origin),
        (Some(&b"old logic"[..]), Origin::Cache)
    );
    cache.close().unwrap();
    let cache = open("v2");
    let r = search(&cache, b"new logic");
    assert_eq!(
        (r.value.as_deref(), r.origin),
        (Some(&b"new logic"[..]), Origin::Loader)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn loader_errors_are_shared_and_never_cached() {
    let clock = ManualClock::new(T0);
    let cache = builder(&clock).open().unwrap();
    // Threads that arrive after a flight ended lead a new one, so up to 32
    // loader calls may fail; keep the breaker out of this test (it would
    // open after 10 failures and refuse the final load).
    cache
        .configure_upstream(
            "positions-api",
            embercache::BreakerConfig::default().window(1000, 1000),
        )
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let n = 32;
    let arrived = Arc::new(AtomicUsize::new(0));
    let errors = std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|_| {
                let (cache, calls, arrived) = (cache.clone(), calls.clone(), arrived.clone());
                s.spawn(move || {
                    arrived.fetch_add(1, Ordering::SeqCst);
                    let a2 = arrived.clone();
                    cache
                        .get_or_load("position", b"bob", "positions-api", move |_| {
                            calls.fetch_add(1, Ordering::SeqCst);
                            wait_until(|| a2.load(Ordering::SeqCst) == n);
                            Err(LoadError::message("positions-api 500"))
                        })
                        .is_err()
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .filter(|e| *e)
            .count()
    });
    assert!(errors >= 1);
    let first = calls.load(Ordering::SeqCst);
    // The error was not stored: the next call loads again.
    let r = cache
        .get_or_load("position", b"bob", "positions-api", |_| {
            Ok(Loaded::value(&b"ok"[..]))
        })
        .unwrap();
    assert_eq!(r.origin, Origin::Loader);
    assert!(first >= 1);
}

#[test]
fn typed_loads_round_trip() {
    let clock = ManualClock::new(T0);
    let cache = builder(&clock).open().unwrap();
    let r = cache
        .get_or_load_as("group", b"g1", "markets-api", |_| {
            Ok(Some(vec!["m1".to_string(), "m2".to_string()]))
        })
        .unwrap();
    assert_eq!(r.value, Some(vec!["m1".to_string(), "m2".to_string()]));
    let r = cache
        .get_or_load_as::<Vec<String>, _>("group", b"g1", "markets-api", |_| panic!("cached"))
        .unwrap();
    assert_eq!(r.origin, Origin::Cache);
    assert_eq!(r.value.unwrap().len(), 2);
}

#[test]
fn typed_async_loads_and_negative_answers() {
    let clock = ManualClock::new(T0);
    let cache = builder(&clock)
        .namespace(
            "market",
            NamespacePolicy::default().negative_ttl(Duration::from_secs(60)),
        )
        .open()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let r = cache
            .get_or_load_as_async("market", b"m1", "markets-api", |_| async {
                Ok(Some(("Will it rain?".to_string(), 0.42f64)))
            })
            .await
            .unwrap();
        assert_eq!(r.value, Some(("Will it rain?".to_string(), 0.42)));
        let r = cache
            .get_or_load_as_async::<(String, f64), _, _>(
                "market",
                b"nope",
                "markets-api",
                |_| async { Ok(None) },
            )
            .await
            .unwrap();
        assert!(r.is_not_found());
        let r = cache
            .get_or_load_as_async::<(String, f64), _, _>(
                "market",
                b"nope",
                "markets-api",
                |_| async { panic!("negative answer is cached") },
            )
            .await
            .unwrap();
        assert_eq!((r.is_not_found(), r.origin), (true, Origin::Cache));
    });
    let s = cache.load_stats();
    let m = s.namespaces.iter().find(|n| n.name == "market").unwrap();
    assert_eq!((m.loads, m.negative_hits, m.negatives_stored), (2, 1, 1));
}

#[test]
fn preloading_follows_access_counts_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let calls = Arc::new(parking_lot::Mutex::new(Vec::<Vec<u8>>::new()));
    let register = |cache: &Cache| {
        let c = calls.clone();
        cache.set_load_policy("market_page", exact(300 * S));
        cache.register_loader("market_page", "markets-api", move |k| {
            c.lock().push(k.to_vec());
            Ok(Loaded::value(k.to_vec()))
        });
    };
    let cache = builder(&clock).dir(dir.path()).open().unwrap();
    register(&cache);
    for _ in 0..50 {
        cache.load("market_page", b"volume:0").unwrap();
    }
    for _ in 0..20 {
        cache.load("market_page", b"new:0").unwrap();
    }
    cache.load("market_page", b"ending_168h:9").unwrap();
    cache.save_load_state().unwrap();
    cache.close().unwrap();

    clock.advance(3600 * S); // everything expired while down
    calls.lock().clear();
    let cache = builder(&clock).dir(dir.path()).open().unwrap();
    register(&cache);
    let rep = cache.preload(&RefresherConfig::default().top_keys(2));
    assert_eq!(rep.refreshed, 2);
    let mut got = calls.lock().clone();
    got.sort();
    assert_eq!(got, vec![b"new:0".to_vec(), b"volume:0".to_vec()]);
    assert_eq!(
        cache.hottest_keys("market_page", 1).unwrap(),
        vec![b"volume:0".to_vec()]
    );
    assert!(cache.get("market_page", b"volume:0").unwrap().is_some());
}

#[test]
fn refresher_keeps_hot_keys_fresh_within_the_rate_limit() {
    let clock = ManualClock::new(T0);
    let cache = builder(&clock).open().unwrap();
    cache.set_load_policy("watched", exact(900 * S));
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    cache.register_loader("watched", "indexer", move |k| {
        c.fetch_add(1, Ordering::SeqCst);
        Ok(Loaded::value(k.to_vec()))
    });
    for i in 0..5u8 {
        cache.register_hot_key("watched", &[i]).unwrap();
    }
    let cfg = RefresherConfig::default().rate(1.0, 2.0);
    let rep = cache.refresh_due(&cfg);
    assert_eq!((rep.refreshed, rep.rate_limited), (2, 3));
    clock.advance(3 * S);
    let rep = cache.refresh_due(&cfg);
    assert_eq!((rep.refreshed, rep.rate_limited), (2, 1));
    // Fresh keys are left alone until they near expiry.
    clock.advance(10 * S);
    assert_eq!(cache.refresh_due(&cfg).refreshed, 1);
    assert_eq!(cache.refresh_due(&cfg).refreshed, 0);
    clock.advance(800 * S); // < 20 % of 900 s left
    let rep = cache.refresh_due(&RefresherConfig::default());
    assert_eq!(rep.refreshed, 5);
    assert_eq!(calls.load(Ordering::SeqCst), 10);
    // An explicit event-driven refresh.
    let r = cache.refresh("watched", &[1]).unwrap();
    assert_eq!(r.origin, Origin::Loader);
    assert_eq!(cache.refresh_namespace("watched").unwrap().refreshed, 5);
    // The background thread stops and joins.
    let bg = cache
        .start_refresher(RefresherConfig::default().interval(Duration::from_millis(5)))
        .unwrap();
    bg.stop();
}

#[test]
fn each_cache_has_its_own_loading_state() {
    let clock = ManualClock::new(T0);
    let a = builder(&clock).open().unwrap();
    let b = builder(&clock).open().unwrap();
    a.configure_upstream("rpc", BreakerConfig::legacy_bot())
        .unwrap();
    assert_eq!(a.breaker("rpc").config(), &BreakerConfig::legacy_bot());
    assert_eq!(b.breaker("rpc").config().window_size, 100);
    // A clone shares it.
    assert_eq!(a.clone().breaker("rpc").config().window_size, 3);
    drop(a);
    // A cache opened after another was dropped starts fresh, even if it
    // lands at the same address.
    for _ in 0..8 {
        let c = builder(&clock).open().unwrap();
        assert_eq!(c.breaker("rpc").config().window_size, 100);
    }
}

#[test]
fn async_batch_loads_only_missing_keys() {
    let clock = ManualClock::new(T0);
    let cache = builder(&clock).open().unwrap();
    cache.set("position", b"alice", &b"cached"[..]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let r = rt
        .block_on(cache.get_many_or_load_async(
            "position",
            &[&b"alice"[..], b"bob"],
            "positions-api",
            |ks| async move {
                assert_eq!(ks, vec![b"bob".to_vec()]);
                Ok(ks
                    .into_iter()
                    .map(|k| (k, Ok(Loaded::value(&b"2 NO"[..]))))
                    .collect())
            },
        ))
        .unwrap();
    assert_eq!(r[0].as_ref().unwrap().origin, Origin::Cache);
    let b = r[1].as_ref().unwrap();
    assert_eq!(
        (b.value.as_deref(), b.origin),
        (Some(&b"2 NO"[..]), Origin::Loader)
    );
}

#[test]
fn xfetch_refreshes_a_slow_hot_key_early_once() {
    let clock = ManualClock::new(T0);
    let cache = builder(&clock).open().unwrap();
    cache.set_load_policy(
        "user_stats",
        LoadPolicy::default()
            .ttl(10 * S)
            .ttl_jitter(0.0)
            .xfetch_beta(1.0),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let (c, ck) = (calls.clone(), clock.clone());
    cache
        .get_or_load("user_stats", b"whale", "stats-db", move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            ck.advance(2 * S); // an expensive aggregate: 2 s
            Ok(Loaded::value(&b"v1"[..]))
        })
        .unwrap();
    // 10 ms before expiry, a 2 s load makes an early refresh nearly certain
    // (p = 1 - e^-200 per hit).
    clock.advance(Duration::from_millis(9_990));
    let mut hits = 0;
    while cache.load_stats().namespaces[0].early_refreshes == 0 {
        hits += 1;
        assert!(hits < 100, "no early refresh in 100 hits");
        let c = calls.clone();
        let r = cache
            .get_or_load("user_stats", b"whale", "stats-db", move |_| {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(Loaded::value(&b"v2"[..]))
            })
            .unwrap();
        assert_eq!(r.origin, Origin::Cache, "served at once, still fresh");
    }
    cache.wait_refreshes();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        cache.get("user_stats", b"whale").unwrap().as_deref(),
        Some(&b"v2"[..])
    );
}
