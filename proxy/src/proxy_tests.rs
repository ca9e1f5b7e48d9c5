//! Whole-proxy tests on loopback: port 0 everywhere, and a fake original destination
//! instead of iptables.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::access_log::{AccessLog, Captured};
use crate::addrs::{ListenAddr, OrigDstAddr};
use crate::config::{AccessLogFormat, Config, CopyMode};
use crate::direction::Direction;
use crate::metrics::{ConnectErrorKind, Metrics, RefusalReason, ResponseFlags};
use crate::orig_dst::{FixedOriginalDst, OrigDstError, OriginalDst};
use crate::{BoundAddrs, DrainReport, DrainTrigger, Proxy};

struct Running {
    addrs: BoundAddrs,
    metrics: Arc<Metrics>,
    drain: DrainTrigger,
    task: JoinHandle<DrainReport>,
}

async fn start(config: Config, dst: Arc<dyn OriginalDst>) -> Running {
    start_with_log(config, dst, AccessLog::stdout(None)).await
}

async fn start_with_log(config: Config, dst: Arc<dyn OriginalDst>, log: AccessLog) -> Running {
    let proxy = Proxy::bind_with_access_log(config, dst, log).await.unwrap();
    let running = Running {
        addrs: proxy.addrs().clone(),
        metrics: proxy.metrics(),
        drain: proxy.drain_trigger(),
        task: tokio::spawn(proxy.run()),
    };
    tokio::task::yield_now().await;
    running
}

fn fixed(addr: SocketAddr) -> Arc<dyn OriginalDst> {
    Arc::new(FixedOriginalDst(addr))
}

/// A server that, per connection, reads to EOF, then answers `reply:<n bytes>` and
/// closes. Reports each peer address.
async fn half_close_server() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<SocketAddr>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, peer) = l.accept().await.unwrap();
            let _ = tx.send(peer);
            tokio::spawn(async move {
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                s.write_all(format!("reply:{}", got.len()).as_bytes())
                    .await
                    .unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    (addr, rx)
}

fn series_value(m: &Metrics, d: Direction, port: u16, flags: ResponseFlags) -> [u64; 4] {
    let s = m.tcp_series(d, port, flags);
    [
        s.opened.load(Ordering::Relaxed),
        s.closed.load(Ordering::Relaxed),
        s.received.load(Ordering::Relaxed),
        s.sent.load(Ordering::Relaxed),
    ]
}

/// The proxy's drain report, which must come within 5 s.
async fn drain_report(task: JoinHandle<DrainReport>) -> DrainReport {
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the proxy did not finish its drain within 5 s")
        .expect("the proxy task panicked")
}

/// Sends `payload`, half-closes, and reads the answer to the end (what a
/// `half_close_server` says).
async fn upload_then_answer(c: &mut TcpStream, payload: &[u8]) -> String {
    c.write_all(payload).await.unwrap();
    c.shutdown().await.unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).await.unwrap();
    answer
}

async fn wait_for(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 5s");
}

async fn expect_reset(mut c: TcpStream) {
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("client saw neither data nor a reset");
    match r {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("expected a reset, read {n} bytes (0 = clean close)"),
    }
}

async fn half_close_round_trip(mode: CopyMode) {
    let (server, _) = half_close_server().await;
    let mut config = Config::loopback();
    config.copy_mode = mode;
    let p = start(config, fixed(server)).await;
    let mut c = TcpStream::connect(p.addrs.outbound[0]).await.unwrap();
    let payload = vec![7u8; 1_000_000];
    // Half-close: the server sees EOF and can still answer.
    let answer = upload_then_answer(&mut c, &payload).await;
    assert_eq!(answer, "reply:1000000");
    wait_for(|| p.metrics.active(Direction::Outbound) == 0).await;
    assert_eq!(
        series_value(
            &p.metrics,
            Direction::Outbound,
            server.port(),
            ResponseFlags::None
        ),
        [1, 1, 1_000_000, 13]
    );
}

#[tokio::test]
async fn half_close_propagates_with_splice() {
    half_close_round_trip(CopyMode::Splice).await;
}

