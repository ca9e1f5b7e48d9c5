//! The listeners: one UDP socket and one TCP listener per listen address, each with a
//! loop that hands every query to a task of its own (`handle`), under one in-flight
//! limit. TCP connections carry several queries (RFC 7766: 2-byte length framing,
//! pipelined queries answered as they complete, an idle timeout).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::answer::{self, Decision};
use super::config::DnsConfig;
use super::metrics::{DnsMetrics, Outcome};
use super::upstream::Upstreams;
use super::wire::{self, Check, Header, MAX_UDP_PAYLOAD, MIN_UDP_PAYLOAD, Parsed};
use super::{DnsError, ServiceNames};
use crate::listener;

/// Queries of one TCP connection handled at once.
const TCP_PIPELINE: usize = 16;
/// Tries at a port free for both UDP and TCP when port 0 is asked for.
const PORT_TRIES: usize = 16;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What every query's task shares.
struct Ctx {
    names: Arc<dyn ServiceNames>,
    search: Vec<String>,
    ndots: u8,
    ttl: u32,
    lookup_timeout: Duration,
    upstreams: Upstreams,
    metrics: Arc<DnsMetrics>,
    in_flight: Arc<Semaphore>,
    tcp_connections: Arc<Semaphore>,
    tcp_idle_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

/// The DNS proxy with its sockets bound, not yet serving.
pub struct DnsServer {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    addrs: Vec<SocketAddr>,
    ctx: Arc<Ctx>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addrs", &self.addrs)
            .field("upstreams", &self.ctx.upstreams.addrs)
            .finish_non_exhaustive()
    }
}

fn ipv6_unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EAFNOSUPPORT | nix::libc::EADDRNOTAVAIL | nix::libc::EPROTONOSUPPORT)
    )
}

fn bind_udp(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Binds UDP, then TCP on the same port (with port 0, tries again if that port is
/// taken for TCP).
fn bind_pair(addr: SocketAddr) -> Result<(std::net::UdpSocket, std::net::TcpListener), DnsError> {
    let err = |proto, source| DnsError::Bind {
        addr,
        proto,
        source,
    };
    let mut tries = 0;
    loop {
        tries += 1;
        let udp = bind_udp(addr).map_err(|e| err("udp", e))?;
        let port = udp.local_addr().map_err(|e| err("udp", e))?.port();
        match listener::bind_std(SocketAddr::new(addr.ip(), port), false) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e)
                if addr.port() == 0
                    && e.kind() == io::ErrorKind::AddrInUse
                    && tries < PORT_TRIES => {}
            Err(e) => return Err(err("tcp", e)),
        }
    }
}

impl DnsServer {
    /// Binds UDP and TCP on every listen address (within a tokio runtime). An IPv6
    /// address is skipped, with a warning, where the host has no IPv6; any other bind
    /// error is returned, as is having nothing left to listen on.
    pub async fn bind(
        config: DnsConfig,
        names: Arc<dyn ServiceNames>,
    ) -> Result<DnsServer, DnsError> {
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        let mut addrs = Vec::new();
        for &addr in &config.listen {
            let (u, t) = match bind_pair(addr) {
                Ok(pair) => pair,
                Err(DnsError::Bind { source, .. })
                    if addr.is_ipv6() && ipv6_unavailable(&source) =>
                {
                    warn!(%addr, error = %source, "IPv6 unavailable; DNS not served on it");
                    continue;
                }
                Err(e) => return Err(e),
            };
            let bound = u.local_addr().map_err(|source| DnsError::Bind {
                addr,
                proto: "udp",
                source,
            })?;
            let u = UdpSocket::from_std(u).map_err(|source| DnsError::Bind {
                addr,
                proto: "udp",
                source,
            })?;
            let t = TcpListener::from_std(t).map_err(|source| DnsError::Bind {
                addr,
                proto: "tcp",
                source,
            })?;
            udp.push(u);
            tcp.push(t);
            addrs.push(bound);
        }
        if addrs.is_empty() {
            return Err(DnsError::NoListener);
        }
        let ctx = Arc::new(Ctx {
            names,
            search: config.search,
            ndots: config.ndots,
            ttl: config.ttl,
            lookup_timeout: config.lookup_timeout,
            upstreams: Upstreams {
                addrs: config.upstreams,
                timeout: config.timeout,
                attempts: config.attempts,
            },
            metrics: Arc::default(),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            tcp_connections: Arc::new(Semaphore::new(config.max_tcp_connections.max(1))),
            tcp_idle_timeout: config.tcp_idle_timeout,
        });
        Ok(DnsServer {
            udp,
            tcp,
            addrs,
            ctx,
        })
    }

