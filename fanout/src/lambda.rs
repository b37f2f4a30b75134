//! DynamoDB Streams shell around the handler.

use aws_lambda_events::dynamodb::{Event, EventRecord};
use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use domain::{ChangeKind, ChangeRecord, Crm, Image, NavigationRecord};

/// `userIdentity` of deletes made by DynamoDB's TTL process.
const TTL_PRINCIPAL: &str = "dynamodb.amazonaws.com";

/// Decodes a stream record.
pub fn change_record(record: &EventRecord) -> ChangeRecord {
    let ttl_expiry = record
        .user_identity
        .as_ref()
        .is_some_and(|u| u.type_ == "Service" && u.principal_id == TTL_PRINCIPAL);
    ChangeRecord {
        // DynamoDB always sets SequenceNumber; the event id is a non-empty fallback so
        // that a failure is never reported with an empty identifier.
        sequence_number: record
            .change
            .sequence_number
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| record.event_id.clone()),
        kind: ChangeKind::parse(&record.event_name),
        ttl_expiry,
        image: decode_image(&record.change.new_image),
    }
}

/// Decodes a stream NEW_IMAGE: nothing, an idempotency marker (written before the
/// one-write design), a record, or what could be read of a malformed item.
pub fn decode_image(item: &serde_dynamo::Item) -> Image {
    if item.is_empty() {
        Image::Absent
    } else if item.get("marker").is_some() {
        Image::Marker
    } else {
        // An idempotent record is keyed by the start of its day and keeps its receipt
        // time in `receivedAt` (aws::dynamo::record_item).
        let mut item = item.clone();
        if let Some(received) = item.get("receivedAt").cloned() {
            item.insert("timestamp".to_owned(), received);
        }
        match serde_dynamo::from_item::<_, NavigationRecord>(item.clone()) {
            Ok(r) => Image::Record(std::sync::Arc::new(r)),
            Err(e) => {
                let text = |key: &str| match item.get(key) {
                    Some(serde_dynamo::AttributeValue::S(s)) => Some(s.clone()),
                    _ => None,
                };
                Image::Malformed {
                    crm: text("crm").and_then(|c| c.parse::<Crm>().ok()),
                    record_id: text("recordId"),
                    error: e.to_string(),
                }
            }
        }
    }
}

/// Decodes a whole stream event, in order.
pub fn change_records(event: &Event) -> Vec<ChangeRecord> {
    event.records.iter().map(change_record).collect()
}

/// The partial batch response: the first record not handed on, or nothing.
pub fn batch_response(first_failure: Option<String>) -> DynamoDbEventResponse {
    let mut response = DynamoDbEventResponse::default();
    response.batch_item_failures = first_failure
        .filter(|s| !s.is_empty())
        .map(|seq| {
            let mut f = DynamoDbBatchItemFailure::default();
            f.item_identifier = Some(seq);
            f
        })
        .into_iter()
        .collect();
    response
}
