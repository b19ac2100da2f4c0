//! Google Wycheproof JOSE vectors (testdata/wycheproof, Apache-2.0) through key-set
//! loading and compact JWS verification.
//!
//! Every `invalid` vector must be rejected. Every `valid` vector must be accepted,
//! except those this crate refuses on purpose, which are counted and printed:
//! - algorithms it never accepts (HMAC, ES512 / P-521): symmetric keys are never
//!   loaded, P-521 is not supported by the verifier;
//! - a PS384 signature under a key whose JWK says `alg: PS256` (RFC 7520 figure 20):
//!   RFC 8725 §3.1 binds each key to its algorithm, so the mismatch is refused;
//! - the JSON serialisation (only compact JWS carry access tokens).
#![allow(missing_docs, clippy::unwrap_used, clippy::print_stdout)]

use nhi_guard_identity::keys::{JwsError, KeyRejection, SUPPORTED_ALGORITHMS, parse_algorithm};
use nhi_guard_identity::{KeySet, VerifyingKey};
use serde_json::{Value, json};

const JWS: &str = include_str!("../testdata/wycheproof/json_web_signature_test.json");
const JWK: &str = include_str!("../testdata/wycheproof/json_web_key_test.json");

#[derive(Debug, Default)]
struct Counts {
    invalid_rejected: usize,
    valid_accepted: usize,
    valid_unsupported_alg: usize,
    valid_refused_key_alg_binding: usize,
    valid_json_serialization: usize,
}

fn header_alg(jws: &str) -> Option<String> {
    use base64::Engine as _;
    let h = jws.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v["alg"].as_str().map(str::to_owned)
}

/// Runs one vector against `set`; panics when an invalid vector verifies or a
/// supported valid one does not.
fn check(set: &KeySet, skipped_unsupported: bool, t: &Value, where_: &str, counts: &mut Counts) {
    let result = t["result"].as_str().unwrap();
    let id = format!("{where_} tcId {} ({})", t["tcId"], t["comment"]);
    let Some(jws) = t["jws"].as_str() else {
        // JSON serialisation: never accepted.
        match result {
            "invalid" => counts.invalid_rejected += 1,
            _ => counts.valid_json_serialization += 1,
        }
        return;
    };
    let outcome = set.verify_compact(jws, SUPPORTED_ALGORITHMS);
    match (result, outcome) {
        ("invalid", Err(_)) => counts.invalid_rejected += 1,
        ("invalid", Ok(_)) => panic!("{id}: invalid vector accepted"),
        (_, Ok(_)) => counts.valid_accepted += 1,
        (_, Err(e)) => {
            let alg = header_alg(jws).unwrap_or_default();
            let supported = parse_algorithm(&alg).is_some();
            if !supported || (skipped_unsupported && e == JwsError::UnknownKey) {
                counts.valid_unsupported_alg += 1;
            } else if e == JwsError::KeyAlgorithmMismatch {
                counts.valid_refused_key_alg_binding += 1;
            } else {
                panic!("{id}: valid vector of supported algorithm {alg} refused: {e}");
            }
        }
    }
}

/// Loads a group's keys: `public` (a JWK or a JWK Set), else `private`.
fn load(group: &Value) -> (KeySet, Vec<nhi_guard_identity::keys::SkippedKey>) {
    let keys = group
        .get("public")
        .filter(|v| !v.is_null())
        .or_else(|| group.get("private"))
        .unwrap();
    let doc = if keys.get("keys").is_some() {
        keys.clone()
    } else {
        json!({ "keys": [keys] })
    };
    KeySet::from_jwks_value(&doc).unwrap()
}

fn all_unsupported(skipped: &[nhi_guard_identity::keys::SkippedKey]) -> bool {
    !skipped.is_empty()
        && skipped
            .iter()
            .all(|s| matches!(s.reason, KeyRejection::Unsupported(_)))
}

#[test]
fn json_web_signature_vectors() {
    let doc: Value = serde_json::from_str(JWS).unwrap();
    let mut counts = Counts::default();
    let mut total = 0;
    for group in doc["testGroups"].as_array().unwrap() {
        let (set, skipped) = load(group);
        let unsupported = all_unsupported(&skipped);
        for t in group["tests"].as_array().unwrap() {
            total += 1;
            check(
                &set,
                unsupported,
                t,
                group["comment"].as_str().unwrap(),
                &mut counts,
            );
        }
    }
    println!("wycheproof json_web_signature: {total} vectors: {counts:?}");
    assert_eq!(total, 401);
    assert_eq!(
        total,
        counts.invalid_rejected
            + counts.valid_accepted
            + counts.valid_unsupported_alg
            + counts.valid_refused_key_alg_binding
            + counts.valid_json_serialization
    );
    assert!(counts.valid_accepted >= 30, "{counts:?}");
    assert_eq!(
        counts.valid_refused_key_alg_binding, 2,
        "only RFC 7520 figure 20 (twice)"
    );
}

