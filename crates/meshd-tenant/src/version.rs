//! One loaded version of an app, and how it serves a request: admission
//! (concurrency, instance pool, body size), then a fresh `Store` and instance
//! per request (or a parked one, with `reuse`). The guest runs in the
//! connection's own task until it has answered; if it is still streaming its
//! body by then, the rest runs in a task of its own.

use crate::body::{GuestShare, LimitedBody, ResponseBody};
use crate::cache::CacheOutcome;
use crate::cpu_budget::CpuBudget;
use crate::engine::Runtime;
use crate::host::{AppShared, Host};
use crate::in_flight::{InFlight, InFlightGuard};
use crate::ledger::AppLedger;
use crate::log_budget::LogBudget;
use crate::resident::VersionCode;
use crate::scheduler::Turn;
use crate::settings::TenantSettings;
use crate::stats::VersionStats;
use bytes::Bytes;
use http_body::Body;
use meshd_apps::OutboundRule;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use wasmtime::component::Resource;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi_config::WasiConfigVariables;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostIncomingRequest, HostResponseOutparam};
use wasmtime_wasi_http::WasiHttpView;

/// A compiled, pre-instantiated version of one app with its settings.
/// Immutable; requests hold an `Arc` to the version they started on for
/// their whole life.
pub struct AppVersion {
    app: Arc<str>,
    id: String,
    runtime: Arc<Runtime>,
    /// Its compiled code and pre-instance, loaded or to be loaded on first
    /// use (and its idle instances kept for reuse).
    code: Arc<VersionCode>,
    /// It started unloaded because the same code with the same settings
    /// passed its pre-traffic check before (see [`AppVersion::was_checked`]).
    proven: bool,
    /// Its pre-traffic check's marker is known written (or was tried): a
    /// later [`AppVersion::instantiate_once`] only instantiates.
    marked: AtomicBool,
    settings: TenantSettings,
    outbound: Arc<[OutboundRule]>,
    config: Arc<WasiConfigVariables>,
    /// How much its guests may log, shared by all its requests and by the
    /// app's other versions (from its [`AppLedger`]).
    log_budget: Arc<LogBudget>,
    /// How much processor time its guests may take, shared like the log
    /// budget (a new meter when its cpu limit differs).
    cpu: Arc<CpuBudget>,
    /// The app's descriptors and outbound requests in flight, shared like
    /// the log budget.
    shared: Arc<AppShared>,
    /// The app's state across versions, which the budgets above come from.
    ledger: Arc<AppLedger>,
    /// What it has served, for the metrics endpoint.
    stats: VersionStats,
    /// This version's requests, for draining.
    in_flight: Arc<InFlight>,
    /// The app's requests across all its versions, for `max_concurrency`
    /// (from its [`AppLedger`]).
    app_in_flight: Arc<InFlight>,
    cancel: CancellationToken,
    cache: CacheOutcome,
    compile_time: Duration,
}

/// A version's code, loaded or not, and where it came from.
pub(crate) struct Compiled {
    pub(crate) code: Arc<VersionCode>,
    /// The code was not loaded: a check passed for it before.
    pub(crate) proven: bool,
    pub(crate) cache: CacheOutcome,
    pub(crate) compile_time: Duration,
}

/// Epoch ticks a request's guest may run before its first yield. Ticks come
/// at fixed times, so a deadline of one tick would interrupt every guest that
/// happens to be running when one falls, however short its request; with
/// two, a guest runs for at least one whole tick (1 ms) first, and requests
/// shorter than that never yield. After the first yield it yields at every
/// tick. (hello with a fresh instance per request, wrk with 32 connections:
/// p99 2.18 ms with one tick, 1.08 ms with two; docs/benchmarks.md.)
const FIRST_SLICE_TICKS: u64 = 2;

/// Most idle instances one version keeps for reuse.
const MAX_IDLE_PER_VERSION: usize = 8;

