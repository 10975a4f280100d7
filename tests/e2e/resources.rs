//! Shared resources of the process that one tenant must not be able to use
//! up: file descriptors, name lookups and outbound connections, disk.

use crate::support::{empty, request, AppsDir, Client, Meshd};
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a test waits for something meshd does in the background.
const PATIENCE: Duration = Duration::from_secs(60);

/// A `/hoard` request that has opened what it could and now holds it: the
/// first line of its body ("opened K", maybe "; error: ..."), and the
/// response, whose drop ends the request and frees the files.
struct Hoard {
    first_line: String,
    _response: http::Response<hyper::body::Incoming>,
}

impl Hoard {
    /// How many files the guest holds open.
    fn opened(&self) -> usize {
        self.first_line
            .strip_prefix("opened ")
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("not a hoard report: {:?}", self.first_line))
    }
}

/// Starts `/APP/hoard` on `path` for `n` copies and waits until the guest
/// reports what it opened (it holds them for a minute after that).
async fn hoard(meshd: &Meshd, app: &str, path: &str, n: u32) -> Hoard {
    let url = meshd.url(&format!("/{app}/hoard?path={path}&n={n}&hold_ms=60000"));
    tokio::time::timeout(PATIENCE, hoard_report(&url))
        .await
        .unwrap_or_else(|_| panic!("no report from {url} within {PATIENCE:?}"))
}

async fn hoard_report(url: &str) -> Hoard {
    let response = Client::http1()
        .send(request("GET", url, empty()))
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), 200);
    let mut response = response;
    let mut text = Vec::new();
    while !text.contains(&b'\n') {
        let frame = response
            .body_mut()
            .frame()
            .await
            .expect("the guest reports before it ends")
            .expect("the body streams");
        if let Ok(data) = frame.into_data() {
            text.extend_from_slice(&data);
        }
    }
    let first_line = String::from_utf8_lossy(&text)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    Hoard {
        first_line,
        _response: response,
    }
}

