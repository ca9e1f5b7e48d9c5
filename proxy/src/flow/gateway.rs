//! An ingress gateway's connection (`--role gateway`): accepted on a port of the
//! Gateway config (`listener::gateway_listeners` binds them), not captured, so there is
//! no original destination: the port says which listener it is. The gateway reports as
//! the source (`reporter="source"`), as Istio's gateways do, and its connections count
//! as outbound.
//!
//! A listener with TLS servers reads the first bytes: a ClientHello picks the server by
//! its SNI (`CompiledListener::tls_server`): `SIMPLE` terminates TLS with the server's
//! certificate and serves HTTP with its virtual hosts; `PASSTHROUGH` forwards the
//! bytes, untouched, to the endpoint its `tls[]` route picks (over mTLS when the
//! endpoint's pod has a sidecar). Anything else is plaintext HTTP for the port's HTTP
//! servers, or closed when there are none. A TCP server's port reads nothing: each
//! connection goes to the endpoint its `tcp[]` route picks, as a passthrough does. Each
//! request's virtual host is looked up in the newest config (`StoreRoutes`), so a
//! change applies to kept-alive connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_config::Key;
use tokio::net::TcpStream;
use tracing::{debug, info};

use super::detect::{HELLO_MAX, Hello, client_hello};
use super::http::L7;
use super::{Shared, connect, refuse, reset, tcp};
use crate::addrs::{ListenAddr, OrigDstAddr};
use crate::control::{Answer, Store};
use crate::gateway::{CompiledGateway, CompiledTlsMode};
use crate::http::{ConnCtx, GatewayRoutes, VirtualHosts};
use crate::identity::mesh::Alpn;
use crate::metrics::{RefusalReason, TcpPeer};
use crate::record::ConnRecord;

/// How long a client may take to send its ClientHello, and to finish the handshake.
const HELLO_WAIT: Duration = Duration::from_secs(10);

/// A gateway connection's virtual hosts, from the store at each request: the
/// listener's plaintext table, or the TLS server's (by name).
struct StoreRoutes {
    store: Arc<Store>,
    port: u16,
    server: Option<String>,
}

impl GatewayRoutes for StoreRoutes {
    fn hosts(&self) -> Option<Arc<VirtualHosts>> {
        let gw = current(&self.store)?;
        let l = gw.listener(self.port)?;
        match &self.server {
            None => l.http.clone(),
            Some(name) => l
                .tls
                .iter()
                .find(|s| &s.name == name)
                .and_then(|s| match &s.mode {
                    CompiledTlsMode::Simple { hosts, .. } => Some(hosts.clone()),
                    CompiledTlsMode::Passthrough { .. } => None,
                }),
        }
    }
}

/// The gateway config held now.
pub fn current(store: &Store) -> Option<Arc<CompiledGateway>> {
    match store.get(&Key::Gateway) {
        Some(Answer::Gateway(g)) => Some(g),
        _ => None,
    }
}

pub(super) async fn handle(
    shared: &Shared,
    client: TcpStream,
    record: &mut ConnRecord<'_>,
    listen: ListenAddr,
) {
    let local = OrigDstAddr(client.local_addr().unwrap_or(listen.addr()));
    let Some(l7) = &shared.l7 else {
        return refuse(record, client, (RefusalReason::NoServer, Some(local)));
    };
    let Some(gw) = current(&l7.store) else {
        return refuse(record, client, (RefusalReason::NoServer, Some(local)));
    };
    let Some(listener) = gw.listener(listen.port()) else {
        debug!(
            port = listen.port(),
            "no Gateway server on this port any more; closing"
        );
        return refuse(record, client, (RefusalReason::NoServer, Some(local)));
    };
    if let Some(tcp) = &listener.tcp {
        // Opaque TCP: nothing to read first.
        return to_route(shared, l7, client, record, local, &tcp.route, &tcp.clusters).await;
    }
    if listener.tls.is_empty() {
        return serve_http(shared, l7, client, record, local, None, None).await;
    }
    let hello = match tokio::time::timeout(HELLO_WAIT, read_hello(&client)).await {
        Ok(Some(h)) => h,
        Ok(None) | Err(_) => {
            debug!(client = %record.client(), "no ClientHello or request; closing");
            return refuse(record, client, (RefusalReason::TlsHandshake, Some(local)));
        }
    };
    let sni = match hello {
        Hello::Tls { sni, .. } => sni,
        Hello::NotTls | Hello::Incomplete => {
            return if listener.http.is_some() {
                serve_http(shared, l7, client, record, local, None, None).await
            } else {
                debug!(client = %record.client(), "plaintext on a TLS-only Gateway port; closing");
                refuse(record, client, (RefusalReason::NoServer, Some(local)))
            };
        }
    };
    let Some(server) = listener.tls_server(sni.as_deref()) else {
        info!(client = %record.client(), sni = sni.as_deref(), port = listener.number, "no Gateway server for this SNI; closing");
        return refuse(record, client, (RefusalReason::NoServer, Some(local)));
    };
    match &server.mode {
        CompiledTlsMode::Simple {
            config, own_uris, ..
        } => {
            let config = match config {
                Ok(c) => c.clone(),
                Err(why) => {
                    // Per connection, so not a warning each time; the server's `why` is
                    // in /config_dump too.
                    info!(server = %server.name, sni = sni.as_deref(), %why, "cannot terminate TLS: no certificate; closing");
                    return refuse(record, client, (RefusalReason::TlsHandshake, Some(local)));
                }
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let stream = match tokio::time::timeout(HELLO_WAIT, acceptor.accept(client)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    info!(client = %record.client(), server = %server.name, error = %e, "TLS handshake failed");
                    record.refuse(RefusalReason::TlsHandshake, Some(local));
                    return;
                }
                Err(_) => {
                    info!(client = %record.client(), server = %server.name, "TLS handshake timed out");
                    record.refuse(RefusalReason::TlsHandshake, Some(local));
                    return;
                }
            };
            // MUTUAL, OPTIONAL_MUTUAL: the verified client certificate, for the app.
            let client_cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|leaf| Arc::from(crate::identity::xfcc::element(own_uris, leaf, true)));
            let name = server.name.clone();
            // Boxed, as the inbound side's: the connection's futures stay small.
            let stream = Box::new(stream);
            serve_http(shared, l7, stream, record, local, Some(name), client_cert).await
        }
        CompiledTlsMode::Passthrough { clusters, .. } => {
            let Some(route) = server.mode.tls_route(sni.as_deref()) else {
                info!(client = %record.client(), sni = sni.as_deref(), server = %server.name, "no tls route for this SNI; closing");
                return refuse(record, client, (RefusalReason::NoServer, Some(local)));
            };
            to_route(shared, l7, client, record, local, route, clusters).await;
        }
    }
}

