//! mesh-proxy on the real kernel redirect: a "pod" namespace with the capture rules
//! `mesh-init` installs and the proxy running as uid 1337, and a "world" namespace
//! with servers and clients. Needs root; fails loudly without it.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use mesh_tests::proxy_support::{
    POD_V4, POD_V6, PodWorld, WORLD_V4, WORLD_V6, http_get, metric, send_pattern, sock,
    verify_pattern,
};

const BIG: usize = 64 * 1024 * 1024;

/// A server in `ns` that, per connection: checks the client's upload against
/// pattern `seed`, then answers with `reply_len` bytes of pattern `seed + 1` and closes.
/// Returns (client address seen, bytes verified) through the join handle.
fn pattern_server(
    listener: TcpListener,
    seed: u64,
    reply_len: usize,
) -> thread::JoinHandle<(SocketAddr, u64)> {
    thread::spawn(move || {
        let (mut s, peer) = listener.accept().expect("accept");
        let got = verify_pattern(&mut s, seed).expect("upload intact");
        send_pattern(&mut s, seed + 1, reply_len).expect("send reply");
        s.shutdown(Shutdown::Write).expect("shutdown");
        (peer, got)
    })
}

/// Uploads `len` bytes of pattern `seed`, half-closes, verifies the reply.
fn pattern_client(addr: SocketAddr, seed: u64, len: usize) -> u64 {
    let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let mut w = c.try_clone().expect("clone");
    let writer = thread::spawn(move || {
        send_pattern(&mut w, seed, len).expect("upload");
        w.shutdown(Shutdown::Write).expect("half-close");
    });
    let got = verify_pattern(&mut c, seed + 1).expect("reply intact");
    writer.join().expect("writer");
    got
}

fn outbound(world_ip: &str, pod_ip: &str, len: usize, proxy_args: &[&str]) {
    let net = PodWorld::new();
    let _proxy = net.start_proxy(proxy_args);
    let server_addr = sock(world_ip, 8080);
    let listener = net
        .world
        .run(|| TcpListener::bind(server_addr).expect("bind in world"));
    let server = pattern_server(listener, 11, len);
    let got = net.pod.run(|| pattern_client(server_addr, 11, len));
    let (peer, uploaded) = server.join().expect("server");
    assert_eq!(uploaded, len as u64, "server received the whole upload");
    assert_eq!(got, len as u64, "client received the whole reply");
    assert_eq!(
        peer.ip(),
        pod_ip.parse::<IpAddr>().expect("ip"),
        "server saw the pod"
    );

    // The proxy really carried it: its counters match the bytes that passed.
    let text = net.metrics();
    let labels = [
        "reporter=\"source\"",
        "direction=\"outbound\"",
        "destination_port=\"8080\"",
        "source_workload=\"app-7c9d-x2x\"",
        "source_workload_namespace=\"shop\"",
    ];
    assert_eq!(
        metric(&text, "istio_tcp_received_bytes_total", &labels),
        len as u64,
        "{text}"
    );
    assert_eq!(
        metric(&text, "istio_tcp_sent_bytes_total", &labels),
        len as u64
    );
    assert_eq!(
        metric(&text, "istio_tcp_connections_opened_total", &labels),
        1
    );
    assert_eq!(
        metric(&text, "istio_tcp_connections_closed_total", &labels),
        1
    );
}

#[test]
fn outbound_ipv4_carries_64mib_each_way_intact_with_splice() {
    outbound(WORLD_V4, POD_V4, BIG, &["--copy-mode", "splice"]);
}

#[test]
fn outbound_ipv4_carries_64mib_each_way_intact_with_default_adaptive_copy() {
    outbound(WORLD_V4, POD_V4, BIG, &[]);
}

#[test]
fn outbound_ipv6_carries_64mib_each_way_intact_buffered() {
    outbound(WORLD_V6, POD_V6, BIG, &["--copy-mode", "buffered"]);
}

fn inbound(pod_ip: &str, world_ip: &str, passthrough: &str) {
    let net = PodWorld::new();
    let _proxy = net.start_proxy(&[]);
    // The app listens on its pod address; peers dial it from the world.
    let app_addr = sock(pod_ip, 8080);
    let listener = net
        .pod
        .run(|| TcpListener::bind(app_addr).expect("bind in pod"));
    let app = pattern_server(listener, 21, 4 * 1024 * 1024);
    let got = net
        .world
        .run(|| pattern_client(app_addr, 21, 8 * 1024 * 1024));
    let (peer, uploaded) = app.join().expect("app");
    assert_eq!(uploaded, 8 * 1024 * 1024);
    assert_eq!(got, 4 * 1024 * 1024);
    assert_eq!(
        peer.ip(),
        passthrough.parse::<IpAddr>().expect("ip"),
        "the app sees the proxy's passthrough source"
    );
    let text = net.metrics();
    let labels = [
        "reporter=\"destination\"",
        "direction=\"inbound\"",
        "destination_port=\"8080\"",
        "destination_workload=\"app-7c9d-x2x\"",
    ];
    assert_eq!(
        metric(&text, "istio_tcp_received_bytes_total", &labels),
        8 * 1024 * 1024,
        "{text}"
    );
    assert_eq!(
        metric(&text, "istio_tcp_sent_bytes_total", &labels),
        4 * 1024 * 1024
    );
    let _ = world_ip;
}

