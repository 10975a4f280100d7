//! Command-line flags. Every flag has an environment variable and a default
//! that works out of the box.

use bytesize::ByteSize;
use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// meshd hosts many tenants' WebAssembly HTTP apps in one process.
///
/// Every NAME.wasm in the apps directory (a component for the wasi:http/proxy
/// world) is served at http://LISTEN/NAME/... An optional NAME.toml beside it
/// may set `route = "/other/prefix"`. Each request runs in a fresh, isolated
/// instance of its app. Changing a file in the directory redeploys that app
/// without dropping requests; SIGHUP forces a rescan; SIGINT or SIGTERM shut
/// down gracefully.
#[derive(Debug, Parser)]
#[command(name = "meshd", version, about, long_about, max_term_width = 100)]
pub struct Args {
    /// Directory of apps: NAME.wasm, with an optional NAME.toml manifest.
    #[arg(long, env = "MESHD_APPS", default_value = "./apps", value_name = "DIR")]
    pub apps: PathBuf,

    /// Address to serve HTTP/1.1 and h2c (prior knowledge) on. Port 0 picks a
    /// free port; the chosen address is logged. [default: 127.0.0.1:8080,
    /// unless --listen-tls is given: then plain HTTP is served only when
    /// --listen is given too]
    #[arg(long, env = "MESHD_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    // --- HTTPS and client addresses (docs/operations.md, "HTTPS") ---
    /// Address to serve HTTPS on (TLS 1.2 and 1.3; HTTP/2 or HTTP/1.1 by
    /// ALPN), beside or instead of --listen. Certificates come from the
    /// `[tls]` table of --config, chosen by SNI and reloaded when their
    /// files change. Sockets systemd passes (socket activation) named
    /// `http` and `https` are served instead of binding --listen and
    /// --listen-tls.
    #[arg(long, env = "MESHD_LISTEN_TLS", value_name = "ADDR")]
    pub listen_tls: Option<SocketAddr>,

    /// Peers whose `forwarded`, `x-forwarded-for` and `x-forwarded-proto`
    /// headers meshd appends to (CIDRs or addresses, comma-separated, e.g.
    /// 10.0.0.0/8,192.0.2.7). From any other peer those headers are
    /// replaced, so a client cannot pass itself off as another.
    #[arg(long, env = "MESHD_TRUSTED_PROXIES", value_name = "CIDRS", value_parser = meshd_server::TrustedProxies::parse, default_value = "")]
    pub trusted_proxies: meshd_server::TrustedProxies,

    /// Every connection to --listen and --listen-tls starts with a PROXY
    /// protocol header (v1 or v2, from a TCP load balancer such as HAProxy
    /// or a cloud network load balancer); the client address it names is
    /// the one apps, the forwarded headers and the access log see. A
    /// connection without one is closed. Only the load balancer must be
    /// able to reach these ports.
    #[arg(long, env = "MESHD_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,
    // --- end of HTTPS and client addresses ---
    /// Where compiled apps are cached, so a restart does not recompile them.
    /// [default: $XDG_CACHE_HOME/meshd, else ~/.cache/meshd]
    #[arg(long, env = "MESHD_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Where app data lives (the wasi:keyvalue database, unless meshd.toml
    /// selects Redis). [default: $XDG_DATA_HOME/meshd, else
    /// ~/.local/share/meshd]
    #[arg(long, env = "MESHD_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// How many versions of each app the artifact store (in the data
    /// directory) keeps for rollback, the live one included.
    #[arg(long, env = "MESHD_KEEP_VERSIONS", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000), value_name = "N")]
    pub keep_versions: u16,

    /// On SIGINT/SIGTERM (or after a graceful restart), how long in-flight
    /// requests may take to finish before meshd exits anyway.
    #[arg(long, env = "MESHD_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = meshd_apps::parse_duration, value_name = "DURATION")]
    pub shutdown_timeout: Duration,

