//! Replay defence: a signed URL carries one message.
//!
//! In plain mode WeChat's `signature` covers the URL's `timestamp` and `nonce` and nothing of the
//! body, and access logs (nginx's among them) keep URLs. [`crate::signature::check_fresh`] bounds
//! a URL's life to five minutes; within them, anyone who read the URL could still POST another
//! body with it, such as an admin command from an admin's openid. The [`Ledger`] remembers which
//! message each recent signed URL carried: the same URL again with the same message within
//! [`RETRIES_WITHIN`] of its first use is one of WeChat's retries (it may reuse the URL of the
//! first try) and goes on to the retry table; later, when the retry table has forgotten the
//! answer, it would run the message's command again, so it is refused as a replay; with another
//! message it is refused. A URL that verified the server (GET) carries no message, so no
//! POST may use it. Safe mode's `msg_signature` signs the body as well; the ledger is kept for
//! every mode alike.
//!
//! A URL is known by its `signature`, the SHA-1 WeChat computed over the sorted token, timestamp
//! and nonce: two URLs that split the same digits differently between `timestamp` and `nonce`
//! sign the same statement and are one URL here. Messages are known by the SHA-1 of their
//! [`crate::message::Message::dedup_key`]. Both are kept as 64-bit fingerprints, never the URLs
//! or messages themselves, and need no per-process secret, so a clean stop can hand them to the
//! next start ([`Ledger::entries`], [`Ledger::restore`], `crate::state`).
//!
//! The ledger is bounded: it remembers the last [`DEFAULT_CAPACITY`] signed URLs, far more than
//! one account receives in the five minutes a URL is good for.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long after its first use a URL may carry its message again, as WeChat's retries do (its
/// tries of a message span ~15 s): as long as the retry table keeps the answer for them.
pub const RETRIES_WITHIN: Duration = crate::dedup::DEFAULT_TTL;

/// How long after its first use a URL is still worth handing to the next process: a URL is
/// refused as stale once its timestamp is [`crate::signature::MAX_CLOCK_SKEW`] away, and it was
/// at most that far ahead when first used.
pub const URLS_OUTLIVE: Duration = Duration::from_secs(2 * crate::signature::MAX_CLOCK_SKEW);

/// Signed URLs remembered at most: at ~16 bytes each (plus the map's overhead) 1,024 cost ~40
/// KiB, and cover an account receiving up to ~3 messages a second over a URL's five minutes.
pub const DEFAULT_CAPACITY: usize = 1024;

/// What a signed URL has carried before, as [`Ledger::record`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen before (or forgotten): now remembered with this message.
    First,
    /// Seen with this same message within [`RETRIES_WITHIN`]: a retry that reuses its URL.
    Same,
    /// Seen with this same message longer ago than [`RETRIES_WITHIN`]: WeChat's retries are
    /// over, so this is the URL and message replayed (from a log) to run it again.
    Spent,
    /// Seen with another message, or used to verify the server: a replayed URL.
    Other,
}

/// The signed URLs of recent requests and the message each carried.
pub struct Ledger {
    inner: Mutex<Inner>,
    capacity: usize,
}

struct Inner {
    /// URL fingerprint → message fingerprint, and when the URL was first used.
    carried: HashMap<u64, (u64, FirstUse)>,
    /// URL fingerprints in the order they were first seen, for forgetting the oldest.
    order: VecDeque<u64>,
    /// URLs recorded so far, restored ones included (see [`Ledger::changes`]).
    recorded: u64,
}

/// When a URL was first used: `age_then` before `at` (zero for a URL first used in this
/// process; a restored URL's age as the last process saved it).
#[derive(Clone, Copy)]
struct FirstUse {
    at: Instant,
    age_then: Duration,
}

impl FirstUse {
    fn age(&self, now: Instant) -> Duration {
        self.age_then
            .saturating_add(now.saturating_duration_since(self.at))
    }
}

