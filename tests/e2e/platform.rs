//! The platform services of wit/app.wit: wasi:keyvalue (per tenant, durable,
//! atomic, limited), wasi:config and wasi:logging, on both backends.

use crate::isolation::fails_to_start_with_config;
use crate::support::{AppsDir, Client, Meshd, MeshdBuilder, TestPki};
use meshd_testkit::NatsServer;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server of this test's own on a free loopback port.
struct Redis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        Redis::start_with(|port, _| vec!["--port".into(), port.to_string()])
    }

    /// A redis-server that speaks only TLS, with `pki`'s server certificate,
    /// and asks clients for a certificate `pki`'s CA signed.
    fn start_tls(pki: &TestPki) -> Redis {
        Redis::start_with(|port, dir| {
            pki.write_to(dir);
            let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
            vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                file("server.pem"),
                "--tls-key-file".into(),
                file("server.key"),
                "--tls-ca-cert-file".into(),
                file("ca.pem"),
                "--tls-auth-clients".into(),
                "yes".into(),
            ]
        })
    }

    /// Starts redis-server on a free port with the arguments `listen` gives
    /// for that port and the server's own directory.
    fn start_with(listen: impl FnOnce(u16, &Path) -> Vec<String>) -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let child = Redis::spawn(listen(port, dir.path()), port, dir.path());
        Redis { child, port, dir }
    }

    /// Kills the server (as a crash would) and waits until it is gone.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a new, empty server on the same port.
    fn restart(&mut self) {
        self.kill();
        let args = vec!["--port".to_owned(), self.port.to_string()];
        self.child = Redis::spawn(args, self.port, self.dir.path());
    }

    fn spawn(listen: Vec<String>, port: u16, dir: &Path) -> Child {
        let child = Command::new("redis-server")
            .args(listen)
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--dir"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Which backend a test runs against.
enum Backend {
    Redb,
    Redis(Redis),
    Nats(NatsServer),
}

impl Backend {
    fn redis() -> Backend {
        Backend::Redis(Redis::start())
    }

    /// A meshd.toml for this backend, with `extra` appended to `[keyvalue]`.
    fn config(&self, dir: &Path, extra: &str) -> std::path::PathBuf {
        let keyvalue = match self {
            Backend::Redb => "[keyvalue]\nbackend = \"redb\"\n".to_string(),
            Backend::Redis(redis) => format!(
                "[keyvalue]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:{}/\"\n",
                redis.port
            ),
            Backend::Nats(nats) => {
                format!("[keyvalue]\nbackend = \"nats\"\nurl = \"{}\"\n", nats.url())
            }
        };
        let path = dir.join("meshd.toml");
        std::fs::write(&path, format!("{keyvalue}{extra}")).unwrap();
        path
    }

    fn meshd(&self, apps: &AppsDir, config_dir: &Path, extra: &str) -> MeshdBuilder {
        let config = self.config(config_dir, extra);
        Meshd::builder(apps.path()).args(&["--config", config.to_str().unwrap()])
    }

    /// Starts meshd and waits until its store is ready (NATS connects in
    /// the background, after meshd listens).
    fn start(&self, apps: &AppsDir, config_dir: &Path, extra: &str) -> Meshd {
        let meshd = self.meshd(apps, config_dir, extra).start();
        if let Backend::Nats(_) = self {
            meshd.wait_for_log(&["key-value bucket ready in NATS JetStream"]);
        }
        meshd
    }
}

async fn counter_counts(backend: Backend) {
    let apps = AppsDir::with(&["counter"]);
    let dir = tempfile::tempdir().unwrap();
    let meshd = backend.start(&apps, dir.path(), "");
    let client = Client::http1();
    assert_eq!(client.get(&meshd.url("/counter")).await.text(), "0");
    for n in 1..=3 {
        let reply = client.post(&meshd.url("/counter/incr"), "").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), n.to_string());
    }
    assert_eq!(client.get(&meshd.url("/counter")).await.text(), "3");
}

