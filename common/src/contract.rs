//! The contract between the injector and the two binaries it writes command lines for:
//! every flag and environment variable the injector puts into `istio-init` and
//! `istio-proxy`, spelled once. The injector builds its containers from these names, the
//! binaries parse them, and `tests/tests/contract.rs` feeds every injected container's
//! `args` and `env` to the real parsers.

/// `mesh-init`, run as the `istio-init` container: `istio-iptables`' flags.
pub mod init {
    /// The binary the init container runs.
    pub const BINARY: &str = "mesh-init";

    /// A flag with its short and long spelling, dashes included.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Flag {
        /// `-p`: what the injector writes (as `istio-iptables` args read).
        pub short: &'static str,
        /// `--proxy-port`.
        pub long: &'static str,
    }

    pub const PROXY_PORT: Flag = Flag {
        short: "-p",
        long: "--proxy-port",
    };
    pub const INBOUND_CAPTURE_PORT: Flag = Flag {
        short: "-z",
        long: "--inbound-capture-port",
    };
    pub const PROXY_UID: Flag = Flag {
        short: "-u",
        long: "--proxy-uid",
    };
    pub const PROXY_GID: Flag = Flag {
        short: "-g",
        long: "--proxy-gid",
    };
    pub const MODE: Flag = Flag {
        short: "-m",
        long: "--mode",
    };
    pub const INBOUND_PORTS: Flag = Flag {
        short: "-b",
        long: "--inbound-ports",
    };
    pub const EXCLUDE_INBOUND_PORTS: Flag = Flag {
        short: "-d",
        long: "--exclude-inbound-ports",
    };
    pub const OUTBOUND_PORTS: Flag = Flag {
        short: "-q",
        long: "--outbound-ports",
    };
    pub const EXCLUDE_OUTBOUND_PORTS: Flag = Flag {
        short: "-o",
        long: "--exclude-outbound-ports",
    };
    pub const INCLUDE_OUTBOUND_CIDRS: Flag = Flag {
        short: "-i",
        long: "--include-outbound-cidrs",
    };
    pub const EXCLUDE_OUTBOUND_CIDRS: Flag = Flag {
        short: "-x",
        long: "--exclude-outbound-cidrs",
    };
    pub const KUBE_VIRT_INTERFACES: Flag = Flag {
        short: "-k",
        long: "--kube-virt-interfaces",
    };

    /// Every capture flag.
    pub const CAPTURE_FLAGS: [Flag; 12] = [
        PROXY_PORT,
        INBOUND_CAPTURE_PORT,
        PROXY_UID,
        PROXY_GID,
        MODE,
        INBOUND_PORTS,
        EXCLUDE_INBOUND_PORTS,
        OUTBOUND_PORTS,
        EXCLUDE_OUTBOUND_PORTS,
        INCLUDE_OUTBOUND_CIDRS,
        EXCLUDE_OUTBOUND_CIDRS,
        KUBE_VIRT_INTERFACES,
    ];

    /// `--dns-capture`: a switch (no value, no short form: istio-iptables has none for its
    /// `--redirect-dns`, which `mesh-init` accepts as an alias). Redirects the app's UDP and
    /// TCP to port 53 to the proxy's DNS port ([`crate::DNS_CAPTURE_PORT`]); the injector
    /// writes it when the injection config's `dnsCapture` is on.
    pub const DNS_CAPTURE: &str = "--dns-capture";
    /// istio-iptables' name for [`DNS_CAPTURE`], accepted as an alias.
    pub const DNS_CAPTURE_ISTIO_ALIAS: &str = "--redirect-dns";

    /// Every switch (a flag without a value) the injector may write.
    pub const SWITCHES: [&str; 1] = [DNS_CAPTURE];

    /// The only interception mode supported.
    pub const MODE_REDIRECT: &str = "REDIRECT";
}

/// `mesh-proxy`, run as the `istio-proxy` container.
pub mod proxy {
    /// The binary the sidecar container runs.
    pub const BINARY: &str = "mesh-proxy";

    /// `mesh-proxy wait`: exits 0 once the proxy of the same pod is ready (its admin
    /// port's `/healthz/ready` answers 200), 1 when `--timeout` runs out: the injector's
    /// `postStart` hook for ProxyConfig `holdApplicationUntilProxyStarts` with a regular
    /// sidecar (Istio's `pilot-agent wait`).
    pub mod wait {
        pub const SUBCOMMAND: &str = "wait";
        /// The admin address to ask (default `127.0.0.1:15021`).
        pub const ADMIN_ADDR: &str = "--admin-addr";
        /// How long to wait (default `60s`, Istio's), `mesh_common::duration` syntax.
        pub const TIMEOUT: &str = "--timeout";
    }

