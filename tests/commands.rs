//! Conversations with the real wxmp binary about `[[command]]` tables: every match rule, every
//! action, placeholders, built-ins, admins, programs (injection, timeouts, failures, output
//! limits), slow commands across WeChat's retries, SIGHUP reloads and `wxmp check`.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A folder holding a config file, scripts and data.
struct Site {
    dir: PathBuf,
}

impl Site {
    fn new(tag: &str) -> Site {
        Site { dir: temp_dir(tag) }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Writes `text` to `rel`, creating folders.
    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, text).unwrap();
    }

    /// Writes an executable `#!/bin/sh` script.
    fn script(&self, rel: &str, body: &str) {
        self.write(rel, &format!("#!/bin/sh\n{body}\n"));
        std::fs::set_permissions(self.path(rel), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    /// Writes `wxmp.toml` (test token, loopback port, then `rest`).
    fn config(&self, rest: &str) {
        self.write("wxmp.toml", &config_text(rest));
    }

    /// Writes the config and starts wxmp on it.
    fn serve(&self, rest: &str) -> Wxmp {
        self.config(rest);
        Wxmp::start_in(&self.dir, &["serve", "--config", "wxmp.toml"], &[])
    }

    /// Writes the config and runs `wxmp check` on it.
    fn check(&self, rest: &str) -> std::process::Output {
        self.config(rest);
        run_check(&self.dir, "wxmp.toml", &[])
    }
}

fn config_text(rest: &str) -> String {
    format!("token = \"{TOKEN}\"\nlisten = \"127.0.0.1:0\"\n{rest}\n")
}

fn run_check(dir: &Path, file: &str, envs: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = wxmp_command();
    cmd.args(["check", "--config", file]).current_dir(dir);
    cmd.envs(envs.iter().copied());
    cmd.output().expect("run wxmp check")
}

/// The content of the text reply `resp` to `from` (failing on anything else).
fn content_of(resp: &Resp, from: &str) -> String {
    assert_eq!(resp.status, 200, "{resp:?}");
    let r = parse_reply(&resp.body);
    assert_eq!(r.get("MsgType"), Some("text"), "{}", resp.body);
    assert_eq!(r.get("ToUserName"), Some(from), "{}", resp.body);
    assert_eq!(r.get("FromUserName"), Some(ACCOUNT));
    r.get("Content").unwrap_or_default().to_string()
}

/// Sends text `said` from `from` and returns the text answer.
fn say(w: &Wxmp, from: &str, said: &str) -> String {
    content_of(&w.post_signed(&text(from, said)), from)
}

/// POSTs `body` like WeChat: `None` when no answer came within `timeout` (the connection is
/// then dropped, as WeChat does after 5 s).
fn post_within(w: &Wxmp, body: &str, timeout: Duration) -> Option<Resp> {
    post_query_within(w, &signed_query("/", TOKEN), body, timeout)
}

/// [`post_within`] with a given signed query (safe mode).
fn post_query_within(w: &Wxmp, q: &str, body: &str, timeout: Duration) -> Option<Resp> {
    let mut s = TcpStream::connect(w.addr).expect("connect");
    s.set_read_timeout(Some(timeout)).unwrap();
    let head = format!(
        "POST {q} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        w.addr,
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) if !raw.is_empty() => Some(parse_response(&raw)),
        _ => None,
    }
}

fn event(from: &str, name: &str, key: &str) -> String {
    msg(from, "event", &[("Event", name), ("EventKey", key)])
}

// ---------------------------------------------------------------- match rules

#[test]
fn name_and_aliases_match_the_trimmed_text_ignoring_ascii_case() {
    let site = Site::new("cmd-name");
    let w = site.serve(
        r#"
[[command]]
name = "天气"
aliases = ["Weather", "tq"]
reply = "晴 25°C"
"#,
    );
    for said in ["天气", "  天气 \n", "weather", "WEATHER", "Tq"] {
        assert_eq!(say(&w, "oA", said), "晴 25°C", "{said:?}");
    }
    for said in ["天气怎么样", "weathers", "今天天气"] {
        assert_eq!(say(&w, "oA", said), DEFAULT_REPLY, "{said:?}");
    }
}

#[test]
fn prefix_passes_the_rest_as_args_and_words() {
    let site = Site::new("cmd-prefix");
    let w = site.serve(
        r#"
[[command]]
prefix = "查"
reply = "[{args}] [{1}] [{2}] [{3}] [{0}]"
"#,
    );
    assert_eq!(
        say(&w, "oA", "查 苹果  香蕉"),
        "[苹果  香蕉] [苹果] [香蕉] [] [查 苹果  香蕉]"
    );
    assert_eq!(say(&w, "oA", "查苹果"), "[苹果] [苹果] [] [] [查苹果]");
    assert_eq!(say(&w, "oA", "我查苹果"), DEFAULT_REPLY);
}

#[test]
fn regex_groups_fill_numbered_placeholders() {
    let site = Site::new("cmd-regex");
    let w = site.serve(
        r#"
[[command]]
regex = '^价格\s+(\S+)(?:\s+(\d+))?$'
reply = "价格查询：{1} x{2} ({0}) args={args}"
"#,
    );
    assert_eq!(
        say(&w, "oA", "价格 苹果 3"),
        "价格查询：苹果 x3 (价格 苹果 3) args=苹果"
    );
    assert_eq!(say(&w, "oA", "价格 梨"), "价格查询：梨 x (价格 梨) args=梨");
    assert_eq!(say(&w, "oA", "价格"), DEFAULT_REPLY);
}

#[test]
fn first_matching_command_in_file_order_wins() {
    let site = Site::new("cmd-order");
    let w = site.serve(
        r#"
[[command]]
prefix = "查"
reply = "prefix {args}"
[[command]]
name = "查询"
reply = "never"
[[command]]
regex = '.*'
reply = "catch-all {0}"
"#,
    );
    assert_eq!(say(&w, "oA", "查询"), "prefix 询");
    assert_eq!(say(&w, "oA", "别的"), "catch-all 别的");
}

#[test]
fn an_answer_with_nothing_to_show_is_success_and_logged_as_success() {
    // A text with nothing visible (a `{args}` the message left empty, a program printing only
    // control characters) is answered `success`, as WeChat shows an error for an empty text:
    // the log line must say `success` too, not `text`.
    let site = Site::new("cmd-nothing");
    site.script("ctl.sh", "printf '\\001\\002'");
    let w = site.serve(
        "[[command]]\nprefix = \"回显\"\nreply = \"{args}\"\n\
         [[command]]\nname = \"控制\"\nexec = [\"./ctl.sh\"]",
    );
    for said in ["回显", "控制"] {
        let r = w.post_signed(&text("oNothing", said));
        assert_eq!((r.status, r.body.as_str()), (200, "success"), "{said}");
        assert!(
            w.wait_for_log(&format!("oNothing text \"{said}\" -> success")),
            "{}",
            w.stderr()
        );
    }
    assert!(!w.stderr().contains("-> text"), "{}", w.stderr());
}

