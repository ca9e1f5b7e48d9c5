//! The mesh's certificate authority: Istio's `IstioCertificateService` on mesh-control's
//! TLS port, so a proxy (ours, or Istio's agent) gets `spiffe://<td>/ns/<ns>/sa/<sa>`.
//!
//! Modules, in dependency order (each uses only those before it):
//! - [`tokens`]: who is calling — a Kubernetes TokenReview of the caller's projected
//!   ServiceAccount token (audience `istio-ca`), behind the [`tokens::Authenticator`] seam;
//! - [`authority`]: the signing key and chain, and signing a CSR for one identity (pure);
//! - [`bootstrap`]: where the key comes from — Secret `cacerts` (Istio's plugged-in CA
//!   layout), else the self-signed root in Secret `istio-ca-secret`, made once, racing
//!   replicas converging on one;
//! - [`rootcert`]: ConfigMap `istio-ca-root-cert` in every namespace, kept as it should be;
//! - [`tls`]: mesh-control's own serving certificate on 15012, issued by [`authority`] and
//!   renewed at half-life, and the TLS accept loop (client certificates of the mesh asked
//!   for, optional; who the peer is, [`tls::PeerInfo`], goes with each request);
//! - [`grpc`]: the `CreateCertificate` service (token → identity → signed chain; its
//!   counters live in [`crate::serve::metrics`], a leaf module that depends on nothing
//!   here).
//!
//! [`crate::serve`] wires them: it loads the CA at start ([`bootstrap`]; a failure is a
//! start-up error), serves [`grpc`] beside the config stream on the TLS port, runs
//! [`tls::renew_loop`] and [`rootcert::publish`]. The plaintext port never serves the CA.
//!
//! Choices where Istio leaves room: the self-signed root is ECDSA P-256 (Istio's is RSA
//! 2048), ten years; workload leaves get an empty subject and a critical URI SAN as
//! Istio's do, never outlive the CA, and a TTL above the maximum is refused, not shortened.

pub mod authority;
pub mod bootstrap;
pub mod grpc;
pub mod rootcert;
pub mod tls;
pub mod tokens;
