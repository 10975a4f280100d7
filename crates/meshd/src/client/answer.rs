//! The admin API's answers as the client reads them (docs/admin-api.md).
//! Lenient: fields this client does not know are ignored, and missing or
//! null ones take empty defaults, so an older or newer meshd still prints.

use serde::{Deserialize, Deserializer};

/// A null read as the type's default (e.g. `"route": null` as "").
fn nullable<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `GET /v1/apps`.
#[derive(Debug, Deserialize)]
pub struct AppList {
    pub apps: Vec<App>,
}

/// One app (AppJson).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct App {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub route: String,
    #[serde(deserialize_with = "nullable")]
    pub origin: String,
    #[serde(deserialize_with = "nullable")]
    pub state: String,
    /// The live version.
    pub version: Option<Version>,
    pub canary: Option<Canary>,
    /// Newest first.
    #[serde(deserialize_with = "nullable")]
    pub kept: Vec<Kept>,
    pub last_error: Option<LastError>,
    #[serde(deserialize_with = "nullable")]
    pub in_flight: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Version {
    #[serde(deserialize_with = "nullable")]
    pub digest: String,
    #[serde(deserialize_with = "nullable")]
    pub id: String,
    pub deployed_at: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub in_flight: u64,
    #[serde(deserialize_with = "nullable")]
    pub requests: Requests,
}

impl Version {
    /// The short id, from the digest if the server sent none.
    pub fn short_id(&self) -> &str {
        short_id(&self.id, &self.digest)
    }
}

/// Requests answered, by status class.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(default)]
pub struct Requests {
    #[serde(rename = "1xx")]
    pub c1xx: u64,
    #[serde(rename = "2xx")]
    pub c2xx: u64,
    #[serde(rename = "3xx")]
    pub c3xx: u64,
    #[serde(rename = "4xx")]
    pub c4xx: u64,
    #[serde(rename = "5xx")]
    pub c5xx: u64,
}

impl Requests {
    pub fn total(&self) -> u64 {
        self.c1xx + self.c2xx + self.c3xx + self.c4xx + self.c5xx
    }

    pub fn plus(self, other: Requests) -> Requests {
        Requests {
            c1xx: self.c1xx + other.c1xx,
            c2xx: self.c2xx + other.c2xx,
            c3xx: self.c3xx + other.c3xx,
            c4xx: self.c4xx + other.c4xx,
            c5xx: self.c5xx + other.c5xx,
        }
    }
}

/// The canary: a version and its share of the requests.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Canary {
    #[serde(flatten)]
    pub version: Version,
    #[serde(deserialize_with = "nullable")]
    pub percent: u8,
    pub sticky_header: Option<String>,
}

/// A version in the artifact store.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Kept {
    #[serde(deserialize_with = "nullable")]
    pub digest: String,
    #[serde(deserialize_with = "nullable")]
    pub id: String,
    /// The manifest's digest, if the version had one.
    pub manifest: Option<String>,
    pub deployed_at: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub origin: String,
    #[serde(deserialize_with = "nullable")]
    pub live: bool,
}

impl Kept {
    pub fn short_id(&self) -> &str {
        short_id(&self.id, &self.digest)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LastError {
    #[serde(deserialize_with = "nullable")]
    pub kind: String,
    #[serde(deserialize_with = "nullable")]
    pub message: String,
    pub at: Option<String>,
}

/// `DELETE /v1/apps/NAME`.
#[derive(Debug, Deserialize)]
pub struct Removed {
    pub removed: String,
}

/// `POST /v1/restart`.
#[derive(Debug, Deserialize)]
pub struct Restarted {
    pub old_pid: u32,
    pub new_pid: u32,
}

fn short_id<'a>(id: &'a str, digest: &'a str) -> &'a str {
    if !id.is_empty() {
        return id;
    }
    digest.get(..12).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_contracts_app_json() {
        let json = r#"{
          "name": "hello", "route": "/hello", "origin": "api", "state": "live",
          "version": {"digest": "3f2a1b9c0d1e4455667788990011223344556677889900aabbccddeeff001122",
                      "id": "3f2a1b9c0d1e", "deployed_at": "2026-11-29T12:00:00Z", "in_flight": 2,
                      "requests": {"1xx":0,"2xx":5,"3xx":0,"4xx":1,"5xx":1}},
          "canary": {"digest": "9a8b7c6d5e4f", "id": "9a8b7c6d5e4f", "deployed_at": "2026-11-29T12:05:00Z",
                     "in_flight": 0, "requests": {"2xx": 3}, "percent": 10},
          "kept": [{"digest": "9a8b", "id": "9a8b7c6d5e4f", "manifest": null,
                    "deployed_at": "2026-11-29T12:05:00Z", "origin": "api", "live": false}],
          "last_error": {"kind": "health_check", "message": "GET /health answered 500", "at": "2026-11-29T12:01:00Z"},
          "in_flight": 2, "something_new": true
        }"#;
        let app: App = serde_json::from_str(json).unwrap();
        assert_eq!(app.name, "hello");
        let live = app.version.as_ref().unwrap();
        assert_eq!(live.short_id(), "3f2a1b9c0d1e");
        assert_eq!(live.requests.c2xx, 5);
        assert_eq!(live.requests.total(), 7);
        let canary = app.canary.as_ref().unwrap();
        assert_eq!(canary.percent, 10);
        assert_eq!(canary.version.requests.c2xx, 3);
        assert_eq!(app.kept.len(), 1);
        assert!(app.kept[0].manifest.is_none());
        assert_eq!(app.last_error.unwrap().kind, "health_check");
    }

    #[test]
    fn nulls_read_as_empty() {
        let app: App =
            serde_json::from_str(r#"{"name":"a","route":null,"kept":null,"in_flight":null}"#)
                .unwrap();
        assert_eq!(app.route, "");
        assert!(app.kept.is_empty());
        assert_eq!(app.in_flight, 0);
    }

    #[test]
    fn the_short_id_falls_back_to_the_digest() {
        let version = Version {
            digest: "0123456789abcdef".to_owned(),
            ..Version::default()
        };
        assert_eq!(version.short_id(), "0123456789ab");
    }
}
