//! Dialling upstream, and refusing a client with a reset.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::{TcpSocket, TcpStream};

use crate::addrs::OrigDstAddr;
use crate::metrics::ConnectErrorKind;

/// Connecting upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("binding passthrough source {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[source] io::Error),
}

impl ConnectError {
    pub fn kind(&self) -> ConnectErrorKind {
        match self {
            ConnectError::Bind { .. } => ConnectErrorKind::Bind,
            ConnectError::Timeout(_) => ConnectErrorKind::Timeout,
            ConnectError::Io(e) => match e.kind() {
                io::ErrorKind::ConnectionRefused => ConnectErrorKind::Refused,
                io::ErrorKind::ConnectionReset => ConnectErrorKind::Reset,
                io::ErrorKind::TimedOut => ConnectErrorKind::Timeout,
                io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
                    ConnectErrorKind::Unreachable
                }
                _ => ConnectErrorKind::Other,
            },
        }
    }
}

/// Connects to `dst` within `timeout`, from `source` (any port) when one is given.
pub async fn connect(
    dst: OrigDstAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let socket = match dst.addr() {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(ConnectError::Io)?;
    // The proxy must not add Nagle delays of its own: the apps' sockets decide.
    let _ = socket.set_nodelay(true);
    if let Some(ip) = source {
        let addr = SocketAddr::new(ip, 0);
        socket
            .bind(addr)
            .map_err(|source| ConnectError::Bind { addr, source })?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(dst.addr()))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
        .map_err(ConnectError::Io)?;
    Ok(stream)
}

/// Closes `stream` with a reset (SO_LINGER 0), as a refused connection would look.
pub fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_error_kinds() {
        let e = ConnectError::Io(io::ErrorKind::ConnectionRefused.into());
        assert_eq!(e.kind(), ConnectErrorKind::Refused);
        assert_eq!(
            ConnectError::Timeout(Duration::from_secs(1)).kind(),
            ConnectErrorKind::Timeout
        );
        let e = ConnectError::Io(io::ErrorKind::HostUnreachable.into());
        assert_eq!(e.kind(), ConnectErrorKind::Unreachable);
    }
}
