//! The contract between the injector and the two binaries it writes command lines for.
//!
//! Every pod the injection golden corpus produces (`webhook/testdata/inject/*.injected`),
//! and a set of pod shapes injected here through the core with several configs, has its
//! `istio-init` and `istio-proxy` containers fed to the real parsers of `mesh-init` and
//! `mesh-proxy`, in process, through their library entry points. A container fails the
//! contract when:
//! - its command is not the binary the contract names;
//! - an argument is unknown to the binary, or a value is one the binary would reject
//!   (parsing and validation, exactly as the binary does before it starts);
//! - the injector sets an environment variable the proxy never reads (variables the
//!   user put into their own `istio-proxy` container, or into the `proxyMetadata` of the
//!   pod's ProxyConfig, `proxy.istio.io/config` over the config's `defaultConfig`, are
//!   theirs, not the injector's: Istio passes `proxyMetadata` through the same way);
//! - `mesh-init -u`/`-g` differ from the uid/gid the proxy container really runs as, so
//!   the proxy's own connections would be captured and loop;
//! - one of the two has `--dns-capture` and the other not: the app's DNS would be sent to a
//!   port nobody answers on (or the proxy would answer DNS nobody sends it);
//! - the proxy is given a workload identity (`--root-cert`) but a file it reads for it (the
//!   root certificate, the ServiceAccount token at `--token-file` or its default path) is
//!   not on a mount of a pod volume, or the token volume is not a projected token for the
//!   CA's audience with that file name;
//! - a gateway's proxy (`--role gateway`, Istio's gateway template) has `--dns-capture`, or
//!   its pod an `istio-init` running `mesh-init`: nothing is captured in a gateway pod;
//!   and a sidecar's proxy is written a `--role` at all (its args stay as they were).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use mesh_common::contract;
use mesh_webhook::config::{ControlPlaneAuthPolicy, InjectConfig, NativeSidecars};
use mesh_webhook::inject::{self, InjectRequest, NamespacePolicy};
use mesh_webhook::proxy_config::{self, ProxyConfig};
use mesh_webhook::{workloads, yaml};
use serde_json::{Value, json};

/// One injected pod template and where it came from.
struct Injected {
    origin: String,
    template: Value,
    /// Env names of the user's own `istio-proxy` container in the input, if any.
    user_proxy_env: BTreeSet<String>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../webhook/testdata/inject")
}

fn parse_all(s: &str) -> Vec<Value> {
    yaml::split_documents(s)
        .iter()
        .filter_map(|d| yaml::parse_document(d).unwrap())
        .collect()
}

fn container<'a>(template: &'a Value, name: &str) -> Option<&'a Value> {
    let spec = template.get("spec")?;
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(name))
}

