//! Which address a request comes from.
//!
//! The socket peer is the truth unless it is one of *your* proxies. Only then is the
//! one forwarding header those proxies set read (`X-Forwarded-For` by default, or
//! RFC 7239 `Forwarded`: named in configuration, never picked by what the request
//! carries), from the right, skipping further trusted proxies, and the first
//! untrusted address is the client. A client talking to the service directly cannot
//! move itself anywhere by sending those headers, a client behind the proxy cannot
//! by adding the *other* header, and malformed headers never fail a request: the
//! resolution stops at the last address that could be trusted.
//!
//! Controls that keep state per address (rate limits, the failure limit, risk) key
//! it on [`ClientAddr::key_ip`]: the IPv4 address itself, or the IPv6 address cut to
//! a prefix (/64 by default, [`ClientAddrResolver::ipv6_prefix`]), since one host
//! holds a whole /64 and can rotate through it at will.

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
    key: IpAddr,
    peer: SocketAddr,
    forwarded: bool,
}

/// The IPv6 prefix per-address state is keyed on unless configured otherwise.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

impl ClientAddr {
    /// The client's IP address (IPv4-mapped IPv6 addresses are shown as IPv4).
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The address per-address limits and signals are keyed on: the IPv4 address,
    /// or the IPv6 address with every bit past the resolver's prefix cleared
    /// (`2001:db8:1:2::` for any address in `2001:db8:1:2::/64` by default), so a
    /// host rotating addresses inside its prefix stays one key.
    pub fn key_ip(&self) -> IpAddr {
        self.key
    }

    /// The socket peer of the connection (the proxy, when `forwarded`).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the address came from a forwarding header of a trusted proxy.
    pub fn is_forwarded(&self) -> bool {
        self.forwarded
    }

    /// A client address that is the socket peer itself (IPv6 keyed by its /64).
    pub fn direct(peer: SocketAddr) -> Self {
        Self::at(canonical_ip(peer.ip()), peer, false, DEFAULT_IPV6_PREFIX)
    }

