//! The copy engine: moves bytes both ways between two streams until both directions
//! reach end of stream. Half-close is propagated (one side's EOF becomes a FIN to the
//! other, which can still answer), and an error in either direction makes both ends
//! close with a reset, so a reset propagates as one.
//!
//! [`duplex`] is generic over [`Io`] (any `AsyncRead + AsyncWrite`), so TLS and HTTP
//! reuse it: their streams are copied by the poll-based loop in `copy/stream.rs`. Two
//! plain TCP sockets take the fast path in `copy/tcp.rs` instead: readiness-driven
//! copying through a per-thread scratch buffer, and `splice(2)` ([`splice`]) for bulk
//! transfers, as `--copy-mode` says.
//!
//! Connections own no buffer: every copy reads into the thread's scratch buffer and
//! writes straight on; only bytes the destination cannot take at once are kept per
//! connection, until they drain, so idle connections cost nothing.

pub mod read_ahead;
pub mod splice;
mod stream;
mod tcp;

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::CopyMode;

pub use stream::copy_bidirectional;

/// Implements `AsyncWrite` for a stream wrapper `$ty<S>` that only changes what is read
/// (read-ahead, a replayed prefix, a dropped peer frame): every write goes to its field
/// `$inner` untouched.
macro_rules! write_through {
    ($ty:ident, $inner:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<S> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().$inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().$inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.$inner.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().$inner).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().$inner).poll_shutdown(cx)
            }
        }
    };
}
pub(crate) use write_through;

/// Size of the per-thread scratch buffer.
const SCRATCH_SIZE: usize = 128 * 1024;

thread_local! {
    /// The one copy buffer of this thread, shared by all its connections (each event
    /// loop is one thread, and a copy never holds it across an `.await`).
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// A stream the copy engine can move bytes through.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    /// The plain TCP socket underneath, when the bytes read and written are exactly the
    /// bytes on the wire (no TLS, no framing): lets the copy take the fast path.
    fn plain_tcp(&self) -> Option<&TcpStream> {
        None
    }

    /// Makes closing the stream send a reset (TCP: `SO_LINGER` 0), as the copy does to
    /// both ends after an error.
    fn reset_on_close(&self) {}
}

impl Io for TcpStream {
    fn plain_tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }

    fn reset_on_close(&self) {
        let _ = SockRef::from(self).set_linger(Some(Duration::ZERO));
    }
}

impl Io for tokio::io::DuplexStream {}

/// mTLS, terminated (inbound): copied by the poll loop, never spliced.
impl Io for tokio_rustls::server::TlsStream<read_ahead::ReadAhead<TcpStream>> {
    fn reset_on_close(&self) {
        self.get_ref().0.get_ref().reset_on_close();
    }
}

/// mTLS, originated (outbound).
impl Io for tokio_rustls::client::TlsStream<read_ahead::ReadAhead<TcpStream>> {
    fn reset_on_close(&self) {
        self.get_ref().0.get_ref().reset_on_close();
    }
}

/// Where one direction's delivered bytes are counted: the metric series (live, so
/// long connections show up in `/stats/prometheus` as they go) and the connection's
/// own total.
#[derive(Clone, Copy, Debug)]
pub struct Meter<'a> {
    series: &'a AtomicU64,
    conn: &'a AtomicU64,
}

impl<'a> Meter<'a> {
    pub fn new(series: &'a AtomicU64, conn: &'a AtomicU64) -> Meter<'a> {
        Meter { series, conn }
    }

    /// The connection's bytes in this direction so far.
    pub fn total(&self) -> u64 {
        self.conn.load(Ordering::Relaxed)
    }

    /// Counts `n` delivered bytes.
    #[inline]
    pub(crate) fn add(&self, n: usize) {
        self.series.fetch_add(n as u64, Ordering::Relaxed);
        self.conn.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Both directions' meters.
#[derive(Clone, Copy, Debug)]
pub struct Meters<'a> {
    /// Client to upstream (Istio: "received").
    pub received: Meter<'a>,
    /// Upstream to client (Istio: "sent").
    pub sent: Meter<'a>,
}

/// Copies between `client` and `upstream` until both directions end (see the module
/// docs). On error both are set to close with a reset, and the first error is returned.
pub async fn duplex<A: Io, B: Io>(
    client: &mut A,
    upstream: &mut B,
    mode: CopyMode,
    meters: &Meters<'_>,
) -> io::Result<()> {
    let result = match (client.plain_tcp(), upstream.plain_tcp()) {
        (Some(c), Some(u)) => tcp::duplex(c, u, mode, meters).await,
        _ => copy_bidirectional(client, upstream, &meters.received, &meters.sent).await,
    };
    if result.is_err() {
        client.reset_on_close();
        upstream.reset_on_close();
    }
    result
}

/// Sends a FIN to `to`: no more bytes are coming its way.
fn half_close(to: &TcpStream) -> io::Result<()> {
    not_connected_is_ok(SockRef::from(to).shutdown(Shutdown::Write))
}

/// A peer that is already gone needs no FIN.
fn not_connected_is_ok(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
