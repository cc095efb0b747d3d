//! Safe mode (安全模式) and compatible mode (兼容模式) conversations with the real binary.

mod common;
use common::*;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

fn reply_of(w: &Wxmp, query: &str, body: &str) -> Resp {
    w.request("POST", query, &[], body.as_bytes())
}

/// Decrypts the encrypted reply `r` and checks it is a text reply `content` to `from`.
fn assert_sealed_text_reply(crypt: &wxmp::crypto::MsgCrypt, r: &Resp, from: &str, content: &str) {
    let inner = open_reply(crypt, &r.body);
    let resp = Resp {
        status: r.status,
        headers: vec![],
        body: inner,
    };
    assert_text_reply(&resp, from, content);
}

#[test]
fn safe_mode_message_gets_an_encrypted_signed_reply() {
    let w = Wxmp::start(&safe_mode_config());
    let crypt = sample_crypt();
    let (q, body) = safe_request(&crypt, &text("oSafe", "你好 <&> 😀"), false);
    assert!(!body.contains("oSafe"), "the request really is encrypted");
    let r = reply_of(&w, &q, &body);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        !r.body.contains(DEFAULT_REPLY),
        "the reply must be encrypted: {}",
        r.body
    );
    assert_sealed_text_reply(&crypt, &r, "oSafe", DEFAULT_REPLY);
    assert!(w.wait_for_log("oSafe text"));
}

#[test]
fn a_success_answer_stays_the_plain_word_in_safe_mode() {
    // WeChat takes `success` as it is in every mode: it is not encrypted.
    let w = Wxmp::start(&safe_mode_config());
    let crypt = sample_crypt();
    let report = msg(
        "oSafe",
        "event",
        &[
            ("Event", "TEMPLATESENDJOBFINISH"),
            ("MsgID", "200163836"),
            ("Status", "success"),
        ],
    );
    let (q, body) = safe_request(&crypt, &report, false);
    let r = reply_of(&w, &q, &body);
    assert_eq!((r.status, r.body.as_str()), (200, "success"));
    assert!(r
        .header("Content-Type")
        .unwrap_or_default()
        .starts_with("text/plain"));
    // Anything else is encrypted.
    let (q, body) = safe_request(&crypt, &text("oSafe", "hi"), false);
    assert_sealed_text_reply(&crypt, &reply_of(&w, &q, &body), "oSafe", DEFAULT_REPLY);
}

#[test]
fn compatible_mode_is_answered_encrypted() {
    let w = Wxmp::start(&safe_mode_config());
    let crypt = sample_crypt();
    let (q, body) = safe_request(&crypt, &text("oCompat", "hi"), true);
    assert!(body.contains("oCompat") && body.contains("<Encrypt>"));
    let r = reply_of(&w, &q, &body);
    assert_sealed_text_reply(&crypt, &r, "oCompat", DEFAULT_REPLY);
}

#[test]
fn encrypted_only_refuses_plain_posts_and_serves_encrypted_ones() {
    let w = Wxmp::start(&format!("{}encrypted_only = true\n", safe_mode_config()));
    let plain = w.post_signed(&text("oPlain", "hi"));
    assert_eq!(plain.status, 403, "{plain:?}");
    assert_eq!(
        plain.body,
        "forbidden: this account takes encrypted messages only"
    );
    assert!(w.wait_for_log("not encrypted, and encrypted_only = true"));
    let crypt = sample_crypt();
    for compatible in [false, true] {
        let (q, body) = safe_request(&crypt, &text("oSafe", "hi"), compatible);
        assert_sealed_text_reply(&crypt, &reply_of(&w, &q, &body), "oSafe", DEFAULT_REPLY);
    }
    // WeChat's URL verification is plain in every mode.
    let verification = format!("{}&echostr=e1", signed_query("/", TOKEN));
    assert_eq!(w.get(&verification).body, "e1");
}

#[test]
fn plain_requests_still_work_with_a_key_configured() {
    let w = Wxmp::start(&safe_mode_config());
    assert_text_reply(
        &w.post_signed(&text("oPlain", "hi")),
        "oPlain",
        DEFAULT_REPLY,
    );
}

#[test]
fn a_safe_mode_retry_gets_the_same_bytes() {
    let w = Wxmp::start(&safe_mode_config());
    let crypt = sample_crypt();
    let xml = text("oRetry", "again");
    let (q1, b1) = safe_request(&crypt, &xml, false);
    let (q2, b2) = safe_request(&crypt, &xml, false);
    assert_ne!(b1, b2, "each try is encrypted afresh");
    let first = reply_of(&w, &q1, &b1);
    let second = reply_of(&w, &q2, &b2);
    assert_eq!(first.body, second.body);
}

