//! Command line: the istio-iptables flags (same names and letters, so injected args read
//! the same), our operator flags, and the `explain` subcommand.

use std::net::{IpAddr, SocketAddr};

use clap::{Args, Parser, Subcommand, ValueEnum};
use mesh_common::{PROXY_INBOUND_PORT, PROXY_OUTBOUND_PORT, PROXY_UID};

use crate::apply::Backend;
use crate::model::Flags;

#[derive(Debug, Parser)]
#[command(
    name = "mesh-init",
    version,
    about = "Install the nat rules that send a pod's TCP through its sidecar proxy",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub capture: CaptureArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Say which rule decides a connection and what happens to it (evaluates the same
    /// rules that would be installed; touches nothing).
    Explain(ExplainArgs),
}

/// The istio-iptables capture flags. Lists are comma-separated; empty items are ignored.
#[derive(Debug, Clone, Args)]
pub struct CaptureArgs {
    /// Port all outbound TCP is redirected to.
    #[arg(short = 'p', long = "proxy-port", default_value_t = PROXY_OUTBOUND_PORT.to_string())]
    pub proxy_port: String,
    /// Port all inbound TCP is redirected to.
    #[arg(short = 'z', long = "inbound-capture-port", default_value_t = PROXY_INBOUND_PORT.to_string())]
    pub inbound_capture_port: String,
    /// Numeric uid(s) of the proxy, whose traffic is never captured (comma list).
    #[arg(short = 'u', long = "proxy-uid", default_value_t = PROXY_UID.to_string())]
    pub proxy_uid: String,
    /// Numeric gid(s) of the proxy (comma list); defaults to the uid(s).
    #[arg(short = 'g', long = "proxy-gid")]
    pub proxy_gid: Option<String>,
    /// Interception mode: REDIRECT (TPROXY is refused until supported).
    #[arg(short = 'm', long = "mode", default_value = "REDIRECT")]
    pub mode: String,
    /// Inbound ports to capture: `*` = all, '' = no inbound capture.
    #[arg(short = 'b', long = "inbound-ports", default_value = "*")]
    pub inbound_ports: String,
    /// Inbound ports never captured (only with -b '*').
    #[arg(short = 'd', long = "exclude-inbound-ports", default_value = "")]
    pub exclude_inbound_ports: String,
    /// Outbound ports always captured, whatever -i says.
    #[arg(short = 'q', long = "outbound-ports", default_value = "")]
    pub outbound_ports: String,
    /// Outbound ports never captured.
    #[arg(short = 'o', long = "exclude-outbound-ports", default_value = "")]
    pub exclude_outbound_ports: String,
    /// Outbound CIDRs to capture (IPv4 and IPv6 mixed): `*` = all, '' = none.
    #[arg(short = 'i', long = "include-outbound-cidrs", default_value = "*")]
    pub include_outbound_cidrs: String,
    /// Outbound CIDRs never captured (`*` is an error).
    #[arg(short = 'x', long = "exclude-outbound-cidrs", default_value = "")]
    pub exclude_outbound_cidrs: String,
    /// Interfaces (e.g. KubeVirt taps) whose arriving traffic is a VM's outbound: captured
    /// for the -i destinations (IPv4 and IPv6), never inbound-captured.
    #[arg(short = 'k', long = "kube-virt-interfaces", default_value = "")]
    pub kube_virt_interfaces: String,
    /// Redirect the app's DNS (UDP and TCP to port 53, any server) to the proxy's DNS
    /// port 15053; the proxy's own queries (its uid/gid) go out. istio-iptables'
    /// `--redirect-dns` with `--capture-all-dns`.
    #[arg(long = "dns-capture", visible_alias = "redirect-dns")]
    pub dns_capture: bool,
}

