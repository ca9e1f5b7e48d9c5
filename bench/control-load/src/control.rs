//! The mesh-control process: started by the driver (so its start is timed), its log
//! lines watched (listening address, sync, each snapshot build), its memory and CPU read
//! from /proc, its HTTP endpoints asked; stopped by its own PID.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A log line of interest and when it was read.
#[derive(Debug, Clone)]
pub struct Line {
    pub at: Instant,
    pub text: String,
}

pub struct MeshControl {
    child: Child,
    pub pid: u32,
    pub started: Instant,
    pub plaintext: SocketAddr,
    pub metrics: SocketAddr,
    /// Lines with "listening", "synced" or "snapshot built".
    pub lines: Arc<Mutex<Vec<Line>>>,
    /// Highest VmRSS seen by the sampler, kB.
    pub rss_max_kb: Arc<AtomicU64>,
    stop_sampler: Arc<AtomicBool>,
}

impl MeshControl {
    /// Starts `bin serve` on loopback `:0` ports; returns once it logged its addresses.
    pub fn spawn(bin: &str, kubeconfig: &str, log_file: &str) -> Result<MeshControl> {
        let started = Instant::now();
        let mut child = Command::new(bin)
            .args([
                "serve",
                // The simulated proxies use the plaintext stream; no CA (it would
                // bind 15012 and publish the root to every namespace).
                "--no-ca",
                "--plaintext-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
                // info as in production, plus the engine's one line per snapshot build.
                "--log",
                "info,mesh_control::serve::engine=debug",
            ])
            .env("KUBECONFIG", kubeconfig)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        let pid = child.id();
        let stderr = child.stderr.take().context("no stderr")?;
        let lines: Arc<Mutex<Vec<Line>>> = Arc::default();
        let mut log = std::fs::File::create(log_file).context("creating the log file")?;
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let at = Instant::now();
                    let _ = writeln!(log, "{line}");
                    if line.contains("listening")
                        || line.contains("synced")
                        || line.contains("snapshot built")
                    {
                        lines
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(Line { at, text: line });
                    }
                }
            });
        }
        let rss_max_kb = Arc::new(AtomicU64::new(0));
        let stop_sampler = Arc::new(AtomicBool::new(false));
        {
            let (max, stop) = (rss_max_kb.clone(), stop_sampler.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kb) = status_kb(pid, "VmRSS") {
                        max.fetch_max(kb, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        let mut mc = MeshControl {
            child,
            pid,
            started,
            plaintext: "0.0.0.0:0".parse()?,
            metrics: "0.0.0.0:0".parse()?,
            lines,
            rss_max_kb,
            stop_sampler,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let line = loop {
            if let Some(l) = mc.find("listening") {
                break l;
            }
            if let Some(st) = mc.child.try_wait()? {
                bail!("mesh-control exited ({st}); see {log_file}");
            }
            if Instant::now() > deadline {
                bail!("mesh-control did not log its addresses; see {log_file}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let field = |name: &str| -> Result<SocketAddr> {
            line.text
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .with_context(|| format!("no {name} in {:?}", line.text))?
                .parse()
                .context("bad address")
        };
        mc.plaintext = field("plaintext=")?;
        mc.metrics = field("metrics=")?;
        Ok(mc)
    }

    pub fn find(&self, what: &str) -> Option<Line> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|l| l.text.contains(what))
            .cloned()
    }

    /// Every "snapshot built" line: (when read, took_ms).
    pub fn builds(&self) -> Vec<(Instant, u64)> {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|l| l.text.contains("snapshot built"))
            .map(|l| {
                let ms = l
                    .text
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("took_ms="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                (l.at, ms)
            })
            .collect()
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn rss_kb(&self) -> u64 {
        status_kb(self.pid, "VmRSS").unwrap_or(0)
    }

    /// The kernel's high-water mark of the resident set.
    pub fn hwm_kb(&self) -> u64 {
        status_kb(self.pid, "VmHWM").unwrap_or(0)
    }

    /// Resident memory by kind of mapping, kB: the brk heap (glibc's main arena),
    /// other anonymous mappings (other malloc arenas, thread stacks, large allocations),
    /// and file-backed pages (the binary and its libraries).
    pub fn rss_breakdown_kb(&self) -> (u64, u64, u64) {
        let Ok(smaps) = std::fs::read_to_string(format!("/proc/{}/smaps", self.pid)) else {
            return (0, 0, 0);
        };
        let (mut heap, mut anon, mut file) = (0, 0, 0);
        let mut kind = 0;
        for line in smaps.lines() {
            let mut w = line.split_whitespace();
            let first = w.next().unwrap_or("");
            if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                // A mapping's header: address perms offset dev inode [path].
                let path = w.nth(4).unwrap_or("");
                kind = match path {
                    "[heap]" => 0,
                    "" | "[stack]" => 1,
                    p if p.starts_with('[') => 3,
                    _ => 2,
                };
            } else if first == "Rss:" {
                let kb: u64 = w.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                match kind {
                    0 => heap += kb,
                    1 => anon += kb,
                    2 => file += kb,
                    _ => {}
                }
            }
        }
        (heap, anon, file)
    }

    pub fn threads(&self) -> u64 {
        status_kb(self.pid, "Threads").unwrap_or(0)
    }

    /// User + system CPU seconds so far.
    pub fn cpu_seconds(&self) -> f64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return 0.0;
        };
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // rest starts at field 3 (state): utime is index 11, stime 12. USER_HZ is 100 on Linux.
        (ticks(11) + ticks(12)) / 100.0
    }

    /// SIGTERM (by PID), then waits up to 15 s (then SIGKILL).
    pub fn stop(mut self) -> Result<()> {
        self.stop_sampler.store(true, Ordering::Relaxed);
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        bail!("mesh-control did not exit within 15 s of SIGTERM; killed")
    }
}

impl Drop for MeshControl {
    fn drop(&mut self) {
        self.stop_sampler.store(true, Ordering::Relaxed);
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `kB` (or plain number) field of /proc/PID/status.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `GET path` over HTTP/1.1: (status, body).
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("not HTTP")?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// The push-duration histogram of a `/metrics` scrape: (upper bound, cumulative count).
pub fn push_buckets(metrics: &str) -> Vec<(f64, u64)> {
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("mesh_control_push_duration_seconds_bucket{le=\"")?;
            let (le, v) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v.trim().parse().ok()?))
        })
        .collect()
}

/// A series' value in a scrape.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}
