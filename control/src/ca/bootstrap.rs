//! Where the CA key comes from, read once at start in mesh-control's own namespace:
//!
//! 1. Secret `cacerts` (Istio's plugged-in CA: `ca-cert.pem`, `ca-key.pem`,
//!    `cert-chain.pem`, `root-cert.pem`): used as it is. If it is unusable, start-up fails
//!    with an error naming the Secret and the key that is wrong, as istiod does: a mesh
//!    that silently fell back to another root would split in two.
//! 2. Else Secret `istio-ca-secret` (Istio's name for its self-signed root: `ca-cert.pem`,
//!    `ca-key.pem`, `cert-chain.pem` empty, `root-cert.pem` = `ca-cert.pem`): read it; if
//!    it does not exist, make a new root ([`Authority::self_signed`]) and `create` it. A
//!    `409 AlreadyExists` means another replica won the race: its Secret is read and used,
//!    so replicas starting together end with one root. An unusable `istio-ca-secret` is an
//!    error too (it is never overwritten: peers may trust that root).
//!
//! Secrets are read with `get` only (no list, no watch); the only write is the one
//! `create`. The CA is not reloaded while running: a changed `cacerts` takes effect at the
//! next start.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

use crate::ca::authority::{
    Authority, AuthorityError, CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT, SignError,
};

/// Istio's plugged-in CA Secret.
pub const CACERTS_SECRET: &str = "cacerts";
/// Istio's self-signed root Secret.
pub const SELF_SIGNED_SECRET: &str = "istio-ca-secret";
/// The type Istio gives `istio-ca-secret`.
pub const SELF_SIGNED_SECRET_TYPE: &str = "istio.io/ca-root";
/// The field manager of the one write.
const FIELD_MANAGER: &str = "mesh-control";
/// Create-or-read rounds before giving up (a Secret deleted as fast as it is made).
const MAX_ATTEMPTS: usize = 5;

/// Where the CA in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Secret `cacerts`.
    Plugged,
    /// Secret `istio-ca-secret`, made by this process (`created`) or read.
    SelfSigned { created: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot {action} Secret {secret}: {}", describe(.error))]
    Api {
        action: &'static str,
        secret: String,
        error: kube::Error,
    },
    #[error(
        "Secret {secret} has no key {key} (it needs ca-cert.pem, ca-key.pem, root-cert.pem; cert-chain.pem may be empty)"
    )]
    MissingKey { secret: String, key: &'static str },
    #[error("Secret {secret}, key {key}: not UTF-8 text")]
    NotText { secret: String, key: &'static str },
    #[error("Secret {secret}, key {}: {}", .source.file, .source.reason)]
    Unusable {
        secret: String,
        source: AuthorityError,
    },
    #[error("cannot make a self-signed root: {0}")]
    Generate(SignError),
    #[error("Secret {secret}: created and deleted by others {attempts} times in a row; giving up")]
    Contention { secret: String, attempts: usize },
}

/// Loads the CA from `namespace` (see the module docs), as of `now`.
pub async fn bootstrap(
    client: kube::Client,
    namespace: &str,
    trust_domain: &str,
    now: SystemTime,
) -> Result<(Authority, Source), BootstrapError> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let plugged = format!("{namespace}/{CACERTS_SECRET}");
    if let Some(s) = get(&api, CACERTS_SECRET, &plugged).await? {
        let a = from_secret(&s, &plugged, false, now)?;
        tracing::info!(secret = %plugged, "CA: using the plugged-in CA");
        return Ok((a, Source::Plugged));
    }
    let own = format!("{namespace}/{SELF_SIGNED_SECRET}");
    for attempt in 1..=MAX_ATTEMPTS {
        if let Some(s) = get(&api, SELF_SIGNED_SECRET, &own).await? {
            let a = from_secret(&s, &own, true, now)?;
            tracing::info!(secret = %own, "CA: using the self-signed root");
            return Ok((a, Source::SelfSigned { created: false }));
        }
        let fresh = Authority::self_signed(trust_domain, now).map_err(BootstrapError::Generate)?;
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        match api
            .create(&pp, &self_signed_secret(namespace, &fresh))
            .await
        {
            Ok(_) => {
                tracing::info!(secret = %own, %trust_domain, "CA: created a self-signed root");
                return Ok((fresh, Source::SelfSigned { created: true }));
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                tracing::debug!(secret = %own, attempt, "another replica created the root first; reading theirs");
            }
            Err(error) => {
                return Err(BootstrapError::Api {
                    action: "create",
                    secret: own,
                    error,
                });
            }
        }
    }
    Err(BootstrapError::Contention {
        secret: own,
        attempts: MAX_ATTEMPTS,
    })
}

