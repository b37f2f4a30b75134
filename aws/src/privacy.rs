//! The Lambdas' privacy wiring: the installation key (Secrets Manager) and the
//! suppression table (`SUPPRESSION_TABLE`).

use crate::env::SUPPRESSION_TABLE;
use crate::{DynamoSuppressions, SecretsManager};
use domain::SecretStore;
use domain::privacy::{EmailKeyer, INSTALLATION_KEY_SECRET, Privacy, SuppressionStore};
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
/// required (a missing secret fails the cold start, so no event slips past a
/// suppression); without it, a per-container key and no suppression list (logged).
pub async fn from_env(
    dynamodb: &aws_sdk_dynamodb::Client,
    secrets: &SecretsManager,
) -> Result<Privacy, String> {
    let Ok(table) = std::env::var(SUPPRESSION_TABLE) else {
        tracing::warn!("SUPPRESSION_TABLE is not set: no suppression checks");
        return Ok(Privacy::default());
    };
    let name = installation_key_name();
    let secret = secrets
        .get_secret(&name)
        .await
        .map_err(|e| format!("reading {name}: {e}"))?
        .ok_or_else(|| format!("the secret {name} is missing"))?;
    let keyer = EmailKeyer::from_secret(secret.expose())?;
    Ok(Privacy::new(
        keyer,
        Some(
            Arc::new(DynamoSuppressions::new(dynamodb.clone(), table)) as Arc<dyn SuppressionStore>
        ),
    ))
}
