//! deploy/ as a cluster would get it: `kubectl kustomize` renders the default install and
//! the cert-manager and with-istio-crds overlays; every object parses into its k8s-openapi
//! type with no field left over (a serde round trip must give back the very same JSON),
//! and the settings that matter (selectors, ports, identities, RBAC scope, security) are
//! what they must be, for the webhook and for mesh-control. Images must be the ones
//! docker/images.env names. Needs kubectl (KUBECTL or kube-local's); fails, never skips,
//! without it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod deploy_support;

use std::collections::BTreeSet;

use clap::Parser;
use deploy_support::{find, images_env, kinds, render};
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const NS: &str = "mesh-system";

/// First path where two JSON values differ.
fn first_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(va), Some(vb)) => first_difference(&format!("{path}.{k}"), va, vb),
                (Some(_), None) => Some(format!("{path}.{k} is unknown to the type (dropped)")),
                (None, Some(_)) => Some(format!("{path}.{k} appeared on the round trip")),
                (None, None) => None,
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (va, vb))| first_difference(&format!("{path}[{i}]"), va, vb)),
        _ if a == b => None,
        _ => Some(format!("{path}: {a} became {b}")),
    }
}

/// Parses `obj` into `T` and insists the round trip loses and adds nothing.
fn typed<T: DeserializeOwned + Serialize>(obj: &Value) -> T {
    let id = format!("{}/{}", obj["kind"], obj["metadata"]["name"]);
    let t: T = serde_json::from_value(obj.clone()).unwrap_or_else(|e| panic!("{id}: {e}"));
    let back = serde_json::to_value(&t).unwrap();
    if let Some(diff) = first_difference("", obj, &back) {
        panic!("{id} does not round-trip through its k8s-openapi type: {diff}");
    }
    t
}

/// The cert-manager objects have no k8s-openapi type: their fields are held to the
/// cert-manager.io/v1 schema's names by these structs instead.
mod cert_manager {
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Object<S> {
        pub api_version: String,
        pub kind: String,
        pub metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        pub spec: S,
    }
    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct IssuerSpec {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub self_signed: Option<BTreeMap<String, String>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub ca: Option<CaIssuer>,
    }
    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct CaIssuer {
        pub secret_name: String,
    }
    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct CertificateSpec {
        pub secret_name: String,
        #[serde(rename = "isCA", skip_serializing_if = "Option::is_none")]
        pub is_ca: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub common_name: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub duration: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub renew_before: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub dns_names: Option<Vec<String>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub usages: Option<Vec<String>>,
        pub private_key: PrivateKey,
        pub issuer_ref: IssuerRef,
    }
    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct PrivateKey {
        pub algorithm: String,
        pub size: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub rotation_policy: Option<String>,
    }
    #[derive(Serialize, Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct IssuerRef {
        pub name: String,
        pub kind: String,
        pub group: String,
    }
}

/// Every object of a rendering, parsed strictly by kind; unknown kinds fail.
fn parse_all(objs: &[Value]) {
    for o in objs {
        match (
            o["apiVersion"].as_str().unwrap_or(""),
            o["kind"].as_str().unwrap_or(""),
        ) {
            ("v1", "Namespace") => drop(typed::<Namespace>(o)),
            ("v1", "ServiceAccount") => drop(typed::<ServiceAccount>(o)),
            ("v1", "ConfigMap") => drop(typed::<ConfigMap>(o)),
            ("v1", "Service") => drop(typed::<Service>(o)),
            ("apps/v1", "Deployment") => drop(typed::<Deployment>(o)),
            ("policy/v1", "PodDisruptionBudget") => drop(typed::<PodDisruptionBudget>(o)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => drop(typed::<ClusterRole>(o)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                drop(typed::<ClusterRoleBinding>(o))
            }
            ("rbac.authorization.k8s.io/v1", "Role") => drop(typed::<Role>(o)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => drop(typed::<RoleBinding>(o)),
            ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
                drop(typed::<MutatingWebhookConfiguration>(o))
            }
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                drop(typed::<CustomResourceDefinition>(o))
            }
            ("cert-manager.io/v1", "Issuer") => {
                drop(typed::<cert_manager::Object<cert_manager::IssuerSpec>>(o))
            }
            ("cert-manager.io/v1", "Certificate") => {
                drop(typed::<cert_manager::Object<cert_manager::CertificateSpec>>(o))
            }
            (api, kind) => panic!("unexpected object {api} {kind} in the rendering"),
        }
        let namespaced = !matches!(
            o["kind"].as_str(),
            Some(
                "Namespace"
                    | "ClusterRole"
                    | "ClusterRoleBinding"
                    | "MutatingWebhookConfiguration"
                    | "CustomResourceDefinition"
            )
        );
        if namespaced {
            assert_eq!(
                o["metadata"]["namespace"], NS,
                "{} outside {NS}",
                o["metadata"]["name"]
            );
        }
    }
}