async fn get(api: &Api<Secret>, name: &str, what: &str) -> Result<Option<Secret>, BootstrapError> {
    api.get_opt(name)
        .await
        .map_err(|error| BootstrapError::Api {
            action: "get",
            secret: what.to_owned(),
            error,
        })
}

/// The API server's own words (`namespaces "x" not found (404 NotFound)`), else kube's.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        other => other.to_string(),
    }
}

/// `istio-ca-secret` for a new root.
fn self_signed_secret(namespace: &str, a: &Authority) -> Secret {
    let data = BTreeMap::from([
        (CA_CERT.to_owned(), text(a.ca_cert_pem())),
        (CA_KEY.to_owned(), text(&a.ca_key_pem())),
        (CERT_CHAIN.to_owned(), text("")),
        (ROOT_CERT.to_owned(), text(a.root_pem())),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(SELF_SIGNED_SECRET.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                FIELD_MANAGER.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some(SELF_SIGNED_SECRET_TYPE.to_owned()),
        data: Some(data),
        ..Secret::default()
    }
}

fn text(s: &str) -> ByteString {
    ByteString(s.as_bytes().to_vec())
}

/// The Authority a Secret holds. `cert-chain.pem` may be absent or empty; in
/// `istio-ca-secret` (`self_signed`), a missing `root-cert.pem` is `ca-cert.pem`.
fn from_secret(
    s: &Secret,
    secret: &str,
    self_signed: bool,
    now: SystemTime,
) -> Result<Authority, BootstrapError> {
    let key = |k: &'static str, required: bool| -> Result<Option<String>, BootstrapError> {
        let v = s
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| b.0.clone())
            .or_else(|| {
                s.string_data
                    .as_ref()
                    .and_then(|d| d.get(k))
                    .map(|v| v.as_bytes().to_vec())
            });
        match v {
            Some(b) => String::from_utf8(b)
                .map(Some)
                .map_err(|_| BootstrapError::NotText {
                    secret: secret.to_owned(),
                    key: k,
                }),
            None if required => Err(BootstrapError::MissingKey {
                secret: secret.to_owned(),
                key: k,
            }),
            None => Ok(None),
        }
    };
    let ca_cert = key(CA_CERT, true)?.unwrap_or_default();
    let ca_key = key(CA_KEY, true)?.unwrap_or_default();
    let chain = key(CERT_CHAIN, false)?.unwrap_or_default();
    let root = match key(ROOT_CERT, !self_signed)? {
        Some(r) => r,
        None => ca_cert.clone(),
    };
    Authority::from_pems(&ca_cert, &ca_key, &chain, &root, now).map_err(|source| {
        BootstrapError::Unusable {
            secret: secret.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_self_signed_secret_reads_back_and_missing_keys_are_named() {
        let now = SystemTime::now();
        let a = Authority::self_signed("cluster.local", now).unwrap();
        let mut s = self_signed_secret("mesh-system", &a);
        assert_eq!(s.type_.as_deref(), Some("istio.io/ca-root"));
        let back = from_secret(&s, "mesh-system/istio-ca-secret", true, now).unwrap();
        assert_eq!(back.root_pem(), a.root_pem());

        // Istio's own istio-ca-secret may lack root-cert.pem: ca-cert.pem is the root.
        s.data.as_mut().unwrap().remove(ROOT_CERT);
        let back = from_secret(&s, "mesh-system/istio-ca-secret", true, now).unwrap();
        assert_eq!(back.root_pem(), a.root_pem());
        // In cacerts it is required.
        let e = from_secret(&s, "mesh-system/cacerts", false, now).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Secret mesh-system/cacerts has no key root-cert.pem"),
            "{e}"
        );

        s.data
            .as_mut()
            .unwrap()
            .insert(CA_KEY.to_owned(), text("junk"));
        let e = from_secret(&s, "mesh-system/cacerts", true, now).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Secret mesh-system/cacerts, key ca-key.pem: "),
            "{e}"
        );
    }
}
