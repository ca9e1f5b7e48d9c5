//! The copy loop for any `AsyncRead + AsyncWrite` (TLS, HTTP bodies, test pipes): both
//! directions are polled from one future, without splitting either stream, and each
//! reads into the thread's scratch buffer and writes straight on.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Meter, SCRATCH, not_connected_is_ok};

/// Largest read per poll. Four TLS records (16 KiB each at most): written to a TLS stream,
/// one read becomes four records in one `writev(2)`; read from one, four records' worth of
/// plaintext go on in one write. (16 KiB, one record, moved mTLS bulk at half the rate for
/// a quarter more CPU per byte: bench/http.) A destination that cannot take it keeps at
/// most this much per direction, until it drains.
const READ_SIZE: usize = 64 * 1024;

/// Copies `a` to `b` and `b` to `a` until both reach end of stream. A direction that
/// ends flushes and shuts down (half-closes) its destination, so the peer sees EOF and
/// can still answer. Returns the first error, leaving both streams as they are.
pub async fn copy_bidirectional<A, B>(
    a: &mut A,
    b: &mut B,
    a_to_b: &Meter<'_>,
    b_to_a: &Meter<'_>,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut up = OneWay::default();
    let mut down = OneWay::default();
    poll_fn(|cx| {
        let up_done = up.poll(cx, Pin::new(&mut *a), Pin::new(&mut *b), a_to_b)?;
        let down_done = down.poll(cx, Pin::new(&mut *b), Pin::new(&mut *a), b_to_a)?;
        if up_done.is_ready() && down_done.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// One direction's state between polls.
#[derive(Debug, Default)]
struct OneWay {
    /// Bytes read but not yet accepted by the destination; empty (and unallocated)
    /// almost always.
    pending: Vec<u8>,
    /// Written since the last flush.
    unflushed: bool,
    /// The source reached end of stream.
    eof: bool,
    /// The destination is shut down: this direction is over.
    done: bool,
}

impl OneWay {
    /// Moves what can be moved now; `Ready(Ok(()))` once the direction is over (and
    /// again on every later call).
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut from: Pin<&mut R>,
        mut to: Pin<&mut W>,
        meter: &Meter<'_>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            while !self.pending.is_empty() {
                let m = ready!(to.as_mut().poll_write(cx, &self.pending))?;
                if m == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pending.drain(..m);
                meter.add(m);
                self.unflushed = true;
            }
            if self.pending.capacity() > 0 {
                self.pending = Vec::new(); // give the memory back while idle
            }
            if self.eof {
                ready!(to.as_mut().poll_flush(cx))?;
                ready!(to.as_mut().poll_shutdown(cx).map(not_connected_is_ok))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let OneWay {
                pending, unflushed, ..
            } = &mut *self;
            let read = SCRATCH.with_borrow_mut(|scratch| -> Poll<io::Result<usize>> {
                let mut buf = ReadBuf::new(&mut scratch[..READ_SIZE]);
                ready!(from.as_mut().poll_read(cx, &mut buf))?;
                let data = buf.filled();
                let mut off = 0;
                // Straight on to the destination; what it cannot take now waits in
                // `pending`, and its `Pending` has registered the wake-up.
                while off < data.len() {
                    match to.as_mut().poll_write(cx, &data[off..]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        Poll::Ready(Ok(m)) => {
                            off += m;
                            meter.add(m);
                            *unflushed = true;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => break,
                    }
                }
                pending.extend_from_slice(&data[off..]);
                Poll::Ready(Ok(data.len()))
            });
            match read {
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(_)) if !self.pending.is_empty() => return Poll::Pending,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing to read now: push out what a buffering writer (TLS) holds.
                    if self.unflushed {
                        ready!(to.as_mut().poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}
