//! The `wxmp` command: `serve` (the default), `check`, `send`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wxmp::config::{self, Config};
use wxmp::router::{Handler, Router};
use wxmp::server::Server;

/// How often the watchdog probes `GET /healthz` on our own port.
const WATCHDOG_INTERVAL: Duration = Duration::from_secs(10);
/// Failed probes in a row before wxmp exits to be restarted.
const WATCHDOG_FAILURES: u32 = 3;

const USAGE: &str = "\
wxmp: a WeChat Official Account message server

USAGE:
    wxmp [serve] [--config FILE]    run the server (default: ./wxmp.toml; first run writes it)
    wxmp check [--config FILE]      validate the config file and print what it sets up
    wxmp send [OPTIONS] TEXT        send the server a signed message as WeChat would, print
                                    the reply (also --event, --image, --verify, --raw;
                                    see `wxmp send --help`)
    wxmp --help | --version

ENVIRONMENT:
    WXMP_CONFIG  config file     WXMP_TOKEN  token      WXMP_LISTEN  listen address
    WXMP_LOG_DIR log folder      WXMP_APP_ID app_id     WXMP_ENCODING_AES_KEY  encoding_aes_key
    WXMP_PREVIOUS_ENCODING_AES_KEY  previous_encoding_aes_key
";

/// What `wxmp check` says of the message encryption the config sets up (never a key).
fn encryption(config: &Config) -> String {
    // The same decisions `serve` makes: the ciphers a valid config yields.
    match config.crypt() {
        Ok(Some(crypt)) => format!(
            "encryption: safe and compatible mode for app_id {}{}{}",
            crypt.app_id(),
            if matches!(config.previous_crypt(), Ok(Some(_))) {
                ", the previous key tried too"
            } else {
                ""
            },
            if config.encrypted_only {
                "; plain POSTs refused (encrypted_only)"
            } else {
                "; plain POSTs answered too"
            }
        ),
        _ => "encryption: none (plain mode; compatible-mode messages answered in plain)".into(),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Parsed command line.
struct Cli {
    command: String,
    config: Option<PathBuf>,
}

fn parse_cli(args: &[String]) -> Result<Cli, String> {
    let mut cli = Cli {
        command: "serve".into(),
        config: None,
    };
    let mut it = args.iter();
    let mut seen_command = false;
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                let f = it.next().ok_or("--config needs a file name")?;
                cli.config = Some(PathBuf::from(f));
            }
            a if a.starts_with("--config=") => cli.config = Some(PathBuf::from(&a[9..])),
            "serve" | "check" if !seen_command => {
                cli.command = arg.clone();
                seen_command = true;
            }
            other => return Err(format!("unknown argument '{other}'; see `wxmp --help`")),
        }
    }
    Ok(cli)
}

/// Reads, overrides and validates the configuration; every error is listed.
fn load(path: &std::path::Path) -> Result<(Config, Router), Vec<String>> {
    let mut config = Config::read(path).map_err(|e| vec![e])?;
    config.apply_env(env);
    let mut errors = config.validate().err().unwrap_or_default();
    let router = match Router::from_config(&config) {
        Ok(r) => Some(r),
        Err(e) => {
            errors.extend(e);
            None
        }
    };
    match router {
        Some(router) if errors.is_empty() => Ok((config, router)),
        _ => Err(errors),
    }
}

fn print_errors(path: &std::path::Path, errors: &[String]) {
    eprintln!("wxmp: {} has {} problem(s):", path.display(), errors.len());
    for e in errors {
        eprintln!("  - {e}");
    }
}

fn first_run(path: &std::path::Path) -> Result<(), String> {
    let token = config::write_first_run(path)?;
    eprintln!(
        "wxmp: no config file found, so I wrote {path} with a new random token:\n\n    token = {token}\n\n\
         To connect your Official Account:\n\
         1. Put wxmp behind HTTPS (nginx proxying a path such as /wx/ to this server; see deploy/).\n\
         2. In mp.weixin.qq.com → 设置与开发 → 基本配置 → 服务器配置, set URL to https://YOUR-DOMAIN/wx/\n\
         \x20  and Token to the token above; choose 明文模式 (plain mode).\n\
         3. Click 提交 (submit) while wxmp runs: WeChat calls the URL and wxmp answers it.\n",
        path = path.display()
    );
    Ok(())
}

