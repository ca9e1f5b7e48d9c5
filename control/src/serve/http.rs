//! The monitoring port (`--metrics-addr`): `/metrics`, `/readyz`, `/healthz`, and
//! `/debug/config`, `/debug/proxies`, `/debug/objects` (JSON).
//!
//! `/debug/config` answers as for the pod's own authenticated stream (so a gateway's
//! certificates show as they are sent), with every private key (`keyPem`) replaced by
//! `<redacted>`: the port has no authentication.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mesh_config::Key;
use serde::Deserialize;

use crate::serve::engine::Snapshots;
use crate::serve::metrics::Metrics;
use crate::serve::proxies::Proxies;
use crate::serve::watch::Watchers;
use crate::translate::ProxyNode;

pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub proxies: Arc<Proxies>,
    pub snapshots: Snapshots,
    /// Set once the watchers have started.
    pub watchers: OnceLock<Arc<Watchers>>,
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/debug/config", get(debug_config))
        .route("/debug/proxies", get(debug_proxies))
        .route("/debug/objects", get(debug_objects))
        .with_state(state)
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn metrics(State(s): State<Arc<HttpState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn readyz(State(s): State<Arc<HttpState>>) -> Response {
    if s.snapshots.borrow().is_some() {
        text(StatusCode::OK, "ok\n".into())
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the watchers have not synced yet\n".into(),
        )
    }
}

#[derive(Deserialize)]
struct ConfigQuery {
    proxy: Option<String>,
    key: Option<String>,
}

/// What `proxy` (`<namespace>/<pod>`) would get for `key` on a stream authenticated as
/// its pod, whether it is connected or not; private keys redacted.
async fn debug_config(State(s): State<Arc<HttpState>>, Query(q): Query<ConfigQuery>) -> Response {
    let (Some(proxy), Some(key)) = (q.proxy, q.key) else {
        return text(
            StatusCode::BAD_REQUEST,
            "usage: /debug/config?proxy=<namespace>/<pod>&key=<addr/IP|host/NAME|gateway>\n".into(),
        );
    };
    let Some((namespace, pod_name)) = proxy
        .split_once('/')
        .filter(|(n, p)| !n.is_empty() && !p.is_empty())
    else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("proxy {proxy:?}: expected <namespace>/<pod>\n"),
        );
    };
    let key = match key.parse::<Key>() {
        Ok(k) => k,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let Some(published) = s.snapshots.borrow().clone() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "no snapshot yet\n".into());
    };
    let mut node = ProxyNode::new(namespace, pod_name);
    node.identity = published.view.identity_of(&node);
    let resource = published.view.resolve(&node, &key);
    let value = resource.to_redacted_value();
    json(
        StatusCode::OK,
        serde_json::to_vec(&value).unwrap_or_default(),
    )
}

async fn debug_proxies(State(s): State<Arc<HttpState>>) -> Response {
    json(
        StatusCode::OK,
        serde_json::to_vec_pretty(&s.proxies.list()).unwrap_or_default(),
    )
}

/// What the watchers hold: counts per kind, the versions watched, and the Istio objects
/// by `namespace/name`.
async fn debug_objects(State(s): State<Arc<HttpState>>) -> Response {
    let Some(w) = s.watchers.get() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "watchers not started\n".into(),
        );
    };
    let o = w.objects();
    let names = |list: &[serde_json::Value]| -> Vec<String> {
        list.iter()
            .map(|v| {
                let m = &v["metadata"];
                format!(
                    "{}/{}",
                    m["namespace"].as_str().unwrap_or_default(),
                    m["name"].as_str().unwrap_or_default()
                )
            })
            .collect()
    };
    let mut counts = BTreeMap::new();
    counts.insert("services", o.services.len());
    counts.insert("endpointSlices", o.endpoint_slices.len());
    counts.insert("pods", o.pods.len());
    counts.insert("namespaces", o.namespaces.len());
    counts.insert("secrets", o.secrets.len());
    let body = serde_json::json!({
        "counts": counts,
        "endpointSlicesVersion": w.slice_version(),
        "virtualServices": {
            "version": w.virtual_services.version(),
            "objects": names(&o.virtual_services),
        },
        "destinationRules": {
            "version": w.destination_rules.version(),
            "objects": names(&o.destination_rules),
        },
        "peerAuthentications": {
            "version": w.peer_authentications.version(),
            "objects": names(&o.peer_authentications),
        },
        "authorizationPolicies": {
            "version": w.authorization_policies.version(),
            "objects": names(&o.authorization_policies),
        },
        "gateways": {
            "version": w.gateways.version(),
            "objects": names(&o.gateways),
        },
    });
    json(
        StatusCode::OK,
        serde_json::to_vec_pretty(&body).unwrap_or_default(),
    )
}
