//! The `istio-init` and `istio-proxy` containers, built with the Kubernetes types and then
//! serialized to JSON; plus merging a user's own container of the same name into ours.
//!
//! A gateway's proxy ([`Role::Gateway`]) is the sidecar's with `--role gateway` first, no
//! `--dns-capture`, its admin port declared too (`status-port`, which the gateway's
//! Service targets), never a native sidecar; its `istio-init` is built but not used.

use std::cell::RefCell;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
    Lifecycle, LifecycleHandler, ObjectFieldSelector, Probe, ResourceRequirements, SecurityContext,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_common::contract::{init, proxy};
use mesh_common::{PROXY_READY_PATH, containers};
use serde_json::{Map, Value};

use super::error::InjectError;
use super::mtls;
use super::overrides::Overrides;
use super::role::Role;
use crate::config::{InjectConfig, ResourceAmounts};

/// Our two containers, as JSON.
#[derive(Debug, Clone)]
pub struct Built {
    pub init: Value,
    pub proxy: Value,
    /// The proxy goes first among the containers (a regular sidecar that holds the app:
    /// ProxyConfig `holdApplicationUntilProxyStarts`).
    pub proxy_first: bool,
}

/// What [`Built::cached`] keys its one entry on: (config hash, overrides, native, role).
type CacheKey = (String, Overrides, bool, Role);

thread_local! {
    /// The last containers built on this thread, by (config hash, overrides, native, role).
    /// Most pods of a file or a cluster share all four, and building (k8s-openapi types,
    /// then JSON) is the most expensive step of an injection. Invisible to callers: same
    /// inputs, same output.
    static LAST: RefCell<Option<(CacheKey, Built)>> = const { RefCell::new(None) };
}

impl Built {
    /// [`Built::new`] through a one-entry per-thread cache; `config_hash` is `cfg.hash()`.
    pub fn cached(
        cfg: &InjectConfig,
        config_hash: &str,
        ov: &Overrides,
        native: bool,
        role: Role,
    ) -> Result<Self, InjectError> {
        let hit = LAST.with_borrow(|last| match last {
            Some(((h, o, n, r), b))
                if h == config_hash && o == ov && *n == native && *r == role =>
            {
                Some(b.clone())
            }
            _ => None,
        });
        if let Some(b) = hit {
            return Ok(b);
        }
        let b = Built::new(cfg, ov, native, role)?;
        LAST.with_borrow_mut(|last| {
            *last = Some((
                (config_hash.to_string(), ov.clone(), native, role),
                b.clone(),
            ));
        });
        Ok(b)
    }

    /// Our containers; a gateway's proxy is never a native sidecar, whatever `native` says.
    pub fn new(
        cfg: &InjectConfig,
        ov: &Overrides,
        native: bool,
        role: Role,
    ) -> Result<Self, InjectError> {
        let native = native && role == Role::Sidecar;
        let to_value = |c: Container| {
            serde_json::to_value(c)
                .map(readable_order)
                .map_err(|e| InjectError::InvalidPod {
                    field: "spec".into(),
                    reason: format!("cannot serialize injected container: {e}"),
                })
        };
        Ok(Built {
            init: to_value(init_container(cfg, ov))?,
            proxy: to_value(proxy_container(cfg, ov, native, role))?,
            proxy_first: ov.hold_application && !native && role == Role::Sidecar,
        })
    }
}

/// `proxy` (our built container) with the pod's identity env (see [`super::workload`])
/// right after our downward-API variables, so `$(POD_NAMESPACE)` in a value refers to a
/// variable defined before it, as the kubelet requires to expand it.
pub fn with_identity_env(mut proxy: Value, identity: &[(&str, String)]) -> Value {
    if identity.is_empty() {
        return proxy;
    }
    let Some(env) = proxy.get_mut("env").and_then(Value::as_array_mut) else {
        return proxy;
    };
    let at = env
        .iter()
        .position(|e| e.get("name").and_then(Value::as_str) == Some(proxy::env::SERVICE_ACCOUNT))
        .map_or(env.len(), |i| i + 1);
    let entries = identity.iter().map(|(name, value)| {
        let mut e = Map::new();
        e.insert("name".into(), Value::String((*name).to_string()));
        e.insert("value".into(), Value::String(value.clone()));
        Value::Object(e)
    });
    env.splice(at..at, entries);
    proxy
}

