//! The whole proxy as an ingress gateway (`--role gateway`, parsed by the real CLI): its
//! certificate from a fake CA, its Gateway config from the fake config stream, its
//! listeners bound from that config, and real clients on loopback: plaintext HTTP routed
//! by host and path, 404 `NR` for what no virtual host or route takes, `httpsRedirect`,
//! HTTPS terminated with the credential's certificate (the client verifies it, by SNI),
//! a new certificate served after a config update without a restart, TLS passthrough by
//! SNI to a TLS upstream (bytes untouched: the client verifies the upstream's own
//! certificate), a TCP server shifting connections by weight, `MUTUAL` and
//! `OPTIONAL_MUTUAL` servers checking client certificates (CA, CRL, subjectAltNames,
//! hashes) and telling the app in `x-forwarded-client-cert`, and the gateway's request
//! and TCP metrics counting exactly what was sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_support;
mod mesh_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_support::{Proto, Upstream, sum_series, upstream};
use mesh_config::gateway::{ClientCertificates, Gateway, TlsServerMode};
use mesh_config::{
    Certificate, Cluster, Endpoint, GatewayListener, HeaderEdit, HttpRoute, LoadBalancer,
    RequestMatch, Resource, RouteAction, StringMatch, TlsRoute, TlsServer, VirtualHost,
    WeightedCluster,
};
use mesh_proxy::Proxy;
use mesh_proxy::orig_dst::FixedOriginalDst;
use mesh_support::{FakeCa, Files, TOKEN, eventually, get, pod_config};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HTTP_NUMBER: u16 = 80;
const HTTPS_NUMBER: u16 = 443;

/// A test CA and what it signs.
struct TestCa {
    key: KeyPair,
    params: CertificateParams,
    pem: String,
}

