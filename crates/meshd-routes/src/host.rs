//! Hosts: the host part of a manifest route, and the host a request names.
//!
//! Both sides are brought to one form before they are compared: lower case,
//! no port, no trailing dot, and internationalised names in their ASCII
//! (punycode) form, `xn--...`. A manifest may write a host in Unicode
//! (`bücher.example`); a request always carries the ASCII form, which is what
//! browsers and HTTP libraries put in `Host` and `:authority`.
//!
//! A wildcard host `*.example.com` stands for exactly **one** label in front
//! of `example.com`: `shop.example.com` matches, `a.b.example.com` and
//! `example.com` itself do not. This is what a wildcard TLS certificate
//! covers (RFC 6125 §6.4.3, and what ACME CAs issue), so every host a
//! wildcard route serves can be served over HTTPS with one wildcard
//! certificate; it is also how Caddy reads `*.example.com`. Deeper names get
//! a route of their own (`*.b.example.com`).

use std::borrow::Cow;
use std::fmt;

/// The host of a route: one exact host, or every host one label below a
/// domain.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteHost {
    /// Exactly this host, e.g. `shop.example.com` (normalised: ASCII, lower
    /// case, no trailing dot).
    Exact(String),
    /// `*.{domain}`: any host with one more label in front of `domain`
    /// (normalised like [`RouteHost::Exact`]; stored without the `*.`).
    Wildcard(String),
}

/// Why a manifest's host is not a valid [`RouteHost`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The host has a port; routes match any port.
    #[error("host {0:?} has a port: routes match every port, write the host alone")]
    Port(String),
    /// A `*` anywhere but as the whole first label.
    #[error("host {0:?} has a '*' that is not the whole first label (write *.example.com)")]
    BadWildcard(String),
    /// Not a valid domain name (after IDNA processing).
    #[error("host {host:?} is not a valid domain name ({reason})")]
    Invalid {
        /// The host as written.
        host: String,
        /// What IDNA processing (UTS #46, STD3 rules) objected to.
        reason: String,
    },
}

impl RouteHost {
    /// Parses the host of a manifest route: `shop.example.com`,
    /// `*.example.com`, or a Unicode name (converted to punycode).
    pub fn parse(host: &str) -> Result<Self, HostError> {
        if host.starts_with('[') {
            return Err(HostError::Invalid {
                host: host.to_owned(),
                reason: "IPv6 addresses cannot be route hosts".to_owned(),
            });
        }
        if host.contains(':') {
            return Err(HostError::Port(host.to_owned()));
        }
        let (wildcard, domain) = match host.strip_prefix("*.") {
            Some(domain) => (true, domain),
            None => (false, host),
        };
        if domain.contains('*') {
            return Err(HostError::BadWildcard(host.to_owned()));
        }
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        let ascii = idna::domain_to_ascii_strict(domain).map_err(|e| HostError::Invalid {
            host: host.to_owned(),
            reason: e.to_string(),
        })?;
        if ascii.is_empty() {
            return Err(HostError::Invalid {
                host: host.to_owned(),
                reason: "it is empty".to_owned(),
            });
        }
        Ok(if wildcard {
            RouteHost::Wildcard(ascii)
        } else {
            RouteHost::Exact(ascii)
        })
    }
}

impl fmt::Display for RouteHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteHost::Exact(host) => f.write_str(host),
            RouteHost::Wildcard(domain) => write!(f, "*.{domain}"),
        }
    }
}

/// The host a request names, normalised for routing: lower case, without
/// port or trailing dot. Built by [`RequestHost::parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHost<'a>(Cow<'a, str>);

/// A request's `Host` (or authority) that no route could ever match and
/// that proxies may read differently: refused rather than guessed at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid host {0:?}")]
pub struct BadHost(pub String);

impl<'a> RequestHost<'a> {
    /// Reads the authority of a request (the URI's, or the `Host` header):
    /// `Shop.Example.com:8080` is `shop.example.com`. An empty value is no
    /// host (`Ok(None)`): such a request matches host-less routes only.
    ///
    /// Accepted: letters, digits, `-`, `_` and `.` (a domain name or IPv4
    /// address), or a bracketed IPv6 address; then an optional `:port`.
    /// Anything else (user info, spaces, a path, an empty label) is
    /// [`BadHost`].
    pub fn parse(authority: &'a str) -> Result<Option<Self>, BadHost> {
        if authority.is_empty() {
            return Ok(None);
        }
        let bad = || BadHost(authority.to_owned());
        let (host, port) = if authority.starts_with('[') {
            let end = authority.find(']').ok_or_else(bad)?;
            let (host, rest) = authority.split_at(end + 1);
            let inner = &host[1..host.len() - 1];
            let ipv6_chars = |c: char| c.is_ascii_hexdigit() || c == ':' || c == '.';
            if inner.is_empty() || !inner.chars().all(ipv6_chars) {
                return Err(bad());
            }
            match rest {
                "" => (host, None),
                _ => (host, Some(rest.strip_prefix(':').ok_or_else(bad)?)),
            }
        } else {
            match authority.bytes().position(|b| b == b':') {
                Some(colon) => (&authority[..colon], Some(&authority[colon + 1..])),
                None => (authority, None),
            }
        };
        if port.is_some_and(|p| !p.bytes().all(|b| b.is_ascii_digit())) {
            return Err(bad());
        }
        let host = host.strip_suffix('.').unwrap_or(host);
        let has_upper = if host.starts_with('[') {
            host.bytes().any(|b| b.is_ascii_uppercase())
        } else {
            domain_has_upper(host).ok_or_else(bad)?
        };
        let host = if has_upper {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        Ok(Some(RequestHost(host)))
    }

    /// The normalised host, e.g. `shop.example.com`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The domain a one-label wildcard would name to cover this host:
    /// `example.com` for `shop.example.com`; none for a single label.
    pub(crate) fn wildcard_domain(&self) -> Option<&str> {
        if self.0.starts_with('[') {
            return None;
        }
        self.0.split_once('.').map(|(_, domain)| domain)
    }
}

/// Checks a request's host name (no port, no trailing dot) in one pass:
/// labels of letters, digits, `-` and `_`, none empty. `Some(true)` when it
/// has upper-case letters, `None` when it is not such a name. (One pass
/// because this runs for every request.)
fn domain_has_upper(host: &str) -> Option<bool> {
    let (mut label_len, mut has_upper) = (0usize, false);
    for b in host.bytes() {
        match b {
            b'.' if label_len == 0 => return None,
            b'.' => label_len = 0,
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => label_len += 1,
            b'A'..=b'Z' => {
                label_len += 1;
                has_upper = true;
            }
            _ => return None,
        }
    }
    (label_len > 0).then_some(has_upper)
}

impl fmt::Display for RequestHost<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(raw: &str) -> Option<String> {
        RequestHost::parse(raw)
            .unwrap()
            .map(|h| h.as_str().to_owned())
    }

