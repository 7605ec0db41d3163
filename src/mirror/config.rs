//! Settings of the Redis mirror, from code or from the environment.

use crate::load::BreakerConfig;
use std::time::Duration;

/// Which Redis deployment the mirror writes to. See docs/MIRROR.md,
/// "Cluster and Sentinel". `Debug` hides passwords in the URLs.
#[derive(Clone, PartialEq, Eq)]
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
        /// Sentinel URLs (`redis://host:26379`, or `redis://:pw@host:26379`
        /// when the sentinels have a `requirepass` of their own). The
        /// master's credentials are [`MirrorConfig::sentinel_master_password`]
        /// and its neighbours.
        sentinels: Vec<String>,
        /// The monitored master's name (`sentinel monitor <name> ...`).
        master_name: String,
    },
}

impl std::fmt::Debug for RedisDeployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn urls(v: &[String]) -> Vec<std::borrow::Cow<'_, str>> {
            v.iter().map(|u| redact_url(u)).collect()
        }
        match self {
            RedisDeployment::Single => f.write_str("Single"),
            RedisDeployment::Cluster { nodes } => f
                .debug_struct("Cluster")
                .field("nodes", &urls(nodes))
                .finish(),
            RedisDeployment::Sentinel {
                sentinels,
                master_name,
            } => f
                .debug_struct("Sentinel")
                .field("sentinels", &urls(sentinels))
                .field("master_name", master_name)
                .finish(),
        }
    }
}

const REDACTED: &str = "<redacted>";

/// `url` with the password of its user info (`redis://user:pw@host`)
/// replaced, for logs, errors and `Debug`.
pub(crate) fn redact_url(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.into();
    };
    let rest = &url[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let Some(at) = authority.rfind('@') else {
        return url.into();
    };
    match authority[..at].find(':') {
        Some(colon) => format!(
            "{}{REDACTED}{}",
            &url[..start + colon + 1],
            &url[start + at..]
        )
        .into(),
        None => url.into(),
    }
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
///
/// `Debug` hides every password (in URLs and
/// [`MirrorConfig::sentinel_master_password`]).
#[derive(Clone)]
#[non_exhaustive]
pub struct MirrorConfig {
    /// `redis://[user:pass@]host:port/db` of a `Single` deployment; for a
    /// cluster or Sentinel the first node, for logs. (`rediss://` is
    /// refused at open: the `redis` crate is built without TLS.)
    /// Env: `EMBERCACHE_REDIS_URL`.
    pub url: String,
    /// Single server (default), Cluster or Sentinel.
    /// Env: `EMBERCACHE_REDIS_CLUSTER` (comma-separated node URLs), or
    /// `EMBERCACHE_REDIS_SENTINEL` (comma-separated sentinel URLs) with
    /// `EMBERCACHE_REDIS_SENTINEL_MASTER`.
    pub deployment: RedisDeployment,
    /// The database of the master found through Sentinel (Sentinel hands
    /// out an address only). Sentinel deployments only. Default: 0.
    /// Env: `EMBERCACHE_REDIS_SENTINEL_MASTER_DB`.
    pub sentinel_master_db: i64,
    /// The ACL user to log into that master (and its replicas) as.
    /// Needs a password. Default: none (the `default` user, which
    /// `requirepass` protects). Env: `EMBERCACHE_REDIS_SENTINEL_MASTER_USERNAME`.
    pub sentinel_master_username: Option<String>,
    /// The master's password (its `requirepass`, or the ACL user's).
    /// The sentinels' own password, if any, goes in their URLs
    /// (`redis://:pw@host:26379`). Never shown by `Debug`. Default: none.
    /// Env: `EMBERCACHE_REDIS_SENTINEL_MASTER_PASSWORD`.
    pub sentinel_master_password: Option<String>,
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
    /// A variable `from_vars` could not read, reported by `validate()`
    /// (silently falling back to a default db would write elsewhere).
    bad_var: Option<(&'static str, String)>,
}

impl std::fmt::Debug for MirrorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured so that a new field cannot be forgotten here.
        let MirrorConfig {
            url,
            deployment,
            sentinel_master_db,
            sentinel_master_username,
            sentinel_master_password,
            key_prefix,
            connect_timeout,
            command_timeout,
            read_timeout,
            read_through,
            batch,
            poll_interval,
            tombstone_ttl,
            check_interval,
            warm_start,
            pubsub,
            breaker,
            bad_var,
        } = self;
        f.debug_struct("MirrorConfig")
            .field("url", &redact_url(url))
            .field("deployment", deployment)
            .field("sentinel_master_db", sentinel_master_db)
            .field("sentinel_master_username", sentinel_master_username)
            .field(
                "sentinel_master_password",
                &sentinel_master_password.as_ref().map(|_| REDACTED),
            )
            .field("key_prefix", key_prefix)
            .field("connect_timeout", connect_timeout)
            .field("command_timeout", command_timeout)
            .field("read_timeout", read_timeout)
            .field("read_through", read_through)
            .field("batch", batch)
            .field("poll_interval", poll_interval)
            .field("tombstone_ttl", tombstone_ttl)
            .field("check_interval", check_interval)
            .field("warm_start", warm_start)
            .field("pubsub", pubsub)
            .field("breaker", breaker)
            .field("bad_var", bad_var)
            .finish()
    }
}

