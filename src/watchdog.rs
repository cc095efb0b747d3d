//! Keeping the process restart-worthy: tiny_http's accept loop can die while the process lives
//! on (an accept error ends it; at the fd limit its accept thread panics), leaving a port that
//! never answers and a supervisor that sees nothing wrong. The watchdog notices and says so, and
//! `wxmp serve` then exits non-zero so systemd or Baota restart it.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// The process's open-file limits (`RLIMIT_NOFILE`).
fn nofile() -> Result<libc::rlimit, String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!("getrlimit: {}", std::io::Error::last_os_error()));
    }
    Ok(lim)
}

/// Raises the soft open-file limit to the hard limit, so that a burst of connections meets the
/// largest limit the system allows. Returns `(before, after)`.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux x86_64, not everywhere
pub fn raise_fd_limit() -> Result<(u64, u64), String> {
    let mut lim = nofile()?;
    let before = lim.rlim_cur as u64;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
        }
    }
    Ok((before, lim.rlim_cur as u64))
}

/// The soft open-file limit, if it can be read.
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux x86_64, not everywhere
pub fn fd_limit() -> Option<u64> {
    nofile().ok().map(|lim| lim.rlim_cur as u64)
}

/// The address to probe a server listening on `listen`: a wildcard address becomes loopback.
pub fn probe_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// One self-probe: `GET /healthz` must answer `200 ok` within `timeout`.
pub fn probe(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: wxmp\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    s.take(4096)
        .read_to_end(&mut buf)
        .map_err(|e| format!("no answer: {e}"))?;
    let text = String::from_utf8_lossy(&buf);
    if text.starts_with("HTTP/1.1 200") && text.ends_with("ok") {
        Ok(())
    } else {
        Err(format!(
            "unexpected answer: {:?}",
            text.lines().next().unwrap_or_default()
        ))
    }
}

/// How often the watchdog checks that the server still holds its listening socket.
const LISTENER_LOOK_EVERY: Duration = Duration::from_secs(1);

/// Whether the listening socket the server was given as `fd` is gone: tiny_http's accept thread
/// owns it, and closes it when it ends (an error, or a panic when a thread or an fd could not be
/// had). Then `fd` is closed, or already the number of something else, which is not a listening
/// TCP socket. Asking the fd rather than connecting to the port also works when systemd holds
/// the socket (`crate::activation`): its queue takes connections whether wxmp accepts or not.
pub fn listener_gone(fd: RawFd) -> bool {
    !crate::activation::is_listening_tcp(fd)
}

