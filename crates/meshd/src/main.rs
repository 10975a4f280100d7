//! `meshd`: parse the flags, load the apps, serve until told to stop; or,
//! with a client subcommand (`meshd deploy`, `meshd apps`, ...), send one
//! command to a running meshd's admin API.

mod acme;
mod cli;
mod client;
mod config;
mod fd_limit;
mod front_door;
mod handover;
mod logging;
mod metrics;
mod service;
mod signals;

use anyhow::{bail, Context as _, Result};
use meshd_reload::{DirSource, Pipeline, ReloadConfig};
use meshd_tenant::{Runtime, RuntimeConfig};
use std::process::ExitCode;
use std::sync::Arc;

// jemalloc instead of glibc's malloc. A request allocates and frees about 47
// blocks; glibc's frees took most of its 8,300 instructions of malloc and
// free per reused-instance request. With jemalloc a reused-instance request
// costs 8.7% fewer instructions and a fresh-instance request 10.5% fewer,
// and a fresh-instance request 12% less CPU time (docs/benchmarks.md).
// `meshd_tenant::release_free_heap` gives its freed memory back to the kernel.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // wasmtime creates error values on hot paths (every Store drop). With
    // RUST_BACKTRACE=1 in the environment each would capture a backtrace,
    // and unwinding through many loaded components made requests 15x slower
    // with 1,000 apps (docs/benchmarks.md). Library backtraces are off unless
    // asked for explicitly; panics still honour RUST_BACKTRACE. Set before
    // any thread starts.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    let args = match client::parse_command_line() {
        client::Invocation::Serve(args) => *args,
        client::Invocation::Client(command) => return client::run(command),
    };
    // Before any thread starts: it changes the environment.
    let launch = handover::Launch::capture();
    let predecessor = match handover::adopt() {
        Ok(predecessor) => predecessor,
        Err(e) => {
            eprintln!("meshd: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // Held until meshd exits: dropping it flushes the access log.
    let _log_guard = match logging::init(args.log_format, &args.access_log) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("meshd: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // Before the runtime's threads start (the limit is the process's; this
    // only keeps the order obvious).
    let open_file_limit = fd_limit::raise();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(workers) = args.workers {
        builder.worker_threads(usize::from(workers));
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, open_file_limit, launch, predecessor)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The cache holds native code meshd loads, and the data directory every
/// tenant's data: neither may sit where a tenant's `[files] dir` could reach.
fn refuse_inside_apps_dir(apps: &std::path::Path, flag: &str, dir: &std::path::Path) -> Result<()> {
    let apps = apps
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", apps.display()))?;
    // The directory may not exist yet: check its nearest existing ancestor.
    let existing = dir.ancestors().find(|d| d.exists()).unwrap_or(dir);
    let resolved = existing
        .canonicalize()
        .unwrap_or_else(|_| existing.to_owned());
    if resolved.starts_with(&apps) {
        bail!(
            "{flag} {} is inside the apps directory {}; put it elsewhere so no app can reach it",
            dir.display(),
            apps.display()
        );
    }
    Ok(())
}

/// Opens the wasi:keyvalue backend chosen in meshd.toml.
///
/// After a graceful restart (`after_restart`), the previous process still
/// holds the redb file until it has drained: it is opened as soon as that
/// process lets go of it, and key-value calls wait for it meanwhile, each
/// at most the previous process's drain (--shutdown-timeout) plus
/// [`KV_HANDOVER_MARGIN`].
async fn open_keyvalue(
    config: &config::KeyValueConfig,
    args: &cli::Args,
    after_restart: bool,
) -> Result<meshd_keyvalue::KvStore> {
    let limits = config.limits();
    let kv = match config.backend {
        config::Backend::Redb if after_restart => {
            let path = args.data_dir().join("keyvalue.redb");
            let wait = args.shutdown_timeout + KV_HANDOVER_MARGIN;
            meshd_keyvalue::KvStore::open_redb_when_free(&path, limits, wait)
        }
        config::Backend::Redb => {
            let path = args.data_dir().join("keyvalue.redb");
            meshd_keyvalue::KvStore::open_redb(&path, limits)?
        }
        config::Backend::Redis => {
            let url = config
                .url
                .as_deref()
                .context("[keyvalue] backend = \"redis\" needs a url")?;
            meshd_keyvalue::KvStore::connect_redis(url, &config.redis_tls(), limits).await?
        }
        // Connects in the background: meshd starts (and serves apps that
        // do not use key-value) while NATS is down.
        config::Backend::Nats => {
            let url = config
                .url
                .as_deref()
                .context("[keyvalue] backend = \"nats\" needs a url")?;
            meshd_keyvalue::KvStore::connect_nats(&config.nats_options(url), limits).await?
        }
    };
    tracing::info!(
        backend = kv.backend_name(),
        ?limits,
        "{}",
        if after_restart && config.backend == config::Backend::Redb {
            "key-value store: opened once the previous meshd process releases it"
        } else {
            "key-value store ready"
        }
    );
    Ok(kv)
}

/// How much longer than --shutdown-timeout a key-value call of a process
/// started by a graceful restart waits for the previous process to release
/// the redb file (its drain, then closing the file).
const KV_HANDOVER_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the previous process waits for its key-value calls in progress
/// before it closes the redb file after its drain.
const KV_RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a node of a mesh waits for the mesh's apps before `/readyz`
/// says ready anyway (NATS may be down: it serves what it has).
const MESH_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How to reach the mesh, from the flags.
fn mesh_config(args: &cli::Args, servers: &str) -> meshd_mesh::MeshConfig {
    let node = args.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "meshd".to_owned())
    });
    meshd_mesh::MeshConfig {
        credentials: args.mesh_creds.clone(),
        ca_file: args.mesh_ca_file.clone(),
        replicas: usize::from(args.mesh_replicas),
        ..meshd_mesh::MeshConfig::from_list(servers, &node)
    }
}

/// Binds the admin API's address (or takes the socket a graceful restart
/// or systemd passed) and serves it until `shutdown`. Returns the task and
/// a copy of the socket to pass on.
async fn start_admin(
    addr: std::net::SocketAddr,
    passed: Option<std::net::TcpListener>,
    state: meshd_admin::AdminState,
    shutdown: tokio_util::sync::CancellationToken,
    serve_config: &meshd_server::ServeConfig,
) -> Result<(tokio::task::JoinHandle<bool>, handover::Passed)> {
    let listener = match passed {
        Some(socket) => tokio::net::TcpListener::from_std(socket)?,
        None => tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for the admin API on {addr}"))?,
    };
    let copy = handover::Passed::dup("admin", &listener)?;
    let bound = listener.local_addr()?;
    tracing::info!(
        token = state.token.is_some(),
        "admin API listening on http://{bound}"
    );
    let serve_config = serve_config.clone();
    let task = tokio::spawn(async move {
        meshd_admin::serve(listener, state, shutdown.cancelled_owned(), &serve_config).await
    });
    Ok((task, copy))
}

async fn run(
    args: cli::Args,
    open_file_limit: u64,
    launch: handover::Launch,
    predecessor: Option<handover::Predecessor>,
) -> Result<()> {
    // Check everything we can before binding, so a bad flag fails fast.
    if !args.apps.is_dir() {
        bail!(
            "apps directory {} does not exist or is not a directory",
            args.apps.display()
        );
    }
    refuse_inside_apps_dir(&args.apps, "--cache-dir", &args.cache_dir())?;
    refuse_inside_apps_dir(&args.apps, "--data-dir", &args.data_dir())?;
    let daemon_config = match &args.config {
        Some(path) => config::DaemonConfig::load(path)?,
        None => config::DaemonConfig::default(),
    };
    let mut activated = front_door::Activated::take()?;
    let certificates = front_door::load_certificates(
        &args,
        &daemon_config.tls,
        daemon_config.acme.as_ref(),
        &activated,
    )?;
    // Filled by ACME once the front door is bound; the admin API shows it.
    let acme_statuses = daemon_config
        .acme
        .as_ref()
        .map(|_| meshd_acme::Statuses::default());
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    // No `cpu` cap by default (the scheduler keeps short requests ahead of
    // long ones, docs/operations.md), except the operator's ceiling.
    let default_limits = args
        .limits()
        .or(daemon_config.limits)
        .or(meshd_apps::Limits {
            cpu: daemon_config.ceiling.cpu,
            ..meshd_apps::Limits::BUILT_IN
        });
    if default_limits.max_concurrency == Some(0) {
        bail!("the default max_concurrency must be at least 1");
    }
    if args.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    if args.header_read_timeout.is_zero() {
        bail!("--header-read-timeout must be longer than 0");
    }
    if args.write_timeout.is_zero() || args.idle_timeout.is_zero() {
        bail!("--write-timeout and --idle-timeout must be longer than 0");
    }
    let max_total_memory = args.max_total_memory();
    if max_total_memory.as_u64() == 0 {
        bail!("--max-total-memory must be more than 0");
    }
    if default_limits
        .memory
        .is_some_and(|memory| memory > max_total_memory.as_u64())
    {
        tracing::warn!(
            %max_total_memory,
            "the default memory limit of one instance is above --max-total-memory: an app using all of it would be refused"
        );
    }
    let guest_descriptors = args
        .max_guest_descriptors
        .unwrap_or_else(|| fd_limit::default_guest_descriptors(open_file_limit));
    fd_limit::check(open_file_limit, args.max_connections, guest_descriptors);
    // Apps without a manifest run with the defaults: they must fit too.
    daemon_config
        .ceiling
        .check_limits(&default_limits)
        .map_err(|e| anyhow::anyhow!("the default limits (flags, [limits] in meshd.toml, or built in) do not fit the ceiling: {e}"))?;
    // Install the handlers before the (possibly long) first load, so an
    // early SIGTERM is a graceful stop, not a kill.
    let signals = signals::Signals::install()?;
    // What every listener and task stops on: a shutdown, or a graceful
    // restart that handed over to a new process.
    let stop = tokio_util::sync::CancellationToken::new();
    let kv = open_keyvalue(&daemon_config.keyvalue, &args, predecessor.is_some()).await?;
    // Kept to release the redb file to the next process after a restart.
    let kv_handle = kv.clone();
    let load_parallelism = args.load_parallelism.map_or_else(
        || std::thread::available_parallelism().map_or(2, |n| n.get()),
        usize::from,
    );
    let runtime = Runtime::new(
        RuntimeConfig {
            cache_dir: args.cache_dir(),
            max_instances: args.max_instances,
            max_total_memory: max_total_memory.as_u64(),
            guest_log_rate: args.guest_log_rate,
            outbound_ca_files: daemon_config.outbound.ca_files.clone(),
            descriptors: meshd_tenant::DescriptorLimits {
                per_request: args.max_request_descriptors,
                per_app: args.max_app_descriptors,
                all_guests: guest_descriptors,
            },
            outbound: meshd_tenant::OutboundLimits {
                max_requests: args.max_app_outbound,
                max_lookups: args.max_app_lookups,
            },
            resolver: meshd_tenant::ResolverSettings {
                nameservers: daemon_config.outbound.nameservers.clone(),
                timeout: daemon_config
                    .outbound
                    .lookup_timeout
                    .unwrap_or(meshd_tenant::DEFAULT_LOOKUP_TIMEOUT),
            },
            files_quota: Some(args.files_quota.as_u64()).filter(|&quota| quota > 0),
            load_parallelism,
            max_compile_time: args.max_compile_time,
            memory_reset: args.memory_reset.chosen(),
            idle_unload: args.idle_unload.or(daemon_config.idle_unload),
            max_loaded: args
                .max_loaded
                .or(daemon_config.max_loaded.map(|n| n.get()))
                .map(|n| n as usize),
        },
        kv,
    )?;
    tracing::info!(
        cache_dir = %runtime.config().cache_dir.display(),
        pooling = runtime.pooling(),
        memory_reset = ?runtime.memory_reset(),
        max_instances = args.max_instances,
        max_total_memory = %max_total_memory,
        guest_log_rate = args.guest_log_rate,
        open_file_limit,
        max_guest_descriptors = guest_descriptors,
        load_parallelism,
        max_compile_time = ?args.max_compile_time,
        workers,
        limits = ?default_limits,
        ceiling = ?daemon_config.ceiling,
        "tenant runtime ready"
    );

    let serve_config = meshd_server::ServeConfig {
        shutdown_timeout: args.shutdown_timeout,
        header_read_timeout: args.header_read_timeout,
        max_connections: args.max_connections,
        write_timeout: args.write_timeout,
        idle_timeout: args.idle_timeout,
        max_streams: args.http2_max_streams,
        closed: Arc::default(),
        access_log: args.access_log != cli::AccessLog::Off,
    };
    // Refuse an exposed admin API without a token before anything starts.
    let admin_token = args
        .admin_token_file
        .as_deref()
        .map(meshd_admin::Token::from_file)
        .transpose()?;
    if let Some(addr) = args.admin {
        meshd_admin::check_exposure(addr, admin_token.as_ref())?;
    }
    let registry = Arc::new(meshd_registry::Registry::new());
    let artifacts_dir = args.data_dir().join("artifacts");
    let store =
        meshd_artifacts::ArtifactStore::open(&artifacts_dir, usize::from(args.keep_versions))
            .with_context(|| {
                format!(
                    "cannot open the artifact store in {}",
                    artifacts_dir.display()
                )
            })?;
    let (pipeline, deploys) = Pipeline::new(
        runtime.clone(),
        ReloadConfig {
            apps_dir: args.apps.clone(),
            drain_timeout: args.drain_timeout,
            load_parallelism,
            health_timeout: args.health_timeout,
            default_limits,
            ceiling: daemon_config.ceiling,
            max_wasm_size: args.max_wasm_size.as_u64(),
            holdings_file: Some(args.data_dir().join("holdings.json")),
            restore_mesh: args.mesh.is_some(),
        },
        registry.clone(),
        Some(store.clone()),
    );
    let deploy_totals = pipeline.totals();
    let metrics_registry = metrics::registry(&registry, &deploy_totals, &runtime, &serve_config);
    // The single writer of the registry; it first restores the apps the
    // admin API deployed before the last stop.
    let pipeline = tokio::spawn(pipeline.run());
    let mut dir_source = DirSource::new(
        &args.apps,
        deploys.clone(),
        registry.clone(),
        args.max_wasm_size.as_u64(),
    )
    .with_index(args.data_dir().join(meshd_reload::INDEX_FILE));
    // The mesh's connection, shared by the follower and the admin API; it
    // connects in the background (NATS may be down at start).
    let mesh = match &args.mesh {
        Some(servers) => {
            let config = mesh_config(&args, servers);
            let client = meshd_mesh::connect(&config, true).await?;
            Some((config, client))
        }
        None => None,
    };
    let (restart_trigger, restart_requests) = handover::admin_channel();
    // Set while a graceful restart is under way (the admin API refuses
    // changes then).
    let restarting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut passed = Vec::new();
    // Up before the first load, so /readyz can tell how far it has got.
    let admin = match args.admin {
        Some(addr) => Some(
            start_admin(
                addr,
                activated.admin.take(),
                meshd_admin::AdminState {
                    pipeline: deploys.clone(),
                    registry: registry.clone(),
                    metrics: metrics_registry.clone(),
                    token: admin_token,
                    max_wasm_size: args.max_wasm_size.as_u64(),
                    mesh: mesh.as_ref().map(|(config, client)| {
                        Arc::new(meshd_mesh::Publisher::with_client(
                            client.clone(),
                            config.replicas,
                            &format!("admin API of node {}", config.name),
                        ))
                    }),
                    certificates: acme_statuses.clone(),
                    logs: runtime.log_rings().clone(),
                    restart: Some(restart_trigger),
                    restarting: restarting.clone(),
                },
                stop.clone(),
                &serve_config,
            )
            .await?,
        ),
        None => None,
    };
    let mut admin = admin.map(|(task, socket)| {
        passed.push(socket);
        task
    });
    // Watch before the first scan, so nothing that changes in between is
    // missed.
    let dir_watch = meshd_reload::DirWatch::start(&args.apps, !args.no_watch);
    let summary = dir_source.sync().await;
    // Reading and loading every app left freed blocks in the heap (glibc
    // keeps them): give them back before serving.
    tokio::task::spawn_blocking(meshd_tenant::release_free_heap);
    // A node of a mesh is ready once it has the mesh's apps too (or, if
    // NATS does not answer, after MESH_READY_TIMEOUT: it serves what it has).
    if mesh.is_none() {
        registry.startup().finish();
    }

    let metrics = match args.metrics_listen {
        Some(addr) => Some(
            metrics::start(
                addr,
                activated.metrics.take(),
                metrics_registry.clone(),
                stop.clone(),
                &serve_config,
            )
            .await?,
        ),
        None => None,
    };
    let mut metrics = metrics.map(|(task, socket)| {
        passed.push(socket);
        task
    });

    let mut front = front_door::bind(&args, certificates, activated).await?;
    // The front door first: the order the next process lists them in.
    passed.splice(0..0, std::mem::take(&mut front.passed));
    if let Some(addr) = front.tls {
        tracing::info!(
            apps = summary.serving,
            failed = summary.failed,
            "meshd listening on https://{addr}"
        );
    }
    if let Some(addr) = front.plain {
        tracing::info!(
            apps = summary.serving,
            failed = summary.failed,
            "meshd listening on http://{addr}"
        );
    }
    let urls: Vec<String> = (front.plain.iter().map(|a| format!("http://{a}")))
        .chain(front.tls.iter().map(|a| format!("https://{a}")))
        .collect();
    let restarter = handover::Restarter::new(
        launch,
        registry.clone(),
        passed,
        args.restart_timeout,
        signals.shutdown.clone(),
        restarting,
    );
    let handed_over = restarter.handed_over();
    {
        let (shutdown, handed_over, stop) =
            (signals.shutdown.clone(), handed_over.clone(), stop.clone());
        let restarter = restarter.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => service::stopping(),
                () = handed_over.cancelled() => {}
            }
            restarter.close_sockets();
            stop.cancel();
        });
    }
    match predecessor {
        // The previous process is the unit's main process until it hands
        // over (it tells systemd the new main pid then).
        Some(predecessor) => {
            // Apps the admin API deployed are restored beside the
            // directory's: count what the routes hold now.
            let serving = registry.load().routes.len();
            predecessor.report_ready(serving, summary.failed)?;
            tracing::info!(
                apps = summary.serving,
                "graceful restart: this process is ready; the previous one stops accepting"
            );
        }
        None => service::ready(&format!(
            "serving {} apps on {} ({} refused)",
            summary.serving,
            urls.join(" and "),
            summary.failed
        )),
    }
    service::spawn_watchdog(stop.clone());
    tokio::spawn(restarter.run(signals.restart, restart_requests, stop.clone()));

    let shutdown = stop.clone();
    let watcher = tokio::spawn(dir_watch.run(
        dir_source,
        args.settle,
        signals.rescan,
        shutdown.clone().cancelled_owned(),
    ));

    let follower = mesh.map(|(config, client)| {
        let mut follower = meshd_mesh::Follower::new(
            meshd_mesh::FollowerConfig {
                node: config.name.clone(),
                mesh: config,
                listen: Some(urls.join(" ")),
                max_wasm_size: args.max_wasm_size.as_u64(),
                meshd_version: env!("CARGO_PKG_VERSION").to_owned(),
            },
            deploys.clone(),
            registry.clone(),
            store.clone(),
        );
        let first_sync = follower.first_sync();
        let registry = registry.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(MESH_READY_TIMEOUT, first_sync).await.is_err() {
                tracing::warn!(timeout = ?MESH_READY_TIMEOUT, "mesh: not in sync yet; ready with what this node has");
            }
            registry.startup().finish();
        });
        tokio::spawn(follower.run(client, shutdown.clone()))
    });

    let expiry = tokio::spawn(meshd_reload::expire_idle_instances(
        registry.clone(),
        args.reuse_idle_timeout,
    ));

    if let (Some(config), Some(statuses)) = (&daemon_config.acme, acme_statuses) {
        acme::start(
            config,
            &daemon_config.tls,
            &args.data_dir(),
            &front,
            &registry,
            statuses,
            shutdown.clone(),
        )?;
    }
    if let Some((watch, store)) = front.reloader {
        front_door::spawn_reloader(watch, store, shutdown.clone());
    }
    let all_closed = meshd_server::serve(
        front.listeners,
        registry.clone(),
        shutdown.cancelled_owned(),
        serve_config,
        front.edge,
    )
    .await;
    watcher.abort();
    if let Some(follower) = follower {
        follower.abort();
    }
    expiry.abort();
    pipeline.abort();
    // The admin and metrics listeners stopped with the front door and drain
    // on their own (each bounded by --shutdown-timeout): let them finish, so
    // that a request on a connection they keep open a moment longer (see
    // meshd_server's HTTP/1 linger) is answered before the process exits.
    // After the pipeline stopped: a deploy under way is answered 503
    // `stopped`, as before.
    let admin_and_metrics = async {
        if let Some(admin) = &mut admin {
            let _ = admin.await;
        }
        if let Some(metrics) = &mut metrics {
            let _ = metrics.await;
        }
    };
    let _ = tokio::time::timeout(args.shutdown_timeout, admin_and_metrics).await;
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    if let Some(admin) = admin {
        admin.abort();
    }
    if handed_over.is_cancelled() {
        // Drained: the next process may have the key-value store now.
        let released = kv_handle.release(KV_RELEASE_TIMEOUT).await;
        tracing::info!(
            released,
            "graceful restart: key-value store released to the new process"
        );
    }
    tracing::info!(all_closed, "meshd stopped");
    Ok(())
}
