//! Host routing: manifest routes with a host (`shop.example.com/`,
//! `*.example.com/api`) chosen by HTTP/1 `Host` and HTTP/2 `:authority`, in
//! their order of precedence, with prefix stripping, conflicts and the admin
//! API. Requests go over fresh connections built by hand, so that each test
//! says exactly which host (or none) it sends.

use crate::support::admin::{Admin, Reply, TokenFile};
use crate::support::canary::answered_by;
use crate::support::{guest, AppsDir, Meshd};
use bytes::Bytes;
use http::header::HOST;
use http::{Request, Version};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// Reads a response whole.
async fn read(resp: http::Response<hyper::body::Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("the body arrives").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// `GET path` over a new HTTP/1 connection in `version`, with each of
/// `hosts` as a `Host` header (none if empty).
async fn get_http1(meshd: &Meshd, version: Version, hosts: &[&str], path: &str) -> Reply {
    let stream = TcpStream::connect(meshd.addr()).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1 handshake");
    tokio::spawn(conn);
    let mut req = Request::get(path).version(version);
    for host in hosts {
        req = req.header(HOST, *host);
    }
    let req = req.body(Empty::<Bytes>::new()).expect("a valid request");
    read(sender.send_request(req).await.expect("meshd answers")).await
}

/// `GET path` over HTTP/1.1 with `Host: host`.
async fn get_host(meshd: &Meshd, host: &str, path: &str) -> Reply {
    get_http1(meshd, Version::HTTP_11, &[host], path).await
}

/// `GET path` over a new h2c connection with `:authority` `authority` (and
/// no `Host` header).
async fn get_http2(meshd: &Meshd, authority: &str, path: &str) -> Reply {
    let stream = TcpStream::connect(meshd.addr()).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let req = Request::get(format!("http://{authority}{path}"))
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    let resp = sender.send_request(req).await.expect("meshd answers");
    assert_eq!(resp.version(), Version::HTTP_2);
    read(resp).await
}

/// The guest that sent `reply` (which must be a 200).
fn served_by(reply: &Reply, what: &str) -> &'static str {
    assert_eq!(reply.status, 200, "{what}: {}", reply.text());
    answered_by(&reply.body)
        .unwrap_or_else(|| panic!("{what}: a body of no guest: {}", reply.text()))
}

/// Three apps on `/`: `shop` (hello) on `shop.example.com`, `wild` (stream)
/// on `*.example.com`, `any` (stream-v2) on any host.
fn three_levels() -> (AppsDir, Meshd) {
    let apps = AppsDir::new();
    apps.deploy("shop", "hello");
    apps.write("shop.toml", "route = \"shop.example.com/\"\n");
    apps.deploy("wild", "stream");
    apps.write("wild.toml", "route = \"*.example.com/\"\n");
    apps.deploy("any", "stream-v2");
    apps.write("any.toml", "route = \"/\"\n");
    let meshd = Meshd::start(apps.path());
    (apps, meshd)
}

#[tokio::test]
async fn the_host_header_picks_exact_then_wildcard_then_any_host() {
    let (_apps, meshd) = three_levels();
    for (host, guest_name) in [
        ("shop.example.com", "hello"),
        ("blog.example.com", "stream"),
        ("x-1.example.com", "stream"),
        // One label only, and never the wildcard's own domain.
        ("a.b.example.com", "stream-v2"),
        ("example.com", "stream-v2"),
        ("other.org", "stream-v2"),
        ("127.0.0.1", "stream-v2"),
    ] {
        let reply = get_host(&meshd, host, "/").await;
        assert_eq!(served_by(&reply, host), guest_name, "Host: {host}");
    }
}

#[tokio::test]
async fn hosts_match_whatever_their_case_port_or_trailing_dot() {
    let (_apps, meshd) = three_levels();
    for host in [
        "SHOP.EXAMPLE.COM",
        "Shop.Example.com:8080",
        "shop.example.com:443",
        "shop.example.com.",
    ] {
        let reply = get_host(&meshd, host, "/").await;
        assert_eq!(served_by(&reply, host), "hello", "Host: {host}");
    }
    let reply = get_host(&meshd, "Blog.EXAMPLE.com:8080", "/").await;
    assert_eq!(served_by(&reply, "wildcard"), "stream");
}

#[tokio::test]
async fn http2_authority_routes_like_the_host_header() {
    let (_apps, meshd) = three_levels();
    let port = meshd.addr().port();
    for (authority, guest_name) in [
        (format!("shop.example.com:{port}"), "hello"),
        ("SHOP.example.COM".to_owned(), "hello"),
        (format!("blog.example.com:{port}"), "stream"),
        ("example.com".to_owned(), "stream-v2"),
        (format!("127.0.0.1:{port}"), "stream-v2"),
    ] {
        let reply = get_http2(&meshd, &authority, "/").await;
        assert_eq!(
            served_by(&reply, &authority),
            guest_name,
            ":authority {authority}"
        );
    }
}