/// A Store whose instance has served `served` requests and may serve more
/// (manifest `reuse = N`). It holds an idle slot of the runtime, so idle
/// instances never take the slots of active ones.
pub(crate) struct IdleInstance {
    store: Store<Host>,
    proxy: Proxy,
    served: u32,
    parked_at: Instant,
    _idle: InFlightGuard,
}

/// The scheme the client used, which the front door puts in a request's
/// extensions: guests see it as the incoming request's scheme. Absent
/// (a request made inside meshd): `http`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientScheme {
    /// The request came over TLS.
    pub https: bool,
}

/// Why a request got no response from the guest. Each maps to one status.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The request cannot be handed to a guest (e.g. no authority).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The request body is larger than the app's `max_body`.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    /// The app is at its concurrency limit, every instance slot of the
    /// daemon is busy, or its guests together hold `--max-total-memory`.
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
    /// The guest trapped, panicked, returned an error code or never answered.
    #[error("app failed: {0}")]
    Guest(String),
    /// The guest did not answer within the request timeout.
    #[error("app did not answer within {0:?}")]
    Timeout(Duration),
    /// The version was retired (drain deadline passed) before the guest
    /// answered.
    #[error("the app version was retired before it answered")]
    Cancelled,
    /// The version's code could not be loaded (on first use, or after an
    /// idle unload); the next request tries again.
    #[error("{0}")]
    Unavailable(String),
}

/// One line saying why a guest failed: the trap (e.g. "wasm trap: wasm
/// `unreachable` instruction executed") or the error meshd raised (e.g. the
/// memory limit), without the multi-line wasm backtrace, which goes to the
/// debug log.
fn describe_trap(error: &wasmtime::Error) -> String {
    tracing::debug!("guest failure in full: {error:?}");
    let cause = match error.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => error.root_cause().to_string(),
    };
    cause.lines().collect::<Vec<_>>().join(" | ")
}

/// The `Content-Length` a head declares, if it declares a valid one.
fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    let value = headers.get(http::header::CONTENT_LENGTH)?;
    value.to_str().ok()?.parse().ok()
}

/// Everything the guest's side of one request owns.
struct GuestRun {
    store: Store<Host>,
    /// An instance to reuse; `None` instantiates a fresh one from `pre`.
    proxy: Option<Proxy>,
    pre: ProxyPre<Host>,
    /// Requests this instance has served before.
    served: u32,
    request: Resource<HostIncomingRequest>,
    response_out: Resource<HostResponseOutparam>,
    /// The version slot and the guest's failure, shared with the response
    /// body.
    share: Arc<GuestShare>,
    /// The request's place in its app's count (`max_concurrency`): held by
    /// the guest alone, so it is given back when the guest ends, not when the
    /// client has read the response.
    app_slot: InFlightGuard,
    instance_slot: InFlightGuard,
}

/// What a guest hands to its response-outparam: a response head with its
/// body, or an error code.
type GuestAnswer = Result<http::Response<HyperOutgoingBody>, ErrorCode>;

/// How far a guest got when `handle` stopped driving it.
enum Progress {
    /// It sent its response head (or an error code) and may still be running.
    Answered(GuestAnswer),
    /// It ended, with or without having answered.
    Ended(Result<(), GuestFailure>),
}

enum GuestFailure {
    Trap(String),
    /// Its memory could not grow (or be allocated) because meshd's guests
    /// together hold `--max-total-memory`.
    MemoryCeiling,
    Timeout,
    Cancelled,
}

/// Why a request is refused when meshd's memory ceiling is reached.
const MEMORY_CEILING_REACHED: &str = "meshd's guests hold all of --max-total-memory";

