//! Command line and environment, parsed once into a typed, validated [`Config`].
//!
//! Tests build a [`Config`] from argument lists (`Args::try_parse_from`) or directly,
//! never by changing the process environment.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use mesh_common::{PROXY_ADMIN_PORT, PROXY_INBOUND_PORT, PROXY_METRICS_PORT, PROXY_OUTBOUND_PORT};

/// How bytes are moved between the two sockets of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CopyMode {
    /// Zero-copy `splice(2)` through a pipe per direction (Linux); falls back to
    /// buffered copying for a connection whose pipe cannot be made.
    Splice,
    /// Read into a small user-space buffer, write it out.
    Buffered,
}

/// Access log format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AccessLogFormat {
    /// One JSON object per closed connection, on stdout.
    Json,
}

/// Whether to listen on IPv6 as well as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Ipv6Mode {
    /// Listen on IPv6 when the kernel supports it; IPv4 only otherwise.
    Auto,
    /// IPv6 listeners are required: failing to bind them is an error.
    On,
    /// IPv4 only.
    Off,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "mesh-proxy",
    version,
    about = "Transparent L4 sidecar proxy: forwards redirected TCP to its original destination"
)]
pub struct Args {
    /// Port of the outbound capture listener (the pod's own outgoing TCP lands here).
    #[arg(long, default_value_t = PROXY_OUTBOUND_PORT)]
    pub outbound_port: u16,
    /// Port of the inbound capture listener (TCP arriving at the pod lands here).
    #[arg(long, default_value_t = PROXY_INBOUND_PORT)]
    pub inbound_port: u16,
    /// Admin address: `GET /healthz/ready`, `POST /quitquitquit`.
    #[arg(long, default_value_t = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PROXY_ADMIN_PORT))]
    pub admin_addr: SocketAddr,
    /// Prometheus address: `GET /stats/prometheus`.
    #[arg(long, default_value_t = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PROXY_METRICS_PORT))]
    pub metrics_addr: SocketAddr,
    /// Give up connecting upstream after this long (e.g. `5s`, `500ms`); the client is reset.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// On SIGTERM or /quitquitquit, wait this long for open connections to finish.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Open connections beyond this number are refused with a reset.
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Write one access-log line per closed connection on stdout.
    #[arg(long, value_enum)]
    pub access_log: Option<AccessLogFormat>,
    /// How bytes are copied between client and upstream. `buffered` (one shared
    /// scratch buffer per thread) measured faster than `splice` here for bulk, latency
    /// and new connections alike: see bench/proxy/README.md.
    #[arg(long, value_enum, default_value_t = CopyMode::Buffered)]
    pub copy_mode: CopyMode,
    /// Runtime threads. One is enough for a sidecar and keeps memory lowest.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub worker_threads: u16,
    /// Listen on IPv6 too.
    #[arg(long, value_enum, default_value_t = Ipv6Mode::Auto)]
    pub ipv6: Ipv6Mode,
    /// Log level: error, warn, info, debug or trace. `warn`, like Istio's proxies: at
    /// `info` every connection also gets a tracing span, which costs memory and time.
    #[arg(long, env = "MESH_PROXY_LOG", default_value = "warn", value_parser = parse_level)]
    pub log_level: tracing::Level,
    /// Pod name (the downward API sets POD_NAME).
    #[arg(long, env = "POD_NAME", hide_env_values = true)]
    pub pod_name: Option<String>,
    /// Pod namespace (the downward API sets POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", hide_env_values = true)]
    pub pod_namespace: Option<String>,
    /// Workload name, as Istio's injector sets it; defaults to the pod name.
    #[arg(long, env = "ISTIO_META_WORKLOAD_NAME", hide_env_values = true)]
    pub workload_name: Option<String>,
}

/// Who this proxy reports itself as in metric labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub workload: String,
    pub namespace: String,
}

impl Identity {
    pub fn unknown() -> Identity {
        Identity {
            workload: UNKNOWN.to_owned(),
            namespace: UNKNOWN.to_owned(),
        }
    }
}

/// The label value Istio uses when it cannot tell.
pub const UNKNOWN: &str = "unknown";

/// Everything the proxy needs, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// Outbound listen addresses (IPv4 first, then IPv6 if any).
    pub outbound: Vec<SocketAddr>,
    /// Inbound listen addresses.
    pub inbound: Vec<SocketAddr>,
    /// Whether failing to bind the IPv6 listeners is fatal.
    pub ipv6_required: bool,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_connections: usize,
    pub access_log: Option<AccessLogFormat>,
    pub copy_mode: CopyMode,
    pub worker_threads: usize,
    pub identity: Identity,
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--outbound-port and --inbound-port are both {0}: they must differ")]
    SamePorts(u16),
    #[error("--connect-timeout must be greater than zero")]
    ZeroConnectTimeout,
}

