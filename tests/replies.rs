//! Every passive-reply type, written by `wxmp::reply` and read back with a real XML parser.

mod common;
use common::parse_reply;
use proptest::prelude::*;
use wxmp::reply::{Article, Reply, CUT_MARK, TEXT_LIMIT};

fn render(r: &Reply) -> common::ParsedReply {
    let xml = r.render("oUser", "gh_acct", 1700000000);
    let p = parse_reply(&xml);
    assert_eq!(p.get("ToUserName"), Some("oUser"));
    assert_eq!(p.get("FromUserName"), Some("gh_acct"));
    assert_eq!(p.get("CreateTime"), Some("1700000000"));
    assert!(
        xml.contains("<CreateTime>1700000000</CreateTime>"),
        "numbers are plain: {xml}"
    );
    p
}

#[test]
fn text() {
    let p = render(&Reply::Text("第一行\n第二行 <&> ]]> end".into()));
    assert_eq!(p.get("MsgType"), Some("text"));
    assert_eq!(p.get("Content"), Some("第一行\n第二行 <&> ]]> end"));
}

#[test]
fn image() {
    let p = render(&Reply::Image {
        media_id: "MID]]>1".into(),
    });
    assert_eq!(p.get("MsgType"), Some("image"));
    assert_eq!(p.get("Image/MediaId"), Some("MID]]>1"));
}

#[test]
fn voice() {
    let p = render(&Reply::Voice {
        media_id: "V1".into(),
    });
    assert_eq!(p.get("MsgType"), Some("voice"));
    assert_eq!(p.get("Voice/MediaId"), Some("V1"));
}

#[test]
fn video() {
    let p = render(&Reply::Video {
        media_id: "M".into(),
        title: "标题".into(),
        description: "说明 & more".into(),
    });
    assert_eq!(p.get("MsgType"), Some("video"));
    assert_eq!(p.get("Video/MediaId"), Some("M"));
    assert_eq!(p.get("Video/Title"), Some("标题"));
    assert_eq!(p.get("Video/Description"), Some("说明 & more"));
}

#[test]
fn music() {
    let p = render(&Reply::Music {
        title: "歌".into(),
        description: "d".into(),
        music_url: "http://m/a.mp3?x=1&y=2".into(),
        hq_music_url: "http://m/hq.mp3".into(),
        thumb_media_id: "T".into(),
    });
    assert_eq!(p.get("MsgType"), Some("music"));
    assert_eq!(p.get("Music/Title"), Some("歌"));
    assert_eq!(p.get("Music/Description"), Some("d"));
    assert_eq!(p.get("Music/MusicUrl"), Some("http://m/a.mp3?x=1&y=2"));
    assert_eq!(p.get("Music/HQMusicUrl"), Some("http://m/hq.mp3"));
    assert_eq!(p.get("Music/ThumbMediaId"), Some("T"));
}

#[test]
fn news() {
    let articles: Vec<Article> = (0..3)
        .map(|i| Article {
            title: format!("标题{i}"),
            description: format!("摘要{i}"),
            pic_url: format!("https://p/{i}.jpg"),
            url: format!("https://a/{i}?a=1&b=2"),
        })
        .collect();
    let xml = Reply::News(articles.clone()).render("oUser", "gh_acct", 1);
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let count = doc
        .descendants()
        .find(|n| n.has_tag_name("ArticleCount"))
        .and_then(|n| n.text());
    assert_eq!(count, Some("3"));
    let items: Vec<Article> = doc
        .descendants()
        .filter(|n| n.has_tag_name("item"))
        .map(|item| {
            let f = |name: &str| {
                item.children()
                    .find(|c| c.has_tag_name(name))
                    .and_then(|c| c.text())
                    .unwrap_or("")
                    .to_string()
            };
            Article {
                title: f("Title"),
                description: f("Description"),
                pic_url: f("PicUrl"),
                url: f("Url"),
            }
        })
        .collect();
    assert_eq!(items, articles);
}

#[test]
fn transfer_customer_service() {
    let p = render(&Reply::TransferCustomerService { kf_account: None });
    assert_eq!(p.get("MsgType"), Some("transfer_customer_service"));
    assert_eq!(p.get("TransInfo/KfAccount"), None);
    let p = render(&Reply::TransferCustomerService {
        kf_account: Some("test1@test".into()),
    });
    assert_eq!(p.get("TransInfo/KfAccount"), Some("test1@test"));
}

#[test]
fn success() {
    assert_eq!(Reply::Success.render("a", "b", 1), "success");
}

#[test]
fn long_text_is_cut_with_a_mark() {
    let long = "数据".repeat(2000);
    let p = render(&Reply::Text(long));
    let content = p.get("Content").unwrap();
    assert!(content.len() <= TEXT_LIMIT, "{}", content.len());
    assert!(content.ends_with(CUT_MARK));
    assert!(content.starts_with("数据数据"));
}

/// What XML 1.0 can carry of `s`: the writer drops the rest.
fn xml_chars(s: &str) -> String {
    s.chars()
        .filter(|&c| matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..))
        .collect()
}

proptest! {
    #[test]
    fn any_text_survives_the_writer(text in any::<String>()) {
        let xml = Reply::Text(text.clone()).render("u", "g", 1);
        if xml_chars(&text).trim().is_empty() {
            prop_assert_eq!(xml, "success");
        } else {
            let doc = roxmltree::Document::parse(&xml).map_err(|e| TestCaseError::fail(format!("{e}: {xml}")))?;
            let content = doc.descendants().find(|n| n.has_tag_name("Content")).and_then(|n| n.text()).unwrap_or("");
            let expected = wxmp::reply::truncate_text(&text, TEXT_LIMIT);
            // XML parsers normalise line ends (CR LF and lone CR become LF).
            let expected = xml_chars(&expected).replace("\r\n", "\n").replace('\r', "\n");
            prop_assert_eq!(content, expected.as_str());
            prop_assert!(!content.trim().is_empty(), "a text reply is never empty");
        }
    }

    #[test]
    fn any_media_id_survives_the_writer(id in "[^\u{0}]{0,64}") {
        let xml = Reply::Image { media_id: id.clone() }.render("u", "g", 1);
        let p = parse_reply(&xml);
        let expected = xml_chars(&id).replace("\r\n", "\n").replace('\r', "\n");
        prop_assert_eq!(p.get("Image/MediaId").unwrap_or(""), expected.as_str());
    }

    #[test]
    fn any_bytes_to_the_message_parser_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = wxmp::message::parse(&text);
    }

    #[test]
    fn message_like_input_never_panics(body in "<xml>(<[A-Za-z_]{1,12}>[^<&]{0,20}</[A-Za-z_]{1,12}>){0,8}</xml>") {
        let _ = wxmp::message::parse(&body);
    }
}