impl CaptureArgs {
    pub fn flags(&self) -> Flags {
        Flags {
            proxy_port: self.proxy_port.clone(),
            inbound_capture_port: self.inbound_capture_port.clone(),
            proxy_uid: self.proxy_uid.clone(),
            proxy_gid: self.proxy_gid.clone(),
            mode: self.mode.clone(),
            inbound_ports: self.inbound_ports.clone(),
            exclude_inbound_ports: self.exclude_inbound_ports.clone(),
            outbound_ports: self.outbound_ports.clone(),
            exclude_outbound_ports: self.exclude_outbound_ports.clone(),
            include_outbound_cidrs: self.include_outbound_cidrs.clone(),
            exclude_outbound_cidrs: self.exclude_outbound_cidrs.clone(),
            kube_virt_interfaces: self.kube_virt_interfaces.clone(),
            dns_capture: self.dns_capture,
        }
    }
}

/// When to write IPv6 rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Ipv6Mode {
    /// When the pod has a global IPv6 address (a node without IPv6 never fails a pod).
    Auto,
    /// Always (failing if the node cannot).
    On,
    /// Never.
    Off,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Print the iptables-restore input for each family and touch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove everything mesh-init installs (our chains, our jumps, `::6` on lo).
    #[arg(long, conflicts_with = "verify")]
    pub cleanup: bool,
    /// After applying, check that a connection to a sentinel address lands on a
    /// temporary listener on the proxy port; fail if it does not.
    #[arg(long)]
    pub verify: bool,
    /// Sentinel destination for --verify (repeatable, one per family); defaults to
    /// 192.0.2.10:9 and [2001:db8::10]:9 (documentation ranges, never really reached).
    #[arg(long = "verify-dst", value_name = "ADDR:PORT")]
    pub verify_dst: Vec<SocketAddr>,
    /// iptables backend; default: the one the host already uses.
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    /// Write IPv6 rules (ip6tables-restore): auto, on or off.
    #[arg(long, value_enum, default_value = "auto")]
    pub ipv6: Ipv6Mode,
}

