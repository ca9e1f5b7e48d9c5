//! Host names and who sees what: Service FQDNs, Istio's short-name rule for config hosts,
//! the DNS search a client's short name goes through, host patterns (exact or
//! wildcard), and `exportTo`.

use std::collections::BTreeSet;
use std::net::IpAddr;

/// `<name>.<namespace>.svc.<domain>`.
pub fn service_fqdn(name: &str, namespace: &str, domain: &str) -> String {
    format!("{name}.{namespace}.svc.{domain}")
}

/// A host written in a VirtualService or DestinationRule (`hosts`, `destination.host`,
/// `host`), as Istio reads it (`ResolveShortnameToFQDN`): a name without a dot is a
/// Service in the object's namespace; anything with a dot (`reviews.default` too), `*`
/// and IP addresses are taken as written. Lower-cased.
pub fn resolve_config_host(host: &str, config_namespace: &str, domain: &str) -> String {
    let h = host.trim().trim_end_matches('.').to_ascii_lowercase();
    if h == "*" || h.contains('.') || h.parse::<IpAddr>().is_ok() {
        h
    } else {
        service_fqdn(&h, config_namespace, domain)
    }
}

/// The names a client's `name` is tried as, in order, as Kubernetes DNS search does for
/// a pod in `client_namespace` (`ndots:5`: every Service name is searched first): so
/// `reviews` is `reviews.<client ns>`, `reviews.other` is `reviews` in `other`, and the
/// FQDN is itself.
pub fn search_names(name: &str, client_namespace: &str, domain: &str) -> [String; 4] {
    [
        format!("{name}.{client_namespace}.svc.{domain}"),
        format!("{name}.svc.{domain}"),
        format!("{name}.{domain}"),
        name.to_owned(),
    ]
}

/// A resolved config host: one name, or a wildcard (`*`, `*.example.com`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    Exact(String),
    /// The suffix after `*` (`.example.com`; empty for `*`).
    Wildcard(String),
}

impl HostPattern {
    /// From a host already through [`resolve_config_host`].
    pub fn new(resolved: &str) -> HostPattern {
        match resolved.strip_prefix('*') {
            Some(suffix) => HostPattern::Wildcard(suffix.to_owned()),
            None => HostPattern::Exact(resolved.to_owned()),
        }
    }

    /// Whether `host` (a Service FQDN) is one this pattern names.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }

    /// Greater is more specific: an exact name beats every wildcard, a longer wildcard
    /// beats a shorter one (Istio's most specific host match).
    pub fn specificity(&self) -> (bool, usize) {
        match self {
            HostPattern::Exact(h) => (true, h.len()),
            HostPattern::Wildcard(s) => (false, s.len()),
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

/// Which namespaces' proxies see an object (`exportTo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visibility {
    All,
    /// Only these (empty: nobody, `~`).
    Namespaces(BTreeSet<String>),
}

impl Visibility {
    /// `exportTo` of an object in `own_namespace`: empty is everyone (Istio's default),
    /// `*` everyone, `.` the object's namespace, `~` nobody, else namespace names.
    pub fn from_export_to(export_to: &[String], own_namespace: &str) -> Visibility {
        if export_to.is_empty() {
            return Visibility::All;
        }
        let mut set = BTreeSet::new();
        for e in export_to {
            match e.trim() {
                "*" => return Visibility::All,
                "." => {
                    set.insert(own_namespace.to_owned());
                }
                "~" | "" => {}
                ns => {
                    set.insert(ns.to_owned());
                }
            }
        }
        Visibility::Namespaces(set)
    }

    pub fn visible_to(&self, namespace: &str) -> bool {
        match self {
            Visibility::All => true,
            Visibility::Namespaces(set) => set.contains(namespace),
        }
    }

    /// Whether some namespace sees both.
    pub fn overlaps(&self, other: &Visibility) -> bool {
        match (self, other) {
            (Visibility::Namespaces(a), Visibility::Namespaces(b)) => !a.is_disjoint(b),
            (Visibility::Namespaces(s), Visibility::All)
            | (Visibility::All, Visibility::Namespaces(s)) => !s.is_empty(),
            (Visibility::All, Visibility::All) => true,
        }
    }
}

/// `selector ⊆ labels` (an empty selector selects everything).
pub fn labels_match(
    selector: &std::collections::BTreeMap<String, String>,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_hosts_follow_istio_short_name_rule() {
        let r = |h| resolve_config_host(h, "default", "cluster.local");
        assert_eq!(r("reviews"), "reviews.default.svc.cluster.local");
        assert_eq!(r("Reviews"), "reviews.default.svc.cluster.local");
        // A dot: taken as written, as Istio does (not expanded to the FQDN).
        assert_eq!(r("reviews.default"), "reviews.default");
        assert_eq!(
            r("reviews.other.svc.cluster.local"),
            "reviews.other.svc.cluster.local"
        );
        assert_eq!(r("*"), "*");
        assert_eq!(r("fd00::1"), "fd00::1");
    }

    #[test]
    fn patterns() {
        let w = HostPattern::new("*.default.svc.cluster.local");
        assert!(w.matches("reviews.default.svc.cluster.local"));
        assert!(!w.matches("reviews.other.svc.cluster.local"));
        assert!(!w.matches(".default.svc.cluster.local"));
        assert!(HostPattern::new("*").matches("anything"));
        let e = HostPattern::new("reviews.default.svc.cluster.local");
        assert!(e.specificity() > w.specificity());
        assert!(w.specificity() > HostPattern::new("*.svc.cluster.local").specificity());
        assert_eq!(w.to_string(), "*.default.svc.cluster.local");
    }

    #[test]
    fn export_to() {
        let v = |l: &[&str]| {
            Visibility::from_export_to(&l.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "own")
        };
        assert!(v(&[]).visible_to("x"));
        assert!(v(&["*"]).visible_to("x"));
        assert!(v(&["."]).visible_to("own"));
        assert!(!v(&["."]).visible_to("x"));
        assert!(v(&[".", "x"]).visible_to("x"));
        assert!(!v(&["~"]).visible_to("own"));
        assert!(v(&["."]).overlaps(&v(&[])));
        assert!(!v(&["."]).overlaps(&v(&["x"])));
        assert!(!v(&["~"]).overlaps(&v(&[])));
    }
}
