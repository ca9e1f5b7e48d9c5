//! The injection config: every value the injector writes into a pod comes from here.
//!
//! Read once from YAML (`--config FILE`, or the mounted ConfigMap for `serve`), validated,
//! and hashed; the hash goes into the `sidecar.istio.io/status` annotation so a pod injected
//! with a different config is re-injected, and one injected with the same config is left
//! alone. Unknown keys are an error (a typo must not silently fall back to a default).

use std::fmt;
use std::path::Path;

use mesh_common as common;
use mesh_common::lists::{self, Star};
use mesh_common::log::LogFilter;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::proxy_config::{self, ProxyConfig};
use crate::quantity::parse_quantity;

/// Whether the proxy runs as a native sidecar (an init container with `restartPolicy: Always`,
/// Kubernetes >= 1.29) or as a regular container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NativeSidecars {
    /// The webhook asks the API server for its version; kube-inject, which has no API server
    /// to ask, uses regular sidecars.
    #[default]
    Auto,
    True,
    False,
}

impl NativeSidecars {
    /// Resolve `auto` with what the caller knows about the cluster (`None`: cannot tell,
    /// which means regular sidecars).
    pub fn resolve(self, cluster_supports_native: Option<bool>) -> bool {
        match self {
            NativeSidecars::True => true,
            NativeSidecars::False => false,
            NativeSidecars::Auto => cluster_supports_native.unwrap_or(false),
        }
    }
}