    /// Long flags. Those in `ALL` take a value; those in `SWITCHES` take none.
    pub mod flag {
        pub const OUTBOUND_PORT: &str = "--outbound-port";
        pub const INBOUND_PORT: &str = "--inbound-port";
        pub const ADMIN_ADDR: &str = "--admin-addr";
        pub const METRICS_ADDR: &str = "--metrics-addr";
        pub const CONNECT_TIMEOUT: &str = "--connect-timeout";
        pub const DRAIN_TIMEOUT: &str = "--drain-timeout";
        pub const DRAIN_DELAY: &str = "--drain-delay";
        pub const MAX_CONNECTIONS: &str = "--max-connections";
        pub const ACCESS_LOG: &str = "--access-log";
        pub const COPY_MODE: &str = "--copy-mode";
        pub const WORKER_THREADS: &str = "--worker-threads";
        pub const IPV6: &str = "--ipv6";
        pub const LOG_LEVEL: &str = "--log-level";
        pub const POD_NAME: &str = "--pod-name";
        pub const POD_NAMESPACE: &str = "--pod-namespace";
        pub const INSTANCE_IP: &str = "--instance-ip";
        pub const SERVICE_ACCOUNT: &str = "--service-account";
        pub const WORKLOAD_NAME: &str = "--workload-name";
        /// `host:port` of mesh-control's config stream (the injection config's
        /// `controlPlaneAddress`). Absent: no control plane, the proxy stays L4.
        pub const CONTROL_PLANE: &str = "--control-plane";

        /// A switch (no value): answer DNS on `127.0.0.1` / `::1` port
        /// [`crate::DNS_CAPTURE_PORT`], UDP and TCP, because `mesh-init --dns-capture`
        /// redirects the app's DNS there (the injection config's `dnsCapture`).
        pub const DNS_CAPTURE: &str = "--dns-capture";
        /// The local debug endpoints (`/config_dump`, `/debug/route`), Envoy's admin
        /// port `127.0.0.1:15000` by default. The injector leaves it at its default.
        pub const DEBUG_ADDR: &str = "--debug-addr";
        /// With a control plane, readiness waits for the first config at most this
        /// long; then the proxy turns ready anyway and treats what it does not know as
        /// outside the mesh (L4). The injector leaves it at its default.
        pub const CONFIG_WAIT: &str = "--config-wait";
        /// The mesh's root certificate (PEM; the injector mounts ConfigMap
        /// `istio-ca-root-cert` at [`crate::identity::ROOT_CERT_PATH`]). Given: the config
        /// stream and the CA are reached over TLS verified against it, and the proxy has a
        /// workload identity (mTLS). Absent: plaintext stream, no identity, no mTLS.
        pub const ROOT_CERT: &str = "--root-cert";
        /// `host:port` of the CA (`IstioCertificateService`); default: `--control-plane`
        /// (as Istio's `CA_ADDR` defaults to the discovery address).
        pub const CA_ADDRESS: &str = "--ca-address";
        /// The name verified in mesh-control's (and the CA's) certificate; default: the
        /// host of the address dialled (`--control-plane`, or `--ca-address` for the CA;
        /// Istio's `ISTIOD_SAN`). Needed when that is an IP.
        pub const CONTROL_PLANE_SAN: &str = "--control-plane-san";
        /// The projected ServiceAccount token shown to the CA, re-read at every request
        /// (default [`crate::identity::TOKEN_PATH`]).
        pub const TOKEN_FILE: &str = "--token-file";
        /// Trust domain of this proxy's identity (default `cluster.local`).
        pub const TRUST_DOMAIN: &str = "--trust-domain";
        /// Lifetime asked of the CA for the workload certificate (default 24h; Istio's
        /// `SECRET_TTL`), in [`crate::duration`]'s syntax.
        pub const CERT_TTL: &str = "--cert-ttl";

        /// What this proxy is: [`ROLE_SIDECAR`] (the default; every injected sidecar,
        /// which the injector writes no `--role` for) or [`ROLE_GATEWAY`] (a pod injected
        /// with Istio's `gateway` template: its only job is the proxy, no `istio-init`, no
        /// capture).
        pub const ROLE: &str = "--role";
        /// `--role sidecar`: the proxy of a captured app pod (the default).
        pub const ROLE_SIDECAR: &str = "sidecar";
        /// `--role gateway`: an ingress/egress gateway pod's proxy.
        pub const ROLE_GATEWAY: &str = "gateway";
        /// Every value of [`ROLE`].
        pub const ROLES: [&str; 2] = [ROLE_SIDECAR, ROLE_GATEWAY];

        /// Every flag that takes a value.
        pub const ALL: [&str; 28] = [
            OUTBOUND_PORT,
            INBOUND_PORT,
            ADMIN_ADDR,
            METRICS_ADDR,
            CONNECT_TIMEOUT,
            DRAIN_TIMEOUT,
            DRAIN_DELAY,
            MAX_CONNECTIONS,
            ACCESS_LOG,
            COPY_MODE,
            WORKER_THREADS,
            IPV6,
            LOG_LEVEL,
            POD_NAME,
            POD_NAMESPACE,
            INSTANCE_IP,
            SERVICE_ACCOUNT,
            WORKLOAD_NAME,
            CONTROL_PLANE,
            DEBUG_ADDR,
            CONFIG_WAIT,
            ROOT_CERT,
            CA_ADDRESS,
            CONTROL_PLANE_SAN,
            TOKEN_FILE,
            TRUST_DOMAIN,
            CERT_TTL,
            ROLE,
        ];

