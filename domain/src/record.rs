//! The stored navigation record.

use crate::crm::Crm;
use crate::event::{ClientId, Email, EventType, GtmEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Default hours a navigation record is kept (`RECORD_TTL_HOURS`).
pub const DEFAULT_RECORD_TTL_HOURS: u32 = 48;
/// Shortest accepted record lifetime: records must outlive a day of delivery retries.
pub const MIN_RECORD_TTL_HOURS: u32 = 24;
/// Longest accepted record lifetime (the buffer is not an archive).
pub const MAX_RECORD_TTL_HOURS: u32 = 24 * 14;

/// A navigation record as stored (DynamoDB item attributes / SQLite JSON), camelCase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NavigationRecord {
    /// `{clientId}-{yyyymmdd}-{id}`; deterministic from `(clientId, eventId)`.
    pub record_id: String,
    /// Receipt time, epoch milliseconds.
    pub timestamp: i64,
    /// The client.
    pub client_id: ClientId,
    /// The CRM the record is delivered to.
    pub crm: Crm,
    /// The shopper (lower-case).
    pub email: Email,
    /// What happened.
    pub event_type: EventType,
    /// Product SKU or id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<String>,
    /// Product name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    /// Product price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_price: Option<f64>,
    /// Product image URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_image: Option<String>,
    /// Product page URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_url: Option<String>,
    /// GA4 client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<String>,
    /// The tag's idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Extra top-level fields of the event.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub properties: Map<String, Value>,
    /// Expiry, epoch seconds (DynamoDB TTL attribute).
    pub ttl: i64,
}

impl NavigationRecord {
    /// Builds the record of a validated event for a resolved client, received at `now_ms`.
    pub fn new(
        event: GtmEvent,
        client_id: ClientId,
        crm: Crm,
        now_ms: i64,
        ttl_hours: u32,
    ) -> NavigationRecord {
        let record_id = record_id(&client_id, event.event_id.as_deref(), now_ms);
        NavigationRecord {
            record_id,
            timestamp: now_ms,
            client_id,
            crm,
            email: event.email,
            event_type: event.event_type,
            product_id: event.product_id,
            product_name: event.product_name,
            product_price: event.product_price,
            product_image: event.product_image.map(String::from),
            product_url: event.product_url.map(String::from),
            tid: event.tid,
            event_id: event.event_id,
            properties: event.properties,
            ttl: now_ms.div_euclid(1000) + i64::from(ttl_hours) * 3600,
        }
    }

    /// Whether the record is idempotent (carries the tag's `eventId`).
    pub fn is_idempotent(&self) -> bool {
        self.event_id.is_some()
    }
}

/// `{clientId}-{yyyymmdd}-{id}`. With an `eventId` the id is a hash of `(clientId,
/// eventId)`, so a retried event maps to the same record id (on the same UTC day; a retry
/// that crosses midnight UTC is stored again — tags retry within seconds). Without one,
/// the id is random.
pub fn record_id(client_id: &ClientId, event_id: Option<&str>, now_ms: i64) -> String {
    use std::fmt::Write;
    // One allocation: this runs for every accepted event.
    let mut out = String::with_capacity(client_id.as_str().len() + 1 + 8 + 1 + 32);
    out.push_str(client_id.as_str());
    out.push('-');
    let (y, m, d) = crate::time::civil_from_days(now_ms.div_euclid(crate::time::MS_PER_DAY));
    let _ = write!(out, "{y:04}{m:02}{d:02}-");
    match event_id {
        Some(event_id) => {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(client_id.as_str().as_bytes());
            h.update([0u8]);
            h.update(event_id.as_bytes());
            out.push_str(&crate::hex_lower(&h.finalize()[..16]));
        }
        None => {
            let mut buf = uuid::Uuid::encode_buffer();
            out.push_str(uuid::Uuid::new_v4().simple().encode_lower(&mut buf));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid(s: &str) -> ClientId {
        ClientId::parse(s).expect("client id")
    }

    #[test]
    fn record_id_is_deterministic_with_event_id() {
        let t = 1_706_457_600_000;
        let a = record_id(&cid("client-abc"), Some("e-1"), t);
        let b = record_id(&cid("client-abc"), Some("e-1"), t + 5_000);
        assert_eq!(a, b);
        assert!(a.starts_with("client-abc-20240128-"), "{a}");
        assert_eq!(a.len(), "client-abc-20240128-".len() + 32);
        assert_ne!(a, record_id(&cid("client-xyz"), Some("e-1"), t));
        assert_ne!(a, record_id(&cid("client-abc"), Some("e-2"), t));
        assert_ne!(
            record_id(&cid("client-abc"), None, t),
            record_id(&cid("client-abc"), None, t)
        );
        // The id stored records already carry: SHA-256(client, 0, eventId), first 16
        // bytes, lower-case hex (computed independently here).
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(b"client-abc\0e-1");
        assert_eq!(
            a,
            format!("client-abc-20240128-{}", hex::encode(&digest[..16]))
        );
        let random = record_id(&cid("client-abc"), None, t);
        let suffix = random.strip_prefix("client-abc-20240128-").expect("prefix");
        assert_eq!(suffix.len(), 32, "{random}");
        assert!(
            suffix
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
            "{random}"
        );
    }
}
