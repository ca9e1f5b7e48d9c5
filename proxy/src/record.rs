//! One [`ConnRecord`] per accepted connection. It is the only place that counts how a
//! connection ended and writes its access-log line, and it does both exactly once:
//! when the flow tells it how the connection ended (refused, upstream connect failed,
//! closed), or else when it is dropped (the connection's task was cut short, e.g. by the
//! proxy exiting after its drain timeout). A second ending is ignored (and a bug, which
//! debug builds report).
//!
//! The flow tells the record before it closes the sockets, so whoever sees a connection
//! close finds it counted.
//!
//! ```text
//! accepted ──► refuse(reason)            refused_connections_total; log NR / OM
//!          ──► connect_failed(kind)      connect_errors_total, the UF series; log UF
//!          ──► connected(..) ─► closed()  connect latency, opened; bytes as they pass;
//!                                         closed; log
//!          ──► (dropped)                 closed if it was open; log error "aborted"
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tracing::debug;

use crate::access_log::LogLine;
use crate::addrs::{ClientAddr, OrigDstAddr};
use crate::copy::{Meter, Meters};
use crate::direction::Direction;
use crate::flow::Shared;
use crate::metrics::{ConnectErrorKind, RefusalReason, ResponseFlags, TcpPeer, TcpSeries};

/// How the connection ended.
#[derive(Clone, Copy, Debug)]
enum End {
    /// Never told: dropped before it ended (the proxy is shutting down).
    Unfinished,
    Refused(RefusalReason),
    ConnectFailed(ConnectErrorKind),
    /// The destination cluster's `tcp.maxConnections` refused it.
    Overflow,
    /// Both directions ended; the error that ended it, if any.
    Closed(Option<CloseError>),
}

/// What broke a connection off, in the access log's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CloseError {
    Reset,
    BrokenPipe,
    Timeout,
    Other,
}

impl CloseError {
    fn of(e: &io::Error) -> CloseError {
        match e.kind() {
            io::ErrorKind::ConnectionReset => CloseError::Reset,
            io::ErrorKind::BrokenPipe => CloseError::BrokenPipe,
            io::ErrorKind::TimedOut => CloseError::Timeout,
            _ => CloseError::Other,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            CloseError::Reset => "reset",
            CloseError::BrokenPipe => "broken_pipe",
            CloseError::Timeout => "timeout",
            CloseError::Other => "other",
        }
    }
}

/// What one connection did; reports on drop (see the module docs).
///
/// It borrows what the connection's task shares with the others, and lives inside that
/// task's future, so it is kept small: no clock reading it does not need (the wall
/// clock start is worked out when the line is written), no reference count.
#[derive(Debug)]
pub struct ConnRecord<'a> {
    shared: &'a Shared,
    direction: Direction,
    client: ClientAddr,
    /// When the connection was accepted.
    clock: Instant,
    orig: Option<OrigDstAddr>,
    upstream_local: Option<SocketAddr>,
    /// The Istio series, once connected upstream (its `opened` counted).
    series: Option<Arc<TcpSeries>>,
    /// The other side and Service, when mesh-control said (labels of the series).
    peer: Option<Arc<TcpPeer>>,
    /// Reported already: nothing more is counted or logged.
    reported: bool,
    /// Client to upstream bytes delivered.
    received: AtomicU64,
    /// Upstream to client bytes delivered.
    sent: AtomicU64,
}

impl<'a> ConnRecord<'a> {
    /// A connection just accepted from `client` on a `direction` listener.
    pub fn accepted(shared: &'a Shared, direction: Direction, client: ClientAddr) -> Self {
        ConnRecord {
            shared,
            direction,
            client,
            clock: Instant::now(),
            orig: None,
            upstream_local: None,
            series: None,
            peer: None,
            reported: false,
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }
    }

    pub fn direction(&self) -> Direction {
        self.direction
    }

    pub fn client(&self) -> ClientAddr {
        self.client
    }

