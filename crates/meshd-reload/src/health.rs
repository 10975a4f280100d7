//! The health check a new version must pass before it takes traffic.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use meshd_routes::{Route, RouteHost};
use meshd_tenant::{AppVersion, BodyError, ServeError};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Sends `GET path` to `version` directly (it is not mounted yet) and
/// requires a 2xx answer, body included, within `timeout`. The request names
/// the route's host if it has an exact one (else `localhost`) and says where
/// the app is mounted, as a real request would.
pub async fn check(
    version: &Arc<AppVersion>,
    route: &Route,
    path: &str,
    timeout: Duration,
) -> Result<(), String> {
    let request = || {
        let host = match route.host() {
            Some(RouteHost::Exact(host)) => host.as_str(),
            _ => "localhost",
        };
        let mut req = http::Request::get(format!("http://{host}{path}"))
            .body(
                Empty::<Bytes>::new().map_err(|never: Infallible| -> BodyError { match never {} }),
            )
            .map_err(|e| format!("health check path {path:?} is not a valid URI: {e}"))?;
        let prefix = route.path();
        if !prefix.is_root() {
            if let Ok(value) = http::HeaderValue::from_str(prefix.as_str()) {
                req.headers_mut().insert("x-forwarded-prefix", value);
            }
        }
        Ok::<_, String>(req)
    };
    // Whether the probe got an instance slot (it waits while traffic holds
    // them all), to say why if the timeout passes.
    let got_slot = AtomicBool::new(false);
    let probe = async {
        let resp = loop {
            match version.handle(request()?).await {
                Err(ServeError::Overloaded(_)) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                other => break other.map_err(|e| e.to_string())?,
            }
        };
        got_slot.store(true, Ordering::Relaxed);
        let status = resp.status();
        // Read the body so the guest runs to completion.
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body failed: {e}"))?
            .to_bytes();
        if status.is_success() {
            Ok(())
        } else if body.is_empty() {
            Err(format!("answered {status}"))
        } else {
            Err(format!("answered {status}: {}", excerpt(&body)))
        }
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(format!("health check GET {path} failed: {why}")),
        Err(_) if !got_slot.load(Ordering::Relaxed) => Err(format!(
            "health check GET {path} found every instance slot of meshd busy for {timeout:?}"
        )),
        Err(_) => Err(format!(
            "health check GET {path} did not answer within {timeout:?}"
        )),
    }
}

/// Most characters of a failed health check's body shown in its refusal.
const EXCERPT_CHARS: usize = 200;

/// The start of `body` as one line of text, quoted: at most
/// [`EXCERPT_CHARS`] characters, control characters escaped, `...` when cut.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut shown: String = text.chars().take(EXCERPT_CHARS).collect();
    if shown.len() < text.len() {
        shown.push_str("...");
    }
    format!("{shown:?}")
}

#[cfg(test)]
mod tests {
    use super::excerpt;

    #[test]
    fn an_excerpt_is_one_quoted_line_of_at_most_200_characters() {
        assert_eq!(
            excerpt(b"down for maintenance\n"),
            "\"down for maintenance\""
        );
        assert_eq!(excerpt(b"a\nb\x1b"), "\"a\\nb\\u{1b}\"");
        let long = excerpt("x".repeat(500).as_bytes());
        assert_eq!(long, format!("\"{}...\"", "x".repeat(200)));
        assert_eq!(excerpt(b"\xff ok"), "\"\u{fffd} ok\"");
    }
}
