//! mesh-init: installs the nat rules that send a pod's TCP through its sidecar proxy.
//!
//! The rules are data first: flags -> [`model::Settings`] -> per-family
//! [`model::Ruleset`], which [`render`] prints as `iptables-restore` input and
//! [`explain`] evaluates for one connection. [`apply`] is the only module that touches
//! the host (spawning the iptables tools), [`probe`] reads what it needs to know of the
//! host from `/proc`, and [`verify`] proves the result.
//!
//! Module layout: [`cli`] (clap), [`model`] (`settings`: flags -> settings; `rules`: the
//! rule vocabulary; `build`: settings -> rulesets), [`render`], [`explain`], [`apply`],
//! [`probe`], [`verify`].
#![forbid(unsafe_code)]
// Unit tests may unwrap: a panic there is a test failure with a line number.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod apply;
pub mod cli;
pub mod explain;
pub mod model;
pub mod probe;
pub mod render;
pub mod verify;

use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use apply::{ApplyError, Backend, Host};
use cli::{Cli, Command, ExplainArgs, Ipv6Mode};
use model::{Family, ModelError, Settings};
use verify::VerifyError;

/// Everything that makes mesh-init exit non-zero.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

/// Header of a family's section in `--dry-run` output.
pub fn dry_run_header(family: Family) -> &'static str {
    match family {
        Family::V4 => "# IPv4: iptables-restore --noflush\n",
        Family::V6 => "# IPv6: ip6tables-restore --noflush\n",
    }
}

/// `--dry-run` output: each family's transactions for a pod with nothing installed yet
/// (nat, then raw with DNS capture); for `--cleanup`, those that remove ours from both
/// tables.
pub fn dry_run_text(settings: &Settings, families: &[Family], cleanup: bool) -> String {
    let mut s = String::new();
    for &family in families {
        s.push_str(dry_run_header(family));
        if cleanup {
            s.push_str(&render::cleanup(model::Table::Raw, &[]));
            s.push_str(&render::cleanup(model::Table::Nat, &[]));
        } else {
            s.push_str(&render::install(&settings.ruleset(family), &[]));
            if let Some(zones) = settings.zone_ruleset(family) {
                s.push_str(&render::install(&zones, &[]));
            }
        }
    }
    s
}

/// Evaluates `explain` arguments against the rules those capture flags would install.
pub fn explain_text(args: &ExplainArgs) -> Result<String, Error> {
    let settings = Settings::from_flags(&args.capture.flags())?;
    let dst = args.dst;
    let family = Family::of(dst.ip());
    let direction = if args.inbound {
        explain::Direction::Inbound {
            in_iface: args.iface.clone().unwrap_or_else(|| "eth0".into()),
        }
    } else {
        let local = dst.ip().is_loopback() || args.local.contains(&dst.ip());
        explain::Direction::Outbound {
            uid: args.uid,
            gid: args.gid.unwrap_or(args.uid),
            out_iface: args
                .iface
                .clone()
                .unwrap_or_else(|| if local { "lo" } else { "eth0" }.into()),
        }
    };
    let src: Option<IpAddr> = args.src;
    let e = explain::explain(
        &settings.ruleset(family),
        &explain::Packet {
            proto: if args.udp {
                explain::Proto::Udp
            } else {
                explain::Proto::Tcp
            },
            dst,
            src,
            direction,
        },
    );
    Ok(e.to_string())
}

fn families_for(mode: Ipv6Mode) -> Vec<Family> {
    let v6 = match mode {
        Ipv6Mode::On => true,
        Ipv6Mode::Off => false,
        Ipv6Mode::Auto => probe::pod_has_ipv6(Path::new(probe::IF_INET6)),
    };
    if v6 {
        vec![Family::V4, Family::V6]
    } else {
        vec![Family::V4]
    }
}

/// Runs a parsed command line, writing normal output to `out`.
pub fn run(cli: &Cli, out: &mut dyn Write) -> Result<(), Error> {
    if let Some(Command::Explain(args)) = &cli.command {
        out.write_all(explain_text(args)?.as_bytes())?;
        return Ok(());
    }
    let settings = Settings::from_flags(&cli.capture.flags())?;
    if !matches!(settings.inbound, model::PortSet::All)
        && !settings.exclude_inbound_ports.is_empty()
    {
        tracing::warn!("-d/--exclude-inbound-ports only applies with -b '*'; ignored");
    }
    tracing::info!(?settings, "capture settings");
    let run = &cli.run;
    if run.dry_run {
        let families: Vec<Family> = if run.ipv6 == Ipv6Mode::Off {
            vec![Family::V4]
        } else {
            Family::ALL.to_vec()
        };
        out.write_all(dry_run_text(&settings, &families, run.cleanup).as_bytes())?;
        return Ok(());
    }
    if !probe::has_cap_net_admin(Path::new(probe::SELF_STATUS)) {
        return Err(ApplyError::MissingCapNetAdmin.into());
    }
    let backend = run.backend.unwrap_or_else(apply::detect_backend);
    let host = Host { backend };
    tracing::info!(?backend, "iptables backend");
    if which_restore(backend).is_none() {
        return Err(ApplyError::ToolMissing {
            tool: "iptables-restore".into(),
        }
        .into());
    }
    let families = families_for(run.ipv6);
    if run.cleanup {
        apply::remove(&host, &families)?;
        // IPv6 rules may remain from an earlier run even when the pod has no IPv6 now;
        // on a node without IPv6 there is nothing to remove, so that is not an error.
        if run.ipv6 == Ipv6Mode::Auto
            && !families.contains(&Family::V6)
            && let Err(e) = apply::remove(&host, &[Family::V6])
        {
            tracing::debug!(error = %e, "no IPv6 rules removed");
        }
        return Ok(());
    }
    apply::install(&host, &settings, &families)?;
    if run.verify {
        let (uid, gid) = probe::effective_ids(Path::new(probe::SELF_STATUS)).unwrap_or((0, 0));
        for family in families {
            let dst = run
                .verify_dst
                .iter()
                .copied()
                .find(|d| Family::of(d.ip()) == family)
                .unwrap_or_else(|| verify::default_sentinel(family));
            verify::verify(&settings, dst, uid, gid, Duration::from_secs(2))?;
        }
    }
    Ok(())
}

fn which_restore(backend: Backend) -> Option<std::path::PathBuf> {
    let variant = match backend {
        Backend::Legacy => "iptables-legacy-restore",
        Backend::Nft => "iptables-nft-restore",
    };
    apply::which(variant).or_else(|| apply::which("iptables-restore"))
}