    // --- graceful restart (docs/operations.md, "Upgrading meshd") ---
    /// On SIGUSR2 or `POST /v1/restart`, how long the new meshd process may
    /// take to load every app and say it is ready; past it, it is killed
    /// and this one keeps serving.
    #[arg(long, env = "MESHD_RESTART_TIMEOUT", default_value = "5m", value_parser = meshd_apps::parse_duration, value_name = "DURATION")]
    pub restart_timeout: Duration,
    // --- end of graceful restart ---
    /// On redeploy or removal of an app, how long the old version may take to
    /// finish its in-flight requests before they are cancelled.
    #[arg(long, env = "MESHD_DRAIN_TIMEOUT", default_value = "30s", value_parser = meshd_apps::parse_duration, value_name = "DURATION")]
    pub drain_timeout: Duration,

    /// How long a new version's health check (`health = "/path"` in its
    /// manifest) may take before the version is refused.
    #[arg(long, env = "MESHD_HEALTH_TIMEOUT", default_value = "5s", value_parser = meshd_apps::parse_duration, value_name = "DURATION")]
    pub health_timeout: Duration,

    /// How many apps are compiled at once (a deploy of many apps, or a
    /// start-up without a cache). A compile that passed --max-compile-time
    /// keeps its slot until it really ends. [default: one per CPU]
    #[arg(long, env = "MESHD_LOAD_PARALLELISM", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub load_parallelism: Option<u16>,

    /// Longest time compiling one app's .wasm may take. A compile still
    /// running then is refused with an error naming the app (a working
    /// version of it keeps serving); the compiler thread cannot be stopped,
    /// so it runs to its end in the background, holding one of the
    /// --load-parallelism slots, and its result is thrown away.
    #[arg(long, env = "MESHD_MAX_COMPILE_TIME", default_value = "120s", value_parser = meshd_apps::parse_duration, value_name = "DURATION")]
    pub max_compile_time: Duration,

