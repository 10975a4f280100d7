//! The route table of meshd: which app serves a request path.
//!
//! Every app is mounted at a path prefix (`/hello` by default for
//! `hello.wasm`). A request goes to the app with the **longest** prefix that
//! matches the request path on a segment boundary: `/hello` matches `/hello`,
//! `/hello/` and `/hello/x`, but never `/helloworld`. The prefix `/` is a
//! catch-all that every longer prefix beats.
//!
//! Lookup cost depends on the depth of the request path, not on the number of
//! mounted apps: the table is a hash map of prefixes, and a lookup probes the
//! path's own prefixes from longest to shortest.
//!
//! Before routing, [`check_path`] refuses request paths that a proxy in front
//! may read differently (dot segments, `//`, encoded separators): see
//! [`path_check`].
//!
//! This crate is pure data: no I/O, no async, no wasmtime.
#![deny(missing_docs)]

pub mod path_check;

pub use path_check::{check_path, AmbiguousPath};

use std::collections::HashMap;
use std::fmt;

/// A validated mount prefix such as `/hello` or `/api/v1`, or `/` for the
/// catch-all.
///
/// Invariants: starts with `/`; has no trailing `/` (except the root itself);
/// has no empty, `.` or `..` segments; contains no `?` or `#`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix(String);

/// Why a string is not a valid [`Prefix`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// The route does not start with `/`.
    #[error("route {0:?} must start with '/'")]
    NotAbsolute(String),
    /// The route has an empty, `.` or `..` segment.
    #[error("route {0:?} has an empty, '.' or '..' segment")]
    BadSegment(String),
    /// The route has a character that cannot appear in a path prefix.
    #[error("route {0:?} may not contain '?', '#', whitespace or control characters")]
    BadCharacter(String),
}

impl Prefix {
    /// The catch-all prefix `/`.
    pub fn root() -> Self {
        Prefix("/".to_owned())
    }

    /// Parses a route from a manifest. A single trailing slash is accepted and
    /// dropped (`/api/` is the same mount as `/api`).
    pub fn parse(route: &str) -> Result<Self, PrefixError> {
        if !route.starts_with('/') {
            return Err(PrefixError::NotAbsolute(route.to_owned()));
        }
        if route
            .chars()
            .any(|c| c == '?' || c == '#' || c.is_whitespace() || c.is_control())
        {
            return Err(PrefixError::BadCharacter(route.to_owned()));
        }
        if route == "/" {
            return Ok(Self::root());
        }
        let trimmed = route.strip_suffix('/').unwrap_or(route);
        let bad_segment = trimmed[1..]
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..");
        if bad_segment {
            return Err(PrefixError::BadSegment(route.to_owned()));
        }
        Ok(Prefix(trimmed.to_owned()))
    }

    /// The prefix as a string, e.g. `/hello`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the catch-all `/`.
    pub fn is_root(&self) -> bool {
        self.0 == "/"
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request path matched to a mount.
#[derive(Debug)]
pub struct RouteMatch<'t, T> {
    /// The value mounted at the matching prefix.
    pub value: &'t T,
    /// The prefix that matched.
    pub prefix: &'t Prefix,
    /// The rest of the path as the app sees it: always starts with `/`.
    pub app_path: &'t str,
}

/// Two values claim the same prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route {prefix} is already taken")]
pub struct RouteConflict {
    /// The contested prefix.
    pub prefix: Prefix,
}

/// A table of mounts, generic over what is mounted.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    mounts: HashMap<Prefix, T>,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        Self {
            mounts: HashMap::new(),
        }
    }
}

impl<T> RouteTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Mounts `value` at `prefix`, or reports that the prefix is taken (the
    /// table is then unchanged).
    pub fn insert(&mut self, prefix: Prefix, value: T) -> Result<(), RouteConflict> {
        use std::collections::hash_map::Entry;
        match self.mounts.entry(prefix) {
            Entry::Occupied(e) => Err(RouteConflict {
                prefix: e.key().clone(),
            }),
            Entry::Vacant(e) => {
                e.insert(value);
                Ok(())
            }
        }
    }

    /// Removes the mount at `prefix`, returning what was mounted there.
    pub fn remove(&mut self, prefix: &Prefix) -> Option<T> {
        self.mounts.remove(prefix)
    }

    /// The value mounted exactly at `prefix`.
    pub fn get(&self, prefix: &Prefix) -> Option<&T> {
        self.mounts.get(prefix)
    }

    /// Number of mounts.
    pub fn len(&self) -> usize {
        self.mounts.len()
    }

    /// Whether nothing is mounted.
    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty()
    }

    /// Every mount, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Prefix, &T)> {
        self.mounts.iter()
    }

    /// Finds the mount with the longest prefix matching `path` on a segment
    /// boundary. `path` is the path part of a request URI (no query).
    pub fn route<'t>(&'t self, path: &'t str) -> Option<RouteMatch<'t, T>> {
        if !path.starts_with('/') {
            return None;
        }
        // Candidate prefixes are the path itself (without a trailing slash)
        // and then the path cut before each '/', longest first.
        let mut end = path.len();
        if end > 1 && path.ends_with('/') {
            end -= 1;
        }
        loop {
            if end == 0 {
                break;
            }
            let candidate = &path[..end];
            if let Some((prefix, value)) = self.mounts.get_key_value(candidate) {
                let rest = &path[end..];
                let app_path = if rest.is_empty() { "/" } else { rest };
                return Some(RouteMatch {
                    value,
                    prefix,
                    app_path,
                });
            }
            match candidate.rfind('/') {
                Some(cut) => end = cut,
                None => break,
            }
        }
        self.mounts
            .get_key_value("/")
            .map(|(prefix, value)| RouteMatch {
                value,
                prefix,
                app_path: path,
            })
    }
}

