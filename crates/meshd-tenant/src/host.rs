//! The per-request host state that lives inside a tenant's `Store`.

use crate::guest_log::{GuestLog, Stream};
use crate::limiter::TenantLimiter;
use crate::log_budget::LogBudget;
use crate::outbound::OutboundPolicy;
use crate::settings::TenantSettings;
use meshd_keyvalue::KvStore;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Most WASI resources (streams, fields, pollables, ...) one request may hold.
const MAX_RESOURCES: usize = 10_000;

/// Everything one request of one tenant can reach. A new `Host` is built for
/// every request, so nothing leaks between requests or tenants.
pub struct Host {
    pub(crate) app: Arc<str>,
    pub(crate) table: ResourceTable,
    pub(crate) kv: KvStore,
    /// The app's log budget, for wasi:logging (stdout and stderr hold it too).
    pub(crate) log_budget: Arc<LogBudget>,
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
    pub fn new(
        app: &Arc<str>,
        settings: &TenantSettings,
        outbound: &Arc<[meshd_apps::OutboundRule]>,
        config: &Arc<WasiConfigVariables>,
        kv: &KvStore,
        log_budget: &Arc<LogBudget>,
        outbound_tls: &Arc<rustls::ClientConfig>,
    ) -> anyhow::Result<Self> {
        let mut wasi = WasiCtx::builder();
        let stdout = GuestLog::new(app.clone(), Stream::Stdout, log_budget.clone());
        let stderr = GuestLog::new(app.clone(), Stream::Stderr, log_budget.clone());
        wasi.stdout(stdout).stderr(stderr).envs(&settings.env);
        if let Some(files) = &settings.files {
            let perms = if files.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(&files.host_dir, "/", perms)
                .map_err(anyhow::Error::from)?;
        }
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Ok(Host {
            app: app.clone(),
            table,
            kv: kv.clone(),
            log_budget: log_budget.clone(),
            config: config.clone(),
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            hooks: OutboundPolicy::new(
                app.clone(),
                outbound.clone(),
                settings.timeout,
                outbound_tls.clone(),
                log_budget.clone(),
            ),
            limiter: TenantLimiter::new(settings.memory),
        })
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
