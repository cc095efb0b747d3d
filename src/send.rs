//! `wxmp send`: WeChat in your terminal.
//!
//! Builds the exact signed request WeChat would send (encrypted in safe mode when the config has
//! an `encoding_aes_key`), posts it over plain HTTP/1.1 with `Connection: close`, and checks the
//! answer the way WeChat would: status 200, well-formed reply XML addressed back to the sender,
//! no empty text, a valid signature on encrypted replies. It prints what the user would see.
//!
//! The parts are separate so they can be tested without a server: [`parse_args`],
//! [`parse_url`], [`inbound_xml`], [`build_request`], [`parse_http_response`],
//! [`check_reply`] and [`check_verify`]. [`run`] ties them to the network and the terminal.

use crate::config::{self, Config};
use crate::crypto::{self, MsgCrypt};
use crate::reply::{push_cdata, TEXT_LIMIT};
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `wxmp send --help`.
pub const USAGE: &str = "\
wxmp send: send your server the exact signed request WeChat would, and show the answer

USAGE:
    wxmp send [OPTIONS] TEXT...              a text message (the words are joined by spaces)
    wxmp send [OPTIONS] --event subscribe    an event (also CLICK/VIEW with --key KEY, SCAN, ...)
    wxmp send [OPTIONS] --image MEDIA_ID     an image message
    wxmp send [OPTIONS] --verify             the GET URL verification (random echostr)

OPTIONS:
    --config FILE    read token, listen, path and safe-mode keys from FILE (default ./wxmp.toml)
    --url URL        where to send (default http://<listen><path> from the config, with
                     0.0.0.0 as 127.0.0.1); https:// URLs go through the system's curl
    --token T        the token to sign with (default: the config's)
    --from OPENID    the sender (default o_wxmp_send_user)
    --to GH_ID       the account's original id (default gh_wxmp_send)
    --key KEY        the EventKey of --event (a menu key for CLICK)
    --timeout SECS   how long to wait for the answer (default 5, like WeChat; also 500ms);
                     a message with no answer by then is sent again, as WeChat does, up to
                     3 tries in all, each starting within 30 s of the first (a slow command
                     answers a later try)
    --raw            print the reply XML instead of what the user would see
    --               everything after it is TEXT, even if it starts with '-'

Safe mode (encrypted messages) is used when the config sets app_id and encoding_aes_key.
Exit status: 0 when WeChat would accept the answer, 1 when not (the reason is printed), 2 for
a bad command line.
";

/// The default sender openid.
pub const DEFAULT_FROM: &str = "o_wxmp_send_user";
/// The default account id (`ToUserName`).
pub const DEFAULT_TO: &str = "gh_wxmp_send";
/// WeChat's deadline, the default `--timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read; WeChat's replies are a few KiB.
pub const MAX_RESPONSE: usize = 1024 * 1024;

/// How [`exchange`]'s error for a missing answer begins (a try WeChat would repeat).
const TIMED_OUT: &str = "no complete answer from";

/// WeChat's tries of a message that gets no answer in time, the first included.
pub const TRIES: u32 = 3;

/// What WeChat tells the user when it cannot use an answer.
const WECHAT_ERROR: &str = "该公众号暂时无法提供服务，请稍后再试";

/// What to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// A text message.
    Text(String),
    /// An event, with its `EventKey` when given.
    Event {
        /// The `Event` value (`subscribe`, `CLICK`, ...).
        event: String,
        /// The `EventKey`.
        key: Option<String>,
    },
    /// An image message with this `MediaId`.
    Image(String),
    /// The GET URL verification.
    Verify,
}

/// The command line of `wxmp send`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendArgs {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--url URL`.
    pub url: Option<String>,
    /// `--token T`.
    pub token: Option<String>,
    /// `--from OPENID`.
    pub from: String,
    /// `--to GH_ID`.
    pub to: String,
    /// `--timeout SECS`.
    pub timeout: Duration,
    /// `--raw`.
    pub raw: bool,
    /// The message, event or verification.
    pub what: What,
}

/// The canonical spelling of WeChat's event names, matched case-insensitively.
const EVENTS: [&str; 15] = [
    "subscribe",
    "unsubscribe",
    "SCAN",
    "LOCATION",
    "CLICK",
    "VIEW",
    "view_miniprogram",
    "scancode_push",
    "scancode_waitmsg",
    "pic_sysphoto",
    "pic_photo_or_album",
    "pic_weixin",
    "location_select",
    "TEMPLATESENDJOBFINISH",
    "MASSSENDJOBFINISH",
];

/// Parses the arguments after `send`. `Ok(None)` means `--help` was asked for; `Err` says what
/// is wrong with the command line.
pub fn parse_args(args: &[String]) -> Result<Option<SendArgs>, String> {
    let mut config = None;
    let mut url = None;
    let mut token = None;
    let mut from = None;
    let mut to = None;
    let mut timeout = None;
    let mut raw = false;
    let mut event = None;
    let mut key = None;
    let mut image = None;
    let mut verify = false;
    let mut words: Vec<String> = Vec::new();

    let mut it = args.iter();
    while let Some(arg) = it.next() {
        // `--name=value` is accepted as well as `--name value`.
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it.next().cloned().ok_or(format!("{name} needs {what}")),
            }
        };
        match name {
            "--help" | "-h" => return Ok(None),
            "--config" | "-c" => config = Some(PathBuf::from(value("a file name")?)),
            "--url" => url = Some(value("a URL such as http://127.0.0.1:8880/")?),
            "--token" => token = Some(value("the token")?),
            "--from" => from = Some(value("an openid")?),
            "--to" => to = Some(value("the account id (gh_...)")?),
            "--timeout" => timeout = Some(parse_timeout(&value("a number of seconds")?)?),
            "--event" => event = Some(value("an event name such as subscribe or CLICK")?),
            "--key" => key = Some(value("an EventKey")?),
            "--image" => image = Some(value("a MediaId")?),
            "--raw" if inline.is_none() => raw = true,
            "--verify" if inline.is_none() => verify = true,
            "--" => {
                words.extend(it.by_ref().cloned());
            }
            other if other.starts_with('-') && other.len() > 1 => {
                return Err(format!(
                    "unknown option '{other}' (put TEXT that starts with '-' after --)"
                ))
            }
            _ => words.push(arg.clone()),
        }
    }

    let chosen = [!words.is_empty(), event.is_some(), image.is_some(), verify]
        .iter()
        .filter(|&&b| b)
        .count();
    if chosen == 0 {
        return Err("say what to send: TEXT, --event NAME, --image MEDIA_ID or --verify".into());
    }
    if chosen > 1 {
        return Err("send one thing at a time: TEXT, --event, --image or --verify".into());
    }
    if key.is_some() && event.is_none() {
        return Err("--key goes with --event (e.g. --event CLICK --key MENU_KEY)".into());
    }
    let what = if verify {
        What::Verify
    } else if let Some(media_id) = image {
        if media_id.trim().is_empty() {
            return Err("--image needs a non-empty MediaId".into());
        }
        What::Image(media_id)
    } else if let Some(event) = event {
        let event = EVENTS
            .iter()
            .find(|e| e.eq_ignore_ascii_case(&event))
            .map_or(event, |e| (*e).to_string());
        if event.trim().is_empty() {
            return Err("--event needs a name such as subscribe or CLICK".into());
        }
        if matches!(event.as_str(), "CLICK" | "VIEW") && key.is_none() {
            return Err(format!(
                "--event {event} needs --key (the menu's key{})",
                if event == "VIEW" { " or URL" } else { "" }
            ));
        }
        What::Event { event, key }
    } else {
        What::Text(words.join(" "))
    };
    let from = from.unwrap_or_else(|| DEFAULT_FROM.into());
    let to = to.unwrap_or_else(|| DEFAULT_TO.into());
    if from.is_empty() || to.is_empty() {
        return Err("--from and --to must not be empty".into());
    }
    Ok(Some(SendArgs {
        config,
        url,
        token,
        from,
        to,
        timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
        raw,
        what,
    }))
}

