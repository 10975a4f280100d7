//! The desired state of one app, as the `meshd-apps` bucket stores it.

use meshd_artifacts::Digest;
use serde::{Deserialize, Serialize};

/// Code and configuration of one version: what a node needs to deploy it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredCode {
    /// The SHA-256 of the `.wasm`; the artifact's name in the object store.
    pub wasm: Digest,
    /// The `.wasm`'s size in bytes (shown; checked by the digest).
    pub size: u64,
    /// The manifest text (`NAME.toml`), if the version has one. Manifests
    /// are small: they travel inside the desired state.
    #[serde(default)]
    pub manifest: Option<String>,
}

/// A second version on trial for a share of the requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredCanary {
    /// Its code and manifest.
    #[serde(flatten)]
    pub code: DesiredCode,
    /// Its share of the requests, 1–99.
    pub percent: u8,
    /// A request header that keeps one client on one side.
    #[serde(default)]
    pub sticky_header: Option<String>,
}

/// What every node should serve for one app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredApp {
    /// The live version.
    #[serde(flatten)]
    pub live: DesiredCode,
    /// A canary on trial, if any.
    #[serde(default)]
    pub canary: Option<DesiredCanary>,
    /// When this state was published (RFC 3339, the publisher's clock; for
    /// people to read).
    pub published_at: String,
    /// Who published it (`user@host`, or `admin API on NODE`).
    pub by: String,
}

impl DesiredApp {
    /// A state with `live` and no canary, published now by `by`.
    pub fn new(live: DesiredCode, by: &str) -> Self {
        DesiredApp {
            live,
            canary: None,
            published_at: now(),
            by: by.to_owned(),
        }
    }

    /// Whether `other` asks for the same code, manifests and split (who
    /// published it and when do not matter).
    pub fn same_target(&self, other: &DesiredApp) -> bool {
        self.live == other.live && self.canary == other.canary
    }

    /// Parses a value of the bucket.
    pub fn decode(app: &str, bytes: &[u8]) -> Result<DesiredApp, String> {
        serde_json::from_slice(bytes)
            .map_err(|e| format!("the desired state of app {app} in the mesh is unreadable: {e}"))
    }

    /// The value to store.
    pub fn encode(&self) -> bytes::Bytes {
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default().into()
    }
}

/// Now, as RFC 3339 (UTC, seconds).
pub(crate) fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(byte: u8) -> DesiredCode {
        DesiredCode {
            wasm: Digest::of(&[byte]),
            size: 1,
            manifest: Some("route = \"/x\"".to_owned()),
        }
    }

    /// A state survives the round trip through the bucket, and the JSON
    /// has the flat shape docs/mesh.md shows.
    #[test]
    fn desired_state_round_trips_as_flat_json() {
        let mut app = DesiredApp::new(code(1), "me@here");
        app.canary = Some(DesiredCanary {
            code: code(2),
            percent: 10,
            sticky_header: Some("x-user".to_owned()),
        });
        let bytes = app.encode();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["wasm"], Digest::of(&[1]).to_hex());
        assert_eq!(json["canary"]["percent"], 10);
        assert_eq!(json["canary"]["wasm"], Digest::of(&[2]).to_hex());
        assert_eq!(DesiredApp::decode("a", &bytes).unwrap(), app);
    }

    /// Who published and when do not make two states different targets.
    #[test]
    fn same_target_ignores_publisher_and_time() {
        let a = DesiredApp::new(code(1), "a");
        let mut b = DesiredApp::new(code(1), "b");
        b.published_at = "2000-01-01T00:00:00Z".to_owned();
        assert!(a.same_target(&b));
        b.live.manifest = None;
        assert!(!a.same_target(&b));
    }

    /// A value that is not a desired state is refused with the app's name.
    #[test]
    fn garbage_is_refused_with_the_app_name() {
        let error = DesiredApp::decode("shop", b"{not json").unwrap_err();
        assert!(error.contains("app shop"), "{error}");
    }
}
