//! The CRMs Connect delivers to.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A CRM kind. Its wire name (`responsys`, `salesforce`, `rdstation`) is used in routes,
/// queue names, message attributes, env vars and the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Crm {
    /// Oracle Responsys.
    Responsys,
    /// Salesforce Marketing Cloud.
    Salesforce,
    /// RD Station Marketing.
    #[serde(rename = "rdstation")]
    RdStation,
}

impl Crm {
    /// All CRMs, in a stable order.
    pub const ALL: [Crm; 3] = [Crm::Responsys, Crm::Salesforce, Crm::RdStation];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Crm::Responsys => "responsys",
            Crm::Salesforce => "salesforce",
            Crm::RdStation => "rdstation",
        }
    }

    /// The ingest route of this CRM (`/responsys`, …).
    pub fn route(self) -> &'static str {
        match self {
            Crm::Responsys => "/responsys",
            Crm::Salesforce => "/salesforce",
            Crm::RdStation => "/rdstation",
        }
    }

    /// The CRM of an ingest path; one trailing slash is tolerated.
    pub fn from_route(path: &str) -> Option<Crm> {
        let path = path.strip_suffix('/').unwrap_or(path);
        Crm::ALL.into_iter().find(|crm| crm.route() == path)
    }

    /// Whether a request on this route must name its client with `clientId`
    /// (RD Station resolves the client from `tid` instead).
    pub fn requires_client_id(self) -> bool {
        !matches!(self, Crm::RdStation)
    }
}

impl fmt::Display for Crm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown CRM name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown CRM '{0}': expected one of responsys, salesforce, rdstation")]
pub struct UnknownCrm(pub String);

impl FromStr for Crm {
    type Err = UnknownCrm;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Crm::ALL
            .into_iter()
            .find(|crm| crm.as_str() == s)
            .ok_or_else(|| UnknownCrm(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_round_trip() {
        for crm in Crm::ALL {
            assert_eq!(Crm::from_route(crm.route()), Some(crm));
            assert_eq!(crm.as_str().parse::<Crm>(), Ok(crm));
            let json = serde_json::to_string(&crm).expect("serialize");
            assert_eq!(json, format!("\"{}\"", crm.as_str()));
        }
        assert_eq!(Crm::from_route("/rdstation/"), Some(Crm::RdStation));
        assert_eq!(Crm::from_route("/hubspot"), None);
        assert!("Responsys".parse::<Crm>().is_err());
    }
}