fn selects(selector: &LabelSelector, labels: &std::collections::BTreeMap<String, String>) -> bool {
    assert!(
        selector.match_expressions.is_none(),
        "expressions not expected here"
    );
    let want = selector.match_labels.clone().unwrap_or_default();
    !want.is_empty() && want.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("{flag}=")))
}

fn expr(key: &str, op: &str, values: &[&str]) -> Value {
    if values.is_empty() {
        serde_json::json!({"key": key, "operator": op})
    } else {
        serde_json::json!({"key": key, "operator": op, "values": values})
    }
}

fn check_webhook(w: &MutatingWebhook, service: &Service) {
    let id = &w.name;
    assert_eq!(w.admission_review_versions, ["v1"], "{id}");
    assert_eq!(w.side_effects, "None", "{id}");
    assert_eq!(w.failure_policy.as_deref(), Some("Fail"), "{id}");
    let timeout = w
        .timeout_seconds
        .unwrap_or_else(|| panic!("{id}: no timeoutSeconds"));
    assert!((1..=30).contains(&timeout), "{id}: timeout {timeout}");
    let svc = w
        .client_config
        .service
        .as_ref()
        .expect("webhook reached via its Service");
    assert_eq!(Some(&svc.name), service.metadata.name.as_ref(), "{id}");
    assert_eq!(svc.namespace, NS, "{id}");
    assert_eq!(svc.path.as_deref(), Some("/inject"), "{id}");
    assert_eq!(svc.port, Some(443), "{id}");
    assert!(w.client_config.url.is_none(), "{id}");
    let rules = w.rules.as_ref().expect("rules");
    assert_eq!(rules.len(), 1, "{id}");
    assert_eq!(
        rules[0].operations.as_deref(),
        Some(&["CREATE".to_owned()][..]),
        "{id}"
    );
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["pods".to_owned()][..]),
        "{id}"
    );
    assert_eq!(
        rules[0].api_groups.as_deref(),
        Some(&[String::new()][..]),
        "{id}"
    );
    // Never kube-system, kube-public, kube-node-lease.
    let never: Vec<&str> = mesh_common::NEVER_INJECTED_NAMESPACES.to_vec();
    let ns_exprs =
        serde_json::to_value(&w.namespace_selector.as_ref().unwrap().match_expressions).unwrap();
    assert!(
        ns_exprs.as_array().unwrap().contains(&expr(
            "kubernetes.io/metadata.name",
            "NotIn",
            &never
        )),
        "{id}: system namespaces not excluded: {ns_exprs}"
    );
}

