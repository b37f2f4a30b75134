//! The abuse suite: `connect serve` and `connect sandbox` as separate processes, with
//! configured clients on their safe defaults. Attackers (each from its own loopback
//! address) try every way in that a public endpoint offers; shoppers (from another
//! address) send ordinary traffic at the same time. Then: 0 attacker events reached a
//! CRM, 100 % of the legitimate ones did, and no merge request opted anyone in or
//! created a contact from a navigation event.

use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};
use tests::sandbox_records;
use tests::{Process, open_db};

const SHOP: &str = "https://www.shop.example";
const SIGNING_KEY: &str = "abuse-suite-signing-key";
const BROWSER_UA: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36";
/// The per-IP limit the suite configures (the WAF's default).
const IP_LIMIT: usize = 2000;
/// Events of the spray: random addresses from one IP.
const SPRAY: usize = 5000;

fn config(dir: &Path, sandbox: &str) -> String {
    let secrets = dir.join("secrets.json");
    let creds = json!({
        "/connect/responsys/shop/credentials": {"username": "shop", "password": "pw", "loginUrl": format!("{sandbox}/responsys")},
        "/connect/responsys/shop-signed/credentials": {"username": "shop-signed", "password": "pw", "loginUrl": format!("{sandbox}/responsys")},
        "/connect/salesforce/shop-sf/credentials": {"clientId": "shop-sf", "clientSecret": "pw", "subdomain": "x", "authUrl": format!("{sandbox}/sfmc")},
        "/connect/signing/shop-signed": SIGNING_KEY,
    });
    std::fs::write(&secrets, creds.to_string()).expect("secrets");
    let text = format!(
        r#"
[secrets]
file = "{secrets}"

[limits]
loopback_exempt = false
ip_requests_per_5min = {IP_LIMIT}
refusal_alert_threshold = 20

# Every client is on the defaults: origin required, update-only navigation events,
# OPTOUT, 60 events per email per minute.
[[clients]]
client_id = "shop"
crm = "responsys"
allowed_origins = ["{SHOP}"]
secret_name = "/connect/responsys/shop/credentials"

[[clients]]
client_id = "shop-signed"
crm = "responsys"
allowed_origins = ["{SHOP}"]
secret_name = "/connect/responsys/shop-signed/credentials"
require_signature = true

[[clients]]
client_id = "shop-sf"
crm = "salesforce"
allowed_origins = ["{SHOP}"]
secret_name = "/connect/salesforce/shop-sf/credentials"
target = {{ kind = "journey", event_definition_key = "APIEvent-purchase", journey_event_types = ["purchase"] }}
"#,
        secrets = secrets.display()
    );
    let path = dir.join("abuse.toml");
    std::fs::write(&path, text).expect("config");
    path.to_string_lossy().into_owned()
}

/// An HTTP client whose requests come from `ip` (a loopback address of its own).
fn from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::from(ip)))
        .pool_max_idle_per_host(64)
        .build()
        .expect("client")
}

struct Post<'a> {
    route: &'a str,
    body: Value,
    headers: Vec<(&'a str, String)>,
}

