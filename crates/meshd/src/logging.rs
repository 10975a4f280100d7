//! Log set-up: structured events on stderr, filtered by `MESHD_LOG` (or
//! `RUST_LOG`), `info` by default; and the access log, when asked for, on a
//! writer of its own.

use crate::cli::{AccessLog, LogFormat};
use anyhow::{Context as _, Result};
use meshd_server::ACCESS_TARGET;
use std::io::{BufWriter, IsTerminal as _};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, Layer};

/// Keeps the access log's writer thread; dropping it flushes what is queued.
pub struct LogGuard {
    _access: Option<WorkerGuard>,
}

/// Installs the global subscriber. The access log's file is opened here, so
/// an unwritable path fails start-up.
pub fn init(format: LogFormat, access_log: &AccessLog) -> Result<LogGuard> {
    let filter = std::env::var("MESHD_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let not_access = filter_fn(|meta| meta.target() != ACCESS_TARGET);
    let stderr = fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let stderr = match format {
        LogFormat::Text => stderr.boxed(),
        LogFormat::Json => stderr.json().boxed(),
    }
    .with_filter(not_access)
    .with_filter(filter);

    // The writer thread drains every line queued, then flushes: buffered, a
    // busy second costs a few large writes instead of one system call per
    // request.
    let (access, guard) = match access_log {
        AccessLog::Off => (None, None),
        AccessLog::Stdout => {
            let (writer, guard) = tracing_appender::non_blocking(BufWriter::new(std::io::stdout()));
            (Some(access_layer(format, writer)), Some(guard))
        }
        AccessLog::File(path) => {
            let file = open_append(path)
                .with_context(|| format!("cannot open the access log {}", path.display()))?;
            let (writer, guard) = tracing_appender::non_blocking(BufWriter::new(file));
            (Some(access_layer(format, writer)), Some(guard))
        }
    };
    tracing_subscriber::registry()
        .with(stderr)
        .with(access)
        .init();
    Ok(LogGuard { _access: guard })
}

/// The access log's layer: only access events, without level or target,
/// in the chosen format.
fn access_layer<S>(
    format: LogFormat,
    writer: tracing_appender::non_blocking::NonBlocking,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let only_access = filter_fn(|meta| meta.target() == ACCESS_TARGET);
    let layer = fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .with_target(false)
        .with_level(false);
    match format {
        LogFormat::Text => layer.with_filter(only_access).boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(only_access)
            .boxed(),
    }
}

fn open_append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}
