//! `[[command]]` tables of `wxmp.toml`: which messages a command answers and what it answers.
//!
//! Each table has exactly one match rule (`name`/`aliases`, `prefix`, `regex`, or `event` with
//! an optional `key`) and exactly one action (`reply`, `file`, `exec`, `image`, `voice`, `video`,
//! `music`, `news`, `transfer_customer_service`). [`parse_commands`] checks every table and lists
//! every problem, each naming the command and the key, so `wxmp check` can show them all at once.

use crate::reply::{Article, Reply, MAX_ARTICLES};
use regex::Regex;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::{Table, Value};

/// How long an `exec` command may run when its table sets no `timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(4);

/// The longest `timeout` allowed, in seconds: WeChat's three tries span about 15 s.
pub const MAX_TIMEOUT_SECS: f64 = 14.0;

/// The shortest `timeout` allowed, in seconds: less would kill a program as it starts.
pub const MIN_TIMEOUT_SECS: f64 = 0.1;

/// The match-rule keys, listed first among the keys.
const RULE_KEYS: [&str; 6] = ["name", "aliases", "prefix", "regex", "event", "key"];

/// The action keys; a table has exactly one.
pub const ACTIONS: [&str; 9] = [
    "reply",
    "file",
    "exec",
    "image",
    "voice",
    "video",
    "music",
    "news",
    "transfer_customer_service",
];

/// The keys that go with any command, listed last among the keys.
const OTHER_KEYS: [&str; 3] = ["admin", "help", "timeout"];

/// The keys a `[[command]]` table may have: the rules, the actions and the others, in that
/// order (the order `wxmp check` lists them in). Built from those lists, so a new action is
/// allowed where it is declared; a wrong length fails the build.
pub const KEYS: [&str; 18] = concat_keys([&RULE_KEYS, &ACTIONS, &OTHER_KEYS]);

const fn concat_keys<const N: usize>(parts: [&[&'static str]; 3]) -> [&'static str; N] {
    let mut out = [""; N];
    let (mut n, mut p) = (0, 0);
    while p < parts.len() {
        let mut i = 0;
        while i < parts[p].len() {
            out[n] = parts[p][i];
            n += 1;
            i += 1;
        }
        p += 1;
    }
    assert!(n == N, "KEYS' length must be the sum of its parts' lengths");
    out
}

/// The events an event command may name (compared without ASCII case): those that carry an
/// `EventKey` and whose reply WeChat shows.
pub const EVENTS: [&str; 11] = [
    "subscribe",
    "SCAN",
    "CLICK",
    "VIEW",
    "view_miniprogram",
    "scancode_push",
    "scancode_waitmsg",
    "pic_sysphoto",
    "pic_photo_or_album",
    "pic_weixin",
    "location_select",
];

/// The placeholders replaced in `reply` text and `exec` arguments.
pub const PLACEHOLDERS: &str = "{args}, {0}..{9}, {openid}, {content}";

/// One checked `[[command]]` table.
#[derive(Debug, Clone)]
pub struct Command {
    /// Its position in the file, from 1.
    pub index: usize,
    /// Which messages it answers.
    pub matcher: Matcher,
    /// What it answers with.
    pub action: Action,
    /// Whether only the openids in `admins` may run it.
    pub admin: bool,
    /// The text the built-in help shows for it.
    pub help: Option<String>,
    /// How long an `exec` program may run before its process group is killed.
    pub timeout: Duration,
}

/// A command's match rule.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// The trimmed text equals one of these (ASCII case-insensitive): `name` then `aliases`.
    Name(Vec<String>),
    /// The text starts with this (ASCII case-insensitive); the rest is `{args}`.
    Prefix(String),
    /// The text matches this; `{0}` is the whole match, `{1}`..`{9}` its groups.
    Regex(Regex),
    /// An event (lowercased name) and, when given, its key.
    Event {
        /// The `Event` value, lowercased.
        event: String,
        /// The `EventKey` to match; `None` matches every key.
        key: Option<String>,
    },
}

/// A command's action.
#[derive(Debug, Clone)]
pub enum Action {
    /// A fixed text with placeholders.
    Reply(String),
    /// A file read at each request (resolved against the config folder).
    File(PathBuf),
    /// A program run directly (never through a shell) with argument templates.
    Exec {
        /// The program: a path resolved against the config folder when it holds a `/`, else a
        /// name looked up on `PATH`.
        program: PathBuf,
        /// The argument templates, one argv item each.
        args: Vec<String>,
    },
    /// A fixed image, voice, video or music reply, or the hand-over to customer service
    /// (`transfer_customer_service`).
    Media(Reply),
    /// Articles (1 to 8); only the first is sent in answer to a user message.
    News(Vec<Article>),
}

/// What a match captured, for placeholders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captures {
    /// `{args}`: what follows a prefix, the first group of a regex, the scene of an event.
    pub args: String,
    /// `{0}`..`{9}`: the whole text (or regex match) and the groups (or a prefix's words).
    pub groups: [String; 10],
}

impl Command {
    /// What the text a user said must look like, in one line for listings.
    pub fn rule(&self) -> String {
        match &self.matcher {
            Matcher::Name(names) => format!("name {}", names.join(" / ")),
            Matcher::Prefix(p) => format!("prefix {p:?}"),
            Matcher::Regex(r) => format!("regex '{}'", r.as_str()),
            Matcher::Event { event, key } => match key {
                Some(k) => format!("event {event} key {k:?}"),
                None => format!("event {event} (any key)"),
            },
        }
    }

    /// The action in one line for listings.
    pub fn describe_action(&self) -> String {
        match &self.action {
            Action::Reply(t) => format!("reply {:?}", one_line(t, 40)),
            Action::File(p) => format!("file {}", p.display()),
            Action::Exec { program, args } => {
                let mut s = format!("exec {}", program.display());
                for a in args {
                    let _ = write!(s, " {a:?}");
                }
                let _ = write!(s, " (timeout {}s)", self.timeout.as_secs_f64());
                s
            }
            Action::Media(r) => format!("{} reply", r.kind()),
            Action::News(a) => format!("news, {} article(s)", a.len()),
        }
    }

    /// Whether this is an event command.
    pub fn is_event(&self) -> bool {
        matches!(self.matcher, Matcher::Event { .. })
    }

    /// Whether `said` (already trimmed) has exactly one of this command's names.
    pub fn has_name(&self, said: &str) -> bool {
        match &self.matcher {
            Matcher::Name(names) => names.iter().any(|n| n.eq_ignore_ascii_case(said)),
            _ => false,
        }
    }