impl Serialize for NativeSidecars {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            NativeSidecars::Auto => s.serialize_str("auto"),
            NativeSidecars::True => s.serialize_bool(true),
            NativeSidecars::False => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for NativeSidecars {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = NativeSidecars;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#""auto", true or false"#)
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(if v {
                    NativeSidecars::True
                } else {
                    NativeSidecars::False
                })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "auto" => Ok(NativeSidecars::Auto),
                    "true" => Ok(NativeSidecars::True),
                    "false" => Ok(NativeSidecars::False),
                    other => Err(E::invalid_value(serde::de::Unexpected::Str(other), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// How the proxy reaches the control plane: Istio's ProxyConfig `controlPlaneAuthPolicy`,
/// spelled as Istio spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ControlPlaneAuthPolicy {
    /// `MUTUAL_TLS`: TLS verified against the mesh's root certificate, and a workload
    /// identity from the CA. The pod gets the projected ServiceAccount token and the
    /// root-certificate volumes, the proxy `--root-cert`, the pod the label
    /// `security.istio.io/tlsMode: istio`.
    #[default]
    MutualTls,
    /// `NONE`: a plaintext config stream and no identity: only `--control-plane`.
    None,
}

impl ControlPlaneAuthPolicy {
    /// The values the config accepts.
    pub const ALLOWED: &'static str = "MUTUAL_TLS or NONE";

    /// The spelling in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ControlPlaneAuthPolicy::MutualTls => "MUTUAL_TLS",
            ControlPlaneAuthPolicy::None => "NONE",
        }
    }
}

impl fmt::Display for ControlPlaneAuthPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ControlPlaneAuthPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ControlPlaneAuthPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ControlPlaneAuthPolicy;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "{} (field `controlPlaneAuthPolicy`)",
                    ControlPlaneAuthPolicy::ALLOWED
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                match v {
                    "MUTUAL_TLS" => Ok(ControlPlaneAuthPolicy::MutualTls),
                    "NONE" => Ok(ControlPlaneAuthPolicy::None),
                    other => Err(E::custom(format!(
                        "field `controlPlaneAuthPolicy`: {other:?} is not {}",
                        ControlPlaneAuthPolicy::ALLOWED
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// CPU and memory for one container (Kubernetes quantities, e.g. `100m`, `128Mi`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceAmounts {
    pub cpu: Option<String>,
    pub memory: Option<String>,
}

/// Requests and limits of one container.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    pub requests: ResourceAmounts,
    pub limits: ResourceAmounts,
}

/// The injection config. Every field has a built-in default (see [`InjectConfig::default`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct InjectConfig {
    /// Image of the `istio-proxy` container (runs `mesh-proxy`); overridden per pod by
    /// `sidecar.istio.io/proxyImage`.
    pub proxy_image: String,
    /// Image of the `istio-init` container (runs `mesh-init`).
    pub init_image: String,
    /// `imagePullPolicy` of both containers; unset leaves Kubernetes' default.
    pub image_pull_policy: Option<String>,
    /// Resources of `istio-proxy`; overridden per pod by `sidecar.istio.io/proxyCPU`,
    /// `proxyMemory`, `proxyCPULimit`, `proxyMemoryLimit`.
    pub proxy_resources: Resources,
    /// Resources of `istio-init`.
    pub init_resources: Resources,
    /// `auto` | `true` | `false`.
    pub native_sidecars: NativeSidecars,
    /// uid the proxy runs as; its own traffic bypasses the capture.
    pub proxy_uid: u32,
    /// gid the proxy runs as.
    pub proxy_gid: u32,
    /// Port the outbound capture redirects to.
    pub outbound_port: u16,
    /// Port the inbound capture redirects to.
    pub inbound_port: u16,
    /// Proxy admin port (readiness, `/quitquitquit`).
    pub admin_port: u16,
    /// Proxy Prometheus port.
    pub metrics_port: u16,
    /// Default of `traffic.sidecar.istio.io/includeOutboundIPRanges` (`*` = all).
    #[serde(rename = "includeOutboundIPRanges")]
    pub include_outbound_ip_ranges: String,
    /// Default of `traffic.sidecar.istio.io/excludeOutboundIPRanges`.
    #[serde(rename = "excludeOutboundIPRanges")]
    pub exclude_outbound_ip_ranges: String,
    /// Default of `traffic.sidecar.istio.io/includeInboundPorts` (`*` = all, empty = none).
    pub include_inbound_ports: String,
    /// Inbound ports never captured; the annotation's ports are added to these.
    pub exclude_inbound_ports: String,
    /// Default of `traffic.sidecar.istio.io/excludeOutboundPorts`.
    pub exclude_outbound_ports: String,
    /// Add `prometheus.io/*` annotations pointing at the proxy's metrics (unless the pod
    /// already has its own).
    pub prometheus_annotations: bool,
    /// The proxy's log filter (`mesh_common::log`'s grammar: a level such as `info`, or
    /// `warn,mesh_proxy=debug`), passed in its `MESH_PROXY_LOG`; overridden per pod by
    /// `sidecar.istio.io/logLevel`. Unset keeps the proxy's default.
    pub proxy_log_level: Option<String>,
    /// `host:port` of mesh-control's config stream, written into the proxy's
    /// `--control-plane`. Empty: no control plane (no flag, no identity; the proxy stays
    /// L4). The default is mesh-control's TLS port (15012, Istio's); with
    /// `controlPlaneAuthPolicy: NONE` point it at the plaintext one (15010).
    pub control_plane_address: String,
    /// `MUTUAL_TLS` (TLS to the control plane and the CA, a workload identity, mTLS
    /// between sidecars) or `NONE` (plaintext stream, no identity). Istio's ProxyConfig
    /// key. Only matters with a `controlPlaneAddress`.
    pub control_plane_auth_policy: ControlPlaneAuthPolicy,
    /// The name verified in mesh-control's (and the CA's) certificate, the proxy's
    /// `--control-plane-san`. Empty: the host of `controlPlaneAddress` (Istio's
    /// `ISTIOD_SAN` default). Required when that host is an IP address.
    pub control_plane_san: String,
    /// `host:port` of the CA (`IstioCertificateService`), the proxy's `--ca-address`.
    /// Empty: `controlPlaneAddress` (Istio's `CA_ADDR` default).
    pub ca_address: String,
    /// Trust domain of the workload identities, `spiffe://<trustDomain>/ns/..`; written
    /// as the proxy's `--trust-domain` unless it is the default, `cluster.local`.
    pub trust_domain: String,
    /// Redirect the app's DNS (UDP and TCP port 53) to the proxy (`mesh-init
    /// --dns-capture`, `mesh-proxy --dns-capture`), as Istio's
    /// `ISTIO_META_DNS_CAPTURE: "true"`.
    pub dns_capture: bool,
    /// Istio's `meshConfig.defaultConfig`: the ProxyConfig every pod starts from, under its
    /// `proxy.istio.io/config` annotation (which wins field by field, `proxyMetadata` key by
    /// key). Only the fields the injector honours ([`proxy_config::HONOURED_FIELDS`]);
    /// any other is an error. Left out of the hash's input when empty, so configs without
    /// it keep their hash.
    #[serde(skip_serializing_if = "ProxyConfig::is_empty")]
    pub default_config: ProxyConfig,
}

/// The default `controlPlaneAddress`: mesh-control's Service in `mesh-system`, its TLS
/// port (the config stream and the CA).
pub fn default_control_plane_address() -> String {
    format!(
        "mesh-control.mesh-system.svc:{}",
        common::CONTROL_PLANE_TLS_PORT
    )
}

impl Default for InjectConfig {
    fn default() -> Self {
        let q = |s: &str| Some(s.to_string());
        InjectConfig {
            proxy_image: "ghcr.io/rust-mesh/mesh-proxy:0.1.0".into(),
            init_image: "ghcr.io/rust-mesh/mesh-init:0.1.0".into(),
            image_pull_policy: None,
            proxy_resources: Resources {
                requests: ResourceAmounts {
                    cpu: q("100m"),
                    memory: q("128Mi"),
                },
                limits: ResourceAmounts {
                    cpu: q("2000m"),
                    memory: q("1024Mi"),
                },
            },
            init_resources: Resources {
                requests: ResourceAmounts {
                    cpu: q("10m"),
                    memory: q("10Mi"),
                },
                limits: ResourceAmounts {
                    cpu: q("100m"),
                    memory: q("50Mi"),
                },
            },
            native_sidecars: NativeSidecars::Auto,
            proxy_uid: common::PROXY_UID,
            proxy_gid: common::PROXY_GID,
            outbound_port: common::PROXY_OUTBOUND_PORT,
            inbound_port: common::PROXY_INBOUND_PORT,
            admin_port: common::PROXY_ADMIN_PORT,
            metrics_port: common::PROXY_METRICS_PORT,
            include_outbound_ip_ranges: "*".into(),
            exclude_outbound_ip_ranges: String::new(),
            include_inbound_ports: "*".into(),
            exclude_inbound_ports: format!(
                "{},{}",
                common::PROXY_METRICS_PORT,
                common::PROXY_ADMIN_PORT
            ),
            exclude_outbound_ports: String::new(),
            prometheus_annotations: true,
            proxy_log_level: None,
            control_plane_address: default_control_plane_address(),
            control_plane_auth_policy: ControlPlaneAuthPolicy::MutualTls,
            control_plane_san: String::new(),
            ca_address: String::new(),
            trust_domain: common::identity::DEFAULT_TRUST_DOMAIN.into(),
            dns_capture: false,
            default_config: ProxyConfig::default(),
        }
    }
}

/// Why a config could not be used. Display names the file (origin) and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read injection config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("injection config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("injection config {origin}: field `{field}`: {reason}")]
    Invalid {
        origin: String,
        field: String,
        reason: String,
    },
}

impl InjectConfig {
    /// Parse and validate a config from YAML text; `origin` (usually the file name) is named
    /// in errors. An empty document means all defaults.
    pub fn from_yaml_str(s: &str, origin: &str) -> Result<Self, ConfigError> {
        let is_empty = s
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#') || l.trim() == "---");
        let cfg: InjectConfig = if is_empty {
            InjectConfig::default()
        } else {
            serde_saphyr::from_str(s).map_err(|e| ConfigError::Parse {
                origin: origin.to_string(),
                message: e.without_snippet().to_string(),
            })?
        };
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml_str(&text, &path.display().to_string())
    }

