//! Inbound: a peer dialled the pod and the nat PREROUTING rules sent it here; the proxy
//! dials the app from the passthrough source (127.0.0.6 or ::6), which the OUTPUT chain
//! lets through, so the connection is not captured a second time. AuthorizationPolicy
//! is checked here for TCP (per request in the HTTP engine); mTLS termination lands here.

use std::time::Instant;

use tokio::net::TcpStream;
use tracing::{debug, info};

use super::http::{Plan, SniffOutcome, plan_inbound, sniff, tcp_inbound_peer};
use super::{Shared, connect, http, original_dst, refuse, reset, tcp};
use crate::addrs::{ListenAddr, OrigDstAddr};
use crate::authz::{Attributes, Decision};
use crate::metrics::RefusalReason;
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
    let source = Some(mesh_common::inbound_passthrough_for(orig.ip()));
    let connect_started = Instant::now();
    let mut dialled = None;
    if let Some(l7) = &shared.l7 {
        let plan = plan_inbound(l7, orig).await;
        if plan == Plan::Sniff {
            match Box::pin(sniff(shared, &client, orig, source)).await {
                SniffOutcome::Http => {}
                SniffOutcome::Opaque(r) => dialled = Some(r),
            }
        }
        if plan == Plan::Http || (plan == Plan::Sniff && dialled.is_none()) {
            record.to_http(orig);
            // Boxed, as outbound.
            return Box::pin(http::serve(shared, l7, client, record.client(), orig, true)).await;
        }
        record.set_peer(tcp_inbound_peer(l7, record.client(), orig).await);
        if let Some(denied) = tcp_denied(l7, record, orig).await {
            // As Istio's sidecars: the connection is closed (FIN), nothing reaches the app.
            info!(dst = %orig, client = %record.client(), decision = ?denied, "connection denied by AuthorizationPolicy");
            record.refuse(RefusalReason::Denied, Some(orig));
            drop(dialled);
            drop(client);
            return;
        }
    }
    let dialled = match dialled {
        Some(r) => r,
        None => connect::connect(orig, source, shared.config.connect_timeout).await,
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
    debug!(dst = %orig, "connected to the app");
    let result = tcp::forward(shared, &mut client, &mut upstream, &meters).await;
    record.closed(result.err().as_ref());
}

/// The AuthorizationPolicies of this pod for a TCP connection; `Some`: denied.
async fn tcp_denied(l7: &http::L7, record: &ConnRecord<'_>, orig: OrigDstAddr) -> Option<Decision> {
    use crate::http::Resolver as _;
    let w = l7.resolver.own_workload().await?;
    if w.authorization.is_empty() {
        return None;
    }
    let attrs = Attributes {
        principal: None,
        source_ip: record.client().ip(),
        destination_ip: orig.ip(),
        destination_port: orig.port(),
        sni: None,
        http: None,
    };
    let d = crate::authz::evaluate(&w.authorization, &attrs);
    (!d.allowed()).then_some(d)
}
