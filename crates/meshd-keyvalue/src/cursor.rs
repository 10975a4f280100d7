//! Listing cursors. wasi:keyvalue's cursor is a `u64`, too small to carry
//! the key a page ended at, so meshd keeps that key here and hands the guest
//! a token for it. The next page then starts right after that key, with a
//! range read bounded to the caller's bucket: paging through a bucket costs
//! in proportion to its size, never to its position in the store or to
//! other tenants' data.
//!
//! A token is good only for the tenant and bucket it was issued to. Each
//! tenant keeps at most [`MAX_PER_TENANT`] live tokens (the oldest go first)
//! for at most [`TTL`]: a guest that pages slowly or keeps many listings
//! open gets a clear "unknown cursor" error and starts again.

use crate::{BucketRef, KvError};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most live cursors of one tenant.
pub const MAX_PER_TENANT: usize = 64;

/// How long a cursor stays valid after it was issued.
pub const TTL: Duration = Duration::from_secs(600);

/// Where a listing stopped in one bucket of one tenant: `after` is the
/// last key listed (redb, Redis) or the last stream sequence read (NATS).
struct Position {
    token: u64,
    bucket: String,
    after: String,
    issued: Instant,
}

#[derive(Default)]
struct State {
    /// Tokens are never reused (a u64 does not wrap in practice).
    next: u64,
    by_tenant: HashMap<String, VecDeque<Position>>,
}

/// The live cursors of every tenant.
#[derive(Default)]
pub(crate) struct Cursors {
    state: Mutex<State>,
}

impl Cursors {
    /// A token that resumes a listing of `b` right after `after`.
    pub(crate) fn issue(&self, b: BucketRef<'_>, after: String) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.next += 1;
        let token = state.next;
        let positions = state.by_tenant.entry(b.tenant.to_owned()).or_default();
        positions.retain(|p| p.issued.elapsed() < TTL);
        while positions.len() >= MAX_PER_TENANT {
            positions.pop_front();
        }
        positions.push_back(Position {
            token,
            bucket: b.bucket.to_owned(),
            after,
            issued: Instant::now(),
        });
        token
    }

    /// The key a listing of `b` resumes after, for a token issued for `b`.
    pub(crate) fn resume(&self, b: BucketRef<'_>, token: u64) -> Result<String, KvError> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .by_tenant
            .get(b.tenant)
            .and_then(|positions| {
                positions
                    .iter()
                    .find(|p| p.token == token && p.bucket == b.bucket && p.issued.elapsed() < TTL)
            })
            .map(|p| p.after.clone())
            .ok_or(KvError::UnknownCursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket<'a>(tenant: &'a str, bucket: &'a str) -> BucketRef<'a> {
        BucketRef { tenant, bucket }
    }

    #[test]
    fn a_token_resumes_only_its_own_tenant_and_bucket() {
        let cursors = Cursors::default();
        let token = cursors.issue(bucket("a", "b"), "k1".into());
        assert_eq!(cursors.resume(bucket("a", "b"), token).unwrap(), "k1");
        assert_eq!(
            cursors.resume(bucket("x", "b"), token),
            Err(KvError::UnknownCursor)
        );
        assert_eq!(
            cursors.resume(bucket("a", "other"), token),
            Err(KvError::UnknownCursor)
        );
        assert_eq!(
            cursors.resume(bucket("a", "b"), token + 1),
            Err(KvError::UnknownCursor)
        );
    }

    #[test]
    fn each_tenant_keeps_a_bounded_number_of_cursors() {
        let cursors = Cursors::default();
        let first = cursors.issue(bucket("a", ""), "first".into());
        let other = cursors.issue(bucket("b", ""), "other".into());
        for i in 0..MAX_PER_TENANT {
            cursors.issue(bucket("a", ""), format!("k{i}"));
        }
        assert_eq!(
            cursors.resume(bucket("a", ""), first),
            Err(KvError::UnknownCursor)
        );
        // Another tenant's cursors are not pushed out.
        assert_eq!(cursors.resume(bucket("b", ""), other).unwrap(), "other");
    }
}
