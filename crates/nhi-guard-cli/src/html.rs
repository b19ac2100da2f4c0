//! `nhi-guard report --html`: the report document as one self-contained HTML page.
//!
//! The report document is what the CLI gathers from a gateway's admin routes:
//!
//! ```text
//! { "gateway": "http://127.0.0.1:8080", "fetched_at": "RFC 3339",
//!   "clients_report": GET /admin/clients (the least-privilege report and `ungoverned`),
//!   "risk_decisions": GET /admin/risk/decisions, or null without a risk layer }
//! ```
//!
//! The page has its CSS inline and nothing else: no script, no link, no image, no
//! font or other address to fetch, so it opens offline, from a mail attachment or
//! a CI artifact, and reads the same printed. Every member of the document may be
//! missing, null or of another type (an older gateway, a partial answer): what is
//! missing shows as "—", nothing panics.
//!
//! Every string of the document is escaped for HTML text and attribute values
//! (`&`, `<`, `>`, `"`, `'`): client ids, purposes and signal reasons come from an
//! inventory file, and the ids of ungoverned clients from tokens, that is from
//! whoever got a token signed. Key hashes show as the `sha256:` prefix of 8 hex
//! digits the report gives, never longer; credential fingerprints of risk keys
//! (`cred:…`) are cut to the same 8 digits.
//!
//! The markup is meant to be queried as well as read: `table#clients` has one
//! `tr.client[data-client-id]` per client, with cells `.owner`, `.purpose`,
//! `.status`, `.expiry` (`warn` when expiring soon, `bad` once expired), `.seen`,
//! `.scopes`, `.credentials` and `.risk`; `section#ungoverned` lists
//! `tr.ungoverned-client` and `tr.ungoverned-key`; `section#risk` the decisions
//! tied to no client of the inventory (`tr.decision[data-key]`).

use serde_json::Value;

/// The report page: one self-contained HTML document.
pub(crate) fn render(doc: &Value) -> String {
    let report = member(doc, "clients_report");
    let clients: &[Value] = report.map_or(&[], |r| list(r, "clients"));
    let ungoverned = report.and_then(|r| member(r, "ungoverned"));
    let risk = member(doc, "risk_decisions");
    let decisions: &[Value] = risk.map_or(&[], |r| list(r, "decisions"));
    let active: &[Value] = risk.map_or(&[], |r| list(r, "active"));
    let known: Vec<&str> = clients
        .iter()
        .filter_map(|c| member(c, "client_id").and_then(Value::as_str))
        .collect();

    let mut page = Page::default();
    page.raw("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    page.raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    page.raw("<meta name=\"color-scheme\" content=\"light\">\n");
    page.raw("<meta name=\"generator\" content=\"nhi-guard report\">\n<title>");
    page.text("nhi-guard report");
    if let Some(gateway) = scalar(member(doc, "gateway")) {
        page.text(&format!(" — {gateway}"));
    }
    if let Some(at) = report.and_then(|r| scalar(member(r, "generated_at"))) {
        page.text(&format!(" — {}", pretty_time(&at)));
    }
    page.raw("</title>\n<style>\n");
    page.raw(CSS);
    page.raw("</style>\n</head>\n<body>\n");

    header(&mut page, doc, report, clients, ungoverned, decisions);
    page.raw("<main>\n");
    clients_table(&mut page, clients, decisions, active);
    ungoverned_section(&mut page, report, ungoverned);
    risk_section(&mut page, risk, decisions, active, &known);
    unreachable_section(&mut page, report);
    legend(&mut page);
    page.raw("</main>\n<footer>");
    page.text("Made by nhi-guard report from the gateway's admin routes. ");
    page.text("This page has no script and loads nothing: it reads the same offline and printed.");
    page.raw("</footer>\n</body>\n</html>\n");
    page.0
}

/// The HTML being written.
#[derive(Debug, Default)]
struct Page(String);

impl Page {
    /// Markup of our own, written as is.
    fn raw(&mut self, markup: &str) {
        self.0.push_str(markup);
    }

    /// Text from the document, escaped.
    fn text(&mut self, text: &str) {
        self.0.push_str(&escape(text));
    }

    /// A value as text, or "—".
    fn value(&mut self, v: Option<&Value>) {
        match scalar(v) {
            Some(s) => self.text(&s),
            None => self.raw(DASH),
        }
    }

    /// An RFC 3339 time as a `<time>` element, or "—".
    fn time(&mut self, v: Option<&Value>) {
        match scalar(v) {
            Some(s) => {
                self.raw("<time datetime=\"");
                self.text(&s);
                self.raw("\">");
                self.text(&pretty_time(&s));
                self.raw("</time>");
            }
            None => self.raw(DASH),
        }
    }

    /// A scope as `<code>`.
    fn scope(&mut self, scope: &str) {
        self.raw("<code class=\"scope\">");
        self.text(scope);
        self.raw("</code>");
    }

    /// A badge: a short label with the classes that colour it.
    fn badge(&mut self, classes: &str, label: &str) {
        self.raw("<span class=\"badge ");
        self.raw(classes);
        self.raw("\">");
        self.text(label);
        self.raw("</span>");
    }
}

const DASH: &str = "<span class=\"none\">—</span>";

/// `s` for HTML text and double- or single-quoted attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The member `key` of `v` when `v` is an object and the member is not null.
fn member<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|m| !m.is_null())
}

/// The array member `key` of `v`, empty when missing or not an array.
fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    member(v, key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// A string, number or boolean as text; nothing for null, missing, arrays and objects.
fn scalar(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The member `key` of `v` as a string slice, when it is a string.
fn string<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    member(v, key).and_then(Value::as_str)
}

/// The member `key` of `v` as a whole number (numbers and numeric strings).
fn number(v: &Value, key: &str) -> Option<i64> {
    match member(v, key)? {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_u64().map(|u| i64::try_from(u).unwrap_or(i64::MAX)))
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The member `key` of `v` is `true`.
fn flag(v: &Value, key: &str) -> bool {
    member(v, key).and_then(Value::as_bool).unwrap_or(false)
}

/// A scope set: a list of strings (how `ScopeSet` serialises) or one
/// space-separated string.
fn scopes(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(items)) => items.iter().filter_map(|i| scalar(Some(i))).collect(),
        _ => Vec::new(),
    }
}

/// `2026-12-07T10:00:00Z` as `2026-12-07 10:00 UTC` (an offset other than `Z` is
/// kept); anything that does not look like RFC 3339 as is.
fn pretty_time(s: &str) -> String {
    let looks_right = s.len() >= 16
        && s.is_char_boundary(16)
        && s.as_bytes().get(4) == Some(&b'-')
        && matches!(s.as_bytes().get(10), Some(b'T' | b't' | b' '))
        && s.as_bytes().get(13) == Some(&b':');
    let (Some(date), Some(minute), Some(rest), true) = (s.get(..10), s.get(11..16), s.get(16..), looks_right)
    else {
        return s.to_owned();
    };
    let offset = rest.trim_start_matches(|c: char| c.is_ascii_digit() || c == ':' || c == '.');
    match offset {
        "Z" | "z" | "+00:00" => format!("{date} {minute} UTC"),
        "" => format!("{date} {minute}"),
        other => format!("{date} {minute} {other}"),
    }
}

/// `n` with thin groups of three digits: 1,234,567.
fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// "1 day", "12 days".
fn days(n: i64) -> String {
    if n.unsigned_abs() == 1 {
        format!("{n} day")
    } else {
        format!("{n} days")
    }
}

/// A token's age: tokens live minutes to hours, so those units until two days.
fn token_age(secs: i64) -> String {
    let unit = |n: i64, one: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {one}s")
        }
    };
    match secs {
        ..3_600 => unit(secs / 60, "minute"),
        3_600..172_800 => unit(secs / 3_600, "hour"),
        _ => days(secs / 86_400),
    }
}

