//! Rotation, pruning and concurrency of `wxmp::logging::RotatingFile`, used directly (never
//! through the global logger).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Record};
use simplelog::{ConfigBuilder, WriteLogger};
use wxmp::logging::RotatingFile;

const ACTIVE: &str = "wxmp.log";
const DAY: u64 = 86_400;

/// A fresh, empty directory for one test.
fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "wxmp-rotation-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Sets `path`'s modification time to `days` days ago.
fn age(path: &Path, days: u64) {
    let f = File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(days * DAY))
        .unwrap();
}

/// Splits `wxmp.log.YYYYMMDD-HHMMSS.N` into its timestamp and counter.
fn rotated_key(name: &str) -> Option<(String, u64)> {
    let rest = name.strip_prefix("wxmp.log.")?;
    let (stamp, seq) = rest.split_once('.')?;
    let b = stamp.as_bytes();
    let ok = b.len() == 15
        && b[8] == b'-'
        && b[..8].iter().chain(&b[9..]).all(u8::is_ascii_digit)
        && !seq.is_empty()
        && seq.bytes().all(|c| c.is_ascii_digit());
    ok.then(|| (stamp.to_string(), seq.parse().unwrap()))
}

/// Names of the files in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// The log files in `dir` oldest first (rotated ones by timestamp and counter, the active one
/// last) with their contents. Panics on any other file.
fn log_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut rotated = Vec::new();
    let mut active = None;
    for name in names(dir) {
        let content = fs::read(dir.join(&name)).unwrap();
        if name == ACTIVE {
            active = Some((name, content));
        } else {
            let key = rotated_key(&name).unwrap_or_else(|| panic!("unexpected file {name}"));
            rotated.push((key, name, content));
        }
    }
    rotated.sort_by(|a, b| a.0.cmp(&b.0));
    let mut files: Vec<(String, Vec<u8>)> = rotated.into_iter().map(|(_, n, c)| (n, c)).collect();
    files.push(active.expect("no active wxmp.log"));
    files
}

fn rotated_count(dir: &Path) -> usize {
    names(dir)
        .iter()
        .filter(|n| rotated_key(n).is_some())
        .count()
}

/// The whole text of line `i` of thread `t` (without the newline): its length varies.
fn payload(t: usize, i: usize) -> String {
    let len = 1 + (t * 7 + i * 13) % 40;
    let c = (b'a' + ((t + i) % 26) as u8) as char;
    c.to_string().repeat(len)
}

/// Checks that `dir` holds exactly the `threads * per_thread` lines `prefix + "t{t} n{i:05}
/// {payload}"`, each once and whole, each thread's lines in order across the files taken oldest
/// first; that no file passes `max` and each rotated one was rotated only because the next line
/// would not fit. Returns the number of files.
fn check_lines(dir: &Path, max: u64, threads: usize, per_thread: usize, prefix: &str) -> usize {
    let files = log_files(dir);
    let mut next = vec![0usize; threads];
    let mut total_bytes = 0u64;
    for (k, (name, content)) in files.iter().enumerate() {
        let len = content.len() as u64;
        total_bytes += len;
        assert!(len <= max, "{name} has {len} bytes > {max}");
        assert!(!content.is_empty(), "{name} is empty");
        assert_eq!(content.last(), Some(&b'\n'), "{name} ends mid-line");
        if let Some((_, following)) = files.get(k + 1) {
            let first = following.iter().position(|&b| b == b'\n').unwrap() + 1;
            assert!(
                len + first as u64 > max,
                "{name} ({len} bytes) was rotated although the next {first}-byte line fitted"
            );
        }
        let text = std::str::from_utf8(content).unwrap();
        for line in text.lines() {
            let rest = line
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("bad line {line:?} in {name}"));
            let mut parts = rest.splitn(3, ' ');
            let t: usize = parts.next().unwrap()[1..].parse().unwrap();
            let i: usize = parts.next().unwrap()[1..].parse().unwrap();
            assert!(t < threads, "{line:?}");
            assert_eq!(
                i, next[t],
                "thread {t}: line out of order or repeated in {name}"
            );
            assert_eq!(line, format!("{prefix}t{t} n{i:05} {}", payload(t, i)));
            next[t] += 1;
        }
    }
    assert_eq!(next, vec![per_thread; threads], "lines missing");
    let expected: u64 = (0..threads)
        .flat_map(|t| (0..per_thread).map(move |i| (t, i)))
        .map(|(t, i)| format!("{prefix}t{t} n{i:05} {}\n", payload(t, i)).len() as u64)
        .sum();
    assert_eq!(total_bytes, expected);
    assert!(files.len() as u64 >= expected.div_ceil(max));
    files.len()
}