#[test]
fn base_renders_into_strictly_typed_objects_with_the_settings_that_matter() {
    let objs = render("deploy");
    parse_all(&objs);
    let images = images_env();
    let got: BTreeSet<String> = kinds(&objs).into_iter().collect();
    for want in [
        "Namespace/mesh-system",
        "ServiceAccount/mesh-webhook",
        "ClusterRole/mesh-webhook",
        "ClusterRoleBinding/mesh-webhook",
        "Role/mesh-webhook",
        "RoleBinding/mesh-webhook",
        "ConfigMap/mesh-injection-config",
        "Deployment/mesh-webhook",
        "PodDisruptionBudget/mesh-webhook",
        "Service/mesh-webhook",
        "MutatingWebhookConfiguration/mesh-sidecar-injector",
    ] {
        assert!(got.contains(want), "missing {want} in {got:?}");
    }
    assert_control_plane(&objs);
    assert_our_crds(&objs, true);

    let deploy: Deployment = typed(find(&objs, "Deployment", "mesh-webhook"));
    let spec = deploy.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_ref().unwrap();
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    assert!(
        selects(&spec.selector, &pod_labels),
        "Deployment selector misses its pods"
    );
    assert_eq!(
        pod_labels
            .get("sidecar.istio.io/inject")
            .map(String::as_str),
        Some("false")
    );
    let anti = pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .expect("anti-affinity");
    let term = &anti
        .preferred_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        term.pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );
    assert!(selects(
        term.pod_affinity_term.label_selector.as_ref().unwrap(),
        &pod_labels
    ));
    let sa: ServiceAccount = typed(find(&objs, "ServiceAccount", "mesh-webhook"));
    assert_eq!(pod.service_account_name, sa.metadata.name);
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert!(psc.run_as_user.unwrap_or(0) > 0);
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(images["MESH_WEBHOOK_IMAGE"].as_str())
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    assert!(sc.capabilities.as_ref().unwrap().add.is_none());
    let res = c.resources.as_ref().unwrap();
    for key in ["cpu", "memory"] {
        assert!(
            res.requests.as_ref().unwrap().contains_key(key),
            "no {key} request"
        );
    }
    assert!(
        res.limits.as_ref().unwrap().contains_key("memory"),
        "no memory limit"
    );
    let port = &c.ports.as_ref().unwrap()[0];
    assert_eq!(port.container_port, 9443);
    for (probe, path) in [
        (&c.readiness_probe, "/readyz"),
        (&c.liveness_probe, "/healthz"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
        assert_eq!(get.port, IntOrString::String(port.name.clone().unwrap()));
    }

    // The args point at the mounts.
    let args = c.args.clone().unwrap();
    assert!(
        args.contains(&"--self-signed".to_owned()),
        "the base uses self-managed certs"
    );
    let mounts = c.volume_mounts.clone().unwrap();
    let volumes = pod.volumes.clone().unwrap();
    let volume_at = |file: &str| {
        let m = mounts
            .iter()
            .find(|m| file.starts_with(&format!("{}/", m.mount_path)))
            .unwrap_or_else(|| panic!("{file} is on no mounted volume (read-only root fs)"));
        (
            m.clone(),
            volumes.iter().find(|v| v.name == m.name).unwrap().clone(),
        )
    };
    for flag in ["--cert", "--key"] {
        let (m, v) = volume_at(arg(&args, flag).unwrap());
        assert!(
            v.empty_dir.is_some() && m.read_only != Some(true),
            "{flag} must be writable"
        );
    }
    let (_, config_vol) = volume_at(arg(&args, "--config").unwrap());
    let cm: ConfigMap = typed(find(&objs, "ConfigMap", "mesh-injection-config"));
    assert_eq!(
        config_vol.config_map.unwrap().name,
        cm.metadata.name.clone().unwrap()
    );
    let secret_name = arg(&args, "--secret-name").unwrap();
    let webhook_name = arg(&args, "--webhook-config-name").unwrap();
    let service_name = arg(&args, "--service-name").unwrap();

    // The injection config is valid for the injector and names images.env's images.
    let config_yaml = &cm.data.as_ref().unwrap()["config.yaml"];
    let config = mesh_webhook::config::InjectConfig::from_yaml_str(config_yaml, "ConfigMap")
        .unwrap_or_else(|e| panic!("ConfigMap config.yaml: {e}"));
    assert_eq!(config.proxy_image, images["MESH_PROXY_IMAGE"]);
    assert_eq!(config.init_image, images["MESH_INIT_IMAGE"]);
    let defaults = mesh_webhook::config::InjectConfig::default();
    assert_eq!(
        defaults.proxy_image, images["MESH_PROXY_IMAGE"],
        "core default vs images.env"
    );
    assert_eq!(
        defaults.init_image, images["MESH_INIT_IMAGE"],
        "core default vs images.env"
    );

    // Service 443 -> the container's 9443, selecting the pods.
    let svc: Service = typed(find(&objs, "Service", service_name));
    let sspec = svc.spec.as_ref().unwrap();
    let sp = &sspec.ports.as_ref().unwrap()[0];
    assert_eq!(sp.port, 443);
    assert_eq!(
        sp.target_port,
        Some(IntOrString::String(port.name.clone().unwrap()))
    );
    let want = sspec.selector.clone().unwrap();
    assert!(
        want.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "Service misses the pods"
    );

    let pdb: PodDisruptionBudget = typed(find(&objs, "PodDisruptionBudget", "mesh-webhook"));
    let pspec = pdb.spec.unwrap();
    assert_eq!(pspec.min_available, Some(IntOrString::Int(1)));
    assert!(selects(pspec.selector.as_ref().unwrap(), &pod_labels));

    // RBAC: only our own webhook configuration (get, patch) and our one Secret.
    let cr: ClusterRole = typed(find(&objs, "ClusterRole", "mesh-webhook"));
    let rules = cr.rules.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["mutatingwebhookconfigurations".to_owned()][..])
    );
    assert_eq!(
        rules[0].resource_names.as_deref(),
        Some(&[webhook_name.to_owned()][..])
    );
    assert_eq!(rules[0].verbs, ["get", "patch"]);
    let role: Role = typed(find(&objs, "Role", "mesh-webhook"));
    for rule in role.rules.unwrap() {
        assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
        assert_eq!(rule.resources.as_deref(), Some(&["secrets".to_owned()][..]));
        match rule.resource_names.as_deref() {
            None => assert_eq!(rule.verbs, ["create"], "unnamed secrets: create only"),
            Some(names) => {
                assert_eq!(names, [secret_name.to_owned()]);
                assert!(
                    rule.verbs.iter().all(|v| v == "get" || v == "update"),
                    "{:?}",
                    rule.verbs
                );
            }
        }
    }
    for (kind, subjects, role_kind) in [
        (
            "ClusterRoleBinding",
            typed::<ClusterRoleBinding>(find(&objs, "ClusterRoleBinding", "mesh-webhook")).subjects,
            "ClusterRole",
        ),
        (
            "RoleBinding",
            typed::<RoleBinding>(find(&objs, "RoleBinding", "mesh-webhook")).subjects,
            "Role",
        ),
    ] {
        let s = subjects.unwrap();
        assert_eq!(s.len(), 1, "{kind}");
        assert_eq!(
            (s[0].kind.as_str(), s[0].name.as_str()),
            ("ServiceAccount", "mesh-webhook"),
            "{kind}"
        );
        assert_eq!(s[0].namespace.as_deref(), Some(NS), "{kind}");
        let _ = role_kind;
    }

    // The webhook configuration: Istio's two webhooks.
    let mwc: MutatingWebhookConfiguration =
        typed(find(&objs, "MutatingWebhookConfiguration", webhook_name));
    let hooks = mwc.webhooks.unwrap();
    assert_eq!(hooks.len(), 2);
    for h in &hooks {
        check_webhook(h, &svc);
    }
    let sel = |h: &MutatingWebhook| {
        (
            serde_json::to_value(&h.namespace_selector.as_ref().unwrap().match_expressions)
                .unwrap(),
            serde_json::to_value(&h.object_selector.as_ref().unwrap().match_expressions).unwrap(),
        )
    };
    let (ns0, obj0) = sel(&hooks[0]);
    assert!(
        ns0.as_array()
            .unwrap()
            .contains(&expr("istio-injection", "In", &["enabled"]))
    );
    assert_eq!(
        obj0,
        serde_json::json!([expr("sidecar.istio.io/inject", "NotIn", &["false"])])
    );
    let (ns1, obj1) = sel(&hooks[1]);
    assert!(
        ns1.as_array()
            .unwrap()
            .contains(&expr("istio-injection", "DoesNotExist", &[]))
    );
    assert_eq!(
        obj1,
        serde_json::json!([expr("sidecar.istio.io/inject", "In", &["true"])])
    );

    // Last, the args are ones `mesh-webhook serve` accepts.
    let mut argv = vec!["mesh-webhook".to_owned()];
    argv.extend(args.iter().cloned());
    if let Err(e) = mesh_webhook::cli::Cli::try_parse_from(&argv) {
        panic!("deploy/ passes arguments `mesh-webhook serve` rejects: {argv:?}\n{e}");
    }
}