impl TestCa {
    fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa { key, params, pem }
    }

    /// A server certificate for `name`, and its serial (to tell two apart).
    fn issue(&self, name: &str, serial: u64) -> Certificate {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![name.to_owned()]).unwrap();
        p.serial_number = Some(serial.into());
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer).unwrap();
        Certificate {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    fn client(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject as _;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(self.pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(mesh_support::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

fn cluster(name: &str, addr: SocketAddr) -> Cluster {
    let host = format!("{name}.shop.svc.cluster.local");
    Cluster {
        name: mesh_config::cluster::cluster_name(9080, None, &host),
        host,
        service_name: name.into(),
        service_namespace: "shop".into(),
        port: 9080,
        subset: None,
        load_balancer: LoadBalancer::RoundRobin,
        consistent_hash: None,
        endpoints: vec![Endpoint {
            addr,
            serving: true,
            terminating: false,
            mtls: false,
            peer: None,
        }],
        connection_pool: Default::default(),
        outlier_detection: None,
        tls: Default::default(),
        protocol: Some(mesh_config::Protocol::Http),
    }
}

fn to(c: &Cluster) -> RouteAction {
    RouteAction::Route(vec![WeightedCluster {
        cluster: c.name.clone(),
        weight: 100,
        request_headers: HeaderEdit::default(),
        response_headers: HeaderEdit::default(),
    }])
}

fn route(name: &str, uri: StringMatch, c: &Cluster) -> HttpRoute {
    HttpRoute {
        name: name.into(),
        virtual_service: "shop/bookinfo".into(),
        matches: vec![RequestMatch {
            uri: Some(uri),
            ..Default::default()
        }],
        action: to(c),
        fault: None,
        request_headers: HeaderEdit::default(),
        response_headers: HeaderEdit::default(),
        rewrite: None,
        timeout_ms: None,
        retry: None,
        mirrors: Vec::new(),
        cors: None,
    }
}

fn vhost(name: &str, routes: Vec<HttpRoute>) -> VirtualHost {
    VirtualHost {
        name: name.into(),
        domains: vec![name.into()],
        https_redirect: false,
        routes,
    }
}

/// The gateway's config: port `http` (number 80) with bookinfo's routes for `*` and a
/// redirecting host; port `https` (number 443) with a SIMPLE server for
/// shop.example.com and a passthrough for db.example.com.
fn config(
    http: u16,
    https: u16,
    page: &Cluster,
    db: &Cluster,
    cert: Option<Certificate>,
) -> Gateway {
    let bookinfo = vec![
        route(
            "productpage",
            StringMatch::Exact("/productpage".into()),
            page,
        ),
        route("static", StringMatch::Prefix("/static".into()), page),
    ];
    let mut redirect = vhost("secure.example.com", bookinfo.clone());
    redirect.https_redirect = true;
    Gateway {
        gateways: vec!["shop/bookinfo-gateway".into()],
        listeners: vec![
            GatewayListener {
                tcp: None,
                port: http,
                number: HTTP_NUMBER,
                http: vec![vhost("*", bookinfo.clone()), redirect],
                tls: Vec::new(),
            },
            GatewayListener {
                tcp: None,
                port: https,
                number: HTTPS_NUMBER,
                http: Vec::new(),
                tls: vec![
                    TlsServer {
                        name: "shop/bookinfo-gateway servers[1]".into(),
                        hosts: vec!["shop.example.com".into()],
                        mode: TlsServerMode::Simple {
                            credential_name: "shop-cert".into(),
                            certificate: cert,
                            why: String::new(),
                            client_certificates: None,
                            virtual_hosts: vec![vhost("shop.example.com", bookinfo)],
                        },
                    },
                    TlsServer {
                        name: "shop/bookinfo-gateway servers[2]".into(),
                        hosts: vec!["db.example.com".into()],
                        mode: TlsServerMode::Passthrough {
                            routes: vec![TlsRoute {
                                virtual_service: "shop/db".into(),
                                sni_hosts: vec!["db.example.com".into()],
                                destinations: vec![WeightedCluster {
                                    cluster: db.name.clone(),
                                    weight: 1,
                                    request_headers: HeaderEdit::default(),
                                    response_headers: HeaderEdit::default(),
                                }],
                            }],
                        },
                    },
                ],
            },
        ],
        clusters: vec![page.clone(), db.clone()],
    }
}

async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// One HTTP/1.1 request: (status, head lower case, body); status 0 when the
/// connection broke before a response.
async fn request<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    s: S,
    host: &str,
    path: &str,
) -> (u16, String, String) {
    use http_body_util::BodyExt as _;
    let Ok((mut send, conn)) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s)).await
    else {
        return (0, String::new(), String::new());
    };
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", host)
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .unwrap();
    let Ok(resp) = send.send_request(req).await else {
        return (0, String::new(), String::new());
    };
    let status = resp.status().as_u16();
    let head = resp
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("")))
        .collect::<String>();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

async fn plain(addr: SocketAddr, host: &str, path: &str) -> (u16, String, String) {
    request(TcpStream::connect(addr).await.unwrap(), host, path).await
}

/// HTTPS through the gateway, verifying the server's certificate for `sni`; also
/// returns the (DER) certificate the gateway served.
async fn https(
    ca: &TestCa,
    addr: SocketAddr,
    sni: &str,
    path: &str,
) -> std::io::Result<(u16, String, Vec<u8>)> {
    let tcp = TcpStream::connect(addr).await?;
    let tls = ca
        .client()
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await?;
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (status, _, body) = request(tls, sni, path).await;
    Ok((status, body, served))
}

