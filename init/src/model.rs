//! Typed capture settings, and the nat rules they stand for.
//!
//! Flags arrive as istio-iptables strings; [`Settings::from_flags`] validates them once
//! (every error names its flag) and [`Settings::ruleset`] turns them into a per-family
//! list of typed rules. Rendering (`render.rs`) prints those rules and `explain.rs`
//! evaluates them, so what an operator is told and what the kernel runs cannot drift.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use mesh_common::{
    INBOUND_PASSTHROUGH_V4, INBOUND_PASSTHROUGH_V6, PROXY_ADMIN_PORT, PROXY_METRICS_PORT, chains,
};

/// Comment carried by every rule we place in a built-in chain, so a re-run or a cleanup
/// finds exactly our rules among those of a CNI or other tools.
pub const RULE_COMMENT: &str = "mesh-init";

/// Address family: one `iptables-restore` transaction each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The loopback destination that always goes direct (`127.0.0.1/32`, `::1/128`).
    pub fn localhost(self) -> IpNet {
        match self {
            Family::V4 => IpNet::V4(Ipv4Net::from(Ipv4Addr::LOCALHOST)),
            Family::V6 => IpNet::V6(Ipv6Net::from(Ipv6Addr::LOCALHOST)),
        }
    }

    /// The proxy's inbound passthrough source (`127.0.0.6/32`, `::6/128`).
    pub fn passthrough(self) -> IpNet {
        match self {
            Family::V4 => IpNet::V4(Ipv4Net::from(INBOUND_PASSTHROUGH_V4)),
            Family::V6 => IpNet::V6(Ipv6Net::from(INBOUND_PASSTHROUGH_V6)),
        }
    }

    fn contains(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// A flag value that cannot be used. Each variant names the flag, so the one-line error
/// an operator sees points at the argument to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    #[error("{flag}: invalid port {value:?} (expected 1-65535)")]
    InvalidPort { flag: &'static str, value: String },
    #[error("{flag}: invalid CIDR {value:?}: {reason}")]
    InvalidCidr {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("{flag}: '*' is not allowed in an exclude list")]
    WildcardInExclude { flag: &'static str },
    #[error("{flag}: '*' cannot be combined with other entries")]
    WildcardMixed { flag: &'static str },
    #[error("{flag}: invalid id {value:?} (numeric uid/gid expected; names are not looked up)")]
    InvalidId { flag: &'static str, value: String },
    #[error("{flag}: at least one numeric id is required")]
    NoIds { flag: &'static str },
    #[error("-m/--mode: TPROXY interception is not supported yet; use REDIRECT (the default)")]
    TproxyUnsupported,
    #[error("-m/--mode: unknown mode {0:?} (expected REDIRECT)")]
    UnknownMode(String),
    #[error("{flag}: invalid interface name {value:?}")]
    InvalidInterface { flag: &'static str, value: String },
}

/// Which inbound ports are captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSet {
    /// Every TCP port except the excluded ones and the proxy's own.
    All,
    /// Only these.
    List(Vec<u16>),
    /// No inbound capture at all (`-b ''`).
    None,
}

/// Which outbound destinations are captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CidrSet {
    /// Every destination (`*`).
    All,
    /// Only these networks; empty means no outbound capture (`-i ''`).
    List(Vec<IpNet>),
}

/// The raw flag strings, as istio-iptables takes them. The CLI fills this; tests build
/// it directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flags {
    pub proxy_port: String,
    pub inbound_capture_port: String,
    pub proxy_uid: String,
    pub proxy_gid: Option<String>,
    pub mode: String,
    pub inbound_ports: String,
    pub exclude_inbound_ports: String,
    pub outbound_ports: String,
    pub exclude_outbound_ports: String,
    pub include_outbound_cidrs: String,
    pub exclude_outbound_cidrs: String,
    pub kube_virt_interfaces: String,
}

impl Default for Flags {
    /// The values `istio-init` is injected with.
    fn default() -> Flags {
        Flags {
            proxy_port: mesh_common::PROXY_OUTBOUND_PORT.to_string(),
            inbound_capture_port: mesh_common::PROXY_INBOUND_PORT.to_string(),
            proxy_uid: mesh_common::PROXY_UID.to_string(),
            proxy_gid: None,
            mode: "REDIRECT".into(),
            inbound_ports: "*".into(),
            exclude_inbound_ports: String::new(),
            outbound_ports: String::new(),
            exclude_outbound_ports: String::new(),
            include_outbound_cidrs: "*".into(),
            exclude_outbound_cidrs: String::new(),
            kube_virt_interfaces: String::new(),
        }
    }
}

/// Validated capture settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub proxy_port: u16,
    pub inbound_capture_port: u16,
    pub proxy_uids: Vec<u32>,
    pub proxy_gids: Vec<u32>,
    pub inbound: PortSet,
    /// Only used with [`PortSet::All`] (`-d` applies only with `-b '*'`).
    pub exclude_inbound_ports: Vec<u16>,
    pub include_outbound_ports: Vec<u16>,
    pub exclude_outbound_ports: Vec<u16>,
    pub include_outbound: CidrSet,
    pub exclude_outbound: Vec<IpNet>,
    pub kube_virt_interfaces: Vec<String>,
}

/// Comma-separated items, trimmed, empty ones dropped (`6000,7000,` is two items).
fn items(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|i| !i.is_empty())
}

fn dedup<T: PartialEq>(v: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

fn port(flag: &'static str, s: &str) -> Result<u16, ModelError> {
    match s.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ModelError::InvalidPort {
            flag,
            value: s.to_owned(),
        }),
    }
}

