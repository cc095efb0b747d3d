//! A tiny std-only HTTP/1.1 client for WeChat-style signed POSTs.
//!
//! Shared by `benches/loadgen.rs` and `tests/tiny_http_failures.rs` (included with
//! `#[path = ...] mod wxhttp;`), so each user only needs part of it.
//!
//! It only speaks to loopback addresses (127.0.0.0/8 and ::1): [`Target::parse`] refuses
//! anything else, so a typo in a load-test command cannot hit a real host.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where requests go: a loopback socket address plus the path (without query).
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// Value for the `Host` header, as given in the URL (`127.0.0.1:8080`).
    pub host: String,
    /// Path, starting with `/`, without a query string.
    pub path: String,
}

impl Target {
    /// Parses `http://HOST:PORT/path`. Only plain HTTP and loopback hosts are accepted.
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("only http:// URLs are supported: {url}"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let path = path.split('?').next().unwrap_or("/");
        let with_port = if host.contains(':') && !host.ends_with(']') {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} resolves to nothing"))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "refusing non-loopback target {addr}: load may only target 127.0.0.0/8 or ::1"
            ));
        }
        Ok(Target {
            addr,
            host: host.to_string(),
            path: path.to_string(),
        })
    }

    /// A target for a socket address and path (tests).
    pub fn from_addr(addr: SocketAddr, path: &str) -> Target {
        Target {
            addr,
            host: addr.to_string(),
            path: path.to_string(),
        }
    }
}

/// Which inbound message the POST body carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// A text message (`MsgType=text`) with a fresh `MsgId`.
    Text,
    /// A `subscribe` event (no `MsgId`; WeChat dedups events by user + `CreateTime`).
    Event,
    /// An image message with `PicUrl`, `MediaId` and a fresh `MsgId`.
    Image,
    /// A text message whose content pads the body past 1024 bytes (tiny_http reads such
    /// bodies lazily, on the thread that called `recv()`).
    Large,
}

impl BodyKind {
    pub fn parse(s: &str) -> Result<BodyKind, String> {
        match s {
            "text" => Ok(BodyKind::Text),
            "event" => Ok(BodyKind::Event),
            "image" => Ok(BodyKind::Image),
            "large" => Ok(BodyKind::Large),
            other => Err(format!(
                "unknown body kind {other:?} (text|event|image|large)"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BodyKind::Text => "text",
            BodyKind::Event => "event",
            BodyKind::Image => "image",
            BodyKind::Large => "large",
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A process-unique sequence number; message ids are built from it.
pub fn next_seq() -> u64 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// A fresh `MsgId`: unique within the process and (by its time prefix) across runs.
pub fn fresh_msg_id(seq: u64) -> u64 {
    // Base from the start-of-run time in microseconds, so reruns do not collide in a
    // server-side dedup cache; WeChat's MsgId is a 64-bit integer.
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1)
            * 1000
    });
    base.wrapping_add(seq)
}

/// A pseudo-random nonce (splitmix64 of the sequence), 9-10 decimal digits like WeChat's.
pub fn nonce_for(seq: u64) -> String {
    let mut z = seq.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % 9_000_000_000 + 1_000_000_000).to_string()
}

/// The query string WeChat appends to a plain-mode push:
/// `signature=..&timestamp=..&nonce=..&openid=..`.
pub fn signed_query(token: &str, timestamp: u64, nonce: &str, openid: &str) -> String {
    let ts = timestamp.to_string();
    let signature = wxmp::signature::sign(&[token, &ts, nonce]);
    format!("signature={signature}&timestamp={ts}&nonce={nonce}&openid={openid}")
}

/// The XML body WeChat would push for `kind`, from user `oUSER{user}`.
pub fn message_body(kind: BodyKind, user: u64, ts: u64, msg_id: u64) -> String {
    let head = format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName>\
         <FromUserName><![CDATA[oUSER{user}]]></FromUserName>\
         <CreateTime>{ts}</CreateTime>"
    );
    match kind {
        BodyKind::Text => format!(
            "{head}<MsgType><![CDATA[text]]></MsgType>\
             <Content><![CDATA[hello {msg_id}]]></Content><MsgId>{msg_id}</MsgId></xml>"
        ),
        BodyKind::Large => {
            let mut content = format!("hello {msg_id} ");
            while content.len() < 1500 {
                content.push_str("padding-to-cross-tiny_http-1024-byte-eager-read ");
            }
            format!(
                "{head}<MsgType><![CDATA[text]]></MsgType>\
                 <Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>"
            )
        }
        BodyKind::Event => format!(
            "{head}<MsgType><![CDATA[event]]></MsgType>\
             <Event><![CDATA[subscribe]]></Event></xml>"
        ),
        BodyKind::Image => format!(
            "{head}<MsgType><![CDATA[image]]></MsgType>\
             <PicUrl><![CDATA[http://127.0.0.1/pic/{msg_id}.jpg]]></PicUrl>\
             <MediaId><![CDATA[media_{msg_id}]]></MediaId><MsgId>{msg_id}</MsgId></xml>"
        ),
    }
}

