//! Outbound: the pod's own app dialled out and the nat OUTPUT rules sent it here; the
//! proxy dials the original destination directly (its own traffic, as uid 1337,
//! bypasses the capture). For a Service port the proxy picks the endpoint itself, and
//! originates mTLS to it when the cluster says so (auto mTLS, or a DestinationRule's
//! `ISTIO_MUTUAL`); TCP over mTLS is copied by the stream loop, plaintext keeps the
//! splice path.

use std::time::Instant;

use tokio::net::TcpStream;
use tracing::{debug, info};

use super::http::{Plan, SniffOutcome, plan_outbound, sniff, tcp_upstream};
use super::{Shared, connect, http, original_dst, refuse, reset, tcp};
use crate::addrs::ListenAddr;
use crate::identity::mesh::Alpn;
use crate::record::ConnRecord;

pub(super) async fn handle(
    shared: &Shared,
    mut client: TcpStream,
    record: &mut ConnRecord<'_>,
    listen: ListenAddr,
) {
    let orig = match original_dst(shared, &client, listen) {
        Ok(orig) => orig,
        Err(refusal) => return refuse(record, client, refusal),
    };
    let connect_started = Instant::now();
    let mut dialled = None;
    // Where an L4 connection goes: the original destination, or for a Service port the
    // endpoint the proxy picks.
    let mut dial = orig;
    let mut connect_timeout = shared.config.connect_timeout;
    let mut idle_timeout = None;
    // The connection's slot under its cluster's `tcp.maxConnections`, held while open.
    let mut _slot = None;
    // mTLS to the endpoint, when the proxy has an identity and the cluster asks for it.
    let mut tls = None;
    if let Some(l7) = &shared.l7 {
        let (plan, svc) = plan_outbound(l7, orig).await;
        // For a Service port the endpoint is picked first, so that a sniffed connection
        // that is not HTTP goes where an L4 one would (and gets its mTLS).
        let up = match (&svc, plan) {
            (Some(svc), Plan::Sniff | Plan::Tcp) => Some(tcp_upstream(svc, orig)),
            _ => None,
        };
        if plan == Plan::Sniff {
            let target = up.as_ref().and_then(|u| u.endpoint).unwrap_or(orig);
            match Box::pin(sniff(shared, &client, target, None)).await {
                SniffOutcome::Http => {}
                SniffOutcome::Opaque(r) => dialled = Some(r),
            }
        }
        if plan == Plan::Http || (plan == Plan::Sniff && dialled.is_none()) {
            record.to_http(orig);
            // Boxed: an L4 connection's task must not carry the HTTP path's (much larger)
            // state inline.
            return Box::pin(http::serve(
                shared,
                l7,
                client,
                record.client(),
                orig,
                false,
                None,
            ))
            .await;
        }
        if let Some(up) = up {
            record.set_peer(up.peer);
            match up.slot {
                Ok(s) => _slot = s,
                Err(()) => {
                    info!(dst = %orig, "the cluster's tcp.maxConnections is reached; resetting client");
                    record.overflowed(orig);
                    reset(client);
                    return;
                }
            }
            if let Some(t) = up.connect_timeout {
                connect_timeout = connect_timeout.min(t);
            }
            idle_timeout = up.idle_timeout;
            if let Some(e) = up.endpoint {
                dial = e;
            }
            match (&l7.tls, up.tls) {
                (Some(mesh), Some(target)) => tls = Some((mesh.clone(), target)),
                (None, Some(_)) => {
                    debug!(dst = %orig, "the endpoint takes mTLS but this proxy has no identity; plaintext")
                }
                _ => {}
            }
        }
    }
    let dialled = match dialled {
        Some(r) => r,
        None => connect::connect(dial, None, connect_timeout).await,
    };
    let mut upstream = match dialled {
        Ok(u) => u,
        Err(e) => {
            info!(dst = %orig, error = %e, "upstream connect failed; resetting client");
            record.connect_failed(orig, e.kind());
            reset(client);
            return;
        }
    };
    if let Some((mesh, target)) = tls {
        // Boxed: the TLS session and its copy must not sit inline in every connection's
        // task (most are plaintext).
        return Box::pin(forward_mtls(
            shared,
            client,
            upstream,
            record,
            orig,
            &mesh,
            &target,
            connect_started,
            idle_timeout,
        ))
        .await;
    }
    let meters = record.connected(orig, connect_started.elapsed(), || {
        upstream.local_addr().ok()
    });
    debug!(dst = %orig, "connected upstream");
    let result = match idle_timeout {
        Some(idle) => {
            Box::pin(tcp::forward_idle(
                shared,
                &mut client,
                &mut upstream,
                &meters,
                idle,
            ))
            .await
        }
        None => tcp::forward(shared, &mut client, &mut upstream, &meters).await,
    };
    record.closed(result.err().as_ref());
}

/// Originates mTLS on `upstream` and copies between it and `client` until both end.
#[allow(clippy::too_many_arguments)]
async fn forward_mtls(
    shared: &Shared,
    mut client: TcpStream,
    upstream: TcpStream,
    record: &mut ConnRecord<'_>,
    orig: crate::addrs::OrigDstAddr,
    mesh: &crate::identity::mesh::MeshTls,
    target: &crate::identity::mesh::TlsTarget,
    connect_started: Instant,
    idle_timeout: Option<std::time::Duration>,
) {
    let local = upstream.local_addr().ok();
    let mut stream = match mesh.connect(upstream, target, Alpn::Tcp).await {
        Ok(s) => s,
        Err(e) => {
            info!(dst = %orig, sni = %target.sni, error = %e, "mTLS handshake failed; resetting client");
            record.connect_failed(orig, crate::metrics::ConnectErrorKind::Other);
            reset(client);
            return;
        }
    };
    let server_id = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(crate::identity::tls::peer_identity);
    record.secure_peer(server_id.as_deref(), mesh.spiffe_id());
    let meters = record.connected(orig, connect_started.elapsed(), || local);
    debug!(dst = %orig, peer = server_id.as_deref(), "connected upstream over mTLS");
    let result = match idle_timeout {
        Some(idle) => tcp::forward_idle(shared, &mut client, &mut stream, &meters, idle).await,
        None => tcp::forward(shared, &mut client, &mut stream, &meters).await,
    };
    record.closed(result.err().as_ref());
}