/// The DER of a certificate, to compare what was served with what was configured.
fn der_of(c: &Certificate) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_slice(c.chain_pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// A TLS server for `name` that answers `db:<what it read>` on each connection.
async fn tls_upstream(ca: &TestCa, name: &str) -> SocketAddr {
    use rustls::pki_types::pem::PemObject as _;
    let cert = ca.issue(name, 77);
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(mesh_support::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let mut reply = b"db:".to_vec();
                reply.extend_from_slice(&buf[..n]);
                let _ = s.write_all(&reply).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

struct Gw {
    http: SocketAddr,
    https: SocketAddr,
    metrics: SocketAddr,
    _files: Files,
    task: tokio::task::JoinHandle<mesh_proxy::DrainReport>,
}

async fn gateway(ca: &FakeCa, http: u16, https: u16) -> Gw {
    let files = Files::new(&ca.root_pem, TOKEN);
    let ip = "127.0.0.1";
    let mut config = pod_config(
        ca,
        &files,
        ("shop", "istio-ingressgateway", ip),
        &["--role", "gateway"],
    );
    assert!(
        config.outbound.is_empty() && config.inbound.is_empty(),
        "a gateway captures nothing"
    );
    assert!(config.gateway.is_some());
    // Its listeners on loopback only.
    config.gateway = Some(vec![ip.parse().unwrap()]);
    config.worker_threads = 2;
    let p = Proxy::bind(
        config,
        Arc::new(FixedOriginalDst("127.0.0.1:1".parse().unwrap())),
    )
    .await
    .unwrap();
    let addrs = p.addrs().clone();
    let task = tokio::spawn(p.run());
    eventually(Duration::from_secs(10), "gateway ready", || async {
        get(addrs.admin, "/healthz/ready").await.0 == 200
    })
    .await;
    let gw = Gw {
        http: SocketAddr::from(([127, 0, 0, 1], http)),
        https: SocketAddr::from(([127, 0, 0, 1], https)),
        metrics: addrs.metrics,
        _files: files,
        task,
    };
    let port = gw.http;
    eventually(
        Duration::from_secs(5),
        "gateway port bound",
        || async move { TcpStream::connect(port).await.is_ok() },
    )
    .await;
    gw
}

fn requests(text: &str, want: &[&str]) -> u64 {
    sum_series(text, "istio_requests_total{", want)
}

#[tokio::test]
async fn routes_terminates_and_passes_through_as_istio_gateways_do() {
    let ca = FakeCa::start().await;
    let test_ca = TestCa::new();
    let page: Upstream = upstream("productpage", Proto::H1).await;
    let page_cluster = cluster("productpage", page.addr);
    let db_cluster = cluster("db", tls_upstream(&test_ca, "db.example.com").await);
    let (http_port, https_port) = (free_port().await, free_port().await);
    let first = test_ca.issue("shop.example.com", 1);
    ca.serve_config(vec![(
        "gateway".into(),
        Resource::Gateway(config(
            http_port,
            https_port,
            &page_cluster,
            &db_cluster,
            Some(first.clone()),
        )),
    )]);
    let gw = gateway(&ca, http_port, https_port).await;

    // Plaintext HTTP, routed by path for any host.
    let (s, _, body) = plain(gw.http, "bookinfo.example.org", "/productpage").await;
    assert_eq!((s, body.as_str()), (200, "productpage"));
    let (s, _, _) = plain(gw.http, "bookinfo.example.org:80", "/static/css/x.css").await;
    assert_eq!(s, 200, "prefix /static");
    let (_, path, headers) = page.seen_last();
    assert_eq!(path, "/static/css/x.css");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert!(headers.contains_key("x-request-id"));
    let (s, _, _) = plain(gw.http, "bookinfo.example.org", "/other").await;
    assert_eq!(s, 404, "no route");
    // httpsRedirect: a 301 to the same host and path over https.
    let (s, head, _) = plain(gw.http, "secure.example.com", "/productpage?a=1").await;
    assert_eq!(s, 301);
    assert!(
        head.contains("location: https://secure.example.com/productpage?a=1"),
        "{head}"
    );

    // HTTPS: the credential's certificate, verified by the client for its SNI.
    let (s, body, serial) = https(&test_ca, gw.https, "shop.example.com", "/productpage")
        .await
        .unwrap();
    assert_eq!((s, body.as_str()), (200, "productpage"));
    assert_eq!(serial, der_of(&first));
    assert_eq!(page.seen_last().2["x-forwarded-proto"], "https");
    // An SNI no server takes: the connection is closed, no certificate is shown.
    assert!(
        https(&test_ca, gw.https, "other.example.com", "/")
            .await
            .is_err()
    );
    // Plaintext on the TLS-only port: closed.
    let (s, _, _) = plain(gw.https, "shop.example.com", "/productpage").await;
    assert_eq!(s, 0);

    // Passthrough: the upstream's own certificate, and the bytes untouched.
    let tcp = TcpStream::connect(gw.https).await.unwrap();
    let mut tls = test_ca
        .client()
        .connect(ServerName::try_from("db.example.com").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"ping").await.unwrap();
    let mut got = Vec::new();
    let _ = tls.read_to_end(&mut got).await;
    assert_eq!(got, b"db:ping");

    // Metrics: exactly what was sent, as the source workload.
    let text = get(gw.metrics, "/stats/prometheus").await.1;
    let me = "source_workload=\"istio-ingressgateway\"";
    let routed = [
        "reporter=\"source\"",
        me,
        "destination_service_name=\"productpage\"",
        "response_code=\"200\"",
    ];
    assert_eq!(requests(&text, &routed), 3, "{text}");
    assert_eq!(
        requests(
            &text,
            &[me, "response_code=\"404\"", "response_flags=\"NR\""]
        ),
        1,
        "{text}"
    );
    assert_eq!(requests(&text, &[me, "response_code=\"301\""]), 1, "{text}");

    // A new certificate (the Secret rotated): served without a restart once the config
    // carries it.
    let second = test_ca.issue("shop.example.com", 2);
    ca.serve_config(vec![(
        "gateway".into(),
        Resource::Gateway(config(
            http_port,
            https_port,
            &page_cluster,
            &db_cluster,
            Some(second.clone()),
        )),
    )]);
    let mut served = Vec::new();
    for _ in 0..200 {
        if let Ok((200, _, s)) = https(&test_ca, gw.https, "shop.example.com", "/productpage").await
        {
            served = s;
            if served == der_of(&second) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served == der_of(&second), "the new certificate is served");
    assert!(!gw.task.is_finished());
}

#[tokio::test]
async fn a_server_without_its_certificate_fails_its_handshakes_only() {
    let ca = FakeCa::start().await;
    let test_ca = TestCa::new();
    let page = upstream("productpage", Proto::H1).await;
    let page_cluster = cluster("productpage", page.addr);
    let db_cluster = cluster("db", page.addr);
    let (http_port, https_port) = (free_port().await, free_port().await);
    ca.serve_config(vec![(
        "gateway".into(),
        Resource::Gateway(config(
            http_port,
            https_port,
            &page_cluster,
            &db_cluster,
            None,
        )),
    )]);
    let gw = gateway(&ca, http_port, https_port).await;
    assert!(
        https(&test_ca, gw.https, "shop.example.com", "/productpage")
            .await
            .is_err()
    );
    let (s, _, _) = plain(gw.http, "bookinfo.example.org", "/productpage").await;
    assert_eq!(s, 200, "the plaintext port still routes");
}

/// A plain TCP server that answers `<name>:<what it read>` on each connection.
async fn tcp_upstream(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let mut reply = format!("{name}:").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = s.write_all(&reply).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A Gateway `TCP` server (Istio's TCP traffic shifting through the ingress gateway):
/// every connection to its port goes, bytes untouched, to one of the `tcp[]` route's
/// clusters by weight, and the gateway's TCP metrics name the version each went to.
#[tokio::test]
async fn a_tcp_server_shifts_connections_by_weight() {
    let ca = FakeCa::start().await;
    let page = upstream("productpage", Proto::H1).await;
    let page_cluster = cluster("productpage", page.addr);
    let versioned = |version: &str, addr| {
        let mut c = cluster("tcp-echo", addr);
        c.name = mesh_config::cluster::cluster_name(9000, Some(version), &c.host);
        c.subset = Some(version.into());
        c.protocol = Some(mesh_config::Protocol::Tcp);
        c.endpoints[0].peer = Some(mesh_config::PeerMeta {
            workload: format!("tcp-echo-{version}"),
            namespace: "shop".into(),
            canonical_service: "tcp-echo".into(),
            canonical_revision: version.into(),
            app: "tcp-echo".into(),
            version: version.into(),
            service_account: "default".into(),
            sidecar: false,
        });
        c
    };
    let v1 = versioned("v1", tcp_upstream("v1").await);
    let v2 = versioned("v2", tcp_upstream("v2").await);
    let (http_port, tcp_port) = (free_port().await, free_port().await);
    let mut g = Gateway {
        gateways: vec!["shop/tcp-echo-gateway".into()],
        listeners: vec![GatewayListener {
            tcp: None,
            port: http_port,
            number: HTTP_NUMBER,
            http: vec![vhost(
                "*",
                vec![route(
                    "page",
                    StringMatch::Prefix("/".into()),
                    &page_cluster,
                )],
            )],
            tls: Vec::new(),
        }],
        clusters: vec![page_cluster.clone(), v1.clone(), v2.clone()],
    };
    g.listeners.push(GatewayListener {
        tcp: Some(mesh_config::TcpRoute {
            virtual_service: "shop/tcp-echo".into(),
            rule: 0,
            clusters: vec![
                mesh_config::TcpCluster {
                    cluster: v1.name.clone(),
                    weight: 80,
                },
                mesh_config::TcpCluster {
                    cluster: v2.name.clone(),
                    weight: 20,
                },
            ],
        }),
        port: tcp_port,
        number: 31400,
        http: Vec::new(),
        tls: Vec::new(),
    });
    g.listeners.sort_by_key(|l| l.port);
    ca.serve_config(vec![("gateway".into(), Resource::Gateway(g))]);
    let gw = gateway(&ca, http_port, tcp_port).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], tcp_port));
    let (mut n1, mut n2) = (0u64, 0u64);
    for i in 0..500 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let ping = format!("ping{i}");
        s.write_all(ping.as_bytes()).await.unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        match got.split_once(':') {
            Some(("v1", rest)) if rest == ping => n1 += 1,
            Some(("v2", rest)) if rest == ping => n2 += 1,
            _ => panic!("connection {i}: {got:?}"),
        }
    }
    let share = n1 as f64 / 500.0;
    assert!((0.74..=0.86).contains(&share), "v1 {n1}, v2 {n2}");
    let opened = |text: &str, v: &str| {
        sum_series(
            text,
            "istio_tcp_connections_opened_total{",
            &[
                "reporter=\"source\"",
                "source_workload=\"istio-ingressgateway\"",
                &format!("destination_version=\"{v}\""),
            ],
        )
    };
    let mut text = String::new();
    for _ in 0..50 {
        text = get(gw.metrics, "/stats/prometheus").await.1;
        if opened(&text, "v1") + opened(&text, "v2") == 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        (opened(&text, "v1"), opened(&text, "v2")),
        (n1, n2),
        "{text}"
    );
    // The HTTP port beside it still routes.
    let (s, _, _) = plain(gw.http, "bookinfo.example.org", "/productpage").await;
    assert_eq!(s, 200);
}

/// A client certificate from `ca`: subject `CN=<cn>,O=client organization`, DNS name
/// `cn`, serial `serial`.
fn client_cert(ca: &TestCa, cn: &str, serial: u64) -> Certificate {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec![cn.to_owned()]).unwrap();
    p.serial_number = Some(serial.into());
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::OrganizationName, "client organization");
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let cert = p.signed_by(&key, &issuer).unwrap();
    Certificate {
        chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// One listener (number 443) with a terminating server for shop.example.com that asks
/// for client certificates as `clients` says.
fn mutual_config(
    https: u16,
    page: &Cluster,
    cert: &Certificate,
    clients: ClientCertificates,
) -> Gateway {
    Gateway {
        gateways: vec!["shop/mutual".into()],
        listeners: vec![GatewayListener {
            tcp: None,
            port: https,
            number: HTTPS_NUMBER,
            http: Vec::new(),
            tls: vec![TlsServer {
                name: "shop/mutual servers[0]".into(),
                hosts: vec!["shop.example.com".into()],
                mode: TlsServerMode::Simple {
                    credential_name: "shop-credential".into(),
                    certificate: Some(cert.clone()),
                    why: String::new(),
                    client_certificates: Some(clients),
                    virtual_hosts: vec![vhost(
                        "shop.example.com",
                        vec![route("all", StringMatch::Prefix("/".into()), page)],
                    )],
                },
            }],
        }],
        clusters: vec![page.clone()],
    }
}

/// GET / over TLS to shop.example.com (server verified against `server_ca`), with
/// `client` as the client certificate and a forged `x-forwarded-client-cert`: the
/// status, 0 when the handshake or the request failed.
async fn mutual_get(server_ca: &TestCa, addr: SocketAddr, client: Option<&Certificate>) -> u16 {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(server_ca.pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(mesh_support::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => b.with_no_client_auth(),
        Some(c) => b
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(c.chain_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    let tcp = TcpStream::connect(addr).await.unwrap();
    let Ok(tls) = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("shop.example.com").unwrap(), tcp)
        .await
    else {
        return 0;
    };
    let Ok((mut send, conn)) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await
    else {
        return 0;
    };
    tokio::spawn(conn);
    let req = hyper::Request::get("/")
        .header("host", "shop.example.com")
        .header(
            "x-forwarded-client-cert",
            "By=spiffe://forged;URI=spiffe://admin",
        )
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .unwrap();
    match send.send_request(req).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// `MUTUAL` and `OPTIONAL_MUTUAL` servers, as Istio's mutual TLS ingress task uses
/// them: the client certificate is checked against the credential's CA (and the
/// server's subjectAltNames and hashes), and the app reads it from
/// `x-forwarded-client-cert`, set by the gateway alone (`SANITIZE_SET`, with the
/// certificate itself: what istiod asks of Envoy gateways).
#[tokio::test]
async fn mutual_servers_check_client_certificates_and_tell_the_app() {
    let ca = FakeCa::start().await;
    let server_ca = TestCa::new();
    let client_ca = TestCa::new();
    let stranger_ca = TestCa::new();
    let page = upstream("productpage", Proto::H1).await;
    let page_cluster = cluster("productpage", page.addr);
    let https_port = free_port().await;
    let server_cert = server_ca.issue("shop.example.com", 1);
    let good = client_cert(&client_ca, "client.example.com", 1);
    let other_name = client_cert(&client_ca, "other.example.com", 2);
    let revoked = client_cert(&client_ca, "client.example.com", 3);
    let stranger = client_cert(&stranger_ca, "client.example.com", 1);
    let mutual = ClientCertificates {
        required: true,
        ca_pem: client_ca.pem.clone(),
        crl_pem: String::new(),
        subject_alt_names: Vec::new(),
        certificate_hashes: Vec::new(),
    };
    ca.serve_config(vec![(
        "gateway".into(),
        Resource::Gateway(mutual_config(
            https_port,
            &page_cluster,
            &server_cert,
            mutual.clone(),
        )),
    )]);
    // No plaintext port: the one bound is the one `gateway` waits for.
    let gw = gateway(&ca, https_port, https_port).await;
    let addr = gw.https;

    // MUTUAL: a client certificate the CA signed is served; the app sees it, and only
    // it (the client's own header is dropped).
    assert_eq!(mutual_get(&server_ca, gw.https, Some(&good)).await, 200);
    let good_der = der_of(&good);
    let hash = mesh_proxy::identity::der::hex(
        ring::digest::digest(&ring::digest::SHA256, &good_der).as_ref(),
    );
    let xfcc = page.seen_last().2["x-forwarded-client-cert"]
        .to_str()
        .unwrap()
        .to_owned();
    let parts: Vec<&str> = xfcc.split(';').collect();
    assert_eq!(parts.len(), 5, "{xfcc}");
    assert_eq!(parts[0], format!("Hash={hash}"));
    let pem = parts[1]
        .strip_prefix("Cert=\"")
        .and_then(|c| c.strip_suffix('"'))
        .unwrap()
        .replace("%0A", "\n")
        .replace("%20", " ")
        .replace("%2B", "+")
        .replace("%2F", "/")
        .replace("%3D", "=");
    {
        use rustls::pki_types::pem::PemObject as _;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(der.to_vec(), good_der, "Cert is the client's certificate");
    }
    assert_eq!(
        &parts[2..],
        [
            "Subject=\"CN=client.example.com,O=client organization\"",
            "URI=",
            "DNS=client.example.com"
        ]
    );
    // No certificate, or one another CA signed: refused, the app never reached.
    let seen = page.seen.lock().unwrap().len();
    assert_eq!(mutual_get(&server_ca, gw.https, None).await, 0);
    assert_eq!(mutual_get(&server_ca, gw.https, Some(&stranger)).await, 0);
    assert_eq!(page.seen.lock().unwrap().len(), seen);

    // OPTIONAL_MUTUAL, with subjectAltNames and a certificate hash: no certificate is
    // served (and the app gets no header at all); a certificate is still checked.
    // A CRL from the client CA revoking serial 3 (the credential's ca.crl).
    assert_eq!(mutual_get(&server_ca, gw.https, Some(&revoked)).await, 200);
    let now = time::OffsetDateTime::now_utc();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + time::Duration::hours(1),
        crl_number: 1u64.into(),
        issuing_distribution_point: None,
        revoked_certs: vec![rcgen::RevokedCertParams {
            serial_number: 3u64.into(),
            revocation_time: now - time::Duration::minutes(1),
            reason_code: None,
            invalidity_date: None,
        }],
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&Issuer::from_params(&client_ca.params, &client_ca.key))
    .unwrap()
    .pem()
    .unwrap();
    let with_crl = ClientCertificates {
        crl_pem: crl,
        ..mutual.clone()
    };
    ca.serve_config(vec![(
        "gateway".into(),
        Resource::Gateway(mutual_config(
            https_port,
            &page_cluster,
            &server_cert,
            with_crl,
        )),
    )]);
    eventually(Duration::from_secs(10), "the CRL applied", || {
        let (ca, c) = (&server_ca, &revoked);
        async move { mutual_get(ca, addr, Some(c)).await == 0 }
    })
    .await;
    assert_eq!(mutual_get(&server_ca, gw.https, Some(&good)).await, 200);

    let optional = ClientCertificates {
        required: false,
        subject_alt_names: vec!["client.example.com".into()],
        certificate_hashes: vec![hash.clone(), "00".repeat(32)],
        ..mutual
    };
    ca.serve_config(vec![(
        "gateway".into(),
        Resource::Gateway(mutual_config(
            https_port,
            &page_cluster,
            &server_cert,
            optional,
        )),
    )]);
    eventually(Duration::from_secs(10), "OPTIONAL_MUTUAL applied", || {
        let ca = &server_ca;
        async move { mutual_get(ca, addr, None).await == 200 }
    })
    .await;
    assert!(
        !page.seen_last().2.contains_key("x-forwarded-client-cert"),
        "no client certificate: no header"
    );
    assert_eq!(mutual_get(&server_ca, gw.https, Some(&good)).await, 200);
    assert!(
        page.seen_last().2["x-forwarded-client-cert"]
            .to_str()
            .unwrap()
            .starts_with(&format!("Hash={hash};Cert="))
    );
    let seen = page.seen.lock().unwrap().len();
    assert_eq!(
        mutual_get(&server_ca, gw.https, Some(&other_name)).await,
        0,
        "a name subjectAltNames does not list (and a hash not listed)"
    );
    assert_eq!(mutual_get(&server_ca, gw.https, Some(&stranger)).await, 0);
    assert_eq!(page.seen.lock().unwrap().len(), seen);
    assert!(!gw.task.is_finished());
}
