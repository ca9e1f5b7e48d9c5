//! `mesh-init explain`: walk the very [`Ruleset`] that `render` prints, for one TCP
//! connection (or UDP packet: DNS), and say which rule decides and what happens to it.
//!
//! Only our rules are walked: rules other tools put in PREROUTING/OUTPUT are unknown
//! here, so "pass" means "our rules leave it alone".

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use mesh_common::chains;

use crate::model::{Family, Match, Rule, Ruleset, Target};
use crate::render::rule_spec;

/// A connection as the nat table sees its first packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub proto: Proto,
    pub dst: SocketAddr,
    pub src: Option<IpAddr>,
    pub direction: Direction,
}

/// The packet's transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Direction {
    /// Opened by a local process (OUTPUT): its uid/gid and the interface it leaves by.
    Outbound {
        uid: u32,
        gid: u32,
        out_iface: String,
    },
    /// Arriving from a peer (PREROUTING), on this interface.
    Inbound { in_iface: String },
}

/// What happens to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Redirected to this local port (the proxy's outbound or inbound listener).
    Redirect(u16),
    /// Not redirected by our rules: it goes where it was addressed.
    Pass,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Redirect(p) => write!(f, "redirect {p}"),
            Outcome::Pass => f.write_str("pass"),
        }
    }
}

/// The verdict plus the rule that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    pub outcome: Outcome,
    /// `-A CHAIN <spec>` of the deciding rule, or None when no rule of ours matched.
    pub rule: Option<String>,
    pub why: String,
    /// Chains walked, in order.
    pub path: Vec<String>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "outcome: {}", self.outcome)?;
        writeln!(
            f,
            "rule: {}",
            self.rule.as_deref().unwrap_or("(none of ours matched)")
        )?;
        writeln!(f, "why: {}", self.why)?;
        writeln!(f, "path: {}", self.path.join(" -> "))
    }
}

fn matches(m: &Match, p: &Packet) -> bool {
    let dst = p.dst.ip();
    match m {
        Match::Src(n) => p.src.is_some_and(|s| n.contains(&s)),
        Match::Dst(n) => n.contains(&dst),
        Match::NotDst(n) => !n.contains(&dst),
        Match::InIface(i) => {
            matches!(&p.direction, Direction::Inbound { in_iface } if in_iface == i)
        }
        Match::OutIface(i) => {
            matches!(&p.direction, Direction::Outbound { out_iface, .. } if out_iface == i)
        }
        Match::Tcp => p.proto == Proto::Tcp,
        Match::Udp => p.proto == Proto::Udp,
        Match::DPort(port) => p.dst.port() == *port,
        Match::NotDPort(port) => p.dst.port() != *port,
        // An explained connection comes from an ephemeral port; only the raw table's
        // zone rules (never walked here) match a source port.
        Match::SPort(_) => false,
        // The owner match needs a local socket: it never matches in PREROUTING.
        Match::Uid(u) => matches!(p.direction, Direction::Outbound { uid, .. } if uid == *u),
        Match::NotUid(u) => matches!(p.direction, Direction::Outbound { uid, .. } if uid != *u),
        Match::Gid(g) => matches!(p.direction, Direction::Outbound { gid, .. } if gid == *g),
        Match::NotGid(g) => matches!(p.direction, Direction::Outbound { gid, .. } if gid != *g),
    }
}

struct Hit<'a> {
    chain: &'a str,
    rule: &'a Rule,
    builtin: bool,
}

