//! The ingress gateway on a real node (issue #14): `deploy/overlays/gateway` on top of the
//! mesh, Istio's bookinfo Gateway and VirtualService applied unchanged
//! (examples/bookstore/gateway/), and a client outside the mesh.
//!
//! - The gateway: Deployment `istio-ingressgateway` (2 replicas, only `istio-proxy` with
//!   `image: auto`, injected as a gateway through the object webhook) and its LoadBalancer
//!   Service in namespace `istio-ingress`. kube-node has no load balancer, so the client
//!   uses what deploy/README.md gives for that case: the Service's nodePorts on the node's
//!   IP, and once its ClusterIP (the host has routes to both).
//! - The client is this test process on the host, outside kube-node's network namespace:
//!   no pod, no sidecar, no mesh identity; plain TCP for HTTP, `curl` for HTTPS (it
//!   verifies the gateway's certificate against the test's CA, with SNI
//!   `bookstore.example.com`, and prints the certificate it got). kube-node's README
//!   documents NodePorts, ClusterIPs and pod IPs as reachable from the host; nothing here
//!   adds an address, a route or a namespace.
//! - The app: examples/bookstore/gateway/productpage-local.yaml (`mesh-bookstore serve` as
//!   `productpage` on 9080) in a namespace labelled istio-injection=enabled.
//! - Certificates: a CA and server certificates made by `openssl` (Debian's, a dependency
//!   of ca-certificates, which scripts/test.sh installs) in a temporary folder, put in a
//!   kubernetes.io/tls Secret in the gateway's namespace.
//!
//! What it proves: `/productpage` and bookinfo's other paths reach productpage, `/static/x`
//! by prefix, anything else 404; HTTPS (`tls.mode: SIMPLE`, `credentialName`) with the
//! Secret's certificate, verified by the client; the Secret replaced → the new certificate
//! served by both pods within a bound, no pod restarted; the same server as `MUTUAL`, its
//! client CA in Secret `bookstore-credential-cacert`: a client without a certificate or
//! with one from another CA refused, one from the CA served, productpage seeing it in
//! `x-forwarded-client-cert` (`Hash`, `Cert`, `Subject`, `URI`); `httpsRedirect` → 301 to
//! `https://`; a host no server names → 404; the gateway's `istio_requests_total`
//! (reporter source, summed over both pods) counts exactly the requests sent, with
//! `source_workload="istio-ingressgateway"`, `destination_service_name="productpage"` for
//! the routed ones and `response_flags="NR"` for the 404s; a `TCP` server on 31400
//! (examples/bookstore/gateway/productpage-tcp-gateway.yaml, samples/tcp-echo's shape)
//! passes each connection to productpage, counted as a TCP connection by the gateway.
//!
//! At the end the gateway's namespace goes (the whole overlay lives in it), as does the
//! app's: the rest of the node tests see the mesh as install_mesh leaves it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mesh_tests::kube_node::{
    DeleteOnDrop, KubeNode, PodInfo, TestNamespace, eventually, image, in_netns, install_mesh,
    metric_sum, proxy_metrics, repo_file, repo_root, report, rss_kib, run_with_timeout,
    unique_name,
};
use serde_json::Value;

/// Where deploy/overlays/gateway installs the gateway.
const GW_NS: &str = "istio-ingress";
const GW_DIR: &str = "deploy/overlays/gateway";
const GW_NAME: &str = "istio-ingressgateway";
const GW_SELECTOR: &str = "istio=ingressgateway,app=istio-ingressgateway";
/// deploy/README.md's line for servers without `policy/v1` (< 1.21), for the gateway.
const GW_PDB_WORKAROUND: &str = "kubectl kustomize deploy/overlays/gateway | sed 's#^apiVersion: policy/v1$#apiVersion: policy/v1beta1#' | kubectl apply -f -";
/// The proxy's ports behind the Service's 80 and 443 (deploy/overlays/gateway/service.yaml).
const GW_HTTP_PORT: u16 = 8080;
const GW_HTTPS_PORT: u16 = 8443;

const READY: Duration = Duration::from_secs(180);
/// From `kubectl apply` of a Gateway / VirtualService (or a deletion) to the gateway
/// pods serving it.
const CONFIG: Duration = Duration::from_secs(30);
/// From replacing the credential Secret to both pods serving the new certificate.
const ROTATION: Duration = Duration::from_secs(60);

const REQUESTS: &str = "istio_requests_total";
const HOST: &str = "bookstore.example.com";
const OTHER_HOST: &str = "nope.example.com";
/// examples/bookstore/gateway/bookstore-https-gateway.yaml's `credentialName`.
const CREDENTIAL: &str = "bookstore-credential";

fn example(name: &str) -> String {
    let path = repo_file(&format!("examples/bookstore/gateway/{name}"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Fails, loudly, unless `tool` is on PATH.
fn require_tool(tool: &str, why: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "this test needs `{tool}` on PATH ({why}): apt-get install -y {tool} \
         (scripts/test.sh installs curl, and ca-certificates, which depends on openssl)"
    );
}

// ---------------------------------------------------------------------------------------
// The client: plain HTTP/1.1 from the host.

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// mesh-bookstore's answer: `{"service":..,"version":..,"path":..}`.
    fn app(&self) -> Option<Value> {
        serde_json::from_str(self.body.trim()).ok()
    }

    fn short(&self) -> String {
        format!(
            "{} {:?} {}",
            self.status,
            self.headers,
            self.body.chars().take(300).collect::<String>()
        )
    }
}

/// `GET path` with `Host: host` and `Connection: close`, one connection per request.
fn get(addr: SocketAddr, host: &str, path: &str) -> Result<Resp, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mesh-tests-outside-client\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr} (GET {path}, Host {host}): {e}"))?;
    parse_response(&raw).map_err(|e| format!("{addr} GET {path} Host {host}: {e}"))
}

fn parse_response(raw: &[u8]) -> Result<Resp, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no complete response head in {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_owned()
    };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s
            .split_once("\r\n")
            .ok_or_else(|| format!("bad chunk in {s:?}"))?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest
            .get(..size)
            .ok_or_else(|| format!("short chunk in {rest:?}"))?;
        out.push_str(chunk);
        s = rest.get(size..).unwrap_or("").trim_start_matches("\r\n");
    }
}

