//! Prometheus metrics of `connect serve` (same names as the Lambda EMF metrics).

use domain::{ChangeRecord, Image};
use fanout::FanoutOutcome;
use ingest::{IngestResponse, Outcome};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of request counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `responsys`, `salesforce`, `rdstation` or `other`.
    pub route: String,
    /// HTTP status.
    pub status: u16,
}

/// Labels by CRM.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CrmLabels {
    /// CRM.
    pub crm: String,
}

/// Labels by skip reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// Why.
    pub reason: String,
}

/// Labels by CRM and client.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabels {
    /// CRM.
    pub crm: String,
    /// Client.
    pub client: String,
}

/// Labels by route.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route.
    pub route: String,
}

/// All metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    stored: Family<CrmLabels, Counter>,
    duplicates: Family<CrmLabels, Counter>,
    routed: Family<CrmLabels, Counter>,
    fanout_dead_lettered: Family<CrmLabels, Counter>,
    fanout_failed: Family<CrmLabels, Counter>,
    skipped: Family<ReasonLabels, Counter>,
    fanout_lag: Histogram,
    delivery: Family<ClientLabels, Counter>,
    retried: Family<ClientLabels, Counter>,
    throttled: Family<ClientLabels, Counter>,
    dead_lettered: Family<ClientLabels, Counter>,
    delivery_latency: Family<CrmLabels, Histogram>,
    token_refreshes: Family<CrmLabels, Counter>,
    refused: Family<ReasonLabels, Counter>,
    fields_dropped: Family<FieldLabels, Counter>,
    delivery_skipped: Family<ClientReasonLabels, Counter>,
}

/// Labels by event field and reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FieldLabels {
    /// The field's name.
    pub field: String,
    /// Why it was dropped (`foreign_host`).
    pub reason: String,
}

/// Labels by CRM, client and reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientReasonLabels {
    /// CRM.
    pub crm: String,
    /// Client.
    pub client: String,
    /// Why.
    pub reason: String,
}

fn delivery_histogram() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("connect");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let stored = Family::<CrmLabels, Counter>::default();
        let duplicates = Family::<CrmLabels, Counter>::default();
        registry.register(
            "ingest_requests",
            "Ingest HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "ingest_latency_seconds",
            "Ingest request latency, from request read to response",
            latency.clone(),
        );
        registry.register(
            "records_stored",
            "Navigation records stored",
            stored.clone(),
        );
        registry.register(
            "records_duplicate",
            "Events not stored again because their eventId was seen",
            duplicates.clone(),
        );
        let routed = Family::<CrmLabels, Counter>::default();
        let fanout_dead_lettered = Family::<CrmLabels, Counter>::default();
        let fanout_failed = Family::<CrmLabels, Counter>::default();
        let skipped = Family::<ReasonLabels, Counter>::default();
        let fanout_lag = latency_histogram();
        registry.register(
            "routed",
            "Records handed on to their CRM's delivery queue (EMF: Routed)",
            routed.clone(),
        );
        registry.register(
            "fanout_dead_lettered",
            "Records put on their CRM's DLQ by the fanout: too large, malformed, refused (EMF: FanoutDeadLettered)",
            fanout_dead_lettered.clone(),
        );
        registry.register(
            "fanout_failed",
            "Records the fanout could not hand on this time; they are given again (EMF: FanoutFailed)",
            fanout_failed.clone(),
        );
        registry.register(
            "skipped",
            "Changes the fanout skipped, by reason (EMF: Skipped)",
            skipped.clone(),
        );
        registry.register(
            "fanout_lag_seconds",
            "From a record's receipt to its message on the delivery queue",
            fanout_lag.clone(),
        );
        let delivery = Family::<ClientLabels, Counter>::default();
        let retried = Family::<ClientLabels, Counter>::default();
        let throttled = Family::<ClientLabels, Counter>::default();
        let dead_lettered = Family::<ClientLabels, Counter>::default();
        let delivery_latency = Family::<CrmLabels, Histogram>::new_with_constructor(
            delivery_histogram as fn() -> Histogram,
        );
        let token_refreshes = Family::<CrmLabels, Counter>::default();
        registry.register(
            "delivered",
            "Messages delivered to their CRM (EMF: Delivered)",
            delivery.clone(),
        );
        registry.register(
            "retried",
            "Messages left for a later retry (EMF: Retried)",
            retried.clone(),
        );
        registry.register(
            "throttled",
            "Messages held back by a CRM throttle (EMF: Throttled)",
            throttled.clone(),
        );
        registry.register(
            "dead_lettered",
            "Messages sent to the DLQ (EMF: DeadLettered)",
            dead_lettered.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "From receipt to delivery (EMF: DeliveryLatencyMs)",
            delivery_latency.clone(),
        );
        registry.register(
            "token_refreshes_forced",
            "Token refreshes forced by a rejected token",
            token_refreshes.clone(),
        );
        let refused = Family::<ReasonLabels, Counter>::default();
        let fields_dropped = Family::<FieldLabels, Counter>::default();
        let delivery_skipped = Family::<ClientReasonLabels, Counter>::default();
        registry.register(
            "ingest_refused",
            "Requests refused or discarded by the front door, by reason: origin_not_allowed, origin_required, signature_invalid, signature_expired, rate_limited, email_rate_limited, ip_rate_limited, bot (EMF: IngestRefused)",
            refused.clone(),
        );
        registry.register(
            "ingest_fields_dropped",
            "URL fields dropped from stored events because their host is not the client's (EMF: FieldsDropped)",
            fields_dropped.clone(),
        );
        registry.register(
            "delivery_skipped",
            "Messages acknowledged without a CRM write, by reason: skipped_unknown_contact (update-only miss), skipped_event_type, skipped_update_only_unsupported, skipped_suppressed (erased email) (EMF: DeliverySkipped)",
            delivery_skipped.clone(),
        );
        Metrics {
            refused,
            fields_dropped,
            delivery_skipped,
            delivery,
            retried,
            throttled,
            dead_lettered,
            delivery_latency,
            token_refreshes,
            registry,
            requests,
            latency,
            stored,
            duplicates,
            routed,
            fanout_dead_lettered,
            fanout_failed,
            skipped,
            fanout_lag,
        }
    }
}

