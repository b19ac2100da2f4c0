//! A real nginx for tests: started on free loopback ports with a configuration of
//! its own (every file it writes in a temporary directory), killed on drop. The
//! including test crate declares `mod common;` and this file as `common::nginx`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nhi_guard_testkit::temp::TempDir;

/// nginx on `PATH`, else /usr/sbin/nginx (Debian's place, outside a user's PATH).
pub(crate) fn nginx_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("nginx"));
    on_path
        .chain([PathBuf::from("/usr/sbin/nginx")])
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------
// nginx, started by the test and killed on drop.
// ---------------------------------------------------------------------------

/// One `server` of the nginx configuration, on a free loopback port.
pub(crate) enum Site<'a> {
    /// Proxies every path to `upstream` with `directives`.
    Proxy {
        upstream: SocketAddr,
        directives: &'a str,
    },
    /// A whole `server { ... }` block whose `listen 127.0.0.1:8000;` is replaced by
    /// the free port.
    Server(&'a str),
}

/// The `listen` directive a [`Site::Server`] block is written with.
pub(crate) const LISTEN_PLACEHOLDER: &str = "listen 127.0.0.1:8000;";

/// A single nginx process (`master_process off`) whose configuration, pid file,
/// logs and temporary directories live in a directory of its own. Killed on drop,
/// also when the test panics.
pub(crate) struct Nginx {
    child: Child,
    ports: Vec<u16>,
    dir: TempDir,
}

/// How a start attempt ended.
enum Started {
    Ready(Nginx),
    /// A port picked as free was taken before nginx bound it: pick others.
    PortTaken,
}

impl Nginx {
    pub(crate) async fn start(bin: &Path, sites: &[Site<'_>]) -> Self {
        // A port is picked free and released before nginx binds it; another
        // process could take it meanwhile, so a few fresh attempts.
        for _ in 0..3 {
            if let Started::Ready(nginx) = Self::try_start(bin, sites).await {
                return nginx;
            }
        }
        panic!("nginx could not bind free ports in three attempts");
    }

    async fn try_start(bin: &Path, sites: &[Site<'_>]) -> Started {
        let dir = TempDir::unique("nhi-guard-nginx");
        let listeners: Vec<std::net::TcpListener> = sites
            .iter()
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("port").port())
            .collect();
        drop(listeners);
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config(&dir, sites, &ports)).expect("nginx.conf");
        let stderr = std::fs::File::create(dir.join("stderr.log")).expect("stderr.log");
        let mut cmd = Command::new(bin);
        cmd.arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(format!("{}/", dir.display()));
        if supports_error_log_flag(bin) {
            // Without it nginx first opens its compiled-in error log
            // (/var/log/nginx/error.log), which a user may not write.
            cmd.arg("-e").arg(dir.join("error.log"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let mut nginx = Self { child, ports, dir };
        // nginx writes its pid file after binding every listening socket. The
        // bound is a safety net for a machine too loaded to start it at all, not a
        // timing assertion.
        for _ in 0..1500 {
            if let Some(status) = nginx.child.try_wait().expect("nginx status") {
                let logs = nginx.logs();
                if logs.contains("Address already in use") {
                    return Started::PortTaken;
                }
                panic!("nginx exited at start-up ({status}):\n{logs}");
            }
            if nginx.dir.join("nginx.pid").exists() && nginx.accepting().await {
                return Started::Ready(nginx);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("nginx did not accept connections within 30 s:\n{}", nginx.logs());
    }

    async fn accepting(&self) -> bool {
        for port in &self.ports {
            if tokio::net::TcpStream::connect(("127.0.0.1", *port))
                .await
                .is_err()
            {
                return false;
            }
        }
        true
    }

    /// nginx's error log and stderr, for failure messages.
    pub(crate) fn logs(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `http://127.0.0.1:PORT` of the `site`-th server.
    pub(crate) fn url(&self, site: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[site])
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal configuration: one process, no daemon, every path it writes inside
/// `dir`.
fn config(dir: &Path, sites: &[Site<'_>], ports: &[u16]) -> String {
    let d = dir.display();
    let servers: String = sites
        .iter()
        .zip(ports)
        .map(|(site, port)| match site {
            Site::Proxy { upstream, directives } => format!(
                "    server {{\n        listen 127.0.0.1:{port};\n        location / {{\n            \
                 proxy_pass http://{upstream};\n            {directives}\n        }}\n    }}\n"
            ),
            Site::Server(block) => {
                assert!(
                    block.contains(LISTEN_PLACEHOLDER),
                    "a server block listens on 127.0.0.1:8000"
                );
                format!(
                    "{}\n",
                    block.replace(LISTEN_PLACEHOLDER, &format!("listen 127.0.0.1:{port};"))
                )
            }
        })
        .collect();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid \"{d}/nginx.pid\";\n\
         error_log \"{d}/error.log\" notice;\nevents {{ worker_connections 256; }}\nhttp {{\n    \
         access_log \"{d}/access.log\";\n    client_body_temp_path \"{d}/client_body\";\n    \
         proxy_temp_path \"{d}/proxy\";\n    fastcgi_temp_path \"{d}/fastcgi\";\n    \
         uwsgi_temp_path \"{d}/uwsgi\";\n    scgi_temp_path \"{d}/scgi\";\n{servers}}}\n"
    )
}

/// Whether this nginx takes `-e` (1.19.5 and later): `nginx -v` prints
/// `nginx version: nginx/1.22.1` on stderr.
fn supports_error_log_flag(bin: &Path) -> bool {
    let Ok(out) = Command::new(bin).arg("-v").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stderr);
    let version: Option<Vec<u32>> = text
        .split_once("nginx/")
        .map(|(_, v)| v.split_whitespace().next().unwrap_or_default())
        .map(|v| v.split('.').filter_map(|n| n.parse().ok()).collect());
    version.is_some_and(|v| v >= vec![1, 19, 5])
}

// ---------------------------------------------------------------------------

/// `examples/authz_server/nginx.conf` with the authz server and the upstream at
/// these addresses (the file names them at their defaults).
pub(crate) fn documented_site(authz: SocketAddr, upstream: SocketAddr) -> String {
    let conf = include_str!("../../examples/authz_server/nginx.conf");
    let (authz_default, upstream_default) = ("server 127.0.0.1:8080;", "server 127.0.0.1:9000;");
    assert!(conf.contains(authz_default) && conf.contains(upstream_default));
    conf.replace(authz_default, &format!("server {authz};"))
        .replace(upstream_default, &format!("server {upstream};"))
}

/// The nginx binary, or `None` (after printing why) when `test` must be skipped:
/// nginx is missing, or the test's `clients` addresses (127.0.0.x, which must not
/// be the trusted proxy 127.0.0.1) cannot be bound.
///
/// # Panics
/// Under `CI=true` when something the test needs is missing.
pub(crate) fn prerequisites(test: &str, clients: &[&str]) -> Option<PathBuf> {
    let bound = clients
        .iter()
        .try_for_each(|ip| std::net::TcpListener::bind((*ip, 0)).map(drop));
    let missing = match (nginx_binary(), bound) {
        (Some(nginx), Ok(())) => return Some(nginx),
        (None, _) => {
            "nginx not found on PATH or at /usr/sbin/nginx (Debian: apt-get install nginx-light)".to_owned()
        }
        (_, Err(e)) => format!(
            "cannot bind {} (the test's clients must not be the trusted proxy 127.0.0.1): {e}",
            clients.join(", ")
        ),
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: {missing}; required under CI=true"
    );
    eprintln!("{test}: SKIPPED: {missing}");
    None
}
