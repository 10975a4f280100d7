//! The admin HTTP API of meshd (`--admin ADDR`): JSON over its own listener,
//! never the public port.
//!
//! It reads apps from the [`meshd_registry::Registry`] (never waiting for a
//! deploy in progress) and changes them only through the deploy pipeline
//! ([`meshd_reload::PipelineHandle`]), as the source `Origin::Api`; each
//! change's answer comes after the pipeline has decided it.
//!
//! | request | answer |
//! |---|---|
//! | `GET /` (and `/dashboard/*`) | the dashboard page (no token needed for its files) |
//! | `GET /healthz` | 200 `{"status":"ok"}` |
//! | `GET /readyz` | 200 once the first load is decided, else 503; `{"ready","loaded","total"}` |
//! | `GET /metrics` | the OpenMetrics text of `--metrics-listen` |
//! | `GET /v1/apps` | `{"apps":[AppJson...]}` |
//! | `GET /v1/apps/NAME` | [`view::AppJson`], 404 |
//! | `PUT /v1/apps/NAME` (wasm, or multipart `wasm` + `manifest`) | 201 deployed, 200 unchanged; 413, 422 |
//! | `DELETE /v1/apps/NAME` | `{"removed":"NAME"}` |
//! | `POST /v1/apps/NAME/rollback` (optional `{"version"}`) | 200 |
//! | `POST /v1/apps/NAME/canary?percent=P` (an upload, or JSON `{"version","percent"}`) | 201 |
//! | `POST /v1/apps/NAME/promote`, `.../abort` | 200 |
//! | `GET /v1/apps/NAME/logs?after=N` (`&follow=1`: server-sent events) | `{"app","lines","missed","last"}` |
//! | `GET /v1/stats?last=N`, `GET /v1/apps/NAME/stats` | requests, 5xx, p50/p99 per 5 s, last 5 min |
//! | `GET /v1/mesh` | the mesh's desired set and every node's view (mesh mode) |
//! | `GET /v1/certificates` | ACME certificates: `{"acme","certificates":[...]}` |
//! | `POST /v1/restart` | graceful restart of meshd itself: 200 `{"old_pid","new_pid"}`, 409, 500 |
//!
//! On a node that follows a mesh (`--mesh`), the changes above go to the
//! mesh's desired state instead (every node applies them) and answer 202
//! with the stored state; see docs/mesh.md.
//! Every answer is JSON (errors: `{"error":{"kind","message"}}`);
//! docs/admin-api.md has the details. With a [`Token`], every request needs
//! `Authorization: Bearer <token>`, or gets 401 and changes nothing.
//! [`serve`] runs the API on meshd's hardened accept loop
//! ([`meshd_server::serve_with`]): the front door's timeouts, and a cap of
//! [`MAX_ADMIN_CONNECTIONS`].
#![deny(missing_docs)]

mod apps;
mod auth;
mod certificates;
mod dashboard;
mod error;
mod logs;
mod mesh;
mod probes;
mod rates;
mod restart;
mod upload;
pub mod view;

pub use auth::{check_exposure, Token};
pub use dashboard::CONTENT_SECURITY_POLICY;
pub use logs::MAX_FOLLOWERS;
pub use rates::{SeriesJson, StatsJson, BUCKETS as STATS_BUCKETS, INTERVAL as STATS_INTERVAL};
pub use restart::{RestartRefused, RestartTrigger, Restarted};

use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use error::ApiError;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Either, Full};
use meshd_server::ServeConfig;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// Most connections the admin listener keeps open at once: a few operators
/// and scripts, and no more (as the metrics listener), so a flood of
/// connections cannot take meshd's file descriptors.
pub const MAX_ADMIN_CONNECTIONS: usize = meshd_server::MAX_METRICS_CONNECTIONS;

