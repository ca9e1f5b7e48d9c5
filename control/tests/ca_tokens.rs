//! Who is calling the CA, as a real API server says (kube-local through KUBECONFIG; fails
//! without it): `KubeTokenReviewer` against tokens the API server issued itself
//! (TokenRequest, audience `istio-ca`), tokens for another audience, a JWT signed with the
//! API server's own ServiceAccount key but expired, garbage, a user's (non-ServiceAccount)
//! token, and tokens of a deleted ServiceAccount; and a time-out against a server that
//! never answers. Each test makes its own namespace and deletes it at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/ca_kube.rs"]
mod ca_kube;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ca_kube::{Cleanup, base64url, client, eventually, init_log, kube_local_dir, unique};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use mesh_control::ca::tokens::{AuthError, Authenticator, Caller, KubeTokenReviewer};

/// The issuer kube-local's API server signs ServiceAccount tokens as
/// (`--service-account-issuer` in ../shared/kube-local/start.sh).
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// A fresh namespace (deleted when `cleanup` drops) with the ServiceAccounts `sas`; their
/// UIDs, in order.
async fn namespace_with(
    client: &Client,
    cleanup: &mut Cleanup,
    prefix: &str,
    sas: &[&str],
) -> (String, Vec<String>) {
    let ns = unique(prefix);
    let nss: Api<Namespace> = Api::all(client.clone());
    let mut obj = Namespace::default();
    obj.metadata.name = Some(ns.clone());
    nss.create(&PostParams::default(), &obj).await.unwrap();
    cleanup.namespace(&ns);
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let mut uids = Vec::new();
    for sa in sas {
        let mut obj = ServiceAccount::default();
        obj.metadata.name = Some((*sa).into());
        let made = api.create(&PostParams::default(), &obj).await.unwrap();
        uids.push(made.metadata.uid.unwrap());
    }
    (ns, uids)
}

/// A token the API server issues for `ns/sa` (TokenRequest) for `audience`, 10 minutes.
async fn token(client: &Client, ns: &str, sa: &str, audience: &str) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let req = TokenRequest {
        metadata: Default::default(),
        spec: TokenRequestSpec {
            audiences: vec![audience.into()],
            expiration_seconds: Some(600),
            bound_object_ref: None,
        },
        status: None,
    };
    let got = api
        .create_token_request(sa, &PostParams::default(), &req)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{sa}: {e}"));
    got.status
        .unwrap_or_else(|| panic!("TokenRequest for {ns}/{sa}: no status"))
        .token
}

fn caller(ns: &str, sa: &str) -> Caller {
    Caller {
        namespace: ns.into(),
        service_account: sa.into(),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// kube-local's ServiceAccount signing key (`--service-account-signing-key-file` in
/// ../shared/kube-local/start.sh: `$KUBE_LOCAL_DIR/pki/sa.key`).
fn signing_key() -> std::path::PathBuf {
    let key = kube_local_dir().join("pki/sa.key");
    if let Err(e) = std::fs::File::open(&key) {
        panic!(
            "cannot read the API server's ServiceAccount signing key {} ({e}); this test signs \
             an expired token with it (kube-local's start.sh passes it as \
             --service-account-signing-key-file); run as the user that set up kube-local or \
             set KUBE_LOCAL_DIR",
            key.display()
        );
    }
    key
}

/// A ServiceAccount JWT as kube-apiserver would make it for `ns/sa` (uid `uid`), audience
/// `istio-ca`, valid from `nbf` to `exp` (unix seconds), RS256-signed with the API
/// server's own key (`openssl dgst -sha256 -sign`).
fn signed_jwt(ns: &str, sa: &str, uid: &str, nbf: i64, exp: i64) -> String {
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    let claims = serde_json::json!({
        "iss": ISSUER,
        "aud": ["istio-ca"],
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "iat": nbf,
        "nbf": nbf,
        "exp": exp,
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": uid}},
    });
    let input = format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    let key = signing_key();
    let mut child = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run openssl (apt-get install openssl)");
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl dgst -sign {}: {}",
        key.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), 256, "an RSA-2048 signature");
    format!("{input}.{}", base64url(&out.stdout))
}

fn unauthenticated(r: Result<Caller, AuthError>, what: &str) -> String {
    match r {
        Err(AuthError::Unauthenticated(m)) => {
            eprintln!("{what}: refused: {m}");
            m
        }
        other => panic!("{what}: want Unauthenticated, got {other:?}"),
    }
}

#[tokio::test]
async fn a_token_of_a_service_account_for_istio_ca_names_its_caller() {
    init_log();
    let client = client().await;
    let mut cleanup = Cleanup::default();
    let (ns, _) = namespace_with(&client, &mut cleanup, "ca-tok-ok", &["cart", "pay"]).await;
    let reviewer = KubeTokenReviewer::new(client.clone());
    let cart = token(&client, &ns, "cart", "istio-ca").await;
    let pay = token(&client, &ns, "pay", "istio-ca").await;
    assert_eq!(
        reviewer.authenticate(&cart).await.unwrap(),
        caller(&ns, "cart")
    );
    // The identity is the token's, whoever shows it.
    assert_eq!(
        reviewer.authenticate(&pay).await.unwrap(),
        caller(&ns, "pay")
    );
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    init_log();
    let client = client().await;
    let mut cleanup = Cleanup::default();
    let (ns, _) = namespace_with(&client, &mut cleanup, "ca-tok-aud", &["cart"]).await;
    let reviewer = KubeTokenReviewer::new(client.clone());
    for audience in ["other", ISSUER] {
        let t = token(&client, &ns, "cart", audience).await;
        let m = unauthenticated(reviewer.authenticate(&t).await, audience);
        assert!(
            m.contains("audience") && m.contains("istio-ca"),
            "audience {audience}: {m}"
        );
    }
}

