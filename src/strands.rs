//! Rescuing connections tiny_http left unread. Its task pool can queue a new connection while it
//! still counts an idle thread for it, and a queued connection waits until some other connection
//! closes, which for keep-alive clients may be never (docs/tiny_http-upstream.md, defect 1).
//!
//! Two facts of that pool make a rescue possible from outside it: a connection accepted while the
//! pool has no idle thread gets a new thread, and a thread whose connection ends takes the oldest
//! queued one. So the [`Sweeper`] looks for accepted connections holding received bytes that
//! nobody has read since they arrived [`STALE_AFTER`] ago (a served connection's thread reads
//! within microseconds, or a few milliseconds on a busy machine), and for each opens one
//! connection to the server and closes it at once: the thread started for it ends it at once and
//! picks up the stranded one. While nothing is stranded a look costs two system calls per open
//! file descriptor (tiny_http holds two per connection) every [`SWEEP_EVERY`]: ~20,000 a second
//! with 1,000 connections open, next to nothing on a quiet server. In exchange wxmp needs few
//! idle threads kept ready, each of which holds memory.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How often a server's sockets are looked at: a stranded connection waits at most about
/// `SWEEP_EVERY + STALE_AFTER`.
pub const SWEEP_EVERY: Duration = Duration::from_millis(200);

/// Received bytes still unread this long after they arrived mark a connection as stranded. Not
/// shorter: under full load on two cores a served connection's thread can wait ~20 ms for a CPU,
/// and whatever a false alarm costs (an idle thread for 5 s) is small.
pub const STALE_AFTER: Duration = Duration::from_millis(50);

/// Rescue connections a connection is given at most: a connection that stays unread after that
/// is not stranded but held by something the rescue cannot help (e.g. an abandoned request).
pub const MAX_RESCUES: u32 = 3;

/// Rescue connections opened by one sweep at most.
pub const MAX_PER_SWEEP: usize = 1024;

/// One accepted connection whose received bytes nobody has read yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unread {
    /// The socket's inode: the same connection in the next look (its fd may have been reused).
    pub inode: u64,
    /// Bytes received and not yet read.
    pub bytes: usize,
    /// How long ago the connection last received data (`TCP_INFO`): how long the unread bytes
    /// have waited, at least.
    pub waited: Duration,
}

/// The process's accepted TCP connections on local `port` with unread received bytes.
///
/// Reads `/proc/self/fd` and asks each socket (tiny_http holds two fds per connection; each
/// socket is counted once). A fd closed and reused meanwhile is at worst looked at as the new
/// socket it has become: every call here only reads.
pub fn unread_connections(port: u16) -> io::Result<Vec<Unread>> {
    let mut found: Vec<Unread> = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<libc::c_int>().ok())
        else {
            continue;
        };
        // Cheapest questions first: most fds are idle connections with nothing unread.
        let Some(inode) = socket_inode(fd) else {
            continue;
        };
        if found.iter().any(|u| u.inode == inode) {
            continue;
        }
        let bytes = match unread_bytes(fd) {
            Some(n) if n > 0 => n,
            _ => continue,
        };
        if !is_stream(fd) || local_port(fd) != Some(port) {
            continue;
        }
        if let Some(waited) = since_data_received(fd) {
            found.push(Unread {
                inode,
                bytes,
                waited,
            });
        }
    }
    Ok(found)
}

/// The inode of `fd` if it is a socket.
fn socket_inode(fd: libc::c_int) -> Option<u64> {
    // SAFETY: fstat writes only the stat struct we pass; a zeroed stat is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: any fd number may be passed; a closed one gives EBADF.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    (st.st_mode & libc::S_IFMT == libc::S_IFSOCK).then_some(st.st_ino)
}

/// Bytes received on `fd` and not yet read (`FIONREAD`); `None` for a listening socket.
fn unread_bytes(fd: libc::c_int) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer we pass.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } != 0 {
        return None;
    }
    usize::try_from(n).ok()
}