/// An API key's hash prefix as the report gives it (`sha256:` and 8 hex digits),
/// cut there should a longer one ever come: the page never shows more of a hash.
fn fingerprint(s: &str) -> String {
    const SHOWN: usize = 8;
    let (scheme, digits) = match s.split_once(':') {
        Some((scheme, digits)) => (format!("{scheme}:"), digits),
        None => (String::new(), s),
    };
    let cut: String = digits.chars().take(SHOWN).collect();
    if digits.chars().count() > SHOWN {
        format!("{scheme}{cut}…")
    } else {
        format!("{scheme}{cut}")
    }
}

/// A risk key as shown: a credential's fingerprint (`cred:` and 24 hex digits of
/// its SHA-256) cut to 8 digits like the key prefixes; other keys as they are.
fn risk_key(key: &str) -> String {
    match key.strip_prefix("cred:") {
        Some(fp) => format!("cred:{}", fingerprint(fp)),
        None => key.to_owned(),
    }
}

/// The badge classes of a risk action.
fn action_class(action: &str) -> &'static str {
    match action {
        "block" => "bad",
        "throttle" | "step_up" => "warn",
        _ => "muted",
    }
}

fn header(
    page: &mut Page,
    doc: &Value,
    report: Option<&Value>,
    clients: &[Value],
    ungoverned: Option<&Value>,
    decisions: &[Value],
) {
    page.raw(
        "<header class=\"page\">\n<h1>nhi-guard <span class=\"sub\">machine clients report</span></h1>\n",
    );
    page.raw("<dl class=\"meta\">\n");
    page.raw("<div><dt>Gateway</dt><dd class=\"gateway\">");
    page.value(member(doc, "gateway"));
    page.raw("</dd></div>\n<div><dt>Report made</dt><dd class=\"generated-at\">");
    page.time(report.and_then(|r| member(r, "generated_at")));
    page.raw("</dd></div>\n<div><dt>Fetched</dt><dd class=\"fetched-at\">");
    page.time(member(doc, "fetched_at"));
    page.raw("</dd></div>\n<div><dt>Unused means not exercised since</dt><dd class=\"unused-since\">");
    page.time(report.and_then(|r| member(r, "unused_since")));
    page.raw("</dd></div>\n</dl>\n");

    let count = |key: &str, test: &dyn Fn(&Value) -> bool| {
        report
            .and_then(|r| number(r, key))
            .unwrap_or_else(|| i64::try_from(clients.iter().filter(|c| test(c)).count()).unwrap_or(0))
    };
    let stale = count("stale_clients", &|c| flag(c, "stale"));
    let never_seen = count("never_seen_clients", &|c| flag(c, "never_seen"));
    let counted = |test: &dyn Fn(&Value) -> bool| clients.iter().filter(|c| test(c)).count();
    let expiring = counted(&|c| flag(c, "expiring_soon") && number(c, "days_left").is_none_or(|d| d >= 0));
    let expired = counted(&|c| number(c, "days_left").is_some_and(|d| d < 0));
    let suspended = counted(&|c| string(c, "status") == Some("suspended"));
    let keys_due = clients
        .iter()
        .flat_map(|c| list(c, "api_keys"))
        .filter(|k| flag(k, "rotation_due") || flag(k, "too_old"))
        .count();
    let ungoverned_count = ungoverned.map_or(0, |u| list(u, "clients").len() + list(u, "api_keys").len());

    page.raw("<ul class=\"totals\" id=\"totals\">\n");
    let total = |page: &mut Page, key: &str, n: usize, label: &str, alarm: &str, anchor: &str| {
        let class = if n > 0 { alarm } else { "" };
        page.raw(&format!(
            "<li class=\"total {class}\" data-total=\"{key}\"><a href=\"#{anchor}\"><span class=\"n\">{n}</span> "
        ));
        page.text(label);
        page.raw("</a></li>\n");
    };
    let n = |v: i64| usize::try_from(v).unwrap_or(0);
    total(page, "clients", clients.len(), "clients", "", "inventory");
    total(page, "suspended", suspended, "suspended", "muted", "inventory");
    total(
        page,
        "expiring-soon",
        expiring,
        "expiring soon",
        "warn",
        "inventory",
    );
    total(page, "expired", expired, "expired", "bad", "inventory");
    total(page, "stale", n(stale), "stale", "warn", "inventory");
    total(
        page,
        "never-seen",
        n(never_seen),
        "never seen",
        "muted",
        "inventory",
    );
    total(page, "keys-due", keys_due, "keys to rotate", "warn", "inventory");
    total(
        page,
        "ungoverned",
        ungoverned_count,
        "ungoverned",
        "bad",
        "ungoverned",
    );
    total(page, "risk", decisions.len(), "risk decisions", "warn", "risk");
    page.raw("</ul>\n</header>\n");
}

fn clients_table(page: &mut Page, clients: &[Value], decisions: &[Value], active: &[Value]) {
    page.raw("<section id=\"inventory\">\n<h2>Clients in the inventory</h2>\n");
    page.raw("<table id=\"clients\">\n<colgroup>");
    let columns = [
        ("client", "Client"),
        ("owner", "Owner"),
        ("purpose", "Purpose"),
        ("status", "Status"),
        ("expiry", "Expiry"),
        ("seen", "Last seen"),
        ("scopes", "Scopes"),
        ("credentials", "Credentials"),
        ("risk", "Risk"),
    ];
    for (class, _) in columns {
        page.raw(&format!("<col class=\"col-{class}\">"));
    }
    page.raw("</colgroup>\n<thead><tr>");
    for (_, head) in columns {
        page.raw("<th scope=\"col\">");
        page.text(head);
        page.raw("</th>");
    }
    page.raw("</tr></thead>\n<tbody>\n");
    if clients.is_empty() {
        page.raw("<tr class=\"empty\"><td colspan=\"9\">No client in the report.</td></tr>\n");
    }
    for client in clients {
        client_row(page, client, decisions, active);
    }
    page.raw("</tbody>\n</table>\n</section>\n");
}

fn client_row(page: &mut Page, client: &Value, decisions: &[Value], active: &[Value]) {
    let id = string(client, "client_id");
    let status = string(client, "status");
    let mut row_class = String::from("client");
    if status == Some("suspended") {
        row_class.push_str(" suspended");
    }
    page.raw(&format!("<tr class=\"{row_class}\" data-client-id=\""));
    page.text(id.unwrap_or_default());
    page.raw("\">\n<th scope=\"row\" class=\"client-id\" data-label=\"Client\">");
    match id {
        Some(id) => {
            page.raw("<code>");
            page.text(id);
            page.raw("</code>");
        }
        None => page.raw(DASH),
    }
    page.raw("</th>\n<td class=\"owner\" data-label=\"Owner\">");
    // An e-mail address may break before its `@` rather than anywhere.
    match scalar(member(client, "owner")) {
        Some(owner) => page.raw(&escape(&owner).replace('@', "<wbr>@")),
        None => page.raw(DASH),
    }
    page.raw("</td>\n<td class=\"purpose\" data-label=\"Purpose\">");
    page.value(member(client, "purpose"));
    page.raw("</td>\n<td class=\"status\" data-label=\"Status\">");
    match status {
        Some("active") => page.badge("ok status-active", "active"),
        Some("suspended") => page.badge("bad status-suspended", "suspended"),
        Some(other) => page.badge("muted", other),
        None => page.raw(DASH),
    }
    page.raw("</td>\n");

    // Expiry.
    let days_left = number(client, "days_left");
    let expired = days_left.is_some_and(|d| d < 0);
    let class = if expired {
        "expiry bad"
    } else if flag(client, "expiring_soon") {
        "expiry warn"
    } else {
        "expiry"
    };
    page.raw(&format!("<td class=\"{class}\" data-label=\"Expiry\">"));
    match days_left {
        Some(d) if d < 0 => page.badge(
            "bad expired",
            &format!("expired {} ago", days(d.saturating_neg())),
        ),
        Some(0) => page.badge("warn expiring-soon", "expires today"),
        Some(d) if flag(client, "expiring_soon") => {
            page.badge("warn expiring-soon", &format!("in {}", days(d)))
        }
        Some(d) => {
            page.raw("<span class=\"days-left\">");
            page.text(&format!("in {}", days(d)));
            page.raw("</span>");
        }
        None => {}
    }
    page.raw(" <span class=\"date\">");
    page.time(member(client, "expires"));
    page.raw("</span></td>\n");

    // Last seen.
    page.raw("<td class=\"seen\" data-label=\"Last seen\">");
    if flag(client, "never_seen") {
        page.badge("muted never-seen", "never seen");
    } else {
        page.time(member(client, "last_seen"));
        if flag(client, "stale") {
            page.raw(" ");
            page.badge("warn stale", "stale");
        }
    }
    page.raw("</td>\n");

    scopes_cell(page, client);
    credentials_cell(page, client);

    // Risk decisions about this client.
    page.raw("<td class=\"risk\" data-label=\"Risk\">");
    let mine: Vec<&Value> = match id {
        Some(id) => decisions
            .iter()
            .filter(|d| string(d, "client") == Some(id))
            .collect(),
        None => Vec::new(),
    };
    if mine.is_empty() {
        page.raw(DASH);
    } else {
        page.raw("<ul class=\"decisions\">");
        for d in mine {
            page.raw("<li class=\"decision\" data-action=\"");
            page.text(string(d, "action").unwrap_or_default());
            page.raw("\">");
            decision_summary(page, d, active);
            signals(page, d, 3);
            page.raw("</li>");
        }
        page.raw("</ul>");
    }
    page.raw("</td>\n</tr>\n");
}

