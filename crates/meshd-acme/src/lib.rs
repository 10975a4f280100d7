//! Automatic certificates for meshd's HTTPS listener (`[acme]` in
//! meshd.toml): obtains a certificate for each host from an ACME CA
//! (RFC 8555, with instant-acme; Let's Encrypt, or any CA that speaks
//! ACME), keeps it under `DATA_DIR/acme` ([`storage`](Storage) explains the
//! files), hands it to the TLS listener's
//! [`CertStore`](meshd_server::tls::CertStore), and renews it at two thirds
//! of its lifetime.
//!
//! - Which hosts: the ones listed in `[acme] hosts`, or else every exact
//!   host of the routes that has no certificate in `[tls]`, followed as
//!   apps are deployed and removed ([`Registry::subscribe`]). Wildcard
//!   hosts need the DNS-01 challenge, which meshd does not do: they are
//!   skipped with a log line.
//! - Each host has a task of its own: it loads the stored certificate (no
//!   order while it is valid and not due), orders when due, and after a
//!   failure waits with a jittered, capped backoff ([`schedule`]). Until
//!   a host has a certificate, its clients get the default one (or none).
//!   Nothing here is on the request path: serving never waits for an
//!   order.
//! - The challenges are answered by the front door ([`Challenges`]):
//!   HTTP-01 on the plain listener, or TLS-ALPN-01 on the TLS listener.
//! - Each host's state is in [`Statuses`] (the admin API's
//!   `GET /v1/certificates`) and in the log.
#![deny(missing_docs)]

mod client;
mod issued;
pub mod schedule;
mod status;
mod storage;

pub use client::ChallengeKind;
pub use status::{CertState, CertStatus, Statuses};
pub use storage::{directory_key, Storage};

use anyhow::{Context as _, Result};
use client::AcmeClient;
use issued::Issued;
use meshd_registry::{AppSet, Registry};
use meshd_routes::RouteHost;
use meshd_server::tls::CertStore;
use meshd_server::Challenges;
use status::rfc3339;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Most orders in progress at once (thousands of hosts at the first
/// start are ordered a few at a time).
const MAX_CONCURRENT_ORDERS: usize = 4;

/// Longest single sleep of a host's task: it looks at the clock again at
/// least this often, so a clock that jumps (a suspended machine) delays a
/// renewal by no more than this.
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// What `[acme]` in meshd.toml says, resolved.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// The ACME directory URL.
    pub directory: String,
    /// The account's contact address, if any.
    pub email: Option<String>,
    /// A PEM file of the CA certificates to trust for the ACME server
    /// (instead of Mozilla's roots).
    pub ca_file: Option<PathBuf>,
    /// Where the account and certificates are kept (`DATA_DIR/acme`).
    pub dir: PathBuf,
    /// How hosts prove control.
    pub challenge: ChallengeKind,
}

/// Which hosts get certificates.
pub enum Hosts {
    /// Exactly these (lower case, exact names).
    Listed(Vec<String>),
    /// Every exact host of the routes, except those `[tls]` has a
    /// certificate for (`except`: exact names and `*.parent` wildcards).
    Routes {
        /// Where the routes are published.
        registry: Arc<Registry>,
        /// The `[tls.hosts]` names.
        except: Vec<String>,
    },
}

/// Starts managing certificates: checks the settings and the data
/// directory now (an error stops meshd at start), then works in the
/// background until `shutdown`, keeping each host's state in `statuses`.
pub fn start(
    settings: AcmeSettings,
    hosts: Hosts,
    store: Arc<CertStore>,
    challenges: Arc<Challenges>,
    statuses: Statuses,
    shutdown: CancellationToken,
) -> Result<()> {
    let storage = Storage::open(&settings.dir, &settings.directory).with_context(|| {
        format!(
            "cannot prepare the ACME directory {}",
            settings.dir.display()
        )
    })?;
    let client = AcmeClient::new(
        &settings.directory,
        settings.email.clone(),
        settings.ca_file.as_deref(),
        storage.clone(),
        challenges,
        settings.challenge,
    )?;
    tracing::info!(
        directory = %settings.directory,
        challenge = settings.challenge.as_str(),
        storage = %storage.dir().display(),
        "ACME: automatic certificates on"
    );
    let shared = Arc::new(Shared {
        client,
        storage,
        store,
        statuses: statuses.clone(),
        orders: Semaphore::new(MAX_CONCURRENT_ORDERS),
    });
    tokio::spawn(follow(shared, hosts, shutdown));
    Ok(())
}

