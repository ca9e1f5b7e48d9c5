//! The config stream: one bidirectional gRPC stream per proxy,
//! `mesh.config.v1.ConfigService/Stream` (see `config/proto/config.proto`).
//!
//! - The proxy opens it and sends a [`StreamRequest`] with its [`Node`] and the keys it
//!   wants now. Later requests add (`subscribe`) or drop (`unsubscribe`) keys as it meets
//!   new destinations and forgets idle ones, and acknowledge each response.
//! - mesh-control answers with [`StreamResponse`]s: only the keys whose resource changed
//!   since it last sent them to this proxy (incremental), each with a content version,
//!   under one stream-wide `version` and a `nonce`. It debounces cluster changes, so a
//!   burst of edits becomes one response.
//! - The proxy applies a response whole or not at all: it validates every resource,
//!   then swaps them in, and sends `response_nonce` = that nonce, with `error` empty
//!   (ACK) or saying why (NACK, the old config stays). mesh-control sends nothing new
//!   for a key it got a NACK for until the key's resource changes.
//!
//! Resource bodies are the JSON of [`crate::Resource`]: one schema for the wire, the
//! golden tests and `/config_dump`.

/// The gRPC method path.
pub const STREAM_PATH: &str = "/mesh.config.v1.ConfigService/Stream";
/// The gRPC service name.
pub const SERVICE_NAME: &str = "mesh.config.v1.ConfigService";

/// Proxy → mesh-control.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamRequest {
    /// Who is asking; required in the first request, ignored after.
    #[prost(message, optional, tag = "1")]
    pub node: Option<Node>,
    /// Keys ([`crate::Key`] strings) to add.
    #[prost(string, repeated, tag = "2")]
    pub subscribe: Vec<String>,
    /// Keys to drop.
    #[prost(string, repeated, tag = "3")]
    pub unsubscribe: Vec<String>,
    /// The response this acknowledges; empty when it answers none.
    #[prost(string, tag = "4")]
    pub response_nonce: String,
    /// Empty: ACK. Else the response was refused (NACK), and why.
    #[prost(string, tag = "5")]
    pub error: String,
}

/// The asking proxy's pod.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Node {
    #[prost(string, tag = "1")]
    pub pod_name: String,
    #[prost(string, tag = "2")]
    pub namespace: String,
    /// The pod IP.
    #[prost(string, tag = "3")]
    pub ip: String,
    /// mesh-proxy's version.
    #[prost(string, tag = "4")]
    pub proxy_version: String,
}

/// mesh-control → proxy.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamResponse {
    /// Grows with every response on this stream.
    #[prost(uint64, tag = "1")]
    pub version: u64,
    #[prost(string, tag = "2")]
    pub nonce: String,
    /// New or changed resources.
    #[prost(message, repeated, tag = "3")]
    pub resources: Vec<ResourceUpdate>,
}

/// One key's resource.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResourceUpdate {
    #[prost(string, tag = "1")]
    pub key: String,
    /// A hash of `body`: unchanged content, unchanged version.
    #[prost(string, tag = "2")]
    pub version: String,
    /// JSON of [`crate::Resource`].
    #[prost(bytes = "vec", tag = "3")]
    pub body: Vec<u8>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use prost::Message as _;

    #[test]
    fn messages_round_trip() {
        let req = StreamRequest {
            node: Some(Node {
                pod_name: "p".into(),
                namespace: "ns".into(),
                ip: "10.0.0.1".into(),
                proxy_version: "0.1.0".into(),
            }),
            subscribe: vec!["addr/10.96.0.1".into()],
            ..Default::default()
        };
        assert_eq!(
            StreamRequest::decode(req.encode_to_vec().as_slice()).unwrap(),
            req
        );
        let res = StreamResponse {
            version: 3,
            nonce: "n".into(),
            resources: vec![ResourceUpdate {
                key: "host/x".into(),
                version: "h".into(),
                body: b"{}".to_vec(),
            }],
        };
        assert_eq!(
            StreamResponse::decode(res.encode_to_vec().as_slice()).unwrap(),
            res
        );
    }
}
