//! Retry deduplication: WeChat resends a message it got no answer to (3 tries, ~5 s apart).
//! The first try claims the message and its answer is kept; a retry gets those same bytes, and
//! a retry that arrives while the first try is still working waits for them.
//!
//! Entries live about 30 s (longer than WeChat's ~15 s of retries) and the table holds a bounded
//! number of them and a bounded number of answer bytes, so memory stays flat under any load: when
//! it is full the oldest answered entry goes (a message still being worked on stays, unless every
//! entry is one).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// How long an answer is remembered.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// How many messages are remembered at most: WeChat's tries of one message span ~15 s, so this
/// keeps every message's answer for its retries up to ~68 new messages a second, far more than
/// one account receives; past that the oldest answered ones go first. Each entry holds ~0.4 KiB
/// (4,096 cost 1.2 MiB more peak RSS under load than 1,024: docs/benchmarks-history.md).
pub const DEFAULT_CAPACITY: usize = 1024;

/// How many bytes of answers are remembered at most: 512 KiB hold 1024 plain answers (~300 bytes
/// each), so it binds only for long ones, and still every retry of answers of up to 2 KiB (2.8 KiB
/// encrypted) up to ~12 new messages a second over WeChat's 15 s of tries.
pub const DEFAULT_BYTE_BUDGET: usize = 512 << 10;

/// The size of a remembered answer, for the byte budget.
pub trait Weigh {
    /// Bytes this answer holds.
    fn weight(&self) -> usize;
}

impl Weigh for u32 {
    fn weight(&self) -> usize {
        4
    }
}

impl Weigh for String {
    fn weight(&self) -> usize {
        self.len()
    }
}

impl Weigh for Arc<str> {
    fn weight(&self) -> usize {
        self.len()
    }
}

/// The table of recent messages, keyed by [`crate::message::Message::dedup_key`].
pub struct Dedup<T> {
    inner: Mutex<Inner<T>>,
    ttl: Duration,
    capacity: usize,
    budget: usize,
    /// Bytes of the answers in the table and answers recorded, shared with its slots.
    tally: Arc<Tally>,
}

/// What every slot of a table adds to: kept beside the table's lock, not under it, because a
/// slot is completed without taking the table's lock.
#[derive(Default)]
struct Tally {
    /// Bytes of the answers in the table (see [`Weigh`]).
    bytes: AtomicUsize,
    /// Answers recorded and tries seen again so far, restored ones included (see
    /// [`Dedup::changes`]).
    answered: AtomicU64,
}

struct Inner<T> {
    entries: HashMap<Arc<str>, Arc<Slot<T>>>,
    /// Insertion order, for expiry and eviction of the oldest.
    order: VecDeque<(Instant, Arc<str>)>,
}

/// One message's place in the table: pending until its first try completes.
pub struct Slot<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    /// Tries waiting on `ready`; changed only under `state`'s lock. A notify is a system call
    /// even when nobody waits, and nobody does for almost every message.
    waiters: AtomicUsize,
    /// Tries seen so far, the first included: counted after the answer too, so that the log
    /// names a third try of a settled message as such.
    tries: AtomicU32,
    created: Instant,
    /// The answer's weight once completed, counted in the table's bytes until removed.
    weight: AtomicUsize,
    /// Whether the entry has left the table; changed only under `state`'s lock, where the
    /// answer's weight is counted, so that an answer recorded after its entry expired (a first
    /// try still working past the time-to-live) is never counted in the table's bytes.
    removed: AtomicBool,
    tally: Arc<Tally>,
}

impl<T> Slot<T> {
    /// Ends the pending state and wakes the tries waiting for it, if any; an answer weighing
    /// `weight` bytes is counted in the table's bytes while the entry is in the table.
    fn finish(&self, end: State<T>, weight: usize) {
        let mut state = lock(&self.state);
        if !self.removed.load(Ordering::SeqCst) {
            self.weight.store(weight, Ordering::SeqCst);
            self.tally.bytes.fetch_add(weight, Ordering::SeqCst);
        }
        *state = end;
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.ready.notify_all();
        }
    }

    /// Takes this slot's answer out of the table's byte count (it is leaving the table).
    fn release(&self) {
        let _state = lock(&self.state);
        self.removed.store(true, Ordering::SeqCst);
        let w = self.weight.swap(0, Ordering::SeqCst);
        self.tally.bytes.fetch_sub(w, Ordering::SeqCst);
    }
}

