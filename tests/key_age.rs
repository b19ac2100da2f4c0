//! API-key age and rotation through the demo gateway over HTTP: an inventory file
//! with `[keys] max_age_days`, a tier's own `max_key_age_days` and dated keys; a
//! key older than its maximum is refused (401 `api_key_expired`), a key past its rotation date still works and is
//! flagged in its audit record, an undated key is not limited.

#[path = "../examples/gateway/app.rs"]
#[allow(dead_code, unreachable_pub)]
mod app;
mod common;
#[path = "../examples/gateway/config.rs"]
#[allow(dead_code, unreachable_pub)]
mod config;
#[path = "../examples/gateway/guard.rs"]
#[allow(dead_code, unreachable_pub)]
mod guard;

use std::time::{Duration, SystemTime};

use common::{Gateway, client_toml, get, http_client};
use http::StatusCode;
use nhi_guard::core::registry::ApiKeyHash;
use nhi_guard::core::rfc3339;
use nhi_guard_testkit::temp::TempDir;

#[tokio::test]
async fn old_keys_are_refused_and_keys_due_for_rotation_flagged() {
    let dir = TempDir::unique("nhi-guard-key-age");
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let key = |k: &str| ApiKeyHash::of_key(k.as_bytes()).to_string();
    let entry = |k: &str, created: SystemTime, rotate_by: SystemTime| {
        format!(
            "api_keys = [{{ hash = \"{}\", created = \"{}\", rotate_by = \"{}\" }}]",
            key(k),
            rfc3339(created),
            rfc3339(rotate_by)
        )
    };
    let mut inventory = String::from(
        "[keys]\nmax_age_days = 90\n\n[tiers.partner]\nper_second = 50\nburst = 100\nmax_key_age_days = 30\n\n",
    );
    // 45 days old: inside the inventory's 90 days, past the partner tier's 30.
    inventory.push_str(&client_toml(
        "partner",
        &[
            entry("nhik_partner_key", now - day * 45, now + day),
            "tier = \"partner\"".to_owned(),
        ],
    ));
    inventory.push_str(&client_toml(
        "old",
        &[entry("nhik_old_key", now - day * 120, now + day)],
    ));
    inventory.push_str(&client_toml(
        "due",
        &[entry("nhik_due_key", now - day * 60, now - day)],
    ));
    inventory.push_str(&client_toml(
        "fresh",
        &[entry("nhik_fresh_key", now - day, now + day * 60)],
    ));
    inventory.push_str(&client_toml(
        "undated",
        &[format!("api_keys = [\"{}\"]", key("nhik_undated"))],
    ));
    let clients = dir.join("clients.toml");
    std::fs::write(&clients, inventory).expect("inventory");
    let audit = dir.join("audit.jsonl");
    let (clients, audit) = (clients.to_str().expect("path"), audit.to_str().expect("path"));
    let gw = Gateway::start(&[("NHI_GUARD_CLIENTS", clients), ("NHI_GUARD_AUDIT_LOG", audit)])
        .await
        .expect("the gateway starts");
    let client = http_client(None);
    let orders = |k: &'static str| {
        let (client, url) = (&client, format!("{}/orders", gw.base()));
        async move { get(client, &url, &[("x-api-key", k)]).await }
    };

    let r = orders("nhik_old_key").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert_eq!(r.body["reason"], "api_key_expired");
    assert!(
        r.header("www-authenticate").contains("invalid_token"),
        "{:?}",
        r.headers
    );
    assert!(
        r.body["detail"].as_str().is_some_and(|d| d.contains("rotate")),
        "{}",
        r.text
    );
    let r = orders("nhik_partner_key").await;
    assert_eq!(
        r.body["reason"], "api_key_expired",
        "the tier's own maximum: {}",
        r.text
    );
    for k in ["nhik_due_key", "nhik_fresh_key", "nhik_undated"] {
        assert_eq!(orders(k).await.status, StatusCode::OK, "{k}");
    }

    let records = gw.finish().await;
    let cred = |id: &str| {
        records
            .iter()
            .find(|r| r["unmapped"]["nhi_guard"]["client"]["id"] == id || r["actor"]["user"]["name"] == id)
            .map(|r| r["unmapped"]["nhi_guard"]["client"]["credential"].clone())
            .unwrap_or_else(|| panic!("no record of {id}"))
    };
    assert_eq!(cred("due")["rotation_due"], true, "{}", cred("due"));
    assert_eq!(cred("fresh")["rotation_due"], serde_json::Value::Null);
}
