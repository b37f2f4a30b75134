//! The single-process runtime of `connect serve`: the pollers and timers that stand in
//! for DynamoDB Streams and the Lambda event sources.

pub mod deliver;
pub mod fanout;
pub mod tokens;

use std::time::Duration;
use tokio::sync::watch;

/// Sleeps `delay` unless `stop` turns true first; returns whether to stop. (A `stop`
/// seen here is consumed: callers must act on the answer, not wait on `changed()`.)
pub(crate) async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        _ = stop.changed() => {}
    }
    *stop.borrow()
}
