//! Answers to ACME challenges, which the front door gives before routing:
//! HTTP-01 (`GET /.well-known/acme-challenge/TOKEN` answered with the key
//! authorization) and TLS-ALPN-01 (a handshake offering only the
//! `acme-tls/1` protocol answered with a self-signed certificate carrying
//! the key authorization's digest, then closed).
//!
//! The ACME client (meshd-acme) puts an answer in [`Challenges`] before it
//! tells the CA to validate, and takes it out when the validation is over;
//! the map is tiny (one entry per order in progress).

use crate::dispatch::ResponseBody;
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

/// The ALPN protocol of a TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Where HTTP-01 validations ask (RFC 8555, section 8.3).
pub const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// The challenge answers in progress, shared by the ACME client (which
/// writes) and the listeners (which read).
#[derive(Debug, Default)]
pub struct Challenges {
    /// HTTP-01: token -> key authorization.
    http01: RwLock<HashMap<String, String>>,
    /// TLS-ALPN-01: host (lower case) -> the challenge certificate.
    tls_alpn01: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    /// No challenge in progress.
    pub fn new() -> Self {
        Self::default()
    }

    /// Answers `GET /.well-known/acme-challenge/{token}` with
    /// `key_authorization` until [`Challenges::remove_http01`].
    pub fn set_http01(&self, token: &str, key_authorization: &str) {
        self.http01
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    /// Stops answering the HTTP-01 `token`.
    pub fn remove_http01(&self, token: &str) {
        self.http01
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(token);
    }

    /// The key authorization of an HTTP-01 `token` in progress.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http01
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned()
    }

    /// Answers TLS-ALPN-01 handshakes for `host` with `cert` until
    /// [`Challenges::remove_tls_alpn01`].
    pub fn set_tls_alpn01(&self, host: &str, cert: Arc<CertifiedKey>) {
        self.tls_alpn01
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(host.to_ascii_lowercase(), cert);
    }

    /// Stops answering TLS-ALPN-01 handshakes for `host`.
    pub fn remove_tls_alpn01(&self, host: &str) {
        self.tls_alpn01
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&host.to_ascii_lowercase());
    }

    /// The TLS-ALPN-01 certificate for `host`, if a validation is in
    /// progress.
    pub fn tls_alpn01(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.tls_alpn01
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&host)
            .cloned()
    }

    /// The answer to an HTTP-01 validation request, or `None` when `req`
    /// is not one for a token in progress (then it is routed as usual: an
    /// app may answer challenges of its own).
    pub fn respond<B>(&self, req: &Request<B>) -> Option<Response<ResponseBody>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return None;
        }
        let token = req.uri().path().strip_prefix(HTTP01_PREFIX)?;
        let key_authorization = self.http01(token)?;
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from(key_authorization))));
        *resp.status_mut() = StatusCode::OK;
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        Some(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    #[tokio::test]
    async fn http01_answers_only_tokens_in_progress() {
        let challenges = Challenges::new();
        let req = |method: Method, path: &str| {
            Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .unwrap()
        };
        let path = "/.well-known/acme-challenge/tok";
        assert!(challenges.respond(&req(Method::GET, path)).is_none());
        challenges.set_http01("tok", "tok.thumb");
        let resp = challenges.respond(&req(Method::GET, path)).unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"tok.thumb");
        assert!(challenges.respond(&req(Method::POST, path)).is_none());
        assert!(challenges
            .respond(&req(Method::GET, "/.well-known/acme-challenge/other"))
            .is_none());
        assert!(challenges.respond(&req(Method::GET, "/tok")).is_none());
        challenges.remove_http01("tok");
        assert!(challenges.respond(&req(Method::GET, path)).is_none());
    }
}
