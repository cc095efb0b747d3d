//! Results of slow commands that missed WeChat's last try, kept for the user's next message.
//!
//! When the last try of a message must answer before its command is done, it answers a notice
//! ([`NOTICE`]) and marks the message *orphaned* ([`Pending::give_up`]). When the command then
//! finishes ([`Pending::finish`]), its text is kept in the user's mailbox, and the user's next
//! text answer starts with it ([`Pending::attach`]). Both steps take one lock, so a result that
//! lands while the last try gives up is never lost nor delivered twice.

use crate::reply::{truncate_text, Reply, TEXT_LIMIT};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// What the last try answers when the command is still running.
pub const NOTICE: &str = "结果还在生成，稍后发任意消息查看";

/// Put before a late result in the next answer.
pub const LATE_PREFIX: &str = "上次的结果：";

/// How long a late result waits for the user's next message.
pub const KEEP: Duration = Duration::from_secs(24 * 3600);

/// At most this many users with late results; at most [`PER_USER`] results each.
pub const MAX_USERS: usize = 1024;

/// At most this many late results kept for one user (the oldest go first).
pub const PER_USER: usize = 4;

/// How long an orphan mark waits for its command (commands end within 15 s).
const ORPHAN_TTL: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Inner {
    /// Dedup keys of messages whose last try answered [`NOTICE`], with when.
    orphans: HashMap<String, Instant>,
    /// Late results by openid, oldest first.
    mailbox: HashMap<String, Vec<(Instant, String)>>,
    /// Late results kept or handed out so far (see [`Pending::changes`]).
    changes: u64,
}

/// The shared table of orphaned messages and late results (one per server; survives reloads).
#[derive(Default)]
pub struct Pending {
    inner: Mutex<Inner>,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is a complete insert or remove: a poisoned lock holds consistent data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last try of message `key` is about to answer. `done` looks (without waiting) for the
    /// command's answer; when it is there it is returned, else the message is marked orphaned
    /// and `None` says to answer [`NOTICE`].
    pub fn give_up<T>(&self, key: &str, done: impl FnOnce() -> Option<T>) -> Option<T> {
        let mut inner = self.lock();
        if let Some(answer) = done() {
            return Some(answer);
        }
        let now = Instant::now();
        inner
            .orphans
            .retain(|_, at| now.duration_since(*at) < ORPHAN_TTL);
        inner.orphans.insert(key.to_string(), now);
        None
    }

    /// The command of message `key` from `openid` finished with `reply`. `complete` records the
    /// answer for the message's tries; when the message was orphaned the text is also kept for
    /// the user's next message, otherwise earlier late results are attached to it.
    pub fn finish(&self, key: &str, openid: &str, reply: Reply, complete: impl FnOnce(Reply)) {
        self.finish_as(key, openid, reply, true, complete);
    }

    /// [`Pending::finish`], attaching the earlier late results only when `attach`: not to an
    /// answer the server's stop cut short, which is not handed to the next process and may
    /// reach nobody (WeChat's next try goes to the next process and runs the command again),
    /// so the results wait for the user's next answer there.
    pub fn finish_as(
        &self,
        key: &str,
        openid: &str,
        reply: Reply,
        attach: bool,
        complete: impl FnOnce(Reply),
    ) {
        let mut inner = self.lock();
        if inner.orphans.remove(key).is_some() {
            match &reply {
                Reply::Text(t) if !t.trim().is_empty() => {
                    // No more than a reply can show: a program's output may be 1 MiB, and
                    // 1,024 users' four results each go into every checkpoint.
                    keep(
                        &mut inner,
                        openid,
                        truncate_text(t.trim(), TEXT_LIMIT).into_owned(),
                    );
                    log::info!("{openid}: a late result is kept for the next message");
                }
                other => log::warn!(
                    "{openid}: a late {} result cannot be delivered with a later text; dropped",
                    other.kind()
                ),
            }
            complete(reply);
        } else if attach {
            let reply = attach_locked(&mut inner, openid, reply);
            complete(reply);
        } else {
            complete(reply);
        }
    }

