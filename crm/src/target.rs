//! Where a client's events go in its CRM, and how fields map — from the client's
//! `target` configuration, with defaults for everything.

use domain::{ClientConfig, DeliveryMessage};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// A field of our event (`email`, `eventType`, `productId`, `productName`,
/// `productPrice`, `productImage`, `productUrl`, `tid`, `eventId`, `recordId`,
/// `receivedAt`, `clientId`, or `properties.NAME`) as text, borrowed from the message
/// where it is text there already (a row of ten columns then copies nothing).
pub fn field<'m>(message: &'m DeliveryMessage, name: &str) -> Option<Cow<'m, str>> {
    let e = &message.event;
    let text = |s: &'m Option<String>| s.as_deref().map(Cow::Borrowed);
    match name {
        "email" => Some(Cow::Borrowed(e.email.as_str())),
        "eventType" => Some(Cow::Borrowed(e.event_type.as_str())),
        "productId" => text(&e.product_id),
        "productName" => text(&e.product_name),
        "productPrice" => e.product_price.map(|p| Cow::Owned(format!("{p:.2}"))),
        "productImage" => text(&e.product_image),
        "productUrl" => text(&e.product_url),
        "tid" => text(&e.tid),
        "eventId" => text(&e.event_id),
        "recordId" => Some(Cow::Borrowed(&message.record_id)),
        "clientId" => Some(Cow::Borrowed(message.client_id.as_str())),
        "receivedAt" => Some(Cow::Owned(domain::delivery::rfc3339(message.received_at))),
        other => other.strip_prefix("properties.").and_then(|p| {
            e.properties.get(p).map(|v| match v {
                Value::String(s) => Cow::Borrowed(s.as_str()),
                other => Cow::Owned(other.to_string()),
            })
        }),
    }
}

/// A client's target as `T` (its defaults when there is none); the error names the key.
pub(crate) fn parse<T: for<'de> Deserialize<'de> + Default>(
    client: &ClientConfig,
) -> Result<T, String> {
    match &client.target {
        None | Some(Value::Null) => Ok(T::default()),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| format!("client {} has an invalid target: {e}", client.client_id)),
    }
}

/// Checks a client's `target` against its destination's settings: unknown keys, the
/// same setting given twice under two names (`profile_list` and `list_name`), values of
/// the wrong type, and settings a kind needs. The message names the key.
pub fn validate(client: &ClientConfig) -> Result<(), String> {
    crate::destination(client.crm).validate_target(client)
}

/// Responsys target kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponsysKind {
    /// Merge into the profile list.
    #[default]
    ProfileList,
    /// Merge into a profile extension table.
    Pet,
    /// Merge into a supplemental table.
    SupplementalTable,
}

/// Responsys target.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResponsysTarget {
    /// What to merge into.
    #[serde(alias = "type")]
    pub kind: ResponsysKind,
    /// Profile list (`CONTACTS_LIST`).
    #[serde(alias = "profileList", alias = "profile_list")]
    pub list_name: String,
    /// PET name (kind = pet).
    #[serde(alias = "petName")]
    pub pet_name: Option<String>,
    /// Folder of the supplemental table (kind = supplemental_table).
    pub folder: Option<String>,
    /// Supplemental table name.
    #[serde(alias = "tableName")]
    pub table_name: Option<String>,
    /// A custom event to trigger for the merged recipients, if any.
    #[serde(alias = "eventName")]
    pub event_name: Option<String>,
    /// Folder of the profile list (for the custom event's recipients).
    #[serde(alias = "listFolder")]
    pub list_folder: String,
    /// Column ← event field. Default by kind.
    pub fields: Option<BTreeMap<String, String>>,
    /// `defaultPermissionStatus` of contacts a merge creates: `OPTOUT` unless the
    /// client explicitly sets `OPTIN` (Connect never opts anyone in by default).
    #[serde(alias = "defaultPermissionStatus")]
    pub default_permission_status: PermissionStatus,
}

/// Responsys permission status of new contacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum PermissionStatus {
    /// Opted out (Responsys' own default).
    #[default]
    #[serde(rename = "OPTOUT", alias = "optout")]
    OptOut,
    /// Opted in: only when the shop collected consent for every event it sends.
    #[serde(rename = "OPTIN", alias = "optin")]
    OptIn,
}