impl Metrics {
    /// Records one ingest answer.
    pub fn observe(&self, response: &IngestResponse, seconds: f64) {
        let route = response.crm.map_or("other", |c| c.as_str()).to_owned();
        self.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                status: response.status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .observe(seconds);
        match response.outcome {
            Outcome::Stored => {
                self.stored.get_or_create(&CrmLabels { crm: route }).inc();
            }
            Outcome::Duplicate => {
                self.duplicates
                    .get_or_create(&CrmLabels { crm: route })
                    .inc();
            }
            Outcome::Refused(reason) | Outcome::Discarded(reason) => self.refused(reason),
            _ => {}
        }
        for field in &response.dropped_fields {
            self.fields_dropped
                .get_or_create(&FieldLabels {
                    field: (*field).to_owned(),
                    reason: "foreign_host".to_owned(),
                })
                .inc();
        }
    }

    /// Counts one request refused by the front door.
    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Records what one fanout batch did; `now_ms` is when its sends returned.
    pub fn observe_fanout(&self, outcome: &FanoutOutcome, records: &[ChangeRecord], now_ms: i64) {
        let by_crm = |family: &Family<CrmLabels, Counter>,
                      counts: &std::collections::BTreeMap<domain::Crm, u64>| {
            for (crm, n) in counts {
                family
                    .get_or_create(&CrmLabels {
                        crm: crm.as_str().to_owned(),
                    })
                    .inc_by(*n);
            }
        };
        by_crm(&self.routed, &outcome.routed);
        by_crm(&self.fanout_dead_lettered, &outcome.dead_lettered);
        by_crm(&self.fanout_failed, &outcome.failed);
        for (reason, n) in &outcome.skipped {
            self.skipped
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str().to_owned(),
                })
                .inc_by(*n);
        }
        let failed_from = outcome.first_failure.as_deref();
        for record in records {
            if Some(record.sequence_number.as_str()) == failed_from {
                break;
            }
            if let Image::Record(r) = &record.image {
                let lag_ms = (now_ms - r.timestamp).max(0);
                self.fanout_lag.observe(lag_ms as f64 / 1000.0);
            }
        }
    }

    /// Records what one delivery batch did.
    pub fn observe_delivery(&self, crm: domain::Crm, outcome: &deliver::DeliverOutcome) {
        for ((client, kind), n) in &outcome.counts {
            if kind.starts_with("skipped_") {
                self.delivery_skipped
                    .get_or_create(&ClientReasonLabels {
                        crm: crm.as_str().to_owned(),
                        client: client.clone(),
                        reason: (*kind).to_owned(),
                    })
                    .inc_by(*n);
                continue;
            }
            let family = match *kind {
                "delivered" => &self.delivery,
                "retried" => &self.retried,
                "throttled" => &self.throttled,
                _ => &self.dead_lettered,
            };
            family
                .get_or_create(&ClientLabels {
                    crm: crm.as_str().to_owned(),
                    client: client.clone(),
                })
                .inc_by(*n);
        }
        let labels = CrmLabels {
            crm: crm.as_str().to_owned(),
        };
        for (_, ms) in &outcome.latencies_ms {
            self.delivery_latency
                .get_or_create(&labels)
                .observe(*ms as f64 / 1000.0);
        }
        if outcome.token_refreshes > 0 {
            self.token_refreshes
                .get_or_create(&labels)
                .inc_by(outcome.token_refreshes);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
