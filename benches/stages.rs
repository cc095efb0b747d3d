//! What wxmp's own code costs per message, stage by stage, without HTTP: the in-process half of
//! "where the time goes" (docs/benchmarks.md). `cargo bench --bench compare` measures the whole
//! server against the bare tiny_http floor; this bench says how much of the difference is
//! wxmp's own work (parsing, signing, the retry table, routing, the reply, the log line's
//! formatting) and how much is left for the kernel, tiny_http and the allocator under load.
//!
//! ```text
//! cargo bench --bench stages                # ~10 s: every stage, 1 s each after a warm-up
//! cargo bench --bench stages -- --secs 3    # longer, steadier
//! ```
//!
//! Each stage runs alone on one thread in a tight loop over fresh messages (a new `MsgId` each
//! time, as the load generator sends), and reports nanoseconds per message, the median of five
//! slices. Run with no arguments at all (as `cargo test --benches` does) it prints its usage
//! and exits 0.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wxmp::config::Config;
use wxmp::crypto::MsgCrypt;
use wxmp::dedup::{Claim, Dedup};
use wxmp::router::{Handler, Route, Router};
use wxmp::server::Query;

const TOKEN: &str = "benchToken2024";
const APP_ID: &str = "wxbench0123456789";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

/// The same configuration as the `compare` bench's wxmp rows (the `file` command's file is
/// never read here: the messages do not ask for it).
const CONFIG: &str =
    "token = \"benchToken2024\"\n\n[reply]\ndefault = \"收到，发送 help 查看指令\"\n\n\
    [[command]]\nname = \"news\"\nfile = \"news.txt\"\n\n\
    [[command]]\nprefix = \"echo\"\nexec = [\"/bin/echo\", \"echoed\", \"{args}\"]\n";

fn text_message(n: u64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName>\
         <FromUserName><![CDATA[oBENCH{}]]></FromUserName><CreateTime>1700000000</CreateTime>\
         <MsgType><![CDATA[text]]></MsgType><Content><![CDATA[hello wxmp {n}]]></Content>\
         <MsgId>{}</MsgId></xml>",
        n % 32,
        1_000_000_000_000 + n
    )
}

/// The server's per-message log line (`server::log_answer`'s format) for `m`, answered `text`.
struct LogLine<'a>(&'a wxmp::message::Message);

impl std::fmt::Display for LogLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (m, peer, kind, elapsed_ms) = (self.0, "203.0.113.7", "text", 0);
        write!(
            f,
            "{} {} {}{} \"{}\" -> {} {}ms",
            peer,
            m.from_user,
            m.msg_type,
            m.event_name().map(|e| format!("/{e}")).unwrap_or_default(),
            m.summary(),
            kind,
            elapsed_ms
        )
    }
}

/// The system allocator, counting allocations (`alloc`, `alloc_zeroed`, `realloc`): under load
/// every allocation may take an allocator lock shared with tiny_http's connection threads.
struct CountingAlloc;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// What a stage costs per message.
#[derive(Clone, Copy)]
struct Cost {
    /// Nanoseconds, the median of five slices.
    ns: f64,
    /// Allocations (including reallocations), over all slices.
    allocs: f64,
}

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>8.0} ns {:>6.1} allocations", self.ns, self.allocs)
    }
}

