//! One accepted connection, start to end. The proxy splits by direction first
//! (`outbound.rs`, `inbound.rs`: where the connection goes and how it is dialled), then
//! by protocol (`tcp.rs`, the L4 path; `http.rs`, the handoff to the HTTP engine, with
//! `detect.rs` sniffing ports that declare no protocol). The steps both directions
//! share are here: finding the original destination and refusing loops; dialling is in
//! [`connect`]. Bytes move through [`crate::copy`], and the connection's
//! [`ConnRecord`] counts and logs how it ended.

pub mod connect;
pub mod detect;
pub mod gateway;
pub mod http;
mod inbound;
mod outbound;
mod tcp;

use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::{Instrument, Span, warn};

use crate::access_log::AccessLog;
use crate::addrs::{ClientAddr, ListenAddr, LocalAddr, OrigDstAddr};
use crate::config::Config;
use crate::direction::Direction;
use crate::listener::ConnGuard;
use crate::metrics::{Metrics, RefusalReason};
use crate::orig_dst::OriginalDst;
use crate::record::ConnRecord;

pub use connect::{ConnectError, reset};

/// What every connection handler shares.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub orig_dst: Arc<dyn OriginalDst>,
    /// The addresses our capture listeners are really bound to.
    pub own_listeners: Vec<ListenAddr>,
    pub access_log: AccessLog,
    /// The L7 path, when the proxy has a control plane (`--control-plane`).
    pub l7: Option<http::L7>,
    /// Turns true when the drain starts (HTTP connections then shut down gracefully).
    pub drain: tokio::sync::watch::Receiver<bool>,
}

/// Spawns the task that handles one connection, accepted from `peer` on the
/// `direction` listener bound to `listen` (whose sockets are `TCP_NODELAY` already), to
/// the end, in `span`. `guard` is dropped last, once the connection's record has
/// reported and its sockets are closed.
///
/// Every connection's memory is mostly this task's future, so it is kept flat: the
/// direction's handler is awaited straight from the task, with no `async fn` layer in
/// between, and the record is made here and lent to the handler (an `async fn` keeps a
/// second copy of each argument it takes by value for as long as it runs).
pub fn spawn(
    shared: Arc<Shared>,
    client: TcpStream,
    peer: ClientAddr,
    listen: ListenAddr,
    direction: Direction,
    guard: ConnGuard,
    span: Span,
) {
    tokio::spawn(
        async move {
            let mut record = ConnRecord::accepted(&shared, direction, peer);
            match direction {
                // A gateway has no capture: what it accepts is the Gateway's.
                Direction::Outbound if shared.config.gateway.is_some() => {
                    gateway::handle(&shared, client, &mut record, listen).await;
                }
                Direction::Outbound => outbound::handle(&shared, client, &mut record, listen).await,
                Direction::Inbound => inbound::handle(&shared, client, &mut record, listen).await,
            }
            drop(record); // reported already, unless the handler was cut short
            drop(guard);
        }
        .instrument(span),
    );
}

/// Where `client` (accepted on `listen`) was going, unless that is nowhere or the
/// proxy itself: then why it must be refused (and the destination, when there is one).
fn original_dst(
    shared: &Shared,
    client: &TcpStream,
    listen: ListenAddr,
) -> Result<OrigDstAddr, (RefusalReason, Option<OrigDstAddr>)> {
    let orig = match shared.orig_dst.original_dst(client, listen) {
        Ok(orig) => orig,
        Err(e) => {
            warn!(error = %e, "no original destination; refusing");
            return Err((RefusalReason::NoOriginalDst, None));
        }
    };
    // A loop needs the original port to be one of our listeners' ports; only then is
    // the connection's own local address (after REDIRECT) worth a `getsockname`.
    if shared.own_listeners.iter().any(|l| l.port() == orig.port()) {
        let local = LocalAddr(client.local_addr().unwrap_or(listen.addr()));
        if is_own_listener(orig, local, &shared.own_listeners) {
            warn!(dst = %orig, "original destination is the proxy's own listener; refusing");
            return Err((RefusalReason::Loop, Some(orig)));
        }
    }
    Ok(orig)
}

