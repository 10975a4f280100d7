//! The route table of meshd: which app serves a request, by host and path.
//!
//! Every app is mounted at a [`Route`]: a path prefix (`/hello` by default
//! for `hello.wasm`), optionally on a host (`shop.example.com/`) or on every
//! host one label below a domain (`*.example.com/api`, see [`host`] for what
//! a wildcard covers). A request goes to the most specific host that has a
//! matching route (the exact host, then a wildcard, then routes on any host)
//! and, within it, to the **longest** prefix that matches the request path
//! on a segment boundary: `/hello` matches `/hello`, `/hello/` and
//! `/hello/x`, but never `/helloworld`. The prefix `/` is a catch-all that
//! every longer prefix beats. A request without a host matches routes on any
//! host only.
//!
//! Lookup cost depends on the depth of the request path, not on the number of
//! mounted apps or hosts: hosts and prefixes are hash-map keys, and a lookup
//! probes at most three hosts, each with the path's own prefixes from longest
//! to shortest.
//!
//! Before routing, [`check_path`] refuses request paths that a proxy in front
//! may read differently (dot segments, `//`, encoded separators): see
//! [`path_check`]; [`RequestHost::parse`] refuses hosts no route could name.
//!
//! This crate is pure data: no I/O, no async, no wasmtime.
#![deny(missing_docs)]

pub mod host;
pub mod path_check;
mod route;

pub use host::{BadHost, HostError, RequestHost, RouteHost};
pub use path_check::{check_path, AmbiguousPath};
pub use route::{Route, RouteError};

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

/// A request matched to a mount.
#[derive(Debug)]
pub struct RouteMatch<'t, T> {
    /// The value mounted at the matching route.
    pub value: &'t T,
    /// The route that matched.
    pub route: &'t Route,
    /// The path prefix that matched (the route's path).
    pub prefix: &'t Prefix,
    /// The rest of the path as the app sees it: always starts with `/`.
    pub app_path: &'t str,
}

/// Two values claim the same route (host and prefix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route {route} is already taken")]
pub struct RouteConflict {
    /// The contested route.
    pub route: Route,
}

/// A table of mounts, generic over what is mounted.
///
/// Three maps of path tables, one per kind of host: exact hosts by name,
/// wildcards by the domain they cover, and one table for routes on any host.
/// A lookup makes at most three host probes, each followed by the path's
/// own prefixes: its cost does not depend on how many hosts or routes the
/// table holds.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    exact: HashMap<String, PathTable<T>>,
    wildcard: HashMap<String, PathTable<T>>,
    any_host: PathTable<T>,
    len: usize,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        Self {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            any_host: PathTable::default(),
            len: 0,
        }
    }
}

