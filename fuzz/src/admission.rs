//! Target `admission`: bytes are the body of `POST /inject`, fed to
//! `admission::handler::review`, the function the HTTP handler calls on it.
//!
//! Checked, for two injection setups (the default config with a regular sidecar, and
//! another proxy image with a native sidecar), as inject_properties.rs checks them:
//! - no panic, and the answer is an `admission.k8s.io/v1` AdmissionReview echoing the uid,
//!   `patchType: JSONPatch` exactly when there is a `patch`, a denial with a message;
//! - an injection patch applies to `request.object` (the API server would reject one that
//!   does not), and has as many operations as the decision says;
//! - the patched pod, reviewed again the same way, is `Unchanged` (inject twice == once);
//! - uninject of the patched pod gives the original back (up to the empty lists and maps
//!   injection had to create) when the original recorded no earlier injection;
//! - re-reviewing the pod injected with one setup under the other gives exactly what
//!   reviewing the original under the other gives (the upgrade path of re-injection).

use std::sync::OnceLock;

use base64::Engine as _;
use mesh_webhook::admission::handler::{self, Decision, Settings};
use mesh_webhook::config::InjectConfig;
use mesh_webhook::inject::{self, Outcome};
use serde_json::Value;

use crate::grammar::mesh_init_accepts;
use crate::{has_status, normalized, short, text};

/// The two setups every input is reviewed with.
pub fn setups() -> &'static [(InjectConfig, bool); 2] {
    static S: OnceLock<[(InjectConfig, bool); 2]> = OnceLock::new();
    S.get_or_init(|| {
        let other = InjectConfig::from_yaml_str(
            "{proxyImage: registry.example.com/proxy:2, nativeSidecars: true}",
            "fuzz setup",
        )
        .expect("the fuzz setup's config is valid");
        let native = other.native_sidecars.resolve(None);
        [(InjectConfig::default(), false), (other, native)]
    })
}

/// One review and what it says, checked for the invariants every answer keeps.
pub(crate) struct Reviewed {
    pub(crate) decision: Decision,
    /// The patched object, when a patch came back.
    pub(crate) patched: Option<Value>,
}

pub(crate) fn review(
    body: &[u8],
    object: &Value,
    uid: &Value,
    cfg: &InjectConfig,
    native: bool,
) -> Option<Reviewed> {
    let settings = Settings {
        native_sidecars: native,
    };
    let answer = handler::review(body, cfg, settings).ok()?;
    let out: Value = serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("answer body is not JSON ({e}): {:?}", answer.body));
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1", "{out}");
    assert_eq!(out["kind"], "AdmissionReview", "{out}");
    let resp = &out["response"];
    assert_eq!(&resp["uid"], uid, "uid not echoed: {out}");
    assert_eq!(
        resp.get("patch").is_some(),
        resp.get("patchType").is_some(),
        "patch and patchType must come together: {out}"
    );
    let mut patched = None;
    match &answer.decision {
        Decision::Injected { operations } => {
            assert_eq!(resp["allowed"], true, "{out}");
            assert_eq!(resp["patchType"], "JSONPatch", "{out}");
            let b64 = resp["patch"].as_str().expect("patch is a string");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("patch is base64");
            let patch: json_patch::Patch =
                serde_json::from_slice(&bytes).expect("patch is an RFC 6902 patch");
            assert!(
                !patch.0.is_empty(),
                "an Injected answer with an empty patch"
            );
            assert_eq!(patch.0.len(), *operations, "operation count");
            let mut p = object.clone();
            if let Err(e) = json_patch::patch(&mut p, &patch.0) {
                panic!(
                    "the patch does not apply to the object: {e}\nobject: {}\npatch: {}",
                    short(&text(object)),
                    short(&String::from_utf8_lossy(&bytes))
                );
            }
            patched = Some(p);
        }
        Decision::Denied(msg) => {
            assert_eq!(resp["allowed"], false, "{out}");
            assert!(resp.get("patch").is_none(), "{out}");
            assert_eq!(
                resp["status"]["message"].as_str(),
                Some(msg.as_str()),
                "{out}"
            );
            assert!(!msg.is_empty());
        }
        Decision::Unchanged | Decision::Skipped(_) | Decision::NotPodCreate => {
            assert_eq!(resp["allowed"], true, "{out}");
            assert!(resp.get("patch").is_none(), "{out}");
        }
    }
    Some(Reviewed {
        decision: answer.decision,
        patched,
    })
}

/// Containers named `name` in `spec.initContainers` and `spec.containers`.
fn named<'a>(pod: &'a Value, name: &str) -> Vec<&'a Value> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| pod.get("spec")?.get(*k)?.as_array())
        .flatten()
        .filter(|c| c.get("name").and_then(Value::as_str) == Some(name))
        .collect()
}