fn env_names(c: Option<&Value>) -> BTreeSet<String> {
    c.and_then(|c| c.get("env"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// The `proxyMetadata` names of a template's ProxyConfig (its `proxy.istio.io/config` over
/// the config's `defaultConfig`): env the injector passes through for the user.
fn proxy_metadata_names(template: &Value, cfg: &InjectConfig) -> BTreeSet<String> {
    let annotated = template
        .get("metadata")
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(proxy_config::ANNOTATION))
        .and_then(Value::as_str)
        .map(|t| ProxyConfig::parse(t).unwrap().config)
        .unwrap_or_default();
    annotated
        .merged_over(&cfg.default_config)
        .proxy_metadata
        .into_keys()
        .collect()
}

/// A golden case's injection config (its `# config:` header), or the default.
fn case_config(input: &str) -> InjectConfig {
    input
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix("# config:"))
        .map(|c| InjectConfig::from_yaml_str(c.trim(), "case header").unwrap())
        .unwrap_or_default()
}

/// Every injected template of the golden corpus (uninject cases and error cases have
/// nothing injected to check).
fn golden_pods() -> Vec<Injected> {
    let mut out = Vec::new();
    let mut names: Vec<PathBuf> = fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "injected"))
        .collect();
    names.sort();
    assert!(
        names.len() >= 20,
        "golden corpus not found in {}",
        corpus_dir().display()
    );
    for golden in names {
        let input_path = golden.with_extension("");
        let input = fs::read_to_string(&input_path).unwrap();
        if input.lines().any(|l| l.trim() == "# mode: uninject") {
            continue;
        }
        let output = fs::read_to_string(&golden).unwrap();
        let cfg = case_config(&input);
        let (ins, outs) = (parse_all(&input), parse_all(&output));
        assert_eq!(
            ins.len(),
            outs.len(),
            "{}: document count",
            golden.display()
        );
        for (i, (din, dout)) in ins.iter().zip(&outs).enumerate() {
            for t in workloads::find_templates(dout).unwrap() {
                let template = dout.pointer(&t.pointer).unwrap().clone();
                if container(&template, mesh_common::containers::PROXY).is_none() {
                    continue; // not injected (opted out, hostNetwork, ...)
                }
                let user = din
                    .pointer(&t.pointer)
                    .and_then(|tin| container(tin, mesh_common::containers::PROXY));
                let mut user_proxy_env = env_names(user);
                user_proxy_env.extend(proxy_metadata_names(&template, &cfg));
                out.push(Injected {
                    origin: format!(
                        "{} doc {i} {}",
                        input_path.file_name().unwrap().to_string_lossy(),
                        t.label
                    ),
                    template,
                    user_proxy_env,
                });
            }
        }
    }
    out
}

fn configs() -> Vec<(&'static str, InjectConfig)> {
    vec![
        ("default", InjectConfig::default()),
        (
            "native",
            InjectConfig {
                native_sidecars: NativeSidecars::True,
                ..InjectConfig::default()
            },
        ),
        (
            "uid2000-gid3000",
            InjectConfig {
                proxy_uid: 2000,
                proxy_gid: 3000,
                ..InjectConfig::default()
            },
        ),
        (
            "log-istio-spelling",
            InjectConfig {
                proxy_log_level: Some("warning".into()),
                ..InjectConfig::default()
            },
        ),
        (
            "log-directives",
            InjectConfig {
                proxy_log_level: Some("info,mesh_proxy=debug".into()),
                ..InjectConfig::default()
            },
        ),
        (
            "control-plane-override-plaintext",
            InjectConfig {
                control_plane_address: "[fd00::12]:15010".into(),
                control_plane_auth_policy: ControlPlaneAuthPolicy::None,
                ..InjectConfig::default()
            },
        ),
        (
            "identity-options",
            InjectConfig {
                control_plane_address: "198.19.0.15:15012".into(),
                control_plane_san: "mesh-control.mesh-system.svc".into(),
                ca_address: "[fd00::13]:15012".into(),
                trust_domain: "example.org".into(),
                ..InjectConfig::default()
            },
        ),
        (
            "dns-capture-no-control-plane",
            InjectConfig {
                control_plane_address: String::new(),
                dns_capture: true,
                ..InjectConfig::default()
            },
        ),
        (
            "default-proxy-config",
            InjectConfig {
                default_config: ProxyConfig::parse(
                    "{concurrency: 0, terminationDrainDuration: 1m, \
                     proxyMetadata: {TEAM: mesh, SECRET_TTL: 6h}}",
                )
                .unwrap()
                .config,
                ..InjectConfig::default()
            },
        ),
        (
            "custom-ports",
            InjectConfig {
                outbound_port: 16001,
                inbound_port: 16006,
                admin_port: 16021,
                metrics_port: 16090,
                exclude_inbound_ports: "16090,16021".into(),
                ..InjectConfig::default()
            },
        ),
    ]
}

