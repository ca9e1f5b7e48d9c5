//! The connected proxies: each stream's [`Session`] (shared with `/debug/proxies`) and the
//! `mesh_control_connected_proxies` gauge.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::serve::metrics::Metrics;
use crate::serve::session::{KeyView, Session};

pub type Shared = Arc<Mutex<Session>>;

pub fn lock(s: &Shared) -> MutexGuard<'_, Session> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
pub struct Proxies {
    next_id: AtomicU64,
    streams: Mutex<BTreeMap<u64, Shared>>,
    metrics: Arc<Metrics>,
}

/// Removes its stream from the registry when dropped (the stream ended, however).
#[derive(Debug)]
pub struct Registration {
    id: u64,
    proxies: Arc<Proxies>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let removed = self
            .proxies
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        if removed.is_some() {
            self.proxies
                .metrics
                .connected_proxies
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One stream as `/debug/proxies` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyView {
    pub proxy: String,
    /// The verified SPIFFE id of the stream's client certificate (TLS port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    pub ip: String,
    pub proxy_version: String,
    pub stream: u64,
    pub connected_seconds: u64,
    /// The last response version sent on this stream.
    pub version: u64,
    /// The last response version the proxy ACKed (0: none yet).
    pub last_acked_version: u64,
    pub keys: Vec<KeyView>,
}

impl Proxies {
    pub fn new(metrics: Arc<Metrics>) -> Arc<Proxies> {
        Arc::new(Proxies {
            next_id: AtomicU64::new(1),
            streams: Mutex::new(BTreeMap::new()),
            metrics,
        })
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn register(self: &Arc<Self>, id: u64, session: Session) -> (Shared, Registration) {
        let shared = Arc::new(Mutex::new(session));
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, shared.clone());
        self.metrics
            .connected_proxies
            .fetch_add(1, Ordering::Relaxed);
        (
            shared,
            Registration {
                id,
                proxies: self.clone(),
            },
        )
    }

    pub fn list(&self) -> Vec<ProxyView> {
        let streams: Vec<(u64, Shared)> = self
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        streams
            .into_iter()
            .map(|(id, s)| {
                let s = lock(&s);
                ProxyView {
                    proxy: format!("{}/{}", s.node.namespace, s.node.pod_name),
                    identity: s.node.identity.clone(),
                    ip: s.ip.clone(),
                    proxy_version: s.proxy_version.clone(),
                    stream: id,
                    connected_seconds: s.connected_at.elapsed().map(|d| d.as_secs()).unwrap_or(0),
                    version: s.version(),
                    last_acked_version: s.last_acked(),
                    keys: s.key_views(),
                }
            })
            .collect()
    }
}