#[test]
fn cert_manager_overlay_swaps_self_signed_for_cert_manager() {
    let objs = render("deploy/overlays/cert-manager");
    parse_all(&objs);
    let names = kinds(&objs);
    for gone in [
        "ClusterRole/mesh-webhook",
        "ClusterRoleBinding/mesh-webhook",
        "Role/mesh-webhook",
        "RoleBinding/mesh-webhook",
    ] {
        assert!(
            !names.iter().any(|n| n.starts_with(gone)),
            "overlay keeps {gone}: the webhook needs no RBAC"
        );
    }
    // The rest of the mesh as in the default install.
    assert_control_plane(&objs);
    assert_our_crds(&objs, true);
    let deploy: Deployment = typed(find(&objs, "Deployment", "mesh-webhook"));
    let pod = deploy.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap();
    assert!(
        !args.iter().any(|a| a.starts_with("--self-signed")),
        "{args:?}"
    );
    let mut argv = vec!["mesh-webhook".to_owned()];
    argv.extend(args.iter().cloned());
    if let Err(e) = mesh_webhook::cli::Cli::try_parse_from(&argv) {
        panic!("overlay passes arguments `mesh-webhook serve` rejects: {argv:?}\n{e}");
    }
    let cert: cert_manager::Object<cert_manager::CertificateSpec> =
        typed(find(&objs, "Certificate", "mesh-webhook"));
    let cert_dir = arg(&args, "--cert")
        .unwrap()
        .rsplit_once('/')
        .unwrap()
        .0
        .to_owned();
    let mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == cert_dir)
        .unwrap();
    let vol = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == mount.name)
        .unwrap();
    assert_eq!(
        vol.secret.as_ref().unwrap().secret_name.as_deref(),
        Some(cert.spec.secret_name.as_str())
    );
    assert_eq!(
        cert.spec.dns_names.unwrap(),
        [
            "mesh-webhook",
            "mesh-webhook.mesh-system",
            "mesh-webhook.mesh-system.svc",
            "mesh-webhook.mesh-system.svc.cluster.local"
        ]
    );
    let mwc: MutatingWebhookConfiguration = typed(find(
        &objs,
        "MutatingWebhookConfiguration",
        "mesh-sidecar-injector",
    ));
    assert_eq!(
        mwc.metadata.annotations.unwrap()["cert-manager.io/inject-ca-from"],
        format!("{NS}/{}", cert.metadata.name.unwrap())
    );
    assert_eq!(mwc.webhooks.unwrap().len(), 2);
}

