//! End-to-end tests: every test starts a real `meshd` process on a loopback
//! port, serves real components built from `apps-example/`, and talks to it
//! with real HTTP clients.

mod support;

mod bad_apps;
mod bodies;
mod cache;
mod front_door;
mod isolation;
mod metrics;
mod outbound_tls;
mod platform;
mod polyglot;
mod reload_hardening;
mod reuse;
mod routing;
mod shutdown;
mod swap;
