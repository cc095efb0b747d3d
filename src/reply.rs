//! Outbound passive replies: the XML WeChat shows the user, written from templates.
//!
//! Every text value goes through [`push_cdata`], which splits `]]>` (a CDATA section cannot
//! contain it) and drops characters XML 1.0 forbids, so whatever a command prints, the reply is
//! well formed. Numbers are written as plain numbers.

use std::fmt::Write as _;

/// WeChat's conservative limit on a text reply, in bytes of UTF-8.
pub const TEXT_LIMIT: usize = 2048;

/// Appended to a text reply that was cut to [`TEXT_LIMIT`].
pub const CUT_MARK: &str = "\n…（内容过长，已截断）";

/// At most this many articles in a news reply (WeChat's limit outside user messages).
pub const MAX_ARTICLES: usize = 8;

/// One article of a news reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Article {
    /// The headline.
    pub title: String,
    /// The summary under the headline.
    pub description: String,
    /// The picture's URL.
    pub pic_url: String,
    /// Where a tap leads.
    pub url: String,
}

/// A passive reply, one variant per reply type WeChat accepts, plus `success` (show nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A text reply; cut to [`TEXT_LIMIT`] bytes when rendered.
    Text(String),
    /// An image by media id.
    Image { media_id: String },
    /// A voice clip by media id.
    Voice { media_id: String },
    /// A video by media id, with title and description.
    Video {
        media_id: String,
        title: String,
        description: String,
    },
    /// A music card.
    Music {
        title: String,
        description: String,
        music_url: String,
        hq_music_url: String,
        thumb_media_id: String,
    },
    /// Articles; at most [`MAX_ARTICLES`] are written.
    News(Vec<Article>),
    /// Hands the conversation to customer service, optionally to one account.
    TransferCustomerService { kf_account: Option<String> },
    /// The body `success`: WeChat shows nothing and does not retry.
    Success,
}

impl Reply {
    /// The reply's `MsgType` (or `success`), for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Reply::Text(_) => "text",
            Reply::Image { .. } => "image",
            Reply::Voice { .. } => "voice",
            Reply::Video { .. } => "video",
            Reply::Music { .. } => "music",
            Reply::News(_) => "news",
            Reply::TransferCustomerService { .. } => "transfer_customer_service",
            Reply::Success => "success",
        }
    }

    /// The reply type named `name` as [`Reply::kind`] gives it (for an answer saved by an
    /// earlier process), or `None` for a name no reply has.
    pub fn kind_named(name: &str) -> Option<&'static str> {
        const KINDS: [&str; 8] = [
            "text",
            "image",
            "voice",
            "video",
            "music",
            "news",
            "transfer_customer_service",
            "success",
        ];
        KINDS.into_iter().find(|k| *k == name)
    }

    /// Writes the reply for the message that came from `to_user` to the account `from_user`
    /// (callers pass the inbound users swapped), stamped `create_time`.
    ///
    /// A text with nothing visible in it becomes `success`: WeChat shows an error page for
    /// empty text content.
    pub fn render(&self, to_user: &str, from_user: &str, create_time: u64) -> String {
        let mut x = String::with_capacity(256);
        let head = |x: &mut String, msg_type: &str| {
            x.push_str("<xml><ToUserName>");
            push_cdata(x, to_user);
            x.push_str("</ToUserName><FromUserName>");
            push_cdata(x, from_user);
            let _ = write!(
                x,
                "</FromUserName><CreateTime>{create_time}</CreateTime><MsgType>"
            );
            push_cdata(x, msg_type);
            x.push_str("</MsgType>");
        };
        match self {
            Reply::Success => return "success".to_string(),
            // Nothing visible would be left: WeChat shows an error page for empty text content.
            Reply::Text(t) if !t.chars().any(|c| is_xml_char(c) && !c.is_whitespace()) => {
                return "success".to_string()
            }
            Reply::Text(t) => {
                head(&mut x, "text");
                x.push_str("<Content>");
                push_cdata(&mut x, &truncate_text(t, TEXT_LIMIT));
                x.push_str("</Content>");
            }
            Reply::Image { media_id } => {
                head(&mut x, "image");
                element(&mut x, "Image", &[("MediaId", media_id)]);
            }
            Reply::Voice { media_id } => {
                head(&mut x, "voice");
                element(&mut x, "Voice", &[("MediaId", media_id)]);
            }
            Reply::Video {
                media_id,
                title,
                description,
            } => {
                head(&mut x, "video");
                element(
                    &mut x,
                    "Video",
                    &[
                        ("MediaId", media_id),
                        ("Title", title),
                        ("Description", description),
                    ],
                );
            }
            Reply::Music {
                title,
                description,
                music_url,
                hq_music_url,
                thumb_media_id,
            } => {
                head(&mut x, "music");
                element(
                    &mut x,
                    "Music",
                    &[
                        ("Title", title),
                        ("Description", description),
                        ("MusicUrl", music_url),
                        ("HQMusicUrl", hq_music_url),
                        ("ThumbMediaId", thumb_media_id),
                    ],
                );
            }
            Reply::News(articles) => {
                head(&mut x, "news");
                let n = articles.len().min(MAX_ARTICLES);
                let _ = write!(x, "<ArticleCount>{n}</ArticleCount><Articles>");
                for a in &articles[..n] {
                    element(
                        &mut x,
                        "item",
                        &[
                            ("Title", &a.title),
                            ("Description", &a.description),
                            ("PicUrl", &a.pic_url),
                            ("Url", &a.url),
                        ],
                    );
                }
                x.push_str("</Articles>");
            }
            Reply::TransferCustomerService { kf_account } => {
                head(&mut x, "transfer_customer_service");
                if let Some(kf) = kf_account {
                    element(&mut x, "TransInfo", &[("KfAccount", kf)]);
                }
            }
        }
        x.push_str("</xml>");
        x
    }
}

