//! Reading request bodies within limits: an upload (the wasm alone, or a
//! multipart form with the wasm and a manifest), and small JSON bodies.
//!
//! No body is ever held beyond its limit: a declared `Content-Length` over
//! the limit is refused before anything is read, and a body that grows past
//! it is refused as soon as it does (413).

use crate::error::ApiError;
use axum::body::Body;
use axum::extract::{FromRequest as _, Multipart, Request};
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};

/// Largest manifest part of a multipart upload (a manifest is a short TOML
/// file).
pub(crate) const MAX_MANIFEST_SIZE: usize = 64 * 1024;

/// What a multipart upload may carry beyond the wasm itself: the manifest,
/// and the boundaries and part headers around both.
const MULTIPART_OVERHEAD: usize = MAX_MANIFEST_SIZE + 16 * 1024;

/// Largest JSON body (rollback, canary of a kept version).
pub(crate) const MAX_JSON_SIZE: usize = 64 * 1024;

/// Uploads read (and held until the pipeline has decided them) at once. The
/// pipeline applies one change at a time anyway; without this bound, every
/// admin connection could hold a `--max-wasm-size` upload in memory.
const MAX_UPLOADS_AT_ONCE: usize = 2;

static UPLOADS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_UPLOADS_AT_ONCE);

/// An app's code and manifest, as uploaded.
#[derive(Debug)]
pub(crate) struct Upload {
    /// The `.wasm` bytes.
    pub(crate) wasm: Bytes,
    /// The manifest text, if the upload had one.
    pub(crate) manifest: Option<String>,
    /// One of the [`MAX_UPLOADS_AT_ONCE`] places: keep the upload until its
    /// change is decided.
    _place: tokio::sync::SemaphorePermit<'static>,
}

/// The body types an endpoint can get, by `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    /// `application/wasm`.
    Wasm,
    /// `multipart/form-data`.
    Multipart,
    /// `application/json`.
    Json,
    /// No `Content-Type`.
    None,
    /// Anything else.
    Other,
}

/// The kind of body `headers` announce.
pub(crate) fn body_kind(headers: &HeaderMap) -> BodyKind {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return BodyKind::None;
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/wasm" => BodyKind::Wasm,
        "multipart/form-data" => BodyKind::Multipart,
        "application/json" => BodyKind::Json,
        _ => BodyKind::Other,
    }
}

/// Reads an upload: the wasm alone (`application/wasm`, at most
/// `max_wasm_size` bytes) or a multipart form with a part `wasm` (at most
/// `max_wasm_size`) and an optional part `manifest`.
pub(crate) async fn read_upload(request: Request, max_wasm_size: u64) -> Result<Upload, ApiError> {
    let max_wasm = usize::try_from(max_wasm_size).unwrap_or(usize::MAX);
    match body_kind(request.headers()) {
        BodyKind::Wasm => {
            let place = take_place().await?;
            let wasm = read_limited(request, max_wasm, || too_large_wasm(max_wasm)).await?;
            Ok(Upload {
                wasm,
                manifest: None,
                _place: place,
            })
        }
        BodyKind::Multipart => {
            let place = take_place().await?;
            let (wasm, manifest) = read_multipart(request, max_wasm).await?;
            Ok(Upload {
                wasm,
                manifest,
                _place: place,
            })
        }
        _ => Err(ApiError::unsupported_type(
            "send the wasm as the body with `Content-Type: application/wasm`, or as `multipart/form-data` with a part `wasm` and an optional part `manifest`",
        )),
    }
}

/// Waits for one of the places for an upload.
async fn take_place() -> Result<tokio::sync::SemaphorePermit<'static>, ApiError> {
    UPLOADS
        .acquire()
        .await
        .map_err(|_| ApiError::internal("the upload limiter is closed"))
}

/// Reads a small body (JSON) whole, at most [`MAX_JSON_SIZE`] bytes.
pub(crate) async fn read_small(request: Request) -> Result<Bytes, ApiError> {
    read_limited(request, MAX_JSON_SIZE, || {
        ApiError::too_large(format!(
            "the request body is larger than {MAX_JSON_SIZE} bytes"
        ))
    })
    .await
}

/// The whole body, if it is at most `limit` bytes; else `too_large()`
/// (reading stops as soon as the body passes the limit).
async fn read_limited(
    request: Request,
    limit: usize,
    too_large: impl Fn() -> ApiError,
) -> Result<Bytes, ApiError> {
    if declared_length(request.headers()).is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(format!(
            "cannot read the request body: {e}"
        ))),
    }
}

async fn read_multipart(
    request: Request,
    max_wasm: usize,
) -> Result<(Bytes, Option<String>), ApiError> {
    let limit = max_wasm.saturating_add(MULTIPART_OVERHEAD);
    if declared_length(request.headers()).is_some_and(|length| length > limit as u64) {
        return Err(too_large_form(limit));
    }
    // The whole stream is capped too: parts other than `wasm` and the
    // boundaries cannot make it grow without bound.
    let request = request.map(|body| Body::new(Limited::new(body, limit)));
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("not a multipart upload: {}", e.body_text())))?;
    let mut wasm = None;
    let mut manifest = None;
    while let Some(mut field) = form
        .next_field()
        .await
        .map_err(|e| multipart_error(e, limit))?
    {
        let name = field.name().unwrap_or("").to_owned();
        let (slot, part_limit) = match name.as_str() {
            "wasm" => (&mut wasm, max_wasm),
            "manifest" => (&mut manifest, MAX_MANIFEST_SIZE),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unexpected part {name:?} in the upload; it takes a part `wasm` and an optional part `manifest`"
                )))
            }
        };
        if slot.is_some() {
            return Err(ApiError::bad_request(format!(
                "the upload has more than one part `{name}`"
            )));
        }
        let mut bytes = BytesMut::new();
        while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, limit))? {
            if bytes.len() + chunk.len() > part_limit {
                return Err(if name == "wasm" {
                    too_large_wasm(max_wasm)
                } else {
                    ApiError::too_large(format!(
                        "the manifest part is larger than {MAX_MANIFEST_SIZE} bytes"
                    ))
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        *slot = Some(bytes.freeze());
    }
    let wasm = wasm.ok_or_else(|| {
        ApiError::bad_request("the upload has no part `wasm` (the app's .wasm file)")
    })?;
    let manifest = manifest
        .map(|bytes| {
            String::from_utf8(bytes.to_vec())
                .map_err(|_| ApiError::bad_request("the manifest part is not UTF-8 text"))
        })
        .transpose()?;
    Ok((wasm, manifest))
}

/// A multipart failure: 413 when the stream passed its cap (`limit`), else
/// 400.
fn multipart_error(error: axum::extract::multipart::MultipartError, limit: usize) -> ApiError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large_form(limit)
    } else {
        ApiError::bad_request(format!("bad multipart upload: {}", error.body_text()))
    }
}

fn too_large_wasm(max_wasm: usize) -> ApiError {
    ApiError::too_large(format!(
        "the wasm is larger than --max-wasm-size ({max_wasm} bytes)"
    ))
}

fn too_large_form(limit: usize) -> ApiError {
    ApiError::too_large(format!(
        "the upload is larger than {limit} bytes (--max-wasm-size and room for a manifest)"
    ))
}

/// The `Content-Length` the client announced, if any and readable.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}
