//! One request/response exchange as the proxy reports it, and the response body that
//! carries it: the body counts the bytes it passes, reads `grpc-status` from trailers,
//! and when it ends (or is dropped unfinished: `DC`) the exchange is recorded once, in
//! the metrics and the access log, its upstream connection goes back to the pool and
//! its in-flight count drops. The record is made before the last frame is handed to
//! hyper, so a client that has read the whole response finds it counted.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use super::Engine;
use super::headers::{self, GRPC_MESSAGE, GRPC_STATUS};
use super::lb::InFlight;
use super::log::{self, LogFields};
use super::metrics::{Flags, PeerLabels, Principals, RequestRecord, ServiceLabels};
use super::pool::Checkout;
use super::resilience::SlotGuard;
use crate::direction::Direction;

/// What is known about one request while it runs.
pub(crate) struct Exchange {
    engine: Arc<Engine>,
    pub direction: Direction,
    pub start: Instant,
    pub started_at: SystemTime,
    pub peer: Arc<PeerLabels>,
    pub service: Arc<ServiceLabels>,
    /// The connection's principals when it is mTLS (inbound: the downstream one;
    /// outbound: the upstream one the response came on).
    pub mtls: Option<Arc<Principals>>,
    pub grpc: bool,
    pub code: u16,
    pub grpc_status: Option<u32>,
    pub flags: Flags,
    pub request_bytes: Arc<AtomicU64>,
    pub response_bytes: u64,
    pub in_flight: Option<InFlight>,
    pub conn: Option<Checkout>,
    /// The cluster's request slot (`http2MaxRequests`), held until the response ends.
    pub active: Option<SlotGuard>,
    /// Only when the access log is on.
    pub log: Option<Box<LogFields>>,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("direction", &self.direction)
            .field("code", &self.code)
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

impl Exchange {
    pub(crate) fn new(engine: Arc<Engine>, direction: Direction, start: Instant) -> Exchange {
        let peer = engine.metrics.unknown_peer();
        let service = engine.metrics.unknown_service();
        let log = engine.log.is_some().then(Box::default);
        Exchange {
            engine,
            direction,
            start,
            started_at: SystemTime::now(),
            peer,
            service,
            mtls: None,
            grpc: false,
            code: 0,
            grpc_status: None,
            flags: Flags::NONE,
            request_bytes: Arc::default(),
            response_bytes: 0,
            in_flight: None,
            conn: None,
            active: None,
            log,
        }
    }

    /// Records the exchange: metrics, access log; the connection goes back to the pool
    /// when the response ended cleanly.
    fn finish(mut self, clean: bool) {
        if self.grpc && self.grpc_status.is_none() && self.code != 0 {
            self.grpc_status = Some(headers::http_to_grpc_status(self.code));
        }
        let duration = self.start.elapsed();
        let request_bytes = self.request_bytes.load(Ordering::Relaxed);
        let metrics = &self.engine.metrics;
        metrics.record(&RequestRecord {
            direction: self.direction,
            peer: self.peer.clone(),
            service: self.service.clone(),
            mtls: self.mtls.clone(),
            grpc: self.grpc,
            code: self.code,
            grpc_status: self.grpc_status,
            flags: self.flags,
            duration,
            request_bytes,
            response_bytes: self.response_bytes,
        });
        if let (Some(sink), Some(fields)) = (&self.engine.log, &self.log) {
            let line = log::line(
                fields,
                &log::Outcome {
                    started: self.started_at,
                    direction: self.direction,
                    code: self.code,
                    flags: self.flags.to_string(),
                    received: request_bytes,
                    sent: self.response_bytes,
                    duration,
                },
            );
            sink.write(&line);
        }
        if clean && let Some(c) = self.conn.take() {
            c.give_back();
        }
    }
}

enum Inner {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

/// The body of every response the proxy sends downstream.
pub struct ResponseBody {
    inner: Inner,
    exchange: Option<Box<Exchange>>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

impl ResponseBody {
    pub(crate) fn upstream(body: Incoming, exchange: Box<Exchange>) -> ResponseBody {
        ResponseBody {
            inner: Inner::Upstream(body),
            exchange: Some(exchange),
        }
    }

    pub(crate) fn full(body: Bytes, exchange: Option<Box<Exchange>>) -> ResponseBody {
        ResponseBody {
            inner: Inner::Full((!body.is_empty()).then_some(body)),
            exchange,
        }
    }

