//! Seed corpora, made at run time from the webhook's golden cases so nothing is
//! duplicated in the repository. scripts/fuzz.sh runs the `admission` target binary with
//! `MESH_FUZZ_SEEDS_FROM=<webhook/testdata>` and `MESH_FUZZ_SEEDS_TO=<fuzz/corpus>`; its
//! init hook calls [`write_from_env`], which writes every corpus and exits.
//!
//! - `kube_inject/`: each golden case `testdata/inject/<case>.yaml` and its
//!   `<case>.yaml.injected`, verbatim.
//! - `admission/`: each recorded `testdata/admission/*.json` verbatim, and every pod
//!   template of every golden case wrapped as a Pod CREATE AdmissionReview the way
//!   server_kube_inject_parity.rs wraps them (workload templates as Pods).
//! - `lists/`: the values of every `traffic.sidecar.istio.io/*` annotation in the golden
//!   cases, mesh-init's default arguments, and the list examples of common's tests.
//! - `log_filter/`: the log-filter examples of common's tests and any log-level
//!   annotation of the golden cases.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use mesh_webhook::workloads;
use serde_json::Value;

use crate::kube_inject::{parse_all, pod_review};

const LIST_EXAMPLES: &[&str] = &[
    "",
    "*",
    "15090,15021",
    " 7000, 6000,,",
    "1,65535",
    "0",
    "65536",
    "+80",
    "*,80",
    "10.0.0.0/8, fd00::/8",
    "10.1.2.3/8,fd00::1/64",
    "0.0.0.0/0,::/0",
    "10.0.0.1",
    "fd00::1",
    "10.0.0.0/33",
    "::ffff:10.0.0.1/128",
    "198.18.0.0/15",
];

const LOG_EXAMPLES: &[&str] = &[
    "info",
    " WARNING ",
    "critical",
    "off",
    "trace",
    "info,mesh_proxy=debug, mesh_proxy::admin = trace",
    "mesh_proxy=debug",
    "warn,mesh_proxy::conn=error,hyper=off",
    "info,debug",
    "mesh-proxy=info",
    "a:::b=info",
];

/// A file name fragment from arbitrary text.
fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join(name), bytes)
}

/// Annotation values under `prefix` in every template of `doc`.
fn annotation_values(doc: &Value, keep: impl Fn(&str) -> bool, out: &mut BTreeSet<String>) {
    let Ok(templates) = workloads::find_templates(doc) else {
        return;
    };
    for t in templates {
        let Some(a) = doc
            .pointer(&t.pointer)
            .and_then(|t| t.pointer("/metadata/annotations"))
            .and_then(Value::as_object)
        else {
            continue;
        };
        for (k, v) in a {
            if keep(k)
                && let Some(v) = v.as_str()
            {
                out.insert(v.to_string());
            }
        }
    }
}

/// Write every corpus from `testdata` (webhook/testdata) into `corpus` (fuzz/corpus).
/// Returns how many files each got.
pub fn write_all(testdata: &Path, corpus: &Path) -> std::io::Result<Vec<(&'static str, usize)>> {
    let (mut n_yaml, mut n_review) = (0usize, 0usize);
    let mut list_values: BTreeSet<String> = LIST_EXAMPLES.iter().map(|s| s.to_string()).collect();
    list_values.extend(
        mesh_common::DEFAULT_INIT_ARGS
            .iter()
            .filter(|a| !a.starts_with('-'))
            .map(|s| s.to_string()),
    );
    let mut log_values: BTreeSet<String> = LOG_EXAMPLES.iter().map(|s| s.to_string()).collect();

    let mut cases: Vec<_> = fs::read_dir(testdata.join("inject"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let n = p.to_string_lossy();
            n.ends_with(".yaml") || n.ends_with(".yaml.injected")
        })
        .collect();
    cases.sort();
    for path in &cases {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = fs::read_to_string(path)?;
        write(
            &corpus.join("kube_inject"),
            &format!("golden-{}", slug(&name)),
            text.as_bytes(),
        )?;
        n_yaml += 1;
        let Ok(docs) = parse_all(&text) else { continue };
        for (i, doc) in docs.iter().enumerate() {
            annotation_values(
                doc,
                |k| k.starts_with("traffic.sidecar.istio.io/"),
                &mut list_values,
            );
            annotation_values(
                doc,
                |k| k.to_ascii_lowercase().contains("loglevel"),
                &mut log_values,
            );
            let Ok(templates) = workloads::find_templates(doc) else {
                continue;
            };
            for (j, t) in templates.iter().enumerate() {
                let Some(tv) = doc.pointer(&t.pointer) else {
                    continue;
                };
                let pod = if t.pointer.is_empty() {
                    tv.clone()
                } else {
                    let mut pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod"});
                    for k in ["metadata", "spec"] {
                        if let Some(v) = tv.get(k) {
                            pod[k] = v.clone();
                        }
                    }
                    pod
                };
                let ns = t.namespace.clone().unwrap_or_else(|| "default".to_string());
                let uid = format!("{name}-{i}-{j}");
                let body = serde_json::to_vec(&pod_review(&uid, &ns, pod))
                    .map_err(std::io::Error::other)?;
                write(
                    &corpus.join("admission"),
                    &format!("golden-{}-{i}-{j}.json", slug(&name)),
                    &body,
                )?;
                n_review += 1;
            }
        }
    }
    let mut recorded: Vec<_> = fs::read_dir(testdata.join("admission"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    recorded.sort();
    for path in &recorded {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        write(
            &corpus.join("admission"),
            &format!("recorded-{}", slug(&name)),
            &fs::read(path)?,
        )?;
        n_review += 1;
    }
    for (i, v) in list_values.iter().enumerate() {
        write(&corpus.join("lists"), &format!("seed-{i:03}"), v.as_bytes())?;
    }
    for (i, v) in log_values.iter().enumerate() {
        write(
            &corpus.join("log_filter"),
            &format!("seed-{i:03}"),
            v.as_bytes(),
        )?;
    }
    Ok(vec![
        ("admission", n_review),
        ("kube_inject", n_yaml),
        ("lists", list_values.len()),
        ("log_filter", log_values.len()),
    ])
}

/// The init hook of the `admission` target: when `MESH_FUZZ_SEEDS_FROM` and
/// `MESH_FUZZ_SEEDS_TO` are set, write the corpora and exit instead of fuzzing.
pub fn write_from_env() {
    let (Some(from), Some(to)) = (
        std::env::var_os("MESH_FUZZ_SEEDS_FROM"),
        std::env::var_os("MESH_FUZZ_SEEDS_TO"),
    ) else {
        return;
    };
    match write_all(Path::new(&from), Path::new(&to)) {
        Ok(counts) => {
            for (target, n) in counts {
                println!("seeds: {target}: {n} files");
            }
            std::process::exit(0);
        }
        Err(e) => {
            eprintln!(
                "seeds: cannot write the corpora from {}: {e}",
                Path::new(&from).display()
            );
            std::process::exit(2);
        }
    }
}
