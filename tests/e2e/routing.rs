//! Routing by prefix, prefix stripping, 404, conflicts and manifests, and the
//! front door's flags and start-up with many apps.

use crate::support::{AppsDir, Client, Meshd};

#[tokio::test]
async fn each_app_is_mounted_at_its_name() {
    let apps = AppsDir::with(&["hello", "echo"]);
    let meshd = Meshd::start(apps.path());
    let client = Client::http1();

    let reply = client.get(&meshd.url("/hello")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "Hello from Steelmesh!\n");

    let reply = client.get(&meshd.url("/echo")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["method"], "GET");
}

#[tokio::test]
async fn prefix_matches_on_segment_boundaries_and_is_stripped() {
    let apps = AppsDir::with(&["echo"]);
    let meshd = Meshd::start(apps.path());
    let client = Client::http1();

    for (path, app_path) in [
        ("/echo", "/"),
        ("/echo/", "/"),
        ("/echo/x", "/x"),
        ("/echo/x?q=1", "/x?q=1"),
        ("/echo?q=1", "/?q=1"),
        ("/echo/a/b/", "/a/b/"),
    ] {
        let reply = client.get(&meshd.url(path)).await;
        assert_eq!(reply.status, 200, "{path}");
        let json = reply.json();
        assert_eq!(json["path"], app_path, "{path}");
        assert_eq!(json["x_forwarded_prefix"], "/echo", "{path}");
    }

    let reply = client.get(&meshd.url("/echoworld")).await;
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn client_cannot_spoof_the_forwarded_prefix() {
    let apps = AppsDir::with(&["echo"]);
    let meshd = Meshd::start(apps.path());
    let req = http::Request::builder()
        .uri(meshd.url("/echo/x"))
        .header("x-forwarded-prefix", "/evil")
        .body(crate::support::empty())
        .unwrap();
    let reply = Client::http1().fetch(req).await.unwrap();
    assert_eq!(reply.json()["x_forwarded_prefix"], "/echo");
}

#[tokio::test]
async fn hop_by_hop_and_proxy_headers_never_reach_the_guest() {
    let apps = AppsDir::with(&["echo"]);
    let meshd = Meshd::start(apps.path());
    let req = http::Request::builder()
        .uri(meshd.url("/echo/x"))
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("proxy-connection", "keep-alive")
        .header("http2-settings", "AAMAAABkAAQAAP__")
        .header("x-kept", "yes")
        .body(crate::support::empty())
        .unwrap();
    let reply = Client::http1().fetch(req).await.unwrap();
    assert_eq!(reply.status, 200);
    let headers = &reply.json()["headers"];
    for name in ["proxy-authorization", "proxy-connection", "http2-settings"] {
        assert!(
            headers.get(name).is_none(),
            "the guest saw {name}: {headers}"
        );
    }
    assert_eq!(headers["x-kept"], "yes", "{headers}");
}

#[tokio::test]
async fn longest_prefix_wins_and_root_catches_the_rest() {
    let apps = AppsDir::new();
    apps.deploy("site", "echo");
    apps.write("site.toml", "route = \"/\"\n");
    apps.deploy("api", "echo");
    apps.write("api.toml", "route = \"/api\"\n");
    apps.deploy("v1", "hello");
    apps.write("v1.toml", "route = \"/api/v1/\"\n");
    let meshd = Meshd::start(apps.path());
    let client = Client::http1();

    let reply = client.get(&meshd.url("/api/v1/users")).await;
    assert_eq!(reply.text(), "Hello from Steelmesh!\n");

    let json = client.get(&meshd.url("/api/v10")).await.json();
    assert_eq!(json["path"], "/v10");
    assert_eq!(json["x_forwarded_prefix"], "/api");

    let json = client.get(&meshd.url("/api")).await.json();
    assert_eq!(json["path"], "/");

    let json = client.get(&meshd.url("/elsewhere/deep?x=1")).await.json();
    assert_eq!(json["path"], "/elsewhere/deep?x=1");
    assert_eq!(json["x_forwarded_prefix"], serde_json::Value::Null);

    let json = client.get(&meshd.url("/")).await.json();
    assert_eq!(json["path"], "/");
}

#[tokio::test]
async fn unmatched_path_is_a_plain_text_404() {
    let apps = AppsDir::with(&["hello"]);
    let meshd = Meshd::start(apps.path());
    let reply = Client::http1().get(&meshd.url("/nothing/here")).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(reply.text(), "no app is mounted at /nothing/here\n");
}

#[tokio::test]
async fn second_app_claiming_a_route_is_refused_and_the_first_serves() {
    let apps = AppsDir::new();
    apps.deploy("alpha", "hello");
    apps.deploy("beta", "echo");
    apps.write("beta.toml", "route = \"/alpha\"\n");
    let meshd = Meshd::start(apps.path());

    let line = meshd.wait_for_log(&["route /alpha", "already taken"]);
    assert!(line.contains("beta.toml"), "{line}");
    assert!(line.contains("alpha.wasm"), "{line}");

    let client = Client::http1();
    assert_eq!(
        client.get(&meshd.url("/alpha")).await.text(),
        "Hello from Steelmesh!\n"
    );
    assert_eq!(client.get(&meshd.url("/beta")).await.status, 404);
}

#[tokio::test]
async fn bad_manifest_names_the_file_and_key_and_skips_only_that_app() {
    let apps = AppsDir::with(&["hello"]);
    apps.deploy("typo", "echo");
    apps.write("typo.toml", "rout = \"/x\"\n");
    apps.deploy("broken", "echo");
    apps.write("broken.toml", "route = \n");
    apps.deploy("relative", "echo");
    apps.write("relative.toml", "route = \"nope\"\n");
    let meshd = Meshd::start(apps.path());

    let line = meshd.wait_for_log(&["app not loaded", "typo.toml"]);
    assert!(line.contains("unknown field `rout`"), "{line}");
    meshd.wait_for_log(&["app not loaded", "broken.toml"]);
    let line = meshd.wait_for_log(&["app not loaded", "relative.toml"]);
    assert!(line.contains("`route`"), "{line}");

    let client = Client::http1();
    for path in ["/typo", "/broken", "/relative", "/x"] {
        assert_eq!(client.get(&meshd.url(path)).await.status, 404, "{path}");
    }
    assert_eq!(client.get(&meshd.url("/hello")).await.status, 200);
}

#[tokio::test]
async fn http2_prior_knowledge_is_served_on_the_same_port() {
    let apps = AppsDir::with(&["hello", "echo"]);
    let meshd = Meshd::start(apps.path());
    let client = Client::http2();

    let reply = client.get(&meshd.url("/hello")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "Hello from Steelmesh!\n");

    let json = client.post(&meshd.url("/echo/x?y=2"), "hello").await.json();
    assert_eq!(json["method"], "POST");
    assert_eq!(json["path"], "/x?y=2");
    assert_eq!(json["body_length"], 5);
    assert_eq!(json["x_forwarded_prefix"], "/echo");

    // And HTTP/1.1 on the same port still works.
    let reply = Client::http1().get(&meshd.url("/hello")).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn http1_keep_alive_serves_several_requests_on_one_connection() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let apps = AppsDir::with(&["hello"]);
    let meshd = Meshd::start(apps.path());
    let mut socket = tokio::net::TcpStream::connect(meshd.addr()).await.unwrap();
    let mut received = String::new();
    for i in 1..=3 {
        socket
            .write_all(b"GET /hello/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        while received.matches("Hello from Steelmesh!").count() < i {
            let n = tokio::time::timeout(std::time::Duration::from_secs(30), socket.read(&mut buf))
                .await
                .expect("response arrives")
                .unwrap();
            assert!(
                n > 0,
                "server closed the keep-alive connection after {received:?}"
            );
            received.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert_eq!(received.matches("HTTP/1.1 200 OK").count(), 3, "{received}");
}

#[tokio::test]
async fn http10_request_without_host_is_a_clear_400() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let apps = AppsDir::with(&["hello"]);
    let meshd = Meshd::start(apps.path());
    let mut socket = tokio::net::TcpStream::connect(meshd.addr()).await.unwrap();
    socket
        .write_all(b"GET /hello HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        socket.read_to_string(&mut response),
    )
    .await
    .expect("response arrives")
    .unwrap();
    assert!(response.starts_with("HTTP/1.0 400"), "{response}");
    assert!(response.contains("bad request"), "{response}");
}

#[tokio::test]
async fn workers_flag_sets_the_serving_threads() {
    let apps = AppsDir::with(&["hello"]);
    let meshd = Meshd::builder(apps.path())
        .args(&["--workers", "1"])
        .start();
    meshd.wait_for_log(&["tenant runtime ready", "workers=1"]);
    assert_eq!(Client::http1().get(&meshd.url("/hello")).await.status, 200);
}

#[tokio::test]
async fn many_apps_load_under_a_small_instance_budget() {
    // Every new app is instantiated once before it takes traffic. Forty at
    // once would need far more than the pool of a `--max-instances 4` meshd
    // holds; the checks must take turns rather than refuse good apps.
    let apps = AppsDir::new();
    for i in 0..40 {
        apps.deploy(&format!("app{i:02}"), "hello");
    }
    let meshd = Meshd::builder(apps.path())
        .args(&["--max-instances", "4"])
        .start();
    meshd.wait_for_log(&["meshd listening on", "apps=40 failed=0"]);
    let client = Client::http1();
    for i in [0, 17, 39] {
        assert_eq!(
            client.get(&meshd.url(&format!("/app{i:02}"))).await.status,
            200
        );
    }
}
