//! The Secret every replica shares: its keys, and the [`Material`] they encode.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

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
    pub(super) fn to_secret_data(&self) -> BTreeMap<String, ByteString> {
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

    pub(super) fn from_secret(secret: &Secret) -> Result<Material, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
