//! A throw-away `redis-server` for tests and benchmarks: started on a free loopback
//! port, without persistence, stopped on drop.
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
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `redis-server`, killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
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
        let Some(binary) = find_binary() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "redis-server is required in CI (install it, or set NHI_GUARD_REDIS_SERVER)"
            );
            eprintln!("SKIPPED: redis-server not found; install it to run the Redis tests");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut server = Self {
            binary,
            child: None,
            port,
        };
        server.restart();
        Some(server)
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
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
        let child = Command::new(&self.binary)
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
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
    }
}
