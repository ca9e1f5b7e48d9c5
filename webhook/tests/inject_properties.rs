//! Properties of the injection core over every combination of a set of pod shapes:
//! metadata (absent, empty, user annotations, the user's own default-container and
//! prometheus annotations, the user's own `security.istio.io/tlsMode`), init containers
//! (absent, empty, one, two), app containers with and without a user
//! `istio-proxy`/`istio-init` at various positions, volumes (none; the user's own, one of
//! them named like the identity's token volume), native or regular sidecars, and four
//! configs (with and without a workload identity).
//!
//! For each: the patch applied to the input is exactly (key order included) the desired
//! template; injecting the result again is `Unchanged`; re-injecting it with another config
//! gives exactly what injecting the original with that config gives; uninjecting gives the
//! original back (up to empty lists and maps that injection had to create).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use mesh_webhook::config::{ControlPlaneAuthPolicy, InjectConfig, NativeSidecars};
use mesh_webhook::inject::{self, InjectRequest, NamespacePolicy, Outcome};
use serde_json::{Map, Value, json};

fn text(v: &Value) -> String {
    serde_json::to_string(v).unwrap()
}

fn metadata_variants() -> Vec<Option<Value>> {
    vec![
        None,
        Some(json!({"name": "p"})),
        Some(json!({"name": "p", "annotations": {}, "labels": {"app": "p"}})),
        Some(
            json!({"name": "p", "annotations": {"team": "a", "traffic.sidecar.istio.io/excludeOutboundPorts": "5432"}}),
        ),
        Some(
            json!({"annotations": {"kubectl.kubernetes.io/default-container": "helper",
                                    "prometheus.io/path": "/m"}, "name": "p"}),
        ),
        Some(json!({"labels": {"security.istio.io/tlsMode": "disabled", "app": "p"}, "name": "p"})),
        Some(json!({"name": "p", "labels": {"security.istio.io/tlsMode": "istio"}})),
    ]
}

fn volume_variants() -> Vec<Option<Value>> {
    vec![
        None,
        Some(
            json!([{"name": "data", "emptyDir": {}}, {"name": "istio-token", "emptyDir": {"medium": "Memory"}}]),
        ),
    ]
}

fn init_variants() -> Vec<Option<Value>> {
    vec![
        None,
        Some(json!([])),
        Some(json!([{"name": "migrate", "image": "m"}])),
        Some(
            json!([{"name": "a", "image": "a"}, {"name": "istio-init", "image": "custom-init"}, {"name": "b", "image": "b"}]),
        ),
    ]
}

fn container_variants() -> Vec<Value> {
    vec![
        json!([{"name": "app", "image": "app"}]),
        json!([{"name": "app", "image": "app"}, {"name": "helper", "image": "h", "x-unknown": 1}]),
        json!([{"name": "istio-proxy", "image": "mine", "env": [{"name": "X", "value": "1"}]}, {"name": "app", "image": "app"}]),
        json!([{"name": "app", "image": "app"}, {"name": "istio-proxy", "resources": {"limits": {"memory": "1Gi"}}}, {"name": "tail", "image": "t"}]),
    ]
}

fn pods() -> Vec<Value> {
    let mut out = Vec::new();
    for meta in metadata_variants() {
        for init in init_variants() {
            for containers in container_variants() {
                for volumes in volume_variants() {
                    let mut pod = Map::new();
                    if let Some(m) = &meta {
                        pod.insert("metadata".into(), m.clone());
                    }
                    let mut spec = Map::new();
                    spec.insert("serviceAccountName".into(), json!("sa"));
                    if let Some(i) = &init {
                        spec.insert("initContainers".into(), i.clone());
                    }
                    spec.insert("containers".into(), containers.clone());
                    if let Some(v) = &volumes {
                        spec.insert("volumes".into(), v.clone());
                    }
                    spec.insert("futureField".into(), json!({"keep": true}));
                    pod.insert("spec".into(), Value::Object(spec));
                    out.push(Value::Object(pod));
                }
            }
        }
    }
    out
}

fn configs() -> Vec<InjectConfig> {
    vec![
        InjectConfig::default(),
        InjectConfig {
            proxy_image: "registry.example.com/proxy:2".into(),
            native_sidecars: NativeSidecars::True,
            ..InjectConfig::default()
        },
        InjectConfig {
            control_plane_address: String::new(),
            dns_capture: true,
            ..InjectConfig::default()
        },
        InjectConfig {
            control_plane_address: "mesh-control.mesh-system.svc:15010".into(),
            control_plane_auth_policy: ControlPlaneAuthPolicy::None,
            ..InjectConfig::default()
        },
    ]
}

