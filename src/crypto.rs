//! WeChat safe-mode (and compatible-mode) message crypto: AES-256-CBC with WeChat's framing.
//!
//! The admin configures a 43-character `EncodingAESKey`; `base64(key + "=")` gives the 32-byte
//! AES key and its first 16 bytes are the IV. A message is framed as
//! `random(16) ‖ u32 big-endian xml length ‖ xml ‖ AppID`, padded PKCS#7-style to a **32-byte**
//! block (pad value 1..=32), encrypted without cipher-level padding and base64-encoded into the
//! `Encrypt` element. `msg_signature` is the usual WeChat SHA-1 signature over
//! `[token, timestamp, nonce, Encrypt]` (see [`crate::signature`]).
//!
//! Nothing here panics on any input, and neither the key nor the token is ever written into an
//! error or a `Debug` string.

use std::fmt;

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

use crate::signature;

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// AES block size in bytes; the ciphertext is always a non-zero multiple of it.
const AES_BLOCK: usize = 16;
/// WeChat's PKCS#7 block size (not the AES block size): pad values are 1..=32.
const PAD_BLOCK: usize = 32;
/// Bytes before the XML in a decrypted message: 16 random bytes and a 4-byte length.
const HEADER_LEN: usize = 20;
/// How much of a wrong AppID found in a message is kept for the error message.
const MAX_FOUND_APPID: usize = 64;

/// Decodes the `EncodingAESKey` (with `=` appended): standard alphabet, canonical padding, and
/// lenient about the non-zero trailing bits that real keys usually have in their last character.
const KEY_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Decodes an `Encrypt` value: standard alphabet; `=` padding may be present or not.
const ENCRYPT_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Everything that can go wrong in safe-mode crypto. Each `Display` message says what is wrong
/// and, where it can, what to fix. No variant ever contains the key or the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// The configured `EncodingAESKey` is unusable; the text says why and how to fix it.
    BadKey(String),
    /// The token or AppID given to [`MsgCrypt::new`] is unusable; the text says why.
    BadConfig(String),
    /// The `Encrypt` value is not valid base64.
    Base64,
    /// The ciphertext is empty or not a multiple of 16 bytes long.
    Length,
    /// The decrypted data does not end in a valid 32-byte-block PKCS#7 pad.
    Padding,
    /// The decrypted data is shorter than its 20-byte header (16 random bytes + 4-byte length).
    TooShort,
    /// The 4-byte length field claims more XML than the decrypted data holds.
    LengthField,
    /// The AppID at the end of the decrypted data is not the configured one.
    AppIdMismatch {
        /// The AppID this server is configured with.
        expected: String,
        /// What the message carried (lossily decoded, cut to 64 bytes).
        found: String,
    },
    /// The decrypted XML is not valid UTF-8.
    Utf8,
    /// `msg_signature` does not match token, timestamp, nonce and `Encrypt`.
    Signature,
    /// The XML around the encrypted payload is malformed or lacks a required element.
    Xml(String),
    /// The message is too long for WeChat's 32-bit length field.
    TooLong,
    /// The operating system's random number generator failed.
    Random(String),
}

impl fmt::Display for CryptoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CryptoError::BadKey(why) => write!(f, "bad EncodingAESKey: {why}"),
            CryptoError::BadConfig(why) => write!(f, "bad safe-mode configuration: {why}"),
            CryptoError::Base64 => f.write_str("the Encrypt value is not valid base64"),
            CryptoError::Length => f.write_str(
                "the Encrypt value does not decode to a non-empty multiple of 16 bytes \
                 (truncated or not a WeChat ciphertext)",
            ),
            CryptoError::Padding => f.write_str(
                "decrypted data has an invalid PKCS#7 pad (most likely the EncodingAESKey does \
                 not match the one in the WeChat admin console, or the ciphertext was altered)",
            ),
            CryptoError::TooShort => f.write_str(
                "decrypted data is shorter than the 20-byte header (16 random bytes + length)",
            ),
            CryptoError::LengthField => f.write_str(
                "the length field in the decrypted data is larger than the data that follows it \
                 (wrong EncodingAESKey or altered ciphertext)",
            ),
            CryptoError::AppIdMismatch { expected, found } => write!(
                f,
                "the message is for AppID {found:?} but this server is configured with AppID \
                 {expected:?}; set the AppID shown in the WeChat admin console"
            ),
            CryptoError::Utf8 => f.write_str("the decrypted XML is not valid UTF-8"),
            CryptoError::Signature => f.write_str(
                "msg_signature does not match token, timestamp, nonce and Encrypt (wrong token \
                 configured, or the request did not come from WeChat)",
            ),
            CryptoError::Xml(why) => write!(f, "bad safe-mode XML: {why}"),
            CryptoError::TooLong => {
                f.write_str("the message is longer than WeChat's 32-bit length field allows")
            }
            CryptoError::Random(why) => {
                write!(f, "the system random number generator failed: {why}")
            }
        }
    }
}

impl std::error::Error for CryptoError {}

/// The safe-mode crypto context of one Official Account: AES key, AppID and token.
///
/// Build it once from the configuration with [`MsgCrypt::new`] and share it; all methods take
/// `&self`. Its `Debug` output shows the AppID only.
#[derive(Clone)]
pub struct MsgCrypt {
    key: [u8; 32],
    app_id: String,
    token: String,
}

impl fmt::Debug for MsgCrypt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsgCrypt")
            .field("key", &"<redacted>")
            .field("app_id", &self.app_id)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// The parts of an encrypted reply (`<xml><Encrypt/><MsgSignature/><TimeStamp/><Nonce/></xml>`),
/// as read by [`parse_encrypted_reply`]. Pass them to [`MsgCrypt::verify_and_decrypt`] to check
/// and open the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedReply {
    /// The base64 ciphertext (`Encrypt`).
    pub encrypt: String,
    /// The SHA-1 signature over token, timestamp, nonce and `Encrypt` (`MsgSignature`).
    pub msg_signature: String,
    /// The reply's timestamp exactly as written (`TimeStamp`), since the signature covers its text.
    pub timestamp: String,
    /// The reply's nonce (`Nonce`), not trimmed.
    pub nonce: String,
}

