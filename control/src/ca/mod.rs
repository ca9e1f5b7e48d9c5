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
//! - [`grpc`]: the `CreateCertificate` service;
//! - [`tls`]: mesh-control's own serving certificate on 15012, issued by [`authority`] and
//!   renewed before it expires.

pub mod authority;
pub mod bootstrap;
pub mod grpc;
pub mod rootcert;
pub mod tls;
pub mod tokens;
