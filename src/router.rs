//! Routing: what each message is answered with.
//!
//! The server asks a [`Handler`] for a [`Route`]: an answer now, or work that runs off the recv
//! loop (a script, say) and answers when done. [`Router`] is the handler built from the config:
//! the `[[command]]` tables tried in file order (first match wins), the built-in help and
//! whoami, and the `[reply]` defaults.

use crate::command::{self, Action, Captures, Command, Vars};
use crate::config::Config;
use crate::exec::{self, Status};
use crate::message::{Event, Kind, Message};
use crate::reply::{Reply, MAX_ARTICLES};
use log::{error, info, warn};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Work that produces a reply later, run on its own thread so no other request waits for it.
pub type Job = Box<dyn FnOnce() -> Reply + Send + 'static>;

/// How a message is answered.
pub enum Route {
    /// The reply is ready.
    Now(Reply),
    /// The reply needs slow work (at most ~14 s; WeChat's three tries are used to wait for it).
    Later(Job),
}

/// Decides the answer to a message. Implementations must be cheap for [`Route::Now`] answers:
/// they run on a recv-loop thread.
pub trait Handler: Send + Sync {
    /// The route for `msg`.
    fn route(&self, msg: &Message) -> Route;
}

/// The words that ask for the built-in help (ASCII case-insensitive).
pub const HELP_WORDS: [&str; 4] = ["帮助", "help", "?", "？"];

/// The words that ask for the sender's openid (ASCII case-insensitive).
pub const WHOAMI_WORDS: [&str; 2] = ["whoami", "我的id"];

/// The answer to a `file` command whose file does not exist (yet) or is empty.
pub const NO_DATA: &str = "暂无数据";

/// The answer to an `exec` command that printed nothing (WeChat shows an error for empty text).
pub const NO_OUTPUT: &str = "（指令没有输出）";

/// The answer when the user's text would begin a program's argument with `-`, where the program
/// could take it for an option (`--output=…`, say) rather than a word.
pub const NO_OPTIONS: &str = "参数不能以 - 开头";

/// The most bytes of a `file` read per request (only [`crate::reply::TEXT_LIMIT`] are shown).
pub const FILE_READ_LIMIT: u64 = 64 * 1024;

/// The handler built from `wxmp.toml`.
#[derive(Debug, Clone)]
pub struct Router {
    default: String,
    welcome: String,
    commands: Vec<Command>,
    admins: Vec<String>,
    base_dir: PathBuf,
}

impl Router {
    /// Builds the router from the configuration; every problem is listed, each naming the
    /// command and the key.
    pub fn from_config(config: &Config) -> Result<Router, Vec<String>> {
        let base = config.base_dir();
        let base_dir = std::path::absolute(&base).unwrap_or(base);
        let mut errors = Vec::new();
        for (i, a) in config.admins.iter().enumerate() {
            if a.trim().is_empty() || a.chars().any(char::is_whitespace) {
                errors.push(format!(
                    "admins: item {} ({a:?}) is not an openid; send `whoami` to the account to see yours",
                    i + 1
                ));
            }
        }
        let commands = match command::parse_commands(&config.commands, &base_dir) {
            Ok(c) => c,
            Err(e) => {
                errors.extend(e);
                Vec::new()
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Router {
            default: config.reply.default.clone(),
            welcome: config.reply.welcome.clone(),
            commands,
            admins: config.admins.clone(),
            base_dir,
        })
    }

    /// The commands, in file order.
    pub fn commands(&self) -> &[Command] {
        &self.commands
    }

    /// The command table in lines for `wxmp check`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!("commands: {}", self.commands.len())];
        for c in &self.commands {
            lines.push(format!(
                "  #{:<3} {}  ->  {}{}{}",
                c.index,
                c.rule(),
                c.describe_action(),
                if c.admin { "  [admin]" } else { "" },
                c.help
                    .as_deref()
                    .map(|h| format!("  help: {h}"))
                    .unwrap_or_default()
            ));
        }
        lines.push(format!(
            "built-in: {} (help), {} (your openid), unless a command the sender may run has the same name",
            HELP_WORDS.join(" / "),
            WHOAMI_WORDS.join(" / ")
        ));
        lines.push(format!("admins: {}", self.admins.len()));
        if self.admins.is_empty() && self.commands.iter().any(|c| c.admin) {
            lines.push(
                "  note: admin commands answer nobody until `admins` lists an openid \
                 (send `whoami` to the account to see yours)"
                    .into(),
            );
        }
        lines
    }