impl PermissionStatus {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            PermissionStatus::OptOut => "OPTOUT",
            PermissionStatus::OptIn => "OPTIN",
        }
    }
}

impl Default for ResponsysTarget {
    fn default() -> Self {
        ResponsysTarget {
            kind: ResponsysKind::ProfileList,
            list_name: "CONTACTS_LIST".into(),
            pet_name: None,
            folder: None,
            table_name: None,
            event_name: None,
            list_folder: "!MageData".into(),
            fields: None,
            default_permission_status: PermissionStatus::OptOut,
        }
    }
}

impl ResponsysTarget {
    /// The target of a client.
    pub fn from_client(client: &ClientConfig) -> Result<Self, String> {
        parse(client)
    }

    /// (column, event field) pairs, the email column first.
    pub fn columns(&self) -> Vec<(String, String)> {
        if let Some(f) = &self.fields {
            return f.iter().map(|(c, e)| (c.clone(), e.clone())).collect();
        }
        let email = match self.kind {
            ResponsysKind::ProfileList => "EMAIL_ADDRESS_",
            // PET and supplemental tables name it without the trailing underscore… the
            // PET still needs the profile-list key `EMAIL_ADDRESS_` in fieldNames.
            ResponsysKind::Pet => "EMAIL_ADDRESS_",
            ResponsysKind::SupplementalTable => "EMAIL_ADDRESS",
        };
        let mut cols = vec![(email.to_owned(), "email".to_owned())];
        if self.kind != ResponsysKind::ProfileList {
            for (c, f) in [
                ("RECORD_ID", "recordId"),
                ("EVENT_TYPE", "eventType"),
                ("EVENT_TS", "receivedAt"),
                ("PRODUCT_ID", "productId"),
                ("PRODUCT_NAME", "productName"),
                ("PRODUCT_PRICE", "productPrice"),
                ("PRODUCT_URL", "productUrl"),
                ("PRODUCT_IMAGE", "productImage"),
            ] {
                cols.push((c.to_owned(), f.to_owned()));
            }
        }
        cols
    }
}

/// SFMC target kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SfmcKind {
    /// Upsert rows into a data extension.
    #[default]
    DataExtension,
    /// Fire a Journey Builder entry event per record.
    Journey,
}

/// SFMC target.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SfmcTarget {
    /// What to write.
    #[serde(alias = "type")]
    pub kind: SfmcKind,
    /// External key of the data extension.
    #[serde(alias = "dataExtensionKey")]
    pub data_extension_key: String,
    /// Event definition key (kind = journey).
    #[serde(alias = "eventDefinitionKey")]
    pub event_definition_key: Option<String>,
    /// Rows per rowset call (≤ 50 by SFMC's best practice).
    #[serde(alias = "batchSize")]
    pub batch_size: usize,
    /// The data extension's primary-key column.
    #[serde(alias = "keyField")]
    pub key_field: String,
    /// Column ← event field. Default: Email, EventType, ProductId, ….
    pub fields: Option<BTreeMap<String, String>>,
    /// Event types that fire the journey (kind = journey); others are skipped. Empty:
    /// none fires — a journey sends the client's own emails, so the types are chosen
    /// explicitly.
    #[serde(alias = "journeyEventTypes")]
    pub journey_event_types: Vec<domain::EventType>,
}

impl Default for SfmcTarget {
    fn default() -> Self {
        SfmcTarget {
            kind: SfmcKind::DataExtension,
            data_extension_key: "ConnectEvents".into(),
            event_definition_key: None,
            batch_size: crate::sfmc::DEFAULT_ROWS_PER_CALL,
            key_field: "RecordId".into(),
            fields: None,
            journey_event_types: Vec::new(),
        }
    }
}

impl SfmcTarget {
    /// The target of a client.
    pub fn from_client(client: &ClientConfig) -> Result<Self, String> {
        let mut t: SfmcTarget = parse(client)?;
        t.batch_size = t.batch_size.clamp(1, crate::sfmc::DEFAULT_ROWS_PER_CALL);
        Ok(t)
    }

