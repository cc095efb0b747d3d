//! The load loop shared by `benches/loadgen.rs` and `benches/compare.rs` (included with
//! `#[path = "support/load.rs"] mod load;` next to `mod wxhttp;`).
//!
//! `connections` client threads ("slots") each send one request at a time until the duration
//! is over; every request has its own timeout, so a run ends at most one timeout late.
#![allow(dead_code)]

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::wxhttp::{self, Conn, PostSpec, Target};

/// One load run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub target: Target,
    pub post: PostSpec,
    pub connections: usize,
    pub duration: Duration,
    /// A connection per request (`Connection: close`) instead of keep-alive.
    pub new_conn: bool,
    /// Per request (connect, write, complete answer).
    pub timeout: Duration,
    /// Bytes every 2xx answer must contain; a 2xx without them counts as `wrong`, not `ok`.
    pub expect: Option<Vec<u8>>,
}

impl LoadSpec {
    pub fn mode(&self) -> &'static str {
        if self.new_conn {
            "new-conn"
        } else {
            "keep-alive"
        }
    }
}

/// What one slot saw.
#[derive(Default)]
struct SlotResult {
    ok: u64,
    wrong: u64,
    non2xx: u64,
    timeouts: u64,
    errors: u64,
    connects: u64,
    /// Latencies of answered requests (2xx or not), microseconds.
    latencies_us: Vec<u32>,
}

/// The outcome of a run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub elapsed_s: f64,
    pub requests: u64,
    /// 2xx answers (with the expected bytes, if any).
    pub ok: u64,
    /// 2xx answers without the expected bytes.
    pub wrong: u64,
    pub non2xx: u64,
    pub timeouts: u64,
    pub errors: u64,
    pub connects: u64,
    /// `ok` per second.
    pub rps: f64,
    pub p50_us: u32,
    pub p99_us: u32,
    pub max_us: u32,
    /// Answered requests of the least and the most served slot.
    pub conn_min: u64,
    pub conn_max: u64,
    /// Slots that got no answer at all.
    pub stranded: usize,
}

fn run_slot(spec: &LoadSpec, start: &Barrier) -> SlotResult {
    let mut r = SlotResult::default();
    let mut conn: Option<Conn> = None;
    start.wait();
    let end = Instant::now() + spec.duration;
    while Instant::now() < end {
        let seq = wxhttp::next_seq();
        let request = spec.post.request(&spec.target, seq, !spec.new_conn);
        let t0 = Instant::now();
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect(spec.target.addr, spec.timeout) {
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
                if !(200..300).contains(&resp.status) {
                    r.non2xx += 1;
                } else if spec
                    .expect
                    .as_deref()
                    .is_some_and(|e| !wxhttp::contains(&resp.body, e))
                {
                    r.wrong += 1;
                } else {
                    r.ok += 1;
                }
                if resp.close || spec.new_conn {
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

/// Runs `spec` to the end and sums up what the slots saw.
pub fn run(spec: &LoadSpec) -> Report {
    let spec = Arc::new(spec.clone());
    let barrier = Arc::new(Barrier::new(spec.connections + 1));
    let handles: Vec<_> = (0..spec.connections)
        .map(|i| {
            let spec = Arc::clone(&spec);
            let barrier = Arc::clone(&barrier);
            thread::Builder::new()
                .name(format!("loadgen-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || run_slot(&spec, &barrier))
                .expect("spawn client thread")
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let slots: Vec<SlotResult> = handles
        .into_iter()
        .map(|h| h.join().expect("client thread panicked"))
        .collect();
    let elapsed_s = started.elapsed().as_secs_f64();

    let mut lat: Vec<u32> = Vec::new();
    let mut rep = Report {
        elapsed_s,
        ..Report::default()
    };
    let mut per_slot: Vec<u64> = Vec::with_capacity(slots.len());
    for s in &slots {
        rep.ok += s.ok;
        rep.wrong += s.wrong;
        rep.non2xx += s.non2xx;
        rep.timeouts += s.timeouts;
        rep.errors += s.errors;
        rep.connects += s.connects;
        per_slot.push(s.ok + s.wrong + s.non2xx);
        lat.extend_from_slice(&s.latencies_us);
    }
    lat.sort_unstable();
    rep.requests = rep.ok + rep.wrong + rep.non2xx + rep.timeouts + rep.errors;
    rep.rps = rep.ok as f64 / elapsed_s;
    rep.p50_us = percentile(&lat, 50.0);
    rep.p99_us = percentile(&lat, 99.0);
    rep.max_us = lat.last().copied().unwrap_or(0);
    rep.conn_min = per_slot.iter().copied().min().unwrap_or(0);
    rep.conn_max = per_slot.iter().copied().max().unwrap_or(0);
    rep.stranded = per_slot.iter().filter(|&&n| n == 0).count();
    rep
}

fn ms(us: u32) -> f64 {
    us as f64 / 1000.0
}

impl Report {
    /// The human summary line.
    pub fn human(&self, spec: &LoadSpec) -> String {
        format!(
            "loadgen: {} {} x{} for {:.1}s -> {} ok ({:.0} req/s), latency p50 {:.2}ms p99 {:.2}ms max {:.2}ms; \
             errors {} timeouts {} non-2xx {} wrong {}; per-connection answered min {} max {} ({} stranded of {}); {} connects",
            spec.mode(),
            spec.post.kind.name(),
            spec.connections,
            self.elapsed_s,
            self.ok,
            self.rps,
            ms(self.p50_us),
            ms(self.p99_us),
            ms(self.max_us),
            self.errors,
            self.timeouts,
            self.non2xx,
            self.wrong,
            self.conn_min,
            self.conn_max,
            self.stranded,
            spec.connections,
            self.connects,
        )
    }

    /// The machine line: `LOADGEN key=value ...`.
    pub fn machine(&self, spec: &LoadSpec) -> String {
        format!(
            "LOADGEN url=http://{}{} mode={} body_kind={} safe={} connections={} duration_s={:.3} requests={} ok={} \
             rps={:.1} p50_us={} p99_us={} max_us={} errors={} timeouts={} non2xx={} wrong={} conn_min={} conn_max={} \
             stranded={} connects={} timeout_s={:.3}",
            spec.target.host,
            spec.target.path,
            spec.mode(),
            spec.post.kind.name(),
            spec.post.crypt.is_some(),
            spec.connections,
            self.elapsed_s,
            self.requests,
            self.ok,
            self.rps,
            self.p50_us,
            self.p99_us,
            self.max_us,
            self.errors,
            self.timeouts,
            self.non2xx,
            self.wrong,
            self.conn_min,
            self.conn_max,
            self.stranded,
            self.connects,
            spec.timeout.as_secs_f64(),
        )
    }
}
