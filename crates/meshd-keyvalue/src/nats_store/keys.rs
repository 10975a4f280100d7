//! Where each (tenant, bucket, key) lives in the one JetStream bucket.
//!
//! JetStream KV keys are NATS subject tokens: `[-/_=.a-zA-Z0-9]`, with `.`
//! separating tokens, none of them empty. Tenant, bucket and key names are
//! arbitrary strings (empty ones included), so each part is one token: `_`
//! followed by its bytes in unpadded base64url, whose alphabet
//! (`A-Za-z0-9-_`) has no dot. The `_` keeps an empty name a valid token.
//!
//! - an entry: `e.<tenant>.<bucket>.<key>`
//! - a tenant's usage (what its entries are charged, see `charged_size`):
//!   `u.<tenant>`
//!
//! A bucket's entries are then exactly the subjects matching
//! `$KV.<bucket>.e.<tenant>.<bucket>.*`: listing filters on that, and never
//! sees another tenant's or bucket's keys.

use crate::{BucketRef, KvError};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// The JetStream KV bucket that holds every tenant's entries.
pub(crate) const BUCKET: &str = "meshd_tenant_kv";

/// Longest subject the backend publishes on. A NATS server closes the
/// connection of a client whose protocol line is longer than its
/// `max_control_line` (4 KiB by default): every key is checked against
/// this before it is sent, leaving room for the reply subject.
pub(crate) const MAX_SUBJECT: usize = 3584;

fn token(part: &str) -> String {
    format!("_{}", URL_SAFE_NO_PAD.encode(part))
}

fn decode_token(token: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(token.strip_prefix('_')?).ok()?;
    String::from_utf8(bytes).ok()
}

/// The KV key of an entry.
pub(crate) fn entry(b: BucketRef<'_>, key: &str) -> String {
    format!("e.{}.{}.{}", token(b.tenant), token(b.bucket), token(key))
}

/// The KV key of an entry, if its subject fits [`MAX_SUBJECT`]; if not,
/// the key's length and the most the key could take with this tenant and
/// bucket.
pub(crate) fn entry_checked(b: BucketRef<'_>, key: &str) -> Result<String, KvError> {
    let kv_key = entry(b, key);
    let len = subject(&kv_key).len();
    if len <= MAX_SUBJECT {
        return Ok(kv_key);
    }
    // Room for the key's base64 (after its `_`); n bytes take ceil(4n/3).
    let fixed = len - token(key).len();
    let room = MAX_SUBJECT.saturating_sub(fixed + 1);
    Err(KvError::KeyTooLarge {
        len: key.len(),
        limit: room * 3 / 4,
    })
}

/// The KV key of a tenant's usage counter.
pub(crate) fn usage(tenant: &str) -> String {
    format!("u.{}", token(tenant))
}

/// The stream subject of a KV key.
pub(crate) fn subject(kv_key: &str) -> String {
    format!("$KV.{BUCKET}.{kv_key}")
}

/// The subject filter matching every entry of the bucket, and nothing else.
pub(crate) fn bucket_filter(b: BucketRef<'_>) -> String {
    format!("$KV.{BUCKET}.e.{}.{}.*", token(b.tenant), token(b.bucket))
}

/// The key of an entry's subject (one that matched [`bucket_filter`]).
pub(crate) fn key_of_subject(subject: &str) -> Option<String> {
    decode_token(subject.rsplit('.').next()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b<'a>(tenant: &'a str, bucket: &'a str) -> BucketRef<'a> {
        BucketRef { tenant, bucket }
    }

    /// Every KV key is valid for JetStream, whatever the names hold.
    #[test]
    fn any_names_make_valid_tokens_and_decode_back() {
        let valid = |s: &str| {
            s.split('.').all(|t| {
                !t.is_empty()
                    && t.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b"-/_=".contains(&c))
            })
        };
        for (tenant, bucket, key) in [
            ("shop", "", ""),
            ("a.b", "x y", "k.>*"),
            ("ünï", "/\\", "\0\n"),
        ] {
            let kv_key = entry(b(tenant, bucket), key);
            assert!(valid(&kv_key), "{kv_key}");
            assert_eq!(kv_key.split('.').count(), 4, "{kv_key}");
            assert!(valid(&usage(tenant)));
            assert_eq!(
                key_of_subject(&subject(&kv_key)).as_deref(),
                Some(key),
                "{kv_key}"
            );
        }
    }

    /// The longest key the subject limit allows fits, one byte more does
    /// not, and the error says how long a key may be.
    #[test]
    fn keys_are_refused_past_the_subject_limit_with_the_exact_limit() {
        let bucket_name = "b".repeat(256);
        let at = b("shop", &bucket_name);
        let limit = match entry_checked(at, &"k".repeat(MAX_SUBJECT)) {
            Err(KvError::KeyTooLarge { limit, .. }) => limit,
            other => panic!("{other:?}"),
        };
        let longest = "k".repeat(limit);
        assert!(subject(&entry_checked(at, &longest).unwrap()).len() <= MAX_SUBJECT);
        assert!(matches!(
            entry_checked(at, &format!("{longest}k")),
            Err(KvError::KeyTooLarge { .. })
        ));
        // The default max_key (1 KiB) always fits, with the longest bucket.
        assert!(limit >= 1024, "{limit}");
    }

    /// A bucket's filter matches its own entries only: not another
    /// bucket's, not another tenant's, not the usage counters.
    #[test]
    fn the_bucket_filter_is_exact() {
        let filter = bucket_filter(b("a", "b"));
        let prefix = filter.trim_end_matches('*');
        let mine = subject(&entry(b("a", "b"), "k"));
        assert!(mine.starts_with(prefix) && !mine[prefix.len()..].contains('.'));
        for (tenant, bucket) in [("a", "b2"), ("a", ""), ("ab", ""), ("b", "a")] {
            assert!(!subject(&entry(b(tenant, bucket), "k")).starts_with(prefix));
        }
        assert!(!subject(&usage("a")).starts_with(prefix));
    }
}
