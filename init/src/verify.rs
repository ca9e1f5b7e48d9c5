//! `--verify`: after applying, prove that the kernel really redirects. A connection to
//! a sentinel address must land on a temporary listener bound to the proxy port.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::explain::{Direction, Outcome, Packet, Proto, explain};
use crate::model::{Family, Settings};

/// Why verification failed; one line each.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "--verify: sentinel {dst} is not captured by these flags ({why}); choose one with --verify-dst"
    )]
    NotCaptured { dst: SocketAddr, why: String },
    #[error("--verify: cannot listen on proxy port {port} ({source})")]
    Listen {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("--verify: connection to sentinel {dst} did not land on proxy port {port}: {detail}")]
    NotLanded {
        dst: SocketAddr,
        port: u16,
        detail: String,
    },
}

/// The default sentinel for a family (documentation ranges).
pub fn default_sentinel(family: Family) -> SocketAddr {
    match family {
        Family::V4 => SocketAddr::from(([192, 0, 2, 10], 9)),
        Family::V6 => SocketAddr::from(([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10], 9)),
    }
}

/// Connects to `dst` as this process (`uid`/`gid`) and checks it reaches a listener on
/// the proxy port, within `timeout`.
pub fn verify(
    settings: &Settings,
    dst: SocketAddr,
    uid: u32,
    gid: u32,
    timeout: Duration,
) -> Result<(), VerifyError> {
    let family = Family::of(dst.ip());
    let port = settings.proxy_port;
    let packet = Packet {
        proto: Proto::Tcp,
        dst,
        src: None,
        direction: Direction::Outbound {
            uid,
            gid,
            out_iface: "eth0".into(),
        },
    };
    let predicted = explain(&settings.ruleset(family), &packet);
    if predicted.outcome != Outcome::Redirect(port) {
        return Err(VerifyError::NotCaptured {
            dst,
            why: format!("{}: {}", predicted.outcome, predicted.why),
        });
    }
    let bind: SocketAddr = match family {
        Family::V4 => SocketAddr::from(([0, 0, 0, 0], port)),
        Family::V6 => SocketAddr::from(([0u16; 8], port)),
    };
    let listener =
        TcpListener::bind(bind).map_err(|source| VerifyError::Listen { port, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| VerifyError::Listen { port, source })?;
    let not_landed = |detail: String| VerifyError::NotLanded { dst, port, detail };
    let client = TcpStream::connect_timeout(&dst, timeout)
        .map_err(|e| not_landed(format!("connect failed: {e}")))?;
    let local = client
        .local_addr()
        .map_err(|e| not_landed(format!("local address: {e}")))?;
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((_, peer)) if peer == local => {
                tracing::info!(%dst, port, "verify: sentinel connection landed on the proxy port");
                return Ok(());
            }
            // Someone else's connection: keep waiting for ours.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(not_landed(format!("accept: {e}"))),
        }
        if Instant::now() >= deadline {
            return Err(not_landed(
                "connected somewhere else (the rules do not redirect it)".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Flags;

    #[test]
    fn refuses_a_sentinel_the_rules_would_not_capture() {
        let f = Flags {
            exclude_outbound_cidrs: "192.0.2.0/24".into(),
            ..Flags::default()
        };
        let s = Settings::from_flags(&f).unwrap();
        let err = verify(
            &s,
            default_sentinel(Family::V4),
            0,
            0,
            Duration::from_millis(50),
        )
        .unwrap_err();
        assert!(matches!(err, VerifyError::NotCaptured { .. }), "{err}");
        assert!(err.to_string().contains("-x"), "{err}");
    }
}
