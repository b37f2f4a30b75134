//! Signed events: a shop's backend proves that it sent an event for this email.
//!
//! The signature is `hex(HMAC-SHA256(key, "v1:{clientId}:{email}:{sigExp}"))`, where
//! `email` is the normalised address (trimmed, lower-cased — what [`crate::Email`]
//! stores) and `sigExp` the expiry in epoch seconds. The event carries it as `sig`
//! (hex, either case) and `sigExp`. The key is the client's signing secret, kept where
//! CRM credentials are kept, never in the clients table.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Longest accepted lifetime of a signature, from now to `sigExp` (a longer one is
/// refused: a leaked signed URL must not be replayable for months).
pub const MAX_SIGNATURE_LIFETIME_SECONDS: i64 = 7 * 24 * 3600;
/// Version prefix of the signed string.
pub const SIGNATURE_VERSION: &str = "v1";

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// Missing, malformed, or not made with the client's key (`signature_invalid`).
    Invalid,
    /// Valid but past `sigExp` (`signature_expired`).
    Expired,
}

impl SignatureError {
    /// The error code of the 401 answer.
    pub fn code(self) -> &'static str {
        match self {
            SignatureError::Invalid => "signature_invalid",
            SignatureError::Expired => "signature_expired",
        }
    }
}

fn mac(key: &[u8], client_id: &str, email: &str, expires: i64) -> Hmac<Sha256> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => <Hmac<Sha256> as KeyInit>::new(&Default::default()),
    };
    mac.update(format!("{SIGNATURE_VERSION}:{client_id}:{email}:{expires}").as_bytes());
    mac
}

/// The signature of `(client_id, email, expires)` with `key`, as lower-case hex.
pub fn sign(key: &[u8], client_id: &str, email: &str, expires: i64) -> String {
    crate::hex_lower(&mac(key, client_id, email, expires).finalize().into_bytes())
}

/// Checks a signature in constant time, then its expiry against `now_s` (epoch
/// seconds). A bad signature is `Invalid` even when also expired.
pub fn verify(
    key: &[u8],
    client_id: &str,
    email: &str,
    expires: i64,
    signature: &str,
    now_s: i64,
) -> Result<(), SignatureError> {
    let Ok(given) = hex::decode(signature.trim()) else {
        return Err(SignatureError::Invalid);
    };
    mac(key, client_id, email, expires)
        .verify_slice(&given)
        .map_err(|_| SignatureError::Invalid)?;
    if expires < now_s {
        return Err(SignatureError::Expired);
    }
    if expires - now_s > MAX_SIGNATURE_LIFETIME_SECONDS {
        return Err(SignatureError::Invalid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of the README (Security section).
    #[test]
    fn readme_test_vector() {
        let sig = sign(
            b"test-signing-key",
            "shop-a",
            "ana@example.com",
            1_900_000_000,
        );
        assert_eq!(sig, README_VECTOR);
        assert_eq!(
            verify(
                b"test-signing-key",
                "shop-a",
                "ana@example.com",
                1_900_000_000,
                &sig.to_uppercase(),
                1_899_999_000
            ),
            Ok(())
        );
    }

    const README_VECTOR: &str = "a3693a50dd0cc09195bce742880aa822072685f1c1bded943b3120611f3698f8";

    #[test]
    fn refusals() {
        let key = b"k";
        let sig = sign(key, "shop-a", "ana@example.com", 1000);
        let v = |k: &[u8], c, e, x, s: &str, now| verify(k, c, e, x, s, now);
        assert_eq!(v(key, "shop-a", "ana@example.com", 1000, &sig, 999), Ok(()));
        assert_eq!(
            v(key, "shop-a", "ana@example.com", 1000, &sig, 1001),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            v(b"other", "shop-a", "ana@example.com", 1000, &sig, 999),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            v(key, "shop-b", "ana@example.com", 1000, &sig, 999),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            v(key, "shop-a", "bob@example.com", 1000, &sig, 999),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            v(key, "shop-a", "ana@example.com", 1001, &sig, 999),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            v(key, "shop-a", "ana@example.com", 1000, "zz", 999),
            Err(SignatureError::Invalid)
        );
        let far = 999 + MAX_SIGNATURE_LIFETIME_SECONDS + 10;
        let far_sig = sign(key, "shop-a", "ana@example.com", far);
        assert_eq!(
            v(key, "shop-a", "ana@example.com", far, &far_sig, 999),
            Err(SignatureError::Invalid)
        );
    }
}