        /// Every switch: a flag that takes no value.
        pub const SWITCHES: [&str; 1] = [DNS_CAPTURE];
    }

    /// Environment variables (the injector sets them, mostly through the downward API).
    pub mod env {
        /// Log filter, in the grammar of [`crate::log`]; same as `--log-level`.
        pub const LOG: &str = "MESH_PROXY_LOG";
        /// `metadata.name`.
        pub const POD_NAME: &str = "POD_NAME";
        /// `metadata.namespace`.
        pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
        /// `status.podIP`.
        pub const INSTANCE_IP: &str = "INSTANCE_IP";
        /// `spec.serviceAccountName`.
        pub const SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";
        /// The workload (Deployment, StatefulSet, ...) name, under Istio's name for it.
        /// A literal, derived at injection time as Istio derives it (a ReplicaSet's pod:
        /// the Deployment). Absent when there is no name to give (a bare pod with only
        /// `generateName`).
        pub const WORKLOAD_NAME: &str = "ISTIO_META_WORKLOAD_NAME";
        /// The owning workload as Istio writes it:
        /// `kubernetes://apis/<apiVersion>/namespaces/<ns>/<lowercase kind>s/<name>`. The
        /// injector writes the namespace as `$(POD_NAMESPACE)`, which the kubelet expands
        /// (dependent env var), so the value is right however the pod got its namespace.
        /// Absent when the workload has no name.
        pub const OWNER: &str = "ISTIO_META_OWNER";
        /// Canonical service: label `service.istio.io/canonical-name`, else
        /// `app.kubernetes.io/name`, else `app`, else the workload name.
        pub const CANONICAL_SERVICE: &str = "CANONICAL_SERVICE";
        /// Canonical revision: label `service.istio.io/canonical-revision`, else
        /// `app.kubernetes.io/version`, else `version`, else `latest` (always set).
        pub const CANONICAL_REVISION: &str = "CANONICAL_REVISION";
        /// The pod's `app` label, when it has one (else absent: the proxy says `unknown`).
        pub const APP_NAME: &str = "APP_NAME";
        /// The pod's `version` label, when it has one (else absent).
        pub const APP_VERSION: &str = "APP_VERSION";
        /// Istio's `SECRET_TTL`: the workload certificate's lifetime asked of the CA,
        /// same as `--cert-ttl` (the flag wins). Istio users set it through
        /// `proxyMetadata` or an `env` entry of an `istio-proxy` container override.
        /// Ignored without `--root-cert` (no identity).
        pub const SECRET_TTL: &str = "SECRET_TTL";

        /// Every variable the proxy reads.
        ///
        /// The injector also writes variables the proxy does not read: each entry of the
        /// pod's ProxyConfig `proxyMetadata` (its `proxy.istio.io/config` annotation over
        /// the injection config's `defaultConfig`), passed through as Istio's injector
        /// passes it, the user's as their own `istio-proxy` env is. Those of them that
        /// are in this list ([`SECRET_TTL`], [`LOG`], [`INSTANCE_IP`]) are checked at
        /// injection as the proxy parses them.
        pub const ALL: [&str; 12] = [
            LOG,
            POD_NAME,
            POD_NAMESPACE,
            INSTANCE_IP,
            SERVICE_ACCOUNT,
            WORKLOAD_NAME,
            OWNER,
            CANONICAL_SERVICE,
            CANONICAL_REVISION,
            APP_NAME,
            APP_VERSION,
            SECRET_TTL,
        ];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_flags_are_distinct_and_well_formed() {
        for (i, a) in init::CAPTURE_FLAGS.iter().enumerate() {
            assert!(a.short.len() == 2 && a.short.starts_with('-'), "{a:?}");
            assert!(a.long.starts_with("--") && a.long.len() > 3, "{a:?}");
            for b in &init::CAPTURE_FLAGS[i + 1..] {
                assert!(a.short != b.short && a.long != b.long, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn init_switches_are_long_flags_distinct_from_the_capture_flags() {
        for s in init::SWITCHES
            .iter()
            .chain([&init::DNS_CAPTURE_ISTIO_ALIAS])
        {
            assert!(s.starts_with("--") && s.len() > 3, "{s}");
            assert!(init::CAPTURE_FLAGS.iter().all(|f| f.long != *s), "{s}");
        }
    }

    #[test]
    fn proxy_flags_and_env_are_distinct() {
        let mut f = proxy::flag::ALL.to_vec();
        f.extend(proxy::flag::SWITCHES);
        f.sort_unstable();
        f.dedup();
        assert_eq!(
            f.len(),
            proxy::flag::ALL.len() + proxy::flag::SWITCHES.len()
        );
        assert!(
            proxy::flag::ROLES
                .iter()
                .all(|r| !r.is_empty() && !r.starts_with('-'))
        );
        assert_ne!(proxy::flag::ROLE_SIDECAR, proxy::flag::ROLE_GATEWAY);
        let mut e = proxy::env::ALL.to_vec();
        e.sort_unstable();
        e.dedup();
        assert_eq!(e.len(), proxy::env::ALL.len());
    }
}
