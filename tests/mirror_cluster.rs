//! The Redis mirror against a real 3-master Redis Cluster and a real
//! Sentinel setup (1 master, 1 replica, 1 sentinel), all `redis-server`
//! processes started here on free loopback ports (never the shared server
//! on 6379), each with its own temp dir. Outages are real: a master is
//! killed with SIGKILL (and, for the cluster, restarted empty).
//!
//! Figures (writes during the outage or failover, time to converge) are
//! printed on stderr: `cargo test --all-features --test mirror_cluster --
//! --nocapture`.
#![cfg(feature = "redis")]

use embercache::{BreakerConfig, Cache, MirrorConfig};
use rand::{Rng, SeedableRng};
use redis::Value;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{Server, wait_for};

const PREFIX: &str = "embercache:";
const NS: &str = "t";

/// Three masters, no replicas, slots split by `redis-cli --cluster create`.
struct Cluster {
    nodes: Vec<Server>,
}

impl Cluster {
    fn start() -> Cluster {
        let mut nodes: Vec<Server> = (0..3)
            .map(|_| {
                Server::new(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        for n in &mut nodes {
            n.start();
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = Cluster { nodes };
        c.wait_ok();
        c
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Server::url).collect()
    }

    /// Polls CLUSTER INFO on every node until the state is ok.
    fn wait_ok(&self) {
        wait_for("cluster_state:ok", Duration::from_secs(20), &mut || {
            self.nodes.iter().all(|n| {
                n.try_conn()
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut c))
                    .is_ok_and(|i| i.contains("cluster_state:ok"))
            })
        });
    }

    fn client(&self) -> redis::cluster::ClusterConnection {
        redis::cluster::ClusterClient::new(self.urls())
            .unwrap()
            .get_connection()
            .expect("cluster connection")
    }

    /// Our data keys on each master (they must spread over all three).
    fn keys_per_node(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| {
                let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
                    .arg(format!("{PREFIX}d*"))
                    .query(&mut n.conn())
                    .unwrap_or_default();
                keys.len() as u64
            })
            .collect()
    }
}

fn data_key(ns: &str, key: &[u8]) -> Vec<u8> {
    let mut k = format!("{PREFIX}d\0{ns}\0").into_bytes();
    k.extend_from_slice(key);
    k
}

fn quick_breaker() -> BreakerConfig {
    BreakerConfig::default()
        .window(10, 3)
        .wait(Duration::from_millis(200), Duration::from_secs(2))
        .slow_calls(100.0, Duration::from_secs(5))
}

fn tune(cfg: MirrorConfig) -> MirrorConfig {
    cfg.check_interval(Duration::from_millis(200))
        .breaker(quick_breaker())
}

fn open(dir: &Path, cfg: MirrorConfig) -> Cache {
    Cache::builder()
        .dir(dir)
        .hot_capacity(16 << 20)
        .shards(4)
        .redis(cfg)
        .open()
        .expect("open the cache")
}