impl MsgCrypt {
    /// Creates the crypto context from the admin-console settings.
    ///
    /// The `EncodingAESKey` must be exactly 43 characters of the standard base64 alphabet
    /// (`A–Z a–z 0–9 + /`) that decode, with `=` appended, to 32 bytes; non-zero trailing bits
    /// in the last character are accepted, as WeChat's own keys have them. Anything else is
    /// [`CryptoError::BadKey`] with a message saying what to fix (the key itself is never
    /// echoed). An empty token or AppID is [`CryptoError::BadConfig`].
    pub fn new(token: &str, encoding_aes_key: &str, app_id: &str) -> Result<Self, CryptoError> {
        if token.is_empty() {
            return Err(CryptoError::BadConfig(
                "the token is empty; set the Token from the WeChat admin console".into(),
            ));
        }
        if app_id.is_empty() {
            return Err(CryptoError::BadConfig(
                "the AppID is empty; set the AppID from the WeChat admin console".into(),
            ));
        }
        let key = decode_key(encoding_aes_key)?;
        Ok(MsgCrypt {
            key,
            app_id: app_id.to_owned(),
            token: token.to_owned(),
        })
    }

    /// The AppID this context encrypts for and expects in decrypted messages.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// Decrypts a base64 `Encrypt` value and returns the inner XML.
    ///
    /// Checks, in order: base64, ciphertext length (non-zero multiple of 16), the 32-byte-block
    /// PKCS#7 pad (value 1..=32, all pad bytes equal), the 20-byte header, the length field, and
    /// that the trailing AppID equals the configured one; then that the XML is UTF-8. This does
    /// **not** check `msg_signature`: use [`MsgCrypt::verify_and_decrypt`] for requests.
    pub fn decrypt(&self, encrypt_b64: &str) -> Result<String, CryptoError> {
        let mut data = ENCRYPT_ENGINE
            .decode(encrypt_b64.as_bytes())
            .map_err(|_| CryptoError::Base64)?;
        if data.is_empty() || data.len() % AES_BLOCK != 0 {
            return Err(CryptoError::Length);
        }
        let mut dec = Aes256CbcDec::new(&self.key.into(), &self.iv().into());
        for block in data.chunks_exact_mut(AES_BLOCK) {
            dec.decrypt_block_mut(GenericArray::from_mut_slice(block));
        }

        let unpadded = strip_pad(&data)?;
        let (header, body) = unpadded
            .split_at_checked(HEADER_LEN)
            .ok_or(CryptoError::TooShort)?;
        let len_bytes: [u8; 4] = header
            .get(16..HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(CryptoError::TooShort)?;
        let xml_len =
            usize::try_from(u32::from_be_bytes(len_bytes)).map_err(|_| CryptoError::LengthField)?;
        let (xml, tail) = body
            .split_at_checked(xml_len)
            .ok_or(CryptoError::LengthField)?;
        if tail != self.app_id.as_bytes() {
            let shown = tail.get(..MAX_FOUND_APPID).unwrap_or(tail);
            return Err(CryptoError::AppIdMismatch {
                expected: self.app_id.clone(),
                found: String::from_utf8_lossy(shown).into_owned(),
            });
        }
        // The XML is bytes HEADER_LEN.. of the buffer: keep them in place rather than copy.
        let xml_end = HEADER_LEN + xml.len();
        data.truncate(xml_end);
        data.drain(..HEADER_LEN);
        String::from_utf8(data).map_err(|_| CryptoError::Utf8)
    }

    /// Encrypts `xml` for WeChat with a fresh 16-byte prefix from the OS random number
    /// generator, returning the base64 `Encrypt` value.
    ///
    /// Fails only if the OS random number generator fails or `xml` is 4 GiB or longer.
    pub fn encrypt(&self, xml: &str) -> Result<String, CryptoError> {
        self.encrypt_checked(xml, os_random()?)
    }

    /// [`MsgCrypt::encrypt_with_prefix`] for an `xml` that fits WeChat's 32-bit length field.
    fn encrypt_checked(&self, xml: &str, random: [u8; 16]) -> Result<String, CryptoError> {
        if u32::try_from(xml.len()).is_err() {
            return Err(CryptoError::TooLong);
        }
        Ok(self.encrypt_with_prefix(xml, random))
    }

    /// Like [`MsgCrypt::encrypt`] but with a caller-given 16-byte prefix, so the output is
    /// deterministic: for tests and known-answer vectors only; real replies need a random prefix.
    ///
    /// `xml` must be shorter than 4 GiB (WeChat's length field is 32 bits); a longer `xml` gets a
    /// saturated length field and will not decrypt. [`MsgCrypt::encrypt`] rejects it instead.
    pub fn encrypt_with_prefix(&self, xml: &str, random: [u8; 16]) -> String {
        let xml = xml.as_bytes();
        let xml_len = u32::try_from(xml.len()).unwrap_or(u32::MAX);
        let unpadded = HEADER_LEN + xml.len() + self.app_id.len();
        let pad = PAD_BLOCK - unpadded % PAD_BLOCK; // 1..=32
        let mut data = Vec::with_capacity(unpadded + pad);
        data.extend_from_slice(&random);
        data.extend_from_slice(&xml_len.to_be_bytes());
        data.extend_from_slice(xml);
        data.extend_from_slice(self.app_id.as_bytes());
        // pad <= 32, so the cast is lossless.
        data.resize(unpadded + pad, pad as u8);
        STANDARD.encode(self.encrypt_raw(data))
    }

    /// Checks `msg_signature` over `(token, timestamp, nonce, encrypt)` in constant time, then
    /// decrypts `encrypt` as [`MsgCrypt::decrypt`] does. A bad signature is
    /// [`CryptoError::Signature`] and nothing is decrypted.
    pub fn verify_and_decrypt(
        &self,
        msg_signature: &str,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
    ) -> Result<String, CryptoError> {
        if !signature::verify_msg(&self.token, timestamp, nonce, encrypt, msg_signature) {
            return Err(CryptoError::Signature);
        }
        self.decrypt(encrypt)
    }

    /// Builds the complete encrypted passive reply:
    /// `<xml><Encrypt><![CDATA[…]]></Encrypt><MsgSignature><![CDATA[…]]></MsgSignature><TimeStamp>…</TimeStamp><Nonce><![CDATA[…]]></Nonce></xml>`,
    /// with `reply_xml` encrypted under a fresh random prefix and `MsgSignature` computed over
    /// the token, this `timestamp` and `nonce` (use [`random_nonce`] or the request's nonce).
    ///
    /// Fails if the random number generator fails, `reply_xml` is too long, or `nonce` is empty
    /// or contains a character that cannot appear in XML ([`CryptoError::Xml`]).
    pub fn encrypt_reply(
        &self,
        reply_xml: &str,
        timestamp: u64,
        nonce: &str,
    ) -> Result<String, CryptoError> {
        if nonce.is_empty() {
            return Err(CryptoError::Xml("the reply nonce is empty".into()));
        }
        if let Some(c) = nonce.chars().find(|&c| !is_xml_char(c)) {
            return Err(CryptoError::Xml(format!(
                "the reply nonce contains {c:?}, which XML cannot carry"
            )));
        }
        let encrypt = self.encrypt(reply_xml)?;
        Ok(self.reply_envelope(&encrypt, timestamp, nonce))
    }

    /// [`MsgCrypt::encrypt_reply`] with a fresh random nonce: the server's way to seal a
    /// passive reply. The 16-byte prefix and the nonce are one draw of 24 bytes from the OS
    /// random number generator, by way of this thread's batch ([`crate::random`]): a system
    /// call every ~21 replies instead of one a reply.
    pub fn seal_reply(&self, reply_xml: &str, timestamp: u64) -> Result<String, CryptoError> {
        let random: [u8; 24] = os_random()?;
        let (mut prefix, mut nonce) = ([0u8; 16], [0u8; 8]);
        prefix.copy_from_slice(&random[..16]);
        nonce.copy_from_slice(&random[16..]);
        let encrypt = self.encrypt_checked(reply_xml, prefix)?;
        let nonce = nonce_digits(u64::from_le_bytes(nonce));
        Ok(self.reply_envelope(&encrypt, timestamp, &nonce))
    }

    /// The passive-reply XML around an `Encrypt` value, signed; `nonce` is valid XML text.
    fn reply_envelope(&self, encrypt: &str, timestamp: u64, nonce: &str) -> String {
        let timestamp = timestamp.to_string();
        let msg_signature = signature::sign(&[&self.token, &timestamp, nonce, encrypt]);
        // Sized up front (the markup is ~170 bytes): this is written for every sealed reply.
        let mut xml = String::with_capacity(encrypt.len() + nonce.len() + 200);
        // `encrypt` is base64: it cannot contain `]]>`.
        xml.push_str("<xml><Encrypt><![CDATA[");
        xml.push_str(encrypt);
        xml.push_str("]]></Encrypt><MsgSignature><![CDATA[");
        xml.push_str(&msg_signature);
        xml.push_str("]]></MsgSignature><TimeStamp>");
        xml.push_str(&timestamp);
        xml.push_str("</TimeStamp><Nonce>");
        crate::reply::push_cdata(&mut xml, nonce);
        xml.push_str("</Nonce></xml>");
        xml
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.key[..16]);
        iv
    }

