//! Soak test (project issue 6): the real wxmp binary under mixed WeChat-like load for minutes,
//! with a crawler rewriting a `file` command's data, slow `exec` commands driven through
//! WeChat's retries and SIGHUP reloads every ~10 s, while wxmp's RSS, open fds and threads are
//! sampled every 5 s. Every request's outcome is counted and checked; see docs/soak.md.
//!
//! ```sh
//! cargo test --release --test soak -- --ignored --nocapture                     # 600 s
//! WXMP_SOAK_SECS=60 cargo test --release --test soak -- --ignored --nocapture   # quick
//! ```
//!
//! Knobs (environment): `WXMP_SOAK_SECS` (default 600), `WXMP_SOAK_THREADS` (client threads,
//! default 16, 3 of them drive slow commands), `WXMP_SOAK_PAUSE_MS` (each fast client's pause
//! between requests, default 20; 0 loads wxmp as fast as the clients can).

mod common;
use common::*;
use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use wxmp::pending::{LATE_PREFIX, NOTICE};

/// The two reply texts the reloads alternate between (the configs differ in nothing else).
const PONG_A: &str = "pong A";
const PONG_B: &str = "pong B";

/// WeChat gives up on a try after 5 s.
const WECHAT_TIMEOUT: Duration = Duration::from_secs(5);

/// How many client threads drive slow commands (the rest send the fast mix).
const SLOW_CLIENTS: usize = 3;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------- site and config

/// The whole config: safe mode on (plain requests are still answered plain), the `ping` reply
/// text `pong`, and with `broken` an unknown key that a reload must refuse.
fn config_text(pong: &str, broken: bool) -> String {
    let typo = if broken { "repyl = \"typo\"\n" } else { "" };
    format!(
        r#"token = "{TOKEN}"
listen = "127.0.0.1:0"
{safe}
[[command]]
name = "ping"
reply = "{pong}"
{typo}
[[command]]
name = "新闻"
file = "data/news.txt"

[[command]]
prefix = "快"
exec = ["./fast.sh", "{{args}}"]

[[command]]
prefix = "很慢"
exec = ["./slow.sh", "12", "{{args}}"]
timeout = 14

[[command]]
prefix = "慢"
exec = ["./slow.sh", "6", "{{args}}"]
timeout = 10

[[command]]
event = "CLICK"
key = "TODAY"
reply = "今天：{{content}}"
"#,
        safe = safe_mode_config()
    )
}

/// Writes `text` to `path` the way a crawler should: whole, then renamed into place.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// The news file's text for version `k` (its size varies with `k`).
fn news_text(k: u64) -> String {
    format!(
        "新闻第{k}期\n{}",
        "头条：爬虫抓到的新闻 ".repeat(1 + (k % 7) as usize * 4)
    )
    .trim_end()
    .to_string()
}

fn script(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod script");
}

// ---------------------------------------------------------------- /proc readings

#[derive(Clone, Copy, Debug)]
struct Sample {
    secs: f64,
    rss_kib: u64,
    fds: u64,
    threads: u64,
    kinds: FdKinds,
}

/// What a sample's open fds were, so that a count over the limit can be told apart: a leak of
/// files or pipes, connections the clients closed and wxmp did not (CLOSE_WAIT), or a burst of
/// live ones.
#[derive(Clone, Copy, Debug, Default)]
struct FdKinds {
    /// TCP sockets by state (from the process's `/proc/PID/net/tcp` and `tcp6`).
    listening: u64,
    established: u64,
    close_wait: u64,
    other_tcp: u64,
    /// Sockets not found in those tables (e.g. Unix sockets).
    other_sockets: u64,
    pipes: u64,
    /// Regular files and everything else (`/dev/null`, eventfds, ...).
    files: u64,
}

impl std::fmt::Display for FdKinds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TCP listening {}, established {}, close-wait {}, other states {}; other sockets {}; \
             pipes {}; files and others {}",
            self.listening,
            self.established,
            self.close_wait,
            self.other_tcp,
            self.other_sockets,
            self.pipes,
            self.files
        )
    }
}

/// The TCP state (`st`, hex) of every socket inode in `/proc/PID/net/tcp{,6}`.
fn tcp_states(pid: u32) -> std::collections::HashMap<u64, u8> {
    let mut states = std::collections::HashMap::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let (Some(st), Some(inode)) = (fields.get(3), fields.get(9)) {
                if let (Ok(st), Ok(inode)) = (u8::from_str_radix(st, 16), inode.parse()) {
                    states.insert(inode, st);
                }
            }
        }
    }
    states
}

