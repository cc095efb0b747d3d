//! A bare tiny_http server: N threads in a plain `recv()` loop, each POST answered with one
//! fixed passive-reply text XML, nothing else (no signature check, no parsing, no limits).
//!
//! It is the floor of our stack for benchmarks (`examples/floor.rs`) and the "bare tiny_http"
//! victim of `tests/tiny_http_failures.rs` (included there with `#[path = ...]`).
#![allow(dead_code)]

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

/// The fixed passive reply: a text message back to the test user.
pub const PASSIVE_REPLY: &str = "<xml><ToUserName><![CDATA[oUSER0]]></ToUserName>\
<FromUserName><![CDATA[gh_test]]></FromUserName><CreateTime>1700000000</CreateTime>\
<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[floor]]></Content></xml>";

/// Counters shared by the worker threads.
#[derive(Default)]
pub struct Stats {
    /// Requests answered.
    pub answered: AtomicU64,
    /// `recv()` calls that returned an error (tiny_http hands accept errors to `recv()`).
    pub recv_errors: AtomicU64,
}

/// A running bare server. Dropping it unblocks the workers and closes the listener, but
/// does not wait for workers that are stuck inside a request (that is the point of some
/// tests); they end when their client goes away.
pub struct BareServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    pub stats: Arc<Stats>,
}

impl BareServer {
    /// Binds `addr` (e.g. `127.0.0.1:0`) and starts `threads` workers in a `recv()` loop.
    pub fn start(addr: impl ToSocketAddrs, threads: usize) -> std::io::Result<BareServer> {
        let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
        BareServer::from_server(server, threads, true)
    }

    /// Runs `threads` workers on an existing tiny_http server. With `read_body` false the
    /// workers answer `403` without reading the request body, as a handler that rejects a
    /// request on its query string alone (e.g. a bad signature) would.
    pub fn from_server(
        server: tiny_http::Server,
        threads: usize,
        read_body: bool,
    ) -> std::io::Result<BareServer> {
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| std::io::Error::other("not an IP listener"))?;
        let server = Arc::new(server);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let workers = (0..threads.max(1))
            .map(|i| {
                let server = Arc::clone(&server);
                let stop = Arc::clone(&stop);
                let stats = Arc::clone(&stats);
                thread::Builder::new()
                    .name(format!("bare-worker-{i}"))
                    .spawn(move || worker(&server, &stop, &stats, read_body))
                    .expect("spawn worker")
            })
            .collect();
        Ok(BareServer {
            server,
            addr,
            stop,
            workers,
            stats,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until every worker has ended (for a server that runs until killed).
    pub fn join(mut self) {
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for BareServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for _ in 0..self.workers.len() {
            self.server.unblock();
        }
        // Dropping the last Arc<Server> (when the workers let go) stops the accept thread.
    }
}

/// The plain recv loop: read the whole body, answer with the fixed reply.
fn worker(server: &tiny_http::Server, stop: &AtomicBool, stats: &Stats, read_body: bool) {
    let xml = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"text/xml; charset=utf-8"[..])
        .expect("static header");
    while !stop.load(Ordering::SeqCst) {
        let mut rq = match server.recv() {
            Ok(rq) => rq,
            Err(e) => {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                // A real server logs and carries on; tiny_http only reports accept errors here.
                stats.recv_errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("bare tiny_http: recv error: {e}");
                continue;
            }
        };
        if !read_body {
            let _ = rq.respond(tiny_http::Response::empty(403));
            stats.answered.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mut body = Vec::new();
        let _ = rq.as_reader().read_to_end(&mut body);
        let response = if *rq.method() == tiny_http::Method::Post {
            tiny_http::Response::from_string(PASSIVE_REPLY).with_header(xml.clone())
        } else {
            tiny_http::Response::from_string("success")
        };
        let _ = rq.respond(response);
        stats.answered.fetch_add(1, Ordering::Relaxed);
    }
}
