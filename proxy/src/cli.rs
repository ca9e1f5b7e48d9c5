//! Command line and environment, parsed once into a typed, validated
//! [`crate::config::Config`].
//!
//! Every flag and environment variable name comes from
//! [`mesh_common::contract::proxy`], the names the injector writes, and every variable
//! is read through the `env` closure of [`Args::command_from`], so tests (and the
//! workspace's contract test) parse with an environment of their own, never by changing
//! the process's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use mesh_common::contract::proxy::env as var;
use mesh_common::contract::proxy::flag;
use mesh_common::log::LogFilter;
use mesh_common::{
    DNS_CAPTURE_PORT, PROXY_ADMIN_PORT, PROXY_DEBUG_PORT, PROXY_INBOUND_PORT, PROXY_METRICS_PORT,
    PROXY_OUTBOUND_PORT,
};

use crate::config::{AccessLogFormat, Config, CopyMode, Identity, UNKNOWN, WorkloadIdentity};

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

/// What the proxy is (`--role`): the proxy of a captured app pod, or a gateway pod's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// The default: every sidecar the injector writes (it writes no `--role` for them).
    #[default]
    Sidecar,
    /// A pod injected with Istio's `gateway` template: the proxy is the pod's only job, no
    /// `istio-init`, no capture; it listens on the ports of the Gateways that select its
    /// pod (mesh-control's [`mesh_config::Key::Gateway`]) and routes by their bound
    /// VirtualServices. Needs `--control-plane`.
    Gateway,
}

impl Role {
    /// The value of `--role` that names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Sidecar => flag::ROLE_SIDECAR,
            Role::Gateway => flag::ROLE_GATEWAY,
        }
    }
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
    /// On SIGTERM, keep accepting this long before the drain starts.
    pub drain_delay: Duration,
    /// Open connections beyond this number are refused with a reset.
    pub max_connections: u32,
    /// Write one access-log line per connection on stdout.
    pub access_log: Option<AccessLogFormat>,
    /// How bytes are copied between client and upstream.
    pub copy_mode: CopyMode,
    /// Event-loop threads.
    pub worker_threads: u16,
    /// Sidecar (the default) or gateway.
    pub role: Role,
    /// Listen on IPv6 too.
    pub ipv6: Ipv6Mode,
    /// What to log: a level, optionally with `target=level` directives
    /// ([`mesh_common::log`]'s grammar).
    pub log_filter: LogFilter,
    /// Pod name (the downward API sets POD_NAME).
    pub pod_name: Option<String>,
    /// Pod namespace (the downward API sets POD_NAMESPACE).
    pub pod_namespace: Option<String>,
    /// Pod IP (the downward API sets INSTANCE_IP); `None` when unset or empty.
    pub instance_ip: Option<IpAddr>,
    /// The pod's ServiceAccount (SERVICE_ACCOUNT).
    pub service_account: Option<String>,
    /// Workload name, as Istio's injector sets it; defaults to the pod name.
    pub workload_name: Option<String>,
    /// The owning workload, as Istio writes it (ISTIO_META_OWNER; environment only).
    pub owner: Option<String>,
    /// Canonical service (CANONICAL_SERVICE; environment only).
    pub canonical_service: Option<String>,
    /// Canonical revision (CANONICAL_REVISION; environment only).
    pub canonical_revision: Option<String>,
    /// The pod's `app` label (APP_NAME; environment only).
    pub app_name: Option<String>,
    /// The pod's `version` label (APP_VERSION; environment only).
    pub app_version: Option<String>,
    /// mesh-control's `host:port`.
    pub control_plane: Option<String>,
    /// The longest readiness waits for the first config.
    pub config_wait: Duration,
    /// `/config_dump`, `/debug/route`.
    pub debug_addr: SocketAddr,
    /// Answer the app's DNS on 127.0.0.1 / ::1 port 15053.
    pub dns_capture: bool,
    /// The mesh root (PEM): given, the proxy has a workload identity and talks TLS to
    /// mesh-control and the CA.
    pub root_cert: Option<PathBuf>,
    /// The CA's `host:port`; default: `--control-plane`.
    pub ca_address: Option<String>,
    /// The name mesh-control's and the CA's certificates must carry.
    pub control_plane_san: Option<String>,
    /// The ServiceAccount token shown to the CA.
    pub token_file: Option<PathBuf>,
    /// Trust domain of the SPIFFE id.
    pub trust_domain: Option<String>,
    /// Certificate lifetime asked of the CA.
    pub cert_ttl: Option<Duration>,
    /// The same from `SECRET_TTL` (Istio's variable); `--cert-ttl` wins. Unlike the
    /// flag it is no error without `--root-cert`: a mesh-wide `proxyMetadata` reaches
    /// proxies without an identity too.
    pub env_cert_ttl: Option<Duration>,
}

/// What the command line asked for.
#[derive(Debug, Clone)]
pub enum Command {
    /// Run the proxy with these arguments.
    Run(Box<Args>),
    /// `--help`: print [`HELP`].
    Help,
    /// `--version`.
    Version,
    /// `mesh-proxy wait`: block until the pod's proxy is ready ([`crate::wait`]).
    Wait(crate::wait::WaitArgs),
}

/// The usage text of `--help`. Its flag and variable names are the contract's
/// (`mesh_common::contract::proxy`); a unit test holds them together.
pub const HELP: &str = "\
Transparent sidecar proxy: forwards redirected TCP to its original destination, with
HTTP routing from mesh-control

Usage: mesh-proxy [OPTIONS]
       mesh-proxy wait [--admin-addr 127.0.0.1:15021] [--timeout 60s]   (exit 0 once ready)