    /// The addresses really bound (ports resolved), UDP and TCP on each.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn metrics(&self) -> Arc<DnsMetrics> {
        self.ctx.metrics.clone()
    }

    /// Serves until `shutdown` turns true (or its sender is dropped), then closes the
    /// sockets; queries already in flight finish on their own tasks.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        info!(listen = ?self.addrs, upstreams = ?self.ctx.upstreams.addrs, search = ?self.ctx.search, "dns proxy ready");
        let mut loops = JoinSet::new();
        for socket in self.udp {
            loops.spawn(udp_loop(
                Arc::new(socket),
                self.ctx.clone(),
                shutdown.clone(),
            ));
        }
        for l in self.tcp {
            loops.spawn(tcp_loop(l, self.ctx.clone(), shutdown.clone()));
        }
        while loops.join_next().await.is_some() {}
        debug!("dns proxy stopped");
    }
}

/// Resolves once `shutdown` is true or its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

async fn udp_loop(socket: Arc<UdpSocket>, ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    // One byte more than any query the proxy takes, to tell one that was cut.
    let mut buf = vec![0u8; MAX_UDP_PAYLOAD + 1];
    loop {
        let received = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            r = socket.recv_from(&mut buf) => r,
        };
        let (n, peer) = match received {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "dns: udp receive failed");
                tokio::time::sleep(BACKOFF_MIN).await;
                continue;
            }
        };
        let Some(msg) = buf.get(..n).filter(|_| n <= MAX_UDP_PAYLOAD) else {
            ctx.metrics.count(Outcome::Dropped);
            continue;
        };
        let Ok(permit) = ctx.in_flight.clone().try_acquire_owned() else {
            debug!(%peer, "dns: too many queries in flight; dropping one");
            ctx.metrics.count(Outcome::Dropped);
            continue;
        };
        let msg = msg.to_vec();
        let (socket, ctx) = (socket.clone(), ctx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(response) = handle(&ctx, &msg, Transport::Udp).await
                && let Err(e) = socket.send_to(&response, peer).await
            {
                debug!(%peer, error = %e, "dns: udp send failed");
            }
        });
    }
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS | nix::libc::ENOMEM)
    )
}

async fn tcp_loop(listener: TcpListener, ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = BACKOFF_MIN;
                let Ok(permit) = ctx.tcp_connections.clone().try_acquire_owned() else {
                    debug!(%peer, "dns: tcp connection limit reached; closing");
                    ctx.metrics.count(Outcome::Dropped);
                    continue;
                };
                tokio::spawn(tcp_connection(
                    stream,
                    ctx.clone(),
                    shutdown.clone(),
                    permit,
                ));
            }
            Err(e) if is_fd_exhaustion(&e) => {
                warn!(error = %e, "dns: accept: out of file descriptors; backing off");
                tokio::select! {
                    _ = stopped(&mut shutdown) => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            Err(e) => debug!(error = %e, "dns: accept failed"),
        }
    }
}

/// Reads one length-prefixed message; `None` at a clean end of stream.
async fn read_message(rd: &mut OwnedReadHalf) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match rd.read(&mut len[..1]).await? {
        0 => return Ok(None),
        _ => rd.read_exact(&mut len[1..]).await?,
    };
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    rd.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

async fn write_responses(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(response) = rx.recv().await {
        let Ok(len) = u16::try_from(response.len()) else {
            continue;
        };
        let mut framed = Vec::with_capacity(2 + response.len());
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&response);
        if let Err(e) = wr.write_all(&framed).await {
            debug!(error = %e, "dns: tcp write failed");
            return;
        }
    }
    let _ = wr.shutdown().await;
}

