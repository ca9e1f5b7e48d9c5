//! What the proxy knows of the mesh, by key, shared by every worker thread.
//!
//! Written only by the config client, a whole response at a time ([`Store::apply`]:
//! validated and compiled first, then swapped in; a bad response changes nothing). Read
//! by every connection: lookups take a read lock for a hash lookup and an `Arc` clone.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use mesh_config::key::normalize_host;
use mesh_config::{Key, Resource, Workload};
use tokio::sync::{mpsc, watch};

use crate::http::CompiledService;

/// What a key resolved to, ready for the data path.
#[derive(Debug, Clone)]
pub enum Answer {
    Service(Arc<CompiledService>),
    Workload(Arc<Workload>),
    NotFound,
}

#[derive(Debug)]
struct Entry {
    answer: Answer,
    /// As received, for `/config_dump`.
    raw: Arc<Resource>,
    version: String,
    /// Seconds since the store's start when a connection last used it.
    last_used: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Key, Entry>,
    /// Every name a known Service answers to (its `domains` and host), for routing a
    /// request by its authority.
    by_domain: HashMap<String, Arc<CompiledService>>,
}

/// The proxy's config, by key.
#[derive(Debug)]
pub struct Store {
    state: RwLock<State>,
    /// Bumped on every applied response; waiters watch it.
    generation: watch::Sender<u64>,
    /// Keys a connection asked for and the store lacks, for the client to subscribe.
    wanted: mpsc::UnboundedSender<Key>,
    /// Whether the stream to mesh-control is up: only then is an unknown key worth
    /// waiting for.
    connected: AtomicBool,
    /// Keys never dropped for idleness (the pod's own IP).
    pinned: HashSet<Key>,
    started: Instant,
}

/// A response the store refuses; it keeps what it had.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {why}")]
pub struct ApplyError {
    pub key: String,
    pub why: String,
}

impl Store {
    /// An empty store, and the receiving end of the keys connections want.
    pub fn new(
        pinned: impl IntoIterator<Item = Key>,
    ) -> (Arc<Store>, mpsc::UnboundedReceiver<Key>) {
        let (wanted, rx) = mpsc::unbounded_channel();
        let store = Store {
            state: RwLock::default(),
            generation: watch::channel(0).0,
            wanted,
            connected: AtomicBool::new(false),
            pinned: pinned.into_iter().collect(),
            started: Instant::now(),
        };
        (Arc::new(store), rx)
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// What `key` is, if known (`None`: never answered). Counts as a use.
    pub fn get(&self, key: &Key) -> Option<Answer> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let entry = state.entries.get(key)?;
        entry.last_used.store(self.now(), Ordering::Relaxed);
        Some(entry.answer.clone())
    }

