//! Command line and environment, parsed once into a typed, validated [`Config`].
//!
//! Tests build a [`Config`] from argument lists (`Args::try_parse_from`) or directly,
//! never by changing the process environment.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use mesh_common::{PROXY_ADMIN_PORT, PROXY_INBOUND_PORT, PROXY_METRICS_PORT, PROXY_OUTBOUND_PORT};

/// How bytes are moved between the two sockets of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMode {
    /// Zero-copy `splice(2)` through a pipe per direction (Linux); falls back to
    /// buffered copying for a connection whose pipe cannot be made.
    Splice,
    /// Read into a small user-space buffer, write it out.
    Buffered,
    /// Buffered for small messages (cheapest per message and per connection); a
    /// direction whose read fills the 16 KiB buffer is bulk and moves to `splice`.
    Adaptive,
}

/// Access log format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per closed connection, on stdout.
    Json,
}

/// Whether to listen on IPv6 as well as IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Mode {
    /// Listen on IPv6 when the kernel supports it; IPv4 only otherwise.
    Auto,
    /// IPv6 listeners are required: failing to bind them is an error.
    On,
    /// IPv4 only.
    Off,
}

/// The command line, parsed but not yet validated as a whole.
///
/// Parsed by hand rather than with clap: a sidecar runs in every pod, and clap's code
/// alone made up about a tenth of the resident memory of an idle proxy.
#[derive(Debug, Clone)]
pub struct Args {
    /// Port of the outbound capture listener (the pod's own outgoing TCP lands here).
    pub outbound_port: u16,
    /// Port of the inbound capture listener (TCP arriving at the pod lands here).
    pub inbound_port: u16,
    /// Admin address: `GET /healthz/ready`, `POST /quitquitquit`.
    pub admin_addr: SocketAddr,
    /// Prometheus address: `GET /stats/prometheus`.
    pub metrics_addr: SocketAddr,
    /// Give up connecting upstream after this long; the client is reset.
    pub connect_timeout: Duration,
    /// On SIGTERM or /quitquitquit, wait this long for open connections to finish.
    pub drain_timeout: Duration,
    /// Open connections beyond this number are refused with a reset.
    pub max_connections: u32,
    /// Write one access-log line per closed connection on stdout.
    pub access_log: Option<AccessLogFormat>,
    /// How bytes are copied between client and upstream.
    pub copy_mode: CopyMode,
    /// Event-loop threads.
    pub worker_threads: u16,
    /// Listen on IPv6 too.
    pub ipv6: Ipv6Mode,
    /// Log level.
    pub log_level: tracing::Level,
    /// Pod name (the downward API sets POD_NAME).
    pub pod_name: Option<String>,
    /// Pod namespace (the downward API sets POD_NAMESPACE).
    pub pod_namespace: Option<String>,
    /// Workload name, as Istio's injector sets it; defaults to the pod name.
    pub workload_name: Option<String>,
}

/// What the command line asked for.
#[derive(Debug, Clone)]
pub enum Command {
    Run(Box<Args>),
    Help,
    Version,
}

/// The usage text of `--help`.
pub const HELP: &str = "\
Transparent L4 sidecar proxy: forwards redirected TCP to its original destination

Usage: mesh-proxy [OPTIONS]

