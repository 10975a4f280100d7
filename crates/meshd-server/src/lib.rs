//! The HTTP front door of meshd.
//!
//! [`serve`] accepts connections on a bound listener, speaks HTTP/1.1 (with
//! keep-alive) and HTTP/2 cleartext with prior knowledge on the same port, and
//! hands every request to [`dispatch`], which routes it by prefix through the
//! current [`Mounts`] and passes it to that app's current version.
//!
//! The mount table is read with one atomic load per request; the reload
//! machinery publishes a new table without ever blocking a request.
#![deny(missing_docs)]

mod access_log;
mod conn_watch;
mod dispatch;
mod listen;
mod metrics;

pub use access_log::{AccessLogged, ACCESS_TARGET};
pub use dispatch::{dispatch, Mounts, ResponseBody, FORWARDED_PREFIX};
pub use listen::{serve, serve_with, ClosedConnections, ServeConfig};
pub use metrics::{
    serve_metrics, ClosedConnectionsCollector, MountsCollector, MAX_METRICS_CONNECTIONS,
};
