//! Settings of the Redis mirror, from code or from the environment.

use crate::load::BreakerConfig;
use std::time::Duration;

/// Which Redis deployment the mirror writes to. See docs/MIRROR.md,
/// "Cluster and Sentinel".
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisDeployment {
    /// One server at [`MirrorConfig::url`].
    Single,
    /// A Redis Cluster reached through any of these seed nodes
    /// (`redis://host:port`; list every master so pub/sub can move to
    /// another node when one is lost).
    Cluster {
        /// Seed URLs.
        nodes: Vec<String>,
    },
    /// The master that these sentinels name `master_name`, followed
    /// across failovers.
    Sentinel {
        /// Sentinel URLs (`redis://host:26379`).
        sentinels: Vec<String>,
        /// The monitored master's name (`sentinel monitor <name> ...`).
        master_name: String,
    },
}

/// Settings of the Redis mirror. Every field has a default; only where
/// Redis is (a URL, cluster nodes or sentinels) is required. See
/// docs/MIRROR.md.
///
/// ```
/// use embercache::MirrorConfig;
/// use std::time::Duration;
/// let cfg = MirrorConfig::new("redis://127.0.0.1:6379/0")
///     .key_prefix("bot:")
///     .command_timeout(Duration::from_millis(500));
/// assert_eq!(cfg.key_prefix, "bot:");
/// // A cluster, or a master behind Sentinel:
/// let c = MirrorConfig::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]);
/// let s = MirrorConfig::sentinel(["redis://10.0.0.1:26379"], "cache");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MirrorConfig {
    /// `redis://[user:pass@]host:port/db` (or `rediss://`) of a `Single`
    /// deployment; for a cluster or Sentinel the first node, for logs.
    /// Env: `EMBERCACHE_REDIS_URL`.
    pub url: String,
    /// Single server (default), Cluster or Sentinel.
    /// Env: `EMBERCACHE_REDIS_CLUSTER` (comma-separated node URLs), or
    /// `EMBERCACHE_REDIS_SENTINEL` (comma-separated sentinel URLs) with
    /// `EMBERCACHE_REDIS_SENTINEL_MASTER`.
    pub deployment: RedisDeployment,
    /// Prefix of every key the mirror writes, so several caches (or other
    /// programs) can share one Redis. Default: `"embercache:"`.
    /// Env: `EMBERCACHE_REDIS_PREFIX`.
    pub key_prefix: String,
    /// TCP connect timeout. Default: 1 s. Env: `EMBERCACHE_REDIS_CONNECT_TIMEOUT`.
    pub connect_timeout: Duration,
    /// Timeout of one pipelined batch (drain, resync, warm start). A batch
    /// that times out counts as a failure for the breaker. Default: 2 s.
    /// Env: `EMBERCACHE_REDIS_TIMEOUT`.
    pub command_timeout: Duration,
    /// Timeout of a read-through lookup on a local miss: the caller waits
    /// at most this long for Redis. Default: 100 ms.
    /// Env: `EMBERCACHE_REDIS_READ_TIMEOUT`.
    pub read_timeout: Duration,
    /// Look Redis up on a hot and warm miss. Default: true.
    pub read_through: bool,
    /// Outbox rows per pipelined batch. Default: 512.
    pub batch: usize,
    /// How often the drain looks at an empty outbox. Default: 10 ms.
    pub poll_interval: Duration,
    /// How long a delete's tombstone stays in Redis (an older write
    /// replayed later than this could reappear). Default: 24 h.
    pub tombstone_ttl: Duration,
    /// How often the drain checks that Redis still holds our data (its
    /// `run_id` and our marker key), and publishes namespace heat for warm
    /// starts. Default: 1 s.
    pub check_interval: Duration,
    /// Warm an empty local directory from Redis in the background.
    /// Default: true.
    pub warm_start: bool,
    /// Broadcast and receive deletes and epoch bumps over pub/sub.
    /// Default: true.
    pub pubsub: bool,
    /// The breaker guarding Redis. Default: failure rate 50 % over the last
    /// 20 calls (at least 4), a call slower than 1 s is slow, 500 ms in
    /// open doubling up to 30 s with 20 % jitter, 2 half-open probes.
    pub breaker: BreakerConfig,
}

