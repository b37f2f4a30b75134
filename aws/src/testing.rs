//! Helpers for tests against the local AWS API emulator (moto server).
//!
//! `./scripts/test` starts moto, exports `AWS_ENDPOINT_URL` and dummy credentials, and
//! sets `CONNECT_REQUIRE_MOTO=1` so these tests can never be skipped silently in CI. Run
//! alone without an emulator (plain `cargo test`), they print why they are skipped.

/// The SDK config pointing at the emulator, or `None` (test skipped) when
/// `AWS_ENDPOINT_URL` is unset and `CONNECT_REQUIRE_MOTO` is not.
///
/// # Panics
/// When `CONNECT_REQUIRE_MOTO` is set but `AWS_ENDPOINT_URL` is not.
#[allow(clippy::panic)]
pub async fn emulator_config() -> Option<aws_config::SdkConfig> {
    if std::env::var("AWS_ENDPOINT_URL").is_err() {
        if std::env::var("CONNECT_REQUIRE_MOTO").is_ok() {
            panic!("CONNECT_REQUIRE_MOTO is set but AWS_ENDPOINT_URL is not: run ./scripts/test");
        }
        eprintln!("skipped: AWS_ENDPOINT_URL is not set (./scripts/test starts moto server)");
        return None;
    }
    Some(
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await,
    )
}

/// A name unique to this test run, for tables and queues.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}