enum Walk<'a> {
    /// A terminal verdict (REDIRECT), with the rules that led to it.
    Done(Outcome, Vec<Hit<'a>>),
    /// Returned (or fell off the end) to the caller, after this RETURN rule if any.
    Returned(Option<Hit<'a>>),
}

fn walk<'a>(
    rs: &'a Ruleset,
    chain: &'a str,
    rules: &'a [Rule],
    builtin: bool,
    p: &Packet,
    path: &mut Vec<String>,
) -> Walk<'a> {
    path.push(chain.to_owned());
    let mut last_return = None;
    for rule in rules {
        if !rule.matches.iter().all(|m| matches(m, p)) {
            continue;
        }
        let hit = Hit {
            chain,
            rule,
            builtin,
        };
        match rule.target {
            Target::Redirect(port) => return Walk::Done(Outcome::Redirect(port), vec![hit]),
            Target::Return => return Walk::Returned(Some(hit)),
            // Not terminating (and only in the raw table, which is not walked here).
            Target::CtZone(_) => continue,
            Target::Jump(sub) => match walk(rs, sub, rs.chain(sub), false, p, path) {
                Walk::Done(o, mut hits) => {
                    hits.insert(0, hit);
                    return Walk::Done(o, hits);
                }
                Walk::Returned(r) => {
                    if r.is_some() {
                        last_return = r;
                    }
                    path.push(chain.to_owned());
                }
            },
        }
    }
    if builtin {
        // Falling off (or returning from) a built-in chain is the policy: ACCEPT.
        return Walk::Returned(last_return);
    }
    Walk::Returned(last_return)
}

fn line(hit: &Hit<'_>) -> String {
    format!("-A {}{}", hit.chain, rule_spec(hit.rule, hit.builtin))
}

