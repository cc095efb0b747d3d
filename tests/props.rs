//! Property tests of the three places untrusted text comes in or goes out (issue 6), with
//! strategies biased towards what breaks XML and parsers: `]]>`, `<&`, control characters,
//! non-characters, CR/LF, multi-byte characters and texts far over the 2048-byte cut.
//!
//! - The reply writer: any text comes back from a real XML parser exactly as the documented
//!   contract says (cut to [`TEXT_LIMIT`] bytes with [`CUT_MARK`] first, then the characters
//!   XML 1.0 cannot carry dropped; a text with nothing visible left is `success`).
//! - The message parser: any bytes give a message or an error, never a panic; text written
//!   with the writer's CDATA rules parses back.
//! - The config parser: any text, and any TOML document with the real keys and arbitrary
//!   values, gives Ok or a list of errors from parsing, validation and the command table.
//! - The state a stop hands to the next start (`log/wxmp.state`): any answers, keys, openids and
//!   late results come back from the file exactly; any bytes in the file give a state or an
//!   error, never a panic.
//!
//! `cargo fuzz` (fuzz/, docs/fuzzing.md) runs the same entry points for millions of inputs;
//! these keep a few thousand in every `cargo test`.

use proptest::prelude::*;
use wxmp::config::Config;
use wxmp::reply::{push_cdata, truncate_text, Article, Reply, CUT_MARK, TEXT_LIMIT};
use wxmp::router::Router;
use wxmp::state::{Saved, SavedAnswer, SavedLate};

/// Fragments that are hard for an XML writer, and ordinary text.
fn nasty_fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("]]>".to_string()),
        Just("]]".to_string()),
        Just("]".to_string()),
        Just(">".to_string()),
        Just("<![CDATA[".to_string()),
        Just("<".to_string()),
        Just("&".to_string()),
        Just("&amp;".to_string()),
        Just("\r\n".to_string()),
        Just("\r".to_string()),
        Just("\n".to_string()),
        Just("\t".to_string()),
        Just(" ".to_string()),
        Just("\u{0}".to_string()),
        Just("\u{1b}[31m".to_string()),
        Just("\u{7f}\u{85}".to_string()),
        Just("\u{FFFE}\u{FFFF}".to_string()),
        Just("\u{D7FF}\u{E000}\u{FFFD}".to_string()),
        Just("数据".to_string()),
        Just("😀".to_string()),
        "[\u{0}-\u{1f}]{1,3}",
        "[a-z0-9]{1,8}",
        any::<char>().prop_map(String::from),
        // Long runs push texts past the 2048-byte cut, with the cut inside 1-4-byte characters.
        ("[a数😀\r]", 100..700usize).prop_map(|(s, n)| s.repeat(n)),
    ]
}

/// A text made of [`nasty_fragment`]s: from empty to several times [`TEXT_LIMIT`].
fn nasty_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::collection::vec(nasty_fragment(), 0..40).prop_map(|v| v.concat()),
        1 => any::<String>(),
    ]
}

/// Whether XML 1.0 can carry `c` (the writer drops the others).
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// What a conforming XML parser gives back for `s` written by the writer: the characters XML
/// can carry, with line ends normalised (CR LF and a lone CR become LF).
fn as_read_back(s: &str) -> String {
    s.chars()
        .filter(|&c| is_xml_char(c))
        .collect::<String>()
        .replace("\r\n", "\n")
        .replace('\r', "\n")
}

/// All text under the element at `path` (`Parent/Child`) of the reply's root.
fn text_at(doc: &roxmltree::Document, path: &str) -> Option<String> {
    let mut node = doc.root_element();
    for name in path.split('/') {
        node = node.children().find(|n| n.has_tag_name(name))?;
    }
    Some(
        node.descendants()
            .filter(|n| n.is_text())
            .filter_map(|n| n.text())
            .collect(),
    )
}