    fn finish(&mut self, clean: bool) {
        if let Some(ex) = self.exchange.take() {
            (*ex).finish(clean);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        match &mut this.inner {
            Inner::Full(data) => {
                let frame = data.take();
                if let (Some(d), Some(ex)) = (&frame, this.exchange.as_mut()) {
                    ex.response_bytes += d.len() as u64;
                }
                this.finish(true);
                Poll::Ready(frame.map(|d| Ok(Frame::data(d))))
            }
            Inner::Upstream(body) => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                let ended = body.is_end_stream();
                match &polled {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(ex) = this.exchange.as_mut() {
                            if let Some(d) = frame.data_ref() {
                                ex.response_bytes += d.len() as u64;
                            } else if let Some(t) = frame.trailers_ref() {
                                ex.grpc_status = headers::grpc_status(t).or(ex.grpc_status);
                            }
                        }
                        if ended {
                            this.finish(true);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(ex) = this.exchange.as_mut() {
                            ex.flags |= Flags::UC;
                        }
                        this.finish(false);
                    }
                    Poll::Ready(None) => this.finish(true),
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(d) => d.is_none(),
            Inner::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(d) => SizeHint::with_exact(d.as_ref().map_or(0, |d| d.len() as u64)),
            Inner::Upstream(b) => b.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if self.exchange.is_none() {
            return;
        }
        // hyper drops a body it knows is over without polling it (HEAD, 204, empty).
        let over = self.is_end_stream();
        if !over && let Some(ex) = self.exchange.as_mut() {
            ex.flags |= Flags::DC;
        }
        self.finish(over);
    }
}

/// Envoy's body for a failed upstream connect.
pub(crate) const UF_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure";
/// Envoy's body for an upstream that broke off before its response head.
pub(crate) const UC_BODY: &str = "upstream connect error or disconnect/reset before headers. reset reason: connection termination";
pub(crate) const UH_BODY: &str = "no healthy upstream";
pub(crate) const FAULT_BODY: &str = "fault filter abort";
pub(crate) const NC_BODY: &str = "no cluster";
/// Envoy's body for a request a circuit breaker refused.
pub(crate) const UO_BODY: &str =
    "upstream connect error or disconnect/reset before headers. reset reason: overflow";
/// Envoy's body for a route (or last try) timeout.
pub(crate) const UT_BODY: &str = "upstream request timeout";

/// A response the proxy makes itself. For a gRPC request it is a trailers-only gRPC
/// response (HTTP 200, `grpc-status` from Envoy's mapping, the text as `grpc-message`)
/// unless `grpc_status` is given. The text is mostly a constant; an owned one (a
/// failure reason) costs its allocation on that failure only.
pub(crate) fn local_reply(
    mut ex: Box<Exchange>,
    status: u16,
    text: impl Into<Cow<'static, str>>,
    grpc_status: Option<u32>,
) -> Response<ResponseBody> {
    let text = text.into();
    let mut resp;
    if ex.grpc || grpc_status.is_some() {
        let g = grpc_status.unwrap_or_else(|| headers::http_to_grpc_status(status));
        resp = Response::new(ResponseBody::full(Bytes::new(), None));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(GRPC_STATUS.clone(), HeaderValue::from(g));
        let message = match &text {
            Cow::Borrowed(t) => Some(HeaderValue::from_static(t)),
            Cow::Owned(t) => HeaderValue::from_str(t).ok(),
        };
        if let Some(m) = message.filter(|m| !m.is_empty()) {
            h.insert(GRPC_MESSAGE.clone(), m);
        }
        ex.code = 200;
        ex.grpc_status = Some(g);
    } else {
        let has_text = !text.is_empty();
        let body = match text {
            Cow::Borrowed(t) => Bytes::from_static(t.as_bytes()),
            Cow::Owned(t) => Bytes::from(t),
        };
        resp = Response::new(ResponseBody::full(body, None));
        *resp.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        if has_text {
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        ex.code = resp.status().as_u16();
    }
    resp.body_mut().exchange = Some(ex);
    resp
}

/// A response with a body and status of the config's choosing (direct response) or a
/// redirect (`location`).
pub(crate) fn configured_reply(
    mut ex: Box<Exchange>,
    status: u16,
    body: Bytes,
    location: Option<HeaderValue>,
) -> Response<ResponseBody> {
    let has_body = !body.is_empty();
    let mut resp = Response::new(ResponseBody::full(body, None));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if has_body {
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    if let Some(l) = location {
        resp.headers_mut().insert(header::LOCATION, l);
    }
    ex.code = resp.status().as_u16();
    resp.body_mut().exchange = Some(ex);
    resp
}
