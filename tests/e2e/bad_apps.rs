//! Broken files at start-up are skipped with an error naming the file and
//! the cause; every other app serves.

use crate::support::{guest, AppsDir, Client, Meshd};

/// Starts meshd with `hello` plus one bad app `bad.wasm` of the given bytes,
/// and returns the error logged for it.
async fn start_with_bad_app(bytes: &[u8]) -> String {
    let apps = AppsDir::with(&["hello"]);
    apps.write("bad.wasm", bytes);
    let meshd = Meshd::start(apps.path());
    let line = meshd.wait_for_log(&["app not loaded", "bad.wasm"]);
    let client = Client::http1();
    assert_eq!(client.get(&meshd.url("/bad")).await.status, 404);
    assert_eq!(
        client.get(&meshd.url("/hello")).await.text(),
        "Hello from Steelmesh!\n"
    );
    line
}

#[tokio::test]
async fn empty_file() {
    let line = start_with_bad_app(b"").await;
    assert!(line.contains("the file is empty"), "{line}");
}

#[tokio::test]
async fn garbage_bytes() {
    let line = start_with_bad_app(b"this is not wasm at all, just text").await;
    assert!(line.contains("not a WebAssembly file"), "{line}");
}

#[tokio::test]
async fn truncated_component() {
    let whole = std::fs::read(guest("hello")).unwrap();
    let line = start_with_bad_app(&whole[..whole.len() / 2]).await;
    assert!(line.contains("invalid component"), "{line}");
}

#[tokio::test]
async fn core_module_instead_of_component() {
    let module = wat::parse_str("(module (func (export \"f\")))").unwrap();
    let line = start_with_bad_app(&module).await;
    assert!(
        line.contains("core WebAssembly module, not a component"),
        "{line}"
    );
}

#[tokio::test]
async fn component_for_another_world() {
    // A valid component that exports nothing: not a wasi:http/proxy app.
    let component = wat::parse_str("(component)").unwrap();
    let line = start_with_bad_app(&component).await;
    assert!(line.contains("not a wasi:http/proxy component"), "{line}");
}

#[tokio::test]
async fn component_importing_what_the_host_does_not_provide() {
    let component = wat::parse_str(
        r#"(component (import "example:missing/thing@1.0.0" (instance (export "f" (func)))))"#,
    )
    .unwrap();
    let line = start_with_bad_app(&component).await;
    assert!(line.contains("cannot link"), "{line}");
    assert!(line.contains("example:missing/thing@1.0.0"), "{line}");
}

#[tokio::test]
async fn all_bad_kinds_at_once_leave_the_good_apps_serving() {
    let apps = AppsDir::with(&["hello", "echo"]);
    let whole = std::fs::read(guest("hello")).unwrap();
    apps.write("empty.wasm", b"");
    apps.write("garbage.wasm", b"\x7fELF garbage");
    apps.write("truncated.wasm", &whole[..1000]);
    let meshd = Meshd::start(apps.path());
    for name in ["empty.wasm", "garbage.wasm", "truncated.wasm"] {
        meshd.wait_for_log(&["app not loaded", name]);
    }
    meshd.wait_for_log(&["meshd listening", "apps=2", "failed=3"]);
    let client = Client::http1();
    assert_eq!(client.get(&meshd.url("/hello")).await.status, 200);
    assert_eq!(client.get(&meshd.url("/echo")).await.status, 200);
}

#[tokio::test]
async fn app_that_cannot_instantiate_within_its_limits_is_refused_at_load() {
    let apps = AppsDir::with(&["echo"]);
    apps.deploy("tiny", "hello");
    // A Rust component's initial memory alone is larger than this.
    apps.write("tiny.toml", "[limits]\nmemory = \"64KiB\"\n");
    let meshd = Meshd::start(apps.path());
    let line = meshd.wait_for_log(&["app not loaded", "app=tiny"]);
    assert!(line.contains("cannot instantiate"), "{line}");
    assert!(line.contains("memory limit exceeded"), "{line}");
    let client = Client::http1();
    assert_eq!(client.get(&meshd.url("/tiny")).await.status, 404);
    assert_eq!(client.get(&meshd.url("/echo")).await.status, 200);
}

#[tokio::test]
async fn a_wasm_over_the_size_limit_is_refused_unread_and_the_old_version_serves() {
    let apps = AppsDir::new();
    apps.deploy("app", "hello");
    let meshd = Meshd::builder(apps.path())
        .args(&["--max-wasm-size", "200KiB", "--settle", "50ms"])
        .start();
    let client = Client::http1();
    let hello = "Hello from Steelmesh!\n";
    assert_eq!(client.get(&meshd.url("/app")).await.text(), hello);

    // A file past the limit replaces it: refused, naming the file and the
    // limit, and the running version keeps serving.
    let mut big = std::fs::read(guest("hello")).unwrap();
    big.resize(300 << 10, 0);
    apps.write_atomically("app.wasm", &big);
    let line = meshd.wait_for_log(&["larger than --max-wasm-size"]);
    assert!(
        line.contains("app.wasm") && line.contains("200.0 KiB"),
        "{line}"
    );
    assert_eq!(client.get(&meshd.url("/app")).await.text(), hello);
}