fn port_list(flag: &'static str, s: &str) -> Result<Vec<u16>, ModelError> {
    let mut out = Vec::new();
    for i in items(s) {
        if i == "*" {
            return Err(ModelError::WildcardInExclude { flag });
        }
        out.push(port(flag, i)?);
    }
    Ok(dedup(out))
}

fn ids(flag: &'static str, s: &str) -> Result<Vec<u32>, ModelError> {
    let mut out = Vec::new();
    for i in items(s) {
        // Only plain decimal digits: no sign, no names (no NSS look-up in an init container).
        if !i.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ModelError::InvalidId {
                flag,
                value: i.to_owned(),
            });
        }
        out.push(i.parse::<u32>().map_err(|_| ModelError::InvalidId {
            flag,
            value: i.to_owned(),
        })?);
    }
    if out.is_empty() {
        return Err(ModelError::NoIds { flag });
    }
    Ok(dedup(out))
}

fn cidr(flag: &'static str, s: &str) -> Result<IpNet, ModelError> {
    let net = if s.contains('/') {
        s.parse::<IpNet>().map_err(|e| ModelError::InvalidCidr {
            flag,
            value: s.to_owned(),
            reason: e.to_string(),
        })?
    } else {
        IpNet::from(s.parse::<IpAddr>().map_err(|e| ModelError::InvalidCidr {
            flag,
            value: s.to_owned(),
            reason: e.to_string(),
        })?)
    };
    // iptables stores the network address; so do we, so re-runs and explain agree.
    Ok(net.trunc())
}

fn cidr_list(flag: &'static str, s: &str) -> Result<Vec<IpNet>, ModelError> {
    let mut out = Vec::new();
    for i in items(s) {
        if i == "*" {
            return Err(ModelError::WildcardInExclude { flag });
        }
        out.push(cidr(flag, i)?);
    }
    Ok(dedup(out))
}

fn has_wildcard(flag: &'static str, s: &str) -> Result<bool, ModelError> {
    let all: Vec<&str> = items(s).collect();
    if all.contains(&"*") {
        if all.len() > 1 {
            return Err(ModelError::WildcardMixed { flag });
        }
        return Ok(true);
    }
    Ok(false)
}

