//! The JSON the admin API speaks: what it answers about apps and versions,
//! and the bodies it accepts. The types deserialize too, so clients (the
//! CLI, tests) read answers with the same definitions the server writes.
//! docs/admin-api.md shows every one.

use meshd_artifacts::{Digest, StoredVersion};
use meshd_registry::{AppStatus, VersionInfo};
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// One app: `GET /v1/apps/NAME`, and the answer to every change of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppJson {
    /// The app's name.
    pub name: String,
    /// Its route, e.g. `/hello` (`null` before any version was decided).
    pub route: Option<String>,
    /// The source it came from: `dir`, `api` or `mesh`.
    pub origin: String,
    /// `live`, `refused`, `loading` or `draining`.
    pub state: String,
    /// The live version.
    pub version: Option<VersionJson>,
    /// The version on trial, with its share of the requests.
    pub canary: Option<CanaryJson>,
    /// The versions kept for rollback, newest first.
    pub kept: Vec<KeptJson>,
    /// Why the app's last change was refused (cleared by a success).
    pub last_error: Option<LastErrorJson>,
    /// Requests in flight across all its versions.
    pub in_flight: usize,
}

/// A running version of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionJson {
    /// The SHA-256 digest of its `.wasm`, 64 hex digits.
    pub digest: String,
    /// The first 12 hex digits of the digest.
    pub id: String,
    /// When it went live (a canary: when its trial started), RFC 3339 UTC.
    pub deployed_at: String,
    /// Its requests in flight.
    pub in_flight: usize,
    /// Its responses so far, by status class.
    pub requests: RequestsJson,
}

/// Responses by status class: `{"1xx":0,"2xx":5,"3xx":0,"4xx":0,"5xx":1}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestsJson {
    /// 1xx responses.
    #[serde(rename = "1xx")]
    pub informational: u64,
    /// 2xx responses.
    #[serde(rename = "2xx")]
    pub success: u64,
    /// 3xx responses.
    #[serde(rename = "3xx")]
    pub redirection: u64,
    /// 4xx responses.
    #[serde(rename = "4xx")]
    pub client_error: u64,
    /// 5xx responses.
    #[serde(rename = "5xx")]
    pub server_error: u64,
}

/// A canary: its version's fields and `percent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryJson {
    /// The version on trial.
    #[serde(flatten)]
    pub version: VersionJson,
    /// Its share of the requests, 1–99.
    pub percent: u8,
    /// The header whose value keeps a client on one side, or `null`.
    pub sticky_header: Option<String>,
}

/// A version kept in the artifact store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptJson {
    /// The digest of its `.wasm`, 64 hex digits.
    pub digest: String,
    /// The first 12 hex digits of the digest.
    pub id: String,
    /// The digest of its manifest text, if it has one.
    pub manifest: Option<String>,
    /// When it was last deployed, RFC 3339 UTC.
    pub deployed_at: String,
    /// The source that deployed it.
    pub origin: String,
    /// Whether it is the live version.
    pub live: bool,
}

/// The last refusal of a change of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastErrorJson {
    /// The kind of refusal (`health_check`, `route_conflict`, ...).
    pub kind: String,
    /// What was wrong, naming the cause.
    pub message: String,
    /// When, RFC 3339 UTC.
    pub at: String,
}

/// `GET /v1/apps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppListJson {
    /// Every app meshd knows, by name.
    pub apps: Vec<AppJson>,
}

/// `GET /v1/apps/NAME/logs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsJson {
    /// The app.
    pub app: String,
    /// Its lines after the one asked for, oldest first.
    pub lines: Vec<LogLineJson>,
    /// Lines after the one asked for that were pushed out of the ring
    /// before they were read.
    pub missed: u64,
    /// The number of the last line: pass it as `after` to get only newer
    /// lines next time.
    pub last: u64,
}

/// One line of an app's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLineJson {
    /// Its number in the app's log since meshd started, from 1.
    pub seq: u64,
    /// When meshd received it, RFC 3339 UTC to the millisecond.
    pub at: String,
    /// `stdout`, `stderr` or `logging` (wasi:logging).
    pub stream: String,
    /// The wasi:logging level (`trace` ... `critical`), or `null`.
    pub level: Option<String>,
    /// The wasi:logging context, or `null`.
    pub context: Option<String>,
    /// The text, without its newline.
    pub text: String,
}