fn init_logging(config: &Config) -> Result<(), String> {
    let settings = config.log.settings().map_err(|e| e.join("; "))?;
    wxmp::logging::init(&settings)
}

fn serve(path: &std::path::Path) -> ExitCode {
    if !path.exists() && env("WXMP_TOKEN").is_none() {
        if let Err(e) = first_run(path) {
            eprintln!("wxmp: {e}");
            return ExitCode::FAILURE;
        }
    }
    let (config, router) = if path.exists() {
        match load(path) {
            Ok(loaded) => loaded,
            Err(errors) => {
                print_errors(path, &errors);
                return ExitCode::FAILURE;
            }
        }
    } else {
        // No file but WXMP_TOKEN: built-in defaults plus the environment.
        let mut config = Config::default();
        config.apply_env(env);
        if let Err(errors) = config.validate() {
            print_errors(path, &errors);
            return ExitCode::FAILURE;
        }
        let router = match Router::from_config(&config) {
            Ok(r) => r,
            Err(errors) => {
                print_errors(path, &errors);
                return ExitCode::FAILURE;
            }
        };
        (config, router)
    };
    if let Err(e) = init_logging(&config) {
        eprintln!("wxmp: {e}");
        return ExitCode::FAILURE;
    }
    match wxmp::watchdog::raise_fd_limit() {
        Ok((before, after)) if after > before => {
            wxmp::exec::give_programs_fd_limit(before);
            log::info!("open-file limit raised from {before} to {after}")
        }
        Ok(_) => {}
        Err(e) => log::warn!("cannot raise the open-file limit: {e}"),
    }
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for (sig, flag) in [
        (signal_hook::consts::SIGTERM, &stop),
        (signal_hook::consts::SIGINT, &stop),
        (signal_hook::consts::SIGHUP, &hup),
    ] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(flag)) {
            log::error!("cannot handle signal {sig}: {e}");
            return ExitCode::FAILURE;
        }
    }
    // A program ended by the same SIGTERM (systemd signals the whole service unless
    // KillMode=mixed) was stopped by the stop: its retry runs it again after the restart.
    wxmp::exec::watch_stop_signal(Arc::clone(&stop));
    let started = config.clone();
    // What the last process handed on (retries' answers, signed URLs, late results), taken
    // once the address is bound.
    let state_path = wxmp::state::path_in(&config.log.dir);
    let take_state = || match wxmp::state::take(&state_path) {
        Ok(saved) => saved,
        Err(e) => {
            log::warn!("{e}; starting without the last stop's state");
            None
        }
    };
    let server = match Server::start_with_state(config, Arc::new(router), take_state) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            eprintln!("wxmp: {e}");
            return ExitCode::FAILURE;
        }
    };
    let source = if server.from_systemd() {
        "systemd's socket; `listen` is not used".to_string()
    } else {
        format!("configured {}", started.listen)
    };
    log::info!(
        "wxmp {} listening on {} ({source}), WeChat path {}, config {}",
        env!("CARGO_PKG_VERSION"),
        server.addr(),
        started.path,
        path.display()
    );
    if server.from_systemd() && started.listen.parse() != Ok(server.addr()) {
        log::warn!(
            "systemd's socket is {} but `listen` in {} is {}: set them alike, as `wxmp send` \
             goes by `listen`",
            server.addr(),
            path.display(),
            started.listen
        );
    }
    if !server.addr().ip().is_loopback() {
        log::warn!(
            "{} can be reached from other machines: wxmp's HTTP library cannot stop slow, huge \
             or pipelining clients; in production listen on 127.0.0.1 behind nginx \
             (deploy/nginx.conf; README, Limits)",
            server.addr()
        );
    }
    let watchdog = wxmp::watchdog::spawn(
        wxmp::watchdog::probe_addr(server.addr()),
        server.listener_fd(),
        WATCHDOG_INTERVAL,
        WATCHDOG_FAILURES,
        Arc::clone(&stop),
    );
    let mut fatal = None;
    let mut checkpoint = Checkpoint::new(state_path.clone());
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        if hup.swap(false, Ordering::SeqCst) {
            reload(&server, path, &started);
        }
        checkpoint.tick(&server);
        let dead = server
            .fatal()
            .or_else(|| watchdog.lock().ok().and_then(|v| v.clone()));
        if let Some(why) = dead {
            log::error!("{why}; exiting with status 70 so that systemd/Baota restart wxmp");
            fatal = Some(why);
            stop.store(true, Ordering::SeqCst);
        }
    }
    log::info!("stopping: finishing requests in flight");
    let saved = server.shutdown(Duration::from_secs(4));
    // An empty state deletes a checkpoint's file: it would be handed on as if this stop had
    // not happened.
    match wxmp::state::store(&state_path, &saved) {
        Ok(()) if saved.is_empty() => log::info!("stopped"),
        Ok(()) => log::info!(
            "stopped; {} answered message(s), {} signed URL(s) and {} late result(s) saved to {} \
             for the next start",
            saved.answers.len(),
            saved.urls.len(),
            saved.late.len(),
            state_path.display()
        ),
        Err(e) => log::warn!("stopped; {e}: the next start may not carry on from this stop"),
    }
    wxmp::logging::flush();
    if fatal.is_some() {
        // EX_SOFTWARE: a restart-worthy failure, not a requested stop.
        return ExitCode::from(70);
    }
    ExitCode::SUCCESS
}

