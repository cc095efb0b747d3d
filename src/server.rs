//! The HTTP side: a tiny_http recv loop on `workers` threads that checks every request's
//! signature, parses the message, deduplicates WeChat's retries and writes the reply.
//!
//! Requests are answered on the recv-loop thread when that is quick (a signature failure, a
//! fixed text); anything that waits (a body still on the wire, a slow command, a retry waiting
//! for its first try) moves to its own thread, so one slow request never holds up another.
//! tiny_http's own weak spots (docs/tiny_http-upstream.md) are worked around here: its
//! connection pool is kept warm ([`warm_pool`]), connections it strands are rescued
//! ([`strands`]) and a huge `Content-Length` is never drained ([`DRAIN_LIMIT`]).

use crate::config::Config;
use crate::crypto::{self, CryptoError, MsgCrypt};
use crate::dedup::{Claim, Dedup, Repeat, Ticket};
use crate::message::{self, Message};
use crate::pending::{self, Pending};
use crate::replay::{Ledger, Seen};
use crate::reply::Reply;
use crate::router::{Handler, Route};
use crate::signature;
use crate::state::{Saved, SavedAnswer, SavedLate};
use crate::strands;
use log::{error, info, warn};
use std::borrow::Cow;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tiny_http::{Header, Method, Request, Response};

/// The largest POST body accepted; WeChat's messages are a few KiB at most.
pub const MAX_BODY: usize = 64 * 1024;

/// tiny_http reads a body of up to this many bytes before `recv()` hands over the request;
/// a larger (or chunked, or `Expect: 100-continue`) body is read from the socket by whichever
/// thread reads or drops the request, at the client's pace.
pub const EAGER_BODY: usize = 1024;

/// A request announcing a body larger than this is never drained. tiny_http drains an unread
/// body when the request is dropped and allocates the whole announced rest at once for it
/// (`EqualReader::drop`): a `Content-Length` of 100 TB aborts the process. Such a request is
/// answered 413 and its connection abandoned instead (docs/tiny_http-upstream.md, defect 5).
pub const DRAIN_LIMIT: usize = 64 << 20;

/// Abandoned connections (see [`DRAIN_LIMIT`]) each keep a tiny_http thread and two fds; after
/// this many, wxmp reports itself restart-worthy so a supervisor gets them back.
pub const ABANDON_LIMIT: usize = 512;

/// Requests at most handled off the recv loop at once (slow bodies, waiting retries); past it
/// they are handled on the recv loop, as if wxmp had no defence.
pub const MAX_DETACHED: usize = 4096;

/// Idle connection threads made ready in tiny_http's pool at start (see [`warm_pool`]): the
/// moment after a restart, when WeChat's retries of everything missed arrive together. A burst
/// of up to this many keep-alive connections is served at once; connections of a larger one
/// that tiny_http strands are rescued within ~0.25 s ([`strands`]). Kept small because every
/// idle thread holds memory (~20 KiB: its stack and its allocator cache).
pub const WARM_AT_START: usize = 32;

/// Idle connection threads kept ready from then on (re-warmed every [`REWARM_EVERY`]).
pub const KEEP_WARM: usize = 16;

/// How often the pool is warmed again: tiny_http ends a spare idle thread after 5 s.
pub const REWARM_EVERY: Duration = Duration::from_secs(4);

/// How long a try may wait for an answer before WeChat (5 s) gives up on it.
pub const ANSWER_WITHIN: Duration = Duration::from_millis(4500);

/// How long slow work may keep running after a try gave up on it: WeChat's three tries span ~15 s.
pub const SLOW_WORK_LIMIT: Duration = Duration::from_secs(15);

/// A try arriving this long after the first is WeChat's last (tries come ~5 s apart).
pub const LAST_TRY_AFTER: Duration = Duration::from_millis(9500);

/// A try whose signed `timestamp` is this many seconds after the message's `CreateTime` is
/// WeChat's last too, however many tries this process saw (it may have restarted between them).
/// Both are WeChat's whole seconds: its second try is 5-6 apart, its third 10-11.
pub const LAST_TRY_AGE: u64 = 9;

/// A larger gap between `CreateTime` and a try's `timestamp` says nothing about WeChat's tries
/// (a hand-made request, a message without `CreateTime`): such a try counts by this process's
/// own tries alone.
const AGE_MEANINGFUL: u64 = 60;

/// Turns off glibc's fastbins for the whole process; call it first thing in `main`, before any
/// thread starts. Fastbin chunks are never merged with their free neighbours until a larger
/// request sweeps them, so with tiny_http allocating a request on one thread and wxmp freeing it
/// on another, each of glibc's 16 arenas kept scattered pages alive: without fastbins peak RSS
/// under the benchmark's load is ~1 MiB lower (largest row 10.4-10.5 -> 9.0-9.1 MiB, a
/// connection per request) at the same CPU per message (glibc's per-thread cache still serves
/// small requests; docs/benchmarks-history.md, "The allocator's fastbins"). It also fixes the
/// mmap threshold at 128 KiB, glibc's default, which turns off its dynamic threshold (see the
/// comment inside). Returns whether the allocator took both settings; a no-op (`false`) on
/// other C libraries, such as the static musl build, whose allocator has neither.
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; M_MXFAST = 0 is documented to turn
        // fastbins off, and glibc applies it under its own locks.
        // M_MMAP_THRESHOLD fixed at glibc's default (128 KiB) also turns off its dynamic
        // threshold: otherwise the first freed mmap'd block of up to 32 MiB (tiny_http's drain
        // of a refused body, `EqualReader::drop`, allocates the announced rest at once) raises
        // the threshold to its size, and every later drain of a body up to DRAIN_LIMIT is
        // calloc'ed, zeroed and kept in a thread arena: 32 such POSTs left ~500 MB resident.
        let fastbins_off = unsafe { libc::mallopt(libc::M_MXFAST, 0) == 1 };
        // SAFETY: as above; M_MMAP_THRESHOLD takes a size in bytes.
        let threshold_fixed = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10) == 1 };
        fastbins_off && threshold_fixed
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// The scheduler time slice a worker asks for (the shortest Linux takes, 0.1 ms; its default
/// is 0.75 ms times 1 + log2 of the CPUs, 1.4 ms on two).
pub const WORKER_SLICE: Duration = Duration::from_micros(100);

/// The first part (`SCHED_ATTR_SIZE_VER0`, 48 bytes) of the kernel's `struct sched_attr`, which
/// the libc crate does not declare.
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// Asks the scheduler for a short time slice ([`WORKER_SLICE`]) for the calling thread, as each
/// worker does when it starts. Since Linux 6.12 (EEVDF) a thread's slice sets how soon it runs
/// once woken, not its share of the CPU: a worker woken for a queued request gets a CPU sooner
/// instead of waiting behind connection threads and other programs. With 32 keep-alive
/// connections on two cores that took p99 from 2.2 to 1.4 ms at the same req/s and CPU per
/// message (p50 0.04 ms later; docs/benchmarks-history.md has the figures). The thread's policy
/// (`SCHED_FLAG_KEEP_POLICY`) and nice value stay as they are, and no privilege is needed.
/// Returns whether the kernel took it; older kernels accept and ignore it, others refuse
/// (`ENOSYS`, or a real-time policy set by the service manager), and nothing changes.
pub fn ask_short_slice() -> bool {
    ask_slice(WORKER_SLICE)
}

/// Gives the calling thread the kernel's default time slice again. A thread inherits its
/// creator's slice, so the threads a worker starts ([`detach`]: slow commands, retries waiting
/// for them, slow bodies) call it first, and the programs a command runs start from it too.
pub fn default_slice() -> bool {
    ask_slice(Duration::ZERO)
}

/// [`ask_short_slice`] with any slice; zero is the kernel's default.
fn ask_slice(slice: Duration) -> bool {
    #[cfg(target_os = "linux")]
    {
        const SCHED_FLAG_KEEP_POLICY: u64 = 0x08;
        // The thread's own nice value, set again as it is: `sched_setattr` sets nice too.
        // getpriority returns -1 both for nice -1 and on failure; errno tells them apart.
        // SAFETY: errno is this thread's; getpriority only reads.
        let nice = unsafe {
            *libc::__errno_location() = 0;
            libc::getpriority(libc::PRIO_PROCESS, 0)
        };
        // SAFETY: as above.
        if nice == -1 && unsafe { *libc::__errno_location() } != 0 {
            return false;
        }
        let attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            flags: SCHED_FLAG_KEEP_POLICY,
            nice,
            runtime: u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX),
            ..SchedAttr::default()
        };
        // SAFETY: sched_setattr(0 = this thread, attr, flags 0) reads `attr.size` bytes of attr.
        unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw const attr, 0) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Hands the allocator's free pages back to the system (glibc's `malloc_trim`; nothing
