//! What the translation found wrong, reported three ways: a log line once per distinct
//! diagnostic (while it lasts), a count in `mesh_control_config_errors_total{kind}`, and a
//! Kubernetes Event (`Warning`, reason `InvalidConfig`) on the object, at most once per
//! object generation. Nothing here ever stops the control plane.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::PostParams;
use kube::{Api, Client, Resource};

use crate::serve::metrics::Metrics;
use crate::translate::{Diagnostic, Objects};

/// Event reason.
pub const REASON: &str = "InvalidConfig";
/// Event source component.
pub const COMPONENT: &str = "mesh-control";
/// Events carry at most this much of the joined messages.
const MAX_MESSAGE: usize = 1024;

type DiagKey = (String, String, String, String, String);
type ObjKey = (String, String, String);

fn diag_key(d: &Diagnostic) -> DiagKey {
    (
        d.kind.clone(),
        d.namespace.clone(),
        d.name.clone(),
        d.field.clone(),
        d.message.clone(),
    )
}

/// The object a diagnostic names, as an Event refers to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: Option<String>,
    /// `metadata.generation`, or the resourceVersion for kinds without one (Services).
    pub generation: String,
}

fn from_meta<K: Resource<DynamicType = ()>>(m: &ObjectMeta) -> Option<ObjRef> {
    Some(ObjRef {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        namespace: m.namespace.clone().unwrap_or_default(),
        name: m.name.clone()?,
        uid: m.uid.clone()?,
        resource_version: m.resource_version.clone(),
        generation: m
            .generation
            .map(|g| g.to_string())
            .or_else(|| m.resource_version.clone())
            .unwrap_or_default(),
    })
}

fn from_json(v: &serde_json::Value) -> Option<ObjRef> {
    let m = v.get("metadata")?;
    let s = |o: &serde_json::Value, k: &str| o.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    let rv = s(m, "resourceVersion");
    Some(ObjRef {
        api_version: s(v, "apiVersion")?,
        kind: s(v, "kind")?,
        namespace: s(m, "namespace").unwrap_or_default(),
        name: s(m, "name")?,
        uid: s(m, "uid")?,
        generation: m
            .get("generation")
            .and_then(|g| g.as_i64())
            .map(|g| g.to_string())
            .or_else(|| rv.clone())
            .unwrap_or_default(),
        resource_version: rv,
    })
}

/// The object `kind namespace/name` in `objects`.
pub fn find(objects: &Objects, kind: &str, namespace: &str, name: &str) -> Option<ObjRef> {
    fn typed<K: Resource<DynamicType = ()>>(
        list: &[Arc<K>],
        namespace: &str,
        name: &str,
    ) -> Option<ObjRef> {
        list.iter()
            .map(|o| o.meta())
            .find(|m| {
                m.name.as_deref() == Some(name)
                    && m.namespace.as_deref().unwrap_or_default() == namespace
            })
            .and_then(from_meta::<K>)
    }
    let json = |list: &[serde_json::Value]| {
        list.iter()
            .filter_map(from_json)
            .find(|r| r.namespace == namespace && r.name == name)
    };
    match kind {
        "Service" => typed(&objects.services, namespace, name),
        "Pod" => typed(&objects.pods, namespace, name),
        "Namespace" => typed(&objects.namespaces, "", name),
        "EndpointSlice" => typed(&objects.endpoint_slices, namespace, name),
        "VirtualService" => json(&objects.virtual_services),
        "DestinationRule" => json(&objects.destination_rules),
        "PeerAuthentication" => json(&objects.peer_authentications),
        "AuthorizationPolicy" => json(&objects.authorization_policies),
        "Gateway" => json(&objects.gateways),
        _ => None,
    }
}

/// The reporter; owned by the engine (one build at a time).
pub struct Reporter {
    metrics: Arc<Metrics>,
    client: Option<Client>,
    /// Who reports (the pod name, else the host name).
    instance: String,
    /// The diagnostics of the last build (logged once while they last).
    seen: HashSet<DiagKey>,
    /// Per object: the (uid, generation) an Event was made for.
    evented: HashMap<ObjKey, (String, String)>,
}