/// Runs `f` against Redis, retrying on an error for a few seconds (a
/// cluster node or a failover may still be settling).
fn query_retry<T>(what: &str, mut f: impl FnMut() -> redis::RedisResult<T>) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) => assert!(start.elapsed() < Duration::from_secs(15), "{what}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What Redis holds for each key of `NS`: `Some((version, value,
/// expires_at, pttl))` for a live record, `None` for nothing or a tombstone.
type RemoteEntry = Option<(u64, Vec<u8>, u64, i64)>;

fn parse_remote(hash: &Value, pttl: &Value) -> RemoteEntry {
    let Value::Array(a) = hash else {
        panic!("not a hash reply: {hash:?}")
    };
    let pttl = match pttl {
        Value::Int(i) => *i,
        _ => -3,
    };
    match (&a[0], &a[1]) {
        (Value::BulkString(v), Value::BulkString(r)) => {
            let v: u64 = std::str::from_utf8(v).unwrap().parse().unwrap();
            let (h, value) =
                embercache::record::decode(r, 1 << 30, &|_| None).expect("valid record");
            assert_eq!(h.version, v, "stored version matches the record");
            Some((v, value, h.expires_at, pttl))
        }
        _ => None,
    }
}

/// Reads the keys from Redis: a cluster pipeline (split per node by
/// redis-rs) or a plain one.
enum Reader {
    Cluster(Box<redis::cluster::ClusterConnection>),
    Single(redis::Connection),
}

impl Reader {
    fn remote(&mut self, keys: &[Vec<u8>]) -> redis::RedisResult<Vec<RemoteEntry>> {
        let vals: Vec<Value> = match self {
            Reader::Cluster(c) => {
                let mut pipe = redis::cluster::cluster_pipe();
                for k in keys {
                    pipe.cmd("HMGET")
                        .arg(data_key(NS, k))
                        .arg("v")
                        .arg("r")
                        .arg("d");
                    pipe.cmd("PTTL").arg(data_key(NS, k));
                }
                pipe.query(c)?
            }
            Reader::Single(c) => {
                let mut pipe = redis::pipe();
                for k in keys {
                    pipe.cmd("HMGET")
                        .arg(data_key(NS, k))
                        .arg("v")
                        .arg("r")
                        .arg("d");
                    pipe.cmd("PTTL").arg(data_key(NS, k));
                }
                pipe.query(c)?
            }
        };
        Ok(vals.chunks(2).map(|p| parse_remote(&p[0], &p[1])).collect())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Differences between the cache and Redis over `keys` (see tests/mirror.rs).
fn differences(cache: &Cache, remote: &[RemoteEntry], keys: &[Vec<u8>]) -> Vec<String> {
    let local: HashMap<Vec<u8>, Vec<u8>> = cache
        .scan(NS, b"")
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.to_vec()))
        .collect();
    let now = now_ms();
    let mut out = Vec::new();
    for (k, r) in keys.iter().zip(remote) {
        match (local.get(k), r) {
            (None, None) => {}
            (Some(lv), Some((_, rv, exp, pttl))) => {
                if lv != rv {
                    out.push(format!("{k:?}: value differs"));
                }
                if *exp != u64::MAX && *pttl > 0 && *pttl as u64 > exp.saturating_sub(now) + 100 {
                    out.push(format!("{k:?}: extended"));
                }
            }
            (Some(_), None) => out.push(format!("{k:?}: missing in Redis")),
            (None, Some((_, _, exp, _))) => {
                if *exp > now + 50 {
                    out.push(format!("{k:?}: live in Redis only (resurrected)"));
                }
            }
        }
    }
    out
}

/// Polls until the outbox is empty and nothing differs; the time it took.
fn converge(
    cache: &Cache,
    reader: &mut dyn FnMut() -> redis::RedisResult<Reader>,
    keys: &[Vec<u8>],
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    let mut r: Option<Reader> = None;
    loop {
        let s = cache.mirror_stats().unwrap();
        if s.outbox_rows == 0 {
            if r.is_none() {
                r = reader().ok();
            }
            match r.as_mut().map(|r| r.remote(keys)) {
                Some(Ok(remote)) => {
                    let d = differences(cache, &remote, keys);
                    if d.is_empty() {
                        return start.elapsed();
                    }
                    assert!(
                        start.elapsed() < limit,
                        "not converged after {limit:?}: {} differ, e.g. {:?}; {s:?}",
                        d.len(),
                        &d[..d.len().min(5)]
                    );
                }
                _ => r = None,
            }
        }
        assert!(
            start.elapsed() < limit,
            "not converged after {limit:?}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Highest version seen per key; counts any decrease.
#[derive(Default)]
struct VersionWatch {
    seen: HashMap<Vec<u8>, u64>,
    regressions: u64,
}

impl VersionWatch {
    fn sample(&mut self, reader: &mut Reader, keys: &[Vec<u8>]) {
        let Ok(remote) = reader.remote(keys) else {
            return;
        };
        for (k, r) in keys.iter().zip(remote) {
            let Some((v, ..)) = r else { continue };
            let e = self.seen.entry(k.clone()).or_insert(0);
            if v < *e {
                self.regressions += 1;
            }
            *e = (*e).max(v);
        }
    }
}

/// Random writes: sets with 5–60 s TTLs, 15 % deletes.
fn write(rng: &mut rand::rngs::StdRng, cache: &Cache, keys: &[Vec<u8>]) {
    let k = &keys[rng.gen_range(0..keys.len())];
    if rng.gen_bool(0.15) {
        cache.delete(NS, k).unwrap();
    } else {
        let ttl = Duration::from_millis(rng.gen_range(5_000..60_000));
        let v = format!("v{}", rng.r#gen::<u32>()).repeat(rng.gen_range(1..20));
        cache.set_with_ttl(NS, k, v.into_bytes(), ttl).unwrap();
    }
}

/// About 1000 writes/s for `d`; the number written.
fn write_for(d: Duration, rng: &mut rand::rngs::StdRng, cache: &Cache, keys: &[Vec<u8>]) -> u64 {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < d {
        for _ in 0..10 {
            write(rng, cache, keys);
            n += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    n
}

fn keys(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("k{i}").into_bytes()).collect()
}

/// Writes converge on all three masters; reads and `get_many` across slots
/// come back through the cluster; an empty directory warms from it.
#[test]
fn cluster_writes_converge_reads_cross_slots_and_warm_start() {
    let cluster = Cluster::start();
    let keys = keys(400);
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), tune(MirrorConfig::cluster(cluster.urls())));
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut reader = Reader::Cluster(Box::new(cluster.client()));
    let mut watch = VersionWatch::default();
    let mut written = 0;
    for _ in 0..10 {
        written += write_for(Duration::from_millis(200), &mut rng, &cache, &keys);
        watch.sample(&mut reader, &keys);
    }
    let took = converge(
        &cache,
        &mut || Ok(Reader::Cluster(Box::new(cluster.client()))),
        &keys,
        Duration::from_secs(20),
    );
    watch.sample(&mut reader, &keys);
    let per_node = cluster.keys_per_node();
    let s = cache.mirror_stats().unwrap();
    eprintln!(
        "cluster: {written} writes over {} keys converged {took:?} after the writes stopped; keys per master {per_node:?}; 0 keys differ, {} version regressions; {s:?}",
        keys.len(),
        watch.regressions
    );
    assert_eq!(watch.regressions, 0);
    assert!(per_node.iter().all(|&n| n > 0), "{per_node:?}");
    assert_eq!(s.resyncs, 1, "only the first connection resyncs: {s:?}");

    // Read-through and get_many across slots, from an instance that has
    // nothing locally (no warm start, so every hit comes from Redis).
    let live: Vec<(Vec<u8>, Vec<u8>)> = cache
        .scan(NS, b"")
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.to_vec()))
        .collect();
    assert!(live.len() > 100);
    let dir2 = tempfile::tempdir().unwrap();
    let other = open(
        dir2.path(),
        tune(MirrorConfig::cluster(cluster.urls())).warm_start(false),
    );
    // Reads before the first connection are misses: wait for it.
    wait_for("connected", Duration::from_secs(10), &mut || {
        other.mirror_stats().unwrap().connected
    });
    let (first, rest) = live.split_at(20);
    for (k, v) in first {
        assert_eq!(other.get(NS, k).unwrap().as_deref(), Some(v.as_slice()));
    }
    let ks: Vec<&[u8]> = rest.iter().map(|(k, _)| k.as_slice()).collect();
    let got = other.get_many(NS, &ks).unwrap();
    for ((_, v), g) in rest.iter().zip(&got) {
        assert_eq!(g.as_deref(), Some(v.as_slice()));
    }
    let so = other.mirror_stats().unwrap();
    assert_eq!(so.read_hits, live.len() as u64, "{so:?}");
    assert_eq!(so.errors, 0, "{so:?}");
    other.close().unwrap();

    // Warm start of an empty directory: SCAN must visit every master.
    let dir3 = tempfile::tempdir().unwrap();
    let warm = open(
        dir3.path(),
        tune(MirrorConfig::cluster(cluster.urls())).read_through(false),
    );
    let took = wait_for("warm start done", Duration::from_secs(20), &mut || {
        warm.mirror_stats().unwrap().warm_done
    });
    let sw = warm.mirror_stats().unwrap();
    // Entries that expired meanwhile are not loaded: allow for them.
    let now_live = cache.scan(NS, b"").unwrap().len() as u64;
    assert!(sw.warm_loaded >= now_live, "{sw:?}, {now_live} live");
    for (k, v) in cache.scan(NS, b"").unwrap() {
        assert_eq!(warm.get(NS, &k).unwrap().as_deref(), Some(&v[..]));
    }
    eprintln!(
        "cluster warm start: {} entries loaded from 3 masters in {took:?}",
        sw.warm_loaded
    );
    warm.close().unwrap();
    cache.close().unwrap();
}

/// One master killed with SIGKILL under a write load and restarted empty
/// (its nodes.conf kept, so it owns its slots again): the changed run_id of
/// that master is detected and the resync puts its keys back.
#[test]
fn cluster_master_killed_and_restarted_empty_is_resynced() {
    let mut cluster = Cluster::start();
    let keys = keys(300);
    let dir = tempfile::tempdir().unwrap();
    let cache = open(dir.path(), tune(MirrorConfig::cluster(cluster.urls())));
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    write_for(Duration::from_millis(500), &mut rng, &cache, &keys);
    let mut reader = || Ok(Reader::Cluster(Box::new(cluster.client())));
    converge(&cache, &mut reader, &keys, Duration::from_secs(20));
    let before = cache.mirror_stats().unwrap();
    let lost_before = cluster.keys_per_node()[1];
    cluster.nodes[1].kill();
    let down = Instant::now();
    let during = write_for(Duration::from_secs(2), &mut rng, &cache, &keys);
    cluster.nodes[1].start();
    cluster.wait_ok();
    let downtime = down.elapsed();
    let up = Instant::now();
    write_for(Duration::from_millis(500), &mut rng, &cache, &keys);
    let mut reader = || Ok(Reader::Cluster(Box::new(cluster.client())));
    let took = converge(&cache, &mut reader, &keys, Duration::from_secs(30));
    // The writes after the restart can put every lost key back before the
    // periodic check sees the new run_id: wait for the check (bounded),
    // then assert it resynced exactly once.
    let deadline = Instant::now() + Duration::from_secs(15);
    while cache.mirror_stats().unwrap().resyncs == before.resyncs && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500)); // a second resync would show by now
    let s = cache.mirror_stats().unwrap();
    eprintln!(
        "cluster master SIGKILLed ({lost_before} keys lost) and restarted empty after {downtime:?}: {during} writes meanwhile; converged {:?} after it was back ({took:?} after the writes stopped); resyncs {} -> {}; 0 keys differ",
        up.elapsed(),
        before.resyncs,
        s.resyncs
    );
    // Detected once: while the master was down the check failed instead
    // of seeing two masters and resyncing to them.
    assert_eq!(
        s.resyncs,
        before.resyncs + 1,
        "restart detected once: {s:?}"
    );
    cache.close().unwrap();
}

