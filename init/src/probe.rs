//! Read-only probes of the host through `/proc`: which IPv6 addresses the namespace has,
//! our capabilities and ids, and which legacy x_tables tables the kernel has loaded.
//! Each takes the path it reads, so tests feed it a file of their own.

use std::path::Path;

use crate::model::Family;

/// `/proc/net/if_inet6`: the namespace's IPv6 addresses.
pub const IF_INET6: &str = "/proc/net/if_inet6";
/// `/proc/self/status`: our capabilities and ids.
pub const SELF_STATUS: &str = "/proc/self/status";

/// The file listing the legacy (x_tables) tables loaded for a family.
pub fn legacy_table_names_path(family: Family) -> &'static str {
    match family {
        Family::V4 => "/proc/net/ip_tables_names",
        Family::V6 => "/proc/net/ip6_tables_names",
    }
}

/// Whether a `/proc/net/ip*_tables_names`-style file lists `table`; `None` when
/// the file cannot be read (no legacy x_tables in this kernel, or no `/proc`).
pub fn legacy_table_loaded(names_path: &Path, table: &str) -> Option<bool> {
    let list = std::fs::read_to_string(names_path).ok()?;
    Some(list.lines().any(|t| t.trim() == table))
}

/// Whether a `/proc/net/ip*_tables_names`-style file lists any table at all.
pub fn legacy_tables_loaded(names_path: &Path) -> bool {
    std::fs::read_to_string(names_path).is_ok_and(|l| !l.trim().is_empty())
}

/// Reads a `/proc/net/if_inet6`-style file: one address per line, 32 hex digits, then
/// ifindex, prefix length, scope, flags, interface name.
fn if_inet6(path: &Path) -> Vec<(String, u8, String)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let scope = u8::from_str_radix(f.get(3)?, 16).ok()?;
            Some((f.first()?.to_string(), scope, f.get(5)?.to_string()))
        })
        .collect()
}

/// Whether the namespace has a global-scope IPv6 address on some interface other than
/// `lo` (link-local does not count). A node or pod without IPv6 has none, or no file.
pub fn pod_has_ipv6(if_inet6_path: &Path) -> bool {
    if_inet6(if_inet6_path)
        .iter()
        .any(|(_, scope, ifname)| *scope == 0 && ifname != "lo")
}

pub fn v6_passthrough_present(if_inet6_path: &Path) -> bool {
    if_inet6(if_inet6_path)
        .iter()
        .any(|(addr, _, ifname)| addr == "00000000000000000000000000000006" && ifname == "lo")
}

/// Whether this process holds CAP_NET_ADMIN, from the `CapEff:` line of a
/// `/proc/self/status`-style file (unknown counts as held: the tool will say).
pub fn has_cap_net_admin(status_path: &Path) -> bool {
    const CAP_NET_ADMIN: u32 = 12;
    let Ok(text) = std::fs::read_to_string(status_path) else {
        return true;
    };
    text.lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_none_or(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// The effective uid and gid of this process, from `/proc/self/status`.
pub fn effective_ids(status_path: &Path) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(status_path).ok()?;
    let field = |name: &str| -> Option<u32> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("Uid:")?, field("Gid:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_parsers() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status");
        std::fs::write(
            &status,
            "Uid:\t0\t1000\t0\t0\nGid:\t5\t6\t0\t0\nCapEff:\t0000000000001000\n",
        )
        .unwrap();
        assert!(has_cap_net_admin(&status));
        assert_eq!(effective_ids(&status), Some((1000, 6)));
        std::fs::write(&status, "CapEff:\t0000000000000000\n").unwrap();
        assert!(!has_cap_net_admin(&status));
        let inet6 = dir.path().join("if_inet6");
        std::fs::write(
            &inet6,
            "00000000000000000000000000000001 01 80 10 80       lo\nfe800000000000000000000000000001 02 40 20 80     eth0\n",
        )
        .unwrap();
        assert!(!pod_has_ipv6(&inet6), "loopback and link-local only");
        std::fs::write(
            &inet6,
            "fd000198001800000000000000000001 02 40 00 80     eth0\n00000000000000000000000000000006 01 80 10 80       lo\n",
        )
        .unwrap();
        assert!(pod_has_ipv6(&inet6));
        assert!(v6_passthrough_present(&inet6));
        assert!(!pod_has_ipv6(&dir.path().join("missing")));
    }

    #[test]
    fn legacy_table_names() {
        let dir = tempfile::tempdir().unwrap();
        let names = dir.path().join("names");
        std::fs::write(&names, "filter\nnat\n").unwrap();
        assert_eq!(legacy_table_loaded(&names, "nat"), Some(true));
        assert_eq!(legacy_table_loaded(&names, "raw"), Some(false));
        assert!(legacy_tables_loaded(&names));
        std::fs::write(&names, "filter\n").unwrap();
        assert_eq!(legacy_table_loaded(&names, "nat"), Some(false));
        std::fs::write(&names, "").unwrap();
        assert!(!legacy_tables_loaded(&names));
        let missing = dir.path().join("missing");
        assert_eq!(legacy_table_loaded(&missing, "nat"), None);
        assert!(!legacy_tables_loaded(&missing));
    }
}