/// The CRDs of the Istio kinds mesh-control serves: present (or absent) as a set.
fn assert_our_crds(objs: &[Value], present: bool) {
    let crds: BTreeSet<String> = objs
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .map(|o| {
            let crd: CustomResourceDefinition = typed(o);
            assert!(
                crd.spec.group.ends_with(".istio.io"),
                "{:?}: not an Istio kind",
                crd.metadata.name
            );
            assert_eq!(
                crd.metadata.name.as_deref(),
                Some(format!("{}.{}", crd.spec.names.plural, crd.spec.group).as_str())
            );
            assert_eq!(crd.spec.scope, "Namespaced", "{:?}", crd.metadata.name);
            crd.metadata.name.unwrap()
        })
        .collect();
    if present {
        for want in [
            "virtualservices.networking.istio.io",
            "destinationrules.networking.istio.io",
            "peerauthentications.security.istio.io",
            "authorizationpolicies.security.istio.io",
        ] {
            assert!(crds.contains(want), "no CRD {want}: {crds:?}");
        }
    } else {
        assert!(crds.is_empty(), "CRDs rendered: {crds:?}");
    }
}

/// mesh-control: what deploy/control/ must give every install.
fn assert_control_plane(objs: &[Value]) {
    let images = images_env();
    let deploy: Deployment = typed(find(objs, "Deployment", "mesh-control"));
    let spec = deploy.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    assert!(selects(&spec.selector, &pod_labels));
    assert_eq!(
        pod_labels
            .get("sidecar.istio.io/inject")
            .map(String::as_str),
        Some("false"),
        "the control plane gets no sidecar"
    );
    let pod = spec.template.spec.as_ref().unwrap();
    let sa: ServiceAccount = typed(find(objs, "ServiceAccount", "mesh-control"));
    assert_eq!(pod.service_account_name, sa.metadata.name);
    assert_ne!(
        sa.automount_service_account_token,
        Some(false),
        "in-cluster config"
    );
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    assert!(psc.run_as_user.unwrap_or(0) > 0);
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(images["MESH_CONTROL_IMAGE"].as_str())
    );
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.run_as_non_root, Some(true));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert!(caps.add.is_none());
    let res = c.resources.as_ref().unwrap();
    for key in ["cpu", "memory"] {
        assert!(
            res.requests.as_ref().unwrap().contains_key(key),
            "no {key} request"
        );
    }
    assert!(
        res.limits.as_ref().unwrap().contains_key("memory"),
        "no memory limit"
    );
    let args = c.args.clone().unwrap();
    assert_eq!(args[0], "serve", "{args:?}");
    let port_of = |name: &str| {
        c.ports
            .as_ref()
            .unwrap()
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("mesh-control has no port {name}"))
            .container_port
    };
    let xds = port_of("grpc-xds");
    let monitoring = port_of("http-monitoring");
    assert_eq!(
        (xds, monitoring),
        (
            i32::from(mesh_common::CONTROL_PLANE_PLAINTEXT_PORT),
            i32::from(mesh_common::CONTROL_PLANE_METRICS_PORT)
        )
    );
    assert_eq!(
        arg(&args, "--plaintext-addr"),
        Some(format!("0.0.0.0:{xds}").as_str())
    );
    assert_eq!(
        arg(&args, "--metrics-addr"),
        Some(format!("0.0.0.0:{monitoring}").as_str())
    );
    let ready = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(ready.path.as_deref(), Some("/readyz"));
    assert_eq!(ready.port, IntOrString::String("http-monitoring".into()));

    // Service mesh-control: the three ports, by name, onto the pods.
    let svc: Service = typed(find(objs, "Service", "mesh-control"));
    let sspec = svc.spec.as_ref().unwrap();
    let ports: Vec<(String, i32, Option<IntOrString>)> = sspec
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.port, p.target_port.clone()))
        .collect();
    assert_eq!(
        ports,
        [
            (
                "tls-grpc".to_owned(),
                i32::from(mesh_common::CONTROL_PLANE_TLS_PORT),
                Some(IntOrString::String("tls-grpc".into()))
            ),
            (
                "grpc-xds".to_owned(),
                xds,
                Some(IntOrString::String("grpc-xds".into()))
            ),
            (
                "http-monitoring".to_owned(),
                monitoring,
                Some(IntOrString::String("http-monitoring".into()))
            ),
        ]
    );
    let want = sspec.selector.clone().unwrap();
    assert!(
        !want.is_empty() && want.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "Service misses the pods"
    );
    // The injector points proxies at it: the built-in default and the ConfigMap's (its TLS
    // port, the config stream and the CA).
    let address = format!(
        "mesh-control.{NS}.svc:{}",
        mesh_common::CONTROL_PLANE_TLS_PORT
    );
    assert_eq!(
        mesh_webhook::config::InjectConfig::default().control_plane_address,
        address
    );
    let cm: ConfigMap = typed(find(objs, "ConfigMap", "mesh-injection-config"));
    let config = mesh_webhook::config::InjectConfig::from_yaml_str(
        &cm.data.as_ref().unwrap()["config.yaml"],
        "ConfigMap",
    )
    .unwrap();
    assert_eq!(config.control_plane_address, address);

    let pdb: PodDisruptionBudget = typed(find(objs, "PodDisruptionBudget", "mesh-control"));
    let pspec = pdb.spec.unwrap();
    assert_eq!(pspec.min_available, Some(IntOrString::Int(1)));
    assert!(selects(pspec.selector.as_ref().unwrap(), &pod_labels));

    // Least privilege: read what it translates (Secrets: a Gateway's credentialName),
    // write Events, nothing else.
    let read = ["get", "list", "watch"];
    let allowed: Vec<(&str, &str, &[&str])> = vec![
        ("", "services", &read),
        ("", "secrets", &read),
        ("", "pods", &read),
        ("", "namespaces", &read),
        ("discovery.k8s.io", "endpointslices", &read),
        ("networking.istio.io", "virtualservices", &read),
        ("networking.istio.io", "destinationrules", &read),
        ("networking.istio.io", "gateways", &read),
        ("security.istio.io", "peerauthentications", &read),
        ("security.istio.io", "authorizationpolicies", &read),
        ("", "events", &["create", "patch"]),
        ("events.k8s.io", "events", &["create", "patch"]),
        ("authentication.k8s.io", "tokenreviews", &["create"]),
        (
            "",
            "configmaps",
            &["get", "list", "watch", "create", "update", "patch"],
        ),
    ];
    let cr: ClusterRole = typed(find(objs, "ClusterRole", "mesh-control"));
    assert!(cr.aggregation_rule.is_none());
    let mut granted: BTreeSet<(String, String, String)> = BTreeSet::new();
    for rule in cr.rules.unwrap() {
        assert!(rule.non_resource_urls.is_none(), "{rule:?}");
        assert!(rule.resource_names.is_none(), "{rule:?}");
        for g in rule.api_groups.as_deref().unwrap_or_default() {
            for r in rule.resources.as_deref().unwrap_or_default() {
                for v in &rule.verbs {
                    assert!(
                        g != "*" && r != "*" && v != "*" && !r.contains('/'),
                        "wildcard or subresource in {rule:?}"
                    );
                    granted.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    let want: BTreeSet<(String, String, String)> = allowed
        .iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(|v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect();
    assert_eq!(granted, want, "mesh-control's ClusterRole");
    let crb: ClusterRoleBinding = typed(find(objs, "ClusterRoleBinding", "mesh-control"));
    assert_eq!(
        (crb.role_ref.kind.as_str(), crb.role_ref.name.as_str()),
        ("ClusterRole", "mesh-control")
    );
    let s = crb.subjects.unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(
        (
            s[0].kind.as_str(),
            s[0].name.as_str(),
            s[0].namespace.as_deref()
        ),
        ("ServiceAccount", "mesh-control", Some(NS))
    );
    // In mesh-system only: the CA's two Secrets (get by name), and create.
    let role: Role = typed(find(objs, "Role", "mesh-control"));
    assert_eq!(role.metadata.namespace.as_deref(), Some(NS));
    let rules: Vec<(Option<Vec<String>>, Vec<String>)> = role
        .rules
        .unwrap()
        .into_iter()
        .map(|r| {
            assert_eq!(r.api_groups.as_deref(), Some(&[String::new()][..]));
            assert_eq!(r.resources.as_deref(), Some(&["secrets".to_owned()][..]));
            (r.resource_names, r.verbs)
        })
        .collect();
    let names = Some(vec!["cacerts".to_owned(), "istio-ca-secret".to_owned()]);
    assert_eq!(
        rules,
        [
            (None, vec!["create".to_owned()]),
            (names, vec!["get".to_owned()])
        ],
        "mesh-control's Role"
    );
    let rb: RoleBinding = typed(find(objs, "RoleBinding", "mesh-control"));
    assert_eq!(rb.metadata.namespace.as_deref(), Some(NS));
    assert_eq!(
        (rb.role_ref.kind.as_str(), rb.role_ref.name.as_str()),
        ("Role", "mesh-control")
    );
    let s = rb.subjects.unwrap();
    assert_eq!(
        s.iter()
            .map(|s| (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()))
            .collect::<Vec<_>>(),
        [("ServiceAccount", "mesh-control", Some(NS))]
    );
}

#[test]
fn with_istio_crds_overlay_is_the_default_install_without_our_crds() {
    let objs = render("deploy/overlays/with-istio-crds");
    parse_all(&objs);
    assert_our_crds(&objs, false);
    assert_control_plane(&objs);
    let default = render("deploy");
    let without_crds: Vec<&Value> = default
        .iter()
        .filter(|o| o["kind"] != "CustomResourceDefinition")
        .collect();
    let mine: Vec<&Value> = objs.iter().collect();
    assert_eq!(mine, without_crds, "same objects as deploy/, less the CRDs");
}

/// kube-node has no cluster DNS: its overlay changes exactly mesh-control's ClusterIP and
/// the three injection settings that depend on it, nothing else.
#[test]
fn kube_node_overlay_pins_the_control_plane_address_and_turns_dns_capture_on() {
    let mut objs = render("deploy/overlays/kube-node");
    parse_all(&objs);
    let default = render("deploy");
    assert_eq!(kinds(&objs), kinds(&default));
    let svc = |o: &Value| o["kind"] == "Service" && o["metadata"]["name"] == "mesh-control";
    let cm =
        |o: &Value| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "mesh-injection-config";
    let mut checked = 0;
    for o in &mut objs {
        if svc(o) {
            let ip = o["spec"]
                .as_object_mut()
                .and_then(|s| s.remove("clusterIP"))
                .unwrap_or_else(|| panic!("no clusterIP: {o}"));
            assert_eq!(ip, "198.19.0.15");
            checked += 1;
        }
        if cm(o) {
            let text = o["data"]["config.yaml"].as_str().unwrap().to_owned();
            let config =
                mesh_webhook::config::InjectConfig::from_yaml_str(&text, "kube-node ConfigMap")
                    .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(config.control_plane_address, "198.19.0.15:15012");
            assert_eq!(config.control_plane_san, "mesh-control.mesh-system.svc");
            assert!(config.dns_capture);
            let base = find(&default, "ConfigMap", "mesh-injection-config")["data"]["config.yaml"]
                .as_str()
                .unwrap()
                .replace(
                    "controlPlaneAddress: mesh-control.mesh-system.svc:15012",
                    "controlPlaneAddress: 198.19.0.15:15012",
                )
                .replace(
                    "controlPlaneSan: \"\"",
                    "controlPlaneSan: mesh-control.mesh-system.svc",
                )
                .replace("dnsCapture: false", "dnsCapture: true");
            assert_eq!(
                text, base,
                "only controlPlaneAddress, controlPlaneSan and dnsCapture differ"
            );
            o["data"]["config.yaml"] = Value::String(
                find(&default, "ConfigMap", "mesh-injection-config")["data"]["config.yaml"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 2);
    assert_eq!(objs, default, "nothing else differs from deploy/");
}

#[test]
fn images_env_names_every_image_with_one_registry_and_tag() {
    let images = images_env();
    let registry = &images["MESH_IMAGE_REGISTRY"];
    let tag = &images["MESH_IMAGE_TAG"];
    let mut names = Vec::new();
    for (key, value) in &images {
        let Some(name) = key
            .strip_prefix("MESH_")
            .and_then(|k| k.strip_suffix("_IMAGE"))
        else {
            continue;
        };
        let name = name.to_lowercase().replace('_', "-");
        assert_eq!(value, &format!("{registry}/mesh-{name}:{tag}"), "{key}");
        let dockerfile = deploy_support::repo_root().join(format!("docker/{name}.Dockerfile"));
        assert!(dockerfile.is_file(), "{key}: no {}", dockerfile.display());
        names.push(name);
    }
    names.sort();
    assert_eq!(names, ["bookstore", "control", "init", "proxy", "webhook"]);
}
