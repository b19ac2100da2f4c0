//! A throw-away `redis-server` for tests and benchmarks: started on a free loopback
//! port, without persistence, stopped on drop; also TLS-only and password-protected
//! servers ([`RedisServer::start_with`]) and a Redis Cluster of several primaries
//! ([`RedisCluster`]).
//!
//! When the binary cannot be found, [`RedisServer::start`] prints why and returns
//! `None` so the test can skip, except under `CI=true`, where a missing server is a
//! failure. The binary is `$NHI_GUARD_REDIS_SERVER`, else `redis-server` on `PATH`,
//! else `/usr/bin/redis-server`.
//!
//! ```no_run
//! # async fn run() {
//! use nhi_guard_redis::testing::RedisServer;
//!
//! let Some(server) = RedisServer::start() else { return }; // skipped, with a message
//! let store = nhi_guard_redis::RedisStore::builder(server.url()).connect().await.unwrap();
//! # let _ = store; }
//! ```

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `redis-server`, killed when dropped.
pub struct RedisServer {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    options: ServerOptions,
    /// The server's working directory (a cluster node's `nodes.conf`), removed
    /// when dropped.
    dir: Option<PathBuf>,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("tls", &self.options.tls.is_some())
            .field("cluster", &self.options.cluster)
            .finish_non_exhaustive()
    }
}

/// How to start a test server: see [`RedisServer::start_with`].
#[derive(Clone, Default)]
pub struct ServerOptions {
    /// Serve TLS only (no plain port), with this certificate and key (PEM files).
    pub tls: Option<TlsFiles>,
    /// `requirepass`: clients must authenticate (the `default` user).
    pub password: Option<String>,
    /// A Redis Cluster node (`--cluster-enabled yes`); see [`RedisCluster`].
    pub cluster: bool,
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("tls", &self.tls)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("cluster", &self.cluster)
            .finish()
    }
}

/// A server's TLS certificate and key, and the CA that signed it, PEM files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
    /// The CA certificate: what a cluster's nodes check each other against.
    pub ca: PathBuf,
}

/// A free loopback port whose cluster bus port (port + 10000) is free too.
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// `None` after saying why the test is skipped; a failure under `CI=true`.
fn missing<T>(what: &str) -> Option<T> {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} is required in CI (install redis-server, or set NHI_GUARD_REDIS_SERVER)"
    );
    eprintln!("SKIPPED: {what} not found; install redis-server to run the Redis tests");
    None
}

fn find_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NHI_GUARD_REDIS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let fallback = PathBuf::from("/usr/bin/redis-server");
        fallback.is_file().then_some(fallback)
    })
}

impl RedisServer {
    /// Starts a server on a free loopback port, or returns `None` (after printing
    /// `SKIPPED: ...`) when no binary is found outside CI.
    ///
    /// # Panics
    /// When the binary is missing under `CI=true`, or the server does not accept
    /// connections within five seconds.
    pub fn start() -> Option<Self> {
        Self::start_with(ServerOptions::default())
    }

