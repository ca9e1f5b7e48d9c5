//! Pure rendering: a [`Ruleset`] (plus what is installed now) -> `iptables-restore` input.
//!
//! Every transaction is meant for `iptables-restore --noflush` and holds one table (nat,
//! or raw for DNS capture's conntrack zones): it declares our chains of that table
//! (which creates them, or flushes them if they exist), deletes our previous rules from
//! the built-in chains, and adds the new ones, all in one commit. So a re-run yields the
//! same ruleset, a failure changes nothing, and rules that other tools put in the table
//! are never touched. Rules are written in the order and spelling
//! `iptables-save` prints them, so saved and rendered text can be compared line by line.

use std::fmt::Write as _;

use crate::model::{Match, RULE_COMMENT, Rule, Ruleset, Table, Target};

/// Text of one rule after `-A CHAIN` / `-I CHAIN N` (matches in `iptables-save` order).
pub fn rule_spec(rule: &Rule, builtin: bool) -> String {
    let mut s = String::new();
    let m = &rule.matches;
    for x in m {
        if let Match::Src(n) = x {
            let _ = write!(s, " -s {n}");
        }
    }
    for x in m {
        match x {
            Match::Dst(n) => {
                let _ = write!(s, " -d {n}");
            }
            Match::NotDst(n) => {
                let _ = write!(s, " ! -d {n}");
            }
            _ => {}
        }
    }
    for x in m {
        if let Match::InIface(i) = x {
            let _ = write!(s, " -i {i}");
        }
    }
    for x in m {
        if let Match::OutIface(i) = x {
            let _ = write!(s, " -o {i}");
        }
    }
    let proto = if m.contains(&Match::Tcp) {
        Some("tcp")
    } else if m.contains(&Match::Udp) {
        Some("udp")
    } else {
        None
    };
    if let Some(p) = proto {
        let _ = write!(s, " -p {p}");
    }
    for x in m {
        // iptables-save names the protocol's match module before its options.
        match x {
            Match::DPort(p) => {
                let _ = write!(s, " -m {} --dport {p}", proto.unwrap_or("tcp"));
            }
            Match::NotDPort(p) => {
                let _ = write!(s, " -m {} ! --dport {p}", proto.unwrap_or("tcp"));
            }
            Match::SPort(p) => {
                let _ = write!(s, " -m {} --sport {p}", proto.unwrap_or("tcp"));
            }
            _ => {}
        }
    }
    for x in m {
        match x {
            Match::Uid(u) => {
                let _ = write!(s, " -m owner --uid-owner {u}");
            }
            Match::NotUid(u) => {
                let _ = write!(s, " -m owner ! --uid-owner {u}");
            }
            Match::Gid(g) => {
                let _ = write!(s, " -m owner --gid-owner {g}");
            }
            Match::NotGid(g) => {
                let _ = write!(s, " -m owner ! --gid-owner {g}");
            }
            _ => {}
        }
    }
    if builtin {
        let _ = write!(s, " -m comment --comment {RULE_COMMENT}");
    }
    match rule.target {
        Target::Return => s.push_str(" -j RETURN"),
        Target::Jump(c) => {
            let _ = write!(s, " -j {c}");
        }
        Target::Redirect(p) => {
            let _ = write!(s, " -j REDIRECT --to-ports {p}");
        }
        Target::CtZone(z) => {
            let _ = write!(s, " -j CT --zone {z}");
        }
    }
    s
}

/// Our rules in the built-in chains of `table` in an `iptables-save` dump: the ones
/// with our comment, and any jump into an `ISTIO_*` chain we own there (so rules left by
/// istio-iptables itself are replaced too, never duplicated).
pub fn our_builtin_rules(save: &str, table: Table) -> Vec<String> {
    let mut in_table = false;
    let mut out = Vec::new();
    for line in save.lines() {
        let line = line.trim_end();
        if let Some(name) = line.strip_prefix('*') {
            in_table = name == table.name();
            continue;
        }
        if !in_table {
            continue;
        }
        let builtin = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]
            .iter()
            .any(|c| line.starts_with(&format!("-A {c} ")));
        if !builtin {
            continue;
        }
        let ours = line.contains(&format!("--comment {RULE_COMMENT} "))
            || line.contains(&format!("--comment \"{RULE_COMMENT}\""))
            || table
                .our_chains()
                .iter()
                .any(|c| line.ends_with(&format!(" -j {c}")));
        if ours {
            out.push(line.to_owned());
        }
    }
    out
}

/// Whether `table` in a dump holds anything of ours (a chain or a built-in rule).
pub fn has_ours(save: &str, table: Table) -> bool {
    if !our_builtin_rules(save, table).is_empty() {
        return true;
    }
    let mut in_table = false;
    save.lines().any(|l| {
        if let Some(name) = l.strip_prefix('*') {
            in_table = name.trim_end() == table.name();
            return false;
        }
        in_table
            && table
                .our_chains()
                .iter()
                .any(|c| l.starts_with(&format!(":{c} ")))
    })
}

