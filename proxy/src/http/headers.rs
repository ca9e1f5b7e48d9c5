//! Header handling: hop-by-hop headers (RFC 9110 §7.6.1), the config's header edits,
//! `x-request-id`, Istio's peer metadata exchange headers, and what gRPC needs
//! (detection, status, Envoy's HTTP → gRPC status mapping for the proxy's own replies). Tracing headers (B3, `traceparent`,
//! `tracestate`) are never touched.

use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};

use super::compile::CompiledEdit;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// Set on a 503 a circuit breaker made (Envoy's).
pub(crate) static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
/// The path a request had before its route rewrote it (`rewrite.uri`, `uriRegexRewrite`).
pub(crate) static X_ENVOY_ORIGINAL_PATH: HeaderName =
    HeaderName::from_static("x-envoy-original-path");
pub(crate) static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub(crate) static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// The hop-by-hop headers removed whatever `Connection` names and whether the message
/// is an upgrade (`Upgrade` and `TE` have rules of their own).
static ALWAYS_HOP_BY_HOP: [HeaderName; 4] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
];

/// Removes the hop-by-hop headers: `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-Connection`, `Transfer-Encoding`, `Upgrade` (unless this is an
/// upgrade being forwarded, when `Connection: upgrade` and `Upgrade` stay), and `TE`
/// except `te: trailers` (which gRPC needs on h2).
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Most requests and answers carry none of them: one pass over the names (standard
    // ones compare as a tag) instead of a hashed lookup for each.
    if !keep_upgrade && !h.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !(keep_upgrade && n == header::UPGRADE))
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in &ALWAYS_HOP_BY_HOP {
        h.remove(n);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
    let te_trailers = h.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    h.remove(header::TE);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// A header that [`strip_hop_by_hop`] removes (or rewrites) whatever `Connection` says.
fn is_hop_by_hop(n: &HeaderName) -> bool {
    n == header::UPGRADE || n == header::TE || ALWAYS_HOP_BY_HOP.contains(n)
}

/// Istio's HTTP metadata exchange: the peer's node metadata (a protobuf `Struct` in
/// base64) and its node id.
pub(crate) static X_ENVOY_PEER_METADATA: HeaderName =
    HeaderName::from_static("x-envoy-peer-metadata");
pub(crate) static X_ENVOY_PEER_METADATA_ID: HeaderName =
    HeaderName::from_static("x-envoy-peer-metadata-id");

/// This proxy's side of Istio's HTTP metadata exchange, built once from its node
/// metadata. Envoy sidecars read their peer's workload labels for their metrics from
/// these headers: on the request an outbound sidecar sends into the mesh, and on the
/// response an inbound sidecar gives back when the request carried them. Each side
/// removes the peer's before the application sees them.
#[derive(Debug, Clone)]
pub struct PeerMetadataHeaders {
    id: HeaderValue,
    metadata: HeaderValue,
}

/// Which of the peer's exchange headers a request carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerHeadersSeen {
    pub id: bool,
    pub metadata: bool,
}

impl PeerMetadataHeaders {
    /// `None` when a value is not a valid header value (a pod name is; this is a guard).
    pub fn new(meta: &crate::identity::exchange::NodeMetadata) -> Option<PeerMetadataHeaders> {
        let metadata = crate::identity::exchange::header_value(meta);
        Some(PeerMetadataHeaders {
            id: HeaderValue::from_str(&meta.id).ok()?,
            metadata: HeaderValue::from_str(&metadata).ok()?,
        })
    }

    /// Outbound, to a Service of the mesh: ours, replacing any the application set.
    pub fn insert_upstream(&self, h: &mut HeaderMap) {
        h.insert(X_ENVOY_PEER_METADATA_ID.clone(), self.id.clone());
        h.insert(X_ENVOY_PEER_METADATA.clone(), self.metadata.clone());
    }

    /// Inbound, on the response: each of ours whose counterpart the request carried.
    pub fn insert_downstream(&self, h: &mut HeaderMap, seen: PeerHeadersSeen) {
        if seen.id {
            h.insert(X_ENVOY_PEER_METADATA_ID.clone(), self.id.clone());
        }
        if seen.metadata {
            h.insert(X_ENVOY_PEER_METADATA.clone(), self.metadata.clone());
        }
    }
}

/// Removes the peer's exchange headers (from an inbound request, or an outbound
/// response) and says which were there.
pub fn strip_peer_metadata(h: &mut HeaderMap) -> PeerHeadersSeen {
    PeerHeadersSeen {
        id: h.remove(&X_ENVOY_PEER_METADATA_ID).is_some(),
        metadata: h.remove(&X_ENVOY_PEER_METADATA).is_some(),
    }
}

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Appends `client` to `x-forwarded-for` (made when absent), as an edge proxy does.
pub fn append_forwarded_for(h: &mut HeaderMap, client: std::net::IpAddr) {
    let value = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(v) if !v.trim().is_empty() => format!("{v}, {client}"),
        _ => client.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
}

