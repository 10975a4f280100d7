//! Guest stdout and stderr, sent line by line to meshd's log.
//!
//! Guests write in small pieces (Rust's `eprintln!` issues several writes per
//! line), so output is buffered per stream and emitted one tracing event per
//! line, tagged with the app's name, within the app's [`LogBudget`]. Writing
//! never blocks and never traps the guest: an over-long line is cut and
//! emitted in pieces, and a line over the budget is dropped. Each line
//! admitted is also kept in the app's [`LogRing`] for the admin API.

use crate::log_budget::LogBudget;
use crate::log_ring::{LogRing, LogSource};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// The longest line kept whole; longer ones are emitted in pieces.
const MAX_LINE: usize = 16 * 1024;

/// Which of the guest's output streams this is.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One guest output stream of one request. Cheap to clone; every clone writes
/// into the same line buffer, which is flushed when the last clone is dropped.
#[derive(Clone)]
pub struct GuestLog {
    lines: Arc<Mutex<LineBuffer>>,
}

impl GuestLog {
    /// A stream for `app`'s `stream`, logging within `budget`.
    pub fn new(app: Arc<str>, stream: Stream, budget: Arc<LogBudget>, ring: Arc<LogRing>) -> Self {
        Self {
            lines: Arc::new(Mutex::new(LineBuffer {
                app,
                stream,
                budget,
                ring,
                pending: Vec::new(),
            })),
        }
    }

    fn write(&self, data: &[u8]) {
        // A poisoned lock only means a previous log call panicked; the buffer
        // is still usable.
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.write(data);
    }
}

struct LineBuffer {
    app: Arc<str>,
    stream: Stream,
    budget: Arc<LogBudget>,
    /// The app's recent lines, for the admin API.
    ring: Arc<LogRing>,
    pending: Vec<u8>,
}

impl LineBuffer {
    fn write(&mut self, mut data: &[u8]) {
        while let Some(newline) = data.iter().position(|&b| b == b'\n') {
            self.push(&data[..newline]);
            self.emit();
            data = &data[newline + 1..];
        }
        self.push(data);
    }

    fn push(&mut self, mut data: &[u8]) {
        while self.pending.len() + data.len() > MAX_LINE {
            let room = MAX_LINE - self.pending.len();
            self.pending.extend_from_slice(&data[..room]);
            self.emit();
            data = &data[room..];
        }
        self.pending.extend_from_slice(data);
    }

    fn emit(&mut self) {
        if self.budget.admit() {
            let text = String::from_utf8_lossy(&self.pending);
            let line = text.trim_end_matches('\r');
            tracing::info!(target: "guest", app = %self.app, stream = %self.stream.as_str(), "{line}");
            let source = match self.stream {
                Stream::Stdout => LogSource::Stdout,
                Stream::Stderr => LogSource::Stderr,
            };
            self.ring.push(source, None, line);
        }
        self.pending.clear();
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for GuestLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