async fn tcp_connection(
    stream: TcpStream,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Vec<u8>>(TCP_PIPELINE);
    let writer = tokio::spawn(write_responses(wr, rx));
    let pipeline = Arc::new(Semaphore::new(TCP_PIPELINE));
    loop {
        let read = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            r = tokio::time::timeout(ctx.tcp_idle_timeout, read_message(&mut rd)) => r,
        };
        let msg = match read {
            Ok(Ok(Some(msg))) => msg,
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                debug!(error = %e, "dns: tcp read failed");
                break;
            }
            Err(_) => {
                debug!("dns: tcp connection idle; closing");
                break;
            }
        };
        let permits = tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            p = async {
                let mine = pipeline.clone().acquire_owned().await.ok()?;
                let global = ctx.in_flight.clone().acquire_owned().await.ok()?;
                Some((mine, global))
            } => p,
        };
        let Some(permits) = permits else {
            break;
        };
        let (tx, ctx) = (tx.clone(), ctx.clone());
        tokio::spawn(async move {
            let _permits = permits;
            if let Some(response) = handle(&ctx, &msg, Transport::Tcp).await {
                let _ = tx.send(response).await;
            }
        });
    }
    // The writer ends once every query's task has sent its answer (or given up).
    drop(tx);
    let _ = writer.await;
}

/// The response to one message from a client, if any.
async fn handle(ctx: &Ctx, msg: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let metrics = &ctx.metrics;
    let query = match wire::parse(msg) {
        Parsed::Ignore => {
            metrics.count(Outcome::Dropped);
            return None;
        }
        Parsed::Malformed(header) => {
            if let Err(why) = wire::parse_query(msg, header) {
                debug!(?why, id = header.id, "dns: malformed query");
            }
            metrics.count(Outcome::Malformed);
            return Some(wire::format_error(&header));
        }
        Parsed::OtherOpcode(header) => return forward_other(ctx, msg, header, transport).await,
        Parsed::Query(q) => q,
    };
    let limit = match transport {
        Transport::Udp => query.udp_limit(),
        Transport::Tcp => usize::from(u16::MAX),
    };
    let decision = answer::decide(
        &query,
        &*ctx.names,
        &ctx.search,
        ctx.ndots,
        ctx.lookup_timeout,
    )
    .await;
    if let Some(response) = answer::respond(&query, &decision, ctx.ttl, limit) {
        metrics.count(match decision {
            Decision::LookupTimeout => {
                debug!(name = ?query.question.name, "dns: mesh lookup timed out; SERVFAIL");
                Outcome::Failed
            }
            _ => Outcome::Answered,
        });
        return Some(response);
    }
    let check = Check {
        id: query.header.id,
        question: Some(query.question_bytes()),
    };
    let forwarded = match transport {
        Transport::Udp => {
            ctx.upstreams
                .forward_udp(msg, check, limit, |h| wire::truncated_stub(h, &query))
                .await
        }
        Transport::Tcp => ctx.upstreams.forward_tcp(msg, check).await,
    };
    match forwarded {
        Some(response) => {
            metrics.count(Outcome::Forwarded);
            Some(response)
        }
        None => {
            debug!(name = ?query.question.name, "dns: no upstream answered; SERVFAIL");
            metrics.count(Outcome::Failed);
            Some(wire::empty_response(&query, wire::RCODE_SERVFAIL))
        }
    }
}

/// Another opcode (NOTIFY, UPDATE...): forwarded as is (the app meant the pod's
/// nameserver); SERVFAIL with the header alone if no upstream answers.
async fn forward_other(
    ctx: &Ctx,
    msg: &[u8],
    header: Header,
    transport: Transport,
) -> Option<Vec<u8>> {
    let check = Check {
        id: header.id,
        question: None,
    };
    let forwarded = match transport {
        Transport::Udp => {
            ctx.upstreams
                .forward_udp(msg, check, MIN_UDP_PAYLOAD, wire::truncated_header)
                .await
        }
        Transport::Tcp => ctx.upstreams.forward_tcp(msg, check).await,
    };
    match forwarded {
        Some(response) => {
            ctx.metrics.count(Outcome::Forwarded);
            Some(response)
        }
        None => {
            ctx.metrics.count(Outcome::Failed);
            Some(wire::server_failure_header(&header))
        }
    }
}
