//! [`PolicyBuilder`] and the [`Methods`] a rule applies to.

use std::fmt;
use std::sync::Arc;

use http::Method;

use super::pattern::parse_pattern;
use super::trie::Node;
use super::{Fallback, Policy, PolicyError, PolicyErrorKind, Require};

/// The methods a rule applies to: one, several, or any.
///
/// `Method` values, arrays and slices of them convert into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Methods(pub(super) Option<Vec<Method>>);

impl Methods {
    /// Every method.
    pub const ANY: Methods = Methods(None);
}

impl From<Method> for Methods {
    fn from(m: Method) -> Self {
        Self(Some(vec![m]))
    }
}

impl<const N: usize> From<[Method; N]> for Methods {
    fn from(m: [Method; N]) -> Self {
        Self(Some(m.to_vec()))
    }
}

impl From<&[Method]> for Methods {
    fn from(m: &[Method]) -> Self {
        Self(Some(m.to_vec()))
    }
}

impl fmt::Display for Methods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            None => f.write_str("*"),
            Some(ms) => {
                for (i, m) in ms.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    f.write_str(m.as_str())?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone)]
struct RuleSpec {
    methods: Methods,
    pattern: String,
    require: Require,
}

/// Builds a [`Policy`]. Errors surface in [`PolicyBuilder::build`], naming the rule.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct PolicyBuilder {
    rules: Vec<RuleSpec>,
    fallback: Fallback,
}

impl PolicyBuilder {
    /// Adds a rule for `methods` on `pattern`.
    pub fn rule(mut self, methods: impl Into<Methods>, pattern: impl Into<String>, require: Require) -> Self {
        self.rules.push(RuleSpec {
            methods: methods.into(),
            pattern: pattern.into(),
            require,
        });
        self
    }

    /// A rule for any method.
    pub fn any(self, pattern: impl Into<String>, require: Require) -> Self {
        self.rule(Methods::ANY, pattern, require)
    }

    /// A `GET` rule (also covering `HEAD`).
    pub fn get(self, pattern: impl Into<String>, require: Require) -> Self {
        self.rule(Method::GET, pattern, require)
    }

    /// A `POST` rule.
    pub fn post(self, pattern: impl Into<String>, require: Require) -> Self {
        self.rule(Method::POST, pattern, require)
    }

    /// A `PUT` rule.
    pub fn put(self, pattern: impl Into<String>, require: Require) -> Self {
        self.rule(Method::PUT, pattern, require)
    }

    /// A `PATCH` rule.
    pub fn patch(self, pattern: impl Into<String>, require: Require) -> Self {
        self.rule(Method::PATCH, pattern, require)
    }

    /// A `DELETE` rule.
    pub fn delete(self, pattern: impl Into<String>, require: Require) -> Self {
        self.rule(Method::DELETE, pattern, require)
    }

    /// Declares a public route: no principal needed.
    pub fn public(self, methods: impl Into<Methods>, pattern: impl Into<String>) -> Self {
        self.rule(methods, pattern, Require::public())
    }

    /// A rule for one gRPC method, by its path `/package.Service/Method` (gRPC
    /// calls are `POST`s).
    pub fn grpc(self, path: impl Into<String>, require: Require) -> Self {
        self.rule(Method::POST, path, require)
    }

    /// A rule for every method of a gRPC service (`package.Service`), i.e.
    /// `POST /package.Service/*`.
    pub fn grpc_service(self, service: &str, require: Require) -> Self {
        self.rule(Method::POST, format!("/{service}/*"), require)
    }

    /// What unmatched requests get (default [`Fallback::Deny`]).
    pub fn fallback(mut self, fallback: Fallback) -> Self {
        self.fallback = fallback;
        self
    }

