//! Outbound: the pod's own app dialled out and the nat OUTPUT rules sent it here; the
//! proxy dials the original destination directly (its own traffic, as uid 1337,
//! bypasses the capture). Routing, load balancing and mTLS origination land here.

use std::time::Instant;

use tokio::net::TcpStream;
use tracing::{debug, info};

use super::http::{Plan, SniffOutcome, plan_outbound, sniff, tcp_upstream};
use super::{Shared, connect, http, original_dst, refuse, reset, tcp};
use crate::addrs::ListenAddr;
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
    if let Some(l7) = &shared.l7 {
        let (plan, svc) = plan_outbound(l7, orig).await;
        if plan == Plan::Sniff {
            match Box::pin(sniff(shared, &client, orig, None)).await {
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
            ))
            .await;
        }
        if let Some(svc) = svc {
            if dialled.is_none() {
                let up = tcp_upstream(&svc, orig);
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
            } else {
                // Sniffed: already connected through the ClusterIP (kube-proxy chose
                // the pod), so only the Service is known.
                let s = svc.service();
                record.set_peer(crate::metrics::TcpPeer::new(
                    crate::direction::Direction::Outbound,
                    None,
                    Some((&s.host, &s.name, &s.namespace)),
                ));
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
