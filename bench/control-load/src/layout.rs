//! The benchmark's cluster, as data: names, addresses and objects of one scale, and which
//! keys each simulated proxy subscribes to. Everything is derived from the indexes, so the
//! driver never has to read objects back (only the ClusterIPs the API server allocates).

use std::net::Ipv4Addr;

use serde_json::{Value, json};

/// Services `svc-<i>` spread over `namespaces` namespaces `bench<services>-<n>`, each with
/// one EndpointSlice of `eps` endpoints (10.200.0.0 upwards) on ports http 8080 and grpc
/// 9090; with `pods`, endpoint 0 of each Service is a real Pod (`svc-<i>-pod`, labels
/// `app`/`version`, status.podIP set). Every tenth Service (and the hub, `svc-0`) has a
/// VirtualService.
#[derive(Debug, Clone)]
pub struct Layout {
    pub services: usize,
    pub eps: usize,
    pub namespaces: usize,
    pub pods: bool,
}

/// Keys each proxy subscribes to, besides its own pod IP and the hub.
pub const SERVICES_PER_PROXY: usize = 4;
/// The shared Service every proxy subscribes to (a change to it reaches every proxy).
pub const HUB: usize = 0;

pub const HTTP_PORT: u16 = 8080;

impl Layout {
    pub fn ns(&self, i: usize) -> String {
        format!("bench{}-{}", self.services, i % self.namespaces)
    }

    pub fn all_namespaces(&self) -> Vec<String> {
        (0..self.namespaces).map(|n| self.ns(n)).collect()
    }

    pub fn name(i: usize) -> String {
        format!("svc-{i}")
    }

    pub fn fqdn(&self, i: usize) -> String {
        format!("svc-{i}.{}.svc.cluster.local", self.ns(i))
    }

    pub fn pod_name(i: usize) -> String {
        format!("svc-{i}-pod")
    }

    pub fn ep_ip(&self, i: usize, e: usize) -> Ipv4Addr {
        offset(Ipv4Addr::new(10, 200, 0, 0), i * self.eps + e)
    }

    /// The address a changed endpoint gets in change `k` (unique per change).
    pub fn marker_ip(k: usize) -> Ipv4Addr {
        offset(Ipv4Addr::new(10, 250, 0, 0), k)
    }

    /// Services with a VirtualService before any change.
    pub fn has_baseline_vs(&self, i: usize) -> bool {
        i == HUB || i % 10 == 5
    }

    /// The Services proxy `j` subscribes to besides the hub: spread so that each non-hub
    /// Service has about the same number of subscribers.
    pub fn proxy_services(&self, j: usize) -> Vec<usize> {
        let others = self.services.saturating_sub(1).max(1);
        (0..SERVICES_PER_PROXY)
            .map(|n| 1 + (j * SERVICES_PER_PROXY + n) % others)
            .filter(|&i| i < self.services)
            .collect()
    }

    /// Proxy `j` is the pod of Service `j mod services` (pod name, namespace, pod IP).
    pub fn proxy_identity(&self, j: usize) -> (String, String, Ipv4Addr) {
        let i = j % self.services;
        (Self::pod_name(i), self.ns(i), self.ep_ip(i, 0))
    }

    pub fn service(&self, i: usize) -> Value {
        let name = Self::name(i);
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": self.ns(i), "labels": {"app": name}},
            "spec": {
                "selector": {"app": name},
                "ports": [
                    {"name": "http", "port": 80, "targetPort": HTTP_PORT, "protocol": "TCP"},
                    {"name": "grpc", "port": 9090, "targetPort": 9090, "protocol": "TCP"}
                ]
            }
        })
    }

    /// Endpoint `e` of Service `i` at `ip`.
    fn endpoint(&self, i: usize, e: usize, ip: Ipv4Addr) -> Value {
        let mut ep = json!({"addresses": [ip.to_string()], "conditions": {"ready": true}});
        if e == 0 && self.pods {
            ep["targetRef"] =
                json!({"kind": "Pod", "name": Self::pod_name(i), "namespace": self.ns(i)});
        }
        ep
    }

    /// The endpoints of Service `i`, the last one moved to `last` if given.
    pub fn endpoints(&self, i: usize, last: Option<Ipv4Addr>) -> Value {
        let eps: Vec<Value> = (0..self.eps)
            .map(|e| {
                let ip = match last {
                    Some(ip) if e + 1 == self.eps => ip,
                    _ => self.ep_ip(i, e),
                };
                self.endpoint(i, e, ip)
            })
            .collect();
        Value::Array(eps)
    }

    pub fn slice_name(i: usize) -> String {
        format!("svc-{i}-bench")
    }

    pub fn slice(&self, i: usize, api_version: &str) -> Value {
        json!({
            "apiVersion": api_version,
            "kind": "EndpointSlice",
            "metadata": {
                "name": Self::slice_name(i),
                "namespace": self.ns(i),
                "labels": {
                    "kubernetes.io/service-name": Self::name(i),
                    "endpointslice.kubernetes.io/managed-by": "mesh-control-load"
                }
            },
            "addressType": "IPv4",
            "endpoints": self.endpoints(i, None),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "protocol": "TCP"},
                {"name": "grpc", "port": 9090, "protocol": "TCP"}
            ]
        })
    }

    pub fn pod(&self, i: usize) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": Self::pod_name(i),
                "namespace": self.ns(i),
                "labels": {"app": Self::name(i), "version": "v1"}
            },
            "spec": {"containers": [{
                "name": "app",
                "image": "bench/app:1",
                "ports": [{"name": "http", "containerPort": HTTP_PORT}]
            }]}
        })
    }

    pub fn pod_status(&self, i: usize) -> Value {
        let ip = self.ep_ip(i, 0).to_string();
        json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
    }

    pub fn vs_name(i: usize) -> String {
        format!("vs-svc-{i}")
    }

    /// The VirtualService of Service `i`: a header-matched canary rule whose header value
    /// is `marker` (so each edit shows in the pushed resource), then a default route.
    pub fn vs_spec(&self, i: usize, marker: &str) -> Value {
        let host = self.fqdn(i);
        json!({
            "hosts": [host],
            "http": [
                {
                    "name": "canary",
                    "match": [{"headers": {"x-bench-round": {"exact": marker}}}],
                    "route": [{"destination": {"host": host}}],
                    "timeout": "2s"
                },
                {"name": "default", "route": [{"destination": {"host": host}}]}
            ]
        })
    }

    pub fn vs(&self, i: usize, marker: &str) -> Value {
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": Self::vs_name(i), "namespace": self.ns(i)},
            "spec": self.vs_spec(i, marker)
        })
    }
}

fn offset(base: Ipv4Addr, n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(u32::try_from(n).unwrap_or(u32::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_spread_evenly_and_skip_the_hub() {
        let l = Layout {
            services: 1000,
            eps: 10,
            namespaces: 10,
            pods: true,
        };
        let mut count = vec![0usize; l.services];
        for j in 0..1000 {
            let s = l.proxy_services(j);
            assert_eq!(s.len(), SERVICES_PER_PROXY);
            assert!(!s.contains(&HUB));
            for i in s {
                count[i] += 1;
            }
        }
        assert!(
            count[1..].iter().all(|&c| (4..=5).contains(&c)),
            "{count:?}"
        );
        assert_eq!(l.ep_ip(999, 9).to_string(), "10.200.39.15");
        assert_eq!(l.fqdn(12), "svc-12.bench1000-2.svc.cluster.local");
    }
}
