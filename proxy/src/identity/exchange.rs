//! Istio's in-band peer metadata exchange for opaque TCP over mTLS: when both sides
//! agree on the ALPN protocol `istio-peer-exchange`, each one starts what it sends with
//! one frame describing its workload, and reads the other's before the application's
//! bytes. Envoy sidecars offer it on every mTLS connection that carries TCP and read the
//! labels of their metrics from it; a peer that agreed on it waits for the frame.
//!
//! The frame: the magic `0x3D230467` and the payload's length, both 32-bit big-endian,
//! then the payload, a protobuf `google.protobuf.Any` holding a `google.protobuf.Struct`
//! with two fields: `x-envoy-peer-metadata`, the node metadata as Istio names it (`NAME`,
//! `NAMESPACE`, `WORKLOAD_NAME`, `OWNER`, `LABELS`, `MESH_ID`, `CLUSTER_ID`, ...), and
//! `x-envoy-peer-metadata-id`, the node id (`sidecar~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`).
//!
//! Over HTTP, Istio exchanges the same metadata in the headers of those names instead:
//! [`header_value`] is ours (the `Struct` alone, in base64), and `http::headers` adds,
//! strips and answers them.
//!
//! [`frame`] encodes ours (by hand: a handful of length-delimited fields, no protobuf
//! runtime types in the proxy). [`PeerExchange`] wraps a stream and drops the peer's
//! frame from what is read; bytes that do not start with the magic are the
//! application's and are passed through untouched, as Envoy does.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};

use crate::config::{Identity, UNKNOWN};

/// The frame's magic number.
pub const MAGIC: u32 = 0x3D23_0467;
/// The payload's type.
pub const STRUCT_TYPE_URL: &str = "type.googleapis.com/google.protobuf.Struct";
/// The payload's field holding the node metadata.
pub const KEY_METADATA: &str = "x-envoy-peer-metadata";
/// The payload's field holding the node id.
pub const KEY_ID: &str = "x-envoy-peer-metadata-id";
/// The largest peer payload read (Envoy's node metadata is a few KB); a larger one is an
/// error.
pub const MAX_PAYLOAD: u32 = 256 * 1024;

/// What this proxy says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeMetadata {
    /// The node id.
    pub id: String,
    /// String fields (`NAME`, `NAMESPACE`, ...), as Istio names them.
    pub fields: Vec<(String, String)>,
    /// The pod's labels (`LABELS`).
    pub labels: Vec<(String, String)>,
}

impl NodeMetadata {
    /// Istio's node metadata for this proxy's pod, from what the injector told it.
    pub fn of(identity: &Identity, pod_name: Option<&str>, trust_domain: &str) -> NodeMetadata {
        let ns = identity.namespace.as_str();
        let ip = identity.pod_ip.map(|ip| ip.to_string());
        let mut fields = vec![
            ("NAMESPACE".to_owned(), ns.to_owned()),
            ("WORKLOAD_NAME".to_owned(), identity.workload.clone()),
            ("MESH_ID".to_owned(), trust_domain.to_owned()),
            ("CLUSTER_ID".to_owned(), "Kubernetes".to_owned()),
        ];
        let optional = [
            ("NAME", pod_name.map(str::to_owned)),
            ("OWNER", identity.owner.clone()),
            ("SERVICE_ACCOUNT", identity.service_account.clone()),
            ("INSTANCE_IPS", ip.clone()),
        ];
        fields.extend(
            optional
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v))),
        );
        let canonical = identity
            .canonical_service
            .clone()
            .or_else(|| identity.app.clone())
            .unwrap_or_else(|| identity.workload.clone());
        let mut labels = vec![
            ("service.istio.io/canonical-name".to_owned(), canonical),
            (
                "service.istio.io/canonical-revision".to_owned(),
                identity
                    .canonical_revision
                    .clone()
                    .or_else(|| identity.version.clone())
                    .unwrap_or_else(|| "latest".to_owned()),
            ),
        ];
        labels.extend(identity.app.clone().map(|a| ("app".to_owned(), a)));
        labels.extend(identity.version.clone().map(|v| ("version".to_owned(), v)));
        let id = format!(
            "sidecar~{}~{}.{ns}~{ns}.svc.cluster.local",
            ip.as_deref().unwrap_or("0.0.0.0"),
            pod_name.unwrap_or(UNKNOWN),
        );
        NodeMetadata { id, fields, labels }
    }

    /// The same pod as a gateway: Istio names a gateway's node `router~...`.
    pub fn router(mut self) -> NodeMetadata {
        if let Some(rest) = self.id.strip_prefix("sidecar~") {
            self.id = format!("router~{rest}");
        }
        self
    }
}

/// The node metadata as a protobuf `google.protobuf.Struct`, encoded: what the frame's
/// `x-envoy-peer-metadata` field holds and what the HTTP header of that name carries in
/// base64.
pub fn node_struct(meta: &NodeMetadata) -> Vec<u8> {
    let mut node = Vec::new();
    let mut fields: Vec<(&str, Vec<u8>)> = meta
        .fields
        .iter()
        .map(|(k, v)| (k.as_str(), string_value(v)))
        .collect();
    let mut labels = Vec::new();
    let mut sorted: Vec<_> = meta.labels.iter().collect();
    sorted.sort();
    for (k, v) in sorted {
        map_entry(&mut labels, k, &string_value(v));
    }
    fields.push(("LABELS", struct_value(&labels)));
    // Deterministic, as Envoy serializes it: map entries by key.
    fields.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in &fields {
        map_entry(&mut node, k, v);
    }
    node
}

