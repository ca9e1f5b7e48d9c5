//! Load balancing within a cluster, and the state it keeps across config updates.
//!
//! Candidates are the endpoints that serve and are not terminating; when there are none,
//! the terminating ones that still serve; when there are none either, nothing (the
//! request gets 503 `UH`). `LEAST_REQUEST` is Envoy's power of two choices on the
//! endpoints' in-flight counts, `ROUND_ROBIN` a cursor per cluster, `RANDOM` uniform.
//! `PASSTHROUGH` picks no endpoint: the request goes to the original destination.
//!
//! `consistentHash` ([`HashRing`]): rendezvous hashing. A request's key is hashed
//! ([`hash_key`]: FNV-1a then a 64-bit finalizer, the same in every proxy and version),
//! mixed with each candidate's address hash, and the candidate in rotation with the
//! highest score takes it. A key stays on its endpoint while that endpoint stays: an
//! endpoint that goes moves only its own keys (each to the next best), one that comes
//! takes its fair share from all, and an endpoint ejected by outlier detection hands
//! its keys to their next best until it is back. There is no ring to size:
//! `ringHash.minimumRingSize` and `maglev.tableSize` do not apply.
//! A request without the key is balanced as the cluster's simple balancer says.
//!
//! In-flight counters and cursors are atomics shared by every worker thread. They live
//! in the compiled cluster, and [`LbStates`] hands the same ones to the next
//! compilation of a cluster of the same name (and endpoint of the same address), so a
//! config update keeps them; it holds them weakly, so state of endpoints that are gone
//! goes away with the last request or config that used it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use fastrand::Rng;
use hyper::HeaderMap;
use hyper::header::HeaderValue;
use mesh_config::{HashKey, LoadBalancer};

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

/// A 64-bit hash of `bytes`, stable across processes and builds (FNV-1a, then
/// SplitMix64's finalizer).
pub(crate) fn hash_key(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

/// A request's consistent-hash key, hashed: the header's (first) value, the cookie's,
/// the query parameter's (as sent, not decoded), or the client's address. `None`: the
/// request has no such key. A cookie key with a `ttl` that the request lacks is made
/// up: the second value is the `Set-Cookie` to answer with (Envoy's form: the value
/// quoted, `Max-Age` in seconds unless the ttl is 0, `Path` when given, `HttpOnly`).
pub(crate) fn request_hash(
    key: &HashKey,
    headers: &HeaderMap,
    uri: &hyper::Uri,
    client: IpAddr,
    rng: &mut Rng,
) -> (Option<u64>, Option<HeaderValue>) {
    match key {
        HashKey::Header(name) => (
            headers.get(name.as_str()).map(|v| hash_key(v.as_bytes())),
            None,
        ),
        HashKey::SourceIp => (Some(hash_key(client.to_string().as_bytes())), None),
        HashKey::QueryParameter(name) => {
            let value = uri.query().and_then(|q| {
                q.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == name).then_some(v)
                })
            });
            (value.map(|v| hash_key(v.as_bytes())), None)
        }
        HashKey::Cookie { name, path, ttl_ms } => {
            if let Some(v) = cookie(headers, name) {
                return (Some(hash_key(v.as_bytes())), None);
            }
            let Some(ttl) = ttl_ms else {
                return (None, None);
            };
            let value = format!("{:016x}", rng.u64(..));
            let mut set = format!("{name}=\"{value}\"");
            if *ttl > 0 {
                set.push_str(&format!("; Max-Age={}", ttl.div_ceil(1000)));
            }
            if let Some(p) = path {
                set.push_str(&format!("; Path={p}"));
            }
            set.push_str("; HttpOnly");
            (
                Some(hash_key(value.as_bytes())),
                HeaderValue::from_str(&set).ok(),
            )
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers, quotes removed.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.trim_matches('"'))
        })
}

/// A cluster's consistent hash (rendezvous hashing): each candidate's address hash; a
/// key goes to the candidate in rotation whose mix with the key scores highest.
#[derive(Debug, Default)]
pub struct HashRing {
    /// (hash of the endpoint's address, endpoint index).
    nodes: Vec<(u64, u32)>,
}

