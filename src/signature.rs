//! WeChat request signatures: `hex(sha1(concat(sort(parts))))`.
//!
//! Plain mode signs `[token, timestamp, nonce]` (the `signature` query parameter); safe mode adds
//! the `Encrypt` value (the `msg_signature` parameter). Both are checked in constant time so that
//! response timing says nothing about how much of a forged signature was right.

/// Computes a WeChat signature over `parts`: sorted byte-wise, concatenated, SHA-1, lowercase hex.
pub fn sign(parts: &[&str]) -> String {
    // Lowercase hex digits are ASCII.
    String::from_utf8_lossy(&sign_hex(parts)).into_owned()
}

/// [`sign`] as 40 lowercase hex bytes on the stack: checking a request's signature allocates
/// nothing (every allocation under load may wait for an allocator lock).
fn sign_hex(parts: &[&str]) -> [u8; 40] {
    let mut hasher = sha1_smol::Sha1::new();
    // WeChat signs 3 or 4 parts: sorted in place on the stack; more only in a `Vec`.
    let (mut few, mut many) = ([""; 4], Vec::new());
    let sorted: &mut [&str] = match few.get_mut(..parts.len()) {
        Some(few) => {
            few.copy_from_slice(parts);
            few
        }
        None => {
            many.extend_from_slice(parts);
            &mut many
        }
    };
    sorted.sort_unstable();
    for part in sorted.iter() {
        hasher.update(part.as_bytes());
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 40];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(hasher.digest().bytes()) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
    hex
}

/// Checks a plain-mode `signature` for `token`, `timestamp` and `nonce`.
pub fn verify(token: &str, timestamp: &str, nonce: &str, signature: &str) -> bool {
    constant_time_eq(&sign_hex(&[token, timestamp, nonce]), signature.as_bytes())
}

/// How far a signed `timestamp` may be from this server's clock, in seconds. In plain mode WeChat
/// signs the URL and not the body, so without a bound one signed URL (access logs keep them) would
/// sign any message, such as one from an admin's openid, for ever. Five minutes is what webhook
/// signatures commonly allow: it covers WeChat's ~15 s of retries and a clock a little off.
pub const MAX_CLOCK_SKEW: u64 = 300;

/// A signed `timestamp` (unix seconds) if it is within [`MAX_CLOCK_SKEW`] of `now`; `Err` says
/// how far off it is and what that can mean.
pub fn check_fresh(timestamp: &str, now: u64) -> Result<u64, String> {
    let ts: u64 = timestamp.parse().map_err(|_| {
        let shown: String = timestamp.chars().take(24).collect();
        format!("timestamp {shown:?} is not a number of seconds")
    })?;
    let off = now.abs_diff(ts);
    if off <= MAX_CLOCK_SKEW {
        return Ok(ts);
    }
    let (way, hint) = if ts < now {
        (
            "behind",
            "a replayed old request, or this server's clock is fast",
        )
    } else {
        ("ahead of", "this server's clock is slow")
    };
    Err(format!(
        "timestamp {ts} is {off} s {way} this server's clock (over {MAX_CLOCK_SKEW} s): {hint} \
         (timedatectl shows whether it is synchronised)"
    ))
}

/// Checks a safe-mode `msg_signature`, which also covers the `Encrypt` payload.
pub fn verify_msg(
    token: &str,
    timestamp: &str,
    nonce: &str,
    encrypt: &str,
    msg_signature: &str,
) -> bool {
    constant_time_eq(
        &sign_hex(&[token, timestamp, nonce, encrypt]),
        msg_signature.as_bytes(),
    )
}

/// Compares two byte strings without an early exit on the first difference.
///
/// The length is not secret (a SHA-1 hex digest is always 40 bytes), so a length mismatch
/// returns at once; equal lengths are compared in full.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold back into an early-exit compare.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_fresh_within_five_minutes_either_way() {
        let now = 1_800_000_000;
        for ts in [now, now - 300, now + 300, now - 15] {
            assert_eq!(check_fresh(&ts.to_string(), now), Ok(ts));
        }
        let old = check_fresh(&(now - 301).to_string(), now).unwrap_err();
        assert!(
            old.contains("301 s behind") && old.contains("replayed"),
            "{old}"
        );
        let ahead = check_fresh(&(now + 3600).to_string(), now).unwrap_err();
        assert!(
            ahead.contains("3600 s ahead of") && ahead.contains("slow"),
            "{ahead}"
        );
        for bad in ["", "-5", "1e9", " 1800000000", "18446744073709551616"] {
            assert!(check_fresh(bad, now).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reference_vector_from_protocol_doc() {
        assert_eq!(
            sign(&["test", "1410685589", "test"]),
            "f21891de399b4e33a1a93c9a7b8a8fffb5a443ff"
        );
        assert!(verify(
            "test",
            "1410685589",
            "test",
            "f21891de399b4e33a1a93c9a7b8a8fffb5a443ff"
        ));
    }

    #[test]
    fn order_of_parts_does_not_matter() {
        assert_eq!(sign(&["b", "a", "c"]), sign(&["c", "b", "a"]));
        // More parts than the stack array holds take the other path, with the same result.
        let five = ["e", "b", "d", "a", "c"];
        let mut concat = five;
        concat.sort_unstable();
        assert_eq!(sign(&five), sign(&[&concat.concat()]));
        assert_eq!(sign(&five).len(), 40);
    }

    #[test]
    fn wrong_or_malformed_signatures_fail() {
        let good = "f21891de399b4e33a1a93c9a7b8a8fffb5a443ff";
        assert!(!verify("test", "1410685589", "test", &good.to_uppercase()));
        assert!(!verify("test", "1410685589", "test", &good[..39]));
        assert!(!verify("test", "1410685589", "test", ""));
        assert!(!verify("other", "1410685589", "test", good));
        assert!(!verify("test", "1410685590", "test", good));
    }

    #[test]
    fn official_safe_mode_sample_msg_signature() {
        let encrypt = "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=";
        assert!(verify_msg(
            "spamtest",
            "1409735669",
            "1320562132",
            encrypt,
            "5d197aaffba7e9b25a30732f161a50dee96bd5fa"
        ));
    }

    #[test]
    fn constant_time_eq_basics() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
