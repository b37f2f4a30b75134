//! The token schedule of `connect serve`: per CRM, a timer that refreshes the tokens
//! that are due (at start, then every interval).

use domain::{AlertSink, ClientDirectory, Clock, SecretStore, TokenStore};
use std::time::{Duration, Instant};
use token::TokenHandler;
use tokio::sync::watch;

/// Default seconds between checks (a check only reads the cache; refreshes happen when
/// a token is due).
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// Runs until `stop` turns true.
pub async fn run<D, T, S, A, C>(
    handler: TokenHandler<D, T, S, A, C>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) where
    D: ClientDirectory,
    T: TokenStore,
    S: SecretStore,
    A: AlertSink,
    C: Clock,
{
    while !*stop.borrow() {
        handler
            .handle(None, false, Some(Instant::now() + every))
            .await;
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.changed() => {}
        }
    }
}
