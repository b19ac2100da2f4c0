//! The gateway's configuration file (`NHI_GUARD_CONFIG`): the documented example
//! file builds the same route table as the code, variables override the file,
//! every error names the file, line and key, and a stack configured from a file
//! refuses and limits as the file says.

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

use std::collections::BTreeSet;

use common::{Gateway, client_toml, get, http_client, lookup};
use http::StatusCode;
use nhi_guard::core::registry::ApiKeyHash;
use nhi_guard::core::route::Routes;
use nhi_guard::ratelimit::RateGroup;
use nhi_guard::risk::RouteRisk;
use nhi_guard::scope::Require;
use nhi_guard_testkit::temp::TempDir;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gateway/nhi-guard.toml");

/// Every (method, pattern) of a table with its attributes, comparable.
fn described(routes: &Routes) -> BTreeSet<String> {
    routes
        .routes()
        .iter()
        .flat_map(|r| {
            let methods: Vec<String> = match r.methods().as_slice() {
                None => vec!["*".into()],
                Some(ms) => ms.iter().map(ToString::to_string).collect(),
            };
            let attrs = format!(
                "require={:?} risk={:?} group={:?}",
                r.attr::<Require>().map(ToString::to_string),
                r.attr::<RouteRisk>(),
                r.attr::<RateGroup>().map(RateGroup::name)
            );
            methods
                .into_iter()
                .map(move |m| format!("{m} {} {attrs}", r.pattern()))
        })
        .collect()
}

fn load(vars: &[(&str, &str)]) -> Result<config::Config, String> {
    config::from_lookup(lookup(vars))
}

#[test]
fn the_example_file_is_the_demo_configuration() {
    let config = load(&[("NHI_GUARD_CONFIG", EXAMPLE)]).expect("the example file loads");
    let from_file = config.routes.as_ref().expect("the file has a route table");
    assert_eq!(described(from_file), described(&guard::routes()));
    let defaults = load(&[]).expect("defaults");
    assert_eq!(config.listen, defaults.listen);
    assert_eq!(config.audience, defaults.audience);
    assert_eq!(config.address_limit, defaults.address_limit);
    assert_eq!(config.ipv6_prefix, defaults.ipv6_prefix);
    assert_eq!(config.shutdown_grace, defaults.shutdown_grace);
    assert!(config.rate_groups.is_empty());
}

/// Writes `text` as a configuration file and loads it with `vars`.
fn load_text(text: &str, vars: &[(&str, &str)]) -> Result<config::Config, String> {
    let dir = TempDir::unique("nhi-guard-config-file");
    let path = dir.join("nhi-guard.toml");
    std::fs::write(&path, text).expect("write");
    let path = path.to_str().expect("utf-8").to_owned();
    let mut all = vec![("NHI_GUARD_CONFIG", path.as_str())];
    all.extend_from_slice(vars);
    load(&all).map_err(|e| e.replace(&path, "FILE"))
}

#[test]
fn variables_override_the_file() {
    let text = "listen = \"127.0.0.1:9999\"\naudience = \"from-file\"\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.1\"]\n";
    let config = load_text(text, &[("NHI_GUARD_LISTEN", "127.0.0.1:7777")]).expect("loads");
    assert_eq!(config.listen.to_string(), "127.0.0.1:7777", "the variable wins");
    assert_eq!(config.audience, "from-file", "the file fills the rest");
    assert_eq!(config.trusted_proxies.len(), 2);
    assert!(config.routes.is_none(), "no [[route]]: the demo routes");
}

