//! The endpoints for machines watching meshd: liveness, readiness and
//! metrics.

use crate::error::ApiError;
use crate::view::{HealthJson, ReadyJson};
use crate::AdminState;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;

/// The content type of OpenMetrics text, as `--metrics-listen` sends it.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `GET /healthz`: the process answers.
pub(crate) async fn healthz() -> Json<HealthJson> {
    Json(HealthJson {
        status: "ok".to_owned(),
        pid: std::process::id(),
    })
}

/// `GET /readyz`: 200 once every app of the first load has been decided,
/// 503 until then; both with the progress.
pub(crate) async fn readyz(State(state): State<Arc<AdminState>>) -> (StatusCode, Json<ReadyJson>) {
    let progress = state.registry.startup().progress();
    let status = if progress.done {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = ReadyJson {
        ready: progress.done,
        loaded: progress.decided,
        total: progress.total,
    };
    (status, Json(body))
}

/// `GET /metrics`: the same OpenMetrics text as `--metrics-listen`.
pub(crate) async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.metrics) {
        Ok(()) => ([(CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(e) => ApiError::internal(format!("cannot encode the metrics: {e}")).into_response(),
    }
}