    /// AES-256-CBC without padding; `data.len()` must be a multiple of 16 (a trailing partial
    /// block would be left unencrypted, so callers pad first).
    fn encrypt_raw(&self, mut data: Vec<u8>) -> Vec<u8> {
        debug_assert_eq!(data.len() % AES_BLOCK, 0);
        let mut enc = Aes256CbcEnc::new(&self.key.into(), &self.iv().into());
        for block in data.chunks_exact_mut(AES_BLOCK) {
            enc.encrypt_block_mut(GenericArray::from_mut_slice(block));
        }
        data
    }
}

/// Validates and decodes an `EncodingAESKey` into the 32-byte AES key.
fn decode_key(encoding_aes_key: &str) -> Result<[u8; 32], CryptoError> {
    const FIX: &str = "copy the EncodingAESKey again from the WeChat admin console \
                       (Settings and Development → Basic Configuration)";
    let chars = encoding_aes_key.chars().count();
    if chars != 43 {
        let hint = if encoding_aes_key.trim() != encoding_aes_key {
            "; remove the surrounding whitespace"
        } else if chars == 44 && encoding_aes_key.ends_with('=') {
            "; remove the trailing '=' (wxmp appends it itself)"
        } else {
            ""
        };
        return Err(CryptoError::BadKey(format!(
            "it must be exactly 43 characters, but it has {chars}{hint}; {FIX}"
        )));
    }
    if let Some(pos) = encoding_aes_key
        .chars()
        .position(|c| !(c.is_ascii_alphanumeric() || c == '+' || c == '/'))
    {
        return Err(CryptoError::BadKey(format!(
            "character {} is not one of A-Z a-z 0-9 + /; {FIX}",
            pos + 1
        )));
    }
    let mut padded = String::with_capacity(44);
    padded.push_str(encoding_aes_key);
    padded.push('=');
    let bytes = KEY_ENGINE
        .decode(padded.as_bytes())
        .map_err(|_| CryptoError::BadKey(format!("it is not valid base64; {FIX}")))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        CryptoError::BadKey(format!(
            "it decodes to {} bytes instead of 32; {FIX}",
            bytes.len()
        ))
    })
}