/// Parses `--timeout`: seconds (`5`, `2.5`, `5s`) or milliseconds (`500ms`), up to 10 minutes.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let bad = || format!("--timeout {s:?} is not a duration such as 5, 2.5, 5s or 500ms");
    let t = s.trim();
    let secs = if let Some(ms) = t.strip_suffix("ms") {
        ms.trim().parse::<f64>().map_err(|_| bad())? / 1000.0
    } else {
        t.strip_suffix('s')
            .unwrap_or(t)
            .trim()
            .parse::<f64>()
            .map_err(|_| bad())?
    };
    if !(secs > 0.0 && secs <= 600.0) {
        return Err(format!(
            "--timeout {s:?} must be more than 0 and at most 600 seconds"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// An `http://` URL, split for the request line and `Host` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// The host as written (an IPv6 address keeps its brackets).
    pub host: String,
    /// The port (80 when not written).
    pub port: u16,
    /// Path and query, always starting with `/`.
    pub target: String,
}

impl Url {
    /// The `Host` header value.
    pub fn authority(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL written back out.
    pub fn display(&self) -> String {
        format!("http://{}{}", self.authority(), self.target)
    }

    /// `target` with `params` appended to its query string.
    pub fn with_query(&self, params: &[(&str, &str)]) -> String {
        let mut t = self.target.clone();
        for (i, (k, v)) in params.iter().enumerate() {
            let sep = if i > 0 || t.contains('?') {
                if t.ends_with('?') || t.ends_with('&') {
                    ""
                } else {
                    "&"
                }
            } else {
                "?"
            };
            t.push_str(sep);
            t.push_str(&percent_encode(k));
            t.push('=');
            t.push_str(&percent_encode(v));
        }
        t
    }
}

/// Why a URL was refused; [`UrlError::Https`] gets its own advice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    /// An `https://` URL: wxmp send's own client speaks plain HTTP; these go through curl.
    Https,
    /// Anything else, with the reason.
    Bad(String),
}

/// Parses `http://host[:port][/path][?query]`.
pub fn parse_url(s: &str) -> Result<Url, UrlError> {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(UrlError::Bad(format!(
            "URL {s:?} contains spaces or control characters"
        )));
    }
    let lower = s.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err(UrlError::Https);
    }
    let rest = match lower.strip_prefix("http://") {
        Some(_) => &s[7..],
        None if lower.contains("://") => {
            return Err(UrlError::Bad(format!(
                "URL {s:?}: only http:// URLs are supported"
            )))
        }
        None => {
            return Err(UrlError::Bad(format!(
                "URL {s:?} must start with http:// (e.g. http://127.0.0.1:8880/)"
            )))
        }
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(end);
    let target = match target.chars().next() {
        None => "/".to_string(),
        Some('?') => format!("/{target}"),
        Some(_) => target.to_string(),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or_else(|| UrlError::Bad(format!("URL {s:?}: unclosed '[' in the host")))?;
        (format!("[{addr}]"), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() || host == "[]" || authority.contains('@') {
        return Err(UrlError::Bad(format!("URL {s:?} has no usable host")));
    }
    let port = match port {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| UrlError::Bad(format!("URL {s:?}: port {p:?} is not 1-65535")))?,
    };
    Ok(Url { host, port, target })
}

/// The URL WeChat would call, from the config's `listen` and `path`: an unspecified address
/// (`0.0.0.0`, `::`) becomes loopback.
pub fn default_url(listen: &str, path: &str) -> Result<String, String> {
    let addr: SocketAddr = listen.parse().map_err(|_| {
        format!("listen = {listen:?} in the config is not address:port; pass --url instead")
    })?;
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(format!("http://{}{path}", SocketAddr::new(ip, addr.port())))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The inbound XML WeChat would post for `what` (not for [`What::Verify`], which has no body).
pub fn inbound_xml(what: &What, from: &str, to: &str, create_time: u64, msg_id: u64) -> String {
    let mut x = String::with_capacity(256);
    let field = |x: &mut String, name: &str, value: &str| {
        x.push('<');
        x.push_str(name);
        x.push('>');
        push_cdata(x, value);
        x.push_str("</");
        x.push_str(name);
        x.push('>');
    };
    x.push_str("<xml>");
    field(&mut x, "ToUserName", to);
    field(&mut x, "FromUserName", from);
    x.push_str(&format!("<CreateTime>{create_time}</CreateTime>"));
    match what {
        What::Text(content) => {
            field(&mut x, "MsgType", "text");
            field(&mut x, "Content", content);
            x.push_str(&format!("<MsgId>{msg_id}</MsgId>"));
        }
        What::Image(media_id) => {
            field(&mut x, "MsgType", "image");
            field(&mut x, "PicUrl", "http://mmbiz.qpic.cn/wxmp-send/0");
            field(&mut x, "MediaId", media_id);
            x.push_str(&format!("<MsgId>{msg_id}</MsgId>"));
        }
        What::Event { event, key } => {
            field(&mut x, "MsgType", "event");
            field(&mut x, "Event", event);
            if let Some(key) = key {
                field(&mut x, "EventKey", key);
            }
        }
        What::Verify => {}
    }
    x.push_str("</xml>");
    x
}

/// One HTTP request to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// Path and signed query.
    pub target: String,
    /// The body (empty for GET).
    pub body: String,
    /// The body before encryption, for `--raw` and error messages.
    pub plain_body: String,
}

/// The per-request random values, passed in so tests are repeatable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// Unix seconds (`timestamp`, `CreateTime`).
    pub now: u64,
    /// The query's `nonce`.
    pub nonce: String,
    /// The text or image message's `MsgId`; the verification's `echostr`.
    pub id: u64,
}

impl Stamp {
    /// Fresh values from the clock and the OS random number generator.
    pub fn fresh() -> Stamp {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let nonce = crypto::random_nonce();
        // A 19-digit number like WeChat's MsgIds and echostrs; the nonce helper never fails.
        let id = format!("{}{}", crypto::random_nonce(), &crypto::random_nonce()[1..])
            .parse::<u64>()
            .unwrap_or(now);
        Stamp { now, nonce, id }
    }
}

/// Builds the request WeChat would make for `what`: signed with `token`, and encrypted with
/// `crypt` (safe mode) when given.
pub fn build_request(
    url: &Url,
    args: &SendArgs,
    token: &str,
    crypt: Option<&MsgCrypt>,
    stamp: &Stamp,
) -> Result<Request, String> {
    let ts = stamp.now.to_string();
    let signature = crate::signature::sign(&[token, &ts, &stamp.nonce]);
    if args.what == What::Verify {
        let echostr = stamp.id.to_string();
        return Ok(Request {
            method: "GET",
            target: url.with_query(&[
                ("signature", &signature),
                ("echostr", &echostr),
                ("timestamp", &ts),
                ("nonce", &stamp.nonce),
            ]),
            body: String::new(),
            plain_body: String::new(),
        });
    }
    let xml = inbound_xml(&args.what, &args.from, &args.to, stamp.now, stamp.id);
    let mut params = vec![
        ("signature", signature.clone()),
        ("timestamp", ts.clone()),
        ("nonce", stamp.nonce.clone()),
        ("openid", args.from.clone()),
    ];
    let body = match crypt {
        None => xml.clone(),
        Some(crypt) => {
            let encrypt = crypt
                .encrypt(&xml)
                .map_err(|e| format!("cannot encrypt the message: {e}"))?;
            params.push(("encrypt_type", "aes".into()));
            params.push((
                "msg_signature",
                crate::signature::sign(&[token, &ts, &stamp.nonce, &encrypt]),
            ));
            let mut body = String::from("<xml><ToUserName>");
            push_cdata(&mut body, &args.to);
            body.push_str("</ToUserName><Encrypt>");
            push_cdata(&mut body, &encrypt);
            body.push_str("</Encrypt></xml>");
            body
        }
    };
    let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Ok(Request {
        method: "POST",
        target: url.with_query(&params),
        body,
        plain_body: xml,
    })
}

/// The user's URL with the request's query (signature, timestamp, ...) added as it is.
fn url_with_query(url_text: &str, req: &Request) -> String {
    let query = req.target.split_once('?').map_or("", |(_, q)| q);
    let sep = if url_text.contains('?') { '&' } else { '?' };
    format!("{url_text}{sep}{query}")
}

/// The request written out as a `curl` command, for URLs this client cannot reach (https).
pub fn curl_command(url_text: &str, req: &Request) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let full = url_with_query(url_text, req);
    if req.method == "GET" {
        format!("curl -sS --max-time 5 {}", q(&full))
    } else {
        format!(
            "curl -sS --max-time 5 -H 'Content-Type: text/xml' --data-binary {} {}",
            q(&req.body),
            q(&full)
        )
    }
}

