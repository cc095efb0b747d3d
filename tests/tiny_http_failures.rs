//! Known failure modes of tiny_http 0.12.0, reproduced against a bare tiny_http server (a
//! `recv()` loop on 4 threads, `examples/support/bare_tiny_http.rs`) on a free loopback port.
//!
//! Every test asserts that the failure *happens*: these are regression tests of the library we
//! build on, not of wxmp. wxmp must survive each scenario; to prove it, add a twin test that
//! runs the same scenario function against the wxmp binary:
//!
//! | mode | scenario function                                   | what fails in bare tiny_http |
//! |------|-----------------------------------------------------|------------------------------|
//! | 1    | [`keepalive_burst`]`(addr, conns, wait)`            | keep-alive connections stranded unread in the task pool queue |
//! | 2    | [`half_sent_headers`]`(addr, pid, n, hold)`         | one thread per connection, no header timeout |
//! | 2    | [`huge_header_line`]`(addr, pid, bytes)`            | a header line grows server memory without bound |
//! | 2    | [`many_headers`]`(addr, n)`                         | no cap on the number of header lines |
//! | 3    | [`slow_bodies`]`(addr, slow, probe_timeout)`        | slow bodies pin the `recv()` workers |
//! | 4    | [`fd_exhaustion`]`(addr, pid, open, probes)`        | at the fd limit accepting stops forever |
//! | 2    | [`listener_timeout_idle`]`(addr, pid, idle)`        | the listener-timeout workaround kills accept |
//! | 5    | [`huge_content_length`]`(addr, pid, hang_up)`       | one huge `Content-Length` aborts the process |
//!
//! Scenarios only take an address (and, where they observe the server's threads, memory or
//! liveness, its pid), so they work the same on any server. Modes 1 and 3 and the header-count
//! test run the bare server in this process; the others run it in a child process (this test
//! binary re-executed with `TINY_HTTP_FAILURES_CHILD=bare...`, see [`ChildServer`]) so its
//! thread count and RSS are not mixed with the test harness's, the fd limit can be lowered for
//! it alone, and an abort kills only it. [`ChildServer::spawn_command`] starts any server
//! binary the same way (e.g. wxmp, if it prints `LISTENING <addr>` on stdout once listening).
//!
//! Default-run tests take a few seconds each. Heavy or long ones are `#[ignore]`d:
//! `cargo test --test tiny_http_failures -- --ignored --test-threads=1`.
//!
//! The tests run one at a time (a process-wide lock), because several of them are about timing
//! and thread counts.

#[path = "../benches/support/wxhttp.rs"]
mod wxhttp;

#[path = "../examples/support/bare_tiny_http.rs"]
mod bare_tiny_http;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use bare_tiny_http::BareServer;
use wxhttp::{BodyKind, Conn, Target};

const TOKEN: &str = "wxmpTestToken123";
const PATH: &str = "/wx";

// ---------------------------------------------------------------------------------------------
// Harness: serial lock, in-process server, child-process server, /proc readers.
// ---------------------------------------------------------------------------------------------

/// Tests in this file run one at a time: they measure timing and thread counts.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A bare tiny_http server in this process, on a free loopback port, 4 recv threads.
fn bare_in_process() -> BareServer {
    BareServer::start("127.0.0.1:0", 4).expect("start bare tiny_http")
}

fn signed(addr: SocketAddr, keep_alive: bool) -> Vec<u8> {
    let target = Target::from_addr(addr, PATH);
    wxhttp::signed_post(
        &target,
        TOKEN,
        BodyKind::Text,
        wxhttp::next_seq(),
        keep_alive,
    )
}

/// The head of a signed POST up to (and including) the given extra header text.
fn signed_head(addr: SocketAddr, content_length: usize) -> String {
    let ts = wxhttp::unix_now();
    let seq = wxhttp::next_seq();
    let query = wxhttp::signed_query(TOKEN, ts, &wxhttp::nonce_for(seq), "oUSER1");
    format!(
        "POST {PATH}?{query} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/xml\r\n\
         Content-Length: {content_length}\r\n"
    )
}

/// How a probe request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Answered with this status.
    Answered(u16),
    /// Connected (or tried to) but got no complete answer within the timeout.
    TimedOut,
    /// The connection was refused or reset: nobody is accepting.
    Refused,
    /// Any other error.
    Failed(String),
}

/// One signed POST on a new connection, with `timeout` for connecting and for the answer.
pub fn probe(addr: SocketAddr, timeout: Duration) -> Probe {
    let result = Conn::connect(addr, timeout).and_then(|mut c| c.round_trip(&signed(addr, false)));
    match result {
        Ok(r) => Probe::Answered(r.status),
        Err(e) if wxhttp::is_timeout(&e) => Probe::TimedOut,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
            ) =>
        {
            Probe::Refused
        }
        Err(e) => Probe::Failed(e.to_string()),
    }
}

/// Reads a `Key:   value kB` style line from `/proc/PID/status`.
fn proc_status_field(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Number of threads of process `pid`.
pub fn threads_of(pid: u32) -> usize {
    proc_status_field(pid, "Threads").unwrap_or(0) as usize
}

/// Resident set size of process `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_field(pid, "VmRSS").unwrap_or(0)
}

