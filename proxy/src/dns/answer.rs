//! Whether the proxy answers a query itself (a mesh Service name) and with what, or
//! forwards it. Pure but for the [`ServiceNames`] lookup.

use std::net::IpAddr;
use std::time::Duration;

use super::ServiceNames;
use super::wire::{self, CLASS_IN, Query, RCODE_NOERROR, RCODE_SERVFAIL};

/// What to do with a standard query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A mesh name: these are its addresses (maybe none of the question's type: NODATA).
    Mesh(Vec<IpAddr>),
    /// Not a mesh name: forward.
    Forward,
    /// The lookup did not finish in time: SERVFAIL, so the client asks again later.
    LookupTimeout,
}

/// The names the query may stand for, best first: the name itself, then the name with
/// each suffix of the search list stripped (the app's resolver appended it), when what
/// remains has fewer than `ndots` dots (only then does a resolver append the search
/// list before trying the name as it is: a name with more dots was asked as it is
/// first, and would have been answered then). No duplicates, never the empty name.
pub fn candidates<'a>(name: &'a str, search: &[String], ndots: u8) -> Vec<&'a str> {
    let mut out = Vec::with_capacity(1 + search.len());
    if name.is_empty() {
        return out;
    }
    out.push(name);
    for suffix in search {
        let Some(prefix) = name
            .strip_suffix(suffix.as_str())
            .and_then(|p| p.strip_suffix('.'))
        else {
            continue;
        };
        if prefix.is_empty() || prefix.matches('.').count() >= usize::from(ndots) {
            continue;
        }
        if !out.contains(&prefix) {
            out.push(prefix);
        }
    }
    out
}

/// Decides what to do with `query`: only class IN questions whose name is a host name
/// are looked up; the first candidate the mesh knows wins.
pub async fn decide(
    query: &Query<'_>,
    names: &dyn ServiceNames,
    search: &[String],
    ndots: u8,
    lookup_timeout: Duration,
) -> Decision {
    if query.question.qclass != CLASS_IN {
        return Decision::Forward;
    }
    let Some(name) = query.question.name.as_deref() else {
        return Decision::Forward;
    };
    for candidate in candidates(name, search, ndots) {
        match tokio::time::timeout(lookup_timeout, names.lookup(candidate)).await {
            Ok(Some(ips)) => return Decision::Mesh(ips),
            Ok(None) => {}
            Err(_) => return Decision::LookupTimeout,
        }
    }
    Decision::Forward
}

/// The proxy's response for a [`Decision`] other than `Forward`: the addresses of the
/// question's type with `ttl`, or NODATA (NOERROR, no records: never NXDOMAIN for a mesh
/// name, so resolvers do not give up on it), or SERVFAIL.
pub fn respond(query: &Query<'_>, decision: &Decision, ttl: u32, limit: usize) -> Option<Vec<u8>> {
    match decision {
        Decision::Mesh(ips) => Some(wire::answer(query, RCODE_NOERROR, ips, ttl, limit)),
        Decision::LookupTimeout => Some(wire::empty_response(query, RCODE_SERVFAIL)),
        Decision::Forward => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;

    fn search() -> Vec<String> {
        [
            "default.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "example.com",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn search_suffix_candidates() {
        let s = search();
        assert_eq!(
            candidates("reviews.default.svc.cluster.local", &s, 5),
            [
                "reviews.default.svc.cluster.local",
                "reviews",
                "reviews.default",
                "reviews.default.svc"
            ]
        );
        assert_eq!(
            candidates("reviews.example.com", &s, 5),
            ["reviews.example.com", "reviews"]
        );
        assert_eq!(candidates("reviews", &s, 5), ["reviews"]);
        assert_eq!(
            candidates("www.google.com.svc.cluster.local", &s, 5),
            [
                "www.google.com.svc.cluster.local",
                "www.google.com",
                "www.google.com.svc"
            ]
        );
        // Only a whole label is a suffix.
        assert_eq!(candidates("xexample.com", &s, 5), ["xexample.com"]);
        assert_eq!(candidates("example.com", &s, 5), ["example.com"]);
        assert!(candidates("", &s, 5).is_empty());
        // ndots 1 (a resolv.conf outside Kubernetes): `api.payments.example.com` was asked
        // as it is, not built from `api.payments`.
        assert_eq!(
            candidates("api.payments.example.com", &s, 1),
            ["api.payments.example.com"]
        );
        assert_eq!(
            candidates("db.example.com", &s, 1),
            ["db.example.com", "db"]
        );
        assert_eq!(candidates("db.example.com", &s, 0), ["db.example.com"]);
    }

    struct Names;

    impl ServiceNames for Names {
        fn lookup(
            &self,
            name: &str,
        ) -> Pin<Box<dyn Future<Output = Option<Vec<IpAddr>>> + Send + '_>> {
            let found = match name {
                "reviews" | "reviews.default.svc.cluster.local" => {
                    Some(vec![IpAddr::from([10, 96, 0, 10])])
                }
                _ => None,
            };
            let slow = name == "slow";
            Box::pin(async move {
                if slow {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                found
            })
        }
    }

    async fn decision(name: &str, qclass: u16) -> Decision {
        let mut msg = wire::build_query(1, name, wire::TYPE_A, None);
        let n = msg.len();
        msg[n - 2..].copy_from_slice(&qclass.to_be_bytes());
        let wire::Parsed::Query(q) = wire::parse(&msg) else {
            panic!("not a query")
        };
        decide(&q, &Names, &search(), 5, Duration::from_millis(50)).await
    }

    #[tokio::test]
    async fn decides() {
        let ten = Decision::Mesh(vec![IpAddr::from([10, 96, 0, 10])]);
        assert_eq!(decision("REVIEWS.example.com", CLASS_IN).await, ten);
        assert_eq!(
            decision("reviews.default.svc.cluster.local", CLASS_IN).await,
            ten
        );
        assert_eq!(decision("ratings", CLASS_IN).await, Decision::Forward);
        assert_eq!(decision("reviews", 3).await, Decision::Forward); // CHAOS
        assert_eq!(decision("slow", CLASS_IN).await, Decision::LookupTimeout);
    }
}