fn fd_kinds(pid: u32) -> (u64, FdKinds) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, FdKinds::default());
    };
    let links: Vec<String> = dir
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    let states = tcp_states(pid);
    let mut k = FdKinds::default();
    for link in &links {
        let inode = |prefix: &str| -> Option<u64> {
            link.strip_prefix(prefix)?.strip_suffix(']')?.parse().ok()
        };
        if let Some(inode) = inode("socket:[") {
            match states.get(&inode) {
                Some(0x0A) => k.listening += 1,
                Some(0x01) => k.established += 1,
                Some(0x08) => k.close_wait += 1,
                Some(_) => k.other_tcp += 1,
                None => k.other_sockets += 1,
            }
        } else if inode("pipe:[").is_some() {
            k.pipes += 1;
        } else {
            k.files += 1;
        }
    }
    (links.len() as u64, k)
}

fn sample(pid: u32, since: Instant) -> Sample {
    let (fds, kinds) = fd_kinds(pid);
    Sample {
        secs: since.elapsed().as_secs_f64(),
        rss_kib: proc_status_field(pid, "VmRSS").unwrap_or(0),
        fds,
        threads: proc_status_field(pid, "Threads").unwrap_or(0),
        kinds,
    }
}

// ---------------------------------------------------------------- HTTP as WeChat speaks it

#[derive(Debug)]
enum Fail {
    /// No complete answer within the client's timeout (WeChat then drops the connection).
    Timeout,
    Other(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Timeout => write!(f, "no answer within the timeout"),
            Fail::Other(why) => write!(f, "{why}"),
        }
    }
}

/// One request on a fresh connection (as nginx, in front of wxmp, opens one per request);
/// the whole exchange must finish within `timeout`.
fn exchange(
    addr: SocketAddr,
    method: &str,
    target: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Resp, Fail> {
    let deadline = Instant::now() + timeout;
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| Fail::Other(format!("connect: {e}")))?;
    let _ = s.set_write_timeout(Some(timeout));
    let length = if method == "POST" {
        format!("Content-Length: {}\r\n", body.len())
    } else {
        String::new()
    };
    let head =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{length}\r\n");
    s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(body))
        .map_err(|e| Fail::Other(format!("send: {e}")))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Fail::Timeout);
        }
        let _ = s.set_read_timeout(Some(left));
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(Fail::Timeout)
            }
            Err(e) => return Err(Fail::Other(format!("read: {e}"))),
        }
    }
    if raw.is_empty() {
        return Err(Fail::Other("connection closed without a response".into()));
    }
    if !raw.starts_with(b"HTTP/1.") || !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        return Err(Fail::Other(format!(
            "not an HTTP response: {:?}",
            String::from_utf8_lossy(&raw)
        )));
    }
    let resp = parse_response(&raw);
    if let Some(n) = resp
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        if n != resp.body.len() {
            return Err(Fail::Other(format!(
                "truncated body: {} of {n} bytes",
                resp.body.len()
            )));
        }
    }
    Ok(resp)
}

/// The `Content` of a well-formed text reply to `from`, or why it is not one.
fn reply_text(resp: &Resp, from: &str) -> Result<String, String> {
    if resp.status != 200 {
        return Err(format!("status {}: {:?}", resp.status, resp.body));
    }
    let doc = roxmltree::Document::parse(&resp.body)
        .map_err(|e| format!("reply is not XML ({e}): {:?}", resp.body))?;
    if doc.root_element().tag_name().name() != "xml" {
        return Err(format!("root is not <xml>: {:?}", resp.body));
    }
    let fields = wxmp::message::leaf_fields(doc.root_element())
        .map_err(|e| format!("reply nests too deep ({e}): {:?}", resp.body))?;
    let get = |k: &str| {
        fields
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.as_str())
    };
    let created = get("CreateTime").and_then(|t| t.parse::<u64>().ok());
    if get("MsgType") != Some("text")
        || get("ToUserName") != Some(from)
        || get("FromUserName") != Some(ACCOUNT)
        || created.is_none_or(|t| t.abs_diff(now()) >= 120)
    {
        return Err(format!("not a text reply to {from}: {:?}", resp.body));
    }
    Ok(get("Content").unwrap_or_default().to_string())
}

// ---------------------------------------------------------------- shared state and counts

#[derive(Default)]
struct Counts {
    /// Outcomes by `kind: outcome`.
    outcomes: BTreeMap<String, u64>,
    /// Latencies (µs) of answered requests by kind.
    latencies: BTreeMap<&'static str, Vec<u32>>,
    failures: u64,
    /// The first failures, in words.
    examples: Vec<String>,
}

/// What the `ping` command may answer: the reply in force, and during a reload the new one.
struct PingState {
    current: &'static str,
    next: Option<&'static str>,
}

impl PingState {
    fn allowed(&self) -> Vec<&'static str> {
        let mut v = vec![self.current];
        v.extend(self.next);
        v
    }
}

