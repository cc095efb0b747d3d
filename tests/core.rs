//! Conversations with the real wxmp binary: signed requests in, exact replies out.

mod common;
use common::*;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn get_verification_echoes_echostr_with_a_good_signature() {
    let w = Wxmp::start("");
    let q = signed_query("/", TOKEN);
    let r = w.get(&format!("{q}&echostr=8837%2B45%20abc"));
    assert_eq!((r.status, r.body.as_str()), (200, "8837+45 abc"));
    assert!(r
        .header("Content-Type")
        .unwrap_or_default()
        .starts_with("text/plain"));
}

#[test]
fn get_verification_with_a_bad_signature_is_403() {
    let w = Wxmp::start("");
    let r = w.get("/?signature=f21891de399b4e33a1a93c9a7b8a8fffb5a443ff&timestamp=1410685589&nonce=test&echostr=x");
    assert_eq!(r.status, 403);
    assert!(!r.body.contains('x'));
    let r = w.get("/?timestamp=1&nonce=2&echostr=x");
    assert_eq!(r.status, 403);
    assert!(w.wait_for_log("URL verification refused"));
}

/// A URL WeChat signed `age` seconds ago (negative: ahead of this clock).
fn signed_at(age: i64, extra: &str) -> String {
    let ts = now().saturating_add_signed(-age).to_string();
    format!(
        "/?signature={}&timestamp={ts}&nonce=77{extra}",
        sign(&[TOKEN, &ts, "77"])
    )
}

#[test]
fn a_signed_url_is_good_for_five_minutes_either_way() {
    let w = Wxmp::start("");
    // An old URL (an access log keeps them) would otherwise sign any body, any sender.
    let r = w.request(
        "POST",
        &signed_at(600, ""),
        &[],
        text("oAdmin", "hi").as_bytes(),
    );
    assert_eq!(r.status, 403);
    assert!(w.wait_for_log("600 s behind this server's clock"));
    let r = w.get(&signed_at(-3600, "&echostr=e"));
    assert_eq!(r.status, 403);
    assert!(w.wait_for_log("URL verification refused: timestamp"));
    assert!(w.stderr().contains("clock is slow"));
    // Within the window, both ways: a retry 15 s on, a clock a little off.
    for age in [15, 280, -280] {
        let r = w.request(
            "POST",
            &signed_at(age, ""),
            &[],
            text("oA", "hi").as_bytes(),
        );
        assert_text_reply(&r, "oA", DEFAULT_REPLY);
    }
    assert_eq!(w.get(&signed_at(200, "&echostr=e")).body, "e");
}

#[test]
fn a_signed_url_carries_one_message_and_its_retries() {
    let w = Wxmp::start("");
    let url = signed_query("/", TOKEN);
    let hi = text("oUser", "hi");
    let first = w.request("POST", &url, &[], hi.as_bytes());
    assert_text_reply(&first, "oUser", DEFAULT_REPLY);
    // WeChat may retry with the first try's URL: the same message gets the same answer.
    let retry = w.request("POST", &url, &[], hi.as_bytes());
    assert_eq!((retry.status, &retry.body), (200, &first.body));
    // The URL read from an access log, with another body (another sender): refused.
    let forged = w.request("POST", &url, &[], text("oAdmin", "hi").as_bytes());
    assert_eq!(
        (forged.status, forged.body.as_str()),
        (403, "forbidden: signed URL already used")
    );
    assert!(w.wait_for_log("already carried another message"));
    // A verification's URL carries no message at all.
    let verification = format!("{}&echostr=e", signed_query("/", TOKEN));
    assert_eq!(w.get(&verification).body, "e");
    let r = w.request("POST", &verification, &[], text("oAdmin", "hi").as_bytes());
    assert_eq!(r.status, 403);
    // And a URL of its own still carries a message.
    assert_text_reply(
        &w.post_signed(&text("oAdmin", "hi")),
        "oAdmin",
        DEFAULT_REPLY,
    );
}

#[test]
fn listening_beyond_loopback_is_warned_about() {
    let w = Wxmp::start("");
    let dir = config_dir("wxmp-open", "");
    let open = Wxmp::start_in(
        &dir,
        &["serve", "--config", "wxmp.toml"],
        &[("WXMP_LISTEN", "0.0.0.0:0")],
    );
    assert!(open.wait_for_log("can be reached from other machines"));
    assert_text_reply(&w.post_signed(&text("oA", "x")), "oA", DEFAULT_REPLY);
    assert!(w.wait_for_log("oA text"));
    assert!(!w.stderr().contains("other machines"), "{}", w.stderr());
    // A socket of its own (`listen` port 0 bound to another): nothing to say about systemd's.
    assert!(!w.stderr().contains("systemd"), "{}", w.stderr());
}

#[test]
fn get_verification_with_wrong_token_is_403() {
    let w = Wxmp::start("");
    let q = signed_query("/", "someOtherToken");
    assert_eq!(w.get(&format!("{q}&echostr=x")).status, 403);
}

#[test]
fn signed_text_gets_the_default_reply() {
    let w = Wxmp::start("");
    let r = w.post_signed(&text("oAlice", "你好"));
    assert_text_reply(&r, "oAlice", DEFAULT_REPLY);
    assert!(r.header("Content-Type").unwrap_or_default().contains("xml"));
    // The log line names who sent it: the peer's address, then the sender's openid.
    assert!(
        w.wait_for_log("127.0.0.1 oAlice text \"你好\" -> text"),
        "{}",
        w.stderr()
    );
}

#[test]
fn behind_a_proxy_on_this_machine_the_log_names_the_client_it_forwarded() {
    let w = Wxmp::start("");
    let via = |headers: &[(&str, &str)], from: &str| {
        let url = signed_query("/", TOKEN);
        let r = w.request("POST", &url, headers, text(from, "hi").as_bytes());
        assert_text_reply(&r, from, DEFAULT_REPLY);
    };
    // nginx's X-Real-IP first; the first address of X-Forwarded-For without it.
    via(
        &[
            ("X-Real-IP", "203.0.113.7"),
            ("X-Forwarded-For", "192.0.2.1"),
        ],
        "oReal",
    );
    via(
        &[("X-Forwarded-For", "198.51.100.4, 10.0.0.1")],
        "oForwarded",
    );
    // A value that is no address names nobody: the next header, or the proxy itself.
    via(
        &[("X-Real-IP", "unknown"), ("X-Forwarded-For", "2001:db8::5")],
        "oV6",
    );
    via(&[("X-Real-IP", "not-an-ip")], "oNobody");
    for line in [
        "203.0.113.7 oReal text",
        "198.51.100.4 oForwarded text",
        "2001:db8::5 oV6 text",
        "127.0.0.1 oNobody text",
    ] {
        assert!(w.wait_for_log(line), "{line}: {}", w.stderr());
    }
}