/// Socket option `name` at `level` of `fd`, read into a `T`.
///
/// # Safety
/// `T` must be the C type the option is (an integer or a plain struct), which is valid when
/// all zero and for which a shorter answer from an older kernel leaves the rest zero.
pub(crate) unsafe fn sockopt<T>(
    fd: libc::c_int,
    level: libc::c_int,
    name: libc::c_int,
) -> Option<T> {
    // SAFETY: the caller promises all-zero bytes are a valid T.
    let mut value: T = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<T>()).ok()?;
    // SAFETY: getsockopt writes at most `len` bytes into the value we pass.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&raw mut value).cast(), &mut len) };
    (rc == 0).then_some(value)
}

/// Whether `fd` is a stream (TCP) socket, not a datagram one that may share the port number.
pub(crate) fn is_stream(fd: libc::c_int) -> bool {
    // SAFETY: SO_TYPE is an int.
    let kind: Option<libc::c_int> = unsafe { sockopt(fd, libc::SOL_SOCKET, libc::SO_TYPE) };
    kind == Some(libc::SOCK_STREAM)
}

/// How long ago TCP socket `fd` last received data (`tcpi_last_data_recv`, milliseconds; the
/// field has been there since Linux 2.6).
fn since_data_received(fd: libc::c_int) -> Option<Duration> {
    // SAFETY: TCP_INFO is a struct tcp_info.
    let info: libc::tcp_info = unsafe { sockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO) }?;
    Some(Duration::from_millis(u64::from(info.tcpi_last_data_recv)))
}

/// The local port of an IPv4 or IPv6 socket.
pub(crate) fn local_port(fd: libc::c_int) -> Option<u16> {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into the storage we pass.
    if unsafe { libc::getsockname(fd, (&raw mut addr).cast(), &mut len) } != 0 {
        return None;
    }
    match libc::c_int::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is big enough for.
            let v4: libc::sockaddr_in = unsafe { std::ptr::read((&raw const addr).cast()) };
            Some(u16::from_be(v4.sin_port))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let v6: libc::sockaddr_in6 = unsafe { std::ptr::read((&raw const addr).cast()) };
            Some(u16::from_be(v6.sin6_port))
        }
        _ => None,
    }
}

/// Finds stranded connections of one server and rescues them: call [`Sweeper::sweep`] every
/// [`SWEEP_EVERY`].
pub struct Sweeper {
    port: u16,
    /// Where rescue connections go (loopback for a wildcard listen address).
    target: SocketAddr,
    /// Connections found stranded at the last look, with the rescues each has had.
    stranded: HashMap<u64, u32>,
}

impl Sweeper {
    /// A sweeper for the server listening on `listen`.
    pub fn new(listen: SocketAddr) -> Sweeper {
        Sweeper {
            port: listen.port(),
            target: crate::watchdog::probe_addr(listen),
            stranded: HashMap::new(),
        }
    }

    /// One look: every connection whose unread bytes have waited [`STALE_AFTER`] gets a rescue
    /// connection, at most [`MAX_RESCUES`] over the looks it stays so. Returns how many rescue
    /// connections were opened.
    pub fn sweep(&mut self) -> io::Result<usize> {
        let now = unread_connections(self.port)?;
        let mut stranded = HashMap::with_capacity(now.len());
        let mut rescued = 0;
        for u in now.iter().filter(|u| u.waited >= STALE_AFTER) {
            let mut given = self.stranded.get(&u.inode).copied().unwrap_or(0);
            if given < MAX_RESCUES && rescued < MAX_PER_SWEEP && self.rescue() {
                given += 1;
                rescued += 1;
            }
            stranded.insert(u.inode, given);
        }
        self.stranded = stranded;
        Ok(rescued)
    }

