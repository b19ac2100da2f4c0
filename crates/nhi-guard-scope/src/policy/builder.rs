//! [`PolicyBuilder`]: a policy's own route table, one rule per route.

use http::Method;
use nhi_guard_core::route::{Methods, Route, Routes};

use super::{Fallback, Policy, PolicyError, Require};

/// Builds a [`Policy`]. Errors surface in [`PolicyBuilder::build`], naming the rule.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct PolicyBuilder {
    routes: Vec<Route>,
    fallback: Fallback,
}

impl PolicyBuilder {
    /// Adds a rule for `methods` on `pattern`.
    pub fn rule(mut self, methods: impl Into<Methods>, pattern: impl Into<String>, require: Require) -> Self {
        self.routes.push(Route::new(methods, pattern).with(require));
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
        let routes = Routes::builder().routes(self.routes).build()?;
        Ok(Policy::from_routes(&routes)?.with_fallback(self.fallback))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{MAX_SEGMENTS, PolicyErrorKind};

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
            "scope policy rule `GET,POST /orders/{order}`: conflicts with route `GET /orders/{id}`: \
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
