//! Which address a request comes from.
//!
//! The socket peer is the truth unless it is one of *your* proxies. Only then are
//! `Forwarded` (RFC 7239) or `X-Forwarded-For` read, from the right, skipping
//! further trusted proxies, and the first untrusted address is the client. A client
//! talking to the service directly cannot move itself anywhere by sending those
//! headers, and malformed headers never fail a request: the resolution stops at the
//! last address that could be trusted.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::FORWARDED;
use ipnet::IpNet;

use crate::registry::canonical_ip;

/// The socket peer of a connection, as any server can record it in the request
/// extensions when neither axum's `ConnectInfo` nor tonic's connect info is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The resolved address of the client of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    ip: IpAddr,
    peer: SocketAddr,
    forwarded: bool,
}

impl ClientAddr {
    /// The client's IP address (IPv4-mapped IPv6 addresses are shown as IPv4).
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The socket peer of the connection (the proxy, when `forwarded`).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the address came from a forwarding header of a trusted proxy.
    pub fn is_forwarded(&self) -> bool {
        self.forwarded
    }

    /// A client address that is the socket peer itself.
    pub fn direct(peer: SocketAddr) -> Self {
        Self {
            ip: canonical_ip(peer.ip()),
            peer,
            forwarded: false,
        }
    }
}

/// Which forwarding header a trusted proxy sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `Forwarded` when present, else `X-Forwarded-For`.
    #[default]
    Any,
    /// Only RFC 7239 `Forwarded`.
    Forwarded,
    /// Only `X-Forwarded-For`.
    XForwardedFor,
}

/// Resolves the client address of a request.
///
/// ```
/// use std::net::SocketAddr;
/// use http::Request;
/// use nhi_guard_core::address::{ClientAddrResolver, PeerAddr};
///
/// let resolver = ClientAddrResolver::new().trust_proxy("10.0.0.0/8".parse().unwrap());
/// let mut req = Request::builder()
///     .header("x-forwarded-for", "203.0.113.7, 10.1.1.1")
///     .body(())
///     .unwrap();
/// req.extensions_mut().insert(PeerAddr("10.0.0.5:443".parse::<SocketAddr>().unwrap()));
/// let addr = resolver.resolve(req.headers(), req.extensions()).unwrap();
/// assert_eq!(addr.ip().to_string(), "203.0.113.7");
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ClientAddrResolver {
    trusted: Vec<IpNet>,
    header: ForwardedHeader,
}

/// At most this many forwarding hops are examined; a longer chain stops at the
/// last one examined.
const MAX_HOPS: usize = 32;

impl ClientAddrResolver {
    /// Uses the socket peer only; forwarding headers are ignored.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts proxies in `net` to report the address they received a request from.
    pub fn trust_proxy(mut self, net: IpNet) -> Self {
        self.trusted.push(net.trunc());
        self
    }

    /// Trusts every network in `nets`.
    pub fn trust_proxies(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        self.trusted.extend(nets.into_iter().map(|n| n.trunc()));
        self
    }

    /// Chooses which forwarding header trusted proxies set.
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// The trusted proxy networks.
    pub fn trusted_proxies(&self) -> &[IpNet] {
        &self.trusted
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// Finds the socket peer in the request extensions: [`PeerAddr`], a plain
    /// `SocketAddr`, axum's `ConnectInfo<SocketAddr>` (feature `axum`) or tonic's
    /// `TcpConnectInfo` (feature `tonic`).
    pub fn peer(extensions: &http::Extensions) -> Option<SocketAddr> {
        if let Some(PeerAddr(addr)) = extensions.get::<PeerAddr>() {
            return Some(*addr);
        }
        #[cfg(feature = "axum")]
        if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
            return Some(info.0);
        }
        #[cfg(feature = "tonic")]
        if let Some(addr) = extensions
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(tonic::transport::server::TcpConnectInfo::remote_addr)
        {
            return Some(addr);
        }
        extensions.get::<SocketAddr>().copied()
    }

    /// Resolves the client address; `None` when the request carries no peer address.
    pub fn resolve(&self, headers: &HeaderMap, extensions: &http::Extensions) -> Option<ClientAddr> {
        let peer = Self::peer(extensions)?;
        Some(self.resolve_from(peer, headers))
    }

