//! Running a command's program: directly (never through a shell), in its own process group, with
//! a deadline after which the whole group is killed.
//!
//! stdout and stderr are read as they fill while wxmp waits for the program (`poll` on the run's
//! own thread, no thread per pipe), so a program that writes a lot cannot block on a full pipe;
//! each is captured up to [`OUTPUT_CAP`] bytes (the rest is read and dropped).

use std::cell::Cell;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The most bytes kept of a program's stdout, and of its stderr.
pub const OUTPUT_CAP: usize = 1 << 20;

/// The most programs running at once; more are refused with [`Status::Busy`] so a flood of
/// messages cannot fork the machine to death.
pub const MAX_RUNNING: usize = 32;

static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// The soft open-file limit programs start with (0: as wxmp's own), set by
/// [`give_programs_fd_limit`].
static PROGRAMS_FD_LIMIT: AtomicU64 = AtomicU64::new(0);

/// Set by [`stop_all`]: running programs are killed and new ones refused.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Set by [`refuse_new`] (and [`stop_all`]): new programs are refused, running ones go on.
static REFUSING: AtomicBool = AtomicBool::new(false);

/// The flag `wxmp serve`'s SIGTERM and SIGINT handlers set ([`watch_stop_signal`]).
static STOP_SIGNAL: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// How long a program ended by SIGTERM or SIGINT waits for [`STOP_SIGNAL`]: a supervisor that
/// signals the whole service (systemd's default `KillMode=control-group`, a panel killing the
/// process tree) signals wxmp and its programs at once, and the program's end can be seen
/// before wxmp's own handler has run.
const STOP_SIGNAL_WAIT: Duration = Duration::from_millis(200);

thread_local! {
    /// Whether the last [`run`] on this thread ended [`Status::Stopped`] (see [`take_cut_short`]).
    static CUT_SHORT: Cell<bool> = const { Cell::new(false) };
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// The program: a path, or a name looked up on `PATH`.
    pub program: PathBuf,
    /// The arguments, each passed as one argv item whatever it holds.
    pub args: Vec<String>,
    /// Variables added to the environment (wxmp's own `WXMP_*` variables, and systemd's
    /// `LISTEN_*` ones, are removed first).
    pub env: Vec<(String, String)>,
    /// The working directory.
    pub dir: PathBuf,
    /// How long the program may run before its process group is killed.
    pub timeout: Duration,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// The program exited with this code.
    Exited(i32),
    /// A signal not sent by wxmp ended the program.
    Signaled(i32),
    /// The deadline passed; the process group was killed.
    TimedOut,
    /// The program could not be started (the reason).
    NotStarted(String),
    /// [`MAX_RUNNING`] programs were already running.
    Busy,
    /// The server is stopping ([`stop_all`]): the process group was killed, or never started.
    Stopped,
}

/// The result of [`run`].
#[derive(Debug, Clone)]
pub struct Output {
    /// How the run ended.
    pub status: Status,
    /// stdout, lossily decoded, at most [`OUTPUT_CAP`] bytes.
    pub stdout: String,
    /// stderr, lossily decoded, at most [`OUTPUT_CAP`] bytes.
    pub stderr: String,
    /// Wall time from start to end.
    pub elapsed: Duration,
}

impl Output {
    fn failed(status: Status, start: Instant) -> Output {
        Output {
            status,
            stdout: String::new(),
            stderr: String::new(),
            elapsed: start.elapsed(),
        }
    }
}

