//! The delivery message (queue body) and what travels with it.

use crate::crm::Crm;
use crate::event::{ClientId, Email, EventType};
use crate::ports::Attribute;
use crate::record::NavigationRecord;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Version of the delivery message body.
pub const MESSAGE_VERSION: u32 = 1;

/// Message attribute names (DESIGN.md, "Delivery message").
pub mod attr {
    /// The client.
    pub const CLIENT_ID: &str = "clientId";
    /// The CRM.
    pub const CRM: &str = "crm";
    /// The event type.
    pub const EVENT_TYPE: &str = "eventType";
    /// Why a message was dead-lettered on purpose.
    pub const FAILURE_REASON: &str = "failureReason";
    /// The CRM's status (HTTP status or error code) behind the failure.
    pub const FAILURE_STATUS: &str = "failureStatus";
    /// When it was dead-lettered (RFC 3339, UTC).
    pub const FAILED_AT: &str = "failedAt";
    /// Delivery attempts made before dead-lettering.
    pub const ATTEMPTS: &str = "attempts";
}

/// The event part of a delivery message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryEvent {
    /// The shopper.
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
    /// Extra fields.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub properties: Map<String, Value>,
}

/// The body of a message on a CRM's delivery queue: `{"v":1, recordId, clientId, crm,
/// receivedAt, event}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryMessage {
    /// Body version ([`MESSAGE_VERSION`]).
    pub v: u32,
    /// The navigation record.
    pub record_id: String,
    /// The client.
    pub client_id: ClientId,
    /// The CRM.
    pub crm: Crm,
    /// When Connect received the event (epoch ms).
    pub received_at: i64,
    /// `true` when the event was cut down to fit a queue message (its full record stays
    /// in the navigation table until its TTL).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// The event.
    pub event: DeliveryEvent,
}

impl DeliveryMessage {
    /// The message of a stored record.
    pub fn from_record(record: NavigationRecord) -> DeliveryMessage {
        DeliveryMessage {
            v: MESSAGE_VERSION,
            record_id: record.record_id,
            client_id: record.client_id,
            crm: record.crm,
            received_at: record.timestamp,
            truncated: false,
            event: DeliveryEvent {
                email: record.email,
                event_type: record.event_type,
                product_id: record.product_id,
                product_name: record.product_name,
                product_price: record.product_price,
                product_image: record.product_image,
                product_url: record.product_url,
                tid: record.tid,
                event_id: record.event_id,
                properties: record.properties,
            },
        }
    }

    /// The same message without its bulky parts (properties, product texts and URLs),
    /// marked `truncated`: what is dead-lettered when the whole message is too large.
    pub fn truncated(&self) -> DeliveryMessage {
        let mut m = self.clone();
        m.truncated = true;
        m.event.properties = Map::new();
        m.event.product_name = None;
        m.event.product_image = None;
        m.event.product_url = None;
        m
    }

    /// The message attributes every delivery message carries.
    pub fn attributes(&self) -> Vec<Attribute> {
        attributes(&self.client_id, self.crm, self.event.event_type)
    }
}

/// The message attributes of a delivery message of `client_id`, `crm` and `event_type`.
pub fn attributes(client_id: &ClientId, crm: Crm, event_type: EventType) -> Vec<Attribute> {
    vec![
        (attr::CLIENT_ID.into(), client_id.to_string().into()),
        (attr::CRM.into(), crm.as_str().into()),
        (attr::EVENT_TYPE.into(), event_type.as_str().into()),
    ]
}

/// The delivery message of a stored record, borrowed from it: serialises to the same
/// JSON as `DeliveryMessage::from_record(record.clone())` without copying the record
/// (the fanout writes one per event).
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageOfRecord<'a> {
    v: u32,
    record_id: &'a str,
    client_id: &'a ClientId,
    crm: Crm,
    received_at: i64,
    event: EventOfRecord<'a>,
}

/// [`DeliveryEvent`], borrowed from a record (see [`MessageOfRecord`]).
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
struct EventOfRecord<'a> {
    email: &'a Email,
    event_type: EventType,
    #[serde(skip_serializing_if = "Option::is_none")]
    product_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    product_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    product_price: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    product_image: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    product_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<&'a str>,
    #[serde(skip_serializing_if = "no_properties")]
    properties: &'a Map<String, Value>,
}

fn no_properties(properties: &&Map<String, Value>) -> bool {
    properties.is_empty()
}