fn req(t: &Value, native: bool) -> InjectRequest<'_> {
    InjectRequest {
        template: t,
        namespace: Some("shop"),
        namespace_policy: NamespacePolicy::Selected,
        native_sidecars: native,
        workload: None,
    }
}

/// Inject and check patch == desired; returns the injected template.
fn inject_checked(t: &Value, cfg: &InjectConfig, native: bool) -> Value {
    let Outcome::Patched(ops) = inject::inject(&req(t, native), cfg).unwrap() else {
        panic!("not patched: {t}")
    };
    assert!(!ops.is_empty());
    let desired = inject::desired_template(&req(t, native), cfg)
        .unwrap()
        .unwrap();
    let mut patched = t.clone();
    json_patch::patch(&mut patched, &ops).unwrap();
    assert_eq!(
        text(&patched),
        text(&desired),
        "patch != desired for {t}\nops: {}",
        serde_json::to_string(&ops).unwrap()
    );
    patched
}

/// Drop what injection had to create and uninject cannot know was not there: empty
/// `initContainers`/annotation/label maps and an empty `metadata`.
/// Uninjecting `injected` gives back `pod` (up to key order).
fn assert_uninject_restores(injected: &Value, pod: &Value) {
    let Outcome::Patched(ops) = inject::uninject(injected).unwrap() else {
        panic!("uninject did nothing")
    };
    let mut back = injected.clone();
    json_patch::patch(&mut back, &ops).unwrap();
    assert_eq!(
        text(&normalized(back)),
        text(&normalized(pod.clone())),
        "uninject did not restore {pod}"
    );
}

fn normalized(mut v: Value) -> Value {
    let obj = v.as_object_mut().unwrap();
    if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in ["annotations", "labels"] {
            if m.get(key).is_some_and(|a| a == &json!({})) {
                m.shift_remove(key);
            }
        }
    }
    if obj.get("metadata").is_some_and(|m| m == &json!({})) {
        obj.shift_remove("metadata");
    }
    let spec = obj.get_mut("spec").unwrap().as_object_mut().unwrap();
    if spec.get("initContainers").is_some_and(|i| i == &json!([])) {
        spec.shift_remove("initContainers");
    }
    v
}

