//! Verifies the hash chain of nhi-guard audit logs.
//!
//! ```text
//! cargo run -p nhi-guard-audit --example audit_verify -- audit.jsonl
//! cargo run -p nhi-guard-audit --example audit_verify -- audit.jsonl.2 audit.jsonl.1 audit.jsonl
//! ```
//!
//! Several files are taken oldest first (rotated logs) and must link to each other.
//! Exit status: 0 intact and sealed, 1 broken (the first break is printed), 2 intact
//! but unsealed (records after the last checkpoint: the writer is still running,
//! stopped without shutting down, or the file was truncated after it), 3 I/O error.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;

fn main() -> ExitCode {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        eprintln!("usage: audit_verify <file> [<newer file> ...]   (oldest first)");
        return ExitCode::from(3);
    }
    let reports = match nhi_guard_audit::verify_files(&paths) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("audit_verify: {e}");
            return ExitCode::from(3);
        }
    };
    let mut status = 0u8;
    for (path, report) in paths.iter().zip(&reports) {
        println!("{path}: {report}");
        if !report.is_intact() {
            status = 1;
        } else if !report.is_sealed() && status == 0 {
            status = 2;
        }
    }
    if reports.len() < paths.len() {
        for path in &paths[reports.len()..] {
            println!("{path}: not checked (an earlier file is broken)");
        }
    }
    ExitCode::from(status)
}
