//! The real nginx, configured from `deploy/nginx.conf`, in front of the real wxmp on loopback.
//!
//! The ssl lines are removed and `listen 443 ssl` becomes a free loopback port; everything else
//! (locations, proxy headers, timeouts, body limit) is the file as shipped. nginx runs as a child
//! process with its own prefix, pid, logs and temp folders. Without nginx this test FAILS and
//! says how to install it: the deployment it checks is the one the README recommends.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Finds the nginx binary: `WXMP_NGINX`, then `PATH`, then the usual sbin folders.
fn find_nginx() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WXMP_NGINX") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/sbin",
                "/usr/local/sbin",
                "/usr/local/nginx/sbin",
                "/sbin",
            ]
            .map(PathBuf::from),
        )
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
}

/// Installs Debian's nginx-light (or nginx). Runs at most once.
fn install_nginx() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if !apt_install("nginx-light") {
            apt_install("nginx");
        }
    });
}

/// The nginx binary, installing it first where that is possible.
fn nginx_binary() -> PathBuf {
    find_nginx()
        .or_else(|| {
            install_nginx();
            find_nginx()
        })
        .unwrap_or_else(|| {
            panic!(
                "nginx is not installed, and tests/nginx.rs checks deploy/nginx.conf with the \
                 real nginx. Install it: `apt-get install nginx-light` (or `nginx`) on \
                 Debian/Ubuntu, `yum install nginx` on CentOS (as root, the test does it \
                 itself). Or set WXMP_NGINX to the binary."
            )
        })
}

