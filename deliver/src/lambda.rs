//! SQS shell around the handler.

use crate::handler::InboundMessage;
use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};

/// Decodes an SQS event. Messages without a message id cannot be reported as failures
/// (an empty identifier fails the whole batch), so they get a stand-in id and are
/// handled like the others.
pub fn inbound(event: &SqsEvent) -> Vec<InboundMessage> {
    event
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| InboundMessage {
            message_id: r
                .message_id
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| format!("unknown-{i}")),
            receipt_handle: r.receipt_handle.clone().unwrap_or_default(),
            body: r.body.clone().unwrap_or_default(),
            attributes: r
                .message_attributes
                .iter()
                .filter_map(|(k, v)| v.string_value.clone().map(|s| (k.clone(), s)))
                .collect(),
            receive_count: r
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|c| c.parse().ok())
                .unwrap_or(1),
            sent_at_ms: r
                .attributes
                .get("SentTimestamp")
                .and_then(|t| t.parse().ok()),
        })
        .collect()
}

/// The partial batch response (only non-empty ids).
pub fn batch_response(redeliver: &[String]) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = redeliver
        .iter()
        .filter(|id| !id.is_empty())
        .map(|id| {
            let mut f = BatchItemFailure::default();
            f.item_identifier = id.clone();
            f
        })
        .collect();
    response
}