/// Two instances on one cluster, subscribed through different nodes, see
/// each other's deletes and epoch bumps.
#[test]
fn two_instances_see_each_others_invalidations_through_the_cluster() {
    let cluster = Cluster::start();
    let urls = cluster.urls();
    let mut rev = urls.clone();
    rev.reverse();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(da.path(), tune(MirrorConfig::cluster(urls)));
    let b = open(db.path(), tune(MirrorConfig::cluster(rev)));
    wait_for("both subscribed", Duration::from_secs(10), &mut || {
        a.mirror_stats().unwrap().pubsub_connects > 0
            && b.mirror_stats().unwrap().pubsub_connects > 0
    });
    for i in 0..30 {
        a.set(NS, format!("k{i}").as_bytes(), format!("a{i}").into_bytes())
            .unwrap();
    }
    let limit = Duration::from_secs(10);
    wait_for("B reads A's writes", limit, &mut || {
        (0..30).all(|i| {
            b.get(NS, format!("k{i}").as_bytes()).unwrap().as_deref()
                == Some(format!("a{i}").as_bytes())
        })
    });
    // Deletes both ways (keys on different masters).
    for i in 0..5 {
        a.delete(NS, format!("k{i}").as_bytes()).unwrap();
        b.delete(NS, format!("k{}", 10 + i).as_bytes()).unwrap();
    }
    let t = wait_for("deletes seen on the other side", limit, &mut || {
        (0..5).all(|i| {
            b.get(NS, format!("k{i}").as_bytes()).unwrap().is_none()
                && a.get(NS, format!("k{}", 10 + i).as_bytes())
                    .unwrap()
                    .is_none()
        })
    });
    // An epoch bump in B hides A's copies.
    assert!(a.get(NS, b"k20").unwrap().is_some());
    b.invalidate_namespace(NS).unwrap();
    let t2 = wait_for("A drops the namespace", limit, &mut || {
        a.get(NS, b"k20").unwrap().is_none()
    });
    b.set(NS, b"new", b"after".to_vec()).unwrap();
    wait_for("A reads B's new write", limit, &mut || {
        a.get(NS, b"new").unwrap().as_deref() == Some(&b"after"[..])
    });
    let (sa, sb) = (a.mirror_stats().unwrap(), b.mirror_stats().unwrap());
    eprintln!("cluster pub/sub: deletes seen in {t:?}, epoch bump in {t2:?}");
    assert!(
        sa.pubsub_applied >= 6 && sb.pubsub_applied >= 5,
        "{sa:?} {sb:?}"
    );
    a.close().unwrap();
    b.close().unwrap();
}

