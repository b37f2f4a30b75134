//! The destinations Connect delivers to, as data.
//!
//! [`DESTINATIONS`] is the one list of what the handlers that do not talk to a CRM
//! (ingest, fanout, the stores) need to know about a destination: its wire name, its
//! ingest route and how a request on it names its client. Everything a destination
//! *does* (authenticate, build requests, classify answers, token policy) is its module in
//! the `crm` crate, registered in `crm::registry`; a test there checks that both lists
//! name the same destinations, in the same order.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// What the handlers outside `crm` know of one destination.
#[derive(Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Wire name: routes, queue names, message attributes, env vars, secret paths, the
    /// CLI (`responsys`, `salesforce`, `rdstation`, `webhook`). Never changes once
    /// deployed.
    pub name: &'static str,
    /// A request on this route names its client with `tid` (the RD Station tag's own
    /// field) instead of `clientId`; `tid` is then required.
    pub client_from_tid: bool,
}

/// Every destination, in a stable order (listings, metrics, the deployment).
pub static DESTINATIONS: &[Descriptor] = &[
    Descriptor {
        name: "responsys",
        client_from_tid: false,
    },
    Descriptor {
        name: "salesforce",
        client_from_tid: false,
    },
    Descriptor {
        name: "rdstation",
        client_from_tid: true,
    },
    Descriptor {
        name: "webhook",
        client_from_tid: false,
    },
];

/// A destination: an index into [`DESTINATIONS`]. Its wire name is how it is written
/// everywhere (serde, `Display`, `FromStr`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Crm(u8);

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

impl Crm {
    /// Oracle Responsys.
    pub const RESPONSYS: Crm = Crm::named("responsys");
    /// Salesforce Marketing Cloud (wire name `salesforce`, code name `sfmc`).
    pub const SFMC: Crm = Crm::named("salesforce");
    /// RD Station Marketing.
    pub const RDSTATION: Crm = Crm::named("rdstation");
    /// The signed generic webhook.
    pub const WEBHOOK: Crm = Crm::named("webhook");

    /// The destination of a wire name known at compile time (a missing name fails the
    /// build).
    pub const fn named(name: &str) -> Crm {
        let mut i = 0;
        while i < DESTINATIONS.len() {
            if same(DESTINATIONS[i].name, name) {
                return Crm(i as u8);
            }
            i += 1;
        }
        panic!("no such destination in DESTINATIONS")
    }

    /// Every destination, in [`DESTINATIONS`] order.
    pub fn all() -> impl Iterator<Item = Crm> + Clone {
        (0..DESTINATIONS.len()).map(|i| Crm(i as u8))
    }

    /// What is known of this destination.
    pub fn descriptor(self) -> &'static Descriptor {
        &DESTINATIONS[usize::from(self.0)]
    }

    /// Its position in [`DESTINATIONS`].
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        self.descriptor().name
    }

    /// The ingest route (`/responsys`, …): `/` + the wire name.
    pub fn route(self) -> String {
        format!("/{}", self.as_str())
    }

    /// The destination of an ingest path; one trailing slash is tolerated.
    pub fn from_route(path: &str) -> Option<Crm> {
        let path = path.strip_suffix('/').unwrap_or(path);
        let name = path.strip_prefix('/')?;
        name.parse().ok()
    }

    /// Whether a request on this route must name its client with `clientId` (RD Station
    /// resolves the client from `tid` instead).
    pub fn requires_client_id(self) -> bool {
        !self.descriptor().client_from_tid
    }

    /// The routes, for messages: `/responsys, /salesforce, …`.
    pub fn route_list() -> String {
        Crm::all().map(Crm::route).collect::<Vec<_>>().join(", ")
    }
}

impl fmt::Display for Crm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Crm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown destination name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown CRM '{0}': expected one of {names}", names = names())]
pub struct UnknownCrm(pub String);

fn names() -> String {
    Crm::all().map(Crm::as_str).collect::<Vec<_>>().join(", ")
}

impl FromStr for Crm {
    type Err = UnknownCrm;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Crm::all()
            .find(|crm| crm.as_str() == s)
            .ok_or_else(|| UnknownCrm(s.to_owned()))
    }
}

impl Serialize for Crm {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Crm {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_round_trip() {
        for crm in Crm::all() {
            assert_eq!(Crm::from_route(&crm.route()), Some(crm));
            assert_eq!(crm.as_str().parse::<Crm>(), Ok(crm));
            let json = serde_json::to_string(&crm).expect("serialize");
            assert_eq!(json, format!("\"{}\"", crm.as_str()));
            assert_eq!(serde_json::from_str::<Crm>(&json).expect("parse"), crm);
        }
        assert_eq!(Crm::from_route("/rdstation/"), Some(Crm::RDSTATION));
        assert_eq!(Crm::from_route("/webhook"), Some(Crm::WEBHOOK));
        assert_eq!(Crm::from_route("/hubspot"), None);
        assert_eq!(Crm::from_route("responsys"), None);
        assert!("Responsys".parse::<Crm>().is_err());
        let err = serde_json::from_str::<Crm>("\"hubspot\"").expect_err("unknown");
        assert!(err.to_string().contains("webhook"), "{err}");
    }

    #[test]
    fn names_are_unique_and_route_safe() {
        let names: std::collections::BTreeSet<&str> = Crm::all().map(Crm::as_str).collect();
        assert_eq!(names.len(), DESTINATIONS.len());
        for n in names {
            assert!(
                n.bytes().all(|b| b.is_ascii_lowercase()),
                "{n}: lower-case letters only (routes, queue and env names)"
            );
        }
        assert_eq!(Crm::SFMC.as_str(), "salesforce");
    }
}