struct Shared {
    w: Wxmp,
    dir: PathBuf,
    deadline: Instant,
    start: Instant,
    pause: Duration,
    counts: Mutex<Counts>,
    ping: Mutex<PingState>,
    /// The news file's version, stored after each rename.
    news: AtomicU64,
    seq: AtomicU64,
    /// Tags of every slow command sent (each must run exactly once).
    slow_tags: Mutex<Vec<String>>,
    samples: Mutex<Vec<Sample>>,
}

impl Shared {
    fn ok(&self, kind: &'static str, outcome: &str, took: Option<Duration>) {
        let mut c = self.counts.lock().expect("counts");
        *c.outcomes.entry(format!("{kind}: {outcome}")).or_default() += 1;
        if let Some(t) = took {
            let us = t.as_micros().min(u32::MAX as u128) as u32;
            c.latencies.entry(kind).or_default().push(us);
        }
    }

    fn fail(&self, kind: &'static str, why: String) {
        let mut c = self.counts.lock().expect("counts");
        *c.outcomes.entry(format!("{kind}: FAILED")).or_default() += 1;
        c.failures += 1;
        let at = self.start.elapsed().as_secs_f64();
        if c.examples.len() < 30 {
            eprintln!("soak failure at {at:.1}s: {kind}: {why}");
            c.examples.push(format!("{at:.1}s {kind}: {why}"));
        }
    }

    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn ping_allowed(&self) -> Vec<&'static str> {
        self.ping.lock().expect("ping state").allowed()
    }

    /// A signed POST of `body`, given up on after `timeout` like WeChat.
    fn post(&self, body: &str, timeout: Duration) -> Result<Resp, Fail> {
        self.post_to(&signed_query("/", TOKEN), body, timeout)
    }

    /// [`Shared::post`] to a given signed `target` (a retry may reuse its first try's URL).
    fn post_to(&self, target: &str, body: &str, timeout: Duration) -> Result<Resp, Fail> {
        exchange(self.w.addr, "POST", target, body.as_bytes(), timeout)
    }

    /// Sleeps `d`, waking early at the deadline; false once the deadline has passed.
    fn nap(&self, d: Duration) -> bool {
        let until = (Instant::now() + d).min(self.deadline);
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
        }
        Instant::now() < self.deadline
    }
}

/// A small xorshift generator (deterministic per thread).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

// ---------------------------------------------------------------- the fast mix

/// What a message must be answered with.
enum Expect {
    /// A text reply with exactly this content.
    Text(String),
    /// The `ping` reply: one of those allowed when it was sent or when it was answered.
    Pong(Vec<&'static str>),
    /// The news file at a version at least this one (and at most the version after the answer).
    News(u64),
    /// The plain body `success`.
    Success,
}

/// Checks `resp` against `expect`; Ok names the outcome.
fn check(sh: &Shared, resp: &Resp, from: &str, expect: &Expect) -> Result<&'static str, String> {
    match expect {
        Expect::Success => {
            if resp.status == 200 && resp.body == "success" {
                Ok("success")
            } else {
                Err(format!("wanted success: {} {:?}", resp.status, resp.body))
            }
        }
        Expect::Text(want) => {
            let got = reply_text(resp, from)?;
            if &got == want {
                Ok("ok")
            } else {
                Err(format!("wanted {want:?}, got {got:?}"))
            }
        }
        Expect::Pong(before) => {
            let got = reply_text(resp, from)?;
            let after = sh.ping_allowed();
            if before.contains(&got.as_str()) || after.contains(&got.as_str()) {
                Ok(if got == PONG_A { "pong A" } else { "pong B" })
            } else {
                Err(format!(
                    "ping answered {got:?}; allowed {before:?} / {after:?}"
                ))
            }
        }
        Expect::News(low) => {
            let got = reply_text(resp, from)?;
            let high = sh.news.load(Ordering::SeqCst) + 1;
            let k = got
                .strip_prefix("新闻第")
                .and_then(|r| r.split_once('期'))
                .and_then(|(k, _)| k.parse::<u64>().ok())
                .ok_or_else(|| format!("not the news file: {got:?}"))?;
            if k < *low || k > high {
                Err(format!("news version {k} outside {low}..={high}"))
            } else if got != news_text(k) {
                Err(format!("news {k} is not whole: {got:?}"))
            } else {
                Ok("ok")
            }
        }
    }
}

