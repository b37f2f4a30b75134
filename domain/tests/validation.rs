//! Table tests of every validation rule of the GTM event, valid and invalid.

use domain::event::{EventParseError, MAX_PROPERTIES, parse_price};
use domain::{Crm, EventType, GtmEvent};
use serde_json::{Value, json};

fn base() -> Value {
    json!({"clientId": "client-abc", "email": "ana@example.com", "eventType": "product_view"})
}

fn with(field: &str, value: Value) -> Value {
    let mut v = base();
    v[field] = value;
    v
}

/// (case name, body, expected failing field and rule — or None when valid)
type Case<'a> = (&'a str, Value, Option<(&'a str, &'a str)>);

fn check(crm: Crm, cases: Vec<Case<'_>>) {
    for (name, body, expected) in cases {
        let bytes = serde_json::to_vec(&body).expect("json");
        let result = GtmEvent::parse(crm, body);
        assert_same(crm, &bytes, name);
        match (expected, result) {
            (None, Ok(_)) => {}
            (None, Err(errors)) => panic!("{name}: expected valid, got {errors:?}"),
            (Some((field, rule)), Ok(_)) => {
                panic!("{name}: expected {field}/{rule}, got a valid event")
            }
            (Some((field, rule)), Err(errors)) => {
                assert!(
                    errors.iter().any(|e| e.field == field && e.rule == rule),
                    "{name}: expected {field}/{rule}, got {errors:?}"
                );
                for e in &errors {
                    assert!(!e.message.is_empty(), "{name}: empty message");
                }
            }
        }
    }
}

#[test]
fn email_rules() {
    let long_local = "a".repeat(65);
    let long_total = format!("{}@{}.com", "a".repeat(60), "b".repeat(200));
    check(
        Crm::RESPONSYS,
        vec![
            ("plain", with("email", json!("ana@example.com")), None),
            (
                "trim+case",
                with("email", json!("  Ana.Silva@Example.COM ")),
                None,
            ),
            (
                "plus",
                with("email", json!("ana+promo@example.com.br")),
                None,
            ),
            (
                "unicode local",
                with("email", json!("joão@exemplo.com.br")),
                None,
            ),
            (
                "unicode domain",
                with("email", json!("ana@exemplo-ação.com.br")),
                None,
            ),
            ("cyrillic", with("email", json!("иван@пример.рф")), None),
            (
                "missing",
                json!({"clientId": "c1", "eventType": "lead"}),
                Some(("email", "required")),
            ),
            (
                "null",
                with("email", Value::Null),
                Some(("email", "required")),
            ),
            (
                "empty",
                with("email", json!("   ")),
                Some(("email", "required")),
            ),
            ("number", with("email", json!(42)), Some(("email", "type"))),
            (
                "no at",
                with("email", json!("ana.example.com")),
                Some(("email", "format")),
            ),
            (
                "two at",
                with("email", json!("a@b@example.com")),
                Some(("email", "format")),
            ),
            (
                "no tld",
                with("email", json!("ana@localhost")),
                Some(("email", "format")),
            ),
            (
                "short tld",
                with("email", json!("ana@example.c")),
                Some(("email", "format")),
            ),
            (
                "space inside",
                with("email", json!("a na@example.com")),
                Some(("email", "format")),
            ),
            (
                "double dot",
                with("email", json!("a..na@example.com")),
                Some(("email", "format")),
            ),
            (
                "leading dot",
                with("email", json!(".ana@example.com")),
                Some(("email", "format")),
            ),
            (
                "empty label",
                with("email", json!("ana@example..com")),
                Some(("email", "format")),
            ),
            (
                "hyphen label",
                with("email", json!("ana@-example.com")),
                Some(("email", "format")),
            ),
            (
                "local too long",
                with("email", json!(format!("{long_local}@example.com"))),
                Some(("email", "format")),
            ),
            (
                "too long",
                with("email", json!(long_total)),
                Some(("email", "max_length")),
            ),
            (
                "control",
                with("email", json!("ana\u{0007}@example.com")),
                Some(("email", "format")),
            ),
        ],
    );
    let ev =
        GtmEvent::parse(Crm::RESPONSYS, with("email", json!("  Ana@Example.COM "))).expect("valid");
    assert_eq!(ev.email.as_str(), "ana@example.com");
    assert!(
        !format!("{:?}", ev.email).contains("ana"),
        "Debug must not print the email"
    );
}

