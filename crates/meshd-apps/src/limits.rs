//! `[limits]`: resource limits of one app, in a manifest or as daemon-wide
//! defaults in `meshd.toml`.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// Resource limits; every key is optional and falls back to the daemon's
/// default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory of one instance, all its linear memories together, e.g.
    /// `"64MiB"`.
    #[serde(default, deserialize_with = "size")]
    pub memory: Option<u64>,
    /// Wall-clock deadline of one request, e.g. `"5s"`.
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<Duration>,
    /// Most requests of the app in flight at once; more get 503.
    pub max_concurrency: Option<u32>,
    /// Largest request body, e.g. `"10MiB"`; larger ones get 413.
    #[serde(default, deserialize_with = "size")]
    pub max_body: Option<u64>,
}

impl Limits {
    /// meshd's built-in defaults, used where neither the manifest, the flags
    /// nor `meshd.toml` set a limit.
    pub const BUILT_IN: Limits = Limits {
        memory: Some(128 << 20),
        timeout: Some(Duration::from_secs(30)),
        max_concurrency: Some(100),
        max_body: Some(128 << 20),
    };

    /// These limits, with `defaults` filling the keys left unset.
    pub fn or(self, defaults: Limits) -> Limits {
        Limits {
            memory: self.memory.or(defaults.memory),
            timeout: self.timeout.or(defaults.timeout),
            max_concurrency: self.max_concurrency.or(defaults.max_concurrency),
            max_body: self.max_body.or(defaults.max_body),
        }
    }
}

/// A size: a string with a unit (`"64MiB"`, `"10 MB"`) or a number of bytes.
pub(crate) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bytes(n) => Ok(Some(n)),
        Raw::Text(text) => text
            .parse::<bytesize::ByteSize>()
            .map(|size| Some(size.as_u64()))
            .map_err(|e| serde::de::Error::custom(format!("invalid size {text:?}: {e}"))),
    }
}

/// A duration with a unit: `"500ms"`, `"5s"`, `"2m"`.
pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_falls_back_to_defaults() {
        let limits: Limits =
            toml::from_str("memory = \"64MiB\"\ntimeout = \"1500ms\"\nmax_body = 1024").unwrap();
        assert_eq!(limits.memory, Some(64 << 20));
        assert_eq!(limits.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(limits.max_body, Some(1024));
        let merged = limits.or(Limits {
            max_concurrency: Some(7),
            memory: Some(1),
            ..Limits::default()
        });
        assert_eq!(merged.max_concurrency, Some(7));
        assert_eq!(merged.memory, Some(64 << 20));
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let err = toml::from_str::<Limits>("memory = \"lots\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid size \"lots\""), "{err}");
        let err = toml::from_str::<Limits>("timeout = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid duration \"soon\""), "{err}");
    }
}
