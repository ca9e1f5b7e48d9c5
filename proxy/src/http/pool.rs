//! Upstream connections, pooled per endpoint: HTTP/1.1 connections kept alive and
//! reused one request at a time (a connection goes back to the pool once its response
//! has ended and hyper says it is ready again), one multiplexed h2 connection per
//! endpoint. Pools belong to one [`super::Engine`], that is one worker thread: a
//! connection's task runs on the runtime that made it.
//!
//! A request that never left (the connect or handshake failed, or a pooled connection
//! turned out closed before the request was written) comes back to the caller, which
//! may retry it elsewhere.
//!
//! With a cluster's [`ClusterState`] and [`Limits`] (outbound to a Service), a request
//! that finds no ready connection is *pending* until one is made or freed: over
//! `http1MaxPendingRequests` it is refused at once (`SendError::Overflow`); under
//! `tcp.maxConnections` it waits for one of the cluster's connections to be freed
//! (such a cluster's connections live in one pool for all workers,
//! the pool in `LbStates`, so the limit holds for the whole proxy; as in Envoy, an
//! endpoint with no connection at all may always have one, so a limit below the
//! number of endpoints starves none);
//! `maxRequestsPerConnection` retires a connection after that many requests,
//! `http.idleTimeout` one that sat idle that long, `tcp.connectTimeout` bounds the
//! connect (and its TLS handshake).
//!
//! A connection to an endpoint that takes mTLS is made by the connector with the
//! cluster's [`TlsTarget`] and pooled under that target's key; it keeps the
//! [`Principals`] of its handshake, which every request on it reports. A failed
//! handshake is a failed connect.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tracing::debug;

use super::body::RequestBody;
use super::metrics::Principals;
use super::resilience::{ClusterState, Limits, Overflow, SlotGuard};
use super::{Alpn, Connector, TlsTarget};
use crate::config::UNKNOWN;
use crate::direction::Direction;

/// Idle HTTP/1.1 connections kept per endpoint; more are closed.
const MAX_IDLE_PER_ENDPOINT: usize = 32;
/// How long a connection handed back may take to become ready again.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Which pool: the endpoint, the direction (their connectors differ), the protocol,
/// the cluster when its limits make its connections its own (0: shared by every
/// cluster without limits), and the mTLS target ([`TlsTarget::key`]; 0: plaintext), so
/// an mTLS and a plaintext connection to one address, or two mTLS connections
/// verified against different identities, never stand in for each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub addr: SocketAddr,
    pub direction: Direction,
    pub h2: bool,
    pub scope: usize,
    pub tls: u64,
}

type H1 = http1::SendRequest<RequestBody>;
type H2 = http2::SendRequest<RequestBody>;

/// Why a request got no response head.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The request was not sent (connect or handshake failed): here it is back.
    Connect(io::Error, Box<Request<RequestBody>>),
    /// Not sent: a limit of the cluster refused it (and counted it).
    Overflow,
    /// Sent, at least in part, then the connection failed before the response head;
    /// `true` when the connection was a kept-alive one from the pool.
    Failed(hyper::Error, bool),
}

/// The limits and shared state a request is sent under, and the mTLS a new connection
/// is made with (`None`: plaintext; its key is the [`PoolKey`]'s `tls`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SendOpts<'a> {
    pub state: Option<&'a Arc<ClusterState>>,
    pub limits: &'a Limits,
    pub tls: Option<&'a TlsTarget>,
}

/// A response head, the HTTP/1.1 connection it came on (to give back once the body has
/// ended), and the principals of that connection when it is mTLS.
pub(crate) struct Sent {
    pub resp: Response<Incoming>,
    pub conn: Option<Checkout>,
    pub mtls: Option<Arc<Principals>>,
}

