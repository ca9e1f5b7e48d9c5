//! Shared pieces of the admission-server tests: a test PKI made with rcgen, a real TLS
//! client that verifies the server against that CA, an RFC 6902 applier written here
//! (independent of the json-patch crate the server uses), and AdmissionReview builders.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// PKI

/// A CA and a serving certificate for `localhost` / `127.0.0.1` signed by it.
pub struct Pki {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Pki {
    pub fn new(ca_name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "mesh-webhook test");
        let cert = params.signed_by(&key, &issuer).unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Write `tls.crt`, `tls.key` (and `ca.crt`) into `dir`, replacing what is there.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let cert = dir.join("tls.crt");
        let key = dir.join("tls.key");
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        std::fs::write(dir.join("ca.crt"), &self.ca_pem).unwrap();
        (cert, key)
    }
}

// ---------------------------------------------------------------------------------------
// TLS client

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config that trusts only `ca`. Session resumption is off, so every request is
/// a full handshake that verifies the certificate served at that moment.
pub fn client_config(ca: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request over a fresh TLS connection that verifies the server as `localhost`.
pub async fn request(
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Result<Answer, String> {
    request_as(addr, tls, "localhost", method, path, content_type, body).await
}

/// `POST /inject` with a JSON body, as the API server sends it; panics if the request
/// cannot be made (the answer's status is for the caller to check).
pub async fn post_inject(
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    body: Vec<u8>,
) -> Answer {
    request(addr, tls, "POST", "/inject", Some("application/json"), body)
        .await
        .unwrap_or_else(|e| panic!("POST /inject: {e}"))
}

/// One request over a fresh TLS connection that verifies the server as `server_name`.
#[allow(clippy::too_many_arguments)]
pub async fn request_as(
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    server_name: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Result<Answer, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(tls);
    let stream = connector
        .connect(ServerName::try_from(server_name.to_string()).unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", server_name);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let req = req.body(Full::new(Bytes::from(body))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), send.send_request(req))
        .await
        .map_err(|_| "request timed out".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes()
        .to_vec();
    Ok(Answer {
        status,
        content_type,
        body,
    })
}

/// The peer certificate the server presents now (verified against `ca`).
pub async fn served_cert(
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Vec<u8>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (_, conn) = stream.get_ref();
    Ok(conn.peer_certificates().ok_or("no peer certificate")?[0].to_vec())
}

// ---------------------------------------------------------------------------------------
// AdmissionReview

pub fn review(
    uid: &str,
    operation: &str,
    kind: (&str, &str, &str),
    namespace: &str,
    object: Value,
) -> Value {
    let (group, version, k) = kind;
    let resource = match k {
        "Pod" => "pods",
        "Deployment" => "deployments",
        _ => "things",
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": version, "kind": k},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": k},
            "requestResource": {"group": group, "version": version, "resource": resource},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

pub fn pod_review(uid: &str, namespace: &str, pod: Value) -> Value {
    review(uid, "CREATE", ("", "v1", "Pod"), namespace, pod)
}

/// The response part, checked for the invariants every answer keeps.
pub fn response_of(answer: &Value, uid: &str) -> Value {
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{answer}");
    assert_eq!(answer["kind"], "AdmissionReview", "{answer}");
    let r = answer["response"].clone();
    assert_eq!(r["uid"], uid, "uid must be echoed: {answer}");
    r
}

/// The decoded JSONPatch of an allowed response, `None` when there is none.
pub fn patch_of(response: &Value) -> Option<Value> {
    assert_eq!(response["allowed"], true, "{response}");
    match response.get("patch") {
        None => {
            assert!(
                response.get("patchType").is_none(),
                "patchType without patch: {response}"
            );
            None
        }
        Some(p) => {
            assert_eq!(response["patchType"], "JSONPatch", "{response}");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(p.as_str().expect("patch is a string"))
                .expect("patch is base64");
            Some(serde_json::from_slice(&bytes).expect("patch is JSON"))
        }
    }
}

// ---------------------------------------------------------------------------------------
// An independent RFC 6902 applier (no json-patch crate): add, remove, replace, move, copy, test.

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn tokens(pointer: &str) -> Result<Vec<String>, String> {
    if pointer.is_empty() {
        return Ok(vec![]);
    }
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| format!("pointer {pointer:?} does not start with /"))?;
    Ok(rest.split('/').map(unescape).collect())
}

fn array_index(token: &str, len: usize, allow_end: bool) -> Result<usize, String> {
    if token == "-" && allow_end {
        return Ok(len);
    }
    if token.is_empty()
        || (token.len() > 1 && token.starts_with('0'))
        || !token.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("bad array index {token:?}"));
    }
    let i: usize = token
        .parse()
        .map_err(|_| format!("bad array index {token:?}"))?;
    let max = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    if (allow_end && i > len) || (!allow_end && (len == 0 || i > max)) {
        return Err(format!("array index {i} out of bounds (len {len})"));
    }
    Ok(i)
}

fn parent_mut<'a>(doc: &'a mut Value, toks: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m
                .get_mut(t)
                .ok_or_else(|| format!("missing member {t:?}"))?,
            Value::Array(a) => {
                let i = array_index(t, a.len(), false)?;
                &mut a[i]
            }
            _ => return Err(format!("cannot descend into a scalar at {t:?}")),
        };
    }
    Ok(cur)
}