/// Decrements the running count when dropped.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        let mut n = RUNNING.load(Ordering::SeqCst);
        loop {
            if n >= MAX_RUNNING {
                return None;
            }
            match RUNNING.compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return Some(Slot),
                Err(now) => n = now,
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Refuses new programs from now on ([`Status::Stopped`], marked for [`take_cut_short`]) and
/// lets running ones finish: for the start of a shutdown, whose grace is for the programs
/// already running, and whose end ([`stop_all`]) would kill a program started meanwhile.
pub fn refuse_new() {
    REFUSING.store(true, Ordering::SeqCst);
}

/// Kills the process group of every running program (within a few milliseconds, each run's own
/// thread does it) and refuses new ones: for shutdown, so no program outlives the server
/// unsupervised. Returns once none runs, or after `wait`.
pub fn stop_all(wait: Duration) {
    REFUSING.store(true, Ordering::SeqCst);
    STOPPING.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + wait;
    while running() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
}

/// Starts programs with the soft open-file limit `soft` (the one wxmp itself was started with,
/// before it raised its own to the hard limit), where wxmp's own is higher: a program that
/// closes every fd up to its limit (an old-style daemon, rpm) would take seconds at a limit of
/// 524288 or ~10^9 (containers), and select(2) cannot take fds over 1023. Raising the limit is
/// for wxmp's connections, not for what it runs.
pub fn give_programs_fd_limit(soft: u64) {
    PROGRAMS_FD_LIMIT.store(soft, Ordering::SeqCst);
}

/// Gives this module the flag that `wxmp serve`'s SIGTERM and SIGINT handlers set, so that a
/// program ended by the same stop signal (sent to the whole service) counts as
/// [`Status::Stopped`], not as a program that failed. The first call wins.
pub fn watch_stop_signal(flag: Arc<AtomicBool>) {
    let _ = STOP_SIGNAL.set(flag);
}

/// Whether the last [`run`] on this thread was cut short by the server's stop
/// ([`Status::Stopped`]), and forgets it. The answer made from such a run is for the tries of
/// this process only: the next process runs the command again on WeChat's next try.
pub fn take_cut_short() -> bool {
    CUT_SHORT.with(|c| c.replace(false))
}

/// Whether a stop signal reached `wxmp serve` (waiting up to `wait` for one in flight).
fn stop_signaled(wait: Duration) -> bool {
    let Some(flag) = STOP_SIGNAL.get() else {
        return false;
    };
    let deadline = Instant::now() + wait;
    loop {
        if flag.load(Ordering::SeqCst) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// How many programs are running now.
pub fn running() -> usize {
    RUNNING.load(Ordering::SeqCst)
}

/// One of the program's output pipes and the bytes kept from it.
struct Capture {
    /// Open until its end (or a read error).
    pipe: Option<File>,
    kept: Vec<u8>,
}

impl Capture {
    fn new(pipe: Option<impl Into<OwnedFd>>) -> Capture {
        Capture {
            pipe: pipe.map(|p| File::from(p.into())),
            kept: Vec::new(),
        }
    }

    /// Reads what the pipe holds (called when `poll` says it is readable, so it does not block),
    /// keeping the first [`OUTPUT_CAP`] bytes; closes it at its end.
    fn read_ready(&mut self) {
        let Some(pipe) = self.pipe.as_mut() else {
            return;
        };
        let mut chunk = [0u8; 8192];
        match pipe.read(&mut chunk) {
            Ok(0) => self.pipe = None,
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(self.kept.len());
                self.kept.extend_from_slice(&chunk[..n.min(room)]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => self.pipe = None,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.kept).into_owned()
    }
}

/// Waits up to `timeout` for output on the pipes still open and reads what came; with none
/// open, just waits.
fn pump(captures: &mut [Capture; 2], exit: Option<&OwnedFd>, timeout: Duration) {
    let mut fds = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 3];
    for (pfd, c) in fds.iter_mut().zip(captures.iter()) {
        // A negative fd is ignored by poll: a closed pipe's slot stays -1.
        pfd.fd = c.pipe.as_ref().map_or(-1, |p| p.as_raw_fd());
    }
    // The program's pidfd, readable once it has exited: the wait ends then, not a pause later.
    fds[2].fd = exit.map_or(-1, |fd| fd.as_raw_fd());
    if fds.iter().all(|p| p.fd < 0) {
        thread::sleep(timeout);
        return;
    }
    let ms = libc::c_int::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
    // SAFETY: poll reads and writes exactly the three pollfd structs of the array we pass.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 3, ms) };
    if rc < 0 {
        if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // Not expected with two valid fds; wait rather than spin.
            thread::sleep(timeout);
        }
        return;
    }
    for (pfd, c) in fds.iter().zip(captures.iter_mut()) {
        if pfd.fd >= 0 && pfd.revents != 0 {
            c.read_ready();
        }
    }
}

/// A pidfd for the child `pid` (Linux 5.3 and later), which `poll` reports readable once the
/// child has exited; `None` where the kernel has none, and the wait polls in growing pauses.
fn pidfd(pid: u32) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; the child is not
    // reaped yet, so the pid is still ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = libc::c_int::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Kills every process of group `pgid` (the program and whatever it started).
fn kill_group(pgid: u32) {
    if let Ok(pgid) = i32::try_from(pgid) {
        if pgid > 0 {
            // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions; the
            // group is our child's, which has not been reaped yet or still has members.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

/// Asks Linux to kill this process (a program about to be exec'd) when wxmp, `wxmp` its pid,
/// is gone: a wxmp killed with SIGKILL (a panel's `kill -9`, the out-of-memory killer) is no
/// longer there to enforce the program's timeout, and outside systemd nothing else would end
/// a program that hangs. The signal comes when the thread that started the program ends;
/// that thread waits for the program ([`run`]), so it only ends before it with wxmp. What the
/// program starts in the background is its own (README, Programs).
fn die_with_wxmp(wxmp: u32) -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid take and return plain integers.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // wxmp died between the fork and the prctl: the signal would never come.
        if libc::getppid() as u32 != wxmp {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// Lowers this process's soft open-file limit to `soft` if it is higher (in a child before
/// exec: no allocation, async-signal-safe calls only). A failure leaves the limit as it was.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux x86_64, not everywhere
fn lower_fd_limit(soft: u64) -> std::io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && (lim.rlim_cur as u64) > soft {
            lim.rlim_cur = soft as libc::rlim_t;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    Ok(())
}

fn status_of(s: ExitStatus) -> Status {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(code), _) => Status::Exited(code),
        (None, Some(sig)) => Status::Signaled(sig),
        (None, None) => Status::Exited(-1),
    }
}

/// Runs `job`: stdin empty, stdout and stderr captured, the process group killed at the deadline.
/// Never panics; every failure is a [`Status`]. A run ended by the server's stop is
/// [`Status::Stopped`] and marked for [`take_cut_short`].
pub fn run(job: &Job) -> Output {
    let mut out = run_unmarked(job);
    if let Status::Signaled(sig @ (libc::SIGTERM | libc::SIGINT)) = out.status {
        if stop_signaled(STOP_SIGNAL_WAIT) {
            log::info!(
                "{} ended by signal {sig} together with wxmp (a stop signalled to the whole \
                 service): counted as stopped by the stop",
                job.program.display()
            );
            out.status = Status::Stopped;
        }
    }
    CUT_SHORT.with(|c| c.set(out.status == Status::Stopped));
    out
}

fn run_unmarked(job: &Job) -> Output {
    let start = Instant::now();
    if REFUSING.load(Ordering::SeqCst) {
        return Output::failed(Status::Stopped, start);
    }
    let Some(_slot) = Slot::take() else {
        return Output::failed(Status::Busy, start);
    };
    let deadline = start + job.timeout;
    let mut cmd = Command::new(&job.program);
    cmd.args(&job.args)
        .current_dir(&job.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy();
        if name.starts_with("WXMP_") || crate::activation::VARIABLES.contains(&&*name) {
            cmd.env_remove(k);
        }
    }
    cmd.envs(job.env.iter().map(|(k, v)| (k, v)));
    let soft = PROGRAMS_FD_LIMIT.load(Ordering::SeqCst);
    let wxmp = std::process::id();
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl,
    // getppid, getrlimit and setrlimit, which are async-signal-safe, on stack variables of its
    // own, and builds its error from a raw errno (no allocation).
    unsafe {
        cmd.pre_exec(move || {
            die_with_wxmp(wxmp)?;
            if soft > 0 {
                lower_fd_limit(soft)?;
            }
            Ok(())
        })
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Output::failed(
                Status::NotStarted(format!("{}: {e}", job.program.display())),
                start,
            )
        }
    };
    let pgid = child.id();
    let exited = pidfd(pgid);
    let mut captures = [
        Capture::new(child.stdout.take()),
        Capture::new(child.stderr.take()),
    ];

    // Check with try_wait between reads rather than wait: while try_wait says "running", the
    // child is not reaped, so its pid (the group id) cannot have been reused when the group is
    // killed. A program ending closes its pipes, which ends the read's wait at once.
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break status_of(s),
            Ok(None) => {}
            Err(e) => {
                log::error!("waiting for {} failed: {e}", job.program.display());
                kill_group(pgid);
                let _ = child.wait();
                break Status::NotStarted(format!("wait failed: {e}"));
            }
        }
        if STOPPING.load(Ordering::SeqCst) {
            kill_group(pgid);
            let _ = child.wait();
            break Status::Stopped;
        }
        let now = Instant::now();
        if now >= deadline {
            kill_group(pgid);
            let _ = child.wait();
            break Status::TimedOut;
        }
        pump(&mut captures, exited.as_ref(), pause.min(deadline - now));
        pause = match exited {
            // Anything the program does ends the wait at once: the pause only bounds how late
            // a stop is noticed.
            Some(_) => Duration::from_millis(10),
            None => (pause * 2).min(Duration::from_millis(10)),
        };
    };
    // Reaped: the pidfd would stay readable and turn the reads below into a spin.
    drop(exited);
    // The program is gone; what it started may still hold the pipes. Read them up to the
    // deadline, or the server's stop (nobody would enforce the deadline after it), then kill
    // the rest of the group and keep what was read. The program ran to its end: its status
    // stands.
    while captures.iter().any(|c| c.pipe.is_some()) {
        let now = Instant::now();
        if now >= deadline || STOPPING.load(Ordering::SeqCst) {
            kill_group(pgid);
            break;
        }
        pump(
            &mut captures,
            None,
            (deadline - now).min(Duration::from_millis(10)),
        );
    }
    let [stdout, stderr] = captures;
    Output {
        status,
        stdout: stdout.text(),
        stderr: stderr.text(),
        elapsed: start.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout_ms: u64) -> Output {
        run(&Job {
            program: "sh".into(),
            args: vec!["-c".into(), script.into(), "sh".into(), "a b;$(x)".into()],
            env: vec![("WXMP_ARGS".into(), "A".into())],
            dir: std::env::temp_dir(),
            timeout: Duration::from_millis(timeout_ms),
        })
    }

    #[test]
    fn output_status_env_and_arguments() {
        let o = sh(
            "printf '%s|%s' \"$1\" \"$WXMP_ARGS\"; echo err >&2; exit 3",
            5000,
        );
        assert_eq!(o.status, Status::Exited(3));
        assert_eq!(o.stdout, "a b;$(x)|A");
        assert_eq!(o.stderr, "err\n");
    }

    #[test]
    fn timeout_kills_the_group() {
        let t = Instant::now();
        let o = sh("sleep 5 & sleep 5; echo never", 300);
        assert_eq!(o.status, Status::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(o.stdout, "");
    }

    #[test]
    fn chatty_output_is_capped_without_deadlock() {
        let o = sh("head -c 3000000 /dev/zero | tr '\\0' x", 10_000);
        assert_eq!(o.status, Status::Exited(0));
        assert_eq!(o.stdout.len(), OUTPUT_CAP);
    }

    #[test]
    fn both_pipes_are_read_while_the_program_runs() {
        // Each write is larger than a pipe holds (64 KiB): the program finishes only if wxmp
        // reads stderr and stdout while it runs, in whichever order it writes them.
        let o = sh(
            "head -c 300000 /dev/zero | tr '\\0' e >&2; head -c 300000 /dev/zero | tr '\\0' o; echo end >&2",
            10_000,
        );
        assert_eq!(o.status, Status::Exited(0));
        assert_eq!(o.stdout, "o".repeat(300_000));
        assert_eq!(o.stderr, format!("{}end\n", "e".repeat(300_000)));
    }

    #[test]
    fn output_of_what_the_program_left_running_is_read_until_the_deadline() {
        // The program exits at once; the process it started keeps stdout open, writes once more
        // and would live on: its output up to the deadline is kept, then its group is killed.
        let t = Instant::now();
        let o = sh(
            "echo first; (sleep 0.2; echo second; sleep 30) & exit 0",
            1000,
        );
        assert_eq!(o.status, Status::Exited(0));
        assert_eq!(o.stdout, "first\nsecond\n");
        let took = t.elapsed();
        assert!(took >= Duration::from_millis(900), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn missing_program_is_not_started() {
        let o = run(&Job {
            program: "/nonexistent/wxmp-test".into(),
            args: vec![],
            env: vec![],
            dir: std::env::temp_dir(),
            timeout: Duration::from_secs(1),
        });
        assert!(matches!(o.status, Status::NotStarted(_)), "{o:?}");
    }
}