    /// Matches the text a user said (trimmed); `None` for event commands.
    pub fn match_text(&self, said: &str) -> Option<Captures> {
        let mut c = Captures::default();
        match &self.matcher {
            Matcher::Name(_) if self.has_name(said) => {
                c.groups[0] = said.to_string();
            }
            Matcher::Prefix(p) => {
                // A prefix ending in a space wants a space there, which may be any: Chinese
                // input methods type the full-width one (U+3000).
                let core = p.trim_end();
                let head = said.get(..core.len())?;
                if !head.eq_ignore_ascii_case(core) {
                    return None;
                }
                let rest = said.get(core.len()..)?;
                if core.len() < p.len() && !rest.starts_with(char::is_whitespace) {
                    return None;
                }
                let rest = rest.trim();
                c.groups[0] = said.to_string();
                for (slot, word) in c.groups[1..].iter_mut().zip(rest.split_whitespace()) {
                    *slot = word.to_string();
                }
                c.args = rest.to_string();
            }
            Matcher::Regex(r) => {
                let caps = r.captures(said)?;
                for (i, slot) in c.groups.iter_mut().enumerate() {
                    if let Some(m) = caps.get(i) {
                        *slot = m.as_str().to_string();
                    }
                }
                c.args = c.groups[1].clone();
            }
            _ => return None,
        }
        Some(c)
    }

    /// Matches an event by name (any case) and `EventKey`; a configured key matches the raw
    /// key or the scene after `qrscene_` (subscribe events from a parametric QR code).
    pub fn match_event(&self, event: &str, event_key: &str) -> Option<Captures> {
        let Matcher::Event { event: want, key } = &self.matcher else {
            return None;
        };
        if !want.eq_ignore_ascii_case(event) {
            return None;
        }
        let got = scene(event_key);
        if let Some(k) = key {
            if k != event_key && scene(k) != got {
                return None;
            }
        }
        let mut c = Captures::default();
        c.groups[0] = event_key.to_string();
        c.args = got.to_string();
        Some(c)
    }
}

/// An event key without the `qrscene_` prefix of subscribe events.
fn scene(key: &str) -> &str {
    key.strip_prefix("qrscene_").unwrap_or(key)
}

/// `text` on one line, cut to `max` characters with `…`.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > max {
        flat.chars().take(max).chain(['…']).collect()
    } else {
        flat
    }
}

/// The values of the placeholders for one message.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    /// What the match captured.
    pub captures: Captures,
    /// `{openid}`: the sender.
    pub openid: String,
    /// `{content}`: the text the user said (or the raw `EventKey` of an event).
    pub content: String,
}

impl Vars {
    /// The value of placeholder `name` (without braces), if it is one.
    pub fn get(&self, name: &str) -> Option<&str> {
        match name {
            "args" => Some(&self.captures.args),
            "openid" => Some(&self.openid),
            "content" => Some(&self.content),
            _ => {
                let mut chars = name.chars();
                match (chars.next().and_then(|c| c.to_digit(10)), chars.next()) {
                    (Some(d), None) => self.captures.groups.get(d as usize).map(String::as_str),
                    _ => None,
                }
            }
        }
    }
}

/// Replaces the placeholders in `template` in one pass: a value is never scanned again, so a
/// message holding `{openid}` stays literal text. Braces that are no placeholder stay as written.
pub fn substitute(template: &str, vars: &Vars) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}').and_then(|close| {
            let name = &after[..close];
            vars.get(name).map(|value| (value, close))
        }) {
            Some((value, close)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Whether `text` holds any placeholder.
pub fn has_placeholder(text: &str) -> bool {
    changes_with(text, "\u{1}")
}

/// Whether `text` holds a placeholder for what the user wrote (`{args}`, `{content}`, `{1}`
/// ...); `{openid}` is WeChat's, not the user's.
fn has_user_text(text: &str) -> bool {
    changes_with(text, "{openid}")
}

/// Whether filling `text`'s placeholders changes it, with `openid` for `{openid}` and a
/// character no template holds for the others.
fn changes_with(text: &str, openid: &str) -> bool {
    let probe = Vars {
        captures: Captures {
            args: "\u{1}".into(),
            groups: std::array::from_fn(|_| "\u{1}".to_string()),
        },
        openid: openid.into(),
        content: "\u{1}".into(),
    };
    substitute(text, &probe) != text
}

/// How a shell or a scripting language (by the program's file name) is told to run an argument
/// as code: the options after which the next argument is code, the options that take a value
/// (`-o pipefail`), and whether it is a shell (which also takes `-c` among other single-letter
/// options: `-ec`, `-lc`).
struct CodeOptions {
    code: &'static [&'static str],
    valued: &'static [&'static str],
    shell: bool,
}

fn code_options(program: &Path) -> Option<CodeOptions> {
    let name = program.file_name()?.to_str()?;
    // python3, python3.11, lua5.4: the version is part of the name.
    let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    let (code, valued, shell): (&[&str], &[&str], bool) = match base {
        "sh" | "bash" | "dash" | "zsh" | "ksh" | "mksh" | "ash" | "fish" => {
            (&["-c"], &["-o", "+o", "-O", "+O"], true)
        }
        "python" | "pypy" => (&["-c"], &["-W", "-X"], false),
        "perl" | "ruby" => (&["-e", "-E"], &["-I", "-M", "-r"], false),
        "node" | "nodejs" | "deno" | "bun" => (
            &["-e", "-p", "--eval", "--print"],
            &["-r", "--require"],
            false,
        ),
        "php" => (&["-r"], &["-d", "-c"], false),
        "lua" | "luajit" => (&["-e"], &["-l"], false),
        _ => return None,
    };
    Some(CodeOptions {
        code,
        valued,
        shell,
    })
}

/// Where an `exec` hands the user's words to a shell or an interpreter as code to run
/// (`exec = ["sh", "-c", "./report.sh {args}"]`): the argument holding them, or `None`. Only
/// the interpreter's own options count: those before the first other argument (its script,
/// whose options are its own) or a `--`.
fn user_text_run_as_code<'a>(program: &Path, args: &'a [String]) -> Option<&'a str> {
    let options = code_options(program)?;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let flag = arg.as_str();
        let shell_cluster = options.shell
            && flag.len() > 2
            && flag.starts_with('-')
            && flag[1..].chars().all(|c| c.is_ascii_alphabetic())
            && flag.contains('c');
        if options.code.contains(&flag) || shell_cluster {
            return args.next().map(String::as_str).filter(|a| has_user_text(a));
        }
        if options.valued.contains(&flag) {
            args.next();
        } else if flag == "--" || !(flag.starts_with('-') || flag.starts_with('+')) {
            return None;
        }
    }
    None
}

