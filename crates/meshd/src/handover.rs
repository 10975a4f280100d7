//! Graceful restart of meshd itself (SIGUSR2, or `POST /v1/restart` on the
//! admin API): the binary now at meshd's path is started with the same
//! arguments and takes over the listening sockets; this process stops
//! accepting only once the new one is ready, then drains and exits.
//!
//! How the sockets and the readiness travel (docs/operations.md,
//! "Upgrading meshd"):
//!
//! - The listening sockets (front door `http`/`https`, `admin`, `metrics`)
//!   are inherited: a `pre_exec` hook places them at descriptors 3, 4, ...
//!   without close-on-exec, and `LISTEN_FDS`/`LISTEN_FDNAMES` name them as
//!   systemd's socket activation does, so the new process takes them the
//!   way it takes systemd's (crate::front_door::Activated).
//! - `LISTEN_PID` cannot be known before the fork (std's `Command` builds
//!   the environment first), so the parent removes it and sets meshd's own
//!   `MESHD_HANDOVER_READY_FD`: a process that finds it sets `LISTEN_PID`
//!   (and `WATCHDOG_PID`, if set) to itself before any thread starts.
//! - `MESHD_HANDOVER_READY_FD` names the write end of a pipe, the
//!   descriptor after the sockets. The new process writes one line,
//!   `ready serving=N refused=M`, once every app has been decided (loaded
//!   and health-checked, or refused) and its listeners are set up; it
//!   accepts connections only after that. End of file without that line
//!   (it exited or crashed), or no line within `--restart-timeout`, and the
//!   old process kills it and keeps serving.
//! - `MESHD_HANDOVER_SERVING` is how many apps the old process serves: a
//!   new process that would serve fewer (an app the new binary or
//!   configuration refuses) exits instead of saying it is ready.
//!
//! Only one restart runs at a time; once one has handed over, this process
//! refuses more (it is on its way out).

use anyhow::{bail, Context as _, Result};
use meshd_admin::{RestartRefused, RestartTrigger, Restarted};
use std::ffi::OsString;
use std::io::{BufRead as _, Write as _};
use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The descriptor on which a process started by a graceful restart says it
/// is ready (meshd's own variable; see the module docs).
pub const READY_FD_VAR: &str = "MESHD_HANDOVER_READY_FD";

/// How many apps the previous process serves (meshd's own variable).
pub const SERVING_VAR: &str = "MESHD_HANDOVER_SERVING";

/// The first descriptor of passed sockets (systemd's `SD_LISTEN_FDS_START`).
const FIRST_PASSED_FD: RawFd = 3;

/// Most descriptors a restart passes: the four listeners and the pipe.
const MAX_PASSED: usize = 8;

/// How meshd was started: what a restart starts again.
#[derive(Debug, Clone)]
pub struct Launch {
    program: PathBuf,
    args: Vec<OsString>,
}

impl Launch {
    /// The path meshd was started by and its arguments, read at start-up
    /// (before anything can change the working directory). Not
    /// `/proc/self/exe`: after an upgrade replaced the file, that still
    /// names the old binary's inode; the path names the new binary.
    pub fn capture() -> Launch {
        let mut argv = std::env::args_os();
        let argv0 = argv.next().map(PathBuf::from);
        let args = argv.collect();
        let program = match argv0 {
            // Started by a path (absolute, or relative to where it started).
            Some(path) if path.components().count() > 1 => {
                std::path::absolute(&path).unwrap_or(path)
            }
            // Found on PATH: the same PATH entry (a link stays a link, so
            // that an upgrade that moves the link is followed), else the
            // file it runs from.
            Some(name) => on_path(&name)
                .or_else(|| std::env::current_exe().ok())
                .unwrap_or(name),
            None => std::env::current_exe().unwrap_or_else(|_| PathBuf::from("meshd")),
        };
        Launch { program, args }
    }
}

/// The first `PATH` entry holding a file called `name`, made absolute.
fn on_path(name: &std::path::Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .and_then(|found| std::path::absolute(found).ok())
}