fn scopes_cell(page: &mut Page, client: &Value) {
    page.raw("<td class=\"scopes\" data-label=\"Scopes\"><dl>");
    let granted = scopes(member(client, "granted"));
    page.raw("<dt>granted</dt><dd><ul class=\"granted\">");
    if granted.is_empty() {
        page.raw("<li>");
        page.raw(DASH);
        page.raw("</li>");
    }
    for s in &granted {
        page.raw("<li>");
        page.scope(s);
        page.raw("</li>");
    }
    page.raw("</ul></dd>");

    let used = list(client, "used");
    if !used.is_empty() {
        page.raw("<dt>used</dt><dd><ul class=\"used\">");
        for u in used {
            page.raw("<li class=\"used-scope\" data-scope=\"");
            page.text(string(u, "scope").unwrap_or_default());
            page.raw("\">");
            match string(u, "scope") {
                Some(s) => page.scope(s),
                None => page.raw(DASH),
            }
            if let Some(n) = number(u, "uses") {
                page.raw(" <span class=\"uses\">");
                page.text(&format!("×{}", thousands(n)));
                page.raw("</span>");
            }
            page.raw(" <span class=\"last\">last ");
            page.time(member(u, "last_used"));
            page.raw("</span>");
            if member(u, "granted").and_then(Value::as_bool) == Some(false) {
                page.raw(" ");
                page.badge("bad not-granted", "no longer granted");
            }
            page.raw("</li>");
        }
        page.raw("</ul></dd>");
    }

    let unused = scopes(member(client, "unused"));
    if !unused.is_empty() {
        page.raw("<dt>unused</dt><dd><ul class=\"unused\">");
        for s in &unused {
            page.raw("<li class=\"unused-scope\">");
            page.scope(s);
            page.raw("</li>");
        }
        page.raw("</ul></dd>");
    }

    let denied = list(client, "denied");
    if !denied.is_empty() {
        page.raw("<dt>denied</dt><dd><ul class=\"denied\">");
        for d in denied {
            page.raw("<li class=\"denied-scope\">");
            match string(d, "scope") {
                Some(s) => page.scope(s),
                None => page.raw(DASH),
            }
            if let Some(n) = number(d, "attempts") {
                page.raw(" <span class=\"attempts\">");
                page.text(&format!("{} refused", thousands(n)));
                page.raw("</span>");
            }
            page.raw(" <span class=\"last\">last ");
            page.time(member(d, "last_attempt"));
            page.raw("</span></li>");
        }
        page.raw("</ul></dd>");
    }
    page.raw("</dl>");
    if flag(client, "truncated") {
        page.badge("warn truncated", "usage truncated");
    }
    page.raw("</td>\n");
}

fn credentials_cell(page: &mut Page, client: &Value) {
    page.raw("<td class=\"credentials\" data-label=\"Credentials\">");
    let keys = list(client, "api_keys");
    let token = member(client, "newest_token");
    if keys.is_empty() && token.is_none() {
        page.raw(DASH);
    }
    if !keys.is_empty() {
        page.raw("<ul class=\"keys\">");
        for k in keys {
            let fp = string(k, "fingerprint_prefix").map(fingerprint);
            page.raw("<li class=\"api-key\" data-fingerprint=\"");
            page.text(fp.as_deref().unwrap_or_default());
            page.raw("\">API key <code class=\"fingerprint\">");
            match &fp {
                Some(fp) => page.text(fp),
                None => page.raw(DASH),
            }
            page.raw("</code> <span class=\"age\">");
            match number(k, "age_days") {
                Some(age) => page.text(&format!("{} old", days(age))),
                None => page.text("age unknown"),
            }
            page.raw("</span>");
            if flag(k, "too_old") {
                page.raw(" ");
                page.badge("bad too-old", "too old");
            }
            if flag(k, "rotation_due") {
                page.raw(" ");
                page.badge("warn rotation-due", "rotate");
            }
            if member(k, "rotate_by").is_some() {
                page.raw(" <span class=\"date\">rotate by ");
                page.time(member(k, "rotate_by"));
                page.raw("</span>");
            }
            page.raw("</li>");
        }
        page.raw("</ul>");
    }
    if let Some(token) = token {
        page.raw("<p class=\"token\">newest token <span class=\"token-age\">");
        match (number(token, "age_seconds"), number(token, "age_days")) {
            (Some(secs), _) => page.text(&token_age(secs)),
            (None, Some(age)) => page.text(&days(age)),
            (None, None) => page.raw(DASH),
        }
        page.raw("</span> old <span class=\"date\">issued ");
        page.time(member(token, "issued_at"));
        page.raw("</span></p>");
    }
    page.raw("</td>\n");
}

/// A decision's action, time, score, repeats and whether it is enforced and active.
fn decision_summary(page: &mut Page, d: &Value, active: &[Value]) {
    let action = string(d, "action");
    match action {
        Some(a) => page.badge(&format!("{} action", action_class(a)), &a.replace('_', " ")),
        None => page.raw(DASH),
    }
    // What it was keyed on, when not the client itself (its credential, its address).
    if let Some(key) = string(d, "key").filter(|k| !k.starts_with("client:")) {
        page.raw(" on <code class=\"key\">");
        page.text(&risk_key(key));
        page.raw("</code>");
    }
    page.raw(" ");
    page.time(member(d, "at"));
    page.raw(" <span class=\"score\">score ");
    page.value(member(d, "score"));
    page.raw("</span>");
    if let Some(n) = number(d, "repeats").filter(|n| *n > 1) {
        page.raw(" <span class=\"repeats\">");
        page.text(&format!("×{}", thousands(n)));
        page.raw("</span>");
    }
    if member(d, "enforced").and_then(Value::as_bool) == Some(false) {
        page.raw(" ");
        page.badge("muted shadow", "shadow");
    }
    let key = string(d, "key");
    let in_force = active
        .iter()
        .find(|a| key.is_some() && string(a, "key") == key && string(a, "action") == action);
    if let Some(a) = in_force {
        page.raw(" <span class=\"badge bad in-force\">in force until ");
        page.time(member(a, "until"));
        page.raw("</span>");
    }
}

