//! `mesh-control serve`: watch the cluster, build snapshots, stream each proxy its keys.
//!
//! Modules, in dependency order (each uses only those before it):
//! - [`metrics`]: the Prometheus series;
//! - [`translator`]: the seam to the translation ([`translator::Istio`] in the binary; a
//!   test may plug its own through [`Bound::serve_with`]);
//! - [`session`]: one stream's state as data (keys, ACK/NACK, what changed);
//! - [`changes`]: change marks and the debounce;
//! - [`slices`]: `discovery.k8s.io/v1beta1` EndpointSlices as `v1`;
//! - [`trim`]: what the stores keep of each object (no managedFields, no
//!   last-applied-configuration, of a Pod only what the translation reads);
//! - [`discovery`]: which version of a group serves a kind;
//! - [`watch`]: the reflectors and [`crate::translate::Objects`];
//! - [`diagnostics`]: bad objects → log once, count, Kubernetes Event;
//! - [`engine`]: the debounced build loop, publishing snapshots;
//! - [`proxies`]: the connected streams (for the gauge and `/debug/proxies`);
//! - [`stream`]: one config stream;
//! - [`grpc`]: the hand-written gRPC service routing [`mesh_config::wire::STREAM_PATH`],
//!   and the TLS port's router (config stream + CA);
//! - [`http`]: `/metrics`, `/readyz`, `/healthz`, `/debug/...`.
//!
//! With a CA ([`CaConfig`], on unless `--no-ca`), [`Bound::serve_with`] first loads it
//! ([`crate::ca::bootstrap`]; a failure ends start-up with that error), then serves the
//! TLS port (config stream and `CreateCertificate`, [`crate::ca::tls`]), renews its own
//! serving certificate, and keeps ConfigMap `istio-ca-root-cert` in every namespace
//! ([`crate::ca::rootcert`]). The plaintext port never serves the CA. The TLS port asks
//! for (does not require) a client certificate of the mesh; its verified SPIFFE id is the
//! stream's [`crate::translate::ProxyNode::identity`], which decides whether a gateway
//! gets its Secrets' keys.

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
pub mod trim;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kube::Client;
use tokio::net::TcpListener;
use tokio::sync::watch as tokio_watch;

use crate::ca::authority::{DEFAULT_MAX_WORKLOAD_CERT_TTL, TtlPolicy, human};
use crate::ca::bootstrap::BootstrapError;
use crate::ca::grpc::{CaContext, CaService};
use crate::ca::tls::{SERVING_CERT_TTL, ServerNames, ServingCert, TlsError};
use crate::ca::tokens::{Authenticator, KubeTokenReviewer};
use crate::ca::{bootstrap, rootcert, tls};
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

/// The CA and the TLS port ([`Bound::bind_with`]; `--no-ca` leaves them out).
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// The TLS port (`--addr`).
    pub addr: SocketAddr,
    pub trust_domain: String,
    /// Where Secrets `cacerts` / `istio-ca-secret` are (`--ca-namespace`).
    pub namespace: String,
    pub workload_cert_ttl: Duration,
    pub max_workload_cert_ttl: Duration,
    /// `--tls-san`: more names for the TLS port's certificate.
    pub tls_sans: Vec<String>,
    /// Lifetime of mesh-control's serving certificate, renewed at half-life (24 h; tests
    /// shorten it).
    pub serving_cert_ttl: Duration,
    /// Where ConfigMap `istio-ca-root-cert` is kept: every namespace with
    /// `Some(Options::default())`; tests on a shared API server narrow it to their own
    /// namespaces; `None`: nowhere.
    pub root_cert: Option<rootcert::Options>,
}

impl CaConfig {
    /// The defaults of `mesh-control serve` for a CA in `namespace`.
    pub fn new(namespace: impl Into<String>) -> CaConfig {
        CaConfig {
            addr: SocketAddr::from(([0, 0, 0, 0], mesh_common::CONTROL_PLANE_TLS_PORT)),
            trust_domain: mesh_common::identity::DEFAULT_TRUST_DOMAIN.to_owned(),
            namespace: namespace.into(),
            workload_cert_ttl: Duration::from_secs(mesh_common::identity::DEFAULT_CERT_TTL_SECS),
            max_workload_cert_ttl: DEFAULT_MAX_WORKLOAD_CERT_TTL,
            tls_sans: Vec::new(),
            serving_cert_ttl: SERVING_CERT_TTL,
            root_cert: Some(rootcert::Options::default()),
        }
    }

