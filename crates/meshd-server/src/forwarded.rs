//! Who called: the `forwarded` (RFC 7239), `x-forwarded-for` and
//! `x-forwarded-proto` headers meshd sets for the guest.
//!
//! A client may send these headers itself, so what it sent is believed only
//! when its address is one of the operator's trusted proxies
//! (`--trusted-proxies`): then meshd appends its own hop to what the proxy
//! said; from anyone else the headers are replaced.

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

/// `forwarded` (RFC 7239).
pub static FORWARDED: HeaderName = http::header::FORWARDED;
/// The de-facto `x-forwarded-for`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The de-facto `x-forwarded-proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The connection a request came on, as its listener saw it; a request
/// extension set by the front door for every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConn {
    /// The client's address: the TCP peer, or the address a PROXY protocol
    /// header named.
    pub client: SocketAddr,
    /// Whether the connection is TLS (the scheme the client used).
    pub tls: bool,
    /// This hop's forwarded values, rendered once for the connection
    /// rather than for each of its requests (a request's copies share the
    /// bytes).
    hop: Hop,
}

/// What meshd adds to the forwarded headers for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hop {
    /// `for=192.0.2.9;proto=http`, the `forwarded` element.
    element: HeaderValue,
    /// `192.0.2.9`, the `x-forwarded-for` entry.
    address: HeaderValue,
}

impl ClientConn {
    /// A connection from `client`, over TLS or not.
    pub fn new(client: SocketAddr, tls: bool) -> Self {
        let ip = client.ip().to_canonical();
        let node = match ip {
            IpAddr::V4(v4) => v4.to_string(),
            // RFC 7239 section 6: an IPv6 address is bracketed and quoted.
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        let proto = scheme(tls);
        // An address and a scheme: always a valid header value.
        let valid = |text: String| {
            HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
        };
        ClientConn {
            client,
            tls,
            hop: Hop {
                element: valid(format!("for={node};proto={proto}")),
                address: valid(ip.to_string()),
            },
        }
    }

    /// `https` or `http`.
    pub fn proto(&self) -> &'static str {
        scheme(self.tls)
    }

    /// The client's IP address, an IPv4-mapped IPv6 address as IPv4.
    pub fn ip(&self) -> IpAddr {
        self.client.ip().to_canonical()
    }
}

/// `https` over TLS, else `http`.
fn scheme(tls: bool) -> &'static str {
    if tls {
        "https"
    } else {
        "http"
    }
}

/// The networks whose forwarded headers meshd believes.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// The given networks (an address is a network of one).
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets)
    }

    /// Parses `10.0.0.0/8,192.0.2.7,2001:db8::/32`: CIDRs or plain
    /// addresses, comma-separated, blanks ignored.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{item:?} is not a CIDR (10.0.0.0/8) or an IP address"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    /// Whether `ip` is in one of the networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// Whether no network is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self.0.iter().map(IpNet::to_string).collect();
        f.write_str(&list.join(","))
    }
}

/// Sets the forwarded headers of a request that came on `conn`: appended
/// to what a trusted proxy sent, replacing what anyone else sent.
pub fn set_forwarded(headers: &mut HeaderMap, conn: &ClientConn, trusted: &TrustedProxies) {
    // Most front doors trust no proxy: no need to look at the address.
    let trust = !trusted.is_empty() && trusted.contains(conn.ip());
    append_or_replace(headers, &FORWARDED, &conn.hop.element, trust);
    append_or_replace(headers, &X_FORWARDED_FOR, &conn.hop.address, trust);
    // One value, the scheme the original client used: a trusted proxy's
    // stands, since it saw that client.
    if !(trust && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(conn.proto()),
        );
    }
}

/// Sets `name` to `ours`, after the values already there (all its lines,
/// joined as one list) when `keep` is true.
fn append_or_replace(headers: &mut HeaderMap, name: &HeaderName, ours: &HeaderValue, keep: bool) {
    let mut value = Vec::new();
    if keep {
        for existing in headers.get_all(name) {
            value.extend_from_slice(existing.as_bytes());
            value.extend_from_slice(b", ");
        }
    }
    let value = if value.is_empty() {
        ours.clone()
    } else {
        value.extend_from_slice(ours.as_bytes());
        // Made of valid header values: always valid.
        match HeaderValue::from_bytes(&value) {
            Ok(value) => value,
            Err(_) => ours.clone(),
        }
    };
    headers.insert(name.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(client: &str, tls: bool) -> ClientConn {
        ClientConn::new(client.parse().unwrap(), tls)
    }

    fn spoofed() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(&FORWARDED, HeaderValue::from_static("for=1.1.1.1"));
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        headers.append(&X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        headers
    }

    #[test]
    fn an_untrusted_client_cannot_spoof() {
        let mut headers = spoofed();
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        set_forwarded(&mut headers, &conn("192.0.2.9:5000", false), &trusted);
        assert_eq!(headers[&FORWARDED], "for=192.0.2.9;proto=http");
        assert_eq!(headers.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(headers[&X_FORWARDED_FOR], "192.0.2.9");
        assert_eq!(headers[&X_FORWARDED_PROTO], "http");
    }

    #[test]
    fn a_trusted_proxy_is_appended_to() {
        let mut headers = spoofed();
        let trusted = TrustedProxies::parse(" 10.0.0.0/8 , ::1").unwrap();
        set_forwarded(
            &mut headers,
            &conn("[::ffff:10.1.2.3]:5000", true),
            &trusted,
        );
        assert_eq!(headers[&FORWARDED], "for=1.1.1.1, for=10.1.2.3;proto=https");
        assert_eq!(headers[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.1.2.3");
        assert_eq!(headers[&X_FORWARDED_PROTO], "https");

        let mut headers = HeaderMap::new();
        set_forwarded(&mut headers, &conn("[::1]:5000", true), &trusted);
        assert_eq!(headers[&FORWARDED], "for=\"[::1]\";proto=https");
        assert_eq!(headers[&X_FORWARDED_FOR], "::1");
        assert_eq!(headers[&X_FORWARDED_PROTO], "https");
    }

    #[test]
    fn trusted_proxies_parse() {
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        let trusted = TrustedProxies::parse("192.0.2.7,2001:db8::/32").unwrap();
        assert!(trusted.contains("192.0.2.7".parse().unwrap()));
        assert!(!trusted.contains("192.0.2.8".parse().unwrap()));
        assert!(trusted.contains("2001:db8::5".parse().unwrap()));
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.example").is_err());
    }
}