/// `DELETE /v1/apps/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedJson {
    /// The app removed.
    pub removed: String,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthJson {
    /// Always `ok`.
    pub status: String,
    /// The process id of the meshd that answered (it changes with each
    /// graceful restart).
    pub pid: u32,
}

/// `POST /v1/restart`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RestartJson {
    /// The process that was serving, now draining.
    pub old_pid: u32,
    /// The process that serves now.
    pub new_pid: u32,
}

/// `GET /readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyJson {
    /// Whether every app of the first load has been decided.
    pub ready: bool,
    /// Apps of the first load decided so far.
    pub loaded: usize,
    /// Apps the first load has to decide.
    pub total: usize,
}

/// Every error answer: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: ErrorJson,
}

/// What went wrong with a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorJson {
    /// A stable name for scripts: `unauthorized`, `not_found`,
    /// `bad_request`, `too_large`, or a refusal's kind (`health_check`, ...).
    pub kind: String,
    /// The explanation, for people.
    pub message: String,
    /// The app the request was about, for refusals of a change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

/// The optional body of `POST /v1/apps/NAME/rollback`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// A kept version (64 hex digits or the first 12); absent: the one
    /// before the live one.
    #[serde(default)]
    pub version: Option<String>,
}

/// The JSON body of `POST /v1/apps/NAME/canary` that tries a kept version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryBody {
    /// A kept version (64 hex digits or the first 12).
    pub version: String,
    /// Its share of the requests, 1–99 (or in the query string).
    #[serde(default)]
    pub percent: Option<u8>,
    /// A request header whose value keeps one client on one side.
    #[serde(default)]
    pub sticky_header: Option<String>,
}

impl AppJson {
    /// The JSON view of `status`.
    pub fn from_status(status: &AppStatus) -> AppJson {
        let live_digest = status.live.as_ref().map(|v| v.digest);
        AppJson {
            name: status.name.clone(),
            route: status.route.as_ref().map(|r| r.to_string()),
            origin: status.origin.as_str().to_owned(),
            state: status.state().as_str().to_owned(),
            version: status.live.as_ref().map(VersionJson::from_info),
            canary: status.canary.as_ref().map(|(info, percent)| CanaryJson {
                version: VersionJson::from_info(info),
                percent: *percent,
                sticky_header: status
                    .canary_sticky_header
                    .as_ref()
                    .map(|h| h.as_str().to_owned()),
            }),
            kept: kept_newest_first(&status.kept, live_digest),
            last_error: status
                .last_error
                .as_ref()
                .map(|(refused, at)| LastErrorJson {
                    kind: refused.kind().to_owned(),
                    message: refused.to_string(),
                    at: rfc3339(*at),
                }),
            in_flight: status.in_flight(),
        }
    }
}

impl VersionJson {
    /// The JSON view of a running version, with its counters now.
    pub fn from_info(info: &VersionInfo) -> VersionJson {
        VersionJson::new(
            &info.digest,
            info.deployed_at,
            info.version.in_flight().count(),
            info.version.stats().snapshot().responses,
        )
    }

    /// A version from its parts: `responses` are counts of status class
    /// `N`xx at index `N - 1`, as `meshd_tenant::StatsSnapshot` has them.
    pub fn new(
        digest: &Digest,
        deployed_at: SystemTime,
        in_flight: usize,
        responses: [u64; 5],
    ) -> VersionJson {
        let [informational, success, redirection, client_error, server_error] = responses;
        VersionJson {
            digest: digest.to_hex(),
            id: digest.short(),
            deployed_at: rfc3339(deployed_at),
            in_flight,
            requests: RequestsJson {
                informational,
                success,
                redirection,
                client_error,
                server_error,
            },
        }
    }
}

/// The store's list (oldest first) newest first, with the live version
/// marked. The same code may be kept twice with different manifests; only
/// the newest of those is the live one (a deploy or rollback records the
/// version it makes live as the newest).
fn kept_newest_first(kept: &[StoredVersion], live: Option<Digest>) -> Vec<KeptJson> {
    let mut live_marked = false;
    kept.iter()
        .rev()
        .map(|stored| {
            let live = !live_marked && Some(stored.wasm) == live;
            live_marked |= live;
            KeptJson {
                digest: stored.wasm.to_hex(),
                id: stored.wasm.short(),
                manifest: stored.manifest.map(|m| m.to_hex()),
                deployed_at: rfc3339(stored.deployed_at),
                origin: stored.origin.clone(),
                live,
            }
        })
        .collect()
}

