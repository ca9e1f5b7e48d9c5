//! The DNS proxy on loopback: a static table of mesh names, a fake upstream nameserver
//! (UDP and TCP) written here, and a hand-built client.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mesh_proxy::dns::{DnsConfig, DnsCounts, DnsMetrics, DnsServer, ServiceNames};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const A: u16 = 1;
const AAAA: u16 = 28;
const MX: u16 = 15;
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- the mesh's names

struct Names(HashMap<&'static str, Vec<IpAddr>>);

impl Names {
    fn new() -> Arc<Names> {
        let reviews = vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10))];
        let dual = vec![
            IpAddr::V4(Ipv4Addr::new(10, 96, 0, 11)),
            "fd00::11".parse().unwrap(),
        ];
        let mut map = HashMap::new();
        // What the lead's store resolves: every form of a Service's name.
        for n in [
            "reviews",
            "reviews.default",
            "reviews.default.svc",
            "reviews.default.svc.cluster.local",
        ] {
            map.insert(n, reviews.clone());
        }
        for n in ["dual", "dual.default.svc.cluster.local"] {
            map.insert(n, dual.clone());
        }
        Arc::new(Names(map))
    }
}

impl ServiceNames for Names {
    fn lookup(&self, name: &str) -> Pin<Box<dyn Future<Output = Option<Vec<IpAddr>>> + Send + '_>> {
        let found = self.0.get(name).cloned();
        Box::pin(async move { found })
    }
}

// ---------------------------------------------------------------- messages

fn query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    if edns {
        m.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
    }
    m
}

/// The question's end in a message (names written by [`query`]: no pointers).
fn question_end(m: &[u8]) -> usize {
    let mut pos = 12;
    while m[pos] != 0 {
        pos += 1 + usize::from(m[pos]);
    }
    pos + 5
}

/// The lower-case name of a message's question.
fn qname(m: &[u8]) -> String {
    let mut pos = 12;
    let mut labels = Vec::new();
    while m[pos] != 0 {
        let len = usize::from(m[pos]);
        labels.push(String::from_utf8_lossy(&m[pos + 1..pos + 1 + len]).to_lowercase());
        pos += 1 + len;
    }
    labels.join(".")
}

fn id(m: &[u8]) -> u16 {
    u16::from_be_bytes([m[0], m[1]])
}

fn rcode(m: &[u8]) -> u8 {
    m[3] & 0x0f
}

fn counts(m: &[u8]) -> [u16; 4] {
    [4, 6, 8, 10].map(|i| u16::from_be_bytes([m[i], m[i + 1]]))
}

/// The proxy's answer records (each named by a pointer to the question): (type, TTL, data).
fn records(m: &[u8]) -> Vec<(u16, u32, Vec<u8>)> {
    let mut pos = question_end(m);
    let mut out = Vec::new();
    for _ in 0..counts(m)[1] {
        assert_eq!(&m[pos..pos + 2], &[0xc0, 12]);
        let rtype = u16::from_be_bytes([m[pos + 2], m[pos + 3]]);
        let ttl = u32::from_be_bytes(m[pos + 6..pos + 10].try_into().unwrap());
        let len = usize::from(u16::from_be_bytes([m[pos + 10], m[pos + 11]]));
        out.push((rtype, ttl, m[pos + 12..pos + 12 + len].to_vec()));
        pos += 12 + len;
    }
    out
}

// ---------------------------------------------------------------- the fake upstream