impl MirrorConfig {
    /// Default settings for the Redis at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        MirrorConfig {
            url: url.into(),
            deployment: RedisDeployment::Single,
            key_prefix: "embercache:".into(),
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_millis(100),
            read_through: true,
            batch: 512,
            poll_interval: Duration::from_millis(10),
            tombstone_ttl: Duration::from_secs(24 * 3600),
            check_interval: Duration::from_secs(1),
            warm_start: true,
            pubsub: true,
            breaker: BreakerConfig::default()
                .failure_rate(50.0)
                .slow_calls(100.0, Duration::from_secs(1))
                .window(20, 4)
                .wait(Duration::from_millis(500), Duration::from_secs(30))
                .half_open_probes(2),
        }
    }

    /// Default settings for a Redis Cluster reached through `nodes` (seed
    /// URLs; any subset of the cluster works, all masters is best).
    pub fn cluster<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> Self {
        let nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        let mut c = MirrorConfig::new(nodes.first().cloned().unwrap_or_default());
        c.deployment = RedisDeployment::Cluster { nodes };
        c
    }

    /// Default settings for the master that `sentinels` monitor under
    /// `master_name`; the mirror asks them again on every reconnect, so it
    /// follows failovers.
    pub fn sentinel<S: Into<String>>(
        sentinels: impl IntoIterator<Item = S>,
        master_name: impl Into<String>,
    ) -> Self {
        let sentinels: Vec<String> = sentinels.into_iter().map(Into::into).collect();
        let mut c = MirrorConfig::new(sentinels.first().cloned().unwrap_or_default());
        c.deployment = RedisDeployment::Sentinel {
            sentinels,
            master_name: master_name.into(),
        };
        c
    }

    /// The settings from `EMBERCACHE_REDIS_URL`, or `EMBERCACHE_REDIS_CLUSTER`,
    /// or `EMBERCACHE_REDIS_SENTINEL` + `EMBERCACHE_REDIS_SENTINEL_MASTER`
    /// (one is required; `None` when all are unset or empty; the cluster
    /// wins over Sentinel, which wins over the URL) and the optional
    /// `EMBERCACHE_REDIS_*` variables documented on each field. Unparsable
    /// durations are ignored with a warning.
    pub fn from_env() -> Option<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// Like [`MirrorConfig::from_env`] with any variable source.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let list = |name: &str| {
            var(name).map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
        };
        let mut c = if let Some(nodes) = list("EMBERCACHE_REDIS_CLUSTER").filter(|n| !n.is_empty())
        {
            MirrorConfig::cluster(nodes)
        } else if let Some(sentinels) = list("EMBERCACHE_REDIS_SENTINEL").filter(|n| !n.is_empty())
        {
            // A missing master name is reported by `validate()` at open.
            MirrorConfig::sentinel(
                sentinels,
                var("EMBERCACHE_REDIS_SENTINEL_MASTER").unwrap_or_default(),
            )
        } else {
            MirrorConfig::new(var("EMBERCACHE_REDIS_URL").filter(|u| !u.is_empty())?)
        };
        if let Some(p) = var("EMBERCACHE_REDIS_PREFIX") {
            c.key_prefix = p;
        }
        let dur = |name: &str, into: &mut Duration| {
            if let Some(v) = var(name) {
                match parse_duration(&v) {
                    Some(d) => *into = d,
                    None => tracing::warn!(variable = name, value = %v, "not a duration; ignored"),
                }
            }
        };
        dur("EMBERCACHE_REDIS_CONNECT_TIMEOUT", &mut c.connect_timeout);
        dur("EMBERCACHE_REDIS_TIMEOUT", &mut c.command_timeout);
        dur("EMBERCACHE_REDIS_READ_TIMEOUT", &mut c.read_timeout);
        if let Ok(b) = c.breaker.clone().from_vars("REDIS", &var) {
            c.breaker = b;
        }
        Some(c)
    }

    /// Key prefix. Default: `"embercache:"`.
    pub fn key_prefix(mut self, p: impl Into<String>) -> Self {
        self.key_prefix = p.into();
        self
    }
    /// Connect timeout. Default: 1 s.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
    /// Batch timeout. Default: 2 s.
    pub fn command_timeout(mut self, d: Duration) -> Self {
        self.command_timeout = d;
        self
    }
    /// Read-through timeout. Default: 100 ms.
    pub fn read_timeout(mut self, d: Duration) -> Self {
        self.read_timeout = d;
        self
    }
    /// Read-through on a local miss. Default: true.
    pub fn read_through(mut self, on: bool) -> Self {
        self.read_through = on;
        self
    }
    /// Rows per batch. Default: 512.
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n;
        self
    }
    /// Poll interval of an empty outbox. Default: 10 ms.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }
    /// Tombstone lifetime. Default: 24 h.
    pub fn tombstone_ttl(mut self, d: Duration) -> Self {
        self.tombstone_ttl = d;
        self
    }
    /// Health-check interval. Default: 1 s.
    pub fn check_interval(mut self, d: Duration) -> Self {
        self.check_interval = d;
        self
    }
    /// Warm start from Redis. Default: true.
    pub fn warm_start(mut self, on: bool) -> Self {
        self.warm_start = on;
        self
    }
    /// Pub/sub invalidation. Default: true.
    pub fn pubsub(mut self, on: bool) -> Self {
        self.pubsub = on;
        self
    }
    /// The breaker's settings. Default: see [`MirrorConfig::breaker`].
    pub fn breaker(mut self, b: BreakerConfig) -> Self {
        self.breaker = b;
        self
    }

    /// Checks the settings; the error names the setting.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        let check = |setting: &'static str, url: &str| match redis::Client::open(url) {
            Ok(_) => Ok(()),
            Err(e) => Err((
                setting,
                format!("{url:?} is not a Redis URL (redis://host:port): {e}"),
            )),
        };
        match &self.deployment {
            RedisDeployment::Single => check("redis.url", &self.url)?,
            RedisDeployment::Cluster { nodes } => {
                if nodes.is_empty() {
                    return Err((
                        "redis.cluster",
                        "needs at least one node URL (EMBERCACHE_REDIS_CLUSTER=redis://h1:7000,redis://h2:7000)".into(),
                    ));
                }
                for n in nodes {
                    check("redis.cluster", n)?;
                }
            }
            RedisDeployment::Sentinel {
                sentinels,
                master_name,
            } => {
                if sentinels.is_empty() {
                    return Err((
                        "redis.sentinel",
                        "needs at least one sentinel URL (EMBERCACHE_REDIS_SENTINEL=redis://h1:26379)".into(),
                    ));
                }
                for n in sentinels {
                    check("redis.sentinel", n)?;
                }
                if master_name.is_empty() {
                    return Err((
                        "redis.sentinel_master",
                        "names the master the sentinels monitor (EMBERCACHE_REDIS_SENTINEL_MASTER)"
                            .into(),
                    ));
                }
            }
        }
        if self.key_prefix.is_empty() {
            return Err((
                "redis.key_prefix",
                "must not be empty (it keeps our keys apart)".into(),
            ));
        }
        if self.batch == 0 {
            return Err(("redis.batch", "must be positive".into()));
        }
        for (name, d) in [
            ("redis.connect_timeout", self.connect_timeout),
            ("redis.command_timeout", self.command_timeout),
            ("redis.read_timeout", self.read_timeout),
            ("redis.tombstone_ttl", self.tombstone_ttl),
            ("redis.check_interval", self.check_interval),
        ] {
            if d.is_zero() {
                return Err((name, "must be above zero".into()));
            }
        }
        self.breaker
            .validate()
            .map_err(|e| ("redis.breaker", e.to_string()))
    }
}

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_needs_a_url_and_reads_the_rest() {
        assert!(MirrorConfig::from_vars(|_| None).is_none());
        let c = MirrorConfig::from_vars(|k| match k {
            "EMBERCACHE_REDIS_URL" => Some("redis://127.0.0.1:1/".into()),
            "EMBERCACHE_REDIS_PREFIX" => Some("x:".into()),
            "EMBERCACHE_REDIS_TIMEOUT" => Some("250ms".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.key_prefix, "x:");
        assert_eq!(c.command_timeout, Duration::from_millis(250));
        c.validate().unwrap();
        assert_eq!(
            MirrorConfig::new("nope").validate().unwrap_err().0,
            "redis.url"
        );
    }

    #[test]
    fn cluster_and_sentinel_from_env_and_validated() {
        let c = MirrorConfig::from_vars(|k| match k {
            "EMBERCACHE_REDIS_CLUSTER" => {
                Some("redis://127.0.0.1:7000, redis://127.0.0.1:7001".into())
            }
            _ => None,
        })
        .unwrap();
        assert_eq!(
            c.deployment,
            RedisDeployment::Cluster {
                nodes: vec![
                    "redis://127.0.0.1:7000".into(),
                    "redis://127.0.0.1:7001".into()
                ]
            }
        );
        c.validate().unwrap();
        let s = MirrorConfig::from_vars(|k| match k {
            "EMBERCACHE_REDIS_SENTINEL" => Some("redis://127.0.0.1:26379".into()),
            "EMBERCACHE_REDIS_SENTINEL_MASTER" => Some("cache".into()),
            _ => None,
        })
        .unwrap();
        s.validate().unwrap();
        // A missing master name or an empty node list names the setting.
        let no_master = MirrorConfig::from_vars(|k| match k {
            "EMBERCACHE_REDIS_SENTINEL" => Some("redis://127.0.0.1:26379".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(no_master.validate().unwrap_err().0, "redis.sentinel_master");
        let empty: [&str; 0] = [];
        assert_eq!(
            MirrorConfig::cluster(empty).validate().unwrap_err().0,
            "redis.cluster"
        );
        assert_eq!(
            MirrorConfig::cluster(["redis://ok:1", "bad"])
                .validate()
                .unwrap_err()
                .0,
            "redis.cluster"
        );
        assert_eq!(
            MirrorConfig::sentinel(empty, "m").validate().unwrap_err().0,
            "redis.sentinel"
        );
    }
}
