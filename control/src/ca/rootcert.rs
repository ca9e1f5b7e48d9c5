//! ConfigMap `istio-ca-root-cert` (key `root-cert.pem`) in every namespace.
//!
//! [`publish`] keeps, in every namespace that is not being deleted, a ConfigMap
//! `istio-ca-root-cert` whose `data["root-cert.pem"]` is the mesh's root certificate and
//! that carries the label `istio.io/config: "true"` (as Istio's namespace controller
//! makes it): pods mount it to verify their peers and the CA. It runs until dropped.
//!
//! - **Watched.** Two kube-runtime reflectors: Namespaces, and ConfigMaps with the field
//!   selector `metadata.name=istio-ca-root-cert` (no other ConfigMap is read). Any event
//!   wakes the reconcile loop; a new namespace gets its ConfigMap, and a user's edit or
//!   delete of one is undone.
//! - **Decided by a pure function.** [`plan`] (namespaces + existing ConfigMaps → what to
//!   write), per namespace [`decide`]. Namespaces in phase `Terminating` (or with a
//!   deletion timestamp) are skipped: the API server refuses new objects in them and their
//!   ConfigMap goes with them.
//! - **Writes.** Absent → create. Present but with another root, no `root-cert.pem`, or
//!   without the label → a JSON merge patch of exactly that key and that label: other keys,
//!   labels and annotations a user added are left alone.
//! - **Several replicas.** Every mesh-control replica runs this (no leader election). The
//!   writes are idempotent (the same content from every replica; a patch that changes
//!   nothing changes nothing), and a conflict — `409` when another replica created the
//!   ConfigMap first — or a `404` on a patch (deleted meanwhile) is retried by re-reading
//!   the object and deciding again.
//! - **Never fatal.** A failing write is logged (namespace, error) and retried for that
//!   namespace with exponential backoff ([`backoff`]: 1 s doubling up to 60 s); the
//!   others go on. Watch errors are logged and retried with kube-runtime's backoff.
//!
//! Replicas configured with different roots would undo each other's writes; the root comes
//! from one Secret ([`crate::ca::bootstrap`]), so they agree once it is settled.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt as _};
use mesh_common::identity::{ROOT_CERT_CONFIGMAP, ROOT_CERT_KEY};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The label Istio's namespace controller puts on the ConfigMap, and its value.
pub const CONFIG_LABEL: &str = "istio.io/config";
pub const CONFIG_LABEL_VALUE: &str = "true";
/// The field manager of our writes.
pub const FIELD_MANAGER: &str = "mesh-control";
/// How long the loop lets a burst of events land before it plans.
const SETTLE: Duration = Duration::from_millis(50);
/// Backoff of a namespace whose write failed: first and longest wait.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Re-read-and-retry rounds of one write that keeps conflicting.
const MAX_ROUNDS: usize = 4;

/// What to watch; [`Options::default`] is every namespace.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only namespaces whose labels match this label selector (tests keep to their own
    /// namespaces on a shared API server). `None`: every namespace.
    pub namespace_selector: Option<String>,
}

/// What one namespace's ConfigMap needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// There is none: create it.
    Create,
    /// It exists but is not as it should be: patch the key and the label back.
    Restore {
        /// `root-cert.pem` is missing or holds another certificate.
        root: bool,
        /// The `istio.io/config: "true"` label is missing or has another value.
        label: bool,
    },
}

/// An [`Action`] for a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub namespace: String,
    pub action: Action,
}

/// What `existing` (the namespace's `istio-ca-root-cert`, if any) needs to hold `root_pem`
/// (pure). `None`: nothing, it is right — or it is being deleted (its deletion event will
/// bring a fresh decision).
pub fn decide(existing: Option<&ConfigMap>, root_pem: &str) -> Option<Action> {
    let Some(cm) = existing else {
        return Some(Action::Create);
    };
    if cm.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let root = cm
        .data
        .as_ref()
        .and_then(|d| d.get(ROOT_CERT_KEY))
        .map(String::as_str)
        != Some(root_pem);
    let label = cm
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(CONFIG_LABEL))
        .map(String::as_str)
        != Some(CONFIG_LABEL_VALUE);
    (root || label).then_some(Action::Restore { root, label })
}