/// The `top` signals of a decision with the most points.
fn signals(page: &mut Page, d: &Value, top: usize) {
    let mut hits: Vec<&Value> = list(d, "signals").iter().collect();
    if hits.is_empty() {
        return;
    }
    hits.sort_by_key(|h| std::cmp::Reverse(number(h, "points").unwrap_or(0)));
    page.raw("<ol class=\"signals\">");
    for h in hits.iter().take(top) {
        page.raw("<li class=\"signal\"><code>");
        page.value(member(h, "signal"));
        page.raw("</code>");
        if let Some(p) = number(h, "points") {
            page.raw(" <span class=\"points\">");
            page.text(&format!("+{p}"));
            page.raw("</span>");
        }
        if let Some(reason) = scalar(member(h, "reason")) {
            page.raw(" <span class=\"reason\">");
            page.text(&reason);
            page.raw("</span>");
        }
        page.raw("</li>");
    }
    if hits.len() > top {
        page.raw("<li class=\"more\">");
        page.text(&format!("and {} more", hits.len() - top));
        page.raw("</li>");
    }
    page.raw("</ol>");
}

fn ungoverned_section(page: &mut Page, report: Option<&Value>, ungoverned: Option<&Value>) {
    page.raw("<section id=\"ungoverned\">\n<h2>Ungoverned callers</h2>\n");
    let Some(u) = ungoverned else {
        page.raw("<p class=\"note\">");
        page.text(if report.is_some() {
            "The gateway did not report ungoverned callers."
        } else {
            "No clients report in the document."
        });
        page.raw("</p>\n</section>\n");
        return;
    };
    page.raw("<p class=\"note\">");
    page.text(
        "Refused callers the inventory does not know: client ids named by tokens of a trusted issuer, \
         and API keys that match no client (by hash prefix). Onboard them or find out who they are.",
    );
    page.raw("</p>\n<h3>Clients</h3>\n<table id=\"ungoverned-clients\">\n<thead><tr>");
    for head in [
        "Client id",
        "Issuer",
        "First seen",
        "Last seen",
        "Requests",
        "Addresses",
        "Scopes asked",
    ] {
        page.raw("<th scope=\"col\">");
        page.text(head);
        page.raw("</th>");
    }
    page.raw("</tr></thead>\n<tbody>\n");
    let clients = list(u, "clients");
    if clients.is_empty() {
        page.raw("<tr class=\"empty\"><td colspan=\"7\">None.</td></tr>\n");
    }
    for c in clients {
        page.raw("<tr class=\"ungoverned-client\" data-client-id=\"");
        page.text(string(c, "client_id").unwrap_or_default());
        page.raw("\"><th scope=\"row\" class=\"client-id\" data-label=\"Client id\"><code>");
        page.value(member(c, "client_id"));
        page.raw("</code></th><td class=\"issuer\" data-label=\"Issuer\">");
        page.value(member(c, "issuer"));
        page.raw("</td><td data-label=\"First seen\">");
        page.time(member(c, "first_seen"));
        page.raw("</td><td data-label=\"Last seen\">");
        page.time(member(c, "last_seen"));
        page.raw("</td><td class=\"num\" data-label=\"Requests\">");
        page.value(number(c, "requests").map(thousands).map(Value::from).as_ref());
        page.raw("</td><td class=\"num\" data-label=\"Addresses\">");
        page.value(member(c, "addresses"));
        page.raw("</td><td class=\"scopes\" data-label=\"Scopes asked\">");
        let asked = scopes(member(c, "scopes"));
        if asked.is_empty() {
            page.raw(DASH);
        }
        for (i, s) in asked.iter().enumerate() {
            if i > 0 {
                page.raw(" ");
            }
            page.scope(s);
        }
        page.raw("</td></tr>\n");
    }
    page.raw("</tbody>\n</table>\n<h3>API keys</h3>\n<table id=\"ungoverned-keys\">\n<thead><tr>");
    for head in [
        "Key hash prefix",
        "First seen",
        "Last seen",
        "Requests",
        "Addresses",
    ] {
        page.raw("<th scope=\"col\">");
        page.text(head);
        page.raw("</th>");
    }
    page.raw("</tr></thead>\n<tbody>\n");
    let keys = list(u, "api_keys");
    if keys.is_empty() {
        page.raw("<tr class=\"empty\"><td colspan=\"5\">None.</td></tr>\n");
    }
    for k in keys {
        let fp = string(k, "fingerprint_prefix").map(fingerprint);
        page.raw("<tr class=\"ungoverned-key\" data-fingerprint=\"");
        page.text(fp.as_deref().unwrap_or_default());
        page.raw("\"><th scope=\"row\" data-label=\"Key hash prefix\"><code class=\"fingerprint\">");
        match &fp {
            Some(fp) => page.text(fp),
            None => page.raw(DASH),
        }
        page.raw("</code></th><td data-label=\"First seen\">");
        page.time(member(k, "first_seen"));
        page.raw("</td><td data-label=\"Last seen\">");
        page.time(member(k, "last_seen"));
        page.raw("</td><td class=\"num\" data-label=\"Requests\">");
        page.value(number(k, "requests").map(thousands).map(Value::from).as_ref());
        page.raw("</td><td class=\"num\" data-label=\"Addresses\">");
        page.value(member(k, "addresses"));
        page.raw("</td></tr>\n");
    }
    page.raw("</tbody>\n</table>\n");
    let evicted = number(u, "evicted").unwrap_or(0);
    if evicted > 0 {
        page.raw("<p class=\"note warn\">");
        page.text(&format!(
            "{} older entries were evicted to stay within the gateway's capacity of ",
            thousands(evicted)
        ));
        page.value(member(u, "capacity"));
        page.text(" per table: there were more.");
        page.raw("</p>\n");
    }
    page.raw("</section>\n");
}