#[test]
fn openid_and_content_placeholders_and_braces_in_messages_stay_literal() {
    let site = Site::new("cmd-vars");
    let w = site.serve(
        r#"
[[command]]
prefix = "echo"
reply = "{openid}|{content}|{args}|{unknown}"
"#,
    );
    assert_eq!(say(&w, "oBob", "echo hi"), "oBob|echo hi|hi|{unknown}");
    // A message holding placeholder syntax is text, never expanded again.
    assert_eq!(
        say(&w, "oBob", "echo {openid} {content}"),
        "oBob|echo {openid} {content}|{openid} {content}|{unknown}"
    );
}

#[test]
fn voice_recognition_is_matched_like_text() {
    let site = Site::new("cmd-voice");
    let w = site.serve("[[command]]\nname = \"天气\"\nreply = \"晴\"\n[[command]]\nprefix = \"查\"\nreply = \"{args}\"");
    let voice = |rec: &str| {
        msg(
            "oV",
            "voice",
            &[
                ("MediaId", "m1"),
                ("Format", "amr"),
                ("Recognition", rec),
                ("MsgId", &fresh_id()),
            ],
        )
    };
    assert_eq!(content_of(&w.post_signed(&voice("天气。")), "oV"), "晴");
    assert_eq!(content_of(&w.post_signed(&voice("查苹果！")), "oV"), "苹果");
    let no_rec = msg("oV", "voice", &[("MediaId", "m"), ("MsgId", &fresh_id())]);
    assert_eq!(content_of(&w.post_signed(&no_rec), "oV"), DEFAULT_REPLY);
}

// ---------------------------------------------------------------- actions

#[test]
fn file_is_read_at_each_request_relative_to_the_config_folder() {
    let site = Site::new("cmd-file");
    site.write(
        "conf/wxmp.toml",
        &config_text(
            "[[command]]\nname = \"新闻\"\nfile = \"data/news.txt\"\n[[command]]\nname = \"管道\"\nfile = \"data/pipe\"\n[[command]]\nname = \"环\"\nfile = \"data/loop\"",
        ),
    );
    std::fs::create_dir_all(site.path("conf/data")).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(site.path("conf/data/pipe"))
        .status()
        .unwrap();
    assert!(fifo.success());
    let w = Wxmp::start_in(&site.dir, &["serve", "--config", "conf/wxmp.toml"], &[]);
    assert_eq!(say(&w, "oA", "新闻"), "暂无数据");
    assert!(w.wait_for_log("news.txt does not exist yet"));
    site.write("conf/data/news.txt", "\n头条：第一条\n第二条\n\n");
    assert_eq!(say(&w, "oA", "新闻"), "头条：第一条\n第二条");
    // A crawler rewriting the file is seen by the very next message: nothing is cached.
    site.write("conf/data/news.txt", "更新后的新闻");
    assert_eq!(say(&w, "oA", "新闻"), "更新后的新闻");
    site.write("conf/data/news.txt", "   ");
    assert_eq!(say(&w, "oA", "新闻"), "暂无数据");
    // A FIFO would block whoever opens it: it is refused, not read.
    let t = Instant::now();
    assert_eq!(say(&w, "oA", "管道"), "暂无数据");
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(w.wait_for_log("not a regular file"));
    // A file that cannot be read (a symlink loop here) is not called missing in the log.
    std::os::unix::fs::symlink("loop", site.path("conf/data/loop")).unwrap();
    assert_eq!(say(&w, "oA", "环"), "暂无数据");
    assert!(
        w.wait_for_log("data/loop: Too many levels of symbolic links"),
        "{}",
        w.stderr()
    );
    assert!(
        !w.stderr().contains("loop does not exist yet"),
        "{}",
        w.stderr()
    );
}

#[test]
fn media_replies_carry_every_field() {
    let site = Site::new("cmd-media");
    let w = site.serve(
        r#"
[[command]]
name = "封面"
image = "IMG_MEDIA_1"
[[command]]
name = "语音"
voice = "VOICE_MEDIA_2"
[[command]]
name = "视频"
video = { media_id = "VIDEO_3", title = "标题 <&>", description = "说明]]>x" }
[[command]]
name = "音乐"
music = { title = "歌", description = "描述", music_url = "http://m.example/a.mp3", hq_music_url = "https://m.example/hq.mp3", thumb_media_id = "THUMB_4" }
[[command]]
name = "人工"
transfer_customer_service = true
[[command]]
name = "找小王"
transfer_customer_service = "xiaowang@gh_test"
"#,
    );
    let get = |said: &str, kind: &str| {
        let r = w.post_signed(&text("oM", said));
        assert_eq!(r.status, 200);
        let p = parse_reply(&r.body);
        assert_eq!(p.get("MsgType"), Some(kind), "{}", r.body);
        assert_eq!(p.get("ToUserName"), Some("oM"));
        assert_eq!(p.get("FromUserName"), Some(ACCOUNT));
        p
    };
    assert_eq!(
        get("封面", "image").get("Image/MediaId"),
        Some("IMG_MEDIA_1")
    );
    assert_eq!(
        get("语音", "voice").get("Voice/MediaId"),
        Some("VOICE_MEDIA_2")
    );
    let v = get("视频", "video");
    assert_eq!(v.get("Video/MediaId"), Some("VIDEO_3"));
    assert_eq!(v.get("Video/Title"), Some("标题 <&>"));
    assert_eq!(v.get("Video/Description"), Some("说明]]>x"));
    let m = get("音乐", "music");
    assert_eq!(m.get("Music/Title"), Some("歌"));
    assert_eq!(m.get("Music/Description"), Some("描述"));
    assert_eq!(m.get("Music/MusicUrl"), Some("http://m.example/a.mp3"));
    assert_eq!(m.get("Music/HQMusicUrl"), Some("https://m.example/hq.mp3"));
    assert_eq!(m.get("Music/ThumbMediaId"), Some("THUMB_4"));
    // Customer service: to whoever is free, or to one account (WeChat's TransInfo).
    let any = get("人工", "transfer_customer_service");
    assert!(
        !any.fields.iter().any(|(k, _)| k.starts_with("TransInfo")),
        "{:?}",
        any.fields
    );
    assert_eq!(
        get("找小王", "transfer_customer_service").get("TransInfo/KfAccount"),
        Some("xiaowang@gh_test")
    );
}

