//! Memory per live key of the in-memory store, measured two ways: the store's own
//! account of its tables, and the process's resident memory (Linux).

use nhi_guard_ratelimit::store::{CheckMode, Quota, RateLimitDecision};
use nhi_guard_ratelimit::{InMemoryRateLimitStore, LocalCheck};

fn rss_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[test]
fn a_million_live_keys_cost_at_most_128_bytes_each() {
    const KEYS: u64 = 1_000_000;
    let before = rss_bytes();
    let store = InMemoryRateLimitStore::with_max_keys(KEYS as usize);
    let quota = Quota::per_second(1).expect("quota");
    let now = 1_800_000_000_000_000_000;
    let mut out = [RateLimitDecision::default(); 1];
    for i in 0..KEYS {
        let key = i.to_le_bytes();
        let check = [LocalCheck {
            policy: "per-client",
            key: &key,
            qualifier: b"",
            quota,
            cost: 1,
        }];
        assert!(store.check_at(now, &check, CheckMode::Consume, &mut out));
    }
    // Every key is live (its TAT is in the future) and none was evicted.
    assert!(store.len() as u64 >= KEYS - 64, "len {}", store.len());
    assert_eq!(store.evicted_active(), 0);
    let per_key = store.memory_bytes() as f64 / store.len() as f64;
    eprintln!("in-memory store: {per_key:.1} bytes per live key (table account)");
    assert!(per_key <= 128.0, "{per_key} bytes per key");
    if let (Some(b), Some(a)) = (before, rss_bytes()) {
        let rss_per_key = a.saturating_sub(b) as f64 / store.len() as f64;
        eprintln!("in-memory store: {rss_per_key:.1} bytes per live key (resident memory)");
        assert!(rss_per_key <= 128.0, "{rss_per_key} resident bytes per key");
    }
}
