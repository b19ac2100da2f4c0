//! Strict TOML loading of the inventory: every error names the client (or tier) and
//! the field.

use std::time::SystemTime;

use ipnet::IpNet;
use toml::{Table, Value};

use crate::registry::{
    ApiKeyDates, ApiKeyHash, ClientRecord, ClientStatus, DEFAULT_TIER, InventoryBuilder, InventoryError,
    InventoryErrorKind as Kind, Tier, client_error, file_error, tier_error, with_index,
};
use crate::scope::ScopeSet;

const CLIENT_FIELDS: &[&str] = &[
    "id",
    "owner",
    "purpose",
    "expires",
    "scopes",
    "tier",
    "networks",
    "status",
    "api_keys",
    "spiffe_ids",
    "issuers",
    "labels",
];
const TIER_FIELDS: &[&str] = &["per_second", "burst", "max_key_age_days"];

pub(crate) fn parse(text: &str) -> Result<InventoryBuilder, InventoryError> {
    let doc: Table = text
        .parse()
        .map_err(|e: toml::de::Error| file_error(Kind::Syntax, None, e.to_string().trim_end().to_owned()))?;
    let mut builder = InventoryBuilder::default();
    for key in doc.keys() {
        if key != "client" && key != "tiers" && key != "keys" {
            return Err(file_error(
                Kind::UnknownField,
                Some(key),
                "unknown top-level key; expected `[[client]]`, `[tiers.NAME]` or `[keys]`".into(),
            ));
        }
    }
    if let Some(keys) = doc.get("keys") {
        let bad = |field: Option<&str>, kind, message: &str| file_error(kind, field, message.to_owned());
        let keys = keys
            .as_table()
            .ok_or_else(|| bad(Some("keys"), Kind::Invalid, "must be a table `[keys]`"))?;
        for (field, value) in keys {
            match (field.as_str(), value) {
                ("max_age_days", Value::Integer(days)) if (1..=36_500).contains(days) => {
                    builder = builder.max_key_age(std::time::Duration::from_secs(*days as u64 * 86_400));
                }
                ("max_age_days", _) => {
                    return Err(bad(
                        Some("keys.max_age_days"),
                        Kind::Invalid,
                        "must be a number of days from 1 to 36500",
                    ));
                }
                (other, _) => {
                    return Err(file_error(
                        Kind::UnknownField,
                        Some(&format!("keys.{other}")),
                        "unknown field; expected `max_age_days`".into(),
                    ));
                }
            }
        }
    }
    if let Some(tiers) = doc.get("tiers") {
        let tiers = tiers.as_table().ok_or_else(|| {
            file_error(
                Kind::Invalid,
                Some("tiers"),
                "must be a table of `[tiers.NAME]`".into(),
            )
        })?;
        for (name, value) in tiers {
            builder = builder.tier(name.clone(), parse_tier(name, value)?);
            match value.get("max_key_age_days") {
                None => {}
                Some(Value::Integer(days)) if (1..=36_500).contains(days) => {
                    builder = builder.tier_max_key_age(
                        name.clone(),
                        std::time::Duration::from_secs(*days as u64 * 86_400),
                    );
                }
                Some(_) => {
                    return Err(tier_error(
                        name,
                        Some("max_key_age_days"),
                        Kind::Invalid,
                        "must be a number of days from 1 to 36500".into(),
                    ));
                }
            }
        }
    }
    if let Some(clients) = doc.get("client") {
        let clients = clients.as_array().ok_or_else(|| {
            file_error(
                Kind::Invalid,
                Some("client"),
                "must be an array of `[[client]]` tables".into(),
            )
        })?;
        for (index, value) in clients.iter().enumerate() {
            let record = parse_client(index, value).map_err(|e| with_index(e, index))?;
            builder = builder.client(record);
        }
    }
    Ok(builder)
}

