//! Where Redis runs and how to reach it: [`RedisTarget`] names one server or the
//! seed nodes of a Redis Cluster, over plain TCP or TLS, and every store of this
//! crate connects through it.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nhi_guard_core::config::ConfigError;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, TlsCertificates, Value,
};
use tokio::sync::OnceCell;

/// Where Redis is: one server (a primary, or a primary with replicas behind one
/// address), or a Redis Cluster reached through its seed nodes; over TCP or TLS.
///
/// Parsed from a URL or a comma-separated list of URLs:
///
/// - `redis://[user:password@]host:port[/db]`: one server;
/// - `rediss://…`: the same over TLS, checked against the platform's trust
///   anchors, or only against [`RedisTarget::ca_file`]'s when one is given;
/// - `redis://10.0.0.1:7000,redis://10.0.0.2:7000,…`: a Redis Cluster. The nodes
///   are seeds: the client learns the slot map from any of them, follows `MOVED`
///   and `ASK`, and reconnects as nodes come and go. A cluster known by one seed
///   is [`RedisTarget::cluster`].
///
/// The credentials in a URL never appear in `Debug` output or errors.
///
/// ```
/// use nhi_guard_redis::RedisTarget;
///
/// let one = RedisTarget::parse("rediss://svc:s3cret@cache.internal:6380").unwrap();
/// assert!(!one.is_cluster());
/// assert!(!format!("{one:?}").contains("s3cret"));
///
/// let cluster = RedisTarget::parse("redis://10.0.0.1:7000, redis://10.0.0.2:7000").unwrap();
/// assert!(cluster.is_cluster());
/// assert_eq!(cluster.nodes(), 2);
///
/// let err = RedisTarget::parse("http://cache:6379").unwrap_err();
/// assert_eq!(err.field(), "url");
/// ```
#[derive(Clone)]
pub struct RedisTarget {
    nodes: Vec<ConnectionInfo>,
    cluster: bool,
    root_cert: Option<Arc<[u8]>>,
    /// The nodes as given, with any password replaced.
    redacted: Arc<str>,
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTarget")
            .field("nodes", &self.redacted)
            .field("cluster", &self.cluster)
            .field("ca_file", &self.root_cert.is_some())
            .finish()
    }
}

impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// The URL with any credentials replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

