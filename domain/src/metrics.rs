//! The one metric vocabulary of Connect. Every metric is declared here once — its name,
//! its labels (dimensions), its kind — and both exporters take it from here:
//!
//! - the Lambdas write CloudWatch EMF lines (namespace [`crate::emf::NAMESPACE`]) with
//!   the metric's [`Metric::name`] and its labels as dimensions;
//! - `connect serve` exposes Prometheus text with [`Metric::prometheus_name`]
//!   (`connect_` + the name in snake case + `_total` for counts, `_seconds` for
//!   durations) and the same labels.
//!
//! So `Delivered{crm, clientId}` is `connect_delivered_total{crm, clientId}` locally.
//! Durations are milliseconds in EMF and seconds in Prometheus (each one's convention).

/// What a metric measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A count of events.
    Count,
    /// A duration (EMF unit `Milliseconds`; a Prometheus histogram in seconds).
    Duration,
}

/// One metric.
#[derive(Debug, PartialEq, Eq)]
pub struct Metric {
    /// CamelCase name (the EMF metric name).
    pub name: &'static str,
    /// What it counts.
    pub help: &'static str,
    /// Its labels / dimensions, in order.
    pub labels: &'static [&'static str],
    /// Count or duration.
    pub kind: Kind,
}

impl Metric {
    /// The Prometheus family name without the `connect_` prefix and the `_total` suffix
    /// the exposition adds to counters: `Delivered` → `delivered`, `DeliveryLatency` →
    /// `delivery_latency_seconds`.
    pub fn prometheus_name(&self) -> String {
        let mut out = String::new();
        for (i, c) in self.name.chars().enumerate() {
            if c.is_ascii_uppercase() {
                if i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
            } else {
                out.push(c);
            }
        }
        if self.kind == Kind::Duration {
            out.push_str("_seconds");
        }
        out
    }

    /// The EMF unit.
    pub fn emf_unit(&self) -> &'static str {
        match self.kind {
            Kind::Count => "Count",
            Kind::Duration => "Milliseconds",
        }
    }

    /// One EMF line of this metric with its labels' `values` (same order as
    /// [`Metric::labels`]) as dimensions.
    pub fn emf_line(&self, timestamp_ms: i64, values: &[&str], value: f64) -> String {
        crate::emf::line(
            timestamp_ms,
            &self.dimensions(values).collect::<Vec<_>>(),
            &[(self.name, value, self.emf_unit())],
        )
    }

    /// (label, value) pairs of `values`.
    pub fn dimensions<'s, 'a: 's>(
        &self,
        values: &'s [&'a str],
    ) -> impl Iterator<Item = (&'static str, &'a str)> + use<'s, 'a> {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        let labels: &'static [&'static str] = self.labels;
        labels.iter().copied().zip(values.iter().copied())
    }
}

const CRM: &str = "crm";
const CLIENT: &str = "clientId";
const REASON: &str = "reason";

