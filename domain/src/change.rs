//! Change records: what a change feed (DynamoDB Streams, or the local store's feed) hands
//! the fanout, already decoded by the transport shell.

use crate::crm::Crm;
use crate::record::NavigationRecord;

/// The kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A new item.
    Insert,
    /// An item changed.
    Modify,
    /// An item was deleted (by a user or by TTL expiry).
    Remove,
}

impl ChangeKind {
    /// Parses a DynamoDB Streams `eventName`.
    pub fn parse(event_name: &str) -> Option<ChangeKind> {
        match event_name {
            "INSERT" => Some(ChangeKind::Insert),
            "MODIFY" => Some(ChangeKind::Modify),
            "REMOVE" => Some(ChangeKind::Remove),
            _ => None,
        }
    }
}

/// The new image of a change, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Image {
    /// No new image (REMOVE, or a stream without NEW_IMAGE).
    Absent,
    /// An idempotency marker item (see `aws::dynamo::MARKER_KIND`): not an event.
    Marker,
    /// A navigation record (shared: the local store's writer hands the record it
    /// committed to the fanout as is, see `local::store::SqliteStore::committed_after`).
    Record(std::sync::Arc<NavigationRecord>),
    /// An image that is not a valid record. `crm` and `record_id` are what could be
    /// read of it.
    Malformed {
        /// The CRM, if readable.
        crm: Option<Crm>,
        /// The record id, if readable.
        record_id: Option<String>,
        /// Why it is not a record.
        error: String,
    },
}

/// One change, in feed order.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRecord {
    /// Position in the feed (the DynamoDB Streams `SequenceNumber`); reported back when
    /// the record could not be handed on.
    pub sequence_number: String,
    /// INSERT, MODIFY or REMOVE; `None` for an unknown event name.
    pub kind: Option<ChangeKind>,
    /// Whether DynamoDB's TTL process made this change (`userIdentity` Service /
    /// `dynamodb.amazonaws.com`).
    pub ttl_expiry: bool,
    /// The new image.
    pub image: Image,
}
