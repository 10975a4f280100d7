//! `/v1/apps`: reading apps from the registry, and changing them through
//! the deploy pipeline. Every change is the admin API's own
//! (`Origin::Api`); its answer comes after the pipeline has decided.

use crate::error::ApiError;
use crate::upload::{body_kind, read_small, read_upload, BodyKind, Upload};
use crate::view::{AppJson, AppListJson, CanaryBody, RemovedJson, RollbackBody};
use crate::AdminState;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::Json;
use meshd_registry::Origin;
use meshd_reload::{AppSpec, Applied, CanarySource, Change};
use serde::Deserialize;
use std::sync::Arc;

/// Longest app name.
const MAX_NAME_LEN: usize = 64;

/// How an app's code is named in the pipeline's messages.
const WASM_LABEL: &str = "upload";
/// How an app's manifest is named in the pipeline's messages.
const MANIFEST_LABEL: &str = "uploaded manifest";

type Answer<T> = Result<T, ApiError>;
type Shared = State<Arc<AdminState>>;

/// `GET /v1/apps`: every app that is not gone, by name.
pub(crate) async fn list(State(state): Shared) -> Json<AppListJson> {
    let set = state.registry.load();
    let apps = set
        .apps
        .values()
        .filter(|status| !status.is_gone())
        .map(AppJson::from_status)
        .collect();
    Json(AppListJson { apps })
}

/// `GET /v1/apps/NAME`.
pub(crate) async fn get(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
) -> Answer<Json<AppJson>> {
    let name = app_name(name)?;
    current(&state, &name).map(Json)
}

/// `PUT /v1/apps/NAME`: deploy an upload.
pub(crate) async fn put(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
    request: Request,
) -> Answer<(StatusCode, Json<AppJson>)> {
    let name = app_name(name)?;
    let upload = read_upload(request, state.max_wasm_size).await?;
    let applied = apply(&state, &name, Change::Upsert(spec(&name, &upload))).await?;
    // Its place among the uploads is given back only now.
    drop(upload);
    let status = match applied {
        Applied::Deployed => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    Ok((status, Json(after_change(&state, &name)?)))
}

/// `DELETE /v1/apps/NAME`.
pub(crate) async fn remove(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
) -> Answer<Json<RemovedJson>> {
    let name = app_name(name)?;
    let change = Change::Remove {
        name: name.clone(),
        origin: Origin::Api,
    };
    apply(&state, &name, change).await?;
    Ok(Json(RemovedJson { removed: name }))
}

/// `POST /v1/apps/NAME/rollback`, with an optional `{"version": ...}`.
pub(crate) async fn rollback(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
    request: Request,
) -> Answer<Json<AppJson>> {
    let name = app_name(name)?;
    // Any content type: `curl -d '{...}'` sends its JSON as a form.
    let body = read_small(request).await?;
    let body: RollbackBody = if body.iter().all(u8::is_ascii_whitespace) {
        RollbackBody::default()
    } else {
        parse_json(&body)?
    };
    let to = body.version.as_deref().map(version_ref).transpose()?;
    let change = Change::Rollback {
        name: name.clone(),
        origin: Origin::Api,
        to,
    };
    apply(&state, &name, change).await?;
    Ok(Json(after_change(&state, &name)?))
}

/// The query string of `POST /v1/apps/NAME/canary`.
#[derive(Debug, Deserialize)]
pub(crate) struct CanaryQuery {
    pub(crate) percent: Option<u8>,
    pub(crate) sticky_header: Option<String>,
}

/// `POST /v1/apps/NAME/canary`: an upload (with `?percent=P`) or a kept
/// version (JSON).
pub(crate) async fn canary(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<CanaryQuery>, QueryRejection>,
    request: Request,
) -> Answer<(StatusCode, Json<AppJson>)> {
    let name = app_name(name)?;
    let Query(query) =
        query.map_err(|e| ApiError::bad_request(format!("bad query string: {}", e.body_text())))?;
    // Held until the change is decided (its place among the uploads).
    let mut upload = None;
    let (from, percent, sticky_header) = if body_kind(request.headers()) == BodyKind::Json {
        let body: CanaryBody = parse_json(&read_small(request).await?)?;
        let percent = canary_percent(body.percent.or(query.percent))?;
        let sticky = sticky_header(body.sticky_header.or(query.sticky_header))?;
        let version = version_ref(&body.version)?;
        (CanarySource::Kept(version), percent, sticky)
    } else {
        // Checked before the upload is read: a bad request costs no upload.
        let percent = canary_percent(query.percent)?;
        let sticky = sticky_header(query.sticky_header)?;
        let read = upload.insert(read_upload(request, state.max_wasm_size).await?);
        (CanarySource::Upload(spec(&name, read)), percent, sticky)
    };
    let change = Change::Canary {
        name: name.clone(),
        origin: Origin::Api,
        from,
        percent,
        sticky_header,
    };
    apply(&state, &name, change).await?;
    drop(upload);
    Ok((StatusCode::CREATED, Json(after_change(&state, &name)?)))
}

/// `POST /v1/apps/NAME/promote`.
pub(crate) async fn promote(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
) -> Answer<Json<AppJson>> {
    let name = app_name(name)?;
    let change = Change::Promote {
        name: name.clone(),
        origin: Origin::Api,
    };
    apply(&state, &name, change).await?;
    Ok(Json(after_change(&state, &name)?))
}

/// `POST /v1/apps/NAME/abort`.
pub(crate) async fn abort(
    State(state): Shared,
    name: Result<Path<String>, PathRejection>,
) -> Answer<Json<AppJson>> {
    let name = app_name(name)?;
    let change = Change::Abort {
        name: name.clone(),
        origin: Origin::Api,
    };
    apply(&state, &name, change).await?;
    Ok(Json(after_change(&state, &name)?))
}

/// Sends `change` to the pipeline and waits for its decision; a refusal
/// becomes the error answer.
async fn apply(state: &AdminState, name: &str, change: Change) -> Answer<Applied> {
    let what = change_name(&change);
    if state.restarting.load(std::sync::atomic::Ordering::SeqCst) {
        tracing::info!(
            app = name,
            change = what,
            "admin API change refused: a graceful restart is under way"
        );
        return Err(ApiError::unavailable(
            "a graceful restart of meshd is under way: the new process would not have this change; try again once it serves",
        ));
    }
    match state.pipeline.apply(change).await {
        Ok(applied) => {
            tracing::info!(app = name, change = what, outcome = ?applied, "admin API change applied");
            Ok(applied)
        }
        Err(refused) => {
            let error = ApiError::refused(name, &refused);
            tracing::info!(app = name, change = what, kind = error.kind(), status = error.status().as_u16(), reason = %refused, "admin API change refused");
            Err(error)
        }
    }
}

fn change_name(change: &Change) -> &'static str {
    match change {
        Change::Upsert(_) => "deploy",
        Change::Remove { .. } => "remove",
        Change::Snapshot(_) => "snapshot",
        Change::Rollback { .. } => "rollback",
        Change::Canary { .. } => "canary",
        Change::Promote { .. } => "promote",
        Change::Abort { .. } => "abort",
    }
}

