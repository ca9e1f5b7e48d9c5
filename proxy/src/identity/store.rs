//! The proxy's workload identity: the current certificate and the mesh roots, each behind
//! a lock held only to clone an `Arc` (every handshake reads them; a renewal writes once
//! a day), and the task that keeps them current.
//!
//! [`IdentityStore::run`] gets the first certificate at start (retrying from 1 s,
//! doubling to 30 s, each failure logged with its reason), then renews at half the
//! certificate's lifetime, jittered by ±10 % (so at 45-55 % of it; Istio's agent also
//! rotates at about half life), counted from when it became valid or from its arrival,
//! whichever is later. A failed renewal keeps the current certificate and retries on the
//! same backoff, louder as expiry nears, never waiting more than a quarter of the time
//! left ([`retry_delay`]) nor, once expired, more than [`EXPIRED_RETRY_MAX`]. The roots are re-read from `--root-cert` at each
//! renewal and every [`ROOT_POLL`] (the kubelet updates a ConfigMap volume in place).
//!
//! Rotation never touches open connections: a TLS session keeps the keys it was made
//! with; the resolvers of [`super::tls`] hand the new certificate to new handshakes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_common::prom::{self, Kind};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::ca_client::{CaClient, CaError, WorkloadCert};
use super::der::rfc3339;
use super::roots::Roots;

/// First retry after a failed request; doubles on each failure.
pub const RETRY_MIN: Duration = Duration::from_secs(1);
/// The longest wait between two requests after failures.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// The longest wait between two requests once the certificate held has expired.
pub const EXPIRED_RETRY_MAX: Duration = Duration::from_secs(5);
/// How often the root file is re-read between renewals.
pub const ROOT_POLL: Duration = Duration::from_secs(30);
/// Renewal never comes sooner than this after an issuance.
const MIN_RENEWAL_DELAY: Duration = Duration::from_secs(1);

/// How requests have gone.
#[derive(Debug, Default)]
struct Status {
    /// The last failure's message and time (seconds since the epoch); kept after a
    /// success, so `/certs` still says what went wrong last.
    last_error: Option<(String, i64)>,
    /// Failures since the last success.
    consecutive_failures: u32,
    last_success: Option<i64>,
    /// The last problem reading the root file between renewals (logged once each).
    root_error: Option<String>,
}

/// The workload's certificate and the mesh's roots, shared by every thread.
#[derive(Debug)]
pub struct IdentityStore {
    spiffe_id: String,
    trust_domain: String,
    /// `None`: a fixed identity (tests), never renewed.
    ca: Option<CaClient>,
    cert: RwLock<Option<Arc<WorkloadCert>>>,
    roots: RwLock<Option<Arc<Roots>>>,
    status: Mutex<Status>,
    issued: AtomicU64,
    failures: AtomicU64,
    has_cert: watch::Sender<bool>,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// When to renew a certificate valid from `not_before` to `not_after` that arrived at
/// `now`: `ratio` of the way through its lifetime (from `not_before`, or from `now` if it
/// came backdated), never sooner than [`MIN_RENEWAL_DELAY`].
pub fn renewal_delay(not_before: i64, not_after: i64, now: i64, ratio: f64) -> Duration {
    let start = not_before.max(now);
    let lifetime = (not_after - start).max(0) as f64;
    let at = start as f64 + lifetime * ratio;
    let secs = (at - now as f64).max(0.0);
    Duration::from_secs_f64(secs).max(MIN_RENEWAL_DELAY)
}

/// How long to wait after a failed request, the backoff being at `backoff` and the
/// certificate held (if any) expiring in `left` seconds: the backoff, but never more than a
/// quarter of what is left (at least [`RETRY_MIN`]), so the last tries before expiry are
/// seconds apart and a CA back in those last seconds is not missed; once expired, at most
/// [`EXPIRED_RETRY_MAX`], since every new mTLS connection fails until a renewal.
pub fn retry_delay(backoff: Duration, left: Option<i64>) -> Duration {
    match left {
        None => backoff,
        Some(left) if left <= 0 => backoff.min(EXPIRED_RETRY_MAX),
        Some(left) => backoff.min(Duration::from_secs((left / 4) as u64).max(RETRY_MIN)),
    }
}

/// Half, ±10 %.
fn jittered_half(rng: &mut fastrand::Rng) -> f64 {
    0.5 * (0.9 + 0.2 * rng.f64())
}

impl IdentityStore {
    /// A store that gets and renews its certificate from `ca` once [`run`](Self::run).
    pub fn new(ca: CaClient, trust_domain: String) -> Arc<IdentityStore> {
        Arc::new(IdentityStore {
            spiffe_id: ca.spiffe_id.clone(),
            trust_domain,
            ca: Some(ca),
            cert: RwLock::new(None),
            roots: RwLock::new(None),
            status: Mutex::default(),
            issued: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            has_cert: watch::channel(false).0,
        })
    }

