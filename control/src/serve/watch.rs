//! The watchers: one kube-runtime reflector per kind, each marking [`Changes`] on every
//! event, and [`Watchers::objects`] to read them all as the translation's
//! [`Objects`].
//!
//! - Services, Pods, Namespaces: typed. EndpointSlices: `discovery.k8s.io/v1`, else
//!   `v1beta1`, converted to `v1` once as the watch delivers each slice
//!   ([`crate::serve::slices::V1beta1Slice`]).
//! - Every object is trimmed as it arrives ([`crate::serve::trim`]): what the translation
//!   never reads is not kept.
//! - VirtualService, DestinationRule, Gateway (`networking.istio.io`), PeerAuthentication,
//!   AuthorizationPolicy (`security.istio.io`): dynamic objects in the preferred served version of their
//!   group ([`discovery::ISTIO_VERSIONS`]), asked again every
//!   `crd_interval`: a CRD that appears starts its watcher, one that goes away stops it
//!   (its objects with it), a new preferred version restarts it. Their absence never
//!   blocks readiness.
//! - Secrets, for Gateways' `credentialName`: two watches, field selectors
//!   `type=kubernetes.io/tls` and `type=Opaque` (Istio's generic `cert` / `key` layout),
//!   each Secret trimmed to its certificate and key, and the client CA and CRLs of such a
//!   Secret or of a `<credentialName>-cacert` one ([`trim::secret`]; an `Opaque` one
//!   without them keeps only its name). No other type is listed. They do not block
//!   readiness either (a Secret that arrives later is pushed like any change).
//!
//! [`Watchers::synced`] (what the first snapshot, and so readiness and every stream,
//! waits for): the core kinds listed once, then, for up to [`FULL_SYNC_WAIT`], the first
//! discovery round of the Istio groups and a first list of every Istio kind it found
//! served and of the Secrets. A proxy that reconnects to a replica just started must not
//! get a config without its VirtualServices, PeerAuthentications or
//! AuthorizationPolicies (a moment of routing ignored, of mTLS not required, of denied
//! callers let in); a kind whose list keeps failing (RBAC) delays readiness by that
//! bound, not forever, and is pushed when it comes.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use crate::serve::changes::Changes;
use crate::serve::discovery::{self, ISTIO_VERSIONS, SLICE_VERSIONS};
use crate::serve::slices::V1beta1Slice;
use crate::serve::trim;
use crate::translate::Objects;

/// How long [`Watchers::synced`] waits for the Istio kinds and Secrets once the core
/// kinds are listed.
pub const FULL_SYNC_WAIT: Duration = Duration::from_secs(30);

pub const ISTIO_GROUP: &str = "networking.istio.io";
pub const ISTIO_SECURITY_GROUP: &str = "security.istio.io";

/// A kind of `networking.istio.io` or `security.istio.io`, watched in whichever version
/// is served.
#[derive(Debug)]
pub struct IstioKind {
    pub group: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    current: RwLock<Option<Watched>>,
}

