//! Putting rendered rules into the kernel, and everything that touches the host.
//!
//! [`System`] is the small seam: the real implementation ([`Host`]) pipes text to
//! `iptables-restore`/`ip6tables-restore` of the chosen backend; tests use a fake. The
//! orchestration ([`install`], [`remove`]) is written against the trait: per family and
//! table one `--noflush` transaction (nat, then raw with DNS capture), and when one
//! fails every one applied before it is put back as it was, so the pod's tables are
//! never left half-done.

use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::model::{Family, Settings, Table};
use crate::{probe, render};

// The /proc probes live in `probe`; their old paths keep working.
pub use crate::probe::{effective_ids, has_cap_net_admin, pod_has_ipv6};

/// Which iptables flavour writes the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// x_tables (`iptables-legacy-restore`), used with `-w`.
    Legacy,
    /// nf_tables (`iptables-nft-restore`).
    Nft,
}

/// Things that can go wrong while touching the host; each message is one line that
/// names the cause.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{tool} not found on PATH: install the iptables package (apt-get install iptables)")]
    ToolMissing { tool: String },
    #[error(
        "missing CAP_NET_ADMIN: the init container needs the NET_ADMIN (and NET_RAW) capabilities"
    )]
    MissingCapNetAdmin,
    #[error("cannot run {tool}: {source}")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed {
        tool: String,
        status: String,
        stderr: String,
    },
    #[error(
        "{family} {table} rules failed ({cause}); the rules applied just before ({done}) were rolled back"
    )]
    RolledBack {
        family: Family,
        table: Table,
        /// What was put back, e.g. `IPv4 nat, IPv4 raw`.
        done: String,
        cause: Box<ApplyError>,
    },
    #[error(
        "{family} {table} rules failed ({cause}); rolling back the rules applied just before ({done}) also failed ({rollback})"
    )]
    RollbackFailed {
        family: Family,
        table: Table,
        done: String,
        cause: Box<ApplyError>,
        rollback: Box<ApplyError>,
    },
}

/// The host operations mesh-init needs.
pub trait System {
    /// `iptables-save -t <table>` (or ip6tables-save) output.
    fn save(&self, family: Family, table: Table) -> Result<String, ApplyError>;
    /// Feeds `input` to `iptables-restore --noflush` (or ip6tables-restore).
    fn restore(&self, family: Family, input: &str) -> Result<(), ApplyError>;
    /// Adds (or removes) the IPv6 inbound passthrough source `::6/128` on `lo`.
    fn set_v6_passthrough(&self, present: bool) -> Result<(), ApplyError>;
}

/// Collapses a tool's stderr to one line, so errors stay one line.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Try `"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Finds `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The real host: the iptables tools of one backend, and `ip` for `::6`.
#[derive(Debug, Clone)]
pub struct Host {
    pub backend: Backend,
}

impl Host {
    /// `iptables-legacy-restore` etc.; falls back to the plain name when the variant is
    /// not installed (images that ship only one flavour).
    fn tool(&self, family: Family, kind: &str) -> Result<String, ApplyError> {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        let flavour = match self.backend {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
        };
        let variant = format!("{base}-{flavour}-{kind}");
        if which(&variant).is_some() {
            return Ok(variant);
        }
        let plain = format!("{base}-{kind}");
        if which(&plain).is_some() {
            return Ok(plain);
        }
        Err(ApplyError::ToolMissing { tool: plain })
    }

