//! CRM access tokens and the rules for refreshing them.

use crate::crm::Crm;
use crate::event::ClientId;
use crate::secret::Secret;
use serde::{Deserialize, Serialize};

/// Refresh when less than this share of a token's lifetime is left…
pub const REFRESH_WHEN_LEFT_SHARE: f64 = 0.25;
/// …or less than this many milliseconds, whichever is larger.
pub const REFRESH_WHEN_LEFT_MS: i64 = 10 * 60 * 1000;

/// A CRM access token as cached in the tokens table (key: client + CRM).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredToken {
    /// The client.
    pub client_id: ClientId,
    /// The CRM.
    pub crm: Crm,
    /// The token.
    pub access_token: Secret<String>,
    /// The API base the CRM returned (Responsys `endPoint`, SFMC `rest_instance_url`).
    pub api_endpoint: String,
    /// When it was issued (epoch ms).
    pub issued_at: i64,
    /// When it expires (epoch ms).
    pub expires_at: i64,
    /// When it was stored (epoch ms).
    pub updated_at: i64,
}

impl StoredToken {
    /// Whether it should be replaced at `now_ms`: expired, or less than
    /// max(25 % of its lifetime, 10 min) left.
    pub fn is_due(&self, now_ms: i64) -> bool {
        let lifetime = (self.expires_at - self.issued_at).max(0);
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let share = (lifetime as f64 * REFRESH_WHEN_LEFT_SHARE) as i64;
        let margin = share.max(REFRESH_WHEN_LEFT_MS).min(lifetime / 2);
        self.expires_at - now_ms <= margin
    }

    /// Whether it is past its expiry.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        now_ms >= self.expires_at
    }
}

/// The result of the last refresh attempt of a client's token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefreshStatus {
    /// When (epoch ms).
    pub at: i64,
    /// Whether it succeeded.
    pub ok: bool,
    /// What happened (never a secret).
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(issued: i64, expires: i64) -> StoredToken {
        StoredToken {
            client_id: ClientId::parse("c").expect("id"),
            crm: Crm::RESPONSYS,
            access_token: Secret::new("t".into()),
            api_endpoint: "https://x".into(),
            issued_at: issued,
            expires_at: expires,
            updated_at: issued,
        }
    }

    #[test]
    fn margins() {
        let h = 3_600_000;
        // 2 h token: due with 30 min (25 %) left.
        let t = token(0, 2 * h);
        assert!(!t.is_due(h + 29 * 60_000));
        assert!(t.is_due(h + 30 * 60_000));
        // 20 min token: 10 min margin is larger than 25 % (5 min)… capped at half the life.
        let t = token(0, 20 * 60_000);
        assert!(!t.is_due(9 * 60_000));
        assert!(t.is_due(10 * 60_000));
        // A 4 s sandbox token: due at half its life, not immediately.
        let t = token(0, 4_000);
        assert!(!t.is_due(1_000));
        assert!(t.is_due(2_000));
        assert!(t.is_expired(4_000) && !t.is_expired(3_999));
    }
}