fn parse_xml(xml: &str) -> Result<roxmltree::Document<'_>, TestCaseError> {
    roxmltree::Document::parse(xml).map_err(|e| TestCaseError::fail(format!("{e}: {xml:?}")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The text contract of `Reply::Text`, as WeChat would show it.
    #[test]
    fn reply_text_reads_back_as_documented(
        text in nasty_text(),
        to in nasty_text(),
        from in nasty_text(),
        time in any::<u64>(),
    ) {
        let xml = Reply::Text(text.clone()).render(&to, &from, time);
        if !text.chars().any(|c| is_xml_char(c) && !c.is_whitespace()) {
            prop_assert_eq!(xml, "success");
            return Ok(());
        }
        let doc = parse_xml(&xml)?;
        let content = text_at(&doc, "Content").unwrap_or_default();
        // Cut first (on a character boundary, with the mark), then drop what XML cannot carry.
        let cut = truncate_text(&text, TEXT_LIMIT);
        prop_assert_eq!(&content, &as_read_back(&cut));
        prop_assert!(cut.len() <= TEXT_LIMIT);
        prop_assert!(content.len() <= TEXT_LIMIT, "{} bytes", content.len());
        prop_assert_eq!(text.len() > TEXT_LIMIT, content.ends_with(CUT_MARK));
        if text.len() <= TEXT_LIMIT {
            prop_assert_eq!(&content, &as_read_back(&text));
        } else {
            prop_assert!(text.starts_with(cut.strip_suffix(CUT_MARK).unwrap_or_default()));
            prop_assert!(cut.len() + 4 > TEXT_LIMIT, "cut no more than one character short");
        }
        prop_assert!(!content.trim().is_empty(), "a text reply is never empty");
        prop_assert_eq!(text_at(&doc, "ToUserName"), Some(as_read_back(&to)));
        prop_assert_eq!(text_at(&doc, "FromUserName"), Some(as_read_back(&from)));
        prop_assert_eq!(text_at(&doc, "CreateTime"), Some(time.to_string()));
        prop_assert_eq!(text_at(&doc, "MsgType"), Some("text".to_string()));
    }

    /// Every other text field of every reply type: never cut, only the characters XML cannot
    /// carry dropped.
    #[test]
    fn every_reply_field_reads_back(fields in proptest::collection::vec(nasty_text(), 5)) {
        let [a, b, c, d, e] = <[String; 5]>::try_from(fields).expect("five fields");
        let cases = [
            (Reply::Image { media_id: a.clone() }, vec![("Image/MediaId", &a)]),
            (Reply::Voice { media_id: b.clone() }, vec![("Voice/MediaId", &b)]),
            (
                Reply::Video { media_id: a.clone(), title: b.clone(), description: c.clone() },
                vec![("Video/MediaId", &a), ("Video/Title", &b), ("Video/Description", &c)],
            ),
            (
                Reply::Music {
                    title: a.clone(),
                    description: b.clone(),
                    music_url: c.clone(),
                    hq_music_url: d.clone(),
                    thumb_media_id: e.clone(),
                },
                vec![
                    ("Music/Title", &a),
                    ("Music/Description", &b),
                    ("Music/MusicUrl", &c),
                    ("Music/HQMusicUrl", &d),
                    ("Music/ThumbMediaId", &e),
                ],
            ),
            (
                Reply::News(vec![Article {
                    title: a.clone(),
                    description: b.clone(),
                    pic_url: c.clone(),
                    url: d.clone(),
                }]),
                vec![
                    ("Articles/item/Title", &a),
                    ("Articles/item/Description", &b),
                    ("Articles/item/PicUrl", &c),
                    ("Articles/item/Url", &d),
                ],
            ),
            (
                Reply::TransferCustomerService { kf_account: Some(e.clone()) },
                vec![("TransInfo/KfAccount", &e)],
            ),
        ];
        for (reply, expected) in cases {
            let xml = reply.render(&d, &e, 7);
            let doc = parse_xml(&xml)?;
            for (path, value) in expected {
                prop_assert_eq!(text_at(&doc, path), Some(as_read_back(value)), "{}", path);
            }
        }
    }

    /// Any bytes as a POST body: the parser answers, never panics (the server turns non-UTF-8
    /// into 400 before parsing; the lossy text must not panic either).
    #[test]
    fn message_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(s) = std::str::from_utf8(&bytes) {
            let _ = wxmp::message::parse(s);
        }
        if let Ok(m) = wxmp::message::parse(&String::from_utf8_lossy(&bytes)) {
            let _ = (m.summary(), m.dedup_key(), m.said());
        }
    }

    /// XML-shaped bodies with nasty field names and values: still never a panic, and what
    /// the parser keeps of a field is the text a CDATA writer put in.
    #[test]
    fn message_parser_reads_any_field_text(
        msg_type in prop_oneof![
            Just("text".to_string()), Just("event".to_string()), Just("location".to_string()),
            Just("voice".to_string()), "[a-z]{1,10}",
        ],
        content in nasty_text(),
        number in prop_oneof![any::<u64>().prop_map(|n| n.to_string()), nasty_text()],
        event in prop_oneof![
            Just("CLICK".to_string()), Just("pic_weixin".to_string()),
            Just("location_select".to_string()), Just("MASSSENDJOBFINISH".to_string()),
            nasty_text(),
        ],
    ) {
        let mut xml = String::from("<xml><FromUserName>");
        push_cdata(&mut xml, "oUser");
        xml.push_str("</FromUserName><MsgType>");
        push_cdata(&mut xml, &msg_type);
        xml.push_str("</MsgType><Content>");
        push_cdata(&mut xml, &content);
        xml.push_str("</Content><Event>");
        push_cdata(&mut xml, &event);
        xml.push_str("</Event>");
        for field in ["CreateTime", "MsgId", "Location_X", "Scale", "SendPicsInfo/Count"] {
            let (open, close) = match field.split_once('/') {
                Some((p, c)) => (format!("<{p}><{c}>"), format!("</{c}></{p}>")),
                None => (format!("<{field}>"), format!("</{field}>")),
            };
            xml.push_str(&open);
            push_cdata(&mut xml, &number);
            xml.push_str(&close);
        }
        xml.push_str("</xml>");
        prop_assert!(roxmltree::Document::parse(&xml).is_ok(), "{:?}", xml);
        match wxmp::message::parse(&xml) {
            Ok(m) => {
                let expected = as_read_back(&content);
                prop_assert_eq!(m.field("Content"), Some(expected.as_str()));
                let _ = (m.summary(), m.dedup_key(), m.said(), m.event_name());
            }
            Err(e) => {
                // Only a number field, a missing event name, or a name holding a control
                // character (which would go into the log line as it is) may refuse this body.
                use wxmp::message::ParseError;
                let control = |text: &str| as_read_back(text).trim().contains(char::is_control);
                let refused = match e {
                    ParseError::NotANumber { .. } | ParseError::Missing("Event" | "MsgType") => true,
                    ParseError::ControlCharacter("MsgType") => control(&msg_type),
                    ParseError::ControlCharacter("Event") => control(&event),
                    _ => false,
                };
                prop_assert!(refused, "{e}");
            }
        }
    }

    /// Any text as `wxmp.toml`.
    #[test]
    fn config_parser_never_panics_on_text(text in prop_oneof![
        any::<String>(),
        proptest::collection::vec(
            prop_oneof![
                Just("token = \"abc123\"\n".to_string()),
                Just("[log]\n".to_string()),
                Just("[reply]\n".to_string()),
                Just("[[command]]\n".to_string()),
                Just("name = ".to_string()),
                Just("regex = '".to_string()),
                Just("timeout = ".to_string()),
                "[a-z_]{1,12} = ",
                "\"[^\"\\\\]{0,12}\"\n",
                "-?[0-9]{1,25}(\\.[0-9]{0,5})?(e[0-9]{1,3})?\n",
                nasty_text(),
            ],
            0..30,
        ).prop_map(|v| v.concat()),
    ]) {
        check_config(&text);
    }

    /// Documents with the real keys and arbitrary values, so that validation and the command
    /// table see every kind of value, not only syntax errors.
    #[test]
    fn config_validation_never_panics(
        top in proptest::collection::vec((config_key(TOP_KEYS), toml_value()), 0..8),
        log in proptest::collection::vec((config_key(LOG_KEYS), toml_value()), 0..4),
        reply in proptest::collection::vec((config_key(REPLY_KEYS), toml_value()), 0..3),
        commands in proptest::collection::vec(
            proptest::collection::vec((config_key(&wxmp::command::KEYS), toml_value()), 0..5),
            0..4,
        ),
    ) {
        let mut doc = toml::Table::new();
        doc.extend(top);
        doc.insert("log".into(), toml::Value::Table(log.into_iter().collect()));
        doc.insert("reply".into(), toml::Value::Table(reply.into_iter().collect()));
        let commands = commands
            .into_iter()
            .map(|c| toml::Value::Table(c.into_iter().collect()))
            .collect();
        doc.insert("command".into(), toml::Value::Array(commands));
        let text = toml::to_string(&doc).expect("a table serialises");
        check_config(&text);
    }
}

