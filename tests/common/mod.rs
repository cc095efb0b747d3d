//! Test helpers: start the real `wxmp` binary on a free loopback port and talk HTTP to it the
//! way WeChat does (signed GET and POST requests).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The token every test server is configured with.
pub const TOKEN: &str = "wxmpTestToken123";
/// The account id WeChat puts in `ToUserName`.
pub const ACCOUNT: &str = "gh_test";
/// The default reply of a server without commands.
pub const DEFAULT_REPLY: &str = "对不起，我没有看懂你的信息~";
/// The default welcome.
pub const WELCOME: &str = "感谢关注！";

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh, empty folder under the target directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A fresh folder holding a `wxmp.toml` with the test token, a loopback port chosen by the OS,
/// and `extra` lines.
pub fn config_dir(tag: &str, extra: &str) -> PathBuf {
    let dir = temp_dir(tag);
    let config = format!("token = \"{TOKEN}\"\nlisten = \"127.0.0.1:0\"\n{extra}\n");
    std::fs::write(dir.join("wxmp.toml"), config).expect("write config");
    dir
}

/// The environment variables wxmp reads (the first-run file names each).
pub const WXMP_ENV: [&str; 7] = [
    "WXMP_TOKEN",
    "WXMP_LISTEN",
    "WXMP_LOG_DIR",
    "WXMP_CONFIG",
    "WXMP_APP_ID",
    "WXMP_ENCODING_AES_KEY",
    "WXMP_PREVIOUS_ENCODING_AES_KEY",
];

/// The wxmp binary as a command, without any of the caller's `WXMP_*` variables: a test's
/// wxmp reads only the file and the variables the test sets (a developer's `WXMP_APP_ID`
/// would otherwise turn on safe mode, say).
pub fn wxmp_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wxmp"));
    without_wxmp_env(&mut cmd);
    cmd
}

/// Takes every `WXMP_*` variable of the caller's out of what `cmd` will inherit (all of them,
/// not only [`WXMP_ENV`]: a variable wxmp learns to read later is covered too).
pub fn without_wxmp_env(cmd: &mut Command) {
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("WXMP_") {
            cmd.env_remove(var);
        }
    }
}