impl AppVersion {
    pub(crate) fn new(
        ledger: &Arc<AppLedger>,
        id: String,
        runtime: Arc<Runtime>,
        compiled: Compiled,
        settings: TenantSettings,
    ) -> Self {
        AppVersion {
            app: ledger.app_name(),
            id,
            runtime,
            code: compiled.code,
            proven: compiled.proven,
            // A proven version was found by its marker.
            marked: AtomicBool::new(compiled.proven),
            outbound: settings.outbound.clone().into(),
            config: Arc::new(settings.config.iter().cloned().collect()),
            log_budget: ledger.log_budget.clone(),
            cpu: ledger.cpu_for(settings.cpu),
            shared: ledger.shared.clone(),
            ledger: ledger.clone(),
            stats: VersionStats::default(),
            settings,
            in_flight: Arc::new(InFlight::default()),
            app_in_flight: ledger.in_flight.clone(),
            cancel: CancellationToken::new(),
            cache: compiled.cache,
            compile_time: compiled.compile_time,
        }
    }

    /// The same code with other settings (a manifest-only change): no
    /// recompile, but a new version with its own in-flight count, in the
    /// same app ledger.
    pub fn with_settings(&self, settings: TenantSettings) -> AppVersion {
        let compiled = Compiled {
            code: self.code.sibling(&self.runtime, self.id.clone()),
            // Checked with other settings: it is checked again.
            proven: false,
            cache: CacheOutcome::Shared,
            compile_time: Duration::ZERO,
        };
        AppVersion::new(
            &self.ledger,
            self.id.clone(),
            self.runtime.clone(),
            compiled,
            settings,
        )
    }

    /// The app's name.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// The version's identity, as its loader named it (meshd: the first 12
    /// hex digits of the SHA-256 digest of its `.wasm`, as in the artifact
    /// store).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The settings this version runs with.
    pub fn settings(&self) -> &TenantSettings {
        &self.settings
    }

    /// Whether the compiled code came from the cache.
    pub fn cache_outcome(&self) -> &CacheOutcome {
        &self.cache
    }

    /// How long compiling (or loading from cache) took.
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Whether its compiled code and pre-instance are in memory now.
    pub fn is_loaded(&self) -> bool {
        self.code.is_loaded()
    }

    /// Whether it started unloaded because the same code with the same
    /// settings passed its pre-traffic check on this engine before (a
    /// marker kept with the compile-cache entry, written by
    /// [`AppVersion::instantiate_once`]): it need not be checked again.
    pub fn was_checked(&self) -> bool {
        self.proven
    }

    /// What this version has served; the front door records each response.
    pub fn stats(&self) -> &VersionStats {
        &self.stats
    }

    /// Guest log lines of the app dropped over `--guest-log-rate`, since its
    /// ledger was made (the app's first deploy in this run).
    pub fn log_lines_dropped(&self) -> u64 {
        self.log_budget.dropped_total()
    }

    /// Time the app's guests have run, and time they were made to wait over
    /// their `cpu` limit, since its ledger was made.
    pub fn cpu_time(&self) -> (Duration, Duration) {
        (self.cpu.ran(), self.cpu.held())
    }

    /// Time the app's long requests gave way to short ones (of any app),
    /// since its ledger was made.
    pub fn cpu_gave_way(&self) -> Duration {
        self.cpu.gave_way_total()
    }

    /// The version's in-flight requests, for draining.
    pub fn in_flight(&self) -> &Arc<InFlight> {
        &self.in_flight
    }

    /// Tears down every guest instance still running for this version; their
    /// requests fail. Used when a drain deadline passes.
    pub fn cancel_in_flight(&self) {
        self.cancel.cancel();
    }

