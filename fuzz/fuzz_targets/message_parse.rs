//! Arbitrary bytes as an inbound POST body: `wxmp::message::parse` must return a message or an
//! error, never panic. A parsed message is also routed by a router with text, prefix, regex,
//! event and media commands (no programs, no files), and the reply written for it (with the
//! inbound, attacker-chosen user names swapped in) must be well-formed XML.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wxmp::config::Config;
use wxmp::message::parse;
use wxmp::router::{Handler, Route, Router};

const CONFIG: &str = r#"
token = "fuzztoken"
admins = ["oAdmin"]
[[command]]
name = "天气"
aliases = ["weather"]
reply = "晴 {openid} {content}"
help = "天气"
[[command]]
prefix = "查"
reply = "查询 {args} / {1} {2} {9}"
[[command]]
regex = '^价格\s+(\S+)(.*)$'
reply = "价格：{0} {1} {2}"
[[command]]
event = "CLICK"
key = "NEWS"
news = [{ title = "t", description = "d", url = "https://u", picurl = "https://p" }]
[[command]]
event = "subscribe"
reply = "欢迎 {content}"
[[command]]
name = "图"
admin = true
image = "MEDIA"
"#;

fn router() -> &'static Router {
    static R: OnceLock<Router> = OnceLock::new();
    R.get_or_init(|| {
        let config = Config::from_toml(CONFIG).expect("fixed config parses");
        Router::from_config(&config).expect("fixed config routes")
    })
}

fn check(body: &str) {
    let Ok(msg) = parse(body) else { return };
    // What the server does with every message: log lines and the retry key.
    let _ = (msg.summary(), msg.dedup_key(), msg.said(), msg.event_name());
    if let Route::Now(reply) = router().route(&msg) {
        let xml = reply.render(&msg.from_user, &msg.to_user, msg.create_time);
        if xml != "success" {
            if let Err(e) = roxmltree::Document::parse(&xml) {
                panic!("reply is not well-formed XML ({e}): {xml:?}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match std::str::from_utf8(data) {
        Ok(s) => check(s),
        // The server refuses non-UTF-8 bodies with 400; the lossy text still must not panic.
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
});
