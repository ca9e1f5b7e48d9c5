//! Harness for the mesh-init netns tests: listeners that report where a connection
//! landed (and its `SO_ORIGINAL_DST`), clients that connect as another uid/gid, and
//! normalised nat-table dumps.
//!
//! Acting as another uid: `setuid` through glibc changes every thread of the process,
//! so [`connect_as`] instead changes the credentials of the calling thread only, with the
//! raw `setresgid`/`setresuid` system calls, and must run on a throwaway thread (the
//! ones [`Netns::run`] starts). That is the one `unsafe` block of this module.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt};

use crate::netns::Netns;

/// The original destination of a redirected (or conntracked) IPv4/IPv6 connection.
pub fn original_dst(s: &TcpStream) -> std::io::Result<SocketAddr> {
    match s.local_addr()? {
        SocketAddr::V4(_) => {
            let a = getsockopt(s, sockopt::OriginalDst)?;
            Ok(SocketAddr::from((
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        SocketAddr::V6(_) => {
            let a = getsockopt(s, sockopt::Ip6tOriginalDst)?;
            Ok(SocketAddr::from((
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
            )))
        }
    }
}

/// Switches the calling thread (only) to `uid`/`gid`. Irreversible: call it on a thread
/// that ends right after, such as the one [`Netns::run`] starts.
#[allow(unsafe_code)]
fn become_thread(uid: u32, gid: u32) {
    // SAFETY: plain system calls with integer arguments; they change only this thread's
    // credentials (the kernel keeps credentials per task), which is the point.
    let (rg, ru) = unsafe {
        (
            nix::libc::syscall(nix::libc::SYS_setresgid, gid, gid, gid),
            nix::libc::syscall(nix::libc::SYS_setresuid, uid, uid, uid),
        )
    };
    assert!(
        rg == 0 && ru == 0,
        "setresgid/setresuid({uid}/{gid}) failed: {}",
        std::io::Error::last_os_error()
    );
}

/// Where a connection ended up: the name of the listener that accepted it and the
/// original destination it read there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landing {
    pub name: String,
    pub orig: Option<SocketAddr>,
}

/// A listener that answers each connection with `<name> <original dst>` and closes.
pub struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` inside `ns` and serves from a background thread.
    pub fn start(ns: &Netns, addr: SocketAddr, name: &str) -> Server {
        let listener = ns
            .run(|| TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", ns.name()));
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let name = name.to_owned();
        let handle = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let orig = original_dst(&s)
                            .map(|a| a.to_string())
                            .unwrap_or_else(|_| "-".into());
                        let _ = s.write_all(format!("{name} {orig}\n").as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Server {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Connects from inside `ns` as `uid`/`gid` (from `src` when given) to `dst` and
/// reports where it landed; `name` is `unreachable: ...` when nothing answered.
pub fn connect_as(ns: &Netns, uid: u32, gid: u32, src: Option<IpAddr>, dst: SocketAddr) -> Landing {
    ns.run(move || {
        if uid != 0 || gid != 0 {
            become_thread(uid, gid);
        }
        let attempt = || -> std::io::Result<String> {
            let s = match src {
                None => TcpStream::connect_timeout(&dst, Duration::from_secs(2))?,
                Some(ip) => {
                    use nix::sys::socket::{
                        AddressFamily, SockFlag, SockType, SockaddrStorage, bind, connect, socket,
                    };
                    use std::os::fd::AsRawFd;
                    let family = if ip.is_ipv4() {
                        AddressFamily::Inet
                    } else {
                        AddressFamily::Inet6
                    };
                    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
                    bind(
                        fd.as_raw_fd(),
                        &SockaddrStorage::from(SocketAddr::new(ip, 0)),
                    )?;
                    connect(fd.as_raw_fd(), &SockaddrStorage::from(dst))?;
                    TcpStream::from(fd)
                }
            };
            let mut s = s;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut reply = String::new();
            s.read_to_string(&mut reply)?;
            Ok(reply)
        };
        match attempt() {
            Ok(reply) => {
                let mut parts = reply.split_whitespace();
                Landing {
                    name: parts.next().unwrap_or("empty-reply").to_owned(),
                    orig: parts.next().and_then(|o| o.parse().ok()),
                }
            }
            Err(e) => Landing {
                name: format!("unreachable: {e}"),
                orig: None,
            },
        }
    })
}

/// `iptables-<backend>-save -t nat` (or ip6tables) inside `ns`, without comments and
/// with counters zeroed, so two dumps compare equal when the rules are equal.
pub fn nat_dump(ns: &Netns, backend: &str, v6: bool) -> String {
    let tool = format!(
        "{}-{backend}-save",
        if v6 { "ip6tables" } else { "iptables" }
    );
    let out = ns.output_ok(&tool, &["-t", "nat"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            if l.starts_with(':') {
                match l.rfind(" [") {
                    Some(i) => format!("{} [0:0]", &l[..i]),
                    None => l.to_owned(),
                }
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The rule lines (`-A ...`) of a dump, sorted.
pub fn rule_lines(dump: &str) -> Vec<String> {
    let mut v: Vec<String> = dump
        .lines()
        .filter(|l| l.starts_with("-A "))
        .map(str::to_owned)
        .collect();
    v.sort();
    v
}
