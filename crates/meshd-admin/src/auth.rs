//! Who may use the admin API: the bearer token, where it comes from, how it
//! is checked, and the rule that an admin listener reachable from other
//! machines must have one.

use crate::error::ApiError;
use crate::AdminState;
use anyhow::{bail, Context as _};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::AUTHORIZATION;
use std::fmt;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use subtle::ConstantTimeEq as _;

/// Largest token file read: a token is a line, not a document.
const MAX_TOKEN_FILE: u64 = 4096;

/// Wrong tokens are warned about at most once a second, so a client
/// guessing tokens cannot flood meshd's log.
static WRONG_TOKEN_WARNINGS: std::sync::LazyLock<governor::DefaultDirectRateLimiter> =
    std::sync::LazyLock::new(|| {
        governor::RateLimiter::direct(governor::Quota::per_second(std::num::NonZeroU32::MIN))
    });

/// The secret every admin request must present as
/// `Authorization: Bearer <token>`. Its `Debug` output does not show it.
#[derive(Clone)]
pub struct Token(Box<[u8]>);

impl Token {
    /// Reads the token from `path`: its text without surrounding whitespace
    /// (a trailing newline is fine). Refuses a file that group or others can
    /// access (on unix), an empty one, and a token with characters a header
    /// cannot carry (anything but visible ASCII).
    pub fn from_file(path: &Path) -> anyhow::Result<Token> {
        let shown = path.display();
        let file = std::fs::File::open(path)
            .with_context(|| format!("cannot open the admin token file {shown}"))?;
        check_private(&file, path)?;
        let mut text = Vec::new();
        file.take(MAX_TOKEN_FILE + 1)
            .read_to_end(&mut text)
            .with_context(|| format!("cannot read the admin token file {shown}"))?;
        if text.len() as u64 > MAX_TOKEN_FILE {
            bail!("the admin token file {shown} is larger than {MAX_TOKEN_FILE} bytes; it should hold one line, the token");
        }
        let text = String::from_utf8(text)
            .map_err(|_| anyhow::anyhow!("the admin token file {shown} is not text"))?;
        Token::new(&text).with_context(|| format!("the admin token file {shown}"))
    }

