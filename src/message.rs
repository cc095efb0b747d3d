//! Inbound messages: the XML WeChat POSTs for every user message and event, parsed into types.
//!
//! Parsing is strict about what would make the request meaningless (not XML, a DTD, no
//! `MsgType`) and lenient about everything else: an unknown `MsgType` or `Event` is kept with
//! its name and every raw field, because WeChat adds new types over time and a server that
//! rejects them would break the day they appear.

use std::fmt::{self, Write as _};

/// A parsed inbound message or event.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The account's original id (`gh_…`): the receiver.
    pub to_user: String,
    /// The sender's openid.
    pub from_user: String,
    /// Unix seconds at which WeChat created the message.
    pub create_time: u64,
    /// The `MsgType` value as sent (`text`, `event`, …).
    pub msg_type: String,
    /// `MsgId` of ordinary messages (absent on most events).
    pub msg_id: Option<u64>,
    /// The typed payload.
    pub kind: Kind,
    /// Every field of the XML in document order, nested ones as `Parent/Child` paths; kept so
    /// that no information is lost, including for unknown types.
    pub fields: Vec<(String, String)>,
}

/// The payload of a message, one variant per `MsgType`.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// A text message.
    Text { content: String },
    /// An image message.
    Image { pic_url: String, media_id: String },
    /// A voice message; `recognition` is set when speech recognition is on.
    Voice {
        media_id: String,
        format: String,
        media_id_16k: Option<String>,
        recognition: Option<String>,
    },
    /// A video message.
    Video {
        media_id: String,
        thumb_media_id: String,
    },
    /// A short video message.
    ShortVideo {
        media_id: String,
        thumb_media_id: String,
    },
    /// A location the user sent.
    Location {
        latitude: f64,
        longitude: f64,
        scale: i64,
        label: String,
    },
    /// A link the user shared.
    Link {
        title: String,
        description: String,
        url: String,
    },
    /// A mini program page card.
    MiniProgramPage {
        title: String,
        app_id: String,
        page_path: String,
        thumb_url: String,
        thumb_media_id: String,
    },
    /// An event (`MsgType` = `event`).
    Event(Event),
    /// A `MsgType` this version does not know; its fields are in [`Message::fields`].
    Unknown { msg_type: String },
}

/// Pictures sent from a menu's photo button (`SendPicsInfo`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SendPicsInfo {
    /// `Count` as sent.
    pub count: u32,
    /// The `PicMd5Sum` of each picture.
    pub pic_md5_sums: Vec<String>,
}

/// An event, one variant per `Event` value of the protocol reference.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The user followed the account; `event_key` is `qrscene_<scene>` after a parametric QR code.
    Subscribe {
        event_key: Option<String>,
        ticket: Option<String>,
    },
    /// The user unfollowed.
    Unsubscribe,
    /// An existing follower scanned a parametric QR code.
    Scan {
        event_key: String,
        ticket: Option<String>,
    },
    /// A periodic location report.
    Location {
        latitude: f64,
        longitude: f64,
        precision: f64,
    },
    /// A menu click.
    Click { event_key: String },
    /// A menu link was opened.
    View {
        url: String,
        menu_id: Option<String>,
    },
    /// A menu mini program was opened.
    ViewMiniprogram {
        page_path: String,
        menu_id: Option<String>,
    },
    /// A menu scan-code button (`scancode_push`).
    ScancodePush {
        event_key: String,
        scan_type: String,
        scan_result: String,
    },
    /// A menu scan-code button that waits for a message (`scancode_waitmsg`).
    ScancodeWaitmsg {
        event_key: String,
        scan_type: String,
        scan_result: String,
    },
    /// A menu camera button (`pic_sysphoto`).
    PicSysphoto {
        event_key: String,
        pics: SendPicsInfo,
    },
    /// A menu camera-or-album button (`pic_photo_or_album`).
    PicPhotoOrAlbum {
        event_key: String,
        pics: SendPicsInfo,
    },
    /// A menu WeChat-album button (`pic_weixin`).
    PicWeixin {
        event_key: String,
        pics: SendPicsInfo,
    },
    /// A menu location picker (`location_select`).
    LocationSelect {
        event_key: String,
        latitude: f64,
        longitude: f64,
        scale: i64,
        label: String,
        poiname: String,
    },
    /// A template message finished sending.
    TemplateSendJobFinish { msg_id: u64, status: String },
    /// A mass message finished sending.
    MassSendJobFinish {
        msg_id: u64,
        status: String,
        total_count: u64,
        filter_count: u64,
        sent_count: u64,
        error_count: u64,
    },
    /// An `Event` this version does not know; its fields are in [`Message::fields`].
    Unknown { event: String },
}