/// When the user had no `istio-init` of their own (whose fields would override ours), the
/// injected one runs `mesh-init` with arguments mesh-init accepts. A gateway (its proxy
/// has `--role gateway`) gets no `istio-init` at all.
pub fn check_init_args(original: &Value, patched: &Value) {
    let init = mesh_common::containers::INIT;
    if !named(original, init).is_empty() {
        return;
    }
    let gateway = named(patched, mesh_common::containers::PROXY)
        .iter()
        .any(|p| {
            let args = p.get("args").and_then(Value::as_array);
            args.and_then(|a| a.get(1)).and_then(Value::as_str)
                == Some(mesh_common::contract::proxy::flag::ROLE_GATEWAY)
                && args.and_then(|a| a.first()).and_then(Value::as_str)
                    == Some(mesh_common::contract::proxy::flag::ROLE)
        });
    if gateway {
        assert!(
            named(patched, init).is_empty(),
            "a gateway got an {init} container: {}",
            short(&text(patched))
        );
        return;
    }
    let ours = named(patched, init);
    assert_eq!(
        ours.len(),
        1,
        "expected one {init} container: {}",
        short(&text(patched))
    );
    let c = ours[0];
    let command: Vec<&str> = c
        .get("command")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        command,
        [mesh_common::contract::init::BINARY],
        "{init} command"
    );
    let args: Vec<&str> = c
        .get("args")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().expect("args are strings"))
                .collect()
        })
        .unwrap_or_default();
    if let Err(e) = mesh_init_accepts(&args) {
        panic!(
            "mesh-init refuses the arguments the injector wrote: {e}\nargs: {args:?}\npod: {}",
            short(&text(original))
        );
    }
}

fn with_object(body: &Value, object: &Value) -> Vec<u8> {
    let mut b = body.clone();
    b["request"]["object"] = object.clone();
    serde_json::to_vec(&b).expect("a JSON value serializes")
}

/// The whole property set for one body.
pub fn check(data: &[u8]) {
    let mut injected: [Option<Value>; 2] = [None, None];
    // Reviews reject what is not JSON before anything else; parse once for the checks.
    let body: Option<Value> = serde_json::from_slice(data).ok();
    for (i, (cfg, native)) in setups().iter().enumerate() {
        let Some(body) = &body else {
            // Not JSON (or too deep for a Value): the review must still answer without
            // panicking.
            let _ = handler::review(
                data,
                cfg,
                Settings {
                    native_sidecars: *native,
                },
            );
            continue;
        };
        let object = body
            .pointer("/request/object")
            .cloned()
            .unwrap_or(Value::Null);
        let uid = body.pointer("/request/uid").cloned().unwrap_or(Value::Null);
        let Some(first) = review(data, &object, &uid, cfg, *native) else {
            crate::note!("admission[{i}]: review refused the body");
            continue;
        };
        let Some(patched) = first.patched else {
            crate::note!("admission[{i}]: {:?}", first.decision);
            continue;
        };
        crate::note!(
            "admission[{i}]: {:?}: checking twice == once, init args, uninject",
            first.decision
        );

        // Inject twice == once.
        let again = review(&with_object(body, &patched), &patched, &uid, cfg, *native)
            .expect("the patched pod's review is refused");
        assert!(
            again.decision == Decision::Unchanged,
            "reviewing the injected pod again gave {:?}, not Unchanged\noriginal: {}\ninjected: {}",
            again.decision,
            short(&text(&object)),
            short(&text(&patched))
        );

        // The init container we wrote runs: mesh-init accepts its arguments (annotation
        // values from strangers become those arguments).
        check_init_args(&object, &patched);

        // Uninject gives the original back, where nothing earlier was recorded.
        if !has_status(&object) {
            let back = match inject::uninject(&patched) {
                Ok(Outcome::Patched(ops)) => {
                    let mut back = patched.clone();
                    if let Err(e) = json_patch::patch(&mut back, &ops) {
                        panic!(
                            "the uninject patch does not apply: {e}\ninjected: {}",
                            short(&text(&patched))
                        );
                    }
                    back
                }
                other => panic!(
                    "uninject of an injected pod gave {other:?}\ninjected: {}",
                    short(&text(&patched))
                ),
            };
            let (want, got) = (normalized(object.clone()), normalized(back));
            assert!(
                want == got,
                "uninject did not restore the original\noriginal:  {}\nuninjected: {}\ninjected: {}",
                short(&text(&want)),
                short(&text(&got)),
                short(&text(&patched))
            );
        }
        injected[i] = Some(patched);
    }

    // Re-injection under the other setup == fresh injection under it.
    let (Some(body), [Some(a), Some(b)]) = (&body, &injected) else {
        return;
    };
    let object = body
        .pointer("/request/object")
        .cloned()
        .unwrap_or(Value::Null);
    if has_status(&object) {
        return;
    }
    let uid = body.pointer("/request/uid").cloned().unwrap_or(Value::Null);
    crate::note!("admission: checking re-injection across setups");
    for (from, to, want) in [(a, 1usize, b), (b, 0usize, a)] {
        let (cfg, native) = &setups()[to];
        let re = review(&with_object(body, from), from, &uid, cfg, *native)
            .expect("the injected pod's review under the other setup is refused");
        let got = re.patched.unwrap_or_else(|| {
            panic!(
                "re-injection under the other setup gave {:?}\ninjected: {}",
                re.decision,
                short(&text(from))
            )
        });
        assert!(
            &got == want,
            "re-injection differs from a fresh injection\noriginal: {}\nfresh: {}\nre-injected: {}",
            short(&text(&object)),
            short(&text(want)),
            short(&text(&got))
        );
    }
}