/// The process this one replaces, when started by a graceful restart.
pub struct Predecessor {
    ready: std::fs::File,
    /// How many apps it serves.
    serving: usize,
}

/// Called first thing, before any thread starts (it changes the
/// environment): if the previous meshd process started this one, takes the
/// ready pipe and addresses `LISTEN_FDS` (and the watchdog) to this process.
pub fn adopt() -> Result<Option<Predecessor>> {
    let Some(value) = std::env::var_os(READY_FD_VAR) else {
        return Ok(None);
    };
    std::env::remove_var(READY_FD_VAR);
    let serving = std::env::var(SERVING_VAR)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    std::env::remove_var(SERVING_VAR);
    let fd: RawFd = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .filter(|&fd| fd >= FIRST_PASSED_FD)
        .with_context(|| format!("{READY_FD_VAR}={value:?} is not a descriptor number"))?;
    // SAFETY: fcntl on a number only queries and sets flags; an unused
    // number fails with EBADF.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        bail!("{READY_FD_VAR}={fd}: {}", std::io::Error::last_os_error());
    }
    let pid = std::process::id().to_string();
    std::env::set_var("LISTEN_PID", &pid);
    if std::env::var_os("WATCHDOG_PID").is_some() {
        std::env::set_var("WATCHDOG_PID", &pid);
    }
    // SAFETY: the previous process passed this descriptor for this process
    // alone to own (see the module docs); it is open (checked above).
    let ready = unsafe { std::fs::File::from_raw_fd(fd) };
    Ok(Some(Predecessor { ready, serving }))
}

impl Predecessor {
    /// Tells the previous process this one is ready (it then stops
    /// accepting, drains and exits). Fails if it is gone: then this process
    /// should not serve beside nobody's knowledge, and exits.
    /// Refuses to take over (an error: this process exits, the previous
    /// one keeps serving) if it would serve fewer apps than the previous.
    pub fn report_ready(mut self, serving: usize, refused: usize) -> Result<()> {
        if serving < self.serving {
            bail!(
                "graceful restart: this new process would serve {serving} apps ({refused} refused), the running one serves {}; not taking over (the lines above say which app was refused and why)",
                self.serving
            );
        }
        writeln!(self.ready, "ready serving={serving} refused={refused}")
            .context("cannot tell the previous meshd process this one is ready (has it exited?)")
    }
}

/// A listening socket to pass on, by the name the new process takes it by.
pub struct Passed {
    name: &'static str,
    fd: OwnedFd,
}

impl Passed {
    /// A duplicate of `socket`'s descriptor, kept for restarts.
    pub fn dup(name: &'static str, socket: &impl std::os::fd::AsFd) -> Result<Passed> {
        let fd = socket
            .as_fd()
            .try_clone_to_owned()
            .with_context(|| format!("cannot keep the {name} socket for a graceful restart"))?;
        Ok(Passed { name, fd })
    }
}

/// Restarts meshd on request, one at a time.
pub struct Restarter {
    launch: Launch,
    /// What this process serves: the new one must serve as many apps.
    registry: Arc<meshd_registry::Registry>,
    /// Copies of the listening sockets; emptied when this process stops
    /// serving, so that a stopped port refuses connections instead of
    /// queueing them.
    sockets: std::sync::Mutex<Vec<Passed>>,
    timeout: Duration,
    busy: tokio::sync::Mutex<()>,
    /// Cancelled once a new process has taken over.
    handed_over: CancellationToken,
    /// Cancelled when this process shuts down (SIGTERM): a restart under
    /// way is abandoned.
    shutdown: CancellationToken,
    /// Set while a restart is under way (and after it handed over): the
    /// admin API refuses changes, which the new process would not have.
    restarting: Arc<AtomicBool>,
}

impl Restarter {
    /// A restarter passing `sockets`, allowing the new process `timeout`.
    pub fn new(
        launch: Launch,
        registry: Arc<meshd_registry::Registry>,
        sockets: Vec<Passed>,
        timeout: Duration,
        shutdown: CancellationToken,
        restarting: Arc<AtomicBool>,
    ) -> Arc<Restarter> {
        Arc::new(Restarter {
            launch,
            registry,
            sockets: std::sync::Mutex::new(sockets),
            timeout,
            busy: tokio::sync::Mutex::new(()),
            handed_over: CancellationToken::new(),
            shutdown,
            restarting,
        })
    }