/// Collects the problems of one table, each prefixed with the command's label.
struct Check<'a> {
    label: String,
    table: &'a Table,
    errors: &'a mut Vec<String>,
}

impl Check<'_> {
    fn err(&mut self, key: &str, why: impl std::fmt::Display) {
        self.errors
            .push(format!("{}: key `{key}`: {why}", self.label));
    }

    fn err_table(&mut self, why: impl std::fmt::Display) {
        self.errors.push(format!("{}: {why}", self.label));
    }

    fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// A string value; `None` (with an error) when it is another type.
    fn string(&mut self, key: &str) -> Option<String> {
        match self.table.get(key)? {
            Value::String(s) => Some(s.clone()),
            other => {
                self.err(key, format!("must be text, not {}", other.type_str()));
                None
            }
        }
    }

    /// A string value that must not be blank.
    fn text(&mut self, key: &str) -> Option<String> {
        let s = self.string(key)?;
        if s.trim().is_empty() {
            self.err(key, "must not be empty");
            return None;
        }
        Some(s)
    }

    fn strings(&mut self, key: &str) -> Option<Vec<String>> {
        match self.table.get(key)? {
            Value::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, v) in items.iter().enumerate() {
                    match v {
                        Value::String(s) => out.push(s.clone()),
                        other => {
                            self.err(
                                key,
                                format!("item {} must be text, not {}", i + 1, other.type_str()),
                            );
                            return None;
                        }
                    }
                }
                Some(out)
            }
            other => {
                self.err(
                    key,
                    format!("must be a list of texts, not {}", other.type_str()),
                );
                None
            }
        }
    }
}

/// A label naming table `index` (from 1) for error messages: `command #2 "天气"`.
fn label(index: usize, table: &Table) -> String {
    let named = |k: &str| match table.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    match (
        named("name"),
        named("prefix"),
        named("regex"),
        named("event"),
    ) {
        (Some(n), ..) => format!("command #{index} (name {n:?})"),
        (_, Some(p), ..) => format!("command #{index} (prefix {p:?})"),
        (_, _, Some(r), _) => format!("command #{index} (regex '{r}')"),
        (_, _, _, Some(e)) => match named("key") {
            Some(k) => format!("command #{index} (event {e} key {k:?})"),
            None => format!("command #{index} (event {e})"),
        },
        _ => format!("command #{index}"),
    }
}

/// Checks the `[[command]]` tables; relative paths are resolved against `base_dir` (the config
/// file's folder). Every problem is listed, each naming the command and the key.
pub fn parse_commands(tables: &[Table], base_dir: &Path) -> Result<Vec<Command>, Vec<String>> {
    let mut errors = Vec::new();
    let mut commands = Vec::with_capacity(tables.len());
    for (i, table) in tables.iter().enumerate() {
        let mut check = Check {
            label: label(i + 1, table),
            table,
            errors: &mut errors,
        };
        if let Some(c) = parse_one(i + 1, &mut check, base_dir) {
            commands.push(c);
        }
    }
    check_shadowing(&commands, &mut errors);
    if errors.is_empty() {
        Ok(commands)
    } else {
        Err(errors)
    }
}

/// Two commands with the same name or the same event and key: the second could never answer.
fn check_shadowing(commands: &[Command], errors: &mut Vec<String>) {
    for (j, later) in commands.iter().enumerate() {
        for earlier in &commands[..j] {
            match (&earlier.matcher, &later.matcher) {
                (Matcher::Name(a), Matcher::Name(b)) => {
                    if let Some(n) = b
                        .iter()
                        .find(|n| a.iter().any(|m| m.eq_ignore_ascii_case(n)))
                    {
                        errors.push(format!(
                            "command #{} (name {:?}): key `name`/`aliases`: {n:?} is already a name of command #{}, which always answers first",
                            later.index, b[0], earlier.index
                        ));
                    }
                }
                // A key answers the raw EventKey and its scene alike (`match_event`): `1001`
                // and `qrscene_1001` are one key.
                (Matcher::Event { event: e1, key: k1 }, Matcher::Event { event: e2, key: k2 })
                    if e1 == e2
                        && match (k1, k2) {
                            (None, _) => true,
                            (Some(k1), Some(k2)) => scene(k1) == scene(k2),
                            (Some(_), None) => false,
                        } =>
                {
                    errors.push(format!(
                        "command #{} (event {e2}): key `key`: command #{} already answers this event{}",
                        later.index,
                        earlier.index,
                        if k1.is_none() { " with any key" } else { " and key" }
                    ));
                }
                _ => {}
            }
        }
    }
}

fn parse_one(index: usize, c: &mut Check, base_dir: &Path) -> Option<Command> {
    let before = c.errors.len();
    let mut keys: Vec<&String> = c.table.keys().collect();
    keys.sort();
    for key in keys {
        if !KEYS.contains(&key.as_str()) {
            let key = key.clone();
            c.err(
                &key,
                format!("unknown key; a command may have: {}", KEYS.join(", ")),
            );
        }
    }

    // The match rule.
    let rules: Vec<&str> = [
        (c.has("name") || c.has("aliases"), "name"),
        (c.has("prefix"), "prefix"),
        (c.has("regex"), "regex"),
        (c.has("event") || c.has("key"), "event"),
    ]
    .into_iter()
    .filter_map(|(present, k)| present.then_some(k))
    .collect();
    let matcher = match rules.as_slice() {
        [] => {
            c.err_table("has no match rule: add `name`, `prefix`, `regex` or `event` (+ `key`)");
            None
        }
        [one] => parse_matcher(one, c),
        many => {
            // Named by the keys the table has: `aliases` without `name`, `key` without `event`.
            let keys: Vec<&str> = many
                .iter()
                .map(|&rule| match rule {
                    "name" if !c.has("name") => "aliases",
                    "event" if !c.has("event") => "key",
                    other => other,
                })
                .collect();
            c.err(
                keys[1],
                format!(
                    "a command has exactly one match rule, but this one has {}",
                    keys.join(" and ")
                ),
            );
            None
        }
    };

    // The action.
    let actions: Vec<&str> = ACTIONS.iter().copied().filter(|k| c.has(k)).collect();
    let timeout = parse_timeout(c, actions.as_slice() == ["exec"]);
    let action = match actions.as_slice() {
        [] => {
            c.err_table(format!("has no action: add one of {}", ACTIONS.join(", ")));
            None
        }
        [one] => parse_action(one, c, base_dir),
        many => {
            c.err(
                many[1],
                format!(
                    "a command has exactly one action, but this one has {}",
                    many.join(" and ")
                ),
            );
            None
        }
    };
    let admin = match c.table.get("admin") {
        None => false,
        Some(Value::Boolean(b)) => *b,
        Some(other) => {
            let t = other.type_str();
            c.err("admin", format!("must be true or false, not {t}"));
            false
        }
    };
    let help = c.string("help");
    // A shell would run `$(…)`, `;` and backticks in the message: anyone who can write to the
    // account could run anything as wxmp's user. The words go in an argument of their own
    // ("$1"), which the shell does not read as code. Admins may (they could as well log in).
    if let Some(Action::Exec { program, args }) = &action {
        if let Some(code) = user_text_run_as_code(program, args).filter(|_| !admin) {
            c.err(
                "exec",
                format!(
                    "{} would run what the user wrote as code ({code:?}): pass it as an \
                     argument of its own, e.g. exec = [\"sh\", \"-c\", \"./report.sh \\\"$1\\\"\", \
                     \"sh\", \"{{args}}\"], or make the command admin = true",
                    program.display()
                ),
            );
        }
    }
    // WeChat hands only what a user said to customer service; its documentation asks that
    // events (menu clicks, location reports) never be, as the agents would see them as noise.
    if let (
        Some(Matcher::Event { .. }),
        Some(Action::Media(Reply::TransferCustomerService { .. })),
    ) = (&matcher, &action)
    {
        c.err(
            "transfer_customer_service",
            "only what a user says can go to customer service, not an event: use `name`, \
             `prefix` or `regex`",
        );
    }

    if c.errors.len() != before {
        return None;
    }
    Some(Command {
        index,
        matcher: matcher?,
        action: action?,
        admin,
        help,
        timeout,
    })
}