fn shapes() -> Vec<(&'static str, Value)> {
    let app = json!({"name": "app", "image": "app"});
    vec![
        ("basic", json!({"spec": {"containers": [app]}})),
        (
            "traffic-annotations",
            json!({"metadata": {"annotations": {
                "traffic.sidecar.istio.io/includeOutboundIPRanges": "10.0.0.0/8, fd00::/8",
                "traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.96.0.1/32,",
                "traffic.sidecar.istio.io/includeInboundPorts": "8080,9090",
                "traffic.sidecar.istio.io/excludeInboundPorts": "9091",
                "traffic.sidecar.istio.io/excludeOutboundPorts": "5432,6379"
            }}, "spec": {"containers": [app]}}),
        ),
        (
            "no-inbound",
            json!({"metadata": {"annotations": {
                "traffic.sidecar.istio.io/includeInboundPorts": ""
            }}, "spec": {"containers": [app]}}),
        ),
        (
            "log-annotation",
            json!({"metadata": {"annotations": {"sidecar.istio.io/logLevel": "debug"}},
                   "spec": {"containers": [app]}}),
        ),
        (
            "override-uid",
            json!({"spec": {"containers": [app,
                {"name": "istio-proxy", "securityContext": {"runAsUser": 1234}}]}}),
        ),
        (
            "override-uid-gid",
            json!({"spec": {"containers": [
                {"name": "istio-proxy", "securityContext": {"runAsUser": 1234, "runAsGroup": 4321}},
                app]}}),
        ),
        (
            "override-gid-only",
            json!({"spec": {"containers": [app,
                {"name": "istio-proxy", "securityContext": {"runAsGroup": 4321}}]}}),
        ),
        (
            "pod-level-run-as-user",
            json!({"spec": {"securityContext": {"runAsUser": 999, "runAsGroup": 999},
                            "containers": [app]}}),
        ),
        (
            "own-token-volume",
            json!({"spec": {"containers": [app], "volumes": [{"name": "istio-token",
                "projected": {"sources": [{"serviceAccountToken":
                    {"audience": "istio-ca", "expirationSeconds": 3600, "path": "istio-token"}}]}}]}}),
        ),
        (
            "gateway-template",
            json!({"metadata": {"annotations": {"inject.istio.io/templates": "gateway"}},
                   "spec": {"containers": [{"name": "istio-proxy", "image": "auto"}]}}),
        ),
        (
            "gateway-label",
            json!({"metadata": {"labels": {"sidecar.istio.io/inject": "true"}},
                   "spec": {"containers": [{"name": "istio-proxy", "image": "auto",
                        "env": [{"name": "SECRET_TTL", "value": "12h"}]}]}}),
        ),
        (
            "proxy-config",
            json!({"metadata": {"annotations": {"proxy.istio.io/config":
                "concurrency: 4\nterminationDrainDuration: 30s\nproxyMetadata:\n  \
                 ISTIO_META_DNS_CAPTURE: \"true\"\n  FOO: bar\n  MESH_PROXY_LOG: debug\n\
                 holdApplicationUntilProxyStarts: true\ntracing: {sampling: 1}\n"}},
                   "spec": {"containers": [app]}}),
        ),
        (
            "user-env-in-override",
            json!({"spec": {"containers": [app,
                {"name": "istio-proxy", "env": [{"name": "MY_OWN", "value": "1"}]}]}}),
        ),
    ]
}

/// Every shape injected with every config, through the same core the webhook uses.
fn shape_pods() -> Vec<Injected> {
    let mut out = Vec::new();
    for (cname, cfg) in configs() {
        for (sname, pod) in shapes() {
            let native = cfg.native_sidecars.resolve(None);
            let req = InjectRequest {
                template: &pod,
                namespace: Some("shop"),
                namespace_policy: NamespacePolicy::Selected,
                workload: None,
                native_sidecars: native,
            };
            let template = match inject::desired_template(&req, &cfg) {
                // A gateway needs a control plane: refused, never injected half-working.
                Err(inject::InjectError::Gateway { .. })
                    if sname.starts_with("gateway") && cfg.control_plane_address.is_empty() =>
                {
                    continue;
                }
                r => r
                    .unwrap_or_else(|e| panic!("{sname} with {cname}: {e}"))
                    .unwrap_or_else(|| panic!("{sname} with {cname}: not injected")),
            };
            let mut user_proxy_env = env_names(container(&pod, mesh_common::containers::PROXY));
            user_proxy_env.extend(proxy_metadata_names(&pod, &cfg));
            out.push(Injected {
                origin: format!("shape {sname} with config {cname}"),
                template,
                user_proxy_env,
            });
        }
    }
    out
}

