//! Upstream connections, pooled per endpoint: HTTP/1.1 connections kept alive and
//! reused one request at a time (a connection goes back to the pool once its response
//! has ended and hyper says it is ready again), one multiplexed h2 connection per
//! endpoint. Pools belong to one [`super::Engine`], that is one worker thread: a
//! connection's task runs on the runtime that made it.
//!
//! A request that never left (the connect or handshake failed, or a pooled connection
//! turned out closed before the request was written) comes back to the caller, which
//! may retry it elsewhere.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tracing::debug;

use super::Connector;
use super::body::RequestBody;
use crate::direction::Direction;

/// Idle HTTP/1.1 connections kept per endpoint; more are closed.
const MAX_IDLE_PER_ENDPOINT: usize = 32;
/// How long a connection handed back may take to become ready again.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Which pool: the endpoint, the direction (their connectors differ), the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub addr: SocketAddr,
    pub direction: Direction,
    pub h2: bool,
}

type H1 = http1::SendRequest<RequestBody>;
type H2 = http2::SendRequest<RequestBody>;

/// Why a request got no response head.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The request was not sent (connect or handshake failed): here it is back.
    Connect(io::Error, Box<Request<RequestBody>>),
    /// Sent, at least in part, then the connection failed before the response head.
    Failed(hyper::Error),
}

/// The connection pools of one worker.
#[derive(Debug, Default)]
pub(crate) struct Pools {
    h1: Mutex<HashMap<PoolKey, Vec<H1>>>,
    h2: Mutex<HashMap<PoolKey, H2>>,
    pub connects: AtomicU64,
    pub reused: AtomicU64,
}

impl Pools {
    fn take_h1(&self, key: &PoolKey) -> Option<H1> {
        let mut map = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        let idle = map.get_mut(key)?;
        let mut found = None;
        while let Some(s) = idle.pop() {
            if s.is_ready() {
                found = Some(s);
                break;
            }
        }
        if idle.is_empty() {
            map.remove(key);
        }
        found
    }

    /// Hands an HTTP/1.1 connection back once its response has ended. It re-enters the
    /// pool when hyper says it can take a request again (at once if it already can).
    pub(crate) fn give_back(self: &std::sync::Arc<Self>, key: PoolKey, mut s: H1) {
        if s.is_ready() {
            self.put_h1(key, s);
            return;
        }
        if s.is_closed() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pools = self.clone();
        rt.spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(READY_TIMEOUT, s.ready()).await {
                pools.put_h1(key, s);
            }
        });
    }

    fn put_h1(&self, key: PoolKey, s: H1) {
        let mut map = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        let idle = map.entry(key).or_default();
        idle.retain(|s| !s.is_closed());
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push(s);
        }
    }

    fn get_h2(&self, key: &PoolKey) -> Option<H2> {
        let mut map = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    fn forget_h2(&self, key: &PoolKey) {
        let mut map = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(key).is_some_and(|s| s.is_closed()) {
            map.remove(key);
        }
    }

    /// Idle HTTP/1.1 connections plus live h2 connections.
    pub(crate) fn idle(&self) -> usize {
        let h1: usize = self
            .h1
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|v| v.iter().filter(|s| !s.is_closed()).count())
            .sum();
        let h2 = self
            .h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| !s.is_closed())
            .count();
        h1 + h2
    }

    async fn dial(
        &self,
        connector: &dyn Connector,
        addr: SocketAddr,
    ) -> io::Result<TokioIo<super::BoxIo>> {
        let io = connector.connect(addr).await?;
        self.connects.fetch_add(1, Ordering::Relaxed);
        Ok(TokioIo::new(io))
    }

    /// Sends `req` to `key`'s endpoint, on a pooled connection if one is ready, else on a
    /// new one. For HTTP/1.1 the connection comes back with the response, for the
    /// caller to [`Pools::give_back`] when the response body has ended.
    pub(crate) async fn send(
        &self,
        connector: &dyn Connector,
        key: PoolKey,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Option<H1>), SendError> {
        if key.h2 {
            if let Some(mut s) = self.get_h2(&key) {
                self.reused.fetch_add(1, Ordering::Relaxed);
                match s.try_send_request(req).await {
                    Ok(resp) => return Ok((resp, None)),
                    Err(mut e) => match e.take_message() {
                        Some(back) => {
                            self.forget_h2(&key);
                            req = back;
                        }
                        None => return Err(SendError::Failed(e.into_error())),
                    },
                }
            }
            let io = match self.dial(connector, key.addr).await {
                Ok(io) => io,
                Err(e) => return Err(SendError::Connect(e, Box::new(req))),
            };
            let (mut s, conn) = match http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
            {
                Ok(x) => x,
                Err(e) => return Err(SendError::Connect(io::Error::other(e), Box::new(req))),
            };
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!(error = %e, "upstream h2 connection ended");
                }
            });
            self.h2
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, s.clone());
            return match s.try_send_request(req).await {
                Ok(resp) => Ok((resp, None)),
                Err(mut e) => match e.take_message() {
                    Some(back) => Err(SendError::Connect(
                        io::Error::other(e.into_error()),
                        Box::new(back),
                    )),
                    None => Err(SendError::Failed(e.into_error())),
                },
            };
        }
        while let Some(mut s) = self.take_h1(&key) {
            self.reused.fetch_add(1, Ordering::Relaxed);
            match s.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Some(s))),
                Err(mut e) => match e.take_message() {
                    // Closed before the request was written: try the next one.
                    Some(back) => req = back,
                    None => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
        let io = match self.dial(connector, key.addr).await {
            Ok(io) => io,
            Err(e) => return Err(SendError::Connect(e, Box::new(req))),
        };
        let (mut s, conn) = match http1::Builder::new().handshake(io).await {
            Ok(x) => x,
            Err(e) => return Err(SendError::Connect(io::Error::other(e), Box::new(req))),
        };
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "upstream connection ended");
            }
        });
        match s.try_send_request(req).await {
            Ok(resp) => Ok((resp, Some(s))),
            Err(mut e) => match e.take_message() {
                Some(back) => Err(SendError::Connect(
                    io::Error::other(e.into_error()),
                    Box::new(back),
                )),
                None => Err(SendError::Failed(e.into_error())),
            },
        }
    }
}
