//! One conversation per message type and per event of the protocol reference: the body WeChat
//! sends is parsed into the exact typed message, and the real server answers it as it should
//! (text-like messages the default reply, `subscribe` the welcome, other events `success`).

mod common;
use common::*;
use wxmp::message::{parse, Event, Kind, SendPicsInfo};

thread_local! {
    /// One server per test (a test runs on one thread), stopped when the test ends: a server in a
    /// static would outlive the test process as an orphan.
    static SERVER: Wxmp = Wxmp::start("");
}

/// Sends `xml` to this test's server.
fn post(xml: &str) -> Resp {
    SERVER.with(|w| w.post_signed(xml))
}

/// Waits for `needle` in this test's server log.
fn logged(needle: &str) -> bool {
    SERVER.with(|w| w.wait_for_log(needle))
}

/// Parses `xml` with the library, and sends it to the server; returns the typed kind and reply.
fn converse(xml: &str) -> (Kind, Resp) {
    let kind = parse(xml).expect("parses").kind;
    (kind, post(xml))
}

fn assert_success(r: &Resp) {
    assert_eq!((r.status, r.body.as_str()), (200, "success"));
}

fn s(v: &str) -> String {
    v.to_string()
}

#[test]
fn text() {
    let (k, r) = converse(&msg(
        "oT",
        "text",
        &[("Content", "天气 today"), ("MsgId", &fresh_id())],
    ));
    assert_eq!(
        k,
        Kind::Text {
            content: s("天气 today")
        }
    );
    assert_text_reply(&r, "oT", DEFAULT_REPLY);
}

#[test]
fn image() {
    let (k, r) = converse(&msg(
        "oI",
        "image",
        &[
            ("PicUrl", "http://p/x.jpg"),
            ("MediaId", "MID"),
            ("MsgId", &fresh_id()),
        ],
    ));
    assert_eq!(
        k,
        Kind::Image {
            pic_url: s("http://p/x.jpg"),
            media_id: s("MID")
        }
    );
    assert_text_reply(&r, "oI", DEFAULT_REPLY);
}

#[test]
fn voice_with_recognition() {
    let xml = msg(
        "oV",
        "voice",
        &[
            ("MediaId", "M"),
            ("Format", "amr"),
            ("MediaId16K", "M16"),
            ("Recognition", "天气。"),
            ("MsgId", &fresh_id()),
        ],
    );
    let (k, r) = converse(&xml);
    assert_eq!(
        k,
        Kind::Voice {
            media_id: s("M"),
            format: s("amr"),
            media_id_16k: Some(s("M16")),
            recognition: Some(s("天气。"))
        }
    );
    assert_eq!(parse(&xml).unwrap().said().as_deref(), Some("天气"));
    assert_text_reply(&r, "oV", DEFAULT_REPLY);
}

#[test]
fn voice_without_recognition() {
    let (k, r) = converse(&msg(
        "oV2",
        "voice",
        &[
            ("MediaId", "M"),
            ("Format", "speex"),
            ("MsgId", &fresh_id()),
        ],
    ));
    assert_eq!(
        k,
        Kind::Voice {
            media_id: s("M"),
            format: s("speex"),
            media_id_16k: None,
            recognition: None
        }
    );
    assert_text_reply(&r, "oV2", DEFAULT_REPLY);
}

#[test]
fn video() {
    let (k, r) = converse(&msg(
        "oVid",
        "video",
        &[
            ("MediaId", "M"),
            ("ThumbMediaId", "T"),
            ("MsgId", &fresh_id()),
        ],
    ));
    assert_eq!(
        k,
        Kind::Video {
            media_id: s("M"),
            thumb_media_id: s("T")
        }
    );
    assert_text_reply(&r, "oVid", DEFAULT_REPLY);
}

#[test]
fn shortvideo() {
    let (k, r) = converse(&msg(
        "oSv",
        "shortvideo",
        &[
            ("MediaId", "M"),
            ("ThumbMediaId", "T"),
            ("MsgId", &fresh_id()),
        ],
    ));
    assert_eq!(
        k,
        Kind::ShortVideo {
            media_id: s("M"),
            thumb_media_id: s("T")
        }
    );
    assert_text_reply(&r, "oSv", DEFAULT_REPLY);
}

