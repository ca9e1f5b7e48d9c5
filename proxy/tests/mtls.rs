//! mTLS between two sidecars, whole: two proxies on loopback (their original
//! destinations fixed, as iptables would give them), certificates from a fake CA, config
//! from a fake control plane (mesh_support). Between them a relay records what crosses
//! the "pod link", so a test can say what an observer on the wire sees.
//!
//! - client pod `foo/sleep` (127.0.0.3): its outbound listener sends to Service
//!   `httpbin.foo` (ClusterIP 127.0.0.100:8000), whose one endpoint is the relay, which
//!   forwards to the server pod's inbound listener;
//! - server pod `foo/httpbin` (127.0.0.2): its inbound listener forwards to the app, an
//!   echo server.

#![allow(clippy::unwrap_used)]

mod mesh_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use mesh_config::authz::{AuthzPolicy, AuthzRule, Source};
use mesh_config::{
    Authorization, Cluster, ClusterTls, ClusterTlsMode, Endpoint, InboundPort, InboundService,
    InboundTls, LoadBalancer, MtlsMode, PeerMeta, Protocol, Resource, Service, ServicePort,
    Workload,
};
use mesh_proxy::identity::exchange;
use mesh_proxy::orig_dst::FixedOriginalDst;
use mesh_proxy::{DrainTrigger, Proxy};
use mesh_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SLEEP_ID: &str = "spiffe://cluster.local/ns/foo/sa/sleep";
const HTTPBIN_ID: &str = "spiffe://cluster.local/ns/foo/sa/httpbin";
const CLUSTER_IP: &str = "127.0.0.100";
const SERVER_IP: &str = "127.0.0.2";
const CLIENT_IP: &str = "127.0.0.3";
const PORT: u16 = 8000;

/// The app: echoes every connection, counts them.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

async fn echo() -> Echo {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Echo { addr, accepted }
}

/// Forwards to `to` (set once known), keeping every byte the client side sent.
struct Relay {
    addr: SocketAddr,
    to: Arc<Mutex<Option<SocketAddr>>>,
    seen: Arc<Mutex<Vec<u8>>>,
    /// Connections the relay accepted.
    accepted: Arc<AtomicUsize>,
}

