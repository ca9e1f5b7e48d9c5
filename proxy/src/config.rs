//! The runtime configuration: everything the proxy needs, typed and validated.
//! [`crate::cli`] builds it from the command line and environment; tests build it
//! directly ([`Config::loopback`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::ServerName;

/// How bytes are moved between the two sockets of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMode {
    /// Zero-copy `splice(2)` through a pipe per direction (Linux); falls back to
    /// buffered copying for a connection whose pipe cannot be made.
    Splice,
    /// Read into a small user-space buffer, write it out.
    Buffered,
    /// Buffered for small messages (cheapest per message and per connection); a
    /// direction whose read fills the 16 KiB buffer is bulk and moves to `splice`.
    Adaptive,
}

/// Access log format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per connection, on stdout.
    Json,
}

/// Who this proxy is: what it reports itself as in metric labels, and what the
/// injector told it about its pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The workload (Deployment, StatefulSet, ...) name; the pod name when the injector
    /// gave none; [`UNKNOWN`] when neither is known.
    pub workload: String,
    pub namespace: String,
    /// The pod's IP (`INSTANCE_IP`, the downward API's `status.podIP`).
    pub pod_ip: Option<IpAddr>,
    /// The pod's ServiceAccount (`SERVICE_ACCOUNT`).
    pub service_account: Option<String>,
    /// The owning workload as Istio writes it (`ISTIO_META_OWNER`),
    /// `kubernetes://apis/<apiVersion>/namespaces/<ns>/<kind>s/<name>`.
    pub owner: Option<String>,
    /// Istio's canonical service (`CANONICAL_SERVICE`).
    pub canonical_service: Option<String>,
    /// Istio's canonical revision (`CANONICAL_REVISION`).
    pub canonical_revision: Option<String>,
    /// The pod's `app` label (`APP_NAME`).
    pub app: Option<String>,
    /// The pod's `version` label (`APP_VERSION`).
    pub version: Option<String>,
}

impl Identity {
    pub fn unknown() -> Identity {
        Identity {
            workload: UNKNOWN.to_owned(),
            namespace: UNKNOWN.to_owned(),
            pod_ip: None,
            service_account: None,
            owner: None,
            canonical_service: None,
            canonical_revision: None,
            app: None,
            version: None,
        }
    }
}

/// The workload identity (`--root-cert` given): who the proxy is in the mesh and where
/// its certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadIdentity {
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub spiffe_id: String,
    pub trust_domain: String,
    /// The mesh roots (PEM), re-read at every connection to mesh-control or the CA and
    /// whenever the file changes.
    pub root_cert: PathBuf,
    /// The CA's `host:port` (`--ca-address`, else `--control-plane`).
    pub ca_address: String,
    /// The name the CA's certificate must carry (`--control-plane-san`, else the host of
    /// the CA's address).
    pub ca_server_name: ServerName<'static>,
    /// The name mesh-control's certificate must carry (`--control-plane-san`, else the
    /// host of `--control-plane`); `None` without a control plane.
    pub control_plane_server_name: Option<ServerName<'static>>,
    /// The projected ServiceAccount token (`--token-file`).
    pub token_file: PathBuf,
    /// The certificate lifetime asked of the CA (`--cert-ttl`), whole seconds.
    pub cert_ttl: Duration,
}

/// The label value Istio uses when it cannot tell.
pub const UNKNOWN: &str = "unknown";

/// Everything the proxy needs, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// Outbound listen addresses (IPv4 first, then IPv6 if any).
    pub outbound: Vec<SocketAddr>,
    /// Inbound listen addresses.
    pub inbound: Vec<SocketAddr>,
    /// Whether failing to bind the IPv6 listeners is fatal.
    pub ipv6_required: bool,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    /// On SIGTERM, keep accepting this long (readiness already 503) before the drain.
    pub drain_delay: Duration,
    pub max_connections: usize,
    pub access_log: Option<AccessLogFormat>,
    pub copy_mode: CopyMode,
    pub worker_threads: usize,
    pub identity: Identity,
    /// The pod's name (what the proxy tells mesh-control it is).
    pub pod_name: Option<String>,
    /// mesh-control's `host:port`; `None`: no control plane, everything is L4.
    pub control_plane: Option<String>,
    /// Readiness waits at most this long for the first config from mesh-control.
    pub config_wait: Duration,
    /// `/config_dump` and `/debug/route`.
    pub debug_addr: SocketAddr,
    /// Where to answer the app's DNS (`--dns-capture`); empty: no DNS proxy.
    pub dns: Vec<SocketAddr>,
    /// The workload identity and mTLS (`--root-cert`); `None`: plaintext config stream,
    /// no certificate.
    pub workload_identity: Option<WorkloadIdentity>,
    /// `--role gateway`: the addresses the Gateway config's listeners bind (any IPv4,
    /// and any IPv6 unless `--ipv6 off`); `outbound` and `inbound` are empty then (a
    /// gateway has no capture). `None`: a sidecar.
    pub gateway: Option<Vec<IpAddr>>,
}

impl Config {
    /// Everything on 127.0.0.1 with kernel-chosen ports: for tests.
    pub fn loopback() -> Config {
        let lo = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        Config {
            outbound: vec![lo],
            inbound: vec![lo],
            ipv6_required: false,
            admin_addr: lo,
            metrics_addr: lo,
            connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(20),
            drain_delay: Duration::from_secs(5),
            max_connections: 16384,
            access_log: None,
            copy_mode: CopyMode::Adaptive,
            worker_threads: 1,
            identity: Identity::unknown(),
            pod_name: None,
            control_plane: None,
            config_wait: Duration::from_secs(10),
            debug_addr: lo,
            dns: Vec::new(),
            workload_identity: None,
            gateway: None,
        }
    }
}
