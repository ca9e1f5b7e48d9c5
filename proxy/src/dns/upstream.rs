//! Forwarding a query to the pod's nameservers and bringing back their answer, byte for
//! byte. Each try has a socket of its own (a fresh UDP port, connected to the upstream,
//! so the kernel drops datagrams from anyone else, and [`Check`] the ones that do not
//! answer this query); the proxy runs as uid 1337, so these sockets are not captured.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;
use tracing::debug;

use super::wire::{Check, Header};

/// The upstreams and how long each is given.
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub addrs: Vec<SocketAddr>,
    /// Per try (connect, send and answer together).
    pub timeout: Duration,
    /// Rounds over `addrs`.
    pub attempts: u8,
}

/// What a UDP try brought back.
#[derive(Debug)]
enum UdpAnswer {
    /// Fits the client's limit, TC clear.
    Complete(Vec<u8>),
    /// TC set, or bigger than the client's limit (then only its header is kept).
    Truncated { response: Vec<u8>, fits: bool },
}

impl Upstreams {
    fn rounds(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        (0..self.attempts.max(1)).flat_map(|_| self.addrs.iter().copied())
    }

    /// Forwards a query that came over UDP, for a client that takes `limit` bytes.
    /// A truncated answer is asked again of the same upstream over TCP; the full answer
    /// is relayed if it fits `limit`, else the truncated one (the client retries over
    /// TCP itself). An answer bigger than `limit` (an upstream ignoring the client's
    /// EDNS size) is replaced by `stub` of its header. `None`: no upstream answered.
    pub async fn forward_udp(
        &self,
        query: &[u8],
        check: Check<'_>,
        limit: usize,
        stub: impl Fn(&Header) -> Vec<u8>,
    ) -> Option<Vec<u8>> {
        for upstream in self.rounds() {
            let answer = match timeout(self.timeout, udp_try(upstream, query, check, limit)).await {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => {
                    debug!(%upstream, error = %e, "dns upstream failed (udp)");
                    continue;
                }
                Err(_) => {
                    debug!(%upstream, "dns upstream timed out (udp)");
                    continue;
                }
            };
            let (response, fits) = match answer {
                UdpAnswer::Complete(r) => return Some(r),
                UdpAnswer::Truncated { response, fits } => (response, fits),
            };
            match timeout(self.timeout, tcp_try(upstream, query, check)).await {
                Ok(Ok(full)) if full.len() <= limit => return Some(full),
                Ok(Ok(_)) => debug!(%upstream, "dns answer over tcp too big for the client's udp"),
                Ok(Err(e)) => debug!(%upstream, error = %e, "dns upstream failed (tcp after tc)"),
                Err(_) => debug!(%upstream, "dns upstream timed out (tcp after tc)"),
            }
            if fits {
                return Some(response);
            }
            return Header::parse(&response).map(|h| stub(&h));
        }
        None
    }

    /// Forwards a query that came over TCP, over TCP. `None`: no upstream answered.
    pub async fn forward_tcp(&self, query: &[u8], check: Check<'_>) -> Option<Vec<u8>> {
        for upstream in self.rounds() {
            match timeout(self.timeout, tcp_try(upstream, query, check)).await {
                Ok(Ok(r)) => return Some(r),
                Ok(Err(e)) => debug!(%upstream, error = %e, "dns upstream failed (tcp)"),
                Err(_) => debug!(%upstream, "dns upstream timed out (tcp)"),
            }
        }
        None
    }
}

async fn udp_try(
    upstream: SocketAddr,
    query: &[u8],
    check: Check<'_>,
    limit: usize,
) -> io::Result<UdpAnswer> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    // One byte more than the client takes, to tell "fits" from "was cut".
    let mut buf = vec![0u8; limit + 1];
    loop {
        // A refused port (ICMP) is an error here, on the connected socket: next upstream.
        let n = socket.recv(&mut buf).await?;
        let Some(response) = buf.get(..n) else {
            continue;
        };
        if !check.matches(response) {
            debug!(%upstream, "dns: ignoring a datagram that does not answer the query");
            continue;
        }
        let truncated = Header::parse(response).is_some_and(|h| h.truncated());
        let fits = n <= limit;
        buf.truncate(n);
        return Ok(if fits && !truncated {
            UdpAnswer::Complete(buf)
        } else {
            UdpAnswer::Truncated {
                response: buf,
                fits,
            }
        });
    }
}

async fn tcp_try(upstream: SocketAddr, query: &[u8], check: Check<'_>) -> io::Result<Vec<u8>> {
    let len = u16::try_from(query.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too long for tcp"))?;
    let mut stream = TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let mut framed = Vec::with_capacity(2 + query.len());
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let n = usize::from(stream.read_u16().await?);
    let mut response = vec![0u8; n];
    stream.read_exact(&mut response).await?;
    if !check.matches(&response) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "tcp response does not answer the query",
        ));
    }
    Ok(response)
}