/// elsewhere). Called after each checkpoint: its snapshot and file buffers are freed at once,
/// and without this the heaps they came from (shared with other threads) keep the pages, which
/// showed as +0.3-0.6 MiB of peak RSS in the benchmark.
pub fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own heaps; 0 keeps no padding.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Whether a try is WeChat's last for its message: try 3, or one arriving [`LAST_TRY_AFTER`]
/// the first (an earlier try may have been lost), or one WeChat sent [`LAST_TRY_AGE`] seconds
/// after the message was created (`age`: the earlier tries went to a process that is gone). The
/// last try must answer within its own deadline; earlier ones may wait for the work, as WeChat
/// will try again.
pub fn is_last_try(attempt: u32, since_first: Duration, age: u64) -> bool {
    attempt >= 3 || since_first >= LAST_TRY_AFTER || age >= LAST_TRY_AGE
}

/// A finished answer, kept for retries: the exact bytes sent the first time.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The response body.
    pub body: Arc<str>,
    /// The reply type, for the log.
    pub kind: &'static str,
    /// Whether a restart hands it to the next process ([`crate::state`]): false for the answer
    /// of a command the stop cut short ([`crate::exec::Status::Stopped`]), which tells the
    /// tries of this process so; the next process runs the command again on WeChat's next try.
    pub hand_on: bool,
}

impl crate::dedup::Weigh for Answer {
    fn weight(&self) -> usize {
        self.body.len()
    }
}

impl Answer {
    fn content_type(&self) -> &'static str {
        if self.body.starts_with('<') {
            "application/xml; charset=utf-8"
        } else {
            "text/plain; charset=utf-8"
        }
    }
}

/// The configuration in force and what is derived from it; swapped whole on reload.
struct Live {
    config: Config,
    /// The safe-mode cipher, when the account has an EncodingAESKey.
    crypt: Option<Arc<MsgCrypt>>,
    /// The cipher of the EncodingAESKey before the last change, tried when `crypt` cannot open
    /// a message.
    previous: Option<Arc<MsgCrypt>>,
}

impl Live {
    fn new(config: Config) -> Result<Live, String> {
        let crypt = config.crypt()?.map(Arc::new);
        let previous = config.previous_crypt()?.map(Arc::new);
        Ok(Live {
            config,
            crypt,
            previous,
        })
    }
}

/// Shared state of a running server.
struct App {
    live: RwLock<Arc<Live>>,
    handler: RwLock<Arc<dyn Handler>>,
    dedup: Dedup<Answer>,
    /// The message each recent signed URL carried: a URL read from a log cannot sign another.
    urls: Ledger,
    /// Results of slow work that missed the last try, for the user's next message.
    pending: Pending,
    stopping: AtomicBool,
    /// Why the server can no longer serve (its accept loop ended); `wxmp serve` exits on it.
    fatal: std::sync::Mutex<Option<String>>,
    /// Requests handed to their own threads and not yet answered.
    detached: AtomicUsize,
    /// Connections given up on rather than drained (see [`DRAIN_LIMIT`]).
    abandoned: AtomicUsize,
}

/// A running server; dropping it without [`Server::shutdown`] stops it abruptly.
pub struct Server {
    app: Arc<App>,
    http: Arc<tiny_http::Server>,
    workers: Vec<JoinHandle<()>>,
    addr: SocketAddr,
    from_systemd: bool,
    listener_fd: std::os::fd::RawFd,
}

impl Server {
    /// Binds `config.listen` (or takes the socket systemd passed, [`crate::activation`]) and
    /// starts the recv loop on `config.workers` threads.
    pub fn start(config: Config, handler: Arc<dyn Handler>) -> Result<Server, String> {
        Server::start_with_state(config, handler, || None)
    }

    /// [`Server::start`], taking back what an earlier process saved ([`Server::shutdown`],
    /// [`Server::checkpoint`], [`crate::state`]): its answers for retries still to come, its
    /// signed URLs and its late results are known before the first request is read. `saved` is
    /// called once the address is bound, so that a second `wxmp serve` started by mistake beside
    /// a running one fails before it takes the running one's checkpoint.
    pub fn start_with_state(
        config: Config,
        handler: Arc<dyn Handler>,
        saved: impl FnOnce() -> Option<Saved>,
    ) -> Result<Server, String> {
        let inherited = crate::activation::inherited()?;
        let from_systemd = inherited.is_some();
        let listener = match inherited {
            Some(listener) => {
                set_nodelay(&listener, "systemd's socket");
                listener
            }
            None => listen_nodelay(&config.listen)?,
        };
        let listener_fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let http = tiny_http::Server::from_listener(listener, None)
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let addr = http
            .server_addr()
            .to_ip()
            .ok_or_else(|| format!("{} is not an IP address", config.listen))?;
        let http = Arc::new(http);
        let workers_n = config.workers.max(1);
        let app = Arc::new(App {
            live: RwLock::new(Arc::new(Live::new(config)?)),
            handler: RwLock::new(handler),
            dedup: Dedup::default(),
            urls: Ledger::default(),
            pending: Pending::default(),
            stopping: AtomicBool::new(false),
            fatal: std::sync::Mutex::new(None),
            detached: AtomicUsize::new(0),
            abandoned: AtomicUsize::new(0),
        });
        if let Some(saved) = saved() {
            restore(&app, &saved);
        }
        let mut workers = Vec::with_capacity(workers_n);
        for i in 0..workers_n {
            let (app, http) = (Arc::clone(&app), Arc::clone(&http));
            let worker = thread::Builder::new()
                .name(format!("wxmp-worker-{i}"))
                .spawn(move || {
                    if !ask_short_slice() && i == 0 {
                        // Harmless, but it says why p99 under load is what it was before.
                        info!(
                            "the kernel refused the workers' short time slice (sched_setattr: \
                             {}); they wait their turn like other threads",
                            std::io::Error::last_os_error()
                        );
                    }
                    recv_loop(&app, &http)
                })
                .map_err(|e| format!("cannot start worker thread: {e}"))?;
            workers.push(worker);
        }
        warm_pool_for(addr, WARM_AT_START);
        let keeper = Arc::clone(&app);
        let spawned = thread::Builder::new()
            .name("wxmp-warm".into())
            .spawn(move || keep_warm(&keeper, addr));
        if let Err(e) = spawned {
            warn!("cannot start the pool-warming thread: {e}");
        }
        Ok(Server {
            app,
            http,
            workers,
            addr,
            from_systemd,
            listener_fd,
        })
    }

    /// The listening socket's fd, which tiny_http's accept thread owns and closes when it ends
    /// ([`crate::watchdog::listener_gone`]).
    pub fn listener_fd(&self) -> std::os::fd::RawFd {
        self.listener_fd
    }

    /// Whether the socket came from systemd ([`crate::activation`]) rather than `listen`.
    pub fn from_systemd(&self) -> bool {
        self.from_systemd
    }

    /// A count that grows whenever something is answered, recorded or kept that the next
    /// start would want (the restored state counts too): when it has not moved since the last
    /// [`Server::checkpoint`] that was stored, there is nothing new to store.
    pub fn changes(&self) -> u64 {
        let app = &self.app;
        app.dedup
            .changes()
            .wrapping_add(app.urls.changes())
            .wrapping_add(app.pending.changes())
    }

    /// What to keep for the next start now, marked as a checkpoint: `wxmp serve` stores it
    /// ([`crate::state::store`]) once a second when [`Server::changes`] moved, so that a process
    /// killed without a stop loses at most its last second. Read `changes` first: what changes
    /// during the snapshot is then stored by the next checkpoint.
    pub fn checkpoint(&self) -> Saved {
        Saved {
            checkpoint: true,
            ..snapshot(&self.app)
        }
    }

    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the configuration and handler (SIGHUP); requests in flight finish with the old ones.
    pub fn reload(&self, config: Config, handler: Arc<dyn Handler>) -> Result<(), String> {
        let live = Live::new(config)?;
        *self
            .app
            .live
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(live);
        *self
            .app
            .handler
            .write()
            .unwrap_or_else(PoisonError::into_inner) = handler;
        Ok(())
    }