async fn send(http: &reqwest::Client, server: &Process, p: &Post<'_>) -> (u16, Value) {
    let mut req = http
        .post(server.url(p.route))
        .header("content-type", "application/json")
        .body(p.body.to_string());
    for (name, value) in &p.headers {
        req = req.header(*name, value);
    }
    let res = req.send().await.expect("post");
    let status = res.status().as_u16();
    let body = res.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn post<'a>(route: &'a str, body: Value, headers: &[(&'a str, &str)]) -> Post<'a> {
    Post {
        route,
        body,
        headers: headers.iter().map(|(n, v)| (*n, (*v).to_owned())).collect(),
    }
}

fn sign(client: &str, email: &str, exp: i64) -> String {
    domain::signature::sign(SIGNING_KEY.as_bytes(), client, email, exp)
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Messages still on the delivery queues (not yet delivered, skipped or dead-lettered).
fn pending(data: &Path) -> i64 {
    open_db(data)
        .query_row(
            "SELECT COUNT(*) FROM queue_messages WHERE queue NOT LIKE '%-dlq'",
            [],
            |r| r.get(0),
        )
        .expect("count")
}

fn stored(data: &Path) -> i64 {
    open_db(data)
        .query_row("SELECT COUNT(*) FROM navigation", [], |r| r.get(0))
        .expect("count")
}

#[tokio::test]
async fn no_attacker_event_reaches_a_crm_and_every_shopper_event_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sandbox = Process::spawn(
        &dir.path().join("sb"),
        &["sandbox", "--listen", "127.0.0.1:0"],
        "/_sandbox/records",
    );
    let data = dir.path().join("data");
    let config = config(dir.path(), &sandbox.base);
    let server = Process::serve(&data, &["--config", &config]);
    let control = reqwest::Client::new();
    let shopper_emails: Vec<String> = (0..10)
        .map(|i| format!("known{i}@customer.example"))
        .collect();
    control
        .post(format!("{}/_sandbox/contacts", sandbox.base))
        .json(&json!({"emails": shopper_emails}))
        .send()
        .await
        .expect("seed contacts");

    // --- Shoppers, from 127.0.0.10.
    let shop = from([127, 0, 0, 10]);
    let browser = [("origin", SHOP), ("user-agent", BROWSER_UA)];
    let mut legit: Vec<Post> = Vec::new();
    for email in &shopper_emails {
        for product in ["P1", "P2"] {
            legit.push(post("/responsys", json!({"clientId": "shop", "email": email, "eventType": "product_view", "productId": product, "productUrl": format!("{SHOP}/p/{product}")}), &browser));
        }
    }
    for i in 0..5 {
        legit.push(post("/responsys", json!({"clientId": "shop", "email": format!("buyer{i}@customer.example"), "eventType": "purchase", "productId": "P9"}), &browser));
        legit.push(post("/salesforce", json!({"clientId": "shop-sf", "email": format!("sf{i}@customer.example"), "eventType": "purchase", "productId": "P9"}), &browser));
    }
    // A page from the shop whose beacon carries only a Referer.
    legit.push(post(
        "/responsys",
        json!({"clientId": "shop", "email": "known0@customer.example", "eventType": "page_view"}),
        &[
            ("referer", "https://www.shop.example/cart"),
            ("user-agent", BROWSER_UA),
        ],
    ));
    // The shop's backend: signed, no Origin, any user agent.
    let exp = now_s() + 600;
    for i in 0..5 {
        let email = format!("lead{i}@customer.example");
        legit.push(post("/responsys", json!({"clientId": "shop-signed", "email": email, "eventType": "lead", "sig": sign("shop-signed", &email, exp), "sigExp": exp}), &[("user-agent", "python-requests/2.31")]));
    }
    for p in &legit {
        let (status, body) = send(&shop, &server, p).await;
        assert_eq!(status, 202, "legitimate {}: {body}", p.body);
    }

    // --- Attackers, from 127.0.0.66 (and the spray from 127.0.0.77).
    let attacker = from([127, 0, 0, 66]);
    let evil = |i: usize| format!("victim{i}@attacked.example");
    let mut refused: Vec<(Post, u16, &str)> = Vec::new();
    for (i, headers) in [
        vec![
            ("origin", "https://evil.example"),
            ("user-agent", BROWSER_UA),
        ],
        vec![
            ("referer", "https://evil.example/phish"),
            ("user-agent", BROWSER_UA),
        ],
        vec![("origin", "null"), ("user-agent", BROWSER_UA)],
        vec![
            ("origin", "https://www.shop.example.evil.example"),
            ("user-agent", BROWSER_UA),
        ],
    ]
    .into_iter()
    .enumerate()
    {
        for kind in ["lead", "purchase", "product_view"] {
            refused.push((
                post(
                    "/responsys",
                    json!({"clientId": "shop", "email": evil(i), "eventType": kind}),
                    &headers,
                ),
                403,
                "origin_not_allowed",
            ));
        }
    }
    for kind in ["lead", "purchase"] {
        refused.push((
            post(
                "/responsys",
                json!({"clientId": "shop", "email": evil(10), "eventType": kind}),
                &[],
            ),
            403,
            "origin_required",
        ));
        refused.push((
            post(
                "/salesforce",
                json!({"clientId": "shop-sf", "email": evil(11), "eventType": kind}),
                &[("user-agent", "curl/8.5.0")],
            ),
            403,
            "origin_required",
        ));
    }
    let bad_sig = sign("shop-signed", "someone@customer.example", exp);
    let expired = now_s() - 60;
    refused.push((post("/responsys", json!({"clientId": "shop-signed", "email": evil(20), "eventType": "lead", "sig": bad_sig, "sigExp": exp}), &[]), 401, "signature_invalid"));
    refused.push((post("/responsys", json!({"clientId": "shop-signed", "email": evil(21), "eventType": "lead", "sig": sign("shop-signed", &evil(21), expired), "sigExp": expired}), &[]), 401, "signature_expired"));
    refused.push((
        post(
            "/responsys",
            json!({"clientId": "shop-signed", "email": evil(22), "eventType": "lead"}),
            &browser,
        ),
        401,
        "signature_invalid",
    ));
    for (p, status, code) in &refused {
        let (got, body) = send(&attacker, &server, p).await;
        assert_eq!(
            (got, body["error"].as_str()),
            (*status, Some(*code)),
            "{}",
            p.body
        );
    }
    // A headless browser on the shop's own origin: answered, not kept.
    let (status, _) = send(
        &attacker,
        &server,
        &post(
            "/responsys",
            json!({"clientId": "shop", "email": evil(30), "eventType": "purchase"}),
            &[
                ("origin", SHOP),
                ("user-agent", "Mozilla/5.0 HeadlessChrome/120.0"),
            ],
        ),
    )
    .await;
    assert_eq!(status, 202);
    // A phishing link under the shop's name, with a forged Origin: the URL is dropped.
    let (status, _) = send(&attacker, &server, &post("/responsys", json!({"clientId": "shop", "email": evil(31), "eventType": "product_view", "productUrl": "https://phish.example/login", "productImage": "https://phish.example/i.png"}), &browser)).await;
    assert_eq!(status, 202);
    // One address flooded.
    let mut flood = Vec::new();
    for _ in 0..70 {
        flood.push(
            send(
                &attacker,
                &server,
                &post(
                    "/responsys",
                    json!({"clientId": "shop", "email": evil(40), "eventType": "product_view"}),
                    &browser,
                ),
            )
            .await
            .0,
        );
    }
    assert_eq!(flood.iter().filter(|s| **s == 202).count(), 60, "{flood:?}");
    assert!(flood[60..].iter().all(|s| *s == 429));

    // 5,000 random addresses from one IP, with a forged Origin (curl can send any).
    let sprayer = from([127, 0, 0, 77]);
    let started = Instant::now();
    let statuses: Vec<u16> = {
        use futures_util::StreamExt;
        futures_util::stream::iter(0..SPRAY)
            .map(|i| {
                let sprayer = sprayer.clone();
                let server = &server;
                async move {
                    send(&sprayer, server, &post("/responsys", json!({"clientId": "shop", "email": format!("random{i}-{}@spray.example", i * 7919), "eventType": "product_view"}), &[("origin", SHOP), ("user-agent", BROWSER_UA)])).await.0
                }
            })
            .buffer_unordered(16)
            .collect()
            .await
    };
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(accepted + limited, SPRAY, "only 202 or 429");
    // GCRA refills one request per 150 ms while the spray runs.
    let refill = (started.elapsed().as_millis() / 150) as usize + 1;
    assert!(
        accepted >= IP_LIMIT && accepted <= IP_LIMIT + refill,
        "accepted {accepted}"
    );

    // --- Everything settles: the queues drain.
    let deadline = Instant::now() + Duration::from_secs(60);
    while pending(&data) > 0 {
        assert!(
            Instant::now() < deadline,
            "{} messages still queued",
            pending(&data)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let records = sandbox_records(&control, &sandbox.base).await;
    let attacker_records: Vec<&Value> = records
        .iter()
        .filter(|r| {
            !r["email"]
                .as_str()
                .unwrap_or("")
                .ends_with("@customer.example")
        })
        .collect();
    assert!(
        attacker_records.is_empty(),
        "attacker events reached a CRM: {attacker_records:?}"
    );
    assert_eq!(
        records.len(),
        legit.len(),
        "every shopper event is delivered once"
    );
    for r in &records {
        assert!(!r.to_string().contains("phish.example"), "{r}");
        if r["crm"] == "responsys" {
            assert_ne!(r["request"]["defaultPermissionStatus"], "OPTIN", "{r}");
            let navigation = r["raw"]
                .as_object()
                .is_some_and(|_| shopper_emails.iter().any(|e| r["email"] == *e.as_str()));
            if navigation {
                assert_eq!(
                    r["request"]["insertOnNoMatch"], false,
                    "navigation events never insert: {r}"
                );
            }
        }
    }
    // Refused requests stored nothing: what is stored is the shoppers' events, the
    // phishing event (without its URLs), the flood's 60 and the spray's accepted ones.
    assert_eq!(stored(&data), (legit.len() + 1 + 60 + accepted) as i64);
    let metrics = tests::metrics_text(&control, &server.url("/metrics")).await;
    for reason in [
        "origin_not_allowed",
        "origin_required",
        "signature_invalid",
        "signature_expired",
        "email_rate_limited",
        "ip_rate_limited",
        "bot",
    ] {
        assert!(
            metrics.contains(&format!(
                "connect_ingest_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason} not counted:\n{metrics}"
        );
    }
    assert!(
        metrics.contains(
            r#"connect_fields_dropped_total{field="productUrl",reason="foreign_host"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("skipped_unknown_contact"), "{metrics}");
    // One refusal alert for the attacked client, and no attacker address in the logs.
    let logs = server.logs();
    assert!(logs.contains("ingest_refusals"), "no refusal alert");
    assert!(
        !logs.contains("attacked.example") && !logs.contains("spray.example"),
        "emails in the logs"
    );
    assert!(!logs.contains("127.0.0.66"), "a full IP in the logs");
}

#[tokio::test]
async fn slow_headers_are_cut_off_and_the_server_keeps_serving() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[server]\nheader_read_timeout_seconds = 1\nmax_connections = 64\n",
    )
    .expect("config");
    let server = Process::serve(
        &dir.path().join("data"),
        &["--demo", "--config", config.to_str().expect("path")],
    );
    let addr = server.base.trim_start_matches("http://").to_owned();
    // Slowloris: 60 connections that send half a request and then nothing.
    let mut slow: Vec<std::net::TcpStream> = (0..60)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).expect("connect");
            s.write_all(
                b"POST /responsys HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
            )
            .expect("write");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s
        })
        .collect();
    // Every one is closed by the server after the header timeout.
    for s in &mut slow {
        let mut buf = [0u8; 256];
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!("a slow connection was still open after 10 s: {e}"),
        };
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(
            n == 0 || head.contains("408") || head.contains("400"),
            "{head}"
        );
    }
    // …and a shopper is served all along.
    let r = reqwest::Client::new()
        .post(server.url("/responsys"))
        .header("content-type", "application/json")
        .body(
            json!({"clientId": "demo-responsys", "email": "a@example.com", "eventType": "lead"})
                .to_string(),
        )
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 202);
}

#[tokio::test]
async fn metrics_stay_off_a_public_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!("[server]\nmetrics_listen = \"127.0.0.1:{port}\"\n"),
    )
    .expect("config");
    let server = Process::spawn(
        &dir.path().join("data"),
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--sandbox-listen",
            "127.0.0.1:0",
            "--demo",
            "--config",
            config.to_str().expect("path"),
        ],
        "/health",
    );
    let http = reqwest::Client::new();
    let public = http.get(server.url("/metrics")).send().await.expect("get");
    assert_eq!(public.status(), 404, "/metrics on a public listener");
    let private = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("get");
    assert_eq!(private.status(), 200);
    assert!(
        private
            .text()
            .await
            .expect("text")
            .contains("connect_ingest_requests")
    );
}