Options:
      --outbound-port <PORT>     Outbound capture listener port [default: 15001]
      --inbound-port <PORT>      Inbound capture listener port [default: 15006]
      --admin-addr <ADDR>        GET /healthz/ready, POST /quitquitquit [default: 0.0.0.0:15021]
      --metrics-addr <ADDR>      GET /stats/prometheus [default: 0.0.0.0:15090]
      --connect-timeout <DUR>    Give up connecting upstream after this long (500ms, 5s, 1m);
                                 the client is reset [default: 5s]
      --drain-delay <DUR>        On SIGTERM, readiness turns 503 at once but the capture
                                 listeners keep accepting this long, while the pod's
                                 endpoints are removed from its Services; then the drain
                                 starts (/quitquitquit and SIGINT drain at once) [default: 5s]
      --drain-timeout <DUR>      Once draining, wait this long for open connections to
                                 finish; delay + timeout stay under the pod's default
                                 terminationGracePeriodSeconds (30 s) [default: 20s]
      --max-connections <N>      Open connections beyond this are refused with a reset
                                 [default: 16384]
      --access-log <FORMAT>      One line per connection on stdout [possible: json]
      --copy-mode <MODE>         adaptive (buffered for small messages, splice(2) once a
                                 direction is bulk), splice or buffered; see
                                 bench/proxy/README.md [default: adaptive]
      --worker-threads <N>       Event-loop threads, 1-64, each with its own listeners on the
                                 capture ports (SO_REUSEPORT); Istio's sidecar default
                                 concurrency [default: 2]
      --ipv6 <MODE>              auto, on or off [default: auto]
      --role <ROLE>              sidecar (the proxy of a captured app pod) or gateway (a pod
                                 injected with the gateway template: no capture; it listens
                                 on the ports of the Gateways that select its pod; needs
                                 --control-plane) [default: sidecar]
      --log-level <FILTER>       A level (trace, debug, info, warn|warning, error|critical,
                                 off), optionally with target=level directives, e.g.
                                 warn,mesh_proxy=debug; at info every connection gets a
                                 tracing span; release builds have no trace-level events
                                 (debug is the most detailed) [env: MESH_PROXY_LOG]
                                 [default: warn]
      --pod-name <NAME>          Pod name [env: POD_NAME]
      --pod-namespace <NS>       Pod namespace [env: POD_NAMESPACE]
      --instance-ip <IP>         Pod IP; empty means unset [env: INSTANCE_IP]
      --service-account <NAME>   The pod's ServiceAccount [env: SERVICE_ACCOUNT]
      --workload-name <NAME>     Workload name; defaults to the pod name
                                 [env: ISTIO_META_WORKLOAD_NAME]
      --control-plane <ADDR>     mesh-control's host:port (its config stream); without it
                                 every connection stays L4
      --config-wait <DUR>        Readiness waits this long at most for the first config
                                 from mesh-control, then treats what it does not know as
                                 outside the mesh [default: 10s]
      --debug-addr <ADDR>        GET /config_dump, GET /debug/route [default: 127.0.0.1:15000]
      --dns-capture              Answer the app's DNS (redirected by mesh-init --dns-capture)
                                 on 127.0.0.1:15053 and [::1]:15053, UDP and TCP
      --root-cert <FILE>         The mesh root certificate (PEM; ConfigMap istio-ca-root-cert).
                                 Given: mesh-control and the CA are reached over TLS verified
                                 against it, and the proxy gets a workload certificate for
                                 spiffe://<trust domain>/ns/<POD_NAMESPACE>/sa/<SERVICE_ACCOUNT>
                                 (ready only once it holds one). Absent: plaintext config
                                 stream, no identity
      --ca-address <ADDR>        The CA's host:port (Istio's CreateCertificate protocol)
                                 [default: --control-plane]
      --control-plane-san <NAME>
                                 The name (DNS or IP) mesh-control's and the CA's certificates
                                 must carry [default: the host of the address dialled]
      --token-file <FILE>        ServiceAccount token shown to the CA, re-read at each request
                                 [default: /var/run/secrets/tokens/istio-token]
      --trust-domain <TD>        Trust domain of the workload identity [default: cluster.local]
      --cert-ttl <DUR>           Workload certificate lifetime asked of the CA, at least 1s;
                                 renewed at half of it [default: 24h] [env: SECRET_TTL]
  -h, --help                     Print help
  -V, --version                  Print version

Environment (set by the injector; empty means unset):
  ISTIO_META_OWNER               The owning workload, as Istio writes it
  CANONICAL_SERVICE              Canonical service name
  CANONICAL_REVISION             Canonical revision
  APP_NAME                       The pod's app label
  APP_VERSION                    The pod's version label
";

/// A command-line argument or environment variable that cannot be used; the message
/// names the flag (and the variable).
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
    #[error("invalid value `{value}` for {flag} ({var}): {reason}")]
    InvalidEnv {
        var: &'static str,
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

/// `--flag=value` → (`--flag`, the value); anything else is a name alone.
fn split_inline(arg: &str) -> (&str, Option<String>) {
    match arg.split_once('=') {
        Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
        _ => (arg, None),
    }
}

/// `mesh-proxy wait [--admin-addr HOST:PORT] [--timeout DURATION]`.
fn wait_args(args: impl Iterator<Item = String>) -> Result<Command, ArgError> {
    use mesh_common::contract::proxy::wait::{ADMIN_ADDR, TIMEOUT};
    let mut w = crate::wait::WaitArgs::default();
    let mut it = args;
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Command::Help);
        }
        let (name, inline) = split_inline(&arg);
        let flag = match name {
            ADMIN_ADDR => ADMIN_ADDR,
            TIMEOUT => TIMEOUT,
            _ => return Err(ArgError::Unknown(arg)),
        };
        let value = inline
            .or_else(|| it.next())
            .ok_or(ArgError::MissingValue(flag))?;
        let invalid = |reason: String| ArgError::Invalid {
            flag,
            value: value.clone(),
            reason,
        };
        if flag == ADMIN_ADDR {
            w.admin_addr = value.parse().map_err(|e| invalid(format!("{e}")))?;
        } else {
            w.timeout = parse_duration(&value).map_err(invalid)?;
        }
    }
    Ok(Command::Wait(w))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    mesh_common::duration::parse(s).map_err(|e| e.to_string())
}

/// `host:port` (a name, an IPv4 address or a bracketed IPv6 address, and a port from 1);
/// empty means no control plane.
fn parse_host_port(s: &str) -> Result<Option<String>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let bad = || {
        "expected host:port such as mesh-control.mesh-system.svc:15010 or 10.96.0.20:15010"
            .to_owned()
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 && host_ok => Ok(Some(s.to_owned())),
        _ => Err(bad()),
    }
}

