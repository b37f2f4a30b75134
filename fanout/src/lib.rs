//! The fanout handler: new navigation records become delivery messages on their CRM's
//! queue.
//!
//! [`FanoutHandler::handle`] is transport-free: an ordered batch of
//! [`domain::ChangeRecord`]s in, a [`FanoutOutcome`] out, naming the first record that
//! could not be handed on (streams checkpoint in order). The Lambda binary
//! ([`lambda`]: DynamoDB Streams) and the local change-feed poller of `connect serve`
//! are thin shells around it.

pub mod handler;
pub mod lambda;

pub use handler::{FanoutHandler, FanoutOutcome, FanoutSettings, Skip};