fn header(s: &mut String, table: Table, existing: &[String]) {
    let _ = writeln!(s, "*{table}");
    for c in table.our_chains() {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    for line in existing {
        if let Some(rest) = line.strip_prefix("-A ") {
            let _ = writeln!(s, "-D {rest}");
        }
    }
}

/// The install transaction of `rs`'s table. `existing` are our current built-in rules
/// there ([`our_builtin_rules`] of a fresh dump); empty for a fresh pod and for
/// `--dry-run`.
pub fn install(rs: &Ruleset, existing: &[String]) -> String {
    let mut s = String::new();
    header(&mut s, rs.table, existing);
    for (chain, rules) in &rs.chains {
        for r in rules {
            let _ = writeln!(s, "-A {chain}{}", rule_spec(r, false));
        }
    }
    for (i, r) in rs.prerouting.iter().enumerate() {
        if i < rs.prerouting_inserted {
            let _ = writeln!(s, "-I PREROUTING {}{}", i + 1, rule_spec(r, true));
        } else {
            let _ = writeln!(s, "-A PREROUTING{}", rule_spec(r, true));
        }
    }
    for r in &rs.output {
        let _ = writeln!(s, "-A OUTPUT{}", rule_spec(r, true));
    }
    s.push_str("COMMIT\n");
    s
}

/// The cleanup transaction of `table`: our built-in rules go, our chains are flushed and
/// deleted, nothing else changes. Declaring a chain that does not exist creates it just
/// before it is deleted, so this works whatever is installed now.
pub fn cleanup(table: Table, existing: &[String]) -> String {
    let mut s = String::new();
    header(&mut s, table, existing);
    for c in table.our_chains() {
        let _ = writeln!(s, "-X {c}");
    }
    s.push_str("COMMIT\n");
    s
}

/// What `iptables-save -t <table>` would show of our rules once `rs` is installed, in
/// dump order: chain declarations aside, our chains' rules, then our built-in rules.
/// Used to check that the kernel holds exactly what we rendered.
pub fn expected_saved_rules(rs: &Ruleset) -> Vec<String> {
    let mut v = Vec::new();
    for r in &rs.prerouting {
        v.push(format!("-A PREROUTING{}", rule_spec(r, true)));
    }
    for r in &rs.output {
        v.push(format!("-A OUTPUT{}", rule_spec(r, true)));
    }
    for (chain, rules) in &rs.chains {
        for r in rules {
            v.push(format!("-A {chain}{}", rule_spec(r, false)));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Family, Flags, Settings};

    #[test]
    fn reinstall_deletes_previous_builtin_rules_in_the_same_transaction() {
        let s = Settings::from_flags(&Flags::default()).unwrap();
        let rs = s.ruleset(Family::V4);
        let first = install(&rs, &[]);
        let save = format!(
            "*nat\n:PREROUTING ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A PREROUTING -d 10.0.0.1/32 -j RETURN\n{}COMMIT\n",
            first
                .lines()
                .filter(|l| l.starts_with("-A PREROUTING") || l.starts_with("-A OUTPUT"))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        );
        let existing = our_builtin_rules(&save, Table::Nat);
        assert_eq!(existing.len(), 2, "{existing:?}");
        let again = install(&rs, &existing);
        assert!(
            again
                .contains("-D PREROUTING -p tcp -m comment --comment mesh-init -j ISTIO_INBOUND\n")
        );
        assert!(again.contains("-D OUTPUT -m comment --comment mesh-init -j ISTIO_OUTPUT\n"));
        assert!(!again.contains("10.0.0.1"), "foreign rules are never named");
        assert!(has_ours(&save, Table::Nat));
        assert!(
            !has_ours(&save, Table::Raw),
            "the nat dump's chains are not raw's"
        );
        assert!(!has_ours(
            "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j KUBE\nCOMMIT\n",
            Table::Nat
        ));
    }

    #[test]
    fn istio_leftover_jumps_are_ours_too() {
        let save = "*nat\n-A OUTPUT -j ISTIO_OUTPUT\n-A OUTPUT -j ISTIO_OUTPUTX\n-A POSTROUTING -j MASQUERADE\nCOMMIT\n";
        assert_eq!(
            our_builtin_rules(save, Table::Nat),
            vec!["-A OUTPUT -j ISTIO_OUTPUT"]
        );
    }

    #[test]
    fn cleanup_deletes_chains_last() {
        let text = cleanup(
            Table::Nat,
            &["-A OUTPUT -m comment --comment mesh-init -j ISTIO_OUTPUT".into()],
        );
        let d = text.find("-D OUTPUT").unwrap();
        let x = text.find("-X ISTIO_OUTPUT").unwrap();
        assert!(d < x);
        assert!(text.ends_with("COMMIT\n"));
    }
}