impl Args {
    /// Validates the arguments and turns them into a [`Config`].
    pub fn into_config(self) -> Result<Config, ConfigError> {
        if self.outbound_port == self.inbound_port && self.outbound_port != 0 {
            return Err(ConfigError::SamePorts(self.outbound_port));
        }
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::ZeroConnectTimeout);
        }
        let listen = |port: u16| {
            let mut addrs = vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)];
            if self.ipv6 != Ipv6Mode::Off {
                addrs.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port));
            }
            addrs
        };
        let non_empty = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
        let workload = non_empty(self.workload_name)
            .or_else(|| non_empty(self.pod_name))
            .unwrap_or_else(|| UNKNOWN.to_owned());
        let namespace = non_empty(self.pod_namespace).unwrap_or_else(|| UNKNOWN.to_owned());
        Ok(Config {
            outbound: listen(self.outbound_port),
            inbound: listen(self.inbound_port),
            ipv6_required: self.ipv6 == Ipv6Mode::On,
            admin_addr: self.admin_addr,
            metrics_addr: self.metrics_addr,
            connect_timeout: self.connect_timeout,
            drain_timeout: self.drain_timeout,
            max_connections: self.max_connections as usize,
            access_log: self.access_log,
            copy_mode: self.copy_mode,
            worker_threads: usize::from(self.worker_threads),
            identity: Identity {
                workload,
                namespace,
            },
        })
    }
}

impl Config {
    /// Everything on 127.0.0.1 with kernel-chosen ports: for tests.
    pub fn loopback() -> Config {
        let lo = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        Config {
            outbound: vec![lo],
            inbound: vec![lo],
            ipv6_required: false,
            admin_addr: lo,
            metrics_addr: lo,
            connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            max_connections: 16384,
            access_log: None,
            copy_mode: CopyMode::Buffered,
            worker_threads: 1,
            identity: Identity::unknown(),
        }
    }
}

/// Parses `250ms`, `5s`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (expected e.g. 500ms, 5s, 1m)"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{s}` (use ms, s or m)"
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}` is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_level(s: &str) -> Result<tracing::Level, String> {
    s.parse()
        .map_err(|_| format!("`{s}` is not a log level (error, warn, info, debug, trace)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut all = vec!["mesh-proxy"];
        all.extend_from_slice(args);
        // Keep the environment out: clear the env-backed values explicitly.
        let mut a = Args::try_parse_from(all).map_err(|e| e.to_string())?;
        if !args.iter().any(|x| x.starts_with("--pod-name")) {
            a.pod_name = None;
        }
        if !args.iter().any(|x| x.starts_with("--pod-namespace")) {
            a.pod_namespace = None;
        }
        if !args.iter().any(|x| x.starts_with("--workload-name")) {
            a.workload_name = None;
        }
        a.into_config().map_err(|e| e.to_string())
    }

    #[test]
    fn clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_follow_istio_ports() {
        let a = Args::try_parse_from(["mesh-proxy"]).unwrap();
        if std::env::var_os("MESH_PROXY_LOG").is_none() {
            assert_eq!(a.log_level, tracing::Level::WARN);
        }
        let c = parse(&[]).unwrap();
        assert_eq!(c.outbound[0].to_string(), "0.0.0.0:15001");
        assert_eq!(c.outbound[1].to_string(), "[::]:15001");
        assert_eq!(c.inbound[0].to_string(), "0.0.0.0:15006");
        assert_eq!(c.admin_addr.to_string(), "0.0.0.0:15021");
        assert_eq!(c.metrics_addr.to_string(), "0.0.0.0:15090");
        assert_eq!(c.copy_mode, CopyMode::Buffered);
        assert_eq!(c.worker_threads, 1);
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.identity, Identity::unknown());
        assert!(c.access_log.is_none());
    }

    #[test]
    fn flags_are_honoured() {
        let c = parse(&[
            "--outbound-port",
            "1",
            "--inbound-port",
            "2",
            "--connect-timeout",
            "250ms",
            "--drain-timeout",
            "1m",
            "--max-connections",
            "10",
            "--access-log",
            "json",
            "--copy-mode",
            "splice",
            "--worker-threads",
            "2",
            "--ipv6",
            "off",
            "--pod-name",
            "web-7d9f-abc",
            "--pod-namespace",
            "shop",
        ])
        .unwrap();
        assert_eq!(c.outbound, vec!["0.0.0.0:1".parse().unwrap()]);
        assert_eq!(c.inbound, vec!["0.0.0.0:2".parse().unwrap()]);
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.drain_timeout, Duration::from_secs(60));
        assert_eq!(c.max_connections, 10);
        assert_eq!(c.access_log, Some(AccessLogFormat::Json));
        assert_eq!(c.copy_mode, CopyMode::Splice);
        assert_eq!(c.worker_threads, 2);
        assert_eq!(c.identity.workload, "web-7d9f-abc");
        assert_eq!(c.identity.namespace, "shop");
    }

    #[test]
    fn workload_name_wins_over_pod_name() {
        let c = parse(&["--pod-name", "web-1", "--workload-name", "web"]).unwrap();
        assert_eq!(c.identity.workload, "web");
    }

    #[test]
    fn bad_values_name_the_flag() {
        let e = parse(&["--connect-timeout", "5 parsecs"]).unwrap_err();
        assert!(e.contains("--connect-timeout"), "{e}");
        let e = parse(&["--max-connections", "0"]).unwrap_err();
        assert!(e.contains("--max-connections"), "{e}");
        let e = parse(&["--outbound-port", "7", "--inbound-port", "7"]).unwrap_err();
        assert!(e.contains("--outbound-port"), "{e}");
        let e = parse(&["--connect-timeout", "0s"]).unwrap_err();
        assert!(e.contains("--connect-timeout"), "{e}");
        let e = parse(&["--copy-mode", "mmap"]).unwrap_err();
        assert!(e.contains("--copy-mode"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5h").is_err());
    }
}