fn parse_tier(name: &str, value: &Value) -> Result<Tier, InventoryError> {
    let table = value
        .as_table()
        .ok_or_else(|| tier_error(name, None, Kind::Invalid, "must be a table".into()))?;
    if let Some(unknown) = table.keys().find(|k| !TIER_FIELDS.contains(&k.as_str())) {
        return Err(tier_error(
            name,
            Some(unknown),
            Kind::UnknownField,
            "unknown field; expected `per_second`, `burst` or `max_key_age_days`".into(),
        ));
    }
    let int = |field: &str| -> Result<u32, InventoryError> {
        match table.get(field) {
            None => Err(tier_error(name, Some(field), Kind::Missing, "missing".into())),
            Some(Value::Integer(n)) => u32::try_from(*n).ok().filter(|n| *n > 0).ok_or_else(|| {
                tier_error(
                    name,
                    Some(field),
                    Kind::Invalid,
                    format!("must be between 1 and {}, found {n}", u32::MAX),
                )
            }),
            Some(other) => Err(tier_error(
                name,
                Some(field),
                Kind::Invalid,
                format!("must be an integer, found {}", other.type_str()),
            )),
        }
    };
    Ok(Tier {
        per_second: int("per_second")?,
        burst: int("burst")?,
    })
}

struct ClientFields<'a> {
    id: Option<String>,
    index: usize,
    table: &'a Table,
}

