//! compare: wxmp against the bare tiny_http floor, in one run on loopback.
//!
//! ```text
//! cargo bench --bench compare                         # 5 s per row, prints the markdown table
//! cargo bench --bench compare -- --duration 5 --write # and writes it into docs/benchmarks.md
//! cargo bench --bench compare -- --quick              # 2 s per row, 0.5 s warm-up
//! ```
//!
//! `cargo bench` builds the `wxmp` binary itself (release profile) and passes its path here
//! (`CARGO_BIN_EXE_wxmp`); the floor server (the code of `examples/floor.rs`) is compiled into
//! this bench and started as a child process of it (`compare --serve-floor ADDR THREADS`), so
//! nothing can be stale and nothing else needs building.
//!
//! Rows (each server freshly started, on a free loopback port, `workers` threads, its log in a
//! temp folder): floor, wxmp plain, wxmp safe mode (encrypted, `msg_signature`-signed POSTs),
//! wxmp answering a `file` command, wxmp answering an `exec` command, and the two usual Python
//! servers for an Official Account doing wxmp plain's job (Flask + wechatpy on gunicorn, and
//! WeRoBot's own `robot.run()`: `benches/python/`, installed into `target/bench-python` by
//! this bench the first time they run); each with keep-alive and with a new connection per
//! request. Every row: a warm-up run with the same load (its stranded connections are
//! reported), then the measured run. In-process client threads are the load generator
//! (`benches/support/load.rs`, as `loadgen`); they share the CPUs with the server.
//!
//! With no arguments at all (`cargo test --benches`) it only prints how to run it.

#[path = "../examples/support/bare_tiny_http.rs"]
mod bare_tiny_http;
#[path = "support/load.rs"]
mod load;
#[path = "support/wxhttp.rs"]
mod wxhttp;

use std::fmt::Write as _;
use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use load::{LoadSpec, Report};
use wxhttp::{BodyKind, PostSpec, Target};

const USAGE: &str = "usage: cargo bench --bench compare -- [--duration 5] [--warmup 1] [--quick] \
[--connections 32] [--workers 4] [--rounds 1] [--only floor,plain,safe,file,exec,flask,werobot] \
[--modes keep-alive,new-conn] [--log-level info] [--wxmp PATH] [--python python3] [--write] \
[--out FILE]";

const TOKEN: &str = "benchToken2024";
const APP_ID: &str = "wxbench0123456789";
/// WeChat's published sample EncodingAESKey (43 characters, trailing bits set).
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const DEFAULT_REPLY: &str = "bench default reply";
const WXMP_PATH: &str = "/wx";
const START_WITHIN: Duration = Duration::from_secs(10);
const STOP_WITHIN: Duration = Duration::from_secs(6);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Floor,
    Plain,
    Safe,
    File,
    Exec,
    /// Flask + wechatpy on gunicorn (`benches/python/flask_wechatpy.py`).
    Flask,
    /// WeRoBot served by its own `robot.run()` (`benches/python/werobot_app.py`).
    WeRoBot,
}

const KINDS: [Kind; 7] = [
    Kind::Floor,
    Kind::Plain,
    Kind::Safe,
    Kind::File,
    Kind::Exec,
    Kind::Flask,
    Kind::WeRoBot,
];

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Kind::Floor => "floor",
            Kind::Plain => "plain",
            Kind::Safe => "safe",
            Kind::File => "file",
            Kind::Exec => "exec",
            Kind::Flask => "flask",
            Kind::WeRoBot => "werobot",
        }
    }

    /// One of the Python servers: a process tree (gunicorn's master and workers) measured as
    /// a whole, started from the bench's virtualenv.
    fn python(self) -> bool {
        matches!(self, Kind::Flask | Kind::WeRoBot)
    }

    /// A wxmp row (the rows the RSS target is about).
    fn wxmp(self) -> bool {
        matches!(self, Kind::Plain | Kind::Safe | Kind::File | Kind::Exec)
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Floor => "floor (bare tiny_http)",
            Kind::Plain => "wxmp plain",
            Kind::Safe => "wxmp safe mode (AES)",
            Kind::File => "wxmp `file` command",
            Kind::Exec => "wxmp `exec` command",
            Kind::Flask => "Python: Flask + wechatpy, gunicorn",
            Kind::WeRoBot => "Python: WeRoBot `robot.run()`",
        }
    }
}