/// A connection's slot under `tcp.maxConnections`, shared by the connection's task
/// and whoever holds the connection: a connection retired after
/// `maxRequestsPerConnection` frees its slot at once, not when its task notices.
type ConnSlot = Arc<Mutex<Option<SlotGuard>>>;

struct IdleH1 {
    s: H1,
    mtls: Option<Arc<Principals>>,
    slot: ConnSlot,
    uses: u32,
    since: Instant,
    /// The worker thread whose runtime drives the connection: in a pool shared by
    /// workers, each prefers its own (no cross-thread wake-ups).
    owner: std::thread::ThreadId,
}

struct LiveH2 {
    s: H2,
    mtls: Option<Arc<Principals>>,
    uses: Arc<AtomicU32>,
}

/// An HTTP/1.1 connection about to be checked out.
struct Conn {
    s: H1,
    mtls: Option<Arc<Principals>>,
    slot: ConnSlot,
    uses: u32,
    owner: std::thread::ThreadId,
}

/// An HTTP/1.1 connection taken for one request; [`Checkout::give_back`] it when the
/// response has ended cleanly, drop it otherwise.
pub(crate) struct Checkout {
    pools: Arc<Pools>,
    key: PoolKey,
    s: H1,
    mtls: Option<Arc<Principals>>,
    slot: ConnSlot,
    uses: u32,
    max_uses: Option<u32>,
    state: Option<Arc<ClusterState>>,
    owner: std::thread::ThreadId,
}

impl std::fmt::Debug for Checkout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkout")
            .field("key", &self.key)
            .field("uses", &self.uses)
            .finish_non_exhaustive()
    }
}

impl Checkout {
    /// The connection goes back to its pool once hyper says it can take a request again
    /// (at once if it already can), unless it has served `maxRequestsPerConnection`.
    pub(crate) fn give_back(self) {
        let Checkout {
            pools,
            key,
            mut s,
            mtls,
            slot,
            uses,
            max_uses,
            state,
            owner,
        } = self;
        if max_uses.is_some_and(|m| uses >= m) || s.is_closed() {
            // Retired: dropping `s` closes it; its slot is free now.
            slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            return;
        }
        let put = move |pools: &Pools, s: H1| {
            pools.put_h1(key, s, mtls, slot, uses, owner);
            if let Some(st) = &state {
                st.freed.notify_waiters();
            }
        };
        if s.is_ready() {
            put(&pools, s);
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(READY_TIMEOUT, s.ready()).await {
                put(&pools, s);
            }
        });
    }
}

/// Every worker's pools, so a cluster whose limits change can close the idle
/// connections it made under the old ones ([`retire_idle`]).
fn registry() -> &'static Mutex<Vec<std::sync::Weak<Pools>>> {
    static ALL: std::sync::OnceLock<Mutex<Vec<std::sync::Weak<Pools>>>> =
        std::sync::OnceLock::new();
    ALL.get_or_init(Mutex::default)
}

/// Registers a worker's pools for [`retire_idle`].
pub(crate) fn register(p: &Arc<Pools>) {
    let mut all = registry().lock().unwrap_or_else(|p| p.into_inner());
    all.retain(|w| w.strong_count() > 0);
    all.push(Arc::downgrade(p));
}

/// Closes the idle connections (and forgets the h2 ones, which close once their
/// streams end) whose key `hit` says, in every worker's pools: a cluster's limits or
/// its TLS changed, and what it opened under the old ones must not linger (Envoy
/// drains the old cluster's pools the same way). In-flight requests are untouched.
pub(crate) fn retire_idle(hit: impl Fn(&PoolKey) -> bool) {
    let all: Vec<Arc<Pools>> = registry()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(std::sync::Weak::upgrade)
        .collect();
    for p in all {
        p.h1.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !hit(k));
        p.h2.lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !hit(k));
    }
}