/// What the admin API works with.
pub struct AdminState {
    /// Where changes go.
    pub pipeline: meshd_reload::PipelineHandle,
    /// Where apps are read from.
    pub registry: Arc<meshd_registry::Registry>,
    /// What `GET /metrics` shows.
    pub metrics: Arc<prometheus_client::registry::Registry>,
    /// The token every request must present (`None`: no check; only for a
    /// loopback address, see [`check_exposure`]).
    pub token: Option<Token>,
    /// Largest `.wasm` an upload may carry (`--max-wasm-size`), in bytes.
    pub max_wasm_size: u64,
    /// The mesh this node follows (`--mesh`), if any: then changes of apps
    /// go to the mesh's desired state (every node applies them), and
    /// `GET /v1/mesh` shows every node.
    pub mesh: Option<Arc<meshd_mesh::Publisher>>,
    /// The certificates ACME manages (`[acme]` on), for
    /// `GET /v1/certificates`.
    pub certificates: Option<meshd_acme::Statuses>,
    /// Every app's recent log lines (`GET /v1/apps/NAME/logs`).
    pub logs: Arc<meshd_tenant::LogRings>,
    /// Where `POST /v1/restart` asks for a graceful restart of meshd
    /// (`None`: the endpoint answers 404).
    pub restart: Option<RestartTrigger>,
    /// Set while a graceful restart is under way: changes are refused
    /// (503) then, because the new process has read the apps already and
    /// would not have them.
    pub restarting: Arc<std::sync::atomic::AtomicBool>,
}

/// Marks a response whose body is a stream (server-sent events): [`serve`]
/// passes it on as it comes instead of collecting it, and ends it when
/// meshd shuts down.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Streaming;

/// The admin API as a service, to serve with [`serve`] or call directly
/// (`tower::ServiceExt::oneshot`) in tests.
pub fn router(state: AdminState) -> Router {
    let in_mesh = state.mesh.is_some();
    let rates = rates::Rates::start(state.registry.clone());
    let state = Arc::new(state);
    let changes = if in_mesh {
        // A node in mesh mode changes the mesh's desired state: a change
        // made on one node alone would be undone by the mesh.
        Router::new()
            .route(
                "/v1/apps/{name}",
                get(apps::get).put(mesh::put).delete(mesh::remove),
            )
            .route("/v1/apps/{name}/rollback", post(mesh::rollback))
            .route("/v1/apps/{name}/canary", post(mesh::canary))
            .route("/v1/apps/{name}/promote", post(mesh::promote))
            .route("/v1/apps/{name}/abort", post(mesh::abort))
    } else {
        Router::new()
            .route(
                "/v1/apps/{name}",
                get(apps::get).put(apps::put).delete(apps::remove),
            )
            .route("/v1/apps/{name}/rollback", post(apps::rollback))
            .route("/v1/apps/{name}/canary", post(apps::canary))
            .route("/v1/apps/{name}/promote", post(apps::promote))
            .route("/v1/apps/{name}/abort", post(apps::abort))
    };
    let protected = Router::new()
        .route("/metrics", get(probes::metrics))
        .route("/v1/apps", get(apps::list))
        .route("/v1/mesh", get(mesh::view))
        .route("/v1/certificates", get(certificates::list))
        .route("/v1/apps/{name}/logs", get(logs::logs))
        .route("/v1/stats", get(rates::all))
        .route("/v1/apps/{name}/stats", get(rates::one))
        .route("/v1/restart", post(restart::restart))
        .merge(changes)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Uploads enforce their own limits while reading (upload.rs).
        .layer(DefaultBodyLimit::disable())
        .layer(axum::Extension(Arc::new(logs::Followers::default())))
        .layer(axum::Extension(rates))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    // The probes answer without the token, so that a supervisor or a load
    // balancer can ask them: they say only whether meshd is up and how far
    // its first load has got.
    Router::new()
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        // The dashboard's files are no secret; every call it makes to /v1
        // needs the token like any other client's.
        .route("/", get(dashboard::index))
        .route("/dashboard/dashboard.js", get(dashboard::script))
        .route("/dashboard/dashboard.css", get(dashboard::style))
        .method_not_allowed_fallback(method_not_allowed)
        .merge(protected)
        .with_state(state)
}