async fn relay() -> Relay {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let to = Arc::new(Mutex::new(None::<SocketAddr>));
    let accepted = Arc::new(AtomicUsize::new(0));
    let (keep, target, count) = (seen.clone(), to.clone(), accepted.clone());
    tokio::spawn(async move {
        while let Ok((mut a, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let keep = keep.clone();
            let Some(to) = *target.lock().unwrap() else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut b) = TcpStream::connect(to).await else {
                    return;
                };
                let (mut ar, mut aw) = a.split();
                let (mut br, mut bw) = b.split();
                let up = async {
                    let mut buf = [0u8; 4096];
                    loop {
                        match ar.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                keep.lock().unwrap().extend_from_slice(&buf[..n]);
                                if bw.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = bw.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut br, &mut aw).await;
                    let _ = aw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    Relay {
        addr,
        to,
        seen,
        accepted,
    }
}

struct Pod {
    outbound: SocketAddr,
    inbound: SocketAddr,
    metrics: SocketAddr,
    identity: Arc<mesh_proxy::identity::IdentityStore>,
    drain: DrainTrigger,
    task: tokio::task::JoinHandle<mesh_proxy::DrainReport>,
    _files: Files,
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.drain.drain();
        self.task.abort();
    }
}

/// A proxy for pod `ns/sa` at `ip` with the identity flags as the injector writes them
/// (parsed by the real CLI); its connections' original destination is `orig`.
async fn pod(ca: &FakeCa, ns: &str, sa: &str, ip: &str, orig: SocketAddr) -> Pod {
    let files = Files::new(&ca.root_pem, TOKEN);
    let config = pod_config(ca, &files, (ns, sa, ip), &[]);
    let p = Proxy::bind(config, Arc::new(FixedOriginalDst(orig)))
        .await
        .unwrap();
    let addrs = p.addrs().clone();
    let drain = p.drain_trigger();
    let identity = p.identity().unwrap();
    let pod = Pod {
        outbound: addrs.outbound[0],
        inbound: addrs.inbound[0],
        metrics: addrs.metrics,
        identity,
        drain,
        task: tokio::spawn(p.run()),
        _files: files,
    };
    // Ready: a certificate and the first config.
    eventually(Duration::from_secs(10), "proxy ready", || async {
        get(addrs.admin, "/healthz/ready").await.0 == 200
    })
    .await;
    pod
}

fn meta(ns: &str, sa: &str) -> PeerMeta {
    PeerMeta {
        workload: sa.into(),
        namespace: ns.into(),
        canonical_service: sa.into(),
        canonical_revision: "v1".into(),
        app: sa.into(),
        version: "v1".into(),
        service_account: sa.into(),
        sidecar: true,
    }
}

/// The config both proxies get: the Service (its endpoint the relay at `endpoint`, over
/// `tls`), the server pod with `inbound` and `authz`, the client pod, and the relay's
/// source address as outside the mesh.
fn world(
    endpoint: SocketAddr,
    app_port: u16,
    protocol: Protocol,
    tls: ClusterTls,
    mtls: bool,
    inbound: InboundTls,
    authz: Authorization,
) -> Vec<(String, Resource)> {
    let host = "httpbin.foo.svc.cluster.local";
    let svc = Service {
        host: host.into(),
        name: "httpbin".into(),
        namespace: "foo".into(),
        addresses: vec![CLUSTER_IP.parse().unwrap()],
        ports: vec![ServicePort {
            port: PORT,
            name: "tcp".into(),
            protocol,
            routes: vec![],
            default_retry: None,
            tcp_route: None,
        }],
        domains: vec![host.into()],
        clusters: vec![Cluster {
            name: mesh_config::cluster::cluster_name(PORT, None, host),
            host: host.into(),
            service_name: "httpbin".into(),
            service_namespace: "foo".into(),
            port: PORT,
            subset: None,
            load_balancer: LoadBalancer::RoundRobin,
            consistent_hash: None,
            endpoints: vec![Endpoint {
                addr: endpoint,
                serving: true,
                terminating: false,
                mtls,
                peer: Some(meta("foo", "httpbin")),
            }],
            connection_pool: Default::default(),
            outlier_detection: None,
            tls,
            protocol: None,
        }],
    };
    let server = Workload {
        ip: SERVER_IP.parse().unwrap(),
        pod: "httpbin-0".into(),
        meta: meta("foo", "httpbin"),
        services: vec![InboundService {
            host: host.into(),
            name: "httpbin".into(),
            namespace: "foo".into(),
            ports: vec![InboundPort {
                port: PORT,
                target_port: app_port,
                protocol,
            }],
        }],
        inbound_tls: inbound,
        authorization: authz,
    };
    let client = Workload {
        ip: CLIENT_IP.parse().unwrap(),
        pod: "sleep-0".into(),
        meta: meta("foo", "sleep"),
        services: vec![],
        inbound_tls: InboundTls::default(),
        authorization: Authorization::default(),
    };
    vec![
        (format!("addr/{CLUSTER_IP}"), Resource::Service(svc)),
        (format!("addr/{SERVER_IP}"), Resource::Workload(server)),
        (format!("addr/{CLIENT_IP}"), Resource::Workload(client)),
        ("addr/127.0.0.1".into(), Resource::NotFound),
    ]
}

fn auto_mtls() -> ClusterTls {
    ClusterTls {
        mode: ClusterTlsMode::Auto,
        identities: vec![HTTPBIN_ID.into()],
        sni: None,
    }
}

/// Sends `payload` through `to` and reads the echo; `Err` when the connection ends
/// without it (closed or reset).
async fn round_trip(to: SocketAddr, payload: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = TcpStream::connect(to).await.map_err(|e| e.to_string())?;
    s.write_all(payload).await.map_err(|e| e.to_string())?;
    let mut got = vec![0u8; payload.len()];
    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got)).await {
        Ok(Ok(_)) => Ok(got),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 5 s".into()),
    }
}

/// The value of the series of `name` whose labels contain all of `labels`.
async fn series(metrics: SocketAddr, name: &str, labels: &[&str]) -> u64 {
    let (_, text) = get(metrics, "/stats/prometheus").await;
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

struct Mesh {
    ca: FakeCa,
    app: Echo,
    relay: Relay,
    server: Pod,
    client: Pod,
}

/// The two pods; `inbound` gives the server's PeerAuthentication for the app's port.
async fn mesh(
    tls: ClusterTls,
    mtls: bool,
    inbound: impl FnOnce(u16) -> InboundTls,
    authz: Authorization,
) -> Mesh {
    let ca = FakeCa::start().await;
    let app = echo().await;
    let relay = relay().await;
    let port = app.addr.port();
    ca.serve_config(world(
        relay.addr,
        port,
        Protocol::Tcp,
        tls,
        mtls,
        inbound(port),
        authz,
    ));
    let server = pod(&ca, "foo", "httpbin", SERVER_IP, app.addr).await;
    *relay.to.lock().unwrap() = Some(server.inbound);
    let cluster_ip: SocketAddr = format!("{CLUSTER_IP}:{PORT}").parse().unwrap();
    let client = pod(&ca, "foo", "sleep", CLIENT_IP, cluster_ip).await;
    Mesh {
        ca,
        app,
        relay,
        server,
        client,
    }
}

#[tokio::test]
async fn tcp_between_two_sidecars_is_mtls_on_the_wire_and_both_report_the_principals() {
    let m = mesh(auto_mtls(), true, permissive(), Authorization::default()).await;
    let got = round_trip(m.client.outbound, b"secret-payload-0123456789").await;
    assert_eq!(got.unwrap(), b"secret-payload-0123456789");
    let wire = m.relay.seen.lock().unwrap().clone();
    assert_eq!(&wire[..2], &[0x16, 0x03], "a TLS record first");
    assert!(
        !wire.windows(14).any(|w| w == b"secret-payload"),
        "the payload crossed the wire in clear"
    );
    let src = format!("source_principal=\"{SLEEP_ID}\"");
    let dst = format!("destination_principal=\"{HTTPBIN_ID}\"");
    let opened = "istio_tcp_connections_opened_total";
    let at_server = [
        "reporter=\"destination\"",
        &src,
        &dst,
        "connection_security_policy=\"mutual_tls\"",
        "destination_service=\"httpbin.foo.svc.cluster.local\"",
    ];
    wait_series(m.server.metrics, opened, &at_server, 1).await;
    let at_client = [
        "reporter=\"source\"",
        &src,
        &dst,
        "connection_security_policy=\"unknown\"",
        "destination_workload=\"httpbin\"",
    ];
    wait_series(m.client.metrics, opened, &at_client, 1).await;
    assert_eq!(m.app.accepted.load(Ordering::SeqCst), 1);
    let _ = &m.ca;
}

async fn wait_series(metrics: SocketAddr, name: &str, labels: &[&str], want: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = series(metrics, name, labels).await;
        if n >= want {
            assert_eq!(n, want, "{name} {labels:?}");
            return;
        }
        if Instant::now() > deadline {
            let (_, text) = get(metrics, "/stats/prometheus").await;
            panic!("{name} {labels:?}: {n}, want {want}\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plaintext client dialling the server pod directly, as a pod without a sidecar
/// would (the relay is bypassed: nothing of the mesh on its side).
async fn plaintext_client(m: &Mesh) -> Result<Vec<u8>, String> {
    round_trip(m.server.inbound, b"plain-hello").await
}

fn mode(mode: MtlsMode) -> impl FnOnce(u16) -> InboundTls {
    move |_| InboundTls {
        mode,
        ports: BTreeMap::new(),
    }
}

fn permissive() -> impl FnOnce(u16) -> InboundTls {
    mode(MtlsMode::Permissive)
}

#[tokio::test]
async fn strict_refuses_plaintext_permissive_takes_it_and_port_level_mtls_exempts_a_port() {
    // STRICT: the plaintext client is closed before the app sees it; mTLS still works.
    let m = mesh(
        auto_mtls(),
        true,
        mode(MtlsMode::Strict),
        Authorization::default(),
    )
    .await;
    assert!(plaintext_client(&m).await.is_err());
    assert_eq!(m.app.accepted.load(Ordering::SeqCst), 0);
    wait_series(
        m.server.metrics,
        "mesh_proxy_refused_connections_total",
        &["direction=\"inbound\"", "reason=\"plaintext_refused\""],
        1,
    )
    .await;
    assert_eq!(round_trip(m.client.outbound, b"x").await.unwrap(), b"x");
    drop(m);

    // PERMISSIVE (no PeerAuthentication): both, the plaintext one reported as such.
    let m = mesh(auto_mtls(), true, permissive(), Authorization::default()).await;
    assert_eq!(plaintext_client(&m).await.unwrap(), b"plain-hello");
    assert_eq!(round_trip(m.client.outbound, b"x").await.unwrap(), b"x");
    let none = [
        "reporter=\"destination\"",
        "connection_security_policy=\"none\"",
    ];
    wait_series(
        m.server.metrics,
        "istio_tcp_connections_opened_total",
        &none,
        1,
    )
    .await;
    drop(m);

    // STRICT for the workload, PERMISSIVE on the app's port (portLevelMtls).
    let port_level = |port| InboundTls {
        mode: MtlsMode::Strict,
        ports: BTreeMap::from([(port, MtlsMode::Permissive)]),
    };
    let m = mesh(auto_mtls(), true, port_level, Authorization::default()).await;
    assert_eq!(plaintext_client(&m).await.unwrap(), b"plain-hello");
    drop(m);

    // DISABLE: an mTLS client's bytes reach the app as they are (not terminated).
    let m = mesh(
        auto_mtls(),
        true,
        mode(MtlsMode::Disable),
        Authorization::default(),
    )
    .await;
    assert_eq!(plaintext_client(&m).await.unwrap(), b"plain-hello");
    assert!(round_trip(m.client.outbound, b"x").await.is_err());
}

#[tokio::test]
async fn a_destination_rule_tls_disable_sends_plaintext() {
    let off = ClusterTls {
        mode: ClusterTlsMode::Disable,
        ..auto_mtls()
    };
    let m = mesh(off, true, permissive(), Authorization::default()).await;
    assert_eq!(
        round_trip(m.client.outbound, b"clear-text-data")
            .await
            .unwrap(),
        b"clear-text-data"
    );
    let wire = m.relay.seen.lock().unwrap().clone();
    assert_eq!(wire, b"clear-text-data");
    // And an endpoint without a sidecar (auto mTLS: `mtls: false`) gets plaintext too.
    drop(m);
    let m = mesh(auto_mtls(), false, permissive(), Authorization::default()).await;
    assert_eq!(
        round_trip(m.client.outbound, b"to-legacy").await.unwrap(),
        b"to-legacy"
    );
    assert_eq!(m.relay.seen.lock().unwrap().clone(), b"to-legacy");
}

#[tokio::test]
async fn a_server_with_another_identity_is_refused() {
    let other = ClusterTls {
        identities: vec!["spiffe://cluster.local/ns/foo/sa/not-httpbin".into()],
        ..auto_mtls()
    };
    let m = mesh(other, true, permissive(), Authorization::default()).await;
    assert!(round_trip(m.client.outbound, b"x").await.is_err());
    assert_eq!(m.app.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn tcp_authorization_by_principal_closes_denied_connections() {
    let only = |principal: &str| Authorization {
        deny: vec![],
        allow: vec![AuthzPolicy {
            name: "foo/httpbin".into(),
            rules: vec![AuthzRule {
                from: vec![Source {
                    principals: vec![principal.into()],
                    ..Source::default()
                }],
                ..AuthzRule::default()
            }],
        }],
    };
    let m = mesh(
        auto_mtls(),
        true,
        permissive(),
        only("cluster.local/ns/foo/sa/sleep"),
    )
    .await;
    assert_eq!(
        round_trip(m.client.outbound, b"allowed").await.unwrap(),
        b"allowed"
    );
    // A plaintext client has no principal: denied.
    assert!(plaintext_client(&m).await.is_err());
    drop(m);
    let m = mesh(
        auto_mtls(),
        true,
        permissive(),
        only("cluster.local/ns/foo/sa/admin"),
    )
    .await;
    assert!(round_trip(m.client.outbound, b"denied").await.is_err());
    assert_eq!(m.app.accepted.load(Ordering::SeqCst), 0);
    wait_series(
        m.server.metrics,
        "mesh_proxy_refused_connections_total",
        &["direction=\"inbound\"", "reason=\"denied\""],
        1,
    )
    .await;
}

/// A server-first protocol (the app greets first, as SMTP or MySQL do) to a pod with an
/// identity, from a plaintext client that waits for the greeting: PERMISSIVE waits only
/// briefly for the client's first bytes, then lets the app speak.
#[tokio::test]
async fn a_server_first_protocol_works_in_permissive() {
    let ca = FakeCa::start().await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 hello\r\n").await;
                let mut b = [0u8; 4];
                let _ = s.read_exact(&mut b).await;
                let _ = s.write_all(&b).await;
            });
        }
    });
    let relay = relay().await;
    ca.serve_config(world(
        relay.addr,
        app.port(),
        Protocol::Unknown,
        auto_mtls(),
        true,
        InboundTls::default(),
        Authorization::default(),
    ));
    let server = pod(&ca, "foo", "httpbin", SERVER_IP, app).await;
    *relay.to.lock().unwrap() = Some(server.inbound);
    // Straight to the server's sidecar, plaintext (PERMISSIVE).
    let mut c = TcpStream::connect(server.inbound).await.unwrap();
    let mut greeting = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut greeting))
        .await
        .expect("the greeting within 5 s")
        .unwrap();
    assert_eq!(&greeting, b"220 hello\r\n");
    c.write_all(b"QUIT").await.unwrap();
    let mut back = [0u8; 4];
    c.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"QUIT");

    // Through both sidecars, the port unnamed (sniffed): the client's sidecar makes the
    // mTLS connection while it waits, so the greeting comes through it, encrypted.
    let cluster_ip: SocketAddr = format!("{CLUSTER_IP}:{PORT}").parse().unwrap();
    let client = pod(&ca, "foo", "sleep", CLIENT_IP, cluster_ip).await;
    let mut c = TcpStream::connect(client.outbound).await.unwrap();
    let mut greeting = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut greeting))
        .await
        .expect("the greeting through both sidecars within 5 s")
        .unwrap();
    assert_eq!(&greeting, b"220 hello\r\n");
    c.write_all(b"DATA").await.unwrap();
    let mut back = [0u8; 4];
    c.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"DATA");
    let wire = relay.seen.lock().unwrap().clone();
    assert_eq!(&wire[..2], &[0x16, 0x03], "mTLS on the wire");
    assert!(!wire.windows(4).any(|w| w == b"DATA"));
    // One connection to the endpoint: the one made while sniffing, no second dial.
    assert_eq!(relay.accepted.load(Ordering::SeqCst), 1);
}

