//! The load generator behind `bench/proxy`: a server for the world namespace and the
//! client workloads for a pod, in Rust so that the client and server cost as little as
//! they can and the proxy in between is what the numbers show. [`http`] is the HTTP/1.1
//! keep-alive workload of `bench/http`.
//!
//! Blocking sockets, one thread per stream or connection: no event loop of its own to
//! measure. Every workload returns one line of JSON for the orchestrator
//! (`bench/proxy/bench.py`, `bench/http/bench.py`).
#![forbid(unsafe_code)]

pub mod http;

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// The server's ports, one per workload, counted from a base port.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub base: u16,
}

impl Ports {
    /// Answers with the address it was reached at and the peer it saw.
    pub fn identity(self) -> u16 {
        self.base
    }
    /// Counts what a connection uploads, answers the total at end of stream.
    pub fn bulk(self) -> u16 {
        self.base + 1
    }
    /// Echoes every message.
    pub fn echo(self) -> u16 {
        self.base + 2
    }
    /// Echoes one 64-byte message and closes.
    pub fn conn(self) -> u16 {
        self.base + 3
    }
    /// Echoes one message and keeps the connection until the client closes it.
    pub fn hold(self) -> u16 {
        self.base + 4
    }
}

impl Default for Ports {
    fn default() -> Self {
        Ports { base: 5000 }
    }
}

/// Size of one exchange in the latency, connection and hold workloads.
pub const MESSAGE: usize = 64;
/// Size of each write in the bulk workload (and of the server's reads).
pub const BULK_CHUNK: usize = 1 << 20;
/// Threads accepting on the `conn` port at once, so concurrent clients are not
/// serialised behind one accept loop.
const CONN_ACCEPTORS: usize = 8;
/// Stack of the per-connection threads: they hold a few small buffers only.
const HANDLER_STACK: usize = 128 * 1024;
/// A socket read or write that blocks longer than this fails the workload.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

fn spawn_handler(f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    thread::Builder::new()
        .stack_size(HANDLER_STACK)
        .spawn(f)
        .map(|_| ())
}

/// Serves every workload's port on `ips` (e.g. `0.0.0.0` and `::`) until the process
/// ends. Returns once all listeners are bound.
pub fn serve(ips: &[IpAddr], ports: Ports) -> io::Result<()> {
    for &ip in ips {
        let bind = |port| {
            let addr = SocketAddr::new(ip, port);
            listen(addr).map_err(|e| io::Error::new(e.kind(), format!("listen on {addr}: {e}")))
        };
        let identity = bind(ports.identity())?;
        let bulk = bind(ports.bulk())?;
        let echo = bind(ports.echo())?;
        let conn = bind(ports.conn())?;
        let hold = bind(ports.hold())?;
        accept_on(identity, Handling::Inline, serve_identity)?;
        accept_on(bulk, Handling::Threaded, serve_bulk)?;
        accept_on(echo, Handling::Threaded, serve_echo)?;
        for _ in 0..CONN_ACCEPTORS {
            accept_on(conn.try_clone()?, Handling::Inline, serve_conn)?;
        }
        accept_on(hold, Handling::Threaded, serve_hold)?;
    }
    Ok(())
}

/// After a failed accept (out of file descriptors, say): wait a little instead of
/// spinning on the same error.
fn backoff() {
    thread::sleep(Duration::from_millis(5));
}

/// How a port's connections are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handling {
    /// By the accepting thread itself (short exchanges).
    Inline,
    /// Each on a thread of its own (long-lived connections).
    Threaded,
}

/// One thread accepts on `listener` until the process ends; a connection that fails
/// (reset, refused by a proxy) ends alone.
fn accept_on(
    listener: TcpListener,
    handling: Handling,
    handler: fn(TcpStream) -> io::Result<()>,
) -> io::Result<()> {
    spawn_handler(move || {
        for stream in listener.incoming() {
            let s = match stream {
                Ok(s) => s,
                Err(_) => {
                    backoff();
                    continue;
                }
            };
            if s.set_nodelay(true).is_err() {
                continue;
            }
            match handling {
                Handling::Inline => {
                    let _ = handler(s);
                }
                Handling::Threaded => {
                    // Out of threads: drop this connection, keep serving the others.
                    let _ = spawn_handler(move || {
                        let _ = handler(s);
                    });
                }
            }
        }
    })
}

