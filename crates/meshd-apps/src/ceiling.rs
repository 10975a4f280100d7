//! `[ceiling]` in `meshd.toml`: the most an app may run with, whatever its
//! manifest asks. Where tenants write their own `NAME.toml`, this is what
//! keeps them from granting themselves more memory, time or concurrency, or
//! outbound access to the operator's internal network.

use crate::address::is_internal;
use crate::limits::{cores, cores_text, duration, size, weight, Limits};
use crate::manifest::Manifest;
use serde::Deserialize;
use std::time::Duration;

/// Upper bounds on every app's settings; every key is optional (no bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ceiling {
    /// Most memory of one instance, e.g. `"256MiB"`.
    #[serde(default, deserialize_with = "size")]
    pub memory: Option<u64>,
    /// Longest request timeout, e.g. `"60s"`.
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<Duration>,
    /// Highest `max_concurrency`.
    pub max_concurrency: Option<u32>,
    /// Largest `max_body`, e.g. `"64MiB"`.
    #[serde(default, deserialize_with = "size")]
    pub max_body: Option<u64>,
    /// Highest `cpu`, in cores (`2`, `0.5`).
    #[serde(default, deserialize_with = "cores")]
    pub cpu: Option<u32>,
    /// Highest `cpu_weight` (`1`: no app is favoured by the scheduler over
    /// the default); kept in thousandths.
    #[serde(default, deserialize_with = "weight")]
    pub cpu_weight: Option<u32>,
    /// Highest `reuse` (instance reuse weakens isolation between requests).
    pub reuse: Option<u32>,
    /// Whether an `[outbound] allow` rule may name an internal IP address
    /// (loopback, private, link-local such as 169.254.169.254, ...).
    /// Default `true`: the operator who writes manifests may reach a local
    /// service. Set `false` where tenants write their own manifests.
    #[serde(default = "yes")]
    pub internal_outbound: bool,
}

fn yes() -> bool {
    true
}

impl Default for Ceiling {
    /// No bounds.
    fn default() -> Self {
        Ceiling {
            memory: None,
            timeout: None,
            max_concurrency: None,
            max_body: None,
            cpu: None,
            cpu_weight: None,
            reuse: None,
            internal_outbound: true,
        }
    }
}

impl Ceiling {
    /// Checks limits an app would run with; the error names the first key
    /// over its bound, with both values.
    pub fn check_limits(&self, limits: &Limits) -> Result<(), String> {
        let (value, bound) = (limits.memory, self.memory);
        above("limits.memory", value, bound, "memory", size_text)?;
        let (value, bound) = (limits.timeout, self.timeout);
        above("limits.timeout", value, bound, "timeout", duration_text)?;
        let (value, bound) = (limits.max_concurrency, self.max_concurrency);
        above(
            "limits.max_concurrency",
            value,
            bound,
            "max_concurrency",
            number_text,
        )?;
        let (value, bound) = (limits.max_body, self.max_body);
        above("limits.max_body", value, bound, "max_body", size_text)?;
        let (value, bound) = (limits.cpu, self.cpu);
        above("limits.cpu", value, bound, "cpu", cores_text)?;
        let (value, bound) = (limits.cpu_weight, self.cpu_weight);
        above("limits.cpu_weight", value, bound, "cpu_weight", cores_text)
    }