#[test]
fn inject_reinject_uninject_properties() {
    let cfgs = configs();
    let mut checked = 0;
    for pod in pods() {
        for (ci, cfg) in cfgs.iter().enumerate() {
            for native in [false, true] {
                let injected = inject_checked(&pod, cfg, native);

                // Idempotent.
                assert_eq!(
                    inject::inject(&req(&injected, native), cfg).unwrap(),
                    Outcome::Unchanged,
                    "{pod}"
                );

                // Re-injection with another config (and the other layout) equals a fresh
                // injection of the original with it.
                let other = &cfgs[(ci + 1) % cfgs.len()];
                for other_native in [false, true] {
                    let re = inject_checked(&injected, other, other_native);
                    let fresh = inject_checked(&pod, other, other_native);
                    assert_eq!(
                        text(&re),
                        text(&fresh),
                        "re-injection differs from fresh injection for {pod}"
                    );
                }

                // Uninject restores the original.
                assert_uninject_restores(&injected, &pod);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 7 * 4 * 4 * 2 * 4 * 2);
}

#[test]
fn layout_is_as_the_contract_says() {
    for pod in pods() {
        let cfg = InjectConfig::default();
        let user_init: Vec<String> = pod["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .filter(|n| *n != "istio-init")
            .map(str::to_string)
            .collect();
        let names = |v: &Value, k: &str| -> Vec<String> {
            v["spec"][k]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        };
        // Regular: user init containers, then istio-init; proxy last among containers.
        let r = inject_checked(&pod, &cfg, false);
        let mut want_init = user_init.clone();
        want_init.push("istio-init".into());
        assert_eq!(names(&r, "initContainers"), want_init);
        let c = names(&r, "containers");
        assert_eq!(c.last().map(String::as_str), Some("istio-proxy"));
        assert_eq!(c.iter().filter(|n| *n == "istio-proxy").count(), 1);
        // The default container is the first app container, unless the user chose one.
        let dc = &r["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"];
        match pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"].as_str() {
            Some(user) => assert_eq!(dc, user),
            None => assert_eq!(dc, c[0].as_str()),
        }
        // Native: istio-init, istio-proxy (restartPolicy Always) at the head.
        let n = inject_checked(&pod, &cfg, true);
        let mut want = vec!["istio-init".to_string(), "istio-proxy".to_string()];
        want.extend(user_init);
        assert_eq!(names(&n, "initContainers"), want);
        assert_eq!(n["spec"]["initContainers"][1]["restartPolicy"], "Always");
        assert!(!names(&n, "containers").contains(&"istio-proxy".to_string()));
        // Unknown fields survive.
        assert_eq!(n["spec"]["futureField"], json!({"keep": true}));
    }
}

#[test]
fn identity_is_added_where_the_pod_has_none_of_its_own() {
    let none = &configs()[3];
    for pod in pods() {
        let r = inject_checked(&pod, &InjectConfig::default(), false);
        let status: Value = serde_json::from_str(
            r["metadata"]["annotations"]["sidecar.istio.io/status"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        // The label: the pod's own value if it has one, else istio (and then recorded).
        let own = pod["metadata"]["labels"]["security.istio.io/tlsMode"].as_str();
        assert_eq!(
            r["metadata"]["labels"]["security.istio.io/tlsMode"],
            own.unwrap_or("istio"),
            "{pod}"
        );
        let recorded_label = status["labels"]
            .as_array()
            .is_some_and(|l| l.contains(&json!("security.istio.io/tlsMode")));
        assert_eq!(recorded_label, own.is_none(), "{pod}");
        // The volumes: ours unless the pod has one of that name; each name exactly once.
        let user_token = pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v["name"] == "istio-token");
        let vols: Vec<&str> = r["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        for name in ["istio-token", "istiod-ca-cert"] {
            assert_eq!(vols.iter().filter(|n| **n == name).count(), 1, "{vols:?}");
        }
        let want_recorded: Vec<&str> = if user_token {
            vec!["istiod-ca-cert"]
        } else {
            vec!["istio-token", "istiod-ca-cert"]
        };
        assert_eq!(status["volumes"], json!(want_recorded), "{pod}");
        // NONE: nothing of it.
        let n = inject_checked(&pod, none, false);
        assert_eq!(
            n["metadata"]["labels"]["security.istio.io/tlsMode"].as_str(),
            own,
            "{pod}"
        );
        assert_eq!(n["spec"]["volumes"], pod["spec"]["volumes"], "{pod}");
        assert!(!text(&n).contains("--root-cert"), "{pod}");
    }
}

/// Gateway pods (`inject.istio.io/templates: gateway`, or a proxy-only pod labelled for
/// injection): with every config and layout, the same properties as sidecars (patch ==
/// desired, idempotent, re-injection == fresh injection, uninject restores), and the
/// gateway's shape: no `istio-init` of ours, `--role gateway`, the proxy a regular
/// container, no tlsMode label added, the user's other containers untouched.
#[test]
fn gateway_properties() {
    let proxy = json!({"name": "istio-proxy", "image": "auto",
                       "securityContext": {"readOnlyRootFilesystem": true}});
    let metas = [
        json!({"name": "gw", "annotations": {"inject.istio.io/templates": "gateway"}}),
        json!({"name": "gw", "labels": {"sidecar.istio.io/inject": "true", "istio": "ingressgateway"}}),
        json!({"name": "gw", "labels": {"sidecar.istio.io/inject": "true"},
               "annotations": {"inject.istio.io/templates": "gateway",
                               "prometheus.io/port": "15020"}}),
    ];
    let layouts = [
        (None, json!([proxy.clone()])),
        (Some(json!([])), json!([proxy.clone()])),
        (
            Some(
                json!([{"name": "istio-init", "image": "theirs"}, {"name": "setup", "image": "s"}]),
            ),
            json!([proxy.clone()]),
        ),
    ];
    let cfgs = configs();
    let mut checked = 0;
    for meta in &metas {
        for (init, containers) in &layouts {
            let mut extra = vec![containers.clone()];
            // The annotation form also takes other containers, kept and not captured.
            if meta["annotations"]["inject.istio.io/templates"] == "gateway" {
                extra.push(json!([proxy.clone(), {"name": "shipper", "image": "s"}]));
            }
            for containers in extra {
                let mut spec = json!({"serviceAccountName": "gw", "containers": containers});
                if let Some(i) = init {
                    spec["initContainers"] = i.clone();
                }
                let pod = json!({"metadata": meta, "spec": spec});
                for (ci, cfg) in cfgs.iter().enumerate() {
                    for native in [false, true] {
                        if cfg.control_plane_address.is_empty() {
                            // A gateway needs mesh-control: refused, saying so.
                            let e = inject::inject(&req(&pod, native), cfg).unwrap_err();
                            assert!(e.to_string().contains("controlPlaneAddress"), "{e}");
                            continue;
                        }
                        let injected = inject_checked(&pod, cfg, native);
                        let spec = &injected["spec"];
                        let init_names: Vec<&str> = spec["initContainers"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|c| c["name"].as_str().unwrap())
                            .collect();
                        let user_init: Vec<&str> = pod["spec"]["initContainers"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|c| c["name"].as_str().unwrap())
                            .collect();
                        assert_eq!(init_names, user_init, "{pod}");
                        assert_eq!(
                            spec["initContainers"], pod["spec"]["initContainers"],
                            "{pod}"
                        );
                        let names: Vec<&str> = spec["containers"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|c| c["name"].as_str().unwrap())
                            .collect();
                        assert_eq!(names.last(), Some(&"istio-proxy"), "{pod}");
                        let p = spec["containers"].as_array().unwrap().last().unwrap();
                        assert_eq!(p["args"][0], "--role");
                        assert_eq!(p["args"][1], "gateway");
                        assert!(!text(p).contains("--dns-capture"), "{pod}");
                        assert!(p.get("restartPolicy").is_none(), "{pod}");
                        assert_ne!(p["image"], "auto", "{pod}");
                        assert_eq!(
                            injected["metadata"]["labels"].get("security.istio.io/tlsMode"),
                            None,
                            "{pod}"
                        );

                        assert_eq!(
                            inject::inject(&req(&injected, native), cfg).unwrap(),
                            Outcome::Unchanged,
                            "{pod}"
                        );
                        // A gateway does not depend on the sidecar layout: the other
                        // layout leaves it alone too.
                        assert_eq!(
                            inject::inject(&req(&injected, !native), cfg).unwrap(),
                            Outcome::Unchanged,
                            "{pod}"
                        );
                        let other = (1..cfgs.len())
                            .map(|k| &cfgs[(ci + k) % cfgs.len()])
                            .find(|c| !c.control_plane_address.is_empty())
                            .unwrap();
                        let re = inject_checked(&injected, other, native);
                        let fresh = inject_checked(&pod, other, native);
                        assert_eq!(text(&re), text(&fresh), "re-injection of {pod}");

                        assert_uninject_restores(&injected, &pod);
                        checked += 1;
                    }
                }
            }
        }
    }
    // Every config but the one without a control plane (refused above).
    assert_eq!(checked, (3 * 2 + 3 + 3 * 2) * 3 * 2);
}

/// Asking an injected pod for the other template re-injects it: the result is what a
/// fresh injection of the pod with that template gives (the hash covers the role).
#[test]
fn switching_between_sidecar_and_gateway_reinjects() {
    let cfg = InjectConfig::default();
    let sidecar = json!({"metadata": {"name": "p", "labels": {"app": "p"}},
        "spec": {"containers": [{"name": "istio-proxy", "image": "auto"}, {"name": "app", "image": "a"}]}});
    let mut gateway = sidecar.clone();
    gateway["metadata"]["annotations"] = json!({"inject.istio.io/templates": "gateway"});
    for native in [false, true] {
        let as_sidecar = inject_checked(&sidecar, &cfg, native);
        assert!(text(&as_sidecar).contains("mesh-init"));
        let mut asked = as_sidecar.clone();
        asked["metadata"]["annotations"]["inject.istio.io/templates"] = json!("gateway");
        let re = inject_checked(&asked, &cfg, native);
        let fresh = inject_checked(&gateway, &cfg, native);
        assert_eq!(text(&re), text(&fresh));
        assert!(!text(&re).contains("mesh-init"), "{re:#}");

        let mut back = fresh.clone();
        back["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .shift_remove("inject.istio.io/templates");
        let re = inject_checked(&back, &cfg, native);
        // Equal, up to where `initContainers` sits among the spec's keys (the gateway had
        // none, so the sidecar's comes after the volumes).
        assert_eq!(re, as_sidecar);
    }
}