/// Why an inbound body could not be turned into a [`Message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not well-formed XML, or XML with a DTD (which could declare entities).
    Xml(String),
    /// The root element is not `<xml>`.
    Root(String),
    /// A field every message must have is missing or empty.
    Missing(&'static str),
    /// A field that must be a number is not.
    NotANumber { field: String, value: String },
    /// Elements nested deeper than [`MAX_DEPTH`] (WeChat's go 4 deep).
    TooDeep,
    /// A field that names things (`FromUserName`, `MsgType`, `Event`) holds a control character:
    /// WeChat's never do, and these go into log lines as they are.
    ControlCharacter(&'static str),
    /// An XML namespace declaration: WeChat never sends one, and the parser pays for them out
    /// of all proportion ([`check_markup`]).
    Namespace,
    /// More than [`MAX_ATTRIBUTES`] attributes: WeChat sends none ([`check_markup`]).
    TooManyAttributes,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Xml(e) => write!(f, "body is not well-formed XML without a DTD: {e}"),
            ParseError::Root(r) => write!(f, "root element is <{r}>, expected <xml>"),
            ParseError::Missing(field) => write!(f, "required field <{field}> is missing or empty"),
            ParseError::NotANumber { field, value } => {
                write!(f, "field <{field}> should be a number, got {value:?}")
            }
            ParseError::TooDeep => write!(
                f,
                "elements nest more than {MAX_DEPTH} deep (WeChat's messages nest at most 4)"
            ),
            ParseError::ControlCharacter(field) => {
                write!(f, "field <{field}> holds a control character")
            }
            ParseError::Namespace => write!(
                f,
                "an XML namespace declaration (xmlns), which WeChat's messages never have"
            ),
            ParseError::TooManyAttributes => write!(
                f,
                "more than {MAX_ATTRIBUTES} XML attributes (WeChat's messages have none)"
            ),
        }
    }
}

impl std::error::Error for ParseError {}

/// Looks fields up by name in the flattened field list.
struct Fields<'a>(&'a [(String, String)]);

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A field's text, empty when absent: optional fields are common and WeChat is not strict.
    fn text(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().trim().to_string()
    }

    fn opt(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    /// A numeric field that only informs (a location's coordinates and scale, a count): absent,
    /// empty or not a number counts as zero, the last logged, so that an odd value never costs
    /// the user the answer to the message. (The fields that tell messages apart, `MsgId` and
    /// `CreateTime`, are [`Fields::num`]: strict.)
    fn reading<T: std::str::FromStr + Default>(&self, name: &str) -> T {
        self.num(name).unwrap_or_else(|e| {
            log::warn!("{e}; taken as 0");
            T::default()
        })
    }

    /// A numeric field; absent or empty counts as zero, garbage is an error.
    fn num<T: std::str::FromStr + Default>(&self, name: &str) -> Result<T, ParseError> {
        match self.get(name).map(str::trim) {
            None | Some("") => Ok(T::default()),
            Some(v) => v.parse().map_err(|_| ParseError::NotANumber {
                field: name.to_string(),
                value: v.chars().take(40).collect(),
            }),
        }
    }
}

/// How deep elements may nest below `<xml>`; WeChat's deepest field is
/// `SendPicsInfo/PicList/item/PicMd5Sum`, 4 deep.
pub const MAX_DEPTH: usize = 8;

/// How many XML nodes (elements, texts, comments) a message may have: WeChat's have a few dozen,
/// and a 64 KiB body of `<a/>`s would otherwise make ~16,000 of them in memory.
pub const MAX_NODES: u32 = 1024;

/// How many attributes a body may hold in all: WeChat's messages and safe-mode envelopes have
/// none, and the XML parser checks each element's attributes against each other.
pub const MAX_ATTRIBUTES: usize = 16;

