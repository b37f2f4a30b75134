//! Client configuration (the clients table) and the RD Station config (by `tid`).

use crate::crm::Crm;
use crate::event::{ClientId, EventType};
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The browser origins a client's tags may post from: exact origins
/// (`https://www.shop.example`), subdomain wildcards (`https://*.shop.example`), or `*`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AllowedOrigins(pub Vec<String>);

impl AllowedOrigins {
    /// Whether `origin` (as sent in the `Origin` header) is allowed. `*` allows every
    /// origin except the opaque `null` (sandboxed frames, `file:` pages, some
    /// redirects), which is allowed only when listed as `null`.
    pub fn allows(&self, origin: &str) -> bool {
        // Compared ASCII-case-insensitively in place (this runs for every request; the
        // answer is the same as comparing lower-cased copies).
        let origin = origin.trim_end_matches('/');
        self.0.iter().any(|pattern| {
            let pattern = pattern.trim_end_matches('/');
            if pattern.eq_ignore_ascii_case(origin)
                || (pattern == "*" && !origin.eq_ignore_ascii_case("null"))
            {
                return true;
            }
            match pattern.split_once("://*.") {
                Some((scheme, suffix)) => strip_prefix_ignore_case(origin, scheme)
                    .and_then(|rest| rest.strip_prefix("://"))
                    .and_then(|host| strip_suffix_ignore_case(host, suffix))
                    .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
                None => false,
            }
        })
    }

    /// Checks every pattern: `https://shop.example[:port]`, `https://*.shop.example`,
    /// `*` or `null`. The error names the first bad entry.
    pub fn check(&self) -> Result<(), String> {
        for (i, p) in self.0.iter().enumerate() {
            let p = p.trim();
            if p == "*" || p == "null" {
                continue;
            }
            let ok = match p.split_once("://") {
                Some(("http" | "https", host)) => {
                    let host = host.strip_prefix("*.").unwrap_or(host);
                    let host = strip_port(host);
                    !host.is_empty()
                        && !host.contains(['/', '?', '#', '@', '*', ' '])
                        && host.split('.').all(|l| !l.is_empty())
                }
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "allowed_origins[{i}]: {p:?} is not an origin (https://shop.example, https://*.shop.example, *, or null)"
                ));
            }
        }
        Ok(())
    }

    /// Whether the list holds the `*` wildcard.
    pub fn has_wildcard(&self) -> bool {
        self.0.iter().any(|p| p.trim() == "*")
    }

    /// The host patterns of the origins, as written: `shop.example` (that host and its
    /// subdomains) for `https://shop.example`, `loja.example` for
    /// `https://*.loja.example`; `*` for the wildcard.
    fn host_bases(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.iter().filter_map(|p| {
            let p = p.trim().trim_end_matches('/');
            if p == "*" {
                return Some(p);
            }
            let host = p.split_once("://").map(|(_, h)| h)?;
            let host = host.strip_prefix("*.").unwrap_or(host);
            Some(strip_port(host))
        })
    }
}

/// `s` without `prefix`, compared ASCII-case-insensitively.
fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.as_bytes().get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix.as_bytes())
        .then(|| s.get(prefix.len()..))
        .flatten()
}

/// `s` without `suffix`, compared ASCII-case-insensitively.
fn strip_suffix_ignore_case<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = s.len().checked_sub(suffix.len())?;
    s.as_bytes()[cut..]
        .eq_ignore_ascii_case(suffix.as_bytes())
        .then(|| s.get(..cut))
        .flatten()
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Whether `host` is `base` or one of its subdomains (ASCII case ignored).
fn host_under(host: &str, base: &str) -> bool {
    !base.is_empty()
        && (host.eq_ignore_ascii_case(base)
            || strip_suffix_ignore_case(host, base)
                .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1))
}