/// Open file descriptors of process `pid`.
pub fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// True if `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // state is the field after the parenthesised command name
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The thread count of `pid` once it has not changed for 300 ms (at most 5 s).
pub fn settled_threads(pid: u32) -> usize {
    let mut last = threads_of(pid);
    let mut stable_since = Instant::now();
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end && stable_since.elapsed() < Duration::from_millis(300) {
        thread::sleep(Duration::from_millis(25));
        let now = threads_of(pid);
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
    last
}

/// Polls `f` until it returns true or `limit` passes.
fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

const CHILD_ENV: &str = "TINY_HTTP_FAILURES_CHILD";
const CHILD_MAX_SECS_ENV: &str = "TINY_HTTP_FAILURES_CHILD_MAX_SECS";

/// A server in a child process, killed (by its own pid) when dropped.
///
/// It must print `LISTENING <addr>` at the end of a line on stdout once it accepts connections. The child
/// is also told to exit when its stdin closes, so it cannot outlive a crashed test run.
pub struct ChildServer {
    child: Child,
    pub addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl ChildServer {
    /// This test binary re-executed as a bare tiny_http server (4 recv threads), optionally
    /// with `RLIMIT_NOFILE` lowered to `nofile` before exec.
    pub fn bare(nofile: Option<u64>, max_secs: u64) -> ChildServer {
        ChildServer::variant("bare", nofile, max_secs)
    }

    /// Like [`ChildServer::bare`], for a variant of the bare server: `bare` (reads each body,
    /// answers the fixed reply), `bare-noread` (answers 403 without reading the body) or
    /// `bare-listener-timeout` (listener with a 1 s `SO_RCVTIMEO`, which accepted sockets
    /// inherit).
    pub fn variant(kind: &str, nofile: Option<u64>, max_secs: u64) -> ChildServer {
        let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
        cmd.args([
            "child_server_entry",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, kind)
        .env(CHILD_MAX_SECS_ENV, max_secs.to_string());
        ChildServer::spawn_command(cmd, nofile)
    }

    /// Starts any server command (e.g. the wxmp binary) that prints `LISTENING <addr>`.
    pub fn spawn_command(mut cmd: Command, nofile: Option<u64>) -> ChildServer {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(limit) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; the closure allocates nothing.
            unsafe {
                cmd.pre_exec(move || {
                    let rl = libc::rlimit {
                        rlim_cur: limit as libc::rlim_t,
                        rlim_max: limit as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn child server");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let sink = Arc::clone(&stderr);
            let err = child.stderr.take().expect("stderr");
            let tx = tx.clone();
            thread::spawn(move || {
                // wxmp logs "wxmp 0.1.0 listening on 127.0.0.1:PORT (configured ...)".
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    if let Some((_, rest)) = line.split_once(" listening on ") {
                        let addr = rest.split_whitespace().next().unwrap_or_default();
                        let _ = tx.send(addr.to_string());
                    }
                    let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                    if s.len() < 1 << 20 {
                        s.push_str(&line);
                        s.push('\n');
                    }
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout");
        thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    // libtest may have printed "test child_server_entry ... " on this line.
                    if let Some((_, a)) = line.split_once("LISTENING ") {
                        sent = tx.send(a.trim().to_string()).is_ok();
                    }
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a.parse().expect("child printed a bad address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "child server did not report LISTENING; stderr: {}",
                    stderr.lock().unwrap()
                );
            }
        };
        ChildServer {
            child,
            addr,
            stderr,
        }
    }

    /// The wxmp binary (`serve`) with `extra` config lines, in a fresh folder, optionally with
    /// `RLIMIT_NOFILE` lowered to `nofile`.
    pub fn wxmp(nofile: Option<u64>, extra: &str) -> ChildServer {
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "immune-{}-{}",
            std::process::id(),
            wxhttp::next_seq()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create wxmp dir");
        let config =
            format!("token = \"{TOKEN}\"\nlisten = \"127.0.0.1:0\"\npath = \"{PATH}\"\n{extra}\n");
        std::fs::write(dir.join("wxmp.toml"), config).expect("write wxmp.toml");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wxmp"));
        cmd.args(["serve", "--config", "wxmp.toml"])
            .current_dir(&dir);
        // None of the caller's WXMP_* variables (a WXMP_APP_ID would turn on safe mode).
        for (var, _) in std::env::vars_os() {
            if var.to_string_lossy().starts_with("WXMP_") {
                cmd.env_remove(var);
            }
        }
        ChildServer::spawn_command(cmd, nofile)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the child to exit; its exit code, if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// What the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Not a test: the entry point of [`ChildServer::bare`] child processes. Without
/// `TINY_HTTP_FAILURES_CHILD` set it returns at once.
#[test]
#[ignore = "entry point for child processes, not a test"]
fn child_server_entry() {
    let Ok(kind) = std::env::var(CHILD_ENV) else {
        return;
    };
    let max_secs: u64 = std::env::var(CHILD_MAX_SECS_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    // Exit when the parent closes our stdin (or dies), and in any case after max_secs.
    thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    thread::spawn(move || {
        thread::sleep(Duration::from_secs(max_secs));
        std::process::exit(0);
    });
    let server = match kind.as_str() {
        "bare" => BareServer::start("127.0.0.1:0", 4),
        "bare-noread" => tiny_http::Server::http("127.0.0.1:0")
            .map_err(io::Error::other)
            .and_then(|s| BareServer::from_server(s, 4, false)),
        "bare-listener-timeout" => listener_with_read_timeout(Duration::from_secs(1))
            .and_then(|l| tiny_http::Server::from_listener(l, None).map_err(io::Error::other))
            .and_then(|s| BareServer::from_server(s, 4, true)),
        other => panic!("unknown {CHILD_ENV}={other}"),
    }
    .expect("child: start bare tiny_http");
    println!("\nLISTENING {}", server.addr());
    io::stdout().flush().unwrap();
    server.join();
}

/// A loopback listener whose `SO_RCVTIMEO` is `timeout`. On Linux, accepted sockets inherit it
/// (the would-be workaround for tiny_http's missing read timeout), and so does `accept()`.
fn listener_with_read_timeout(timeout: Duration) -> io::Result<std::net::TcpListener> {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid socket fd and a timeval of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(listener)
}

// ---------------------------------------------------------------------------------------------
// Mode 1: stranded keep-alive connections.
// ---------------------------------------------------------------------------------------------

/// What [`keepalive_burst`] measured.
#[derive(Debug, Clone)]
pub struct BurstOutcome {
    pub connections: usize,
    /// Connections whose request was answered within the wait.
    pub answered: usize,
    /// Connections that could not even connect or send.
    pub failed: usize,
    /// Slowest answer among the answered ones.
    pub slowest_answer: Duration,
}

/// Mode 1 scenario: opens `connections` keep-alive connections in a burst, sends one signed
/// POST on each, and counts the connections answered within `wait` (all waiting in parallel,
/// connections kept open meanwhile, as a keep-alive client would).
pub fn keepalive_burst(addr: SocketAddr, connections: usize, wait: Duration) -> BurstOutcome {
    // Connect them all first (the burst), then send on each.
    let conns: Vec<io::Result<Conn>> = (0..connections)
        .map(|_| Conn::connect(addr, wait))
        .collect();
    let start = Instant::now();
    let handles: Vec<_> = conns
        .into_iter()
        .map(|c| {
            thread::spawn(move || -> Option<Option<Duration>> {
                let mut c = c.ok()?;
                c.send(&signed(addr, true)).ok()?;
                let answered = c.recv().ok().filter(|r| r.status == 200);
                let took = start.elapsed();
                // Keep the connection open until everyone is done waiting.
                let rest = (start + wait).saturating_duration_since(Instant::now());
                thread::sleep(rest);
                Some(answered.map(|_| took))
            })
        })
        .collect();
    let mut out = BurstOutcome {
        connections,
        answered: 0,
        failed: 0,
        slowest_answer: Duration::ZERO,
    };
    for h in handles {
        match h.join().expect("burst client thread") {
            None => out.failed += 1,
            Some(Some(took)) => {
                out.answered += 1;
                out.slowest_answer = out.slowest_answer.max(took);
            }
            Some(None) => {}
        }
    }
    out
}

/// Mode 1: a burst of 32 keep-alive connections against a cold server (the task pool has only
/// its 4 idle threads) leaves some connections unread: tiny_http's `TaskPool::spawn` queues
/// the connection task while its idle-thread count still counts threads that were already
/// woken for earlier tasks, and every task is a long-lived connection loop, so the queued ones
/// wait until some connection closes.
///
/// The race needs the accept thread to outrun the woken pool threads, so one burst does not
/// always strand a connection; the test tries up to 4 cold servers (at most ~9 s) and asserts
/// that at least one burst had connections left unanswered for 2 s. On the 2-core dev machine
/// 54 of 60 single bursts stranded some (`mode1_statistics`), so 4 misses in a row are a
/// 1-in-10 000 event; see `docs/tiny_http-upstream.md`.
#[test]
fn mode1_keepalive_burst_strands_connections() {
    let _g = serial();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let server = bare_in_process();
        // Cold: let the pool's 4 initial threads go idle first.
        thread::sleep(Duration::from_millis(200));
        let out = keepalive_burst(server.addr(), 32, Duration::from_secs(2));
        assert_eq!(out.failed, 0, "connections must at least connect: {out:?}");
        seen.push(out.answered);
        if out.answered < out.connections {
            break;
        }
    }
    eprintln!("mode 1: answered within 2 s per burst of 32 (one cold server each): {seen:?}");
    assert!(
        seen.iter().any(|&a| a < 32),
        "expected some of 32 keep-alive connections to be stranded, answered: {seen:?}"
    );
}

/// Mode 1, statistics: 30 cold servers, one burst each; prints how many of 32 keep-alive
/// connections were answered within 2 s. Takes about a minute.
///
/// `cargo test --test tiny_http_failures -- --ignored --nocapture mode1_statistics`
#[test]
#[ignore = "about a minute; statistics only"]
fn mode1_statistics() {
    let _g = serial();
    let mut seen = Vec::new();
    for _ in 0..30 {
        let server = bare_in_process();
        thread::sleep(Duration::from_millis(200));
        seen.push(keepalive_burst(server.addr(), 32, Duration::from_secs(2)).answered);
    }
    let stranding = seen.iter().filter(|&&a| a < 32).count();
    eprintln!(
        "mode 1: answered of 32 per cold burst: {seen:?}; {stranding}/30 bursts stranded some"
    );
    assert!(stranding > 0);
}

// ---------------------------------------------------------------------------------------------
// Mode 2: no limits, no timeouts, a thread per connection.
// ---------------------------------------------------------------------------------------------

/// What [`half_sent_headers`] measured.
#[derive(Debug, Clone)]
pub struct HalfSentOutcome {
    pub connections: usize,
    pub threads_before: usize,
    /// Server threads while the half-sent headers were held.
    pub threads_during: usize,
    /// Connections the server still kept open (and silent) after `hold`.
    pub open_after_hold: usize,
    /// Status of one of them after finishing its request (None: no answer).
    pub finished_status: Option<u16>,
}

/// Mode 2 scenario: opens `n` connections that each send the start of a request head and then
/// nothing; holds them for `hold`; then finishes one request. `pid` is the server's process.
///
/// The first 8 connections are paced 50 ms apart so that none is stranded in tiny_http's task
/// pool queue (mode 1) and every one gets its thread; the rest follow at once.
pub fn half_sent_headers(addr: SocketAddr, pid: u32, n: usize, hold: Duration) -> HalfSentOutcome {
    let threads_before = settled_threads(pid);
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = Conn::connect(addr, Duration::from_secs(5)).expect("connect");
        // Request line and some headers, but no blank line.
        c.send(format!("{}X-Slow: ", signed_head(addr, 0)).as_bytes())
            .expect("send partial head");
        conns.push(c);
        if i < 8 {
            thread::sleep(Duration::from_millis(50));
        }
    }
    let threads_during = settled_threads(pid);
    thread::sleep(hold);
    let open_after_hold = conns.iter().filter(|c| !c.peer_gave_up()).count();
    let finished_status = conns.last_mut().and_then(|c| {
        c.send(b"1\r\nConnection: close\r\n\r\n").ok()?;
        c.recv().ok().map(|r| r.status)
    });
    HalfSentOutcome {
        connections: n,
        threads_before,
        threads_during,
        open_after_hold,
        finished_status,
    }
}

/// Mode 2: 300 connections with half-sent headers cost the server 300 threads (one per
/// connection, no cap) and are all still held open 2 s later (no read timeout); one of them can
/// still finish its request and is answered.
#[test]
fn mode2_half_sent_headers_one_thread_each_no_timeout() {
    let _g = serial();
    let server = ChildServer::bare(None, 60);
    let out = half_sent_headers(server.addr, server.pid(), 300, Duration::from_secs(2));
    eprintln!("mode 2 (half-sent headers): {out:?}");
    let grown = out.threads_during.saturating_sub(out.threads_before);
    assert!(
        grown >= 300 - 8,
        "expected about one server thread per half-sent connection: {out:?}"
    );
    assert_eq!(out.open_after_hold, 300, "no connection timed out: {out:?}");
    assert_eq!(out.finished_status, Some(200), "{out:?}");
}

/// Mode 2, long: half-sent headers are held 130 s (longer than any sane header timeout, e.g.
/// nginx's 60 s) and the server still keeps every one open and its thread.
///
/// `cargo test --test tiny_http_failures -- --ignored --nocapture mode2_half_sent_headers_held_130s`
#[test]
#[ignore = "takes 130 s"]
fn mode2_half_sent_headers_held_130s() {
    let _g = serial();
    let server = ChildServer::bare(None, 200);
    let out = half_sent_headers(server.addr, server.pid(), 50, Duration::from_secs(130));
    eprintln!("mode 2 (half-sent headers, 130 s): {out:?}");
    assert!(out.threads_during.saturating_sub(out.threads_before) >= 50 - 8);
    assert_eq!(out.open_after_hold, 50);
    assert_eq!(out.finished_status, Some(200));
}

/// What [`huge_header_line`] measured.
#[derive(Debug, Clone)]
pub struct HugeHeaderOutcome {
    /// Bytes of the single header line the server took before we stopped.
    pub sent: usize,
    pub rss_before_kib: u64,
    pub rss_during_kib: u64,
    /// Whether the server closed the connection (a server with a limit would, after a 431).
    pub server_closed: bool,
    pub elapsed: Duration,
}

/// Mode 2 scenario: sends one header line of `bytes` bytes (no CRLF), then measures the server
/// process's RSS while the connection is held.
pub fn huge_header_line(addr: SocketAddr, pid: u32, bytes: usize) -> HugeHeaderOutcome {
    let started = Instant::now();
    let rss_before_kib = rss_kib(pid);
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut sent = 0;
    let mut server_closed = stream
        .write_all(format!("{}X-Big: ", signed_head(addr, 0)).as_bytes())
        .is_err();
    let chunk = vec![b'a'; 1 << 20];
    while !server_closed && sent < bytes {
        let n = chunk.len().min(bytes - sent);
        match stream.write_all(&chunk[..n]) {
            Ok(()) => sent += n,
            Err(_) => server_closed = true,
        }
    }
    // Wait until the server has read everything (its RSS stops growing).
    let mut rss_during_kib = rss_kib(pid);
    let mut stable_since = Instant::now();
    let settle_end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < settle_end && stable_since.elapsed() < Duration::from_millis(500) {
        thread::sleep(Duration::from_millis(100));
        let now = rss_kib(pid);
        if now > rss_during_kib {
            rss_during_kib = now;
            stable_since = Instant::now();
        }
    }
    let mut conn_closed = server_closed;
    if !conn_closed {
        stream.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        conn_closed = match stream.peek(&mut b) {
            Ok(0) => true,
            Ok(_) => true, // an error response means it gave up on us
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        };
    }
    HugeHeaderOutcome {
        sent,
        rss_before_kib,
        rss_during_kib,
        server_closed: conn_closed,
        elapsed: started.elapsed(),
    }
}

/// Mode 2: a 32 MiB header line is read whole into memory (server RSS grows by ≥ 32 MiB) and
/// the connection is not refused.
#[test]
fn mode2_huge_header_line_grows_memory() {
    let _g = serial();
    let server = ChildServer::bare(None, 60);
    let mib = 32;
    let out = huge_header_line(server.addr, server.pid(), mib << 20);
    eprintln!("mode 2 (header line of {mib} MiB): {out:?}");
    assert_eq!(out.sent, mib << 20, "{out:?}");
    assert!(!out.server_closed, "bare tiny_http never refuses: {out:?}");
    assert!(
        out.rss_during_kib >= out.rss_before_kib + (mib as u64) * 1024,
        "server RSS should grow by at least the line length: {out:?}"
    );
}

/// Mode 2, heavy: the 200 MiB header line of the issue report (server RSS grows by ≥ 200 MB).
///
/// `cargo test --test tiny_http_failures -- --ignored --nocapture mode2_huge_header_line_200mib`
#[test]
#[ignore = "sends 200 MiB and grows the child server by 200-400 MB"]
fn mode2_huge_header_line_200mib() {
    let _g = serial();
    let server = ChildServer::bare(None, 300);
    let out = huge_header_line(server.addr, server.pid(), 200 << 20);
    eprintln!("mode 2 (header line of 200 MiB): {out:?}");
    assert_eq!(out.sent, 200 << 20);
    assert!(!out.server_closed);
    assert!(out.rss_during_kib >= out.rss_before_kib + 200 * 1024);
}

/// Mode 2 scenario: one request with `n` extra header lines; the status it got, if any
/// (`Ok(None)`: the server closed without answering).
pub fn many_headers(addr: SocketAddr, n: usize) -> io::Result<Option<u16>> {
    let mut c = Conn::connect(addr, Duration::from_secs(30))?;
    let mut head = signed_head(addr, 0);
    for i in 0..n {
        head.push_str(&format!("X-H{i}: v\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    if c.send(head.as_bytes()).is_err() {
        return Ok(None);
    }
    match c.recv() {
        Ok(r) => Ok(Some(r.status)),
        Err(e) if wxhttp::is_timeout(&e) => Err(e),
        Err(_) => Ok(None),
    }
}

/// Mode 2: 100 000 header lines (1.2 MB of head) are accepted and answered 200.
#[test]
fn mode2_header_count_unbounded() {
    let _g = serial();
    let server = bare_in_process();
    let status = many_headers(server.addr(), 100_000).expect("answered in time");
    eprintln!("mode 2 (100000 header lines): status {status:?}");
    assert_eq!(status, Some(200));
}

// ---------------------------------------------------------------------------------------------
// Mode 3: slow bodies block the recv() workers.
// ---------------------------------------------------------------------------------------------

/// What [`slow_bodies`] measured.
#[derive(Debug, Clone)]
pub struct SlowBodyOutcome {
    pub slow_clients: usize,
    /// A normal request sent while the slow clients hold their bodies: its result.
    pub probe_during: Probe,
    /// A normal request after the slow clients went away.
    pub probe_after: Probe,
}

/// Mode 3 scenario: `slow` clients each send a signed POST head with `Content-Length: 2000` and
/// only 5 bytes of body, then stall; then a normal request waits up to `probe_timeout`. Then
/// the slow clients disconnect and another normal request is tried.
pub fn slow_bodies(addr: SocketAddr, slow: usize, probe_timeout: Duration) -> SlowBodyOutcome {
    let mut stalled = Vec::new();
    for _ in 0..slow {
        let mut c = Conn::connect(addr, Duration::from_secs(5)).expect("connect");
        c.send(format!("{}\r\n<xml>", signed_head(addr, 2000)).as_bytes())
            .expect("send head");
        stalled.push(c);
        // One at a time, so each is handed to a worker (and not stranded as in mode 1).
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(200));
    let probe_during = probe(addr, probe_timeout);
    drop(stalled);
    let probe_after = probe(addr, Duration::from_secs(5));
    SlowBodyOutcome {
        slow_clients: slow,
        probe_during,
        probe_after,
    }
}

/// Mode 3: 4 clients that announce a 2000-byte body and send 5 bytes pin all 4 `recv()`
/// workers (tiny_http reads bodies over 1024 bytes lazily, on the worker; even a worker that
/// does not read the body blocks when the request is dropped, as it drains the rest), so a
/// normal request gets no answer in 2 s. When they disconnect, service resumes.
#[test]
fn mode3_slow_bodies_block_workers() {
    let _g = serial();
    let server = bare_in_process();
    thread::sleep(Duration::from_millis(200));
    let out = slow_bodies(server.addr(), 4, Duration::from_secs(2));
    eprintln!("mode 3: {out:?}");
    assert_eq!(
        out.probe_during,
        Probe::TimedOut,
        "a normal request must time out while 4 slow bodies hold the 4 workers: {out:?}"
    );
    assert_eq!(out.probe_after, Probe::Answered(200), "{out:?}");
}

// ---------------------------------------------------------------------------------------------
// Mode 4: fd exhaustion ends accepting forever.
// ---------------------------------------------------------------------------------------------

/// What [`fd_exhaustion`] measured.
#[derive(Debug, Clone)]
pub struct FdExhaustionOutcome {
    /// A request before the flood.
    pub before: Probe,
    /// Connections the flood opened (the kernel completes handshakes into the backlog whether
    /// or not the server accepts them).
    pub opened: usize,
    pub server_fds_peak: usize,
    /// Server fds after the flood was closed again.
    pub server_fds_after: usize,
    /// Probes (new connection + request, 1 s each) after the flood was closed, and how they
    /// ended (`probes_refused` also counts resets and other errors: not served either).
    pub probes: usize,
    pub probes_answered: usize,
    pub probes_refused: usize,
    pub probes_timed_out: usize,
    /// Whether the server process was still alive at the end.
    pub alive: bool,
}

/// Mode 4 scenario: a request; then `open` idle connections at once (more than the server's fd
/// limit allows); then they are all closed and, after the server had time to release its fds,
/// `probes` fresh requests are tried one by one.
pub fn fd_exhaustion(
    addr: SocketAddr,
    pid: u32,
    open: usize,
    probes: usize,
) -> FdExhaustionOutcome {
    let before = probe(addr, Duration::from_secs(2));
    let mut flood = Vec::with_capacity(open);
    for _ in 0..open {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => flood.push(s),
            Err(_) => break,
        }
    }
    let opened = flood.len();
    let mut server_fds_peak = fds_of(pid);
    wait_until(Duration::from_secs(1), || {
        server_fds_peak = server_fds_peak.max(fds_of(pid));
        false
    });
    drop(flood);
    let mut server_fds_after = fds_of(pid);
    wait_until(Duration::from_secs(3), || {
        let now = fds_of(pid);
        let settled = now == server_fds_after;
        server_fds_after = now;
        settled && now < server_fds_peak
    });
    let mut out = FdExhaustionOutcome {
        before,
        opened,
        server_fds_peak,
        server_fds_after,
        probes,
        probes_answered: 0,
        probes_refused: 0,
        probes_timed_out: 0,
        alive: false,
    };
    for _ in 0..probes {
        match probe(addr, Duration::from_secs(1)) {
            Probe::Answered(_) => out.probes_answered += 1,
            Probe::TimedOut => out.probes_timed_out += 1,
            Probe::Refused | Probe::Failed(_) => out.probes_refused += 1,
        }
        thread::sleep(Duration::from_millis(200));
    }
    out.alive = alive(pid);
    out
}

/// Mode 4: a server limited to 64 fds gets 200 connections at once. At the limit its accept
/// thread dies (`try_clone().unwrap()` panics in `RefinedTcpStream::new`, or `accept()` fails
/// with EMFILE and the loop `break`s); the listener is dropped with it. After the flood is
/// gone and the fds are free again, no new request is ever answered, although the process is
/// alive.
#[test]
fn mode4_fd_exhaustion_stops_accepting_forever() {
    let _g = serial();
    let server = ChildServer::bare(Some(64), 60);
    let out = fd_exhaustion(server.addr, server.pid(), 200, 5);
    let stderr = server.stderr();
    let how = if stderr.contains("refined_tcp_stream.rs") {
        "accept thread panicked in refined_tcp_stream.rs (try_clone().unwrap())"
    } else if stderr.contains("recv error") {
        "accept() failed and the accept loop ended (error handed to recv())"
    } else {
        "no message on stderr"
    };
    eprintln!("mode 4: {out:?}\nmode 4: {how}\nchild stderr:\n{stderr}");
    assert_eq!(out.before, Probe::Answered(200), "{out:?}");
    assert!(out.server_fds_after < out.server_fds_peak, "{out:?}");
    assert_eq!(
        out.probes_answered, 0,
        "after fd exhaustion the port must serve no one: {out:?}"
    );
    assert!(out.alive, "the process must still be alive: {out:?}");
}

/// What [`listener_timeout_idle`] measured.
#[derive(Debug, Clone)]
pub struct ListenerTimeoutOutcome {
    pub before: Probe,
    /// Whether the server gave up on a half-sent request head within `idle` (closed it or
    /// answered it, e.g. 408).
    pub half_sent_closed: bool,
    /// A request after the server's listener had been idle for `idle`.
    pub after_idle: Probe,
    pub alive: bool,
}

/// Scenario for the would-be workaround of mode 2 (timeouts via the listener's `SO_RCVTIMEO`):
/// a request; a half-sent head held for `idle`; then, with no connection arriving for `idle`,
/// another request.
pub fn listener_timeout_idle(addr: SocketAddr, pid: u32, idle: Duration) -> ListenerTimeoutOutcome {
    let before = probe(addr, Duration::from_secs(2));
    let mut c = Conn::connect(addr, Duration::from_secs(2)).expect("connect");
    let _ = c.send(format!("{}X-Slow: ", signed_head(addr, 0)).as_bytes());
    thread::sleep(idle);
    let half_sent_closed = c.peer_gave_up();
    drop(c);
    let after_idle = probe(addr, Duration::from_secs(2));
    ListenerTimeoutOutcome {
        before,
        half_sent_closed,
        after_idle,
        alive: alive(pid),
    }
}

/// Mode 2, the trap in the obvious workaround: tiny_http has no timeout setting, but accepted
/// sockets inherit `SO_RCVTIMEO` from the listener (`Server::from_listener`). That does cut
/// off a half-sent head, but `accept()` obeys the same timeout: after 1 s without a new
/// connection it fails with EAGAIN, which tiny_http's accept loop treats as fatal
/// (`lib.rs:341-345`), so the port is dead from then on. Read timeouts need a tiny_http change.
#[test]
fn mode2_listener_timeout_workaround_kills_accept() {
    let _g = serial();
    let server = ChildServer::variant("bare-listener-timeout", None, 60);
    let out = listener_timeout_idle(server.addr, server.pid(), Duration::from_millis(2500));
    eprintln!(
        "mode 2 (listener SO_RCVTIMEO=1s): {out:?}\nchild stderr:\n{}",
        server.stderr()
    );
    assert_eq!(out.before, Probe::Answered(200), "{out:?}");
    assert!(
        out.half_sent_closed,
        "the inherited timeout does work per connection: {out:?}"
    );
    assert!(
        !matches!(out.after_idle, Probe::Answered(_)),
        "after an idle second accept() has timed out and the accept loop is gone: {out:?}"
    );
    assert!(out.alive, "{out:?}");
}

// ---------------------------------------------------------------------------------------------
// Extra (mode 5): a huge Content-Length aborts the process when the body is not read.
// ---------------------------------------------------------------------------------------------

/// What [`huge_content_length`] measured.
#[derive(Debug, Clone)]
pub struct HugeContentLengthOutcome {
    /// The answer to the request with the huge `Content-Length` (`TimedOut` or `Refused` when
    /// we hung up without waiting).
    pub answer: Probe,
    /// Whether the server process was alive 2 s later.
    pub alive_after: bool,
    /// A normal request after that.
    pub probe_after: Probe,
}

/// Scenario: one signed POST announcing `Content-Length: 99999999999999` (~100 TB) with 5 bytes
/// of body. With `hang_up` the client closes the connection 300 ms later instead of waiting
/// for an answer. Then: is the server alive, and does it answer a normal request?
pub fn huge_content_length(addr: SocketAddr, pid: u32, hang_up: bool) -> HugeContentLengthOutcome {
    let head = format!("{}\r\n<xml>", signed_head(addr, 99_999_999_999_999));
    let answer = match Conn::connect(addr, Duration::from_secs(3)).and_then(|mut c| {
        c.send(head.as_bytes())?;
        if hang_up {
            thread::sleep(Duration::from_millis(300));
            return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "hung up"));
        }
        c.recv()
    }) {
        Ok(r) => Probe::Answered(r.status),
        Err(e) if wxhttp::is_timeout(&e) => Probe::TimedOut,
        Err(e) if hang_up && e.kind() == io::ErrorKind::ConnectionAborted => Probe::Refused,
        Err(e) => Probe::Failed(e.to_string()),
    };
    let died = wait_until(Duration::from_secs(2), || !alive(pid));
    let probe_after = probe(addr, Duration::from_secs(2));
    HugeContentLengthOutcome {
        answer,
        alive_after: !died && alive(pid),
        probe_after,
    }
}

/// Extra mode 5 (a): a handler that rejects a request without reading its body (as wxmp does
/// for a bad signature) lets tiny_http drain the body when the `Request` is dropped, and
/// `EqualReader::drop` (`util/equal_reader.rs:70`) allocates `vec![0; remaining]` up front:
/// one request with `Content-Length: 99999999999999` aborts the whole process ("memory
/// allocation of 99999999999999 bytes failed").
#[test]
fn mode5_huge_content_length_unread_body_aborts_process() {
    let _g = serial();
    let server = ChildServer::variant("bare-noread", None, 60);
    let out = huge_content_length(server.addr, server.pid(), false);
    let stderr = server.stderr();
    eprintln!("mode 5 (handler does not read the body): {out:?}\nchild stderr:\n{stderr}");
    assert!(
        !out.alive_after,
        "the server process must have died: {out:?}"
    );
    assert!(
        stderr.contains("memory allocation of 99999999999999 bytes failed"),
        "{stderr}"
    );
    assert_eq!(out.probe_after, Probe::Refused, "{out:?}");
}

/// Extra mode 5 (b): reading the body does not help. The bare server's `read_to_end` blocks
/// until the client hangs up; at EOF tiny_http's `FusedReader` drops the `EqualReader`, whose
/// drop allocates the ~100 TB still missing: the process aborts.
#[test]
fn mode5_huge_content_length_client_hang_up_aborts_reading_server() {
    let _g = serial();
    let server = ChildServer::bare(None, 60);
    let out = huge_content_length(server.addr, server.pid(), true);
    let stderr = server.stderr();
    eprintln!("mode 5 (handler reads the body, client hangs up): {out:?}\nchild stderr:\n{stderr}");
    assert!(
        !out.alive_after,
        "the server process must have died: {out:?}"
    );
    assert!(stderr.contains("memory allocation of"), "{stderr}");
    assert_eq!(out.probe_after, Probe::Refused, "{out:?}");
}

// ---------------------------------------------------------------------------------------------
// The same scenarios against wxmp: it survives each.
// ---------------------------------------------------------------------------------------------

/// One signed POST on a new connection: its result and how long it took.
fn timed_probe(addr: SocketAddr) -> (Probe, Duration) {
    let start = Instant::now();
    let p = probe(addr, Duration::from_secs(2));
    (p, start.elapsed())
}

/// The slowest of `n` signed POSTs sent one after another, each of which must be answered 200.
fn slowest_of_probes(addr: SocketAddr, n: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let (p, took) = timed_probe(addr);
        assert_eq!(p, Probe::Answered(200), "a signed message must be answered");
        slowest = slowest.max(took);
    }
    slowest
}

/// Mode 1 against wxmp: a burst of 256 keep-alive connections right after start (when
/// WeChat's retries of everything missed during a restart arrive), and bursts of 64 after 6 s
/// of quiet (longer than tiny_http keeps a spare idle thread), are all served, the slowest
/// within 1.5 s (a bare server leaves them unread for good, above). Both bursts are larger than
/// the pool wxmp keeps warm (32 threads at start, 16 later), so tiny_http strands some of their
/// connections and wxmp's sweeper rescues them (`strands`: ~0.2 s on the dev machine).
#[test]
fn wxmp_mode1_keepalive_bursts_from_cold_are_all_served() {
    let _g = serial();
    let server = ChildServer::wxmp(None, "");
    let first = keepalive_burst(server.addr, 256, Duration::from_secs(3));
    assert_eq!(first.failed, 0, "{first:?}");
    assert_eq!(
        first.answered, 256,
        "burst of 256 right after start: {first:?}"
    );
    assert!(
        first.slowest_answer < Duration::from_millis(1500),
        "{first:?}"
    );
    let mut later = Vec::new();
    for _ in 0..2 {
        thread::sleep(Duration::from_secs(6));
        let out = keepalive_burst(server.addr, 64, Duration::from_secs(2));
        assert_eq!(out.answered, 64, "burst of 64 after 6 s of quiet: {out:?}");
        assert!(out.slowest_answer < Duration::from_millis(1500), "{out:?}");
        later.push(out);
    }
    eprintln!("wxmp mode 1: {first:?}\n{later:?}");
}

/// Mode 2 (and issue 6's slow-client defence) against wxmp: 1,000 connections holding
/// half-sent request heads, a tenth of them dripping a byte a second, and 10 slow bodies do not
/// delay a signed message past 100 ms.
#[test]
fn wxmp_mode2_1000_half_sent_heads_and_slow_bodies_do_not_delay_a_message() {
    let _g = serial();
    let server = ChildServer::wxmp(None, "");
    let mut idle = Vec::new();
    let mut drip = Vec::new();
    for i in 0..1000 {
        let mut c = Conn::connect(server.addr, Duration::from_secs(5)).expect("connect");
        if i % 100 == 0 {
            // Some slow bodies among them: the head is complete, the body never comes.
            c.send(format!("{}\r\n<xml>", signed_head(server.addr, 2000)).as_bytes())
                .expect("send head");
            idle.push(c);
        } else {
            c.send(format!("{}X-Slow: ", signed_head(server.addr, 0)).as_bytes())
                .expect("send partial head");
            if i % 10 == 1 {
                drip.push(c);
            } else {
                idle.push(c);
            }
        }
    }
    // The drippers send one more byte of their header every second while the messages go.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let dripper = thread::spawn(move || {
        let mut sent = 0;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            for c in drip.iter_mut() {
                let _ = c.send(b"a");
            }
            sent += 1;
            thread::sleep(Duration::from_secs(1));
        }
        (drip.len(), sent)
    });
    thread::sleep(Duration::from_millis(1500));
    let slowest = slowest_of_probes(server.addr, 5);
    thread::sleep(Duration::from_millis(1000));
    let slowest_later = slowest_of_probes(server.addr, 5);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (drippers, rounds) = dripper.join().expect("dripper");
    let threads = threads_of(server.pid());
    eprintln!(
        "wxmp mode 2: {} idle + {drippers} dripping ({rounds} bytes each) connections, \
         {threads} threads, slowest of 10 messages {:?}",
        idle.len(),
        slowest.max(slowest_later)
    );
    assert!(
        slowest.max(slowest_later) < Duration::from_millis(100),
        "a signed message took {:?} with 1000 slow clients connected",
        slowest.max(slowest_later)
    );
    drop(idle);
}

/// Mode 3 against wxmp: 10 clients announcing a 2000-byte body and sending 5 bytes leave its
/// 4 workers free (bodies still on the wire are read off the recv loop).
#[test]
fn wxmp_mode3_slow_bodies_leave_the_workers_free() {
    let _g = serial();
    let server = ChildServer::wxmp(None, "workers = 4");
    let out = slow_bodies(server.addr, 10, Duration::from_secs(2));
    assert_eq!(out.probe_during, Probe::Answered(200), "{out:?}");
    assert_eq!(out.probe_after, Probe::Answered(200), "{out:?}");
    let mut stalled = Vec::new();
    for _ in 0..10 {
        let mut c = Conn::connect(server.addr, Duration::from_secs(5)).expect("connect");
        c.send(format!("{}\r\n<xml>", signed_head(server.addr, 2000)).as_bytes())
            .expect("send head");
        stalled.push(c);
    }
    thread::sleep(Duration::from_millis(200));
    let slowest = slowest_of_probes(server.addr, 5);
    eprintln!("wxmp mode 3: {out:?}; slowest of 5 messages during 10 slow bodies: {slowest:?}");
    assert!(slowest < Duration::from_millis(100), "{slowest:?}");
}

/// tiny_http also leaves a small body unread when the request says `Connection: Upgrade` (in
/// any case), `Expect: 100-continue` or `Transfer-Encoding: chunked`: 10 of each with a
/// ~100-byte body stalled after 5 bytes leave wxmp's 4 workers free, as the 2000-byte bodies
/// above do.
#[test]
fn wxmp_upgrade_continue_and_chunked_requests_with_stalled_small_bodies_leave_the_workers_free() {
    let _g = serial();
    let server = ChildServer::wxmp(None, "workers = 4");
    let sized = signed_head(server.addr, 100);
    let heads = [
        format!("{sized}Connection: UpGrade\r\n\r\n<xml>"),
        format!("{sized}Expect: 100-continue\r\n\r\n<xml>"),
        format!(
            "{}Transfer-Encoding: chunked\r\n\r\n64\r\n<xml>",
            sized.replace("Content-Length: 100\r\n", "")
        ),
    ];
    let mut stalled = Vec::new();
    for head in &heads {
        for _ in 0..10 {
            let mut c = Conn::connect(server.addr, Duration::from_secs(5)).expect("connect");
            c.send(head.as_bytes()).expect("send head");
            stalled.push(c);
        }
    }
    thread::sleep(Duration::from_millis(300));
    let slowest = slowest_of_probes(server.addr, 5);
    eprintln!("slowest of 5 messages during 30 stalled small bodies: {slowest:?}");
    assert!(slowest < Duration::from_millis(100), "{slowest:?}");
}

/// Mode 4 against wxmp: at the fd limit tiny_http's accept loop dies; wxmp notices, logs why
/// and exits 70 so that systemd or Baota restart it, instead of living on with a dead port.
#[test]
fn wxmp_mode4_fd_exhaustion_ends_in_a_logged_restart_worthy_exit() {
    let _g = serial();
    let mut server = ChildServer::wxmp(Some(64), "");
    let out = fd_exhaustion(server.addr, server.pid(), 200, 1);
    let code = server.wait_exit(Duration::from_secs(45));
    let stderr = server.stderr();
    eprintln!("wxmp mode 4: {out:?}, exit {code:?}\nstderr:\n{stderr}");
    assert_eq!(out.before, Probe::Answered(200), "{out:?}");
    assert_eq!(code, Some(70), "wxmp must exit 70 (restart-worthy)");
    assert!(
        stderr.contains("exiting with status 70"),
        "the reason must be logged: {stderr}"
    );
}

/// The first line of the answer to a POST announcing `Content-Length: 99999999999999` with
/// 5 bytes of body, signed or not (wxmp answers a 413 head and leaves the connection open).
fn huge_content_length_status_line(addr: SocketAddr, sign: bool) -> String {
    let head = if sign {
        signed_head(addr, 99_999_999_999_999)
    } else {
        format!("POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999\r\n")
    };
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(format!("{head}\r\n<xml>").as_bytes())
        .expect("send");
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    text.lines().next().unwrap_or_default().to_string()
}

/// Mode 5 against wxmp: requests announcing a ~100 TB body, signed or not, waited for or hung
/// up on, are refused with 413 and wxmp lives on and answers the next message. (The 413 has no
/// length and the connection stays open: it is abandoned, not drained; see `server::abandon`.)
#[test]
fn wxmp_mode5_huge_content_length_is_refused_and_wxmp_lives() {
    let _g = serial();
    let server = ChildServer::wxmp(None, "");
    for sign in [true, false] {
        let line = huge_content_length_status_line(server.addr, sign);
        assert!(line.starts_with("HTTP/1.1 413"), "signed {sign}: {line:?}");
        assert!(alive(server.pid()));
        assert_eq!(timed_probe(server.addr).0, Probe::Answered(200));
    }
    let hung_up = huge_content_length(server.addr, server.pid(), true);
    assert!(hung_up.alive_after, "{hung_up:?}");
    assert_eq!(hung_up.probe_after, Probe::Answered(200), "{hung_up:?}");
    let stderr = server.stderr();
    assert!(
        stderr.contains("connection abandoned (3 so far"),
        "{stderr}"
    );
}

/// tiny_http sends a reply over ~1 KiB in two writes; without `TCP_NODELAY` the second waits
/// for the client's delayed ACK, 40 ms a reply on a kept-alive connection. wxmp sets it.
#[test]
fn wxmp_long_replies_on_a_kept_alive_connection_are_not_held_back() {
    let _g = serial();
    let long = "数".repeat(600); // 1800 bytes of UTF-8: the reply XML is about 2 KiB
    let server = ChildServer::wxmp(None, &format!("[reply]\ndefault = \"{long}\""));
    let mut c = Conn::connect(server.addr, Duration::from_secs(2)).expect("connect");
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let start = Instant::now();
        let r = c.round_trip(&signed(server.addr, true)).expect("answer");
        assert_eq!(r.status, 200);
        slowest = slowest.max(start.elapsed());
    }
    eprintln!("slowest of 10 long replies on one connection: {slowest:?}");
    assert!(slowest < Duration::from_millis(30), "{slowest:?}");
}
