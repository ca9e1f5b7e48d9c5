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

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;
use tracing::{debug, info, warn};

/// Secret key: the current CA certificate (PEM).
pub const KEY_CA_CERT: &str = "ca.crt";
/// Secret key: the current CA private key (PEM).
pub const KEY_CA_KEY: &str = "ca.key";
/// Secret key: every CA the API server must trust, current first (PEM, concatenated).
pub const KEY_CA_BUNDLE: &str = "ca-bundle.crt";
/// Secret key: the serving certificate (PEM), as in a `kubernetes.io/tls` Secret.
pub const KEY_TLS_CERT: &str = "tls.crt";
/// Secret key: the serving private key (PEM), as in a `kubernetes.io/tls` Secret.
pub const KEY_TLS_KEY: &str = "tls.key";

/// Field manager name for our writes.
const FIELD_MANAGER: &str = "mesh-webhook";
/// How often a conflicting write is retried (re-reading the winner each time).
const MAX_ATTEMPTS: usize = 8;
/// A certificate is renewed when less than `1/RENEW_DIVISOR` of its lifetime is left.
const RENEW_DIVISOR: u32 = 3;

/// Flags of `mesh-webhook serve` for self-managed certificates. The server flattens this
/// into its own arguments; the files it serves (`--cert`, `--key`) are where the
/// certificate from the Secret is written.
#[derive(Debug, Clone, clap::Args)]
pub struct SelfSignedArgs {
    /// Make, share (through a Secret) and rotate the serving certificate, and patch
    /// caBundle into the webhook configuration; --cert/--key are written, not just read.
    #[arg(long)]
    pub self_signed: bool,
    /// Name of our own MutatingWebhookConfiguration, whose caBundle is patched.
    #[arg(long, default_value = "mesh-sidecar-injector")]
    pub webhook_config_name: String,
    /// Name of the Service in front of the webhook (the certificate's DNS names).
    #[arg(long, default_value = "mesh-webhook")]
    pub service_name: String,
    /// Namespace of the Service and the Secret (in a pod: from the downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "mesh-system")]
    pub namespace: String,
    /// Secret that holds the CA and serving certificate shared by all replicas.
    #[arg(long, default_value = "mesh-webhook-certs")]
    pub secret_name: String,
}

impl SelfSignedArgs {
    /// The options for [`bootstrap`], writing the certificate to `cert_file` and its key
    /// to `key_file` (the server's `--cert` and `--key`).
    pub fn options(&self, cert_file: &Path, key_file: &Path) -> BootstrapOptions {
        BootstrapOptions::new(
            &self.namespace,
            &self.service_name,
            &self.secret_name,
            &self.webhook_config_name,
            cert_file,
            key_file,
        )
    }
}

/// What [`bootstrap`] manages and where.
#[derive(Debug, Clone)]
pub struct BootstrapOptions {
    pub namespace: String,
    pub service_name: String,
    pub secret_name: String,
    pub webhook_config_name: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Lifetime of a new CA.
    pub ca_validity: Duration,
    /// Lifetime of a new serving certificate (never past its CA's end).
    pub serving_validity: Duration,
    /// How often [`rotation_loop`] re-checks the Secret and the webhook configuration.
    pub check_interval: Duration,
}

const DAY: Duration = Duration::from_secs(24 * 3600);

impl BootstrapOptions {
    /// Options with the default lifetimes: CA 10 years, serving certificate 1 year,
    /// checked every 10 minutes.
    pub fn new(
        namespace: &str,
        service_name: &str,
        secret_name: &str,
        webhook_config_name: &str,
        cert_file: &Path,
        key_file: &Path,
    ) -> Self {
        BootstrapOptions {
            namespace: namespace.to_owned(),
            service_name: service_name.to_owned(),
            secret_name: secret_name.to_owned(),
            webhook_config_name: webhook_config_name.to_owned(),
            cert_file: cert_file.to_owned(),
            key_file: key_file.to_owned(),
            ca_validity: DAY * 3650,
            serving_validity: DAY * 365,
            check_interval: Duration::from_secs(600),
        }
    }