impl RedisTarget {
    /// Parses one URL, or a comma-separated list of cluster seed URLs (see the
    /// type's documentation).
    ///
    /// # Errors
    /// An empty list, a URL that is not `redis://`, `rediss://` or (one server
    /// only) `unix://`, or a cluster mixing TLS and plain nodes; field `url`. The
    /// message names the node by position, never its credentials.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let urls: Vec<&str> = spec.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        if urls.is_empty() {
            return Err(ConfigError::new("redis", "url", "no Redis URL given"));
        }
        let cluster = urls.len() > 1;
        let mut nodes = Vec::with_capacity(urls.len());
        for (i, url) in urls.iter().enumerate() {
            let which = if cluster {
                format!("node {}", i + 1)
            } else {
                String::from("the URL")
            };
            if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://")) {
                return Err(ConfigError::new(
                    "redis",
                    "url",
                    format!("{which} must start with redis://, rediss:// or unix://"),
                ));
            }
            let info = url.into_connection_info().map_err(|e| {
                ConfigError::new(
                    "redis",
                    "url",
                    format!("{which} is not a Redis URL ({:?})", e.kind()),
                )
            })?;
            nodes.push(info);
        }
        let target = Self {
            nodes,
            cluster,
            root_cert: None,
            redacted: Arc::from(urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(",")),
        };
        target.check_cluster()?;
        Ok(target)
    }

    /// Treats the target as a Redis Cluster even when one seed is given.
    ///
    /// # Errors
    /// A `unix://` node (a cluster is reached over TCP).
    pub fn cluster(mut self) -> Result<Self, ConfigError> {
        self.cluster = true;
        self.check_cluster()?;
        Ok(self)
    }

    fn check_cluster(&self) -> Result<(), ConfigError> {
        if !self.cluster {
            return Ok(());
        }
        let tls = |n: &ConnectionInfo| matches!(n.addr(), ConnectionAddr::TcpTls { .. });
        if self
            .nodes
            .iter()
            .any(|n| matches!(n.addr(), ConnectionAddr::Unix(_)))
        {
            return Err(ConfigError::new(
                "redis",
                "url",
                "a cluster node cannot be unix://",
            ));
        }
        if self.nodes.iter().any(tls) && !self.nodes.iter().all(tls) {
            return Err(ConfigError::new(
                "redis",
                "url",
                "cluster nodes must all be rediss:// or all redis://",
            ));
        }
        Ok(())
    }

    /// Trusts only the CA certificates (PEM) in `path` for `rediss://`, instead
    /// of the platform's trust anchors.
    ///
    /// # Errors
    /// The file cannot be read or holds no PEM certificate (field `ca_file`); the
    /// target is not `rediss://` (field `url`).
    pub fn ca_file(self, path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| {
            ConfigError::new("redis", "ca_file", format!("cannot read {}: {e}", path.display()))
        })?;
        self.ca_pem(pem)
    }

    /// Trusts only the CA certificates in `pem` for `rediss://` (see
    /// [`RedisTarget::ca_file`]).
    ///
    /// # Errors
    /// As [`RedisTarget::ca_file`].
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Result<Self, ConfigError> {
        let pem = pem.into();
        if !self.is_tls() {
            return Err(ConfigError::new(
                "redis",
                "url",
                "a CA file applies to rediss:// URLs only",
            ));
        }
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(ConfigError::new("redis", "ca_file", "holds no PEM certificate"));
        }
        self.root_cert = Some(Arc::from(pem));
        Ok(self)
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// Whether the nodes are reached over TLS (`rediss://`).
    pub fn is_tls(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| matches!(n.addr(), ConnectionAddr::TcpTls { .. }))
    }

    /// How many nodes were given.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    fn certificates(&self) -> Option<TlsCertificates> {
        self.root_cert.as_ref().map(|pem| TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.to_vec()),
        })
    }

    /// One client per node, for the connections a cluster client does not make
    /// (publish/subscribe listens on one node: Cluster forwards every `PUBLISH`
    /// to all of them).
    pub(crate) fn node_clients(&self) -> redis::RedisResult<Vec<redis::Client>> {
        self.nodes
            .iter()
            .map(|info| match self.certificates() {
                Some(certs) => redis::Client::build_with_tls(info.clone(), certs),
                None => redis::Client::open(info.clone()),
            })
            .collect()
    }

    fn cluster_client(&self, timeouts: &Timeouts) -> redis::RedisResult<ClusterClient> {
        let mut builder = ClusterClient::builder(self.nodes.clone())
            .connection_timeout(timeouts.connect)
            .response_timeout(timeouts.response)
            .retries(timeouts.retries)
            .min_retry_wait(10)
            .max_retry_wait(u64::try_from(timeouts.max_delay.as_millis()).unwrap_or(u64::MAX));
        if let Some(certs) = self.certificates() {
            builder = builder.certs(certs);
        }
        builder.build()
    }

    /// Connects now.
    pub(crate) async fn connect(&self, timeouts: Timeouts) -> redis::RedisResult<Conn> {
        if self.cluster {
            let conn = Conn::lazy_cluster(self.cluster_client(&timeouts)?);
            if let Conn::Cluster(lazy) = &conn {
                lazy.get().await?;
            }
            return Ok(conn);
        }
        let client = self.single_client()?;
        Ok(Conn::Single(
            ConnectionManager::new_with_config(client, timeouts.manager()).await?,
        ))
    }

    /// Starts connecting in the background and returns at once (inside a tokio
    /// runtime); a command waits for the connection, and retries it when the
    /// attempt failed.
    pub(crate) fn connect_lazy(&self, timeouts: Timeouts) -> redis::RedisResult<Conn> {
        if self.cluster {
            let conn = Conn::lazy_cluster(self.cluster_client(&timeouts)?);
            if let Conn::Cluster(lazy) = &conn {
                let lazy = Arc::clone(lazy);
                // Learning the slot map takes a round trip to every primary: begin
                // now rather than in the first request's time budget.
                tokio::spawn(async move { lazy.get().await.map(drop) });
            }
            return Ok(conn);
        }
        let client = self.single_client()?;
        Ok(Conn::Single(ConnectionManager::new_lazy_with_config(
            client,
            timeouts.manager(),
        )?))
    }

    fn single_client(&self) -> redis::RedisResult<redis::Client> {
        Ok(self.node_clients()?.swap_remove(0))
    }
}

/// Turns what users write into a [`RedisTarget`]: a `&str` or `String` (parsed
/// with [`RedisTarget::parse`]) or a target.
pub trait IntoRedisTarget {
    /// The target.
    ///
    /// # Errors
    /// As [`RedisTarget::parse`].
    fn into_redis_target(self) -> Result<RedisTarget, ConfigError>;
}

