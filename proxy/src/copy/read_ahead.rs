//! [`ReadAhead`]: a socket read in large chunks for a reader that asks in small ones.
//!
//! rustls reads TLS records off its transport 4 KiB at a time (its deframer's read size),
//! so an mTLS stream moving bulk data cost four or five `recvfrom(2)` calls per 16 KiB
//! record. Under a TLS stream, a `ReadAhead` turns those into one call per [`CHUNK`]:
//! once a read fills the caller's buffer (more is likely waiting), the following reads go
//! through a buffer of its own. The buffer is dropped as soon as it is drained and the
//! socket has nothing more (the read would block), so idle connections and
//! request/response traffic, whose reads never fill 4 KiB, hold none.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// One socket read while data keeps coming: four TLS records.
pub const CHUNK: usize = 64 * 1024;

/// See the module docs. Writes pass straight through.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    /// Allocated (`CHUNK` bytes) only while reads are filling their buffers.
    buf: Vec<u8>,
    /// `buf[start..end]` is read from the socket and not yet handed out.
    start: usize,
    end: usize,
    /// The last direct read filled the caller's buffer.
    bulk: bool,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> ReadAhead<S> {
        ReadAhead {
            inner,
            buf: Vec::new(),
            start: 0,
            end: 0,
            bulk: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Bytes read from the socket and not yet handed out.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Whether it holds a buffer now.
    pub fn holds_buffer(&self) -> bool {
        !self.buf.is_empty()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.start < this.end {
            let n = out.remaining().min(this.end - this.start);
            out.put_slice(&this.buf[this.start..this.start + n]);
            this.start += n;
            return Poll::Ready(Ok(()));
        }
        if !this.bulk || out.remaining() >= CHUNK {
            let before = out.filled().len();
            let r = Pin::new(&mut this.inner).poll_read(cx, out);
            if let Poll::Ready(Ok(())) = r {
                this.bulk = out.filled().len() > before && out.remaining() == 0;
            }
            return r;
        }
        if this.buf.is_empty() {
            this.buf = vec![0; CHUNK];
        }
        let mut chunk = ReadBuf::new(&mut this.buf);
        match Pin::new(&mut this.inner).poll_read(cx, &mut chunk) {
            Poll::Pending => {
                // Drained, and nothing more is waiting: give the memory back.
                this.buf = Vec::new();
                this.bulk = false;
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let got = chunk.filled().len();
                let n = out.remaining().min(got);
                out.put_slice(&this.buf[..n]);
                this.start = n;
                this.end = got;
                if got == 0 {
                    // End of stream.
                    this.buf = Vec::new();
                    this.bulk = false;
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

super::write_through!(ReadAhead, inner);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts the reads that reach the stream underneath.
    struct Counting<S> {
        inner: S,
        reads: Arc<AtomicUsize>,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            out: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let r = Pin::new(&mut this.inner).poll_read(cx, out);
            if r.is_ready() {
                this.reads.fetch_add(1, Ordering::Relaxed);
            }
            r
        }
    }

    #[tokio::test]
    async fn bulk_reads_are_chunked_and_small_ones_are_not() {
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let reads = Arc::new(AtomicUsize::new(0));
        let mut r = ReadAhead::new(Counting {
            inner: rx,
            reads: reads.clone(),
        });
        let data: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        tx.write_all(&data).await.unwrap();
        // Read as rustls does: 4 KiB at a time.
        let mut got = Vec::new();
        let mut small = [0u8; 4096];
        while got.len() < data.len() {
            let n = r.read(&mut small).await.unwrap();
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, data);
        // One direct 4 KiB read, then 64 KiB chunks: 5 reads instead of 64.
        assert!(reads.load(Ordering::Relaxed) <= 6, "{reads:?}");
        assert_eq!(r.buffered(), 0);
        // Drained: the next read blocks, and the buffer goes.
        assert!(r.holds_buffer());
        let blocked =
            tokio::time::timeout(std::time::Duration::from_millis(20), r.read(&mut small)).await;
        assert!(blocked.is_err());
        assert!(!r.holds_buffer());

        // Request/response sized reads never allocate.
        reads.store(0, Ordering::Relaxed);
        let mut line = [0u8; 64];
        let read = tokio::spawn(async move {
            let n = r.read(&mut line).await.unwrap();
            assert_eq!(&line[..n], b"ping");
            assert!(!r.holds_buffer());
            r
        });
        tx.write_all(b"ping").await.unwrap();
        let mut r = read.await.unwrap();

        // Once drained and blocking, the buffer is given back; end of stream reads 0.
        tx.write_all(&data[..10_000]).await.unwrap();
        let mut all = vec![0u8; 10_000];
        let mut off = 0;
        while off < all.len() {
            off += r
                .read(&mut all[off..(off + 4096).min(10_000)])
                .await
                .unwrap();
        }
        assert_eq!(all, &data[..10_000]);
        drop(tx);
        assert_eq!(r.read(&mut small).await.unwrap(), 0);
        assert!(!r.holds_buffer());
    }
}