/// Removes WeChat's 32-byte-block PKCS#7 pad: the last byte `n` must be 1..=32, no larger
/// than the data, and the last `n` bytes must all equal `n`.
fn strip_pad(data: &[u8]) -> Result<&[u8], CryptoError> {
    let &last = data.last().ok_or(CryptoError::Padding)?;
    let n = usize::from(last);
    if n == 0 || n > PAD_BLOCK || n > data.len() {
        return Err(CryptoError::Padding);
    }
    let (content, pad) = data.split_at(data.len() - n);
    if pad.iter().any(|&b| b != last) {
        return Err(CryptoError::Padding);
    }
    Ok(content)
}

/// Whether `c` may appear in an XML 1.0 document.
fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// `N` bytes from the OS random number generator ([`crate::random`]'s batches).
fn os_random<const N: usize>() -> Result<[u8; N], CryptoError> {
    crate::random::bytes().map_err(|e| CryptoError::Random(e.to_string()))
}

/// Parses `xml` with roxmltree (which rejects DTDs by default), after the same guards as a
/// message: no namespace declarations, few attributes ([`crate::message::check_markup`]), at
/// most [`crate::message::MAX_NODES`] nodes. This runs before `msg_signature` is checked.
fn parse_xml(xml: &str) -> Result<roxmltree::Document<'_>, CryptoError> {
    crate::message::check_markup(xml).map_err(|e| CryptoError::Xml(e.to_string()))?;
    let options = roxmltree::ParsingOptions {
        nodes_limit: crate::message::MAX_NODES,
        ..roxmltree::ParsingOptions::default()
    };
    roxmltree::Document::parse_with_options(xml, options)
        .map_err(|e| CryptoError::Xml(e.to_string()))
}

/// The text of the one direct child `<name>` of the root element (all its text and CDATA
/// concatenated, optionally trimmed); an error names a missing, repeated or empty element.
fn root_child_text(
    doc: &roxmltree::Document,
    name: &str,
    trim: bool,
) -> Result<String, CryptoError> {
    let mut matches = doc
        .root_element()
        .children()
        .filter(|n| n.is_element() && n.tag_name().name() == name);
    let node = matches
        .next()
        .ok_or_else(|| CryptoError::Xml(format!("no <{name}> element")))?;
    if matches.next().is_some() {
        return Err(CryptoError::Xml(format!("more than one <{name}> element")));
    }
    let mut text: String = node
        .descendants()
        .filter(|d| d.is_text())
        .filter_map(|d| d.text())
        .collect();
    if trim {
        text = text.trim().to_owned();
    }
    if text.is_empty() {
        return Err(CryptoError::Xml(format!("the <{name}> element is empty")));
    }
    Ok(text)
}

/// Extracts the `Encrypt` value from a safe-mode or compatible-mode POST body (a direct child of
/// the root `<xml>` element; surrounding whitespace trimmed). The XML is parsed with roxmltree,
/// which rejects DTDs. A missing, repeated or empty `Encrypt`, or malformed XML, is
/// [`CryptoError::Xml`].
pub fn extract_encrypt(body: &str) -> Result<String, CryptoError> {
    let doc = parse_xml(body)?;
    root_child_text(&doc, "Encrypt", true)
}

/// Parses an encrypted reply as built by [`MsgCrypt::encrypt_reply`] (or by WeChat-style code):
/// `Encrypt`, `MsgSignature`, `TimeStamp` and `Nonce`, all required. For test helpers and the
/// `wxmp send` simulator, which then call [`MsgCrypt::verify_and_decrypt`].
pub fn parse_encrypted_reply(xml: &str) -> Result<EncryptedReply, CryptoError> {
    let doc = parse_xml(xml)?;
    Ok(EncryptedReply {
        encrypt: root_child_text(&doc, "Encrypt", true)?,
        msg_signature: root_child_text(&doc, "MsgSignature", true)?,
        timestamp: root_child_text(&doc, "TimeStamp", true)?,
        nonce: root_child_text(&doc, "Nonce", false)?,
    })
}

/// A fresh random 10-digit decimal nonce for encrypted replies (WeChat's nonces look the same).
///
/// Nonces need to be unpredictable-ish, not secret: if the OS random number generator fails, the
/// clock and a counter are used instead, so this never fails.
pub fn random_nonce() -> String {
    let mut bytes = [0u8; 8];
    let n = match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => fallback_random(),
    };
    nonce_digits(n)
}

/// Ten decimal digits of `n`, WeChat's nonce shape.
fn nonce_digits(n: u64) -> String {
    format!("{:010}", n % 10_000_000_000)
}

