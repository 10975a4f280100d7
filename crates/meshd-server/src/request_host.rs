//! The host a request names, read once per request for routing.

use http::header::HOST;
use http::Request;
use meshd_routes::{BadHost, RequestHost};

/// The host `req` names, normalised for the route table; `None` when it
/// names none (HTTP/1.0 without `Host`, or an empty `Host`).
///
/// The URI's authority comes first: HTTP/2 carries the host as
/// `:authority`, which hyper puts in the URI, and an HTTP/1 request with an
/// absolute-form target names its host there, overriding `Host` (RFC 9112
/// §3.2.2). Otherwise the `Host` header. Two `Host` headers, or one that is
/// not a plain host and port, are [`BadHost`]: a proxy in front may pick
/// another reading, so the request is refused rather than guessed at.
pub(crate) fn request_host<B>(req: &Request<B>) -> Result<Option<RequestHost<'_>>, BadHost> {
    if let Some(authority) = req.uri().authority() {
        return RequestHost::parse(authority.as_str());
    }
    let mut values = req.headers().get_all(HOST).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let raw = || String::from_utf8_lossy(value.as_bytes()).into_owned();
    if values.next().is_some() {
        return Err(BadHost(format!("{} (and another Host header)", raw())));
    }
    let host = value.to_str().map_err(|_| BadHost(raw()))?;
    RequestHost::parse(host.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(req: http::request::Builder) -> Result<Option<String>, BadHost> {
        let req = req.body(()).unwrap();
        request_host(&req).map(|h| h.map(|h| h.as_str().to_owned()))
    }

    #[test]
    fn the_uri_authority_comes_before_the_host_header() {
        let req = Request::get("http://Shop.Example.com:8443/x").header(HOST, "other.example");
        assert_eq!(host_of(req).unwrap().as_deref(), Some("shop.example.com"));
        let req = Request::get("/x").header(HOST, "Other.Example:80");
        assert_eq!(host_of(req).unwrap().as_deref(), Some("other.example"));
    }

    #[test]
    fn no_or_an_empty_host_is_no_host() {
        assert_eq!(host_of(Request::get("/x")).unwrap(), None);
        assert_eq!(host_of(Request::get("/x").header(HOST, "")).unwrap(), None);
    }

    #[test]
    fn two_host_headers_or_a_bad_one_are_refused() {
        let req = Request::get("/x")
            .header(HOST, "a.example")
            .header(HOST, "b.example");
        assert!(host_of(req).is_err());
        let req = Request::get("/x").header(HOST, "a.example/evil");
        assert!(host_of(req).is_err());
        let req = Request::get("/x").header(
            HOST,
            http::HeaderValue::from_bytes(b"b\xfccher.example").unwrap(),
        );
        assert!(host_of(req).is_err());
    }
}