fn parse_matcher(rule: &str, c: &mut Check) -> Option<Matcher> {
    match rule {
        "name" => {
            if !c.has("name") {
                c.err("aliases", "needs a `name` to go with it");
                return None;
            }
            let name = c.text("name")?.trim().to_string();
            let mut names = vec![name];
            for alias in c.strings("aliases").unwrap_or_default() {
                if alias.trim().is_empty() {
                    c.err("aliases", "an alias must not be empty");
                    return None;
                }
                names.push(alias.trim().to_string());
            }
            Some(Matcher::Name(names))
        }
        "prefix" => {
            let prefix = c.text("prefix")?;
            if prefix.starts_with(char::is_whitespace) {
                c.err(
                    "prefix",
                    format!(
                        "{prefix:?} starts with a space, and messages are matched trimmed: it \
                         could never match"
                    ),
                );
                return None;
            }
            Some(Matcher::Prefix(prefix))
        }
        "regex" => {
            let source = c.text("regex")?;
            match Regex::new(&source) {
                Ok(r) => Some(Matcher::Regex(r)),
                Err(e) => {
                    c.err("regex", format!("is not a valid regular expression: {e}"));
                    None
                }
            }
        }
        _ => {
            if !c.has("event") {
                c.err(
                    "key",
                    "needs an `event` to go with it (event = \"CLICK\", say)",
                );
                return None;
            }
            let event = c.text("event")?;
            if !EVENTS.iter().any(|e| e.eq_ignore_ascii_case(event.trim())) {
                c.err(
                    "event",
                    format!(
                        "{event:?} is not an event a command can answer; use one of {}",
                        EVENTS.join(", ")
                    ),
                );
                return None;
            }
            let key = match c.table.get("key") {
                None => None,
                Some(_) => Some(c.text("key")?.trim().to_string()),
            };
            Some(Matcher::Event {
                event: event.trim().to_ascii_lowercase(),
                key,
            })
        }
    }
}

fn parse_timeout(c: &mut Check, is_exec: bool) -> Duration {
    let secs = match c.table.get("timeout") {
        None => return DEFAULT_TIMEOUT,
        Some(Value::Integer(n)) => *n as f64,
        Some(Value::Float(f)) => *f,
        Some(other) => {
            let t = other.type_str();
            c.err("timeout", format!("must be a number of seconds, not {t}"));
            return DEFAULT_TIMEOUT;
        }
    };
    if !is_exec {
        c.err("timeout", "only applies to `exec` commands");
    }
    if !(MIN_TIMEOUT_SECS..=MAX_TIMEOUT_SECS).contains(&secs) {
        c.err(
            "timeout",
            format!(
                "{secs} is out of range: at least {MIN_TIMEOUT_SECS} and at most \
                 {MAX_TIMEOUT_SECS} seconds (WeChat's three tries span about 15 s)"
            ),
        );
        return DEFAULT_TIMEOUT;
    }
    Duration::from_secs_f64(secs)
}

fn parse_action(key: &str, c: &mut Check, base_dir: &Path) -> Option<Action> {
    match key {
        "reply" => Some(Action::Reply(c.text("reply")?)),
        "file" => {
            let file = c.text("file")?;
            if has_placeholder(&file) {
                c.err(
                    "file",
                    format!(
                        "{file:?} holds a placeholder, and a file path is never filled in (a \
                         message must not choose which file is read): name one file, or use \
                         exec with a script that picks it"
                    ),
                );
                return None;
            }
            let path = base_dir.join(file.trim()).components().collect::<PathBuf>();
            if path.is_dir() {
                c.err(
                    "file",
                    format!("{} is a folder, not a file", path.display()),
                );
                return None;
            }
            match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() && !parent.is_dir() => {
                    c.err(
                        "file",
                        format!(
                            "the folder {} does not exist (create it for the file's writer)",
                            parent.display()
                        ),
                    );
                    None
                }
                _ => Some(Action::File(path)),
            }
        }
        "exec" => {
            let argv = c.strings("exec")?;
            let Some((program, args)) = argv.split_first() else {
                c.err(
                    "exec",
                    "must name a program: exec = [\"./script.sh\", \"{args}\"]",
                );
                return None;
            };
            if program.trim().is_empty() {
                c.err("exec", "the program (first item) must not be empty");
                return None;
            }
            if has_placeholder(program) {
                c.err(
                    "exec",
                    "the program (first item) must be fixed: placeholders go in the arguments",
                );
                return None;
            }
            match find_program(program, base_dir) {
                Ok(program) => Some(Action::Exec {
                    program,
                    args: args.to_vec(),
                }),
                Err(why) => {
                    c.err("exec", why);
                    None
                }
            }
        }
        "image" => Some(Action::Media(Reply::Image {
            media_id: c.text("image")?,
        })),
        "voice" => Some(Action::Media(Reply::Voice {
            media_id: c.text("voice")?,
        })),
        "video" => {
            let mut f = fields(
                c,
                "video",
                &["media_id", "title", "description"],
                "media_id",
            )?;
            Some(Action::Media(Reply::Video {
                media_id: f.take("media_id"),
                title: f.take("title"),
                description: f.take("description"),
            }))
        }
        "music" => {
            let mut f = fields(
                c,
                "music",
                &[
                    "title",
                    "description",
                    "music_url",
                    "hq_music_url",
                    "thumb_media_id",
                ],
                "thumb_media_id",
            )?;
            for url in ["music_url", "hq_music_url"] {
                if !f.get(url).is_empty() && !is_http(f.get(url)) {
                    c.err(
                        &format!("music.{url}"),
                        "must start with http:// or https://",
                    );
                    return None;
                }
            }
            Some(Action::Media(Reply::Music {
                title: f.take("title"),
                description: f.take("description"),
                music_url: f.take("music_url"),
                hq_music_url: f.take("hq_music_url"),
                thumb_media_id: f.take("thumb_media_id"),
            }))
        }
        "transfer_customer_service" => parse_transfer(c),
        _ => parse_news(c),
    }
}

