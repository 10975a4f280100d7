//! The transport of the command-line client: one blocking HTTP request to
//! meshd's admin API, and what its answer means for the exit code.

use super::upload::Upload;
use std::io::Read;
use std::path::Path;
use std::time::Duration;
use ureq::http::Response;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use ureq::unversioned::multipart::{Form, Part};
use ureq::{Agent, Body, RequestBuilder, SendBody};

/// Exit code: the command did what it was asked.
pub const EXIT_OK: u8 = 0;
/// Exit code: the server refused the change, or the app or version does not
/// exist.
pub const EXIT_REFUSED: u8 = 1;
/// Exit code: bad arguments, or a local file that cannot be read (nothing
/// was sent). clap exits with 2 on usage errors too.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: no usable answer from the admin API.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Largest answer read (a listing of many apps with their kept versions).
const MAX_ANSWER: u64 = 256 * 1024 * 1024;
/// How long connecting may take: a local admin listener answers at once.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a command failed; each kind has its own exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The server answered and said no (exit 1).
    #[error("{kind}: {message}")]
    Refused {
        status: u16,
        kind: String,
        message: String,
    },
    /// The command cannot be sent as given (exit 2).
    #[error("{0}")]
    Usage(String),
    /// No usable answer from the admin API (exit 3).
    #[error("{0}")]
    Unreachable(String),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Refused { .. } => EXIT_REFUSED,
            Failure::Usage(_) => EXIT_USAGE,
            Failure::Unreachable(_) => EXIT_UNREACHABLE,
        }
    }
}

/// What a status code means to a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// The request reached meshd's logic and was refused: a bad name or
    /// percent (400), no such app (404), a refused change (422), a body over
    /// --max-wasm-size (413).
    Refused,
    /// Anything else: a bad token (401/403), a server error or a stopping
    /// meshd (5xx), or a server that does not speak this API (405, 415, ...).
    Unusable,
}

pub fn verdict(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Success,
        400 | 404 | 409 | 413 | 422 => Verdict::Refused,
        _ => Verdict::Unusable,
    }
}

/// The `{"error": {...}}` body of every refusal.
#[derive(Debug, serde::Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, serde::Deserialize)]
struct ErrorDetail {
    kind: String,
    #[serde(default)]
    message: String,
}

/// A status and body as the server sent them.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// What a request carries.
pub enum Payload<'a> {
    Empty,
    Json(serde_json::Value),
    Upload(&'a Upload),
}

/// A connection to one admin API.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    agent: Agent,
}

