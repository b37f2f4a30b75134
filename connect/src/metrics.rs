//! Prometheus metrics of `connect serve`: the metrics of `domain::metrics` (the one
//! vocabulary the Lambdas' EMF lines use too), named `connect_` + the metric in snake
//! case, with the same labels.

use domain::metrics::{self as m, Kind, Metric};
use domain::{ChangeRecord, Image};
use fanout::FanoutOutcome;
use ingest::{IngestResponse, Outcome};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::borrow::Cow;

/// Label pairs, in the catalogue's order. Values known at compile time (routes, statuses,
/// reasons) are borrowed: the request path builds its label sets without copying them.
type Labels = Vec<(&'static str, Cow<'static, str>)>;

fn delivery_histogram() -> Histogram {
    // 1 ms … ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// A counter family of one catalogue metric.
#[derive(Debug, Clone)]
struct Counts {
    metric: &'static Metric,
    family: Family<Labels, Counter>,
}

impl Counts {
    fn add(&self, values: &[&str], n: u64) {
        self.family
            .get_or_create(&labels(self.metric, values))
            .inc_by(n);
    }

    /// [`Counts::add`] with label values that live forever (no copies).
    fn add_static(&self, values: &[&'static str], n: u64) {
        self.family
            .get_or_create(&static_labels(self.metric, values))
            .inc_by(n);
    }
}

/// A histogram family of one catalogue metric (seconds).
#[derive(Debug, Clone)]
struct Durations {
    metric: &'static Metric,
    family: Family<Labels, Histogram>,
}

impl Durations {
    /// Observes each of `seconds` under `values`, with one label lookup for them all.
    fn observe_each(&self, values: &[&str], seconds: impl Iterator<Item = f64>) {
        let histogram = self.family.get_or_create(&labels(self.metric, values));
        for s in seconds {
            histogram.observe(s);
        }
    }

    /// One observation, with label values that live forever (no copies).
    fn observe_static(&self, values: &[&'static str], seconds: f64) {
        self.family
            .get_or_create(&static_labels(self.metric, values))
            .observe(seconds);
    }
}

fn labels(metric: &Metric, values: &[&str]) -> Labels {
    metric
        .dimensions(values)
        .map(|(k, v)| (k, Cow::Owned(v.to_owned())))
        .collect()
}

fn static_labels(metric: &Metric, values: &[&'static str]) -> Labels {
    metric
        .dimensions(values)
        .map(|(k, v)| (k, Cow::Borrowed(v)))
        .collect()
}

/// The status label of the statuses ingest answers, without formatting a number.
fn status_label(status: u16) -> Cow<'static, str> {
    const KNOWN: [(u16, &str); 14] = [
        (200, "200"),
        (202, "202"),
        (204, "204"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (405, "405"),
        (408, "408"),
        (413, "413"),
        (415, "415"),
        (429, "429"),
        (500, "500"),
        (503, "503"),
    ];
    KNOWN.iter().find(|(code, _)| *code == status).map_or_else(
        || Cow::Owned(status.to_string()),
        |(_, s)| Cow::Borrowed(*s),
    )
}

/// All metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Counts,
    latency: Durations,
    accepted: Counts,
    duplicates: Counts,
    refused: Counts,
    fields_dropped: Counts,
    routed: Counts,
    fanout_dead_lettered: Counts,
    fanout_failed: Counts,
    skipped: Counts,
    fanout_lag: Durations,
    delivered: Counts,
    retried: Counts,
    throttled: Counts,
    dead_lettered: Counts,
    delivery_skipped: Counts,
    delivery_latency: Durations,
    token_refreshes: Counts,
}

fn counts(registry: &mut Registry, metric: &'static Metric) -> Counts {
    debug_assert_eq!(metric.kind, Kind::Count);
    let family = Family::<Labels, Counter>::default();
    registry.register(metric.prometheus_name(), metric.help, family.clone());
    Counts { metric, family }
}

fn durations(
    registry: &mut Registry,
    metric: &'static Metric,
    buckets: fn() -> Histogram,
) -> Durations {
    debug_assert_eq!(metric.kind, Kind::Duration);
    let family = Family::<Labels, Histogram>::new_with_constructor(buckets);
    registry.register(metric.prometheus_name(), metric.help, family.clone());
    Durations { metric, family }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("connect");
        Metrics {
            requests: counts(&mut r, &m::INGEST_REQUESTS),
            latency: durations(&mut r, &m::INGEST_LATENCY, latency_histogram),
            accepted: counts(&mut r, &m::ACCEPTED),
            duplicates: counts(&mut r, &m::DUPLICATES),
            refused: counts(&mut r, &m::INGEST_REFUSED),
            fields_dropped: counts(&mut r, &m::FIELDS_DROPPED),
            routed: counts(&mut r, &m::ROUTED),
            fanout_dead_lettered: counts(&mut r, &m::FANOUT_DEAD_LETTERED),
            fanout_failed: counts(&mut r, &m::FANOUT_FAILED),
            skipped: counts(&mut r, &m::SKIPPED),
            fanout_lag: durations(&mut r, &m::FANOUT_LAG, latency_histogram),
            delivered: counts(&mut r, &m::DELIVERED),
            retried: counts(&mut r, &m::RETRIED),
            throttled: counts(&mut r, &m::THROTTLED),
            dead_lettered: counts(&mut r, &m::DEAD_LETTERED),
            delivery_skipped: counts(&mut r, &m::DELIVERY_SKIPPED),
            delivery_latency: durations(&mut r, &m::DELIVERY_LATENCY, delivery_histogram),
            token_refreshes: counts(&mut r, &m::TOKEN_REFRESHES_FORCED),
            registry: r,
        }
    }
}

impl Metrics {
    /// Records one ingest answer.
    pub fn observe(&self, response: &IngestResponse, seconds: f64) {
        let route = response.crm.map_or("other", |c| c.as_str());
        let client = response.client_id.as_deref().unwrap_or("-");
        match status_label(response.status) {
            Cow::Borrowed(status) => self.requests.add_static(&[route, status], 1),
            Cow::Owned(status) => self.requests.add(&[route, &status], 1),
        }
        self.latency.observe_static(&[route], seconds);
        match response.outcome {
            Outcome::Stored => self.accepted.add(&[route, client], 1),
            Outcome::Duplicate => self.duplicates.add(&[route, client], 1),
            Outcome::Refused(reason) | Outcome::Discarded(reason) => {
                self.refused.add_static(&[reason], 1);
            }
            _ => {}
        }
        for field in &response.dropped_fields {
            self.fields_dropped.add_static(&[field, "foreign_host"], 1);
        }
    }

    /// Counts one request refused by the front door.
    pub fn refused(&self, reason: &str) {
        self.refused.add(&[reason], 1);
    }

    /// Records what one fanout batch did; `now_ms` is when its sends returned.
    pub fn observe_fanout(&self, outcome: &FanoutOutcome, records: &[ChangeRecord], now_ms: i64) {
        let by_crm = |c: &Counts, counts: &std::collections::BTreeMap<domain::Crm, u64>| {
            for (crm, n) in counts {
                c.add(&[crm.as_str()], *n);
            }
        };
        by_crm(&self.routed, &outcome.routed);
        by_crm(&self.fanout_dead_lettered, &outcome.dead_lettered);
        by_crm(&self.fanout_failed, &outcome.failed);
        for (reason, n) in &outcome.skipped {
            self.skipped.add(&[reason.as_str()], *n);
        }
        // The records handed on (those before the first failure), one lookup per batch.
        let failed_from = outcome.first_failure.as_deref();
        let lags = records
            .iter()
            .take_while(|record| Some(record.sequence_number.as_str()) != failed_from)
            .filter_map(|record| match &record.image {
                Image::Record(r) => Some((now_ms - r.timestamp).max(0) as f64 / 1000.0),
                _ => None,
            });
        self.fanout_lag.observe_each(&[], lags);
    }

    /// Records what one delivery batch did.
    pub fn observe_delivery(&self, crm: domain::Crm, outcome: &deliver::DeliverOutcome) {
        let crm = crm.as_str();
        for ((client, kind), n) in &outcome.counts {
            if kind.starts_with("skipped_") {
                self.delivery_skipped.add(&[crm, client, kind], *n);
                continue;
            }
            let family = match *kind {
                "delivered" => &self.delivered,
                "retried" => &self.retried,
                "throttled" => &self.throttled,
                _ => &self.dead_lettered,
            };
            family.add(&[crm, client], *n);
        }
        // A batch's latencies come client by client: one label lookup per client.
        for same_client in outcome.latencies_ms.chunk_by(|a, b| a.0 == b.0) {
            let client = same_client[0].0.as_str();
            self.delivery_latency.observe_each(
                &[crm, client],
                same_client.iter().map(|(_, ms)| *ms as f64 / 1000.0),
            );
        }
        if outcome.token_refreshes > 0 {
            self.token_refreshes.add(&[crm], outcome.token_refreshes);
        }
    }

    /// The catalogue metrics this registry exposes.
    #[cfg(test)]
    fn exposed(&self) -> Vec<&'static Metric> {
        let counts = [
            &self.requests,
            &self.accepted,
            &self.duplicates,
            &self.refused,
            &self.fields_dropped,
            &self.routed,
            &self.fanout_dead_lettered,
            &self.fanout_failed,
            &self.skipped,
            &self.delivered,
            &self.retried,
            &self.throttled,
            &self.dead_lettered,
            &self.delivery_skipped,
            &self.token_refreshes,
        ];
        let durations = [&self.latency, &self.fanout_lag, &self.delivery_latency];
        counts
            .iter()
            .map(|c| c.metric)
            .chain(durations.iter().map(|d| d.metric))
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_labels_are_the_status_numbers() {
        for status in 100..600u16 {
            assert_eq!(status_label(status), status.to_string());
        }
    }

    /// The fanout's lag counts the records handed on: those before the first failure,
    /// and only records (not markers).
    #[test]
    fn the_fanout_lag_counts_the_records_handed_on() {
        let record = |seq: &str, image: Image| ChangeRecord {
            sequence_number: seq.to_owned(),
            kind: Some(domain::ChangeKind::Insert),
            ttl_expiry: false,
            image,
        };
        let event = domain::GtmEvent::parse(
            domain::Crm::WEBHOOK,
            serde_json::json!({"clientId": "shop", "email": "a@b.co", "eventType": "lead"}),
        )
        .expect("event");
        let stored = std::sync::Arc::new(domain::NavigationRecord::new(
            event,
            domain::ClientId::parse("shop").expect("id"),
            domain::Crm::WEBHOOK,
            1_000,
            1,
        ));
        let records = [
            record("1", Image::Record(stored.clone())),
            record("2", Image::Marker),
            record("3", Image::Record(stored.clone())),
            record("4", Image::Record(stored)),
        ];
        let metrics = Metrics::default();
        let outcome = FanoutOutcome {
            first_failure: Some("4".into()),
            ..FanoutOutcome::default()
        };
        metrics.observe_fanout(&outcome, &records, 3_000);
        let text = metrics.render();
        for line in [
            "connect_fanout_lag_seconds_count 2",
            "connect_fanout_lag_seconds_sum 4.0",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }

    #[test]
    fn every_catalogue_metric_is_exposed_under_its_one_name() {
        let metrics = Metrics::default();
        let mut exposed: Vec<&str> = metrics.exposed().iter().map(|m| m.name).collect();
        let mut catalogue: Vec<&str> = m::CATALOGUE.iter().map(|m| m.name).collect();
        exposed.sort_unstable();
        catalogue.sort_unstable();
        assert_eq!(exposed, catalogue);
        for c in [&metrics.delivered, &metrics.accepted] {
            c.add(&["webhook", "shop"], 2);
        }
        metrics
            .delivery_latency
            .observe_each(&["webhook", "shop"], std::iter::once(0.01));
        let text = metrics.render();
        for line in [
            r#"connect_delivered_total{crm="webhook",clientId="shop"} 2"#,
            r#"connect_accepted_total{crm="webhook",clientId="shop"} 2"#,
            r#"connect_delivery_latency_seconds_count{crm="webhook",clientId="shop"} 1"#,
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
