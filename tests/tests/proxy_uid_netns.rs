//! A user's own proxy uid, end to end: a pod whose `istio-proxy` override runs the proxy
//! as uid 1234 is injected (through the same core as the webhook), `istio-init`'s args
//! are run by the real `mesh-init` in a "pod" network namespace, and the real
//! `mesh-proxy` runs there with the injected args and the uid/gid of the injected
//! container. An app connection to a server in the "world" namespace goes through the
//! proxy and reaches the server: the proxy's own upstream connection was not captured.
//! The control run shows the loop this prevents: a proxy running as 1234:4321 under the
//! default `-u 1337` rules (gid 1337 too) never reaches the server.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::process::Stdio;
use std::time::Duration;

use mesh_tests::bins::bin;
use mesh_tests::init_support::{Server, connect_as};
use mesh_tests::netns::{ChildGuard, Netns, link, require_root_and_tools, wait_until};
use mesh_tests::proxy_support::{POD_V4, POD_V6, WORLD_V4, WORLD_V6, http_get, metric, sock};
use mesh_webhook::config::InjectConfig;
use mesh_webhook::inject::{self, InjectRequest, NamespacePolicy};
use serde_json::{Value, json};

/// The injected `istio-init` args and `istio-proxy` container of a pod whose own
/// `istio-proxy` sets `security_context`.
fn injected(security_context: Value) -> (Vec<String>, Value) {
    let pod = json!({"metadata": {"name": "app"}, "spec": {"containers": [
        {"name": "app", "image": "app"},
        {"name": "istio-proxy", "securityContext": security_context}
    ]}});
    let req = InjectRequest {
        template: &pod,
        namespace: Some("shop"),
        namespace_policy: NamespacePolicy::Selected,
        workload: None,
        native_sidecars: false,
    };
    // No control plane here (`controlPlaneAddress: ""`): the proxy is ready at once, and
    // stays L4, which is what this test is about.
    let config = InjectConfig {
        control_plane_address: String::new(),
        ..InjectConfig::default()
    };
    let t = inject::desired_template(&req, &config)
        .unwrap()
        .expect("injected");
    let find = |list: &str, name: &str| {
        t["spec"][list]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .clone()
    };
    let init = find("initContainers", "istio-init");
    let args = init["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    (args, find("containers", "istio-proxy"))
}

struct Pod {
    // Declared first so it drops (is killed) before the namespaces.
    _proxy: ChildGuard,
    pod: Netns,
    world: Netns,
}

/// A pod linked to a world, the capture rules of `init_args` installed, and mesh-proxy
/// started as `uid`:`gid` with `proxy_args`.
fn pod_with(init_args: &[String], proxy_args: &[String], uid: i64, gid: i64) -> Pod {
    require_root_and_tools(&["ip", "iptables-restore", "ip6tables-restore", "setpriv"]);
    let pod = Netns::new("upod");
    let world = Netns::new("uwld");
    link(
        &pod,
        &[&format!("{POD_V4}/24"), &format!("{POD_V6}/64")].map(String::as_str),
        &world,
        &[&format!("{WORLD_V4}/24"), &format!("{WORLD_V6}/64")].map(String::as_str),
    );
    pod.output_ok(bin("mesh-init"), init_args);
    let proxy = bin("mesh-proxy");
    let mut args = vec![
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--clear-groups".to_owned(),
        proxy.to_str().unwrap().to_owned(),
    ];
    args.extend_from_slice(proxy_args);
    let mut cmd = pod.command("setpriv", &args);
    cmd.stdout(Stdio::null());
    let guard = pod.spawn(cmd);
    let ready = wait_until(Duration::from_secs(10), || {
        pod.run(|| http_get("127.0.0.1:15021".parse().unwrap(), "/healthz/ready"))
            .map(|(status, _)| status == 200)
            .unwrap_or(false)
    });
    assert!(ready, "mesh-proxy did not become ready as uid {uid}");
    Pod {
        _proxy: guard,
        pod,
        world,
    }
}

impl Pod {
    fn outbound_opened(&self, port: u16) -> u64 {
        let (_, text) = self
            .pod
            .run(|| http_get("127.0.0.1:15090".parse().unwrap(), "/stats/prometheus"))
            .unwrap();
        metric(
            &text,
            "istio_tcp_connections_opened_total",
            &[
                "direction=\"outbound\"",
                &format!("destination_port=\"{port}\""),
            ],
        )
    }
}

fn proxy_identity(proxy: &Value) -> (Vec<String>, i64, i64) {
    let args = proxy["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let sc = &proxy["securityContext"];
    (
        args,
        sc["runAsUser"].as_i64().unwrap(),
        sc["runAsGroup"].as_i64().unwrap(),
    )
}

/// The app (uid 1000) connects to a server in the world over IPv4 and IPv6; each
/// connection must reach it, through the proxy.
fn app_reaches_the_world_through_the_proxy(p: &Pod) {
    for (world, port) in [(WORLD_V4, 8080), (WORLD_V6, 8081)] {
        let _server = Server::start(&p.world, sock(world, port), "world");
        let before = p.outbound_opened(port);
        let landing = connect_as(&p.pod, 1000, 1000, None, sock(world, port));
        assert_eq!(
            landing.name, "world",
            "app connection to {world}:{port}: {landing:?}"
        );
        assert_eq!(
            p.outbound_opened(port),
            before + 1,
            "it went through the proxy"
        );
    }
}

#[test]
fn a_proxy_running_as_the_users_uid_is_exempt_from_capture() {
    let (init_args, proxy) = injected(json!({"runAsUser": 1234}));
    let joined = init_args.join(" ");
    assert!(joined.contains("-u 1234 "), "istio-init args: {joined}");
    let (proxy_args, uid, gid) = proxy_identity(&proxy);
    assert_eq!((uid, gid), (1234, 1337));
    let p = pod_with(&init_args, &proxy_args, uid, gid);
    app_reaches_the_world_through_the_proxy(&p);
}

#[test]
fn a_proxy_running_as_the_users_uid_and_gid_is_exempt_from_capture() {
    let (init_args, proxy) = injected(json!({"runAsUser": 1234, "runAsGroup": 4321}));
    let joined = init_args.join(" ");
    assert!(
        joined.contains("-u 1234 ") && joined.ends_with("-g 4321"),
        "istio-init args: {joined}"
    );
    let (proxy_args, uid, gid) = proxy_identity(&proxy);
    assert_eq!((uid, gid), (1234, 4321));
    let p = pod_with(&init_args, &proxy_args, uid, gid);
    app_reaches_the_world_through_the_proxy(&p);
}

/// The control: with the exemption left at 1337, the proxy's own upstream connection
/// is captured back into the proxy, which refuses it; the app never reaches the server.
#[test]
fn the_same_proxy_with_the_default_exemption_loops_and_never_reaches_the_server() {
    let (init_args, proxy) = injected(json!({"runAsUser": 1234, "runAsGroup": 4321}));
    let (proxy_args, uid, gid) = proxy_identity(&proxy);
    let default_args: Vec<String> = mesh_common::DEFAULT_INIT_ARGS
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_ne!(init_args, default_args);
    let p = pod_with(&default_args, &proxy_args, uid, gid);
    let _server = Server::start(&p.world, sock(WORLD_V4, 8080), "world");
    let landing = connect_as(&p.pod, 1000, 1000, None, sock(WORLD_V4, 8080));
    assert_ne!(landing.name, "world", "{landing:?}");
}