#[test]
fn post_with_bad_signature_is_403_and_not_parsed() {
    let w = Wxmp::start("");
    let r = w.request(
        "POST",
        "/?signature=0000000000000000000000000000000000000000&timestamp=1&nonce=2",
        &[],
        b"not even xml",
    );
    assert_eq!(r.status, 403);
    assert!(w.wait_for_log("POST refused: bad or missing signature"));
    assert!(!w.stderr().contains("not well-formed"));
}

#[test]
fn post_without_signature_is_403() {
    let w = Wxmp::start("");
    let r = w.request("POST", "/", &[], text("oA", "hi").as_bytes());
    assert_eq!(r.status, 403);
    let r = w.request(
        "POST",
        "/?timestamp=1&nonce=2",
        &[],
        text("oA", "hi").as_bytes(),
    );
    assert_eq!(r.status, 403);
}

#[test]
fn post_signed_with_another_token_is_403() {
    let w = Wxmp::start("");
    let r = w.request(
        "POST",
        &signed_query("/", "notTheToken"),
        &[],
        text("oA", "hi").as_bytes(),
    );
    assert_eq!(r.status, 403);
}

#[test]
fn subscribe_gets_the_welcome() {
    let w = Wxmp::start("");
    let r = w.post_signed(&msg(
        "oNew",
        "event",
        &[("Event", "subscribe"), ("EventKey", "")],
    ));
    assert_text_reply(&r, "oNew", WELCOME);
}

#[test]
fn configured_replies_are_used() {
    let w = Wxmp::start("[reply]\ndefault = \"没看懂\"\nwelcome = \"欢迎你\"");
    assert_text_reply(&w.post_signed(&text("oA", "x")), "oA", "没看懂");
    let r = w.post_signed(&msg("oA", "event", &[("Event", "subscribe")]));
    assert_text_reply(&r, "oA", "欢迎你");
}

#[test]
fn cdata_terminator_and_markup_in_reply_text_stay_well_formed() {
    let w = Wxmp::start("[reply]\ndefault = \"a]]>b <&> ]]]]> \\\"q\\\"\"");
    let r = w.post_signed(&text("oA", "x"));
    assert_text_reply(&r, "oA", "a]]>b <&> ]]]]> \"q\"");
    assert!(r.body.contains("]]]]><![CDATA[>"), "{}", r.body);
}

#[test]
fn a_retry_gets_the_same_bytes() {
    let w = Wxmp::start("");
    let body = text("oA", "retry me");
    let first = w.post_signed(&body);
    std::thread::sleep(std::time::Duration::from_millis(1100)); // CreateTime would differ if re-rendered
    let second = w.post_signed(&body);
    assert_eq!(first.status, 200);
    assert_eq!(first.body, second.body);
    assert!(w.wait_for_log("(try 2, same answer)"));
}

#[test]
fn event_retries_are_deduplicated_by_sender_time_event_and_key() {
    let w = Wxmp::start("");
    let ev = msg(
        "oA",
        "event",
        &[("Event", "subscribe"), ("EventKey", "qrscene_1")],
    );
    let a = w.post_signed(&ev);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = w.post_signed(&ev);
    assert_eq!(a.body, b.body);
    // Another key in the same second is another event.
    let other = ev.replace("qrscene_1", "qrscene_2");
    let c = w.post_signed(&other);
    assert_ne!(c.body, a.body);
}

#[test]
fn job_finish_reports_of_one_second_are_two_messages_not_a_retry() {
    let w = Wxmp::start("");
    // Two template sends to one user finishing in the same second: no EventKey, own MsgIDs.
    let first = msg(
        "oA",
        "event",
        &[
            ("Event", "TEMPLATESENDJOBFINISH"),
            ("MsgID", "200163836"),
            ("Status", "success"),
        ],
    );
    let second = first.replace("200163836", "200163837");
    assert_success_body(&w.post_signed(&first));
    assert_success_body(&w.post_signed(&second));
    // The same report again is WeChat's retry.
    assert_success_body(&w.post_signed(&first));
    assert_eq!(
        w.wait_for_count("event/TEMPLATESENDJOBFINISH", 3),
        3,
        "{}",
        w.stderr()
    );
    // Only the third is a retry (the lines of the three can be logged in any order).
    assert_eq!(
        w.stderr().matches("same answer").count(),
        1,
        "the second report was taken for a retry of the first:\n{}",
        w.stderr()
    );
}

fn assert_success_body(r: &common::Resp) {
    assert_eq!((r.status, r.body.as_str()), (200, "success"));
}

#[test]
fn deeply_nested_or_bloated_xml_is_400_and_the_server_lives_on() {
    let w = Wxmp::start("");
    let head = "<xml><ToUserName>gh</ToUserName><FromUserName>oA</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><MsgId>1</MsgId>";
    // 9,000 levels in 63 KB once overflowed a thread's stack and killed the process.
    let deep = format!("{head}{}x{}</xml>", "<a>".repeat(9000), "</a>".repeat(9000));
    let wide = format!("{head}{}</xml>", "<a/>".repeat(15_000));
    let shallow_but_too_deep = format!("{head}{}x{}</xml>", "<a>".repeat(9), "</a>".repeat(9));
    for body in [&deep, &wide, &shallow_but_too_deep] {
        assert!(body.len() < 64 * 1024);
        let r = w.post_signed(body);
        assert_eq!(r.status, 400, "{}", r.body);
    }
    assert!(w.wait_for_log("nest more than 8 deep"));
    assert_text_reply(
        &w.post_signed(&text("oA", "still there?")),
        "oA",
        "对不起，我没有看懂你的信息~",
    );
}