/// What an Envoy sidecar would send first: its own node metadata.
fn envoy_frame(workload: &str, ip: &str) -> Vec<u8> {
    exchange::frame(&exchange::NodeMetadata {
        id: format!("sidecar~{ip}~{workload}-0.foo~foo.svc.cluster.local"),
        fields: vec![
            ("NAMESPACE".into(), "foo".into()),
            ("WORKLOAD_NAME".into(), workload.into()),
        ],
        labels: vec![("app".into(), workload.into())],
    })
}

/// Reads one peer-exchange frame and returns its node metadata's string fields and the
/// node id, decoded with protobuf's own types.
async fn read_frame<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
) -> (BTreeMap<String, String>, String) {
    use prost::Message as _;
    use prost_types::value::Kind;
    let mut head = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .expect("a frame within 5 s")
        .unwrap();
    assert_eq!(
        u32::from_be_bytes(head[..4].try_into().unwrap()),
        exchange::MAGIC
    );
    let mut payload = vec![0u8; u32::from_be_bytes(head[4..].try_into().unwrap()) as usize];
    s.read_exact(&mut payload).await.unwrap();
    let any = prost_types::Any::decode(payload.as_slice()).unwrap();
    assert_eq!(any.type_url, exchange::STRUCT_TYPE_URL);
    let data = prost_types::Struct::decode(any.value.as_slice()).unwrap();
    let id = match data.fields[exchange::KEY_ID].kind.as_ref() {
        Some(Kind::StringValue(v)) => v.clone(),
        other => panic!("node id: {other:?}"),
    };
    let Some(Kind::StructValue(node)) = data.fields[exchange::KEY_METADATA].kind.as_ref() else {
        panic!("no node metadata");
    };
    let fields = node
        .fields
        .iter()
        .filter_map(|(k, v)| match &v.kind {
            Some(Kind::StringValue(x)) => Some((k.clone(), x.clone())),
            _ => None,
        })
        .collect();
    (fields, id)
}