impl ClientFields<'_> {
    fn err(&self, field: &str, kind: Kind, message: String) -> InventoryError {
        client_error(self.id.clone(), self.index, field, kind, message)
    }

    fn string(&self, field: &str) -> Result<Option<&str>, InventoryError> {
        match self.table.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.err(
                field,
                Kind::Invalid,
                format!("must be a string, found {}", other.type_str()),
            )),
        }
    }

    fn required_string(&self, field: &str) -> Result<&str, InventoryError> {
        match self.string(field)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(self.err(field, Kind::Missing, "must not be empty".into())),
            None => Err(self.err(field, Kind::Missing, "missing required field".into())),
        }
    }

    fn strings(&self, field: &str) -> Result<Option<Vec<&str>>, InventoryError> {
        match self.table.get(field) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().ok_or_else(|| {
                        self.err(
                            field,
                            Kind::Invalid,
                            format!(
                                "must be an array of strings, found an element of type {}",
                                v.type_str()
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(self.err(
                field,
                Kind::Invalid,
                format!("must be an array of strings, found {}", other.type_str()),
            )),
        }
    }
}

fn parse_client(index: usize, value: &Value) -> Result<ClientRecord, InventoryError> {
    let table = value
        .as_table()
        .ok_or_else(|| client_error(None, index, "client", Kind::Invalid, "must be a table".into()))?;
    let mut f = ClientFields {
        id: None,
        index,
        table,
    };
    let id = f.required_string("id")?.to_owned();
    f.id = Some(id.clone());
    if let Some(unknown) = table.keys().find(|k| !CLIENT_FIELDS.contains(&k.as_str())) {
        return Err(f.err(
            unknown,
            Kind::UnknownField,
            format!("unknown field; expected one of {}", CLIENT_FIELDS.join(", ")),
        ));
    }
    let owner = f.required_string("owner")?;
    let purpose = f.required_string("purpose")?;
    let expires = parse_expires(&f)?;

    let mut b = ClientRecord::builder(id, owner, purpose, expires);
    if let Some(scopes) = f.strings("scopes")? {
        let set =
            ScopeSet::try_from_iter(&scopes).map_err(|e| f.err("scopes", Kind::Invalid, e.to_string()))?;
        b = b.scopes(set);
    }
    b = b.tier(f.string("tier")?.unwrap_or(DEFAULT_TIER));
    if let Some(nets) = f.strings("networks")? {
        if nets.is_empty() {
            return Err(f.err(
                "networks",
                Kind::Invalid,
                "an empty list would refuse every address; remove the field to allow any".into(),
            ));
        }
        for net in nets {
            b = b.network(parse_network(net).map_err(|m| f.err("networks", Kind::Invalid, m))?);
        }
    }
    match f.string("status")? {
        None | Some("active") => {}
        Some("suspended") => b = b.status(ClientStatus::Suspended),
        Some(other) => {
            return Err(f.err(
                "status",
                Kind::Invalid,
                format!("{other:?} is not a status; expected \"active\" or \"suspended\""),
            ));
        }
    }
    for (hash, dates) in parse_api_keys(&f)? {
        b = b.api_key_hash_dated(hash, dates);
    }
    for sid in f.strings("spiffe_ids")?.unwrap_or_default() {
        b = b.spiffe_id(sid);
    }
    if let Some(issuers) = f.strings("issuers")? {
        if issuers.is_empty() {
            return Err(f.err(
                "issuers",
                Kind::Invalid,
                "an empty list is ambiguous; list the issuers whose tokens may name this client, \
                 or remove the field"
                    .into(),
            ));
        }
        for iss in issuers {
            b = b.issuer(iss);
        }
    }
    match table.get("labels") {
        None => {}
        Some(Value::Table(labels)) => {
            for (k, v) in labels {
                let v = v.as_str().ok_or_else(|| {
                    f.err(
                        &format!("labels.{k}"),
                        Kind::Invalid,
                        format!("label values must be strings, found {}", v.type_str()),
                    )
                })?;
                b = b.label(k.clone(), v);
            }
        }
        Some(other) => {
            return Err(f.err(
                "labels",
                Kind::Invalid,
                format!("must be a table of strings, found {}", other.type_str()),
            ));
        }
    }
    b.build()
}

fn parse_expires(f: &ClientFields<'_>) -> Result<SystemTime, InventoryError> {
    let text = match f.table.get("expires") {
        None => return Err(f.err("expires", Kind::Missing, "missing required field".into())),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Datetime(dt)) => dt.to_string(),
        Some(other) => {
            return Err(f.err(
                "expires",
                Kind::Invalid,
                format!("must be an RFC 3339 date-time string, found {}", other.type_str()),
            ));
        }
    };
    crate::parse_rfc3339(&text).map_err(|e| {
        f.err(
            "expires",
            Kind::Invalid,
            format!("{text:?} is not an RFC 3339 date-time with offset (e.g. \"2027-06-30T00:00:00Z\"): {e}"),
        )
    })
}

/// `api_keys`: each a `"sha256:…"` string, or `{ hash = "sha256:…", created =
/// "…", rotate_by = "…" }` with optional dates.
fn parse_api_keys(f: &ClientFields<'_>) -> Result<Vec<(ApiKeyHash, ApiKeyDates)>, InventoryError> {
    let items = match f.table.get("api_keys") {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(f.err(
                "api_keys",
                Kind::Invalid,
                format!("must be an array, found {}", other.type_str()),
            ));
        }
    };
    let invalid = |m: String| f.err("api_keys", Kind::Invalid, m);
    let date = |t: &Table, field: &str| -> Result<Option<SystemTime>, InventoryError> {
        let text = match t.get(field) {
            None => return Ok(None),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Datetime(dt)) => dt.to_string(),
            Some(other) => {
                return Err(invalid(format!(
                    "{field} must be an RFC 3339 date-time, found {}",
                    other.type_str()
                )));
            }
        };
        crate::parse_rfc3339(&text).map(Some).map_err(|e| {
            invalid(format!(
                "{field} {text:?} is not an RFC 3339 date-time with offset: {e}"
            ))
        })
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let (hash, dates) = match item {
            Value::String(h) => (h.as_str(), ApiKeyDates::default()),
            Value::Table(t) => {
                if let Some(k) = t
                    .keys()
                    .find(|k| !matches!(k.as_str(), "hash" | "created" | "rotate_by"))
                {
                    return Err(f.err(
                        &format!("api_keys.{k}"),
                        Kind::UnknownField,
                        "unknown field; expected hash, created, rotate_by".into(),
                    ));
                }
                let hash = t
                    .get("hash")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("an entry as a table needs `hash = \"sha256:…\"`".into()))?;
                let dates = ApiKeyDates::new(date(t, "created")?, date(t, "rotate_by")?);
                if let (Some(c), Some(r)) = (dates.created, dates.rotate_by)
                    && r < c
                {
                    return Err(invalid(format!("{hash}: rotate_by is before created")));
                }
                (hash, dates)
            }
            other => {
                return Err(invalid(format!(
                    "each entry is a \"sha256:…\" string or a table, found {}",
                    other.type_str()
                )));
            }
        };
        out.push((ApiKeyHash::parse(hash).map_err(invalid)?, dates));
    }
    Ok(out)
}

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address (a host route).
fn parse_network(s: &str) -> Result<IpNet, String> {
    let net = match s.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => match s.parse::<std::net::IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => {
                return Err(format!(
                    "{s:?} is not a CIDR such as \"10.0.0.0/8\" or an IP address"
                ));
            }
        },
    };
    if net.trunc() != net {
        return Err(format!(
            "{s:?} has host bits set; did you mean \"{}\"?",
            net.trunc()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Inventory;

    const VALID: &str = r#"
[[client]]
id = "inventory-sync"
owner = "fulfilment-team@example.com"
purpose = "Syncs stock levels from the warehouse system"
expires = "2027-06-30T00:00:00Z"
scopes = ["orders:read", "orders:write", "inventory:read"]
tier = "standard"
networks = ["127.0.0.0/8", "::1"]
status = "active"
api_keys = ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
spiffe_ids = ["spiffe://example.test/ns/prod/sa/inventory-sync"]
labels = { team = "fulfilment", env = "prod" }

[[client]]
id = "reporting-bot"
owner = "bi@example.com"
purpose = "Weekly sales report"
expires = 2027-01-01T00:00:00+01:00
scopes = ["orders:read"]
status = "suspended"

[tiers.standard]
per_second = 50
burst = 100
"#;

    #[test]
    fn loads_a_valid_file() {
        let inv = Inventory::from_toml_str(VALID).expect("valid inventory");
        assert_eq!(inv.len(), 2);
        let c = inv.client("inventory-sync").expect("client");
        assert_eq!(c.owner(), "fulfilment-team@example.com");
        assert_eq!(c.tier(), "standard");
        assert_eq!(c.scopes().to_string(), "inventory:read orders:read orders:write");
        assert_eq!(c.networks().map(<[_]>::len), Some(2));
        assert_eq!(c.labels().get("team").map(String::as_str), Some("fulfilment"));
        assert_eq!(crate::rfc3339(c.expires()), "2027-06-30T00:00:00Z");
        let by_key = inv
            .client_by_api_key(&ApiKeyHash::of_key(b"test"))
            .expect("api key index");
        assert_eq!(by_key.id().as_str(), "inventory-sync");
        assert!(
            inv.client_by_spiffe_id("spiffe://example.test/ns/prod/sa/inventory-sync")
                .is_some()
        );
        assert_eq!(
            inv.tier("standard"),
            Some(Tier {
                per_second: 50,
                burst: 100
            })
        );
        assert_eq!(inv.tier("default"), Some(Tier::BUILT_IN_DEFAULT));
        let bot = inv.client("reporting-bot").expect("bot");
        assert_eq!(bot.status(), ClientStatus::Suspended);
        assert_eq!(crate::rfc3339(bot.expires()), "2026-12-31T23:00:00Z");
    }

    fn error_of(text: &str) -> InventoryError {
        Inventory::from_toml_str(text).expect_err("invalid inventory")
    }

    const HEAD: &str = "[[client]]\nid = \"svc-a\"\nowner = \"o@example.com\"\npurpose = \"p\"\nexpires = \"2030-01-01T00:00:00Z\"\n";

    #[track_caller]
    fn assert_names(text: &str, client: &str, field: &str, kind: Kind) {
        let e = error_of(text);
        let msg = e.to_string();
        assert_eq!(e.kind(), kind, "{msg}");
        assert_eq!(e.field(), Some(field), "{msg}");
        assert!(msg.contains(&format!("client `{client}`")), "{msg}");
        assert!(msg.contains(&format!("field `{field}`")), "{msg}");
    }

    #[test]
    fn api_keys_with_dates_and_a_maximum_age() {
        let a = ApiKeyHash::of_key(b"nhik_a").to_string();
        let b = ApiKeyHash::of_key(b"nhik_b").to_string();
        let text = format!(
            "[keys]\nmax_age_days = 90\n\n{HEAD}api_keys = [\"{a}\", {{ hash = \"{b}\", created = \"2026-01-01T00:00:00Z\", rotate_by = 2026-06-01T00:00:00Z }}]\n"
        );
        let inv = crate::registry::Inventory::from_toml_str(&text).expect("loads");
        assert_eq!(
            inv.max_key_age(),
            Some(std::time::Duration::from_secs(90 * 86_400))
        );
        let c = inv.client("svc-a").expect("client");
        assert_eq!(c.api_keys().len(), 2);
        assert_eq!(
            c.api_key_dates(&ApiKeyHash::of_key(b"nhik_a")),
            ApiKeyDates::default()
        );
        let dates = c.api_key_dates(&ApiKeyHash::of_key(b"nhik_b"));
        assert_eq!(
            dates.created.map(crate::rfc3339).as_deref(),
            Some("2026-01-01T00:00:00Z")
        );
        assert_eq!(
            dates.rotate_by.map(crate::rfc3339).as_deref(),
            Some("2026-06-01T00:00:00Z")
        );
        assert!(inv.client_by_api_key(&ApiKeyHash::of_key(b"nhik_b")).is_some());

        let entry = |extra: &str| format!("{HEAD}api_keys = [{{ hash = \"{b}\"{extra} }}]\n");
        assert_names(
            &entry(", issued = \"x\""),
            "svc-a",
            "api_keys.issued",
            Kind::UnknownField,
        );
        assert_names(
            &entry(", created = \"yesterday\""),
            "svc-a",
            "api_keys",
            Kind::Invalid,
        );
        assert_names(
            &entry(", created = \"2026-06-01T00:00:00Z\", rotate_by = \"2026-01-01T00:00:00Z\""),
            "svc-a",
            "api_keys",
            Kind::Invalid,
        );
        assert_names(
            &format!("{HEAD}api_keys = [{{ created = \"2026-01-01T00:00:00Z\" }}]\n"),
            "svc-a",
            "api_keys",
            Kind::Invalid,
        );
        // A tier's own maximum overrides the inventory's.
        let tiered = format!(
            "[keys]\nmax_age_days = 90\n\n[tiers.partner]\nper_second = 5\nburst = 10\nmax_key_age_days = 30\n\n{HEAD}tier = \"partner\"\n"
        );
        let inv = crate::registry::Inventory::from_toml_str(&tiered).expect("loads");
        let month = std::time::Duration::from_secs(30 * 86_400);
        assert_eq!(inv.max_key_age_for("partner"), Some(month));
        assert_eq!(inv.max_key_age_for("default"), inv.max_key_age());
        for bad in [
            "[keys]\nmax_age_days = 0\n",
            "[keys]\nmax_age = 30\n",
            "[tiers.p]\nper_second = 1\nburst = 1\nmax_key_age_days = -3\n",
        ] {
            assert!(crate::registry::Inventory::from_toml_str(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_field() {
        assert_names(
            &format!("{HEAD}scope = [\"a\"]\n"),
            "svc-a",
            "scope",
            Kind::UnknownField,
        );
    }

    #[test]
    fn missing_owner_purpose_expiry() {
        for field in ["owner", "purpose", "expires"] {
            let text: String = HEAD
                .lines()
                .filter(|l| !l.starts_with(field))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_names(&text, "svc-a", field, Kind::Missing);
        }
        assert_names(
            &HEAD.replace("owner = \"o@example.com\"", "owner = \"  \""),
            "svc-a",
            "owner",
            Kind::Missing,
        );
    }

    #[test]
    fn missing_id_names_the_entry() {
        let e = error_of("[[client]]\nowner = \"o\"\npurpose = \"p\"\nexpires = \"2030-01-01T00:00:00Z\"\n");
        assert_eq!(e.field(), Some("id"));
        assert!(e.to_string().contains("entry 1"), "{e}");
    }

    #[test]
    fn bad_expiry() {
        assert_names(
            &HEAD.replace("2030-01-01T00:00:00Z", "next year"),
            "svc-a",
            "expires",
            Kind::Invalid,
        );
        // An offset is required: a local date-time is ambiguous.
        assert_names(
            &HEAD.replace("2030-01-01T00:00:00Z", "2030-01-01T00:00:00"),
            "svc-a",
            "expires",
            Kind::Invalid,
        );
    }

    #[test]
    fn duplicate_ids() {
        let e = error_of(&format!("{HEAD}{HEAD}"));
        assert_eq!(e.kind(), Kind::Duplicate);
        assert_eq!(e.client_id(), Some("svc-a"));
        assert!(e.to_string().contains("entry 2"), "{e}");
        assert_eq!(e.field(), Some("id"));
    }

    #[test]
    fn bad_cidrs() {
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "10.1.2.3/8",
            "not-an-ip",
            "fe80::1/129",
        ] {
            assert_names(
                &format!("{HEAD}networks = [\"{bad}\"]\n"),
                "svc-a",
                "networks",
                Kind::Invalid,
            );
        }
        assert_names(
            &format!("{HEAD}networks = []\n"),
            "svc-a",
            "networks",
            Kind::Invalid,
        );
        assert_names(
            &format!("{HEAD}networks = \"10.0.0.0/8\"\n"),
            "svc-a",
            "networks",
            Kind::Invalid,
        );
    }

    #[test]
    fn malformed_hashes() {
        for bad in [
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "sha256:9f86",
            "sha256:zz86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "md5:9f86d081884c7d659a2feaa0c55ad015",
        ] {
            assert_names(
                &format!("{HEAD}api_keys = [\"{bad}\"]\n"),
                "svc-a",
                "api_keys",
                Kind::Invalid,
            );
        }
    }

    #[test]
    fn shared_api_key_and_spiffe_id() {
        let key =
            "api_keys = [\"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"]\n";
        let text = format!("{HEAD}{key}{}{key}", HEAD.replace("svc-a", "svc-b"));
        assert_names(&text, "svc-b", "api_keys", Kind::Duplicate);
        let sid = "spiffe_ids = [\"spiffe://example.test/a\"]\n";
        let text = format!("{HEAD}{sid}{}{sid}", HEAD.replace("svc-a", "svc-b"));
        assert_names(&text, "svc-b", "spiffe_ids", Kind::Duplicate);
    }

    #[test]
    fn bad_values() {
        assert_names(
            &format!("{HEAD}status = \"paused\"\n"),
            "svc-a",
            "status",
            Kind::Invalid,
        );
        assert_names(
            &format!("{HEAD}scopes = [\"has space\"]\n"),
            "svc-a",
            "scopes",
            Kind::Invalid,
        );
        assert_names(&format!("{HEAD}scopes = [1]\n"), "svc-a", "scopes", Kind::Invalid);
        assert_names(
            &format!("{HEAD}spiffe_ids = [\"https://x/y\"]\n"),
            "svc-a",
            "spiffe_ids",
            Kind::Invalid,
        );
        assert_names(
            &format!("{HEAD}tier = \"gold\"\n"),
            "svc-a",
            "tier",
            Kind::UnknownTier,
        );
        assert_names(
            &format!("{HEAD}labels = {{ a = 1 }}\n"),
            "svc-a",
            "labels.a",
            Kind::Invalid,
        );
        assert_names(
            &HEAD.replace("owner = \"o@example.com\"", "owner = 7"),
            "svc-a",
            "owner",
            Kind::Invalid,
        );
    }

    #[test]
    fn bad_tiers() {
        let e = error_of(&format!("{HEAD}[tiers.gold]\nper_second = 0\nburst = 1\n"));
        assert_eq!((e.field(), e.kind()), (Some("per_second"), Kind::Invalid));
        assert!(e.to_string().starts_with("tier `gold`"), "{e}");
        let e = error_of(&format!(
            "{HEAD}[tiers.gold]\nper_second = 1\nburst = 1\nrate = 3\n"
        ));
        assert_eq!((e.field(), e.kind()), (Some("rate"), Kind::UnknownField));
        let e = error_of(&format!("{HEAD}[tiers.gold]\nper_second = 1\n"));
        assert_eq!((e.field(), e.kind()), (Some("burst"), Kind::Missing));
    }

    #[test]
    fn loads_issuers() {
        let text = format!(
            "{HEAD}issuers = [\"https://auth.example.com/\", \"https://auth.example.com\", \"http://127.0.0.1:8080/realms/x\"]\n"
        );
        let inv = Inventory::from_toml_str(&text).expect("valid inventory");
        let c = inv.client("svc-a").expect("client");
        assert_eq!(
            c.issuers().iter().map(|i| &**i).collect::<Vec<_>>(),
            [
                "https://auth.example.com/",
                "https://auth.example.com",
                "http://127.0.0.1:8080/realms/x"
            ]
        );
        // Exact comparison, as the token's `iss` is matched: a trailing slash or a
        // letter case makes another issuer.
        assert!(c.lists_issuer("https://auth.example.com/"));
        assert!(c.lists_issuer("https://auth.example.com"));
        assert!(!c.lists_issuer("https://AUTH.example.com"));
        assert!(!c.lists_issuer("http://127.0.0.1:8080/realms/x/"));
        // Absent: the client lists none.
        let inv = Inventory::from_toml_str(HEAD).expect("valid inventory");
        assert!(inv.client("svc-a").expect("client").issuers().is_empty());
    }

    #[test]
    fn bad_issuers() {
        for bad in [
            "auth.example.com",
            "ftp://auth.example.com",
            "HTTPS://auth.example.com",
            "https://",
            "https:///path",
            "https://auth.example.com?tenant=1",
            "https://auth.example.com/#x",
            "https://user@auth.example.com",
            "https://auth.example.com:0",
            "https://auth.example.com:99999",
            "https://auth.example.com:",
            "https://auth example.com",
            "https://auth.example.com/a b",
            "https://außen.example.com",
            "https://auth.example.com/../x",
            "https://auth..example.com",
            "https://[::1",
            "https://[not-v6]",
            "https://auth.example.com\\x",
        ] {
            let text = format!("{HEAD}issuers = ['{bad}']\n"); // a literal string: no escapes
            assert_names(&text, "svc-a", "issuers", Kind::Invalid);
        }
        for good in [
            "https://[::1]:8443/",
            "http://localhost:8080",
            "https://a.example.com/t/v2.0",
        ] {
            let text = format!("{HEAD}issuers = [\"{good}\"]\n");
            assert!(Inventory::from_toml_str(&text).is_ok(), "{good}");
        }
        assert_names(
            &format!("{HEAD}issuers = []\n"),
            "svc-a",
            "issuers",
            Kind::Invalid,
        );
        assert_names(
            &format!("{HEAD}issuers = \"https://auth.example.com\"\n"),
            "svc-a",
            "issuers",
            Kind::Invalid,
        );
        assert_names(
            &format!("{HEAD}issuers = [1]\n"),
            "svc-a",
            "issuers",
            Kind::Invalid,
        );
    }

    #[test]
    fn duplicate_issuers_name_the_client_entry_and_field() {
        let text = format!(
            "{HEAD}{}issuers = [\"https://a.example.com\", \"https://b.example.com\", \"https://a.example.com\"]\n",
            HEAD.replace("svc-a", "svc-b")
        );
        let e = error_of(&text);
        assert_eq!(e.kind(), Kind::Duplicate);
        assert_eq!(
            e.to_string(),
            "client `svc-b` ([[client]] entry 2), field `issuers`: \"https://a.example.com\" is listed twice"
        );
        // A trailing slash is another issuer, not a duplicate.
        let text = format!("{HEAD}issuers = [\"https://a.example.com\", \"https://a.example.com/\"]\n");
        assert!(Inventory::from_toml_str(&text).is_ok());
    }

    #[test]
    fn bad_issuer_error_text() {
        let e = error_of(&format!("{HEAD}issuers = [\"auth.example.com\"]\n"));
        assert_eq!(
            e.to_string(),
            "client `svc-a` ([[client]] entry 1), field `issuers`: \"auth.example.com\" must be an absolute \
             URL starting with \"https://\" (or \"http://\")"
        );
    }

    #[test]
    fn syntax_and_top_level_errors() {
        assert_eq!(error_of("[[client]\n").kind(), Kind::Syntax);
        let e = error_of("[settings]\nx = 1\n");
        assert_eq!((e.field(), e.kind()), (Some("settings"), Kind::UnknownField));
    }
}
