//! Name lookups for outbound HTTP, asynchronous: a lookup waits on a socket,
//! not on a thread. (`getaddrinfo` ran on tokio's blocking pool, which also
//! runs every tenant's key-value calls and file access and meshd's loading:
//! one tenant's slow DNS could hold those threads, and a lookup abandoned at
//! its timeout kept its thread until the system resolver gave up.)

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::TokioResolver;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use wasmtime_wasi_http::Error;

/// The default for `[outbound] lookup_timeout`.
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where names are looked up, and for how long at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Name servers to ask (UDP, then TCP); empty: the system's, from
    /// `/etc/resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
    /// Longest one lookup may take, all servers and retries together.
    pub timeout: Duration,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        ResolverSettings {
            nameservers: Vec::new(),
            timeout: DEFAULT_LOOKUP_TIMEOUT,
        }
    }
}

/// The daemon's resolver, shared by every app.
pub struct Resolver {
    inner: TokioResolver,
    timeout: Duration,
}

impl Resolver {
    /// A resolver with `settings`; `/etc/hosts` is read either way.
    pub fn new(settings: &ResolverSettings) -> anyhow::Result<Self> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if settings.nameservers.is_empty() {
            match TokioResolver::builder(provider.clone()) {
                Ok(builder) => builder,
                Err(e) => {
                    // Names then resolve from /etc/hosts only.
                    tracing::warn!(
                        "cannot read the system's DNS settings (/etc/resolv.conf): {e}; apps' \
                         outbound HTTP resolves names from /etc/hosts only (set [outbound] \
                         nameservers in meshd.toml)"
                    );
                    TokioResolver::builder_with_config(
                        ResolverConfig::from_name_servers(Vec::new()),
                        provider,
                    )
                }
            }
        } else {
            let servers = settings
                .nameservers
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut server.connections {
                        connection.port = addr.port();
                    }
                    server
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.use_hosts_file = ResolveHosts::Always;
        // One attempt, as long as the whole lookup may take (the timeout in
        // `lookup` holds either way; both end as DNS-timeout).
        options.timeout = settings.timeout;
        options.attempts = 1;
        let inner = builder
            .build()
            .map_err(|e| anyhow::anyhow!("cannot set up the DNS resolver: {e}"))?;
        Ok(Resolver {
            inner,
            timeout: settings.timeout,
        })
    }

    /// The addresses of `host` (a name or an IP address) at `port`, within
    /// the lookup timeout or `limit`, whichever is shorter.
    pub async fn lookup(
        &self,
        host: &str,
        port: u16,
        limit: Duration,
    ) -> Result<Vec<SocketAddr>, Error> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let lookup = self.inner.lookup_ip(host);
        let ips = tokio::time::timeout(self.timeout.min(limit), lookup)
            .await
            .map_err(|_| Error::DnsTimeout)?
            .map_err(|e| {
                if matches!(e, NetError::Timeout) {
                    Error::DnsTimeout
                } else if e.is_no_records_found() || e.is_nx_domain() {
                    Error::DestinationNotFound
                } else {
                    Error::DnsError {
                        rcode: None,
                        info_code: None,
                    }
                }
            })?;
        let addrs: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err(Error::DestinationNotFound);
        }
        Ok(addrs)
    }
}
