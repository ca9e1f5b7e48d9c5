//! The config stream's client: one gRPC stream to mesh-control, kept up for the proxy's
//! life.
//!
//! It connects (h2 over plain TCP, or over TLS 1.3 verified against the mesh root with
//! `--root-cert`: [`crate::identity::channel`]), sends its [`Node`] and every
//! key the store holds or connections asked for, then applies each response whole and
//! ACKs it, or NACKs it and keeps the old config. Connections' new keys are subscribed as
//! they come; idle keys are unsubscribed. When the stream breaks, the store keeps its
//! last good config and the client reconnects with backoff (100 ms doubling to 5 s).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use mesh_config::wire::{Node, STREAM_PATH, StreamRequest, StreamResponse};
use mesh_config::{Key, Resource};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::store::Store;
use crate::identity::channel::{self, ChannelError, Target, TlsSettings};

/// How the client runs.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// mesh-control's `host:port`.
    pub address: String,
    pub node: Node,
    /// Keys unused this long are dropped and unsubscribed.
    pub idle: Duration,
    pub connect_timeout: Duration,
    /// Load-balancing state kept across config updates.
    pub lb: Arc<crate::http::LbStates>,
    /// TLS to mesh-control (`--root-cert`); `None`: plaintext.
    pub tls: Option<TlsSettings>,
}

/// Why one stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error(transparent)]
    Channel(#[from] ChannelError),
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("gRPC: {0}")]
    Grpc(#[from] tonic::Status),
    #[error("stream closed by mesh-control")]
    Closed,
}

/// Runs the client until the process ends. `first_config` is called once, after the
/// first response is applied (the proxy turns ready then).
pub async fn run(
    store: Arc<Store>,
    settings: ClientSettings,
    mut wanted: mpsc::UnboundedReceiver<Key>,
    first_config: impl FnOnce() + Send,
) {
    let mut first_config = Some(first_config);
    let mut backoff = Duration::from_millis(100);
    loop {
        match stream_once(&store, &settings, &mut wanted, &mut first_config).await {
            Ok(()) => {}
            Err(e) => {
                warn!(control_plane = %settings.address, error = %e, "config stream down; keeping the last config")
            }
        }
        store.set_connected(false);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        if store.generation() > 0 {
            // Reached once: retry from the short end after a healthy stream.
            backoff = backoff.min(Duration::from_secs(1));
        }
    }
}

async fn stream_once(
    store: &Store,
    settings: &ClientSettings,
    wanted: &mut mpsc::UnboundedReceiver<Key>,
    first_config: &mut Option<impl FnOnce() + Send>,
) -> Result<(), StreamError> {
    let target = Target {
        address: settings.address.clone(),
        connect_timeout: settings.connect_timeout,
        tls: settings.tls.clone(),
    };
    let h2 = channel::connect(&target).await?;
    let mut grpc = tonic::client::Grpc::with_origin(h2, channel::origin(&target));
    grpc.ready()
        .await
        .map_err(|e| StreamError::Connect(settings.address.clone(), e.to_string()))?;

    // Everything held, plus what connections asked for meanwhile.
    let mut subscribed: HashSet<Key> = store.keys().into_iter().collect();
    while let Ok(k) = wanted.try_recv() {
        subscribed.insert(k);
    }
    let (tx, rx) = mpsc::unbounded_channel::<StreamRequest>();
    let mut first: Vec<String> = subscribed.iter().map(Key::to_string).collect();
    first.sort();
    let _ = tx.send(StreamRequest {
        node: Some(settings.node.clone()),
        subscribe: first,
        ..Default::default()
    });

    let path = http::uri::PathAndQuery::from_static(STREAM_PATH);
    let codec = tonic_prost::ProstCodec::<StreamRequest, StreamResponse>::default();
    let request = tonic::Request::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
    let mut responses = grpc.streaming(request, path, codec).await?.into_inner();
    store.set_connected(true);
    info!(control_plane = %settings.address, keys = subscribed.len(), "config stream up");

    let mut sweep = tokio::time::interval(
        settings
            .idle
            .min(Duration::from_secs(60))
            .max(Duration::from_secs(1)),
    );
    sweep.tick().await;
    loop {
        tokio::select! {
            msg = responses.message() => {
                let Some(res) = msg? else { return Err(StreamError::Closed) };
                let ack = apply(store, &settings.lb, &res);
                if ack.error.is_empty()
                    && let Some(f) = first_config.take()
                {
                    f();
                }
                let _ = tx.send(ack);
            }
            Some(key) = wanted.recv() => {
                if subscribed.insert(key.clone()) {
                    let _ = tx.send(StreamRequest { subscribe: vec![key.to_string()], ..Default::default() });
                }
            }
            _ = sweep.tick() => {
                let gone = store.sweep(settings.idle);
                if !gone.is_empty() {
                    for k in &gone {
                        subscribed.remove(k);
                    }
                    debug!(keys = gone.len(), "unsubscribing idle keys");
                    let _ = tx.send(StreamRequest { unsubscribe: gone.iter().map(Key::to_string).collect(), ..Default::default() });
                }
            }
        }
    }
}

/// Applies one response and says what to answer: ACK (empty error) or NACK.
fn apply(store: &Store, lb: &crate::http::LbStates, res: &StreamResponse) -> StreamRequest {
    let mut updates = Vec::with_capacity(res.resources.len());
    let mut error = String::new();
    for r in &res.resources {
        let key: Key = match r.key.parse() {
            Ok(k) => k,
            Err(e) => {
                error = e.to_string();
                break;
            }
        };
        match Resource::from_json(&r.body) {
            Ok(resource) => updates.push((key, resource, r.version.clone())),
            Err(e) => {
                error = format!("{key}: cannot decode: {e}");
                break;
            }
        }
    }
    if error.is_empty()
        && let Err(e) = store.apply(updates, lb)
    {
        error = e.to_string();
    }
    if error.is_empty() {
        debug!(
            version = res.version,
            resources = res.resources.len(),
            "config applied"
        );
    } else {
        warn!(version = res.version, error = %error, "config refused (NACK); keeping the last good one");
    }
    StreamRequest {
        response_nonce: res.nonce.clone(),
        error,
        ..Default::default()
    }
}
