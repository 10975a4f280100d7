//! `echo`: answers with JSON describing the request as the app sees it:
//! method, scheme, authority (the client's `Host` or `:authority`), path (with
//! query), headers, body length and `x-forwarded-prefix`.
//! The body is counted as it streams in, never held whole.

use std::io::Write as _;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse,
    ResponseOutparam, Scheme,
};

struct Echo;

wasip2::http::proxy::export!(Echo);

impl wasip2::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let method = method_name(&request.method());
        let path = request.path_with_query().unwrap_or_default();
        let authority = request.authority();
        let scheme = match request.scheme() {
            Some(Scheme::Http) => Some("http".to_owned()),
            Some(Scheme::Https) => Some("https".to_owned()),
            Some(Scheme::Other(other)) => Some(other),
            None => None,
        };
        let mut headers = serde_json::Map::new();
        let mut prefix = serde_json::Value::Null;
        for (name, value) in request.headers().entries() {
            let value = String::from_utf8_lossy(&value).into_owned();
            if name == "x-forwarded-prefix" {
                prefix = value.clone().into();
            }
            headers.insert(name, value.into());
        }
        let body_length = match request.consume() {
            Ok(body) => count_body(body),
            Err(()) => 0,
        };
        let reply = serde_json::json!({
            "method": method,
            "scheme": scheme,
            "authority": authority,
            "path": path,
            "headers": headers,
            "body_length": body_length,
            "x_forwarded_prefix": prefix,
        });
        respond(response_out, reply.to_string().as_bytes());
    }
}

fn count_body(body: IncomingBody) -> u64 {
    let mut total = 0u64;
    {
        let Ok(mut stream) = body.stream() else {
            return 0;
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match std::io::Read::read(&mut stream, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
    }
    IncomingBody::finish(body);
    total
}

fn respond(response_out: ResponseOutparam, bytes: &[u8]) {
    let headers = Fields::from_list(&[(
        "content-type".to_string(),
        b"application/json".to_vec(),
    )])
    .expect("static headers are valid");
    let response = OutgoingResponse::new(headers);
    let body = response.body().expect("body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    let mut out = body.write().expect("stream is taken once");
    out.write_all(bytes).expect("client receives the body");
    out.flush().expect("client receives the body");
    drop(out);
    OutgoingBody::finish(body, None).expect("body finishes once");
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other.clone(),
    }
}
