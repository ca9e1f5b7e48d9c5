//! `VirtualService`: the fields of `spec` the translation reads (`hosts`, `gateways`,
//! `exportTo`, `http[]`, with each rule's `timeout` and `retries`, `tls[]`, which
//! only gateways use: SNI routes for `PASSTHROUGH` servers, and `tcp[]`, the L4 routes of
//! sidecars). The `http[]` fields not translated (`delegate`, ...) are declared as
//! untyped values or not at all, so they parse; `translate::routes` reports them.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{Labels, Meta, ParseError, PortSelector, int, nullable, parse_meta, parse_spec};

pub const KIND: &str = "VirtualService";

/// One VirtualService object.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualService {
    pub meta: Meta,
    pub spec: VirtualServiceSpec,
}

impl VirtualService {
    /// From the API server's JSON (any served version).
    pub fn from_json(obj: &Value) -> Result<VirtualService, ParseError> {
        let meta = parse_meta(KIND, obj)?;
        let spec = parse_spec(KIND, &meta, obj)?;
        Ok(VirtualService { meta, spec })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VirtualServiceSpec {
    #[serde(deserialize_with = "nullable")]
    pub hosts: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub gateways: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub export_to: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub http: Vec<HttpRoute>,
    #[serde(deserialize_with = "nullable")]
    pub tls: Vec<TlsRoute>,
    #[serde(deserialize_with = "nullable")]
    pub tcp: Vec<TcpRoute>,
}

/// `tcp[]`: routes for L4 connections (opaque TCP, and TLS that is not terminated).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TcpRoute {
    #[serde(rename = "match", deserialize_with = "nullable")]
    pub matches: Vec<L4MatchAttributes>,
    #[serde(deserialize_with = "nullable")]
    pub route: Vec<RouteDestination>,
}

/// `tcp[].match[]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct L4MatchAttributes {
    #[serde(deserialize_with = "nullable")]
    pub port: u32,
    #[serde(deserialize_with = "nullable")]
    pub source_labels: Labels,
    #[serde(deserialize_with = "nullable")]
    pub source_namespace: String,
    #[serde(deserialize_with = "nullable")]
    pub gateways: Vec<String>,
    /// Only checked for presence: not supported.
    #[serde(deserialize_with = "nullable")]
    pub destination_subnets: Vec<String>,
    /// Only checked for presence: not supported (deprecated in Istio).
    #[serde(deserialize_with = "nullable")]
    pub source_subnet: String,
}

/// `tls[]`: routes for TLS that is not terminated, by SNI.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TlsRoute {
    #[serde(rename = "match", deserialize_with = "nullable")]
    pub matches: Vec<TlsMatchAttributes>,
    #[serde(deserialize_with = "nullable")]
    pub route: Vec<RouteDestination>,
}

/// `tls[].match[]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TlsMatchAttributes {
    #[serde(deserialize_with = "nullable")]
    pub sni_hosts: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub port: u32,
    #[serde(deserialize_with = "nullable")]
    pub gateways: Vec<String>,
    /// Only checked for presence: not supported.
    #[serde(deserialize_with = "nullable")]
    pub destination_subnets: Vec<String>,
}

/// `tls[].route[]` (`RouteDestination`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteDestination {
    pub destination: Option<Destination>,
    /// Absent: 0 (Istio's int32 default).
    #[serde(deserialize_with = "nullable")]
    pub weight: i64,
}

/// `http[]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRoute {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(rename = "match", deserialize_with = "nullable")]
    pub matches: Vec<HttpMatchRequest>,
    #[serde(deserialize_with = "nullable")]
    pub route: Vec<HttpRouteDestination>,
    pub redirect: Option<HttpRedirect>,
    pub direct_response: Option<HttpDirectResponse>,
    pub rewrite: Option<HttpRewrite>,
    pub fault: Option<HttpFaultInjection>,
    pub headers: Option<Headers>,
    /// Only checked for presence: delegation is not supported.
    pub delegate: Option<Value>,
    /// A protobuf duration (`10s`, `0.5s`; `1m`, `100ms` are accepted too); unset or `0s`:
    /// no timeout.
    pub timeout: Option<String>,
    pub retries: Option<HttpRetry>,
    /// A destination each forwarded request is copied to.
    pub mirror: Option<Destination>,
    /// The share of requests `mirror` gets; absent: all.
    pub mirror_percentage: Option<Percent>,
    /// The deprecated integer share, used when `mirrorPercentage` is absent.
    #[serde(alias = "mirror_percent")]
    pub mirror_percent: Option<i64>,
    /// Several mirrors (not beside `mirror`).
    #[serde(deserialize_with = "nullable")]
    pub mirrors: Vec<HttpMirrorPolicy>,
    pub cors_policy: Option<CorsPolicy>,
}

/// `http[].mirrors[]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpMirrorPolicy {
    pub destination: Option<Destination>,
    /// Absent: all requests.
    pub percentage: Option<Percent>,
}

