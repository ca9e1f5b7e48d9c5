//! Certificate rotation under traffic, and a CA outage, on a real node (issue #13): with a
//! 60 s certificate lifetime (Istio's `SECRET_TTL`, set as an Istio user does, in an
//! `istio-proxy` container of the pod spec that the injector merges into its own), one
//! TCP connection held open across two rotations on both sides keeps echoing, and new
//! connections opened twice a second never fail; then mesh-control (the CA) is scaled to
//! 0, and until the certificates expire the held connection and new ones keep working
//! while each proxy logs that renewal fails because the CA cannot be reached and the
//! certificate is about to expire. Once both have expired, new connections are refused
//! (the certificates really were that short-lived). mesh-control is scaled back and Ready
//! at the end, also when the test fails: the node tests after this one need it.
//!
//! The app is busybox `nc` as an echo server behind Service `echo` (port `tcp-echo`, so
//! both proxies treat it as TCP: one app connection is one mTLS connection between the
//! sidecars) and an idle client pod, both injected, each with its own ServiceAccount. The
//! client's traffic comes from sockets the test opens in the client pod's network
//! namespace (a thread of this process enters it): the pod's iptables send them to its
//! proxy exactly as the app's own. Rotations are read from each proxy's `GET /certs` on
//! its loopback debug port (15000), from inside the pod; the echo server's proxy reports
//! the connections as `mutual_tls` from the client's SPIFFE id.
//!
//! One test in a binary of its own (cargo runs test binaries one after another): it stops
//! the control plane for the whole node.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mesh_tests::kube_node::{
    KubeNode, PodInfo, TestNamespace, eventually, http_get, install_mesh, metric_sum,
    proxy_metrics, report,
};
use nix::sched::{CloneFlags, setns};
use serde_json::Value;

const READY: Duration = Duration::from_secs(240);
/// The lifetime every proxy of the test asks for (`SECRET_TTL`).
const TTL: &str = "60s";
const TTL_SECS: i64 = 60;
const PORT: u16 = 7000;
/// How often the held connection exchanges a line, a new connection is made, and both
/// proxies' `/certs` are read.
const TICK: Duration = Duration::from_millis(500);
const ROTATIONS: usize = 2;
/// Two renewals, each at 45-55 % of 60 s, take at most ~66 s from the first certificate,
/// which came before the held connection was opened.
const ROTATIONS_WITHIN: Duration = Duration::from_secs(100);
/// "Until expiry": new connections and the held one are counted up to this long before
/// the first of the two certificates expires (the expiry is known to the second).
const EXPIRY_MARGIN: f64 = 2.0;
/// After both certificates have expired, this long is given to the proxies (a handshake
/// that began before the expiry may still complete) before new connections must fail.
const AFTER_EXPIRY: f64 = 2.0;
/// New connections that must fail once both certificates have expired.
const REFUSED_ATTEMPTS: usize = 3;
const CONTROL_NS: &str = "mesh-system";
const CONTROL: &str = "mesh-control";
const CONTROL_SELECTOR: &str = "app.kubernetes.io/name=mesh-control";
/// What proxy/src/identity/store.rs logs (at ERROR) when a renewal fails close to expiry
/// (for a 60 s certificate: every failed renewal), and how the error of a connection to
/// the CA that fails begins (proxy/src/identity/ca_client.rs). On kube-node it goes on
/// `cannot connect to 198.19.0.15:15012: Connection refused (os error 111)` (kube-proxy
/// rejects a Service without endpoints) or `...: timed out` (the node rate-limits those
/// ICMP rejects, and each proxy's config stream retries every second too).
const ABOUT_TO_EXPIRE: &str =
    "certificate renewal failed and the workload certificate is about to expire";
const CA_UNREACHABLE: &str = "cannot reach the CA";
const STREAM_DOWN: &str = "config stream down; keeping the last config";

/// The echo server, its Service, and the client; the `istio-proxy` entries carry only
/// `SECRET_TTL`, the injector's container takes it in.
fn manifest() -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: echo}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: client}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, labels: {{app: echo}}}}
spec:
  selector: {{app: echo}}
  ports:
    - {{name: tcp-echo, port: {PORT}, targetPort: {PORT}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: echo, labels: {{app: echo, version: v1}}}}
spec:
  serviceAccountName: echo
  terminationGracePeriodSeconds: 1
  containers:
    - name: echo
      image: local/busybox:1.35
      imagePullPolicy: IfNotPresent
      # Each connection gets its own cat: whatever comes in goes back.
      command: [nc, -ll, -p, "{PORT}", -e, /bin/cat]
    - name: istio-proxy
      env: [{{name: SECRET_TTL, value: "{TTL}"}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, labels: {{app: client, version: v1}}}}
