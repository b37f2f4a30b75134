//! The GTM event: what a tag sends, parsed into validated types.
//!
//! [`GtmEvent::parse`] takes the decoded JSON body and either returns a fully valid event
//! or *every* field error found, so a tag author fixes them all at once.

use crate::crm::Crm;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;

/// Longest email accepted (RFC 5321 path limit).
pub const MAX_EMAIL_LEN: usize = 254;
/// Longest local part (before `@`) of an email (RFC 5321).
pub const MAX_EMAIL_LOCAL_LEN: usize = 64;
/// Longest DNS label of an email domain.
pub const MAX_DOMAIN_LABEL_LEN: usize = 63;
/// Longest `clientId` (the pattern is `[a-z0-9][a-z0-9_-]{0,63}`).
pub const MAX_CLIENT_ID_LEN: usize = 64;
/// Longest `productImage` / `productUrl`.
pub const MAX_URL_LEN: usize = 2048;
/// Longest identifier-like string: `productId`, `eventId`, `tid`.
pub const MAX_ID_LEN: usize = 128;
/// Longest free text: `productName`.
pub const MAX_TEXT_LEN: usize = 512;
/// Highest `productPrice` accepted; above it the value is surely a tagging mistake.
pub const MAX_PRICE: f64 = 1e12;
/// Most extra top-level fields kept under `properties`.
pub const MAX_PROPERTIES: usize = 50;
/// Longest name of an extra field.
pub const MAX_PROPERTY_NAME_LEN: usize = 64;
/// Longest string value of an extra field (in characters).
pub const MAX_PROPERTY_VALUE_LEN: usize = 1024;
/// Most elements in an array value of an extra field (arrays hold scalars only).
pub const MAX_PROPERTY_ARRAY_LEN: usize = 50;
/// Largest serialized size of all extra fields together, in bytes.
pub const MAX_PROPERTIES_BYTES: usize = 8 * 1024;

/// One rule broken by one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// The field's name as sent (`email`, `productPrice`, a property's name, or `body`).
    pub field: String,
    /// A stable machine-readable rule name (`required`, `format`, `max_length`, …).
    pub rule: String,
    /// A sentence for the tag author.
    pub message: String,
}

impl FieldError {
    /// A new field error.
    pub fn new(field: impl Into<String>, rule: &str, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            rule: rule.to_owned(),
            message: message.into(),
        }
    }
}

/// A rule broken by a value, before the field name is known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RuleError {
    /// Stable rule name.
    pub rule: &'static str,
    /// Explanation.
    pub message: String,
}

impl RuleError {
    fn new(rule: &'static str, message: impl Into<String>) -> Self {
        RuleError {
            rule,
            message: message.into(),
        }
    }
    fn at(self, field: &str) -> FieldError {
        FieldError::new(field, self.rule, self.message)
    }
}

macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            /// The validated value.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl TryFrom<String> for $name {
            type Error = RuleError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                $name::parse(&value)
            }
        }
        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

/// A client's id: `[a-z0-9][a-z0-9_-]{0,63}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientId(String);
string_newtype!(ClientId);

impl ClientId {
    /// Parses a client id.
    pub fn parse(s: &str) -> Result<ClientId, RuleError> {
        let mut chars = s.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest_ok =
            chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if s.len() > MAX_CLIENT_ID_LEN || !first_ok || !rest_ok {
            return Err(RuleError::new(
                "format",
                format!(
                    "must match [a-z0-9][a-z0-9_-]{{0,{}}} (lower-case letters, digits, '_' and '-', at most {MAX_CLIENT_ID_LEN} characters)",
                    MAX_CLIENT_ID_LEN - 1
                ),
            ));
        }
        Ok(ClientId(s.to_owned()))
    }
}

/// A shopper's email: trimmed, lower-cased, syntax-checked, at most [`MAX_EMAIL_LEN`].
/// Internationalised addresses (UTF-8 local part and domain) are accepted.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);
string_newtype!(Email);

impl fmt::Debug for Email {
    /// Never the address: a debug print must not leak it into a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Email([redacted])")
    }
}