fn risk_section(
    page: &mut Page,
    risk: Option<&Value>,
    decisions: &[Value],
    active: &[Value],
    known: &[&str],
) {
    page.raw("<section id=\"risk\">\n<h2>Risk decisions not tied to a client of the inventory</h2>\n");
    if risk.is_none() {
        page.raw("<p class=\"note\">");
        page.text("This gateway has no risk layer (or the document has no risk decisions).");
        page.raw("</p>\n</section>\n");
        return;
    }
    page.raw("<p class=\"note\">");
    page.text(
        "Decisions about addresses, networks, credentials and unknown clients; those about a client \
         of the inventory are in its row above.",
    );
    page.raw("</p>\n<table id=\"risk-decisions\">\n<thead><tr>");
    for head in [
        "When", "Action", "Key", "Client", "Score", "Address", "Route", "Signals",
    ] {
        page.raw("<th scope=\"col\">");
        page.text(head);
        page.raw("</th>");
    }
    page.raw("</tr></thead>\n<tbody>\n");
    let others: Vec<&Value> = decisions
        .iter()
        .filter(|d| string(d, "client").is_none_or(|c| !known.contains(&c)))
        .collect();
    if others.is_empty() {
        page.raw("<tr class=\"empty\"><td colspan=\"8\">None.</td></tr>\n");
    }
    for d in others {
        let key = string(d, "key").map(risk_key);
        page.raw("<tr class=\"decision\" data-key=\"");
        page.text(key.as_deref().unwrap_or_default());
        page.raw("\" data-action=\"");
        page.text(string(d, "action").unwrap_or_default());
        page.raw("\"><td data-label=\"When\">");
        page.time(member(d, "at"));
        if member(d, "last_at").is_some() && member(d, "last_at") != member(d, "at") {
            page.raw(" <span class=\"date\">last ");
            page.time(member(d, "last_at"));
            page.raw("</span>");
        }
        page.raw("</td><td data-label=\"Action\">");
        match string(d, "action") {
            Some(a) => page.badge(&format!("{} action", action_class(a)), &a.replace('_', " ")),
            None => page.raw(DASH),
        }
        if member(d, "enforced").and_then(Value::as_bool) == Some(false) {
            page.raw(" ");
            page.badge("muted shadow", "shadow");
        }
        if let Some(n) = number(d, "repeats").filter(|n| *n > 1) {
            page.raw(" <span class=\"repeats\">");
            page.text(&format!("×{}", thousands(n)));
            page.raw("</span>");
        }
        page.raw("</td><td class=\"key\" data-label=\"Key\"><code>");
        match &key {
            Some(k) => page.text(k),
            None => page.raw(DASH),
        }
        page.raw("</code></td><td data-label=\"Client\">");
        match string(d, "client") {
            Some(c) => {
                page.raw("<code>");
                page.text(c);
                page.raw("</code> ");
                page.badge("bad unknown-client", "not in inventory");
            }
            None => page.raw(DASH),
        }
        page.raw("</td><td class=\"num\" data-label=\"Score\">");
        page.value(member(d, "score"));
        page.raw("</td><td data-label=\"Address\">");
        page.value(member(d, "address"));
        page.raw("</td><td data-label=\"Route\">");
        page.value(member(d, "route"));
        page.raw("</td><td class=\"risk\" data-label=\"Signals\">");
        signals(page, d, 3);
        page.raw("</td></tr>\n");
    }
    page.raw("</tbody>\n</table>\n");

    page.raw("<h3>Actions in force</h3>\n");
    if active.is_empty() {
        page.raw("<p class=\"note\">None of the keys above is under an action now.</p>\n");
    } else {
        page.raw("<table id=\"risk-active\">\n<thead><tr>");
        for head in ["Key", "Action", "Until", "Score"] {
            page.raw("<th scope=\"col\">");
            page.text(head);
            page.raw("</th>");
        }
        page.raw("</tr></thead>\n<tbody>\n");
        for a in active {
            let key = string(a, "key").map(risk_key);
            page.raw("<tr class=\"active\" data-key=\"");
            page.text(key.as_deref().unwrap_or_default());
            page.raw("\"><td class=\"key\" data-label=\"Key\"><code>");
            match &key {
                Some(k) => page.text(k),
                None => page.raw(DASH),
            }
            page.raw("</code></td><td data-label=\"Action\">");
            match string(a, "action") {
                Some(act) => page.badge(&format!("{} action", action_class(act)), &act.replace('_', " ")),
                None => page.raw(DASH),
            }
            page.raw("</td><td data-label=\"Until\">");
            page.time(member(a, "until"));
            page.raw("</td><td class=\"num\" data-label=\"Score\">");
            page.value(member(a, "score"));
            page.raw("</td></tr>\n");
        }
        page.raw("</tbody>\n</table>\n");
    }
    page.raw("</section>\n");
}

fn unreachable_section(page: &mut Page, report: Option<&Value>) {
    let rules = report.map_or(&[][..], |r| list(r, "unreachable_rules"));
    if rules.is_empty() {
        return;
    }
    page.raw("<section id=\"unreachable\">\n<h2>Policy rules no client can pass</h2>\n<p class=\"note\">");
    page.text("No client of the inventory holds what these rules require: a route not yet in use, or a misspelt scope.");
    page.raw("</p>\n<ul>\n");
    for r in rules {
        page.raw("<li class=\"unreachable-rule\"><code>");
        page.value(member(r, "rule"));
        page.raw("</code>: needs <code>");
        page.value(member(r, "missing"));
        page.raw("</code></li>\n");
    }
    page.raw("</ul>\n</section>\n");
}

fn legend(page: &mut Page) {
    page.raw("<section id=\"legend\">\n<h2>Legend</h2>\n<dl class=\"legend\">\n");
    let entries = [
        ("ok", "active", "the client may be served"),
        ("bad", "suspended", "refused until reactivated"),
        (
            "warn",
            "in 8 days",
            "the registration expires within the inventory's warning window",
        ),
        (
            "bad",
            "expired 6 days ago",
            "the registration has expired: the client is refused",
        ),
        (
            "warn",
            "stale",
            "seen before, not since the report's unused-since time: retire it?",
        ),
        ("muted", "never seen", "no request since the usage store started"),
        (
            "bad",
            "no longer granted",
            "a scope it used that the inventory no longer grants",
        ),
        (
            "warn",
            "rotate",
            "an API key past its rotate-by date: it works, rotate it",
        ),
        (
            "bad",
            "too old",
            "an API key past the maximum key age: it is refused",
        ),
        ("bad", "block", "risk: the key's requests are refused (403)"),
        (
            "warn",
            "throttle",
            "risk: slowed to a small allowance (429 beyond it); step up: a fresh credential is required",
        ),
        ("muted", "shadow", "risk: the decision was logged, not enforced"),
        ("bad", "in force until", "risk: the action still holds"),
    ];
    for (class, label, meaning) in entries {
        page.raw("<div><dt>");
        page.badge(class, label);
        page.raw("</dt><dd>");
        page.text(meaning);
        page.raw("</dd></div>\n");
    }
    page.raw("<div><dt><span class=\"unused-sample\"><code class=\"scope\">scope</code></span></dt><dd>");
    page.text("granted and not exercised since the unused-since time: a candidate to remove from the grant");
    page.raw("</dd></div>\n</dl>\n</section>\n");
}