fn strings(c: &Value, key: &str) -> Vec<String> {
    c.get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|v| v.as_str().expect("string item").to_owned())
        .collect()
}

/// The value the kubelet would give an env entry: a literal, or a plausible value for
/// the downward-API fields the injector uses.
fn env_value(e: &Value) -> Result<String, String> {
    if let Some(v) = e.get("value") {
        return v
            .as_str()
            .map(str::to_owned)
            .ok_or(format!("non-string value {e}"));
    }
    let path = e
        .pointer("/valueFrom/fieldRef/fieldPath")
        .and_then(Value::as_str)
        .ok_or(format!("env entry the test cannot resolve: {e}"))?;
    Ok(match path {
        "metadata.name" => "web-7d4b9c-x2x5q",
        "metadata.namespace" => "shop",
        "status.podIP" => "198.18.0.7",
        "spec.serviceAccountName" => "web",
        other => return Err(format!("unknown downward-API field {other}")),
    }
    .to_owned())
}

fn security_id(c: &Value, key: &str) -> Option<i64> {
    c.pointer(&format!("/securityContext/{key}"))
        .and_then(Value::as_i64)
}

/// Checks `istio-init` against mesh-init's parser and validation, and its `-u`/`-g`
/// against the uid/gid the proxy container runs as.
fn check_init(init: &Value, proxy: &Value) -> Result<(), String> {
    let cmd = strings(init, "command");
    if cmd != [contract::init::BINARY] {
        return Err(format!(
            "istio-init command {cmd:?}, expected [{}]",
            contract::init::BINARY
        ));
    }
    let mut argv = vec![contract::init::BINARY.to_owned()];
    argv.extend(strings(init, "args"));
    let cli = <mesh_init::cli::Cli as clap::Parser>::try_parse_from(&argv)
        .map_err(|e| format!("mesh-init rejects {argv:?}: {e}"))?;
    if cli.command.is_some() {
        return Err(format!("{argv:?} parses as a subcommand"));
    }
    mesh_init::model::Settings::from_flags(&cli.capture.flags())
        .map_err(|e| format!("mesh-init rejects {argv:?}: {e}"))?;
    let uid = cli.capture.proxy_uid.clone();
    let gid = cli.capture.proxy_gid.clone().unwrap_or_else(|| uid.clone());
    let run_uid = security_id(proxy, "runAsUser").ok_or("istio-proxy has no runAsUser")?;
    let run_gid = security_id(proxy, "runAsGroup").ok_or("istio-proxy has no runAsGroup")?;
    if uid != run_uid.to_string() || gid != run_gid.to_string() {
        return Err(format!(
            "mesh-init exempts uid {uid} gid {gid}, but istio-proxy runs as {run_uid}:{run_gid}"
        ));
    }
    Ok(())
}

