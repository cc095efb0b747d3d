//! The floor of our stack: a bare tiny_http server answering every POST with a fixed
//! passive-reply text XML from a plain `recv()` loop across N threads.
//!
//! ```text
//! cargo run --release --example floor -- 127.0.0.1:PORT [threads]
//! cargo bench --bench loadgen -- --url http://127.0.0.1:PORT/wx --token T --connections 32 --duration 10
//! ```
//!
//! Whatever wxmp adds (signature check, XML parse, dedup, logging) is measured against this.
//! It runs until killed (Ctrl-C).

#[path = "support/bare_tiny_http.rs"]
mod bare_tiny_http;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let threads: usize = match args.next().map(|t| t.parse()) {
        None => 4,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: floor [ADDR] [THREADS>0]");
            std::process::exit(2);
        }
    };
    let server = match bare_tiny_http::BareServer::start(addr.as_str(), threads) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("floor: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "floor: bare tiny_http listening on http://{} with {threads} recv threads",
        server.addr()
    );
    server.join();
}