/// The scheme and `host[:port]` of an absolute http(s) URL, as written (case kept,
/// user info dropped); `None` for anything else. The one reading of a URL's authority
/// that [`origin_of`], [`host_of`], the URL-host checks and `HttpUrl` share.
pub(crate) fn http_authority(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.trim().split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.is_empty() || host_port.starts_with(':') {
        return None;
    }
    Some((scheme, host_port))
}

/// The host of an absolute http(s) URL as written (case kept), without port or user
/// info: [`host_of`] without the lower-cased copy.
fn url_host(url: &str) -> Option<&str> {
    http_authority(url).map(|(_, host_port)| strip_port(host_port))
}

/// The origin (`scheme://host[:port]`, lower-case) of an absolute http(s) URL, as a
/// browser would send it in `Origin`; `None` for anything else.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, host_port) = http_authority(url)?;
    Some(format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        host_port.to_ascii_lowercase()
    ))
}

/// The host (lower-case, without port or user info) of an absolute http(s) URL.
pub fn host_of(url: &str) -> Option<String> {
    url_host(url).map(str::to_ascii_lowercase)
}

/// Who may create a contact the CRM does not know yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactCreation {
    /// No event creates a contact: every delivery is update-only.
    Never,
    /// Only conversion events (lead, checkout, purchase, cart_abandoned) may create a
    /// contact; navigation events (product_view, page_view, search, add/remove cart)
    /// update known contacts only. The default.
    #[default]
    Conversions,
    /// Every event may create a contact (the demo clients; opt in knowingly).
    All,
}

impl ContactCreation {
    /// Whether an event of this type may create a contact.
    pub fn may_create(self, event_type: EventType) -> bool {
        match self {
            ContactCreation::Never => false,
            ContactCreation::All => true,
            ContactCreation::Conversions => !event_type.is_navigation(),
        }
    }
}

/// Default of [`ClientPolicy::email_events_per_minute`] for configured clients.
pub const DEFAULT_EMAIL_EVENTS_PER_MINUTE: u32 = 60;

/// What a client's public ingest accepts. Every default is the safe one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientPolicy {
    /// Refuse requests that carry neither `Origin` nor `Referer` (403
    /// `origin_required`) unless the event is signed. Default true.
    pub require_origin: bool,
    /// Refuse events without a valid signature (401 `signature_invalid` /
    /// `signature_expired`). Default false.
    pub require_signature: bool,
    /// Hosts besides the allowed origins' own that `productUrl` / `productImage` may
    /// point at (CDNs): `cdn.shop.example`, `*.shopcdn.example`.
    pub allowed_url_hosts: Vec<String>,
    /// Most events per (client, email) per minute, in each ingest process; 0: no limit.
    pub email_events_per_minute: u32,
    /// Which events may create a contact the CRM does not know yet.
    pub create_contacts: ContactCreation,
    /// Keep only events whose `consent` is granted; others are answered 202, counted,
    /// and not stored. Default false.
    pub require_consent: bool,
    /// Name of the secret holding the signing key (default
    /// `/connect/signing/{clientId}`). The key itself is never in the clients table.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_secret_name: Option<String>,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        ClientPolicy {
            require_origin: true,
            require_signature: false,
            allowed_url_hosts: Vec::new(),
            email_events_per_minute: DEFAULT_EMAIL_EVENTS_PER_MINUTE,
            create_contacts: ContactCreation::Conversions,
            require_consent: false,
            signing_secret_name: None,
        }
    }
}

/// Prefix of the default signing-secret names.
pub const SIGNING_SECRET_PREFIX: &str = "/connect/signing/";

