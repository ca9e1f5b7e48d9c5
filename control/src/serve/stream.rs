//! One config stream: the first request names the proxy; then requests (subscribe,
//! unsubscribe, ACK/NACK) and published snapshots drive its [`Session`], and what that
//! returns is written to the proxy. New keys are answered at once; a snapshot change
//! sends only what changed.

use std::sync::Arc;

use futures_util::StreamExt as _;
use mesh_config::wire::{StreamRequest, StreamResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::serve::engine::Snapshots;
use crate::serve::metrics::Metrics;
use crate::serve::proxies::{Proxies, Shared, lock};
use crate::serve::session::{Answer, Session};
use crate::serve::translator::View;
use crate::translate::ProxyNode;

/// Responses queued per stream before the writer waits for the proxy to read.
const QUEUE: usize = 4;

pub type Outbound = ReceiverStream<Result<StreamResponse, Status>>;

/// What every stream shares.
pub struct Context {
    pub snapshots: Snapshots,
    pub proxies: Arc<Proxies>,
    pub metrics: Arc<Metrics>,
}

/// Starts serving one stream; returns the responses to write. `identity`: the verified
/// SPIFFE id of the connection's client certificate (TLS port), if any.
pub fn open(
    ctx: Arc<Context>,
    inbound: Streaming<StreamRequest>,
    identity: Option<String>,
) -> Outbound {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(run(ctx, inbound, tx, identity));
    ReceiverStream::new(rx)
}

type Tx = mpsc::Sender<Result<StreamResponse, Status>>;

async fn run(
    ctx: Arc<Context>,
    mut inbound: Streaming<StreamRequest>,
    tx: Tx,
    identity: Option<String>,
) {
    let first = match inbound.next().await {
        Some(Ok(r)) => r,
        Some(Err(status)) => {
            tracing::debug!(%status, "stream ended before its first request");
            return;
        }
        None => return,
    };
    let Some(node) = first
        .node
        .clone()
        .filter(|n| !n.pod_name.is_empty() && !n.namespace.is_empty())
    else {
        tracing::warn!("a stream's first request has no node; refused");
        let _ = tx
            .send(Err(Status::invalid_argument(
                "the first request must carry node (pod name and namespace)",
            )))
            .await;
        return;
    };
    let proxy = format!("{}/{}", node.namespace, node.pod_name);
    let id = ctx.proxies.next_id();
    let session = Session::new(
        ProxyNode {
            namespace: node.namespace.clone(),
            pod_name: node.pod_name.clone(),
            identity: identity.clone(),
        },
        node.ip.clone(),
        node.proxy_version.clone(),
        id,
    );
    let (session, _registration) = ctx.proxies.register(id, session);
    tracing::info!(
        %proxy,
        ip = %node.ip,
        version = %node.proxy_version,
        stream = id,
        identity = identity.as_deref().unwrap_or("none"),
        "proxy connected"
    );

    let mut snapshots = ctx.snapshots.clone();
    let published = match snapshots.wait_for(Option::is_some).await {
        Ok(p) => p.clone(),
        Err(_) => return,
    };
    let Some(mut view) = published.map(|p| p.view.clone()) else {
        return;
    };
    let s = Stream {
        ctx: &ctx,
        session: &session,
        tx: &tx,
        proxy: &proxy,
    };
    if s.request(&first, view.as_ref()).await {
        loop {
            tokio::select! {
                msg = inbound.next() => match msg {
                    Some(Ok(req)) => {
                        if !s.request(&req, view.as_ref()).await {
                            break;
                        }
                    }
                    Some(Err(status)) => {
                        tracing::debug!(%proxy, %status, "stream error");
                        break;
                    }
                    None => break,
                },
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let Some(p) = snapshots.borrow_and_update().clone() else {
                        continue;
                    };
                    view = p.view.clone();
                    let resp = lock(&session).updates_all(view.as_ref());
                    if let Some(resp) = resp
                        && !s.send(resp, p.changed_at).await
                    {
                        break;
                    }
                }
                () = tx.closed() => break,
            }
        }
    }
    tracing::info!(%proxy, stream = id, "proxy disconnected");
}

struct Stream<'a> {
    ctx: &'a Context,
    session: &'a Shared,
    tx: &'a Tx,
    proxy: &'a str,
}

impl Stream<'_> {
    /// Handles one request; false when the stream is gone.
    async fn request(&self, req: &StreamRequest, view: &dyn View) -> bool {
        let (handled, resp) = {
            let mut s = lock(self.session);
            let h = s.handle(req);
            let resp = if h.added.is_empty() {
                None
            } else {
                s.updates(view, &h.added)
            };
            (h, resp)
        };
        for (key, why) in &handled.refused {
            tracing::warn!(proxy = %self.proxy, %key, "key ignored: {why}");
        }
        match handled.answer {
            Some(Answer::Ack { version }) => {
                tracing::debug!(proxy = %self.proxy, version, "ACK");
            }
            Some(Answer::Nack {
                version,
                error,
                keys,
            }) => {
                self.ctx
                    .metrics
                    .rejected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(proxy = %self.proxy, version, keys, "proxy rejected config (NACK): {error}");
            }
            Some(Answer::Unknown { nonce }) => {
                tracing::debug!(proxy = %self.proxy, %nonce, "answer to an unknown response ignored");
            }
            None => {}
        }
        match resp {
            Some(resp) => self.send(resp, None).await,
            None => true,
        }
    }

    async fn send(&self, resp: StreamResponse, changed_at: Option<std::time::Instant>) -> bool {
        let (version, n) = (resp.version, resp.resources.len());
        if self.tx.send(Ok(resp)).await.is_err() {
            return false;
        }
        self.ctx.metrics.push(changed_at.map(|t| t.elapsed()));
        tracing::debug!(proxy = %self.proxy, version, resources = n, "pushed");
        true
    }
}
