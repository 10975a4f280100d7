//! What an app keeps across its versions: the count of its requests in
//! flight (for `max_concurrency`), its guest log budget and recent lines, its descriptors,
//! outbound requests and disk usage, and its processor time. The deploy
//! pipeline owns one ledger per app and hands it to every version it builds,
//! so a redeploy (or a canary running beside the live version) neither
//! refills a budget nor lets the app run more than its limits.

use crate::cpu_budget::CpuBudget;
use crate::host::AppShared;
use crate::in_flight::InFlight;
use crate::log_budget::LogBudget;
use crate::Runtime;
use std::sync::{Arc, Mutex};

/// One app's shared state, outliving its versions.
pub struct AppLedger {
    app: Arc<str>,
    pub(crate) in_flight: Arc<InFlight>,
    pub(crate) log_budget: Arc<LogBudget>,
    pub(crate) shared: Arc<AppShared>,
    /// The meter of the newest cpu limit asked for.
    cpu: Mutex<Arc<CpuBudget>>,
}

impl AppLedger {
    /// A fresh ledger for the app `app` (nothing counted yet).
    pub fn new(runtime: &Runtime, app: &str) -> Arc<Self> {
        let app: Arc<str> = Arc::from(app);
        Arc::new(AppLedger {
            in_flight: Arc::default(),
            log_budget: Arc::new(LogBudget::new(app.clone(), runtime.config.guest_log_rate)),
            shared: Arc::new(AppShared {
                log_ring: runtime.log_rings.ring_for(&app),
                ..AppShared::default()
            }),
            cpu: Mutex::new(Arc::new(CpuBudget::new(app.clone(), None))),
            app,
        })
    }

    /// The app's name.
    pub fn app(&self) -> &str {
        &self.app
    }

    pub(crate) fn app_name(&self) -> Arc<str> {
        self.app.clone()
    }

    /// The app's requests in flight, across its versions.
    pub fn in_flight(&self) -> usize {
        self.in_flight.count()
    }

    /// The cpu meter for a version limited to `millicores`: the current one
    /// when the limit is the same, else one that carries over what the app
    /// owes and has counted.
    pub(crate) fn cpu_for(&self, millicores: Option<u32>) -> Arc<CpuBudget> {
        let mut current = self.cpu.lock().unwrap_or_else(|e| e.into_inner());
        let next = current.successor(millicores);
        *current = next.clone();
        next
    }
}