impl<T> RouteTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Mounts `value` at `route`, or reports that the route (same host, same
    /// prefix) is taken (the table is then unchanged).
    pub fn insert(&mut self, route: Route, value: T) -> Result<(), RouteConflict> {
        use std::collections::hash_map::Entry;
        let paths = match route.host() {
            None => &mut self.any_host,
            Some(RouteHost::Exact(host)) => self.exact.entry(host.clone()).or_default(),
            Some(RouteHost::Wildcard(domain)) => self.wildcard.entry(domain.clone()).or_default(),
        };
        match paths.mounts.entry(route.path().clone()) {
            Entry::Occupied(e) => Err(RouteConflict {
                route: e.get().0.clone(),
            }),
            Entry::Vacant(e) => {
                e.insert((route, value));
                self.len += 1;
                Ok(())
            }
        }
    }

    /// Removes the mount at `route`, returning what was mounted there.
    pub fn remove(&mut self, route: &Route) -> Option<T> {
        let (_, value) = match route.host() {
            None => self.any_host.mounts.remove(route.path())?,
            Some(host) => {
                let (hosts, key) = match host {
                    RouteHost::Exact(host) => (&mut self.exact, host),
                    RouteHost::Wildcard(domain) => (&mut self.wildcard, domain),
                };
                let paths = hosts.get_mut(key.as_str())?;
                let removed = paths.mounts.remove(route.path())?;
                // A host without routes would linger in the map forever.
                if paths.mounts.is_empty() {
                    hosts.remove(key.as_str());
                }
                removed
            }
        };
        self.len -= 1;
        Some(value)
    }

    /// The value mounted exactly at `route`.
    pub fn get(&self, route: &Route) -> Option<&T> {
        self.paths_of(route.host())?
            .mounts
            .get(route.path())
            .map(|(_, value)| value)
    }

    /// Number of mounts.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is mounted.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every mount, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Route, &T)> {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .chain(std::iter::once(&self.any_host))
            .flat_map(|paths| paths.mounts.values())
            .map(|(route, value)| (route, value))
    }

    /// Finds the mount for a request to `host` (none: the request named no
    /// host) and `path` (the path of its URI, no query).
    ///
    /// The most specific host that has a route matching the path wins: the
    /// exact host, then the wildcard covering it, then routes on any host.
    /// Within each, the longest prefix matching on a segment boundary wins.
    /// A path that no route of the exact host matches falls through to the
    /// wildcard's routes and then to the host-less ones, so a host route
    /// claims only its own prefix (`shop.example.com/` claims the whole
    /// host).
    pub fn route<'t>(
        &'t self,
        host: Option<&RequestHost<'_>>,
        path: &'t str,
    ) -> Option<RouteMatch<'t, T>> {
        if let Some(host) = host {
            let exact = self.exact.get(host.as_str());
            if let Some(found) = exact.and_then(|paths| paths.route(path)) {
                return Some(found);
            }
            // (Most tables have no wildcard: then no need to cut the host.)
            if !self.wildcard.is_empty() {
                let wildcard = host.wildcard_domain().and_then(|d| self.wildcard.get(d));
                if let Some(found) = wildcard.and_then(|paths| paths.route(path)) {
                    return Some(found);
                }
            }
        }
        self.any_host.route(path)
    }

    fn paths_of(&self, host: Option<&RouteHost>) -> Option<&PathTable<T>> {
        match host {
            None => Some(&self.any_host),
            Some(RouteHost::Exact(host)) => self.exact.get(host.as_str()),
            Some(RouteHost::Wildcard(domain)) => self.wildcard.get(domain.as_str()),
        }
    }
}

/// The routes of one host (or of any host), by path prefix. Each keeps its
/// full route for [`RouteMatch::route`] and [`RouteTable::iter`].
#[derive(Debug, Clone)]
struct PathTable<T> {
    mounts: HashMap<Prefix, (Route, T)>,
}

impl<T> Default for PathTable<T> {
    fn default() -> Self {
        Self {
            mounts: HashMap::new(),
        }
    }
}