    /// Bytes delivered so far: (client to upstream, upstream to client).
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.received.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed),
        )
    }

    /// Turned away before any upstream connect (`orig` when it is known). The caller
    /// resets the client after this, so the count is there before the client can see it.
    pub fn refuse(&mut self, reason: RefusalReason, orig: Option<OrigDstAddr>) {
        if !self.reported {
            self.orig = orig;
        }
        self.finish(End::Refused(reason));
    }

    /// Connecting to `orig` failed.
    pub fn connect_failed(&mut self, orig: OrigDstAddr, kind: ConnectErrorKind) {
        if !self.reported {
            self.orig = Some(orig);
        }
        self.finish(End::ConnectFailed(kind));
    }

    /// Refused before connecting to `orig`: its cluster's connection limit is reached.
    pub fn overflowed(&mut self, orig: OrigDstAddr) {
        if !self.reported {
            self.orig = Some(orig);
        }
        self.finish(End::Overflow);
    }

    /// Connected to `orig` after `took`: records the latency and opens the connection's
    /// series. `upstream_local` (a `getsockname`) is asked only when the access log wants
    /// it. The meters returned count the bytes the copy delivers.
    pub fn connected(
        &mut self,
        orig: OrigDstAddr,
        took: Duration,
        upstream_local: impl FnOnce() -> Option<SocketAddr>,
    ) -> Meters<'_> {
        let metrics = &self.shared.metrics;
        metrics.connect_latency(self.direction, took);
        if self.shared.access_log.enabled() {
            self.upstream_local = upstream_local();
        }
        self.orig = Some(orig);
        let series = metrics.tcp_series_with(
            self.direction,
            orig.port(),
            ResponseFlags::None,
            self.peer.clone(),
        );
        series.opened.fetch_add(1, Ordering::Relaxed);
        let series = self.series.insert(series);
        Meters {
            received: Meter::new(&series.received, &self.received),
            sent: Meter::new(&series.sent, &self.sent),
        }
    }

    /// Labels the connection's series with its other side and Service (call before
    /// [`ConnRecord::connected`]).
    pub fn set_peer(&mut self, peer: TcpPeer) {
        self.peer = Some(Arc::new(peer));
    }

    /// The connection runs over mTLS: `peer_id` is the other side's verified SPIFFE id
    /// (when known), `own_id` this proxy's (call before [`ConnRecord::connected`]).
    pub fn secure_peer(&mut self, peer_id: Option<&str>, own_id: &str) {
        let base = self
            .peer
            .take()
            .unwrap_or_else(|| Arc::new(TcpPeer::of_meta(None, None)));
        self.peer = Some(Arc::new(base.secured(peer_id, own_id)));
    }

    /// Handed to the HTTP engine, which counts and logs each request itself (Istio's
    /// sidecars report no `istio_tcp_*` series for HTTP connections): nothing more is
    /// counted or logged here.
    pub fn to_http(&mut self, orig: OrigDstAddr) {
        if !self.reported {
            self.orig = Some(orig);
            self.reported = true;
        }
    }

    /// Both directions ended, with `error` if one broke off.
    pub fn closed(&mut self, error: Option<&io::Error>) {
        let (received, sent) = self.bytes();
        debug!(
            received,
            sent,
            error = error.map(tracing::field::display),
            "connection closed"
        );
        self.finish(End::Closed(error.map(CloseError::of)));
    }

    /// Reports `end`, unless the record has reported already.
    fn finish(&mut self, end: End) {
        if self.reported {
            debug_assert!(
                false,
                "connection recorded twice: {end:?} after an earlier end"
            );
            return;
        }
        self.reported = true;
        self.report(end);
    }

    /// A connection that never reached its upstream still opens and closes a series
    /// with its flag, as Istio's do.
    fn open_and_close(&self, flags: ResponseFlags) {
        if let Some(orig) = self.orig {
            let s = self.shared.metrics.tcp_series_with(
                self.direction,
                orig.port(),
                flags,
                self.peer.clone(),
            );
            s.opened.fetch_add(1, Ordering::Relaxed);
            s.closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts how the connection ended and writes its access-log line.
    fn report(&self, end: End) {
        let metrics = &self.shared.metrics;
        let d = self.direction;
        let (flags, error) = match end {
            End::Unfinished => (ResponseFlags::None, Some("aborted")),
            End::Refused(reason) => {
                metrics.refused(d, reason);
                (reason.flags(), Some(reason.as_str()))
            }
            End::ConnectFailed(kind) => {
                metrics.connect_error(d, kind);
                self.open_and_close(ResponseFlags::UpstreamFailure);
                (ResponseFlags::UpstreamFailure, Some(kind.as_str()))
            }
            End::Overflow => {
                self.open_and_close(ResponseFlags::UpstreamOverflow);
                (ResponseFlags::UpstreamOverflow, Some("overflow"))
            }
            End::Closed(error) => (ResponseFlags::None, error.map(CloseError::as_str)),
        };
        if let Some(series) = &self.series {
            series.closed.fetch_add(1, Ordering::Relaxed);
        }
        if self.shared.access_log.enabled() {
            let (received, sent) = self.bytes();
            let duration = self.clock.elapsed();
            let now = SystemTime::now();
            self.shared.access_log.write(&LogLine {
                started: now.checked_sub(duration).unwrap_or(now),
                duration,
                direction: d,
                peer: self.client,
                orig: self.orig,
                upstream_local: self.upstream_local,
                received,
                sent,
                flags,
                error,
            });
        }
    }
}

impl Drop for ConnRecord<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.reported = true;
            self.report(End::Unfinished);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::{AccessLog, Captured};
    use crate::config::{AccessLogFormat, Config};
    use crate::metrics::Metrics;
    use crate::orig_dst::FixedOriginalDst;

    fn shared() -> (Arc<Shared>, Captured) {
        let (access_log, lines) = AccessLog::capture(AccessLogFormat::Json);
        let dst = "127.0.0.1:1".parse().unwrap();
        let shared = Shared {
            config: Config::loopback(),
            metrics: Arc::new(Metrics::new(crate::config::Identity::unknown())),
            orig_dst: Arc::new(FixedOriginalDst(dst)),
            own_listeners: Vec::new(),
            access_log,
            l7: None,
            drain: tokio::sync::watch::channel(false).1,
        };
        (Arc::new(shared), lines)
    }

    fn record(shared: &Shared) -> ConnRecord<'_> {
        let client = ClientAddr("198.18.0.1:4000".parse().unwrap());
        ConnRecord::accepted(shared, Direction::Outbound, client)
    }

    fn orig() -> OrigDstAddr {
        OrigDstAddr("198.18.1.2:80".parse().unwrap())
    }

    fn lines(c: &Captured) -> Vec<String> {
        c.lock().unwrap().clone()
    }

    fn series(shared: &Shared, flags: ResponseFlags) -> [u64; 4] {
        let s = shared.metrics.tcp_series(Direction::Outbound, 80, flags);
        [&s.opened, &s.closed, &s.received, &s.sent].map(|c| c.load(Ordering::Relaxed))
    }

    #[test]
    fn a_normal_close_reports_once() {
        let (shared, log) = shared();
        let mut r = record(&shared);
        let meters = r.connected(orig(), Duration::from_micros(300), || {
            Some("198.18.0.1:5000".parse().unwrap())
        });
        meters.received.add(10);
        meters.sent.add(3);
        assert_eq!(
            series(&shared, ResponseFlags::None),
            [1, 0, 10, 3],
            "bytes count live"
        );
        assert!(
            lines(&log).is_empty(),
            "nothing is logged while the connection is open"
        );
        r.closed(None);
        assert_eq!(series(&shared, ResponseFlags::None), [1, 1, 10, 3]);
        let l = lines(&log);
        assert_eq!(l.len(), 1, "{l:?}");
        assert!(l[0].contains("\"original_dst\":\"198.18.1.2:80\",\"upstream_local\":\"198.18.0.1:5000\",\"bytes_received\":10,\"bytes_sent\":3,\"response_flags\":\"-\",\"error\":null"), "{}", l[0]);
    }

    #[test]
    fn a_refused_connection_reports_once() {
        let (shared, log) = shared();
        record(&shared).refuse(RefusalReason::Loop, Some(orig()));
        assert_eq!(
            shared
                .metrics
                .refusals(Direction::Outbound, RefusalReason::Loop),
            1
        );
        record(&shared).refuse(RefusalReason::Limit, None);
        assert_eq!(
            shared
                .metrics
                .refusals(Direction::Outbound, RefusalReason::Limit),
            1
        );
        let l = lines(&log);
        assert_eq!(l.len(), 2, "{l:?}");
        assert!(
            l[0].contains("\"response_flags\":\"NR\",\"error\":\"loop\""),
            "{}",
            l[0]
        );
        assert!(l[1].contains("\"original_dst\":null"), "{}", l[1]);
        assert!(
            l[1].contains("\"response_flags\":\"OM\",\"error\":\"limit\""),
            "{}",
            l[1]
        );
        // No Istio series for refusals.
        assert_eq!(series(&shared, ResponseFlags::None), [0; 4]);
    }

    #[test]
    fn an_upstream_connect_failure_reports_once() {
        let (shared, log) = shared();
        record(&shared).connect_failed(orig(), ConnectErrorKind::Refused);
        assert_eq!(
            shared
                .metrics
                .connect_errors(Direction::Outbound, ConnectErrorKind::Refused),
            1
        );
        assert_eq!(
            series(&shared, ResponseFlags::UpstreamFailure),
            [1, 1, 0, 0]
        );
        assert_eq!(series(&shared, ResponseFlags::None), [0; 4]);
        let l = lines(&log);
        assert_eq!(l.len(), 1, "{l:?}");
        assert!(
            l[0].contains("\"response_flags\":\"UF\",\"error\":\"refused\""),
            "{}",
            l[0]
        );
    }

    #[test]
    fn a_record_dropped_unfinished_reports_once() {
        let (shared, log) = shared();
        let mut r = record(&shared);
        r.connected(orig(), Duration::ZERO, || None).received.add(5);
        drop(r);
        assert_eq!(series(&shared, ResponseFlags::None), [1, 1, 5, 0]);
        let l = lines(&log);
        assert_eq!(l.len(), 1, "{l:?}");
        assert!(l[0].contains("\"bytes_received\":5,\"bytes_sent\":0,\"response_flags\":\"-\",\"error\":\"aborted\""), "{}", l[0]);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "recorded twice")]
    fn a_second_ending_is_a_bug_that_debug_builds_catch() {
        let (shared, _log) = shared();
        let mut r = record(&shared);
        r.refuse(RefusalReason::Loop, None);
        r.closed(None);
    }

    #[test]
    fn closing_errors_have_fixed_words() {
        let word = |k: io::ErrorKind| CloseError::of(&k.into()).as_str();
        assert_eq!(word(io::ErrorKind::ConnectionReset), "reset");
        assert_eq!(word(io::ErrorKind::BrokenPipe), "broken_pipe");
        assert_eq!(word(io::ErrorKind::TimedOut), "timeout");
        assert_eq!(word(io::ErrorKind::Other), "other");
    }
}
