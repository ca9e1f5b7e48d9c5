//! Outbound: the pod's own app dialled out and the nat OUTPUT rules sent it here; the
//! proxy dials the original destination directly (its own traffic, as uid 1337,
//! bypasses the capture). For a Service port the proxy picks the endpoint itself, and
//! originates mTLS to it when the cluster says so (auto mTLS, or a DestinationRule's
//! `ISTIO_MUTUAL`); TCP over mTLS is copied by the stream loop, plaintext keeps the
//! splice path.

use std::time::Instant;

use tokio::net::TcpStream;
use tracing::{debug, info};

use crate::identity::mesh::ClientStream as TlsStream;

use super::detect::{SNIFF_LEN, Sniffed, classify};
use super::http::{Plan, SniffOutcome, plan_outbound, sniff, tcp_upstream};
use super::{Shared, connect, http, original_dst, refuse, reset, tcp};
use crate::addrs::ListenAddr;
use crate::identity::mesh::{Alpn, MeshTls, TlsTarget};
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
    // Made while sniffing (with the first bytes the server sent, if it spoke first);
    // boxed, as the TLS session is large and most connections have none.
    let mut pre_tls = None;
    if let Some(l7) = &shared.l7 {
        let (plan, svc) = plan_outbound(l7, orig).await;
        // For a Service port the endpoint is picked first, so that a sniffed connection
        // that is not HTTP goes where an L4 one would (and gets its mTLS).
        let up = match (&svc, plan) {
            (Some(svc), Plan::Sniff | Plan::Tcp) => {
                let from = client.peer_addr().ok().map(|a| a.ip());
                Some(tcp_upstream(svc, orig, from, &l7.metrics))
            }
            _ => None,
        };
        // A sniffed port whose endpoint takes mTLS: the mTLS connection is made while the
        // client's first bytes are awaited (TLS is client-first, so a server-first
        // protocol behind the peer's sidecar can speak through it).
        let sniff_tls = match (&l7.tls, up.as_ref()) {
            (Some(mesh), Some(u)) if plan == Plan::Sniff => u
                .tls
                .as_ref()
                .zip(u.endpoint)
                .map(|(t, e)| (mesh.clone(), t.clone(), e)),
            _ => None,
        };
        let mut sniffed_http = false;
        if let Some((mesh, target, endpoint)) = &sniff_tls {
            match Box::pin(sniff_mtls(shared, &client, mesh, target, *endpoint)).await {
                MtlsSniff::Http => sniffed_http = true,
                MtlsSniff::Opaque(r) => pre_tls = Some(r),
            }
        } else if plan == Plan::Sniff {
            let target = up.as_ref().and_then(|u| u.endpoint).unwrap_or(orig);
            match Box::pin(sniff(shared, &client, target, None)).await {
                SniffOutcome::Http => sniffed_http = true,
                SniffOutcome::Opaque(r) => dialled = Some(r),
            }
        }
        if plan == Plan::Http || sniffed_http {
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
                http::ClientTls::default(),
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
    if let (Some(made), Some((mesh, _))) = (pre_tls, &tls) {
        // Sniffed: the mTLS connection is made already.
        return Box::pin(forward_mtls(
            shared,
            client,
            made,
            record,
            orig,
            mesh,
            connect_started,
            idle_timeout,
        ))
        .await;
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
        // Boxed, the handshake and the copy: the TLS session must not sit inline in
        // every connection's task (most are plaintext).
        let made = Box::pin(mesh.connect(upstream, &target, Alpn::Tcp))
            .await
            .map(|s| (s, Vec::new()));
        return Box::pin(forward_mtls(
            shared,
            client,
            Box::new(made),
            record,
            orig,
            &mesh,
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

/// What sniffing an mTLS-bound connection found.
enum MtlsSniff {
    Http,
    /// Not HTTP: the mTLS connection, and what the server already sent (boxed: the TLS
    /// session is large).
    Opaque(Box<std::io::Result<(TlsStream, Vec<u8>)>>),
}

/// [`super::http::sniff`] for an endpoint that takes mTLS: waits for the client's first
/// bytes while the mTLS connection is made; the server's first application bytes
/// (read, kept) also mean "not HTTP".
async fn sniff_mtls(
    shared: &Shared,
    client: &TcpStream,
    mesh: &MeshTls,
    target: &TlsTarget,
    endpoint: crate::addrs::OrigDstAddr,
) -> MtlsSniff {
    use tokio::io::AsyncReadExt as _;
    let dial = async {
        let tcp = connect::connect(endpoint, None, shared.config.connect_timeout)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        mesh.connect(tcp, target, Alpn::Tcp).await
    };
    tokio::pin!(dial);
    let mut up: Option<TlsStream> = None;
    let mut buf = [0u8; SNIFF_LEN];
    let mut partial = false;
    loop {
        let peek = async {
            if partial {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            client.peek(&mut buf).await
        };
        let n = match up.as_mut() {
            None => tokio::select! {
                r = peek => r,
                r = &mut dial => match r {
                    Ok(s) => {
                        up = Some(s);
                        continue;
                    }
                    Err(e) => return MtlsSniff::Opaque(Box::new(Err(e))),
                },
            },
            Some(stream) => {
                let mut first = vec![0u8; 4096];
                tokio::select! {
                    r = peek => r,
                    r = stream.read(&mut first) => {
                        // The server spoke first: not HTTP.
                        return MtlsSniff::Opaque(Box::new(match (r, up.take()) {
                            (Ok(n), Some(s)) => {
                                first.truncate(n);
                                Ok((s, first))
                            }
                            (Err(e), _) => Err(e),
                            (Ok(_), None) => Err(std::io::Error::other("no mTLS connection")),
                        }));
                    }
                }
            }
        };
        let n = match n {
            Ok(n) if n > 0 => n,
            _ => return MtlsSniff::Opaque(Box::new(finish_mtls(up, dial).await)),
        };
        match classify(&buf[..n]) {
            Some(Sniffed::Http1 | Sniffed::H2) => return MtlsSniff::Http,
            Some(Sniffed::Opaque) => {
                return MtlsSniff::Opaque(Box::new(finish_mtls(up, dial).await));
            }
            None if n == buf.len() => {
                return MtlsSniff::Opaque(Box::new(finish_mtls(up, dial).await));
            }
            None => partial = true,
        }
    }
}

async fn finish_mtls(
    up: Option<TlsStream>,
    dial: impl Future<Output = std::io::Result<TlsStream>>,
) -> std::io::Result<(TlsStream, Vec<u8>)> {
    match up {
        Some(s) => Ok((s, Vec::new())),
        None => dial.await.map(|s| (s, Vec::new())),
    }
}

/// Copies an mTLS connection to the endpoint (`made`: the connection and what the server
/// already sent, when it spoke first while the connection was sniffed): those bytes to the
/// client first, then both ways until both end.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward_mtls(
    shared: &Shared,
    mut client: TcpStream,
    made: Box<std::io::Result<(TlsStream, Vec<u8>)>>,
    record: &mut ConnRecord<'_>,
    orig: crate::addrs::OrigDstAddr,
    mesh: &MeshTls,
    connect_started: Instant,
    idle_timeout: Option<std::time::Duration>,
) {
    use tokio::io::AsyncWriteExt as _;
    let (mut stream, first) = match *made {
        Ok(m) => m,
        Err(e) => {
            info!(dst = %orig, error = %e, "mTLS to the endpoint failed; resetting client");
            record.connect_failed(orig, crate::metrics::ConnectErrorKind::Other);
            reset(client);
            return;
        }
    };
    let local = stream.tcp().local_addr().ok();
    let server_id = stream.peer_identity();
    record.secure_peer(server_id.as_deref(), mesh.spiffe_id());
    let meters = record.connected(orig, connect_started.elapsed(), || local);
    debug!(dst = %orig, peer = server_id.as_deref(), "connected upstream over mTLS");
    if !first.is_empty() {
        if let Err(e) = client.write_all(&first).await {
            record.closed(Some(&e));
            return;
        }
        meters.sent.add(first.len());
    }
    let result = match idle_timeout {
        Some(idle) => tcp::forward_idle(shared, &mut client, &mut stream, &meters, idle).await,
        None => tcp::forward(shared, &mut client, &mut stream, &meters).await,
    };
    record.closed(result.err().as_ref());
}
