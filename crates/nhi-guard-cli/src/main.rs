//! `nhi-guard`: the command-line companion of the nhi-guard layers.
//!
//! ```text
//! nhi-guard key new [--prefix nhik_live_]   a new random API key, and its inventory line
//! nhi-guard key hash                        the inventory line of a key read on standard input
//! nhi-guard inventory lint FILE [--warn-days N]
//!                                           load FILE as the guard does; print its error, or its warnings
//! nhi-guard audit verify [--key FILE] [--public-key FILE] [--head SHA256] FILE [NEWER ...]
//!                                           check the hash chain of audit logs (oldest first)
//! nhi-guard report [--since T | --unused-days N] [--html FILE]
//!                                           a running gateway's least-privilege report, as
//!                                           JSON or as one self-contained HTML page
//! nhi-guard report --from FILE [--html FILE] the same, from a report saved earlier
//! nhi-guard revoke client ID | api-key sha256:HEX | jti JTI [--expires-at T]
//! nhi-guard revoke list | lift ID           a running gateway's revocations
//! ```
//!
//! The gateway commands take `--gateway URL` (or `NHI_GUARD_GATEWAY`), the
//! operator's credential from `--token-file FILE` (or `NHI_GUARD_TOKEN`) or
//! `--api-key-file FILE` (or `NHI_GUARD_API_KEY`), never on the command line, and
//! `--ca-file FILE` (or `NHI_GUARD_CA_FILE`) for a gateway with a private CA.
//!
//! Exit status: 0 all good; 1 a finding (an inventory that does not load, a broken
//! audit chain, a malformed file); 2 an audit log intact but not sealed; 3 a file
//! that cannot be read or written; 4 the gateway refused the request (4xx); 5 the
//! gateway could not be reached or failed (5xx, an answer that is not JSON); 64 a
//! usage error. Errors are one line on standard error naming the file, field,
//! argument or endpoint at fault.
// A command-line tool: its output is standard output.
#![allow(clippy::print_stdout)]

use std::io::Read;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use http::Method;
use nhi_guard_core::registry::{ApiKeyHash, ClientStatus, Inventory};
use serde_json::{Value, json};

mod html;
mod remote;

use remote::{Failure, Gateway, GatewayOptions};

/// Usage errors.
const USAGE: u8 = 64;

const HELP: &str = "usage:
  nhi-guard key new [--prefix PREFIX]          a new random API key (shown once) and its inventory line
  nhi-guard key hash                           the inventory line of the key read on standard input
  nhi-guard inventory lint FILE [--warn-days N]
                                               load FILE as the guard does: its error, or its warnings
  nhi-guard audit verify [--key FILE] [--public-key FILE] [--head SHA256] FILE [NEWER ...]
                                               check the hash chain of audit logs, oldest first;
                                               with the writer's HMAC key or Ed25519 public key,
                                               and a head printed by an earlier check
  nhi-guard report [--since T | --unused-days N] [--html FILE]
                                               a gateway's least-privilege report: JSON, or an HTML page
  nhi-guard report --from FILE [--html FILE]   the same from a report saved earlier
  nhi-guard revoke client ID | api-key sha256:HEX | jti JTI [--expires-at T]
  nhi-guard revoke list | lift ID              a gateway's revocations
gateway options: --gateway URL (NHI_GUARD_GATEWAY), --token-file FILE (NHI_GUARD_TOKEN)
  or --api-key-file FILE (NHI_GUARD_API_KEY), --ca-file FILE (NHI_GUARD_CA_FILE)
exit status: 0 good, 1 a finding, 2 an audit log not sealed, 3 a file not readable or
  writable, 4 refused by the gateway, 5 gateway unreachable or failing, 64 usage";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["key", "new", rest @ ..] => key_new(rest),
        ["key", "hash"] => key_hash(),
        ["inventory", "lint", rest @ ..] => inventory_lint(rest),
        ["audit", "verify", rest @ ..] => audit_verify(rest),
        ["report", rest @ ..] => finish(report(rest)),
        ["revoke", rest @ ..] => finish(revoke(rest)),
        ["help" | "--help" | "-h"] => {
            println!("{HELP}");
            ExitCode::SUCCESS
        }
        _ => usage(&format!("unknown command {:?}", args.join(" "))),
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("nhi-guard: {message}\n{HELP}");
    ExitCode::from(USAGE)
}