impl<'a> From<&'a NavigationRecord> for MessageOfRecord<'a> {
    fn from(record: &'a NavigationRecord) -> Self {
        MessageOfRecord {
            v: MESSAGE_VERSION,
            record_id: &record.record_id,
            client_id: &record.client_id,
            crm: record.crm,
            received_at: record.timestamp,
            event: EventOfRecord {
                email: &record.email,
                event_type: record.event_type,
                product_id: record.product_id.as_deref(),
                product_name: record.product_name.as_deref(),
                product_price: record.product_price,
                product_image: record.product_image.as_deref(),
                product_url: record.product_url.as_deref(),
                tid: record.tid.as_deref(),
                event_id: record.event_id.as_deref(),
                properties: &record.properties,
            },
        }
    }
}

/// RFC 3339 UTC timestamp (second precision) of an epoch-milliseconds instant.
pub fn rfc3339(epoch_ms: i64) -> String {
    let ms_of_day = epoch_ms.rem_euclid(86_400_000);
    let (year, month, day) = crate::time::civil_from_days(epoch_ms.div_euclid(86_400_000));
    let (h, m, s) = (
        ms_of_day / 3_600_000,
        (ms_of_day / 60_000) % 60,
        (ms_of_day / 1000) % 60,
    );
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn a_message_s_attributes_copy_only_the_client_id() {
        let client = ClientId::parse("shop-a").expect("client id");
        let attributes = attributes(&client, Crm::SFMC, EventType::Purchase);
        let pairs: Vec<(&str, &str)> = attributes
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("clientId", "shop-a"),
                ("crm", "salesforce"),
                ("eventType", "purchase")
            ]
        );
        // The fanout makes one set per event: names, CRM and event type are constants.
        let owned: Vec<&str> = attributes
            .iter()
            .flat_map(|(k, v)| [k, v])
            .filter(|c| matches!(c, Cow::Owned(_)))
            .map(|c| c.as_ref())
            .collect();
        assert_eq!(owned, ["shop-a"]);
    }

    #[test]
    fn body_matches_the_fixture_shape() {
        let text = r#"{"v": 1, "recordId": "client-abc-20260128-0001", "clientId": "client-abc", "crm": "responsys", "receivedAt": 1706457600000, "event": {"email": "user@example.com", "eventType": "product_view", "productId": "PROD-12345", "productName": "Smartphone XYZ", "productPrice": 1299.9, "tid": "GA4.123456789.987654321"}}"#;
        let m: DeliveryMessage = serde_json::from_str(text).expect("parse");
        assert_eq!(m.crm, Crm::RESPONSYS);
        assert!(!m.truncated);
        let again: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&m).expect("json")).expect("json");
        let orig: serde_json::Value = serde_json::from_str(text).expect("json");
        assert_eq!(again, orig);
        let t = m.truncated();
        assert!(t.truncated && t.event.product_name.is_none());
        assert_eq!(t.event.product_id.as_deref(), Some("PROD-12345"));
    }

    fn record(full: bool) -> NavigationRecord {
        let body = if full {
            serde_json::json!({
                "clientId": "shop-1", "email": "Shopper@Example.com", "eventType": "purchase",
                "eventId": "e-1", "productId": "P-1", "productName": "Caf\u{e9} \"quoted\"",
                "productPrice": 12.5, "productImage": "https://shop.example/i.png",
                "productUrl": "https://shop.example/p?a=1&b=2", "tid": "GA1.2.3",
                "coupon": "X", "items": ["a", "b"], "qty": 2
            })
        } else {
            serde_json::json!({"clientId": "shop-1", "email": "a@b.co", "eventType": "lead"})
        };
        let event = crate::GtmEvent::parse(Crm::SFMC, body).expect("event");
        let client = crate::ClientId::parse("shop-1").expect("client");
        NavigationRecord::new(event, client, Crm::SFMC, 1_706_457_601_999, 72)
    }

    #[test]
    fn a_message_of_a_record_is_the_message_made_from_a_copy_of_it() {
        for full in [true, false] {
            let r = record(full);
            let borrowed = serde_json::to_string(&MessageOfRecord::from(&r)).expect("json");
            let owned = DeliveryMessage::from_record(r.clone());
            assert_eq!(borrowed, serde_json::to_string(&owned).expect("json"));
            let parsed: DeliveryMessage = serde_json::from_str(&borrowed).expect("parse");
            assert_eq!(parsed, owned);
            assert_eq!(parsed.event.properties.is_empty(), !full);
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_706_457_601_999), "2024-01-28T16:00:01Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(951_825_600_000), "2000-02-29T12:00:00Z");
    }
}