/// Runs `f(i)` for `secs` seconds in five slices: the median slice's ns per call, and the
/// allocations per call.
fn measure(secs: f64, mut f: impl FnMut(u64)) -> Cost {
    let mut i = 0u64;
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(200) {
        f(i);
        i += 1;
    }
    let slice = Duration::from_secs_f64(secs / 5.0);
    let (allocs_before, calls_before) = (ALLOCATIONS.load(Ordering::Relaxed), i);
    let mut per_call: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < slice {
                for _ in 0..64 {
                    f(i);
                    i += 1;
                }
                n += 64;
            }
            start.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    let allocs = (ALLOCATIONS.load(Ordering::Relaxed) - allocs_before) as f64
        / (i - calls_before).max(1) as f64;
    per_call.sort_by(f64::total_cmp);
    Cost {
        ns: per_call[2],
        allocs,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: then only say how.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        println!("usage: cargo bench --bench stages [-- --secs 1]");
        return;
    }
    let secs: f64 = match args.iter().position(|a| a == "--secs") {
        None => 1.0,
        Some(i) => match args.get(i + 1).and_then(|s| s.parse().ok()) {
            Some(s) if s > 0.0 => s,
            _ => {
                eprintln!("--secs needs a positive number");
                std::process::exit(2);
            }
        },
    };
    let config = match Config::from_toml(CONFIG) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("the bench's config does not load: {e}");
            std::process::exit(1);
        }
    };
    let router = match Router::from_config(&config) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("the bench's commands do not load: {e:?}");
            std::process::exit(1);
        }
    };
    let crypt = match MsgCrypt::new(TOKEN, AES_KEY, APP_ID) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("the bench's AES key: {e}");
            std::process::exit(1);
        }
    };
    let (ts, nonce) = ("1700000000", "123456789");
    let signature = wxmp::signature::sign(&[TOKEN, ts, nonce]);
    let url = format!(
        "signature={signature}&timestamp={ts}&nonce={nonce}&openid=oBENCH1&encrypt_type=aes&msg_signature=0"
    );
    let bodies: Vec<String> = (0..1024).map(text_message).collect();
    let body = |i: u64| &bodies[(i % 1024) as usize];
    let parsed: Vec<_> = bodies
        .iter()
        .map(|b| wxmp::message::parse(b).expect("the bench's own message parses"))
        .collect();
    let msg = |i: u64| &parsed[(i % 1024) as usize];
    let reply = match router.route(msg(0)) {
        Route::Now(r) => r,
        Route::Later(_) => unreachable!("a plain text message is answered at once"),
    };
    let xml = reply.render("oBENCH1", "gh_bench", 1_700_000_000);
    let sealed: Vec<String> = bodies
        .iter()
        .take(64)
        .map(|b| crypt.encrypt(b).expect("encrypts"))
        .collect();
    let sealed_sigs: Vec<String> = sealed
        .iter()
        .map(|e| wxmp::signature::sign(&[TOKEN, ts, nonce, e]))
        .collect();
    let dedup: Dedup<std::sync::Arc<str>> =
        Dedup::new(wxmp::dedup::DEFAULT_TTL, wxmp::dedup::DEFAULT_CAPACITY);
    let answer: std::sync::Arc<str> = xml.as_str().into();

    let mut rows: Vec<(&str, Cost)> = Vec::new();
    let mut row = |name, cost: Cost| {
        println!("{name:<46} {cost}");
        rows.push((name, cost));
    };
    println!(
        "wxmp stages, one thread, median of 5 slices of {:.1} s each",
        secs / 5.0
    );
    row(
        "query string parsed",
        measure(secs, |_| {
            black_box(Query::parse(black_box(&url)));
        }),
    );
    row(
        "signature checked (SHA-1, constant time)",
        measure(secs, |_| {
            black_box(wxmp::signature::verify(
                TOKEN,
                ts,
                nonce,
                black_box(&signature),
            ));
        }),
    );
    // Part of "message parsed" (not a row of its own, so the sum stays the path's cost).
    let markup = measure(secs, |i| {
        black_box(wxmp::message::check_markup(body(i)).ok());
    });
    row(
        "message parsed (roxmltree + fields)",
        measure(secs, |i| {
            black_box(wxmp::message::parse(body(i)).ok());
        }),
    );
    println!(
        "{:<46} {markup}",
        "  of which markup checked (check_markup)"
    );
    row(
        "retry table: claim + complete",
        measure(secs, |i| {
            // The key as Message::dedup_key builds it, with a MsgId never seen before.
            let key = format!("id|{}|{}", msg(i).from_user, 2_000_000_000_000 + i);
            if let Claim::First(ticket) = dedup.claim(&key) {
                ticket.complete(std::sync::Arc::clone(&answer));
            }
        }),
    );
    let ledger = wxmp::replay::Ledger::default();
    // 4,096 signed URLs in turn: each comes back after 3,072 others, long forgotten.
    let signatures: Vec<String> = (0..4096u64)
        .map(|n| {
            let (ts, nonce) = (
                (1_700_000_000 + n / 1024).to_string(),
                (100_000_000 + n * 7919).to_string(),
            );
            wxmp::signature::sign(&["token", &ts, &nonce])
        })
        .collect();
    let keys: Vec<String> = parsed.iter().map(|m| m.dedup_key()).collect();
    row(
        "signed URL recorded (1,024 remembered, full)",
        measure(secs, |i| {
            // A URL not among the last 1,024, as for every new message: the message key's
            // SHA-1, one lookup, one insert and the oldest forgotten.
            let sig = &signatures[(i % 4096) as usize];
            black_box(ledger.record(sig, &keys[(i % 1024) as usize]));
        }),
    );
    row(
        "routed (command table, default reply)",
        measure(secs, |i| {
            black_box(router.route(msg(i)));
        }),
    );
    row(
        "reply XML written",
        measure(secs, |i| {
            black_box(reply.render(&msg(i).from_user, &msg(i).to_user, 1_700_000_000));
        }),
    );
    row(
        "log line formatted (not written)",
        measure(secs, |i| {
            black_box(LogLine(msg(i)).to_string());
        }),
    );
    let plain = Cost {
        ns: rows.iter().map(|(_, c)| c.ns).sum(),
        allocs: rows.iter().map(|(_, c)| c.allocs).sum(),
    };
    let logged = measure_log_line(secs, msg(0));

    println!("{:<46} {plain}", "plain message, all stages above");
    match logged {
        Ok(cost) => println!(
            "{:<46} {cost}",
            "log line formatted and queued for the writer"
        ),
        Err(e) => println!("log line written: not measured ({e})"),
    }
    let posts: Vec<String> = sealed
        .iter()
        .map(|e| format!("<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><Encrypt><![CDATA[{e}]]></Encrypt></xml>"))
        .collect();
    let extract = measure(secs, |i| {
        black_box(wxmp::crypto::extract_encrypt(&posts[(i % 64) as usize]).ok());
    });
    println!(
        "{:<46} {extract}",
        "safe mode: <Encrypt> taken from the POST body"
    );
    let open = measure(secs, |i| {
        let k = (i % 64) as usize;
        black_box(
            crypt
                .verify_and_decrypt(&sealed_sigs[k], ts, nonce, &sealed[k])
                .ok(),
        );
    });
    println!("{:<46} {open}", "safe mode: request checked and decrypted");
    let seal = measure(secs, |_| {
        black_box(crypt.seal_reply(&xml, 1_700_000_000).ok());
    });
    println!("{:<46} {seal}", "safe mode: reply encrypted and signed");
    match measure_checkpoint(secs, &xml) {
        Ok(cost) => println!("{:<46} {cost}", "checkpoint, full tables (per checkpoint)"),
        Err(e) => println!("checkpoint: not measured ({e})"),
    }
}

