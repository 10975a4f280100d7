//! A manifest route: an optional host and a path prefix.

use crate::host::{HostError, RouteHost};
use crate::{Prefix, PrefixError};
use std::fmt;

/// Where an app is mounted: a path prefix, on one host, on every host one
/// label below a domain, or on any host.
///
/// Written `/api` (any host), `shop.example.com/` or `*.example.com/api`.
/// Shown the same way, with the host normalised (lower case, punycode), so
/// two routes are the same mount exactly when they display the same.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    host: Option<RouteHost>,
    path: Prefix,
}

/// Why a manifest's route is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The route does not start with `/` and has no `/` after a host.
    #[error(
        "route {0:?} must start with '/' (any host) or be a host followed by a path, e.g. {0}/"
    )]
    NoPath(String),
    /// The path part is not a valid prefix.
    #[error(transparent)]
    Path(#[from] PrefixError),
    /// The host part is not a valid host.
    #[error("route {route:?}: {source}")]
    Host {
        /// The route as written.
        route: String,
        /// What is wrong with its host.
        source: HostError,
    },
}

impl Route {
    /// A route on any host.
    pub fn any_host(path: Prefix) -> Self {
        Route { host: None, path }
    }

    /// A route on `host` (or on any host for `None`).
    pub fn new(host: Option<RouteHost>, path: Prefix) -> Self {
        Route { host, path }
    }

    /// Parses a manifest route: a path starting with `/` (any host), or a
    /// host followed by a path (`shop.example.com/`, `*.example.com/api`).
    pub fn parse(route: &str) -> Result<Self, RouteError> {
        if route.starts_with('/') {
            return Ok(Route::any_host(Prefix::parse(route)?));
        }
        let Some(slash) = route.find('/') else {
            return Err(RouteError::NoPath(route.to_owned()));
        };
        let (host, path) = route.split_at(slash);
        let host = RouteHost::parse(host).map_err(|source| RouteError::Host {
            route: route.to_owned(),
            source,
        })?;
        Ok(Route {
            host: Some(host),
            path: Prefix::parse(path)?,
        })
    }

    /// The host, if the route has one.
    pub fn host(&self) -> Option<&RouteHost> {
        self.host.as_ref()
    }

    /// The path prefix: what is stripped from the request path before the
    /// app sees it.
    pub fn path(&self) -> &Prefix {
        &self.path
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(host) = &self.host {
            write!(f, "{host}")?;
        }
        write!(f, "{}", self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(route: &str) -> String {
        Route::parse(route).unwrap().to_string()
    }

    #[test]
    fn routes_display_in_their_normal_form() {
        assert_eq!(shown("/api/"), "/api");
        assert_eq!(shown("/"), "/");
        assert_eq!(shown("Shop.Example.com/"), "shop.example.com/");
        assert_eq!(shown("shop.example.com/api/"), "shop.example.com/api");
        assert_eq!(shown("*.example.com/api"), "*.example.com/api");
        assert_eq!(shown("bücher.example/"), "xn--bcher-kva.example/");
    }

    #[test]
    fn routes_with_the_same_display_are_the_same_mount() {
        assert_eq!(
            Route::parse("SHOP.example.com./api/").unwrap(),
            Route::parse("shop.example.com/api").unwrap()
        );
        assert_ne!(
            Route::parse("a.example.com/api").unwrap(),
            Route::parse("b.example.com/api").unwrap()
        );
        assert_ne!(
            Route::parse("shop.example.com/api").unwrap(),
            Route::parse("/api").unwrap()
        );
    }

    #[test]
    fn invalid_routes_say_what_is_wrong() {
        let err = Route::parse("shop.example.com").unwrap_err();
        assert!(matches!(err, RouteError::NoPath(_)));
        assert!(err.to_string().contains("shop.example.com/"), "{err}");
        assert!(matches!(
            Route::parse("shop.example.com//x"),
            Err(RouteError::Path(PrefixError::BadSegment(_)))
        ));
        let err = Route::parse("shop.example.com:8080/").unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
        assert!(matches!(
            Route::parse("sh op.example/"),
            Err(RouteError::Host { .. })
        ));
        assert!(matches!(Route::parse("api"), Err(RouteError::NoPath(_))));
    }
}