pub(crate) static X_FORWARDED_CLIENT_CERT: HeaderName =
    HeaderName::from_static("x-forwarded-client-cert");

/// How a request's `x-forwarded-client-cert` is rewritten, given the element for the
/// connection's client certificate (`identity::xfcc`; `None`: the client presented
/// none, or the connection is plaintext):
/// - no client certificate: the header is removed, whatever the mode (a client cannot
///   pass one on without proving it);
/// - `append` (Envoy's `APPEND_FORWARD`, a sidecar's inbound side): the element is
///   appended to the header's elements (`,`), or makes it;
/// - else (`SANITIZE_SET`, a gateway): the header is the element alone.
///
/// Several header lines count as one list, in order.
pub fn forward_client_cert(h: &mut HeaderMap, element: Option<&str>, append: bool) {
    let Some(element) = element else {
        h.remove(&X_FORWARDED_CLIENT_CERT);
        return;
    };
    let mut value = String::new();
    if append {
        for v in h.get_all(&X_FORWARDED_CLIENT_CERT) {
            let v = String::from_utf8_lossy(v.as_bytes());
            let v = v.trim();
            if !v.is_empty() {
                value.push_str(v);
                value.push(',');
            }
        }
    }
    value.push_str(element);
    match HeaderValue::from_str(&value) {
        Ok(v) => {
            h.insert(X_FORWARDED_CLIENT_CERT.clone(), v);
        }
        // Not expected (the element is ASCII, the old value was a header value): the
        // element alone rather than the client's unchecked one.
        Err(_) => match HeaderValue::from_str(element) {
            Ok(v) => {
                h.insert(X_FORWARDED_CLIENT_CERT.clone(), v);
            }
            Err(_) => {
                h.remove(&X_FORWARDED_CLIENT_CERT);
            }
        },
    }
}

/// Whether the request asks for a protocol upgrade (WebSocket and the like) on HTTP/1.1.
pub fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Applies one edit: remove, then set (replace), then add (append).
pub fn apply_edit(h: &mut HeaderMap, e: &CompiledEdit) {
    for n in &e.remove {
        h.remove(n);
    }
    for (n, v) in &e.set {
        h.insert(n.clone(), v.clone());
    }
    for (n, v) in &e.add {
        h.append(n.clone(), v.clone());
    }
}

/// A version 4 UUID, as text (`xxxxxxxx-xxxx-4xxx-Nxxx-xxxxxxxxxxxx`), from a fast,
/// non-cryptographic generator (request ids are for correlation, as Envoy's are).
pub fn uuid_v4(rng: &mut fastrand::Rng) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b = rng.u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = [b'-'; 36];
    let mut at = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1; // the '-' already there
        }
        out[at] = HEX[usize::from(byte >> 4)];
        out[at + 1] = HEX[usize::from(byte & 0xf)];
        at += 2;
    }
    out
}

/// Adds `x-request-id` when the request has none (one lookup of the name: this runs on
/// every request).
pub fn ensure_request_id(h: &mut HeaderMap, rng: &mut fastrand::Rng) {
    if let header::Entry::Vacant(e) = h.entry(&X_REQUEST_ID) {
        e.insert(HeaderValue::from_bytes(&uuid_v4(rng)).unwrap_or(HeaderValue::from_static("-")));
    }
}

/// The request's id (`x-request-id`, the first when there are several), as text.
pub fn request_id(h: &HeaderMap) -> &str {
    h.get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A gRPC request (`content-type: application/grpc[+proto|...]`).
pub fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// `grpc-status` of a header block (trailers, or the headers of a trailers-only
/// response).
pub fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get(&GRPC_STATUS)?.to_str().ok()?.trim().parse().ok()
}