/// Ingest HTTP requests by route and status.
pub const INGEST_REQUESTS: Metric = Metric {
    name: "IngestRequests",
    help: "Ingest HTTP requests by route and status (on AWS: API Gateway's Count)",
    labels: &["route", "status"],
    kind: Kind::Count,
};
/// Ingest latency.
pub const INGEST_LATENCY: Metric = Metric {
    name: "IngestLatency",
    help: "Ingest request latency, from request read to response (on AWS: the Lambda's Duration)",
    labels: &["route"],
    kind: Kind::Duration,
};
/// Events stored.
pub const ACCEPTED: Metric = Metric {
    name: "Accepted",
    help: "Events stored (202)",
    labels: &[CRM, CLIENT],
    kind: Kind::Count,
};
/// Repeated eventIds.
pub const DUPLICATES: Metric = Metric {
    name: "Duplicates",
    help: "Events not stored again because their eventId was seen (200 duplicate)",
    labels: &[CRM, CLIENT],
    kind: Kind::Count,
};
/// Requests refused by the front door.
pub const INGEST_REFUSED: Metric = Metric {
    name: "IngestRefused",
    help: "Requests refused or discarded by the front door, by reason: origin_not_allowed, origin_required, signature_invalid, signature_expired, rate_limited, email_rate_limited, ip_rate_limited, bot, suppressed, consent_denied",
    labels: &[REASON],
    kind: Kind::Count,
};
/// URL fields dropped.
pub const FIELDS_DROPPED: Metric = Metric {
    name: "FieldsDropped",
    help: "URL fields dropped from stored events because their host is not the client's",
    labels: &["field", REASON],
    kind: Kind::Count,
};
/// Records handed to a delivery queue.
pub const ROUTED: Metric = Metric {
    name: "Routed",
    help: "Records handed on to their destination's delivery queue",
    labels: &[CRM],
    kind: Kind::Count,
};
/// Records the fanout dead-lettered.
pub const FANOUT_DEAD_LETTERED: Metric = Metric {
    name: "FanoutDeadLettered",
    help: "Records put on their destination's DLQ by the fanout: too large, malformed, refused",
    labels: &[CRM],
    kind: Kind::Count,
};
/// Records the fanout could not hand on.
pub const FANOUT_FAILED: Metric = Metric {
    name: "FanoutFailed",
    help: "Records the fanout could not hand on this time; they are given again",
    labels: &[CRM],
    kind: Kind::Count,
};
/// Changes the fanout skipped.
pub const SKIPPED: Metric = Metric {
    name: "Skipped",
    help: "Changes the fanout skipped, by reason",
    labels: &[REASON],
    kind: Kind::Count,
};
/// Receipt → delivery queue.
pub const FANOUT_LAG: Metric = Metric {
    name: "FanoutLag",
    help: "From a record's receipt to its message on the delivery queue (on AWS: the stream's IteratorAge)",
    labels: &[],
    kind: Kind::Duration,
};
/// Messages delivered.
pub const DELIVERED: Metric = Metric {
    name: "Delivered",
    help: "Messages delivered to their destination",
    labels: &[CRM, CLIENT],
    kind: Kind::Count,
};
/// Messages left for a later retry.
pub const RETRIED: Metric = Metric {
    name: "Retried",
    help: "Messages left for a later retry",
    labels: &[CRM, CLIENT],
    kind: Kind::Count,
};
/// Messages held back by a throttle.
pub const THROTTLED: Metric = Metric {
    name: "Throttled",
    help: "Messages held back by a destination's throttle",
    labels: &[CRM, CLIENT],
    kind: Kind::Count,
};
/// Messages dead-lettered by delivery.
pub const DEAD_LETTERED: Metric = Metric {
    name: "DeadLettered",
    help: "Messages sent to the DLQ by delivery",
    labels: &[CRM, CLIENT],
    kind: Kind::Count,
};
/// Messages acknowledged without a write.
pub const DELIVERY_SKIPPED: Metric = Metric {
    name: "DeliverySkipped",
    help: "Messages acknowledged without a write, by reason: skipped_unknown_contact (update-only miss), skipped_event_type, skipped_update_only_unsupported, skipped_suppressed (erased email)",
    labels: &[CRM, CLIENT, REASON],
    kind: Kind::Count,
};
/// Receipt → delivered.
pub const DELIVERY_LATENCY: Metric = Metric {
    name: "DeliveryLatency",
    help: "From receipt to delivery",
    labels: &[CRM, CLIENT],
    kind: Kind::Duration,
};
/// Token refreshes forced by a refusal.
pub const TOKEN_REFRESHES_FORCED: Metric = Metric {
    name: "TokenRefreshesForced",
    help: "Token refreshes forced by a rejected token",
    labels: &[CRM],
    kind: Kind::Count,
};

/// Every metric.
pub static CATALOGUE: &[&Metric] = &[
    &INGEST_REQUESTS,
    &INGEST_LATENCY,
    &ACCEPTED,
    &DUPLICATES,
    &INGEST_REFUSED,
    &FIELDS_DROPPED,
    &ROUTED,
    &FANOUT_DEAD_LETTERED,
    &FANOUT_FAILED,
    &SKIPPED,
    &FANOUT_LAG,
    &DELIVERED,
    &RETRIED,
    &THROTTLED,
    &DEAD_LETTERED,
    &DELIVERY_SKIPPED,
    &DELIVERY_LATENCY,
    &TOKEN_REFRESHES_FORCED,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_one_to_one() {
        assert_eq!(DELIVERED.prometheus_name(), "delivered");
        assert_eq!(
            DELIVERY_LATENCY.prometheus_name(),
            "delivery_latency_seconds"
        );
        assert_eq!(
            FANOUT_DEAD_LETTERED.prometheus_name(),
            "fanout_dead_lettered"
        );
        let names: std::collections::BTreeSet<String> =
            CATALOGUE.iter().map(|m| m.prometheus_name()).collect();
        assert_eq!(names.len(), CATALOGUE.len());
        for m in CATALOGUE {
            assert!(
                m.name.chars().all(|c| c.is_ascii_alphanumeric()),
                "{}",
                m.name
            );
            assert!(m.name.starts_with(|c: char| c.is_ascii_uppercase()));
        }
    }

    #[test]
    fn an_emf_line_carries_the_labels_as_dimensions() {
        let line = DELIVERED.emf_line(1, &["webhook", "shop"], 2.0);
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert_eq!(v["Delivered"], 2.0);
        assert_eq!(v["crm"], "webhook");
        assert_eq!(v["clientId"], "shop");
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0],
            serde_json::json!(["crm", "clientId"])
        );
    }
}