    /// Why the server can no longer take connections, once that has happened.
    pub fn fatal(&self) -> Option<String> {
        self.app
            .fatal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits up to `grace` for requests still being worked on (slow commands), answering new
    /// ones meanwhile but starting no more programs; then stops the programs still running,
    /// answers the requests already received and stops taking requests. Returns what the
    /// next process needs to carry on ([`crate::state`]: answered messages, signed URLs, late
    /// results).
    pub fn shutdown(self, grace: Duration) -> Saved {
        let deadline = Instant::now() + grace;
        // WeChat keeps calling during a stop or restart: the workers answer on while slow
        // requests finish. A request left unanswered in tiny_http's queue would get its empty
        // 500 when the server is dropped, which WeChat shows as a failure. A command that
        // would start a program now is told the server is restarting (and not handed on: the
        // next process runs it on WeChat's next try), as that program would be killed below.
        crate::exec::refuse_new();
        while self.app.detached.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        let left = self.app.detached.load(Ordering::SeqCst);
        if left > 0 {
            warn!("shutdown: {left} slow request(s) still running after {grace:?}, leaving them");
        }
        // No running program outlives the server: its timeout would no longer be enforced.
        // (What a program left running in the background after it exited is its own work,
        // README "Programs".) Their waiting tries are answered that the server is restarting.
        crate::exec::stop_all(Duration::from_millis(500));
        // With systemd's socket, no connection is accepted from here on that the workers would
        // not answer: it waits in the socket's queue for the next process. Without it nobody
        // else would take such a connection, so the workers answer on while they drain (below)
        // rather than have it refused.
        if self.from_systemd {
            if let Err(e) = stop_accepting(self.listener_fd, self.addr) {
                warn!("shutdown: {e}; a connection accepted during the stop may go unanswered");
            }
        }
        self.app.stopping.store(true, Ordering::SeqCst);
        self.http.unblock();
        // Not a plain join: a worker blocked for good (writing to a client that reads nothing,
        // reading a body that never comes) would hold this stop forever, and the stop is how
        // the watchdog's verdict on a wedged server becomes a restart.
        let workers_by = Instant::now() + Duration::from_secs(2);
        for w in self.workers {
            while !w.is_finished() && Instant::now() < workers_by {
                thread::sleep(Duration::from_millis(20));
            }
            if w.is_finished() {
                let _ = w.join();
            } else {
                warn!("shutdown: a worker is still blocked, leaving it");
            }
        }
        // The server goes at once, and its accept loop with it, before the state is written: a
        // connection made after that is not accepted only to be dropped with the process. It
        // waits in the socket's queue for the next process when systemd holds the socket
        // (`crate::activation`), or is refused. (Nothing is answered here on this thread: one
        // client that reads no answers would hold the stop, as it can hold a worker.)
        drop(self.http);
        snapshot(&self.app)
    }
}

/// How long a stop waits for tiny_http's accept loop to show it has left the listening socket.
const ACCEPT_MOVES_WITHIN: Duration = Duration::from_secs(2);

/// Takes the listening socket away from tiny_http's accept loop while the workers still answer.
///
/// tiny_http stops accepting only when its server is dropped, and its accept loop goes on taking
/// connections until then (its wake-up connection even queues behind any real one). A connection
/// taken after the workers are gone is answered 500 as the process exits, where with systemd's
/// socket the next process would have served it: one per busy client per restart in
/// `tests/restart.rs`, one in ~1,500 by hand through `systemctl restart`
/// (docs/tiny_http-upstream.md, defect 8). So before the workers stop, the fd the accept loop
/// reads is pointed (`dup2`) at a private socket no client knows; one connection to the real
/// address wakes the accept call in flight (what it takes is answered as usual); and a
/// connection to the private socket proves the loop has moved: only the loop accepts it, and
/// tiny_http closes it on reading its end. Nothing more is taken from the real socket, and
/// connections wait in its queue for the next process. (Only for systemd's socket: a socket of
/// wxmp's own would close, and the connections the workers could still have answered while
/// they drain would be refused.)
fn stop_accepting(listener_fd: std::os::fd::RawFd, addr: SocketAddr) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    // An accept loop that has ended (fd exhaustion, docs/tiny_http-upstream.md defect 4) closed
    // the socket, and its number may be another file's by now: leave that alone.
    if !crate::activation::is_listening_tcp(listener_fd)
        || crate::strands::local_port(listener_fd) != Some(addr.port())
    {
        return Ok(());
    }
    let public = crate::watchdog::probe_addr(addr);
    let private = std::net::TcpListener::bind(SocketAddr::new(public.ip(), 0))
        .map_err(|e| format!("cannot open a socket to park the accept loop on: {e}"))?;
    let private_addr = private
        .local_addr()
        .map_err(|e| format!("the parking socket has no address: {e}"))?;
    // SAFETY: both fds are open and this process's own; `listener_fd` stays open (now for the
    // private socket), so no other thread can be handed its number meanwhile. The accept call
    // in flight holds the real socket until it returns.
    if unsafe { libc::dup2(private.as_raw_fd(), listener_fd) } < 0 {
        return Err(format!(
            "cannot park the accept loop: {}",
            std::io::Error::last_os_error()
        ));
    }
    drop(private);
    let _wake = TcpStream::connect_timeout(&public, Duration::from_millis(500));
    let mut proof = TcpStream::connect_timeout(&private_addr, ACCEPT_MOVES_WITHIN)
        .map_err(|e| format!("cannot reach the parked accept loop: {e}"))?;
    let _ = proof.shutdown(std::net::Shutdown::Write);
    let _ = proof.set_read_timeout(Some(ACCEPT_MOVES_WITHIN));
    match proof.read(&mut [0u8; 1]) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(format!(
                "tiny_http's accept loop did not leave the listening socket within {ACCEPT_MOVES_WITHIN:?}"
            ))
        }
        // Closed (or reset) by tiny_http: accepted there, so the loop has moved.
        _ => Ok(()),
    }
}

/// What `app` hands to the next process (see [`crate::state`]).
fn snapshot(app: &App) -> Saved {
    let mut saved = Saved::now();
    saved.answers = app
        .dedup
        .answered()
        .into_iter()
        .filter(|(_, _, _, answer)| answer.hand_on)
        .map(|(key, age, tries, answer)| SavedAnswer {
            key,
            age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
            tries,
            kind: answer.kind.to_string(),
            body: answer.body,
        })
        .collect();
    saved.urls = app
        .urls
        .entries()
        .into_iter()
        .map(|(url, message, age)| {
            Saved::url_entry(
                url,
                message,
                u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
            )
        })
        .collect();
    saved.late = app
        .pending
        .late_results()
        .into_iter()
        .map(|(openid, age, text)| SavedLate {
            openid,
            age_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
            text,
        })
        .collect();
    saved
}

/// Takes `saved` (from an earlier process's [`snapshot`]) into `app`, and logs what was taken
/// and what was too old or not understood.
fn restore(app: &App, saved: &Saved) {
    let now = crate::state::now_ms();
    let (mut answers, mut late, mut stale) = (0usize, 0usize, 0usize);
    let mut bad = 0usize;
    for a in &saved.answers {
        let Some(kind) = Reply::kind_named(&a.kind) else {
            bad += 1;
            continue;
        };
        let answer = Answer {
            body: Arc::clone(&a.body),
            kind,
            hand_on: true,
        };
        if app
            .dedup
            .restore(&a.key, saved.age_at(a.age_ms, now), a.tries, answer)
        {
            answers += 1;
        } else {
            stale += 1;
        }
    }
    let (urls, bad_urls) = saved.url_entries();
    bad += bad_urls;
    let dated: Vec<(u64, u64, Duration)> = urls
        .iter()
        .map(|&(url, message, age_ms)| (url, message, saved.age_at(age_ms, now)))
        .collect();
    // A URL first used too long ago to be valid any more is left out as stale.
    let urls_restored = app.urls.restore(&dated);
    stale += urls.len() - urls_restored;
    for l in &saved.late {
        let age = saved.age_at(l.age_ms, now);
        if app.pending.restore_late(&l.openid, age, l.text.clone()) {
            late += 1;
        } else {
            stale += 1;
        }
    }
    // A checkpoint left for a start means the process before did not reach its stop.
    let from = if saved.checkpoint {
        "the last checkpoint (the last process was killed or crashed; at most its last second \
         is lost)"
    } else {
        "the last stop"
    };
    info!(
        "carried on from {from}: {answers} answered message(s) for their retries, {} signed \
         URL(s), {late} late result(s); {stale} too old to keep",
        urls_restored
    );
    if bad > 0 {
        warn!("the saved state had {bad} entr(ies) this wxmp does not understand: skipped");
    }
}

/// Makes tiny_http's connection pool hold at least `n` idle threads; returns how many
/// connections it managed to open.
///
/// Why: tiny_http's task pool chooses between queueing a new connection and starting a thread
/// for it by a count of idle threads that still includes threads already woken for earlier
/// connections. In a burst of new connections the surplus is queued, and the queue is only
/// served when some connection closes: keep-alive connections sit unread (docs/
/// tiny_http-upstream.md, defect 1). A burst no larger than the number of idle threads cannot
/// be stranded that way. Connections opened one after the other, each answered before the
/// next is opened (so the count is exact), then closed together, leave one idle thread each.
pub fn warm_pool(addr: SocketAddr, n: usize, timeout: Duration) -> usize {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        match warm_connection(addr, timeout) {
            Ok(stream) => held.push(stream),
            Err(_) => break,
        }
    }
    held.len()
}

