//! Inbound: a peer dialled the pod and the nat PREROUTING rules sent it here; the proxy
//! dials the app from the passthrough source (127.0.0.6 or ::6), which the OUTPUT chain
//! lets through, so the connection is not captured a second time.
//!
//! With a workload identity (mTLS), the client's first bytes say whether it speaks
//! Istio mTLS (a ClientHello offering `istio` or `istio-*`; `detect::client_hello`),
//! and the pod's PeerAuthentication mode for the port decides what is accepted:
//! `STRICT` closes anything else, `PERMISSIVE` takes both, `DISABLE` takes everything as
//! plaintext (an mTLS client then reaches the app as opaque bytes, as Envoy passes
//! through a filter chain without TLS). Other TLS (the app's own) is plaintext to the
//! mesh. An mTLS connection is terminated with the workload certificate (a client
//! certificate is required and verified) and then served as HTTP or TCP as a plaintext
//! one is, the client's SPIFFE id known. AuthorizationPolicy is checked here for TCP
//! (per request in the HTTP engine).

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_config::MtlsMode;
use tokio::net::TcpStream;
use tracing::{debug, info};

use super::detect::{HELLO_MAX, Hello, client_hello};
use super::http::{Plan, SniffOutcome, plan_inbound, sniff, tcp_inbound_peer};
use super::{Shared, connect, http, original_dst, refuse, reset, tcp};
use crate::addrs::{ListenAddr, OrigDstAddr};
use crate::authz::{Attributes, Decision};
use crate::identity::mesh::MeshTls;
use crate::metrics::RefusalReason;
use crate::record::ConnRecord;

