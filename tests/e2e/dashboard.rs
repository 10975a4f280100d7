//! The dashboard (`GET /` on the admin listener), end to end: its files are
//! served without the token under a strict Content-Security-Policy, and it
//! works in a real browser (Debian's chromium driven by playwright-core,
//! tests/browser/dashboard.mjs) against a real meshd serving 1,000 apps.

use crate::support::admin::{TokenFile, TOKEN};
use crate::support::{guest, repo_root, shared_cache_dir, AppsDir, Client, Meshd};
use std::process::Command;
use std::time::{Duration, Instant};

/// How many apps the browser test's meshd serves: the examples and copies
/// of hello.
const APP_COUNT: usize = 1000;
/// The example apps among them.
const EXAMPLES: [&str; 4] = ["hello", "echo", "counter", "hostile"];

fn start(apps: &AppsDir, token: &TokenFile) -> Meshd {
    Meshd::builder(apps.path())
        .args(&[
            "--admin",
            "127.0.0.1:0",
            "--admin-token-file",
            &token.arg(),
            "--guest-log-rate",
            "0",
        ])
        .cache_dir(&shared_cache_dir())
        .start()
}

#[tokio::test]
async fn the_page_needs_no_token_and_is_served_with_a_strict_policy_while_the_api_needs_it() {
    let apps = AppsDir::with(&["hello"]);
    let token = TokenFile::new();
    let meshd = start(&apps, &token);
    let admin = meshd.admin_url();
    let client = Client::http1();

    let page = client.get(&format!("{admin}/")).await;
    assert_eq!(page.status, 200, "{}", page.text());
    let header = |name: &str| {
        page.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header: {:?}", page.headers))
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert!(header("content-type").starts_with("text/html"));
    let policy = header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.contains(directive), "{policy}");
    }
    assert!(!policy.contains("unsafe-inline"), "{policy}");
    assert_eq!(header("x-content-type-options"), "nosniff");
    let html = page.text();
    // No inline script (the policy would block it), nothing from elsewhere.
    assert!(!html.contains("<script>"), "{html}");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    for asset in ["/dashboard/dashboard.js", "/dashboard/dashboard.css"] {
        assert!(html.contains(asset), "{html}");
        let reply = client.get(&format!("{admin}{asset}")).await;
        assert_eq!(reply.status, 200, "{asset}");
        assert!(reply.headers.contains_key("content-security-policy"));
    }
    // The script fetches nothing but this origin: the only absolute URL in
    // it is the SVG namespace.
    let script = client
        .get(&format!("{admin}/dashboard/dashboard.js"))
        .await
        .text();
    let style = client
        .get(&format!("{admin}/dashboard/dashboard.css"))
        .await
        .text();
    assert!(
        !style.contains("http") && !style.contains("@import") && !style.contains("url("),
        "{style}"
    );
    let urls: Vec<&str> = script
        .matches("http://")
        .chain(script.matches("https://"))
        .collect();
    assert_eq!(urls, ["http://"], "{script}");
    assert!(script.contains("'http://www.w3.org/2000/svg'"));

    // Every API call needs the token, the dashboard's included.
    for path in [
        "/v1/apps",
        "/v1/stats",
        "/v1/apps/hello/logs",
        "/v1/apps/hello/stats",
    ] {
        let reply = client.get(&format!("{admin}{path}")).await;
        assert_eq!(reply.status, 401, "{path}");
    }
    assert_eq!(client.get(&format!("{admin}/nothing")).await.status, 401);
}

#[tokio::test]
async fn the_dashboard_works_in_a_real_browser_with_1000_apps() {
    let root = repo_root();
    let browser_dir = root.join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed in {}: run `npm ci` there (`cargo xtask test` does)",
        browser_dir.display()
    );
    let apps = AppsDir::with(&EXAMPLES);
    let hello = std::fs::read(guest("hello")).expect("the hello guest");
    for i in EXAMPLES.len()..APP_COUNT {
        std::fs::write(apps.path().join(format!("bulk-{i:04}.wasm")), &hello)
            .expect("write an app");
    }
    let token = TokenFile::new();
    let meshd = start(&apps, &token);
    let admin = meshd.admin_url();
    // 1,000 apps take a while to load on a busy machine (the whole suite
    // runs at once): wait for all of them, longer than wait_for_answer does.
    let started = Instant::now();
    loop {
        let ready = Client::http1().get(&format!("{admin}/readyz")).await;
        if ready.status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "meshd did not load its 1,000 apps within 5 minutes: {}",
            ready.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("meshd loaded {APP_COUNT} apps in {:?}", started.elapsed());

    let screenshots = root.join("target/browser-screenshots");
    let mut node = tokio::process::Command::from(Command::new("node"));
    node.arg(browser_dir.join("dashboard.mjs"))
        .kill_on_drop(true)
        .current_dir(&browser_dir)
        .env("MESHD_ADMIN_URL", &admin)
        .env("MESHD_ADMIN_TOKEN", TOKEN)
        .env("MESHD_URL", meshd.url(""))
        .env("HELLO_WASM", guest("hello"))
        .env("ECHO_WASM", guest("echo"))
        .env("APP_COUNT", APP_COUNT.to_string())
        .env("SCREENSHOT_DIR", &screenshots);
    let output = tokio::time::timeout(Duration::from_secs(600), node.output())
        .await
        .expect("the browser test did not finish within 10 minutes")
        .expect("run node (Debian's nodejs)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}{stderr}");
    assert!(
        output.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("every step passed"), "{stdout}");
    assert!(screenshots.join("dashboard.png").is_file());
}