/// Builds one complete signed POST request (head + body) for `target`.
///
/// `seq` picks the nonce, the user (`oUSER{seq % 1000}`) and the `MsgId`.
pub fn signed_post(
    target: &Target,
    token: &str,
    kind: BodyKind,
    seq: u64,
    keep_alive: bool,
) -> Vec<u8> {
    let spec = PostSpec::plain(token, kind);
    spec.request(target, seq, keep_alive)
}

/// What a load generator sends: the token, the message kind, optionally a fixed text (to hit a
/// command) and optionally the safe-mode cipher (to send encrypted, `msg_signature`-signed POSTs).
#[derive(Clone, Debug)]
pub struct PostSpec {
    pub token: String,
    pub kind: BodyKind,
    /// For [`BodyKind::Text`]: the `Content` to send instead of `hello {MsgId}`; `{n}` in it is
    /// replaced by the request's sequence number (so a command's `{args}` differ per request).
    pub text: Option<String>,
    /// Safe mode (安全模式): the body is `<xml><ToUserName/><Encrypt/></xml>` and the query
    /// carries `encrypt_type=aes&msg_signature=..` as WeChat sends them.
    pub crypt: Option<wxmp::crypto::MsgCrypt>,
}

impl PostSpec {
    /// Plain mode, WeChat-style content.
    pub fn plain(token: &str, kind: BodyKind) -> PostSpec {
        PostSpec {
            token: token.to_string(),
            kind,
            text: None,
            crypt: None,
        }
    }

    /// Builds one complete signed (and, with a cipher, encrypted) POST request for `target`.
    pub fn request(&self, target: &Target, seq: u64, keep_alive: bool) -> Vec<u8> {
        let ts = unix_now();
        let nonce = nonce_for(seq);
        let user = seq % 1000;
        let openid = format!("oUSER{user}");
        let msg_id = fresh_msg_id(seq);
        let mut body = match (&self.text, self.kind) {
            (Some(text), BodyKind::Text) => {
                text_body(&text.replace("{n}", &seq.to_string()), user, ts, msg_id)
            }
            _ => message_body(self.kind, user, ts, msg_id),
        };
        let mut query = signed_query(&self.token, ts, &nonce, &openid);
        if let Some(crypt) = &self.crypt {
            // A fixed prefix keeps the client's CPU share down (the OS RNG is not needed to
            // test the server); the server's reply uses its own random prefix.
            let mut prefix = [0u8; 16];
            prefix[..8].copy_from_slice(&seq.to_le_bytes());
            let encrypt = crypt.encrypt_with_prefix(&body, prefix);
            let msg_signature =
                wxmp::signature::sign(&[&self.token, &ts.to_string(), &nonce, &encrypt]);
            let _ = write!(query, "&encrypt_type=aes&msg_signature={msg_signature}");
            body = format!(
                "<xml><ToUserName><![CDATA[gh_test]]></ToUserName>\
                 <Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
            );
        }
        let mut head = String::with_capacity(256 + body.len());
        let _ = write!(
            head,
            "POST {}?{} HTTP/1.1\r\nHost: {}\r\nUser-Agent: wxmp-loadgen\r\n\
             Content-Type: text/xml\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
            target.path,
            query,
            target.host,
            body.len(),
            if keep_alive { "keep-alive" } else { "close" },
        );
        head.push_str(&body);
        head.into_bytes()
    }
}

/// A text message with the given `Content` (CDATA; `]]>` must not occur in `content`).
pub fn text_body(content: &str, user: u64, ts: u64, msg_id: u64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_test]]></ToUserName>\
         <FromUserName><![CDATA[oUSER{user}]]></FromUserName>\
         <CreateTime>{ts}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>"
    )
}

/// True if `needle` occurs in `haystack` (an empty needle always does).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server will close the connection after this response.
    pub close: bool,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_line_crlf<R: BufRead>(r: &mut R, line: &mut String) -> io::Result<()> {
    line.clear();
    let n = r.read_line(line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a complete response",
        ));
    }
    if line.len() > 64 * 1024 {
        return Err(bad("response header line too long"));
    }
    while line.ends_with('\n') || line.ends_with('\r') {
        line.pop();
    }
    Ok(())
}