    fn run(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String, ApplyError> {
        let mut child = Command::new(tool)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| match source.kind() {
                ErrorKind::NotFound => ApplyError::ToolMissing {
                    tool: tool.to_owned(),
                },
                _ => ApplyError::Spawn {
                    tool: tool.to_owned(),
                    source,
                },
            })?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A tool that dies early closes the pipe; its stderr says why, below.
            let _ = pipe.write_all(input.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|source| ApplyError::Spawn {
                tool: tool.to_owned(),
                source,
            })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let stderr = one_line(&stderr);
            if stderr.contains("Permission denied") || stderr.contains("Operation not permitted") {
                return Err(ApplyError::MissingCapNetAdmin);
            }
            return Err(ApplyError::ToolFailed {
                tool: tool.to_owned(),
                status: out.status.to_string(),
                stderr,
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl System for Host {
    fn save(&self, family: Family, table: Table) -> Result<String, ApplyError> {
        // Listing a legacy table loads it; when the kernel has no such table here,
        // nothing of ours can be in it, and we leave no table behind by asking.
        if self.backend == Backend::Legacy
            && probe::legacy_table_loaded(
                Path::new(probe::legacy_table_names_path(family)),
                table.name(),
            ) == Some(false)
        {
            return Ok(String::new());
        }
        let tool = self.tool(family, "save")?;
        self.run(&tool, &["-t", table.name()], None)
    }

    fn restore(&self, family: Family, input: &str) -> Result<(), ApplyError> {
        let tool = self.tool(family, "restore")?;
        let mut args = vec!["--noflush"];
        if self.backend == Backend::Legacy {
            // Wait for the xtables lock instead of failing when another tool holds it.
            args.extend(["-w", "10"]);
        }
        tracing::debug!(%family, %tool, "iptables-restore input:\n{input}");
        self.run(&tool, &args, Some(input)).map(|_| ())
    }

    fn set_v6_passthrough(&self, present: bool) -> Result<(), ApplyError> {
        let addr = format!("{}/128", mesh_common::INBOUND_PASSTHROUGH_V6);
        if present {
            self.run("ip", &["-6", "addr", "replace", &addr, "dev", "lo"], None)
                .map(|_| ())
        } else if probe::v6_passthrough_present(Path::new(probe::IF_INET6)) {
            self.run("ip", &["-6", "addr", "del", &addr, "dev", "lo"], None)
                .map(|_| ())
        } else {
            Ok(())
        }
    }
}

fn count_rules(save: &str) -> usize {
    save.lines().filter(|l| l.starts_with("-A ")).count()
}

/// Picks the backend the host already uses: kubelet's hint chains first, then whichever
/// flavour holds more rules; on a tie (a fresh pod), the flavour `iptables` itself is.
pub fn detect_backend() -> Backend {
    let legacy_loaded =
        probe::legacy_tables_loaded(Path::new(probe::legacy_table_names_path(Family::V4)));
    let legacy = if !legacy_loaded {
        String::new()
    } else {
        Host {
            backend: Backend::Legacy,
        }
        .run("iptables-legacy-save", &[], None)
        .unwrap_or_default()
    };
    let nft = Host {
        backend: Backend::Nft,
    }
    .run("iptables-nft-save", &[], None)
    .unwrap_or_default();
    let hint = |s: &str| s.contains(":KUBE-IPTABLES-HINT") || s.contains(":KUBE-KUBELET-CANARY");
    let choice = match (hint(&legacy), hint(&nft)) {
        (true, false) => Backend::Legacy,
        (false, true) => Backend::Nft,
        _ => match count_rules(&legacy).cmp(&count_rules(&nft)) {
            std::cmp::Ordering::Greater => Backend::Legacy,
            std::cmp::Ordering::Less => Backend::Nft,
            std::cmp::Ordering::Equal => default_backend(),
        },
    };
    tracing::debug!(?choice, "iptables backend detected");
    choice
}

fn default_backend() -> Backend {
    let version = Command::new("iptables")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if version.contains("legacy") {
        Backend::Legacy
    } else {
        Backend::Nft
    }
}

/// A transaction that puts our rules in `table` back the way `prior` (a dump of it) had
/// them.
fn restore_prior_text(table: Table, prior: &str, current: &str) -> String {
    let cleanup = render::cleanup(table, &render::our_builtin_rules(current, table));
    if !render::has_ours(prior, table) {
        return cleanup;
    }
    let mut s = cleanup;
    // Re-create instead of delete: drop the -X lines and COMMIT, re-add prior rules.
    s = s
        .lines()
        .filter(|l| !l.starts_with("-X ") && *l != "COMMIT")
        .map(|l| format!("{l}\n"))
        .collect();
    for line in prior.lines() {
        let ours_chain = table
            .our_chains()
            .iter()
            .any(|c| line.starts_with(&format!("-A {c} ")));
        if ours_chain {
            s.push_str(line);
            s.push('\n');
        }
    }
    for line in render::our_builtin_rules(prior, table) {
        s.push_str(&line);
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    s
}

/// What one transaction changes: the table of a family, and that table's dump from
/// just before.
struct Done {
    family: Family,
    table: Table,
    prior: String,
}

/// The transaction that brings `table` of `family` to what `settings` want, given its
/// dump `prior`: our rules (replacing ours), or, where `settings` want nothing there
/// (the raw table without DNS capture), the removal of what an earlier run left; `None`
/// when there is nothing to change.
fn transaction(settings: &Settings, family: Family, table: Table, prior: &str) -> Option<String> {
    let existing = render::our_builtin_rules(prior, table);
    let wanted = match table {
        Table::Nat => Some(settings.ruleset(family)),
        Table::Raw => settings.zone_ruleset(family),
    };
    match wanted {
        Some(rs) => Some(render::install(&rs, &existing)),
        None if render::has_ours(prior, table) => Some(render::cleanup(table, &existing)),
        None => None,
    }
}

/// Puts back, last first, every transaction in `done`; the first error stops it.
fn roll_back(sys: &dyn System, done: &[Done]) -> Result<(), ApplyError> {
    for d in done.iter().rev() {
        let now = sys.save(d.family, d.table)?;
        sys.restore(d.family, &restore_prior_text(d.table, &d.prior, &now))?;
    }
    Ok(())
}

/// Installs `settings` for each family in `families`: per family the nat table, then
/// the raw table (DNS capture's conntrack zones, or the removal of ours), each one
/// transaction. When one fails, every one applied before it is put back as it was.
pub fn install(
    sys: &dyn System,
    settings: &Settings,
    families: &[Family],
) -> Result<(), ApplyError> {
    let mut done: Vec<Done> = Vec::new();
    for &family in families {
        for table in [Table::Nat, Table::Raw] {
            let step = || -> Result<Option<String>, ApplyError> {
                let prior = sys.save(family, table)?;
                let Some(text) = transaction(settings, family, table, &prior) else {
                    return Ok(None);
                };
                if family == Family::V6 && table == Table::Nat {
                    // Before the rules: if IPv6 cannot even hold `::6`, nothing has changed.
                    sys.set_v6_passthrough(true)?;
                }
                sys.restore(family, &text)?;
                Ok(Some(prior))
            };
            match step() {
                Ok(Some(prior)) => {
                    tracing::info!(%family, %table, "rules installed");
                    done.push(Done {
                        family,
                        table,
                        prior,
                    });
                }
                Ok(None) => {}
                Err(cause) => {
                    if done.is_empty() {
                        return Err(cause);
                    }
                    let what = done
                        .iter()
                        .map(|d| format!("{} {}", d.family, d.table))
                        .collect::<Vec<_>>()
                        .join(", ");
                    return Err(match roll_back(sys, &done) {
                        Ok(()) => ApplyError::RolledBack {
                            family,
                            table,
                            done: what,
                            cause: Box::new(cause),
                        },
                        Err(e) => ApplyError::RollbackFailed {
                            family,
                            table,
                            done: what,
                            cause: Box::new(cause),
                            rollback: Box::new(e),
                        },
                    });
                }
            }
        }
    }
    Ok(())
}

/// Removes our chains and built-in rules (nat and raw; and `::6` on lo) for each family.
pub fn remove(sys: &dyn System, families: &[Family]) -> Result<(), ApplyError> {
    for &family in families {
        for table in [Table::Raw, Table::Nat] {
            let now = sys.save(family, table)?;
            // Nothing of ours: touch nothing (not even create an empty table).
            if render::has_ours(&now, table) {
                sys.restore(
                    family,
                    &render::cleanup(table, &render::our_builtin_rules(&now, table)),
                )?;
            }
        }
        if family == Family::V6 {
            sys.set_v6_passthrough(false)?;
        }
        tracing::info!(%family, "rules removed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Flags;
    use std::cell::RefCell;

    const FOREIGN_NAT: &str =
        "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -d 10.0.0.1/32 -j RETURN\nCOMMIT\n";

    #[derive(Default)]
    struct Fake {
        /// A restore whose input holds this text fails (`(family, text)`).
        fail: Option<(Family, &'static str)>,
        /// What the raw table holds now (default: nothing).
        raw: String,
        calls: RefCell<Vec<String>>,
    }

    impl System for Fake {
        fn save(&self, family: Family, table: Table) -> Result<String, ApplyError> {
            self.calls
                .borrow_mut()
                .push(format!("save {family} {table}"));
            Ok(match table {
                Table::Nat => FOREIGN_NAT.into(),
                Table::Raw => self.raw.clone(),
            })
        }
        fn restore(&self, family: Family, input: &str) -> Result<(), ApplyError> {
            let table = input.lines().next().unwrap_or_default();
            self.calls.borrow_mut().push(format!(
                "restore {family} {table} {}",
                input.lines().count()
            ));
            if let Some((f, text)) = self.fail
                && f == family
                && input.contains(text)
            {
                return Err(ApplyError::ToolFailed {
                    tool: "iptables-restore".into(),
                    status: "exit status: 1".into(),
                    stderr: "no such table".into(),
                });
            }
            Ok(())
        }
        fn set_v6_passthrough(&self, present: bool) -> Result<(), ApplyError> {
            self.calls.borrow_mut().push(format!("::6 {present}"));
            Ok(())
        }
    }

    fn dns() -> Settings {
        Settings::from_flags(&Flags {
            dns_capture: true,
            ..Flags::default()
        })
        .unwrap()
    }

    fn restores(fake: &Fake) -> Vec<String> {
        fake.calls
            .borrow()
            .iter()
            .filter(|c| c.starts_with("restore"))
            .cloned()
            .collect()
    }

    #[test]
    fn second_family_failure_rolls_back_the_first() {
        let fake = Fake {
            fail: Some((Family::V6, "-A ISTIO_OUTPUT")),
            ..Fake::default()
        };
        let s = Settings::from_flags(&Flags::default()).unwrap();
        let err = install(&fake, &s, &[Family::V4, Family::V6]).unwrap_err();
        assert!(matches!(err, ApplyError::RolledBack { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("IPv6 nat rules failed") && msg.contains("(IPv4 nat) were rolled back"),
            "{msg}"
        );
        let calls = fake.calls.borrow();
        assert_eq!(calls[0], "save IPv4 nat");
        assert!(
            calls.last().unwrap().starts_with("restore IPv4 *nat"),
            "{calls:?}"
        );
    }

    #[test]
    fn one_transaction_per_family_and_passthrough_for_v6() {
        let fake = Fake::default();
        let s = Settings::from_flags(&Flags::default()).unwrap();
        install(&fake, &s, &[Family::V4, Family::V6]).unwrap();
        let r = restores(&fake);
        assert_eq!(
            r.len(),
            2,
            "no DNS capture: the raw table is not written: {r:?}"
        );
        assert!(fake.calls.borrow().contains(&"::6 true".to_string()));
    }

    #[test]
    fn dns_capture_adds_a_raw_transaction_per_family() {
        let fake = Fake::default();
        install(&fake, &dns(), &[Family::V4, Family::V6]).unwrap();
        let r: Vec<String> = restores(&fake)
            .iter()
            .map(|c| c.rsplit_once(' ').unwrap().0.to_owned())
            .collect();
        assert_eq!(
            r,
            [
                "restore IPv4 *nat",
                "restore IPv4 *raw",
                "restore IPv6 *nat",
                "restore IPv6 *raw"
            ]
        );
    }

    #[test]
    fn a_failing_raw_table_rolls_back_the_nat_rules_before_it() {
        // E.g. a kernel without the CT target: the pod must not keep a capture whose DNS
        // zones are missing, nor half of it.
        let fake = Fake {
            fail: Some((Family::V6, "-j CT --zone")),
            ..Fake::default()
        };
        let err = install(&fake, &dns(), &[Family::V4, Family::V6]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("IPv6 raw rules failed")
                && msg.contains("(IPv4 nat, IPv4 raw, IPv6 nat) were rolled back"),
            "{msg}"
        );
        // Put back last first: IPv6 nat, IPv4 raw, IPv4 nat, each to what it held before
        // (raw: nothing of ours, so our raw chains are deleted).
        let r = restores(&fake);
        let tail: Vec<&str> = r[r.len() - 3..]
            .iter()
            .map(|c| c.rsplit_once(' ').unwrap().0)
            .collect();
        assert_eq!(
            tail,
            [
                "restore IPv6 *nat",
                "restore IPv4 *raw",
                "restore IPv4 *nat"
            ]
        );
    }

    #[test]
    fn without_dns_capture_a_rerun_removes_our_old_zones() {
        let ours = "*raw\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT_DNS - [0:0]\n-A OUTPUT -m comment --comment mesh-init -j ISTIO_OUTPUT_DNS\n-A OUTPUT -j NOTRACK_SOMETHING\nCOMMIT\n";
        let s = Settings::from_flags(&Flags::default()).unwrap();
        let text = transaction(&s, Family::V4, Table::Raw, ours).unwrap();
        assert!(text.starts_with("*raw\n"), "{text}");
        assert!(
            text.contains("-D OUTPUT -m comment --comment mesh-init -j ISTIO_OUTPUT_DNS\n"),
            "{text}"
        );
        assert!(text.contains("-X ISTIO_OUTPUT_DNS\n"), "{text}");
        assert!(
            !text.contains("NOTRACK_SOMETHING"),
            "foreign rules stay: {text}"
        );
        assert_eq!(
            transaction(&s, Family::V4, Table::Raw, "*raw\nCOMMIT\n"),
            None,
            "nothing of ours, nothing wanted: the raw table is not touched"
        );
    }

    #[test]
    fn rollback_text_restores_prior_rules() {
        let prior = "*nat\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -m comment --comment mesh-init -j ISTIO_OUTPUT\n-A ISTIO_OUTPUT -d 1.2.3.4/32 -j RETURN\nCOMMIT\n";
        let now = "*nat\n-A OUTPUT -m comment --comment mesh-init -j ISTIO_OUTPUT\nCOMMIT\n";
        let t = restore_prior_text(Table::Nat, prior, now);
        assert!(t.contains("-D OUTPUT -m comment --comment mesh-init -j ISTIO_OUTPUT\n"));
        assert!(t.contains("-A ISTIO_OUTPUT -d 1.2.3.4/32 -j RETURN\n"));
        assert!(t.contains("-A OUTPUT -m comment --comment mesh-init -j ISTIO_OUTPUT\n"));
        assert!(!t.contains("-X "));
        let fresh = restore_prior_text(Table::Nat, "*nat\nCOMMIT\n", now);
        assert!(fresh.contains("-X ISTIO_OUTPUT"));
    }
}