    /// Starts a text answer to `openid` with the late results waiting for them (each after
    /// [`LATE_PREFIX`]); other answers are returned as they are and the results keep waiting.
    pub fn attach(&self, openid: &str, reply: Reply) -> Reply {
        if !matches!(reply, Reply::Text(_)) {
            return reply;
        }
        attach_locked(&mut self.lock(), openid, reply)
    }

    /// How many times a late result has been kept or handed out (restored ones included): a
    /// checkpoint that saw the same count has nothing new to save (`crate::state`).
    pub fn changes(&self) -> u64 {
        self.lock().changes
    }

    /// How many late results wait for `openid`.
    pub fn waiting(&self, openid: &str) -> usize {
        self.lock().mailbox.get(openid).map_or(0, Vec::len)
    }

    /// Every late result still waiting, as (openid, age, text), each user's oldest first: what a
    /// clean stop saves for the next start (`crate::state`). Orphan marks are left out: their
    /// commands end with this process.
    pub fn late_results(&self) -> Vec<(String, Duration, String)> {
        let now = Instant::now();
        let inner = self.lock();
        let mut all = Vec::new();
        for (openid, results) in &inner.mailbox {
            for (at, text) in results {
                let age = now.saturating_duration_since(*at);
                if age < KEEP {
                    all.push((openid.clone(), age, text.clone()));
                }
            }
        }
        all
    }

    /// Keeps `text` for `openid`'s next message as if it had come `age` ago (a late result
    /// saved by [`Pending::late_results`] in an earlier process); `false` when it is too old or
    /// there is no room. Restore each user's results oldest first.
    pub fn restore_late(&self, openid: &str, age: Duration, text: String) -> bool {
        let Some(at) = Instant::now().checked_sub(age).filter(|_| age < KEEP) else {
            return false;
        };
        // As when kept: no more than a reply can show (an older wxmp kept results whole).
        let text = truncate_text(&text, TEXT_LIMIT).into_owned();
        keep_at(&mut self.lock(), openid, text, at)
    }
}

fn keep(inner: &mut Inner, openid: &str, text: String) {
    keep_at(inner, openid, text, Instant::now());
}

/// Keeps `text` for `openid` as come at `at`; `false` when there is no room for another user.
fn keep_at(inner: &mut Inner, openid: &str, text: String, at: Instant) -> bool {
    let now = Instant::now();
    if !inner.mailbox.contains_key(openid) && inner.mailbox.len() >= MAX_USERS {
        inner.mailbox.retain(|_, v| {
            v.retain(|(at, _)| now.duration_since(*at) < KEEP);
            !v.is_empty()
        });
        if inner.mailbox.len() >= MAX_USERS {
            log::warn!(
                "{openid}: {MAX_USERS} users already have late results; this one is dropped"
            );
            return false;
        }
    }
    let box_ = inner.mailbox.entry(openid.to_string()).or_default();
    if box_.len() >= PER_USER {
        box_.remove(0);
    }
    box_.push((at, text));
    inner.changes += 1;
    true
}