async fn tenants_are_isolated(backend: Backend) {
    let apps = AppsDir::new();
    apps.deploy("a", "platform");
    apps.deploy("b", "platform");
    let dir = tempfile::tempdir().unwrap();
    let meshd = backend.start(&apps, dir.path(), "");
    let client = Client::http1();
    assert_eq!(
        client
            .post(&meshd.url("/a/set?bucket=&key=secret"), "a's")
            .await
            .text(),
        "ok"
    );
    assert_eq!(
        client
            .post(&meshd.url("/a/set?bucket=other&key=k"), "a2")
            .await
            .text(),
        "ok"
    );
    assert_eq!(
        client
            .get(&meshd.url("/a/get?bucket=&key=secret"))
            .await
            .text(),
        "a's"
    );
    // Same bucket names, another tenant: nothing.
    assert_eq!(
        client
            .get(&meshd.url("/b/get?bucket=&key=secret"))
            .await
            .text(),
        "none"
    );
    assert_eq!(
        client
            .get(&meshd.url("/b/exists?bucket=&key=secret"))
            .await
            .text(),
        "false"
    );
    assert_eq!(client.get(&meshd.url("/b/list?bucket=")).await.text(), "");
    assert_eq!(
        client.get(&meshd.url("/a/list?bucket=")).await.text(),
        "secret\n"
    );
    assert_eq!(
        client.get(&meshd.url("/a/list?bucket=other")).await.text(),
        "k\n"
    );
    // Batch operations and delete.
    assert_eq!(
        client
            .post(&meshd.url("/b/batch?bucket=x"), "")
            .await
            .text(),
        "a=1\nb=2\nmissing\n"
    );
    assert_eq!(
        client.get(&meshd.url("/b/list?bucket=x")).await.text(),
        "b\n"
    );
    assert_eq!(
        client
            .post(&meshd.url("/a/delete?bucket=&key=secret"), "")
            .await
            .text(),
        "ok"
    );
    assert_eq!(
        client
            .get(&meshd.url("/a/get?bucket=&key=secret"))
            .await
            .text(),
        "none"
    );
}

