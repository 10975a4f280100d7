//! The admin API of a node in mesh mode (`--mesh`): changes go to the
//! mesh's desired state, not to this node alone, and every node following
//! the mesh (this one included) applies them. `GET /v1/mesh` shows the
//! desired set and every live node's view.

use crate::error::ApiError;
use crate::upload::{body_kind, read_small, read_upload, BodyKind};
use crate::view::RollbackBody;
use crate::AdminState;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::Json;
use meshd_mesh::{MeshView, PublishError, Publisher};
use serde::Serialize;
use std::sync::Arc;

type Answer<T> = Result<T, ApiError>;
type Shared = State<Arc<AdminState>>;

/// What a change in mesh mode answers (202: the desired state is stored;
/// the nodes apply it on their own, `GET /v1/mesh` shows how far they are).
#[derive(Debug, Serialize)]
pub(crate) struct PublishedJson {
    app: String,
    /// The desired state now stored, with its revision (`null` after a
    /// removal).
    desired: Option<meshd_mesh::DesiredEntry>,
}

fn publisher(state: &AdminState) -> Answer<&Publisher> {
    state.mesh.as_deref().ok_or_else(|| {
        ApiError::not_found("this node does not follow a mesh (start it with --mesh)")
    })
}

fn published(
    name: &str,
    outcome: Result<meshd_mesh::DesiredEntry, PublishError>,
) -> Answer<(StatusCode, Json<PublishedJson>)> {
    match outcome {
        Ok(entry) => {
            tracing::info!(app = name, version = %entry.app.live.wasm.short(), revision = entry.revision, "admin API: desired state published to the mesh");
            Ok((
                StatusCode::ACCEPTED,
                Json(PublishedJson {
                    app: name.to_owned(),
                    desired: Some(entry),
                }),
            ))
        }
        Err(e) => Err(mesh_error(name, e)),
    }
}

fn mesh_error(name: &str, e: PublishError) -> ApiError {
    let error = match &e {
        PublishError::NotFound(_) => ApiError::not_found(e.to_string()),
        PublishError::BadRequest(_) => ApiError::bad_request(e.to_string()),
        PublishError::Mesh(_) => ApiError::unavailable(e.to_string()),
    };
    tracing::info!(app = name, reason = %e, "admin API: mesh change refused");
    error.about(name)
}

/// `GET /v1/mesh`.
pub(crate) async fn view(State(state): Shared) -> Answer<Json<MeshView>> {
    let publisher = publisher(&state)?;
    publisher
        .view()
        .await
        .map(Json)
        .map_err(|e| ApiError::unavailable(format!("{e:#}")))
}

/// `PUT /v1/apps/NAME` in mesh mode: publish an upload.
pub(crate) async fn put(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
    request: Request,
) -> Answer<(StatusCode, Json<PublishedJson>)> {
    let name = crate::apps::app_name(name)?;
    let publisher = publisher(&state)?;
    let upload = read_upload(request, state.max_wasm_size).await?;
    let outcome = publisher
        .publish(&name, &upload.wasm, upload.manifest.clone())
        .await;
    published(&name, outcome)
}

/// `DELETE /v1/apps/NAME` in mesh mode.
pub(crate) async fn remove(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
) -> Answer<(StatusCode, Json<PublishedJson>)> {
    let name = crate::apps::app_name(name)?;
    let publisher = publisher(&state)?;
    publisher
        .remove(&name)
        .await
        .map_err(|e| mesh_error(&name, e))?;
    tracing::info!(app = %name, "admin API: app removed from the mesh's desired set");
    Ok((
        StatusCode::ACCEPTED,
        Json(PublishedJson {
            app: name,
            desired: None,
        }),
    ))
}

/// `POST /v1/apps/NAME/rollback` in mesh mode: an earlier version from the
/// mesh's history of the app.
pub(crate) async fn rollback(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
    request: Request,
) -> Answer<(StatusCode, Json<PublishedJson>)> {
    let name = crate::apps::app_name(name)?;
    let publisher = publisher(&state)?;
    let body = read_small(request).await?;
    let body: RollbackBody = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackBody::default()
    } else {
        crate::apps::parse_json(&body)?
    };
    let to = body
        .version
        .as_deref()
        .map(crate::apps::version_ref)
        .transpose()?;
    let outcome = publisher.rollback(&name, to.as_deref()).await;
    published(&name, outcome)
}

/// `POST /v1/apps/NAME/canary?percent=P[&sticky_header=H]` in mesh mode:
/// an upload only (a mesh canary of an earlier version is a publish of
/// that version's file).
pub(crate) async fn canary(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<crate::apps::CanaryQuery>, QueryRejection>,
    request: Request,
) -> Answer<(StatusCode, Json<PublishedJson>)> {
    let name = crate::apps::app_name(name)?;
    let publisher = publisher(&state)?;
    let Query(query) =
        query.map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    if body_kind(request.headers()) == BodyKind::Json {
        return Err(ApiError::bad_request(
            "in mesh mode a canary is an upload (a kept version cannot be named): send the .wasm",
        ));
    }
    let percent = crate::apps::canary_percent(query.percent)?;
    let sticky = crate::apps::sticky_header(query.sticky_header)?;
    let upload = read_upload(request, state.max_wasm_size).await?;
    let outcome = publisher
        .canary(
            &name,
            &upload.wasm,
            upload.manifest.clone(),
            percent,
            sticky.map(|h| h.as_str().to_owned()),
        )
        .await;
    published(&name, outcome)
}

/// `POST /v1/apps/NAME/promote` in mesh mode.
pub(crate) async fn promote(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
) -> Answer<(StatusCode, Json<PublishedJson>)> {
    let name = crate::apps::app_name(name)?;
    let outcome = publisher(&state)?.promote(&name).await;
    published(&name, outcome)
}

/// `POST /v1/apps/NAME/abort` in mesh mode.
pub(crate) async fn abort(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
) -> Answer<(StatusCode, Json<PublishedJson>)> {
    let name = crate::apps::app_name(name)?;
    let outcome = publisher(&state)?.abort(&name).await;
    published(&name, outcome)
}
