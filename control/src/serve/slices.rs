//! `discovery.k8s.io/v1beta1` EndpointSlices (all v1.20 serves) as the `v1` type the
//! translation reads, converted as the API server converts between the two:
//! per endpoint, `topology` becomes `deprecatedTopology`, its
//! `topology.kubernetes.io/zone` becomes `zone` and its `kubernetes.io/hostname` becomes
//! `nodeName` (unless `nodeName` is set). Everything else has the same shape.
//!
//! [`V1beta1Slice`] is what the v1beta1 watcher stores: each slice is converted once, as
//! the watch delivers it, not on every snapshot build.

use std::borrow::Cow;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Deserializer};
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

/// A `discovery.k8s.io/v1beta1` EndpointSlice as the API serves it, held as `v1`
/// (converted by [`from_v1beta1`] while it is deserialized). A slice that does not
/// convert keeps only its metadata (so the store still tracks it) and is left out of
/// the translation's input, as before the conversion moved here.
#[derive(Debug, Clone)]
pub struct V1beta1Slice {
    slice: std::sync::Arc<EndpointSlice>,
    converted: bool,
}

impl V1beta1Slice {
    /// The `v1` slice; `None` when it did not convert.
    pub fn v1(&self) -> Option<&std::sync::Arc<EndpointSlice>> {
        self.converted.then_some(&self.slice)
    }
}

impl<'de> Deserialize<'de> for V1beta1Slice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<V1beta1Slice, D::Error> {
        let json = Value::deserialize(d)?;
        // The metadata must parse, as it must for a dynamic object.
        let metadata = ObjectMeta::deserialize(json.get("metadata").unwrap_or(&Value::Null))
            .map_err(serde::de::Error::custom)?;
        Ok(match from_v1beta1(json) {
            Ok(slice) => V1beta1Slice {
                slice: std::sync::Arc::new(slice),
                converted: true,
            },
            Err(e) => {
                tracing::debug!(
                    slice = metadata.name.as_deref().unwrap_or_default(),
                    error = %e,
                    "v1beta1 EndpointSlice not converted"
                );
                V1beta1Slice {
                    slice: std::sync::Arc::new(EndpointSlice {
                        metadata,
                        ..EndpointSlice::default()
                    }),
                    converted: false,
                }
            }
        })
    }
}

impl kube::Resource for V1beta1Slice {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "EndpointSlice".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "discovery.k8s.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1beta1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "endpointslices".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.slice.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut std::sync::Arc::make_mut(&mut self.slice).metadata
    }
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

    #[test]
    fn the_stored_type_converts_once_and_keeps_what_does_not_convert() {
        use kube::Resource as _;
        let good: V1beta1Slice = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
            "metadata": {"name": "r-1", "namespace": "default"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.0.5"],
                           "topology": {"topology.kubernetes.io/zone": "z1"}}]
        }))
        .unwrap();
        let v1 = good.v1().unwrap();
        assert_eq!(v1.endpoints[0].zone.as_deref(), Some("z1"));
        assert_eq!(good.meta().name.as_deref(), Some("r-1"));
        assert_eq!(
            V1beta1Slice::url_path(&(), Some("default")),
            "/apis/discovery.k8s.io/v1beta1/namespaces/default/endpointslices"
        );

        // An address type that is no string: the store keeps the metadata, the
        // translation does not see it.
        let bad: V1beta1Slice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "r-2", "namespace": "default"},
            "addressType": 7
        }))
        .unwrap();
        assert!(bad.v1().is_none());
        assert_eq!(bad.meta().name.as_deref(), Some("r-2"));

        // Metadata that does not parse fails, as it does for a dynamic object.
        let no_meta = serde_json::from_value::<V1beta1Slice>(serde_json::json!({
            "metadata": {"name": 3}
        }));
        assert!(no_meta.is_err());
    }
}