/// The exit status of a gateway command; its failure as one line.
fn finish(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) if f.status == USAGE => usage(&f.message),
        Err(f) => {
            eprintln!("nhi-guard: {}", f.message);
            ExitCode::from(f.status)
        }
    }
}

/// A command's positional words and its `--flag value` pairs.
type Args<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);

/// Splits `args` into positional words and `--flag value` pairs.
fn split_args<'a>(args: &[&'a str]) -> Result<Args<'a>, Failure> {
    let (mut words, mut flags) = (Vec::new(), Vec::new());
    let mut it = args.iter();
    while let Some(&arg) = it.next() {
        if arg.starts_with("--") {
            let value = it
                .next()
                .ok_or_else(|| Failure::new(USAGE, format!("{arg} needs a value")))?;
            flags.push((arg, *value));
        } else {
            words.push(arg);
        }
    }
    Ok((words, flags))
}

/// Runs one gateway call to completion.
fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(3, format!("cannot start the I/O runtime: {e}")))?;
    Ok(runtime.block_on(f))
}

fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

/// `report`: a running gateway's least-privilege report (`GET /admin/clients`,
/// with its ungoverned callers) and recent risk decisions (`GET
/// /admin/risk/decisions`, when the gateway has a risk layer), printed as one JSON
/// document or written as an HTML page; or such a document read back (`--from`).
fn report(args: &[&str]) -> Result<(), Failure> {
    let (words, flags) = split_args(args)?;
    if let Some(word) = words.first() {
        return Err(Failure::new(
            USAGE,
            format!("report takes options only, not {word:?}"),
        ));
    }
    let mut options = GatewayOptions::default();
    let (mut html_file, mut from, mut query) = (None, None, None);
    for (flag, value) in flags {
        match flag {
            "--html" => html_file = Some(value),
            "--from" => from = Some(value),
            "--since" => query = Some(format!("?since={}", value.replace('+', "%2B"))),
            "--unused-days" => match value.parse::<u32>() {
                Ok(n) => query = Some(format!("?unused_days={n}")),
                Err(_) => {
                    return Err(Failure::new(
                        USAGE,
                        format!("--unused-days {value:?}: a number of days"),
                    ));
                }
            },
            _ if options.take(flag, value) => {}
            _ => return Err(Failure::new(USAGE, format!("report does not take {flag}"))),
        }
    }
    let doc = match from {
        Some(file) => {
            if options.gateway.is_some() || query.is_some() {
                return Err(Failure::new(
                    USAGE,
                    "--from reads a saved report: no --gateway, --since or --unused-days",
                ));
            }
            let text =
                std::fs::read_to_string(file).map_err(|e| Failure::new(3, format!("--from {file}: {e}")))?;
            match serde_json::from_str::<Value>(&text) {
                Ok(doc) if doc.get("clients_report").is_some_and(Value::is_object) => doc,
                Ok(_) => {
                    return Err(Failure::new(
                        1,
                        format!(
                            "--from {file}: field clients_report: missing; save the output of `nhi-guard report`"
                        ),
                    ));
                }
                Err(e) => return Err(Failure::new(1, format!("--from {file}: not JSON: {e}"))),
            }
        }
        None => {
            let gateway = Gateway::new(&options)?;
            block_on(async {
                let clients = gateway
                    .get_json(
                        &format!("/admin/clients{}", query.as_deref().unwrap_or("")),
                        false,
                    )
                    .await?;
                let risk = gateway.get_json("/admin/risk/decisions?limit=1000", true).await?;
                Ok::<_, Failure>(json!({
                    "gateway": gateway.base(),
                    "fetched_at": nhi_guard_core::rfc3339(SystemTime::now()),
                    "clients_report": clients,
                    "risk_decisions": risk,
                }))
            })??
        }
    };
    match html_file {
        None => print_json(&doc),
        Some(file) => {
            std::fs::write(file, html::render(&doc))
                .map_err(|e| Failure::new(3, format!("--html {file}: {e}")))?;
            let count = |v: &Value| v.as_array().map_or(0, Vec::len);
            let report = &doc["clients_report"];
            eprintln!(
                "nhi-guard: wrote {file}: {} clients, {} ungoverned clients, {} ungoverned keys",
                count(&report["clients"]),
                count(&report["ungoverned"]["clients"]),
                count(&report["ungoverned"]["api_keys"]),
            );
        }
    }
    Ok(())
}

