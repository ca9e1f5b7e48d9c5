//! The proxy's side of the config stream: what it knows of the mesh ([`store`]) and the
//! client that keeps it current from mesh-control ([`client`]).
//!
//! The proxy learns on first use: a connection to an address it does not know, or a
//! request or DNS query for a name it does not know, subscribes that key and waits a
//! bounded time for the answer; keys unused for a while are dropped and unsubscribed. So
//! its memory follows what the pod talks to, not the size of the mesh. With mesh-control
//! away it keeps what it has and treats what it does not know as outside the mesh (L4
//! passthrough), never waiting.
//!
//! Order: `store` (no I/O), `resolver` (the HTTP engine's view of it), then `client`
//! (the gRPC stream).

pub mod client;
pub mod resolver;
pub mod store;

pub use client::{ClientSettings, run};

/// Keys no connection used for this long are dropped and unsubscribed.
pub const IDLE_KEY: std::time::Duration = std::time::Duration::from_secs(600);
pub use resolver::{LOOKUP_WAIT, StoreNames, StoreResolver};
pub use store::{Answer, Store};
