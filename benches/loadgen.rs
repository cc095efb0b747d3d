//! wxmp load generator: WeChat-style signed POSTs over HTTP/1.1, std only.
//!
//! ```text
//! cargo bench --bench loadgen -- --url http://127.0.0.1:PORT/path --token T \
//!     --connections 32 --duration 10 [--new-conn] [--body-kind text|event|image|large] \
//!     [--timeout 5]
//! ```
//!
//! Each of `--connections` client threads ("slots") sends one request at a time: a POST to
//! `path?signature=..&timestamp=..&nonce=..&openid=..` signed with `--token`, carrying a
//! message XML with a fresh `MsgId`. By default a slot keeps one keep-alive connection (and
//! reconnects after an error or a timeout); `--new-conn` opens a connection per request
//! (`Connection: close`). Each request has a `--timeout` (seconds, default 5).
//!
//! Output: one human line, then one machine line starting `LOADGEN ` with `key=value` pairs.
//! Per-slot counts show stranded connections: `conn_min=0` (or `stranded=N`, slots that got
//! no answer at all) means some connections were never served.
//!
//! Only loopback targets are accepted.

#[path = "support/wxhttp.rs"]
mod wxhttp;

use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use wxhttp::{BodyKind, Conn, Target};

struct Options {
    target: Target,
    token: String,
    connections: usize,
    duration: Duration,
    new_conn: bool,
    body_kind: BodyKind,
    timeout: Duration,
}

const USAGE: &str = "usage: loadgen --url http://127.0.0.1:PORT/path --token T [--connections 32] \
[--duration 10] [--new-conn] [--body-kind text|event|image|large] [--timeout 5]";

