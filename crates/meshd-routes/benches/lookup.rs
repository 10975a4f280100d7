//! Route lookup with 10 hosts and with 10,000 hosts (three routes each, plus
//! wildcard and host-less routes), in the same run: the cost per request
//! should not grow with the table. Each iteration routes a batch of requests
//! to different hosts spread over the table (so a large table is not read
//! from one warm cache line), and includes parsing the request's host, as
//! the front door does for every request.
//!
//! `cargo bench -p meshd-routes --bench lookup`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use meshd_routes::{RequestHost, Route, RouteTable};
use std::hint::black_box;

/// Requests per iteration.
const BATCH: usize = 100;

/// The routes of each exact host.
const HOST_ROUTES: [&str; 3] = ["/", "/api", "/api/v1"];

/// A table of `hosts` exact hosts (`tenant{i}.example.com`, three routes
/// each), `hosts / 10` wildcards (`*.wild{i}.example.net/`) and three
/// host-less routes.
fn table(hosts: usize) -> RouteTable<usize> {
    let mut t = RouteTable::new();
    let mut add = |route: String| {
        let n = t.len();
        t.insert(Route::parse(&route).expect("a valid route"), n)
            .expect("no conflict");
    };
    for i in 0..hosts {
        for path in HOST_ROUTES {
            add(format!("tenant{i}.example.com{path}"));
        }
    }
    for i in 0..(hosts / 10).max(1) {
        add(format!("*.wild{i}.example.net/"));
    }
    for path in ["/health", "/static", "/metrics-proxy"] {
        add(path.to_owned());
    }
    t
}

/// One kind of request: a host (or none) and a path, for the `k`th of
/// `hosts` (spread over the table).
struct Case {
    name: &'static str,
    request: fn(usize) -> (Option<String>, &'static str),
}

const CASES: [Case; 4] = [
    Case {
        name: "exact_host",
        request: |i| {
            (
                Some(format!("tenant{i}.example.com:443")),
                "/api/v1/users/42",
            )
        },
    },
    Case {
        name: "wildcard_host",
        request: |i| (Some(format!("cdn.wild{}.example.net", i / 10)), "/app.js"),
    },
    Case {
        name: "falls_to_any_host",
        request: |i| (Some(format!("unknown{i}.example.org")), "/health/live"),
    },
    Case {
        name: "no_host",
        request: |_| (None, "/static/css/site.css"),
    },
];

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    group.throughput(Throughput::Elements(BATCH as u64));
    for hosts in [10, 10_000] {
        let t = table(hosts);
        for case in &CASES {
            // BATCH requests to hosts spread evenly over the table.
            let requests: Vec<(Option<String>, &str)> = (0..BATCH)
                .map(|k| (case.request)(k * hosts / BATCH))
                .collect();
            for (host, path) in &requests {
                let host = host
                    .as_deref()
                    .map(|h| RequestHost::parse(h).unwrap().unwrap());
                assert!(t.route(host.as_ref(), path).is_some(), "{host:?}{path}");
            }
            let id = BenchmarkId::new(case.name, format!("{hosts}_hosts"));
            group.bench_function(id, |b| {
                b.iter(|| {
                    let mut found = 0;
                    for (host, path) in &requests {
                        let host = match host {
                            Some(raw) => RequestHost::parse(raw).ok().flatten(),
                            None => None,
                        };
                        if let Some(m) = t.route(host.as_ref(), black_box(path)) {
                            found += *m.value;
                        }
                    }
                    black_box(found)
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