#[test]
fn missing_or_wrong_msg_signature_is_403() {
    let w = Wxmp::start(&safe_mode_config());
    let crypt = sample_crypt();
    let (q, body) = safe_request(&crypt, &text("oA", "hi"), false);
    let without = q.split("&msg_signature=").next().unwrap().to_string();
    assert_eq!(reply_of(&w, &without, &body).status, 403);
    let wrong = format!("{without}&msg_signature={}", "0".repeat(40));
    assert_eq!(reply_of(&w, &wrong, &body).status, 403);
    // The plain signature alone is not enough: it does not cover the Encrypt payload.
    let (_, other_body) = safe_request(&crypt, &text("oEvil", "swap"), false);
    assert_eq!(reply_of(&w, &q, &other_body).status, 403);
    assert!(w.wait_for_log("safe-mode POST refused (403)"));
}

#[test]
fn another_accounts_message_is_403() {
    let w = Wxmp::start(&safe_mode_config());
    let other = wxmp::crypto::MsgCrypt::new(TOKEN, SAMPLE_KEY, "wxSomeoneElse00001").unwrap();
    let (q, body) = safe_request(&other, &text("oA", "hi"), false);
    assert_eq!(reply_of(&w, &q, &body).status, 403);
    assert!(w.wait_for_log("AppID"));
}

#[test]
fn tampered_or_truncated_ciphertext_is_refused() {
    let w = Wxmp::start(&safe_mode_config());
    let crypt = sample_crypt();
    let encrypt = crypt.encrypt(&text("oA", "hi")).unwrap();
    // Flip a bit of the last ciphertext byte: that garbles the whole last plaintext block, which
    // holds the AppID's end and the padding. (Swapping the last base64 character for a fixed one
    // was no tamper at all whenever the ciphertext already ended in that character.)
    let mut raw = STANDARD.decode(&encrypt).unwrap();
    *raw.last_mut().unwrap() ^= 0x01;
    let tampered = STANDARD.encode(&raw);
    assert_ne!(tampered, encrypt);
    for bad in [
        tampered,                                 // tampered last block
        encrypt[..encrypt.len() / 2].to_string(), // truncated
        "!!!not base64!!!".to_string(),
        String::new(),
    ] {
        let ts = now().to_string();
        let q = format!(
            "/?signature={}&timestamp={ts}&nonce=1&encrypt_type=aes&msg_signature={}",
            sign(&[TOKEN, &ts, "1"]),
            sign(&[TOKEN, &ts, "1", &bad])
        );
        let body =
            format!("<xml><ToUserName>gh</ToUserName><Encrypt><![CDATA[{bad}]]></Encrypt></xml>");
        let r = reply_of(&w, &q, &body);
        assert!(r.status == 400 || r.status == 403, "{bad:?} → {r:?}");
    }
    let r = w.post_signed("<xml><FromUserName>u</FromUserName></xml>");
    assert_eq!(r.status, 400);
}

#[test]
fn encrypted_request_without_a_configured_key_is_refused_with_advice() {
    let w = Wxmp::start("");
    let crypt = sample_crypt();
    let (q, body) = safe_request(&crypt, &text("oA", "hi"), false);
    let r = reply_of(&w, &q, &body);
    assert_eq!(r.status, 400);
    assert!(r.body.contains("encoding_aes_key"));
}

#[test]
fn compatible_mode_without_a_configured_key_is_answered_in_plain() {
    // WeChat: in 兼容模式 the account may answer in plain or encrypted. Without the key wxmp
    // reads the plain fields beside `Encrypt` and answers in plain, and says so once.
    let w = Wxmp::start("");
    let crypt = sample_crypt();
    for from in ["oCompat1", "oCompat2"] {
        let (q, body) = safe_request(&crypt, &text(from, "hi"), true);
        let r = reply_of(&w, &q, &body);
        assert_text_reply(&r, from, DEFAULT_REPLY);
        assert!(!r.body.contains("<Encrypt>"), "{}", r.body);
        assert!(w.wait_for_log(&format!("{from} text")), "{}", w.stderr());
    }
    assert_eq!(
        w.stderr().matches("compatible-mode messages").count(),
        1,
        "{}",
        w.stderr()
    );
    assert!(w
        .stderr()
        .contains("answered in plain: no encoding_aes_key is configured"));
}

#[test]
fn after_a_key_change_messages_sealed_with_either_key_are_answered_with_that_key() {
    // WeChat's FAQ: keep the current and the previous EncodingAESKey, try the previous when the
    // current cannot decrypt, and encrypt the answer with whichever key opened the message.
    const NEW_KEY: &str = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut";
    let w = Wxmp::start(&format!(
        "app_id = \"{SAMPLE_APP_ID}\"\nencoding_aes_key = \"{NEW_KEY}\"\n\
         previous_encoding_aes_key = \"{SAMPLE_KEY}\"\n"
    ));
    let new = wxmp::crypto::MsgCrypt::new(TOKEN, NEW_KEY, SAMPLE_APP_ID).unwrap();
    let old = sample_crypt();
    for (crypt, from) in [(&new, "oNew"), (&old, "oOld")] {
        for compatible in [false, true] {
            let (q, body) = safe_request(crypt, &text(from, "hi"), compatible);
            assert_sealed_text_reply(crypt, &reply_of(&w, &q, &body), from, DEFAULT_REPLY);
        }
    }
    // The answer to the old key's message is sealed with the old key, not the new one.
    let (q, body) = safe_request(&old, &text("oOld2", "hi"), false);
    let r = reply_of(&w, &q, &body);
    let sealed = wxmp::crypto::parse_encrypted_reply(&r.body).unwrap();
    assert!(new
        .verify_and_decrypt(
            &sealed.msg_signature,
            &sealed.timestamp,
            &sealed.nonce,
            &sealed.encrypt
        )
        .is_err());
    // A third key opens nothing: refused as before.
    let other = wxmp::crypto::MsgCrypt::new(
        TOKEN,
        "0123456789abcdefghijklmnopqrstuvwxyzABCDEFG",
        SAMPLE_APP_ID,
    )
    .unwrap();
    let (q, body) = safe_request(&other, &text("oOther", "hi"), false);
    let r = reply_of(&w, &q, &body);
    assert_eq!(r.status, 400, "{r:?}");
}

