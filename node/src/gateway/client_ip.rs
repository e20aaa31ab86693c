//! Who a request comes from: the client's address, for everything keyed by
//! address (login and registration limits).
//!
//! Behind a reverse proxy every connection comes from the proxy; the proxy
//! names the client in `Forwarded` (RFC 7239) or `X-Forwarded-For`. Those
//! headers are believed only from `trusted_proxies`: from anyone else they are
//! ignored, or any client could pick its own address. Each trusted proxy
//! appends the address it got the request from, so the list is read from the
//! right: the first hop that is not a trusted proxy is the client.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;

use super::{ApiError, Gateway};
use crate::protocol::ErrorCode;

/// The `trusted_proxies` setting: addresses and networks of reverse proxies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses `10.0.0.5`, `10.0.0.0/8`, `::1`, `fd00::/8`.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let mut nets = Vec::with_capacity(entries.len());
        for entry in entries {
            let entry = entry.as_ref().trim();
            let net = match entry.parse::<IpNet>() {
                Ok(net) => net.trunc(),
                Err(_) => match entry.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => return Err(format!("{entry:?} is not an address or CIDR")),
                },
            };
            nets.push(net);
        }
        Ok(Self(nets))
    }

    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The proxies, as addresses and networks (`config check` prints them).
    pub fn entries(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The client's address of a request that arrived from `peer`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let mut client = peer.to_canonical();
    if !trusted.trusts(client) {
        return client;
    }
    // `Forwarded` is the standard; `X-Forwarded-For` the common older form. A
    // proxy that sends both sends the same hops.
    let hops = match forwarded_hops(headers) {
        Some(hops) => hops,
        None => x_forwarded_for_hops(headers),
    };
    for hop in hops.into_iter().rev() {
        match hop {
            // An unreadable hop (`unknown`, an obfuscated name): nothing left of
            // it can be believed; the trusted proxy that wrote it is the client.
            None => return client,
            Some(ip) => {
                client = ip.to_canonical();
                if !trusted.trusts(client) {
                    return client;
                }
            }
        }
    }
    client
}

/// The `for=` of every element of every `Forwarded` header, in order; `None`
/// when there is no such header.
fn forwarded_hops(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut hops = Vec::new();
    let mut any = false;
    for value in headers.get_all("forwarded") {
        any = true;
        let Ok(value) = value.to_str() else {
            hops.push(None);
            continue;
        };
        for element in split_outside_quotes(value, ',') {
            let for_value = split_outside_quotes(element, ';')
                .into_iter()
                .filter_map(|pair| pair.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                .map(|(_, value)| value.trim());
            hops.push(for_value.and_then(node_ip));
        }
    }
    any.then_some(hops)
}

/// The entries of every `X-Forwarded-For` header, in order.
fn x_forwarded_for_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        match value.to_str() {
            Ok(value) => hops.extend(value.split(',').map(|hop| node_ip(hop.trim()))),
            Err(_) => hops.push(None),
        }
    }
    hops
}

