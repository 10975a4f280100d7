//! The recent lines of each app's log (its guests' stdout, stderr and
//! wasi:logging), kept in memory so the admin API can show them
//! (`GET /v1/apps/NAME/logs`) without reading meshd's own log.
//!
//! Each app has one bounded ring, shared by its versions: the last
//! [`MAX_LINES`] lines or [`MAX_BYTES`] bytes, whichever is reached first.
//! Lines are counted by their text plus [`LINE_OVERHEAD`], so a thousand
//! empty lines cost as much as they really do. The line cap keeps the common
//! case (short lines) cheap to copy out; the byte cap bounds memory when an
//! app prints long lines: 1,000 apps that all log hold at most 128 MiB. A
//! thousand lines of about 60 characters fit in both.
//!
//! Writing never waits for a reader: a guest's line takes a short lock and is
//! in. A reader that falls behind finds that the lines it has not read were
//! pushed out of the ring, and is told how many (a gap) by their sequence
//! numbers.

use crate::sweep::SweepWhenDoubled;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::SystemTime;
use tokio::sync::watch;

/// Most lines one app's ring keeps.
pub const MAX_LINES: usize = 1_000;
/// Most bytes one app's ring keeps (text plus [`LINE_OVERHEAD`] per line).
pub const MAX_BYTES: usize = 128 * 1024;
/// What a line costs besides its text: its number, time, stream, and the
/// allocation around it.
pub const LINE_OVERHEAD: usize = 64;

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSource {
    /// The guest's stdout.
    Stdout,
    /// The guest's stderr.
    Stderr,
    /// wasi:logging, with its level (`trace` ... `critical`).
    Logging(&'static str),
}

impl LogSource {
    /// `stdout`, `stderr` or `logging`.
    pub fn stream(self) -> &'static str {
        match self {
            LogSource::Stdout => "stdout",
            LogSource::Stderr => "stderr",
            LogSource::Logging(_) => "logging",
        }
    }

    /// The wasi:logging level, if the line came from wasi:logging.
    pub fn level(self) -> Option<&'static str> {
        match self {
            LogSource::Logging(level) => Some(level),
            _ => None,
        }
    }
}

/// One line of an app's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Its number in the app's log, from 1, without gaps.
    pub seq: u64,
    /// When meshd received it.
    pub at: SystemTime,
    /// Where it came from.
    pub source: LogSource,
    /// The wasi:logging context, if any.
    pub context: Option<String>,
    /// The text, without its newline.
    pub text: String,
}

impl LogLine {
    fn cost(&self) -> usize {
        self.text.len() + self.context.as_ref().map_or(0, String::len) + LINE_OVERHEAD
    }
}

/// What [`LogRing::after`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPage {
    /// The lines after the one asked for, oldest first.
    pub lines: Vec<LogLine>,
    /// Lines after the one asked for that are no longer kept (pushed out of
    /// the ring before they were read).
    pub missed: u64,
    /// The number of the newest line so far (0: none yet). A reader that has
    /// everything passes this as `after` next time.
    pub last: u64,
}

/// One app's recent log lines.
#[derive(Debug)]
pub struct LogRing {
    state: Mutex<RingState>,
    /// The number of the newest line, for readers that follow the log.
    newest: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct RingState {
    lines: VecDeque<LogLine>,
    bytes: usize,
    /// The number of the newest line (0: none yet).
    last: u64,
}

impl Default for LogRing {
    fn default() -> Self {
        LogRing {
            state: Mutex::default(),
            newest: watch::Sender::new(0),
        }
    }
}

impl LogRing {
    fn lock(&self) -> MutexGuard<'_, RingState> {
        // A poisoned lock only means a writer panicked; the lines are intact.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a line, pushing out the oldest ones beyond the ring's bounds.
    pub fn push(&self, source: LogSource, context: Option<&str>, text: &str) {
        let seq = {
            let mut state = self.lock();
            state.last += 1;
            let line = LogLine {
                seq: state.last,
                at: SystemTime::now(),
                source,
                context: context.filter(|c| !c.is_empty()).map(str::to_owned),
                text: text.to_owned(),
            };
            state.bytes += line.cost();
            state.lines.push_back(line);
            while state.lines.len() > MAX_LINES
                || (state.bytes > MAX_BYTES && state.lines.len() > 1)
            {
                if let Some(old) = state.lines.pop_front() {
                    state.bytes -= old.cost();
                }
            }
            state.last
        };
        self.newest.send_replace(seq);
    }

    /// The lines numbered after `after` (0: all kept), at most `limit` of
    /// them, the oldest first.
    pub fn after(&self, after: u64, limit: usize) -> LogPage {
        let state = self.lock();
        let first_kept = state.lines.front().map_or(state.last + 1, |l| l.seq);
        let missed = first_kept.saturating_sub(after.saturating_add(1));
        let skip = after.saturating_add(1).saturating_sub(first_kept);
        let lines: Vec<LogLine> = state
            .lines
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
            .take(limit)
            .cloned()
            .collect();
        // Past a `limit`, the newest line returned; else the newest there is
        // (also for a number from the future, e.g. from before a restart).
        let last = lines.last().map_or(state.last, |l| l.seq);
        LogPage {
            lines,
            missed,
            last,
        }
    }