/// Checks `istio-proxy` against mesh-proxy's parser and validation, and that every env
/// var the injector set is one the proxy reads.
fn check_proxy(proxy: &Value, user_env: &BTreeSet<String>) -> Result<(), String> {
    let cmd = strings(proxy, "command");
    if cmd != [contract::proxy::BINARY] {
        return Err(format!(
            "istio-proxy command {cmd:?}, expected [{}]",
            contract::proxy::BINARY
        ));
    }
    // holdApplicationUntilProxyStarts: the postStart hook is `mesh-proxy wait`, which the
    // proxy's own parser must take as such.
    if let Some(hook) = proxy.pointer("/lifecycle/postStart/exec/command") {
        let hook: Vec<String> = hook
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        if hook.first().map(String::as_str) != Some(contract::proxy::BINARY) {
            return Err(format!(
                "istio-proxy's postStart hook {hook:?} is not mesh-proxy"
            ));
        }
        match mesh_proxy::cli::Args::command_from(hook.clone(), &|_| None) {
            Ok(mesh_proxy::cli::Command::Wait(_)) => {}
            other => {
                return Err(format!(
                    "istio-proxy's postStart hook {hook:?} is not `mesh-proxy wait`: {other:?}"
                ));
            }
        }
    }
    let mut env = Vec::new();
    for e in proxy
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = e
            .get("name")
            .and_then(Value::as_str)
            .ok_or("env entry without name")?;
        env.push((name.to_owned(), env_value(e)?));
    }
    let asked = RefCell::new(BTreeSet::new());
    let lookup = |k: &str| {
        asked.borrow_mut().insert(k.to_owned());
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    };
    let mut argv = vec![contract::proxy::BINARY.to_owned()];
    argv.extend(strings(proxy, "args"));
    let command = mesh_proxy::cli::Args::command_from(argv.clone(), &lookup)
        .map_err(|e| format!("mesh-proxy rejects {argv:?}: {e}"))?;
    let mesh_proxy::cli::Command::Run(args) = command else {
        return Err(format!("{argv:?} asks for help or version, not a run"));
    };
    args.into_config()
        .map_err(|e| format!("mesh-proxy rejects {argv:?}: {e}"))?;
    let asked = asked.into_inner();
    for (name, _) in &env {
        if !asked.contains(name) && !user_env.contains(name) {
            return Err(format!(
                "the injector sets env {name} on istio-proxy, but mesh-proxy never reads it"
            ));
        }
    }
    Ok(())
}

/// `--dns-capture` on both containers or on neither.
fn check_dns(init: &Value, proxy: &Value) -> Result<(), String> {
    let has = |c: &Value, flag: &str| strings(c, "args").iter().any(|a| a == flag);
    let (i, p) = (
        has(init, contract::init::DNS_CAPTURE),
        has(proxy, contract::proxy::flag::DNS_CAPTURE),
    );
    if i != p {
        return Err(format!(
            "--dns-capture on istio-init: {i}, on istio-proxy: {p}; they must agree"
        ));
    }
    Ok(())
}

/// The value after `flag` in the container's args.
fn flag_value(c: &Value, flag: &str) -> Option<String> {
    let args = strings(c, "args");
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).cloned()
}

/// The pod volume that the proxy sees `file` through (the mount whose path is a directory
/// of it), or why there is none.
fn volume_of<'a>(template: &'a Value, proxy: &Value, file: &str) -> Result<&'a Value, String> {
    let mount = proxy
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|m| {
            m.get("mountPath")
                .and_then(Value::as_str)
                .is_some_and(|dir| file.starts_with(&format!("{}/", dir.trim_end_matches('/'))))
        })
        .ok_or(format!(
            "istio-proxy reads {file}, but no volumeMount holds it"
        ))?;
    let name = mount
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    template
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
        .ok_or(format!(
            "istio-proxy mounts volume {name:?} for {file}, but the pod has no such volume"
        ))
}

