//! Request paths that a proxy in front may read differently from meshd (dot
//! segments, empty segments, encoded separators) are refused with 400, over
//! HTTP/1.1 and h2, in their plain and percent-encoded forms; ordinary paths
//! are routed as before.

use crate::support::{empty, request, AppsDir, Client, Meshd};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Paths a normalising proxy would route to `public` (or to the `/` app),
/// and a router that compares bytes would not.
const AMBIGUOUS: &[&str] = &[
    "/admin/x/../../public",
    "/admin/x/%2e%2e/%2E%2E/public",
    "/admin/x/.%2e/..%2E/public",
    "/admin/../public",
    "/admin/./x",
    "/admin/%2e/x",
    "/admin/x/..",
    "//admin/x",
    "//public",
    "/admin//x",
    "/admin%2f..%2fpublic",
    "/admin%2F..%2Fpublic",
    "/admin%5c..%5cpublic",
    "/admin%5C..%5Cpublic",
    "/admin/x\\..\\..\\public",
    "/%61dmin/x",
    "/%70ublic/x",
    "/admin/%zz",
];

/// Three apps: `admin` and `public` (the echo guest, which answers with the
/// path it sees) and a catch-all at `/`.
fn start() -> (AppsDir, Meshd) {
    let apps = AppsDir::new();
    apps.deploy("admin", "echo");
    apps.deploy("public", "echo");
    apps.deploy("root", "hello");
    apps.write("root.toml", "route = \"/\"\n");
    let meshd = Meshd::start(apps.path());
    (apps, meshd)
}

/// Sends `GET target` as raw bytes (no client library that could normalise
/// the path first) and returns the status code and the body.
async fn raw_get(meshd: &Meshd, target: &str) -> (u16, String) {
    let mut socket = tokio::net::TcpStream::connect(meshd.addr()).await.unwrap();
    let head = format!("GET {target} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    socket.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    let status = response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("GET {target}: not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn ambiguous_paths_are_refused_over_http1() {
    let (_apps, meshd) = start();
    for target in AMBIGUOUS {
        let (status, body) = raw_get(&meshd, target).await;
        assert_eq!(status, 400, "GET {target}: {body}");
        assert!(
            body.contains("ambiguous request path"),
            "GET {target}: {body}"
        );
    }
    // The same request target with a query: the query is not checked.
    let (status, _) = raw_get(&meshd, "/admin/../public?x=../y").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn ambiguous_paths_are_refused_over_h2() {
    let (_apps, meshd) = start();
    // hyper sends the path as given (it does not normalise): the 400 and
    // meshd's message show that meshd saw it as written.
    let client = Client::http2();
    for target in AMBIGUOUS {
        let reply = client
            .fetch(request("GET", &meshd.url(target), empty()))
            .await
            .unwrap_or_else(|e| panic!("GET {target}: {e}"));
        assert_eq!(reply.status, 400, "GET {target}: {}", reply.text());
        assert!(
            reply.text().contains("ambiguous request path"),
            "GET {target}: {}",
            reply.text()
        );
    }
}

#[tokio::test]
async fn ordinary_paths_are_still_routed_as_written() {
    let (_apps, meshd) = start();
    // hyper's client sends these as written, like the raw requests above.
    let client = Client::http1();
    for (target, app_path) in [
        ("/public/x", "/x"),
        ("/public/", "/"),
        ("/public", "/"),
        ("/admin/a%20b/c.d/..e/...", "/a%20b/c.d/..e/..."),
        ("/public/x?next=../admin", "/x?next=../admin"),
    ] {
        let reply = client.get(&meshd.url(target)).await;
        assert_eq!(reply.status, 200, "GET {target}: {}", reply.text());
        assert_eq!(reply.json()["path"], app_path, "GET {target}");
    }
    // The catch-all still gets what no other app matches.
    let (status, body) = raw_get(&meshd, "/other/x").await;
    assert_eq!(status, 200, "{body}");
}
