//! One accepted connection, start to end: find where it was going, refuse loops,
//! connect upstream (inbound from the passthrough source), copy both ways with
//! half-close, count, log.

use std::io::{self, Write as _};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::{TcpSocket, TcpStream};
use tracing::{debug, info, warn};

use crate::cli::{AccessLogFormat, Config, CopyMode};
use crate::metrics::{
    ConnectErrorKind, Direction, Metrics, RefusalReason, ResponseFlags, TcpSeries,
};
use crate::orig_dst::OriginalDst;
use crate::splice::{SpliceEnd, splice_one_way};

/// Size of the per-thread scratch buffer of buffered mode. Connections own no buffer
/// of their own: only bytes the destination could not take at once are kept per
/// connection, and only until they drain, so idle connections cost nothing.
const SCRATCH_SIZE: usize = 128 * 1024;

/// Adaptive mode reads at most this much through the scratch buffer (so only this much
/// of it is ever touched); a read that fills it marks the direction as bulk, which then
/// moves to `splice(2)`.
const ADAPTIVE_READ: usize = 16 * 1024;

/// Reads shorter than this (and shorter than asked for) are taken as "the socket is
/// drained", saving the `read` that would return EAGAIN.
const SMALL_READ: usize = 16 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// What every connection handler shares.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub orig_dst: Arc<dyn OriginalDst>,
    /// The addresses our capture listeners are really bound to.
    pub own_listeners: Vec<SocketAddr>,
}

/// Connecting upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("binding passthrough source {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[source] io::Error),
}

impl ConnectError {
    pub fn kind(&self) -> ConnectErrorKind {
        match self {
            ConnectError::Bind { .. } => ConnectErrorKind::Bind,
            ConnectError::Timeout(_) => ConnectErrorKind::Timeout,
            ConnectError::Io(e) => match e.kind() {
                io::ErrorKind::ConnectionRefused => ConnectErrorKind::Refused,
                io::ErrorKind::ConnectionReset => ConnectErrorKind::Reset,
                io::ErrorKind::TimedOut => ConnectErrorKind::Timeout,
                io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
                    ConnectErrorKind::Unreachable
                }
                _ => ConnectErrorKind::Other,
            },
        }
    }
}