#[test]
fn a_previous_key_alone_or_malformed_stops_the_start_saying_which() {
    for (config, says) in [
        (
            format!("app_id = \"{SAMPLE_APP_ID}\"\nprevious_encoding_aes_key = \"{SAMPLE_KEY}\"\n"),
            "previous_encoding_aes_key is set but encoding_aes_key is not",
        ),
        (
            format!(
                "{}previous_encoding_aes_key = \"short\"\n",
                safe_mode_config()
            ),
            "previous_encoding_aes_key: bad EncodingAESKey",
        ),
    ] {
        let (code, all) = check(&config);
        assert_eq!(code, Some(1), "{all}");
        assert!(all.contains(says), "{all}");
        assert!(
            !all.contains("short\""),
            "the key's value reached the output: {all}"
        );
    }
}

/// `wxmp check`'s output (stdout and stderr) and exit code for a config with `extra` lines.
fn check(extra: &str) -> (Option<i32>, String) {
    let dir = config_dir("check-crypto", extra);
    let (code, out, err) = run_wxmp(&dir, &["check", "--config", "wxmp.toml"]);
    (code, out + &err)
}

#[test]
fn wxmp_check_says_which_encryption_is_set_up_and_never_a_key() {
    let previous = "previous_encoding_aes_key = \"ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut\"\n";
    for (extra, says) in [
        (
            String::new(),
            "  encryption: none (plain mode; compatible-mode messages answered in plain)\n",
        ),
        (
            safe_mode_config(),
            "  encryption: safe and compatible mode for app_id wx2c2769f8efd9abc2; plain POSTs \
             answered too\n",
        ),
        (
            format!("{}{previous}encrypted_only = true\n", safe_mode_config()),
            "  encryption: safe and compatible mode for app_id wx2c2769f8efd9abc2, the previous \
             key tried too; plain POSTs refused (encrypted_only)\n",
        ),
    ] {
        let (code, all) = check(&extra);
        assert_eq!(code, Some(0), "{all}");
        assert!(all.contains(says), "{all}");
        assert!(
            !all.contains("abcdefghij") && !all.contains("ZYXWVU"),
            "{all}"
        );
    }
}

#[test]
fn official_sample_decrypts_through_the_library() {
    let crypt = wxmp::crypto::MsgCrypt::new("spamtest", SAMPLE_KEY, SAMPLE_APP_ID).unwrap();
    let encrypt = "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=";
    let xml = crypt
        .verify_and_decrypt(
            "5d197aaffba7e9b25a30732f161a50dee96bd5fa",
            "1409735669",
            "1320562132",
            encrypt,
        )
        .unwrap();
    let m = wxmp::message::parse(&xml).unwrap();
    assert_eq!(
        m.kind,
        wxmp::message::Kind::Text {
            content: "abcdteT".into()
        }
    );
    assert_eq!(m.msg_id, Some(6054768590064713728));
}

#[test]
fn bad_key_refuses_to_start() {
    let dir = config_dir(
        "badkey",
        "app_id = \"wx1\"\nencoding_aes_key = \"tooShort\"",
    );
    for cmd in ["check", "serve"] {
        let out = wxmp_command()
            .args([cmd, "--config", "wxmp.toml"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("encoding_aes_key"),
            "{cmd}"
        );
    }
}

#[test]
fn the_environment_alone_turns_safe_mode_on() {
    let dir = config_dir("envsafe", "");
    let w = Wxmp::start_in(
        &dir,
        &["serve", "--config", "wxmp.toml"],
        &[
            ("WXMP_APP_ID", SAMPLE_APP_ID),
            ("WXMP_ENCODING_AES_KEY", SAMPLE_KEY),
        ],
    );
    let crypt = sample_crypt();
    let (q, body) = safe_request(&crypt, &text("oEnv", "hi"), false);
    let r = reply_of(&w, &q, &body);
    assert_eq!(r.status, 200, "{r:?}");
    assert_sealed_text_reply(&crypt, &r, "oEnv", DEFAULT_REPLY);
}
