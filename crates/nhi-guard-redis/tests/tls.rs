//! `rediss://` against a real TLS-only `redis-server` with a password, and a
//! TLS-only Redis Cluster of three primaries (cluster bus over TLS too), whose
//! certificates come from a CA made in the test. Skipped (with a message) when the
//! binaries are missing, unless `CI=true`.

use std::sync::Arc;
use std::time::Duration;

use nhi_guard_ratelimit::store::{CheckMode, Quota, RateLimitCheck, RateLimitStore};
use nhi_guard_redis::testing::{RedisCluster, RedisServer, ServerOptions, TlsFiles};
use nhi_guard_redis::{RedisStore, RedisTarget};
use nhi_guard_testkit::temp::TempDir;
use nhi_guard_testkit::tls::TestCa;

const PASSWORD: &str = "tls-test-s3cret";

fn check(client: &str) -> Arc<[RateLimitCheck]> {
    Arc::from(vec![RateLimitCheck {
        policy: Arc::from("per-client"),
        key: client.as_bytes().into(),
        qualifier: Box::from(&b""[..]),
        quota: Quota::per_minute(1).expect("q").with_burst(2).expect("q"),
        cost: 1,
    }])
}

async fn connect(target: RedisTarget) -> Result<RedisStore, nhi_guard_redis::ConfigError> {
    RedisStore::builder(target)
        .timeout(Duration::from_secs(2))
        .connect()
        .await
}

/// A server certificate of a new test CA, written to `dir`; the CA's file.
fn certificates(dir: &TempDir) -> (TlsFiles, std::path::PathBuf) {
    let [cert, key, ca] = TestCa::new("nhi-guard redis test CA").write_server_files(dir);
    (
        TlsFiles {
            cert,
            key,
            ca: ca.clone(),
        },
        ca,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_ca_file_and_a_password() {
    let dir = TempDir::unique("redis-tls");
    let (files, ca_file) = certificates(&dir);
    let Some(server) = RedisServer::start_with(ServerOptions {
        tls: Some(files),
        password: Some(PASSWORD.into()),
        cluster: false,
    }) else {
        return;
    };
    let url = server.url();
    assert!(url.starts_with("rediss://"), "{url}");

    // Trusting the test CA: connected over TLS, authenticated, and limiting.
    let target = RedisTarget::parse(&url)
        .expect("url")
        .ca_file(&ca_file)
        .expect("ca file");
    assert!(!format!("{target:?}").contains(PASSWORD));
    let store = connect(target).await.expect("rediss:// with the CA");
    for want in [true, true, false] {
        let d = store
            .check(check("tls-client"), CheckMode::Consume)
            .await
            .expect("checked");
        assert_eq!(d[0].allowed, want);
    }
    assert_eq!(store.failures(), 0);

    // The platform's trust anchors do not know the test CA: refused, and the
    // error shows neither the password nor a panic.
    let err = connect(RedisTarget::parse(&url).expect("url"))
        .await
        .expect_err("untrusted certificate");
    assert_eq!(err.field(), "url");
    assert!(!err.to_string().contains(PASSWORD), "{err}");

    // A wrong password is refused.
    let wrong = url.replace(PASSWORD, "not-the-password");
    let err = connect(
        RedisTarget::parse(&wrong)
            .expect("url")
            .ca_file(&ca_file)
            .expect("ca"),
    )
    .await
    .expect_err("wrong password");
    assert!(!err.to_string().contains("not-the-password"), "{err}");

    // Plain TCP to the TLS-only port does not get through.
    let plain = url.replacen("rediss://", "redis://", 1);
    assert!(connect(RedisTarget::parse(&plain).expect("url")).await.is_err());
    // TLS without the password connects, and Redis refuses its commands
    // (NOAUTH): the failure policy (fail closed) decides.
    let anonymous = format!("rediss://127.0.0.1:{}", server.port());
    let store = connect(
        RedisTarget::parse(&anonymous)
            .expect("url")
            .ca_file(&ca_file)
            .expect("ca"),
    )
    .await
    .expect("TLS without AUTH connects");
    assert!(store.check(check("anonymous"), CheckMode::Consume).await.is_err());
    assert_eq!(store.failures(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_only_cluster_with_a_password() {
    let dir = TempDir::unique("redis-tls-cluster");
    let (files, ca_file) = certificates(&dir);
    let Some(cluster) = RedisCluster::start_with(
        3,
        ServerOptions {
            tls: Some(files),
            password: Some(PASSWORD.into()),
            cluster: true,
        },
    ) else {
        return;
    };
    let urls = cluster.urls();
    assert!(urls.split(',').all(|u| u.starts_with("rediss://")), "{urls}");
    let target = RedisTarget::parse(&urls)
        .expect("urls")
        .ca_file(&ca_file)
        .expect("ca file");
    assert!(target.is_cluster() && target.is_tls());
    let store = connect(target).await.expect("a TLS cluster with the CA");
    // Clients whose keys are spread over the slots: each gets its burst of 2.
    for i in 0..12 {
        let client = format!("tls-cluster-client-{i}");
        for want in [true, true, false] {
            let d = store
                .check(check(&client), CheckMode::Consume)
                .await
                .expect("checked");
            assert_eq!(d[0].allowed, want, "{client}");
        }
    }
    assert_eq!(store.failures(), 0);
    // Without the CA the seeds' certificates are not trusted.
    let err = connect(RedisTarget::parse(&urls).expect("urls"))
        .await
        .expect_err("untrusted cluster");
    assert!(!err.to_string().contains(PASSWORD), "{err}");
}