fn interface(flag: &'static str, s: &str) -> Result<String, ModelError> {
    let ok = s.len() <= 15
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'"' && b != b'\'');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(ModelError::InvalidInterface {
            flag,
            value: s.to_owned(),
        })
    }
}

impl Settings {
    /// Validates every flag; the first problem found is returned, naming its flag.
    pub fn from_flags(f: &Flags) -> Result<Settings, ModelError> {
        match f.mode.trim() {
            "REDIRECT" | "" => {}
            m if m.eq_ignore_ascii_case("TPROXY") => return Err(ModelError::TproxyUnsupported),
            m => return Err(ModelError::UnknownMode(m.to_owned())),
        }
        let proxy_port = port("-p/--proxy-port", f.proxy_port.trim())?;
        let inbound_capture_port =
            port("-z/--inbound-capture-port", f.inbound_capture_port.trim())?;
        let proxy_uids = ids("-u/--proxy-uid", &f.proxy_uid)?;
        let proxy_gids = match &f.proxy_gid {
            Some(g) if items(g).next().is_some() => ids("-g/--proxy-gid", g)?,
            _ => proxy_uids.clone(),
        };
        let inbound = if has_wildcard("-b/--inbound-ports", &f.inbound_ports)? {
            PortSet::All
        } else {
            let mut list = Vec::new();
            for i in items(&f.inbound_ports) {
                list.push(port("-b/--inbound-ports", i)?);
            }
            if list.is_empty() {
                PortSet::None
            } else {
                PortSet::List(dedup(list))
            }
        };
        let exclude_inbound_ports =
            port_list("-d/--exclude-inbound-ports", &f.exclude_inbound_ports)?;
        let include_outbound_ports = {
            let mut list = Vec::new();
            for i in items(&f.outbound_ports) {
                list.push(port("-q/--outbound-ports", i)?);
            }
            dedup(list)
        };
        let exclude_outbound_ports =
            port_list("-o/--exclude-outbound-ports", &f.exclude_outbound_ports)?;
        let include_outbound =
            if has_wildcard("-i/--include-outbound-cidrs", &f.include_outbound_cidrs)? {
                CidrSet::All
            } else {
                CidrSet::List(cidr_list(
                    "-i/--include-outbound-cidrs",
                    &f.include_outbound_cidrs,
                )?)
            };
        let exclude_outbound = cidr_list("-x/--exclude-outbound-cidrs", &f.exclude_outbound_cidrs)?;
        let mut kube_virt_interfaces = Vec::new();
        for i in items(&f.kube_virt_interfaces) {
            kube_virt_interfaces.push(interface("-k/--kube-virt-interfaces", i)?);
        }
        Ok(Settings {
            proxy_port,
            inbound_capture_port,
            proxy_uids,
            proxy_gids,
            inbound,
            exclude_inbound_ports,
            include_outbound_ports,
            exclude_outbound_ports,
            include_outbound,
            exclude_outbound,
            kube_virt_interfaces: dedup(kube_virt_interfaces),
        })
    }

    /// Inbound ports that `-b '*'` never captures: the excluded ones, then the proxy's
    /// admin and metrics ports (so probes and scrapes reach the proxy itself).
    pub fn inbound_returns(&self) -> Vec<u16> {
        let mut v = self.exclude_inbound_ports.clone();
        v.extend([PROXY_METRICS_PORT, PROXY_ADMIN_PORT]);
        dedup(v)
    }

    /// Outbound include networks of one family; `None` means all.
    fn include_for(&self, family: Family) -> Option<Vec<IpNet>> {
        match &self.include_outbound {
            CidrSet::All => None,
            CidrSet::List(l) => Some(l.iter().filter(|n| family.contains(n)).copied().collect()),
        }
    }

