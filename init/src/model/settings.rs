//! Flag validation: the raw istio-iptables strings ([`Flags`]) become typed
//! [`Settings`] once, and every problem is an error naming its flag.
//!
//! Port and CIDR lists follow the one list grammar of [`mesh_common::lists`], shared with
//! the injector's annotation checks, so a value one accepts the other accepts too. On top
//! of it mesh-init drops duplicates and stores networks by their network address (as
//! iptables does), so re-runs, `explain` and `iptables-save` agree.

use std::fmt;

use ipnet::IpNet;
use mesh_common::contract::init::{self as contract, Flag};
use mesh_common::lists::{self, List, ListError, Star};

/// A flag as errors name it: `-x/--exclude-outbound-cidrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagName(pub Flag);

impl fmt::Display for FlagName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.0.short, self.0.long)
    }
}

/// A flag value that cannot be used. Each variant names the flag, so the one-line error
/// an operator sees points at the argument to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModelError {
    /// A port or CIDR list (or a single port) that the shared list grammar refuses.
    #[error("{flag}: {source}")]
    List {
        flag: FlagName,
        #[source]
        source: ListError,
    },
    #[error("{flag}: '*' is not supported here; list the ports")]
    StarUnsupported { flag: FlagName },
    #[error("{flag}: invalid id {value:?} (numeric uid/gid expected; names are not looked up)")]
    InvalidId { flag: FlagName, value: String },
    #[error("{flag}: at least one numeric id is required")]
    NoIds { flag: FlagName },
    #[error("-m/--mode: TPROXY interception is not supported yet; use REDIRECT (the default)")]
    TproxyUnsupported,
    #[error("-m/--mode: unknown mode {0:?} (expected REDIRECT)")]
    UnknownMode(String),
    #[error("{flag}: invalid interface name {value:?}")]
    InvalidInterface { flag: FlagName, value: String },
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
    /// `--dns-capture` (istio-iptables' `--redirect-dns`).
    pub dns_capture: bool,
}

impl Default for Flags {
    /// The values `istio-init` is injected with.
    fn default() -> Flags {
        Flags {
            proxy_port: mesh_common::PROXY_OUTBOUND_PORT.to_string(),
            inbound_capture_port: mesh_common::PROXY_INBOUND_PORT.to_string(),
            proxy_uid: mesh_common::PROXY_UID.to_string(),
            proxy_gid: None,
            mode: contract::MODE_REDIRECT.into(),
            inbound_ports: "*".into(),
            exclude_inbound_ports: String::new(),
            outbound_ports: String::new(),
            exclude_outbound_ports: String::new(),
            include_outbound_cidrs: "*".into(),
            exclude_outbound_cidrs: String::new(),
            kube_virt_interfaces: String::new(),
            dns_capture: false,
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
    /// Whether some `-i` entry, as written, has a loopback address (either family):
    /// istio-iptables' `HasLoopBackIP`. Then app traffic on `lo` is not returned early,
    /// so the included loopback destinations can be captured.
    pub include_outbound_loopback: bool,
    pub exclude_outbound: Vec<IpNet>,
    pub kube_virt_interfaces: Vec<String>,
    /// Redirect the app's DNS (UDP and TCP port 53) to [`mesh_common::DNS_CAPTURE_PORT`].
    pub dns_capture: bool,
}

/// Keeps the first of each value, in order.
pub(crate) fn dedup<T: PartialEq>(v: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

fn list_err(flag: Flag) -> impl Fn(ListError) -> ModelError {
    move |source| ModelError::List {
        flag: FlagName(flag),
        source,
    }
}

/// The items of a list parsed with [`Star::Refused`] (which never yields `*`).
fn refused_items<T>(flag: Flag, list: List<T>) -> Result<Vec<T>, ModelError> {
    match list {
        List::Items(v) => Ok(v),
        List::All => Err(list_err(flag)(ListError::StarInExclude)),
    }
}

fn port(flag: Flag, s: &str) -> Result<u16, ModelError> {
    lists::port(s).map_err(list_err(flag))
}

/// A port list without `*` (refused as in an exclude list), duplicates dropped.
fn port_list(flag: Flag, s: &str) -> Result<Vec<u16>, ModelError> {
    let list = lists::ports(s, Star::Refused).map_err(list_err(flag))?;
    Ok(dedup(refused_items(flag, list)?))
}

/// A CIDR as iptables stores it: the network address (`10.1.2.3/8` is `10.0.0.0/8`).
fn networks(v: Vec<IpNet>) -> Vec<IpNet> {
    dedup(v.into_iter().map(|n| n.trunc()).collect())
}

fn ids(flag: Flag, s: &str) -> Result<Vec<u32>, ModelError> {
    let invalid = |i: &str| ModelError::InvalidId {
        flag: FlagName(flag),
        value: i.to_owned(),
    };
    let mut out = Vec::new();
    for i in lists::items(s) {
        // Only plain decimal digits: no sign, no names (no NSS look-up in an init container).
        if !i.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(i));
        }
        out.push(i.parse::<u32>().map_err(|_| invalid(i))?);
    }
    if out.is_empty() {
        return Err(ModelError::NoIds {
            flag: FlagName(flag),
        });
    }
    Ok(dedup(out))
}

fn interface(flag: Flag, s: &str) -> Result<String, ModelError> {
    let ok = s.len() <= 15
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'"' && b != b'\'');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(ModelError::InvalidInterface {
            flag: FlagName(flag),
            value: s.to_owned(),
        })
    }
}