    #[test]
    fn route_hosts_are_lower_case_ascii_without_trailing_dot() {
        assert_eq!(
            RouteHost::parse("Shop.Example.COM").unwrap(),
            RouteHost::Exact("shop.example.com".into())
        );
        assert_eq!(
            RouteHost::parse("shop.example.com.").unwrap(),
            RouteHost::Exact("shop.example.com".into())
        );
        assert_eq!(
            RouteHost::parse("*.Example.com").unwrap(),
            RouteHost::Wildcard("example.com".into())
        );
        assert_eq!(
            RouteHost::parse("*.example.com").unwrap().to_string(),
            "*.example.com"
        );
    }

    #[test]
    fn unicode_route_hosts_become_punycode() {
        assert_eq!(
            RouteHost::parse("Bücher.example").unwrap(),
            RouteHost::Exact("xn--bcher-kva.example".into())
        );
        assert_eq!(
            RouteHost::parse("*.bücher.example").unwrap().to_string(),
            "*.xn--bcher-kva.example"
        );
        // Already punycode: unchanged.
        assert_eq!(
            RouteHost::parse("xn--bcher-kva.example").unwrap(),
            RouteHost::Exact("xn--bcher-kva.example".into())
        );
    }

    #[test]
    fn route_hosts_refuse_ports_stray_wildcards_and_non_names() {
        assert!(matches!(
            RouteHost::parse("shop.example.com:8080"),
            Err(HostError::Port(_))
        ));
        for host in ["*", "a*.example.com", "*.*.example.com", "shop.*.com"] {
            assert!(
                matches!(
                    RouteHost::parse(host),
                    Err(HostError::BadWildcard(_) | HostError::Invalid { .. })
                ),
                "{host}"
            );
        }
        for host in [
            "",
            ".",
            "a..b",
            "sh op.example",
            "a@b.example",
            "-x.example",
            "[::1]",
        ] {
            assert!(
                matches!(RouteHost::parse(host), Err(HostError::Invalid { .. })),
                "{host}"
            );
        }
    }

    #[test]
    fn request_hosts_drop_port_case_and_trailing_dot() {
        assert_eq!(request("shop.example.com"), Some("shop.example.com".into()));
        assert_eq!(
            request("Shop.Example.COM:8080"),
            Some("shop.example.com".into())
        );
        assert_eq!(
            request("shop.example.com."),
            Some("shop.example.com".into())
        );
        assert_eq!(
            request("shop.example.com.:80"),
            Some("shop.example.com".into())
        );
        assert_eq!(request("127.0.0.1:8080"), Some("127.0.0.1".into()));
        assert_eq!(request("[::1]:8080"), Some("[::1]".into()));
        assert_eq!(request("[FE80::1]"), Some("[fe80::1]".into()));
        assert_eq!(request("localhost:"), Some("localhost".into()));
        assert_eq!(
            request("My_Host-1.Example"),
            Some("my_host-1.example".into())
        );
        assert_eq!(request(""), None);
    }

    #[test]
    fn request_hosts_that_no_route_could_name_are_refused() {
        for raw in [
            "user@shop.example.com",
            "shop.example.com/x",
            "shop example.com",
            "shop.example.com:http",
            "a..b",
            "a..",
            "A..B:80",
            ".",
            ":80",
            "[::1",
            "[::1]x",
            "[]",
            "bücher.example",
        ] {
            assert!(RequestHost::parse(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn a_wildcard_covers_exactly_one_label() {
        let host = RequestHost::parse("a.b.example.com").unwrap().unwrap();
        assert_eq!(host.wildcard_domain(), Some("b.example.com"));
        let host = RequestHost::parse("localhost").unwrap().unwrap();
        assert_eq!(host.wildcard_domain(), None);
        let host = RequestHost::parse("[::1]").unwrap().unwrap();
        assert_eq!(host.wildcard_domain(), None);
    }
}
