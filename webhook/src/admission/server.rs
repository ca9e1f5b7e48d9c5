//! The HTTP side: the axum router (usable without a socket in tests) and the TLS accept
//! loop with graceful shutdown. Per-connection failures (handshake, reset, timeout) are
//! logged and end only that connection.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use tracing::Instrument as _;

use super::handler::{self, Decision, Settings};
use super::metrics::{FailureLabel, RequestResult, SkipLabel};
use super::state::AppState;

/// A TLS handshake that has not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bodies larger than this are reviewed on the blocking pool.
const LARGE_BODY: usize = 256 * 1024;
/// A client that has not sent its request headers by then is dropped. hyper counts the
/// idle time of a kept-alive connection too, so this is also the server's idle timeout: it
/// is longer than the API server's own (Go's 90 s), so that the API server is the side
/// that closes an idle connection, never racing a review it is writing on it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The routes: `POST /inject`, `GET /healthz`, `GET /readyz`, `GET /metrics`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/inject", post(inject))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            close_when_shutting_down,
        ))
        .with_state(state)
}

/// From SIGTERM on (the shutdown delay), every answer says `Connection: close`, and the
/// connection closes after it. The API server keeps connections to the webhook alive
/// through the Service's ClusterIP, pinned to this pod whatever the endpoints say; a
/// kept-alive connection closed at the end of the delay could meet a request the API
/// server was just writing on it, which then fails (`EOF`, pod creation refused under
/// failurePolicy Fail). Closing each connection right after an answer makes the API
/// server dial again for its next request, and a new dial reaches a ready replica.
async fn close_when_shutting_down(
    State(state): State<Arc<AppState>>,
    mut res: Response,
) -> Response {
    if state.is_shutting_down() {
        res.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    res
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.ready() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

fn plain(status: StatusCode, msg: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        msg,
    )
        .into_response()
}

/// Why the body could not be read.
enum BodyError {
    TooLarge,
    Timeout,
    Broken(String),
}

async fn read_body(
    body: axum::body::Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = src {
                if s.is::<http_body_util::LengthLimitError>() {
                    return Err(BodyError::TooLarge);
                }
                src = s.source();
            }
            Err(BodyError::Broken(e.to_string()))
        }
    }
}

async fn inject(State(state): State<Arc<AppState>>, req: axum::extract::Request) -> Response {
    let started = Instant::now();
    let span = tracing::info_span!(
        "admission",
        uid = tracing::field::Empty,
        namespace = tracing::field::Empty,
        name = tracing::field::Empty
    );
    let resp = answer_review(&state, req).instrument(span).await;
    state.metrics.observe_time(started.elapsed());
    resp
}

