//! Istio's HTTP metadata exchange with Envoy-like peers: the outbound side sends its
//! node metadata to a Service of the mesh and hides the upstream's from the app; the
//! inbound side hides the client's from the app and answers with its own, each header
//! only when the client sent its counterpart. Envoy sidecars label their metrics from
//! these headers.

#![allow(clippy::unwrap_used)]

mod http_support;

use std::collections::BTreeMap;

use base64::Engine as _;
use http_support::*;
use hyper::HeaderMap;
use mesh_config::Protocol;
use mesh_proxy::http::LocalService;
use prost::Message as _;
use prost_types::value::Kind;

const ID: &str = "x-envoy-peer-metadata-id";
const META: &str = "x-envoy-peer-metadata";

/// The string fields of a header's `Struct`, `LABELS` flattened as `LABELS.<key>`,
/// decoded by `prost-types` from base64 as Envoy reads it.
fn decode(h: &HeaderMap) -> BTreeMap<String, String> {
    let raw = h[META].to_str().unwrap();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .unwrap();
    let node = prost_types::Struct::decode(bytes.as_slice()).unwrap();
    let mut out = BTreeMap::new();
    for (k, v) in node.fields {
        match v.kind {
            Some(Kind::StringValue(s)) => {
                out.insert(k, s);
            }
            Some(Kind::StructValue(labels)) => {
                for (l, v) in labels.fields {
                    if let Some(Kind::StringValue(s)) = v.kind {
                        out.insert(format!("{k}.{l}"), s);
                    }
                }
            }
            other => panic!("{k}: {other:?}"),
        }
    }
    out
}

#[tokio::test]
async fn outbound_sends_ours_to_a_service_and_hides_the_upstream_s() {
    let v1 = upstream("v1", Proto::H1).await;
    let svc = reviews(&[&v1], Protocol::Http, vec![]);
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    // The app's own copies are replaced, never forwarded: a peer must not be told
    // another workload's name.
    let (s, h, b) = c
        .get(
            "reviews:9080",
            "/envoy-peer",
            &[(ID, "forged"), (META, "Zm9yZ2Vk")],
        )
        .await;
    assert_eq!((s.as_u16(), b.as_str()), (200, "v1"));
    assert!(
        !h.contains_key(ID) && !h.contains_key(META),
        "the app sees the upstream's metadata: {h:?}"
    );
    assert_eq!(h["x-upstream"], "v1");
    let (_, _, seen) = v1.seen_last();
    assert_eq!(seen.get_all(ID).iter().count(), 1);
    assert_eq!(
        seen[ID],
        "sidecar~0.0.0.0~productpage-v1-5d9f8-abcde.default~default.svc.cluster.local"
    );
    let node = decode(&seen);
    assert_eq!(node["NAME"], "productpage-v1-5d9f8-abcde");
    assert_eq!(node["NAMESPACE"], "default");
    assert_eq!(node["WORKLOAD_NAME"], "productpage-v1");
    assert_eq!(node["LABELS.app"], "productpage");
    assert_eq!(node["LABELS.version"], "v1");
    assert_eq!(
        node["LABELS.service.istio.io/canonical-name"],
        "productpage"
    );
    assert_eq!(node["LABELS.service.istio.io/canonical-revision"], "v1");
    // The same on h2 upstreams.
    let v2 = upstream("v2", Proto::H2).await;
    let svc = reviews(&[&v2], Protocol::Http2, vec![]);
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let (s, h, _) = c.get("reviews:9080", "/envoy-peer", &[]).await;
    assert_eq!(s, 200);
    assert!(!h.contains_key(ID) && !h.contains_key(META), "{h:?}");
    assert_eq!(decode(&v2.seen_last().2)["WORKLOAD_NAME"], "productpage-v1");
}