/// What every host's task shares.
struct Shared {
    client: AcmeClient,
    storage: Storage,
    store: Arc<CertStore>,
    statuses: Statuses,
    orders: Semaphore,
}

/// A host's task, stopped when dropped.
struct HostTask(tokio::task::JoinHandle<()>);

impl Drop for HostTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps one task per wanted host: starts tasks for new hosts and stops
/// (and forgets) those of hosts no longer wanted, until `shutdown`.
async fn follow(shared: Arc<Shared>, hosts: Hosts, shutdown: CancellationToken) {
    let mut tasks: HashMap<String, HostTask> = HashMap::new();
    match hosts {
        Hosts::Listed(list) => {
            sync_tasks(&shared, &mut tasks, list.into_iter().collect());
            shutdown.cancelled().await;
        }
        Hosts::Routes { registry, except } => {
            let mut published = registry.subscribe();
            let mut skipped = HashSet::new();
            loop {
                published.borrow_and_update();
                let wanted = route_hosts(&registry.load(), &except, &mut skipped);
                sync_tasks(&shared, &mut tasks, wanted);
                tokio::select! {
                    changed = published.changed() => if changed.is_err() { break },
                    () = shutdown.cancelled() => break,
                }
            }
        }
    }
}

fn sync_tasks(
    shared: &Arc<Shared>,
    tasks: &mut HashMap<String, HostTask>,
    wanted: BTreeSet<String>,
) {
    tasks.retain(|host, _| {
        let keep = wanted.contains(host);
        if !keep {
            tracing::info!(%host, "ACME: no route asks for this host any more; its certificate is no longer served or renewed (its files stay)");
            shared.statuses.remove(host);
            shared.store.remove(host);
        }
        keep
    });
    for host in wanted {
        if let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(host) {
            let task = tokio::spawn(manage(shared.clone(), slot.key().clone()));
            slot.insert(HostTask(task));
        }
    }
}

/// The exact hosts of `set`'s routes that `[tls]` has no certificate for;
/// wildcard hosts are logged (once each) and skipped.
fn route_hosts(set: &AppSet, except: &[String], skipped: &mut HashSet<String>) -> BTreeSet<String> {
    let mut hosts = BTreeSet::new();
    for (route, _) in set.routes.iter() {
        match route.host() {
            Some(RouteHost::Exact(host)) if !covered(host, except) => {
                hosts.insert(host.clone());
            }
            Some(RouteHost::Wildcard(domain)) if skipped.insert(domain.clone()) => {
                tracing::info!(
                    host = %format!("*.{domain}"),
                    "ACME: no certificate for a wildcard host (it needs the DNS-01 challenge, which meshd does not do); give it one in [tls.hosts]"
                );
            }
            _ => {}
        }
    }
    hosts
}

/// Whether one of the `[tls.hosts]` names (exact or `*.parent`) covers
/// `host`.
fn covered(host: &str, except: &[String]) -> bool {
    except.iter().any(|name| match name.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest == parent),
        None => name == host,
    })
}

