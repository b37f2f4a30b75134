//! CloudWatch Embedded Metric Format: a log line that CloudWatch turns into metrics.
//! The same metric names are exported as Prometheus metrics by `connect serve`.

use serde_json::{Map, Value, json};

/// CloudWatch namespace of every Connect metric.
pub const NAMESPACE: &str = "Connect";

/// One EMF log line: `metrics` (name, value, unit) with the given dimensions.
pub fn line(
    timestamp_ms: i64,
    dimensions: &[(&str, &str)],
    metrics: &[(&str, f64, &str)],
) -> String {
    let mut root = Map::new();
    let names: Vec<&str> = dimensions.iter().map(|(k, _)| *k).collect();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [names],
                "Metrics": metrics.iter().map(|(n, _, u)| json!({"Name": n, "Unit": u})).collect::<Vec<_>>(),
            }],
        }),
    );
    for (k, v) in dimensions {
        root.insert((*k).into(), Value::String((*v).to_owned()));
    }
    for (n, v, _) in metrics {
        root.insert((*n).into(), json!(v));
    }
    Value::Object(root).to_string()
}

/// One EMF line with one metric holding several values (e.g. latencies).
pub fn values_line(
    timestamp_ms: i64,
    dimensions: &[(&str, &str)],
    name: &str,
    values: &[f64],
    unit: &str,
) -> String {
    let mut v: Value = serde_json::from_str(&line(timestamp_ms, dimensions, &[(name, 0.0, unit)]))
        .unwrap_or(Value::Null);
    v[name] = json!(values);
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape() {
        let l = line(1, &[("crm", "responsys")], &[("Routed", 3.0, "Count")]);
        let v: Value = serde_json::from_str(&l).expect("json");
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Namespace"], "Connect");
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0][0], "crm");
        assert_eq!(v["crm"], "responsys");
        assert_eq!(v["Routed"], 3.0);
    }
}