    /// A store holding `cert` and `roots` for good ([`run`](Self::run) returns at
    /// once): for tests of the data path.
    pub fn fixed(cert: WorkloadCert, roots: Arc<Roots>, trust_domain: &str) -> Arc<IdentityStore> {
        let store = Arc::new(IdentityStore {
            spiffe_id: cert.spiffe_id.clone(),
            trust_domain: trust_domain.to_owned(),
            ca: None,
            cert: RwLock::new(None),
            roots: RwLock::new(None),
            status: Mutex::default(),
            issued: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            has_cert: watch::channel(false).0,
        });
        store.install(cert, roots);
        store
    }

    /// Our SPIFFE id, `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
    pub fn spiffe_id(&self) -> &str {
        &self.spiffe_id
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The current certificate, if one was issued.
    pub fn current(&self) -> Option<Arc<WorkloadCert>> {
        self.cert.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current certificate and key, as rustls serves them.
    pub fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.current().map(|c| c.certified.clone())
    }

    /// The mesh roots as last read.
    pub fn roots(&self) -> Option<Arc<Roots>> {
        self.roots.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether a certificate is held (readiness waits for it).
    pub fn has_cert(&self) -> bool {
        *self.has_cert.borrow()
    }

    /// Returns once a certificate is held.
    pub async fn wait_for_cert(&self) {
        let mut rx = self.has_cert.subscribe();
        let _ = rx.wait_for(|h| *h).await;
    }

    /// The last failed request's message, if any request failed.
    pub fn last_error(&self) -> Option<String> {
        self.status().last_error.as_ref().map(|(m, _)| m.clone())
    }

    /// Certificates issued, and requests that failed, since start.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.issued.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `cert` the current certificate and `roots` the current roots.
    pub fn install(&self, cert: WorkloadCert, roots: Arc<Roots>) {
        self.set_roots(roots);
        *self.cert.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(cert));
        self.has_cert.send_replace(true);
    }

    fn set_roots(&self, roots: Arc<Roots>) {
        let mut slot = self.roots.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = slot.as_ref() {
            if old.same_as(&roots) {
                return;
            }
            let subjects: Vec<&str> = roots.info.iter().map(|i| i.subject.as_str()).collect();
            info!(roots = ?subjects, "mesh root certificates changed");
        }
        *slot = Some(roots);
    }

    /// Re-reads the root file between renewals; a bad file keeps the roots held.
    fn reload_roots(&self, path: &std::path::Path) {
        match Roots::read(path) {
            Ok(roots) => {
                self.status().root_error = None;
                self.set_roots(roots);
            }
            Err(e) => {
                let msg = e.to_string();
                let mut status = self.status();
                if status.root_error.as_deref() != Some(msg.as_str()) {
                    warn!(error = %msg, "cannot re-read the mesh root; keeping the roots held");
                    status.root_error = Some(msg);
                }
            }
        }
    }

    /// Gets the first certificate and renews it, until the process ends.
    pub async fn run(self: Arc<Self>) {
        let Some(ca) = self.ca.clone() else { return };
        let mut rng = fastrand::Rng::new();
        let mut backoff = RETRY_MIN;
        let mut next = tokio::time::Instant::now();
        let mut poll = tokio::time::interval(ROOT_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {
                    match ca.fetch().await {
                        Ok((cert, roots)) => {
                            let delay = renewal_delay(
                                cert.not_before,
                                cert.not_after,
                                now_secs(),
                                jittered_half(&mut rng),
                            );
                            self.issued_ok(cert, roots, delay);
                            backoff = RETRY_MIN;
                            next = tokio::time::Instant::now() + delay;
                        }
                        Err(e) => {
                            let left = self.current().map(|c| c.not_after - now_secs());
                            let wait = retry_delay(backoff, left);
                            self.issue_failed(&e, wait);
                            next = tokio::time::Instant::now() + wait;
                            backoff = (backoff * 2).min(RETRY_MAX);
                        }
                    }
                }
                _ = poll.tick() => self.reload_roots(&ca.root_cert),
            }
        }
    }

