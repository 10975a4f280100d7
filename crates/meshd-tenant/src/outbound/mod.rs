//! Outbound HTTP: denied unless the app's `[outbound] allow` list names the
//! destination, and never to internal addresses through a name.

mod connect;
mod tls;

pub use tls::client_config;

use crate::log_budget::LogBudget;
use connect::{Destination, Timeouts};
use meshd_apps::{is_internal, OutboundRule};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::lookup_host;
use tokio::time::timeout;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

type SendFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;
type SendResult = wasmtime_wasi_http::Result<connect::Sent>;

/// The outbound policy of one request's Store.
pub struct OutboundPolicy {
    app: Arc<str>,
    rules: Arc<[OutboundRule]>,
    /// Caps every guest-chosen network timeout.
    max_wait: Duration,
    /// TLS settings for https, the daemon's.
    tls: Arc<rustls::ClientConfig>,
    /// Holds the warnings about denied requests to the app's rate.
    log_budget: Arc<LogBudget>,
}

impl OutboundPolicy {
    /// The policy for `app`.
    pub fn new(
        app: Arc<str>,
        rules: Arc<[OutboundRule]>,
        max_wait: Duration,
        tls: Arc<rustls::ClientConfig>,
        log_budget: Arc<LogBudget>,
    ) -> Self {
        OutboundPolicy {
            app,
            rules,
            max_wait,
            tls,
            log_budget,
        }
    }

    /// Refuses a request, with a warning if the app's warning budget allows.
    fn deny(&self, uri: &http::Uri, why: &str) -> Box<dyn Future<Output = SendResult> + Send> {
        if self.log_budget.admit_warning() {
            tracing::warn!(app = %self.app, %uri, "outbound request denied: {why}");
        }
        Box::new(async { Err(Error::HttpRequestDenied) })
    }

    /// The guest's timeouts, each capped at (and by default) the app's.
    fn clamp(&self, options: Option<RequestOptions>) -> Timeouts {
        let clamp = |d: Option<Duration>| d.map_or(self.max_wait, |d| d.min(self.max_wait));
        let options = options.unwrap_or_default();
        Timeouts {
            connect: clamp(options.connect_timeout),
            first_byte: clamp(options.first_byte_timeout),
            between_bytes: clamp(options.between_bytes_timeout),
        }
    }
}

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: SendFuture,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let uri = request.uri().clone();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let Some(host) = uri
            .host()
            .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
        else {
            return self.deny(&uri, "no host");
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let Some(rule) = self.rules.iter().find(|r| r.allows(https, &host, port)) else {
            return self.deny(&uri, "not in the app's [outbound] allow list");
        };
        // A rule naming a domain must not become a way into this machine or
        // its network: refuse names that resolve to internal addresses. The
        // connection then goes to the addresses checked here, so a second
        // DNS answer cannot differ (connect.rs).
        let check_addresses = !rule.names_address_explicitly();
        let timeouts = self.clamp(options);
        let app = self.app.clone();
        let tls = self.tls.clone();
        let log_budget = self.log_budget.clone();
        Box::new(async move {
            let addrs: Vec<SocketAddr> =
                timeout(timeouts.connect, lookup_host((host.as_str(), port)))
                    .await
                    .map_err(|_| Error::DnsTimeout)?
                    .map_err(|_| Error::DestinationNotFound)?
                    .collect();
            if check_addresses {
                if let Some(addr) = addrs.iter().find(|a| is_internal(a.ip())) {
                    if log_budget.admit_warning() {
                        tracing::warn!(app = %app, %uri, resolved = %addr.ip(), "outbound request denied: the name resolves to an internal address");
                    }
                    return Err(Error::HttpRequestDenied);
                }
            }
            let to = Destination {
                addrs: &addrs,
                host: &host,
                https,
                tls: &tls,
            };
            connect::send(request, to, timeouts).await
        })
    }
}