    /// Cancelled once a new process has taken over: stop accepting, drain,
    /// exit.
    pub fn handed_over(&self) -> CancellationToken {
        self.handed_over.clone()
    }

    /// Closes the copies of the listening sockets: this process stops
    /// serving (a shutdown, or it handed over).
    pub fn close_sockets(&self) {
        self.lock_sockets().clear();
    }

    fn lock_sockets(&self) -> std::sync::MutexGuard<'_, Vec<Passed>> {
        self.sockets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves restart requests from SIGUSR2 (`signals`) and the admin API
    /// (`admin`) until this process stops (`stop`).
    pub async fn run(
        self: Arc<Self>,
        mut signals: mpsc::Receiver<()>,
        mut admin: mpsc::Receiver<oneshot::Sender<Result<Restarted, RestartRefused>>>,
        stop: CancellationToken,
    ) {
        loop {
            let reply = tokio::select! {
                Some(()) = signals.recv() => None,
                Some(reply) = admin.recv() => Some(reply),
                () = stop.cancelled() => return,
                else => return,
            };
            let restarter = self.clone();
            tokio::spawn(async move {
                let outcome = restarter.restart().await;
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            });
        }
    }

    /// One graceful restart: starts the new process, waits for it to be
    /// ready, and hands over; or says why not (this process keeps serving).
    pub async fn restart(&self) -> Result<Restarted, RestartRefused> {
        let Ok(_one_at_a_time) = self.busy.try_lock() else {
            tracing::warn!("graceful restart requested while one is under way; ignored");
            return Err(RestartRefused::InProgress);
        };
        if self.handed_over.is_cancelled() {
            tracing::warn!("graceful restart requested after this process handed over; ignored");
            return Err(RestartRefused::InProgress);
        }
        let started = Instant::now();
        self.restarting.store(true, Ordering::SeqCst);
        tracing::info!(
            program = %self.launch.program.display(),
            sockets = %self.socket_names(),
            timeout = ?self.timeout,
            "graceful restart: starting the new meshd process"
        );
        match self.start_successor().await {
            Ok((new_pid, message)) => {
                let old_pid = std::process::id();
                tracing::info!(
                    new_pid,
                    took = ?started.elapsed(),
                    status = message.trim_end(),
                    "graceful restart: the new meshd process is ready; this one stops accepting, drains and exits"
                );
                crate::service::handed_over(new_pid);
                self.handed_over.cancel();
                Ok(Restarted { old_pid, new_pid })
            }
            Err(e) => {
                self.restarting.store(false, Ordering::SeqCst);
                tracing::error!(
                    error = format!("{e:#}"),
                    "graceful restart failed; this process keeps serving"
                );
                Err(RestartRefused::Failed(format!("{e:#}")))
            }
        }
    }

    fn socket_names(&self) -> String {
        let names: Vec<&str> = self.lock_sockets().iter().map(|s| s.name).collect();
        names.join(":")
    }