#[tokio::test]
async fn half_close_propagates_buffered() {
    half_close_round_trip(CopyMode::Buffered).await;
}

/// 1 MB upload: starts buffered, turns to splice once a read fills the buffer; the
/// 13-byte answer stays buffered.
#[tokio::test]
async fn half_close_propagates_adaptive() {
    half_close_round_trip(CopyMode::Adaptive).await;
}

#[tokio::test]
async fn server_half_close_lets_client_keep_sending() {
    // The server speaks first and shuts down writing; the client still sends after
    // seeing EOF, and the server still receives it.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = l.local_addr().unwrap();
    let srv = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"hello").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    });
    let p = start(Config::loopback(), fixed(server)).await;
    let mut c = TcpStream::connect(p.addrs.outbound[0]).await.unwrap();
    let mut greeting = Vec::new();
    c.read_to_end(&mut greeting).await.unwrap();
    assert_eq!(greeting, b"hello");
    c.write_all(b"late words").await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(srv.await.unwrap(), b"late words");
}

#[tokio::test]
async fn own_listener_is_refused_not_looped() {
    // Bind first, then point the fake original destination at our own listener.
    let proxy = Proxy::bind(Config::loopback(), fixed("127.0.0.1:1".parse().unwrap()))
        .await
        .unwrap();
    let own = proxy.addrs().outbound[0];
    drop(proxy);
    let mut config = Config::loopback();
    config.outbound = vec![own];
    let p = start(config, fixed(own)).await;
    let c = TcpStream::connect(own).await.unwrap();
    expect_reset(c).await;
    assert_eq!(
        p.metrics.refusals(Direction::Outbound, RefusalReason::Loop),
        1
    );
    wait_for(|| p.metrics.active(Direction::Outbound) == 0).await;
    assert_eq!(
        p.metrics
            .connect_errors(Direction::Outbound, ConnectErrorKind::Other),
        0
    );
}

#[tokio::test]
async fn refused_upstream_resets_the_client() {
    // A port with nothing listening: bind, learn the port, close.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = start(Config::loopback(), fixed(closed)).await;
    let c = TcpStream::connect(p.addrs.outbound[0]).await.unwrap();
    expect_reset(c).await;
    assert_eq!(
        p.metrics
            .connect_errors(Direction::Outbound, ConnectErrorKind::Refused),
        1
    );
    let uf = series_value(
        &p.metrics,
        Direction::Outbound,
        closed.port(),
        ResponseFlags::UpstreamFailure,
    );
    assert_eq!(uf, [1, 1, 0, 0]);
}

#[tokio::test]
async fn connect_timeout_resets_the_client() {
    // A listener whose accept queue is full drops further SYNs: connects hang.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let blackhole = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(blackhole)).await
        {
            fillers.push(s);
        }
    }
    let mut config = Config::loopback();
    config.connect_timeout = Duration::from_millis(300);
    let p = start(config, fixed(blackhole)).await;
    let c = TcpStream::connect(p.addrs.outbound[0]).await.unwrap();
    expect_reset(c).await;
    assert_eq!(
        p.metrics
            .connect_errors(Direction::Outbound, ConnectErrorKind::Timeout),
        1
    );
    drop(socket);
}

#[tokio::test]
async fn inbound_connects_from_passthrough_source() {
    let (server, mut peers) = half_close_server().await;
    let p = start(Config::loopback(), fixed(server)).await;
    let mut c = TcpStream::connect(p.addrs.inbound[0]).await.unwrap();
    let answer = upload_then_answer(&mut c, b"abc").await;
    assert_eq!(answer, "reply:3");
    let peer = peers.recv().await.unwrap();
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(mesh_common::INBOUND_PASSTHROUGH_V4)
    );
    wait_for(|| p.metrics.active(Direction::Inbound) == 0).await;
    assert_eq!(
        series_value(
            &p.metrics,
            Direction::Inbound,
            server.port(),
            ResponseFlags::None
        ),
        [1, 1, 3, 7]
    );
}

