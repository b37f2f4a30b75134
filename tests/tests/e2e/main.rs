//! End-to-end tests: the real `connect` binary over real HTTP, SQLite on disk.

mod abuse;
mod clients;
mod crash;
mod delivery;
mod dlq;
mod dlq_aws;
mod fanout;
mod faults;
mod gtm_browser;
mod ingest_http;
mod lifecycle;
mod pixel;
mod privacy;
mod privacy_aws;
mod replay;
mod template;
mod tokens;
mod trace;

use std::path::Path;

/// A configuration with one client of each kind the tests need. These tests are about
/// ingest and delivery mechanics, so the clients accept requests without an `Origin`
/// (curl-like) and the same address many times; the front door's protections with their
/// defaults are the abuse suite's (`abuse.rs`).
pub const CONFIG: &str = r#"
[store]
synchronous = "full"

[[clients]]
client_id = "shop-a"
crm = "responsys"
require_origin = false
email_events_per_minute = 0
create_contacts = "all"
allowed_origins = ["https://www.shop-a.example"]

[[clients]]
client_id = "shop-off"
crm = "responsys"
require_origin = false
email_events_per_minute = 0
create_contacts = "all"
active = false
allowed_origins = ["*"]

[[clients]]
client_id = "shop-sf"
crm = "salesforce"
require_origin = false
email_events_per_minute = 0
create_contacts = "all"
allowed_origins = ["https://*.shop-sf.example"]

[[clients]]
client_id = "shop-rd"
crm = "rdstation"
require_origin = false
email_events_per_minute = 0
create_contacts = "all"
allowed_origins = ["https://www.shop-rd.example"]

[[clients]]
client_id = "shop-slow"
crm = "responsys"
require_origin = false
email_events_per_minute = 0
create_contacts = "all"
rate_limit_per_second = 1

[[rdstation]]
tid = "GA4.1.2"
client_id = "shop-rd"
"#;

/// Writes [`CONFIG`] into `dir` and returns its path as a string.
pub fn write_config(dir: &Path) -> String {
    let path = dir.join("connect.toml");
    std::fs::write(&path, CONFIG).expect("write config");
    path.to_string_lossy().into_owned()
}