/// A state with arbitrary texts everywhere a user's or a program's text can go.
fn any_saved() -> impl Strategy<Value = Saved> {
    let answer = (
        nasty_text(),
        any::<u64>(),
        any::<u32>(),
        nasty_text(),
        nasty_text(),
    )
        .prop_map(|(key, age_ms, tries, kind, body)| SavedAnswer {
            key: key.into(),
            // TOML's integers stop at 2^63 - 1; wxmp's ages are milliseconds of the last day.
            age_ms: age_ms >> 1,
            tries,
            kind,
            body: body.into(),
        });
    let late =
        (nasty_text(), any::<u64>(), nasty_text()).prop_map(|(openid, age_ms, text)| SavedLate {
            openid,
            age_ms: age_ms >> 1,
            text,
        });
    (
        any::<u64>(),
        any::<bool>(),
        proptest::collection::vec(answer, 0..4),
        proptest::collection::vec((any::<u64>(), any::<u64>(), any::<u64>()), 0..4),
        proptest::collection::vec(late, 0..4),
    )
        .prop_map(|(saved_at_ms, checkpoint, answers, urls, late)| Saved {
            version: wxmp::state::VERSION,
            saved_at_ms: saved_at_ms >> 1,
            checkpoint,
            answers,
            urls: urls
                .into_iter()
                .map(|(u, m, age)| Saved::url_entry(u, m, age))
                .collect(),
            late,
        })
}