spec:
  serviceAccountName: client
  terminationGracePeriodSeconds: 1
  containers:
    - name: client
      image: local/busybox:1.35
      imagePullPolicy: IfNotPresent
      command: [sh, -c, "trap 'exit 0' TERM; while true; do sleep 1; done"]
    - name: istio-proxy
      env: [{{name: SECRET_TTL, value: "{TTL}"}}]
"#
    )
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Runs `f` on a fresh thread that has entered the network namespace of host process
/// `pid` (a container of a pod): sockets it opens live in the pod, and keep living there
/// once returned to another thread.
fn in_pod<R: Send>(pid: u32, f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            let path = format!("/proc/{pid}/ns/net");
            let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            setns(&ns, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Sends `line` and reads it back: the echo came through both sidecars.
fn echo(w: &mut TcpStream, r: &mut impl BufRead, line: &str) -> Result<(), String> {
    w.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut back = String::new();
    match r.read_line(&mut back) {
        Ok(0) => Err("closed (EOF) before the echo".into()),
        Ok(_) if back.trim_end() == line => Ok(()),
        Ok(_) => Err(format!("echoed {back:?}, not {line:?}")),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// A TCP connection from the client pod to the Service, kept open.
struct Held {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Held {
    fn open(pid: u32, target: SocketAddr) -> Result<Held, String> {
        let w = in_pod(pid, || {
            TcpStream::connect_timeout(&target, Duration::from_secs(3))
        })
        .map_err(|e| format!("connect {target}: {e}"))?;
        w.set_read_timeout(Some(Duration::from_secs(5)))
            .and_then(|()| w.set_nodelay(true))
            .map_err(|e| e.to_string())?;
        let r = BufReader::new(w.try_clone().map_err(|e| e.to_string())?);
        Ok(Held { w, r })
    }

    fn exchange(&mut self, n: u64) -> Result<(), String> {
        echo(&mut self.w, &mut self.r, &format!("held-{n}"))
    }
}

/// One new connection from the client pod: connect, one echoed line, close.
fn one_connection(pid: u32, target: SocketAddr, n: u64) -> Result<Duration, String> {
    let t = Instant::now();
    let mut w = in_pod(pid, || {
        TcpStream::connect_timeout(&target, Duration::from_secs(3))
    })
    .map_err(|e| format!("connect {target}: {e}"))?;
    w.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(w.try_clone().map_err(|e| e.to_string())?);
    echo(&mut w, &mut r, &format!("new-{n}"))?;
    Ok(t.elapsed())
}

/// One certificate as a proxy's `/certs` showed it.
#[derive(Debug, Clone)]
struct Cert {
    serial: String,
    not_before: String,
    not_after: String,
    seconds_to_expiry: i64,
    /// When it was first seen, and when it expires (Unix seconds; to the second).
    seen_at: f64,
    expires_at: f64,
}

/// The proxy's `GET 127.0.0.1:15000/certs`, from inside its pod.
fn certs(pid: u32) -> Result<(Cert, Value), String> {
    let addr: SocketAddr = format!("127.0.0.1:{}", mesh_common::PROXY_DEBUG_PORT)
        .parse()
        .unwrap();
    let seen_at = now_unix();
    let (status, body) =
        in_pod(pid, || http_get(addr, "/certs")).map_err(|e| format!("GET /certs: {e}"))?;
    if status != 200 {
        return Err(format!("GET /certs: {status} {body}"));
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("GET /certs: {e}: {body:?}"))?;
    let c = &v["certificate"];
    let text = |k: &str| c[k].as_str().map(str::to_owned);
    let (Some(serial), Some(not_before), Some(not_after), Some(left)) = (
        text("serial"),
        text("not_before"),
        text("not_after"),
        c["seconds_to_expiry"].as_i64(),
    ) else {
        return Err(format!("GET /certs: no certificate in {v}"));
    };
    let expires_at = unix_of(&not_after)
        .ok_or_else(|| format!("GET /certs: not_after {not_after:?} is not RFC 3339"))?
        as f64;
    if (expires_at - (seen_at + left as f64)).abs() > 2.0 {
        return Err(format!(
            "GET /certs: not_after {not_after} and {left} s to expiry disagree with this clock"
        ));
    }
    let cert = Cert {
        serial,
        not_before,
        not_after,
        seconds_to_expiry: left,
        seen_at,
        expires_at,
    };
    Ok((cert, v))
}

/// `YYYY-MM-DDTHH:MM:SSZ` (what `/certs` writes) as Unix seconds.
fn unix_of(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// One proxy the test watches.
#[derive(Debug, Clone)]
struct Side {
    name: &'static str,
    pod: String,
    ip: String,
    /// A container of the pod (its network namespace).
    pid: u32,
}

/// A new connection and how it went.
#[derive(Debug)]
struct Attempt {
    at: f64,
    result: Result<Duration, String>,
}

/// Everything the traffic thread saw.
#[derive(Debug, Default)]
struct Seen {
    attempts: Vec<Attempt>,
    held_ok: u64,
    held_last_ok: f64,
    /// When the held connection failed, and how.
    held_broken: Option<(f64, String)>,
    /// Per side, each certificate in the order seen (a new serial is a rotation).
    certs: [Vec<Cert>; 2],
    poll_errors: u64,
    last_poll_error: String,
}

impl Seen {
    fn rotations(&self, side: usize) -> usize {
        self.certs[side].len().saturating_sub(1)
    }

    fn current(&self, side: usize) -> &Cert {
        self.certs[side].last().expect("a certificate was seen")
    }

    /// New connections begun in `[from, to)`: (attempted, failures).
    fn window(&self, from: f64, to: f64) -> (usize, Vec<&Attempt>) {
        let inside: Vec<&Attempt> = self
            .attempts
            .iter()
            .filter(|a| a.at >= from && a.at < to)
            .collect();
        let failed = inside
            .iter()
            .copied()
            .filter(|a| a.result.is_err())
            .collect();
        (inside.len(), failed)
    }
}

fn lock(seen: &Mutex<Seen>) -> MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every `TICK`: a line on the held connection (until it breaks), a new connection, and
/// both proxies' `/certs`; until `stop`.
fn traffic(
    client_pid: u32,
    target: SocketAddr,
    sides: [Side; 2],
    mut held: Held,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let tick = Instant::now();
        n += 1;
        if lock(&seen).held_broken.is_none() {
            let r = held.exchange(n);
            let mut s = lock(&seen);
            match r {
                Ok(()) => {
                    s.held_ok += 1;
                    s.held_last_ok = now_unix();
                }
                Err(e) => s.held_broken = Some((now_unix(), e)),
            }
        }
        let at = now_unix();
        let result = one_connection(client_pid, target, n);
        lock(&seen).attempts.push(Attempt { at, result });
        for (i, side) in sides.iter().enumerate() {
            let r = certs(side.pid);
            let mut s = lock(&seen);
            match r {
                Ok((c, _)) => {
                    if s.certs[i].last().is_none_or(|last| last.serial != c.serial) {
                        s.certs[i].push(c);
                    }
                }
                Err(e) => {
                    s.poll_errors += 1;
                    s.last_poll_error = format!("{}: {e}", side.name);
                }
            }
        }
        std::thread::sleep(TICK.saturating_sub(tick.elapsed()));
    }
}

/// Stops the traffic thread when dropped (also when the test fails).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// How one mesh-control process ended after the scale to 0, from its pod's status (the
/// API server's times are to the second).
#[derive(Debug, Clone)]
struct Ended {
    name: String,
    /// `exit 0`, or that the pod went away before its container's status was seen.
    how: String,
    /// When its pod's deletion was requested (by the ReplicaSet controller), Unix seconds.
    deletion_requested: Option<f64>,
    /// When its container ended, as the kubelet reported it.
    finished_at: Option<f64>,
    /// When the test saw it end.
    seen_at: f64,
}

/// Each process's timeline from `t_scaled` (when `kubectl scale` returned), for reports.
fn timeline(ended: &[Ended], t_scaled: f64) -> String {
    let at = |t: Option<f64>| {
        t.map_or("?".to_owned(), |t| {
            format!("{:+} s", (t - t_scaled).round() as i64)
        })
    };
    ended
        .iter()
        .map(|e| {
            format!(
                "{}: {} (deletion requested {}, container finished {}, seen {:+.1} s)",
                e.name,
                e.how,
                at(e.deletion_requested),
                at(e.finished_at),
                e.seen_at - t_scaled
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// mesh-control scaled to 0; scaled back (and waited for) when dropped, unless
/// [`ControlOutage::restore`] did it already.
struct ControlOutage {
    node: &'static KubeNode,
    replicas: u32,
    restored: bool,
}

impl ControlOutage {
    fn stop(node: &'static KubeNode) -> ControlOutage {
        let replicas = node.kubectl_ok(&[
            "-n",
            CONTROL_NS,
            "get",
            "deployment",
            CONTROL,
            "-o",
            "jsonpath={.spec.replicas}",
        ]);
        let replicas: u32 = replicas
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("mesh-control's replicas: {replicas:?}"));
        assert!(replicas > 0, "mesh-control is already scaled to 0");
        let guard = ControlOutage {
            node,
            replicas,
            restored: false,
        };
        node.kubectl_ok(&[
            "-n",
            CONTROL_NS,
            "scale",
            "deployment",
            CONTROL,
            "--replicas=0",
        ]);
        guard
    }

    /// Waits until every mesh-control process has ended: its pod gone, or its container
    /// terminated (the pod object can outlive the process by seconds while the node tears
    /// it down). Each must have exited 0 on SIGTERM, not been killed at the end of its
    /// grace period. Returns how each ended, with where the time went.
    fn wait_exited(&self) -> Vec<Ended> {
        let mut ended: std::collections::BTreeMap<String, Ended> = Default::default();
        let mut deletion: std::collections::BTreeMap<String, Option<f64>> = Default::default();
        eventually(
            "mesh-control's processes ended after scaling to 0",
            Duration::from_secs(90),
            || {
                let out = self.node.kubectl_ok(&[
                    "-n",
                    CONTROL_NS,
                    "get",
                    "pods",
                    "-l",
                    CONTROL_SELECTOR,
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.name}|\
                     {.metadata.deletionTimestamp}|{.metadata.deletionGracePeriodSeconds}|\
                     {.status.containerStatuses[0].state.terminated.exitCode}|\
                     {.status.containerStatuses[0].state.terminated.finishedAt}|\
                     {.status.containerStatuses[0].state.terminated.reason}{\"\\n\"}{end}",
                ]);
                let seen_at = now_unix();
                let mut running = Vec::new();
                for line in out.lines().filter(|l| !l.trim().is_empty()) {
                    let f: Vec<&str> = line.splitn(6, '|').collect();
                    let field = |i: usize| f.get(i).copied().filter(|v| !v.is_empty());
                    let name = f[0];
                    // The API server sets deletionTimestamp to the request's time plus the
                    // grace period: the request is the difference.
                    let requested = field(1)
                        .and_then(unix_of)
                        .map(|at| at - field(2).and_then(|g| g.parse::<i64>().ok()).unwrap_or(0));
                    if requested.is_some() {
                        deletion.insert(name.to_owned(), requested.map(|t| t as f64));
                    }
                    match field(3) {
                        None => running.push(name.to_owned()),
                        Some(code) if !ended.contains_key(name) => {
                            let log = self
                                .node
                                .kubectl(&["-n", CONTROL_NS, "logs", name, "--tail", "5"]);
                            assert_eq!(
                                code,
                                "0",
                                "{name} did not exit on SIGTERM ({}); its last lines:\n{}{}",
                                field(5).unwrap_or(""),
                                log.stdout,
                                log.stderr
                            );
                            ended.insert(
                                name.to_owned(),
                                Ended {
                                    name: name.to_owned(),
                                    how: format!("exit {code}"),
                                    deletion_requested: requested.map(|t| t as f64),
                                    finished_at: field(4).and_then(unix_of).map(|t| t as f64),
                                    seen_at,
                                },
                            );
                        }
                        Some(_) => {}
                    }
                }
                // A pod that went away between two looks: its process ended unseen.
                for (name, requested) in &deletion {
                    if !out.contains(name.as_str()) && !ended.contains_key(name) {
                        ended.insert(
                            name.clone(),
                            Ended {
                                name: name.clone(),
                                how: "pod gone before its exit was seen".to_owned(),
                                deletion_requested: *requested,
                                finished_at: None,
                                seen_at,
                            },
                        );
                    }
                }
                if running.is_empty() {
                    Ok(())
                } else {
                    Err(format!("still running: {running:?}"))
                }
            },
        );
        ended.into_values().collect()
    }

    fn wait_gone(&self) {
        eventually(
            "mesh-control's pods gone after scaling to 0",
            Duration::from_secs(90),
            || {
                let pods = self.node.pods(CONTROL_NS, Some(CONTROL_SELECTOR));
                if pods.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "{:?}",
                        pods.iter().map(PodInfo::summary).collect::<Vec<_>>()
                    ))
                }
            },
        );
    }

    /// Scales back and waits for every replica to be Ready; never panics (Drop uses it).
    fn try_restore(&self) -> Result<(), String> {
        let n = self.replicas.to_string();
        let r = self.node.kubectl(&[
            "-n",
            CONTROL_NS,
            "scale",
            "deployment",
            CONTROL,
            &format!("--replicas={n}"),
        ]);
        if !r.ok {
            return Err(format!("kubectl scale: {}{}", r.stdout, r.stderr));
        }
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let r = self.node.kubectl(&[
                "-n",
                CONTROL_NS,
                "get",
                "deployment",
                CONTROL,
                "-o",
                "jsonpath={.status.readyReplicas}/{.status.replicas}",
            ]);
            if r.ok && r.stdout.trim() == format!("{n}/{n}") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not {n}/{n} ready within 180 s: {}{}\n{}",
                    r.stdout,
                    r.stderr,
                    self.node.diagnose(CONTROL_NS)
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn restore(&mut self) {
        self.restored = true;
        if let Err(e) = self.try_restore() {
            panic!("restoring mesh-control: {e}");
        }
    }
}

impl Drop for ControlOutage {
    fn drop(&mut self) {
        if self.restored {
            return;
        }
        // Never a panic here (a failed test is unwinding): say it instead.
        if let Err(e) = self.try_restore() {
            eprintln!(
                "cleanup: mesh-control could not be scaled back to {} (kubectl -n {CONTROL_NS} \
                 scale deployment {CONTROL} --replicas={}): {e}",
                self.replicas, self.replicas
            );
        }
    }
}

/// `text` without ANSI escape sequences (the proxy's log lines are coloured).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `istio-proxy` container's log, plain text.
fn proxy_log(node: &KubeNode, ns: &str, pod: &str) -> String {
    strip_ansi(&node.kubectl_ok(&["-n", ns, "logs", pod, "-c", mesh_common::containers::PROXY]))
}

fn short(serial: &str) -> &str {
    &serial[..serial.len().min(12)]
}

/// The certificates one side showed, for the report: `t+S s serial (expires in E s)`.
fn history(certs: &[Cert], t0: f64) -> String {
    certs
        .iter()
        .map(|c| {
            format!(
                "t+{:.1} s {} (not_before {}, not_after {}, {} s left)",
                c.seen_at - t0,
                short(&c.serial),
                c.not_before,
                c.not_after,
                c.seconds_to_expiry
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn failures_text(failed: &[&Attempt], t0: f64) -> String {
    failed
        .iter()
        .take(5)
        .map(|a| {
            format!(
                "t+{:.1} s: {}",
                a.at - t0,
                a.result.as_ref().err().cloned().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn metric(m: &str, name: &str) -> u64 {
    metric_sum(m, name, &[])
        + m.lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .sum::<u64>()
}

#[test]
fn a_held_connection_and_new_ones_outlive_two_rotations_and_the_ca_until_expiry() {
    let wall = Instant::now();
    let node = KubeNode::get();
    install_mesh();
    let ns = TestNamespace::new(node, "rotation", &["istio-injection=enabled"]);
    let t_apply = Instant::now();
    node.apply(&["-n", &ns.name], &manifest());
    let pods = node.wait_pods_ready(&ns.name, None, 2, READY);
    let ready_after = t_apply.elapsed();
    for p in &pods {
        assert!(p.is_injected(), "not injected: {}", p.summary());
        assert_eq!(p.ready_column(), "2/2", "{}", p.summary());
    }
    let pod = |name: &str| pods.iter().find(|p| p.name == name).unwrap().clone();
    let (client, server) = (pod("client"), pod("echo"));
    // The injector kept the user's SECRET_TTL in its istio-proxy container.
    let env = node.kubectl_ok(&[
        "-n",
        &ns.name,
        "get",
        "pod",
        "client",
        "-o",
        r#"jsonpath={.spec.containers[?(@.name=="istio-proxy")].env[?(@.name=="SECRET_TTL")].value}"#,
    ]);
    assert_eq!(
        env.trim(),
        TTL,
        "the client's istio-proxy has no SECRET_TTL"
    );
    let cluster_ip = node.kubectl_ok(&[
        "-n",
        &ns.name,
        "get",
        "service",
        "echo",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let target: SocketAddr = format!("{}:{PORT}", cluster_ip.trim()).parse().unwrap();
    let sides = [
        Side {
            name: "client",
            pod: client.name.clone(),
            ip: client.ip.clone(),
            pid: node.container_pid(client.container_id("client")),
        },
        Side {
            name: "echo",
            pod: server.name.clone(),
            ip: server.ip.clone(),
            pid: node.container_pid(server.container_id("echo")),
        },
    ];
    let client_pid = sides[0].pid;
    report(&format!(
        "rotation: client and echo injected with SECRET_TTL={TTL}, 2/2 Ready in {:.1} s",
        ready_after.as_secs_f64()
    ));

    // The client's proxy learns the Service from mesh-control on first use.
    eventually(
        "a first echo from the client pod through both sidecars",
        Duration::from_secs(30),
        || one_connection(client_pid, target, 0),
    );
    let before = proxy_metrics(&server.ip);

    // ---- two rotations on both sides under traffic --------------------------------------
    let held = Held::open(client_pid, target).unwrap_or_else(|e| panic!("held connection: {e}"));
    let t0 = now_unix();
    let mut seen = Seen::default();
    for (i, side) in sides.iter().enumerate() {
        let (c, v) = certs(side.pid).unwrap_or_else(|e| panic!("{}: {e}", side.name));
        assert!(
            c.seconds_to_expiry <= TTL_SECS,
            "{}'s certificate has {} s left, more than SECRET_TTL={TTL}: {v}",
            side.name,
            c.seconds_to_expiry
        );
        seen.certs[i].push(c);
    }
    let seen = Arc::new(Mutex::new(seen));
    let stop = Arc::new(AtomicBool::new(false));
    let _stop = StopOnDrop(stop.clone());
    let thread = {
        let (seen, stop, sides) = (seen.clone(), stop.clone(), sides.clone());
        std::thread::spawn(move || traffic(client_pid, target, sides, held, seen, stop))
    };
    let status = |s: &Seen| {
        format!(
            "held connection: {} exchanges, broken: {:?}; {} new connections, {} failed ({}); \
             /certs errors {} ({}); client: {}; echo: {}",
            s.held_ok,
            s.held_broken,
            s.attempts.len(),
            s.attempts.iter().filter(|a| a.result.is_err()).count(),
            failures_text(
                &s.attempts
                    .iter()
                    .filter(|a| a.result.is_err())
                    .collect::<Vec<_>>(),
                t0
            ),
            s.poll_errors,
            s.last_poll_error,
            history(&s.certs[0], t0),
            history(&s.certs[1], t0)
        )
    };
    let deadline = Instant::now() + ROTATIONS_WITHIN;
    loop {
        {
            let s = lock(&seen);
            if let Some((at, e)) = &s.held_broken {
                panic!(
                    "the held connection broke at t+{:.1} s: {e}\n{}",
                    at - t0,
                    status(&s)
                );
            }
            if (0..2).all(|i| s.rotations(i) >= ROTATIONS) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not {ROTATIONS} rotations on both sides within {ROTATIONS_WITHIN:?}: {}",
                status(&s)
            );
        }
        assert!(!thread.is_finished(), "the traffic thread ended");
        std::thread::sleep(TICK);
    }
    let t_rotated = now_unix();
    {
        let s = lock(&seen);
        let (attempted, failed) = s.window(t0, t_rotated);
        assert!(
            failed.is_empty(),
            "{} of {attempted} new connections failed across the rotations: {}\n{}",
            failed.len(),
            failures_text(&failed, t0),
            status(&s)
        );
        for (i, side) in sides.iter().enumerate() {
            let certs = &s.certs[i];
            for c in &certs[1..] {
                // Seen within a tick of its issue: about the whole 60 s ahead.
                assert!(
                    (TTL_SECS - 5..=TTL_SECS).contains(&c.seconds_to_expiry),
                    "{}: a renewed certificate with {} s left, not about {TTL_SECS}: {}",
                    side.name,
                    c.seconds_to_expiry,
                    history(certs, t0)
                );
            }
            for pair in certs.windows(2) {
                assert!(
                    pair[1].not_before != pair[0].not_before,
                    "{}: serial changed but not not_before: {}",
                    side.name,
                    history(certs, t0)
                );
            }
            // Renewal at 45-55 % of the lifetime: 27-33 s apart (seen to within a tick).
            let apart = certs[2].seen_at - certs[1].seen_at;
            assert!(
                (24.0..=37.0).contains(&apart),
                "{}: rotations {apart:.1} s apart, not at about half of {TTL}: {}",
                side.name,
                history(certs, t0)
            );
            let m = proxy_metrics(&side.ip);
            let renewals = metric(&m, "mesh_proxy_cert_renewals_total");
            let renewal_failures = metric(&m, "mesh_proxy_cert_renewal_failures_total");
            assert!(
                renewals > ROTATIONS as u64 && renewal_failures == 0,
                "{}: mesh_proxy_cert_renewals_total {renewals}, \
                 mesh_proxy_cert_renewal_failures_total {renewal_failures}",
                side.name
            );
        }
        report(&format!(
            "rotation: {ROTATIONS} rotations on both sides in {:.1} s of traffic; held connection: \
             {} exchanges, never broken; new connections: {attempted} attempted, 0 failed\n  \
             client certificates: {}\n  echo certificates: {}",
            t_rotated - t0,
            s.held_ok,
            history(&s.certs[0], t0),
            history(&s.certs[1], t0)
        ));
    }

    // ---- the CA stopped: serving until expiry --------------------------------------------
    // Scaling to 0 goes through the ReplicaSet controller and the kubelet. On a loaded node
    // that once took longer than the certificates had left, with nothing left to show. Then,
    // once, the CA comes back, both sides renew, and it is stopped again: each try reports
    // where its time went, and mesh-control's own part (exit 0 on SIGTERM) holds on each.
    let mut slow_stop: Option<String> = None;
    let (t_stop, t_scaled, mut control, exits, t_gone, held_certs, expiry, last_expiry) = loop {
        let t_stop = now_unix();
        let mut control = ControlOutage::stop(node);
        let t_scaled = now_unix();
        let exits = control.wait_exited();
        let t_gone = now_unix();
        let (held, first, last) = {
            let s = lock(&seen);
            let held: Vec<Cert> = (0..2).map(|i| s.current(i).clone()).collect();
            let first = held[0].expires_at.min(held[1].expires_at);
            let last = held[0].expires_at.max(held[1].expires_at);
            (held, first, last)
        };
        if first - EXPIRY_MARGIN > t_gone + 5.0 {
            break (t_stop, t_scaled, control, exits, t_gone, held, first, last);
        }
        let what = format!(
            "scaled to 0 at t+{:.1} s (kubectl scale returned after {:.1} s), processes ended \
             {:.1} s later ({}); the first certificate held expires at t+{:.1} s ({:+.1} s \
             from then)",
            t_stop - t0,
            t_scaled - t_stop,
            t_gone - t_scaled,
            timeline(&exits, t_scaled),
            first - t0,
            first - t_gone
        );
        if let Some(before) = &slow_stop {
            panic!(
                "mesh-control took until {:.1} s before the first expiry to go, twice: nothing \
                 left to show\n  first: {before}\n  again: {what}\n{}",
                first - t_gone,
                node.diagnose(CONTROL_NS)
            );
        }
        report(&format!(
            "rotation: stopping mesh-control left nothing to show; once more after a renewal: \
             {what}\n{}",
            node.diagnose(CONTROL_NS)
        ));
        slow_stop = Some(what);
        control.wait_gone();
        control.restore();
        // Both sides renew from the CA back (their certificates expired, or nearly).
        eventually(
            "both sides renewed once mesh-control was back",
            Duration::from_secs(90),
            || {
                let s = lock(&seen);
                if (0..2).all(|i| s.current(i).serial != held[i].serial) {
                    Ok(())
                } else {
                    Err(status(&s))
                }
            },
        );
    };
    control.wait_gone();
    let t_removed = now_unix();
    report(&format!(
        "rotation: mesh-control scaled to 0 at t+{:.1} s, its processes ended {:.1} s later \
         ({}), the pods gone after {:.1} s; certificates held expire at t+{:.1} s (client {}) \
         and t+{:.1} s (echo {}): {:.1} s from CA stop to the first expiry{}",
        t_stop - t0,
        t_gone - t_stop,
        timeline(&exits, t_scaled),
        t_removed - t_stop,
        held_certs[0].expires_at - t0,
        short(&held_certs[0].serial),
        held_certs[1].expires_at - t0,
        short(&held_certs[1].serial),
        expiry - t_stop,
        slow_stop.map_or(String::new(), |s| format!(" (the try before: {s})"))
    ));
    let until = expiry - EXPIRY_MARGIN;
    loop {
        let now = now_unix();
        if now >= until {
            break;
        }
        assert!(!thread.is_finished(), "the traffic thread ended");
        std::thread::sleep(Duration::from_secs_f64((until - now).min(0.5)));
    }
    {
        let s = lock(&seen);
        if let Some((at, e)) = &s.held_broken {
            panic!(
                "with the CA stopped, the held connection broke at t+{:.1} s ({:.1} s before \
                 the first expiry): {e}\n{}",
                at - t0,
                expiry - at,
                status(&s)
            );
        }
        assert!(
            s.held_last_ok >= until - 2.0,
            "the held connection's last echo was at t+{:.1} s\n{}",
            s.held_last_ok - t0,
            status(&s)
        );
        let (attempted, failed) = s.window(t_stop, until);
        assert!(
            attempted >= 20 && failed.is_empty(),
            "with the CA stopped, {} of {attempted} new connections failed before expiry: {}\n{}",
            failed.len(),
            failures_text(&failed, t0),
            status(&s)
        );
        for (i, side) in sides.iter().enumerate() {
            assert_eq!(
                s.current(i).serial,
                held_certs[i].serial,
                "{}: a certificate was issued with mesh-control gone",
                side.name
            );
        }
        report(&format!(
            "rotation: CA stopped, until {EXPIRY_MARGIN} s before the first expiry \
             (t+{:.1} s .. t+{:.1} s): held connection echoing (last at t+{:.1} s, {} \
             exchanges in all), new connections: {attempted} attempted, 0 failed",
            t_stop - t0,
            until - t0,
            s.held_last_ok - t0,
            s.held_ok
        ));
    }
    // Why, in each proxy's log: every renewal since the stop failed, close to expiry.
    for side in &sides {
        let log = proxy_log(node, &ns.name, &side.pod);
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(ABOUT_TO_EXPIRE))
            .collect();
        let unreachable = lines.iter().filter(|l| l.contains(CA_UNREACHABLE)).count();
        assert!(
            unreachable > 0,
            "{}'s proxy never logged {ABOUT_TO_EXPIRE:?} with {CA_UNREACHABLE:?} with the CA \
             stopped; its log:\n{log}",
            side.name
        );
        let m = proxy_metrics(&side.ip);
        let failures = metric(&m, "mesh_proxy_cert_renewal_failures_total");
        assert!(failures > 0, "{}: no renewal failure counted", side.name);
        let stream_down = log.lines().filter(|l| l.contains(STREAM_DOWN)).count();
        report(&format!(
            "rotation: {}'s proxy logged {} x {ABOUT_TO_EXPIRE:?} ({unreachable} with {CA_UNREACHABLE:?}; \
             mesh_proxy_cert_renewal_failures_total {failures}), {stream_down} x {STREAM_DOWN:?}; \
             first: {}\n  last: {}",
            side.name,
            lines.len(),
            lines.first().unwrap_or(&""),
            lines.last().unwrap_or(&"")
        ));
    }

    // ---- once both have expired, new connections are refused ------------------------------
    let refused_from = last_expiry + AFTER_EXPIRY;
    // A refused connection may take up to its read timeout: wait for the attempts, not a time.
    let refused_deadline = Instant::now()
        + Duration::from_secs_f64((refused_from - now_unix()).max(0.0))
        + Duration::from_secs(30);
    loop {
        if lock(&seen).window(refused_from, f64::MAX).0 >= REFUSED_ATTEMPTS {
            break;
        }
        assert!(
            Instant::now() < refused_deadline,
            "not {REFUSED_ATTEMPTS} new connections attempted after expiry: {}",
            status(&lock(&seen))
        );
        assert!(!thread.is_finished(), "the traffic thread ended");
        std::thread::sleep(TICK);
    }
    stop.store(true, Ordering::Relaxed);
    thread.join().expect("the traffic thread");
    let s = lock(&seen);
    let (attempted, failed) = s.window(refused_from, f64::MAX);
    assert!(
        failed.len() == attempted,
        "after both certificates expired, {} of {attempted} new connections still got through \
         (were the certificates not {TTL}?)\n{}",
        attempted - failed.len(),
        status(&s)
    );
    let held_after = s.held_broken.as_ref().map_or_else(
        || format!("still echoing at t+{:.1} s", s.held_last_ok - t0),
        |(at, e)| format!("broke at t+{:.1} s: {e}", at - t0),
    );
    report(&format!(
        "rotation: after both certificates expired (t+{:.1} s): {attempted} new connections, all \
         failed ({}); the held connection {held_after}",
        last_expiry - t0,
        failures_text(&failed, t0)
    ));

    // ---- every connection was mTLS, as the echo server's proxy counted them -----------------
    let after = proxy_metrics(&server.ip);
    let client_id = format!("spiffe://cluster.local/ns/{}/sa/client", ns.name);
    let opened = |m: &str, policy: &str, principal: Option<&str>| {
        let policy = format!("connection_security_policy=\"{policy}\"");
        let principal = principal.map(|p| format!("source_principal=\"{p}\""));
        let mut labels = vec![
            "reporter=\"destination\"",
            "destination_port=\"7000\"",
            policy.as_str(),
        ];
        if let Some(p) = &principal {
            labels.push(p);
        }
        metric_sum(m, "istio_tcp_connections_opened_total", &labels)
    };
    let mtls = opened(&after, "mutual_tls", Some(&client_id))
        - opened(&before, "mutual_tls", Some(&client_id));
    let plain = opened(&after, "none", None) - opened(&before, "none", None);
    let succeeded = s.attempts.iter().filter(|a| a.result.is_ok()).count() as u64;
    assert!(
        mtls >= succeeded && plain == 0,
        "the echo server's proxy counted {mtls} mutual_tls connections from {client_id} and \
         {plain} plaintext ones for {succeeded} that got through\n{after}"
    );
    drop(s);

    let t_restore = Instant::now();
    control.restore();
    report(&format!(
        "rotation: echo's proxy counted {mtls} mutual_tls TCP connections from {client_id}, 0 \
         plaintext; mesh-control back to {} Ready replicas in {:.1} s; test wall time {:.1} s",
        control.replicas,
        t_restore.elapsed().as_secs_f64(),
        wall.elapsed().as_secs_f64()
    ));
}
