//! Load balancing within a cluster, and the state it keeps across config updates.
//!
//! Candidates are the endpoints that serve and are not terminating; when there are none,
//! the terminating ones that still serve; when there are none either, nothing (the
//! request gets 503 `UH`). `LEAST_REQUEST` is Envoy's power of two choices on the
//! endpoints' in-flight counts, `ROUND_ROBIN` a cursor per cluster, `RANDOM` uniform.
//! `PASSTHROUGH` picks no endpoint: the request goes to the original destination.
//!
//! In-flight counters and cursors are atomics shared by every worker thread. They live
//! in the compiled cluster, and [`LbStates`] hands the same ones to the next
//! compilation of a cluster of the same name (and endpoint of the same address), so a
//! config update keeps them; it holds them weakly, so state of endpoints that are gone
//! goes away with the last request or config that used it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use fastrand::Rng;
use mesh_config::LoadBalancer;

use super::compile::{CompiledCluster, CompiledEndpoint};
use super::pool::Pools;
use super::resilience::{ClusterState, EndpointHealth, now_ms};

/// One of `items`, each with probability `weight(item) / total` (`total`: the sum of the
/// weights), as a route's weighted destinations are chosen (HTTP routes, a gateway's
/// `tls[]` routes, a port's `tcp[]` route). `None` when `total` is 0.
pub(crate) fn by_weight<'a, T>(
    items: &'a [T],
    total: u64,
    weight: impl Fn(&T) -> u64,
    rng: &mut Rng,
) -> Option<&'a T> {
    if total == 0 {
        return None;
    }
    let mut at = rng.u64(..total);
    for item in items {
        let w = weight(item);
        if at < w {
            return Some(item);
        }
        at -= w;
    }
    items.last()
}

/// State shared by key and held weakly: whoever asks for a key gets the live value, or
/// a new one; what nobody holds any more goes at the next [`WeakMap::sweep`].
#[derive(Debug)]
struct WeakMap<K, T>(Mutex<HashMap<K, Weak<T>>>);

impl<K, T> Default for WeakMap<K, T> {
    fn default() -> Self {
        WeakMap(Mutex::default())
    }
}

impl<K: std::hash::Hash + Eq + Clone, T> WeakMap<K, T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Weak<T>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live value for `key`, else `make()`'s, kept for the next caller.
    fn get_or(&self, key: K, make: impl FnOnce() -> T) -> Arc<T> {
        let mut map = self.lock();
        if let Some(c) = map.get(&key).and_then(Weak::upgrade) {
            return c;
        }
        let c = Arc::new(make());
        map.insert(key, Arc::downgrade(&c));
        c
    }

    /// Every live value with its key.
    fn live(&self) -> Vec<(K, Arc<T>)> {
        self.lock()
            .iter()
            .filter_map(|(k, w)| Some((k.clone(), w.upgrade()?)))
            .collect()
    }

    fn sweep(&self) {
        self.lock().retain(|_, w| w.strong_count() > 0);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Load-balancing state by cluster name (and endpoint address), held weakly. Keep one
/// for the process and compile every Service with it
/// ([`super::CompiledService::compile_in`]).
#[derive(Debug, Default)]
pub struct LbStates {
    endpoints: WeakMap<(String, SocketAddr), AtomicU32>,
    cursors: WeakMap<String, AtomicUsize>,
    /// By cluster, outlier policy (its fingerprint) and endpoint.
    health: WeakMap<(String, String, SocketAddr), EndpointHealth>,
    clusters: WeakMap<String, ClusterState>,
    pools: WeakMap<String, Pools>,
}

impl LbStates {
    pub(crate) fn in_flight(&self, cluster: &str, addr: SocketAddr) -> Arc<AtomicU32> {
        self.endpoints
            .get_or((cluster.to_owned(), addr), AtomicU32::default)
    }

    /// The outlier state of an endpoint of a cluster under one outlier policy
    /// (`policy`: a fingerprint of it; another policy starts afresh).
    pub(crate) fn health(
        &self,
        cluster: &str,
        policy: &str,
        addr: SocketAddr,
    ) -> Arc<EndpointHealth> {
        self.health.get_or(
            (cluster.to_owned(), policy.to_owned(), addr),
            EndpointHealth::default,
        )
    }

    /// The circuit-breaking state of a cluster.
    pub(crate) fn cluster(&self, cluster: &str) -> Arc<ClusterState> {
        self.clusters
            .get_or(cluster.to_owned(), ClusterState::default)
    }

    /// The connection pool all workers share for a cluster with `tcp.maxConnections`
    /// (so the limit holds for the whole proxy, not per thread).
    pub(crate) fn shared_pools(&self, cluster: &str) -> Arc<Pools> {
        self.pools.get_or(cluster.to_owned(), Pools::default)
    }

    /// `envoy_cluster_*` lines for every cluster alive, sorted by name.
    pub fn render_clusters(&self, out: &mut String) {
        let mut clusters = self.clusters.live();
        clusters.sort_by(|a, b| a.0.cmp(&b.0));
        let now = now_ms();
        let health = self.health.live();
        for (name, state) in clusters {
            let ejected = health
                .iter()
                .filter(|((c, _, _), h)| *c == name && h.is_ejected(now))
                .count();
            state.render(&name, u32::try_from(ejected).unwrap_or(u32::MAX), out);
        }
    }

    pub(crate) fn cursor(&self, cluster: &str) -> Arc<AtomicUsize> {
        // Envoy starts each round-robin at a random place.
        self.cursors.get_or(cluster.to_owned(), || {
            AtomicUsize::new(fastrand::usize(..1024))
        })
    }

    /// Forgets state nobody holds any more.
    pub(crate) fn sweep(&self) {
        self.endpoints.sweep();
        self.cursors.sweep();
        self.health.sweep();
        self.clusters.sweep();
        self.pools.sweep();
    }

    /// How many endpoints have state (for tests and `/config_dump`).
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }
}