/// How often a running server keeps its state for the next start (see [`wxmp::state`]): a
/// process killed without a stop loses at most this much. WeChat retries a message ~5 s after
/// its first try, and systemd restarts wxmp 2 s after a crash (`deploy/wxmp.service`).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The running server's checkpoints: [`Server::checkpoint`] stored every [`CHECKPOINT_EVERY`]
/// when something changed.
struct Checkpoint {
    path: std::path::PathBuf,
    last: std::time::Instant,
    /// [`Server::changes`] when the file was last stored (0: nothing since the start).
    stored: u64,
    /// Whether the last store failed: its warning is logged once, not every second.
    failing: bool,
}

impl Checkpoint {
    fn new(path: std::path::PathBuf) -> Checkpoint {
        let now = std::time::Instant::now();
        Checkpoint {
            path,
            // Due at the first look: what the start took from the file is the file's again at
            // once, should this process be killed in its first second.
            last: now.checked_sub(CHECKPOINT_EVERY).unwrap_or(now),
            stored: 0,
            failing: false,
        }
    }

    /// Stores the server's state if a second has passed and something changed.
    fn tick(&mut self, server: &Server) {
        if self.last.elapsed() < CHECKPOINT_EVERY {
            return;
        }
        self.last = std::time::Instant::now();
        let changes = server.changes();
        if changes == self.stored {
            return;
        }
        let stored = wxmp::state::store(&self.path, &server.checkpoint());
        wxmp::server::give_back_free_memory();
        match stored {
            Ok(()) => {
                self.stored = changes;
                if self.failing {
                    self.failing = false;
                    log::info!("checkpoints are written again to {}", self.path.display());
                }
            }
            Err(e) if !self.failing => {
                self.failing = true;
                log::warn!(
                    "checkpoint: {e}; a crash now would lose the retry table, the signed URLs \
                     and the late results (a clean stop saves them too, if the file can be written \
                     by then); trying again every second"
                );
            }
            Err(_) => {}
        }
    }
}