/// `transfer_customer_service = true` (any customer-service account takes the user) or
/// `= "kf2001@gh_…"` (that account: WeChat's full form, the account's prefix `@` the Official
/// Account's WeChat id).
fn parse_transfer(c: &mut Check) -> Option<Action> {
    const KEY: &str = "transfer_customer_service";
    let kf_account = match c.table.get(KEY)? {
        Value::Boolean(true) => None,
        Value::Boolean(false) => {
            c.err(
                KEY,
                "false does nothing: set true (any customer-service account) or an account, or \
                 remove the command",
            );
            return None;
        }
        Value::String(s) => {
            let account = s.trim();
            let ok = account.split_once('@').is_some_and(|(prefix, id)| {
                !prefix.is_empty() && !id.is_empty() && !id.contains('@')
            }) && !account
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control());
            if !ok {
                c.err(
                    KEY,
                    format!(
                        "{s:?} is not a customer-service account: WeChat wants the full form, \
                         \"kf2001@gh_0123456789ab\" (the account's prefix @ the Official \
                         Account's WeChat id); or true for any account"
                    ),
                );
                return None;
            }
            Some(account.to_string())
        }
        other => {
            let t = other.type_str();
            c.err(
                KEY,
                format!("must be true or a customer-service account (\"kf2001@gh_…\"), not {t}"),
            );
            return None;
        }
    };
    Some(Action::Media(Reply::TransferCustomerService { kf_account }))
}

fn is_http(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// The text fields of an inline table such as `video = { media_id = "…", title = "…" }`.
struct Fields(Vec<(String, String)>);

impl Fields {
    fn get(&self, k: &str) -> &str {
        self.0
            .iter()
            .find(|(n, _)| n == k)
            .map_or("", |(_, v)| v.as_str())
    }

    fn take(&mut self, k: &str) -> String {
        self.0
            .iter_mut()
            .find(|(n, _)| n == k)
            .map(|(_, v)| std::mem::take(v))
            .unwrap_or_default()
    }
}

/// Reads table `value` (named `what` in errors) holding only text keys from `allowed`, of which
/// `required` must be non-empty.
fn table_fields(
    value: &Value,
    what: &str,
    allowed: &[&str],
    required: &str,
    errors: &mut Vec<(String, String)>,
) -> Option<Fields> {
    let Value::Table(t) = value else {
        errors.push((
            what.to_string(),
            format!(
                "must be a table such as {{ {required} = \"…\" }}, not {}",
                value.type_str()
            ),
        ));
        return None;
    };
    let before = errors.len();
    let mut out = Vec::new();
    for (k, v) in t {
        if !allowed.contains(&k.as_str()) {
            errors.push((
                format!("{what}.{k}"),
                format!("unknown key; allowed: {}", allowed.join(", ")),
            ));
            continue;
        }
        match v {
            Value::String(s) => out.push((k.clone(), s.clone())),
            other => errors.push((
                format!("{what}.{k}"),
                format!("must be text, not {}", other.type_str()),
            )),
        }
    }
    if !out
        .iter()
        .any(|(k, v)| k == required && !v.trim().is_empty())
    {
        errors.push((
            format!("{what}.{required}"),
            "is required and must not be empty".to_string(),
        ));
    }
    (errors.len() == before).then_some(Fields(out))
}

fn fields(c: &mut Check, key: &str, allowed: &[&str], required: &str) -> Option<Fields> {
    let value = c.table.get(key)?;
    let mut errors = Vec::new();
    let f = table_fields(value, key, allowed, required, &mut errors);
    for (k, why) in errors {
        c.err(&k, why);
    }
    f
}

fn parse_news(c: &mut Check) -> Option<Action> {
    let Some(Value::Array(items)) = c.table.get("news") else {
        let t = c.table.get("news").map_or("nothing", Value::type_str);
        c.err(
            "news",
            format!("must be a list of articles such as [{{ title = \"…\", url = \"https://…\" }}], not {t}"),
        );
        return None;
    };
    if items.is_empty() || items.len() > MAX_ARTICLES {
        c.err(
            "news",
            format!(
                "has {} articles; WeChat takes 1 to {MAX_ARTICLES}",
                items.len()
            ),
        );
        return None;
    }
    let mut articles = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let what = format!("news[{}]", i + 1);
        let Some(mut f) = table_fields(
            item,
            &what,
            &["title", "description", "url", "picurl"],
            "title",
            &mut errors,
        ) else {
            continue;
        };
        for url in ["url", "picurl"] {
            if !f.get(url).is_empty() && !is_http(f.get(url)) {
                errors.push((
                    format!("{what}.{url}"),
                    "must start with http:// or https://".into(),
                ));
            }
        }
        articles.push(Article {
            title: f.take("title"),
            description: f.take("description"),
            pic_url: f.take("picurl"),
            url: f.take("url"),
        });
    }
    if !errors.is_empty() {
        for (k, why) in errors {
            c.err(&k, why);
        }
        return None;
    }
    Some(Action::News(articles))
}