/// `http[].retries` (`HTTPRetry`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRetry {
    /// Retries after the first try; unset is 0 (an `int32`): no retries.
    #[serde(deserialize_with = "int")]
    pub attempts: i64,
    /// A duration, at least 1 ms.
    pub per_try_timeout: Option<String>,
    /// Comma-separated conditions (`5xx,gateway-error`) and HTTP statuses (`503`).
    #[serde(deserialize_with = "nullable")]
    pub retry_on: String,
    /// Parsed, not applied: endpoints carry no locality.
    pub retry_remote_localities: Option<bool>,
    /// Unset: true (retry on another endpoint than the ones tried).
    pub retry_ignore_previous_hosts: Option<bool>,
    /// A duration, at least 1 ms: the base interval of the back-off between tries.
    pub backoff: Option<String>,
}

/// `http[].match[]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpMatchRequest {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    #[serde(deserialize_with = "nullable")]
    pub headers: BTreeMap<String, Option<StringMatch>>,
    #[serde(deserialize_with = "nullable")]
    pub without_headers: BTreeMap<String, Option<StringMatch>>,
    #[serde(deserialize_with = "nullable")]
    pub query_params: BTreeMap<String, Option<StringMatch>>,
    #[serde(deserialize_with = "nullable")]
    pub ignore_uri_case: bool,
    #[serde(deserialize_with = "nullable")]
    pub port: u32,
    #[serde(deserialize_with = "nullable")]
    pub source_labels: Labels,
    #[serde(deserialize_with = "nullable")]
    pub gateways: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub source_namespace: String,
}

/// Istio's `StringMatch` (a oneof: at most one is set; none is "any value").
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
}

/// `http[].route[]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRouteDestination {
    pub destination: Option<Destination>,
    /// Absent: 0 (Istio's int32 default).
    #[serde(deserialize_with = "nullable")]
    pub weight: i64,
    pub headers: Option<Headers>,
}

/// `Destination`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Destination {
    #[serde(deserialize_with = "nullable")]
    pub host: String,
    #[serde(deserialize_with = "nullable")]
    pub subset: String,
    pub port: Option<PortSelector>,
}

/// `headers`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Headers {
    pub request: Option<HeaderOperations>,
    pub response: Option<HeaderOperations>,
}

/// `headers.request` / `headers.response`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HeaderOperations {
    #[serde(deserialize_with = "nullable")]
    pub set: BTreeMap<String, String>,
    #[serde(deserialize_with = "nullable")]
    pub add: BTreeMap<String, String>,
    #[serde(deserialize_with = "nullable")]
    pub remove: Vec<String>,
}

/// `redirect`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRedirect {
    #[serde(deserialize_with = "nullable")]
    pub uri: String,
    #[serde(deserialize_with = "nullable")]
    pub authority: String,
    pub port: Option<u32>,
    /// `FROM_PROTOCOL_DEFAULT` or `FROM_REQUEST_PORT`.
    pub derive_port: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub scheme: String,
    /// Absent or 0: 301.
    #[serde(deserialize_with = "nullable")]
    pub redirect_code: u32,
}

/// `directResponse`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpDirectResponse {
    #[serde(deserialize_with = "nullable")]
    pub status: u32,
    pub body: Option<HttpBody>,
}

/// `directResponse.body`: `string` or `bytes` (base64).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpBody {
    pub string: Option<String>,
    pub bytes: Option<String>,
}

/// `rewrite`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRewrite {
    #[serde(deserialize_with = "nullable")]
    pub uri: String,
    #[serde(deserialize_with = "nullable")]
    pub authority: String,
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// `corsPolicy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct CorsPolicy {
    #[serde(deserialize_with = "nullable")]
    pub allow_origins: Vec<StringMatch>,
    /// Deprecated: exact origins, `*` for any.
    #[serde(deserialize_with = "nullable")]
    pub allow_origin: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub allow_methods: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub allow_headers: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub expose_headers: Vec<String>,
    /// A protobuf duration, whole seconds.
    pub max_age: Option<String>,
    pub allow_credentials: Option<bool>,
    /// `UNSPECIFIED`, `FORWARD` or `IGNORE`.
    pub unmatched_preflights: Option<String>,
}

/// `rewrite.uriRegexRewrite`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RegexRewrite {
    #[serde(rename = "match", deserialize_with = "nullable")]
    pub pattern: String,
    #[serde(deserialize_with = "nullable")]
    pub rewrite: String,
}

/// `fault`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpFaultInjection {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

/// `fault.delay`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultDelay {
    /// A protobuf duration (`7s`, `0.5s`; `1m`, `100ms` are accepted too).
    pub fixed_delay: Option<String>,
    /// Only checked for presence: not supported (Istio hides it too).
    pub exponential_delay: Option<Value>,
    pub percentage: Option<Percent>,
    /// The deprecated integer percentage, used when `percentage` is absent.
    pub percent: Option<i64>,
}

/// `fault.abort`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultAbort {
    pub http_status: Option<i64>,
    /// A gRPC status name (`UNAVAILABLE`); a number is accepted too.
    pub grpc_status: Option<GrpcStatus>,
    pub percentage: Option<Percent>,
}

