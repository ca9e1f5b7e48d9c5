//! The L4 protocol: bytes both ways, unchanged, until both ends close. (Protocol
//! detection and the HTTP path will sit beside this, on the same connections.)

use std::io;
use std::time::Duration;

use super::Shared;
use crate::copy::{self, Io, Meters};

/// Copies between `client` and `upstream` until both directions end. The caller closes
/// both sockets (by dropping them) after recording the end, so whoever sees them close
/// finds the connection counted.
///
/// A plain function returning the copy's future, not an `async fn`: another layer would
/// keep its own copy of these arguments in every connection's task.
pub(super) fn forward<'a, A: Io, B: Io>(
    shared: &Shared,
    client: &'a mut A,
    upstream: &'a mut B,
    meters: &'a Meters<'a>,
) -> impl Future<Output = io::Result<()>> + 'a {
    copy::duplex(client, upstream, shared.config.copy_mode, meters)
}

/// [`forward`], ended when no byte moved either way for `idle` (a cluster's
/// `tcp.idleTimeout`): both sockets are then closed by the caller, as Envoy's TCP proxy
/// does. The watchdog wakes once per `idle` (at most), only on such connections.
pub(super) async fn forward_idle<A: Io, B: Io>(
    shared: &Shared,
    client: &mut A,
    upstream: &mut B,
    meters: &Meters<'_>,
    idle: Duration,
) -> io::Result<()> {
    let copy = forward(shared, client, upstream, meters);
    tokio::pin!(copy);
    let moved = || meters.received.total() + meters.sent.total();
    let mut seen = moved();
    loop {
        tokio::select! {
            r = copy.as_mut() => return r,
            () = tokio::time::sleep(idle) => {
                let now = moved();
                if now == seen {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
                }
                seen = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::access_log::AccessLog;
    use crate::config::{AccessLogFormat, Config};
    use crate::copy::Meter;
    use crate::metrics::Metrics;
    use crate::orig_dst::FixedOriginalDst;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    #[tokio::test]
    async fn an_idle_connection_ends_after_the_idle_timeout_and_a_busy_one_does_not() {
        let shared = Shared {
            config: Config::loopback(),
            metrics: Arc::new(Metrics::new(crate::config::Identity::unknown())),
            orig_dst: Arc::new(FixedOriginalDst("127.0.0.1:1".parse().unwrap())),
            own_listeners: Vec::new(),
            access_log: AccessLog::capture(AccessLogFormat::Json).0,
            l7: None,
            drain: tokio::sync::watch::channel(false).1,
        };
        let (mut app, mut client) = pair().await;
        let (mut upstream, mut server) = pair().await;
        let counters: [AtomicU64; 4] = Default::default();
        let meters = Meters {
            received: Meter::new(&counters[0], &counters[1]),
            sent: Meter::new(&counters[2], &counters[3]),
        };
        let started = Instant::now();
        let idle = Duration::from_millis(200);
        let busy = async {
            // Traffic every 100 ms for 600 ms keeps it open; then silence ends it.
            for _ in 0..6 {
                app.write_all(b"x").await.unwrap();
                let mut b = [0u8; 1];
                server.read_exact(&mut b).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let (r, ()) = tokio::join!(
            forward_idle(&shared, &mut client, &mut upstream, &meters, idle),
            busy
        );
        let took = started.elapsed();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert!(took >= Duration::from_millis(700), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
        assert_eq!(meters.received.total(), 6);
    }
}
