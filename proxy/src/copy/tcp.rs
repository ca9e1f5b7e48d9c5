//! The fast path between two plain TCP sockets, driven by readiness (`try_read` /
//! `try_write` on shared references, no `AsyncRead` polling): buffered through the
//! thread's scratch buffer, `splice(2)` for bulk, or adaptive (buffered until a read
//! fills [`ADAPTIVE_READ`], then spliced).

use std::io;

use tokio::io::Interest;
use tokio::net::TcpStream;
use tracing::debug;

use super::splice::{SpliceEnd, splice_one_way};
use super::{Meter, Meters, SCRATCH, SCRATCH_SIZE, half_close};
use crate::config::CopyMode;

/// Adaptive mode reads at most this much through the scratch buffer (so only this much
/// of it is ever touched); a read that fills it marks the direction as bulk, which then
/// moves to `splice(2)`.
const ADAPTIVE_READ: usize = 16 * 1024;

/// Reads shorter than this (and shorter than asked for) are taken as "the socket is
/// drained", saving the `read` that would return EAGAIN.
const SMALL_READ: usize = 16 * 1024;

/// Copies both ways until both directions reach end of stream; each direction ends on
/// its own and half-closes the other side. Returns the first error (the caller resets
/// both sockets then).
pub(super) async fn duplex(
    client: &TcpStream,
    upstream: &TcpStream,
    mode: CopyMode,
    meters: &Meters<'_>,
) -> io::Result<()> {
    let up = one_way(client, upstream, mode, &meters.received);
    let down = one_way(upstream, client, mode, &meters.sent);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        // A finished direction half-closes its destination, unless the other
        // direction is finished too: then both sockets are about to be closed, and
        // close(2) sends the same FIN (nothing is left unread: the other side's
        // EOF has been read), saving a `shutdown` per connection.
        tokio::select! {
            r = &mut up, if !up_done => {
                up_done = true;
                r.and_then(|()| if down_done { Ok(()) } else { half_close(upstream) })?;
            }
            r = &mut down, if !down_done => {
                down_done = true;
                r.and_then(|()| if up_done { Ok(()) } else { half_close(client) })?;
            }
        }
    }
    Ok(())
}

/// One direction to end of stream (the caller half-closes the destination).
async fn one_way(
    from: &TcpStream,
    to: &TcpStream,
    mode: CopyMode,
    meter: &Meter<'_>,
) -> io::Result<()> {
    let spliced = match mode {
        CopyMode::Splice => true,
        CopyMode::Buffered => {
            buffered_one_way(from, to, meter, SCRATCH_SIZE, false).await?;
            false
        }
        CopyMode::Adaptive => {
            buffered_one_way(from, to, meter, ADAPTIVE_READ, true).await? == BufferedEnd::Bulk
        }
    };
    if spliced {
        match splice_one_way(from, to, meter).await? {
            SpliceEnd::Eof(_) => {}
            SpliceEnd::NoPipe(e) => {
                debug!(error = %e, "no pipe for splice, copying through a buffer");
                buffered_one_way(from, to, meter, SCRATCH_SIZE, false).await?;
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
    meter: &Meter<'_>,
    read_size: usize,
    stop_on_bulk: bool,
) -> io::Result<BufferedEnd> {
    let mut bulk = false;
    // Bytes read but not yet accepted by `to`; empty (and unallocated) almost always.
    let mut pending: Vec<u8> = Vec::new();
    loop {
        while !pending.is_empty() {
            to.writable().await?;
            match to.try_write(&pending) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => {
                    pending.drain(..m);
                    meter.add(m);
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
                        meter.add(m);
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