    fn is_admin(&self, openid: &str) -> bool {
        self.admins.iter().any(|a| a == openid)
    }

    /// Whether `openid` may run `c`: any command but an admin one, which only `admins` may.
    fn may_run(&self, c: &Command, openid: &str) -> bool {
        !c.admin || self.is_admin(openid)
    }

    /// Whether the sender may run `c`; refusals are logged.
    fn allowed(&self, c: &Command, msg: &Message) -> bool {
        if !self.may_run(c, &msg.from_user) {
            warn!(
                "{} is not in admins: admin command #{} ({}) refused",
                msg.from_user,
                c.index,
                c.rule()
            );
            return false;
        }
        true
    }

    fn default_reply(&self) -> Route {
        Route::Now(Reply::Text(self.default.clone()))
    }

    fn route_event(&self, msg: &Message, event: &str) -> Route {
        let key = msg.field("EventKey").unwrap_or_default().trim();
        for c in &self.commands {
            if let Some(caps) = c.match_event(event, key) {
                if !self.allowed(c, msg) {
                    break;
                }
                return self.run(c, caps, msg, key, true);
            }
        }
        Route::Now(match &msg.kind {
            Kind::Event(Event::Subscribe { .. }) => Reply::Text(self.welcome.clone()),
            _ => Reply::Success,
        })
    }

    fn route_text(&self, msg: &Message, said: &str) -> Route {
        // A command of a built-in's name replaces it for whoever may run it; anyone else gets
        // the built-in, as if no command had the name (and the attempt is logged).
        let named = |words: &[&str]| {
            words.iter().any(|w| w.eq_ignore_ascii_case(said))
                && self
                    .commands
                    .iter()
                    .find(|c| c.has_name(said))
                    .is_none_or(|c| !self.allowed(c, msg))
        };
        if named(&HELP_WORDS) {
            return Route::Now(Reply::Text(self.help(&msg.from_user)));
        }
        if named(&WHOAMI_WORDS) {
            return Route::Now(Reply::Text(msg.from_user.clone()));
        }
        for c in self.commands.iter().filter(|c| !c.is_event()) {
            if let Some(caps) = c.match_text(said) {
                if !self.allowed(c, msg) {
                    return self.default_reply();
                }
                return self.run(c, caps, msg, said, false);
            }
        }
        self.default_reply()
    }

    /// The built-in help for `openid`: each command it may run, with its `help` text.
    fn help(&self, openid: &str) -> String {
        let mut text = String::from("可用指令：");
        for c in self.commands.iter().filter(|c| self.may_run(c, openid)) {
            let what = match &c.matcher {
                command::Matcher::Name(names) => names.join(" / "),
                command::Matcher::Prefix(p) => format!("{}…", p.trim_end()),
                command::Matcher::Regex(_) if c.help.is_some() => String::new(),
                _ => continue,
            };
            text.push('\n');
            text.push_str(&what);
            match (&c.help, what.is_empty()) {
                (Some(h), false) => {
                    text.push('：');
                    text.push_str(h);
                }
                (Some(h), true) => text.push_str(h),
                (None, _) => {}
            }
            if c.admin {
                text.push_str("（管理）");
            }
        }
        // The built-in words, less those a command this user may run has taken.
        for (words, what) in [
            (&WHOAMI_WORDS[..], "你的 openid"),
            (&HELP_WORDS[..2], "本列表"),
        ] {
            let words = self.built_in_words(words, openid);
            if !words.is_empty() {
                text.push('\n');
                text.push_str(&words.join(" / "));
                text.push('：');
                text.push_str(what);
            }
        }
        text
    }