/// A path; empty (or blanks) means unset.
fn non_empty_path(s: &str) -> Option<PathBuf> {
    let s = s.trim();
    (!s.is_empty()).then(|| PathBuf::from(s))
}

/// A DNS name or an IP address (brackets allowed around IPv6); empty means unset.
fn parse_server_name(s: &str) -> Result<Option<String>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let bare = s
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(s);
    rustls::pki_types::ServerName::try_from(bare)
        .map(|_| Some(bare.to_owned()))
        .map_err(|_| {
            "expected a DNS name such as mesh-control.mesh-system.svc or an IP address".to_owned()
        })
}

/// A SPIFFE trust domain: lowercase letters, digits, `.`, `-` and `_`.
fn parse_trust_domain(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("expected a trust domain such as cluster.local (lowercase letters, digits, '.', '-', '_')".to_owned())
    }
}

/// A certificate lifetime: whole seconds, at least one.
fn parse_cert_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) {
        return Err("the CA counts whole seconds: at least 1s".to_owned());
    }
    Ok(Duration::from_secs(d.as_secs()))
}

fn parse_log_filter(s: &str) -> Result<LogFilter, String> {
    LogFilter::parse(s).map_err(|e| e.to_string())
}

/// An IP address; empty (or blanks) means unset.
fn parse_ip(s: &str) -> Result<Option<IpAddr>, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| "expected an IP address such as 10.1.2.3 or fd00::2".to_owned())
}

/// Reads `name` through `env` and parses it with `parse`; an error names the variable
/// and the flag it stands for.
fn from_env<T>(
    env: &dyn Fn(&str) -> Option<String>,
    name: &'static str,
    flag: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, ArgError> {
    match env(name) {
        None => Ok(None),
        Some(value) => match parse(&value) {
            Ok(v) => Ok(Some(v)),
            Err(reason) => Err(ArgError::InvalidEnv {
                var: name,
                flag,
                value,
                reason,
            }),
        },
    }
}

impl Args {
    /// The defaults, with the environment-backed values taken from `env`.
    fn defaults(env: &dyn Fn(&str) -> Option<String>) -> Result<Args, ArgError> {
        let log_filter =
            from_env(env, var::LOG, flag::LOG_LEVEL, parse_log_filter)?.unwrap_or_default();
        let instance_ip = from_env(env, var::INSTANCE_IP, flag::INSTANCE_IP, parse_ip)?.flatten();
        let env_cert_ttl = from_env(env, var::SECRET_TTL, flag::CERT_TTL, parse_cert_ttl)?;
        Ok(Args {
            outbound_port: PROXY_OUTBOUND_PORT,
            inbound_port: PROXY_INBOUND_PORT,
            admin_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PROXY_ADMIN_PORT),
            metrics_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), PROXY_METRICS_PORT),
            connect_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(20),
            drain_delay: Duration::from_secs(5),
            max_connections: 16384,
            access_log: None,
            copy_mode: CopyMode::Adaptive,
            worker_threads: 2,
            role: Role::Sidecar,
            ipv6: Ipv6Mode::Auto,
            log_filter,
            pod_name: env(var::POD_NAME),
            pod_namespace: env(var::POD_NAMESPACE),
            instance_ip,
            service_account: env(var::SERVICE_ACCOUNT),
            workload_name: env(var::WORKLOAD_NAME),
            owner: env(var::OWNER),
            canonical_service: env(var::CANONICAL_SERVICE),
            canonical_revision: env(var::CANONICAL_REVISION),
            app_name: env(var::APP_NAME),
            app_version: env(var::APP_VERSION),
            control_plane: None,
            config_wait: Duration::from_secs(10),
            debug_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), PROXY_DEBUG_PORT),
            dns_capture: false,
            root_cert: None,
            ca_address: None,
            control_plane_san: None,
            token_file: None,
            trust_domain: None,
            cert_ttl: None,
            env_cert_ttl,
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
            Ok(Command::Wait(w)) => match crate::wait::wait(&w) {
                Ok(took) => {
                    println!("mesh-proxy is ready (waited {took:?})");
                    std::process::exit(0)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    std::process::exit(1)
                }
            },
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
            Command::Wait(_) => Err(ArgError::Unknown("wait".into())),
        }
    }

    /// Parses `args` (the first is the program name), reading environment-backed
    /// values through `env` (and only through it).
    pub fn command_from<I, S>(
        args: I,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Command, ArgError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut it = args.into_iter().map(Into::into).skip(1).peekable();
        if it.peek().map(String::as_str) == Some(mesh_common::contract::proxy::wait::SUBCOMMAND) {
            it.next();
            return wait_args(it);
        }
        let mut a = Args::defaults(env)?;
        while let Some(arg) = it.next() {
            if arg == "-h" || arg == "--help" {
                return Ok(Command::Help);
            }
            if arg == "-V" || arg == "--version" {
                return Ok(Command::Version);
            }
            if arg == flag::DNS_CAPTURE {
                a.dns_capture = true;
                continue;
            }
            let (name, inline) = split_inline(&arg);
            let flag: &'static str = match flag::ALL.iter().find(|f| **f == name) {
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

    fn set(&mut self, name: &str, v: &str) -> Result<(), String> {
        let addr = |v: &str| {
            v.parse::<SocketAddr>()
                .map_err(|_| "expected an address like 0.0.0.0:15021 or [::]:15021".to_owned())
        };
        match name {
            flag::OUTBOUND_PORT => self.outbound_port = parse_num(v, 0, u16::MAX)?,
            flag::INBOUND_PORT => self.inbound_port = parse_num(v, 0, u16::MAX)?,
            flag::ADMIN_ADDR => self.admin_addr = addr(v)?,
            flag::METRICS_ADDR => self.metrics_addr = addr(v)?,
            flag::CONNECT_TIMEOUT => self.connect_timeout = parse_duration(v)?,
            flag::DRAIN_TIMEOUT => self.drain_timeout = parse_duration(v)?,
            flag::DRAIN_DELAY => self.drain_delay = parse_duration(v)?,
            flag::MAX_CONNECTIONS => self.max_connections = parse_num(v, 1, u32::MAX)?,
            flag::ACCESS_LOG => {
                self.access_log = Some(parse_enum(v, &[("json", AccessLogFormat::Json)])?)
            }
            flag::COPY_MODE => {
                self.copy_mode = parse_enum(
                    v,
                    &[
                        ("adaptive", CopyMode::Adaptive),
                        ("splice", CopyMode::Splice),
                        ("buffered", CopyMode::Buffered),
                    ],
                )?
            }
            flag::WORKER_THREADS => self.worker_threads = parse_num(v, 1, 64)?,
            flag::ROLE => {
                self.role = parse_enum(
                    v,
                    &[
                        (flag::ROLE_SIDECAR, Role::Sidecar),
                        (flag::ROLE_GATEWAY, Role::Gateway),
                    ],
                )?
            }
            flag::IPV6 => {
                self.ipv6 = parse_enum(
                    v,
                    &[
                        ("auto", Ipv6Mode::Auto),
                        ("on", Ipv6Mode::On),
                        ("off", Ipv6Mode::Off),
                    ],
                )?
            }
            flag::LOG_LEVEL => self.log_filter = parse_log_filter(v)?,
            flag::POD_NAME => self.pod_name = Some(v.to_owned()),
            flag::POD_NAMESPACE => self.pod_namespace = Some(v.to_owned()),
            flag::INSTANCE_IP => self.instance_ip = parse_ip(v)?,
            flag::SERVICE_ACCOUNT => self.service_account = Some(v.to_owned()),
            flag::WORKLOAD_NAME => self.workload_name = Some(v.to_owned()),
            flag::CONTROL_PLANE => self.control_plane = parse_host_port(v)?,
            flag::CONFIG_WAIT => self.config_wait = parse_duration(v)?,
            flag::DEBUG_ADDR => self.debug_addr = addr(v)?,
            flag::ROOT_CERT => self.root_cert = non_empty_path(v),
            flag::CA_ADDRESS => self.ca_address = parse_host_port(v)?,
            flag::CONTROL_PLANE_SAN => self.control_plane_san = parse_server_name(v)?,
            flag::TOKEN_FILE => {
                self.token_file = Some(non_empty_path(v).ok_or("expected a file path")?)
            }
            flag::TRUST_DOMAIN => self.trust_domain = Some(parse_trust_domain(v)?),
            flag::CERT_TTL => self.cert_ttl = Some(parse_cert_ttl(v)?),
            other => return Err(format!("internal error: unhandled flag {other}")),
        }
        Ok(())
    }
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--outbound-port and --inbound-port are both {0}: they must differ")]
    SamePorts(u16),
    #[error("--connect-timeout must be greater than zero")]
    ZeroConnectTimeout,
    #[error(
        "--role gateway needs --control-plane: a gateway's listeners come from its Gateway config"
    )]
    GatewayWithoutControlPlane,
    #[error("{0} needs --root-cert (it configures the workload identity)")]
    NeedsRootCert(&'static str),
    #[error(
        "--root-cert needs a CA to ask for the certificate: give --ca-address or --control-plane"
    )]
    NoCa,
    #[error("--root-cert needs the pod's {what} for its SPIFFE id: set {var} (or {flag})")]
    MissingForIdentity {
        what: &'static str,
        var: &'static str,
        flag: &'static str,
    },
    #[error("`{0}` is not a usable SPIFFE id (namespace and service account must be plain names)")]
    BadSpiffeId(String),
    #[error(
        "the host of {flag} `{host}` cannot be checked in a certificate: give --control-plane-san"
    )]
    BadServerName { flag: &'static str, host: String },
}