/// `proxy` with the ProxyConfig's `proxyMetadata` as env, as Istio's template writes it
/// (after everything else, in name order): a name we already set is given the user's
/// value in place (Istio's later duplicate wins the same way), any other is added at the
/// end. Applied after [`with_identity_env`], so it wins over those too; a user's own
/// `istio-proxy` env is merged later still, and wins over all.
pub fn with_proxy_metadata(mut proxy: Value, metadata: &BTreeMap<String, String>) -> Value {
    if metadata.is_empty() {
        return proxy;
    }
    let Some(obj) = proxy.as_object_mut() else {
        return proxy;
    };
    let env = obj.entry("env").or_insert_with(|| Value::Array(Vec::new()));
    let Some(env) = env.as_array_mut() else {
        return proxy;
    };
    for (name, value) in metadata {
        let mut e = Map::new();
        e.insert("name".into(), Value::String(name.clone()));
        e.insert("value".into(), Value::String(value.clone()));
        let entry = Value::Object(e);
        match env
            .iter()
            .position(|x| x.get("name").and_then(Value::as_str) == Some(name.as_str()))
        {
            Some(i) => env[i] = entry,
            None => env.push(entry),
        }
    }
    proxy
}

/// k8s-openapi writes fields alphabetically; put the ones people look for first, as
/// `kubectl` users are used to reading them.
fn readable_order(v: Value) -> Value {
    let Value::Object(mut m) = v else { return v };
    let mut out = Map::new();
    for k in ["name", "image", "imagePullPolicy", "command", "args"] {
        if let Some(x) = m.shift_remove(k) {
            out.insert(k.to_string(), x);
        }
    }
    out.extend(m);
    Value::Object(out)
}

/// The `mesh-init` arguments, in the order and spelling of `istio-iptables` (flag names
/// from `mesh_common::contract::init`, which `mesh-init` parses).
pub fn init_args(cfg: &InjectConfig, ov: &Overrides) -> Vec<String> {
    let pair = |f: init::Flag, v: &str| [f.short.to_string(), v.to_string()];
    let mut args: Vec<String> = [
        pair(init::PROXY_PORT, &cfg.outbound_port.to_string()),
        pair(init::INBOUND_CAPTURE_PORT, &cfg.inbound_port.to_string()),
        pair(init::PROXY_UID, &ov.proxy_uid.to_string()),
        pair(init::MODE, init::MODE_REDIRECT),
        pair(init::INCLUDE_OUTBOUND_CIDRS, &ov.include_outbound_cidrs),
        pair(init::EXCLUDE_OUTBOUND_CIDRS, &ov.exclude_outbound_cidrs),
        pair(init::INBOUND_PORTS, &ov.include_inbound_ports),
        pair(init::EXCLUDE_INBOUND_PORTS, &ov.exclude_inbound_ports),
    ]
    .into_iter()
    .flatten()
    .collect();
    if ov.proxy_gid != ov.proxy_uid {
        args.extend(pair(init::PROXY_GID, &ov.proxy_gid.to_string()));
    }
    if !ov.exclude_outbound_ports.is_empty() {
        args.extend(pair(
            init::EXCLUDE_OUTBOUND_PORTS,
            &ov.exclude_outbound_ports,
        ));
    }
    if ov.dns_capture {
        args.push(init::DNS_CAPTURE.to_string());
    }
    args
}