/// Writes `<name><k1><![CDATA[v1]]></k1>…</name>`.
fn element(x: &mut String, name: &str, children: &[(&str, &String)]) {
    let _ = write!(x, "<{name}>");
    for (k, v) in children {
        let _ = write!(x, "<{k}>");
        push_cdata(x, v);
        let _ = write!(x, "</{k}>");
    }
    let _ = write!(x, "</{name}>");
}

/// Appends `text` as a CDATA section: characters that XML 1.0 does not allow (most control
/// characters, U+FFFE, U+FFFF; lone surrogates cannot occur in `str`) are dropped, then `]]>`
/// is split across two sections, so the output is always well formed. (Dropping first matters:
/// `]]\u{0}>` becomes `]]>` once the NUL is gone.)
pub fn push_cdata(out: &mut String, text: &str) {
    let text = xml_chars(text);
    out.push_str("<![CDATA[");
    let mut rest = &*text;
    while let Some(i) = rest.find("]]>") {
        out.push_str(&rest[..i]);
        // End the section after "]]" and start a new one before ">".
        out.push_str("]]]]><![CDATA[>");
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    out.push_str("]]>");
}

/// `s` without the characters XML 1.0 does not allow (borrowed when there are none).
fn xml_chars(s: &str) -> std::borrow::Cow<'_, str> {
    if s.chars().all(is_xml_char) {
        s.into()
    } else {
        s.chars()
            .filter(|&c| is_xml_char(c))
            .collect::<String>()
            .into()
    }
}

/// Whether XML 1.0 allows `c` in a document.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Cuts `text` to at most `limit` bytes of UTF-8 on a character boundary, ending with
/// [`CUT_MARK`] when anything was cut. Text within the limit is returned as it is.
pub fn truncate_text(text: &str, limit: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= limit {
        return text.into();
    }
    let mut end = limit.saturating_sub(CUT_MARK.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{CUT_MARK}", &text[..end]).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdata_splits_terminator() {
        let mut s = String::new();
        push_cdata(&mut s, "a]]>b]]>");
        assert_eq!(s, "<![CDATA[a]]]]><![CDATA[>b]]]]><![CDATA[>]]>");
    }

    #[test]
    fn cdata_drops_forbidden_chars_before_splitting() {
        // Found by tests/props.rs: dropping the NUL (or U+FFFE) must not leave a bare `]]>`.
        for text in ["]]\u{0}>", "]]\u{fffe}\u{ffff}>", "]\u{1b}]\u{1}>"] {
            let mut s = String::new();
            push_cdata(&mut s, text);
            assert_eq!(s, "<![CDATA[]]]]><![CDATA[>]]>", "{text:?}");
        }
    }

    #[test]
    fn cdata_drops_forbidden_control_chars() {
        let mut s = String::new();
        push_cdata(&mut s, "a\u{0}b\u{1b}[0m\tc\n");
        assert_eq!(s, "<![CDATA[ab[0m\tc\n]]>");
    }

    #[test]
    fn text_reply_exact() {
        let x = Reply::Text("你好 <&>".into()).render("oU", "gh_1", 42);
        assert_eq!(
            x,
            "<xml><ToUserName><![CDATA[oU]]></ToUserName><FromUserName><![CDATA[gh_1]]></FromUserName><CreateTime>42</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好 <&>]]></Content></xml>"
        );
    }

    #[test]
    fn empty_text_is_success() {
        assert_eq!(Reply::Text("  ".into()).render("a", "b", 1), "success");
        assert_eq!(
            Reply::Text("\u{0}\u{1} \n".into()).render("a", "b", 1),
            "success"
        );
    }

    #[test]
    fn truncation_respects_char_boundaries_and_limit() {
        let long = "数".repeat(1000); // 3000 bytes
        let cut = truncate_text(&long, TEXT_LIMIT);
        assert!(cut.len() <= TEXT_LIMIT);
        assert!(cut.ends_with(CUT_MARK));
        assert!(cut.len() > TEXT_LIMIT - 3 - CUT_MARK.len() - 1);
        let exact = "a".repeat(TEXT_LIMIT);
        assert_eq!(truncate_text(&exact, TEXT_LIMIT), exact.as_str());
    }

    #[test]
    fn news_capped_at_eight() {
        let a = Article {
            title: "t".into(),
            ..Default::default()
        };
        let x = Reply::News(vec![a; 12]).render("u", "g", 1);
        assert!(x.contains("<ArticleCount>8</ArticleCount>"));
        assert_eq!(x.matches("<item>").count(), 8);
    }

    #[test]
    fn every_reply_kind_is_known_by_its_name() {
        let s = String::new;
        let every = [
            Reply::Text(s()),
            Reply::Image { media_id: s() },
            Reply::Voice { media_id: s() },
            Reply::Video {
                media_id: s(),
                title: s(),
                description: s(),
            },
            Reply::Music {
                title: s(),
                description: s(),
                music_url: s(),
                hq_music_url: s(),
                thumb_media_id: s(),
            },
            Reply::News(Vec::new()),
            Reply::TransferCustomerService { kf_account: None },
            Reply::Success,
        ];
        for reply in &every {
            assert_eq!(Reply::kind_named(reply.kind()), Some(reply.kind()));
        }
        assert_eq!(Reply::kind_named("Text"), None);
        assert_eq!(Reply::kind_named(""), None);
    }
}
