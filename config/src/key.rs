//! What a proxy asks for: an address or a host name, written `addr/10.96.0.12` or
//! `host/reviews.default.svc.cluster.local` on the wire.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One thing a proxy subscribes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Key {
    /// An IP the proxy saw: a Service's ClusterIP, a pod's IP (as an original destination
    /// or as a peer), or anything else (answered [`crate::Resource::NotFound`]).
    Address(IpAddr),
    /// A host name as a client wrote it (`reviews`, `reviews.default`,
    /// `reviews.default.svc`, the FQDN, any case, no port, no trailing dot). mesh-control
    /// resolves short names in the asking proxy's namespace, as Kubernetes DNS does.
    Host(String),
    /// The asking gateway's own config (`gateway`): the listeners of the Gateways whose
    /// selector matches its pod, answered [`crate::Resource::Gateway`] (or
    /// [`crate::Resource::NotFound`] when no Gateway selects it).
    Gateway,
}

/// A key that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad config key {key:?}: {why} (expected addr/<ip>, host/<name> or gateway)")]
pub struct KeyError {
    pub key: String,
    pub why: &'static str,
}

impl Key {
    /// A host key, normalised: lower case, no trailing dot, no `:port`.
    pub fn host(name: &str) -> Key {
        Key::Host(normalize_host(name))
    }
}

/// `Reviews.Default:9080.` → `reviews.default`: what Host headers and DNS names are
/// compared as.
pub fn normalize_host(name: &str) -> String {
    let name = strip_port(name.trim_end_matches('.'));
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `host` as an IP address, when it is one. A host name (what nearly every request
/// carries) is told apart by its first byte without a parse: an IPv4 address starts
/// with a digit, an IPv6 one has a colon.
pub fn ip_literal(host: &str) -> Option<IpAddr> {
    let maybe = host.as_bytes().first().is_some_and(u8::is_ascii_digit) || host.contains(':');
    maybe.then(|| host.parse().ok()).flatten()
}

/// `reviews:9080` → `reviews`; `[fd00::1]:80` → `fd00::1`; a bare IPv6 address stays whole.
pub fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port))
            if !host.contains(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            host
        }
        _ => authority,
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Address(ip) => write!(f, "addr/{ip}"),
            Key::Host(h) => write!(f, "host/{h}"),
            Key::Gateway => f.write_str("gateway"),
        }
    }
}

impl FromStr for Key {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Key, KeyError> {
        let bad = |why| KeyError {
            key: s.to_owned(),
            why,
        };
        if s == "gateway" {
            return Ok(Key::Gateway);
        }
        if let Some(ip) = s.strip_prefix("addr/") {
            return ip
                .parse()
                .map(Key::Address)
                .map_err(|_| bad("not an IP address"));
        }
        if let Some(h) = s.strip_prefix("host/") {
            let h = normalize_host(h);
            if h.is_empty() || h.len() > 253 {
                return Err(bad("empty or too long host name"));
            }
            if !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            {
                return Err(bad("not a DNS name"));
            }
            return Ok(Key::Host(h));
        }
        Err(bad("unknown kind"))
    }
}

impl TryFrom<String> for Key {
    type Error = KeyError;
    fn try_from(s: String) -> Result<Key, KeyError> {
        s.parse()
    }
}

impl From<Key> for String {
    fn from(k: Key) -> String {
        k.to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ip_literals_and_host_names() {
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        for host in [
            "10.96.0.10",
            "198.18.3.2",
            "fd00::1",
            "::1",
            "::ffff:10.0.0.1",
        ] {
            assert_eq!(ip_literal(host), ip(host), "{host}");
            assert!(ip_literal(host).is_some(), "{host}");
        }
        // Names, also ones that start with a digit: never an address.
        for host in [
            "reviews",
            "reviews.shop.svc.cluster.local",
            "1password.com",
            "10.0.0",
            "",
        ] {
            assert_eq!(ip_literal(host), None, "{host}");
        }
    }

    #[test]
    fn round_trips_and_normalises() {
        for s in [
            "addr/10.96.0.12",
            "addr/fd00::1",
            "host/reviews.default.svc.cluster.local",
            "gateway",
        ] {
            assert_eq!(s.parse::<Key>().unwrap().to_string(), s);
        }
        assert_eq!(
            Key::host("Reviews.Default:9080."),
            Key::Host("reviews.default".into())
        );
        assert_eq!(strip_port("[fd00::1]:80"), "fd00::1");
        assert_eq!(strip_port("fd00::1"), "fd00::1");
        assert_eq!(strip_port("reviews"), "reviews");
    }

    #[test]
    fn bad_keys_say_why() {
        let e = "addr/10.0.0".parse::<Key>().unwrap_err();
        assert!(e.to_string().contains("not an IP address"), "{e}");
        let e = "svc/reviews".parse::<Key>().unwrap_err();
        assert!(e.to_string().contains("unknown kind"), "{e}");
        let e = "host/a b".parse::<Key>().unwrap_err();
        assert!(e.to_string().contains("not a DNS name"), "{e}");
    }
}
