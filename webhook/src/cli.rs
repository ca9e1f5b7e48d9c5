//! Every command-line definition of `mesh-webhook` (clap derive), in one place: the
//! subcommands, `kube-inject`/`kube-uninject`, `serve` and its `--self-signed` options.
//! Definitions only (no dependency on the rest of the crate), so that the modules that run
//! a command ([`crate::commands`], [`crate::admission`], [`crate::bootstrap`]) can all use
//! them without a cycle.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use mesh_common::duration;

#[derive(Debug, Parser)]
#[command(
    name = "mesh-webhook",
    version,
    about = "Sidecar injector: admission webhook and offline kube-inject"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTPS mutating admission webhook.
    Serve(ServeArgs),
    /// Add the sidecar to every workload in a multi-document YAML file.
    KubeInject(KubeInjectArgs),
    /// Remove what a previous injection added (as its status annotation records).
    KubeUninject(KubeUninjectArgs),
}

/// Arguments of `mesh-webhook kube-inject`.
#[derive(Debug, Clone, Args)]
pub struct KubeInjectArgs {
    /// Input YAML file, or `-` for standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE|-")]
    pub file: String,
    /// Write here instead of standard output (replaced atomically; untouched on error).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Injection config (YAML); built-in defaults when absent. `nativeSidecars: auto`
    /// means regular sidecars here (there is no API server to ask).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Arguments of `mesh-webhook kube-uninject`.
#[derive(Debug, Clone, Args)]
pub struct KubeUninjectArgs {
    /// Input YAML file, or `-` for standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE|-")]
    pub file: String,
    /// Write here instead of standard output (replaced atomically; untouched on error).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Default limit on an AdmissionReview body; the API server's own limit is 3 MiB objects.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Arguments of `mesh-webhook serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// PEM certificate chain served to the API server; re-read when it changes on disk.
    #[arg(long)]
    pub cert: PathBuf,
    /// PEM private key matching --cert; re-read when it changes on disk.
    #[arg(long)]
    pub key: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:9443")]
    pub addr: SocketAddr,
    /// Injection config (YAML); built-in defaults when absent. Re-read when it changes.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override the config's `nativeSidecars` (auto asks the API server for its version).
    #[arg(long, value_enum)]
    pub native_sidecars: Option<NativeMode>,
    /// Kubeconfig used to ask the API server's version (default: in-cluster, then
    /// KUBECONFIG, then ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Largest accepted AdmissionReview body, in bytes; larger ones get 413.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// How long a client may take to send a request body before it gets 408.
    #[arg(long, default_value = "10s", value_parser = duration::parse)]
    pub body_timeout: Duration,
    /// After SIGTERM, keep accepting and serving this long while /readyz answers 503, so
    /// endpoints and kube-proxy stop sending requests here before the listener closes
    /// (with failurePolicy Fail, a refused connection fails a pod's creation). A second
    /// signal ends the delay early.
    #[arg(long, default_value = "5s", value_parser = duration::parse)]
    pub shutdown_delay: Duration,
    /// How long in-flight requests may take to finish once the listener is closed after
    /// SIGTERM and the shutdown delay (e.g. 15s, 500ms).
    #[arg(long, default_value = "15s", value_parser = duration::parse)]
    pub shutdown_grace: Duration,
    /// How often the certificate, key and config files are checked for changes.
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    pub reload_interval: Duration,
    /// How often the API server's version is asked again (nativeSidecars: auto).
    #[arg(long, default_value = "10m", value_parser = duration::parse)]
    pub version_recheck: Duration,
    /// `--self-signed` and its options: make, share and rotate the certificate ourselves.
    #[command(flatten)]
    pub self_signed: SelfSignedArgs,
}

/// Flags of `mesh-webhook serve` for self-managed certificates. The server flattens this
/// into its own arguments; the files it serves (`--cert`, `--key`) are where the
/// certificate from the Secret is written.
#[derive(Debug, Clone, Args)]
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

/// `--native-sidecars`: overrides the config's `nativeSidecars` when given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NativeMode {
    /// Decide from the API server's version (>= 1.29 means native).
    Auto,
    /// Always inject the proxy as a native sidecar (init container, restartPolicy Always).
    True,
    /// Always inject the proxy as a regular container.
    False,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::Path;

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn kube_inject_flags() {
        let cli = Cli::try_parse_from([
            "mesh-webhook",
            "kube-inject",
            "-f",
            "-",
            "-o",
            "out.yaml",
            "--config",
            "c.yaml",
        ])
        .unwrap();
        let Command::KubeInject(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert_eq!(a.file, "-");
        assert_eq!(a.output.as_deref(), Some(Path::new("out.yaml")));
        assert_eq!(a.config.as_deref(), Some(Path::new("c.yaml")));
        assert!(Cli::try_parse_from(["mesh-webhook", "kube-inject"]).is_err());
        assert!(Cli::try_parse_from(["mesh-webhook", "kube-uninject", "-f", "x.yaml"]).is_ok());
    }

    #[derive(Debug, Parser)]
    struct T {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn flags_parse_with_defaults() {
        let t = T::try_parse_from(["x", "--cert", "c.pem", "--key", "k.pem"]).unwrap();
        assert_eq!(t.serve.addr.to_string(), "0.0.0.0:9443");
        assert_eq!(t.serve.max_body_bytes, 8 * 1024 * 1024);
        assert_eq!(t.serve.shutdown_grace, Duration::from_secs(15));
        assert_eq!(t.serve.shutdown_delay, Duration::from_secs(5));
        assert_eq!(t.serve.native_sidecars, None);
        let t = T::try_parse_from([
            "x",
            "--cert",
            "c",
            "--key",
            "k",
            "--native-sidecars",
            "true",
            "--shutdown-grace",
            "500ms",
        ])
        .unwrap();
        assert_eq!(t.serve.native_sidecars, Some(NativeMode::True));
        assert_eq!(t.serve.shutdown_grace, Duration::from_millis(500));
        assert!(
            T::try_parse_from([
                "x",
                "--cert",
                "c",
                "--key",
                "k",
                "--shutdown-grace",
                "5 parsecs"
            ])
            .is_err()
        );
        assert!(T::try_parse_from(["x", "--key", "k"]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(duration::parse("2").unwrap(), Duration::from_secs(2));
        assert_eq!(duration::parse("10m").unwrap(), Duration::from_secs(600));
        assert!(
            duration::parse("abc")
                .unwrap_err()
                .to_string()
                .contains("abc")
        );
    }
}
