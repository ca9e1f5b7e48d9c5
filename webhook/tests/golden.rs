//! Golden corpus for the injection core and kube-inject.
//!
//! Every `testdata/inject/<case>.yaml` is run through kube-inject (or kube-uninject) and
//! must equal `<case>.yaml.injected`, or, when the run fails, `<case>.yaml.err` (the error
//! message). New files are picked up automatically; a case without its golden, or a golden
//! without its case, fails. `UPDATE_GOLDEN=1 cargo test -p mesh-webhook --test golden`
//! rewrites the goldens (review the diff!).
//!
//! Header comments of a case set its options:
//!   `# config: {nativeSidecars: true, proxyImage: x}`  injection config (YAML flow mapping)
//!   `# mode: uninject`                                 run kube-uninject instead
//! A config the injector refuses makes the case an error case: its `.err` is the config
//! error (origin `case header`), what `kube-inject --config` and `serve` refuse to start
//! with.
//!
//! Each case also goes through the core directly, as the webhook does: for every pod
//! template, the patch `inject` returns, applied to the template, must give exactly (key
//! order included) the template `desired_template` describes, and putting those templates
//! back into the documents must give the golden output. Running kube-inject on the golden
//! output must change nothing (idempotence).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use mesh_webhook::config::InjectConfig;
use mesh_webhook::inject::{self, InjectRequest, NamespacePolicy, Outcome};
use mesh_webhook::kube_inject::{self, Mode};
use mesh_webhook::{workloads, yaml};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/inject")
}

struct Case {
    name: String,
    input: String,
    cfg: InjectConfig,
    /// The header's config, refused.
    cfg_error: Option<String>,
    uninject: bool,
}

impl Case {
    fn load(path: &Path) -> Case {
        let input = fs::read_to_string(path).unwrap();
        let mut cfg = InjectConfig::default();
        let mut cfg_error = None;
        let mut uninject = false;
        for line in input.lines().take_while(|l| l.starts_with('#')) {
            if let Some(c) = line.strip_prefix("# config:") {
                match InjectConfig::from_yaml_str(c.trim(), "case header") {
                    Ok(c) => cfg = c,
                    Err(e) => cfg_error = Some(e.to_string()),
                }
            }
            if line.trim() == "# mode: uninject" {
                uninject = true;
            }
        }
        Case {
            name: path.file_name().unwrap().to_string_lossy().into_owned(),
            input,
            cfg,
            cfg_error,
            uninject,
        }
    }

    fn native(&self) -> bool {
        self.cfg.native_sidecars.resolve(None)
    }

    fn mode(&self) -> Mode<'_> {
        if self.uninject {
            Mode::Uninject
        } else {
            Mode::Inject {
                cfg: &self.cfg,
                native_sidecars: self.native(),
            }
        }
    }
}

/// Same keys in the same order, equal values.
fn identical(a: &Value, b: &Value) -> bool {
    serde_json::to_string(a).unwrap() == serde_json::to_string(b).unwrap()
}

/// The documents of a stream, parsed (empty ones dropped).
fn parse_all(s: &str) -> Vec<Value> {
    yaml::split_documents(s)
        .iter()
        .filter_map(|d| yaml::parse_document(d).unwrap())
        .collect()
}

/// The core, called per template the way the webhook calls it (with the workload
/// kube-inject names for the document); returns the documents with
/// every template replaced by the patched one, after checking patch == desired.
fn through_core(case: &Case) -> Vec<Value> {
    let mut docs = parse_all(&case.input);
    for doc in &mut docs {
        for t in workloads::find_templates(doc).unwrap() {
            let template = doc.pointer(&t.pointer).unwrap().clone();
            let (outcome, desired) = if case.uninject {
                (inject::uninject(&template).unwrap(), None)
            } else {
                let req = InjectRequest {
                    template: &template,
                    namespace: t.namespace.as_deref(),
                    namespace_policy: NamespacePolicy::Unknown,
                    native_sidecars: case.native(),
                    workload: t.workload.as_ref(),
                };
                (
                    inject::inject(&req, &case.cfg).unwrap(),
                    inject::desired_template(&req, &case.cfg).unwrap(),
                )
            };
            if let Outcome::Patched(ops) = outcome {
                let mut patched = template.clone();
                json_patch::patch(&mut patched, &ops).unwrap();
                if let Some(want) = desired {
                    assert!(
                        identical(&patched, &want),
                        "{}: {}: patch applied to the template differs from the desired template",
                        case.name,
                        t.label
                    );
                }
                *doc.pointer_mut(&t.pointer).unwrap() = patched;
            } else {
                assert!(desired.is_none(), "{}: desired without a patch", case.name);
            }
        }
    }
    docs
}

