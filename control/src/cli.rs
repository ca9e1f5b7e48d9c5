//! `mesh-control`'s command line (clap derive): definitions only.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mesh_common::duration;
use mesh_common::identity::DEFAULT_TRUST_DOMAIN;

use crate::translate::CompatibilityVersion;

#[derive(Debug, Parser)]
#[command(
    name = "mesh-control",
    version,
    about = "The mesh's control plane: watches the cluster and streams each mesh-proxy its config"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch Services, EndpointSlices, Pods, Namespaces, VirtualServices and
    /// DestinationRules, and serve the config stream.
    Serve(ServeArgs),
}

/// Arguments of `mesh-control serve`. The API server is found as kubectl finds it:
/// `KUBECONFIG` (or ~/.kube/config), else the in-cluster ServiceAccount.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The TLS port (istiod's 15012): the config stream and the CA, Istio's
    /// `IstioCertificateService/CreateCertificate`, with a serving certificate the CA
    /// issues itself. `:0` picks a free port; the bound address is logged
    /// (`listening ... tls=...`).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:15012")]
    pub addr: SocketAddr,
    /// The plaintext config stream (gRPC over h2c; Istio's plaintext xDS port). Never the
    /// CA: certificates are only served over TLS. `:0` picks a free port; the bound
    /// address is logged (`listening plaintext=...`).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:15010")]
    pub plaintext_addr: SocketAddr,
    /// Monitoring: `/metrics`, `/readyz`, `/healthz`, `/debug/config?proxy=NS/POD&key=KEY`,
    /// `/debug/proxies`, `/debug/objects`.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:15014")]
    pub metrics_addr: SocketAddr,
    /// Istio's rootNamespace: DestinationRules there apply mesh-wide.
    #[arg(long, value_name = "NAMESPACE", default_value = "istio-system")]
    pub root_namespace: String,
    /// Istio's compatibilityVersion: keep the defaults of that Istio release where later
    /// ones changed them. `1.23` or lower: the default retry policy (of routes without
    /// `retries`, and of requests no route takes) also retries a 503 answer
    /// (`retriable-status-codes` 503), as Istio did before 1.24. Unset, or 1.24 and
    /// later: it retries only connect failures, refused streams and gRPC
    /// `unavailable` / `cancelled`, twice, on another endpoint.
    #[arg(long, value_name = "MAJOR.MINOR", value_parser = CompatibilityVersion::parse)]
    pub compatibility_version: Option<CompatibilityVersion>,
    /// After a change, wait this long for the cluster to be quiet (at most five times
    /// this) before building and pushing: a burst of edits becomes one push.
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = duration::parse)]
    pub debounce: Duration,
    /// How often to ask which versions of networking.istio.io are served (CRDs installed,
    /// removed or upgraded while running).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration::parse)]
    pub crd_discovery_interval: Duration,
    /// The mesh's trust domain: workloads get `spiffe://<trust domain>/ns/<ns>/sa/<sa>`,
    /// a self-signed root has subject `O=<trust domain>`.
    #[arg(long, value_name = "DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Lifetime of a workload certificate whose request asks for none.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = duration::parse)]
    pub workload_cert_ttl: Duration,
    /// Requests for a longer lifetime are refused (Istio's default: 90 days).
    #[arg(long, value_name = "DURATION", default_value = "2160h", value_parser = duration::parse)]
    pub max_workload_cert_ttl: Duration,
    /// Where the CA's Secrets are: `cacerts` (a plugged-in CA) if it exists, else
    /// `istio-ca-secret` (the self-signed root, created at first start). Needs `get` and
    /// `create` on Secrets there.
    #[arg(
        long,
        value_name = "NAMESPACE",
        env = "POD_NAMESPACE",
        default_value = "mesh-system"
    )]
    pub ca_namespace: String,
    /// Another name for the TLS port's certificate, besides `mesh-control`,
    /// `mesh-control.<ns>`, `mesh-control.<ns>.svc` and `...svc.cluster.local`; an IP
    /// address becomes an IP SAN. Repeatable.
    #[arg(long = "tls-san", value_name = "NAME")]
    pub tls_san: Vec<String>,
    /// No CA and no TLS port: only the plaintext config stream (for environments where
    /// mesh-control may not read or create Secrets).
    #[arg(long, conflicts_with_all = ["addr", "tls_san"])]
    pub no_ca: bool,
    /// Log filter: a level (`info`) or `tracing` directives (`info,mesh_control=debug`).
    #[arg(long, value_name = "FILTER", env = "RUST_LOG", default_value = "info")]
    pub log: String,
    /// Log lines as JSON objects.
    #[arg(long)]
    pub log_json: bool,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn defaults_and_help() {
        Cli::command().debug_assert();
        let Command::Serve(a) = Cli::try_parse_from(["mesh-control", "serve"])
            .unwrap()
            .command;
        assert_eq!(a.plaintext_addr, "0.0.0.0:15010".parse().unwrap());
        assert_eq!(a.metrics_addr, "0.0.0.0:15014".parse().unwrap());
        assert_eq!(a.root_namespace, "istio-system");
        assert_eq!(a.debounce, Duration::from_millis(100));
        assert_eq!(a.addr, "0.0.0.0:15012".parse().unwrap());
        assert_eq!(a.trust_domain, "cluster.local");
        assert_eq!(a.workload_cert_ttl, Duration::from_secs(86_400));
        assert_eq!(a.max_workload_cert_ttl, Duration::from_secs(90 * 86_400));
        assert!(a.tls_san.is_empty());
        assert!(!a.no_ca);
        let help = Cli::command()
            .find_subcommand_mut("serve")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains("15012"), "{help}");
        let Command::Serve(a) = Cli::try_parse_from([
            "mesh-control",
            "serve",
            "--debounce",
            "250ms",
            "--plaintext-addr",
            "127.0.0.1:0",
        ])
        .unwrap()
        .command;
        assert_eq!(a.debounce, Duration::from_millis(250));
        assert_eq!(a.plaintext_addr.port(), 0);
        assert_eq!(a.compatibility_version, None);
        assert!(
            help.contains("--compatibility-version <MAJOR.MINOR>"),
            "{help}"
        );
    }

    #[test]
    fn ca_flags() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["mesh-control", "serve"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).map(|c| {
                let Command::Serve(a) = c.command;
                a
            })
        };
        let a = parse(&[
            "--addr=127.0.0.1:0",
            "--trust-domain=example.org",
            "--workload-cert-ttl=1h",
            "--max-workload-cert-ttl=48h",
            "--ca-namespace=istio-system",
            "--tls-san=mesh.example.org",
            "--tls-san",
            "10.0.0.5",
        ])
        .unwrap();
        assert_eq!(a.addr.port(), 0);
        assert_eq!(a.trust_domain, "example.org");
        assert_eq!(a.workload_cert_ttl, Duration::from_secs(3600));
        assert_eq!(a.max_workload_cert_ttl, Duration::from_secs(48 * 3600));
        assert_eq!(a.ca_namespace, "istio-system");
        assert_eq!(a.tls_san, ["mesh.example.org", "10.0.0.5"]);
        assert!(parse(&["--no-ca"]).unwrap().no_ca);
        let e = parse(&["--no-ca", "--addr=127.0.0.1:0"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--no-ca") && e.contains("--addr"), "{e}");
        let e = parse(&["--workload-cert-ttl=1d"]).unwrap_err().to_string();
        assert!(e.contains("--workload-cert-ttl"), "{e}");
    }

    #[test]
    fn compatibility_version() {
        let parse = |v: &str| {
            let flag = format!("--compatibility-version={v}");
            Cli::try_parse_from(["mesh-control", "serve", flag.as_str()]).map(|c| {
                let Command::Serve(a) = c.command;
                a.compatibility_version
            })
        };
        assert_eq!(
            parse("1.23").unwrap(),
            Some(CompatibilityVersion {
                major: 1,
                minor: 23
            })
        );
        assert_eq!(parse("1.24").unwrap().unwrap().to_string(), "1.24");
        assert!(parse("1.9").unwrap() < parse("1.23").unwrap());
        for bad in [
            "", "1", "1.", ".5", "1.23.4", "v1.23", "1.x", "-1.2", " 1.23", "1.+2",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("--compatibility-version") && e.contains("MAJOR.MINOR"),
                "{bad:?}: {e}"
            );
        }
    }
}
