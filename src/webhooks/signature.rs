//! The delivery signature (Stripe-style): `t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<body>")>`, so a receiver can check who sent a body and refuse old replays.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Accrual-Signature";
/// The header carrying the event's id (the receiver's dedup key).
pub const EVENT_ID_HEADER: &str = "Accrual-Event-Id";
/// The header carrying the attempt number (1, 2, ...).
pub const ATTEMPT_HEADER: &str = "Accrual-Delivery-Attempt";

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` signed at `timestamp` (unix seconds).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex::encode(tag))
}

/// Checks a header value against `body`: a `v1` tag that matches (in constant time) and a
/// timestamp within `tolerance_s` of `now` (unix seconds). What a receiver does; the tests use
/// it.
#[cfg(test)]
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64, tolerance_s: i64) -> bool {
    let mut timestamp = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => tags.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let Some(t) = timestamp else { return false };
    if (now - t).abs() > tolerance_s {
        return false;
    }
    tags.iter().any(|tag| mac(secret, t, body).verify_slice(tag).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_any_change_fails() {
        let header = sign("whsec_k", 1_700_000_000, b"{\"a\":1}");
        assert!(verify("whsec_k", &header, b"{\"a\":1}", 1_700_000_100, 300));
        // (case, secret, body, now)
        let bad = [
            ("another secret", "whsec_x", &b"{\"a\":1}"[..], 1_700_000_100),
            ("another body", "whsec_k", &b"{\"a\":2}"[..], 1_700_000_100),
            ("too old", "whsec_k", &b"{\"a\":1}"[..], 1_700_000_301),
        ];
        for (case, secret, body, now) in bad {
            assert!(!verify(secret, &header, body, now, 300), "{case}");
        }
        assert!(!verify("whsec_k", "v1=00", b"", 0, 300), "no timestamp");
    }

    /// A fixed vector, so other languages can check their implementation against it.
    #[test]
    fn known_vector() {
        let header = sign("whsec_test", 1_700_000_000, b"hello");
        assert_eq!(
            header,
            "t=1700000000,v1=457c4d31b232d95fcd50f1d95021aaaffddd859d0ee8a206675e84ccc977431d"
        );
    }
}