    fn validate(&self) -> Result<(), ServeError> {
        let bad = |m: String| Err(ServeError::CaConfig(m));
        if self.trust_domain.is_empty() || self.trust_domain.contains(['/', ':', ' ']) {
            return bad(format!(
                "--trust-domain {:?} is not a trust domain (a DNS-like name such as cluster.local)",
                self.trust_domain
            ));
        }
        if self.namespace.is_empty() {
            return bad("--ca-namespace is empty".into());
        }
        if self.workload_cert_ttl.as_secs() == 0 {
            return bad("--workload-cert-ttl must be at least 1s".into());
        }
        if self.workload_cert_ttl > self.max_workload_cert_ttl {
            return bad(format!(
                "--workload-cert-ttl {} is longer than --max-workload-cert-ttl {}",
                human(self.workload_cert_ttl),
                human(self.max_workload_cert_ttl)
            ));
        }
        if self.serving_cert_ttl < Duration::from_secs(2) {
            return bad("the serving certificate's lifetime must be at least 2s".into());
        }
        Ok(())
    }
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
    #[error("CA: {0}")]
    CaConfig(String),
    #[error("CA: {0}")]
    Bootstrap(#[from] BootstrapError),
    #[error("TLS port: {0}")]
    Tls(#[from] TlsError),
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
    /// The TLS port and its CA, unless `--no-ca`.
    tls: Option<(TcpListener, CaConfig)>,
    authenticator: Option<Arc<dyn Authenticator>>,
    pub plaintext_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The TLS port's bound address (`None` without a CA).
    pub tls_addr: Option<SocketAddr>,
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
    /// The plaintext and metrics listeners, no CA (as `--no-ca`).
    pub async fn bind(config: Config) -> Result<Bound, ServeError> {
        Bound::bind_with(config, None).await
    }

    /// The listeners, and with `ca` the TLS port too (its settings checked here, the CA
    /// itself loaded when serving starts).
    pub async fn bind_with(config: Config, ca: Option<CaConfig>) -> Result<Bound, ServeError> {
        if let Some(ca) = &ca {
            ca.validate()?;
        }
        let (plaintext, plaintext_addr) =
            bind("plaintext config stream", config.plaintext_addr).await?;
        let (metrics, metrics_addr) = bind("metrics", config.metrics_addr).await?;
        let (tls, tls_addr) = match ca {
            Some(ca) => {
                let (l, addr) = bind("TLS config stream and CA", ca.addr).await?;
                (Some((l, ca)), Some(addr))
            }
            None => (None, None),
        };
        Ok(Bound {
            config,
            plaintext,
            metrics,
            tls,
            authenticator: None,
            plaintext_addr,
            metrics_addr,
            tls_addr,
        })
    }

    /// Authenticates CA callers with `a` instead of a TokenReview (tests).
    pub fn with_authenticator(mut self, a: Arc<dyn Authenticator>) -> Bound {
        self.authenticator = Some(a);
        self
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
            tls: tls_port,
            authenticator,
            plaintext_addr,
            metrics_addr,
            tls_addr,
        } = self;
        let metrics = Arc::new(Metrics::default());
        // The CA before anything is served: without it there is no TLS port, and
        // start-up fails with why.
        let ca = match tls_port {
            Some((listener, ca)) => {
                let authenticator = authenticator
                    .unwrap_or_else(|| Arc::new(KubeTokenReviewer::new(client.clone())));
                Some(start_ca(&client, listener, ca, authenticator, metrics.clone()).await?)
            }
            None => None,
        };
        match tls_addr {
            Some(tls) => tracing::info!(
                "listening plaintext={plaintext_addr} metrics={metrics_addr} tls={tls}"
            ),
            None => tracing::info!(
                "listening plaintext={plaintext_addr} metrics={metrics_addr} (no CA, no TLS port: --no-ca)"
            ),
        }
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
            .serve_with_incoming_shutdown(
                grpc::ConfigService::new(ctx.clone()),
                incoming,
                stopped(),
            );
        let mut grpc_task =
            tokio::spawn(async move { grpc_server.await.map_err(ServeError::Grpc) });

        // The TLS port: the same config stream, and the CA, on one server.
        let mut side_tasks = Vec::new();
        let mut tls_task = match ca {
            Some(ca) => {
                let services = grpc::TlsServices {
                    config: grpc::ConfigService::new(ctx.clone()),
                    ca: CaService::new(ca.context),
                };
                let server = tonic::transport::Server::builder()
                    .http2_keepalive_interval(Some(KEEPALIVE))
                    .serve_with_incoming_shutdown(services, ca.incoming, stopped());
                side_tasks.push(tokio::spawn(tls::renew_loop(ca.serving)));
                if let Some(options) = ca.root_cert {
                    side_tasks.push(tokio::spawn(rootcert::publish_with(
                        client.clone(),
                        ca.root_pem,
                        options,
                    )));
                }
                Some(tokio::spawn(async move {
                    server.await.map_err(ServeError::Grpc)
                }))
            }
            None => None,
        };

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

        // Which task ended first: its handle is consumed and must not be awaited again
        // (tokio panics on a JoinHandle polled after completion).
        #[derive(PartialEq)]
        enum First {
            Shutdown,
            Http,
            Grpc,
            Tls,
            Engine,
        }
        let (result, first) = tokio::select! {
            () = shutdown => (Ok(()), First::Shutdown),
            r = &mut http_task => (flatten(r), First::Http),
            r = &mut grpc_task => (flatten(r), First::Grpc),
            r = async {
                match tls_task.as_mut() {
                    Some(t) => t.await,
                    None => std::future::pending().await,
                }
            } => (flatten(r), First::Tls),
            r = &mut engine_task => (Err(ServeError::Task(match r {
                Ok(()) => "the build loop ended".to_owned(),
                Err(e) => e.to_string(),
            })), First::Engine),
        };
        tracing::info!("shutting down");
        if first != First::Engine {
            engine_task.abort();
        }
        for t in &side_tasks {
            t.abort();
        }
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
            if first != First::Grpc {
                let _ = (&mut grpc_task).await;
            }
            if first != First::Http {
                let _ = (&mut http_task).await;
            }
            if let Some(t) = tls_task.as_mut().filter(|_| first != First::Tls) {
                let _ = t.await;
            }
        })
        .await;
        grpc_task.abort();
        http_task.abort();
        if let Some(t) = &tls_task {
            t.abort();
        }
        result
    }
}