#[test]
fn concurrent_piecewise_writes_through_a_mutex_never_lose_or_split_lines() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 2000;
    const MAX: u64 = 2048;
    let dir = temp_dir("mutex");
    let file = Arc::new(Mutex::new(RotatingFile::open(&dir, MAX, 10).unwrap()));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let file = Arc::clone(&file);
            thread::spawn(move || {
                for i in 0..PER_THREAD {
                    // One record = one lock, written in pieces the way simplelog does.
                    let mut f = file.lock().unwrap();
                    f.write_all(format!("t{t} ").as_bytes()).unwrap();
                    f.write_all(format!("n{i:05} ").as_bytes()).unwrap();
                    f.write_all(payload(t, i).as_bytes()).unwrap();
                    f.write_all(b"\n").unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    file.lock().unwrap().flush().unwrap();
    let n = check_lines(&dir, MAX, THREADS, PER_THREAD, "");
    assert!(n > 100, "only {n} files");
    drop(file);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn concurrent_records_through_simplelog_write_logger() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 1500;
    const MAX: u64 = 2048;
    let dir = temp_dir("simplelog");
    let config = ConfigBuilder::new()
        .set_time_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .build();
    let logger: Arc<WriteLogger<RotatingFile>> = Arc::from(WriteLogger::new(
        LevelFilter::Info,
        config,
        RotatingFile::open(&dir, MAX, 10).unwrap(),
    ));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let logger = Arc::clone(&logger);
            thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let p = payload(t, i);
                    logger.log(
                        &Record::builder()
                            .level(Level::Info)
                            .target("wxmp")
                            .args(format_args!("t{t} n{i:05} {p}"))
                            .build(),
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    logger.flush();
    let n = check_lines(&dir, MAX, THREADS, PER_THREAD, "[INFO] ");
    assert!(n > 100, "only {n} files");
    drop(logger);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn old_rotated_files_are_pruned_at_open_and_nothing_else() {
    let dir = temp_dir("prune-open");
    let old = dir.join("wxmp.log.20200101-000000.1");
    let fresh = dir.join("wxmp.log.20200102-000000.1");
    let later = dir.join("wxmp.log.20200102-000000.2");
    let bak = dir.join("wxmp.log.bak");
    let notes = dir.join("notes.txt");
    for p in [&old, &fresh, &later, &bak, &notes] {
        fs::write(p, "x\n").unwrap();
    }
    let subdir = dir.join("wxmp.log.20200101-000000.9");
    fs::create_dir(&subdir).unwrap();
    age(&old, 11);
    age(&fresh, 9);
    age(&later, 1);
    age(&bak, 30);
    age(&notes, 30);

    let rf = RotatingFile::open(&dir, 1024, 10).unwrap();
    assert_eq!(
        names(&dir),
        [
            "notes.txt",
            "wxmp.log",
            "wxmp.log.20200101-000000.9",
            "wxmp.log.20200102-000000.1",
            "wxmp.log.20200102-000000.2",
            "wxmp.log.bak",
        ]
    );
    assert_eq!(rf.prune_old().unwrap(), 0);
    age(&fresh, 12);
    age(&later, 10 * 2);
    assert_eq!(rf.prune_old().unwrap(), 2);
    assert_eq!(rf.prune_old().unwrap(), 0);
    assert_eq!(
        names(&dir),
        [
            "notes.txt",
            "wxmp.log",
            "wxmp.log.20200101-000000.9",
            "wxmp.log.bak"
        ]
    );
    drop(rf);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn old_rotated_files_are_pruned_at_rotation() {
    let dir = temp_dir("prune-rotate");
    let mut rf = RotatingFile::open(&dir, 100, 3).unwrap();
    let line = format!("{}\n", "a".repeat(59));
    rf.write_all(line.as_bytes()).unwrap();

    // Planted after open, so only a rotation can remove them.
    let old = dir.join("wxmp.log.20200101-000000.1");
    let fresh = dir.join("wxmp.log.20200101-000000.2");
    fs::write(&old, "old\n").unwrap();
    fs::write(&fresh, "fresh\n").unwrap();
    age(&old, 4);
    age(&fresh, 2);
    rf.write_all(b"short\n").unwrap(); // 66 bytes: no rotation yet
    assert!(old.exists());

    rf.write_all(line.as_bytes()).unwrap(); // 126 > 100: rotates, then prunes
    assert!(!old.exists(), "old rotated file survived the rotation");
    assert!(fresh.exists(), "fresh rotated file was removed");
    assert_eq!(rotated_count(&dir), 2);
    let files = log_files(&dir);
    assert_eq!(files.len(), 3);
    assert_eq!(files[0].0, "wxmp.log.20200101-000000.2");
    assert_eq!(files[1].1, format!("{line}short\n").into_bytes());
    assert_eq!(files[2].1, line.clone().into_bytes());
    drop(rf);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_record_larger_than_max_size_lands_whole_in_its_own_file() {
    let dir = temp_dir("oversized");
    let mut rf = RotatingFile::open(&dir, 100, 10).unwrap();
    let big = |c: char| format!("{}\n", c.to_string().repeat(299));
    let small = |c: char, n: usize| format!("{}\n", c.to_string().repeat(n - 1));

    // Into an empty file: written there, no rotation of an empty file.
    rf.write_all(big('A').as_bytes()).unwrap();
    assert_eq!(rotated_count(&dir), 0);
    rf.write_all(small('B', 20).as_bytes()).unwrap();
    rf.write_all(small('C', 50).as_bytes()).unwrap();
    // In ten pieces, the way a logger might hand it over: still one record.
    let d = big('D');
    for piece in d.as_bytes().chunks(30) {
        rf.write_all(piece).unwrap();
    }
    rf.write_all(small('E', 20).as_bytes()).unwrap();
    rf.flush().unwrap();

    let contents: Vec<String> = log_files(&dir)
        .into_iter()
        .map(|(_, c)| String::from_utf8(c).unwrap())
        .collect();
    assert_eq!(
        contents,
        [
            big('A'),
            small('B', 20) + &small('C', 50),
            big('D'),
            small('E', 20)
        ]
    );
    drop(rf);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_active_file_size_is_honoured_after_a_restart() {
    let dir = temp_dir("restart");
    let line = |c: char, n: usize| format!("{}\n", c.to_string().repeat(n - 1));

    let mut rf = RotatingFile::open(&dir, 100, 10).unwrap();
    rf.write_all(line('a', 60).as_bytes()).unwrap();
    drop(rf);
    let mut rf = RotatingFile::open(&dir, 100, 10).unwrap();
    rf.write_all(line('b', 30).as_bytes()).unwrap(); // 90: fits
    drop(rf);
    assert_eq!(rotated_count(&dir), 0);
    let mut rf = RotatingFile::open(&dir, 100, 10).unwrap();
    rf.write_all(line('c', 30).as_bytes()).unwrap(); // 120 > 100: rotates first
    rf.write_all(line('d', 80).as_bytes()).unwrap(); // 110 > 100: rotates again
    drop(rf);
    // Restarts within the same second must not reuse a rotated name.
    let mut rf = RotatingFile::open(&dir, 100, 10).unwrap();
    rf.write_all(line('e', 30).as_bytes()).unwrap(); // rotates
    drop(rf);

    let contents: Vec<String> = log_files(&dir)
        .into_iter()
        .map(|(_, c)| String::from_utf8(c).unwrap())
        .collect();
    assert_eq!(
        contents,
        [
            line('a', 60) + &line('b', 30),
            line('c', 30),
            line('d', 80),
            line('e', 30)
        ]
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unfinished_line_is_written_on_flush_and_on_drop() {
    let dir = temp_dir("partial");
    let path = dir.join(ACTIVE);
    let mut rf = RotatingFile::open(&dir, 1024, 10).unwrap();
    rf.write_all(b"one\ntw").unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "one\n");
    rf.write_all(b"o").unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "one\n");
    rf.flush().unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "one\ntwo");
    rf.write_all(b"\nthree").unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), "one\ntwo\n");
    drop(rf);
    assert_eq!(fs::read_to_string(&path).unwrap(), "one\ntwo\nthree");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn open_rejects_a_zero_max_size() {
    let dir = temp_dir("zero");
    let err = RotatingFile::open(&dir, 0, 10).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    fs::remove_dir_all(&dir).unwrap();
}

/// A rotated file old enough to go that cannot be deleted (a log folder the service's user may
/// not write) makes pruning fail, so that it is said, rather than kept for ever in silence. As
/// root, the thread that prunes drops to `nobody` first (credentials are per thread in Linux),
/// since root may write any folder.
#[test]
fn an_old_rotated_file_that_cannot_be_deleted_is_an_error_not_a_silent_keep() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("prune-denied");
    let rf = RotatingFile::open(&dir, 1024, 10).unwrap();
    let old = dir.join("wxmp.log.20200101-000000.1");
    fs::write(&old, "x\n").unwrap();
    age(&old, 11);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
    let denied = thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: the raw system call changes this thread's credentials only (glibc's
            // setresuid would change every thread's); the thread ends right after.
            if unsafe { libc::geteuid() } == 0 {
                let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
                assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            }
            rf.prune_old()
        })
        .join()
        .unwrap()
    });
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(
        denied.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::PermissionDenied)
    );
    assert!(old.exists());
    assert_eq!(rf.prune_old().unwrap(), 1, "deleted once it may be");
    drop(rf);
    fs::remove_dir_all(&dir).unwrap();
}

/// `wxmp.log` deleted from under the writer (`rm log/wxmp.log` to free space): there is nothing
/// to rotate, and the next rotation starts a fresh `wxmp.log` rather than failing for ever
/// while the deleted file grows past `max_size`.
#[test]
fn a_deleted_active_file_is_started_afresh_at_the_next_rotation() {
    let dir = temp_dir("deleted-active");
    let line = |c: char| format!("{}\n", c.to_string().repeat(59));
    let mut rf = RotatingFile::open(&dir, 100, 10).unwrap();
    rf.write_all(line('a').as_bytes()).unwrap();
    fs::remove_file(dir.join(ACTIVE)).unwrap();
    rf.write_all(line('b').as_bytes()).unwrap(); // 120 > 100: rotates
    rf.write_all(line('c').as_bytes()).unwrap(); // 120 > 100: rotates again
    let contents: Vec<String> = log_files(&dir)
        .into_iter()
        .map(|(_, c)| String::from_utf8(c).unwrap())
        .collect();
    assert_eq!(contents, [line('b'), line('c')]);
    drop(rf);
    fs::remove_dir_all(&dir).unwrap();
}