    /// The rules for one family, in the order the kernel walks them.
    pub fn ruleset(&self, family: Family) -> Ruleset {
        let lo = || Match::OutIface("lo".into());
        let tcp = Match::Tcp;
        let localhost = family.localhost();
        let include = self.include_for(family);
        let excludes: Vec<IpNet> = self
            .exclude_outbound
            .iter()
            .filter(|n| family.contains(n))
            .copied()
            .collect();

        // ISTIO_OUTPUT
        let mut out = vec![Rule::new(
            vec![Match::Src(family.passthrough()), lo()],
            Target::Return,
            "inbound passthrough: the proxy reaches the app from the passthrough source",
        )];
        for uid in &self.proxy_uids {
            out.push(Rule::new(
                vec![Match::NotDst(localhost), lo(), tcp.clone(), Match::Uid(*uid)],
                Target::Jump(chains::IN_REDIRECT),
                "proxy uid calling a local non-loopback address (the pod's own IP): inbound capture",
            ));
        }
        for gid in &self.proxy_gids {
            out.push(Rule::new(
                vec![Match::NotDst(localhost), lo(), tcp.clone(), Match::Gid(*gid)],
                Target::Jump(chains::IN_REDIRECT),
                "proxy gid calling a local non-loopback address (the pod's own IP): inbound capture",
            ));
        }
        for uid in &self.proxy_uids {
            out.push(Rule::new(
                vec![Match::Uid(*uid)],
                Target::Return,
                "proxy uid is exempt (any protocol), so its own traffic never loops",
            ));
        }
        for gid in &self.proxy_gids {
            out.push(Rule::new(
                vec![Match::Gid(*gid)],
                Target::Return,
                "proxy gid is exempt (any protocol), so its own traffic never loops",
            ));
        }
        out.push(Rule::new(
            vec![Match::Dst(localhost)],
            Target::Return,
            "loopback destination goes direct",
        ));
        let includes_loopback = include
            .as_ref()
            .is_some_and(|l| l.iter().any(|n| n.contains(&localhost.addr())));
        if !includes_loopback {
            out.push(Rule::new(
                vec![lo()],
                Target::Return,
                "app traffic on lo (to the pod's own addresses) goes direct",
            ));
        }
        for p in &self.exclude_outbound_ports {
            out.push(Rule::new(
                vec![tcp.clone(), Match::DPort(*p)],
                Target::Return,
                "excluded outbound port (-o)",
            ));
        }
        for n in &excludes {
            out.push(Rule::new(
                vec![Match::Dst(*n)],
                Target::Return,
                "excluded outbound CIDR (-x)",
            ));
        }
        for p in &self.include_outbound_ports {
            out.push(Rule::new(
                vec![tcp.clone(), Match::DPort(*p)],
                Target::Jump(chains::REDIRECT),
                "included outbound port (-q): outbound capture",
            ));
        }
        match &include {
            None => out.push(Rule::new(
                vec![],
                Target::Jump(chains::REDIRECT),
                "all other outbound traffic is captured (-i '*')",
            )),
            Some(list) => {
                for n in list {
                    out.push(Rule::new(
                        vec![Match::Dst(*n)],
                        Target::Jump(chains::REDIRECT),
                        "included outbound CIDR (-i): outbound capture",
                    ));
                }
            }
        }

        // ISTIO_INBOUND
        let mut inbound = Vec::new();
        match &self.inbound {
            PortSet::All => {
                for p in self.inbound_returns() {
                    inbound.push(Rule::new(
                        vec![tcp.clone(), Match::DPort(p)],
                        Target::Return,
                        "excluded inbound port (-d, or the proxy's own admin/metrics port)",
                    ));
                }
                inbound.push(Rule::new(
                    vec![tcp.clone()],
                    Target::Jump(chains::IN_REDIRECT),
                    "all other inbound TCP is captured (-b '*')",
                ));
            }
            PortSet::List(ports) => {
                for p in ports {
                    inbound.push(Rule::new(
                        vec![tcp.clone(), Match::DPort(*p)],
                        Target::Jump(chains::IN_REDIRECT),
                        "included inbound port (-b): inbound capture",
                    ));
                }
            }
            PortSet::None => {}
        }

        // Our rules in PREROUTING: -k interfaces first (inserted at the top), then the jump.
        let mut prerouting = Vec::new();
        for iface in &self.kube_virt_interfaces {
            let i = || Match::InIface(iface.clone());
            for n in &excludes {
                prerouting.push(Rule::new(
                    vec![i(), Match::Dst(*n)],
                    Target::Return,
                    "kube-virt interface (-k) to an excluded CIDR goes direct",
                ));
            }
            match &include {
                None => prerouting.push(Rule::new(
                    vec![i()],
                    Target::Jump(chains::REDIRECT),
                    "kube-virt interface (-k) traffic is outbound for the VM: outbound capture",
                )),
                Some(list) => {
                    for n in list {
                        prerouting.push(Rule::new(
                            vec![i(), Match::Dst(*n)],
                            Target::Jump(chains::REDIRECT),
                            "kube-virt interface (-k) to an included CIDR: outbound capture",
                        ));
                    }
                }
            }
            prerouting.push(Rule::new(
                vec![i()],
                Target::Return,
                "kube-virt interface (-k) is never inbound-captured",
            ));
        }
        let kube_virt_rules = prerouting.len();
        if self.inbound != PortSet::None {
            prerouting.push(Rule::new(
                vec![tcp.clone()],
                Target::Jump(chains::INBOUND),
                "inbound TCP enters ISTIO_INBOUND",
            ));
        }

        Ruleset {
            family,
            prerouting,
            prerouting_inserted: kube_virt_rules,
            output: vec![Rule::new(
                vec![],
                Target::Jump(chains::OUTPUT),
                "all locally generated traffic enters ISTIO_OUTPUT",
            )],
            chains: vec![
                (chains::INBOUND, inbound),
                (
                    chains::REDIRECT,
                    vec![Rule::new(
                        vec![tcp.clone()],
                        Target::Redirect(self.proxy_port),
                        "redirect to the proxy's outbound port",
                    )],
                ),
                (
                    chains::IN_REDIRECT,
                    vec![Rule::new(
                        vec![tcp],
                        Target::Redirect(self.inbound_capture_port),
                        "redirect to the proxy's inbound port",
                    )],
                ),
                (chains::OUTPUT, out),
            ],
        }
    }
}