impl std::borrow::Borrow<str> for Prefix {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[&str]) -> RouteTable<String> {
        let mut t = RouteTable::new();
        for r in routes {
            t.insert(Prefix::parse(r).unwrap(), r.to_string()).unwrap();
        }
        t
    }

    fn route(t: &RouteTable<String>, path: &str) -> Option<(String, String)> {
        t.route(path)
            .map(|m| (m.value.clone(), m.app_path.to_owned()))
    }

    fn some(app: &str, path: &str) -> Option<(String, String)> {
        Some((app.to_owned(), path.to_owned()))
    }

    #[test]
    fn prefix_matches_on_segment_boundaries_only() {
        let t = table(&["/hello"]);
        assert_eq!(route(&t, "/hello"), some("/hello", "/"));
        assert_eq!(route(&t, "/hello/"), some("/hello", "/"));
        assert_eq!(route(&t, "/hello/x"), some("/hello", "/x"));
        assert_eq!(route(&t, "/hello/x/y/"), some("/hello", "/x/y/"));
        assert_eq!(route(&t, "/helloworld"), None);
        assert_eq!(route(&t, "/hell"), None);
        assert_eq!(route(&t, "/"), None);
    }

    #[test]
    fn longest_prefix_wins_regardless_of_insertion_order() {
        for order in [["/a", "/a/b"], ["/a/b", "/a"]] {
            let t = table(&order);
            assert_eq!(route(&t, "/a/b/c"), some("/a/b", "/c"));
            assert_eq!(route(&t, "/a/b"), some("/a/b", "/"));
            assert_eq!(route(&t, "/a/bc"), some("/a", "/bc"));
            assert_eq!(route(&t, "/a"), some("/a", "/"));
        }
    }

    #[test]
    fn root_is_a_catch_all_that_any_longer_prefix_beats() {
        let t = table(&["/", "/hello"]);
        assert_eq!(route(&t, "/hello/x"), some("/hello", "/x"));
        assert_eq!(route(&t, "/helloworld"), some("/", "/helloworld"));
        assert_eq!(route(&t, "/"), some("/", "/"));
        assert_eq!(route(&t, "/other/deep"), some("/", "/other/deep"));
    }

    #[test]
    fn conflicting_routes_are_refused_and_the_first_stays() {
        let mut t = table(&["/hello"]);
        let err = t
            .insert(Prefix::parse("/hello/").unwrap(), "second".into())
            .unwrap_err();
        assert_eq!(err.prefix.as_str(), "/hello");
        assert_eq!(route(&t, "/hello"), some("/hello", "/"));
    }

    #[test]
    fn prefix_parsing_normalises_and_rejects_nonsense() {
        assert_eq!(Prefix::parse("/api/").unwrap().as_str(), "/api");
        assert_eq!(Prefix::parse("/").unwrap().as_str(), "/");
        assert!(Prefix::parse("/").unwrap().is_root());
        assert!(matches!(
            Prefix::parse("api"),
            Err(PrefixError::NotAbsolute(_))
        ));
        assert!(matches!(
            Prefix::parse("/a//b"),
            Err(PrefixError::BadSegment(_))
        ));
        assert!(matches!(
            Prefix::parse("/a/../b"),
            Err(PrefixError::BadSegment(_))
        ));
        assert!(matches!(
            Prefix::parse("/a?b"),
            Err(PrefixError::BadCharacter(_))
        ));
        assert!(matches!(
            Prefix::parse("/a b"),
            Err(PrefixError::BadCharacter(_))
        ));
    }

    #[test]
    fn paths_that_are_not_absolute_match_nothing() {
        let t = table(&["/"]);
        assert_eq!(route(&t, ""), None);
        assert_eq!(route(&t, "*"), None);
    }

    #[test]
    fn lookup_is_independent_of_table_size() {
        // Not a timing test: checks that the lookup probes only the path's own
        // prefixes, so ten thousand unrelated mounts change nothing.
        let mut t = table(&["/target"]);
        for i in 0..10_000 {
            t.insert(Prefix::parse(&format!("/app{i}")).unwrap(), i.to_string())
                .unwrap();
        }
        assert_eq!(route(&t, "/target/x"), some("/target", "/x"));
        assert_eq!(route(&t, "/app42/y"), some("42", "/y"));
        assert_eq!(route(&t, "/app4200000"), None);
    }
}