/// A running server's checkpoint with its tables full (`wxmp serve` makes one a second at most,
/// on its main thread): 1,024 answers of `answer` and 1,024 signed URLs snapshotted, encoded
/// and stored (`state::store`: a temporary file, `fsync`, a rename) in a temp folder.
fn measure_checkpoint(secs: f64, answer: &str) -> Result<Cost, String> {
    use wxmp::state::{Saved, SavedAnswer};
    let table: Dedup<std::sync::Arc<str>> =
        Dedup::new(wxmp::dedup::DEFAULT_TTL, wxmp::dedup::DEFAULT_CAPACITY);
    let ledger = wxmp::replay::Ledger::default();
    for i in 0..wxmp::dedup::DEFAULT_CAPACITY {
        let key = format!("{}|oBenchUser|1700000000", 10_000_000 + i);
        if let Claim::First(ticket) = table.claim(&key) {
            ticket.complete(answer.into());
        }
        let signature = wxmp::signature::sign(&[TOKEN, "1700000000", &i.to_string()]);
        ledger.record(&signature, &key);
    }
    let (answers, urls) = (table.answered().len(), ledger.len());
    if answers != wxmp::dedup::DEFAULT_CAPACITY || urls != wxmp::replay::DEFAULT_CAPACITY {
        return Err(format!("tables not full: {answers} answers, {urls} URLs"));
    }
    let dir = std::env::temp_dir().join(format!("wxmp-stages-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = wxmp::state::path_in(&dir);
    let mut failed = None;
    let cost = measure(secs, |_| {
        let saved = Saved {
            checkpoint: true,
            answers: table
                .answered()
                .into_iter()
                .map(|(key, age, tries, body)| SavedAnswer {
                    key,
                    age_ms: age.as_millis() as u64,
                    tries,
                    kind: "text".into(),
                    body,
                })
                .collect(),
            urls: ledger
                .entries()
                .into_iter()
                .map(|(u, m, age)| Saved::url_entry(u, m, age.as_millis() as u64))
                .collect(),
            ..Saved::now()
        };
        if let Err(e) = wxmp::state::store(&path, &saved) {
            failed = Some(e);
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
    match failed {
        Some(e) => Err(e),
        None => Ok(cost),
    }
}

/// The real per-message log line: wxmp's logger (simplelog's format, the rotating file and
/// stderr) into a temp folder, with stderr pointed at /dev/null while it runs. What a worker
/// pays: formatting and queueing; the writes are the logger's writer thread's (one per sink per
/// millisecond of lines), on the other core here.
fn measure_log_line(secs: f64, m: &wxmp::message::Message) -> Result<Cost, String> {
    let dir = std::env::temp_dir().join(format!("wxmp-stages-{}", std::process::id()));
    let settings = wxmp::logging::LogSettings {
        dir: dir.clone(),
        ..wxmp::logging::LogSettings::default()
    };
    wxmp::logging::init(&settings)?;
    let null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?;
    // SAFETY: plain fd juggling on this process's own stderr, restored below.
    let saved = unsafe { libc::dup(2) };
    if saved < 0 || unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 2) } < 0 {
        return Err("cannot point stderr at /dev/null".into());
    }
    let ns = measure(secs, |_| {
        log::info!("{}", LogLine(m));
    });
    wxmp::logging::flush();
    // SAFETY: restores the saved stderr descriptor.
    unsafe {
        libc::dup2(saved, 2);
        libc::close(saved);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ns)
}