/// Splits at `sep` where it is not inside a quoted string.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut quoted, mut escaped, mut start) = (false, false, 0);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// An RFC 7239 node (`192.0.2.1`, `192.0.2.1:80`, `"[2001:db8::1]:80"`), or a
/// bare address as `X-Forwarded-For` has it; `None` for `unknown`, obfuscated
/// names and anything else.
fn node_ip(node: &str) -> Option<IpAddr> {
    let node = node.trim().trim_matches('"');
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    if let Ok(ip) = node.parse() {
        return Some(ip);
    }
    // IPv4 with a port.
    let (host, port) = node.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The client's address, as an extractor (see [`client_ip`]).
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<Gateway> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, gw: &Gateway) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
            .ok_or_else(|| {
                // The router is served with connect info (server.rs); without it
                // this is a wiring bug, not the client's fault.
                ApiError::new(ErrorCode::Internal, "the client address is unknown")
            })?;
        Ok(Self(client_ip(peer, &parts.headers, &gw.trusted_proxies)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// `(peer, headers, expected client)` with proxies 10.0.0.0/8 and ::1.
    fn check(peer: &str, pairs: &[(&'static str, &str)], expected: &str) {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8", "::1"]).unwrap();
        let got = client_ip(ip(peer), &headers(pairs), &trusted);
        assert_eq!(got, ip(expected), "peer {peer}, headers {pairs:?}");
    }

    #[test]
    fn headers_count_only_from_trusted_proxies() {
        let xff = "x-forwarded-for";
        check("192.0.2.1", &[], "192.0.2.1");
        // A client cannot name itself.
        check("192.0.2.1", &[(xff, "198.51.100.7")], "192.0.2.1");
        check(
            "192.0.2.1",
            &[("forwarded", "for=198.51.100.7")],
            "192.0.2.1",
        );
        check("10.1.2.3", &[], "10.1.2.3");
        check("10.1.2.3", &[(xff, "198.51.100.7")], "198.51.100.7");
        check("::1", &[(xff, "2001:db8::7")], "2001:db8::7");
        check("::ffff:10.1.2.3", &[(xff, "198.51.100.7")], "198.51.100.7");
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let xff = "x-forwarded-for";
        // What the client itself wrote (the left part) is not believed.
        check(
            "10.0.0.1",
            &[(xff, "1.1.1.1, 198.51.100.7")],
            "198.51.100.7",
        );
        check(
            "10.0.0.1",
            &[(xff, "1.1.1.1, 198.51.100.7, 10.0.0.2")],
            "198.51.100.7",
        );
        // Several header lines are one list.
        check(
            "10.0.0.1",
            &[(xff, "1.1.1.1"), (xff, "198.51.100.7, 10.0.0.9")],
            "198.51.100.7",
        );
        // All trusted: the left-most.
        check("10.0.0.1", &[(xff, "10.0.0.3, 10.0.0.2")], "10.0.0.3");
        // Garbage stops the walk at the proxy that passed it on.
        check("10.0.0.1", &[(xff, "198.51.100.7, nonsense")], "10.0.0.1");
        check(
            "10.0.0.1",
            &[(xff, "198.51.100.7, bogus, 10.0.0.2")],
            "10.0.0.2",
        );
    }

    #[test]
    fn forwarded_is_read_as_rfc_7239_says_and_wins_over_x_forwarded_for() {
        let f = "forwarded";
        check(
            "10.0.0.1",
            &[(f, "for=192.0.2.60;proto=http;by=203.0.113.43")],
            "192.0.2.60",
        );
        check(
            "10.0.0.1",
            &[(f, r#"for="[2001:db8:cafe::17]:4711", For=198.51.100.7:80"#)],
            "198.51.100.7",
        );
        check(
            "10.0.0.1",
            &[(
                f,
                r#"for="[2001:db8:cafe::17]:4711";by="x,y", for=10.0.0.2"#,
            )],
            "2001:db8:cafe::17",
        );
        check("10.0.0.1", &[(f, "for=unknown")], "10.0.0.1");
        check("10.0.0.1", &[(f, "for=_hidden, for=10.0.0.2")], "10.0.0.2");
        check("10.0.0.1", &[(f, "proto=https")], "10.0.0.1");
        check(
            "10.0.0.1",
            &[(f, "for=192.0.2.60"), ("x-forwarded-for", "198.51.100.7")],
            "192.0.2.60",
        );
    }

    #[test]
    fn trusted_proxies_take_addresses_and_networks() {
        let trusted = TrustedProxies::parse(&["10.0.0.5", "fd00::/8", " 172.16.0.0/12 "]).unwrap();
        assert!(trusted.trusts(ip("10.0.0.5")));
        assert!(!trusted.trusts(ip("10.0.0.6")));
        assert!(trusted.trusts(ip("fd12::1")));
        assert!(trusted.trusts(ip("172.20.1.1")));
        assert!(TrustedProxies::parse(&["10.0.0.0/33"]).is_err());
        assert!(TrustedProxies::parse(&["proxy.example"]).is_err());
        assert!(TrustedProxies::default().is_empty());
    }
}