#[test]
fn news_is_one_article_for_a_message_and_all_for_an_event() {
    let site = Site::new("cmd-news");
    let news = r#"news = [
  { title = "T1", description = "D1", url = "https://a.example/1", picurl = "https://a.example/1.jpg" },
  { title = "T2", description = "D2", url = "https://a.example/2", picurl = "https://a.example/2.jpg" },
  { title = "T3", description = "D3", url = "https://a.example/3", picurl = "https://a.example/3.jpg" },
]"#;
    let w = site.serve(&format!(
        "[[command]]\nname = \"文章\"\n{news}\n[[command]]\nevent = \"CLICK\"\nkey = \"NEWS\"\n{news}"
    ));
    let check = |body: &str, n: usize| {
        let r = w.post_signed(body);
        let p = parse_reply(&r.body);
        assert_eq!(p.get("MsgType"), Some("news"), "{}", r.body);
        assert_eq!(p.get("ArticleCount"), Some(n.to_string().as_str()));
        let items: Vec<&(String, String)> = p
            .fields
            .iter()
            .filter(|(k, _)| k.starts_with("Articles/item/"))
            .collect();
        assert_eq!(items.len(), 4 * n, "{}", r.body);
        for i in 1..=n {
            let field = |name: &str| {
                p.fields
                    .iter()
                    .filter(|(k, _)| k == &format!("Articles/item/{name}"))
                    .nth(i - 1)
                    .map(|(_, v)| v.clone())
            };
            assert_eq!(field("Title"), Some(format!("T{i}")));
            assert_eq!(field("Description"), Some(format!("D{i}")));
            assert_eq!(field("Url"), Some(format!("https://a.example/{i}")));
            assert_eq!(field("PicUrl"), Some(format!("https://a.example/{i}.jpg")));
        }
    };
    check(&text("oN", "文章"), 1);
    check(&event("oN", "CLICK", "NEWS"), 3);
}

#[test]
fn event_commands_answer_clicks_and_scene_keys_and_replace_the_defaults() {
    let site = Site::new("cmd-event");
    let w = site.serve(
        r#"
[[command]]
event = "CLICK"
key = "TODAY"
reply = "今天：{content}"
[[command]]
event = "subscribe"
key = "42"
reply = "扫码关注，场景 {args}"
[[command]]
event = "SCAN"
key = "42"
reply = "已关注，扫了场景 {args}"
"#,
    );
    let ask = |from: &str, body: String| content_of(&w.post_signed(&body), from);
    assert_eq!(ask("o1", event("o1", "CLICK", "TODAY")), "今天：TODAY");
    assert_eq!(
        ask("o2", event("o2", "subscribe", "qrscene_42")),
        "扫码关注，场景 42"
    );
    assert_eq!(ask("o3", event("o3", "SCAN", "42")), "已关注，扫了场景 42");
    // Unmatched events keep the defaults.
    assert_eq!(ask("o4", event("o4", "subscribe", "")), WELCOME);
    assert_eq!(ask("o5", event("o5", "subscribe", "qrscene_7")), WELCOME);
    let r = w.post_signed(&event("o6", "CLICK", "OTHER"));
    assert_eq!((r.status, r.body.as_str()), (200, "success"));
    // A text equal to an event key is not an event.
    assert_eq!(say(&w, "o7", "TODAY"), DEFAULT_REPLY);
}

// ---------------------------------------------------------------- built-ins and admins

#[test]
fn help_lists_commands_and_whoami_answers_the_openid() {
    let site = Site::new("cmd-help");
    let w = site.serve(
        r#"
admins = ["oBoss"]
[[command]]
name = "天气"
aliases = ["weather"]
reply = "晴"
help = "今天的天气"
[[command]]
prefix = "查"
reply = "{args}"
help = "查 商品名：查价格"
[[command]]
name = "重启爬虫"
admin = true
reply = "ok"
help = "重启爬虫进程"
"#,
    );
    for word in ["帮助", "help", "HELP", "?"] {
        let h = say(&w, "oGuest", word);
        assert!(h.contains("天气 / weather：今天的天气"), "{word}: {h}");
        assert!(h.contains("查…：查 商品名：查价格"), "{h}");
        assert!(!h.contains("重启爬虫"), "admin commands are hidden: {h}");
    }
    let h = say(&w, "oBoss", "帮助");
    assert!(h.contains("重启爬虫：重启爬虫进程"), "{h}");
    assert_eq!(say(&w, "oGuest", "whoami"), "oGuest");
    assert_eq!(say(&w, "oBoss", "我的ID"), "oBoss");
}

#[test]
fn a_command_with_a_built_in_name_replaces_it() {
    let site = Site::new("cmd-override");
    let w = site.serve("[[command]]\nname = \"帮助\"\nreply = \"自定义帮助\"");
    assert_eq!(say(&w, "oA", "帮助"), "自定义帮助");
    // The other built-in words still work.
    assert!(say(&w, "oA", "help").starts_with("可用指令"));
}

#[test]
fn help_names_only_the_built_in_words_that_still_are_built_in() {
    let site = Site::new("cmd-help-replaced");
    let w = site.serve(
        "[[command]]\nname = \"帮助\"\nreply = \"自定义帮助\"\n\
         [[command]]\nname = \"whoami\"\nreply = \"你是你\"",
    );
    assert_eq!(say(&w, "oA", "whoami"), "你是你");
    assert_eq!(say(&w, "oA", "我的id"), "oA");
    // 帮助 and whoami are commands now: the help must not say they list commands or tell the
    // openid.
    assert_eq!(
        say(&w, "oA", "help"),
        "可用指令：\n帮助\nwhoami\n我的id：你的 openid\nhelp：本列表"
    );
}

#[test]
fn a_built_in_word_that_names_an_admin_command_stays_built_in_for_everyone_else() {
    let site = Site::new("cmd-help-admin");
    let w = site.serve(
        "admins = [\"oBoss\"]\n\
         [[command]]\nname = \"help\"\nadmin = true\nreply = \"管理员帮助\"\n\
         [[command]]\nname = \"天气\"\nreply = \"晴\"",
    );
    // A guest asking for help gets the help, as if no command had the name (the README: anyone
    // else gets what no command would give), and the attempt is logged.
    let tail = "\nwhoami / 我的id：你的 openid";
    assert_eq!(
        say(&w, "oGuest", "help"),
        format!("可用指令：\n天气{tail}\n帮助 / help：本列表")
    );
    assert!(w.wait_for_log("oGuest is not in admins"));
    assert_eq!(say(&w, "oBoss", "help"), "管理员帮助");
    assert_eq!(
        say(&w, "oBoss", "帮助"),
        format!("可用指令：\nhelp（管理）\n天气{tail}\n帮助：本列表")
    );
}

