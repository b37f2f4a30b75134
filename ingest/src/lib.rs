//! The ingest handler: a GTM request becomes a validated, stored navigation record.
//!
//! [`IngestHandler::handle`] is transport-free: `(method, path, headers, body, source ip,
//! request id)` in, `(status, headers, JSON body)` out. The Lambda binary
//! ([`lambda::handle_apigw`]) and `connect serve` are thin shells around it.

pub mod bots;
pub mod cache;
pub mod handler;
pub mod lambda;
pub mod limits;
pub mod signing;

pub use handler::{
    IngestHandler, IngestRequest, IngestResponse, IngestSettings, MAX_BODY_BYTES,
    MAX_PIXEL_QUERY_BYTES, Outcome, PIXEL_GIF, request_origin,
};
