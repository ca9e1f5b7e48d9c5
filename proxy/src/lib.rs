//! mesh-proxy: the transparent L4 sidecar.
//!
//! Connections redirected by the pod's nat rules land on the outbound (15001) or
//! inbound (15006) listener ([`listener`]); each gets a [`record::ConnRecord`] and is
//! handled by [`flow`], split by [`direction::Direction`] first and by protocol second:
//! the flow reads where the connection was really going ([`orig_dst`]), refuses loops,
//! connects there, and hands both sockets to the copy engine ([`copy`]: generic over
//! streams, `splice(2)` for plain TCP). The record counts the connection in
//! [`metrics`] and writes its [`access_log`] line, once; [`admin`] serves readiness,
//! the drain and the metrics. With `--root-cert` the proxy has a workload identity
//! ([`identity`]): a certificate from the CA, kept current, and the rustls configs of
//! mTLS. [`Proxy`] ties the pieces together, with one single-threaded event loop per
//! [`workers`] thread; `main.rs` only parses flags
//! ([`cli`] into a [`config::Config`]), starts [`logging`] and the first runtime, and
//! waits for signals.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod addrs;
pub mod admin;
pub mod authz;
pub mod cli;
pub mod config;
pub mod control;
pub mod copy;
pub mod debug;
pub mod direction;
pub mod dns;
pub mod flow;
pub mod gateway;
pub mod http;
pub mod identity;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod orig_dst;
pub mod record;
pub mod rlimit;
pub mod wait;
pub mod workers;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::access_log::AccessLog;
use crate::addrs::ListenAddr;
use crate::admin::{AdminState, Endpoint};
use crate::config::Config;
use crate::direction::Direction;
use crate::flow::Shared;
use crate::listener::ConnTracker;
use crate::metrics::Metrics;
use crate::orig_dst::OriginalDst;
use crate::workers::Worker;

/// Starting the proxy failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the DNS proxy: {0}")]
    Dns(#[source] dns::DnsError),
    #[error("cannot start worker thread {index}: {source}")]
    Worker {
        index: usize,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up mTLS: {0}")]
    Tls(String),
}

/// The addresses the proxy really listens on (ports resolved when 0 was asked for).
#[derive(Debug, Clone)]
pub struct BoundAddrs {
    pub outbound: Vec<SocketAddr>,
    pub inbound: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub debug: SocketAddr,
    /// The DNS proxy's addresses (UDP and TCP each), when `--dns-capture` is on.
    pub dns: Vec<SocketAddr>,
}

/// Starts the drain from anywhere (a signal handler, a test).
#[derive(Debug, Clone)]
pub struct DrainTrigger {
    drain: watch::Sender<bool>,
    admin: Arc<AdminState>,
}

impl DrainTrigger {
    /// Drains now: the listeners close, open connections get `--drain-timeout`.
    pub fn drain(&self) {
        self.drain.send_replace(true);
    }

    /// The pod is being deleted (SIGTERM). Readiness turns 503 at once, but the capture
    /// listeners keep accepting for `delay`: the endpoints controller and every node's
    /// kube-proxy need a moment to stop sending new connections here, and a connection
    /// that arrives meanwhile must be served, not reset (as Istio's sidecar keeps serving
    /// for its termination drain duration). Then drains, or sooner if a drain was asked
    /// for meanwhile (`/quitquitquit`).
    pub async fn terminate(&self, delay: Duration) {
        self.admin.terminating.store(true, Ordering::Release);
        let mut drained = self.drain.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = drained.wait_for(|d| *d) => {}
        }
        self.drain();
    }

    /// Whether [`DrainTrigger::terminate`] has begun (readiness says 503).
    pub fn is_terminating(&self) -> bool {
        self.admin.terminating.load(Ordering::Acquire)
    }
}

/// How the drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections still open when `--drain-timeout` ran out (closed by exiting).
    pub cut: usize,
}

/// A proxy with every listener bound, not yet serving.
#[derive(Debug)]
pub struct Proxy {
    shared: Arc<Shared>,
    admin: Arc<AdminState>,
    capture: Vec<(TcpListener, Direction)>,
    admin_listener: TcpListener,
    metrics_listener: TcpListener,
    debug_listener: TcpListener,
    /// The DNS proxy (`--dns-capture`), bound.
    dns: Option<dns::DnsServer>,
    /// Keys connections want, for the config client (with a control plane).
    wanted: Option<tokio::sync::mpsc::UnboundedReceiver<mesh_config::Key>>,
    lb: Arc<http::LbStates>,
    addrs: BoundAddrs,
    tracker: Arc<ConnTracker>,
    /// The other event-loop threads (`--worker-threads` - 1), bound, not accepting yet.
    workers: Vec<Worker>,
    /// Tells the workers that the proxy no longer waits for their connections.
    stop: watch::Sender<bool>,
    /// The workload identity (`--root-cert`), not yet fetching.
    identity: Option<Arc<identity::IdentityStore>>,
}