/// One keep-alive `GET /healthz`, answered, with the connection left open.
fn warm_connection(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: wxmp\r\n\r\n")?;
    let mut got = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    // The answer is a small `200` whose body is `ok`.
    while !got.ends_with(b"\r\n\r\nok") {
        let n = stream.read(&mut buf)?;
        if n == 0 || got.len() > 4096 {
            return Err(std::io::Error::other("no healthz answer"));
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(stream)
}

/// Binds `listen` with `TCP_NODELAY`, which accepted sockets inherit. tiny_http writes a reply
/// through a 1 KiB buffer, so a reply over ~1 KiB leaves in two sends; with Nagle's algorithm
/// the second waits for the client's delayed ACK: 40 ms per reply on a kept-alive connection.
fn listen_nodelay(listen: &str) -> Result<std::net::TcpListener, String> {
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    set_nodelay(&listener, listen);
    Ok(listener)
}

/// Sets `TCP_NODELAY` on `listener` (see [`listen_nodelay`]); warns, naming it `what`, when
/// that fails.
fn set_nodelay(listener: &std::net::TcpListener, what: &str) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket fd and an int option of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        warn!(
            "cannot set TCP_NODELAY on {what}: {}; replies over 1 KiB may be delayed",
            std::io::Error::last_os_error()
        );
    }
}

/// How many idle threads to warm: `wanted`, or fewer when the open-file limit is low (each
/// warm connection costs three fds while it is open).
fn warm_target(wanted: usize) -> usize {
    let limit = crate::watchdog::fd_limit().unwrap_or(1024);
    wanted.min(usize::try_from(limit / 8).unwrap_or(wanted))
}

fn warm_pool_for(addr: SocketAddr, wanted: usize) {
    let target = warm_target(wanted);
    let probe = crate::watchdog::probe_addr(addr);
    let warmed = warm_pool(probe, target, Duration::from_secs(1));
    if warmed < target {
        warn!("warmed {warmed} of {target} connection threads on {probe}");
    }
}

/// Until the server stops: rescues stranded connections every [`strands::SWEEP_EVERY`] and warms
/// the pool again every [`REWARM_EVERY`].
fn keep_warm(app: &App, addr: SocketAddr) {
    let mut sweeper = Some(strands::Sweeper::new(addr));
    let mut failing = false;
    let mut next = Instant::now() + REWARM_EVERY;
    while !app.stopping.load(Ordering::SeqCst) {
        thread::sleep(strands::SWEEP_EVERY);
        match sweeper.as_mut().map(strands::Sweeper::sweep) {
            None => {}
            Some(Ok(n)) => {
                failing = false;
                if n > 0 {
                    info!("rescued {n} connection(s) tiny_http left unread (docs/tiny_http-upstream.md, defect 1)");
                }
            }
            // No /proc here (or not ours to read): it will not come back.
            Some(Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                warn!("cannot look for stranded connections in /proc/self/fd ({e}); only the warm pool is left against them");
                sweeper = None;
            }
            // Out of file descriptors, most likely: try again next time, say so once.
            Some(Err(e)) => {
                if !failing {
                    warn!(
                        "cannot look for stranded connections now ({e}); trying again every {:?}",
                        strands::SWEEP_EVERY
                    );
                }
                failing = true;
            }
        }
        if Instant::now() >= next {
            warm_pool_for(addr, KEEP_WARM);
            next = Instant::now() + REWARM_EVERY;
        }
    }
}

/// How long a stopping worker waits without a request before it ends.
const DRAIN_QUIET: Duration = Duration::from_millis(50);
/// How long a stopping worker answers at most.
const DRAIN_LONGEST: Duration = Duration::from_millis(500);