Options:
      --outbound-port <PORT>     Outbound capture listener port [default: 15001]
      --inbound-port <PORT>      Inbound capture listener port [default: 15006]
      --admin-addr <ADDR>        GET /healthz/ready, POST /quitquitquit [default: 0.0.0.0:15021]
      --metrics-addr <ADDR>      GET /stats/prometheus [default: 0.0.0.0:15090]
      --connect-timeout <DUR>    Give up connecting upstream after this long (500ms, 5s, 1m);
                                 the client is reset [default: 5s]
      --drain-timeout <DUR>      On SIGTERM or /quitquitquit, wait this long for open
                                 connections to finish [default: 30s]
      --max-connections <N>      Open connections beyond this are refused with a reset
                                 [default: 16384]
      --access-log <FORMAT>      One line per closed connection on stdout [possible: json]
      --copy-mode <MODE>         adaptive (buffered for small messages, splice(2) once a
                                 direction is bulk), splice or buffered; see
                                 bench/proxy/README.md [default: adaptive]
      --worker-threads <N>       Event-loop threads, 1-64, each with its own listeners on the
                                 capture ports (SO_REUSEPORT); Istio's sidecar default
                                 concurrency [default: 2]
      --ipv6 <MODE>              auto, on or off [default: auto]
      --log-level <LEVEL>        error, warn, info, debug or trace; at info every connection
                                 gets a tracing span [env: MESH_PROXY_LOG] [default: warn]
      --pod-name <NAME>          Pod name [env: POD_NAME]
      --pod-namespace <NS>       Pod namespace [env: POD_NAMESPACE]
      --workload-name <NAME>     Workload name; defaults to the pod name
                                 [env: ISTIO_META_WORKLOAD_NAME]
  -h, --help                     Print help
  -V, --version                  Print version
";

/// A command-line argument that cannot be used; the message names the flag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgError {
    #[error("unknown argument `{0}` (see --help)")]
    Unknown(String),
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    #[error("invalid value `{value}` for {flag}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
}

fn parse_enum<T: Copy>(s: &str, choices: &[(&str, T)]) -> Result<T, String> {
    choices
        .iter()
        .find(|(name, _)| *name == s)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            format!("expected one of {}", names.join(", "))
        })
}

fn parse_num<T>(s: &str, min: T, max: T) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    match s.parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(format!("expected a number from {min} to {max}")),
    }
}