/// A message of one of the retryable kinds: (body, sender, expected answer).
fn message(sh: &Shared, kind: &'static str, t: usize) -> (String, String, Expect) {
    let n = sh.next();
    match kind {
        "text" => {
            let from = format!("oText{t}");
            (
                text(&from, &format!("你好 {n}")),
                from,
                Expect::Text(DEFAULT_REPLY.into()),
            )
        }
        "ping" => {
            let from = format!("oPing{t}");
            (text(&from, "ping"), from, Expect::Pong(sh.ping_allowed()))
        }
        "file" => {
            let from = format!("oNews{t}");
            let low = sh.news.load(Ordering::SeqCst);
            (text(&from, "新闻"), from, Expect::News(low))
        }
        "exec" => {
            let from = format!("oExec{t}");
            (
                text(&from, &format!("快 {n}")),
                from,
                Expect::Text(format!("fast {n}")),
            )
        }
        "click" => {
            // Events are told apart by sender + CreateTime: a fresh sender for each.
            let from = format!("oClick{t}x{n}");
            let body = msg(&from, "event", &[("Event", "CLICK"), ("EventKey", "TODAY")]);
            (body, from, Expect::Text("今天：TODAY".into()))
        }
        "subscribe" => {
            let from = format!("oSub{t}x{n}");
            let body = msg(&from, "event", &[("Event", "subscribe"), ("EventKey", "")]);
            (body, from, Expect::Text(WELCOME.into()))
        }
        "view" => {
            let from = format!("oView{t}x{n}");
            let url = format!("https://example.com/{n}");
            let body = msg(&from, "event", &[("Event", "VIEW"), ("EventKey", &url)]);
            (body, from, Expect::Success)
        }
        other => panic!("unknown kind {other}"),
    }
}

/// Sends one message once and checks the answer.
fn one(sh: &Shared, kind: &'static str, t: usize) {
    let (body, from, expect) = message(sh, kind, t);
    let start = Instant::now();
    match sh.post(&body, WECHAT_TIMEOUT) {
        Ok(resp) => match check(sh, &resp, &from, &expect) {
            Ok(outcome) => sh.ok(kind, outcome, Some(start.elapsed())),
            Err(why) => sh.fail(kind, why),
        },
        Err(e) => sh.fail(kind, format!("{e} ({body})")),
    }
}

/// WeChat's retries: the same message again (after a pause, or two copies at once); every copy
/// must get the same bytes.
fn retry(sh: &Shared, rng: &mut Rng, t: usize) {
    const BASES: [&str; 5] = ["text", "ping", "file", "exec", "click"];
    let (body, from, expect) = message(sh, BASES[rng.below(5) as usize], t);
    // Half the retries are signed afresh, half reuse the first try's URL: wxmp takes both for
    // the same message (`replay`), whichever way WeChat signs its tries.
    let reused = (rng.below(2) == 0).then(|| signed_query("/", TOKEN));
    let send = || match &reused {
        Some(url) => sh.post_to(url, &body, WECHAT_TIMEOUT),
        None => sh.post(&body, WECHAT_TIMEOUT),
    };
    let start = Instant::now();
    let answers: Vec<Result<Resp, Fail>> = if rng.below(3) == 0 {
        std::thread::scope(|s| {
            let a = s.spawn(send);
            let b = send();
            vec![a.join().expect("retry thread"), b]
        })
    } else {
        let copies = 2 + rng.below(2);
        let mut v = Vec::new();
        for _ in 0..copies {
            v.push(send());
            std::thread::sleep(Duration::from_millis(rng.below(300)));
        }
        v
    };
    let mut first: Option<String> = None;
    for a in answers {
        let resp = match a {
            Ok(r) => r,
            Err(e) => return sh.fail("retry", format!("{e} ({body})")),
        };
        if let Err(why) = check(sh, &resp, &from, &expect) {
            return sh.fail("retry", why);
        }
        match &first {
            None => first = Some(resp.body),
            Some(f) if *f == resp.body => {}
            Some(f) => {
                return sh.fail(
                    "retry",
                    format!("a retry got other bytes: {f:?} then {:?}", resp.body),
                )
            }
        }
    }
    sh.ok("retry", "identical", Some(start.elapsed()));
}

/// An encrypted `ping` (safe mode), the reply's signature checked and decrypted.
fn safe(sh: &Shared, rng: &mut Rng, crypt: &wxmp::crypto::MsgCrypt, t: usize) {
    let from = format!("oSafe{t}");
    let allowed = sh.ping_allowed();
    let compatible = rng.below(2) == 0;
    let (query, body) = safe_request(crypt, &text(&from, "ping"), compatible);
    let start = Instant::now();
    let resp = match exchange(sh.w.addr, "POST", &query, body.as_bytes(), WECHAT_TIMEOUT) {
        Ok(r) => r,
        Err(e) => return sh.fail("safe", format!("{e}")),
    };
    if resp.status != 200 {
        return sh.fail("safe", format!("status {}: {:?}", resp.status, resp.body));
    }
    let inner = wxmp::crypto::parse_encrypted_reply(&resp.body)
        .map_err(|e| e.to_string())
        .and_then(|r| {
            crypt
                .verify_and_decrypt(&r.msg_signature, &r.timestamp, &r.nonce, &r.encrypt)
                .map_err(|e| e.to_string())
        });
    let inner = match inner {
        Ok(x) => x,
        Err(why) => return sh.fail("safe", format!("{why}: {:?}", resp.body)),
    };
    let opened = Resp {
        status: 200,
        headers: vec![],
        body: inner,
    };
    match check(sh, &opened, &from, &Expect::Pong(allowed)) {
        Ok(_) => sh.ok("safe", "decrypted pong", Some(start.elapsed())),
        Err(why) => sh.fail("safe", why),
    }
}