/// Resolves an `exec` program: a path (holding `/`) against `base_dir`, which must be an
/// executable file; a bare name must be an executable file in a `PATH` folder.
pub fn find_program(program: &str, base_dir: &Path) -> Result<PathBuf, String> {
    let executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let path = base_dir.join(program).components().collect::<PathBuf>();
        if !path.exists() {
            return Err(format!("program {} does not exist", path.display()));
        }
        if !executable(&path) {
            return Err(format!(
                "program {} is not an executable file (chmod +x it, and start scripts with #!)",
                path.display()
            ));
        }
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|dir| executable(&dir.join(program))))
        .unwrap_or(false);
    if on_path {
        Ok(PathBuf::from(program))
    } else {
        Err(format!(
            "program {program:?} is not on PATH; give its path (\"./{program}\" for one in the config folder)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<Vec<Command>, Vec<String>> {
        #[derive(serde::Deserialize)]
        struct F {
            command: Vec<Table>,
        }
        let f: F = toml::from_str(toml).unwrap();
        parse_commands(&f.command, Path::new("."))
    }

    fn vars(args: &str, openid: &str) -> Vars {
        Vars {
            captures: Captures {
                args: args.into(),
                groups: std::array::from_fn(|i| format!("g{i}")),
            },
            openid: openid.into(),
            content: "C".into(),
        }
    }

    #[test]
    fn user_text_as_a_shells_or_interpreters_code_is_found() {
        let run = |argv: &[&str]| {
            let args: Vec<String> = argv[1..].iter().map(|a| a.to_string()).collect();
            user_text_run_as_code(Path::new(argv[0]), &args).map(str::to_string)
        };
        for caught in [
            &["sh", "-c", "echo {args}"][..],
            &["/bin/dash", "-x", "-c", "grep {1} f"],
            &["bash", "-o", "pipefail", "-c", "x | grep {args}"],
            &["python3", "-W", "ignore", "-c", "print('{args}')"],
            &["bash", "--norc", "-ec", "{content}"],
            &["zsh", "-lc", "x{2}"],
            &["python3.11", "-c", "print('{args}')"],
            &["/usr/bin/perl", "-E", "say '{args}'"],
            &["node", "--eval", "{args}"],
            &["php", "-r", "echo '{args}';"],
        ] {
            assert!(run(caught).is_some(), "{caught:?}");
        }
        for fine in [
            &["sh", "-c", "./report.sh \"$1\"", "sh", "{args}"][..],
            &["sh", "./report.sh", "{args}"],
            &["sh", "-c", "./report.sh {openid}"],
            &["bash", "--", "-c", "x"],
            &["python3", "report.py", "-c", "{args}"],
            &["sh", "./report.sh", "-c", "{args}"],
            &["mytool", "-c", "{args}"],
            &["shred", "-c", "{args}"],
            &["sh", "-c"],
        ] {
            assert_eq!(run(fine), None, "{fine:?}");
        }
    }

    #[test]
    fn substitution_is_one_pass_and_leaves_other_braces() {
        let v = vars("{openid}", "oX");
        assert_eq!(
            substitute("a {args} {openid} {0}{9} {content} {x} {10} {", &v),
            "a {openid} oX g0g9 C {x} {10} {"
        );
        assert_eq!(substitute("{{args}}", &v), "{{openid}}");
        assert!(has_placeholder("x{1}"));
        assert!(!has_placeholder("{x}{}"));
    }

    #[test]
    fn name_prefix_and_regex_matching() {
        let cmds = parse(
            r#"
            [[command]]
            name = "Weather"
            aliases = ["天气"]
            reply = "x"
            [[command]]
            prefix = "查"
            reply = "{args}"
            [[command]]
            regex = '^价格\s+(\S+)$'
            reply = "{1}"
            "#,
        )
        .unwrap();
        assert!(cmds[0].match_text("weather").is_some());
        assert!(cmds[0].match_text("天气").is_some());
        assert!(cmds[0].match_text("weather now").is_none());
        let c = cmds[1].match_text("查 苹果  香蕉").unwrap();
        assert_eq!(c.args, "苹果  香蕉");
        assert_eq!(
            (c.groups[1].as_str(), c.groups[2].as_str()),
            ("苹果", "香蕉")
        );
        assert!(cmds[1].match_text("不查").is_none());
        let c = cmds[2].match_text("价格 苹果").unwrap();
        assert_eq!(
            (c.groups[0].as_str(), c.groups[1].as_str()),
            ("价格 苹果", "苹果")
        );
        assert!(cmds[2].match_text("价格").is_none());
    }

    #[test]
    fn prefix_is_ascii_case_insensitive_and_char_safe() {
        let cmds = parse("[[command]]\nprefix = \"q \"\nreply = \"x\"").unwrap();
        assert_eq!(cmds[0].match_text("Q abc").unwrap().args, "abc");
        // A prefix longer than a multi-byte text must not panic.
        assert!(cmds[0].match_text("数").is_none());
    }

    #[test]
    fn event_keys_match_raw_or_scene() {
        let cmds = parse(
            "[[command]]\nevent = \"subscribe\"\nkey = \"42\"\nreply = \"x\"\n[[command]]\nevent = \"CLICK\"\nreply = \"y\"",
        )
        .unwrap();
        assert!(cmds[0].match_event("subscribe", "qrscene_42").is_some());
        assert!(cmds[0].match_event("subscribe", "42").is_some());
        assert!(cmds[0].match_event("subscribe", "qrscene_43").is_none());
        assert!(cmds[0].match_event("SCAN", "42").is_none());
        assert!(cmds[1].match_event("click", "ANY").is_some());
    }

    #[test]
    fn every_problem_is_listed_with_command_and_key() {
        let errors = parse(
            r#"
            [[command]]
            name = "a"
            reply = "x"
            replly = "y"
            [[command]]
            name = "b"
            prefix = "c"
            reply = "x"
            [[command]]
            name = "d"
            reply = "x"
            file = "f"
            [[command]]
            regex = "("
            reply = "x"
            [[command]]
            name = "e"
            exec = ["sh"]
            timeout = 20
            [[command]]
            name = "f"
            news = [{ title = "1" }, { title = "2" }, { title = "3" }, { title = "4" }, { title = "5" }, { title = "6" }, { title = "7" }, { title = "8" }, { title = "9" }]
            [[command]]
            event = "CLIK"
            reply = "x"
            [[command]]
            reply = "no rule"
            [[command]]
            name = "g"
            [[command]]
            name = "ok"
            reply = "x"
            [[command]]
            name = "h"
            aliases = ["OK"]
            reply = "dup"
            "#,
        )
        .unwrap_err();
        let expect = [
            ("#1", "replly"),
            ("#2", "prefix"),
            ("#3", "file"),
            ("#4", "regex"),
            ("#5", "timeout"),
            ("#6", "news"),
            ("#7", "event"),
            ("#8", "match rule"),
            ("#9", "action"),
            ("#11", "aliases"),
        ];
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");
        for (n, k) in expect {
            assert!(
                errors.iter().any(|e| e.contains(n) && e.contains(k)),
                "no error names {n} and {k}: {errors:#?}"
            );
        }
    }

    #[test]
    fn an_event_already_answered_by_an_earlier_command_is_refused() {
        let errors = parse(
            r#"
            [[command]]
            event = "CLICK"
            key = "A"
            reply = "1"
            [[command]]
            event = "click"
            key = "A"
            reply = "2"
            [[command]]
            event = "VIEW"
            reply = "3"
            [[command]]
            event = "VIEW"
            key = "B"
            reply = "4"
            [[command]]
            event = "CLICK"
            key = "B"
            reply = "5"
            [[command]]
            event = "SCAN"
            key = "A"
            reply = "6"
            [[command]]
            event = "CLICK"
            reply = "7 (after keyed ones: answers the other keys)"
            "#,
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "command #2 (event click): key `key`: command #1 already answers this event and key",
                "command #4 (event view): key `key`: command #3 already answers this event with any key",
            ]
        );
    }

    #[test]
    fn errors_name_the_command_by_its_rule_and_position() {
        let errors = parse(
            r#"
            [[command]]
            name = "a"
            reply = "x"
            x = 1
            [[command]]
            prefix = "p"
            reply = "x"
            x = 1
            [[command]]
            regex = "r"
            reply = "x"
            x = 1
            [[command]]
            event = "CLICK"
            key = "K"
            reply = "x"
            x = 1
            [[command]]
            event = "CLICK"
            reply = "x"
            x = 1
            [[command]]
            reply = "x"
            x = 1
            "#,
        )
        .unwrap_err();
        let labels: Vec<&str> = errors
            .iter()
            .map(|e| e.split(": ").next().unwrap())
            .collect();
        assert_eq!(
            labels,
            [
                "command #1 (name \"a\")",
                "command #2 (prefix \"p\")",
                "command #3 (regex 'r')",
                "command #4 (event CLICK key \"K\")",
                "command #5 (event CLICK)",
                "command #6",
                "command #6",
            ]
        );
        assert_eq!(
            errors[0],
            format!(
                "command #1 (name \"a\"): key `x`: unknown key; a command may have: {}",
                KEYS.join(", ")
            )
        );
        let cmds = parse(
            "[[command]]\nname = \"a\"\nreply = \"x\"\n[[command]]\nname = \"b\"\nreply = \"y\"",
        )
        .unwrap();
        assert_eq!(cmds.iter().map(|c| c.index).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn a_file_path_takes_no_placeholder_and_a_prefix_no_leading_space() {
        let errors = parse("[[command]]\nprefix = \"取\"\nfile = \"data/{args}.txt\"").unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("key `file`: \"data/{args}.txt\" holds a placeholder, and a file path is never filled in"),
            "{errors:?}"
        );
        let errors = parse("[[command]]\nprefix = \" 查\"\nreply = \"x\"").unwrap_err();
        assert!(
            errors[0].contains("key `prefix`: \" 查\" starts with a space"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_prefix_ending_in_a_space_takes_any_space_there() {
        let cmds = parse("[[command]]\nprefix = \"查 \"\nreply = \"{args}\"").unwrap();
        let args = |said: &str| cmds[0].match_text(said).map(|c| c.args);
        assert_eq!(args("查 苹果").as_deref(), Some("苹果"));
        assert_eq!(
            args("查\u{3000}苹果").as_deref(),
            Some("苹果"),
            "full-width space"
        );
        assert_eq!(args("查\t苹果 红").as_deref(), Some("苹果 红"));
        assert_eq!(args("查苹果"), None, "the space is wanted");
        assert_eq!(args("查"), None);
        // Without a space in the prefix, none is wanted.
        let bare = parse("[[command]]\nprefix = \"查\"\nreply = \"{args}\"").unwrap();
        assert_eq!(
            bare[0].match_text("查苹果").map(|c| c.args).as_deref(),
            Some("苹果")
        );
        assert_eq!(
            bare[0]
                .match_text("查\u{3000}苹果")
                .map(|c| c.args)
                .as_deref(),
            Some("苹果")
        );
    }

    #[test]
    fn timeouts_are_at_least_a_tenth_and_at_most_14_seconds() {
        let exec = |t: &str| parse(&format!("[[command]]\nname = \"a\"\nexec = [\"sh\"]\n{t}"));
        assert_eq!(exec("").unwrap()[0].timeout, Duration::from_secs(4));
        for (t, secs) in [
            ("0.1", 0.1),
            ("0.5", 0.5),
            ("2", 2.0),
            ("14", 14.0),
            ("14.0", 14.0),
        ] {
            let cmds = exec(&format!("timeout = {t}")).unwrap();
            assert_eq!(cmds[0].timeout, Duration::from_secs_f64(secs), "{t}");
        }
        for t in ["0", "0.0", "-1", "1e-300", "0.09", "14.5", "15", "nan"] {
            let errors = exec(&format!("timeout = {t}")).unwrap_err();
            assert_eq!(errors.len(), 1, "{t}: {errors:?}");
            assert!(
                errors[0].contains("key `timeout`: ")
                    && errors[0].contains(" is out of range: at least 0.1 and at most 14 seconds"),
                "{t}: {errors:?}"
            );
        }
        let errors = parse("[[command]]\nname = \"a\"\nreply = \"x\"\ntimeout = 2").unwrap_err();
        assert_eq!(
            errors,
            ["command #1 (name \"a\"): key `timeout`: only applies to `exec` commands"]
        );
    }

    #[test]
    fn listings_cut_long_texts_at_40_characters() {
        assert_eq!(one_line(&"数".repeat(40), 40), "数".repeat(40));
        assert_eq!(
            one_line(&"数".repeat(41), 40),
            format!("{}…", "数".repeat(40))
        );
        assert_eq!(one_line("a\nb\tc", 40), "a b c");
        assert_eq!(one_line("", 40), "");
    }

    #[test]
    fn media_tables_keep_every_field_and_their_urls_must_be_http() {
        let cmds = parse(
            r#"
            [[command]]
            name = "v"
            video = { media_id = "M", title = "T", description = "D" }
            [[command]]
            name = "m"
            music = { title = "T", description = "D", music_url = "http://a", hq_music_url = "https://b", thumb_media_id = "TH" }
            [[command]]
            name = "m2"
            music = { thumb_media_id = "TH" }
            [[command]]
            name = "n"
            news = [{ title = "T", description = "D", url = "https://u", picurl = "http://p" }, { title = "T2" }]
            "#,
        )
        .unwrap();
        let media = |c: &Command| match &c.action {
            Action::Media(r) => r.clone(),
            other => panic!("{other:?}"),
        };
        let s = |t: &str| t.to_string();
        assert_eq!(
            media(&cmds[0]),
            Reply::Video {
                media_id: s("M"),
                title: s("T"),
                description: s("D")
            }
        );
        assert_eq!(
            media(&cmds[1]),
            Reply::Music {
                title: s("T"),
                description: s("D"),
                music_url: s("http://a"),
                hq_music_url: s("https://b"),
                thumb_media_id: s("TH")
            }
        );
        assert_eq!(
            media(&cmds[2]),
            Reply::Music {
                title: s(""),
                description: s(""),
                music_url: s(""),
                hq_music_url: s(""),
                thumb_media_id: s("TH")
            }
        );
        let Action::News(articles) = &cmds[3].action else {
            panic!("{:?}", cmds[3].action)
        };
        assert_eq!(
            articles,
            &[
                Article {
                    title: s("T"),
                    description: s("D"),
                    pic_url: s("http://p"),
                    url: s("https://u")
                },
                Article {
                    title: s("T2"),
                    ..Article::default()
                }
            ]
        );

        let errors = parse(
            r#"
            [[command]]
            name = "m"
            music = { thumb_media_id = "TH", music_url = "ftp://a" }
            [[command]]
            name = "m2"
            music = { thumb_media_id = "TH", hq_music_url = "www.b" }
            [[command]]
            name = "n"
            news = [{ title = "T", url = "ftp://u" }, { title = "T", picurl = "p.jpg" }]
            [[command]]
            name = "v"
            video = { media_id = " ", title = "T" }
            "#,
        )
        .unwrap_err();
        let http = "must start with http:// or https://";
        assert_eq!(
            errors,
            [
                format!("command #1 (name \"m\"): key `music.music_url`: {http}"),
                format!("command #2 (name \"m2\"): key `music.hq_music_url`: {http}"),
                format!("command #3 (name \"n\"): key `news[1].url`: {http}"),
                format!("command #3 (name \"n\"): key `news[2].picurl`: {http}"),
                "command #4 (name \"v\"): key `video.media_id`: is required and must not be empty"
                    .to_string(),
            ]
        );
        let eight = format!(
            "[[command]]\nname = \"n\"\nnews = [{}]",
            ["{ title = \"T\" }"; 8].join(", ")
        );
        let cmds = parse(&eight).unwrap();
        assert!(matches!(&cmds[0].action, Action::News(a) if a.len() == 8));
    }

    #[test]
    fn a_user_can_be_handed_to_customer_service_but_an_event_cannot() {
        let cmds = parse(
            r#"
            [[command]]
            name = "人工"
            transfer_customer_service = true
            [[command]]
            prefix = "找小王"
            transfer_customer_service = " xiaowang@gh_0123456789ab "
            "#,
        )
        .unwrap();
        let transfer = |c: &Command| match &c.action {
            Action::Media(Reply::TransferCustomerService { kf_account }) => kf_account.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(transfer(&cmds[0]), None);
        assert_eq!(
            transfer(&cmds[1]),
            Some("xiaowang@gh_0123456789ab".to_string())
        );
        assert_eq!(cmds[0].describe_action(), "transfer_customer_service reply");

        let errors = parse(
            r#"
            [[command]]
            name = "a"
            transfer_customer_service = false
            [[command]]
            name = "b"
            transfer_customer_service = "xiaowang"
            [[command]]
            name = "c"
            transfer_customer_service = "@gh_x"
            [[command]]
            name = "d"
            transfer_customer_service = "kf@"
            [[command]]
            name = "e"
            transfer_customer_service = "kf 1@gh_x"
            [[command]]
            name = "f"
            transfer_customer_service = "kf@gh@x"
            [[command]]
            name = "g"
            transfer_customer_service = 1
            [[command]]
            event = "CLICK"
            key = "KF"
            transfer_customer_service = true
            [[command]]
            name = "h"
            reply = "x"
            transfer_customer_service = true
            "#,
        )
        .unwrap_err();
        let not_account = |n: &str, v: &str| {
            format!(
                "command #{n} (name \"{}\"): key `transfer_customer_service`: {v:?} is not a \
                 customer-service account: WeChat wants the full form, \"kf2001@gh_0123456789ab\" \
                 (the account's prefix @ the Official Account's WeChat id); or true for any account",
                (b'a' + n.parse::<u8>().unwrap() - 1) as char
            )
        };
        assert_eq!(
            errors,
            [
                "command #1 (name \"a\"): key `transfer_customer_service`: false does nothing: set \
                 true (any customer-service account) or an account, or remove the command"
                    .to_string(),
                not_account("2", "xiaowang"),
                not_account("3", "@gh_x"),
                not_account("4", "kf@"),
                not_account("5", "kf 1@gh_x"),
                not_account("6", "kf@gh@x"),
                "command #7 (name \"g\"): key `transfer_customer_service`: must be true or a \
                 customer-service account (\"kf2001@gh_…\"), not integer"
                    .to_string(),
                "command #8 (event CLICK key \"KF\"): key `transfer_customer_service`: only what a \
                 user says can go to customer service, not an event: use `name`, `prefix` or \
                 `regex`"
                    .to_string(),
                "command #9 (name \"h\"): key `transfer_customer_service`: a command has exactly \
                 one action, but this one has reply and transfer_customer_service"
                    .to_string(),
            ]
        );
    }

    #[test]
    fn a_program_must_be_an_executable_file() {
        let dir = std::env::temp_dir().join(format!("wxmp-find-program-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for (name, mode) in [("x.sh", 0o755), ("u.sh", 0o700), ("n.sh", 0o644)] {
            std::fs::write(dir.join(name), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        std::fs::set_permissions(dir.join("sub"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.display();
        assert_eq!(find_program("./x.sh", &dir), Ok(dir.join("x.sh")));
        assert_eq!(find_program("./u.sh", &dir), Ok(dir.join("u.sh")));
        let not_exec = |p: &str| {
            Err(format!(
                "program {d}/{p} is not an executable file (chmod +x it, and start scripts with #!)"
            ))
        };
        assert_eq!(find_program("./n.sh", &dir), not_exec("n.sh"));
        assert_eq!(find_program("./sub", &dir), not_exec("sub"));
        assert_eq!(
            find_program("./missing.sh", &dir),
            Err(format!("program {d}/missing.sh does not exist"))
        );
        assert_eq!(find_program("sh", &dir), Ok(PathBuf::from("sh")));
        assert_eq!(
            find_program("no-such-program-wxmp", &dir),
            Err(
                "program \"no-such-program-wxmp\" is not on PATH; give its path \
                 (\"./no-such-program-wxmp\" for one in the config folder)"
                    .to_string()
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
