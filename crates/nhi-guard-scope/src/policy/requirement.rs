//! What a route requires: [`Require`] as written, and the compiled [`Rule`] and
//! [`Access`] it becomes.

use std::fmt;
use std::sync::Arc;

use nhi_guard_core::ScopeSet;
use nhi_guard_core::scope::ScopeError;

use super::{PolicyError, PolicyErrorKind};

/// What a route requires of the caller.
///
/// Scope lists are space-delimited (as in OAuth `scope` strings) and validated when
/// the policy or layer is built.
///
/// ```
/// use nhi_guard_scope::Require;
///
/// // orders:read, and at least one of orders:write / orders:admin
/// let r = Require::all_of("orders:read").and_any_of("orders:write orders:admin");
/// assert_eq!(r.to_string(), "all_of(orders:read) any_of(orders:admin orders:write)");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Require {
    spec: Spec,
    name: Option<Arc<str>>,
}

#[derive(Clone, PartialEq, Eq)]
enum Spec {
    Public,
    Authenticated,
    Scopes {
        all_of: Result<ScopeSet, ScopeError>,
        any_of: Result<ScopeSet, ScopeError>,
    },
}

/// What a `Require` is written as in configuration: `{ public = true }`,
/// `{ authenticated = true }`, or scopes, `{ all_of = ["orders:read"] }` and / or
/// `{ any_of = ["a", "b"] }`; exactly one of the three kinds.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RequireSpec {
    #[serde(default)]
    public: bool,
    #[serde(default)]
    authenticated: bool,
    #[serde(default)]
    all_of: Vec<String>,
    #[serde(default)]
    any_of: Vec<String>,
}

impl TryFrom<RequireSpec> for Require {
    type Error = String;

    fn try_from(spec: RequireSpec) -> Result<Self, String> {
        let scoped = !spec.all_of.is_empty() || !spec.any_of.is_empty();
        let require = match (spec.public, spec.authenticated, scoped) {
            (true, false, false) => Self::public(),
            (false, true, false) => Self::authenticated(),
            (false, false, true) => {
                let join = |v: &[String]| {
                    if let Some(bad) = v.iter().find(|s| s.is_empty() || s.contains(char::is_whitespace)) {
                        return Err(format!("{bad:?} is not one scope"));
                    }
                    Ok(v.join(" "))
                };
                let (all, any) = (join(&spec.all_of)?, join(&spec.any_of)?);
                let mut r = if all.is_empty() {
                    Self::any_of(&any)
                } else {
                    Self::all_of(&all)
                };
                if !all.is_empty() && !any.is_empty() {
                    r = r.and_any_of(&any);
                }
                r
            }
            _ => {
                return Err(
                    "give exactly one of public = true, authenticated = true, or scopes (all_of / any_of)"
                        .into(),
                );
            }
        };
        // The scopes are checked as a policy would check them.
        require
            .compile(Arc::from("require"), None)
            .map_err(|e| e.message.clone())?;
        Ok(require)
    }
}

