//! The copy engine on its own: the generic path over in-memory pipes and over TCP
//! sockets hidden behind a wrapper (so the fast path cannot be taken). The TCP fast
//! path is covered through the whole proxy in `proxy_tests`, in every copy mode.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// Four counters: per direction, the series' and the connection's.
#[derive(Default)]
struct Counts([AtomicU64; 4]);

impl Counts {
    fn meters(&self) -> Meters<'_> {
        Meters {
            received: Meter::new(&self.0[0], &self.0[1]),
            sent: Meter::new(&self.0[2], &self.0[3]),
        }
    }

    fn get(&self) -> [u64; 4] {
        [0, 1, 2, 3].map(|i| self.0[i].load(Ordering::Relaxed))
    }
}

/// A TCP stream the engine must treat as opaque (as it will a TLS stream).
struct Opaque(TcpStream);

impl AsyncRead for Opaque {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Opaque {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Io for Opaque {
    fn reset_on_close(&self) {
        self.0.reset_on_close();
    }
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (c, s)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// The client uploads `payload` and half-closes; the server reads to EOF, answers
/// `reply:<n>` and closes; returns the client's answer.
async fn round_trip<C, S>(mut client: C, mut server: S, payload: &[u8]) -> String
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let server = async move {
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, pattern(got.len()), "upload intact");
        server
            .write_all(format!("reply:{}", got.len()).as_bytes())
            .await
            .unwrap();
        server.shutdown().await.unwrap();
    };
    let client = async move {
        client.write_all(payload).await.unwrap();
        client.shutdown().await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        answer
    };
    tokio::join!(server, client).1
}

#[tokio::test]
async fn generic_copy_half_closes_over_small_pipes() {
    // 64-byte pipes: almost every write is partial, so bytes wait in `pending`.
    let (app, mut a) = tokio::io::duplex(64);
    let (mut b, srv) = tokio::io::duplex(64);
    let counts = Counts::default();
    let meters = counts.meters();
    let payload = pattern(300_000);
    let (copied, answer) = tokio::join!(
        copy_bidirectional(&mut a, &mut b, &meters.received, &meters.sent),
        round_trip(app, srv, &payload),
    );
    copied.unwrap();
    assert_eq!(answer, "reply:300000");
    assert_eq!(counts.get(), [300_000, 300_000, 12, 12]);
}

#[tokio::test]
async fn generic_copy_lets_the_server_speak_after_the_client_is_done() {
    // The server speaks first and shuts down writing; the client still sends after
    // seeing EOF, and the server still receives it.
    let (mut app, mut a) = tokio::io::duplex(1024);
    let (mut b, mut srv) = tokio::io::duplex(1024);
    let counts = Counts::default();
    let meters = counts.meters();
    let server = async {
        srv.write_all(b"hello").await.unwrap();
        srv.shutdown().await.unwrap();
        let mut got = Vec::new();
        srv.read_to_end(&mut got).await.unwrap();
        got
    };
    let client = async {
        let mut greeting = Vec::new();
        app.read_to_end(&mut greeting).await.unwrap();
        assert_eq!(greeting, b"hello");
        app.write_all(b"late words").await.unwrap();
        app.shutdown().await.unwrap();
    };
    let (copied, got, ()) = tokio::join!(
        copy_bidirectional(&mut a, &mut b, &meters.received, &meters.sent),
        server,
        client
    );
    copied.unwrap();
    assert_eq!(got, b"late words");
    assert_eq!(counts.get(), [10, 10, 5, 5]);
}

#[tokio::test]
async fn opaque_tcp_takes_the_generic_path_with_half_close() {
    let (client, a) = tcp_pair().await;
    let (b, server) = tcp_pair().await;
    assert!(a.plain_tcp().is_some());
    let (mut a, mut b) = (Opaque(a), Opaque(b));
    assert!(a.plain_tcp().is_none());
    let counts = Counts::default();
    let meters = counts.meters();
    let payload = pattern(1_000_000);
    let (copied, answer) = tokio::join!(
        duplex(&mut a, &mut b, CopyMode::Adaptive, &meters),
        round_trip(client, server, &payload),
    );
    copied.unwrap();
    assert_eq!(answer, "reply:1000000");
    assert_eq!(counts.get(), [1_000_000, 1_000_000, 13, 13]);
}

#[tokio::test]
async fn an_error_resets_both_ends_on_the_generic_path() {
    let (mut client, a) = tcp_pair().await;
    let (b, server) = tcp_pair().await;
    let (mut a, mut b) = (Opaque(a), Opaque(b));
    let counts = Counts::default();
    let meters = counts.meters();
    let server = async move {
        let mut buf = [0u8; 4];
        server.readable().await.unwrap();
        let _ = server.try_read(&mut buf);
        server.reset_on_close();
        drop(server);
    };
    let copy = async move {
        let r = duplex(&mut a, &mut b, CopyMode::Adaptive, &meters).await;
        drop((a, b));
        r
    };
    client.write_all(b"ping").await.unwrap();
    let (copied, ()) = tokio::join!(copy, server);
    let e = copied.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
    let mut buf = [0u8; 16];
    let e = client.read(&mut buf).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
}