/// The page's style sheet: system fonts, a table that becomes cards on narrow
/// screens, and a print layout (landscape, rows kept whole, colours kept).
const CSS: &str = r#"
:root {
  --fg: #1d232b; --muted: #5d6673; --line: #d9dee5; --bg: #ffffff; --band: #f5f7fa;
  --ok: #1b7a3d; --ok-bg: #e3f4e8; --warn: #8a5300; --warn-bg: #fff0d1;
  --bad: #a8191f; --bad-bg: #fde2e2; --mute-bg: #eceff3; --accent: #24508f;
}
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body {
  margin: 0 auto; max-width: 1600px; padding: 24px 28px 40px;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", sans-serif;
  color: var(--fg); background: var(--bg);
}
code, time { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size: 0.86em; }
time { display: inline-block; }
.meta time { white-space: nowrap; }
h1 { font-size: 1.6rem; margin: 0 0 12px; }
h1 .sub { font-weight: 400; color: var(--muted); }
h2 { font-size: 1.2rem; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 1rem; margin: 18px 0 8px; }
a { color: inherit; text-decoration: none; }
.meta { display: flex; flex-wrap: wrap; gap: 6px 28px; margin: 0 0 14px; }
.meta dt { font-size: 0.75rem; text-transform: uppercase; letter-spacing: 0.04em; color: var(--muted); }
.meta dd { margin: 0; font-weight: 600; }
.totals { list-style: none; display: flex; flex-wrap: wrap; gap: 8px; padding: 0; margin: 0; }
.total a { display: block; padding: 6px 12px; border: 1px solid var(--line); border-radius: 8px; background: var(--band); }
.total .n { font-size: 1.25rem; font-weight: 700; margin-right: 2px; }
.total.warn a { background: var(--warn-bg); border-color: #f1c56b; color: var(--warn); }
.total.bad a { background: var(--bad-bg); border-color: #f0a3a3; color: var(--bad); }
.total.muted a { background: var(--mute-bg); }
table { width: 100%; border-collapse: collapse; font-size: 0.9rem; }
th, td { text-align: left; vertical-align: top; padding: 7px 8px; border-bottom: 1px solid var(--line); overflow-wrap: break-word; }
thead th { background: #e9edf3; font-size: 0.78rem; text-transform: uppercase; letter-spacing: 0.03em; color: #39424e; border-bottom: 2px solid #c5ccd6; }
tbody tr:nth-child(even) { background: var(--band); }
tr.suspended { color: var(--muted); }
#clients { table-layout: fixed; }
.col-client { width: 9%; } .col-owner { width: 9.5%; } .col-purpose { width: 11.5%; }
.col-status { width: 7.5%; } .col-expiry { width: 9%; } .col-seen { width: 8%; }
.col-scopes { width: 19%; } .col-credentials { width: 12%; } .col-risk { width: 14.5%; }
.client-id code { font-size: 0.95em; font-weight: 700; }
.expiry.warn { background: var(--warn-bg); }
.expiry.bad { background: var(--bad-bg); }
span.date, span.issuer { display: block; }
.date, .issuer, .last, .attempts, .uses, .repeats, .score, .age { color: var(--muted); font-size: 0.85em; }
.none { color: #9aa3ae; }
.badge {
  display: inline-block; padding: 0 6px; border-radius: 9px; font-size: 0.76rem; font-weight: 600;
  line-height: 1.5; max-width: 100%; background: var(--mute-bg); color: #3a434f; border: 1px solid #cfd5dd;
  white-space: nowrap; overflow-wrap: normal;
}
.badge.expired, .badge.in-force, .badge.not-granted, .badge.expiring-soon { white-space: normal; }
.badge.ok { background: var(--ok-bg); color: var(--ok); border-color: #9fd3b0; }
.badge.warn { background: var(--warn-bg); color: var(--warn); border-color: #f1c56b; }
.badge.bad { background: var(--bad-bg); color: var(--bad); border-color: #f0a3a3; }
.scopes dl { margin: 0; display: grid; grid-template-columns: auto 1fr; gap: 2px 8px; }
.scopes dt { font-size: 0.72rem; text-transform: uppercase; letter-spacing: 0.03em; color: var(--muted); padding-top: 2px; }
.scopes dd { margin: 0; }
.scopes ul, .credentials ul, .risk ul, .risk ol { margin: 0; padding: 0; list-style: none; }
.granted li, ul.unused li { display: inline; }
.granted li + li::before, ul.unused li + li::before { content: " "; }
code.scope { background: #eef2f7; border-radius: 4px; padding: 0 3px; }
ul.unused code.scope, .unused-sample code.scope { background: var(--warn-bg); color: var(--warn); text-decoration: line-through; text-decoration-thickness: 1px; }
ul.denied code.scope { background: var(--bad-bg); color: var(--bad); }
.credentials li + li, .risk li.decision + li.decision { margin-top: 6px; padding-top: 6px; border-top: 1px dashed var(--line); }
.token { margin: 6px 0 0; }
.token-age { font-weight: 600; }
.risk ol.signals { margin-top: 2px; font-size: 0.85em; }
.risk ol.signals li { padding-left: 10px; text-indent: -10px; }
.points { font-weight: 700; color: var(--bad); }
.reason { color: var(--muted); }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: var(--muted); margin: 4px 0 10px; max-width: 90ch; }
.note.warn { color: var(--warn); }
tr.empty td { color: var(--muted); font-style: italic; }
.legend { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 6px 24px; margin: 0; }
.legend div { display: flex; gap: 10px; align-items: baseline; }
.legend dt { flex: 0 0 auto; }
.legend dd { margin: 0; color: var(--muted); font-size: 0.88rem; }
footer { margin-top: 32px; padding-top: 10px; border-top: 1px solid var(--line); color: var(--muted); font-size: 0.8rem; }
@media screen and (min-width: 1001px) {
  thead th { position: sticky; top: 0; z-index: 1; }
}
@media (max-width: 1000px) {
  body { padding: 14px; }
  table, thead, tbody, tr, th, td { display: block; width: auto !important; }
  colgroup { display: none; }
  thead { position: absolute; left: -9999px; }
  tbody tr { border: 1px solid var(--line); border-radius: 8px; margin: 0 0 12px; padding: 6px 10px; }
  th, td { border: 0; padding: 4px 0; }
  td[data-label]::before, th[data-label]::before {
    content: attr(data-label); display: block; font-size: 0.7rem; text-transform: uppercase;
    letter-spacing: 0.04em; color: var(--muted);
  }
  td.num { text-align: left; }
}
@media print {
  @page { size: A4 landscape; margin: 10mm; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  body { max-width: none; padding: 0; font-size: 8.5pt; }
  h2 { break-after: avoid; }
  tr, .legend div { break-inside: avoid; }
  thead { display: table-header-group; }
  .total a { padding: 2px 8px; }
}
"#;

#[cfg(test)]
mod tests {
    use scraper::{ElementRef, Html, Selector};
    use serde_json::json;

    use super::*;

    const FIXTURE: &str = include_str!("../tests/fixtures/report.json");

    fn fixture() -> Value {
        serde_json::from_str(FIXTURE).expect("the fixture is JSON")
    }

    fn sel(css: &str) -> Selector {
        Selector::parse(css).unwrap_or_else(|e| panic!("selector {css:?}: {e}"))
    }

    /// Parses a rendered page, asserting that html5ever found no error in it.
    fn parse(page: &str) -> Html {
        let html = Html::parse_document(page);
        assert!(html.errors.is_empty(), "HTML errors: {:?}", html.errors);
        html
    }

    fn all<'a>(root: ElementRef<'a>, css: &str) -> Vec<ElementRef<'a>> {
        root.select(&sel(css)).collect()
    }

    fn one<'a>(root: ElementRef<'a>, css: &str) -> ElementRef<'a> {
        let found = all(root, css);
        assert_eq!(found.len(), 1, "{css}: {} matches", found.len());
        found[0]
    }

    fn text(e: ElementRef<'_>) -> String {
        e.text()
            .collect::<String>()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn has_class(e: ElementRef<'_>, class: &str) -> bool {
        e.value().classes().any(|c| c == class)
    }

    fn row<'a>(html: &'a Html, id: &str) -> ElementRef<'a> {
        one(
            html.root_element(),
            &format!("table#clients tr.client[data-client-id=\"{id}\"]"),
        )
    }

    /// No script, no external resource, nothing that fetches: a self-contained page.
    fn assert_self_contained(html: &Html) {
        let root = html.root_element();
        for tag in [
            "script", "link", "iframe", "object", "embed", "img", "base", "form", "svg", "video", "audio",
        ] {
            assert!(all(root, tag).is_empty(), "a <{tag}> element");
        }
        for e in root.descendent_elements() {
            for (name, value) in e.value().attrs() {
                assert!(
                    !name.starts_with("on"),
                    "event handler {name} on <{}>",
                    e.value().name()
                );
                if matches!(name, "src" | "href" | "action" | "srcset" | "poster" | "data") {
                    let v = value.trim().to_ascii_lowercase();
                    assert!(
                        v.starts_with('#'),
                        "<{} {name}={value:?}> leaves the page",
                        e.value().name()
                    );
                }
            }
        }
        for style in all(root, "style") {
            let css = text(style).to_ascii_lowercase();
            assert!(
                !css.contains("url(") && !css.contains("@import"),
                "CSS that fetches"
            );
        }
        assert_eq!(
            one(root, "meta[charset]").value().attr("charset"),
            Some("utf-8"),
            "UTF-8 declared"
        );
        assert!(!text(one(root, "head > title")).is_empty());
    }

    #[test]
    fn one_row_per_client_in_report_order() {
        let html = parse(&render(&fixture()));
        let ids: Vec<&str> = html
            .select(&sel("table#clients > tbody > tr.client"))
            .map(|r| r.value().attr("data-client-id").expect("data-client-id"))
            .collect();
        assert_eq!(
            ids,
            [
                "billing-export",
                "inventory-sync",
                "legacy-reporter",
                "partner-acme",
                "etl-nightly",
                "old-migration",
                "orders-frontend"
            ]
        );
        let r = row(&html, "billing-export");
        assert_eq!(text(one(r, "td.owner")), "finance-platform@example.com");
        assert_eq!(
            text(one(r, "td.purpose")),
            "Nightly export of invoices to the ledger"
        );
        assert!(!all(r, "td.status .status-active").is_empty());
        assert!(!all(row(&html, "etl-nightly"), "td.status .status-suspended").is_empty());
        assert_self_contained(&html);
    }

    #[test]
    fn header_totals_and_times() {
        let html = parse(&render(&fixture()));
        let root = html.root_element();
        let total = |key: &str| text(one(root, &format!("#totals [data-total=\"{key}\"] .n")));
        assert_eq!(total("clients"), "7");
        assert_eq!(total("stale"), "2");
        assert_eq!(total("never-seen"), "2");
        assert_eq!(total("expiring-soon"), "1");
        assert_eq!(total("expired"), "1");
        assert_eq!(total("suspended"), "1");
        assert_eq!(total("ungoverned"), "3");
        assert_eq!(total("keys-due"), "2");
        assert!(has_class(one(root, "#totals [data-total=\"ungoverned\"]"), "bad"));
        assert_eq!(text(one(root, "header .gateway")), "http://127.0.0.1:8080");
        let generated = one(root, "header .generated-at time");
        assert_eq!(generated.value().attr("datetime"), Some("2026-12-07T10:00:00Z"));
        assert_eq!(text(generated), "2026-12-07 10:00 UTC");
        assert_eq!(
            text(one(root, "header .unused-since time")),
            "2026-11-07 10:00 UTC"
        );
        // The gateway is text, not a link.
        assert!(all(root, "header .gateway a").is_empty());
    }

    #[test]
    fn expiry_is_highlighted() {
        let html = parse(&render(&fixture()));
        let soon = one(row(&html, "inventory-sync"), "td.expiry");
        assert!(has_class(soon, "warn") && !has_class(soon, "bad"));
        assert!(text(soon).starts_with("in 8 days"), "{}", text(soon));
        let expired = one(row(&html, "old-migration"), "td.expiry");
        assert!(has_class(expired, "bad"));
        assert!(
            text(expired).starts_with("expired 6 days ago"),
            "{}",
            text(expired)
        );
        let fine = one(row(&html, "billing-export"), "td.expiry");
        assert!(!has_class(fine, "warn") && !has_class(fine, "bad"));
        assert_eq!(text(fine), "in 204 days 2027-06-30 00:00 UTC");
    }

    #[test]
    fn stale_and_never_seen_badges() {
        let html = parse(&render(&fixture()));
        for id in ["legacy-reporter", "old-migration"] {
            let seen = one(row(&html, id), "td.seen");
            assert_eq!(all(seen, ".badge.stale").len(), 1, "{id}");
            assert_eq!(all(seen, "time").len(), 1, "{id}: when it was last seen");
        }
        for id in ["etl-nightly", "orders-frontend"] {
            assert_eq!(
                text(one(row(&html, id), "td.seen .badge.never-seen")),
                "never seen"
            );
        }
        let fresh = one(row(&html, "inventory-sync"), "td.seen");
        assert!(all(fresh, ".badge").is_empty());
        assert_eq!(text(fresh), "2026-12-07 09:59 UTC");
    }

    #[test]
    fn scopes_granted_used_unused_denied() {
        let html = parse(&render(&fixture()));
        let scopes = |id: &str, list: &str| -> Vec<String> {
            all(row(&html, id), &format!("td.scopes ul.{list} > li code.scope"))
                .into_iter()
                .map(text)
                .collect()
        };
        assert_eq!(
            scopes("billing-export", "granted"),
            ["invoices:read", "invoices:write", "ledger:write"]
        );
        assert_eq!(scopes("billing-export", "unused"), ["invoices:write"]);
        assert_eq!(
            scopes("orders-frontend", "unused"),
            ["inventory:read", "orders:read", "orders:write"]
        );
        assert!(scopes("inventory-sync", "unused").is_empty());
        let used = one(
            row(&html, "inventory-sync"),
            "td.scopes li.used-scope[data-scope=\"inventory:read\"]",
        );
        assert_eq!(text(used), "inventory:read ×95,210 last 2026-12-07 09:59 UTC");
        let acme = row(&html, "partner-acme");
        let no_longer = one(acme, "li.used-scope[data-scope=\"orders:read\"]");
        assert_eq!(all(no_longer, ".badge.not-granted").len(), 1);
        assert_eq!(
            scopes("partner-acme", "denied"),
            ["orders:read", "customers:read"]
        );
        assert!(text(one(acme, "ul.denied")).contains("1,840 refused"));
    }

    #[test]
    fn keys_with_age_and_rotation_badges_and_the_newest_token() {
        let html = parse(&render(&fixture()));
        let acme = row(&html, "partner-acme");
        let old = one(
            acme,
            "td.credentials li.api-key[data-fingerprint=\"sha256:c04a11e9\"]",
        );
        assert!(text(old).contains("413 days old"), "{}", text(old));
        assert_eq!(all(old, ".badge.too-old").len(), 1);
        assert_eq!(all(old, ".badge.rotation-due").len(), 1);
        let new = one(acme, "li.api-key[data-fingerprint=\"sha256:5d93f2aa\"]");
        assert!(all(new, ".badge").is_empty());
        let due = one(
            row(&html, "legacy-reporter"),
            "li.api-key[data-fingerprint=\"sha256:b7e20d54\"]",
        );
        assert_eq!(all(due, ".badge.rotation-due").len(), 1);
        assert!(all(due, ".badge.too-old").is_empty());
        let undated = one(row(&html, "orders-frontend"), "li.api-key");
        assert!(text(undated).contains("age unknown"));

        let token = one(row(&html, "inventory-sync"), "td.credentials p.token");
        assert_eq!(text(one(token, ".token-age")), "5 minutes");
        assert_eq!(token_age(3_599), "59 minutes");
        assert_eq!(token_age(3_600), "1 hour");
        assert_eq!(token_age(20 * 3_600), "20 hours");
        assert_eq!(token_age(2 * 86_400), "2 days");
        assert_eq!(
            text(one(row(&html, "old-migration"), "td.credentials .token-age")),
            "83 days"
        );
        assert_eq!(text(one(row(&html, "etl-nightly"), "td.credentials")), "—");
    }

    #[test]
    fn risk_actions_in_the_client_rows_and_the_rest_in_the_risk_section() {
        let html = parse(&render(&fixture()));
        let acme = all(row(&html, "partner-acme"), "td.risk li.decision");
        let actions: Vec<_> = acme.iter().map(|d| d.value().attr("data-action")).collect();
        assert_eq!(actions, [Some("block"), Some("step_up")]);
        let block = text(acme[0]);
        assert!(block.contains("score 92") && block.contains("×14"), "{block}");
        assert_eq!(all(acme[0], ".badge.in-force").len(), 1, "still blocked");
        let signals: Vec<String> = all(acme[0], "li.signal code").into_iter().map(text).collect();
        assert_eq!(signals, ["enumeration", "hoarding", "rate_surge"], "by points");
        assert_eq!(all(acme[1], ".badge.shadow").len(), 1, "step-up not enforced");
        let sync = all(row(&html, "inventory-sync"), "td.risk li.decision");
        assert_eq!(sync.len(), 1);
        assert!(all(sync[0], ".badge.in-force").is_empty(), "lapsed");
        assert_eq!(text(one(row(&html, "billing-export"), "td.risk")), "—");

        let others: Vec<_> = html
            .select(&sel("section#risk table#risk-decisions tr.decision"))
            .map(|d| d.value().attr("data-key").expect("data-key"))
            .collect();
        assert_eq!(others, ["addr:203.0.113.7", "net:192.0.2.0/24"]);
        let active: Vec<_> = html
            .select(&sel("section#risk #risk-active tr.active"))
            .map(|d| d.value().attr("data-key").expect("data-key"))
            .collect();
        assert_eq!(active, ["client:partner-acme", "addr:203.0.113.7"]);
        // A credential's fingerprint is cut to the key prefix length.
        let page = render(&fixture());
        assert!(!page.contains("c04a11e94f2b8d1706aa3e51"));
        assert!(page.contains("cred:c04a11e9…"));
    }

    #[test]
    fn ungoverned_clients_and_keys() {
        let html = parse(&render(&fixture()));
        let ids: Vec<_> = html
            .select(&sel(
                "section#ungoverned table#ungoverned-clients tr.ungoverned-client",
            ))
            .map(|r| r.value().attr("data-client-id").expect("data-client-id"))
            .collect();
        assert_eq!(ids, ["shadow-etl", "ci-runner-42"]);
        let shadow = one(
            html.root_element(),
            "tr.ungoverned-client[data-client-id=\"shadow-etl\"]",
        );
        assert!(
            text(shadow).contains("customers:read orders:read"),
            "{}",
            text(shadow)
        );
        let keys: Vec<_> = html
            .select(&sel("section#ungoverned tr.ungoverned-key"))
            .map(|r| r.value().attr("data-fingerprint").expect("data-fingerprint"))
            .collect();
        assert_eq!(keys, ["sha256:9f86d081"]);
        assert!(
            all(
                html.root_element(),
                "table#clients tr[data-client-id=\"shadow-etl\"]"
            )
            .is_empty()
        );
    }

    #[test]
    fn hostile_strings_are_text_not_markup() {
        let evil = "<script>alert(1)</script>\"'&amp;<img src=x onerror=alert(2)>";
        let doc = json!({
            "gateway": evil,
            "clients_report": {
                "generated_at": evil,
                "clients": [{
                    "client_id": evil, "owner": evil, "purpose": evil, "status": evil,
                    "granted": [evil], "unused": evil, "used": [{ "scope": evil, "uses": 1, "last_used": evil }],
                    "api_keys": [{ "fingerprint_prefix": evil }],
                    "newest_token": { "issued_at": evil },
                }],
                "ungoverned": { "clients": [{ "client_id": evil, "issuer": evil, "scopes": [evil] }],
                                "api_keys": [{ "fingerprint_prefix": evil }] },
                "unreachable_rules": [{ "rule": evil, "missing": evil }],
            },
            "risk_decisions": { "decisions": [
                { "client": evil, "key": evil, "action": evil, "route": evil, "signals": [{ "signal": evil, "reason": evil }] },
                { "client": null, "key": evil, "action": evil, "route": evil, "address": evil,
                  "signals": [{ "signal": evil, "reason": evil }] },
            ], "active": [{ "key": evil, "action": evil }] },
        });
        let page = render(&doc);
        assert!(
            !page.contains("<script") && !page.contains("<img"),
            "raw markup from the document"
        );
        let html = parse(&page);
        assert_self_contained(&html);
        let root = html.root_element();
        let r = one(root, "table#clients tr.client");
        assert_eq!(
            r.value().attr("data-client-id"),
            Some(evil),
            "the attribute round-trips"
        );
        assert_eq!(text(one(r, "th.client-id")), text_of(evil));
        assert_eq!(text(one(r, "td.purpose")), text_of(evil));
        assert_eq!(text(one(r, "td.owner")), text_of(evil));
        assert_eq!(
            one(root, "tr.ungoverned-client").value().attr("data-client-id"),
            Some(evil)
        );
        assert_eq!(text(one(root, "header .gateway")), text_of(evil));
        assert!(text(one(root, "head > title")).contains("<script>alert(1)</script>"));
        assert!(text(one(r, "td.risk .reason")).contains("onerror=alert(2)"));
        let other = one(root, "#risk tr.decision");
        assert_eq!(other.value().attr("data-key"), Some(evil));
        assert!(text(one(other, ".reason")).contains("onerror=alert(2)"));
    }

    /// `s` with its whitespace runs folded, as [`text`] reads it.
    fn text_of(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn minimal_and_malformed_documents_render() {
        let empty_ish = [
            json!({}),
            json!(null),
            json!([1, 2]),
            json!("text"),
            json!({ "clients_report": null, "risk_decisions": null }),
            json!({ "clients_report": {}, "risk_decisions": {} }),
            json!({ "gateway": 42, "clients_report": { "clients": "none", "ungoverned": 5, "stale_clients": "x" },
                    "risk_decisions": { "decisions": {}, "active": 1 } }),
        ];
        for doc in empty_ish {
            let html = parse(&render(&doc));
            assert_self_contained(&html);
            let root = html.root_element();
            assert_eq!(all(root, "table#clients").len(), 1, "{doc}");
            assert!(all(root, "tr.client").is_empty(), "{doc}");
            assert_eq!(all(root, "section#ungoverned").len(), 1);
            assert_eq!(all(root, "section#risk").len(), 1);
            assert_eq!(text(one(root, "#totals [data-total=\"clients\"] .n")), "0");
        }

        let members_missing = json!({
            "clients_report": { "clients": [{}, null, 3, { "client_id": "x", "days_left": "-2", "used": [{}],
                "denied": [null], "api_keys": [{}], "newest_token": {}, "granted": [1, null, "a"] }],
                "ungoverned": { "clients": [{}], "api_keys": [{}], "evicted": 3 } },
            "risk_decisions": { "decisions": [{}, { "client": "x" }, { "client": "x", "signals": [{}, 7] }],
                                "active": [{}] },
        });
        let html = parse(&render(&members_missing));
        assert_self_contained(&html);
        let rows = all(html.root_element(), "tr.client");
        assert_eq!(rows.len(), 4);
        assert_eq!(text(one(rows[0], "td.owner")), "—");
        assert_eq!(text(one(rows[0], "td.expiry")), "—");
        let x = row(&html, "x");
        assert!(has_class(one(x, "td.expiry"), "bad"), "a numeric string is read");
        assert_eq!(all(x, "td.risk li.decision").len(), 2);
        assert_eq!(
            all(x, "ul.granted code.scope")
                .into_iter()
                .map(text)
                .collect::<Vec<_>>(),
            ["1", "a"]
        );
    }

    #[test]
    fn scope_sets_as_one_string_are_read_too() {
        let doc = json!({ "clients_report": { "clients": [
            { "client_id": "c", "granted": "a:read  b:write", "unused": "b:write" },
        ] } });
        let html = parse(&render(&doc));
        let granted: Vec<_> = all(row(&html, "c"), "ul.granted code.scope")
            .into_iter()
            .map(text)
            .collect();
        assert_eq!(granted, ["a:read", "b:write"]);
        assert_eq!(text(one(row(&html, "c"), "ul.unused")), "b:write");
    }

    #[test]
    fn never_more_of_a_hash_than_its_prefix() {
        let full = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let doc = json!({ "clients_report": {
            "clients": [{ "client_id": "c", "api_keys": [{ "fingerprint_prefix": format!("sha256:{full}") }] }],
            "ungoverned": { "api_keys": [{ "fingerprint_prefix": format!("sha256:{full}") }] },
        } });
        let page = render(&doc);
        assert!(!page.contains(&full[..9]), "no more than 8 hex digits");
        let html = parse(&page);
        assert_eq!(
            one(html.root_element(), "li.api-key")
                .value()
                .attr("data-fingerprint"),
            Some("sha256:9f86d081…")
        );
        assert_eq!(fingerprint("sha256:9f86d081"), "sha256:9f86d081");
        assert_eq!(risk_key("cred:0123456789abcdef01234567"), "cred:01234567…");
        assert_eq!(risk_key("addr:10.0.0.1"), "addr:10.0.0.1");
    }

    #[test]
    fn small_formatters() {
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(pretty_time("2026-12-07T10:00:00Z"), "2026-12-07 10:00 UTC");
        assert_eq!(
            pretty_time("2026-12-07T10:00:00.123456789Z"),
            "2026-12-07 10:00 UTC"
        );
        assert_eq!(
            pretty_time("2026-12-07T10:00:00+02:00"),
            "2026-12-07 10:00 +02:00"
        );
        assert_eq!(pretty_time("yesterday"), "yesterday");
        assert_eq!(pretty_time("2026-12-07T1é:00"), "2026-12-07T1é:00");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_200_455), "1,200,455");
        assert_eq!(thousands(-1_000), "-1,000");
        assert_eq!(days(1), "1 day");
        assert_eq!(days(-1), "-1 day");
        assert_eq!(days(12), "12 days");
    }
}
