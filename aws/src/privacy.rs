//! The Lambdas' privacy wiring: the installation key (Secrets Manager) and the
//! suppression table (`SUPPRESSION_TABLE`).

use crate::env::SUPPRESSION_TABLE;
use crate::{DynamoSuppressions, SecretsManager};
use domain::SecretStore;
use domain::privacy::{EmailKeyer, INSTALLATION_KEY_SECRET, KeyLoader, Privacy, SuppressionStore};
use std::sync::Arc;

/// Env var naming the installation key's secret (serverless.yml sets one per stage).
pub const INSTALLATION_KEY_SECRET_NAME: &str = "INSTALLATION_KEY_SECRET_NAME";

/// The installation key's secret name: `INSTALLATION_KEY_SECRET_NAME`, else
/// [`INSTALLATION_KEY_SECRET`].
pub fn installation_key_name() -> String {
    std::env::var(INSTALLATION_KEY_SECRET_NAME)
        .unwrap_or_else(|_| INSTALLATION_KEY_SECRET.to_owned())
}

/// The privacy guard of a Lambda: with `SUPPRESSION_TABLE` set, the installation key is
/// required. It is read from Secrets Manager in the background from the cold start
/// (which then does not wait for it; the read overlaps the runtime's first poll and the
/// first event's other lookups), and every check that needs it waits for it. A missing
/// or unreadable secret is logged and fails those checks, so no event slips past a
/// suppression: ingest refuses the event with a 503 (the front door's 5xx alarm), deliver
/// retries the message; the next check reads the secret again. Without the table, a
/// per-container key and no suppression list (logged).
pub fn from_env(dynamodb: &aws_sdk_dynamodb::Client, secrets: &SecretsManager) -> Privacy {
    let Ok(table) = std::env::var(SUPPRESSION_TABLE) else {
        tracing::warn!("SUPPRESSION_TABLE is not set: no suppression checks");
        return Privacy::default();
    };
    from_parts(dynamodb, secrets, table, installation_key_name())
}

/// [`from_env`] with the suppression table and the key's secret named: the read of the
/// key is started here.
pub fn from_parts(
    dynamodb: &aws_sdk_dynamodb::Client,
    secrets: &SecretsManager,
    table: String,
    secret_name: String,
) -> Privacy {
    let privacy = Privacy::deferred(
        key_loader(secrets.clone(), secret_name),
        Some(
            Arc::new(DynamoSuppressions::new(dynamodb.clone(), table)) as Arc<dyn SuppressionStore>
        ),
    );
    // Outside a Tokio runtime there is nothing to read it on now: the first check reads it.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let preload = privacy.clone();
        runtime.spawn(async move {
            if let Err(e) = preload.preload().await {
                tracing::error!(error = %e, "cannot read the installation key; suppression checks fail (ingest answers 503, deliver retries) until it can be read");
            }
        });
    }
    privacy
}

/// Reads the installation key's secret `name`.
fn key_loader(secrets: SecretsManager, name: String) -> KeyLoader {
    Arc::new(move || {
        let (secrets, name) = (secrets.clone(), name.clone());
        Box::pin(async move {
            let secret = secrets
                .get_secret(&name)
                .await
                .map_err(|e| format!("reading {name}: {e}"))?
                .ok_or_else(|| format!("the secret {name} is missing"))?;
            EmailKeyer::from_secret(secret.expose())
        })
    })
}
