//! Arbitrary bytes as the text of `wxmp.toml`: parsing, validation, the safe-mode key check and
//! the command table (`Router::from_config`, which also compiles regexes and looks programs up
//! with `stat`, never running or reading them) return Ok or a list of errors, never panic.
//!
//! The configured texts can hold any character (TOML has `\u0000` escapes), so every reply a
//! valid table would send (`[reply]` texts, `reply` with placeholders filled, media, news) is
//! written and must be well-formed XML.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxmp::command::{substitute, Action, Vars};
use wxmp::config::Config;
use wxmp::reply::Reply;
use wxmp::router::Router;

fn well_formed(reply: &Reply) {
    let xml = reply.render("oUser", "gh_account", 1);
    if xml != "success" {
        if let Err(e) = roxmltree::Document::parse(&xml) {
            panic!("reply is not well-formed XML ({e}): {xml:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(config) = Config::from_toml(&text) else {
        return;
    };
    let _ = config.validate();
    let _ = config.crypt();
    let _ = config.log.settings();
    well_formed(&Reply::Text(config.reply.default.clone()));
    well_formed(&Reply::Text(config.reply.welcome.clone()));
    let Ok(router) = Router::from_config(&config) else {
        return;
    };
    let _ = router.describe();
    for c in router.commands() {
        let _ = (c.rule(), c.describe_action(), c.is_event());
        let said = "价格 苹果 ]]> {1}";
        let captures = c.match_text(said).unwrap_or_default();
        let _ = c.match_event("CLICK", "K");
        let vars = Vars {
            captures,
            openid: "o]]>".into(),
            content: said.into(),
        };
        match &c.action {
            Action::Reply(t) => well_formed(&Reply::Text(substitute(t, &vars))),
            Action::Media(r) => well_formed(r),
            Action::News(a) => well_formed(&Reply::News(a.clone())),
            Action::File(_) | Action::Exec { .. } => {}
        }
    }
});
