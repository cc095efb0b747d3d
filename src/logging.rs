//! Logging set-up: stderr plus a size-rotated, age-pruned log file.
//!
//! The log file is `<dir>/wxmp.log`. Before a record is written, [`RotatingFile`] checks whether
//! the record would make the file pass `max_size`; if so the file is renamed to
//! `wxmp.log.YYYYMMDD-HHMMSS.N` (UTC time of the rotation, `N` counting rotations within that
//! second) and a fresh `wxmp.log` is started. A record is therefore always written whole, with
//! one `write` call, into exactly one file; a record larger than `max_size` goes alone into a
//! fresh file. Rotated files whose modification time is more than `keep_days` days old are
//! deleted when the file is opened, after every rotation, and once an hour in between (a quiet
//! server may not rotate a 500 MB file for months).
//!
//! [`init`] installs the global logger. It formats each record completely (with simplelog's
//! formatting) and hands whole records to the [`RotatingFile`], so even a message that spans
//! several lines is never split across two files; the same bytes go to stderr. Records are
//! written by a writer thread: the first record logged while it sleeps wakes it, it lets more
//! gather for a millisecond, then writes them all with one `write` to the file (tens of messages
//! per system call under load; at most 256 KiB waiting before loggers are held back). A line
//! therefore reaches the file about a millisecond after it is logged; [`flush`] waits for it.
//! stderr gets the same bytes from a thread of its own ([`Echo`]), so a stderr nobody reads (a
//! full pipe, a paused terminal, a stalled journald) never holds the file or the server back:
//! what does not fit in its 1 MiB queue is dropped from stderr only, and counted there once it
//! moves again.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};
use simplelog::{CombinedLogger, Config, ConfigBuilder, LevelPadding, SharedLogger, WriteLogger};

/// Name of the active log file inside the log directory.
const FILE_NAME: &str = "wxmp.log";

/// How often old rotated files are looked for besides at start and at a rotation.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Parses "500MB", "10KB", "1GB", "2048", "2048B" (case-insensitive, optional space) into bytes; Err(String) naming the bad value otherwise; 0 rejected.
///
/// Units are binary: 1 KB = 1024 bytes, 1 MB = 1024 KB, 1 GB = 1024 MB. Only whole numbers are
/// accepted; values that overflow a `u64` are rejected.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = |why: &str| {
        format!(
            "invalid size '{s}': {why}; expected a whole number of bytes with an optional unit \
             B, KB, MB or GB, e.g. \"500MB\""
        )
    };
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    if number.is_empty() {
        return Err(bad("no number"));
    }
    let multiplier: u64 = match unit.trim_start().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return Err(bad("unknown unit")),
    };
    let n: u64 = number.parse().map_err(|_| bad("number too large"))?;
    let bytes = n
        .checked_mul(multiplier)
        .ok_or_else(|| bad("number too large"))?;
    if bytes == 0 {
        return Err(bad("size must be greater than zero"));
    }
    Ok(bytes)
}

/// Settings for the log (decoupled from the config module).
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Directory holding `wxmp.log` and its rotated files; created if missing.
    pub dir: PathBuf,
    /// Size in bytes the log file may reach before it is rotated.
    pub max_size: u64,
    /// Rotated files last modified more than this many days ago are deleted (at start, at each
    /// rotation and hourly); 0 keeps none of them past the next look.
    pub keep_days: u64,
    /// Most verbose level that is logged (to both stderr and the file).
    pub level: LevelFilter,
}

impl Default for LogSettings {
    /// `dir = "log"`, `max_size = 500MB`, `keep_days = 10`, `level = info`.
    fn default() -> Self {
        LogSettings {
            dir: PathBuf::from("log"),
            max_size: 500 << 20,
            keep_days: 10,
            level: LevelFilter::Info,
        }
    }
}

/// A Write that appends to dir/wxmp.log and rotates by size, pruning old files.
///
/// Bytes are buffered until a `'\n'`; each `write` call that contains a newline writes everything
/// up to and including its last newline as one unit, so rotation only ever happens between
/// lines, and a record written with a single `write`/`write_all` call is never split. (simplelog's
/// `WriteLogger` writes a record in several pieces, the last ending in `'\n'`, so each of its
/// single-line records is one unit too.) The size check happens before a unit is written: if the
/// file is not empty and the unit would make it pass `max_size`, the file is rotated first. A
/// unit larger than `max_size` therefore lands alone in a fresh file.
///
/// Use it behind a `Mutex` (as simplelog's `WriteLogger` does) to share it between threads.
/// [`Write::flush`] (and dropping the value) writes out an unfinished last line as well.
///
/// If a rotation fails (for example the directory became read-only) a warning goes to stderr and
/// writing continues in the current file, so no line is lost; rotation is tried again before the
/// next unit. A `wxmp.log` deleted from under it (or its folder) is not such a failure: the next
/// rotation opens a fresh one, or tries to before each unit until the folder is back.
#[derive(Debug)]
pub struct RotatingFile {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    /// Bytes in the file `file` refers to.
    size: u64,
    max_size: u64,
    keep: Duration,
    /// Bytes written since the last newline.
    pending: Vec<u8>,
    /// `file` was renamed away but no new `wxmp.log` could be opened yet.
    detached: bool,
    /// The file ends inside a record (a write failed part-way, a full disk): the next unit
    /// starts with a newline, so that no record is glued onto the torn one.
    torn: bool,
    /// Units written (each one `write` call when it succeeds whole): what batching saves.
    units: u64,
    /// A rotation problem was already reported on stderr (reset by the next success).
    warned: bool,
    /// Timestamp part of the last rotated name and its counter.
    last_stamp: String,
    last_seq: u64,
    /// When old files were last looked for, and how often to look ([`PRUNE_EVERY`]).
    pruned_at: Instant,
    prune_every: Duration,
}