/// One open connection of a key, counted in its pools while it lives.
struct OpenGuard {
    pools: std::sync::Weak<Pools>,
    key: PoolKey,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if let Some(p) = self.pools.upgrade() {
            let mut open = p.open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = open.get_mut(&self.key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    open.remove(&self.key);
                }
            }
        }
    }
}

/// What a pending request may do next.
enum Reserved {
    /// Dial a new connection, holding this slot (`None`: no connection limit).
    Dial(Option<SlotGuard>),
    /// An idle connection came back: take it.
    LookAgain,
}

/// The connection pools of one worker (or of one connection-limited cluster).
#[derive(Default)]
pub(crate) struct Pools {
    h1: Mutex<HashMap<PoolKey, Vec<IdleH1>>>,
    h2: Mutex<HashMap<PoolKey, LiveH2>>,
    /// Connections open (idle or busy) per key.
    open: Mutex<HashMap<PoolKey, usize>>,
    pub connects: AtomicU64,
    pub reused: AtomicU64,
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pools")
            .field("connects", &self.connects)
            .field("reused", &self.reused)
            .finish_non_exhaustive()
    }
}

impl Pools {
    fn take_h1(&self, key: &PoolKey, idle_timeout: Option<Duration>) -> Option<IdleH1> {
        let mut map = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        let idle = map.get_mut(key)?;
        idle.retain(|c| c.s.is_ready() && idle_timeout.is_none_or(|t| c.since.elapsed() < t));
        let me = std::thread::current().id();
        let found = match idle.iter().rposition(|c| c.owner == me) {
            Some(i) => Some(idle.swap_remove(i)),
            None => idle.pop(),
        };
        if idle.is_empty() {
            map.remove(key);
        }
        found
    }

    fn put_h1(
        &self,
        key: PoolKey,
        s: H1,
        mtls: Option<Arc<Principals>>,
        slot: ConnSlot,
        uses: u32,
        owner: std::thread::ThreadId,
    ) {
        let mut map = self.h1.lock().unwrap_or_else(|p| p.into_inner());
        let idle = map.entry(key).or_default();
        idle.retain(|c| !c.s.is_closed());
        if idle.len() < MAX_IDLE_PER_ENDPOINT {
            idle.push(IdleH1 {
                s,
                mtls,
                slot,
                uses,
                since: Instant::now(),
                owner,
            });
        }
    }

    /// The endpoint's h2 connection (and its principals), counting this request on it.
    fn get_h2(
        &self,
        key: &PoolKey,
        max_uses: Option<u32>,
    ) -> Option<(H2, Option<Arc<Principals>>)> {
        let mut map = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        let live = map.get(key)?;
        if live.s.is_closed() {
            map.remove(key);
            return None;
        }
        let n = live.uses.fetch_add(1, Ordering::Relaxed) + 1;
        let s = (live.s.clone(), live.mtls.clone());
        if max_uses.is_some_and(|m| n >= m) {
            // Its last request: new ones get a new connection.
            map.remove(key);
        }
        Some(s)
    }

    fn forget_h2(&self, key: &PoolKey) {
        let mut map = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(key).is_some_and(|l| l.s.is_closed()) {
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
            .map(|v| v.iter().filter(|c| !c.s.is_closed()).count())
            .sum();
        let h2 = self
            .h2
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|l| !l.s.is_closed())
            .count();
        h1 + h2
    }