    /// How an instance's memory is made fresh for the next request. `auto`:
    /// `in-place` unless the host has swap on, then `give-back`. `in-place`
    /// resets the pages a request dirtied and keeps them resident (fast);
    /// it relies on those pages staying in RAM, so with swap on a dirty page
    /// swapped out could carry one request's data to the next. `give-back`
    /// returns every page to the kernel after each request (slower, safe
    /// with swap).
    #[arg(
        long,
        env = "MESHD_MEMORY_RESET",
        value_enum,
        default_value = "auto",
        value_name = "HOW"
    )]
    pub memory_reset: MemoryResetArg,

    /// Daemon settings file (TOML). Its `[limits]` table sets default limits
    /// for every app (flags override it, app manifests override both); its
    /// `[ceiling]` table caps what any manifest may ask for; its
    /// `[keyvalue]` table chooses the key-value backend and its limits.
    #[arg(long, env = "MESHD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Default wall-clock deadline of one request; a guest still running
    /// then is torn down and the client gets 504. [default: 30s]
    #[arg(long, env = "MESHD_REQUEST_TIMEOUT", value_parser = meshd_apps::parse_duration, value_name = "DURATION")]
    pub request_timeout: Option<Duration>,

    /// Default memory limit of one instance (all its linear memories). A
    /// guest growing past it traps: 500 for that request only. [default:
    /// 128MiB]
    #[arg(long, env = "MESHD_MAX_MEMORY", value_name = "SIZE")]
    pub max_memory: Option<ByteSize>,

    /// Default number of requests one app may have in flight; more get 503
    /// with Retry-After. [default: 100]
    #[arg(long, env = "MESHD_MAX_CONCURRENCY", value_name = "N")]
    pub max_concurrency: Option<u32>,

    /// Default largest request body; larger ones get 413 without being read.
    /// [default: 128MiB]
    #[arg(long, env = "MESHD_MAX_BODY", value_name = "SIZE")]
    pub max_body: Option<ByteSize>,

    /// Default processor time one app's guests may use together, in cores
    /// averaged over time (e.g. 0.5, 2), with bursts of a tenth of a second
    /// over it. Guests over it wait for their share; other apps are not
    /// slowed. Short requests are kept ahead of long ones without it.
    /// [default: no limit]
    #[arg(long, env = "MESHD_MAX_CPU", value_parser = meshd_apps::parse_cores, value_name = "CORES")]
    pub max_cpu: Option<u32>,

    /// Largest .wasm file meshd loads. A larger one is refused without being
    /// read whole (a working version of the app keeps serving).
    #[arg(
        long,
        env = "MESHD_MAX_WASM_SIZE",
        default_value = "256MiB",
        value_name = "SIZE"
    )]
    pub max_wasm_size: ByteSize,

    /// Most instances alive at once across all apps (the size of the
    /// instance pool); a request arriving when all are busy gets 503.
    #[arg(
        long,
        env = "MESHD_MAX_INSTANCES",
        default_value_t = 1000,
        value_name = "N"
    )]
    pub max_instances: u32,

    /// Most descriptors (files and directories it opens under its `[files]`
    /// dir, outbound connections) one request's guest may hold at once; past
    /// it the guest's open or request fails, meshd goes on.
    #[arg(
        long,
        env = "MESHD_MAX_REQUEST_DESCRIPTORS",
        default_value_t = 256,
        value_name = "N"
    )]
    pub max_request_descriptors: u32,

    /// Most descriptors one app's guests may hold together, all its requests
    /// and versions.
    #[arg(
        long,
        env = "MESHD_MAX_APP_DESCRIPTORS",
        default_value_t = 1024,
        value_name = "N"
    )]
    pub max_app_descriptors: u32,

    /// Most descriptors all guests may hold together, so meshd keeps enough
    /// for its own connections and files. [default: a quarter of the
    /// open-file limit (RLIMIT_NOFILE), which meshd raises to its hard limit
    /// at start]
    #[arg(long, env = "MESHD_MAX_GUEST_DESCRIPTORS", value_name = "N")]
    pub max_guest_descriptors: Option<u32>,

    /// Most outbound HTTP requests one app may have in flight (from the call
    /// until the response body is read); more fail with
    /// connection-limit-reached.
    #[arg(
        long,
        env = "MESHD_MAX_APP_OUTBOUND",
        default_value_t = 64,
        value_name = "N"
    )]
    pub max_app_outbound: u32,

    /// Most name lookups (outbound HTTP to a host name) one app may have in
    /// flight; more fail with a DNS error.
    #[arg(
        long,
        env = "MESHD_MAX_APP_LOOKUPS",
        default_value_t = 16,
        value_name = "N"
    )]
    pub max_app_lookups: u32,

    /// Most bytes (disk blocks) an app's writable `[files]` directory may
    /// hold. meshd measures it at most once a second; while it is over, the
    /// app's guests cannot create or open files for writing (they can read
    /// and remove). Not a hard limit: see docs/operations.md for filesystem
    /// quotas. 0 turns it off.
    #[arg(
        long,
        env = "MESHD_FILES_QUOTA",
        default_value = "1GiB",
        value_name = "SIZE"
    )]
    pub files_quota: ByteSize,

    /// Lines a second each app may add to meshd's log: its stdout, stderr and
    /// wasi:logging together, with bursts of ten seconds' worth. Lines over
    /// it are dropped, and a warning says how many. 0 turns the limit off.
    #[arg(
        long,
        env = "MESHD_GUEST_LOG_RATE",
        default_value_t = 100,
        value_name = "LINES"
    )]
    pub guest_log_rate: u32,

    /// Serve Prometheus/OpenMetrics metrics at http://ADDR/metrics (per-app
    /// requests by status class, latency to the response head, requests in
    /// flight, dropped guest log lines, deploys). A listener of its own, off
    /// by default; keep it off the public interface.
    #[arg(long, env = "MESHD_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Serve the admin API on ADDR: deploy, list, remove and roll back apps,
    /// run canaries (docs/admin-api.md; the `meshd deploy`, `meshd apps`, ...
    /// commands talk to it), with /healthz, /readyz and /metrics. A listener
    /// of its own, off by default. An ADDR that is not loopback needs
    /// --admin-token-file.
    #[arg(long, env = "MESHD_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin: Option<std::net::SocketAddr>,

    /// Follow a mesh: the NATS servers (comma-separated nats:// or tls://
    /// URLs, with JetStream) whose buckets hold the desired app set of many
    /// meshd nodes. This node deploys what the mesh asks for, reports what
    /// it serves, and serves what it last had while NATS is unreachable.
    /// Its admin API then changes the mesh, not this node alone.
    /// docs/mesh.md explains.
    #[arg(long, env = "MESHD_MESH", value_name = "URLS")]
    pub mesh: Option<String>,

    /// This node's name in the mesh (unique per node). [default: the host
    /// name]
    #[arg(long, env = "MESHD_NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,

    /// A NATS credentials file (.creds) for the mesh connection.
    #[arg(long, env = "MESHD_MESH_CREDS", value_name = "FILE")]
    pub mesh_creds: Option<PathBuf>,

    /// PEM CA to trust for tls:// NATS servers instead of the system roots.
    #[arg(long, env = "MESHD_MESH_CA_FILE", value_name = "FILE")]
    pub mesh_ca_file: Option<PathBuf>,

    /// JetStream replicas of the mesh's buckets when this node creates them
    /// (3 on a three-server NATS cluster; existing buckets are used as
    /// they are).
    #[arg(long, env = "MESHD_MESH_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5), value_name = "N")]
    pub mesh_replicas: u8,

    /// A file holding the admin API's bearer token (one line; readable by
    /// meshd's user only, e.g. mode 600). With it every admin request needs
    /// `Authorization: Bearer <token>`; without it the admin API only listens
    /// on loopback.
    #[arg(long, env = "MESHD_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// How long an HTTP/1 client may take to send a whole request head, and
    /// how long a keep-alive connection may sit idle between requests,
    /// before meshd closes it.
    #[arg(long, env = "MESHD_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = meshd_apps::parse_duration, value_name = "DURATION")]
    pub header_read_timeout: Duration,

    /// Most client connections open at once. At the limit meshd stops
    /// accepting until one closes (new clients wait in the listen backlog).
    #[arg(
        long,
        env = "MESHD_MAX_CONNECTIONS",
        default_value_t = 10_000,
        value_name = "N"
    )]
    pub max_connections: usize,

    /// How long a response may wait for its client to take more of it (an
    /// HTTP/1 client that stops reading, an HTTP/2 stream whose window stays
    /// shut) before meshd drops the connection and stops the app instance
    /// still writing it. A slow reader holds no instance past it. On HTTP/2
    /// the whole connection is closed, with its other streams.
    #[arg(long, env = "MESHD_WRITE_TIMEOUT", default_value = "30s", value_parser = meshd_apps::parse_duration, value_name = "DURATION")]
    pub write_timeout: Duration,

    /// How long a connection with no request in progress stays open: an
    /// HTTP/2 connection with no open stream, an HTTP/1 keep-alive
    /// connection between requests (which --header-read-timeout bounds
    /// too: HTTP/1 idle connections close at the shorter of the two).
    #[arg(long, env = "MESHD_IDLE_TIMEOUT", default_value = "30s", value_parser = meshd_apps::parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,

    /// Most requests one HTTP/2 connection may have open at once (its
    /// SETTINGS_MAX_CONCURRENT_STREAMS). Meshd also pings HTTP/2 clients
    /// every 20s and closes the connection of one that does not answer
    /// within 20s.
    #[arg(
        long,
        env = "MESHD_HTTP2_MAX_STREAMS",
        default_value_t = 100,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub http2_max_streams: u32,

    /// Most linear memory all app instances may hold together. Past it a
    /// request that needs a new instance gets 503 (Retry-After), and a
    /// guest growing its memory fails that request with 503; running
    /// instances keep what they have. [default: half of the machine's
    /// memory (MemTotal in /proc/meminfo), or 4GiB where that cannot be
    /// read]
    #[arg(long, env = "MESHD_MAX_TOTAL_MEMORY", value_name = "SIZE")]
    pub max_total_memory: Option<ByteSize>,

    /// How long an instance kept for reuse (manifest `reuse = N`) may sit
    /// idle before it is dropped and its memory given back.
    #[arg(long, env = "MESHD_REUSE_IDLE_TIMEOUT", default_value = "30s", value_parser = meshd_apps::parse_duration, value_name = "DURATION")]
    pub reuse_idle_timeout: Duration,

    /// Unload an app version's compiled code (its mapped `.cwasm`) and
    /// pre-instance, and its instances kept for reuse, once it has had no
    /// request for this long, e.g. "10m"; its next request loads it back
    /// from the compile cache (a few ms). Off by default: an app then keeps
    /// its code loaded from its first request on, as before. Also
    /// `idle_unload` in meshd.toml.
    #[arg(long, env = "MESHD_IDLE_UNLOAD", value_parser = meshd_apps::parse_duration, value_name = "DURATION")]
    pub idle_unload: Option<Duration>,

    /// Most app versions whose compiled code is in memory at once. Past it
    /// the least recently used are unloaded (their next request loads them
    /// back from the compile cache, a few ms). Each loaded version holds
    /// about 85 KB of memory that cannot be reclaimed without swap, besides
    /// its mapped code: this bounds it, e.g. to fit a memory cgroup. No
    /// bound by default. Also `max_loaded` in meshd.toml.
    #[arg(long, env = "MESHD_MAX_LOADED", value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub max_loaded: Option<u32>,

    /// Threads that serve requests and run guests (default: one per CPU).
    /// Leave a core free when something busy shares the machine (a load
    /// generator, a proxy): more runnable threads than cores make the OS
    /// preempt workers mid-queue, which shows in the tail latency.
    #[arg(long, env = "MESHD_WORKERS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,

    /// How long a changed app file must be quiet before it is loaded, so a
    /// burst of writes is loaded once, with the last content.
    #[arg(long, env = "MESHD_SETTLE", default_value = "250ms", value_parser = meshd_apps::parse_duration, value_name = "DURATION")]
    pub settle: Duration,

    /// Do not watch the apps directory (SIGHUP still rescans).
    #[arg(long, env = "MESHD_NO_WATCH")]
    pub no_watch: bool,

    /// Log format (of meshd's log on stderr and of the access log).
    #[arg(long, env = "MESHD_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,

    /// Access log: one line per request (app, version, method, path without
    /// the query, status, bytes sent, duration, whether the whole body was
    /// sent), written when the response ends. `off`, `stdout`, or a file
    /// path (appended to; created with mode 0640). Lines are queued to a
    /// writer thread: if it falls more than 128,000 lines behind, lines are
    /// dropped rather than requests slowed.
    #[arg(
        long,
        env = "MESHD_ACCESS_LOG",
        default_value = "off",
        value_name = "off|stdout|FILE"
    )]
    pub access_log: AccessLog,
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    /// No access log.
    Off,
    /// meshd's standard output.
    Stdout,
    /// Appended to this file.
    File(PathBuf),
}