/// The message fingerprint of a GET verification; a message whose key hashes to it is counted
/// as [`VERIFICATION`] + 1, so a POST with a verification's URL is always [`Seen::Other`].
const VERIFICATION: u64 = 0;

/// The first 64 bits of a SHA-1 digest. Unkeyed on purpose: a forged message would need a
/// second preimage of these 64 bits (~2^64 SHA-1s) within the five minutes its URL is good for.
fn fingerprint(bytes: &[u8]) -> u64 {
    let digest = sha1_smol::Sha1::from(bytes).digest().bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// A message's fingerprint, never [`VERIFICATION`].
fn message_fingerprint(message_key: &str) -> u64 {
    not_verification(fingerprint(message_key.as_bytes()))
}

/// `fp`, or the next value if it is [`VERIFICATION`] (a 2^-64 chance for a message).
fn not_verification(fp: u64) -> u64 {
    fp.max(VERIFICATION + 1)
}

/// A URL's fingerprint: the first 64 bits of its verified `signature` (40 hex digits, already a
/// SHA-1 digest; the SHA-1 of the string for anything else).
fn url_fingerprint(signature: &str) -> u64 {
    signature
        .get(..16)
        .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or_else(|| fingerprint(signature.as_bytes()))
}

impl Default for Ledger {
    fn default() -> Ledger {
        Ledger::new(DEFAULT_CAPACITY)
    }
}

impl Ledger {
    /// A ledger remembering at most `capacity` URLs (at least one).
    pub fn new(capacity: usize) -> Ledger {
        let capacity = capacity.max(1);
        Ledger {
            inner: Mutex::new(Inner {
                carried: HashMap::with_capacity(capacity),
                order: VecDeque::with_capacity(capacity),
                recorded: 0,
            }),
            capacity,
        }
    }

    /// Records that the URL with the (verified) `signature` carried the message `message_key`
    /// ([`crate::message::Message::dedup_key`]) and says what it carried before.
    pub fn record(&self, signature: &str, message_key: &str) -> Seen {
        self.note(
            url_fingerprint(signature),
            message_fingerprint(message_key),
            Duration::ZERO,
            Instant::now(),
        )
    }

    /// Records that the URL with the (verified) `signature` verified the server (a GET), so that
    /// no POST can use it. Whatever it carried before, a verification only echoes its own
    /// `echostr`.
    pub fn record_verification(&self, signature: &str) -> Seen {
        self.note(
            url_fingerprint(signature),
            VERIFICATION,
            Duration::ZERO,
            Instant::now(),
        )
    }

    /// The remembered URLs as (URL, message) fingerprints with the time since each was first
    /// used, oldest first, leaving out those first used over [`URLS_OUTLIVE`] ago (stale
    /// anyway): what a stop or a checkpoint saves.
    pub fn entries(&self) -> Vec<(u64, u64, Duration)> {
        let now = Instant::now();
        let inner = self.lock();
        inner
            .order
            .iter()
            .filter_map(|url| {
                let (message, first) = inner.carried.get(url)?;
                let age = first.age(now);
                (age <= URLS_OUTLIVE).then_some((*url, *message, age))
            })
            .collect()
    }

    /// Remembers `entries` (from [`Ledger::entries`] of an earlier process, each with the time
    /// since its URL's first use as of now), oldest first, as if their URLs had been recorded in
    /// that order; a URL already known keeps what it carried. Those first used over
    /// [`URLS_OUTLIVE`] ago are left out (stale anyway). Returns how many were taken.
    pub fn restore(&self, entries: &[(u64, u64, Duration)]) -> usize {
        let now = Instant::now();
        let mut taken = 0;
        for &(url, message, age) in entries.iter().filter(|e| e.2 <= URLS_OUTLIVE) {
            self.note(url, message, age, now);
            taken += 1;
        }
        taken
    }

    /// How many URLs have been recorded (restored ones included): it grows with every new one,
    /// so a checkpoint that saw the same count has nothing new to save (`crate::state`).
    pub fn changes(&self) -> u64 {
        self.lock().recorded
    }

    /// How many URLs are remembered now.
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// Whether no URL is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records `url` carrying `message`, first used `age` before `now` if it is new; `now`
    /// dates a repeat.
    fn note(&self, url: u64, message: u64, age: Duration, now: Instant) -> Seen {
        let mut inner = self.lock();
        if let Some(&(before, first)) = inner.carried.get(&url) {
            return if before != message {
                Seen::Other
            } else if first.age(now) <= RETRIES_WITHIN {
                Seen::Same
            } else {
                Seen::Spent
            };
        }
        if inner.order.len() >= self.capacity {
            if let Some(oldest) = inner.order.pop_front() {
                inner.carried.remove(&oldest);
            }
        }
        inner.carried.insert(
            url,
            (
                message,
                FirstUse {
                    at: now,
                    age_then: age,
                },
            ),
        );
        inner.order.push_back(url);
        inner.recorded += 1;
        Seen::First
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The ledger's state is consistent after every statement, so a panic elsewhere while
        // it was held leaves nothing to repair.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::sign;

    impl Ledger {
        fn record_raw(&self, url: u64, message: u64) -> Seen {
            self.note(url, message, Duration::ZERO, Instant::now())
        }
    }

    /// The signature WeChat would put in a URL with `timestamp` and `nonce`.
    fn url(timestamp: &str, nonce: &str) -> String {
        sign(&["token", timestamp, nonce])
    }

    #[test]
    fn a_url_carries_its_message_again_only_within_wechats_retries() {
        let ledger = Ledger::default();
        let t0 = Instant::now();
        let (u, m) = (
            url_fingerprint(&url("1700000000", "5")),
            message_fingerprint("k"),
        );
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let zero = Duration::ZERO;
        assert_eq!(ledger.note(u, m, zero, t0), Seen::First);
        assert_eq!(ledger.note(u, m, zero, at(29)), Seen::Same);
        assert_eq!(ledger.note(u, m, zero, at(30)), Seen::Same);
        assert_eq!(ledger.note(u, m, zero, at(31)), Seen::Spent);
        // Still spent later: the repeats do not move the first use.
        assert_eq!(ledger.note(u, m, zero, at(200)), Seen::Spent);
        assert_eq!(ledger.note(u, 7, zero, at(31)), Seen::Other);
        assert_eq!(ledger.note(u, 7, zero, at(1)), Seen::Other);
    }

    #[test]
    fn restored_urls_keep_the_time_since_their_first_use() {
        let ledger = Ledger::default();
        ledger.restore(&[
            (1, 2, Duration::from_secs(25)),
            (3, 4, Duration::from_secs(40)),
        ]);
        let now = Instant::now();
        assert_eq!(ledger.note(1, 2, Duration::ZERO, now), Seen::Same);
        let later = now + Duration::from_secs(6);
        assert_eq!(ledger.note(1, 2, Duration::ZERO, later), Seen::Spent);
        // First used longer ago than the retries last: spent at once.
        assert_eq!(ledger.record_raw(3, 4), Seen::Spent);
        // And saved again as such.
        let entries = ledger.entries();
        assert_eq!((entries[0].0, entries[1].0), (1, 3));
        assert!(
            (Duration::from_secs(24)..=Duration::from_secs(26)).contains(&entries[0].2),
            "{entries:?}"
        );
        assert!(
            (Duration::from_secs(39)..=Duration::from_secs(41)).contains(&entries[1].2),
            "{entries:?}"
        );
    }

    #[test]
    fn a_url_past_its_timestamps_life_is_not_handed_on_again() {
        // A chain of quick restarts must not carry a spent URL for ever: once it is stale by
        // its timestamp, the next process has no use for it.
        let ledger = Ledger::default();
        let taken = ledger.restore(&[
            (1, 2, URLS_OUTLIVE - Duration::from_secs(5)),
            (3, 4, URLS_OUTLIVE + Duration::from_secs(1)),
            (5, 6, Duration::from_secs(3600)),
        ]);
        assert_eq!(taken, 1);
        assert_eq!(ledger.len(), 1);
        // One that ages past its life here is no longer saved either.
        let now = Instant::now();
        if let Some(then) = now.checked_sub(Duration::from_secs(5)) {
            ledger.note(7, 8, URLS_OUTLIVE - Duration::from_secs(1), then);
        }
        let entries = ledger.entries();
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!((entries[0].0, entries[0].1), (1, 2));
        assert!(entries[0].2 >= URLS_OUTLIVE - Duration::from_secs(5));
    }

    #[test]
    fn only_a_new_url_is_a_change() {
        let ledger = Ledger::new(2);
        assert_eq!(ledger.changes(), 0);
        let first = url("1700000000", "1");
        ledger.record(&first, "id|oUser|1");
        ledger.record(&first, "id|oUser|1");
        ledger.record(&first, "id|oAdmin|2");
        assert_eq!(
            ledger.changes(),
            1,
            "a retry or a refused forgery is no change"
        );
        ledger.record_verification(&url("1700000000", "2"));
        ledger.record(&url("1700000000", "3"), "id|oUser|3");
        assert_eq!(ledger.changes(), 3, "counted past the capacity");
        ledger.restore(&[(7, 8, Duration::ZERO), (7, 9, Duration::ZERO)]);
        assert_eq!(ledger.changes(), 4);
    }

    #[test]
    fn a_url_carries_one_message_and_its_retries() {
        let ledger = Ledger::default();
        let first = url("1700000000", "123");
        assert_eq!(ledger.record(&first, "id|oUser|1"), Seen::First);
        assert_eq!(ledger.record(&first, "id|oUser|1"), Seen::Same);
        assert_eq!(ledger.record(&first, "id|oAdmin|2"), Seen::Other);
        // The first message stays the one the URL carried.
        assert_eq!(ledger.record(&first, "id|oUser|1"), Seen::Same);
        // Another nonce or another timestamp is another URL.
        assert_eq!(
            ledger.record(&url("1700000000", "124"), "id|oAdmin|2"),
            Seen::First
        );
        assert_eq!(
            ledger.record(&url("1700000001", "123"), "id|oAdmin|2"),
            Seen::First
        );
        assert_eq!(ledger.len(), 3);
    }

    #[test]
    fn digits_moved_between_timestamp_and_nonce_are_the_same_url() {
        // WeChat signs the sorted parts run together: "1700000000" + "23" and "17000000002" +
        // "3" give one signature, which a log reader could reuse with the digits moved (the
        // freshness check refuses this one, but not every such split). Known by its signature,
        // it is the URL already used.
        let ledger = Ledger::default();
        let (a, b) = (url("1700000000", "23"), url("17000000002", "3"));
        assert_eq!(a, b, "the same signed statement");
        assert_eq!(ledger.record(&a, "id|oUser|1"), Seen::First);
        assert_eq!(ledger.record(&b, "id|oAdmin|2"), Seen::Other);
        // Different digits are different URLs.
        assert_eq!(
            ledger.record(&url("1700000000", "124"), "id|oAdmin|2"),
            Seen::First
        );
    }

    #[test]
    fn a_verification_url_carries_no_message() {
        let ledger = Ledger::default();
        let (nine, ten) = (url("1700000000", "9"), url("1700000000", "10"));
        assert_eq!(ledger.record_verification(&nine), Seen::First);
        assert_eq!(ledger.record_verification(&nine), Seen::Same);
        assert_eq!(ledger.record(&nine, "id|oAdmin|1"), Seen::Other);
        assert_eq!(ledger.record(&ten, "id|oAdmin|1"), Seen::First);
        assert_eq!(ledger.record_verification(&ten), Seen::Other);
    }

    #[test]
    fn no_message_has_the_fingerprint_of_a_verification() {
        assert_eq!(not_verification(VERIFICATION), VERIFICATION + 1);
        assert_eq!(not_verification(7), 7);
        assert_eq!(not_verification(u64::MAX), u64::MAX);
        assert_ne!(message_fingerprint(""), VERIFICATION);
        assert_ne!(message_fingerprint("id|oUser|1"), VERIFICATION);
        assert_eq!(
            message_fingerprint("id|oUser|1"),
            message_fingerprint("id|oUser|1")
        );
        assert_ne!(
            message_fingerprint("id|oUser|1"),
            message_fingerprint("id|oUser|2")
        );
    }

    #[test]
    fn a_url_is_known_by_the_first_16_hex_digits_of_its_signature() {
        let sig = url("1700000000", "123");
        assert_eq!(
            url_fingerprint(&sig),
            u64::from_str_radix(&sig[..16], 16).unwrap()
        );
        // Anything else (never a verified signature) is hashed, not refused.
        assert_eq!(url_fingerprint("xyz"), fingerprint(b"xyz"));
        assert_eq!(url_fingerprint(""), fingerprint(b""));
        assert_ne!(url_fingerprint("+123456789abcdef0"), 0x123456789abcdef0);
    }

    #[test]
    fn the_oldest_url_is_forgotten_when_full() {
        let ledger = Ledger::new(3);
        let u: Vec<String> = (1..=4).map(|n| url("1700000000", &n.to_string())).collect();
        for (n, sig) in u[..3].iter().enumerate() {
            assert_eq!(ledger.record(sig, &n.to_string()), Seen::First);
        }
        assert_eq!(ledger.record(&u[3], "3"), Seen::First);
        assert_eq!(ledger.len(), 3);
        // The first went: its URL is new again. The other three are still known.
        assert_eq!(ledger.record(&u[1], "x"), Seen::Other);
        assert_eq!(ledger.record(&u[3], "3"), Seen::Same);
        assert_eq!(ledger.record(&u[0], "x"), Seen::First);
        assert_eq!(ledger.record(&u[1], "x"), Seen::First);
        assert_eq!(ledger.len(), 3);
    }

    #[test]
    fn a_capacity_of_zero_still_remembers_one() {
        let ledger = Ledger::new(0);
        assert!(ledger.is_empty());
        let sig = url("1", "1");
        assert_eq!(ledger.record(&sig, "a"), Seen::First);
        assert_eq!(ledger.record(&sig, "b"), Seen::Other);
        assert!(!ledger.is_empty());
    }

    #[test]
    fn a_restored_ledger_knows_what_each_url_carried() {
        let before = Ledger::new(4);
        let u: Vec<String> = (1..=5).map(|n| url("1700000000", &n.to_string())).collect();
        before.record(&u[0], "m0");
        before.record_verification(&u[1]);
        before.record(&u[2], "m2");
        let saved = before.entries();
        assert_eq!(saved.len(), 3);
        assert_eq!(saved[0].0, url_fingerprint(&u[0]), "oldest first");

        let after = Ledger::new(4);
        after.restore(&saved);
        let fingerprints = |e: Vec<(u64, u64, Duration)>| -> Vec<(u64, u64)> {
            e.into_iter().map(|(u, m, _)| (u, m)).collect()
        };
        assert_eq!(fingerprints(after.entries()), fingerprints(saved.clone()));
        assert_eq!(after.record(&u[0], "m0"), Seen::Same);
        assert_eq!(after.record(&u[0], "forged"), Seen::Other);
        assert_eq!(after.record(&u[1], "m1"), Seen::Other);
        assert_eq!(after.record(&u[2], "m2"), Seen::Same);
        // Restored entries count toward the capacity like recorded ones: the oldest goes first.
        assert_eq!(after.record(&u[3], "m3"), Seen::First);
        assert_eq!(after.record(&u[4], "m4"), Seen::First);
        assert_eq!(after.len(), 4);
        assert_eq!(after.record(&u[0], "forged"), Seen::First);
    }
}