/// One client (a web shop) and where its events go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientConfig {
    /// The client's id (`clientId` in events).
    pub client_id: ClientId,
    /// The CRM its events are delivered to.
    pub crm: Crm,
    /// Inactive clients are answered 404 and nothing is stored.
    pub active: bool,
    /// Origins allowed by CORS.
    #[serde(default)]
    pub allowed_origins: AllowedOrigins,
    /// CRM target settings (list/table/extension names, field mapping), read by delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Value>,
    /// Name of the secret holding the CRM credentials
    /// (e.g. `/connect/responsys/client-abc/credentials`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Most events per second accepted from this client by one ingest process (`None`:
    /// unlimited; the WAF rate rule still applies on AWS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_second: Option<u32>,
    /// What the public ingest accepts for this client (origins, signatures, limits,
    /// contact creation).
    #[serde(flatten, default)]
    pub policy: ClientPolicy,
}

impl ClientConfig {
    /// Name of the secret holding the client's event-signing key.
    pub fn signing_secret_name(&self) -> String {
        self.policy
            .signing_secret_name
            .clone()
            .unwrap_or_else(|| format!("{SIGNING_SECRET_PREFIX}{}", self.client_id))
    }

    /// Whether `url`'s host is one of the client's: under an allowed origin's host, or
    /// under an `allowed_url_hosts` entry. With the `*` origin every host is.
    pub fn owns_url_host(&self, url: &str) -> bool {
        // Hosts compared ASCII-case-insensitively as written (every event with a URL;
        // the same answer as comparing lower-cased copies).
        let Some(host) = url_host(url) else {
            return false;
        };
        let extra = self.policy.allowed_url_hosts.iter().map(|h| {
            let h = h.trim().trim_end_matches('/');
            let h = h.split_once("://").map_or(h, |(_, rest)| rest);
            h.strip_prefix("*.").unwrap_or(h)
        });
        self.allowed_origins
            .host_bases()
            .chain(extra)
            .any(|base| base == "*" || host_under(host, base))
    }
}