/// Envoy's mapping of an HTTP status to a gRPC status, for gRPC requests answered
/// without a `grpc-status`.
pub fn http_to_grpc_status(status: u16) -> u32 {
    match status {
        200 => 0,
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn client_cert_is_appended_replaced_or_removed() {
        let xfcc = |h: &HeaderMap| {
            h.get_all(&X_FORWARDED_CLIENT_CERT)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let mut h = HeaderMap::new();
        h.append(
            &X_FORWARDED_CLIENT_CERT,
            HeaderValue::from_static("By=a;URI=b"),
        );
        h.append(
            &X_FORWARDED_CLIENT_CERT,
            HeaderValue::from_static(" By=c;URI=d "),
        );
        let mut appended = h.clone();
        forward_client_cert(&mut appended, Some("By=me;URI=you"), true);
        assert_eq!(xfcc(&appended), ["By=a;URI=b,By=c;URI=d,By=me;URI=you"]);
        let mut set = h.clone();
        forward_client_cert(&mut set, Some("Hash=1;URI="), false);
        assert_eq!(xfcc(&set), ["Hash=1;URI="]);
        for append in [true, false] {
            let mut none = h.clone();
            forward_client_cert(&mut none, None, append);
            assert!(xfcc(&none).is_empty());
        }
        let mut fresh = HeaderMap::new();
        forward_client_cert(&mut fresh, Some("By=me"), true);
        assert_eq!(xfcc(&fresh), ["By=me"]);
    }

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hop_by_hop_goes_tracing_stays() {
        let mut h = map(&[
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "trailers, deflate"),
            ("proxy-connection", "close"),
            ("traceparent", "00-abc-def-01"),
            ("tracestate", "a=b"),
            ("x-b3-traceid", "1234"),
            ("b3", "1-2-1"),
            ("content-length", "3"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "b3",
                "content-length",
                "te",
                "traceparent",
                "tracestate",
                "x-b3-traceid"
            ]
        );
        assert_eq!(h["te"], "trailers");
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
        assert!(!is_upgrade(&map(&[("upgrade", "websocket")])));
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_stripped() {
        for (name, value, left) in [
            ("connection", "close", None),
            ("keep-alive", "timeout=5", None),
            ("proxy-connection", "keep-alive", None),
            ("transfer-encoding", "chunked", None),
            ("upgrade", "h2c", None),
            ("te", "deflate", None),
            ("te", "trailers", Some("trailers")),
        ] {
            let mut h = map(&[("host", "a"), (name, value), ("x-b3-traceid", "1")]);
            strip_hop_by_hop(&mut h, false);
            assert_eq!(
                h.get(name).map(|v| v.to_str().unwrap()),
                left,
                "{name}: {value}"
            );
            assert_eq!(h.len(), 2 + usize::from(left.is_some()), "{name}: {value}");
        }
        let mut h = map(&[("host", "a"), ("x-b3-traceid", "1")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn edits_remove_set_add_in_order() {
        let mut h = map(&[("x-a", "1"), ("x-b", "1"), ("x-c", "1")]);
        let e = CompiledEdit {
            remove: vec![HeaderName::from_static("x-a")],
            set: vec![(
                HeaderName::from_static("x-b"),
                HeaderValue::from_static("2"),
            )],
            add: vec![
                (
                    HeaderName::from_static("x-c"),
                    HeaderValue::from_static("2"),
                ),
                (
                    HeaderName::from_static("x-a"),
                    HeaderValue::from_static("3"),
                ),
            ],
        };
        apply_edit(&mut h, &e);
        assert_eq!(h.get_all("x-a").iter().collect::<Vec<_>>(), ["3"]);
        assert_eq!(h.get_all("x-b").iter().collect::<Vec<_>>(), ["2"]);
        assert_eq!(h.get_all("x-c").iter().collect::<Vec<_>>(), ["1", "2"]);
    }

    #[test]
    fn request_ids_are_uuid_v4_and_kept_when_present() {
        let mut rng = fastrand::Rng::with_seed(1);
        let text = uuid_v4(&mut rng);
        let id = std::str::from_utf8(&text).unwrap();
        assert!(
            id.bytes()
                .all(|b| b == b'-' || b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(id.len(), 36);
        let parts: Vec<_> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
        assert_ne!(uuid_v4(&mut rng), text);
        let mut h = map(&[("x-request-id", "abc")]);
        ensure_request_id(&mut h, &mut rng);
        assert_eq!(
            h.get_all("x-request-id").iter().collect::<Vec<_>>(),
            ["abc"]
        );
        assert_eq!(request_id(&h), "abc");
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h, &mut rng);
        let v = request_id(&h);
        assert_eq!(v.len(), 36);
        assert_eq!(v.as_bytes()[14], b'4');
        // Present more than once: the first is the request's id, and none is added.
        let mut h = map(&[("x-request-id", "first"), ("x-request-id", "second")]);
        ensure_request_id(&mut h, &mut rng);
        assert_eq!(request_id(&h), "first");
        assert_eq!(h.get_all("x-request-id").iter().count(), 2);
        assert_eq!(request_id(&HeaderMap::new()), "");
    }

    #[test]
    fn grpc_bits() {
        assert!(is_grpc(&map(&[("content-type", "application/grpc+proto")])));
        assert!(!is_grpc(&map(&[("content-type", "application/json")])));
        assert_eq!(grpc_status(&map(&[("grpc-status", "14")])), Some(14));
        assert_eq!(http_to_grpc_status(503), 14);
        assert_eq!(http_to_grpc_status(404), 12);
        assert_eq!(http_to_grpc_status(500), 2);
    }
}