fn serve_identity(mut s: TcpStream) -> io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut hello = [0u8; 256];
    let _ = s.read(&mut hello)?;
    let local = s.local_addr()?;
    let peer = s.peer_addr()?;
    let answer = format!(
        "{} {} {} {}\n",
        local.ip(),
        local.port(),
        peer.ip(),
        peer.port()
    );
    s.write_all(answer.as_bytes())
}

fn serve_bulk(mut s: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; BULK_CHUNK];
    let mut total: u64 = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    s.write_all(total.to_string().as_bytes())
}

fn serve_echo(mut s: TcpStream) -> io::Result<()> {
    let mut buf = [0u8; MESSAGE];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n])?;
    }
}

fn serve_conn(mut s: TcpStream) -> io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut buf = [0u8; MESSAGE];
    s.read_exact(&mut buf)?;
    s.write_all(&buf)
}

fn serve_hold(mut s: TcpStream) -> io::Result<()> {
    let mut buf = [0u8; MESSAGE];
    s.read_exact(&mut buf)?;
    s.write_all(&buf)?;
    // Keep it open until the client closes.
    while s.read(&mut buf)? > 0 {}
    Ok(())
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| io::Error::new(e.kind(), format!("connect to {addr}: {e}")))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(s)
}

fn pair(a: SocketAddr) -> String {
    format!("[\"{}\",{}]", a.ip(), a.port())
}

/// Where the identity exchange went: the address dialled, the address the server was
/// reached at, the peer the server saw and the client's own local address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub dialled: SocketAddr,
    pub reached: SocketAddr,
    pub server_saw: SocketAddr,
    pub client_local: SocketAddr,
}

impl Identity {
    pub fn to_json(&self) -> String {
        format!(
            "{{\"dialled\":{},\"reached\":{},\"server_saw\":{},\"client_local\":{}}}",
            pair(self.dialled),
            pair(self.reached),
            pair(self.server_saw),
            pair(self.client_local)
        )
    }
}

fn bad_answer(what: &str, answer: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected {what} from the server: {answer:?}"),
    )
}

/// Asks the identity port who it thinks it is talking to.
pub fn identity(host: IpAddr, ports: Ports) -> io::Result<Identity> {
    let dialled = SocketAddr::new(host, ports.identity());
    let mut s = connect(dialled)?;
    let client_local = s.local_addr()?;
    s.write_all(b"who am I talking to")?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let f: Vec<&str> = answer.split_whitespace().collect();
    let addr = |ip: &str, port: &str| -> Option<SocketAddr> {
        Some(SocketAddr::new(ip.parse().ok()?, port.parse().ok()?))
    };
    match f.as_slice() {
        [lip, lport, pip, pport] => Ok(Identity {
            dialled,
            reached: addr(lip, lport).ok_or_else(|| bad_answer("identity", &answer))?,
            server_saw: addr(pip, pport).ok_or_else(|| bad_answer("identity", &answer))?,
            client_local,
        }),
        _ => Err(bad_answer("identity", &answer)),
    }
}

/// What a bulk upload moved.
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    /// Bytes the server counted (equal to the bytes sent, or the run fails).
    pub bytes: u64,
    pub seconds: f64,
}

impl Bulk {
    pub fn gbit_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e9
    }
    pub fn to_json(&self) -> String {
        format!(
            "{{\"bytes\":{},\"seconds\":{:.6},\"gbit_s\":{:.4}}}",
            self.bytes,
            self.seconds,
            self.gbit_s()
        )
    }
}

