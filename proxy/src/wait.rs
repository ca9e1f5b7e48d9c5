//! `mesh-proxy wait`: blocks until the pod's proxy is ready, for the `postStart` hook
//! the injector writes with ProxyConfig `holdApplicationUntilProxyStarts` on a regular
//! sidecar. Kubernetes starts a pod's containers in order and runs each one's
//! `postStart` hook before starting the next, so the proxy (injected first) holding its
//! hook until ready holds the app back, as Istio's `pilot-agent wait` does. Plain
//! blocking std I/O: it runs once, for a few seconds, in a process of its own.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mesh_common::PROXY_READY_PATH;

/// How often readiness is asked.
const PERIOD: Duration = Duration::from_millis(200);
/// Each attempt's connect and read limit.
const ATTEMPT: Duration = Duration::from_secs(1);

/// What `wait` was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitArgs {
    pub admin_addr: SocketAddr,
    pub timeout: Duration,
}

impl Default for WaitArgs {
    fn default() -> WaitArgs {
        WaitArgs {
            admin_addr: SocketAddr::from(([127, 0, 0, 1], mesh_common::PROXY_ADMIN_PORT)),
            timeout: Duration::from_secs(60),
        }
    }
}

/// Why the proxy was not found ready.
#[derive(Debug, thiserror::Error)]
#[error("the proxy at {addr} was not ready within {waited:?}: {last}")]
pub struct NotReady {
    pub addr: SocketAddr,
    pub waited: Duration,
    /// The last attempt's answer or error.
    pub last: String,
}

/// Asks `GET /healthz/ready` every 200 ms until it answers 200.
pub fn wait(args: &WaitArgs) -> Result<Duration, NotReady> {
    let started = Instant::now();
    loop {
        let last = match probe(args.admin_addr) {
            Ok(200) => return Ok(started.elapsed()),
            Ok(status) => format!("status {status}"),
            Err(e) => e.to_string(),
        };
        if started.elapsed() + PERIOD > args.timeout {
            return Err(NotReady {
                addr: args.admin_addr,
                waited: started.elapsed(),
                last,
            });
        }
        std::thread::sleep(PERIOD);
    }
}

/// One readiness request: the status code.
fn probe(addr: SocketAddr) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, ATTEMPT)?;
    s.set_read_timeout(Some(ATTEMPT))?;
    s.set_write_timeout(Some(ATTEMPT))?;
    // One write: a server may answer (and close) on the first bytes it reads.
    let request =
        format!("GET {PROXY_READY_PATH} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes())?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An admin port that answers 503 `ready_after` times, then 200.
    fn admin(ready_after: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let asked = Arc::new(AtomicUsize::new(0));
        let n = asked.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let mut s = s.unwrap();
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf);
                let seen = n.fetch_add(1, Ordering::SeqCst);
                let status = if seen >= ready_after {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = write!(s, "HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            }
        });
        (addr, asked)
    }

    #[test]
    fn returns_once_ready() {
        let (addr, asked) = admin(3);
        let args = WaitArgs {
            admin_addr: addr,
            timeout: Duration::from_secs(10),
        };
        wait(&args).unwrap();
        // Not before the fourth answer, the first 200.
        assert!(asked.load(Ordering::SeqCst) >= 4);
    }

    #[test]
    fn gives_up_after_the_timeout_saying_why() {
        let (addr, _) = admin(usize::MAX);
        let args = WaitArgs {
            admin_addr: addr,
            timeout: Duration::from_millis(500),
        };
        let e = wait(&args).unwrap_err();
        assert!(e.to_string().contains("status 503"), "{e}");
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let e = wait(&WaitArgs {
            admin_addr: closed,
            timeout: Duration::from_millis(300),
        })
        .unwrap_err();
        assert!(e.to_string().contains("not ready"), "{e}");
    }
}
