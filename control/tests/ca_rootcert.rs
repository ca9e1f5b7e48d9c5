//! Publishing the root, against a real API server (kube-local through KUBECONFIG; fails
//! without it): `publish_with` run in the test (two of them at once, as two mesh-control
//! replicas would), kept to the test's own namespaces by a label selector. A new namespace
//! gets ConfigMap `istio-ca-root-cert`; an edit, a removed label, a delete are undone; a
//! stale ConfigMap from before is fixed at start, keeping the user's other keys; a
//! Terminating namespace is left alone; a write the API server refuses is retried until it
//! is allowed. The test's namespaces (and RBAC objects) are deleted at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/ca_kube.rs"]
mod ca_kube;

use std::collections::BTreeMap;
use std::time::Duration;

use ca_kube::{Cleanup, client, eventually, init_log, unique};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use mesh_common::identity::{ROOT_CERT_CONFIGMAP, ROOT_CERT_KEY};
use mesh_control::ca::rootcert::{CONFIG_LABEL, Options, publish_with};
use tokio::task::JoinHandle;

const ROOT: &str = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n";
/// The label that puts a namespace in this run's scope.
const SCOPE: &str = "mesh-test/rootcert";
const WAIT: Duration = Duration::from_secs(20);

/// Publishers running in the background, stopped when dropped.
struct Publishers(Vec<JoinHandle<()>>);

impl Drop for Publishers {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

fn start(client: &Client, scope: &str, replicas: usize) -> Publishers {
    Publishers(
        (0..replicas)
            .map(|_| {
                tokio::spawn(publish_with(
                    client.clone(),
                    ROOT.to_owned(),
                    Options {
                        namespace_selector: Some(format!("{SCOPE}={scope}")),
                    },
                ))
            })
            .collect(),
    )
}

async fn make_namespace(
    client: &Client,
    cleanup: &mut Cleanup,
    prefix: &str,
    scope: Option<&str>,
) -> String {
    let name = unique(prefix);
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.clone());
    ns.metadata.labels = scope.map(|s| BTreeMap::from([(SCOPE.to_owned(), s.to_owned())]));
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    cleanup.namespace(&name);
    name
}

fn cms(client: &Client, ns: &str) -> Api<ConfigMap> {
    Api::namespaced(client.clone(), ns)
}

/// What is wrong with `cm`, if anything.
fn check(cm: Option<&ConfigMap>) -> Result<(), String> {
    let Some(cm) = cm else {
        return Err("no ConfigMap".into());
    };
    let root = cm.data.as_ref().and_then(|d| d.get(ROOT_CERT_KEY));
    let label = cm
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(CONFIG_LABEL));
    if root.map(String::as_str) == Some(ROOT) && label.map(String::as_str) == Some("true") {
        Ok(())
    } else {
        Err(format!(
            "{ROOT_CERT_KEY}: {root:?}, label {CONFIG_LABEL}: {label:?}"
        ))
    }
}

/// Waits until `ns` holds the root as it should; returns the ConfigMap.
async fn published(client: &Client, ns: &str, what: &str) -> ConfigMap {
    let api = cms(client, ns);
    let (cm, took) = eventually(what, WAIT, || async {
        let cm = api
            .get_opt(ROOT_CERT_CONFIGMAP)
            .await
            .map_err(|e| e.to_string())?;
        check(cm.as_ref()).map(|()| cm.unwrap())
    })
    .await;
    eprintln!("{ns}: {what} after {took:?}");
    cm
}