/// The `mesh-proxy` arguments (flag names from `mesh_common::contract::proxy`). A
/// sidecar's carry no `--role` (its default); a gateway's start with `--role gateway` and
/// never have `--dns-capture` (nothing redirects DNS to a gateway). Last, what the pod's
/// ProxyConfig sets: `--worker-threads` (`concurrency`), `--drain-delay`
/// (`terminationDrainDuration`).
pub fn proxy_args(cfg: &InjectConfig, ov: &Overrides, role: Role) -> Vec<String> {
    let mut args = Vec::new();
    if role == Role::Gateway {
        args.push(proxy::flag::ROLE.to_string());
        args.push(proxy::flag::ROLE_GATEWAY.to_string());
    }
    args.extend([
        proxy::flag::OUTBOUND_PORT.into(),
        cfg.outbound_port.to_string(),
        proxy::flag::INBOUND_PORT.into(),
        cfg.inbound_port.to_string(),
        proxy::flag::ADMIN_ADDR.into(),
        format!("0.0.0.0:{}", cfg.admin_port),
        proxy::flag::METRICS_ADDR.into(),
        format!("0.0.0.0:{}", cfg.metrics_port),
    ]);
    // Empty: no control plane, the proxy stays L4.
    if !cfg.control_plane_address.is_empty() {
        args.push(proxy::flag::CONTROL_PLANE.into());
        args.push(cfg.control_plane_address.clone());
    }
    if cfg.workload_identity() {
        args.extend(mtls::proxy_args(cfg));
    }
    if ov.dns_capture && role == Role::Sidecar {
        args.push(proxy::flag::DNS_CAPTURE.into());
    }
    if let Some(n) = ov.worker_threads {
        args.push(proxy::flag::WORKER_THREADS.into());
        args.push(n.to_string());
    }
    if let Some(d) = &ov.drain_delay {
        args.push(proxy::flag::DRAIN_DELAY.into());
        args.push(d.clone());
    }
    args
}

