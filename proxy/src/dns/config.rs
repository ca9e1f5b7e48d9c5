//! [`DnsConfig`]: where the DNS proxy listens, where it forwards, and the pod's search
//! list, read from the pod's `resolv.conf` as glibc reads it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use mesh_common::{DNS_CAPTURE_PORT, DNS_PORT};
use tracing::warn;

/// glibc's `MAXNS`: nameservers after the third are ignored.
const MAX_NAMESERVERS: usize = 3;
/// glibc's `RES_MAXNDOTS`, `RES_MAXRETRANS` (seconds) and `RES_MAXRETRY`.
const MAX_NDOTS: u8 = 15;
const MAX_TIMEOUT_SECS: u64 = 30;
const MAX_ATTEMPTS: u8 = 5;

/// How the DNS proxy runs. [`DnsConfig::from_resolv_conf`] fills it from the pod's
/// `resolv.conf`; the other fields have defaults a caller may change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Where queries arrive, UDP and TCP on each (default [`DnsConfig::default_listen`]).
    /// Port 0 picks a free port, the same for UDP and TCP.
    pub listen: Vec<SocketAddr>,
    /// Where names that are not the mesh's go, tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// The pod's search list: lower case, no trailing dot, in order.
    pub search: Vec<String>,
    /// `options ndots:N` (default 1): a suffix of the search list is stripped from a
    /// name only when what remains has fewer dots than this, since only then does a
    /// resolver append the search list before trying the name as it is.
    pub ndots: u8,
    /// How long one upstream is waited for, per try (`options timeout:N`, default 5 s).
    pub timeout: Duration,
    /// How many times the upstream list is gone through (`options attempts:N`,
    /// default 2) before the query gets SERVFAIL.
    pub attempts: u8,
    /// The TTL of the proxy's own answers.
    pub ttl: u32,
    /// Queries handled at once, UDP and TCP together; a UDP query beyond it is dropped
    /// (the client retries), a TCP connection waits.
    pub max_in_flight: usize,
    /// Open TCP connections; more are closed as soon as accepted.
    pub max_tcp_connections: usize,
    /// A TCP connection with no query for this long is closed (RFC 7766 §6.2.3).
    pub tcp_idle_timeout: Duration,
    /// How long [`super::ServiceNames::lookup`] may take; past it the query gets
    /// SERVFAIL (the client retries) rather than an upstream's NXDOMAIN for what may be
    /// a mesh name.
    pub lookup_timeout: Duration,
}

impl DnsConfig {
    /// A configuration with the given listeners and upstreams, no search list, and the
    /// defaults of glibc and of the proxy for the rest.
    pub fn new(listen: Vec<SocketAddr>, upstreams: Vec<SocketAddr>) -> DnsConfig {
        DnsConfig {
            listen,
            upstreams,
            search: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
            ttl: 30,
            max_in_flight: 1024,
            max_tcp_connections: 256,
            tcp_idle_timeout: Duration::from_secs(10),
            lookup_timeout: Duration::from_secs(2),
        }
    }

    /// `127.0.0.1` and `::1` on [`DNS_CAPTURE_PORT`], where `mesh-init --dns-capture`
    /// sends the app's DNS. Loopback, not the wildcard: a reply must leave from the
    /// address the nat REDIRECT wrote into the query (`127.0.0.1` / `::1`), or
    /// conntrack cannot undo the redirect and the app drops the reply.
    pub fn default_listen() -> Vec<SocketAddr> {
        vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DNS_CAPTURE_PORT),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), DNS_CAPTURE_PORT),
        ]
    }

    /// Reads `resolv.conf` text as glibc does: `nameserver` (the first three, port 53;
    /// `127.0.0.1` when there is none), `search` and `domain` (the last one wins),
    /// `options ndots:N timeout:N attempts:N` (glibc's caps); comments (`#`, `;`) and
    /// everything else are ignored. A nameserver that is one of `listen` (or loopback
    /// when `listen` has the wildcard on port 53) is left out: forwarding there would
    /// loop. Loopback nameservers are kept otherwise (`127.0.0.53`, a node-local
    /// cache): the proxy's own queries are not captured.
    pub fn from_resolv_conf(text: &str, listen: Vec<SocketAddr>) -> DnsConfig {
        let mut config = DnsConfig::new(listen, Vec::new());
        let mut nameservers = Vec::new();
        for line in text.lines() {
            let mut words = line
                .split_whitespace()
                .take_while(|w| !w.starts_with('#') && !w.starts_with(';'));
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword {
                "nameserver" => {
                    if let Some(addr) = words.next() {
                        match parse_nameserver(addr) {
                            Some(a) => nameservers.push(a),
                            None => warn!(nameserver = addr, "resolv.conf: unusable nameserver"),
                        }
                    }
                }
                "search" | "domain" => {
                    config.search = words
                        .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                        .filter(|d| !d.is_empty())
                        .collect();
                }
                "options" => {
                    for option in words {
                        apply_option(&mut config, option);
                    }
                }
                _ => {}
            }
        }
        if nameservers.is_empty() {
            nameservers.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DNS_PORT));
        }
        nameservers.truncate(MAX_NAMESERVERS);
        config.upstreams = nameservers
            .into_iter()
            .filter(|ns| {
                let loops = would_loop(*ns, &config.listen);
                if loops {
                    warn!(nameserver = %ns, "resolv.conf: nameserver is the DNS proxy itself; skipped");
                }
                !loops
            })
            .collect();
        config
    }
}