/// What the fake upstream answers `q` with: an A record for `*.example.org` whose name
/// is a compression pointer, plus an authority record with a pointer into the answer
/// (the proxy must relay both untouched); NXDOMAIN for anything else. `tc`: only a
/// header and the question, TC set.
fn upstream_answer(q: &[u8], tc: bool) -> Vec<u8> {
    let end = question_end(q);
    let mut r = q[..end].to_vec();
    r[2] = 0x81 | if tc { 0x02 } else { 0 }; // QR, RD (+TC)
    r[3] = 0x80;
    r[10..12].copy_from_slice(&[0, 0]);
    if tc {
        return r;
    }
    if !qname(q).ends_with("example.org") {
        r[3] |= 3;
        return r;
    }
    r[6..8].copy_from_slice(&[0, 1]);
    r[8..10].copy_from_slice(&[0, 1]);
    let answer_at = r.len();
    r.extend_from_slice(&[
        0xc0, 12, 0, 1, 0, 1, 0, 0, 0x0e, 0x10, 0, 4, 93, 184, 216, 34,
    ]);
    // NS for example.org (a pointer into the question's name), data a pointer too.
    let org = 12 + 1 + q[12] as usize;
    r.extend_from_slice(&[0xc0, org as u8, 0, 2, 0, 1, 0, 0, 0x0e, 0x10, 0, 2]);
    r.extend_from_slice(&[0xc0, answer_at as u8]);
    if qname(q) == "huge.example.org" {
        // Bigger than 512 bytes, TC clear: an upstream ignoring the client's size.
        r[10..12].copy_from_slice(&[0, 1]);
        r.extend_from_slice(&[0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0x01, 0xf4]);
        for _ in 0..2 {
            r.push(249);
            r.extend_from_slice(&[b'x'; 249]);
        }
    }
    r
}

#[derive(Default)]
struct Seen {
    udp: AtomicUsize,
    tcp: AtomicUsize,
}

/// A nameserver on 127.0.0.1 (UDP and TCP, same port): `tc.example.org` over UDP gets TC;
/// `silent.example.org` gets nothing.
async fn fake_upstream() -> (SocketAddr, Arc<Seen>) {
    // A free UDP port whose TCP twin may be taken by a connection of another test: then
    // try another.
    let (udp, addr, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = TcpListener::bind(addr).await {
            break (udp, addr, tcp);
        }
    };
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        loop {
            let (n, peer) = udp.recv_from(&mut buf).await.unwrap();
            s.udp.fetch_add(1, Ordering::SeqCst);
            let q = &buf[..n];
            match qname(q).as_str() {
                "silent.example.org" => continue,
                "tc.example.org" => udp.send_to(&upstream_answer(q, true), peer).await,
                _ => udp.send_to(&upstream_answer(q, false), peer).await,
            }
            .unwrap();
        }
    });
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut c, _) = tcp.accept().await.unwrap();
            let s = s.clone();
            tokio::spawn(async move {
                while let Ok(len) = c.read_u16().await {
                    let mut q = vec![0u8; usize::from(len)];
                    c.read_exact(&mut q).await.unwrap();
                    s.tcp.fetch_add(1, Ordering::SeqCst);
                    let r = upstream_answer(&q, false);
                    c.write_all(&(r.len() as u16).to_be_bytes()).await.unwrap();
                    c.write_all(&r).await.unwrap();
                }
            });
        }
    });
    (addr, seen)
}

/// A port nothing listens on (UDP: refused at once; TCP: refused).
fn dead_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    drop(s);
    addr
}

// ---------------------------------------------------------------- the proxy

struct Proxy {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    metrics: Arc<DnsMetrics>,
}

impl Proxy {
    fn counts(&self) -> DnsCounts {
        self.metrics.snapshot()
    }
}

async fn start(upstreams: Vec<SocketAddr>, tweak: impl FnOnce(&mut DnsConfig)) -> Proxy {
    let resolv = "search default.svc.cluster.local svc.cluster.local cluster.local example.com\n\
                  options ndots:5 timeout:2\n";
    let mut config = DnsConfig::from_resolv_conf(resolv, vec!["127.0.0.1:0".parse().unwrap()]);
    config.upstreams = upstreams;
    tweak(&mut config);
    let server = DnsServer::bind(config, Names::new()).await.unwrap();
    let addr = server.local_addrs()[0];
    assert_ne!(addr.port(), 0);
    let metrics = server.metrics();
    let (stop, shutdown) = watch::channel(false);
    let task = tokio::spawn(server.run(shutdown));
    Proxy {
        addr,
        stop,
        task,
        metrics,
    }
}