#[test]
fn inbound_ipv4_reaches_app_from_127_0_0_6() {
    inbound(POD_V4, WORLD_V4, "127.0.0.6");
}

#[test]
fn inbound_ipv6_reaches_app_from_colon_colon_6() {
    inbound(POD_V6, WORLD_V6, "::6");
}

/// The server speaks after the client half-closes, and the client speaks after the
/// server half-closes: both directions end on their own.
#[test]
fn half_close_both_ways_through_the_proxy() {
    let net = PodWorld::new();
    let _proxy = net.start_proxy(&[]);
    let addr = sock(WORLD_V4, 7000);
    let listener = net.world.run(|| TcpListener::bind(addr).expect("bind"));
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut req = Vec::new();
        s.read_to_end(&mut req).expect("read request to EOF");
        s.write_all(b"answer after your EOF").expect("answer");
        s.shutdown(Shutdown::Write).expect("shutdown");
        req
    });
    let answer = net.pod.run(|| {
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(b"question").expect("write");
        c.shutdown(Shutdown::Write).expect("half-close");
        let mut a = String::new();
        c.read_to_string(&mut a).expect("read answer");
        a
    });
    assert_eq!(server.join().expect("server"), b"question");
    assert_eq!(answer, "answer after your EOF");

    // Reverse: the server closes its side first; the client keeps talking.
    let addr = sock(WORLD_V6, 7001);
    let listener = net.world.run(|| TcpListener::bind(addr).expect("bind"));
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.write_all(b"hello").expect("greet");
        s.shutdown(Shutdown::Write).expect("shutdown");
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).expect("read");
        rest
    });
    net.pod.run(|| {
        let mut c = TcpStream::connect(addr).expect("connect");
        let mut greeting = Vec::new();
        c.read_to_end(&mut greeting).expect("greeting to EOF");
        assert_eq!(greeting, b"hello");
        c.write_all(b"still talking").expect("write after EOF");
        c.shutdown(Shutdown::Write).expect("half-close");
    });
    assert_eq!(server.join().expect("server"), b"still talking");
}

/// The client sees the connection reset. The proxy accepts and then resets, and on a
/// loaded machine the reset can arrive before the client's `connect` returns: the kernel
/// then reports it from `connect` itself (ECONNRESET), which is the same reset.
fn expect_reset(c: std::io::Result<TcpStream>) {
    let mut c = match c {
        Ok(c) => c,
        Err(e) => {
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "connect: expected success or a reset, got {e}"
            );
            return;
        }
    };
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 8];
    // A signal to the test process can interrupt the read (EINTR): that says nothing
    // about the connection, so read again.
    let r = loop {
        match c.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r,
        }
    };
    match r {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("expected a reset, read {n} bytes (0 = an empty close)"),
    }
}

#[test]
fn connections_to_the_proxy_itself_are_refused_not_looped() {
    let net = PodWorld::new();
    let _proxy = net.start_proxy(&[]);
    // From the world to the pod's capture ports: captured inbound, original
    // destination is our own listener.
    for port in [15001, 15006] {
        for ip in [POD_V4, POD_V6] {
            let c = net.world.run(|| TcpStream::connect(sock(ip, port)));
            expect_reset(c);
        }
    }
    // From the app straight at the listener (loopback is not captured).
    let c = net.pod.run(|| TcpStream::connect("127.0.0.1:15006"));
    expect_reset(c);
    thread::sleep(Duration::from_millis(200));
    let text = net.metrics();
    let loops = metric(
        &text,
        "mesh_proxy_refused_connections_total",
        &["reason=\"loop\""],
    );
    let none = metric(
        &text,
        "mesh_proxy_refused_connections_total",
        &["reason=\"no_original_dst\""],
    );
    assert_eq!(loops + none, 5, "{text}");
    assert!(loops >= 4, "{text}");
    assert_eq!(metric(&text, "istio_tcp_connections_opened_total", &[]), 0);
}

#[test]
fn refused_upstream_is_seen_as_a_reset() {
    let net = PodWorld::new();
    let _proxy = net.start_proxy(&[]);
    for ip in [WORLD_V4, WORLD_V6] {
        // Nothing listens on port 9 in the world.
        let c = net.pod.run(|| TcpStream::connect(sock(ip, 9)));
        expect_reset(c);
    }
    assert_upstream_failures(&net.metrics(), "refused", 9, 2);
}

/// The metrics show `n` outbound connect errors of `kind`, each also counted as an
/// opened connection to `port` flagged UF (upstream failure), as Istio reports them.
fn assert_upstream_failures(text: &str, kind: &str, port: u16, n: u64) {
    let kind = format!("kind=\"{kind}\"");
    assert_eq!(
        metric(
            text,
            "mesh_proxy_connect_errors_total",
            &["direction=\"outbound\"", &kind]
        ),
        n,
        "{text}"
    );
    let port = format!("destination_port=\"{port}\"");
    assert_eq!(
        metric(
            text,
            "istio_tcp_connections_opened_total",
            &["response_flags=\"UF\"", &port]
        ),
        n,
        "{text}"
    );
}

