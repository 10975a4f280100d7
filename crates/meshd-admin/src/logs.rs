//! `GET /v1/apps/NAME/logs`: an app's recent log lines (its guests' stdout,
//! stderr and wasi:logging) from the app's ring in memory
//! ([`meshd_tenant::LogRing`]), as JSON, or followed live as server-sent
//! events.
//!
//! A follower never holds a guest back: the guest's lines go into the ring,
//! and the follower reads them from there when its client takes the next
//! event. A client slower than the app finds lines pushed out of the ring;
//! it gets a `gap` event saying how many, then carries on from the oldest
//! line kept. A client that stops reading altogether is dropped after the
//! listener's write timeout.

use crate::apps::app_name;
use crate::error::ApiError;
use crate::view::{LogLineJson, LogsJson};
use crate::{AdminState, Streaming};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue};
use meshd_tenant::{LogLine, LogPage, LogRing};
use serde::Deserialize;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most lines one JSON answer (or one batch of events) carries.
const MAX_PAGE: usize = meshd_tenant::LOG_RING_LINES;

/// Most clients following logs at once. Each holds one of the admin
/// listener's connections ([`crate::MAX_ADMIN_CONNECTIONS`]), so followers
/// must leave room for everything else.
pub const MAX_FOLLOWERS: usize = 8;

/// A comment is sent this often while no line comes, so that a proxy in
/// between does not close a quiet stream and a dead client is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The places for followers, shared by every request of one router.
pub(crate) struct Followers(Arc<Semaphore>);

impl Default for Followers {
    fn default() -> Self {
        Followers(Arc::new(Semaphore::new(MAX_FOLLOWERS)))
    }
}

/// The query of `GET /v1/apps/NAME/logs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogsQuery {
    /// Lines numbered after this one (0 or absent: every line kept).
    #[serde(default)]
    after: Option<u64>,
    /// Most lines in a JSON answer.
    #[serde(default)]
    limit: Option<usize>,
    /// `1` or `true`: follow as server-sent events.
    #[serde(default)]
    follow: Option<String>,
}

/// `GET /v1/apps/NAME/logs`.
pub(crate) async fn logs(
    State(state): State<Arc<AdminState>>,
    Extension(followers): Extension<Arc<Followers>>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<LogsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = app_name(name)?;
    let Query(query) =
        query.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    let follow = match query.follow.as_deref() {
        None => wants_event_stream(&headers),
        Some("1" | "true") => true,
        Some("0" | "false") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "follow={other:?}: give follow=1 to follow the log, or leave it out"
            )))
        }
    };
    crate::apps::require_known(&state, &name)?;
    // Every app with a version built (or being built) has a ring; one
    // without has no lines either.
    let ring = state.logs.get(&name).unwrap_or_default();
    // `Last-Event-ID` is where a reconnecting EventSource left off.
    let after = query.after.or_else(|| last_event_id(&headers)).unwrap_or(0);
    if !follow {
        let limit = query.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
        return Ok(Json(logs_json(&name, ring.after(after, limit))).into_response());
    }
    let Ok(permit) = followers.0.clone().try_acquire_owned() else {
        return Err(ApiError::busy(format!(
            "{MAX_FOLLOWERS} clients follow logs already; try again later, or read GET /v1/apps/{name}/logs?after=N"
        )));
    };
    Ok(follow_response(ring, after, permit))
}

fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn logs_json(app: &str, page: LogPage) -> LogsJson {
    LogsJson {
        app: app.to_owned(),
        lines: page.lines.iter().map(line_json).collect(),
        missed: page.missed,
        last: page.last,
    }
}

fn line_json(line: &LogLine) -> LogLineJson {
    LogLineJson {
        seq: line.seq,
        at: humantime::format_rfc3339_millis(line.at).to_string(),
        stream: line.source.stream().to_owned(),
        level: line.source.level().map(str::to_owned),
        context: line.context.clone(),
        text: line.text.clone(),
    }
}

/// The events of one follower: the lines kept after `after`, then each line
/// as it comes.
fn follow_response(ring: Arc<LogRing>, after: u64, permit: OwnedSemaphorePermit) -> Response {
    let follower = Follower {
        newest: ring.watch(),
        ring,
        after,
        started: false,
        _permit: permit,
    };
    let events = futures::stream::unfold(follower, |mut follower| async move {
        let events = follower.next().await;
        Some((Ok::<_, Infallible>(Bytes::from(events)), follower))
    });
    let mut response = axum::body::Body::from_stream(events).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.extensions_mut().insert(Streaming);
    response
}

/// Where one follower is in its app's log.
struct Follower {
    ring: Arc<LogRing>,
    /// The number of the ring's newest line, to wait on.
    newest: tokio::sync::watch::Receiver<u64>,
    /// The last line sent.
    after: u64,
    /// Whether the lines kept at the start were sent.
    started: bool,
    /// Its place among the followers, given back when the stream ends.
    _permit: OwnedSemaphorePermit,
}

impl Follower {
    /// The next events to send: the lines kept at first, then new lines as
    /// they come, or a keep-alive comment after [`KEEP_ALIVE`] without one.
    async fn next(&mut self) -> String {
        loop {
            if self.started {
                match tokio::time::timeout(KEEP_ALIVE, self.newest.changed()).await {
                    Ok(Ok(())) => {}
                    // The ring's sender lives as long as the ring, which
                    // this follower holds: this does not happen.
                    Ok(Err(_)) => tokio::time::sleep(KEEP_ALIVE).await,
                    Err(_) => return ": keep-alive\n\n".to_owned(),
                }
            }
            // Mark what is seen before reading, so a line that comes while
            // reading wakes the next wait.
            self.newest.borrow_and_update();
            let events = self.next_events();
            if !events.is_empty() {
                self.started = true;
                return events;
            }
            if !self.started {
                // Something at once, so the client knows it is connected.
                self.started = true;
                return ": following\n\n".to_owned();
            }
        }
    }

    /// The events for the lines after the last one sent (a `gap` event
    /// first if some were pushed out of the ring).
    fn next_events(&mut self) -> String {
        let page = self.ring.after(self.after, MAX_PAGE);
        let mut events = String::new();
        if page.missed > 0 {
            events.push_str(&format!(
                "event: gap\ndata: {{\"missed\":{}}}\n\n",
                page.missed
            ));
        }
        for line in &page.lines {
            // JSON has no raw newlines, so each event's data is one line.
            let data = serde_json::to_string(&line_json(line)).unwrap_or_default();
            events.push_str(&format!("id: {}\nevent: line\ndata: {data}\n\n", line.seq));
        }
        self.after = page.last;
        events
    }
}