#[tokio::test]
async fn connection_limit_refuses_the_excess() {
    let (server, _) = half_close_server().await;
    let mut config = Config::loopback();
    config.max_connections = 1;
    let p = start(config, fixed(server)).await;
    let mut first = TcpStream::connect(p.addrs.outbound[0]).await.unwrap();
    wait_for(|| p.metrics.active(Direction::Outbound) == 1).await;
    let second = TcpStream::connect(p.addrs.outbound[0]).await.unwrap();
    expect_reset(second).await;
    assert_eq!(
        p.metrics
            .refusals(Direction::Outbound, RefusalReason::Limit),
        1
    );
    // The first one is unaffected.
    let answer = upload_then_answer(&mut first, b"x").await;
    assert_eq!(answer, "reply:1");
}

/// With one connection open (to a `half_close_server`), drains `p`: new connections
/// must be refused by the kernel (every listener closed), the open one must still be
/// served, and the proxy must then exit with nothing cut.
async fn drain_with_one_connection_open(p: Running) {
    let mut open = TcpStream::connect(p.addrs.outbound[0]).await.unwrap();
    wait_for(|| p.metrics.active(Direction::Outbound) == 1).await;
    p.drain.drain();
    let addr = p.addrs.outbound[0];
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "a listener still accepts after the drain");
    assert!(!p.task.is_finished(), "proxy exited with a connection open");
    let answer = upload_then_answer(&mut open, b"last").await;
    assert_eq!(answer, "reply:4");
    let report = drain_report(p.task).await;
    assert_eq!(report, DrainReport { cut: 0 });
}

#[tokio::test]
async fn drain_stops_accepting_and_lets_open_connections_finish() {
    let (server, _) = half_close_server().await;
    let p = start(Config::loopback(), fixed(server)).await;
    drain_with_one_connection_open(p).await;
}

/// `GET /healthz/ready` on the admin listener: the status line's code.
async fn readiness(addr: SocketAddr) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).await.unwrap();
    text.split(' ').nth(1).unwrap_or("").to_owned()
}

/// SIGTERM's path: readiness turns 503 at once, yet a connection that arrives during
/// the delay (the pod's endpoint is still being removed) is served, not reset; after
/// the delay the listeners close and the open connection still finishes.
#[tokio::test]
async fn termination_keeps_serving_new_connections_until_the_drain_delay_ends() {
    let (server, _) = half_close_server().await;
    let p = start(Config::loopback(), fixed(server)).await;
    assert_eq!(readiness(p.addrs.admin).await, "200");
    let trigger = p.drain.clone();
    let delay = Duration::from_millis(800);
    let started = std::time::Instant::now();
    let terminating = tokio::spawn(async move { trigger.terminate(delay).await });
    wait_for(|| p.drain.is_terminating()).await;
    assert_eq!(readiness(p.addrs.admin).await, "503");
    let mut late = TcpStream::connect(p.addrs.outbound[0]).await.unwrap();
    assert_eq!(upload_then_answer(&mut late, b"late").await, "reply:4");
    let mut open = TcpStream::connect(p.addrs.outbound[0]).await.unwrap();
    wait_for(|| p.metrics.active(Direction::Outbound) == 1).await;
    assert!(
        started.elapsed() < delay,
        "the checks ran past the delay; make it longer"
    );
    terminating.await.unwrap();
    assert!(started.elapsed() >= delay);
    // Drained now: new connections are refused, the open one finishes.
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(p.addrs.outbound[0]).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "a listener still accepts after the delay");
    assert_eq!(upload_then_answer(&mut open, b"last").await, "reply:4");
    assert_eq!(drain_report(p.task).await, DrainReport { cut: 0 });
}

/// `/quitquitquit` during the delay drains at once (a Job's app is done).
#[tokio::test]
async fn a_drain_during_the_termination_delay_ends_it() {
    let (server, _) = half_close_server().await;
    let p = start(Config::loopback(), fixed(server)).await;
    let trigger = p.drain.clone();
    let started = std::time::Instant::now();
    let terminating = tokio::spawn(async move { trigger.terminate(Duration::from_secs(30)).await });
    wait_for(|| p.drain.is_terminating()).await;
    assert_eq!(readiness(p.addrs.admin).await, "503");
    p.drain.drain();
    terminating.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(drain_report(p.task).await, DrainReport { cut: 0 });
}