/// WeChat's URL verification: the echostr comes back verbatim.
fn verify(sh: &Shared) {
    let echostr = format!("echo{}", sh.next());
    let target = format!("{}&echostr={echostr}", signed_query("/", TOKEN));
    let start = Instant::now();
    match exchange(sh.w.addr, "GET", &target, b"", WECHAT_TIMEOUT) {
        Ok(r) if r.status == 200 && r.body == echostr => {
            sh.ok("verify", "echostr", Some(start.elapsed()))
        }
        Ok(r) => sh.fail("verify", format!("{} {:?}", r.status, r.body)),
        Err(e) => sh.fail("verify", format!("{e}")),
    }
}

fn fast_client(sh: &Shared, t: usize) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1).wrapping_mul(0x1234_5678_9ABC));
    let crypt = sample_crypt();
    while Instant::now() < sh.deadline {
        match rng.below(100) {
            0..=27 => one(sh, "text", t),
            28..=41 => one(sh, "ping", t),
            42..=53 => one(sh, "file", t),
            54..=63 => one(sh, "exec", t),
            64..=68 => one(sh, "click", t),
            69..=71 => one(sh, "subscribe", t),
            72..=74 => one(sh, "view", t),
            75..=86 => retry(sh, &mut rng, t),
            87..=95 => safe(sh, &mut rng, &crypt, t),
            _ => verify(sh),
        }
        if !sh.pause.is_zero() {
            let jitter = rng.below(sh.pause.as_millis() as u64 + 1);
            std::thread::sleep(sh.pause / 2 + Duration::from_millis(jitter));
        }
    }
}

// ---------------------------------------------------------------- slow commands

/// One slow command driven the way WeChat drives it: a try, given up on after `tries[i]`, then
/// the next try at once (WeChat retries ~5 s after the first, i.e. when it gives up); three
/// tries. The answer must come on some try, or the last try answers the notice and the result
/// comes with the user's next text.
fn slow_cycle(sh: &Shared, t: usize, command: &str, tries: [Duration; 3], kind: &'static str) {
    let n = sh.next();
    let tag = format!("s{n}");
    sh.slow_tags.lock().expect("slow tags").push(tag.clone());
    let from = format!("oSlow{t}x{n}");
    let body = text(&from, &format!("{command} {tag}"));
    let want = format!("slow {tag}");
    let start = Instant::now();
    for (i, limit) in tries.iter().enumerate() {
        let attempt = i + 1;
        let resp = match sh.post(&body, *limit) {
            Ok(r) => r,
            Err(Fail::Timeout) if attempt < 3 => continue,
            Err(e) => return sh.fail(kind, format!("{tag}: try {attempt} got no answer: {e}")),
        };
        match reply_text(&resp, &from) {
            Ok(c) if c == want => {
                let outcome = ["result on try 1", "result on try 2", "result on try 3"][i];
                return sh.ok(kind, outcome, Some(start.elapsed()));
            }
            Ok(c) if c == NOTICE && attempt == 3 => {
                return late_delivery(sh, kind, &from, &want, start);
            }
            Ok(c) => return sh.fail(kind, format!("{tag}: try {attempt} answered {c:?}")),
            Err(why) => return sh.fail(kind, format!("{tag}: try {attempt}: {why}")),
        }
    }
}

/// After the notice: the user's next texts get the default reply until the result is there,
/// then one answer starts with it (checked exactly), within 25 s.
fn late_delivery(sh: &Shared, kind: &'static str, from: &str, want: &str, start: Instant) {
    let delivered = format!("{LATE_PREFIX}{want}\n\n{DEFAULT_REPLY}");
    let until = Instant::now() + Duration::from_secs(25);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_secs(1));
        let resp = match sh.post(&text(from, "在吗"), WECHAT_TIMEOUT) {
            Ok(r) => r,
            Err(e) => return sh.fail(kind, format!("next message after the notice: {e}")),
        };
        match reply_text(&resp, from) {
            Ok(c) if c == delivered => {
                return sh.ok(
                    kind,
                    "notice, then result with next text",
                    Some(start.elapsed()),
                )
            }
            Ok(c) if c == DEFAULT_REPLY => sh.ok("text", "ok (before a late result)", None),
            Ok(c) => return sh.fail(kind, format!("after the notice: {c:?}")),
            Err(why) => return sh.fail(kind, format!("after the notice: {why}")),
        }
    }
    sh.fail(kind, format!("{want}: the late result never came"));
}