#[test]
fn event_type_rules() {
    let mut cases: Vec<Case<'_>> = EventType::ALL
        .iter()
        .map(|t| ("each type", with("eventType", json!(t.as_str())), None))
        .collect();
    cases.push((
        "unknown",
        with("eventType", json!("purchased")),
        Some(("eventType", "one_of")),
    ));
    cases.push((
        "case",
        with("eventType", json!("Purchase")),
        Some(("eventType", "one_of")),
    ));
    cases.push((
        "missing",
        json!({"clientId": "c1", "email": "a@b.co"}),
        Some(("eventType", "required")),
    ));
    cases.push((
        "array",
        with("eventType", json!(["lead"])),
        Some(("eventType", "type")),
    ));
    check(Crm::SFMC, cases);
    let errors = GtmEvent::parse(Crm::SFMC, with("eventType", json!("nope"))).expect_err("invalid");
    assert!(errors[0].message.contains("product_view") && errors[0].message.contains("search"));
}

#[test]
fn client_id_rules() {
    check(
        Crm::RESPONSYS,
        vec![
            ("ok", with("clientId", json!("client-abc_1")), None),
            ("digit first", with("clientId", json!("9shop")), None),
            ("64 chars", with("clientId", json!("a".repeat(64))), None),
            (
                "65 chars",
                with("clientId", json!("a".repeat(65))),
                Some(("clientId", "format")),
            ),
            (
                "upper",
                with("clientId", json!("Client")),
                Some(("clientId", "format")),
            ),
            (
                "dash first",
                with("clientId", json!("-shop")),
                Some(("clientId", "format")),
            ),
            (
                "space",
                with("clientId", json!("my shop")),
                Some(("clientId", "format")),
            ),
            (
                "empty",
                with("clientId", json!("")),
                Some(("clientId", "format")),
            ),
            (
                "number",
                with("clientId", json!(12)),
                Some(("clientId", "type")),
            ),
            (
                "missing",
                json!({"email": "a@b.co", "eventType": "lead"}),
                Some(("clientId", "required")),
            ),
        ],
    );
    // /rdstation finds the client from tid: clientId is optional, tid required.
    check(
        Crm::RDSTATION,
        vec![
            (
                "tid only",
                json!({"email": "a@b.co", "eventType": "lead", "tid": "GA4.1.2"}),
                None,
            ),
            (
                "no tid",
                json!({"email": "a@b.co", "eventType": "lead"}),
                Some(("tid", "required")),
            ),
            (
                "empty tid",
                json!({"email": "a@b.co", "eventType": "lead", "tid": ""}),
                Some(("tid", "required")),
            ),
        ],
    );
}

