//! One proxy's stream, as data: its keys, what it holds of each, and the responses in
//! flight. No I/O: `stream.rs` feeds it requests and snapshots and writes what it returns.
//!
//! Per key: the content hash the proxy holds (last ACKed), the one in flight (sent, not
//! yet answered) and the one it refused (NACKed). A key is sent when its content differs
//! from what the proxy will hold and from what it refused. Memory is per key, so a proxy
//! costs what it subscribes to; an unsubscribed key is forgotten entirely.

use std::collections::BTreeMap;
use std::time::SystemTime;

use mesh_config::Key;
use mesh_config::wire::{ResourceUpdate, StreamRequest, StreamResponse};
use sha2::{Digest, Sha256};

use crate::serve::translator::View;
use crate::translate::ProxyNode;

/// More keys than this on one stream are refused (logged), so one proxy cannot exhaust
/// the control plane's memory.
pub const MAX_KEYS: usize = 20_000;

#[derive(Debug, Clone, Default)]
struct KeyState {
    /// What the proxy holds (last ACKed).
    held: Option<Hash>,
    /// Sent and not yet answered: content and the response version it went in.
    in_flight: Option<(Hash, u64)>,
    /// What the proxy refused; not sent again until the content changes.
    rejected: Option<Hash>,
}

impl KeyState {
    /// What the proxy will hold once what is in flight is applied.
    fn expected(&self) -> Option<&Hash> {
        self.in_flight
            .as_ref()
            .map(|(h, _)| h)
            .or(self.held.as_ref())
    }
}

/// A content hash: the first 8 bytes of SHA-256, in hex, is the wire's resource version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hash([u8; 8]);

impl Hash {
    pub fn of(body: &[u8]) -> Hash {
        let d = Sha256::digest(body);
        let mut h = [0u8; 8];
        h.copy_from_slice(&d[..8]);
        Hash(h)
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What a request asked that the stream must act on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Handled {
    /// Keys added by this request (to answer now).
    pub added: Vec<Key>,
    /// Keys refused (bad syntax or over [`MAX_KEYS`]), with why.
    pub refused: Vec<(String, String)>,
    /// The request acknowledged or refused a response.
    pub answer: Option<Answer>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Ack {
        version: u64,
    },
    Nack {
        version: u64,
        error: String,
        keys: usize,
    },
    /// A nonce this stream never sent (or of a response whose keys are all gone).
    Unknown {
        nonce: String,
    },
}

/// One stream's state.
#[derive(Debug)]
pub struct Session {
    pub node: ProxyNode,
    pub ip: String,
    pub proxy_version: String,
    /// Makes nonces of this stream unique among streams and restarts.
    nonce_prefix: String,
    keys: BTreeMap<Key, KeyState>,
    version: u64,
    last_acked: u64,
    pub connected_at: SystemTime,
}

/// One key as `/debug/proxies` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyView {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

impl Session {
    pub fn new(node: ProxyNode, ip: String, proxy_version: String, stream_id: u64) -> Session {
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        Session {
            node,
            ip,
            proxy_version,
            nonce_prefix: format!("{:x}.{stream_id:x}", t & 0xffff_ffff_ffff),
            keys: BTreeMap::new(),
            version: 0,
            last_acked: 0,
            connected_at: SystemTime::now(),
        }
    }

    /// Applies a request's ACK/NACK, unsubscriptions, then subscriptions.
    pub fn handle(&mut self, req: &StreamRequest) -> Handled {
        let mut out = Handled::default();
        if !req.response_nonce.is_empty() {
            out.answer = Some(self.answer(&req.response_nonce, &req.error));
        }
        for k in &req.unsubscribe {
            match k.parse::<Key>() {
                Ok(key) => {
                    self.keys.remove(&key);
                }
                Err(e) => out.refused.push((k.clone(), e.to_string())),
            }
        }
        for k in &req.subscribe {
            match k.parse::<Key>() {
                Ok(key) if self.keys.contains_key(&key) => {}
                Ok(_) if self.keys.len() >= MAX_KEYS => out.refused.push((
                    k.clone(),
                    format!("more than {MAX_KEYS} keys on one stream"),
                )),
                Ok(key) => {
                    self.keys.insert(key.clone(), KeyState::default());
                    out.added.push(key);
                }
                Err(e) => out.refused.push((k.clone(), e.to_string())),
            }
        }
        out
    }

    fn answer(&mut self, nonce: &str, error: &str) -> Answer {
        let unknown = || Answer::Unknown {
            nonce: nonce.to_owned(),
        };
        let Some(version) = nonce
            .strip_prefix(self.nonce_prefix.as_str())
            .and_then(|v| v.strip_prefix('-'))
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v >= 1 && *v <= self.version)
        else {
            return unknown();
        };
        if error.is_empty() {
            for st in self.keys.values_mut() {
                if let Some((h, v)) = st.in_flight
                    && v == version
                {
                    st.held = Some(h);
                    st.in_flight = None;
                }
            }
            self.last_acked = self.last_acked.max(version);
            return Answer::Ack { version };
        }
        let mut keys = 0;
        for st in self.keys.values_mut() {
            if let Some((h, v)) = st.in_flight
                && v == version
            {
                st.rejected = Some(h);
                st.in_flight = None;
                keys += 1;
            }
        }
        Answer::Nack {
            version,
            error: error.to_owned(),
            keys,
        }
    }

    /// The response for `keys` (each must be subscribed; others are skipped) from `view`:
    /// only those whose content differs from what the proxy will hold and from what it
    /// refused. `None` when nothing changed.
    pub fn updates<'a>(
        &mut self,
        view: &dyn View,
        keys: impl IntoIterator<Item = &'a Key>,
    ) -> Option<StreamResponse> {
        let mut resources = Vec::new();
        let mut changed = Vec::new();
        for key in keys {
            let Some(st) = self.keys.get(key) else {
                continue;
            };
            let body = view.resolve(&self.node, key).to_json();
            let h = Hash::of(&body);
            if st.expected() == Some(&h) || st.rejected == Some(h) {
                continue;
            }
            changed.push((key.clone(), h));
            resources.push(ResourceUpdate {
                key: key.to_string(),
                version: h.hex(),
                body,
            });
        }
        if resources.is_empty() {
            return None;
        }
        self.version += 1;
        let version = self.version;
        for (key, h) in changed {
            if let Some(st) = self.keys.get_mut(&key) {
                st.in_flight = Some((h, version));
            }
        }
        Some(StreamResponse {
            version,
            nonce: format!("{}-{version}", self.nonce_prefix),
            resources,
        })
    }

