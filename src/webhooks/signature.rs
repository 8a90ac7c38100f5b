//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>,
//! `spec/standard-webhooks.md`): a secret is `whsec_` and the base64 of its
//! key bytes; a signature is `v1,` and the base64 of HMAC-SHA256 under those
//! bytes over `{webhook-id}.{webhook-timestamp}.{body}`; several signatures
//! (a rotation's old and new secret) are separated by spaces.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

/// The prefix of a secret as shown to the business.
pub const SECRET_PREFIX: &str = "whsec_";
/// Key bytes of a new secret (the specification asks for 24 to 64).
pub const SECRET_BYTES: usize = 32;

/// A secret's text form: `whsec_` and the base64 of its key bytes.
pub fn secret_text(key: &[u8]) -> Zeroizing<String> {
    Zeroizing::new(format!("{SECRET_PREFIX}{}", STANDARD.encode(key)))
}

/// The `webhook-signature` header value for `body` sent as message `id` at
/// `timestamp` (Unix seconds), one `v1,` signature per key, space-separated.
pub fn signature_header(keys: &[Zeroizing<Vec<u8>>], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut signed = Vec::with_capacity(id.len() + 24 + body.len());
    signed.extend_from_slice(id.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(timestamp.to_string().as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    keys.iter()
        .map(|key| {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
            format!("v1,{}", STANDARD.encode(ring::hmac::sign(&key, &signed).as_ref()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The example of the Standard Webhooks reference libraries' tests: the
    /// secret `whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw`, message
    /// `msg_p5jXN8AQM9LWM0D4loKWxJek`, timestamp 1614265330 and body
    /// `{"test": 2432232314}` sign to this value.
    #[test]
    fn signs_the_reference_example() {
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let header = signature_header(
            &[Zeroizing::new(key)],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(header, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_rotation_signs_with_every_key() {
        let keys = [Zeroizing::new(vec![1u8; 32]), Zeroizing::new(vec![2u8; 32])];
        let header = signature_header(&keys, "msg_1", 1, b"{}");
        assert_eq!(header.split(' ').count(), 2);
        assert!(header.split(' ').all(|part| part.starts_with("v1,")));
        assert_eq!(secret_text(&[0u8; 3]).as_str(), "whsec_AAAA");
    }
}