impl Args {
    /// The defaults, with the environment-backed values taken from `env`.
    fn defaults(env: &dyn Fn(&str) -> Option<String>) -> Result<Args, ArgError> {
        let log_level = match env("MESH_PROXY_LOG") {
            Some(v) => parse_level(&v).map_err(|reason| ArgError::Invalid {
                flag: "--log-level (MESH_PROXY_LOG)",
                value: v,
                reason,
            })?,
            None => tracing::Level::WARN,
        };
        Ok(Args {
            outbound_port: PROXY_OUTBOUND_PORT,
            inbound_port: PROXY_INBOUND_PORT,
            admin_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PROXY_ADMIN_PORT),
            metrics_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PROXY_METRICS_PORT),
            connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(30),
            max_connections: 16384,
            access_log: None,
            copy_mode: CopyMode::Adaptive,
            worker_threads: 2,
            ipv6: Ipv6Mode::Auto,
            log_level,
            pod_name: env("POD_NAME"),
            pod_namespace: env("POD_NAMESPACE"),
            workload_name: env("ISTIO_META_WORKLOAD_NAME"),
        })
    }

    /// Parses the process's arguments and environment; prints help, version or the
    /// error and exits when there is nothing to run.
    pub fn parse() -> Args {
        match Args::command_from(std::env::args(), &|k| std::env::var(k).ok()) {
            Ok(Command::Run(a)) => *a,
            Ok(Command::Help) => {
                print!("{HELP}");
                std::process::exit(0)
            }
            Ok(Command::Version) => {
                println!("mesh-proxy {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0)
            }
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(2)
            }
        }
    }

    /// Parses `args` (the first is the program name) with the process environment.
    pub fn try_parse_from<I, S>(args: I) -> Result<Args, ArgError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        match Args::command_from(args, &|k| std::env::var(k).ok())? {
            Command::Run(a) => Ok(*a),
            Command::Help | Command::Version => Err(ArgError::Unknown("--help".into())),
        }
    }

    /// Parses `args` (the first is the program name), reading environment-backed
    /// values through `env`.
    pub fn command_from<I, S>(
        args: I,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Command, ArgError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut a = Args::defaults(env)?;
        let mut it = args.into_iter().map(Into::into).skip(1);
        while let Some(arg) = it.next() {
            if arg == "-h" || arg == "--help" {
                return Ok(Command::Help);
            }
            if arg == "-V" || arg == "--version" {
                return Ok(Command::Version);
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let flag: &'static str = match FLAGS.iter().find(|f| **f == name) {
                Some(f) => f,
                None => return Err(ArgError::Unknown(arg)),
            };
            let value = match inline.or_else(|| it.next()) {
                Some(v) => v,
                None => return Err(ArgError::MissingValue(flag)),
            };
            a.set(flag, &value).map_err(|reason| ArgError::Invalid {
                flag,
                value: value.clone(),
                reason,
            })?;
        }
        Ok(Command::Run(Box::new(a)))
    }

    fn set(&mut self, flag: &str, v: &str) -> Result<(), String> {
        let addr = |v: &str| {
            v.parse::<SocketAddr>()
                .map_err(|_| "expected an address like 0.0.0.0:15021 or [::]:15021".to_owned())
        };
        match flag {
            "--outbound-port" => self.outbound_port = parse_num(v, 0, u16::MAX)?,
            "--inbound-port" => self.inbound_port = parse_num(v, 0, u16::MAX)?,
            "--admin-addr" => self.admin_addr = addr(v)?,
            "--metrics-addr" => self.metrics_addr = addr(v)?,
            "--connect-timeout" => self.connect_timeout = parse_duration(v)?,
            "--drain-timeout" => self.drain_timeout = parse_duration(v)?,
            "--max-connections" => self.max_connections = parse_num(v, 1, u32::MAX)?,
            "--access-log" => {
                self.access_log = Some(parse_enum(v, &[("json", AccessLogFormat::Json)])?)
            }
            "--copy-mode" => {
                self.copy_mode = parse_enum(
                    v,
                    &[
                        ("adaptive", CopyMode::Adaptive),
                        ("splice", CopyMode::Splice),
                        ("buffered", CopyMode::Buffered),
                    ],
                )?
            }
            "--worker-threads" => self.worker_threads = parse_num(v, 1, 64)?,
            "--ipv6" => {
                self.ipv6 = parse_enum(
                    v,
                    &[
                        ("auto", Ipv6Mode::Auto),
                        ("on", Ipv6Mode::On),
                        ("off", Ipv6Mode::Off),
                    ],
                )?
            }
            "--log-level" => self.log_level = parse_level(v)?,
            "--pod-name" => self.pod_name = Some(v.to_owned()),
            "--pod-namespace" => self.pod_namespace = Some(v.to_owned()),
            "--workload-name" => self.workload_name = Some(v.to_owned()),
            other => return Err(format!("internal error: unhandled flag {other}")),
        }
        Ok(())
    }
}

