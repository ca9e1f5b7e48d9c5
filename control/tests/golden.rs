//! Golden corpus for the translation (`Snapshot::build` + `Snapshot::resolve`).
//!
//! Every `testdata/translate/<case>/` holds:
//! - `input.yaml`: Namespaces, Pods, Services, EndpointSlices, Secrets and the Istio
//!   kinds (multi-document YAML, as `kubectl get -o yaml` shows them); a
//!   leading `# base: bookinfo.yaml` line reads that file of `testdata/translate/` first;
//! - `queries.yaml`: a list of `{proxy: <namespace>/<pod>, key: host/reviews}`, with
//!   `identity: spiffe://...` for a stream authenticated by that client certificate;
//! - `expected.yaml`: the build's diagnostics, then each query with the resource it
//!   resolves to.
//!
//! A case without `expected.yaml`, or whose output differs, fails with a line diff.
//! `UPDATE_GOLDEN=1 cargo test -p mesh-control --test golden` rewrites the expected files
//! (read every changed one: a golden is only worth what its review was).
//!
//! Every resolved resource must also pass the proxy's own checks (`Resource::validate`,
//! its regexes compile) and survive the wire encoding unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_config::{Key, Resource};
use mesh_control::translate::{Diagnostic, MeshSettings, Objects, ProxyNode, Snapshot};
use serde_json::{Value, json};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/translate")
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn typed<T: serde::de::DeserializeOwned>(doc: &Value, case: &str) -> T {
    serde_json::from_value(doc.clone()).unwrap_or_else(|e| {
        panic!(
            "{case}: {} {}: {e}",
            doc["kind"],
            doc["metadata"]["name"].as_str().unwrap_or("?")
        )
    })
}

fn objects(case: &str, docs: &[Value]) -> Objects {
    let mut o = Objects::default();
    for d in docs {
        match d["kind"].as_str().unwrap_or_default() {
            "Namespace" => o.namespaces.push(Arc::new(typed(d, case))),
            "Pod" => o.pods.push(Arc::new(typed(d, case))),
            "Service" => o.services.push(Arc::new(typed(d, case))),
            "EndpointSlice" => o.endpoint_slices.push(Arc::new(typed(d, case))),
            "Secret" => o.secrets.push(Arc::new(typed(d, case))),
            "Gateway" => o.gateways.push(d.clone()),
            "VirtualService" => o.virtual_services.push(d.clone()),
            "DestinationRule" => o.destination_rules.push(d.clone()),
            "PeerAuthentication" => o.peer_authentications.push(d.clone()),
            "AuthorizationPolicy" => o.authorization_policies.push(d.clone()),
            other => panic!("{case}: unexpected kind {other:?} in input.yaml"),
        }
    }
    o
}

fn diagnostic(d: &Diagnostic) -> Value {
    json!({
        "kind": d.kind, "namespace": d.namespace, "name": d.name,
        "field": d.field, "message": d.message,
    })
}

fn run_case(case: &str, path: &Path) -> String {
    let input = path.join("input.yaml");
    let head = fs::read_to_string(&input).unwrap_or_default();
    let mut docs = Vec::new();
    for line in head.lines().take_while(|l| l.starts_with('#')) {
        if let Some(base) = line.strip_prefix("# base:") {
            docs.extend(yaml_docs(&dir().join(base.trim())));
        }
    }
    docs.extend(yaml_docs(&input));
    let (snapshot, diags) = Snapshot::build(objects(case, &docs), &MeshSettings::default());
    let queries = yaml_docs(&path.join("queries.yaml"));
    let [Value::Array(queries)] = queries.as_slice() else {
        panic!("{case}: queries.yaml must be one list");
    };
    let mut answers = Vec::new();
    for q in queries {
        let proxy = q["proxy"].as_str().expect("proxy: <namespace>/<pod>");
        let (namespace, pod_name) = proxy.split_once('/').expect("proxy: <namespace>/<pod>");
        let key_text = q["key"].as_str().expect("key: addr/<ip> or host/<name>");
        let key: Key = key_text.parse().unwrap_or_else(|e| panic!("{case}: {e}"));
        let identity = q["identity"].as_str().map(str::to_owned);
        let node = ProxyNode {
            identity: identity.clone(),
            ..ProxyNode::new(namespace, pod_name)
        };
        let resource = snapshot.resolve(&node, &key);
        let what = format!("{case}: {proxy} {key_text}");
        resource
            .validate()
            .unwrap_or_else(|e| panic!("{what}: the proxy would refuse it: {e}"));
        for (where_, re) in resource.regexes() {
            regex::Regex::new(re).unwrap_or_else(|e| panic!("{what}: {where_}: {e}"));
        }
        assert_eq!(
            Resource::from_json(&resource.to_json()).unwrap(),
            resource,
            "{what}: wire round trip"
        );
        let mut answer = json!({
            "proxy": proxy,
            "key": key_text,
            "resource": serde_json::to_value(&resource).unwrap(),
        });
        if let Some(id) = identity {
            answer["identity"] = id.into();
        }
        answers.push(answer);
    }
    let out = json!({
        "diagnostics": diags.iter().map(diagnostic).collect::<Vec<_>>(),
        "queries": answers,
    });
    let mut text = serde_saphyr::to_string(&out).unwrap();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    format!(
        "# Generated by `UPDATE_GOLDEN=1 cargo test -p mesh-control --test golden`; reviewed by hand.\n{text}"
    )
}

/// A line diff (longest common subsequence), `-` for the expected file, `+` for now.
fn diff(want: &str, got: &str) -> String {
    let a: Vec<&str> = want.lines().collect();
    let b: Vec<&str> = got.lines().collect();
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push((' ', i, a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push(('-', i, a[i]));
            i += 1;
        } else {
            out.push(('+', i, b[j]));
            j += 1;
        }
    }
    // Changed lines with 3 lines of context.
    let changed: Vec<usize> = (0..out.len()).filter(|&k| out[k].0 != ' ').collect();
    let mut text = String::new();
    let mut last = None;
    for &k in &changed {
        let from = k.saturating_sub(3);
        let to = (k + 3).min(out.len() - 1);
        let start = match last {
            Some(l) if from <= l => l + 1,
            _ => {
                text.push_str(&format!("@@ expected line {}\n", out[from].1 + 1));
                from
            }
        };
        for (c, _, line) in out.iter().take(to + 1).skip(start) {
            text.push_str(&format!("{c}{line}\n"));
        }
        last = Some(to.max(last.unwrap_or(0)));
    }
    text
}

#[test]
fn golden() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut cases: Vec<PathBuf> = fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases in {}", dir().display());
    let mut failures = Vec::new();
    for path in &cases {
        let case = path.file_name().unwrap().to_string_lossy().into_owned();
        let got = run_case(&case, path);
        let expected = path.join("expected.yaml");
        if update {
            if fs::read_to_string(&expected).ok().as_deref() != Some(got.as_str()) {
                fs::write(&expected, &got).unwrap();
                eprintln!("updated {}", expected.display());
            }
            continue;
        }
        match fs::read_to_string(&expected) {
            Err(_) => failures.push(format!(
                "{case}: no expected.yaml (run with UPDATE_GOLDEN=1, then review it)"
            )),
            Ok(want) if want != got => {
                failures.push(format!("{case}: output differs\n{}", diff(&want, &got)))
            }
            Ok(_) => {}
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn diff_shows_changed_lines() {
    let d = diff("a\nb\nc\n", "a\nB\nc\n");
    assert!(d.contains("-b\n+B\n"), "{d}");
    assert!(diff("x\n", "x\n").is_empty());
}