    /// Whether injected pods get a workload identity: `controlPlaneAuthPolicy:
    /// MUTUAL_TLS` and a control plane to get it from.
    pub fn workload_identity(&self) -> bool {
        self.control_plane_auth_policy == ControlPlaneAuthPolicy::MutualTls
            && !self.control_plane_address.is_empty()
    }

    /// A stable hash of everything in the config (hex, 16 characters). Two configs that would
    /// inject differently hash differently.
    pub fn hash(&self) -> String {
        // serde_json serializes struct fields in declaration order: stable across runs.
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&canonical);
        hex16(&digest)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            origin: origin.to_string(),
            field: field.to_string(),
            reason,
        };
        if self.proxy_image.trim().is_empty() {
            return Err(invalid("proxyImage", "must not be empty".into()));
        }
        if self.init_image.trim().is_empty() {
            return Err(invalid("initImage", "must not be empty".into()));
        }
        if let Some(p) = &self.image_pull_policy
            && !matches!(p.as_str(), "Always" | "IfNotPresent" | "Never")
        {
            return Err(invalid(
                "imagePullPolicy",
                format!("{p:?} is not Always, IfNotPresent or Never"),
            ));
        }
        for (field, r) in [
            ("proxyResources", &self.proxy_resources),
            ("initResources", &self.init_resources),
        ] {
            for (sub, v) in [
                ("requests.cpu", &r.requests.cpu),
                ("requests.memory", &r.requests.memory),
                ("limits.cpu", &r.limits.cpu),
                ("limits.memory", &r.limits.memory),
            ] {
                if let Some(v) = v {
                    parse_quantity(v).map_err(|e| invalid(&format!("{field}.{sub}"), e))?;
                }
            }
        }
        for (field, port) in [
            ("outboundPort", self.outbound_port),
            ("inboundPort", self.inbound_port),
            ("adminPort", self.admin_port),
            ("metricsPort", self.metrics_port),
        ] {
            if port == 0 {
                return Err(invalid(field, "must be 1-65535".into()));
            }
        }
        let list = |field: &str, r: Result<(), lists::ListError>| {
            r.map_err(|e| invalid(field, e.to_string()))
        };
        list(
            "includeOutboundIPRanges",
            lists::cidrs(&self.include_outbound_ip_ranges, Star::Allowed).map(drop),
        )?;
        list(
            "excludeOutboundIPRanges",
            lists::cidrs(&self.exclude_outbound_ip_ranges, Star::Refused).map(drop),
        )?;
        list(
            "includeInboundPorts",
            lists::ports(&self.include_inbound_ports, Star::Allowed).map(drop),
        )?;
        list(
            "excludeInboundPorts",
            lists::ports(&self.exclude_inbound_ports, Star::Refused).map(drop),
        )?;
        list(
            "excludeOutboundPorts",
            lists::ports(&self.exclude_outbound_ports, Star::Refused).map(drop),
        )?;
        if let Some(level) = &self.proxy_log_level {
            LogFilter::parse(level).map_err(|e| invalid("proxyLogLevel", e.to_string()))?;
        }
        if !self.control_plane_address.is_empty() {
            check_host_port(&self.control_plane_address)
                .map_err(|e| invalid("controlPlaneAddress", e))?;
        }
        self.validate_default_config(origin)?;
        self.validate_identity(origin)
    }

    /// `defaultConfig` (its fields were checked when parsed): nothing in it that would be
    /// ignored or that contradicts the config's own keys.
    fn validate_default_config(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            origin: origin.to_string(),
            field: format!("defaultConfig.{field}"),
            reason,
        };
        let dc = &self.default_config;
        let dns = format!(
            "{}.{}",
            proxy_config::PROXY_METADATA,
            proxy_config::DNS_CAPTURE_KEY
        );
        match dc.dns_capture() {
            Some(Err(v)) => {
                return Err(invalid(
                    &dns,
                    format!("{v:?} is not a boolean (\"true\" or \"false\")"),
                ));
            }
            Some(Ok(false)) if self.dns_capture => {
                return Err(invalid(
                    &dns,
                    "\"false\" contradicts dnsCapture: true; keep one of them".into(),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// The identity keys: well-formed, consistent with each other, and never set where
    /// they would be silently ignored.
    fn validate_identity(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            origin: origin.to_string(),
            field: field.to_string(),
            reason,
        };
        if !self.control_plane_san.is_empty() {
            check_dns_name(&self.control_plane_san, false).map_err(|e| {
                invalid(
                    "controlPlaneSan",
                    format!(
                        "{e}: expected the DNS name in mesh-control's certificate, \
                         e.g. mesh-control.mesh-system.svc"
                    ),
                )
            })?;
        }
        if !self.ca_address.is_empty() {
            check_host_port(&self.ca_address).map_err(|e| invalid("caAddress", e))?;
        }
        check_dns_name(&self.trust_domain, true).map_err(|e| {
            invalid(
                "trustDomain",
                format!(
                    "{e}: expected a lowercase DNS name (a SPIFFE trust domain), e.g. {}",
                    common::identity::DEFAULT_TRUST_DOMAIN
                ),
            )
        })?;
        // What identity needs and what only identity uses.
        let unused = if self.control_plane_address.is_empty() {
            Some("controlPlaneAddress is empty (no control plane, no identity)")
        } else if self.control_plane_auth_policy == ControlPlaneAuthPolicy::None {
            Some("controlPlaneAuthPolicy is NONE (plaintext, no identity)")
        } else {
            None
        };
        let identity_keys = [
            (
                "controlPlaneSan",
                &self.control_plane_san,
                !self.control_plane_san.is_empty(),
            ),
            ("caAddress", &self.ca_address, !self.ca_address.is_empty()),
            (
                "trustDomain",
                &self.trust_domain,
                self.trust_domain != common::identity::DEFAULT_TRUST_DOMAIN,
            ),
        ];
        if let Some(why) = unused {
            if let Some((field, value, _)) = identity_keys.iter().find(|(_, _, set)| *set) {
                return Err(invalid(
                    field,
                    format!("{value:?} would be ignored: {why}; remove the key"),
                ));
            }
            return Ok(());
        }
        let address = &self.control_plane_address;
        let host = address.rsplit_once(':').map_or("", |(h, _)| h);
        let is_ip = host.parse::<std::net::Ipv4Addr>().is_ok() || host.starts_with('[');
        if is_ip && self.control_plane_san.is_empty() {
            return Err(invalid(
                "controlPlaneAddress",
                format!(
                    "{address:?} is an IP address, which mesh-control's certificate does not name: \
                     with controlPlaneAuthPolicy MUTUAL_TLS set controlPlaneSan to the name the \
                     proxy must verify (e.g. mesh-control.mesh-system.svc), or use \
                     controlPlaneAuthPolicy NONE"
                ),
            ));
        }
        let plaintext = format!(":{}", common::CONTROL_PLANE_PLAINTEXT_PORT);
        if address.ends_with(&plaintext) {
            return Err(invalid(
                "controlPlaneAddress",
                format!(
                    "{address:?}: port {} is mesh-control's plaintext stream, but \
                     controlPlaneAuthPolicy is MUTUAL_TLS: use the TLS port {} or set \
                     controlPlaneAuthPolicy: NONE",
                    common::CONTROL_PLANE_PLAINTEXT_PORT,
                    common::CONTROL_PLANE_TLS_PORT
                ),
            ));
        }
        Ok(())
    }
}

/// A DNS name as a certificate names a host (RFC 1123 labels, no trailing dot, no
/// wildcard, not an IP address); `lowercase` also refuses upper case (SPIFFE trust
/// domains are lowercase).
pub fn check_dns_name(s: &str, lowercase: bool) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    if s.parse::<std::net::IpAddr>().is_ok()
        || s.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
    {
        return Err(format!("{s:?} is an IP address, not a DNS name"));
    }
    if s.contains("://") {
        return Err(format!("{s:?} is not a DNS name (no scheme)"));
    }
    if s.contains(':') {
        return Err(format!("{s:?} is not a DNS name (no port)"));
    }
    if s.ends_with('.') {
        return Err(format!("{s:?} is not a DNS name (no trailing dot)"));
    }
    if lowercase && s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("{s:?} has upper-case letters"));
    }
    if s.len() > 253 || !s.split('.').all(dns_label_ok) {
        return Err(format!("{s:?} is not a DNS name"));
    }
    Ok(())
}

