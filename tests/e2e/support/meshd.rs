//! A real `meshd` process for one test.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for meshd to start or for a log line.
pub const WAIT: Duration = Duration::from_secs(60);

/// Configures a meshd process before it starts.
pub struct MeshdBuilder {
    apps: PathBuf,
    cache_dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    max_open_files: Option<u64>,
    listen: String,
    program: Option<PathBuf>,
}

/// A running meshd, killed when dropped. Its stderr is collected so tests can
/// wait for and assert on log lines; it is printed if the test fails.
///
/// Dropping it ends the test with two checks (see [`Meshd::check_healthy`]):
/// meshd is still running, and no line of its own log says "panicked". A test
/// that stops meshd on purpose says so with [`Meshd::expect_exit`] (sending
/// TERM, INT, QUIT or KILL and [`Meshd::wait_exit`] say it too); a test that
/// makes meshd panic on purpose says so with [`Meshd::allow_panics`].
pub struct Meshd {
    child: Child,
    addr: SocketAddr,
    log: Arc<(Mutex<Vec<String>>, Condvar)>,
    _temp_dirs: Vec<tempfile::TempDir>,
    /// The test stops meshd itself: do not require it alive at the end.
    may_exit: AtomicBool,
    /// The test makes meshd panic: do not look for "panicked" at the end.
    may_panic: AtomicBool,
    /// The processes graceful restarts handed over to, in order (see
    /// [`Meshd::handed_over_to`]).
    successors: Mutex<Vec<u32>>,
    /// The apps directory, to recognise this test's meshd processes.
    apps: PathBuf,
}

impl Meshd {
    /// A builder for a meshd serving `apps`.
    pub fn builder(apps: &Path) -> MeshdBuilder {
        MeshdBuilder {
            apps: apps.to_owned(),
            cache_dir: None,
            data_dir: None,
            args: Vec::new(),
            env: Vec::new(),
            max_open_files: None,
            listen: "127.0.0.1:0".to_owned(),
            program: None,
        }
    }

    /// Starts meshd on `apps` with defaults and waits until it listens.
    pub fn start(apps: &Path) -> Meshd {
        Self::builder(apps).start()
    }

    /// The address meshd listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The process id of the meshd started.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process id of the meshd serving now: the last one a graceful
    /// restart handed over to, else the one started.
    pub fn serving_pid(&self) -> u32 {
        let successors = self.successors.lock().unwrap_or_else(|e| e.into_inner());
        successors.last().copied().unwrap_or_else(|| self.pid())
    }

