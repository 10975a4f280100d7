//! Request and response bodies stream through meshd: 100 MB each way without
//! the daemon holding them in memory.

use crate::support::{count_body, generated, peak_rss, request, AppsDir, Client, Meshd};

const HUNDRED_MB: u64 = 100 * 1024 * 1024;

/// Memory meshd may add while moving 100 MB; holding the body whole would
/// take at least 100 MB more.
const STREAMING_HEADROOM: u64 = 64 * 1024 * 1024;

#[tokio::test]
async fn hundred_megabyte_upload_streams_through() {
    let apps = AppsDir::with(&["echo"]);
    let meshd = Meshd::start(apps.path());
    let client = Client::http1();
    // Warm up so the baseline includes the instance pool and compiled code.
    assert_eq!(client.get(&meshd.url("/echo")).await.status, 200);
    let before = peak_rss(meshd.pid());

    let reply = client
        .fetch(request(
            "POST",
            &meshd.url("/echo/upload"),
            generated(HUNDRED_MB),
        ))
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["body_length"], HUNDRED_MB);

    let after = peak_rss(meshd.pid());
    assert!(
        after < before + STREAMING_HEADROOM,
        "peak RSS grew from {before} to {after} bytes during a 100 MB upload"
    );
}

#[tokio::test]
async fn hundred_megabyte_download_streams_through() {
    let apps = AppsDir::with(&["stream"]);
    let meshd = Meshd::start(apps.path());
    let client = Client::http1();
    assert_eq!(client.get(&meshd.url("/stream")).await.status, 200);
    let before = peak_rss(meshd.pid());

    let resp = client
        .send(request(
            "GET",
            &meshd.url(&format!("/stream/bytes?n={HUNDRED_MB}")),
            crate::support::empty(),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(count_body(resp.into_body()).await.unwrap(), HUNDRED_MB);

    let after = peak_rss(meshd.pid());
    assert!(
        after < before + STREAMING_HEADROOM,
        "peak RSS grew from {before} to {after} bytes during a 100 MB download"
    );
}

#[tokio::test]
async fn large_bodies_stream_over_http2_too() {
    let apps = AppsDir::with(&["stream"]);
    let meshd = Meshd::start(apps.path());
    let client = Client::http2();
    let reply = client
        .fetch(request(
            "POST",
            &meshd.url("/stream/count"),
            generated(HUNDRED_MB / 4),
        ))
        .await
        .unwrap();
    assert_eq!(reply.text(), (HUNDRED_MB / 4).to_string());

    let resp = client
        .send(request(
            "GET",
            &meshd.url(&format!("/stream/bytes?n={}", HUNDRED_MB / 4)),
            crate::support::empty(),
        ))
        .await
        .unwrap();
    assert_eq!(count_body(resp.into_body()).await.unwrap(), HUNDRED_MB / 4);
}

#[tokio::test]
async fn a_body_written_whole_is_sent_with_its_length() {
    let apps = AppsDir::with(&["stream"]);
    let meshd = Meshd::start(apps.path());
    let client = Client::http1();
    // When the guest returned before meshd sent the head, the length is
    // known and sent. On a busy machine a guest can give way before it
    // returns (its slice is counted in wall-clock ticks); its response is
    // then streamed, chunked. So: every response is whole, and some carry
    // the length, none of them next to chunking.
    let mut with_length = 0;
    for _ in 0..10 {
        let reply = client.get(&meshd.url("/stream/")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "stream");
        match reply.headers.get("content-length") {
            Some(length) => {
                assert_eq!(length.as_bytes(), b"6", "headers: {:?}", reply.headers);
                assert!(reply.headers.get("transfer-encoding").is_none());
                with_length += 1;
            }
            None => assert_eq!(
                reply.headers.get("transfer-encoding").map(|v| v.as_bytes()),
                Some(&b"chunked"[..]),
                "headers: {:?}",
                reply.headers
            ),
        }
    }
    assert!(with_length > 0, "no response of 10 carried its length");
}

#[tokio::test]
async fn a_body_still_being_written_is_streamed_chunked() {
    let apps = AppsDir::with(&["stream"]);
    let meshd = Meshd::start(apps.path());
    let reply = Client::http1()
        .get(&meshd.url("/stream/drip?chunks=3&ms=20"))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.text(),
        "stream chunk 0\nstream chunk 1\nstream chunk 2\n"
    );
    assert_eq!(
        reply.headers.get("transfer-encoding").map(|v| v.as_bytes()),
        Some(&b"chunked"[..]),
        "headers: {:?}",
        reply.headers
    );
    assert!(reply.headers.get("content-length").is_none());
}