fn recv_loop(app: &Arc<App>, http: &tiny_http::Server) {
    loop {
        if app.stopping.load(Ordering::SeqCst) {
            // Answer what tiny_http already accepted, then stop. A connection accepted just
            // before the accept loop moved off the socket may not have been read yet: wait for
            // a quiet moment, not only for an empty queue (and not forever: clients on kept-alive
            // connections may never pause).
            let until = Instant::now() + DRAIN_LONGEST;
            while Instant::now() < until {
                match http.recv_timeout(DRAIN_QUIET) {
                    Ok(Some(req)) => handle(app, req),
                    _ => break,
                }
            }
            return;
        }
        match http.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(req)) => handle(app, req),
            Ok(None) => {}
            Err(e) => {
                // tiny_http reports an accept error once and then ends its accept loop: no
                // connection will ever be taken again, so the process must be restarted.
                let why = format!("the accept loop ended: {e}");
                error!("{why}");
                *app.fatal.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
                return;
            }
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Decodes `application/x-www-form-urlencoded` text: `%XX` escapes and `+` for space.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (
                    bytes.get(i + 1).and_then(|&b| hex(b)),
                    bytes.get(i + 2).and_then(|&b| hex(b)),
                ) {
                    (Some(h), Some(l)) => {
                        // Two hex digits are at most 255: the cast cannot truncate.
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query string's parameters, decoded (borrowed from the URL when nothing needs decoding,
/// as WeChat's own parameters never do).
pub struct Query<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> Query<'a> {
    /// Parses the part of a URL after `?`.
    pub fn parse(query: &'a str) -> Query<'a> {
        let decode = |s: &'a str| {
            if s.contains(['%', '+']) {
                Cow::Owned(percent_decode(s))
            } else {
                Cow::Borrowed(s)
            }
        };
        Query(
            query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// Everything about a request needed after its body is read.
struct Ctx {
    start: Instant,
    peer: Peer,
    /// Set when the request was encrypted: the answer must be encrypted too.
    seal: Option<Arc<MsgCrypt>>,
    /// Seconds from the message's `CreateTime` to this try's signed `timestamp`, both WeChat's
    /// clock (0 when unknown or over a minute): how late in WeChat's tries this one is.
    age: u64,
}

/// Who sent a request, as log lines print it: an IP address, or `-` when unknown. Formatted
/// only into the line itself (a `String` per request would be one more allocation).
#[derive(Clone, Copy)]
struct Peer(Option<IpAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// The address to log: the proxy's `X-Real-IP` / first `X-Forwarded-For` when the peer is a
/// loopback proxy (nginx), else the peer itself.
fn client_addr(req: &Request) -> Peer {
    let peer = req.remote_addr().map(|a| a.ip());
    if peer.is_some_and(|ip| ip.is_loopback()) {
        for name in ["X-Real-IP", "X-Forwarded-For"] {
            let forwarded = req
                .headers()
                .iter()
                .find(|h| h.field.equiv(name))
                .and_then(|h| h.value.as_str().split(',').next())
                .and_then(|v| v.trim().parse::<IpAddr>().ok());
            if forwarded.is_some() {
                return Peer(forwarded);
            }
        }
    }
    Peer(peer)
}

fn header(name: &str, value: &str) -> Header {
    // Both are ASCII literals chosen here, never request data.
    Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap_or_else(|()| {
        Header::from_bytes(&b"X-Invalid"[..], &b"1"[..]).unwrap_or_else(|()| unreachable!())
    })
}

fn respond_text(req: Request, status: u16, body: &str) {
    let resp = Response::from_string(body)
        .with_status_code(status)
        .with_header(header("Content-Type", "text/plain; charset=utf-8"));
    let _ = req.respond(resp);
}

/// An answer's bytes for tiny_http to read, shared with the retry table rather than copied.
struct SharedBody(Arc<str>);

impl AsRef<[u8]> for SharedBody {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

fn respond_answer(req: Request, answer: &Answer) {
    // Room for the three headers tiny_http adds (Date, Server, Content-Length).
    let mut headers = Vec::with_capacity(4);
    headers.push(header("Content-Type", answer.content_type()));
    let resp = Response::new(
        tiny_http::StatusCode(200),
        headers,
        std::io::Cursor::new(SharedBody(Arc::clone(&answer.body))),
        Some(answer.body.len()),
        None,
    );
    let _ = req.respond(resp);
}

/// Whether reading (or dropping) the request's body may wait on the client: tiny_http has read
/// it already only when it announced at most [`EAGER_BODY`] bytes and nothing else applies.
fn body_is_lazy(req: &Request) -> bool {
    let has = |name: &'static str| req.headers().iter().any(|h| h.field.equiv(name));
    connection_upgrade(req)
        || has("Expect")
        || has("Transfer-Encoding")
        || req.body_length().is_some_and(|n| n > EAGER_BODY)
}

/// Whether the request says `Connection: upgrade`: tiny_http then hands over the raw socket as
/// its body, which ends only when the client (a proxy waiting for the answer) hangs up.
fn connection_upgrade(req: &Request) -> bool {
    req.headers().iter().any(|h| {
        // Compared in place: nginx sends a `Connection` header with every request.
        h.field.equiv("Connection")
            && h.value
                .as_bytes()
                .windows(b"upgrade".len())
                .any(|w| w.eq_ignore_ascii_case(b"upgrade"))
    })
}

/// Takes a request from the recv loop. One whose body is still on the wire is handled on its
/// own thread: reading it, or dropping the request (which drains it), waits for the client,
/// and a client that sends its body slowly must not hold up the loop.
fn handle(app: &Arc<App>, req: Request) {
    if let Some(n) = req.body_length().filter(|&n| n > DRAIN_LIMIT) {
        return abandon(app, req, n);
    }
    if !body_is_lazy(&req) || app.detached.load(Ordering::SeqCst) >= MAX_DETACHED {
        return handle_now(app, req);
    }
    if let Err((req, e)) = detach(app, "wxmp-body", req, handle_now) {
        error!("cannot start a thread for a request body: {e}; reading it on the recv loop");
        handle_now(app, req);
    }
}

/// Counts a detached thread in [`App::detached`] for as long as it lives, panics included.
struct Detached(Arc<App>);

impl Drop for Detached {
    fn drop(&mut self) {
        self.0.detached.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs `work(payload)` on a thread of its own named `name`, counted in [`App::detached`] (which
/// shutdown waits for). The payload, a request with what answering it needs, goes to the thread
/// through a channel rather than in the closure: if the thread cannot be started it comes back
/// with the error, still unanswered, instead of being dropped with the closure (tiny_http would
/// answer a dropped request 500).
fn detach<T: Send + 'static>(
    app: &Arc<App>,
    name: &str,
    payload: T,
    work: impl FnOnce(&Arc<App>, T) + Send + 'static,
) -> Result<(), (T, std::io::Error)> {
    app.detached.fetch_add(1, Ordering::SeqCst);
    let count = Detached(Arc::clone(app));
    let (tx, rx) = std::sync::mpsc::sync_channel::<T>(1);
    let spawned = thread::Builder::new().name(name.into()).spawn(move || {
        default_slice();
        if let Ok(payload) = rx.recv() {
            work(&count.0, payload);
        }
        drop(count);
    });
    match spawned {
        Ok(_) => {
            // The channel has room for it and the thread holds the receiver: this cannot fail.
            let _ = tx.send(payload);
            Ok(())
        }
        // The closure, and `count` with it, is already dropped: the count is back.
        Err(e) => Err((payload, e)),
    }
}

/// Refuses a request that announced a body over [`DRAIN_LIMIT`] without ever dropping it, as
/// tiny_http's drain of the body would allocate its announced size and abort the process. The
/// request is turned into a raw stream (`upgrade`) after the 413 is written, and the stream is
/// leaked: its connection stays open and holds a tiny_http thread until wxmp restarts.
fn abandon(app: &App, req: Request, announced: usize) {
    let peer = client_addr(&req);
    let resp = Response::from_string(format!(
        "body of {announced} bytes is over the {MAX_BODY}-byte limit"
    ))
    .with_status_code(413);
    let stream = req.upgrade("close", resp);
    std::mem::forget(stream);
    let n = app.abandoned.fetch_add(1, Ordering::SeqCst) + 1;
    warn!(
        "{peer} refused (413): Content-Length {announced} is over the {MAX_BODY}-byte limit; \
         connection abandoned ({n} so far, restart at {ABANDON_LIMIT})"
    );
    if n >= ABANDON_LIMIT {
        let why = format!(
            "{n} connections with huge Content-Length were abandoned (each holds a thread)"
        );
        *app.fatal.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
    }
}

/// Handles a request here and now. Parsing, checking and rendering return errors rather than
/// panic (their property tests and fuzz targets say so); should one panic all the same, the
/// worker thread survives it: the request is dropped, which makes tiny_http answer it 500.
fn handle_now(app: &Arc<App>, req: Request) {
    if catch_unwind(AssertUnwindSafe(|| handle_request(app, req))).is_err() {
        error!("a request panicked outside the command handler; it was answered 500");
    }
}

fn handle_request(app: &Arc<App>, req: Request) {
    let ctx = Ctx {
        start: Instant::now(),
        peer: client_addr(&req),
        seal: None,
        age: 0,
    };
    let live = Arc::clone(&app.live.read().unwrap_or_else(PoisonError::into_inner));
    let config = &live.config;
    let url = req.url().to_string();
    let (path, query) = split_target(&url);
    if path == "/healthz" && matches!(req.method(), Method::Get | Method::Head) {
        return respond_text(req, 200, "ok");
    }
    if !path_is(path, &config.path) {
        // Escaped: tiny_http leaves a bare line feed in the request target, and an unsigned
        // request must not be able to write a line of its own into the log.
        warn!(
            "{} {} {}: not found (WeChat's path is {})",
            ctx.peer,
            req.method().as_str().escape_debug(),
            path.escape_debug(),
            config.path
        );
        return respond_text(req, 404, "not found");
    }
    let query = Query::parse(query);
    match req.method() {
        Method::Get => verify_url(app, req, config, &query, &ctx),
        Method::Post => handle_post(app, req, &live, &query, ctx),
        other => {
            warn!(
                "{} {} {}: method not allowed",
                ctx.peer,
                other.as_str().escape_debug(),
                path.escape_debug()
            );
            let resp = Response::from_string("method not allowed")
                .with_status_code(405)
                .with_header(header("Allow", "GET, POST"));
            let _ = req.respond(resp);
        }
    }
}

/// Whether the request's `path` is the configured one, `configured`, as it is or with its
/// `%XX` escapes decoded: a client (and nginx, which passes the URI on as it came) sends a
/// path such as `/微信` as `/%E5%BE%AE%E4%BF%A1`. `+` is itself in a path, not a space.
fn path_is(path: &str, configured: &str) -> bool {
    if path == configured {
        return true;
    }
    if !path.contains('%') {
        return false;
    }
    let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16));
    let (bytes, mut want) = (path.as_bytes(), configured.bytes());
    let mut i = 0;
    while i < bytes.len() {
        let byte = match (bytes[i], hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
            (b'%', Some(h), Some(l)) => {
                i += 3;
                // Two hex digits are at most 255: the cast cannot truncate.
                (h * 16 + l) as u8
            }
            (b, _, _) => {
                i += 1;
                b
            }
        };
        if want.next() != Some(byte) {
            return false;
        }
    }
    want.next().is_none()
}

/// A request target's path and query (the part after `?`). An HTTP/1.1 server must accept the
/// absolute form, `http://host/path?query` (RFC 9112, 3.2.2: what a client sends through a
/// forward proxy), which tiny_http hands on as it came: its scheme and authority are dropped,
/// and an empty path is `/`.
fn split_target(target: &str) -> (&str, &str) {
    let absolute = ["http://", "https://"].into_iter().find_map(|scheme| {
        target
            .get(..scheme.len())
            .filter(|s| s.eq_ignore_ascii_case(scheme))
            .and_then(|_| target.get(scheme.len()..))
    });
    let Some(rest) = absolute else {
        return target.split_once('?').unwrap_or((target, ""));
    };
    let origin = rest
        .find(['/', '?'])
        .and_then(|i| rest.get(i..))
        .unwrap_or("");
    let (path, query) = origin.split_once('?').unwrap_or((origin, ""));
    (if path.is_empty() { "/" } else { path }, query)
}

/// The parts of a request's URL that its plain-mode signature covers.
struct SignedUrl<'a> {
    timestamp: &'a str,
    nonce: &'a str,
    /// The verified `signature`: what the replay ledger knows the URL by.
    signature: &'a str,
}

impl SignedUrl<'_> {
    /// The signed `timestamp` if it is recent ([`signature::check_fresh`]).
    fn fresh(&self) -> Result<u64, String> {
        signature::check_fresh(self.timestamp, now_unix())
    }
}

/// The signed parts of `query` if its plain-mode signature is valid for `token`.
fn signed<'q>(query: &'q Query, token: &str) -> Option<SignedUrl<'q>> {
    let (sig, timestamp, nonce) = (
        query.get("signature")?,
        query.get("timestamp")?,
        query.get("nonce")?,
    );
    signature::verify(token, timestamp, nonce, sig).then_some(SignedUrl {
        timestamp,
        nonce,
        signature: sig,
    })
}

/// GET: WeChat's URL verification. Echo `echostr` when the signature is valid and recent (a
/// server whose clock is wrong fails already here, when the admin page is saved).
fn verify_url(app: &App, req: Request, config: &Config, query: &Query, ctx: &Ctx) {
    let Some(echo) = query.get("echostr") else {
        warn!("{} GET without echostr refused", ctx.peer);
        return respond_text(req, 403, "forbidden: not a WeChat verification request");
    };
    let Some(url) = signed(query, &config.token) else {
        warn!(
            "{} URL verification refused: bad or missing signature",
            ctx.peer
        );
        return respond_text(req, 403, "forbidden: bad signature");
    };
    if let Err(why) = url.fresh() {
        warn!("{} URL verification refused: {why}", ctx.peer);
        return respond_text(req, 403, "forbidden: stale timestamp");
    }
    // Remembered so that no POST can carry a message with this URL (`replay`).
    app.urls.record_verification(url.signature);
    info!("{} URL verification passed", ctx.peer);
    let echo = echo.to_string();
    respond_text(req, 200, &echo);
}

/// Reads the body, at most [`MAX_BODY`] bytes; `Err(status, why)` for the client.
fn read_body(req: &mut Request) -> Result<String, (u16, String)> {
    if let Some(n) = req.body_length() {
        if n > MAX_BODY {
            return Err((
                413,
                format!("body of {n} bytes is over the {MAX_BODY}-byte limit"),
            ));
        }
    }
    // The announced length bounds the read: with `Connection: upgrade` tiny_http hands over the
    // raw socket, which only ends when the client (a proxy waiting for this answer) hangs up.
    // Without a length only a chunked body has an end of its own.
    let encoding = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Transfer-Encoding"))
        .map(|h| h.value.as_str().to_string());
    let chunked = encoding.is_some();
    let last_coding_chunked = encoding.as_deref().is_some_and(|te| {
        te.rsplit(',')
            .next()
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
    });
    if let Some(te) = encoding.as_deref().filter(|_| !last_coding_chunked) {
        // RFC 9112, 6.1: the body's length cannot be known, so the request is refused. (tiny_http
        // would decode it as chunks all the same, waiting for a chunk size that never comes.)
        return Err((
            400,
            format!("Transfer-Encoding {te:?} does not end in chunked: the body has no length"),
        ));
    }
    if last_coding_chunked && req.body_length().is_none() && connection_upgrade(req) {
        // The raw socket, chunks undecoded: read them to the last one, not to the end of the
        // connection.
        let buf = read_chunked(req.as_reader(), MAX_BODY + 1)
            .map_err(|e| (400, format!("reading the body failed: {e}")))?;
        if buf.len() > MAX_BODY {
            return Err((413, format!("body is over the {MAX_BODY}-byte limit")));
        }
        return String::from_utf8(buf).map_err(|e| (400, format!("body is not UTF-8: {e}")));
    }
    let limit = match req.body_length() {
        Some(n) => n as u64,
        None if chunked => MAX_BODY as u64 + 1,
        None => 0,
    };
    let mut buf = Vec::with_capacity(req.body_length().unwrap_or(1024).min(MAX_BODY));
    req.as_reader()
        .take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| (400, format!("reading the body failed: {e}")))?;
    if buf.len() > MAX_BODY {
        return Err((413, format!("body is over the {MAX_BODY}-byte limit")));
    }
    String::from_utf8(buf).map_err(|e| (400, format!("body is not UTF-8: {e}")))
}

/// The longest chunk-size or trailer line read ([`read_chunked`]).
const CHUNK_LINE_LIMIT: u64 = 1024;

/// Decodes a chunked body (RFC 9112, 7.1) from `reader`, stopping after the last chunk and its
/// trailers, or as soon as more than `limit` bytes of data have come (the rest is not read):
/// for a request whose connection tiny_http handed over raw (`Connection: upgrade`), where
/// the client never ends the connection.
fn read_chunked(reader: &mut dyn Read, limit: usize) -> std::io::Result<Vec<u8>> {
    use std::io::BufRead;
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
    let mut reader = std::io::BufReader::new(reader);
    let mut line = Vec::new();
    let mut next_line = |reader: &mut std::io::BufReader<&mut dyn Read>| {
        line.clear();
        reader
            .by_ref()
            .take(CHUNK_LINE_LIMIT)
            .read_until(b'\n', &mut line)?;
        if line.ends_with(b"\n") {
            Ok(String::from_utf8_lossy(&line).trim_end().to_string())
        } else {
            Err(bad("a chunk line is cut short or too long"))
        }
    };
    let mut body = Vec::new();
    loop {
        let size_line = next_line(&mut reader)?;
        let size_text = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .ok()
            .filter(|_| !size_text.starts_with('+'))
            .ok_or_else(|| bad("a chunk size is not a hexadecimal number"))?;
        if size == 0 {
            // Trailers, up to the empty line that ends the body.
            while !next_line(&mut reader)?.is_empty() {}
            return Ok(body);
        }
        let room = limit.saturating_sub(body.len());
        let take = size.min(room);
        let start = body.len();
        body.resize(start + take, 0);
        reader.read_exact(&mut body[start..])?;
        if take < size {
            return Ok(body);
        }
        if !next_line(&mut reader)?.is_empty() {
            return Err(bad("a chunk is longer than its size"));
        }
    }
}

fn handle_post(app: &Arc<App>, mut req: Request, live: &Live, query: &Query, mut ctx: Ctx) {
    // The signature comes first: an unsigned body is never read, let alone parsed.
    let Some(url) = signed(query, &live.config.token) else {
        warn!("{} POST refused: bad or missing signature", ctx.peer);
        return respond_text(req, 403, "forbidden: bad signature");
    };
    let sent_at = match url.fresh() {
        Ok(sent_at) => sent_at,
        Err(why) => {
            warn!("{} POST refused (403): {why}", ctx.peer);
            return respond_text(req, 403, "forbidden: stale timestamp");
        }
    };
    let encrypted = query.get("encrypt_type") == Some("aes");
    if live.config.encrypted_only && !encrypted {
        warn!(
            "{} POST refused (403): not encrypted, and encrypted_only = true (WeChat sends a \
             safe-mode account's messages with encrypt_type=aes)",
            ctx.peer
        );
        return respond_text(
            req,
            403,
            "forbidden: this account takes encrypted messages only",
        );
    }
    let body = match read_body(&mut req) {
        Ok(body) => body,
        Err((status, why)) => {
            warn!("{} POST refused ({status}): {why}", ctx.peer);
            if status == 413 {
                let resp = Response::from_string(why)
                    .with_status_code(413)
                    .with_header(header("Connection", "close"));
                let _ = req.respond(resp);
                return;
            }
            return respond_text(req, status, &why);
        }
    };
    let parsed = if encrypted && live.crypt.is_none() {
        // Compatible mode (兼容模式) sends the plain fields beside `Encrypt`, and WeChat takes a
        // plain reply to it: without the key, answer those as a plain-mode message. Safe mode's
        // body holds nothing else, so it cannot be read at all.
        match message::parse(&body) {
            Ok(msg) => {
                if !SAID_COMPATIBLE_IN_PLAIN.swap(true, Ordering::Relaxed) {
                    warn!(
                        "compatible-mode messages (encrypt_type=aes with plain fields) are read \
                         and answered in plain: no encoding_aes_key is configured (set it and \
                         app_id in wxmp.toml to answer them encrypted; safe mode needs it)"
                    );
                }
                Ok(msg)
            }
            Err(_) => {
                let (status, why) = no_key();
                warn!("{} safe-mode POST refused ({status}): {why}", ctx.peer);
                return respond_text(req, status, &why);
            }
        }
    } else {
        let body = if encrypted {
            match open_sealed(live, query, &body) {
                Ok((xml, crypt)) => {
                    ctx.seal = Some(crypt);
                    xml
                }
                Err((status, why)) => {
                    warn!("{} safe-mode POST refused ({status}): {why}", ctx.peer);
                    return respond_text(req, status, &why);
                }
            }
        } else {
            body
        };
        message::parse(&body)
    };
    let msg = match parsed {
        Ok(msg) => msg,
        Err(e) => {
            warn!("{} POST refused (400): {e}", ctx.peer);
            return respond_text(req, 400, &format!("bad request: {e}"));
        }
    };
    ctx.age = sent_at
        .checked_sub(msg.create_time)
        .filter(|age| *age <= AGE_MEANINGFUL)
        .unwrap_or(0);
    let key = msg.dedup_key();
    match app.urls.record(url.signature, &key) {
        Seen::First | Seen::Same => {}
        Seen::Other => {
            warn!(
                "{} POST refused (403): its signed URL (timestamp {sent_at}, nonce {:?}) already \
                 carried another message: a URL replayed from a log with a forged body",
                ctx.peer, url.nonce
            );
            return respond_text(req, 403, "forbidden: signed URL already used");
        }
        Seen::Spent => {
            warn!(
                "{} POST refused (403): its signed URL (timestamp {sent_at}, nonce {:?}) carried \
                 this message over {}s ago, after WeChat's retries: a URL and message replayed \
                 from a log to run it again",
                ctx.peer,
                url.nonce,
                crate::replay::RETRIES_WITHIN.as_secs()
            );
            return respond_text(req, 403, "forbidden: signed URL already used");
        }
    }
    match app.dedup.claim(&key) {
        Claim::First(ticket) => first_try(app, req, msg, ticket, ctx),
        Claim::Repeat(repeat) => repeated_try(app, req, msg, repeat, ctx),
    }
}

/// Whether the warning that compatible-mode messages are answered in plain has been logged:
/// once a process, not once a message.
static SAID_COMPATIBLE_IN_PLAIN: AtomicBool = AtomicBool::new(false);

/// The refusal of an encrypted request that cannot be read: no key is configured.
fn no_key() -> (u16, String) {
    (
        400,
        "encrypted request but no encoding_aes_key is configured: set encoding_aes_key and \
         app_id in wxmp.toml"
            .to_string(),
    )
}

/// Safe or compatible mode: checks `msg_signature` over the `Encrypt` element, decrypts it and
/// checks the AppID inside. `Err(status, why)`: 403 for a bad signature or another account's
/// message, 400 for anything malformed.
fn open_sealed(
    live: &Live,
    query: &Query,
    body: &str,
) -> Result<(String, Arc<MsgCrypt>), (u16, String)> {
    let crypt = live.crypt.as_ref().ok_or_else(no_key)?;
    let param = |name: &str| {
        query
            .get(name)
            .ok_or_else(|| (403, format!("missing {name}")))
    };
    let (msg_signature, timestamp, nonce) = (
        param("msg_signature")?,
        param("timestamp")?,
        param("nonce")?,
    );
    let encrypt = crypto::extract_encrypt(body).map_err(|e| (400, e.to_string()))?;
    let opened = crypt
        .verify_and_decrypt(msg_signature, timestamp, nonce, &encrypt)
        .map(|xml| (xml, Arc::clone(crypt)));
    let opened = match (opened, &live.previous) {
        // What the key decides (the pad, the length, the AppID, UTF-8) may come out right with
        // the key before the last change; the answer is then sealed with that key, as WeChat's
        // FAQ asks. The signature, base64 and length do not depend on the key.
        (
            Err(
                e @ (CryptoError::Padding
                | CryptoError::TooShort
                | CryptoError::LengthField
                | CryptoError::AppIdMismatch { .. }
                | CryptoError::Utf8),
            ),
            Some(previous),
        ) => previous
            .verify_and_decrypt(msg_signature, timestamp, nonce, &encrypt)
            .map(|xml| (xml, Arc::clone(previous)))
            .map_err(|_| e),
        (opened, _) => opened,
    };
    match opened {
        Ok(opened) => Ok(opened),
        Err(e @ (CryptoError::Signature | CryptoError::AppIdMismatch { .. })) => {
            Err((403, e.to_string()))
        }
        Err(e) => Err((400, e.to_string())),
    }
}

/// Asks the handler for a route, turning a panic into `success` (and a log line).
fn route_safely(app: &App, msg: &Message) -> Route {
    let handler = Arc::clone(&app.handler.read().unwrap_or_else(PoisonError::into_inner));
    catch_unwind(AssertUnwindSafe(|| handler.route(msg))).unwrap_or_else(|_| {
        error!(
            "handler panicked on {} from {}; answered success",
            msg.msg_type, msg.from_user
        );
        Route::Now(Reply::Success)
    })
}

/// Writes the reply XML, encrypted when the request was (`success` stays plain: WeChat takes it
/// as it is in every mode).
fn render(reply: &Reply, msg: &Message, seal: Option<&MsgCrypt>) -> Answer {
    let now = now_unix();
    let xml = reply.render(&msg.from_user, &msg.to_user, now);
    // A text with nothing visible is written `success` (WeChat shows an error for an empty
    // text): the log names what was sent.
    let kind = if xml == "success" {
        Reply::Success.kind()
    } else {
        reply.kind()
    };
    let body = match seal {
        Some(crypt) if xml != "success" => match crypt.seal_reply(&xml, now) {
            Ok(sealed) => sealed,
            Err(e) => {
                error!(
                    "cannot encrypt the reply to {}: {e}; answered success",
                    msg.from_user
                );
                return Answer {
                    body: "success".into(),
                    kind: "success",
                    hand_on: true,
                };
            }
        },
        _ => xml,
    };
    Answer {
        body: body.into(),
        kind,
        hand_on: true,
    }
}

fn log_answer(msg: &Message, answer: &Answer, ctx: &Ctx, note: &str) {
    info!(
        "{} {} {}{} \"{}\" -> {}{note} {}ms",
        ctx.peer,
        msg.from_user,
        msg.msg_type,
        msg.event_name()
            .map(|e| format!("/{e}"))
            .unwrap_or_default(),
        msg.summary(),
        answer.kind,
        ctx.start.elapsed().as_millis()
    );
}

fn first_try(app: &Arc<App>, req: Request, msg: Message, ticket: Ticket<Answer>, ctx: Ctx) {
    match route_safely(app, &msg) {
        Route::Now(reply) => {
            let reply = app.pending.attach(&msg.from_user, reply);
            let answer = render(&reply, &msg, ctx.seal.as_deref());
            ticket.complete(answer.clone());
            // Answer first: the log line's system calls need not delay WeChat.
            respond_answer(req, &answer);
            log_answer(&msg, &answer, &ctx, "");
        }
        Route::Later(job) => {
            if is_last_try(1, Duration::ZERO, ctx.age) {
                // WeChat's last try is the first this process sees (it restarted between
                // tries): the job runs on its own, and this try waits for it within its
                // deadline like any last try, then leaves the result for the next message.
                let watch = ticket.watch();
                let (msg2, seal) = (msg.clone(), ctx.seal.clone());
                let run = move |app: &Arc<App>, ()| {
                    run_job(app, job, &msg2, ticket, seal.as_deref());
                };
                match detach(app, "wxmp-job", (), run) {
                    Ok(()) => repeated_try(app, req, msg, watch, ctx),
                    Err((_, e)) => {
                        error!("cannot start a job thread: {e}; answered success");
                        respond_answer(req, &render(&Reply::Success, &msg, None));
                    }
                }
                return;
            }
            // The job's own thread completes the ticket, then answers this try (retries wait
            // for the same answer in `repeated_try`). It needs no time limit of its own: the
            // only slow work is a program, killed at its `timeout` (at most 14 s).
            let msg2 = msg.clone();
            let detached = detach(app, "wxmp-job", (req, ctx), move |app, (req, ctx)| {
                let answer = run_job(app, job, &msg2, ticket, ctx.seal.as_deref());
                answer_repeat(req, &msg2, answer, &ctx, "");
            });
            if let Err(((req, _), e)) = detached {
                error!("cannot start a job thread: {e}; answered success");
                respond_answer(req, &render(&Reply::Success, &msg, None));
            }
        }
    }
}

/// Runs a slow job and completes its ticket with the rendered answer, which it returns; `None`
/// when the last try gave up on it first (the result then waits for the user's next message).
fn run_job(
    app: &App,
    job: crate::router::Job,
    msg: &Message,
    ticket: Ticket<Answer>,
    seal: Option<&MsgCrypt>,
) -> Option<Answer> {
    let reply = catch_unwind(AssertUnwindSafe(job)).unwrap_or_else(|_| {
        error!(
            "slow job panicked on a message from {}; answered success",
            msg.from_user
        );
        Reply::Success
    });
    // The job's program ran on this thread: was it cut short by the stop?
    let cut_short = crate::exec::take_cut_short();
    let mut answer = None;
    app.pending.finish_as(
        &msg.dedup_key(),
        &msg.from_user,
        reply,
        !cut_short,
        |reply| {
            let mut rendered = render(&reply, msg, seal);
            rendered.hand_on = !cut_short;
            ticket.complete(rendered.clone());
            answer = Some(rendered);
        },
    );
    answer
}

/// A try of a message whose first try is done or under way: answer with the first try's bytes.
fn repeated_try(app: &Arc<App>, req: Request, msg: Message, repeat: Repeat<Answer>, ctx: Ctx) {
    let note = if repeat.attempt > 1 {
        format!(" (try {}, same answer)", repeat.attempt)
    } else {
        String::new()
    };
    if repeat.is_settled() {
        return answer_repeat(req, &msg, repeat.wait(Duration::ZERO), &ctx, &note);
    }
    // Waiting can take seconds: do it off the recv loop.
    let work =
        move |app: &Arc<App>, (req, msg, repeat, ctx): (Request, Message, Repeat<Answer>, Ctx)| {
            let answer = if is_last_try(repeat.attempt, repeat.since_first(), ctx.age) {
                // WeChat stops trying after this one: answer within this try's deadline.
                let left = (ctx.start + ANSWER_WITHIN).saturating_duration_since(Instant::now());
                match repeat.wait(left) {
                    Some(answer) => Some(answer),
                    None => give_up(app, &msg, &repeat, ctx.seal.as_deref()),
                }
            } else {
                // Keep the connection until the work is done: answering `success` early would
                // stop WeChat's retries, and WeChat drops the connection itself after 5 s.
                repeat.wait(SLOW_WORK_LIMIT)
            };
            answer_repeat(req, &msg, answer, &ctx, &note);
        };
    if let Err((_, e)) = detach(app, "wxmp-wait", (req, msg, repeat, ctx), work) {
        // The request is dropped unanswered (tiny_http answers 500): WeChat will try again.
        error!("cannot start a waiting thread: {e}");
    }
}

/// The last try found the work still running: its answer is the notice that the result will
/// follow, and the result goes with the user's next message (or the result, if it just came).
fn give_up(
    app: &App,
    msg: &Message,
    repeat: &Repeat<Answer>,
    seal: Option<&MsgCrypt>,
) -> Option<Answer> {
    if repeat.is_settled() {
        return repeat.wait(Duration::ZERO);
    }
    let key = msg.dedup_key();
    if let Some(answer) = app.pending.give_up(&key, || repeat.wait(Duration::ZERO)) {
        return Some(answer);
    }
    info!(
        "{} {}: still running at WeChat's last try; the result will come with the next message",
        msg.from_user,
        msg.summary()
    );
    Some(render(&Reply::Text(pending::NOTICE.into()), msg, seal))
}

fn answer_repeat(req: Request, msg: &Message, answer: Option<Answer>, ctx: &Ctx, note: &str) {
    let answer = answer.unwrap_or_else(|| render(&Reply::Success, msg, None));
    respond_answer(req, &answer);
    log_answer(msg, &answer, ctx, note);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_leaves_alone_an_fd_that_is_no_longer_the_listener() {
        use std::os::fd::AsRawFd;
        let fd_path = |fd: i32| std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        // The accept loop ended and closed the socket; its number now holds a file.
        let file = std::fs::File::open("/dev/null").unwrap();
        let addr: SocketAddr = "127.0.0.1:8880".parse().unwrap();
        assert_eq!(stop_accepting(file.as_raw_fd(), addr), Ok(()));
        assert_eq!(fd_path(file.as_raw_fd()), std::path::Path::new("/dev/null"));
        // ... or another listening socket than the server's.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let before = fd_path(other.as_raw_fd());
        assert_eq!(stop_accepting(other.as_raw_fd(), addr), Ok(()));
        assert_eq!(fd_path(other.as_raw_fd()), before);
    }

    /// Small blocks freed past the per-thread cache land in fastbins unless they are off.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn fastbins_are_off_after_tune_allocator() {
        assert!(tune_allocator(), "glibc refused M_MXFAST = 0");
        // SAFETY: plain malloc/free of blocks this test owns; mallinfo2 only reads statistics.
        unsafe {
            let before = libc::mallinfo2().fsmblks;
            let blocks: Vec<*mut libc::c_void> = (0..64).map(|_| libc::malloc(24)).collect();
            assert!(blocks.iter().all(|b| !b.is_null()));
            for b in blocks {
                libc::free(b);
            }
            // 57 of the 64 would be in fastbins (the thread cache holds 7 of a size).
            let after = libc::mallinfo2().fsmblks;
            assert!(
                after <= before,
                "fastbins grew from {before} to {after} bytes"
            );
        }
    }

    /// The short slice leaves the thread's nice value and policy alone (here `SCHED_BATCH`, as a
    /// unit's `CPUSchedulingPolicy=batch` sets it: a thread under the default policy would not
    /// tell a kept policy from one reset to the default), and where the kernel reports slices
    /// (Linux 6.12 and later) it is the one asked for, and a thread started from a worker gets
    /// the default back.
    #[test]
    fn a_short_slice_keeps_nice_and_policy() {
        thread::spawn(|| {
            // SAFETY: raising this thread's own nice value needs no privilege.
            assert_eq!(unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 3) }, 0);
            let batch = libc::sched_param { sched_priority: 0 };
            // SAFETY: moving this thread to SCHED_BATCH needs no privilege; `batch` is read only.
            assert_eq!(
                unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &raw const batch) },
                0
            );
            assert!(ask_short_slice(), "sched_setattr refused");
            // SAFETY: both only read this thread's scheduling parameters.
            assert_eq!(unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }, 3);
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_BATCH);
            let mut got = SchedAttr::default();
            let size = std::mem::size_of::<SchedAttr>() as u32;
            // SAFETY: sched_getattr writes at most `size` bytes into `got`.
            let rc = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &raw mut got, size, 0) };
            assert_eq!(rc, 0);
            assert_eq!(got.nice, 3);
            if got.runtime != 0 {
                assert_eq!(u128::from(got.runtime), WORKER_SLICE.as_nanos());
            }
            // A thread started from here inherits the short slice; `default_slice` undoes it.
            let inherited = thread::spawn(move || {
                assert!(default_slice(), "sched_setattr refused");
                let mut got = SchedAttr::default();
                // SAFETY: as above.
                let rc =
                    unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &raw mut got, size, 0) };
                assert_eq!(rc, 0);
                assert_eq!(got.nice, 3);
                assert_eq!(got.policy, libc::SCHED_BATCH as u32);
                got.runtime
            })
            .join()
            .unwrap();
            if got.runtime != 0 {
                assert_ne!(u128::from(inherited), WORKER_SLICE.as_nanos());
            }
        })
        .join()
        .unwrap();
    }

    /// The retry table's byte budget counts what each answer holds: its body.
    #[test]
    fn an_answer_weighs_its_body() {
        let table: Dedup<Answer> = Dedup::default();
        if let Claim::First(ticket) = table.claim("oA 1") {
            ticket.complete(Answer {
                body: "<xml>回复</xml>".into(),
                kind: "text",
                hand_on: true,
            });
        }
        assert_eq!(table.bytes(), 17);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c%2Bd"), "a b c+d");
        assert_eq!(percent_decode("%E4%BD%A0"), "你");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn the_last_try_is_the_third_or_a_late_one() {
        assert!(!is_last_try(1, Duration::ZERO, 0));
        assert!(!is_last_try(2, Duration::from_secs(5), 6));
        assert!(is_last_try(3, Duration::from_secs(1), 0));
        assert!(is_last_try(2, Duration::from_millis(9500), 0));
        assert!(!is_last_try(1, Duration::from_millis(9499), 0));
        // WeChat's third try, the first this process sees: by WeChat's own clock.
        assert!(is_last_try(1, Duration::ZERO, 10));
        assert!(!is_last_try(1, Duration::ZERO, 8));
    }

    #[test]
    fn chunked_bodies_are_read_to_their_last_chunk_and_no_further() {
        let read = |wire: &[u8], limit: usize| {
            let mut r: &[u8] = wire;
            read_chunked(&mut r, limit).map_err(|e| e.to_string())
        };
        let ok = b"3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT REQUEST";
        assert_eq!(read(ok, 100).as_deref(), Ok(&b"abc0123456789"[..]));
        assert_eq!(read(b"0\r\n\r\n", 100).as_deref(), Ok(&b""[..]));
        // Over the limit: the data up to one byte past it, and nothing more is waited for.
        assert_eq!(read(b"5\r\nabcde", 3).map(|b| b.len()), Ok(3));
        assert_eq!(read(b"ffffffffffffffff\r\nab", 2).map(|b| b.len()), Ok(2));
        for bad in [
            &b"zz\r\nabc\r\n0\r\n\r\n"[..],
            b"+3\r\nabc\r\n0\r\n\r\n",
            b"\r\n",
            b"3\r\nabcd\r\n0\r\n\r\n",
            b"3\r\nab",
            b"3",
            b"0\r\nX-T: 1\r\n",
        ] {
            assert!(
                read(bad, 100).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_line = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(2000));
        assert!(read(long_line.as_bytes(), 100).is_err());
    }

    #[test]
    fn a_path_matches_as_it_is_or_percent_decoded() {
        assert!(path_is("/wx", "/wx"));
        assert!(path_is("/%E5%BE%AE%E4%BF%A1", "/微信"));
        assert!(path_is("/%e5%be%ae%e4%bf%a1", "/微信"));
        assert!(path_is("/%77x", "/wx"));
        assert!(path_is("/a+b", "/a+b"));
        assert!(path_is("/a%2Bb", "/a+b"));
        assert!(path_is("/%E5%BE%AE%E4%BF%A1", "/%E5%BE%AE%E4%BF%A1"));
        assert!(!path_is("/a+b", "/a b"));
        assert!(!path_is("/wx%", "/wx"));
        assert!(path_is("/wx%", "/wx%"));
        assert!(!path_is("/wx%2", "/wx"));
        assert!(!path_is("/%E5%BE%AE", "/微信"));
        assert!(!path_is("/%E5%BE%AE%E4%BF%A1x", "/微信"));
        assert!(!path_is("/wx%2F", "/wx"));
        assert!(!path_is("/", "/wx"));
    }

    #[test]
    fn request_targets_in_origin_and_absolute_form() {
        assert_eq!(split_target("/wx?a=1&b"), ("/wx", "a=1&b"));
        assert_eq!(split_target("/wx"), ("/wx", ""));
        assert_eq!(split_target("http://h:80/wx?a=1"), ("/wx", "a=1"));
        assert_eq!(split_target("HTTPS://h/"), ("/", ""));
        assert_eq!(split_target("http://h?a=1"), ("/", "a=1"));
        assert_eq!(split_target("http://h"), ("/", ""));
        assert_eq!(
            split_target("http://h/p?x=http://y/z"),
            ("/p", "x=http://y/z")
        );
        assert_eq!(split_target("ftp://h/wx"), ("ftp://h/wx", ""));
        assert_eq!(split_target("*"), ("*", ""));
    }

    #[test]
    fn query_parsing() {
        let q = Query::parse("signature=abc&timestamp=1&nonce=2&echostr=x%3Dy&&flag");
        assert_eq!(q.get("echostr"), Some("x=y"));
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.get("missing"), None);
    }
}