impl RotatingFile {
    /// Opens (creating if needed) `dir/wxmp.log` for appending, taking its current size into
    /// account, and deletes rotated files older than `keep_days` days. `dir` is created if missing.
    /// Fails if `max_size` is 0 or the directory or file cannot be created or opened; a failure
    /// to prune is only reported on stderr.
    pub fn open(dir: &Path, max_size: u64, keep_days: u64) -> io::Result<Self> {
        if max_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "max_size must be greater than zero",
            ));
        }
        fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let (file, size) = open_append(&path)?;
        let mut rf = RotatingFile {
            dir: dir.to_path_buf(),
            path,
            file,
            size,
            max_size,
            keep: Duration::from_secs(keep_days.saturating_mul(86_400)),
            pending: Vec::new(),
            detached: false,
            torn: false,
            units: 0,
            warned: false,
            last_stamp: String::new(),
            last_seq: 0,
            pruned_at: Instant::now(),
            prune_every: PRUNE_EVERY,
        };
        // A file left torn by an earlier process (a full disk, then a crash).
        rf.torn = ends_mid_line(&rf.file, size);
        if let Err(e) = rf.prune_old() {
            let _ = writeln!(
                io::stderr(),
                "wxmp: cannot prune old log files in '{}': {e}",
                rf.dir.display()
            );
        }
        Ok(rf)
    }

    /// Deletes rotated files (`wxmp.log.YYYYMMDD-HHMMSS.N`) in the log directory whose
    /// modification time is more than `keep_days` days ago; returns how many were deleted.
    /// Other files are never touched. Every candidate is tried; the first error (if any) is
    /// returned after that.
    pub fn prune_old(&self) -> io::Result<usize> {
        let now = SystemTime::now();
        let mut removed = 0;
        let mut first_err = None;
        for entry in fs::read_dir(&self.dir)? {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            if !entry.file_name().to_str().is_some_and(is_rotated_name) {
                continue;
            }
            let mtime = match entry.metadata().and_then(|m| {
                if m.is_file() {
                    m.modified().map(Some)
                } else {
                    Ok(None)
                }
            }) {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            // A modification time in the future counts as fresh.
            let old = now.duration_since(mtime).is_ok_and(|age| age > self.keep);
            if !old {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    /// Writes one unit (whole lines), rotating first if it would make the file pass `max_size`.
    fn write_unit(&mut self, unit: &[u8]) -> io::Result<()> {
        let n = unit.len() as u64;
        if self.detached || (self.size > 0 && self.size.saturating_add(n) > self.max_size) {
            self.rotate();
        }
        if self.torn && self.size > 0 {
            self.write_counted(b"\n")?;
        }
        self.torn = false;
        self.units += 1;
        self.write_counted(unit)
    }

    /// Writes `bytes` whole, keeping `size` true and noting a write that stopped part-way.
    fn write_counted(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.file.write_all(bytes) {
            Ok(()) => {
                self.size += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Part of it may have been written: re-read the real size. Nothing written
                // leaves the file as torn (or whole) as it was.
                let before = self.size;
                if let Ok(m) = self.file.metadata() {
                    self.size = m.len();
                }
                if self.size > before {
                    self.torn = ends_mid_line(&self.file, self.size);
                }
                Err(e)
            }
        }
    }

    /// Renames the active file to a rotated name, opens a fresh one and prunes old files.
    /// On failure, warns (once until the next success) and leaves the current file in use.
    fn rotate(&mut self) {
        if !self.detached {
            let target = self.next_rotated_path();
            // Not found: the file was deleted (or its folder with it); there is nothing to keep,
            // so a fresh one is opened, or tried for at every unit until the folder is back.
            match fs::rename(&self.path, &target) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    warn_once(
                        &mut self.warned,
                        format_args!(
                            "cannot rotate '{}' to '{}': {e}; still writing to it",
                            self.path.display(),
                            target.display()
                        ),
                    );
                    return;
                }
                _ => self.detached = true,
            }
        }
        match open_append(&self.path) {
            Ok((file, size)) => {
                self.file = file;
                self.size = size;
                self.detached = false;
                self.warned = false;
            }
            Err(e) => {
                warn_once(
                    &mut self.warned,
                    format_args!(
                        "cannot open new log file '{}': {e}; still writing to the rotated file",
                        self.path.display()
                    ),
                );
                return;
            }
        }
        self.prune();
    }

    /// Prunes old files if [`PRUNE_EVERY`] has passed since they were last looked for (the
    /// writer thread calls it after each batch and when it has slept that long).
    pub fn prune_if_due(&mut self) {
        if self.pruned_at.elapsed() >= self.prune_every {
            self.prune();
        }
    }

    /// [`RotatingFile::prune_old`], a failure reported on stderr (once until the next success).
    fn prune(&mut self) {
        self.pruned_at = Instant::now();
        if let Err(e) = self.prune_old() {
            warn_once(
                &mut self.warned,
                format_args!(
                    "cannot prune old log files in '{}': {e}",
                    self.dir.display()
                ),
            );
        }
    }

    /// Returns an unused `wxmp.log.YYYYMMDD-HHMMSS.N` path for the current time.
    fn next_rotated_path(&mut self) -> PathBuf {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let stamp = utc_stamp(secs);
        if stamp != self.last_stamp {
            self.last_stamp = stamp;
            self.last_seq = 0;
        }
        loop {
            self.last_seq += 1;
            let p = self
                .dir
                .join(format!("{FILE_NAME}.{}.{}", self.last_stamp, self.last_seq));
            // symlink_metadata: a dangling symlink also occupies the name.
            if fs::symlink_metadata(&p).is_err() {
                return p;
            }
        }
    }

    /// Writes whole records, `bytes[..ends[0]]`, `bytes[ends[0]..ends[1]]`, ..., with as few
    /// `write` calls as rotation allows: consecutive records go out together while they fit in
    /// the current file, and a rotation only ever falls between two records (a record larger
    /// than `max_size` goes alone into a fresh file, as with [`Write::write`]). Every record is
    /// tried even if an earlier write fails; the first error is returned.
    pub fn write_records(&mut self, bytes: &[u8], ends: &[usize]) -> io::Result<()> {
        let mut first_err = self.write_pending().err();
        let (mut start, mut i) = (0, 0);
        while i < ends.len() {
            // The first record always goes (write_unit rotates first if it does not fit); then
            // as many more as fit in what is left of this file, or of the fresh one.
            let first = ends[i].saturating_sub(start) as u64;
            let rotates =
                self.detached || (self.size > 0 && self.size.saturating_add(first) > self.max_size);
            let limit = if rotates {
                self.max_size
            } else {
                self.max_size.saturating_sub(self.size)
            };
            let mut end = ends[i];
            i += 1;
            while i < ends.len() && (ends[i].saturating_sub(start)) as u64 <= limit {
                end = ends[i];
                i += 1;
            }
            let Some(unit) = bytes.get(start..end) else {
                break;
            };
            if let Err(e) = self.write_unit(unit) {
                first_err.get_or_insert(e);
            }
            start = end;
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Writes out a last line that has no newline yet.
    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let unit = std::mem::take(&mut self.pending);
        let res = self.write_unit(&unit);
        if res.is_err() {
            self.pending = unit;
        }
        res
    }
}

impl Write for RotatingFile {
    /// Accepts all of `buf`; whole lines are written at once, a trailing partial line is kept
    /// until its newline arrives. On error nothing of `buf` is taken.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') else {
            self.pending.extend_from_slice(buf);
            return Ok(buf.len());
        };
        let (lines, rest) = buf.split_at(last_nl + 1);
        if self.pending.is_empty() {
            self.write_unit(lines)?;
        } else {
            let before = self.pending.len();
            let mut unit = std::mem::take(&mut self.pending);
            unit.extend_from_slice(lines);
            let res = self.write_unit(&unit);
            unit.truncate(if res.is_ok() { 0 } else { before });
            self.pending = unit;
            res?;
        }
        self.pending.extend_from_slice(rest);
        Ok(buf.len())
    }

    /// Writes out any unfinished last line and flushes the file.
    fn flush(&mut self) -> io::Result<()> {
        self.write_pending()?;
        self.file.flush()
    }
}

impl Drop for RotatingFile {
    fn drop(&mut self) {
        let _ = self.write_pending();
    }
}

/// Reports a rotation problem on stderr unless `*warned`, then sets it. It cannot go through
/// `log`: this runs while the logger's lock is held, and logging from here would deadlock.
fn warn_once(warned: &mut bool, msg: std::fmt::Arguments<'_>) {
    if !*warned {
        // Not `eprintln!`, which panics when stderr is gone (a closed terminal): this runs on
        // the writer thread, whose death would silence the log for good.
        let _ = writeln!(io::stderr(), "wxmp: log rotation: {msg}");
        *warned = true;
    }
}

/// Whether `file`, `size` bytes long, ends inside a line (its last byte is not a newline).
fn ends_mid_line(file: &File, size: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let mut last = [0u8];
    size > 0 && file.read_at(&mut last, size - 1).is_ok_and(|n| n == 1) && last[0] != b'\n'
}

