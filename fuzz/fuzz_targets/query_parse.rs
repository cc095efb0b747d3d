//! Arbitrary bytes as the request target WeChat (or anyone) sends: `/path?query`. wxmp's own
//! HTTP-side parsing (the path/query split, `Query::parse` with its percent-decoding, the
//! parameter look-ups and both signature checks) returns a value, never panics; and decoding
//! agrees with a simple reference.
//!
//! tiny_http's request-line and header parsing are not ours to fuzz; what wxmp adds on top of
//! it is here.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wxmp::server::{percent_decode, Query};

/// The reference decoder: `+` is a space, `%XX` a byte, anything else itself.
fn reference(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = |k: usize| b.get(k).and_then(|c| (*c as char).to_digit(16));
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fuzz_target!(|data: &[u8]| {
    let url = String::from_utf8_lossy(data);
    let (_path, query) = url.split_once('?').unwrap_or((&url, ""));
    assert_eq!(percent_decode(query), reference(query));
    let q = Query::parse(query);
    for name in [
        "signature",
        "timestamp",
        "nonce",
        "echostr",
        "openid",
        "encrypt_type",
        "msg_signature",
    ] {
        // The first pair whose decoded name is `name`, decoded the same way.
        let expected = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').unwrap_or((p, "")))
            .find(|(k, _)| reference(k) == name)
            .map(|(_, v)| reference(v));
        assert_eq!(q.get(name).map(str::to_string), expected, "{name} in {query:?}");
    }
    let (sig, ts, nonce) = (
        q.get("signature").unwrap_or(""),
        q.get("timestamp").unwrap_or(""),
        q.get("nonce").unwrap_or(""),
    );
    let _ = wxmp::signature::verify("fuzzToken1", ts, nonce, sig);
    let msg_sig = q.get("msg_signature").unwrap_or("");
    let _ = wxmp::signature::verify_msg("fuzzToken1", ts, nonce, query, msg_sig);
});
