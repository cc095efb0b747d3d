//! Safe-mode decryption with a fixed key, AppID and token (those of WeChat's official sample).
//! The first byte picks the path, the rest is the input:
//!
//! - 0: the rest as an `Encrypt` value → `MsgCrypt::decrypt` (base64, length, AES, pad, ...).
//! - 1: the rest as a plaintext, encrypted here (cut to whole 16-byte blocks), so the fuzzer
//!   reaches the pad, header, length-field and AppID checks behind the AES layer.
//! - 2: the rest as the XML of a correctly framed message: decryption must give it back
//!   (or `Utf8` when it is not UTF-8).
//! - 3: the rest as a POST body → `extract_encrypt` → `decrypt`, and as an encrypted reply →
//!   `parse_encrypted_reply` → `verify_and_decrypt`.
//! - 4: the rest as `msg_signature\ntimestamp\nnonce\nEncrypt`: `verify_and_decrypt` with that
//!   signature, then with the correct one, which must get past the signature check.
//!
//! Whatever decrypts is also given to the message parser, as the server does.
#![no_main]

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use wxmp::crypto::{extract_encrypt, parse_encrypted_reply, CryptoError, MsgCrypt};

const TOKEN: &str = "spamtest";
const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const APPID: &str = "wx2c2769f8efd9abc2";

fn mc() -> &'static MsgCrypt {
    static M: OnceLock<MsgCrypt> = OnceLock::new();
    M.get_or_init(|| MsgCrypt::new(TOKEN, KEY, APPID).expect("sample key is valid"))
}

fn aes_key() -> [u8; 32] {
    use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
    // As WeChat (and wxmp) decode the key: `=` appended, trailing bits of the last character ignored.
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    let bytes = engine
        .decode(format!("{KEY}="))
        .expect("sample key decodes");
    bytes.try_into().expect("sample key is 32 bytes")
}

/// AES-256-CBC of whole blocks under the sample key, base64-encoded: what WeChat would send.
fn encrypt_blocks(mut plain: Vec<u8>) -> String {
    static KEY_BYTES: OnceLock<[u8; 32]> = OnceLock::new();
    let key = KEY_BYTES.get_or_init(aes_key);
    let mut iv = [0u8; 16];
    iv.copy_from_slice(&key[..16]);
    let mut enc = cbc::Encryptor::<aes::Aes256>::new(key.into(), &iv.into());
    for block in plain.chunks_exact_mut(16) {
        enc.encrypt_block_mut(GenericArray::from_mut_slice(block));
    }
    STANDARD.encode(plain)
}

fn opened(r: Result<String, CryptoError>) {
    if let Ok(xml) = r {
        let _ = wxmp::message::parse(&xml);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let m = mc();
    match mode % 5 {
        0 => opened(m.decrypt(&String::from_utf8_lossy(rest))),
        1 => {
            let whole = rest.len() / 16 * 16;
            if whole > 0 {
                opened(m.decrypt(&encrypt_blocks(rest[..whole].to_vec())));
            }
        }
        2 => {
            let Ok(len) = u32::try_from(rest.len()) else {
                return;
            };
            let mut plain = b"0123456789abcdef".to_vec();
            plain.extend_from_slice(&len.to_be_bytes());
            plain.extend_from_slice(rest);
            plain.extend_from_slice(APPID.as_bytes());
            let pad = 32 - plain.len() % 32;
            plain.resize(plain.len() + pad, pad as u8);
            let got = m.decrypt(&encrypt_blocks(plain));
            match std::str::from_utf8(rest) {
                Ok(xml) => assert_eq!(got.as_deref(), Ok(xml), "a well-framed message"),
                Err(_) => assert_eq!(got, Err(CryptoError::Utf8)),
            }
            opened(got);
        }
        3 => {
            let body = String::from_utf8_lossy(rest);
            if let Ok(encrypt) = extract_encrypt(&body) {
                opened(m.decrypt(&encrypt));
            }
            if let Ok(r) = parse_encrypted_reply(&body) {
                opened(m.verify_and_decrypt(&r.msg_signature, &r.timestamp, &r.nonce, &r.encrypt));
            }
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            let mut parts = text.splitn(4, '\n');
            let sig = parts.next().unwrap_or_default();
            let ts = parts.next().unwrap_or_default();
            let nonce = parts.next().unwrap_or_default();
            let encrypt = parts.next().unwrap_or_default();
            opened(m.verify_and_decrypt(sig, ts, nonce, encrypt));
            let good = wxmp::signature::sign(&[TOKEN, ts, nonce, encrypt]);
            let r = m.verify_and_decrypt(&good, ts, nonce, encrypt);
            assert_ne!(
                r,
                Err(CryptoError::Signature),
                "the correct signature is refused"
            );
            opened(r);
        }
    }
});
