//! `mirror` / `mirrors` (Envoy's shadowing): a copy of a forwarded request goes to
//! each mirror cluster of its route, for the route's share of requests, as a task of
//! its own, and its answer is thrown away. The client's request never waits for it
//! and never sees how it went.
//!
//! The copy is the upstream request as it went to the route's destination (rewrites,
//! header edits, the peer metadata), its authority's host suffixed with `-shadow`
//! (`reviews:9080` → `reviews-shadow:9080`), as Envoy marks shadowed requests. It
//! needs the body held whole ([`super::body::HeldBody`]: at most 64 KiB by
//! `content-length`, or none): a longer or streamed body is not mirrored. It goes to
//! an endpoint the mirror cluster picks, on the same pools, under the mirror
//! cluster's `http2MaxRequests` (over it: not sent), with the route's `timeout` and no
//! retries; its answer counts for the cluster's outlier detection. It is not in the
//! source proxy's request metrics (Envoy's shadows are not either): the mirror's
//! sidecar reports it as `reporter="destination"`. At most [`MAX_IN_FLIGHT`] copies
//! are in flight in the process; past that a copy is not sent.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use fastrand::Rng;
use hyper::body::Body;
use hyper::header::{self, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery};
use hyper::{Request, Uri, Version};
use mesh_config::Protocol;
use tracing::debug;

use super::Connector;
use super::body::RequestBody;
use super::compile::CompiledService;
use super::lb::InFlight;
use super::pool::{PoolKey, Pools, SendOpts, Sent};
use super::resilience::Outcome;
use crate::direction::Direction;

/// `reviews:9080` → `reviews-shadow:9080`, `reviews` → `reviews-shadow`; an IPv6
/// literal is left as it is (no host name to suffix).
pub(crate) fn shadow_authority(a: &str) -> String {
    if a.starts_with('[') {
        return a.to_owned();
    }
    match a.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{h}-shadow:{p}")
        }
        _ => format!("{a}-shadow"),
    }
}

/// A request's authority, in HTTP/1.1 form (`Host`) or h2 form (the URI's).
fn authority_of(req: &Request<RequestBody>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
}

/// `req` (a copy of the upstream request) readied for the mirror: the shadow
/// authority, in h2 or HTTP/1.1 form. `None`: it has no authority to suffix.
pub(crate) fn shadow_request(
    mut req: Request<RequestBody>,
    h2: bool,
) -> Option<Request<RequestBody>> {
    let shadow = shadow_authority(&authority_of(&req)?);
    let authority = Authority::try_from(shadow.as_str()).ok()?;
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if h2 {
        *req.uri_mut() = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(pq)
            .build()
            .ok()?;
        req.headers_mut().remove(header::HOST);
        *req.version_mut() = Version::HTTP_2;
    } else {
        *req.uri_mut() = Uri::from(pq);
        req.headers_mut().insert(
            header::HOST,
            HeaderValue::from_str(authority.as_str()).ok()?,
        );
        *req.version_mut() = Version::HTTP_11;
    }
    Some(req)
}

/// What a mirror task needs, owned.
pub(crate) struct Shadow {
    pub svc: Arc<CompiledService>,
    /// Index of the mirror cluster in `svc`.
    pub cluster: usize,
    pub req: Request<RequestBody>,
    /// The main request's upstream protocol; a cluster that names its own (a
    /// gateway's) uses that.
    pub h2: bool,
    pub direction: Direction,
    pub connector: Arc<dyn Connector>,
    /// The worker's pools (a cluster under `tcp.maxConnections` uses its own).
    pub pools: Arc<Pools>,
    pub timeout: Option<Duration>,
    pub seed: u64,
}

/// At most this many copies in flight in the process: beyond it, a copy is not sent.
/// A mirror that answers slowly or never (and no route `timeout`) would otherwise hold
/// a task and a request, body included, per mirrored request.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// One copy in flight, counted in [`IN_FLIGHT`] until dropped.
struct Flying;

impl Flying {
    fn take() -> Option<Flying> {
        IN_FLIGHT
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_IN_FLIGHT).then_some(n + 1)
            })
            .ok()
            .map(|_| Flying)
    }
}