impl MirrorConfig {
    /// Default settings for the Redis at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        MirrorConfig {
            url: url.into(),
            deployment: RedisDeployment::Single,
            sentinel_master_db: 0,
            sentinel_master_username: None,
            sentinel_master_password: None,
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
            bad_var: None,
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
            let mut c = MirrorConfig::sentinel(
                sentinels,
                var("EMBERCACHE_REDIS_SENTINEL_MASTER").unwrap_or_default(),
            );
            let set = |name: &str| var(name).filter(|v| !v.is_empty());
            if let Some(db) = set("EMBERCACHE_REDIS_SENTINEL_MASTER_DB") {
                match db.trim().parse() {
                    Ok(n) => c.sentinel_master_db = n,
                    Err(_) => {
                        c.bad_var = Some((
                            "redis.sentinel_master_db",
                            format!(
                                "EMBERCACHE_REDIS_SENTINEL_MASTER_DB={db:?} is not a database number"
                            ),
                        ))
                    }
                }
            }
            c.sentinel_master_username = set("EMBERCACHE_REDIS_SENTINEL_MASTER_USERNAME");
            c.sentinel_master_password = set("EMBERCACHE_REDIS_SENTINEL_MASTER_PASSWORD");
            if set("EMBERCACHE_REDIS_SENTINEL_PASSWORD").is_some() {
                // Other tools use this name for either password: say which is read.
                tracing::warn!(
                    "EMBERCACHE_REDIS_SENTINEL_PASSWORD is not read: the master's password is \
                     EMBERCACHE_REDIS_SENTINEL_MASTER_PASSWORD, the sentinels' goes in their \
                     URLs (redis://:pw@host:26379)"
                );
            }
            c
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
    /// The Sentinel master's database. Default: 0.
    pub fn sentinel_master_db(mut self, db: i64) -> Self {
        self.sentinel_master_db = db;
        self
    }
    /// The Sentinel master's ACL user. Default: none.
    pub fn sentinel_master_username(mut self, u: impl Into<String>) -> Self {
        self.sentinel_master_username = Some(u.into());
        self
    }
    /// The Sentinel master's password. Default: none.
    pub fn sentinel_master_password(mut self, p: impl Into<String>) -> Self {
        self.sentinel_master_password = Some(p.into());
        self
    }
    /// The Sentinel master's db and credentials in redis-rs's form.
    pub(crate) fn sentinel_master_info(&self) -> redis::RedisConnectionInfo {
        let mut info = redis::RedisConnectionInfo::default().set_db(self.sentinel_master_db);
        if let Some(u) = &self.sentinel_master_username {
            info = info.set_username(u);
        }
        if let Some(p) = &self.sentinel_master_password {
            info = info.set_password(p);
        }
        info
    }
    /// The breaker's settings. Default: see [`MirrorConfig::breaker`].
    pub fn breaker(mut self, b: BreakerConfig) -> Self {
        self.breaker = b;
        self
    }