    /// The Service's DNS names, as clients inside the cluster may spell them.
    pub fn dns_names(&self) -> Vec<String> {
        let (svc, ns) = (&self.service_name, &self.namespace);
        vec![
            svc.clone(),
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
        ]
    }

    fn validate(&self) -> Result<(), BootstrapError> {
        for (field, value) in [
            ("--namespace", &self.namespace),
            ("--service-name", &self.service_name),
            ("--secret-name", &self.secret_name),
        ] {
            if !is_dns_label(value) {
                return Err(BootstrapError::InvalidOption {
                    field,
                    reason: format!(
                        "{value:?} is not a DNS-1123 label (a-z, 0-9, '-', at most 63)"
                    ),
                });
            }
        }
        if self.webhook_config_name.is_empty() {
            return Err(BootstrapError::InvalidOption {
                field: "--webhook-config-name",
                reason: "must not be empty".into(),
            });
        }
        if self.serving_validity.is_zero() || self.ca_validity < self.serving_validity {
            return Err(BootstrapError::InvalidOption {
                field: "certificate validity",
                reason: format!(
                    "serving validity {:?} must be positive and at most the CA's {:?}",
                    self.serving_validity, self.ca_validity
                ),
            });
        }
        Ok(())
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The certificate material every replica serves, as stored in the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    /// Current CA certificate (PEM).
    pub ca_cert_pem: String,
    /// Current CA private key (PEM).
    pub ca_key_pem: String,
    /// Every CA the API server must trust, current first (PEM): what goes into caBundle.
    pub ca_bundle_pem: String,
    /// Serving certificate (PEM).
    pub cert_pem: String,
    /// Serving private key (PEM).
    pub key_pem: String,
}

impl Material {
    /// End of the serving certificate's validity.
    pub fn serving_not_after(&self) -> Result<SystemTime, BootstrapError> {
        Ok(parse_cert(&self.cert_pem, KEY_TLS_CERT)?.not_after)
    }

    /// End of the current CA's validity.
    pub fn ca_not_after(&self) -> Result<SystemTime, BootstrapError> {
        Ok(parse_cert(&self.ca_cert_pem, KEY_CA_CERT)?.not_after)
    }