/// Istio's peer metadata exchange with a peer that speaks it as Envoy does: an Envoy
/// client (ALPN `istio-peer-exchange, istio`) gets our frame first and its own frame
/// never reaches the app; our client, to an Envoy server, sends its frame first and
/// drops the server's.
#[tokio::test]
async fn istio_peer_exchange_with_envoy_like_peers() {
    use mesh_proxy::identity::tls;
    let m = mesh(auto_mtls(), true, permissive(), Authorization::default()).await;
    let envoy_alpn: &[&[u8]] = &[tls::ALPN_PEER_EXCHANGE, tls::ALPN_ISTIO];

    // An Envoy client sidecar (the sleep pod's identity) to the server pod's sidecar.
    let connector = tokio_rustls::TlsConnector::from(
        tls::client_config(&m.client.identity, vec![HTTPBIN_ID.into()], envoy_alpn).unwrap(),
    );
    let name = rustls::pki_types::ServerName::try_from(tls::sni(
        PORT,
        None,
        "httpbin.foo.svc.cluster.local",
    ))
    .unwrap();
    let tcp = TcpStream::connect(m.server.inbound).await.unwrap();
    let mut c = connector.connect(name, tcp).await.unwrap();
    assert_eq!(c.get_ref().1.alpn_protocol(), Some(tls::ALPN_PEER_EXCHANGE));
    c.write_all(&envoy_frame("sleep", CLIENT_IP)).await.unwrap();
    c.write_all(b"ping-1234").await.unwrap();
    let (fields, id) = read_frame(&mut c).await;
    assert_eq!(fields.get("NAMESPACE").map(String::as_str), Some("foo"));
    assert_eq!(
        fields.get("WORKLOAD_NAME").map(String::as_str),
        Some("httpbin")
    );
    assert!(id.starts_with(&format!("sidecar~{SERVER_IP}~")), "{id}");
    // The echo app got the payload only: it sends back exactly that.
    let mut back = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut back))
        .await
        .expect("the echo within 5 s")
        .unwrap();
    assert_eq!(&back, b"ping-1234");
    drop(c);

    // An Envoy server sidecar behind the relay: our client proxy's frame comes first.
    let acceptor = tokio_rustls::TlsAcceptor::from(
        tls::server_config(&m.server.identity, envoy_alpn).unwrap(),
    );
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    *m.relay.to.lock().unwrap() = Some(l.local_addr().unwrap());
    let envoy = tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let mut s = acceptor.accept(tcp).await.unwrap();
        assert_eq!(s.get_ref().1.alpn_protocol(), Some(tls::ALPN_PEER_EXCHANGE));
        let got = read_frame(&mut s).await;
        s.write_all(&envoy_frame("httpbin", SERVER_IP))
            .await
            .unwrap();
        let mut b = [0u8; 9];
        s.read_exact(&mut b).await.unwrap();
        s.write_all(&b).await.unwrap();
        s.flush().await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
        (got, b)
    });
    let got = round_trip(m.client.outbound, b"pong-5678").await;
    assert_eq!(
        got.unwrap(),
        b"pong-5678",
        "the server's frame reached the app"
    );
    let ((fields, id), seen) = tokio::time::timeout(Duration::from_secs(5), envoy)
        .await
        .expect("the Envoy-like server done")
        .unwrap();
    assert_eq!(&seen, b"pong-5678", "our frame was not first");
    assert_eq!(
        fields.get("WORKLOAD_NAME").map(String::as_str),
        Some("sleep")
    );
    assert_eq!(fields.get("NAMESPACE").map(String::as_str), Some("foo"));
    assert!(id.starts_with(&format!("sidecar~{CLIENT_IP}~")), "{id}");
}