    /// Checks the settings; the error names the setting.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(bad) = &self.bad_var {
            return Err(bad.clone());
        }
        let check = |setting: &'static str, url: &str| match redis::Client::open(url) {
            Ok(_) => Ok(()),
            Err(e) => Err((
                setting,
                format!(
                    "{:?} is not a Redis URL (redis://[:password@]host:port): {e}",
                    redact_url(url)
                ),
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
                self.validate_sentinel_master()?;
            }
        }
        if !matches!(self.deployment, RedisDeployment::Sentinel { .. })
            && (self.sentinel_master_db != 0
                || self.sentinel_master_username.is_some()
                || self.sentinel_master_password.is_some())
        {
            return Err((
                if self.sentinel_master_password.is_some() {
                    "redis.sentinel_master_password"
                } else if self.sentinel_master_username.is_some() {
                    "redis.sentinel_master_username"
                } else {
                    "redis.sentinel_master_db"
                },
                "applies to a Sentinel deployment only; for one server put the db and \
                 password in the URL (redis://:password@host:port/db)"
                    .into(),
            ));
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

impl MirrorConfig {
    fn validate_sentinel_master(&self) -> Result<(), (&'static str, String)> {
        let (db, user, pw) = (
            self.sentinel_master_db,
            &self.sentinel_master_username,
            &self.sentinel_master_password,
        );
        if db < 0 {
            return Err((
                "redis.sentinel_master_db",
                format!(
                    "{db} is not a database number (0 or more; EMBERCACHE_REDIS_SENTINEL_MASTER_DB)"
                ),
            ));
        }
        if pw.as_deref() == Some("") {
            return Err((
                "redis.sentinel_master_password",
                "is empty: leave it unset for a master without requirepass".into(),
            ));
        }
        if user.as_deref() == Some("") {
            return Err((
                "redis.sentinel_master_username",
                "is empty: leave it unset for the default user".into(),
            ));
        }
        if user.is_some() && pw.is_none() {
            return Err((
                "redis.sentinel_master_username",
                "needs a password too (EMBERCACHE_REDIS_SENTINEL_MASTER_PASSWORD): \
                 a user alone is never sent to the master"
                    .into(),
            ));
        }
        Ok(())
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

    #[test]
    fn sentinel_master_credentials_from_env_validated_and_never_shown() {
        let vars = |extra: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                [
                    (
                        "EMBERCACHE_REDIS_SENTINEL",
                        "redis://:sentinel-secret@127.0.0.1:26379",
                    ),
                    ("EMBERCACHE_REDIS_SENTINEL_MASTER", "cache"),
                ]
                .iter()
                .chain(extra)
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
            }
        };
        let c = MirrorConfig::from_vars(vars(&[
            ("EMBERCACHE_REDIS_SENTINEL_MASTER_DB", "3"),
            ("EMBERCACHE_REDIS_SENTINEL_MASTER_USERNAME", "cache-user"),
            ("EMBERCACHE_REDIS_SENTINEL_MASTER_PASSWORD", "master-secret"),
        ]))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.sentinel_master_db, 3);
        assert_eq!(c.sentinel_master_username.as_deref(), Some("cache-user"));
        let info = c.sentinel_master_info();
        assert_eq!(
            (info.db(), info.username(), info.password()),
            (3, Some("cache-user"), Some("master-secret"))
        );
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(
            shown.contains("cache-user") && shown.contains(REDACTED),
            "{shown}"
        );

        // Each bad setting is named.
        let bad_db =
            MirrorConfig::from_vars(vars(&[("EMBERCACHE_REDIS_SENTINEL_MASTER_DB", "two")]))
                .unwrap();
        assert_eq!(bad_db.validate().unwrap_err().0, "redis.sentinel_master_db");
        let user_only =
            MirrorConfig::from_vars(vars(&[("EMBERCACHE_REDIS_SENTINEL_MASTER_USERNAME", "u")]))
                .unwrap();
        assert_eq!(
            user_only.validate().unwrap_err().0,
            "redis.sentinel_master_username"
        );
        let s = MirrorConfig::sentinel(["redis://127.0.0.1:26379"], "m");
        assert_eq!(
            s.clone().sentinel_master_db(-1).validate().unwrap_err().0,
            "redis.sentinel_master_db"
        );
        assert_eq!(
            s.sentinel_master_password("").validate().unwrap_err().0,
            "redis.sentinel_master_password"
        );
        // Not for a single server or a cluster: their URLs carry it.
        let e = MirrorConfig::new("redis://127.0.0.1:1/")
            .sentinel_master_password("pw")
            .validate()
            .unwrap_err();
        assert_eq!(e.0, "redis.sentinel_master_password");
        assert!(!e.1.contains("pw@"), "{}", e.1);
        // A bad URL's error does not repeat its password.
        let e = MirrorConfig::sentinel(["redis://:hunter2@[bad"], "m")
            .validate()
            .unwrap_err();
        assert_eq!(e.0, "redis.sentinel");
        assert!(!e.1.contains("hunter2"), "{}", e.1);
        // No TLS in this build: said at open, not at the first connection.
        let e = MirrorConfig::sentinel(["rediss://:hunter2@127.0.0.1:26379"], "m")
            .validate()
            .unwrap_err();
        assert!(e.1.contains("TLS") && !e.1.contains("hunter2"), "{}", e.1);
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(
            redact_url("redis://:pw@h:1/0"),
            format!("redis://:{REDACTED}@h:1/0")
        );
        assert_eq!(
            redact_url("rediss://user:p@ss@h:1"),
            format!("rediss://user:{REDACTED}@h:1")
        );
        assert_eq!(redact_url("redis://user@h:1"), "redis://user@h:1");
        assert_eq!(redact_url("nope"), "nope");
        let c = MirrorConfig::cluster(["redis://:topsecret@10.0.0.1:7000"]);
        assert!(!format!("{c:?}").contains("topsecret"));
    }
}