fn slow_client(sh: &Shared, t: usize) {
    let paced = [WECHAT_TIMEOUT; 3];
    // Tries 1 and 2 lost early (WeChat gave up sooner or they never arrived): the third is the
    // last try with a 12 s program still running, so it must answer the notice.
    let early = [
        Duration::from_secs(1),
        Duration::from_secs(1),
        WECHAT_TIMEOUT,
    ];
    let mut i = t;
    while Instant::now() < sh.deadline {
        match i % 3 {
            0 => slow_cycle(sh, t, "慢", paced, "slow 6s"),
            1 => slow_cycle(sh, t, "很慢", paced, "slow 12s"),
            _ => slow_cycle(sh, t, "很慢", early, "slow 12s early tries"),
        }
        i += 1;
    }
}

// ---------------------------------------------------------------- crawler, reloads, sampling

fn crawler(sh: &Shared) {
    let file = sh.dir.join("data/news.txt");
    let mut k = sh.news.load(Ordering::SeqCst);
    while sh.nap(Duration::from_secs(1)) {
        k += 1;
        write_atomically(&file, &news_text(k));
        sh.news.store(k, Ordering::SeqCst);
    }
}

/// Occurrences of `needle` in wxmp's stderr.
fn log_count(sh: &Shared, needle: &str) -> usize {
    sh.w.stderr().matches(needle).count()
}

fn reloader(sh: &Shared) {
    let config = sh.dir.join("wxmp.toml");
    let mut i = 0u32;
    while sh.nap(Duration::from_secs(10)) {
        i += 1;
        let current = sh.ping.lock().expect("ping state").current;
        if i == 3 {
            // Once: a broken file, refused while the server keeps serving the running table.
            let refused = log_count(sh, "refused");
            write_atomically(&config, &config_text(current, true));
            sh.w.signal(libc::SIGHUP);
            let until = Instant::now() + Duration::from_secs(5);
            while log_count(sh, "refused") == refused && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(200));
            }
            if log_count(sh, "refused") == refused {
                sh.fail("reload", "the broken config was not refused in 5 s".into());
            } else if !sh.w.stderr().contains("repyl") {
                sh.fail("reload", "the refusal does not name the bad key".into());
            } else {
                sh.ok("reload", "broken config refused", None);
            }
            continue;
        }
        let new = if current == PONG_A { PONG_B } else { PONG_A };
        sh.ping.lock().expect("ping state").next = Some(new);
        write_atomically(&config, &config_text(new, false));
        let start = Instant::now();
        sh.w.signal(libc::SIGHUP);
        let mut seen = false;
        while !seen && start.elapsed() < Duration::from_secs(5) {
            let from = "oReload";
            match sh.post(&text(from, "ping"), WECHAT_TIMEOUT) {
                Ok(r) => match reply_text(&r, from) {
                    Ok(c) if c == new => seen = true,
                    Ok(c) if c == current => std::thread::sleep(Duration::from_millis(100)),
                    Ok(c) => sh.fail("reload", format!("probe answered {c:?}")),
                    Err(why) => sh.fail("reload", why),
                },
                Err(e) => sh.fail("reload", format!("probe: {e}")),
            }
        }
        if seen {
            *sh.ping.lock().expect("ping state") = PingState {
                current: new,
                next: None,
            };
            sh.ok("reload", "new config in force", Some(start.elapsed()));
        } else {
            sh.fail("reload", format!("{new:?} not in force 5 s after SIGHUP"));
        }
    }
}

fn sampler(sh: &Shared, pid: u32) {
    while sh.nap(Duration::from_secs(5)) {
        let s = sample(pid, sh.start);
        sh.samples.lock().expect("samples").push(s);
    }
}

// ---------------------------------------------------------------- summary

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn max_of(samples: &[Sample], f: impl Fn(&Sample) -> u64) -> u64 {
    samples.iter().map(f).max().unwrap_or(0)
}