/// One match of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Src(IpNet),
    Dst(IpNet),
    NotDst(IpNet),
    InIface(String),
    OutIface(String),
    Tcp,
    DPort(u16),
    Uid(u32),
    Gid(u32),
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Return,
    Jump(&'static str),
    Redirect(u16),
}

/// A rule: all matches must hold; `why` is what `explain` tells an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub target: Target,
    pub why: &'static str,
}

impl Rule {
    fn new(matches: Vec<Match>, target: Target, why: &'static str) -> Rule {
        Rule {
            matches,
            target,
            why,
        }
    }
}

/// Everything we install for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub family: Family,
    /// Our rules in PREROUTING, top to bottom.
    pub prerouting: Vec<Rule>,
    /// How many of `prerouting` are inserted at the top (`-k`); the rest are appended.
    pub prerouting_inserted: usize,
    /// Our rules in OUTPUT (appended).
    pub output: Vec<Rule>,
    /// Our chains, always all four (so a re-run with other flags replaces them cleanly),
    /// in creation order.
    pub chains: Vec<(&'static str, Vec<Rule>)>,
}

impl Ruleset {
    pub fn chain(&self, name: &str) -> &[Rule] {
        self.chains
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| r.as_slice())
            .unwrap_or(&[])
    }
}

