//! What one process hands to the next, so that a restart (a new binary, `systemctl restart`, a
//! crash and systemd's or Baota's restart) loses nothing WeChat or the user still expects:
//!
//! - the **answered messages** of the last 30 s: a retry of one of them that reaches the new
//!   process gets the same bytes, and its command does not run twice;
//! - the **signed URLs** of the replay ledger (fingerprints only): a URL read from a log before
//!   the restart still cannot carry a forged message;
//! - the **late results** of slow commands that users have not yet picked up (kept 24 hours).
//!
//! `wxmp serve` writes them to [`FILE_NAME`] in the log folder (the one folder it is sure to be
//! allowed to write) when it stops on SIGTERM or SIGINT, or exits 70, after the requests in
//! flight are answered; and, while it runs, once a second when something was answered,
//! recorded or kept since the last time (a **checkpoint**), so that a process that is killed
//! (SIGKILL, a crash, the out-of-memory killer) loses at most its last second. The next start
//! (once it has bound its address) reads the file and deletes it, and its first checkpoint
//! writes what it took right back. The file is TOML, readable by its owner only (mode 0600): it
//! holds answers and late results, which are users' data, but never the token or a key.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The file's name in the log folder.
pub const FILE_NAME: &str = "wxmp.state";

/// The format written by this version; a file of another is ignored (and deleted).
pub const VERSION: u32 = 1;

/// A file larger than this is not read: wxmp writes at most ~9 MiB (1,024 users' late results of
/// up to 2 KiB each, 4 each, and 512 KiB of answers).
pub const MAX_BYTES: u64 = 32 << 20;

/// A file of more TOML tokens than this is not parsed: a full state wxmp writes has ~143,000,
/// and parsing costs ~150 bytes a value, so a file of tiny values (`urls = ["","",…]`) would
/// otherwise cost ~50 times its size.
pub const MAX_TOKENS: usize = 512 << 10;

/// Everything handed from one process to the next.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    /// [`VERSION`].
    pub version: u32,
    /// When it was written, unix milliseconds: ages are counted from it.
    pub saved_at_ms: u64,
    /// Written by a running process (a checkpoint), not at a stop: if the next start finds it,
    /// the process before it did not stop cleanly. Left out of the file when false, so a stop's
    /// file reads as it did before checkpoints.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checkpoint: bool,
    /// Answered messages, oldest first.
    #[serde(default)]
    pub answers: Vec<SavedAnswer>,
    /// The replay ledger's URLs, oldest first, as `"URL:MESSAGE:AGE"`: two 16-hex-digit
    /// fingerprints (TOML's integers stop at 2^63) and the milliseconds since the URL's first
    /// use when this was saved (a file of the day before ages had `"URL:MESSAGE"`: first used
    /// at the save, as far as the next start can tell).
    #[serde(default)]
    pub urls: Vec<String>,
    /// Late results waiting for their users, each user's oldest first.
    #[serde(default)]
    pub late: Vec<SavedLate>,
}

/// An answered message, for its retries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedAnswer {
    /// [`crate::message::Message::dedup_key`]. Shared with the retry table, not copied: a
    /// checkpoint of a full table must not double its memory.
    pub key: Arc<str>,
    /// How long before `saved_at_ms` its first try came, in milliseconds.
    pub age_ms: u64,
    /// Tries seen so far, the first included.
    pub tries: u32,
    /// The reply type, for the log (`text`, `news`, …, `success`).
    pub kind: String,
    /// The exact bytes answered (shared with the retry table).
    pub body: Arc<str>,
}

/// A slow command's result waiting for the user's next message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedLate {
    /// The user.
    pub openid: String,
    /// How long before `saved_at_ms` it was kept, in milliseconds.
    pub age_ms: u64,
    /// The result's text.
    pub text: String,
}