fn get(doc: &Value, pointer: &str) -> Result<Value, String> {
    let mut cur = doc;
    for t in tokens(pointer)? {
        cur = match cur {
            Value::Object(m) => m.get(&t).ok_or_else(|| format!("missing member {t:?}"))?,
            Value::Array(a) => &a[array_index(&t, a.len(), false)?],
            _ => return Err(format!("cannot descend into a scalar at {t:?}")),
        };
    }
    Ok(cur.clone())
}

fn add(doc: &mut Value, pointer: &str, value: Value) -> Result<(), String> {
    let toks = tokens(pointer)?;
    let Some((last, parents)) = toks.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parents)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            let i = array_index(last, a.len(), true)?;
            a.insert(i, value);
        }
        _ => return Err(format!("add {pointer}: parent is a scalar")),
    }
    Ok(())
}

fn remove(doc: &mut Value, pointer: &str) -> Result<Value, String> {
    let toks = tokens(pointer)?;
    let (last, parents) = toks.split_last().ok_or("cannot remove the root")?;
    match parent_mut(doc, parents)? {
        Value::Object(m) => m
            .remove(last)
            .ok_or_else(|| format!("remove {pointer}: no such member")),
        Value::Array(a) => {
            let i = array_index(last, a.len(), false)?;
            Ok(a.remove(i))
        }
        _ => Err(format!("remove {pointer}: parent is a scalar")),
    }
}

/// Apply an RFC 6902 patch; every operation must succeed (atomic: the input is untouched
/// on error because we work on a copy).
pub fn apply_patch(doc: &Value, patch: &Value) -> Result<Value, String> {
    let mut out = doc.clone();
    let ops = patch.as_array().ok_or("a patch is an array")?;
    for (n, op) in ops.iter().enumerate() {
        let path = op["path"].as_str().ok_or(format!("op {n}: no path"))?;
        let ctx = |e: String| format!("op {n} ({op}): {e}");
        match op["op"].as_str() {
            Some("add") => add(
                &mut out,
                path,
                op.get("value").cloned().ok_or("add without value")?,
            )
            .map_err(ctx)?,
            Some("remove") => {
                remove(&mut out, path).map_err(ctx)?;
            }
            Some("replace") => {
                remove(&mut out, path).map_err(ctx)?;
                add(
                    &mut out,
                    path,
                    op.get("value").cloned().ok_or("replace without value")?,
                )
                .map_err(ctx)?;
            }
            Some("move") => {
                let from = op["from"].as_str().ok_or("move without from")?;
                let v = remove(&mut out, from).map_err(ctx)?;
                add(&mut out, path, v).map_err(ctx)?;
            }
            Some("copy") => {
                let from = op["from"].as_str().ok_or("copy without from")?;
                let v = get(&out, from).map_err(ctx)?;
                add(&mut out, path, v).map_err(ctx)?;
            }
            Some("test") => {
                let v = get(&out, path).map_err(ctx)?;
                if Some(&v) != op.get("value") {
                    return Err(ctx("test failed".into()));
                }
            }
            other => return Err(format!("op {n}: unknown op {other:?}")),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Server in-process

/// The `serve` flags every test server starts with: its certificate and key, a free
/// loopback port, and regular sidecars (no API server version to ask).
pub fn base_serve_flags(cert: &Path, key: &Path) -> Vec<String> {
    [
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--native-sidecars",
        "false",
    ]
    .map(String::from)
    .to_vec()
}

/// [`base_serve_flags`] for an in-process server, checking files often and giving
/// in-flight requests 2 s at shutdown.
pub fn serve_args(cert: &Path, key: &Path) -> mesh_webhook::admission::ServeArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct A {
        #[command(flatten)]
        serve: mesh_webhook::admission::ServeArgs,
    }
    let flags = base_serve_flags(cert, key);
    let a = A::try_parse_from(
        std::iter::once("serve")
            .chain(flags.iter().map(String::as_str))
            .chain(["--reload-interval", "100ms", "--shutdown-grace", "2s"]),
    )
    .unwrap();
    a.serve
}

/// Poll `f` until it returns `Some`, or panic after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `GET /readyz` until it answers 200, or panics after `timeout`.
pub async fn eventually_ready(
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) {
    eventually("readiness", timeout, || {
        let tls = tls.clone();
        async move {
            (request(addr, tls, "GET", "/readyz", None, vec![])
                .await
                .ok()?
                .status
                == 200)
                .then_some(())
        }
    })
    .await;
}

/// Polls `GET /metrics` until its text contains `line`, or panics after 10 s naming `what`.
pub async fn eventually_metric(
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    line: &str,
    what: &str,
) {
    eventually(what, Duration::from_secs(10), || {
        let tls = tls.clone();
        async move {
            let m = request(addr, tls, "GET", "/metrics", None, vec![])
                .await
                .ok()?;
            m.text().contains(line).then_some(())
        }
    })
    .await
}

/// A plain Pod as a ReplicaSet controller creates it (generateName, no namespace).
pub fn app_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "reviews-v1-5d8f7c9b4-",
            "labels": {"app": "reviews", "version": "v1"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "reviews-v1-5d8f7c9b4", "uid": "7a8b", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "containers": [{
                "name": "reviews",
                "image": "example/reviews:1.0",
                "ports": [{"containerPort": 9080, "protocol": "TCP"}],
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "reviews",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "someFutureField": {"kept": true}
        }
    })
}

/// Names of the containers in `pod.spec[field]`.
pub fn names(pod: &Value, field: &str) -> Vec<String> {
    pod["spec"][field]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}