    /// The number of the newest line, changing as lines come in: a reader
    /// that follows the log waits on it.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }
}

/// The rings of every app, by name. An app's ring lives as long as the app
/// (its ledger holds it); this map only finds it, so a removed app's lines
/// are freed with it.
#[derive(Debug, Default)]
pub struct LogRings {
    rings: Mutex<Rings>,
}

#[derive(Debug, Default)]
struct Rings {
    by_app: HashMap<Arc<str>, Weak<LogRing>>,
    /// The rings of removed apps are forgotten when the map has doubled, not
    /// at every new app (a start-up adds thousands).
    sweep: SweepWhenDoubled,
}

impl LogRings {
    fn lock(&self) -> MutexGuard<'_, Rings> {
        self.rings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ring of `app`, made if it has none.
    pub(crate) fn ring_for(&self, app: &Arc<str>) -> Arc<LogRing> {
        let mut rings = self.lock();
        if let Some(ring) = rings.by_app.get(app).and_then(Weak::upgrade) {
            return ring;
        }
        if rings.sweep.is_due(rings.by_app.len()) {
            rings.by_app.retain(|_, ring| ring.strong_count() > 0);
            let left = rings.by_app.len();
            rings.sweep.swept(left);
        }
        let ring = Arc::new(LogRing::default());
        rings.by_app.insert(app.clone(), Arc::downgrade(&ring));
        ring
    }

    /// The ring of `app`, if meshd knows the app.
    pub fn get(&self, app: &str) -> Option<Arc<LogRing>> {
        self.lock().by_app.get(app).and_then(Weak::upgrade)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(page: &LogPage) -> Vec<&str> {
        page.lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn lines_are_numbered_and_read_after_a_number() {
        let ring = LogRing::default();
        let empty = ring.after(0, 100);
        assert_eq!((empty.lines.len(), empty.missed, empty.last), (0, 0, 0));
        ring.push(LogSource::Stdout, None, "one");
        ring.push(LogSource::Logging("warn"), Some("ctx"), "two");
        ring.push(LogSource::Stderr, Some(""), "three");
        let all = ring.after(0, 100);
        assert_eq!(texts(&all), ["one", "two", "three"]);
        assert_eq!(all.lines[1].seq, 2);
        assert_eq!(all.lines[1].source.level(), Some("warn"));
        assert_eq!(all.lines[1].context.as_deref(), Some("ctx"));
        assert_eq!(all.lines[2].context, None);
        assert_eq!((all.missed, all.last), (0, 3));
        let rest = ring.after(1, 1);
        assert_eq!(texts(&rest), ["two"]);
        assert_eq!(rest.last, 2);
        let none = ring.after(3, 100);
        assert!(none.lines.is_empty());
        assert_eq!((none.missed, none.last), (0, 3));
        // A number from the future (another meshd run): start over.
        assert_eq!(ring.after(99, 100).last, 3);
    }

    #[test]
    fn the_ring_keeps_the_last_lines_and_reports_the_gap() {
        let ring = LogRing::default();
        for i in 1..=MAX_LINES + 250 {
            ring.push(LogSource::Stdout, None, &format!("{i}"));
        }
        let page = ring.after(0, usize::MAX);
        assert_eq!(page.lines.len(), MAX_LINES);
        assert_eq!(page.lines[0].text, "251");
        assert_eq!(page.missed, 250);
        assert_eq!(page.last, (MAX_LINES + 250) as u64);
        let behind = ring.after(100, 10);
        assert_eq!(behind.missed, 150);
        assert_eq!(behind.lines[0].seq, 251);
    }

    #[test]
    fn long_lines_are_bounded_by_bytes() {
        let ring = LogRing::default();
        let long = "x".repeat(10_000);
        for _ in 0..50 {
            ring.push(LogSource::Stdout, None, &long);
        }
        let page = ring.after(0, usize::MAX);
        let bytes: usize = page.lines.iter().map(LogLine::cost).sum();
        assert!(bytes <= MAX_BYTES, "{bytes}");
        assert_eq!(page.lines.len(), MAX_BYTES / (10_000 + LINE_OVERHEAD));
        assert_eq!(page.missed, 50 - page.lines.len() as u64);
    }

    #[test]
    fn a_ring_lives_as_long_as_its_app() {
        let rings = LogRings::default();
        let app: Arc<str> = "hello".into();
        let ring = rings.ring_for(&app);
        assert!(Arc::ptr_eq(&ring, &rings.ring_for(&app)));
        ring.push(LogSource::Stdout, None, "hi");
        assert_eq!(rings.get("hello").unwrap().after(0, 10).lines.len(), 1);
        drop(ring);
        assert!(rings.get("hello").is_none());
    }

    #[test]
    fn the_rings_of_removed_apps_are_forgotten_as_apps_come_and_go() {
        let rings = LogRings::default();
        let kept: Vec<Arc<LogRing>> = (0..1000)
            .map(|i| rings.ring_for(&Arc::from(format!("kept{i}"))))
            .collect();
        // Apps that come and go (redeployed under new names, removed).
        for i in 0..10_000 {
            drop(rings.ring_for(&Arc::from(format!("gone{i}"))));
        }
        let size = rings.lock().by_app.len();
        assert!(
            size <= 2 * kept.len() + crate::sweep::MIN_SWEEP_AT,
            "{size} entries"
        );
        assert!(rings.get("kept999").is_some());
    }

    #[tokio::test]
    async fn a_follower_wakes_on_a_new_line() {
        let ring = Arc::new(LogRing::default());
        let mut newest = ring.watch();
        let writer = ring.clone();
        tokio::spawn(async move { writer.push(LogSource::Stdout, None, "late") });
        newest.changed().await.unwrap();
        assert_eq!(*newest.borrow(), 1);
    }
}