/// RFC 3339 in UTC, to the second: `2026-11-29T12:00:00Z`.
fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshd_registry::{Origin, Refused};
    use serde_json::json;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn stored(code: &[u8], manifest: Option<&[u8]>, secs: u64) -> StoredVersion {
        StoredVersion {
            wasm: Digest::of(code),
            manifest: manifest.map(Digest::of),
            deployed_at: at(secs),
            origin: "api".to_owned(),
        }
    }

    #[test]
    fn a_version_has_digest_id_time_and_requests_by_class() {
        let digest = Digest::of(b"v1");
        let version = VersionJson::new(&digest, at(1_800_000_000), 3, [0, 5, 1, 2, 7]);
        assert_eq!(
            serde_json::to_value(&version).unwrap(),
            json!({
                "digest": digest.to_hex(),
                "id": &digest.to_hex()[..12],
                "deployed_at": "2027-01-15T08:00:00Z",
                "in_flight": 3,
                "requests": {"1xx": 0, "2xx": 5, "3xx": 1, "4xx": 2, "5xx": 7},
            })
        );
    }

    #[test]
    fn a_canary_is_its_version_with_a_percent() {
        let digest = Digest::of(b"v2");
        let canary = CanaryJson {
            version: VersionJson::new(&digest, at(0), 0, [0; 5]),
            percent: 10,
            sticky_header: Some("x-user".to_owned()),
        };
        let value = serde_json::to_value(&canary).unwrap();
        assert_eq!(value["percent"], 10);
        assert_eq!(value["sticky_header"], "x-user");
        assert_eq!(value["digest"], digest.to_hex());
        assert_eq!(value["deployed_at"], "1970-01-01T00:00:00Z");
        let back: CanaryJson = serde_json::from_value(value).unwrap();
        assert_eq!(back, canary);
    }

    #[test]
    fn kept_versions_are_newest_first_and_only_the_newest_live_match_is_live() {
        let kept = vec![
            stored(b"v1", None, 10),
            stored(b"v2", Some(b"route = '/a'"), 20),
            stored(b"v2", Some(b"route = '/b'"), 30),
            stored(b"v3", None, 40),
        ];
        let json = kept_newest_first(&kept, Some(Digest::of(b"v2")));
        let digests: Vec<_> = json.iter().map(|k| k.digest.clone()).collect();
        assert_eq!(
            digests,
            [b"v3" as &[u8], b"v2", b"v2", b"v1"].map(|c| Digest::of(c).to_hex())
        );
        let live: Vec<bool> = json.iter().map(|k| k.live).collect();
        assert_eq!(live, [false, true, false, false]);
        assert_eq!(json[1].deployed_at, "1970-01-01T00:00:30Z");
        assert_eq!(
            json[1].manifest.as_deref(),
            Some(Digest::of(b"route = '/b'").to_hex().as_str())
        );
        assert_eq!(json[0].manifest, None);
        assert_eq!(json[0].id, Digest::of(b"v3").short());
    }

    #[test]
    fn an_app_without_a_live_version_shows_its_refusal() {
        let mut status = AppStatus::new("hello", Origin::Api);
        status.route = Some(meshd_routes::Route::parse("/hello").unwrap());
        status.kept = vec![stored(b"v1", None, 10)].into();
        status.last_error = Some((Refused::HealthCheck("GET / answered 500".into()), at(60)));
        let value = serde_json::to_value(AppJson::from_status(&status)).unwrap();
        assert_eq!(
            value,
            json!({
                "name": "hello",
                "route": "/hello",
                "origin": "api",
                "state": "refused",
                "version": null,
                "canary": null,
                "kept": [{
                    "digest": Digest::of(b"v1").to_hex(),
                    "id": Digest::of(b"v1").short(),
                    "manifest": null,
                    "deployed_at": "1970-01-01T00:00:10Z",
                    "origin": "api",
                    "live": false,
                }],
                "last_error": {
                    "kind": "health_check",
                    "message": "GET / answered 500",
                    "at": "1970-01-01T00:01:00Z",
                },
                "in_flight": 0,
            })
        );
    }

    #[test]
    fn an_error_without_an_app_leaves_the_field_out() {
        let error = ErrorResponse {
            error: ErrorJson {
                kind: "not_found".into(),
                message: "no such path".into(),
                app: None,
            },
        };
        assert_eq!(
            serde_json::to_value(&error).unwrap(),
            json!({"error": {"kind": "not_found", "message": "no such path"}})
        );
    }
}