    fn open_for(&self, key: &PoolKey) -> usize {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    /// Counts a connection open for `key` until the returned guard drops.
    fn opened(self: &Arc<Self>, key: PoolKey) -> OpenGuard {
        *self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default() += 1;
        OpenGuard {
            pools: Arc::downgrade(self),
            key,
        }
    }

    /// A new connection to `key`'s endpoint (with `tls` when asked: the ALPN of the
    /// key's protocol), and its principals when it is mTLS. `timeout`
    /// (`tcp.connectTimeout`) covers the TLS handshake too, as Envoy's does.
    async fn dial(
        &self,
        connector: &dyn Connector,
        key: &PoolKey,
        tls: Option<&TlsTarget>,
        timeout: Option<Duration>,
    ) -> io::Result<(TokioIo<super::BoxIo>, Option<Arc<Principals>>)> {
        let alpn = if key.h2 { Alpn::H2 } else { Alpn::Http11 };
        let wish = tls.map(|t| (t, alpn));
        let dialed = match timeout {
            Some(t) => tokio::time::timeout(t, connector.connect(key.addr, wish))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??,
            None => connector.connect(key.addr, wish).await?,
        };
        self.connects.fetch_add(1, Ordering::Relaxed);
        let mtls = dialed.peer_identity.map(|peer| {
            let own = connector.local_identity().unwrap_or(UNKNOWN);
            Arc::new(Principals::outbound(own, peer))
        });
        Ok((TokioIo::new(dialed.io), mtls))
    }

    /// Waits, as a pending request, until a new connection may be made for the
    /// cluster (see [`Reserved`]); `Err` when the pending limit refuses the request.
    async fn reserve(
        &self,
        key: &PoolKey,
        opts: &SendOpts<'_>,
        pending: &mut Option<SlotGuard>,
    ) -> Result<Reserved, Overflow> {
        let Some(state) = opts.state else {
            return Ok(Reserved::Dial(None));
        };
        if pending.is_none() {
            match state.pending(opts.limits) {
                Ok(g) => *pending = Some(g),
                Err(o) => {
                    let limit = opts.limits.max_pending.unwrap_or(0);
                    state.overflowed(o, limit);
                    return Err(o);
                }
            }
        }
        if opts.limits.max_connections.is_none() {
            return Ok(Reserved::Dial(None));
        }
        loop {
            let freed = state.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(g) = state.connection(opts.limits) {
                return Ok(Reserved::Dial(Some(g)));
            }
            // As Envoy: an endpoint with no connection at all may always have one, so
            // a limit below the number of endpoints cannot starve one of them.
            if self.open_for(key) == 0 {
                return Ok(Reserved::Dial(state.connection(&Limits::default())));
            }
            let idle_back = if key.h2 {
                self.h2
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(key)
            } else {
                self.h1
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(key)
                    .is_some_and(|v| !v.is_empty())
            };
            if idle_back {
                return Ok(Reserved::LookAgain);
            }
            freed.await;
        }
    }

    /// Sends `req` to `key`'s endpoint, on a pooled connection if one is ready, else on a
    /// new one (see the module docs for limits). For HTTP/1.1 the connection comes back
    /// with the response, for the caller to [`Checkout::give_back`] when the response
    /// body has ended.
    pub(crate) async fn send(
        self: &Arc<Self>,
        connector: &dyn Connector,
        key: PoolKey,
        mut req: Request<RequestBody>,
        opts: SendOpts<'_>,
    ) -> Result<Sent, SendError> {
        let max_uses = opts.limits.max_requests_per_connection;
        let mut pending: Option<SlotGuard> = None;
        let slot = loop {
            if key.h2 {
                if let Some((mut s, mtls)) = self.get_h2(&key, max_uses) {
                    self.reused.fetch_add(1, Ordering::Relaxed);
                    match s.try_send_request(req).await {
                        Ok(resp) => {
                            return Ok(Sent {
                                resp,
                                conn: None,
                                mtls,
                            });
                        }
                        Err(mut e) => match e.take_message() {
                            Some(back) => {
                                self.forget_h2(&key);
                                req = back;
                            }
                            None => return Err(SendError::Failed(e.into_error(), true)),
                        },
                    }
                }
            } else {
                while let Some(mut c) = self.take_h1(&key, opts.limits.idle_timeout) {
                    self.reused.fetch_add(1, Ordering::Relaxed);
                    match c.s.try_send_request(req).await {
                        Ok(resp) => {
                            let mtls = c.mtls.clone();
                            let out = Conn {
                                s: c.s,
                                mtls: c.mtls,
                                slot: c.slot,
                                uses: c.uses + 1,
                                owner: c.owner,
                            };
                            return Ok(Sent {
                                resp,
                                conn: Some(self.checkout(key, out, &opts)),
                                mtls,
                            });
                        }
                        Err(mut e) => match e.take_message() {
                            // Closed before the request was written: try the next one.
                            Some(back) => req = back,
                            None => return Err(SendError::Failed(e.into_error(), true)),
                        },
                    }
                }
            }
            match self.reserve(&key, &opts, &mut pending).await {
                Ok(Reserved::Dial(slot)) => break Arc::new(Mutex::new(slot)),
                Ok(Reserved::LookAgain) => continue,
                Err(_) => return Err(SendError::Overflow),
            }
        };
        // Counted from now: a request for the same endpoint meanwhile sees it.
        let counted = self.opened(key);
        let (io, mtls) = match self
            .dial(connector, &key, opts.tls, opts.limits.connect_timeout)
            .await
        {
            Ok(x) => x,
            Err(e) => return Err(SendError::Connect(e, Box::new(req))),
        };
        if key.h2 {
            let (mut s, conn) = match http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
            {
                Ok(x) => x,
                Err(e) => return Err(SendError::Connect(io::Error::other(e), Box::new(req))),
            };
            drop(pending);
            tokio::spawn(async move {
                let _slot = slot;
                let _counted = counted;
                if let Err(e) = conn.await {
                    debug!(error = %e, "upstream h2 connection ended");
                }
            });
            if max_uses.is_none_or(|m| m > 1) {
                self.h2.lock().unwrap_or_else(|p| p.into_inner()).insert(
                    key,
                    LiveH2 {
                        s: s.clone(),
                        mtls: mtls.clone(),
                        uses: Arc::new(AtomicU32::new(1)),
                    },
                );
                // Requests that waited while it was being made can share it.
                if let Some(st) = opts.state {
                    st.freed.notify_waiters();
                }
            }
            return match s.try_send_request(req).await {
                Ok(resp) => Ok(Sent {
                    resp,
                    conn: None,
                    mtls,
                }),
                Err(mut e) => match e.take_message() {
                    Some(back) => Err(SendError::Connect(
                        io::Error::other(e.into_error()),
                        Box::new(back),
                    )),
                    None => Err(SendError::Failed(e.into_error(), false)),
                },
            };
        }
        let (mut s, conn) = match http1::Builder::new().handshake(io).await {
            Ok(x) => x,
            Err(e) => return Err(SendError::Connect(io::Error::other(e), Box::new(req))),
        };
        drop(pending);
        let task_slot = slot.clone();
        tokio::spawn(async move {
            let _slot = task_slot;
            let _counted = counted;
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "upstream connection ended");
            }
        });
        match s.try_send_request(req).await {
            Ok(resp) => {
                let out = Conn {
                    s,
                    mtls: mtls.clone(),
                    slot,
                    uses: 1,
                    owner: std::thread::current().id(),
                };
                Ok(Sent {
                    resp,
                    conn: Some(self.checkout(key, out, &opts)),
                    mtls,
                })
            }
            Err(mut e) => match e.take_message() {
                Some(back) => Err(SendError::Connect(
                    io::Error::other(e.into_error()),
                    Box::new(back),
                )),
                None => Err(SendError::Failed(e.into_error(), false)),
            },
        }
    }

    fn checkout(self: &Arc<Self>, key: PoolKey, c: Conn, opts: &SendOpts<'_>) -> Checkout {
        Checkout {
            pools: self.clone(),
            key,
            s: c.s,
            mtls: c.mtls,
            slot: c.slot,
            uses: c.uses,
            max_uses: opts.limits.max_requests_per_connection,
            state: opts.state.cloned(),
            owner: c.owner,
        }
    }
}
