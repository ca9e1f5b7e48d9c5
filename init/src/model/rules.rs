//! The rule vocabulary: address families, matches, targets, rules, the per-family
//! ruleset and the names of the chains we own. Plain data; the builder
//! ([`super::build`]) fills it, `render` prints it and `explain` evaluates it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use mesh_common::{INBOUND_PASSTHROUGH_V4, INBOUND_PASSTHROUGH_V6, chains};

/// Comment carried by every rule we place in a built-in chain, so a re-run or a cleanup
/// finds exactly our rules among those of a CNI or other tools.
pub const RULE_COMMENT: &str = "mesh-init";

/// Names of every chain we own in the nat table, in creation order.
pub const OUR_CHAINS: [&str; 4] = [
    chains::INBOUND,
    chains::REDIRECT,
    chains::IN_REDIRECT,
    chains::OUTPUT,
];

/// Names of every chain we own in the raw table (as istio-iptables names them there),
/// in creation order.
pub const OUR_RAW_CHAINS: [&str; 2] = [chains::OUTPUT_DNS, chains::INBOUND];

/// The netfilter table a [`Ruleset`] goes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// The capture: every redirect.
    Nat,
    /// Conntrack zones for DNS over UDP (`--dns-capture` only).
    Raw,
}

impl Table {
    /// The name `iptables -t` takes.
    pub fn name(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Raw => "raw",
        }
    }

    /// The chains we own in this table, in creation order.
    pub fn our_chains(self) -> &'static [&'static str] {
        match self {
            Table::Nat => &OUR_CHAINS,
            Table::Raw => &OUR_RAW_CHAINS,
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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

    /// Whether `net` is of this family.
    pub fn contains(self, net: &IpNet) -> bool {
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

/// One match of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    Src(IpNet),
    Dst(IpNet),
    NotDst(IpNet),
    InIface(String),
    OutIface(String),
    /// `-p tcp` (a [`Match::DPort`] in the same rule is then `-m tcp --dport`).
    Tcp,
    /// `-p udp` (a [`Match::DPort`] in the same rule is then `-m udp --dport`).
    Udp,
    DPort(u16),
    /// `--sport` (with the rule's protocol, as [`Match::DPort`]; never in the same rule
    /// as a destination port).
    SPort(u16),
    /// `! --dport` (with the rule's protocol, as [`Match::DPort`]).
    NotDPort(u16),
    /// `-m owner --uid-owner`.
    Uid(u32),
    /// `-m owner ! --uid-owner`.
    NotUid(u32),
    /// `-m owner --gid-owner`.
    Gid(u32),
    /// `-m owner ! --gid-owner`.
    NotGid(u32),
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Return,
    Jump(&'static str),
    Redirect(u16),
    /// `-j CT --zone N` (raw table): the packet's connection is tracked in zone N. Not
    /// terminating: the walk goes on, but the first zone given to a packet is the one
    /// it keeps.
    CtZone(u16),
}

/// A rule: all matches must hold; `why` is what `explain` tells an operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub target: Target,
    pub why: &'static str,
}

impl Rule {
    pub fn new(matches: Vec<Match>, target: Target, why: &'static str) -> Rule {
        Rule {
            matches,
            target,
            why,
        }
    }
}

/// Everything we install in one table for one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub family: Family,
    pub table: Table,
    /// Our rules in PREROUTING, top to bottom.
    pub prerouting: Vec<Rule>,
    /// How many of `prerouting` are inserted at the top (`-k`); the rest are appended.
    pub prerouting_inserted: usize,
    /// Our rules in OUTPUT (appended).
    pub output: Vec<Rule>,
    /// Our chains, always all of the table's (so a re-run with other flags replaces them
    /// cleanly), in creation order.
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
