use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use prost::Message as _;
use prost_types::value::Kind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn identity() -> Identity {
    Identity {
        workload: "reviews-v2".to_owned(),
        namespace: "shop".to_owned(),
        pod_ip: Some(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
        service_account: Some("bookinfo-reviews".to_owned()),
        owner: Some("kubernetes://apis/apps/v1/namespaces/shop/deployments/reviews-v2".to_owned()),
        canonical_service: Some("reviews".to_owned()),
        canonical_revision: Some("v2".to_owned()),
        app: Some("reviews".to_owned()),
        version: Some("v2".to_owned()),
    }
}

fn strings(s: &prost_types::Struct) -> BTreeMap<String, String> {
    s.fields
        .iter()
        .filter_map(|(k, v)| match &v.kind {
            Some(Kind::StringValue(x)) => Some((k.clone(), x.clone())),
            _ => None,
        })
        .collect()
}

fn sub<'a>(s: &'a prost_types::Struct, key: &str) -> &'a prost_types::Struct {
    match s.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StructValue(x)) => x,
        other => panic!("{key}: not a struct: {other:?}"),
    }
}

#[test]
fn the_frame_is_an_any_of_a_struct_as_envoy_reads_it() {
    let meta = NodeMetadata::of(&identity(), Some("reviews-v2-6d9c7-x2"), "cluster.local");
    let f = frame(&meta);
    assert_eq!(f[..4], [0x3D, 0x23, 0x04, 0x67]);
    let len = u32::from_be_bytes([f[4], f[5], f[6], f[7]]) as usize;
    assert_eq!(len, f.len() - 8);

    let any = prost_types::Any::decode(&f[8..]).expect("an Any");
    assert_eq!(any.type_url, "type.googleapis.com/google.protobuf.Struct");
    let data = prost_types::Struct::decode(any.value.as_slice()).expect("a Struct");
    assert_eq!(
        strings(&data)
            .get("x-envoy-peer-metadata-id")
            .map(String::as_str),
        Some("sidecar~10.1.2.3~reviews-v2-6d9c7-x2.shop~shop.svc.cluster.local")
    );
    let node = sub(&data, "x-envoy-peer-metadata");
    let fields = strings(node);
    let want = [
        ("NAME", "reviews-v2-6d9c7-x2"),
        ("NAMESPACE", "shop"),
        ("WORKLOAD_NAME", "reviews-v2"),
        (
            "OWNER",
            "kubernetes://apis/apps/v1/namespaces/shop/deployments/reviews-v2",
        ),
        ("SERVICE_ACCOUNT", "bookinfo-reviews"),
        ("INSTANCE_IPS", "10.1.2.3"),
        ("MESH_ID", "cluster.local"),
        ("CLUSTER_ID", "Kubernetes"),
    ];
    for (k, v) in want {
        assert_eq!(fields.get(k).map(String::as_str), Some(v), "{k}");
    }
    let labels = strings(sub(node, "LABELS"));
    assert_eq!(
        labels,
        BTreeMap::from([
            ("app".to_owned(), "reviews".to_owned()),
            ("version".to_owned(), "v2".to_owned()),
            (
                "service.istio.io/canonical-name".to_owned(),
                "reviews".to_owned()
            ),
            (
                "service.istio.io/canonical-revision".to_owned(),
                "v2".to_owned()
            ),
        ])
    );
}

#[test]
fn unknown_workloads_still_get_istio_s_canonical_defaults() {
    let mut id = Identity::unknown();
    id.workload = "web".to_owned();
    id.namespace = "default".to_owned();
    let meta = NodeMetadata::of(&id, None, "cluster.local");
    let labels: BTreeMap<_, _> = meta.labels.iter().cloned().collect();
    assert_eq!(labels["service.istio.io/canonical-name"], "web");
    assert_eq!(labels["service.istio.io/canonical-revision"], "latest");
    assert_eq!(
        meta.id,
        "sidecar~0.0.0.0~unknown.default~default.svc.cluster.local"
    );
}

/// Writes `chunks` one at a time (each its own read on the other side), then closes.
async fn read_through(chunks: Vec<Vec<u8>>) -> io::Result<Vec<u8>> {
    let (mut w, r) = tokio::io::duplex(64);
    let writer = tokio::spawn(async move {
        for c in chunks {
            w.write_all(&c).await.unwrap();
            w.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
    });
    let mut got = Vec::new();
    let res = PeerExchange::expecting(r).read_to_end(&mut got).await;
    writer.await.unwrap();
    res.map(|_| got)
}

#[tokio::test]
async fn the_peer_s_frame_is_dropped_however_it_is_split() {
    let meta = NodeMetadata::of(&identity(), Some("p"), "cluster.local");
    let mut wire = frame(&meta);
    wire.extend_from_slice(b"GET / HTTP/1.0\r\n\r\n");
    for cut in [1, 3, 4, 7, 8, 9, 20, wire.len() - 1] {
        let got = read_through(vec![wire[..cut].to_vec(), wire[cut..].to_vec()])
            .await
            .unwrap();
        assert_eq!(got, b"GET / HTTP/1.0\r\n\r\n", "split at {cut}");
    }
    let bytes: Vec<Vec<u8>> = wire.iter().map(|b| vec![*b]).collect();
    assert_eq!(
        read_through(bytes).await.unwrap(),
        b"GET / HTTP/1.0\r\n\r\n"
    );
}

#[tokio::test]
async fn bytes_that_are_not_a_frame_pass_untouched() {
    // Not the magic at the first byte, at the third, and a short message then EOF.
    for data in [
        b"hello, server".to_vec(),
        vec![0x3D, 0x23, 0x00, 0x00, 1, 2, 3, 4, 5, 6],
        vec![0x3D, 0x23],
        b"ab".to_vec(),
    ] {
        assert_eq!(read_through(vec![data.clone()]).await.unwrap(), data);
    }
    assert_eq!(read_through(vec![]).await.unwrap(), b"");
}

#[tokio::test]
async fn a_frame_too_large_or_cut_short_is_an_error() {
    let mut huge = MAGIC.to_be_bytes().to_vec();
    huge.extend_from_slice(&(MAX_PAYLOAD + 1).to_be_bytes());
    let e = read_through(vec![huge]).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(e.to_string().contains("peer metadata frame"), "{e}");

    let f = frame(&NodeMetadata::of(&identity(), None, "cluster.local"));
    let e = read_through(vec![f[..f.len() - 3].to_vec()])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn passthrough_reads_everything() {
    let f = frame(&NodeMetadata::default());
    let (mut w, r) = tokio::io::duplex(f.len());
    w.write_all(&f).await.unwrap();
    drop(w);
    let mut got = Vec::new();
    PeerExchange::passthrough(r)
        .read_to_end(&mut got)
        .await
        .unwrap();
    assert_eq!(got, f);
}