/// SIGHUP: the file again, in force for the next request; `started` is the configuration wxmp
/// started with, whose listener, workers and logger stay.
fn reload(server: &Server, path: &std::path::Path, started: &Config) {
    match load(path) {
        Ok((config, router)) => {
            let kept = started.restart_only_changes(&config);
            let handler: Arc<dyn Handler> = Arc::new(router);
            match server.reload(config, handler) {
                Ok(()) if kept.is_empty() => log::info!("reloaded {}", path.display()),
                Ok(()) => log::warn!(
                    "reloaded {}; {} changed too, which only a restart applies \
                     (systemctl restart wxmp): running as at start",
                    path.display(),
                    kept.join(", ")
                ),
                Err(e) => log::error!("reload of {} refused: {e}", path.display()),
            }
        }
        Err(errors) => {
            log::error!(
                "reload of {} refused, keeping the running configuration: {}",
                path.display(),
                errors.join("; ")
            );
        }
    }
}

/// Whether `wxmp serve` could create and write its log folder `dir`, as far as this user can
/// tell: `Some(why)` when the folder (or the nearest existing folder above it) is not one, or
/// is not writable (a read-only file system, another owner).
fn log_dir_problem(dir: &std::path::Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let absolute = std::env::current_dir().map(|cwd| cwd.join(dir)).ok()?;
    let existing = absolute.ancestors().find(|a| a.exists())?;
    if !existing.is_dir() {
        return Some(format!("{} is not a folder", existing.display()));
    }
    let file = existing.join("wxmp.log");
    let target = if existing == absolute && file.exists() {
        file
    } else {
        existing.to_path_buf()
    };
    let c_path = std::ffi::CString::new(target.as_os_str().as_bytes()).ok()?;
    // SAFETY: access(2) reads a NUL-terminated path we own.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK) } == 0 {
        return None;
    }
    let e = std::io::Error::last_os_error();
    Some(format!("{} cannot be written: {e}", target.display()))
}

fn check(path: &std::path::Path) -> ExitCode {
    match load(path) {
        Ok((config, router)) => {
            if let Some(why) = log_dir_problem(&config.log.dir) {
                print_errors(
                    path,
                    &[format!(
                        "[log] dir {}: {why}; wxmp serve would not start (set [log] dir or \
                         WXMP_LOG_DIR, or give wxmp's user that folder)",
                        config.log.dir.display()
                    )],
                );
                return ExitCode::FAILURE;
            }
            println!("{}: OK", path.display());
            println!(
                "  listen {}  path {}  workers {}",
                config.listen, config.path, config.workers
            );
            println!("  log dir {}", config.log.dir.display());
            println!("  {}", encryption(&config));
            for line in router.describe() {
                println!("  {line}");
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_errors(path, &errors);
            ExitCode::FAILURE
        }
    }
}

/// Flushes the log when dropped, unwinding included.
struct FlushLogOnExit;

impl Drop for FlushLogOnExit {
    fn drop(&mut self) {
        wxmp::logging::flush();
    }
}

/// For the commands that print for a person (`check`, `send`, help): end quietly when the
/// reader goes away (`wxmp check | head -3`), as other Unix tools do, instead of panicking in
/// `println!`. Never for `serve`, whose stderr may be a pipe that closes.
fn quiet_on_broken_pipe() {
    // SAFETY: signal(2) with SIG_DFL; called before any thread is started.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

fn main() -> ExitCode {
    // Before any thread or allocation of note: it is process-wide.
    wxmp::server::tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "send") {
        quiet_on_broken_pipe();
        return ExitCode::from(wxmp::send::run(&args[1..]));
    }
    if args
        .iter()
        .any(|a| a == "--help" || a == "-h" || a == "help")
    {
        quiet_on_broken_pipe();
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if args.iter().any(|a| a == "--version" || a == "-V") {
        quiet_on_broken_pipe();
        println!("wxmp {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let cli = match parse_cli(&args) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("wxmp: {e}");
            return ExitCode::from(2);
        }
    };
    let path = config::resolve_path(cli.config.as_deref(), env);
    match cli.command.as_str() {
        "check" => {
            quiet_on_broken_pipe();
            check(&path)
        }
        _ => {
            // On every way out of `serve`, an early error or a panic included: the log writer
            // thread may still hold the last lines.
            let _flush = FlushLogOnExit;
            serve(&path)
        }
    }
}
