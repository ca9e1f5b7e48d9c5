//! `Gateway` (`networking.istio.io`, `v1alpha3` / `v1beta1` / `v1`, one schema): the
//! fields of `spec` the translation reads: `selector` and `servers[]` (`port`, `bind`,
//! `hosts`, `tls`, `name`, `defaultEndpoint`). Fields not declared (`tls.cipherSuites`,
//! `tls.minProtocolVersion`, ...) parse and are ignored; what the translation cannot
//! serve (`bind`, `tls.mode: ISTIO_MUTUAL`, file-path certificates,
//! `tls.verifyCertificateSpki`, ...) is its to report, one server at a time
//! (`translate::gateways`).

use serde::Deserialize;
use serde_json::Value;

use super::{Labels, Meta, ParseError, int, nullable, parse_meta, parse_spec};

pub const KIND: &str = "Gateway";

/// One Gateway object.
#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    pub meta: Meta,
    pub spec: GatewaySpec,
}

impl Gateway {
    /// From the API server's JSON (any served version).
    pub fn from_json(obj: &Value) -> Result<Gateway, ParseError> {
        let meta = parse_meta(KIND, obj)?;
        let spec = parse_spec(KIND, &meta, obj)?;
        Ok(Gateway { meta, spec })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewaySpec {
    /// Labels of the gateway pods it applies to; empty (or absent): every gateway pod,
    /// as istiod does.
    #[serde(deserialize_with = "nullable")]
    pub selector: Labels,
    #[serde(deserialize_with = "nullable")]
    pub servers: Vec<Server>,
}

/// `servers[]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Server {
    pub port: Option<Port>,
    /// Only checked for presence: a gateway listens on every address.
    #[serde(deserialize_with = "nullable")]
    pub bind: String,
    /// `host`, `./host`, `*/host` or `<namespace>/host`.
    #[serde(deserialize_with = "nullable")]
    pub hosts: Vec<String>,
    pub tls: Option<ServerTls>,
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// Sidecar-only in Istio; only checked for presence.
    #[serde(deserialize_with = "nullable")]
    pub default_endpoint: String,
}

/// `servers[].port`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Port {
    #[serde(deserialize_with = "int")]
    pub number: i64,
    /// `HTTP`, `HTTPS`, `GRPC`, `HTTP2`, `MONGO`, `TCP`, `TLS` (any case).
    #[serde(deserialize_with = "nullable")]
    pub protocol: String,
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    /// Ignored for gateways, as istiod does (it binds the gateway Service's
    /// `targetPort`).
    #[serde(deserialize_with = "int")]
    pub target_port: i64,
}

/// `servers[].tls` (`ServerTLSSettings`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServerTls {
    #[serde(deserialize_with = "nullable")]
    pub https_redirect: bool,
    /// `PASSTHROUGH` (the default: the proto enum's zero), `SIMPLE`, `MUTUAL`,
    /// `AUTO_PASSTHROUGH`, `ISTIO_MUTUAL`, `OPTIONAL_MUTUAL`.
    pub mode: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub credential_name: String,
    #[serde(deserialize_with = "nullable")]
    pub credential_names: Vec<String>,
    /// File paths on the gateway pod: only checked for presence (not supported).
    #[serde(deserialize_with = "nullable")]
    pub server_certificate: String,
    #[serde(deserialize_with = "nullable")]
    pub private_key: String,
    #[serde(deserialize_with = "nullable")]
    pub ca_certificates: String,
    /// A file path too (the client CRL): only checked for presence.
    #[serde(deserialize_with = "nullable")]
    pub ca_crl: String,
    /// The Secret or ConfigMap of the client CA (Istio 1.28): only checked for presence.
    #[serde(deserialize_with = "nullable")]
    pub ca_cert_credential_name: String,
    /// `MUTUAL` / `OPTIONAL_MUTUAL`: names one of which a client certificate must carry.
    #[serde(deserialize_with = "nullable")]
    pub subject_alt_names: Vec<String>,
    /// `MUTUAL` / `OPTIONAL_MUTUAL`: SHA-256 hashes (hex, colons allowed) one of which a
    /// client certificate must have.
    #[serde(deserialize_with = "nullable")]
    pub verify_certificate_hash: Vec<String>,
    /// Only checked for presence (not supported).
    #[serde(deserialize_with = "nullable")]
    pub verify_certificate_spki: Vec<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_istios_bookinfo_gateway() {
        let g = Gateway::from_json(&json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "bookinfo-gateway", "namespace": "default"},
            "spec": {
                "selector": {"istio": "ingressgateway"},
                "servers": [
                    {"port": {"number": 8080, "name": "http", "protocol": "HTTP"},
                     "hosts": ["*"]},
                    {"port": {"number": "443", "name": "https", "protocol": "HTTPS",
                              "targetPort": 8443},
                     "hosts": ["./bookinfo.example.com"], "name": "secure",
                     "tls": {"mode": "SIMPLE", "credentialName": "bookinfo-cert",
                             "minProtocolVersion": "TLSV1_2"}}
                ]
            }
        }))
        .unwrap();
        assert_eq!(g.spec.selector["istio"], "ingressgateway");
        let s = &g.spec.servers;
        assert_eq!(s[0].port.as_ref().unwrap().number, 8080);
        assert_eq!(s[0].hosts, ["*"]);
        let p = s[1].port.as_ref().unwrap();
        assert_eq!((p.number, p.target_port), (443, 8443));
        let tls = s[1].tls.as_ref().unwrap();
        assert_eq!(tls.mode.as_deref(), Some("SIMPLE"));
        assert_eq!(tls.credential_name, "bookinfo-cert");
        assert_eq!(s[1].name, "secure");
    }

    #[test]
    fn errors_name_the_field_and_nulls_are_defaults() {
        let e = Gateway::from_json(&json!({
            "metadata": {"name": "g", "namespace": "ns"},
            "spec": {"servers": [{"port": {"number": 80}}, {"port": {"number": "eighty"}}]}
        }))
        .unwrap_err();
        assert_eq!(e.field, "spec.servers[1].port.number");
        assert_eq!(e.kind, KIND);
        let e = Gateway::from_json(&json!({
            "metadata": {"name": "g"},
            "spec": {"servers": [{"tls": {"httpsRedirect": "yes"}}]}
        }))
        .unwrap_err();
        assert_eq!(e.field, "spec.servers[0].tls.httpsRedirect");
        let g = Gateway::from_json(&json!({
            "metadata": {"name": "g"},
            "spec": {"selector": null, "servers": [{"hosts": null, "tls": {"mode": null}}]}
        }))
        .unwrap();
        assert!(g.spec.selector.is_empty());
        assert!(g.spec.servers[0].hosts.is_empty());
        assert_eq!(g.spec.servers[0].tls.as_ref().unwrap().mode, None);
    }
}
