//! One connection type over the three deployments the mirror supports:
//! a single server, a Redis Cluster, and a master found through Sentinel.
//! The rest of the mirror sends the same commands to all three; what
//! differs lives here:
//!
//! - **Pipelines.** A single server takes a pipeline in one round trip.
//!   A cluster refuses a pipeline whose keys span slots, so its commands
//!   are sent one by one, concurrently, over the cluster connection (each
//!   node's multiplexed connection writes them back to back, so this is
//!   still one round trip per node). Every command of ours touches one key.
//! - **Server identity.** Resync detection compares the `run_id` of the
//!   server(s) holding our data with the one recorded in our marker. For a
//!   cluster this is the sorted `run_id` of every slot owner named by
//!   `CLUSTER SLOTS` (each asked by address; one that does not answer fails
//!   the check rather than dropping out of it), so one master restarted
//!   empty (or replaced by a replica) changes it.
//! - **SCAN** visits every master of a cluster.
//! - **Sentinel** asks the sentinels for the master on every new
//!   connection, so after a failover the next reconnect reaches the new
//!   master; the read path's pooled connections carry the generation of
//!   the master they were opened to and are dropped when it changes. The
//!   master's db and credentials (`sentinel_master_*`) are attached to the
//!   address the sentinels give; a sentinel's own password rides in its URL.

use super::config::{MirrorConfig, RedisDeployment};
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, RedisError, RedisResult, ServerErrorKind, Value};

/// How to reach Redis: built once from the configuration.
pub(crate) enum Target {
    Single(redis::Client),
    Cluster {
        client: ClusterClient,
        /// One client per seed URL, for pub/sub (a plain SUBSCRIBE on any
        /// node receives what is published anywhere in the cluster).
        seeds: Vec<redis::Client>,
    },
    Sentinel {
        sentinel: tokio::sync::Mutex<SentinelClient>,
        /// The master last resolved and a generation bumped whenever it
        /// changes (the read path drops connections of older generations).
        master: parking_lot::Mutex<Option<(u64, redis::Client)>>,
    },
}

/// Where a SCAN runs: the one server, or one master of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum ScanNode {
    Any,
    Master { host: String, port: u16 },
}

impl Target {
    pub(crate) fn new(cfg: &MirrorConfig) -> RedisResult<Target> {
        Ok(match &cfg.deployment {
            RedisDeployment::Single => Target::Single(redis::Client::open(cfg.url.as_str())?),
            RedisDeployment::Cluster { nodes } => Target::Cluster {
                client: ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(cfg.connect_timeout)
                    .response_timeout(cfg.command_timeout)
                    // Our callers bound every call and count failures in the
                    // breaker; long retry loops inside would only hide them.
                    .retries(1)
                    .build()?,
                seeds: nodes
                    .iter()
                    .map(|n| redis::Client::open(n.as_str()))
                    .collect::<RedisResult<_>>()?,
            },
            RedisDeployment::Sentinel {
                sentinels,
                master_name,
            } => Target::Sentinel {
                sentinel: tokio::sync::Mutex::new(SentinelClient::build(
                    sentinels.clone(),
                    master_name.clone(),
                    // Sentinel gives an address only: the db and the
                    // credentials of the master are ours to add (the
                    // sentinels' own come with their URLs).
                    Some(
                        SentinelNodeConnectionInfo::default()
                            .set_redis_connection_info(cfg.sentinel_master_info()),
                    ),
                    SentinelServerType::Master,
                )?),
                master: parking_lot::Mutex::new(None),
            },
        })
    }

    /// The current master of a Sentinel deployment, asked of the sentinels.
    async fn sentinel_master(
        sentinel: &tokio::sync::Mutex<SentinelClient>,
        master: &parking_lot::Mutex<Option<(u64, redis::Client)>>,
    ) -> RedisResult<redis::Client> {
        let client = sentinel.lock().await.async_get_client().await?;
        let mut m = master.lock();
        let changed = m.as_ref().is_none_or(|(_, c)| {
            c.get_connection_info().addr() != client.get_connection_info().addr()
        });
        if changed {
            let generation = m.as_ref().map_or(1, |(g, _)| g + 1);
            tracing::info!(master = %client.get_connection_info().addr(), "mirror: Sentinel master");
            *m = Some((generation, client.clone()));
        }
        Ok(client)
    }

    /// A client for a blocking connection of the read path (single server
    /// or Sentinel master) and its generation; `None` for a cluster, or
    /// before the first Sentinel resolution.
    pub(crate) fn blocking_client(&self) -> Option<(u64, redis::Client)> {
        match self {
            Target::Single(c) => Some((0, c.clone())),
            Target::Cluster { .. } => None,
            Target::Sentinel { master, .. } => master.lock().clone(),
        }
    }