    /// Creates one instance in a fresh Store and drops it: what every request
    /// pays before the guest runs. Used to check a new version before it takes
    /// traffic (a start function that traps, an initial memory over the
    /// app's limit) and by the benchmarks.
    ///
    /// The instance takes one of meshd's instance slots, like a request's,
    /// waiting (up to the app's timeout) while all are busy: the pool's
    /// spare instances belong to the traffic.
    ///
    /// Once it instantiated, a marker beside the compile-cache entry says
    /// so, so that the next start may leave this code unloaded until its
    /// first request (see `load::unloaded_version`).
    pub async fn instantiate_once(&self) -> anyhow::Result<()> {
        let pre = self
            .code
            .pre(&self.runtime)
            .await
            .map_err(anyhow::Error::msg)?;
        let _slot = self.wait_for_instance_slot().await?;
        let mut store = self.new_store()?;
        let mut instantiate = std::pin::pin!(pre.instantiate_async(&mut store));
        // A start function is guest code: the epoch must advance while it runs.
        let epoch = &self.runtime.epoch;
        let instantiate = std::future::poll_fn(|cx| {
            epoch.guest_runs();
            instantiate.as_mut().poll(cx)
        });
        match tokio::time::timeout(self.settings.timeout, instantiate).await {
            Ok(result) => result
                .map(drop)
                .map_err(|e| anyhow::anyhow!(describe_trap(&e)))?,
            Err(_) => anyhow::bail!(
                "instantiation did not finish within {:?}",
                self.settings.timeout
            ),
        }
        // Once per version: building the marker's key (the settings' text,
        // hashed) and looking it up cost about 2 us, a fifth of the
        // instantiation itself (the instance bench: 11.7 -> 9.2-10.0 us).
        if self.marked.load(Ordering::Acquire) {
            return Ok(());
        }
        let (runtime, digest) = (self.runtime.clone(), *self.code.digest());
        let fingerprint = settings_fingerprint(&self.settings);
        // Known marked (a check of the same code and settings passed
        // before): no trip to a blocking thread, which cost more than the
        // instantiation itself.
        if !runtime.cache.is_known_checked(&digest, &fingerprint) {
            // A small file write, off the async workers; awaited, so that
            // the marker exists once the version is live.
            let marked = tokio::task::spawn_blocking(move || {
                runtime.cache.mark_checked(&digest, &fingerprint)
            });
            let _ = marked.await;
        }
        self.marked.store(true, Ordering::Release);
        Ok(())
    }