/// Why an https exchange through `curl` did not happen.
#[derive(Debug)]
pub enum CurlError {
    /// No `curl` on `PATH`.
    Missing,
    /// curl ran and failed (TLS, DNS, timeout, ...): its message.
    Failed(String),
}

/// Sends `req` to an `https://` URL with the system's `curl` (TLS is curl's job: its CA bundle,
/// `CURL_CA_BUNDLE`, proxies), giving back the status and body for the usual checks.
pub fn exchange_with_curl(
    url_text: &str,
    req: &Request,
    timeout: Duration,
) -> Result<Response, CurlError> {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time"])
        .arg(format!("{:.1}", timeout.as_secs_f64()))
        .args(["-o", "-", "-w", "\n%{http_code}"]);
    if req.method == "POST" {
        // The body is XML ("<..."): --data-binary never takes it for "@file".
        cmd.args(["-H", "Content-Type: text/xml", "--data-binary"])
            .arg(&req.body);
    }
    cmd.arg(url_with_query(url_text, req))
        .stdin(std::process::Stdio::null());
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(CurlError::Missing),
        Err(e) => return Err(CurlError::Failed(format!("cannot run curl: {e}"))),
    };
    if !out.status.success() {
        return Err(CurlError::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let mut body = out.stdout;
    let split = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let code = String::from_utf8_lossy(&body[split..]).trim().to_string();
    body.truncate(split);
    let status = code
        .parse()
        .map_err(|_| CurlError::Failed(format!("curl printed no status code ({code:?})")))?;
    Ok(Response {
        status,
        reason: String::new(),
        headers: Vec::new(),
        body,
    })
}

/// A parsed HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The reason phrase.
    pub reason: String,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses a complete HTTP/1.x response read until the server closed the connection. The body is
/// delimited by `Content-Length`, chunked encoding, or the end of the data.
pub fn parse_http_response(raw: &[u8]) -> Result<Response, String> {
    if raw.is_empty() {
        return Err("the server closed the connection without answering".into());
    }
    let head_end = find(raw, b"\r\n\r\n").ok_or_else(|| {
        format!(
            "the answer is not HTTP (no complete header), it starts {:?}",
            snippet(raw)
        )
    })?;
    let head = std::str::from_utf8(&raw[..head_end])
        .map_err(|_| "the answer's HTTP header is not text".to_string())?;
    let rest = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status = parts
        .next()
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| format!("the answer is not HTTP/1.x: {status_line:?}"))?;
    let reason = parts.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut resp = Response {
        status,
        reason,
        headers,
        body: Vec::new(),
    };
    let chunked = resp
        .header("Transfer-Encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    resp.body = if chunked {
        dechunk(rest)?
    } else if let Some(len) = resp.header("Content-Length") {
        let len: usize = len
            .parse()
            .map_err(|_| format!("the answer's Content-Length {len:?} is not a number"))?;
        rest.get(..len)
            .ok_or_else(|| {
                format!(
                    "the connection closed after {} of the {len} body bytes announced",
                    rest.len()
                )
            })?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(resp)
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let bad = || "the answer's chunked body is cut short or malformed".to_string();
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or_else(bad)?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| bad())?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad())?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data.get(..size).ok_or_else(bad)?;
        out.extend_from_slice(chunk);
        data = data.get(size + 2..).ok_or_else(bad)?;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The first 120 characters of `bytes`, lossily decoded, for error messages.
fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut s: String = text.chars().take(120).collect();
    if text.chars().count() > 120 {
        s.push('…');
    }
    s
}