enum State<T> {
    Pending,
    Done(T),
    /// The first try ended without an answer (it panicked past every guard): retries stop waiting.
    Abandoned,
}

/// What a try of a message gets from [`Dedup::claim`].
pub enum Claim<T> {
    /// The first try: handle the message and [`Ticket::complete`] it.
    First(Ticket<T>),
    /// A repeat: [`Repeat::wait`] for the first try's answer.
    Repeat(Repeat<T>),
}

/// The first try's obligation to record an answer; dropping it unanswered releases any waiters.
pub struct Ticket<T> {
    slot: Arc<Slot<T>>,
    completed: bool,
}

/// A repeated try of a message already seen.
pub struct Repeat<T> {
    slot: Arc<Slot<T>>,
    /// Which try this is: 2 for WeChat's first retry, 3 for its last.
    pub attempt: u32,
}

fn lock<X>(m: &Mutex<X>) -> MutexGuard<'_, X> {
    // A panic while holding one of these locks cannot leave the data half-updated in a way that
    // matters (every update is a single assignment), so a poisoned lock is used as it is.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T: Clone + Weigh> Default for Dedup<T> {
    fn default() -> Self {
        Dedup::new(DEFAULT_TTL, DEFAULT_CAPACITY)
    }
}

impl<T: Clone + Weigh> Dedup<T> {
    /// A table remembering answers for `ttl`, at most `capacity` of them and
    /// [`DEFAULT_BYTE_BUDGET`] bytes of them.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Dedup::with_budget(ttl, capacity, DEFAULT_BYTE_BUDGET)
    }

    /// Like [`Dedup::new`] with a byte budget of `budget`.
    pub fn with_budget(ttl: Duration, capacity: usize, budget: usize) -> Self {
        Dedup {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                order: VecDeque::new(),
            }),
            ttl,
            capacity: capacity.max(1),
            budget,
            tally: Arc::default(),
        }
    }

    /// Bytes of answers remembered now.
    pub fn bytes(&self) -> usize {
        self.tally.bytes.load(Ordering::SeqCst)
    }

    /// How many answers have been recorded and repeated tries seen (restored answers
    /// included): it grows with every one, so a checkpoint that saw the same count has nothing
    /// new to save (`crate::state`).
    pub fn changes(&self) -> u64 {
        self.tally.answered.load(Ordering::SeqCst)
    }

    /// Claims the message with `key`: the first try gets a [`Ticket`], later tries a [`Repeat`].
    pub fn claim(&self, key: &str) -> Claim<T> {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        self.expire(&mut inner, now);
        if let Some(slot) = inner.entries.get(key) {
            let slot = Arc::clone(slot);
            drop(inner);
            let attempt = slot.tries.fetch_add(1, Ordering::SeqCst).saturating_add(1);
            // A try more is kept too: after a crash it tells the last try from the others.
            self.tally.answered.fetch_add(1, Ordering::SeqCst);
            return Claim::Repeat(Repeat { slot, attempt });
        }
        while inner.entries.len() >= self.capacity || self.bytes() > self.budget {
            // The oldest settled entry goes. A message whose first try is still working (a slow
            // command, whose retries come 5 and 10 s later) is kept unless every entry is, so
            // that a busy table never makes its retry run the command again.
            let victim = inner
                .order
                .iter()
                .position(|(created, key)| {
                    inner
                        .entries
                        .get(key)
                        .is_none_or(|s| s.created != *created || !s.is_pending())
                })
                .unwrap_or(0);
            match inner.order.remove(victim) {
                Some((created, old)) => Self::remove(&mut inner, &old, created),
                None => break,
            }
        }
        let slot = self.slot(State::Pending, 1, now, 0);
        let key: Arc<str> = key.into();
        inner.entries.insert(Arc::clone(&key), Arc::clone(&slot));
        inner.order.push_back((now, key));
        Claim::First(Ticket {
            slot,
            completed: false,
        })
    }

    /// A new entry for this table: in `state`, after `tries` tries, first seen at `created`,
    /// weighing `weight` bytes (counted in the table's bytes by the caller).
    fn slot(&self, state: State<T>, tries: u32, created: Instant, weight: usize) -> Arc<Slot<T>> {
        Arc::new(Slot {
            state: Mutex::new(state),
            waiters: AtomicUsize::new(0),
            tries: AtomicU32::new(tries),
            ready: Condvar::new(),
            created,
            weight: AtomicUsize::new(weight),
            removed: AtomicBool::new(false),
            tally: Arc::clone(&self.tally),
        })
    }

    /// Drops entries older than the time-to-live.
    fn expire(&self, inner: &mut Inner<T>, now: Instant) {
        while let Some((created, _)) = inner.order.front() {
            if now.duration_since(*created) < self.ttl {
                break;
            }
            if let Some((created, key)) = inner.order.pop_front() {
                Self::remove(inner, &key, created);
            }
        }
    }

    /// Removes `key`'s entry if it is the one made at `created` (an order record may outlive it).
    fn remove(inner: &mut Inner<T>, key: &str, created: Instant) {
        if inner.entries.get(key).is_some_and(|s| s.created == created) {
            if let Some(slot) = inner.entries.remove(key) {
                slot.release();
            }
        }
    }

    /// The answered messages, oldest first, each with its key, its age, its tries so far and
    /// its answer: what a clean stop saves for the next start (`crate::state`). Messages still
    /// being worked on are left out: their work ends with this process.
    pub fn answered(&self) -> Vec<(Arc<str>, Duration, u32, T)> {
        let now = Instant::now();
        let inner = lock(&self.inner);
        inner
            .order
            .iter()
            .filter_map(|(created, key)| {
                let slot = inner.entries.get(key).filter(|s| s.created == *created)?;
                let State::Done(answer) = &*lock(&slot.state) else {
                    return None;
                };
                let age = now.saturating_duration_since(slot.created);
                let tries = slot.tries.load(Ordering::SeqCst);
                Some((Arc::clone(key), age, tries, answer.clone()))
            })
            .collect()
    }

    /// Remembers `answer` for the message `key` first seen `age` ago after `tries` tries, as
    /// saved by [`Dedup::answered`] in an earlier process; its retries then get it as if this
    /// process had answered it. Nothing is done for a key already known, an age past the
    /// time-to-live, or an answer bigger than the whole byte budget. A full table forgets its
    /// oldest entries to make room, as a live claim does (restore oldest first, before
    /// serving, so that the newest are kept).
    pub fn restore(&self, key: &str, age: Duration, tries: u32, answer: T) -> bool {
        let now = Instant::now();
        let Some(created) = now.checked_sub(age).filter(|_| age < self.ttl) else {
            return false;
        };
        let mut inner = lock(&self.inner);
        let w = answer.weight();
        if inner.entries.contains_key(key) || w > self.budget {
            return false;
        }
        // As a live claim does, the oldest go to make room: restored oldest first, a full
        // table keeps its newest answers, whose retries are the ones still to come.
        while inner.entries.len() >= self.capacity || self.bytes() + w > self.budget {
            match inner.order.pop_front() {
                Some((created, old)) => Self::remove(&mut inner, &old, created),
                None => break,
            }
        }
        let slot = self.slot(State::Done(answer), tries.max(1), created, w);
        self.tally.bytes.fetch_add(w, Ordering::SeqCst);
        self.tally.answered.fetch_add(1, Ordering::SeqCst);
        let key: Arc<str> = key.into();
        inner.entries.insert(Arc::clone(&key), slot);
        inner.order.push_back((created, key));
        true
    }

    /// How many messages are remembered now.
    pub fn len(&self) -> usize {
        lock(&self.inner).entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Slot<T> {
    fn is_pending(&self) -> bool {
        matches!(&*lock(&self.state), State::Pending)
    }
}

impl<T: Clone + Weigh> Ticket<T> {
    /// Records the answer and wakes every try waiting for it.
    pub fn complete(mut self, answer: T) {
        self.completed = true;
        let w = answer.weight();
        self.slot.finish(State::Done(answer), w);
        // Counted after the answer is in its slot: a checkpoint that sees the new count finds it.
        self.slot.tally.answered.fetch_add(1, Ordering::SeqCst);
    }
}

impl<T> Ticket<T> {
    /// A handle that waits for this ticket's answer like a retry would, without counting as one
    /// (its `attempt` is 1): the first try uses it while the work runs elsewhere.
    pub fn watch(&self) -> Repeat<T> {
        Repeat {
            slot: Arc::clone(&self.slot),
            attempt: 1,
        }
    }
}

impl<T> Drop for Ticket<T> {
    fn drop(&mut self) {
        if !self.completed {
            self.slot.finish(State::Abandoned, 0);
        }
    }
}

impl<T: Clone> Repeat<T> {
    /// Waits up to `timeout` for the first try's answer; `None` when it is not there in time or
    /// the first try was abandoned.
    pub fn wait(&self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.slot.state);
        loop {
            match &*state {
                State::Done(answer) => return Some(answer.clone()),
                State::Abandoned => return None,
                State::Pending => {}
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.slot.waiters.fetch_add(1, Ordering::SeqCst);
            state = self
                .slot
                .ready
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            self.slot.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// How long ago the first try of this message arrived.
    pub fn since_first(&self) -> Duration {
        self.slot.created.elapsed()
    }

    /// Whether the first try has finished (with an answer or abandoned).
    pub fn is_settled(&self) -> bool {
        !matches!(&*lock(&self.slot.state), State::Pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn an_answer_recorded_after_its_entry_expired_is_not_counted() {
        // A first try still working past the time-to-live: its entry leaves the table, then its
        // answer comes. Counted, it would stay in the byte count for ever, and past the budget
        // every claim would evict all but one entry: retries no longer recognised.
        let d: Dedup<String> = Dedup::with_budget(Duration::from_millis(50), 1024, 1000);
        let Claim::First(slow) = d.claim("slow") else {
            panic!("first try must claim")
        };
        thread::sleep(Duration::from_millis(80));
        let Claim::First(other) = d.claim("other") else {
            panic!("first try must claim")
        };
        assert_eq!(d.len(), 1, "slow expired");
        slow.complete("x".repeat(2000));
        assert_eq!(d.bytes(), 0);
        other.complete("y".into());
        assert_eq!(d.bytes(), 1);
        for key in ["m1", "m2", "m3"] {
            let Claim::First(t) = d.claim(key) else {
                panic!("first try must claim")
            };
            t.complete("z".into());
        }
        assert!(
            matches!(d.claim("m1"), Claim::Repeat(_)),
            "still remembered"
        );
        assert_eq!(d.len(), 4);
    }

    #[test]
    fn every_answer_and_repeated_try_is_a_change_and_nothing_else_is() {
        let d: Dedup<String> = Dedup::default();
        let Claim::First(t) = d.claim("k") else {
            panic!("first try must claim")
        };
        assert_eq!(d.changes(), 0, "claimed, not answered: not saved");
        t.complete("answer".into());
        assert_eq!(d.changes(), 1);
        let Claim::Repeat(_) = d.claim("k") else {
            panic!("a retry")
        };
        assert_eq!(d.changes(), 2, "a try more: its count is saved");
        // A ticket dropped unanswered leaves nothing to save.
        let Claim::First(dropped) = d.claim("j") else {
            panic!("first try must claim")
        };
        drop(dropped);
        assert_eq!(d.changes(), 2);
        assert!(d.restore("r", Duration::from_secs(1), 2, "old".into()));
        assert!(!d.restore("r", Duration::from_secs(1), 2, "old".into()));
        assert_eq!(d.changes(), 3);
    }

    #[test]
    fn repeat_gets_first_answer() {
        let d: Dedup<String> = Dedup::default();
        let Claim::First(t) = d.claim("k") else {
            panic!("first try must claim")
        };
        t.complete("answer".into());
        let Claim::Repeat(r) = d.claim("k") else {
            panic!("second try must repeat")
        };
        assert_eq!(r.attempt, 2);
        assert_eq!(r.wait(Duration::ZERO).as_deref(), Some("answer"));
        // WeChat's third try, after the answer: counted as the third (the log says so).
        let Claim::Repeat(r3) = d.claim("k") else {
            panic!("third try must repeat")
        };
        assert_eq!(r3.attempt, 3);
        assert_eq!(r3.wait(Duration::ZERO).as_deref(), Some("answer"));
    }

    #[test]
    fn repeat_waits_for_pending_first_try() {
        let d: Arc<Dedup<u32>> = Arc::new(Dedup::default());
        let Claim::First(t) = d.claim("k") else {
            panic!()
        };
        let d2 = Arc::clone(&d);
        let waiter = thread::spawn(move || match d2.claim("k") {
            Claim::Repeat(r) => r.wait(Duration::from_secs(5)),
            Claim::First(_) => None,
        });
        thread::sleep(Duration::from_millis(50));
        t.complete(7);
        assert_eq!(waiter.join().unwrap(), Some(7));
    }

    #[test]
    fn wait_times_out_and_counts_attempts() {
        let d: Dedup<u32> = Dedup::default();
        let _t = d.claim("k");
        let Claim::Repeat(r2) = d.claim("k") else {
            panic!()
        };
        let Claim::Repeat(r3) = d.claim("k") else {
            panic!()
        };
        assert_eq!((r2.attempt, r3.attempt), (2, 3));
        assert!(r2.since_first() < Duration::from_secs(5));
        assert_eq!(r2.wait(Duration::from_millis(10)), None);
        assert!(!r2.is_settled());
    }

    #[test]
    fn watching_the_first_try_does_not_count_as_a_retry() {
        let d: Dedup<u32> = Dedup::default();
        let Claim::First(t) = d.claim("k") else {
            panic!()
        };
        let w = t.watch();
        assert_eq!(w.attempt, 1);
        let Claim::Repeat(r) = d.claim("k") else {
            panic!()
        };
        assert_eq!(r.attempt, 2, "the watch is not a try");
        t.complete(3);
        assert_eq!(w.wait(Duration::ZERO), Some(3));
    }

    #[test]
    fn abandoned_ticket_releases_waiters() {
        let d: Dedup<u32> = Dedup::default();
        let Claim::First(t) = d.claim("k") else {
            panic!()
        };
        let Claim::Repeat(r) = d.claim("k") else {
            panic!()
        };
        drop(t);
        assert_eq!(r.wait(Duration::from_secs(5)), None);
        assert!(r.is_settled());
    }

    #[test]
    fn a_full_table_evicts_answers_before_work_in_progress() {
        let d: Dedup<u32> = Dedup::new(Duration::from_secs(30), 3);
        let Claim::First(slow) = d.claim("slow") else {
            panic!()
        };
        for i in 0..10 {
            if let Claim::First(t) = d.claim(&i.to_string()) {
                t.complete(i);
            }
        }
        assert_eq!(d.len(), 3);
        let Claim::Repeat(r) = d.claim("slow") else {
            panic!("a retry of the message still being worked on must find it")
        };
        assert_eq!(r.attempt, 2);
        assert!(matches!(d.claim("9"), Claim::Repeat(_)));
        assert!(
            matches!(d.claim("7"), Claim::First(_)),
            "answers went first"
        );
        slow.complete(99);
        assert_eq!(r.wait(Duration::ZERO), Some(99));
        // When every entry is still being worked on, the oldest goes: the table stays bounded.
        let d: Dedup<u32> = Dedup::new(Duration::from_secs(30), 2);
        let (_a, _b, _c) = (d.claim("a"), d.claim("b"), d.claim("c"));
        assert_eq!(d.len(), 2);
        assert!(matches!(d.claim("b"), Claim::Repeat(_)));
        assert!(matches!(d.claim("a"), Claim::First(_)));
    }

    #[test]
    fn capacity_and_ttl_bound_the_table() {
        let d: Dedup<u32> = Dedup::new(Duration::from_millis(30), 100);
        for i in 0..1000 {
            if let Claim::First(t) = d.claim(&i.to_string()) {
                t.complete(i);
            }
        }
        assert_eq!(d.len(), 100);
        assert!(matches!(d.claim("999"), Claim::Repeat(_)));
        assert!(matches!(d.claim("0"), Claim::First(_)));
        thread::sleep(Duration::from_millis(40));
        let _ = d.claim("new");
        assert_eq!(d.len(), 1);
        assert_eq!(d.bytes(), 0, "expired answers leave the byte count");
    }

    #[test]
    fn the_byte_budget_evicts_the_oldest_answers() {
        let d: Dedup<String> = Dedup::with_budget(Duration::from_secs(30), 4096, 10_000);
        for i in 0..100 {
            if let Claim::First(t) = d.claim(&i.to_string()) {
                t.complete("x".repeat(1000));
            }
        }
        assert!(d.bytes() <= 11_000, "{} bytes kept", d.bytes());
        assert!(d.len() <= 11, "{} entries kept", d.len());
        assert!(
            matches!(d.claim("99"), Claim::Repeat(_)),
            "the newest stays"
        );
        assert!(matches!(d.claim("0"), Claim::First(_)), "the oldest went");
    }

    #[test]
    fn answers_weigh_their_bytes() {
        assert_eq!(7u32.weight(), 4);
        assert_eq!(String::from("数据").weight(), 6);
        assert_eq!(Arc::<str>::from("数据").weight(), 6);
        let d: Dedup<u32> = Dedup::default();
        for i in 0..3 {
            if let Claim::First(t) = d.claim(&i.to_string()) {
                t.complete(i);
            }
        }
        assert_eq!(d.bytes(), 12);
        let d: Dedup<Arc<str>> = Dedup::default();
        if let Claim::First(t) = d.claim("k") {
            t.complete("<xml>回复</xml>".into());
        }
        assert_eq!(d.bytes(), 17);
    }

    #[test]
    fn the_byte_budget_binds_only_once_it_is_exceeded() {
        let d: Dedup<String> = Dedup::with_budget(Duration::from_secs(30), 100, 10);
        for (key, answer) in [("a", "1234"), ("b", "123456")] {
            if let Claim::First(t) = d.claim(key) {
                t.complete(answer.into());
            }
        }
        // Exactly at the budget: nothing goes.
        let Claim::First(c) = d.claim("c") else {
            panic!()
        };
        assert_eq!((d.len(), d.bytes()), (3, 10));
        c.complete("12345".into());
        // Over it by more than the oldest answer: the two oldest go.
        let _d = d.claim("d");
        assert_eq!((d.len(), d.bytes()), (2, 5));
        assert!(matches!(d.claim("c"), Claim::Repeat(_)));
        assert!(matches!(d.claim("a"), Claim::First(_)));
    }

    #[test]
    fn a_waiting_retry_is_woken_by_the_answer() {
        let d: Dedup<u32> = Dedup::default();
        let Claim::First(t) = d.claim("k") else {
            panic!()
        };
        let Claim::Repeat(r) = d.claim("k") else {
            panic!()
        };
        let slot = Arc::clone(&r.slot);
        let (done, answered) = std::sync::mpsc::channel();
        thread::spawn(move || {
            // Woken by the answer, not by this hour running out.
            let _ = done.send(r.wait(Duration::from_secs(3600)));
        });
        // Completed once the retry waits on the condition variable (it counts itself first).
        while slot.waiters.load(Ordering::SeqCst) == 0 {
            thread::yield_now();
        }
        t.complete(7);
        // A missed wake-up would make it wait the hour: the test fails instead of hanging.
        assert_eq!(answered.recv_timeout(Duration::from_secs(60)), Ok(Some(7)));
    }

    #[test]
    fn is_empty_and_since_first() {
        let d: Dedup<u32> = Dedup::default();
        assert!(d.is_empty());
        let Claim::First(_t) = d.claim("k") else {
            panic!()
        };
        assert!(!d.is_empty());
        let claimed = Instant::now();
        thread::sleep(Duration::from_millis(2));
        let Claim::Repeat(r) = d.claim("k") else {
            panic!()
        };
        // The first try came before `claimed`, so at least this much ago (2 ms or more).
        let at_least = claimed.elapsed();
        assert!(r.since_first() >= at_least, "{:?}", r.since_first());
    }

    #[test]
    fn answered_messages_are_handed_to_a_new_table_with_their_age_and_tries() {
        let old: Dedup<String> = Dedup::default();
        let Claim::First(a) = old.claim("a") else {
            panic!()
        };
        a.complete("answer a".into());
        let Claim::Repeat(_) = old.claim("a") else {
            panic!()
        };
        let Claim::First(pending) = old.claim("still working") else {
            panic!()
        };
        let Claim::First(b) = old.claim("b") else {
            panic!()
        };
        b.complete("answer b".into());
        thread::sleep(Duration::from_millis(5));
        let saved = old.answered();
        let keys: Vec<&str> = saved.iter().map(|(k, ..)| &**k).collect();
        assert_eq!(keys, ["a", "b"], "oldest first, none still being worked on");
        assert_eq!(saved[0].2, 2, "a's tries");
        assert_eq!(saved[0].3, "answer a");
        assert!(saved[0].1 >= Duration::from_millis(5), "{:?}", saved[0].1);
        drop(pending);

        let new: Dedup<String> = Dedup::default();
        for (key, age, tries, answer) in saved {
            assert!(new.restore(&key, age, tries, answer));
        }
        assert_eq!(new.len(), 2);
        assert_eq!(new.bytes(), 16);
        let Claim::Repeat(r) = new.claim("a") else {
            panic!("a restored answer is a retry's")
        };
        assert_eq!(r.attempt, 3, "the tries go on counting");
        assert!(r.since_first() >= Duration::from_millis(5));
        assert!(r.is_settled());
        assert_eq!(r.wait(Duration::ZERO), Some("answer a".into()));
        let Claim::First(_) = new.claim("still working") else {
            panic!("work in progress is not handed on")
        };
    }

    #[test]
    fn restore_refuses_the_expired_the_known_and_the_too_big_and_keeps_the_newest() {
        let d: Dedup<String> = Dedup::with_budget(Duration::from_secs(30), 2, 10);
        assert!(!d.restore("old", Duration::from_secs(30), 1, "x".into()));
        assert!(
            !d.restore("huge", Duration::ZERO, 1, "12345678901".into()),
            "over the whole budget"
        );
        assert!(d.restore("gone", Duration::from_secs(29), 1, "123456".into()));
        // Restored oldest first: a full table makes room for the newer, as a live claim does
        // (the newest answers are those whose retries are still to come).
        assert!(d.restore("a", Duration::from_secs(29), 0, "12345".into()));
        assert_eq!((d.len(), d.bytes()), (1, 5), "\"gone\" made room");
        assert!(!d.restore("a", Duration::ZERO, 1, "y".into()), "known");
        assert!(
            d.restore("b", Duration::ZERO, 1, "12345".into()),
            "exactly the budget"
        );
        assert_eq!((d.len(), d.bytes()), (2, 10));
        let one: Dedup<String> = Dedup::with_budget(Duration::from_secs(30), 2, 5);
        assert!(
            one.restore("x", Duration::ZERO, 1, "12345".into()),
            "exactly the whole budget fits"
        );
        let full: Dedup<String> = Dedup::with_budget(Duration::from_secs(30), 2, 100);
        for k in ["1", "2", "3"] {
            assert!(full.restore(k, Duration::ZERO, 1, k.into()));
        }
        assert_eq!(full.len(), 2);
        assert!(
            matches!(full.claim("1"), Claim::First(_)),
            "the oldest made room"
        );
        let Claim::Repeat(r) = d.claim("a") else {
            panic!()
        };
        assert_eq!(r.attempt, 2, "no tries counts as one");
        // The restored entries age out like any others: "a" came 29 s ago.
        thread::sleep(Duration::from_millis(1100));
        let Claim::First(_) = d.claim("a") else {
            panic!("expired after its 30 s")
        };
    }
}