/// From configuration: `{ all_of = ["orders:read"] }` and / or `{ any_of = [...] }`,
/// `{ public = true }` or `{ authenticated = true }`; exactly one kind, the scopes
/// checked as a policy checks them.
impl<'de> serde::Deserialize<'de> for Require {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::try_from(RequireSpec::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Require {
    /// No principal needed: anyone may call the route.
    pub fn public() -> Self {
        Self {
            spec: Spec::Public,
            name: None,
        }
    }

    /// Any authenticated principal may call the route, whatever its scopes.
    pub fn authenticated() -> Self {
        Self {
            spec: Spec::Authenticated,
            name: None,
        }
    }

    /// The principal must hold every one of `scopes` (space-delimited).
    pub fn all_of(scopes: &str) -> Self {
        Self {
            spec: Spec::Scopes {
                all_of: ScopeSet::parse(scopes),
                any_of: Ok(ScopeSet::empty()),
            },
            name: None,
        }
    }

    /// The principal must hold at least one of `scopes` (space-delimited).
    pub fn any_of(scopes: &str) -> Self {
        Self {
            spec: Spec::Scopes {
                all_of: Ok(ScopeSet::empty()),
                any_of: ScopeSet::parse(scopes),
            },
            name: None,
        }
    }

    /// Also requires every one of `scopes`.
    #[must_use]
    pub fn and_all_of(mut self, scopes: &str) -> Self {
        let extra = ScopeSet::parse(scopes);
        self.spec = match self.spec {
            Spec::Scopes { all_of, any_of } => Spec::Scopes {
                all_of: all_of.and_then(|a| extra.map(|e| a.union(&e))),
                any_of,
            },
            _ => Spec::Scopes {
                all_of: extra,
                any_of: Ok(ScopeSet::empty()),
            },
        };
        self
    }

    /// Also requires at least one of `scopes` (replacing an earlier `any_of` list).
    #[must_use]
    pub fn and_any_of(mut self, scopes: &str) -> Self {
        let any = ScopeSet::parse(scopes);
        self.spec = match self.spec {
            Spec::Scopes { all_of, .. } => Spec::Scopes { all_of, any_of: any },
            _ => Spec::Scopes {
                all_of: Ok(ScopeSet::empty()),
                any_of: any,
            },
        };
        self
    }

    /// Names the requirement; the name is recorded as the matched rule in the
    /// security context instead of `METHODS pattern`.
    #[must_use]
    pub fn named(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub(crate) fn compile(&self, label: Arc<str>, route: Option<Arc<str>>) -> Result<Rule, PolicyError> {
        let access = match &self.spec {
            Spec::Public => Access::Public,
            Spec::Authenticated => Access::Authenticated,
            Spec::Scopes { all_of, any_of } => {
                let all_of = all_of
                    .clone()
                    .map_err(|e| PolicyError::new(PolicyErrorKind::InvalidScope, &label, e.to_string()))?;
                let any_of = any_of
                    .clone()
                    .map_err(|e| PolicyError::new(PolicyErrorKind::InvalidScope, &label, e.to_string()))?;
                if all_of.is_empty() && any_of.is_empty() {
                    return Err(PolicyError::new(
                        PolicyErrorKind::EmptyRequirement,
                        &label,
                        "requires no scope; say Require::authenticated() or Require::public()".into(),
                    ));
                }
                let required = all_of.union(&any_of);
                Access::Scopes {
                    all_of,
                    any_of,
                    required,
                }
            }
        };
        Ok(Rule {
            label: self.name.clone().unwrap_or(label),
            route,
            access,
        })
    }
}

impl fmt::Display for Require {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.spec {
            Spec::Public => f.write_str("public"),
            Spec::Authenticated => f.write_str("authenticated"),
            Spec::Scopes { all_of, any_of } => {
                let mut first = true;
                for (word, set) in [("all_of", all_of), ("any_of", any_of)] {
                    match set {
                        Ok(s) if s.is_empty() => continue,
                        Ok(s) => write!(f, "{}{word}({s})", if first { "" } else { " " })?,
                        Err(_) => write!(f, "{}{word}(<invalid>)", if first { "" } else { " " })?,
                    }
                    first = false;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Require {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Require({self})")
    }
}

/// What a compiled rule demands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// Anyone.
    Public,
    /// Any authenticated principal.
    Authenticated,
    /// A principal holding all of `all_of` and, when `any_of` is not empty, at
    /// least one of `any_of`.
    Scopes {
        /// Scopes that must all be held.
        all_of: ScopeSet,
        /// Scopes of which one must be held (ignored when empty).
        any_of: ScopeSet,
        /// `all_of ∪ any_of`: what the challenge's `scope` attribute names.
        required: ScopeSet,
    },
}

impl Access {
    /// Checks `granted` against this access: `Ok` or the missing scopes (for an
    /// unmet `any_of`, the whole `any_of` list is missing). Allocates nothing when
    /// the scopes are held.
    ///
    /// # Errors
    /// The scopes that are missing.
    pub fn check(&self, granted: &ScopeSet) -> Result<(), ScopeSet> {
        match self {
            Self::Public | Self::Authenticated => Ok(()),
            Self::Scopes { all_of, any_of, .. } => {
                let any_ok = any_of.is_empty() || any_of.intersects(granted);
                let all_ok = all_of.is_subset(granted);
                match (all_ok, any_ok) {
                    (true, true) => Ok(()),
                    (false, true) => Err(all_of.difference(granted)),
                    (true, false) => Err(any_of.clone()),
                    (false, false) => Err(all_of.difference(granted).union(any_of)),
                }
            }
        }
    }

    /// The scopes required (empty for public and authenticated-only access).
    pub fn required(&self) -> &ScopeSet {
        static EMPTY: std::sync::OnceLock<ScopeSet> = std::sync::OnceLock::new();
        match self {
            Self::Scopes { required, .. } => required,
            _ => EMPTY.get_or_init(ScopeSet::empty),
        }
    }
}

/// One compiled rule of a policy (or a per-route requirement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    label: Arc<str>,
    route: Option<Arc<str>>,
    access: Access,
}

impl Rule {
    /// The rule as recorded in the security context: its name if it has one, else
    /// `METHODS pattern` (`GET /orders/{id}`, `* /admin/*`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The pattern, for rules of a [`Policy`] (`None` for per-route requirements).
    ///
    /// [`Policy`]: super::Policy
    pub fn pattern(&self) -> Option<&str> {
        self.route.as_deref()
    }

    /// What the rule demands.
    pub fn access(&self) -> &Access {
        &self.access
    }

    pub(crate) fn label_arc(&self) -> &Arc<str> {
        &self.label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_of_and_any_of() {
        let set = |s: &str| ScopeSet::parse(s).expect("valid");
        let compile = |r: Require| r.compile("t".into(), None).expect("valid").access;
        let all = compile(Require::all_of("a b"));
        assert_eq!(all.check(&set("a b c")), Ok(()));
        assert_eq!(all.check(&set("a c")), Err(set("b")));
        let any = compile(Require::any_of("a b"));
        assert_eq!(any.check(&set("b")), Ok(()));
        assert_eq!(any.check(&set("c")), Err(set("a b")));
        let both = compile(Require::all_of("r").and_any_of("w admin"));
        assert_eq!(both.check(&set("r admin")), Ok(()));
        assert_eq!(both.check(&set("r")), Err(set("w admin")));
        assert_eq!(both.check(&set("w")), Err(set("r")));
        assert_eq!(both.check(&set("")), Err(set("r w admin")));
        assert_eq!(both.required(), &set("r w admin"));
        assert_eq!(compile(Require::authenticated()).check(&set("")), Ok(()));
    }
}
