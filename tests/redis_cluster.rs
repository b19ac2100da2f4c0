//! Replicas of the gateway sharing Redis as production runs it: two gateways on a
//! real three-primary Redis Cluster (started by the test on loopback ports), and a
//! gateway on a TLS-only `redis-server` with a password and a CA made in the test.
//! Skipped (with a message) when `redis-server` is missing, except in CI.

#[path = "../examples/gateway/app.rs"]
#[allow(dead_code, unreachable_pub)]
mod app;
#[path = "../examples/gateway/config.rs"]
#[allow(dead_code, unreachable_pub)]
mod config;
#[path = "../examples/gateway/guard.rs"]
#[allow(dead_code, unreachable_pub)]
mod guard;

mod common;

use std::path::Path;

use common::{Gateway, client_toml, get, http_client, lookup};
use http::StatusCode;
use nhi_guard::core::registry::ApiKeyHash;
use nhi_guard_redis::testing::{RedisCluster, RedisServer, ServerOptions, TlsFiles};
use nhi_guard_testkit::temp::TempDir;
use nhi_guard_testkit::tls::TestCa;

const CLIENTS: usize = 12;
const BURST: usize = 10;

fn key(i: usize) -> String {
    format!("nhik_cluster_client_{i:04}")
}

/// A configuration file: `CLIENTS` clients that may read `/orders`, where each
/// has a burst of `BURST` and one more per minute (so the test runs well inside
/// one emission interval, whatever the Redis server's clock does).
fn write_config(dir: &Path) -> String {
    let clients = dir.join("clients.toml");
    let inventory: String = (0..CLIENTS)
        .map(|i| {
            let hash = ApiKeyHash::of_key(key(i).as_bytes());
            client_toml(
                &format!("cluster-client-{i}"),
                &[format!("api_keys = [\"{hash}\"]")],
            )
        })
        .collect();
    std::fs::write(&clients, inventory).expect("inventory");
    let file = dir.join("nhi-guard.toml");
    std::fs::write(
        &file,
        format!(
            "clients = {:?}\n\n[[rate_group]]\nname = \"orders\"\nper_minute = 1\nburst = {BURST}\n\n\
             [[route]]\nmethod = \"GET\"\npath = \"/orders\"\nrequire = {{ all_of = [\"orders:read\"] }}\n\
             rate_group = \"orders\"\n",
            clients.to_str().expect("utf-8")
        ),
    )
    .expect("config");
    file.to_str().expect("utf-8").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_a_redis_cluster_share_limits_exactly() {
    let Some(cluster) = RedisCluster::start(3) else {
        return;
    };
    let dir = TempDir::unique("nhi-guard-cluster-gateways");
    let file = write_config(&dir);
    let urls = cluster.urls();
    // 300 requests at once on two cores in a debug build: give Redis a second
    // before the failure policy (each gateway's own counters) would decide.
    let vars = [
        ("NHI_GUARD_CONFIG", file.as_str()),
        ("NHI_GUARD_REDIS_URL", urls.as_str()),
        ("NHI_GUARD_REDIS_TIMEOUT_MS", "1000"),
    ];
    let a = Gateway::start(&vars).await.expect("gateway a");
    let b = Gateway::start(&vars).await.expect("gateway b");

    // Every client sends 25 requests at once, alternating between the gateways.
    let client = http_client(None);
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        for n in 0..25 {
            let url = format!("{}/orders", if (i + n) % 2 == 0 { a.base() } else { b.base() });
            let client = client.clone();
            tasks.push((
                i,
                tokio::spawn(async move { get(&client, &url, &[("x-api-key", &key(i))]).await }),
            ));
        }
    }
    let mut admitted = vec![0usize; CLIENTS];
    for (i, task) in tasks {
        let reply = task.await.expect("task");
        match reply.status {
            StatusCode::OK => admitted[i] += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("client {i}: unexpected {other}: {}", reply.text),
        }
    }
    let total: usize = admitted.iter().sum();
    println!(
        "cluster limit accuracy (two gateways): {total} admitted of {} allowed; per client {admitted:?}",
        CLIENTS * BURST
    );
    assert_eq!(admitted, vec![BURST; CLIENTS]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_on_rediss_with_a_ca_file_and_a_password() {
    const PASSWORD: &str = "gw-redis-s3cret";
    let dir = TempDir::unique("nhi-guard-redis-tls-gateway");
    let [cert, private, ca_file] = TestCa::new("nhi-guard gateway redis CA").write_server_files(&dir);
    let tls = TlsFiles {
        cert,
        key: private,
        ca: ca_file.clone(),
    };
    let Some(redis) = RedisServer::start_with(ServerOptions {
        tls: Some(tls),
        password: Some(PASSWORD.into()),
        cluster: false,
    }) else {
        return;
    };
    let url = redis.url();
    let file = write_config(&dir);
    let ca_path = ca_file.to_str().expect("utf-8");

    // The password is in no error and no Debug output of the configuration.
    let config = config::from_lookup(lookup(&[
        ("NHI_GUARD_REDIS_URL", url.as_str()),
        ("NHI_GUARD_REDIS_CA_FILE", ca_path),
    ]))
    .expect("config");
    assert!(!format!("{config:?}").contains(PASSWORD));
    let plain = url.replacen("rediss://", "redis://", 1);
    let err = config::from_lookup(lookup(&[
        ("NHI_GUARD_REDIS_URL", plain.as_str()),
        ("NHI_GUARD_REDIS_CA_FILE", ca_path),
    ]))
    .expect_err("a CA file for redis://");
    assert!(err.starts_with("NHI_GUARD_REDIS_CA_FILE"), "{err}");
    let err = config::from_lookup(lookup(&[(
        "NHI_GUARD_REDIS_URL",
        &format!("redis://127.0.0.1:1,http://:{PASSWORD}@127.0.0.1:2"),
    )]))
    .expect_err("a bad cluster node");
    assert!(err.contains("node 2") && !err.contains(PASSWORD), "{err}");
    // Without the CA file the platform's trust anchors refuse the test CA: the
    // gateway does not start, and says why without the password.
    let err = Gateway::start(&[
        ("NHI_GUARD_CONFIG", file.as_str()),
        ("NHI_GUARD_REDIS_URL", url.as_str()),
    ])
    .await
    .err()
    .expect("untrusted Redis certificate");
    assert!(err.starts_with("NHI_GUARD_REDIS_URL"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");

    // With it: the gateway's limits live in the TLS server.
    let gw = Gateway::start(&[
        ("NHI_GUARD_CONFIG", file.as_str()),
        ("NHI_GUARD_REDIS_URL", url.as_str()),
        ("NHI_GUARD_REDIS_CA_FILE", ca_path),
    ])
    .await
    .expect("gateway over rediss://");
    let client = http_client(None);
    let orders = format!("{}/orders", gw.base());
    let mut statuses = Vec::new();
    for _ in 0..=BURST {
        statuses.push(get(&client, &orders, &[("x-api-key", &key(0))]).await.status);
    }
    assert!(
        statuses[..BURST].iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(statuses[BURST], StatusCode::TOO_MANY_REQUESTS);
    // A second gateway on the same server sees the spent quota.
    let other = Gateway::start(&[
        ("NHI_GUARD_CONFIG", file.as_str()),
        ("NHI_GUARD_REDIS_URL", url.as_str()),
        ("NHI_GUARD_REDIS_CA_FILE", ca_path),
    ])
    .await
    .expect("second gateway");
    let r = get(
        &client,
        &format!("{}/orders", other.base()),
        &[("x-api-key", &key(0))],
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
}