#[test]
fn url_rules() {
    check(
        Crm::RESPONSYS,
        vec![
            (
                "https",
                with("productUrl", json!("https://shop.example/p/1?x=1")),
                None,
            ),
            (
                "http",
                with("productImage", json!("http://cdn.example/i.jpg")),
                None,
            ),
            (
                "port",
                with("productUrl", json!("https://shop.example:8443/p")),
                None,
            ),
            (
                "relative",
                with("productUrl", json!("/p/1")),
                Some(("productUrl", "url")),
            ),
            (
                "upper-case scheme",
                with("productUrl", json!("HTTPS://Shop.example/p/1")),
                None,
            ),
            (
                "mixed-case http",
                with("productImage", json!("hTtP://cdn.example/i.jpg")),
                None,
            ),
            (
                "scheme only, upper case",
                with("productUrl", json!("HTTPS://")),
                Some(("productUrl", "url")),
            ),
            (
                "non-ASCII before the scheme's end",
                with("productUrl", json!("httpü://shop.example")),
                Some(("productUrl", "url")),
            ),
            (
                "ftp",
                with("productImage", json!("ftp://cdn.example/i.jpg")),
                Some(("productImage", "url")),
            ),
            (
                "js",
                with("productUrl", json!("javascript:alert(1)")),
                Some(("productUrl", "url")),
            ),
            (
                "no host",
                with("productUrl", json!("https:///p")),
                Some(("productUrl", "url")),
            ),
            (
                "space",
                with("productUrl", json!("https://shop.example/a b")),
                Some(("productUrl", "url")),
            ),
            (
                "2048",
                with(
                    "productUrl",
                    json!(format!("https://s.example/{}", "a".repeat(2048 - 18))),
                ),
                None,
            ),
            (
                "2049",
                with(
                    "productUrl",
                    json!(format!("https://s.example/{}", "a".repeat(2049 - 18))),
                ),
                Some(("productUrl", "max_length")),
            ),
            (
                "number",
                with("productUrl", json!(1)),
                Some(("productUrl", "type")),
            ),
        ],
    );
}

#[test]
fn price_rules() {
    check(
        Crm::RESPONSYS,
        vec![
            ("number", with("productPrice", json!(1299.9)), None),
            ("zero", with("productPrice", json!(0)), None),
            ("integer", with("productPrice", json!(10)), None),
            (
                "numeric string",
                with("productPrice", json!("199.90")),
                None,
            ),
            ("comma decimal", with("productPrice", json!("199,90")), None),
            ("null", with("productPrice", Value::Null), None),
            (
                "negative",
                with("productPrice", json!(-1)),
                Some(("productPrice", "minimum")),
            ),
            (
                "huge",
                with("productPrice", json!(1e300)),
                Some(("productPrice", "maximum")),
            ),
            (
                "huge string",
                with("productPrice", json!("1e400")),
                Some(("productPrice", "finite")),
            ),
            (
                "nan string",
                with("productPrice", json!("NaN")),
                Some(("productPrice", "finite")),
            ),
            (
                "text",
                with("productPrice", json!("cheap")),
                Some(("productPrice", "number")),
            ),
            (
                "bool",
                with("productPrice", json!(true)),
                Some(("productPrice", "number")),
            ),
            (
                "thousands",
                with("productPrice", json!("1.299,90")),
                Some(("productPrice", "number")),
            ),
        ],
    );
    assert_eq!(parse_price(&json!("199,90")), Ok(199.9));
    assert_eq!(parse_price(&json!(" 12.5 ")), Ok(12.5));
}

#[test]
fn bounded_strings() {
    check(
        Crm::RESPONSYS,
        vec![
            ("numeric product id", with("productId", json!(12345)), None),
            ("id 128", with("productId", json!("x".repeat(128))), None),
            (
                "id 129",
                with("productId", json!("x".repeat(129))),
                Some(("productId", "max_length")),
            ),
            (
                "event id 129",
                with("eventId", json!("x".repeat(129))),
                Some(("eventId", "max_length")),
            ),
            (
                "name 512 unicode",
                with("productName", json!("é".repeat(512))),
                None,
            ),
            (
                "name 513",
                with("productName", json!("é".repeat(513))),
                Some(("productName", "max_length")),
            ),
            (
                "name control",
                with("productName", json!("a\nb")),
                Some(("productName", "format")),
            ),
            (
                "tid object",
                with("tid", json!({"a": 1})),
                Some(("tid", "type")),
            ),
        ],
    );
}