    /// Records that a graceful restart handed over to the process `pid`
    /// (its log goes on in the same log): signals go to it from now on, the
    /// end-of-test check requires it (not the first process) alive, and it
    /// is killed at the end of the test.
    pub fn handed_over_to(&self, pid: u32) {
        self.successors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pid);
    }

    /// The address of the metrics endpoint of a meshd started with
    /// `--metrics-listen`, as its log names it.
    pub fn metrics_url(&self) -> String {
        let line = self.wait_for_log(&["metrics listening on http://"]);
        line.split("http://")
            .nth(1)
            .map(address_prefix)
            .map(|addr| format!("http://{addr}"))
            .expect("the log names the metrics address")
    }

    /// The HTTPS address of a meshd started with `--listen-tls`, as its log
    /// names it.
    pub fn https_addr(&self) -> SocketAddr {
        let line = self.wait_for_log(&["meshd listening on https://"]);
        line.split("https://")
            .nth(1)
            .map(address_prefix)
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("cannot parse the HTTPS address from {line:?}"))
    }

    /// The address of the admin API of a meshd started with `--admin`, as
    /// its log names it (`http://ADDR`).
    pub fn admin_url(&self) -> String {
        let line = self.wait_for_log(&["admin API listening on http://"]);
        line.split("http://")
            .nth(1)
            .map(address_prefix)
            .map(|addr| format!("http://{addr}"))
            .expect("the log names the admin address")
    }

    /// All log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Number of log lines containing every one of `needles`.
    pub fn count_log(&self, needles: &[&str]) -> usize {
        self.log()
            .iter()
            .filter(|line| needles.iter().all(|n| line.contains(n)))
            .count()
    }

    /// Waits until a log line contains every one of `needles` and returns it.
    pub fn wait_for_log(&self, needles: &[&str]) -> String {
        self.wait_for_log_count(needles, 1)
    }

    /// Waits until `count` log lines contain every one of `needles`; returns
    /// the last of them.
    pub fn wait_for_log_count(&self, needles: &[&str], count: usize) -> String {
        let deadline = Instant::now() + WAIT;
        let (lines, changed) = &*self.log;
        let mut lines = lines.lock().unwrap();
        loop {
            let matching: Vec<&String> = lines
                .iter()
                .filter(|line| needles.iter().all(|n| line.contains(n)))
                .collect();
            if matching.len() >= count {
                return matching[count - 1].clone();
            }
            let now = Instant::now();
            if now >= deadline {
                let log = lines.join("\n");
                drop(lines);
                panic!("no log line containing {needles:?} (wanted {count}) within {WAIT:?}; log:\n{log}");
            }
            lines = changed.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Whether meshd has exited (without saying the test expected it: see
    /// [`Meshd::expect_exit`]).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Says that this test stops meshd on purpose: the end-of-test check
    /// does not require it to be alive.
    pub fn expect_exit(&self) {
        self.may_exit.store(true, Ordering::Relaxed);
    }

    /// Says that this test makes meshd panic on purpose: the end-of-test
    /// check does not look for "panicked" in its log.
    pub fn allow_panics(&self) {
        self.may_panic.store(true, Ordering::Relaxed);
    }

    /// Lines of meshd's own log (not a guest's stdout or stderr, which meshd
    /// logs with a `stream` field) that say something panicked.
    pub fn panic_lines(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|line| line.contains("panicked"))
            .filter(|line| !is_guest_output(line))
            .collect()
    }

    /// Panics unless meshd is still running (when the test did not stop it)
    /// and no line of its own log says "panicked" (when the test did not
    /// ask for a panic). Every test ends with this check: `Drop` runs it.
    pub fn check_healthy(&mut self) {
        let successor = self.successors.lock().unwrap().last().copied();
        if let (false, Some(pid)) = (self.may_exit.load(Ordering::Relaxed), successor) {
            assert!(
                is_running(pid),
                "the meshd a restart handed over to (pid {pid}) exited during the test; log:\n{}",
                self.log().join("\n")
            );
        } else if !self.may_exit.load(Ordering::Relaxed) {
            match self.child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => panic!(
                    "meshd exited during the test ({status}); log:\n{}",
                    self.log().join("\n")
                ),
                Err(e) => panic!("cannot tell whether meshd runs: {e}"),
            }
        }
        if !self.may_panic.load(Ordering::Relaxed) {
            let panics = self.panic_lines();
            assert!(
                panics.is_empty(),
                "meshd panicked during the test:\n{}\nlog:\n{}",
                panics.join("\n"),
                self.log().join("\n")
            );
        }
    }

    /// [`Meshd::wait_for_log`] for async tests: waits without blocking the
    /// runtime's thread, so the test's own tasks (a request in flight on a
    /// single-threaded runtime) keep running meanwhile.
    pub async fn wait_for_log_async(&self, needles: &[&str]) -> String {
        self.wait_for_log_count_async(needles, 1).await
    }

    /// [`Meshd::wait_for_log_count`] for async tests (see
    /// [`Meshd::wait_for_log_async`]).
    pub async fn wait_for_log_count_async(&self, needles: &[&str], count: usize) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let matching: Vec<String> = self
                .log()
                .into_iter()
                .filter(|line| needles.iter().all(|n| line.contains(n)))
                .collect();
            if matching.len() >= count {
                return matching[count - 1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line containing {needles:?} (wanted {count}) within {WAIT:?}; log:\n{}",
                self.log().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends a signal (`TERM`, `INT`, `HUP`, ...) to meshd. A signal that
    /// stops it (`TERM`, `INT`, `QUIT`, `KILL`) counts as
    /// [`Meshd::expect_exit`].
    pub fn signal(&self, name: &str) {
        if matches!(name, "TERM" | "INT" | "QUIT" | "KILL") {
            self.expect_exit();
        }
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.serving_pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for meshd to exit, at most `timeout` (the test expects the exit:
    /// see [`Meshd::expect_exit`]).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        self.expect_exit();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "meshd did not exit within {timeout:?}; log:\n{}",
                self.log().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl MeshdBuilder {
    /// Uses `dir` as the compile cache (default: a fresh temporary one).
    pub fn cache_dir(mut self, dir: &Path) -> Self {
        self.cache_dir = Some(dir.to_owned());
        self
    }

    /// Uses `dir` as the data directory (default: a fresh temporary one).
    pub fn data_dir(mut self, dir: &Path) -> Self {
        self.data_dir = Some(dir.to_owned());
        self
    }

    /// Serves plain HTTP on `addr` (default: 127.0.0.1:0, a free port).
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = addr.to_owned();
        self
    }

    /// Adds command-line arguments.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// Sets an environment variable of the meshd process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Starts meshd from `program` (a copy or link of the meshd binary,
    /// which a test may replace) instead of the binary cargo built.
    pub fn program(mut self, program: &Path) -> Self {
        self.program = Some(program.to_owned());
        self
    }

    /// Starts meshd with an open-file limit (soft and hard) of `n`.
    pub fn max_open_files(mut self, n: u64) -> Self {
        self.max_open_files = Some(n);
        self
    }

    /// Starts meshd and waits until it listens (or panics with its log).
    pub fn start(self) -> Meshd {
        let mut temp_dirs = Vec::new();
        let mut dir_or_temp = |dir: Option<PathBuf>| match dir {
            Some(dir) => dir,
            None => {
                let tmp = tempfile::tempdir().expect("temp dir");
                let path = tmp.path().to_owned();
                temp_dirs.push(tmp);
                path
            }
        };
        let cache_dir = dir_or_temp(self.cache_dir);
        let data_dir = dir_or_temp(self.data_dir);
        let meshd = self
            .program
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_meshd")));
        let mut command = match self.max_open_files {
            // The shell sets the limit, then becomes meshd (same pid).
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(meshd);
                sh
            }
            None => Command::new(&meshd),
        };
        let mut child = command
            .arg("--apps")
            .arg(&self.apps)
            .arg("--listen")
            .arg(&self.listen)
            .arg("--cache-dir")
            .arg(&cache_dir)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            // MESHD_TEST_LOG raises meshd's log level while debugging a test
            // (e.g. `meshd=debug,async_nats=debug`); the tests read info lines.
            .env(
                "MESHD_LOG",
                std::env::var("MESHD_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("meshd starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new((Mutex::new(Vec::<String>::new()), Condvar::new()));
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let (lines, changed) = &*log;
                    lines.lock().unwrap().push(line);
                    changed.notify_all();
                }
            });
        }
        let mut meshd = Meshd {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            _temp_dirs: temp_dirs,
            may_exit: AtomicBool::new(false),
            may_panic: AtomicBool::new(false),
            successors: Mutex::new(Vec::new()),
            apps: self.apps.clone(),
        };
        let line = meshd.wait_for_log(&["meshd listening on http://"]);
        let addr = line
            .split("http://")
            .nth(1)
            .map(address_prefix)
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("cannot parse the listen address from {line:?}"));
        meshd.addr = addr;
        meshd
    }
}

