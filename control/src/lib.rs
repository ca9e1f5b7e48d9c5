//! mesh-control: the control plane.
//!
//! Modules, in dependency order (each uses only those before it):
//! - [`istio`]: Istio's `networking.istio.io` kinds as serde types, parsed from the API
//!   server's JSON with errors that name the object and field;
//! - [`translate`]: the pure function from cluster state ([`translate::Objects`]) to what
//!   one proxy gets for one key ([`mesh_config::Resource`]), with Istio's semantics;
//!   golden-tested (`testdata/translate/`);
//! - [`ca`]: the certificate authority (Istio's `IstioCertificateService` on the TLS
//!   port): who calls (TokenReview), signing, the root's Secret, the root ConfigMaps;
//! - `serve` (binary side): the reflectors, the config stream, metrics and debug
//!   endpoints.

pub mod ca;
pub mod cli;
pub mod istio;
pub mod serve;
pub mod translate;
