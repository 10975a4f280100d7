//! A client of meshd's admin API (`--admin`): sends the bearer token, builds
//! uploads (the wasm alone, or a multipart form with a manifest), and a token
//! file with the mode meshd requires.

pub use super::client::Reply;
use super::client::{full, request, Client};
use super::meshd::Meshd;
use bytes::Bytes;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The admin token the tests use.
pub const TOKEN: &str = "e2e-admin-token-0123456789abcdef";

/// A directory holding an admin token file (`token`, mode 600).
pub struct TokenFile {
    dir: tempfile::TempDir,
}

impl TokenFile {
    /// A token file holding `token` (with a trailing newline, as
    /// `openssl rand -hex 32 > FILE` writes it) and mode `mode`.
    pub fn with_mode(token: &str, mode: u32) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("token");
        std::fs::write(&path, format!("{token}\n")).expect("write the token file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .expect("chmod the token file");
        TokenFile { dir }
    }

    /// A token file holding [`TOKEN`], mode 600.
    pub fn new() -> Self {
        Self::with_mode(TOKEN, 0o600)
    }

    /// The file.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// The file, as a command-line argument.
    pub fn arg(&self) -> String {
        self.path().to_str().expect("utf-8 path").to_owned()
    }
}

/// A client of one meshd's admin API.
pub struct Admin {
    client: Client,
    base: String,
    token: Option<String>,
}

impl Admin {
    /// A client of `meshd`'s admin API that sends [`TOKEN`].
    pub fn of(meshd: &Meshd) -> Self {
        Self::with_token(meshd, Some(TOKEN))
    }

    /// A client of `meshd`'s admin API that sends `token` (or none).
    pub fn with_token(meshd: &Meshd, token: Option<&str>) -> Self {
        Admin {
            client: Client::http1(),
            base: meshd.admin_url(),
            token: token.map(str::to_owned),
        }
    }

    /// `BASE{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends `method path` with `content_type` (if any) and `body`.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Reply {
        let mut req = request(method, &self.url(path), full(body));
        if let Some(token) = &self.token {
            req.headers_mut().insert(
                http::header::AUTHORIZATION,
                format!("Bearer {token}").parse().expect("a header value"),
            );
        }
        if let Some(content_type) = content_type {
            req.headers_mut().insert(
                http::header::CONTENT_TYPE,
                content_type.parse().expect("a header value"),
            );
        }
        self.client
            .fetch(req)
            .await
            .unwrap_or_else(|e| panic!("{method} {path} on the admin API failed: {e}"))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None, Bytes::new()).await
    }

    /// `GET /v1/apps/NAME`, which must answer 200: the app object.
    pub async fn app(&self, name: &str) -> serde_json::Value {
        let reply = self.get(&format!("/v1/apps/{name}")).await;
        assert_eq!(reply.status, 200, "GET /v1/apps/{name}: {}", reply.text());
        reply.json()
    }

    /// `GET /v1/apps`, which must answer 200: the `apps` array.
    pub async fn apps(&self) -> Vec<serde_json::Value> {
        let reply = self.get("/v1/apps").await;
        assert_eq!(reply.status, 200, "GET /v1/apps: {}", reply.text());
        reply.json()["apps"]
            .as_array()
            .unwrap_or_else(|| panic!("no apps array in {}", reply.text()))
            .clone()
    }

    /// `PUT /v1/apps/NAME` with the wasm alone (`application/wasm`).
    pub async fn put_wasm(&self, name: &str, wasm: impl Into<Bytes>) -> Reply {
        self.send(
            "PUT",
            &format!("/v1/apps/{name}"),
            Some("application/wasm"),
            wasm,
        )
        .await
    }

    /// `PUT /v1/apps/NAME` with a multipart form: `wasm` and, if given,
    /// `manifest`.
    pub async fn put_form(&self, name: &str, wasm: &[u8], manifest: Option<&str>) -> Reply {
        let (content_type, body) = multipart(wasm, manifest);
        self.send(
            "PUT",
            &format!("/v1/apps/{name}"),
            Some(&content_type),
            body,
        )
        .await
    }

    /// `DELETE /v1/apps/NAME`.
    pub async fn delete(&self, name: &str) -> Reply {
        self.send("DELETE", &format!("/v1/apps/{name}"), None, Bytes::new())
            .await
    }

    /// `POST path` without a body.
    pub async fn post(&self, path: &str) -> Reply {
        self.send("POST", path, None, Bytes::new()).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, json: serde_json::Value) -> Reply {
        self.send("POST", path, Some("application/json"), json.to_string())
            .await
    }

    /// `POST /v1/apps/NAME/canary?QUERY` with the wasm alone.
    pub async fn canary(&self, name: &str, query: &str, wasm: &[u8]) -> Reply {
        let path = format!("/v1/apps/{name}/canary?{query}");
        self.send("POST", &path, Some("application/wasm"), wasm.to_vec())
            .await
    }

    /// `POST /v1/apps/NAME/canary?QUERY` with a form: parts `wasm` and
    /// `manifest`.
    pub async fn canary_with_manifest(
        &self,
        name: &str,
        query: &str,
        wasm: &[u8],
        manifest: &str,
    ) -> Reply {
        let path = format!("/v1/apps/{name}/canary?{query}");
        let (content_type, body) = multipart(wasm, Some(manifest));
        self.send("POST", &path, Some(&content_type), body).await
    }

    /// `POST /v1/apps/NAME/rollback` with `body` (empty: the previous version).
    pub async fn rollback(&self, name: &str, body: &str) -> Reply {
        let content_type = (!body.is_empty()).then_some("application/json");
        self.send(
            "POST",
            &format!("/v1/apps/{name}/rollback"),
            content_type,
            body.to_owned(),
        )
        .await
    }
}

/// A `multipart/form-data` body with a part `wasm` and, if given, a part
/// `manifest`: the `Content-Type` and the body.
pub fn multipart(wasm: &[u8], manifest: Option<&str>) -> (String, Vec<u8>) {
    let boundary = "e2e-boundary-7d0c3f5a9b1e";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"wasm\"; filename=\"app.wasm\"\r\n\
             Content-Type: application/wasm\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(wasm);
    body.extend_from_slice(b"\r\n");
    if let Some(manifest) = manifest {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"; filename=\"app.toml\"\r\n\
                 Content-Type: text/plain\r\n\r\n{manifest}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// The SHA-256 of `bytes` in lowercase hex, computed by `sha256sum`
/// (coreutils), independently of meshd's own hashing.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("blob");
    std::fs::write(&path, bytes).expect("write the blob");
    sha256_file(&path)
}

/// The SHA-256 of the file at `path` in lowercase hex (`sha256sum`).
pub fn sha256_file(path: &Path) -> String {
    let output = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    assert!(output.status.success(), "sha256sum {}", path.display());
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let digest = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(digest.len(), 64, "a SHA-256 from sha256sum: {text:?}");
    digest
}

/// Polls `url` on the public port until it answers `status` (and, if given,
/// exactly `body`), within 30 s.
pub async fn wait_for_answer(url: &str, status: u16, body: Option<&str>) -> Reply {
    let client = Client::http1();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = client.fetch(request("GET", url, full(Bytes::new()))).await;
        if let Ok(reply) = &last {
            if reply.status == status && body.is_none_or(|b| reply.text() == b) {
                return last.unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not answer {status} {body:?} within 30 s; last: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
