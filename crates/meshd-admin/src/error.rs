//! Every error the admin API answers, as one type with one way to become a
//! response: `{"error": {"kind", "message", "app"?}}` with its status.

use crate::view::{ErrorJson, ErrorResponse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::header::WWW_AUTHENTICATE;
use http::{HeaderValue, StatusCode};
use meshd_registry::Refused;

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    app: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            app: None,
        }
    }

    /// 400: the request is malformed.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 415: the body is of a type the endpoint does not take.
    pub(crate) fn unsupported_type(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_request", message)
    }

    /// 413: the body is larger than allowed.
    pub(crate) fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 401: no token, or the wrong one.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404: no such path, or no such app.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 405: the path exists, the method does not.
    pub(crate) fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            message,
        )
    }

    /// 503: something meshd needs (the mesh's NATS servers) is unreachable;
    /// nothing was changed.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 503: the request could run later, not now (too many followers).
    pub(crate) fn busy(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message)
    }

    /// 409: something else is under way (a graceful restart).
    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 500: meshd itself failed.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The pipeline refused a change of `app`: 404 for an unknown app, 400
    /// for a request that makes no sense, 500 when meshd itself failed (the
    /// artifact store, a task), 503 while meshd shuts down, 422 for
    /// everything about the app's code or manifest.
    pub(crate) fn refused(app: &str, refused: &Refused) -> Self {
        let status = match refused {
            Refused::NotFound(_) => StatusCode::NOT_FOUND,
            Refused::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refused::Store(_) | Refused::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Refused::Stopped => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError {
            status,
            kind: refused.kind(),
            message: refused.to_string(),
            app: Some(app.to_owned()),
        }
    }

    /// The same error about `app`.
    pub(crate) fn about(mut self, app: &str) -> Self {
        self.app = Some(app.to_owned());
        self
    }

    /// The status it answers with.
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// Its kind, for logs.
    pub(crate) fn kind(&self) -> &'static str {
        self.kind
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorResponse {
            error: ErrorJson {
                kind: self.kind.to_owned(),
                message: self.message,
                app: self.app,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
