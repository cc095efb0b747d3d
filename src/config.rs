//! `wxmp.toml`: the server's settings, with environment overrides and a first-run file.
//!
//! Unknown keys are refused by name (a typo must not silently turn a feature off), and a missing
//! token is a refusal to start: wxmp never serves without checking signatures.

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The default file name, looked up in the working directory.
pub const DEFAULT_FILE: &str = "wxmp.toml";

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The Token entered in WeChat's admin page (3–32 letters or digits). Env `WXMP_TOKEN`.
    #[serde(default)]
    pub token: String,
    /// Address to listen on. Env `WXMP_LISTEN`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The URL path WeChat calls.
    #[serde(default = "default_path")]
    pub path: String,
    /// Threads running the recv loop.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// The account's AppID, for safe mode (安全模式). Env `WXMP_APP_ID`.
    #[serde(default)]
    pub app_id: Option<String>,
    /// The 43-character EncodingAESKey, for safe and compatible mode. Env `WXMP_ENCODING_AES_KEY`.
    #[serde(default)]
    pub encoding_aes_key: Option<String>,
    /// The EncodingAESKey before the last change in WeChat's admin page: a message that
    /// `encoding_aes_key` cannot open is tried with it, and its answer encrypted with it, as
    /// WeChat's FAQ asks of an account while messages sealed with either key may arrive. Env
    /// `WXMP_PREVIOUS_ENCODING_AES_KEY`.
    #[serde(default)]
    pub previous_encoding_aes_key: Option<String>,
    /// Refuse POSTs that are not encrypted (for an account in 安全模式, where WeChat sends no
    /// other): a plain POST's `signature` covers only the URL, so a URL read from a log could
    /// carry a forged body; an encrypted one's `msg_signature` covers the body. Needs
    /// `encoding_aes_key`. Default false: plain requests work beside encrypted ones.
    #[serde(default)]
    pub encrypted_only: bool,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Built-in replies.
    #[serde(default)]
    pub reply: ReplyConfig,
    /// Openids allowed to run `admin = true` commands.
    #[serde(default)]
    pub admins: Vec<String>,
    /// The `[[command]]` tables as written; [`crate::command::parse_commands`] checks them.
    #[serde(default, rename = "command")]
    pub commands: Vec<toml::Table>,
    /// Where this configuration was read from (`None` for built-in defaults); relative paths in
    /// commands are resolved against its folder.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// The `[log]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Folder of the log files. Env `WXMP_LOG_DIR`.
    #[serde(default = "default_log_dir")]
    pub dir: PathBuf,
    /// Rotate the log file when it would pass this size (`"500MB"`; units KB, MB, GB).
    #[serde(default = "default_max_size")]
    pub max_size: String,
    /// Delete rotated files older than this many days.
    #[serde(default = "default_keep_days")]
    pub keep_days: u64,
    /// `error`, `warn`, `info`, `debug` or `trace`.
    #[serde(default = "default_level")]
    pub level: String,
}

impl LogConfig {
    /// The settings for [`crate::logging::init`], or what is wrong with them.
    pub fn settings(&self) -> Result<crate::logging::LogSettings, Vec<String>> {
        let mut errors = Vec::new();
        let max_size = crate::logging::parse_size(&self.max_size)
            .map_err(|e| errors.push(format!("[log] max_size: {e}")))
            .unwrap_or(0);
        let level = self
            .level
            .parse::<log::LevelFilter>()
            .map_err(|_| {
                errors.push(format!(
                    "[log] level = {:?} must be one of error, warn, info, debug, trace",
                    self.level
                ))
            })
            .unwrap_or(log::LevelFilter::Info);
        if self.keep_days == 0 {
            errors.push("[log] keep_days must be at least 1".into());
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(crate::logging::LogSettings {
            dir: self.dir.clone(),
            max_size,
            keep_days: self.keep_days,
            level,
        })
    }
}

/// The `[reply]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyConfig {
    /// The answer to a message no command matches.
    #[serde(default = "default_reply")]
    pub default: String,
    /// The answer to a `subscribe` event.
    #[serde(default = "default_welcome")]
    pub welcome: String,
}