/// Refuses `client`: the record counts it first, then the client sees the reset.
fn refuse(
    record: &mut ConnRecord<'_>,
    client: TcpStream,
    (reason, orig): (RefusalReason, Option<OrigDstAddr>),
) {
    record.refuse(reason, orig);
    reset(client);
}

/// Is `orig` (seen on a connection whose local end is `local`) one of our own
/// listeners? Forwarding it would connect the proxy to itself, forever.
pub fn is_own_listener(orig: OrigDstAddr, local: LocalAddr, listeners: &[ListenAddr]) -> bool {
    let (orig, local) = (orig.addr(), local.addr());
    if orig == local {
        // Not redirected at all: someone dialled the listener itself.
        return true;
    }
    listeners.iter().any(|l| {
        l.port() == orig.port()
            && (l.ip() == orig.ip()
                || (l.ip().is_unspecified()
                    && (orig.ip().is_loopback()
                        || orig.ip().is_unspecified()
                        || orig.ip() == local.ip())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn own(orig: &str, local: &str, listeners: &[ListenAddr]) -> bool {
        is_own_listener(OrigDstAddr(a(orig)), LocalAddr(a(local)), listeners)
    }

    #[test]
    fn loop_detection() {
        let listeners = ["0.0.0.0:15001", "[::]:15001", "0.0.0.0:15006"].map(|l| ListenAddr(a(l)));
        // Redirected outbound to a real service: fine.
        assert!(!own("198.18.1.2:80", "127.0.0.1:15001", &listeners));
        // Dialled the listener directly (no redirect).
        assert!(own("198.18.0.2:15006", "198.18.0.2:15006", &listeners));
        // Inbound to the pod's own IP on the outbound port.
        assert!(own("198.18.0.2:15001", "198.18.0.2:15006", &listeners));
        // Loopback on a capture port.
        assert!(own("127.0.0.1:15006", "127.0.0.1:15001", &listeners));
        assert!(own("[::1]:15001", "[::1]:15001", &listeners));
        // Another host's port 15001 is not us.
        assert!(!own("198.18.1.2:15001", "127.0.0.1:15001", &listeners));
        // A listener bound to one address matches that address only.
        let bound = [ListenAddr(a("127.0.0.1:40000"))];
        assert!(own("127.0.0.1:40000", "127.0.0.1:40001", &bound));
        assert!(!own("127.0.0.2:40000", "127.0.0.1:40001", &bound));
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;
    use crate::access_log::AccessLog;
    use crate::config::{Config, Identity};
    use crate::orig_dst::FixedOriginalDst;

    /// Every connection's memory is mostly its task's future: the L7 path (HTTP engine,
    /// sniffing) is boxed so that an L4 connection never carries its state inline.
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let shared = Shared {
            config: Config::loopback(),
            metrics: Arc::new(Metrics::new(Identity::unknown())),
            orig_dst: Arc::new(FixedOriginalDst("127.0.0.1:1".parse().unwrap())),
            own_listeners: Vec::new(),
            access_log: AccessLog::stdout(None),
            l7: None,
            drain: tokio::sync::watch::channel(false).1,
        };
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listen = ListenAddr(l.local_addr().unwrap());
        let c1 = TcpStream::connect(listen.addr()).await.unwrap();
        let c2 = TcpStream::connect(listen.addr()).await.unwrap();
        let peer = ClientAddr(c1.local_addr().unwrap());
        let mut r1 = ConnRecord::accepted(&shared, Direction::Outbound, peer);
        let mut r2 = ConnRecord::accepted(&shared, Direction::Inbound, peer);
        let out = outbound::handle(&shared, c1, &mut r1, listen);
        let inb = inbound::handle(&shared, c2, &mut r2, listen);
        let (o, i) = (std::mem::size_of_val(&out), std::mem::size_of_val(&inb));
        eprintln!("outbound handle future {o} bytes, inbound {i} bytes");
        assert!(o <= 2048 && i <= 2048, "outbound {o} B, inbound {i} B");
    }
}
