//! `counter`: a durable counter kept in the app's own key-value bucket.
//!
//! - `POST /incr` adds one and answers the new value (plain decimal text).
//! - `GET /` answers the current value (`0` before the first increment).
//!
//! HTTP comes from the `wasip2` crate; the platform services (wit/app.wit,
//! world `platform`) from bindings generated here with wit-bindgen.

use std::io::Write as _;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wit_bindgen::generate!({
    path: "../../wit",
    world: "steelmesh:app/platform",
    generate_all,
});

use wasi::keyvalue::{atomics, store};

const KEY: &str = "counter";

struct Counter;

wasip2::http::proxy::export!(Counter);

impl wasip2::exports::http::incoming_handler::Guest for Counter {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let result = match (request.method(), path.as_str()) {
            (Method::Post, "/incr") => increment(),
            (Method::Get, "/") => current(),
            _ => return respond(response_out, 404, "try GET / or POST /incr\n"),
        };
        match result {
            Ok(value) => respond(response_out, 200, &value.to_string()),
            Err(e) => respond(response_out, 500, &format!("key-value error: {e:?}\n")),
        }
    }
}

fn increment() -> Result<u64, store::Error> {
    let bucket = store::open("")?;
    atomics::increment(&bucket, KEY, 1)
}

fn current() -> Result<u64, store::Error> {
    let bucket = store::open("")?;
    Ok(bucket
        .get(KEY)?
        .and_then(|bytes| String::from_utf8(bytes).ok()?.parse().ok())
        .unwrap_or(0))
}

fn respond(response_out: ResponseOutparam, status: u16, text: &str) {
    let response = OutgoingResponse::new(Fields::new());
    let _ = response.set_status_code(status);
    let body = response.body().expect("body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    let mut out = body.write().expect("stream is taken once");
    out.write_all(text.as_bytes()).expect("client receives the body");
    out.flush().expect("client receives the body");
    drop(out);
    OutgoingBody::finish(body, None).expect("body finishes once");
}