/// One request in flight to an endpoint; the count drops with it.
#[derive(Debug)]
pub struct InFlight(Arc<AtomicU32>);

impl InFlight {
    pub(crate) fn new(e: &CompiledEndpoint) -> InFlight {
        e.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(e.in_flight.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl CompiledCluster {
    /// The endpoints new requests may go to (see the module docs).
    fn candidates(&self) -> &[usize] {
        if self.preferred.is_empty() {
            &self.fallback
        } else {
            &self.preferred
        }
    }

    /// Whether outlier detection keeps `e` out of rotation now.
    fn out_of_rotation(&self, e: &CompiledEndpoint, now: u64) -> bool {
        self.outlier.is_some() && e.health.is_ejected(now)
    }

    /// Whether ejections apply now: not when fewer than `minHealthPercent` of the
    /// endpoints would be left (Envoy's panic mode; 0 turns it off).
    fn ejections_apply(&self, now: u64) -> bool {
        let Some(o) = &self.outlier else {
            return false;
        };
        if o.min_health_percent == 0 {
            return true;
        }
        let all = self.candidates();
        let healthy = all
            .iter()
            .filter(|&&i| {
                self.endpoints
                    .get(i)
                    .is_some_and(|e| !e.health.is_ejected(now))
            })
            .count();
        healthy * 100 >= all.len() * o.min_health_percent as usize
    }

    /// Whether any endpoint may take a request (always, for `PASSTHROUGH`).
    pub fn has_healthy(&self) -> bool {
        if self.load_balancer == LoadBalancer::Passthrough {
            return true;
        }
        let all = self.candidates();
        if self.outlier.is_none() || all.is_empty() {
            return !all.is_empty();
        }
        let now = now_ms();
        !self.ejections_apply(now)
            || all.iter().any(|&i| {
                self.endpoints
                    .get(i)
                    .is_some_and(|e| !self.out_of_rotation(e, now))
            })
    }

    /// Endpoints ejected now, with when their ejection ends (in `now_ms` time).
    pub(crate) fn ejected(&self) -> Vec<(&CompiledEndpoint, u64)> {
        if self.outlier.is_none() {
            return Vec::new();
        }
        self.endpoints
            .iter()
            .filter_map(|e| Some((e, e.health.ejected_until()?)))
            .collect()
    }

    /// Records what an exchange with `e` came to, and ejects `e` when that reaches
    /// its threshold and `maxEjectionPercent` allows. `true` when it was ejected.
    pub(crate) fn record_outcome(
        &self,
        e: &CompiledEndpoint,
        outcome: super::resilience::Outcome,
    ) -> bool {
        let Some(o) = &self.outlier else {
            return false;
        };
        if !e.health.record(o, outcome) {
            return false;
        }
        let now = now_ms();
        if e.health.is_ejected(now) {
            return false;
        }
        let total = self.endpoints.len().max(1);
        let ejected = self
            .endpoints
            .iter()
            .filter(|x| x.health.is_ejected(now))
            .count();
        if (ejected + 1) * 100 > total * o.max_ejection_percent as usize {
            return false;
        }
        e.health.eject(o, now);
        self.state
            .ejections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// Picks an endpoint for a request, avoiding those in `avoid` (endpoints that
    /// already failed this request) while others remain. `None`: no healthy endpoint,
    /// or a `PASSTHROUGH` cluster.
    pub fn pick(&self, rng: &mut Rng, avoid: &[SocketAddr]) -> Option<&CompiledEndpoint> {
        if self.load_balancer == LoadBalancer::Passthrough {
            return None;
        }
        let mut all = self.candidates();
        let in_rotation: Vec<usize>;
        if self.outlier.is_some() {
            let now = now_ms();
            if self.ejections_apply(now) {
                in_rotation = all
                    .iter()
                    .copied()
                    .filter(|&i| {
                        self.endpoints
                            .get(i)
                            .is_some_and(|e| !self.out_of_rotation(e, now))
                    })
                    .collect();
                all = &in_rotation;
            }
        }
        let fresh: Vec<usize>;
        let cands: &[usize] = if avoid.is_empty() {
            all
        } else {
            fresh = all
                .iter()
                .copied()
                .filter(|&i| {
                    self.endpoints
                        .get(i)
                        .is_some_and(|e| !avoid.contains(&e.addr))
                })
                .collect();
            if fresh.is_empty() { all } else { &fresh }
        };
        let n = cands.len();
        let at = |k: usize| cands.get(k).and_then(|&i| self.endpoints.get(i));
        match n {
            0 => None,
            1 => at(0),
            _ => match self.load_balancer {
                LoadBalancer::RoundRobin => at(self.rr.fetch_add(1, Ordering::Relaxed) % n),
                LoadBalancer::Random => at(rng.usize(..n)),
                LoadBalancer::LeastRequest | LoadBalancer::Passthrough => {
                    let a = rng.usize(..n);
                    let mut b = rng.usize(..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    let (ea, eb) = (at(a)?, at(b)?);
                    if eb.in_flight() < ea.in_flight() {
                        Some(eb)
                    } else {
                        Some(ea)
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::http::compile::CompiledService;
    use crate::http::compile::tests::{cluster, reviews};

    fn one_cluster(lb: LoadBalancer, states: &LbStates) -> CompiledService {
        let mut svc = reviews(vec![]);
        svc.clusters[0].load_balancer = lb;
        CompiledService::compile_in(&svc, states).unwrap()
    }

    fn default_cluster(s: &CompiledService) -> &CompiledCluster {
        &s.clusters[0]
    }

    #[test]
    fn round_robin_cycles() {
        let s = one_cluster(LoadBalancer::RoundRobin, &LbStates::default());
        let c = default_cluster(&s);
        let mut rng = Rng::with_seed(1);
        let picks: Vec<_> = (0..6)
            .map(|_| c.pick(&mut rng, &[]).unwrap().addr.ip().to_string())
            .collect();
        assert_eq!(picks[0..3], picks[3..6]);
        let mut first: Vec<_> = picks[0..3].to_vec();
        first.sort();
        assert_eq!(first, ["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
    }

    #[test]
    fn random_is_spread_and_deterministic() {
        let s = one_cluster(LoadBalancer::Random, &LbStates::default());
        let c = default_cluster(&s);
        let mut counts = HashMap::new();
        let mut rng = Rng::with_seed(7);
        for _ in 0..3000 {
            *counts
                .entry(c.pick(&mut rng, &[]).unwrap().addr)
                .or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(
            counts.values().all(|&n| (850..1150).contains(&n)),
            "{counts:?}"
        );
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let s = one_cluster(LoadBalancer::LeastRequest, &LbStates::default());
        let c = default_cluster(&s);
        let busy = &c.endpoints[0];
        let _held: Vec<_> = (0..10).map(|_| InFlight::new(busy)).collect();
        assert_eq!(busy.in_flight(), 10);
        let mut rng = Rng::with_seed(3);
        for _ in 0..200 {
            assert_ne!(c.pick(&mut rng, &[]).unwrap().addr, busy.addr);
        }
    }

    #[test]
    fn in_flight_survives_recompile_and_is_forgotten_when_unused() {
        let states = LbStates::default();
        let s1 = one_cluster(LoadBalancer::LeastRequest, &states);
        let guard = InFlight::new(&default_cluster(&s1).endpoints[1]);
        let s2 = one_cluster(LoadBalancer::LeastRequest, &states);
        drop(s1);
        assert_eq!(default_cluster(&s2).endpoints[1].in_flight(), 1);
        drop(guard);
        assert_eq!(default_cluster(&s2).endpoints[1].in_flight(), 0);
        let n = states.endpoint_count();
        drop(s2);
        // A later compile sweeps what nobody holds.
        let _s3 = CompiledService::compile_in(
            &{
                let mut svc = reviews(vec![]);
                svc.clusters = vec![cluster(None, &["10.9.9.9:1"])];
                svc
            },
            &states,
        );
        assert!(states.endpoint_count() < n);
        assert_eq!(states.endpoint_count(), 1);
    }

    #[test]
    fn terminating_and_unhealthy_endpoints() {
        let mut svc = reviews(vec![]);
        let eps = &mut svc.clusters[0].endpoints;
        eps[0].serving = false;
        eps[1].terminating = true;
        let s = CompiledService::compile(&svc).unwrap();
        let c = default_cluster(&s);
        let mut rng = Rng::with_seed(1);
        for _ in 0..20 {
            assert_eq!(
                c.pick(&mut rng, &[]).unwrap().addr.ip().to_string(),
                "10.0.0.3"
            );
        }
        // Only a terminating one left: it still gets requests.
        svc.clusters[0].endpoints[2].serving = false;
        let s = CompiledService::compile(&svc).unwrap();
        let c = default_cluster(&s);
        assert_eq!(
            c.pick(&mut rng, &[]).unwrap().addr.ip().to_string(),
            "10.0.0.2"
        );
        // None serving: no healthy upstream.
        svc.clusters[0].endpoints[1].serving = false;
        let s = CompiledService::compile(&svc).unwrap();
        assert!(!default_cluster(&s).has_healthy());
        assert!(default_cluster(&s).pick(&mut rng, &[]).is_none());
    }

    #[test]
    fn retries_avoid_failed_endpoints() {
        let s = one_cluster(LoadBalancer::Random, &LbStates::default());
        let c = default_cluster(&s);
        let mut rng = Rng::with_seed(9);
        let failed = [c.endpoints[0].addr, c.endpoints[1].addr];
        for _ in 0..50 {
            assert_eq!(c.pick(&mut rng, &failed).unwrap().addr, c.endpoints[2].addr);
        }
        // Everything failed: any endpoint again.
        let all: Vec<_> = c.endpoints.iter().map(|e| e.addr).collect();
        assert!(c.pick(&mut rng, &all).is_some());
    }

    #[test]
    fn passthrough_picks_nothing_but_is_healthy() {
        let s = one_cluster(LoadBalancer::Passthrough, &LbStates::default());
        let c = default_cluster(&s);
        assert!(c.has_healthy());
        assert!(c.pick(&mut Rng::with_seed(1), &[]).is_none());
    }
}
