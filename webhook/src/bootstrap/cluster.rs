//! The Kubernetes I/O: the shared Secret (read, created or replaced, every write
//! conditional on what was read) and caBundle of our MutatingWebhookConfiguration.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tracing::{debug, info, warn};

use super::error::BootstrapError;
use super::options::BootstrapOptions;
use super::rotation::{Decision, decide};
use super::secret::Material;
use super::x509::issue_all;

/// Field manager name for our writes.
const FIELD_MANAGER: &str = "mesh-webhook";
/// How often a conflicting write is retried (re-reading the winner each time).
const MAX_ATTEMPTS: usize = 8;

pub(super) fn api_err(
    action: &'static str,
    object: impl Into<String>,
) -> impl FnOnce(kube::Error) -> BootstrapError {
    let object = object.into();
    move |source| BootstrapError::Api {
        action,
        object,
        source,
    }
}

pub(super) fn api_status(err: &kube::Error) -> Option<&kube::core::Status> {
    match err {
        kube::Error::Api(status) => Some(status),
        _ => None,
    }
}

/// Reads the Secret and creates, keeps or rotates what it holds; every write is
/// conditional, and a lost race re-reads the winner's material.
pub(super) async fn ensure_secret(
    client: kube::Client,
    opts: &BootstrapOptions,
    now: SystemTime,
) -> Result<Material, BootstrapError> {
    let api: Api<Secret> = Api::namespaced(client, &opts.namespace);
    let object = format!("Secret {}/{}", opts.namespace, opts.secret_name);
    for attempt in 1..=MAX_ATTEMPTS {
        let existing = api
            .get_opt(&opts.secret_name)
            .await
            .map_err(api_err("get", &object))?;
        let Some(mut secret) = existing else {
            let fresh = issue_all(opts, now, &[])?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(opts.secret_name.clone()),
                    namespace: Some(opts.namespace.clone()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".to_owned(),
                        FIELD_MANAGER.to_owned(),
                    )])),
                    ..ObjectMeta::default()
                },
                type_: Some("kubernetes.io/tls".to_owned()),
                data: Some(fresh.to_secret_data()),
                ..Secret::default()
            };
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PostParams::default()
            };
            match api.create(&pp, &secret).await {
                Ok(_) => {
                    info!(%object, "created a new CA and serving certificate");
                    return Ok(fresh);
                }
                Err(e) if api_status(&e).is_some_and(|s| s.is_already_exists()) => {
                    debug!(%object, attempt, "another replica created it first; reading theirs");
                    continue;
                }
                Err(e) => return Err(api_err("create", &object)(e)),
            }
        };
        let decision = match Material::from_secret(&secret) {
            Ok(stored) => decide(opts, now, stored)?,
            Err(reason) => {
                warn!(%object, %reason, "unusable certificate Secret; replacing it");
                Decision::Replace {
                    material: issue_all(opts, now, &[])?,
                    why: "the stored material was unusable",
                }
            }
        };
        match decision {
            Decision::Keep(material) => return Ok(material),
            Decision::Replace { material, why } => {
                secret.data = Some(material.to_secret_data());
                secret.string_data = None;
                let pp = PostParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..PostParams::default()
                };
                // `replace` carries the resourceVersion we read: it fails with Conflict
                // if anyone wrote in between, and then we look at what they wrote.
                match api.replace(&opts.secret_name, &pp, &secret).await {
                    Ok(_) => {
                        info!(%object, why, "rotated certificates");
                        return Ok(material);
                    }
                    Err(e) if api_status(&e).is_some_and(|s| s.is_conflict()) => {
                        debug!(%object, attempt, "lost a rotation race; re-reading");
                        continue;
                    }
                    Err(e) => return Err(api_err("update", &object)(e)),
                }
            }
        }
    }
    Err(BootstrapError::Contention {
        object,
        attempts: MAX_ATTEMPTS,
    })
}

/// Sets caBundle on every webhook of the named configuration, where it differs.
pub(super) async fn patch_ca_bundle(
    client: kube::Client,
    name: &str,
    bundle_pem: &str,
) -> Result<(), BootstrapError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let object = format!("MutatingWebhookConfiguration {name}");
    let current = api.get(name).await.map_err(api_err("get", &object))?;
    let webhooks = current.webhooks.unwrap_or_default();
    if webhooks.is_empty() {
        return Err(BootstrapError::NoWebhooks {
            name: name.to_owned(),
        });
    }
    let stale: Vec<&str> = webhooks
        .iter()
        .filter(|w| {
            w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice())
                != Some(bundle_pem.as_bytes())
        })
        .map(|w| w.name.as_str())
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    let bundle = serde_json::to_value(ByteString(bundle_pem.as_bytes().to_vec())).map_err(|e| {
        BootstrapError::BadCertificate {
            what: "caBundle".into(),
            reason: e.to_string(),
        }
    })?;
    // Strategic merge: `webhooks` merges by `name`, so only caBundle of the webhooks we
    // read is touched, whatever their order.
    let patch = serde_json::json!({
        "webhooks": stale
            .iter()
            .map(|n| serde_json::json!({"name": n, "clientConfig": {"caBundle": bundle}}))
            .collect::<Vec<_>>()
    });
    api.patch(
        name,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        },
        &Patch::Strategic(patch),
    )
    .await
    .map_err(api_err("patch", &object))?;
    info!(%object, webhooks = ?stale, "patched caBundle");
    Ok(())
}
