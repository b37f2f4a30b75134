//! The smallest `lambda_runtime` function (echoes its event): the baseline that
//! `scripts/bench-lambda` measures the four bootstraps against.

use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<serde_json::Value>| async move { Ok::<_, Error>(event.payload) },
    ))
    .await
}