struct Options {
    duration: Duration,
    warmup: Duration,
    connections: usize,
    workers: usize,
    rounds: usize,
    kinds: Vec<Kind>,
    modes: Vec<bool>,
    write: bool,
    out: PathBuf,
    quick: bool,
    /// wxmp's `[log] level` (`info`, as deployed, logs a line per message).
    log_level: String,
    /// The wxmp binary: the one cargo built for this bench, or another build to compare
    /// (`--wxmp target/x86_64-unknown-linux-musl/release/wxmp`, the shipped static binary).
    wxmp: PathBuf,
    /// The Python interpreter the bench's virtualenv is made with.
    python: String,
    /// True when `--only` named the rows: a Python row that cannot be set up is then an error,
    /// not a row left out.
    only: bool,
    /// The Python rows' virtualenv, once made ([`python_venv`]).
    venv: Option<PathBuf>,
    /// Why the Python rows were left out of a run that did not name them, for the table.
    python_skipped: Option<String>,
}

fn seconds(name: &str, v: Option<String>) -> Result<Duration, String> {
    let v = v.ok_or_else(|| format!("{name} needs a value"))?;
    let s: f64 = v
        .parse()
        .map_err(|_| format!("{name} wants seconds, got {v:?}"))?;
    if !(s > 0.0 && s <= 600.0) {
        return Err(format!("{name} must be in (0, 600] seconds"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn count(name: &str, v: Option<String>, max: usize) -> Result<usize, String> {
    v.and_then(|v| v.parse().ok())
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| format!("{name} must be 1..={max}"))
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        connections: 32,
        workers: 4,
        rounds: 1,
        kinds: KINDS.to_vec(),
        modes: vec![false, true],
        write: false,
        out: Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks.md"),
        quick: false,
        log_level: "info".into(),
        wxmp: PathBuf::from(env!("CARGO_BIN_EXE_wxmp")),
        python: "python3".into(),
        only: false,
        venv: None,
        python_skipped: None,
    };
    let (mut duration, mut warmup) = (None, None);
    let mut it = args.iter().cloned();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--bench" => {}
            "--duration" | "-d" => duration = Some(seconds("--duration", it.next())?),
            "--warmup" => warmup = Some(seconds("--warmup", it.next())?),
            "--quick" => o.quick = true,
            "--connections" | "-c" => o.connections = count("--connections", it.next(), 1000)?,
            "--workers" => o.workers = count("--workers", it.next(), 64)?,
            "--rounds" => o.rounds = count("--rounds", it.next(), 9)?,
            "--only" => {
                let v = it.next().ok_or("--only needs a value")?;
                o.kinds = v
                    .split(',')
                    .map(|k| {
                        KINDS
                            .iter()
                            .copied()
                            .find(|x| x.key() == k.trim())
                            .ok_or_else(|| format!("--only: unknown row {k:?}"))
                    })
                    .collect::<Result<_, _>>()?;
                o.only = true;
            }
            "--modes" => {
                let v = it.next().ok_or("--modes needs a value")?;
                o.modes = v
                    .split(',')
                    .map(|m| match m.trim() {
                        "keep-alive" => Ok(false),
                        "new-conn" => Ok(true),
                        other => Err(format!("--modes: unknown mode {other:?}")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--log-level" => {
                let v = it.next().ok_or("--log-level needs a value")?;
                if !["error", "warn", "info", "debug", "trace"].contains(&v.as_str()) {
                    return Err(format!(
                        "--log-level: {v:?} is not error|warn|info|debug|trace"
                    ));
                }
                o.log_level = v;
            }
            "--wxmp" => o.wxmp = PathBuf::from(it.next().ok_or("--wxmp needs a path")?),
            "--python" => o.python = it.next().ok_or("--python needs an interpreter")?,
            "--write" => o.write = true,
            "--out" => {
                o.out = PathBuf::from(it.next().ok_or("--out needs a file")?);
                o.write = true;
            }
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let (d, w) = if o.quick {
        (Duration::from_secs(2), Duration::from_millis(500))
    } else {
        (o.duration, o.warmup)
    };
    o.duration = duration.unwrap_or(d);
    o.warmup = warmup.unwrap_or(w);
    Ok(o)
}

/// A free loopback port: bound, read and released (another process could take it in between;
/// the server then fails to start and the run says so).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
}

/// A running server under test.
struct Running {
    kind: Kind,
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

fn wxmp_config(kind: Kind, addr: SocketAddr, opts: &Options, dir: &Path) -> String {
    let workers = opts.workers;
    let mut c = format!(
        "token = \"{TOKEN}\"\nlisten = \"{addr}\"\npath = \"{WXMP_PATH}\"\nworkers = {workers}\n"
    );
    if kind == Kind::Safe {
        let _ = writeln!(c, "app_id = \"{APP_ID}\"\nencoding_aes_key = \"{AES_KEY}\"");
    }
    let _ = write!(
        c,
        "\n[log]\ndir = \"{}\"\nlevel = \"{}\"\n\n[reply]\ndefault = \"{DEFAULT_REPLY}\"\n\n\
         [[command]]\nname = \"news\"\nfile = \"news.txt\"\n\n\
         [[command]]\nprefix = \"echo\"\nexec = [\"/bin/echo\", \"echoed\", \"{{args}}\"]\n",
        dir.join("log").display(),
        opts.log_level,
    );
    c
}

/// About 1 KiB of news, as a crawler would leave it.
fn news_text() -> String {
    let mut s = String::from("bench news: the crawler's latest lines\n");
    let mut i = 1;
    while s.len() < 1000 {
        let _ = writeln!(
            s,
            "{i}. 今日要闻：标题 {i}，来源 example.com，更新于 10:0{i}"
        );
        i += 1;
    }
    s
}

fn start(kind: Kind, opts: &Options, root: &Path, seq: usize) -> Result<Running, String> {
    let addr = free_addr();
    let dir = root.join(format!("{seq:02}-{}", kind.key()));
    fs::create_dir_all(dir.join("log")).map_err(|e| format!("{}: {e}", dir.display()))?;
    let stderr = fs::File::create(dir.join("stderr.txt")).map_err(|e| e.to_string())?;
    let mut cmd = if kind == Kind::Floor {
        let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut c = Command::new(me);
        c.arg("--serve-floor")
            .arg(addr.to_string())
            .arg(opts.workers.to_string());
        c
    } else if kind.python() {
        python_command(kind, addr, opts)?
    } else {
        let bin = opts.wxmp.as_path();
        if !bin.is_file() {
            return Err(format!(
                "{} is missing: run `cargo bench --bench compare` (it builds the wxmp binary), \
                 or `cargo build --release --bin wxmp` first",
                bin.display()
            ));
        }
        let config = dir.join("wxmp.toml");
        fs::write(&config, wxmp_config(kind, addr, opts, &dir)).map_err(|e| e.to_string())?;
        fs::write(dir.join("news.txt"), news_text()).map_err(|e| e.to_string())?;
        let mut c = Command::new(bin);
        c.arg("serve").arg("--config").arg(&config);
        c
    };
    for (k, _) in std::env::vars() {
        if k.starts_with("WXMP_") {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start the {} server: {e}", kind.key()))?;
    let mut running = Running {
        kind,
        child,
        addr,
        dir,
    };
    let deadline = Instant::now() + START_WITHIN;
    loop {
        if let Ok(Some(status)) = running.child.try_wait() {
            let err = fs::read_to_string(running.dir.join("stderr.txt")).unwrap_or_default();
            return Err(format!(
                "the {} server exited at start ({status}):\n{err}",
                kind.key()
            ));
        }
        if probe(addr) {
            return Ok(running);
        }
        if Instant::now() > deadline {
            running.stop();
            return Err(format!(
                "the {} server did not answer on {addr} within {START_WITHIN:?}",
                kind.key()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The folder of the Python rows' code and pinned requirements.
fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/python")
}

/// The bench's own virtualenv (`target/bench-python`) with `benches/python/requirements.txt`
/// installed from PyPI. Made the first time, and made anew whenever the requirements file
/// differs from the one it was made with; otherwise reused as it is (no network).
fn python_venv(python: &str) -> Result<PathBuf, String> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-python");
    let requirements = python_dir().join("requirements.txt");
    let wanted = fs::read_to_string(&requirements)
        .map_err(|e| format!("cannot read {}: {e}", requirements.display()))?;
    let stamp = venv.join("installed-requirements.txt");
    if venv.join("bin/python").is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(venv);
    }
    eprintln!(
        "compare: installing the Python rows' packages into {} (once; needs PyPI)",
        venv.display()
    );
    let _ = fs::remove_dir_all(&venv);
    run_quietly(
        Command::new(python).args(["-m", "venv"]).arg(&venv),
        &format!("`{python} -m venv`"),
    )?;
    run_quietly(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--disable-pip-version-check", "--quiet", "-r"])
            .arg(&requirements),
        "`pip install -r benches/python/requirements.txt`",
    )?;
    fs::write(&stamp, wanted).map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(venv)
}

/// Runs a set-up command to its end; on failure, says which and the end of what it printed.
fn run_quietly(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what} cannot run: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    // `python3 -m venv` says what is missing (Debian's python3-venv) on stdout, pip on stderr.
    let printed = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = printed.lines().collect();
    let tail = lines[lines.len().saturating_sub(8)..].join("\n");
    Err(format!("{what} failed ({}):\n{tail}", out.status))
}

/// The command line of a Python row: gunicorn with `workers` sync worker processes for Flask,
/// WeRoBot's own server for WeRoBot. In a process group of its own, so that no worker outlives
/// the row ([`Running::stop`]).
fn python_command(kind: Kind, addr: SocketAddr, opts: &Options) -> Result<Command, String> {
    let venv = opts
        .venv
        .as_deref()
        .ok_or("the Python rows' virtualenv is not set up")?;
    let code = python_dir();
    let mut c = if kind == Kind::Flask {
        let mut c = Command::new(venv.join("bin/gunicorn"));
        c.arg("--workers")
            .arg(opts.workers.to_string())
            .arg("--bind")
            .arg(addr.to_string())
            .args([
                "--graceful-timeout",
                "2",
                "--no-control-socket",
                "--pythonpath",
            ])
            .arg(&code)
            .arg("flask_wechatpy:app");
        c
    } else {
        let mut c = Command::new(venv.join("bin/python"));
        c.arg(code.join("werobot_app.py"))
            .env("WX_LISTEN", addr.to_string());
        c
    };
    c.env("WX_TOKEN", TOKEN)
        .env("WX_REPLY", DEFAULT_REPLY)
        .process_group(0);
    Ok(c)
}

/// One `GET /healthz` on a fresh connection; true on any complete HTTP answer.
fn probe(addr: SocketAddr) -> bool {
    let Ok(mut c) = wxhttp::Conn::connect(addr, Duration::from_secs(1)) else {
        return false;
    };
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    c.round_trip(req.as_bytes()).is_ok()
}

/// `VmHWM` (peak RSS) and `Threads` of a process, from `/proc/PID/status`.
fn proc_status(pid: u32) -> (Option<u64>, Option<u64>) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
    };
    (field("VmHWM:"), field("Threads:"))
}

/// The fields of `/proc/PID/stat` after the command name (which is in parentheses and may
/// hold spaces): the state first, then the parent's pid, ...
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    // The state is a letter: 0 in its place keeps the other fields' indices.
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// CPU time (user + system) a process has used, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Option<Duration> {
    let f = stat_fields(pid)?;
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here (state is 3rd).
    let ticks: u64 = f.get(11)? + f.get(12)?;
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|&h| h > 0)?;
    Some(Duration::from_secs_f64(ticks as f64 / hz as f64))
}

/// A process and every descendant of it (gunicorn's master and its workers), from the
/// parent pids in `/proc/*/stat`.
fn process_tree(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u64)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, *stat_fields(pid)?.get(1)?)))
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while let Some(&p) = tree.get(i) {
        tree.extend(
            parents
                .iter()
                .filter(|&&(_, parent)| parent == u64::from(p))
                .map(|&(pid, _)| pid),
        );
        i += 1;
    }
    tree
}

