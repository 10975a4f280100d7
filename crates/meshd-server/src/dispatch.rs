//! From a request to the app that serves it: route by host and prefix, strip
//! the prefix, and turn every failure into a short plain-text response.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use meshd_registry::{Registry, Side};
use meshd_tenant::{AppVersion, ServeError};
use std::sync::Arc;
use std::time::Instant;

/// The header that tells an app where it is mounted (absent for `/`).
pub static FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// Every response meshd sends: a guest's streamed body or a short message of
/// meshd's own.
pub type ResponseBody = Either<meshd_tenant::ResponseBody, Full<Bytes>>;

/// Routes `req` through the registry's current routes and serves it. Never
/// fails: every error becomes a response.
pub async fn dispatch<B>(registry: &Registry, req: Request<B>) -> Response<ResponseBody>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<meshd_tenant::BodyError>,
{
    dispatch_to(registry, req).await.0
}

/// The version that served a request, and on which side of a canary split.
pub(crate) type ServedBy = Option<(Arc<AppVersion>, Side)>;

/// [`dispatch`], also saying which version served the request (`None` when
/// meshd answered itself: no route, a refused path).
pub(crate) async fn dispatch_to<B>(
    registry: &Registry,
    mut req: Request<B>,
) -> (Response<ResponseBody>, ServedBy)
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<meshd_tenant::BodyError>,
{
    // When meshd answers itself, the request's body may not have been read
    // (a 404, a 413 on its declared length): over HTTP/1.1 the connection
    // then cannot carry another request, so the answer says so.
    let close = CloseIfUnread::of(&req);
    // Refused rather than normalised: a proxy in front must read the path
    // exactly as meshd routes it, and proxies normalise in different ways
    // (see meshd_routes::path_check and docs/operations.md).
    if let Err(why) = meshd_routes::check_path(req.uri().path()) {
        tracing::debug!(path = req.uri().path(), %why, "ambiguous request path refused");
        let resp = plain(
            StatusCode::BAD_REQUEST,
            format!("ambiguous request path: {why}\n"),
        );
        return (close.apply(resp), None);
    }
    let host = match crate::request_host::request_host(&req) {
        Ok(host) => host,
        Err(why) => {
            tracing::debug!(%why, "request with an invalid host refused");
            let resp = plain(StatusCode::BAD_REQUEST, format!("bad request: {why}\n"));
            return (close.apply(resp), None);
        }
    };
    let (version, side, prefix_header) = {
        let apps = registry.peek();
        let Some(route) = apps.routes.route(host.as_ref(), req.uri().path()) else {
            let resp = plain(
                StatusCode::NOT_FOUND,
                format!("no app is mounted at {}\n", req.uri().path()),
            );
            return (close.apply(resp), None);
        };
        let prefix_header = if route.prefix.is_root() {
            None
        } else {
            HeaderValue::from_str(route.prefix.as_str()).ok()
        };
        let uri = match rewrite_uri(req.uri(), route.app_path) {
            Ok(uri) => uri,
            Err(e) => {
                let resp = plain(StatusCode::BAD_REQUEST, format!("bad request URI: {e}\n"));
                return (close.apply(resp), None);
            }
        };
        let (version, side) = route.value.pick(req.headers());
        let version = version.clone();
        *req.uri_mut() = uri;
        (version, side, prefix_header)
    };

    // The prefix header is ours to set: a client must not spoof it.
    let headers = req.headers_mut();
    headers.remove(&FORWARDED_PREFIX);
    if let Some(prefix) = prefix_header {
        headers.insert(FORWARDED_PREFIX.clone(), prefix);
    }

    let started = Instant::now();
    let resp = match version.handle(req).await {
        Ok(resp) => resp.map(Either::Left),
        Err(e) => close.apply(error_response(&version, e)),
    };
    version
        .stats()
        .record(resp.status().as_u16(), started.elapsed());
    (resp, Some((version, side)))
}

/// Whether an answer of meshd's own must close an HTTP/1 connection: the
/// request has a body, which meshd may not have read to its end.
#[derive(Clone, Copy)]
struct CloseIfUnread(bool);

impl CloseIfUnread {
    fn of<B: hyper::body::Body>(req: &Request<B>) -> Self {
        CloseIfUnread(req.version() < http::Version::HTTP_2 && !req.body().is_end_stream())
    }

    fn apply(self, mut resp: Response<ResponseBody>) -> Response<ResponseBody> {
        if self.0 {
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// The same URI with its path replaced by what the app sees.
fn rewrite_uri(uri: &Uri, app_path: &str) -> Result<Uri, http::Error> {
    let path_and_query = match uri.query() {
        Some(query) => format!("{app_path}?{query}"),
        None => app_path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    // Handed over as it is: parsing a `&str` would copy it once more.
    parts.path_and_query = Some(PathAndQuery::from_maybe_shared(Bytes::from(
        path_and_query,
    ))?);
    Ok(Uri::from_parts(parts)?)
}

fn error_response(version: &AppVersion, error: ServeError) -> Response<ResponseBody> {
    let app = version.app();
    let (status, message) = match &error {
        ServeError::BadRequest(detail) => {
            (StatusCode::BAD_REQUEST, format!("bad request: {detail}\n"))
        }
        ServeError::BodyTooLarge(limit) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than app {app}'s limit of {limit} bytes\n"),
        ),
        ServeError::Overloaded(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("app {app} is overloaded ({why}); retry\n"),
        ),
        // Guest failure details stay in meshd's log; the client gets the kind.
        ServeError::Guest(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("app {app} failed to handle the request\n"),
        ),
        ServeError::Timeout(limit) => (
            StatusCode::GATEWAY_TIMEOUT,
            format!("app {app} did not answer within {} ms\n", limit.as_millis()),
        ),
        ServeError::Cancelled => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("app {app} is being redeployed; retry\n"),
        ),
        // Why is in meshd's log (an error naming the app).
        ServeError::Unavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("app {app} could not be loaded; retry\n"),
        ),
    };
    tracing::debug!(app, version = version.id(), %status, error = %error, "request failed");
    let mut resp = plain(status, message);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

fn plain(status: StatusCode, message: String) -> Response<ResponseBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(message))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_keeps_query_scheme_and_authority() {
        let uri: Uri = "http://example.com/hello/x?q=1".parse().unwrap();
        assert_eq!(
            rewrite_uri(&uri, "/x").unwrap().to_string(),
            "http://example.com/x?q=1"
        );
        let uri: Uri = "/hello?q=1".parse().unwrap();
        assert_eq!(rewrite_uri(&uri, "/").unwrap().to_string(), "/?q=1");
    }
}