/// Whether process `pid` runs (exists and is not a zombie).
pub fn is_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether a log line is a guest's stdout or stderr (text or JSON format).
fn is_guest_output(line: &str) -> bool {
    [
        "stream=stdout",
        "stream=stderr",
        r#""stream":"stdout""#,
        r#""stream":"stderr""#,
    ]
    .iter()
    .any(|tag| line.contains(tag))
}

impl Drop for Meshd {
    fn drop(&mut self) {
        // The processes restarts handed over to are not children of this
        // one: kill them by pid (only ours, recorded by the test).
        // Those the test did not record (it failed before) are found in the
        // log, and killed only if their command line names this test's
        // apps directory.
        let mut successors: Vec<u32> = self
            .successors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let apps = self.apps.to_string_lossy().into_owned();
        for line in self.log() {
            if !line.contains("the new meshd process started") {
                continue;
            }
            let pid = line
                .split("pid=")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|pid| pid.parse::<u32>().ok());
            let ours = |pid: u32| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&apps))
            };
            if let Some(pid) = pid.filter(|&pid| ours(pid)) {
                successors.push(pid);
            }
        }
        let kill_successors = || {
            for pid in &successors {
                if is_running(*pid) {
                    let _ = Command::new("kill")
                        .arg("-KILL")
                        .arg(pid.to_string())
                        .status();
                }
            }
        };
        if std::thread::panicking() {
            kill_successors();
            let _ = self.child.kill();
            let _ = self.child.wait();
            eprintln!("--- meshd log ---\n{}\n--- end ---", self.log().join("\n"));
            return;
        }
        // The test passed so far: it ends by checking that meshd survived it.
        let healthy =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.check_healthy()));
        kill_successors();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Err(panic) = healthy {
            std::panic::resume_unwind(panic);
        }
    }
}

/// What follows `http://` in a log line, up to the end of the URL (a space
/// in the text format, a `"` in JSON).
fn address_prefix(text: &str) -> &str {
    let end = text
        .find(|c: char| c.is_whitespace() || c == '"')
        .unwrap_or(text.len());
    &text[..end]
}
