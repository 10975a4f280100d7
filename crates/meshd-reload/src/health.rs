//! The health check a new version must pass before it takes traffic.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use meshd_routes::Prefix;
use meshd_tenant::{AppVersion, BodyError};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// Sends `GET path` to `version` directly (it is not mounted yet) and
/// requires a 2xx answer, body included, within `timeout`.
pub async fn check(
    version: &Arc<AppVersion>,
    prefix: &Prefix,
    path: &str,
    timeout: Duration,
) -> Result<(), String> {
    let mut req = http::Request::get(format!("http://localhost{path}"))
        .body(Empty::<Bytes>::new().map_err(|never: Infallible| -> BodyError { match never {} }))
        .map_err(|e| format!("health check path {path:?} is not a valid URI: {e}"))?;
    if !prefix.is_root() {
        if let Ok(value) = http::HeaderValue::from_str(prefix.as_str()) {
            req.headers_mut().insert("x-forwarded-prefix", value);
        }
    }
    let probe = async {
        let resp = version.handle(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read the body so the guest runs to completion.
        resp.into_body()
            .collect()
            .await
            .map_err(|e| format!("body failed: {e}"))?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(format!("health check GET {path} failed: {why}")),
        Err(_) => Err(format!(
            "health check GET {path} did not answer within {timeout:?}"
        )),
    }
}
