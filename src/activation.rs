//! systemd socket activation: the listening socket a socket unit (`deploy/wxmp.socket`) hands to
//! wxmp. systemd keeps that socket open while wxmp restarts, so a connection made in between
//! waits in the socket's queue for the next process instead of being refused (nginx would answer
//! WeChat 502, which the user sees as "该公众号暂时无法提供服务").
//!
//! The protocol (`sd_listen_fds(3)`): `LISTEN_PID` is the process the sockets are for,
//! `LISTEN_FDS` how many were passed, numbered from fd 3.

use std::net::TcpListener;
use std::os::fd::{FromRawFd, RawFd};

/// The first socket systemd passes.
const FIRST_FD: RawFd = 3;

/// The protocol's environment variables: programs that wxmp runs must not inherit them.
pub const VARIABLES: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// The listening TCP socket systemd passed to this process: `Ok(None)` when none was passed
/// (wxmp was not started by a socket unit), `Err` when what was passed cannot be used. Takes
/// fd 3 for good: call it once.
pub fn inherited() -> Result<Option<TcpListener>, String> {
    let var = |name| std::env::var(name).ok();
    if !is_for_us(var("LISTEN_PID"), var("LISTEN_FDS"), std::process::id())? {
        return Ok(None);
    }
    check_listening_tcp(FIRST_FD)?;
    // SAFETY: fcntl on fd 3, which systemd opened for this process; F_SETFD takes an int.
    // Close-on-exec: the programs wxmp runs must not hold the socket.
    unsafe { libc::fcntl(FIRST_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: fd 3 is an open listening socket passed to this process (checked above), and
    // nothing else in wxmp owns it: this is the only place that takes it.
    Ok(Some(unsafe { TcpListener::from_raw_fd(FIRST_FD) }))
}

/// Whether `LISTEN_PID` and `LISTEN_FDS` pass one socket to the process `me`. Sockets meant for
/// another process (a parent that started wxmp) are not ours; more than one is an error, as
/// wxmp listens on one address.
fn is_for_us(pid: Option<String>, fds: Option<String>, me: u32) -> Result<bool, String> {
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(false);
    };
    if pid.trim().parse::<u32>().ok() != Some(me) {
        return Ok(false);
    }
    match fds.trim().parse::<u32>() {
        Ok(0) => Ok(false),
        Ok(1) => Ok(true),
        Ok(n) => Err(format!(
            "systemd passed {n} sockets (LISTEN_FDS); wxmp listens on one: give wxmp.socket a \
             single ListenStream="
        )),
        Err(_) => Err(format!("LISTEN_FDS={fds:?} is not a number")),
    }
}

/// Whether `fd` is a listening TCP socket (IPv4 or IPv6: it has a local port).
pub fn is_listening_tcp(fd: RawFd) -> bool {
    // SAFETY: SO_ACCEPTCONN is an int.
    let accepting: Option<libc::c_int> =
        unsafe { crate::strands::sockopt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) };
    crate::strands::is_stream(fd)
        && crate::strands::local_port(fd).is_some()
        && accepting == Some(1)
}

/// `Ok` when `fd` is a listening TCP socket, else what to change in wxmp.socket.
fn check_listening_tcp(fd: RawFd) -> Result<(), String> {
    if is_listening_tcp(fd) {
        Ok(())
    } else {
        Err(format!(
            "the socket systemd passed (fd {fd}) is not a listening TCP socket: wxmp.socket needs \
             ListenStream=127.0.0.1:8880 (an address and port)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn only_one_socket_for_this_very_process_is_taken() {
        assert_eq!(is_for_us(None, None, 7), Ok(false));
        assert_eq!(is_for_us(s("7"), None, 7), Ok(false));
        assert_eq!(is_for_us(None, s("1"), 7), Ok(false));
        assert_eq!(is_for_us(s("8"), s("1"), 7), Ok(false), "another process's");
        assert_eq!(is_for_us(s("x"), s("1"), 7), Ok(false));
        assert_eq!(is_for_us(s("7"), s("0"), 7), Ok(false));
        assert_eq!(is_for_us(s("7"), s("1"), 7), Ok(true));
        assert_eq!(is_for_us(s(" 7\n"), s("1 "), 7), Ok(true));
        assert!(is_for_us(s("7"), s("2"), 7)
            .unwrap_err()
            .contains("2 sockets"));
        assert!(is_for_us(s("7"), s("one"), 7)
            .unwrap_err()
            .contains("not a number"));
    }

    #[test]
    fn what_is_not_a_listening_tcp_socket_is_refused() {
        use std::os::fd::AsRawFd;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(check_listening_tcp(listener.as_raw_fd()), Ok(()));
        let connected = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(check_listening_tcp(connected.as_raw_fd()).is_err());
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(check_listening_tcp(file.as_raw_fd()).is_err());
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(check_listening_tcp(udp.as_raw_fd()).is_err());
    }
}