impl std::str::FromStr for AccessLog {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "off" => AccessLog::Off,
            "stdout" => AccessLog::Stdout,
            path => AccessLog::File(PathBuf::from(path)),
        })
    }
}

/// `--memory-reset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MemoryResetArg {
    /// In place, unless the host has swap on.
    Auto,
    /// Reset dirty pages in place and keep them resident.
    InPlace,
    /// Give every page back to the kernel.
    GiveBack,
}

impl MemoryResetArg {
    /// The reset to use on this host (`None`: decide by whether swap is on).
    pub fn chosen(self) -> Option<meshd_tenant::MemoryReset> {
        match self {
            MemoryResetArg::Auto => None,
            MemoryResetArg::InPlace => Some(meshd_tenant::MemoryReset::DirtyPagesInPlace),
            MemoryResetArg::GiveBack => Some(meshd_tenant::MemoryReset::GiveBackEverything),
        }
    }
}

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where plain HTTP is served when neither --listen nor --listen-tls is
/// given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

impl Args {
    /// The plain-HTTP address, with the default resolved (`None`: HTTPS
    /// only).
    pub fn plain_listen(&self) -> Option<SocketAddr> {
        match (self.listen, self.listen_tls) {
            (Some(addr), _) => Some(addr),
            (None, Some(_)) => None,
            (None, None) => DEFAULT_LISTEN.parse().ok(),
        }
    }