/// Whether the namespace is being deleted (phase `Terminating` or a deletion timestamp).
fn terminating(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
}

/// Every write needed so that each namespace not being deleted holds `root_pem` (pure),
/// sorted by namespace. ConfigMaps of other names, or in namespaces not listed, are
/// ignored.
pub fn plan<'a>(
    namespaces: impl IntoIterator<Item = &'a Namespace>,
    config_maps: impl IntoIterator<Item = &'a ConfigMap>,
    root_pem: &str,
) -> Vec<Planned> {
    let existing: HashMap<&str, &ConfigMap> = config_maps
        .into_iter()
        .filter(|cm| cm.metadata.name.as_deref() == Some(ROOT_CERT_CONFIGMAP))
        .filter_map(|cm| Some((cm.metadata.namespace.as_deref()?, cm)))
        .collect();
    let mut out: Vec<Planned> = namespaces
        .into_iter()
        .filter(|ns| !terminating(ns))
        .filter_map(|ns| {
            let name = ns.metadata.name.as_deref()?;
            let action = decide(existing.get(name).copied(), root_pem)?;
            Some(Planned {
                namespace: name.to_owned(),
                action,
            })
        })
        .collect();
    out.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    out
}

/// The wait before the `attempt`-th retry (1-based) of a failed write: 1 s, 2 s, 4 s, ...
/// up to 60 s.
pub fn backoff(attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    BACKOFF_FIRST.saturating_mul(factor).min(BACKOFF_MAX)
}

/// The ConfigMap as we create it.
fn desired(namespace: &str, root_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(ROOT_CERT_CONFIGMAP.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                CONFIG_LABEL.to_owned(),
                CONFIG_LABEL_VALUE.to_owned(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            ROOT_CERT_KEY.to_owned(),
            root_pem.to_owned(),
        )])),
        ..Default::default()
    }
}

/// The merge patch that restores our key and label (and nothing else).
fn restore_patch(root_pem: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"labels": {CONFIG_LABEL: CONFIG_LABEL_VALUE}},
        "data": {ROOT_CERT_KEY: root_pem},
    })
}

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{}", crate::ca::tokens::kube_error_text(.0))]
    Kube(#[from] kube::Error),
    #[error("still conflicting after {MAX_ROUNDS} re-reads (others keep writing it)")]
    Conflicting,
}

/// Carries out `first` in `namespace`; on a conflict (409: created by someone else) or a
/// missing object (404 on a patch: deleted meanwhile) re-reads it and decides again.
/// Returns what was written (`None`: the re-read showed nothing was needed).
async fn ensure(
    client: &Client,
    namespace: &str,
    first: Action,
    root_pem: &str,
) -> Result<Option<Action>, WriteError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut action = first;
    for _ in 0..MAX_ROUNDS {
        let written = match action {
            Action::Create => {
                let pp = PostParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..Default::default()
                };
                api.create(&pp, &desired(namespace, root_pem))
                    .await
                    .map(drop)
            }
            Action::Restore { .. } => {
                let pp = PatchParams {
                    field_manager: Some(FIELD_MANAGER.to_owned()),
                    ..Default::default()
                };
                api.patch(
                    ROOT_CERT_CONFIGMAP,
                    &pp,
                    &Patch::Merge(restore_patch(root_pem)),
                )
                .await
                .map(drop)
            }
        };
        match written {
            Ok(()) => return Ok(Some(action)),
            Err(kube::Error::Api(s))
                if s.is_conflict()
                    || s.is_already_exists()
                    || (s.is_not_found() && action != Action::Create) =>
            {
                tracing::debug!(namespace, reason = %s.reason, "ConfigMap changed under us; re-reading");
                match decide(api.get_opt(ROOT_CERT_CONFIGMAP).await?.as_ref(), root_pem) {
                    Some(next) => action = next,
                    None => return Ok(None),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(WriteError::Conflicting)
}

/// Runs a reflector, waking `wake` on every event; watch errors are logged and retried.
async fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: reflector::store::Writer<K>,
    wake: &Notify,
    kind: &'static str,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    let stream = reflector::reflector(
        writer,
        watcher::watcher(api, config)
            .default_backoff()
            .modify(|o: &mut K| o.managed_fields_mut().clear()),
    );
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone) => wake.notify_one(),
            Ok(Event::Init | Event::InitApply(_)) => {}
            Err(e) => tracing::warn!(kind, error = %e, "root-cert watch failed; retrying"),
        }
    }
    tracing::error!(kind, "root-cert watch ended; ConfigMaps are no longer kept");
}