    /// Whether the read path has somewhere to go (false only before the
    /// sentinels first named a master).
    pub(crate) fn ready_for_reads(&self) -> bool {
        match self {
            Target::Sentinel { master, .. } => master.lock().is_some(),
            _ => true,
        }
    }

    /// Opens a connection with the configured timeouts.
    pub(crate) async fn connect(&self, cfg: &MirrorConfig) -> RedisResult<Conn> {
        let acfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.command_timeout));
        Ok(match self {
            Target::Single(c) => Conn::Single(
                c.get_multiplexed_async_connection_with_config(&acfg)
                    .await?,
            ),
            Target::Cluster { client, .. } => Conn::Cluster(client.get_async_connection().await?),
            Target::Sentinel { sentinel, master } => Conn::Single(
                Self::sentinel_master(sentinel, master)
                    .await?
                    .get_multiplexed_async_connection_with_config(&acfg)
                    .await?,
            ),
        })
    }

    /// A pub/sub connection. `attempt` picks the cluster node (the next
    /// one after a loss, so a dead node is not retried forever).
    pub(crate) async fn pubsub(&self, attempt: usize) -> RedisResult<redis::aio::PubSub> {
        match self {
            Target::Single(c) => c.get_async_pubsub().await,
            Target::Cluster { seeds, .. } => seeds[attempt % seeds.len()].get_async_pubsub().await,
            Target::Sentinel { sentinel, master } => {
                Self::sentinel_master(sentinel, master)
                    .await?
                    .get_async_pubsub()
                    .await
            }
        }
    }
}

/// An async connection (cheap to clone for a cluster).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// Server errors that concern one command (the caller judges them), as
/// opposed to those that mean the node cannot serve (the call fails).
fn per_command(e: &RedisError) -> bool {
    !e.is_io_error()
        && !e.is_timeout()
        && !e.is_connection_dropped()
        && !e.is_connection_refusal()
        && !matches!(
            e.kind(),
            redis::ErrorKind::Server(
                ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
                    | ServerErrorKind::ReadOnly
            )
        )
        && e.code().is_some()
}

/// The master `(host, port)` of every slot range in a `CLUSTER SLOTS`
/// reply: `[[start, end, [host, port, id, ...], replicas...], ...]`.
fn slot_owners(v: &Value) -> Option<Vec<(String, u16)>> {
    let Value::Array(ranges) = v else { return None };
    ranges
        .iter()
        .map(|r| {
            let Value::Array(r) = r else { return None };
            let Value::Array(master) = r.get(2)? else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(b) => String::from_utf8(b.clone()).ok()?,
                Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            let port = match master.get(1)? {
                Value::Int(p) => u16::try_from(*p).ok()?,
                _ => return None,
            };
            Some((host, port))
        })
        .collect()
}

impl Conn {
    /// Runs the commands of `pipe` (each touching at most one key) and
    /// returns one value per command; a server error that concerns one
    /// command (NOSCRIPT, WRONGTYPE on a foreign value) comes back as
    /// `Value::ServerError` for the caller to judge, anything else fails
    /// the whole call.
    pub(crate) async fn run(&mut self, pipe: &redis::Pipeline) -> RedisResult<Vec<Value>> {
        let vals: Vec<Value> = match self {
            Conn::Single(c) => {
                let mut pipe = pipe.clone();
                pipe.ignore_errors();
                pipe.query_async(c).await?
            }
            Conn::Cluster(c) => {
                let tasks: Vec<_> = pipe
                    .cmd_iter()
                    .map(|cmd| {
                        let (mut c, cmd) = (c.clone(), cmd.clone());
                        tokio::spawn(async move { cmd.query_async::<Value>(&mut c).await })
                    })
                    .collect();
                let mut vals = Vec::with_capacity(tasks.len());
                for t in tasks {
                    let r = t
                        .await
                        .map_err(|e| RedisError::from(std::io::Error::other(e)))?;
                    vals.push(match r {
                        Ok(v) => v,
                        Err(e) if per_command(&e) => match redis::ServerError::try_from(e) {
                            Ok(se) => Value::ServerError(se),
                            Err(e) => return Err(e),
                        },
                        Err(e) => return Err(e),
                    });
                }
                vals
            }
        };
        for v in &vals {
            if let Value::ServerError(se) = v {
                let e = RedisError::from(se.clone());
                if !per_command(&e) {
                    return Err(e);
                }
            }
        }
        Ok(vals)
    }