#[tokio::test]
async fn an_expired_token_signed_by_the_api_server_is_refused() {
    init_log();
    let client = client().await;
    let mut cleanup = Cleanup::default();
    let (ns, uids) = namespace_with(&client, &mut cleanup, "ca-tok-exp", &["cart"]).await;
    let reviewer = KubeTokenReviewer::new(client.clone());
    let now = unix_now();
    // The control: the same hand-made token, still valid, passes — so the signature, issuer
    // and claims are right, and only the expiry refuses the second one.
    let fresh = signed_jwt(&ns, "cart", &uids[0], now - 60, now + 600);
    assert_eq!(
        reviewer.authenticate(&fresh).await.unwrap(),
        caller(&ns, "cart"),
        "a token signed with kube-local's key must pass (is {} the API server's \
         --service-account-signing-key-file?)",
        signing_key().display()
    );
    let expired = signed_jwt(&ns, "cart", &uids[0], now - 7200, now - 3600);
    let m = unauthenticated(reviewer.authenticate(&expired).await, "expired");
    assert!(m.to_lowercase().contains("expired"), "{m}");
}

#[tokio::test]
async fn garbage_and_a_users_token_are_refused() {
    init_log();
    let client = client().await;
    let reviewer = KubeTokenReviewer::new(client.clone());
    for garbage in [
        "not-a-token",
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
        &"A".repeat(4096),
    ] {
        unauthenticated(reviewer.authenticate(garbage).await, "garbage");
    }
    assert!(matches!(
        reviewer.authenticate("").await,
        Err(AuthError::NoToken)
    ));
    // kube-local's static bearer token (pki/tokens.csv) is valid for the API server, and
    // is a user of system:masters, not a ServiceAccount, and not for istio-ca.
    let csv = kube_local_dir().join("pki/tokens.csv");
    let text = std::fs::read_to_string(&csv)
        .unwrap_or_else(|e| panic!("read kube-local's {}: {e}", csv.display()));
    let admin = text.split(',').next().unwrap().trim();
    assert!(!admin.is_empty(), "no token in {}", csv.display());
    let r = reviewer.authenticate(admin).await;
    eprintln!("kube-local's admin token: {r:?}");
    assert!(
        matches!(
            r,
            Err(AuthError::Unauthenticated(_) | AuthError::NotAServiceAccount(_))
        ),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_token_of_a_deleted_service_account_is_refused() {
    init_log();
    let client = client().await;
    let mut cleanup = Cleanup::default();
    let (ns, _) = namespace_with(&client, &mut cleanup, "ca-tok-del", &["cart", "pay"]).await;
    let reviewer = KubeTokenReviewer::new(client.clone());
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);

    // Never reviewed before: refused at once.
    let cart = token(&client, &ns, "cart", "istio-ca").await;
    sas.delete("cart", &DeleteParams::default()).await.unwrap();
    let m = unauthenticated(reviewer.authenticate(&cart).await, "deleted cart");
    assert!(m.contains("not found") || m.contains("invalidated"), "{m}");

    // Reviewed (and accepted) before: refused once the API server's own cache of good
    // reviews (about 10 s) lets go, although a namesake (another UID) exists by then.
    let pay = token(&client, &ns, "pay", "istio-ca").await;
    assert_eq!(
        reviewer.authenticate(&pay).await.unwrap(),
        caller(&ns, "pay")
    );
    sas.delete("pay", &DeleteParams::default()).await.unwrap();
    let mut again = ServiceAccount::default();
    again.metadata.name = Some("pay".into());
    sas.create(&PostParams::default(), &again).await.unwrap();
    let (m, took) = eventually(
        "the deleted ServiceAccount's token refused",
        Duration::from_secs(30),
        || async {
            match reviewer.authenticate(&pay).await {
                Err(AuthError::Unauthenticated(m)) => Ok(m),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    eprintln!("a token of a deleted ServiceAccount was refused {took:?} after its deletion: {m}");
    assert!(
        m.contains("does not match") || m.contains("invalidated"),
        "{m}"
    );
}

/// An "API server" on loopback that accepts connections and never answers.
#[tokio::test]
async fn a_silent_api_server_times_the_review_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            conns.push(c);
        }
    });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = Client::try_from(config).unwrap();
    let reviewer = KubeTokenReviewer::new(client).with_timeout(Duration::from_millis(500));
    let t0 = Instant::now();
    let r = reviewer.authenticate("some-token").await;
    let took = t0.elapsed();
    match r {
        Err(AuthError::Api(m)) => assert!(m.contains("did not answer within 500ms"), "{m}"),
        other => panic!("want Api, got {other:?}"),
    }
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    held.abort();
}