impl HashRing {
    /// Over `candidates` (indexes into the cluster's endpoints).
    pub(crate) fn new(endpoints: &[CompiledEndpoint], candidates: &[usize]) -> HashRing {
        let nodes = candidates
            .iter()
            .filter_map(|&i| {
                let e = endpoints.get(i)?;
                Some((
                    hash_key(e.addr.to_string().as_bytes()),
                    u32::try_from(i).ok()?,
                ))
            })
            .collect();
        HashRing { nodes }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The endpoint index that scores highest for `hash` among those `ok` takes.
    fn best(&self, hash: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        self.nodes
            .iter()
            .filter(|(_, i)| ok(*i as usize))
            .max_by_key(|(h, _)| mix(hash ^ h))
            .map(|(_, i)| *i as usize)
    }
}

/// SplitMix64's finalizer.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
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

    /// The endpoint for a request whose key hashed to `hash` (see the module docs): the
    /// candidate in rotation that scores highest. `None`: the cluster does not hash, or
    /// no candidate is in rotation.
    pub fn pick_hashed(&self, hash: u64) -> Option<&CompiledEndpoint> {
        let ring = self.ring.as_ref()?;
        let now = now_ms();
        let ejections = self.outlier.is_some() && self.ejections_apply(now);
        let i = ring.best(hash, |i| {
            !ejections
                || self
                    .endpoints
                    .get(i)
                    .is_some_and(|e| !self.out_of_rotation(e, now))
        })?;
        self.endpoints.get(i)
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

    fn hashed(addrs: &[&str], states: &LbStates) -> CompiledService {
        let mut svc = reviews(vec![]);
        svc.clusters = vec![cluster(None, addrs)];
        svc.clusters[0].consistent_hash = Some(HashKey::Header("x-user".into()));
        CompiledService::compile_in(&svc, states).unwrap()
    }

    fn users() -> Vec<u64> {
        (0..2000)
            .map(|u| hash_key(format!("user-{u}").as_bytes()))
            .collect()
    }

    #[test]
    fn a_key_stays_on_its_endpoint_and_keys_spread() {
        let addrs = ["10.0.0.1:9080", "10.0.0.2:9080", "10.0.0.3:9080"];
        let s = hashed(&addrs, &LbStates::default());
        let c = default_cluster(&s);
        assert_eq!(c.ring.as_ref().unwrap().len(), 3);
        let mut per: HashMap<SocketAddr, usize> = HashMap::new();
        for h in users() {
            let a = c.pick_hashed(h).unwrap().addr;
            for _ in 0..3 {
                assert_eq!(c.pick_hashed(h).unwrap().addr, a);
            }
            *per.entry(a).or_default() += 1;
        }
        // 2000 keys over 3 endpoints: each within a third ± 8 % (beyond 7 standard
        // deviations).
        assert_eq!(per.len(), 3, "{per:?}");
        for n in per.values() {
            assert!((507..=827).contains(n), "{per:?}");
        }
    }

    #[test]
    fn only_the_keys_of_an_endpoint_that_goes_move() {
        let states = LbStates::default();
        let before = hashed(
            &["10.0.0.1:9080", "10.0.0.2:9080", "10.0.0.3:9080"],
            &states,
        );
        let after = hashed(&["10.0.0.1:9080", "10.0.0.3:9080"], &states);
        let gone: SocketAddr = "10.0.0.2:9080".parse().unwrap();
        let (b, a) = (default_cluster(&before), default_cluster(&after));
        let mut moved = 0;
        for h in users() {
            let (x, y) = (
                b.pick_hashed(h).unwrap().addr,
                a.pick_hashed(h).unwrap().addr,
            );
            if x != gone {
                assert_eq!(x, y, "a key of a staying endpoint moved");
            } else {
                moved += 1;
            }
        }
        assert!(moved > 400, "{moved}");
        // The ring is over the endpoints, not the order they come in.
        let reordered = hashed(
            &["10.0.0.3:9080", "10.0.0.1:9080", "10.0.0.2:9080"],
            &states,
        );
        for h in users().into_iter().take(200) {
            assert_eq!(
                b.pick_hashed(h).unwrap().addr,
                default_cluster(&reordered).pick_hashed(h).unwrap().addr
            );
        }
    }

    #[test]
    fn an_ejected_endpoint_lends_its_keys_until_it_is_back() {
        let mut svc = reviews(vec![]);
        svc.clusters = vec![cluster(
            None,
            &["10.0.0.1:9080", "10.0.0.2:9080", "10.0.0.3:9080"],
        )];
        svc.clusters[0].consistent_hash = Some(HashKey::Header("x-user".into()));
        svc.clusters[0].outlier_detection = Some(mesh_config::resilience::OutlierDetection {
            consecutive_5xx_errors: 1,
            interval_ms: 1000,
            base_ejection_time_ms: 60_000,
            max_ejection_percent: 100,
            ..Default::default()
        });
        let s = CompiledService::compile_in(&svc, &LbStates::default()).unwrap();
        let c = default_cluster(&s);
        let before: Vec<SocketAddr> = users()
            .iter()
            .map(|&h| c.pick_hashed(h).unwrap().addr)
            .collect();
        let victim = c.endpoints.iter().find(|e| e.addr == before[0]).unwrap();
        assert!(c.record_outcome(victim, crate::http::resilience::Outcome::Status(503)));
        for (h, was) in users().iter().zip(&before) {
            let now = c.pick_hashed(*h).unwrap().addr;
            if *was == victim.addr {
                assert_ne!(now, victim.addr);
            } else {
                assert_eq!(now, *was, "only the ejected endpoint's keys move");
            }
        }
    }

    #[test]
    fn request_keys() {
        let mut rng = Rng::with_seed(7);
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let uri: hyper::Uri = "/shop?cart=abc&user=bob&x".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("jason"));
        h.append(
            hyper::header::COOKIE,
            HeaderValue::from_static("a=1; session=\"s-42\""),
        );
        let key = |k: HashKey, h: &HeaderMap, rng: &mut Rng| request_hash(&k, h, &uri, ip, rng);
        assert_eq!(
            key(HashKey::Header("x-user".into()), &h, &mut rng),
            (Some(hash_key(b"jason")), None)
        );
        assert_eq!(key(HashKey::Header("x-none".into()), &h, &mut rng).0, None);
        assert_eq!(
            key(HashKey::QueryParameter("user".into()), &h, &mut rng).0,
            Some(hash_key(b"bob"))
        );
        assert_eq!(
            key(HashKey::QueryParameter("x".into()), &h, &mut rng).0,
            Some(hash_key(b""))
        );
        assert_eq!(
            key(HashKey::QueryParameter("y".into()), &h, &mut rng).0,
            None
        );
        assert_eq!(
            key(HashKey::SourceIp, &h, &mut rng).0,
            Some(hash_key(b"10.1.2.3"))
        );
        let cookie = |ttl_ms, path: Option<&str>| HashKey::Cookie {
            name: "session".into(),
            path: path.map(str::to_owned),
            ttl_ms,
        };
        assert_eq!(
            key(cookie(Some(60_000), None), &h, &mut rng),
            (Some(hash_key(b"s-42")), None)
        );
        // Without the cookie: none without a ttl; made up with one, and sent back.
        let empty = HeaderMap::new();
        assert_eq!(key(cookie(None, None), &empty, &mut rng), (None, None));
        let (hash, set) = key(cookie(Some(60_500), Some("/shop")), &empty, &mut rng);
        let set = set.unwrap();
        let set = set.to_str().unwrap();
        let value = set
            .strip_prefix("session=\"")
            .and_then(|r| r.split_once('"'))
            .map(|(v, _)| v)
            .unwrap();
        assert_eq!(value.len(), 16);
        assert_eq!(hash, Some(hash_key(value.as_bytes())));
        assert!(
            set.ends_with("\"; Max-Age=61; Path=/shop; HttpOnly"),
            "{set}"
        );
        let (_, session) = key(cookie(Some(0), None), &empty, &mut rng);
        assert!(
            session.unwrap().to_str().unwrap().ends_with("\"; HttpOnly"),
            "a session cookie has no Max-Age"
        );
    }
}
