//! Outbound HTTP: denied unless the app's `[outbound] allow` list names the
//! destination, and never to internal addresses through a name.

mod connect;
mod resolve;
mod tls;

pub use resolve::{Resolver, ResolverSettings, DEFAULT_LOOKUP_TIMEOUT};
pub use tls::client_config;

use crate::descriptors::{DescriptorBudget, DescriptorTicket};
use crate::in_flight::{InFlight, InFlightGuard};
use crate::log_budget::LogBudget;
use connect::{Destination, Timeouts};
use meshd_apps::{is_internal, OutboundRule};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

type SendFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;
type SendResult = wasmtime_wasi_http::Result<connect::Sent>;

/// What one app's outbound HTTP may have in flight, all its requests and
/// versions together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundLimits {
    /// Most outbound requests in flight (from the call until the response
    /// body is done); more fail with `connection-limit-reached`.
    pub max_requests: u32,
    /// Most name lookups in flight; more fail with a DNS error.
    pub max_lookups: u32,
}

impl Default for OutboundLimits {
    /// meshd's defaults (its flags'): 64 requests, 16 lookups.
    fn default() -> Self {
        OutboundLimits {
            max_requests: 64,
            max_lookups: 16,
        }
    }
}

/// An app's outbound requests and lookups in flight, shared by its
/// requests and versions.
#[derive(Debug, Default)]
pub(crate) struct OutboundInFlight {
    requests: Arc<InFlight>,
    lookups: Arc<InFlight>,
}

/// The outbound policy of one request's Store.
pub(crate) struct OutboundPolicy {
    pub(crate) app: Arc<str>,
    pub(crate) rules: Arc<[OutboundRule]>,
    /// Caps every guest-chosen network timeout.
    pub(crate) max_wait: Duration,
    /// TLS settings for https, the daemon's.
    pub(crate) tls: Arc<rustls::ClientConfig>,
    /// The daemon's resolver.
    pub(crate) resolver: Arc<Resolver>,
    /// Holds the warnings about denied requests to the app's rate.
    pub(crate) log_budget: Arc<LogBudget>,
    pub(crate) limits: OutboundLimits,
    pub(crate) in_flight: Arc<OutboundInFlight>,
    /// Each connection is a descriptor of the request's budget.
    pub(crate) descriptors: DescriptorBudget,
}

/// What one outbound request holds until its connection ends: its place
/// among the app's requests in flight and its descriptor.
struct ConnectionPlaces {
    _request: InFlightGuard,
    _descriptor: DescriptorTicket,
}

impl OutboundPolicy {
    /// Refuses a request, with a warning if the app's warning budget allows.
    fn deny(
        &self,
        uri: &http::Uri,
        why: &str,
        error: Error,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        if self.log_budget.admit_warning() {
            tracing::warn!(app = %self.app, %uri, "outbound request denied: {why}");
        }
        Box::new(async { Err(error) })
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

    /// A place among the app's requests in flight and a descriptor, or why
    /// there is none.
    fn take_places(&self) -> Result<ConnectionPlaces, String> {
        let max = self.limits.max_requests;
        let request = self.in_flight.requests.try_enter(max).ok_or_else(|| {
            format!("the app has {max} outbound requests in flight, its limit (--max-app-outbound)")
        })?;
        let descriptor = self.descriptors.try_take().map_err(|e| e.to_string())?;
        Ok(ConnectionPlaces {
            _request: request,
            _descriptor: descriptor,
        })
    }
}

/// Whether a guest may neither see nor send the header `name`: the names of
/// wasmtime-wasi-http's `DEFAULT_FORBIDDEN_HEADERS` (a test holds the two
/// lists equal). One match on the name's text, where `contains` on the
/// crate's array compared nine `HeaderName`s, for every header of every
/// request and response (about 720 instructions of a hello request).
fn is_forbidden_header(name: &http::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "http2-settings"
    )
}

impl WasiHttpHooks for OutboundPolicy {
    /// The crate's default rule, without its cost: the default method asks
    /// [`WasiHttpHooks::forbidden_header_filter`] for a new `Arc` closure on
    /// every call, once per header of every request and response.
    fn is_forbidden_header(&mut self, name: &http::HeaderName) -> bool {
        is_forbidden_header(name)
    }

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
            return self.deny(&uri, "no host", Error::HttpRequestDenied);
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let Some(rule) = self.rules.iter().find(|r| r.allows(https, &host, port)) else {
            return self.deny(
                &uri,
                "not in the app's [outbound] allow list",
                Error::HttpRequestDenied,
            );
        };
        let places = match self.take_places() {
            Ok(places) => places,
            Err(why) => return self.deny(&uri, &why, Error::ConnectionLimitReached),
        };
        let max_lookups = self.limits.max_lookups;
        let lookups = self.in_flight.lookups.clone();
        // A rule naming a domain must not become a way into this machine or
        // its network: refuse names that resolve to internal addresses. The
        // connection then goes to the addresses checked here, so a second
        // DNS answer cannot differ (connect.rs).
        let check_addresses = !rule.names_address_explicitly();
        let timeouts = self.clamp(options);
        let app = self.app.clone();
        let tls = self.tls.clone();
        let resolver = self.resolver.clone();
        let log_budget = self.log_budget.clone();
        Box::new(async move {
            let addrs = {
                let Some(_lookup) = lookups.try_enter(max_lookups) else {
                    if log_budget.admit_warning() {
                        tracing::warn!(app = %app, %uri, "outbound request failed: the app has {max_lookups} name lookups in flight, its limit (--max-app-lookups)");
                    }
                    return Err(Error::DnsError {
                        rcode: Some("too many lookups in flight".into()),
                        info_code: None,
                    });
                };
                resolver.lookup(&host, port, timeouts.connect).await?
            };
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
            let (response, io) = connect::send(request, to, timeouts).await?;
            // The connection (and with it the places) lives until its
            // driver ends: the response body read or dropped.
            let io: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(async move {
                let _places = places;
                Box::into_pin(io).await
            });
            Ok((response, io))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forbidden_headers_are_wasmtime_wasi_https() {
        let default_rule = wasmtime_wasi_http::default_hooks().forbidden_header_filter();
        let names = [
            "connection",
            "keep-alive",
            "proxy-authorization",
            "proxy-connection",
        ]
        .into_iter()
        .chain(["transfer-encoding", "upgrade", "host", "http2-settings"])
        .chain([
            "proxy-authenticate",
            "authorization",
            "content-type",
            "x-forwarded-for",
        ]);
        for name in names {
            let name = http::HeaderName::from_static(name);
            assert_eq!(is_forbidden_header(&name), default_rule(&name), "{name}");
        }
        // A name the crate adds to its list fails here until it is added
        // to ours.
        for name in wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS {
            assert!(is_forbidden_header(&name), "{name}");
        }
        assert!(is_forbidden_header(&http::header::HOST));
        assert!(!is_forbidden_header(&http::header::CONTENT_TYPE));
    }
}
