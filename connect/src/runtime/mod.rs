//! The single-process runtime of `connect serve`: the pollers and timers that stand in
//! for DynamoDB Streams and the Lambda event sources.

pub mod deliver;
pub mod fanout;
pub mod tokens;