/// A loaded CA, ready to serve.
struct RunningCa {
    context: Arc<CaContext>,
    serving: Arc<ServingCert>,
    incoming: tokio_stream::wrappers::ReceiverStream<Result<tls::TlsConn, std::io::Error>>,
    root_pem: String,
    root_cert: Option<rootcert::Options>,
}

async fn start_ca(
    client: &Client,
    listener: TcpListener,
    ca: CaConfig,
    authenticator: Arc<dyn Authenticator>,
    metrics: Arc<Metrics>,
) -> Result<RunningCa, ServeError> {
    let (authority, source) = bootstrap::bootstrap(
        client.clone(),
        &ca.namespace,
        &ca.trust_domain,
        std::time::SystemTime::now(),
    )
    .await?;
    let authority = Arc::new(authority);
    let names = ServerNames::new(&ca.namespace, &ca.tls_sans);
    let serving = ServingCert::new(authority.clone(), names.clone(), ca.serving_cert_ttl)?;
    let config = tls::server_config(serving.clone(), authority.root_pem())?;
    tracing::info!(
        ?source,
        trust_domain = %ca.trust_domain,
        workload_cert_ttl = %human(ca.workload_cert_ttl),
        max_workload_cert_ttl = %human(ca.max_workload_cert_ttl),
        serving_names = ?names.dns,
        serving_ips = ?names.ips,
        "CA ready"
    );
    let root_pem = authority.root_pem().to_owned();
    Ok(RunningCa {
        context: Arc::new(CaContext {
            authority,
            authenticator,
            trust_domain: ca.trust_domain,
            ttl: TtlPolicy {
                default: ca.workload_cert_ttl,
                max: ca.max_workload_cert_ttl,
            },
            metrics,
        }),
        serving,
        incoming: tls::incoming(listener, config),
        root_pem,
        root_cert: ca.root_cert,
    })
}

fn flatten(r: Result<Result<(), ServeError>, tokio::task::JoinError>) -> Result<(), ServeError> {
    r.unwrap_or_else(|e| Err(ServeError::Task(e.to_string())))
}