impl Running {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The processes whose CPU time and memory are the server's: wxmp's and the floor's own
    /// process (not the programs wxmp runs), a Python server's whole tree.
    fn pids(&self) -> Vec<u32> {
        if self.kind.python() {
            process_tree(self.pid())
        } else {
            vec![self.pid()]
        }
    }

    /// CPU time of [`Running::pids`], added up.
    fn cpu_time(&self) -> Option<Duration> {
        let pids = self.pids();
        let (root, rest) = pids.split_first()?;
        // A worker gone between the listing and the read is not counted; the root must be there.
        Some(cpu_time(*root)? + rest.iter().filter_map(|&p| cpu_time(p)).sum::<Duration>())
    }

    /// Peak RSS (KiB) and threads of [`Running::pids`], each added up: for gunicorn, the peaks
    /// of the master and of each worker.
    fn status(&self) -> (Option<u64>, Option<u64>) {
        let mut all = self.pids().into_iter().map(proc_status);
        let (mut rss, mut threads) = all.next().unwrap_or((None, None));
        for (r, t) in all {
            // A worker gone between the listing and the read is not counted, as in `cpu_time`.
            rss = rss.map(|a| a + r.unwrap_or(0));
            threads = threads.map(|a| a + t.unwrap_or(0));
        }
        (rss, threads)
    }