    fn at(ip: IpAddr, peer: SocketAddr, forwarded: bool, ipv6_prefix: u8) -> Self {
        let key = match ip {
            IpAddr::V6(v6) if ipv6_prefix < 128 => {
                let mask = u128::MAX.checked_shl(u32::from(128 - ipv6_prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
            other => other,
        };
        Self {
            ip,
            key,
            peer,
            forwarded,
        }
    }
}

/// Which forwarding header the trusted proxies set. Only that one is read: a
/// header the proxies do not set passes through them untouched, so whatever it says
/// came from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx's `$proxy_add_x_forwarded_for`, most load
    /// balancers). The default.
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded` (`for=` of each element).
    Forwarded,
}

impl ForwardedHeader {
    /// The header's name in lower case.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
        }
    }
}

impl std::str::FromStr for ForwardedHeader {
    type Err = UnknownForwardedHeader;

    /// `x-forwarded-for` or `forwarded`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("x-forwarded-for") {
            Ok(Self::XForwardedFor)
        } else if s.trim().eq_ignore_ascii_case("forwarded") {
            Ok(Self::Forwarded)
        } else {
            Err(UnknownForwardedHeader)
        }
    }
}

/// A forwarding header name that is neither `x-forwarded-for` nor `forwarded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the forwarding header must be x-forwarded-for or forwarded")]
pub struct UnknownForwardedHeader;

/// An IPv6 key prefix longer than 128 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the IPv6 key prefix must be between 0 and 128 bits, not {0}")]
pub struct InvalidIpv6Prefix(pub u8);

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
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct ClientAddrResolver {
    trusted: Vec<IpNet>,
    header: ForwardedHeader,
    ipv6_prefix: u8,
}

impl Default for ClientAddrResolver {
    fn default() -> Self {
        Self {
            trusted: Vec::new(),
            header: ForwardedHeader::default(),
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }
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

    /// Names the forwarding header the trusted proxies set (default
    /// `X-Forwarded-For`). The other one is never read.
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// The IPv6 prefix per-address state is keyed on (default 64; 128 keys every
    /// address on its own). See [`ClientAddr::key_ip`].
    ///
    /// # Errors
    /// A prefix over 128.
    pub fn ipv6_prefix(mut self, bits: u8) -> Result<Self, InvalidIpv6Prefix> {
        if bits > 128 {
            return Err(InvalidIpv6Prefix(bits));
        }
        self.ipv6_prefix = bits;
        Ok(self)
    }

    /// The trusted proxy networks.
    pub fn trusted_proxies(&self) -> &[IpNet] {
        &self.trusted
    }

    /// The forwarding header read from trusted proxies.
    pub fn forwarded_header(&self) -> ForwardedHeader {
        self.header
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
        let direct = canonical_ip(peer.ip());
        if self.trusted.is_empty() || !self.is_trusted(direct) {
            return ClientAddr::at(direct, peer, false, self.ipv6_prefix);
        }
        let mut candidate = direct;
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
        match self.header {
            ForwardedHeader::Forwarded => {
                walk_right_to_left(headers, FORWARDED, parse_forwarded_element, &mut visit);
            }
            ForwardedHeader::XForwardedFor => {
                walk_right_to_left(headers, "x-forwarded-for", parse_xff_element, &mut visit);
            }
        }
        ClientAddr::at(candidate, peer, moved, self.ipv6_prefix)
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
        let fwd = proxies().header(ForwardedHeader::Forwarded);
        let a = fwd.resolve_from(peer("10.0.0.5:443"), &h);
        assert_eq!(a.ip(), ip("2001:db8:cafe::17"));
        // Configured for Forwarded, an X-Forwarded-For is never read.
        let mut h2 = h.clone();
        h2.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
        assert_eq!(
            fwd.resolve_from(peer("10.0.0.5:443"), &h2).ip(),
            ip("2001:db8:cafe::17")
        );
        let only_xff = headers(&[("x-forwarded-for", b"192.0.2.1")]);
        assert_eq!(
            fwd.resolve_from(peer("10.0.0.5:443"), &only_xff).ip(),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn a_client_added_forwarded_header_is_not_believed_behind_an_xff_proxy() {
        // nginx appends the real peer to X-Forwarded-For and passes the client's own
        // `Forwarded` through untouched: the default reads X-Forwarded-For only.
        let h = headers(&[
            ("forwarded", b"for=192.0.2.99"),
            ("x-forwarded-for", b"203.0.113.7"),
        ]);
        let a = proxies().resolve_from(peer("10.0.0.5:443"), &h);
        assert_eq!(a.ip(), ip("203.0.113.7"));
        assert_eq!(proxies().forwarded_header(), ForwardedHeader::XForwardedFor);
        // A Forwarded header alone moves nothing.
        let h = headers(&[("forwarded", b"for=192.0.2.99")]);
        assert_eq!(
            proxies().resolve_from(peer("10.0.0.5:443"), &h).ip(),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn forwarded_header_names_parse() {
        assert_eq!("X-Forwarded-For".parse(), Ok(ForwardedHeader::XForwardedFor));
        assert_eq!(" forwarded ".parse(), Ok(ForwardedHeader::Forwarded));
        assert_eq!(
            "x-real-ip".parse::<ForwardedHeader>(),
            Err(UnknownForwardedHeader)
        );
        for h in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
            assert_eq!(h.as_str().parse(), Ok(h));
        }
    }

    #[test]
    fn ipv6_addresses_are_keyed_by_their_prefix() {
        let r = ClientAddrResolver::new();
        let a = r.resolve_from(peer("[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:1"), &HeaderMap::new());
        let b = r.resolve_from(peer("[2001:db8:1:2::9]:1"), &HeaderMap::new());
        assert_eq!(a.ip(), ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd"));
        assert_eq!(a.key_ip(), ip("2001:db8:1:2::"));
        assert_eq!(a.key_ip(), b.key_ip());
        let other = r.resolve_from(peer("[2001:db8:1:3::9]:1"), &HeaderMap::new());
        assert_ne!(a.key_ip(), other.key_ip());
        assert_eq!(
            ClientAddr::direct(peer("[2001:db8:1:2::9]:1")).key_ip(),
            ip("2001:db8:1:2::")
        );
        // IPv4 and IPv4-mapped addresses are keyed as they are.
        let v4 = r.resolve_from(peer("[::ffff:198.51.100.4]:1"), &HeaderMap::new());
        assert_eq!(v4.key_ip(), ip("198.51.100.4"));
        // Other prefixes, also for forwarded addresses.
        let r48 = proxies().ipv6_prefix(48).expect("prefix");
        let h = headers(&[("x-forwarded-for", b"2001:db8:1:2::9")]);
        assert_eq!(
            r48.resolve_from(peer("10.0.0.5:443"), &h).key_ip(),
            ip("2001:db8:1::")
        );
        let each = r.clone().ipv6_prefix(128).expect("prefix");
        assert_eq!(
            each.resolve_from(peer("[2001:db8::9]:1"), &HeaderMap::new())
                .key_ip(),
            ip("2001:db8::9")
        );
        let all = r.clone().ipv6_prefix(0).expect("prefix");
        assert_eq!(
            all.resolve_from(peer("[2001:db8::9]:1"), &HeaderMap::new())
                .key_ip(),
            ip("::")
        );
        assert_eq!(r.ipv6_prefix(129).unwrap_err(), InvalidIpv6Prefix(129));
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
