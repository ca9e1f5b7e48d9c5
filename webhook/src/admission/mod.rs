//! The HTTPS admission server (`mesh-webhook serve`): owns the TLS listener, the
//! `/inject` endpoint that wraps the injection core, health, readiness and metrics, and
//! the reloading of the certificate and the injection config from disk.
//!
//! - [`handler`]: AdmissionReview in, response out; pure.
//! - [`server`]: axum router and the TLS accept loop with graceful shutdown.
//! - [`certs`]: PEM loading and the rustls config whose certificate can be swapped.
//! - [`watch`]: noticing that mounted files changed (symlink swaps included).
//! - [`version`]: the API server's version, for `nativeSidecars: auto`.
//! - [`state`], [`metrics`]: what requests share.
//!
//! The `serve` flags ([`ServeArgs`]) are defined with every other flag in [`crate::cli`].

pub mod certs;
pub mod handler;
pub mod metrics;
pub mod server;
pub mod state;
pub mod version;
pub mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{ConfigError, InjectConfig};

pub use crate::cli::{DEFAULT_MAX_BODY_BYTES, NativeMode, ServeArgs};
pub use state::AppState;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("serving certificate: {0}")]
    Cert(#[from] certs::CertError),
    /// Its message names the file already (`injection config FILE: ...`).
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read injection config {}: {source}", path.display())]
    ConfigRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("self-signed certificates: {0}")]
    Bootstrap(#[from] crate::bootstrap::BootstrapError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    /// The address actually bound (useful with port 0).
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    serve: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stop accepting, drain in-flight requests (up to the grace period), stop reloading.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Err(e) = (&mut self.serve).await {
            tracing::error!(error = %e, "server task failed");
        }
        for t in &self.background {
            t.abort();
        }
    }
}

fn read_config(path: &std::path::Path) -> Result<(InjectConfig, Vec<u8>), StartError> {
    let bytes = std::fs::read(path).map_err(|source| StartError::ConfigRead {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let cfg = InjectConfig::from_yaml_str(&text, &path.display().to_string())?;
    Ok((cfg, bytes))
}

/// Load certificate and config, bind, and start serving in the background.
pub async fn start(args: ServeArgs) -> Result<Running, StartError> {
    let mut background = Vec::new();
    if args.self_signed.self_signed {
        // Writes --cert/--key from the shared Secret (creating it if needed) before we
        // load them; its rotation loop rewrites them later, and watch_certs follows.
        let opts = args.self_signed.options(&args.cert, &args.key);
        background.push(crate::bootstrap::start(opts).await?);
    }
    let (key, cert_pem, key_pem) = certs::load_pair(&args.cert, &args.key)?;
    let (config, config_bytes) = match &args.config {
        Some(p) => {
            let (c, b) = read_config(p)?;
            (c, Some(b))
        }
        None => (InjectConfig::default(), None),
    };
    tracing::info!(
        config = args.config.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "built-in defaults".into()),
        hash = %config.hash(),
        "injection config loaded"
    );
    let state = Arc::new(
        AppState::new(config, args.native_sidecars, args.max_body_bytes)
            .with_body_timeout(args.body_timeout),
    );
    let store = Arc::new(certs::CertStore::new(key));
    let tls = certs::server_config(store.clone())?;
    state.set_tls_loaded();

    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: args.addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: args.addr,
        source,
    })?;

    background.push(tokio::spawn(watch_certs(
        args.cert.clone(),
        args.key.clone(),
        cert_pem,
        key_pem,
        store,
        state.clone(),
        args.reload_interval,
    )));
    if let (Some(path), Some(bytes)) = (args.config.clone(), config_bytes) {
        background.push(tokio::spawn(watch_config(
            path,
            bytes,
            state.clone(),
            args.reload_interval,
        )));
    }
    if args.native_sidecars.is_none() {
        // The config may say (or be reloaded to say) `auto`: keep the answer at hand.
        background.push(tokio::spawn(version::keep_probing(
            state.clone(),
            args.kubeconfig.clone(),
            args.version_recheck,
        )));
    }

    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let router = server::router(state.clone());
    let serve = tokio::spawn(server::serve(
        listener,
        tokio_rustls::TlsAcceptor::from(tls),
        router,
        async {
            let _ = stop_rx.await;
        },
        args.shutdown_grace,
    ));
    tracing::info!(%addr, "mesh-webhook listening (HTTPS: /inject, /healthz, /readyz, /metrics)");
    Ok(Running {
        addr,
        state,
        stop: Some(stop_tx),
        serve,
        background,
    })
}

async fn watch_certs(
    cert: PathBuf,
    key: PathBuf,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    store: Arc<certs::CertStore>,
    state: Arc<AppState>,
    every: Duration,
) {
    let mut files = watch::FileSet::new(vec![cert.clone(), key.clone()], vec![cert_pem, key_pem]);
    loop {
        tokio::time::sleep(every).await;
        match files.poll() {
            watch::Poll::Unchanged | watch::Poll::Unreadable(None) => {}
            watch::Poll::Unreadable(Some(msg)) => {
                tracing::warn!(error = %msg, "serving certificate unreadable; keeping the current one");
            }
            watch::Poll::Changed(now) => {
                match certs::certified_key_from_pem(&now[0], &now[1], &cert, &key) {
                    Ok(k) => {
                        store.replace(k);
                        state.metrics.cert_reload(true);
                        tracing::info!(cert = %cert.display(), "serving certificate reloaded");
                    }
                    Err(e) => {
                        // Often a rotation caught between writing the cert and the key; the
                        // next change is tried again.
                        state.metrics.cert_reload(false);
                        tracing::warn!(error = %e, "new serving certificate rejected; keeping the current one");
                    }
                }
            }
        }
    }
}

async fn watch_config(path: PathBuf, bytes: Vec<u8>, state: Arc<AppState>, every: Duration) {
    let mut files = watch::FileSet::new(vec![path.clone()], vec![bytes]);
    loop {
        tokio::time::sleep(every).await;
        match files.poll() {
            watch::Poll::Unchanged | watch::Poll::Unreadable(None) => {}
            watch::Poll::Unreadable(Some(msg)) => {
                tracing::warn!(error = %msg, "injection config unreadable; keeping the current one");
            }
            watch::Poll::Changed(now) => {
                let text = String::from_utf8_lossy(&now[0]);
                match InjectConfig::from_yaml_str(&text, &path.display().to_string()) {
                    Ok(cfg) => {
                        let hash = cfg.hash();
                        state.set_config(cfg);
                        state.metrics.config_reload(true);
                        tracing::info!(config = %path.display(), %hash, "injection config reloaded");
                    }
                    Err(e) => {
                        state.metrics.config_reload(false);
                        tracing::error!(error = %e, "new injection config rejected; keeping the current one");
                    }
                }
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn termination() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = term => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// `mesh-webhook serve`: run until SIGTERM/SIGINT, then shut down gracefully.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let delay = args.shutdown_delay;
    rt.block_on(async {
        let running = start(args).await?;
        termination().await;
        if !delay.is_zero() {
            running.state.set_shutting_down();
            tracing::info!(
                ?delay,
                "not ready any more; serving on for the shutdown delay"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = termination() => tracing::info!("ending the shutdown delay early"),
            }
        }
        running.shutdown().await;
        anyhow::Ok(())
    })
}
