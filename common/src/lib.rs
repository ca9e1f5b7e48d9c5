//! The few values that the webhook, the init tool and the proxy must agree on.
//!
//! They follow Istio's numbers and names on purpose: users bring runbooks,
//! dashboards and annotations written for Istio, and those keep working.
#![forbid(unsafe_code)]

pub mod contract;
pub mod duration;
pub mod fs;
pub mod lists;
pub mod log;
pub mod prom;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Outbound capture port: the pod's own outgoing TCP is redirected here.
pub const PROXY_OUTBOUND_PORT: u16 = 15001;
/// Inbound capture port: TCP arriving at the pod is redirected here.
pub const PROXY_INBOUND_PORT: u16 = 15006;
/// Proxy admin port: `/healthz/ready`, `/quitquitquit`.
pub const PROXY_ADMIN_PORT: u16 = 15021;
/// Proxy Prometheus port: `/stats/prometheus`.
pub const PROXY_METRICS_PORT: u16 = 15090;
/// Proxy debug port, on loopback only (Envoy's admin port): `/config_dump`,
/// `/debug/route`.
pub const PROXY_DEBUG_PORT: u16 = 15000;
/// Port the proxy answers DNS on (UDP and TCP, loopback), when the injection config turns
/// `dnsCapture` on: `mesh-init --dns-capture` redirects the app's port-53 traffic here, as
/// istio-iptables' `--redirect-dns` does to the Istio agent's DNS proxy.
pub const DNS_CAPTURE_PORT: u16 = 15053;
/// The DNS port whose traffic `--dns-capture` redirects.
pub const DNS_PORT: u16 = 53;
/// mesh-control's plaintext config stream (Istio's plaintext xDS port, `grpc-xds`).
pub const CONTROL_PLANE_PLAINTEXT_PORT: u16 = 15010;
/// mesh-control's TLS port (Istio's `https-dns` / istiod 15012): the config stream and the
/// CA (`istio.v1.auth.IstioCertificateService`), one gRPC server.
pub const CONTROL_PLANE_TLS_PORT: u16 = 15012;
/// mesh-control's monitoring port: `/metrics`, `/readyz`, `/debug/...` (`http-monitoring`).
pub const CONTROL_PLANE_METRICS_PORT: u16 = 15014;
/// Path of the proxy's readiness endpoint on the admin port.
pub const PROXY_READY_PATH: &str = "/healthz/ready";
/// Path of the proxy's Prometheus endpoint on the metrics port.
pub const PROXY_METRICS_PATH: &str = "/stats/prometheus";
/// Path that tells the proxy to drain and exit.
pub const PROXY_QUIT_PATH: &str = "/quitquitquit";

/// The uid (and default gid) the proxy runs as; its traffic is never captured.
pub const PROXY_UID: u32 = 1337;
/// The gid the proxy runs as.
pub const PROXY_GID: u32 = 1337;

/// Source address the proxy uses to reach the app on inbound (IPv4).
/// The OUTPUT chain lets it through, so the connection is not captured twice.
pub const INBOUND_PASSTHROUGH_V4: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
/// Source address the proxy uses to reach the app on inbound (IPv6).
pub const INBOUND_PASSTHROUGH_V6: Ipv6Addr = Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6);

/// The inbound passthrough source for the family of `dst`.
pub fn inbound_passthrough_for(dst: IpAddr) -> IpAddr {
    match dst {
        IpAddr::V4(_) => IpAddr::V4(INBOUND_PASSTHROUGH_V4),
        IpAddr::V6(_) => IpAddr::V6(INBOUND_PASSTHROUGH_V6),
    }
}

/// nat-table chain names, as Istio names them, so `iptables -t nat -L` reads the same.
pub mod chains {
    pub const OUTPUT: &str = "ISTIO_OUTPUT";
    pub const REDIRECT: &str = "ISTIO_REDIRECT";
    pub const INBOUND: &str = "ISTIO_INBOUND";
    pub const IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
    /// In the raw table (with DNS capture): the conntrack zones of DNS over UDP.
    pub const OUTPUT_DNS: &str = "ISTIO_OUTPUT_DNS";
}

/// Container names the injector adds.
pub mod containers {
    pub const INIT: &str = "istio-init";
    pub const PROXY: &str = "istio-proxy";
}

/// Labels users already type.
pub mod labels {
    /// Namespace label: `enabled` turns injection on, `disabled` off.
    pub const NAMESPACE_INJECTION: &str = "istio-injection";
    /// Pod label (and annotation) `"true"`/`"false"`: per-pod override.
    pub const INJECT: &str = "sidecar.istio.io/inject";
    /// Pod label the injector writes, value [`super::identity::TLS_MODE_ISTIO`]: this pod's
    /// proxy accepts Istio mTLS, so clients may originate it (auto mTLS).
    pub const TLS_MODE: &str = "security.istio.io/tlsMode";
}