/// `wxmp ARGS` run to its end in `dir`, without the caller's `WXMP_*` variables: its exit
/// code (`None`: ended by a signal), stdout and stderr.
pub fn run_wxmp(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = wxmp_command();
    cmd.args(args).current_dir(dir);
    let out = cmd.output().expect("run wxmp");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// A running wxmp process.
pub struct Wxmp {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its working directory (config file, log/).
    pub dir: PathBuf,
    stderr: Arc<Mutex<String>>,
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    /// A header's value by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Wxmp {
    /// Starts wxmp with `extra` appended to a config that sets the test token, a loopback port
    /// chosen by the OS and a log folder in a fresh directory.
    pub fn start(extra: &str) -> Wxmp {
        let dir = config_dir("wxmp", extra);
        Wxmp::start_in(&dir, &["serve", "--config", "wxmp.toml"], &[])
    }

    /// Starts wxmp in `dir` with `args` and `envs`, waiting for its "listening on" line.
    pub fn start_in(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Wxmp {
        Wxmp::start_prepared(dir, args, envs, |_| {})
    }

    /// Like [`Wxmp::start_in`], with `prepare` given the command before it is spawned (to set
    /// what the process inherits, e.g. a signal disposition in `pre_exec`).
    pub fn start_prepared(
        dir: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        prepare: impl FnOnce(&mut Command),
    ) -> Wxmp {
        Wxmp::start_program(env!("CARGO_BIN_EXE_wxmp"), dir, args, envs, prepare)
    }

    /// Like [`Wxmp::start_prepared`], running `program` with `args`: a launcher that goes on to
    /// run wxmp in its own place (such as `systemd-socket-activate`).
    pub fn start_program(
        program: &str,
        dir: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        prepare: impl FnOnce(&mut Command),
    ) -> Wxmp {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        without_wxmp_env(&mut cmd);
        cmd.envs(envs.iter().copied());
        prepare(&mut cmd);
        let mut child = cmd.spawn().expect("start wxmp");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("listening on ").nth(1) {
                    if let (Some(tx), Some(addr)) = (tx.take(), rest.split_whitespace().next()) {
                        let _ = tx.send(addr.to_string());
                    }
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a.parse().expect("listening address"),
            Err(_) => {
                let _ = child.kill();
                panic!("wxmp did not start; stderr:\n{}", log.lock().unwrap());
            }
        };
        Wxmp {
            child: Some(child),
            addr,
            dir: dir.to_path_buf(),
            stderr: log,
        }
    }

    /// The process id (for /proc/PID readings).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Everything wxmp wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr contains `needle` (up to 5 s); true when it did.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.stderr().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Waits until stderr holds `needle` at least `n` times (up to 5 s); the count it saw last.
    /// (wxmp answers first and logs after, so a line can trail its reply by a moment.)
    pub fn wait_for_count(&self, needle: &str, n: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let seen = self.stderr().matches(needle).count();
            if seen >= n || Instant::now() >= deadline {
                return seen;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `limit` for the process to exit on its own: its exit code (-1 when a signal
    /// ended it), or `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) with our own child's pid has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }

    /// Sends SIGTERM and waits (up to 10 s) for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("wxmp did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A raw HTTP request.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        http(
            self.addr,
            method,
            target,
            headers,
            body,
            Duration::from_secs(20),
        )
    }

    /// GET `target`.
    pub fn get(&self, target: &str) -> Resp {
        self.request("GET", target, &[], b"")
    }

    /// POST `body` with a valid signature for `TOKEN`.
    pub fn post_signed(&self, body: &str) -> Resp {
        self.request("POST", &signed_query("/", TOKEN), &[], body.as_bytes())
    }
}

impl Drop for Wxmp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// WeChat's signature over `parts`.
pub fn sign(parts: &[&str]) -> String {
    wxmp::signature::sign(parts)
}

static NONCE: AtomicUsize = AtomicUsize::new(1000);

/// `path?signature=…&timestamp=…&nonce=…&openid=…` signed with `token`.
pub fn signed_query(path: &str, token: &str) -> String {
    let ts = now().to_string();
    let nonce = NONCE.fetch_add(1, Ordering::SeqCst).to_string();
    format!(
        "{path}?signature={}&timestamp={ts}&nonce={nonce}&openid=oUser",
        sign(&[token, &ts, &nonce])
    )
}

/// Unix seconds now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// One HTTP/1.1 request on a fresh connection.
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Resp {
    try_http(addr, method, target, headers, body, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// [`http`], saying what went wrong instead of panicking (for client threads that count
/// failures).
pub fn try_http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<Resp, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| format!("read timeout: {e}"))?;
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        && (method == "POST" || !body.is_empty())
    {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("send head: {e}"))?;
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    try_parse_response(&raw)
}

/// Parses a full HTTP/1.1 response (body delimited by Content-Length or connection close).
pub fn parse_response(raw: &[u8]) -> Resp {
    try_parse_response(raw).unwrap_or_else(|e| panic!("{e}"))
}

/// [`parse_response`], saying what is wrong instead of panicking.
pub fn try_parse_response(raw: &[u8]) -> Result<Resp, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP response: {text:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status: {text:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let body = match len {
        Some(n) => body.get(..n).unwrap_or(body).to_string(),
        None => body.to_string(),
    };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// Builds an inbound message: `<xml>` with the common fields then `fields` (values in CDATA
/// unless they are numbers; an empty name inserts the value as raw XML).
pub fn msg(from: &str, msg_type: &str, fields: &[(&str, &str)]) -> String {
    let mut x = format!(
        "<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[{msg_type}]]></MsgType>",
        now()
    );
    for (k, v) in fields {
        if k.is_empty() {
            // Raw XML: nested elements such as ScanCodeInfo.
            x.push_str(v);
        } else if v.parse::<f64>().is_ok() {
            x.push_str(&format!("<{k}>{v}</{k}>"));
        } else {
            x.push_str(&format!("<{k}><![CDATA[{v}]]></{k}>"));
        }
    }
    x.push_str("</xml>");
    x
}

static MSG_ID: AtomicUsize = AtomicUsize::new(1);

/// A fresh MsgId, unique within this test process.
pub fn fresh_id() -> String {
    format!(
        "{}{:06}",
        std::process::id(),
        MSG_ID.fetch_add(1, Ordering::SeqCst)
    )
}

/// A text message from `from` with a fresh MsgId.
pub fn text(from: &str, content: &str) -> String {
    msg(
        from,
        "text",
        &[("Content", content), ("MsgId", &fresh_id())],
    )
}

/// A parsed passive reply: its `MsgType` and every leaf field by `Parent/Child` path.
#[derive(Debug)]
pub struct ParsedReply {
    pub fields: Vec<(String, String)>,
}

impl ParsedReply {
    /// A field's text.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a passive reply with a real XML parser, failing the test on malformed XML.
pub fn parse_reply(xml: &str) -> ParsedReply {
    let doc =
        roxmltree::Document::parse(xml).unwrap_or_else(|e| panic!("reply is not XML ({e}): {xml}"));
    assert_eq!(doc.root_element().tag_name().name(), "xml");
    let fields = wxmp::message::leaf_fields(doc.root_element())
        .unwrap_or_else(|e| panic!("reply nests too deep ({e}): {xml}"));
    ParsedReply { fields }
}

/// Asserts `resp` is a text reply to `from` whose content is `content`.
pub fn assert_text_reply(resp: &Resp, from: &str, content: &str) {
    assert_eq!(resp.status, 200, "{resp:?}");
    let r = parse_reply(&resp.body);
    assert_eq!(r.get("MsgType"), Some("text"), "{}", resp.body);
    assert_eq!(r.get("ToUserName"), Some(from));
    assert_eq!(r.get("FromUserName"), Some(ACCOUNT));
    let t: u64 = r
        .get("CreateTime")
        .and_then(|t| t.parse().ok())
        .expect("CreateTime is a number");
    assert!(t.abs_diff(now()) < 60, "CreateTime is now");
    assert_eq!(r.get("Content"), Some(content), "{}", resp.body);
}

/// The official sample account of WeChat's WXBizMsgCrypt (protocol reference §5).
pub const SAMPLE_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
/// The sample account's AppID.
pub const SAMPLE_APP_ID: &str = "wx2c2769f8efd9abc2";

/// Config lines that switch a test server to safe mode with the sample key.
pub fn safe_mode_config() -> String {
    format!("app_id = \"{SAMPLE_APP_ID}\"\nencoding_aes_key = \"{SAMPLE_KEY}\"\n")
}

/// The cipher a test client uses to talk to a safe-mode server.
pub fn sample_crypt() -> wxmp::crypto::MsgCrypt {
    wxmp::crypto::MsgCrypt::new(TOKEN, SAMPLE_KEY, SAMPLE_APP_ID).expect("sample key")
}

/// A safe-mode request the way WeChat sends it: `xml` encrypted into `<Encrypt>`, the query
/// carrying `signature`, `msg_signature` and `encrypt_type=aes`. With `compatible`, the plain
/// fields are sent beside `Encrypt` as in compatible mode.
pub fn safe_request(
    crypt: &wxmp::crypto::MsgCrypt,
    xml: &str,
    compatible: bool,
) -> (String, String) {
    let encrypt = crypt.encrypt(xml).expect("encrypt");
    let ts = now().to_string();
    let nonce = NONCE.fetch_add(1, Ordering::SeqCst).to_string();
    let query = format!(
        "/?signature={}&timestamp={ts}&nonce={nonce}&openid=oUser&encrypt_type=aes&msg_signature={}",
        sign(&[TOKEN, &ts, &nonce]),
        sign(&[TOKEN, &ts, &nonce, &encrypt])
    );
    let body = if compatible {
        xml.replacen(
            "</xml>",
            &format!("<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"),
            1,
        )
    } else {
        format!("<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>")
    };
    (query, body)
}

/// Checks an encrypted reply's signature and returns the inner reply XML.
pub fn open_reply(crypt: &wxmp::crypto::MsgCrypt, body: &str) -> String {
    let r = wxmp::crypto::parse_encrypted_reply(body)
        .unwrap_or_else(|e| panic!("not an encrypted reply ({e}): {body}"));
    crypt
        .verify_and_decrypt(&r.msg_signature, &r.timestamp, &r.nonce, &r.encrypt)
        .unwrap_or_else(|e| panic!("encrypted reply does not verify: {e}"))
}

/// A `Key:   value kB` line of `/proc/PID/status` (`key` without the colon): its number.
pub fn proc_status_field(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Installs a Debian package when we are root on a machine with apt-get, so that `cargo test`
/// sets up what it needs on a fresh Debian machine (as `.ci/run` does); whether it did. Installs
/// run one at a time, after one `apt-get update`.
pub fn apt_install(package: &str) -> bool {
    static APT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || !Path::new("/usr/bin/apt-get").exists() {
        return false;
    }
    let mut updated = APT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !*updated {
        *updated = apt(&["update", "-qq"]);
    }
    eprintln!("tests: installing {package} with apt-get");
    apt(&["install", "-y", "-qq", package])
}

/// Makes sure the `command` (openssl, curl, systemd-socket-activate) can be run, installing the
/// Debian `package` that has it where possible; a test that then still cannot run it fails
/// saying so.
pub fn ensure_command(command: &str, package: &str) {
    let runs = || {
        Command::new(command)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if !runs() {
        apt_install(package);
    }
}