/// A chunk of incompressible bytes (xorshift), so nothing on the path can shortcut it.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// `streams` connections upload as fast as they can for `seconds`; each then
/// half-closes and checks that the server counted every byte it sent.
pub fn bulk(host: IpAddr, ports: Ports, streams: usize, seconds: f64) -> io::Result<Bulk> {
    let addr = SocketAddr::new(host, ports.bulk());
    let chunk = Arc::new(noise(BULK_CHUNK));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..streams)
        .map(|_| {
            let chunk = chunk.clone();
            thread::spawn(move || -> io::Result<u64> {
                let mut s = connect(addr)?;
                let mut sent: u64 = 0;
                while Instant::now() < deadline {
                    s.write_all(&chunk)?;
                    sent += chunk.len() as u64;
                }
                s.shutdown(Shutdown::Write)?;
                let mut answer = String::new();
                s.read_to_string(&mut answer)?;
                let counted: u64 = answer
                    .trim()
                    .parse()
                    .map_err(|_| bad_answer("byte count", &answer))?;
                if counted != sent {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("sent {sent} bytes but the server counted {counted}"),
                    ));
                }
                Ok(counted)
            })
        })
        .collect();
    let mut bytes = 0;
    for w in workers {
        bytes += w
            .join()
            .map_err(|_| io::Error::other("a bulk stream panicked"))??;
    }
    Ok(Bulk {
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Round-trip times of 64-byte messages on one connection.
#[derive(Debug, Clone)]
pub struct Latency {
    /// Sorted, in nanoseconds.
    pub samples_ns: Vec<u64>,
}

impl Latency {
    /// The `p` quantile (0..=1) in microseconds.
    pub fn quantile_us(&self, p: f64) -> f64 {
        if self.samples_ns.is_empty() {
            return f64::NAN;
        }
        let i = ((p * self.samples_ns.len() as f64) as usize).min(self.samples_ns.len() - 1);
        self.samples_ns[i] as f64 / 1000.0
    }
    pub fn to_json(&self) -> String {
        format!(
            "{{\"n\":{},\"p50_us\":{:.2},\"p99_us\":{:.2},\"p999_us\":{:.2}}}",
            self.samples_ns.len(),
            self.quantile_us(0.5),
            self.quantile_us(0.99),
            self.quantile_us(0.999)
        )
    }
}

/// Ping-pong 64-byte messages for `seconds` (after 200 unmeasured ones).
pub fn latency(host: IpAddr, ports: Ports, seconds: f64) -> io::Result<Latency> {
    let mut s = connect(SocketAddr::new(host, ports.echo()))?;
    let msg = [b'x'; MESSAGE];
    let mut back = [0u8; MESSAGE];
    let mut exchange = |s: &mut TcpStream| -> io::Result<()> {
        s.write_all(&msg)?;
        s.read_exact(&mut back)
    };
    for _ in 0..200 {
        exchange(&mut s)?;
    }
    let mut samples_ns = Vec::with_capacity(1 << 16);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    loop {
        let t = Instant::now();
        if t >= deadline {
            break;
        }
        exchange(&mut s)?;
        samples_ns.push(t.elapsed().as_nanos() as u64);
    }
    samples_ns.sort_unstable();
    Ok(Latency { samples_ns })
}

/// New connections completed.
#[derive(Debug, Clone, Copy)]
pub struct ConnRate {
    pub conns: u64,
    pub seconds: f64,
}

impl ConnRate {
    pub fn per_s(&self) -> f64 {
        self.conns as f64 / self.seconds
    }
    pub fn to_json(&self) -> String {
        format!(
            "{{\"conns\":{},\"seconds\":{:.6},\"per_s\":{:.1}}}",
            self.conns,
            self.seconds,
            self.per_s()
        )
    }
}

/// `clients` loops, each: connect, one 64-byte exchange, close; for `seconds`.
pub fn connrate(host: IpAddr, ports: Ports, seconds: f64, clients: usize) -> io::Result<ConnRate> {
    let addr = SocketAddr::new(host, ports.conn());
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (done, failed) = (done.clone(), failed.clone());
            thread::spawn(move || -> io::Result<()> {
                let msg = [b'y'; MESSAGE];
                let mut back = [0u8; MESSAGE];
                while Instant::now() < deadline && !failed.load(Ordering::Relaxed) {
                    let r = connect(addr).and_then(|mut s| {
                        s.write_all(&msg)?;
                        s.read_exact(&mut back)
                    });
                    if let Err(e) = r {
                        failed.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    let mut first_error = None;
    for w in workers {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(io::Error::other("a connection loop panicked"));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(ConnRate {
        conns: done.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Opens `count` connections, one exchange each, and keeps them open until
/// `until_gone` no longer exists; `opened` is told once all are open.
pub fn hold(
    host: IpAddr,
    ports: Ports,
    count: usize,
    until_gone: &Path,
    opened: impl FnOnce(usize),
) -> io::Result<usize> {
    let addr = SocketAddr::new(host, ports.hold());
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let mut s = connect(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("connection {}: {e}", i + 1)))?;
        s.write_all(&[b'z'; MESSAGE])?;
        s.read_exact(&mut [0u8; MESSAGE])?;
        held.push(s);
    }
    opened(held.len());
    while until_gone.exists() {
        thread::sleep(Duration::from_millis(50));
    }
    Ok(held.len())
}

/// `{"open":N}`, as the orchestrator expects it.
pub fn open_json(n: usize) -> String {
    format!("{{\"open\":{n}}}")
}