fn init_container(cfg: &InjectConfig, ov: &Overrides) -> Container {
    Container {
        name: containers::INIT.to_string(),
        image: Some(cfg.init_image.clone()),
        image_pull_policy: cfg.image_pull_policy.clone(),
        command: Some(vec![init::BINARY.to_string()]),
        args: Some(init_args(cfg, ov)),
        resources: Some(resources(
            &cfg.init_resources.requests,
            &cfg.init_resources.limits,
        )),
        // iptables needs NET_ADMIN and NET_RAW and nothing else; it runs as root, and says so
        // on the container, or a pod-level runAsNonRoot would stop it from starting.
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            privileged: Some(false),
            read_only_root_filesystem: Some(false),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            run_as_user: Some(0),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn proxy_container(cfg: &InjectConfig, ov: &Overrides, native: bool, role: Role) -> Container {
    let field_env = |name: &str, path: &str| EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: path.to_string(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut env = vec![
        field_env(proxy::env::POD_NAME, "metadata.name"),
        field_env(proxy::env::POD_NAMESPACE, "metadata.namespace"),
        field_env(proxy::env::INSTANCE_IP, "status.podIP"),
        field_env(proxy::env::SERVICE_ACCOUNT, "spec.serviceAccountName"),
    ];
    if let Some(level) = &ov.proxy_log_level {
        env.push(EnvVar {
            name: proxy::env::LOG.into(),
            value: Some(level.clone()),
            ..Default::default()
        });
    }
    let http_get = |path: &str| HTTPGetAction {
        path: Some(path.to_string()),
        port: IntOrString::Int(i32::from(cfg.admin_port)),
        ..Default::default()
    };
    let readiness = Probe {
        http_get: Some(http_get(PROXY_READY_PATH)),
        initial_delay_seconds: Some(1),
        period_seconds: Some(2),
        timeout_seconds: Some(3),
        failure_threshold: Some(30),
        ..Default::default()
    };
    // A native sidecar's startup probe holds the app containers back until the proxy is
    // ready, so the app's first connections are not refused.
    let startup = native.then(|| Probe {
        http_get: Some(http_get(PROXY_READY_PATH)),
        period_seconds: Some(1),
        timeout_seconds: Some(3),
        failure_threshold: Some(600),
        ..Default::default()
    });
    let requests = ResourceAmounts {
        cpu: ov.requests_cpu.clone(),
        memory: ov.requests_memory.clone(),
    };
    let limits = ResourceAmounts {
        cpu: ov.limits_cpu.clone(),
        memory: ov.limits_memory.clone(),
    };
    // The identity's token and root certificate (see [`mtls`]), read-only.
    let mounts = cfg.workload_identity().then(|| {
        mtls::MOUNTS
            .iter()
            .map(|(volume, path)| VolumeMount {
                name: (*volume).to_string(),
                mount_path: (*path).to_string(),
                read_only: Some(true),
                ..Default::default()
            })
            .collect()
    });
    let port = |port: u16, name: &str| ContainerPort {
        container_port: i32::from(port),
        name: Some(name.into()),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let mut ports = vec![port(cfg.metrics_port, "http-envoy-prom")];
    if role == Role::Gateway {
        // The gateway's Service sends its `status-port` (load balancers' health checks)
        // here; Istio's chart targets it by number, naming it documents it.
        ports.push(port(cfg.admin_port, "status-port"));
    }
    // holdApplicationUntilProxyStarts with a regular sidecar, as Istio's injector does it:
    // the proxy goes first (rewrite.rs) and its postStart hook returns only once it is
    // ready; the kubelet starts the next container only after that. A native sidecar's
    // startup probe holds the app already; a gateway has no app.
    let lifecycle = (ov.hold_application && !native && role == Role::Sidecar).then(|| {
        let mut command = vec![
            proxy::BINARY.to_string(),
            proxy::wait::SUBCOMMAND.to_string(),
        ];
        if cfg.admin_port != mesh_common::PROXY_ADMIN_PORT {
            command.push(proxy::wait::ADMIN_ADDR.to_string());
            command.push(format!("127.0.0.1:{}", cfg.admin_port));
        }
        Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(command),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    });
    Container {
        name: containers::PROXY.to_string(),
        image: Some(ov.proxy_image.clone()),
        lifecycle,
        image_pull_policy: cfg.image_pull_policy.clone(),
        command: Some(vec![proxy::BINARY.to_string()]),
        args: Some(proxy_args(cfg, ov, role)),
        env: Some(env),
        ports: Some(ports),
        readiness_probe: Some(readiness),
        startup_probe: startup,
        resources: Some(resources(&requests, &limits)),
        restart_policy: native.then(|| "Always".to_string()),
        security_context: Some(proxy_security_context(ov)),
        volume_mounts: mounts,
        ..Default::default()
    }
}

/// The proxy's `securityContext`, the same for a sidecar and a gateway: uid/gid 1337 (the
/// effective ids: a user override's, when it sets them, the same ones istio-init's -u/-g
/// exclude from capture), non-root, every capability dropped, read-only root filesystem.
///
/// Ports below 1024. A gateway listens on 80 and 443, which uid 1337 may only bind when
/// the pod's network namespace allows it, and we add nothing to a gateway for it:
/// - the sysctl `net.ipv4.ip_unprivileged_port_start=0` (Istio's gateway template and
///   chart set it at pod level) is the least privilege there is: per pod network
///   namespace, no capability, no root. But the kubelet counts it as *unsafe* before
///   Kubernetes 1.22 and rejects the pod (`SysctlForbidden`) unless the node allows it
///   (`--allowed-unsafe-sysctls=net.ipv4.ip_unprivileged_port_start`), as on our v1.20
///   test node. The injector cannot tell the kubelet's version (kube-inject has no cluster
///   to ask, and the webhook and kube-inject must agree), so it never writes the sysctl:
///   a pod that sets it itself (the `istio/gateway` chart's default) keeps it, untouched,
///   and binds 80/443 wherever the kubelet accepts it.
/// - `NET_BIND_SERVICE` in `capabilities.add` is not written either: for a non-root
///   process it grants nothing. Kubernetes has no ambient capabilities
///   (kubernetes/kubernetes#56374, still open), so the runtimes never make an added
///   capability ambient, and the `execve` of `mesh-proxy` as uid 1337, a binary without
///   file capabilities, leaves the process with none (capabilities(7)). It would be a
///   privilege that looks granted and is not.
/// - Running as root with only `NET_BIND_SERVICE` (what Istio's chart did before 1.22) is
///   more privilege than a proxy needs, and breaks the contract that the proxy is uid
///   1337. A user who wants it writes it in their own `istio-proxy`'s `securityContext`
///   (`runAsUser: 0`, `runAsNonRoot: false`, `capabilities.add: [NET_BIND_SERVICE]`),
///   which wins as every override does.
///
/// Without the sysctl, a gateway listens on unprivileged ports behind its Service (port
/// 80 → targetPort 8080, as Istio's `istio-ingressgateway` long did).
fn proxy_security_context(ov: &Overrides) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            add: None,
            drop: Some(vec!["ALL".into()]),
        }),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_group: Some(i64::from(ov.proxy_gid)),
        run_as_non_root: Some(true),
        run_as_user: Some(i64::from(ov.proxy_uid)),
        ..Default::default()
    }
}