/// Reads one response (status line, headers, body by Content-Length, chunked or EOF).
///
/// Responses to a `HEAD` request must not be read with this (they carry no body).
pub fn read_response<R: BufRead>(r: &mut R) -> io::Result<Response> {
    let mut line = String::new();
    read_line_crlf(r, &mut line)?;
    // Skip interim 1xx responses (e.g. 100 Continue).
    loop {
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {line:?}")))?;
        if !version.starts_with("HTTP/1.") {
            return Err(bad(format!("bad status line {line:?}")));
        }
        let mut close = version == "HTTP/1.0";
        let mut content_length: Option<usize> = None;
        let mut chunked = false;
        loop {
            read_line_crlf(r, &mut line)?;
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(bad(format!("bad header line {line:?}")));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = Some(value.parse().map_err(|_| bad("bad Content-Length"))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    close = true;
                } else if v.contains("keep-alive") {
                    close = false;
                }
            }
        }
        if (100..200).contains(&status) {
            read_line_crlf(r, &mut line)?;
            continue;
        }
        let mut body = Vec::new();
        if status == 204 || status == 304 {
            // no body
        } else if chunked {
            loop {
                read_line_crlf(r, &mut line)?;
                let size_hex = line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad("bad chunk"))?;
                if size == 0 {
                    // trailers until empty line
                    loop {
                        read_line_crlf(r, &mut line)?;
                        if line.is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = body.len();
                body.resize(start + size, 0);
                r.read_exact(&mut body[start..])?;
                read_line_crlf(r, &mut line)?;
            }
        } else if let Some(len) = content_length {
            body.resize(len, 0);
            r.read_exact(&mut body)?;
        } else {
            r.read_to_end(&mut body)?;
            close = true;
        }
        return Ok(Response {
            status,
            body,
            close,
        });
    }
}

/// True if `e` is what a socket read/write timeout looks like.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// One client connection with a buffered reader and a per-request timeout.
pub struct Conn {
    reader: BufReader<TcpStream>,
    timeout: Duration,
}

impl Conn {
    /// Connects with `timeout` for the connect and for every later read and write.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Conn {
            reader: BufReader::with_capacity(16 * 1024, stream),
            timeout,
        })
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    /// Reads one response; fails with a timeout error (see [`is_timeout`]) if it does not
    /// complete within the connection's timeout (checked after every read, so a server
    /// that drips bytes is cut off at most one read timeout late).
    pub fn recv(&mut self) -> io::Result<Response> {
        let deadline = Instant::now() + self.timeout;
        let mut guard = DeadlineReader {
            inner: &mut self.reader,
            deadline,
        };
        read_response(&mut guard)
    }

    /// Sends `request` and reads the response.
    pub fn round_trip(&mut self, request: &[u8]) -> io::Result<Response> {
        self.send(request)?;
        self.recv()
    }

    /// After a `Connection: close` exchange, waits (bounded by the timeout) for the server's
    /// FIN so the server, not this client, holds the TIME_WAIT state.
    pub fn wait_for_close(mut self) {
        let mut buf = [0u8; 512];
        while let Ok(n) = self.reader.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }

    /// True if the server has given up on this connection: it closed or reset it, or sent
    /// bytes we did not ask for yet (an error response such as 408, 431 or 503). False if the
    /// connection is open and silent. Does not block and consumes nothing.
    pub fn peer_gave_up(&self) -> bool {
        if !self.reader.buffer().is_empty() {
            return true;
        }
        let stream = self.reader.get_ref();
        if stream.set_nonblocking(true).is_err() {
            return true;
        }
        let mut buf = [0u8; 1];
        let gave_up = match stream.peek(&mut buf) {
            Ok(_) => true,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        };
        let _ = stream.set_nonblocking(false);
        gave_up
    }
}

/// A `BufRead` adaptor that turns "past the deadline" into a timeout error.
struct DeadlineReader<'a, R> {
    inner: &'a mut R,
    deadline: Instant,
}

impl<R: BufRead> DeadlineReader<'_, R> {
    fn check(&self) -> io::Result<()> {
        if Instant::now() > self.deadline {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "response not complete before the per-request timeout",
            ))
        } else {
            Ok(())
        }
    }
}

impl<R: BufRead> Read for DeadlineReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check()?;
        self.inner.read(buf)
    }
}

impl<R: BufRead> BufRead for DeadlineReader<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.check()?;
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.inner.consume(amt)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn parses_content_length_and_chunked() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 404 Not Found\r\n\
                    Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let mut r = std::io::Cursor::new(&raw[..]);
        let a = super::read_response(&mut r).unwrap();
        assert_eq!(
            (a.status, a.body.as_slice(), a.close),
            (200, &b"hello"[..], false)
        );
        let b = super::read_response(&mut r).unwrap();
        assert_eq!(
            (b.status, b.body.as_slice(), b.close),
            (404, &b"abc"[..], true)
        );
    }

    #[test]
    fn refuses_non_loopback() {
        assert!(super::Target::parse("http://127.0.0.1:8080/wx").is_ok());
        assert!(super::Target::parse("http://10.0.0.1:8080/wx").is_err());
        assert!(super::Target::parse("https://127.0.0.1/wx").is_err());
    }
}
