//! Conversations across a restart of the real wxmp binary (a new build deployed, `systemctl
//! restart`): what one process answered, the signed URLs it saw and the late results it kept
//! are the next process's too, handed on through `log/wxmp.state`.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A folder with `wxmp.toml` (test token, loopback port, `rest`) and the scripts it runs.
fn site(tag: &str, rest: &str, scripts: &[(&str, &str)]) -> PathBuf {
    let dir = temp_dir(tag);
    std::fs::write(
        dir.join("wxmp.toml"),
        format!("token = \"{TOKEN}\"\nlisten = \"127.0.0.1:0\"\n{rest}\n"),
    )
    .unwrap();
    for (name, body) in scripts {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    dir
}

fn serve(dir: &Path) -> Wxmp {
    Wxmp::start_in(dir, &["serve", "--config", "wxmp.toml"], &[])
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("log").join("wxmp.state")
}

/// A site whose `计数` command counts its runs: it answers `run 1`, then `run 2`, ...
fn counting_site(tag: &str) -> PathBuf {
    site(
        tag,
        "[[command]]\nname = \"计数\"\nexec = [\"./count.sh\"]",
        &[(
            "count.sh",
            "echo run >> runs.txt\necho \"run $(wc -l < runs.txt)\"",
        )],
    )
}

/// Sends `计数` from `oUser` with a freshly signed URL, checks it is the first run, and returns
/// the message, its URL and the answer.
fn count_once(w: &Wxmp) -> (String, String, Resp) {
    let message = text("oUser", "计数");
    let url = signed_query("/", TOKEN);
    let first = w.request("POST", &url, &[], message.as_bytes());
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(parse_reply(&first.body).get("Content"), Some("run 1"));
    (message, url, first)
}

/// Rewrites the saved state as if it had been saved `ms` milliseconds earlier (the server down
/// that long in between).
fn move_the_save_back(dir: &Path, ms: u64) {
    let path = state_file(dir);
    let mut saved = wxmp::state::take(&path).unwrap().expect("a saved state");
    saved.saved_at_ms -= ms;
    wxmp::state::save(&path, &saved).unwrap();
}

/// A counting site whose server counted once (`run 1`) and was stopped: its folder, the
/// message, its URL and the answer.
fn counted_then_stopped(tag: &str) -> (PathBuf, String, String, Resp) {
    let dir = counting_site(tag);
    let w = serve(&dir);
    let (message, url, first) = count_once(&w);
    stop(w);
    (dir, message, url, first)
}

/// Stops `w` as systemd does and checks that it exited 0, its workers done (none left behind).
fn stop(w: Wxmp) {
    let log = w.dir.join("log").join("wxmp.log");
    assert_eq!(w.terminate().code(), Some(0));
    let log = std::fs::read_to_string(log).unwrap_or_default();
    assert!(log.contains("[INFO ] wxmp: stopped"), "{log}");
    assert!(!log.contains("a worker is still blocked"), "{log}");
}

#[test]
fn a_retry_after_a_restart_gets_the_same_bytes_and_the_command_runs_once() {
    let dir = counting_site("restart-retry");
    let w = serve(&dir);
    let (message, url, first) = count_once(&w);
    // A URL that verified the server, before the restart.
    let verification = format!("{}&echostr=hello", signed_query("/", TOKEN));
    assert_eq!(w.get(&verification).body, "hello");
    stop(w);
    let log = std::fs::read_to_string(dir.join("log/wxmp.log")).unwrap();
    assert!(
        log.contains(
            "wxmp: stopped; 1 answered message(s), 2 signed URL(s) and 0 late result(s) saved to"
        ),
        "{log}"
    );

    let saved = state_file(&dir);
    let mode = std::fs::metadata(&saved)
        .expect("state saved")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "readable by wxmp's user only");
    let text_saved = std::fs::read_to_string(&saved).unwrap();
    assert!(!text_saved.contains(TOKEN), "no token in the state");

    let w = serve(&dir);
    assert!(w.wait_for_log("carried on from the last stop: 1 answered message(s)"));
    assert!(
        !w.stderr().contains("does not understand"),
        "{}",
        w.stderr()
    );
    // Taken by the start; what is there now is this process's own checkpoint, if any yet.
    match std::fs::read_to_string(&saved) {
        Ok(now) => assert!(now.contains("checkpoint = true"), "{now}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
    }
    // WeChat's retry, signed afresh, reaches the new process: the same bytes, no second run.
    let retry = w.post_signed(&message);
    assert_eq!(retry.status, 200, "{retry:?}");
    assert_eq!(retry.body, first.body, "byte for byte");
    // Or with the first try's URL, as WeChat may send it.
    let same_url = w.request("POST", &url, &[], message.as_bytes());
    assert_eq!(same_url.body, first.body);
    assert_eq!(
        std::fs::read_to_string(dir.join("runs.txt")).unwrap(),
        "run\n",
        "the command ran once"
    );
    // The old URLs still carry only what they carried.
    let forged = w.request("POST", &url, &[], text("oAdmin", "计数").as_bytes());
    assert_eq!(forged.status, 403, "{forged:?}");
    assert_eq!(forged.body, "forbidden: signed URL already used");
    let verification_as_post = w.request("POST", &verification, &[], message.as_bytes());
    assert_eq!(verification_as_post.status, 403, "{verification_as_post:?}");
    // A new message is new.
    let next = w.post_signed(&text("oUser", "计数"));
    assert_eq!(parse_reply(&next.body).get("Content"), Some("run 2"));
}

/// Sends `慢` from `oLate` as WeChat's last try (created 10 s before it was signed), which
/// cannot wait for the result: the answer says it is coming, and the result (its script
/// touches `finished`) is kept for the user's next message.
fn leave_a_late_result(w: &Wxmp, dir: &Path) {
    let notice = w.post_signed(&created_10_s_ago(&text("oLate", "慢")));
    assert_eq!(
        parse_reply(&notice.body).get("Content"),
        Some("结果还在生成，稍后发任意消息查看")
    );
    let deadline = Instant::now() + Duration::from_secs(8);
    while !dir.join("finished").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(w.wait_for_log("a late result is kept for the next message"));
}

/// Waits (up to 5 s) for `file`, which a program makes when it has started.
fn wait_until_started(file: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !file.exists() {
        assert!(Instant::now() < deadline, "the program did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `body` with a `CreateTime` 10 s before now: WeChat's last try, which cannot wait for a slow
/// command's result.
fn created_10_s_ago(body: &str) -> String {
    let (open, close) = (
        body.find("<CreateTime>").unwrap(),
        body.find("</CreateTime>").unwrap(),
    );
    format!(
        "{}<CreateTime>{}{}",
        &body[..open],
        now() - 10,
        &body[close..]
    )
}

#[test]
fn a_late_result_waits_for_its_user_across_a_restart() {
    let dir = site(
        "restart-late",
        "[[command]]\nname = \"慢\"\nexec = [\"./slow.sh\"]\ntimeout = 12",
        &[("slow.sh", "sleep 6\necho LATE RESULT\ntouch finished")],
    );
    let w = serve(&dir);
    leave_a_late_result(&w, &dir);
    stop(w);

    let w = serve(&dir);
    assert!(w.wait_for_log("1 late result(s)"));
    let next = w.post_signed(&text("oLate", "你好"));
    assert_eq!(
        parse_reply(&next.body).get("Content"),
        Some(format!("上次的结果：LATE RESULT\n\n{DEFAULT_REPLY}").as_str())
    );
    let after = w.post_signed(&text("oLate", "你好"));
    assert_eq!(
        parse_reply(&after.body).get("Content"),
        Some(DEFAULT_REPLY),
        "delivered once"
    );
}

#[test]
fn a_late_result_is_not_spent_on_an_answer_the_stop_cut_short() {
    // A late result goes with its user's next text answer. When that answer is a command the
    // stop cuts short, the answer is not handed on (the next process runs the command again on
    // WeChat's next try) and may reach nobody, as here, where WeChat's try has given up: the
    // late result must wait for the next process, not be spent on that answer.
    let dir = site(
        "restart-late-cut",
        "[[command]]\nname = \"慢\"\nexec = [\"./slow.sh\"]\ntimeout = 12\n\
         [[command]]\nname = \"抓取\"\nexec = [\"./hang.sh\"]\ntimeout = 12",
        &[
            ("slow.sh", "sleep 5\necho LATE RESULT\ntouch finished"),
            ("hang.sh", "touch hanging\nsleep 30"),
        ],
    );
    let w = serve(&dir);
    leave_a_late_result(&w, &dir);
    // The user's next message runs a command that is still running at the stop; its try gives
    // up first, as WeChat's does after 5 s.
    let (addr, url, message) = (w.addr, signed_query("/", TOKEN), text("oLate", "抓取"));
    let gone = std::thread::spawn(move || {
        try_http(
            addr,
            "POST",
            &url,
            &[],
            message.as_bytes(),
            Duration::from_millis(500),
        )
    });
    wait_until_started(&dir.join("hanging"));
    assert!(gone.join().unwrap().is_err(), "the try gave up unanswered");
    stop(w);
    let saved = std::fs::read_to_string(state_file(&dir)).unwrap_or_default();
    assert!(saved.contains("[[late]]"), "{saved}");
    let w = serve(&dir);
    assert!(w.wait_for_log("1 late result(s)"), "{}", w.stderr());
    let next = w.post_signed(&text("oLate", "你好"));
    assert_eq!(
        parse_reply(&next.body).get("Content"),
        Some(format!("上次的结果：LATE RESULT\n\n{DEFAULT_REPLY}").as_str())
    );
}

#[test]
fn a_state_file_wxmp_cannot_read_is_reported_and_the_server_starts_empty() {
    let dir = site("restart-bad", "", &[]);
    std::fs::create_dir_all(dir.join("log")).unwrap();
    std::fs::write(state_file(&dir), "answers = [ not toml").unwrap();
    let w = serve(&dir);
    assert!(w.wait_for_log("is not a state wxmp wrote"));
    assert!(w
        .stderr()
        .contains("starting without the last stop's state"));
    assert!(!state_file(&dir).exists(), "deleted: it can never be read");
    assert_text_reply(&w.post_signed(&text("oUser", "hi")), "oUser", DEFAULT_REPLY);
    // This process answered a message: its stop hands that on.
    stop(w);
    assert!(state_file(&dir).exists());
}

#[test]
fn a_fifo_where_the_state_should_be_does_not_hold_up_the_start() {
    // Opening a FIFO waits for a writer: the start would hang after binding its port, deaf
    // even to SIGTERM.
    let dir = site("restart-fifo", "", &[]);
    std::fs::create_dir_all(dir.join("log")).unwrap();
    let path = std::ffi::CString::new(state_file(&dir).to_str().unwrap()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let w = serve(&dir);
    assert!(
        w.wait_for_log("wxmp.state: not a regular file; starting without the last stop's state"),
        "{}",
        w.stderr()
    );
    assert_text_reply(&w.post_signed(&text("oUser", "hi")), "oUser", DEFAULT_REPLY);
    stop(w);
}

#[test]
fn a_full_retry_table_hands_on_its_newest_answers() {
    // 260 answers of ~2 KiB fill the table's byte budget; the last message's answer is the one
    // whose retries are still to come, and the next process must have it.
    let long = "x".repeat(2000);
    let dir = site(
        "restart-full-table",
        &format!(
            "[[command]]\nname = \"长\"\nreply = \"{long}\"\n\
             [[command]]\nname = \"计数\"\nexec = [\"./count.sh\"]"
        ),
        &[(
            "count.sh",
            &format!("echo run >> runs.txt\necho \"run $(wc -l < runs.txt) {long}\""),
        )],
    );
    let w = serve(&dir);
    for _ in 0..260 {
        assert_eq!(w.post_signed(&text("oUser", "长")).status, 200);
    }
    // As long as the others: the table is over its budget until the next claim makes room.
    let message = text("oUser", "计数");
    let first = w.post_signed(&message);
    assert!(first.body.contains("run 1 x"), "{first:?}");
    stop(w);
    let w = serve(&dir);
    assert!(
        w.wait_for_log("carried on from the last stop"),
        "{}",
        w.stderr()
    );
    assert!(w.stderr().contains("; 0 too old to keep"), "{}", w.stderr());
    assert_eq!(w.post_signed(&message).body, first.body);
    assert_eq!(
        std::fs::read_to_string(dir.join("runs.txt")).unwrap(),
        "run\n"
    );
    stop(w);
}

#[test]
fn a_listening_socket_from_systemd_is_used_and_not_handed_to_programs() {
    // What a socket unit (deploy/wxmp.socket) does, by systemd's own tool: it listens, and runs
    // wxmp in its place with the socket as fd 3 once a connection comes.
    let dir = site(
        "restart-activation",
        "[[command]]\nname = \"env\"\nexec = [\"/bin/sh\", \"-c\", \"echo \
         pid=${LISTEN_PID:-none} fds=${LISTEN_FDS:-none} sockets=$(ls -l /proc/$$/fd | grep -c \
         socket)\"]",
        &[],
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let first = std::thread::spawn({
        let listen = listen.clone();
        move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(&listen).is_err() {
                assert!(Instant::now() < deadline, "nothing listens on {listen}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let wxmp = env!("CARGO_BIN_EXE_wxmp");
    ensure_command("systemd-socket-activate", "systemd");
    let tool = std::process::Command::new("systemd-socket-activate")
        .arg("--version")
        .output();
    assert!(
        tool.is_ok(),
        "systemd-socket-activate is needed (Debian: apt-get install systemd; as root the test does it itself): {tool:?}"
    );
    let w = Wxmp::start_program(
        "systemd-socket-activate",
        &dir,
        &["-l", &listen, wxmp, "serve", "--config", "wxmp.toml"],
        &[],
        |_| {},
    );
    first.join().unwrap();
    assert_eq!(w.addr.port(), port, "{}", w.stderr());
    assert!(
        w.wait_for_log("(systemd's socket; `listen` is not used)"),
        "{}",
        w.stderr()
    );
    assert!(
        w.wait_for_log(&format!(
            "systemd's socket is {listen} but `listen` in wxmp.toml is 127.0.0.1:0: set them alike"
        )),
        "{}",
        w.stderr()
    );
    assert_text_reply(&w.post_signed(&text("oUser", "hi")), "oUser", DEFAULT_REPLY);
    assert_text_reply(
        &w.post_signed(&text("oUser", "env")),
        "oUser",
        "pid=none fds=none sockets=0",
    );
    stop(w);
}

#[test]
fn a_stop_with_nothing_to_hand_on_writes_no_state() {
    let dir = site("restart-empty", "", &[]);
    let w = serve(&dir);
    assert_eq!(w.get("/healthz").body, "ok");
    // Nor does a running server with nothing to hand on write checkpoints.
    std::thread::sleep(Duration::from_millis(2_500));
    assert!(!state_file(&dir).exists());
    stop(w);
    assert!(dir.join("log").exists());
    assert!(!state_file(&dir).exists());
    let log = std::fs::read_to_string(dir.join("log/wxmp.log")).unwrap();
    assert!(log.lines().any(|l| l.ends_with("wxmp: stopped")), "{log}");
}

/// A site whose `抓取` command is stopped the first time (it waits until wxmp stops it) and
/// answers `run N` at once after that; each run writes its process (group) id to `pid`.
fn interrupted_site(tag: &str) -> PathBuf {
    site(
        tag,
        "[[command]]\nname = \"抓取\"\nexec = [\"./fetch.sh\"]\ntimeout = 12",
        &[(
            "fetch.sh",
            "echo $$ > pid\necho run >> runs.txt\n\
             if [ \"$(wc -l < runs.txt)\" -lt 2 ]; then sleep 11; fi\n\
             echo \"run $(wc -l < runs.txt)\"",
        )],
    )
}

/// Sends `抓取` (a fresh message) on its own thread and waits until its program is running.
fn fetch_in_background(w: &Wxmp, dir: &Path) -> (String, std::thread::JoinHandle<Resp>) {
    let message = text("oUser", "抓取");
    let (addr, url, body) = (w.addr, signed_query("/", TOKEN), message.clone());
    let first = std::thread::spawn(move || {
        http(
            addr,
            "POST",
            &url,
            &[],
            body.as_bytes(),
            Duration::from_secs(15),
        )
    });
    wait_until_started(&dir.join("pid"));
    (message, first)
}

/// After a stop that cut `抓取` short: the waiting try was told so, the answer was not handed
/// on, and WeChat's next try, reaching the new process, runs the command again.
fn the_next_process_runs_it_again(dir: &Path, message: &str, first: std::thread::JoinHandle<Resp>) {
    let first = first.join().unwrap();
    assert_eq!(
        parse_reply(&first.body).get("Content"),
        Some("服务正在重启，指令已停止，请稍后再试"),
        "{first:?}"
    );
    let saved = std::fs::read_to_string(state_file(dir)).unwrap_or_default();
    assert!(!saved.contains("服务正在重启"), "{saved}");
    assert!(!saved.contains("指令执行失败"), "{saved}");
    let w = serve(dir);
    let retry = w.post_signed(message);
    assert_eq!(
        parse_reply(&retry.body).get("Content"),
        Some("run 2"),
        "{retry:?}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("runs.txt")).unwrap(),
        "run\nrun\n"
    );
}

#[test]
fn a_command_the_stop_cuts_short_runs_again_after_the_restart() {
    let dir = interrupted_site("restart-cut-short");
    let w = serve(&dir);
    let (message, first) = fetch_in_background(&w, &dir);
    // The program outlives the 4 s grace: wxmp kills it and tells the waiting try so.
    stop(w);
    let log = std::fs::read_to_string(dir.join("log").join("wxmp.log")).unwrap();
    assert!(
        log.contains("shutdown: 1 slow request(s) still running after 4s, leaving them"),
        "{log}"
    );
    the_next_process_runs_it_again(&dir, &message, first);
}

#[test]
fn messages_that_arrive_while_the_stop_waits_for_a_command_are_answered() {
    // A stop (`systemctl restart`) waits up to 4 s for a running command, and WeChat keeps
    // calling meanwhile. Each message gets an answer, not tiny_http's empty 500 for a request
    // nobody took, which WeChat shows as "该公众号暂时无法提供服务".
    let dir = interrupted_site("restart-grace");
    let w = serve(&dir);
    let (message, first) = fetch_in_background(&w, &dir);
    w.signal(libc::SIGTERM);
    assert!(w.wait_for_log("stopping: finishing requests in flight"));
    // Past the first moments of the stop, when workers still waiting for a request took one.
    std::thread::sleep(Duration::from_millis(500));
    let other = w.post_signed(&text("oOther", "你好"));
    assert_text_reply(&other, "oOther", DEFAULT_REPLY);
    // A command that would start a program now is not started: the user is told to try again,
    // and WeChat's next try, reaching the next process, runs it.
    let started = Instant::now();
    let refused = w.post_signed(&text("oThird", "抓取"));
    assert_text_reply(&refused, "oThird", "服务正在重启，指令已停止，请稍后再试");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("runs.txt")).unwrap(),
        "run\n",
        "only the first program ran"
    );
    assert!(
        w.wait_for_log("oOther text \"你好\" -> text"),
        "{}",
        w.stderr()
    );
    stop(w);
    the_next_process_runs_it_again(&dir, &message, first);
}

#[test]
fn a_command_killed_by_the_same_stop_signal_as_wxmp_runs_again_after_the_restart() {
    // systemd's default KillMode=control-group (or a panel killing the process tree) sends
    // SIGTERM to wxmp and to its programs at once; the program's end is no failure of its own.
    let dir = interrupted_site("restart-group-term");
    let w = serve(&dir);
    let (message, first) = fetch_in_background(&w, &dir);
    let pid: i32 = std::fs::read_to_string(dir.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on the program's own process group (it is its leader) and on wxmp.
    unsafe { libc::kill(-pid, libc::SIGTERM) };
    // The program's end is seen first; wxmp's own SIGTERM follows within its 200 ms window.
    std::thread::sleep(Duration::from_millis(50));
    stop(w);
    the_next_process_runs_it_again(&dir, &message, first);
}

#[test]
fn a_program_ended_by_a_signal_of_its_own_is_a_failure_not_a_stop() {
    // Only the same stop signal as wxmp's counts as the stop: a program killed otherwise (here
    // by itself) failed, and its answer is kept and handed on like any other.
    let dir = site(
        "restart-own-signal",
        "[[command]]\nname = \"自杀\"\nexec = [\"./die.sh\"]",
        &[("die.sh", "kill -TERM $$")],
    );
    let w = serve(&dir);
    let r = w.post_signed(&text("oUser", "自杀"));
    assert_eq!(
        parse_reply(&r.body).get("Content"),
        Some("指令执行失败（被信号 15 终止）"),
        "{r:?}"
    );
    stop(w);
    let saved = std::fs::read_to_string(state_file(&dir)).unwrap();
    assert!(saved.contains("被信号 15 终止"), "{saved}");
}

#[test]
fn a_busy_server_writes_its_checkpoint_once_a_second_not_at_every_look() {
    let dir = site("restart-checkpoint-rate", "", &[]);
    let w = serve(&dir);
    let addr = w.addr;
    let stop_sending = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop_sending = std::sync::Arc::clone(&stop_sending);
        std::thread::spawn(move || {
            while !stop_sending.load(std::sync::atomic::Ordering::SeqCst) {
                let body = text("oUser", "hi");
                http(
                    addr,
                    "POST",
                    &signed_query("/", TOKEN),
                    &[],
                    body.as_bytes(),
                    Duration::from_secs(5),
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    // Every write is a new file renamed into place: count the files seen over 3.5 s (by inode
    // and modification time, as a freed inode number may come back).
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let until = Instant::now() + Duration::from_millis(3_500);
    while Instant::now() < until {
        if let Ok(m) = std::fs::metadata(state_file(&dir)) {
            seen.insert((m.ino(), m.mtime(), m.mtime_nsec()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop_sending.store(true, std::sync::atomic::Ordering::SeqCst);
    sender.join().unwrap();
    assert!(
        (2..=5).contains(&seen.len()),
        "{} checkpoints in 3.5 s of steady messages",
        seen.len()
    );
}

/// Waits (up to 5 s) for a checkpoint of the running server that `holds` something; its text.
fn wait_for_checkpoint(dir: &Path, holds: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(state_file(dir)).unwrap_or_default();
        if text.contains("checkpoint = true") && text.contains(holds) {
            return text;
        }
        assert!(Instant::now() < deadline, "no checkpoint holding {holds:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_process_hands_on_its_last_checkpoint() {
    let dir = counting_site("restart-killed");
    let w = serve(&dir);
    let (message, url, first) = count_once(&w);
    // Within a second the running server has kept what it answered.
    let checkpoint = wait_for_checkpoint(&dir, "run 1");
    let mode = std::fs::metadata(state_file(&dir))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "readable by wxmp's user only");
    assert!(!checkpoint.contains(TOKEN), "no token in the state");
    // The out-of-memory killer, or `kill -9`: no stop, no state saved at the end.
    drop(w);

    let w = serve(&dir);
    assert!(
        w.wait_for_log(
            "carried on from the last checkpoint (the last process was killed or crashed; at \
             most its last second is lost): 1 answered message(s) for their retries, 1 signed \
             URL(s)"
        ),
        "{}",
        w.stderr()
    );
    // WeChat's retry reaches the new process: the same bytes, and the command did not run again.
    let retry = w.post_signed(&message);
    assert_eq!(retry.body, first.body, "byte for byte");
    assert_eq!(
        std::fs::read_to_string(dir.join("runs.txt")).unwrap(),
        "run\n",
        "the command ran once"
    );
    let forged = w.request("POST", &url, &[], text("oAdmin", "计数").as_bytes());
    assert_eq!(forged.status, 403, "{forged:?}");
    // And what the new process knows is kept for the next one the same way, killed again.
    wait_for_checkpoint(&dir, "run 1");
    drop(w);
    let w = serve(&dir);
    assert!(w.wait_for_log("carried on from the last checkpoint"));
    assert_eq!(w.post_signed(&message).body, first.body);
    // A clean stop's file is not a checkpoint.
    stop(w);
    let stopped = std::fs::read_to_string(state_file(&dir)).unwrap();
    assert!(!stopped.contains("checkpoint"), "{stopped}");
    let w = serve(&dir);
    assert!(w.wait_for_log("carried on from the last stop: 1 answered message(s)"));
}

#[test]
fn a_checkpoint_that_cannot_be_written_is_reported_once_and_tried_again() {
    let dir = site("restart-checkpoint-fails", "", &[]);
    // Something in the way: a folder where the file goes.
    std::fs::create_dir_all(state_file(&dir).join("in-the-way")).unwrap();
    let w = serve(&dir);
    assert!(w.wait_for_log("starting without the last stop's state"));
    for i in 0..3 {
        assert_text_reply(&w.post_signed(&text("oUser", "hi")), "oUser", DEFAULT_REPLY);
        std::thread::sleep(Duration::from_millis(1_100 * (i + 1) / 3));
    }
    assert!(w.wait_for_log("checkpoint: cannot write"), "{}", w.stderr());
    std::thread::sleep(Duration::from_millis(1_200));
    assert_eq!(
        w.stderr().matches("checkpoint: cannot write").count(),
        1,
        "warned once, not every second: {}",
        w.stderr()
    );
    // Out of the way: the next checkpoint is written, and says so.
    std::fs::remove_dir_all(state_file(&dir)).unwrap();
    assert_text_reply(&w.post_signed(&text("oUser", "hi")), "oUser", DEFAULT_REPLY);
    assert!(w.wait_for_log("checkpoints are written again"));
    wait_for_checkpoint(&dir, "answers");
}

#[test]
fn what_a_start_took_is_kept_again_at_once_and_a_second_server_takes_nothing() {
    let (dir, message, _, first) = counted_then_stopped("restart-start-window");
    let w = serve(&dir);
    let started = Instant::now();
    assert!(w.wait_for_log("carried on from the last stop: 1 answered message(s)"));
    // Killed in its first second, the new process has already kept what it took: its first
    // checkpoint comes at the first look (~0.1 s), not a whole interval (1 s) after the start.
    wait_for_checkpoint(&dir, "run 1");
    assert!(
        started.elapsed() < Duration::from_millis(950),
        "the first checkpoint came {:?} after the start",
        started.elapsed()
    );
    // A second `wxmp serve` started by mistake on the same address fails to bind, and leaves
    // the running server's file alone.
    let second = dir.join("second.toml");
    std::fs::write(
        &second,
        format!(
            "token = \"{TOKEN}\"\nlisten = \"{}\"\n[[command]]\nname = \"计数\"\nexec = [\"./count.sh\"]\n",
            w.addr
        ),
    )
    .unwrap();
    let out = wxmp_command()
        .args(["serve", "--config", "second.toml"])
        .current_dir(&dir)
        .env_remove("WXMP_LISTEN")
        .env_remove("WXMP_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let kept = std::fs::read_to_string(state_file(&dir)).expect("still there");
    assert!(kept.contains("run 1"), "{kept}");
    drop(w);
    let w = serve(&dir);
    assert!(w.wait_for_log("carried on from the last checkpoint"));
    assert_eq!(w.post_signed(&message).body, first.body);
}

#[test]
fn a_state_saved_long_ago_is_too_old_to_keep() {
    let (dir, message, _, _) = counted_then_stopped("restart-old");
    // As if the server had stayed down for 11 minutes: WeChat gave up on the message long ago,
    // and every signed URL of that time is stale.
    move_the_save_back(&dir, 660_000);

    let w = serve(&dir);
    assert!(w.wait_for_log(
        "carried on from the last stop: 0 answered message(s) for their retries, 0 signed \
         URL(s), 0 late result(s); 2 too old to keep"
    ));
    let again = w.post_signed(&message);
    assert_eq!(parse_reply(&again.body).get("Content"), Some("run 2"));
}

#[test]
fn a_url_and_message_replayed_after_wechats_retries_are_refused() {
    // The retry table keeps an answer 30 s, WeChat's tries span ~15 s, and a signed URL is good
    // for 5 minutes: without the ledger's dates, the URL and body of an event read from a log
    // would run its command again every 30 s. Here the 30 s pass during a restart (the state's
    // save moved 40 s back): the answer is too old to keep, the URL is remembered and dated.
    let (dir, message, url, _) = counted_then_stopped("restart-replay-spent");
    move_the_save_back(&dir, 40_000);
    let w = serve(&dir);
    assert!(w.wait_for_log("0 answered message(s) for their retries, 1 signed URL(s)"));
    let replayed = w.request("POST", &url, &[], message.as_bytes());
    assert_eq!(replayed.status, 403, "{replayed:?}");
    assert_eq!(replayed.body, "forbidden: signed URL already used");
    assert!(w.wait_for_log("after WeChat's retries: a URL and message replayed from a log"));
    assert_eq!(
        std::fs::read_to_string(dir.join("runs.txt")).unwrap(),
        "run\n",
        "the command did not run again"
    );
}

#[test]
fn a_url_used_over_30_s_before_a_stop_is_spent_after_the_restart() {
    // The stop came 31 s after the message, and the start right after it: the answer is too old
    // to keep, and the URL's first use is 31 s old too, not dated by the save.
    let (dir, message, url, _) = counted_then_stopped("restart-replay-aged");
    let path = state_file(&dir);
    let mut saved = wxmp::state::take(&path).unwrap().expect("saved");
    for answer in &mut saved.answers {
        answer.age_ms += 31_000;
    }
    let (urls, bad) = saved.url_entries();
    assert_eq!((urls.len(), bad), (1, 0));
    saved.urls = urls
        .into_iter()
        .map(|(u, m, age)| wxmp::state::Saved::url_entry(u, m, age + 31_000))
        .collect();
    wxmp::state::save(&path, &saved).unwrap();
    let w = serve(&dir);
    assert!(w.wait_for_log("0 answered message(s) for their retries, 1 signed URL(s)"));
    let replayed = w.request("POST", &url, &[], message.as_bytes());
    assert_eq!(replayed.status, 403, "{replayed:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("runs.txt")).unwrap(),
        "run\n",
        "the command did not run again"
    );
}

#[test]
fn a_verification_alone_is_handed_on() {
    // WeChat's 提交 verified the server just before a restart: that URL, read from a log, still
    // carries no message afterwards.
    let dir = site("restart-verify", "", &[]);
    let w = serve(&dir);
    let verification = format!("{}&echostr=e1", signed_query("/", TOKEN));
    assert_eq!(w.get(&verification).body, "e1");
    stop(w);
    assert!(state_file(&dir).exists());
    let w = serve(&dir);
    assert!(w.wait_for_log("0 answered message(s) for their retries, 1 signed URL(s)"));
    let post = w.request("POST", &verification, &[], text("oAdmin", "hi").as_bytes());
    assert_eq!(post.status, 403, "{post:?}");
}

#[test]
fn what_a_state_holds_that_this_wxmp_cannot_use_is_counted_and_skipped() {
    let dir = site("restart-mixed", "", &[]);
    std::fs::create_dir_all(dir.join("log")).unwrap();
    let now_ms = now() * 1000;
    let kept = "<xml><Content><![CDATA[kept answer]]></Content></xml>";
    let url = sign(&[TOKEN, &now().to_string(), "424242"]);
    std::fs::write(
        state_file(&dir),
        format!(
            "version = 1\nsaved_at_ms = {now_ms}\n\
             urls = [\"{}:0000000000000001\", \"not a fingerprint\"]\n\
             [[answers]]\nkey = \"id|oUser|777001\"\nage_ms = 1000\ntries = 1\nkind = \"text\"\nbody = \"{}\"\n\
             [[answers]]\nkey = \"id|oUser|777002\"\nage_ms = 1000\ntries = 1\nkind = \"hologram\"\nbody = \"x\"\n\
             [[late]]\nopenid = \"oFresh\"\nage_ms = 1000\ntext = \"fresh result\"\n\
             [[late]]\nopenid = \"oStale\"\nage_ms = 90000000\ntext = \"a day old\"\n",
            &url[..16],
            kept.replace('"', "\\\"")
        ),
    )
    .unwrap();
    let w = serve(&dir);
    assert!(w.wait_for_log(
        "carried on from the last stop: 1 answered message(s) for their retries, 1 signed \
         URL(s), 1 late result(s); 1 too old to keep"
    ));
    assert!(w.wait_for_log("the saved state had 2 entr(ies) this wxmp does not understand"));
    // The answer it could use is a retry's answer now.
    let retry = msg(
        "oUser",
        "text",
        &[("Content", "anything"), ("MsgId", "777001")],
    );
    assert_eq!(w.post_signed(&retry).body, kept);
    let fresh = w.post_signed(&text("oFresh", "hi"));
    assert_eq!(
        parse_reply(&fresh.body).get("Content"),
        Some(format!("上次的结果：fresh result\n\n{DEFAULT_REPLY}").as_str())
    );
    let stale = w.post_signed(&text("oStale", "hi"));
    assert_eq!(parse_reply(&stale.body).get("Content"), Some(DEFAULT_REPLY));
}

/// Starts wxmp on `listener` the way systemd starts it from `deploy/wxmp.socket`: the socket as
/// fd 3, `LISTEN_FDS=1` and `LISTEN_PID` set to wxmp's own process id. The test keeps the
/// listener open across processes, as systemd keeps the socket.
fn serve_on_socket(dir: &Path, listener: &std::net::TcpListener) -> Wxmp {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = listener.as_raw_fd();
    let wxmp = env!("CARGO_BIN_EXE_wxmp");
    Wxmp::start_program(
        "/bin/sh",
        dir,
        &[
            "-c",
            &format!("LISTEN_PID=$$ LISTEN_FDS=1 exec {wxmp} serve --config wxmp.toml"),
        ],
        &[],
        move |cmd| {
            // SAFETY: only async-signal-safe calls between fork and exec. dup2 leaves the new
            // fd 3 without close-on-exec; if the listener is fd 3 already, that flag is cleared.
            unsafe {
                cmd.pre_exec(move || {
                    let ok = if fd == 3 {
                        libc::fcntl(3, libc::F_SETFD, 0) == 0
                    } else {
                        libc::dup2(fd, 3) == 3
                    };
                    if ok {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        },
    )
}

/// One message on a new connection, as nginx sends it; `Err` says what went wrong.
fn one_message(addr: std::net::SocketAddr, n: usize) -> Result<(), String> {
    let body = text("oUser", &format!("hi {n}"));
    let target = signed_query("/", TOKEN);
    let timeout = Duration::from_secs(20);
    let resp = try_http(addr, "POST", &target, &[], body.as_bytes(), timeout)
        .map_err(|e| format!("message {n}: {e}"))?;
    if resp.status == 200 && resp.body.contains(DEFAULT_REPLY) {
        Ok(())
    } else {
        Err(format!("message {n}: {} {:?}", resp.status, resp.body))
    }
}

#[test]
fn a_restart_on_systemds_socket_loses_no_connection() {
    // Messages on new connections (as nginx sends them) keep coming while one process stops
    // and the next starts on the same socket: every one is answered, by one process or the
    // other. Before the accept loop was moved off the socket ahead of the stop, tiny_http took
    // the connections of the stop's last moments and the process exited with them unanswered.
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = site("restart-handover", "", &[]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let first = serve_on_socket(&dir, &listener);
    assert!(
        first.wait_for_log("(systemd's socket; `listen` is not used)"),
        "{}",
        first.stderr()
    );
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (done, sent) = (done.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut failures = Vec::new();
                while !done.load(Ordering::SeqCst) {
                    let n = sent.fetch_add(1, Ordering::SeqCst);
                    if let Err(e) = one_message(addr, n) {
                        failures.push(e);
                    }
                }
                failures
            })
        })
        .collect();
    let count = || sent.load(Ordering::SeqCst);
    let mut during = 0;
    let mut w = first;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(300));
        let before = count();
        stop(w);
        w = serve_on_socket(&dir, &listener);
        during += count() - before;
    }
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::SeqCst);
    let failures: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    stop(w);
    // Each client has a message in flight at every stop (the test's point), and more are sent
    // while the old process drains and the new one starts.
    assert!(
        during >= 12,
        "too few messages were sent during the restarts to tell: {during}"
    );
    assert!(
        failures.is_empty(),
        "{} of {} messages unanswered, e.g. {:?}",
        failures.len(),
        count(),
        &failures[..failures.len().min(3)]
    );
}