/// Opens `path` for appending, creating it, and returns it with its current length.
fn open_append(path: &Path) -> io::Result<(File, u64)> {
    // Readable too: a torn last record is found by reading the last byte (`ends_mid_line`).
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

/// Whether `name` looks like `wxmp.log.YYYYMMDD-HHMMSS.N` (the names this module rotates to).
fn is_rotated_name(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(FILE_NAME)
        .and_then(|r| r.strip_prefix('.'))
    else {
        return false;
    };
    let b = rest.as_bytes();
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    b.len() > 16
        && digits(&b[..8])
        && b[8] == b'-'
        && digits(&b[9..15])
        && b[15] == b'.'
        && digits(&b[16..])
}

/// Formats seconds since the Unix epoch as `YYYYMMDD-HHMMSS` in UTC.
fn utc_stamp(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Converts days since 1970-01-01 to a (year, month, day) date (proleptic Gregorian calendar;
/// H. Hinnant's `civil_from_days`, restricted to dates from 1970 on).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Locks `m`, carrying on if another thread panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A `Write` into a shared buffer: simplelog formats one record into it.
#[derive(Clone, Default)]
struct RecordBuf(Arc<Mutex<Vec<u8>>>);

impl Write for RecordBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes queued at most; past it, loggers wait for the writer.
const MAX_QUEUED_BYTES: usize = 256 << 10;

/// Bytes of batch buffer kept between batches (a burst's bigger buffer is given back).
const KEEP_BATCH_BYTES: usize = 16 << 10;

/// How long the writer thread lets records gather after the first one of a batch arrives.
/// Under load that makes one `write` per sink carry every line of the last millisecond (tens of
/// messages) instead of one or two; a quiet server's line reaches the file a millisecond late.
const GATHER: Duration = Duration::from_millis(1);

/// A batch this big is written at once, without waiting for [`GATHER`] to pass.
const GATHER_BYTES: usize = 64 << 10;

/// Records formatted but not yet written, and what the writer thread is doing.
#[derive(Default)]
struct Queue {
    /// Whole records, one after another.
    bytes: Vec<u8>,
    /// Where each record in `bytes` ends.
    ends: Vec<usize>,
    /// The writer waits on `queued` for a first record (so that only the logger that queues
    /// that record wakes it, with one system call, and the others do not).
    asleep: bool,
    /// Threads waiting on `written` (so that the writer signals only when someone listens).
    waiting: usize,
    /// The logger is gone: the writer writes what is queued and ends.
    closed: bool,
    /// The writer thread ended unexpectedly (a panic outside the sinks): records are dropped
    /// rather than queued for nobody, and `flush` does not wait.
    gone: bool,
    /// Records ever queued, and ever written (or lost to a panicking sink): `flush` waits for
    /// the records queued before it, not for an empty queue that busy loggers may never leave.
    queued_total: u64,
    written_total: u64,
}

/// What the loggers and the writer thread share.
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a record is queued for a sleeping writer, and when the logger closes.
    queued: Condvar,
    /// Signalled when the writer takes a batch (the queue has room) and when it has written one
    /// (for `flush`).
    written: Condvar,
    /// Only the writer thread writes here; `flush` locks it to flush.
    sinks: Mutex<Sinks>,
    /// stderr, written by its own thread.
    echo: Arc<Echo>,
    /// The file's pruning interval: an idle writer wakes this often to prune.
    prune_every: Duration,
}

/// The global logger: formats a whole record with simplelog and queues it; a writer thread
/// writes queued records to the [`RotatingFile`] (each record in one unit, so a record, even a
/// multi-line one, never straddles a rotation) and to stderr. Its `flush` waits until every
/// record logged before it is written and flushes the file, so `log::logger().flush()` does too.
///
/// Why a writer thread: a `write` per message per sink was the largest system-call cost of a
/// message under load. The writer sleeps until a record is queued, lets more gather for
/// [`GATHER`], then writes them all with one `write` to each sink, in the order they were
/// logged. Loggers never wait for a system call, only, when [`MAX_QUEUED_BYTES`] are queued
/// (a stalled journald, a full disk), for the writer to take a batch.
struct FileLogger {
    level: LevelFilter,
    /// Serialises formatting: simplelog writes a record in pieces into the shared `buf`.
    formatting: Mutex<()>,
    format: Box<WriteLogger<RecordBuf>>,
    buf: RecordBuf,
    shared: Arc<Shared>,
    /// The writer thread, joined when the logger is dropped (a test's logger; the global one
    /// lives as long as the process).
    writer: Option<std::thread::JoinHandle<()>>,
    /// The echo thread, joined when the logger is dropped if stderr takes what is queued.
    echo_writer: Option<std::thread::JoinHandle<()>>,
}

/// Where the writer thread writes records.
struct Sinks {
    file: RotatingFile,
}

/// Bytes waiting for stderr at most: past it, batches are dropped from stderr (and counted).
const ECHO_MAX_BYTES: usize = 1 << 20;

/// How long the writer waits for room in a full stderr queue before it counts stderr as stalled
/// and drops batches without waiting, until stderr takes a write again: long enough for a
/// stderr that is only slow, short enough that a stalled one costs the file one pause.
const ECHO_WAIT: Duration = Duration::from_millis(100);

/// How long [`flush`] waits for stderr to take what is queued for it.
const ECHO_FLUSH_WAIT: Duration = Duration::from_secs(1);

/// stderr's queue: the writer thread hands it each batch after writing the file, and a thread
/// of its own writes it, so that a stderr nobody reads blocks that thread alone.
struct Echo {
    queue: Mutex<EchoQueue>,
    /// Signalled when bytes are queued, and when the logger closes.
    ready: Condvar,
    /// Signalled when a write ends (the queue has room; `flush` may be waiting).
    drained: Condvar,
}

#[derive(Default)]
struct EchoQueue {
    bytes: Vec<u8>,
    /// Lines dropped since stderr last took a write.
    dropped: u64,
    /// The echo thread is in a write.
    writing: bool,
    /// A wait for room timed out and no write has ended since: drop without waiting.
    stalled: bool,
    closed: bool,
}

impl Echo {
    /// Queues `bytes` (`lines` records) for stderr; when there is no room (after [`ECHO_WAIT`],
    /// unless stderr is already known to be stalled), drops them and counts the lines.
    fn offer(&self, bytes: &[u8], lines: usize) {
        let mut q = lock(&self.queue);
        let fits = |q: &EchoQueue| q.bytes.len() + bytes.len() <= ECHO_MAX_BYTES;
        // Wait for room only while stderr is moving and the batch could ever fit (a program's
        // 1 MiB stderr line, logged whole, never does).
        if !q.stalled && bytes.len() <= ECHO_MAX_BYTES && !fits(&q) {
            let deadline = Instant::now() + ECHO_WAIT;
            while !fits(&q) {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    q.stalled = true;
                    break;
                }
                q = self
                    .drained
                    .wait_timeout(q, left)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        if q.stalled || !fits(&q) {
            // Nothing more until stderr takes a write, so that what it gets stays in order;
            // the echo thread is woken to say how much was dropped.
            q.dropped += lines as u64;
        } else {
            q.bytes.extend_from_slice(bytes);
        }
        self.ready.notify_one();
    }

    /// The echo thread: writes what is queued, a note of dropped lines first; ends once closed
    /// and empty.
    fn write_batches(&self, mut out: Box<dyn Write + Send>) {
        let mut batch = Vec::new();
        let mut q = lock(&self.queue);
        loop {
            while q.bytes.is_empty() && q.dropped == 0 {
                if q.closed {
                    return;
                }
                q = self.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
            std::mem::swap(&mut q.bytes, &mut batch);
            let dropped = std::mem::take(&mut q.dropped);
            q.writing = true;
            drop(q);
            // A panicking sink costs this batch, not the thread.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = out.write_all(&batch);
                // What was queued is older than what was dropped: the note comes after it.
                if dropped > 0 {
                    let _ = writeln!(
                        out,
                        "wxmp: {dropped} log line(s) were not written to stderr (it was not \
                         being read, or a line was over 1 MiB); they are in the log file"
                    );
                }
                let _ = out.flush();
            }));
            batch.clear();
            batch.shrink_to(KEEP_BATCH_BYTES);
            q = lock(&self.queue);
            q.writing = false;
            q.stalled = false;
            self.drained.notify_all();
        }
    }

    /// Waits up to `wait` until everything queued is written; whether it was.
    fn wait_drained(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut q = lock(&self.queue);
        while !q.bytes.is_empty() || q.writing || q.dropped > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            q = self
                .drained
                .wait_timeout(q, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    fn close(&self) {
        lock(&self.queue).closed = true;
        self.ready.notify_all();
    }
}

impl FileLogger {
    /// A logger whose writer thread is running; `Err` if that thread cannot be started.
    fn new(
        level: LevelFilter,
        config: Config,
        file: RotatingFile,
        echo: Box<dyn Write + Send>,
    ) -> io::Result<Box<FileLogger>> {
        let buf = RecordBuf::default();
        let echo_queue = Arc::new(Echo {
            queue: Mutex::new(EchoQueue::default()),
            ready: Condvar::new(),
            drained: Condvar::new(),
        });
        let echo_writer = {
            let echo_queue = Arc::clone(&echo_queue);
            std::thread::Builder::new()
                .name("log-stderr".into())
                .spawn(move || echo_queue.write_batches(echo))?
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            queued: Condvar::new(),
            written: Condvar::new(),
            prune_every: file.prune_every,
            sinks: Mutex::new(Sinks { file }),
            echo: echo_queue,
        });
        let writer = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || shared.write_batches())?
        };
        Ok(Box::new(FileLogger {
            level,
            formatting: Mutex::new(()),
            format: WriteLogger::new(level, config, buf.clone()),
            buf,
            shared,
            writer: Some(writer),
            echo_writer: Some(echo_writer),
        }))
    }
}

