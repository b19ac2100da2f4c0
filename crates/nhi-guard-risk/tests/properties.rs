//! Property tests: whatever a client sends as a path and whatever an operator types
//! as a key, nothing panics, and keys round-trip through their text form.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::{Request, Response};
use nhi_guard_core::address::PeerAddr;
use nhi_guard_core::{ClientId, CredentialFingerprint};
use nhi_guard_risk::store::RiskKey;
use nhi_guard_risk::{RiskLayer, Route};
use proptest::prelude::*;
use tower::{Layer, ServiceExt, service_fn};

proptest! {
    #[test]
    fn key_parsing_never_panics(s in ".{0,80}") {
        let _ = RiskKey::parse(&s);
    }

    #[test]
    fn keys_round_trip(a in any::<[u8; 4]>(), b in any::<[u16; 8]>(), fp in any::<Vec<u8>>(), id in "[a-z0-9-]{1,20}") {
        let keys = [
            RiskKey::address(IpAddr::V4(Ipv4Addr::from(a))),
            RiskKey::network_of(IpAddr::V4(Ipv4Addr::from(a))),
            RiskKey::address(IpAddr::V6(Ipv6Addr::from(b))),
            RiskKey::network_of(IpAddr::V6(Ipv6Addr::from(b))),
            RiskKey::Credential(CredentialFingerprint::of(&fp)),
            RiskKey::Client(ClientId::from(id.as_str())),
        ];
        for k in keys {
            prop_assert_eq!(RiskKey::parse(&k.to_string()), Some(k));
        }
    }

    #[test]
    fn route_patterns_never_panic(method in "[A-Z*]{0,7}", pattern in "[/a-z{}]{0,30}") {
        let _ = Route::new(&method, &pattern);
    }

    #[test]
    fn any_path_is_answered(path in "/[a-zA-Z0-9/{}%._~-]{0,60}") {
        let risk = RiskLayer::new()
            .route(Route::new("GET", "/items/{id}").expect("route")).expect("route")
            .route(Route::new("*", "/a/{x}/b/{y}").expect("route").scarce()).expect("route");
        let svc = risk.layer(service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(()))
        }));
        let Ok(mut req) = Request::get(path.as_str()).body(()) else { return Ok(()) };
        req.extensions_mut().insert(PeerAddr(SocketAddr::from(([127, 0, 0, 1], 1))));
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let res = rt.block_on(svc.oneshot(req)).expect("infallible");
        prop_assert_eq!(res.status(), 200);
    }
}
