//! AWS adapters of Connect's ports.
//!
//! - [`dynamo`]: the navigation table ([`dynamo::DynamoRecordStore`]) and the client and
//!   RD Station config tables ([`dynamo::DynamoClientDirectory`]), items converted with
//!   `serde_dynamo` here, never in the domain.
//! - [`sqs`]: delivery and dead-letter queues ([`sqs::SqsQueues`]).
//! - [`tokens`]: the tokens table (conditional writes) and Secrets Manager.
//! - [`sns`]: operator alerts ([`sns::SnsAlerts`]).
//! - [`provision`]: table definitions, used by tests on the AWS API emulator (the
//!   deployment itself is `serverless.yml`).
//! - [`env`]: the Lambda environment contract of DESIGN.md.
//! - [`testing`]: helpers for tests that run against moto server.
//!
//! SDK clients are built once per process and passed in.

pub mod dynamo;
pub mod env;
pub mod privacy;
pub mod provision;
pub mod sns;
pub mod sqs;
pub mod suppressions;
pub mod testing;
pub mod tokens;

pub use dynamo::{DynamoClientDirectory, DynamoRecordStore};
pub use sns::SnsAlerts;
pub use sqs::SqsQueues;
pub use suppressions::DynamoSuppressions;
pub use tokens::{DynamoTokens, SecretsManager};
