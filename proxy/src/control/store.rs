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
use mesh_config::{Key, Resource};
use tokio::sync::{mpsc, watch};

use crate::authz::CompiledWorkload;
use crate::gateway::CompiledGateway;
use crate::http::{CompiledService, LbStates};

/// What a key resolved to, ready for the data path.
#[derive(Debug, Clone)]
pub enum Answer {
    Service(Arc<CompiledService>),
    Workload(Arc<CompiledWorkload>),
    /// This gateway's own listeners ([`Key::Gateway`]).
    Gateway(Arc<CompiledGateway>),
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
    pub fn peer(&self, ip: IpAddr) -> Option<Arc<CompiledWorkload>> {
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

    /// Applies one response whole, or not at all. Each resource is compiled into its
    /// data-path form (regexes, CIDRs, certificates parsed; load-balancing state taken
    /// over from `states`); any failure refuses the whole response.
    pub fn apply(
        &self,
        updates: Vec<(Key, Resource, String)>,
        states: &LbStates,
    ) -> Result<usize, ApplyError> {
        let mut ready = Vec::with_capacity(updates.len());
        for (key, resource, version) in updates {
            let fail = |why: String| ApplyError {
                key: key.to_string(),
                why,
            };
            resource.validate().map_err(|e| fail(e.to_string()))?;
            let answer = match &resource {
                Resource::Service(svc) => Answer::Service(Arc::new(
                    CompiledService::compile_in(svc, states).map_err(|e| fail(e.to_string()))?,
                )),
                Resource::Workload(w) => Answer::Workload(Arc::new(
                    CompiledWorkload::compile(w).map_err(|e| fail(e.to_string()))?,
                )),
                Resource::NotFound => Answer::NotFound,
                Resource::Gateway(g) => Answer::Gateway(Arc::new(
                    CompiledGateway::compile(g, states).map_err(|e| fail(e.to_string()))?,
                )),
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

    /// Changes with every applied response (and stream up/down).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Responses applied so far.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// `/config_dump`: every key with its version and resource, sorted by key (private
    /// keys redacted).
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
                    "resource": e.raw.to_redacted_value(),
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use mesh_config::{Cluster, LoadBalancer, Protocol, Service, ServicePort};

    fn service(name: &str, ip: &str) -> Resource {
        let host = format!("{name}.shop.svc.cluster.local");
        Resource::Service(Service {
            host: host.clone(),
            name: name.into(),
            namespace: "shop".into(),
            addresses: vec![ip.parse().unwrap()],
            ports: vec![ServicePort {
                port: 9080,
                name: "http".into(),
                protocol: Protocol::Http,
                routes: Vec::new(),
                default_retry: None,
                tcp_route: None,
            }],
            domains: vec![host.clone(), format!("{name}.shop"), name.into(), ip.into()],
            clusters: vec![Cluster {
                name: mesh_config::cluster::cluster_name(9080, None, &host),
                host,
                service_name: name.into(),
                service_namespace: "shop".into(),
                port: 9080,
                subset: None,
                load_balancer: LoadBalancer::LeastRequest,
                consistent_hash: None,
                endpoints: Vec::new(),
                connection_pool: Default::default(),
                outlier_detection: None,
                tls: Default::default(),
                protocol: None,
            }],
        })
    }

    fn addr(ip: &str) -> Key {
        Key::Address(ip.parse().unwrap())
    }

    #[test]
    fn a_response_applies_whole_and_indexes_every_domain() {
        let (store, _wanted) = Store::new([]);
        let n = store
            .apply(
                vec![
                    (
                        addr("10.96.0.1"),
                        service("reviews", "10.96.0.1"),
                        "a".into(),
                    ),
                    (
                        Key::host("ratings"),
                        service("ratings", "10.96.0.2"),
                        "b".into(),
                    ),
                    (addr("203.0.113.9"), Resource::NotFound, "c".into()),
                ],
                &LbStates::default(),
            )
            .unwrap();
        assert_eq!(n, 3);
        assert!(matches!(
            store.get(&addr("10.96.0.1")),
            Some(Answer::Service(_))
        ));
        assert!(matches!(
            store.get(&addr("203.0.113.9")),
            Some(Answer::NotFound)
        ));
        for authority in [
            "reviews",
            "reviews:9080",
            "Reviews.Shop",
            "reviews.shop.svc.cluster.local.",
            "10.96.0.1:9080",
        ] {
            let s = store.service_for_authority(authority).unwrap();
            assert_eq!(s.host(), "reviews.shop.svc.cluster.local", "{authority}");
        }
        assert_eq!(
            store
                .service_for_authority("ratings")
                .unwrap()
                .service()
                .name,
            "ratings"
        );
        assert!(store.service_for_authority("details").is_none());
        assert_eq!(store.generation(), 1);
    }

    #[test]
    fn a_bad_resource_refuses_the_whole_response_and_keeps_the_old_config() {
        let (store, _wanted) = Store::new([]);
        store
            .apply(
                vec![(
                    addr("10.96.0.1"),
                    service("reviews", "10.96.0.1"),
                    "a".into(),
                )],
                &LbStates::default(),
            )
            .unwrap();
        let Resource::Service(mut bad) = service("ratings", "10.96.0.2") else {
            unreachable!()
        };
        bad.ports[0].routes.push(mesh_config::HttpRoute {
            name: "0".into(),
            virtual_service: "shop/ratings".into(),
            matches: vec![mesh_config::RequestMatch {
                uri: Some(mesh_config::StringMatch::Regex("([a-z".into())),
                ..Default::default()
            }],
            action: mesh_config::RouteAction::Route(vec![mesh_config::WeightedCluster {
                cluster: bad.clusters[0].name.clone(),
                weight: 100,
                request_headers: Default::default(),
                response_headers: Default::default(),
            }]),
            fault: None,
            request_headers: Default::default(),
            response_headers: Default::default(),
            rewrite: None,
            timeout_ms: None,
            retry: None,
            mirrors: Vec::new(),
            cors: None,
        });
        let e = store
            .apply(
                vec![
                    (
                        addr("10.96.0.3"),
                        service("details", "10.96.0.3"),
                        "x".into(),
                    ),
                    (addr("10.96.0.2"), Resource::Service(bad), "y".into()),
                ],
                &LbStates::default(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("addr/10.96.0.2"), "{e}");
        // Nothing of it was taken, and what was there stays.
        assert!(store.get(&addr("10.96.0.3")).is_none());
        assert!(store.get(&addr("10.96.0.2")).is_none());
        assert!(store.get(&addr("10.96.0.1")).is_some());
        assert_eq!(store.generation(), 1);
    }

    #[test]
    fn a_workload_with_a_block_that_is_no_cidr_is_refused() {
        let (store, _wanted) = Store::new([]);
        let mut w = mesh_config::Workload {
            ip: "10.244.1.5".parse().unwrap(),
            pod: "shop/reviews-v1-abc".into(),
            meta: mesh_config::PeerMeta {
                workload: "reviews-v1".into(),
                namespace: "shop".into(),
                canonical_service: "reviews".into(),
                canonical_revision: "v1".into(),
                app: "reviews".into(),
                version: "v1".into(),
                service_account: "reviews".into(),
                sidecar: true,
            },
            services: Vec::new(),
            inbound_tls: Default::default(),
            authorization: Default::default(),
        };
        w.authorization.deny.push(mesh_config::authz::AuthzPolicy {
            name: "shop/block".into(),
            rules: vec![mesh_config::authz::AuthzRule {
                from: vec![mesh_config::authz::Source {
                    ip_blocks: vec!["10.0.0.0/33".into()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        });
        let e = store
            .apply(
                vec![(
                    addr("10.244.1.5"),
                    Resource::Workload(w.clone()),
                    "a".into(),
                )],
                &LbStates::default(),
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("addr/10.244.1.5")
                && e.contains("shop/block: rules[0].from[0].source.ipBlocks")
                && e.contains("10.0.0.0/33"),
            "{e}"
        );
        assert!(store.get(&addr("10.244.1.5")).is_none());
        w.authorization.deny[0].rules[0].from[0].ip_blocks = vec!["10.0.0.0/8".into()];
        store
            .apply(
                vec![(addr("10.244.1.5"), Resource::Workload(w), "b".into())],
                &LbStates::default(),
            )
            .unwrap();
        let Some(Answer::Workload(got)) = store.get(&addr("10.244.1.5")) else {
            panic!("no workload")
        };
        assert!(!got.authz.is_empty());
        assert_eq!(got.pod, "shop/reviews-v1-abc");
    }

    #[tokio::test]
    async fn an_unknown_key_is_asked_for_and_waited_on_only_while_connected() {
        let (store, mut wanted) = Store::new([]);
        // Stream down: no wait, but asked for all the same.
        let t = std::time::Instant::now();
        assert!(
            store
                .resolve(addr("10.96.0.1"), Duration::from_secs(5))
                .await
                .is_none()
        );
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(wanted.recv().await.unwrap(), addr("10.96.0.1"));
        // Stream up: the answer arriving meanwhile ends the wait.
        store.set_connected(true);
        let s = store.clone();
        let answer =
            tokio::spawn(async move { s.resolve(addr("10.96.0.1"), Duration::from_secs(5)).await });
        assert_eq!(wanted.recv().await.unwrap(), addr("10.96.0.1"));
        store
            .apply(
                vec![(
                    addr("10.96.0.1"),
                    service("reviews", "10.96.0.1"),
                    "a".into(),
                )],
                &LbStates::default(),
            )
            .unwrap();
        assert!(matches!(answer.await.unwrap(), Some(Answer::Service(_))));
        // No answer within the wait: unknown.
        assert!(
            store
                .resolve(addr("10.96.0.9"), Duration::from_millis(50))
                .await
                .is_none()
        );
    }

    #[test]
    fn idle_keys_are_swept_but_pinned_ones_stay() {
        let (store, _wanted) = Store::new([addr("10.1.0.5")]);
        store
            .apply(
                vec![
                    (
                        addr("10.96.0.1"),
                        service("reviews", "10.96.0.1"),
                        "a".into(),
                    ),
                    (addr("10.1.0.5"), Resource::NotFound, "b".into()),
                ],
                &LbStates::default(),
            )
            .unwrap();
        assert!(store.sweep(Duration::from_secs(60)).is_empty(), "just used");
        let gone = store.sweep(Duration::ZERO);
        assert_eq!(gone, vec![addr("10.96.0.1")]);
        assert!(store.service_for_authority("reviews").is_none());
        assert!(store.has(&addr("10.1.0.5")));
        assert_eq!(store.keys(), vec![addr("10.1.0.5")]);
    }
}