/// One query over UDP, sent once: the exact counts the tests check leave no room for
/// retransmissions (loopback does not drop a lone datagram).
async fn udp(proxy: SocketAddr, msg: &[u8]) -> Vec<u8> {
    udp_with_retries(proxy, msg, WAIT, 1).await
}

/// One query over UDP, sent again every `every` like a stub resolver does.
async fn udp_with_retries(proxy: SocketAddr, msg: &[u8], every: Duration, tries: u32) -> Vec<u8> {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.connect(proxy).await.unwrap();
    let mut buf = vec![0u8; 65535];
    for _ in 0..tries {
        s.send(msg).await.unwrap();
        if let Ok(n) = tokio::time::timeout(every, s.recv(&mut buf)).await {
            buf.truncate(n.unwrap());
            return buf;
        }
    }
    panic!("no answer");
}

async fn tcp_send(c: &mut TcpStream, msg: &[u8]) {
    c.write_all(&(msg.len() as u16).to_be_bytes())
        .await
        .unwrap();
    c.write_all(msg).await.unwrap();
}

async fn tcp_recv(c: &mut TcpStream) -> Vec<u8> {
    let len = tokio::time::timeout(WAIT, c.read_u16())
        .await
        .expect("no answer")
        .unwrap();
    let mut r = vec![0u8; usize::from(len)];
    c.read_exact(&mut r).await.unwrap();
    r
}