impl Shared {
    /// Waits until the writer takes a batch or finishes one.
    fn wait_for_writer<'a>(&self, mut queue: MutexGuard<'a, Queue>) -> MutexGuard<'a, Queue> {
        queue.waiting += 1;
        let mut queue = self
            .written
            .wait(queue)
            .unwrap_or_else(PoisonError::into_inner);
        queue.waiting -= 1;
        queue
    }

    fn wake_waiters(&self, queue: &Queue) {
        if queue.waiting > 0 {
            self.written.notify_all();
        }
    }

    /// The writer thread: sleeps until records are queued, lets more gather, writes them as
    /// one batch; ends once the logger is closed and everything queued is written.
    fn write_batches(&self) {
        /// Should the writer itself unwind, nobody may wait for it any more.
        struct Gone<'a>(&'a Shared);
        impl Drop for Gone<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    let mut queue = lock(&self.0.queue);
                    queue.gone = true;
                    self.0.written.notify_all();
                }
            }
        }
        let _gone = Gone(self);
        let (mut bytes, mut ends) = (Vec::new(), Vec::new());
        // Lines the file failed to take since it last took a batch, and the last error.
        let mut lost: (usize, String) = (0, String::new());
        let mut queue = lock(&self.queue);
        loop {
            while queue.bytes.is_empty() {
                if queue.closed {
                    return;
                }
                queue.asleep = true;
                let (woken, wait) = self
                    .queued
                    .wait_timeout(queue, self.prune_every)
                    .unwrap_or_else(PoisonError::into_inner);
                queue = woken;
                queue.asleep = false;
                if wait.timed_out() && queue.bytes.is_empty() {
                    // Nothing logged for a while: old files still age past `keep_days`.
                    drop(queue);
                    lock(&self.sinks).file.prune_if_due();
                    queue = lock(&self.queue);
                }
            }
            if !queue.closed && queue.bytes.len() < GATHER_BYTES {
                drop(queue);
                std::thread::sleep(GATHER);
                queue = lock(&self.queue);
            }
            // Swap the buffers so that neither side allocates once both have grown.
            std::mem::swap(&mut queue.bytes, &mut bytes);
            std::mem::swap(&mut queue.ends, &mut ends);
            // The queue has room again: wake anyone waiting for it.
            self.wake_waiters(&queue);
            drop(queue);
            // Should a sink panic, the writer must live on: loggers waiting for room, and
            // `flush`, wait for it.
            let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut sinks = lock(&self.sinks);
                let result = sinks.file.write_records(&bytes, &ends);
                if result.is_ok() && lost.0 > 0 {
                    // After a full disk (or the like): say in the file what it is missing.
                    let note = format!(
                        "wxmp: up to {} earlier log line(s) could not be written to this file \
                         ({}) and are lost\n",
                        lost.0, lost.1
                    );
                    let _ = sinks.file.write_records(note.as_bytes(), &[note.len()]);
                }
                sinks.file.prune_if_due();
                result
            }));
            match &written {
                Ok(Err(e)) => {
                    if lost.0 == 0 {
                        // Once, on stderr: the file cannot say it.
                        let note = format!(
                            "wxmp: cannot write the log file: {}; log lines are lost until it \
                             can be written again\n",
                            describe(e)
                        );
                        self.echo.offer(note.as_bytes(), 1);
                    }
                    lost = (lost.0 + ends.len(), describe(e));
                }
                Ok(Ok(())) => lost = (0, String::new()),
                Err(_) => {}
            }
            // The same formatted lines to stderr (a terminal, or journald under systemd): one
            // formatting for both, written by the echo thread so that a stalled stderr never
            // holds the file back.
            self.echo.offer(&bytes, ends.len());
            if written.is_err() {
                // Not `eprintln!`, which panics itself when stderr is gone.
                let _ = writeln!(
                    io::stderr(),
                    "wxmp: writing the log panicked; {} lines may be lost",
                    ends.len()
                );
            }
            let batch = ends.len() as u64;
            bytes.clear();
            ends.clear();
            // A burst may have grown the batch: keep no more than a quiet server needs.
            bytes.shrink_to(KEEP_BATCH_BYTES);
            ends.shrink_to(KEEP_BATCH_BYTES / 64);
            queue = lock(&self.queue);
            queue.written_total += batch;
            self.wake_waiters(&queue);
        }
    }
}

impl Drop for FileLogger {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.queued.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        // A stderr that takes nothing would keep its thread in a write for ever: not joined.
        let drained = self.shared.echo.wait_drained(ECHO_FLUSH_WAIT);
        self.shared.echo.close();
        if let Some(echo) = self.echo_writer.take().filter(|_| drained) {
            let _ = echo.join();
        }
    }
}

impl Log for FileLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.format.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let shared = &*self.shared;
        let _formatting = lock(&self.formatting);
        self.format.log(record);
        let mut formatted = lock(&self.buf.0);
        if formatted.is_empty() {
            return;
        }
        let mut queue = lock(&shared.queue);
        // Backpressure: when the sinks are slower than the loggers, wait for the writer rather
        // than queue without bound. (The writer never takes the formatting lock held here.)
        while queue.bytes.len() >= MAX_QUEUED_BYTES && !queue.closed && !queue.gone {
            queue = shared.wait_for_writer(queue);
        }
        if queue.gone {
            formatted.clear();
            return;
        }
        queue.bytes.extend_from_slice(&formatted);
        let end = queue.bytes.len();
        queue.ends.push(end);
        queue.queued_total += 1;
        formatted.clear();
        if queue.asleep {
            // Only the first record of a batch wakes the writer.
            queue.asleep = false;
            shared.queued.notify_one();
        }
    }

    fn flush(&self) {
        let shared = &*self.shared;
        let mut queue = lock(&shared.queue);
        let target = queue.queued_total;
        while queue.written_total < target && !queue.gone {
            queue = shared.wait_for_writer(queue);
        }
        drop(queue);
        let _ = lock(&shared.sinks).file.flush();
        // stderr gets a moment, not a promise: nobody may be reading it.
        shared.echo.wait_drained(ECHO_FLUSH_WAIT);
    }
}

impl SharedLogger for FileLogger {
    fn level(&self) -> LevelFilter {
        self.level
    }

    fn config(&self) -> Option<&Config> {
        self.format.config()
    }

    fn as_log(self: Box<Self>) -> Box<dyn Log> {
        self
    }
}

/// Set once [`init`] has installed the global logger.
static INITIALISED: Mutex<bool> = Mutex::new(false);

/// Installs the global logger: a simplelog `CombinedLogger` of one logger that formats each
/// record once (simplelog's `WriteLogger` format) and queues the whole line for its writer
/// thread, which writes it to a [`RotatingFile`] in `settings.dir` and to stderr.
///
/// Both write lines like `2026-11-24T15:30:12.345678+08:00 [INFO ] wxmp::server: message` at
/// `settings.level` and above; stderr gets no colours. Times are local when the local offset can
/// be determined (it usually can before other threads start), otherwise UTC; the offset is
/// always printed. Returns `Err` saying what to fix if the log directory or file cannot be
/// created, if `max_size` is 0, if the writer thread cannot be started, or if a logger is
/// already installed (a second call).
pub fn init(settings: &LogSettings) -> Result<(), String> {
    let mut done = lock(&INITIALISED);
    if *done {
        return Err("logging is already initialised (logging::init called twice)".to_string());
    }
    if settings.max_size == 0 {
        return Err("[log] max_size must be greater than zero".to_string());
    }
    let dir = &settings.dir;
    fs::create_dir_all(dir).map_err(|e| {
        format!(
            "cannot create log dir '{}': {}; set [log] dir or WXMP_LOG_DIR",
            dir.display(),
            describe(&e)
        )
    })?;
    let file = RotatingFile::open(dir, settings.max_size, settings.keep_days).map_err(|e| {
        format!(
            "cannot open log file '{}': {}; set [log] dir or WXMP_LOG_DIR",
            dir.join(FILE_NAME).display(),
            describe(&e)
        )
    })?;

    let mut builder = ConfigBuilder::new();
    builder
        .set_time_level(LevelFilter::Error)
        .set_level_padding(LevelPadding::Right)
        .set_target_level(LevelFilter::Error)
        .set_thread_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .set_time_format_rfc3339();
    // Fails when the offset cannot be read soundly (e.g. other threads already run): stay on UTC.
    let _ = builder.set_time_offset_to_local();
    let config = builder.build();

    let level = settings.level;
    let logger = FileLogger::new(level, config, file, Box::new(io::stderr()))
        .map_err(|e| format!("cannot start the log writer thread: {}", describe(&e)))?;
    CombinedLogger::init(vec![logger])
        .map_err(|_| "another global logger is already installed".to_string())?;
    *done = true;
    Ok(())
}