#[test]
fn a_request_cannot_write_a_log_line_of_its_own() {
    let w = Wxmp::start("");
    let forged = "2026-12-02T05:00:00.000000000Z [ERROR] wxmp: forged";
    // Unsigned: a bare line feed in the request target (404), or in the method (405: the path
    // of a 405 is WeChat's own).
    let line = format!("\n{}", forged.replace(' ', "\t"));
    let r = common::http(
        w.addr,
        "GET",
        &format!("/x{line}"),
        &[],
        b"",
        Duration::from_secs(5),
    );
    assert_eq!(r.status, 404);
    let r = common::http(
        w.addr,
        &format!("BREW{line}"),
        "/",
        &[],
        b"",
        Duration::from_secs(5),
    );
    assert_eq!(r.status, 405);
    // Signed, with the line in the sender's openid.
    let body = text("oA", "hi").replace("[CDATA[oA]]", &format!("[CDATA[oA\n{forged}]]"));
    assert_eq!(w.post_signed(&body).status, 400);
    assert!(w.wait_for_log("holds a control character"));
    assert!(w.wait_for_log("not found"));
    assert!(w.wait_for_log("method not allowed"));
    for line in w.stderr().lines() {
        assert!(!line.starts_with("2026-12-02T05:00:00"), "{}", w.stderr());
        assert!(!line.contains(forged), "{}", w.stderr());
    }
}

#[test]
fn body_over_64_kib_is_413_without_reading_it() {
    let w = Wxmp::start("");
    let q = signed_query("/", TOKEN);
    // Announce a huge body but send none of it: the answer must come from the header alone.
    let r = common::http(
        w.addr,
        "POST",
        &q,
        &[("Content-Length", "10000000")],
        b"",
        std::time::Duration::from_secs(5),
    );
    assert_eq!(r.status, 413);
    let big = format!("<xml>{}</xml>", "a".repeat(70 * 1024));
    assert_eq!(w.post_signed(&big).status, 413);
    assert!(w.wait_for_log("(413)"));
}

#[test]
fn chunked_body_over_the_limit_is_413() {
    let w = Wxmp::start("");
    let q = signed_query("/", TOKEN);
    let body = chunked(&"a".repeat(20 * 8192));
    let r = w.request(
        "POST",
        &q,
        &[("Transfer-Encoding", "chunked"), ("Content-Length", "")],
        &body,
    );
    assert!(r.status == 413 || r.status == 400, "{r:?}");
}

#[test]
fn a_transfer_encoding_that_does_not_end_in_chunked_is_400_at_once() {
    // RFC 9112, 6.1: a request whose Transfer-Encoding does not end in chunked has no length
    // that can be known, and must be refused 400. tiny_http decodes such a body as chunks all
    // the same, and waited for a chunk size the client never sends: no answer at all.
    let w = Wxmp::start("");
    for te in ["identity", "gzip", "chunked, gzip"] {
        let body = text("oTe", "hi");
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\nContent-Length: {}\r\n\r\n",
            signed_query("/", TOKEN),
            body.len()
        );
        let answer = first_of_answer(&w, &format!("{head}{body}"), Duration::from_secs(3));
        assert!(answer.starts_with("HTTP/1.1 400"), "{te}: {answer:?}");
        assert!(
            w.wait_for_log(&format!(
                "POST refused (400): Transfer-Encoding {te:?} does not end in chunked"
            )),
            "{}",
            w.stderr()
        );
    }
}

/// A text message padded to exactly `len` bytes of XML.
fn message_of_exactly(len: usize) -> String {
    let bare = text("oEdge", "");
    let pad = len - bare.len();
    text("oEdge", &"a".repeat(pad))
}

/// `body` sent chunked (8 KiB chunks), for `Wxmp::request` with its own `Content-Length` left out.
fn chunked(body: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.as_bytes().chunks(8192) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[test]
fn a_body_of_exactly_64_kib_is_read_and_one_byte_more_is_413_chunked_or_not() {
    let w = Wxmp::start("");
    let limit = wxmp::server::MAX_BODY;
    let exact = message_of_exactly(limit);
    assert_eq!(exact.len(), limit);
    assert_text_reply(&w.post_signed(&exact), "oEdge", DEFAULT_REPLY);
    let over = message_of_exactly(limit + 1);
    assert_eq!(w.post_signed(&over).status, 413);
    let te = [("Transfer-Encoding", "chunked"), ("Content-Length", "")];
    let q = signed_query("/", TOKEN);
    let r = w.request("POST", &q, &te, &chunked(&exact));
    assert_text_reply(&r, "oEdge", DEFAULT_REPLY);
    let q = signed_query("/", TOKEN);
    let r = w.request("POST", &q, &te, &chunked(&over));
    assert_eq!(r.status, 413, "{r:?}");
}

/// Sends a signed POST head announcing a body of `len` bytes, and none of it: the answer's
/// status line, read before the connection is closed.
fn status_of_announced_body(w: &Wxmp, len: usize) -> String {
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n",
        signed_query("/", TOKEN)
    );
    let text = first_of_answer(w, &head, Duration::from_secs(5));
    text.lines().next().unwrap_or_default().to_string()
}

