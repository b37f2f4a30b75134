//! Request parsing and validation: bytes as a tag (or an attacker) would post them →
//! JSON → `GtmEvent::parse` on each route. Invariants: no panic; an accepted event is
//! normalised and bounded; a refused one names at least one field; `parse_json` (the
//! request path, no JSON tree) answers exactly as `parse` of the JSON tree.
#![no_main]

use domain::Crm;
use domain::event::{EventParseError, GtmEvent, MAX_EMAIL_LEN, MAX_PROPERTIES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        for crm in Crm::all() {
            assert!(matches!(
                GtmEvent::parse_json(crm, body),
                Err(EventParseError::Malformed(_))
            ));
        }
        return;
    };
    for crm in Crm::all() {
        let direct = GtmEvent::parse_json(crm, body);
        match (GtmEvent::parse(crm, value.clone()), &direct) {
            (Ok(a), Ok(b)) => assert_eq!(&a, b),
            (Err(a), Err(EventParseError::Invalid(b))) => assert_eq!(&a, b),
            (a, b) => panic!("parse {a:?} but parse_json {b:?}"),
        }
        match GtmEvent::parse(crm, value.clone()) {
            Ok(event) => {
                let email = event.email.as_str();
                assert_eq!(email, email.trim().to_lowercase());
                assert!(email.chars().count() <= MAX_EMAIL_LEN);
                assert!(event.properties.len() <= MAX_PROPERTIES);
                assert!(!crm.requires_client_id() || event.client_id.is_some());
            }
            Err(errors) => {
                assert!(!errors.is_empty());
                assert!(
                    errors
                        .iter()
                        .all(|e| !e.field.is_empty() && !e.rule.is_empty())
                );
            }
        }
    }
});