async fn answer_review(state: &AppState, req: axum::extract::Request) -> Response {
    let m = &state.metrics;
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    // Checked before reading a byte of the body.
    if !is_json(headers) {
        m.request(RequestResult::UnsupportedMediaType);
        let got = headers
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_else(|| "none".to_string());
        tracing::warn!(content_type = %got, "rejected: Content-Type must be application/json");
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/json, got {got}\n"),
        );
    }
    let body = match read_body(body, state.max_body_bytes, state.body_timeout).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            m.request(RequestResult::TooLarge);
            tracing::warn!(
                limit = state.max_body_bytes,
                "rejected: body over the limit"
            );
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than {} bytes\n", state.max_body_bytes),
            );
        }
        Err(BodyError::Timeout) => {
            m.request(RequestResult::Timeout);
            tracing::warn!(timeout = ?state.body_timeout, "rejected: request body not received in time");
            return plain(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within {:?}\n",
                    state.body_timeout
                ),
            );
        }
        Err(BodyError::Broken(e)) => {
            m.request(RequestResult::BadRequest);
            m.failure(FailureLabel::Review);
            tracing::warn!(error = %e, "rejected: cannot read the body");
            return plain(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}\n"),
            );
        }
    };
    {
        let cfg = state.config();
        let settings = Settings {
            native_sidecars: state.native_sidecars(&cfg),
        };
        let reviewed = if body.len() > LARGE_BODY {
            // Parsing megabytes takes milliseconds: keep it off the async workers so small
            // reviews and health checks are not stuck behind it.
            let cfg = cfg.clone();
            match tokio::task::spawn_blocking(move || handler::review(&body, &cfg, settings)).await
            {
                Ok(r) => r,
                Err(e) => {
                    m.failure(FailureLabel::Review);
                    tracing::error!(error = %e, "review task failed");
                    return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n".into());
                }
            }
        } else {
            handler::review(&body, &cfg, settings)
        };
        match reviewed {
            Err(e) => {
                m.request(RequestResult::BadRequest);
                m.failure(FailureLabel::Review);
                tracing::warn!(error = %e, "rejected: not an AdmissionReview");
                plain(StatusCode::BAD_REQUEST, format!("{e}\n"))
            }
            Ok(answer) => {
                let span = tracing::Span::current();
                span.record("uid", answer.subject.uid.as_str());
                span.record("namespace", answer.subject.namespace.as_str());
                span.record("name", answer.subject.name.as_str());
                for w in &answer.warnings {
                    tracing::warn!(warning = %w, "injected with a warning");
                }
                match &answer.decision {
                    Decision::Injected { operations } => {
                        m.request(RequestResult::Allowed);
                        m.success();
                        tracing::info!(
                            operations,
                            native_sidecars = settings.native_sidecars,
                            "sidecar injected"
                        );
                    }
                    Decision::Unchanged => {
                        m.request(RequestResult::Allowed);
                        m.skip(SkipLabel::Unchanged);
                        tracing::debug!("already injected with this config");
                    }
                    Decision::Skipped(why) => {
                        m.request(RequestResult::Allowed);
                        m.skip(SkipLabel::Policy);
                        tracing::debug!(reason = %why, "injection skipped");
                    }
                    Decision::NotPodCreate => {
                        m.request(RequestResult::Allowed);
                        m.skip(SkipLabel::NotPodCreate);
                        tracing::debug!("not a Pod CREATE; allowed untouched");
                    }
                    Decision::Denied(msg) => {
                        m.request(RequestResult::Denied);
                        m.failure(FailureLabel::Inject);
                        tracing::warn!(message = %msg, "pod denied");
                    }
                }
                ([(header::CONTENT_TYPE, "application/json")], answer.body).into_response()
            }
        }
    }
}

/// Accept TLS connections on `listener` and serve `router` on each until `shutdown`
/// resolves; then stop accepting and let the open connections end, for up to `grace`, and
/// return.
///
/// After `shutdown`, the server never closes a kept-alive connection while it is idle:
/// HTTP/1.1 gives a client no way to tell that close from a request it was just writing,
/// and the API server does not resend an admission review (a POST) that met an `EOF`,
/// which under failurePolicy Fail refuses the pod. Instead each connection ends after its
/// next answer, which says `Connection: close`, or when the client closes it; only what
/// is left when `grace` runs out is cut.
pub async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let span = tracing::debug_span!("conn", %peer);
                    conns.spawn(
                        connection(stream, peer, acceptor.clone(), router.clone(), stop_rx.clone())
                            .instrument(span),
                    );
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let open = conns.len();
    tracing::info!(open, grace = ?grace, "shutting down: no longer accepting; each open connection ends after its next answer");
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            left = conns.len(),
            "grace period over; closing the remaining connections"
        );
        conns.shutdown().await;
    }
    tracing::info!("stopped");
}

/// Resolves once shutdown began (or the server is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let tls = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => match r {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "TLS handshake timed out");
                return;
            }
        },
        () = stopped(&mut stop) => return,
    };
    let closing = stop.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let router = router.clone();
        let closing = closing.clone();
        async move {
            let mut res = router.oneshot(req).await.unwrap_or_else(|e| match e {});
            // Once shutdown began, this answer is the connection's last (hyper closes it
            // after writing a `Connection: close` response).
            if *closing.borrow() {
                res.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(res)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(tls), service);
    // No graceful_shutdown() here: it would close an idle connection at once (see serve).
    let result = conn.await;
    if let Err(e) = result {
        // Resets and timeouts are a normal way for a client connection to end.
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