#[test]
fn non_admins_get_the_default_reply_and_the_attempt_is_logged() {
    let site = Site::new("cmd-admin");
    site.script("restart.sh", "echo ran >> runs.txt; echo 已重启");
    let w = site.serve(
        r#"
admins = ["oBoss"]
[[command]]
name = "重启爬虫"
admin = true
exec = ["./restart.sh"]
[[command]]
event = "CLICK"
key = "ADMIN"
admin = true
reply = "admin click"
"#,
    );
    assert_eq!(say(&w, "oMallory", "重启爬虫"), DEFAULT_REPLY);
    assert!(w.wait_for_log("oMallory is not in admins"));
    let r = w.post_signed(&event("oMallory", "CLICK", "ADMIN"));
    assert_eq!(r.body, "success");
    assert_eq!(
        site.read("runs.txt"),
        "",
        "the program never ran for a non-admin"
    );
    assert_eq!(say(&w, "oBoss", "重启爬虫"), "已重启");
    assert_eq!(site.read("runs.txt"), "ran\n");
    let r = w.post_signed(&event("oBoss", "CLICK", "ADMIN"));
    assert_eq!(content_of(&r, "oBoss"), "admin click");
}

// ---------------------------------------------------------------- exec

#[test]
fn exec_gets_arguments_environment_folder_and_empty_stdin() {
    let site = Site::new("cmd-exec");
    site.script(
        "bin/q.sh",
        r#"printf '%s\n' "$#" "$1" "$2" > args.txt
printf '%s|%s|%s|%s' "$WXMP_OPENID" "$WXMP_CONTENT" "$WXMP_ARGS" "${WXMP_TOKEN:-no token}" > env.txt
pwd > cwd.txt
cat > stdin.txt
echo "结果：$1"
echo "noise on stderr" >&2"#,
    );
    site.config(
        r#"
[[command]]
prefix = "查"
exec = ["./bin/q.sh", "{args}", "{openid}"]
"#,
    );
    let w = Wxmp::start_in(
        &site.dir,
        &["serve", "--config", "wxmp.toml"],
        &[("WXMP_TOKEN", TOKEN)],
    );
    assert_eq!(say(&w, "oE", "查 苹果 香蕉"), "结果：苹果 香蕉");
    assert_eq!(site.read("args.txt"), "2\n苹果 香蕉\noE\n");
    assert_eq!(
        site.read("env.txt"),
        "oE|查 苹果 香蕉|苹果 香蕉|no token",
        "WXMP_* secrets are not passed on"
    );
    let cwd = PathBuf::from(site.read("cwd.txt").trim());
    assert_eq!(
        cwd.canonicalize().unwrap(),
        site.dir.canonicalize().unwrap()
    );
    assert_eq!(site.read("stdin.txt"), "");
    assert!(w.wait_for_log("stderr: noise on stderr"));
}