#[tokio::test]
async fn a_request_without_a_host_matches_host_less_routes_only() {
    let (_apps, meshd) = three_levels();
    // HTTP/1.1 with an empty Host reaches the host-less app.
    let reply = get_http1(&meshd, Version::HTTP_11, &[""], "/").await;
    assert_eq!(served_by(&reply, "empty Host"), "stream-v2");
    // HTTP/1.0 without Host is routed there too, but wasmtime's wasi:http
    // cannot hand a request without an authority to the app.
    let reply = get_http1(&meshd, Version::HTTP_10, &[], "/").await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(
        reply.text().contains("missing authority"),
        "{}",
        reply.text()
    );

    // With host routes only, such a request finds nothing.
    let apps = AppsDir::new();
    apps.deploy("shop", "hello");
    apps.write("shop.toml", "route = \"shop.example.com/\"\n");
    apps.deploy("wild", "stream");
    apps.write("wild.toml", "route = \"*.example.com/\"\n");
    let meshd = Meshd::start(apps.path());
    let reply = get_http1(&meshd, Version::HTTP_10, &[], "/").await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    let reply = get_http1(&meshd, Version::HTTP_11, &[""], "/").await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    let reply = get_host(&meshd, "shop.example.com", "/").await;
    assert_eq!(served_by(&reply, "shop"), "hello");
}

#[tokio::test]
async fn host_routes_strip_their_prefix_and_other_paths_fall_through() {
    let apps = AppsDir::new();
    apps.deploy("api", "echo");
    apps.write("api.toml", "route = \"Shop.Example.com/api/\"\n");
    apps.deploy("site", "hello");
    apps.write("site.toml", "route = \"/\"\n");
    let meshd = Meshd::start(apps.path());

    let reply = get_host(&meshd, "shop.example.com:8080", "/api/users?page=2").await;
    assert_eq!(served_by(&reply, "api"), "echo");
    let json = reply.json();
    assert_eq!(json["path"], "/users?page=2");
    assert_eq!(json["x_forwarded_prefix"], "/api");
    // The app sees the authority the client sent.
    assert_eq!(json["authority"], "shop.example.com:8080");

    let json = get_http2(&meshd, "Shop.example.com", "/api").await.json();
    assert_eq!(json["path"], "/");
    assert_eq!(json["x_forwarded_prefix"], "/api");
    assert_eq!(json["authority"], "Shop.example.com");

    // Paths the host's routes do not cover, and other hosts, go to the
    // host-less routes.
    let reply = get_host(&meshd, "shop.example.com", "/apiary").await;
    assert_eq!(served_by(&reply, "/apiary"), "hello");
    let reply = get_host(&meshd, "other.example.com", "/api/users").await;
    assert_eq!(served_by(&reply, "other host"), "hello");
}

#[tokio::test]
async fn the_same_prefix_on_two_hosts_and_on_any_host_does_not_conflict() {
    let apps = AppsDir::new();
    apps.deploy("a", "hello");
    apps.write("a.toml", "route = \"a.example.com/api\"\n");
    apps.deploy("b", "echo");
    apps.write("b.toml", "route = \"b.example.com/api\"\n");
    apps.deploy("c", "stream");
    apps.write("c.toml", "route = \"/api\"\n");
    let meshd = Meshd::start(apps.path());

    assert_eq!(
        served_by(&get_host(&meshd, "a.example.com", "/api").await, "a"),
        "hello"
    );
    assert_eq!(
        served_by(&get_host(&meshd, "b.example.com", "/api").await, "b"),
        "echo"
    );
    assert_eq!(
        served_by(&get_host(&meshd, "c.example.com", "/api").await, "c"),
        "stream"
    );
    assert_eq!(meshd.count_log(&["already taken"]), 0);
    assert_eq!(meshd.count_log(&["app deployed"]), 3);
}

#[tokio::test]
async fn a_second_app_asking_for_the_same_host_and_prefix_is_refused_naming_both() {
    let apps = AppsDir::new();
    apps.deploy("alpha", "hello");
    apps.write("alpha.toml", "route = \"shop.example.com/api\"\n");
    apps.deploy("beta", "echo");
    // The same route, written differently.
    apps.write("beta.toml", "route = \"SHOP.example.com./api/\"\n");
    let meshd = Meshd::start(apps.path());

    let line = meshd.wait_for_log(&["route shop.example.com/api", "already taken"]);
    assert!(line.contains("beta.toml"), "{line}");
    assert!(line.contains("alpha.toml"), "{line}");
    let reply = get_host(&meshd, "shop.example.com", "/api").await;
    assert_eq!(served_by(&reply, "shop"), "hello");
}

#[tokio::test]
async fn unicode_hosts_route_by_their_punycode() {
    let apps = AppsDir::new();
    apps.deploy("books", "hello");
    apps.write("books.toml", "route = \"Bücher.example/\"\n");
    let meshd = Meshd::start(apps.path());
    let reply = get_host(&meshd, "xn--bcher-kva.example", "/").await;
    assert_eq!(served_by(&reply, "punycode"), "hello");
    meshd.wait_for_log(&["app deployed", "xn--bcher-kva.example/"]);
}

