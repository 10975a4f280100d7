//! `GET /`: the dashboard, a single page for people, built into the binary
//! (no CDN, no external fonts: it works offline). It is only a client of the
//! public admin API: its files need no token, and every `/v1` call it makes
//! carries the token the operator types in (kept in the tab's
//! `sessionStorage`, never in a URL).
//!
//! Served with a strict Content-Security-Policy: scripts and styles only
//! from these files, requests only to this origin, no frames, no forms
//! posted elsewhere.

use axum::response::{IntoResponse, Response};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS};
use http::HeaderValue;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// What the page may load and run: only its own files, and fetches to this
/// origin (the admin API).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // A new meshd may bring a new page: always ask.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// `GET /`.
pub(crate) async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

/// `GET /dashboard/dashboard.js`.
pub(crate) async fn script() -> Response {
    file("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /dashboard/dashboard.css`.
pub(crate) async fn style() -> Response {
    file("text/css; charset=utf-8", STYLE)
}
