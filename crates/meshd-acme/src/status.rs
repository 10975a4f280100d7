//! Each managed certificate's state, for the log and the admin API
//! (`GET /v1/certificates`).

use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

/// Where a host's certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertState {
    /// No certificate yet; the first order is due or in progress.
    Pending,
    /// A certificate is being served (a renewal may be due or failing:
    /// see `last_error`).
    Valid,
    /// No usable certificate: the last order failed (the host gets the
    /// default certificate, if any) and is retried at `next_attempt`.
    Failed,
}

/// One host's certificate, as `GET /v1/certificates` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CertStatus {
    /// The host name.
    pub host: String,
    /// pending, valid or failed.
    pub state: CertState,
    /// The issuer of the certificate served (its distinguished name).
    pub issuer: Option<String>,
    /// Its serial number, hex.
    pub serial: Option<String>,
    /// When it became valid (RFC 3339).
    pub not_before: Option<String>,
    /// When it expires (RFC 3339).
    pub not_after: Option<String>,
    /// When meshd obtained it (RFC 3339).
    pub last_renewal: Option<String>,
    /// When meshd orders next: the renewal (two thirds of the lifetime),
    /// or the retry after a failure (RFC 3339).
    pub next_attempt: Option<String>,
    /// Failed attempts since the last success.
    pub failures: u32,
    /// Why the last attempt failed (cleared by a success).
    pub last_error: Option<String>,
}

impl CertStatus {
    fn new(host: &str) -> Self {
        CertStatus {
            host: host.to_owned(),
            state: CertState::Pending,
            issuer: None,
            serial: None,
            not_before: None,
            not_after: None,
            last_renewal: None,
            next_attempt: None,
            failures: 0,
            last_error: None,
        }
    }
}

/// A time as the status shows it.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Every managed host's [`CertStatus`]; cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct Statuses(Arc<Mutex<BTreeMap<String, CertStatus>>>);

impl Statuses {
    /// Every host's status, by host name.
    pub fn list(&self) -> Vec<CertStatus> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// One host's status.
    pub fn get(&self, host: &str) -> Option<CertStatus> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(host)
            .cloned()
    }

    /// Changes `host`'s status (a pending one is made first).
    pub(crate) fn update(&self, host: &str, change: impl FnOnce(&mut CertStatus)) {
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        change(
            all.entry(host.to_owned())
                .or_insert_with(|| CertStatus::new(host)),
        );
    }

    /// Forgets `host` (no route asks for it any more).
    pub(crate) fn remove(&self, host: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(host);
    }
}
