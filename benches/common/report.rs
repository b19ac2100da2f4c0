//! The table both criterion benches print after their run: each entry's estimate,
//! its ratio to the bare baseline of the same run and the nanoseconds it adds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Point estimates (ns) criterion wrote for one entry.
#[derive(Debug, Clone, Copy)]
struct Estimate {
    /// The figure criterion prints as `time:`: the slope of the linear regression
    /// (linear sampling, the default), else the mean.
    typical: f64,
    median: f64,
}

/// Prints one row per entry from the estimates criterion wrote during this run for
/// `group`, each with its ratio to the entry `bare` and the nanoseconds it adds.
pub(crate) fn summary(group: &str, bare: &str, title: &str, names: &[&str], started: SystemTime) {
    let group_dir = criterion_home().join(group);
    let estimates = read_estimates(&group_dir, started);
    if estimates.is_empty() {
        // `cargo test --benches`, `--list`, `--profile-time`: nothing measured.
        println!(
            "{group} summary: no estimates written by this run under {}",
            group_dir.display()
        );
        return;
    }
    let bare = estimates.get(bare).copied();
    println!();
    println!("{title}");
    println!(
        "{:<34} {:>11} {:>11} {:>9} {:>12}",
        "entry", "time", "median", "x bare", "over bare"
    );
    for name in names {
        let Some(e) = estimates.get(*name) else {
            println!("{name:<34} {:>11}", "not run");
            continue;
        };
        let (ratio, over) = match bare {
            Some(b) => (
                format!("{:.2}", e.median / b.median),
                format!("{:+.0} ns", e.median - b.median),
            ),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{name:<34} {:>11} {:>11} {ratio:>9} {over:>12}",
            human(e.typical),
            human(e.median)
        );
    }
    println!("(time: criterion's estimate as printed above; ratio and overhead from the medians)");
}

/// `ns` as "850 ns" or "1.23 µs".
fn human(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else {
        format!("{:.2} µs", ns / 1_000.0)
    }
}

/// Where criterion writes, found the way criterion finds it: `$CRITERION_HOME`, else
/// `$CARGO_TARGET_DIR/criterion`, else the target directory `cargo metadata` names.
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    let from_metadata = std::env::var_os("CARGO")
        .and_then(|cargo| {
            std::process::Command::new(cargo)
                .args(["metadata", "--format-version", "1", "--no-deps"])
                .output()
                .ok()
        })
        .and_then(|out| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
        .and_then(|meta| meta["target_directory"].as_str().map(PathBuf::from));
    from_metadata.unwrap_or_else(|| "target".into()).join("criterion")
}

/// Entry name → estimates, for the entries whose `new/estimates.json` this run wrote.
/// The entry name is read from `new/benchmark.json` rather than derived from the
/// directory name, which criterion sanitises (`:` → `_`) and truncates to 64 bytes.
fn read_estimates(group_dir: &Path, started: SystemTime) -> HashMap<String, Estimate> {
    let mut out = HashMap::new();
    let Ok(dirs) = std::fs::read_dir(group_dir) else {
        return out;
    };
    for dir in dirs.flatten() {
        let new = dir.path().join("new");
        let estimates = new.join("estimates.json");
        let fresh = std::fs::metadata(&estimates)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= started);
        if !fresh {
            continue;
        }
        let read = |p: PathBuf| {
            std::fs::read(p)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        };
        let (Some(id), Some(est)) = (read(new.join("benchmark.json")), read(estimates)) else {
            continue;
        };
        let typical = est["slope"]["point_estimate"]
            .as_f64()
            .or_else(|| est["mean"]["point_estimate"].as_f64());
        let (Some(name), Some(typical), Some(median)) = (
            id["function_id"].as_str(),
            typical,
            est["median"]["point_estimate"].as_f64(),
        ) else {
            continue;
        };
        out.insert(name.to_owned(), Estimate { typical, median });
    }
    out
}
