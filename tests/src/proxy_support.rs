//! A pod and the world, joined by a veth pair, with the real capture rules installed by
//! `mesh-init` and `mesh-proxy` running as uid 1337 inside the pod.
//!
//! | namespace | IPv4         | IPv6            |
//! |-----------|--------------|-----------------|
//! | pod       | 198.18.0.2   | fd00:198:18::2  |
//! | world     | 198.18.0.1   | fd00:198:18::1  |

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use crate::bins::bin;
use crate::netns::{ChildGuard, Netns, link, require_root_and_tools, wait_until};

pub const POD_V4: &str = "198.18.0.2";
pub const WORLD_V4: &str = "198.18.0.1";
pub const POD_V6: &str = "fd00:198:18::2";
pub const WORLD_V6: &str = "fd00:198:18::1";

/// `ip:port`, with brackets for IPv6.
pub fn sock(ip: &str, port: u16) -> SocketAddr {
    let ip: std::net::IpAddr = ip.parse().expect("ip");
    SocketAddr::new(ip, port)
}

/// The two namespaces, linked, with capture rules in the pod. Drop the proxy guard
/// before this (declare it after).
pub struct PodWorld {
    pub pod: Netns,
    pub world: Netns,
}

impl PodWorld {
    pub fn new() -> PodWorld {
        require_root_and_tools(&["ip", "iptables-restore", "ip6tables-restore", "setpriv"]);
        let pod = Netns::new("ppod");
        let world = Netns::new("pwld");
        link(
            &pod,
            &["198.18.0.2/24", "fd00:198:18::2/64"],
            &world,
            &["198.18.0.1/24", "fd00:198:18::1/64"],
        );
        pod.output_ok(bin("mesh-init"), &mesh_common::DEFAULT_INIT_ARGS);
        PodWorld { pod, world }
    }

    /// Starts `mesh-proxy` as uid/gid 1337 in the pod and waits until it is ready.
    /// Its stdout (the access log) is piped; stderr is inherited.
    pub fn start_proxy(&self, extra: &[&str]) -> ChildGuard {
        let proxy = bin("mesh-proxy");
        let mut args: Vec<&str> = vec![
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
            proxy.to_str().expect("utf-8 path"),
        ];
        args.extend_from_slice(extra);
        let mut cmd = self.pod.command("setpriv", &args);
        cmd.stdout(Stdio::piped());
        cmd.env("POD_NAME", "app-7c9d-x2x")
            .env("POD_NAMESPACE", "shop");
        let guard = self.pod.spawn(cmd);
        let ready = wait_until(Duration::from_secs(10), || {
            self.pod
                .run(|| http_get("127.0.0.1:15021".parse().expect("addr"), "/healthz/ready"))
                .map(|(status, _)| status == 200)
                .unwrap_or(false)
        });
        assert!(ready, "mesh-proxy did not become ready in the pod");
        guard
    }

    /// The proxy's Prometheus text, fetched inside the pod.
    pub fn metrics(&self) -> String {
        let (status, body) = self
            .pod
            .run(|| {
                http_get(
                    "127.0.0.1:15090".parse().expect("addr"),
                    "/stats/prometheus",
                )
            })
            .expect("GET /stats/prometheus");
        assert_eq!(status, 200, "{body}");
        body
    }
}

impl Default for PodWorld {
    fn default() -> Self {
        Self::new()
    }
}

/// `GET path` over HTTP/1.1; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad response: {text}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Sum of the values of every series of `name` whose labels contain all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A deterministic byte stream (xorshift64*), so a receiver can check every byte
/// without the sender keeping a copy.
pub struct Pattern {
    state: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern { state: seed | 1 }
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let v = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes `len` bytes of `Pattern::new(seed)` (len a multiple of 64 KiB).
pub fn send_pattern(w: &mut impl Write, seed: u64, len: usize) -> io::Result<()> {
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        p.fill(&mut buf);
        let n = left.min(buf.len());
        w.write_all(&buf[..n])?;
        left -= n;
    }
    Ok(())
}

/// Reads to end of stream and checks it is exactly `Pattern::new(seed)`; returns the
/// number of bytes read, or an error naming the first offset that differs.
pub fn verify_pattern(r: &mut impl Read, seed: u64) -> io::Result<u64> {
    let mut p = Pattern::new(seed);
    let mut expected = vec![0u8; 64 * 1024];
    let mut got = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    loop {
        // Fill a whole block (or up to EOF) so it lines up with the pattern's blocks.
        let mut n = 0;
        while n < got.len() {
            let m = r.read(&mut got[n..])?;
            if m == 0 {
                break;
            }
            n += m;
        }
        if n == 0 {
            return Ok(total);
        }
        p.fill(&mut expected);
        if let Some(i) = (0..n).find(|&i| got[i] != expected[i]) {
            return Err(io::Error::other(format!(
                "byte {} differs from the pattern",
                total + i as u64
            )));
        }
        total += n as u64;
        if n < got.len() {
            // Short block: EOF must follow.
            if r.read(&mut got)? != 0 {
                return Err(io::Error::other("data after a short block"));
            }
            return Ok(total);
        }
    }
}
