//! Prometheus metrics of `connect serve` (same names as the Lambda EMF metrics).

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
        Metrics {
            registry,
            requests,
            latency,
            stored,
            duplicates,
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
            _ => {}
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
