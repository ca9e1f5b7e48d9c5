//! `discovery.k8s.io/v1beta1` EndpointSlices (all v1.20 serves) as the `v1` type the
//! translation reads, converted as the API server converts between the two:
//! per endpoint, `topology` becomes `deprecatedTopology`, its
//! `topology.kubernetes.io/zone` becomes `zone` and its `kubernetes.io/hostname` becomes
//! `nodeName` (unless `nodeName` is set). Everything else has the same shape.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;

const ZONE: &str = "topology.kubernetes.io/zone";
const HOSTNAME: &str = "kubernetes.io/hostname";

/// A v1beta1 slice (as JSON) → v1.
pub fn from_v1beta1(mut slice: Value) -> Result<EndpointSlice, serde_json::Error> {
    if let Some(obj) = slice.as_object_mut() {
        obj.insert("apiVersion".into(), "discovery.k8s.io/v1".into());
        obj.insert("kind".into(), "EndpointSlice".into());
        if let Some(Value::Array(eps)) = obj.get_mut("endpoints") {
            for ep in eps.iter_mut().filter_map(Value::as_object_mut) {
                let Some(Value::Object(mut topo)) = ep.remove("topology") else {
                    continue;
                };
                if let Some(zone) = topo.remove(ZONE)
                    && !ep.contains_key("zone")
                {
                    ep.insert("zone".into(), zone);
                }
                if let Some(host) = topo.remove(HOSTNAME)
                    && !ep.contains_key("nodeName")
                {
                    ep.insert("nodeName".into(), host);
                }
                if !topo.is_empty() {
                    ep.insert("deprecatedTopology".into(), Value::Object(topo));
                }
            }
        }
    }
    serde_json::from_value(slice)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn converts_topology_and_keeps_the_rest() {
        let v1beta1 = serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1beta1",
            "kind": "EndpointSlice",
            "metadata": {"name": "reviews-abc", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "reviews"}},
            "addressType": "IPv4",
            "endpoints": [{
                "addresses": ["10.1.0.5"],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "targetRef": {"kind": "Pod", "name": "reviews-v1-x", "namespace": "default"},
                "topology": {"kubernetes.io/hostname": "node-1",
                             "topology.kubernetes.io/zone": "z1",
                             "example.com/rack": "r7"}
            }, {
                "addresses": ["10.1.0.6"],
                "conditions": {"ready": false}
            }],
            "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}]
        });
        let s = from_v1beta1(v1beta1).unwrap();
        assert_eq!(s.address_type, "IPv4");
        assert_eq!(s.metadata.name.as_deref(), Some("reviews-abc"));
        let ep = &s.endpoints[0];
        assert_eq!(ep.addresses, ["10.1.0.5"]);
        assert_eq!(ep.zone.as_deref(), Some("z1"));
        assert_eq!(ep.node_name.as_deref(), Some("node-1"));
        let topo = ep.deprecated_topology.as_ref().unwrap();
        assert_eq!(topo.len(), 1);
        assert_eq!(topo["example.com/rack"], "r7");
        assert_eq!(ep.conditions.as_ref().unwrap().serving, Some(true));
        assert_eq!(
            s.endpoints[1].conditions.as_ref().unwrap().ready,
            Some(false)
        );
        let ports = s.ports.unwrap();
        assert_eq!(ports[0].port, Some(9080));
    }
}