    /// What `key` is; when unknown and mesh-control is connected, subscribes it and waits
    /// up to `wait` for the answer. `None`: unknown (mesh-control away, or slow).
    pub async fn resolve(&self, key: Key, wait: Duration) -> Option<Answer> {
        if let Some(a) = self.get(&key) {
            return Some(a);
        }
        if !self.is_connected() || wait.is_zero() {
            // Still worth asking for: the next connection will find it.
            let _ = self.wanted.send(key);
            return None;
        }
        let mut changed = self.generation.subscribe();
        let _ = self.wanted.send(key.clone());
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(a) = self.get(&key) {
                return Some(a);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// The Service a request's authority (`reviews:9080`, `reviews.default.svc`, a
    /// ClusterIP) names, among those known.
    pub fn service_for_authority(&self, authority: &str) -> Option<Arc<CompiledService>> {
        let host = normalize_host(authority);
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        state.by_domain.get(&host).cloned()
    }

    /// The workload at `ip`, if known (no wait; asks for it otherwise).
    pub fn peer(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        let key = Key::Address(ip);
        match self.get(&key) {
            Some(Answer::Workload(w)) => Some(w),
            Some(_) => None,
            None => {
                let _ = self.wanted.send(key);
                None
            }
        }
    }

    /// Applies one response whole, or not at all. `compile` turns a Service into its
    /// data-path form (regexes compiled); any failure refuses the whole response.
    pub fn apply(
        &self,
        updates: Vec<(Key, Resource, String)>,
        compile: impl Fn(&mesh_config::Service) -> Result<CompiledService, mesh_config::ValidationError>,
    ) -> Result<usize, ApplyError> {
        let mut ready = Vec::with_capacity(updates.len());
        for (key, resource, version) in updates {
            let fail = |why: String| ApplyError {
                key: key.to_string(),
                why,
            };
            resource.validate().map_err(|e| fail(e.to_string()))?;
            let answer = match &resource {
                Resource::Service(svc) => {
                    Answer::Service(Arc::new(compile(svc).map_err(|e| fail(e.to_string()))?))
                }
                Resource::Workload(w) => Answer::Workload(Arc::new(w.clone())),
                Resource::NotFound => Answer::NotFound,
            };
            ready.push((
                key,
                Entry {
                    answer,
                    raw: Arc::new(resource),
                    version,
                    last_used: AtomicU64::new(self.now()),
                },
            ));
        }
        let n = ready.len();
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            for (key, entry) in ready {
                state.entries.insert(key, entry);
            }
            state.by_domain = domain_index(&state.entries);
        }
        self.generation.send_modify(|g| *g += 1);
        Ok(n)
    }

    /// Drops the keys no connection used for `idle` (never the pinned ones) and returns
    /// them, for the client to unsubscribe.
    pub fn sweep(&self, idle: Duration) -> Vec<Key> {
        let now = self.now();
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let old: Vec<Key> = state
            .entries
            .iter()
            .filter(|(k, e)| {
                !self.pinned.contains(*k)
                    && now.saturating_sub(e.last_used.load(Ordering::Relaxed)) >= idle.as_secs()
            })
            .map(|(k, _)| k.clone())
            .collect();
        if old.is_empty() {
            return old;
        }
        for k in &old {
            state.entries.remove(k);
        }
        state.by_domain = domain_index(&state.entries);
        old
    }

    /// Every key held, and the pinned ones (what a new stream subscribes).
    pub fn keys(&self) -> Vec<Key> {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<Key> = state
            .entries
            .keys()
            .cloned()
            .chain(self.pinned.iter().cloned())
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Whether `key` is held (an answer was applied for it).
    pub fn has(&self, key: &Key) -> bool {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .contains_key(key)
    }

    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Release);
        // Wake waiters so they stop waiting for a stream that is gone.
        self.generation.send_modify(|_| {});
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Responses applied so far.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// `/config_dump`: every key with its version and resource, sorted by key.
    pub fn dump(&self) -> serde_json::Value {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut keys: Vec<&Key> = state.entries.keys().collect();
        keys.sort();
        let resources: Vec<serde_json::Value> = keys
            .into_iter()
            .filter_map(|k| {
                let e = state.entries.get(k)?;
                Some(serde_json::json!({
                    "key": k.to_string(),
                    "version": e.version,
                    "resource": serde_json::to_value(&*e.raw).unwrap_or(serde_json::Value::Null),
                }))
            })
            .collect();
        serde_json::json!({
            "connected": self.is_connected(),
            "generation": self.generation(),
            "resources": resources,
        })
    }
}

fn domain_index(entries: &HashMap<Key, Entry>) -> HashMap<String, Arc<CompiledService>> {
    let mut by_domain = HashMap::new();
    for e in entries.values() {
        if let Answer::Service(svc) = &e.answer {
            let s = svc.service();
            for d in s.domains.iter().chain(std::iter::once(&s.host)) {
                by_domain.entry(d.clone()).or_insert_with(|| svc.clone());
            }
        }
    }
    by_domain
}