    /// One command routed by its key (or to any node when it has none).
    pub(crate) async fn query<T: redis::FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }

    /// Loads the write script (on every node of a cluster).
    pub(crate) async fn load_script(&mut self, script: &redis::Script) -> RedisResult<()> {
        match self {
            Conn::Single(c) => script.load_async(c).await.map(drop),
            Conn::Cluster(c) => {
                let mut cmd = redis::cmd("SCRIPT");
                cmd.arg("LOAD").arg(super::SCRIPT);
                c.route_command(
                    cmd,
                    RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllNodes, None)),
                )
                .await
                .map(drop)
            }
        }
    }

    /// `INFO server` of every server that holds our data: one for a single
    /// server, one per master of a cluster, as `(node, info)`. The masters
    /// are those `CLUSTER SLOTS` names as slot owners, each asked by
    /// address: a master that does not answer fails the call, so a partial
    /// view never passes for a changed data set.
    async fn infos(&mut self) -> RedisResult<Vec<(ScanNode, String)>> {
        let mut info = redis::cmd("INFO");
        info.arg("server");
        match self {
            Conn::Single(c) => Ok(vec![(ScanNode::Any, info.query_async(c).await?)]),
            Conn::Cluster(c) => {
                let mut slots = redis::cmd("CLUSTER");
                slots.arg("SLOTS");
                let v = c
                    .route_command(
                        slots,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                    )
                    .await?;
                let mut masters = slot_owners(&v).ok_or_else(|| {
                    RedisError::from((redis::ErrorKind::Parse, "CLUSTER SLOTS reply"))
                })?;
                masters.sort();
                masters.dedup();
                let mut out = Vec::with_capacity(masters.len());
                for (host, port) in masters {
                    let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port,
                    });
                    let text: String =
                        redis::from_redis_value(c.route_command(info.clone(), route).await?)?;
                    out.push((ScanNode::Master { host, port }, text));
                }
                Ok(out)
            }
        }
    }

    /// What identifies the data set we write to: the `run_id` of the one
    /// server, or the sorted `run_id`s of every cluster master joined with
    /// commas. It changes when any of them restarts (possibly empty) or
    /// is replaced, so a resync follows.
    pub(crate) async fn run_ids(&mut self) -> RedisResult<String> {
        let mut ids: Vec<String> = self
            .infos()
            .await?
            .iter()
            .map(|(_, info)| {
                info.lines()
                    .find_map(|l| l.strip_prefix("run_id:"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default()
            })
            .collect();
        ids.sort();
        Ok(ids.join(","))
    }

    /// The servers a SCAN must visit to see every key.
    pub(crate) async fn scan_nodes(&mut self) -> RedisResult<Vec<ScanNode>> {
        match self {
            Conn::Single(_) => Ok(vec![ScanNode::Any]),
            Conn::Cluster(_) => {
                let mut nodes: Vec<ScanNode> =
                    self.infos().await?.into_iter().map(|(n, _)| n).collect();
                nodes.sort();
                Ok(nodes)
            }
        }
    }

    /// One SCAN step on `node`: `(next cursor, keys)`.
    pub(crate) async fn scan(
        &mut self,
        node: &ScanNode,
        cursor: u64,
        pattern: &[u8],
        count: usize,
    ) -> RedisResult<(u64, Vec<Vec<u8>>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(count);
        match (self, node) {
            (Conn::Single(c), _) => cmd.query_async(c).await,
            (Conn::Cluster(c), ScanNode::Master { host, port }) => {
                let v = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        }),
                    )
                    .await?;
                redis::from_redis_value(v).map_err(Into::into)
            }
            (Conn::Cluster(_), ScanNode::Any) => Err(RedisError::from((
                redis::ErrorKind::Client,
                "a cluster SCAN needs a master",
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_owners_parse() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let range = |lo, hi, host: &str, port| {
            Value::Array(vec![
                Value::Int(lo),
                Value::Int(hi),
                Value::Array(vec![b(host), Value::Int(port), b("id")]),
                Value::Array(vec![b("10.0.0.9"), Value::Int(7009), b("replica")]),
            ])
        };
        let v = Value::Array(vec![
            range(0, 5460, "10.0.0.1", 7000),
            range(5461, 10922, "10.0.0.2", 7000),
        ]);
        assert_eq!(
            slot_owners(&v),
            Some(vec![("10.0.0.1".into(), 7000), ("10.0.0.2".into(), 7000)])
        );
        assert_eq!(slot_owners(&b("nope")), None);
    }
}