fn bind_one(addr: SocketAddr, what: &'static str) -> Result<TcpListener, ProxyError> {
    listener::bind(addr).map_err(|source| ProxyError::Bind { addr, what, source })
}

impl Proxy {
    /// Binds every listener (one set per worker thread) and starts the workers' threads;
    /// nothing is accepted until [`Proxy::run`]. Access-log lines (`--access-log`) go
    /// to stdout.
    pub async fn bind(config: Config, orig_dst: Arc<dyn OriginalDst>) -> Result<Proxy, ProxyError> {
        let access_log = AccessLog::stdout(config.access_log);
        Proxy::bind_with_access_log(config, orig_dst, access_log).await
    }

    /// [`Proxy::bind`] with access-log lines going to `access_log`
    /// ([`AccessLog::capture`] keeps them in memory).
    pub async fn bind_with_access_log(
        config: Config,
        orig_dst: Arc<dyn OriginalDst>,
        access_log: AccessLog,
    ) -> Result<Proxy, ProxyError> {
        let threads = config.worker_threads.max(1);
        // Several threads share each capture port through SO_REUSEPORT.
        let shared_port = threads > 1;
        let mut capture = Vec::new();
        let mut addrs = BoundAddrs {
            outbound: Vec::new(),
            inbound: Vec::new(),
            admin: config.admin_addr,
            metrics: config.metrics_addr,
            debug: config.debug_addr,
            dns: Vec::new(),
        };
        for (direction, list, what) in [
            (Direction::Outbound, &config.outbound, "outbound"),
            (Direction::Inbound, &config.inbound, "inbound"),
        ] {
            for &addr in list {
                let l = match listener::bind_std(addr, shared_port).and_then(TcpListener::from_std)
                {
                    Ok(l) => l,
                    Err(e)
                        if addr.is_ipv6()
                            && !config.ipv6_required
                            && listener::ipv6_unavailable(&e) =>
                    {
                        warn!(%addr, error = %e, "IPv6 unavailable; listening on IPv4 only");
                        continue;
                    }
                    Err(source) => return Err(ProxyError::Bind { addr, what, source }),
                };
                let bound =
                    l.local_addr()
                        .map_err(|source| ProxyError::Bind { addr, what, source })?;
                match direction {
                    Direction::Outbound => addrs.outbound.push(bound),
                    Direction::Inbound => addrs.inbound.push(bound),
                }
                capture.push((l, direction));
            }
        }
        let admin_listener = bind_one(config.admin_addr, "admin")?;
        let metrics_listener = bind_one(config.metrics_addr, "metrics")?;
        addrs.admin = admin_listener.local_addr().unwrap_or(config.admin_addr);
        addrs.metrics = metrics_listener.local_addr().unwrap_or(config.metrics_addr);
        let debug_listener = bind_one(config.debug_addr, "debug")?;
        addrs.debug = debug_listener.local_addr().unwrap_or(config.debug_addr);

        let workload_identity = config
            .workload_identity
            .as_ref()
            .map(|w| identity::store(w, config.connect_timeout));
        let metrics = Arc::new(Metrics::new(config.identity.clone()));
        let http_metrics = Arc::new(http::HttpMetrics::new(&config.identity));
        let (drain_tx, drain_rx) = watch::channel(false);
        let (l7, wanted) = match &config.control_plane {
            None => (None, None),
            Some(_) => {
                let own = config.identity.pod_ip;
                // Pinned: the pod's own IP, and a gateway's own config.
                let pinned = own
                    .map(mesh_config::Key::Address)
                    .into_iter()
                    .chain(config.gateway.as_ref().map(|_| mesh_config::Key::Gateway));
                let (store, wanted) = control::Store::new(pinned);
                let resolver = Arc::new(control::StoreResolver {
                    store: store.clone(),
                    own_ip: own,
                    wait: control::LOOKUP_WAIT,
                });
                // What the proxy says of itself to Istio's peers: in the TCP exchange
                // frame (over mTLS) and the HTTP exchange headers.
                let meta = identity::exchange::NodeMetadata::of(
                    &config.identity,
                    config.pod_name.as_deref(),
                    workload_identity
                        .as_ref()
                        .map_or(mesh_common::identity::DEFAULT_TRUST_DOMAIN, |s| {
                            s.trust_domain()
                        }),
                );
                let meta = match config.gateway {
                    Some(_) => meta.router(),
                    None => meta,
                };
                // mTLS: with an identity, connections are terminated and originated
                // with the workload certificate (built once; it reads the store at each
                // handshake).
                let mesh_tls = match &workload_identity {
                    None => None,
                    Some(store) => Some(
                        identity::mesh::MeshTls::new(store.clone(), &meta)
                            .map_err(|e| ProxyError::Tls(e.to_string()))?,
                    ),
                };
                let dial = |inbound_passthrough| {
                    Arc::new(http::TcpConnector {
                        timeout: config.connect_timeout,
                        inbound_passthrough,
                        tls: mesh_tls.clone(),
                    })
                };
                let l7 = flow::http::L7 {
                    tls: mesh_tls.clone(),
                    store,
                    resolver,
                    metrics: http_metrics.clone(),
                    log: config.access_log.map(|_| http::stdout_sink()),
                    peer_headers: http::PeerMetadataHeaders::new(&meta),
                    outbound: dial(false),
                    inbound: dial(true),
                };
                (Some(l7), Some(wanted))
            }
        };
        let own_listeners = addrs
            .outbound
            .iter()
            .chain(&addrs.inbound)
            .map(|&a| ListenAddr(a))
            .collect();
        let shared = Arc::new(Shared {
            config,
            metrics: metrics.clone(),
            orig_dst,
            own_listeners,
            access_log,
            l7,
            drain: drain_rx,
        });
        let dns = if shared.config.dns.is_empty() {
            None
        } else {
            // The pod's own resolvers (kubelet's resolv.conf), for what is not a mesh name.
            let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            let dns_config = dns::DnsConfig::from_resolv_conf(&resolv, shared.config.dns.clone());
            let names = Arc::new(control::StoreNames {
                store: shared.l7.as_ref().map(|l| l.store.clone()),
                wait: control::LOOKUP_WAIT,
            });
            let server = dns::DnsServer::bind(dns_config, names)
                .await
                .map_err(ProxyError::Dns)?;
            addrs.dns = server.local_addrs().to_vec();
            Some(server)
        };
        let lb: Arc<http::LbStates> = Arc::default();
        let admin = Arc::new(AdminState {
            ready: Default::default(),
            metrics,
            http: http_metrics,
            lb: lb.clone(),
            drain: drain_tx,
            terminating: Default::default(),
            identity: workload_identity.clone(),
            dns: dns.as_ref().map(dns::DnsServer::metrics),
        });
        let tracker = Arc::new(ConnTracker::default());
        let stop = watch::channel(false).0;
        let mut workers = Vec::with_capacity(threads - 1);
        for index in 1..threads {
            let mut listeners = Vec::with_capacity(capture.len());
            for (l, direction) in &capture {
                let addr = l
                    .local_addr()
                    .map_err(|source| ProxyError::Worker { index, source })?;
                let l = listener::bind_std(addr, true).map_err(|source| ProxyError::Bind {
                    addr,
                    what: "worker thread",
                    source,
                })?;
                listeners.push((l, *direction));
            }
            let worker = Worker::spawn(
                index,
                listeners,
                shared.clone(),
                tracker.clone(),
                admin.drain.subscribe(),
                stop.subscribe(),
            )
            .await
            .map_err(|source| ProxyError::Worker { index, source })?;
            workers.push(worker);
        }
        Ok(Proxy {
            shared,
            admin,
            capture,
            admin_listener,
            metrics_listener,
            debug_listener,
            dns,
            wanted,
            lb,
            addrs,
            tracker,
            workers,
            stop,
            identity: workload_identity,
        })
    }