#[test]
fn every_error_names_the_line_and_the_key() {
    let cases: &[(&str, &str)] = &[
        // An unknown top-level key.
        (
            "audience = \"a\"\nlisten_addr = \"127.0.0.1:1\"\n",
            "FILE:2: unknown key `listen_addr`",
        ),
        // A value the variable would refuse, from the file.
        (
            "\n\nipv6_prefix = 200\n",
            "FILE:3: ipv6_prefix: NHI_GUARD_IPV6_PREFIX",
        ),
        // Not TOML.
        ("listen = \n", "FILE:1:"),
        // An unknown field of a route.
        (
            "[[route]]\nmethod = \"GET\"\npath = \"/a\"\nscopes = [\"x\"]\n",
            "unknown field `scopes`",
        ),
        // A bad pattern.
        (
            "[[route]]\nmethod = \"GET\"\npath = \"/a/{id\"\n",
            "route[FILE:1]",
        ),
        // Two routes a request could match equally, the second named.
        (
            "[[route]]\nmethod = \"GET\"\npath = \"/a/{x}\"\n\n[[route]]\nmethod = [\"GET\", \"PUT\"]\npath = \"/a/{y}\"\n",
            "route[FILE:5]",
        ),
        // A requirement that is none.
        (
            "[[route]]\nmethod = \"GET\"\npath = \"/a\"\nrequire = {}\n",
            "exactly one of",
        ),
        // A scope with a space in it.
        (
            "[[route]]\nmethod = \"GET\"\npath = \"/a\"\nrequire = { all_of = [\"a b\"] }\n",
            "is not one scope",
        ),
        // A risk weight out of range.
        (
            "[[route]]\nmethod = \"GET\"\npath = \"/a\"\nrisk = { sensitivity = 99.0 }\n",
            "sensitivity",
        ),
        // A method that is not one.
        (
            "[[route]]\nmethod = \"GET POST\"\npath = \"/a\"\n",
            "is not an HTTP method",
        ),
        // A group quota with two rates.
        (
            "\n[[rate_group]]\nname = \"g\"\nper_second = 1\nper_minute = 2\n",
            "FILE:2: rate_group `g`",
        ),
    ];
    for (text, expected) in cases {
        let err = load_text(text, &[]).expect_err(text);
        assert!(
            err.contains(expected),
            "{text:?}: {err:?} should contain {expected:?}"
        );
    }
    // A URL that may carry a password is never echoed.
    let err = load_text("\nredis_url = \"http://ops:hunter2-secret@10.0.0.5\"\n", &[]).expect_err("scheme");
    assert!(err.starts_with("FILE:2: redis_url: NHI_GUARD_REDIS_URL"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    // A route's error from the parser names its line too.
    let err = load_text(
        "[[route]]\nmethod = \"GET\"\npath = \"/a\"\nrisk = { group = 3 }\n",
        &[],
    )
    .expect_err("bad type");
    assert!(err.starts_with("FILE:4:"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_configured_by_a_file_refuses_and_limits_as_it_says() {
    const KEY: &str = "nhik_config_file_reader_0001";
    let dir = TempDir::unique("nhi-guard-config-stack");
    let clients = dir.join("clients.toml");
    let key = format!("api_keys = [\"{}\"]", ApiKeyHash::of_key(KEY.as_bytes()));
    std::fs::write(&clients, client_toml("file-reader", &[key])).expect("inventory");
    let file = dir.join("nhi-guard.toml");
    std::fs::write(
        &file,
        format!(
            "clients = {:?}\n\n[[rate_group]]\nname = \"orders\"\nper_minute = 2\n\n\
             [[route]]\nmethod = \"GET\"\npath = \"/orders\"\nrequire = {{ all_of = [\"orders:read\"] }}\n\
             rate_group = \"orders\"\n\n\
             [[route]]\nmethod = \"GET\"\npath = \"/healthz\"\nrequire = {{ public = true }}\n",
            clients.to_str().expect("utf-8")
        ),
    )
    .expect("config");
    let gw = Gateway::start(&[("NHI_GUARD_CONFIG", file.to_str().expect("utf-8"))])
        .await
        .expect("gateway");
    let client = http_client(None);
    let orders = format!("{}/orders", gw.base());
    let statuses = [
        get(&client, &orders, &[("x-api-key", KEY)]).await.status,
        get(&client, &orders, &[("x-api-key", KEY)]).await.status,
        get(&client, &orders, &[("x-api-key", KEY)]).await.status,
    ];
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS],
        "the file's group quota"
    );
    // The demo's other routes are not in the file's table: refused.
    let r = get(
        &client,
        &format!("{}/inventory/sku-1", gw.base()),
        &[("x-api-key", KEY)],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = get(&client, &format!("{}/healthz", gw.base()), &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_of_a_file_configured_gateway_is_authenticated_with_its_key() {
    let dir = TempDir::unique("nhi-guard-config-audit-key");
    let key = dir.join("audit.key");
    std::fs::write(&key, [b'k'; 48]).expect("key");
    let signing = dir.join("audit-signing.pem");
    let signer = nhi_guard::audit::CheckpointSigner::generate().expect("key pair");
    std::fs::write(&signing, signer.to_pkcs8_pem().expect("pem")).expect("signing key");
    let public = signer.public_key();
    let log = dir.join("audit.jsonl");
    let file = dir.join("nhi-guard.toml");
    std::fs::write(
        &file,
        format!(
            "audit_log = {:?}\naudit_key_file = {:?}\naudit_signing_key_file = {:?}\n",
            log.to_str().expect("utf-8"),
            key.to_str().expect("utf-8"),
            signing.to_str().expect("utf-8")
        ),
    )
    .expect("config");
    let gw = Gateway::start(&[("NHI_GUARD_CONFIG", file.to_str().expect("utf-8"))])
        .await
        .expect("gateway");
    let r = get(&http_client(None), &format!("{}/healthz", gw.base()), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(gw.finish().await.len(), 1);
    let with = |bytes: &[u8]| nhi_guard::audit::VerifyOptions {
        key: Some(nhi_guard::audit::CheckpointKey::new(bytes.to_vec()).expect("key")),
        ..Default::default()
    };
    let report = nhi_guard::audit::verify_file_with(&log, &with(&[b'k'; 48])).expect("readable");
    assert!(report.is_sealed(), "{report}");
    let report = nhi_guard::audit::verify_file_with(&log, &with(&[b'z'; 48])).expect("readable");
    assert_eq!(
        report.first_break.map(|b| b.kind),
        Some(nhi_guard::audit::BreakKind::Unauthenticated)
    );
    // Signed too: the public key alone verifies it, another one does not.
    let signed = |key| nhi_guard::audit::VerifyOptions {
        public_key: Some(key),
        ..Default::default()
    };
    let report = nhi_guard::audit::verify_file_with(&log, &signed(public)).expect("readable");
    assert!(report.is_sealed(), "{report}");
    let other = nhi_guard::audit::CheckpointSigner::generate()
        .expect("key pair")
        .public_key();
    let report = nhi_guard::audit::verify_file_with(&log, &signed(other)).expect("readable");
    assert_eq!(
        report.first_break.map(|b| b.kind),
        Some(nhi_guard::audit::BreakKind::Unauthenticated)
    );
}