/// A 200 from productpage for `path`, as the app saw it.
fn expect_productpage(r: &Resp, path: &str) -> Result<(), String> {
    let app = r.app();
    let ok = r.status == 200
        && app
            .as_ref()
            .is_some_and(|a| a["service"] == "productpage" && a["path"].as_str() == Some(path));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "wanted 200 from productpage for {path}, got {}",
            r.short()
        ))
    }
}

// ---------------------------------------------------------------------------------------
// The client: HTTPS with curl, verifying against the test's CA.

#[derive(Debug)]
struct Tls {
    status: u16,
    /// The served leaf certificate's serial, lower-case hex, no leading zeros.
    serial: String,
    body: String,
}

const CURL_MARK: &str = "\n@@mesh-tests@@";

/// `GET https://bookstore.example.com:PORT/path`, connecting to `ip:port`, SNI
/// `bookstore.example.com`, the certificate verified against `ca` (and nothing else), with
/// `Host: host_header` if given.
fn https(
    ip: &str,
    port: u16,
    path: &str,
    ca: &Path,
    host_header: Option<&str>,
) -> Result<Tls, String> {
    https_as(ip, port, path, ca, host_header, None)
}

/// [`https`], presenting `client`'s certificate and key when given.
fn https_as(
    ip: &str,
    port: u16,
    path: &str,
    ca: &Path,
    host_header: Option<&str>,
    client: Option<&CertFiles>,
) -> Result<Tls, String> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-q",
        "-sS",
        "--noproxy",
        "*",
        "--connect-timeout",
        "3",
        "--max-time",
        "10",
    ])
    .arg("--cacert")
    .arg(ca)
    .args(["--resolve", &format!("{HOST}:{port}:{ip}")])
    .args(["-w", &format!("{CURL_MARK}%{{http_code}}\n%{{certs}}")]);
    if let Some(h) = host_header {
        cmd.args(["-H", &format!("Host: {h}")]);
    }
    if let Some(c) = client {
        cmd.arg("--cert").arg(&c.crt).arg("--key").arg(&c.key);
    }
    cmd.arg(format!("https://{HOST}:{port}{path}"));
    let r = run_with_timeout(cmd, None, Duration::from_secs(20));
    if !r.ok {
        return Err(format!(
            "curl https://{HOST}:{port}{path} via {ip}: {} {}",
            r.status,
            r.stderr.trim()
        ));
    }
    let (body, meta) = r
        .stdout
        .split_once(CURL_MARK)
        .ok_or_else(|| format!("curl printed no -w output: {:?}", r.stdout))?;
    let mut meta_lines = meta.lines();
    let status = meta_lines
        .next()
        .and_then(|c| c.trim().parse().ok())
        .ok_or_else(|| format!("curl: no status in {meta:?}"))?;
    let serial = meta_lines
        .find_map(|l| l.strip_prefix("Serial Number:"))
        .map(normal_serial)
        .ok_or_else(|| format!("curl: no certificate in {meta:?}"))?;
    Ok(Tls {
        status,
        serial,
        body: body.to_owned(),
    })
}

fn normal_serial(s: &str) -> String {
    let hex: String = s
        .trim()
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let t = hex.trim_start_matches('0');
    if t.is_empty() { "0".into() } else { t.into() }
}

fn tls_productpage(t: &Tls, path: &str, serial: &str) -> Result<(), String> {
    let app: Option<Value> = serde_json::from_str(t.body.trim()).ok();
    let ok = t.status == 200
        && t.serial == serial
        && app
            .as_ref()
            .is_some_and(|a| a["service"] == "productpage" && a["path"].as_str() == Some(path));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "wanted 200 from productpage for {path} with certificate serial {serial}, got {} \
             serial {} {}",
            t.status,
            t.serial,
            t.body.chars().take(300).collect::<String>()
        ))
    }
}

// ---------------------------------------------------------------------------------------
// Certificates, made with openssl in a folder removed on drop.

struct Pki {
    dir: PathBuf,
}

struct CertFiles {
    crt: PathBuf,
    key: PathBuf,
    serial: String,
}

fn openssl(args: &[&str], dir: &Path) {
    let mut cmd = Command::new("openssl");
    cmd.args(args).current_dir(dir);
    let r = run_with_timeout(cmd, None, Duration::from_secs(30));
    assert!(
        r.ok,
        "openssl {} failed ({}): {}{}",
        args.join(" "),
        r.status,
        r.stdout,
        r.stderr
    );
}

impl Pki {
    fn new() -> Pki {
        let dir = std::env::temp_dir().join(unique_name("mesh-gateway-pki"));
        std::fs::create_dir_all(&dir).unwrap();
        Pki { dir }
    }

