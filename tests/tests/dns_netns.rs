//! DNS capture in a "pod" network namespace: the real `mesh-init --dns-capture` rules and
//! the real `mesh-proxy --dns-capture` as uid 1337, the pod's `resolv.conf` naming
//! `127.0.0.1` and `::1` (as kube-node's pods have it: nothing listens on port 53 there).
//!
//! The race this guards against: the proxy forwards a name it does not know to the real
//! server from an ephemeral source port Q, which leaves a conntrack entry `Q -> :53` that
//! is not redirected. An app query from the same port Q within the entry's 30 s used to
//! follow that entry to the real server instead of to the proxy, and so did its retries:
//! the app's lookup timed out (musl's `EAI_AGAIN` after 5 s, seen in CI). mesh-init's
//! raw-table conntrack zones keep the two flows apart. The namespace's ephemeral port
//! range is one port wide, so the app's socket gets the very port the proxy just used.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use mesh_tests::bins::bin;
use mesh_tests::netns::{ChildGuard, Netns, link, require_root_and_tools, wait_until};
use mesh_tests::proxy_support::http_get;

/// The namespace's only ephemeral port, and a port outside it for the first query.
const EPHEMERAL: u16 = 40000;
const OTHER: u16 = 50000;
const RCODE_SERVFAIL: u8 = 2;

/// `/etc/netns/<ns>/`, which `ip netns exec` mounts over `/etc`'s files of those names;
/// removed on drop.
struct EtcNetns(PathBuf);

impl EtcNetns {
    fn resolv_conf(ns: &Netns, text: &str) -> EtcNetns {
        let dir = PathBuf::from("/etc/netns").join(ns.name());
        std::fs::create_dir_all(&dir).unwrap();
        let guard = EtcNetns(dir);
        std::fs::write(guard.0.join("resolv.conf"), text).unwrap();
        guard
    }
}

impl Drop for EtcNetns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A standard query (recursion desired) for `name`, type A.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Sends one query from `sport` to `server` (port 53) and returns the answer's rcode,
/// or what went wrong.
fn ask(server: SocketAddr, sport: u16, id: u16, name: &str) -> Result<u8, String> {
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], sport).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, sport).into()
    };
    let socket = UdpSocket::bind(local).map_err(|e| format!("bind {local}: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    socket
        .send_to(&query(id, name), server)
        .map_err(|e| format!("send to {server}: {e}"))?;
    let start = Instant::now();
    let mut buf = [0u8; 512];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) if n >= 4 && buf[..2] == id.to_be_bytes() => {
                if from != server {
                    return Err(format!("answer from {from}, not {server}"));
                }
                return Ok(buf[3] & 0x0f);
            }
            Ok(_) => continue,
            Err(e) => {
                return Err(format!(
                    "no answer from {server} to a query from port {sport} in {:.1} s ({e})",
                    start.elapsed().as_secs_f64()
                ));
            }
        }
    }
}

fn start_proxy(pod: &Netns) -> ChildGuard {
    let proxy = bin("mesh-proxy");
    let mut cmd = pod.command(
        "setpriv",
        &[
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
            proxy.to_str().unwrap(),
            "--dns-capture",
        ],
    );
    cmd.stdout(Stdio::null())
        .env("POD_NAME", "app-7c9d-x2x")
        .env("POD_NAMESPACE", "shop");
    let guard = pod.spawn(cmd);
    let ready = wait_until(Duration::from_secs(10), || {
        pod.run(|| http_get("127.0.0.1:15021".parse().unwrap(), "/healthz/ready"))
            .is_ok_and(|(status, _)| status == 200)
    });
    assert!(ready, "mesh-proxy did not become ready in the pod");
    guard
}

/// The scenario with mesh-init's `backend` (`legacy` or `nft`).
fn app_query_from_the_proxys_upstream_port(backend: &str) {
    let save = format!("iptables-{backend}-save");
    require_root_and_tools(&["ip", "setpriv", &save]);
    let pod = Netns::new("pdns");
    let _etc = EtcNetns::resolv_conf(&pod, "nameserver 127.0.0.1\nnameserver ::1\n");
    // The pod's link, with both families (mesh-init writes IPv6 rules where the pod has
    // IPv6). Nothing is sent over it.
    let world = Netns::new("wdns");
    link(
        &pod,
        &["198.18.0.2/24", "fd00:198:18::2/64"],
        &world,
        &["198.18.0.1/24", "fd00:198:18::1/64"],
    );
    // /proc/sys/net is the opener's namespace's.
    pod.run(|| {
        std::fs::write(
            "/proc/sys/net/ipv4/ip_local_port_range",
            format!("{EPHEMERAL} {EPHEMERAL}"),
        )
    })
    .expect("set the pod's ephemeral port range");
    let mut init_args: Vec<&str> = mesh_common::DEFAULT_INIT_ARGS.to_vec();
    init_args.extend(["--dns-capture", "--backend", backend]);
    pod.output_ok(bin("mesh-init"), &init_args);
    let raw = String::from_utf8(pod.output_ok(&save, &["-t", "raw"]).stdout).unwrap();
    assert!(
        raw.contains("-A ISTIO_OUTPUT_DNS -p udp -m udp --dport 53 -j CT --zone 2"),
        "mesh-init --dns-capture installed no conntrack zones:\n{raw}"
    );
    let _proxy = start_proxy(&pod);

    for (family, server) in [
        ("IPv4", SocketAddr::from(([127, 0, 0, 1], 53))),
        (
            "IPv6",
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 53)),
        ),
    ] {
        pod.run(|| {
            // A name the mesh does not know: the proxy forwards it to the pod's
            // nameservers, from the namespace's one ephemeral port; none listens, so the
            // app gets SERVFAIL at once.
            let rcode = ask(server, OTHER, 1, "first.example").unwrap_or_else(|e| {
                panic!("{family}: the query from port {OTHER} did not reach the proxy: {e}")
            });
            assert_eq!(rcode, RCODE_SERVFAIL, "{family}: no upstream answers");
            // The app's next query comes from that port: the proxy must get it too.
            let rcode = ask(server, EPHEMERAL, 2, "second.example").unwrap_or_else(|e| {
                panic!(
                    "{family}: {e}: the proxy's upstream flow from port {EPHEMERAL} \
                     caught the app's query (conntrack zones missing?)"
                )
            });
            assert_eq!(rcode, RCODE_SERVFAIL, "{family}");
        });
    }
}

#[test]
fn an_app_query_from_the_port_the_proxy_just_used_upstream_reaches_the_proxy_nft() {
    app_query_from_the_proxys_upstream_port("nft");
}

#[test]
fn an_app_query_from_the_port_the_proxy_just_used_upstream_reaches_the_proxy_legacy() {
    app_query_from_the_proxys_upstream_port("legacy");
}