impl Args {
    /// Validates the arguments and turns them into a [`Config`]. With `--role gateway`
    /// it logs one info line saying so (the caller has started logging by then).
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
        let pod_namespace = non_empty(self.pod_namespace.clone());
        let service_account = non_empty(self.service_account.clone());
        let workload_identity = match &self.root_cert {
            None => {
                for (given, flag) in [
                    (self.ca_address.is_some(), flag::CA_ADDRESS),
                    (self.control_plane_san.is_some(), flag::CONTROL_PLANE_SAN),
                    (self.token_file.is_some(), flag::TOKEN_FILE),
                    (self.trust_domain.is_some(), flag::TRUST_DOMAIN),
                    (self.cert_ttl.is_some(), flag::CERT_TTL),
                ] {
                    if given {
                        return Err(ConfigError::NeedsRootCert(flag));
                    }
                }
                None
            }
            Some(root_cert) => Some(workload_identity(
                root_cert.clone(),
                &self,
                pod_namespace.as_deref(),
                service_account.as_deref(),
            )?),
        };
        let pod_name = non_empty(self.pod_name);
        let workload = non_empty(self.workload_name)
            .or_else(|| pod_name.clone())
            .unwrap_or_else(|| UNKNOWN.to_owned());
        let namespace = pod_namespace.unwrap_or_else(|| UNKNOWN.to_owned());
        let gateway = match self.role {
            Role::Sidecar => None,
            Role::Gateway => {
                if self.control_plane.is_none() {
                    return Err(ConfigError::GatewayWithoutControlPlane);
                }
                tracing::info!(
                    role = self.role.as_str(),
                    workload = %workload,
                    namespace = %namespace,
                    "running as a gateway: no capture, the listeners of the Gateways that select this pod"
                );
                Some(listen(0).into_iter().map(|a| a.ip()).collect::<Vec<_>>())
            }
        };
        let capture = |port| {
            if gateway.is_some() {
                Vec::new()
            } else {
                listen(port)
            }
        };
        Ok(Config {
            outbound: capture(self.outbound_port),
            inbound: capture(self.inbound_port),
            ipv6_required: self.ipv6 == Ipv6Mode::On,
            admin_addr: self.admin_addr,
            metrics_addr: self.metrics_addr,
            connect_timeout: self.connect_timeout,
            drain_timeout: self.drain_timeout,
            drain_delay: self.drain_delay,
            max_connections: self.max_connections as usize,
            access_log: self.access_log,
            copy_mode: self.copy_mode,
            worker_threads: usize::from(self.worker_threads),
            identity: Identity {
                workload,
                namespace,
                pod_ip: self.instance_ip,
                service_account,
                owner: non_empty(self.owner),
                canonical_service: non_empty(self.canonical_service),
                canonical_revision: non_empty(self.canonical_revision),
                app: non_empty(self.app_name),
                version: non_empty(self.app_version),
            },
            pod_name,
            control_plane: self.control_plane,
            config_wait: self.config_wait,
            debug_addr: self.debug_addr,
            dns: if self.dns_capture {
                let mut dns = vec![SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    DNS_CAPTURE_PORT,
                )];
                if self.ipv6 != Ipv6Mode::Off {
                    dns.push(SocketAddr::new(
                        IpAddr::V6(Ipv6Addr::LOCALHOST),
                        DNS_CAPTURE_PORT,
                    ));
                }
                dns
            } else {
                Vec::new()
            },
            workload_identity,
            gateway,
        })
    }
}