    /// Compiles the policy.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the first invalid rule: a pattern that does not
    /// parse, an invalid or empty scope list, a rule without methods, or two
    /// equally specific rules that overlap (naming both).
    pub fn build(self) -> Result<Policy, PolicyError> {
        let mut policy = Policy {
            nodes: vec![Node::default()],
            rules: Vec::with_capacity(self.rules.len()),
            fallback: self.fallback,
        };
        for spec in &self.rules {
            let label = format!("{} {}", spec.methods, spec.pattern);
            let segments = parse_pattern(&spec.pattern)
                .map_err(|m| PolicyError::new(PolicyErrorKind::InvalidPattern, &label, m))?;
            if matches!(&spec.methods.0, Some(ms) if ms.is_empty()) {
                return Err(PolicyError::new(
                    PolicyErrorKind::NoMethod,
                    &label,
                    "lists no method; use Methods::ANY".into(),
                ));
            }
            let label: Arc<str> = Arc::from(label);
            let rule = spec
                .require
                .compile(label.clone(), Some(Arc::from(spec.pattern.as_str())))?;
            let id = u32::try_from(policy.rules.len()).unwrap_or(u32::MAX);
            policy.rules.push(rule);
            let slot = policy.slot_mut(&segments);
            slot.insert(&spec.methods, id, &label)?;
        }
        for node in &mut policy.nodes {
            if node.literals.len() > 4 {
                node.wide = Some(node.literals.iter().cloned().collect());
            }
            node.exact.finish();
            node.wildcard.finish();
        }
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::MAX_SEGMENTS;

    #[test]
    fn equally_specific_overlaps_are_build_errors_naming_both() {
        let err = Policy::builder()
            .get("/orders/{id}", Require::all_of("a"))
            .rule(
                [Method::GET, Method::POST],
                "/orders/{order}",
                Require::all_of("b"),
            )
            .build()
            .expect_err("must be rejected");
        assert_eq!(err.kind(), PolicyErrorKind::Conflict);
        assert_eq!(err.rule(), "GET,POST /orders/{order}");
        assert_eq!(
            err.to_string(),
            "scope policy rule `GET,POST /orders/{order}`: conflicts with rule `GET /orders/{id}`: \
             equally specific, both match GET"
        );
        let err = Policy::builder()
            .any("/a/*", Require::all_of("a"))
            .any("/a/{*rest}", Require::all_of("b"))
            .build()
            .expect_err("must be rejected");
        assert_eq!(err.kind(), PolicyErrorKind::Conflict);
        assert!(err.to_string().contains("`* /a/*`"), "{err}");
        // Disjoint methods, or different specificity, are fine.
        Policy::builder()
            .get("/orders/{id}", Require::all_of("a"))
            .post("/orders/{order}", Require::all_of("b"))
            .any("/orders/{x}", Require::all_of("c"))
            .build()
            .expect("valid");
    }

    #[test]
    fn invalid_rules_are_build_errors() {
        let cases = [
            ("orders", PolicyErrorKind::InvalidPattern),
            ("/a/*/b", PolicyErrorKind::InvalidPattern),
            ("/a/{*rest}/b", PolicyErrorKind::InvalidPattern),
            ("/v{n}", PolicyErrorKind::InvalidPattern),
            ("/{}", PolicyErrorKind::InvalidPattern),
            ("/{a}/{a}", PolicyErrorKind::InvalidPattern),
            ("/a?b", PolicyErrorKind::InvalidPattern),
        ];
        for (pat, kind) in cases {
            let err = Policy::builder()
                .get(pat, Require::all_of("a"))
                .build()
                .expect_err("must be rejected");
            assert_eq!(err.kind(), kind, "{pat}: {err}");
            assert_eq!(err.rule(), format!("GET {pat}"));
        }
        let long = "/a".repeat(MAX_SEGMENTS + 1);
        assert!(Policy::builder().get(long, Require::all_of("a")).build().is_err());
        let err = Policy::builder()
            .get("/a", Require::all_of("a\"b"))
            .build()
            .expect_err("must be rejected");
        assert_eq!(err.kind(), PolicyErrorKind::InvalidScope);
        let err = Policy::builder()
            .get("/a", Require::all_of("  "))
            .build()
            .expect_err("must be rejected");
        assert_eq!(err.kind(), PolicyErrorKind::EmptyRequirement);
        let err = Policy::builder()
            .rule(&[][..], "/a", Require::public())
            .build()
            .expect_err("must be rejected");
        assert_eq!(err.kind(), PolicyErrorKind::NoMethod);
    }
}
