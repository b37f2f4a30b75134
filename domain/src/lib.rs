//! The language of Connect, free of I/O.
//!
//! - [`crm`]: the three CRMs and the ingest route of each.
//! - [`event`]: the GTM event as sent by a tag, parsed into validated types at the edge
//!   ("parse, don't validate"); every field error is collected, none is fatal alone.
//! - [`record`]: the stored navigation record and its deterministic id.
//! - [`client`]: per-client configuration and the RD Station config by `tid`.
//! - [`change`]: change-feed records as the fanout sees them.
//! - [`delivery`]: the delivery message (queue body) and its attributes.
//! - [`ports`]: the traits the handlers are written against (stores, directories, queues,
//!   alerts, clock).
//! - [`secret`]: a wrapper that never prints its content.
//!
//! Every bound is a named constant, documented where it is declared.

pub mod alerts;
pub mod change;
pub mod client;
pub mod crm;
pub mod delivery;
pub mod emf;
pub mod event;
pub mod metrics;
pub mod ports;
pub mod privacy;
pub mod record;
pub mod redact;
pub mod secret;
pub mod signature;
pub mod time;
pub mod token;

pub use change::{ChangeKind, ChangeRecord, Image};
pub use client::{AllowedOrigins, ClientConfig, ClientPolicy, ContactCreation, RdStationConfig};
pub use crm::Crm;
pub use delivery::DeliveryMessage;
pub use event::{ClientId, Email, EventSignature, EventType, FieldError, GtmEvent};
pub use ports::{
    Alert, AlertSink, Attribute, ClientDirectory, Clock, OutgoingMessage, PutOutcome, QueueControl,
    QueueError, QueueKind, QueueSender, RecordStore, SecretStore, SendFailure, StoreError,
    SystemClock, TokenStore,
};
pub use record::NavigationRecord;
pub use secret::Secret;
pub use token::StoredToken;

/// Lower-case hex of `bytes`, by table (the `hex` crate's `encode` goes through a
/// `char` iterator: measurable on the request path, where every event hashes an email
/// twice).
pub fn hex_lower(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    // `encode_to_slice` fails only when the output length is not twice the input's.
    let _ = hex::encode_to_slice(bytes, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_lower_is_hex_encode() {
        for bytes in [
            &[][..],
            &[0u8][..],
            &[0xde, 0xad, 0xbe, 0xef, 0x01, 0xff][..],
        ] {
            assert_eq!(super::hex_lower(bytes), hex::encode(bytes));
        }
    }
}