impl Reporter {
    pub fn new(metrics: Arc<Metrics>, client: Option<Client>) -> Reporter {
        let instance = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| COMPONENT.to_owned());
        Reporter {
            metrics,
            client,
            instance,
            seen: HashSet::new(),
            evented: HashMap::new(),
        }
    }

    /// A build without diagnostics: what was wrong is fixed (a diagnostic that comes back
    /// is logged again). Which generations had an Event is kept until the next report.
    pub fn clean(&mut self) {
        self.seen.clear();
    }

    /// Reports one build's diagnostics; Events are created in the background.
    pub fn report(&mut self, diags: &[Diagnostic], objects: &Objects) {
        let mut now_seen = HashSet::with_capacity(diags.len());
        let mut by_object: BTreeMap<ObjKey, Vec<&Diagnostic>> = BTreeMap::new();
        for d in diags {
            let k = diag_key(d);
            if !self.seen.contains(&k) && !now_seen.contains(&k) {
                tracing::warn!(
                    kind = %d.kind,
                    namespace = %d.namespace,
                    name = %d.name,
                    field = %d.field,
                    "invalid config: {}",
                    d.message
                );
                self.metrics.config_error(&d.kind);
            }
            now_seen.insert(k);
            by_object
                .entry((d.kind.clone(), d.namespace.clone(), d.name.clone()))
                .or_default()
                .push(d);
        }
        self.seen = now_seen;
        // Forget objects that are gone; an object that comes back is a new uid anyway.
        self.evented
            .retain(|(kind, ns, name), _| find(objects, kind, ns, name).is_some());
        for ((kind, ns, name), ds) in by_object {
            let Some(obj) = find(objects, &kind, &ns, &name) else {
                continue;
            };
            let id = (obj.uid.clone(), obj.generation.clone());
            let key = (kind, ns, name);
            if self.evented.get(&key) == Some(&id) {
                continue;
            }
            self.evented.insert(key, id);
            let message = event_message(&ds);
            if let Some(client) = self.client.clone() {
                let ev = event(&obj, message, &self.instance);
                tokio::spawn(async move {
                    let ns = ev.metadata.namespace.clone().unwrap_or_default();
                    let api: Api<Event> = Api::namespaced(client, &ns);
                    if let Err(e) = api.create(&PostParams::default(), &ev).await {
                        tracing::warn!(namespace = %ns, error = %e, "could not create an Event");
                    }
                });
            }
        }
    }
}

fn event_message(ds: &[&Diagnostic]) -> String {
    let mut msg = ds
        .iter()
        .map(|d| format!("{}: {}", d.field, d.message))
        .collect::<Vec<_>>()
        .join("; ");
    if msg.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE - 3;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
        msg.push_str("...");
    }
    msg
}

/// A core/v1 Event on `obj`.
pub fn event(obj: &ObjRef, message: String, instance: &str) -> Event {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let now = k8s_openapi::jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(0))
        .ok()
        .map(Time);
    // A cluster-scoped object's Events go to `default`, as kubectl and controllers do.
    let namespace = if obj.namespace.is_empty() {
        "default".to_owned()
    } else {
        obj.namespace.clone()
    };
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", obj.name)),
            namespace: Some(namespace),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some(obj.api_version.clone()),
            kind: Some(obj.kind.clone()),
            name: Some(obj.name.clone()),
            namespace: (!obj.namespace.is_empty()).then(|| obj.namespace.clone()),
            uid: Some(obj.uid.clone()),
            resource_version: obj.resource_version.clone(),
            ..Default::default()
        },
        reason: Some(REASON.into()),
        message: Some(message),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some(COMPONENT.into()),
            host: None,
        }),
        first_timestamp: now.clone(),
        last_timestamp: now,
        count: Some(1),
        reporting_component: Some(COMPONENT.into()),
        reporting_instance: Some(instance.to_owned()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn vs(generation: i64) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "r", "namespace": "ns", "uid": "u1",
                         "generation": generation, "resourceVersion": "9"},
            "spec": {}
        })
    }

    fn diag(msg: &str) -> Diagnostic {
        Diagnostic {
            kind: "VirtualService".into(),
            namespace: "ns".into(),
            name: "r".into(),
            field: "spec.http[0]".into(),
            message: msg.into(),
        }
    }

    #[test]
    fn counts_each_distinct_diagnostic_once_and_events_once_per_generation() {
        let metrics = Arc::new(Metrics::default());
        let mut r = Reporter::new(metrics.clone(), None);
        let mut objects = Objects {
            virtual_services: vec![vs(1)],
            ..Default::default()
        };
        r.report(&[diag("a"), diag("b")], &objects);
        r.report(&[diag("a"), diag("b")], &objects);
        assert!(metrics.render().contains("{kind=\"VirtualService\"} 2\n"));
        assert_eq!(
            r.evented
                .get(&("VirtualService".into(), "ns".into(), "r".into())),
            Some(&("u1".into(), "1".into()))
        );
        objects.virtual_services = vec![vs(2)];
        r.report(&[diag("c")], &objects);
        assert!(metrics.render().contains("{kind=\"VirtualService\"} 3\n"));
        assert_eq!(
            r.evented
                .get(&("VirtualService".into(), "ns".into(), "r".into())),
            Some(&("u1".into(), "2".into()))
        );
        // Deleted: forgotten.
        objects.virtual_services.clear();
        r.report(&[], &objects);
        assert!(r.evented.is_empty());
    }

    #[test]
    fn event_names_the_object() {
        let obj = from_json(&vs(3)).unwrap();
        let ev = event(&obj, "spec.http[0]: bad".into(), "mesh-control-0");
        assert_eq!(ev.reason.as_deref(), Some(REASON));
        assert_eq!(ev.type_.as_deref(), Some("Warning"));
        assert_eq!(ev.metadata.namespace.as_deref(), Some("ns"));
        let io = &ev.involved_object;
        assert_eq!(io.kind.as_deref(), Some("VirtualService"));
        assert_eq!(io.api_version.as_deref(), Some("networking.istio.io/v1"));
        assert_eq!(io.uid.as_deref(), Some("u1"));
        assert!(ev.first_timestamp.is_some());
        let long = [diag(&"x".repeat(2000))];
        let refs: Vec<&Diagnostic> = long.iter().collect();
        assert!(event_message(&refs).len() <= MAX_MESSAGE);
    }
}