    /// The words of `words` that are still built-ins for `openid`: no command it may run has
    /// their name.
    fn built_in_words<'w>(&self, words: &[&'w str], openid: &str) -> Vec<&'w str> {
        words
            .iter()
            .copied()
            .filter(|w| {
                self.commands
                    .iter()
                    .find(|c| c.has_name(w))
                    .is_none_or(|c| !self.may_run(c, openid))
            })
            .collect()
    }

    /// The route for command `c` matched with `caps`; `content` is what the user said (or the
    /// event key) and `event` whether an event matched.
    fn run(
        &self,
        c: &Command,
        captures: Captures,
        msg: &Message,
        content: &str,
        event: bool,
    ) -> Route {
        let vars = Vars {
            captures,
            openid: msg.from_user.clone(),
            content: content.to_string(),
        };
        match &c.action {
            Action::Reply(t) => Route::Now(Reply::Text(command::substitute(t, &vars))),
            Action::File(path) => Route::Now(Reply::Text(read_data(c, path))),
            Action::Media(r) => Route::Now(r.clone()),
            Action::News(articles) => {
                // Protocol: one article in answer to a user message, up to 8 otherwise.
                let n = if event { MAX_ARTICLES } else { 1 };
                Route::Now(Reply::News(articles.iter().take(n).cloned().collect()))
            }
            Action::Exec { program, args } => {
                let filled: Vec<String> =
                    args.iter().map(|a| command::substitute(a, &vars)).collect();
                if let Some(i) = user_option(args, &filled) {
                    warn!(
                        "command #{} ({}) for {}: the message would make argument {} start with \
                         '-', an option to the program; answered {NO_OPTIONS} (put \"--\" before \
                         it in exec if the program takes such words after it)",
                        c.index,
                        c.rule(),
                        msg.from_user,
                        i + 1
                    );
                    return Route::Now(Reply::Text(NO_OPTIONS.into()));
                }
                let job = exec::Job {
                    program: program.clone(),
                    args: filled,
                    env: vec![
                        ("WXMP_OPENID".into(), vars.openid.clone()),
                        ("WXMP_CONTENT".into(), vars.content.clone()),
                        ("WXMP_ARGS".into(), vars.captures.args.clone()),
                    ],
                    dir: self.base_dir.clone(),
                    timeout: c.timeout,
                };
                let label = format!("command #{} ({})", c.index, c.rule());
                let openid = msg.from_user.clone();
                Route::Later(Box::new(move || {
                    let out = exec::run(&job);
                    exec_reply(&label, &openid, &job, &out)
                }))
            }
        }
    }
}

/// The index of the first argument whose leading `-` came from the message (its template does
/// not start with one), unless a `--` argument comes before it: no shell is involved, but a
/// program would still read `--output=/x` from the user as an option.
fn user_option(templates: &[String], filled: &[String]) -> Option<usize> {
    templates
        .iter()
        .zip(filled)
        .take_while(|(template, _)| *template != "--")
        .position(|(template, arg)| arg.starts_with('-') && !template.starts_with('-'))
}

/// The text of a `file` command: the file's text trimmed, or [`NO_DATA`] (with a log line) when
/// it is missing, unreadable or empty. Read at each request: nothing is cached.
fn read_data(c: &Command, path: &Path) -> String {
    match read_regular(path).map(|text| text.map(trimmed)) {
        Ok(Some(text)) if text.is_empty() => {
            warn!("command #{}: {} is empty", c.index, path.display());
            NO_DATA.to_string()
        }
        Ok(Some(text)) => text,
        Ok(None) => {
            error!(
                "command #{}: {} is not a regular file; answered {NO_DATA}",
                c.index,
                path.display()
            );
            NO_DATA.to_string()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            warn!(
                "command #{}: {} does not exist yet; answered {NO_DATA}",
                c.index,
                path.display()
            );
            NO_DATA.to_string()
        }
        Err(e) => {
            error!("command #{}: cannot read {}: {e}", c.index, path.display());
            NO_DATA.to_string()
        }
    }
}