#[tokio::test]
async fn an_invalid_or_doubled_host_is_a_400() {
    let (_apps, meshd) = three_levels();
    for hosts in [
        &["shop.example.com/evil"][..],
        &["user@shop.example.com"],
        &["shop.example.com", "other.org"],
    ] {
        let reply = get_http1(&meshd, Version::HTTP_11, hosts, "/").await;
        assert_eq!(reply.status, 400, "{hosts:?}: {}", reply.text());
        assert!(reply.text().contains("invalid host"), "{}", reply.text());
    }
}

#[tokio::test]
async fn the_admin_api_deploys_and_shows_host_routes() {
    let token = TokenFile::new();
    let apps = AppsDir::new();
    let meshd = Meshd::builder(apps.path())
        .args(&["--admin", "127.0.0.1:0", "--admin-token-file", &token.arg()])
        .start();
    let admin = Admin::of(&meshd);
    let wasm = |name| std::fs::read(guest(name)).expect("the guest is readable");

    let reply = admin
        .put_form(
            "shop",
            &wasm("echo"),
            Some("route = \"Shop.Example.com/api\"\n"),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(admin.app("shop").await["route"], "shop.example.com/api");
    let reply = get_host(&meshd, "shop.example.com", "/api/x").await;
    assert_eq!(reply.json()["path"], "/x");

    // Another host's /api is free; the same host's is not.
    let reply = admin
        .put_form(
            "blog",
            &wasm("hello"),
            Some("route = \"blog.example.com/api\"\n"),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let reply = admin
        .put_form(
            "thief",
            &wasm("hello"),
            Some("route = \"shop.example.com/api/\"\n"),
        )
        .await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    let error = &reply.json()["error"];
    assert_eq!(error["kind"], "route_conflict");
    let message = error["message"].as_str().expect("a message");
    assert!(
        message.contains("route shop.example.com/api asked for by app thief")
            && message.contains("held by app shop"),
        "{message}"
    );
    let reply = get_host(&meshd, "shop.example.com", "/api/x").await;
    assert_eq!(served_by(&reply, "shop"), "echo");
    let reply = get_host(&meshd, "blog.example.com", "/api/x").await;
    assert_eq!(served_by(&reply, "blog"), "hello");
}

#[tokio::test]
async fn the_access_log_names_the_host_a_request_was_routed_by() {
    let apps = AppsDir::new();
    apps.deploy("shop", "hello");
    apps.write("shop.toml", "route = \"shop.example.com/\"\n");
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("access.log");
    let meshd = Meshd::builder(apps.path())
        .args(&["--log-format", "json", "--access-log"])
        .args(&[log_path.to_str().expect("utf-8 path")])
        .start();

    let reply = get_host(&meshd, "Shop.Example.com:8080", "/a").await;
    assert_eq!(served_by(&reply, "shop"), "hello");
    let reply = get_http1(&meshd, Version::HTTP_11, &[""], "/b").await;
    assert_eq!(reply.status, 404);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let lines: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.lines().count() >= 2 {
            break text
                .lines()
                .map(|l| serde_json::from_str(l).expect("a JSON line"))
                .collect();
        }
        assert!(std::time::Instant::now() < deadline, "two lines: {text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let line = |path: &str| {
        lines
            .iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("a line for {path}: {lines:#?}"))
    };
    assert_eq!(line("/a")["host"], "shop.example.com");
    assert_eq!(line("/a")["app"], "shop");
    assert_eq!(line("/b")["host"], "-");
    assert_eq!(line("/b")["app"], "-");
}

#[tokio::test]
async fn a_held_host_route_survives_a_restart_and_other_hosts_stay_free() {
    let apps = AppsDir::new();
    let data = tempfile::tempdir().expect("temp dir");
    apps.deploy("shop", "hello");
    apps.write("shop.toml", "route = \"shop.example.com/api\"\n");
    let meshd = Meshd::builder(apps.path()).data_dir(data.path()).start();
    let reply = get_host(&meshd, "shop.example.com", "/api").await;
    assert_eq!(served_by(&reply, "shop"), "hello");
    drop(meshd);

    // While meshd is down, an app that sorts first by name asks for the same
    // host and prefix (written differently); another asks for /api on
    // another host, which is free.
    apps.deploy("aaa", "echo");
    apps.write("aaa.toml", "route = \"Shop.Example.com/api/\"\n");
    apps.deploy("aab", "stream");
    apps.write("aab.toml", "route = \"blog.example.com/api\"\n");

    let meshd = Meshd::builder(apps.path()).data_dir(data.path()).start();
    meshd.wait_for_log(&[
        "route shop.example.com/api asked for by app aaa",
        "held by app shop",
    ]);
    let reply = get_host(&meshd, "shop.example.com", "/api").await;
    assert_eq!(served_by(&reply, "shop"), "hello");
    meshd.wait_for_log(&["app deployed", "app=aab", "route=blog.example.com/api"]);
    let reply = get_host(&meshd, "blog.example.com", "/api").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(meshd.count_log(&["app deployed", "app=aaa"]), 0);
}