/// An app with a read-only `[files]` dir holding `data.txt`.
fn deploy_reader(apps: &AppsDir, app: &str) {
    let dir = format!("{app}-data");
    std::fs::create_dir(apps.path().join(&dir)).unwrap();
    apps.write(&format!("{dir}/data.txt"), "data");
    apps.deploy(app, "hostile");
    apps.write(
        &format!("{app}.toml"),
        format!("[files]\ndir = \"{dir}\"\n"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_opening_files_without_end_gets_errors_and_the_daemon_goes_on() {
    let apps = AppsDir::with(&["hello"]);
    deploy_reader(&apps, "hoarder");
    // 256 descriptors in all: without a budget, three requests opening the
    // same file 3,000 times each would take every one of them.
    let meshd = Meshd::builder(apps.path()).max_open_files(256).start();

    // All guests together get a quarter of the limit, 64; each request's
    // [files] directory is one of them.
    let first = hoard(&meshd, "hoarder", "/data.txt", 40).await;
    assert_eq!(first.first_line, "opened 40");
    let second = hoard(&meshd, "hoarder", "/data.txt", 3000).await;
    assert_eq!(second.opened(), 64 - 41 - 1, "{}", second.first_line);
    assert!(second.first_line.contains("error"), "{}", second.first_line);
    meshd.wait_for_log(&[
        "app=hoarder",
        "guest cannot open a file",
        "--max-guest-descriptors",
    ]);
    let hoards = [first, second];

    // While they hold them: new connections are accepted and another app
    // answers on each.
    for _ in 0..50 {
        let reply = tokio::time::timeout(PATIENCE, Client::http1().get(&meshd.url("/hello")))
            .await
            .expect("a new connection is served");
        assert_eq!(reply.status, 200);
    }
    // The hoarding app itself still answers; its guests get an error on
    // open, not the process.
    let reply = Client::http1()
        .get(&meshd.url("/hoarder/read?path=/data.txt"))
        .await;
    assert!(
        reply.status == 200 || reply.status == 500,
        "{}",
        reply.status
    );

    // Ending the requests gives their descriptors back.
    drop(hoards);
    let started = Instant::now();
    loop {
        let text = Client::http1()
            .get(&meshd.url("/hoarder/read?path=/data.txt"))
            .await
            .text();
        if text == "read: data" {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "descriptors never freed: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(meshd.log().iter().all(|line| !line.contains("panicked")));
    meshd.wait_for_log(&["tenant runtime ready", "open_file_limit=256"]);
}

#[tokio::test]
async fn descriptors_are_budgeted_per_request_and_per_app() {
    let apps = AppsDir::new();
    deploy_reader(&apps, "one");
    deploy_reader(&apps, "two");
    let meshd = Meshd::builder(apps.path())
        .args(&[
            "--max-request-descriptors",
            "10",
            "--max-app-descriptors",
            "25",
        ])
        .start();
    // Each request's [files] directory takes one of its ten.
    let first = hoard(&meshd, "one", "/data.txt", 100).await;
    assert_eq!(first.opened(), 9, "{}", first.first_line);
    let second = hoard(&meshd, "one", "/data.txt", 100).await;
    assert_eq!(second.opened(), 9, "{}", second.first_line);
    // The app's third request gets what is left of its 25.
    let third = hoard(&meshd, "one", "/data.txt", 100).await;
    assert_eq!(third.opened(), 25 - 20 - 1, "{}", third.first_line);
    assert!(third.first_line.contains("error"), "{}", third.first_line);
    meshd.wait_for_log(&["app=one", "--max-app-descriptors"]);
    // Another app has its own budget.
    let other = hoard(&meshd, "two", "/data.txt", 100).await;
    assert_eq!(other.opened(), 9, "{}", other.first_line);
}

/// A TCP server that accepts connections, counts them and never answers.
async fn silent_server() -> (u16, Arc<AtomicUsize>, Arc<tokio::sync::Notify>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let notify = Arc::new(tokio::sync::Notify::new());
    {
        let (accepted, notify) = (accepted.clone(), notify.clone());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
                accepted.fetch_add(1, Ordering::SeqCst);
                notify.notify_one();
            }
        });
    }
    (port, accepted, notify)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_requests_in_flight_are_capped_per_app() {
    let (port, accepted, connected) = silent_server().await;
    let apps = AppsDir::new();
    apps.deploy("caller", "hostile");
    apps.write(
        "caller.toml",
        format!("[outbound]\nallow = [\"http://127.0.0.1:{port}\"]\n"),
    );
    apps.deploy("store", "platform");
    let meshd = Meshd::builder(apps.path())
        .args(&["--max-app-outbound", "1"])
        .start();
    let fetch = format!("/caller/fetch?url=http://127.0.0.1:{port}/");

    // One request waits on a server that never answers.
    let waiting = {
        let url = meshd.url(&fetch);
        tokio::spawn(async move { Client::http1().get(&url).await.text() })
    };
    connected.notified().await;
    // The app's next one fails at once, without connecting.
    let text = Client::http1().get(&meshd.url(&fetch)).await.text();
    assert_eq!(text, "error ErrorCode::ConnectionLimitReached");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    meshd.wait_for_log(&["app=caller", "--max-app-outbound"]);
    // Another app's key-value calls go on.
    let client = Client::http1();
    let set = client
        .post(&meshd.url("/store/set?bucket=b&key=k"), "v")
        .await;
    assert_eq!(set.text(), "ok");
    assert_eq!(
        client
            .get(&meshd.url("/store/get?bucket=b&key=k"))
            .await
            .text(),
        "v"
    );
    waiting.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_server_that_never_answers_times_out_and_holds_no_one_else() {
    // A DNS server on loopback that reads queries and never answers.
    let dns = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dns_addr = dns.local_addr().unwrap();
    let (queried_tx, mut queried) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, _)) = dns.recv_from(&mut buf).await {
            let _ = queried_tx.send(n);
        }
    });
    let apps = AppsDir::new();
    apps.deploy("caller", "hostile");
    apps.write(
        "caller.toml",
        "[outbound]\nallow = [\"http://slow.test:80\"]\n",
    );
    apps.deploy("store", "platform");
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("meshd.toml");
    std::fs::write(
        &config,
        format!("[outbound]\nnameservers = [\"{dns_addr}\"]\nlookup_timeout = \"3s\"\n"),
    )
    .unwrap();
    let meshd = Meshd::builder(apps.path())
        .args(&[
            "--config",
            config.to_str().unwrap(),
            "--max-app-lookups",
            "1",
        ])
        .start();

    let slow = {
        let url = meshd.url("/caller/fetch?url=http://slow.test/");
        tokio::spawn(async move { Client::http1().get(&url).await.text() })
    };
    // The lookup is in flight once the server has its query.
    queried.recv().await.expect("the name server is asked");
    // The app's second lookup is refused while the first one waits.
    let text = Client::http1()
        .get(&meshd.url("/caller/fetch?url=http://slow.test/"))
        .await
        .text();
    assert!(
        text.starts_with("error ErrorCode::DnsError") && text.contains("too many lookups"),
        "{text}"
    );
    // Another app's key-value calls go on meanwhile.
    let client = Client::http1();
    let set = client
        .post(&meshd.url("/store/set?bucket=b&key=k"), "v")
        .await;
    assert_eq!(set.text(), "ok");
    // The lookup ends at its timeout, and the guest learns why.
    assert_eq!(slow.await.unwrap(), "error ErrorCode::DnsTimeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_over_its_files_quota_cannot_write_until_it_frees_space() {
    let apps = AppsDir::new();
    for app in ["writer", "neighbour"] {
        std::fs::create_dir(apps.path().join(format!("{app}-data"))).unwrap();
        apps.deploy(app, "hostile");
        apps.write(
            &format!("{app}.toml"),
            format!("[files]\ndir = \"{app}-data\"\nwritable = true\n"),
        );
    }
    let meshd = Meshd::builder(apps.path())
        .args(&["--files-quota", "64KiB"])
        .start();
    let client = Client::http1();
    let get = |path: &str| {
        let url = meshd.url(path);
        let client = client.clone();
        async move { client.get(&url).await.text() }
    };

    // Under the quota at first: a 200 KiB write goes through (meshd sees
    // usage only after the fact).
    assert_eq!(get("/writer/fill?path=/big&kb=200").await, "wrote 200 KiB");
    // Once meshd has measured the directory, writes are refused.
    let started = Instant::now();
    let refused = loop {
        let text = get("/writer/fill?path=/small&kb=1").await;
        if text.starts_with("error") {
            break text;
        }
        assert!(started.elapsed() < PATIENCE, "never refused: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refused.to_lowercase().contains("quota"), "{refused}");
    meshd.wait_for_log(&["app=writer", "over its files quota"]);
    // Reading still works, and so does another app's writing.
    assert_eq!(
        get("/writer/read?path=/big").await.len(),
        "read: ".len() + 200 * 1024
    );
    assert_eq!(get("/neighbour/fill?path=/f&kb=1").await, "wrote 1 KiB");
    // Removing files brings the app back under its quota.
    assert_eq!(get("/writer/remove?path=/big").await, "removed");
    let started = Instant::now();
    loop {
        let text = get("/writer/fill?path=/small&kb=1").await;
        if text == "wrote 1 KiB" {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "never allowed again: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    meshd.wait_for_log(&["app=writer", "under its files quota again"]);
}