#[test]
fn a_message_cannot_hand_a_program_an_option() {
    let site = Site::new("cmd-option");
    site.script("q.sh", r#"printf '%s|' "$@""#);
    let w = site.serve(
        "[[command]]\nprefix = \"查\"\nexec = [\"./q.sh\", \"-n\", \"{args}\"]\n\
         [[command]]\nprefix = \"找\"\nexec = [\"./q.sh\", \"--\", \"{1}\", \"{2}\"]\n\
         [[command]]\nprefix = \"拼\"\nexec = [\"./q.sh\", \"x{args}\"]",
    );
    assert_eq!(say(&w, "oO", "查 苹果"), "-n|苹果|");
    for attack in ["查 --output=/tmp/x", "查 -rf", "查 -"] {
        assert_eq!(say(&w, "oO", attack), "参数不能以 - 开头", "{attack}");
    }
    assert!(w.wait_for_log("start with '-'"));
    // After a "--" the program reads words, and text inside an argument is no option.
    assert_eq!(say(&w, "oO", "找 -a -b"), "--|-a|-b|");
    assert_eq!(say(&w, "oO", "拼 --v"), "x--v|");
}

#[test]
fn shell_syntax_in_a_message_is_plain_text() {
    let site = Site::new("cmd-inject");
    site.script("q.sh", r#"printf '%s' "$1" > arg.txt; echo ok"#);
    let w = site.serve("[[command]]\nprefix = \"查\"\nexec = [\"./q.sh\", \"x {args} y\"]");
    let attacks = [
        "$(touch pwned1)",
        "a; touch pwned2",
        "`touch pwned3`",
        "a && touch pwned4 | touch pwned5 > pwned6",
        "'\"$HOME\"' $(id) ${PATH}",
    ];
    for attack in attacks {
        assert_eq!(say(&w, "oX", &format!("查 {attack}")), "ok");
        assert_eq!(site.read("arg.txt"), format!("x {attack} y"), "verbatim");
    }
    for i in 1..=6 {
        assert!(
            !site.path(&format!("pwned{i}")).exists(),
            "pwned{i} created"
        );
    }
}

#[test]
fn a_shell_may_take_the_message_as_an_argument_but_not_as_its_script() {
    let site = Site::new("cmd-shell");
    // "$1" is a word the shell does not read as code; the script itself is fixed. An admin
    // may hand a shell what they write (they could as well log in).
    let w = site.serve(
        "admins = [\"oAdmin\"]\n\
         [[command]]\nprefix = \"查\"\nexec = [\"sh\", \"-c\", \"printf '%s|%s' \\\"$1\\\" \\\"$0\\\"\", \"{openid}\", \"{args}\"]\n\
         [[command]]\nprefix = \"运行\"\nexec = [\"sh\", \"-c\", \"{args}\"]\nadmin = true",
    );
    assert_eq!(say(&w, "oX", "查 $(touch pwned)"), "$(touch pwned)|oX");
    assert!(!site.path("pwned").exists());
    assert_eq!(say(&w, "oAdmin", "运行 echo $((6*7))"), "42");
}

#[test]
fn non_zero_exit_is_a_clear_text_and_empty_output_is_not_empty() {
    let site = Site::new("cmd-fail");
    site.script("fail.sh", "echo partial; echo broken pipe >&2; exit 3");
    site.script("quiet.sh", "exit 0");
    // Stderr lines: the first 50 are logged, then a count of the rest.
    let noisy = |n: u32, tag: &str| {
        format!("i=1; while [ $i -le {n} ]; do echo \"{tag}$i.\" >&2; i=$((i+1)); done; echo ok")
    };
    site.script("fifty.sh", &noisy(50, "f"));
    site.script("fiftyone.sh", &noisy(51, "g"));
    let w = site.serve(
        "[[command]]\nname = \"坏\"\nexec = [\"./fail.sh\"]\n[[command]]\nname = \"静\"\nexec = [\"./quiet.sh\"]\n\
         [[command]]\nname = \"五十\"\nexec = [\"./fifty.sh\"]\n[[command]]\nname = \"五十一\"\nexec = [\"./fiftyone.sh\"]",
    );
    assert_eq!(say(&w, "oF", "坏"), "指令执行失败（退出码 3）");
    assert!(w.wait_for_log("exit code 3"));
    assert!(w.wait_for_log("stderr: broken pipe"));
    assert_eq!(say(&w, "oF", "静"), "（指令没有输出）");
    let logged_at = |level: &str, needle: &str| {
        w.stderr()
            .lines()
            .any(|l| l.contains(level) && l.contains(needle))
    };
    assert!(logged_at("[WARN ", "stderr: broken pipe"), "{}", w.stderr());
    assert_eq!(say(&w, "oF", "五十"), "ok");
    assert!(w.wait_for_log("stderr: f50."), "{}", w.stderr());
    assert!(
        logged_at("[INFO ", "stderr: f1."),
        "a program that succeeded: {}",
        w.stderr()
    );
    assert!(!w.stderr().contains("more lines"), "{}", w.stderr());
    assert_eq!(say(&w, "oF", "五十一"), "ok");
    assert!(w.wait_for_log("stderr: … 1 more lines"), "{}", w.stderr());
    assert!(w.stderr().contains("stderr: g50.") && !w.stderr().contains("g51."));
}

/// Whether process `pid` is gone (or a zombie waiting for a reaper).
fn dead(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
    }
}

/// Waits (up to 3 s) for a program to write its pid into `file` of `site`: the pid, empty if
/// none came.
fn pid_in(site: &Site, file: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let pid = site.read(file).trim().to_string();
        if !pid.is_empty() || Instant::now() >= deadline {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `limit` for every process of `pids` to be gone: whether they are.
fn all_dead(pids: &[&str], limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !pids.iter().all(|pid| dead(pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    pids.iter().all(|pid| dead(pid))
}

#[test]
fn timeout_kills_the_whole_process_group_and_says_so() {
    let site = Site::new("cmd-timeout");
    site.script(
        "slow.sh",
        "sleep 30 &\necho $! > grandchild.pid\necho $$ > child.pid\nsleep 30\necho never",
    );
    let w = site.serve("[[command]]\nname = \"慢\"\nexec = [\"./slow.sh\"]\ntimeout = 1");
    let t = Instant::now();
    assert_eq!(say(&w, "oT", "慢"), "指令超时（超过 1 秒），已停止");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    let (child, grandchild) = (pid_in(&site, "child.pid"), pid_in(&site, "grandchild.pid"));
    let (child, grandchild) = (child.as_str(), grandchild.as_str());
    assert!(!child.is_empty() && !grandchild.is_empty());
    all_dead(&[child, grandchild], Duration::from_secs(3));
    assert!(dead(child), "the program was killed");
    assert!(dead(grandchild), "the program's child was killed too");
    assert!(w.wait_for_log("process group was killed"));
}

#[test]
fn a_program_does_not_outlive_a_wxmp_killed_with_sigkill() {
    // Nothing would enforce its timeout any more (a panel's `kill -9`, the OOM killer).
    let site = Site::new("cmd-pdeathsig");
    site.script("hang.sh", "echo $$ > child.pid\nsleep 30\necho never");
    let mut w = site.serve("[[command]]\nname = \"挂\"\nexec = [\"./hang.sh\"]");
    assert!(post_within(&w, &text("oK", "挂"), Duration::from_millis(300)).is_none());
    let child = pid_in(&site, "child.pid");
    assert!(!child.is_empty() && !dead(&child), "the program runs");
    w.signal(libc::SIGKILL);
    assert_eq!(w.wait_exit(Duration::from_secs(3)), Some(-1));
    assert!(
        all_dead(&[&child], Duration::from_secs(3)),
        "the program went with wxmp"
    );
}

#[test]
fn default_timeout_answers_before_wechats_deadline() {
    let site = Site::new("cmd-deftimeout");
    site.script("hang.sh", "sleep 30");
    let w = site.serve("[[command]]\nname = \"挂\"\nexec = [\"./hang.sh\"]");
    let t = Instant::now();
    let r = post_within(&w, &text("oT", "挂"), Duration::from_secs(5)).expect("answered in 5 s");
    assert_eq!(content_of(&r, "oT"), "指令超时（超过 4 秒），已停止");
    assert!(
        t.elapsed() < Duration::from_millis(4700),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn huge_output_is_cut_to_2048_bytes_with_a_mark() {
    let site = Site::new("cmd-big");
    site.script(
        "big.sh",
        "i=0\nwhile [ $i -lt 3000 ]; do printf '数'; i=$((i+1)); done",
    );
    let w = site.serve("[[command]]\nname = \"大\"\nexec = [\"./big.sh\"]");
    let c = say(&w, "oB", "大");
    assert!(c.len() <= 2048, "{} bytes", c.len());
    let mark = wxmp::reply::CUT_MARK;
    assert!(c.ends_with(mark), "{c}");
    let kept = &c[..c.len() - mark.len()];
    assert!(kept.len() > 1900 && kept.chars().all(|ch| ch == '数'));
}

// ---------------------------------------------------------------- slow commands and retries

#[test]
fn slow_command_runs_once_and_a_retry_gets_its_result() {
    let site = Site::new("cmd-retry");
    site.script("slow.sh", "echo run >> runs.txt\nsleep 7\necho \"done $1\"");
    let w = site
        .serve("[[command]]\nprefix = \"慢\"\nexec = [\"./slow.sh\", \"{args}\"]\ntimeout = 10");
    let body = text("oR", "慢 x");
    let t = Instant::now();
    // Try 1: WeChat waits 5 s, then drops the connection. No `success` meanwhile.
    assert!(post_within(&w, &body, Duration::from_secs(5)).is_none());
    // Try 2 finds the command still running and gets its output.
    let r = post_within(&w, &body, Duration::from_secs(5)).expect("try 2 answered");
    assert_eq!(content_of(&r, "oR"), "done x");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(7) && took < Duration::from_secs(9),
        "{took:?}"
    );
    // Try 3 (had there been one) gets the same bytes at once.
    let again = post_within(&w, &body, Duration::from_secs(1)).expect("try 3 answered");
    assert_eq!(again.body, r.body);
    assert_eq!(site.read("runs.txt"), "run\n", "the command ran once");
}

#[test]
fn last_try_says_the_result_will_follow_and_the_next_message_brings_it() {
    let site = Site::new("cmd-late");
    site.script(
        "slow.sh",
        "echo run >> runs.txt\nsleep 6\necho LATE RESULT\ntouch finished",
    );
    let w = site.serve("[[command]]\nname = \"慢\"\nexec = [\"./slow.sh\"]\ntimeout = 12");
    let body = text("oL", "慢");
    // Tries 1 and 2 given up quickly (as if WeChat's retries came early), then the last try.
    assert!(post_within(&w, &body, Duration::from_millis(300)).is_none());
    assert!(post_within(&w, &body, Duration::from_millis(300)).is_none());
    let t = Instant::now();
    let r = post_within(&w, &body, Duration::from_secs(6)).expect("the last try is answered");
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(4800),
        "answered within WeChat's 5 s: {took:?}"
    );
    assert!(
        took > Duration::from_millis(4000),
        "waited for the result first: {took:?}"
    );
    assert_eq!(content_of(&r, "oL"), "结果还在生成，稍后发任意消息查看");
    next_message_brings_the_late_result(&site, &w, "oL");
    assert_eq!(say(&w, "oL", "你好"), DEFAULT_REPLY, "delivered once");
    assert_eq!(site.read("runs.txt"), "run\n", "the command ran once");
}

#[test]
fn wechats_last_try_is_known_by_its_age_after_a_restart() {
    let site = Site::new("cmd-late-age");
    site.script("slow.sh", "sleep 6\necho LATE RESULT\ntouch finished");
    let w = site.serve("[[command]]\nname = \"慢\"\nexec = [\"./slow.sh\"]\ntimeout = 12");
    // Created 10 s before this try was signed: WeChat's third try, whose first two went to a
    // wxmp that has since restarted. This process sees it as its first.
    let body = text("oA", "慢");
    let (open, close) = (
        body.find("<CreateTime>").unwrap(),
        body.find("</CreateTime>").unwrap(),
    );
    let created = format!("<CreateTime>{}", now() - 10);
    let body = format!("{}{created}{}", &body[..open], &body[close..]);
    let t = Instant::now();
    let r = post_within(&w, &body, Duration::from_secs(6)).expect("the last try is answered");
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(4800),
        "within WeChat's 5 s: {took:?}"
    );
    assert_eq!(content_of(&r, "oA"), "结果还在生成，稍后发任意消息查看");
    // This process's first try of the message: its log line calls it no retry.
    assert!(w.wait_for_log("oA text \"慢\" -> text"), "{}", w.stderr());
    let stderr = w.stderr();
    let line = stderr
        .lines()
        .find(|l| l.contains("oA text \"慢\""))
        .unwrap();
    let ms = line
        .split("-> text ")
        .nth(1)
        .and_then(|t| t.strip_suffix("ms"));
    assert!(ms.is_some_and(|ms| ms.parse::<u64>().is_ok()), "{line}");
    next_message_brings_the_late_result(&site, &w, "oA");
}

/// Once the slow script has printed `LATE RESULT` and touched `finished`, `from`'s next message
/// is answered with that result first.
fn next_message_brings_the_late_result(site: &Site, w: &Wxmp, from: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !site.path("finished").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        say(w, from, "你好"),
        format!("上次的结果：LATE RESULT\n\n{DEFAULT_REPLY}")
    );
}

#[test]
fn ten_slow_commands_do_not_delay_anyone_else() {
    let site = Site::new("cmd-busy");
    site.script("slow.sh", "sleep 2\necho slow $1");
    site.script("fast.sh", "echo fast");
    let w = Arc::new(site.serve(
        "[[command]]\nname = \"慢\"\nexec = [\"./slow.sh\", \"{openid}\"]\n[[command]]\nname = \"快\"\nexec = [\"./fast.sh\"]\n[[command]]\nname = \"ping\"\nreply = \"pong\"",
    ));
    let slow: Vec<_> = (0..10)
        .map(|i| {
            let w = Arc::clone(&w);
            std::thread::spawn(move || {
                let from = format!("oSlow{i}");
                let c = say(&w, &from, "慢");
                assert_eq!(c, format!("slow {from}"));
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    for _ in 0..3 {
        let t = Instant::now();
        assert_eq!(say(&w, "oFast", "ping"), "pong");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        let t = Instant::now();
        assert_eq!(say(&w, "oFast", "快"), "fast");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
    for h in slow {
        h.join().expect("slow client");
    }
}

#[test]
fn the_limit_of_32_programs_counts_those_running_not_those_that_ran() {
    // One user asks 40 times in a row: each program has ended before the next message, so
    // none of them is refused as one too many.
    let site = Site::new("cmd-count");
    site.script("count.sh", "echo \"第 $1 次\"");
    let w = site.serve("[[command]]\nprefix = \"数\"\nexec = [\"./count.sh\", \"{args}\"]");
    for i in 1..=40 {
        assert_eq!(say(&w, "oCount", &format!("数 {i}")), format!("第 {i} 次"));
    }
    assert!(!w.stderr().contains("already running"), "{}", w.stderr());
}

/// The CPU time process `pid` has used so far (user and system), from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let (_, rest) = stat.rsplit_once(')').expect("(comm)");
    // After the command's name: state is field 3, utime field 14 and stime field 15.
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().expect("a tick count"))
        .collect();
    // SAFETY: sysconf takes an int and has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis((fields[0] + fields[1]) * 1000 / ticks)
}

#[test]
fn waiting_for_a_quiet_program_costs_wxmp_no_cpu() {
    // The backup takes 3 s and says nothing meanwhile; it closed its stderr at the start (as a
    // program that logs elsewhere does). wxmp runs with stdout on /dev/null, as under nohup:
    // waiting is sleeping in poll, not asking again and again.
    let site = Site::new("cmd-quiet");
    site.script("backup.sh", "exec 2>/dev/null\nsleep 3\necho 备份完成");
    let w = site.serve("[[command]]\nname = \"备份\"\nexec = [\"./backup.sh\"]");
    let before = cpu_time(w.pid());
    assert_eq!(say(&w, "oAdmin", "备份"), "备份完成");
    let used = cpu_time(w.pid()) - before;
    // Some milliseconds: a look at the program every 10 ms. A loop that never sleeps would
    // take most of the 3 s even on a machine shared with other work.
    assert!(
        used < Duration::from_millis(500),
        "{used:?} of CPU while the program slept 3 s"
    );
}

#[test]
fn sigterm_kills_running_programs_instead_of_leaving_them() {
    let site = Site::new("cmd-term");
    site.script(
        "hang.sh",
        "sleep 30 &\necho $! > grandchild.pid\necho $$ > child.pid\nsleep 30",
    );
    let w = site.serve("[[command]]\nname = \"挂\"\nexec = [\"./hang.sh\"]\ntimeout = 14");
    assert!(post_within(&w, &text("oK", "挂"), Duration::from_millis(300)).is_none());
    let (grandchild, child) = (pid_in(&site, "grandchild.pid"), pid_in(&site, "child.pid"));
    assert!(!dead(&child), "running before the stop");
    assert_eq!(w.terminate().code(), Some(0));
    assert!(all_dead(&[&child, &grandchild], Duration::from_secs(2)));
}

#[test]
fn sigterm_also_kills_what_a_finished_program_left_holding_its_output() {
    // The program itself is done at once, but what it started in the background still holds
    // its stdout: wxmp reads on (and would kill it at the timeout). A stop meanwhile kills it
    // too, since nobody would enforce that timeout once wxmp is gone.
    let site = Site::new("cmd-term-left");
    site.script("start.sh", "sleep 30 &\necho $! > left.pid\necho 已开始");
    let w = site.serve("[[command]]\nname = \"开始\"\nexec = [\"./start.sh\"]\ntimeout = 14");
    assert!(post_within(&w, &text("oK", "开始"), Duration::from_millis(300)).is_none());
    let left = pid_in(&site, "left.pid");
    let left = left.as_str();
    assert!(!left.is_empty() && !dead(left), "running before the stop");
    assert_eq!(w.terminate().code(), Some(0));
    let survived = !all_dead(&[left], Duration::from_secs(2));
    if survived {
        // SAFETY: kill(2) with plain integers; the process is the test's own leftover.
        unsafe { libc::kill(left.parse().unwrap(), libc::SIGKILL) };
    }
    assert!(
        !survived,
        "the process left holding the output outlived wxmp"
    );
}

#[test]
fn safe_mode_command_answers_and_the_late_notice_are_encrypted() {
    let site = Site::new("cmd-safe");
    site.script("q.sh", "echo \"secret $1\"");
    site.script("slow.sh", "sleep 6\necho late");
    let w = site.serve(&format!(
        "{}[[command]]\nprefix = \"查\"\nexec = [\"./q.sh\", \"{{args}}\"]\n[[command]]\nname = \"慢\"\nexec = [\"./slow.sh\"]\ntimeout = 8",
        safe_mode_config()
    ));
    let crypt = sample_crypt();
    let open = |r: &Resp| Resp {
        status: r.status,
        headers: vec![],
        body: open_reply(&crypt, &r.body),
    };
    let (q, body) = safe_request(&crypt, &text("oS", "查 x"), false);
    let r = w.request("POST", &q, &[], body.as_bytes());
    assert!(!r.body.contains("secret"), "{}", r.body);
    assert_eq!(content_of(&open(&r), "oS"), "secret x");
    let xml = text("oS", "慢");
    for _ in 0..2 {
        let (q, b) = safe_request(&crypt, &xml, false);
        assert!(post_query_within(&w, &q, &b, Duration::from_millis(300)).is_none());
    }
    let (q, b) = safe_request(&crypt, &xml, false);
    let r = post_query_within(&w, &q, &b, Duration::from_secs(6)).expect("last try answered");
    assert_eq!(
        content_of(&open(&r), "oS"),
        "结果还在生成，稍后发任意消息查看"
    );
}

// ---------------------------------------------------------------- reload and check

#[test]
fn sighup_reloads_a_good_file_and_keeps_the_table_on_a_broken_one() {
    let site = Site::new("cmd-hup");
    let w = site.serve("[[command]]\nname = \"版本\"\nreply = \"v1\"");
    assert_eq!(say(&w, "oH", "版本"), "v1");
    site.config(
        "[[command]]\nname = \"版本\"\nreply = \"v2\"\n[[command]]\nname = \"新\"\nreply = \"new\"",
    );
    w.signal(libc::SIGHUP);
    assert!(w.wait_for_log("reloaded"));
    assert_eq!(say(&w, "oH", "版本"), "v2");
    assert_eq!(say(&w, "oH", "新"), "new");
    site.config("[[command]]\nname = \"版本\"\nreply = \"v3\"\nrepyl = \"typo\"");
    w.signal(libc::SIGHUP);
    assert!(w.wait_for_log("reload of"));
    assert!(w.stderr().contains("repyl"), "the log says why");
    assert_eq!(say(&w, "oH", "版本"), "v2", "the running table is kept");
    assert_eq!(say(&w, "oH", "新"), "new");
    // A mistyped secret is refused without reaching the log.
    site.write(
        "wxmp.toml",
        &format!("token = \"{TOKEN}\"\nencoding_aes_key = Zm9vYmFyU2VjcmV0S2V5MDEy\n"),
    );
    w.signal(libc::SIGHUP);
    assert_eq!(w.wait_for_count("reload of", 2), 2);
    assert!(w.stderr().contains("line 2"), "{}", w.stderr());
    assert!(!w.stderr().contains("Zm9vYmFy"), "{}", w.stderr());
    assert_eq!(say(&w, "oH", "版本"), "v2");
}

#[test]
fn sighup_names_the_settings_that_only_a_restart_applies() {
    let site = Site::new("cmd-hup-restart");
    let w = site.serve("[[command]]\nname = \"版本\"\nreply = \"v1\"");
    site.config("[[command]]\nname = \"版本\"\nreply = \"v2\"");
    w.signal(libc::SIGHUP);
    assert!(w.wait_for_log("reloaded"));
    assert_eq!(say(&w, "oH", "版本"), "v2");
    assert!(!w.stderr().contains("restart"), "{}", w.stderr());
    // The listener, the workers and the logger were set up at start: the file's new values wait.
    site.write(
        "wxmp.toml",
        &format!(
            "token = \"{TOKEN}\"\nlisten = \"127.0.0.1:1\"\nworkers = 2\n[log]\nlevel = \"warn\"\n\
             [[command]]\nname = \"版本\"\nreply = \"v3\"\n"
        ),
    );
    w.signal(libc::SIGHUP);
    assert!(w.wait_for_log("only a restart applies"), "{}", w.stderr());
    assert!(
        w.stderr().contains("listen, workers, [log] level changed"),
        "{}",
        w.stderr()
    );
    assert_eq!(say(&w, "oH", "版本"), "v3", "the rest is in force");
}

/// Each kind of error with the key its message must name.
const BAD: &[(&str, &str)] = &[
    ("name = \"a\"\nreply = \"x\"\nreplly = \"y\"", "replly"),
    ("name = \"a\"\nprefix = \"b\"\nreply = \"x\"", "prefix"),
    // Two rules are named by the keys the table has: `key` without `event`, `aliases` alone.
    (
        "name = \"a\"\nkey = \"K\"\nreply = \"x\"",
        "key `key`: a command has exactly one match rule, but this one has name and key",
    ),
    (
        "aliases = [\"a\"]\nregex = \"b\"\nreply = \"x\"",
        "key `regex`: a command has exactly one match rule, but this one has aliases and regex",
    ),
    ("name = \"a\"\nreply = \"x\"\nfile = \"f.txt\"", "file"),
    ("reply = \"x\"", "match rule"),
    ("name = \"a\"", "action"),
    ("regex = \"(unclosed\"\nreply = \"x\"", "regex"),
    ("name = \"a\"\nexec = [\"./missing.sh\"]", "exec"),
    ("name = \"a\"\nexec = [\"./noexec.sh\"]", "exec"),
    ("name = \"a\"\nexec = [\"no-such-program-wxmp\"]", "exec"),
    ("name = \"a\"\nexec = []", "exec"),
    ("name = \"a\"\nexec = [\"{args}\"]", "exec"),
    // The user's words as a shell's or an interpreter's code: `$(…)` would run.
    (
        "prefix = \"a\"\nexec = [\"sh\", \"-c\", \"./ok.sh {args}\"]",
        "key `exec`: sh would run what the user wrote as code (\"./ok.sh {args}\")",
    ),
    (
        "regex = \"^a (.*)\"\nexec = [\"bash\", \"-ec\", \"grep {1} f\"]",
        "would run what the user wrote as code",
    ),
    (
        "prefix = \"a\"\nexec = [\"perl\", \"-e\", \"print '{content}'\"]",
        "would run what the user wrote as code",
    ),
    ("name = \"a\"\nfile = \"nofolder/x.txt\"", "file"),
    ("name = \"a\"\nfile = \"sub\"", "file"),
    (
        "name = \"a\"\nexec = [\"./ok.sh\"]\ntimeout = 15",
        "timeout",
    ),
    ("name = \"a\"\nexec = [\"./ok.sh\"]\ntimeout = 0", "timeout"),
    ("name = \"a\"\nreply = \"x\"\ntimeout = 5", "timeout"),
    ("name = \"a\"\nreply = \"\"", "reply"),
    ("name = \"a\"\nreply = 5", "reply"),
    ("name = \"a\"\nimage = \"\"", "image"),
    (
        "name = \"a\"\nvideo = { title = \"no media id\" }",
        "video.media_id",
    ),
    (
        "name = \"a\"\nvideo = { media_id = \"m\", colour = \"red\" }",
        "video.colour",
    ),
    (
        "name = \"a\"\nmusic = { title = \"t\" }",
        "music.thumb_media_id",
    ),
    (
        "name = \"a\"\nnews = [{ title = \"t\", url = \"ftp://x\" }]",
        "news[1].url",
    ),
    (
        "name = \"a\"\nnews = [{ description = \"no title\" }]",
        "news[1].title",
    ),
    ("name = \"a\"\nnews = []", "news"),
    ("event = \"CLIK\"\nreply = \"x\"", "event"),
    ("key = \"K\"\nreply = \"x\"", "key"),
    ("aliases = [\"b\"]\nreply = \"x\"", "aliases"),
    ("name = \"a\"\nadmin = \"yes\"\nreply = \"x\"", "admin"),
    ("name = \"a\"\nhelp = 3\nreply = \"x\"", "help"),
];

fn bad_site() -> Site {
    let site = Site::new("cmd-check");
    site.script("ok.sh", "echo ok");
    site.write("noexec.sh", "#!/bin/sh\necho x\n");
    std::fs::create_dir_all(site.path("sub")).unwrap();
    site
}

#[test]
fn check_names_the_command_and_key_of_each_kind_of_error() {
    let site = bad_site();
    for (body, key) in BAD {
        let out = site.check(&format!(
            "[[command]]\nname = \"fine\"\nreply = \"ok\"\n[[command]]\n{body}"
        ));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{body}: {err}");
        assert!(
            err.contains("command #2") && err.contains(key),
            "{body}: error should name command #2 and {key}: {err}"
        );
        assert!(!err.contains("command #1"), "{err}");
    }
}

#[test]
fn check_refuses_an_event_key_an_earlier_command_answers_through_its_scene() {
    // A key matches the raw EventKey or its scene after `qrscene_`, either way round: after
    // `key = "1001"`, a command with `key = "qrscene_1001"` (or the reverse) never answers.
    let site = bad_site();
    for (first, second) in [("1001", "qrscene_1001"), ("qrscene_7", "7")] {
        let out = site.check(&format!(
            "[[command]]\nevent = \"subscribe\"\nkey = \"{first}\"\nreply = \"a\"\n\
             [[command]]\nevent = \"subscribe\"\nkey = \"{second}\"\nreply = \"b\""
        ));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{first} then {second}: {err}");
        assert!(
            err.contains(
                "command #2 (event subscribe): key `key`: command #1 already answers this event \
                 and key"
            ),
            "{err}"
        );
    }
    // Another scene is another key.
    let out = site.check(
        "[[command]]\nevent = \"SCAN\"\nkey = \"1001\"\nreply = \"a\"\n\
         [[command]]\nevent = \"SCAN\"\nkey = \"qrscene_1002\"\nreply = \"b\"",
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_says_when_the_log_folder_could_not_be_made_and_ends_quietly_when_piped_to_head() {
    let site = bad_site();
    // A file where the log folder would go: `wxmp serve` would stop at once.
    let out = site.check("[log]\ndir = \"wxmp.toml/log\"");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[log] dir wxmp.toml/log: ") && err.contains("wxmp.toml is not a folder"),
        "{err}"
    );
    // `wxmp check | head -1` with a long listing: no panic, no backtrace.
    let many: String = (0..3000)
        .map(|i| format!("[[command]]\nname = \"c{i}\"\nreply = \"x\"\n"))
        .collect();
    site.config(&many);
    let mut child = wxmp_command()
        .args(["check", "--config", "wxmp.toml"])
        .current_dir(&site.dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.ends_with(": OK\n"), "{first}");
    // The reader is gone (dropped above); the rest of the listing meets a closed pipe.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn check_lists_every_error_at_once_and_serve_refuses_the_file() {
    let site = bad_site();
    let all: String = BAD
        .iter()
        .map(|(body, _)| format!("[[command]]\n{body}\n"))
        .collect();
    let all = format!("admins = [\"has space\"]\n{all}[[command]]\nname = \"dup\"\nreply = \"1\"\n[[command]]\nname = \"DUP\"\nreply = \"2\"\n");
    let out = site.check(&all);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for (i, (_, key)) in BAD.iter().enumerate() {
        let n = format!("command #{}", i + 1);
        assert!(
            err.lines().any(
                |l| (l.contains(&format!("{n} ")) || l.contains(&format!("{n}:")))
                    && l.contains(key)
            ),
            "no line names {n} and {key}:\n{err}"
        );
    }
    let dup = format!("command #{}", BAD.len() + 2);
    assert!(
        err.contains(&dup) && err.contains("already a name"),
        "{err}"
    );
    assert!(err.contains("admins"), "{err}");
    let serve = wxmp_command()
        .args(["serve", "--config", "wxmp.toml"])
        .current_dir(&site.dir)
        .env_remove("WXMP_TOKEN")
        .output()
        .unwrap();
    assert_eq!(serve.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&serve.stderr).contains("replly"));
}

#[test]
fn the_example_config_is_valid_and_check_prints_the_table() {
    let site = Site::new("cmd-example");
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/wxmp.example.toml"))
            .expect("wxmp.example.toml");
    site.write("wxmp.example.toml", &example);
    site.script("crawlers/query.py", "echo query");
    std::fs::create_dir_all(site.path("data")).unwrap();
    let out = run_check(&site.dir, "wxmp.example.toml", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for needle in [
        "name 天气 / weather",
        "prefix \"查\"",
        "regex '",
        "file ",
        "exec ",
        "[admin]",
        "image reply",
        "voice reply",
        "video reply",
        "music reply",
        "news, ",
        "transfer_customer_service reply",
        "event click key \"TODAY\"",
        "event subscribe",
        "event scan",
    ] {
        assert!(stdout.contains(needle), "{needle} missing from:\n{stdout}");
    }
}