impl Email {
    /// Parses an email address.
    pub fn parse(raw: &str) -> Result<Email, RuleError> {
        let s = raw.trim().to_lowercase();
        if s.is_empty() {
            return Err(RuleError::new("required", "must not be empty"));
        }
        if s.chars().count() > MAX_EMAIL_LEN {
            return Err(RuleError::new(
                "max_length",
                format!("must be at most {MAX_EMAIL_LEN} characters"),
            ));
        }
        let format = || RuleError::new("format", "must be an email address like name@example.com");
        let (local, domain) = s.split_once('@').ok_or_else(format)?;
        if local.is_empty()
            || local.chars().count() > MAX_EMAIL_LOCAL_LEN
            || domain.contains('@')
            || local.starts_with('.')
            || local.ends_with('.')
            || local.contains("..")
            || !local.chars().all(is_local_char)
        {
            return Err(format());
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2
            || labels.iter().any(|l| {
                l.is_empty()
                    || l.chars().count() > MAX_DOMAIN_LABEL_LEN
                    || l.starts_with('-')
                    || l.ends_with('-')
                    || !l.chars().all(|c| c.is_alphanumeric() || c == '-')
            })
            || labels.last().is_some_and(|tld| tld.chars().count() < 2)
        {
            return Err(format());
        }
        Ok(Email(s))
    }
}

/// Characters allowed in an email's local part: RFC 5322 atext, the dot, and any non-ASCII
/// letter or digit (RFC 6531). Quoted local parts are not accepted.
fn is_local_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+/=?^_`{|}~.-".contains(c)
        || (!c.is_ascii() && c.is_alphanumeric())
}

/// The kinds of event a tag may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A product page was viewed.
    ProductView,
    /// A product was put in the cart.
    AddToCart,
    /// A product was taken out of the cart.
    RemoveFromCart,
    /// A cart was left without buying.
    CartAbandoned,
    /// Checkout started.
    Checkout,
    /// An order was placed.
    Purchase,
    /// Any page was viewed.
    PageView,
    /// A lead form was submitted.
    Lead,
    /// A search was made.
    Search,
}

impl EventType {
    /// Every event type, in documentation order.
    pub const ALL: [EventType; 9] = [
        EventType::ProductView,
        EventType::AddToCart,
        EventType::RemoveFromCart,
        EventType::CartAbandoned,
        EventType::Checkout,
        EventType::Purchase,
        EventType::PageView,
        EventType::Lead,
        EventType::Search,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ProductView => "product_view",
            EventType::AddToCart => "add_to_cart",
            EventType::RemoveFromCart => "remove_from_cart",
            EventType::CartAbandoned => "cart_abandoned",
            EventType::Checkout => "checkout",
            EventType::Purchase => "purchase",
            EventType::PageView => "page_view",
            EventType::Lead => "lead",
            EventType::Search => "search",
        }
    }

    /// Navigation events: browsing, not a conversion. By default they update known
    /// contacts only and never create one.
    pub fn is_navigation(self) -> bool {
        matches!(
            self,
            EventType::ProductView
                | EventType::PageView
                | EventType::Search
                | EventType::AddToCart
                | EventType::RemoveFromCart
        )
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Result<EventType, RuleError> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let allowed: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                RuleError::new("one_of", format!("must be one of: {}", allowed.join(", ")))
            })
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An absolute `http`/`https` URL of at most [`MAX_URL_LEN`] characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HttpUrl(String);
string_newtype!(HttpUrl);

impl HttpUrl {
    /// Parses a URL.
    pub fn parse(s: &str) -> Result<HttpUrl, RuleError> {
        let s = s.trim();
        if s.len() > MAX_URL_LEN {
            return Err(RuleError::new(
                "max_length",
                format!("must be at most {MAX_URL_LEN} characters"),
            ));
        }
        let ok = crate::client::http_authority(s).is_some()
            && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            return Err(RuleError::new(
                "url",
                "must be an absolute http(s) URL like https://shop.example/p/1",
            ));
        }
        Ok(HttpUrl(s.to_owned()))
    }
}

/// A bounded single-line string (identifiers and names).
fn bounded_text(s: &str, max: usize) -> Result<String, RuleError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(RuleError::new("required", "must not be empty"));
    }
    if s.chars().count() > max {
        return Err(RuleError::new(
            "max_length",
            format!("must be at most {max} characters"),
        ));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(RuleError::new(
            "format",
            "must not contain control characters",
        ));
    }
    Ok(s.to_owned())
}

/// A product price: finite, ≥ 0, ≤ [`MAX_PRICE`]. Accepts JSON numbers and numeric strings,
/// including a Brazilian decimal comma (`"199,90"`).
pub fn parse_price(value: &Value) -> Result<f64, RuleError> {
    let n = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => {
            let t = s.trim();
            let t = if t.contains(',') && !t.contains('.') && t.matches(',').count() == 1 {
                t.replace(',', ".")
            } else {
                t.to_owned()
            };
            t.parse::<f64>().ok()
        }
        _ => None,
    };
    let n = n.ok_or_else(|| {
        RuleError::new("number", "must be a number or a numeric string like 199.90")
    })?;
    if !n.is_finite() {
        return Err(RuleError::new("finite", "must be a finite number"));
    }
    if n < 0.0 {
        return Err(RuleError::new("minimum", "must be 0 or more"));
    }
    if n > MAX_PRICE {
        return Err(RuleError::new(
            "maximum",
            format!("must be at most {MAX_PRICE:e}"),
        ));
    }
    Ok(n)
}

/// A validated GTM event, as a tag sent it (before the client is resolved).
#[derive(Debug, Clone, PartialEq)]
pub struct GtmEvent {
    /// The client, when the tag named it.
    pub client_id: Option<ClientId>,
    /// The shopper.
    pub email: Email,
    /// What happened.
    pub event_type: EventType,
    /// Product SKU or id.
    pub product_id: Option<String>,
    /// Product name.
    pub product_name: Option<String>,
    /// Product price.
    pub product_price: Option<f64>,
    /// Product image URL.
    pub product_image: Option<HttpUrl>,
    /// Product page URL.
    pub product_url: Option<HttpUrl>,
    /// GA4 client id (`GA4.1.123.456` style).
    pub tid: Option<String>,
    /// The tag's idempotency key.
    pub event_id: Option<String>,
    /// Every other top-level field, bounded.
    pub properties: Map<String, Value>,
    /// The shop's signature (`sig` + `sigExp`), checked against the client's key once
    /// the client is known; never stored.
    pub signature: Option<EventSignature>,
    /// The shopper's marketing consent as the shop knows it (`consent`: `granted` /
    /// `denied`, or a boolean; GTM Consent Mode's `ad_user_data` fills it). `None`: not
    /// sent.
    pub consent: Option<bool>,
}

/// `sig` and `sigExp` of a signed event (see [`crate::signature`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSignature {
    /// Hex HMAC-SHA256.
    pub sig: String,
    /// Expiry, epoch seconds.
    pub expires: i64,
}

/// Longest `sig` accepted (a SHA-256 HMAC is 64 hex digits).
pub const MAX_SIGNATURE_LEN: usize = 128;

/// The fields with a meaning of their own; any other top-level field is a property.
pub const KNOWN_FIELDS: [&str; 13] = [
    "clientId",
    "email",
    "eventType",
    "productId",
    "productName",
    "productPrice",
    "productImage",
    "productUrl",
    "tid",
    "eventId",
    "sig",
    "sigExp",
    "consent",
];

/// Why a request body is not an event.
#[derive(Debug)]
pub enum EventParseError {
    /// Not JSON (the error has the line and column).
    Malformed(serde_json::Error),
    /// JSON, but not a valid event: every field error found.
    Invalid(Vec<FieldError>),
}

fn not_an_object() -> Vec<FieldError> {
    vec![FieldError::new(
        "body",
        "object",
        "must be a JSON object like {\"email\": …, \"eventType\": …}",
    )]
}

impl GtmEvent {
    /// Parses a decoded JSON body sent to `crm`'s route. Returns every field error found.
    pub fn parse(crm: Crm, body: Value) -> Result<GtmEvent, Vec<FieldError>> {
        let Value::Object(obj) = body else {
            return Err(not_an_object());
        };
        let mut fields = Fields::default();
        for (name, value) in obj {
            fields.put(Cow::Owned(name), Raw::from(value));
        }
        GtmEvent::from_fields(crm, fields)
    }

    /// Parses a request body: [`GtmEvent::parse`] without building a JSON tree of the
    /// whole body first — the known fields are read straight into their slots, their
    /// strings borrowed from `body` when they have no escapes. Same answers, same field
    /// errors, in the same order.
    pub fn parse_json(crm: Crm, body: &[u8]) -> Result<GtmEvent, EventParseError> {
        match serde_json::from_slice::<Body<'_>>(body) {
            Err(e) => Err(EventParseError::Malformed(e)),
            Ok(Body(None)) => Err(EventParseError::Invalid(not_an_object())),
            Ok(Body(Some(fields))) => {
                GtmEvent::from_fields(crm, fields).map_err(EventParseError::Invalid)
            }
        }
    }

    fn from_fields(crm: Crm, fields: Fields<'_>) -> Result<GtmEvent, Vec<FieldError>> {
        let Fields { mut known, rest } = fields;
        let mut errors = Vec::new();
        let mut take = |name: &str| {
            KNOWN_FIELDS
                .iter()
                .position(|f| *f == name)
                .and_then(|i| known[i].take())
        };
        let client_id = take("clientId");
        let email = take("email");
        let event_type = take("eventType");
        let product_id = take("productId");
        let product_name = take("productName");
        let product_price = take("productPrice");
        let product_image = take("productImage");
        let product_url = take("productUrl");
        let tid = take("tid");
        let event_id = take("eventId");
        let sig = take("sig");
        let sig_exp = take("sigExp");
        let consent = take("consent");

        let client_id = match client_id {
            None if crm.requires_client_id() => {
                errors.push(FieldError::new(
                    "clientId",
                    "required",
                    format!("is required on {}", crm.route()),
                ));
                None
            }
            None => None,
            Some(v) => string_field(&mut errors, "clientId", v, ClientId::parse),
        };
        let email = match email {
            None => {
                errors.push(FieldError::new("email", "required", "is required"));
                None
            }
            Some(v) => string_field(&mut errors, "email", v, Email::parse),
        };
        let event_type = match event_type {
            None => {
                let allowed: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                errors.push(FieldError::new(
                    "eventType",
                    "required",
                    format!("is required; one of: {}", allowed.join(", ")),
                ));
                None
            }
            Some(v) => string_field(&mut errors, "eventType", v, EventType::parse),
        };
        let id_field = |errors: &mut Vec<FieldError>, name: &str, v: Option<Raw<'_>>| {
            v.and_then(|v| string_or_number_field(errors, name, v, |s| bounded_text(s, MAX_ID_LEN)))
        };
        let product_id = id_field(&mut errors, "productId", product_id);
        let event_id = id_field(&mut errors, "eventId", event_id);
        let tid = id_field(&mut errors, "tid", tid);
        if tid.is_none() && !crm.requires_client_id() && !errors.iter().any(|e| e.field == "tid") {
            errors.push(FieldError::new(
                "tid",
                "required",
                format!(
                    "is required on {} (the client is found from it)",
                    crm.route()
                ),
            ));
        }
        let product_name = product_name.and_then(|v| {
            string_or_number_field(&mut errors, "productName", v, |s| {
                bounded_text(s, MAX_TEXT_LEN)
            })
        });
        let product_price = product_price.and_then(|v| match parse_price(&v.into_value()) {
            Ok(p) => Some(p),
            Err(e) => {
                errors.push(e.at("productPrice"));
                None
            }
        });
        let product_image = product_image
            .and_then(|v| string_field(&mut errors, "productImage", v, HttpUrl::parse));
        let product_url =
            product_url.and_then(|v| string_field(&mut errors, "productUrl", v, HttpUrl::parse));

        let signature = parse_signature(sig, sig_exp, &mut errors);
        let consent = consent.and_then(|v| {
            let parsed = match &v.into_value() {
                Value::Bool(b) => Some(*b),
                Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                    "granted" | "true" | "yes" | "1" => Some(true),
                    "denied" | "false" | "no" | "0" => Some(false),
                    _ => None,
                },
                _ => None,
            };
            if parsed.is_none() {
                errors.push(FieldError::new(
                    "consent",
                    "one_of",
                    "must be granted or denied (or a boolean)",
                ));
            }
            parsed
        });
        let properties = parse_properties(rest, &mut errors);

        match (email, event_type) {
            (Some(email), Some(event_type)) if errors.is_empty() => Ok(GtmEvent {
                client_id,
                email,
                event_type,
                product_id,
                product_name,
                product_price,
                product_image,
                product_url,
                tid,
                event_id,
                properties,
                signature,
                consent,
            }),
            _ => Err(errors),
        }
    }
}

fn parse_signature(
    sig: Option<Raw<'_>>,
    sig_exp: Option<Raw<'_>>,
    errors: &mut Vec<FieldError>,
) -> Option<EventSignature> {
    let sig = sig.and_then(|v| {
        string_field(errors, "sig", v, |s| {
            let s = s.trim();
            if s.is_empty() || s.len() > MAX_SIGNATURE_LEN || !s.chars().all(|c| c.is_ascii_hexdigit())
            {
                Err(RuleError::new(
                    "format",
                    format!("must be the hex HMAC-SHA256 signature (at most {MAX_SIGNATURE_LEN} hex digits)"),
                ))
            } else {
                Ok(s.to_owned())
            }
        })
    });
    let expires = sig_exp.and_then(|v| {
        let n = match &v.into_value() {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if n > 0 => Some(n),
            _ => {
                errors.push(FieldError::new(
                    "sigExp",
                    "integer",
                    "must be the signature's expiry in epoch seconds, like 1900000000",
                ));
                None
            }
        }
    });
    match (sig, expires) {
        (Some(sig), Some(expires)) => Some(EventSignature { sig, expires }),
        (Some(_), None) if !errors.iter().any(|e| e.field == "sigExp") => {
            errors.push(FieldError::new(
                "sigExp",
                "required",
                "is required with sig",
            ));
            None
        }
        (None, Some(_)) if !errors.iter().any(|e| e.field == "sig") => {
            errors.push(FieldError::new(
                "sig",
                "required",
                "is required with sigExp",
            ));
            None
        }
        _ => None,
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string_field<T>(
    errors: &mut Vec<FieldError>,
    name: &str,
    v: Raw<'_>,
    parse: impl FnOnce(&str) -> Result<T, RuleError>,
) -> Option<T> {
    match v {
        Raw::Str(s) => match parse(&s) {
            Ok(t) => Some(t),
            Err(e) => {
                errors.push(e.at(name));
                None
            }
        },
        other => {
            errors.push(FieldError::new(
                name,
                "type",
                format!("must be a string, not {}", other.type_name()),
            ));
            None
        }
    }
}

/// Identifiers are often numbers in data layers (`"productId": 12345`): accept both.
fn string_or_number_field<T>(
    errors: &mut Vec<FieldError>,
    name: &str,
    v: Raw<'_>,
    parse: impl FnOnce(&str) -> Result<T, RuleError>,
) -> Option<T> {
    match v {
        Raw::Num(n) => string_field(errors, name, Raw::Str(Cow::Owned(n.to_string())), parse),
        other => string_field(errors, name, other, parse),
    }
}

/// A top-level value of an event body before validation: a string (borrowed from the
/// body when it has no escapes), a number, a boolean, null, or an array or object (boxed:
/// rare, and the slots stay small).
enum Raw<'a> {
    Str(Cow<'a, str>),
    Num(serde_json::Number),
    Bool(bool),
    Null,
    Other(Box<Value>),
}

impl Raw<'_> {
    fn into_value(self) -> Value {
        match self {
            Raw::Str(s) => Value::String(s.into_owned()),
            Raw::Num(n) => Value::Number(n),
            Raw::Bool(b) => Value::Bool(b),
            Raw::Null => Value::Null,
            Raw::Other(v) => *v,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Raw::Str(_) => "a string",
            Raw::Num(_) => "a number",
            Raw::Bool(_) => "a boolean",
            Raw::Null => "null",
            Raw::Other(v) => type_name(v),
        }
    }
}

impl From<Value> for Raw<'static> {
    fn from(v: Value) -> Self {
        match v {
            Value::String(s) => Raw::Str(Cow::Owned(s)),
            Value::Number(n) => Raw::Num(n),
            Value::Bool(b) => Raw::Bool(b),
            Value::Null => Raw::Null,
            other => Raw::Other(Box::new(other)),
        }
    }
}

impl<'de> Deserialize<'de> for Raw<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

/// Visits any JSON value: strings become [`Raw::Str`], everything else a [`Value`].
struct RawVisitor;

impl<'de> serde::de::Visitor<'de> for RawVisitor {
    type Value = Raw<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw<'de>, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw<'de>, E> {
        Ok(Raw::Num(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw<'de>, E> {
        Ok(Raw::Num(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw<'de>, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Raw::Null, Raw::Num))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Raw<'de>, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Raw<'de>, E> {
        Ok(Raw::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Raw<'de>, A::Error> {
        let v = Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Raw::Other(Box::new(v)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Raw<'de>, A::Error> {
        let v = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(Raw::Other(Box::new(v)))
    }
}

/// An event object split into its known fields (in [`KNOWN_FIELDS`] order) and the
/// other fields (the properties, in the order sent). A repeated name keeps its last
/// value, as a JSON object read into a map does.
#[derive(Default)]
struct Fields<'a> {
    known: [Option<Raw<'a>>; KNOWN_FIELDS.len()],
    rest: Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn put(&mut self, name: Cow<'_, str>, value: Raw<'a>) {
        match KNOWN_FIELDS.iter().position(|f| *f == name) {
            Some(i) => {
                self.known[i] = match value {
                    Raw::Null => None,
                    v => Some(v),
                };
            }
            None => {
                self.rest.insert(name.into_owned(), value.into_value());
            }
        }
    }
}

/// A request body: an event object (`Some`), or any other JSON value.
struct Body<'a>(Option<Fields<'a>>);

impl<'de> Deserialize<'de> for Body<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BodyVisitor;
        impl<'de> serde::de::Visitor<'de> for BodyVisitor {
            type Value = Body<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Body<'de>, A::Error> {
                let mut fields = Fields::default();
                while let Some(Key(name)) = map.next_key::<Key<'de>>()? {
                    let value: Raw<'de> = map.next_value()?;
                    fields.put(name, value);
                }
                Ok(Body(Some(fields)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                seq: A,
            ) -> Result<Body<'de>, A::Error> {
                // Read as a tree, not skipped: the same recursion limit as the tree path.
                Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
                Ok(Body(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Body<'de>, E> {
                Ok(Body(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Body<'de>, E> {
                Ok(Body(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Body<'de>, E> {
                Ok(Body(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Body<'de>, E> {
                Ok(Body(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Body<'de>, E> {
                Ok(Body(None))
            }
            fn visit_unit<E>(self) -> Result<Body<'de>, E> {
                Ok(Body(None))
            }
            fn visit_none<E>(self) -> Result<Body<'de>, E> {
                Ok(Body(None))
            }
        }
        d.deserialize_any(BodyVisitor)
    }
}

/// An object key, borrowed from the body when it has no escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> serde::de::Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

fn parse_properties(obj: Map<String, Value>, errors: &mut Vec<FieldError>) -> Map<String, Value> {
    if obj.len() > MAX_PROPERTIES {
        errors.push(FieldError::new(
            "properties",
            "max_properties",
            format!(
                "at most {MAX_PROPERTIES} extra fields are kept; this event has {}",
                obj.len()
            ),
        ));
        return Map::new();
    }
    let mut kept = Map::new();
    for (name, value) in obj {
        if name.is_empty()
            || name.chars().count() > MAX_PROPERTY_NAME_LEN
            || name.chars().any(|c| c.is_control())
        {
            // An empty name cannot name itself: the error names the extra fields.
            let field = if name.is_empty() {
                "properties".to_owned()
            } else {
                truncate(&name, MAX_PROPERTY_NAME_LEN)
            };
            errors.push(FieldError::new(
                field,
                "property_name",
                format!(
                    "extra field names must be 1 to {MAX_PROPERTY_NAME_LEN} printable characters"
                ),
            ));
            continue;
        }
        match check_property_value(&value) {
            Ok(()) => {
                kept.insert(name, value);
            }
            Err(e) => errors.push(e.at(&name)),
        }
    }
    let size = serde_json::to_string(&kept).map_or(0, |s| s.len());
    if size > MAX_PROPERTIES_BYTES {
        errors.push(FieldError::new(
            "properties",
            "max_size",
            format!(
                "extra fields take {size} bytes; at most {MAX_PROPERTIES_BYTES} bytes are kept"
            ),
        ));
    }
    kept
}

fn check_property_value(v: &Value) -> Result<(), RuleError> {
    match v {
        Value::Object(_) => Err(RuleError::new(
            "nested_object",
            "nested objects are not accepted; send flat fields (e.g. \"cartId\": \"c-1\")",
        )),
        Value::String(s) if s.chars().count() > MAX_PROPERTY_VALUE_LEN => Err(RuleError::new(
            "max_length",
            format!("must be at most {MAX_PROPERTY_VALUE_LEN} characters"),
        )),
        Value::Number(n) if n.as_f64().is_none_or(|f| !f.is_finite()) => {
            Err(RuleError::new("finite", "must be a finite number"))
        }
        Value::Array(items) => {
            if items.len() > MAX_PROPERTY_ARRAY_LEN {
                return Err(RuleError::new(
                    "max_items",
                    format!("arrays hold at most {MAX_PROPERTY_ARRAY_LEN} items"),
                ));
            }
            for item in items {
                if matches!(item, Value::Array(_) | Value::Object(_)) {
                    return Err(RuleError::new(
                        "nested_object",
                        "arrays may hold only strings, numbers, booleans or null",
                    ));
                }
                check_property_value(item)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}