/// A background thread probing `addr` every `interval`; after `failures` failed probes in a row
/// it records why in the returned slot. Every [`LISTENER_LOOK_EVERY`] it also checks that the
/// server still holds its listening socket `listener` ([`listener_gone`]), and records a lost
/// one at once. Stops when `stop` is set.
pub fn spawn(
    addr: SocketAddr,
    listener: RawFd,
    interval: Duration,
    failures: u32,
    stop: Arc<AtomicBool>,
) -> Arc<Mutex<Option<String>>> {
    let verdict = Arc::new(Mutex::new(None));
    let out = Arc::clone(&verdict);
    let spawned = thread::Builder::new()
        .name("wxmp-watchdog".into())
        .spawn(move || {
            let mut failed = 0;
            let mut next = Instant::now() + interval;
            let mut next_look = Instant::now() + LISTENER_LOOK_EVERY;
            while !stop.load(Ordering::SeqCst) {
                if Instant::now() >= next_look {
                    next_look = Instant::now() + LISTENER_LOOK_EVERY;
                    // Nothing brings a lost listener back: say so now, not 3 intervals later
                    // (no error reaches `recv` when tiny_http's accept thread panics).
                    if listener_gone(listener) {
                        *out.lock().unwrap_or_else(PoisonError::into_inner) = Some(format!(
                            "the listening socket of {addr} is closed: the accept loop ended \
                             (a panic in tiny_http's accept thread, see stderr)"
                        ));
                        return;
                    }
                }
                if Instant::now() < next {
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
                next = Instant::now() + interval;
                match probe(addr, Duration::from_secs(3)) {
                    Ok(()) => failed = 0,
                    Err(e) => {
                        failed += 1;
                        // The verdict first, the log line after: whatever holds the server
                        // back may hold logging back too, and the exit must not wait for it.
                        if failed >= failures {
                            *out.lock().unwrap_or_else(PoisonError::into_inner) = Some(format!(
                                "{addr} stopped answering ({failures} self-probes failed, last: \
                                 {e})"
                            ));
                        }
                        log::warn!(
                            "watchdog: self-probe of {addr} failed ({failed}/{failures}): {e}"
                        );
                        if failed >= failures {
                            return;
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the watchdog thread: {e}");
    }
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_is_probed_on_loopback() {
        let a: SocketAddr = "0.0.0.0:8880".parse().unwrap();
        assert_eq!(probe_addr(a), "127.0.0.1:8880".parse().unwrap());
        let b: SocketAddr = "[::]:80".parse().unwrap();
        assert_eq!(probe_addr(b), "[::1]:80".parse().unwrap());
        let c: SocketAddr = "127.0.0.2:1".parse().unwrap();
        assert_eq!(probe_addr(c), c);
        let d: SocketAddr = "[fd00::2]:8880".parse().unwrap();
        assert_eq!(probe_addr(d), d);
    }

    #[test]
    fn probe_of_a_closed_port_fails() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        assert!(probe(addr, Duration::from_millis(500)).is_err());
    }

    #[test]
    fn watchdog_reports_a_dead_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        // The server's own listening socket is still there: only the probes fail.
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&held);
        let stop = Arc::new(AtomicBool::new(false));
        let verdict = spawn(addr, fd, Duration::from_millis(50), 2, Arc::clone(&stop));
        let deadline = Instant::now() + Duration::from_secs(5);
        while verdict.lock().unwrap().is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        assert!(verdict
            .lock()
            .unwrap()
            .as_deref()
            .unwrap_or_default()
            .contains("stopped answering"));
    }

    #[test]
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux x86_64, not everywhere
    fn fd_limit_is_raised_to_hard() {
        // Started with a soft limit one under the hard one (a shell's `ulimit -Sn` below `-Hn`),
        // wxmp raises it to the hard one and says from what to what.
        let hard = nofile().unwrap().rlim_max;
        let lowered = libc::rlimit {
            rlim_cur: hard - 1,
            rlim_max: hard,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
        let hard = hard as u64;
        assert_eq!(fd_limit(), Some(hard - 1));
        assert_eq!(raise_fd_limit().unwrap(), (hard - 1, hard));
        assert_eq!(fd_limit(), Some(hard));
        // Already at the hard limit: nothing to raise.
        assert_eq!(raise_fd_limit().unwrap(), (hard, hard));
    }

    /// A server on loopback that gives the `n`th connection (from 0) the answer `answer(n)`
    /// and counts the connections it answered.
    fn fake_server(
        answer: impl Fn(usize) -> &'static str + Send + 'static,
    ) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&served);
        thread::spawn(move || {
            for (n, conn) in l.incoming().enumerate() {
                let Ok(mut conn) = conn else { continue };
                let mut request = [0u8; 1024];
                let _ = conn.read(&mut request);
                let _ = conn.write_all(answer(n).as_bytes());
                drop(conn);
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        (addr, served)
    }

    #[test]
    fn a_probe_wants_200_and_ok() {
        let (good, _) = fake_server(|_| "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(probe(good, Duration::from_secs(5)), Ok(()));
        let (not_ok, _) = fake_server(|_| "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbusy");
        let err = probe(not_ok, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err, "unexpected answer: \"HTTP/1.1 200 OK\"");
        let (not_200, _) = fake_server(|_| "HTTP/1.1 503 Busy\r\nContent-Length: 2\r\n\r\nok");
        let err = probe(not_200, Duration::from_secs(5)).unwrap_err();
        assert_eq!(err, "unexpected answer: \"HTTP/1.1 503 Busy\"");
    }

    #[test]
    fn the_server_is_probed_once_an_interval_not_over_and_over() {
        let (addr, served) = fake_server(|_| "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&held);
        let stop = Arc::new(AtomicBool::new(false));
        let interval = Duration::from_millis(100);
        let start = Instant::now();
        let verdict = spawn(addr, fd, interval, 2, Arc::clone(&stop));
        let deadline = Instant::now() + Duration::from_secs(20);
        while served.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        // A slow machine can only make the probes fewer: the k-th starts k intervals or more
        // after the start.
        let probes = served.load(Ordering::SeqCst);
        let elapsed = start.elapsed();
        stop.store(true, Ordering::SeqCst);
        assert!(probes >= 3, "the probes go on");
        assert!(
            probes as u128 <= elapsed.as_millis() / interval.as_millis(),
            "{probes} probes in {elapsed:?}"
        );
        assert_eq!(*verdict.lock().unwrap(), None);
    }

    #[test]
    fn one_failed_probe_among_good_ones_is_no_verdict() {
        // The second probe meets a server too busy to say ok; the ones before and after are
        // answered. Only `failures` failures in a row are a verdict.
        let (addr, served) = fake_server(|n| {
            if n == 1 {
                "HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy"
            } else {
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            }
        });
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&held);
        let stop = Arc::new(AtomicBool::new(false));
        let verdict = spawn(addr, fd, Duration::from_millis(20), 2, Arc::clone(&stop));
        let deadline = Instant::now() + Duration::from_secs(20);
        while served.load(Ordering::SeqCst) < 5 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        assert!(served.load(Ordering::SeqCst) >= 5, "the probes go on");
        assert_eq!(*verdict.lock().unwrap(), None);
        stop.store(true, Ordering::SeqCst);
    }
}