/// Loopback by default: tiny_http cannot bound request heads or time out slow clients, so wxmp
/// belongs behind nginx (README, "Limits"); listening on all interfaces is a deliberate choice.
fn default_listen() -> String {
    "127.0.0.1:8880".into()
}
fn default_path() -> String {
    "/".into()
}
fn default_workers() -> usize {
    4
}
fn default_log_dir() -> PathBuf {
    "log".into()
}
fn default_max_size() -> String {
    "500MB".into()
}
fn default_keep_days() -> u64 {
    10
}
fn default_level() -> String {
    "info".into()
}
fn default_reply() -> String {
    "对不起，我没有看懂你的信息~".into()
}
fn default_welcome() -> String {
    "感谢关注！".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            dir: default_log_dir(),
            max_size: default_max_size(),
            keep_days: default_keep_days(),
            level: default_level(),
        }
    }
}

impl Default for ReplyConfig {
    fn default() -> Self {
        ReplyConfig {
            default: default_reply(),
            welcome: default_welcome(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            token: String::new(),
            listen: default_listen(),
            path: default_path(),
            workers: default_workers(),
            app_id: None,
            encoding_aes_key: None,
            previous_encoding_aes_key: None,
            encrypted_only: false,
            log: LogConfig::default(),
            reply: ReplyConfig::default(),
            admins: Vec::new(),
            commands: Vec::new(),
            source: None,
        }
    }
}

/// Environment variables that override the file, in the order they are applied.
pub const ENV_OVERRIDES: [&str; 6] = [
    "WXMP_TOKEN",
    "WXMP_LISTEN",
    "WXMP_LOG_DIR",
    "WXMP_APP_ID",
    "WXMP_ENCODING_AES_KEY",
    "WXMP_PREVIOUS_ENCODING_AES_KEY",
];

impl Config {
    /// The settings changed in `newer` that a reload cannot apply, by their names in the file:
    /// the listener, the worker threads and the logger are set up once, at start. A reload
    /// names them in its log line, so that a changed `listen` is not taken for applied.
    pub fn restart_only_changes(&self, newer: &Config) -> Vec<&'static str> {
        use crate::logging::LogSettings;
        // Compared as parsed ("500MB" and "500 MB" are the same size); both files were checked.
        let logs = self.log.settings().ok().zip(newer.log.settings().ok());
        let log_changed = |differs: fn(&LogSettings, &LogSettings) -> bool| {
            logs.as_ref().is_some_and(|(a, b)| differs(a, b))
        };
        [
            ("listen", self.listen != newer.listen),
            ("workers", self.workers != newer.workers),
            ("[log] dir", log_changed(|a, b| a.dir != b.dir)),
            (
                "[log] max_size",
                log_changed(|a, b| a.max_size != b.max_size),
            ),
            (
                "[log] keep_days",
                log_changed(|a, b| a.keep_days != b.keep_days),
            ),
            ("[log] level", log_changed(|a, b| a.level != b.level)),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }

    /// Parses a TOML document; the error names the line, the column and what is wrong, and never
    /// quotes the file (a mistyped `token` or `encoding_aes_key` line would put the secret into
    /// the log, where a reload's error goes).
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| toml_error(text, &e))
    }

    /// Reads and parses the file at `path`, without applying the environment or validating.
    pub fn read(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file '{}': {e}", path.display()))?;
        let mut config = Config::from_toml(&text)
            .map_err(|e| format!("config file '{}': {e}", path.display()))?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// Applies [`ENV_OVERRIDES`] from `env` (a lookup function, so tests need not touch the
    /// process environment).
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        if let Some(v) = env("WXMP_TOKEN") {
            self.token = v;
        }
        if let Some(v) = env("WXMP_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = env("WXMP_LOG_DIR") {
            self.log.dir = v.into();
        }
        if let Some(v) = env("WXMP_APP_ID") {
            self.app_id = Some(v);
        }
        if let Some(v) = env("WXMP_ENCODING_AES_KEY") {
            self.encoding_aes_key = Some(v);
        }
        if let Some(v) = env("WXMP_PREVIOUS_ENCODING_AES_KEY") {
            self.previous_encoding_aes_key = Some(v);
        }
    }

    /// Checks the values; every problem is listed, each saying what to set.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.token.is_empty() {
            errors.push(
                "token is missing: set `token = \"...\"` in wxmp.toml (the Token from WeChat's \
                 admin page, 基本配置) or the WXMP_TOKEN environment variable"
                    .to_string(),
            );
        } else if !valid_token(&self.token) {
            errors.push(
                "token must be 3 to 32 letters or digits (WeChat's rule for the Token field)"
                    .into(),
            );
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            errors.push(format!(
                "listen = {:?} is not an address:port such as \"127.0.0.1:8880\"",
                self.listen
            ));
        }
        if !self.path.starts_with('/') || self.path.contains(['?', '#', ' ']) {
            errors.push(format!(
                "path = {:?} must start with '/' and hold no '?', '#' or spaces",
                self.path
            ));
        } else if self.path == "/healthz" {
            // Answered `ok` before the path is looked at: WeChat's verification would never pass.
            errors
                .push("path = \"/healthz\" is wxmp's own health check: choose another path".into());
        }
        if self.workers == 0 || self.workers > 256 {
            errors.push(format!(
                "workers = {} must be between 1 and 256",
                self.workers
            ));
        }
        match self.crypt() {
            Err(e) => errors.push(e),
            Ok(None) if self.encrypted_only => errors.push(
                "encrypted_only = true needs encoding_aes_key and app_id (safe mode): without \
                 them no message could be read"
                    .into(),
            ),
            Ok(_) => {}
        }
        if let Err(e) = self.previous_crypt() {
            errors.push(e);
        }
        if let Err(e) = self.log.settings() {
            errors.extend(e);
        }
        if self.reply.default.trim().is_empty() {
            errors.push(
                "[reply] default must not be empty (WeChat shows an error for empty text)".into(),
            );
        }
        if self.reply.welcome.trim().is_empty() {
            errors.push(
                "[reply] welcome must not be empty (WeChat shows an error for empty text)".into(),
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The safe-mode cipher when `encoding_aes_key` is set (`Ok(None)` for a plain-mode account),
    /// or what is wrong with the key and AppID.
    pub fn crypt(&self) -> Result<Option<crate::crypto::MsgCrypt>, String> {
        let key = self.encoding_aes_key.as_deref().filter(|k| !k.is_empty());
        let app_id = self.app_id.as_deref().filter(|a| !a.is_empty());
        match (key, app_id) {
            (None, _) => Ok(None),
            (Some(_), None) => Err("encoding_aes_key is set but app_id is missing: set app_id \
                 (开发者ID AppID, wx…) or WXMP_APP_ID; safe mode checks it in every message"
                .into()),
            (Some(key), Some(app_id)) => crate::crypto::MsgCrypt::new(&self.token, key, app_id)
                .map(Some)
                .map_err(|e| format!("encoding_aes_key: {e}")),
        }
    }

    /// The cipher of `previous_encoding_aes_key` when it is set (`Ok(None)` when not), or what is
    /// wrong with it: it needs `encoding_aes_key` (and so `app_id`) beside it.
    pub fn previous_crypt(&self) -> Result<Option<crate::crypto::MsgCrypt>, String> {
        let Some(key) = self
            .previous_encoding_aes_key
            .as_deref()
            .filter(|k| !k.is_empty())
        else {
            return Ok(None);
        };
        let current = self.encoding_aes_key.as_deref().filter(|k| !k.is_empty());
        match (current, self.app_id.as_deref().filter(|a| !a.is_empty())) {
            (None, _) => Err(
                "previous_encoding_aes_key is set but encoding_aes_key is not: set \
                 encoding_aes_key to the key now in WeChat's admin page (基本配置)"
                    .into(),
            ),
            // crypt() reports the missing app_id.
            (Some(_), None) => Ok(None),
            (Some(_), Some(app_id)) => crate::crypto::MsgCrypt::new(&self.token, key, app_id)
                .map(Some)
                .map_err(|e| format!("previous_encoding_aes_key: {e}")),
        }
    }

    /// The folder relative paths are resolved against: the config file's folder, or `.`.
    pub fn base_dir(&self) -> PathBuf {
        match self.source.as_deref().and_then(Path::parent) {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}

/// WeChat's rule for the Token: 3–32 ASCII letters or digits.
pub fn valid_token(token: &str) -> bool {
    (3..=32).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Which file to use: the `--config` argument, else `WXMP_CONFIG`, else `./wxmp.toml`.
pub fn resolve_path(cli: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> PathBuf {
    cli.map(Path::to_path_buf)
        .or_else(|| env("WXMP_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_FILE))
}

/// A random token of 32 letters and digits from the operating system's generator.
pub fn generate_token() -> Result<String, String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut token = String::with_capacity(32);
    let mut buf = [0u8; 64];
    while token.len() < 32 {
        getrandom::fill(&mut buf).map_err(|e| format!("no randomness from the OS: {e}"))?;
        // Rejection sampling keeps every character equally likely (248 = 4 * 62).
        for b in buf.iter().filter(|&&b| b < 248) {
            if token.len() < 32 {
                token.push(ALPHABET[usize::from(*b) % ALPHABET.len()] as char);
            }
        }
    }
    Ok(token)
}

/// Keys whose values must not reach a log, even in an error about them.
const SECRET_KEYS: [&str; 3] = ["token", "encoding_aes_key", "previous_encoding_aes_key"];

/// `e` without the quoted source line toml's `Display` adds; on a line that sets a secret, every
/// word of its value and every value the message quotes (serde's message quotes a value of the
/// wrong type as parsed: `token = 1_234` shows as `1234`) are blanked out too.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let mut message = e.message().trim().replace('\n', "; ");
    let Some(start) = e.span().map(|span| span.start) else {
        return message;
    };
    let before = text.get(..start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let secret = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('='))
        .filter(|(key, _)| SECRET_KEYS.contains(&key.trim().trim_matches(['"', '\''])));
    if let Some((_, value)) = secret {
        for word in value.split(|c: char| c.is_whitespace() || "\"'`#".contains(c)) {
            if word.len() >= 3 {
                message = message.replace(word, "…");
            }
        }
        message = blank_quoted(&message);
    }
    format!("line {line}, column {column}: {message}")
}

/// `message` with the text between each pair of backquotes or double quotes replaced by `…`
/// when it is 3 characters or more (an expected `'` stays: it says what to type).
fn blank_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = &rest[open..open + 1];
        let after = &rest[open + 1..];
        let Some(close) = after.find(quote) else {
            break;
        };
        out.push_str(&rest[..=open]);
        let inner = &after[..close];
        out.push_str(if inner.chars().count() >= 3 {
            "…"
        } else {
            inner
        });
        out.push_str(quote);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The commented file written on first run, holding `token`.
pub fn first_run_file(token: &str) -> String {
    format!(
        r#"# wxmp configuration (written on first run; edit freely, then restart or send SIGHUP; listen,
# workers and [log] need a restart). Every key is optional except token. Environment variables
# override the file: WXMP_TOKEN, WXMP_LISTEN, WXMP_LOG_DIR, WXMP_APP_ID, WXMP_ENCODING_AES_KEY,
# WXMP_PREVIOUS_ENCODING_AES_KEY; WXMP_CONFIG picks another file.

# The Token to enter in WeChat's admin page (设置与开发 → 基本配置 → 服务器配置).
token = "{token}"

# Where to listen. Loopback: nginx in front serves HTTPS on 443 and stops slow or oversized
# requests that wxmp's HTTP library cannot (README, "Limits"). "0.0.0.0:8880" exposes wxmp
# directly: only for a quick test, never for production.
listen = "{listen}"
# The URL path WeChat calls (nginx may proxy e.g. /wx/ to it).
path = "/"
# Threads answering requests.
workers = 4

# Safe mode (安全模式) or compatible mode (兼容模式): the AppID and the 43-character
# EncodingAESKey from the same admin page. Leave commented out for plain mode (明文模式).
# app_id = "wx..."
# encoding_aes_key = "..."
# After changing the EncodingAESKey in the admin page, the key before it, for the messages still
# sealed with it (remove it once none arrive).
# previous_encoding_aes_key = "..."
# In safe mode WeChat sends every message encrypted: refuse plain ones (a URL read from a log
# cannot then carry a forged body). Leave false in compatible mode.
# encrypted_only = true

# Openids allowed to run `admin = true` commands; send `whoami` to the account to see yours.
# admins = ["o..."]

[log]
# Relative to the folder wxmp is started in (command paths are relative to this file's folder).
# wxmp.state is kept here too, for the next start: at a stop, and once a second while
# something changes (README "Restarts").
dir = "log"
# Rotate wxmp.log when it would pass this size; delete rotated files older than keep_days.
max_size = "500MB"
keep_days = 10
level = "info"

[reply]
# The answer to a message nothing else matches.
default = "{default}"
# The answer to a new follower.
welcome = "{welcome}"

# Commands, tried in order (README "Commands"; wxmp.example.toml shows every kind). E.g. a
# crawler writes data/news.txt and the owner sends 新闻:
# [[command]]
# name = "新闻"
# file = "data/news.txt"
"#,
        listen = default_listen(),
        default = default_reply(),
        welcome = default_welcome(),
    )
}

/// Writes the first-run file at `path` with a fresh token and returns the token. Refuses to
/// overwrite an existing file. The file is readable by its owner only (mode 0600): it holds
/// the token (the deploy steps give wxmp's group read access, README "Deploy").
pub fn write_first_run(path: &Path) -> Result<String, String> {
    let token = generate_token()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| format!("cannot create '{}': {e}", path.display()))?;
    std::io::Write::write_all(&mut file, first_run_file(&token).as_bytes())
        .map_err(|e| format!("cannot write '{}': {e}", path.display()))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_to_an_almost_empty_file() {
        let c = Config::from_toml("token = \"abc123\"").unwrap();
        assert_eq!(c.listen, "127.0.0.1:8880");
        assert_eq!(c.path, "/");
        assert_eq!(c.workers, 4);
        assert_eq!(c.log.dir, PathBuf::from("log"));
        let log = c.log.settings().unwrap();
        assert_eq!(
            (log.max_size, log.keep_days, log.level),
            (500 << 20, 10, log::LevelFilter::Info)
        );
        assert_eq!(c.reply.default, "对不起，我没有看懂你的信息~");
        assert_eq!(c.reply.welcome, "感谢关注！");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::from_toml("token = \"abc\"\ntokn = \"x\"").unwrap_err();
        assert!(e.contains("tokn"), "{e}");
        let e = Config::from_toml("token = \"abc\"\n[log]\ndirr = \"x\"").unwrap_err();
        assert!(e.contains("dirr"), "{e}");
    }

    #[test]
    fn missing_token_says_what_to_set() {
        let errors = Config::from_toml("").unwrap().validate().unwrap_err();
        assert!(errors[0].contains("WXMP_TOKEN"), "{errors:?}");
    }

    #[test]
    fn env_overrides_file() {
        let mut c = Config::from_toml("token = \"fromfile\"").unwrap();
        c.apply_env(|k| match k {
            "WXMP_TOKEN" => Some("fromenv".into()),
            "WXMP_LISTEN" => Some("127.0.0.1:1".into()),
            "WXMP_LOG_DIR" => Some("/tmp/x".into()),
            _ => None,
        });
        assert_eq!(
            (c.token.as_str(), c.listen.as_str()),
            ("fromenv", "127.0.0.1:1")
        );
        assert_eq!(c.log.dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn first_run_file_parses_and_validates() {
        let token = generate_token().unwrap();
        assert!(valid_token(&token));
        assert_ne!(token, generate_token().unwrap());
        let c = Config::from_toml(&first_run_file(&token)).unwrap();
        assert_eq!(c.token, token);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn encrypted_only_needs_a_key() {
        let base = "token = \"abc\"\nencrypted_only = true\n";
        let plain = Config::from_toml(base).unwrap();
        let errors = plain.validate().unwrap_err();
        assert!(
            errors[0].starts_with("encrypted_only = true needs"),
            "{errors:?}"
        );
        let safe = Config::from_toml(&format!(
            "{base}app_id = \"wx2c2769f8efd9abc2\"\nencoding_aes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\""
        ))
        .unwrap();
        assert!(safe.validate().is_ok());
        assert!(!Config::from_toml("token = \"abc\"").unwrap().encrypted_only);
    }

    #[test]
    fn safe_mode_key_and_app_id_are_checked() {
        let base = "token = \"spamtest\"\n";
        let ok = Config::from_toml(&format!(
            "{base}app_id = \"wx2c2769f8efd9abc2\"\nencoding_aes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\""
        ))
        .unwrap();
        assert!(ok.validate().is_ok());
        assert!(ok.crypt().unwrap().is_some());
        let short = Config::from_toml(&format!(
            "{base}app_id = \"wx1\"\nencoding_aes_key = \"abc\""
        ))
        .unwrap();
        assert!(short.validate().unwrap_err()[0].contains("encoding_aes_key"));
        let no_app = Config::from_toml(&format!(
            "{base}encoding_aes_key = \"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG\""
        ))
        .unwrap();
        assert!(no_app.validate().unwrap_err()[0].contains("app_id"));
        assert!(Config::from_toml(base).unwrap().crypt().unwrap().is_none());
    }

    #[test]
    fn toml_errors_say_where_and_never_quote_a_secret() {
        let cases = [
            ("tokne = \"S3cretTokenValue\"", "S3cretTokenValue", "tokne"),
            ("token = 12345678", "12345678", "line 1, column 9"),
            (
                "token = \"abc\"\nencoding_aes_key = Zm9vYmFyU2VjcmV0S2V5MDEy # key",
                "Zm9vYmFy",
                "line 2",
            ),
            (
                "token = \"abc\"\nencoding_aes_key = [\"Zm9vYmFyU2VjcmV0\"]",
                "Zm9vYmFy",
                "line 2",
            ),
            (
                "token = \"abc\"\nprevious_encoding_aes_key = 87654321",
                "87654321",
                "line 2",
            ),
        ];
        for (text, secret, needle) in cases {
            let e = Config::from_toml(text).unwrap_err();
            assert!(!e.contains(secret), "{e}");
            assert!(e.contains(needle), "{e}");
        }
        // Shown as parsed, not as written.
        for (text, parsed) in [
            ("token = 1_234_5678", "12345678"),
            ("token = 0xdeadbeef", "3735928559"),
            ("token = 1234e5", "123400000"),
        ] {
            let e = Config::from_toml(text).unwrap_err();
            assert!(!e.contains(parsed), "{e}");
            assert!(e.contains("line 1"), "{e}");
        }
        // What to type is not a secret.
        let e = Config::from_toml("token = 'abc").unwrap_err();
        assert!(e.contains("`'`"), "{e}");
        // Other lines keep what serde says of their values.
        let e = Config::from_toml("token = \"abc\"\nworkers = \"four\"").unwrap_err();
        assert!(e.contains("line 2") && e.contains("four"), "{e}");
    }

    #[test]
    fn bad_values_are_all_listed() {
        let c = Config::from_toml(
            "token = \"a b\"\nlisten = \"nope\"\npath = \"x\"\nworkers = 0\n[log]\nmax_size = \"5XB\"\nlevel = \"loud\"\nkeep_days = 0",
        )
        .unwrap();
        assert_eq!(c.validate().unwrap_err().len(), 7);
    }

    #[test]
    fn the_health_check_path_is_not_wechats() {
        let c = Config::from_toml("token = \"abc\"\npath = \"/healthz\"").unwrap();
        let errors = c.validate().unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("health check"), "{errors:?}");
        let c = Config::from_toml("token = \"abc\"\npath = \"/wx/healthz\"").unwrap();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn workers_are_1_to_256() {
        let workers = |n: usize| {
            Config::from_toml(&format!("token = \"abc\"\nworkers = {n}"))
                .unwrap()
                .validate()
        };
        assert_eq!(workers(1), Ok(()));
        assert_eq!(workers(256), Ok(()));
        for n in [0, 257, 1000] {
            assert_eq!(
                workers(n),
                Err(vec![format!("workers = {n} must be between 1 and 256")])
            );
        }
    }

    #[test]
    fn relative_paths_are_resolved_against_the_config_folder() {
        let from = |source: Option<&str>| {
            let c = Config {
                source: source.map(PathBuf::from),
                ..Config::default()
            };
            c.base_dir()
        };
        assert_eq!(from(None), PathBuf::from("."));
        assert_eq!(from(Some("wxmp.toml")), PathBuf::from("."));
        assert_eq!(from(Some("conf/wxmp.toml")), PathBuf::from("conf"));
        assert_eq!(
            from(Some("/etc/wxmp/wxmp.toml")),
            PathBuf::from("/etc/wxmp")
        );
    }

    #[test]
    fn the_config_file_is_the_argument_then_wxmp_config_then_wxmp_toml() {
        let env = |k: &str| (k == "WXMP_CONFIG").then(|| "from/env.toml".to_string());
        assert_eq!(
            resolve_path(Some(Path::new("cli.toml")), env),
            PathBuf::from("cli.toml")
        );
        assert_eq!(resolve_path(None, env), PathBuf::from("from/env.toml"));
        assert_eq!(resolve_path(None, |_| None), PathBuf::from("wxmp.toml"));
    }

    #[test]
    fn generated_tokens_use_every_character_evenly() {
        // 10 000 tokens: each of the 62 characters is expected 5161 times (sd ~71). A byte
        // 248 let through would give 'A' 5/249 of the draws: ~6426.
        let mut counts = std::collections::HashMap::new();
        for _ in 0..10_000 {
            let token = generate_token().unwrap();
            assert_eq!(token.len(), 32);
            for c in token.chars() {
                *counts.entry(c).or_insert(0u32) += 1;
            }
        }
        assert_eq!(counts.len(), 62, "{counts:?}");
        assert!(
            counts.values().all(|&n| (4700..5650).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn restart_only_changes_are_named_as_in_the_file() {
        let a = Config::from_toml("token = \"abc\"").unwrap();
        assert_eq!(a.restart_only_changes(&a.clone()), Vec::<&str>::new());
        let b = Config::from_toml(
            "token = \"xyz\"\nlisten = \"127.0.0.1:1\"\nworkers = 2\n[log]\ndir = \"l2\"\nmax_size = \"1MB\"\nkeep_days = 3\nlevel = \"debug\"",
        )
        .unwrap();
        assert_eq!(
            a.restart_only_changes(&b),
            [
                "listen",
                "workers",
                "[log] dir",
                "[log] max_size",
                "[log] keep_days",
                "[log] level"
            ]
        );
        let same = Config::from_toml("token = \"abc\"\n[log]\nmax_size = \"500 MB\"").unwrap();
        assert_eq!(a.restart_only_changes(&same), Vec::<&str>::new());
    }

    #[test]
    fn quoted_texts_of_3_characters_or_more_are_blanked_pair_by_pair() {
        assert_eq!(
            blank_quoted("a `xy` b \"abcd\" c `'` d `efg"),
            "a `xy` b \"…\" c `'` d `efg"
        );
        assert_eq!(
            Config::from_toml("token = 12345678").unwrap_err(),
            "line 1, column 9: invalid type: integer `…`, expected a string"
        );
    }
}