impl AdminClient {
    /// `base` is a URL without a trailing slash; `timeout` bounds the wait
    /// for the answer once the request is sent (a deploy answers after the
    /// compile and the health check).
    /// `roots`, if given, are the only certificates an https:// admin URL is
    /// verified against (else Mozilla's roots).
    pub fn new(
        base: String,
        token: Option<String>,
        timeout: Duration,
        roots: Option<Vec<Certificate<'static>>>,
    ) -> Self {
        let mut config = Agent::config_builder();
        if let Some(roots) = roots {
            config = config.tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::new_with_certs(&roots))
                    .build(),
            );
        }
        let agent: Agent = config
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(timeout))
            .timeout_recv_body(Some(timeout))
            .user_agent(concat!("meshd/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        AdminClient { base, token, agent }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn get(&self, path: &str) -> Result<Answer, Failure> {
        let request = self.authorize(self.agent.get(self.url(path)));
        self.finish(request.call(), None)
    }

    pub fn delete(&self, path: &str) -> Result<Answer, Failure> {
        let request = self.authorize(self.agent.delete(self.url(path)));
        self.finish(request.call(), None)
    }

    pub fn put(&self, path: &str, payload: Payload<'_>) -> Result<Answer, Failure> {
        let request = self.authorize(self.agent.put(self.url(path)));
        self.send(request, payload)
    }

    pub fn post(
        &self,
        path: &str,
        query: &[(&str, String)],
        payload: Payload<'_>,
    ) -> Result<Answer, Failure> {
        let mut request = self.authorize(self.agent.post(self.url(path)));
        for (key, value) in query {
            request = request.query(*key, value);
        }
        self.send(request, payload)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn authorize<B>(&self, request: RequestBuilder<B>) -> RequestBuilder<B> {
        let request = request.header("accept", "application/json");
        match &self.token {
            Some(token) => request.header("authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    fn send(
        &self,
        request: RequestBuilder<ureq::typestate::WithBody>,
        payload: Payload<'_>,
    ) -> Result<Answer, Failure> {
        match payload {
            Payload::Empty => self.finish(request.send_empty(), None),
            // Exactly `application/json` (ureq's send_json adds a charset
            // parameter, which a strict server may not expect).
            Payload::Json(value) => {
                let bytes = value.to_string().into_bytes();
                let sent = request
                    .content_type("application/json")
                    .send(bytes.as_slice());
                self.finish(sent, None)
            }
            Payload::Upload(upload) => {
                // The server may refuse before the body is sent (a bad
                // token, a wasm larger than its limit by Content-Length):
                // then its answer comes back instead of a broken pipe.
                let request = request.header("expect", "100-continue");
                let wasm = upload.open()?;
                let sent = match &upload.manifest {
                    // The wasm alone: its length is known, so the server can
                    // refuse a file over its limit before reading it.
                    None => request
                        .content_type("application/wasm")
                        .header("content-length", upload.wasm_len)
                        .send(SendBody::from_owned_reader(wasm)),
                    Some(manifest) => {
                        let wasm_part = Part::owned_reader(wasm)
                            .file_name(&upload.file_name())
                            .mime_str("application/wasm")
                            .map_err(|e| Failure::Usage(format!("cannot build the upload: {e}")))?;
                        let form = Form::new()
                            .part("wasm", wasm_part)
                            .part("manifest", Part::text(&manifest.text));
                        request.send(form)
                    }
                };
                self.finish(sent, Some(upload))
            }
        }
    }

    /// Reads the answer, or explains why there is none.
    fn finish(
        &self,
        sent: Result<Response<Body>, ureq::Error>,
        upload: Option<&Upload>,
    ) -> Result<Answer, Failure> {
        let mut response = sent.map_err(|e| self.transport_failure(e, upload))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .lossy_utf8(true)
            .read_to_string()
            .map_err(|e| self.transport_failure(e, None))?;
        Ok(Answer { status, body })
    }

    fn transport_failure(&self, error: ureq::Error, upload: Option<&Upload>) -> Failure {
        let url = &self.base;
        let what = match &error {
            ureq::Error::ConnectionFailed => "connection refused".to_owned(),
            ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                "connection refused".to_owned()
            }
            ureq::Error::HostNotFound => "host not found".to_owned(),
            ureq::Error::Timeout(timeout) => format!("timed out ({timeout})"),
            other => other.to_string(),
        };
        let hint = match (&error, upload) {
            (ureq::Error::Timeout(_), _) => {
                "a deploy answers after the compile and health check; raise --timeout if they take longer"
            }
            // A server that refuses a large body stops reading it and
            // closes the connection before the upload has ended.
            (ureq::Error::Io(_), Some(_)) => {
                "the connection broke during the upload; meshd may refuse files over its --max-wasm-size"
            }
            _ => "is meshd running with --admin, and do --admin / MESHD_ADMIN point at it?",
        };
        Failure::Unreachable(format!(
            "cannot talk to the admin API at {url}: {what}; {hint}"
        ))
    }
}

/// Turns an answer into its body when it is a success, or into the failure
/// it means. `subject` names what was asked about (e.g. "app hello").
pub fn accept(answer: Answer, base: &str, subject: &str) -> Result<String, Failure> {
    let refusal = || serde_json::from_str::<ErrorBody>(&answer.body).ok();
    match verdict(answer.status) {
        Verdict::Success => Ok(answer.body),
        Verdict::Refused => Err(match refusal() {
            Some(ErrorBody { error }) => Failure::Refused {
                status: answer.status,
                kind: error.kind,
                message: error.message,
            },
            None => Failure::Refused {
                status: answer.status,
                kind: format!("http_{}", answer.status),
                message: format!("{subject}: {}", excerpt(&answer.body)),
            },
        }),
        Verdict::Unusable => {
            let said = match refusal() {
                Some(ErrorBody { error }) => format!("{}: {}", error.kind, error.message),
                None => excerpt(&answer.body),
            };
            let hint = match answer.status {
                401 | 403 => "check --token-file / MESHD_ADMIN_TOKEN_FILE (the token meshd's --admin-token-file holds)",
                503 => "meshd is stopping or not ready; try again",
                500..=599 => "see meshd's log",
                _ => "is this meshd's admin listener (and a meshd as new as this client)?",
            };
            Err(Failure::Unreachable(format!(
                "the admin API at {base} answered {} ({said}); {hint}",
                answer.status
            )))
        }
    }
}

/// The start of an unexpected body, on one line.
fn excerpt(body: &str) -> String {
    let line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None if line.is_empty() => "no body".to_owned(),
        None => line,
    }
}

/// Parses a success body; one that does not parse means the peer is not
/// the admin API this client knows.
pub fn parse<T: serde::de::DeserializeOwned>(body: &str, base: &str) -> Result<T, Failure> {
    serde_json::from_str(body).map_err(|e| {
        Failure::Unreachable(format!(
            "the admin API at {base} answered with a body this client does not understand ({e}): {}; is it meshd's admin listener?",
            excerpt(body)
        ))
    })
}

/// Reads the bearer token from a file (surrounding whitespace, such as the
/// final newline, is not part of it).
pub fn read_token(path: &Path) -> Result<String, Failure> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|mut file| file.read_to_string(&mut text))
        .map_err(|e| {
            Failure::Usage(format!(
                "cannot read the token file {}: {e}",
                path.display()
            ))
        })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Failure::Usage(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    Ok(token.to_owned())
}