#[test]
fn unanswered_connect_times_out_into_a_reset() {
    let net = PodWorld::new();
    // The world silently drops SYNs to port 7300: the upstream connect can only time out.
    for tool in ["iptables", "ip6tables"] {
        net.world.output_ok(
            tool,
            &[
                "-w", "-A", "INPUT", "-p", "tcp", "--dport", "7300", "-j", "DROP",
            ],
        );
    }
    let _proxy = net.start_proxy(&["--connect-timeout", "600ms"]);
    for ip in [WORLD_V4, WORLD_V6] {
        let started = std::time::Instant::now();
        let c = net.pod.run(|| TcpStream::connect(sock(ip, 7300)));
        expect_reset(c);
        let waited = started.elapsed();
        // The reset comes when --connect-timeout runs out: not at once (that would be a
        // refusal) and well before the kernel's own SYN retries give up (about 2 min).
        assert!(
            waited >= Duration::from_millis(550) && waited < Duration::from_secs(4),
            "{ip}: reset after {waited:?}, expected about 600ms"
        );
    }
    assert_upstream_failures(&net.metrics(), "timeout", 7300, 2);
}

/// SIGTERM, as the kubelet sends it when the pod is deleted: readiness turns 503 at
/// once, a connection that arrives during `--drain-delay` (while the pod's endpoint is
/// still being removed from its Services) is served, then the listeners close and the
/// open connection still finishes.
#[test]
fn sigterm_drains_open_connections_then_exits_zero() {
    let net = PodWorld::new();
    let mut proxy = net.start_proxy(&[
        "--access-log",
        "json",
        "--drain-delay",
        "1500ms",
        "--drain-timeout",
        "20s",
    ]);
    let late_addr = sock(WORLD_V4, 7102);
    let late_listener = net
        .world
        .run(|| TcpListener::bind(late_addr).expect("bind"));
    let late_server = thread::spawn(move || {
        let (mut s, _) = late_listener.accept().expect("accept");
        s.write_all(b"served").expect("answer");
    });
    let addr = sock(WORLD_V4, 7100);
    let listener = net.world.run(|| TcpListener::bind(addr).expect("bind"));
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut req = Vec::new();
        s.read_to_end(&mut req).expect("read");
        s.write_all(&req).expect("echo");
        s.shutdown(Shutdown::Write).expect("shutdown");
    });
    let mut open = net.pod.run(|| TcpStream::connect(addr).expect("connect"));
    open.write_all(b"before drain;").expect("write");
    thread::sleep(Duration::from_millis(200));

    let pid = nix::unistd::Pid::from_raw(proxy.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let not_ready = mesh_tests::netns::wait_until(Duration::from_secs(1), || {
        net.pod
            .run(|| http_get("127.0.0.1:15021".parse().expect("addr"), "/healthz/ready"))
            .map(|(status, _)| status == 503)
            .unwrap_or(false)
    });
    assert!(not_ready, "readiness still 200 after SIGTERM");
    // Still accepting during the delay: a late connection goes through.
    let mut late = net
        .pod
        .run(|| TcpStream::connect(late_addr).expect("connect during the delay"));
    let mut answer = String::new();
    late.read_to_string(&mut answer).expect("late answer");
    assert_eq!(answer, "served");
    drop(late);
    late_server.join().expect("late server");
    // After the delay new connections are no longer taken (the redirect hits a closed
    // port).
    let refused = mesh_tests::netns::wait_until(Duration::from_secs(5), || {
        net.pod.run(|| {
            TcpStream::connect_timeout(&sock(WORLD_V4, 7101), Duration::from_secs(1)).is_err()
        })
    });
    assert!(refused, "proxy still accepting after SIGTERM");
    assert!(
        proxy.child_mut().try_wait().expect("try_wait").is_none(),
        "proxy exited with a connection still open"
    );
    // The open connection still works to the end.
    open.write_all(b" after drain").expect("write during drain");
    open.shutdown(Shutdown::Write).expect("half-close");
    let mut echo = String::new();
    open.read_to_string(&mut echo).expect("echo");
    assert_eq!(echo, "before drain; after drain");
    server.join().expect("server");
    let mut stdout = proxy.child_mut().stdout.take().expect("piped stdout");
    let status = proxy
        .terminate(Duration::from_secs(10))
        .expect("proxy exits after the drain");
    assert!(status.success(), "exit status {status}");

    let mut log = String::new();
    stdout.read_to_string(&mut log).expect("access log");
    let line = log
        .lines()
        .find(|l| l.contains("\"original_dst\":\"198.18.0.1:7100\""))
        .unwrap_or_else(|| panic!("no access-log line for the drained connection:\n{log}"));
    assert!(line.contains("\"bytes_received\":25"), "{line}");
    assert!(line.contains("\"bytes_sent\":25"), "{line}");
    assert!(line.contains("\"direction\":\"outbound\""), "{line}");
}
