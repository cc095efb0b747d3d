//! Rescuing connections tiny_http left unread. Its task pool can queue a new connection while it
//! still counts an idle thread for it, and a queued connection waits until some other connection
//! closes, which for keep-alive clients may be never (docs/tiny_http-upstream.md, defect 1).
//!
//! Two facts of that pool make a rescue possible from outside it: a connection accepted while the
//! pool has no idle thread gets a new thread, and a thread whose connection ends takes the oldest
//! queued one. So the [`Sweeper`] looks for accepted connections whose received bytes stay
//! unread, and for each opens one connection to the server and closes it at once: the thread
//! started for it ends it at once and picks up the stranded one. This costs nothing while
//! nothing is stranded (a look at the process's own sockets every few hundred milliseconds), so
//! wxmp needs few idle threads kept ready, each of which holds memory.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How often a server's sockets are looked at.
pub const SWEEP_EVERY: Duration = Duration::from_millis(200);

/// When a look finds a connection unread for the first time, the next look comes this soon: a
/// stranded connection waits about `SWEEP_EVERY + CONFIRM_AFTER` at most.
pub const CONFIRM_AFTER: Duration = Duration::from_millis(20);

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
        if is_stream(fd) && local_port(fd) == Some(port) {
            found.push(Unread { inode, bytes });
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

/// Whether `fd` is a stream (TCP) socket, not a datagram one that may share the port number.
fn is_stream(fd: libc::c_int) -> bool {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_TYPE writes one int; `len` says how much room it has.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&raw mut kind).cast(),
            &mut len,
        )
    };
    rc == 0 && kind == libc::SOCK_STREAM
}

/// The local port of an IPv4 or IPv6 socket.
fn local_port(fd: libc::c_int) -> Option<u16> {
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

/// What one [`Sweeper::sweep`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sweep {
    /// Rescue connections opened.
    pub rescued: usize,
    /// Connections unread for the first time at this look: look again after [`CONFIRM_AFTER`].
    pub suspects: usize,
}

impl Sweep {
    /// How long to wait before the next look.
    pub fn next_look(&self) -> Duration {
        if self.suspects > 0 {
            CONFIRM_AFTER
        } else {
            SWEEP_EVERY
        }
    }
}

/// Finds stranded connections of one server and rescues them: call [`Sweeper::sweep`] again
/// after [`Sweep::next_look`].
pub struct Sweeper {
    port: u16,
    /// Where rescue connections go (loopback for a wildcard listen address).
    target: SocketAddr,
    /// Connections unread at the last look, with the rescues each has had.
    unread: HashMap<u64, u32>,
}

impl Sweeper {
    /// A sweeper for the server listening on `listen`.
    pub fn new(listen: SocketAddr) -> Sweeper {
        Sweeper {
            port: listen.port(),
            target: crate::watchdog::probe_addr(listen),
            unread: HashMap::new(),
        }
    }

    /// One look: a connection unread at this look and the one before is taken as stranded (a
    /// thread serving its connection reads within microseconds) and gets a rescue connection.
    pub fn sweep(&mut self) -> io::Result<Sweep> {
        let now = unread_connections(self.port)?;
        let mut next = HashMap::with_capacity(now.len());
        let mut done = Sweep::default();
        for u in now {
            let given = match self.unread.get(&u.inode) {
                None => {
                    done.suspects += 1;
                    0
                }
                Some(&n) if n < MAX_RESCUES && done.rescued < MAX_PER_SWEEP && self.rescue() => {
                    done.rescued += 1;
                    n + 1
                }
                Some(&n) => n,
            };
            next.insert(u.inode, given);
        }
        self.unread = next;
        Ok(done)
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
    /// the sweeper rescues a connection unread at two looks running, at most MAX_RESCUES times.
    #[test]
    fn a_connection_unread_at_two_looks_gets_a_rescue_and_at_most_three() {
        let (l, port) = listener();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_accepted, _) = l.accept().unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        thread::sleep(Duration::from_millis(50));
        let mut sweeper = Sweeper::new(l.local_addr().unwrap());
        let first = sweeper.sweep().unwrap();
        assert_eq!(
            first,
            Sweep {
                rescued: 0,
                suspects: 1
            },
            "first look: not yet taken as stranded"
        );
        assert_eq!(first.next_look(), CONFIRM_AFTER);
        let mut rescues = Vec::new();
        for _ in 0..5 {
            let sweep = sweeper.sweep().unwrap();
            assert_eq!((sweep.suspects, sweep.next_look()), (0, SWEEP_EVERY));
            rescues.push(sweep.rescued);
            // The rescue connections reach the listener's backlog; nobody serves them here.
            l.set_nonblocking(true).unwrap();
            while l.accept().is_ok() {}
        }
        assert_eq!(rescues, vec![1, 1, 1, 0, 0]);
    }
}