/// Is `orig` (seen on a connection accepted at `local`) one of our own listeners?
/// Forwarding it would connect the proxy to itself, forever.
pub fn is_own_listener(orig: SocketAddr, local: SocketAddr, listeners: &[SocketAddr]) -> bool {
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

/// Connects to `dst`: outbound directly, inbound from the passthrough source address
/// (127.0.0.6 or ::6), which the capture rules let through.
pub async fn connect(
    direction: Direction,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let socket = match dst {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(ConnectError::Io)?;
    // The proxy must not add Nagle delays of its own: the apps' sockets decide.
    let _ = socket.set_nodelay(true);
    if direction == Direction::Inbound {
        let addr = SocketAddr::new(mesh_common::inbound_passthrough_for(dst.ip()), 0);
        socket
            .bind(addr)
            .map_err(|source| ConnectError::Bind { addr, source })?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(dst))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
        .map_err(ConnectError::Io)?;
    Ok(stream)
}

/// Closes `stream` with a reset (SO_LINGER 0), as a refused connection would look.
pub fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// How a forwarded connection ended.
#[derive(Debug)]
pub struct Transfer {
    /// Client to upstream bytes delivered.
    pub received: u64,
    /// Upstream to client bytes delivered.
    pub sent: u64,
    /// The first error that ended it (a reset, usually); None for a clean close.
    pub error: Option<io::Error>,
}

/// Copies both ways until both directions reach end of stream; each direction ends on
/// its own and half-closes the other side. An error in either direction resets both
/// sockets, so a reset propagates as one.
pub async fn duplex(
    client: &TcpStream,
    upstream: &TcpStream,
    mode: CopyMode,
    series: &TcpSeries,
) -> Transfer {
    let received = AtomicU64::new(0);
    let sent = AtomicU64::new(0);
    let error = {
        let up = one_way(client, upstream, mode, &series.received, &received);
        let down = one_way(upstream, client, mode, &series.sent, &sent);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        let mut error = None;
        while !(up_done && down_done) {
            // A finished direction half-closes its destination, unless the other
            // direction is finished too: then both sockets are about to be closed, and
            // close(2) sends the same FIN (nothing is left unread: the other side's
            // EOF has been read), saving a `shutdown` per connection.
            let r = tokio::select! {
                r = &mut up, if !up_done => {
                    up_done = true;
                    r.and_then(|()| if down_done { Ok(()) } else { half_close(upstream) })
                }
                r = &mut down, if !down_done => {
                    down_done = true;
                    r.and_then(|()| if up_done { Ok(()) } else { half_close(client) })
                }
            };
            if let Err(e) = r {
                error = Some(e);
                break;
            }
        }
        error
    };
    if error.is_some() {
        for s in [client, upstream] {
            let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
        }
    }
    Transfer {
        received: received.load(Ordering::Relaxed),
        sent: sent.load(Ordering::Relaxed),
        error,
    }
}

/// Sends a FIN to `to`: no more bytes are coming its way.
fn half_close(to: &TcpStream) -> io::Result<()> {
    match SockRef::from(to).shutdown(Shutdown::Write) {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
        _ => Ok(()),
    }
}

/// One direction to end of stream (the caller half-closes the destination).
async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    mode: CopyMode,
    counter: &AtomicU64,
    total: &AtomicU64,
) -> io::Result<()> {
    let spliced = match mode {
        CopyMode::Splice => true,
        CopyMode::Buffered => {
            buffered_one_way(from, to, counter, total, SCRATCH_SIZE, false).await?;
            false
        }
        CopyMode::Adaptive => {
            buffered_one_way(from, to, counter, total, ADAPTIVE_READ, true).await?
                == BufferedEnd::Bulk
        }
    };
    if spliced {
        match splice_one_way(from, to, counter, total).await? {
            SpliceEnd::Eof(_) => {}
            SpliceEnd::NoPipe(e) => {
                debug!(error = %e, "no pipe for splice, copying through a buffer");
                buffered_one_way(from, to, counter, total, SCRATCH_SIZE, false).await?;
            }
        }
    }
    Ok(())
}

/// Why [`buffered_one_way`] returned.
#[derive(Debug, PartialEq, Eq)]
enum BufferedEnd {
    /// The source reached end of stream.
    Eof,
    /// A read filled the whole buffer and everything read has been delivered: a bulk
    /// transfer, better spliced (only when asked to stop for it).
    Bulk,
}

/// Copies through the thread's scratch buffer, reading at most `read_size` at a time.
/// With `stop_on_bulk`, returns [`BufferedEnd::Bulk`] after a read that filled
/// `read_size`, once its bytes are delivered.
async fn buffered_one_way(
    from: &TcpStream,
    to: &TcpStream,
    counter: &AtomicU64,
    total: &AtomicU64,
    read_size: usize,
    stop_on_bulk: bool,
) -> io::Result<BufferedEnd> {
    let mut bulk = false;
    let count = |m: usize| {
        counter.fetch_add(m as u64, Ordering::Relaxed);
        total.fetch_add(m as u64, Ordering::Relaxed);
    };
    // Bytes read but not yet accepted by `to`; empty (and unallocated) almost always.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        while !pending.is_empty() {
            to.writable().await?;
            match to.try_write(&pending) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => {
                    pending.drain(..m);
                    count(m);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        pending = Vec::new(); // give the memory back while idle
        if bulk && stop_on_bulk {
            return Ok(BufferedEnd::Bulk);
        }
        from.readable().await?;
        // Read into the thread's scratch buffer and write straight on; only what the
        // destination cannot take now is kept, per connection, until it drains.
        let step = SCRATCH.with_borrow_mut(|scratch| -> io::Result<Option<usize>> {
            let buf = &mut scratch[..read_size.min(SCRATCH_SIZE)];
            let mut got = None;
            // A short read means the socket's receive queue is empty now (epoll(7)):
            // for a small message, report it as WouldBlock to `try_io`, which then
            // clears the readiness (unless an event arrived meanwhile), so the next read
            // waits for new data instead of costing a `read` that returns EAGAIN.
            // After a large read more is likely on its way: read again at once.
            let r = from.try_io(Interest::READABLE, || {
                let n = from.try_read(buf)?;
                got = Some(n);
                if n > 0 && n < buf.len().min(SMALL_READ) {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            let n = match (got, r) {
                (Some(n), _) => n,
                (None, Err(e)) => return Err(e),
                (None, Ok(())) => return Err(io::ErrorKind::WouldBlock.into()),
            };
            if n == 0 {
                return Ok(None);
            }
            let mut off = 0;
            while off < n {
                match to.try_write(&buf[off..n]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(m) => {
                        off += m;
                        count(m);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            pending.extend_from_slice(&buf[off..n]);
            Ok(Some(n))
        });
        match step {
            Ok(Some(n)) => bulk = n >= read_size,
            Ok(None) => return Ok(BufferedEnd::Eof),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Handles one accepted connection (accepted by the listener bound to `listen_addr`,
/// whose sockets are `TCP_NODELAY` already) to the end.
pub async fn handle(
    shared: Arc<Shared>,
    client: TcpStream,
    peer: SocketAddr,
    listen_addr: SocketAddr,
    direction: Direction,
) {
    let started = SystemTime::now();
    let clock = Instant::now();
    let metrics = &shared.metrics;
    let orig = match shared.orig_dst.original_dst(&client, listen_addr) {
        Ok(orig) => orig,
        Err(e) => {
            warn!(error = %e, "no original destination; refusing");
            metrics.refused(direction, RefusalReason::NoOriginalDst);
            reset(client);
            return;
        }
    };
    // A loop needs the original port to be one of our listeners' ports; only then is
    // the connection's own local address (after REDIRECT) worth a `getsockname`.
    if shared.own_listeners.iter().any(|l| l.port() == orig.port()) {
        let local = client.local_addr().unwrap_or(listen_addr);
        if is_own_listener(orig, local, &shared.own_listeners) {
            warn!(dst = %orig, "original destination is the proxy's own listener; refusing");
            metrics.refused(direction, RefusalReason::Loop);
            reset(client);
            return;
        }
    }
    let connect_started = Instant::now();
    let upstream = match connect(direction, orig, shared.config.connect_timeout).await {
        Ok(u) => u,
        Err(e) => {
            let kind = e.kind();
            info!(dst = %orig, error = %e, "upstream connect failed; resetting client");
            metrics.connect_error(direction, kind);
            let series = metrics.tcp_series(direction, orig.port(), ResponseFlags::UpstreamFailure);
            series.opened.fetch_add(1, Ordering::Relaxed);
            series.closed.fetch_add(1, Ordering::Relaxed);
            reset(client);
            access_log(
                &shared.config,
                &LogLine {
                    started,
                    duration: clock.elapsed(),
                    direction,
                    peer,
                    orig,
                    upstream_local: None,
                    received: 0,
                    sent: 0,
                    flags: ResponseFlags::UpstreamFailure,
                    error: Some(kind.as_str()),
                },
            );
            return;
        }
    };
    metrics.connect_latency(direction, connect_started.elapsed());
    let upstream_local = if shared.config.access_log.is_some() {
        upstream.local_addr().ok()
    } else {
        None
    };
    debug!(dst = %orig, "connected upstream");
    let series = metrics.tcp_series(direction, orig.port(), ResponseFlags::None);
    series.opened.fetch_add(1, Ordering::Relaxed);
    let transfer = duplex(&client, &upstream, shared.config.copy_mode, &series).await;
    series.closed.fetch_add(1, Ordering::Relaxed);
    debug!(
        received = transfer.received,
        sent = transfer.sent,
        error = transfer.error.as_ref().map(tracing::field::display),
        "connection closed"
    );
    access_log(
        &shared.config,
        &LogLine {
            started,
            duration: clock.elapsed(),
            direction,
            peer,
            orig,
            upstream_local,
            received: transfer.received,
            sent: transfer.sent,
            flags: ResponseFlags::None,
            error: transfer.error.as_ref().map(|e| error_kind(e)),
        },
    );
}

fn error_kind(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ConnectionReset => "reset",
        io::ErrorKind::BrokenPipe => "broken_pipe",
        io::ErrorKind::TimedOut => "timeout",
        _ => "other",
    }
}

/// One access-log record.
#[derive(Debug)]
pub struct LogLine {
    pub started: SystemTime,
    pub duration: Duration,
    pub direction: Direction,
    pub peer: SocketAddr,
    pub orig: SocketAddr,
    pub upstream_local: Option<SocketAddr>,
    pub received: u64,
    pub sent: u64,
    pub flags: ResponseFlags,
    pub error: Option<&'static str>,
}

impl LogLine {
    /// The JSON object, on one line. Every value is a number, an address or a fixed
    /// word, so none needs escaping.
    pub fn to_json(&self) -> String {
        let start_ms = self
            .started
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let upstream = self
            .upstream_local
            .map(|a| format!("\"{a}\""))
            .unwrap_or_else(|| "null".to_owned());
        let error = self
            .error
            .map(|e| format!("\"{e}\""))
            .unwrap_or_else(|| "null".to_owned());
        format!(
            "{{\"start_time_ms\":{start_ms},\"duration_ms\":{},\"direction\":\"{}\",\"downstream_peer\":\"{}\",\"original_dst\":\"{}\",\"upstream_local\":{upstream},\"bytes_received\":{},\"bytes_sent\":{},\"response_flags\":\"{}\",\"error\":{error}}}",
            self.duration.as_millis(),
            self.direction,
            self.peer,
            self.orig,
            self.received,
            self.sent,
            self.flags.as_str(),
        )
    }
}

fn access_log(config: &Config, line: &LogLine) {
    if config.access_log == Some(AccessLogFormat::Json) {
        let mut text = line.to_json();
        text.push('\n');
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loop_detection() {
        let listeners = [a("0.0.0.0:15001"), a("[::]:15001"), a("0.0.0.0:15006")];
        // Redirected outbound to a real service: fine.
        assert!(!is_own_listener(
            a("198.18.1.2:80"),
            a("127.0.0.1:15001"),
            &listeners
        ));
        // Dialled the listener directly (no redirect).
        assert!(is_own_listener(
            a("198.18.0.2:15006"),
            a("198.18.0.2:15006"),
            &listeners
        ));
        // Inbound to the pod's own IP on the outbound port.
        assert!(is_own_listener(
            a("198.18.0.2:15001"),
            a("198.18.0.2:15006"),
            &listeners
        ));
        // Loopback on a capture port.
        assert!(is_own_listener(
            a("127.0.0.1:15006"),
            a("127.0.0.1:15001"),
            &listeners
        ));
        assert!(is_own_listener(
            a("[::1]:15001"),
            a("[::1]:15001"),
            &listeners
        ));
        // Another host's port 15001 is not us.
        assert!(!is_own_listener(
            a("198.18.1.2:15001"),
            a("127.0.0.1:15001"),
            &listeners
        ));
        // A listener bound to one address matches that address only.
        let bound = [a("127.0.0.1:40000")];
        assert!(is_own_listener(
            a("127.0.0.1:40000"),
            a("127.0.0.1:40001"),
            &bound
        ));
        assert!(!is_own_listener(
            a("127.0.0.2:40000"),
            a("127.0.0.1:40001"),
            &bound
        ));
    }

    #[test]
    fn connect_error_kinds() {
        let e = ConnectError::Io(io::ErrorKind::ConnectionRefused.into());
        assert_eq!(e.kind(), ConnectErrorKind::Refused);
        assert_eq!(
            ConnectError::Timeout(Duration::from_secs(1)).kind(),
            ConnectErrorKind::Timeout
        );
        let e = ConnectError::Io(io::ErrorKind::HostUnreachable.into());
        assert_eq!(e.kind(), ConnectErrorKind::Unreachable);
    }

    #[test]
    fn access_log_line_is_json() {
        let l = LogLine {
            started: UNIX_EPOCH + Duration::from_millis(1234),
            duration: Duration::from_millis(56),
            direction: Direction::Inbound,
            peer: a("198.18.0.1:5555"),
            orig: a("[fd00::2]:8080"),
            upstream_local: None,
            received: 10,
            sent: 20,
            flags: ResponseFlags::UpstreamFailure,
            error: Some("refused"),
        };
        assert_eq!(
            l.to_json(),
            "{\"start_time_ms\":1234,\"duration_ms\":56,\"direction\":\"inbound\",\"downstream_peer\":\"198.18.0.1:5555\",\"original_dst\":\"[fd00::2]:8080\",\"upstream_local\":null,\"bytes_received\":10,\"bytes_sent\":20,\"response_flags\":\"UF\",\"error\":\"refused\"}"
        );
    }
}