    /// A self-signed CA (ECDSA P-256), `NAME.crt` and `NAME.key`.
    fn ca(&self, name: &str) -> CertFiles {
        let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &crt,
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            &self.dir,
        );
        CertFiles {
            crt: self.dir.join(crt),
            key: self.dir.join(key),
            serial: String::new(),
        }
    }

    /// A server certificate for [`HOST`] signed by `ca`, with a fresh key and `serial`.
    fn server(&self, name: &str, ca: &CertFiles, serial: u64) -> CertFiles {
        self.leaf(
            name,
            ca,
            serial,
            HOST,
            &format!("subjectAltName=DNS:{HOST}\nextendedKeyUsage=serverAuth\n"),
        )
    }

    /// A client certificate (`CN=cn`, URI SAN `uri`) signed by `ca`.
    fn client(&self, name: &str, ca: &CertFiles, serial: u64, cn: &str, uri: &str) -> CertFiles {
        self.leaf(
            name,
            ca,
            serial,
            cn,
            &format!("subjectAltName=URI:{uri}\nextendedKeyUsage=clientAuth\n"),
        )
    }

    /// The SHA-256 of `cert`'s DER, lower-case hex (what `Hash=` in
    /// x-forwarded-client-cert carries).
    fn sha256(&self, cert: &CertFiles) -> String {
        let mut cmd = Command::new("openssl");
        cmd.args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(&cert.crt);
        let r = run_with_timeout(cmd, None, Duration::from_secs(30));
        assert!(r.ok, "openssl x509 -fingerprint: {}{}", r.stdout, r.stderr);
        let (_, hex) = r.stdout.trim().split_once('=').expect("a fingerprint line");
        hex.chars()
            .filter(char::is_ascii_hexdigit)
            .map(|c| c.to_ascii_lowercase())
            .collect()
    }

    /// A leaf certificate `CN=cn` signed by `ca`, a fresh P-256 key, `serial`, and the
    /// extensions `sans_and_eku` (subjectAltName and extendedKeyUsage lines).
    fn leaf(
        &self,
        name: &str,
        ca: &CertFiles,
        serial: u64,
        cn: &str,
        sans_and_eku: &str,
    ) -> CertFiles {
        let (crt, key, csr, ext) = (
            format!("{name}.crt"),
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.ext"),
        );
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "{sans_and_eku}basicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature\n"
            ),
        )
        .unwrap();
        openssl(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={cn}"),
            ],
            &self.dir,
        );
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                ca.crt.to_str().unwrap(),
                "-CAkey",
                ca.key.to_str().unwrap(),
                "-set_serial",
                &format!("0x{serial:x}"),
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
            &self.dir,
        );
        CertFiles {
            crt: self.dir.join(crt),
            key: self.dir.join(key),
            serial: normal_serial(&format!("{serial:x}")),
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The kubernetes.io/tls Secret [`CREDENTIAL`] in the gateway's namespace, created or
/// replaced (`kubectl apply`) with `cert`.
fn put_credential(node: &KubeNode, cert: &CertFiles) {
    let yaml = node.kubectl_ok(&[
        "-n",
        GW_NS,
        "create",
        "secret",
        "tls",
        CREDENTIAL,
        &format!("--cert={}", cert.crt.display()),
        &format!("--key={}", cert.key.display()),
        "--dry-run=client",
        "-o",
        "yaml",
    ]);
    node.apply(&["-n", GW_NS], &yaml);
}

// ---------------------------------------------------------------------------------------
// The gateway install.

/// deploy/overlays/gateway on the node; its namespace is deleted on drop (also when the
/// test fails).
struct Gateway {
    node: &'static KubeNode,
    /// From the start of `kubectl apply -k` to 2 ready pods.
    ready_after: Duration,
    node_ip: String,
    cluster_ip: String,
    http_node_port: u16,
    https_node_port: u16,
    tcp_node_port: u16,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let r = self.node.kubectl(&[
            "delete",
            "namespace",
            GW_NS,
            "--wait=false",
            "--ignore-not-found",
        ]);
        if !r.ok {
            eprintln!("cleanup: deleting namespace {GW_NS}: {}", r.stderr);
        }
    }
}

impl Gateway {
    fn install(node: &'static KubeNode) -> Gateway {
        // A previous run's namespace may still be going away (its pods' grace period).
        eventually(
            &format!("namespace {GW_NS} from an earlier run gone"),
            Duration::from_secs(180),
            || {
                let r =
                    node.kubectl(&["get", "namespace", GW_NS, "-o", "jsonpath={.status.phase}"]);
                if r.ok && r.stdout.trim() == "Terminating" {
                    Err("still Terminating".into())
                } else {
                    Ok(())
                }
            },
        );
        let started = Instant::now();
        let mut cmd = node.kubectl_cmd(&["apply", "-k"]);
        cmd.arg(repo_file(GW_DIR));
        let apply = run_with_timeout(cmd, None, Duration::from_secs(90));
        // Whatever happens next, the namespace goes at the end.
        let mut gw = Gateway {
            node,
            ready_after: Duration::ZERO,
            node_ip: String::new(),
            cluster_ip: String::new(),
            http_node_port: 0,
            https_node_port: 0,
            tcp_node_port: 0,
        };
        for obj in [
            "namespace/istio-ingress",
            "serviceaccount/istio-ingressgateway",
            "service/istio-ingressgateway",
            "deployment.apps/istio-ingressgateway",
        ] {
            assert!(
                apply.stdout.contains(obj),
                "kubectl apply -k {GW_DIR} did not apply {obj}:\n{}{}",
                apply.stdout,
                apply.stderr
            );
        }
        if node.server_minor() < 21 {
            // As for deploy/: v1.20 serves policy/v1beta1 only; the PDB, and only it, fails.
            for e in apply.stderr.lines().filter(|l| !l.trim().is_empty()) {
                assert!(
                    e.contains("PodDisruptionBudget") && e.contains("policy/v1"),
                    "kubectl apply -k {GW_DIR} failed on more than the policy/v1 PDB: {e}"
                );
            }
            let readme = std::fs::read_to_string(repo_file("deploy/README.md")).unwrap();
            assert!(
                readme.contains(GW_PDB_WORKAROUND),
                "deploy/README.md does not give the gateway's PDB line `{GW_PDB_WORKAROUND}`"
            );
            let mut sh = Command::new("sh");
            let bin_dir = node.kubectl.parent().expect("kubectl has a folder");
            sh.arg("-c")
                .arg(GW_PDB_WORKAROUND)
                .current_dir(repo_root())
                .env(
                    "PATH",
                    format!(
                        "{}:{}",
                        bin_dir.display(),
                        std::env::var("PATH").unwrap_or_default()
                    ),
                )
                .env("KUBECONFIG", &node.kubeconfig);
            let r = run_with_timeout(sh, None, Duration::from_secs(90));
            assert!(
                r.ok && r
                    .stdout
                    .contains("poddisruptionbudget.policy/istio-ingressgateway"),
                "`{GW_PDB_WORKAROUND}`: {} {}{}",
                r.status,
                r.stdout,
                r.stderr
            );
        } else {
            assert!(
                apply.ok,
                "kubectl apply -k {GW_DIR} failed: {}{}",
                apply.stdout, apply.stderr
            );
        }
        let min = node.kubectl_ok(&[
            "-n",
            GW_NS,
            "get",
            "pdb",
            GW_NAME,
            "-o",
            "jsonpath={.spec.minAvailable}",
        ]);
        assert_eq!(min.trim(), "1", "PDB {GW_NAME}: minAvailable {min}");

        eventually(&format!("2 ready {GW_NAME} replicas"), READY, || {
            let r = node.kubectl(&[
                "-n",
                GW_NS,
                "get",
                "deployment",
                GW_NAME,
                "-o",
                "jsonpath={.status.readyReplicas}/{.status.replicas}",
            ]);
            if r.stdout.trim() == "2/2" {
                Ok(())
            } else {
                Err(format!(
                    "{} {}\n{}",
                    r.stdout,
                    r.stderr,
                    node.diagnose(GW_NS)
                ))
            }
        });
        gw.ready_after = started.elapsed();

        let svc = node.kubectl_ok(&[
            "-n", GW_NS, "get", "service", GW_NAME, "-o",
            r#"jsonpath={.spec.type}|{.spec.clusterIP}|{range .spec.ports[*]}{.name}:{.port}:{.targetPort}:{.nodePort},{end}"#,
        ]);
        let f: Vec<&str> = svc.trim().split('|').collect();
        assert_eq!(f.len(), 3, "Service {GW_NAME}: {svc}");
        assert_eq!(f[0], "LoadBalancer", "Service {GW_NAME}: {svc}");
        gw.cluster_ip = f[1].to_owned();
        let port = |name: &str, port: &str, target: &str| -> u16 {
            let p = f[2]
                .split(',')
                .find(|p| p.starts_with(&format!("{name}:")))
                .unwrap_or_else(|| panic!("Service {GW_NAME} has no port {name}: {svc}"));
            let parts: Vec<&str> = p.split(':').collect();
            assert_eq!(
                (parts[1], parts[2]),
                (port, target),
                "Service {GW_NAME} port {name}: {svc}"
            );
            parts[3]
                .parse()
                .unwrap_or_else(|_| panic!("Service {GW_NAME} port {name}: no nodePort: {svc}"))
        };
        port("status-port", "15021", "15021");
        gw.http_node_port = port("http2", "80", &GW_HTTP_PORT.to_string());
        gw.https_node_port = port("https", "443", &GW_HTTPS_PORT.to_string());
        gw.tcp_node_port = port("tcp", "31400", "31400");
        gw.node_ip = node
            .kubectl_ok(&[
                "get",
                "nodes",
                "-o",
                r#"jsonpath={.items[0].status.addresses[?(@.type=="InternalIP")].address}"#,
            ])
            .trim()
            .to_owned();
        assert!(!gw.node_ip.is_empty(), "the node has no InternalIP");
        gw
    }