    /// Starts the new process with the sockets and the ready pipe; returns
    /// its pid and ready line once it is ready.
    async fn start_successor(&self) -> Result<(u32, String)> {
        let (read, write) = std::io::pipe().context("cannot create the ready pipe")?;
        // Copies of the sockets held until the child has them (the originals
        // may be closed meanwhile by a shutdown).
        let sockets: Vec<(&'static str, OwnedFd)> = self
            .lock_sockets()
            .iter()
            .map(|s| Ok((s.name, s.fd.try_clone()?)))
            .collect::<std::io::Result<_>>()
            .context("cannot copy the listening sockets")?;
        if sockets.is_empty() {
            bail!("this process no longer has its listening sockets (it is stopping)");
        }
        let names: Vec<&str> = sockets.iter().map(|(name, _)| *name).collect();
        let mut fds: Vec<RawFd> = sockets.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        fds.push(write.as_fd().as_raw_fd());
        if fds.len() > MAX_PASSED {
            bail!("too many sockets to pass ({})", fds.len());
        }
        let ready_fd = FIRST_PASSED_FD + RawFd::try_from(sockets.len())?;
        let mut command = tokio::process::Command::new(&self.launch.program);
        command
            .args(&self.launch.args)
            .env("LISTEN_FDS", sockets.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"))
            .env(READY_FD_VAR, ready_fd.to_string())
            .env(SERVING_VAR, self.registry.load().routes.len().to_string())
            .env_remove("LISTEN_PID");
        // SAFETY: the hook only calls fcntl and dup2 (async-signal-safe) on
        // a fixed-size array; `fds` was built before the fork.
        unsafe {
            command.pre_exec(move || place_descriptors(&fds));
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", self.launch.program.display()))?;
        // Only the child holds the write end (and its sockets) now: end of
        // file means it is gone (or closed it without a word).
        drop(write);
        drop(sockets);
        let pid = child.id().context("the new process has no pid")?;
        tracing::info!(pid, "graceful restart: the new meshd process started");
        let mut reading = tokio::task::spawn_blocking(move || read_ready_line(read));
        let failure = tokio::select! {
            line = &mut reading => match line {
                Ok(Ok(Some(line))) if line.starts_with("ready") => return Ok((pid, line)),
                Ok(Ok(Some(line))) => format!("the new process (pid {pid}) said {line:?} instead of ready"),
                Ok(Ok(None)) => format!("the new process (pid {pid}) closed the ready pipe without saying it was ready"),
                Ok(Err(e)) => format!("cannot read the ready pipe of the new process (pid {pid}): {e}"),
                Err(e) => format!("the ready pipe's reader failed: {e}"),
            },
            () = tokio::time::sleep(self.timeout) => {
                format!("the new process (pid {pid}) was not ready within --restart-timeout ({:?})", self.timeout)
            }
            () = self.shutdown.cancelled() => {
                format!("this meshd is shutting down; stopped the new process (pid {pid})")
            }
        };
        // It failed: make sure it is gone, and say how it ended.
        let status = match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
            Ok(Ok(status)) => format!("it exited: {status}"),
            _ => {
                let _ = child.kill().await;
                "it was killed".to_owned()
            }
        };
        reading.abort();
        bail!("{failure}; {status} (its own log lines above say why)")
    }
}

/// Reads the new process's one line (or end of file).
fn read_ready_line(read: std::io::PipeReader) -> std::io::Result<Option<String>> {
    let mut line = String::new();
    let mut reader = std::io::BufReader::new(read);
    match reader.read_line(&mut line)? {
        0 => Ok(None),
        _ => Ok(Some(line)),
    }
}

/// In the child between fork and exec: places `fds` at 3, 4, ... without
/// close-on-exec. Each is first copied above that range (close-on-exec), so
/// that placing one never overwrites another not yet placed.
fn place_descriptors(fds: &[RawFd]) -> std::io::Result<()> {
    let count = RawFd::try_from(fds.len()).unwrap_or(RawFd::MAX);
    let mut high = [0 as RawFd; MAX_PASSED];
    for (slot, &fd) in high.iter_mut().zip(fds) {
        // SAFETY: fcntl is async-signal-safe; `fd` is open in the parent.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, FIRST_PASSED_FD + count) };
        if copy < 0 {
            return Err(std::io::Error::last_os_error());
        }
        *slot = copy;
    }
    for (target, &copy) in (FIRST_PASSED_FD..).zip(&high[..fds.len()]) {
        // SAFETY: dup2 is async-signal-safe; the copy leaves close-on-exec
        // off on `target`.
        if unsafe { libc::dup2(copy, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The channel `POST /v1/restart` sends its requests on.
pub fn admin_channel() -> (
    RestartTrigger,
    mpsc::Receiver<oneshot::Sender<Result<Restarted, RestartRefused>>>,
) {
    mpsc::channel(4)
}
