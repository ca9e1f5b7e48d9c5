//! HTTP routes: a VirtualService's `http[]`, with host names already resolved and
//! destinations turned into cluster names.

use serde::{Deserialize, Serialize};

use crate::resilience::RetryPolicy;

/// One `http[]` entry of a VirtualService.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRoute {
    /// The entry's `name`, else `<index>` in its VirtualService.
    pub name: String,
    /// Where it comes from, for `/debug/route` and logs: `default/reviews`
    /// (the VirtualService's namespace and name).
    pub virtual_service: String,
    /// OR'ed; empty matches every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RequestMatch>,
    pub action: RouteAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// `headers.request` / `headers.response` of the route (applied after the chosen
    /// destination's own).
    #[serde(default, skip_serializing_if = "HeaderEdit::is_empty")]
    pub request_headers: HeaderEdit,
    #[serde(default, skip_serializing_if = "HeaderEdit::is_empty")]
    pub response_headers: HeaderEdit,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// `timeout`: the whole exchange, retries included, until the response head; `None`:
    /// no timeout (Istio's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// `retries`, or Istio's default policy when the route has none; `None`: no retries
    /// at all (`attempts: 0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// `mirror` / `mirrors`: a forwarded request is also sent to each of these clusters
    /// (with the chosen share of requests), best effort, its answer thrown away. Only
    /// with [`RouteAction::Route`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    /// `corsPolicy`: applied by the proxy that routes the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsPolicy>,
}

/// `corsPolicy`, as Envoy's CORS filter applies it. A request with an `Origin` the
/// policy allows gets `Access-Control-Allow-Origin` (that origin) on its response, with
/// `-Allow-Credentials` and `-Expose-Headers` when set; such a preflight (`OPTIONS` with
/// `Access-Control-Request-Method`) is answered by the proxy, 200 with the allowed
/// methods, headers and max age, and goes no further. A preflight from an origin not
/// allowed goes upstream, unless [`CorsPolicy::answer_unmatched_preflights`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    /// Matched against the whole `Origin` value, case-sensitive; none: no origin is
    /// allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<StringMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// `Access-Control-Max-Age`, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_s: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_credentials: bool,
    /// `unmatchedPreflights: IGNORE`: a preflight from an origin not allowed is answered
    /// 200 without CORS headers instead of forwarded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub answer_unmatched_preflights: bool,
}

/// One mirror of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Mirror {
    /// A name in [`crate::Service::clusters`].
    pub cluster: String,
    /// The share of the route's forwarded requests mirrored, 0-100.
    pub percentage: f64,
}

/// One `match[]` entry: every condition set must hold (AND).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMatch {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    /// Each named header must be present and match (`None` value: present, any value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
    /// Each named header must be absent, or present and not matching.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub without_headers: Vec<HeaderMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<HeaderMatch>,
    /// The `uri` match ignores ASCII case.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_uri_case: bool,
}

/// A header (or query parameter) condition. Names are lower case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    /// `None`: the header must be present, whatever its value (Istio's `{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<StringMatch>,
}

/// Istio's StringMatch. A regex is RE2 syntax and must match the whole string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// What a matched request gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum RouteAction {
    /// Forward to one of these clusters, chosen by weight (weights > 0; a request goes
    /// to each with probability weight / sum).
    Route(Vec<WeightedCluster>),
    /// Answer with a redirect, upstream never sees the request.
    Redirect(Redirect),
    /// Answer with this status and body.
    DirectResponse {
        status: u16,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        body: String,
    },
}

/// One `route[]` destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedCluster {
    /// A name in [`crate::Service::clusters`]: `outbound|9080|v1|reviews.default.svc.cluster.local`.
    pub cluster: String,
    pub weight: u32,
    #[serde(default, skip_serializing_if = "HeaderEdit::is_empty")]
    pub request_headers: HeaderEdit,
    #[serde(default, skip_serializing_if = "HeaderEdit::is_empty")]
    pub response_headers: HeaderEdit,
}

/// `headers.request` or `headers.response`: names lower case, applied remove, set, add.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderEdit {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderEdit {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// `fault`: applied by the client's proxy before the request goes upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    pub fixed_delay_ms: u64,
    /// Share of requests delayed, 0–100 (unset in the VirtualService: 0, as Istio
    /// translates it: no request is delayed).
    pub percentage: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    /// An HTTP status; for a gRPC abort, the gRPC status code in [`FaultAbort::grpc_status`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// Share of requests aborted, 0–100 (unset: 0, as for delays).
    pub percentage: f64,
}

/// `rewrite`: applied to the request forwarded upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the matched `uri.prefix` (or the whole path when the match was not a
    /// prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// `uriRegexRewrite`: the path (query excluded) with every match of the pattern
    /// replaced. Never with [`Rewrite::uri`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_regex: Option<RegexRewrite>,
}

/// `rewrite.uriRegexRewrite`, as Envoy's `regex_rewrite`: every non-overlapping match
/// of `pattern` (RE2, not anchored) in the path is replaced by `substitution`, in which
/// `\0` is the whole match, `\1`..`\9` the pattern's groups and `\\` a backslash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegexRewrite {
    pub pattern: String,
    pub substitution: String,
}

/// `redirect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// 301 unless the VirtualService says otherwise.
    pub code: u16,
}