/// `revoke`: revokes a client, an API key or a token on a running gateway
/// (`POST /admin/revocations`), lists the revocations in force, or lifts one.
fn revoke(args: &[&str]) -> Result<(), Failure> {
    let (words, flags) = split_args(args)?;
    let mut options = GatewayOptions::default();
    let mut expires_at = None;
    for (flag, value) in flags {
        match flag {
            "--expires-at" => expires_at = Some(value),
            _ if options.take(flag, value) => {}
            _ => return Err(Failure::new(USAGE, format!("revoke does not take {flag}"))),
        }
    }
    if expires_at.is_some() && words.first() != Some(&"jti") {
        return Err(Failure::new(USAGE, "--expires-at goes with revoke jti only"));
    }
    let (method, path, body) = match words.as_slice() {
        ["client", id] => (
            Method::POST,
            "/admin/revocations".to_owned(),
            Some(json!({ "client_id": id })),
        ),
        ["api-key", hash] => {
            ApiKeyHash::parse(hash).map_err(|_| {
                Failure::new(
                    USAGE,
                    format!("revoke api-key {hash:?}: give the key's inventory line, sha256: and 64 hex digits (`nhi-guard key hash` makes it)"),
                )
            })?;
            (
                Method::POST,
                "/admin/revocations".to_owned(),
                Some(json!({ "api_key": hash })),
            )
        }
        ["jti", jti] => {
            let mut body = json!({ "jti": jti });
            if let Some(t) = expires_at {
                body["expires_at"] = json!(t);
            }
            (Method::POST, "/admin/revocations".to_owned(), Some(body))
        }
        ["list"] => (Method::GET, "/admin/revocations".to_owned(), None),
        ["lift", id]
            if !id.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            (Method::DELETE, format!("/admin/revocations/{id}"), None)
        }
        ["lift", id] => {
            return Err(Failure::new(
                USAGE,
                format!("revoke lift {id:?}: not a revocation id"),
            ));
        }
        _ => {
            return Err(Failure::new(
                USAGE,
                "revoke takes client ID, api-key sha256:HEX, jti JTI [--expires-at T], list, or lift ID",
            ));
        }
    };
    let gateway = Gateway::new(&options)?;
    let (_, answer) = block_on(gateway.call(method.clone(), &path, body.as_ref()))??;
    if method == Method::DELETE {
        println!("lifted {}", &path["/admin/revocations/".len()..]);
        return Ok(());
    }
    let answer: Value = serde_json::from_slice(&answer).map_err(|e| {
        Failure::new(
            remote::UNREACHABLE,
            format!("{method} {}{path}: the answer is not JSON: {e}", gateway.base()),
        )
    })?;
    print_json(&answer);
    Ok(())
}

/// A random key: the prefix and 32 random bytes in base64url (43 characters).
fn key_new(args: &[&str]) -> ExitCode {
    let prefix = match args {
        [] => "nhik_",
        ["--prefix", p] if valid_prefix(p) => p,
        ["--prefix", p] => {
            return usage(&format!(
                "--prefix {p:?}: use 1 to 32 of A-Z a-z 0-9 _ -, so the key is one header token"
            ));
        }
        _ => return usage("key new takes only --prefix PREFIX"),
    };
    let mut bytes = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut bytes) {
        eprintln!("nhi-guard: key new: the system's random source failed: {e}");
        return ExitCode::from(3);
    }
    let key = format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    println!("{key}");
    println!("{}", ApiKeyHash::of_key(key.as_bytes()));
    eprintln!(
        "nhi-guard: the first line is the key: give it to the client once and keep no copy; \
         the second goes into the client's api_keys in the inventory"
    );
    ExitCode::SUCCESS
}