fn resources(requests: &ResourceAmounts, limits: &ResourceAmounts) -> ResourceRequirements {
    let map = |r: &ResourceAmounts| {
        let mut m = BTreeMap::new();
        if let Some(c) = &r.cpu {
            m.insert("cpu".to_string(), Quantity(c.clone()));
        }
        if let Some(c) = &r.memory {
            m.insert("memory".to_string(), Quantity(c.clone()));
        }
        (!m.is_empty()).then_some(m)
    };
    ResourceRequirements {
        requests: map(requests),
        limits: map(limits),
        ..Default::default()
    }
}

/// Merge a user's container of the same name into ours: the user's fields win, fields we do
/// not set (or do not know) are kept; objects merge recursively; `env`, `ports` and
/// `volumeMounts` merge item by item (by name, containerPort, mountPath), like a strategic
/// merge patch would, and one of them written as `null` (Helm renders an empty `env:`
/// so, as the `istio/gateway` chart does) has no items, like `[]`, and keeps ours; other
/// lists are replaced by the user's.
pub fn merge_override(ours: &Value, user: &Value) -> Value {
    merge_value(ours, user, "")
}

fn merge_value(ours: &Value, user: &Value, key: &str) -> Value {
    let item_merged = matches!(key, "env" | "ports" | "volumeMounts");
    match (ours, user) {
        (Value::Array(_), Value::Null) if item_merged => ours.clone(),
        (Value::Object(a), Value::Object(b)) => {
            let mut out: Map<String, Value> = a.clone();
            for (k, v) in b {
                let merged = match a.get(k) {
                    Some(ov) => merge_value(ov, v, k),
                    None => v.clone(),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(a), Value::Array(b)) => {
            let id = match key {
                "env" => "name",
                "ports" => "containerPort",
                "volumeMounts" => "mountPath",
                _ => return user.clone(),
            };
            let mut out = a.clone();
            for item in b {
                let pos = item
                    .get(id)
                    .and_then(|want| out.iter().position(|o| o.get(id) == Some(want)));
                match pos {
                    Some(i) => out[i] = item.clone(),
                    None => out.push(item.clone()),
                }
            }
            Value::Array(out)
        }
        _ => user.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn default_init_args_match_istio() {
        let cfg = InjectConfig::default();
        let ov = Overrides::read(&BTreeMap::new(), &cfg).unwrap();
        assert_eq!(init_args(&cfg, &ov), mesh_common::DEFAULT_INIT_ARGS);
    }

    #[test]
    fn control_plane_and_dns_capture_flags_follow_the_config() {
        let cfg = InjectConfig::default();
        let ov = Overrides::read(&BTreeMap::new(), &cfg).unwrap();
        let args = proxy_args(&cfg, &ov, Role::Sidecar);
        let i = args.iter().position(|a| a == "--control-plane").unwrap();
        assert_eq!(args[i + 1], "mesh-control.mesh-system.svc:15012");
        assert_eq!(args[i + 2], "--root-cert", "{args:?}");
        assert!(!args.contains(&"--dns-capture".to_string()), "{args:?}");
        assert!(!init_args(&cfg, &ov).contains(&"--dns-capture".to_string()));

        let cfg = InjectConfig {
            control_plane_address: String::new(),
            dns_capture: true,
            ..InjectConfig::default()
        };
        let ov = Overrides::read(&BTreeMap::new(), &cfg).unwrap();
        let args = proxy_args(&cfg, &ov, Role::Sidecar);
        assert!(!args.contains(&"--control-plane".to_string()), "{args:?}");
        assert!(!args.contains(&"--root-cert".to_string()), "{args:?}");
        assert_eq!(args.last().map(String::as_str), Some("--dns-capture"));
        let init = init_args(&cfg, &ov);
        assert_eq!(init.last().map(String::as_str), Some("--dns-capture"));
    }

    #[test]
    fn identity_flags_and_mounts_follow_the_auth_policy() {
        let cfg = InjectConfig {
            dns_capture: true,
            trust_domain: "example.org".into(),
            ..InjectConfig::default()
        };
        let ov = Overrides::read(&BTreeMap::new(), &cfg).unwrap();
        let args = proxy_args(&cfg, &ov, Role::Sidecar);
        let tail: Vec<&str> = args[8..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "--control-plane",
                "mesh-control.mesh-system.svc:15012",
                "--root-cert",
                "/var/run/secrets/istio/root-cert.pem",
                "--trust-domain",
                "example.org",
                "--dns-capture"
            ]
        );
        let mounts = proxy_container(&cfg, &ov, false, Role::Sidecar)
            .volume_mounts
            .unwrap();
        let got: Vec<(&str, &str, Option<bool>)> = mounts
            .iter()
            .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
            .collect();
        assert_eq!(
            got,
            [
                ("istio-token", "/var/run/secrets/tokens", Some(true)),
                ("istiod-ca-cert", "/var/run/secrets/istio", Some(true))
            ]
        );

        let none = InjectConfig {
            control_plane_auth_policy: crate::config::ControlPlaneAuthPolicy::None,
            control_plane_address: "mesh-control.mesh-system.svc:15010".into(),
            ..InjectConfig::default()
        };
        let args = proxy_args(
            &none,
            &Overrides::read(&BTreeMap::new(), &none).unwrap(),
            Role::Sidecar,
        );
        assert_eq!(
            args[8..],
            ["--control-plane", "mesh-control.mesh-system.svc:15010"]
        );
        assert!(
            proxy_container(&none, &ov, false, Role::Sidecar)
                .volume_mounts
                .is_none()
        );
    }

    #[test]
    fn init_args_follow_the_effective_uid_and_gid() {
        let cfg = InjectConfig::default();
        let mut ov = Overrides::read(&BTreeMap::new(), &cfg).unwrap();
        ov.proxy_uid = 1234;
        let args = init_args(&cfg, &ov);
        let after = |flag: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1].clone()
        };
        assert_eq!(after("-u"), "1234");
        assert_eq!(after("-g"), "1337");
        ov.proxy_gid = 1234;
        let args = init_args(&cfg, &ov);
        assert!(!args.contains(&"-g".to_string()), "{args:?}");
        let proxy = proxy_container(&cfg, &ov, false, Role::Sidecar);
        let sc = proxy.security_context.unwrap();
        assert_eq!((sc.run_as_user, sc.run_as_group), (Some(1234), Some(1234)));
    }

    #[test]
    fn override_merge_keeps_ours_and_unknown_fields() {
        let ours = json!({
            "name": "istio-proxy", "image": "ours",
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
            "securityContext": {"runAsUser": 1337, "readOnlyRootFilesystem": true},
            "args": ["--x"]
        });
        let user = json!({
            "name": "istio-proxy", "image": "theirs",
            "env": [{"name": "B", "value": "two"}, {"name": "C", "value": "3"}],
            "securityContext": {"readOnlyRootFilesystem": false},
            "args": ["--y"], "futureField": {"x": 1}
        });
        let m = merge_override(&ours, &user);
        assert_eq!(m["image"], "theirs");
        assert_eq!(
            m["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "two"}, {"name": "C", "value": "3"}])
        );
        assert_eq!(
            m["securityContext"],
            json!({"runAsUser": 1337, "readOnlyRootFilesystem": false})
        );
        assert_eq!(m["args"], json!(["--y"]));
        assert_eq!(m["futureField"], json!({"x": 1}));
        // An empty list written as null (Helm's `env:`) keeps ours; other nulls win.
        let m = merge_override(
            &ours,
            &json!({"env": null, "ports": null, "securityContext": null}),
        );
        assert_eq!(m["env"], ours["env"]);
        assert_eq!(
            m["ports"],
            Value::Null,
            "we set no ports here: the user's null stays"
        );
        assert_eq!(m["securityContext"], Value::Null);
    }
}
