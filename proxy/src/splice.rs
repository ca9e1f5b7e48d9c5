//! Zero-copy forwarding with `splice(2)`: socket -> pipe -> socket, never through user
//! space. The syscalls go through nix's safe wrappers (`pipe2`, `splice`), so no
//! `unsafe` is needed here either.
//!
//! The pipe is made lazily, on the first byte, so an idle connection costs no pipe.
//! Each transfer first fills the pipe from the source, then drains it completely into
//! the destination before reading again; because the pipe is always empty when we read,
//! `EAGAIN` on the read side can only mean "the socket has nothing", and on the write
//! side only "the socket buffer is full".

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes asked for per splice from the socket (the pipe's default capacity).
const CHUNK: usize = 64 * 1024;

/// A non-blocking pipe used as the in-kernel buffer of one direction.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let (read, write) =
            nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        Ok(Pipe { read, write })
    }

    /// Moves up to `len` bytes from `src` into the pipe; 0 means end of stream.
    pub fn fill_from(&self, src: impl AsFd, len: usize) -> io::Result<usize> {
        splice(
            src,
            None,
            &self.write,
            None,
            len,
            SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
        )
        .map_err(io::Error::from)
    }

    /// Moves up to `len` bytes from the pipe into `dst`.
    pub fn drain_to(&self, dst: impl AsFd, len: usize) -> io::Result<usize> {
        splice(
            &self.read,
            None,
            dst,
            None,
            len,
            SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE,
        )
        .map_err(io::Error::from)
    }
}

/// What one spliced direction did before it stopped.
#[derive(Debug)]
pub enum SpliceEnd {
    /// The source reached end of stream; this many bytes were delivered.
    Eof(u64),
    /// No pipe could be made before the first byte moved: copy this direction another
    /// way. Nothing has been read from the source.
    NoPipe(io::Error),
}

/// Copies `from` to `to` until end of stream, adding delivered bytes to `counter`
/// as they pass. Does not shut anything down: the caller owns half-close.
pub async fn splice_one_way(
    from: &TcpStream,
    to: &TcpStream,
    counter: &AtomicU64,
    total: &AtomicU64,
) -> io::Result<SpliceEnd> {
    let mut pipe: Option<Pipe> = None;
    let mut delivered: u64 = 0;
    loop {
        from.readable().await?;
        let p = match &pipe {
            Some(p) => p,
            None => match Pipe::new() {
                Ok(p) => pipe.insert(p),
                Err(e) => return Ok(SpliceEnd::NoPipe(e)),
            },
        };
        let n = match from.try_io(Interest::READABLE, || p.fill_from(from, CHUNK)) {
            Ok(0) => return Ok(SpliceEnd::Eof(delivered)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut pending = n;
        while pending > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || p.drain_to(to, pending)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => {
                    pending -= m;
                    delivered += m as u64;
                    counter.fetch_add(m as u64, Ordering::Relaxed);
                    total.fetch_add(m as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn pipe_moves_bytes_between_sockets() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        b.set_nonblocking(true).unwrap();
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l2.local_addr().unwrap()).unwrap();
        let (mut d, _) = l2.accept().unwrap();

        a.write_all(b"hello splice").unwrap();
        let pipe = Pipe::new().unwrap();
        let mut moved = 0;
        while moved < 12 {
            match pipe.fill_from(&b, 1024) {
                Ok(n) => moved += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(pipe.drain_to(&c, 12).unwrap(), 12);
        let mut buf = [0u8; 12];
        d.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello splice");
        // Empty pipe, no data on the socket: would block, never a bogus 0.
        let err = pipe.fill_from(&b, 1024).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(a);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(pipe.fill_from(&b, 1024).unwrap(), 0, "EOF reads as 0");
    }

    #[tokio::test]
    async fn one_way_copies_large_payload_and_counts() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut src_client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (src, _) = l.accept().await.unwrap();
        let dst = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut dst_peer, _) = l.accept().await.unwrap();

        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let expected = payload.clone();
        let writer = tokio::spawn(async move {
            src_client.write_all(&payload).await.unwrap();
            src_client.shutdown().await.unwrap();
        });
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            dst_peer.read_to_end(&mut got).await.unwrap();
            got
        });
        let counter = AtomicU64::new(0);
        let total = AtomicU64::new(0);
        let end = splice_one_way(&src, &dst, &counter, &total).await.unwrap();
        assert!(matches!(end, SpliceEnd::Eof(3_000_000)), "{end:?}");
        drop(dst);
        writer.await.unwrap();
        assert_eq!(reader.await.unwrap(), expected);
        assert_eq!(counter.load(Ordering::Relaxed), 3_000_000);
    }
}