    /// Opens a connection to the server and closes it at once; false if it could not connect.
    fn rescue(&self) -> bool {
        TcpStream::connect_timeout(&self.target, Duration::from_millis(500)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::thread;
    use std::time::Instant;

    fn listener() -> (TcpListener, u16) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        (l, port)
    }

    #[test]
    fn a_connection_with_unread_bytes_is_found_once_and_gone_when_read() {
        let (l, port) = listener();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut accepted, _) = l.accept().unwrap();
        // Two fds for one socket, as tiny_http holds them: still one connection.
        let _twin = accepted.try_clone().unwrap();
        assert_eq!(unread_connections(port).unwrap(), vec![]);
        client.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut found = unread_connections(port).unwrap();
        while found.is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
            found = unread_connections(port).unwrap();
        }
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].bytes, 16);
        let mut buf = [0u8; 16];
        accepted.read_exact(&mut buf).unwrap();
        assert_eq!(unread_connections(port).unwrap(), vec![]);
    }

    /// Each connection holding unread bytes is one entry, known by its own socket's inode, on
    /// an IPv6 listener as on an IPv4 one (wxmp may listen on `[::]`).
    #[test]
    fn each_connection_with_unread_bytes_is_found_on_ipv4_and_ipv6() {
        for ip in ["127.0.0.1", "::1"] {
            let l = match TcpListener::bind((ip, 0)) {
                Ok(l) => l,
                Err(e) if ip == "::1" => {
                    eprintln!("no IPv6 loopback here ({e}): IPv4 only");
                    continue;
                }
                Err(e) => panic!("{e}"),
            };
            let port = l.local_addr().unwrap().port();
            let mut open = Vec::new();
            for n in 1..=2 {
                let mut client = TcpStream::connect((ip, port)).unwrap();
                let (accepted, _) = l.accept().unwrap();
                client.write_all(&vec![b'x'; n]).unwrap();
                open.push((client, accepted));
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut found = unread_connections(port).unwrap();
            while found.len() < 2 && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
                found = unread_connections(port).unwrap();
            }
            found.sort_by_key(|u| u.bytes);
            assert_eq!(
                found.iter().map(|u| u.bytes).collect::<Vec<_>>(),
                [1, 2],
                "{ip}: {found:?}"
            );
            assert_ne!(found[0].inode, found[1].inode, "{ip}");
        }
    }

    #[test]
    fn client_sockets_and_other_ports_are_not_counted() {
        let (l, port) = listener();
        let (_other, other_port) = listener();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut accepted, _) = l.accept().unwrap();
        // Bytes unread on the client's side of the connection are not the server's business.
        accepted.write_all(b"HTTP/1.1 200 OK\r\n").unwrap();
        thread::sleep(Duration::from_millis(50));
        assert_eq!(unread_connections(port).unwrap(), vec![]);
        client.write_all(b"x").unwrap();
        thread::sleep(Duration::from_millis(50));
        assert_eq!(unread_connections(other_port).unwrap(), vec![]);
        assert_eq!(unread_connections(port).unwrap().len(), 1);
    }

    /// A server that, like tiny_http's pool with every thread busy, accepts but never reads:
    /// the sweeper leaves fresh bytes alone, rescues the connection once they have waited
    /// STALE_AFTER, and gives up after MAX_RESCUES.
    #[test]
    fn a_connection_unread_for_stale_after_gets_a_rescue_and_at_most_three() {
        let (l, port) = listener();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_accepted, _) = l.accept().unwrap();
        l.set_nonblocking(true).unwrap();
        let mut sweeper = Sweeper::new(l.local_addr().unwrap());
        client.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        thread::sleep(Duration::from_millis(5));
        assert_eq!(
            sweeper.sweep().unwrap(),
            0,
            "bytes 5 ms old are not stranded"
        );
        thread::sleep(STALE_AFTER + Duration::from_millis(20));
        let found = unread_connections(port).unwrap();
        assert!(found[0].waited >= STALE_AFTER, "{found:?}");
        let mut rescues = Vec::new();
        for _ in 0..5 {
            rescues.push(sweeper.sweep().unwrap());
            // Each rescue connection reached the listener's backlog: nobody serves it here.
            let mut backlog = 0;
            while l.accept().is_ok() {
                backlog += 1;
            }
            assert_eq!(backlog, *rescues.last().unwrap());
        }
        assert_eq!(rescues, vec![1, 1, 1, 0, 0]);
    }
}