/// An opaque connection (TLS passthrough, TCP server) to a cluster of `route` picked by
/// weight, then an endpoint of it; labelled with that endpoint's workload.
async fn to_route(
    shared: &Shared,
    l7: &L7,
    client: TcpStream,
    record: &mut ConnRecord<'_>,
    local: OrigDstAddr,
    route: &crate::gateway::CompiledTlsRoute,
    clusters: &crate::http::CompiledService,
) {
    let mut rng = fastrand::Rng::new();
    let cluster = route.pick(&mut rng).and_then(|c| clusters.cluster(c));
    let Some(cluster) = cluster else {
        return refuse(record, client, (RefusalReason::NoServer, Some(local)));
    };
    let Some(endpoint) = cluster.pick(&mut rng, &[]) else {
        info!(cluster = %cluster.name, "no healthy endpoint for an opaque gateway connection; closing");
        return refuse(record, client, (RefusalReason::NoServer, Some(local)));
    };
    record.set_peer(TcpPeer::new(endpoint.peer.clone(), cluster.labels.clone()));
    let tls = endpoint.mtls.then_some(cluster.tls.as_ref()).flatten();
    passthrough(shared, l7, client, record, OrigDstAddr(endpoint.addr), tls).await;
}

/// Peeks until the first bytes say whether they are a ClientHello; `None`: the client
/// closed first.
async fn read_hello(client: &TcpStream) -> Option<Hello> {
    let mut buf = vec![0u8; 1024];
    loop {
        let n = match client.peek(&mut buf).await {
            Ok(n) if n > 0 => n,
            _ => return None,
        };
        match client_hello(&buf[..n]) {
            Hello::Incomplete if n == buf.len() && buf.len() < HELLO_MAX => {
                buf.resize((buf.len() * 4).min(HELLO_MAX), 0);
            }
            // More bytes of the hello may come: look again shortly.
            Hello::Incomplete if n < buf.len() => {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            h => return Some(h),
        }
    }
}

/// Serves HTTP on `io` with the listener's (or the TLS server's) virtual hosts.
async fn serve_http<IO>(
    shared: &Shared,
    l7: &L7,
    io: IO,
    record: &mut ConnRecord<'_>,
    local: OrigDstAddr,
    server: Option<String>,
    client_cert: Option<Arc<str>>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    record.to_http(local);
    let routes = Arc::new(StoreRoutes {
        store: l7.store.clone(),
        port: local.port(),
        server,
    });
    let ctx = ConnCtx {
        engine: l7.engine(),
        resolver: l7.resolver.clone(),
        connector: l7.outbound.clone(),
        orig_dst: local.addr(),
        client: record.client().addr(),
        drain: Some(shared.drain.clone()),
        // Clients of a gateway come from outside the mesh: not a mesh identity, even
        // with a client certificate (which the app sees in x-forwarded-client-cert).
        peer_identity: None,
        client_cert,
    };
    if let Err(e) = Box::pin(crate::http::serve_gateway(io, ctx, routes)).await {
        debug!(error = %e, "gateway HTTP connection ended with an error");
    }
}

/// A TLS passthrough or a TCP server's connection: the client's bytes (a ClientHello
/// still unread) to `endpoint`, over mTLS when `tls` says so.
async fn passthrough(
    shared: &Shared,
    l7: &L7,
    mut client: TcpStream,
    record: &mut ConnRecord<'_>,
    endpoint: OrigDstAddr,
    tls: Option<&crate::identity::mesh::TlsTarget>,
) {
    let started = Instant::now();
    let mut upstream = match connect::connect(endpoint, None, shared.config.connect_timeout).await {
        Ok(u) => u,
        Err(e) => {
            info!(dst = %endpoint, error = %e, "passthrough connect failed; resetting client");
            record.connect_failed(endpoint, e.kind());
            reset(client);
            return;
        }
    };
    if let (Some(mesh), Some(target)) = (&l7.tls, tls) {
        let made = Box::pin(mesh.connect(upstream, target, Alpn::Tcp))
            .await
            .map(|s| (s, Vec::new()));
        return Box::pin(super::outbound::forward_mtls(
            shared,
            client,
            Box::new(made),
            record,
            endpoint,
            mesh,
            started,
            None,
        ))
        .await;
    }
    let meters = record.connected(endpoint, started.elapsed(), || upstream.local_addr().ok());
    let result = tcp::forward(shared, &mut client, &mut upstream, &meters).await;
    record.closed(result.err().as_ref());
}
