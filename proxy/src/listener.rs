//! Capture listeners and their accept loops: one task and one tracing span per
//! connection, a connection limit that refuses the excess, and a back-off when the
//! process runs out of file descriptors (instead of spinning on a listener that stays
//! readable).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tracing::{debug, info_span, warn};

use crate::addrs::{ClientAddr, ListenAddr};
use crate::direction::Direction;
use crate::flow::{self, Shared};
use crate::metrics::{AcceptErrorKind, Metrics, RefusalReason};
use crate::record::ConnRecord;

const LISTEN_BACKLOG: i32 = 4096;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Binds a listening socket, not yet registered with any runtime; IPv6 sockets are
/// IPv6-only so the IPv4 one can share the port. `TCP_NODELAY` is set on the listener,
/// and Linux copies it to every accepted socket, which saves a `setsockopt` per
/// connection: the proxy must not add Nagle delays of its own.
///
/// With `shared_port`, the socket joins the port's `SO_REUSEPORT` group: each worker
/// thread binds its own listener on the same address and the kernel spreads new
/// connections over them (only sockets of the same user can join the group).
pub fn bind_std(addr: SocketAddr, shared_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    if shared_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Whether binding failed because the machine (or pod) has no IPv6: with `--ipv6 auto` the
/// proxy then listens on IPv4 only.
pub(crate) fn ipv6_unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EAFNOSUPPORT | nix::libc::EADDRNOTAVAIL | nix::libc::EPROTONOSUPPORT)
    )
}

/// [`bind_std`] for a port of its own, registered with the current runtime.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr, false)?)
}

/// Counts open connections and wakes the drain when the last one ends.
#[derive(Debug, Default)]
pub struct ConnTracker {
    active: AtomicUsize,
    idle: Notify,
}

impl ConnTracker {
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until no connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Held by a connection's task for as long as the connection lives: dropped after the
/// connection's record has reported and its sockets are closed, so the drain (and a
/// test waiting for no open connections) finds everything counted and closed.
#[derive(Debug)]
pub struct ConnGuard {
    tracker: Arc<ConnTracker>,
    metrics: Arc<Metrics>,
    direction: Direction,
}

impl ConnGuard {
    fn new(tracker: Arc<ConnTracker>, metrics: Arc<Metrics>, direction: Direction) -> ConnGuard {
        tracker.active.fetch_add(1, Ordering::AcqRel);
        metrics.connection_started(direction);
        ConnGuard {
            tracker,
            metrics,
            direction,
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.metrics.connection_ended(self.direction);
        if self.tracker.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tracker.idle.notify_waiters();
        }
    }
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS | nix::libc::ENOMEM)
    )
}

/// Accepts on `listener` until the drain starts; the listener is closed on return, so
/// new connections are refused by the kernel from then on.
pub async fn accept_loop(
    listener: TcpListener,
    direction: Direction,
    shared: Arc<Shared>,
    tracker: Arc<ConnTracker>,
    mut drain: watch::Receiver<bool>,
) {
    let local = match listener.local_addr() {
        Ok(a) => ListenAddr(a),
        Err(e) => {
            warn!(error = %e, %direction, "listener has no local address");
            return;
        }
    };
    let max = shared.config.max_connections;
    let mut backoff = BACKOFF_MIN;
    loop {
        if *drain.borrow_and_update() {
            break;
        }
        let accepted = tokio::select! {
            biased;
            changed = drain.changed() => {
                if changed.is_err() {
                    break; // the proxy is gone
                }
                continue;
            }
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = BACKOFF_MIN;
                let peer = ClientAddr(peer);
                if tracker.active() >= max {
                    debug!(%peer, %direction, max, "connection limit reached; refusing");
                    ConnRecord::accepted(&shared, direction, peer)
                        .refuse(RefusalReason::Limit, None);
                    flow::reset(stream);
                    continue;
                }
                let guard = ConnGuard::new(tracker.clone(), shared.metrics.clone(), direction);
                let span = info_span!("conn", %direction, %peer);
                flow::spawn(shared.clone(), stream, peer, local, direction, guard, span);
            }
            Err(e) if is_fd_exhaustion(&e) => {
                shared.metrics.accept_error(AcceptErrorKind::FdExhausted);
                warn!(error = %e, %direction, backoff_ms = backoff.as_millis() as u64, "accept: out of file descriptors; backing off");
                tokio::select! {
                    changed = drain.changed() => if changed.is_err() { break },
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            Err(e) => {
                // ECONNABORTED and friends: the next connection is unaffected.
                shared.metrics.accept_error(AcceptErrorKind::Other);
                debug!(error = %e, %direction, "accept failed");
            }
        }
    }
    debug!(%local, %direction, "listener closed for drain");
}

/// How often a gateway port that could not be bound is tried again.
const GATEWAY_BIND_RETRY: Duration = Duration::from_secs(5);

/// An ingress gateway's listeners on this thread's runtime (`--role gateway`): one
/// accept loop per port of the Gateway config and address of `--ipv6`, each in the
/// port's `SO_REUSEPORT` group (every worker thread runs this too), bound when a port
/// appears in the config and closed when it leaves (open connections go on). A port
/// that cannot be bound (taken, or below 1024 without the capability) is logged and
/// tried again. Returns once the drain has started and every accept loop has ended.
pub async fn gateway_listeners(
    shared: Arc<Shared>,
    tracker: Arc<ConnTracker>,
    mut drain: watch::Receiver<bool>,
) {
    let (Some(ips), Some(l7)) = (shared.config.gateway.clone(), shared.l7.as_ref()) else {
        return;
    };
    let mut generation = l7.store.subscribe();
    let mut bound: std::collections::BTreeMap<u16, Vec<tokio::task::JoinHandle<()>>> =
        Default::default();
    loop {
        if *drain.borrow_and_update() {
            break;
        }
        let wanted = flow::gateway::current(&l7.store)
            .map(|g| g.ports())
            .unwrap_or_default();
        bound.retain(|port, loops| {
            let keep = wanted.contains(port);
            if !keep {
                debug!(port, "gateway port left the config; closing its listener");
                loops.iter().for_each(tokio::task::JoinHandle::abort);
            }
            keep
        });
        let mut missing = false;
        let new: Vec<u16> = wanted
            .iter()
            .copied()
            .filter(|p| !bound.contains_key(p))
            .collect();
        for port in new {
            let mut loops = Vec::new();
            for &ip in &ips {
                let addr = SocketAddr::new(ip, port);
                match bind_std(addr, true).and_then(TcpListener::from_std) {
                    Ok(l) => loops.push(tokio::spawn(accept_loop(
                        l,
                        Direction::Outbound,
                        shared.clone(),
                        tracker.clone(),
                        drain.clone(),
                    ))),
                    Err(e)
                        if ip.is_ipv6() && !shared.config.ipv6_required && ipv6_unavailable(&e) =>
                    {
                        debug!(%addr, error = %e, "gateway port not bound on IPv6");
                    }
                    Err(e) => warn!(%addr, error = %e, "cannot listen on a gateway port; retrying"),
                }
            }
            if loops.is_empty() {
                missing = true;
            } else {
                debug!(port, "listening on a gateway port");
                bound.insert(port, loops);
            }
        }
        tokio::select! {
            changed = generation.changed() => if changed.is_err() { break },
            changed = drain.changed() => if changed.is_err() { break },
            () = tokio::time::sleep(GATEWAY_BIND_RETRY), if missing => {}
        }
    }
    for l in bound.into_values().flatten() {
        let _ = l.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = l.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