/// A namespace whose last write failed.
struct Retry {
    attempts: u32,
    at: Instant,
}

/// Keeps ConfigMap `istio-ca-root-cert` with `root_pem` in every namespace (see the module
/// docs). Runs until dropped.
pub async fn publish(client: Client, root_pem: String) {
    publish_with(client, root_pem, Options::default()).await
}

/// [`publish`], watching the namespaces `options` says.
pub async fn publish_with(client: Client, root_pem: String, options: Options) {
    let wake = Notify::new();
    let (namespaces, ns_writer) = reflector::store::<Namespace>();
    let (config_maps, cm_writer) = reflector::store::<ConfigMap>();
    let mut ns_config = watcher::Config::default();
    if let Some(selector) = &options.namespace_selector {
        ns_config = ns_config.labels(selector);
    }
    let cm_config =
        watcher::Config::default().fields(&format!("metadata.name={ROOT_CERT_CONFIGMAP}"));
    tokio::join!(
        reflect(
            Api::<Namespace>::all(client.clone()),
            ns_config,
            ns_writer,
            &wake,
            "Namespace"
        ),
        reflect(
            Api::<ConfigMap>::all(client.clone()),
            cm_config,
            cm_writer,
            &wake,
            "ConfigMap"
        ),
        reconcile(&client, &namespaces, &config_maps, &root_pem, &wake),
    );
}