    /// Checks an app: its limits (`limits`, the manifest's merged over the
    /// daemon's defaults), its `reuse`, and its outbound rules.
    pub fn check(&self, manifest: &Manifest, limits: &Limits) -> Result<(), String> {
        self.check_limits(limits)?;
        above("reuse", manifest.reuse, self.reuse, "reuse", number_text)?;
        if !self.internal_outbound {
            for rule in manifest.outbound.rules() {
                if rule.address().is_some_and(is_internal) {
                    return Err(format!(
                        "key `outbound.allow`: {rule} names an internal address, \
                         which the operator forbids ([ceiling] internal_outbound = false in meshd.toml)"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn size_text(bytes: u64) -> String {
    bytesize::ByteSize(bytes).to_string()
}

fn duration_text(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

fn number_text(n: u32) -> String {
    n.to_string()
}

fn above<T: PartialOrd + Copy>(
    key: &str,
    value: Option<T>,
    bound: Option<T>,
    ceiling_key: &str,
    show: fn(T) -> String,
) -> Result<(), String> {
    match (value, bound) {
        (Some(value), Some(bound)) if value > bound => Err(format!(
            "key `{key}`: {} is above the operator's ceiling of {} ([ceiling] {ceiling_key} in meshd.toml)",
            show(value),
            show(bound),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn ceiling(text: &str) -> Ceiling {
        toml::from_str(text).expect("a valid ceiling")
    }

    fn manifest(text: &str) -> Manifest {
        Manifest::parse(Path::new("app.toml"), text).expect("a valid manifest")
    }

    fn limits_of(manifest: &Manifest) -> Limits {
        manifest.limits.or(Limits::BUILT_IN)
    }

    #[test]
    fn no_ceiling_allows_anything() {
        let app = manifest(
            "reuse = 100000\n[limits]\nmemory = \"4GiB\"\n[outbound]\nallow = [\"http://169.254.169.254\"]\n",
        );
        assert_eq!(Ceiling::default().check(&app, &limits_of(&app)), Ok(()));
    }

    #[test]
    fn each_limit_above_its_bound_is_refused_with_both_values() {
        let bound = ceiling(
            "memory = \"64MiB\"\ntimeout = \"10s\"\nmax_concurrency = 10\nmax_body = \"1MiB\"\ncpu = 0.5\nreuse = 10\ncpu_weight = 2\n",
        );
        let cases = [
            ("[limits]\nmemory = \"65MiB\"", "limits.memory"),
            ("[limits]\ntimeout = \"11s\"", "limits.timeout"),
            ("[limits]\nmax_concurrency = 11", "limits.max_concurrency"),
            ("[limits]\nmax_body = \"2MiB\"", "limits.max_body"),
            ("[limits]\ncpu = 0.6", "limits.cpu"),
            ("[limits]\ncpu_weight = 2.5", "limits.cpu_weight"),
            ("reuse = 11", "reuse"),
        ];
        let within = manifest(
            "reuse = 10\n[limits]\nmemory = \"64MiB\"\ntimeout = \"10s\"\nmax_concurrency = 10\nmax_body = \"1MiB\"\ncpu = 0.5\n",
        );
        assert_eq!(bound.check(&within, &limits_of(&within)), Ok(()));
        for (text, key) in cases {
            // Start from the values within bounds, then raise one.
            let mut app = within.clone();
            let raised = manifest(text);
            app.limits = raised.limits.or(app.limits);
            app.reuse = raised.reuse.or(app.reuse);
            let error = bound.check(&app, &limits_of(&app)).expect_err(key);
            assert!(error.contains(&format!("key `{key}`")), "{error}");
            assert!(error.contains("above the operator's ceiling"), "{error}");
        }
        let error = bound
            .check_limits(&Limits {
                memory: Some(128 << 20),
                ..Limits::default()
            })
            .expect_err("128 MiB is above 64 MiB");
        assert!(
            error.contains("128.0 MiB") && error.contains("64.0 MiB"),
            "{error}"
        );
    }

    #[test]
    fn internal_outbound_can_be_forbidden() {
        let bound = ceiling("internal_outbound = false");
        for rule in [
            "http://169.254.169.254",
            "http://127.0.0.1:9000",
            "https://[::1]:8443",
            "http://10.0.0.5",
        ] {
            let app = manifest(&format!("[outbound]\nallow = [\"{rule}\"]\n"));
            let error = bound.check(&app, &limits_of(&app)).expect_err(rule);
            assert!(error.contains("internal address"), "{error}");
        }
        // Names are checked when they resolve, at request time; public
        // addresses are fine.
        let app = manifest(
            "[outbound]\nallow = [\"https://api.example.com\", \"http://93.184.216.34\"]\n",
        );
        assert_eq!(bound.check(&app, &limits_of(&app)), Ok(()));
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<Ceiling>("memroy = \"1MiB\"").is_err());
    }
}