#[tokio::test]
async fn passthrough_adds_nothing_and_leaves_the_app_s_headers() {
    let ext = upstream("external", Proto::H1).await;
    let p = proxy(StaticResolver::default(), ext.addr, Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let (s, _, _) = c.get("example.com", "/", &[]).await;
    assert_eq!(s, 200);
    let (_, _, seen) = ext.seen_last();
    assert!(
        !seen.contains_key(ID) && !seen.contains_key(META),
        "pod metadata sent outside the mesh: {seen:?}"
    );
    let (s, _, _) = c.get("example.com", "/", &[(ID, "the-app-s")]).await;
    assert_eq!(s, 200);
    assert_eq!(ext.seen_last().2[ID], "the-app-s");
}

fn resolver_for_app() -> StaticResolver {
    StaticResolver {
        local: Some(LocalService {
            host: HOST.into(),
            name: "reviews".into(),
            namespace: "default".into(),
            protocol: Protocol::Http,
        }),
        ..StaticResolver::default()
    }
}

#[tokio::test]
async fn inbound_hides_the_client_s_and_answers_with_ours() {
    let app = upstream("app", Proto::H1).await;
    let p = proxy(resolver_for_app(), app.addr, Side::Inbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let envoy = envoy_peer_metadata();
    let (s, h, b) = c
        .get("reviews:9080", "/", &[(ID, ENVOY_PEER_ID), (META, &envoy)])
        .await;
    assert_eq!((s.as_u16(), b.as_str()), (200, "app"));
    let (_, _, seen) = app.seen_last();
    assert!(
        !seen.contains_key(ID) && !seen.contains_key(META),
        "the app sees the client's metadata: {seen:?}"
    );
    assert_eq!(
        h[ID],
        "sidecar~0.0.0.0~reviews-v1-7c4b6-fghij.default~default.svc.cluster.local"
    );
    let node = decode(&h);
    assert_eq!(node["WORKLOAD_NAME"], "reviews-v1");
    assert_eq!(node["LABELS.app"], "reviews");
    // Only the id: only ours back (Envoy's rule: each answers its counterpart).
    let (_, h, _) = c.get("reviews:9080", "/", &[(ID, ENVOY_PEER_ID)]).await;
    assert!(h.contains_key(ID) && !h.contains_key(META), "{h:?}");
    // A client that is not a mesh proxy gets none.
    let (_, h, _) = c.get("reviews:9080", "/", &[]).await;
    assert!(!h.contains_key(ID) && !h.contains_key(META), "{h:?}");
    // The proxy's own replies too: the app is gone, 503 UF still carries them.
    drop(app);
    let dead = closed_port().await;
    let p = proxy(resolver_for_app(), dead, Side::Inbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let (s, h, _) = c
        .get("reviews:9080", "/", &[(ID, ENVOY_PEER_ID), (META, &envoy)])
        .await;
    assert_eq!(s, 503);
    assert_eq!(decode(&h)["WORKLOAD_NAME"], "reviews-v1");
}

/// Our two sidecars together, as they run in a pod pair: the client's app never sees
/// the server's metadata and the server's app never sees the client's.
#[tokio::test]
async fn between_our_sidecars_neither_app_sees_them() {
    let app = upstream("app", Proto::H1).await;
    let server = proxy(resolver_for_app(), app.addr, Side::Inbound).await;
    let ep = Upstream {
        name: "server-sidecar".into(),
        addr: server.addr,
        accepted: Default::default(),
        open: Default::default(),
        max_open: Default::default(),
        seen: Default::default(),
    };
    let svc = reviews(&[&ep], Protocol::Http, vec![]);
    let client = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(client.addr).await;
    let (s, h, b) = c.get("reviews:9080", "/", &[]).await;
    assert_eq!((s.as_u16(), b.as_str()), (200, "app"));
    assert!(!h.contains_key(ID) && !h.contains_key(META), "{h:?}");
    let (_, _, seen) = app.seen_last();
    assert!(
        !seen.contains_key(ID) && !seen.contains_key(META),
        "{seen:?}"
    );
}
