//! Outbound HTTP: denied unless the app's `[outbound] allow` list names the
//! destination, and never to internal addresses through a name.

use meshd_apps::OutboundRule;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

type SendFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;
type SendResult = wasmtime_wasi_http::Result<(http::Response<WasiBody>, SendFuture)>;

/// The outbound policy of one request's Store.
pub struct OutboundPolicy {
    app: Arc<str>,
    rules: Arc<[OutboundRule]>,
    /// Caps every guest-chosen network timeout.
    max_wait: Duration,
}

impl OutboundPolicy {
    /// The policy for `app`.
    pub fn new(app: Arc<str>, rules: Arc<[OutboundRule]>, max_wait: Duration) -> Self {
        OutboundPolicy {
            app,
            rules,
            max_wait,
        }
    }

    fn clamp(&self, options: Option<RequestOptions>) -> RequestOptions {
        let clamp = |d: Option<Duration>| Some(d.map_or(self.max_wait, |d| d.min(self.max_wait)));
        let options = options.unwrap_or_default();
        RequestOptions {
            connect_timeout: clamp(options.connect_timeout),
            first_byte_timeout: clamp(options.first_byte_timeout),
            between_bytes_timeout: clamp(options.between_bytes_timeout),
        }
    }
}

fn denied(app: &str, uri: &http::Uri, why: &str) -> Box<dyn Future<Output = SendResult> + Send> {
    tracing::warn!(%app, %uri, "outbound request denied: {why}");
    Box::new(async { Err(Error::HttpRequestDenied) })
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
            return denied(&self.app, &uri, "no host");
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let Some(rule) = self.rules.iter().find(|r| r.allows(https, &host, port)) else {
            return denied(&self.app, &uri, "not in the app's [outbound] allow list");
        };
        // A rule naming a domain must not become a way into this machine or
        // its network: refuse names that resolve to internal addresses.
        let check_addresses = !rule.names_address_explicitly();
        let options = self.clamp(options);
        let app = self.app.clone();
        Box::new(async move {
            if check_addresses {
                let addrs = tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map_err(|_| Error::DestinationNotFound)?;
                if let Some(addr) = addrs.into_iter().find(|a| is_internal(a.ip())) {
                    tracing::warn!(app = %app, %uri, resolved = %addr.ip(), "outbound request denied: the name resolves to an internal address");
                    return Err(Error::HttpRequestDenied);
                }
            }
            use http_body_util::BodyExt;
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as SendFuture,
            ))
        })
    }
}

/// Loopback, private, link-local, shared and unspecified addresses.
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (a == 100 && (64..128).contains(&b)) // shared address space
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_internal(IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                v6.is_loopback()
                    || v6.is_unspecified()
                    || (first & 0xfe00) == 0xfc00 // unique local
                    || (first & 0xffc0) == 0xfe80 // link-local
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for public in ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8"] {
            assert!(!is_internal(public.parse().unwrap()), "{public}");
        }
    }
}