    /// A Python server's process group, killed once its leader is gone, so that no worker of
    /// it is left serving (or holding the port) after the row.
    fn kill_group(&self) {
        if !self.kind.python() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on the process group our child leads (`process_group(0)`).
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`STOP_WITHIN`].
    fn stop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + STOP_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.kill_group();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "compare: the {} server did not stop within {STOP_WITHIN:?} of SIGTERM; killing it",
            self.kind.key()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.kill_group();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.kill_group();
    }
}

fn post_spec(kind: Kind) -> PostSpec {
    let mut p = PostSpec::plain(TOKEN, BodyKind::Text);
    match kind {
        Kind::Safe => {
            p.crypt = Some(
                wxmp::crypto::MsgCrypt::new(TOKEN, AES_KEY, APP_ID).expect("the bench's AES key"),
            )
        }
        Kind::File => p.text = Some("news".into()),
        Kind::Exec => p.text = Some("echo {n}".into()),
        Kind::Floor | Kind::Plain | Kind::Flask | Kind::WeRoBot => {}
    }
    p
}

/// What every 2xx answer of a row must contain (a cheap check inside the measured run).
fn expected(kind: Kind) -> Vec<u8> {
    match kind {
        Kind::Floor => b"<![CDATA[floor]]>".to_vec(),
        Kind::Plain | Kind::Flask | Kind::WeRoBot => {
            format!("<![CDATA[{DEFAULT_REPLY}]]>").into_bytes()
        }
        Kind::Safe => b"<Encrypt><![CDATA[".to_vec(),
        Kind::File => b"<![CDATA[bench news: ".to_vec(),
        Kind::Exec => b"<![CDATA[echoed ".to_vec(),
    }
}