/// How long an inbound client may take to send its first bytes (or finish the mTLS
/// handshake) when only mTLS is accepted.
const STRICT_WAIT: Duration = Duration::from_secs(10);
/// In `PERMISSIVE`, how long the client's first bytes are waited for before the app is
/// dialled too (a server-first protocol then goes on when the app speaks). Client-first
/// protocols (HTTP, TLS) send at once, so their app connection is made only once it is
/// known what the client speaks.
const FIRST_BYTES_GRACE: Duration = Duration::from_millis(100);

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
        if let Some(mesh) = &l7.tls {
            match Box::pin(mtls_gate(shared, l7, &client, orig, source)).await {
                Gate::Mtls(up) => {
                    return Box::pin(serve_mtls(
                        shared,
                        l7,
                        mesh,
                        client,
                        record,
                        orig,
                        up,
                        connect_started,
                    ))
                    .await;
                }
                Gate::Plain(up) => dialled = up,
                Gate::Refuse => {
                    info!(dst = %orig, client = %record.client(), "plaintext refused: PeerAuthentication STRICT");
                    return refuse(
                        record,
                        client,
                        (RefusalReason::PlaintextRefused, Some(orig)),
                    );
                }
            }
        }
        let plan = plan_inbound(l7, orig).await;
        if plan == Plan::Sniff && dialled.is_none() {
            match Box::pin(sniff(shared, &client, orig, source)).await {
                SniffOutcome::Http => {}
                SniffOutcome::Opaque(r) => dialled = Some(r),
            }
        }
        let sniffed_http = plan == Plan::Sniff && dialled.is_none();
        if plan == Plan::Http || sniffed_http {
            record.to_http(orig);
            // Boxed, as outbound.
            return Box::pin(http::serve(
                shared,
                l7,
                client,
                record.client(),
                orig,
                true,
                http::ClientTls::default(),
            ))
            .await;
        }
        record.set_peer(tcp_inbound_peer(l7, record.client(), orig).await);
        if let Some(denied) = tcp_denied(l7, record, orig, None).await {
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

/// What the PeerAuthentication mode and the client's first bytes decide.
enum Gate {
    /// Istio mTLS, to terminate (with the app connection, if it was made meanwhile).
    Mtls(Option<Result<TcpStream, connect::ConnectError>>),
    /// Plaintext as far as the mesh goes (with the app connection, if made meanwhile).
    Plain(Option<Result<TcpStream, connect::ConnectError>>),
    /// Not mTLS, and the mode is `STRICT`.
    Refuse,
}

/// Reads the mode and, unless it is `DISABLE`, looks at the client's first bytes. In
/// `PERMISSIVE`, if none came within [`FIRST_BYTES_GRACE`], the app is dialled
/// meanwhile, so a server-first protocol (the app speaks first) is held up no longer:
/// it is plaintext.
async fn mtls_gate(
    shared: &Shared,
    l7: &http::L7,
    client: &TcpStream,
    orig: OrigDstAddr,
    source: Option<std::net::IpAddr>,
) -> Gate {
    use crate::http::Resolver as _;
    let mode = l7
        .resolver
        .own_workload()
        .await
        .map_or(MtlsMode::Permissive, |w| {
            w.inbound_tls.mode_for(orig.port())
        });
    if mode == MtlsMode::Disable {
        return Gate::Plain(None);
    }
    let strict = mode == MtlsMode::Strict;
    let mut buf = vec![0u8; 512];
    let mut up: Option<Result<TcpStream, connect::ConnectError>> = None;
    let dial = connect::connect(orig, source, shared.config.connect_timeout);
    tokio::pin!(dial);
    let deadline = tokio::time::Instant::now() + STRICT_WAIT;
    let grace = tokio::time::sleep(FIRST_BYTES_GRACE);
    tokio::pin!(grace);
    let mut dialling = false;
    let mut partial = false;
    loop {
        let peek = async {
            if partial {
                // The rest of the ClientHello is on its way.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            client.peek(&mut buf).await
        };
        let n = tokio::select! {
            r = peek => match r {
                Ok(n) if n > 0 => n,
                // Closed or broken before a byte: whatever it was, not mTLS.
                _ => return if strict { Gate::Refuse } else { Gate::Plain(up) },
            },
            () = &mut grace, if !strict && !dialling => {
                dialling = true;
                continue;
            }
            r = &mut dial, if dialling && up.is_none() => {
                up = Some(r);
                continue;
            }
            () = server_spoke(up.as_ref()), if !strict => return Gate::Plain(up),
            () = tokio::time::sleep_until(deadline), if strict => return Gate::Refuse,
        };
        match client_hello(&buf[..n]) {
            Hello::Incomplete if n == buf.len() && buf.len() < HELLO_MAX => {
                buf.resize((buf.len() * 4).min(HELLO_MAX), 0);
                partial = false;
            }
            Hello::Incomplete if n < buf.len() => partial = true,
            hello => {
                return match (hello.is_istio(), strict) {
                    (true, _) => Gate::Mtls(up),
                    (false, true) => Gate::Refuse,
                    (false, false) => Gate::Plain(up),
                };
            }
        }
    }
}

/// Resolves when the app (dialled meanwhile) has sent something; never without one.
async fn server_spoke(up: Option<&Result<TcpStream, connect::ConnectError>>) {
    match up {
        Some(Ok(u)) => {
            let mut b = [0u8; 1];
            let _ = u.peek(&mut b).await;
        }
        _ => std::future::pending().await,
    }
}

/// Terminates mTLS and serves what it carries: HTTP when the client offered an HTTP
/// protocol (or the port is HTTP), else TCP to the app.
#[allow(clippy::too_many_arguments)]
async fn serve_mtls(
    shared: &Shared,
    l7: &http::L7,
    mesh: &Arc<MeshTls>,
    client: TcpStream,
    record: &mut ConnRecord<'_>,
    orig: OrigDstAddr,
    up: Option<Result<TcpStream, connect::ConnectError>>,
    connect_started: Instant,
) {
    let accepted = match tokio::time::timeout(STRICT_WAIT, mesh.accept(client)).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            info!(dst = %orig, client = %record.client(), error = %e, "mTLS handshake failed; closing");
            record.refuse(RefusalReason::TlsHandshake, Some(orig));
            return;
        }
        Err(_) => {
            info!(dst = %orig, client = %record.client(), "mTLS handshake timed out; closing");
            record.refuse(RefusalReason::TlsHandshake, Some(orig));
            return;
        }
    };
    let peer_id = accepted.peer.clone();
    let plan = plan_inbound(l7, orig).await;
    let http_alpn = matches!(accepted.alpn.as_deref(), Some(b"h2" | b"http/1.1"));
    let mut stream = accepted.stream;
    if http_alpn || plan == Plan::Http {
        drop(up);
        record.to_http(orig);
        // The TLS stream boxed: rustls's connection state is about 6 KB, and held by
        // value it made each of the connection's nested futures that much larger (12 KB
        // for the outermost), built on the stack on their first poll.
        return Box::pin(http::serve(
            shared,
            l7,
            Box::new(stream),
            record.client(),
            orig,
            true,
            http::ClientTls {
                identity: peer_id,
                client_cert: accepted.client_cert,
            },
        ))
        .await;
    }
    record.set_peer(tcp_inbound_peer(l7, record.client(), orig).await);
    record.secure_peer(peer_id.as_deref(), mesh.spiffe_id());
    if let Some(denied) = tcp_denied(l7, record, orig, peer_id.as_deref()).await {
        info!(dst = %orig, client = %record.client(), peer = peer_id.as_deref(), decision = ?denied, "connection denied by AuthorizationPolicy");
        record.refuse(RefusalReason::Denied, Some(orig));
        return;
    }
    let source = Some(mesh_common::inbound_passthrough_for(orig.ip()));
    let dialled = match up {
        Some(r) => r,
        None => connect::connect(orig, source, shared.config.connect_timeout).await,
    };
    let mut upstream = match dialled {
        Ok(u) => u,
        Err(e) => {
            info!(dst = %orig, error = %e, "upstream connect failed; closing the mTLS client");
            record.connect_failed(orig, e.kind());
            return;
        }
    };
    let meters = record.connected(orig, connect_started.elapsed(), || {
        upstream.local_addr().ok()
    });
    debug!(dst = %orig, peer = peer_id.as_deref(), "mTLS connected to the app");
    let result = tcp::forward(shared, &mut stream, &mut upstream, &meters).await;
    record.closed(result.err().as_ref());
}

/// The AuthorizationPolicies of this pod for a TCP connection from `principal` (a
/// SPIFFE id, over mTLS); `Some`: denied.
async fn tcp_denied(
    l7: &http::L7,
    record: &ConnRecord<'_>,
    orig: OrigDstAddr,
    peer_id: Option<&str>,
) -> Option<Decision> {
    use crate::http::Resolver as _;
    let w = l7.resolver.own_workload().await?;
    if w.authz.is_empty() {
        return None;
    }
    let attrs = Attributes {
        principal: peer_id.map(mesh_common::identity::principal),
        source_ip: record.client().ip(),
        destination_ip: orig.ip(),
        destination_port: orig.port(),
        sni: None,
        http: None,
    };
    let d = w.authz.evaluate(&attrs);
    (!d.allowed()).then_some(d)
}