impl Settings {
    /// Validates every flag; the first problem found is returned, naming its flag.
    pub fn from_flags(f: &Flags) -> Result<Settings, ModelError> {
        match f.mode.trim() {
            m if m == contract::MODE_REDIRECT || m.is_empty() => {}
            m if m.eq_ignore_ascii_case("TPROXY") => return Err(ModelError::TproxyUnsupported),
            m => return Err(ModelError::UnknownMode(m.to_owned())),
        }
        let proxy_port = port(contract::PROXY_PORT, &f.proxy_port)?;
        let inbound_capture_port = port(contract::INBOUND_CAPTURE_PORT, &f.inbound_capture_port)?;
        let proxy_uids = ids(contract::PROXY_UID, &f.proxy_uid)?;
        let proxy_gids = match &f.proxy_gid {
            Some(g) if lists::items(g).next().is_some() => ids(contract::PROXY_GID, g)?,
            _ => proxy_uids.clone(),
        };
        let inbound = match lists::ports(&f.inbound_ports, Star::Allowed)
            .map_err(list_err(contract::INBOUND_PORTS))?
        {
            List::All => PortSet::All,
            List::Items(v) if v.is_empty() => PortSet::None,
            List::Items(v) => PortSet::List(dedup(v)),
        };
        let exclude_inbound_ports =
            port_list(contract::EXCLUDE_INBOUND_PORTS, &f.exclude_inbound_ports)?;
        // An include list, but istio-iptables has no "all ports" here: say so, rather
        // than call it an exclude list.
        if lists::items(&f.outbound_ports).any(|i| i == "*") {
            return Err(ModelError::StarUnsupported {
                flag: FlagName(contract::OUTBOUND_PORTS),
            });
        }
        let include_outbound_ports = port_list(contract::OUTBOUND_PORTS, &f.outbound_ports)?;
        let exclude_outbound_ports =
            port_list(contract::EXCLUDE_OUTBOUND_PORTS, &f.exclude_outbound_ports)?;
        let (include_outbound, include_outbound_loopback) =
            match lists::cidrs(&f.include_outbound_cidrs, Star::Allowed)
                .map_err(list_err(contract::INCLUDE_OUTBOUND_CIDRS))?
            {
                List::All => (CidrSet::All, false),
                List::Items(v) => {
                    let loopback = v.iter().any(|n| n.addr().is_loopback());
                    (CidrSet::List(networks(v)), loopback)
                }
            };
        let flag = contract::EXCLUDE_OUTBOUND_CIDRS;
        let exclude_outbound = networks(refused_items(
            flag,
            lists::cidrs(&f.exclude_outbound_cidrs, Star::Refused).map_err(list_err(flag))?,
        )?);
        let mut kube_virt_interfaces = Vec::new();
        for i in lists::items(&f.kube_virt_interfaces) {
            kube_virt_interfaces.push(interface(contract::KUBE_VIRT_INTERFACES, i)?);
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
            include_outbound_loopback,
            exclude_outbound,
            kube_virt_interfaces: dedup(kube_virt_interfaces),
            dns_capture: f.dns_capture,
        })
    }
}

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
            (Box::new(|f| f.outbound_ports = "*".into()), "-q/"),
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
    fn host_bits_are_normalised() {
        let s = flags(|f| f.exclude_outbound_cidrs = "10.1.2.3/8,192.0.2.7/32".into()).unwrap();
        assert_eq!(
            s.exclude_outbound,
            vec![
                "10.0.0.0/8".parse().unwrap(),
                "192.0.2.7/32".parse().unwrap()
            ]
        );
    }

    #[test]
    fn duplicates_are_dropped_after_normalising() {
        let s = flags(|f| {
            f.exclude_outbound_cidrs = "10.0.0.0/8,10.9.9.9/8".into();
            f.exclude_inbound_ports = "8080,8080".into();
        })
        .unwrap();
        assert_eq!(s.exclude_outbound, vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(s.exclude_inbound_ports, vec![8080]);
    }

    #[test]
    fn bare_addresses_are_refused_naming_the_flag_and_the_fix() {
        for (set, flag, fix) in [
            (
                (|f: &mut Flags| f.exclude_outbound_cidrs = "10.0.0.1".into()) as fn(&mut Flags),
                "-x/--exclude-outbound-cidrs",
                "10.0.0.1/32",
            ),
            (
                |f: &mut Flags| f.include_outbound_cidrs = "10.0.0.0/8,fd00::1".into(),
                "-i/--include-outbound-cidrs",
                "fd00::1/128",
            ),
        ] {
            let err = flags(set).unwrap_err();
            assert!(
                matches!(
                    err,
                    ModelError::List {
                        source: ListError::BareAddress(..),
                        ..
                    }
                ),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(msg.starts_with(flag), "{msg}");
            assert!(msg.contains(fix), "{msg}");
        }
    }

    #[test]
    fn loopback_in_the_include_list_is_noted_as_written() {
        let s = flags(|f| f.include_outbound_cidrs = "10.0.0.0/8".into()).unwrap();
        assert!(!s.include_outbound_loopback);
        let s = flags(|f| f.include_outbound_cidrs = "127.1.2.3/32".into()).unwrap();
        assert!(s.include_outbound_loopback);
        let s = flags(|f| f.include_outbound_cidrs = "::1/128".into()).unwrap();
        assert!(s.include_outbound_loopback);
        // 0.0.0.0/0 contains 127.0.0.1, but its address is not loopback (as in Istio).
        let s = flags(|f| f.include_outbound_cidrs = "0.0.0.0/0".into()).unwrap();
        assert!(!s.include_outbound_loopback);
    }
}