/// Flushes the log file (called on shutdown).
///
/// Same as `log::logger().flush()`; does nothing if [`init`] has not been called.
pub fn flush() {
    log::logger().flush();
}

/// An io::Error as short lowercase text: "permission denied" rather than
/// "Permission denied (os error 13)".
fn describe(e: &io::Error) -> String {
    let s = e.to_string();
    let s = match s.find(" (os error ") {
        Some(i) => &s[..i],
        None => &s,
    };
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_size_units() {
        assert_eq!(parse_size("2048"), Ok(2048));
        assert_eq!(parse_size("2048B"), Ok(2048));
        assert_eq!(parse_size("2048 b"), Ok(2048));
        assert_eq!(parse_size("10KB"), Ok(10 * 1024));
        assert_eq!(parse_size("10kb"), Ok(10 * 1024));
        assert_eq!(parse_size("10 Kb"), Ok(10 * 1024));
        assert_eq!(parse_size("500MB"), Ok(500 * 1024 * 1024));
        assert_eq!(parse_size("500 mb"), Ok(500 * 1024 * 1024));
        assert_eq!(parse_size("1GB"), Ok(1024 * 1024 * 1024));
        assert_eq!(parse_size("16gB"), Ok(16 << 30));
        assert_eq!(parse_size("  7 MB  "), Ok(7 << 20));
        assert_eq!(parse_size("1"), Ok(1));
    }

    #[test]
    fn parse_size_rejects_bad_values() {
        for bad in [
            "",
            "   ",
            "MB",
            "0",
            "0MB",
            "0 B",
            "-1",
            "+5MB",
            "1.5GB",
            "10 K",
            "10KiB",
            "10TB",
            "10 M B",
            "ten",
            "5MBs",
            "18446744073709551616",
            "17179869184GB",
        ] {
            let err = parse_size(bad).expect_err(bad);
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn default_settings() {
        let s = LogSettings::default();
        assert_eq!(s.dir, PathBuf::from("log"));
        assert_eq!(s.max_size, 500 * 1024 * 1024);
        assert_eq!(s.keep_days, 10);
        assert_eq!(s.level, LevelFilter::Info);
    }

    #[test]
    fn rotated_names() {
        assert!(is_rotated_name("wxmp.log.20261124-153012.1"));
        assert!(is_rotated_name("wxmp.log.20261124-153012.123"));
        for name in [
            "wxmp.log",
            "wxmp.log.",
            "wxmp.log.bak",
            "wxmp.log.20261124-153012",
            "wxmp.log.20261124-153012.",
            "wxmp.log.20261124-153012.1x",
            "wxmp.log.2026112-153012.1",
            "wxmp.log.20261124_153012.1",
            "other.log.20261124-153012.1",
            "wxmp.logx20261124-153012.1",
        ] {
            assert!(!is_rotated_name(name), "{name}");
        }
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(951_782_400), "20000229-000000");
        assert_eq!(utc_stamp(951_868_799), "20000229-235959");
        assert_eq!(utc_stamp(951_868_800), "20000301-000000");
        assert_eq!(utc_stamp(1_795_534_212), "20261124-153012");
        assert_eq!(utc_stamp(4_107_542_400), "21000301-000000");
    }

    #[test]
    fn describe_io_errors() {
        let e = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(describe(&e), "permission denied");
    }

    /// Logs `text` at `level` (target `t`) through `logger`.
    fn emit(logger: &FileLogger, level: log::Level, text: &str) {
        logger.log(
            &Record::builder()
                .level(level)
                .target("t")
                .args(format_args!("{text}"))
                .build(),
        );
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let d = std::env::temp_dir().join(format!(
            "wxmp-logging-unit-{tag}-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// Contents of every file in `dir`, rotated ones first (oldest first), the active one last.
    fn files_in(dir: &Path) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e.file_name().into_string().unwrap();
                (name, fs::read_to_string(e.path()).unwrap())
            })
            .collect();
        v.sort_by_key(|(name, _)| {
            let seq: u64 = name
                .rsplit('.')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX);
            (
                name.len() == FILE_NAME.len(),
                name.get(..24).map(str::to_string),
                seq,
            )
        });
        v
    }

    #[test]
    fn file_logger_keeps_multi_line_records_whole() {
        let dir = temp_dir("multiline");
        let file = RotatingFile::open(&dir, 120, 10).unwrap();
        let logger =
            FileLogger::new(LevelFilter::Info, bare_config(), file, Box::new(io::sink())).unwrap();
        let emit = |level: log::Level, msg: &str| emit(&logger, level, msg);
        // 41 bytes.
        emit(log::Level::Info, "first line\nsecond line\nthird line");
        emit(log::Level::Debug, "filtered out");
        // 99 bytes: its first line would still fit after the first record (41 + 68 <= 120), the
        // whole record does not, so all of it must go to the next file.
        let second = format!("{}\n{}", "y".repeat(60), "z".repeat(30));
        emit(log::Level::Warn, &second);
        emit(log::Level::Info, "last");
        logger.flush();
        let files = files_in(&dir);
        let contents: Vec<&str> = files.iter().map(|(_, c)| c.as_str()).collect();
        assert_eq!(
            contents,
            [
                "[INFO] first line\nsecond line\nthird line\n",
                &format!("[WARN] {second}\n[INFO] last\n"),
            ]
        );
        assert_eq!(files[1].0, FILE_NAME);
        assert!(is_rotated_name(&files[0].0), "{}", files[0].0);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A batch of 30-byte records, written with `write_records` into a 100-byte file that holds
    /// `before` bytes; returns the contents of the files afterwards (oldest first) and the
    /// `write` calls the batch took.
    fn write_batch(tag: &str, before: usize, records: &[char]) -> (Vec<String>, u64) {
        let dir = temp_dir(tag);
        let mut file = RotatingFile::open(&dir, 100, 10).unwrap();
        file.write_all(format!("{}\n", "-".repeat(before - 1)).as_bytes())
            .unwrap();
        let (mut bytes, mut ends) = (Vec::new(), Vec::new());
        for c in records {
            bytes.extend_from_slice(format!("{}\n", c.to_string().repeat(29)).as_bytes());
            ends.push(bytes.len());
        }
        let units = file.units;
        file.write_records(&bytes, &ends).unwrap();
        let units = file.units - units;
        drop(file);
        let files = files_in(&dir).into_iter().map(|(_, c)| c).collect();
        fs::remove_dir_all(&dir).unwrap();
        (files, units)
    }

    /// A folder that refuses the rotation (the service's user may write `wxmp.log` but not its
    /// folder): every line goes on into the same file, the problem is said once (`warned`), and
    /// the file rotates once the folder allows it. As root, the writing thread drops to `nobody`
    /// first (credentials are per thread in Linux), since root may write any folder.
    #[test]
    fn a_rotation_the_folder_refuses_keeps_every_line_in_the_same_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("rotation-refused");
        let line = |c: char| format!("{}\n", c.to_string().repeat(59));
        let mut file = RotatingFile::open(&dir, 100, 10).unwrap();
        file.write_all(line('a').as_bytes()).unwrap();
        fs::set_permissions(dir.join(FILE_NAME), fs::Permissions::from_mode(0o666)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: the raw system call changes this thread's credentials only (glibc's
                // setresuid would change every thread's); the thread ends right after.
                if unsafe { libc::geteuid() } == 0 {
                    let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
                    assert_eq!(rc, 0, "{}", io::Error::last_os_error());
                }
                file.write_all(line('b').as_bytes()).unwrap();
                assert!(file.warned, "the refused rotation was not said");
                file.write_all(line('c').as_bytes()).unwrap();
            })
            .join()
            .unwrap();
        });
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join(FILE_NAME)).unwrap(),
            line('a') + &line('b') + &line('c')
        );
        file.write_all(line('d').as_bytes()).unwrap();
        assert!(!file.warned);
        let contents: Vec<String> = files_in(&dir).into_iter().map(|(_, c)| c).collect();
        assert_eq!(contents, [line('a') + &line('b') + &line('c'), line('d')]);
        drop(file);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A record larger than `max_size` that ends a batch goes alone into a fresh `wxmp.log` and
    /// stays there until the next record: no empty file is started after it.
    #[test]
    fn a_record_larger_than_max_size_at_the_end_of_a_batch_stays_in_wxmp_log() {
        let dir = temp_dir("oversized-last");
        let mut file = RotatingFile::open(&dir, 100, 10).unwrap();
        let small = format!("{}\n", "s".repeat(29));
        let big = format!("{}\n", "B".repeat(149));
        let bytes = format!("{small}{big}");
        file.write_records(bytes.as_bytes(), &[small.len(), bytes.len()])
            .unwrap();
        assert_eq!(file.units, 2);
        drop(file);
        let files = files_in(&dir);
        assert_eq!(files[1], (FILE_NAME.to_string(), big));
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].1, small);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A record that fills the file to exactly `max_size` goes into it, even when more records
    /// follow in the same batch; the next one starts the fresh file.
    #[test]
    fn a_record_that_fills_the_file_exactly_stays_in_it_when_more_follow() {
        let line = |c: char| format!("{}\n", c.to_string().repeat(29));
        let (files, units) = write_batch("exact-fill", 70, &['a', 'b']);
        assert_eq!(
            files,
            [format!("{}\n{}", "-".repeat(69), line('a')), line('b')]
        );
        assert_eq!(units, 2);
    }

    /// A batch whose first record does not fit rotates once and goes into the fresh file in
    /// one write, as many records as fit there.
    #[test]
    fn a_batch_that_rotates_fills_the_fresh_file_in_one_write() {
        let line = |c: char| format!("{}\n", c.to_string().repeat(29));
        let (files, units) = write_batch("rotating-batch", 80, &['a', 'b', 'c', 'd']);
        assert_eq!(
            files,
            [
                format!("{}\n", "-".repeat(79)),
                line('a') + &line('b') + &line('c'),
                line('d'),
            ]
        );
        assert_eq!(units, 2, "one write for a, b and c, one for d");
    }

    /// Eight threads log at once through a tiny file: the writer must write every record
    /// once, whole and in each thread's order, rotate only between records and only when the
    /// next unit would not fit, and echo exactly the same bytes in the same order.
    #[test]
    fn concurrent_records_are_batched_without_loss_or_split() {
        const THREADS: usize = 8;
        const PER_THREAD: usize = 1500;
        const MAX: u64 = 2048;
        let dir = temp_dir("group-commit");
        let config = ConfigBuilder::new()
            .set_time_level(LevelFilter::Off)
            .set_target_level(LevelFilter::Off)
            .set_thread_level(LevelFilter::Off)
            .build();
        let echo = RecordBuf::default();
        let file = RotatingFile::open(&dir, MAX, 10).unwrap();
        let logger: Arc<FileLogger> = Arc::from(
            FileLogger::new(LevelFilter::Info, config, file, Box::new(echo.clone())).unwrap(),
        );
        let line = |t: usize, i: usize| {
            let pad = "x".repeat((t * 7 + i * 13) % 40);
            format!("t{t} n{i:05} {pad}")
        };
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let logger = Arc::clone(&logger);
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        emit(&logger, log::Level::Info, &line(t, i));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // Every log call has returned and `flush` waited for the writer: nothing may be left.
        logger.flush();
        {
            let queue = lock(&logger.shared.queue);
            assert!(
                queue.bytes.is_empty() && queue.written_total == queue.queued_total,
                "a record was left queued after flush"
            );
        }
        let files = files_in(&dir);
        assert!(files.len() > 50, "only {} files", files.len());
        let mut next = [0usize; THREADS];
        let mut all = String::new();
        for (k, (name, text)) in files.iter().enumerate() {
            assert!(text.len() as u64 <= MAX, "{name}: {} bytes", text.len());
            assert!(text.ends_with('\n'), "{name} ends mid-record");
            if let Some((_, following)) = files.get(k + 1) {
                let first = following.find('\n').unwrap() + 1;
                assert!(
                    (text.len() + first) as u64 > MAX,
                    "{name} was rotated although the next record fitted"
                );
            }
            for l in text.lines() {
                let rest = l
                    .strip_prefix("[INFO] t")
                    .unwrap_or_else(|| panic!("{l:?}"));
                let (t, rest) = rest.split_once(" n").unwrap();
                let t: usize = t.parse().unwrap();
                let i: usize = rest[..5].parse().unwrap();
                assert_eq!(i, next[t], "thread {t}: lost, repeated or reordered");
                assert_eq!(l, format!("[INFO] {}", line(t, i)));
                next[t] += 1;
            }
            all.push_str(text);
        }
        assert_eq!(next, [PER_THREAD; THREADS]);
        assert_eq!(
            *lock(&echo.0),
            all.into_bytes(),
            "stderr differs from the files"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A file that cannot be written (the writer thread stuck in it) must hold the loggers back
    /// once [`MAX_QUEUED_BYTES`] are queued, not let the queue grow without bound; once it moves
    /// again every record is written.
    #[test]
    fn a_stalled_file_holds_loggers_back_and_loses_nothing() {
        let dir = temp_dir("stalled");
        let echo = RecordBuf::default();
        let logger = shared_logger(&dir, Box::new(echo.clone()));
        const RECORDS: usize = 4000;
        let line = |i: usize| format!("record {i:05} {}", "x".repeat(100));
        let emit_line =
            move |logger: &FileLogger, i: usize| emit(logger, log::Level::Info, &line(i));
        // The writer needs the sinks' lock for every write: held here, the file is stalled,
        // and the first record gets the writer stuck (it has taken it once the queue is empty).
        let stalled = lock(&logger.shared.sinks);
        emit_line(&logger, 0);
        while !lock(&logger.shared.queue).bytes.is_empty() {
            std::thread::yield_now();
        }
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(1));
        let producer = {
            let (logger, done) = (Arc::clone(&logger), Arc::clone(&done));
            std::thread::spawn(move || {
                for i in 1..RECORDS {
                    emit_line(&logger, i);
                    done.store(i + 1, std::sync::atomic::Ordering::SeqCst);
                }
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        let queued = lock(&logger.shared.queue).bytes.len();
        let logged = done.load(std::sync::atomic::Ordering::SeqCst);
        assert!(logged < RECORDS, "the producer was never held back");
        assert!(
            queued < MAX_QUEUED_BYTES + 200,
            "{queued} bytes queued behind a stalled file"
        );
        drop(stalled);
        producer.join().unwrap();
        logger.flush();
        let text = fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        let expected: String = (0..RECORDS)
            .map(|i| format!("[INFO] {}\n", line(i)))
            .collect();
        assert_eq!(text, expected);
        assert_eq!(*lock(&echo.0), expected.into_bytes());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A stderr nobody reads (`wxmp serve 2>&1 | less`, a paused terminal, a stalled journald)
    /// holds nobody back: loggers log, the file gets every line, `flush` returns; stderr drops
    /// what does not fit and says how much once it moves again.
    #[test]
    fn a_stalled_stderr_holds_nobody_back_and_the_file_gets_every_line() {
        /// A Write that blocks until the gate opens.
        struct Gate(Arc<(Mutex<bool>, Condvar)>, RecordBuf);
        impl Write for Gate {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let (open, cv) = &*self.0;
                let mut open = lock(open);
                while !*open {
                    open = cv.wait(open).unwrap();
                }
                self.1.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let dir = temp_dir("stalled-stderr");
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let echo = RecordBuf::default();
        let logger = shared_logger(&dir, Box::new(Gate(Arc::clone(&gate), echo.clone())));
        // ~2.3 MB: more than stderr's queue and the loggers' together.
        const RECORDS: usize = 20_000;
        let line = |i: usize| format!("record {i:05} {}", "x".repeat(100));
        let (done, finished) = std::sync::mpsc::channel();
        {
            let logger = Arc::clone(&logger);
            std::thread::spawn(move || {
                for i in 0..RECORDS {
                    emit(&logger, log::Level::Info, &line(i));
                }
                let _ = done.send(());
            });
        }
        finished
            .recv_timeout(Duration::from_secs(20))
            .expect("the loggers were held back by a stalled stderr");
        flush_within_10s(&logger).expect("flush waited for a stalled stderr");
        let expected: String = (0..RECORDS)
            .map(|i| format!("[INFO] {}\n", line(i)))
            .collect();
        assert_eq!(fs::read_to_string(dir.join(FILE_NAME)).unwrap(), expected);
        // stderr moves again: what it kept, in order, then the count of what it dropped.
        {
            let (open, cv) = &*gate;
            *lock(open) = true;
            cv.notify_all();
        }
        flush_within_10s(&logger).expect("flush did not return");
        let echoed = String::from_utf8(lock(&echo.0).clone()).unwrap();
        let (kept, note) = echoed
            .split_once("wxmp: ")
            .expect("a note of the dropped lines");
        let kept_lines = kept.lines().count();
        assert!(
            kept_lines > 0 && expected.starts_with(kept),
            "{kept_lines} lines kept"
        );
        let dropped: usize = note
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a count");
        assert_eq!(
            note,
            format!(
                "{dropped} log line(s) were not written to stderr (it was not being read, or a \
                 line was over 1 MiB); they are in the log file\n"
            ),
            "the note comes last, after the older lines stderr kept"
        );
        assert_eq!(kept_lines + dropped, RECORDS, "every line kept or counted");
        // At most the batch the stalled write holds and a full queue behind it: the first
        // batch is small only if the echo thread took it at once, which a busy machine delays.
        assert!(
            kept.len() <= 2 * ECHO_MAX_BYTES,
            "{} bytes kept",
            kept.len()
        );
        drop(logger);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A full disk: the lines it refuses are said to be lost, once on stderr while it lasts and
    /// in the file once it takes lines again; a record is never glued onto a torn one.
    #[test]
    fn a_full_disk_costs_lines_that_are_counted_and_said() {
        let dir = temp_dir("full-disk");
        let echo = RecordBuf::default();
        let logger = shared_logger(&dir, Box::new(echo.clone()));
        emit(&logger, log::Level::Info, "before");
        logger.flush();
        // /dev/full refuses every write with ENOSPC.
        let full = OpenOptions::new().append(true).open("/dev/full").unwrap();
        let real = std::mem::replace(&mut lock(&logger.shared.sinks).file.file, full);
        for i in 0..3 {
            emit(&logger, log::Level::Info, &format!("lost {i}"));
            logger.flush();
        }
        let echoed = String::from_utf8(lock(&echo.0).clone()).unwrap();
        assert_eq!(
            echoed
                .matches(
                    "wxmp: cannot write the log file: no space left on device; log lines \
                          are lost until it can be written again\n"
                )
                .count(),
            1,
            "said once: {echoed}"
        );
        assert!(echoed.contains("[INFO] lost 2\n"), "stderr still gets them");
        lock(&logger.shared.sinks).file.file = real;
        emit(&logger, log::Level::Info, "after");
        logger.flush();
        assert_eq!(
            fs::read_to_string(dir.join(FILE_NAME)).unwrap(),
            "[INFO] before\n[INFO] after\nwxmp: up to 3 earlier log line(s) could not be \
             written to this file (no space left on device) and are lost\n"
        );
        drop(logger);
        // A file left ending inside a record (a disk that filled part-way through a write, then
        // a crash): the next record starts on a line of its own.
        fs::write(dir.join(FILE_NAME), "[INFO] whole\n[INFO] torn rec").unwrap();
        let logger = shared_logger(&dir, Box::new(io::sink()));
        emit(&logger, log::Level::Info, "next");
        logger.flush();
        assert_eq!(
            fs::read_to_string(dir.join(FILE_NAME)).unwrap(),
            "[INFO] whole\n[INFO] torn rec\n[INFO] next\n"
        );
        drop(logger);
        // A whole file, opened again: nothing is added between its records.
        let logger = shared_logger(&dir, Box::new(io::sink()));
        emit(&logger, log::Level::Info, "again");
        logger.flush();
        assert_eq!(
            fs::read_to_string(dir.join(FILE_NAME)).unwrap(),
            "[INFO] whole\n[INFO] torn rec\n[INFO] next\n[INFO] again\n"
        );
        drop(logger);
        // Torn, and the next record rotates the file: the fresh file starts with the record.
        fs::write(dir.join(FILE_NAME), "[INFO] torn rec").unwrap();
        let file = RotatingFile::open(&dir, 20, 10).unwrap();
        let logger = Arc::from(
            FileLogger::new(LevelFilter::Info, bare_config(), file, Box::new(io::sink())).unwrap(),
        );
        emit(&logger, log::Level::Info, "fresh");
        logger.flush();
        assert_eq!(
            fs::read_to_string(dir.join(FILE_NAME)).unwrap(),
            "[INFO] fresh\n"
        );
        drop(logger);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// One record larger than stderr's whole queue (a program's 1 MiB stderr line) is dropped
    /// from stderr alone, said, and the lines after it still go out.
    #[test]
    fn a_record_too_big_for_stderr_costs_stderr_that_record_only() {
        let dir = temp_dir("huge-record");
        let echo = RecordBuf::default();
        let logger = shared_logger(&dir, Box::new(echo.clone()));
        emit(&logger, log::Level::Info, &"x".repeat(ECHO_MAX_BYTES + 10));
        logger.flush();
        for i in 0..3 {
            emit(&logger, log::Level::Info, &format!("after {i}"));
            logger.flush();
        }
        let echoed = String::from_utf8(lock(&echo.0).clone()).unwrap();
        assert_eq!(
            echoed,
            "wxmp: 1 log line(s) were not written to stderr (it was not being read, or a line \
             was over 1 MiB); they are in the log file\n[INFO] after 0\n[INFO] after 1\n[INFO] after 2\n"
        );
        let file = fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        assert_eq!(file.lines().count(), 4, "the file has it");
        drop(logger);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A Write into a shared buffer that counts its `write` calls.
    struct Counted(RecordBuf, Arc<std::sync::atomic::AtomicUsize>);

    impl Write for Counted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.0.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn bare_config() -> Config {
        ConfigBuilder::new()
            .set_time_level(LevelFilter::Off)
            .set_target_level(LevelFilter::Off)
            .build()
    }

    /// A shared logger of bare lines into a fresh `wxmp.log` in `dir`, echoing to `echo`.
    fn shared_logger(dir: &Path, echo: Box<dyn Write + Send>) -> Arc<FileLogger> {
        let file = RotatingFile::open(dir, 1 << 30, 10).unwrap();
        Arc::from(FileLogger::new(LevelFilter::Info, bare_config(), file, echo).unwrap())
    }

    /// Runs `flush` on another thread; `Err` if it has not returned within 10 s (a writer that
    /// stopped would make it wait for ever: the test fails instead of hanging).
    fn flush_within_10s(logger: &Arc<FileLogger>) -> Result<(), std::sync::mpsc::RecvTimeoutError> {
        let (done, flushed) = std::sync::mpsc::channel();
        let logger = Arc::clone(logger);
        std::thread::spawn(move || {
            logger.flush();
            let _ = done.send(());
        });
        flushed.recv_timeout(Duration::from_secs(10))
    }

    /// A quiet server still deletes rotated files that age past `keep_days`: pruning is due once
    /// an interval has passed, and an idle writer wakes for it with nothing logged.
    #[test]
    fn an_idle_writer_prunes_files_that_age_past_keep_days() {
        let dir = temp_dir("idle-prune");
        let mut file = RotatingFile::open(&dir, 1 << 30, 10).unwrap();
        // Appear after the open's prune, as files do that age past keep_days while wxmp runs.
        let old = dir.join("wxmp.log.20260101-000000.1");
        let recent = dir.join("wxmp.log.20260102-000000.1");
        for (path, days) in [(&old, 11), (&recent, 9)] {
            fs::write(path, "a rotated line\n").unwrap();
            File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(SystemTime::now() - Duration::from_secs(days * 86_400))
                .unwrap();
        }
        file.prune_if_due();
        assert!(old.exists(), "pruned before the interval passed");
        file.prune_every = Duration::from_millis(50);
        let logger =
            FileLogger::new(LevelFilter::Info, bare_config(), file, Box::new(io::sink())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while old.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !old.exists(),
            "an idle writer left a file older than keep_days"
        );
        assert!(recent.exists(), "a file younger than keep_days was deleted");
        drop(logger);
        let _ = fs::remove_dir_all(&dir);
    }

    /// Records logged while the writer is busy go out together: one `write` per sink for the
    /// whole batch, not one per record.
    #[test]
    fn records_logged_while_the_writer_is_busy_go_out_in_one_write() {
        let dir = temp_dir("batch");
        let echo = RecordBuf::default();
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let logger = shared_logger(&dir, Box::new(Counted(echo.clone(), Arc::clone(&writes))));
        // Hold the sinks: the writer takes the first record and then waits for them.
        let sinks = lock(&logger.shared.sinks);
        let units_before = sinks.file.units;
        emit(&logger, log::Level::Info, "first");
        while !lock(&logger.shared.queue).bytes.is_empty() {
            std::thread::yield_now();
        }
        for i in 0..100 {
            emit(&logger, log::Level::Info, &format!("queued {i}"));
        }
        drop(sinks);
        logger.flush();
        let expected: String = std::iter::once("[INFO] first\n".to_string())
            .chain((0..100).map(|i| format!("[INFO] queued {i}\n")))
            .collect();
        assert_eq!(fs::read_to_string(dir.join(FILE_NAME)).unwrap(), expected);
        assert_eq!(*lock(&echo.0), expected.into_bytes());
        assert_eq!(
            lock(&logger.shared.sinks).file.units - units_before,
            2,
            "the first record, then the 100 queued behind it in one write to the file"
        );
        // stderr's thread may even take both batches in one write.
        assert!((1..=2).contains(&writes.load(std::sync::atomic::Ordering::SeqCst)));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A sink that panics costs its batch, not the writer: later lines are still written and
    /// `flush` returns.
    #[test]
    fn a_panicking_sink_does_not_stop_the_writer() {
        struct PanicOnce(bool, RecordBuf);
        impl Write for PanicOnce {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if !self.0 {
                    self.0 = true;
                    panic!("sink failure (expected by this test)");
                }
                self.1.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let dir = temp_dir("panicking-sink");
        let echo = RecordBuf::default();
        let logger = shared_logger(&dir, Box::new(PanicOnce(false, echo.clone())));
        emit(&logger, log::Level::Info, "lost to the panic on stderr");
        flush_within_10s(&logger).expect("flush did not return: the writer stopped");
        emit(&logger, log::Level::Info, "after");
        flush_within_10s(&logger).expect("flush did not return: the writer stopped");
        assert_eq!(*lock(&echo.0), b"[INFO] after\n");
        assert_eq!(
            fs::read_to_string(dir.join(FILE_NAME)).unwrap(),
            "[INFO] lost to the panic on stderr\n[INFO] after\n"
        );
        drop(logger);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Once the writer is gone, loggers drop their lines instead of waiting for room that never
    /// comes, and `flush` returns.
    #[test]
    fn loggers_do_not_wait_for_a_writer_that_is_gone() {
        let dir = temp_dir("gone");
        let logger = shared_logger(&dir, Box::new(io::sink()));
        // Hold the sinks: the writer takes one batch and then cannot drain any more.
        let sinks = lock(&logger.shared.sinks);
        let (done, finished) = std::sync::mpsc::channel();
        {
            let logger = Arc::clone(&logger);
            std::thread::spawn(move || {
                // Twice the backpressure limit: this thread ends up waiting for room.
                for i in 0..(2 * MAX_QUEUED_BYTES / 100) {
                    emit(
                        &logger,
                        log::Level::Info,
                        &format!("{i:05} {}", "x".repeat(90)),
                    );
                }
                let _ = done.send(());
            });
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lock(&logger.shared.queue).bytes.len() < MAX_QUEUED_BYTES {
            assert!(
                std::time::Instant::now() < deadline,
                "the queue never filled"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(finished.try_recv().is_err(), "the logger was not held back");
        // What the writer's unwinding guard does.
        {
            let mut queue = lock(&logger.shared.queue);
            queue.gone = true;
            logger.shared.written.notify_all();
        }
        finished
            .recv_timeout(Duration::from_secs(10))
            .expect("a logger waited for a writer that is gone");
        drop(sinks);
        flush_within_10s(&logger).expect("flush waited for a writer that is gone");
        drop(logger);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// `flush` waits for the lines logged before it, not for a moment when nobody logs.
    #[test]
    fn flush_returns_while_another_thread_keeps_logging() {
        let dir = temp_dir("busy-flush");
        let logger = shared_logger(&dir, Box::new(io::sink()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let chatter = {
            let (logger, stop) = (Arc::clone(&logger), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    emit(&logger, log::Level::Info, "chatter");
                }
            })
        };
        emit(&logger, log::Level::Info, "before the flush");
        let result = flush_within_10s(&logger);
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        chatter.join().unwrap();
        result.expect("flush waited for the logging to stop");
        let text = fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        assert!(text.contains("[INFO] before the flush\n"));
        drop(logger);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A quiet server's line reaches the file by itself, without a `flush`.
    #[test]
    fn a_lone_record_is_written_without_a_flush() {
        let dir = temp_dir("lone");
        let logger = shared_logger(&dir, Box::new(io::sink()));
        for round in 0..3 {
            // Only once the writer sleeps does the record have to wake it.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !lock(&logger.shared.queue).asleep {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the writer never slept"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            emit(&logger, log::Level::Info, &format!("alone {round}"));
            let want: String = (0..=round).map(|r| format!("[INFO] alone {r}\n")).collect();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while fs::read_to_string(dir.join(FILE_NAME)).unwrap() != want {
                assert!(
                    std::time::Instant::now() < deadline,
                    "record {round} not written within 5 s"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        drop(logger);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// `init` touches the process-wide logger, so every check of it lives in this one test.
    #[test]
    fn init_once_and_errors() {
        let base = temp_dir("init");
        // A path below a regular file cannot be created: the error names the dir and the fix.
        let blocker = base.join("not-a-dir");
        fs::write(&blocker, "x").unwrap();
        let bad = LogSettings {
            dir: blocker.join("log"),
            ..LogSettings::default()
        };
        let err = init(&bad).unwrap_err();
        assert!(
            err.starts_with(&format!("cannot create log dir '{}': ", bad.dir.display())),
            "{err}"
        );
        assert!(err.ends_with("; set [log] dir or WXMP_LOG_DIR"), "{err}");
        assert!(!err.contains("os error"), "{err}");

        let zero = LogSettings {
            dir: base.join("log"),
            max_size: 0,
            ..LogSettings::default()
        };
        assert!(init(&zero).unwrap_err().contains("max_size"));

        let good = LogSettings {
            dir: base.join("log"),
            max_size: 1 << 20,
            keep_days: 10,
            level: LevelFilter::Info,
        };
        init(&good).unwrap();
        log::info!("hello from the init test");
        log::debug!("not logged at info level");
        log::logger().flush();
        let text = fs::read_to_string(base.join("log").join(FILE_NAME)).unwrap();
        assert!(text.contains(" [INFO ] wxmp::logging::tests: hello from the init test\n"));
        assert!(!text.contains("not logged"));
        // RFC 3339 date, time and UTC offset at the start of the line.
        let line = text.lines().next().unwrap();
        let stamp = line.split(' ').next().unwrap();
        let b = stamp.as_bytes();
        assert_eq!(
            (b[4], b[7], b[10], b[13], b[16]),
            (b'-', b'-', b'T', b':', b':'),
            "{line}"
        );
        assert!(
            stamp.ends_with('Z') || stamp[19..].contains(['+', '-']),
            "{line}"
        );

        let err = init(&good).unwrap_err();
        assert!(err.contains("already"), "{err}");
        flush();
        fs::remove_dir_all(&base).unwrap();
    }
}
