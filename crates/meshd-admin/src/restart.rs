//! `POST /v1/restart`: a graceful restart of meshd itself (as SIGUSR2): the
//! binary now at meshd's path takes over the listening sockets, and this
//! process drains and exits once the new one is ready (docs/operations.md,
//! "Upgrading meshd").

use crate::error::ApiError;
use crate::view::RestartJson;
use crate::AdminState;
use axum::extract::State;
use axum::Json;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Where the admin API sends a restart request; meshd answers on the
/// oneshot once the new process is ready, or has failed.
pub type RestartTrigger = mpsc::Sender<oneshot::Sender<Result<Restarted, RestartRefused>>>;

/// A restart that happened: the new process serves.
#[derive(Debug, Clone, Copy)]
pub struct Restarted {
    /// This (old) process, now draining.
    pub old_pid: u32,
    /// The new process.
    pub new_pid: u32,
}

/// Why there was no restart; this process keeps serving either way.
#[derive(Debug, Clone)]
pub enum RestartRefused {
    /// Another restart is under way, or has just handed over.
    InProgress,
    /// The new process did not become ready: why.
    Failed(String),
}

/// `POST /v1/restart`: 200 with both pids once the new process serves; 409
/// while another restart is under way; 500 with the reason when the new
/// process failed (the old one keeps serving).
pub(crate) async fn restart(
    State(state): State<Arc<AdminState>>,
) -> Result<Json<RestartJson>, ApiError> {
    let Some(trigger) = &state.restart else {
        return Err(ApiError::not_found(
            "this meshd cannot restart itself (no restart trigger)",
        ));
    };
    let (reply, answer) = oneshot::channel();
    trigger
        .send(reply)
        .await
        .map_err(|_| ApiError::unavailable("meshd is shutting down"))?;
    match answer.await {
        Ok(Ok(done)) => Ok(Json(RestartJson {
            old_pid: done.old_pid,
            new_pid: done.new_pid,
        })),
        Ok(Err(RestartRefused::InProgress)) => Err(ApiError::conflict(
            "a graceful restart is already under way",
        )),
        Ok(Err(RestartRefused::Failed(why))) => Err(ApiError::internal(format!(
            "the new meshd process did not take over; this one keeps serving: {why}"
        ))),
        Err(_) => Err(ApiError::unavailable("meshd is shutting down")),
    }
}
