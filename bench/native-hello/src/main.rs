//! `native-hello ADDR`: an HTTP/1.1 server that answers every request on every
//! path with `Hello from Steelmesh!`, like the `hello` example app. It prints
//! nothing; bench/rps.sh uses it as the native baseline.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use tokio::net::TcpListener;

const BODY: &[u8] = b"Hello from Steelmesh!\n";

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from_static(BODY)))
        .expect("static response is valid"))
}

#[tokio::main]
async fn main() {
    let addr: SocketAddr = match std::env::args().nth(1).map(|a| a.parse()) {
        Some(Ok(addr)) => addr,
        _ => {
            eprintln!("usage: native-hello ADDR   (e.g. 127.0.0.1:8081)");
            std::process::exit(2);
        }
    };
    let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| {
        eprintln!("native-hello: cannot listen on {addr}: {e}");
        std::process::exit(1);
    });
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(hello))
                .await;
        });
    }
}