    fn to_secret_data(&self) -> BTreeMap<String, ByteString> {
        [
            (KEY_CA_CERT, &self.ca_cert_pem),
            (KEY_CA_KEY, &self.ca_key_pem),
            (KEY_CA_BUNDLE, &self.ca_bundle_pem),
            (KEY_TLS_CERT, &self.cert_pem),
            (KEY_TLS_KEY, &self.key_pem),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect()
    }

    fn from_secret(secret: &Secret) -> Result<Material, String> {
        let data = secret.data.as_ref().ok_or("it has no data")?;
        let get = |key: &str| -> Result<String, String> {
            let bytes = data
                .get(key)
                .ok_or_else(|| format!("key {key} is missing"))?;
            String::from_utf8(bytes.0.clone()).map_err(|_| format!("key {key} is not UTF-8 PEM"))
        };
        Ok(Material {
            ca_cert_pem: get(KEY_CA_CERT)?,
            ca_key_pem: get(KEY_CA_KEY)?,
            ca_bundle_pem: get(KEY_CA_BUNDLE)?,
            cert_pem: get(KEY_TLS_CERT)?,
            key_pem: get(KEY_TLS_KEY)?,
        })
    }
}

/// Why bootstrapping or rotating the certificates failed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("invalid {field}: {reason}")]
    InvalidOption { field: &'static str, reason: String },
    #[error("cannot reach the Kubernetes API (in-cluster config or KUBECONFIG): {0}")]
    Client(#[source] kube::Error),
    #[error("Kubernetes API: cannot {action} {object}: {source}")]
    Api {
        action: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("MutatingWebhookConfiguration {name} has no webhooks whose caBundle could be set")]
    NoWebhooks { name: String },
    #[error("{what} is not a usable certificate: {reason}")]
    BadCertificate { what: String, reason: String },
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "Secret {object} changed under every one of {MAX_ATTEMPTS} conditional writes; giving up for now"
    )]
    Contention { object: String },
}

fn api_err(
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

fn api_status(err: &kube::Error) -> Option<&kube::core::Status> {
    match err {
        kube::Error::Api(status) => Some(status),
        _ => None,
    }
}

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
    let material = ensure_secret(client.clone(), opts, now).await?;
    write_files(opts, &material)?;
    patch_ca_bundle(client, &opts.webhook_config_name, &material.ca_bundle_pem).await?;
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

/// Reads the Secret and creates, keeps or rotates what it holds; every write is
/// conditional, and a lost race re-reads the winner's material.
async fn ensure_secret(
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
    Err(BootstrapError::Contention { object })
}

/// Sets caBundle on every webhook of the named configuration, where it differs.
async fn patch_ca_bundle(
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

/// Writes the serving certificate and key where the server loads them, atomically and
/// only when they changed (the server reloads on change). Key first, so a reload that
/// sees the new certificate also finds its key.
fn write_files(opts: &BootstrapOptions, material: &Material) -> Result<(), BootstrapError> {
    write_if_changed(&opts.key_file, material.key_pem.as_bytes(), 0o600)?;
    write_if_changed(&opts.cert_file, material.cert_pem.as_bytes(), 0o644)?;
    Ok(())
}

fn write_if_changed(path: &Path, contents: &[u8], mode: u32) -> Result<(), BootstrapError> {
    use std::os::unix::fs::OpenOptionsExt;
    if std::fs::read(path).is_ok_and(|old| old == contents) {
        return Ok(());
    }
    let err = |source| BootstrapError::WriteFile {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        BootstrapError::WriteFile {
            path: path.to_owned(),
            source,
        }
    })
}

/// What to do with the material found in the Secret.
#[derive(Debug)]
enum Decision {
    Keep(Material),
    Replace {
        material: Material,
        why: &'static str,
    },
}

/// The facts about one certificate that rotation decisions need.
#[derive(Debug, Clone)]
struct CertInfo {
    not_before: SystemTime,
    not_after: SystemTime,
    dns_names: Vec<String>,
    subject_raw: Vec<u8>,
    issuer_raw: Vec<u8>,
}

impl CertInfo {
    /// True when less than a third of the lifetime is left (or it is not yet valid).
    fn needs_renewal(&self, now: SystemTime) -> bool {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        match self.not_after.duration_since(now) {
            Ok(left) => now < self.not_before || left < lifetime / RENEW_DIVISOR,
            Err(_) => true,
        }
    }

    fn expired(&self, now: SystemTime) -> bool {
        self.not_after <= now
    }
}

fn parse_cert(pem: &str, what: &str) -> Result<CertInfo, BootstrapError> {
    let bad = |reason: String| BootstrapError::BadCertificate {
        what: what.to_owned(),
        reason,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| bad(format!("not PEM: {e}")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    let to_time = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    let dns_names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(bad(format!("bad subjectAltName: {e}"))),
    };
    Ok(CertInfo {
        not_before: to_time(cert.validity().not_before.timestamp()),
        not_after: to_time(cert.validity().not_after.timestamp()),
        dns_names,
        subject_raw: cert.subject().as_raw().to_vec(),
        issuer_raw: cert.issuer().as_raw().to_vec(),
    })
}

/// Splits concatenated PEM certificates.
fn split_pems(bundle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in bundle.lines() {
        if line.starts_with("-----BEGIN ") {
            cur.clear();
        }
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END ") {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

/// Pure rotation policy: keep what is stored, or say what replaces it and why.
fn decide(
    opts: &BootstrapOptions,
    now: SystemTime,
    stored: Material,
) -> Result<Decision, BootstrapError> {
    let ca = match parse_cert(&stored.ca_cert_pem, KEY_CA_CERT) {
        Ok(ca) if KeyPair::from_pem(&stored.ca_key_pem).is_ok() => ca,
        _ => {
            return Ok(Decision::Replace {
                material: issue_all(opts, now, &[])?,
                why: "the stored CA was unusable",
            });
        }
    };
    // Older CAs stay in the bundle until they expire.
    let previous: Vec<(String, CertInfo)> = split_pems(&stored.ca_bundle_pem)
        .into_iter()
        .filter_map(|pem| parse_cert(&pem, KEY_CA_BUNDLE).ok().map(|i| (pem, i)))
        .filter(|(_, info)| !info.expired(now) && info.subject_raw != ca.subject_raw)
        .collect();

    if ca.needs_renewal(now) {
        // New CA; the old one joins the bundle. The serving certificate is re-issued by
        // the new CA only when it needs renewal itself, so the bundle carrying both CAs
        // has long reached every replica and the API server by then.
        let mut keep_old: Vec<String> = Vec::new();
        if !ca.expired(now) {
            keep_old.push(stored.ca_cert_pem.clone());
        }
        keep_old.extend(previous.iter().map(|(p, _)| p.clone()));
        let (ca_cert_pem, ca_key_pem) = issue_ca(opts, now)?;
        let leaf_ok = parse_cert(&stored.cert_pem, KEY_TLS_CERT)
            .ok()
            .is_some_and(|leaf| leaf_is_good(opts, now, &leaf, &ca, &previous));
        let (cert_pem, key_pem) = if leaf_ok {
            (stored.cert_pem.clone(), stored.key_pem.clone())
        } else {
            issue_leaf(opts, now, &ca_cert_pem, &ca_key_pem)?
        };
        let ca_bundle_pem = std::iter::once(ca_cert_pem.clone())
            .chain(keep_old)
            .collect::<String>();
        return Ok(Decision::Replace {
            material: Material {
                ca_cert_pem,
                ca_key_pem,
                ca_bundle_pem,
                cert_pem,
                key_pem,
            },
            why: "the CA is close to expiry",
        });
    }

    let leaf_ok = parse_cert(&stored.cert_pem, KEY_TLS_CERT)
        .ok()
        .is_some_and(|leaf| leaf_is_good(opts, now, &leaf, &ca, &previous))
        && KeyPair::from_pem(&stored.key_pem).is_ok();
    let expected_bundle = std::iter::once(stored.ca_cert_pem.clone())
        .chain(previous.iter().map(|(p, _)| p.clone()))
        .collect::<String>();
    if leaf_ok && expected_bundle == stored.ca_bundle_pem {
        return Ok(Decision::Keep(stored));
    }
    let (cert_pem, key_pem, why) = if leaf_ok {
        (
            stored.cert_pem.clone(),
            stored.key_pem.clone(),
            "an expired CA left the bundle",
        )
    } else {
        let (c, k) = issue_leaf(opts, now, &stored.ca_cert_pem, &stored.ca_key_pem)?;
        (
            c,
            k,
            "the serving certificate is close to expiry or does not match the Service",
        )
    };
    Ok(Decision::Replace {
        material: Material {
            ca_bundle_pem: expected_bundle,
            cert_pem,
            key_pem,
            ..stored
        },
        why,
    })
}

/// A serving certificate is good while it is not due for renewal, names exactly the
/// Service's DNS names, and was issued by a CA that is in the bundle.
fn leaf_is_good(
    opts: &BootstrapOptions,
    now: SystemTime,
    leaf: &CertInfo,
    ca: &CertInfo,
    previous: &[(String, CertInfo)],
) -> bool {
    let mut want = opts.dns_names();
    want.sort();
    let mut have = leaf.dns_names.clone();
    have.sort();
    let issuer_known = leaf.issuer_raw == ca.subject_raw
        || previous
            .iter()
            .any(|(_, p)| leaf.issuer_raw == p.subject_raw);
    !leaf.needs_renewal(now) && want == have && issuer_known
}

/// A new CA and a serving certificate signed by it; `old_cas` stay in the bundle.
fn issue_all(
    opts: &BootstrapOptions,
    now: SystemTime,
    old_cas: &[String],
) -> Result<Material, BootstrapError> {
    let (ca_cert_pem, ca_key_pem) = issue_ca(opts, now)?;
    let (cert_pem, key_pem) = issue_leaf(opts, now, &ca_cert_pem, &ca_key_pem)?;
    let ca_bundle_pem = std::iter::once(ca_cert_pem.clone())
        .chain(old_cas.iter().cloned())
        .collect();
    Ok(Material {
        ca_cert_pem,
        ca_key_pem,
        ca_bundle_pem,
        cert_pem,
        key_pem,
    })
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn issue_ca(opts: &BootstrapOptions, now: SystemTime) -> Result<(String, String), BootstrapError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    // A distinct subject per CA, so leaves are matched to the CA that issued them.
    dn.push(
        DnType::CommonName,
        format!(
            "{}.{}-ca@{}",
            opts.service_name,
            opts.namespace,
            unix_secs(now)
        ),
    );
    dn.push(DnType::OrganizationName, "mesh");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = OffsetDateTime::from(now - Duration::from_secs(60));
    params.not_after = OffsetDateTime::from(now + opts.ca_validity);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn issue_leaf(
    opts: &BootstrapOptions,
    now: SystemTime,
    ca_cert_pem: &str,
    ca_key_pem: &str,
) -> Result<(String, String), BootstrapError> {
    let ca_info = parse_cert(ca_cert_pem, KEY_CA_CERT)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, KeyPair::from_pem(ca_key_pem)?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(opts.dns_names())?;
    params.distinguished_name.push(
        DnType::CommonName,
        format!("{}.{}.svc", opts.service_name, opts.namespace),
    );
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = OffsetDateTime::from(now - Duration::from_secs(60));
    params.not_after = OffsetDateTime::from((now + opts.serving_validity).min(ca_info.not_after));
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> BootstrapOptions {
        BootstrapOptions::new(
            "mesh-system",
            "mesh-webhook",
            "mesh-webhook-certs",
            "mesh-sidecar-injector",
            Path::new("/nonexistent/tls.crt"),
            Path::new("/nonexistent/tls.key"),
        )
    }

    #[test]
    fn fresh_material_names_the_service_and_chains_to_the_ca() {
        let now = SystemTime::now();
        let m = issue_all(&opts(), now, &[]).unwrap();
        let leaf = parse_cert(&m.cert_pem, "leaf").unwrap();
        let ca = parse_cert(&m.ca_cert_pem, "ca").unwrap();
        assert_eq!(
            leaf.dns_names,
            [
                "mesh-webhook",
                "mesh-webhook.mesh-system",
                "mesh-webhook.mesh-system.svc",
                "mesh-webhook.mesh-system.svc.cluster.local"
            ]
        );
        assert_eq!(leaf.issuer_raw, ca.subject_raw);
        assert_eq!(m.ca_bundle_pem, m.ca_cert_pem);
        assert!(matches!(decide(&opts(), now, m.clone()).unwrap(), Decision::Keep(k) if k == m));
    }

    #[test]
    fn serving_cert_renewed_with_a_third_left_same_ca() {
        let now = SystemTime::now();
        let m = issue_all(&opts(), now, &[]).unwrap();
        let later = now + DAY * 250; // 115 of 365 days left: less than a third
        let Decision::Replace { material, .. } = decide(&opts(), later, m.clone()).unwrap() else {
            panic!("expected a renewal")
        };
        assert_eq!(material.ca_cert_pem, m.ca_cert_pem);
        assert_ne!(material.cert_pem, m.cert_pem);
        let early = now + DAY * 200;
        assert!(matches!(
            decide(&opts(), early, m).unwrap(),
            Decision::Keep(_)
        ));
    }

    #[test]
    fn ca_rotation_keeps_the_old_ca_in_the_bundle_until_it_expires() {
        let now = SystemTime::now();
        let m = issue_all(&opts(), now, &[]).unwrap();
        let later = now + DAY * 2500; // 1150 of 3650 days left
        let Decision::Replace { material, .. } = decide(&opts(), later, m.clone()).unwrap() else {
            panic!("expected CA rotation")
        };
        assert_ne!(material.ca_cert_pem, m.ca_cert_pem);
        assert!(material.ca_bundle_pem.starts_with(&material.ca_cert_pem));
        assert!(material.ca_bundle_pem.contains(&m.ca_cert_pem));
        assert_eq!(split_pems(&material.ca_bundle_pem).len(), 2);
        // Once the old CA has expired it leaves the bundle.
        let much_later = now + DAY * 3651;
        let Decision::Replace { material: m3, .. } =
            decide(&opts(), much_later, material.clone()).unwrap()
        else {
            panic!("expected the bundle to shrink")
        };
        assert_eq!(m3.ca_cert_pem, material.ca_cert_pem);
        assert_eq!(
            split_pems(&m3.ca_bundle_pem),
            vec![material.ca_cert_pem.clone()]
        );
    }

    #[test]
    fn leaf_for_another_service_is_reissued() {
        let now = SystemTime::now();
        let m = issue_all(&opts(), now, &[]).unwrap();
        let mut other = opts();
        other.service_name = "other".into();
        let Decision::Replace { material, .. } = decide(&other, now, m.clone()).unwrap() else {
            panic!("expected a new leaf")
        };
        assert_eq!(material.ca_cert_pem, m.ca_cert_pem);
        assert!(
            parse_cert(&material.cert_pem, "leaf")
                .unwrap()
                .dns_names
                .contains(&"other.mesh-system.svc".to_owned())
        );
    }

    #[test]
    fn garbage_ca_is_replaced_not_trusted() {
        let now = SystemTime::now();
        let mut m = issue_all(&opts(), now, &[]).unwrap();
        m.ca_cert_pem = "not a certificate".into();
        assert!(matches!(
            decide(&opts(), now, m).unwrap(),
            Decision::Replace { .. }
        ));
    }

    #[test]
    fn bad_options_name_the_flag() {
        let mut o = opts();
        o.namespace = "Mesh_System".into();
        let e = o.validate().unwrap_err().to_string();
        assert!(
            e.contains("--namespace") && e.contains("Mesh_System"),
            "{e}"
        );
        let mut o = opts();
        o.serving_validity = o.ca_validity * 2;
        assert!(
            o.validate()
                .unwrap_err()
                .to_string()
                .contains("certificate validity")
        );
    }

    #[test]
    fn secret_missing_a_key_says_which() {
        let s = Secret {
            data: Some(BTreeMap::from([(
                KEY_CA_CERT.to_owned(),
                ByteString(b"x".to_vec()),
            )])),
            ..Secret::default()
        };
        assert_eq!(
            Material::from_secret(&s).unwrap_err(),
            "key ca.key is missing"
        );
    }

    #[test]
    fn files_are_written_atomically_and_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts();
        o.cert_file = dir.path().join("certs/tls.crt");
        o.key_file = dir.path().join("certs/tls.key");
        let m = issue_all(&o, SystemTime::now(), &[]).unwrap();
        write_files(&o, &m).unwrap();
        assert_eq!(std::fs::read_to_string(&o.cert_file).unwrap(), m.cert_pem);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&o.key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let before = std::fs::metadata(&o.cert_file).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        write_files(&o, &m).unwrap();
        assert_eq!(
            std::fs::metadata(&o.cert_file).unwrap().modified().unwrap(),
            before
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("certs"))
            .unwrap()
            .collect();
        assert_eq!(leftovers.len(), 2);
    }
}