/// Evaluates `p` against `rs` (which must be of the packet's family).
pub fn explain(rs: &Ruleset, p: &Packet) -> Explanation {
    debug_assert_eq!(rs.family, Family::of(p.dst.ip()));
    let (entry, rules) = match p.direction {
        Direction::Outbound { .. } => ("OUTPUT", rs.output.as_slice()),
        Direction::Inbound { .. } => ("PREROUTING", rs.prerouting.as_slice()),
    };
    let mut path = Vec::new();
    match walk(rs, entry, rules, true, p, &mut path) {
        Walk::Done(outcome, hits) => {
            // A redirect chain's own rule is mechanical; the decision is the rule that
            // sent the connection into it. A redirect elsewhere (DNS) decides itself.
            let last = hits.len() - 1;
            let mechanical = matches!(hits[last].chain, chains::REDIRECT | chains::IN_REDIRECT);
            let decider = if mechanical && last >= 1 {
                &hits[last - 1]
            } else {
                &hits[last]
            };
            Explanation {
                outcome,
                rule: Some(line(decider)),
                why: decider.rule.why.to_owned(),
                path,
            }
        }
        Walk::Returned(Some(hit)) => Explanation {
            outcome: Outcome::Pass,
            rule: Some(line(&hit)),
            why: hit.rule.why.to_owned(),
            path,
        },
        Walk::Returned(None) => Explanation {
            outcome: Outcome::Pass,
            rule: None,
            why: "no rule of ours matched: the connection is not redirected".into(),
            path,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Flags, Settings};

    fn rs(f: impl FnOnce(&mut Flags), fam: Family) -> Ruleset {
        let mut fl = Flags {
            exclude_inbound_ports: "15090,15021".into(),
            ..Flags::default()
        };
        f(&mut fl);
        Settings::from_flags(&fl).unwrap().ruleset(fam)
    }

    fn out(uid: u32, dst: &str, iface: &str) -> Packet {
        Packet {
            proto: Proto::Tcp,
            dst: dst.parse().unwrap(),
            src: None,
            direction: Direction::Outbound {
                uid,
                gid: uid,
                out_iface: iface.into(),
            },
        }
    }

    #[test]
    fn app_is_captured_proxy_is_not() {
        let r = rs(|_| {}, Family::V4);
        let e = explain(&r, &out(1000, "198.18.0.2:80", "eth0"));
        assert_eq!(e.outcome, Outcome::Redirect(15001));
        assert_eq!(e.rule.as_deref(), Some("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"));
        let e = explain(&r, &out(1337, "198.18.0.2:80", "eth0"));
        assert_eq!(e.outcome, Outcome::Pass);
        assert!(e.rule.unwrap().contains("--uid-owner 1337 -j RETURN"));
        // As in Istio, the app's traffic on lo is returned by the first uid's lo rule,
        // before the localhost rule is reached.
        let e = explain(&r, &out(1000, "127.0.0.1:80", "lo"));
        assert_eq!(e.outcome, Outcome::Pass);
        assert_eq!(
            e.rule.as_deref(),
            Some("-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN")
        );
        // With a loopback -i entry there is no lo rule: localhost decides.
        let r = rs(
            |f| f.include_outbound_cidrs = "127.1.2.3/32".into(),
            Family::V4,
        );
        let e = explain(&r, &out(1000, "127.0.0.1:80", "lo"));
        assert_eq!(e.outcome, Outcome::Pass);
        assert_eq!(
            e.rule.as_deref(),
            Some("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN")
        );
        let e = explain(&r, &out(1000, "127.1.2.3:80", "lo"));
        assert_eq!(e.outcome, Outcome::Redirect(15001));
    }

    #[test]
    fn proxy_gid_alone_does_not_send_the_pod_ip_to_inbound() {
        let pkt = |dst: &str, uid: u32, gid: u32, iface: &str| Packet {
            proto: Proto::Tcp,
            dst: dst.parse().unwrap(),
            src: None,
            direction: Direction::Outbound {
                uid,
                gid,
                out_iface: iface.into(),
            },
        };
        for (fam, pod_ip, remote) in [
            (Family::V4, "198.18.0.1:8080", "198.18.0.2:80"),
            (Family::V6, "[fd00:198:18::1]:8080", "[fd00:198:18::2]:80"),
        ] {
            let r = rs(|_| {}, fam);
            // Another uid with the proxy's gid, to the pod's own IP: direct, as in Istio.
            let e = explain(&r, &pkt(pod_ip, 1000, 1337, "lo"));
            assert_eq!(e.outcome, Outcome::Pass, "{fam}: {e}");
            assert_eq!(
                e.rule.as_deref(),
                Some("-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN")
            );
            // The proxy's uid with another gid: inbound capture.
            let e = explain(&r, &pkt(pod_ip, 1337, 1000, "lo"));
            assert_eq!(e.outcome, Outcome::Redirect(15006), "{fam}: {e}");
            // Leaving the pod, the gid alone still exempts.
            let e = explain(&r, &pkt(remote, 1000, 1337, "eth0"));
            assert_eq!(e.outcome, Outcome::Pass, "{fam}: {e}");
            assert_eq!(
                e.rule.as_deref(),
                Some("-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN")
            );
            let e = explain(&r, &pkt(remote, 1000, 1000, "eth0"));
            assert_eq!(e.outcome, Outcome::Redirect(15001), "{fam}: {e}");
        }
    }

    #[test]
    fn proxy_to_own_pod_ip_goes_inbound_and_passthrough_returns() {
        let r = rs(|_| {}, Family::V4);
        let e = explain(&r, &out(1337, "198.18.0.1:8080", "lo"));
        assert_eq!(e.outcome, Outcome::Redirect(15006));
        let mut p = out(1337, "198.18.0.1:8080", "lo");
        p.src = Some("127.0.0.6".parse().unwrap());
        assert_eq!(explain(&r, &p).outcome, Outcome::Pass);
    }

    #[test]
    fn inbound_respects_excludes_and_lists() {
        let r = rs(|_| {}, Family::V4);
        let inb = |dst: &str, iface: &str| Packet {
            proto: Proto::Tcp,
            dst: dst.parse().unwrap(),
            src: None,
            direction: Direction::Inbound {
                in_iface: iface.into(),
            },
        };
        assert_eq!(
            explain(&r, &inb("198.18.0.1:8080", "eth0")).outcome,
            Outcome::Redirect(15006)
        );
        assert_eq!(
            explain(&r, &inb("198.18.0.1:15021", "eth0")).outcome,
            Outcome::Pass
        );
        let r = rs(|f| f.inbound_ports = "9090".into(), Family::V4);
        assert_eq!(
            explain(&r, &inb("198.18.0.1:8080", "eth0")).outcome,
            Outcome::Pass
        );
        assert_eq!(
            explain(&r, &inb("198.18.0.1:9090", "eth0")).outcome,
            Outcome::Redirect(15006)
        );
        let r = rs(|f| f.kube_virt_interfaces = "tap0".into(), Family::V4);
        let e = explain(&r, &inb("198.18.0.9:80", "tap0"));
        assert_eq!(e.outcome, Outcome::Redirect(15001), "{e}");
        assert!(e.rule.unwrap().starts_with("-A PREROUTING -i tap0"));
    }

    #[test]
    fn excludes_win_over_includes() {
        let r = rs(
            |f| {
                f.exclude_outbound_cidrs = "198.18.0.0/24".into();
                f.exclude_outbound_ports = "5432".into();
            },
            Family::V4,
        );
        let e = explain(&r, &out(1000, "198.18.0.2:80", "eth0"));
        assert_eq!(e.outcome, Outcome::Pass);
        assert!(e.why.contains("-x"));
        let e = explain(&r, &out(1000, "198.19.0.2:5432", "eth0"));
        assert_eq!(e.outcome, Outcome::Pass);
        assert!(e.why.contains("-o"));
        let r6 = rs(|_| {}, Family::V6);
        assert_eq!(
            explain(&r6, &out(1000, "[fd00:198:18::2]:80", "eth0")).outcome,
            Outcome::Redirect(15001)
        );
        assert_eq!(
            explain(&r6, &out(1000, "[::1]:80", "lo")).outcome,
            Outcome::Pass
        );
    }

    #[test]
    fn dns_capture_sends_the_apps_dns_to_the_proxy_and_lets_the_proxys_out() {
        let udp = |mut p: Packet| {
            p.proto = Proto::Udp;
            p
        };
        for (fam, server, pod_dns, remote) in [
            (
                Family::V4,
                "10.96.0.10:53",
                "198.18.0.1:53",
                "198.18.0.2:80",
            ),
            (
                Family::V6,
                "[fd00:10:96::a]:53",
                "[fd00:198:18::1]:53",
                "[fd00:198:18::2]:80",
            ),
        ] {
            let r = rs(|f| f.dns_capture = true, fam);
            let e = explain(&r, &udp(out(1000, server, "eth0")));
            assert_eq!(e.outcome, Outcome::Redirect(15053), "{fam}: {e}");
            assert_eq!(
                e.rule.as_deref(),
                Some("-A ISTIO_OUTPUT -p udp -m udp --dport 53 -j REDIRECT --to-ports 15053")
            );
            assert!(e.why.contains("--dns-capture"), "{e}");
            let e = explain(&r, &out(1000, server, "eth0"));
            assert_eq!(e.outcome, Outcome::Redirect(15053), "{fam}: {e}");
            assert!(
                e.rule
                    .unwrap()
                    .contains("-p tcp -m tcp --dport 53 -j REDIRECT")
            );
            // A DNS server on the pod's own address, reached over lo: captured too.
            for p in [out(1000, pod_dns, "lo"), udp(out(1000, pod_dns, "lo"))] {
                assert_eq!(explain(&r, &p).outcome, Outcome::Redirect(15053), "{fam}");
            }
            // The proxy's own queries go to the real server.
            for p in [out(1337, server, "eth0"), udp(out(1337, server, "eth0"))] {
                let e = explain(&r, &p);
                assert_eq!(e.outcome, Outcome::Pass, "{fam}: {e}");
            }
            // The proxy's TCP DNS to its own pod IP is not sent inbound.
            assert_eq!(
                explain(&r, &out(1337, pod_dns, "lo")).outcome,
                Outcome::Pass,
                "{fam}"
            );
            // Other traffic as before; UDP is never redirected to the TCP listeners.
            assert_eq!(
                explain(&r, &out(1000, remote, "eth0")).outcome,
                Outcome::Redirect(15001)
            );
            assert_eq!(
                explain(&r, &udp(out(1000, remote, "eth0"))).outcome,
                Outcome::Pass
            );
            // Without --dns-capture, DNS over UDP passes and over TCP is outbound-captured.
            let plain = rs(|_| {}, fam);
            assert_eq!(
                explain(&plain, &udp(out(1000, server, "eth0"))).outcome,
                Outcome::Pass
            );
            assert_eq!(
                explain(&plain, &out(1000, server, "eth0")).outcome,
                Outcome::Redirect(15001)
            );
        }
    }
}