#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Destination of the connection.
    #[arg(long, value_name = "ADDR:PORT")]
    pub dst: SocketAddr,
    /// The connection arrives from a peer (PREROUTING) instead of leaving the pod.
    #[arg(long)]
    pub inbound: bool,
    /// The packet is UDP (a DNS query, say), not TCP.
    #[arg(long)]
    pub udp: bool,
    /// uid of the process opening the (outbound) connection.
    #[arg(long, default_value_t = 0, required_unless_present = "inbound")]
    pub uid: u32,
    /// gid of that process; defaults to the uid.
    #[arg(long)]
    pub gid: Option<u32>,
    /// Source address the process bound (e.g. 127.0.0.6 for inbound passthrough).
    #[arg(long)]
    pub src: Option<IpAddr>,
    /// The pod's own addresses (comma list): a destination among them leaves by `lo`.
    #[arg(long, value_delimiter = ',')]
    pub local: Vec<IpAddr>,
    /// Interface the connection arrives on (inbound) or leaves by (outbound; default:
    /// `lo` for loopback and --local destinations, else eth0).
    #[arg(long)]
    pub iface: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn injected_args_parse_like_istio_iptables() {
        let cli =
            Cli::try_parse_from(std::iter::once("mesh-init").chain(mesh_common::DEFAULT_INIT_ARGS))
                .unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.capture.exclude_outbound_cidrs, "");
        assert_eq!(cli.capture.exclude_inbound_ports, "15090,15021");
        assert_eq!(cli.run.ipv6, Ipv6Mode::Auto);
        assert_eq!(cli.run.backend, None);
    }

    /// The flags the injector writes (`mesh_common::contract::init`) are exactly the
    /// capture flags clap knows, letter and name alike, and its switches the clap
    /// switches (no value, no letter).
    #[test]
    fn capture_flags_match_the_contract() {
        use mesh_common::contract::init::{CAPTURE_FLAGS, DNS_CAPTURE_ISTIO_ALIAS, SWITCHES};
        let cmd = Cli::command();
        let clap_flags: Vec<(String, String)> = cmd
            .get_arguments()
            .filter_map(|a| {
                Some((
                    format!("-{}", a.get_short()?),
                    format!("--{}", a.get_long()?),
                ))
            })
            .collect();
        for flag in CAPTURE_FLAGS {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long().map(|l| format!("--{l}")).as_deref() == Some(flag.long))
                .unwrap_or_else(|| panic!("{} is in the contract but not in clap", flag.long));
            assert_eq!(
                arg.get_short().map(|c| format!("-{c}")).as_deref(),
                Some(flag.short),
                "{}",
                flag.long
            );
            assert!(
                arg.get_action().takes_values(),
                "{} takes a value, as the injector writes it",
                flag.long
            );
        }
        for switch in SWITCHES {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long().map(|l| format!("--{l}")).as_deref() == Some(switch))
                .unwrap_or_else(|| panic!("{switch} is in the contract but not in clap"));
            assert!(arg.get_short().is_none(), "{switch} has no letter");
            assert!(!arg.get_action().takes_values(), "{switch} takes no value");
        }
        // Every capture flag of clap (the ones CaptureArgs defines) is in the contract.
        let capture = CaptureArgs::augment_args(clap::Command::new("capture"));
        for arg in capture.get_arguments() {
            let long = arg.get_long().map(|l| format!("--{l}"));
            let short = arg.get_short().map(|c| format!("-{c}"));
            assert!(
                CAPTURE_FLAGS
                    .iter()
                    .any(|f| Some(f.long) == long.as_deref() && Some(f.short) == short.as_deref())
                    || (short.is_none() && SWITCHES.iter().any(|s| Some(*s) == long.as_deref())),
                "clap capture flag {short:?}/{long:?} is not in mesh_common::contract::init"
            );
        }
        assert_eq!(
            capture.get_arguments().count(),
            CAPTURE_FLAGS.len() + SWITCHES.len(),
            "one clap flag per contract flag"
        );
        // istio-iptables' spelling of the DNS switch parses as ours.
        let cli = Cli::try_parse_from(["mesh-init", DNS_CAPTURE_ISTIO_ALIAS]).unwrap();
        assert!(cli.capture.dns_capture);
        // `explain` takes the same flags, spelled the same.
        let explain = cmd.find_subcommand("explain").expect("explain subcommand");
        for switch in SWITCHES {
            assert!(
                explain
                    .get_arguments()
                    .any(|a| a.get_long().map(|l| format!("--{l}")).as_deref() == Some(switch)),
                "explain lacks {switch}"
            );
        }
        for flag in CAPTURE_FLAGS {
            assert!(
                explain.get_arguments().any(|a| {
                    a.get_long().map(|l| format!("--{l}")).as_deref() == Some(flag.long)
                        && a.get_short().map(|c| format!("-{c}")).as_deref() == Some(flag.short)
                }),
                "explain lacks {}/{}",
                flag.short,
                flag.long
            );
        }
        // And no other flag of the top-level command steals a contract letter.
        for (short, long) in &clap_flags {
            if let Some(f) = CAPTURE_FLAGS.iter().find(|f| f.short == short) {
                assert_eq!(f.long, long, "{short} is the contract's {}", f.long);
            }
        }
    }

    #[test]
    fn explain_takes_capture_flags_too() {
        let cli = Cli::try_parse_from([
            "mesh-init",
            "explain",
            "-x",
            "10.0.0.0/8",
            "--uid",
            "1000",
            "--dst",
            "198.18.0.2:80",
        ])
        .unwrap();
        let Some(Command::Explain(e)) = cli.command else {
            panic!("explain expected")
        };
        assert_eq!(e.uid, 1000);
        assert_eq!(e.capture.exclude_outbound_cidrs, "10.0.0.0/8");
        assert!(Cli::try_parse_from(["mesh-init", "explain", "--dst", "198.18.0.2:80"]).is_err());
    }
}