fn attach_locked(inner: &mut Inner, openid: &str, reply: Reply) -> Reply {
    let Reply::Text(answer) = reply else {
        return reply;
    };
    let Some(results) = inner.mailbox.remove(openid) else {
        return Reply::Text(answer);
    };
    inner.changes += 1;
    let now = Instant::now();
    let results: Vec<String> = results
        .into_iter()
        .filter(|(at, _)| now.duration_since(*at) < KEEP)
        .map(|(_, t)| t)
        .collect();
    if results.is_empty() {
        return Reply::Text(answer);
    }
    // The late results get what the new answer leaves of the 2048 bytes, but never less than a
    // quarter of them, so that they always show: an answer of over ~1.5 KB then loses its end to
    // the reply's own cut (with its mark) rather than the late results being cut to nothing.
    let overhead = (LATE_PREFIX.len() + 2) * results.len();
    let budget = TEXT_LIMIT
        .saturating_sub(answer.len() + overhead)
        .max(TEXT_LIMIT / 4)
        / results.len();
    let mut text = String::new();
    for r in &results {
        text.push_str(LATE_PREFIX);
        text.push_str(&truncate_text(r, budget));
        text.push_str("\n\n");
    }
    text.push_str(&answer);
    Reply::Text(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::CUT_MARK;
    use std::sync::Arc;

    #[test]
    fn a_late_result_is_kept_no_longer_than_a_reply_can_show() {
        let p = Pending::default();
        assert_eq!(p.give_up::<()>("k", || None), None);
        p.finish("k", "oU", Reply::Text("数".repeat(400_000)), |_| {});
        let late = p.late_results();
        assert_eq!(late.len(), 1);
        assert!(
            late[0].2.len() <= TEXT_LIMIT,
            "{} bytes kept",
            late[0].2.len()
        );
        assert!(late[0].2.ends_with(CUT_MARK));
        let restored = Pending::default();
        assert!(restored.restore_late("oV", Duration::ZERO, "x".repeat(100_000)));
        assert!(restored.late_results()[0].2.len() <= TEXT_LIMIT);
    }

    #[test]
    fn an_answer_cut_short_leaves_the_late_results_waiting() {
        let p = Pending::default();
        assert_eq!(p.give_up::<()>("k", || None), None);
        p.finish("k", "oU", Reply::Text("RESULT".into()), |_| {});
        let mut got = None;
        p.finish_as("k2", "oU", Reply::Text("stopped".into()), false, |r| {
            got = Some(r)
        });
        assert_eq!(got, Some(Reply::Text("stopped".into())));
        assert_eq!(p.waiting("oU"), 1, "still waiting");
        p.finish_as("k3", "oU", Reply::Text("done".into()), true, |r| {
            got = Some(r)
        });
        assert_eq!(got, Some(Reply::Text("上次的结果：RESULT\n\ndone".into())));
        assert_eq!(p.waiting("oU"), 0);
    }

    #[test]
    fn keeping_and_handing_out_late_results_are_changes_and_nothing_else_is() {
        let p = Pending::default();
        assert_eq!(p.changes(), 0);
        // A marked orphan is not saved, so marking is no change; nor is a finish without one.
        assert_eq!(p.give_up::<()>("k", || None), None);
        p.finish("other", "oU", Reply::Text("on time".into()), |_| {});
        p.attach("oU", Reply::Text("x".into()));
        assert_eq!(p.changes(), 0);
        p.finish("k", "oU", Reply::Text("RESULT".into()), |_| {});
        assert_eq!(p.changes(), 1, "kept");
        p.attach("oU", Reply::Text("new".into()));
        assert_eq!(p.changes(), 2, "handed out");
        p.attach("oU", Reply::Text("new".into()));
        assert!(p.restore_late("oV", Duration::from_secs(1), "r".into()));
        assert_eq!(p.changes(), 3, "restored");
    }

    #[test]
    fn orphaned_result_is_attached_to_the_next_text_only() {
        let p = Pending::default();
        assert_eq!(p.give_up::<()>("k", || None), None);
        let mut recorded = None;
        p.finish("k", "oU", Reply::Text("RESULT".into()), |r| {
            recorded = Some(r)
        });
        assert_eq!(recorded, Some(Reply::Text("RESULT".into())));
        assert_eq!(p.waiting("oU"), 1);
        let img = Reply::Image {
            media_id: "m".into(),
        };
        assert_eq!(p.attach("oU", img.clone()), img);
        assert_eq!(
            p.attach("oOther", Reply::Text("x".into())),
            Reply::Text("x".into())
        );
        assert_eq!(
            p.attach("oU", Reply::Text("new".into())),
            Reply::Text("上次的结果：RESULT\n\nnew".into())
        );
        assert_eq!(p.waiting("oU"), 0);
        assert_eq!(
            p.attach("oU", Reply::Text("new".into())),
            Reply::Text("new".into())
        );
    }

    #[test]
    fn a_finished_answer_is_taken_instead_of_orphaning() {
        let p = Pending::default();
        assert_eq!(p.give_up("k", || Some(5)), Some(5));
        let mut got = None;
        p.finish("k", "oU", Reply::Text("r".into()), |r| got = Some(r));
        assert_eq!(got, Some(Reply::Text("r".into())));
        assert_eq!(p.waiting("oU"), 0, "not orphaned, nothing kept");
    }

    #[test]
    fn long_late_results_leave_room_for_the_answer() {
        let p = Pending::default();
        p.give_up::<()>("k", || None);
        p.finish("k", "oU", Reply::Text("数".repeat(3000)), |_| {});
        let Reply::Text(t) = p.attach("oU", Reply::Text("THE ANSWER".into())) else {
            panic!()
        };
        assert!(t.len() <= TEXT_LIMIT, "{}", t.len());
        assert!(t.ends_with("THE ANSWER"));
    }

    #[test]
    fn give_up_and_finish_race_delivers_exactly_once() {
        for _ in 0..200 {
            let p = Arc::new(Pending::default());
            let done = Arc::new(Mutex::new(None::<Reply>));
            let (p2, d2) = (Arc::clone(&p), Arc::clone(&done));
            let t = std::thread::spawn(move || {
                p2.finish("k", "oU", Reply::Text("r".into()), |r| {
                    *d2.lock().unwrap() = Some(r)
                })
            });
            let took = p.give_up("k", || done.lock().unwrap().clone());
            t.join().unwrap();
            // Either this try answered with the result, or the result waits for the next message.
            assert_eq!(took.is_some() as usize + p.waiting("oU"), 1);
        }
    }

    /// Orphans message `key` of `openid` and finishes it with `text`: one late result kept.
    fn late(p: &Pending, key: &str, openid: &str, text: &str) {
        p.give_up::<()>(key, || None);
        p.finish(key, openid, Reply::Text(text.into()), |_| {});
    }

    #[test]
    fn late_results_are_bounded_per_user_and_in_users() {
        let p = Pending::default();
        for i in 0..PER_USER + 2 {
            late(&p, &format!("k{i}"), "oU", &format!("r{i}"));
        }
        assert_eq!(p.waiting("oU"), PER_USER);
        let Reply::Text(t) = p.attach("oU", Reply::Text("now".into())) else {
            panic!()
        };
        // The oldest two went; the newest PER_USER came, oldest first.
        assert!(!t.contains("r0") && !t.contains("r1"), "{t}");
        assert!(t.starts_with("上次的结果：r2"), "{t}");
        assert!(t.contains(&format!("r{}", PER_USER + 1)), "{t}");

        for u in 0..MAX_USERS {
            late(&p, &format!("u{u}"), &format!("o{u}"), "r");
        }
        late(&p, "one-too-many", "oNew", "r");
        assert_eq!(
            p.waiting("oNew"),
            0,
            "the table is full: dropped, not grown"
        );
        // A user already in the table still gets theirs kept.
        late(&p, "again", "o0", "r2");
        assert_eq!(p.waiting("o0"), 2);
    }

    #[test]
    fn late_results_share_exactly_what_the_answer_leaves_of_2048_bytes() {
        // Two results: each gets (2048 - 10 - 2 * (18 + 2)) / 2 = 999 bytes, and the whole
        // text is exactly 2048 bytes (LATE_PREFIX is 18 bytes, each result ends in "\n\n").
        let p = Pending::default();
        late(&p, "k1", "oU", &"a".repeat(3000));
        late(&p, "k2", "oU", &"b".repeat(3000));
        let Reply::Text(t) = p.attach("oU", Reply::Text("THE ANSWER".into())) else {
            panic!()
        };
        let cut = |c: &str| format!("{}{}", c.repeat(999 - CUT_MARK.len()), CUT_MARK);
        assert_eq!(
            t,
            format!(
                "上次的结果：{}\n\n上次的结果：{}\n\nTHE ANSWER",
                cut("a"),
                cut("b")
            )
        );
        assert_eq!(t.len(), 2048);

        // A long answer leaves less than a quarter: the result still gets 2048 / 4 = 512 bytes.
        late(&p, "k3", "oU", &"b".repeat(3000));
        let answer = "c".repeat(1900);
        let Reply::Text(t) = p.attach("oU", Reply::Text(answer.clone())) else {
            panic!()
        };
        let result = format!("{}{}", "b".repeat(512 - CUT_MARK.len()), CUT_MARK);
        assert_eq!(t, format!("上次的结果：{result}\n\n{answer}"));
    }

    #[test]
    fn an_orphan_mark_outlives_the_next_give_up() {
        let p = Pending::default();
        assert_eq!(p.give_up::<()>("k1", || None), None);
        assert_eq!(p.give_up::<()>("k2", || None), None);
        p.finish("k1", "oU", Reply::Text("one".into()), |_| {});
        p.finish("k2", "oU", Reply::Text("two".into()), |_| {});
        assert_eq!(p.waiting("oU"), 2, "both messages were orphaned");
    }

    #[test]
    fn a_blank_late_result_is_not_kept() {
        let p = Pending::default();
        let mut recorded = None;
        p.give_up::<()>("k", || None);
        p.finish("k", "oU", Reply::Text(" \n ".into()), |r| {
            recorded = Some(r)
        });
        assert_eq!(recorded, Some(Reply::Text(" \n ".into())));
        assert_eq!(p.waiting("oU"), 0);
        assert_eq!(
            p.attach("oU", Reply::Text("new".into())),
            Reply::Text("new".into())
        );
    }

    #[test]
    fn late_results_wait_a_day() {
        assert_eq!(KEEP, Duration::from_secs(86_400));
    }

    #[test]
    fn late_results_are_handed_to_a_new_table_in_order() {
        let old = Pending::default();
        for (n, key) in ["k1", "k2"].iter().enumerate() {
            old.give_up::<()>(key, || None);
            old.finish(key, "oU", Reply::Text(format!("R{n}")), |_| {});
        }
        old.give_up::<()>("k3", || None);
        old.finish("k3", "oV", Reply::Text("V".into()), |_| {});
        // An orphan whose command never finished is not handed on.
        old.give_up::<()>("k4", || None);
        let mut saved = old.late_results();
        saved.sort_by(|a, b| a.0.cmp(&b.0));
        let texts: Vec<(&str, &str)> = saved
            .iter()
            .map(|(o, _, t)| (o.as_str(), t.as_str()))
            .collect();
        assert_eq!(texts, [("oU", "R0"), ("oU", "R1"), ("oV", "V")]);

        let new = Pending::default();
        for (openid, age, text) in saved {
            assert!(new.restore_late(&openid, age, text));
        }
        assert!(!new.restore_late("oW", KEEP, "too old".into()));
        assert_eq!(new.waiting("oW"), 0);
        assert_eq!(
            new.attach("oU", Reply::Text("new".into())),
            Reply::Text("上次的结果：R0\n\n上次的结果：R1\n\nnew".into())
        );
        let mut finished = None;
        new.finish("k4", "oV", Reply::Text("x".into()), |r| finished = Some(r));
        assert_eq!(
            finished,
            Some(Reply::Text("上次的结果：V\n\nx".into())),
            "k4 is no orphan in the new table: its answer takes V along"
        );
    }
}