    pub fn addrs(&self) -> &BoundAddrs {
        &self.addrs
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// The workload identity (`--root-cert`): its certificate once issued, and the source
    /// of the mTLS configs ([`identity::tls`]).
    pub fn identity(&self) -> Option<Arc<identity::IdentityStore>> {
        self.identity.clone()
    }

    pub fn drain_trigger(&self) -> DrainTrigger {
        DrainTrigger {
            drain: self.admin.drain.clone(),
            admin: self.admin.clone(),
        }
    }

    /// Serves until a drain is triggered (signal, `/quitquitquit`, [`DrainTrigger`]),
    /// then stops accepting and waits up to `--drain-timeout` for open connections.
    pub async fn run(self) -> DrainReport {
        let Proxy {
            shared,
            admin,
            capture,
            admin_listener,
            metrics_listener,
            debug_listener,
            dns,
            wanted,
            lb,
            addrs,
            tracker,
            workers,
            stop,
            identity,
        } = self;
        let store = shared.l7.as_ref().map(|l| l.store.clone());
        let debug_task = tokio::spawn(debug::serve(
            debug_listener,
            store.clone(),
            identity.clone(),
        ));
        // Ready needs a certificate too (admin.rs); the first request goes out now.
        let identity_task = identity.clone().map(|s| tokio::spawn(s.run()));
        // DNS keeps answering through the drain (a draining app still resolves names);
        // it stops when the proxy exits.
        let (dns_stop, dns_stopped) = watch::channel(false);
        let dns_task = dns.map(|d| tokio::spawn(d.run(dns_stopped)));
        let client_task = match (store, wanted, &shared.config.control_plane) {
            (Some(store), Some(wanted), Some(address)) => {
                let settings = control::ClientSettings {
                    address: address.clone(),
                    node: mesh_config::wire::Node {
                        pod_name: shared.config.pod_name.clone().unwrap_or_default(),
                        namespace: shared.config.identity.namespace.clone(),
                        ip: shared
                            .config
                            .identity
                            .pod_ip
                            .map(|ip| ip.to_string())
                            .unwrap_or_default(),
                        proxy_version: env!("CARGO_PKG_VERSION").to_owned(),
                    },
                    idle: control::IDLE_KEY,
                    connect_timeout: shared.config.connect_timeout,
                    lb,
                    tls: control_plane_tls(&shared.config, identity.as_ref()),
                };
                let ready = admin.clone();
                // Ready at the first config, or when the wait for it runs out.
                let waited = admin.clone();
                let wait = shared.config.config_wait;
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    if !waited.ready.swap(true, Ordering::AcqRel) {
                        warn!(
                            ?wait,
                            "no config from mesh-control yet; ready anyway, unknown destinations pass through"
                        );
                    }
                });
                // A gateway's first stream must present its certificate: only then does
                // mesh-control send the keys of its TLS servers.
                let first_cert = identity.clone().filter(|_| shared.config.gateway.is_some());
                Some(tokio::spawn(async move {
                    if let Some(id) = first_cert {
                        id.wait_for_cert().await;
                    }
                    control::run(store, settings, wanted, move || {
                        ready.ready.store(true, Ordering::Release);
                        info!("first config applied; ready");
                    })
                    .await;
                }))
            }
            _ => None,
        };
        let admin_task = tokio::spawn(admin::serve(admin_listener, Endpoint::Admin, admin.clone()));
        let metrics_task = tokio::spawn(admin::serve(
            metrics_listener,
            Endpoint::Metrics,
            admin.clone(),
        ));
        let mut loops = Vec::new();
        for (l, direction) in capture {
            loops.push(tokio::spawn(listener::accept_loop(
                l,
                direction,
                shared.clone(),
                tracker.clone(),
                admin.drain.subscribe(),
            )));
        }
        if shared.config.gateway.is_some() {
            loops.push(tokio::spawn(listener::gateway_listeners(
                shared.clone(),
                tracker.clone(),
                admin.drain.subscribe(),
            )));
        }
        let threads: Vec<_> = workers.into_iter().map(Worker::start).collect();
        if client_task.is_none() {
            admin.ready.store(true, Ordering::Release);
        }
        info!(
            threads = threads.len() + 1,
            outbound = ?addrs.outbound,
            inbound = ?addrs.inbound,
            admin = %addrs.admin,
            metrics = %addrs.metrics,
            copy_mode = ?shared.config.copy_mode,
            "ready"
        );
        for l in loops {
            let _ = l.await;
        }
        let open = tracker.active();
        info!(open, timeout = ?shared.config.drain_timeout, "draining: listeners closed");
        let cut = match tokio::time::timeout(shared.config.drain_timeout, tracker.wait_idle()).await
        {
            Ok(()) => 0,
            Err(_) => tracker.active(),
        };
        if cut > 0 {
            warn!(cut, "drain timeout reached; closing remaining connections");
        } else {
            info!("drained");
        }
        admin_task.abort();
        metrics_task.abort();
        debug_task.abort();
        dns_stop.send_replace(true);
        if let Some(t) = dns_task {
            t.abort();
        }
        if let Some(t) = client_task {
            t.abort();
        }
        if let Some(t) = identity_task {
            t.abort();
        }
        stop.send_replace(true);
        for t in threads {
            // The workers end as soon as they see `stop`.
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        DrainReport { cut }
    }
}

/// TLS to mesh-control with `--root-cert`: verified against the root for the control
/// plane's name, offering the workload certificate once held (if mesh-control asks).
fn control_plane_tls(
    config: &Config,
    identity: Option<&Arc<identity::IdentityStore>>,
) -> Option<identity::channel::TlsSettings> {
    let w = config.workload_identity.as_ref()?;
    // The configuration always names the server (cli.rs); a hand-made one may not: the
    // host dialled then, and never a downgrade to plaintext (0.0.0.0 verifies nothing).
    let server_name = w.control_plane_server_name.clone().unwrap_or_else(|| {
        let host = config
            .control_plane
            .as_deref()
            .map(identity::channel::host_of)
            .unwrap_or_default();
        rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap_or(
            rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into()),
        )
    });
    Some(identity::channel::TlsSettings {
        root_cert: w.root_cert.clone(),
        server_name,
        client_cert: identity.map(identity::tls::client_cert_resolver),
    })
}

#[cfg(test)]
mod proxy_tests;
