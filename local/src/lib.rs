//! Embedded adapters of Connect's ports on SQLite, for `connect serve`.
//!
//! One database file (`connect.db` under the data directory) in WAL mode holds every
//! table: the navigation buffer — append-only, so its insertion order (`seq`) is the
//! change feed, committed atomically with each record as DynamoDB Streams would emit
//! it — consumers' checkpoints, clients and RD Station config.
//!
//! Writes go through one writer thread that groups concurrent requests into one
//! transaction ([`store::SqliteStore`]: group commit), so throughput does not collapse to
//! one fsync per event, while every caller is answered only after its commit.

pub mod alerts;
mod dedup;
pub mod feed;
pub mod privacy;
pub mod queues;
pub mod schema;
pub mod store;
pub mod tokens;

pub use alerts::LogAlerts;
pub use queues::{LocalQueues, QueueStats, ReceivedMessage, queue_name};
pub use store::{Change, SqliteStore, StoreOptions, Synchronous};
pub use tokens::FileSecrets;
