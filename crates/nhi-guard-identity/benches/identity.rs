//! Per-request cost of the identity layer against the bare service, in the same
//! run: RS256, ES256 and EdDSA tokens, cold (full verification, cache off) and
//! through the verified-token cache; API keys; and jsonwebtoken's own RS256
//! `decode` as the reference for the cold path.
//!
//! ```text
//! cargo bench -p nhi-guard-identity --bench identity -- --warm-up-time 1 --measurement-time 3
//! ```
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::convert::Infallible;
use std::hint::black_box;

use common::*;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, Response};
use jsonwebtoken::{DecodingKey, Validation};
use nhi_guard_identity::{Algorithm, IdentityLayer, Issuer, KeySet};
use tower::{Layer, Service, service_fn};

fn request(header: &'static str, value: &HeaderValue) -> Request<()> {
    let mut req = Request::new(());
    req.headers_mut().insert(header, value.clone());
    req
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let keys = [
        TestKey::rs256("rsa"),
        TestKey::es256("ec"),
        TestKey::ed25519("ed"),
    ];
    let refs: Vec<&TestKey> = keys.iter().collect();
    let (set, _) = KeySet::from_jwks(jwks(&refs).to_string().as_bytes()).unwrap();
    let build = |cache: u64| {
        IdentityLayer::builder(registry())
            .issuer(
                Issuer::new(ISS)
                    .audience(AUD)
                    .algorithms([Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA])
                    .static_keys(set.clone()),
            )
            .token_cache(cache)
            .build()
            .unwrap()
    };
    let handler = service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(String::new())) });

    let mut group = c.benchmark_group("identity");
    let sample = HeaderValue::from_static("Bearer x");
    let mut bare = handler;
    group.bench_function("bare_service", |b| {
        b.iter(|| rt.block_on(bare.call(request("authorization", &sample))).unwrap())
    });

    for key in &keys {
        let mut c = claims("svc-a", "orders:read");
        c["exp"] = serde_json::json!(now_secs() + 3600);
        let token = key.sign(&c);
        let value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
        let name = alg_name(key.alg);

        let mut cold = build(0).layer(handler);
        let res = rt.block_on(cold.call(request("authorization", &value))).unwrap();
        assert_eq!(res.status(), 200);
        group.bench_function(format!("{name}_cold"), |b| {
            b.iter(|| rt.block_on(cold.call(request("authorization", &value))).unwrap())
        });

        let mut cached = build(10_000).layer(handler);
        group.bench_function(format!("{name}_cached"), |b| {
            b.iter(|| {
                rt.block_on(cached.call(request("authorization", &value)))
                    .unwrap()
            })
        });

        if key.alg == Algorithm::RS256 {
            let decoding = DecodingKey::from_jwk(&serde_json::from_value(key.jwk.clone()).unwrap()).unwrap();
            let mut validation = Validation::new(Algorithm::RS256);
            validation.set_audience(&[AUD]);
            validation.set_issuer(&[ISS]);
            group.bench_function("jsonwebtoken_decode_RS256", |b| {
                b.iter(|| {
                    jsonwebtoken::decode::<serde_json::Value>(black_box(&token), &decoding, &validation)
                        .unwrap()
                })
            });
        }
    }

    // The floor: context creation and header inspection, no credential
    // (optional mode lets the request through anonymously).
    let mut anonymous = IdentityLayer::builder(registry())
        .optional(true)
        .build()
        .unwrap()
        .layer(handler);
    let accept = HeaderValue::from_static("application/json");
    group.bench_function("no_credential_optional", |b| {
        b.iter(|| rt.block_on(anonymous.call(request("accept", &accept))).unwrap())
    });

    let key = HeaderValue::from_static("nhik_test_5e3b1f0a9c");
    let mut api = build(0).layer(handler);
    let res = rt.block_on(api.call(request("x-api-key", &key))).unwrap();
    assert_eq!(res.status(), 200);
    group.bench_function("api_key", |b| {
        b.iter(|| rt.block_on(api.call(request("x-api-key", &key))).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