#[test]
fn json_web_key_vectors() {
    let doc: Value = serde_json::from_str(JWK).unwrap();
    let mut counts = Counts::default();
    let mut total = 0;
    for group in doc["testGroups"].as_array().unwrap() {
        let (set, skipped) = load(group);
        let unsupported = all_unsupported(&skipped);
        for t in group["tests"].as_array().unwrap() {
            total += 1;
            check(
                &set,
                unsupported,
                t,
                group["comment"].as_str().unwrap(),
                &mut counts,
            );
        }
    }
    println!("wycheproof json_web_key: {total} vectors: {counts:?}");
    assert_eq!(total, 26);
}

fn group<'a>(doc: &'a Value, comment: &str, nth: usize) -> &'a Value {
    doc["testGroups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["comment"] == comment)
        .nth(nth)
        .unwrap()
}

/// The weak keys of the vectors are rejected at load time, each for its own
/// reason, and the rest of a mixed set stays usable.
#[test]
fn weak_keys_rejected_at_load_rest_of_the_set_usable() {
    let jwk: Value = serde_json::from_str(JWK).unwrap();
    let jws: Value = serde_json::from_str(JWS).unwrap();
    let small = group(&jwk, "keysize_too_small", 0)["public"]["keys"][0].clone();
    let e_one = group(&jwk, "exponentOne", 0)["public"]["keys"][0].clone();
    let roca = group(&jwk, "jws_rsa_roca_key", 0)["public"]["keys"][0].clone();
    let for_enc = group(&jwk, "rs256", 1)["public"]["keys"][0].clone();
    let mut ops_encrypt = group(&jwk, "rs256", 0)["public"]["keys"][0].clone();
    ops_encrypt.as_object_mut().unwrap().remove("use");
    ops_encrypt["key_ops"] = json!(["encrypt"]);
    ops_encrypt["kid"] = json!("ops-encrypt");
    let mut for_enc = for_enc;
    for_enc["kid"] = json!("use-enc");

    let es = group(&jws, "SpecialCaseEs256", 0);
    let good = es["public"].clone();
    let mut dup_a = good.clone();
    dup_a["kid"] = json!("dup");
    let dup_b = dup_a.clone();

    let doc = json!({"keys": [small, e_one, roca, for_enc, ops_encrypt, dup_a, dup_b, good]});
    let (set, skipped) = KeySet::from_jwks_value(&doc).unwrap();
    let reasons: Vec<_> = skipped.iter().map(|s| (s.index, s.reason.clone())).collect();
    println!("skipped: {reasons:?}");
    assert!(matches!(&reasons[0], (0, KeyRejection::WeakRsaKey(m)) if m.contains("1024 bits")));
    assert!(matches!(&reasons[1], (1, KeyRejection::WeakRsaKey(m)) if m.contains("exponent")));
    assert!(matches!(&reasons[2], (2, KeyRejection::WeakRsaKey(m)) if m.contains("ROCA")));
    assert_eq!(reasons[3], (3, KeyRejection::NotForVerification));
    assert_eq!(reasons[4], (4, KeyRejection::NotForVerification));
    assert_eq!(reasons[5], (5, KeyRejection::DuplicateKid));
    assert_eq!(reasons[6], (6, KeyRejection::DuplicateKid));
    assert_eq!(set.len(), 1);

    let valid = es["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["result"] == "valid")
        .unwrap();
    set.verify_compact(valid["jws"].as_str().unwrap(), SUPPORTED_ALGORITHMS)
        .unwrap();
}

#[test]
fn private_key_material_and_mismatched_alg_are_refused() {
    let jwk: Value = serde_json::from_str(JWK).unwrap();
    let private = &group(&jwk, "rs256", 0)["private"]["keys"][0];
    assert_eq!(
        VerifyingKey::from_jwk(private).unwrap_err(),
        KeyRejection::PrivateKeyMaterial
    );
    let wrong_curve = &group(&jwk, "wrong_curve", 0)["public"]["keys"][0];
    assert!(VerifyingKey::from_jwk(wrong_curve).is_err());
    let wrong_alg = &group(&jwk, "invalid_algorithm", 0)["public"]["keys"][0];
    assert!(VerifyingKey::from_jwk(wrong_alg).is_err());
    let bad_point = &group(&jwk, "invalid_point", 0)["public"]["keys"][0];
    assert!(VerifyingKey::from_jwk(bad_point).is_err());
}
