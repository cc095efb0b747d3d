//! Property tests for `wxmp::crypto`: round trips hold for any text, and no input makes
//! decryption or XML extraction panic.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use proptest::prelude::*;
use wxmp::crypto::{extract_encrypt, parse_encrypted_reply, MsgCrypt};

const TOKEN: &str = "spamtest";
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const APPID: &str = "wx2c2769f8efd9abc2";

fn mc() -> MsgCrypt {
    MsgCrypt::new(TOKEN, KEY, APPID).expect("sample key is valid")
}

proptest! {
    #[test]
    fn decrypt_inverts_encrypt(xml in any::<String>()) {
        let m = mc();
        let ct = m.encrypt(&xml).unwrap();
        prop_assert_eq!(m.decrypt(&ct).unwrap(), xml);
    }

    #[test]
    fn decrypt_inverts_encrypt_with_prefix(xml in any::<String>(), prefix in any::<[u8; 16]>()) {
        let m = mc();
        prop_assert_eq!(m.decrypt(&m.encrypt_with_prefix(&xml, prefix)).unwrap(), xml);
    }

    #[test]
    fn encrypted_reply_round_trips(
        xml in any::<String>(),
        ts in any::<u64>(),
        nonce in "[0-9a-zA-Z\\]>]{1,20}",
    ) {
        let m = mc();
        let reply = m.encrypt_reply(&xml, ts, &nonce).unwrap();
        let r = parse_encrypted_reply(&reply).unwrap();
        prop_assert_eq!(&r.nonce, &nonce);
        prop_assert_eq!(&r.timestamp, &ts.to_string());
        prop_assert_eq!(extract_encrypt(&reply).unwrap(), r.encrypt.clone());
        let out = m
            .verify_and_decrypt(&r.msg_signature, &r.timestamp, &r.nonce, &r.encrypt)
            .unwrap();
        prop_assert_eq!(out, xml);
    }

    #[test]
    fn decrypt_never_panics_on_strings(s in any::<String>()) {
        let _ = mc().decrypt(&s);
    }

    #[test]
    fn decrypt_never_panics_on_base64_of_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = mc().decrypt(&STANDARD.encode(&bytes));
    }

    #[test]
    fn decrypt_never_panics_on_whole_blocks(blocks in proptest::collection::vec(any::<[u8; 16]>(), 1..12)) {
        let bytes: Vec<u8> = blocks.concat();
        let m = mc();
        let b64 = STANDARD.encode(&bytes);
        let _ = m.decrypt(&b64);
        let _ = m.verify_and_decrypt("0", "1", "2", &b64);
    }

    #[test]
    fn extract_encrypt_never_panics(s in any::<String>()) {
        let _ = extract_encrypt(&s);
        let _ = parse_encrypted_reply(&s);
    }

    #[test]
    fn extract_encrypt_never_panics_on_xmlish(inner in "[<>/!\\[\\]A-Za-z =\"&;#x0-9\\-]{0,80}") {
        let body = format!("<xml><Encrypt>{inner}</Encrypt></xml>");
        let _ = extract_encrypt(&body);
        let _ = extract_encrypt(&inner);
        let _ = parse_encrypted_reply(&body);
    }

    #[test]
    fn key_validation_never_panics(k in any::<String>()) {
        let _ = MsgCrypt::new(TOKEN, &k, APPID);
    }

    #[test]
    fn any_43_char_base64_key_is_accepted(k in "[A-Za-z0-9+/]{43}") {
        prop_assert!(MsgCrypt::new(TOKEN, &k, APPID).is_ok());
    }
}