impl Drop for Flying {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Sends the copy on a task of its own, unless [`MAX_IN_FLIGHT`] copies are in flight.
pub(crate) fn spawn(s: Shadow) {
    let Some(flying) = Flying::take() else {
        debug!(
            max = MAX_IN_FLIGHT,
            "mirror: too many copies in flight; not mirrored"
        );
        return;
    };
    tokio::spawn(async move {
        run(s).await;
        drop(flying);
    });
}

async fn run(s: Shadow) {
    let Shadow {
        svc,
        cluster,
        req,
        h2,
        direction,
        connector,
        pools,
        timeout,
        seed,
    } = s;
    let Some(c) = svc.clusters.get(cluster) else {
        return;
    };
    let h2 = c.protocol.map_or(h2, |p| p == Protocol::Http2);
    let Some(req) = shadow_request(req, h2) else {
        debug!(cluster = %c.name, "mirror: the request has no authority; not mirrored");
        return;
    };
    let mut rng = Rng::with_seed(seed);
    let Some(e) = c.pick(&mut rng, &[]) else {
        debug!(cluster = %c.name, "mirror: no endpoint in rotation; not mirrored");
        return;
    };
    let Ok(_slot) = c.state.request(&c.limits) else {
        debug!(cluster = %c.name, "mirror: over the cluster's http2MaxRequests; not mirrored");
        return;
    };
    let _in_flight = InFlight::new(e);
    let tls = if e.mtls { c.tls.as_ref() } else { None };
    let key = PoolKey {
        addr: e.addr,
        direction,
        h2,
        scope: c.state.scope(&c.limits),
        tls: tls.map_or(0, |_| c.tls_key),
    };
    let opts = SendOpts {
        state: Some(&c.state),
        limits: &c.limits,
        tls,
    };
    let pools = c.shared_pools.clone().unwrap_or(pools);
    let exchange = async {
        let Sent { resp, conn, .. } = pools
            .send(&*connector, key, req, opts)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        while !body.is_end_stream() {
            match poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("response body: {e}")),
                None => break,
            }
        }
        if let Some(conn) = conn {
            conn.give_back();
        }
        Ok::<u16, String>(status)
    };
    let outcome = match timeout {
        Some(d) => tokio::time::timeout(d, exchange)
            .await
            .unwrap_or_else(|_| Err("timeout".into())),
        None => exchange.await,
    };
    match outcome {
        Ok(status) => {
            c.record_outcome(e, Outcome::Status(status));
            debug!(cluster = %c.name, addr = %e.addr, status, "mirrored");
        }
        Err(why) => {
            c.record_outcome(e, Outcome::LocalOrigin);
            debug!(cluster = %c.name, addr = %e.addr, why, "mirror failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_in_flight_are_bounded() {
        // The only test of this binary that takes copies (the counter is the process's).
        let held: Vec<Flying> = std::iter::from_fn(Flying::take)
            .take(MAX_IN_FLIGHT + 5)
            .collect();
        assert_eq!(held.len(), MAX_IN_FLIGHT);
        assert!(Flying::take().is_none(), "over the bound: not sent");
        drop(held);
        assert_eq!(
            IN_FLIGHT.load(Ordering::Acquire),
            0,
            "each copy gave its place back"
        );
        assert!(Flying::take().is_some());
    }

    #[test]
    fn shadow_authorities() {
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_authority("reviews"), "reviews-shadow");
        assert_eq!(
            shadow_authority("reviews.default.svc.cluster.local:9080"),
            "reviews.default.svc.cluster.local-shadow:9080"
        );
        assert_eq!(
            shadow_authority("10.96.0.12:9080"),
            "10.96.0.12-shadow:9080"
        );
        assert_eq!(shadow_authority("[fd00::1]:80"), "[fd00::1]:80");
    }

    #[test]
    fn shadow_requests_in_both_forms() {
        let h1 = Request::builder()
            .uri("/ratings/1?x=1")
            .header(header::HOST, "ratings:9080")
            .header("x-request-id", "abc")
            .body(RequestBody::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        let r = shadow_request(h1, false).unwrap_or_else(|| panic!("no shadow"));
        assert_eq!(r.uri(), "/ratings/1?x=1");
        assert_eq!(r.headers()[header::HOST], "ratings-shadow:9080");
        assert_eq!(r.headers()["x-request-id"], "abc");
        assert_eq!(r.version(), Version::HTTP_11);

        let h2 = Request::builder()
            .uri("http://ratings:9080/ratings/1")
            .version(Version::HTTP_2)
            .body(RequestBody::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        let r = shadow_request(h2, true).unwrap_or_else(|| panic!("no shadow"));
        assert_eq!(r.uri(), "http://ratings-shadow:9080/ratings/1");
        assert!(r.headers().get(header::HOST).is_none());

        // An HTTP/1.1 request to an h2 mirror (a gateway's cluster of its own protocol).
        let h1 = Request::builder()
            .uri("/")
            .header(header::HOST, "ratings")
            .body(RequestBody::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        let r = shadow_request(h1, true).unwrap_or_else(|| panic!("no shadow"));
        assert_eq!(r.uri(), "http://ratings-shadow/");
        assert_eq!(r.version(), Version::HTTP_2);

        let none = Request::builder()
            .uri("/")
            .body(RequestBody::empty())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(shadow_request(none, false).is_none());
    }
}
