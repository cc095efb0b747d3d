//! wxmp load generator: WeChat-style signed POSTs over HTTP/1.1, std only.
//!
//! ```text
//! cargo bench --bench loadgen -- --url http://127.0.0.1:PORT/path --token T \
//!     --connections 32 --duration 10 [--new-conn] [--body-kind text|event|image|large] \
//!     [--timeout 5] [--text 'CONTENT {n}'] [--expect BYTES] [--app-id wx.. --aes-key KEY43]
//! ```
//!
//! Each of `--connections` client threads ("slots") sends one request at a time: a POST to
//! `path?signature=..&timestamp=..&nonce=..&openid=..` signed with `--token`, carrying a
//! message XML with a fresh `MsgId`. By default a slot keeps one keep-alive connection (and
//! reconnects after an error or a timeout); `--new-conn` opens a connection per request
//! (`Connection: close`). Each request has a `--timeout` (seconds, default 5).
//!
//! `--text` sends that `Content` (`{n}` becomes the request's sequence number) to hit a command;
//! `--expect` counts a 2xx answer without those bytes as `wrong` instead of `ok`. With
//! `--app-id` and `--aes-key` (the server's EncodingAESKey) every message is sent as in safe mode
//! (安全模式): encrypted, with `encrypt_type=aes&msg_signature=..`.
//!
//! Output: one human line, then one machine line starting `LOADGEN ` with `key=value` pairs.
//! Per-slot counts show stranded connections: `conn_min=0` (or `stranded=N`, slots that got
//! no answer at all) means some connections were never served.
//!
//! Only loopback targets are accepted.

#[path = "support/load.rs"]
mod load;
#[path = "support/wxhttp.rs"]
mod wxhttp;

use std::process::ExitCode;
use std::time::Duration;

use load::LoadSpec;
use wxhttp::{BodyKind, PostSpec, Target};

const USAGE: &str = "usage: loadgen --url http://127.0.0.1:PORT/path --token T [--connections 32] \
[--duration 10] [--new-conn] [--body-kind text|event|image|large] [--timeout 5] \
[--text 'CONTENT {n}'] [--expect BYTES] [--app-id wx.. --aes-key KEY43]";

fn seconds(name: &str, v: &str) -> Result<Duration, String> {
    let s: f64 = v
        .parse()
        .map_err(|_| format!("{name} wants seconds, got {v:?}"))?;
    if !(s > 0.0 && s <= 3600.0) {
        return Err(format!("{name} must be in (0, 3600] seconds"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn parse_args() -> Result<LoadSpec, String> {
    let mut url = None;
    let mut token = None;
    let mut connections = 32usize;
    let mut duration = Duration::from_secs(10);
    let mut new_conn = false;
    let mut body_kind = BodyKind::Text;
    let mut timeout = Duration::from_secs(5);
    let mut text = None;
    let mut expect = None;
    let mut app_id = None;
    let mut aes_key = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            // `cargo bench` appends `--bench` to a harness=false bench's arguments.
            "--bench" => {}
            "--url" => url = Some(value("--url")?),
            "--token" => token = Some(value("--token")?),
            "--connections" | "-c" => {
                connections = value("--connections")?
                    .parse()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or("--connections must be 1..=10000")?
            }
            "--duration" | "-d" => duration = seconds("--duration", &value("--duration")?)?,
            "--timeout" => timeout = seconds("--timeout", &value("--timeout")?)?,
            "--new-conn" => new_conn = true,
            "--body-kind" => body_kind = BodyKind::parse(&value("--body-kind")?)?,
            "--text" => text = Some(value("--text")?),
            "--expect" => expect = Some(value("--expect")?.into_bytes()),
            "--app-id" => app_id = Some(value("--app-id")?),
            "--aes-key" => aes_key = Some(value("--aes-key")?),
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let url = url.ok_or_else(|| format!("--url is required\n{USAGE}"))?;
    let token = token.ok_or_else(|| format!("--token is required\n{USAGE}"))?;
    let crypt = match (app_id, aes_key) {
        (None, None) => None,
        (Some(app_id), Some(key)) => Some(
            wxmp::crypto::MsgCrypt::new(&token, &key, &app_id)
                .map_err(|e| format!("--aes-key/--app-id: {e}"))?,
        ),
        _ => return Err("--app-id and --aes-key go together (safe mode)".into()),
    };
    if text.is_some() && body_kind != BodyKind::Text {
        return Err("--text needs --body-kind text".into());
    }
    Ok(LoadSpec {
        target: Target::parse(&url)?,
        post: PostSpec {
            token,
            kind: body_kind,
            text,
            crypt,
        },
        connections,
        duration,
        new_conn,
        timeout,
        expect,
    })
}

fn main() -> ExitCode {
    // `cargo test --all-targets` runs this with no arguments and plain `cargo bench` with only
    // `--bench`: there is no server to load then, so say how to use it and succeed.
    if std::env::args().skip(1).all(|a| a == "--bench") {
        println!("loadgen: no --url given, nothing to do\n{USAGE}");
        return ExitCode::SUCCESS;
    }
    let spec = match parse_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let report = load::run(&spec);
    println!("{}", report.human(&spec));
    println!("{}", report.machine(&spec));
    if report.ok == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
