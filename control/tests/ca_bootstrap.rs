//! Where the CA comes from, against a real API server (kube-local through KUBECONFIG;
//! fails without it): replicas racing in a fresh namespace end with one self-signed root
//! in Secret `istio-ca-secret`; a user's `cacerts` Secret is used instead; a bad one stops
//! start-up with an error naming the Secret and the key. Each test has its own namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use mesh_control::ca::bootstrap::{Source, bootstrap};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use support::{Namespace, kubeconfig};

async fn client() -> kube::Client {
    let _ = kubeconfig();
    kube::Client::try_default()
        .await
        .expect("kube client from KUBECONFIG")
}

fn init_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,mesh_control=debug")
        .with_test_writer()
        .try_init();
}

fn secret_data(s: &Secret, key: &str) -> String {
    String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_replicas_end_with_one_self_signed_root() {
    init_log();
    let kc = kubeconfig();
    let ns = Namespace::new(&kc, "ca-boot-race");
    let now = SystemTime::now();
    // Four replicas starting at once, each with its own connection.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = client().await;
        let n = ns.name.clone();
        tasks.push(tokio::spawn(async move {
            bootstrap(c, &n, "cluster.local", now).await
        }));
    }
    let mut roots = Vec::new();
    let mut created = 0;
    for t in tasks {
        let (a, source) = t.await.unwrap().unwrap();
        match source {
            Source::SelfSigned { created: true } => created += 1,
            Source::SelfSigned { created: false } => {}
            Source::Plugged => panic!("no cacerts in {}", ns.name),
        }
        roots.push(a.root_pem().to_owned());
    }
    assert_eq!(created, 1, "exactly one replica creates the root");
    assert!(
        roots.windows(2).all(|w| w[0] == w[1]),
        "one root: {roots:#?}"
    );

    // The Secret, as Istio lays it out.
    let api: Api<Secret> = Api::namespaced(client().await, &ns.name);
    let s = api.get("istio-ca-secret").await.unwrap();
    assert_eq!(s.type_.as_deref(), Some("istio.io/ca-root"));
    assert_eq!(secret_data(&s, "root-cert.pem"), roots[0]);
    assert_eq!(secret_data(&s, "ca-cert.pem"), roots[0]);
    assert_eq!(secret_data(&s, "cert-chain.pem"), "");
    assert!(secret_data(&s, "ca-key.pem").starts_with("-----BEGIN PRIVATE KEY-----"));
    let der = pem::parse(&roots[0]).unwrap().into_contents();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(cert.subject().to_string(), "O=cluster.local");

    // A restart reads it back.
    let (a, source) = bootstrap(client().await, &ns.name, "cluster.local", SystemTime::now())
        .await
        .unwrap();
    assert_eq!(source, Source::SelfSigned { created: false });
    assert_eq!(a.root_pem(), roots[0]);
}

/// A root and an intermediate it signed, in Istio's `cacerts` layout.
struct Plugged {
    root: String,
    ca_cert: String,
    ca_key: String,
    cert_chain: String,
}

fn ca_params(o: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, o);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    p.not_before = (now - Duration::from_secs(3600)).into();
    p.not_after = (now + Duration::from_secs(30 * 86_400)).into();
    p
}

fn plugged() -> Plugged {
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca_params("Example Root CA");
    let root = root_params.self_signed(&root_key).unwrap();
    let issuer = Issuer::new(root_params, root_key);
    let ca_key = KeyPair::generate().unwrap();
    let inter = ca_params("Example Intermediate CA")
        .signed_by(&ca_key, &issuer)
        .unwrap();
    Plugged {
        root: root.pem(),
        ca_cert: inter.pem(),
        ca_key: ca_key.serialize_pem(),
        cert_chain: format!("{}{}", inter.pem(), root.pem()),
    }
}

async fn create_cacerts(ns: &str, data: &[(&str, &str)]) {
    let api: Api<Secret> = Api::namespaced(client().await, ns);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("cacerts".into()),
            ..ObjectMeta::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Secret::default()
    };
    api.create(&PostParams::default(), &secret).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cacerts_secret_is_used_and_no_root_is_made() {
    init_log();
    let kc = kubeconfig();
    let ns = Namespace::new(&kc, "ca-boot-plug");
    let p = plugged();
    create_cacerts(
        &ns.name,
        &[
            ("ca-cert.pem", &p.ca_cert),
            ("ca-key.pem", &p.ca_key),
            ("cert-chain.pem", &p.cert_chain),
            ("root-cert.pem", &p.root),
        ],
    )
    .await;
    let (a, source) = bootstrap(client().await, &ns.name, "cluster.local", SystemTime::now())
        .await
        .unwrap();
    assert_eq!(source, Source::Plugged);
    assert_eq!(a.root_pem(), p.root);
    assert_eq!(a.intermediates_pem(), std::slice::from_ref(&p.ca_cert));
    let api: Api<Secret> = Api::namespaced(client().await, &ns.name);
    assert!(
        api.get_opt("istio-ca-secret").await.unwrap().is_none(),
        "with cacerts, no self-signed root is made"
    );

    // What it signs chains leaf → intermediate → root.
    let id = format!("spiffe://cluster.local/ns/{}/sa/default", ns.name);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(id.as_str().try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let chain = a
        .sign(&csr, &id, Duration::from_secs(600), SystemTime::now())
        .unwrap();
    assert_eq!(chain, {
        let mut want = vec![chain[0].clone()];
        want.push(p.ca_cert.clone());
        want.push(p.root.clone());
        want
    });
    let leaf = pem::parse(&chain[0]).unwrap().into_contents();
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    assert_eq!(leaf.issuer().to_string(), "O=Example Intermediate CA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cacerts_is_an_error_naming_the_secret_and_key() {
    init_log();
    let kc = kubeconfig();
    let ns = Namespace::new(&kc, "ca-boot-bad");
    let p = plugged();
    let other = KeyPair::generate().unwrap().serialize_pem();
    create_cacerts(
        &ns.name,
        &[
            ("ca-cert.pem", &p.ca_cert),
            ("ca-key.pem", &other),
            ("cert-chain.pem", &p.cert_chain),
            ("root-cert.pem", &p.root),
        ],
    )
    .await;
    let e = bootstrap(client().await, &ns.name, "cluster.local", SystemTime::now())
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "Secret {}/cacerts, key ca-key.pem: the key is not the one of the certificate in ca-cert.pem",
            ns.name
        )
    );
    // And no self-signed root was made in its place.
    let api: Api<Secret> = Api::namespaced(client().await, &ns.name);
    assert!(api.get_opt("istio-ca-secret").await.unwrap().is_none());

    // A cacerts without root-cert.pem.
    api.delete("cacerts", &Default::default()).await.unwrap();
    create_cacerts(
        &ns.name,
        &[("ca-cert.pem", &p.ca_cert), ("ca-key.pem", &p.ca_key)],
    )
    .await;
    let e = bootstrap(client().await, &ns.name, "cluster.local", SystemTime::now())
        .await
        .unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "Secret {}/cacerts has no key root-cert.pem",
            ns.name
        )),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_that_does_not_exist_is_a_named_error() {
    init_log();
    let name = support::unique("ca-boot-none");
    let e = bootstrap(client().await, &name, "cluster.local", SystemTime::now())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("cannot create Secret {name}/istio-ca-secret: ")),
        "{e}"
    );
}
