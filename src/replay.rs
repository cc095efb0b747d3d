//! Replay defence: a signed URL carries one message.
//!
//! In plain mode WeChat's `signature` covers the URL's `timestamp` and `nonce` and nothing of the
//! body, and access logs (nginx's among them) keep URLs. [`crate::signature::check_fresh`] bounds
//! a URL's life to five minutes; within them, anyone who read the URL could still POST another
//! body with it, such as an admin command from an admin's openid. The [`Ledger`] remembers which
//! message each recent signed URL carried: the same URL again with the same message is one of
//! WeChat's retries (it may reuse the URL of the first try) and goes on to the retry table; with
//! another message it is refused. A URL that verified the server (GET) carries no message, so no
//! POST may use it. Safe mode's `msg_signature` signs the body as well; the ledger is kept for
//! every mode alike.
//!
//! The ledger is bounded: it remembers the last [`DEFAULT_CAPACITY`] signed URLs, far more than
//! one account receives in the five minutes a URL is good for, and it forgets everything on a
//! restart. It keeps keyed 64-bit fingerprints, never the URLs or messages themselves.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};

/// Signed URLs remembered at most: at ~16 bytes each (plus the map's overhead) 1,024 cost ~40
/// KiB, and cover an account receiving up to ~3 messages a second over a URL's five minutes.
pub const DEFAULT_CAPACITY: usize = 1024;

/// What a signed URL has carried before, as [`Ledger::record`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen before (or forgotten): now remembered with this message.
    First,
    /// Seen with this same message: a retry that reuses its URL.
    Same,
    /// Seen with another message, or used to verify the server: a replayed URL.
    Other,
}

/// The signed URLs of recent requests and the message each carried.
pub struct Ledger {
    inner: Mutex<Inner>,
    /// Keys the fingerprints with a per-process secret, so nobody can choose colliding ones.
    keys: RandomState,
    capacity: usize,
}

struct Inner {
    /// URL fingerprint → message fingerprint.
    carried: HashMap<u64, u64>,
    /// URL fingerprints in the order they were first seen, for forgetting the oldest.
    order: VecDeque<u64>,
}

/// The message fingerprint of a GET verification: no message key hashes to it but by a 2^-64
/// chance, so a POST with a verification's URL is [`Seen::Other`].
const VERIFICATION: &str = "\0GET";

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
            }),
            keys: RandomState::new(),
            capacity,
        }
    }

    /// Records that the URL signed with `timestamp` and `nonce` (the exact strings of its query,
    /// which are what the signature covers) carried the message `message_key`
    /// ([`crate::message::Message::dedup_key`]) and says what it carried before.
    pub fn record(&self, timestamp: &str, nonce: &str, message_key: &str) -> Seen {
        self.note(timestamp, nonce, self.keys.hash_one(message_key))
    }

    /// Records that the URL signed with `timestamp` and `nonce` verified the server (a GET), so
    /// that no POST can use it. Whatever it carried before, a verification only echoes its own
    /// `echostr`.
    pub fn record_verification(&self, timestamp: &str, nonce: &str) -> Seen {
        self.note(timestamp, nonce, self.keys.hash_one(VERIFICATION))
    }

    /// How many URLs are remembered now.
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// Whether no URL is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn note(&self, timestamp: &str, nonce: &str, message: u64) -> Seen {
        // A tuple hashes each string with its length, so ("12", "3") and ("1", "23") differ.
        let url = self.keys.hash_one((timestamp, nonce));
        let mut inner = self.lock();
        if let Some(&before) = inner.carried.get(&url) {
            return if before == message {
                Seen::Same
            } else {
                Seen::Other
            };
        }
        if inner.order.len() >= self.capacity {
            if let Some(oldest) = inner.order.pop_front() {
                inner.carried.remove(&oldest);
            }
        }
        inner.carried.insert(url, message);
        inner.order.push_back(url);
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

    #[test]
    fn a_url_carries_one_message_and_its_retries() {
        let ledger = Ledger::default();
        assert_eq!(
            ledger.record("1700000000", "123", "id|oUser|1"),
            Seen::First
        );
        assert_eq!(ledger.record("1700000000", "123", "id|oUser|1"), Seen::Same);
        assert_eq!(
            ledger.record("1700000000", "123", "id|oAdmin|2"),
            Seen::Other
        );
        // The first message stays the one the URL carried.
        assert_eq!(ledger.record("1700000000", "123", "id|oUser|1"), Seen::Same);
        // Another nonce or another timestamp is another URL.
        assert_eq!(
            ledger.record("1700000000", "124", "id|oAdmin|2"),
            Seen::First
        );
        assert_eq!(
            ledger.record("1700000001", "123", "id|oAdmin|2"),
            Seen::First
        );
        assert_eq!(ledger.len(), 3);
    }

    #[test]
    fn the_timestamp_and_nonce_are_not_run_together() {
        let ledger = Ledger::default();
        assert_eq!(ledger.record("12", "3", "id|a|1"), Seen::First);
        assert_eq!(ledger.record("1", "23", "id|b|2"), Seen::First);
    }

    #[test]
    fn a_verification_url_carries_no_message() {
        let ledger = Ledger::default();
        assert_eq!(ledger.record_verification("1700000000", "9"), Seen::First);
        assert_eq!(ledger.record_verification("1700000000", "9"), Seen::Same);
        assert_eq!(ledger.record("1700000000", "9", "id|oAdmin|1"), Seen::Other);
        assert_eq!(
            ledger.record("1700000000", "10", "id|oAdmin|1"),
            Seen::First
        );
        assert_eq!(ledger.record_verification("1700000000", "10"), Seen::Other);
    }

    #[test]
    fn the_oldest_url_is_forgotten_when_full() {
        let ledger = Ledger::new(3);
        for nonce in ["1", "2", "3"] {
            assert_eq!(ledger.record("1700000000", nonce, nonce), Seen::First);
        }
        assert_eq!(ledger.record("1700000000", "4", "4"), Seen::First);
        assert_eq!(ledger.len(), 3);
        // "1" went: its URL is new again. "2", "3" and "4" are still known.
        assert_eq!(ledger.record("1700000000", "2", "x"), Seen::Other);
        assert_eq!(ledger.record("1700000000", "4", "4"), Seen::Same);
        assert_eq!(ledger.record("1700000000", "1", "x"), Seen::First);
        assert_eq!(ledger.record("1700000000", "2", "x"), Seen::First);
        assert_eq!(ledger.len(), 3);
    }

    #[test]
    fn a_capacity_of_zero_still_remembers_one() {
        let ledger = Ledger::new(0);
        assert!(ledger.is_empty());
        assert_eq!(ledger.record("1", "1", "a"), Seen::First);
        assert_eq!(ledger.record("1", "1", "b"), Seen::Other);
        assert!(!ledger.is_empty());
    }
}