#[test]
fn properties_rules() {
    let mut fifty = base();
    let mut fifty_one = base();
    for i in 0..MAX_PROPERTIES {
        fifty[format!("p{i}")] = json!(i);
        fifty_one[format!("p{i}")] = json!(i);
    }
    fifty_one["p50"] = json!(50);
    let mut too_big = base();
    for i in 0..10 {
        too_big[format!("k{i}")] = json!("v".repeat(1000));
    }
    check(
        Crm::RESPONSYS,
        vec![
            ("kept", with("cartId", json!("c-58f1")), None),
            ("scalars", with("flags", json!([1, "a", true, null])), None),
            ("50 properties", fifty, None),
            (
                "51 properties",
                fifty_one,
                Some(("properties", "max_properties")),
            ),
            (
                "nested object",
                with("cart", json!({"id": 1})),
                Some(("cart", "nested_object")),
            ),
            (
                "array of objects",
                with("items", json!([{"sku": 1}])),
                Some(("items", "nested_object")),
            ),
            (
                "long value",
                with("note", json!("x".repeat(1025))),
                Some(("note", "max_length")),
            ),
            (
                "long name",
                with(&"n".repeat(65), json!(1)),
                Some((
                    "nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn",
                    "property_name",
                )),
            ),
            ("total size", too_big, Some(("properties", "max_size"))),
        ],
    );
    let ev = GtmEvent::parse(Crm::RESPONSYS, with("cartId", json!("c-58f1"))).expect("valid");
    assert_eq!(ev.properties.get("cartId"), Some(&json!("c-58f1")));
    assert!(!ev.properties.contains_key("email"));
}

#[test]
fn every_error_is_reported_together() {
    let errors = GtmEvent::parse(
        Crm::RESPONSYS,
        json!({"clientId": "BAD", "email": "nope", "eventType": "x", "productPrice": -2, "cart": {}}),
    )
    .expect_err("invalid");
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    for f in ["clientId", "email", "eventType", "productPrice", "cart"] {
        assert!(fields.contains(&f), "{f} missing from {fields:?}");
    }
}

#[test]
fn body_must_be_an_object() {
    for body in [json!([1]), json!("x"), json!(1), Value::Null] {
        let errors = GtmEvent::parse(Crm::RESPONSYS, body).expect_err("invalid");
        assert_eq!(errors[0].field, "body");
        assert_eq!(errors[0].rule, "object");
    }
}

/// Found by `cargo fuzz` (fuzz/corpus/gtm_event): an extra field with an empty name gave
/// an error naming an empty field.
#[test]
fn an_extra_field_without_a_name_is_named_in_the_error() {
    let errors = domain::GtmEvent::parse(
        domain::Crm::RESPONSYS,
        serde_json::json!({"": "nope", "clientId": "shop", "email": "a@b.co", "eventType": "lead"}),
    )
    .expect_err("invalid");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field, "properties");
    assert_eq!(errors[0].rule, "property_name");
}

/// `parse_json` (the request path: no JSON tree of the body) answers exactly as `parse` of
/// the body's JSON tree: the same event, the same field errors in the same order, the
/// same syntax error.
fn assert_same(crm: Crm, body: &[u8], name: &str) {
    let direct = GtmEvent::parse_json(crm, body);
    match serde_json::from_slice::<Value>(body) {
        Err(tree_error) => match direct {
            Err(EventParseError::Malformed(e)) => {
                assert_eq!(e.to_string(), tree_error.to_string(), "{name}");
                assert_eq!(
                    (e.line(), e.column()),
                    (tree_error.line(), tree_error.column())
                );
            }
            other => panic!("{name}: the tree says malformed ({tree_error}), parse_json {other:?}"),
        },
        Ok(value) => match (GtmEvent::parse(crm, value), direct) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b, "{name}");
                // Same properties in the same order (map equality ignores order).
                let keys = |e: &GtmEvent| e.properties.keys().cloned().collect::<Vec<_>>();
                assert_eq!(keys(&a), keys(&b), "{name}");
            }
            (Err(a), Err(EventParseError::Invalid(b))) => assert_eq!(a, b, "{name}"),
            (a, b) => panic!("{name}: parse {a:?}, parse_json {b:?}"),
        },
    }
}