/// The first [`FILE_READ_LIMIT`] bytes of `path` as text (invalid UTF-8 replaced), or `None` if
/// it is not a regular file. Opened without blocking (opening a FIFO for reading would wait for
/// a writer) and read into a buffer of the file's size: one `read`, not one per doubling.
fn read_regular(path: &Path) -> std::io::Result<Option<String>> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    let size = usize::try_from(meta.len().min(FILE_READ_LIMIT)).unwrap_or(0);
    let mut bytes = Vec::with_capacity(size);
    (&mut file).take(FILE_READ_LIMIT).read_to_end(&mut bytes)?;
    Ok(Some(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }))
}

/// `text` without its leading and trailing whitespace, reusing its buffer.
fn trimmed(mut text: String) -> String {
    let end = text.trim_end().len();
    text.truncate(end);
    let start = text.len() - text.trim_start().len();
    text.drain(..start);
    text
}

/// The most stderr lines of one run copied to the log.
const STDERR_LINES: usize = 50;

/// The answer to an `exec` run, with its log lines.
fn exec_reply(label: &str, openid: &str, job: &exec::Job, out: &exec::Output) -> Reply {
    let ms = out.elapsed.as_millis();
    let failed = !matches!(out.status, Status::Exited(0));
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    for line in lines.iter().take(STDERR_LINES) {
        if failed {
            warn!("{label} stderr: {line}");
        } else {
            info!("{label} stderr: {line}");
        }
    }
    if lines.len() > STDERR_LINES {
        warn!(
            "{label} stderr: … {} more lines",
            lines.len() - STDERR_LINES
        );
    }
    let text = match &out.status {
        Status::Exited(0) => {
            info!(
                "{label} for {openid}: exit 0 in {ms}ms, {} bytes",
                out.stdout.len()
            );
            let text = out.stdout.trim();
            if text.is_empty() {
                NO_OUTPUT.to_string()
            } else {
                text.to_string()
            }
        }
        Status::Exited(code) => {
            warn!("{label} for {openid}: exit code {code} in {ms}ms");
            format!("指令执行失败（退出码 {code}）")
        }
        Status::Signaled(sig) => {
            warn!("{label} for {openid}: ended by signal {sig} in {ms}ms");
            format!("指令执行失败（被信号 {sig} 终止）")
        }
        Status::TimedOut => {
            warn!(
                "{label} for {openid}: still running after {:?}; its process group was killed",
                job.timeout
            );
            format!("指令超时（超过 {} 秒），已停止", secs(job.timeout))
        }
        Status::NotStarted(why) => {
            error!("{label} for {openid}: cannot start: {why}");
            "指令无法启动，请管理员查看日志".to_string()
        }
        Status::Stopped => {
            warn!("{label} for {openid}: stopped because the server is stopping");
            "服务正在重启，指令已停止，请稍后再试".to_string()
        }
        Status::Busy => {
            warn!(
                "{label} for {openid}: {} programs already running; refused",
                exec::MAX_RUNNING
            );
            "正在执行的指令太多，请稍后再试".to_string()
        }
    };
    Reply::Text(text)
}

/// Seconds for people: `4`, `2.5`.
fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0}")
    } else {
        format!("{s}")
    }
}

