//! Transport security as data: how a client proxy secures its connections to a cluster
//! (DestinationRule `trafficPolicy.tls`, auto mTLS), and what a workload's proxy accepts
//! inbound (PeerAuthentication `mtls.mode`, `portLevelMtls`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How connections to a cluster's endpoints are secured.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterTls {
    #[serde(default)]
    pub mode: ClusterTlsMode,
    /// SPIFFE ids the server may present (any of them): the ServiceAccounts of the
    /// Service's pods, or the DestinationRule's `subjectAltNames`. Empty: any identity
    /// the mesh's root signed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// The DestinationRule's `tls.sni`; `None`: Istio's
    /// `outbound_.<port>_.<subset>_.<host>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

impl ClusterTls {
    pub fn is_default(&self) -> bool {
        *self == ClusterTls::default()
    }

    /// Whether a connection to `endpoint` of this cluster originates Istio mTLS.
    pub fn mtls_to(&self, endpoint: &crate::Endpoint) -> bool {
        match self.mode {
            ClusterTlsMode::Auto => endpoint.mtls,
            ClusterTlsMode::IstioMutual => true,
            ClusterTlsMode::Disable => false,
        }
    }
}

/// `trafficPolicy.tls.mode`, as far as the mesh originates it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClusterTlsMode {
    /// No `tls` in any DestinationRule: Istio's auto mTLS, decided per endpoint
    /// ([`crate::Endpoint::mtls`]).
    #[default]
    Auto,
    /// `ISTIO_MUTUAL`: always mTLS with the mesh's certificates.
    IstioMutual,
    /// `DISABLE`: always plaintext.
    Disable,
}

/// PeerAuthentication's `mtls.mode`, resolved (no `UNSET`: inheritance is done).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// mTLS and plaintext both accepted (Istio's default).
    #[default]
    Permissive,
    /// mTLS only: a plaintext connection is closed.
    Strict,
    /// Plaintext only: clients are told (auto mTLS) not to originate mTLS.
    Disable,
}

/// What a workload's proxy accepts inbound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboundTls {
    #[serde(default)]
    pub mode: MtlsMode,
    /// `portLevelMtls`: the workload (container) port → its mode.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "port_keys"
    )]
    pub ports: BTreeMap<u16, MtlsMode>,
}

impl InboundTls {
    pub fn is_default(&self) -> bool {
        *self == InboundTls::default()
    }

    /// The mode for a connection to `port` of the workload.
    pub fn mode_for(&self, port: u16) -> MtlsMode {
        self.ports.get(&port).copied().unwrap_or(self.mode)
    }
}

/// A map keyed by port, with the keys as JSON strings read back by hand: a
/// [`crate::Resource`] is an internally tagged enum, whose buffered content gives map
/// keys as strings that serde's integer keys do not take.
mod port_keys {
    use std::collections::BTreeMap;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<V: Serialize, S: Serializer>(
        m: &BTreeMap<u16, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        m.iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<BTreeMap<String, &V>>()
            .serialize(s)
    }

    pub fn deserialize<'de, V: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<u16, V>, D::Error> {
        BTreeMap::<String, V>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| match k.parse::<u16>() {
                Ok(p) if p > 0 => Ok((p, v)),
                _ => Err(D::Error::custom(format!(
                    "{k:?} is not a port number 1-65535"
                ))),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_modes_override_the_workloads() {
        let t = InboundTls {
            mode: MtlsMode::Strict,
            ports: BTreeMap::from([(8080, MtlsMode::Disable)]),
        };
        assert_eq!(t.mode_for(8080), MtlsMode::Disable);
        assert_eq!(t.mode_for(9080), MtlsMode::Strict);
        assert_eq!(InboundTls::default().mode_for(1), MtlsMode::Permissive);
        let json = serde_json::to_string(&t).expect("serializes");
        assert_eq!(json, r#"{"mode":"STRICT","ports":{"8080":"DISABLE"}}"#);
        assert_eq!(
            serde_json::from_str::<InboundTls>(&json).expect("parses"),
            t
        );
        let bad = serde_json::from_str::<InboundTls>(r#"{"ports":{"http":"STRICT"}}"#);
        assert!(bad.unwrap_err().to_string().contains("not a port number"));
    }

    #[test]
    fn cluster_modes_decide_per_endpoint() {
        let mut ep = crate::Endpoint {
            addr: "10.0.0.1:80".parse().expect("addr"),
            serving: true,
            terminating: false,
            mtls: false,
            peer: None,
        };
        let auto = ClusterTls::default();
        assert!(!auto.mtls_to(&ep));
        ep.mtls = true;
        assert!(auto.mtls_to(&ep));
        let off = ClusterTls {
            mode: ClusterTlsMode::Disable,
            ..ClusterTls::default()
        };
        assert!(!off.mtls_to(&ep));
        ep.mtls = false;
        let on = ClusterTls {
            mode: ClusterTlsMode::IstioMutual,
            ..ClusterTls::default()
        };
        assert!(on.mtls_to(&ep));
    }
}