/// Refuses, in one pass over the bytes and before any XML parser sees them, the markup that
/// makes roxmltree slow out of all proportion to the body's size: a **namespace declaration**
/// (it copies every namespace in scope into each element that declares one and compares them:
/// 55 KB of declarations took ~4 s of CPU to parse) and more than [`MAX_ATTRIBUTES`]
/// attributes (one element's 7,000 took ~30 ms). Text and CDATA are not markup: a message may
/// say `xmlns="…"`. Anything malformed is left for the parser to refuse.
pub fn check_markup(xml: &str) -> Result<(), ParseError> {
    let b = xml.as_bytes();
    // A byte scan for the first byte, then a compare: several times faster than comparing a
    // window at every position, and this runs over every body.
    let find = |from: usize, what: &[u8]| {
        let (&first, _) = what.split_first()?;
        let mut at = from;
        loop {
            let hit = at + b.get(at..)?.iter().position(|&c| c == first)?;
            if b[hit..].starts_with(what) {
                return Some(hit);
            }
            at = hit + 1;
        }
    };
    let mut attributes = 0;
    let mut i = 0;
    while let Some(lt) = find(i, b"<") {
        let rest = &b[lt..];
        // Sections whose contents are not markup: skip to their end (none: the parser refuses).
        let skip = [
            (&b"<![CDATA["[..], &b"]]>"[..]),
            (b"<!--", b"-->"),
            (b"<?", b"?>"),
        ]
        .iter()
        .find(|(open, _)| rest.starts_with(open))
        .map(|(open, close)| find(lt + open.len(), close).map(|end| end + close.len()));
        match skip {
            Some(Some(end)) => {
                i = end;
                continue;
            }
            Some(None) => return Ok(()),
            None => {}
        }
        // A tag: to its `>`, attribute values (quoted, and free to hold `>`) skipped.
        let mut quote = None;
        let mut j = lt + 1;
        while let Some(&c) = b.get(j) {
            match (quote, c) {
                (Some(q), _) if c == q => quote = None,
                (Some(_), _) => {}
                (None, b'"' | b'\'') => quote = Some(c),
                (None, b'>') => break,
                (None, b'=') => {
                    attributes += 1;
                    if attributes > MAX_ATTRIBUTES {
                        return Err(ParseError::TooManyAttributes);
                    }
                }
                (None, _) if c.is_ascii_whitespace() => {
                    // The name that may start here: a declaration when its prefix or its local
                    // part is `xmlns` (`xmlns`, `xmlns:p`, and `p:xmlns`, which roxmltree also
                    // takes for one).
                    let rest = b.get(j + 1..).unwrap_or_default();
                    let end = rest
                        .iter()
                        .position(|&c| {
                            c == b'=' || c == b'/' || c == b'>' || c.is_ascii_whitespace()
                        })
                        .unwrap_or(rest.len());
                    if rest[..end]
                        .split(|&c| c == b':')
                        .any(|part| part == b"xmlns")
                    {
                        return Err(ParseError::Namespace);
                    }
                }
                (None, _) => {}
            }
            j += 1;
        }
        i = j + 1;
    }
    Ok(())
}