/// Writes `raw` to a new connection to `w` and returns what the first read of the answer
/// brings (up to 256 bytes; empty if nothing comes within `timeout`). The connection stays
/// open meanwhile: a server waiting for more of the request shows as no answer.
fn first_of_answer(w: &Wxmp, raw: &str, timeout: Duration) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(w.addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn a_body_announced_at_64_mib_is_drained_and_one_byte_more_abandoned() {
    // Up to DRAIN_LIMIT tiny_http may drain the unread body (it allocates the announced size
    // for that); past it the connection is abandoned instead, and counted.
    let w = Wxmp::start("");
    let limit = wxmp::server::DRAIN_LIMIT;
    assert!(status_of_announced_body(&w, limit).starts_with("HTTP/1.1 413"));
    assert!(
        w.wait_for_log(&format!("POST refused (413): body of {limit} bytes")),
        "{}",
        w.stderr()
    );
    assert!(status_of_announced_body(&w, limit + 1).starts_with("HTTP/1.1 413"));
    assert!(
        w.wait_for_log(&format!(
            "refused (413): Content-Length {} is over the 65536-byte limit; connection \
             abandoned (1 so far, restart at 512)",
            limit + 1
        )),
        "{}",
        w.stderr()
    );
    assert_eq!(w.stderr().matches("abandoned").count(), 1, "{}", w.stderr());
    assert_text_reply(&w.post_signed(&text("oA", "hi")), "oA", DEFAULT_REPLY);
    // One abandoned connection is no reason to restart: a stop is a clean one.
    let dir = w.dir.clone();
    let status = w.terminate();
    let log = std::fs::read_to_string(dir.join("log/wxmp.log")).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{log}");
}

#[test]
fn after_512_abandoned_connections_wxmp_exits_to_be_restarted() {
    // Each abandoned connection holds a thread and two fds until wxmp restarts: at 512 it says
    // so and exits 70, as for any restart-worthy failure.
    let mut w = Wxmp::start("");
    let over = wxmp::server::DRAIN_LIMIT + 1;
    for _ in 0..wxmp::server::ABANDON_LIMIT {
        assert!(status_of_announced_body(&w, over).starts_with("HTTP/1.1 413"));
    }
    assert!(
        w.wait_for_log("connection abandoned (512 so far, restart at 512)"),
        "{}",
        w.stderr()
    );
    assert_eq!(
        w.wait_exit(Duration::from_secs(10)),
        Some(70),
        "{}",
        w.stderr()
    );
    assert!(w.stderr().contains(
        "512 connections with huge Content-Length were abandoned (each holds a thread); exiting \
         with status 70"
    ));
}

#[test]
fn a_post_with_connection_upgrade_and_no_length_is_answered_at_once() {
    // Neither a length nor chunks: the body is empty, whatever else the connection carries.
    let w = Wxmp::start("");
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        signed_query("/", TOKEN)
    );
    let first = first_of_answer(&w, &head, Duration::from_secs(2));
    assert!(first.starts_with("HTTP/1.1 400"), "{first:?}");
}

#[test]
fn non_utf8_body_is_400() {
    let w = Wxmp::start("");
    let r = w.request(
        "POST",
        &signed_query("/", TOKEN),
        &[],
        b"<xml>\xff\xfe</xml>",
    );
    assert_eq!(r.status, 400);
    assert!(w.wait_for_log("not UTF-8"));
}

#[test]
fn malformed_xml_is_400() {
    let w = Wxmp::start("");
    assert_eq!(w.post_signed("<xml><MsgType>text</xml>").status, 400);
    assert_eq!(w.post_signed("").status, 400);
    assert!(w.wait_for_log("not well-formed XML"));
}

#[test]
fn dtd_and_entities_are_400() {
    let w = Wxmp::start("");
    let lol = "<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;\">]><xml><MsgType>text</MsgType><FromUserName>u</FromUserName><Content>&b;</Content></xml>";
    assert_eq!(w.post_signed(lol).status, 400);
    let xxe = "<!DOCTYPE xml [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><xml><MsgType>text</MsgType><FromUserName>u</FromUserName><Content>&x;</Content></xml>";
    assert_eq!(w.post_signed(xxe).status, 400);
    let undefined =
        "<xml><MsgType>text</MsgType><FromUserName>u</FromUserName><Content>&nope;</Content></xml>";
    assert_eq!(w.post_signed(undefined).status, 400);
}

#[test]
fn namespace_declarations_are_400_before_the_parser_sees_them() {
    // 3,000 namespaces in scope and 900 elements declaring one more: ~55 KB, under every size
    // limit, that took roxmltree ~4 s of CPU to parse (and a signed URL from a log could send it
    // again and again). WeChat sends no namespaces.
    let w = Wxmp::start("");
    let mut bomb = String::from("<xml");
    for i in 0..3000 {
        bomb.push_str(&format!(" xmlns:a{i}=\"u\""));
    }
    bomb.push_str("><FromUserName>u</FromUserName><MsgType>text</MsgType>");
    for _ in 0..900 {
        bomb.push_str("<k xmlns:m=\"v\"/>");
    }
    bomb.push_str("</xml>");
    assert!(bomb.len() < 64 * 1024);
    let r = w.post_signed(&bomb);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("namespace"), "{r:?}");
    assert!(w.wait_for_log("POST refused (400): an XML namespace declaration"));
    // A text that only mentions them is a text.
    let mentions = text("oU", "<a xmlns:m=\"v\">");
    assert_text_reply(&w.post_signed(&mentions), "oU", DEFAULT_REPLY);
}

/// Sends `n` signed texts from `from` on one keep-alive connection; how many were answered 200.
fn texts_on_one_connection(addr: std::net::SocketAddr, from: &str, n: usize) -> usize {
    use std::io::{BufRead, BufReader, Read, Write};
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut ok = 0;
    for i in 0..n {
        let body = text(from, &format!("flood {i}"));
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            signed_query("/", TOKEN),
            body.len()
        );
        if writer
            .write_all(format!("{head}{body}").as_bytes())
            .is_err()
        {
            break;
        }
        let (mut status, mut length) = (String::new(), 0usize);
        if reader.read_line(&mut status).unwrap_or(0) == 0 {
            break;
        }
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut answer = vec![0; length];
        if reader.read_exact(&mut answer).is_err() {
            break;
        }
        ok += usize::from(status.contains(" 200 "));
    }
    ok
}

