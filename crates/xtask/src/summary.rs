//! The summary of a `cargo test` run, read from its output (stdout and
//! stderr in the order they were written).
//!
//! Cargo announces each test binary (`Running ...`, `Doc-tests ...`) before
//! it runs it, and each binary that finishes normally prints one
//! `test result:` line. A binary that ends without that line (killed by a
//! signal, aborted, exited from a test) is counted as crashed and named:
//! its tests are neither passed nor failed, and reading it as "0 failed"
//! would hide it.

/// Counts over every test binary of one `cargo test` run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    /// Binaries that printed a `test result:` line.
    pub binaries: u64,
    /// Binaries that failed tests, as cargo announced them.
    pub failing: Vec<String>,
    /// Binaries that ended without a `test result:` line, with cargo's
    /// reason when it gave one (`... (signal: 9, SIGKILL: kill)`).
    pub crashed: Vec<String>,
    /// The binary running now, and whether it printed its result yet.
    current: Option<(String, bool)>,
}

impl Summary {
    /// Reads one line of output.
    pub fn line(&mut self, line: &str) {
        let trimmed = line.trim();
        if let Some(name) = trimmed
            .strip_prefix("Running ")
            .or_else(|| trimmed.strip_prefix("Doc-tests "))
        {
            self.end_binary();
            self.current = Some((name.to_owned(), false));
        } else if let Some(counts) = trimmed.strip_prefix("test result: ") {
            self.passed += count(counts, "passed");
            self.failed += count(counts, "failed");
            self.ignored += count(counts, "ignored");
            self.binaries += 1;
            if let Some((name, done)) = &mut self.current {
                *done = true;
                if count(counts, "failed") > 0 {
                    self.failing.push(name.clone());
                }
            }
        } else if let Some(reason) = trimmed.strip_prefix("process didn't exit successfully: ") {
            // Cargo's reason for the binary that just ended; it comes after
            // the binary's own output and before the next `Running`.
            if let Some((name, false)) = &self.current {
                self.crashed.push(format!("{name}: {reason}"));
                self.current = None;
            }
        }
    }

    /// Ends the run: a binary still waiting for its result crashed.
    pub fn finish(&mut self) {
        self.end_binary();
    }

    /// Whether every test binary ran to its end and no test failed.
    pub fn all_passed(&self) -> bool {
        self.failed == 0 && self.crashed.is_empty()
    }

    fn end_binary(&mut self) {
        if let Some((name, false)) = self.current.take() {
            self.crashed
                .push(format!("{name}: ended without a test result"));
        }
    }
}

/// The number before `word` in a line like `ok. 3 passed; 0 failed; ...`.
fn count(counts: &str, word: &str) -> u64 {
    let tokens: Vec<&str> = counts
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter(|t| !t.is_empty())
        .collect();
    tokens
        .windows(2)
        .find(|pair| pair[1] == word)
        .and_then(|pair| pair[0].parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(output: &str) -> Summary {
        let mut summary = Summary::default();
        for line in output.lines() {
            summary.line(line);
        }
        summary.finish();
        summary
    }

    const PASSING: &str = "\
     Running unittests src/lib.rs (target/debug/deps/meshd_routes-1)

running 3 tests
test a ... ok
test b ... ok
test c ... ignored

test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s

   Doc-tests meshd_routes

running 0 tests

test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s
";

    #[test]
    fn counts_every_binary_that_finished() {
        let summary = read(PASSING);
        assert_eq!((summary.passed, summary.failed, summary.ignored), (2, 0, 1));
        assert_eq!(summary.binaries, 2);
        assert!(summary.all_passed(), "{summary:?}");
    }

    #[test]
    fn a_binary_killed_by_a_signal_is_named_as_crashed() {
        let output = format!(
            "{PASSING}
     Running tests/e2e/main.rs (target/debug/deps/e2e-2)

running 90 tests
test swap::fifty_swaps_under_load_drop_no_request ... ok
error: test failed, to rerun pass `--test e2e`

Caused by:
  process didn't exit successfully: `target/debug/deps/e2e-2` (signal: 9, SIGKILL: kill)
     Running unittests src/main.rs (target/debug/deps/xtask-3)

running 1 test
test t ... ok

test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s
"
        );
        let summary = read(&output);
        assert_eq!(summary.passed, 3);
        assert_eq!(summary.failed, 0);
        assert_eq!(summary.binaries, 3);
        assert_eq!(
            summary.crashed,
            ["tests/e2e/main.rs (target/debug/deps/e2e-2): \
              `target/debug/deps/e2e-2` (signal: 9, SIGKILL: kill)"]
        );
        assert!(!summary.all_passed());
    }

    #[test]
    fn a_binary_cut_off_at_the_end_of_the_output_crashed_too() {
        let summary = read("     Running tests/e2e/main.rs (e2e-2)\n\nrunning 4 tests\n");
        assert_eq!(
            summary.crashed,
            ["tests/e2e/main.rs (e2e-2): ended without a test result"]
        );
        assert!(!summary.all_passed());
    }

    #[test]
    fn failed_tests_are_counted_and_their_binary_named() {
        let summary = read(
            "     Running unittests src/lib.rs (meshd_tenant-4)
test result: FAILED. 5 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s
error: test failed, to rerun pass `-p meshd-tenant --lib`

Caused by:
  process didn't exit successfully: `meshd_tenant-4` (exit status: 101)
",
        );
        assert_eq!((summary.passed, summary.failed), (5, 2));
        assert_eq!(summary.failing, ["unittests src/lib.rs (meshd_tenant-4)"]);
        assert!(summary.crashed.is_empty(), "{summary:?}");
        assert!(!summary.all_passed());
    }
}