impl IntoRedisTarget for RedisTarget {
    fn into_redis_target(self) -> Result<RedisTarget, ConfigError> {
        Ok(self)
    }
}

impl IntoRedisTarget for &RedisTarget {
    fn into_redis_target(self) -> Result<RedisTarget, ConfigError> {
        Ok(self.clone())
    }
}

impl IntoRedisTarget for &str {
    fn into_redis_target(self) -> Result<RedisTarget, ConfigError> {
        RedisTarget::parse(self)
    }
}

impl IntoRedisTarget for String {
    fn into_redis_target(self) -> Result<RedisTarget, ConfigError> {
        RedisTarget::parse(&self)
    }
}

impl IntoRedisTarget for &String {
    fn into_redis_target(self) -> Result<RedisTarget, ConfigError> {
        RedisTarget::parse(self)
    }
}

/// How long connecting and each answer may take, and how hard to retry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    pub(crate) connect: Duration,
    pub(crate) response: Duration,
    pub(crate) retries: u32,
    pub(crate) max_delay: Duration,
}

impl Timeouts {
    fn manager(self) -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect))
            .set_response_timeout(Some(self.response))
            .set_number_of_retries(usize::try_from(self.retries).unwrap_or(usize::MAX))
            .set_max_delay(self.max_delay)
    }
}

/// A connection to one server (reconnecting by itself) or to a cluster (made on
/// first use, then following the cluster's slot map). Cheap to clone.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(Arc<LazyCluster>),
}

pub(crate) struct LazyCluster {
    client: ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

impl LazyCluster {
    /// The cluster connection, made now if it is not yet. A failed attempt is
    /// tried again by the next command.
    async fn get(&self) -> redis::RedisResult<ClusterConnection> {
        self.conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}

impl Conn {
    fn lazy_cluster(client: ClusterClient) -> Self {
        Self::Cluster(Arc::new(LazyCluster {
            client,
            conn: OnceCell::new(),
        }))
    }

    /// Whether keys must share a hash slot to be used in one script.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(lazy) => Box::pin(async move { lazy.get().await?.req_packed_command(cmd).await }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(lazy) => Box::pin(async move {
                lazy.get()
                    .await?
                    .req_packed_commands(pipeline, offset, count)
                    .await
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("redis://:hunter2@cache:6379/0"),
            "redis://***@cache:6379/0"
        );
        assert_eq!(
            redact_url("rediss://svc:p@ss@cache:6379"),
            "rediss://***@cache:6379"
        );
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn targets_parse_one_server_or_a_cluster_and_never_show_passwords() {
        let t = RedisTarget::parse("redis://:hunter2@127.0.0.1:6379").expect("one");
        assert!(!t.is_cluster() && !t.is_tls());
        for shown in [format!("{t:?}"), t.to_string()] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        let c = RedisTarget::parse("rediss://a:7000,,rediss://b:7001 ").expect("cluster");
        assert!(c.is_cluster() && c.is_tls());
        assert_eq!(c.nodes(), 2);
        assert!(
            RedisTarget::parse("redis://127.0.0.1:6379")
                .expect("one")
                .cluster()
                .expect("one seed")
                .is_cluster()
        );

        let err = |spec: &str| RedisTarget::parse(spec).expect_err(spec).to_string();
        assert!(err("").contains("no Redis URL"));
        assert!(err("redis://a:1,http://:pw@b:2").contains("node 2 must start with"));
        assert!(!err("redis://a:1,http://:pw@b:2").contains("pw"));
        assert!(err("redis://a:1,rediss://b:2").contains("all be rediss://"));
        assert!(err("unix:///tmp/r.sock,redis://a:1").contains("unix"));
    }

    #[test]
    fn a_ca_file_needs_tls_and_a_certificate() {
        let plain = RedisTarget::parse("redis://127.0.0.1:6379").expect("plain");
        assert_eq!(plain.ca_pem("x").expect_err("plain").field(), "url");
        let tls = RedisTarget::parse("rediss://127.0.0.1:6379").expect("tls");
        assert_eq!(tls.clone().ca_pem("not pem").expect_err("pem").field(), "ca_file");
        assert_eq!(
            tls.clone()
                .ca_file("/nonexistent/ca.pem")
                .expect_err("missing")
                .field(),
            "ca_file"
        );
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let t = tls.ca_pem(pem).expect("pem");
        assert!(format!("{t:?}").contains("ca_file: true"));
    }
}