/// `deploy/nginx.conf` made runnable on loopback without TLS: ssl lines dropped, the first
/// `listen` on `port`, the upstream 127.0.0.1:8880 replaced by `upstream`.
fn adapt(conf: &str, port: u16, upstream: SocketAddr) -> String {
    let mut out = String::new();
    let mut listened = false;
    for line in conf.lines() {
        let t = line.trim_start();
        if t.starts_with("ssl_") {
            continue;
        }
        if t.starts_with("listen ") {
            if !listened {
                out.push_str(&format!("    listen 127.0.0.1:{port};\n"));
                listened = true;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(listened, "deploy/nginx.conf has no listen line");
    let upstreams = out.matches("http://127.0.0.1:8880/").count();
    assert!(
        upstreams >= 3,
        "deploy/nginx.conf should proxy /wx/, /wx and /wx_zhuxuebao to http://127.0.0.1:8880/"
    );
    let code: String = out
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!code.contains("ssl"), "ssl left in:\n{out}");
    out.replace("127.0.0.1:8880", &upstream.to_string())
}

/// `deploy/nginx.conf` as shipped, TLS included: only the port and the certificate paths
/// change (and the upstream, as in [`adapt`]).
fn adapt_tls(conf: &str, port: u16, upstream: SocketAddr, cert: &Path, key: &Path) -> String {
    let mut out = String::new();
    for line in conf.lines() {
        let t = line.trim_start();
        if t.starts_with("listen ") {
            out.push_str(&format!("    listen 127.0.0.1:{port} ssl;\n"));
        } else if t.starts_with("ssl_certificate ") {
            out.push_str(&format!("    ssl_certificate {};\n", cert.display()));
        } else if t.starts_with("ssl_certificate_key ") {
            out.push_str(&format!("    ssl_certificate_key {};\n", key.display()));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.replace("127.0.0.1:8880", &upstream.to_string())
}

/// A self-signed certificate for 127.0.0.1 and localhost, made with the openssl command:
/// `(cert, key)` in `dir`.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    ensure_command("openssl", "openssl");
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (apt-get install openssl) to make a test certificate");
    assert!(out.status.success(), "openssl: {out:?}");
    (cert, key)
}

/// A running nginx; stopped with SIGTERM (its workers go with it) when dropped.
struct Nginx {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Nginx {
    fn start(upstream: SocketAddr) -> Nginx {
        Nginx::start_with(upstream, None)
    }

    /// With `tls` = (cert, key): the shipped file with its TLS lines, on a free port.
    fn start_with(upstream: SocketAddr, tls: Option<(&Path, &Path)>) -> Nginx {
        let snippet = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.conf"),
        )
        .expect("read deploy/nginx.conf");
        Nginx::start_server(|port| match tls {
            Some((cert, key)) => adapt_tls(&snippet, port, upstream, cert, key),
            None => adapt(&snippet, port, upstream),
        })
    }

    /// nginx with the `server` block `server(port)` makes for a free port.
    fn start_server(server: impl Fn(u16) -> String) -> Nginx {
        let bin = nginx_binary();
        let version = Command::new(&bin).arg("-V").output().unwrap_or_else(|e| {
            panic!(
                "cannot run nginx at {}: {e}. Install nginx (`apt-get install nginx-light`) \
                     or set WXMP_NGINX to its binary",
                bin.display()
            )
        });
        let build = String::from_utf8_lossy(&version.stderr).to_string();
        let mut last_error = String::new();
        for _ in 0..5 {
            let dir = temp_dir("nginx");
            let port = free_port();
            let mut temp_paths = String::new();
            for kind in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                if !build.contains(&format!("--without-http_{kind}_module")) {
                    temp_paths.push_str(&format!(
                        "    {kind}_temp_path {};\n",
                        dir.join(format!("tmp-{kind}")).display()
                    ));
                }
            }
            let conf = format!(
                "worker_processes 1;\npid {pid};\nerror_log {log} info;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{\n    access_log {access};\n{temp_paths}\n{server}}}\n",
                pid = dir.join("nginx.pid").display(),
                log = dir.join("error.log").display(),
                access = dir.join("access.log").display(),
                server = server(port),
            );
            std::fs::write(dir.join("nginx.conf"), &conf).unwrap();
            let mut child = Command::new(&bin)
                .arg("-p")
                .arg(&dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    last_error = format!(
                        "nginx exited ({status}):\n{}\nconfig:\n{conf}",
                        std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Nginx { child, port, dir };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("nginx did not listen on port {port} within 10 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !last_error.contains("Address already in use") {
                break;
            }
        }
        panic!("{last_error}");
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP connection to `dst` from the loopback address `src` (Linux answers all of 127/8), so
/// the client's address differs from nginx's own 127.0.0.1 when it reaches wxmp.
fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(dst) = dst else {
        panic!("IPv4 only")
    };
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a fresh descriptor, which the TcpStream owns from the start
    // (so it is closed on every path); the sockaddr pointers are valid for `len` bytes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let local = sockaddr(src, 0);
        let rc = libc::bind(fd, (&raw const local).cast(), len);
        assert_eq!(rc, 0, "bind {src}: {}", std::io::Error::last_os_error());
        let remote = sockaddr(*dst.ip(), dst.port());
        let rc = libc::connect(fd, (&raw const remote).cast(), len);
        assert_eq!(rc, 0, "connect {dst}: {}", std::io::Error::last_os_error());
        stream
    }
}

/// One request from `src` through nginx.
fn request_from(src: Ipv4Addr, nginx: &Nginx, head: &str, body: &[u8]) -> Resp {
    let mut s = connect_from(src, SocketAddr::from(([127, 0, 0, 1], nginx.port)));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse_response(&raw)
}

/// `wxmp send ARGS` (bounded by its own --timeout); exit code and stdout + stderr.
fn wxmp_send(args: &[&str]) -> (i32, String) {
    let out = wxmp_command()
        .arg("send")
        // Defaults first: a later --token in `args` wins.
        .args(["--token", TOKEN, "--timeout", "5"])
        .args(args)
        .current_dir(temp_dir("nginx-send"))
        .env_remove("WXMP_CONFIG")
        .env_remove("WXMP_TOKEN")
        .output()
        .expect("run wxmp send");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn signed_message_through_nginx_is_answered_and_logged_with_the_real_client_address() {
    let w = Wxmp::start("");
    let nginx = Nginx::start(w.addr);
    let client = Ipv4Addr::new(127, 0, 0, 2);
    let body = text("oNginx", "你好 nginx");
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: example.com\r\nContent-Type: text/xml\r\n\
         X-Forwarded-For: 203.0.113.9\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        signed_query("/wx/", TOKEN),
        body.len()
    );
    let r = request_from(client, &nginx, &head, body.as_bytes());
    assert_text_reply(&r, "oNginx", DEFAULT_REPLY);
    // wxmp's peer is nginx (127.0.0.1); the log shows the client nginx saw, from X-Real-IP, not
    // the X-Forwarded-For value the client made up.
    assert!(
        w.wait_for_log("127.0.0.2 oNginx text \"你好 nginx\" -> text"),
        "wxmp log:\n{}\nnginx log:\n{}",
        w.stderr(),
        nginx.error_log()
    );
    assert!(!w.stderr().contains("203.0.113.9 oNginx"));
}

/// A reverse proxy made by a panel's form (Baota's 反向代理 among them) or copied from a
/// WebSocket guide sends every request with `Connection: upgrade`.
fn websocket_style_proxy(port: u16, upstream: SocketAddr) -> String {
    format!(
        "server {{\n    listen 127.0.0.1:{port};\n    server_name _;\n\
         location ^~ /wx/ {{\n\
             proxy_pass http://{upstream}/;\n\
             proxy_set_header Host $host;\n\
             proxy_set_header X-Real-IP $remote_addr;\n\
             proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             proxy_set_header REMOTE-HOST $remote_addr;\n\
             proxy_set_header Upgrade $http_upgrade;\n\
             proxy_set_header Connection \"upgrade\";\n\
             proxy_http_version 1.1;\n\
         }}\n}}\n"
    )
}

#[test]
fn a_websocket_style_proxy_gets_its_answers_at_once() {
    // tiny_http hands such a request's raw connection over as its body: read to its end, the
    // message waited until nginx gave up (504 after proxy_read_timeout, 60 s by default).
    let w = Wxmp::start("");
    let upstream = w.addr;
    let nginx = Nginx::start_server(|port| websocket_style_proxy(port, upstream));
    for i in 0..3 {
        let body = text("oPanel", &format!("面板 {i}"));
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            signed_query("/wx/", TOKEN),
            body.len()
        );
        let started = Instant::now();
        let r = request_from(Ipv4Addr::LOCALHOST, &nginx, &head, body.as_bytes());
        assert_text_reply(&r, "oPanel", DEFAULT_REPLY);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}; nginx log:\n{}",
            started.elapsed(),
            nginx.error_log()
        );
    }
}

#[test]
fn url_verification_passes_through_nginx() {
    let w = Wxmp::start("");
    let nginx = Nginx::start(w.addr);
    let (code, out) = wxmp_send(&["--url", &nginx.url("/wx/"), "--verify"]);
    assert_eq!(code, 0, "{out}\nnginx log:\n{}", nginx.error_log());
    assert!(out.contains("echoed the echostr"), "{out}");
    let (code, out) = wxmp_send(&["--url", &nginx.url("/wx/"), "--event", "subscribe"]);
    assert_eq!((code, out.trim()), (0, WELCOME), "{out}");
    // A wrong token is refused through nginx too.
    let (code, out) = wxmp_send(&[
        "--url",
        &nginx.url("/wx/"),
        "--verify",
        "--token",
        "notTheToken1",
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("403"), "{out}");
}

#[test]
fn the_other_paths_reach_wxmp_and_other_urls_do_not() {
    let w = Wxmp::start("");
    let nginx = Nginx::start(w.addr);
    for path in ["/wx", "/wx_zhuxuebao"] {
        let (code, out) = wxmp_send(&["--url", &nginx.url(path), "hi"]);
        assert_eq!((code, out.trim()), (0, DEFAULT_REPLY), "{path}: {out}");
    }
    let (code, out) = wxmp_send(&["--url", &nginx.url("/other/"), "hi"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("404"), "{out}");
}

#[test]
fn nginx_refuses_bodies_over_64_kib_before_wxmp_sees_them() {
    let w = Wxmp::start("");
    let nginx = Nginx::start(w.addr);
    let body = vec![b'a'; 100 * 1024];
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: example.com\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        signed_query("/wx/", TOKEN),
        body.len()
    );
    let r = request_from(Ipv4Addr::LOCALHOST, &nginx, &head, &body);
    assert_eq!(r.status, 413, "{r:?}");
    assert!(nginx
        .error_log()
        .contains("client intended to send too large body"));
    assert!(!w.stderr().contains("POST refused"), "{}", w.stderr());
}

/// What tiny_http cannot stop, nginx does (README, "Limits"): a 64 KiB header line and 400
/// header lines (40 KiB of head) are refused with 400, a `Content-Length` of 100 TB with 413, and none of them
/// reaches wxmp.
#[test]
fn nginx_refuses_oversized_heads_and_huge_content_length_before_wxmp() {
    let w = Wxmp::start("");
    let nginx = Nginx::start(w.addr);
    let query = signed_query("/wx/", TOKEN);
    let long_line = format!(
        "POST {query} HTTP/1.1\r\nHost: example.com\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let r = request_from(Ipv4Addr::LOCALHOST, &nginx, &long_line, b"");
    assert_eq!(r.status, 400, "a 64 KiB header line: {r:?}");
    let mut many = format!("POST {query} HTTP/1.1\r\nHost: example.com\r\n");
    for i in 0..400 {
        many.push_str(&format!("X-H{i}: {}\r\n", "v".repeat(100)));
    }
    many.push_str("Connection: close\r\n\r\n");
    let r = request_from(Ipv4Addr::LOCALHOST, &nginx, &many, b"");
    assert_eq!(r.status, 400, "400 header lines of 100 bytes: {r:?}");
    let huge = format!(
        "POST {query} HTTP/1.1\r\nHost: example.com\r\nContent-Length: 99999999999999\r\n\r\n"
    );
    let r = request_from(Ipv4Addr::LOCALHOST, &nginx, &huge, b"<xml>");
    assert_eq!(r.status, 413, "a 100 TB Content-Length: {r:?}");
    let stderr = w.stderr();
    assert!(
        !stderr.contains("refused") && !stderr.contains("abandoned"),
        "wxmp saw one of them: {stderr}"
    );
}

/// A client that sends half a request head and then nothing is cut off by nginx
/// (`client_header_timeout 10s`): tiny_http would keep its thread forever.
#[test]
fn nginx_cuts_off_a_half_sent_head() {
    let w = Wxmp::start("");
    let nginx = Nginx::start(w.addr);
    let mut s = connect_from(
        Ipv4Addr::LOCALHOST,
        SocketAddr::from(([127, 0, 0, 1], nginx.port)),
    );
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"POST /wx/ HTTP/1.1\r\nHost: example.com\r\nX-Slow: ")
        .unwrap();
    let start = Instant::now();
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    let took = start.elapsed();
    assert!(read.is_ok(), "nginx should close the connection: {read:?}");
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(14),
        "closed after {took:?}"
    );
}

/// The whole HTTPS path as deployed (deploy/nginx.conf with its TLS lines, a certificate the
/// client trusts): `wxmp send --verify` and a message against the https:// URL, through curl,
/// as the README's step 5 and deploy/baota.md tell the owner to check before WeChat's 提交.
#[test]
fn wxmp_send_checks_the_https_url_through_nginx_with_tls() {
    let w = Wxmp::start("");
    ensure_command("curl", "curl");
    let certs = temp_dir("tls");
    let (cert, key) = self_signed(&certs);
    let nginx = Nginx::start_with(w.addr, Some((&cert, &key)));
    let url = format!("https://127.0.0.1:{}/wx/", nginx.port);
    let cacert = ("CURL_CA_BUNDLE", cert.to_str().expect("utf-8 path"));
    let run = |args: &[&str]| {
        let out = wxmp_command()
            .arg("send")
            .args(["--token", TOKEN, "--url", &url])
            .args(args)
            .current_dir(temp_dir("https-send"))
            .env_remove("WXMP_CONFIG")
            .env_remove("WXMP_TOKEN")
            .env(cacert.0, cacert.1)
            .output()
            .expect("run wxmp send");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, stdout, stderr) = run(&["--verify"]);
    assert_eq!(code, 0, "{stdout}{stderr}\n{}", nginx.error_log());
    assert!(stdout.contains("echoed the echostr"), "{stdout}");
    let (code, stdout, stderr) = run(&["你好"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout.trim(), DEFAULT_REPLY);
    let (code, _, stderr) = run(&["--token", "wrongToken99", "--verify"]);
    assert_eq!(code, 1, "a wrong token must fail: {stderr}");
}
