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
    /// Processor time the app's guests may use, in cores averaged over time
    /// (`0.5`, `2`); kept in thousandths of a core. Guests over it wait
    /// for their share.
    #[serde(default, deserialize_with = "cores")]
    pub cpu: Option<u32>,
    /// How much the scheduler favours the app's requests over others', a
    /// number from 0.01 to 100 (default 1); kept in thousandths. A request
    /// stays short (first in line) for `cpu_weight` times as long, and its
    /// long requests' time costs the floor they share `1 / cpu_weight` as
    /// much.
    #[serde(default, deserialize_with = "weight")]
    pub cpu_weight: Option<u32>,
}

impl Limits {
    /// meshd's built-in defaults, used where neither the manifest, the flags
    /// nor `meshd.toml` set a limit.
    pub const BUILT_IN: Limits = Limits {
        memory: Some(128 << 20),
        timeout: Some(Duration::from_secs(30)),
        max_concurrency: Some(100),
        max_body: Some(128 << 20),
        // No cap unless the operator sets one: the scheduler keeps short
        // requests first (see docs/operations.md).
        cpu: None,
        cpu_weight: Some(DEFAULT_CPU_WEIGHT),
    };

    /// These limits, with `defaults` filling the keys left unset.
    pub fn or(self, defaults: Limits) -> Limits {
        Limits {
            memory: self.memory.or(defaults.memory),
            timeout: self.timeout.or(defaults.timeout),
            max_concurrency: self.max_concurrency.or(defaults.max_concurrency),
            max_body: self.max_body.or(defaults.max_body),
            cpu: self.cpu.or(defaults.cpu),
            cpu_weight: self.cpu_weight.or(defaults.cpu_weight),
        }
    }
}

/// Parses a number of cores (`"0.5"`, `"2"`) into thousandths of a core: at
/// least 0.001, at most 1,000,000.
pub fn parse_cores(text: &str) -> Result<u32, String> {
    let cores: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("invalid cpu {text:?}: expected a number of cores, e.g. 0.5 or 2"))?;
    cores_to_millis(cores)
}

fn cores_to_millis(cores: f64) -> Result<u32, String> {
    let millis = (cores * 1000.0).round();
    if !(1.0..=1e9).contains(&millis) {
        return Err(format!(
            "invalid cpu {cores}: must be between 0.001 and 1000000 cores"
        ));
    }
    // In range, so the conversion is exact.
    Ok(millis as u32)
}

/// Thousandths of a core as the number of cores a user writes (`0.5`).
pub fn cores_text(millis: u32) -> String {
    format!("{}", f64::from(millis) / 1000.0)
}

/// The `cpu_weight` of an app that sets none: 1, in thousandths.
pub const DEFAULT_CPU_WEIGHT: u32 = 1000;

/// A `cpu_weight` (`0.5`, `2`) in thousandths: from 0.01 to 100.
pub(crate) fn weight<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let weight = f64::deserialize(d)?;
    let millis = (weight * 1000.0).round();
    if !(10.0..=100_000.0).contains(&millis) {
        return Err(serde::de::Error::custom(format!(
            "invalid cpu_weight {weight}: must be between 0.01 and 100"
        )));
    }
    // In range, so the conversion is exact.
    Ok(Some(millis as u32))
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

/// A number of cores, integer or not (`cpu = 2`, `cpu = 0.25`), kept in
/// thousandths of a core.
pub(crate) fn cores<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let cores = f64::deserialize(d)?;
    cores_to_millis(cores)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// The longest duration meshd accepts anywhere (manifests, `meshd.toml`,
/// flags): one day. A request timeout, drain or settle time longer than that
/// is a mistake, and a bound keeps every `Instant + Duration` meshd computes
/// far from overflow (`timeout = "300000000000y"` once panicked on the
/// request path).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Parses a duration with a unit (`"500ms"`, `"5s"`, `"2m"`) of at most
/// [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))?;
    if duration > MAX_DURATION {
        return Err(format!(
            "invalid duration {text:?}: longer than the maximum of {}",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(duration)
}

/// A duration with a unit: `"500ms"`, `"5s"`, `"2m"`; at most
/// [`MAX_DURATION`].
pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
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
        for bad in ["cpu = 0", "cpu = -1", "cpu = 0.0001", "cpu = \"half\""] {
            assert!(toml::from_str::<Limits>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_above_a_day_are_refused() {
        let err = toml::from_str::<Limits>("timeout = \"300000000000y\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("longer than the maximum of 1day"), "{err}");
        assert!(err.contains("timeout"), "the error shows the key: {err}");
        let limits: Limits = toml::from_str("timeout = \"24h\"").unwrap();
        assert_eq!(limits.timeout, Some(MAX_DURATION));
        assert!(parse_duration("25h").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn cpu_is_kept_in_thousandths_of_a_core() {
        let limits: Limits = toml::from_str("cpu = 0.25").unwrap();
        assert_eq!(limits.cpu, Some(250));
        let limits: Limits = toml::from_str("cpu = 2").unwrap();
        assert_eq!(limits.cpu, Some(2000));
        assert_eq!(parse_cores("1.5"), Ok(1500));
        assert!(parse_cores("0").is_err());
        assert!(parse_cores("lots").is_err());
        assert_eq!(cores_text(250), "0.25");
        assert_eq!(cores_text(2000), "2");
    }

    #[test]
    fn cpu_weight_is_kept_in_thousandths_and_bounded() {
        let limits: Limits = toml::from_str("cpu_weight = 2").unwrap();
        assert_eq!(limits.cpu_weight, Some(2000));
        let limits: Limits = toml::from_str("cpu_weight = 0.5").unwrap();
        assert_eq!(limits.cpu_weight, Some(500));
        assert_eq!(
            Limits::default().or(Limits::BUILT_IN).cpu_weight,
            Some(DEFAULT_CPU_WEIGHT)
        );
        for bad in [
            "cpu_weight = 0",
            "cpu_weight = -1",
            "cpu_weight = 101",
            "cpu_weight = \"high\"",
        ] {
            let err = toml::from_str::<Limits>(bad).unwrap_err().to_string();
            assert!(err.contains("cpu_weight"), "{bad}: {err}");
        }
    }
}