/// `fault.abort.grpcStatus`, as the CRD spells it (a name) or as a number.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum GrpcStatus {
    Code(u32),
    Name(String),
}

/// `Percent`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Percent {
    #[serde(deserialize_with = "nullable")]
    pub value: f64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_fields_it_reads_and_ignores_the_rest() {
        let vs = VirtualService::from_json(&json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "default",
                         "creationTimestamp": "2024-01-02T03:04:05Z"},
            "spec": {
                "hosts": ["reviews"],
                "http": [{
                    "match": [{"headers": {"end-user": {"exact": "jason"}, "x-any": {}},
                               "port": 9080}],
                    "route": [{"destination": {"host": "reviews", "subset": "v2",
                                               "port": {"number": 9080}}}],
                    "timeout": "10s",
                    "retries": {"attempts": 3},
                    "fault": {"abort": {"grpcStatus": "UNAVAILABLE",
                                        "percentage": {"value": 50}}}
                }],
                "tcp": [{"route": []}],
                "tls": [{"match": [{"sniHosts": ["a.example.com"], "port": 443,
                                    "gateways": ["gw"]}],
                         "route": [{"destination": {"host": "a", "port": {"number": 8443}},
                                    "weight": 100}]}]
            }
        }))
        .unwrap();
        let t = &vs.spec.tls[0];
        assert_eq!(t.matches[0].sni_hosts, ["a.example.com"]);
        assert_eq!((t.matches[0].port, t.route[0].weight), (443, 100));
        assert_eq!(vs.meta.name, "reviews");
        assert!(vs.meta.created.is_some());
        let r = &vs.spec.http[0];
        assert_eq!(r.matches[0].port, 9080);
        assert_eq!(
            r.matches[0].headers["end-user"]
                .as_ref()
                .unwrap()
                .exact
                .as_deref(),
            Some("jason")
        );
        assert_eq!(r.matches[0].headers["x-any"], Some(StringMatch::default()));
        let d = r.route[0].destination.as_ref().unwrap();
        assert_eq!(d.port.as_ref().unwrap().number, 9080);
        let a = r.fault.as_ref().unwrap().abort.as_ref().unwrap();
        assert_eq!(a.grpc_status, Some(GrpcStatus::Name("UNAVAILABLE".into())));
        assert_eq!(r.timeout.as_deref(), Some("10s"));
        assert_eq!(r.retries.as_ref().unwrap().attempts, 3);
    }

    #[test]
    fn parses_retries() {
        let vs = VirtualService::from_json(&json!({
            "metadata": {"name": "r"},
            "spec": {"hosts": ["r"], "http": [
                {"retries": {"attempts": "2", "perTryTimeout": "0.5s", "retryOn": "5xx,503",
                             "retryRemoteLocalities": true,
                             "retryIgnorePreviousHosts": false, "backoff": "100ms"}},
                {"retries": {}},
                {"retries": {"attempts": null, "retryOn": null}}
            ]}
        }))
        .unwrap();
        let r = |i: usize| vs.spec.http[i].retries.clone().unwrap();
        assert_eq!(
            r(0),
            HttpRetry {
                attempts: 2,
                per_try_timeout: Some("0.5s".into()),
                retry_on: "5xx,503".into(),
                retry_remote_localities: Some(true),
                retry_ignore_previous_hosts: Some(false),
                backoff: Some("100ms".into()),
            }
        );
        assert_eq!(r(1), HttpRetry::default());
        assert_eq!(r(2), HttpRetry::default());
        let e = VirtualService::from_json(&json!({
            "metadata": {"name": "r"},
            "spec": {"hosts": ["r"], "http": [{"retries": {"attempts": "many"}}]}
        }))
        .unwrap_err();
        assert_eq!(e.field, "spec.http[0].retries.attempts");
    }

    #[test]
    fn errors_name_the_field() {
        let e = VirtualService::from_json(&json!({
            "metadata": {"name": "bad", "namespace": "ns"},
            "spec": {"hosts": ["a"], "http": [{}, {"match": [{"port": "eighty"}]}]}
        }))
        .unwrap_err();
        assert_eq!(e.field, "spec.http[1].match[0].port");
        assert_eq!((e.namespace.as_str(), e.name.as_str()), ("ns", "bad"));
        let e = VirtualService::from_json(&json!({"metadata": {"name": "x"}})).unwrap_err();
        assert_eq!(e.field, "spec");
        let e = VirtualService::from_json(&json!({"metadata": {"name": "x"}, "spec": "reviews"}))
            .unwrap_err();
        assert_eq!(e.field, "spec");
    }

    #[test]
    fn nulls_are_defaults() {
        let vs = VirtualService::from_json(&json!({
            "metadata": {"name": "n"},
            "spec": {"hosts": null, "http": [{"match": null, "route": null, "name": null}]}
        }))
        .unwrap();
        assert!(vs.spec.hosts.is_empty());
        assert!(vs.spec.http[0].matches.is_empty());
    }
}
