//! `redirect_http`: a plain-HTTP request for a host meshd has a certificate
//! for is answered with a permanent redirect (308, which keeps the method
//! and body) to the same path and query over HTTPS. ACME HTTP-01
//! validations (`/.well-known/acme-challenge/`) are never redirected: a CA
//! validating a host must reach the plain listener even once the host has
//! a certificate (renewals).

use crate::acme_challenge::HTTP01_PREFIX;
use crate::dispatch::ResponseBody;
use crate::tls::CertStore;
use bytes::Bytes;
use http::header::{HeaderValue, LOCATION};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use std::sync::Arc;

/// Where plain-HTTP requests are sent.
#[derive(Debug, Clone)]
pub struct HttpsRedirect {
    /// The certificates: only hosts one of them is valid for are
    /// redirected (no client is sent to a name its TLS check would refuse).
    pub certs: Arc<CertStore>,
    /// The HTTPS port (omitted from the location when 443).
    pub port: u16,
}

impl HttpsRedirect {
    /// The redirect for `req`, or `None` when its host has no certificate
    /// (or it names none).
    pub fn respond<B>(&self, req: &Request<B>) -> Option<Response<ResponseBody>> {
        if req.uri().path().starts_with(HTTP01_PREFIX) {
            return None;
        }
        let host = request_host(req)?;
        if !self.certs.serves(&host) {
            return None;
        }
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |path_and_query| path_and_query.as_str());
        let location = match self.port {
            443 => format!("https://{host}{path}"),
            port => format!("https://{host}:{port}{path}"),
        };
        let location = HeaderValue::from_str(&location).ok()?;
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
            b"this host is served over HTTPS\n",
        ))));
        *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
        resp.headers_mut().insert(LOCATION, location);
        Some(resp)
    }
}

/// The host a request names, as routing reads it (HTTP/2 `:authority`,
/// else `Host`; lower case, without a port); `None` for an IP literal, no
/// host, or one routing refuses.
fn request_host<B>(req: &Request<B>) -> Option<String> {
    let host = crate::request_host::request_host(req).ok()??;
    let host = host.as_str();
    if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    Some(host.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HOST;

    #[test]
    fn host_from_authority_or_header() {
        let req = Request::get("/x")
            .header(HOST, "Shop.Example.com:8080")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("shop.example.com"));
        let req = Request::get("http://a.example.com/x").body(()).unwrap();
        assert_eq!(request_host(&req).as_deref(), Some("a.example.com"));
        let req = Request::get("/x")
            .header(HOST, "127.0.0.1:80")
            .body(())
            .unwrap();
        assert_eq!(request_host(&req), None);
        let req = Request::get("/x").body(()).unwrap();
        assert_eq!(request_host(&req), None);
    }
}