/// The app as the registry shows it now; 404 if meshd does not know it.
fn current(state: &AdminState, name: &str) -> Answer<AppJson> {
    let set = state.registry.load();
    match set.app(name) {
        Some(status) if !status.is_gone() => Ok(AppJson::from_status(status)),
        _ => Err(unknown_app(name)),
    }
}

/// 404 unless meshd knows an app called `name` (logs, stats).
pub(crate) fn require_known(state: &AdminState, name: &str) -> Result<(), ApiError> {
    let known = state
        .registry
        .load()
        .app(name)
        .is_some_and(|status| !status.is_gone());
    if known {
        Ok(())
    } else {
        Err(unknown_app(name))
    }
}

fn unknown_app(name: &str) -> ApiError {
    ApiError::not_found(format!("no app named {name}")).about(name)
}

/// The app after a change the pipeline applied (and published).
fn after_change(state: &AdminState, name: &str) -> Answer<AppJson> {
    current(state, name).map_err(|_| {
        ApiError::internal(format!(
            "the change of app {name} was applied, but the app is not in the registry"
        ))
        .about(name)
    })
}

fn spec(name: &str, upload: &Upload) -> AppSpec {
    AppSpec {
        name: name.to_owned(),
        origin: Origin::Api,
        wasm: upload.wasm.clone().into(),
        manifest_label: upload.manifest.as_ref().map(|_| MANIFEST_LABEL.to_owned()),
        manifest: upload.manifest.clone(),
        wasm_label: WASM_LABEL.to_owned(),
    }
}

/// The app name of the path, if it is one meshd accepts: ASCII letters,
/// digits, `-` and `_`, starting with a letter or digit, at most 64 long.
pub(crate) fn app_name(path: Result<Path<String>, PathRejection>) -> Answer<String> {
    let Path(name) =
        path.map_err(|e| ApiError::bad_request(format!("bad app name: {}", e.body_text())))?;
    let mut chars = name.chars();
    let valid = name.len() <= MAX_NAME_LEN
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(ApiError::bad_request(format!(
            "{name:?} is not an app name: ASCII letters, digits, '-' and '_', starting with a letter or digit, at most {MAX_NAME_LEN} characters"
        )));
    }
    Ok(name)
}

/// A version as a request names it: 64 hex digits or the first 12 (an
/// optional `sha256:` prefix is dropped).
pub(crate) fn version_ref(text: &str) -> Answer<String> {
    let hex = text
        .strip_prefix("sha256:")
        .unwrap_or(text)
        .to_ascii_lowercase();
    if matches!(hex.len(), 12 | 64) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(ApiError::bad_request(format!(
            "{text:?} is not a version: give its digest (64 hex digits) or id (the first 12)"
        )))
    }
}

pub(crate) fn canary_percent(percent: Option<u8>) -> Answer<u8> {
    match percent {
        Some(p @ 1..=99) => Ok(p),
        Some(p) => Err(ApiError::bad_request(format!(
            "a canary takes 1 to 99 percent of the requests, not {p}"
        ))),
        None => Err(ApiError::bad_request(
            "say which share of the requests the canary takes: ?percent=P (1 to 99)",
        )),
    }
}

pub(crate) fn sticky_header(name: Option<String>) -> Answer<Option<http::HeaderName>> {
    name.map(|name| {
        http::HeaderName::try_from(name.as_str())
            .map_err(|_| ApiError::bad_request(format!("{name:?} is not a header name")))
    })
    .transpose()
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Answer<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}
