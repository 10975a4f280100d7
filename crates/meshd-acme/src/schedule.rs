//! When to renew a certificate, and how long to wait after a failure.

use std::time::{Duration, SystemTime};

/// The first retry after a failed order.
pub const FIRST_RETRY: Duration = Duration::from_secs(60);

/// The longest wait between two attempts: a CA that is down for a day is
/// asked again within hours, yet a host that can never validate costs a
/// handful of orders a day (Let's Encrypt allows 5 failed validations per
/// host and hour).
pub const MAX_RETRY: Duration = Duration::from_secs(6 * 3600);

/// When a certificate valid from `not_before` to `not_after` is renewed:
/// at two thirds of its lifetime (day 60 of a 90-day certificate), which
/// leaves a third of it for retries.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_before + lifetime * 2 / 3
}

/// How long to wait after `failures` failed attempts in a row (1 or
/// more): doubling from [`FIRST_RETRY`] up to [`MAX_RETRY`], with ±20%
/// jitter so that hosts that failed together (the CA was down) do not
/// retry together.
pub fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let base = FIRST_RETRY.saturating_mul(1 << exponent).min(MAX_RETRY);
    let jitter = 0.8 + fastrand::f64() * 0.4;
    base.mul_f64(jitter).min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_two_thirds_of_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        assert_eq!(renew_at(start, start + 90 * day), start + 60 * day);
        // A certificate whose dates are backwards is renewed at once.
        assert_eq!(renew_at(start, start - day), start);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for _ in 0..100 {
            let first = backoff(1);
            assert!(first >= FIRST_RETRY.mul_f64(0.8) && first <= FIRST_RETRY.mul_f64(1.2));
            let third = backoff(3);
            assert!(third >= (FIRST_RETRY * 4).mul_f64(0.8));
            assert!(third <= (FIRST_RETRY * 4).mul_f64(1.2));
            assert!(backoff(40) <= MAX_RETRY);
            assert!(backoff(40) >= MAX_RETRY.mul_f64(0.8));
        }
        // Jittered: not every wait is the same.
        let waits: std::collections::HashSet<_> = (0..20).map(|_| backoff(2)).collect();
        assert!(waits.len() > 1);
    }
}