/// The loop: once both stores are listed, plan and write on every wake-up, and when a
/// failed namespace's backoff is over.
async fn reconcile(
    client: &Client,
    namespaces: &Store<Namespace>,
    config_maps: &Store<ConfigMap>,
    root_pem: &str,
    wake: &Notify,
) {
    if namespaces.wait_until_ready().await.is_err() || config_maps.wait_until_ready().await.is_err()
    {
        return;
    }
    tracing::info!(
        configmap = ROOT_CERT_CONFIGMAP,
        "publishing the root certificate to every namespace"
    );
    let mut retries: HashMap<String, Retry> = HashMap::new();
    loop {
        let ns: Vec<Arc<Namespace>> = namespaces.state();
        let cms: Vec<Arc<ConfigMap>> = config_maps.state();
        let planned = plan(
            ns.iter().map(Arc::as_ref),
            cms.iter().map(Arc::as_ref),
            root_pem,
        );
        // A namespace that needs nothing any more (fixed by someone, or gone) is forgiven.
        retries.retain(|ns, _| planned.iter().any(|p| &p.namespace == ns));
        let now = Instant::now();
        for p in planned {
            if retries.get(&p.namespace).is_some_and(|r| r.at > now) {
                continue;
            }
            let namespace = p.namespace.as_str();
            match ensure(client, namespace, p.action, root_pem).await {
                Ok(done) => {
                    retries.remove(namespace);
                    match done {
                        Some(Action::Create) => {
                            tracing::info!(namespace, configmap = ROOT_CERT_CONFIGMAP, "created")
                        }
                        Some(Action::Restore { root, label }) => tracing::info!(
                            namespace,
                            configmap = ROOT_CERT_CONFIGMAP,
                            root_differed = root,
                            label_missing = label,
                            "restored"
                        ),
                        None => {}
                    }
                }
                Err(error) => {
                    let r = retries.entry(p.namespace.clone()).or_insert(Retry {
                        attempts: 0,
                        at: now,
                    });
                    r.attempts += 1;
                    let wait = backoff(r.attempts);
                    r.at = Instant::now() + wait;
                    tracing::warn!(
                        namespace,
                        configmap = ROOT_CERT_CONFIGMAP,
                        %error,
                        attempt = r.attempts,
                        retry_in = ?wait,
                        "could not write the root certificate; retrying"
                    );
                }
            }
        }
        match retries.values().map(|r| r.at).min() {
            Some(at) => {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep_until(at) => {}
                }
            }
            None => wake.notified().await,
        }
        tokio::time::sleep(SETTLE).await;
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::NamespaceStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    const ROOT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    fn ns(name: &str, phase: Option<&str>) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: phase.map(|p| NamespaceStatus {
                phase: Some(p.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn cm(
        namespace: &str,
        name: &str,
        data: &[(&str, &str)],
        labels: &[(&str, &str)],
    ) -> ConfigMap {
        let map = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                labels: (!labels.is_empty()).then(|| map(labels)),
                ..Default::default()
            },
            data: (!data.is_empty()).then(|| map(data)),
            ..Default::default()
        }
    }

    fn ours(namespace: &str) -> ConfigMap {
        cm(
            namespace,
            ROOT_CERT_CONFIGMAP,
            &[(ROOT_CERT_KEY, ROOT)],
            &[(CONFIG_LABEL, CONFIG_LABEL_VALUE)],
        )
    }

    fn planned(namespace: &str, action: Action) -> Planned {
        Planned {
            namespace: namespace.into(),
            action,
        }
    }

    #[test]
    fn a_namespace_without_the_configmap_gets_one() {
        assert_eq!(
            plan(&[ns("shop", Some("Active"))], &[], ROOT),
            [planned("shop", Action::Create)]
        );
        // A namespace without status yet is not being deleted.
        assert_eq!(
            plan(&[ns("new", None)], &[], ROOT),
            [planned("new", Action::Create)]
        );
    }

    #[test]
    fn a_right_configmap_needs_nothing_even_with_a_users_additions() {
        assert_eq!(plan(&[ns("shop", None)], &[ours("shop")], ROOT), []);
        let mut extra = ours("shop");
        extra
            .data
            .as_mut()
            .unwrap()
            .insert("other.pem".into(), "x".into());
        extra
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "a".into());
        assert_eq!(plan(&[ns("shop", None)], &[extra], ROOT), []);
    }

    #[test]
    fn another_root_a_missing_key_or_label_is_restored() {
        let other = cm(
            "a",
            ROOT_CERT_CONFIGMAP,
            &[(ROOT_CERT_KEY, "old root")],
            &[(CONFIG_LABEL, CONFIG_LABEL_VALUE)],
        );
        let no_key = cm(
            "b",
            ROOT_CERT_CONFIGMAP,
            &[("something", "else")],
            &[(CONFIG_LABEL, CONFIG_LABEL_VALUE)],
        );
        let no_label = cm("c", ROOT_CERT_CONFIGMAP, &[(ROOT_CERT_KEY, ROOT)], &[]);
        let wrong_label = cm(
            "d",
            ROOT_CERT_CONFIGMAP,
            &[(ROOT_CERT_KEY, ROOT)],
            &[(CONFIG_LABEL, "false")],
        );
        let empty = cm("e", ROOT_CERT_CONFIGMAP, &[], &[]);
        let namespaces = ["a", "b", "c", "d", "e"].map(|n| ns(n, Some("Active")));
        assert_eq!(
            plan(
                &namespaces,
                &[empty, wrong_label, no_label, no_key, other],
                ROOT
            ),
            [
                planned(
                    "a",
                    Action::Restore {
                        root: true,
                        label: false
                    }
                ),
                planned(
                    "b",
                    Action::Restore {
                        root: true,
                        label: false
                    }
                ),
                planned(
                    "c",
                    Action::Restore {
                        root: false,
                        label: true
                    }
                ),
                planned(
                    "d",
                    Action::Restore {
                        root: false,
                        label: true
                    }
                ),
                planned(
                    "e",
                    Action::Restore {
                        root: true,
                        label: true
                    }
                ),
            ]
        );
    }

    #[test]
    fn terminating_namespaces_are_skipped() {
        let mut deleting = ns("going", Some("Active"));
        deleting.metadata.deletion_timestamp = Some(Time(Default::default()));
        let namespaces = [
            ns("gone", Some("Terminating")),
            deleting,
            ns("shop", Some("Active")),
        ];
        assert_eq!(
            plan(&namespaces, &[], ROOT),
            [planned("shop", Action::Create)]
        );
    }

    #[test]
    fn other_configmaps_and_unlisted_namespaces_are_ignored() {
        let other_name = cm(
            "shop",
            "istio-ca-root-cert-old",
            &[(ROOT_CERT_KEY, ROOT)],
            &[],
        );
        let elsewhere = cm(
            "kube-system",
            ROOT_CERT_CONFIGMAP,
            &[(ROOT_CERT_KEY, "x")],
            &[],
        );
        assert_eq!(
            plan(&[ns("shop", None)], &[other_name, elsewhere], ROOT),
            [planned("shop", Action::Create)]
        );
    }

    #[test]
    fn a_configmap_being_deleted_waits_for_its_deletion() {
        let mut going = cm("shop", ROOT_CERT_CONFIGMAP, &[(ROOT_CERT_KEY, "old")], &[]);
        going.metadata.deletion_timestamp = Some(Time(Default::default()));
        assert_eq!(decide(Some(&going), ROOT), None);
        assert_eq!(decide(None, ROOT), Some(Action::Create));
    }

    #[test]
    fn plans_are_sorted_and_one_per_namespace() {
        let namespaces = [ns("c", None), ns("a", None), ns("b", None)];
        let got: Vec<String> = plan(&namespaces, &[ours("b")], ROOT)
            .into_iter()
            .map(|p| p.namespace)
            .collect();
        assert_eq!(got, ["a", "c"]);
    }

    #[test]
    fn what_we_create_and_patch_is_what_decide_accepts() {
        let made = desired("shop", ROOT);
        assert_eq!(made.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(made.metadata.name.as_deref(), Some(ROOT_CERT_CONFIGMAP));
        assert_eq!(decide(Some(&made), ROOT), None);
        // The patch applied (as a merge patch) to a drifted ConfigMap makes it right and
        // keeps what else it holds.
        let mut drifted = serde_json::to_value(cm(
            "shop",
            ROOT_CERT_CONFIGMAP,
            &[(ROOT_CERT_KEY, "old"), ("keep", "me")],
            &[("team", "a")],
        ))
        .unwrap();
        merge(&mut drifted, &restore_patch(ROOT));
        let fixed: ConfigMap = serde_json::from_value(drifted).unwrap();
        assert_eq!(decide(Some(&fixed), ROOT), None);
        assert_eq!(fixed.data.unwrap()["keep"], "me");
        assert_eq!(fixed.metadata.labels.unwrap()["team"], "a");
    }

    /// RFC 7386 merge patch, for the test above.
    fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
        match (target.as_object_mut(), patch.as_object()) {
            (Some(t), Some(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                    }
                }
            }
            _ => *target = patch.clone(),
        }
    }

    #[test]
    fn backoff_doubles_from_one_second_to_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(0), BACKOFF_FIRST);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }
}