#[test]
fn a_stderr_nobody_reads_does_not_stop_the_server() {
    // `wxmp serve 2>&1 | less` left on a page, a paused terminal, a stalled journald: stderr
    // stops being read. Its pipe is made one page small here, and nothing reads it after the
    // start: the log lines of these messages are ~100 times what it holds.
    let dir = config_dir("stderr-unread", "");
    let mut child = wxmp_command()
        .args(["serve", "--config", "wxmp.toml"])
        .current_dir(&dir)
        .env_remove("WXMP_LISTEN")
        .env_remove("WXMP_TOKEN")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Killed however the test ends (a failed assertion must not leave a server behind).
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = KillOnDrop(child);
    // SAFETY: fcntl on a pipe fd we own; F_SETPIPE_SZ takes an int.
    unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&stderr),
            libc::F_SETPIPE_SZ,
            4096,
        )
    };
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let addr: std::net::SocketAddr = loop {
        let line = lines.next().expect("wxmp exited").unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    // From here on nobody reads stderr.
    let senders: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || texts_on_one_connection(addr, &format!("oFlood{t}"), 1000))
        })
        .collect();
    let answered: usize = senders.into_iter().map(|s| s.join().unwrap()).sum();
    assert_eq!(answered, 4000, "every message answered");
    let health = http(addr, "GET", "/healthz", &[], b"", Duration::from_secs(5));
    assert_eq!(health.body, "ok");
    // The log file has every line; stderr's thread alone is stuck.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(dir.join("log").join("wxmp.log")).unwrap_or_default();
        let logged = log.matches(" text \"flood ").count();
        if logged == 4000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{logged} of 4000 lines in the file"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // And it still stops on SIGTERM, saying so in the file.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    drop(lines);
}