/// Serves the admin API on `listener` until `shutdown` resolves, with the
/// protections of `front_door` (timeouts; HTTP/1.1 and h2c) and at most
/// [`MAX_ADMIN_CONNECTIONS`] connections. Returns `true` if every
/// connection closed within the shutdown timeout.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()>,
    front_door: &ServeConfig,
) -> bool {
    let config = ServeConfig {
        max_connections: MAX_ADMIN_CONNECTIONS,
        closed: Arc::default(),
        access_log: false,
        ..front_door.clone()
    };
    let app = router(state);
    // Ends the streams (log followers) when meshd shuts down, so that their
    // connections can close.
    let stop = CancellationToken::new();
    let stopping = stop.clone();
    let handler = move |request: Request<hyper::body::Incoming>| {
        let app = app.clone();
        let stop = stopping.clone();
        async move { answer(app, request, stop).await }
    };
    let shutdown = async move {
        shutdown.await;
        stop.cancel();
    };
    meshd_server::serve_with(listener, shutdown, &config, "admin", handler).await
}

/// An admin answer: small ones collected whole, streams as they come.
type AdminBody = Either<Full<Bytes>, StreamBody>;

/// A streamed answer (server-sent events), which ends when `stop` is
/// cancelled.
struct StreamBody {
    inner: axum::body::Body,
    stop: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl hyper::body::Body for StreamBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        if self.stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }
}

/// Nothing to stop: a stream reads what is already kept in memory.
impl meshd_server::Abandon for StreamBody {}

/// Runs one request through the router. Admin answers are small: they are
/// collected whole, into a body the accept loop can watch.
///
/// An HTTP/1 request whose body was not read to its end (refused before it
/// was read: 401, 413, 415, an unknown path) is answered with
/// `Connection: close`: the connection cannot carry another request, and a
/// keep-alive client that is not told so sends its next request on a
/// connection that is about to close.
async fn answer(
    app: Router,
    request: Request<hyper::body::Incoming>,
    stop: CancellationToken,
) -> Response<AdminBody> {
    let http1 = request.version() < http::Version::HTTP_2;
    let has_body = !hyper::body::Body::is_end_stream(request.body());
    let read = Arc::new(AtomicBool::new(false));
    let request = request.map(|inner| Tracked {
        inner,
        read: read.clone(),
    });
    let response = match app.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (mut parts, body) = response.into_parts();
    if http1 && has_body && !read.load(Ordering::Acquire) {
        parts.headers.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    if parts.extensions.get::<Streaming>().is_some() {
        let body = StreamBody {
            inner: body,
            stop: Box::pin(stop.cancelled_owned()),
        };
        return Response::from_parts(parts, Either::Right(body));
    }
    match body.collect().await {
        Ok(collected) => Response::from_parts(parts, Either::Left(Full::new(collected.to_bytes()))),
        Err(e) => {
            tracing::warn!(error = %e, "cannot produce an admin answer");
            let mut response = Response::new(Either::Left(Full::new(Bytes::new())));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    }
}

/// A request body that records whether it was read to its end.
struct Tracked {
    inner: hyper::body::Incoming,
    read: Arc<AtomicBool>,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Release);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

async fn not_found(uri: http::Uri) -> impl IntoResponse {
    ApiError::not_found(format!(
        "no endpoint at {}; the API is under /v1/apps (see docs/admin-api.md)",
        uri.path()
    ))
}

async fn method_not_allowed(method: http::Method, uri: http::Uri) -> impl IntoResponse {
    ApiError::method_not_allowed(format!("{} does not take {method}", uri.path()))
}