fn valid_prefix(p: &str) -> bool {
    (1..=32).contains(&p.len())
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The `sha256:` line of the key on standard input (one line; surrounding
/// whitespace ignored).
fn key_hash() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().take(64 * 1024).read_to_string(&mut input) {
        eprintln!("nhi-guard: key hash: standard input: {e}");
        return ExitCode::from(3);
    }
    let key = input.trim();
    if key.is_empty() || key.contains(char::is_whitespace) {
        eprintln!("nhi-guard: key hash: standard input must hold one key (no spaces)");
        return ExitCode::from(1);
    }
    println!("{}", ApiKeyHash::of_key(key.as_bytes()));
    ExitCode::SUCCESS
}

/// Loads the inventory as the guard does; prints the error that stops it, or the
/// warnings of an inventory that loads.
fn inventory_lint(args: &[&str]) -> ExitCode {
    let (file, warn_days) = match args {
        [file] => (*file, None),
        [file, "--warn-days", n] | ["--warn-days", n, file] => match n.parse::<u64>() {
            Ok(n) if n <= 3650 => (*file, Some(n)),
            _ => return usage(&format!("--warn-days {n:?}: a number of days from 0 to 3650")),
        },
        _ => return usage("inventory lint takes FILE [--warn-days N]"),
    };
    if let Err(e) = std::fs::metadata(file) {
        eprintln!("nhi-guard: {file}: {e}");
        return ExitCode::from(3);
    }
    let inventory = match Inventory::from_toml_file(file) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("nhi-guard: {file}: {e}");
            return ExitCode::from(1);
        }
    };
    let warnings = lint(
        &inventory,
        SystemTime::now(),
        warn_days.map(|d| Duration::from_secs(d * 86_400)),
    );
    for w in &warnings {
        println!("{file}: warning: {w}");
    }
    println!(
        "{file}: {} clients, {} tiers, {} warnings",
        inventory.len(),
        inventory.tiers().count(),
        warnings.len()
    );
    ExitCode::SUCCESS
}

/// Warnings of a loaded inventory at `now`: clients expired, expiring within the
/// warning window (the inventory's own, or `window`), or suspended.
fn lint(inventory: &Inventory, now: SystemTime, window: Option<Duration>) -> Vec<String> {
    let window = window.unwrap_or_else(|| inventory.expiry_warning());
    let mut out = Vec::new();
    let mut clients = inventory.clients();
    clients.sort_by(|a, b| a.id().cmp(b.id()));
    for c in clients {
        let id = c.id();
        match c.expires().duration_since(now) {
            Err(_) => out.push(format!(
                "client {id:?} expired on {} (owner {})",
                nhi_guard_core::rfc3339(c.expires()),
                c.owner()
            )),
            Ok(left) if left <= window => out.push(format!(
                "client {id:?} expires in {} days, on {} (owner {})",
                left.as_secs() / 86_400,
                nhi_guard_core::rfc3339(c.expires()),
                c.owner()
            )),
            Ok(_) => {}
        }
        if c.status() == ClientStatus::Suspended {
            out.push(format!("client {id:?} is suspended"));
        }
        for hash in c.api_keys() {
            let dates = c.api_key_dates(hash);
            let short = &hash.to_string()[..15];
            if let (Some(created), Some(max)) = (dates.created, inventory.max_key_age_for(c.tier()))
                && now.duration_since(created).is_ok_and(|age| age >= max)
            {
                out.push(format!(
                    "client {id:?}: key {short}… is older than its maximum key age and is refused"
                ));
            } else if let Some(t) = dates.rotate_by.filter(|t| *t <= now) {
                out.push(format!(
                    "client {id:?}: key {short}… was due for rotation on {}",
                    nhi_guard_core::rfc3339(t)
                ));
            }
        }
    }
    out
}