fn patch(v: serde_json::Value) -> Patch<serde_json::Value> {
    Patch::Merge(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_namespace_gets_the_root_and_edits_are_undone() {
    init_log();
    let client = client().await;
    let mut cleanup = Cleanup::default();
    let scope = unique("s");

    // Before the publishers start: a namespace with a stale ConfigMap (an old root, no
    // label) that also holds a key of the user's.
    let stale = make_namespace(&client, &mut cleanup, "ca-rc-stale", Some(&scope)).await;
    let mut old = ConfigMap::default();
    old.metadata.name = Some(ROOT_CERT_CONFIGMAP.into());
    old.data = Some(BTreeMap::from([
        (ROOT_CERT_KEY.to_owned(), "old root".to_owned()),
        ("extra.pem".to_owned(), "the user's".to_owned()),
    ]));
    cms(&client, &stale)
        .create(&PostParams::default(), &old)
        .await
        .unwrap();
    // And a namespace outside the publishers' scope: never touched.
    let outside = make_namespace(&client, &mut cleanup, "ca-rc-out", None).await;

    let _publishers = start(&client, &scope, 2);

    let fixed = published(&client, &stale, "stale ConfigMap fixed").await;
    assert_eq!(
        fixed.data.as_ref().unwrap()["extra.pem"],
        "the user's",
        "the user's key kept"
    );

    // A new namespace gets its ConfigMap.
    let ns = make_namespace(&client, &mut cleanup, "ca-rc-new", Some(&scope)).await;
    let first = published(&client, &ns, "created in a new namespace").await;
    let api = cms(&client, &ns);

    // Edited: restored.
    api.patch(
        ROOT_CERT_CONFIGMAP,
        &PatchParams::default(),
        &patch(serde_json::json!({"data": {ROOT_CERT_KEY: "tampered"}})),
    )
    .await
    .unwrap();
    published(&client, &ns, "edited root restored").await;

    // Key removed: restored.
    api.patch(
        ROOT_CERT_CONFIGMAP,
        &PatchParams::default(),
        &patch(serde_json::json!({"data": {ROOT_CERT_KEY: null}})),
    )
    .await
    .unwrap();
    published(&client, &ns, "removed key restored").await;

    // Label removed: restored.
    api.patch(
        ROOT_CERT_CONFIGMAP,
        &PatchParams::default(),
        &patch(serde_json::json!({"metadata": {"labels": {CONFIG_LABEL: null}}})),
    )
    .await
    .unwrap();
    published(&client, &ns, "removed label restored").await;

    // Deleted: recreated (a new object).
    api.delete(ROOT_CERT_CONFIGMAP, &DeleteParams::default())
        .await
        .unwrap();
    let again = published(&client, &ns, "deleted ConfigMap recreated").await;
    assert_ne!(again.metadata.uid, first.metadata.uid, "a new ConfigMap");

    // Terminating (kube-local has no namespace controller: it stays so): its ConfigMap,
    // deleted, is not recreated — and the publishers go on with the others.
    let going = make_namespace(&client, &mut cleanup, "ca-rc-term", Some(&scope)).await;
    published(&client, &going, "created before deletion").await;
    Api::<Namespace>::all(client.clone())
        .delete(&going, &DeleteParams::default())
        .await
        .unwrap();
    eventually("namespace Terminating", WAIT, || async {
        let n = Api::<Namespace>::all(client.clone())
            .get(&going)
            .await
            .map_err(|e| e.to_string())?;
        let phase = n.status.and_then(|s| s.phase);
        (phase.as_deref() == Some("Terminating"))
            .then_some(())
            .ok_or(format!("{phase:?}"))
    })
    .await;
    cms(&client, &going)
        .delete(ROOT_CERT_CONFIGMAP, &DeleteParams::default())
        .await
        .unwrap();
    let later = make_namespace(&client, &mut cleanup, "ca-rc-later", Some(&scope)).await;
    published(&client, &later, "created in a namespace made after").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        cms(&client, &going)
            .get_opt(ROOT_CERT_CONFIGMAP)
            .await
            .unwrap()
            .is_none(),
        "recreated in a Terminating namespace"
    );
    assert!(
        cms(&client, &outside)
            .get_opt(ROOT_CERT_CONFIGMAP)
            .await
            .unwrap()
            .is_none(),
        "written to a namespace outside the selector"
    );
}

/// A publisher acting as a user that may not yet create ConfigMaps (RBAC): the refused
/// write is logged and retried (with backoff) until RBAC allows it, then the ConfigMap
/// appears; nothing crashed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_is_retried_until_it_is_allowed() {
    init_log();
    let admin = client().await;
    let mut cleanup = Cleanup::default();
    let scope = unique("s");
    let user = unique("mesh-test-rootcert");
    let rule = |verbs: &[&str], resources: &str| PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec![resources.to_owned()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    };
    let read = ["get", "list", "watch"];
    let mut role = ClusterRole::default();
    role.metadata.name = Some(user.clone());
    role.rules = Some(vec![
        rule(&read, "namespaces"),
        rule(&["get", "list", "watch", "update", "patch"], "configmaps"),
    ]);
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    roles.create(&PostParams::default(), &role).await.unwrap();
    cleanup.cluster("clusterrole", &user);
    let mut binding = ClusterRoleBinding::default();
    binding.metadata.name = Some(user.clone());
    binding.role_ref = RoleRef {
        api_group: "rbac.authorization.k8s.io".into(),
        kind: "ClusterRole".into(),
        name: user.clone(),
    };
    binding.subjects = Some(vec![Subject {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "User".into(),
        name: user.clone(),
        namespace: None,
    }]);
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    cleanup.cluster("clusterrolebinding", &user);

    let mut config = kube::Config::infer().await.unwrap();
    config.auth_info.impersonate = Some(user.clone());
    let limited = Client::try_from(config).unwrap();
    let ns = make_namespace(&admin, &mut cleanup, "ca-rc-rbac", Some(&scope)).await;
    let _publisher = start(&limited, &scope, 1);

    // Refused: nothing appears while the user may not create.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        cms(&admin, &ns)
            .get_opt(ROOT_CERT_CONFIGMAP)
            .await
            .unwrap()
            .is_none(),
        "created without the right to"
    );
    // Allowed: the next retry (backoff at most 60 s; here the 3rd or 4th, ≤ 8 s) creates it.
    role.rules = Some(vec![
        rule(&read, "namespaces"),
        rule(
            &["get", "list", "watch", "create", "update", "patch"],
            "configmaps",
        ),
    ]);
    role.metadata.resource_version = None;
    roles
        .patch(
            &user,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"rules": role.rules})),
        )
        .await
        .unwrap();
    published(&admin, &ns, "created once allowed").await;
}