/// With `--root-cert`, the files the proxy's identity needs are there when it starts.
fn check_identity(template: &Value, proxy: &Value) -> Result<(), String> {
    let Some(root) = flag_value(proxy, contract::proxy::flag::ROOT_CERT) else {
        return Ok(());
    };
    volume_of(template, proxy, &root)?;
    let token = flag_value(proxy, contract::proxy::flag::TOKEN_FILE)
        .unwrap_or_else(|| mesh_common::identity::TOKEN_PATH.to_owned());
    let volume = volume_of(template, proxy, &token)?;
    // A projected token (ours, or the user's own volume of that name) must be one the CA
    // accepts, at the path the proxy reads.
    if let Some(sources) = volume
        .pointer("/projected/sources")
        .and_then(Value::as_array)
    {
        let file = token.rsplit('/').next().unwrap_or_default();
        let ok = sources.iter().any(|s| {
            s.pointer("/serviceAccountToken/audience")
                .and_then(Value::as_str)
                == Some(mesh_common::identity::TOKEN_AUDIENCE)
                && s.pointer("/serviceAccountToken/path")
                    .and_then(Value::as_str)
                    == Some(file)
        });
        if !ok {
            return Err(format!(
                "{token} comes from volume {}, which projects no ServiceAccount token for audience {} at {file}",
                volume["name"],
                mesh_common::identity::TOKEN_AUDIENCE
            ));
        }
    }
    Ok(())
}

/// A gateway (`--role gateway`) captures nothing; a sidecar is written no `--role`.
fn check_role(template: &Value, proxy: &Value) -> Result<(), String> {
    let role = flag_value(proxy, contract::proxy::flag::ROLE);
    match role.as_deref() {
        None => Ok(()),
        Some(contract::proxy::flag::ROLE_GATEWAY) => {
            if strings(proxy, "args")
                .iter()
                .any(|a| a == contract::proxy::flag::DNS_CAPTURE)
            {
                return Err("a gateway's istio-proxy has --dns-capture".into());
            }
            let capture = container(template, mesh_common::containers::INIT)
                .is_some_and(|c| strings(c, "command") == [contract::init::BINARY]);
            if capture {
                return Err(format!(
                    "a gateway's pod has an istio-init running {}",
                    contract::init::BINARY
                ));
            }
            Ok(())
        }
        Some(other) => Err(format!(
            "istio-proxy is written --role {other}: a sidecar gets no --role"
        )),
    }
}

fn check(p: &Injected) -> Result<(), String> {
    let proxy = container(&p.template, mesh_common::containers::PROXY).ok_or("no istio-proxy")?;
    check_proxy(proxy, &p.user_proxy_env)?;
    check_identity(&p.template, proxy)?;
    check_role(&p.template, proxy)?;
    if let Some(init) = container(&p.template, mesh_common::containers::INIT) {
        check_init(init, proxy)?;
        check_dns(init, proxy)?;
    }
    Ok(())
}

