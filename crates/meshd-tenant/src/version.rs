//! One loaded version of an app, and how it serves a request: a fresh `Store`
//! and instance per request, run in its own task so the guest can keep
//! streaming the body after it has sent the response head.

use crate::cache::CacheOutcome;
use crate::engine::Runtime;
use crate::host::Host;
use crate::in_flight::{InFlight, InFlightGuard};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

/// A compiled, pre-instantiated version of one app. Immutable; requests hold
/// an `Arc` to the version they started on for their whole life.
pub struct AppVersion {
    pub(crate) app: Arc<str>,
    pub(crate) id: String,
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) pre: ProxyPre<Host>,
    pub(crate) in_flight: Arc<InFlight>,
    pub(crate) cancel: CancellationToken,
    pub(crate) cache: CacheOutcome,
    pub(crate) compile_time: Duration,
}

/// Why a request got no response from the guest. Each maps to one status.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The request cannot be handed to a guest (e.g. no authority).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The guest trapped, panicked, returned an error code or never answered.
    #[error("app failed: {0}")]
    Guest(String),
    /// The guest did not answer within the request timeout.
    #[error("app did not answer within {0:?}")]
    Timeout(Duration),
    /// The version was retired (drain deadline or shutdown) before the guest
    /// answered.
    #[error("the app version was retired before it answered")]
    Cancelled,
}

impl AppVersion {
    /// The app's name.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// The version's identity: the first 12 hex digits of the BLAKE3 hash of
    /// its `.wasm`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the compiled code came from the cache.
    pub fn cache_outcome(&self) -> &CacheOutcome {
        &self.cache
    }

    /// How long compiling (or loading from cache) took.
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// The version's in-flight requests, for draining.
    pub fn in_flight(&self) -> &Arc<InFlight> {
        &self.in_flight
    }

    /// Tears down every guest instance still running for this version; their
    /// requests fail. Used when a drain deadline passes.
    pub fn cancel_in_flight(&self) {
        self.cancel.cancel();
    }

    /// Serves one request. `req` must already carry the path as the app sees
    /// it. The returned body keeps the version counted as in flight until it
    /// has been sent.
    pub async fn handle<B>(
        self: &Arc<Self>,
        req: http::Request<B>,
    ) -> Result<http::Response<ResponseBody>, ServeError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let guard = Arc::new(self.in_flight.enter());
        let config = &self.runtime.config;
        let mut store = Store::new(
            &self.runtime.engine,
            Host::new(&self.app, config.max_memory),
        );
        store.limiter(|host| &mut host.limits);
        // Yield to the async runtime at every epoch tick: a spinning guest
        // then shares its worker thread, and the timeout below can fire.
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);

        let (sender, receiver) = tokio::sync::oneshot::channel();
        let view = &mut store.data_mut().http();
        let wasi_req = view
            .new_incoming_request(Scheme::Http, req)
            .map_err(|e| ServeError::BadRequest(format!("{e:#}")))?;
        let out = view
            .new_response_outparam(sender)
            .map_err(|e| ServeError::Guest(format!("{e:#}")))?;

        let timeout = config.request_timeout;
        let pre = self.pre.clone();
        let task_guard = guard.clone();
        let version = self.clone();
        let task = tokio::spawn(async move {
            let _in_flight = task_guard;
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, wasi_req, out)
                    .await
            };
            // Dropping `run` (on timeout or cancel) drops the Store, which is
            // the only way to stop a guest mid-flight.
            let result = tokio::select! {
                outcome = tokio::time::timeout(timeout, run) => match outcome {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(GuestFailure::Trap(format!("{e:#}"))),
                    Err(_) => Err(GuestFailure::Timeout),
                },
                () = version.cancel.cancelled() => Err(GuestFailure::Cancelled),
            };
            if let Err(failure) = &result {
                version.log_failure(failure);
            }
            result
        });

        match receiver.await {
            Ok(Ok(resp)) => Ok(resp.map(|body| ResponseBody {
                body,
                _guard: guard,
            })),
            Ok(Err(code)) => Err(ServeError::Guest(format!(
                "the app answered with error code {code:?}"
            ))),
            // The guest dropped its response-outparam: find out why.
            Err(_) => Err(match task.await {
                Ok(Ok(())) => {
                    ServeError::Guest("the app returned without sending a response".into())
                }
                Ok(Err(GuestFailure::Trap(message))) => ServeError::Guest(message),
                Ok(Err(GuestFailure::Timeout)) => ServeError::Timeout(timeout),
                Ok(Err(GuestFailure::Cancelled)) => ServeError::Cancelled,
                Err(join) => ServeError::Guest(format!("the guest task failed: {join}")),
            }),
        }
    }

    fn log_failure(&self, failure: &GuestFailure) {
        match failure {
            GuestFailure::Trap(message) => tracing::warn!(
                app = %self.app, version = %self.id, error = %message, "request failed: guest trapped"
            ),
            GuestFailure::Timeout => tracing::warn!(
                app = %self.app, version = %self.id,
                timeout = ?self.runtime.config.request_timeout,
                "request timed out; guest instance torn down"
            ),
            GuestFailure::Cancelled => tracing::warn!(
                app = %self.app, version = %self.id,
                "request cancelled: its version was retired before it finished"
            ),
        }
    }
}

enum GuestFailure {
    Trap(String),
    Timeout,
    Cancelled,
}

/// A guest's response body. While it exists the request counts as in flight
/// for its version, so a version is only retired once its bodies are sent.
pub struct ResponseBody {
    body: HyperOutgoingBody,
    _guard: Arc<InFlightGuard>,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