fn ten() -> Vec<(u16, u32, Vec<u8>)> {
    vec![(A, 30, vec![10, 96, 0, 10])]
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn answers_a_for_a_service_fqdn() {
    let (up, seen) = fake_upstream().await;
    let p = start(vec![up], |_| {}).await;
    let q = query(0x1234, "reviews.default.svc.cluster.local", A, false);
    let r = udp(p.addr, &q).await;
    assert_eq!(id(&r), 0x1234);
    assert_eq!(r[2] & 0x87, 0x81, "QR and RD, opcode 0"); // RD copied
    assert_eq!(r[2] & 0x04, 0, "not authoritative");
    assert_eq!(r[3], 0x80, "RA, NOERROR");
    assert_eq!(counts(&r), [1, 1, 0, 0]);
    assert_eq!(&r[12..question_end(&q)], &q[12..]);
    assert_eq!(records(&r), ten());
    assert_eq!(
        seen.udp.load(Ordering::SeqCst),
        0,
        "mesh names are not forwarded"
    );
    assert_eq!(p.counts().answered, 1);
}

#[tokio::test]
async fn strips_search_suffixes_and_keeps_the_case() {
    let (up, seen) = fake_upstream().await;
    let p = start(vec![up], |_| {}).await;
    // `reviews` with the search list's last domain appended by the app's resolver.
    let r = udp(p.addr, &query(1, "reviews.example.com", A, false)).await;
    assert_eq!(records(&r), ten());
    // Case-insensitive; the answer echoes the question as it was asked.
    let q = query(2, "ReViEwS.Default.SVC.cluster.local", A, false);
    let r = udp(p.addr, &q).await;
    assert_eq!(&r[12..question_end(&q)], &q[12..]);
    assert_eq!(records(&r), ten());
    let r = udp(p.addr, &query(3, "reviews", A, false)).await;
    assert_eq!(records(&r), ten());
    assert_eq!(seen.udp.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn nodata_not_nxdomain() {
    let (up, seen) = fake_upstream().await;
    let p = start(vec![up], |_| {}).await;
    for (name, qtype) in [("reviews", AAAA), ("reviews.default", MX)] {
        let r = udp(p.addr, &query(7, name, qtype, false)).await;
        assert_eq!(rcode(&r), 0, "{name}");
        assert_eq!(counts(&r), [1, 0, 0, 0], "{name}");
    }
    let r = udp(p.addr, &query(8, "dual", AAAA, false)).await;
    let v6: Ipv6Addr = "fd00::11".parse().unwrap();
    assert_eq!(records(&r), vec![(AAAA, 30, v6.octets().to_vec())]);
    let r = udp(
        p.addr,
        &query(9, "dual.default.svc.cluster.local", A, false),
    )
    .await;
    assert_eq!(records(&r), vec![(A, 30, vec![10, 96, 0, 11])]);
    assert_eq!(seen.udp.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn edns_queries_get_a_minimal_opt() {
    let (up, _) = fake_upstream().await;
    let p = start(vec![up], |_| {}).await;
    let r = udp(p.addr, &query(5, "reviews", A, true)).await;
    assert_eq!(counts(&r), [1, 1, 0, 1]);
    assert_eq!(records(&r), ten());
    assert_eq!(
        &r[r.len() - 11..],
        &[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]
    );
}

#[tokio::test]
async fn forwards_other_names_byte_for_byte() {
    let (up, seen) = fake_upstream().await;
    let p = start(vec![up], |_| {}).await;
    for (i, edns) in [false, true].into_iter().enumerate() {
        let q = query(0xabc0 + i as u16, "www.Example.org", A, edns);
        let r = udp(p.addr, &q).await;
        assert_eq!(r, upstream_answer(&q, false));
    }
    // The upstream's NXDOMAIN is relayed too.
    let q = query(0xabcd, "nowhere.invalid", A, false);
    let r = udp(p.addr, &q).await;
    assert_eq!(rcode(&r), 3);
    assert_eq!(r, upstream_answer(&q, false));
    assert_eq!(seen.udp.load(Ordering::SeqCst), 3);
    assert_eq!(p.counts().forwarded, 3);
}

#[tokio::test]
async fn truncated_upstream_answers_are_fetched_over_tcp() {
    let (up, seen) = fake_upstream().await;
    let p = start(vec![up], |_| {}).await;
    let q = query(0x7c, "tc.example.org", A, false);
    let r = udp(p.addr, &q).await;
    assert_eq!(r, upstream_answer(&q, false));
    assert_eq!(r[2] & 0x02, 0, "TC clear: the whole answer");
    assert_eq!(seen.udp.load(Ordering::SeqCst), 1);
    assert_eq!(seen.tcp.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn answers_too_big_for_the_client_become_tc() {
    let (up, seen) = fake_upstream().await;
    let p = start(vec![up], |_| {}).await;
    let q = query(0x99, "huge.example.org", A, false);
    let full = upstream_answer(&q, false);
    assert!(full.len() > 512);
    // Over UDP without EDNS: header and question, TC set, after asking over TCP too.
    let r = udp(p.addr, &q).await;
    assert_eq!(r[2] & 0x02, 0x02);
    assert_eq!(counts(&r), [1, 0, 0, 0]);
    assert_eq!(r[..2], full[..2]);
    assert_eq!(r[3], full[3]);
    assert_eq!(&r[12..], &q[12..]);
    assert_eq!(seen.tcp.load(Ordering::SeqCst), 1);
    // The client then asks over TCP, and gets all of it.
    let mut c = TcpStream::connect(p.addr).await.unwrap();
    tcp_send(&mut c, &q).await;
    assert_eq!(tcp_recv(&mut c).await, full);
}

#[tokio::test]
async fn other_opcodes_are_forwarded_as_they_are() {
    let (up, seen) = fake_upstream().await;
    let p = start(vec![up], |_| {}).await;
    // An UPDATE for zone example.org (its zone section is shaped like a question).
    let mut q = query(0x31, "example.org", 6, false);
    q[2] = 0x28;
    let r = udp(p.addr, &q).await;
    let mut expected = upstream_answer(&q, false);
    expected[2] = 0x81; // what the fake upstream writes, whatever the opcode
    assert_eq!(r, expected);
    assert_eq!(seen.udp.load(Ordering::SeqCst), 1);
    // No upstream: SERVFAIL, header alone, the opcode kept.
    let p = start(vec![dead_port()], |_| {}).await;
    let r = udp(p.addr, &q).await;
    assert_eq!(
        (id(&r), r[2] & 0x78, rcode(&r), r.len()),
        (0x31, 0x28, 2, 12)
    );
}

#[tokio::test]
async fn servfail_when_no_upstream_answers() {
    let p = start(vec![dead_port(), dead_port()], |_| {}).await;
    let q = query(0x5f, "www.example.org", A, true);
    let r = udp(p.addr, &q).await;
    assert_eq!(id(&r), 0x5f);
    assert_eq!(rcode(&r), 2);
    assert_eq!(counts(&r), [1, 0, 0, 1]);
    assert_eq!(&r[12..question_end(&q)], &q[12..question_end(&q)]);
    let mut c = TcpStream::connect(p.addr).await.unwrap();
    tcp_send(&mut c, &query(0x60, "www.example.org", A, false)).await;
    let r = tcp_recv(&mut c).await;
    assert_eq!((id(&r), rcode(&r)), (0x60, 2));
    assert_eq!(p.counts().failed, 2);
    // Mesh names still resolve.
    assert_eq!(
        records(&udp(p.addr, &query(1, "reviews", A, false)).await),
        ten()
    );
}

#[tokio::test]
async fn a_silent_upstream_times_out_and_the_next_answers() {
    let (up, seen) = fake_upstream().await;
    let blackhole = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let p = start(vec![blackhole.local_addr().unwrap(), up], |c| {
        c.timeout = Duration::from_millis(200);
        c.attempts = 1;
    })
    .await;
    let q = query(0x11, "www.example.org", A, false);
    assert_eq!(udp(p.addr, &q).await, upstream_answer(&q, false));
    // An upstream that never answers at all: SERVFAIL after the tries.
    let q = query(0x12, "silent.example.org", A, false);
    let r = udp(p.addr, &q).await;
    assert_eq!(rcode(&r), 2);
    assert_eq!(seen.udp.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn tcp_carries_several_queries() {
    let (up, seen) = fake_upstream().await;
    let p = start(vec![up], |_| {}).await;
    let mut c = TcpStream::connect(p.addr).await.unwrap();
    let external = query(2, "api.example.org", A, false);
    // Pipelined: three queries before reading any answer.
    tcp_send(&mut c, &query(1, "reviews", A, false)).await;
    tcp_send(&mut c, &external).await;
    tcp_send(&mut c, &query(3, "dual", AAAA, false)).await;
    let mut answers = HashMap::new();
    for _ in 0..3 {
        let r = tcp_recv(&mut c).await;
        answers.insert(id(&r), r);
    }
    assert_eq!(records(&answers[&1]), ten());
    assert_eq!(answers[&2], upstream_answer(&external, false));
    assert_eq!(records(&answers[&3]).len(), 1);
    assert_eq!(
        seen.tcp.load(Ordering::SeqCst),
        1,
        "TCP queries go upstream over TCP"
    );
    assert_eq!(seen.udp.load(Ordering::SeqCst), 0);
    // And the connection still serves after that.
    tcp_send(&mut c, &query(4, "reviews.default", A, false)).await;
    assert_eq!(records(&tcp_recv(&mut c).await), ten());
}

#[tokio::test]
async fn idle_tcp_connections_are_closed() {
    let (up, _) = fake_upstream().await;
    let p = start(vec![up], |c| {
        c.tcp_idle_timeout = Duration::from_millis(100)
    })
    .await;
    let mut c = TcpStream::connect(p.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(WAIT, c.read(&mut buf)).await.unwrap();
    assert_eq!(n.unwrap_or(0), 0, "closed");
}

#[tokio::test]
async fn malformed_queries_get_formerr() {
    let (up, seen) = fake_upstream().await;
    let p = start(vec![up], |_| {}).await;
    let mut two_questions = query(0x21, "reviews", A, false);
    two_questions[5] = 2;
    let mut pointer = query(0x22, "x", A, false);
    pointer.truncate(12);
    pointer.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let mut cut = query(0x23, "reviews.default.svc.cluster.local", A, false);
    cut.truncate(20);
    for q in [&two_questions, &pointer, &cut] {
        let r = udp(p.addr, q).await;
        assert_eq!(id(&r), id(q));
        assert_eq!(r[2] & 0x80, 0x80);
        assert_eq!(rcode(&r), 1);
        assert_eq!(r.len(), 12);
    }
    let mut c = TcpStream::connect(p.addr).await.unwrap();
    tcp_send(&mut c, &pointer).await;
    assert_eq!(rcode(&tcp_recv(&mut c).await), 1);
    // Garbage shorter than a header and responses are not answered; the proxy lives on.
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(b"\x01\x02\x03", p.addr).await.unwrap();
    let mut response = query(0x24, "reviews", A, false);
    response[2] |= 0x80;
    s.send_to(&response, p.addr).await.unwrap();
    assert_eq!(
        records(&udp(p.addr, &query(0x25, "reviews", A, false)).await),
        ten()
    );
    assert_eq!(
        seen.udp.load(Ordering::SeqCst) + seen.tcp.load(Ordering::SeqCst),
        0
    );
    let counts = p.counts();
    assert_eq!((counts.malformed, counts.dropped), (4, 2));
}

#[tokio::test]
async fn many_concurrent_queries() {
    let (up, _) = fake_upstream().await;
    let p = start(vec![up], |_| {}).await;
    let mut tasks = Vec::new();
    for i in 0..400u16 {
        let addr = p.addr;
        tasks.push(tokio::spawn(async move {
            let (q, external) = if i % 2 == 0 {
                (query(i, "reviews", A, i % 4 == 0), false)
            } else {
                (query(i, &format!("host{i}.example.org"), A, false), true)
            };
            // 400 datagrams at once overflow a socket's receive buffer (the proxy's or
            // the fake upstream's): the client retransmits, as resolvers do.
            let r = udp_with_retries(addr, &q, Duration::from_millis(500), 20).await;
            assert_eq!(id(&r), i);
            if external {
                assert_eq!(r, upstream_answer(&q, false));
            } else {
                assert_eq!(records(&r), ten());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let counts = p.counts();
    // At least: a retransmitted query may be answered twice.
    assert!(
        counts.answered >= 200 && counts.forwarded >= 200,
        "{counts:?}"
    );
}

#[tokio::test]
async fn stops_on_shutdown() {
    let (up, _) = fake_upstream().await;
    let p = start(vec![up], |_| {}).await;
    assert_eq!(
        records(&udp(p.addr, &query(1, "reviews", A, false)).await),
        ten()
    );
    p.stop.send_replace(true);
    tokio::time::timeout(WAIT, p.task).await.unwrap().unwrap();
    // The port is free again: both sockets were closed.
    UdpSocket::bind(p.addr).await.unwrap();
    TcpListener::bind(p.addr).await.unwrap();
}

#[tokio::test]
async fn bind_errors_surface() {
    let taken = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let config = DnsConfig::new(vec![taken.local_addr().unwrap()], vec![]);
    let err = DnsServer::bind(config, Names::new()).await.unwrap_err();
    assert!(err.to_string().contains("udp"), "{err}");
    let err = DnsServer::bind(DnsConfig::new(vec![], vec![]), Names::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no address"), "{err}");
}