    /// The data directory, with the default resolved.
    pub fn data_dir(&self) -> PathBuf {
        if let Some(dir) = &self.data_dir {
            return dir.clone();
        }
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| {
                std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share"))
            })
            .unwrap_or_else(std::env::temp_dir);
        base.join("meshd")
    }

    /// The limits set by flags (unset ones are `None`).
    pub fn limits(&self) -> meshd_apps::Limits {
        meshd_apps::Limits {
            memory: self.max_memory.map(|size| size.as_u64()),
            timeout: self.request_timeout,
            max_concurrency: self.max_concurrency,
            max_body: self.max_body.map(|size| size.as_u64()),
            cpu: self.max_cpu,
            cpu_weight: None,
        }
    }

    /// The daemon-wide ceiling of guest memory, with the default resolved.
    pub fn max_total_memory(&self) -> ByteSize {
        self.max_total_memory.unwrap_or_else(|| {
            let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
            match mem_total(&meminfo) {
                Some(total) => ByteSize::b(total / 2),
                None => ByteSize::gib(4),
            }
        })
    }

    /// The cache directory, with the default resolved.
    pub fn cache_dir(&self) -> PathBuf {
        if let Some(dir) = &self.cache_dir {
            return dir.clone();
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("meshd")
    }
}

/// The machine's memory, from the text of /proc/meminfo.
fn mem_total(meminfo: &str) -> Option<u64> {
    let kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_parse() {
        let args = Args::try_parse_from(["meshd"]).unwrap();
        assert_eq!(args.plain_listen().unwrap().to_string(), "127.0.0.1:8080");
        assert!(args.trusted_proxies.is_empty());
        let tls_only = Args::try_parse_from(["meshd", "--listen-tls", "0.0.0.0:443"]).unwrap();
        assert_eq!(tls_only.plain_listen(), None);
        let both = Args::try_parse_from([
            "meshd",
            "--listen-tls",
            "0.0.0.0:443",
            "--listen",
            "0.0.0.0:80",
            "--trusted-proxies",
            "10.0.0.0/8, 192.0.2.7",
        ])
        .unwrap();
        assert_eq!(both.plain_listen().unwrap().to_string(), "0.0.0.0:80");
        assert!(both.trusted_proxies.contains("10.1.1.1".parse().unwrap()));
        assert!(Args::try_parse_from(["meshd", "--trusted-proxies", "nope"]).is_err());
        assert_eq!(args.max_memory, None);
        assert_eq!(args.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(args.write_timeout, Duration::from_secs(30));
        assert_eq!(args.http2_max_streams, 100);
        assert!(args.max_total_memory().as_u64() > 0);
    }

    #[test]
    fn mem_total_reads_meminfo() {
        let meminfo = "MemTotal:       24576000 kB\nMemFree:  1 kB\n";
        assert_eq!(mem_total(meminfo), Some(24_576_000 * 1024));
        assert_eq!(mem_total("nothing"), None);
    }
}