/// The workload identity `--root-cert` asks for, from the identity flags.
fn workload_identity(
    root_cert: PathBuf,
    a: &Args,
    namespace: Option<&str>,
    service_account: Option<&str>,
) -> Result<WorkloadIdentity, ConfigError> {
    use mesh_common::identity as id;
    let namespace = namespace.ok_or(ConfigError::MissingForIdentity {
        what: "namespace",
        var: var::POD_NAMESPACE,
        flag: flag::POD_NAMESPACE,
    })?;
    let service_account = service_account.ok_or(ConfigError::MissingForIdentity {
        what: "ServiceAccount",
        var: var::SERVICE_ACCOUNT,
        flag: flag::SERVICE_ACCOUNT,
    })?;
    let trust_domain = a
        .trust_domain
        .clone()
        .unwrap_or_else(|| id::DEFAULT_TRUST_DOMAIN.to_owned());
    let spiffe_id = id::spiffe_id(&trust_domain, namespace, service_account);
    if id::parse_spiffe_id(&spiffe_id).is_none() || !spiffe_id.is_ascii() {
        return Err(ConfigError::BadSpiffeId(spiffe_id));
    }
    let (ca_address, ca_flag) = match (&a.ca_address, &a.control_plane) {
        (Some(ca), _) => (ca.clone(), flag::CA_ADDRESS),
        (None, Some(cp)) => (cp.clone(), flag::CONTROL_PLANE),
        (None, None) => return Err(ConfigError::NoCa),
    };
    // The name each peer's certificate must carry: --control-plane-san for both, else
    // the host each is dialled at (for the CA, that of --control-plane by default).
    let name_for = |address: &str, flag: &'static str| {
        let host = a
            .control_plane_san
            .clone()
            .unwrap_or_else(|| crate::identity::channel::host_of(address).to_owned());
        rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|_| ConfigError::BadServerName { flag, host })
    };
    let ca_server_name = name_for(&ca_address, ca_flag)?;
    let control_plane_server_name = match &a.control_plane {
        Some(cp) => Some(name_for(cp, flag::CONTROL_PLANE)?),
        None => None,
    };
    Ok(WorkloadIdentity {
        spiffe_id,
        trust_domain,
        root_cert,
        ca_address,
        ca_server_name,
        control_plane_server_name,
        token_file: a
            .token_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(id::TOKEN_PATH)),
        cert_ttl: a
            .cert_ttl
            .or(a.env_cert_ttl)
            .unwrap_or(Duration::from_secs(id::DEFAULT_CERT_TTL_SECS)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_common::log::Level;

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

    fn run_args(list: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Args {
        let mut all = vec!["mesh-proxy"];
        all.extend_from_slice(list);
        match Args::command_from(all, env) {
            Ok(Command::Run(a)) => *a,
            other => panic!("not a run: {other:?}"),
        }
    }

    #[test]
    fn every_flag_is_documented_and_handled() {
        for flag in flag::ALL {
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

    /// A valid value for each contract flag.
    fn sample_value(f: &str) -> &'static str {
        match f {
            flag::OUTBOUND_PORT => "15001",
            flag::INBOUND_PORT => "15006",
            flag::ADMIN_ADDR => "127.0.0.1:15021",
            flag::METRICS_ADDR => "[::]:15090",
            flag::CONNECT_TIMEOUT => "250ms",
            flag::DRAIN_TIMEOUT => "1m",
            flag::DRAIN_DELAY => "2s",
            flag::MAX_CONNECTIONS => "10",
            flag::ACCESS_LOG => "json",
            flag::COPY_MODE => "splice",
            flag::WORKER_THREADS => "3",
            flag::IPV6 => "off",
            flag::LOG_LEVEL => "warning,mesh_proxy=debug",
            flag::POD_NAME => "web-7d9f-abc",
            flag::POD_NAMESPACE => "shop",
            flag::INSTANCE_IP => "198.18.0.2",
            flag::SERVICE_ACCOUNT => "web-sa",
            flag::WORKLOAD_NAME => "web",
            flag::CONTROL_PLANE => "mesh-control.mesh-system.svc:15010",
            flag::CONFIG_WAIT => "3s",
            flag::DEBUG_ADDR => "127.0.0.1:15000",
            flag::ROOT_CERT => "/var/run/secrets/istio/root-cert.pem",
            flag::CA_ADDRESS => "istiod.istio-system.svc:15012",
            flag::CONTROL_PLANE_SAN => "mesh-control.mesh-system.svc",
            flag::TOKEN_FILE => "/var/run/secrets/tokens/istio-token",
            flag::TRUST_DOMAIN => "cluster.local",
            flag::CERT_TTL => "12h",
            flag::ROLE => "gateway",
            other => panic!("no sample value for contract flag {other}: add one"),
        }
    }

    /// What the identity flags need beside them to make a valid configuration.
    const IDENTITY_BASE: [&str; 8] = [
        "--root-cert",
        "/r.pem",
        "--control-plane",
        "mesh-control.mesh-system.svc:15012",
        "--pod-namespace",
        "shop",
        "--service-account",
        "web",
    ];

    fn context(f: &str) -> &'static [&'static str] {
        match f {
            flag::ROOT_CERT
            | flag::CA_ADDRESS
            | flag::CONTROL_PLANE_SAN
            | flag::TOKEN_FILE
            | flag::TRUST_DOMAIN
            | flag::CERT_TTL => &IDENTITY_BASE,
            // The sample value is `gateway`, which needs a control plane.
            flag::ROLE => &["--control-plane", "mesh-control:15010"],
            _ => &[],
        }
    }

    #[test]
    fn every_contract_flag_is_accepted_and_in_the_help() {
        for f in flag::ALL {
            assert!(
                HELP.contains(&format!("      {f} <")),
                "{f} missing from --help"
            );
            let v = sample_value(f);
            // Both spellings: `--flag value` and `--flag=value`.
            let mut list = context(f).to_vec();
            list.extend([f, v]);
            parse(&list).unwrap_or_else(|e| panic!("{f} {v}: {e}"));
            let inline = format!("{f}={v}");
            let mut list = context(f).to_vec();
            list.push(&inline);
            parse(&list).unwrap_or_else(|e| panic!("{f}={v}: {e}"));
        }
        // And the help offers nothing the contract does not list.
        for line in HELP.lines() {
            if let Some(rest) = line.trim_start().strip_prefix("--")
                && let Some((name, _)) = rest.split_once(" <")
            {
                let name = format!("--{name}");
                assert!(
                    flag::ALL.contains(&name.as_str()),
                    "{name} is not in the contract"
                );
            }
        }
        // Every variable, behind its flag or in the environment section.
        for v in var::ALL {
            let listed = HELP.contains(&format!("[env: {v}]"))
                || HELP.lines().any(|l| l.starts_with(&format!("  {v} ")));
            assert!(listed, "{v} missing from --help");
        }
    }

    #[test]
    fn every_contract_variable_is_read_through_the_closure() {
        let asked = std::cell::RefCell::new(Vec::new());
        let env = |k: &str| {
            asked.borrow_mut().push(k.to_owned());
            None
        };
        Args::command_from(["mesh-proxy"], &env).unwrap();
        let mut asked = asked.into_inner();
        asked.sort();
        let mut want: Vec<String> = var::ALL.iter().map(|v| v.to_string()).collect();
        want.sort();
        assert_eq!(asked, want);
    }

    #[test]
    fn environment_backs_identity_and_log_level() {
        let env = |k: &str| match k {
            "POD_NAME" => Some("web-1".to_owned()),
            "POD_NAMESPACE" => Some("shop".to_owned()),
            "MESH_PROXY_LOG" => Some("debug".to_owned()),
            _ => None,
        };
        let a = run_args(&[], &env);
        assert_eq!(a.log_filter.default, Level::Debug);
        let c = a.into_config().unwrap();
        assert_eq!(c.identity.workload, "web-1");
        assert_eq!(c.identity.namespace, "shop");
        // A flag wins over the environment.
        let a = run_args(&["--log-level", "error"], &env);
        assert_eq!(a.log_filter.default, Level::Error);
        let bad = |k: &str| (k == "MESH_PROXY_LOG").then(|| "loud".to_owned());
        let e = Args::command_from(["mesh-proxy"], &bad).unwrap_err();
        assert!(e.to_string().contains("MESH_PROXY_LOG"), "{e}");
    }

    #[test]
    fn control_plane_and_dns_capture() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.control_plane, None);
        assert!(c.dns.is_empty());
        assert_eq!(c.debug_addr.to_string(), "127.0.0.1:15000");
        let c = parse(&[
            "--control-plane",
            "10.96.0.20:15010",
            "--dns-capture",
            "--ipv6",
            "off",
        ])
        .unwrap();
        assert_eq!(c.control_plane.as_deref(), Some("10.96.0.20:15010"));
        assert_eq!(c.dns, vec!["127.0.0.1:15053".parse().unwrap()]);
        let c = parse(&["--control-plane=[fd00::20]:15010", "--dns-capture"]).unwrap();
        assert_eq!(c.control_plane.as_deref(), Some("[fd00::20]:15010"));
        assert_eq!(c.dns.len(), 2);
        assert_eq!(parse(&["--control-plane", ""]).unwrap().control_plane, None);
        for bad in [
            "mesh-control",
            "mesh-control:0",
            "mesh control:15010",
            "[fd00::zz]:1",
            ":15010",
        ] {
            let e = parse(&["--control-plane", bad]).unwrap_err();
            assert!(
                e.contains("--control-plane") && e.contains("host:port"),
                "{bad}: {e}"
            );
        }
        // A switch takes no value: what follows is the next flag.
        let c = parse(&["--dns-capture", "--worker-threads", "1"]).unwrap();
        assert_eq!(c.worker_threads, 1);
    }

    #[test]
    fn no_root_cert_no_identity() {
        assert_eq!(parse(&[]).unwrap().workload_identity, None);
        assert_eq!(parse(&["--root-cert", ""]).unwrap().workload_identity, None);
        for (f, v) in [
            (flag::CA_ADDRESS, "istiod:15012"),
            (flag::CONTROL_PLANE_SAN, "istiod"),
            (flag::TOKEN_FILE, "/t"),
            (flag::TRUST_DOMAIN, "cluster.local"),
            (flag::CERT_TTL, "1h"),
        ] {
            let e = parse(&[f, v]).unwrap_err();
            assert!(e.contains(f) && e.contains("needs --root-cert"), "{f}: {e}");
        }
    }

    #[test]
    fn root_cert_gives_an_identity_with_istios_defaults() {
        let w = parse(&IDENTITY_BASE).unwrap().workload_identity.unwrap();
        assert_eq!(w.spiffe_id, "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(w.trust_domain, "cluster.local");
        assert_eq!(w.root_cert, PathBuf::from("/r.pem"));
        assert_eq!(w.ca_address, "mesh-control.mesh-system.svc:15012");
        let name = |n: &str| rustls::pki_types::ServerName::try_from(n.to_owned()).unwrap();
        assert_eq!(w.ca_server_name, name("mesh-control.mesh-system.svc"));
        assert_eq!(
            w.control_plane_server_name,
            Some(name("mesh-control.mesh-system.svc"))
        );
        assert_eq!(
            w.token_file,
            PathBuf::from("/var/run/secrets/tokens/istio-token")
        );
        assert_eq!(w.cert_ttl, Duration::from_secs(86_400));
        // From the environment, as the injector sets them.
        let env = |k: &str| match k {
            "POD_NAMESPACE" => Some("bookstore".to_owned()),
            "SERVICE_ACCOUNT" => Some("reviews".to_owned()),
            _ => None,
        };
        let w = run_args(
            &[
                "--root-cert=/r.pem",
                "--control-plane=[fd00::20]:15012",
                "--trust-domain=corp.example",
                "--cert-ttl=90m",
                "--token-file=/t",
            ],
            &env,
        )
        .into_config()
        .unwrap()
        .workload_identity
        .unwrap();
        assert_eq!(w.spiffe_id, "spiffe://corp.example/ns/bookstore/sa/reviews");
        // An IP host and no SAN flag: the certificate must carry that IP.
        assert_eq!(w.ca_server_name, name("fd00::20"));
        assert!(matches!(
            w.ca_server_name,
            rustls::pki_types::ServerName::IpAddress(_)
        ));
        assert_eq!(w.cert_ttl, Duration::from_secs(5400));
        assert_eq!(w.token_file, PathBuf::from("/t"));
    }

    #[test]
    fn secret_ttl_from_the_environment_and_the_flag_wins() {
        let env = |v: &'static str| move |k: &str| (k == "SECRET_TTL").then(|| v.to_owned());
        let ttl = |list: &[&str], v: &'static str| {
            run_args(list, &env(v))
                .into_config()
                .unwrap()
                .workload_identity
                .map(|w| w.cert_ttl)
        };
        assert_eq!(ttl(&IDENTITY_BASE, "60s"), Some(Duration::from_secs(60)));
        let mut with_flag = IDENTITY_BASE.to_vec();
        with_flag.extend(["--cert-ttl", "2h"]);
        assert_eq!(ttl(&with_flag, "60s"), Some(Duration::from_secs(7200)));
        // No identity: a mesh-wide SECRET_TTL is no error there.
        assert_eq!(ttl(&[], "60s"), None);
        let bad = Args::command_from(["mesh-proxy"], &env("soon")).unwrap_err();
        let e = bad.to_string();
        assert!(
            e.contains("SECRET_TTL") && e.contains("--cert-ttl") && e.contains("soon"),
            "{e}"
        );
    }

    #[test]
    fn ca_address_and_san() {
        let mut list = IDENTITY_BASE.to_vec();
        list.extend(["--ca-address", "10.96.0.9:15012"]);
        let w = parse(&list).unwrap().workload_identity.unwrap();
        assert_eq!(w.ca_address, "10.96.0.9:15012");
        let name = |n: &str| rustls::pki_types::ServerName::try_from(n.to_owned()).unwrap();
        assert_eq!(w.ca_server_name, name("10.96.0.9"));
        assert_eq!(
            w.control_plane_server_name,
            Some(name("mesh-control.mesh-system.svc"))
        );
        list.extend(["--control-plane-san", "istiod.istio-system.svc"]);
        let w = parse(&list).unwrap().workload_identity.unwrap();
        assert_eq!(w.ca_server_name, name("istiod.istio-system.svc"));
        assert_eq!(
            w.control_plane_server_name,
            Some(name("istiod.istio-system.svc"))
        );
        // A CA alone, no control plane: identity without a config stream.
        let w = parse(&[
            "--root-cert=/r.pem",
            "--ca-address=ca.example:15012",
            "--pod-namespace=a",
            "--service-account=b",
        ])
        .unwrap()
        .workload_identity
        .unwrap();
        assert_eq!(w.control_plane_server_name, None);
        assert_eq!(w.ca_server_name, name("ca.example"));
    }

    #[test]
    fn identity_errors_name_what_is_missing() {
        let without = |skip: &str| {
            let mut list = Vec::new();
            let mut it = IDENTITY_BASE.iter();
            while let (Some(f), Some(v)) = (it.next(), it.next()) {
                if *f != skip {
                    list.extend([*f, *v]);
                }
            }
            parse(&list).unwrap_err()
        };
        let e = without("--pod-namespace");
        assert!(
            e.contains("POD_NAMESPACE") && e.contains("--pod-namespace"),
            "{e}"
        );
        let e = without("--service-account");
        assert!(
            e.contains("SERVICE_ACCOUNT") && e.contains("--service-account"),
            "{e}"
        );
        let e = without("--control-plane");
        assert!(
            e.contains("--ca-address") && e.contains("--control-plane"),
            "{e}"
        );
        let with = |extra: &[&str]| {
            let mut list = IDENTITY_BASE.to_vec();
            list.extend_from_slice(extra);
            parse(&list).unwrap_err()
        };
        let e = with(&["--cert-ttl", "500ms"]);
        assert!(e.contains("--cert-ttl") && e.contains("at least 1s"), "{e}");
        let e = with(&["--cert-ttl", "1 day"]);
        assert!(e.contains("--cert-ttl"), "{e}");
        let e = with(&["--trust-domain", "Cluster.Local"]);
        assert!(e.contains("--trust-domain"), "{e}");
        let e = with(&["--trust-domain", "a/b"]);
        assert!(e.contains("--trust-domain"), "{e}");
        let e = with(&["--control-plane-san", "not a name"]);
        assert!(e.contains("--control-plane-san"), "{e}");
        let e = with(&["--ca-address", "istiod"]);
        assert!(e.contains("--ca-address") && e.contains("host:port"), "{e}");
        let e = with(&["--token-file", ""]);
        assert!(e.contains("--token-file"), "{e}");
        let e = with(&["--service-account", "a/b"]);
        assert!(e.contains("SPIFFE"), "{e}");
    }

    #[test]
    fn log_level_takes_the_common_filter_grammar() {
        let a = run_args(&["--log-level", "info,mesh_proxy=debug"], &|_| None);
        assert_eq!(a.log_filter.to_string(), "info,mesh_proxy=debug");
        let env = |k: &str| (k == var::LOG).then(|| "warning,mesh_proxy::admin=trace".to_owned());
        let a = run_args(&[], &env);
        assert_eq!(a.log_filter.default, Level::Warn);
        assert_eq!(
            a.log_filter.targets,
            vec![("mesh_proxy::admin".to_owned(), Level::Trace)]
        );
        let e = parse(&["--log-level", "info,mesh-proxy=debug"]).unwrap_err();
        assert!(e.contains("--log-level") && e.contains("mesh-proxy"), "{e}");
    }

    #[test]
    fn instance_ip_and_service_account_reach_the_identity() {
        let env = |k: &str| match k {
            "INSTANCE_IP" => Some("198.18.0.2".to_owned()),
            "SERVICE_ACCOUNT" => Some("web-sa".to_owned()),
            _ => None,
        };
        let c = run_args(&[], &env).into_config().unwrap();
        assert_eq!(c.identity.pod_ip, Some("198.18.0.2".parse().unwrap()));
        assert_eq!(c.identity.service_account.as_deref(), Some("web-sa"));
        // Flags win over the environment.
        let c = run_args(
            &["--instance-ip", "fd00::2", "--service-account=other"],
            &env,
        )
        .into_config()
        .unwrap();
        assert_eq!(c.identity.pod_ip, Some("fd00::2".parse().unwrap()));
        assert_eq!(c.identity.service_account.as_deref(), Some("other"));
        // Empty means unset.
        let empty = |k: &str| matches!(k, "INSTANCE_IP" | "SERVICE_ACCOUNT").then(String::new);
        let c = run_args(&[], &empty).into_config().unwrap();
        assert_eq!(
            (c.identity.pod_ip, c.identity.service_account),
            (None, None)
        );
        // Not an IP: the error names the variable (and the flag behind it).
        let bad = |k: &str| (k == "INSTANCE_IP").then(|| "pod-ip".to_owned());
        let e = Args::command_from(["mesh-proxy"], &bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("INSTANCE_IP") && e.contains("pod-ip"), "{e}");
        let e = parse(&["--instance-ip", "10.0.0.300"]).unwrap_err();
        assert!(e.contains("--instance-ip"), "{e}");
    }

    #[test]
    fn injected_workload_metadata_reaches_the_identity() {
        let env = |k: &str| {
            let v = match k {
                "ISTIO_META_OWNER" => "kubernetes://apis/apps/v1/namespaces/shop/deployments/web",
                "CANONICAL_SERVICE" => "web",
                "CANONICAL_REVISION" => "v2",
                "APP_NAME" => "web-app",
                "APP_VERSION" => "",
                _ => return None,
            };
            Some(v.to_owned())
        };
        let id = run_args(&[], &env).into_config().unwrap().identity;
        assert_eq!(
            id.owner.as_deref(),
            Some("kubernetes://apis/apps/v1/namespaces/shop/deployments/web")
        );
        assert_eq!(id.canonical_service.as_deref(), Some("web"));
        assert_eq!(id.canonical_revision.as_deref(), Some("v2"));
        assert_eq!(id.app.as_deref(), Some("web-app"));
        assert_eq!(id.version, None, "empty means unset");
    }

    #[test]
    fn defaults_follow_istio_ports() {
        let Command::Run(a) = args(&[]).unwrap() else {
            panic!("not a run")
        };
        assert_eq!(a.log_filter, LogFilter::default());
        assert_eq!(a.log_filter.default, Level::Warn);
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
    fn wait_is_a_subcommand_with_its_own_flags() {
        let cmd = |args: &[&str]| {
            let mut all = vec!["mesh-proxy", "wait"];
            all.extend(args);
            Args::command_from(all, &|_| None)
        };
        let Ok(Command::Wait(w)) = cmd(&[]) else {
            panic!()
        };
        assert_eq!(w, crate::wait::WaitArgs::default());
        assert_eq!(w.admin_addr.port(), 15021);
        let Ok(Command::Wait(w)) = cmd(&["--timeout", "5s", "--admin-addr=127.0.0.1:9"]) else {
            panic!()
        };
        assert_eq!(
            (w.timeout, w.admin_addr.port()),
            (Duration::from_secs(5), 9)
        );
        let e = cmd(&["--timeout", "soon"]).unwrap_err().to_string();
        assert!(e.contains("--timeout"), "{e}");
        let e = cmd(&["--worker-threads", "2"]).unwrap_err().to_string();
        assert!(e.contains("--worker-threads"), "{e}");
    }

    #[test]
    fn role_defaults_to_sidecar_and_names_the_flag_when_wrong() {
        assert_eq!(run_args(&[], &|_| None).role, Role::Sidecar);
        for name in flag::ROLES {
            assert!(HELP.contains(name), "{name} missing from --help");
            let a = run_args(&["--role", name], &|_| None);
            assert_eq!(a.role.as_str(), name);
            let inline = format!("--role={name}");
            assert_eq!(run_args(&[&inline], &|_| None).role.as_str(), name);
        }
        assert_eq!(
            run_args(&["--role", "gateway"], &|_| None).role,
            Role::Gateway
        );
        // A gateway captures nothing, listens where its Gateway config says, and needs
        // a control plane to say it.
        let g = parse(&["--role", "gateway", "--control-plane", "cp:15010"]).unwrap();
        assert!(g.outbound.is_empty() && g.inbound.is_empty());
        assert_eq!(
            g.gateway,
            Some(vec![
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            ])
        );
        let s = parse(&["--control-plane", "cp:15010"]).unwrap();
        assert!(s.gateway.is_none() && !s.outbound.is_empty());
        let e = parse(&["--role", "gateway"]).unwrap_err();
        assert!(e.contains("--role gateway needs --control-plane"), "{e}");
        for bad in ["", "Gateway", "ingress", "router"] {
            let e = parse(&["--role", bad]).unwrap_err();
            assert!(
                e.contains("--role") && e.contains("sidecar, gateway") && e.contains(bad),
                "{bad}: {e}"
            );
        }
        let e = parse(&["--role"]).unwrap_err();
        assert!(e.contains("--role needs a value"), "{e}");
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

    /// Durations are `mesh_common::duration`'s grammar (which has its own tests).
    #[test]
    fn durations() {
        let d = |v: &str| parse(&["--drain-timeout", v]).map(|c| c.drain_timeout);
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("3"), Ok(Duration::from_secs(3)));
        assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
        assert!(d("").is_err());
        assert!(d("5d").is_err());
    }
}