fn fallback_random() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    // splitmix64 finaliser over the mix, so consecutive calls look unrelated.
    let mut z = nanos ^ count.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "spamtest";
    const KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    const APPID: &str = "wx2c2769f8efd9abc2";
    const SAMPLE_TS: &str = "1409735669";
    const SAMPLE_NONCE: &str = "1320562132";
    const SAMPLE_SIG: &str = "5d197aaffba7e9b25a30732f161a50dee96bd5fa";
    const SAMPLE_ENCRYPT: &str = "hyzAe4OzmOMbd6TvGdIOO6uBmdJoD0Fk53REIHvxYtJlE2B655HuD0m8KUePWB3+LrPXo87wzQ1QLvbeUgmBM4x6F8PGHQHFVAFmOD2LdJF9FrXpbUAh0B5GIItb52sn896wVsMSHGuPE328HnRGBcrS7C41IzDWyWNlZkyyXwon8T332jisa+h6tEDYsVticbSnyU8dKOIbgU6ux5VTjg3yt+WGzjlpKn6NPhRjpA912xMezR4kw6KWwMrCVKSVCZciVGCgavjIQ6X8tCOp3yZbGpy0VxpAe+77TszTfRd5RJSVO/HTnifJpXgCSUdUue1v6h0EIBYYI1BD1DlD+C0CR8e6OewpusjZ4uBl9FyJvnhvQl+q5rv1ixrcpCumEPo5MJSgM9ehVsNPfUM669WuMyVWQLCzpu9GhglF2PE=";
    const PREFIX: [u8; 16] = *b"0123456789abcdef";

    fn mc() -> MsgCrypt {
        MsgCrypt::new(TOKEN, KEY, APPID).expect("sample key is valid")
    }

    /// Encrypts a hand-built plaintext (already a multiple of 16 bytes) and base64-encodes it,
    /// to make ciphertexts with deliberately broken framing.
    fn raw(plaintext: Vec<u8>) -> String {
        assert_eq!(plaintext.len() % 16, 0);
        STANDARD.encode(mc().encrypt_raw(plaintext))
    }

    /// A well-formed framed plaintext for `xml` with a custom tail instead of the AppID, padded
    /// with `pad_len` bytes of value `pad_val`.
    fn framed(xml: &[u8], tail: &[u8], len_field: u32, pad_val: u8, pad_len: usize) -> Vec<u8> {
        let mut p = PREFIX.to_vec();
        p.extend_from_slice(&len_field.to_be_bytes());
        p.extend_from_slice(xml);
        p.extend_from_slice(tail);
        p.extend(std::iter::repeat_n(pad_val, pad_len));
        p
    }

    #[test]
    fn official_sample_verifies_and_decrypts() {
        let xml = mc()
            .verify_and_decrypt(SAMPLE_SIG, SAMPLE_TS, SAMPLE_NONCE, SAMPLE_ENCRYPT)
            .unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let field = |name: &str| {
            doc.root_element()
                .children()
                .find(|n| n.has_tag_name(name))
                .and_then(|n| n.text())
                .map(str::to_owned)
        };
        assert_eq!(field("Content").as_deref(), Some("abcdteT"));
        assert_eq!(field("MsgId").as_deref(), Some("6054768590064713728"));
        assert_eq!(field("MsgType").as_deref(), Some("text"));
    }

    #[test]
    fn official_sample_body_extracts() {
        let body = format!(
            "<xml><ToUserName><![CDATA[gh_abc]]></ToUserName>\n\
             <Encrypt><![CDATA[{SAMPLE_ENCRYPT}]]></Encrypt></xml>"
        );
        assert_eq!(extract_encrypt(&body).unwrap(), SAMPLE_ENCRYPT);
    }

    // Known-answer vectors, derived independently of this code with Python's `cryptography`
    // package (48.0.0): key = base64.b64decode(KEY + "=") (Python ignores the trailing bits),
    // iv = key[:16], plaintext = b"0123456789abcdef" + struct.pack(">I", len(xml)) + xml +
    // b"wx2c2769f8efd9abc2", then 32-byte PKCS#7 (pad = 32 - len % 32), AES-256-CBC via
    // Cipher(algorithms.AES(key), modes.CBC(iv)), base64.b64encode. The first vector was
    // cross-checked with `openssl enc -aes-256-cbc -nopad -K <key hex> -iv <iv hex>`.
    // Key hex: 69b71d79f8218a39259a7a29aabb2dbafc31cb3d35db7e39ebbf3d0010831051.
    const KAT_SHORT_XML: &str = "<xml>hi</xml>"; // 13 bytes → 51 → pad 13 → 64
    const KAT_SHORT: &str =
        "Q3stYC6hdFzMh9T8HCvyDAY2hI8bwuk958peC5QFmomHmWcn4A3A99mmrZLc2GTzRrlDVsJyWO4bAoBxP0f5og==";
    const KAT_ALIGNED_XML: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxx"; // 26 bytes → 64 → full 32-byte pad
    const KAT_ALIGNED: &str = "Q3stYC6hdFzMh9T8HCvyDHDxbrF7f8TfmYxXSN1y2Vbjja9RgRLcXPjzJF67v90VqCI+oP5AvFesm/TURLI/KnnssYnLjpENg6/duBVJqNyjkC8Cg82uz8tPptv2yfPm";

    #[test]
    fn known_answer_vectors() {
        let m = mc();
        assert_eq!(m.encrypt_with_prefix(KAT_SHORT_XML, PREFIX), KAT_SHORT);
        assert_eq!(m.decrypt(KAT_SHORT).unwrap(), KAT_SHORT_XML);
        assert_eq!(m.encrypt_with_prefix(KAT_ALIGNED_XML, PREFIX), KAT_ALIGNED);
        assert_eq!(m.decrypt(KAT_ALIGNED).unwrap(), KAT_ALIGNED_XML);
    }

    #[test]
    fn full_32_byte_pad_round_trip() {
        let m = mc();
        // 20 header + 26 xml + 18 appid = 64: already aligned, so a whole block of 32 × 0x20.
        let ct = STANDARD
            .decode(m.encrypt_with_prefix(KAT_ALIGNED_XML, PREFIX))
            .unwrap();
        assert_eq!(ct.len(), 96);
        let mut plain = ct.clone();
        let mut dec = Aes256CbcDec::new(&m.key.into(), &m.iv().into());
        for b in plain.chunks_exact_mut(16) {
            dec.decrypt_block_mut(GenericArray::from_mut_slice(b));
        }
        assert!(plain[64..].iter().all(|&b| b == 32));
        // And through the random-prefix path, for every length near the boundary.
        for n in 0..70 {
            let xml = "y".repeat(n);
            assert_eq!(m.decrypt(&m.encrypt(&xml).unwrap()).unwrap(), xml);
        }
    }

    #[test]
    fn round_trips() {
        let m = mc();
        let long: String = "长".repeat(500) + &"a".repeat(1000); // 1500 characters
        assert_eq!(long.chars().count(), 1500);
        for xml in [
            "",
            "<xml><Content><![CDATA[你好，世界]]></Content></xml>",
            "<xml><Content><![CDATA[a]]]]><![CDATA[>b]]></Content></xml>",
            "]]>",
            long.as_str(),
            "<xml><Content><![CDATA[😀👍🏽🇨🇳]]></Content></xml>",
        ] {
            let ct = m.encrypt(xml).unwrap();
            assert_eq!(m.decrypt(&ct).unwrap(), xml);
        }
    }

    #[test]
    fn encrypt_uses_a_fresh_prefix() {
        let m = mc();
        assert_ne!(m.encrypt("<xml/>").unwrap(), m.encrypt("<xml/>").unwrap());
    }

    #[test]
    fn encrypted_reply_round_trip() {
        let m = mc();
        let reply = "<xml><Content><![CDATA[回复]]></Content></xml>";
        let xml = m.encrypt_reply(reply, 1409735670, "987654321").unwrap();
        assert!(xml.starts_with("<xml><Encrypt><![CDATA["));
        let r = parse_encrypted_reply(&xml).unwrap();
        assert_eq!(r.timestamp, "1409735670");
        assert_eq!(r.nonce, "987654321");
        // The exact envelope WeChat's samples show, field for field.
        assert_eq!(
            xml,
            format!(
                "<xml><Encrypt><![CDATA[{}]]></Encrypt><MsgSignature><![CDATA[{}]]></MsgSignature>\
                 <TimeStamp>1409735670</TimeStamp><Nonce><![CDATA[987654321]]></Nonce></xml>",
                r.encrypt, r.msg_signature
            )
        );
        assert_eq!(
            r.msg_signature,
            signature::sign(&[TOKEN, "1409735670", "987654321", &r.encrypt])
        );
        let out = m
            .verify_and_decrypt(&r.msg_signature, &r.timestamp, &r.nonce, &r.encrypt)
            .unwrap();
        assert_eq!(out, reply);
        assert_eq!(extract_encrypt(&xml).unwrap(), r.encrypt);
    }

    #[test]
    fn sealed_reply_has_a_fresh_ten_digit_nonce_and_opens() {
        let m = mc();
        let reply = "<xml><Content><![CDATA[回复]]></Content></xml>";
        let a = parse_encrypted_reply(&m.seal_reply(reply, 1409735670).unwrap()).unwrap();
        let b = parse_encrypted_reply(&m.seal_reply(reply, 1409735670).unwrap()).unwrap();
        for r in [&a, &b] {
            assert_eq!(r.timestamp, "1409735670");
            assert_eq!(r.nonce.len(), 10);
            assert!(r.nonce.bytes().all(|c| c.is_ascii_digit()), "{}", r.nonce);
            let out = m
                .verify_and_decrypt(&r.msg_signature, &r.timestamp, &r.nonce, &r.encrypt)
                .unwrap();
            assert_eq!(out, reply);
        }
        // A fresh prefix and nonce each time (a repeat of either is a 2^-128 / 10^-10 event).
        assert_ne!(a.encrypt, b.encrypt);
        assert_ne!(a.nonce, b.nonce);
    }

    #[test]
    fn encrypted_reply_nonce_is_escaped_or_refused() {
        let m = mc();
        let xml = m.encrypt_reply("<xml/>", 1, "a]]>b").unwrap();
        let r = parse_encrypted_reply(&xml).unwrap();
        assert_eq!(r.nonce, "a]]>b");
        assert!(m
            .verify_and_decrypt(&r.msg_signature, &r.timestamp, &r.nonce, &r.encrypt)
            .is_ok());
        for bad in ["a\u{1}b", ""] {
            assert!(matches!(
                m.encrypt_reply("<xml/>", 1, bad),
                Err(CryptoError::Xml(_))
            ));
        }
    }

    #[test]
    fn wrong_signature_is_refused() {
        let m = mc();
        let mut bad = SAMPLE_SIG.to_owned();
        bad.replace_range(0..1, "6");
        for (sig, ts, nonce) in [
            (bad.as_str(), SAMPLE_TS, SAMPLE_NONCE),
            ("", SAMPLE_TS, SAMPLE_NONCE),
            (SAMPLE_SIG, "1409735670", SAMPLE_NONCE),
            (SAMPLE_SIG, SAMPLE_TS, "1320562133"),
        ] {
            assert_eq!(
                m.verify_and_decrypt(sig, ts, nonce, SAMPLE_ENCRYPT),
                Err(CryptoError::Signature)
            );
        }
        let other_token = MsgCrypt::new("other", KEY, APPID).unwrap();
        assert_eq!(
            other_token.verify_and_decrypt(SAMPLE_SIG, SAMPLE_TS, SAMPLE_NONCE, SAMPLE_ENCRYPT),
            Err(CryptoError::Signature)
        );
    }

    #[test]
    fn tampered_ciphertext_is_refused() {
        let m = mc();
        let ct = STANDARD.decode(SAMPLE_ENCRYPT).unwrap();
        let original = m.decrypt(SAMPLE_ENCRYPT).unwrap();
        // A flip in the last block garbles the pad and AppID: always an error.
        let mut last = ct.clone();
        let n = last.len();
        last[n - 1] ^= 0x01;
        assert!(m.decrypt(&STANDARD.encode(&last)).is_err());
        // Any single flip anywhere: never a panic, never the original message, and always a
        // signature error once msg_signature is checked.
        for i in 0..ct.len() {
            let mut t = ct.clone();
            t[i] ^= 0x80;
            let b64 = STANDARD.encode(&t);
            assert_ne!(m.decrypt(&b64).ok().as_deref(), Some(original.as_str()));
            assert_eq!(
                m.verify_and_decrypt(SAMPLE_SIG, SAMPLE_TS, SAMPLE_NONCE, &b64),
                Err(CryptoError::Signature)
            );
        }
    }

    #[test]
    fn wrong_appid_is_refused() {
        let m = MsgCrypt::new(TOKEN, KEY, "wx0000000000000000").unwrap();
        assert_eq!(
            m.decrypt(SAMPLE_ENCRYPT),
            Err(CryptoError::AppIdMismatch {
                expected: "wx0000000000000000".into(),
                found: APPID.into(),
            })
        );
        // A prefix of the right AppID is not enough either.
        let short = MsgCrypt::new(TOKEN, KEY, "wx2c2769f8efd9abc").unwrap();
        assert!(matches!(
            short.decrypt(SAMPLE_ENCRYPT),
            Err(CryptoError::AppIdMismatch { .. })
        ));
        // The found AppID shown in the error is cut to 64 bytes.
        let mut p = framed(b"<xml/>", &[b'z'; 100], 6, 0, 0);
        let pad = 32 - p.len() % 32;
        p.extend(std::iter::repeat_n(pad as u8, pad));
        match mc().decrypt(&raw(p)) {
            Err(CryptoError::AppIdMismatch { found, .. }) => assert_eq!(found.len(), 64),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_base64_and_lengths_are_refused() {
        let m = mc();
        assert_eq!(m.decrypt("not base64!"), Err(CryptoError::Base64));
        assert_eq!(m.decrypt("ab\u{4e2d}c"), Err(CryptoError::Base64));
        assert_eq!(m.decrypt(""), Err(CryptoError::Length));
        assert_eq!(m.decrypt("AAAA"), Err(CryptoError::Length)); // 3 bytes
        assert_eq!(
            m.decrypt(&STANDARD.encode([0u8; 17])),
            Err(CryptoError::Length)
        );
        // Truncated base64: the tail is cut mid-block.
        let cut = &SAMPLE_ENCRYPT[..SAMPLE_ENCRYPT.len() - 8];
        assert!(matches!(
            m.decrypt(cut),
            Err(CryptoError::Length | CryptoError::Base64)
        ));
        // Truncated to whole blocks: the pad/AppID block is gone.
        let ct = STANDARD.decode(SAMPLE_ENCRYPT).unwrap();
        for keep in (16..ct.len()).step_by(16) {
            assert!(m.decrypt(&STANDARD.encode(&ct[..keep])).is_err());
        }
        // Unpadded base64 of a valid ciphertext is accepted.
        assert!(m.decrypt(SAMPLE_ENCRYPT.trim_end_matches('=')).is_ok());
    }

    #[test]
    fn bad_pads_are_refused() {
        let m = mc();
        let xml = b"<xml>hi</xml>"; // 20 + 13 + 18 = 51 bytes → 13 to pad to 64
        let bad = |pad_val: u8, pad_len: usize| {
            m.decrypt(&raw(framed(xml, APPID.as_bytes(), 13, pad_val, pad_len)))
        };
        assert_eq!(bad(13, 13), Ok("<xml>hi</xml>".into()));
        assert_eq!(bad(0, 13), Err(CryptoError::Padding));
        assert_eq!(bad(33, 13 + 32), Err(CryptoError::Padding));
        assert_eq!(bad(255, 13), Err(CryptoError::Padding));
        // Inconsistent pad bytes: last byte says 13 but the others differ.
        let mut p = framed(xml, APPID.as_bytes(), 13, 13, 13);
        p[55] = 12;
        assert_eq!(m.decrypt(&raw(p)), Err(CryptoError::Padding));
        // A pad larger than the whole message.
        assert_eq!(m.decrypt(&raw(vec![32; 16])), Err(CryptoError::Padding));
        // A pad exactly as long as the message is a valid pad: what is missing is the header.
        assert_eq!(m.decrypt(&raw(vec![16; 16])), Err(CryptoError::TooShort));
        assert_eq!(m.decrypt(&raw(vec![32; 32])), Err(CryptoError::TooShort));
    }

    #[test]
    fn bad_framing_is_refused() {
        let m = mc();
        // Fewer than 20 bytes after unpadding: 16 bytes of data and a 16-byte pad.
        let mut p = PREFIX.to_vec();
        p.extend([16u8; 16]);
        assert_eq!(m.decrypt(&raw(p)), Err(CryptoError::TooShort));
        // Length field larger than what follows (13 bytes of XML + 18 of AppID = 31).
        for len_field in [32, 1000, u32::MAX] {
            let p = framed(b"<xml>hi</xml>", APPID.as_bytes(), len_field, 13, 13);
            assert_eq!(m.decrypt(&raw(p)), Err(CryptoError::LengthField));
        }
        // Length field within the data but wrong: the AppID tail no longer matches.
        for len_field in [14, 31] {
            let p = framed(b"<xml>hi</xml>", APPID.as_bytes(), len_field, 13, 13);
            assert!(matches!(
                m.decrypt(&raw(p)),
                Err(CryptoError::AppIdMismatch { .. })
            ));
        }
        // Length field smaller than the XML: the rest is taken as the AppID and mismatches.
        let p = framed(b"<xml>hi</xml>", APPID.as_bytes(), 5, 13, 13);
        assert!(matches!(
            m.decrypt(&raw(p)),
            Err(CryptoError::AppIdMismatch { .. })
        ));
        // Invalid UTF-8 in the XML.
        let p = framed(b"<xml>\xff\xfe</xml>", APPID.as_bytes(), 13, 13, 13);
        assert_eq!(m.decrypt(&raw(p)), Err(CryptoError::Utf8));
    }

    #[test]
    fn keys_are_validated() {
        let bad_key = |k: &str| match MsgCrypt::new(TOKEN, k, APPID) {
            Err(CryptoError::BadKey(msg)) => msg,
            other => panic!("expected BadKey for {k:?}, got {other:?}"),
        };
        assert!(bad_key(&KEY[..42]).contains("43 characters"));
        assert!(bad_key(&format!("{KEY}A")).contains("43 characters"));
        assert!(bad_key(&format!("{KEY}=")).contains("remove the trailing '='"));
        assert!(bad_key(&format!(" {KEY}")).contains("whitespace"));
        assert!(bad_key("").contains("43 characters"));
        // The '=' hint is for a 44th character that is '=', not for any 44 characters nor for
        // any key that ends in '='.
        let fix = "copy the EncodingAESKey again from the WeChat admin console \
                   (Settings and Development → Basic Configuration)";
        assert_eq!(
            bad_key(&format!("{KEY}A")),
            format!("it must be exactly 43 characters, but it has 44; {fix}")
        );
        assert_eq!(
            bad_key(&format!("{}=", &KEY[..41])),
            format!("it must be exactly 43 characters, but it has 42; {fix}")
        );
        assert_eq!(
            bad_key(&format!("{KEY}=")),
            format!(
                "it must be exactly 43 characters, but it has 44; remove the trailing '=' \
                 (wxmp appends it itself); {fix}"
            )
        );
        let mut k = KEY.to_owned();
        k.replace_range(10..11, "-");
        assert!(bad_key(&k).contains("character 11"));
        k.replace_range(10..11, "=");
        assert!(bad_key(&k).contains("character 11"));
        // 43 characters but multi-byte: counted in characters, refused by the alphabet check.
        let wide: String = "中".repeat(43);
        assert!(bad_key(&wide).contains("character 1"));
        // The sample key's last character has non-zero trailing bits and must be accepted.
        assert!(MsgCrypt::new(TOKEN, KEY, APPID).is_ok());
        assert!(MsgCrypt::new(TOKEN, &"A".repeat(43), APPID).is_ok());
        // Error text never contains the key.
        let msg = CryptoError::BadKey(bad_key(&KEY[..42])).to_string();
        assert!(!msg.contains(&KEY[..42]));
    }

    #[test]
    fn empty_token_or_appid_is_refused() {
        assert!(matches!(
            MsgCrypt::new("", KEY, APPID),
            Err(CryptoError::BadConfig(_))
        ));
        assert!(matches!(
            MsgCrypt::new(TOKEN, KEY, ""),
            Err(CryptoError::BadConfig(_))
        ));
    }

    #[test]
    fn the_configured_appid_is_kept() {
        assert_eq!(mc().app_id(), APPID);
        let other = MsgCrypt::new(TOKEN, KEY, "wx0000000000000000").unwrap();
        assert_eq!(other.app_id(), "wx0000000000000000");
    }

    #[test]
    fn debug_redacts_key_and_token() {
        let s = format!("{:?}", mc());
        assert!(s.contains(APPID));
        assert!(!s.contains(TOKEN));
        assert!(!s.contains("abcdefghij"));
        assert!(!s.contains("105, 183")); // key bytes 0x69 0xb7 as a Debug array
    }

    #[test]
    fn extract_encrypt_cases() {
        assert_eq!(
            extract_encrypt("<xml><Encrypt>\n  <![CDATA[abc]]>\n</Encrypt></xml>").unwrap(),
            "abc"
        );
        // Compatible mode: plaintext fields next to Encrypt.
        assert_eq!(
            extract_encrypt(
                "<xml><ToUserName><![CDATA[gh_x]]></ToUserName><MsgType><![CDATA[text]]></MsgType>\
                 <Content><![CDATA[hi]]></Content><Encrypt><![CDATA[QUJD]]></Encrypt></xml>"
            )
            .unwrap(),
            "QUJD"
        );
        for bad in [
            "",
            "<xml></xml>",
            "<xml><Encrypt></Encrypt></xml>",
            "<xml><Encrypt>  </Encrypt></xml>",
            "<xml><Encrypt>a</Encrypt><Encrypt>b</Encrypt></xml>",
            "<xml><a><Encrypt>nested</Encrypt></a></xml>",
            "<xml><Encrypt>a</Encrypt>",
            "<!DOCTYPE xml [<!ENTITY e \"x\">]><xml><Encrypt>&e;</Encrypt></xml>",
            "not xml",
        ] {
            assert!(
                matches!(extract_encrypt(bad), Err(CryptoError::Xml(_))),
                "{bad:?}"
            );
        }
        // The envelope is parsed before msg_signature is checked: the same guards as a message.
        let err = extract_encrypt("<xml xmlns:a=\"u\"><Encrypt>QUJD</Encrypt></xml>").unwrap_err();
        assert!(err.to_string().contains("namespace"), "{err}");
        let nodes = format!(
            "<xml><Encrypt>QUJD</Encrypt>{}</xml>",
            "<a/>".repeat(crate::message::MAX_NODES as usize)
        );
        assert!(matches!(extract_encrypt(&nodes), Err(CryptoError::Xml(_))));
    }

    #[test]
    fn parse_encrypted_reply_requires_all_fields() {
        assert!(matches!(
            parse_encrypted_reply("<xml><Encrypt>a</Encrypt><MsgSignature>b</MsgSignature><TimeStamp>1</TimeStamp></xml>"),
            Err(CryptoError::Xml(m)) if m.contains("Nonce")
        ));
        let r = parse_encrypted_reply(
            "<xml><Encrypt>a</Encrypt><MsgSignature>b</MsgSignature>\
             <TimeStamp> 1 </TimeStamp><Nonce>n</Nonce></xml>",
        )
        .unwrap();
        assert_eq!(r.timestamp, "1");
    }

    #[test]
    fn random_nonce_shape() {
        let a = random_nonce();
        assert_eq!(a.len(), 10);
        assert!(a.bytes().all(|b| b.is_ascii_digit()));
        assert_ne!(a, random_nonce());
        assert_ne!(fallback_random(), fallback_random());
    }

    #[test]
    fn fallback_random_spreads_over_all_64_bits() {
        // The finaliser's last step mixes the high half into the low one: without it (or with
        // `&` or `|` in place of `^`) the values stay below 2^33 or have too many bits set.
        // 256 values of a well-mixed 64-bit function set every bit somewhere and about 32 bits
        // each; the bounds are 16 standard deviations of the mean away.
        let values: Vec<u64> = (0..256).map(|_| fallback_random()).collect();
        assert_eq!(values.iter().fold(0, |acc, v| acc | v), u64::MAX);
        let ones: u32 = values.iter().map(|v| v.count_ones()).sum();
        assert!((28 * 256..=36 * 256).contains(&ones), "{ones} bits set");
    }

    #[test]
    fn errors_display_something_useful() {
        let e = CryptoError::AppIdMismatch {
            expected: "wxA".into(),
            found: "wx\nB".into(),
        };
        let s = e.to_string();
        assert!(s.contains("\"wxA\"") && s.contains("\"wx\\nB\""));
        let boxed: Box<dyn std::error::Error> = Box::new(CryptoError::Padding);
        assert!(boxed.to_string().contains("EncodingAESKey"));
    }
}