/// Where the state of a server logging to `log_dir` is kept.
pub fn path_in(log_dir: &Path) -> PathBuf {
    log_dir.join(FILE_NAME)
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Saved {
    /// An empty state stamped now.
    pub fn now() -> Saved {
        Saved {
            version: VERSION,
            saved_at_ms: now_ms(),
            ..Saved::default()
        }
    }

    /// How long ago, at `now_ms`, something that was `age_ms` old when this was saved happened.
    /// A clock that went back since counts as no time passed.
    pub fn age_at(&self, age_ms: u64, now_ms: u64) -> Duration {
        Duration::from_millis(age_ms.saturating_add(now_ms.saturating_sub(self.saved_at_ms)))
    }

    /// Whether nothing is in it.
    pub fn is_empty(&self) -> bool {
        self.answers.is_empty() && self.urls.is_empty() && self.late.is_empty()
    }

    /// A ledger entry as written in [`Saved::urls`].
    pub fn url_entry(url: u64, message: u64, age_ms: u64) -> String {
        format!("{url:016x}:{message:016x}:{age_ms}")
    }

    /// The ledger entries of [`Saved::urls`] as (URL, message, milliseconds since the URL's
    /// first use when saved); malformed ones are skipped and counted.
    pub fn url_entries(&self) -> (Vec<(u64, u64, u64)>, usize) {
        let hex = |s: &str| {
            (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u64::from_str_radix(s, 16).ok())
                .flatten()
        };
        let mut bad = 0;
        let entries = self
            .urls
            .iter()
            .filter_map(|e| {
                let mut parts = e.split(':');
                let parsed = (|| {
                    let (url, message) = (hex(parts.next()?)?, hex(parts.next()?)?);
                    let age_ms = match parts.next() {
                        None => 0,
                        Some(age) if !age.is_empty() && age.bytes().all(|b| b.is_ascii_digit()) => {
                            age.parse().ok()?
                        }
                        Some(_) => return None,
                    };
                    parts.next().is_none().then_some((url, message, age_ms))
                })();
                if parsed.is_none() {
                    bad += 1;
                }
                parsed
            })
            .collect();
        (entries, bad)
    }
}

/// The top of the file: every key that is not a table.
#[derive(Serialize)]
struct Header<'a> {
    version: u32,
    saved_at_ms: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    checkpoint: bool,
    urls: &'a [String],
}

/// Writes `saved` as TOML to `out` an entry at a time, so that a full retry table is never
/// encoded into one string beside itself (a checkpoint a second must not raise the server's
/// peak memory): the top-level keys, then each `[[answers]]` and `[[late]]` table. It reads
/// back as [`Saved`].
fn encode(saved: &Saved, out: &mut impl Write) -> Result<(), String> {
    let bad = |e: toml::ser::Error| format!("cannot encode the state: {e}");
    let header = Header {
        version: saved.version,
        saved_at_ms: saved.saved_at_ms,
        checkpoint: saved.checkpoint,
        urls: &saved.urls,
    };
    let io = |e: io::Error| e.to_string();
    out.write_all(toml::to_string(&header).map_err(bad)?.as_bytes())
        .map_err(io)?;
    for answer in &saved.answers {
        let table = toml::to_string(answer).map_err(bad)?;
        write!(out, "\n[[answers]]\n{table}").map_err(io)?;
    }
    for late in &saved.late {
        let table = toml::to_string(late).map_err(bad)?;
        write!(out, "\n[[late]]\n{table}").map_err(io)?;
    }
    Ok(())
}