fn seconds(name: &str, v: &str) -> Result<Duration, String> {
    let s: f64 = v
        .parse()
        .map_err(|_| format!("{name} wants seconds, got {v:?}"))?;
    if !(s > 0.0 && s <= 3600.0) {
        return Err(format!("{name} must be in (0, 3600] seconds"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn parse_args() -> Result<Options, String> {
    let mut url = None;
    let mut token = None;
    let mut connections = 32usize;
    let mut duration = Duration::from_secs(10);
    let mut new_conn = false;
    let mut body_kind = BodyKind::Text;
    let mut timeout = Duration::from_secs(5);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            // `cargo bench` appends `--bench` to a harness=false bench's arguments.
            "--bench" => {}
            "--url" => url = Some(value("--url")?),
            "--token" => token = Some(value("--token")?),
            "--connections" | "-c" => {
                connections = value("--connections")?
                    .parse()
                    .ok()
                    .filter(|n| (1..=10_000).contains(n))
                    .ok_or("--connections must be 1..=10000")?
            }
            "--duration" | "-d" => duration = seconds("--duration", &value("--duration")?)?,
            "--timeout" => timeout = seconds("--timeout", &value("--timeout")?)?,
            "--new-conn" => new_conn = true,
            "--body-kind" => body_kind = BodyKind::parse(&value("--body-kind")?)?,
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let url = url.ok_or_else(|| format!("--url is required\n{USAGE}"))?;
    Ok(Options {
        target: Target::parse(&url)?,
        token: token.ok_or_else(|| format!("--token is required\n{USAGE}"))?,
        connections,
        duration,
        new_conn,
        body_kind,
        timeout,
    })
}

/// What one slot saw.
#[derive(Default)]
struct SlotResult {
    ok: u64,
    non2xx: u64,
    timeouts: u64,
    errors: u64,
    connects: u64,
    /// Latencies of answered requests (2xx or not), microseconds.
    latencies_us: Vec<u32>,
}

fn run_slot(opts: &Options, start: &Barrier, deadline_after: Duration) -> SlotResult {
    let mut r = SlotResult::default();
    let mut conn: Option<Conn> = None;
    start.wait();
    let end = Instant::now() + deadline_after;
    while Instant::now() < end {
        let seq = wxhttp::next_seq();
        let request = wxhttp::signed_post(
            &opts.target,
            &opts.token,
            opts.body_kind,
            seq,
            !opts.new_conn,
        );
        let t0 = Instant::now();
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect(opts.target.addr, opts.timeout) {
                Ok(c) => {
                    r.connects += 1;
                    conn.insert(c)
                }
                Err(e) => {
                    if wxhttp::is_timeout(&e) {
                        r.timeouts += 1;
                    } else {
                        r.errors += 1;
                        // Connection refused and friends: do not spin.
                        thread::sleep(Duration::from_millis(10));
                    }
                    continue;
                }
            },
        };
        match c.round_trip(&request) {
            Ok(resp) => {
                let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
                r.latencies_us.push(us);
                if (200..300).contains(&resp.status) {
                    r.ok += 1;
                } else {
                    r.non2xx += 1;
                }
                if resp.close || opts.new_conn {
                    if let Some(c) = conn.take() {
                        c.wait_for_close();
                    }
                }
            }
            Err(e) => {
                if wxhttp::is_timeout(&e) {
                    r.timeouts += 1;
                } else {
                    r.errors += 1;
                }
                conn = None;
            }
        }
    }
    r
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(us: u32) -> f64 {
    us as f64 / 1000.0
}

fn main() -> ExitCode {
    // `cargo test --all-targets` runs this with no arguments and plain `cargo bench` with only
    // `--bench`: there is no server to load then, so say how to use it and succeed.
    if std::env::args().skip(1).all(|a| a == "--bench") {
        println!("loadgen: no --url given, nothing to do\n{USAGE}");
        return ExitCode::SUCCESS;
    }
    let opts = match parse_args() {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let barrier = Arc::new(Barrier::new(opts.connections + 1));
    let handles: Vec<_> = (0..opts.connections)
        .map(|i| {
            let opts = Arc::clone(&opts);
            let barrier = Arc::clone(&barrier);
            thread::Builder::new()
                .name(format!("loadgen-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || run_slot(&opts, &barrier, opts.duration))
                .expect("spawn client thread")
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let slots: Vec<SlotResult> = handles
        .into_iter()
        .map(|h| h.join().expect("client thread panicked"))
        .collect();
    let elapsed = started.elapsed().as_secs_f64();

    let mut lat: Vec<u32> = Vec::new();
    let (mut ok, mut non2xx, mut timeouts, mut errors, mut connects) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut per_slot: Vec<u64> = Vec::with_capacity(slots.len());
    for s in &slots {
        ok += s.ok;
        non2xx += s.non2xx;
        timeouts += s.timeouts;
        errors += s.errors;
        connects += s.connects;
        per_slot.push(s.ok + s.non2xx);
        lat.extend_from_slice(&s.latencies_us);
    }
    lat.sort_unstable();
    let answered = ok + non2xx;
    let rps = ok as f64 / elapsed;
    let (p50, p99, max) = (
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        lat.last().copied().unwrap_or(0),
    );
    let conn_min = per_slot.iter().copied().min().unwrap_or(0);
    let conn_max = per_slot.iter().copied().max().unwrap_or(0);
    let stranded = per_slot.iter().filter(|&&n| n == 0).count();
    let mode = if opts.new_conn {
        "new-conn"
    } else {
        "keep-alive"
    };

    println!(
        "loadgen: {} {} x{} for {:.1}s -> {} ok ({:.0} req/s), latency p50 {:.2}ms p99 {:.2}ms max {:.2}ms; \
         errors {} timeouts {} non-2xx {}; per-connection answered min {} max {} ({} stranded of {}); {} connects",
        mode,
        opts.body_kind.name(),
        opts.connections,
        elapsed,
        ok,
        rps,
        ms(p50),
        ms(p99),
        ms(max),
        errors,
        timeouts,
        non2xx,
        conn_min,
        conn_max,
        stranded,
        opts.connections,
        connects,
    );
    println!(
        "LOADGEN url=http://{}{} mode={} body_kind={} connections={} duration_s={:.3} requests={} ok={} \
         rps={:.1} p50_us={} p99_us={} max_us={} errors={} timeouts={} non2xx={} conn_min={} conn_max={} \
         stranded={} connects={} timeout_s={:.3}",
        opts.target.host,
        opts.target.path,
        mode,
        opts.body_kind.name(),
        opts.connections,
        elapsed,
        answered + timeouts + errors,
        ok,
        rps,
        p50,
        p99,
        max,
        errors,
        timeouts,
        non2xx,
        conn_min,
        conn_max,
        stranded,
        connects,
        opts.timeout.as_secs_f64(),
    );
    if ok == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