#[test]
fn location() {
    let xml = msg(
        "oLoc",
        "location",
        &[
            ("Location_X", "23.134521"),
            ("Location_Y", "113.358803"),
            ("Scale", "20"),
            ("Label", "广州"),
            ("MsgId", &fresh_id()),
        ],
    );
    let (k, r) = converse(&xml);
    assert_eq!(
        k,
        Kind::Location {
            latitude: 23.134521,
            longitude: 113.358803,
            scale: 20,
            label: s("广州")
        }
    );
    assert_text_reply(&r, "oLoc", DEFAULT_REPLY);
    assert!(logged("oLoc location \"23.134521,113.358803 广州\""));
}

#[test]
fn a_location_with_an_odd_number_is_answered_all_the_same() {
    // A coordinate or scale that is not a number only informs: it counts as 0 and is
    // logged, and the user still gets the answer (MsgId and CreateTime stay strict).
    let xml = msg(
        "oOdd",
        "location",
        &[
            ("Location_X", "23.1"),
            ("Location_Y", "north"),
            ("Scale", "15.5"),
            ("Label", "广州"),
            ("MsgId", &fresh_id()),
        ],
    );
    let (k, r) = converse(&xml);
    assert_eq!(
        k,
        Kind::Location {
            latitude: 23.1,
            longitude: 0.0,
            scale: 0,
            label: s("广州")
        }
    );
    assert_text_reply(&r, "oOdd", DEFAULT_REPLY);
    assert!(logged(
        "field <Scale> should be a number, got \"15.5\"; taken as 0"
    ));
    assert!(logged(
        "field <Location_Y> should be a number, got \"north\"; taken as 0"
    ));
}

#[test]
fn link() {
    let (k, r) = converse(&msg(
        "oLink",
        "link",
        &[
            ("Title", "标题"),
            ("Description", "描述"),
            ("Url", "https://u"),
            ("MsgId", &fresh_id()),
        ],
    ));
    assert_eq!(
        k,
        Kind::Link {
            title: s("标题"),
            description: s("描述"),
            url: s("https://u")
        }
    );
    assert_text_reply(&r, "oLink", DEFAULT_REPLY);
}

#[test]
fn miniprogrampage() {
    let (k, r) = converse(&msg(
        "oMini",
        "miniprogrampage",
        &[
            ("Title", "T"),
            ("AppId", "wxapp"),
            ("PagePath", "pages/i"),
            ("ThumbUrl", "https://t"),
            ("ThumbMediaId", "TM"),
            ("MsgId", &fresh_id()),
        ],
    ));
    assert_eq!(
        k,
        Kind::MiniProgramPage {
            title: s("T"),
            app_id: s("wxapp"),
            page_path: s("pages/i"),
            thumb_url: s("https://t"),
            thumb_media_id: s("TM")
        }
    );
    assert_text_reply(&r, "oMini", DEFAULT_REPLY);
}

#[test]
fn unknown_msg_type_is_kept_not_refused() {
    let xml = msg(
        "oNew",
        "hologram",
        &[("Depth", "3"), ("MsgId", &fresh_id())],
    );
    let m = parse(&xml).unwrap();
    assert_eq!(
        m.kind,
        Kind::Unknown {
            msg_type: s("hologram")
        }
    );
    assert_eq!(m.field("Depth"), Some("3"));
    assert_text_reply(&post(&xml), "oNew", DEFAULT_REPLY);
}

#[test]
fn event_subscribe_plain() {
    let (k, r) = converse(&msg("oSub", "event", &[("Event", "subscribe")]));
    assert_eq!(
        k,
        Kind::Event(Event::Subscribe {
            event_key: None,
            ticket: None
        })
    );
    assert_text_reply(&r, "oSub", WELCOME);
}

