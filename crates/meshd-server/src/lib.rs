//! The HTTP front door of meshd.
//!
//! [`serve`] accepts connections on bound listeners, speaks HTTP/1.1 (with
//! keep-alive) and HTTP/2 cleartext with prior knowledge on the same port, or
//! HTTPS (TLS 1.2/1.3, HTTP/2 or HTTP/1.1 by ALPN, certificates by SNI:
//! [`tls`]), sets the client-address headers ([`forwarded`]), and
//! hands every request to [`dispatch`], which routes it by host and prefix
//! through the routes of the registry's current snapshot and passes it to that app's live
//! version (or, during a canary, to the version the split picks).
//!
//! The snapshot is read with one atomic load per request; the deploy pipeline
//! publishes a new one without ever blocking a request.
#![deny(missing_docs)]

mod access_log;
mod acme_challenge;
mod conn_watch;
mod dispatch;
pub mod forwarded;
mod listen;
mod metrics;
mod proxy_protocol;
mod redirect;
mod request_host;
pub mod tls;

pub use access_log::{AccessLogged, ACCESS_TARGET};
pub use acme_challenge::{Challenges, ACME_TLS_ALPN, HTTP01_PREFIX};
pub use conn_watch::Abandon;
pub use dispatch::{dispatch, ResponseBody, FORWARDED_PREFIX};
pub use forwarded::{ClientConn, TrustedProxies};
pub use listen::{serve, serve_with, ClosedConnections, Edge, Listener, ServeConfig};
pub use metrics::{
    serve_metrics, ClosedConnectionsCollector, MountsCollector, MAX_METRICS_CONNECTIONS,
};
pub use redirect::HttpsRedirect;
