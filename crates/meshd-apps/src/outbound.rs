//! `[outbound] allow = [...]`: where an app may send HTTP requests.
//!
//! A rule is `scheme://host[:port]`. The host is a name, an IP address, or
//! `*.domain` (any name below `domain`, not `domain` itself). Without a port,
//! only the scheme's default port (80 or 443) is allowed.

use std::fmt;

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRule {
    https: bool,
    host: HostPattern,
    port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` stored as `.example.com`.
    Subdomains(String),
}

impl OutboundRule {
    /// Parses a rule such as `https://*.example.com` or
    /// `http://127.0.0.1:9000`.
    pub fn parse(rule: &str) -> Result<Self, String> {
        let (scheme, rest) = rule
            .split_once("://")
            .ok_or_else(|| format!("{rule:?} must start with http:// or https://"))?;
        let https = match scheme {
            "http" => false,
            "https" => true,
            _ => return Err(format!("{rule:?}: scheme must be http or https")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) || rest.is_empty() {
            return Err(format!(
                "{rule:?} must be scheme://host[:port], without path or user info"
            ));
        }
        let authority: http::uri::Authority = rest
            .parse()
            .map_err(|e| format!("{rule:?}: invalid host: {e}"))?;
        let host = authority.host().to_ascii_lowercase();
        let host = match host.strip_prefix("*.") {
            Some(domain) if !domain.is_empty() && !domain.contains('*') => {
                HostPattern::Subdomains(format!(".{domain}"))
            }
            _ if host.contains('*') => {
                return Err(format!("{rule:?}: '*' is only allowed as '*.domain'"))
            }
            _ => HostPattern::Exact(host),
        };
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(OutboundRule { https, host, port })
    }

    /// Whether a request to `host:port` over `https` (or http) is allowed.
    /// `host` must already be lowercase, without brackets for IPv6.
    pub fn allows(&self, https: bool, host: &str, port: u16) -> bool {
        self.https == https
            && self.port == port
            && match &self.host {
                HostPattern::Exact(exact) => exact.trim_matches(['[', ']']) == host,
                HostPattern::Subdomains(suffix) => {
                    host.len() > suffix.len() && host.ends_with(suffix.as_str())
                }
            }
    }

    /// Whether the rule names an IP address: only such rules may reach
    /// loopback and private addresses. A name, even `localhost`, never does.
    pub fn names_address_explicitly(&self) -> bool {
        self.address().is_some()
    }

    /// The IP address the rule names, if it names one rather than a host.
    pub fn address(&self) -> Option<std::net::IpAddr> {
        match &self.host {
            HostPattern::Exact(host) => host.trim_matches(['[', ']']).parse().ok(),
            HostPattern::Subdomains(_) => None,
        }
    }
}

impl fmt::Display for OutboundRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        match &self.host {
            HostPattern::Exact(host) => write!(f, "{scheme}://{host}:{}", self.port),
            HostPattern::Subdomains(suffix) => write!(f, "{scheme}://*{suffix}:{}", self.port),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_hosts_and_default_ports() {
        let rule = OutboundRule::parse("https://api.example.com").unwrap();
        assert!(rule.allows(true, "api.example.com", 443));
        assert!(!rule.allows(false, "api.example.com", 443));
        assert!(!rule.allows(true, "api.example.com", 8443));
        assert!(!rule.allows(true, "evil-api.example.com", 443));
        assert!(!rule.names_address_explicitly());
    }

    #[test]
    fn explicit_ports_and_addresses() {
        let rule = OutboundRule::parse("http://127.0.0.1:9000").unwrap();
        assert!(rule.allows(false, "127.0.0.1", 9000));
        assert!(!rule.allows(false, "127.0.0.1", 9001));
        assert!(rule.names_address_explicitly());
        let rule = OutboundRule::parse("http://[::1]:9000").unwrap();
        assert!(rule.allows(false, "::1", 9000));
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let rule = OutboundRule::parse("https://*.example.com").unwrap();
        assert!(rule.allows(true, "a.example.com", 443));
        assert!(rule.allows(true, "a.b.example.com", 443));
        assert!(!rule.allows(true, "example.com", 443));
        assert!(!rule.allows(true, "badexample.com", 443));
        assert!(!rule.allows(true, "example.com.evil.net", 443));
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in [
            "example.com",
            "ftp://example.com",
            "https://example.com/path",
            "https://user@example.com",
            "https://ex*ample.com",
            "https://",
        ] {
            assert!(OutboundRule::parse(bad).is_err(), "{bad}");
        }
    }
}