/// Every flag that takes a value.
const FLAGS: [&str; 15] = [
    "--outbound-port",
    "--inbound-port",
    "--admin-addr",
    "--metrics-addr",
    "--connect-timeout",
    "--drain-timeout",
    "--max-connections",
    "--access-log",
    "--copy-mode",
    "--worker-threads",
    "--ipv6",
    "--log-level",
    "--pod-name",
    "--pod-namespace",
    "--workload-name",
];

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
            copy_mode: CopyMode::Adaptive,
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

    /// Parses with an empty environment.
    fn args(args: &[&str]) -> Result<Command, ArgError> {
        let mut all = vec!["mesh-proxy"];
        all.extend_from_slice(args);
        Args::command_from(all, &|_| None)
    }

    fn parse(list: &[&str]) -> Result<Config, String> {
        match args(list).map_err(|e| e.to_string())? {
            Command::Run(a) => a.into_config().map_err(|e| e.to_string()),
            other => Err(format!("not a run: {other:?}")),
        }
    }

    #[test]
    fn every_flag_is_documented_and_handled() {
        for flag in FLAGS {
            assert!(
                HELP.contains(&format!("{flag} <")),
                "{flag} missing from --help"
            );
            let mut a = Args::defaults(&|_| None).unwrap();
            // An empty value is wrong for most flags, but never "unhandled".
            if let Err(e) = a.set(flag, "") {
                assert!(!e.contains("internal error"), "{flag}: {e}");
            }
        }
        assert!(matches!(args(&["--help"]), Ok(Command::Help)));
        assert!(matches!(args(&["-V"]), Ok(Command::Version)));
    }

    #[test]
    fn environment_backs_identity_and_log_level() {
        let env = |k: &str| match k {
            "POD_NAME" => Some("web-1".to_owned()),
            "POD_NAMESPACE" => Some("shop".to_owned()),
            "MESH_PROXY_LOG" => Some("debug".to_owned()),
            _ => None,
        };
        let Command::Run(a) = Args::command_from(["mesh-proxy"], &env).unwrap() else {
            panic!("not a run")
        };
        assert_eq!(a.log_level, tracing::Level::DEBUG);
        let c = a.into_config().unwrap();
        assert_eq!(c.identity.workload, "web-1");
        assert_eq!(c.identity.namespace, "shop");
        // A flag wins over the environment.
        let Command::Run(a) =
            Args::command_from(["mesh-proxy", "--log-level", "error"], &env).unwrap()
        else {
            panic!("not a run")
        };
        assert_eq!(a.log_level, tracing::Level::ERROR);
        let bad = |k: &str| (k == "MESH_PROXY_LOG").then(|| "loud".to_owned());
        let e = Args::command_from(["mesh-proxy"], &bad).unwrap_err();
        assert!(e.to_string().contains("MESH_PROXY_LOG"), "{e}");
    }

    #[test]
    fn defaults_follow_istio_ports() {
        let Command::Run(a) = args(&[]).unwrap() else {
            panic!("not a run")
        };
        assert_eq!(a.log_level, tracing::Level::WARN);
        let c = parse(&[]).unwrap();
        assert_eq!(c.outbound[0].to_string(), "0.0.0.0:15001");
        assert_eq!(c.outbound[1].to_string(), "[::]:15001");
        assert_eq!(c.inbound[0].to_string(), "0.0.0.0:15006");
        assert_eq!(c.admin_addr.to_string(), "0.0.0.0:15021");
        assert_eq!(c.metrics_addr.to_string(), "0.0.0.0:15090");
        assert_eq!(c.copy_mode, CopyMode::Adaptive);
        assert_eq!(c.worker_threads, 2);
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
            "--max-connections=10",
            "--access-log",
            "json",
            "--copy-mode",
            "splice",
            "--worker-threads",
            "3",
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
        assert_eq!(c.worker_threads, 3);
        assert_eq!(c.identity.workload, "web-7d9f-abc");
        assert_eq!(c.identity.namespace, "shop");
    }

    #[test]
    fn every_copy_mode_in_the_help_parses() {
        assert_eq!(parse(&[]).unwrap().copy_mode, CopyMode::Adaptive);
        for (name, mode) in [
            ("adaptive", CopyMode::Adaptive),
            ("splice", CopyMode::Splice),
            ("buffered", CopyMode::Buffered),
        ] {
            assert!(HELP.contains(name), "{name} missing from --help");
            assert_eq!(parse(&["--copy-mode", name]).unwrap().copy_mode, mode);
        }
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
        let e = parse(&["--worker-threads", "65"]).unwrap_err();
        assert!(e.contains("--worker-threads"), "{e}");
        let e = parse(&["--admin-addr"]).unwrap_err();
        assert!(e.contains("--admin-addr needs a value"), "{e}");
        let e = parse(&["--no-such-flag"]).unwrap_err();
        assert!(e.contains("--no-such-flag"), "{e}");
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
