//! The harness's end-of-test check fails a test whose meshd died or logged a
//! panic (without this file, nothing would show that the check can fail).

use crate::support::{AppsDir, Meshd};
use std::time::Duration;

#[test]
#[should_panic(expected = "meshd exited during the test")]
fn a_test_whose_meshd_died_fails() {
    let apps = AppsDir::with(&["hello"]);
    let mut meshd = Meshd::start(apps.path());
    // Killed behind the harness's back (not with `signal`, which would say
    // the test stops meshd on purpose).
    let status = std::process::Command::new("kill")
        .args(["-KILL", &meshd.pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let started = std::time::Instant::now();
    while !meshd.has_exited() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "kill -9 did not end meshd"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Dropping `meshd` at the end of the test runs the check.
}

#[test]
#[should_panic(expected = "meshd panicked during the test")]
fn a_test_whose_meshd_logged_panicked_fails() {
    // meshd names a file it skips in its own log: a line of meshd's (not a
    // guest's) with "panicked" in it, which the check must catch.
    let apps = AppsDir::with(&["hello"]);
    apps.write("panicked!.wasm", b"");
    let meshd = Meshd::start(apps.path());
    meshd.wait_for_log(&["skipping", "panicked!.wasm"]);
}

#[test]
fn a_test_that_stops_meshd_on_purpose_passes() {
    let apps = AppsDir::with(&["hello"]);
    let meshd = Meshd::start(apps.path());
    meshd.signal("TERM");
}

#[test]
fn a_guest_panic_is_not_a_meshd_panic() {
    let apps = AppsDir::with(&["hostile"]);
    let meshd = Meshd::start(apps.path());
    let mut socket = std::net::TcpStream::connect(meshd.addr()).unwrap();
    std::io::Write::write_all(
        &mut socket,
        b"GET /hostile/panic HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
    )
    .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut socket, &mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 500"), "{response}");
    meshd.wait_for_log(&["hostile guest panicked on purpose"]);
}