    /// Resolves the client address of a request whose socket peer is `peer`.
    pub fn resolve_from(&self, peer: SocketAddr, headers: &HeaderMap) -> ClientAddr {
        let direct = ClientAddr::direct(peer);
        if self.trusted.is_empty() || !self.is_trusted(direct.ip) {
            return direct;
        }
        let use_forwarded = match self.header {
            ForwardedHeader::Forwarded => true,
            ForwardedHeader::XForwardedFor => false,
            ForwardedHeader::Any => headers.contains_key(FORWARDED),
        };
        let mut candidate = direct.ip;
        let mut moved = false;
        let mut visit = |hop: Option<IpAddr>| -> bool {
            // Returns true to continue walking left.
            match hop {
                Some(ip) => {
                    candidate = canonical_ip(ip);
                    moved = true;
                    self.is_trusted(candidate)
                }
                None => false,
            }
        };
        if use_forwarded {
            walk_right_to_left(headers, FORWARDED, parse_forwarded_element, &mut visit);
        } else {
            walk_right_to_left(headers, "x-forwarded-for", parse_xff_element, &mut visit);
        }
        ClientAddr {
            ip: candidate,
            peer,
            forwarded: moved,
        }
    }
}

/// Calls `visit` on each comma-separated element of all `name` headers, last
/// first, until it returns false or `MAX_HOPS` elements were seen. A header value
/// that is not visible ASCII ends the walk.
fn walk_right_to_left(
    headers: &HeaderMap,
    name: impl http::header::AsHeaderName,
    parse: fn(&str) -> Option<IpAddr>,
    visit: &mut dyn FnMut(Option<IpAddr>) -> bool,
) {
    let mut seen = 0;
    for value in headers.get_all(name).iter().rev() {
        let Ok(value) = value.to_str() else {
            visit(None);
            return;
        };
        for element in value.rsplit(',') {
            seen += 1;
            if seen > MAX_HOPS || !visit(parse(element.trim())) {
                return;
            }
        }
    }
}

fn parse_xff_element(s: &str) -> Option<IpAddr> {
    parse_node(s)
}