    /// A token from its text, without surrounding whitespace. Refuses an
    /// empty token and one with characters other than visible ASCII.
    pub fn new(secret: &str) -> anyhow::Result<Token> {
        let secret = secret.trim();
        if secret.is_empty() {
            bail!(
                "the token is empty; put a long random secret in it, e.g. `openssl rand -hex 32`"
            );
        }
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("the token has spaces, control characters or non-ASCII characters, which an Authorization header cannot carry; use e.g. `openssl rand -hex 32`");
        }
        Ok(Token(secret.as_bytes().into()))
    }

    /// Whether `presented` is this token. Takes the same time wherever the
    /// first difference is (only the length can be told from the timing).
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.0.ct_eq(presented).into()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Like ssh with a private key: a secret others can read is no secret.
#[cfg(unix)]
fn check_private(file: &std::fs::File, path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = file
        .metadata()
        .with_context(|| format!("cannot read the admin token file {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "the admin token file {} is accessible by group or others (mode {:04o}); it holds the admin secret: run `chmod 600 {}`",
            path.display(),
            mode & 0o7777,
            path.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_file: &std::fs::File, _path: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// Refuses an admin address other machines may reach when no token guards
/// it: whoever reaches the admin API can run code in meshd.
pub fn check_exposure(addr: SocketAddr, token: Option<&Token>) -> anyhow::Result<()> {
    if token.is_none() && !addr.ip().to_canonical().is_loopback() {
        bail!(
            "the admin API would listen on {addr}, which is not a loopback address, without a token: anyone who reaches it could deploy code. Give --admin-token-file FILE (a file only meshd's user can read, holding a secret such as the output of `openssl rand -hex 32`), or listen on a loopback address (127.0.0.1:PORT or [::1]:PORT)"
        );
    }
    Ok(())
}

/// Lets a request through only with the right token (when one is set); the
/// others get 401 before their body is read.
pub(crate) async fn require_token(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    match presented_token(&request) {
        Some(presented) if token.matches(presented) => next.run(request).await,
        Some(_) => {
            if WRONG_TOKEN_WARNINGS.check().is_ok() {
                tracing::warn!(method = %request.method(), path = request.uri().path(), "admin request with a wrong token refused (this warning: at most one a second)");
            }
            ApiError::unauthorized("the bearer token is not the admin token").into_response()
        }
        None => ApiError::unauthorized(
            "the admin API needs a token: send `Authorization: Bearer <token>` with the contents of the admin token file",
        )
        .into_response(),
    }
}

/// The credentials of an `Authorization: Bearer ...` header (the scheme is
/// case-insensitive).
fn presented_token(request: &Request) -> Option<&[u8]> {
    let value = request.headers().get(AUTHORIZATION)?.as_bytes();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    Some(rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_only_itself() {
        let token = Token::new("s3cret-token\n").unwrap();
        assert!(token.matches(b"s3cret-token"));
        assert!(!token.matches(b"s3cret-tokem"));
        assert!(!token.matches(b"s3cret"));
        assert!(!token.matches(b""));
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    }

    #[test]
    fn an_empty_or_unsendable_token_is_refused() {
        assert!(Token::new(" \n\t").is_err());
        assert!(Token::new("two words").is_err());
        assert!(Token::new("caf\u{e9}").is_err());
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_others_are_not_tokens() {
        let with = |value: &str| {
            Request::builder()
                .header(AUTHORIZATION, value)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert_eq!(presented_token(&with("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(presented_token(&with("bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(presented_token(&with("Basic abc")), None);
        assert_eq!(presented_token(&with("Bearer")), None);
        let without = Request::new(axum::body::Body::empty());
        assert_eq!(presented_token(&without), None);
    }

    #[test]
    fn only_loopback_addresses_may_go_without_a_token() {
        let token = Token::new("t").unwrap();
        for loopback in [
            "127.0.0.1:9090",
            "127.1.2.3:9090",
            "[::1]:9090",
            "[::ffff:127.0.0.1]:9090",
        ] {
            let addr = loopback.parse().unwrap();
            assert!(check_exposure(addr, None).is_ok(), "{loopback}");
            assert!(check_exposure(addr, Some(&token)).is_ok(), "{loopback}");
        }
        for exposed in [
            "0.0.0.0:9090",
            "10.0.0.5:9090",
            "[::]:9090",
            "[2001:db8::1]:9090",
        ] {
            let addr = exposed.parse().unwrap();
            let error = check_exposure(addr, None).unwrap_err().to_string();
            assert!(error.contains(exposed), "{error}");
            assert!(error.contains("--admin-token-file"), "{error}");
            assert!(check_exposure(addr, Some(&token)).is_ok(), "{exposed}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_token_file_must_be_private_and_not_empty() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let set_mode =
            |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();

        std::fs::write(&path, "  abc123\n").unwrap();
        set_mode(0o600);
        assert!(Token::from_file(&path).unwrap().matches(b"abc123"));
        set_mode(0o400);
        assert!(Token::from_file(&path).unwrap().matches(b"abc123"));

        for open in [0o644, 0o640, 0o604, 0o620] {
            set_mode(open);
            let error = format!("{:#}", Token::from_file(&path).unwrap_err());
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert!(error.contains(&format!("{open:04o}")), "{error}");
            assert!(error.contains("chmod 600"), "{error}");
        }

        std::fs::write(&path, "\n").unwrap();
        set_mode(0o600);
        let error = format!("{:#}", Token::from_file(&path).unwrap_err());
        assert!(error.contains("empty"), "{error}");
        assert!(error.contains(&path.display().to_string()), "{error}");

        let missing = dir.path().join("missing");
        let error = format!("{:#}", Token::from_file(&missing).unwrap_err());
        assert!(error.contains("missing"), "{error}");
    }
}
