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

/// Load-balancing state by cluster name (and endpoint address), held weakly. Keep one
/// for the process and compile every Service with it
/// ([`super::CompiledService::compile_in`]).
#[derive(Debug, Default)]
pub struct LbStates {
    endpoints: Mutex<HashMap<(String, SocketAddr), Weak<AtomicU32>>>,
    cursors: Mutex<HashMap<String, Weak<AtomicUsize>>>,
}

impl LbStates {
    pub(crate) fn in_flight(&self, cluster: &str, addr: SocketAddr) -> Arc<AtomicU32> {
        let mut map = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        let key = (cluster.to_owned(), addr);
        if let Some(c) = map.get(&key).and_then(Weak::upgrade) {
            return c;
        }
        let c = Arc::new(AtomicU32::new(0));
        map.insert(key, Arc::downgrade(&c));
        c
    }

    pub(crate) fn cursor(&self, cluster: &str) -> Arc<AtomicUsize> {
        let mut map = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(cluster).and_then(Weak::upgrade) {
            return c;
        }
        // Envoy starts each round-robin at a random place.
        let c = Arc::new(AtomicUsize::new(fastrand::usize(..1024)));
        map.insert(cluster.to_owned(), Arc::downgrade(&c));
        c
    }

    /// Forgets state nobody holds any more.
    pub(crate) fn sweep(&self) {
        self.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, w| w.strong_count() > 0);
        self.cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, w| w.strong_count() > 0);
    }

    /// How many endpoints have state (for tests and `/config_dump`).
    pub fn endpoint_count(&self) -> usize {
        self.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
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

    /// Whether any endpoint may take a request (always, for `PASSTHROUGH`).
    pub fn has_healthy(&self) -> bool {
        self.load_balancer == LoadBalancer::Passthrough || !self.candidates().is_empty()
    }

    /// Picks an endpoint for a request, avoiding those in `avoid` (endpoints that
    /// already failed this request) while others remain. `None`: no healthy endpoint,
    /// or a `PASSTHROUGH` cluster.
    pub fn pick(&self, rng: &mut Rng, avoid: &[SocketAddr]) -> Option<&CompiledEndpoint> {
        if self.load_balancer == LoadBalancer::Passthrough {
            return None;
        }
        let all = self.candidates();
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