/// The test itself.
#[test]
#[ignore = "10-minute soak; run: cargo test --release --test soak -- --ignored --nocapture"]
fn soak() {
    let secs = env_u64("WXMP_SOAK_SECS", 600).max(20);
    let clients = (env_u64("WXMP_SOAK_THREADS", 16) as usize).max(SLOW_CLIENTS + 1);
    let pause = Duration::from_millis(env_u64("WXMP_SOAK_PAUSE_MS", 20));

    let dir = temp_dir("soak");
    std::fs::create_dir_all(dir.join("data")).expect("data folder");
    script(&dir, "fast.sh", "echo \"fast $1\"");
    script(
        &dir,
        "slow.sh",
        "echo \"$2\" >> runs.txt\nsleep \"$1\"\necho \"slow $2\"",
    );
    write_atomically(&dir.join("data/news.txt"), &news_text(0));
    std::fs::write(dir.join("wxmp.toml"), config_text(PONG_A, false)).expect("config");
    let w = Wxmp::start_in(&dir, &["serve", "--config", "wxmp.toml"], &[]);
    let pid = w.pid();
    let start = Instant::now();
    // wxmp warms 32 idle connection threads at start; let that settle before the baseline.
    std::thread::sleep(Duration::from_secs(2));
    let baseline = sample(pid, start);
    println!(
        "soak: {secs} s, {clients} client threads ({SLOW_CLIENTS} slow), pause {} ms, wxmp pid {pid} on {}",
        pause.as_millis(),
        w.addr
    );

    let sh = Shared {
        w,
        dir: dir.clone(),
        deadline: Instant::now() + Duration::from_secs(secs),
        start,
        pause,
        counts: Mutex::default(),
        ping: Mutex::new(PingState {
            current: PONG_A,
            next: None,
        }),
        news: AtomicU64::new(0),
        seq: AtomicU64::new(0),
        slow_tags: Mutex::default(),
        samples: Mutex::new(vec![baseline]),
    };
    let load_start = Instant::now();
    std::thread::scope(|s| {
        let sh = &sh;
        for t in 0..clients {
            if t < SLOW_CLIENTS {
                s.spawn(move || slow_client(sh, t));
            } else {
                s.spawn(move || fast_client(sh, t));
            }
        }
        s.spawn(move || crawler(sh));
        s.spawn(move || reloader(sh));
        s.spawn(move || sampler(sh, pid));
    });
    let load_secs = load_start.elapsed().as_secs_f64();

    // Drained: every program has ended (slow ones within 14 s) and the wait threads with them.
    let drain_until = Instant::now() + Duration::from_secs(20);
    let mut drained = sample(pid, start);
    while Instant::now() < drain_until {
        std::thread::sleep(Duration::from_secs(1));
        drained = sample(pid, start);
        if drained.fds <= baseline.fds {
            break;
        }
    }

    // Every slow command ran exactly once, whatever WeChat resent.
    let runs = std::fs::read_to_string(dir.join("runs.txt")).unwrap_or_default();
    let mut ran: BTreeMap<&str, usize> = BTreeMap::new();
    for line in runs.lines() {
        *ran.entry(line.trim()).or_default() += 1;
    }
    let tags = sh.slow_tags.lock().expect("slow tags").clone();
    for tag in &tags {
        match ran.get(tag.as_str()).copied().unwrap_or(0) {
            1 => {}
            n => sh.fail("slow runs", format!("{tag} ran {n} times")),
        }
    }

    let stderr = sh.w.stderr();
    let panics = stderr.lines().filter(|l| l.contains("panicked")).count();
    let Shared {
        w, counts, samples, ..
    } = sh;
    let status = w.terminate();
    let counts = counts.into_inner().expect("counts");
    let samples = samples.into_inner().expect("samples");

    // ------------------------------------------------------------ summary
    let total: u64 = counts.outcomes.values().sum();
    println!(
        "\nsoak summary: {total} outcomes in {load_secs:.0} s ({:.0}/s), {} failures, {} slow commands",
        total as f64 / load_secs,
        counts.failures,
        tags.len()
    );
    println!("\n| outcome | count |\n| --- | ---: |");
    for (k, v) in &counts.outcomes {
        println!("| {k} | {v} |");
    }
    println!(
        "\n| kind | answered | p50 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: | ---: |"
    );
    for (k, v) in &counts.latencies {
        let mut v = v.clone();
        v.sort_unstable();
        println!(
            "| {k} | {} | {:.1} | {:.1} | {:.1} |",
            v.len(),
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            percentile(&v, 1.0)
        );
    }
    println!("\nsamples (s: RSS KiB / fds / threads):");
    let line: Vec<String> = samples
        .iter()
        .map(|s| format!("{:.0}s {}/{}/{}", s.secs, s.rss_kib, s.fds, s.threads))
        .collect();
    for chunk in line.chunks(6) {
        println!("  {}", chunk.join("  "));
    }
    println!(
        "baseline {}/{}/{}, drained {}/{}/{}",
        baseline.rss_kib,
        baseline.fds,
        baseline.threads,
        drained.rss_kib,
        drained.fds,
        drained.threads
    );

    // ------------------------------------------------------------ flatness
    // Warm-up: the first quarter of the run (at most 60 s). By then the retry table has reached
    // its plateau (1024 answers, or 30 s worth) and the allocator its working set.
    let warm = (secs as f64 / 4.0).min(60.0) + 2.0;
    let mid = warm + (load_secs + 2.0 - warm) / 2.0;
    let first: Vec<Sample> = samples
        .iter()
        .copied()
        .filter(|s| s.secs >= warm && s.secs < mid)
        .collect();
    let last: Vec<Sample> = samples.iter().copied().filter(|s| s.secs >= mid).collect();
    assert!(
        !first.is_empty() && !last.is_empty(),
        "too few samples: {samples:?}"
    );
    let (rss1, rss2) = (max_of(&first, |s| s.rss_kib), max_of(&last, |s| s.rss_kib));
    let (fd1, fd2) = (max_of(&first, |s| s.fds), max_of(&last, |s| s.fds));
    let (th1, th2) = (max_of(&first, |s| s.threads), max_of(&last, |s| s.threads));
    // RSS tolerance: 10% + 4 MiB. After warm-up the retry table (≤ 1024 answers of ~1 KiB
    // with key and slot, ≤ 1 MiB) and the 16 warm connection threads are at their plateau, but
    // glibc's per-thread arenas can still take a few MiB more when a new thread lands on a new
    // arena, and samples are instants. A leak of 100 bytes per request at ~300 requests/s
    // grows RSS by ~9 MiB over the last half of a 600 s run, which this catches; a 60 s run
    // only catches leaks over ~1 KiB per request.
    let rss_limit = rss1 + rss1 / 10 + 4096;
    // fd tolerance: +32. An instant's count is ~10 fixed ones plus one per open connection
    // (≤ the client threads, a retry's second copy, the watchdog's probe) plus 2-3 pipes per
    // running program; the maxima of the two halves differ by how those happened to overlap.
    // A leak of one fd per 1000 requests adds ~50 over the last half of a 600 s run.
    let fd_limit = fd1 + 32;
    // Thread tolerance: +32: one thread per open connection and per waiting retry, a job
    // thread per slow program, and tiny_http's idle pool, which wxmp re-warms to 16 every 4 s.
    let th_limit = th1 + 32;
    // Least-squares RSS slope of each half, for the record (not asserted).
    let slope = |v: &[Sample]| {
        let n = v.len() as f64;
        let (mt, mr) = (
            v.iter().map(|s| s.secs).sum::<f64>() / n,
            v.iter().map(|s| s.rss_kib as f64).sum::<f64>() / n,
        );
        let num: f64 = v
            .iter()
            .map(|s| (s.secs - mt) * (s.rss_kib as f64 - mr))
            .sum();
        let den: f64 = v.iter().map(|s| (s.secs - mt).powi(2)).sum();
        if den > 0.0 {
            num / den
        } else {
            0.0
        }
    };
    for (half, v) in [("first", &first), ("last", &last)] {
        if let Some(s) = v.iter().max_by_key(|s| s.fds) {
            println!(
                "most fds in the {half} half: {} at {:.0} s ({})",
                s.fds, s.secs, s.kinds
            );
        }
    }
    println!(
        "RSS slope: first half {:.1} KiB/s, last half {:.1} KiB/s",
        slope(&first),
        slope(&last)
    );
    println!(
        "flatness after {warm:.0} s warm-up: RSS max {rss1} -> {rss2} KiB (limit {rss_limit}), \
         fds max {fd1} -> {fd2} (limit {fd_limit}), threads max {th1} -> {th2} (limit {th_limit})"
    );

    if !counts.examples.is_empty() {
        println!("\nfailures (first {}):", counts.examples.len());
        for e in &counts.examples {
            println!("  {e}");
        }
    }
    assert_eq!(
        counts.failures, 0,
        "requests failed: {:#?}",
        counts.examples
    );
    assert_eq!(panics, 0, "wxmp logged a panic");
    assert!(rss2 <= rss_limit, "RSS grew: {rss1} -> {rss2} KiB");
    let most_fds = |v: &[Sample]| {
        v.iter()
            .max_by_key(|s| s.fds)
            .map(|s| format!("{} at {:.0} s: {}", s.fds, s.secs, s.kinds))
            .unwrap_or_default()
    };
    assert!(
        fd2 <= fd_limit,
        "open fds grew: {fd1} -> {fd2}; most in the first half {}; in the last half {}",
        most_fds(&first),
        most_fds(&last)
    );
    assert!(th2 <= th_limit, "threads grew: {th1} -> {th2}");
    // Once drained, the fds are those of an idle wxmp again (±4: the watchdog's self-probe).
    assert!(
        drained.fds <= baseline.fds + 4,
        "fds after the load drained: {} (baseline {})",
        drained.fds,
        baseline.fds
    );
    for kind in [
        "text",
        "ping",
        "file",
        "exec",
        "click",
        "subscribe",
        "view",
        "retry",
        "safe",
        "verify",
    ] {
        assert!(
            counts.latencies.get(kind).is_some_and(|v| !v.is_empty()),
            "no {kind} request was answered"
        );
    }
    assert!(
        counts
            .outcomes
            .get("reload: new config in force")
            .copied()
            .unwrap_or(0)
            >= 1
            && counts
                .outcomes
                .contains_key("reload: broken config refused"),
        "reloads did not happen: {:?}",
        counts.outcomes
    );
    assert_eq!(status.code(), Some(0), "wxmp's exit after SIGTERM");
}
