//! Self-managed webhook certificates: what `mesh-webhook serve --self-signed` does before
//! (and while) it serves.
//!
//! This module owns the CA and the serving certificate of the webhook's Service, and the
//! three places they live:
//! - one Secret in the webhook's namespace, so that every replica serves the same
//!   certificate (the first replica to create it wins; the others read the winner's, so
//!   replicas racing at start end with ONE CA, never a flip-flop);
//! - the `--cert`/`--key` files the HTTPS server loads (and re-reads when they change);
//! - `caBundle` of every webhook in the webhook's own MutatingWebhookConfiguration,
//!   patched by name (the only object of its kind RBAC lets it touch).
//!
//! Rotation: a certificate is renewed when less than a third of its lifetime is left.
//! A new CA is added to the bundle next to the old one, which stays until it expires, so
//! the API server trusts both old and new serving certificates during the rollover.
//! Every write to the Secret is conditional on the `resourceVersion` read, so replicas
//! that decide to rotate at the same moment converge on the one update that won.
//!
//! One module per concern; this one ties them together:
//! - [`options`]: what is managed and where ([`BootstrapOptions`], from the `serve` flags);
//! - [`secret`]: the Secret's keys and the [`Material`] they hold;
//! - [`cluster`]: the Kubernetes I/O (the Secret, conditionally; caBundle);
//! - [`files`]: the certificate files the server loads, written atomically;
//! - [`rotation`]: the pure policy that keeps, renews or rolls over;
//! - [`x509`]: issuing and reading the certificates.

pub mod cluster;
pub mod error;
pub mod files;
pub mod options;
pub mod rotation;
pub mod secret;
pub mod x509;

use std::time::{Duration, SystemTime};

use tracing::{debug, info, warn};

pub use crate::cli::SelfSignedArgs;
pub use error::BootstrapError;
pub use options::BootstrapOptions;
pub use secret::{KEY_CA_BUNDLE, KEY_CA_CERT, KEY_CA_KEY, KEY_TLS_CERT, KEY_TLS_KEY, Material};

/// Makes sure the Secret holds current certificates (creating or rotating them), writes
/// them to the server's files, and patches caBundle into the webhook configuration.
/// Safe to call from any number of replicas at once, and again at any time.
pub async fn bootstrap(
    client: kube::Client,
    opts: &BootstrapOptions,
) -> Result<Material, BootstrapError> {
    bootstrap_at(client, opts, SystemTime::now()).await
}

/// [`bootstrap`] as if the clock read `now` (rotation decisions and new certificates'
/// validity start there). Tests use it to look into the future.
pub async fn bootstrap_at(
    client: kube::Client,
    opts: &BootstrapOptions,
    now: SystemTime,
) -> Result<Material, BootstrapError> {
    opts.validate()?;
    let material = cluster::ensure_secret(client.clone(), opts, now).await?;
    files::write_files(opts, &material)?;
    cluster::patch_ca_bundle(client, &opts.webhook_config_name, &material.ca_bundle_pem).await?;
    Ok(material)
}

/// Connects with the in-cluster config (or KUBECONFIG), bootstraps once, and spawns
/// [`rotation_loop`]. Call before the server first loads its certificate files.
pub async fn start(opts: BootstrapOptions) -> Result<tokio::task::JoinHandle<()>, BootstrapError> {
    let client = kube::Client::try_default()
        .await
        .map_err(BootstrapError::Client)?;
    let material = bootstrap(client.clone(), &opts).await?;
    info!(
        secret = %format!("{}/{}", opts.namespace, opts.secret_name),
        webhook_config = %opts.webhook_config_name,
        serving_not_after = ?material.serving_not_after().ok(),
        "self-signed certificates in place"
    );
    Ok(tokio::spawn(rotation_loop(client, opts)))
}

/// Re-runs [`bootstrap`] every `check_interval` (sooner after a failure), so a
/// certificate is renewed in time and each replica picks up what another one wrote.
/// Never returns; abort the task to stop it.
pub async fn rotation_loop(client: kube::Client, opts: BootstrapOptions) {
    let retry = opts.check_interval.min(Duration::from_secs(30));
    let mut wait = opts.check_interval;
    loop {
        tokio::time::sleep(wait).await;
        match bootstrap(client.clone(), &opts).await {
            Ok(_) => {
                debug!("certificates checked");
                wait = opts.check_interval;
            }
            Err(e) => {
                warn!(error = %e, "certificate check failed; retrying");
                wait = retry;
            }
        }
    }
}
