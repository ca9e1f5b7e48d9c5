//! The istio-iptables list grammar, shared by the injector's annotation checks and
//! `mesh-init`'s flags, so a value one side accepts the other accepts too.
//!
//! A list is comma-separated; items are trimmed and empty items are ignored (`6000,7000,`
//! is two ports, `""` is an empty list). `*` alone means "all" where the list allows it
//! (include lists) and is refused in exclude lists; `*` mixed with other items is refused.
//!
//! CIDRs must carry a prefix length: a bare address (`10.0.0.1`) is refused with a hint to
//! write `10.0.0.1/32`. Istio's injector rejects bare addresses in its annotations, and the
//! injector is what users talk to; `mesh-init` follows the same grammar so that the two can
//! never disagree about a value.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// Whether `*` (alone) is allowed in a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Star {
    /// Include lists: `*` means all.
    Allowed,
    /// Exclude lists: `*` is an error.
    Refused,
}

/// A parsed list: `*` or the items, in the order written (duplicates kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum List<T> {
    /// `*`.
    All,
    /// The items; empty for an empty list.
    Items(Vec<T>),
}

impl<T: fmt::Display> List<T> {
    /// The list as a flag value: `*`, or the items joined with `,` (empty for none).
    pub fn to_arg(&self) -> String {
        match self {
            List::All => "*".to_owned(),
            List::Items(items) => {
                let mut out = String::new();
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&item.to_string());
                }
                out
            }
        }
    }
}

impl<T> List<T> {
    /// True for `*`.
    pub fn is_all(&self) -> bool {
        matches!(self, List::All)
    }
}

/// Why a list cannot be used. The caller adds which flag or annotation it came from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    #[error("`*` is not allowed in an exclude list")]
    StarInExclude,
    #[error("`*` cannot be combined with other {0}")]
    StarMixed(&'static str),
    #[error("{0:?} is not a port (1-65535)")]
    Port(String),
    #[error("{0:?} is not a CIDR (like 10.0.0.0/8 or fd00::/8)")]
    Cidr(String),
    #[error("{0:?} is an address, not a CIDR: write {0}/{1} for this one address")]
    BareAddress(String, u8),
}

/// Comma-separated items, trimmed, empty ones dropped.
pub fn items(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|i| !i.is_empty())
}

/// The items of `s`, or `None` for `*`.
fn star_or_items<'a>(
    s: &'a str,
    star: Star,
    what: &'static str,
) -> Result<Option<Vec<&'a str>>, ListError> {
    let all: Vec<&str> = items(s).collect();
    if !all.contains(&"*") {
        return Ok(Some(all));
    }
    if star == Star::Refused {
        return Err(ListError::StarInExclude);
    }
    if all.len() > 1 {
        return Err(ListError::StarMixed(what));
    }
    Ok(None)
}

/// One port, 1-65535, plain decimal.
pub fn port(s: &str) -> Result<u16, ListError> {
    let t = s.trim();
    match t.parse::<u16>() {
        Ok(p) if p != 0 && t.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(ListError::Port(t.to_owned())),
    }
}

/// One CIDR with its prefix length; host bits are kept as written.
pub fn cidr(s: &str) -> Result<IpNet, ListError> {
    let t = s.trim();
    if !t.contains('/') {
        if let Ok(ip) = t.parse::<IpAddr>() {
            let len = if ip.is_ipv4() { 32 } else { 128 };
            return Err(ListError::BareAddress(t.to_owned(), len));
        }
        return Err(ListError::Cidr(t.to_owned()));
    }
    t.parse::<IpNet>()
        .map_err(|_| ListError::Cidr(t.to_owned()))
}

/// A port list (`6000,7000`, or `*` where allowed).
pub fn ports(s: &str, star: Star) -> Result<List<u16>, ListError> {
    match star_or_items(s, star, "ports")? {
        None => Ok(List::All),
        Some(items) => items
            .into_iter()
            .map(port)
            .collect::<Result<_, _>>()
            .map(List::Items),
    }
}

/// A CIDR list, IPv4 and IPv6 mixed (`10.0.0.0/8,fd00::/8`, or `*` where allowed).
pub fn cidrs(s: &str, star: Star) -> Result<List<IpNet>, ListError> {
    match star_or_items(s, star, "ranges")? {
        None => Ok(List::All),
        Some(items) => items
            .into_iter()
            .map(cidr)
            .collect::<Result<_, _>>()
            .map(List::Items),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_trim_skip_empty_and_keep_order() {
        assert_eq!(
            ports(" 7000, 6000,,", Star::Refused),
            Ok(List::Items(vec![7000, 6000]))
        );
        assert_eq!(ports("", Star::Refused), Ok(List::Items(vec![])));
        assert_eq!(ports("*", Star::Allowed), Ok(List::All));
        assert_eq!(
            ports("*", Star::Allowed).map(|l| l.to_arg()),
            Ok("*".into())
        );
        assert_eq!(
            ports("1,65535", Star::Refused).map(|l| l.to_arg()),
            Ok("1,65535".into())
        );
    }

    #[test]
    fn bad_ports_name_the_item() {
        for bad in ["0", "65536", "-1", "+80", "http", "80.0"] {
            assert_eq!(
                ports(bad, Star::Allowed),
                Err(ListError::Port(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(ports("*", Star::Refused), Err(ListError::StarInExclude));
        assert_eq!(
            ports("*,80", Star::Allowed),
            Err(ListError::StarMixed("ports"))
        );
        assert_eq!(
            ListError::Port("x".into()).to_string(),
            "\"x\" is not a port (1-65535)"
        );
    }

    #[test]
    fn cidrs_need_a_prefix_length() {
        assert_eq!(
            cidrs("10.0.0.0/8, fd00::/8", Star::Allowed).map(|l| l.to_arg()),
            Ok("10.0.0.0/8,fd00::/8".into())
        );
        assert_eq!(cidrs("*", Star::Allowed), Ok(List::All));
        assert_eq!(cidrs("*", Star::Refused), Err(ListError::StarInExclude));
        assert_eq!(
            cidrs("10.0.0.0/8,*", Star::Allowed),
            Err(ListError::StarMixed("ranges"))
        );
        let e = cidrs("10.0.0.1", Star::Refused).unwrap_err();
        assert_eq!(e, ListError::BareAddress("10.0.0.1".into(), 32));
        assert_eq!(
            e.to_string(),
            "\"10.0.0.1\" is an address, not a CIDR: write 10.0.0.1/32 for this one address"
        );
        assert_eq!(
            cidrs("fd00::1", Star::Refused),
            Err(ListError::BareAddress("fd00::1".into(), 128))
        );
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "example.com/8",
            "10.0.0/8",
            "banana",
        ] {
            assert_eq!(
                cidrs(bad, Star::Allowed),
                Err(ListError::Cidr(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn to_arg_round_trips() {
        for s in [
            "",
            "*",
            "10.0.0.0/8",
            "10.1.2.3/8,fd00::1/64",
            "0.0.0.0/0,::/0",
        ] {
            let l = cidrs(s, Star::Allowed).unwrap();
            assert_eq!(cidrs(&l.to_arg(), Star::Allowed).unwrap(), l, "{s}");
        }
    }
}