/// Remembers which thread looked up each connection's destination: the thread that
/// accepted it.
#[derive(Debug)]
struct RecordThread {
    dst: SocketAddr,
    seen: std::sync::Mutex<Vec<String>>,
}

impl OriginalDst for RecordThread {
    fn original_dst(&self, _: &TcpStream, _: ListenAddr) -> Result<OrigDstAddr, OrigDstError> {
        let name = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned();
        self.seen.lock().unwrap().push(name);
        Ok(OrigDstAddr(self.dst))
    }
}

#[tokio::test]
async fn worker_threads_share_the_ports_and_the_drain() {
    let (server, _) = half_close_server().await;
    let mut config = Config::loopback();
    config.worker_threads = 3;
    let dst = Arc::new(RecordThread {
        dst: server,
        seen: Default::default(),
    });
    let p = start(config, dst.clone()).await;
    for _ in 0..60 {
        let mut c = TcpStream::connect(p.addrs.outbound[0]).await.unwrap();
        let answer = upload_then_answer(&mut c, b"abc").await;
        assert_eq!(answer, "reply:3");
    }
    let threads: std::collections::BTreeSet<String> =
        dst.seen.lock().unwrap().iter().cloned().collect();
    // The kernel hashes each connection to one of the three listeners: with 60
    // connections, all three threads take some (missing one: p < 1e-10).
    assert_eq!(threads.len(), 3, "{threads:?}");
    assert!(threads.contains("mesh-proxy-1") && threads.contains("mesh-proxy-2"));
    wait_for(|| p.metrics.active(Direction::Outbound) == 0).await;
    assert_eq!(
        series_value(
            &p.metrics,
            Direction::Outbound,
            server.port(),
            ResponseFlags::None
        )[..2],
        [60, 60]
    );
    // The drain closes every thread's listener and waits for their connections.
    drain_with_one_connection_open(p).await;
}

#[tokio::test]
async fn drain_timeout_cuts_what_is_left() {
    let (server, _) = half_close_server().await;
    let mut config = Config::loopback();
    config.drain_timeout = Duration::from_millis(200);
    let p = start(config, fixed(server)).await;
    let _open = TcpStream::connect(p.addrs.outbound[0]).await.unwrap();
    wait_for(|| p.metrics.active(Direction::Outbound) == 1).await;
    p.drain.drain();
    let report = drain_report(p.task).await;
    assert_eq!(report, DrainReport { cut: 1 });
}

#[tokio::test]
async fn upstream_reset_reaches_the_client() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 4];
        s.readable().await.unwrap();
        let _ = s.try_read(&mut buf);
        crate::flow::reset(s);
    });
    let p = start(Config::loopback(), fixed(server)).await;
    let mut c = TcpStream::connect(p.addrs.outbound[0]).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    expect_reset(c).await;
}

#[tokio::test]
async fn metrics_endpoint_shows_bytes_that_passed() {
    let (server, _) = half_close_server().await;
    let p = start(Config::loopback(), fixed(server)).await;
    let mut c = TcpStream::connect(p.addrs.outbound[0]).await.unwrap();
    c.write_all(&[1u8; 12345]).await.unwrap();
    c.shutdown().await.unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).await.unwrap();
    wait_for(|| p.metrics.active(Direction::Outbound) == 0).await;
    let mut m = TcpStream::connect(p.addrs.metrics).await.unwrap();
    m.write_all(b"GET /stats/prometheus HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    m.read_to_string(&mut text).await.unwrap();
    let port = format!("destination_port=\"{}\"", server.port());
    let find = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l.contains(&port))
            .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(find("istio_tcp_received_bytes_total{"), "12345");
    assert_eq!(find("istio_tcp_sent_bytes_total{"), "11");
    assert_eq!(find("istio_tcp_connections_opened_total{"), "1");
    assert_eq!(find("istio_tcp_connections_closed_total{"), "1");
}