    /// [`RedisServer::start`] with TLS only, a password or as a cluster node.
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    pub fn start_with(options: ServerOptions) -> Option<Self> {
        let Some(binary) = find_binary() else {
            return missing("redis-server");
        };
        let port = free_port();
        let dir = options.cluster.then(|| {
            let dir = std::env::temp_dir().join(format!("nhi-guard-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("a node directory");
            dir
        });
        let mut server = Self {
            binary,
            child: None,
            port,
            options,
            dir,
        };
        server.restart();
        Some(server)
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://` for a TLS server; with the
    /// password when there is one.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.options.password {
            Some(password) => format!("{scheme}://:{password}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// The binary this server runs (`redis-cli` is looked for next to it).
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// `redis-cli` next to the server, else on `PATH`.
    fn cli(&self) -> PathBuf {
        let cli = self.binary.with_file_name("redis-cli");
        if cli.is_file() {
            cli
        } else {
            PathBuf::from("redis-cli")
        }
    }

    /// What `redis-cli` needs to talk to this server. The set-up tool does not
    /// check the certificate (`--insecure`); the clients under test do.
    fn cli_auth(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.options.tls.is_some() {
            args.extend(["--tls".to_owned(), "--insecure".to_owned()]);
        }
        if let Some(password) = &self.options.password {
            args.extend(["-a".to_owned(), password.clone(), "--no-auth-warning".to_owned()]);
        }
        args
    }

    /// Stops the server (clients see it go down).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty), waiting until it accepts.
    ///
    /// # Panics
    /// When it cannot be spawned or does not accept connections within five seconds.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let mut command = Command::new(&self.binary);
        command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        match &self.options.tls {
            Some(tls) => {
                command
                    .args(["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no"])
                    .arg("--tls-cert-file")
                    .arg(&tls.cert)
                    .arg("--tls-key-file")
                    .arg(&tls.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca);
                if self.options.cluster {
                    command.args(["--tls-cluster", "yes", "--tls-replication", "yes"]);
                }
            }
            None => {
                command.args(["--port", &port]);
            }
        }
        if let Some(password) = &self.options.password {
            command.args(["--requirepass", password]);
        }
        if let Some(dir) = &self.dir {
            // The node keeps its id and slots in nodes.conf across a restart.
            command
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-require-full-coverage",
                    "no",
                ])
                .arg("--dir")
                .arg(dir);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        for _ in 0..200 {
            if TcpStream::connect(addr).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        self.kill();
        panic!("redis-server did not start on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A Redis Cluster of primaries on loopback ports (no replicas), made with
/// `redis-cli --cluster create`; its nodes are stopped and their directories
/// removed when it is dropped. A node that is [killed](RedisCluster::kill) leaves
/// its slots unserved (`cluster-require-full-coverage no`: the others go on) until
/// it is [restarted](RedisCluster::restart) with its old identity and slots.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `primaries` nodes (at least 3) and creates the cluster, or returns
    /// `None` (after printing `SKIPPED: ...`) when `redis-server` or `redis-cli`
    /// is missing outside CI.
    ///
    /// # Panics
    /// When a binary is missing under `CI=true`, or the cluster does not form
    /// within ten seconds.
    pub fn start(primaries: usize) -> Option<Self> {
        Self::start_with(primaries, ServerOptions::default())
    }

    /// [`RedisCluster::start`] with every node TLS-only (`--tls-cluster yes`: the
    /// cluster bus too) and/or password-protected, as `options` says.
    ///
    /// # Panics
    /// As [`RedisCluster::start`].
    pub fn start_with(primaries: usize, options: ServerOptions) -> Option<Self> {
        let options = ServerOptions {
            cluster: true,
            ..options
        };
        let nodes: Vec<RedisServer> = (0..primaries.max(3))
            .map(|_| RedisServer::start_with(options.clone()))
            .collect::<Option<_>>()?;
        let cli = nodes[0].cli();
        let mut create = Command::new(&cli);
        create.args(nodes[0].cli_auth()).args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        let child = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut child) = child else {
            return missing("redis-cli");
        };
        // `--cluster create` waits for the nodes to meet; bounded, never a hang.
        let mut status = None;
        for _ in 0..400 {
            status = child.try_wait().expect("redis-cli status");
            if status.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        match status {
            Some(s) if s.success() => {}
            Some(s) => panic!("redis-cli --cluster create failed: {s}"),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-cli --cluster create did not finish within ten seconds");
            }
        }
        let cluster = Self { nodes };
        cluster.wait_until_ok(&cli);
        Some(cluster)
    }

    fn wait_until_ok(&self, cli: &Path) {
        for _ in 0..400 {
            let ok = self.nodes.iter().all(|node| {
                Command::new(cli)
                    .args(node.cli_auth())
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
                    .output()
                    .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok"))
            });
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("the Redis Cluster did not become ready");
    }

    /// The nodes' URLs, comma-separated: what `NHI_GUARD_REDIS_URL` takes.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Stops node `i` (a primary: its slots go unserved).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts node `i` again with its identity and slots, and waits until the
    /// cluster is whole.
    ///
    /// # Panics
    /// As [`RedisCluster::start`].
    pub fn restart(&mut self, i: usize) {
        self.nodes[i].restart();
        let cli = self.nodes[0].cli();
        self.wait_until_ok(&cli);
    }
}