async fn concurrent_increments_are_exact(backend: Backend) {
    let apps = AppsDir::with(&["counter"]);
    let dir = tempfile::tempdir().unwrap();
    let meshd = backend.start(&apps, dir.path(), "");
    let url = meshd.url("/counter/incr");
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let url = url.clone();
        clients.spawn(async move {
            let client = Client::http1();
            for _ in 0..20 {
                let reply = client.post(&url, "").await;
                assert_eq!(reply.status, 200, "{}", reply.text());
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    assert_eq!(
        Client::http1().get(&meshd.url("/counter")).await.text(),
        "1000"
    );
}

async fn limits_and_quota_give_clear_errors(backend: Backend) {
    let apps = AppsDir::with(&["platform"]);
    let dir = tempfile::tempdir().unwrap();
    let meshd = backend.start(
        &apps,
        dir.path(),
        "max_key = \"8\"\nmax_value = \"16\"\nquota = \"250\"\n",
    );
    let client = Client::http1();
    let set = |key: &str, value: &str| {
        let url = meshd.url(&format!("/platform/set?bucket=&key={key}"));
        let client = client.clone();
        let value = value.to_owned();
        async move { client.post(&url, value).await.text() }
    };
    assert_eq!(
        set("toolongkey", "v").await,
        "error: key is 10 bytes; the limit is 8"
    );
    assert_eq!(
        set("k", &"v".repeat(17)).await,
        "error: value is 17 bytes; the limit is 16"
    );
    // Each entry is charged 64 bytes, the app's name ("platform", 8), the
    // bucket's (""), its key and its value.
    assert_eq!(set("k1", &"v".repeat(16)).await, "ok"); // 90 bytes
    assert_eq!(set("k2", &"v".repeat(16)).await, "ok"); // 180 bytes
    assert_eq!(
        set("k3", "vvv").await,
        "error: quota exceeded: the app may store 250 bytes"
    );
    assert_eq!(set("k1", "v").await, "ok"); // frees 15 bytes: 165
    assert_eq!(set("k3", "vvv").await, "ok"); // 242
    assert_eq!(
        set("k4", "").await,
        "error: quota exceeded: the app may store 250 bytes",
        "an empty entry is charged too"
    );
    let long_bucket = meshd.url(&format!("/platform/set?bucket={}&key=k", "b".repeat(257)));
    assert_eq!(
        client.post(&long_bucket, "v").await.text(),
        "error: bucket name is 257 bytes; the limit is 256"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_counts_on_redb() {
    counter_counts(Backend::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_counts_on_redis() {
    counter_counts(Backend::redis()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_on_redb() {
    tenants_are_isolated(Backend::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_on_redis() {
    tenants_are_isolated(Backend::redis()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_thousand_increments_end_at_exactly_1000_on_redb() {
    concurrent_increments_are_exact(Backend::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_thousand_increments_end_at_exactly_1000_on_redis() {
    concurrent_increments_are_exact(Backend::redis()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_quota_on_redb() {
    limits_and_quota_give_clear_errors(Backend::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_quota_on_redis() {
    limits_and_quota_give_clear_errors(Backend::redis()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_counts_on_nats() {
    counter_counts(Backend::Nats(NatsServer::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_on_nats() {
    tenants_are_isolated(Backend::Nats(NatsServer::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_thousand_increments_end_at_exactly_1000_on_nats() {
    concurrent_increments_are_exact(Backend::Nats(NatsServer::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_quota_on_nats() {
    limits_and_quota_give_clear_errors(Backend::Nats(NatsServer::start())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_redis_fails_keyvalue_calls_until_it_is_back() {
    let mut redis = Redis::start();
    let apps = AppsDir::with(&["counter", "hello"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("meshd.toml");
    std::fs::write(
        &config,
        format!(
            "[keyvalue]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:{}/\"\n",
            redis.port
        ),
    )
    .unwrap();
    let meshd = Meshd::builder(apps.path())
        .args(&["--config", config.to_str().unwrap()])
        .start();
    let client = Client::http1();
    let url = meshd.url("/counter/incr");
    let incr = || client.post(&url, "");
    assert_eq!(incr().await.text(), "1");

    // Redis dies: the app's calls fail (its own 500), other apps are served.
    redis.kill();
    let reply = incr().await;
    assert_eq!(reply.status, 500, "{}", reply.text());
    assert!(reply.text().contains("storage error"), "{}", reply.text());
    assert_eq!(client.get(&meshd.url("/hello")).await.status, 200);

    // A new (empty) Redis on the same address: meshd reconnects by itself.
    redis.restart();
    let started = Instant::now();
    loop {
        let reply = incr().await;
        if reply.status == 200 {
            assert_eq!(reply.text(), "1", "a fresh Redis starts the count again");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "keyvalue calls still fail 30 s after Redis came back: {}",
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_private_ca_and_a_client_certificate() {
    let pki = TestPki::new();
    let redis = Redis::start_tls(&pki);
    let config_dir = tempfile::tempdir().unwrap();
    let dir = pki.write_to(config_dir.path());
    let keyvalue = format!(
        "[keyvalue]\nbackend = \"redis\"\nurl = \"rediss://127.0.0.1:{}/\"\n",
        redis.port
    );
    let tls = "ca_file = \"ca.pem\"\nclient_cert_file = \"client.pem\"\nclient_key_file = \"client.key\"\n";
    let config = dir.join("meshd.toml");
    std::fs::write(&config, format!("{keyvalue}{tls}")).unwrap();

    let apps = AppsDir::with(&["counter"]);
    let meshd = Meshd::builder(apps.path())
        .args(&["--config", config.to_str().unwrap()])
        .start();
    let client = Client::http1();
    for n in 1..=3 {
        let reply = client.post(&meshd.url("/counter/incr"), "").await;
        assert_eq!(reply.text(), n.to_string());
    }
    drop(meshd);

    // Without the CA the server's certificate is unknown: meshd stops before
    // it binds (after the connection manager's retries, about 9 s), naming
    // the address and not the URL (which may hold a password).
    let stderr = fails_to_start_with_config(&keyvalue);
    let address = format!("cannot connect to Redis at 127.0.0.1:{}", redis.port);
    assert!(stderr.contains(&address), "{stderr}");
    let ca = dir.join("ca.pem");
    // TLS files with a plain redis:// URL are a mistake, said before
    // connecting.
    let plain = keyvalue.replace("rediss://", "redis://");
    let stderr = fails_to_start_with_config(&format!("{plain}ca_file = \"{}\"\n", ca.display()));
    assert!(stderr.contains("need a rediss:// url"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_hot_swap_restart_and_kill_9() {
    let apps = AppsDir::new();
    apps.deploy("kv", "platform");
    let data = tempfile::tempdir().unwrap();
    let start = || {
        Meshd::builder(apps.path())
            .data_dir(data.path())
            .args(&["--settle", "50ms"])
            .start()
    };
    let client = Client::http1();

    let mut meshd = start();
    for _ in 0..5 {
        client
            .post(&meshd.url("/kv/incr?bucket=&key=counter"), "")
            .await;
    }
    // Hot swap to other code that reads the same key.
    apps.deploy("kv", "counter");
    let started = Instant::now();
    loop {
        let text = client.get(&meshd.url("/kv/")).await.text();
        if text == "5" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "after the swap: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Graceful restart: SIGTERM, and meshd exits by itself, cleanly (a
    // kill would skip the graceful path this step is about).
    meshd.signal("TERM");
    let status = meshd.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status after SIGTERM: {status}");
    meshd.wait_for_log(&["meshd stopped", "all_closed=true"]);
    drop(meshd);
    let mut meshd = start();
    assert_eq!(client.get(&meshd.url("/kv/")).await.text(), "5");
    // Acknowledged writes survive kill -9.
    for n in 6..=8 {
        assert_eq!(
            client.post(&meshd.url("/kv/incr"), "").await.text(),
            n.to_string()
        );
    }
    meshd.signal("KILL");
    meshd.wait_exit(Duration::from_secs(10));
    drop(meshd);
    let meshd = start();
    assert_eq!(client.get(&meshd.url("/kv/")).await.text(), "8");
}

#[tokio::test]
async fn config_comes_from_the_manifest_and_missing_keys_are_none() {
    let apps = AppsDir::new();
    apps.deploy("p", "platform");
    apps.write(
        "p.toml",
        "[config]\nname = \"Steelmesh\"\ncolour = \"blue\"\n",
    );
    apps.deploy("q", "platform");
    let meshd = Meshd::start(apps.path());
    let client = Client::http1();
    assert_eq!(
        client.get(&meshd.url("/p/config?key=name")).await.text(),
        "Steelmesh"
    );
    assert_eq!(
        client.get(&meshd.url("/p/config?key=missing")).await.text(),
        "none"
    );
    assert_eq!(
        client.get(&meshd.url("/p/config-all")).await.text(),
        "colour=blue\nname=Steelmesh\n"
    );
    // Another app's config is not visible.
    assert_eq!(
        client.get(&meshd.url("/q/config?key=name")).await.text(),
        "none"
    );
}

#[tokio::test]
async fn logging_records_reach_the_log_with_app_and_level() {
    let apps = AppsDir::with(&["platform"]);
    let meshd = Meshd::start(apps.path());
    let client = Client::http1();
    assert_eq!(
        client
            .post(
                &meshd.url("/platform/log?level=warn"),
                "disk is getting full"
            )
            .await
            .text(),
        "logged"
    );
    let line = meshd.wait_for_log(&["disk is getting full"]);
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("app=platform"), "{line}");
    assert!(line.contains("context=platform-fixture"), "{line}");
    client
        .post(&meshd.url("/platform/log?level=info"), "all good")
        .await;
    let line = meshd.wait_for_log(&["all good"]);
    assert!(line.contains("INFO"), "{line}");
}