    /// One of meshd's instance slots, waiting up to the app's timeout.
    async fn wait_for_instance_slot(&self) -> anyhow::Result<InFlightGuard> {
        const RETRY: Duration = Duration::from_millis(10);
        let deadline = deadline_after(Instant::now(), self.settings.timeout);
        let max = self.runtime.config.max_instances;
        loop {
            if let Some(slot) = self.runtime.instance_slots.try_enter(max) {
                return Ok(slot);
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "every instance slot of meshd stayed busy for {:?}",
                    self.settings.timeout
                );
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// A fresh Store with this app's host state and limits.
    fn new_store(&self) -> anyhow::Result<Store<Host>> {
        let host = Host::new(
            &self.app,
            &self.settings,
            &self.outbound,
            &self.config,
            &self.log_budget,
            &self.shared,
            &self.runtime,
        )?;
        let mut store = Store::new(&self.runtime.engine, host);
        store
            .data_mut()
            .limiter
            .count_against(self.runtime.memory.clone());
        store.limiter(|host| &mut host.limiter);
        // Yield to the async runtime at every epoch tick, so a spinning guest
        // shares its worker thread and the request timeout can fire. The
        // yield is tokio's own: it sends the task to the back of the run
        // queue. (wasmtime's plain `Yield` wakes the task at once, which lands
        // it in tokio's LIFO slot and lets it run again before anyone else:
        // two spinning guests then starve every other tenant.) An app over
        // its `cpu` limit sleeps instead, until its share has caught up.
        let cpu = self.cpu.clone();
        store.epoch_deadline_callback(move |_| {
            let pause: Pin<Box<dyn Future<Output = ()> + Send>> = match cpu.hold_back() {
                Some(wait) => Box::pin(tokio::time::sleep(wait)),
                None => Box::pin(tokio::task::yield_now()),
            };
            Ok(UpdateDeadline::YieldCustom(1, pause))
        });
        Ok(store)
    }

    /// Takes an idle instance, if reuse is on and one is parked.
    fn take_idle(&self) -> Option<IdleInstance> {
        if self.settings.reuse <= 1 {
            return None;
        }
        self.code
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
    }

    /// Parks an instance that just served a request, if it may serve more.
    fn park(&self, store: Store<Host>, proxy: Proxy, served: u32) {
        // An unloaded version keeps no instances: they hold its code.
        if served >= self.settings.reuse || self.cancel.is_cancelled() || !self.code.is_loaded() {
            return;
        }
        let max = self.runtime.config.max_instances;
        let Some(slot) = self.runtime.idle_slots.try_enter(max) else {
            return;
        };
        let mut idle = self.code.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_PER_VERSION {
            idle.push(IdleInstance {
                store,
                proxy,
                served,
                parked_at: Instant::now(),
                _idle: slot,
            });
        }
    }

    /// Drops the instances parked for reuse that have been idle for `ttl` or
    /// longer, giving back their memory and slots. Returns how many.
    pub fn expire_idle(&self, ttl: Duration) -> usize {
        if self.settings.reuse <= 1 {
            return 0;
        }
        let expired: Vec<IdleInstance> = {
            let mut idle = self.code.idle.lock().unwrap_or_else(|e| e.into_inner());
            let (fresh, expired) = idle
                .drain(..)
                .partition(|instance| instance.parked_at.elapsed() < ttl);
            *idle = fresh;
            expired
        };
        // Tearing the instances down happens outside the lock, which
        // requests of this version take.
        expired.len()
    }

    /// Serves one request. `req` must already carry the path as the app sees
    /// it. The returned body keeps the version counted as in flight until it
    /// has been sent.
    pub async fn handle<B>(
        self: &Arc<Self>,
        req: http::Request<B>,
    ) -> Result<http::Response<ResponseBody>, ServeError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let max_body = self.settings.max_body;
        let declared = content_length(req.headers());
        if declared.is_some_and(|len| len > max_body) {
            return Err(ServeError::BodyTooLarge(max_body));
        }
        // The code, loaded on first use (or after an idle unload).
        let pre = self
            .code
            .pre(&self.runtime)
            .await
            .map_err(ServeError::Unavailable)?;
        let app_guard = self
            .app_in_flight
            .try_enter(self.settings.max_concurrency)
            .ok_or(ServeError::Overloaded("the app is at its max_concurrency"))?;
        let share = GuestShare::new(self.in_flight.enter());
        // An app over its `cpu` limit waits for its share before it takes
        // an instance from the pool the other tenants share.
        if let Some(wait) = self.cpu.hold_back() {
            if wait >= self.settings.timeout {
                return Err(ServeError::Overloaded("the app is over its cpu limit"));
            }
            tokio::time::sleep(wait).await;
        }
        let instance_slot = self
            .runtime
            .instance_slots
            .try_enter(self.runtime.config.max_instances)
            .ok_or(ServeError::Overloaded(
                "every instance slot of meshd is busy",
            ))?;
        // Cheapest first: a new instance would be refused its memory anyway.
        if self.runtime.memory.is_full() {
            return Err(ServeError::Overloaded(MEMORY_CEILING_REACHED));
        }

        let (mut store, proxy, served) = match self.take_idle() {
            Some(idle) => (idle.store, Some(idle.proxy), idle.served),
            None => {
                let store = self
                    .new_store()
                    .map_err(|e| ServeError::Guest(format!("cannot set up the instance: {e:#}")))?;
                (store, None, 0)
            }
        };
        store.set_epoch_deadline(FIRST_SLICE_TICKS);

        let (parts, body) = req.into_parts();
        let scheme = match parts.extensions.get::<ClientScheme>() {
            Some(ClientScheme { https: true }) => Scheme::Https,
            _ => Scheme::Http,
        };
        let (body, body_exceeded) = LimitedBody::new(body, max_body);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let view = &mut store.data_mut().http();
        let wasi_req = view
            .new_incoming_request(scheme, http::Request::from_parts(parts, body))
            .map_err(|e| ServeError::BadRequest(format!("{e:#}")))?;
        let out = view
            .new_response_outparam(sender)
            .map_err(|e| ServeError::Guest(format!("{e:#}")))?;

        let mut guest = self.clone().run_guest(GuestRun {
            store,
            proxy,
            pre,
            served,
            request: wasi_req,
            response_out: out,
            share: share.clone(),
            app_slot: app_guard,
            instance_slot,
        });

        // Drive the guest right here, in the connection's task, until it has
        // sent its response head or ended. Most guests write their whole
        // response and return within that first stretch, so they never cost
        // a task of their own, a wake-up or a trip through the scheduler.
        let mut receiver = receiver;
        let mut outparam_dropped = false;
        let progress = std::future::poll_fn(|cx| {
            if let Poll::Ready(outcome) = guest.as_mut().poll(cx) {
                return Poll::Ready(Progress::Ended(outcome));
            }
            if !outparam_dropped {
                match Pin::new(&mut receiver).poll(cx) {
                    Poll::Ready(Ok(answer)) => return Poll::Ready(Progress::Answered(answer)),
                    // The guest dropped its response-outparam without
                    // answering: keep driving it (its waker is registered
                    // above) to learn how it ends.
                    Poll::Ready(Err(_)) => outparam_dropped = true,
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await;
        // A guest that returned cleanly has written all of its body.
        let guest_returned = matches!(progress, Progress::Ended(Ok(())));
        let mut writer = None;
        let answer = match progress {
            Progress::Answered(answer) => {
                // The guest is still streaming its body (or doing work after
                // it): it goes on in a task of its own, with its timeout and
                // cancellation, so a client that reads slowly cannot keep it
                // from being stopped. Its response body aborts the task if
                // the client goes away before the end.
                writer = Some(tokio::spawn(guest).abort_handle());
                Ok(answer)
            }
            Progress::Ended(outcome) => match receiver.try_recv() {
                Ok(answer) => Ok(answer),
                // The guest dropped its response-outparam: say why.
                Err(_) => Err(match outcome {
                    Ok(()) => {
                        ServeError::Guest("the app returned without sending a response".into())
                    }
                    Err(GuestFailure::Trap(message)) => ServeError::Guest(message),
                    Err(GuestFailure::MemoryCeiling) => {
                        ServeError::Overloaded(MEMORY_CEILING_REACHED)
                    }
                    Err(GuestFailure::Timeout) => ServeError::Timeout(self.settings.timeout),
                    Err(GuestFailure::Cancelled) => ServeError::Cancelled,
                }),
            },
        };
        let result = match answer {
            Ok(Ok(resp)) => {
                let declared = content_length(resp.headers());
                Ok(resp.map(|body| {
                    let mut body = ResponseBody::new(body, share);
                    if guest_returned {
                        body.collect_ready();
                    }
                    if let Some(writer) = writer {
                        body.set_writer(writer, declared);
                    }
                    body
                }))
            }
            Ok(Err(code)) => Err(ServeError::Guest(format!(
                "the app answered with error code {code:?}"
            ))),
            Err(e) => Err(e),
        };
        // A body that went over the limit while streaming in gets 413,
        // whatever the guest made of the cut-off stream.
        if body_exceeded.load(Ordering::Acquire) {
            return Err(ServeError::BodyTooLarge(max_body));
        }
        result
    }

    /// The guest's side of one request: instantiate (unless reusing), call
    /// its handler, and afterwards park the instance for reuse or log why it
    /// failed. Dropping this future unfinished drops the Store, which is the
    /// only way to stop a guest mid-flight.
    fn run_guest(
        self: Arc<Self>,
        run: GuestRun,
    ) -> Pin<Box<dyn Future<Output = Result<(), GuestFailure>> + Send>> {
        Box::pin(async move {
            let GuestRun {
                mut store,
                proxy,
                pre,
                served,
                request,
                response_out,
                share,
                app_slot: _app_slot,
                instance_slot: _instance_slot,
            } = run;
            // The call borrows the Store; it ends (and is dropped) before
            // the Store is parked or dropped below.
            let result = {
                let call = async {
                    let proxy = match proxy {
                        Some(proxy) => proxy,
                        None => pre.instantiate_async(&mut store).await?,
                    };
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, request, response_out)
                        .await?;
                    Ok::<_, wasmtime::Error>(proxy)
                };
                let now = tokio::time::Instant::now();
                let deadline = deadline_after(now.into_std(), self.settings.timeout).into();
                let mut call = std::pin::pin!(call);
                // Every poll of the guest is charged to the app's `cpu`; once
                // the request is long it gives way to short ones (scheduler.rs).
                // The epoch ticker sleeps while no guest runs: each poll
                // wakes it.
                let (cpu, scheduler) = (&self.cpu, &self.runtime.scheduler);
                let epoch = &self.runtime.epoch;
                let mut turn = Turn::new(self.settings.cpu_weight);
                let call = std::future::poll_fn(|cx| {
                    turn.poll(scheduler, cpu, cx, |cx| {
                        epoch.guest_runs();
                        call.as_mut().poll(cx)
                    })
                });
                let mut call = std::pin::pin!(call);
                // Most guests finish within their first poll (which lasts at most
                // FIRST_SLICE_TICKS before the guest yields). Only a guest that
                // has to wait pays for a timer and a place on the cancel token;
                // its deadline still counts from the start. (A guest that
                // yielded at a tick in that first poll is polled again at once
                // by the select below, so its first slice can run one tick
                // longer; later ticks yield to the scheduler as usual.)
                let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
                match first {
                    Poll::Ready(Ok(proxy)) => Ok(proxy),
                    Poll::Ready(Err(e)) => Err(GuestFailure::Trap(describe_trap(&e))),
                    Poll::Pending => tokio::select! {
                        outcome = tokio::time::timeout_at(deadline, call) => match outcome {
                            Ok(Ok(proxy)) => Ok(proxy),
                            Ok(Err(e)) => Err(GuestFailure::Trap(describe_trap(&e))),
                            Err(_) => Err(GuestFailure::Timeout),
                        },
                        () = self.cancel.cancelled() => Err(GuestFailure::Cancelled),
                    },
                }
            };
            match result {
                // A failed instance is never reused.
                Ok(proxy) => {
                    self.park(store, proxy, served + 1);
                    Ok(())
                }
                Err(failure) => {
                    let failure = match failure {
                        GuestFailure::Trap(_) if store.data().limiter.refused_by_ceiling() => {
                            GuestFailure::MemoryCeiling
                        }
                        other => other,
                    };
                    share.set_guest_failed();
                    self.log_failure(&failure);
                    Err(failure)
                }
            }
        })
    }

    fn log_failure(&self, failure: &GuestFailure) {
        // A tenant can fail its requests at will: these warnings are held to
        // a rate per app, like its own output.
        if !self.log_budget.admit_warning() {
            return;
        }
        match failure {
            GuestFailure::Trap(message) => tracing::warn!(
                app = %self.app, version = %self.id, error = %message,
                "request failed: guest trapped"
            ),
            GuestFailure::MemoryCeiling => tracing::warn!(
                app = %self.app, version = %self.id,
                "request refused: meshd's guests hold all of --max-total-memory"
            ),
            GuestFailure::Timeout => tracing::warn!(
                app = %self.app, version = %self.id, timeout = ?self.settings.timeout,
                "request timed out; guest instance torn down"
            ),
            GuestFailure::Cancelled => tracing::warn!(
                app = %self.app, version = %self.id,
                "request cancelled: its version was retired before it finished"
            ),
        }
    }
}

/// A fingerprint of everything a version's instantiation may depend on
/// besides its code: its settings, hashed (they may hold secrets).
pub(crate) fn settings_fingerprint(settings: &TenantSettings) -> String {
    blake3::hash(format!("{settings:?}").as_bytes())
        .to_hex()
        .to_string()
}

/// `now + timeout`, without the panic on overflow: manifests cap durations
/// at a day (`meshd_apps::MAX_DURATION`), and past that this clamps to it.
fn deadline_after(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout)
        .or_else(|| now.checked_add(meshd_apps::MAX_DURATION))
        .unwrap_or(now)
}