/// Names of every chain we own.
pub const OUR_CHAINS: [&str; 4] = [
    chains::INBOUND,
    chains::REDIRECT,
    chains::IN_REDIRECT,
    chains::OUTPUT,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(f: impl FnOnce(&mut Flags)) -> Result<Settings, ModelError> {
        let mut fl = Flags::default();
        f(&mut fl);
        Settings::from_flags(&fl)
    }

    #[test]
    fn defaults_capture_everything() {
        let s = flags(|_| {}).unwrap();
        assert_eq!(s.inbound, PortSet::All);
        assert_eq!(s.include_outbound, CidrSet::All);
        assert_eq!(s.proxy_uids, vec![1337]);
        assert_eq!(s.proxy_gids, vec![1337], "gid defaults to the uid");
    }

    #[test]
    fn lists_ignore_empty_items_and_gid_follows_uid_list() {
        let s = flags(|f| {
            f.proxy_uid = "1337,1338,".into();
            f.exclude_outbound_ports = "6000,7000,".into();
            f.inbound_ports = ",8080,,9090".into();
        })
        .unwrap();
        assert_eq!(s.proxy_gids, vec![1337, 1338]);
        assert_eq!(s.exclude_outbound_ports, vec![6000, 7000]);
        assert_eq!(s.inbound, PortSet::List(vec![8080, 9090]));
    }

    #[test]
    fn errors_name_their_flag() {
        type Edit = Box<dyn Fn(&mut Flags)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|f| f.exclude_outbound_cidrs = "*".into()), "-x/"),
            (
                Box::new(|f| f.exclude_outbound_cidrs = "10.0.0.0/33".into()),
                "-x/",
            ),
            (
                Box::new(|f| f.include_outbound_cidrs = "10.0.0.0/8,*".into()),
                "-i/",
            ),
            (
                Box::new(|f| f.include_outbound_cidrs = "banana".into()),
                "-i/",
            ),
            (
                Box::new(|f| f.exclude_inbound_ports = "70000".into()),
                "-d/",
            ),
            (Box::new(|f| f.inbound_ports = "0".into()), "-b/"),
            (Box::new(|f| f.outbound_ports = "http".into()), "-q/"),
            (Box::new(|f| f.exclude_outbound_ports = "*".into()), "-o/"),
            (Box::new(|f| f.proxy_uid = "istio-proxy".into()), "-u/"),
            (Box::new(|f| f.proxy_uid = "".into()), "-u/"),
            (Box::new(|f| f.proxy_gid = Some("-1".into())), "-g/"),
            (Box::new(|f| f.mode = "TPROXY".into()), "TPROXY"),
            (Box::new(|f| f.mode = "MAGIC".into()), "-m/"),
            (Box::new(|f| f.proxy_port = "".into()), "-p/"),
            (Box::new(|f| f.kube_virt_interfaces = "a/b".into()), "-k/"),
        ];
        for (set, needle) in cases {
            let err = flags(|f| set(f)).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} should mention {needle}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
    }

    #[test]
    fn cidrs_split_per_family() {
        let s = flags(|f| f.include_outbound_cidrs = "fd00::/8".into()).unwrap();
        let v4 = s.ruleset(Family::V4);
        assert!(
            !v4.chain(chains::OUTPUT)
                .iter()
                .any(|r| r.target == Target::Jump(chains::REDIRECT)),
            "an IPv6-only -i captures no IPv4"
        );
        let v6 = s.ruleset(Family::V6);
        assert!(
            v6.chain(chains::OUTPUT)
                .iter()
                .any(|r| r.target == Target::Jump(chains::REDIRECT))
        );
    }

    #[test]
    fn host_bits_are_normalised() {
        let s = flags(|f| f.exclude_outbound_cidrs = "10.1.2.3/8,192.0.2.7".into()).unwrap();
        assert_eq!(
            s.exclude_outbound,
            vec![
                "10.0.0.0/8".parse().unwrap(),
                "192.0.2.7/32".parse().unwrap()
            ]
        );
    }

    #[test]
    fn no_inbound_means_no_prerouting_jump() {
        let s = flags(|f| f.inbound_ports = "".into()).unwrap();
        let r = s.ruleset(Family::V4);
        assert!(r.prerouting.is_empty());
        assert!(r.chain(chains::INBOUND).is_empty());
    }
}