/// Checks audit logs as `audit_verify` does; `--key FILE` (HMAC) or
/// `--public-key FILE` (Ed25519, PEM or hex) authenticates every checkpoint,
/// `--head SHA256` requires a head printed by an earlier check.
fn audit_verify(args: &[&str]) -> ExitCode {
    let mut options = nhi_guard_audit::VerifyOptions::default();
    let mut files = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match *arg {
            "--key" => match args.next().map(nhi_guard_audit::CheckpointKey::from_file) {
                Some(Ok(key)) => options.key = Some(key),
                Some(Err(e)) => {
                    eprintln!("nhi-guard: audit verify: {e}");
                    return ExitCode::from(3);
                }
                None => return usage("audit verify: --key needs a file"),
            },
            "--public-key" => match args.next().map(nhi_guard_audit::CheckpointPublicKey::from_file) {
                Some(Ok(key)) => options.public_key = Some(key),
                Some(Err(e)) => {
                    eprintln!("nhi-guard: audit verify: {e}");
                    return ExitCode::from(3);
                }
                None => return usage("audit verify: --public-key needs a file"),
            },
            "--head" => match args.next() {
                Some(head) if head.len() == 64 && head.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    options.expected_head = Some(head.to_ascii_lowercase());
                }
                _ => return usage("audit verify: --head needs the 64 hex digits of a checkpoint's sha256"),
            },
            file => files.push(file),
        }
    }
    if files.is_empty() {
        return usage("audit verify: which files?");
    }
    let reports = match nhi_guard_audit::verify_files_with(&files, &options) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nhi-guard: audit verify: {e}");
            return ExitCode::from(3);
        }
    };
    let mut status = 0u8;
    for (path, report) in files.iter().zip(&reports) {
        println!("{path}: {report}");
        if !report.is_intact() {
            status = 1;
        } else if !report.is_sealed() && status == 0 {
            status = 2;
        }
    }
    for path in &files[reports.len()..] {
        println!("{path}: not checked (an earlier file is broken)");
    }
    if let Some(head) = reports
        .last()
        .filter(|r| r.is_intact())
        .and_then(|r| r.head.as_ref())
    {
        // Kept outside the log (a ticket, another system), it finds a later
        // truncation: `--head` it next time.
        println!("head: {head}");
    }
    ExitCode::from(status)
}

#[cfg(test)]
mod tests {
    use nhi_guard_core::registry::{ClientRecord, Inventory};

    use super::*;

    #[test]
    fn lint_warns_of_expired_expiring_and_suspended_clients() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let day = Duration::from_secs(86_400);
        let client =
            |id: &str, expires: SystemTime| ClientRecord::builder(id, "team@example.com", "tests", expires);
        let dated = |key: &str, created: SystemTime, rotate_by: SystemTime| {
            (
                ApiKeyHash::of_key(key.as_bytes()),
                nhi_guard_core::registry::ApiKeyDates::new(Some(created), Some(rotate_by)),
            )
        };
        let (k1, d1) = dated("k1", now - day * 400, now + day);
        let (k2, d2) = dated("k2", now - day * 10, now - day);
        let inventory = Inventory::builder()
            .max_key_age(day * 365)
            .client(
                client("keyed", now + day * 300)
                    .api_key_hash_dated(k1, d1)
                    .api_key_hash_dated(k2, d2)
                    .build()
                    .expect("client"),
            )
            .client(client("fine", now + day * 300).build().expect("client"))
            .client(client("soon", now + day * 10).build().expect("client"))
            .client(client("gone", now - day).build().expect("client"))
            .client(
                client("paused", now + day * 300)
                    .status(ClientStatus::Suspended)
                    .build()
                    .expect("client"),
            )
            .build()
            .expect("inventory");
        let w = lint(&inventory, now, Some(day * 30));
        assert_eq!(w.len(), 5, "{w:?}");
        assert!(w[0].starts_with("client \"gone\" expired on"), "{w:?}");
        assert!(w[1].contains("is older than its maximum key age"), "{w:?}");
        assert!(w[2].contains("was due for rotation on"), "{w:?}");
        assert!(w[3].starts_with("client \"paused\" is suspended"), "{w:?}");
        assert!(w[4].starts_with("client \"soon\" expires in 10 days"), "{w:?}");
        assert!(
            lint(&inventory, now, Some(day))
                .iter()
                .all(|w| !w.contains("soon"))
        );
        assert!(valid_prefix("nhik_live_") && !valid_prefix("") && !valid_prefix("a b"));
    }
}
