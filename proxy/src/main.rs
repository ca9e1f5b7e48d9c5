//! `mesh-proxy`: parse flags, start logging and the runtime, serve until
//! SIGTERM / SIGINT / `POST /quitquitquit`, drain, exit 0.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mesh_proxy::cli::Args;
use mesh_proxy::orig_dst::KernelOriginalDst;
use mesh_proxy::rlimit::raise_fd_limit;
use mesh_proxy::{DrainTrigger, Proxy, logging};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    logging::init(&args.log_filter);
    let config = args.into_config().context("invalid configuration")?;
    info!(?config, "starting");
    let id = &config.identity;
    info!(
        workload = %id.workload,
        namespace = %id.namespace,
        pod_ip = id.pod_ip.map(tracing::field::display),
        service_account = id.service_account.as_deref(),
        owner = id.owner.as_deref(),
        canonical_service = id.canonical_service.as_deref(),
        canonical_revision = id.canonical_revision.as_deref(),
        app = id.app.as_deref(),
        version = id.version.as_deref(),
        spiffe_id = config.workload_identity.as_ref().map(|w| w.spiffe_id.as_str()),
        "identity"
    );
    match raise_fd_limit() {
        Ok(limit) => info!(limit, "open files limit"),
        Err(e) => warn!(error = %e, "cannot raise the open files limit"),
    }
    // This thread's single-threaded runtime serves the admin endpoints and one share of
    // the capture listeners; `--worker-threads` above 1 adds threads of the same kind,
    // each with listeners of its own (see `mesh_proxy::workers`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let drain_delay = config.drain_delay;
    runtime.block_on(async move {
        let proxy = Proxy::bind(config, Arc::new(KernelOriginalDst)).await?;
        let trigger = proxy.drain_trigger();
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        tokio::spawn(drain_on_signal(trigger, drain_delay, async move {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        }));
        let report = proxy.run().await;
        info!(cut = report.cut, "exiting");
        anyhow::Ok(())
    })
}

/// SIGTERM (the kubelet deleting the pod) drains after `--drain-delay`, still accepting
/// meanwhile; SIGINT (someone at a terminal) drains at once.
async fn drain_on_signal(
    trigger: DrainTrigger,
    delay: Duration,
    signal: impl Future<Output = &'static str>,
) {
    let name = signal.await;
    if name == "SIGTERM" {
        info!(
            signal = name,
            ?delay,
            "terminating: not ready, accepting until the drain"
        );
        trigger.terminate(delay).await;
    }
    info!(signal = name, "draining");
    trigger.drain();
}
