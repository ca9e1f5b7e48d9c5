//! What [`super::bootstrap`] manages and where: names, files, lifetimes. Built from the
//! `serve` flags ([`SelfSignedArgs`], defined with every other flag in [`crate::cli`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::BootstrapError;
use crate::cli::SelfSignedArgs;

impl SelfSignedArgs {
    /// The options for [`super::bootstrap`], writing the certificate to `cert_file` and its
    /// key to `key_file` (the server's `--cert` and `--key`).
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

pub(super) const DAY: Duration = Duration::from_secs(24 * 3600);

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

    pub(super) fn validate(&self) -> Result<(), BootstrapError> {
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

#[cfg(test)]
impl BootstrapOptions {
    /// The defaults `deploy/` uses, with certificate paths that do not exist: the
    /// bootstrap modules' tests share them.
    pub(crate) fn for_tests() -> BootstrapOptions {
        BootstrapOptions::new(
            "mesh-system",
            "mesh-webhook",
            "mesh-webhook-certs",
            "mesh-sidecar-injector",
            Path::new("/nonexistent/tls.crt"),
            Path::new("/nonexistent/tls.key"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> BootstrapOptions {
        BootstrapOptions::for_tests()
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
}
