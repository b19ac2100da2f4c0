//! Shape checks of the identifiers a client record lists: issuers and SPIFFE ids.

/// Checks the shape of an issuer identifier as OpenID Connect Discovery and
/// RFC 8414 define it: an absolute `https://` URL (or `http://`, for loopback and
/// in-cluster issuers) with a host, an optional port and path, and no user
/// information, query or fragment; ASCII without spaces (write internationalised
/// host names in punycode).
///
/// The text is not normalised: it is compared with a token's `iss` byte for byte,
/// so it must be written exactly as the issuer writes it, trailing slash included.
///
/// # Errors
/// A message saying what is wrong.
pub fn validate_issuer(iss: &str) -> Result<(), String> {
    let rest = iss
        .strip_prefix("https://")
        .or_else(|| iss.strip_prefix("http://"))
        .ok_or_else(|| {
            format!("{iss:?} must be an absolute URL starting with \"https://\" (or \"http://\")")
        })?;
    if let Some(c) = iss.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "{iss:?} contains {c:?}; only visible ASCII is allowed (host names in punycode)"
        ));
    }
    if iss.contains(['?', '#']) {
        return Err(format!("{iss:?} must not have a query or a fragment"));
    }
    if iss.contains('\\') {
        return Err(format!("{iss:?} must not contain a backslash"));
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err(format!("{iss:?} must not contain user information (`user@`)"));
    }
    let port = match authority.strip_prefix('[') {
        Some(literal) => {
            let (addr, after) = literal
                .split_once(']')
                .ok_or_else(|| format!("{iss:?} has an unterminated IPv6 address"))?;
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("{iss:?} has an invalid IPv6 address"));
            }
            match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| format!("{iss:?} has an invalid host"))?,
                ),
            }
        }
        None => {
            let (host, port) = match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            };
            if host.is_empty()
                || host.starts_with(['.', '-'])
                || host.contains("..")
                || !host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            {
                return Err(format!("{iss:?} has no valid host"));
            }
            port
        }
    };
    if let Some(port) = port
        && (port.is_empty()
            || port.len() > 5
            || !port.bytes().all(|b| b.is_ascii_digit())
            || !port.parse::<u16>().is_ok_and(|p| p > 0))
    {
        return Err(format!("{iss:?} has an invalid port {port:?}"));
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("{iss:?} has a `.` or `..` path segment"));
    }
    Ok(())
}

/// Checks the shape of a SPIFFE id: `spiffe://<trust domain>/<path>`, lower-case
/// trust domain of `[a-z0-9.-_]`, a non-empty path of segments without `.`/`..`,
/// no query or fragment.
///
/// # Errors
/// A message saying what is wrong.
pub fn validate_spiffe_id(id: &str) -> Result<(), String> {
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or_else(|| format!("{id:?} must start with \"spiffe://\""))?;
    let (domain, path) = rest.split_once('/').unwrap_or((rest, ""));
    if domain.is_empty()
        || !domain
            .bytes()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_'))
    {
        return Err(format!("{id:?} has an invalid trust domain"));
    }
    if path.is_empty() {
        return Err(format!("{id:?} has no path"));
    }
    for seg in path.split('/') {
        if seg.is_empty()
            || seg == "."
            || seg == ".."
            || !seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            return Err(format!("{id:?} has an invalid path segment {seg:?}"));
        }
    }
    Ok(())
}