/// Our frame: header and payload, ready to be written first.
pub fn frame(meta: &NodeMetadata) -> Vec<u8> {
    let mut data = Vec::new();
    map_entry(&mut data, KEY_METADATA, &struct_value(&node_struct(meta)));
    map_entry(&mut data, KEY_ID, &string_value(&meta.id));
    let mut any = Vec::new();
    bytes_field(&mut any, 1, STRUCT_TYPE_URL.as_bytes());
    bytes_field(&mut any, 2, &data);
    let mut out = Vec::with_capacity(8 + any.len());
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&(any.len() as u32).to_be_bytes());
    out.extend_from_slice(&any);
    out
}

/// The value of the HTTP header `x-envoy-peer-metadata`: [`node_struct`] in standard
/// base64 with padding, as Envoy writes it (its reader takes it with or without).
pub fn header_value(meta: &NodeMetadata) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(node_struct(meta))
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field (wire type 2).
fn bytes_field(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    varint(out, u64::from(number) << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `google.protobuf.Value{string_value}` (field 3).
fn string_value(s: &str) -> Vec<u8> {
    let mut v = Vec::new();
    bytes_field(&mut v, 3, s.as_bytes());
    v
}

/// `google.protobuf.Value{struct_value}` (field 5) of an encoded Struct.
fn struct_value(encoded_struct: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    bytes_field(&mut v, 5, encoded_struct);
    v
}

/// One entry of `Struct.fields` (field 1, a map entry: key 1, value 2).
fn map_entry(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let mut e = Vec::new();
    bytes_field(&mut e, 1, key.as_bytes());
    bytes_field(&mut e, 2, value);
    bytes_field(out, 1, &e);
}

enum State {
    /// Reading the first 8 bytes: the peer's header, or the application's.
    Header { buf: [u8; 8], len: usize },
    /// Dropping the payload's remaining bytes.
    Payload { left: u32 },
    /// Giving back bytes read while looking for the header: they were not one.
    Replay {
        buf: [u8; 8],
        pos: usize,
        len: usize,
    },
    /// Passing everything through.
    Done,
}

/// A stream whose first bytes read may be the peer's exchange frame: it is dropped.
pub struct PeerExchange<S> {
    inner: S,
    state: State,
}

impl<S> PeerExchange<S> {
    /// The peer agreed on the exchange: its frame is expected first.
    pub fn expecting(inner: S) -> PeerExchange<S> {
        PeerExchange {
            inner,
            state: State::Header {
                buf: [0; 8],
                len: 0,
            },
        }
    }

    /// No exchange: every byte is the application's.
    pub fn passthrough(inner: S) -> PeerExchange<S> {
        PeerExchange {
            inner,
            state: State::Done,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PeerExchange<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Done => return Pin::new(&mut this.inner).poll_read(cx, out),
                State::Header { buf, len } => {
                    let mut rb = ReadBuf::new(&mut buf[*len..]);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                    let n = rb.filled().len();
                    if n == 0 {
                        // The stream ended before a whole header: what came was data.
                        let (buf, len) = (*buf, *len);
                        if len == 0 {
                            this.state = State::Done;
                            return Poll::Ready(Ok(()));
                        }
                        this.state = State::Replay { buf, pos: 0, len };
                        continue;
                    }
                    *len += n;
                    let magic = MAGIC.to_be_bytes();
                    let k = (*len).min(4);
                    if buf[..k] != magic[..k] {
                        this.state = State::Replay {
                            buf: *buf,
                            pos: 0,
                            len: *len,
                        };
                    } else if *len == 8 {
                        let size = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                        if size > MAX_PAYLOAD {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!(
                                    "istio-peer-exchange: a {size}-byte peer metadata frame (at most {MAX_PAYLOAD})"
                                ),
                            )));
                        }
                        this.state = State::Payload { left: size };
                    }
                }
                State::Payload { left } => {
                    if *left == 0 {
                        this.state = State::Done;
                        continue;
                    }
                    let mut scratch = [0u8; 512];
                    let want = (*left as usize).min(scratch.len());
                    let mut rb = ReadBuf::new(&mut scratch[..want]);
                    ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
                    let n = rb.filled().len();
                    if n == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "istio-peer-exchange: the stream ended inside the peer's metadata frame",
                        )));
                    }
                    *left -= n as u32;
                }
                State::Replay { buf, pos, len } => {
                    let n = (*len - *pos).min(out.remaining());
                    out.put_slice(&buf[*pos..*pos + n]);
                    *pos += n;
                    if *pos == *len {
                        this.state = State::Done;
                    }
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

crate::copy::write_through!(PeerExchange, inner);

impl<S: crate::copy::Io> crate::copy::Io for PeerExchange<S> {
    fn reset_on_close(&self) {
        self.inner.reset_on_close();
    }
}

#[cfg(test)]
mod tests;
