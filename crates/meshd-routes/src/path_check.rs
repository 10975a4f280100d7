//! Request paths whose meaning depends on who reads them.
//!
//! A proxy in front of meshd (nginx, a load balancer, a WAF) usually
//! normalises the path before it applies its own rules: it decodes `%2e`,
//! removes `.` and `..` segments (RFC 3986 §5.2.4), merges `//`, and some
//! decode `%2f` or treat `\` as a separator. meshd routes on the path as
//! sent. Whenever the two readings can differ, the proxy may apply one app's
//! rules to a request that meshd hands to another: `/admin/x/../../public`
//! is `public` to nginx and `admin` to a router that does not normalise.
//!
//! meshd does not normalise: it refuses every such path (the server answers
//! 400). Normalising would only agree with proxies that normalise exactly as
//! meshd does, and they differ (merging slashes, decoding `%2f`, treating
//! `\` as `/`, decoding before or after removing dot segments). A path that
//! every reader reads the same way is the only kind both can agree on, and
//! real clients never need the refused forms: browsers and HTTP libraries
//! remove dot segments and never percent-encode unreserved characters.

use std::fmt;

/// Why a request path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmbiguousPath {
    /// A `.` or `..` segment, plain or percent-encoded (`%2e`, `.%2E`, ...).
    #[error("it has a '.' or '..' segment")]
    DotSegment,
    /// An empty segment (`//`); a single trailing `/` is fine.
    #[error("it has an empty segment ('//')")]
    EmptySegment,
    /// A percent-encoded `/` or `\` (`%2f`, `%5c`), which some proxies decode
    /// into a separator.
    #[error("it has a percent-encoded '/' or '\\' ({0})")]
    EncodedSeparator(Escape),
    /// A literal `\`, which some proxies treat as `/`.
    #[error("it has a '\\'")]
    Backslash,
    /// A percent-encoded unreserved character (a letter, digit, `-`, `.`,
    /// `_` or `~`): normalisation decodes it, so `/%61pp` is `/app` to a
    /// proxy and another path to a router that compares bytes.
    #[error("it has a percent-encoded letter, digit, '-', '.', '_' or '~' ({0})")]
    EncodedUnreserved(Escape),
    /// A `%` not followed by two hex digits, which readers repair differently.
    #[error("it has a '%' that is not followed by two hex digits")]
    BadEscape,
}

/// A percent-escape as it appeared in the path, e.g. `%2F`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Escape([u8; 2]);

impl fmt::Display for Escape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}{}", self.0[0] as char, self.0[1] as char)
    }
}

/// Checks that `path` (the path of a request URI, without the query) means
/// the same to every reader: see the module documentation for what is
/// refused and why.
pub fn check_path(path: &str) -> Result<(), AmbiguousPath> {
    let Some(rest) = path.strip_prefix('/') else {
        // Not an origin-form path (`*`): no app matches it anyway.
        return Ok(());
    };
    if rest.is_empty() {
        return Ok(());
    }
    // One trailing '/' (`/hello/`) is the only empty segment allowed: every
    // reader keeps it as it is.
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    rest.split('/').try_for_each(check_segment)
}

fn check_segment(segment: &str) -> Result<(), AmbiguousPath> {
    if segment.is_empty() {
        return Err(AmbiguousPath::EmptySegment);
    }
    if is_dot_segment(segment.as_bytes()) {
        return Err(AmbiguousPath::DotSegment);
    }
    let mut bytes = segment.bytes();
    while let Some(byte) = bytes.next() {
        match byte {
            b'\\' => return Err(AmbiguousPath::Backslash),
            b'%' => {
                let (Some(hi), Some(lo)) = (bytes.next(), bytes.next()) else {
                    return Err(AmbiguousPath::BadEscape);
                };
                let (Some(h), Some(l)) = (hex(hi), hex(lo)) else {
                    return Err(AmbiguousPath::BadEscape);
                };
                let escape = Escape([hi, lo]);
                match (h << 4) | l {
                    b'/' | b'\\' => return Err(AmbiguousPath::EncodedSeparator(escape)),
                    c if is_unreserved(c) => return Err(AmbiguousPath::EncodedUnreserved(escape)),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `segment` is `.` or `..` once `%2e`/`%2E` are decoded.
fn is_dot_segment(segment: &[u8]) -> bool {
    let mut dots = 0;
    let mut rest = segment;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', b'e' | b'E', tail @ ..] => tail,
            _ => return false,
        };
        dots += 1;
    }
    dots == 1 || dots == 2
}

fn hex(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|d| d as u8)
}

/// RFC 3986 §2.3: ALPHA / DIGIT / "-" / "." / "_" / "~".
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(path: &str) -> AmbiguousPath {
        check_path(path).expect_err(path)
    }

    #[test]
    fn plain_paths_pass() {
        for path in [
            "/",
            "/hello",
            "/hello/",
            "/hello/x/y",
            "/a.b/..c/c../.../x.",
            "/%20space/%C3%A9t%C3%A9/%3F%23%25",
            "/a;b=c/d:e@f!$&'()*+,=",
            "*",
        ] {
            assert_eq!(check_path(path), Ok(()), "{path}");
        }
    }

    #[test]
    fn dot_segments_are_refused_plain_and_encoded() {
        for path in [
            "/.",
            "/..",
            "/./",
            "/../",
            "/admin/x/../../public",
            "/a/./b",
            "/a/..",
            "/%2e",
            "/%2E%2E/x",
            "/.%2e/x",
            "/%2e./x",
            "/a/%2e%2E",
        ] {
            assert_eq!(refused(path), AmbiguousPath::DotSegment, "{path}");
        }
    }

    #[test]
    fn empty_segments_are_refused_but_one_trailing_slash_is_not() {
        for path in ["//", "//hello/x", "/hello//x", "/hello//", "/a/b//"] {
            assert_eq!(refused(path), AmbiguousPath::EmptySegment, "{path}");
        }
    }

    #[test]
    fn separators_encoded_or_backslashed_are_refused() {
        for (path, escape) in [
            ("/admin%2f..%2fpublic", "%2f"),
            ("/admin%2F", "%2F"),
            ("/a%5cb", "%5c"),
            ("/a%5C", "%5C"),
        ] {
            let why = refused(path);
            assert!(
                matches!(why, AmbiguousPath::EncodedSeparator(e) if e.to_string() == escape),
                "{path}: {why:?}"
            );
        }
        assert_eq!(refused("/a\\..\\b"), AmbiguousPath::Backslash);
        assert_eq!(refused("/a\\b"), AmbiguousPath::Backslash);
    }

    #[test]
    fn encoded_unreserved_characters_are_refused() {
        for path in ["/%61dmin", "/x%2ey", "/%7Euser", "/a%2D", "/%5F", "/%30"] {
            assert!(
                matches!(refused(path), AmbiguousPath::EncodedUnreserved(_)),
                "{path}"
            );
        }
    }

    #[test]
    fn broken_escapes_are_refused() {
        for path in ["/%", "/a%2", "/%zz", "/a%g0b"] {
            assert_eq!(refused(path), AmbiguousPath::BadEscape, "{path}");
        }
    }

    #[test]
    fn the_reason_is_readable() {
        assert_eq!(
            refused("/a%2Fb").to_string(),
            "it has a percent-encoded '/' or '\\' (%2F)"
        );
    }
}