/// Hands out the original destinations a test scripts, one per connection, in order;
/// `None` stands for "the kernel has none".
#[derive(Debug, Default)]
struct Script(std::sync::Mutex<std::collections::VecDeque<Option<SocketAddr>>>);

impl Script {
    fn next(&self, dst: Option<SocketAddr>) {
        self.0.lock().unwrap().push_back(dst);
    }
}

impl OriginalDst for Script {
    fn original_dst(&self, _: &TcpStream, _: ListenAddr) -> Result<OrigDstAddr, OrigDstError> {
        match self.0.lock().unwrap().pop_front() {
            Some(Some(dst)) => Ok(OrigDstAddr(dst)),
            _ => Err(OrigDstError::NotRedirected(io::ErrorKind::NotFound.into())),
        }
    }
}

/// The access-log lines so far whose response flags and error are `flags` / `error`.
fn log_lines(log: &Captured, flags: &str, error: &str) -> Vec<String> {
    let want = format!("\"response_flags\":\"{flags}\",\"error\":{error}}}");
    let lines = log.lock().unwrap();
    lines
        .iter()
        .filter(|l| l.ends_with(&want))
        .cloned()
        .collect()
}

/// Every way a connection can end writes exactly one access-log line and counts once:
/// a normal close, the connection limit, a loop, no original destination, and an
/// upstream that refuses the connect.
#[tokio::test]
async fn every_connection_is_logged_and_counted_exactly_once() {
    let (server, _) = half_close_server().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let script = Arc::new(Script::default());
    let mut config = Config::loopback();
    config.max_connections = 1;
    let (log, lines) = AccessLog::capture(AccessLogFormat::Json);
    let p = start_with_log(config, script.clone(), log).await;
    let out = p.addrs.outbound[0];

    // A normal connection, held open while a second one meets the limit.
    script.next(Some(server));
    let mut first = TcpStream::connect(out).await.unwrap();
    wait_for(|| p.metrics.active(Direction::Outbound) == 1).await;
    expect_reset(TcpStream::connect(out).await.unwrap()).await;
    assert_eq!(upload_then_answer(&mut first, b"hello").await, "reply:5");
    wait_for(|| p.metrics.active(Direction::Outbound) == 0).await;
    // A loop, no original destination, and a refused upstream connect.
    for dst in [Some(out), None, Some(closed)] {
        script.next(dst);
        expect_reset(TcpStream::connect(out).await.unwrap()).await;
        wait_for(|| p.metrics.active(Direction::Outbound) == 0).await;
    }
    // Whatever might still be written late would show up by now.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let all = lines.lock().unwrap().clone();
    assert_eq!(all.len(), 5, "{all:#?}");
    let normal = log_lines(&lines, "-", "null");
    assert_eq!(normal.len(), 1, "{all:#?}");
    let server_port = format!("\"original_dst\":\"{server}\"");
    assert!(normal[0].contains(&server_port), "{}", normal[0]);
    assert!(
        normal[0].contains("\"bytes_received\":5,\"bytes_sent\":7"),
        "{}",
        normal[0]
    );
    assert_eq!(log_lines(&lines, "OM", "\"limit\"").len(), 1, "{all:#?}");
    assert_eq!(log_lines(&lines, "NR", "\"loop\"").len(), 1, "{all:#?}");
    assert_eq!(
        log_lines(&lines, "NR", "\"no_original_dst\"").len(),
        1,
        "{all:#?}"
    );
    assert_eq!(log_lines(&lines, "UF", "\"refused\"").len(), 1, "{all:#?}");

    let m = &p.metrics;
    let d = Direction::Outbound;
    assert_eq!(
        series_value(m, d, server.port(), ResponseFlags::None),
        [1, 1, 5, 7]
    );
    assert_eq!(
        series_value(m, d, closed.port(), ResponseFlags::UpstreamFailure),
        [1, 1, 0, 0]
    );
    assert_eq!(m.refusals(d, RefusalReason::Limit), 1);
    assert_eq!(m.refusals(d, RefusalReason::Loop), 1);
    assert_eq!(m.refusals(d, RefusalReason::NoOriginalDst), 1);
    assert_eq!(m.connect_errors(d, ConnectErrorKind::Refused), 1);
}
