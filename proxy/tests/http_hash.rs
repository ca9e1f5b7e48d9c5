//! `loadBalancer.consistentHash` through the HTTP engine on loopback: requests with the
//! same key go to the same upstream, keys spread over all of them, a request without
//! the key is balanced as usual, and a cookie key with a `ttl` is made up for a client
//! without it and sent back in `Set-Cookie`, which then keeps it on one upstream.

#![allow(clippy::unwrap_used)]

mod http_support;

use std::collections::{HashMap, HashSet};

use http_support::*;
use mesh_config::{HashKey, Protocol};

async fn three() -> [Upstream; 3] {
    [
        upstream("v1", Proto::H1).await,
        upstream("v2", Proto::H1).await,
        upstream("v3", Proto::H1).await,
    ]
}

#[tokio::test]
async fn a_header_key_keeps_each_user_on_one_upstream() {
    let [v1, v2, v3] = three().await;
    let mut svc = reviews(&[&v1, &v2, &v3], Protocol::Http, vec![]);
    // No route: requests go to the default cluster (all three), hashed by x-user. 50
    // users, not a multiple of 3: round robin alone would move every user each round.
    svc.clusters[0].consistent_hash = Some(HashKey::Header("x-user".into()));
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let mut home: HashMap<String, String> = HashMap::new();
    for round in 0..5 {
        for u in 0..50 {
            let user = format!("user-{u}");
            let (status, _, body) = c
                .get("reviews:9080", "/", &[("x-user", user.as_str())])
                .await;
            assert_eq!(status, 200);
            match home.get(&user) {
                Some(h) => assert_eq!(h, &body, "{user} moved in round {round}"),
                None => {
                    home.insert(user, body);
                }
            }
        }
    }
    let used: HashSet<&String> = home.values().collect();
    assert_eq!(used.len(), 3, "50 users on {used:?}");
    // Without the header: balanced over all three (round robin, the cluster's).
    let mut seen = HashSet::new();
    for _ in 0..30 {
        seen.insert(c.get("reviews:9080", "/", &[]).await.2);
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[tokio::test]
async fn a_cookie_key_is_made_up_once_then_sticks() {
    let [v1, v2, v3] = three().await;
    let mut svc = reviews(&[&v1, &v2, &v3], Protocol::Http, vec![]);
    svc.clusters[0].consistent_hash = Some(HashKey::Cookie {
        name: "shop-session".into(),
        path: Some("/".into()),
        ttl_ms: Some(3_600_000),
    });
    let p = proxy(StaticResolver::with(&svc), cluster_ip(), Side::Outbound).await;
    let mut c = H1Client::connect(p.addr).await;
    let mut homes = HashSet::new();
    for _ in 0..12 {
        // A new client each time: no cookie, one is made up for it.
        let (status, headers, first) = c.get("reviews:9080", "/", &[]).await;
        assert_eq!(status, 200);
        let set = headers["set-cookie"].to_str().unwrap().to_owned();
        assert!(
            set.starts_with("shop-session=\"")
                && set.ends_with("\"; Max-Age=3600; Path=/; HttpOnly"),
            "{set}"
        );
        let cookie = set.split(';').next().unwrap().to_owned();
        for _ in 0..5 {
            let (status, headers, body) = c
                .get("reviews:9080", "/", &[("cookie", cookie.as_str())])
                .await;
            assert_eq!(status, 200);
            assert_eq!(body, first, "{cookie}");
            assert!(headers.get("set-cookie").is_none());
        }
        homes.insert(first);
    }
    assert!(homes.len() >= 2, "12 sessions all on {homes:?}");
}
