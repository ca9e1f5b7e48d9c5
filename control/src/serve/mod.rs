//! `mesh-control serve`: watch the cluster, build snapshots, stream each proxy its keys.
//!
//! Modules, in dependency order (each uses only those before it):
//! - [`metrics`]: the Prometheus series;
//! - [`translator`]: the seam to the translation ([`translator::Istio`] in the binary; a
//!   test may plug its own through [`Bound::serve_with`]);
//! - [`session`]: one stream's state as data (keys, ACK/NACK, what changed);
//! - [`changes`]: change marks and the debounce;
//! - [`slices`]: `discovery.k8s.io/v1beta1` EndpointSlices as `v1`;
//! - [`discovery`]: which version of a group serves a kind;
//! - [`watch`]: the reflectors and [`crate::translate::Objects`];
//! - [`diagnostics`]: bad objects → log once, count, Kubernetes Event;
//! - [`engine`]: the debounced build loop, publishing snapshots;
//! - [`proxies`]: the connected streams (for the gauge and `/debug/proxies`);
//! - [`stream`]: one config stream;
//! - [`grpc`]: the hand-written gRPC service routing [`mesh_config::wire::STREAM_PATH`];
//! - [`http`]: `/metrics`, `/readyz`, `/healthz`, `/debug/...`.

pub mod changes;
pub mod diagnostics;
pub mod discovery;
pub mod engine;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod proxies;
pub mod session;
pub mod slices;
pub mod stream;
pub mod translator;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kube::Client;
use tokio::net::TcpListener;
use tokio::sync::watch as tokio_watch;

use crate::serve::changes::Changes;
use crate::serve::diagnostics::Reporter;
use crate::serve::engine::Engine;
use crate::serve::metrics::Metrics;
use crate::serve::proxies::Proxies;
use crate::serve::translator::{Istio, Translator};
use crate::serve::watch::Watchers;
use crate::translate::MeshSettings;

/// How long streams and HTTP connections get to close on shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// HTTP/2 pings on the config stream, so a vanished proxy's stream ends.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// Everything `serve` needs besides the API client.
#[derive(Debug, Clone)]
pub struct Config {
    pub plaintext_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub debounce: Duration,
    /// How often `networking.istio.io` is asked which versions it serves.
    pub crd_interval: Duration,
    pub settings: MeshSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("config stream server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("monitoring server: {0}")]
    Http(std::io::Error),
    #[error("a server task failed: {0}")]
    Task(String),
}

/// The listeners, bound (so a `:0` port is known before serving).
pub struct Bound {
    config: Config,
    plaintext: TcpListener,
    metrics: TcpListener,
    pub plaintext_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
}

/// The listen queue of the config stream and metrics listeners.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), ServeError> {
    let err = |source| ServeError::Bind { what, addr, source };
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    // Every proxy of a node (or a cluster, after a restart) dials at once: tokio's
    // default backlog of 128 made a burst of 1,000 wait for the kernel's 1 s SYN retry
    // (bench/control).
    let l = socket.listen(LISTEN_BACKLOG).map_err(err)?;
    let local = l.local_addr().map_err(err)?;
    Ok((l, local))
}

impl Bound {
    pub async fn bind(config: Config) -> Result<Bound, ServeError> {
        let (plaintext, plaintext_addr) =
            bind("plaintext config stream", config.plaintext_addr).await?;
        let (metrics, metrics_addr) = bind("metrics", config.metrics_addr).await?;
        Ok(Bound {
            config,
            plaintext,
            metrics,
            plaintext_addr,
            metrics_addr,
        })
    }

    /// Serves with the real translation until `shutdown` resolves.
    pub async fn serve(
        self,
        client: Client,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        self.serve_with(client, Arc::new(Istio), shutdown).await
    }

    /// Serves with `translator` until `shutdown` resolves.
    pub async fn serve_with(
        self,
        client: Client,
        translator: Arc<dyn Translator>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let Bound {
            config,
            plaintext,
            metrics: metrics_listener,
            plaintext_addr,
            metrics_addr,
        } = self;
        tracing::info!(
            "listening plaintext={plaintext_addr} metrics={metrics_addr} (TLS on 15012 comes with the CA)"
        );
        let metrics = Arc::new(Metrics::default());
        let proxies = Proxies::new(metrics.clone());
        let (snap_tx, snap_rx) = tokio_watch::channel(None);
        let (stop_tx, stop_rx) = tokio_watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };

        let http_state = Arc::new(http::HttpState {
            metrics: metrics.clone(),
            proxies: proxies.clone(),
            snapshots: snap_rx.clone(),
            watchers: OnceLock::new(),
        });
        let http_server = axum::serve(metrics_listener, http::router(http_state.clone()))
            .with_graceful_shutdown(stopped());
        let mut http_task =
            tokio::spawn(async move { http_server.await.map_err(ServeError::Http) });

        let ctx = Arc::new(stream::Context {
            snapshots: snap_rx,
            proxies,
            metrics: metrics.clone(),
        });
        let incoming = tonic::transport::server::TcpIncoming::from(plaintext)
            .with_nodelay(Some(true))
            .with_keepalive(Some(KEEPALIVE));
        let grpc_server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(KEEPALIVE))
            .serve_with_incoming_shutdown(grpc::ConfigService::new(ctx), incoming, stopped());
        let mut grpc_task =
            tokio::spawn(async move { grpc_server.await.map_err(ServeError::Grpc) });

        let changes = Arc::new(Changes::default());
        let reporter = Reporter::new(metrics.clone(), Some(client.clone()));
        let settings = config.settings.clone();
        let debounce = config.debounce;
        let crd_interval = config.crd_interval;
        // The watchers and the engine: on shutdown this task is dropped, and with it the
        // snapshot sender, which ends every stream (the proxies reconnect elsewhere).
        let mut engine_task = tokio::spawn(async move {
            let watchers = Arc::new(Watchers::start(client, changes.clone(), crd_interval).await);
            let _ = http_state.watchers.set(watchers.clone());
            Engine {
                watchers,
                changes,
                translator,
                settings,
                debounce,
                metrics,
                reporter,
            }
            .run(snap_tx)
            .await;
        });

        let result = tokio::select! {
            () = shutdown => Ok(()),
            r = &mut http_task => flatten(r),
            r = &mut grpc_task => flatten(r),
            r = &mut engine_task => Err(ServeError::Task(match r {
                Ok(()) => "the build loop ended".to_owned(),
                Err(e) => e.to_string(),
            })),
        };
        tracing::info!("shutting down");
        engine_task.abort();
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            let _ = (&mut grpc_task).await;
            let _ = (&mut http_task).await;
        })
        .await;
        grpc_task.abort();
        http_task.abort();
        result
    }
}

fn flatten(r: Result<Result<(), ServeError>, tokio::task::JoinError>) -> Result<(), ServeError> {
    r.unwrap_or_else(|e| Err(ServeError::Task(e.to_string())))
}
