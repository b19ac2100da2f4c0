//! The path pattern parser: a pattern as a list of segments.

/// The most segments a pattern may have. It bounds the matcher's work per request.
pub const MAX_SEGMENTS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment<'a> {
    Literal(&'a str),
    /// `{name}`: one non-empty segment.
    Param(&'a str),
    Wildcard,
}

pub(super) fn parse_pattern(pattern: &str) -> Result<Vec<Segment<'_>>, String> {
    let Some(rest) = pattern.strip_prefix('/') else {
        return Err("the pattern must start with `/`".into());
    };
    if pattern.contains(['?', '#']) {
        return Err("the pattern must not contain a query or fragment".into());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.len() > MAX_SEGMENTS {
        return Err(format!("the pattern has more than {MAX_SEGMENTS} segments"));
    }
    let mut names: Vec<&str> = Vec::new();
    let mut out = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let seg = if *part == "*" {
            Segment::Wildcard
        } else if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let (wild, name) = match inner.strip_prefix('*') {
                Some(n) => (true, n),
                None => (false, inner),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "`{part}`: a capture needs a name of letters, digits and `_`"
                ));
            }
            if names.contains(&name) {
                return Err(format!("the capture `{name}` appears twice"));
            }
            names.push(name);
            if wild {
                Segment::Wildcard
            } else {
                Segment::Param(name)
            }
        } else if part.contains(['{', '}', '*']) {
            return Err(format!(
                "`{part}`: captures and wildcards must be whole segments (`{{name}}`, `*`, `{{*name}}`)"
            ));
        } else {
            Segment::Literal(part)
        };
        if seg == Segment::Wildcard && !last {
            return Err("a wildcard may only be the last segment".into());
        }
        out.push(seg);
    }
    Ok(out)
}