/// Workload identity: what the injector, the CA (mesh-control) and the proxy agree on.
pub mod identity {
    /// Value of [`super::labels::TLS_MODE`] on an injected pod.
    pub const TLS_MODE_ISTIO: &str = "istio";
    /// Audience of the projected ServiceAccount token the proxy shows the CA.
    pub const TOKEN_AUDIENCE: &str = "istio-ca";
    /// Lifetime the injector asks for that token (Istio's: 12 h).
    pub const TOKEN_EXPIRATION_SECONDS: i64 = 43_200;
    /// The projected token volume, its mount directory and file (Istio's names).
    pub const TOKEN_VOLUME: &str = "istio-token";
    pub const TOKEN_DIR: &str = "/var/run/secrets/tokens";
    pub const TOKEN_FILE_NAME: &str = "istio-token";
    pub const TOKEN_PATH: &str = "/var/run/secrets/tokens/istio-token";
    /// ConfigMap mesh-control publishes in every namespace with the mesh's root
    /// certificate, its key, and the volume/mount the injector makes of it (Istio's names).
    pub const ROOT_CERT_CONFIGMAP: &str = "istio-ca-root-cert";
    pub const ROOT_CERT_KEY: &str = "root-cert.pem";
    pub const ROOT_CERT_VOLUME: &str = "istiod-ca-cert";
    pub const ROOT_CERT_DIR: &str = "/var/run/secrets/istio";
    pub const ROOT_CERT_PATH: &str = "/var/run/secrets/istio/root-cert.pem";
    /// The default trust domain: identities are `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
    pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
    /// Default lifetime of a workload certificate (Istio's `SECRET_TTL`): 24 h.
    pub const DEFAULT_CERT_TTL_SECS: u64 = 86_400;

    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
        format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
    }

    /// The parts of a SPIFFE id in Istio's Kubernetes form, `None` for any other URI.
    pub fn parse_spiffe_id(uri: &str) -> Option<SpiffeId<'_>> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (trust_domain, path) = rest.split_once('/')?;
        let mut parts = path.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(namespace), Some("sa"), Some(service_account), None)
                if !trust_domain.is_empty()
                    && !namespace.is_empty()
                    && !service_account.is_empty() =>
            {
                Some(SpiffeId {
                    trust_domain,
                    namespace,
                    service_account,
                })
            }
            _ => None,
        }
    }

    /// A parsed `spiffe://<td>/ns/<ns>/sa/<sa>`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct SpiffeId<'a> {
        pub trust_domain: &'a str,
        pub namespace: &'a str,
        pub service_account: &'a str,
    }

    /// Istio's principal for a SPIFFE id (the id without `spiffe://`), as
    /// AuthorizationPolicy `principals` and the `*_principal` metric labels write it.
    pub fn principal(spiffe_id: &str) -> &str {
        spiffe_id.strip_prefix("spiffe://").unwrap_or(spiffe_id)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn spiffe_ids_round_trip_and_reject_other_shapes() {
            let id = spiffe_id("cluster.local", "bookstore", "reviews");
            assert_eq!(id, "spiffe://cluster.local/ns/bookstore/sa/reviews");
            assert_eq!(
                parse_spiffe_id(&id),
                Some(SpiffeId {
                    trust_domain: "cluster.local",
                    namespace: "bookstore",
                    service_account: "reviews"
                })
            );
            assert_eq!(principal(&id), "cluster.local/ns/bookstore/sa/reviews");
            for bad in [
                "https://cluster.local/ns/a/sa/b",
                "spiffe://cluster.local/ns/a/sa/b/c",
                "spiffe://cluster.local/ns//sa/b",
                "spiffe:///ns/a/sa/b",
                "spiffe://cluster.local/sa/b/ns/a",
                "spiffe://cluster.local",
            ] {
                assert_eq!(parse_spiffe_id(bad), None, "{bad}");
            }
        }
    }
}

/// Annotations users already type, and the ones the injector writes.
pub mod annotations {
    pub const INJECT: &str = "sidecar.istio.io/inject";
    pub const STATUS: &str = "sidecar.istio.io/status";
    pub const PROXY_IMAGE: &str = "sidecar.istio.io/proxyImage";
    pub const PROXY_CPU: &str = "sidecar.istio.io/proxyCPU";
    pub const PROXY_MEMORY: &str = "sidecar.istio.io/proxyMemory";
    pub const PROXY_CPU_LIMIT: &str = "sidecar.istio.io/proxyCPULimit";
    pub const PROXY_MEMORY_LIMIT: &str = "sidecar.istio.io/proxyMemoryLimit";
    /// Per-pod proxy log filter (grammar: [`crate::log`]); wins over `proxyLogLevel`.
    pub const LOG_LEVEL: &str = "sidecar.istio.io/logLevel";
    pub const INCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
    pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
    pub const INCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/includeInboundPorts";
    pub const EXCLUDE_INBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
    pub const EXCLUDE_OUTBOUND_PORTS: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";
    pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
    pub const PROMETHEUS_SCRAPE: &str = "prometheus.io/scrape";
    pub const PROMETHEUS_PORT: &str = "prometheus.io/port";
    pub const PROMETHEUS_PATH: &str = "prometheus.io/path";
}

/// The arguments the injector gives `istio-init` (`mesh-init`) with the built-in config and
/// no traffic annotations, in `istio-iptables`' order and spelling: capture all outbound
/// and inbound TCP except the proxy's own admin and metrics ports.
pub const DEFAULT_INIT_ARGS: [&str; 16] = [
    "-p",
    "15001",
    "-z",
    "15006",
    "-u",
    "1337",
    "-m",
    "REDIRECT",
    "-i",
    "*",
    "-x",
    "",
    "-b",
    "*",
    "-d",
    "15090,15021",
];

/// Namespaces that are never injected, whatever their labels say.
pub const NEVER_INJECTED_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_follows_family() {
        assert_eq!(
            inbound_passthrough_for("198.18.0.2".parse().unwrap()).to_string(),
            "127.0.0.6"
        );
        assert_eq!(
            inbound_passthrough_for("fd00::2".parse().unwrap()).to_string(),
            "::6"
        );
    }
}