#[test]
fn event_subscribe_by_qr_scene() {
    let (k, r) = converse(&msg(
        "oSubQr",
        "event",
        &[
            ("Event", "subscribe"),
            ("EventKey", "qrscene_123"),
            ("Ticket", "TK"),
        ],
    ));
    assert_eq!(
        k,
        Kind::Event(Event::Subscribe {
            event_key: Some(s("qrscene_123")),
            ticket: Some(s("TK"))
        })
    );
    assert_text_reply(&r, "oSubQr", WELCOME);
}

#[test]
fn event_unsubscribe() {
    let (k, r) = converse(&msg("oUnsub", "event", &[("Event", "unsubscribe")]));
    assert_eq!(k, Kind::Event(Event::Unsubscribe));
    assert_success(&r);
}

#[test]
fn event_scan() {
    let (k, r) = converse(&msg(
        "oScan",
        "event",
        &[("Event", "SCAN"), ("EventKey", "123"), ("Ticket", "TK")],
    ));
    assert_eq!(
        k,
        Kind::Event(Event::Scan {
            event_key: s("123"),
            ticket: Some(s("TK"))
        })
    );
    assert_success(&r);
}

#[test]
fn event_location() {
    let (k, r) = converse(&msg(
        "oLocEv",
        "event",
        &[
            ("Event", "LOCATION"),
            ("Latitude", "23.137466"),
            ("Longitude", "113.352425"),
            ("Precision", "119.385040"),
        ],
    ));
    assert_eq!(
        k,
        Kind::Event(Event::Location {
            latitude: 23.137466,
            longitude: 113.352425,
            precision: 119.38504
        })
    );
    assert_success(&r);
}

#[test]
fn event_click() {
    let (k, r) = converse(&msg(
        "oClick",
        "event",
        &[("Event", "CLICK"), ("EventKey", "TODAY")],
    ));
    assert_eq!(
        k,
        Kind::Event(Event::Click {
            event_key: s("TODAY")
        })
    );
    assert_success(&r);
    assert!(logged("oClick event/CLICK \"CLICK TODAY\" -> success"));
}

#[test]
fn event_view() {
    let (k, r) = converse(&msg(
        "oView",
        "event",
        &[
            ("Event", "VIEW"),
            ("EventKey", "https://x/"),
            ("MenuId", "7"),
        ],
    ));
    assert_eq!(
        k,
        Kind::Event(Event::View {
            url: s("https://x/"),
            menu_id: Some(s("7"))
        })
    );
    assert_success(&r);
}

#[test]
fn event_view_miniprogram() {
    let (k, r) = converse(&msg(
        "oVm",
        "event",
        &[
            ("Event", "view_miniprogram"),
            ("EventKey", "pages/a"),
            ("MenuId", "8"),
        ],
    ));
    assert_eq!(
        k,
        Kind::Event(Event::ViewMiniprogram {
            page_path: s("pages/a"),
            menu_id: Some(s("8"))
        })
    );
    assert_success(&r);
}

fn scan_code_info() -> &'static str {
    "<ScanType><![CDATA[qrcode]]></ScanType><ScanResult><![CDATA[1]]></ScanResult>"
}

#[test]
fn event_scancode_push() {
    let info = format!("<ScanCodeInfo>{}</ScanCodeInfo>", scan_code_info());
    let (k, r) = converse(&msg(
        "oScp",
        "event",
        &[
            ("Event", "scancode_push"),
            ("EventKey", "rselfmenu_0_1"),
            ("", &info),
        ],
    ));
    assert_eq!(
        k,
        Kind::Event(Event::ScancodePush {
            event_key: s("rselfmenu_0_1"),
            scan_type: s("qrcode"),
            scan_result: s("1")
        })
    );
    assert_success(&r);
}

#[test]
fn event_scancode_waitmsg() {
    let info = format!("<ScanCodeInfo>{}</ScanCodeInfo>", scan_code_info());
    let (k, r) = converse(&msg(
        "oScw",
        "event",
        &[
            ("Event", "scancode_waitmsg"),
            ("EventKey", "k"),
            ("", &info),
        ],
    ));
    assert_eq!(
        k,
        Kind::Event(Event::ScancodeWaitmsg {
            event_key: s("k"),
            scan_type: s("qrcode"),
            scan_result: s("1")
        })
    );
    assert_success(&r);
}