    fn issued_ok(&self, cert: WorkloadCert, roots: Arc<Roots>, renew_in: Duration) {
        let now = now_secs();
        let first = !self.has_cert();
        let failures = {
            let mut s = self.status();
            s.last_success = Some(now);
            std::mem::take(&mut s.consecutive_failures)
        };
        info!(
            identity = %cert.spiffe_id,
            serial = %cert.serial,
            not_after = %rfc3339(cert.not_after),
            renew_in = ?renew_in,
            after_failures = failures,
            "{}",
            if first { "workload certificate issued" } else { "workload certificate renewed" }
        );
        self.issued.fetch_add(1, Ordering::Relaxed);
        self.install(cert, roots);
    }

    fn issue_failed(&self, e: &CaError, retry_in: Duration) {
        let now = now_secs();
        self.failures.fetch_add(1, Ordering::Relaxed);
        let msg = e.to_string();
        let failures = {
            let mut s = self.status();
            s.last_error = Some((msg.clone(), now));
            s.consecutive_failures += 1;
            s.consecutive_failures
        };
        let Some(cert) = self.current() else {
            warn!(
                identity = %self.spiffe_id,
                error = %msg,
                failures,
                ?retry_in,
                "cannot get the workload certificate; not ready until one is issued"
            );
            return;
        };
        let left = cert.not_after - now;
        let lifetime = (cert.not_after - cert.not_before).max(1);
        if left <= 0 {
            error!(
                serial = %cert.serial,
                expired_secs_ago = -left,
                error = %msg,
                ?retry_in,
                "the workload certificate has EXPIRED and cannot be renewed: peers refuse it"
            );
        } else if left < lifetime / 4 || left < 2 * RETRY_MAX.as_secs() as i64 {
            error!(
                serial = %cert.serial,
                expires_in_secs = left,
                error = %msg,
                ?retry_in,
                "certificate renewal failed and the workload certificate is about to expire"
            );
        } else {
            warn!(
                serial = %cert.serial,
                expires_in_secs = left,
                error = %msg,
                ?retry_in,
                "certificate renewal failed; keeping the current certificate"
            );
        }
    }

    /// `mesh_proxy_cert_expiry_seconds` (only once a certificate is held),
    /// `mesh_proxy_cert_renewals_total`, `mesh_proxy_cert_renewal_failures_total`.
    pub fn render_metrics(&self, out: &mut String) {
        let name = "mesh_proxy_cert_expiry_seconds";
        prom::header(
            out,
            name,
            "Seconds until the workload certificate expires (negative once it has); absent before the first certificate.",
            Kind::Gauge,
        );
        if let Some(c) = self.current() {
            prom::sample(out, name, "", c.not_after - now_secs());
        }
        let (issued, failures) = self.counts();
        let name = "mesh_proxy_cert_renewals_total";
        prom::header(
            out,
            name,
            "Workload certificates issued by the CA (the first one included).",
            Kind::Counter,
        );
        prom::sample(out, name, "", issued);
        let name = "mesh_proxy_cert_renewal_failures_total";
        prom::header(
            out,
            name,
            "Certificate requests that failed (the CA unreachable, refusing, or answering a certificate we reject).",
            Kind::Counter,
        );
        prom::sample(out, name, "", failures);
    }