/// One request checked the way WeChat would, before the load: in safe mode the answer is
/// verified (`MsgSignature`) and decrypted, and must hold the default reply.
fn sanity(kind: Kind, addr: SocketAddr) -> Result<(), String> {
    let target = Target::from_addr(addr, WXMP_PATH);
    let spec = post_spec(kind);
    let mut c = wxhttp::Conn::connect(addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let resp = c
        .round_trip(&spec.request(&target, wxhttp::next_seq(), false))
        .map_err(|e| format!("{}: sanity request: {e}", kind.key()))?;
    let body = String::from_utf8_lossy(&resp.body).into_owned();
    if resp.status != 200 || !wxhttp::contains(&resp.body, &expected(kind)) {
        return Err(format!(
            "{}: sanity request answered {} {body:?}",
            kind.key(),
            resp.status
        ));
    }
    if let Some(crypt) = &spec.crypt {
        let r = wxmp::crypto::parse_encrypted_reply(&body).map_err(|e| e.to_string())?;
        let xml = crypt
            .verify_and_decrypt(&r.msg_signature, &r.timestamp, &r.nonce, &r.encrypt)
            .map_err(|e| format!("safe: the reply does not verify/decrypt: {e}"))?;
        if !xml.contains(DEFAULT_REPLY) {
            return Err(format!("safe: the decrypted reply is {xml:?}"));
        }
    }
    Ok(())
}

/// One measured row.
#[derive(Clone)]
struct Row {
    kind: Kind,
    new_conn: bool,
    warm: Report,
    run: Report,
    peak_rss_kib: Option<u64>,
    threads: Option<u64>,
    /// Server CPU time per answered request during the measured run.
    cpu_us_per_req: Option<f64>,
    /// Tries of this row's rounds thrown away because their measured run stranded connections.
    reruns: usize,
}

fn load_spec(kind: Kind, addr: SocketAddr, opts: &Options, new_conn: bool) -> LoadSpec {
    LoadSpec {
        target: Target::from_addr(addr, WXMP_PATH),
        post: post_spec(kind),
        connections: opts.connections,
        duration: opts.duration,
        new_conn,
        timeout: Duration::from_secs(5),
        expect: Some(expected(kind)),
    }
}

fn measure(
    kind: Kind,
    new_conn: bool,
    opts: &Options,
    root: &Path,
    seq: usize,
) -> Result<Row, String> {
    let mut server = start(kind, opts, root, seq)?;
    if kind != Kind::Floor {
        if let Err(e) = sanity(kind, server.addr) {
            server.stop();
            return Err(e);
        }
    }
    let mut spec = load_spec(kind, server.addr, opts, new_conn);
    spec.duration = opts.warmup;
    let warm = load::run(&spec);
    spec.duration = opts.duration;
    let cpu0 = server.cpu_time();
    let run = load::run(&spec);
    let cpu1 = server.cpu_time();
    let (peak_rss_kib, threads) = server.status();
    server.stop();
    let cpu_us_per_req = match (cpu0, cpu1) {
        (Some(a), Some(b)) if run.ok > 0 => {
            Some(b.saturating_sub(a).as_secs_f64() * 1e6 / run.ok as f64)
        }
        _ => None,
    };
    let row = Row {
        kind,
        new_conn,
        warm,
        run,
        peak_rss_kib,
        threads,
        cpu_us_per_req,
        reruns: 0,
    };
    eprintln!(
        "compare: {:<24} {:<10} {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  err {} to {} bad {}  \
         stranded {}/{}  rss {} KiB  threads {}  cpu {:.1} us/req",
        kind.label(),
        spec.mode(),
        row.run.rps,
        ms(row.run.p50_us),
        ms(row.run.p99_us),
        row.run.errors,
        row.run.timeouts,
        row.run.non2xx + row.run.wrong,
        row.warm.stranded,
        row.run.stranded,
        row.peak_rss_kib.unwrap_or(0),
        row.threads.unwrap_or(0),
        row.cpu_us_per_req.unwrap_or(f64::NAN),
    );
    Ok(row)
}

/// Tries a round gets: one whose measured run stranded connections (tiny_http defect 1,
/// docs/tiny_http-upstream.md; the bare floor has no rescue for it) is run again on a fresh
/// server, since it measured fewer connections than the row claims.
const TRIES: usize = 3;

/// `measure`, run again (up to `TRIES` in all) while the measured run strands connections; the
/// row counts the tries thrown away. The last try is kept whatever it did, so the table shows it.
fn measure_unstranded(
    kind: Kind,
    new_conn: bool,
    opts: &Options,
    root: &Path,
    seq: &mut usize,
) -> Result<Row, String> {
    let mut reruns = 0;
    loop {
        *seq += 1;
        let mut row = measure(kind, new_conn, opts, root, *seq)?;
        // A Python server's unanswered connections are its own doing, not tiny_http's defect:
        // WeRoBot's single-threaded server has a listen backlog of 5.
        if row.run.stranded == 0 || reruns + 1 == TRIES || kind.python() {
            row.reruns = reruns;
            return Ok(row);
        }
        reruns += 1;
        eprintln!(
            "compare: {}: {} of {} connections stranded in the measured run (tiny_http defect 1); \
             running the round again on a fresh server ({} of {} tries)",
            kind.label(),
            row.run.stranded,
            opts.connections,
            reruns + 1,
            TRIES
        );
    }
}

fn ms(us: u32) -> f64 {
    us as f64 / 1000.0
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

/// `YYYY-MM-DD HH:MM UTC`, with the log's own calendar arithmetic (no date crate).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = wxmp::logging::civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let load = fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{cpus} CPUs (nproc), {model}, Linux {kernel}, load average before the run {load}")
}

/// The median row by req/s of several rounds (peak RSS: the largest of them; re-runs: their
/// sum). Rounds whose measured run served every connection are preferred: one that stranded
/// some measured fewer connections than the row says, so its req/s and latencies are not
/// comparable with the other rows'.
fn median(rows: Vec<Row>) -> Row {
    let peak = rows.iter().filter_map(|r| r.peak_rss_kib).max();
    let reruns = rows.iter().map(|r| r.reruns).sum();
    let (mut clean, stranded): (Vec<Row>, Vec<Row>) =
        rows.into_iter().partition(|r| r.run.stranded == 0);
    if clean.is_empty() {
        clean = stranded;
    }
    clean.sort_by(|a, b| a.run.rps.total_cmp(&b.run.rps));
    let mut m = clean.swap_remove(clean.len() / 2);
    m.peak_rss_kib = peak;
    m.reruns = reruns;
    m
}

fn find(rows: &[Row], kind: Kind, new_conn: bool) -> Option<&Row> {
    rows.iter()
        .find(|r| r.kind == kind && r.new_conn == new_conn)
}

fn ratio(rows: &[Row], a: Kind, b: Kind, new_conn: bool) -> Option<f64> {
    let (a, b) = (find(rows, a, new_conn)?, find(rows, b, new_conn)?);
    (b.run.rps > 0.0).then(|| a.run.rps / b.run.rps)
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map_or("–".into(), |r| format!("{r:.2}"))
}

fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn report(rows: &[Row], opts: &Options, command: &str, started: &str, machine: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "Measured {started} on {machine}.");
    let _ = writeln!(
        md,
        "Command: `{command}`. Each row: a freshly started server on a free loopback port \
         ({} worker threads; wxmp logs at `{}` to a temp folder and to stderr, which goes to a file), a {:.1} s \
         warm-up with the same load, then {:.1} s measured{}; {} client connections sending signed \
         text messages with a fresh MsgId each, from threads of the bench process on the same \
         CPUs as the server.\n",
        opts.workers,
        opts.log_level,
        opts.warmup.as_secs_f64(),
        opts.duration.as_secs_f64(),
        if opts.rounds > 1 {
            format!(" (median of {} rounds by req/s)", opts.rounds)
        } else {
            String::new()
        },
        opts.connections,
    );
    if rows.iter().any(|r| r.kind.python()) {
        let _ = writeln!(
            md,
            "The Python rows (`benches/python/`, the packages pinned in its `requirements.txt`) do \
             wxmp plain's job without its retry table or its log line: Flask + wechatpy on \
             gunicorn with {} sync worker processes (gunicorn's default worker, which closes \
             every connection after its answer, so its keep-alive row is a connection per \
             request too), and WeRoBot's `robot.run()` (bottle's `auto` server: Python's \
             single-threaded wsgiref, logging each request to stderr; its listen backlog of 5 \
             drops the connection attempts beyond it, which the client's TCP tries again after \
             1 s, 3 s, ...: its timeouts and unanswered connections, not run again). Their CPU \
             time and peak RSS are their whole process tree's (the processes' peaks added up, so \
             what gunicorn's workers share with their master counts once for each).\n",
            opts.workers
        );
    }
    md.push_str(
        "| server | connections | req/s | p50 ms | p99 ms | max ms | errors | timeouts | \
         non-2xx / wrong | stranded (warm-up → measured) | server CPU µs/req | peak RSS MiB |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for new_conn in [false, true] {
        for kind in KINDS {
            let Some(r) = find(rows, kind, new_conn) else {
                continue;
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.2} | {:.2} | {:.1} | {} | {} | {} / {} | {} → {} of {} | {} | {} |",
                kind.label(),
                if new_conn { "new per request" } else { "keep-alive" },
                thousands(r.run.rps),
                ms(r.run.p50_us),
                ms(r.run.p99_us),
                ms(r.run.max_us),
                r.run.errors,
                r.run.timeouts,
                r.run.non2xx,
                r.run.wrong,
                r.warm.stranded,
                r.run.stranded,
                opts.connections,
                r.cpu_us_per_req.map_or("?".into(), |c| format!("{c:.0}")),
                mib(r.peak_rss_kib),
            );
        }
    }
    md.push_str("\n| ratio (req/s) | keep-alive | new connection per request |\n|---|---:|---:|\n");
    for (name, a, b) in [
        ("wxmp plain / floor", Kind::Plain, Kind::Floor),
        ("safe / plain", Kind::Safe, Kind::Plain),
        ("file / plain", Kind::File, Kind::Plain),
        ("exec / plain", Kind::Exec, Kind::Plain),
        (
            "wxmp plain / Python: Flask + wechatpy, gunicorn",
            Kind::Plain,
            Kind::Flask,
        ),
        ("wxmp plain / Python: WeRoBot", Kind::Plain, Kind::WeRoBot),
    ] {
        // A Python row is not in every run (`--only`, or left out): no line of dashes for it.
        if b.python() && !rows.iter().any(|r| r.kind == b) {
            continue;
        }
        let _ = writeln!(
            md,
            "| {name} | {} | {} |",
            fmt_ratio(ratio(rows, a, b, false)),
            fmt_ratio(ratio(rows, a, b, true)),
        );
    }
    md.push_str("\n| target (issue 6 / issue 4) | measured | met |\n|---|---:|---|\n");
    let yes = |b: bool| if b { "yes" } else { "**no**" };
    if let Some(r) = ratio(rows, Kind::Plain, Kind::Floor, false) {
        // A side that stranded connections measured fewer of them than the other: no verdict.
        let stranded: Vec<String> = [Kind::Floor, Kind::Plain]
            .into_iter()
            .filter_map(|k| find(rows, k, false))
            .filter(|row| row.run.stranded > 0)
            .map(|row| {
                format!(
                    "{} stranded {} of {} connections",
                    row.kind.label(),
                    row.run.stranded,
                    opts.connections
                )
            })
            .collect();
        let met = if stranded.is_empty() {
            yes(r >= 0.9).to_string()
        } else {
            format!("not comparable: {}", stranded.join(", "))
        };
        let _ = writeln!(md, "| wxmp/floor ≥ 0.9 with keep-alive | {r:.2} | {met} |");
    }
    if let Some(p) = find(rows, Kind::Plain, false) {
        let _ = writeln!(
            md,
            "| p99 < 2 ms at {} connections (wxmp plain, keep-alive) | {:.2} ms | {} |",
            opts.connections,
            ms(p.run.p99_us),
            yes(p.run.p99_us < 2000)
        );
    }
    let rss = rows
        .iter()
        .filter(|r| r.kind.wxmp())
        .filter_map(|r| r.peak_rss_kib)
        .max();
    if let Some(k) = rss {
        let _ = writeln!(
            md,
            "| peak RSS ≤ 10 MiB (largest wxmp row) | {} MiB | {} |",
            mib(Some(k)),
            yes(k <= 10 * 1024)
        );
    }
    if let Some(r) = ratio(rows, Kind::Safe, Kind::Plain, false) {
        let _ = writeln!(
            md,
            "| safe mode ≥ 0.8× plain (keep-alive) | {r:.2} | {} |",
            yes(r >= 0.8)
        );
    }
    if let Some(why) = &opts.python_skipped {
        let _ = writeln!(
            md,
            "\nThe Python rows were left out: their virtualenv could not be set up ({}). \
             `--only flask,werobot` shows the whole error.",
            why.lines().next().unwrap_or_default()
        );
    }
    let reruns: Vec<String> = rows
        .iter()
        .filter(|r| r.reruns > 0)
        .map(|r| {
            format!(
                "{}, {}: {}",
                r.kind.label(),
                if r.new_conn {
                    "new per request"
                } else {
                    "keep-alive"
                },
                r.reruns
            )
        })
        .collect();
    if !reruns.is_empty() {
        let _ = writeln!(
            md,
            "\nRounds run again on a fresh server because their measured run stranded connections \
             (tiny_http defect 1, docs/tiny_http-upstream.md; up to {TRIES} tries a round, the \
             median taken from the rounds that stranded none where there are any): {}.",
            reruns.join("; ")
        );
    }
    md
}