fn pics() -> (String, SendPicsInfo) {
    (
        "<SendPicsInfo><Count>2</Count><PicList><item><PicMd5Sum><![CDATA[aa]]></PicMd5Sum></item><item><PicMd5Sum><![CDATA[bb]]></PicMd5Sum></item></PicList></SendPicsInfo>".to_string(),
        SendPicsInfo { count: 2, pic_md5_sums: vec![s("aa"), s("bb")] },
    )
}

#[test]
fn event_pic_sysphoto() {
    let (xml, p) = pics();
    let (k, r) = converse(&msg(
        "oPs",
        "event",
        &[("Event", "pic_sysphoto"), ("EventKey", "k"), ("", &xml)],
    ));
    assert_eq!(
        k,
        Kind::Event(Event::PicSysphoto {
            event_key: s("k"),
            pics: p
        })
    );
    assert_success(&r);
}

#[test]
fn event_pic_photo_or_album() {
    let (xml, p) = pics();
    let (k, r) = converse(&msg(
        "oPa",
        "event",
        &[
            ("Event", "pic_photo_or_album"),
            ("EventKey", "k"),
            ("", &xml),
        ],
    ));
    assert_eq!(
        k,
        Kind::Event(Event::PicPhotoOrAlbum {
            event_key: s("k"),
            pics: p
        })
    );
    assert_success(&r);
}

#[test]
fn event_pic_weixin() {
    let (xml, p) = pics();
    let (k, r) = converse(&msg(
        "oPw",
        "event",
        &[("Event", "pic_weixin"), ("EventKey", "k"), ("", &xml)],
    ));
    assert_eq!(
        k,
        Kind::Event(Event::PicWeixin {
            event_key: s("k"),
            pics: p
        })
    );
    assert_success(&r);
}

#[test]
fn event_location_select() {
    let info = "<SendLocationInfo><Location_X>23</Location_X><Location_Y>113</Location_Y><Scale>15</Scale><Label><![CDATA[广州]]></Label><Poiname><![CDATA[塔]]></Poiname></SendLocationInfo>";
    let (k, r) = converse(&msg(
        "oLs",
        "event",
        &[("Event", "location_select"), ("EventKey", "k"), ("", info)],
    ));
    assert_eq!(
        k,
        Kind::Event(Event::LocationSelect {
            event_key: s("k"),
            latitude: 23.0,
            longitude: 113.0,
            scale: 15,
            label: s("广州"),
            poiname: s("塔")
        })
    );
    assert_success(&r);
}

#[test]
fn event_templatesendjobfinish() {
    let (k, r) = converse(&msg(
        "oTpl",
        "event",
        &[
            ("Event", "TEMPLATESENDJOBFINISH"),
            ("MsgID", "200163836"),
            ("Status", "success"),
        ],
    ));
    assert_eq!(
        k,
        Kind::Event(Event::TemplateSendJobFinish {
            msg_id: 200163836,
            status: s("success")
        })
    );
    assert_success(&r);
}

#[test]
fn event_masssendjobfinish() {
    let (k, r) = converse(&msg(
        "oMass",
        "event",
        &[
            ("Event", "MASSSENDJOBFINISH"),
            ("MsgID", "1988"),
            ("Status", "sendsuccess"),
            ("TotalCount", "100"),
            ("FilterCount", "80"),
            ("SentCount", "75"),
            ("ErrorCount", "5"),
        ],
    ));
    assert_eq!(
        k,
        Kind::Event(Event::MassSendJobFinish {
            msg_id: 1988,
            status: s("sendsuccess"),
            total_count: 100,
            filter_count: 80,
            sent_count: 75,
            error_count: 5
        })
    );
    assert_success(&r);
}

#[test]
fn unknown_event_is_kept_not_refused() {
    let xml = msg("oUe", "event", &[("Event", "future_event"), ("Extra", "e")]);
    let m = parse(&xml).unwrap();
    assert_eq!(
        m.kind,
        Kind::Event(Event::Unknown {
            event: s("future_event")
        })
    );
    assert_eq!(m.field("Extra"), Some("e"));
    assert_success(&post(&xml));
}
