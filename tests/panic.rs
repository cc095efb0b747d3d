//! A handler that panics must cost one `success` answer, not the server: run in-process so the
//! test can install a handler that panics on purpose.

mod common;
use common::*;
use std::sync::Arc;
use std::time::Duration;
use wxmp::config::Config;
use wxmp::message::{Kind, Message};
use wxmp::reply::Reply;
use wxmp::router::{Handler, Route};
use wxmp::server::Server;

/// Panics on "boom" right away, on "later" inside slow work, and answers "ok" otherwise.
struct Fragile;

impl Handler for Fragile {
    fn route(&self, msg: &Message) -> Route {
        match &msg.kind {
            Kind::Text { content } if content == "boom" => panic!("handler bug"),
            Kind::Text { content } if content == "later" => {
                Route::Later(Box::new(|| panic!("job bug")))
            }
            _ => Route::Now(Reply::Text("ok".into())),
        }
    }
}

fn start() -> Server {
    let config = Config {
        token: TOKEN.into(),
        listen: "127.0.0.1:0".into(),
        workers: 2,
        ..Config::default()
    };
    Server::start(config, Arc::new(Fragile)).expect("server starts")
}

fn post(server: &Server, body: &str) -> Resp {
    http(
        server.addr(),
        "POST",
        &signed_query("/", TOKEN),
        &[],
        body.as_bytes(),
        Duration::from_secs(10),
    )
}

#[test]
fn a_panicking_handler_is_answered_success_and_the_server_lives_on() {
    let server = start();
    for _ in 0..3 {
        let r = post(&server, &text("oA", "boom"));
        assert_eq!((r.status, r.body.as_str()), (200, "success"));
    }
    assert_text_reply(&post(&server, &text("oA", "fine")), "oA", "ok");
    server.shutdown(Duration::from_secs(1));
}

#[test]
fn a_panicking_slow_job_is_answered_success() {
    let server = start();
    let r = post(&server, &text("oA", "later"));
    assert_eq!((r.status, r.body.as_str()), (200, "success"));
    assert_text_reply(&post(&server, &text("oA", "fine")), "oA", "ok");
    server.shutdown(Duration::from_secs(1));
}
