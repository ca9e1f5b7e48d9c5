//! The ruleset builder: [`Settings`] -> the per-family [`Ruleset`], rule for rule in
//! istio-iptables' order (`tools/istio-iptables/pkg/capture/run.go`), so that
//! `iptables -t nat -S` in a pod reads as it does under Istio.
//!
//! DNS capture (`--dns-capture`) is istio-iptables' `--redirect-dns --capture-all-dns`
//! (`SetupDNSRedir`), its nat rules inline in ISTIO_OUTPUT where Istio jumps to
//! ISTIO_OUTPUT_DNS (so we keep our four chains): after the owner rules, before the
//! localhost return, TCP to port 53 is redirected to the proxy's DNS port, UDP to port 53
//! too except from the proxy's uids/gids (already returned above, repeated as Istio does);
//! the first uid rule (proxy to its own pod IP) skips port 53 and the lo returns are TCP
//! and not port 53, so the app's DNS to a server on the pod's loopback is captured too.
//!
//! With DNS capture there are also istio-iptables' raw-table rules
//! ([`Settings::zone_ruleset`]): DNS over UDP is tracked in two conntrack zones, the
//! proxy's own queries to the real servers (and their answers) in zone 1, the app's
//! queries (and the proxy's answers to them) in zone 2. Without them the two flows share
//! one table of 5-tuples: the proxy's upstream query from source port Q leaves an entry
//! `pod:Q -> server:53` that is not redirected, and an app query that picks Q as its own
//! source port in the next 30 s follows that entry to the real server instead of the
//! proxy, retries included (the app's lookup times out); the other way round, an app
//! entry can catch the proxy's upstream query and send it back to the proxy.
//!
//! Not built: Istio's inbound tunnel port (15008, HBONE) exceptions, TPROXY,
//! owner-group filters, `--exclude-interfaces` (mesh-proxy has no use for them yet).

use ipnet::IpNet;
use mesh_common::{DNS_CAPTURE_PORT, DNS_PORT, PROXY_ADMIN_PORT, PROXY_METRICS_PORT, chains};

/// The conntrack zone of the proxy's own DNS flows to the real servers (Istio's).
pub const DNS_ZONE_UPSTREAM: u16 = 1;
/// The conntrack zone of the app's DNS flows, redirected to the proxy (Istio's).
pub const DNS_ZONE_APP: u16 = 2;

use super::rules::{Family, Match, Rule, Ruleset, Table, Target};
use super::settings::{CidrSet, PortSet, Settings, dedup};