    /// (column, event field) pairs.
    pub fn columns(&self) -> Vec<(String, String)> {
        if let Some(f) = &self.fields {
            return f.iter().map(|(c, e)| (c.clone(), e.clone())).collect();
        }
        [
            ("Email", "email"),
            ("EventType", "eventType"),
            ("EventDate", "receivedAt"),
            ("ProductId", "productId"),
            ("ProductName", "productName"),
            ("Price", "productPrice"),
            ("ProductUrl", "productUrl"),
            ("ProductImage", "productImage"),
        ]
        .iter()
        .map(|(c, f)| ((*c).to_owned(), (*f).to_owned()))
        .collect()
    }
}

/// RD Station target.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RdStationTarget {
    /// `conversion_identifier` per event type (default: the event type).
    #[serde(alias = "conversionIdentifiers")]
    pub conversion_identifiers: BTreeMap<String, String>,
    /// `cf_*` custom field ← event field, for CONVERSION events.
    pub fields: Option<BTreeMap<String, String>>,
    /// Currency of e-commerce events.
    pub currency: String,
}

impl Default for RdStationTarget {
    fn default() -> Self {
        RdStationTarget {
            conversion_identifiers: BTreeMap::new(),
            fields: None,
            currency: "BRL".into(),
        }
    }
}

impl RdStationTarget {
    /// The target of a client.
    pub fn from_client(client: &ClientConfig) -> Result<Self, String> {
        parse(client)
    }

    /// (custom field, event field) pairs of CONVERSION payloads.
    pub fn custom_fields(&self) -> Vec<(String, String)> {
        if let Some(f) = &self.fields {
            return f.iter().map(|(c, e)| (c.clone(), e.clone())).collect();
        }
        [
            ("cf_product_id", "productId"),
            ("cf_product_name", "productName"),
            ("cf_product_price", "productPrice"),
            ("cf_product_url", "productUrl"),
        ]
        .iter()
        .map(|(c, f)| ((*c).to_owned(), (*f).to_owned()))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{AllowedOrigins, ClientId, Crm};

    fn client(target: Value) -> ClientConfig {
        ClientConfig {
            client_id: ClientId::parse("shop").expect("id"),
            crm: Crm::RESPONSYS,
            active: true,
            allowed_origins: AllowedOrigins::default(),
            target: Some(target),
            secret_name: None,
            rate_limit_per_second: None,
            policy: domain::ClientPolicy::default(),
        }
    }

    #[test]
    fn nobody_is_opted_in_unless_the_target_says_so() {
        let t = ResponsysTarget::from_client(&client(serde_json::json!({"profile_list": "L"})))
            .expect("target");
        assert_eq!(t.default_permission_status, PermissionStatus::OptOut);
        let t = ResponsysTarget::from_client(&client(
            serde_json::json!({"default_permission_status": "OPTIN"}),
        ))
        .expect("target");
        assert_eq!(t.default_permission_status.as_str(), "OPTIN");
        assert!(
            ResponsysTarget::from_client(&client(
                serde_json::json!({"default_permission_status": "YES"})
            ))
            .is_err()
        );
        let s = SfmcTarget::from_client(&client(
            serde_json::json!({"kind": "journey", "journey_event_types": ["purchase", "lead"]}),
        ))
        .expect("sfmc");
        assert_eq!(
            s.journey_event_types,
            vec![domain::EventType::Purchase, domain::EventType::Lead]
        );
        let mut journey = client(serde_json::json!({"kind": "journey"}));
        journey.crm = Crm::SFMC;
        let err = validate(&journey).expect_err("no event definition key");
        assert!(err.contains("event_definition_key"), "{err}");
    }

    #[test]
    fn conflicting_and_unknown_keys_are_named() {
        let err = validate(&client(
            serde_json::json!({"profile_list": "A", "list_name": "B"}),
        ))
        .expect_err("conflict");
        assert!(err.contains("list_name"), "{err}");
        let err = validate(&client(serde_json::json!({"listname": "A"}))).expect_err("unknown");
        assert!(err.contains("listname"), "{err}");
        validate(&client(serde_json::json!({"kind": "pet", "pet_name": "E"}))).expect("valid");
    }
}