const BEGIN: &str = "<!-- compare:begin (written by `cargo bench --bench compare -- --write`) -->";
const END: &str = "<!-- compare:end -->";

/// Puts `table` between the markers of `path` (keeping the text around them), or writes a new
/// file with a title and the markers.
fn write_doc(path: &Path, table: &str) -> Result<(), String> {
    let block = format!("{BEGIN}\n{table}{END}\n");
    let text = match fs::read_to_string(path) {
        // A second pair (a table pasted in with its markers) would leave the file's reader
        // unsure which table is the latest; say so rather than pick one.
        Ok(old) if old.matches(BEGIN).count() > 1 || old.matches(END).count() > 1 => {
            return Err(format!(
                "{} holds the table markers more than once; keep one pair \
                 (the latest table) and run again",
                path.display()
            ));
        }
        Ok(old) => match (old.find(BEGIN), old.find(END)) {
            (Some(b), Some(e)) if b < e => {
                format!(
                    "{}{block}{}",
                    &old[..b],
                    old[e + END.len()..].trim_start_matches('\n')
                )
            }
            _ => format!("{old}\n{block}"),
        },
        Err(_) => format!("# Benchmarks\n\n{block}"),
    };
    fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn serve_floor(args: &[String]) -> ExitCode {
    let addr = args.first().map_or("127.0.0.1:0", String::as_str);
    let threads = args.get(1).and_then(|t| t.parse().ok()).unwrap_or(4);
    match bare_tiny_http::BareServer::start(addr, threads) {
        Ok(server) => {
            server.join();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("floor: cannot listen on {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--serve-floor") {
        return serve_floor(&args[1..]);
    }
    // `cargo test --benches` runs this with no arguments: a minute of load is not a test.
    if args.is_empty() {
        println!("compare: not run without arguments (cargo test); run it with\n{USAGE}");
        return ExitCode::SUCCESS;
    }
    let mut opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let shown: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--bench")
        .collect();
    let command = if shown.is_empty() {
        "cargo bench --bench compare".to_string()
    } else {
        format!("cargo bench --bench compare -- {}", shown.join(" "))
    };
    if opts.kinds.iter().any(|k| k.python()) {
        match python_venv(&opts.python) {
            Ok(venv) => opts.venv = Some(venv),
            Err(e) if opts.only => {
                eprintln!("compare: the Python rows cannot run: {e}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("compare: leaving the Python rows out: {e}");
                opts.kinds.retain(|k| !k.python());
                opts.python_skipped = Some(e);
            }
        }
    }
    let started = utc_now();
    // Read before any server or load runs, so the load average is the machine's, not ours.
    let machine = machine();
    let root = std::env::temp_dir().join(format!("wxmp-compare-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    if let Err(e) = fs::create_dir_all(&root) {
        eprintln!("compare: cannot create {}: {e}", root.display());
        return ExitCode::FAILURE;
    }
    eprintln!(
        "compare: {} rows x {} round(s), {:.1} s warm-up + {:.1} s each; servers under {}",
        opts.kinds.len() * opts.modes.len(),
        opts.rounds,
        opts.warmup.as_secs_f64(),
        opts.duration.as_secs_f64(),
        root.display()
    );
    let mut all: Vec<Vec<Row>> = Vec::new();
    let mut seq = 0;
    let mut failed = None;
    'rounds: for _ in 0..opts.rounds {
        for &new_conn in &opts.modes {
            for &kind in &opts.kinds {
                match measure_unstranded(kind, new_conn, &opts, &root, &mut seq) {
                    Ok(row) => match all
                        .iter_mut()
                        .find(|v| v[0].kind == kind && v[0].new_conn == new_conn)
                    {
                        Some(v) => v.push(row),
                        None => all.push(vec![row]),
                    },
                    Err(e) => {
                        failed = Some(e);
                        break 'rounds;
                    }
                }
            }
        }
    }
    if let Some(e) = failed {
        eprintln!("compare: {e}\n(server files kept in {})", root.display());
        return ExitCode::FAILURE;
    }
    let _ = fs::remove_dir_all(&root);
    let rows: Vec<Row> = all.into_iter().map(median).collect();
    let table = report(&rows, &opts, &command, &started, &machine);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "\n{table}");
    if opts.write {
        if let Err(e) = write_doc(&opts.out, &table) {
            eprintln!("compare: {e}");
            return ExitCode::FAILURE;
        }
        let _ = writeln!(out, "compare: wrote {}", opts.out.display());
    }
    ExitCode::SUCCESS
}