/// Extracts `for=` from one `Forwarded` element (`for=1.2.3.4;proto=https`).
fn parse_forwarded_element(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let v = v.trim();
        let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
        parse_node(v)
    })
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:443`. Obfuscated identifiers (`unknown`,
/// `_hidden`) are not addresses.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn peer(s: &str) -> SocketAddr {
        s.parse().expect("socket addr")
    }

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_bytes(v).expect("value"),
            );
        }
        h
    }

    fn proxies() -> ClientAddrResolver {
        ClientAddrResolver::new()
            .trust_proxy("10.0.0.0/8".parse().expect("net"))
            .trust_proxy("fd00::/8".parse().expect("net"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn without_trusted_proxies_headers_are_ignored() {
        let h = headers(&[("x-forwarded-for", b"1.1.1.1"), ("forwarded", b"for=2.2.2.2")]);
        let a = ClientAddrResolver::new().resolve_from(peer("203.0.113.9:5000"), &h);
        assert_eq!(a.ip(), ip("203.0.113.9"));
        assert!(!a.is_forwarded());
    }

    #[test]
    fn spoofed_headers_from_an_untrusted_peer_are_ignored() {
        let h = headers(&[("x-forwarded-for", b"10.0.0.1"), ("forwarded", b"for=10.0.0.2")]);
        let a = proxies().resolve_from(peer("198.51.100.4:1234"), &h);
        assert_eq!(a.ip(), ip("198.51.100.4"));
    }

    #[test]
    fn rightmost_untrusted_xff_address_wins() {
        // The client prepended a fake address; the proxies appended the real one.
        let h = headers(&[("x-forwarded-for", b"6.6.6.6, 203.0.113.7, 10.2.2.2")]);
        let a = proxies().resolve_from(peer("10.0.0.5:443"), &h);
        assert_eq!(a.ip(), ip("203.0.113.7"));
        assert!(a.is_forwarded());
        assert_eq!(a.peer(), peer("10.0.0.5:443"));
    }

    #[test]
    fn multiple_xff_lines_are_one_list() {
        let h = headers(&[
            ("x-forwarded-for", b"203.0.113.7"),
            ("x-forwarded-for", b"10.3.3.3"),
        ]);
        assert_eq!(
            proxies().resolve_from(peer("10.0.0.5:443"), &h).ip(),
            ip("203.0.113.7")
        );
    }

    #[test]
    fn forwarded_header_with_ports_quotes_and_ipv6() {
        let h = headers(&[(
            "forwarded",
            b"for=6.6.6.6, for=\"[2001:db8:cafe::17]:4711\";proto=https, For=\"10.1.1.1:80\";by=10.0.0.1",
        )]);
        let a = proxies().resolve_from(peer("10.0.0.5:443"), &h);
        assert_eq!(a.ip(), ip("2001:db8:cafe::17"));
        // Forwarded wins over X-Forwarded-For when both are present.
        let mut h2 = h.clone();
        h2.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
        assert_eq!(
            proxies().resolve_from(peer("10.0.0.5:443"), &h2).ip(),
            ip("2001:db8:cafe::17")
        );
        // Unless configured otherwise.
        let xff = proxies().header(ForwardedHeader::XForwardedFor);
        assert_eq!(xff.resolve_from(peer("10.0.0.5:443"), &h2).ip(), ip("192.0.2.1"));
    }

    #[test]
    fn malformed_headers_stop_at_the_last_trusted_hop() {
        for bad in [
            &b"not-an-ip"[..],
            b"",
            b"unknown",
            b"203.0.113.7, garbage",
            b"1.2.3.4.5",
            b"[::1",
        ] {
            let h = headers(&[("x-forwarded-for", bad)]);
            assert_eq!(
                proxies().resolve_from(peer("10.0.0.5:443"), &h).ip(),
                ip("10.0.0.5"),
                "{bad:?}"
            );
        }
        let h = headers(&[("x-forwarded-for", b"203.0.113.7, 10.1.1.1, junk")]);
        assert_eq!(
            proxies().resolve_from(peer("10.0.0.5:443"), &h).ip(),
            ip("10.0.0.5")
        );
        let h = headers(&[("forwarded", b"for=_hidden, for")]);
        assert_eq!(
            proxies().resolve_from(peer("10.0.0.5:443"), &h).ip(),
            ip("10.0.0.5")
        );
        // Non-UTF-8 bytes.
        let h = headers(&[("x-forwarded-for", b"\xff\xfe")]);
        assert_eq!(
            proxies().resolve_from(peer("10.0.0.5:443"), &h).ip(),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn all_trusted_chain_yields_the_leftmost() {
        let h = headers(&[("x-forwarded-for", b"10.9.9.9, 10.8.8.8")]);
        assert_eq!(
            proxies().resolve_from(peer("10.0.0.5:443"), &h).ip(),
            ip("10.9.9.9")
        );
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_networks() {
        let h = headers(&[("x-forwarded-for", b"203.0.113.7")]);
        let a = proxies().resolve_from(peer("[::ffff:10.0.0.5]:443"), &h);
        assert_eq!(a.ip(), ip("203.0.113.7"));
        assert_eq!(ClientAddr::direct(peer("[::ffff:1.2.3.4]:1")).ip(), ip("1.2.3.4"));
    }

    #[test]
    fn long_chains_are_bounded() {
        let chain = vec!["10.1.1.1"; 100].join(", ");
        let h = headers(&[("x-forwarded-for", format!("203.0.113.7, {chain}").as_bytes())]);
        assert_eq!(
            proxies().resolve_from(peer("10.0.0.5:443"), &h).ip(),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn peer_from_extensions() {
        let mut ext = http::Extensions::new();
        assert_eq!(ClientAddrResolver::peer(&ext), None);
        ext.insert(peer("127.0.0.1:9"));
        assert_eq!(ClientAddrResolver::peer(&ext), Some(peer("127.0.0.1:9")));
        ext.insert(PeerAddr(peer("127.0.0.2:9")));
        assert_eq!(ClientAddrResolver::peer(&ext), Some(peer("127.0.0.2:9")));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_header_bytes_never_panic(v in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            if let Ok(value) = HeaderValue::from_bytes(&v) {
                let mut h = HeaderMap::new();
                h.insert("x-forwarded-for", value.clone());
                h.insert("forwarded", value);
                let a = proxies().resolve_from(peer("10.0.0.5:443"), &h);
                let _ = a.ip();
            }
        }
    }
}
