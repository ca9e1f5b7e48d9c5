//! Where a redirected connection was really going: the one socket-option boundary.
//!
//! The kernel's nat REDIRECT rewrites the destination to our listener and remembers the
//! original in conntrack; `SO_ORIGINAL_DST` (IPv4) and `IP6T_SO_ORIGINAL_DST` (IPv6) read
//! it back. Both are reached through socket2's safe wrappers, so this crate has no
//! `unsafe`. The [`OriginalDst`] trait lets tests hand the proxy any destination they
//! like, with no iptables at all.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

use crate::addrs::{ListenAddr, OrigDstAddr};

/// Reading the original destination failed.
#[derive(Debug, thiserror::Error)]
pub enum OrigDstError {
    /// The kernel has no NAT record for this connection (it was not redirected, or
    /// conntrack is not loaded).
    #[error("connection has no original destination (not redirected?): {0}")]
    NotRedirected(#[source] io::Error),
    #[error("reading the original destination failed: {0}")]
    Sockopt(#[source] io::Error),
    #[error("original destination is not an IP socket address")]
    NotInet,
}

/// A source of original destinations for accepted connections.
pub trait OriginalDst: Send + Sync + fmt::Debug + 'static {
    /// The destination `stream` (accepted on `listen`) was dialled to.
    fn original_dst(
        &self,
        stream: &TcpStream,
        listen: ListenAddr,
    ) -> Result<OrigDstAddr, OrigDstError>;
}

/// The real thing: asks the kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct KernelOriginalDst;

impl OriginalDst for KernelOriginalDst {
    fn original_dst(
        &self,
        stream: &TcpStream,
        listen: ListenAddr,
    ) -> Result<OrigDstAddr, OrigDstError> {
        let sock = SockRef::from(stream);
        let addr = match listen.addr() {
            SocketAddr::V4(_) => sock.original_dst_v4(),
            SocketAddr::V6(_) => sock.original_dst_v6(),
        };
        match addr {
            Ok(addr) => addr
                .as_socket()
                .map(OrigDstAddr)
                .ok_or(OrigDstError::NotInet),
            // ENOENT: no conntrack entry / not NATed.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => {
                Err(OrigDstError::NotRedirected(e))
            }
            Err(e) => Err(OrigDstError::Sockopt(e)),
        }
    }
}

/// A fixed original destination for every connection: for tests without iptables.
#[derive(Debug, Clone, Copy)]
pub struct FixedOriginalDst(pub SocketAddr);

impl OriginalDst for FixedOriginalDst {
    fn original_dst(&self, _: &TcpStream, _: ListenAddr) -> Result<OrigDstAddr, OrigDstError> {
        Ok(OrigDstAddr(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a redirect the kernel either has no record (ENOENT) or, when conntrack
    /// tracks loopback, reports the address that was dialled. Both are the truth; any
    /// other error means the wrong option was asked for the socket's family.
    async fn unredirected_connection_on(bind: &str) {
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        match KernelOriginalDst.original_dst(&accepted, ListenAddr(addr)) {
            Ok(dst) => assert_eq!(dst.addr(), addr),
            Err(OrigDstError::NotRedirected(_)) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    #[tokio::test]
    async fn kernel_reports_dialled_address_or_no_redirect() {
        unredirected_connection_on("127.0.0.1:0").await;
    }

    #[tokio::test]
    async fn ipv6_socket_uses_ipv6_option() {
        unredirected_connection_on("[::1]:0").await;
    }
}
