//! What is mounted at one prefix: an app's live version and, during a
//! canary, the version trying a share of its traffic.

use http::HeaderMap;
use meshd_tenant::AppVersion;
use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
use std::sync::Arc;

/// One app's entry in the route table.
pub struct Mount {
    /// The version that serves the app.
    pub live: Arc<AppVersion>,
    /// A version that takes `percent` of the requests, if a canary runs.
    pub canary: Option<Canary>,
}

/// A canary: a second version of the app serving a share of its requests.
pub struct Canary {
    /// The version on trial.
    pub version: Arc<AppVersion>,
    /// Its share of the requests, 1–99.
    pub percent: u8,
    /// A request header whose value decides the side (the same value always
    /// lands on the same side); requests without it are assigned at random.
    pub sticky_header: Option<http::HeaderName>,
}

/// Which side of a canary split served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The live version (also: no canary running).
    Live,
    /// The canary version.
    Canary,
}

impl Side {
    /// `live` or `canary`, as logs and JSON name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Live => "live",
            Side::Canary => "canary",
        }
    }
}

impl Mount {
    /// A mount with only a live version.
    pub fn live(version: Arc<AppVersion>) -> Self {
        Mount {
            live: version,
            canary: None,
        }
    }

    /// The version that serves a request with these headers, and its side.
    pub fn pick(&self, headers: &HeaderMap) -> (&Arc<AppVersion>, Side) {
        let Some(canary) = &self.canary else {
            return (&self.live, Side::Live);
        };
        let roll = canary
            .sticky_header
            .as_ref()
            .and_then(|name| headers.get(name))
            .map(|value| sticky_roll(value.as_bytes()))
            .unwrap_or_else(|| fastrand::u8(0..100));
        if roll < canary.percent {
            (&canary.version, Side::Canary)
        } else {
            (&self.live, Side::Live)
        }
    }

    /// Every version mounted here: the live one, then the canary.
    pub fn versions(&self) -> impl Iterator<Item = &Arc<AppVersion>> {
        std::iter::once(&self.live).chain(self.canary.as_ref().map(|c| &c.version))
    }
}

/// A number in 0..100 fixed for `key`: the same key (a user id, a session
/// cookie) always falls on the same side of a given split, and a larger
/// split keeps everyone the smaller one had on the canary.
fn sticky_roll(key: &[u8]) -> u8 {
    // SipHash with fixed keys: stable within and across runs of meshd.
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
    (hash % 100) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sticky_key_always_rolls_the_same() {
        let first = sticky_roll(b"user-42");
        for _ in 0..10 {
            assert_eq!(sticky_roll(b"user-42"), first);
        }
        assert!(first < 100);
    }

    #[test]
    fn sticky_rolls_spread_over_the_range() {
        let below_half = (0..1000)
            .filter(|i| sticky_roll(format!("client-{i}").as_bytes()) < 50)
            .count();
        // 1,000 keys: a fair split is within 4 standard deviations of 500.
        assert!((437..=563).contains(&below_half), "{below_half}");
    }
}
