//! Zero-copy forwarding with `splice(2)`: socket -> pipe -> socket, never through user
//! space. The syscalls go through nix's safe wrappers (`pipe2`, `splice`), so no
//! `unsafe` is needed here either.
//!
//! The pipe is made lazily, on the first byte, so an idle connection costs no pipe; it
//! starts at the kernel's default size (64 KiB) and is grown to [`BULK_PIPE_SIZE`] the
//! first time it fills up, so only bulk transfers hold a large pipe (pipe capacity counts
//! against the user's `pipe-user-pages-soft` quota whether used or not).
//!
//! Each round first fills the pipe from the source until the socket has nothing more or
//! the pipe is full, then drains the pipe into the destination until it is empty or the
//! socket's send buffer is full; it only waits on the kernel (and clears the readiness
//! it waits on) when a socket really said `EAGAIN`. With an empty pipe, `EAGAIN` on the
//! read side can only mean "the socket has nothing"; with bytes in the pipe it may also
//! mean "the pipe is full" (a pipe holds pages, not bytes), so then the readiness is kept
//! and the pipe drained first.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::Meter;

/// The kernel's default pipe capacity.
const DEFAULT_PIPE_SIZE: usize = 64 * 1024;

/// What a pipe is grown to once it has filled up (the default `pipe-max-size`, so an
/// unprivileged proxy may ask for it).
pub const BULK_PIPE_SIZE: usize = 1024 * 1024;

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

    /// Asks the kernel to make the pipe hold `size` bytes; returns the capacity it got.
    pub fn resize(&self, size: usize) -> io::Result<usize> {
        let size = i32::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let got = fcntl(&self.write, FcntlArg::F_SETPIPE_SZ(size)).map_err(io::Error::from)?;
        usize::try_from(got).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
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

/// What the next round waits for.
#[derive(Clone, Copy)]
enum Wait {
    Readable,
    Writable,
    Nothing,
}

/// Copies `from` to `to` until end of stream, counting delivered bytes on `meter`
/// as they pass. Does not shut anything down: the caller owns half-close.
pub async fn splice_one_way(
    from: &TcpStream,
    to: &TcpStream,
    meter: &Meter<'_>,
) -> io::Result<SpliceEnd> {
    let mut pipe: Option<Pipe> = None;
    let mut delivered: u64 = 0;
    let mut capacity = DEFAULT_PIPE_SIZE;
    let mut grown = false;
    // Bytes in the pipe, not yet delivered.
    let mut pending: usize = 0;
    let mut eof = false;
    let mut wait = Wait::Readable;
    loop {
        match wait {
            Wait::Readable => from.readable().await?,
            Wait::Writable => to.writable().await?,
            Wait::Nothing => {}
        }
        let p = match &pipe {
            Some(p) => p,
            None => match Pipe::new() {
                Ok(p) => pipe.insert(p),
                Err(e) => return Ok(SpliceEnd::NoPipe(e)),
            },
        };
        let mut read_blocked = false;
        let mut full = false;
        while !eof && pending < capacity {
            let free = capacity - pending;
            let r = from.try_io(Interest::READABLE, || match p.fill_from(from, free) {
                // Maybe only the pipe is full: keep the socket's readiness.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && pending > 0 => Ok(None),
                r => r.map(Some),
            });
            match r {
                Ok(Some(0)) => eof = true,
                Ok(Some(n)) => pending += n,
                Ok(None) => {
                    full = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    read_blocked = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if (full || pending >= capacity) && !grown {
            // A bulk transfer: give it a bigger pipe (fewer, larger rounds). Without
            // one it simply goes on at the current size.
            grown = true;
            if let Ok(size) = p.resize(BULK_PIPE_SIZE) {
                capacity = size.max(pending);
            }
        }
        let mut write_blocked = false;
        while pending > 0 {
            match to.try_io(Interest::WRITABLE, || p.drain_to(to, pending)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => {
                    pending -= m;
                    delivered += m as u64;
                    meter.add(m);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    write_blocked = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if eof && pending == 0 {
            return Ok(SpliceEnd::Eof(delivered));
        }
        wait = if write_blocked {
            Wait::Writable
        } else if read_blocked {
            Wait::Readable
        } else {
            Wait::Nothing
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicU64, Ordering};

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

    #[test]
    fn pipe_grows_to_the_bulk_size() {
        let pipe = Pipe::new().unwrap();
        assert!(pipe.resize(BULK_PIPE_SIZE).unwrap() >= BULK_PIPE_SIZE);
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
        let end = splice_one_way(&src, &dst, &Meter::new(&counter, &total))
            .await
            .unwrap();
        assert!(matches!(end, SpliceEnd::Eof(3_000_000)), "{end:?}");
        drop(dst);
        writer.await.unwrap();
        assert_eq!(reader.await.unwrap(), expected);
        assert_eq!(counter.load(Ordering::Relaxed), 3_000_000);
        assert_eq!(total.load(Ordering::Relaxed), 3_000_000);
    }
}