fn dns_label_ok(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// A `host:port` a proxy can dial: a DNS name (RFC 1123 labels) or an IP address (IPv6 in
/// brackets), a port 1-65535, nothing else (no scheme, no path, no spaces).
pub fn check_host_port(s: &str) -> Result<(), String> {
    let want = "expected host:port, e.g. mesh-control.mesh-system.svc:15012 or [fd00::1]:15012";
    if s.contains("://") {
        return Err(format!(
            "{s:?}: no scheme (the proxy dials plain host:port): {want}"
        ));
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} has no port: {want}"));
    };
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
    if !port_ok {
        return Err(format!("{s:?}: port {port:?} is not 1-65535: {want}"));
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner
            .parse::<std::net::Ipv6Addr>()
            .map(drop)
            .map_err(|_| format!("{s:?}: {inner:?} is not an IPv6 address: {want}"));
    }
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(format!(
            "{s:?}: write an IPv6 address in brackets ([fd00::1]:15012): {want}"
        ));
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 || !name.split('.').all(dns_label_ok) {
        return Err(format!(
            "{s:?}: {host:?} is not a host name or IP address: {want}"
        ));
    }
    Ok(())
}

/// First 16 hex characters of a digest.
pub(crate) fn hex16(digest: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(16);
    for b in digest.iter().take(8) {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let c = InjectConfig::from_yaml_str("# nothing\n", "t").unwrap();
        assert_eq!(c, InjectConfig::default());
        assert_eq!(c.exclude_inbound_ports, "15090,15021");
    }

    #[test]
    fn native_sidecars_accepts_bool_and_strings() {
        for (text, want) in [
            ("nativeSidecars: auto", NativeSidecars::Auto),
            ("nativeSidecars: true", NativeSidecars::True),
            ("nativeSidecars: \"true\"", NativeSidecars::True),
            ("nativeSidecars: false", NativeSidecars::False),
            ("nativeSidecars: \"false\"", NativeSidecars::False),
        ] {
            let c = InjectConfig::from_yaml_str(text, "t").unwrap();
            assert_eq!(c.native_sidecars, want, "{text}");
        }
        let e = InjectConfig::from_yaml_str("nativeSidecars: maybe", "t").unwrap_err();
        assert!(e.to_string().contains("maybe"), "{e}");
    }

    #[test]
    fn unknown_field_is_an_error_naming_it() {
        let e = InjectConfig::from_yaml_str("proxyImagee: x\n", "cfg.yaml").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("cfg.yaml") && msg.contains("proxyImagee"),
            "{msg}"
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        for (text, field) in [
            (
                "proxyResources: {requests: {cpu: lots}}",
                "proxyResources.requests.cpu",
            ),
            ("excludeInboundPorts: \"*\"", "excludeInboundPorts"),
            (
                "includeOutboundIPRanges: 10.0.0.0/33",
                "includeOutboundIPRanges",
            ),
            ("imagePullPolicy: Sometimes", "imagePullPolicy"),
            ("proxyImage: \"\"", "proxyImage"),
            ("proxyLogLevel: loud", "proxyLogLevel"),
            ("proxyLogLevel: \"info,mesh-proxy=debug\"", "proxyLogLevel"),
            (
                "excludeOutboundIPRanges: 10.0.0.1",
                "excludeOutboundIPRanges",
            ),
        ] {
            let e = InjectConfig::from_yaml_str(text, "t").unwrap_err();
            assert!(e.to_string().contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn proxy_log_level_uses_the_one_log_grammar() {
        for ok in [
            "debug",
            "WARNING",
            "critical",
            "warn,mesh_proxy=debug",
            "mesh_proxy=trace",
        ] {
            let c = InjectConfig::from_yaml_str(&format!("proxyLogLevel: \"{ok}\""), "t").unwrap();
            assert_eq!(c.proxy_log_level.as_deref(), Some(ok));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inject.yaml");
        std::fs::write(&path, "proxyLogLevel: verbose\n").unwrap();
        let msg = InjectConfig::load(&path).unwrap_err().to_string();
        assert!(
            msg.contains(&path.display().to_string())
                && msg.contains("proxyLogLevel")
                && msg.contains("verbose"),
            "{msg}"
        );
    }

    #[test]
    fn control_plane_address_defaults_to_the_tls_stream_and_may_be_empty() {
        let c = InjectConfig::default();
        assert_eq!(
            c.control_plane_address,
            "mesh-control.mesh-system.svc:15012"
        );
        assert_eq!(
            c.control_plane_auth_policy,
            ControlPlaneAuthPolicy::MutualTls
        );
        assert_eq!(c.trust_domain, "cluster.local");
        assert!(c.workload_identity());
        assert!(!c.dns_capture);
        for ok in [
            "istiod.istio-system.svc:15012",
            "mesh-control.mesh-system.svc.cluster.local.:15012",
            "mesh-control:1",
        ] {
            let c = InjectConfig::from_yaml_str(&format!("controlPlaneAddress: \"{ok}\""), "t")
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(c.control_plane_address, ok);
        }
        // IP addresses and the plaintext port need NONE (or, for an IP, a SAN to verify).
        for ok in ["10.96.0.12:65535", "[fd00::12]:15010", "mesh-control:15010"] {
            let text = format!("{{controlPlaneAddress: \"{ok}\", controlPlaneAuthPolicy: NONE}}");
            let c = InjectConfig::from_yaml_str(&text, "t").unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(c.control_plane_address, ok);
            assert!(!c.workload_identity());
        }
        let c = InjectConfig::from_yaml_str("controlPlaneAddress: \"\"", "t").unwrap();
        assert_eq!(c.control_plane_address, "");
        assert!(!c.workload_identity(), "no control plane, no identity");
        let c = InjectConfig::from_yaml_str("dnsCapture: true", "t").unwrap();
        assert!(c.dns_capture);
    }

    #[test]
    fn identity_keys_parse_and_validate() {
        let c = InjectConfig::from_yaml_str(
            "{controlPlaneAddress: \"198.19.0.15:15012\", controlPlaneSan: mesh-control.mesh-system.svc, \
             caAddress: \"ca.mesh-system.svc:15012\", trustDomain: example.org}",
            "t",
        )
        .unwrap();
        assert_eq!(c.control_plane_san, "mesh-control.mesh-system.svc");
        assert_eq!(c.ca_address, "ca.mesh-system.svc:15012");
        assert_eq!(c.trust_domain, "example.org");
        assert!(c.workload_identity());
        let c = InjectConfig::from_yaml_str("controlPlaneAuthPolicy: NONE", "t").unwrap();
        assert_eq!(c.control_plane_auth_policy, ControlPlaneAuthPolicy::None);
        assert!(!c.workload_identity());
        let c = InjectConfig::from_yaml_str("controlPlaneAuthPolicy: MUTUAL_TLS", "t").unwrap();
        assert_eq!(c, InjectConfig::default());
    }

    #[test]
    fn bad_identity_keys_name_the_file_the_key_the_value_and_what_is_expected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inject.yaml");
        for (text, field, want) in [
            (
                "controlPlaneAuthPolicy: STRICT",
                "controlPlaneAuthPolicy",
                "\"STRICT\" is not MUTUAL_TLS or NONE",
            ),
            (
                "controlPlaneAuthPolicy: mutual_tls",
                "controlPlaneAuthPolicy",
                "\"mutual_tls\" is not MUTUAL_TLS or NONE",
            ),
            (
                "controlPlaneAuthPolicy: 1",
                "controlPlaneAuthPolicy",
                "MUTUAL_TLS or NONE",
            ),
            (
                "controlPlaneAuthPolicy: [MUTUAL_TLS]",
                "controlPlaneAuthPolicy",
                "MUTUAL_TLS or NONE",
            ),
            (
                "controlPlaneSan: mesh_control.svc",
                "controlPlaneSan",
                "\"mesh_control.svc\" is not a DNS name",
            ),
            (
                "controlPlaneSan: 10.0.0.1",
                "controlPlaneSan",
                "\"10.0.0.1\" is an IP address",
            ),
            (
                "controlPlaneSan: \"mesh-control.mesh-system.svc:15012\"",
                "controlPlaneSan",
                "no port",
            ),
            (
                "controlPlaneSan: \"*.mesh-system.svc\"",
                "controlPlaneSan",
                "is not a DNS name",
            ),
            (
                "caAddress: ca.mesh-system.svc",
                "caAddress",
                "\"ca.mesh-system.svc\" has no port",
            ),
            ("caAddress: \"https://ca:15012\"", "caAddress", "no scheme"),
            ("trustDomain: \"\"", "trustDomain", "empty"),
            (
                "trustDomain: Example.ORG",
                "trustDomain",
                "\"Example.ORG\" has upper-case letters",
            ),
            (
                "trustDomain: \"spiffe://example.org\"",
                "trustDomain",
                "\"spiffe://example.org\" is not a DNS name (no scheme)",
            ),
            (
                "trustDomain: \"example..org\"",
                "trustDomain",
                "is not a DNS name",
            ),
            // Set where nothing would use it.
            (
                "{controlPlaneAuthPolicy: NONE, controlPlaneAddress: \"m:15010\", controlPlaneSan: m.svc}",
                "controlPlaneSan",
                "ignored: controlPlaneAuthPolicy is NONE",
            ),
            (
                "{controlPlaneAddress: \"\", caAddress: \"ca:15012\"}",
                "caAddress",
                "ignored: controlPlaneAddress is empty",
            ),
            (
                "{controlPlaneAuthPolicy: NONE, controlPlaneAddress: \"m:15010\", trustDomain: example.org}",
                "trustDomain",
                "ignored: controlPlaneAuthPolicy is NONE",
            ),
            // What MUTUAL_TLS needs.
            (
                "controlPlaneAddress: \"198.19.0.15:15012\"",
                "controlPlaneAddress",
                "is an IP address, which mesh-control's certificate does not name: with controlPlaneAuthPolicy MUTUAL_TLS set controlPlaneSan",
            ),
            (
                "controlPlaneAddress: \"[fd00::12]:15012\"",
                "controlPlaneAddress",
                "set controlPlaneSan",
            ),
            (
                "controlPlaneAddress: \"mesh-control.mesh-system.svc:15010\"",
                "controlPlaneAddress",
                "port 15010 is mesh-control's plaintext stream, but controlPlaneAuthPolicy is MUTUAL_TLS: use the TLS port 15012 or set controlPlaneAuthPolicy: NONE",
            ),
        ] {
            std::fs::write(&path, format!("{text}\n")).unwrap();
            let msg = InjectConfig::load(&path).unwrap_err().to_string();
            assert!(
                msg.contains(&path.display().to_string())
                    && msg.contains(&format!("`{field}`"))
                    && msg.contains(want),
                "{text}: {msg}"
            );
        }
    }

    #[test]
    fn a_bad_control_plane_address_names_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inject.yaml");
        for (bad, why) in [
            ("mesh-control.mesh-system.svc", "no port"),
            ("mesh-control:0", "not 1-65535"),
            ("mesh-control:65536", "not 1-65535"),
            ("mesh-control:", "not 1-65535"),
            ("mesh-control:15010x", "not 1-65535"),
            (":15010", "not a host name"),
            ("http://mesh-control:15010", "no scheme"),
            ("fd00::zz:15010", "not a host name"),
            ("mesh_control:15010", "not a host name"),
            ("mesh control:15010", "not a host name"),
            ("-mesh:15010", "not a host name"),
            ("fd00::1:15010", "in brackets"),
            ("[fd00::zz]:15010", "not an IPv6 address"),
        ] {
            std::fs::write(&path, format!("controlPlaneAddress: \"{bad}\"\n")).unwrap();
            let msg = InjectConfig::load(&path).unwrap_err().to_string();
            assert!(
                msg.contains(&path.display().to_string())
                    && msg.contains("controlPlaneAddress")
                    && msg.contains(why),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn hash_is_stable_and_tracks_changes() {
        let a = InjectConfig::default();
        assert_eq!(a.hash(), InjectConfig::default().hash());
        assert_eq!(a.hash().len(), 16);
        let b = InjectConfig {
            proxy_image: "other:1".into(),
            ..InjectConfig::default()
        };
        assert_ne!(a.hash(), b.hash());
        for c in [
            InjectConfig {
                control_plane_address: String::new(),
                ..InjectConfig::default()
            },
            InjectConfig {
                dns_capture: true,
                ..InjectConfig::default()
            },
            InjectConfig {
                control_plane_auth_policy: ControlPlaneAuthPolicy::None,
                ..InjectConfig::default()
            },
            InjectConfig {
                control_plane_san: "mesh-control.mesh-system.svc".into(),
                ..InjectConfig::default()
            },
            InjectConfig {
                ca_address: "ca:15012".into(),
                ..InjectConfig::default()
            },
            InjectConfig {
                trust_domain: "example.org".into(),
                ..InjectConfig::default()
            },
        ] {
            assert_ne!(a.hash(), c.hash());
        }
    }

    #[test]
    fn default_config_parses_hashes_and_refuses_what_it_would_not_do() {
        let c = InjectConfig::from_yaml_str(
            "defaultConfig: {concurrency: 2, terminationDrainDuration: 10s, \
             proxyMetadata: {TEAM: mesh}, holdApplicationUntilProxyStarts: true}",
            "t",
        )
        .unwrap();
        assert_eq!(c.default_config.concurrency, Some(2));
        assert_eq!(
            c.default_config.termination_drain_duration.as_deref(),
            Some("10s")
        );
        assert_ne!(c.hash(), InjectConfig::default().hash());
        // Empty: the hash of a config without it (existing injections stay unchanged).
        let empty = InjectConfig::from_yaml_str("defaultConfig: {}", "t").unwrap();
        assert_eq!(empty.hash(), InjectConfig::default().hash());
        let dns = InjectConfig::from_yaml_str(
            "defaultConfig: {proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"true\"}}",
            "t",
        )
        .unwrap();
        assert_eq!(dns.default_config.dns_capture(), Some(Ok(true)));
        for (text, field, want) in [
            (
                "defaultConfig: {tracing: {sampling: 1}}",
                "defaultConfig.tracing",
                "not a ProxyConfig field this injector honours",
            ),
            (
                "defaultConfig: {concurrency: 65}",
                "defaultConfig.concurrency",
                "65 is out of range",
            ),
            (
                "defaultConfig: {proxyMetadata: {A: 1}}",
                "defaultConfig.proxyMetadata.A",
                "must be a string",
            ),
            (
                "defaultConfig: {proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"yes\"}}",
                "defaultConfig.proxyMetadata.ISTIO_META_DNS_CAPTURE",
                "\"yes\" is not a boolean",
            ),
            (
                "{dnsCapture: true, defaultConfig: {proxyMetadata: {ISTIO_META_DNS_CAPTURE: \"false\"}}}",
                "defaultConfig.proxyMetadata.ISTIO_META_DNS_CAPTURE",
                "contradicts dnsCapture: true",
            ),
            (
                "defaultConfig: [concurrency]",
                "defaultConfig",
                "must be a mapping",
            ),
        ] {
            let e = InjectConfig::from_yaml_str(text, "cfg.yaml")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("cfg.yaml") && e.contains(&format!("`{field}`")) && e.contains(want),
                "{text}: {e}"
            );
        }
        // A hold, whatever the sidecars: native ones hold with their startup probe,
        // regular ones go first with a postStart hook.
        for native in ["auto", "true", "false"] {
            let text = format!(
                "{{nativeSidecars: {native}, defaultConfig: {{holdApplicationUntilProxyStarts: true}}}}"
            );
            assert!(InjectConfig::from_yaml_str(&text, "t").is_ok(), "{text}");
        }
    }

    #[test]
    fn native_resolution() {
        assert!(!NativeSidecars::Auto.resolve(None));
        assert!(NativeSidecars::Auto.resolve(Some(true)));
        assert!(!NativeSidecars::False.resolve(Some(true)));
        assert!(NativeSidecars::True.resolve(Some(false)));
    }
}
