//! `wxmp send` against the real server and against tiny fake servers that answer badly.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What `wxmp send` did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `wxmp send ARGS` in `dir` with no WXMP_* variables, killing it after 20 s.
fn send_in(dir: &Path, args: &[&str]) -> Run {
    send_with_env(dir, args, &[])
}

fn send_with_env(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut cmd = wxmp_command();
    cmd.arg("send")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.envs(envs.iter().copied());
    let start = Instant::now();
    let mut child = cmd.spawn().expect("start wxmp send");
    let deadline = start + Duration::from_secs(20);
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("wxmp send {args:?} did not finish within 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = start.elapsed();
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Run {
        code,
        stdout,
        stderr,
        took,
    }
}

/// Runs `wxmp send` in a fresh empty folder (no config file).
fn send(args: &[&str]) -> Run {
    send_in(&temp_dir("send"), args)
}

fn url_of(w: &Wxmp) -> String {
    format!("http://{}/", w.addr)
}

#[test]
fn text_round_trip_prints_the_default_reply() {
    let w = Wxmp::start("");
    let r = send(&["--url", &url_of(&w), "--token", TOKEN, "你好", "there"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout, format!("{DEFAULT_REPLY}\n"));
    assert!(w.wait_for_log("o_wxmp_send_user text \"你好 there\" -> text"));
}

#[test]
fn url_and_token_come_from_the_config_file() {
    let w = Wxmp::start("[reply]\ndefault = \"from the server\"");
    // A config naming the running server's address as `listen`, with 0.0.0.0 for the host.
    let dir = temp_dir("send-config");
    std::fs::write(
        dir.join("other.toml"),
        format!(
            "token = \"{TOKEN}\"\nlisten = \"0.0.0.0:{}\"\n",
            w.addr.port()
        ),
    )
    .unwrap();
    let r = send_in(&dir, &["--config", "other.toml", "--from", "oCfg", "hi"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "from the server\n"),
        "{r:?}"
    );
    assert!(w.wait_for_log("oCfg text \"hi\""));
    // Without --config, ./wxmp.toml is used.
    std::fs::rename(dir.join("other.toml"), dir.join("wxmp.toml")).unwrap();
    let r = send_in(&dir, &["hi"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "from the server\n"),
        "{r:?}"
    );
}

#[test]
fn verify_passes_with_the_right_token() {
    let w = Wxmp::start("");
    let r = send(&["--url", &url_of(&w), "--token", TOKEN, "--verify"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("echoed the echostr"), "{r:?}");
    assert!(w.wait_for_log("URL verification passed"));
}

#[test]
fn verify_with_a_wrong_token_fails_and_says_so() {
    let w = Wxmp::start("");
    let r = send(&["--url", &url_of(&w), "--token", "wrongToken1", "--verify"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("403"), "{r:?}");
    assert!(r.stderr.contains("--token"), "{r:?}");
    assert!(r.stdout.is_empty());
}

#[test]
fn a_message_with_a_wrong_token_fails_too() {
    let w = Wxmp::start("");
    let r = send(&["--url", &url_of(&w), "--token", "wrongToken1", "hi"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("403 Forbidden"), "{r:?}");
}

#[test]
fn subscribe_prints_the_welcome() {
    let w = Wxmp::start("");
    let r = send(&[
        "--url",
        &url_of(&w),
        "--token",
        TOKEN,
        "--event",
        "subscribe",
    ]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, format!("{WELCOME}\n").as_str()),
        "{r:?}"
    );
    assert!(w.wait_for_log("event/subscribe"));
}

#[test]
fn a_click_answered_success_says_nothing_is_shown() {
    let w = Wxmp::start("");
    let args = ["--url", &url_of(&w), "--token", TOKEN, "--event", "CLICK"];
    let r = send(&args);
    assert_eq!(r.code, 2, "CLICK without --key is a usage error: {r:?}");
    assert!(r.stderr.contains("--key"), "{r:?}");
    let r = send(&[&args[..], &["--key", "MENU_1"]].concat());
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("shows the user nothing"), "{r:?}");
    assert!(w.wait_for_log("event/CLICK \"CLICK MENU_1\""));
}

#[test]
fn raw_prints_the_reply_xml() {
    let w = Wxmp::start("");
    let r = send(&[
        "--url",
        &url_of(&w),
        "--token",
        TOKEN,
        "--raw",
        "--from",
        "oRaw",
        "--to",
        ACCOUNT,
        "x",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let resp = Resp {
        status: 200,
        headers: vec![],
        body: r.stdout.trim_end().to_string(),
    };
    assert_text_reply(&resp, "oRaw", DEFAULT_REPLY);
}

#[test]
fn safe_mode_is_used_when_the_config_has_a_key() {
    let w = Wxmp::start(&safe_mode_config());
    let dir = temp_dir("send-safe");
    std::fs::write(
        dir.join("wxmp.toml"),
        format!(
            "token = \"{TOKEN}\"\nlisten = \"{}\"\n{}",
            w.addr,
            safe_mode_config()
        ),
    )
    .unwrap();
    let r = send_in(&dir, &["--from", "oSafe", "你好"]);
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, format!("{DEFAULT_REPLY}\n").as_str()),
        "{r:?}"
    );
    let r = send_in(&dir, &["--from", "oSafe", "--raw", "again"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("<xml><Encrypt>"), "{r:?}");
    assert!(
        r.stdout.contains(DEFAULT_REPLY),
        "decrypted XML follows: {r:?}"
    );
    assert!(w.wait_for_log("oSafe text \"again\""));
    // "success" is not encrypted, so there is nothing decrypted to show under it.
    let r = send_in(&dir, &["--raw", "--event", "CLICK", "--key", "MENU_1"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "success\n"), "{r:?}");
    // A wrong key: the server cannot open the message and says so with a 4xx.
    std::fs::write(
        dir.join("wxmp.toml"),
        format!(
            "token = \"{TOKEN}\"\nlisten = \"{}\"\napp_id = \"{SAMPLE_APP_ID}\"\n\
             encoding_aes_key = \"{}\"\n",
            w.addr,
            "Z".repeat(43)
        ),
    )
    .unwrap();
    let r = send_in(&dir, &["hi"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("400") || r.stderr.contains("403"),
        "{r:?}"
    );
}

#[test]
fn a_plain_message_to_an_encrypted_only_server_is_not_blamed_on_the_token() {
    let w = Wxmp::start(&format!("{}encrypted_only = true\n", safe_mode_config()));
    // The right token, but no keys: the server refuses the plain POST, not the signature.
    let r = send(&["--url", &url_of(&w), "--token", TOKEN, "hi"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("403 Forbidden"), "{r:?}");
    assert!(r.stderr.contains("encrypted messages only"), "{r:?}");
    assert!(r.stderr.contains("encoding_aes_key"), "{r:?}");
    assert!(
        !r.stderr.contains("token used here is not the server's"),
        "the token is right: {r:?}"
    );
}

#[test]
fn connection_refused_is_a_clear_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/");
    let r = send(&["--url", &url, "--token", TOKEN, "hi"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("connection refused"), "{r:?}");
    assert!(r.stderr.contains("Is wxmp running"), "{r:?}");
    assert!(
        !r.stderr.contains("(try 2"),
        "only a try with no answer is repeated: {r:?}"
    );
}

#[test]
fn https_without_curl_prints_the_curl_command_to_use_instead() {
    // A PATH with no curl on it.
    let empty = temp_dir("no-curl");
    let r = send_with_env(
        &temp_dir("send"),
        &[
            "--url",
            "https://example.com/wx/",
            "--token",
            TOKEN,
            "--verify",
        ],
        &[("PATH", empty.to_str().expect("utf-8 path"))],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("curl, which is not installed"), "{r:?}");
    assert!(r.stderr.contains("curl -sS"), "{r:?}");
    assert!(
        r.stderr.contains("https://example.com/wx/?signature="),
        "{r:?}"
    );
}

#[test]
fn no_token_and_bad_command_lines_exit_2_or_1_with_advice() {
    let r = send(&["--url", "http://127.0.0.1:1/", "hi"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--token"), "{r:?}");
    let r = send(&["--url", "http://127.0.0.1:1/"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("say what to send"), "{r:?}");
    let r = send(&["--help"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("--verify"));
    let r = send(&["--config", "missing.toml", "hi"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("does not exist"), "{r:?}");
}

/// A one-connection server that reads the request, waits `delay`, then writes `answer` (an
/// HTTP body, wrapped in a 200 response unless it already starts with `HTTP/`). The request
/// (head and body) comes back through the channel.
fn fake_server(answer: &str, delay: Duration) -> (SocketAddr, mpsc::Receiver<String>) {
    fake_server_holding(answer, delay, Duration::ZERO)
}

/// Like [`fake_server`], but keeps the connection open for `hold` after answering.
fn fake_server_holding(
    answer: &str,
    delay: Duration,
    hold: Duration,
) -> (SocketAddr, mpsc::Receiver<String>) {
    let answer = if answer.starts_with("HTTP/") {
        answer.to_string()
    } else {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        )
    };
    fake_server_in_parts(vec![answer], delay, hold)
}

/// A one-connection server that reads the request, then writes each of `parts` (the raw
/// response, in pieces) after waiting `delay`, and keeps the connection open for `hold`.
fn fake_server_in_parts(
    parts: Vec<String>,
    delay: Duration,
    hold: Duration,
) -> (SocketAddr, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&raw).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    let _ = tx.send(text);
                    break;
                }
            }
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
        for part in &parts {
            std::thread::sleep(delay);
            let _ = s.write_all(part.as_bytes());
        }
        std::thread::sleep(hold);
    });
    (addr, rx)
}

fn send_to_fake(answer: &str, delay: Duration, extra: &[&str]) -> (Run, String) {
    let (addr, rx) = fake_server(answer, delay);
    let url = format!("http://{addr}/wx/");
    let args = [&["--url", url.as_str(), "--token", TOKEN][..], extra].concat();
    let r = send(&args);
    let request = rx.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
    (r, request)
}

#[test]
fn the_request_is_the_one_wechat_would_send() {
    let reply = "<xml><ToUserName><![CDATA[oReq]]></ToUserName><FromUserName><![CDATA[gh_x]]></FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[ok]]></Content></xml>";
    let (r, request) = send_to_fake(
        reply,
        Duration::ZERO,
        &["--from", "oReq", "--to", "gh_x", "a]]>b"],
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "ok\n"), "{r:?}");
    let (head, body) = request.split_once("\r\n\r\n").expect("a request");
    let line = head.lines().next().unwrap();
    assert!(line.starts_with("POST /wx/?signature="), "{line}");
    assert!(line.ends_with(" HTTP/1.1"), "{line}");
    assert!(head.contains("\r\nConnection: close"), "{head}");
    let target = line.split(' ').nth(1).unwrap();
    let query = wxmp::server::Query::parse(target.split_once('?').unwrap().1);
    let (ts, nonce) = (query.get("timestamp").unwrap(), query.get("nonce").unwrap());
    assert!(wxmp::signature::verify(
        TOKEN,
        ts,
        nonce,
        query.get("signature").unwrap()
    ));
    assert_eq!(query.get("openid"), Some("oReq"));
    let msg = wxmp::message::parse(body).expect("WeChat-style XML");
    assert_eq!(msg.field("Content"), Some("a]]>b"));
    assert_eq!(
        (msg.from_user.as_str(), msg.to_user.as_str()),
        ("oReq", "gh_x")
    );
    assert!(msg
        .field("MsgId")
        .is_some_and(|id| id.parse::<u64>().is_ok()));
}

#[test]
fn a_non_xml_reply_fails() {
    let (r, _) = send_to_fake("hello there", Duration::ZERO, &["hi"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("not XML"), "{r:?}");
    assert!(r.stderr.contains("该公众号暂时无法提供服务"), "{r:?}");
}

#[test]
fn a_malformed_xml_reply_fails() {
    let (r, _) = send_to_fake("<xml><Content>unclosed</xml>", Duration::ZERO, &["hi"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("malformed XML"), "{r:?}");
}

#[test]
fn an_empty_text_content_fails() {
    let reply = format!(
        "<xml><ToUserName><![CDATA[o_wxmp_send_user]]></ToUserName><FromUserName><![CDATA[gh_wxmp_send]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[]]></Content></xml>",
        now()
    );
    let (r, _) = send_to_fake(&reply, Duration::ZERO, &["hi"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("empty Content"), "{r:?}");
    // The same reply with text in it passes: the check is about the content.
    let good = reply.replace("<![CDATA[]]></Content>", "<![CDATA[x]]></Content>");
    let (r, _) = send_to_fake(&good, Duration::ZERO, &["hi"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "x\n"), "{r:?}");
}

#[test]
fn a_server_error_page_fails() {
    let (r, _) = send_to_fake(
        "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 11\r\n\r\nbad gateway",
        Duration::ZERO,
        &["hi"],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("502"), "{r:?}");
}

#[test]
fn a_reply_slower_than_the_timeout_fails_in_time() {
    // Three tries of 1 s each, as WeChat makes three (the fake answers none of them in time).
    let (r, _) = send_to_fake("success", Duration::from_secs(6), &["--timeout", "1", "hi"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("within 1 s"), "{r:?}");
    assert!(
        r.stderr.contains("(try 2 of 3)") && r.stderr.contains("(try 3 of 3)"),
        "{r:?}"
    );
    assert!(!r.stderr.contains("(try 4"), "three tries in all: {r:?}");
    assert!(
        r.took < Duration::from_millis(5500),
        "gave up in time: {r:?}"
    );
    assert!(
        r.took >= Duration::from_millis(2900),
        "waited the timeout three times: {r:?}"
    );
}

#[test]
fn a_slow_command_answers_a_later_try_as_with_wechat() {
    let dir = temp_dir("send-slow");
    std::fs::write(
        dir.join("wxmp.toml"),
        format!(
            "token = \"{TOKEN}\"\nlisten = \"127.0.0.1:0\"\n[[command]]\nname = \"慢\"\n\
             exec = [\"./slow.sh\"]\ntimeout = 5\n"
        ),
    )
    .unwrap();
    let script = dir.join("slow.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho run >> runs.txt\nsleep 1.5\necho slow-done\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let w = Wxmp::start_in(&dir, &["serve", "--config", "wxmp.toml"], &[]);
    let r = send(&[
        "--url",
        &url_of(&w),
        "--token",
        TOKEN,
        "--timeout",
        "1",
        "慢",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("slow-done"), "{r:?}");
    assert!(r.stderr.contains("(try 2 of 3)"), "{r:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("runs.txt")).unwrap(),
        "run\n",
        "ran once"
    );
}

#[test]
fn a_reply_within_the_timeout_is_waited_for() {
    let (r, _) = send_to_fake(
        "success",
        Duration::from_millis(700),
        &["--timeout", "3", "hi"],
    );
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn an_answer_on_a_connection_left_open_is_taken_at_once() {
    let reply = format!(
        "<xml><ToUserName><![CDATA[o_wxmp_send_user]]></ToUserName><FromUserName><![CDATA[gh_wxmp_send]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[kept open]]></Content></xml>",
        now()
    );
    let (addr, _rx) = fake_server_holding(&reply, Duration::ZERO, Duration::from_secs(4));
    let url = format!("http://{addr}/");
    let r = send(&["--url", &url, "--token", TOKEN, "--timeout", "3", "hi"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "kept open\n"), "{r:?}");
    assert!(
        r.took < Duration::from_secs(2),
        "did not wait for the close: {r:?}"
    );
}

#[test]
fn a_chunked_reply_is_read_to_its_last_chunk_even_when_a_chunk_ends_in_0_crlf() {
    // The text ends its first line with "10" and the server sends that chunk on its own: the
    // bytes read so far end in "0\r\n\r\n", as the last chunk does, but the reply goes on.
    let first = format!(
        "<xml><ToUserName><![CDATA[o_wxmp_send_user]]></ToUserName><FromUserName><![CDATA[gh_wxmp_send]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[共 10\r\n",
        now()
    );
    let second = "条]]></Content></xml>";
    let (addr, _rx) = fake_server_in_parts(
        vec![
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n",
                first.len()
            ),
            format!("{:x}\r\n{second}\r\n0\r\n\r\n", second.len()),
        ],
        Duration::from_millis(300),
        Duration::ZERO,
    );
    let url = format!("http://{addr}/");
    let r = send(&["--url", &url, "--token", TOKEN, "--timeout", "5", "几条"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "共 10\n条\n"), "{r:?}");
}

/// A reply from `gh_wxmp_send` to `o_wxmp_send_user` (the defaults) of `msg_type`, with `body`.
fn reply_to_default_user(msg_type: &str, body: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[o_wxmp_send_user]]></ToUserName><FromUserName><![CDATA[gh_wxmp_send]]></FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[{msg_type}]]></MsgType>{body}</xml>",
        now()
    )
}

#[test]
fn an_answer_of_up_to_1_mib_is_read_and_one_byte_more_is_refused() {
    // No Content-Length: the answer ends when the server closes, so every byte is counted.
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nConnection: close\r\n\r\n";
    let reply = reply_to_default_user("text", "<Content><![CDATA[big]]></Content>");
    for size in [1024 * 1024, 1024 * 1024 + 1] {
        // Blanks after </xml>, which WeChat ignores.
        let pad = " ".repeat(size - head.len() - reply.len());
        let (addr, _rx) = fake_server(&format!("{head}{reply}{pad}"), Duration::ZERO);
        let url = format!("http://{addr}/");
        let r = send(&["--url", &url, "--token", TOKEN, "hi"]);
        if size == 1024 * 1024 {
            assert_eq!((r.code, r.stdout.as_str()), (0, "big\n"), "{r:?}");
        } else {
            assert_eq!(r.code, 1, "{r:?}");
            assert!(r.stderr.contains("is over 1024 KiB"), "{r:?}");
        }
    }
}

#[test]
fn an_answer_that_stops_half_way_is_no_answer_and_the_message_is_sent_again() {
    let (addr, _rx) = fake_server_holding(
        "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 100\r\n\r\n<xml>",
        Duration::ZERO,
        Duration::from_secs(5),
    );
    let url = format!("http://{addr}/");
    let r = send(&["--url", &url, "--token", TOKEN, "--timeout", "1", "hi"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no complete answer from"), "{r:?}");
    assert!(r.stderr.contains("(try 3 of 3)"), "{r:?}");
    assert!(
        !r.stderr.contains("closed"),
        "the server never closed: {r:?}"
    );
}

#[test]
fn an_event_may_be_answered_with_up_to_8_articles_and_a_message_with_1() {
    let news = |n: usize| {
        let items = "<item><Title><![CDATA[T]]></Title><Url><![CDATA[http://u/]]></Url></item>";
        reply_to_default_user(
            "news",
            &format!(
                "<ArticleCount>{n}</ArticleCount><Articles>{}</Articles>",
                items.repeat(n)
            ),
        )
    };
    let (r, _) = send_to_fake(&news(8), Duration::ZERO, &["--event", "subscribe"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("[news] 8 articles\n"), "{r:?}");
    let (r, _) = send_to_fake(&news(2), Duration::ZERO, &["hi"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .contains("WeChat takes 1 to 1 in answer to a user message"),
        "{r:?}"
    );
}

#[test]
fn the_config_file_and_the_token_may_come_from_the_environment() {
    let w = Wxmp::start("[reply]\ndefault = \"from the server\"");
    let dir = temp_dir("send-env");
    std::fs::write(
        dir.join("elsewhere.toml"),
        format!("token = \"wrongToken1\"\nlisten = \"{}\"\n", w.addr),
    )
    .unwrap();
    let r = send_with_env(
        &dir,
        &["--from", "oEnv", "hi"],
        &[("WXMP_CONFIG", "elsewhere.toml"), ("WXMP_TOKEN", TOKEN)],
    );
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, "from the server\n"),
        "{r:?}"
    );
    assert!(w.wait_for_log("oEnv text \"hi\""));
    // Set but empty is unset, as for `wxmp serve`: ./wxmp.toml, which is not there.
    let r = send_with_env(&dir, &["hi"], &[("WXMP_CONFIG", "")]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no token to sign with"), "{r:?}");
}

/// A folder holding a `curl` that records its arguments in `args.txt` beside it and, like
/// `curl -o - -w "\n%{http_code}"`, prints `body` then a line with the status; with
/// `FAKE_CURL_FAIL` set it fails as curl does for an unknown host.
fn fake_curl(body: &str) -> std::path::PathBuf {
    let dir = temp_dir("fake-curl");
    let script = dir.join("curl");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n\
             if [ -n \"$FAKE_CURL_FAIL\" ]; then\n\
             printf 'curl: (6) Could not resolve host: example.com\\n' >&2; exit 6\nfi\n\
             printf '%s\\n200' '{body}'\n",
            dir.join("args.txt").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    dir
}

#[test]
fn an_https_url_goes_through_curl_with_the_signed_query_and_the_body() {
    let bin = fake_curl(&reply_to_default_user(
        "text",
        "<Content><![CDATA[via curl]]></Content>",
    ));
    let path = bin.to_str().expect("utf-8 path");
    let args = [
        "--url",
        "https://example.com/wx/",
        "--token",
        TOKEN,
        "a]]>b",
    ];
    let r = send_with_env(&temp_dir("send"), &args, &[("PATH", path)]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "via curl\n"), "{r:?}");
    let curl_args = std::fs::read_to_string(bin.join("args.txt")).unwrap();
    let curl_args: Vec<&str> = curl_args.lines().collect();
    let body = curl_args
        .iter()
        .position(|&a| a == "--data-binary")
        .map(|i| curl_args[i + 1])
        .expect("the body is posted");
    let msg = wxmp::message::parse(body).expect("WeChat-style XML");
    assert_eq!(msg.field("Content"), Some("a]]>b"));
    let url = curl_args.last().unwrap();
    let query = url
        .strip_prefix("https://example.com/wx/?")
        .expect("the signed query on the URL");
    let query = wxmp::server::Query::parse(query);
    assert!(wxmp::signature::verify(
        TOKEN,
        query.get("timestamp").unwrap(),
        query.get("nonce").unwrap(),
        query.get("signature").unwrap()
    ));

    let r = send_with_env(
        &temp_dir("send"),
        &args,
        &[("PATH", path), ("FAKE_CURL_FAIL", "1")],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(
            "curl could not reach https://example.com/wx/: curl: (6) Could not resolve host"
        ),
        "{r:?}"
    );

    // A curl that is there but cannot be run is not called missing.
    let unrunnable = temp_dir("unrunnable-curl");
    std::fs::write(unrunnable.join("curl"), "not a program").unwrap();
    let path = unrunnable.to_str().expect("utf-8 path");
    let r = send_with_env(&temp_dir("send"), &args, &[("PATH", path)]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("cannot run curl: Permission denied"),
        "{r:?}"
    );
}

/// A one-connection server that reads the request's head but not its body, waits for the body
/// to arrive, writes `answer` (nothing when empty) and closes: the unread body makes the close
/// a reset.
fn resetting_server(answer: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        let _ = s.write_all(answer.as_bytes());
        std::thread::sleep(Duration::from_millis(200));
    });
    addr
}

#[test]
fn an_answer_followed_by_a_reset_is_used_and_a_reset_alone_is_an_error() {
    // No Content-Length: only the end of the connection ends this answer.
    let addr = resetting_server(
        "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\n\r\n<xml><ToUserName><![CDATA[o_wxmp_send_user]]></ToUserName><FromUserName><![CDATA[gh_wxmp_send]]></FromUserName><CreateTime>1</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[then reset]]></Content></xml>",
    );
    let url = format!("http://{addr}/");
    let r = send(&["--url", &url, "--token", TOKEN, "hi"]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "then reset\n"), "{r:?}");

    let addr = resetting_server("");
    let url = format!("http://{addr}/");
    let r = send(&["--url", &url, "--token", TOKEN, "hi"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("failed: Connection reset by peer"),
        "{r:?}"
    );
}
