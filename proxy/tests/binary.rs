//! The `mesh-proxy` binary as a user runs it: flags, admin endpoints, exit codes,
//! out-of-descriptors behaviour. (Data paths through the kernel redirect are covered
//! by the netns tests in the workspace's `tests/` crate.)

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_mesh-proxy");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc {
    child: Child,
    admin: SocketAddr,
    metrics: SocketAddr,
    outbound: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the proxy on four free ports. A port found free can be taken by another
/// test's connection before the proxy binds it; the proxy then exits with the bind
/// error, and we try again with other ports.
fn start(extra: &[&str]) -> Proc {
    for _ in 0..5 {
        if let Some(p) = try_start(extra) {
            return p;
        }
    }
    panic!("mesh-proxy exited at start five times (ports taken?)");
}

fn try_start(extra: &[&str]) -> Option<Proc> {
    let (out, inb, adm, met) = (free_port(), free_port(), free_port(), free_port());
    let admin: SocketAddr = format!("127.0.0.1:{adm}").parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{met}").parse().unwrap();
    let child = Command::new(BIN)
        .args(["--ipv6", "off", "--outbound-port", &out.to_string()])
        .args(["--inbound-port", &inb.to_string()])
        .args(["--admin-addr", &admin.to_string()])
        .args(["--metrics-addr", &metrics.to_string()])
        // Tests run side by side: not the default 127.0.0.1:15000.
        .args(["--debug-addr", "127.0.0.1:0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut p = Proc {
        child,
        admin,
        metrics,
        outbound: format!("127.0.0.1:{out}").parse().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok((200, _)) = http(p.admin, "GET", "/healthz/ready") {
            return Some(p);
        }
        if p.child.try_wait().unwrap().is_some() {
            return None;
        }
        assert!(Instant::now() < deadline, "proxy never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One request, answered and closed: (status, body).
fn http(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {text}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "proxy did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ready_metrics_and_quitquitquit() {
    let mut p = start(&[]);
    let (status, body) = http(p.admin, "GET", "/healthz/ready").unwrap();
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let (status, body) = http(p.metrics, "GET", "/stats/prometheus").unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE istio_tcp_connections_opened_total counter"),
        "{body}"
    );
    assert!(body.contains("mesh_proxy_active_connections{direction=\"outbound\"} 0"));
    assert_eq!(http(p.admin, "GET", "/nope").unwrap().0, 404);
    assert_eq!(http(p.admin, "GET", "/quitquitquit").unwrap().0, 405);
    assert_eq!(http(p.admin, "POST", "/quitquitquit").unwrap().0, 200);
    let status = wait_exit(&mut p.child, Duration::from_secs(10));
    assert!(status.success(), "{status}");
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let mut p = start(&[]);
    let pid = nix_pid(&p.child);
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = wait_exit(&mut p.child, Duration::from_secs(10));
    assert!(status.success(), "{status}");
}

#[test]
fn direct_connection_to_listener_is_refused_and_counted() {
    // Without a redirect the original destination is the listener itself (or there is
    // none): either way the proxy must not connect to itself.
    let p = start(&[]);
    let mut c = TcpStream::connect(p.outbound).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 8];
    let err = c.read(&mut buf).expect_err("expected a reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    let (_, body) = http(p.metrics, "GET", "/stats/prometheus").unwrap();
    let refused: u64 = body
        .lines()
        .filter(|l| {
            l.starts_with("mesh_proxy_refused_connections_total{direction=\"outbound\"")
                && (l.contains("reason=\"loop\"") || l.contains("reason=\"no_original_dst\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(refused, 1, "{body}");
}

#[test]
fn bad_flags_fail_with_a_message() {
    let out = Command::new(BIN)
        .args(["--connect-timeout", "soon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--connect-timeout"), "{err}");
    let out = Command::new(BIN)
        .args(["--outbound-port", "7", "--inbound-port", "7"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must differ"));
}

#[test]
fn admin_port_in_use_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["--ipv6", "off", "--outbound-port", &free_port().to_string()])
        .args([
            "--inbound-port",
            &free_port().to_string(),
            "--admin-addr",
            &addr,
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr) && err.contains("admin"), "{err}");
}

fn nix_pid(child: &Child) -> String {
    child.id().to_string()
}

fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): utime is 14th, stime 15th.
    let rest = stat.rsplit_once(") ").unwrap().1;
    let f: Vec<&str> = rest.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// The lowest descriptor number the process does not use: with the soft limit set to
/// it, the next descriptor cannot be allocated.
fn lowest_free_fd(pid: &str) -> usize {
    let used: std::collections::BTreeSet<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    (0..).find(|n| !used.contains(n)).unwrap()
}

#[test]
fn out_of_descriptors_backs_off_then_recovers() {
    let p = start(&[]);
    let pid = nix_pid(&p.child);
    // Leave no descriptor free (soft limit; the hard one stays): every accept now
    // fails with EMFILE.
    let n = lowest_free_fd(&pid);
    let set = |limit: usize| {
        let st = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={limit}:")])
            .status()
            .expect("prlimit (util-linux) is needed");
        assert!(st.success());
    };
    set(n);
    let c = TcpStream::connect(p.outbound).unwrap(); // completes in the kernel's backlog
    let before = cpu_ticks(&pid);
    std::thread::sleep(Duration::from_millis(1500));
    let used = cpu_ticks(&pid) - before;
    // A spinning accept loop burns ~150 ticks in 1.5 s; backing off costs almost none.
    assert!(used < 30, "accept loop spun: {used} ticks in 1.5 s");
    set(4096);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1];
    let err = (&c)
        .read(&mut buf)
        .expect_err("expected the proxy to refuse with a reset");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    let (_, body) = http(p.metrics, "GET", "/stats/prometheus").unwrap();
    let line = body
        .lines()
        .find(|l| l.starts_with("mesh_proxy_accept_errors_total{kind=\"fd_exhausted\"}"))
        .unwrap();
    let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1, "{line}");
}

/// Runs the proxy with every port kernel-chosen (so nothing can collide), `env` added
/// to its environment and stderr captured; returns the stderr lines up to and including
/// the `ready` line, then stops it.
fn stderr_until_ready(args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    use std::io::BufRead;
    let mut child = Command::new(BIN)
        .args([
            "--ipv6",
            "off",
            "--outbound-port",
            "0",
            "--inbound-port",
            "0",
        ])
        .args([
            "--admin-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut lines = Vec::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        let ready = line.contains(" ready ") || line.ends_with(" ready");
        lines.push(line);
        if ready {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

#[test]
fn log_filter_with_directives_runs_and_identity_is_logged() {
    // `info,mesh_proxy=debug` used to exit 2: only a single level was accepted.
    let lines = stderr_until_ready(
        &["--log-level", "warn,mesh_proxy=info"],
        &[
            ("INSTANCE_IP", "198.18.0.9"),
            ("SERVICE_ACCOUNT", "web-sa"),
            ("POD_NAME", "web-1"),
        ],
    );
    let text = lines.join("\n");
    assert!(text.contains("ready"), "never became ready:\n{text}");
    let identity = lines
        .iter()
        .find(|l| l.contains("identity"))
        .unwrap_or_else(|| panic!("no identity line:\n{text}"));
    assert!(
        identity.contains("198.18.0.9")
            && identity.contains("web-sa")
            && identity.contains("web-1"),
        "{identity}"
    );
    // The environment's filter works the same way.
    let lines = stderr_until_ready(&[], &[("MESH_PROXY_LOG", "warning,mesh_proxy=info")]);
    assert!(lines.iter().any(|l| l.contains("identity")), "{lines:?}");
}

#[test]
fn bad_log_filter_or_pod_ip_fails_naming_it() {
    let out = Command::new(BIN)
        .args(["--log-level", "info,mesh-proxy=debug"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--log-level") && err.contains("mesh-proxy"),
        "{err}"
    );
    let out = Command::new(BIN)
        .env("INSTANCE_IP", "not-an-ip")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("INSTANCE_IP") && err.contains("not-an-ip"),
        "{err}"
    );
}

/// With a control plane it cannot reach, the proxy is not ready at first, then turns
/// ready when `--config-wait` runs out (everything it does not know then passes
/// through as L4) and serves.
#[test]
fn without_its_control_plane_the_proxy_turns_ready_after_the_config_wait() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let control = closed.local_addr().unwrap().to_string();
    drop(closed);
    let started = Instant::now();
    let p = start(&["--control-plane", &control, "--config-wait", "1500ms"]);
    let ready_after = started.elapsed();
    assert!(
        ready_after >= Duration::from_millis(1400),
        "ready after {ready_after:?}, before the 1.5 s config wait ran out"
    );
    let (status, body) = http(p.metrics, "GET", "/stats/prometheus").unwrap();
    assert_eq!(status, 200, "{body}");
}