impl Settings {
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
        let include = self.include_for(family);
        let prerouting = self.prerouting(include.as_deref());
        Ruleset {
            family,
            table: Table::Nat,
            prerouting_inserted: prerouting.len() - usize::from(self.inbound != PortSet::None),
            prerouting,
            output: vec![Rule::new(
                vec![],
                Target::Jump(chains::OUTPUT),
                "all locally generated traffic enters ISTIO_OUTPUT",
            )],
            chains: vec![
                (chains::INBOUND, self.inbound_chain()),
                (
                    chains::REDIRECT,
                    vec![Rule::new(
                        vec![Match::Tcp],
                        Target::Redirect(self.proxy_port),
                        "redirect to the proxy's outbound port",
                    )],
                ),
                (
                    chains::IN_REDIRECT,
                    vec![Rule::new(
                        vec![Match::Tcp],
                        Target::Redirect(self.inbound_capture_port),
                        "redirect to the proxy's inbound port",
                    )],
                ),
                (
                    chains::OUTPUT,
                    self.output_chain(family, include.as_deref()),
                ),
            ],
        }
    }

    /// ISTIO_OUTPUT, in istio-iptables' order: `-o` port exclusions first ("must be
    /// applied before connections back to self are redirected"), the inbound
    /// passthrough source, then for each proxy uid and after them each gid the same
    /// three rules, localhost, `-x`, `-q`, `-i`.
    fn output_chain(&self, family: Family, include: Option<&[IpNet]>) -> Vec<Rule> {
        let lo = || Match::OutIface("lo".into());
        let localhost = family.localhost();
        let mut out = Vec::new();
        for p in &self.exclude_outbound_ports {
            out.push(Rule::new(
                vec![Match::Tcp, Match::DPort(*p)],
                Target::Return,
                "excluded outbound port (-o)",
            ));
            out.push(Rule::new(
                vec![Match::Udp, Match::DPort(*p)],
                Target::Return,
                "excluded outbound port (-o), UDP",
            ));
        }
        out.push(Rule::new(
            vec![Match::Src(family.passthrough()), lo()],
            Target::Return,
            "inbound passthrough: the proxy reaches the app from the passthrough source",
        ));
        const UID_WHY: [&str; 3] = [
            "proxy uid calling a local non-loopback address (the pod's own IP, e.g. through a Service VIP): inbound capture",
            "not the proxy uid, on lo (the app calling the pod's own addresses): goes direct",
            "proxy uid is exempt (any protocol), so its own traffic never loops",
        ];
        const GID_WHY: [&str; 3] = [
            "proxy gid calling a local non-loopback address (the pod's own IP, e.g. through a Service VIP): inbound capture",
            "not the proxy gid, on lo (the app calling the pod's own addresses): goes direct",
            "proxy gid is exempt (any protocol), so its own traffic never loops",
        ];
        // All uids first, then all gids, three rules each.
        let owners = self
            .proxy_uids
            .iter()
            .map(|u| (Match::Uid(*u), Match::NotUid(*u), UID_WHY, true))
            .chain(
                self.proxy_gids
                    .iter()
                    .map(|g| (Match::Gid(*g), Match::NotGid(*g), GID_WHY, false)),
            );
        let dns = self.dns_capture;
        for (owner, not_owner, [to_self, on_lo, exempt], is_uid) in owners {
            // With DNS capture the proxy's (uid's) DNS to its own pod IP is not sent
            // inbound (app -> proxy DNS -> server, not through the inbound listener). As
            // in Istio, only the uid rule says so.
            let mut m = vec![Match::NotDst(localhost), lo(), Match::Tcp];
            if dns && is_uid {
                m.push(Match::NotDPort(DNS_PORT));
            }
            m.push(owner.clone());
            out.push(Rule::new(m, Target::Jump(chains::IN_REDIRECT), to_self));
            // With a loopback -i entry, app traffic on lo must reach the -i rules.
            if !self.include_outbound_loopback {
                let m = if dns {
                    // TCP to a DNS server on the pod's loopback must reach the capture.
                    vec![lo(), Match::Tcp, Match::NotDPort(DNS_PORT), not_owner]
                } else {
                    vec![lo(), not_owner]
                };
                out.push(Rule::new(m, Target::Return, on_lo));
            }
            out.push(Rule::new(vec![owner], Target::Return, exempt));
        }
        if dns {
            out.extend(self.dns_rules());
        }
        out.push(Rule::new(
            vec![Match::Dst(localhost)],
            Target::Return,
            "loopback destination goes direct",
        ));
        for n in self.exclude_outbound.iter().filter(|n| family.contains(n)) {
            out.push(Rule::new(
                vec![Match::Dst(*n)],
                Target::Return,
                "excluded outbound CIDR (-x)",
            ));
        }
        for p in &self.include_outbound_ports {
            out.push(Rule::new(
                vec![Match::Tcp, Match::DPort(*p)],
                Target::Jump(chains::REDIRECT),
                "included outbound port (-q): outbound capture",
            ));
        }
        match include {
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
        out
    }

    /// The raw-table rules for one family: with `--dns-capture`, istio-iptables'
    /// conntrack zones for DNS over UDP (`--capture-all-dns`), in its order: for each
    /// proxy uid, then each gid, its queries to port 53 into zone 1 and its answers from
    /// the DNS port into zone 2; then every other query to port 53 (the app's) into zone
    /// 2; in PREROUTING, answers from port 53 (the real servers') into zone 1. A packet
    /// keeps the first zone it is given, so the owner rules come first. `None` without
    /// DNS capture: the raw table is left alone (but for our own leftovers).
    pub fn zone_ruleset(&self, family: Family) -> Option<Ruleset> {
        if !self.dns_capture {
            return None;
        }
        let owners = self
            .proxy_uids
            .iter()
            .map(|u| Match::Uid(*u))
            .chain(self.proxy_gids.iter().map(|g| Match::Gid(*g)));
        let mut output = Vec::new();
        for owner in owners {
            output.push(Rule::new(
                vec![Match::Udp, Match::DPort(DNS_PORT), owner.clone()],
                Target::CtZone(DNS_ZONE_UPSTREAM),
                "the proxy's own DNS queries to the real servers: conntrack zone 1",
            ));
            output.push(Rule::new(
                vec![Match::Udp, Match::SPort(DNS_CAPTURE_PORT), owner],
                Target::CtZone(DNS_ZONE_APP),
                "the proxy's DNS answers to the app: conntrack zone 2, with the app's queries",
            ));
        }
        output.push(Rule::new(
            vec![Match::Udp, Match::DPort(DNS_PORT)],
            Target::CtZone(DNS_ZONE_APP),
            "the app's DNS queries: conntrack zone 2, apart from the proxy's upstream queries",
        ));
        let inbound = vec![Rule::new(
            vec![Match::Udp, Match::SPort(DNS_PORT)],
            Target::CtZone(DNS_ZONE_UPSTREAM),
            "answers from the real DNS servers: conntrack zone 1, the proxy's upstream queries'",
        )];
        Some(Ruleset {
            family,
            table: Table::Raw,
            prerouting: vec![Rule::new(
                vec![],
                Target::Jump(chains::INBOUND),
                "received packets enter the raw ISTIO_INBOUND (DNS answers' zone)",
            )],
            prerouting_inserted: 0,
            output: vec![Rule::new(
                vec![],
                Target::Jump(chains::OUTPUT_DNS),
                "locally generated packets enter ISTIO_OUTPUT_DNS (DNS queries' zones)",
            )],
            chains: vec![(chains::OUTPUT_DNS, output), (chains::INBOUND, inbound)],
        })
    }

    /// `--dns-capture`: istio-iptables' ISTIO_OUTPUT_DNS rules for `--capture-all-dns`, in
    /// its order (TCP, then the UDP owner returns, then UDP), same for both families.
    fn dns_rules(&self) -> Vec<Rule> {
        let mut v = vec![Rule::new(
            vec![Match::Tcp, Match::DPort(DNS_PORT)],
            Target::Redirect(DNS_CAPTURE_PORT),
            "the app's DNS over TCP goes to the proxy's DNS port (--dns-capture)",
        )];
        let owners = self
            .proxy_uids
            .iter()
            .map(|u| Match::Uid(*u))
            .chain(self.proxy_gids.iter().map(|g| Match::Gid(*g)));
        for owner in owners {
            v.push(Rule::new(
                vec![Match::Udp, Match::DPort(DNS_PORT), owner],
                Target::Return,
                "the proxy's own DNS queries go to the real servers (--dns-capture)",
            ));
        }
        v.push(Rule::new(
            vec![Match::Udp, Match::DPort(DNS_PORT)],
            Target::Redirect(DNS_CAPTURE_PORT),
            "the app's DNS over UDP goes to the proxy's DNS port (--dns-capture)",
        ));
        v
    }

    /// ISTIO_INBOUND.
    fn inbound_chain(&self) -> Vec<Rule> {
        let mut inbound = Vec::new();
        match &self.inbound {
            PortSet::All => {
                for p in self.inbound_returns() {
                    inbound.push(Rule::new(
                        vec![Match::Tcp, Match::DPort(p)],
                        Target::Return,
                        "excluded inbound port (-d, or the proxy's own admin/metrics port)",
                    ));
                }
                inbound.push(Rule::new(
                    vec![Match::Tcp],
                    Target::Jump(chains::IN_REDIRECT),
                    "all other inbound TCP is captured (-b '*')",
                ));
            }
            PortSet::List(ports) => {
                for p in ports {
                    inbound.push(Rule::new(
                        vec![Match::Tcp, Match::DPort(*p)],
                        Target::Jump(chains::IN_REDIRECT),
                        "included inbound port (-b): inbound capture",
                    ));
                }
            }
            PortSet::None => {}
        }
        inbound
    }

    /// Our rules in PREROUTING: the `-k` rules at the top, then the jump into
    /// ISTIO_INBOUND (when there is inbound capture).
    ///
    /// istio-iptables inserts every `-k` rule at position 1: first a RETURN per
    /// interface, then (per family, from that family's `-i`) the captures, per CIDR and
    /// interface, or one per interface for `-i '*'`. Each insert lands above the earlier
    /// ones, so the chain holds them in reverse; we write that final order. `-x` plays no
    /// part here, as in Istio: with `-i '*'` everything a VM sends is captured.
    fn prerouting(&self, include: Option<&[IpNet]>) -> Vec<Rule> {
        let ifaces = &self.kube_virt_interfaces;
        let i = |iface: &String| Match::InIface(iface.clone());
        let mut inserted = Vec::new();
        for iface in ifaces {
            inserted.push(Rule::new(
                vec![i(iface)],
                Target::Return,
                "kube-virt interface (-k) is never inbound-captured",
            ));
        }
        match include {
            None => {
                for iface in ifaces {
                    inserted.push(Rule::new(
                        vec![i(iface)],
                        Target::Jump(chains::REDIRECT),
                        "kube-virt interface (-k) traffic is outbound for the VM: outbound capture (-i '*')",
                    ));
                }
            }
            Some(list) => {
                for n in list {
                    for iface in ifaces {
                        inserted.push(Rule::new(
                            vec![i(iface), Match::Dst(*n)],
                            Target::Jump(chains::REDIRECT),
                            "kube-virt interface (-k) to an included CIDR (-i): outbound capture",
                        ));
                    }
                }
            }
        }
        inserted.reverse();
        let mut prerouting = inserted;
        if self.inbound != PortSet::None {
            prerouting.push(Rule::new(
                vec![Match::Tcp],
                Target::Jump(chains::INBOUND),
                "inbound TCP enters ISTIO_INBOUND",
            ));
        }
        prerouting
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Flags;

    fn flags(f: impl FnOnce(&mut Flags)) -> Settings {
        let mut fl = Flags::default();
        f(&mut fl);
        Settings::from_flags(&fl).unwrap()
    }

    #[test]
    fn cidrs_split_per_family() {
        let s = flags(|f| f.include_outbound_cidrs = "fd00::/8".into());
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
    fn conntrack_zones_only_with_dns_capture() {
        assert_eq!(flags(|_| {}).zone_ruleset(Family::V4), None);
        let s = flags(|f| f.dns_capture = true);
        for family in Family::ALL {
            let z = s.zone_ruleset(family).unwrap();
            assert_eq!(z.table, Table::Raw);
            let out = z.chain(chains::OUTPUT_DNS);
            // The proxy's flows first (a packet keeps the first zone it is given), the
            // app's catch-all last.
            assert_eq!(
                out.last().unwrap().matches,
                vec![Match::Udp, Match::DPort(DNS_PORT)]
            );
            assert_eq!(out.last().unwrap().target, Target::CtZone(DNS_ZONE_APP));
            assert_eq!(
                out.len(),
                5,
                "uid and gid 1337, two rules each, then the app's"
            );
            assert_eq!(
                z.chain(chains::INBOUND)[0].target,
                Target::CtZone(DNS_ZONE_UPSTREAM)
            );
        }
    }

    #[test]
    fn no_inbound_means_no_prerouting_jump() {
        let s = flags(|f| f.inbound_ports = "".into());
        let r = s.ruleset(Family::V4);
        assert!(r.prerouting.is_empty());
        assert!(r.chain(chains::INBOUND).is_empty());
    }

    /// Owner rules, as (target, matches) pairs, in chain order.
    fn owner_rules(r: &Ruleset) -> Vec<String> {
        r.chain(chains::OUTPUT)
            .iter()
            .filter(|r| {
                r.matches.iter().any(|m| {
                    matches!(
                        m,
                        Match::Uid(_) | Match::NotUid(_) | Match::Gid(_) | Match::NotGid(_)
                    )
                })
            })
            .map(|r| format!("{:?} {:?}", r.matches, r.target))
            .collect()
    }

    #[test]
    fn istio_order_three_rules_per_uid_then_per_gid() {
        let s = flags(|f| {
            f.proxy_uid = "3,4".into();
            f.proxy_gid = Some("1,2".into());
        });
        for family in Family::ALL {
            let r = s.ruleset(family);
            let lo = family.localhost();
            let want: Vec<String> = [
                (Match::Uid(3), Match::NotUid(3)),
                (Match::Uid(4), Match::NotUid(4)),
                (Match::Gid(1), Match::NotGid(1)),
                (Match::Gid(2), Match::NotGid(2)),
            ]
            .into_iter()
            .flat_map(|(own, not_own)| {
                [
                    format!(
                        "{:?} {:?}",
                        vec![
                            Match::NotDst(lo),
                            Match::OutIface("lo".into()),
                            Match::Tcp,
                            own.clone()
                        ],
                        Target::Jump(chains::IN_REDIRECT)
                    ),
                    format!(
                        "{:?} {:?}",
                        vec![Match::OutIface("lo".into()), not_own],
                        Target::Return
                    ),
                    format!("{:?} {:?}", vec![own], Target::Return),
                ]
            })
            .collect();
            assert_eq!(owner_rules(&r), want, "{family}");
        }
    }

    #[test]
    fn excluded_ports_come_first_then_passthrough() {
        let s = flags(|f| f.exclude_outbound_ports = "5432".into());
        let out = s.ruleset(Family::V6);
        let out = out.chain(chains::OUTPUT);
        assert_eq!(out[0].matches, vec![Match::Tcp, Match::DPort(5432)]);
        assert_eq!(out[1].matches, vec![Match::Udp, Match::DPort(5432)]);
        assert_eq!(out[2].matches[0], Match::Src(Family::V6.passthrough()));
    }

    #[test]
    fn dns_capture_rules_sit_between_the_owner_rules_and_localhost() {
        let plain = flags(|_| {});
        let s = flags(|f| f.dns_capture = true);
        for family in Family::ALL {
            let out = s.ruleset(family);
            let out = out.chain(chains::OUTPUT);
            let at = |m: &[Match], t: Target| {
                out.iter()
                    .position(|r| r.matches == m && r.target == t)
                    .unwrap_or_else(|| panic!("{family}: no {m:?} {t:?} in {out:#?}"))
            };
            let dns = Match::DPort(DNS_PORT);
            let redirect = Target::Redirect(DNS_CAPTURE_PORT);
            let tcp = at(&[Match::Tcp, dns.clone()], redirect);
            let uid_ret = at(&[Match::Udp, dns.clone(), Match::Uid(1337)], Target::Return);
            let gid_ret = at(&[Match::Udp, dns.clone(), Match::Gid(1337)], Target::Return);
            let udp = at(&[Match::Udp, dns.clone()], redirect);
            let exempt = at(&[Match::Gid(1337)], Target::Return);
            let localhost = at(&[Match::Dst(family.localhost())], Target::Return);
            assert!(exempt < tcp && tcp < uid_ret && uid_ret < gid_ret && gid_ret < udp);
            assert!(udp < localhost);
            // The uid's to-self rule skips 53; the gid's does not (as in Istio).
            let to_self: Vec<_> = out
                .iter()
                .filter(|r| r.target == Target::Jump(chains::IN_REDIRECT))
                .map(|r| r.matches.contains(&Match::NotDPort(DNS_PORT)))
                .collect();
            assert_eq!(to_self, [true, false], "{family}");
            // Four more rules than without DNS capture, and the lo returns are TCP, not 53.
            let before = plain.ruleset(family).chain(chains::OUTPUT).len();
            assert_eq!(out.len(), before + 4, "{family}");
            assert!(
                out.iter()
                    .filter(|r| r
                        .matches
                        .iter()
                        .any(|m| matches!(m, Match::NotUid(_) | Match::NotGid(_))))
                    .all(|r| r.matches.contains(&Match::NotDPort(DNS_PORT))
                        && r.matches.contains(&Match::Tcp))
            );
            // Nothing else changes.
            let rest = |r: &Ruleset| {
                (
                    r.prerouting.clone(),
                    r.output.clone(),
                    r.chain(chains::INBOUND).to_vec(),
                )
            };
            assert_eq!(rest(&s.ruleset(family)), rest(&plain.ruleset(family)));
        }
    }

    #[test]
    fn loopback_include_drops_the_lo_returns_in_both_families() {
        let s = flags(|f| f.include_outbound_cidrs = "127.1.2.3/32".into());
        for family in Family::ALL {
            let r = s.ruleset(family);
            assert!(
                !r.chain(chains::OUTPUT)
                    .iter()
                    .any(|r| r.matches.iter().any(|m| matches!(m, Match::NotUid(_)))),
                "{family}"
            );
        }
    }

    #[test]
    fn kube_virt_rules_in_istio_final_order_for_both_families() {
        let s = flags(|f| {
            f.kube_virt_interfaces = "eth1,eth2".into();
            f.include_outbound_cidrs = "10.0.0.0/8,fd00::/8".into();
            f.exclude_outbound_cidrs = "10.1.0.0/16".into();
        });
        let v4 = s.ruleset(Family::V4);
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        let m = |r: &Rule| (r.matches.clone(), r.target);
        let got: Vec<_> = v4.prerouting.iter().map(m).collect();
        let eth = |n: &str| Match::InIface(n.into());
        let redirect = Target::Jump(chains::REDIRECT);
        assert_eq!(
            got,
            vec![
                (vec![eth("eth2"), Match::Dst(net)], redirect),
                (vec![eth("eth1"), Match::Dst(net)], redirect),
                (vec![eth("eth2")], Target::Return),
                (vec![eth("eth1")], Target::Return),
                (vec![Match::Tcp], Target::Jump(chains::INBOUND)),
            ]
        );
        assert_eq!(v4.prerouting_inserted, 4);
        let v6 = s.ruleset(Family::V6);
        let net6: IpNet = "fd00::/8".parse().unwrap();
        assert_eq!(
            v6.prerouting[0].matches,
            vec![eth("eth2"), Match::Dst(net6)]
        );
        assert_eq!(v6.prerouting_inserted, 4);

        let all = flags(|f| f.kube_virt_interfaces = "tap0".into());
        for family in Family::ALL {
            let r = all.ruleset(family);
            let got: Vec<_> = r.prerouting.iter().map(m).collect();
            assert_eq!(
                got,
                vec![
                    (vec![eth("tap0")], redirect),
                    (vec![eth("tap0")], Target::Return),
                    (vec![Match::Tcp], Target::Jump(chains::INBOUND)),
                ],
                "{family}"
            );
        }
    }
}