#[test]
fn parse_json_answers_as_parse_of_the_json_tree() {
    let bodies: &[&str] = &[
        r#"{"clientId":"client-abc","email":"ana@example.com","eventType":"product_view"}"#,
        // Escapes in values and in names (owned, not borrowed, strings).
        r#"{"clientId":"client-abc","email":"ana\u0040example.com","e\u0076entType":"lead"}"#,
        r#"{"clientId":"client-abc","email":" Ana@Example.COM ","eventType":"purchase","productPrice":"199,90","productId":12345,"productName":7.5,"eventId":"e-1","consent":"granted","tid":"t-1"}"#,
        // Repeated names: the last value counts, also when it is null.
        r#"{"clientId":"client-abc","email":"x@example.com","email":"ana@example.com","eventType":"lead"}"#,
        r#"{"clientId":"client-abc","email":"ana@example.com","email":null,"eventType":"lead"}"#,
        r#"{"clientId":"client-abc","email":"ana@example.com","eventType":"lead","cart":"c-1","cart":"c-2"}"#,
        // Properties: order, nulls, arrays, nested objects, numbers.
        r#"{"zeta":1,"clientId":"client-abc","alpha":"a","email":"ana@example.com","mid":null,"eventType":"lead","list":[1,"two",null,true],"big":18446744073709551615,"neg":-3,"f":1.5e3}"#,
        r#"{"clientId":"client-abc","email":"ana@example.com","eventType":"lead","nested":{"a":1}}"#,
        r#"{"clientId":"client-abc","email":"ana@example.com","eventType":"lead","deep":[[1]]}"#,
        r#"{"clientId":"client-abc","email":"ana@example.com","eventType":"lead","":"empty name"}"#,
        // Wrong types for every known field, and nulls.
        r#"{"clientId":7,"email":["a"],"eventType":{"x":1},"productId":true,"productName":[],"productPrice":{},"productImage":1,"productUrl":false,"tid":[],"eventId":{},"sig":5,"sigExp":"soon","consent":3}"#,
        r#"{"clientId":null,"email":null,"eventType":null,"productPrice":null,"sig":null,"sigExp":null,"consent":null}"#,
        r#"{"clientId":"client-abc","email":"ana@example.com","eventType":"lead","sig":"ab12","sigExp":1900000000}"#,
        r#"{"clientId":"client-abc","email":"ana@example.com","eventType":"lead","sigExp":"1900000000"}"#,
        r#"{}"#,
        // Not an object.
        r#"[]"#,
        r#"[{"email":"ana@example.com"}]"#,
        r#""text""#,
        r#"42"#,
        r#"-1.5"#,
        r#"true"#,
        r#"null"#,
        // Not JSON.
        r#"{"#,
        r#"{"email":}"#,
        r#"{"email":"ana@example.com"} trailing"#,
        r#"{"email":"unterminated}"#,
        r#"{"email":"bad \x escape"}"#,
        r#"{"n":1e400}"#,
        r#"{"email":"ana@example.com",}"#,
        "",
        "   ",
        "{\"email\":\"\u{0}\"}",
    ];
    for crm in Crm::all() {
        for body in bodies {
            assert_same(crm, body.as_bytes(), body);
        }
        // Nesting past serde_json's recursion limit, in a property and as the body.
        let deep = format!(r#"{{"p":{}{}}}"#, "[".repeat(200), "]".repeat(200));
        assert_same(crm, deep.as_bytes(), "deep property");
        let deep_body = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_same(crm, deep_body.as_bytes(), "deep body");
    }
}
