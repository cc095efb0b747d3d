//! Hostile and slow clients, and resource exhaustion, against the real wxmp binary on a free
//! loopback port (review of 2026-12-02): a proxy's `Connection: upgrade`, a port whose accept
//! loop died, a stop held by a blocked worker, and the memory that refused bodies leave. Each
//! test failed on the build before its fix. They run one at a time (they measure the server's
//! memory and time its exit).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One test at a time: they count the server's threads, fds and memory.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A signed text message on a new connection: its status, or None when not answered in 2 s.
fn message(addr: SocketAddr) -> Option<u16> {
    let body = text("oUser", "hi");
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        signed_query("/", TOKEN),
        body.len()
    );
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("{head}{body}").as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    String::from_utf8_lossy(&raw)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
}

/// wxmp (`serve`) in a fresh folder with its open-file limit set to `nofile`.
fn start_limited(nofile: u64) -> Wxmp {
    let dir = config_dir("limited", "");
    Wxmp::start_prepared(&dir, &["serve", "--config", "wxmp.toml"], &[], |cmd| {
        // SAFETY: runs in the child between fork and exec; setrlimit is async-signal-safe and
        // the closure allocates nothing.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, move || {
                let rl = libc::rlimit {
                    rlim_cur: nofile as libc::rlim_t,
                    rlim_max: nofile as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
    })
}

/// When tiny_http's accept thread panics (at the fd limit `try_clone` fails after `accept`
/// took the last fd; past a task limit `thread::spawn` fails) no error reaches `recv()`: the
/// port refuses connections and only the watchdog's third failed probe, 20-30 s later, ends
/// wxmp. Whether the flood ends in that panic or in an accept error (which wxmp sees at once)
/// depends on the parity of the fds left free, so the flood is tried at four limits.
#[test]
fn a_dead_accept_loop_ends_wxmp_within_seconds() {
    let _g = serial();
    for nofile in [64, 65, 66, 67] {
        let mut w = start_limited(nofile);
        let mut held = Vec::new();
        let mut refused_at = None;
        for _ in 0..200 {
            match TcpStream::connect_timeout(&w.addr, Duration::from_secs(1)) {
                Ok(mut s) => {
                    let _ = s.write_all(b"GET / HTTP/1.1\r\nX-Slow: ");
                    held.push(s);
                }
                Err(_) => {
                    refused_at = Some(Instant::now());
                    break;
                }
            }
        }
        let refused_at = refused_at.expect("the fd limit must end accepting");
        let code = w.wait_exit(Duration::from_secs(40));
        let took = refused_at.elapsed();
        eprintln!(
            "RLIMIT_NOFILE {nofile}: {} held, exit {code:?} {took:?} after the port died",
            held.len()
        );
        assert_eq!(code, Some(70));
        assert!(
            took < Duration::from_secs(5),
            "the port was dead for {took:?}"
        );
    }
}

/// The watchdog's verdict on a wedged server must end the process: a client that pipelines
/// requests and reads no answer holds every worker in `respond`, and the stop that follows the
/// verdict must not wait for those workers (it did, for as long as the client stayed).
#[test]
fn the_watchdogs_exit_is_not_held_by_a_blocked_worker() {
    let _g = serial();
    let mut w = start_limited(4096);
    let s = {
        let sock = socket_with_small_rcvbuf(w.addr);
        sock.set_nonblocking(true).unwrap();
        sock
    };
    let one = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let burst: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * 20_000)
        .collect();
    let (mut sent, start) = (0, Instant::now());
    while sent < burst.len() && start.elapsed() < Duration::from_secs(5) {
        match (&s).write(&burst[sent..]) {
            Ok(n) => sent += n,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(message(w.addr), None, "the workers should be held by now");
    // Three probes 10 s apart, then a 4 s grace: the client still holds its connection.
    let code = w.wait_exit(Duration::from_secs(45));
    drop(s);
    assert_eq!(
        code,
        Some(70),
        "wxmp stayed up, wedged, after the watchdog's verdict"
    );
}

fn socket_with_small_rcvbuf(addr: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    // SAFETY: a fresh socket we own; setsockopt reads the int we pass; connect reads `sa`.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let small: libc::c_int = 4096;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const small).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let SocketAddr::V4(v4) = addr else {
            panic!("IPv4 expected")
        };
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            (&raw const sa).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

/// A proxy set up with the usual WebSocket lines (`proxy_set_header Connection "upgrade"`)
/// sends every message with `Connection: upgrade`. tiny_http then hands over the raw socket as
/// the body, and reading it "to the end" waited until the proxy gave up (504) instead of
/// stopping at `Content-Length`.
#[test]
fn a_message_sent_with_connection_upgrade_is_answered_at_once() {
    let _g = serial();
    let w = Wxmp::start("");
    let body = text("oUser", "hi");
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\
         Content-Length: {}\r\n\r\n",
        signed_query("/", TOKEN),
        body.len()
    );
    let mut s = TcpStream::connect(w.addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(format!("{head}{body}").as_bytes()).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0); // the client keeps its side open, as a proxy does
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        first.starts_with("HTTP/1.1 200"),
        "{first:?} after {:?}",
        start.elapsed()
    );
}