/// A fresh file path for one case of a state property.
fn state_path(tag: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static CASE: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wxmp-props-{tag}-{}-{}",
        std::process::id(),
        CASE.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    wxmp::state::path_in(&dir)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// What a stop saves is what the next start reads, whatever the texts hold.
    #[test]
    fn a_saved_state_reads_back_exactly(saved in any_saved()) {
        let path = state_path("roundtrip");
        wxmp::state::save(&path, &saved).map_err(TestCaseError::fail)?;
        let back = wxmp::state::take(&path).map_err(TestCaseError::fail)?;
        prop_assert_eq!(back.as_ref(), Some(&saved));
        let (urls, bad) = saved.url_entries();
        prop_assert_eq!((urls.len(), bad), (saved.urls.len(), 0));
        prop_assert!(!path.exists());
        let _ = std::fs::remove_dir(path.parent().expect("a folder"));
    }

    /// Whatever is in the file: a state or an error, the file gone either way, never a panic.
    #[test]
    fn any_state_file_is_read_or_refused(bytes in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        nasty_text().prop_map(String::into_bytes),
        any_saved().prop_map(|s| toml::to_string(&s).expect("serialises").into_bytes()),
    ]) {
        let path = state_path("any");
        std::fs::write(&path, &bytes).expect("write");
        let _ = wxmp::state::take(&path);
        prop_assert!(!path.exists());
        let _ = std::fs::remove_dir(path.parent().expect("a folder"));
    }
}

const TOP_KEYS: &[&str] = &[
    "token",
    "listen",
    "path",
    "workers",
    "app_id",
    "encoding_aes_key",
    "admins",
];
const LOG_KEYS: &[&str] = &["dir", "max_size", "keep_days", "level"];
const REPLY_KEYS: &[&str] = &["default", "welcome"];

fn config_key(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        9 => proptest::sample::select(keys).prop_map(str::to_string),
        1 => "[a-z_]{1,10}",
    ]
}

/// TOML values of every type, strings biased to the values the config checks care about.
fn toml_value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        nasty_text().prop_map(toml::Value::String),
        prop_oneof![
            Just("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"),
            Just("127.0.0.1:8880"),
            Just("[::1]:0"),
            Just("/wx/"),
            Just("500MB"),
            Just("18446744073709551615GB"),
            Just("debug"),
            Just("CLICK"),
            Just("subscribe"),
            Just("{args} {1} {9} {openid} {content} {"),
            Just("^(a+)+$"),
            Just("(?P<x>"),
            Just("./missing.sh"),
            Just("/bin/true"),
            Just("/"),
            Just(".."),
            Just("/dev/null"),
        ]
        .prop_map(|s| toml::Value::String(s.to_string())),
        any::<i64>().prop_map(toml::Value::Integer),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(1),
            Just(14),
            Just(15),
            Just(256),
            Just(257)
        ]
        .prop_map(toml::Value::Integer),
        any::<f64>().prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            proptest::collection::vec(("[a-z_]{1,12}", inner), 0..4)
                .prop_map(|kv| toml::Value::Table(kv.into_iter().collect())),
        ]
    })
}

/// Everything `wxmp check` does with a configuration text, none of which may panic.
fn check_config(text: &str) {
    let Ok(config) = Config::from_toml(text) else {
        return;
    };
    let _ = config.validate();
    let _ = config.crypt();
    let _ = config.log.settings();
    if let Ok(router) = Router::from_config(&config) {
        let _ = router.describe();
    }
}

/// Regression, found by `reply_text_reads_back_as_documented`: the writer split `]]>` before
/// dropping the characters XML cannot carry, so `]]` + U+FFFE U+FFFF + `>` (or a NUL, or an
/// escape character, between them) came out as a bare `]]>` inside the CDATA section: a
/// malformed reply. The exact minimal inputs proptest and cargo fuzz reported.
#[test]
fn cdata_terminator_hidden_by_dropped_characters() {
    for text in ["]]\u{fffe}\u{ffff}>", "]]\u{0}>", "]\u{1b}]\u{1}>x"] {
        let xml = Reply::Text(text.to_string()).render(text, text, 0);
        let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}: {xml:?}"));
        assert_eq!(text_at(&doc, "Content"), Some(as_read_back(text)));
        assert_eq!(text_at(&doc, "ToUserName"), Some(as_read_back(text)));
        let xml = Reply::Image {
            media_id: text.to_string(),
        }
        .render("u", "g", 0);
        let doc = roxmltree::Document::parse(&xml).unwrap_or_else(|e| panic!("{e}: {xml:?}"));
        assert_eq!(text_at(&doc, "Image/MediaId"), Some(as_read_back(text)));
    }
}