impl<T> PathTable<T> {
    /// The mount with the longest prefix matching `path` on a segment
    /// boundary: probes the path itself (without a trailing slash), then the
    /// path cut before each '/', longest first, then `/`.
    fn route<'t>(&'t self, path: &'t str) -> Option<RouteMatch<'t, T>> {
        if !path.starts_with('/') {
            return None;
        }
        let mut end = path.len();
        if end > 1 && path.ends_with('/') {
            end -= 1;
        }
        loop {
            if end == 0 {
                break;
            }
            let candidate = &path[..end];
            if let Some((prefix, (route, value))) = self.mounts.get_key_value(candidate) {
                let rest = &path[end..];
                let app_path = if rest.is_empty() { "/" } else { rest };
                return Some(RouteMatch {
                    value,
                    route,
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
            .map(|(prefix, (route, value))| RouteMatch {
                value,
                route,
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
            t.insert(Route::parse(r).unwrap(), r.to_string()).unwrap();
        }
        t
    }

    /// Routes a request to `host` ("" for none) and `path`: the value (the
    /// route as written) and the path the app sees.
    fn route_at(t: &RouteTable<String>, host: &str, path: &str) -> Option<(String, String)> {
        let host = RequestHost::parse(host).unwrap();
        t.route(host.as_ref(), path)
            .map(|m| (m.value.clone(), m.app_path.to_owned()))
    }

    fn route(t: &RouteTable<String>, path: &str) -> Option<(String, String)> {
        route_at(t, "", path)
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
        let mut t = table(&["/hello", "shop.example.com/api"]);
        let err = t
            .insert(Route::parse("/hello/").unwrap(), "second".into())
            .unwrap_err();
        assert_eq!(err.route.to_string(), "/hello");
        let err = t
            .insert(
                Route::parse("Shop.Example.com/api/").unwrap(),
                "second".into(),
            )
            .unwrap_err();
        assert_eq!(err.route.to_string(), "shop.example.com/api");
        assert_eq!(route(&t, "/hello"), some("/hello", "/"));
        assert_eq!(
            route_at(&t, "shop.example.com", "/api"),
            some("shop.example.com/api", "/")
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn the_same_prefix_on_different_hosts_does_not_conflict() {
        let t = table(&[
            "a.example.com/api",
            "b.example.com/api",
            "*.example.com/api",
            "/api",
        ]);
        assert_eq!(t.len(), 4);
        assert_eq!(
            route_at(&t, "a.example.com", "/api/x"),
            some("a.example.com/api", "/x")
        );
        assert_eq!(
            route_at(&t, "b.example.com", "/api/x"),
            some("b.example.com/api", "/x")
        );
        assert_eq!(
            route_at(&t, "c.example.com", "/api/x"),
            some("*.example.com/api", "/x")
        );
        assert_eq!(route_at(&t, "other.org", "/api/x"), some("/api", "/x"));
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any_host() {
        let t = table(&["shop.example.com/", "*.example.com/", "/"]);
        assert_eq!(
            route_at(&t, "shop.example.com", "/x"),
            some("shop.example.com/", "/x")
        );
        assert_eq!(
            route_at(&t, "blog.example.com", "/x"),
            some("*.example.com/", "/x")
        );
        assert_eq!(route_at(&t, "example.org", "/x"), some("/", "/x"));
        assert_eq!(route(&t, "/x"), some("/", "/x"));
    }

    #[test]
    fn a_more_specific_host_wins_even_with_a_shorter_prefix() {
        // Host precedence comes before prefix length.
        let t = table(&["shop.example.com/", "/api/v1"]);
        assert_eq!(
            route_at(&t, "shop.example.com", "/api/v1/x"),
            some("shop.example.com/", "/api/v1/x")
        );
        assert_eq!(
            route_at(&t, "other.org", "/api/v1/x"),
            some("/api/v1", "/x")
        );
    }

    #[test]
    fn paths_a_host_does_not_route_fall_through_to_less_specific_hosts() {
        let t = table(&["shop.example.com/api", "*.example.com/blog", "/"]);
        assert_eq!(
            route_at(&t, "shop.example.com", "/api/x"),
            some("shop.example.com/api", "/x")
        );
        assert_eq!(
            route_at(&t, "shop.example.com", "/blog/x"),
            some("*.example.com/blog", "/x")
        );
        assert_eq!(route_at(&t, "shop.example.com", "/x"), some("/", "/x"));
        let t = table(&["shop.example.com/api"]);
        assert_eq!(route_at(&t, "shop.example.com", "/x"), None);
    }

    #[test]
    fn hosts_match_whatever_their_case_port_or_trailing_dot() {
        let t = table(&["Shop.Example.com/"]);
        for host in [
            "shop.example.com",
            "SHOP.EXAMPLE.COM",
            "shop.example.com:8080",
            "Shop.Example.Com:443",
            "shop.example.com.",
        ] {
            assert_eq!(
                route_at(&t, host, "/x"),
                some("Shop.Example.com/", "/x"),
                "{host}"
            );
        }
        assert_eq!(route_at(&t, "shop.example.org", "/x"), None);
    }

    #[test]
    fn a_wildcard_covers_one_label_and_not_its_own_domain() {
        let t = table(&["*.example.com/"]);
        assert_eq!(
            route_at(&t, "a.example.com", "/"),
            some("*.example.com/", "/")
        );
        assert_eq!(
            route_at(&t, "A.Example.com:80", "/"),
            some("*.example.com/", "/")
        );
        assert_eq!(route_at(&t, "example.com", "/"), None);
        assert_eq!(route_at(&t, "a.b.example.com", "/"), None);
        assert_eq!(route_at(&t, "aexample.com", "/"), None);
        assert_eq!(route(&t, "/"), None);
    }

    #[test]
    fn unicode_hosts_are_matched_by_their_punycode() {
        let t = table(&["bücher.example/", "*.bücher.example/api"]);
        assert_eq!(
            route_at(&t, "xn--bcher-kva.example", "/x"),
            some("bücher.example/", "/x")
        );
        assert_eq!(
            route_at(&t, "XN--BCHER-KVA.example", "/x"),
            some("bücher.example/", "/x")
        );
        assert_eq!(
            route_at(&t, "shop.xn--bcher-kva.example", "/api/x"),
            some("*.bücher.example/api", "/x")
        );
    }

    #[test]
    fn a_request_without_a_host_matches_host_less_routes_only() {
        let t = table(&["shop.example.com/", "*.example.com/", "/api"]);
        assert_eq!(route(&t, "/x"), None);
        assert_eq!(route(&t, "/api/x"), some("/api", "/x"));
    }

    #[test]
    fn matches_report_the_route_and_its_prefix() {
        let t = table(&["shop.example.com/api"]);
        let host = RequestHost::parse("shop.example.com").unwrap();
        let m = t.route(host.as_ref(), "/api/x").unwrap();
        assert_eq!(m.route.to_string(), "shop.example.com/api");
        assert_eq!(m.prefix.as_str(), "/api");
        assert_eq!(m.app_path, "/x");
    }

    #[test]
    fn removing_and_getting_go_by_host_and_prefix() {
        let mut t = table(&["a.example.com/api", "/api", "*.example.com/api"]);
        let a = Route::parse("a.example.com/api").unwrap();
        assert_eq!(t.get(&a).map(String::as_str), Some("a.example.com/api"));
        assert_eq!(t.get(&Route::parse("b.example.com/api").unwrap()), None);
        assert_eq!(t.remove(&a).as_deref(), Some("a.example.com/api"));
        assert_eq!(t.remove(&a), None);
        assert_eq!(t.len(), 2);
        assert_eq!(
            route_at(&t, "a.example.com", "/api"),
            some("*.example.com/api", "/")
        );
        let mut shown: Vec<String> = t.iter().map(|(r, _)| r.to_string()).collect();
        shown.sort();
        assert_eq!(shown, ["*.example.com/api", "/api"]);
        assert!(t.remove(&Route::parse("/api").unwrap()).is_some());
        assert!(t
            .remove(&Route::parse("*.example.com/api").unwrap())
            .is_some());
        assert!(t.is_empty());
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
        let t = table(&["/", "shop.example.com/"]);
        assert_eq!(route(&t, ""), None);
        assert_eq!(route(&t, "*"), None);
        assert_eq!(route_at(&t, "shop.example.com", "*"), None);
    }

    #[test]
    fn lookup_is_independent_of_table_size() {
        // Not a timing test: checks that the lookup probes only the request's
        // own host and path prefixes, so ten thousand unrelated mounts and
        // hosts change nothing.
        let mut t = table(&["/target", "shop.example.com/"]);
        for i in 0..10_000 {
            t.insert(Route::parse(&format!("/app{i}")).unwrap(), i.to_string())
                .unwrap();
            let host = format!("tenant{i}.example.com/api");
            t.insert(Route::parse(&host).unwrap(), host).unwrap();
        }
        assert_eq!(route(&t, "/target/x"), some("/target", "/x"));
        assert_eq!(route(&t, "/app42/y"), some("42", "/y"));
        assert_eq!(route(&t, "/app4200000"), None);
        assert_eq!(
            route_at(&t, "tenant42.example.com", "/api/y"),
            some("tenant42.example.com/api", "/y")
        );
        assert_eq!(
            route_at(&t, "shop.example.com", "/api/y"),
            some("shop.example.com/", "/api/y")
        );
        assert_eq!(t.len(), 20_002);
    }
}