/// Sends `req` to `url` and reads the whole answer, all within `timeout`.
pub fn exchange(url: &Url, req: &Request, timeout: Duration) -> Result<Response, String> {
    let deadline = Instant::now() + timeout;
    let shown = url.display();
    let timed_out = || {
        format!(
            "{TIMED_OUT} {shown} within {}: WeChat waits 5 s, retries, and finally shows the \
             user “{WECHAT_ERROR}”. Make the command answer faster, or pass --timeout to wait \
             longer while testing",
            human(timeout)
        )
    };
    let host = url.host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = (host, url.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve the host of {shown}: {e}"))?
        .collect();
    let mut last_err = format!("{} has no address", url.host);
    let mut stream = None;
    for addr in &addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        match TcpStream::connect_timeout(addr, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                last_err = format!(
                    "connection refused by {addr}: nothing listens there. Is wxmp running \
                     (`wxmp serve`), and is the address right (--url, or listen in the config)?"
                );
            }
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
                return Err(timed_out());
            }
            Err(e) => last_err = format!("cannot connect to {addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last_err)?;

    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: Mozilla/4.0 (wxmp send)\r\nAccept: */*\r\n\
         Connection: close\r\n",
        req.method,
        req.target,
        url.authority()
    );
    if req.method == "POST" {
        head.push_str(&format!(
            "Content-Type: text/xml\r\nContent-Length: {}\r\n",
            req.body.len()
        ));
    }
    head.push_str("\r\n");
    let io_err = |e: std::io::Error| -> String {
        if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) {
            timed_out()
        } else {
            format!("the connection to {shown} failed: {e}")
        }
    };
    let left = deadline.saturating_duration_since(Instant::now());
    stream
        .set_write_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(io_err)?;
    stream.write_all(head.as_bytes()).map_err(io_err)?;
    stream.write_all(req.body.as_bytes()).map_err(io_err)?;

    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        stream.set_read_timeout(Some(left)).map_err(io_err)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                // A server that keeps the connection open despite `Connection: close` has
                // still answered once the announced body is complete.
                if is_complete(&raw) {
                    break;
                }
                if raw.len() > MAX_RESPONSE {
                    return Err(format!(
                        "the answer from {shown} is over {} KiB; WeChat's replies are a few KiB",
                        MAX_RESPONSE / 1024
                    ));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset after a complete answer (the server closed without reading everything)
            // still leaves a usable answer; without one, it is an error.
            Err(e) if e.kind() == ErrorKind::ConnectionReset && !raw.is_empty() => break,
            Err(e) => return Err(io_err(e)),
        }
    }
    parse_http_response(&raw)
}

/// Whether `raw` holds a whole response by its own framing (`Content-Length` or the last chunk);
/// a response without either ends when the connection closes.
fn is_complete(raw: &[u8]) -> bool {
    let Some(head_end) = find(raw, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let body = &raw[head_end + 4..];
    if head.contains("\r\ntransfer-encoding:") && head.contains("chunked") {
        // Read chunk by chunk: a chunk's data may itself end in "0\r\n".
        return dechunk(body).is_ok();
    }
    head.split("\r\n")
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|len| body.len() >= len)
}

fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// What the server answered, when WeChat would accept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What the user would see: the text, a readable summary of another reply type, or a note
    /// that nothing is shown.
    pub summary: String,
    /// The reply XML (decrypted in safe mode), or `success`/empty.
    pub xml: String,
    /// Things WeChat probably accepts but that deserve a look.
    pub warnings: Vec<String>,
}

/// Checks the status of an answer; the error explains the usual causes.
fn check_status(resp: &Response, url: &str) -> Result<(), String> {
    let body = snippet(&resp.body);
    match resp.status {
        200 => Ok(()),
        // wxmp says why it refused; only a bad signature means the token is wrong.
        403 if body.contains("encrypted messages only") => Err(format!(
            "403 Forbidden from {url}: the server refused a plain message ({body}). It has \
             encrypted_only = true: give wxmp send the server's app_id and encoding_aes_key \
             (--config with the server's wxmp.toml)"
        )),
        403 if body.contains("stale timestamp") => Err(format!(
            "403 Forbidden from {url}: the server refused the timestamp ({body}). This machine's \
             clock and the server's are over 5 minutes apart (timedatectl set-ntp true)"
        )),
        403 if body.contains("AppID") => Err(format!(
            "403 Forbidden from {url}: the server refused the message ({body}). Set app_id as \
             the server has it (--config with the server's wxmp.toml)"
        )),
        403 => Err(format!(
            "403 Forbidden from {url}: the server refused the signature ({body}). The token used \
             here is not the server's: pass --token, or --config with the server's wxmp.toml \
             (in safe mode, also check app_id and encoding_aes_key)"
        )),
        301 | 302 | 303 | 307 | 308 => Err(format!(
            "{} {} from {url} to {}: WeChat does not follow redirects. Use the final URL \
             (https://, or the trailing slash) in --url and in WeChat's 基本配置",
            resp.status,
            resp.reason,
            resp.header("Location").unwrap_or("?")
        )),
        404 => Err(format!(
            "404 Not Found from {url}: nothing answers this path. Check --url against `path` in \
             wxmp.toml and the nginx location (/wx/ is proxied to wxmp's /)"
        )),
        502..=504 => Err(format!(
            "{} {} from {url}: the proxy in front could not get an answer from wxmp. Is wxmp \
             running on the proxy_pass address (127.0.0.1:8880)? ({body})",
            resp.status, resp.reason
        )),
        s => Err(format!(
            "{s} {} from {url}: WeChat needs 200 with the reply; the user would see \
             “{WECHAT_ERROR}”. The server said: {body}",
            resp.reason
        )),
    }
}

/// Checks the answer to the verification GET: 200 and `echostr` echoed. `Ok` holds the line
/// to print.
pub fn check_verify(resp: &Response, echostr: &str, url: &str) -> Result<String, String> {
    check_status(resp, url)?;
    let body = String::from_utf8_lossy(&resp.body);
    if body == echostr {
        Ok(format!(
            "OK: {url} echoed the echostr, so WeChat's URL verification (基本配置 → 提交) will \
             pass with this token"
        ))
    } else if body.trim() == echostr {
        Ok(format!(
            "OK, but {url} echoed the echostr with whitespace around it; WeChat expects it \
             verbatim, so fix the server if 提交 fails"
        ))
    } else {
        Err(format!(
            "{url} answered 200 but not the echostr {echostr}: WeChat's verification would fail. \
             Is this really wxmp (or a web page / panel default site)? It answered: {}",
            snippet(&resp.body)
        ))
    }
}

/// What a reply must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect<'a> {
    /// The sender, who must be the reply's `ToUserName`.
    pub from: &'a str,
    /// The account, which must be the reply's `FromUserName`.
    pub to: &'a str,
    /// Whether this answers a user message (at most one news article) rather than an event.
    pub user_message: bool,
}

/// Checks the answer to a POST the way WeChat would, opening it with `crypt` when the request
/// was encrypted. `Err` says why WeChat would refuse it.
pub fn check_reply(
    resp: &Response,
    expect: &Expect,
    crypt: Option<&MsgCrypt>,
    url: &str,
) -> Result<Outcome, String> {
    check_status(resp, url)?;
    let body = std::str::from_utf8(&resp.body).map_err(|_| {
        format!(
            "the reply is not UTF-8 text, so WeChat cannot read it: {}",
            snippet(&resp.body)
        )
    })?;
    let trimmed = body.trim();
    if trimmed.is_empty() || trimmed == "success" {
        return Ok(Outcome {
            summary: format!(
                "(no reply: the server answered {}, so WeChat shows the user nothing)",
                if trimmed.is_empty() {
                    "an empty body"
                } else {
                    "\"success\""
                }
            ),
            xml: trimmed.to_string(),
            warnings: Vec::new(),
        });
    }
    let xml = match crypt {
        None => trimmed.to_string(),
        Some(crypt) => open_encrypted(trimmed, crypt)?,
    };
    let (summary, warnings) = check_reply_xml(&xml, expect)?;
    Ok(Outcome {
        summary,
        xml,
        warnings,
    })
}

/// Checks and decrypts an encrypted reply.
fn open_encrypted(body: &str, crypt: &MsgCrypt) -> Result<String, String> {
    match crypto::parse_encrypted_reply(body) {
        Ok(r) => crypt
            .verify_and_decrypt(&r.msg_signature, &r.timestamp, &r.nonce, &r.encrypt)
            .map_err(|e| format!("the encrypted reply does not open: {e}")),
        Err(e) => {
            if roxmltree::Document::parse(body).is_ok() {
                Err(format!(
                    "the request was encrypted (safe mode) but the reply is not ({e}): WeChat \
                     expects <Encrypt>, <MsgSignature>, <TimeStamp> and <Nonce>. Is the \
                     server configured with encoding_aes_key and app_id?"
                ))
            } else {
                not_xml(body, &e.to_string())
            }
        }
    }
}

fn not_xml<T>(body: &str, why: &str) -> Result<T, String> {
    let lower = body.trim_start().to_ascii_lowercase();
    let kind = if lower.starts_with("<!doctype html") || lower.starts_with("<html") {
        "an HTML page (an error page from a proxy or panel?), not reply XML"
    } else if lower.starts_with('{') || lower.starts_with('[') {
        "JSON, not reply XML"
    } else if !lower.starts_with('<') {
        "not XML"
    } else {
        "malformed XML"
    };
    Err(format!(
        "the reply is {kind} ({why}); WeChat would show the user “{WECHAT_ERROR}”. It starts: {}",
        snippet(body.as_bytes())
    ))
}

/// Checks a plain reply's XML; `Ok` is the summary to print and any warnings.
pub fn check_reply_xml(xml: &str, expect: &Expect) -> Result<(String, Vec<String>), String> {
    let doc = match roxmltree::Document::parse(xml) {
        Ok(doc) => doc,
        Err(e) => return not_xml(xml, &e.to_string()),
    };
    let root = doc.root_element().tag_name().name();
    if root.eq_ignore_ascii_case("html") {
        return not_xml(xml, "its root element is <html>");
    }
    if root != "xml" {
        return Err(format!(
            "the reply's root element is <{root}>, WeChat needs <xml>; the user would see \
             “{WECHAT_ERROR}”"
        ));
    }
    let fields = crate::message::leaf_fields(doc.root_element())
        .map_err(|e| format!("the reply's {e}; WeChat would not take it"))?;
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
    };
    let need = |name: &str| {
        get(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            format!(
                "the reply has no {} (or it is empty); WeChat would show the user \
                 “{WECHAT_ERROR}”",
                name.replace('/', " → ")
            )
        })
    };
    let to_user = need("ToUserName")?;
    if to_user != expect.from {
        return Err(format!(
            "the reply's ToUserName is {to_user:?} but the message came from {:?}: a reply goes \
             back to the sender (swap ToUserName and FromUserName)",
            expect.from
        ));
    }
    let from_user = need("FromUserName")?;
    if from_user != expect.to {
        return Err(format!(
            "the reply's FromUserName is {from_user:?} but the message was sent to {:?}: a \
             reply comes from the account (swap ToUserName and FromUserName)",
            expect.to
        ));
    }
    let create_time = need("CreateTime")?;
    if create_time.parse::<u64>().is_err() {
        return Err(format!(
            "the reply's CreateTime {create_time:?} is not a number of seconds"
        ));
    }
    let msg_type = need("MsgType")?;
    let mut warnings = Vec::new();
    let summary = match msg_type {
        "text" => {
            let content = get("Content").unwrap_or_default();
            if content.is_empty() {
                return Err(format!(
                    "the reply is a text with empty Content: WeChat shows the user \
                     “{WECHAT_ERROR}”. Answer \"success\" to show nothing"
                ));
            }
            let raw_len = fields
                .iter()
                .find(|(k, _)| k == "Content")
                .map_or(0, |(_, v)| v.len());
            if raw_len > TEXT_LIMIT {
                warnings.push(format!(
                    "the text is {raw_len} bytes; WeChat may cut or refuse texts over \
                     {TEXT_LIMIT} bytes"
                ));
            }
            // The text exactly as sent, surrounding whitespace included.
            fields
                .iter()
                .find(|(k, _)| k == "Content")
                .map_or_else(String::new, |(_, v)| v.clone())
        }
        "image" => format!("[image] MediaId {}", need("Image/MediaId")?),
        "voice" => format!("[voice] MediaId {}", need("Voice/MediaId")?),
        "video" => {
            let media_id = need("Video/MediaId")?;
            format!(
                "[video] {} — {} (MediaId {media_id})",
                get("Video/Title").unwrap_or_default(),
                get("Video/Description").unwrap_or_default()
            )
        }
        "music" => {
            if get("Music/ThumbMediaId").unwrap_or_default().is_empty() {
                warnings.push("the music reply has no ThumbMediaId, which WeChat requires".into());
            }
            format!(
                "[music] {} — {}: {}",
                get("Music/Title").unwrap_or_default(),
                get("Music/Description").unwrap_or_default(),
                get("Music/MusicUrl").unwrap_or_default()
            )
        }
        "news" => news_summary(&doc, need("ArticleCount")?, expect)?,
        "transfer_customer_service" => match get("TransInfo/KfAccount") {
            Some(kf) if !kf.is_empty() => {
                format!("[transfer_customer_service] to customer-service account {kf}")
            }
            _ => "[transfer_customer_service] to any customer-service account".into(),
        },
        other => {
            return Err(format!(
                "the reply's MsgType {other:?} is not one WeChat accepts (text, image, voice, \
                 video, music, news, transfer_customer_service)"
            ))
        }
    };
    Ok((summary, warnings))
}

fn news_summary(doc: &roxmltree::Document, count: &str, expect: &Expect) -> Result<String, String> {
    let items: Vec<roxmltree::Node> = doc
        .root_element()
        .children()
        .filter(|n| n.has_tag_name("Articles"))
        .flat_map(|a| a.children().filter(|n| n.has_tag_name("item")))
        .collect();
    let count: usize = count
        .parse()
        .map_err(|_| format!("the news reply's ArticleCount {count:?} is not a number"))?;
    if count != items.len() {
        return Err(format!(
            "the news reply says ArticleCount {count} but holds {} <item>s",
            items.len()
        ));
    }
    let limit = if expect.user_message { 1 } else { 8 };
    if count == 0 || count > limit {
        return Err(format!(
            "the news reply has {count} articles; WeChat takes 1 to {limit} in answer to {}",
            if expect.user_message {
                "a user message"
            } else {
                "an event"
            }
        ));
    }
    let text = |item: &roxmltree::Node, name: &str| -> String {
        item.children()
            .find(|n| n.has_tag_name(name))
            .map(|n| {
                n.children()
                    .filter_map(|c| c.text())
                    .collect::<String>()
                    .trim()
                    .to_string()
            })
            .unwrap_or_default()
    };
    let mut s = format!(
        "[news] {count} article{}",
        if count == 1 { "" } else { "s" }
    );
    for item in &items {
        s.push_str(&format!(
            "\n  {} — {}\n  {}",
            text(item, "Title"),
            text(item, "Description"),
            text(item, "Url")
        ));
    }
    Ok(s)
}

/// The token, URL and safe-mode cipher to use, from the command line, the config file and the
/// environment.
struct Target {
    token: String,
    url_text: String,
    crypt: Option<MsgCrypt>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn resolve(args: &SendArgs) -> Result<Target, String> {
    let path = config::resolve_path(args.config.as_deref(), env);
    let explicit = args.config.is_some() || env("WXMP_CONFIG").is_some();
    let mut config = if path.exists() {
        Config::read(&path)?
    } else if explicit {
        return Err(format!(
            "config file '{}' does not exist; pass --config with the server's wxmp.toml, or \
             --token and --url",
            path.display()
        ));
    } else {
        Config::default()
    };
    config.apply_env(env);
    if let Some(token) = &args.token {
        config.token = token.clone();
    }
    if config.token.is_empty() {
        return Err(
            "no token to sign with: run in the folder of the server's wxmp.toml, or pass \
             --config FILE or --token T"
                .into(),
        );
    }
    let url_text = match &args.url {
        Some(u) => u.clone(),
        None => default_url(&config.listen, &config.path)?,
    };
    let crypt = if args.what == What::Verify {
        None
    } else {
        config.crypt().map_err(|e| {
            format!(
                "{e} (safe mode settings in '{}'; wxmp send encrypts like WeChat when they are set)",
                path.display()
            )
        })?
    };
    Ok(Target {
        token: config.token,
        url_text,
        crypt,
    })
}

/// Runs `wxmp send` with the arguments after `send`; returns the exit status (0 accepted,
/// 1 refused or unreachable, 2 bad command line).
pub fn run(args: &[String]) -> u8 {
    let args = match parse_args(args) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{USAGE}");
            return 0;
        }
        Err(e) => {
            eprintln!("wxmp send: {e}\nSee `wxmp send --help`.");
            return 2;
        }
    };
    match send(&args) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            0
        }
        Err(e) => {
            eprintln!("wxmp send: {e}");
            1
        }
    }
}

/// Whether a message whose `attempt`th try got no answer within `timeout` is sent again: up to
/// `tries` in all, and only while the next try starts within the 30 s a server takes a reused
/// URL for a retry (`replay::RETRIES_WITHIN`), as WeChat's 5 s tries do.
fn tries_again(attempt: u32, tries: u32, timeout: Duration) -> bool {
    attempt < tries && timeout * attempt < crate::replay::RETRIES_WITHIN
}

/// Does the exchange; `Ok` holds what to print, warnings already written to stderr.
fn send(args: &SendArgs) -> Result<Vec<String>, String> {
    let target = resolve(args)?;
    let stamp = Stamp::fresh();
    let (shown, resp) = match parse_url(&target.url_text) {
        Ok(url) => {
            let req = build_request(&url, args, &target.token, target.crypt.as_ref(), &stamp)?;
            // A message that gets no answer in time is sent again, the same bytes, as WeChat
            // does (a slow command answers one of its tries); a verification is not.
            let tries = if args.what == What::Verify { 1 } else { TRIES };
            let mut attempt = 1;
            let resp = loop {
                match exchange(&url, &req, args.timeout) {
                    Err(e)
                        if e.starts_with(TIMED_OUT)
                            && tries_again(attempt, tries, args.timeout) =>
                    {
                        attempt += 1;
                        eprintln!(
                            "wxmp send: no answer within {}; WeChat sends the message again \
                             (try {attempt} of {tries})",
                            human(args.timeout)
                        );
                    }
                    other => break other?,
                }
            };
            (url.display(), resp)
        }
        Err(UrlError::Bad(e)) => return Err(e),
        Err(UrlError::Https) => {
            // Sign for the path of the https URL: the query is what matters.
            let dummy = Url {
                host: "localhost".into(),
                port: 80,
                target: "/".into(),
            };
            let req = build_request(&dummy, args, &target.token, target.crypt.as_ref(), &stamp)?;
            match exchange_with_curl(&target.url_text, &req, args.timeout) {
                Ok(resp) => (target.url_text.clone(), resp),
                Err(CurlError::Failed(why)) => {
                    return Err(format!("curl could not reach {}: {why}", target.url_text))
                }
                Err(CurlError::Missing) => {
                    return Err(format!(
                        "wxmp send reaches https:// URLs through curl, which is not installed \
                         (apt-get install curl / yum install curl). Or point --url at nginx's \
                         plain HTTP port or at wxmp itself (e.g. http://127.0.0.1:8880/), or \
                         run this yourself; it should print {}:\n\n    {}\n",
                        if args.what == What::Verify {
                            format!("the echostr {}", stamp.id)
                        } else {
                            "the reply XML".to_string()
                        },
                        curl_command(&target.url_text, &req)
                    ))
                }
            }
        }
    };
    if args.what == What::Verify {
        let line = check_verify(&resp, &stamp.id.to_string(), &shown)?;
        return Ok(vec![if args.raw {
            String::from_utf8_lossy(&resp.body).into_owned()
        } else {
            line
        }]);
    }
    let expect = Expect {
        from: &args.from,
        to: &args.to,
        user_message: !matches!(args.what, What::Event { .. }),
    };
    if args.raw {
        // The XML first, so a refused reply can be read too.
        println!("{}", String::from_utf8_lossy(&resp.body));
    }
    let outcome = check_reply(&resp, &expect, target.crypt.as_ref(), &shown)?;
    for w in &outcome.warnings {
        eprintln!("wxmp send: warning: {w}");
    }
    if args.raw {
        if target.crypt.is_some() && outcome.xml != "success" && !outcome.xml.is_empty() {
            return Ok(vec![format!("<!-- decrypted: -->\n{}", outcome.xml)]);
        }
        return Ok(Vec::new());
    }
    Ok(vec![outcome.summary])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Option<SendArgs>, String> {
        parse_args(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    fn ok(list: &[&str]) -> SendArgs {
        args(list).unwrap().unwrap()
    }

    #[test]
    fn command_lines() {
        let a = ok(&["hello", "world"]);
        assert_eq!(a.what, What::Text("hello world".into()));
        assert_eq!((a.from.as_str(), a.to.as_str()), (DEFAULT_FROM, DEFAULT_TO));
        assert_eq!(a.timeout, Duration::from_secs(5));
        let a = ok(&["--event", "click", "--key", "M1", "--from=oX", "--raw"]);
        assert_eq!(
            a.what,
            What::Event {
                event: "CLICK".into(),
                key: Some("M1".into())
            }
        );
        assert_eq!(a.from, "oX");
        assert!(a.raw);
        assert_eq!(ok(&["--verify"]).what, What::Verify);
        assert_eq!(ok(&["--image", "m"]).what, What::Image("m".into()));
        assert_eq!(
            ok(&["--", "-1", "--raw"]).what,
            What::Text("-1 --raw".into())
        );
        assert_eq!(args(&["--help"]), Ok(None));
        assert_eq!(
            ok(&["--timeout", "500ms", "x"]).timeout,
            Duration::from_millis(500)
        );
    }

    #[test]
    fn bad_command_lines_say_why() {
        for (list, needle) in [
            (&[][..], "say what to send"),
            (&["hi", "--verify"][..], "one thing"),
            (&["--event", "CLICK"][..], "--key"),
            (&["--key", "k", "hi"][..], "--key goes with --event"),
            (&["--tiemout", "3", "hi"][..], "unknown option '--tiemout'"),
            (&["--timeout", "0", "hi"][..], "more than 0"),
            (&["--timeout", "abc", "hi"][..], "not a duration"),
            (&["--url"][..], "--url needs"),
        ] {
            let e = args(list).unwrap_err();
            assert!(e.contains(needle), "{list:?}: {e}");
        }
    }

    #[test]
    fn only_long_options_with_a_value_take_it_after_an_equals_sign() {
        assert_eq!(ok(&["--to=gh_x", "hi"]).to, "gh_x");
        for (list, needle) in [
            (&["--raw=yes", "hi"][..], "unknown option '--raw'"),
            (&["--verify=1"][..], "unknown option '--verify'"),
            (&["-c=wxmp.toml", "hi"][..], "unknown option '-c=wxmp.toml'"),
            (&["-h=1"][..], "unknown option '-h=1'"),
        ] {
            let e = args(list).unwrap_err();
            assert!(e.contains(needle), "{list:?}: {e}");
        }
    }

    #[test]
    fn a_lone_dash_is_text_and_the_sender_and_account_cannot_be_empty() {
        assert_eq!(ok(&["-"]).what, What::Text("-".into()));
        for list in [&["--from=", "hi"][..], &["--to", "", "hi"][..]] {
            assert_eq!(
                args(list).unwrap_err(),
                "--from and --to must not be empty",
                "{list:?}"
            );
        }
    }
    #[test]
    fn urls() {
        let u = parse_url("http://127.0.0.1:8880/wx/?a=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("127.0.0.1", 8880, "/wx/?a=1")
        );
        assert_eq!(u.with_query(&[("b", "x y")]), "/wx/?a=1&b=x%20y");
        let u = parse_url("HTTP://example.com").unwrap();
        assert_eq!((u.port, u.target.as_str()), (80, "/"));
        assert_eq!(u.display(), "http://example.com/");
        assert_eq!(u.with_query(&[("a", "1"), ("b", "2")]), "/?a=1&b=2");
        let u = parse_url("http://[::1]:81?x").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("[::1]", 81, "/?x")
        );
        assert_eq!(parse_url("https://example.com/wx/"), Err(UrlError::Https));
        for bad in [
            "ftp://x/",
            "example.com",
            "http://:80/",
            "http://h:0/",
            "http://h /",
        ] {
            assert!(
                matches!(parse_url(bad), Err(UrlError::Bad(_))),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn the_signed_query_follows_a_url_that_already_ends_its_query_without_an_extra_separator() {
        for (url, target) in [
            ("http://h/wx?", "/wx?signature=s&nonce=1"),
            ("http://h/wx?a=1&", "/wx?a=1&signature=s&nonce=1"),
        ] {
            let u = parse_url(url).unwrap();
            assert_eq!(u.with_query(&[("signature", "s"), ("nonce", "1")]), target);
        }
    }

    #[test]
    fn refused_urls_say_what_is_wrong_with_them() {
        for (bad, needle) in [
            ("ftp://x/", "only http:// URLs are supported"),
            ("example.com/wx", "must start with http://"),
            ("http://[]:80/", "no usable host"),
            ("http://user@h/", "no usable host"),
            ("http://h:x/", "port \"x\" is not 1-65535"),
        ] {
            match parse_url(bad) {
                Err(UrlError::Bad(e)) => assert!(e.contains(needle), "{bad}: {e}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_listen_address_is_called_as_it_is_unless_it_is_a_wildcard() {
        for (listen, url) in [
            ("0.0.0.0:8880", "http://127.0.0.1:8880/wx"),
            ("10.0.0.5:8880", "http://10.0.0.5:8880/wx"),
            ("[::]:8880", "http://[::1]:8880/wx"),
            ("[fd00::5]:8880", "http://[fd00::5]:8880/wx"),
        ] {
            assert_eq!(default_url(listen, "/wx").unwrap(), url);
        }
    }

    fn stamp() -> Stamp {
        Stamp {
            now: 1_700_000_000,
            nonce: "123".into(),
            id: 42,
        }
    }

    #[test]
    fn requests_are_signed_like_wechat() {
        let url = parse_url("http://127.0.0.1:1/wx").unwrap();
        let a = ok(&["a]]>b"]);
        let r = build_request(&url, &a, "tok", None, &stamp()).unwrap();
        assert_eq!(r.method, "POST");
        let sig = crate::signature::sign(&["tok", "1700000000", "123"]);
        assert_eq!(
            r.target,
            format!("/wx?signature={sig}&timestamp=1700000000&nonce=123&openid={DEFAULT_FROM}")
        );
        let msg = crate::message::parse(&r.body).unwrap();
        assert_eq!(msg.field("Content"), Some("a]]>b"));
        assert_eq!(msg.field("MsgId"), Some("42"));
        assert_eq!(msg.from_user, DEFAULT_FROM);

        let v = build_request(&url, &ok(&["--verify"]), "tok", None, &stamp()).unwrap();
        assert_eq!(v.method, "GET");
        assert!(v.target.contains("echostr=42&"), "{}", v.target);
        assert!(v.body.is_empty());
    }

    #[test]
    fn safe_mode_requests_are_encrypted_and_open_on_the_other_side() {
        let key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
        let crypt = MsgCrypt::new("tok", key, "wx2c2769f8efd9abc2").unwrap();
        let url = parse_url("http://127.0.0.1:1/").unwrap();
        let a = ok(&["--event", "subscribe"]);
        let r = build_request(&url, &a, "tok", Some(&crypt), &stamp()).unwrap();
        assert!(r.target.contains("&encrypt_type=aes&msg_signature="));
        assert!(!r.body.contains("subscribe"), "encrypted: {}", r.body);
        let query = crate::server::Query::parse(r.target.split_once('?').unwrap().1);
        let encrypt = crypto::extract_encrypt(&r.body).unwrap();
        let xml = crypt
            .verify_and_decrypt(
                query.get("msg_signature").unwrap(),
                "1700000000",
                "123",
                &encrypt,
            )
            .unwrap();
        assert_eq!(xml, r.plain_body);
        assert_eq!(
            crate::message::parse(&xml).unwrap().field("Event"),
            Some("subscribe")
        );
    }

    fn resp(status: u16, body: &str) -> Response {
        Response {
            status,
            reason: String::new(),
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    const EXPECT: Expect = Expect {
        from: "oU",
        to: "gh_a",
        user_message: true,
    };

    fn reply(msg_type: &str, body: &str) -> String {
        format!(
            "<xml><ToUserName><![CDATA[oU]]></ToUserName><FromUserName><![CDATA[gh_a]]></FromUserName>\
             <CreateTime>1</CreateTime><MsgType><![CDATA[{msg_type}]]></MsgType>{body}</xml>"
        )
    }

    fn checked(status: u16, body: &str) -> Result<Outcome, String> {
        check_reply(&resp(status, body), &EXPECT, None, "http://x/")
    }

    #[test]
    fn good_replies_are_summarised() {
        let rendered = crate::reply::Reply::Text("你好 ]]> there".into()).render("oU", "gh_a", 5);
        assert_eq!(checked(200, &rendered).unwrap().summary, "你好 ]]> there");
        assert!(checked(200, "success").unwrap().summary.contains("nothing"));
        assert!(checked(200, "").unwrap().summary.contains("nothing"));
        let s = checked(200, &reply("image", "<Image><MediaId>m1</MediaId></Image>"))
            .unwrap()
            .summary;
        assert_eq!(s, "[image] MediaId m1");
        let news = reply(
            "news",
            "<ArticleCount>1</ArticleCount><Articles><item><Title>T</Title>\
             <Description>D</Description><Url>http://u</Url></item></Articles>",
        );
        assert_eq!(
            checked(200, &news).unwrap().summary,
            "[news] 1 article\n  T — D\n  http://u"
        );
        let s = checked(200, &reply("transfer_customer_service", ""))
            .unwrap()
            .summary;
        assert!(s.contains("any customer-service"), "{s}");
    }

    #[test]
    fn a_text_over_2048_bytes_is_shown_with_a_warning_and_one_of_2048_without() {
        for (len, warned) in [(1, false), (TEXT_LIMIT, false), (TEXT_LIMIT + 1, true)] {
            let text = "a".repeat(len);
            let out = checked(200, &reply("text", &format!("<Content>{text}</Content>"))).unwrap();
            assert_eq!(out.summary, text);
            assert_eq!(out.warnings.len(), usize::from(warned), "{len}: {out:?}");
        }
        let out = checked(
            200,
            &reply("text", &format!("<Content>{}</Content>", "a".repeat(2049))),
        );
        assert_eq!(
            out.unwrap().warnings,
            ["the text is 2049 bytes; WeChat may cut or refuse texts over 2048 bytes"]
        );
    }

    #[test]
    fn a_transfer_names_the_customer_service_account_when_it_has_one() {
        for (trans_info, summary) in [
            (
                "<TransInfo><KfAccount>kf2001@gh_a</KfAccount></TransInfo>",
                "[transfer_customer_service] to customer-service account kf2001@gh_a",
            ),
            (
                "<TransInfo><KfAccount> </KfAccount></TransInfo>",
                "[transfer_customer_service] to any customer-service account",
            ),
            (
                "",
                "[transfer_customer_service] to any customer-service account",
            ),
        ] {
            let out = checked(200, &reply("transfer_customer_service", trans_info)).unwrap();
            assert_eq!(out.summary, summary, "{trans_info}");
        }
    }

    #[test]
    fn replies_wechat_refuses_are_errors() {
        for (status, body, needle) in [
            (403, "forbidden".to_string(), "--token"),
            (403, "forbidden: bad signature".to_string(), "--token"),
            (403, "forbidden: stale timestamp".to_string(), "clock"),
            (
                403,
                "the message is for AppID \"wxa\" but this server is configured with AppID".into(),
                "Set app_id",
            ),
            (404, "nf".to_string(), "path"),
            (301, "moved".to_string(), "redirects"),
            (502, "bad gateway".to_string(), "proxy"),
            (500, "boom".to_string(), "500"),
            (200, "hello".to_string(), "not XML"),
            (200, "{\"a\":1}".to_string(), "JSON"),
            (200, "<html><body>x</body></html>".to_string(), "HTML"),
            (200, "<xml><a></xml>".to_string(), "malformed XML"),
            (200, reply("text", "<Content></Content>"), "empty Content"),
            (200, reply("text", "<Content>  </Content>"), "empty Content"),
            (200, reply("text", ""), "empty Content"),
            (200, reply("bogus", ""), "not one WeChat accepts"),
            (200, reply("image", "<Image></Image>"), "Image → MediaId"),
            (
                200,
                reply("text", "<Content>x</Content>").replace("oU", "oOther"),
                "ToUserName",
            ),
            (
                200,
                reply("text", "<Content>x</Content>").replace("gh_a", "gh_b"),
                "FromUserName",
            ),
            (
                200,
                reply(
                    "news",
                    "<ArticleCount>2</ArticleCount><Articles><item/><item/></Articles>",
                ),
                "1 to 1",
            ),
            (
                200,
                reply(
                    "news",
                    "<ArticleCount>3</ArticleCount><Articles><item/></Articles>",
                ),
                "holds 1",
            ),
            (200, "<root/>".to_string(), "<root>"),
        ] {
            let e = checked(status, &body).unwrap_err();
            assert!(e.contains(needle), "{body}: {e}");
        }
    }

    #[test]
    fn safe_mode_replies_must_be_encrypted_and_signed() {
        let key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
        let crypt = MsgCrypt::new("tok", key, "wx2c2769f8efd9abc2").unwrap();
        let inner = reply("text", "<Content>hi</Content>");
        let sealed = crypt.encrypt_reply(&inner, 7, "99").unwrap();
        let out = check_reply(&resp(200, &sealed), &EXPECT, Some(&crypt), "u").unwrap();
        assert_eq!(
            (out.summary.as_str(), out.xml.as_str()),
            ("hi", inner.as_str())
        );
        let e = check_reply(&resp(200, &inner), &EXPECT, Some(&crypt), "u").unwrap_err();
        assert!(e.contains("the reply is not"), "{e}");
        let other = MsgCrypt::new("other", key, "wx2c2769f8efd9abc2").unwrap();
        let e = check_reply(&resp(200, &sealed), &EXPECT, Some(&other), "u").unwrap_err();
        assert!(e.contains("does not open"), "{e}");
        assert!(check_reply(&resp(200, "success"), &EXPECT, Some(&crypt), "u").is_ok());
    }

    #[test]
    fn verification_answers() {
        assert!(check_verify(&resp(200, "42"), "42", "u").is_ok());
        assert!(check_verify(&resp(200, "42\n"), "42", "u")
            .unwrap()
            .contains("whitespace"));
        assert!(check_verify(&resp(200, "<html>"), "42", "u")
            .unwrap_err()
            .contains("not the echostr"));
        assert!(check_verify(&resp(403, "no"), "42", "u")
            .unwrap_err()
            .contains("403"));
    }

    #[test]
    fn http_responses() {
        let r = parse_http_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello, and more",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(r.header("x"), Some("y"));
        let r = parse_http_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        let r = parse_http_response(b"HTTP/1.0 403 Forbidden\r\n\r\nno").unwrap();
        assert_eq!(
            (r.status, r.reason.as_str(), r.body.as_slice()),
            (403, "Forbidden", &b"no"[..])
        );
        for (raw, needle) in [
            (&b""[..], "without answering"),
            (&b"hello"[..], "not HTTP"),
            (&b"SSH-2.0 x\r\n\r\n"[..], "not HTTP/1.x"),
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"[..],
                "3 of the 9",
            ),
            (
                &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"[..],
                "chunked",
            ),
        ] {
            let e = parse_http_response(raw).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn complete_responses_are_recognised_without_a_close() {
        assert!(is_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        ));
        assert!(!is_complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok"
        ));
        assert!(!is_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"));
        assert!(!is_complete(b"HTTP/1.1 200 OK\r\n\r\nok"));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n";
        assert!(!is_complete(chunked));
        assert!(is_complete(&[&chunked[..], b"0\r\n\r\n"].concat()));
    }

    #[test]
    fn a_chunk_whose_data_ends_like_the_last_chunk_does_not_end_the_answer() {
        // The chunk "ab0\r\n" and its CRLF: the bytes so far end as the last chunk does.
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let first = [&head[..], b"5\r\nab0\r\n\r\n"].concat();
        assert!(!is_complete(&first));
        let whole = [&first[..], b"1\r\nc\r\n0\r\n\r\n"].concat();
        assert!(is_complete(&whole));
        assert_eq!(parse_http_response(&whole).unwrap().body, b"ab0\r\nc");
    }

    #[test]
    fn the_word_chunked_elsewhere_in_the_header_leaves_content_length_in_charge() {
        let raw = b"HTTP/1.1 200 OK\r\nX-Note: chunked\r\nContent-Length: 2\r\n\r\nok";
        assert!(is_complete(raw));
        assert_eq!(parse_http_response(raw).unwrap().body, b"ok");
    }

    #[test]
    fn curl_commands_quote_for_the_shell() {
        let url = parse_url("http://h/").unwrap();
        let r = build_request(&url, &ok(&["it's"]), "tok", None, &stamp()).unwrap();
        let c = curl_command("https://example.com/wx/", &r);
        assert!(c.starts_with("curl -sS --max-time 5 -H 'Content-Type: text/xml' --data-binary '"));
        assert!(c.contains("it'\\''s"), "{c}");
        assert!(c.ends_with(&format!(
            "'https://example.com/wx/?{}'",
            r.target.split_once('?').unwrap().1
        )));
    }

    #[test]
    fn a_message_is_tried_3_times_while_each_try_starts_within_30_s_of_the_first() {
        let secs = Duration::from_secs;
        for (attempt, timeout, again) in [
            (1, secs(5), true),
            (2, secs(5), true),
            (3, secs(5), false),
            (1, secs(15), true),
            // The third try would start 30 s after the first: a server takes it for new.
            (2, secs(15), false),
            (2, secs(20), false),
            (1, secs(29), true),
            (1, secs(30), false),
        ] {
            assert_eq!(
                tries_again(attempt, TRIES, timeout),
                again,
                "after try {attempt} of {timeout:?}"
            );
        }
    }

    #[test]
    fn error_messages_quote_the_first_120_characters_of_what_the_server_said() {
        assert_eq!(snippet("短 answer".as_bytes()), "短 answer");
        let exactly = "字".repeat(120);
        assert_eq!(snippet(exactly.as_bytes()), exactly);
        let longer = format!("{exactly}x");
        assert_eq!(snippet(longer.as_bytes()), format!("{exactly}…"));
        let e = checked(200, &format!("Fatal error: {longer}")).unwrap_err();
        assert!(
            e.ends_with(&format!("It starts: Fatal error: {}…", "字".repeat(107))),
            "{e}"
        );
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("2.5").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_timeout("5s").unwrap(), Duration::from_secs(5));
        assert!(parse_timeout("601").is_err());
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("NaN").is_err());
    }
}