/// Writes `saved` to `path`, replacing any file there: written to a temporary file beside it
/// with mode 0600 and renamed over it, so the next start reads all of it or nothing.
pub fn save(path: &Path, saved: &Saved) -> Result<(), String> {
    let tmp = path.with_extension("state.tmp");
    let write = || -> io::Result<()> {
        // Never reuse a file already there: its mode, owner or symlink would be kept. What
        // cannot be removed (a folder in the way) makes `create_new` below fail.
        let _ = fs::remove_file(&tmp);
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = io::BufWriter::new(options.open(&tmp)?);
        encode(saved, &mut file).map_err(io::Error::other)?;
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, path)?;
        // The rename itself survives a power cut only once the folder is synced. Best effort:
        // the state is in place either way, and some file systems refuse to sync a folder.
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Ok(dir) = fs::File::open(dir.unwrap_or(Path::new("."))) {
            let _ = dir.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// Keeps `saved` at `path` for the next start: [`save`]s it, or deletes the file when there is
/// nothing in it (a checkpoint may have left one that is no longer true).
pub fn store(path: &Path, saved: &Saved) -> Result<(), String> {
    if !saved.is_empty() {
        return save(path, saved);
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(format!("cannot delete {}: {e}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Reads the state at `path` and deletes the file: `Ok(None)` when there is none, `Err` (the
/// file deleted all the same, as it can never be read) when it is not a state this version
/// wrote.
pub fn take(path: &Path) -> Result<Option<Saved>, String> {
    // A crash during a write leaves the temporary file: never read, but it holds users' data.
    let _ = fs::remove_file(path.with_extension("state.tmp"));
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // A FIFO put there must not block the start (open(2) waits for a writer).
        options.custom_flags(libc::O_NONBLOCK);
    }
    let mut file = match options.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(format!(
            "cannot read {}: not a regular file",
            path.display()
        ));
    }
    let mut text = String::new();
    let read = Read::by_ref(&mut file)
        .take(MAX_BYTES + 1)
        .read_to_string(&mut text);
    drop(file);
    let removed = fs::remove_file(path);
    read.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    removed.map_err(|e| {
        format!(
            "cannot delete {} after reading it: {e}; not using it, as a later start would \
             use it again",
            path.display()
        )
    })?;
    if text.len() as u64 > MAX_BYTES {
        return Err(format!(
            "{} is over {} MiB, more than wxmp writes: ignored",
            path.display(),
            MAX_BYTES >> 20
        ));
    }
    if toml_parser::Source::new(&text)
        .lex()
        .nth(MAX_TOKENS)
        .is_some()
    {
        return Err(format!(
            "{} has more than {MAX_TOKENS} TOML tokens, more than wxmp writes: ignored",
            path.display()
        ));
    }
    let saved: Saved = toml::from_str(&text).map_err(|e| {
        format!(
            "{} is not a state wxmp wrote ({}): ignored",
            path.display(),
            e.message()
        )
    })?;
    if saved.version != VERSION {
        return Err(format!(
            "{} has version {}, this wxmp reads {VERSION}: ignored",
            path.display(),
            saved.version
        ));
    }
    Ok(Some(saved))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wxmp-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn sample() -> Saved {
        Saved {
            answers: vec![SavedAnswer {
                key: "id|oUser|42".into(),
                age_ms: 1_500,
                tries: 2,
                kind: "text".into(),
                // Everything TOML must escape, and text that ends a CDATA section.
                body: "<xml><Content><![CDATA[a \"quoted\" \\ line\n]]]]><![CDATA[>\t数据]]>\
                       </Content></xml>"
                    .into(),
            }],
            urls: vec![
                Saved::url_entry(u64::MAX, 1, 12_345),
                Saved::url_entry(0x0123_4567_89ab_cdef, 0, u64::MAX),
            ],
            late: vec![SavedLate {
                openid: "oUser".into(),
                age_ms: 60_000,
                text: "上次\u{1}的结果".into(),
            }],
            ..Saved::now()
        }
    }

    #[test]
    fn a_saved_state_is_taken_back_whole_and_the_file_is_gone() {
        let dir = temp_dir("roundtrip");
        let path = path_in(&dir);
        let saved = sample();
        save(&path, &saved).unwrap();
        assert!(!dir.join("wxmp.state.tmp").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "readable by its owner only");
        }
        assert_eq!(take(&path).unwrap(), Some(saved.clone()));
        assert!(!path.exists(), "taken once");
        assert_eq!(take(&path).unwrap(), None);
        assert_eq!(
            saved.url_entries(),
            (
                vec![(u64::MAX, 1, 12_345), (0x0123_4567_89ab_cdef, 0, u64::MAX)],
                0
            )
        );
    }

    #[test]
    fn a_file_wxmp_did_not_write_is_refused_and_deleted() {
        let dir = temp_dir("bad");
        let path = path_in(&dir);
        for (text, says) in [
            ("not toml at all [", "is not a state wxmp wrote"),
            ("version = 1\nsaved_at_ms = 5\nextra = 1\n", "extra"),
            ("version = 99\nsaved_at_ms = 5\n", "has version 99"),
            ("saved_at_ms = 5\n", "version"),
        ] {
            fs::write(&path, text).unwrap();
            let err = take(&path).unwrap_err();
            assert!(err.contains(says), "{text:?}: {err}");
            assert!(err.contains("wxmp.state"), "{err}");
            assert!(!path.exists(), "{text:?} deleted");
        }
        fs::write(&path, [0xff, 0xfe, b'x']).unwrap();
        assert!(take(&path).unwrap_err().contains("cannot read"));
        assert!(!path.exists());
    }

    #[test]
    fn a_state_that_cannot_be_opened_is_an_error_not_an_absence() {
        // The log folder's path names a file: open fails with ENOTDIR, not ENOENT.
        let dir = temp_dir("notdir");
        let file = dir.join("log");
        fs::write(&file, "a file").unwrap();
        let err = take(&path_in(&file)).unwrap_err();
        assert!(
            err.contains("cannot read") && err.contains("wxmp.state"),
            "{err}"
        );
        // A folder where the file should be: opened, but not read.
        let dir = temp_dir("isdir");
        fs::create_dir_all(path_in(&dir)).unwrap();
        assert!(take(&path_in(&dir)).unwrap_err().contains("cannot read"));
    }

    #[test]
    fn a_state_is_empty_only_with_nothing_in_it() {
        let empty = Saved::now();
        assert!(empty.is_empty());
        let full = sample();
        for only in 0..3 {
            let mut one = empty.clone();
            match only {
                0 => one.answers = full.answers.clone(),
                1 => one.urls = full.urls.clone(),
                _ => one.late = full.late.clone(),
            }
            assert!(!one.is_empty(), "{one:?}");
        }
    }

    /// A state whose `urls` list repeats `entry` until the file is over `over` bytes.
    fn urls_file(entry: &str, over: usize) -> String {
        let mut text = String::from("version = 1\nsaved_at_ms = 5\nurls = [\n");
        while text.len() <= over {
            text.push_str(entry);
        }
        text.push_str("]\n");
        text
    }

    /// Writes `text` at `path` and checks that `take` refuses it saying `says`, and deletes it.
    fn assert_refused(path: &Path, text: &str, says: &str) {
        fs::write(path, text).unwrap();
        let err = take(path).unwrap_err();
        assert!(err.contains(says), "{err}");
        assert!(!path.exists());
    }

    #[test]
    fn an_oversized_file_is_not_parsed() {
        let dir = temp_dir("big");
        let path = path_in(&dir);
        let max = usize::try_from(MAX_BYTES).unwrap();
        let entry = "\"0000000000000000:0000000000000000\",\n";
        assert_refused(&path, &urls_file(entry, max), "over 32 MiB");
        // Exactly the limit is read.
        let mut text = toml::to_string(&Saved::now()).unwrap();
        text.push('#');
        let pad = usize::try_from(MAX_BYTES).unwrap() - text.len() - 1;
        text.push_str(&"x".repeat(pad));
        text.push('\n');
        assert_eq!(text.len() as u64, MAX_BYTES);
        fs::write(&path, &text).unwrap();
        assert!(take(&path).unwrap().is_some_and(|s| s.is_empty()));
    }

    #[test]
    fn a_file_of_tiny_values_is_refused_before_it_is_parsed() {
        // Parsing costs ~150 bytes a value: 8 MiB of `"",` would take ~450 MiB (a 32 MiB file
        // 1.7 GB). Counted as tokens first, it is refused without building anything.
        let dir = temp_dir("tiny-values");
        let text = urls_file("\"\",", 8 << 20);
        assert_refused(&path_in(&dir), &text, "TOML tokens, more than wxmp writes");
    }

    #[test]
    fn the_fullest_state_wxmp_writes_is_taken_back() {
        // The tables at their limits: 1,024 answers, 1,024 URLs, 4 late results for each of
        // 1,024 users, with many lines each (every line and key is a token).
        let body: Arc<str> = Arc::from(format!("<xml>{}\nline\nline</xml>", "数".repeat(150)));
        let saved = Saved {
            answers: (0..1024)
                .map(|i| SavedAnswer {
                    key: Arc::from(format!("id|o{i:027}|{i}")),
                    age_ms: 1234,
                    tries: 2,
                    kind: "text".into(),
                    body: Arc::clone(&body),
                })
                .collect(),
            urls: (0..1024).map(|i| Saved::url_entry(i, i, 5000)).collect(),
            late: (0..4096)
                .map(|i| SavedLate {
                    openid: format!("o{:027}", i / 4),
                    age_ms: 1234,
                    text: "结果\n".repeat(300),
                })
                .collect(),
            ..Saved::now()
        };
        let dir = temp_dir("fullest");
        let path = path_in(&dir);
        save(&path, &saved).unwrap();
        assert_eq!(take(&path).unwrap(), Some(saved));
    }

    #[test]
    fn a_leftover_temporary_file_is_neither_reused_nor_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("leftover-tmp");
        let path = path_in(&dir);
        let tmp = path.with_extension("state.tmp");
        // World-readable, or a link to another file: a new file is made all the same.
        fs::write(&tmp, "old").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o666)).unwrap();
        save(&path, &sample()).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let victim = dir.join("victim");
        fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        save(&path, &sample()).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        // A crash between writing and renaming leaves it; the next start deletes it.
        fs::write(&tmp, "answers").unwrap();
        assert!(take(&path).unwrap().is_some());
        assert!(!tmp.exists());
    }

    #[test]
    fn a_checkpoint_says_so_and_a_stop_writes_the_file_it_wrote_before() {
        let dir = temp_dir("checkpoint");
        let path = path_in(&dir);
        let checkpoint = Saved {
            checkpoint: true,
            ..sample()
        };
        store(&path, &checkpoint).unwrap();
        assert!(fs::read_to_string(&path)
            .unwrap()
            .contains("checkpoint = true"));
        assert_eq!(take(&path).unwrap(), Some(checkpoint));
        // A stop's file has no such line: it reads as it did before checkpoints, also to an
        // older wxmp (which refuses fields it does not know).
        store(&path, &sample()).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("checkpoint"), "{text}");
        assert!(!take(&path).unwrap().unwrap().checkpoint);
    }

    #[test]
    fn storing_an_empty_state_deletes_the_file_a_checkpoint_left() {
        let dir = temp_dir("store-empty");
        let path = path_in(&dir);
        store(&path, &sample()).unwrap();
        assert!(path.exists());
        store(&path, &Saved::now()).unwrap();
        assert!(!path.exists());
        // Nothing there: nothing to do.
        store(&path, &Saved::now()).unwrap();
        // A file that cannot be deleted is an error.
        let not_a_file = dir.join("a-folder");
        fs::create_dir_all(not_a_file.join("inside")).unwrap();
        let err = store(&not_a_file, &Saved::now()).unwrap_err();
        assert!(err.starts_with("cannot delete"), "{err}");
    }

    #[test]
    fn malformed_ledger_entries_are_skipped_and_counted() {
        let saved = Saved {
            urls: vec![
                "0000000000000001:0000000000000002:1500".into(),
                // The day before ages: first used at the save.
                "0000000000000003:0000000000000004".into(),
                "1:2".into(),
                "000000000000000g:0000000000000002".into(),
                "00000000000000010000000000000002".into(),
                "+000000000000001:0000000000000002".into(),
                "0000000000000001:0000000000000002:".into(),
                "0000000000000001:0000000000000002:-1".into(),
                "0000000000000001:0000000000000002:+1".into(),
                "0000000000000001:0000000000000002:1:2".into(),
                "0000000000000001:0000000000000002:99999999999999999999".into(),
            ],
            ..Saved::now()
        };
        assert_eq!(saved.url_entries(), (vec![(1, 2, 1500), (3, 4, 0)], 9));
    }

    #[test]
    fn ages_count_the_time_since_the_save() {
        let saved = Saved {
            saved_at_ms: 10_000,
            ..Saved::default()
        };
        assert_eq!(saved.age_at(500, 12_000), Duration::from_millis(2_500));
        // A clock turned back since the save: no time passed.
        assert_eq!(saved.age_at(500, 9_000), Duration::from_millis(500));
        assert_eq!(
            saved.age_at(u64::MAX, 12_000),
            Duration::from_millis(u64::MAX)
        );
    }

    #[test]
    fn an_unwritable_folder_is_an_error_naming_the_file() {
        let dir = temp_dir("unwritable").join("missing");
        let err = save(&path_in(&dir), &sample()).unwrap_err();
        assert!(
            err.contains("cannot write") && err.contains("wxmp.state"),
            "{err}"
        );
    }
}
