//! The language of Connect, free of I/O.
//!
//! - [`crm`]: the three CRMs and the ingest route of each.
//! - [`event`]: the GTM event as sent by a tag, parsed into validated types at the edge
//!   ("parse, don't validate"); every field error is collected, none is fatal alone.
//! - [`record`]: the stored navigation record and its deterministic id.
//! - [`client`]: per-client configuration and the RD Station config by `tid`.
//! - [`ports`]: the traits the handlers are written against (stores, directories, clock).
//! - [`secret`]: a wrapper that never prints its content.
//!
//! Every bound is a named constant, documented where it is declared.

pub mod client;
pub mod crm;
pub mod event;
pub mod ports;
pub mod record;
pub mod secret;
pub mod time;

pub use client::{AllowedOrigins, ClientConfig, RdStationConfig};
pub use crm::Crm;
pub use event::{ClientId, Email, EventType, FieldError, GtmEvent};
pub use ports::{ClientDirectory, Clock, PutOutcome, RecordStore, StoreError, SystemClock};
pub use record::NavigationRecord;
pub use secret::Secret;