fn check_all(pods: &[Injected]) {
    let failures: Vec<String> = pods
        .iter()
        .filter_map(|p| check(p).err().map(|e| format!("{}: {e}", p.origin)))
        .collect();
    assert!(
        failures.is_empty(),
        "contract broken:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_golden_pod_starts_with_the_binaries_parsers() {
    let pods = golden_pods();
    assert!(
        pods.len() >= 20,
        "only {} injected templates in the corpus",
        pods.len()
    );
    check_all(&pods);
}

#[test]
fn every_shape_and_config_starts_with_the_binaries_parsers() {
    let pods = shape_pods();
    check_all(&pods);
    // A user's runAsUser/runAsGroup on istio-proxy moves the capture exemption with it;
    // a pod-level runAsUser does not, because the proxy container sets its own.
    let args_of = |origin: &str| {
        let p = pods.iter().find(|p| p.origin == origin).unwrap();
        strings(container(&p.template, "istio-init").unwrap(), "args").join(" ")
    };
    assert!(args_of("shape override-uid with config default").contains("-u 1234 "));
    assert!(args_of("shape override-uid with config default").contains("-g 1337"));
    assert!(args_of("shape override-uid-gid with config default").contains("-g 4321"));
    assert!(args_of("shape pod-level-run-as-user with config default").contains("-u 1337 "));
    // The default config gives every pod an identity; NONE gives none.
    let proxy_args_of = |origin: &str| {
        let p = pods.iter().find(|p| p.origin == origin).unwrap();
        strings(container(&p.template, "istio-proxy").unwrap(), "args").join(" ")
    };
    assert!(proxy_args_of("shape basic with config default").contains("--root-cert "));
    assert!(
        !proxy_args_of("shape basic with config control-plane-override-plaintext")
            .contains("--root-cert")
    );
    assert!(
        proxy_args_of("shape basic with config identity-options")
            .contains("--control-plane-san mesh-control.mesh-system.svc")
    );
    // dnsCapture reaches mesh-init; the default config does not capture DNS.
    assert!(
        args_of("shape basic with config dns-capture-no-control-plane").ends_with(" --dns-capture")
    );
    assert!(!args_of("shape basic with config default").contains("--dns-capture"));
    // proxy.istio.io/config: concurrency, terminationDrainDuration and
    // ISTIO_META_DNS_CAPTURE reach the proxy (and mesh-init) as flags; the config's
    // defaultConfig too (concurrency 0: one worker per CPU of the 2000m limit).
    let tuned = proxy_args_of("shape proxy-config with config default");
    assert!(
        tuned.contains("--worker-threads 4") && tuned.contains("--drain-delay 30s"),
        "{tuned}"
    );
    assert!(args_of("shape proxy-config with config default").ends_with(" --dns-capture"));
    // holdApplicationUntilProxyStarts on a regular sidecar: first, with the wait hook.
    let held = pods
        .iter()
        .find(|p| p.origin == "shape proxy-config with config default")
        .unwrap();
    assert_eq!(
        held.template["spec"]["containers"][0]["name"],
        "istio-proxy"
    );
    assert!(
        held.template["spec"]["containers"][0]
            .pointer("/lifecycle/postStart/exec/command")
            .is_some()
    );
    let defaulted = proxy_args_of("shape basic with config default-proxy-config");
    assert!(
        defaulted.contains("--worker-threads 2") && defaulted.contains("--drain-delay 1m"),
        "{defaulted}"
    );
    // Gateways: `--role gateway`, no istio-init, whatever the config (native sidecars and
    // DNS capture included), and never without a control plane; sidecars: no `--role`.
    for (cname, cfg) in configs() {
        for shape in ["gateway-template", "gateway-label"] {
            let origin = format!("shape {shape} with config {cname}");
            let found = pods.iter().find(|p| p.origin == origin);
            if cfg.control_plane_address.is_empty() {
                assert!(
                    found.is_none(),
                    "{origin}: injected without a control plane"
                );
                continue;
            }
            let p = found.unwrap_or_else(|| panic!("{origin}: not injected"));
            assert!(container(&p.template, "istio-init").is_none(), "{origin}");
            assert!(
                proxy_args_of(&origin).starts_with("--role gateway "),
                "{origin}"
            );
        }
        let basic = format!("shape basic with config {cname}");
        assert!(!proxy_args_of(&basic).contains("--role"), "{basic}");
    }
}

/// The checks above can fail: each way of breaking the contract is caught.
#[test]
fn a_broken_contract_is_caught() {
    let pods = shape_pods();
    let base = &pods[0];
    let proxy = container(&base.template, "istio-proxy").unwrap().clone();
    let init = container(&base.template, "istio-init").unwrap().clone();
    assert_eq!(check_proxy(&proxy, &BTreeSet::new()), Ok(()));
    assert_eq!(check_init(&init, &proxy), Ok(()));

    let mut rust_log = proxy.clone();
    rust_log["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "RUST_LOG", "value": "info"}));
    let e = check_proxy(&rust_log, &BTreeSet::new()).unwrap_err();
    assert!(e.contains("RUST_LOG") && e.contains("never reads"), "{e}");

    let mut bad_level = proxy.clone();
    bad_level["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": contract::proxy::env::LOG, "value": "loud"}));
    assert!(
        check_proxy(&bad_level, &BTreeSet::new())
            .unwrap_err()
            .contains("rejects")
    );

    for hook in [
        json!(["sleep", "5"]),
        json!(["mesh-proxy", "wait", "--soon"]),
    ] {
        let mut bad_hook = proxy.clone();
        bad_hook["lifecycle"] = json!({"postStart": {"exec": {"command": hook}}});
        let e = check_proxy(&bad_hook, &BTreeSet::new()).unwrap_err();
        assert!(e.contains("postStart"), "{e}");
    }

    let mut unknown_flag = proxy.clone();
    unknown_flag["args"]
        .as_array_mut()
        .unwrap()
        .push(json!("--no-such-flag"));
    assert!(
        check_proxy(&unknown_flag, &BTreeSet::new())
            .unwrap_err()
            .contains("rejects")
    );

    let mut bad_port = init.clone();
    let args = bad_port["args"].as_array_mut().unwrap();
    args.extend([json!("-o"), json!("70000")]);
    assert!(
        check_init(&bad_port, &proxy)
            .unwrap_err()
            .contains("rejects")
    );

    let mut dns_init_only = init.clone();
    dns_init_only["args"]
        .as_array_mut()
        .unwrap()
        .push(json!(contract::init::DNS_CAPTURE));
    assert_eq!(check_init(&dns_init_only, &proxy), Ok(()));
    let e = check_dns(&dns_init_only, &proxy).unwrap_err();
    assert!(e.contains("--dns-capture"), "{e}");
    assert_eq!(check_dns(&init, &proxy), Ok(()));

    // The identity's files must be mounted, the token be one for the CA.
    assert_eq!(check_identity(&base.template, &proxy), Ok(()));
    let mut unmounted = proxy.clone();
    unmounted
        .as_object_mut()
        .unwrap()
        .shift_remove("volumeMounts");
    let e = check_identity(&base.template, &unmounted).unwrap_err();
    assert!(e.contains("no volumeMount"), "{e}");
    let mut no_volume = base.template.clone();
    no_volume["spec"]["volumes"] = json!([]);
    let e = check_identity(&no_volume, &proxy).unwrap_err();
    assert!(e.contains("no such volume"), "{e}");
    let mut wrong_audience = base.template.clone();
    for v in wrong_audience["spec"]["volumes"].as_array_mut().unwrap() {
        if v["name"] == "istio-token" {
            v["projected"]["sources"][0]["serviceAccountToken"]["audience"] = json!("api");
        }
    }
    let e = check_identity(&wrong_audience, &proxy).unwrap_err();
    assert!(e.contains("audience istio-ca"), "{e}");

    let mut other_uid = proxy.clone();
    other_uid["securityContext"]["runAsUser"] = json!(1234);
    let e = check_init(&init, &other_uid).unwrap_err();
    assert!(e.contains("1234"), "{e}");

    // A gateway captures nothing; a sidecar is written no --role.
    assert_eq!(check_role(&base.template, &proxy), Ok(()));
    let gw = pods
        .iter()
        .find(|p| p.origin == "shape gateway-template with config default")
        .unwrap();
    let gw_proxy = container(&gw.template, "istio-proxy").unwrap().clone();
    assert_eq!(check_role(&gw.template, &gw_proxy), Ok(()));
    let mut gw_dns = gw_proxy.clone();
    gw_dns["args"]
        .as_array_mut()
        .unwrap()
        .push(json!(contract::proxy::flag::DNS_CAPTURE));
    let e = check_role(&gw.template, &gw_dns).unwrap_err();
    assert!(e.contains("--dns-capture"), "{e}");
    let mut gw_captured = gw.template.clone();
    gw_captured["spec"]["initContainers"] = json!([init.clone()]);
    let e = check_role(&gw_captured, &gw_proxy).unwrap_err();
    assert!(e.contains("istio-init running mesh-init"), "{e}");
    let mut sidecar_role = proxy.clone();
    sidecar_role["args"]
        .as_array_mut()
        .unwrap()
        .extend([json!("--role"), json!("sidecar")]);
    let e = check_role(&base.template, &sidecar_role).unwrap_err();
    assert!(e.contains("a sidecar gets no --role"), "{e}");
}