/// Master + replica + sentinel. The master is SIGKILLed under a write
/// load; the sentinel promotes the replica; the mirror follows it, sees
/// the new run_id, resyncs, and converges: nothing committed locally is
/// missing from Redis.
#[test]
fn sentinel_failover_under_writes_converges() {
    let mut master = Server::new(&[]);
    master.start();
    let mut replica = Server::new(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    replica.start();
    let mut sentinel = Server::new(&[]);
    sentinel.config = Some(format!(
        "sentinel monitor mm 127.0.0.1 {} 1\n\
         sentinel down-after-milliseconds mm 500\n\
         sentinel failover-timeout mm 3000\n\
         sentinel parallel-syncs mm 1\n",
        master.port
    ));
    sentinel.start();
    // The sentinel knows the replica before the master may go.
    wait_for(
        "sentinel sees the replica",
        Duration::from_secs(15),
        &mut || sentinel.info("sentinel").contains("slaves=1"),
    );
    let keys = keys(300);
    let dir = tempfile::tempdir().unwrap();
    let cache = open(
        dir.path(),
        tune(MirrorConfig::sentinel([sentinel.url()], "mm")),
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let master_of = |sentinel: &Server| -> Option<u16> {
        let a: Vec<String> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("mm")
            .query(&mut sentinel.try_conn().ok()?)
            .ok()?;
        a.get(1)?.parse().ok()
    };
    write_for(Duration::from_millis(500), &mut rng, &cache, &keys);
    let url = master.url();
    converge(
        &cache,
        &mut || {
            Ok(Reader::Single(
                redis::Client::open(url.as_str())?.get_connection()?,
            ))
        },
        &keys,
        Duration::from_secs(15),
    );
    // The replica misses writes the master acknowledged: it is stopped
    // (SIGSTOP) while a burst reaches the master and leaves the outbox,
    // then the master dies before the replica can catch up.
    replica.signal("-STOP");
    write_for(Duration::from_millis(300), &mut rng, &cache, &keys);
    wait_for(
        "the burst left the outbox",
        Duration::from_secs(10),
        &mut || cache.mirror_stats().unwrap().outbox_rows == 0,
    );
    let acked: HashMap<Vec<u8>, u64> = Reader::Single(master.conn())
        .remote(&keys)
        .unwrap()
        .into_iter()
        .zip(&keys)
        .filter_map(|(r, k)| Some((k.clone(), r?.0)))
        .collect();
    let before = cache.mirror_stats().unwrap();
    master.kill();
    let down = Instant::now();
    replica.signal("-CONT");
    // What the replica holds of what the master had acknowledged.
    let on_replica = query_retry("read the replica", || {
        Reader::Single(replica.try_conn()?).remote(&keys)
    });
    let missed = keys
        .iter()
        .zip(&on_replica)
        .filter(|(k, r)| {
            acked
                .get(*k)
                .is_some_and(|v| r.as_ref().is_none_or(|r| r.0 < *v))
        })
        .count();
    // Writes go on while the sentinel notices and promotes the replica.
    let mut during = 0;
    while master_of(&sentinel) != Some(replica.port) {
        assert!(down.elapsed() < Duration::from_secs(20), "no failover");
        during += write_for(Duration::from_millis(100), &mut rng, &cache, &keys);
    }
    let promoted = down.elapsed();
    wait_for("replica is master", Duration::from_secs(10), &mut || {
        replica.info("replication").contains("role:master")
    });
    during += write_for(Duration::from_millis(500), &mut rng, &cache, &keys);
    let url = replica.url();
    let took = converge(
        &cache,
        &mut || {
            Ok(Reader::Single(
                redis::Client::open(url.as_str())?.get_connection()?,
            ))
        },
        &keys,
        Duration::from_secs(20),
    );
    let s = cache.mirror_stats().unwrap();
    // Nothing committed locally is missing: every live local key is in the
    // new master with the same value (checked by converge), and Redis's
    // copy of each is at the local version.
    let mut r = Reader::Single(query_retry("replica", || {
        redis::Client::open(replica.url())?.get_connection()
    }));
    let remote = r.remote(&keys).unwrap();
    let local = cache.scan(NS, b"").unwrap().len();
    let in_redis = remote.iter().filter(|e| e.is_some()).count();
    eprintln!(
        "sentinel failover: the replica missed {missed} keys the master had acknowledged; promoted {promoted:?} after SIGKILL; {during} writes meanwhile; converged {took:?} after the writes stopped ({:?} after the kill); resyncs {} -> {}; {local} live keys local, {in_redis} in the new master; 0 keys differ",
        down.elapsed(),
        before.resyncs,
        s.resyncs
    );
    assert!(missed > 0, "the replica was meant to miss writes");
    assert!(s.resyncs > before.resyncs, "failover detected: {s:?}");
    cache.close().unwrap();
}

/// Sentinel in front of a protected master: master and replica with
/// `requirepass`/`masterauth`, a sentinel with `sentinel auth-pass` and a
/// `requirepass` of its own (given in its URL). A wrong master password
/// fails every call with a clear error and opens the breaker, no panic,
/// nothing lost (the outbox keeps the writes); reopened with the right
/// password (user `default`, db 2) the writes converge to the master's
/// db 2.
#[test]
fn sentinel_with_a_protected_master() {
    const PW: &str = "master-pw-51";
    const SENTINEL_PW: &str = "sentinel-pw-73";
    let first = Instant::now();
    let mut master = Server::new(&[
        "--requirepass",
        PW,
        "--masterauth",
        PW,
        // The replica syncs at once, not after the default 5 s wait.
        "--repl-diskless-sync-delay",
        "0",
    ]);
    master.password = Some(PW.into());
    master.start();
    let mut replica = Server::new(&[
        "--replicaof",
        "127.0.0.1",
        &master.port.to_string(),
        "--requirepass",
        PW,
        "--masterauth",
        PW,
    ]);
    replica.password = Some(PW.into());
    replica.start();
    // Replicating means masterauth works; the sentinel then finds the
    // replica at its first INFO of the master (which needs auth-pass).
    wait_for("replica in sync", Duration::from_secs(10), &mut || {
        replica
            .info("replication")
            .contains("master_link_status:up")
    });
    let mut sentinel = Server::new(&[]);
    sentinel.password = Some(SENTINEL_PW.into());
    sentinel.config = Some(format!(
        "sentinel monitor pm 127.0.0.1 {} 1\n\
         sentinel auth-pass pm {PW}\n\
         requirepass {SENTINEL_PW}\n",
        master.port
    ));
    sentinel.start();
    wait_for(
        "sentinel sees the replica",
        Duration::from_secs(15),
        &mut || sentinel.info("sentinel").contains("slaves=1"),
    );
    let keys = keys(100);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let dir = tempfile::tempdir().unwrap();
    let setup = first.elapsed();
    let start = Instant::now();

    // A wrong password: every call fails on login, the breaker opens.
    let wrong = tune(MirrorConfig::sentinel([sentinel.url()], "pm"))
        .sentinel_master_db(2)
        .sentinel_master_password("not-the-password");
    let cache = open(dir.path(), wrong);
    for _ in 0..200 {
        write(&mut rng, &cache, &keys);
    }
    // Committed, so the outbox rows below are counted whatever the drain did.
    cache.flush().unwrap();
    wait_for("the breaker opens", Duration::from_secs(10), &mut || {
        cache.mirror_stats().unwrap().breaker_transitions > 0
    });
    let s = cache.mirror_stats().unwrap();
    let err = s.last_error.clone().unwrap_or_default();
    assert!(
        err.contains("AuthenticationFailed") && err.contains("check the password"),
        "a clear error: {s:?}"
    );
    assert!(!s.connected && s.applied == 0 && s.outbox_rows > 0, "{s:?}");
    let local = cache.scan(NS, b"").unwrap().len();
    assert!(local > 0);
    cache.close().unwrap();
    eprintln!(
        "protected sentinel: wrong password seen in {:?}: {err}",
        start.elapsed()
    );

    // The sentinel's own password missing from its URL: the same.
    let bare = format!("redis://127.0.0.1:{}/", sentinel.port);
    let other = tempfile::tempdir().unwrap();
    let no_sentinel_pw = open(
        other.path(),
        tune(MirrorConfig::sentinel([bare], "pm")).sentinel_master_password(PW),
    );
    no_sentinel_pw.set(NS, b"k", b"v".to_vec()).unwrap();
    // Committed, so the outbox row is counted below: a login refused by a
    // local sentinel can come back before a `Buffered` commit (10 ms).
    no_sentinel_pw.flush().unwrap();
    wait_for("a login error", Duration::from_secs(10), &mut || {
        no_sentinel_pw
            .mirror_stats()
            .unwrap()
            .last_error
            .is_some_and(|e| e.contains("check the password"))
    });
    let s = no_sentinel_pw.mirror_stats().unwrap();
    assert!(s.applied == 0 && s.outbox_rows == 1, "{s:?}");
    eprintln!(
        "protected sentinel, no sentinel password: {}",
        s.last_error.unwrap_or_default()
    );
    no_sentinel_pw.close().unwrap();

    // The right one (as user `default`, which requirepass protects).
    let right = tune(MirrorConfig::sentinel([sentinel.url()], "pm"))
        .sentinel_master_db(2)
        .sentinel_master_username("default")
        .sentinel_master_password(PW);
    let shown = format!("{right:?}");
    assert!(
        !shown.contains(PW) && !shown.contains(SENTINEL_PW),
        "{shown}"
    );
    let cache = open(dir.path(), right);
    for _ in 0..200 {
        write(&mut rng, &cache, &keys);
    }
    let db2 = format!("redis://:{PW}@127.0.0.1:{}/2", master.port);
    let took = converge(
        &cache,
        &mut || {
            Ok(Reader::Single(
                redis::Client::open(db2.as_str())?.get_connection()?,
            ))
        },
        &keys,
        Duration::from_secs(15),
    );
    let s = cache.mirror_stats().unwrap();
    assert!(s.connected && s.applied > 0, "{s:?}");
    // Nothing of ours in db 0.
    let in_db0: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg(format!("{PREFIX}*"))
        .query(&mut master.conn())
        .unwrap();
    assert!(in_db0.is_empty(), "{} keys in db 0", in_db0.len());
    // A miss reads through from the protected master.
    let other = tempfile::tempdir().unwrap();
    let reader = open(
        other.path(),
        tune(MirrorConfig::sentinel([sentinel.url()], "pm"))
            .sentinel_master_db(2)
            .sentinel_master_password(PW)
            .warm_start(false),
    );
    let (k, v) = cache
        .scan(NS, b"")
        .unwrap()
        .into_iter()
        .next()
        .expect("a live key");
    let got = query_retry("read-through", || {
        reader
            .get(NS, &k)
            .map_err(|e| redis::RedisError::from(std::io::Error::other(e.to_string())))?
            .ok_or_else(|| redis::RedisError::from(std::io::Error::other("not yet")))
    });
    assert_eq!(&got[..], &v[..]);
    eprintln!(
        "protected sentinel: converged {took:?} after reopening with the right password; {} applied; processes up in {setup:?}, the rest took {:?}",
        s.applied,
        start.elapsed()
    );
    reader.close().unwrap();
    cache.close().unwrap();
}

/// The node an instance is subscribed on is killed. An instance with
/// other seeds moves its subscription to another node; one whose only
/// seed is that node stays unsubscribed until it is back. A delete made
/// meanwhile (on a key another master holds) must not stay served by
/// either: the message, or the reconciliation after the gap (retried
/// until every master answers), removes it.
#[test]
fn a_lost_subscription_moves_to_another_node_and_reconciles() {
    let mut cluster = Cluster::start();
    let urls = cluster.urls();
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    // A and C subscribe on node 0 (A's first seed, C's only one); B on node 2.
    let a = open(da.path(), tune(MirrorConfig::cluster(urls.clone())));
    let c = open(dc.path(), tune(MirrorConfig::cluster([urls[0].clone()])));
    let mut rev = urls.clone();
    rev.reverse();
    let b = open(db.path(), tune(MirrorConfig::cluster(rev)));
    let limit = Duration::from_secs(15);
    for i in 0..30 {
        b.set(NS, format!("k{i}").as_bytes(), format!("b{i}").into_bytes())
            .unwrap();
    }
    // A and C hold every key locally (read through Redis).
    wait_for("A and C read B's writes", limit, &mut || {
        (0..30).all(|i| {
            let k = format!("k{i}");
            a.get(NS, k.as_bytes()).unwrap().is_some() && c.get(NS, k.as_bytes()).unwrap().is_some()
        })
    });
    wait_for("all subscribed", limit, &mut || {
        [&a, &b, &c]
            .iter()
            .all(|x| x.mirror_stats().unwrap().pubsub_connects == 1)
    });
    // A key that node 1 holds, so its delete reaches Redis while node 0 is down.
    let on_node1: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg(format!("{PREFIX}d*"))
        .query(&mut cluster.nodes[1].conn())
        .unwrap();
    let victim = on_node1
        .iter()
        .find_map(|k| k.strip_prefix(format!("{PREFIX}d\0{NS}\0").as_bytes()))
        .expect("a key on node 1")
        .to_vec();
    cluster.nodes[0].kill();
    b.delete(NS, &victim).unwrap();
    // A moves to another node while node 0 is still down.
    wait_for("A resubscribed elsewhere", limit, &mut || {
        a.mirror_stats().unwrap().pubsub_connects >= 2
    });
    // The delete reached Redis (node 1) while C could not be subscribed.
    let mut n1 = cluster.nodes[1].conn();
    let key = data_key(NS, &victim);
    wait_for("the tombstone is in Redis", limit, &mut || {
        redis::cmd("HGET")
            .arg(&key)
            .arg("d")
            .query::<Option<String>>(&mut n1)
            .is_ok_and(|d| d.is_some())
    });
    let c_before = c.mirror_stats().unwrap();
    assert_eq!(c_before.pubsub_connects, 1, "C has nowhere else to go");
    cluster.nodes[0].start();
    cluster.wait_ok();
    let t = wait_for("A and C drop the deleted key", limit, &mut || {
        a.get(NS, &victim).unwrap().is_none() && c.get(NS, &victim).unwrap().is_none()
    });
    let (sa, sc) = (a.mirror_stats().unwrap(), c.mirror_stats().unwrap());
    eprintln!(
        "lost subscription: A moved to another node (connects {}), C waited for node 0 (connects {}, reconcile fixed {}); the delete was dropped by both {t:?} after node 0 was back",
        sa.pubsub_connects, sc.pubsub_connects, sc.reconcile_fixed
    );
    assert!(sc.pubsub_connects >= 2, "{sc:?}");
    assert!(
        sc.reconcile_fixed >= 1,
        "C caught the delete by reconciling: {sc:?}"
    );
    for x in [a, b, c] {
        x.close().unwrap();
    }
}