    /// What `GET /certs` prints.
    pub fn dump(&self) -> serde_json::Value {
        use serde_json::json;
        let now = now_secs();
        let certificate = self.current().map(|c| {
            json!({
                "serial": c.serial,
                "not_before": rfc3339(c.not_before),
                "not_after": rfc3339(c.not_after),
                "seconds_to_expiry": c.not_after - now,
                "chain_length": c.certified.cert.len(),
            })
        });
        let roots: Vec<_> = self
            .roots()
            .map(|r| {
                r.info
                    .iter()
                    .map(|i| {
                        json!({
                            "subject": i.subject,
                            "sha256": i.sha256,
                            "not_after": rfc3339(i.not_after),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (issued, failures) = self.counts();
        let s = self.status();
        json!({
            "identity": self.spiffe_id,
            "trust_domain": self.trust_domain,
            "certificate": certificate,
            "roots": roots,
            "last_error": s.last_error.as_ref().map(|(m, at)| json!({
                "message": m,
                "at": rfc3339(*at),
                "seconds_ago": now - at,
            })),
            "consecutive_failures": s.consecutive_failures,
            "last_success": s.last_success.map(rfc3339),
            "root_error": s.root_error,
            "issued": issued,
            "failures": failures,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::identity::testca::TestCa;

    #[test]
    fn renewal_is_at_about_half_life() {
        let s = |d: Duration| d.as_secs_f64();
        assert_eq!(s(renewal_delay(1000, 87_400, 1000, 0.5)), 43_200.0);
        // Arrived 10 s after it became valid: half of what is left from its arrival.
        assert_eq!(s(renewal_delay(1000, 87_400, 1010, 0.5)), 43_195.0);
        // Backdated by an hour of a two-hour lifetime: half of what is left, not now.
        assert_eq!(s(renewal_delay(0, 7200, 3600, 0.5)), 1800.0);
        // Short or expired: never sooner than a second.
        assert_eq!(renewal_delay(0, 1, 0, 0.5), MIN_RENEWAL_DELAY);
        assert_eq!(renewal_delay(0, 10, 20, 0.5), MIN_RENEWAL_DELAY);
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..1000 {
            let r = jittered_half(&mut rng);
            assert!((0.45..=0.55).contains(&r), "{r}");
        }
    }

    #[test]
    fn retries_near_expiry_come_seconds_apart() {
        let secs = |s: u64| Duration::from_secs(s);
        // No certificate yet, or plenty left: the backoff.
        assert_eq!(retry_delay(secs(16), None), secs(16));
        assert_eq!(retry_delay(RETRY_MAX, Some(43_200)), RETRY_MAX);
        // A 60 s certificate with 16 s left after failures since half-life: the backoff
        // (16 s) would land after expiry; a quarter of what is left, then less.
        assert_eq!(retry_delay(secs(16), Some(16)), secs(4));
        assert_eq!(retry_delay(secs(30), Some(6)), secs(1));
        assert_eq!(retry_delay(secs(30), Some(1)), RETRY_MIN);
        // Every try before expiry, in order: the sum stays below what was left.
        let (mut left, mut backoff, mut tries) = (31_i64, secs(16), 0);
        while left > 0 {
            let wait = retry_delay(backoff, Some(left));
            assert!(
                wait.as_secs() as i64 <= left.max(1),
                "{wait:?} with {left} s left"
            );
            left -= wait.as_secs() as i64;
            backoff = (backoff * 2).min(RETRY_MAX);
            tries += 1;
        }
        assert!(tries >= 5, "{tries}");
        // Expired: peers refuse it; try again within seconds.
        assert_eq!(retry_delay(RETRY_MAX, Some(-3)), EXPIRED_RETRY_MAX);
        assert_eq!(retry_delay(secs(2), Some(0)), secs(2));
    }

    #[test]
    fn a_fixed_store_holds_its_certificate_and_reports_it() {
        let ca = TestCa::new();
        let id = "spiffe://cluster.local/ns/shop/sa/web";
        let store = IdentityStore::fixed(ca.issue(id, 3600), ca.roots(), "cluster.local");
        assert!(store.has_cert());
        assert_eq!(store.spiffe_id(), id);
        assert!(store.certified_key().is_some());
        let d = store.dump();
        assert_eq!(d["identity"], id);
        let left = d["certificate"]["seconds_to_expiry"].as_i64().unwrap();
        assert!((3500..=3600).contains(&left), "{left}");
        assert_eq!(d["roots"][0]["subject"], "O=cluster.local");
        assert!(d["last_error"].is_null());
        let mut m = String::new();
        store.render_metrics(&mut m);
        assert!(m.contains("\nmesh_proxy_cert_expiry_seconds 3"), "{m}");
        assert!(
            m.contains("\nmesh_proxy_cert_renewal_failures_total 0\n"),
            "{m}"
        );
    }

    #[test]
    fn the_same_roots_are_not_swapped_and_new_ones_are() {
        let ca = TestCa::new();
        let id = "spiffe://cluster.local/ns/shop/sa/web";
        let store = IdentityStore::fixed(ca.issue(id, 3600), ca.roots(), "cluster.local");
        let before = store.roots().unwrap();
        store.set_roots(ca.roots());
        assert!(Arc::ptr_eq(&before, &store.roots().unwrap()));
        store.set_roots(TestCa::new().roots());
        assert!(!Arc::ptr_eq(&before, &store.roots().unwrap()));
    }
}