/// Parses an inbound message body.
pub fn parse(xml: &str) -> Result<Message, ParseError> {
    check_markup(xml)?;
    // roxmltree refuses DTDs by default, and without a DTD no entity but the five predefined
    // ones can exist: billion-laughs and external entities are impossible by construction.
    let options = roxmltree::ParsingOptions {
        nodes_limit: MAX_NODES,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(xml, options)
        .map_err(|e| ParseError::Xml(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "xml" {
        return Err(ParseError::Root(
            root.tag_name().name().chars().take(40).collect(),
        ));
    }
    let fields = leaf_fields(root)?;
    let f = Fields(&fields);
    for name in ["FromUserName", "MsgType", "Event"] {
        if f.get(name)
            .is_some_and(|v| v.trim().contains(char::is_control))
        {
            return Err(ParseError::ControlCharacter(name));
        }
    }

    let msg_type = f.opt("MsgType").ok_or(ParseError::Missing("MsgType"))?;
    let kind = parse_kind(&msg_type, &f)?;
    let msg_id = match f.get("MsgId").or_else(|| f.get("MsgID")).map(str::trim) {
        None | Some("") => None,
        Some(_) => Some(f.num::<u64>(if f.get("MsgId").is_some() {
            "MsgId"
        } else {
            "MsgID"
        })?),
    };
    Ok(Message {
        to_user: f.text("ToUserName"),
        from_user: f
            .opt("FromUserName")
            .ok_or(ParseError::Missing("FromUserName"))?,
        create_time: f.num("CreateTime")?,
        msg_type,
        msg_id,
        kind,
        fields,
    })
}

/// The text of every leaf element under `root` as `(path, text)` pairs in document order; nested
/// elements get `Parent/Child` paths and list items (`PicList/item/PicMd5Sum`) repeat the same
/// path. Shared by the inbound parser and `wxmp send`'s reply checks. `Err(TooDeep)` when
/// elements nest more than [`MAX_DEPTH`] deep.
pub fn leaf_fields(root: roxmltree::Node) -> Result<Vec<(String, String)>, ParseError> {
    // Sized for the top level at once rather than grown by doubling (nested lists may add more).
    let mut out = Vec::with_capacity(root.children().filter(|c| c.is_element()).count());
    // Walked with a stack of its own, not by recursion: a signed body of 9,000 nested elements
    // overflowed the thread's stack, which no `catch_unwind` can stop. The stack is an array of
    // MAX_DEPTH levels (no allocation a message), `depth` of them in use.
    let mut parents: [(roxmltree::Children, String); MAX_DEPTH] =
        std::array::from_fn(|_| (root.children(), String::new()));
    let mut depth: usize = 1;
    while let Some((children, prefix)) = depth.checked_sub(1).and_then(|i| parents.get_mut(i)) {
        let Some(child) = children.next() else {
            depth -= 1;
            continue;
        };
        if !child.is_element() {
            continue;
        }
        let name = if prefix.is_empty() {
            child.tag_name().name().to_string()
        } else {
            format!("{prefix}/{}", child.tag_name().name())
        };
        if child.children().any(|c| c.is_element()) {
            let level = parents.get_mut(depth).ok_or(ParseError::TooDeep)?;
            *level = (child.children(), name);
            depth += 1;
        } else {
            let text: String = child
                .children()
                .filter(|c| c.is_text())
                .filter_map(|c| c.text())
                .collect();
            out.push((name, text));
        }
    }
    Ok(out)
}

fn parse_kind(msg_type: &str, f: &Fields) -> Result<Kind, ParseError> {
    Ok(match msg_type {
        "text" => Kind::Text {
            content: f.get("Content").unwrap_or_default().to_string(),
        },
        "image" => Kind::Image {
            pic_url: f.text("PicUrl"),
            media_id: f.text("MediaId"),
        },
        "voice" => Kind::Voice {
            media_id: f.text("MediaId"),
            format: f.text("Format"),
            media_id_16k: f.opt("MediaId16K"),
            recognition: f.opt("Recognition"),
        },
        "video" => Kind::Video {
            media_id: f.text("MediaId"),
            thumb_media_id: f.text("ThumbMediaId"),
        },
        "shortvideo" => Kind::ShortVideo {
            media_id: f.text("MediaId"),
            thumb_media_id: f.text("ThumbMediaId"),
        },
        "location" => Kind::Location {
            latitude: f.reading("Location_X"),
            longitude: f.reading("Location_Y"),
            scale: f.reading("Scale"),
            label: f.text("Label"),
        },
        "link" => Kind::Link {
            title: f.text("Title"),
            description: f.text("Description"),
            url: f.text("Url"),
        },
        "miniprogrampage" => Kind::MiniProgramPage {
            title: f.text("Title"),
            app_id: f.text("AppId"),
            page_path: f.text("PagePath"),
            thumb_url: f.text("ThumbUrl"),
            thumb_media_id: f.text("ThumbMediaId"),
        },
        "event" => Kind::Event(parse_event(f)?),
        other => Kind::Unknown {
            msg_type: other.to_string(),
        },
    })
}

fn parse_event(f: &Fields) -> Result<Event, ParseError> {
    let event = f.opt("Event").ok_or(ParseError::Missing("Event"))?;
    let key = || f.text("EventKey");
    let pics = || -> Result<SendPicsInfo, ParseError> {
        Ok(SendPicsInfo {
            count: f.reading("SendPicsInfo/Count"),
            pic_md5_sums: f.all("SendPicsInfo/PicList/item/PicMd5Sum"),
        })
    };
    // Event names are documented in mixed case (`subscribe`, `SCAN`, `CLICK`); compare without case.
    Ok(match event.to_ascii_lowercase().as_str() {
        "subscribe" => Event::Subscribe {
            event_key: f.opt("EventKey"),
            ticket: f.opt("Ticket"),
        },
        "unsubscribe" => Event::Unsubscribe,
        "scan" => Event::Scan {
            event_key: key(),
            ticket: f.opt("Ticket"),
        },
        "location" => Event::Location {
            latitude: f.reading("Latitude"),
            longitude: f.reading("Longitude"),
            precision: f.reading("Precision"),
        },
        "click" => Event::Click { event_key: key() },
        "view" => Event::View {
            url: key(),
            menu_id: f.opt("MenuId"),
        },
        "view_miniprogram" => Event::ViewMiniprogram {
            page_path: key(),
            menu_id: f.opt("MenuId"),
        },
        "scancode_push" => Event::ScancodePush {
            event_key: key(),
            scan_type: f.text("ScanCodeInfo/ScanType"),
            scan_result: f.text("ScanCodeInfo/ScanResult"),
        },
        "scancode_waitmsg" => Event::ScancodeWaitmsg {
            event_key: key(),
            scan_type: f.text("ScanCodeInfo/ScanType"),
            scan_result: f.text("ScanCodeInfo/ScanResult"),
        },
        "pic_sysphoto" => Event::PicSysphoto {
            event_key: key(),
            pics: pics()?,
        },
        "pic_photo_or_album" => Event::PicPhotoOrAlbum {
            event_key: key(),
            pics: pics()?,
        },
        "pic_weixin" => Event::PicWeixin {
            event_key: key(),
            pics: pics()?,
        },
        "location_select" => Event::LocationSelect {
            event_key: key(),
            latitude: f.reading("SendLocationInfo/Location_X"),
            longitude: f.reading("SendLocationInfo/Location_Y"),
            scale: f.reading("SendLocationInfo/Scale"),
            label: f.text("SendLocationInfo/Label"),
            poiname: f.text("SendLocationInfo/Poiname"),
        },
        "templatesendjobfinish" => Event::TemplateSendJobFinish {
            msg_id: f.num(if f.get("MsgID").is_some() {
                "MsgID"
            } else {
                "MsgId"
            })?,
            status: f.text("Status"),
        },
        "masssendjobfinish" => Event::MassSendJobFinish {
            msg_id: f.num(if f.get("MsgID").is_some() {
                "MsgID"
            } else {
                "MsgId"
            })?,
            status: f.text("Status"),
            total_count: f.reading("TotalCount"),
            filter_count: f.reading("FilterCount"),
            sent_count: f.reading("SentCount"),
            error_count: f.reading("ErrorCount"),
        },
        _ => Event::Unknown { event },
    })
}

impl Message {
    /// A raw field's text by name (nested fields as `Parent/Child`), for types this version
    /// does not model and for commands that want a field verbatim.
    pub fn field(&self, name: &str) -> Option<&str> {
        Fields(&self.fields).get(name)
    }

    /// The event, when this message is one.
    pub fn event(&self) -> Option<&Event> {
        match &self.kind {
            Kind::Event(e) => Some(e),
            _ => None,
        }
    }

    /// The `Event` name as sent, when this message is an event.
    pub fn event_name(&self) -> Option<&str> {
        self.event().and(self.field("Event")).map(str::trim)
    }

    /// The identity of this message across WeChat's retries: `MsgId` for ordinary messages,
    /// sender + `CreateTime` + `Event` + `EventKey` for events (several events can share a second),
    /// and an event's own `MsgID` when it has one (two `TEMPLATESENDJOBFINISH` reports of
    /// different sends can share a second and have no `EventKey`).
    pub fn dedup_key(&self) -> String {
        match (&self.kind, self.msg_id) {
            (Kind::Event(_), _) | (_, None) => {
                let mut key = format!(
                    "ev|{}|{}|{}|{}|{}",
                    self.from_user,
                    self.create_time,
                    self.msg_type,
                    self.field("Event").unwrap_or_default().trim(),
                    self.field("EventKey").unwrap_or_default().trim()
                );
                if let Some(id) = self.msg_id {
                    let _ = write!(key, "|{id}");
                }
                key
            }
            (_, Some(id)) => {
                // Sized up front (20 digits at most): this runs for every message.
                let mut key = String::with_capacity(self.from_user.len() + 24);
                key.push_str("id|");
                key.push_str(&self.from_user);
                key.push('|');
                let _ = write!(key, "{id}");
                key
            }
        }
    }

    /// What the user said, for command matching: text content, or the speech recognition
    /// result of a voice message with its trailing punctuation trimmed.
    pub fn said(&self) -> Option<String> {
        match &self.kind {
            Kind::Text { content } => Some(content.trim().to_string()),
            Kind::Voice {
                recognition: Some(r),
                ..
            } => Some(
                r.trim()
                    .trim_end_matches(|c: char| {
                        c.is_ascii_punctuation() || "。，！？；：、…．".contains(c)
                    })
                    .trim()
                    .to_string(),
            ),
            _ => None,
        }
    }

    /// A short, single-line description of the content for the log (at most 40 characters).
    pub fn summary(&self) -> String {
        // Borrowed where the text is a field as it is: this runs for every message's log line.
        let text: std::borrow::Cow<'_, str> = match &self.kind {
            Kind::Text { content } => content.into(),
            Kind::Voice {
                recognition: Some(recognition),
                ..
            } => recognition.into(),
            Kind::Voice { media_id, .. }
            | Kind::Image { media_id, .. }
            | Kind::Video { media_id, .. }
            | Kind::ShortVideo { media_id, .. } => format!("media {media_id}").into(),
            Kind::Location {
                latitude,
                longitude,
                label,
                ..
            } => format!("{latitude},{longitude} {label}").into(),
            Kind::Link { title, .. } | Kind::MiniProgramPage { title, .. } => title.into(),
            Kind::Event(_) => format!(
                "{} {}",
                self.field("Event").unwrap_or_default().trim(),
                self.field("EventKey").unwrap_or_default().trim()
            )
            .into(),
            Kind::Unknown { .. } => "".into(),
        };
        let mut chars = text.chars();
        // Room for 40 characters of up to 4 bytes and the mark, so it never grows.
        let mut cut = String::with_capacity(text.len().min(160) + '…'.len_utf8());
        cut.extend(
            chars
                .by_ref()
                .take(40)
                .map(|c| if c.is_control() { ' ' } else { c }),
        );
        if chars.next().is_some() {
            cut.push('…');
        }
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_message() {
        let m = parse("<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[oU]]></FromUserName><CreateTime>1348831860</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[this is a test]]></Content><MsgId>1234567890123456</MsgId></xml>").unwrap();
        assert_eq!(m.to_user, "gh_1");
        assert_eq!(m.from_user, "oU");
        assert_eq!(m.create_time, 1348831860);
        assert_eq!(m.msg_id, Some(1234567890123456));
        assert_eq!(
            m.kind,
            Kind::Text {
                content: "this is a test".into()
            }
        );
        assert_eq!(m.dedup_key(), "id|oU|1234567890123456");
    }

    #[test]
    fn refuses_dtd_and_garbage() {
        let dtd = "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY a \"b\">]><xml><MsgType>text</MsgType></xml>";
        assert!(matches!(parse(dtd), Err(ParseError::Xml(_))));
        assert!(matches!(parse("not xml"), Err(ParseError::Xml(_))));
        assert!(matches!(
            parse("<xml><FromUserName>a</FromUserName></xml>"),
            Err(ParseError::Missing("MsgType"))
        ));
        assert!(matches!(parse("<foo/>"), Err(ParseError::Root(_))));
        assert!(matches!(parse("<xml><MsgType>text</MsgType><FromUserName>a</FromUserName><CreateTime>x</CreateTime></xml>"), Err(ParseError::NotANumber { .. })));
    }

    #[test]
    fn namespaces_and_many_attributes_are_refused_before_parsing() {
        let ok = |xml: &str| assert!(check_markup(xml).is_ok(), "{xml}");
        let refused = |xml: &str, e: ParseError| assert_eq!(check_markup(xml), Err(e), "{xml}");
        for declaration in [
            "<xml xmlns=\"u\">",
            "<xml xmlns:a=\"u\">",
            "<xml\n\txmlns:a='u'>",
            "<xml xmlns = \"u\">",
            "<xml><a b=\"1\" xmlns:m=\"v\"/>",
            // roxmltree takes any attribute whose local name is `xmlns` for a default namespace.
            "<xml p:xmlns=\"urn:a\">",
            "<xml xml:xmlns=\"u\">",
            "<xml a:b:xmlns=\"u\">",
            // After sections that are skipped, markup is looked at again.
            "<xml><a><![CDATA[x]]></a><!-- c --><?pi x?><b xmlns:m=\"v\"/></xml>",
        ] {
            refused(declaration, ParseError::Namespace);
        }
        // Text, CDATA, comments, processing instructions and attribute values are not markup.
        ok("<xml><Content><![CDATA[<a xmlns:a=\"u\" b=c d=e>]]></Content></xml>");
        ok("<xml><Content>a xmlns=b > c</Content><!-- <x xmlns=\"y\"> --></xml>");
        ok("<?xml version=\"1.0\" encoding=\"UTF-8\"?><xml/>");
        ok("<xml><a b=\" xmlns:c=d > \" e='xmlns=f'/></xml>");
        ok("<xml><xmlnsField>1</xmlnsField><a xmlnsb=\"1\" pxmlns=\"2\" p:xmlnsx=\"3\"/></xml>");
        // Attributes: 16 in all, however spread.
        let attrs = |n: usize| {
            let mut xml = String::from("<xml>");
            for i in 0..n {
                xml.push_str(&format!("<a n{i}=\"{i}\"/>"));
            }
            xml + "</xml>"
        };
        ok(&attrs(MAX_ATTRIBUTES));
        refused(&attrs(MAX_ATTRIBUTES + 1), ParseError::TooManyAttributes);
        // Unterminated sections are the parser's to refuse.
        ok("<xml><![CDATA[ xmlns=");
        assert!(matches!(
            parse("<xml><![CDATA[ xmlns="),
            Err(ParseError::Xml(_))
        ));
        // And parse() applies it, with a message that says why.
        let err = parse("<xml xmlns:a=\"u\"><MsgType>text</MsgType></xml>").unwrap_err();
        assert_eq!(
            err.to_string(),
            "an XML namespace declaration (xmlns), which WeChat's messages never have"
        );
    }

    #[test]
    fn nested_event_fields() {
        let m = parse("<xml><FromUserName>u</FromUserName><CreateTime>1</CreateTime><MsgType>event</MsgType><Event>pic_weixin</Event><EventKey>K</EventKey><SendPicsInfo><Count>2</Count><PicList><item><PicMd5Sum>a</PicMd5Sum></item><item><PicMd5Sum>b</PicMd5Sum></item></PicList></SendPicsInfo></xml>").unwrap();
        assert_eq!(
            m.kind,
            Kind::Event(Event::PicWeixin {
                event_key: "K".into(),
                pics: SendPicsInfo {
                    count: 2,
                    pic_md5_sums: vec!["a".into(), "b".into()]
                }
            })
        );
        assert_eq!(m.dedup_key(), "ev|u|1|event|pic_weixin|K");
    }

    fn nested(depth: usize) -> String {
        format!(
            "<xml><FromUserName>u</FromUserName><MsgType>text</MsgType>{}x{}</xml>",
            "<a>".repeat(depth),
            "</a>".repeat(depth)
        )
    }

    #[test]
    fn nesting_is_bounded_without_recursion() {
        let m = parse(&nested(MAX_DEPTH)).unwrap();
        let path = ["a"; MAX_DEPTH].join("/");
        assert_eq!(m.field(&path), Some("x"));
        assert_eq!(parse(&nested(MAX_DEPTH + 1)), Err(ParseError::TooDeep));
        // Deeper than a thread's stack would hold with one frame a level (as it once was);
        // parsed without the node limit to reach the walk itself.
        let deep = nested(20_000);
        let doc = roxmltree::Document::parse(&deep).unwrap();
        assert_eq!(leaf_fields(doc.root_element()), Err(ParseError::TooDeep));
    }

    #[test]
    fn names_with_control_characters_are_refused() {
        // XML itself refuses every control character but tab, line feed and carriage return.
        for (xml, field) in [
            ("<xml><FromUserName>oA\n2026-12-02T05:00:00Z [ERROR] forged</FromUserName><MsgType>text</MsgType></xml>", "FromUserName"),
            ("<xml><FromUserName>oA</FromUserName><MsgType>te\txt</MsgType></xml>", "MsgType"),
            ("<xml><FromUserName>oA</FromUserName><MsgType>event</MsgType><Event>CLI&#13;CK</Event></xml>", "Event"),
        ] {
            assert_eq!(parse(xml), Err(ParseError::ControlCharacter(field)), "{xml}");
        }
        // Surrounding white space, as in pretty-printed XML, is not a name's.
        let m = parse("<xml><FromUserName>\n  oA\n</FromUserName><MsgType>\ttext</MsgType></xml>")
            .unwrap();
        assert_eq!((m.from_user.as_str(), m.msg_type.as_str()), ("oA", "text"));
    }

    #[test]
    fn nodes_are_bounded() {
        let many = |n: usize| {
            format!(
                "<xml><FromUserName>u</FromUserName><MsgType>text</MsgType>{}</xml>",
                "<a/>".repeat(n)
            )
        };
        assert!(parse(&many(500)).is_ok());
        assert!(matches!(parse(&many(2000)), Err(ParseError::Xml(_))));
    }

    #[test]
    fn job_finish_reports_of_one_second_are_told_apart_by_their_msg_id() {
        let report = |id: u64| {
            parse(&format!("<xml><ToUserName>gh</ToUserName><FromUserName>oU</FromUserName><CreateTime>1700000000</CreateTime><MsgType>event</MsgType><Event>TEMPLATESENDJOBFINISH</Event><MsgID>{id}</MsgID><Status>success</Status></xml>")).unwrap()
        };
        assert_eq!(
            report(200163836).dedup_key(),
            "ev|oU|1700000000|event|TEMPLATESENDJOBFINISH||200163836"
        );
        assert_ne!(report(200163836).dedup_key(), report(200163837).dedup_key());
        // A retry of the same report is still the same message.
        assert_eq!(report(200163836).dedup_key(), report(200163836).dedup_key());
    }

    #[test]
    fn voice_recognition_is_said_without_trailing_punctuation() {
        let m = parse("<xml><FromUserName>u</FromUserName><MsgType>voice</MsgType><MediaId>m</MediaId><Format>amr</Format><Recognition>天气。</Recognition><MsgId>5</MsgId></xml>").unwrap();
        assert_eq!(m.said().as_deref(), Some("天气"));
    }

    #[test]
    fn text_is_said_trimmed_and_other_kinds_say_nothing() {
        let m = parse("<xml><FromUserName>u</FromUserName><MsgType>text</MsgType><Content><![CDATA[ 天气。\n]]></Content><MsgId>5</MsgId></xml>").unwrap();
        assert_eq!(m.said().as_deref(), Some("天气。"));
        let m = parse("<xml><FromUserName>u</FromUserName><MsgType>image</MsgType><MediaId>m</MediaId><MsgId>5</MsgId></xml>").unwrap();
        assert_eq!(m.said(), None);
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let cases = [
            (
                ParseError::Xml("unexpected end of stream".into()),
                "body is not well-formed XML without a DTD: unexpected end of stream",
            ),
            (
                ParseError::Root("foo".into()),
                "root element is <foo>, expected <xml>",
            ),
            (
                ParseError::Missing("MsgType"),
                "required field <MsgType> is missing or empty",
            ),
            (
                ParseError::NotANumber {
                    field: "CreateTime".into(),
                    value: "x\"y".into(),
                },
                "field <CreateTime> should be a number, got \"x\\\"y\"",
            ),
            (
                ParseError::TooDeep,
                "elements nest more than 8 deep (WeChat's messages nest at most 4)",
            ),
            (
                ParseError::ControlCharacter("Event"),
                "field <Event> holds a control character",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }

    #[test]
    fn summary_is_one_line_of_at_most_40_characters() {
        let text = |content: &str| {
            let xml = format!(
                "<xml><FromUserName>u</FromUserName><MsgType>text</MsgType>\
                 <Content><![CDATA[{content}]]></Content><MsgId>5</MsgId></xml>"
            );
            parse(&xml).unwrap()
        };
        assert_eq!(text("天气\n北京").summary(), "天气 北京");
        let long = "价".repeat(41);
        assert_eq!(text(&long).summary(), format!("{}…", "价".repeat(40)));
        assert_eq!(text(&"价".repeat(40)).summary(), "价".repeat(40));
        assert_eq!(text("").summary(), "");
    }
}