/// The RD Station config of one GA4 `tid`: which client it belongs to and, optionally,
/// the client's API endpoint and API key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RdStationConfig {
    /// The GA4 client id the tag sends.
    pub tid: String,
    /// The client it maps to.
    pub client_id: ClientId,
    /// RD Station API base, when not the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Per-client API key (conversion events only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule as first written: lower-cased copies compared.
    fn allows_by_copies(patterns: &[String], origin: &str) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        patterns.iter().any(|pattern| {
            let pattern = pattern.trim_end_matches('/').to_ascii_lowercase();
            if pattern == origin || (pattern == "*" && origin != "null") {
                return true;
            }
            match pattern.split_once("://*.") {
                Some((scheme, suffix)) => origin
                    .strip_prefix(scheme)
                    .and_then(|rest| rest.strip_prefix("://"))
                    .and_then(|host| host.strip_suffix(suffix))
                    .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
                None => false,
            }
        })
    }

    #[test]
    fn origins_compared_in_place_answer_as_lower_cased_copies() {
        let patterns = [
            "https://www.Shop.example",
            "https://*.Loja.example/",
            "HTTP://*.x.example",
            "*",
            "null",
            "https://ünï.example",
            "https://*.ünï.example",
            "",
        ];
        let origins = [
            "https://www.shop.example",
            "HTTPS://WWW.SHOP.EXAMPLE/",
            "https://m.loja.example",
            "https://M.LOJA.EXAMPLE",
            "https://loja.example",
            "https://.loja.example",
            "https://evilloja.example",
            "http://a.x.example",
            "http://x.example",
            "null",
            "NULL",
            "https://ünï.example",
            "https://a.ünï.example",
            "https://a.ÜNÏ.example",
            "",
            "/",
            "https://",
            "ü",
        ];
        for n in 0..patterns.len() {
            for pattern in [&patterns[n..=n], &patterns[..n]] {
                let list: Vec<String> = pattern.iter().map(|p| (*p).to_owned()).collect();
                let allowed = AllowedOrigins(list.clone());
                for origin in origins {
                    assert_eq!(
                        allowed.allows(origin),
                        allows_by_copies(&list, origin),
                        "{list:?} {origin}"
                    );
                }
            }
        }
    }
    use crate::crm::Crm;

    #[test]
    fn origin_matching() {
        let o = AllowedOrigins(vec![
            "https://www.shop.example".into(),
            "https://*.loja.example".into(),
        ]);
        assert!(o.allows("https://www.shop.example"));
        assert!(o.allows("https://WWW.shop.example/"));
        assert!(!o.allows("http://www.shop.example"));
        assert!(!o.allows("https://evil.example"));
        assert!(o.allows("https://m.loja.example"));
        assert!(o.allows("https://a.b.loja.example"));
        assert!(!o.allows("https://loja.example"));
        assert!(!o.allows("https://evilloja.example"));
        assert!(AllowedOrigins(vec!["*".into()]).allows("https://any.example"));
        assert!(!AllowedOrigins(vec!["*".into()]).allows("null"));
        assert!(AllowedOrigins(vec!["null".into()]).allows("null"));
        assert!(!o.allows("null"));
        assert!(!AllowedOrigins::default().allows("https://any.example"));
    }

    #[test]
    fn origin_patterns_are_checked() {
        let ok = AllowedOrigins(vec![
            "https://www.shop.example".into(),
            "http://localhost:8080".into(),
            "https://*.shop.example".into(),
            "*".into(),
            "null".into(),
        ]);
        assert_eq!(ok.check(), Ok(()));
        for bad in [
            "www.shop.example",
            "https://shop.example/path",
            "ftp://x.example",
            "https://",
            "https://a..b",
        ] {
            let err = AllowedOrigins(vec![bad.into()]).check().expect_err(bad);
            assert!(err.starts_with("allowed_origins[0]"), "{err}");
        }
    }

    #[test]
    fn origins_of_urls() {
        assert_eq!(
            origin_of("https://WWW.Shop.example:8443/p/1?x#y").as_deref(),
            Some("https://www.shop.example:8443")
        );
        assert_eq!(
            origin_of("http://u:p@shop.example").as_deref(),
            Some("http://shop.example")
        );
        assert_eq!(origin_of("javascript:alert(1)"), None);
        assert_eq!(origin_of("https:///x"), None);
        assert_eq!(
            host_of("https://cdn.shop.example:443/i.png").as_deref(),
            Some("cdn.shop.example")
        );
    }

    fn client(origins: &[&str], extra: &[&str]) -> ClientConfig {
        ClientConfig {
            client_id: ClientId::parse("shop").expect("id"),
            crm: Crm::RESPONSYS,
            active: true,
            allowed_origins: AllowedOrigins(origins.iter().map(|s| (*s).to_owned()).collect()),
            target: None,
            secret_name: None,
            rate_limit_per_second: None,
            policy: ClientPolicy {
                allowed_url_hosts: extra.iter().map(|s| (*s).to_owned()).collect(),
                ..ClientPolicy::default()
            },
        }
    }

    /// `owns_url_host` as first written: lower-cased copies of the host and the bases.
    fn owns_by_copies(c: &ClientConfig, url: &str) -> bool {
        let Some(host) = host_of(url) else {
            return false;
        };
        let bases = c.allowed_origins.0.iter().filter_map(|p| {
            let p = p.trim().trim_end_matches('/').to_ascii_lowercase();
            if p == "*" {
                return Some(p);
            }
            let host = p.split_once("://").map(|(_, h)| h.to_owned())?;
            let host = host.strip_prefix("*.").unwrap_or(&host);
            Some(strip_port(host).to_owned())
        });
        let extra = c.policy.allowed_url_hosts.iter().map(|h| {
            let h = h.trim().trim_end_matches('/').to_ascii_lowercase();
            let h = h
                .split_once("://")
                .map_or(h.clone(), |(_, rest)| rest.to_owned());
            h.strip_prefix("*.").map_or(h.clone(), str::to_owned)
        });
        bases.chain(extra).any(|base| {
            base == "*"
                || (!base.is_empty()
                    && (host == base
                        || host
                            .strip_suffix(base.as_str())
                            .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1)))
        })
    }

    #[test]
    fn url_hosts_compared_in_place_answer_as_lower_cased_copies() {
        let clients = [
            client(
                &["https://WWW.Shop.example", "https://*.Loja.example:8443"],
                &[],
            ),
            client(
                &["HTTP://shop.example/"],
                &["CDN.images.example", "*.Akamai.example"],
            ),
            client(&["*"], &[]),
            client(
                &["null", "https://ünï.example"],
                &["https://Cdn.Ünï.example/"],
            ),
            client(&[""], &[""]),
        ];
        let urls = [
            "https://www.shop.example/p/1",
            "HTTPS://WWW.SHOP.EXAMPLE:443/p",
            "https://img.WWW.shop.example/p.png",
            "https://shop.example/p/1",
            "http://M.LOJA.example/p",
            "https://loja.example",
            "https://.loja.example",
            "https://cdn.images.example/a.png",
            "https://x.AKAMAI.example/a.png",
            "https://user@www.shop.example@evil.example/",
            "https://www.shop.example.evil.example/",
            "https://ünï.example/x",
            "https://cdn.ünï.example/x",
            "https://CDN.ÜNÏ.example/x",
            "ftp://www.shop.example/",
            "https://:443/",
            "https:///p",
            "www.shop.example",
            "",
        ];
        for c in &clients {
            for url in urls {
                assert_eq!(
                    c.owns_url_host(url),
                    owns_by_copies(c, url),
                    "{:?} {:?} {url}",
                    c.allowed_origins,
                    c.policy.allowed_url_hosts
                );
            }
        }
    }

    #[test]
    fn url_hosts_stay_on_the_clients_own() {
        let c = client(
            &["https://www.shop.example", "https://*.loja.example"],
            &["cdn.images.example", "*.akamai.example"],
        );
        assert!(c.owns_url_host("https://www.shop.example/p/1"));
        assert!(c.owns_url_host("https://img.www.shop.example/p.png"));
        assert!(!c.owns_url_host("https://shop.example/p/1"));
        assert!(c.owns_url_host("https://m.loja.example/p"));
        assert!(c.owns_url_host("https://loja.example/p"));
        assert!(c.owns_url_host("https://cdn.images.example/a.png"));
        assert!(c.owns_url_host("https://x.akamai.example/a.png"));
        assert!(!c.owns_url_host("https://evil.example/www.shop.example"));
        assert!(!c.owns_url_host("https://www.shop.example.evil.example/"));
        assert!(!c.owns_url_host("https://evilshop.example/"));
        assert!(!c.owns_url_host("https://www.shop.example@evil.example/"));
        assert!(client(&["*"], &[]).owns_url_host("https://any.example/x"));
        assert!(!client(&[], &[]).owns_url_host("https://any.example/x"));
    }

    #[test]
    fn policy_defaults_are_safe_and_flattened() {
        let c: ClientConfig = serde_json::from_value(serde_json::json!({
            "clientId": "shop", "crm": "responsys", "active": true
        }))
        .expect("parses");
        assert_eq!(c.policy, ClientPolicy::default());
        assert!(c.policy.require_origin);
        assert!(!c.policy.require_signature);
        assert_eq!(c.policy.create_contacts, ContactCreation::Conversions);
        assert_eq!(c.signing_secret_name(), "/connect/signing/shop");
        let json = serde_json::to_value(&c).expect("serializes");
        assert_eq!(json["requireOrigin"], true);
        assert_eq!(json["createContacts"], "conversions");
        let back: ClientConfig = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, c);
        assert!(!ContactCreation::Conversions.may_create(EventType::ProductView));
        assert!(ContactCreation::Conversions.may_create(EventType::Purchase));
        assert!(!ContactCreation::Never.may_create(EventType::Lead));
        assert!(ContactCreation::All.may_create(EventType::Search));
    }
}