    /// The gateway's pods, each checked to be what the injector makes of the chart's pod.
    fn pods(&self) -> Vec<PodInfo> {
        let pods = self
            .node
            .wait_pods_ready(GW_NS, Some(GW_SELECTOR), 2, READY);
        let proxy_image = image("MESH_PROXY_IMAGE");
        for p in &pods {
            assert_eq!(p.ready_column(), "1/1", "{}", p.summary());
            assert_eq!(p.containers, ["istio-proxy"], "{}", p.summary());
            assert!(
                p.init_containers.is_empty(),
                "a gateway has no istio-init: {}",
                p.summary()
            );
            assert!(
                !p.injection_status.is_empty(),
                "not injected: {}",
                p.summary()
            );
            let spec = self.node.kubectl_ok(&[
                "-n", GW_NS, "get", "pod", &p.name, "-o",
                "jsonpath={.spec.containers[0].image}|{.spec.containers[0].args}|{.spec.containers[0].readinessProbe.httpGet.port}{.spec.containers[0].readinessProbe.httpGet.path}",
            ]);
            let f: Vec<&str> = spec.split('|').collect();
            assert_eq!(f.len(), 3, "{}: {spec}", p.name);
            assert_eq!(f[0], proxy_image, "{}: image: auto not completed", p.name);
            assert!(
                f[1].contains(r#""--role","gateway""#),
                "{}: the proxy is not in gateway mode: {}",
                p.name,
                f[1]
            );
            assert_eq!(f[2], "15021/healthz/ready", "{}: readiness probe", p.name);
        }
        pods
    }

    fn tcp_addr(&self) -> SocketAddr {
        format!("{}:{}", self.node_ip, self.tcp_node_port)
            .parse()
            .unwrap()
    }

    fn http_addr(&self) -> SocketAddr {
        format!("{}:{}", self.node_ip, self.http_node_port)
            .parse()
            .unwrap()
    }
}

fn pod_addr(p: &PodInfo, port: u16) -> SocketAddr {
    format!("{}:{port}", p.ip).parse().unwrap()
}

/// Polls `probe` every 250 ms until it holds; after `timeout`, panics with `what`, the last
/// error and what gateway pod `pod` holds (its config for key `gateway`, its listening
/// sockets, its last log lines), so that a failure says which side is missing.
fn until_served(
    node: &KubeNode,
    pod: &PodInfo,
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<(), String>,
) -> Duration {
    let t0 = Instant::now();
    loop {
        match probe() {
            Ok(()) => return t0.elapsed(),
            Err(e) if t0.elapsed() >= timeout => panic!(
                "{what}: not within {timeout:?}; last: {e}\n{}",
                gateway_diagnosis(node, pod)
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// The gateway pod's view, from its network namespace: `/config_dump`'s `gateway` resource
/// (what mesh-control sent for `Key::Gateway`), `ss -ltn`, the last log lines.
fn gateway_diagnosis(node: &KubeNode, pod: &PodInfo) -> String {
    let p = node.pod(GW_NS, &pod.name);
    let pid = node.container_pid(p.container_id("istio-proxy"));
    let dump = in_netns(
        pid,
        "curl",
        &[
            "-q",
            "-sS",
            "--max-time",
            "5",
            "http://127.0.0.1:15000/config_dump",
        ],
    );
    let config = match serde_json::from_str::<Value>(&dump.stdout) {
        Ok(v) => {
            let gateway = v["resources"]
                .as_array()
                .and_then(|rs| rs.iter().find(|r| r["key"] == "gateway"));
            match gateway {
                Some(r) => serde_json::to_string_pretty(r).unwrap_or_default(),
                None => format!(
                    "no resource `gateway` (connected: {}, keys: {:?})",
                    v["connected"],
                    v["resources"]
                        .as_array()
                        .map(|rs| rs.iter().map(|r| r["key"].to_string()).collect::<Vec<_>>())
                ),
            }
        }
        Err(e) => format!("{e}: {}{}", dump.stdout, dump.stderr),
    };
    let config: String = config.chars().take(4000).collect();
    let ss = in_netns(pid, "ss", &["-ltn"]);
    let logs = node.kubectl(&["-n", GW_NS, "logs", &pod.name, "--tail=20"]);
    format!(
        "--- gateway pod {}: /config_dump, resource `gateway`\n{config}\n--- ss -ltn\n{}{}\n\
         --- kubectl logs --tail=20\n{}{}",
        pod.name, ss.stdout, ss.stderr, logs.stdout, logs.stderr
    )
}

/// `istio_requests_total` of each gateway pod.
fn metrics_of(pods: &[PodInfo]) -> Vec<String> {
    pods.iter().map(|p| proxy_metrics(&p.ip)).collect()
}

/// The growth of the sum over both pods of the series matching `labels`.
fn grew(before: &[String], after: &[String], labels: &[&str]) -> (u64, Vec<u64>) {
    grew_named(before, after, REQUESTS, labels)
}

/// How much metric `name` with `labels` grew, summed over the pods, and per pod.
fn grew_named(before: &[String], after: &[String], name: &str, labels: &[&str]) -> (u64, Vec<u64>) {
    let per: Vec<u64> = before
        .iter()
        .zip(after)
        .map(|(b, a)| metric_sum(a, name, labels) - metric_sum(b, name, labels))
        .collect();
    (per.iter().sum(), per)
}

const SOURCE: &str = r#"reporter="source""#;
const GW_WORKLOAD: &str = r#"source_workload="istio-ingressgateway""#;
const GW_WORKLOAD_NS: &str = r#"source_workload_namespace="istio-ingress""#;
/// The gateway's 404s for what no virtual host or route takes.
const GW_NOT_ROUTED: [&str; 4] = [
    SOURCE,
    GW_WORKLOAD,
    r#"response_code="404""#,
    r#"response_flags="NR""#,
];

#[test]
fn ingress_gateway_routes_terminates_tls_rotates_redirects_and_counts() {
    let node = KubeNode::get();
    require_tool("curl", "the HTTPS client");
    require_tool("openssl", "the test's CA and certificates");
    let mesh = install_mesh();
    report(&format!(
        "gateway test: mesh installed (or found) in {:.1} s",
        mesh.ready_after.as_secs_f64()
    ));

    // The gateway, as a user installs it.
    let gw = Gateway::install(node);
    let gw_pods = gw.pods();
    report(&format!(
        "kubectl apply -k {GW_DIR} -> 2 gateway pods 1/1 Ready in {:.1} s (Service {GW_NAME}: \
         LoadBalancer, ClusterIP {}, nodePorts http2 {} https {}, node {})",
        gw.ready_after.as_secs_f64(),
        gw.cluster_ip,
        gw.http_node_port,
        gw.https_node_port,
        gw.node_ip
    ));

    // The app, in the mesh.
    let app = TestNamespace::new(node, "gw", &["istio-injection=enabled"]);
    let t0 = Instant::now();
    node.apply(&["-n", &app.name], &example("productpage-local.yaml"));
    let app_pods = node.wait_pods_ready(&app.name, None, 1, READY);
    for p in &app_pods {
        assert_eq!(p.ready_column(), "2/2", "{}", p.summary());
    }
    report(&format!(
        "productpage: kubectl apply -> 1 pod 2/2 Ready in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));

    let crd = node.kubectl(&["get", "crd", "gateways.networking.istio.io"]);
    assert!(
        crd.ok,
        "the mesh's install has no Gateway CRD (gateways.networking.istio.io: deploy/crds/), so \
         Istio's Gateway cannot be applied: {}",
        crd.stderr.trim()
    );

    // ---- bookinfo-gateway: every host on port 80, bookinfo's paths.
    let t0 = Instant::now();
    node.apply(&["-n", &app.name], &example("bookinfo-gateway.yaml"));
    let any_host = gw.http_addr().to_string();
    for p in &gw_pods {
        let addr = pod_addr(p, GW_HTTP_PORT);
        until_served(
            node,
            p,
            &format!(
                "gateway pod {} ({addr}) routing GET /productpage to productpage after \
                 bookinfo-gateway.yaml was applied",
                p.name
            ),
            CONFIG,
            || expect_productpage(&get(addr, &any_host, "/productpage")?, "/productpage"),
        );
    }
    report(&format!(
        "bookinfo-gateway applied -> /productpage 200 from both gateway pods in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));

    // Through the Service's nodePort, from outside the mesh: a measured batch.
    let before = metrics_of(&gw_pods);
    let app_before = metrics_of(&app_pods);
    let t0 = Instant::now();
    let mut routed = 0u64;
    let mut not_found = 0u64;
    let mut send = |path: &str, want: u16| {
        let r = get(gw.http_addr(), &any_host, path).unwrap_or_else(|e| panic!("{e}"));
        if want == 200 {
            expect_productpage(&r, path).unwrap_or_else(|e| panic!("via the nodePort: {e}"));
            routed += 1;
        } else {
            assert_eq!(r.status, want, "GET {path} via the nodePort: {}", r.short());
            not_found += 1;
        }
    };
    for _ in 0..20 {
        send("/productpage", 200);
    }
    for i in 0..20 {
        send(&format!("/static/x{i}"), 200);
    }
    for path in [
        "/login",
        "/logout",
        "/api/v1/products",
        "/api/v1/products/0/reviews",
    ] {
        send(path, 200);
    }
    for i in 0..10 {
        send(&format!("/other/{i}"), 404);
    }
    // `exact`, not a prefix.
    for _ in 0..5 {
        send("/productpage/more", 404);
    }
    let took = t0.elapsed();
    let after = metrics_of(&gw_pods);
    let sent = routed + not_found;
    let (total, per_pod) = grew(&before, &after, &[SOURCE, GW_WORKLOAD, GW_WORKLOAD_NS]);
    let dest_ns = format!(r#"destination_service_namespace="{}""#, app.name);
    let (ok, _) = grew(
        &before,
        &after,
        &[
            SOURCE,
            GW_WORKLOAD,
            r#"destination_service_name="productpage""#,
            &dest_ns,
            r#"response_code="200""#,
        ],
    );
    let (nr, _) = grew(&before, &after, &GW_NOT_ROUTED);
    report(&format!(
        "bookinfo via nodePort {}: {sent} requests in {:.2} s ({routed} routed, {not_found} 404); \
         gateway istio_requests_total grew {total} (per pod {per_pod:?}), productpage 200: {ok}, \
         404 NR: {nr}",
        gw.http_node_port,
        took.as_secs_f64()
    ));
    assert_eq!(
        total,
        sent,
        "the gateway counted {total} requests, {sent} were sent\n{}",
        after.join("\n")
    );
    assert_eq!(ok, routed, "productpage 200s counted\n{}", after.join("\n"));
    assert_eq!(nr, not_found, "404 NR counted\n{}", after.join("\n"));
    assert!(
        per_pod.iter().all(|&n| n > 0),
        "the Service sent every request to one gateway pod: {per_pod:?}"
    );
    // The gateway reached productpage's sidecar over mTLS, as itself: the app's side
    // counted every routed request from the gateway's SPIFFE id.
    let app_after = metrics_of(&app_pods);
    let gw_id = format!(r#"source_principal="spiffe://cluster.local/ns/{GW_NS}/sa/{GW_NAME}""#);
    let (mtls, _) = grew(
        &app_before,
        &app_after,
        &[
            r#"reporter="destination""#,
            GW_WORKLOAD,
            &gw_id,
            r#"connection_security_policy="mutual_tls""#,
        ],
    );
    report(&format!(
        "productpage's sidecar: {mtls} of {routed} routed requests from the gateway over mTLS ({gw_id})"
    ));
    assert_eq!(
        mtls,
        routed,
        "productpage's sidecar counted {mtls} mTLS requests from the gateway, {routed} were routed\n{}",
        app_after.join("\n")
    );
    // And through the ClusterIP, port 80.
    let cluster_http: SocketAddr = format!("{}:80", gw.cluster_ip).parse().unwrap();
    expect_productpage(
        &get(cluster_http, &gw.cluster_ip, "/productpage").unwrap_or_else(|e| panic!("{e}")),
        "/productpage",
    )
    .unwrap_or_else(|e| panic!("via the ClusterIP: {e}"));

    // ---- HTTPS for bookstore.example.com, its certificate in a Secret; httpsRedirect on 80.
    let pki = Pki::new();
    let ca = pki.ca("test-ca");
    let other_ca = pki.ca("other-ca");
    let base = 0x5a00_0000_u64 | (u64::from(std::process::id()) & 0xff_ffff);
    let cert1 = pki.server("server1", &ca, base);
    put_credential(node, &cert1);
    let _secret = DeleteOnDrop::new(node, &["-n", GW_NS, "secret", CREDENTIAL]);
    let t0 = Instant::now();
    node.apply(&["-n", &app.name], &example("bookstore-https-gateway.yaml"));
    for p in &gw_pods {
        until_served(
            node,
            p,
            &format!(
                "gateway pod {} serving https://{HOST}/productpage with the Secret's certificate",
                p.name
            ),
            CONFIG,
            || {
                let t = https(&p.ip, GW_HTTPS_PORT, "/productpage", &ca.crt, None)?;
                tls_productpage(&t, "/productpage", &cert1.serial)
            },
        );
    }
    report(&format!(
        "bookstore-https-gateway applied -> HTTPS 200 (certificate verified, SNI {HOST}) from \
         both gateway pods in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    let t = https(
        &gw.node_ip,
        gw.https_node_port,
        "/productpage",
        &ca.crt,
        None,
    )
    .unwrap_or_else(|e| panic!("HTTPS via the nodePort: {e}"));
    tls_productpage(&t, "/productpage", &cert1.serial)
        .unwrap_or_else(|e| panic!("HTTPS via the nodePort: {e}"));
    let t = https(&gw.cluster_ip, 443, "/static/app.css", &ca.crt, None)
        .unwrap_or_else(|e| panic!("HTTPS via the ClusterIP: {e}"));
    tls_productpage(&t, "/static/app.css", &cert1.serial)
        .unwrap_or_else(|e| panic!("HTTPS via the ClusterIP: {e}"));
    // The client really verifies: against another CA the handshake is refused (curl 60).
    let e = https(
        &gw.node_ip,
        gw.https_node_port,
        "/productpage",
        &other_ca.crt,
        None,
    )
    .map(|t| format!("{} serial {}", t.status, t.serial))
    .expect_err("curl accepted the gateway's certificate against an unrelated CA");
    assert!(e.contains("exit status: 60"), "curl with another CA: {e}");
    // Inside the TLS server for bookstore.example.com, a request for another host: 404 NR.
    let t = https(
        &gw.node_ip,
        gw.https_node_port,
        "/productpage",
        &ca.crt,
        Some(OTHER_HOST),
    )
    .unwrap_or_else(|e| panic!("HTTPS with Host {OTHER_HOST}: {e}"));
    assert_eq!(
        t.status, 404,
        "HTTPS, SNI {HOST}, Host {OTHER_HOST}: {}",
        t.body
    );
    // Port 80, Host bookstore.example.com: the redirect (the exact host beats `*`).
    let r = get(gw.http_addr(), HOST, "/productpage?u=1").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 301, "httpsRedirect: {}", r.short());
    assert_eq!(
        r.header("location"),
        Some(format!("https://{HOST}/productpage?u=1").as_str()),
        "httpsRedirect: {}",
        r.short()
    );
    // Any other host on port 80 still goes to bookinfo's `*`.
    expect_productpage(
        &get(gw.http_addr(), OTHER_HOST, "/productpage").unwrap_or_else(|e| panic!("{e}")),
        "/productpage",
    )
    .unwrap_or_else(|e| panic!("Host {OTHER_HOST} with bookinfo's `*` server: {e}"));

    // ---- The Secret replaced: the new certificate, no restart.
    let restarts = |pods: &[PodInfo]| -> Vec<(String, u32)> {
        pods.iter()
            .map(|p| {
                let p = node.pod(GW_NS, &p.name);
                (p.name.clone(), p.statuses.iter().map(|c| c.restarts).sum())
            })
            .collect()
    };
    let restarts_before = restarts(&gw_pods);
    let cert2 = pki.server("server2", &ca, base + 1);
    let t0 = Instant::now();
    put_credential(node, &cert2);
    let mut served_after = Vec::new();
    for p in &gw_pods {
        until_served(
            node,
            p,
            &format!(
                "gateway pod {} serving the replaced Secret's certificate (serial {})",
                p.name, cert2.serial
            ),
            ROTATION,
            || {
                let t = https(&p.ip, GW_HTTPS_PORT, "/productpage", &ca.crt, None)?;
                tls_productpage(&t, "/productpage", &cert2.serial)
            },
        );
        served_after.push(t0.elapsed());
    }
    report(&format!(
        "Secret {CREDENTIAL} replaced -> new certificate (serial {} -> {}) served by each gateway \
         pod after {:?}",
        cert1.serial, cert2.serial, served_after
    ));
    for _ in 0..6 {
        let t = https(
            &gw.node_ip,
            gw.https_node_port,
            "/productpage",
            &ca.crt,
            None,
        )
        .unwrap_or_else(|e| panic!("HTTPS via the nodePort after the rotation: {e}"));
        tls_productpage(&t, "/productpage", &cert2.serial)
            .unwrap_or_else(|e| panic!("HTTPS via the nodePort after the rotation: {e}"));
    }
    let restarts_after = restarts(&gw_pods);
    assert_eq!(
        restarts_after, restarts_before,
        "the gateway pods were restarted (or replaced) by the certificate rotation"
    );

    // ---- tls.mode MUTUAL (Istio's "mutual TLS ingress gateway" task): the client CA in
    // Secret bookstore-credential-cacert; a client with a certificate from it gets
    // productpage, which sees who called in x-forwarded-client-cert; one without, or with
    // a certificate from another CA, is refused in the handshake.
    let client_ca = pki.ca("client-ca");
    let client_uri = "spiffe://example.com/ns/outside/sa/curl";
    let client = pki.client("client1", &client_ca, base + 2, "curl-client", client_uri);
    let stranger = pki.client("client2", &other_ca, base + 3, "stranger", client_uri);
    let client_hash = pki.sha256(&client);
    let ca_secret = format!("{CREDENTIAL}-cacert");
    let yaml = node.kubectl_ok(&[
        "-n",
        GW_NS,
        "create",
        "secret",
        "generic",
        &ca_secret,
        &format!("--from-file=cacert={}", client_ca.crt.display()),
        "--dry-run=client",
        "-o",
        "yaml",
    ]);
    node.apply(&["-n", GW_NS], &yaml);
    let _ca_secret = DeleteOnDrop::new(node, &["-n", GW_NS, "secret", &ca_secret]);
    let https_yaml = example("bookstore-https-gateway.yaml");
    assert!(https_yaml.contains("mode: SIMPLE"), "{https_yaml}");
    let t0 = Instant::now();
    node.apply(
        &["-n", &app.name],
        &https_yaml.replace("mode: SIMPLE", "mode: MUTUAL"),
    );
    let mut xfcc = String::new();
    for p in &gw_pods {
        until_served(
            node,
            p,
            &format!(
                "gateway pod {} refusing a client without a certificate and serving one with",
                p.name
            ),
            CONFIG,
            || {
                if let Ok(t) = https(&p.ip, GW_HTTPS_PORT, "/productpage", &ca.crt, None) {
                    return Err(format!("no client certificate, yet {}", t.status));
                }
                let t = https_as(
                    &p.ip,
                    GW_HTTPS_PORT,
                    "/productpage",
                    &ca.crt,
                    None,
                    Some(&client),
                )?;
                tls_productpage(&t, "/productpage", &cert2.serial)?;
                let app: Value = serde_json::from_str(t.body.trim()).map_err(|e| e.to_string())?;
                xfcc = app["headers"]["x-forwarded-client-cert"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                Ok(())
            },
        );
        // Two elements: the gateway's (SANITIZE_SET: ours alone, with the certificate),
        // then, appended by productpage's sidecar (APPEND_FORWARD), the mTLS hop's: By
        // productpage's identity, URI the gateway's.
        let (from_gateway, from_sidecar) = xfcc.split_once(",By=").unwrap_or((&xfcc, ""));
        assert!(
            from_gateway.starts_with(&format!(
                "Hash={client_hash};Cert=\"-----BEGIN%20CERTIFICATE-----"
            )) && from_gateway.ends_with(&format!(";Subject=\"CN=curl-client\";URI={client_uri}"))
                && from_sidecar.starts_with(&format!(
                    "spiffe://cluster.local/ns/{}/sa/bookstore-productpage;Hash=",
                    app.name
                ))
                && from_sidecar.ends_with(&format!(
                    ";URI=spiffe://cluster.local/ns/{GW_NS}/sa/{GW_NAME}"
                )),
            "x-forwarded-client-cert productpage saw through gateway pod {}: {xfcc:?}",
            p.name
        );
        let e = https_as(
            &p.ip,
            GW_HTTPS_PORT,
            "/productpage",
            &ca.crt,
            None,
            Some(&stranger),
        )
        .map(|t| t.status)
        .expect_err("the gateway took a client certificate from another CA");
        assert!(!e.is_empty());
    }
    report(&format!(
        "bookstore-https-gateway as MUTUAL -> no client certificate and another CA's refused, \
         ours 200 with x-forwarded-client-cert Hash/Cert/Subject/URI, from both gateway pods \
         in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    // Back to SIMPLE for what follows.
    node.apply(&["-n", &app.name], &https_yaml);
    for p in &gw_pods {
        until_served(
            node,
            p,
            &format!("gateway pod {} back to SIMPLE", p.name),
            CONFIG,
            || {
                let t = https(&p.ip, GW_HTTPS_PORT, "/productpage", &ca.crt, None)?;
                tls_productpage(&t, "/productpage", &cert2.serial)
            },
        );
    }

    // ---- bookinfo-gateway deleted: port 80 only has bookstore.example.com, any other host
    // is 404 NR.
    let t0 = Instant::now();
    node.kubectl_ok(&["-n", &app.name, "delete", "gateway", "bookinfo-gateway"]);
    for p in &gw_pods {
        let addr = pod_addr(p, GW_HTTP_PORT);
        until_served(
            node,
            p,
            &format!(
                "gateway pod {} answering 404 for Host {OTHER_HOST} once bookinfo-gateway is gone",
                p.name
            ),
            CONFIG,
            || {
                let r = get(addr, OTHER_HOST, "/productpage")?;
                if r.status == 404 {
                    Ok(())
                } else {
                    Err(r.short())
                }
            },
        );
    }
    report(&format!(
        "bookinfo-gateway deleted -> Host {OTHER_HOST} 404 on both pods in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    let before = metrics_of(&gw_pods);
    let mut sent = 0u64;
    for i in 0..10 {
        let r = get(gw.http_addr(), OTHER_HOST, &format!("/productpage?n={i}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status, 404, "Host {OTHER_HOST}: {}", r.short());
        sent += 1;
    }
    let r = get(gw.http_addr(), HOST, "/login").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.status,
        301,
        "httpsRedirect after the deletion: {}",
        r.short()
    );
    sent += 1;
    let after = metrics_of(&gw_pods);
    let (total, _) = grew(&before, &after, &[SOURCE, GW_WORKLOAD]);
    let (nr, _) = grew(&before, &after, &GW_NOT_ROUTED);
    report(&format!(
        "unmatched host: 10 requests -> 404, gateway counted {nr} 404 NR, {total} in all (of {sent})"
    ));
    assert_eq!(nr, 10, "404 NR for Host {OTHER_HOST}\n{}", after.join("\n"));
    assert_eq!(total, sent, "requests counted\n{}", after.join("\n"));

    // ---- A TCP server (Istio's samples/tcp-echo shape): every connection to 31400, bytes
    // untouched, to productpage; the gateway counts them as TCP connections.
    let t0 = Instant::now();
    node.apply(&["-n", &app.name], &example("productpage-tcp-gateway.yaml"));
    for p in &gw_pods {
        let addr = pod_addr(p, 31400);
        until_served(
            node,
            p,
            &format!(
                "gateway pod {} ({addr}) passing TCP to productpage after productpage-tcp-gateway.yaml was applied",
                p.name
            ),
            CONFIG,
            || expect_productpage(&get(addr, "tcp.example", "/productpage")?, "/productpage"),
        );
    }
    report(&format!(
        "productpage-tcp-gateway applied -> TCP 31400 to productpage from both pods in {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    let tcp_opened = [
        SOURCE,
        GW_WORKLOAD,
        "destination_service_name=\"productpage\"",
    ];
    let before = metrics_of(&gw_pods);
    for i in 0..20 {
        let path = format!("/productpage?tcp={i}");
        let r = get(gw.tcp_addr(), "tcp.example", &path).unwrap_or_else(|e| panic!("{e}"));
        expect_productpage(&r, &path).unwrap_or_else(|e| panic!("TCP via the nodePort: {e}"));
    }
    let after = metrics_of(&gw_pods);
    let (opened, per_pod) = grew_named(
        &before,
        &after,
        "istio_tcp_connections_opened_total",
        &tcp_opened,
    );
    report(&format!(
        "TCP via nodePort {}: 20 connections to productpage, gateway counted {opened} (per pod {per_pod:?})",
        gw.tcp_node_port
    ));
    assert_eq!(opened, 20, "TCP connections counted\n{}", after.join("\n"));

    // What the gateway proxies hold, after all of it.
    let rss: Vec<u64> = gw_pods
        .iter()
        .map(|p| {
            let p = node.pod(GW_NS, &p.name);
            rss_kib(node.container_pid(p.container_id("istio-proxy")))
        })
        .collect();
    report(&format!("gateway proxies' VmRSS: {rss:?} KiB"));
}

// ---------------------------------------------------------------------------------------
// The client's own machinery, without the node: so that when the gateway test fails, it
// is the gateway's answer, not the way this test reads it.

#[test]
fn the_client_reads_chunked_and_plain_responses() {
    let r = parse_response(
        b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://a.example/x?y=1\r\n\
          content-length: 0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("https://a.example/x?y=1"));
    let r = parse_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\n{\"ser\r\n1b;ext=1\r\nvice\":\"productpage\",\"path\":\r\n9\r\n\"/login\"}\r\n0\r\n\r\n",
    )
    .unwrap();
    assert!(expect_productpage(&r, "/login").is_ok(), "{r:?}");
    assert!(expect_productpage(&r, "/logout").is_err());
    assert_eq!(normal_serial("00:5A:12:ab"), "5a12ab");
    assert_eq!(normal_serial("5a0012ab"), "5a0012ab");
}

/// `https()` against `openssl s_server` on loopback with the test's own certificates: the
/// served serial is read, a replaced certificate is told apart, and another CA fails
/// verification (curl exit 60).
#[test]
fn the_https_client_verifies_against_the_test_ca_and_reads_the_serial() {
    require_tool("curl", "the HTTPS client");
    require_tool("openssl", "the test's CA and certificates");
    let pki = Pki::new();
    let ca = pki.ca("test-ca");
    let other_ca = pki.ca("other-ca");
    let base = 0x5a00_0000_u64 | 0x12_3456;
    for (i, serial) in [base, base + 1].into_iter().enumerate() {
        let cert = pki.server(&format!("server{i}"), &ca, serial);
        assert_eq!(cert.serial, format!("{serial:x}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&cert.crt)
            .arg("-key")
            .arg(&cert.key)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        eventually(
            "openssl s_server listening",
            Duration::from_secs(10),
            || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        );
        let got = https("127.0.0.1", port, "/", &ca.crt, None);
        let refused = https("127.0.0.1", port, "/", &other_ca.crt, None);
        let _ = server.kill();
        let _ = server.wait();
        let t = got.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((t.status, t.serial.as_str()), (200, cert.serial.as_str()));
        let e = refused
            .map(|t| t.status)
            .expect_err("another CA was accepted");
        assert!(e.contains("exit status: 60"), "{e}");
    }
}