/// One host, for as long as it is wanted: the stored certificate if it is
/// usable, then an order whenever one is due.
async fn manage(shared: Arc<Shared>, host: String) {
    let mut served: Option<Issued> = None;
    let mut due = SystemTime::now();
    match load_stored(&shared, &host) {
        Ok(Some(issued)) if issued.not_after > SystemTime::now() => {
            due = issued.renew_at();
            shared.store.insert(&host, issued.cert.clone());
            served = Some(issued);
        }
        Ok(Some(expired)) => tracing::warn!(
            %host,
            expired = %rfc3339(expired.not_after),
            "ACME: the stored certificate has expired; ordering a new one"
        ),
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(%host, "ACME: the stored certificate cannot be used, ordering a new one: {e:#}")
        }
    }
    shared.statuses.update(&host, |status| {
        if let Some(issued) = &served {
            describe(status, issued);
            status.state = CertState::Valid;
        }
        status.next_attempt = Some(rfc3339(due));
    });
    if served.is_some() {
        log_status(&shared, &host, "ACME certificate loaded from disk");
    }
    let mut failures = 0u32;
    loop {
        sleep_until(due).await;
        let result = {
            let _permit = shared.orders.acquire().await;
            tracing::info!(%host, "ACME: ordering a certificate");
            obtain(&shared, &host).await
        };
        match result {
            Ok(issued) => {
                failures = 0;
                due = issued.renew_at();
                shared.store.insert(&host, issued.cert.clone());
                shared.statuses.update(&host, |status| {
                    describe(status, &issued);
                    status.state = CertState::Valid;
                    status.failures = 0;
                    status.last_error = None;
                    status.next_attempt = Some(rfc3339(due));
                });
                served = Some(issued);
                log_status(&shared, &host, "ACME certificate obtained");
            }
            Err(e) => {
                failures += 1;
                due = SystemTime::now() + schedule::backoff(failures);
                let still_valid = served
                    .as_ref()
                    .is_some_and(|issued| issued.not_after > SystemTime::now());
                shared.statuses.update(&host, |status| {
                    status.state = if still_valid {
                        CertState::Valid
                    } else {
                        CertState::Failed
                    };
                    status.failures = failures;
                    status.last_error = Some(format!("{e:#}"));
                    status.next_attempt = Some(rfc3339(due));
                });
                log_status(&shared, &host, "ACME order failed");
            }
        }
    }
}

/// The stored certificate of `host`, if its files exist.
fn load_stored(shared: &Shared, host: &str) -> Result<Option<Issued>> {
    let paths = shared.storage.cert_paths(host)?;
    if !paths.cert.exists() && !paths.key.exists() {
        return Ok(None);
    }
    Issued::load(host, &paths).map(Some)
}

/// Orders, stores and loads a new certificate for `host`.
async fn obtain(shared: &Shared, host: &str) -> Result<Issued> {
    let new = shared.client.obtain(host).await?;
    let paths = shared
        .storage
        .save_cert(host, &new.chain_pem, &new.key_pem)?;
    Issued::load(host, &paths).context("the CA issued a certificate meshd cannot use")
}

/// Copies what the status shows of a certificate.
fn describe(status: &mut CertStatus, issued: &Issued) {
    status.issuer = Some(issued.issuer.clone());
    status.serial = Some(issued.serial.clone());
    status.not_before = Some(rfc3339(issued.not_before));
    status.not_after = Some(rfc3339(issued.not_after));
    status.last_renewal = Some(rfc3339(issued.obtained));
}

/// Logs `host`'s status: info when it is served, a warning when it failed.
fn log_status(shared: &Shared, host: &str, what: &str) {
    let Some(status) = shared.statuses.get(host) else {
        return;
    };
    let field = |value: &Option<String>| value.clone().unwrap_or_default();
    match &status.last_error {
        None => tracing::info!(
            %host,
            state = ?status.state,
            issuer = %field(&status.issuer),
            serial = %field(&status.serial),
            not_after = %field(&status.not_after),
            next_attempt = %field(&status.next_attempt),
            "{what}"
        ),
        Some(error) => tracing::warn!(
            %host,
            state = ?status.state,
            failures = status.failures,
            not_after = %field(&status.not_after),
            next_attempt = %field(&status.next_attempt),
            error = %error,
            "{what}"
        ),
    }
}

/// Sleeps until the wall-clock time `due`, looking at the clock at least
/// every [`MAX_SLEEP`].
async fn sleep_until(due: SystemTime) {
    loop {
        let Ok(left) = due.duration_since(SystemTime::now()) else {
            return;
        };
        if left.is_zero() {
            return;
        }
        tokio::time::sleep(left.min(MAX_SLEEP)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_hosts_cover_exact_names_and_one_label_below_wildcards() {
        let except = vec!["shop.example.com".to_owned(), "*.apps.test".to_owned()];
        assert!(covered("shop.example.com", &except));
        assert!(!covered("blog.example.com", &except));
        assert!(covered("a.apps.test", &except));
        assert!(!covered("a.b.apps.test", &except));
        assert!(!covered("apps.test", &except));
    }
}