impl Handler for Router {
    fn route(&self, msg: &Message) -> Route {
        if let Some(event) = msg.event_name() {
            return self.route_event(msg, event);
        }
        match msg.said() {
            Some(said) => self.route_text(msg, &said),
            None => self.default_reply(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimmed_drops_surrounding_whitespace_only() {
        assert_eq!(trimmed("  \n新闻 a b\n\n".to_string()), "新闻 a b");
        assert_eq!(trimmed("x".to_string()), "x");
        assert_eq!(trimmed(" \t\n".to_string()), "");
    }

    #[test]
    fn read_regular_reads_text_up_to_the_limit() {
        let dir = std::env::temp_dir().join(format!("wxmp-read-regular-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let small = dir.join("small.txt");
        std::fs::write(&small, b"ok \xff end").unwrap();
        assert_eq!(
            read_regular(&small).unwrap().as_deref(),
            Some("ok \u{fffd} end")
        );
        let big = dir.join("big.txt");
        let limit = usize::try_from(FILE_READ_LIMIT).unwrap();
        std::fs::write(&big, "y".repeat(limit + 10)).unwrap();
        assert_eq!(read_regular(&big).unwrap().map(|t| t.len()), Some(65_536));
        assert_eq!(read_regular(&dir).unwrap(), None, "a directory is not read");
        let missing = read_regular(&dir.join("missing")).unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn router(toml: &str) -> Router {
        let config = Config::from_toml(&format!("token = \"abc\"\n{toml}")).unwrap();
        Router::from_config(&config).unwrap()
    }

    /// The text answer to `said` from `from`.
    fn answer(r: &Router, from: &str, said: &str) -> String {
        let xml = format!(
            "<xml><ToUserName>gh</ToUserName><FromUserName>{from}</FromUserName>\
             <CreateTime>1</CreateTime><MsgType>text</MsgType><Content>{said}</Content>\
             <MsgId>1</MsgId></xml>"
        );
        match r.route(&crate::message::parse(&xml).unwrap()) {
            Route::Now(Reply::Text(t)) => t,
            Route::Now(other) => panic!("not a text: {other:?}"),
            Route::Later(_) => panic!("not answered now"),
        }
    }

    #[test]
    fn help_lists_names_prefixes_and_regexes_with_help_and_admin_commands_for_admins() {
        let r = router(
            r#"
admins = ["oBoss"]
[[command]]
name = "天气"
aliases = ["weather"]
reply = "晴"
help = "今天的天气"
[[command]]
prefix = "查 "
reply = "{args}"
[[command]]
regex = '^价格\s+(\S+)$'
reply = "{1}"
help = "价格 商品名：查价格"
[[command]]
regex = '^秘密$'
reply = "x"
[[command]]
event = "CLICK"
reply = "x"
help = "not listed"
[[command]]
name = "重启"
admin = true
reply = "ok"
"#,
        );
        let guest = "可用指令：\n天气 / weather：今天的天气\n查…\n价格 商品名：查价格";
        let tail = "\nwhoami / 我的id：你的 openid\n帮助 / help：本列表";
        assert_eq!(answer(&r, "oGuest", "help"), format!("{guest}{tail}"));
        assert_eq!(
            answer(&r, "oBoss", "帮助"),
            format!("{guest}\n重启（管理）{tail}")
        );
    }

    #[test]
    fn describe_lists_each_command_and_notes_admin_commands_nobody_may_run() {
        let r = router("[[command]]\nname = \"a\"\nadmin = true\nreply = \"x\"\nhelp = \"h\"");
        assert_eq!(r.commands().len(), 1);
        assert_eq!(r.commands()[0].rule(), "name a");
        assert_eq!(
            r.describe(),
            [
                "commands: 1",
                "  #1   name a  ->  reply \"x\"  [admin]  help: h",
                "built-in: 帮助 / help / ? / ？ (help), whoami / 我的id (your openid), unless a \
                 command the sender may run has the same name",
                "admins: 0",
                "  note: admin commands answer nobody until `admins` lists an openid (send \
                 `whoami` to the account to see yours)",
            ]
        );
        let with_admin =
            router("admins = [\"oBoss\"]\n[[command]]\nname = \"a\"\nadmin = true\nreply = \"x\"");
        assert_eq!(with_admin.describe().last().unwrap(), "admins: 1");
        let no_admin_command = router("[[command]]\nname = \"a\"\nreply = \"x\"");
        assert_eq!(no_admin_command.describe().last().unwrap(), "admins: 0");
    }

    #[test]
    fn timeouts_are_told_in_whole_or_decimal_seconds() {
        assert_eq!(secs(Duration::from_secs(4)), "4");
        assert_eq!(secs(Duration::from_millis(2500)), "2.5");
        assert_eq!(secs(Duration::from_millis(500)), "0.5");
    }
}
