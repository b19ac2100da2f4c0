//! What ships under `deploy/`: the Prometheus alerting rules pass `promtool check
//! rules` and their unit tests (`promtool test rules`), and the rules and the
//! Grafana dashboard name only metrics the guard records (so renaming one breaks
//! this test, not an operator's alerts).
//!
//! promtool (Debian's `prometheus` package) is looked up on `PATH`; without it the
//! promtool test is skipped with a message, except under `CI=true`, where it fails.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use nhi_guard::core::metrics as m;

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/nhi-guard.rules.yml"
);
const RULE_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/nhi-guard.rules.test.yml"
);
const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/nhi-guard.json");

/// Every metric `nhi_guard_core::metrics` documents.
fn recorded() -> BTreeSet<&'static str> {
    [
        m::REQUESTS_TOTAL,
        m::DENIALS_TOTAL,
        m::SHADOW_DENIALS_TOTAL,
        m::JWKS_FETCHES_TOTAL,
        m::JWKS_KEYS,
        m::ISSUER_METADATA_FETCHES_TOTAL,
        m::STORE_ERRORS_TOTAL,
        m::STORE_FALLBACKS_TOTAL,
        m::RISK_SCORE,
        m::RISK_SIGNALS_TOTAL,
        m::UNGOVERNED_REQUESTS_TOTAL,
        m::STALE_CLIENTS,
        m::ROTATION_DUE_REQUESTS_TOTAL,
        m::AUDIT_QUEUE_DEPTH,
        m::SCOPE_UNREACHABLE_RULES,
        m::AUDIT_DROPPED_TOTAL,
        m::DECISION_DURATION_SECONDS,
        m::JWKS_LAST_SUCCESS_TIMESTAMP_SECONDS,
        m::CLIENTS,
        m::CLIENTS_EXPIRING_SOON,
    ]
    .into_iter()
    .collect()
}

/// The metric names a text mentions (a histogram's `_bucket` series as its name).
fn mentioned(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("nhi_guard_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let name = name.strip_suffix("_bucket").unwrap_or(&name).to_owned();
        out.insert(name);
    }
    out
}

#[test]
fn the_rules_and_the_dashboard_name_only_recorded_metrics() {
    let recorded = recorded();
    for path in [RULES, RULE_TESTS, DASHBOARD] {
        let text = std::fs::read_to_string(path).expect("readable");
        let names = mentioned(&text);
        assert!(!names.is_empty(), "{path} names no metric");
        let unknown: Vec<&String> = names.iter().filter(|n| !recorded.contains(n.as_str())).collect();
        assert!(
            unknown.is_empty(),
            "{path} names metrics the guard does not record: {unknown:?}"
        );
    }
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_with_a_query_per_panel() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("readable")).expect("JSON");
    assert_eq!(dashboard["uid"], "nhi-guard");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().expect("id")), "panel ids are unique");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has no query", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            assert!(expr.contains("$instance"), "{expr} follows the instance variable");
        }
    }
    // Every alert's metric is on the dashboard too.
    let on_dashboard = mentioned(&dashboard.to_string());
    let alerted = mentioned(&std::fs::read_to_string(RULES).expect("readable"));
    assert!(
        alerted.is_subset(&on_dashboard),
        "{alerted:?} vs {on_dashboard:?}"
    );
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    let Some(promtool) = promtool() else { return };
    for args in [["check", "rules", RULES], ["test", "rules", RULE_TESTS]] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(Path::new(RULES).parent().expect("dir"))
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// promtool, or `None` (after saying why) when the test must be skipped.
fn promtool() -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file());
    if found.is_none() {
        let missing = "promtool not found on PATH (Debian: apt-get install prometheus)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool_checks_and_unit_tests_the_rules: {missing}; required under CI=true"
        );
        eprintln!("promtool_checks_and_unit_tests_the_rules: SKIPPED: {missing}");
    }
    found
}