#[derive(Debug)]
struct Watched {
    version: String,
    store: Store<DynamicObject>,
    task: JoinHandle<()>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl IstioKind {
    fn new(group: &'static str, kind: &'static str, plural: &'static str) -> IstioKind {
        IstioKind {
            group,
            kind,
            plural,
            current: RwLock::new(None),
        }
    }

    /// The version watched now, if the kind is served.
    pub fn version(&self) -> Option<String> {
        self.read(|w| w.map(|w| w.version.clone()))
    }

    /// The store of the version watched now, if the kind is served.
    fn store(&self) -> Option<Store<DynamicObject>> {
        self.read(|w| w.map(|w| w.store.clone()))
    }

    fn read<T>(&self, f: impl FnOnce(Option<&Watched>) -> T) -> T {
        let g = self.current.read().unwrap_or_else(|e| e.into_inner());
        f(g.as_ref())
    }

    fn api_resource(&self, version: &str) -> ApiResource {
        ApiResource {
            group: self.group.into(),
            version: version.into(),
            api_version: format!("{}/{version}", self.group),
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }

    /// Every object as JSON (`apiVersion`, `kind`, `metadata`, `spec`, ...).
    fn values(&self) -> Vec<serde_json::Value> {
        self.read(|w| {
            let Some(w) = w else { return Vec::new() };
            let api_version = format!("{}/{}", self.group, w.version);
            let mut objs = w.store.state();
            objs.sort_by(|a, b| by_ns_name(a.as_ref(), b.as_ref()));
            objs.iter()
                .filter_map(|o| {
                    let mut v = serde_json::to_value(o.as_ref()).ok()?;
                    if let Some(m) = v.as_object_mut() {
                        m.insert("apiVersion".into(), api_version.clone().into());
                        m.insert("kind".into(), self.kind.into());
                    }
                    Some(v)
                })
                .collect()
        })
    }

    /// Switches to `version` (or stops, for `None`) if that is not what runs; says whether
    /// it switched.
    fn switch(&self, version: Option<String>, client: &Client, changes: &Arc<Changes>) -> bool {
        if self.version() == version {
            return false;
        }
        let next = version.map(|v| {
            let ar = self.api_resource(&v);
            let writer = Writer::new(ar.clone());
            let store = writer.as_reader();
            let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
            let task = spawn_reflector(
                api,
                writer,
                changes.clone(),
                self.kind,
                trim::metadata,
                watcher::Config::default(),
            );
            Watched {
                version: v,
                store,
                task,
            }
        });
        match &next {
            Some(w) => tracing::info!(kind = self.kind, version = %w.version, "watching"),
            None => tracing::info!(kind = self.kind, "no longer served; not watching"),
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        changes.mark();
        true
    }
}

/// EndpointSlices in the version the cluster serves.
#[derive(Debug)]
enum Slices {
    V1(Store<EndpointSlice>),
    V1beta1(Store<V1beta1Slice>),
}

/// Every watcher, and the stores they fill.
#[derive(Debug)]
pub struct Watchers {
    services: Store<Service>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    slices: Slices,
    pub virtual_services: Arc<IstioKind>,
    pub destination_rules: Arc<IstioKind>,
    pub peer_authentications: Arc<IstioKind>,
    pub authorization_policies: Arc<IstioKind>,
    pub gateways: Arc<IstioKind>,
    /// `type=kubernetes.io/tls` and `type=Opaque`.
    secrets: [Store<Secret>; 2],
    /// Turns true once the discovery loop has asked about both Istio groups (answered or
    /// not) and switched their kinds.
    discovered: tokio::sync::watch::Receiver<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// The field selectors of the Secret watches.
pub const SECRET_SELECTORS: [&str; 2] = ["type=kubernetes.io/tls", "type=Opaque"];

impl Drop for Watchers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Whether `store` has had its first list (without waiting).
fn ready_now<K>(store: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    use std::future::Future as _;
    let fut = std::pin::pin!(store.wait_until_ready());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    fut.poll(&mut cx).is_ready()
}

/// Orders by namespace, then name (without copying either).
fn by_ns_name<K: Resource>(a: &K, b: &K) -> std::cmp::Ordering {
    fn key<K: Resource>(o: &K) -> (&str, &str) {
        let m = o.meta();
        (
            m.namespace.as_deref().unwrap_or_default(),
            m.name.as_deref().unwrap_or_default(),
        )
    }
    key(a).cmp(&key(b))
}

/// A reflector for `api` into `writer`, each object trimmed by `trim` before it is
/// stored, marking `changes` on every event that changes the store; watch errors are
/// logged and retried with kube-runtime's backoff.
fn spawn_reflector<K>(
    api: Api<K>,
    writer: Writer<K>,
    changes: Arc<Changes>,
    kind: &'static str,
    trim: fn(&mut K),
    config: watcher::Config,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync,
{
    tokio::spawn(async move {
        let stream = reflector::reflector(
            writer,
            watcher::watcher(api, config).default_backoff().modify(trim),
        );
        let mut stream = std::pin::pin!(stream);
        let mut synced = false;
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(Event::Apply(_) | Event::Delete(_)) => changes.mark(),
                Ok(Event::InitDone) => {
                    if !synced {
                        tracing::debug!(kind, "synced");
                        synced = true;
                    }
                    changes.mark();
                }
                Ok(Event::Init | Event::InitApply(_)) => {}
                Err(e) => tracing::warn!(kind, error = %e, "watch failed; retrying"),
            }
        }
    })
}

fn typed<K>(
    client: &Client,
    changes: &Arc<Changes>,
    kind: &'static str,
    trim: fn(&mut K),
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Send + Sync,
{
    typed_with(client, changes, kind, trim, watcher::Config::default())
}

fn typed_with<K>(
    client: &Client,
    changes: &Arc<Changes>,
    kind: &'static str,
    trim: fn(&mut K),
    config: watcher::Config,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Send + Sync,
{
    let (store, writer) = reflector::store();
    let task = spawn_reflector(
        Api::<K>::all(client.clone()),
        writer,
        changes.clone(),
        kind,
        trim,
        config,
    );
    (store, task)
}

impl Watchers {
    /// Starts every watcher. Waits (retrying) until discovery says which EndpointSlice
    /// version is served; the Istio kinds are found by the loop this starts.
    pub async fn start(client: Client, changes: Arc<Changes>, crd_interval: Duration) -> Watchers {
        let slice_version = loop {
            match discovery::served(&client, "discovery.k8s.io").await {
                Ok(s) => match discovery::pick(&s, "endpointslices", SLICE_VERSIONS) {
                    Some(v) => break v,
                    None => tracing::warn!("the API server serves no EndpointSlices; asking again"),
                },
                Err(e) => tracing::warn!(error = %e, "API discovery failed; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        tracing::info!(version = %slice_version, "watching EndpointSlices");
        let mut tasks = Vec::new();
        let (services, t) = typed::<Service>(&client, &changes, "Service", trim::metadata);
        tasks.push(t);
        let (pods, t) = typed::<Pod>(&client, &changes, "Pod", trim::pod);
        tasks.push(t);
        let (namespaces, t) = typed::<Namespace>(&client, &changes, "Namespace", trim::metadata);
        tasks.push(t);
        let slices = if slice_version == "v1" {
            let (s, t) = typed::<EndpointSlice>(&client, &changes, "EndpointSlice", trim::metadata);
            tasks.push(t);
            Slices::V1(s)
        } else {
            let (s, t) = typed::<V1beta1Slice>(&client, &changes, "EndpointSlice", trim::metadata);
            tasks.push(t);
            Slices::V1beta1(s)
        };
        let virtual_services = Arc::new(IstioKind::new(
            ISTIO_GROUP,
            "VirtualService",
            "virtualservices",
        ));
        let destination_rules = Arc::new(IstioKind::new(
            ISTIO_GROUP,
            "DestinationRule",
            "destinationrules",
        ));
        let peer_authentications = Arc::new(IstioKind::new(
            ISTIO_SECURITY_GROUP,
            "PeerAuthentication",
            "peerauthentications",
        ));
        let authorization_policies = Arc::new(IstioKind::new(
            ISTIO_SECURITY_GROUP,
            "AuthorizationPolicy",
            "authorizationpolicies",
        ));
        let gateways = Arc::new(IstioKind::new(ISTIO_GROUP, "Gateway", "gateways"));
        let secrets = SECRET_SELECTORS.map(|selector| {
            let (s, t) = typed_with::<Secret>(
                &client,
                &changes,
                "Secret",
                trim::secret,
                watcher::Config::default().fields(selector),
            );
            tasks.push(t);
            s
        });
        let kinds = [
            virtual_services.clone(),
            destination_rules.clone(),
            gateways.clone(),
            peer_authentications.clone(),
            authorization_policies.clone(),
        ];
        let (discovered_tx, discovered) = tokio::sync::watch::channel(false);
        tasks.push(tokio::spawn(async move {
            let mut warned = [false; 2];
            loop {
                for (g, group) in [ISTIO_GROUP, ISTIO_SECURITY_GROUP].into_iter().enumerate() {
                    match discovery::served(&client, group).await {
                        Ok(served) => {
                            warned[g] = false;
                            for k in kinds.iter().filter(|k| k.group == group) {
                                k.switch(discovery::pick(&served, k.plural, ISTIO_VERSIONS), &client, &changes);
                            }
                        }
                        Err(e) if !warned[g] => {
                            tracing::warn!(group, error = %e, "discovery failed; keeping what is watched");
                            warned[g] = true;
                        }
                        Err(_) => {}
                    }
                }
                discovered_tx.send_if_modified(|d| !std::mem::replace(d, true));
                tokio::time::sleep(crd_interval).await;
            }
        }));
        Watchers {
            services,
            pods,
            namespaces,
            slices,
            virtual_services,
            destination_rules,
            peer_authentications,
            authorization_policies,
            gateways,
            secrets,
            discovered,
            tasks,
        }
    }

    /// Resolves once the core kinds (Services, EndpointSlices, Pods, Namespaces) have been
    /// listed once, and then the Istio kinds served and the Secrets too, or
    /// [`FULL_SYNC_WAIT`] has passed (see the module's documentation).
    pub async fn synced(&self) {
        self.core_synced().await;
        if tokio::time::timeout(FULL_SYNC_WAIT, self.rest_synced())
            .await
            .is_err()
        {
            tracing::warn!(
                waited = ?FULL_SYNC_WAIT,
                pending = ?self.pending(),
                "the Istio kinds or Secrets are not listed yet; serving without them until they are"
            );
        }
    }

    /// The Istio kinds: the first discovery round, then a first list of each kind it
    /// found; the Secrets' first lists.
    async fn rest_synced(&self) {
        let mut discovered = self.discovered.clone();
        let _ = discovered.wait_for(|d| *d).await;
        for kind in self.istio_kinds() {
            if let Some(store) = kind.store() {
                let _ = store.wait_until_ready().await;
            }
        }
        for s in &self.secrets {
            let _ = s.wait_until_ready().await;
        }
    }

    /// What [`Self::rest_synced`] still waits for, for the log.
    fn pending(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if !*self.discovered.borrow() {
            out.push("discovery of the Istio groups");
        }
        for kind in self.istio_kinds() {
            if kind.store().is_some_and(|s| !ready_now(&s)) {
                out.push(kind.kind);
            }
        }
        if self.secrets.iter().any(|s| !ready_now(s)) {
            out.push("Secret");
        }
        out
    }

    fn istio_kinds(&self) -> [&IstioKind; 5] {
        [
            &self.virtual_services,
            &self.destination_rules,
            &self.gateways,
            &self.peer_authentications,
            &self.authorization_policies,
        ]
    }

    async fn core_synced(&self) {
        let slices = async {
            match &self.slices {
                Slices::V1(s) => s.wait_until_ready().await,
                Slices::V1beta1(s) => s.wait_until_ready().await,
            }
        };
        let _ = tokio::join!(
            self.services.wait_until_ready(),
            self.pods.wait_until_ready(),
            self.namespaces.wait_until_ready(),
            slices,
        );
    }

    /// The EndpointSlice version watched.
    pub fn slice_version(&self) -> &'static str {
        match self.slices {
            Slices::V1(_) => "v1",
            Slices::V1beta1(_) => "v1beta1",
        }
    }

    /// Everything watched now, each kind sorted by namespace and name.
    pub fn objects(&self) -> Objects {
        fn all<K: Resource + Clone>(s: &Store<K>) -> Vec<Arc<K>>
        where
            K::DynamicType: Eq + Hash + Clone,
        {
            let mut v = s.state();
            v.sort_by(|a, b| by_ns_name(a.as_ref(), b.as_ref()));
            v
        }
        let endpoint_slices = match &self.slices {
            Slices::V1(s) => all(s),
            Slices::V1beta1(s) => {
                let mut v: Vec<Arc<EndpointSlice>> =
                    s.state().iter().filter_map(|o| o.v1().cloned()).collect();
                v.sort_by(|a, b| by_ns_name(a.as_ref(), b.as_ref()));
                v
            }
        };
        Objects {
            services: all(&self.services),
            endpoint_slices,
            pods: all(&self.pods),
            namespaces: all(&self.namespaces),
            virtual_services: self.virtual_services.values(),
            destination_rules: self.destination_rules.values(),
            peer_authentications: self.peer_authentications.values(),
            authorization_policies: self.authorization_policies.values(),
            gateways: self.gateways.values(),
            secrets: {
                let mut v: Vec<Arc<Secret>> = self.secrets.iter().flat_map(Store::state).collect();
                v.sort_by(|a, b| by_ns_name(a.as_ref(), b.as_ref()));
                v
            },
        }
    }
}