/// The certificates of a PEM file (`--ca-file`).
pub fn read_ca_file(path: &Path) -> Result<Vec<Certificate<'static>>, Failure> {
    let unreadable = |e: &dyn std::fmt::Display| {
        Failure::Usage(format!("cannot read the CA file {}: {e}", path.display()))
    };
    let pem = std::fs::read(path).map_err(|e| unreadable(&e))?;
    let mut certificates = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        if let PemItem::Certificate(certificate) = item.map_err(|e| unreadable(&e))? {
            certificates.push(certificate);
        }
    }
    if certificates.is_empty() {
        return Err(Failure::Usage(format!(
            "the CA file {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certificates)
}

/// The admin API's base URL from `--admin`: `http(s)://HOST[:PORT][/PREFIX]`,
/// or a bare `HOST:PORT` (meshd's own `--admin` address) meaning http.
pub fn parse_admin_url(text: &str) -> Result<String, String> {
    let text = text.trim();
    let url = if text.contains("://") {
        text.to_owned()
    } else {
        format!("http://{text}")
    };
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("not a URL ({e}); use e.g. http://127.0.0.1:9090"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("the admin URL must start with http:// or https://".to_owned()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("the admin URL has no host".to_owned());
    }
    if uri.query().is_some() {
        return Err("the admin URL must not have a query".to_owned());
    }
    // Paths are appended to it: "http://h:9/" + "/v1/apps".
    Ok(url.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_exit_codes() {
        for status in [200, 201, 204] {
            assert_eq!(verdict(status), Verdict::Success, "{status}");
        }
        for status in [400, 404, 409, 413, 422] {
            assert_eq!(verdict(status), Verdict::Refused, "{status}");
        }
        for status in [301, 401, 403, 405, 415, 500, 502, 503] {
            assert_eq!(verdict(status), Verdict::Unusable, "{status}");
        }
    }

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            body: body.to_owned(),
        }
    }

    #[test]
    fn a_refusal_keeps_the_servers_kind_and_message() {
        let body = r#"{"error":{"kind":"health_check","message":"GET /health answered 500","app":"hello"}}"#;
        let failure = accept(answer(422, body), "http://a", "app hello").unwrap_err();
        assert_eq!(failure.exit_code(), EXIT_REFUSED);
        assert_eq!(
            failure.to_string(),
            "health_check: GET /health answered 500"
        );
    }

    #[test]
    fn a_refusal_without_json_still_says_what_came_back() {
        let failure = accept(answer(404, "no such page\n"), "http://a", "app x").unwrap_err();
        assert_eq!(failure.exit_code(), EXIT_REFUSED);
        assert_eq!(failure.to_string(), "http_404: app x: no such page");
    }

    #[test]
    fn a_bad_token_or_server_error_is_exit_3_with_a_hint() {
        let body = r#"{"error":{"kind":"unauthorized","message":"missing or wrong token"}}"#;
        let failure = accept(answer(401, body), "http://h:9", "apps").unwrap_err();
        assert_eq!(failure.exit_code(), EXIT_UNREACHABLE);
        let text = failure.to_string();
        assert!(text.contains("http://h:9 answered 401"), "{text}");
        assert!(
            text.contains("unauthorized: missing or wrong token"),
            "{text}"
        );
        assert!(text.contains("--token-file"), "{text}");

        let failure = accept(answer(500, ""), "http://h:9", "apps").unwrap_err();
        assert_eq!(failure.exit_code(), EXIT_UNREACHABLE);
        assert!(failure.to_string().contains("500 (no body)"), "{failure}");
    }

    #[test]
    fn a_success_is_its_body() {
        assert_eq!(accept(answer(201, "{}"), "u", "s").unwrap(), "{}");
    }

    #[test]
    fn an_unparseable_success_is_exit_3() {
        let failure = parse::<serde_json::Value>("<html>", "http://h").unwrap_err();
        assert_eq!(failure.exit_code(), EXIT_UNREACHABLE);
        assert!(failure.to_string().contains("<html>"), "{failure}");
    }

    #[test]
    fn admin_urls() {
        assert_eq!(
            parse_admin_url("http://127.0.0.1:9090/").unwrap(),
            "http://127.0.0.1:9090"
        );
        assert_eq!(
            parse_admin_url("127.0.0.1:9090").unwrap(),
            "http://127.0.0.1:9090"
        );
        assert_eq!(
            parse_admin_url("https://admin.example/meshd").unwrap(),
            "https://admin.example/meshd"
        );
        assert!(parse_admin_url("ftp://x").is_err());
        assert!(parse_admin_url("http://").is_err());
        assert!(parse_admin_url("").is_err());
        assert!(parse_admin_url("http://h/?q=1").is_err());
    }

    #[test]
    fn the_token_is_the_file_without_surrounding_whitespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(read_token(&path).unwrap(), "s3cret");
        std::fs::write(&path, "\n").unwrap();
        assert_eq!(read_token(&path).unwrap_err().exit_code(), EXIT_USAGE);
        let missing = read_token(&dir.path().join("nope")).unwrap_err();
        assert_eq!(missing.exit_code(), EXIT_USAGE);
        assert!(missing.to_string().contains("nope"), "{missing}");
    }
}