    /// Every subscribed key's response (after a snapshot change).
    pub fn updates_all(&mut self, view: &dyn View) -> Option<StreamResponse> {
        let keys: Vec<Key> = self.keys.keys().cloned().collect();
        self.updates(view, &keys)
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub fn last_acked(&self) -> u64 {
        self.last_acked
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn key_views(&self) -> Vec<KeyView> {
        self.keys
            .iter()
            .map(|(k, st)| KeyView {
                key: k.to_string(),
                held: st.held.map(|h| h.hex()),
                in_flight: st.in_flight.map(|(h, _)| h.hex()),
                rejected: st.rejected.map(|h| h.hex()),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;
    use std::sync::Mutex;

    use mesh_config::Resource;
    use mesh_config::Workload;
    use mesh_config::workload::PeerMeta;

    use super::*;

    /// Answers each key with a Workload whose pod name is the key's current "content".
    #[derive(Default)]
    struct Fake(Mutex<HashMap<String, String>>);

    impl Fake {
        fn set(&self, key: &str, content: &str) {
            self.0
                .lock()
                .unwrap()
                .insert(key.to_owned(), content.to_owned());
        }
    }

    impl View for Fake {
        fn resolve(&self, _: &ProxyNode, key: &Key) -> Resource {
            match self.0.lock().unwrap().get(&key.to_string()) {
                None => Resource::NotFound,
                Some(c) => Resource::Workload(Workload {
                    ip: "10.0.0.1".parse().unwrap(),
                    pod: c.clone(),
                    meta: PeerMeta {
                        workload: "w".into(),
                        namespace: "ns".into(),
                        canonical_service: "s".into(),
                        canonical_revision: "r".into(),
                        app: "a".into(),
                        version: "v".into(),
                        service_account: "sa".into(),
                        sidecar: false,
                    },
                    services: vec![],
                    inbound_tls: Default::default(),
                    authorization: Default::default(),
                }),
            }
        }
    }

    fn session() -> Session {
        Session::new(
            ProxyNode::new("ns", "p"),
            "10.0.0.9".into(),
            "test".into(),
            7,
        )
    }

    fn sub(keys: &[&str]) -> StreamRequest {
        StreamRequest {
            subscribe: keys.iter().map(|k| (*k).to_owned()).collect(),
            ..Default::default()
        }
    }

    fn ack(nonce: &str, error: &str) -> StreamRequest {
        StreamRequest {
            response_nonce: nonce.to_owned(),
            error: error.to_owned(),
            ..Default::default()
        }
    }

    fn keys_of(r: &StreamResponse) -> Vec<&str> {
        r.resources.iter().map(|u| u.key.as_str()).collect()
    }

    #[test]
    fn subscribe_answers_new_keys_and_ignores_bad_ones() {
        let view = Fake::default();
        let mut s = session();
        let h = s.handle(&sub(&["addr/10.0.0.1", "bogus/x", "host/A.b", "host/a.b"]));
        assert_eq!(h.added.len(), 2, "{h:?}");
        assert_eq!(h.refused.len(), 1);
        assert!(h.refused[0].1.contains("unknown kind"), "{h:?}");
        let r = s.updates(&view, &h.added).unwrap();
        assert_eq!(r.version, 1);
        assert_eq!(keys_of(&r), ["addr/10.0.0.1", "host/a.b"]);
        assert_eq!(
            Resource::from_json(&r.resources[0].body).unwrap(),
            Resource::NotFound
        );
        // Nothing changed: nothing to send.
        assert!(s.updates_all(&view).is_none());
        // A repeated subscription adds nothing.
        assert!(s.handle(&sub(&["host/a.b"])).added.is_empty());
    }

    #[test]
    fn only_changed_keys_are_pushed_with_a_growing_version() {
        let view = Fake::default();
        let mut s = session();
        let h = s.handle(&sub(&["host/a", "host/b"]));
        let r1 = s.updates(&view, &h.added).unwrap();
        s.handle(&ack(&r1.nonce, ""));
        assert_eq!(s.last_acked(), 1);
        view.set("host/b", "b1");
        let r2 = s.updates_all(&view).unwrap();
        assert_eq!(keys_of(&r2), ["host/b"]);
        assert!(r2.version > r1.version);
        assert_ne!(r2.nonce, r1.nonce);
        // Back to what the proxy holds, before it answered: the in-flight content is what
        // it will hold, so the old one is sent again.
        view.set("host/b", "b0");
        let r3 = s.updates_all(&view).unwrap();
        assert_eq!(keys_of(&r3), ["host/b"]);
    }

    #[test]
    fn nacked_content_is_not_resent_until_it_changes() {
        let view = Fake::default();
        let mut s = session();
        let h = s.handle(&sub(&["host/a", "host/b"]));
        let r1 = s.updates(&view, &h.added).unwrap();
        s.handle(&ack(&r1.nonce, ""));
        view.set("host/a", "bad");
        let r2 = s.updates_all(&view).unwrap();
        let h = s.handle(&ack(&r2.nonce, "regex does not compile"));
        assert_eq!(
            h.answer,
            Some(Answer::Nack {
                version: 2,
                error: "regex does not compile".into(),
                keys: 1
            })
        );
        // Same content again (another object changed): not resent.
        assert!(s.updates_all(&view).is_none());
        // Reverted to what the proxy holds: nothing to send either.
        view.set("host/a", "");
        view.0.lock().unwrap().remove("host/a");
        assert!(s.updates_all(&view).is_none());
        // New content: sent.
        view.set("host/a", "good");
        let r3 = s.updates_all(&view).unwrap();
        assert_eq!(keys_of(&r3), ["host/a"]);
        s.handle(&ack(&r3.nonce, ""));
        assert_eq!(s.last_acked(), 3);
    }

    #[test]
    fn unknown_nonces_are_reported_not_applied() {
        let view = Fake::default();
        let mut s = session();
        let h = s.handle(&sub(&["host/a"]));
        let r = s.updates(&view, &h.added).unwrap();
        for bad in ["x-1", "", "1"] {
            let got = s.handle(&ack(bad, "")).answer;
            if bad.is_empty() {
                assert_eq!(got, None);
            } else {
                assert!(matches!(got, Some(Answer::Unknown { .. })), "{got:?}");
            }
        }
        let future = format!("{}-9", r.nonce.rsplit_once('-').unwrap().0);
        assert!(matches!(
            s.handle(&ack(&future, "")).answer,
            Some(Answer::Unknown { .. })
        ));
        assert_eq!(s.last_acked(), 0);
    }

    #[test]
    fn unsubscribe_forgets_the_key() {
        let view = Fake::default();
        let mut s = session();
        let h = s.handle(&sub(&["host/a", "host/b"]));
        s.updates(&view, &h.added).unwrap();
        s.handle(&StreamRequest {
            unsubscribe: vec!["host/a".into(), "nope".into()],
            ..Default::default()
        });
        assert_eq!(s.key_count(), 1);
        view.set("host/a", "x");
        assert!(s.updates_all(&view).is_none());
        // Subscribed again: answered again, from scratch.
        let h = s.handle(&sub(&["host/a"]));
        assert_eq!(keys_of(&s.updates(&view, &h.added).unwrap()), ["host/a"]);
    }
}