#[test]
fn golden_corpus() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut names: BTreeSet<String> = BTreeSet::new();
    let mut goldens: BTreeSet<String> = BTreeSet::new();
    for entry in fs::read_dir(dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") {
            names.insert(name);
        } else if name.ends_with(".yaml.injected") || name.ends_with(".yaml.err") {
            goldens.insert(name);
        } else {
            panic!("unexpected file in testdata/inject: {name}");
        }
    }
    assert!(
        names.len() >= 30,
        "the corpus shrank: {} cases",
        names.len()
    );

    let mut failures = Vec::new();
    for name in &names {
        let case = Case::load(&dir().join(name));
        let ok_path = dir().join(format!("{name}.injected"));
        let err_path = dir().join(format!("{name}.err"));
        let run = match &case.cfg_error {
            Some(e) => Err(e.clone()),
            None => kube_inject::rewrite(&case.input, case.mode()).map_err(|e| e.to_string()),
        };
        let (got, path, other) = match run {
            Ok(r) => (r.output, &ok_path, &err_path),
            Err(e) => (format!("{e}\n"), &err_path, &ok_path),
        };
        goldens.remove(&format!("{name}.injected"));
        goldens.remove(&format!("{name}.err"));
        if update {
            fs::write(path, &got).unwrap();
            let _ = fs::remove_file(other);
        } else {
            if other.exists() {
                failures.push(format!(
                    "{name}: expected {} but got {}",
                    other.display(),
                    path.display()
                ));
                continue;
            }
            match fs::read_to_string(path) {
                Ok(want) if want == got => {}
                Ok(want) => failures.push(format!(
                    "{name}: output differs from {}\n--- want\n{want}\n--- got\n{got}",
                    path.display()
                )),
                Err(_) => failures.push(format!("{name}: missing golden {}", path.display())),
            }
        }
        if path == &err_path {
            // A failed run must fail the same way through the core.
            continue;
        }
        // The core, called directly, agrees with kube-inject.
        let via_core = through_core(&case);
        let via_cli = parse_all(&got);
        if via_core != via_cli {
            failures.push(format!("{name}: core and kube-inject disagree"));
        }
        // Twice equals once.
        let again = kube_inject::rewrite(&got, case.mode()).unwrap();
        if again.output != got {
            failures.push(format!("{name}: a second run changed the output"));
        }
    }
    if !update {
        for orphan in goldens {
            failures.push(format!("orphaned golden without its case: {orphan}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Applying a case's patch with the JSON keys escaped the way RFC 6901 says.
#[test]
fn patch_escapes_status_annotation_key() {
    let pod: Value = serde_json::json!({
        "metadata": {"name": "p", "annotations": {"a": "b"}},
        "spec": {"containers": [{"name": "app", "image": "app"}]}
    });
    let req = InjectRequest {
        template: &pod,
        namespace: Some("default"),
        namespace_policy: NamespacePolicy::Selected,
        native_sidecars: false,
        workload: None,
    };
    let Outcome::Patched(ops) = inject::inject(&req, &InjectConfig::default()).unwrap() else {
        panic!("not patched")
    };
    let text = serde_json::to_string(&ops).unwrap();
    assert!(
        text.contains(r#""path":"/metadata/annotations/sidecar.istio.io~1status""#),
        "{text}"
    );
    assert!(text.contains(r#""path":"/spec/containers/-""#), "{text}");
    assert!(text.contains(r#""path":"/spec/initContainers""#), "{text}");
}

/// Every gateway case (`gateway-*.yaml`): kube-uninject of its kube-inject output gives
/// back exactly its input, key order included (the `uninject-gateway-*` cases pin two of
/// them as goldens), and the output is a gateway's: the proxy has `--role gateway` and no
/// `--dns-capture`, and no `istio-init` runs `mesh-init`.
#[test]
fn gateway_cases_uninject_to_their_input_and_capture_nothing() {
    let mut seen = 0;
    for entry in fs::read_dir(dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !(name.starts_with("gateway-") && name.ends_with(".yaml")) {
            continue;
        }
        let case = Case::load(&dir().join(&name));
        let injected = kube_inject::rewrite(&case.input, case.mode())
            .unwrap()
            .output;
        let back = kube_inject::rewrite(&injected, Mode::Uninject)
            .unwrap()
            .output;
        let (want, got) = (parse_all(&case.input), parse_all(&back));
        assert_eq!(want.len(), got.len(), "{name}");
        for (w, g) in want.iter().zip(&got) {
            assert!(
                identical(w, g),
                "{name}: uninject does not give the input back\n--- input\n{w:#}\n--- uninjected\n{g:#}"
            );
        }
        for doc in parse_all(&injected) {
            for t in workloads::find_templates(&doc).unwrap() {
                let spec = &doc.pointer(&t.pointer).unwrap()["spec"];
                let all = ["initContainers", "containers"]
                    .iter()
                    .filter_map(|k| spec.get(*k).and_then(Value::as_array))
                    .flatten();
                let mut proxies = 0;
                for c in all {
                    let args: Vec<&str> = c["args"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    assert_ne!(c["command"][0], "mesh-init", "{name}: {c}");
                    if c["name"] == "istio-proxy" {
                        proxies += 1;
                        assert_eq!(args[..2], ["--role", "gateway"], "{name}");
                        assert!(!args.contains(&"--dns-capture"), "{name}");
                    }
                }
                assert_eq!(proxies, 1, "{name}: {}", t.label);
            }
        }
        seen += 1;
    }
    assert!(seen >= 4, "only {seen} gateway cases");
}