/// The same proxy passing on a chunked body (`proxy_request_buffering off` and a client that
/// sent chunks): tiny_http hands over the raw socket undecoded, so there is no length to stop
/// at. The chunks are read to the last one, the message answered at once, and a body over the
/// limit refused 413, while the proxy keeps its side open.
#[test]
fn a_chunked_message_sent_with_connection_upgrade_is_answered_at_once() {
    let _g = serial();
    let w = Wxmp::start("");
    let first_line = |body: &[u8], trailer: &str| {
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\
             Transfer-Encoding: chunked\r\n\r\n",
            signed_query("/", TOKEN)
        );
        let mut wire = head.into_bytes();
        // Two chunks (the first with an extension), then the last chunk and its trailers.
        let (a, b) = body.split_at(body.len() / 2);
        wire.extend_from_slice(format!("{:x};x=1\r\n", a.len()).as_bytes());
        wire.extend_from_slice(a);
        wire.extend_from_slice(format!("\r\n{:X}\r\n", b.len()).as_bytes());
        wire.extend_from_slice(b);
        wire.extend_from_slice(format!("\r\n0\r\n{trailer}\r\n").as_bytes());
        let mut s = TcpStream::connect(w.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(&wire).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0); // the proxy keeps its side open
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let body = text("oUser", "hi");
    assert_eq!(first_line(body.as_bytes(), ""), "HTTP/1.1 200 OK");
    assert_eq!(
        first_line(text("oUser", "again").as_bytes(), "X-Checked: 1\r\n"),
        "HTTP/1.1 200 OK"
    );
    let over = vec![b'x'; wxmp::server::MAX_BODY + 1];
    assert_eq!(first_line(&over, ""), "HTTP/1.1 413 Payload Too Large");
    assert_eq!(first_line(b"<xml>", ""), "HTTP/1.1 400 Bad Request");
}

/// Bodies over MAX_BODY and up to DRAIN_LIMIT are refused 413 and drained by tiny_http, whose
/// drain allocates the announced rest at once. With glibc's dynamic mmap threshold the second
/// such drain is calloc'ed from a thread arena and kept: 16 refused 60 MiB POSTs left ~250 MB
/// resident for good.
#[test]
fn refused_large_bodies_leave_no_resident_memory_behind() {
    let _g = serial();
    let w = Wxmp::start("");
    let before = proc_status_field(w.pid(), "VmRSS").unwrap_or(0);
    let len: usize = 60 << 20;
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let addr = w.addr;
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                let head = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
                let _ = s.write_all(head.as_bytes());
                let chunk = vec![b'x'; 1 << 16];
                let mut sent = 0;
                while sent < len && s.write_all(&chunk).is_ok() {
                    sent += chunk.len();
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    std::thread::sleep(Duration::from_secs(3));
    let after = proc_status_field(w.pid(), "VmRSS").unwrap_or(0);
    eprintln!("RSS {before} kB -> {after} kB");
    assert!(after < before + 64 * 1024, "RSS {before} kB -> {after} kB");
    assert_eq!(message(w.addr), Some(200));
}
