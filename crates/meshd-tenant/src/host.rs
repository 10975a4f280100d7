//! The per-request host state that lives inside a tenant's `Store`.

use crate::descriptors::{DescriptorBudget, DescriptorTicket, Exhausted};
use crate::disk_quota::{DiskUsage, FilesQuota};
use crate::engine::Runtime;
use crate::guest_log::{GuestLog, Stream};
use crate::in_flight::InFlight;
use crate::limiter::TenantLimiter;
use crate::log_budget::LogBudget;
use crate::log_ring::LogRing;
use crate::outbound::{OutboundInFlight, OutboundPolicy};
use crate::settings::TenantSettings;
use meshd_keyvalue::KvStore;
use std::collections::HashMap;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Most WASI resources (streams, fields, pollables, ...) one request may hold.
const MAX_RESOURCES: usize = 10_000;

/// What all requests of one app share, across its versions (held by its
/// [`AppLedger`](crate::AppLedger)): its descriptors and its outbound requests and
/// lookups in flight, and the usage of its writable directory.
#[derive(Debug, Default)]
pub(crate) struct AppShared {
    /// Its recent log lines, for the admin API.
    pub(crate) log_ring: Arc<LogRing>,
    pub(crate) descriptors: Arc<InFlight>,
    pub(crate) outbound: Arc<OutboundInFlight>,
    /// The usage of its writable `[files]` directory.
    pub(crate) disk: Arc<DiskUsage>,
}

/// Everything one request of one tenant can reach. A new `Host` is built for
/// every request, so nothing leaks between requests or tenants.
pub struct Host {
    pub(crate) app: Arc<str>,
    pub(crate) table: ResourceTable,
    /// The request's descriptor budget (files it opens, connections).
    pub(crate) descriptors: DescriptorBudget,
    /// The descriptors the guest opened and holds, by resource: each holds
    /// its place in the budget until the guest drops it. (After `table`, so
    /// the files close before their places are given back.)
    pub(crate) open_files: HashMap<u32, DescriptorTicket>,
    /// The preopened `[files]` directory is a descriptor too.
    _preopen: Option<DescriptorTicket>,
    /// The quota of a writable `[files]` directory (`--files-quota`).
    pub(crate) files_quota: Option<FilesQuota>,
    pub(crate) kv: KvStore,
    /// The app's log budget, for wasi:logging (stdout and stderr hold it too).
    pub(crate) log_budget: Arc<LogBudget>,
    /// The app's recent log lines, which wasi:logging adds to.
    pub(crate) log_ring: Arc<LogRing>,
    config: Arc<WasiConfigVariables>,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    hooks: OutboundPolicy,
    pub(crate) limiter: TenantLimiter,
}

impl Host {
    /// A host for one request of `app`, granting exactly what `settings`
    /// allow: the manifest's environment and directory, outbound HTTP to the
    /// allowed destinations, no sockets. Stdout and stderr go to meshd's log.
    pub(crate) fn new(
        app: &Arc<str>,
        settings: &TenantSettings,
        outbound: &Arc<[meshd_apps::OutboundRule]>,
        config: &Arc<WasiConfigVariables>,
        log_budget: &Arc<LogBudget>,
        shared: &AppShared,
        runtime: &Runtime,
    ) -> anyhow::Result<Self> {
        let descriptors = DescriptorBudget::new(
            runtime.config.descriptors,
            &shared.descriptors,
            &runtime.guest_descriptors,
        );
        let mut preopen = None;
        let mut files_quota = None;
        let mut wasi = WasiCtx::builder();
        let stdout = GuestLog::new(
            app.clone(),
            Stream::Stdout,
            log_budget.clone(),
            shared.log_ring.clone(),
        );
        let stderr = GuestLog::new(
            app.clone(),
            Stream::Stderr,
            log_budget.clone(),
            shared.log_ring.clone(),
        );
        wasi.stdout(stdout).stderr(stderr).envs(&settings.env);
        if let Some(files) = &settings.files {
            let perms = if files.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            if files.writable {
                files_quota = runtime.config.files_quota.map(|quota| FilesQuota {
                    usage: shared.disk.clone(),
                    app: app.clone(),
                    dir: files.host_dir.clone(),
                    quota,
                });
            }
            match descriptors.try_take() {
                Ok(ticket) => preopen = Some(ticket),
                Err(exhausted) => {
                    // The request fails (500); say why, within the app's
                    // warning budget.
                    if log_budget.admit_warning() {
                        tracing::warn!(app = %app, "request failed: cannot open the [files] directory: {exhausted}");
                    }
                    anyhow::bail!("cannot open the [files] directory: {exhausted}");
                }
            }
            wasi.preopened_dir(&files.host_dir, "/", perms)
                .map_err(anyhow::Error::from)?;
        }
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let hooks = OutboundPolicy {
            app: app.clone(),
            rules: outbound.clone(),
            max_wait: settings.timeout,
            tls: runtime.outbound_tls.clone(),
            resolver: runtime.resolver.clone(),
            log_budget: log_budget.clone(),
            limits: runtime.config.outbound,
            in_flight: shared.outbound.clone(),
            descriptors: descriptors.clone(),
        };
        Ok(Host {
            app: app.clone(),
            table,
            descriptors,
            open_files: HashMap::new(),
            _preopen: preopen,
            files_quota,
            kv: runtime.kv.clone(),
            log_budget: log_budget.clone(),
            log_ring: shared.log_ring.clone(),
            config: config.clone(),
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            hooks,
            limiter: TenantLimiter::new(settings.memory),
        })
    }

    /// Whether the app is over its files quota; if so, says (within its
    /// warning budget) that the guest cannot `what`.
    pub(crate) fn over_files_quota(&self, what: &str) -> bool {
        let over = self.files_quota.as_ref().is_some_and(FilesQuota::exceeded);
        if over && self.log_budget.admit_warning() {
            tracing::warn!(app = %self.app, "guest cannot {what}: the app is over its files quota (--files-quota)");
        }
        over
    }

    /// Says (within the app's warning budget) that the guest could not
    /// `what` because a descriptor budget is spent.
    pub(crate) fn warn_descriptors(&self, exhausted: &Exhausted, what: &str) {
        if self.log_budget.admit_warning() {
            tracing::warn!(app = %self.app, "guest cannot {what}: {exhausted}");
        }
    }
}

impl Host {
    /// The app's `[config]` values, for wasi:config.
    pub(crate) fn config(&mut self) -> WasiConfig<'_> {
        WasiConfig::from(&*self.config)
    }
}

impl WasiView for Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}