/// Sets wxmp's RLIMIT_FSIZE from outside (prlimit(2)); `None` lifts it.
fn cap_file_size(pid: u32, cap: Option<u64>) {
    let limit = libc::rlimit {
        rlim_cur: cap.unwrap_or(libc::RLIM_INFINITY),
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit(2) on our own child, with a valid rlimit and no old-limit pointer.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

#[test]
fn a_disk_that_fills_part_way_through_a_record_costs_log_lines_not_messages() {
    // A disk that fills in the middle of a write, made real: with RLIMIT_FSIZE the kernel writes
    // a record only up to the cap and refuses the rest (EFBIG), as a full disk stops a write
    // part-way. The cap is set and lifted from outside (prlimit); SIGXFSZ, which the kernel
    // also sends, is ignored from the start, as the process inherits it.
    let dir = config_dir("full-disk", "");
    let wxmp = Wxmp::start_prepared(&dir, &["serve", "--config", "wxmp.toml"], &[], |cmd| {
        // SAFETY: runs in the child between fork and exec; signal(2) is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, || {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            })
        };
    });
    let log_path = dir.join("log").join("wxmp.log");
    let file_size = || std::fs::metadata(&log_path).map_or(0, |m| m.len());
    assert_text_reply(
        &wxmp.post_signed(&text("oFull", "before")),
        "oFull",
        DEFAULT_REPLY,
    );
    assert_eq!(wxmp.wait_for_count(" text \"before\"", 1), 1);
    // The checkpoint of that answer is written first (it would log a warning once capped).
    let state = dir.join("log").join("wxmp.state");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&state).is_ok_and(|s| s.contains("oFull")) {
        assert!(std::time::Instant::now() < deadline, "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    // One byte of room: the next record is cut after its first byte.
    let room_at = file_size();
    cap_file_size(wxmp.pid(), Some(room_at + 1));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(file_size(), room_at, "nothing is logged while idle");
    for i in 0..20 {
        let resp = wxmp.post_signed(&text("oFull", &format!("while full {i}")));
        assert_text_reply(&resp, "oFull", DEFAULT_REPLY);
    }
    assert_eq!(
        wxmp.wait_for_count(" text \"while full ", 20),
        20,
        "stderr has them"
    );
    assert_eq!(
        wxmp.stderr()
            .matches(
                "wxmp: cannot write the log file: file too large; log lines are lost until it \
                 can be written again"
            )
            .count(),
        1,
        "said once on stderr:\n{}",
        wxmp.stderr()
    );
    let torn = std::fs::read(&log_path).unwrap();
    assert_eq!(torn.len() as u64, room_at + 1, "cut at the cap");
    assert_ne!(torn.last(), Some(&b'\n'), "the file ends inside a record");
    // Room again.
    cap_file_size(wxmp.pid(), None);
    assert_text_reply(
        &wxmp.post_signed(&text("oFull", "after")),
        "oFull",
        DEFAULT_REPLY,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = std::fs::read(&log_path).unwrap();
        if String::from_utf8_lossy(&log).contains("are lost\n") {
            break log;
        }
        assert!(std::time::Instant::now() < deadline, "no note in the file");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(log[..torn.len()], torn[..], "what was written stays");
    let tail = String::from_utf8(log[torn.len()..].to_vec()).unwrap();
    // The torn record is closed by a newline of its own; the next record starts a line.
    let tail = tail
        .strip_prefix('\n')
        .expect("a newline after the torn record");
    let whole = String::from_utf8_lossy(&torn[..room_at as usize]).into_owned();
    let before = whole.lines().last().expect("the record of \"before\"");
    let mut lines = tail.lines();
    let after = lines.next().unwrap();
    // A record glued onto the fragment would start "22026-…"; a whole one starts with the date.
    let date = before.get(..11).expect("a dated record");
    assert!(
        after.starts_with(date)
            && after.contains(" [INFO ] wxmp::server: ")
            && after.contains(" text \"after\" -> "),
        "a whole record, like {before:?}: {after:?}"
    );
    let note = lines.next().unwrap();
    let lost: usize = note
        .strip_prefix("wxmp: up to ")
        .and_then(|n| n.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the note: {note}"));
    assert!(lost >= 20, "the 20 messages' lines are counted: {note}");
    assert!(
        note.ends_with(
            " earlier log line(s) could not be written to this file (file too large) and are lost"
        ),
        "{note}"
    );
    assert!(!tail.contains("while full"), "lost lines are not pretended");
    assert_eq!(wxmp.terminate().code(), Some(0));
}

/// The log folder deleted while wxmp runs (`rm -r log`): once the file would pass `max_size`
/// the fresh one cannot be opened, which is said once on stderr, not at every line; once the
/// folder is back, a fresh `wxmp.log` is started in it.
#[test]
fn a_log_folder_deleted_while_running_is_said_once_and_written_again_once_it_is_back() {
    let dir = config_dir("log-gone", "[log]\nmax_size = \"1KB\"");
    let wxmp = Wxmp::start_in(&dir, &["serve", "--config", "wxmp.toml"], &[]);
    let log = dir.join("log");
    std::fs::remove_dir_all(&log).unwrap();
    // ~100 bytes a line: past 1 KiB several times over.
    for i in 0..30 {
        let resp = wxmp.post_signed(&text("oGone", &format!("while gone {i}")));
        assert_text_reply(&resp, "oGone", DEFAULT_REPLY);
    }
    assert_eq!(wxmp.wait_for_count(" text \"while gone ", 30), 30);
    let warnings = wxmp.stderr().matches("wxmp: log rotation: ").count();
    assert_eq!(warnings, 1, "said once:\n{}", wxmp.stderr());
    std::fs::create_dir(&log).unwrap();
    let mut back = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(log.join("wxmp.log")).is_ok_and(|s| s.contains("text \"back")) {
        assert!(
            std::time::Instant::now() < deadline,
            "no fresh wxmp.log in the folder once it was back:\n{}",
            wxmp.stderr()
        );
        let resp = wxmp.post_signed(&text("oGone", &format!("back {back}")));
        assert_text_reply(&resp, "oGone", DEFAULT_REPLY);
        back += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn missing_msgtype_is_400() {
    let w = Wxmp::start("");
    let r = w.post_signed("<xml><FromUserName>u</FromUserName><Content>hi</Content></xml>");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("MsgType"));
}

#[test]
fn other_methods_are_405() {
    let w = Wxmp::start("");
    for m in ["PUT", "DELETE", "PATCH"] {
        let r = w.request(m, "/", &[], b"");
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.header("Allow"), Some("GET, POST"));
    }
}

#[test]
fn other_paths_are_404_and_healthz_is_ok() {
    let w = Wxmp::start("path = \"/wx\"");
    assert_eq!(w.get("/").status, 404);
    let r = w.get("/healthz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    let r = w.request(
        "POST",
        &signed_query("/wx", TOKEN),
        &[],
        text("oA", "hi").as_bytes(),
    );
    assert_text_reply(&r, "oA", DEFAULT_REPLY);
}

#[test]
fn healthz_answers_head_as_it_answers_get() {
    // Monitors often ask with HEAD: the same status and length as GET, without the body (and
    // no "not found" warning in the log for every check).
    let w = Wxmp::start("");
    let r = w.request("HEAD", "/healthz", &[], b"");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("Content-Length"), Some("2"), "{r:?}");
    assert_eq!(r.body, "");
    assert_eq!(w.get("/healthz").body, "ok");
    assert!(!w.stderr().contains("not found"), "{}", w.stderr());
}

#[test]
fn a_request_target_in_absolute_form_is_answered_like_its_path() {
    // HTTP/1.1 servers must accept `POST http://host/path?query` (RFC 9112, 3.2.2), as a
    // client sends it through a forward proxy; tiny_http passes the target on as it came.
    let w = Wxmp::start("path = \"/wx\"");
    let host = w.addr;
    let r = w.request(
        "POST",
        &format!("http://{host}{}", signed_query("/wx", TOKEN)),
        &[],
        text("oAbs", "hi").as_bytes(),
    );
    assert_text_reply(&r, "oAbs", DEFAULT_REPLY);
    let q = signed_query("/wx", TOKEN);
    let r = w.get(&format!("HTTPS://{host}{q}&echostr=4242"));
    assert_eq!((r.status, r.body.as_str()), (200, "4242"));
    let r = w.get(&format!("http://{host}/healthz"));
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    // Its path still has to be WeChat's: the authority is not part of the path.
    let r = w.request(
        "POST",
        &format!("http://{host}{}", signed_query("/other", TOKEN)),
        &[],
        text("oAbs", "hi").as_bytes(),
    );
    assert_eq!(r.status, 404);
    assert!(w.wait_for_log("POST /other: not found"), "{}", w.stderr());
    let r = w.request(
        "POST",
        &format!("http://{host}{}", signed_query("", TOKEN)),
        &[],
        text("oAbs", "hi").as_bytes(),
    );
    assert_eq!(r.status, 404, "an empty path is /, not /wx");
    assert!(w.wait_for_log("POST /: not found"), "{}", w.stderr());
}

#[test]
fn a_path_of_chinese_characters_is_answered_when_the_request_escapes_it() {
    // A browser, WeChat and nginx (which passes the URI on as it came) send `/微信` escaped.
    let w = Wxmp::start("path = \"/微信\"");
    let escaped = "/%E5%BE%AE%E4%BF%A1";
    let r = w.request(
        "POST",
        &signed_query(escaped, TOKEN),
        &[],
        text("oPath", "hi").as_bytes(),
    );
    assert_text_reply(&r, "oPath", DEFAULT_REPLY);
    let r = w.get(&format!("{}&echostr=77", signed_query(escaped, TOKEN)));
    assert_eq!((r.status, r.body.as_str()), (200, "77"));
    let r = w.request(
        "POST",
        &signed_query("/%E5%BE%AE", TOKEN),
        &[],
        text("oPath", "hi").as_bytes(),
    );
    assert_eq!(r.status, 404, "{}", r.body);
}

#[test]
fn sixteen_threads_times_25_requests_all_answered() {
    let w = Arc::new(Wxmp::start(""));
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let w = Arc::clone(&w);
            std::thread::spawn(move || {
                for i in 0..25 {
                    let from = format!("oUser{t}");
                    let r = w.post_signed(&text(&from, &format!("m{i}")));
                    assert_text_reply(&r, &from, DEFAULT_REPLY);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    assert_eq!(w.wait_for_count("-> text", 400), 400);
}

#[test]
fn sigterm_exits_zero_and_logs_the_stop() {
    let w = Wxmp::start("");
    assert_eq!(w.post_signed(&text("oA", "hi")).status, 200);
    // A body over 1 KiB is read on a thread of its own: once it is answered, the stop has
    // nothing left to wait for.
    let long = "长".repeat(400);
    assert_text_reply(
        &w.post_signed(&text("oLong", &long)),
        "oLong",
        DEFAULT_REPLY,
    );
    let dir = w.dir.clone();
    let status = w.terminate();
    assert_eq!(status.code(), Some(0));
    let log = std::fs::read_to_string(dir.join("log/wxmp.log")).expect("log file");
    assert!(log.contains("stopped"), "{log}");
    assert!(log.contains("oA text"), "{log}");
    assert!(log.contains("oLong text"), "{log}");
    assert!(!log.contains("still running"), "{log}");
}

#[test]
fn the_token_never_reaches_the_log() {
    let w = Wxmp::start("");
    w.post_signed(&text("oA", "hi"));
    w.get("/?signature=x&timestamp=1&nonce=2&echostr=e");
    let dir = w.dir.clone();
    let stderr = w.stderr();
    w.terminate();
    let log = std::fs::read_to_string(dir.join("log/wxmp.log")).unwrap_or_default();
    assert!(!log.contains(TOKEN) && !stderr.contains(TOKEN));
}

#[test]
fn missing_token_refuses_to_start_and_says_what_to_set() {
    let dir = temp_dir("notoken");
    std::fs::write(dir.join("wxmp.toml"), "listen = \"127.0.0.1:0\"\n").unwrap();
    let out = wxmp_command()
        .args(["serve", "--config", "wxmp.toml"])
        .current_dir(&dir)
        .env_remove("WXMP_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("token is missing") && err.contains("WXMP_TOKEN"),
        "{err}"
    );
}

#[test]
fn the_command_line_takes_one_command_and_the_config_file_either_way() {
    let dir = config_dir("cli", "");
    for args in [
        ["check", "--config", "wxmp.toml"].as_slice(),
        &["check", "-c", "wxmp.toml"],
        &["check", "--config=wxmp.toml"],
        &["--config=wxmp.toml", "check"],
    ] {
        let (code, out, err) = run_wxmp(&dir, args);
        assert_eq!(code, Some(0), "{args:?}: {err}");
        assert!(out.starts_with("wxmp.toml: OK\n"), "{args:?}: {out}");
    }
    // One command only, whichever comes first.
    for (args, unknown) in [(["serve", "check"], "check"), (["check", "check"], "check")] {
        let (code, out, err) = run_wxmp(&dir, &args);
        assert_eq!(code, Some(2), "{args:?}: {out}");
        assert_eq!(
            err,
            format!("wxmp: unknown argument '{unknown}'; see `wxmp --help`\n")
        );
    }
    for help in ["--help", "-h", "help"] {
        let (code, out, _) = run_wxmp(&dir, &[help]);
        assert_eq!(code, Some(0), "{help}");
        assert!(
            out.starts_with("wxmp: a WeChat Official Account message server\n"),
            "{help}: {out}"
        );
    }
    for version in ["--version", "-V"] {
        let (code, out, _) = run_wxmp(&dir, &[version]);
        assert_eq!(code, Some(0), "{version}");
        assert_eq!(out, format!("wxmp {}\n", env!("CARGO_PKG_VERSION")));
    }
}

#[test]
fn a_start_that_fails_says_why_in_the_log_file_too() {
    // A second wxmp on the port of a running one: its last words reach its log file before it
    // exits, however quickly that is.
    let w = Wxmp::start("");
    let dir = temp_dir("taken");
    std::fs::write(
        dir.join("wxmp.toml"),
        format!("token = \"{TOKEN}\"\nlisten = \"{}\"\n", w.addr),
    )
    .unwrap();
    let (code, _, err) = run_wxmp(&dir, &["serve", "--config", "wxmp.toml"]);
    assert_eq!(code, Some(1), "{err}");
    let said = format!("cannot listen on {}", w.addr);
    assert!(err.contains(&said), "{err}");
    let log = std::fs::read_to_string(dir.join("log/wxmp.log")).unwrap();
    assert!(log.contains(&format!("[ERROR] wxmp: {said}")), "{log}");
}

#[test]
fn wxmp_check_ends_quietly_when_its_reader_has_gone() {
    // `wxmp check | head -0`: the pipe is closed before wxmp writes to it. Like other Unix
    // tools, wxmp ends on SIGPIPE, saying nothing, rather than panicking on a failed print.
    use std::os::unix::process::ExitStatusExt;
    let dir = config_dir("cli-pipe", "");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = wxmp_command()
        .args(["check", "--config", "wxmp.toml"])
        .current_dir(&dir)
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

/// This process's hard limit on open files.
fn hard_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `lim`, which we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_max
}

/// Starts wxmp with its soft open-file limit set to `soft` (the hard one left as it is).
fn start_with_soft_fd_limit(tag: &str, soft: u64) -> Wxmp {
    start_in_with_soft_fd_limit(&config_dir(tag, ""), soft)
}

/// [`start_with_soft_fd_limit`] in `dir`, whose `wxmp.toml` is written.
fn start_in_with_soft_fd_limit(dir: &std::path::Path, soft: u64) -> Wxmp {
    Wxmp::start_prepared(dir, &["serve", "--config", "wxmp.toml"], &[], |cmd| {
        // SAFETY: the closure only calls getrlimit and setrlimit, which are async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, move || {
                let mut lim = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                lim.rlim_cur = soft;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
}

#[test]
fn a_low_open_file_limit_is_raised_to_the_hard_one_at_start_and_said() {
    let hard = hard_fd_limit();
    assert!(hard > 256, "a hard limit of {hard} open files");
    let low = start_with_soft_fd_limit("nofile-low", 256);
    assert!(
        low.wait_for_log(&format!("open-file limit raised from 256 to {hard}")),
        "{}",
        low.stderr()
    );
    // Already at the hard limit: nothing raised, nothing said (the line would come before
    // "listening on", and this message's line after it).
    let at_hard = start_with_soft_fd_limit("nofile-hard", hard);
    assert_text_reply(&at_hard.post_signed(&text("oA", "hi")), "oA", DEFAULT_REPLY);
    assert!(at_hard.wait_for_log("oA text"));
    assert!(
        !at_hard.stderr().contains("open-file limit"),
        "{}",
        at_hard.stderr()
    );
}

#[test]
fn programs_get_the_open_file_limit_wxmp_was_given_not_the_raised_one() {
    // wxmp raises its own soft limit to the hard one (often 524288, or ~10^9 in containers);
    // the programs it runs must not inherit that: one that closes every fd up to the limit
    // (an old-style daemon, rpm) takes seconds for it, and select(2) breaks above 1023.
    let hard = hard_fd_limit();
    assert!(hard > 300, "a hard limit of {hard} open files");
    let dir = config_dir(
        "nofile-child",
        "[[command]]\nname = \"limit\"\nexec = [\"./limit.sh\"]",
    );
    let script = dir.join("limit.sh");
    std::fs::write(&script, "#!/bin/sh\nulimit -Sn\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let w = start_in_with_soft_fd_limit(&dir, 300);
    assert!(
        w.wait_for_log(&format!("open-file limit raised from 300 to {hard}")),
        "{}",
        w.stderr()
    );
    assert_text_reply(&w.post_signed(&text("oL", "limit")), "oL", "300");
}

#[test]
fn unknown_config_key_is_named() {
    let dir = temp_dir("badkey");
    std::fs::write(
        dir.join("wxmp.toml"),
        "token = \"abc123\"\nlisten = \"127.0.0.1:0\"\nworkerz = 3\n",
    )
    .unwrap();
    let out = wxmp_command()
        .args(["check", "--config", "wxmp.toml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("workerz"));
}

#[test]
fn first_run_writes_a_config_with_a_fresh_token_and_serves() {
    let dir = temp_dir("firstrun");
    let w = Wxmp::start_in(&dir, &[], &[("WXMP_LISTEN", "127.0.0.1:0")]);
    let file = std::fs::read_to_string(dir.join("wxmp.toml")).expect("wxmp.toml written");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("wxmp.toml"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the token's file is its owner's alone");
    for var in WXMP_ENV {
        assert!(
            file.contains(var),
            "the first-run file names {var}:\n{file}"
        );
    }
    let token = file
        .lines()
        .find_map(|l| l.strip_prefix("token = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("token line")
        .to_string();
    assert_eq!(token.len(), 32);
    assert!(
        w.stderr().contains(&token),
        "the token is printed for the owner"
    );
    assert!(w.stderr().contains("基本配置"));
    let r = w.request(
        "POST",
        &signed_query("/", &token),
        &[],
        text("oA", "hi").as_bytes(),
    );
    assert_text_reply(&r, "oA", DEFAULT_REPLY);
}

#[test]
fn env_overrides_the_file() {
    let dir = temp_dir("envtoken");
    std::fs::write(
        dir.join("wxmp.toml"),
        "token = \"fileToken1\"\nlisten = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let logdir = dir.join("elsewhere");
    let w = Wxmp::start_in(
        &dir,
        &["serve"],
        &[
            ("WXMP_TOKEN", "envToken22"),
            ("WXMP_LISTEN", "127.0.0.1:0"),
            ("WXMP_LOG_DIR", logdir.to_str().unwrap()),
        ],
    );
    let r = w.request(
        "POST",
        &signed_query("/", "envToken22"),
        &[],
        text("oA", "hi").as_bytes(),
    );
    assert_eq!(r.status, 200);
    let r = w.request(
        "POST",
        &signed_query("/", "fileToken1"),
        &[],
        text("oA", "hi").as_bytes(),
    );
    assert_eq!(r.status, 403);
    assert!(logdir.join("wxmp.log").exists());
}

#[test]
fn the_server_log_rotates_by_size_and_keeps_every_line() {
    let w = Wxmp::start("[log]\nmax_size = \"2KB\"\nkeep_days = 1");
    for i in 0..60 {
        assert_eq!(
            w.post_signed(&text("oRot", &format!("line-{i:03}"))).status,
            200
        );
    }
    let dir = w.dir.join("log");
    assert_eq!(w.terminate().code(), Some(0));
    let mut files = 0;
    let mut all = String::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name() == Some("wxmp.state".as_ref()) {
            // What the stop handed on to the next start (tests/restart.rs), not a log file.
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.len() <= 2048,
            "{} is {} bytes",
            path.display(),
            text.len()
        );
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "no record split across files"
        );
        all.push_str(&text);
        files += 1;
    }
    assert!(files >= 3, "rotated into {files} file(s)");
    for i in 0..60 {
        assert_eq!(
            all.matches(&format!("\"line-{i:03}\"")).count(),
            1,
            "line-{i:03}"
        );
    }
}

#[test]
fn wxmp_config_env_picks_the_file() {
    let dir = temp_dir("envconfig");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(
        dir.join("sub/other.toml"),
        format!(
            "token = \"{TOKEN}\"\nlisten = \"127.0.0.1:0\"\n[reply]\ndefault = \"from other.toml\"\n"
        ),
    )
    .unwrap();
    let w = Wxmp::start_in(&dir, &["serve"], &[("WXMP_CONFIG", "sub/other.toml")]);
    assert_text_reply(
        &w.post_signed(&text("oCfg", "hi")),
        "oCfg",
        "from other.toml",
    );
    assert!(
        !dir.join("wxmp.toml").exists(),
        "no first-run file is written when WXMP_CONFIG names one"
    );
}

#[test]
fn a_single_worker_answers_while_a_slow_command_and_a_stalled_body_wait() {
    let dir = temp_dir("oneworker");
    std::fs::write(dir.join("slow.sh"), "#!/bin/sh\nsleep 3\necho done\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("slow.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.join("wxmp.toml"),
        format!(
            "token = \"{TOKEN}\"\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\n\
             [[command]]\nname = \"slow\"\nexec = [\"./slow.sh\"]\n"
        ),
    )
    .unwrap();
    let w = Wxmp::start_in(&dir, &["serve", "--config", "wxmp.toml"], &[]);
    let addr = w.addr;
    let slow = std::thread::spawn(move || {
        http(
            addr,
            "POST",
            &signed_query("/", TOKEN),
            &[],
            text("oSlow", "slow").as_bytes(),
            std::time::Duration::from_secs(10),
        )
    });
    // A client that announces a 2000-byte body and sends 5 bytes of it.
    let mut stalled = std::net::TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n<xml>",
        signed_query("/", TOKEN)
    );
    std::io::Write::write_all(&mut stalled, head.as_bytes()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let start = std::time::Instant::now();
    assert_text_reply(&w.post_signed(&text("oFast", "hi")), "oFast", DEFAULT_REPLY);
    assert!(
        start.elapsed() < std::time::Duration::from_millis(500),
        "took {:?}",
        start.elapsed()
    );
    let slow = slow.join().unwrap();
    assert_text_reply(&slow, "oSlow", "done");
}
