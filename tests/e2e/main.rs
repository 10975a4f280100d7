//! End-to-end tests: every test starts a real `meshd` process on a loopback
//! port, serves real components built from `apps-example/`, and talks to it
//! with real HTTP clients.

mod support;

mod access_log;
mod acme;
mod admin_api;
mod app_stats;
mod bad_apps;
mod bodies;
mod cache;
mod canary;
mod cli;
mod client_address;
mod dashboard;
mod fairness;
mod front_door;
mod harness;
mod hosts;
mod isolation;
mod keyvalue_nats;
mod lazy;
mod logs;
mod mesh;
mod metrics;
mod outbound_tls;
mod paths;
mod platform;
mod polyglot;
mod reload_hardening;
mod resources;
mod restart;
mod reuse;
mod routing;
mod service;
mod shutdown;
mod slow_clients;
mod startup;
mod swap;
mod tls;