/// A nameserver address: IPv4, or IPv6 with an optional numeric zone (`fe80::1%2`).
fn parse_nameserver(text: &str) -> Option<SocketAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, DNS_PORT));
    }
    let (ip, zone) = text.split_once('%')?;
    let ip = ip.parse::<Ipv6Addr>().ok()?;
    let scope = zone.parse::<u32>().ok()?;
    Some(SocketAddr::V6(SocketAddrV6::new(ip, DNS_PORT, 0, scope)))
}

fn apply_option(config: &mut DnsConfig, option: &str) {
    let Some((name, value)) = option.split_once(':') else {
        return;
    };
    let Ok(n) = value.parse::<u64>() else {
        return;
    };
    match name {
        "ndots" => config.ndots = n.min(u64::from(MAX_NDOTS)) as u8,
        "timeout" => config.timeout = Duration::from_secs(n.clamp(1, MAX_TIMEOUT_SECS)),
        "attempts" => config.attempts = n.clamp(1, u64::from(MAX_ATTEMPTS)) as u8,
        _ => {}
    }
}

fn would_loop(upstream: SocketAddr, listen: &[SocketAddr]) -> bool {
    listen.iter().any(|l| {
        *l == upstream
            || (l.port() == upstream.port()
                && l.is_ipv4() == upstream.is_ipv4()
                && (l.ip() == upstream.ip()
                    || (l.ip().is_unspecified()
                        && (upstream.ip().is_loopback() || upstream.ip().is_unspecified()))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_a_kubernetes_resolv_conf() {
        let text = "\
# generated by kubelet
search default.svc.cluster.local svc.cluster.local cluster.local Example.COM.
nameserver 10.96.0.10
nameserver fd00::a ; a comment
options ndots:5 timeout:3 attempts:4 rotate edns0
";
        let c = DnsConfig::from_resolv_conf(text, DnsConfig::default_listen());
        assert_eq!(c.upstreams, vec![sa("10.96.0.10:53"), sa("[fd00::a]:53")]);
        assert_eq!(
            c.search,
            [
                "default.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "example.com"
            ]
        );
        assert_eq!(c.ndots, 5);
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.attempts, 4);
        assert_eq!(c.listen, DnsConfig::default_listen());
        assert_eq!(c.ttl, 30);
    }

    #[test]
    fn glibc_rules() {
        let text = "\
domain first.example
nameserver 1.1.1.1
nameserver not-an-ip
nameserver 1.0.0.1
;nameserver 9.9.9.9
nameserver fe80::1%2
nameserver fe80::1%eth0
nameserver 8.8.8.8
options ndots:99 timeout:0 attempts:100
options timeout:x ndots
search last.example
";
        let c = DnsConfig::from_resolv_conf(text, DnsConfig::default_listen());
        assert_eq!(
            c.upstreams,
            vec![
                sa("1.1.1.1:53"),
                sa("1.0.0.1:53"),
                SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 2)),
            ]
        );
        assert_eq!(c.search, ["last.example"]);
        assert_eq!((c.ndots, c.attempts), (15, 5));
        assert_eq!(c.timeout, Duration::from_secs(1));
        let c = DnsConfig::from_resolv_conf("search a\ndomain b.\n", vec![]);
        assert_eq!(c.search, ["b"]);
    }

    #[test]
    fn defaults_and_loops() {
        let c = DnsConfig::from_resolv_conf("", DnsConfig::default_listen());
        assert_eq!(c.upstreams, vec![sa("127.0.0.1:53")]);
        assert_eq!(
            (c.ndots, c.attempts, c.timeout),
            (1, 2, Duration::from_secs(5))
        );
        // A local stub resolver is a fine upstream: the proxy's traffic is not captured.
        let c = DnsConfig::from_resolv_conf("nameserver 127.0.0.53\n", DnsConfig::default_listen());
        assert_eq!(c.upstreams, vec![sa("127.0.0.53:53")]);
        // Listening on port 53 itself: our own addresses are not upstreams.
        let listen = vec![sa("127.0.0.1:53"), sa("[::]:53")];
        let text =
            "nameserver 127.0.0.1\nnameserver ::1\nnameserver 127.0.0.53\nnameserver 10.0.0.2\n";
        let c = DnsConfig::from_resolv_conf(text, listen);
        assert_eq!(c.upstreams, vec![sa("127.0.0.53:53")]);
        let c = DnsConfig::from_resolv_conf("nameserver 127.0.0.53\n", vec![sa("0.0.0.0:53")]);
        assert!(c.upstreams.is_empty());
    }
}
