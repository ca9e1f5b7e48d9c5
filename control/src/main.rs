//! `mesh-control serve`: parse the command line, start logging, run. `anyhow` only here.

use anyhow::Context as _;
use clap::Parser as _;
use mesh_control::cli::{Cli, Command, ServeArgs};
use mesh_control::serve::{Bound, CaConfig, Config};
use mesh_control::translate::MeshSettings;

fn main() -> anyhow::Result<()> {
    let Command::Serve(args) = Cli::parse().command;
    init_log(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let result = runtime.block_on(serve(args));
    // Dropping a runtime waits for every blocking task to return, however long that
    // takes; a pod being stopped must not sit out its grace period on one.
    runtime.shutdown_timeout(EXIT_GRACE);
    if result.is_ok() {
        tracing::info!("stopped");
    }
    result
}

/// How long the blocking tasks still running at exit get (a signature, a translation).
const EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

fn init_log(args: &ServeArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .with_context(|| format!("--log {:?}", args.log))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config {
        plaintext_addr: args.plaintext_addr,
        metrics_addr: args.metrics_addr,
        debounce: args.debounce,
        crd_interval: args.crd_discovery_interval,
        settings: MeshSettings {
            root_namespace: args.root_namespace,
            compatibility_version: args.compatibility_version,
            trust_domain: args.trust_domain.clone(),
            ..MeshSettings::default()
        },
    };
    let ca = (!args.no_ca).then(|| CaConfig {
        addr: args.addr,
        trust_domain: args.trust_domain,
        workload_cert_ttl: args.workload_cert_ttl,
        max_workload_cert_ttl: args.max_workload_cert_ttl,
        tls_sans: args.tls_san,
        ..CaConfig::new(args.ca_namespace)
    });
    let bound = Bound::bind_with(config, ca).await?;
    let client = kube::Client::try_default()
        .await
        .context("no API server: set KUBECONFIG, or run in a pod with a ServiceAccount")?;
    bound.serve(client, shutdown_signal()).await?;
    Ok(())
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
